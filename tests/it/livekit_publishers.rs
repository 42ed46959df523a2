//! `LIVEKIT_TURN_FOR` on the LiveKit front door (docs/behaviour.md §12):
//! with `publishers`, only a participant whose join, as LiveKit sent it,
//! lets it publish gets the Cloudflare entry; a reconnect is judged by the
//! join through the door that gave its `sid`. The fake LiveKit fills the
//! join's permission from the token's grant as LiveKit does.

use turnify_fakes::LiveKitOptions;
use turnify_fakes::livekit::sid_of;

use crate::harness::{assert_counted, metrics_once_all_ended};
use crate::livekit::{LiveKitStack, binary, connect, ice_servers, next_data};

const PUBLISHER: &str = "@pub:example.org:PHONE";
const SUBSCRIBER: &str = "@sub:remote.example:LAPTOP";

async fn stack(turn_for: &str, verifying: bool, options: LiveKitOptions) -> LiveKitStack {
    let (key, secret) = (options.api_key.clone(), options.api_secret.clone());
    let mut extra = vec![("LIVEKIT_TURN_FOR", turn_for)];
    if verifying {
        extra.extend([("LIVEKIT_KEY", key.as_str()), ("LIVEKIT_SECRET", secret.as_str())]);
    }
    LiveKitStack::start(options, &extra).await
}

/// LiveKit's first frame on a signalling connection opened with `query`.
async fn first_frame(stack: &LiveKitStack, query: &str) -> Vec<u8> {
    let mut client = connect(stack.addr(), &format!("/rtc?{query}"), &[])
        .await
        .expect("LiveKit accepts the upgrade");
    binary(next_data(&mut client).await)
}

async fn joined(stack: &LiveKitStack, token: &str) -> Vec<u8> {
    first_frame(stack, &format!("access_token={token}")).await
}

async fn resumed(stack: &LiveKitStack, token: &str, sid: &str) -> Vec<u8> {
    first_frame(stack, &format!("access_token={token}&reconnect=1&sid={sid}")).await
}

/// A subscribe-only token (`canPublish: false`) joins, then a publisher:
/// with `everyone` both joins get the entry; with `publishers` only the
/// publisher's, the subscriber's going on byte for byte as LiveKit sent
/// it, counted `not-publisher`, and, with the verifying key, its token
/// starts no mint before LiveKit answers either.
#[tokio::test]
async fn everyone_relays_a_subscriber_and_publishers_relays_only_the_publisher() {
    for verifying in [false, true] {
        for (turn_for, subscriber_spliced) in [("everyone", true), ("publishers", false)] {
            let what = format!("{turn_for}, verifying={verifying}");
            let stack = stack(turn_for, verifying, LiveKitOptions::default()).await;
            let subscriber = joined(&stack, &stack.livekit.subscriber_token(SUBSCRIBER, "room")).await;
            let publisher = joined(&stack, &stack.livekit.token(PUBLISHER, "room")).await;
            assert_eq!(ice_servers(&publisher).len(), 2, "{what}: the publisher's entry");
            if subscriber_spliced {
                assert_eq!(ice_servers(&subscriber).len(), 2, "{what}");
            } else {
                assert_eq!(
                    subscriber,
                    stack.livekit.join_frame_for(SUBSCRIBER, false),
                    "{what}"
                );
            }
            // The subscriber's early mint, had one started, was asked for
            // before the publisher's connection was even opened.
            let mints = if subscriber_spliced { 2 } else { 1 };
            assert_eq!(stack.cloudflare.mint_count(), mints, "{what}");
            let metrics = metrics_once_all_ended(stack.daemon.addr).await;
            if subscriber_spliced {
                assert_counted(
                    &metrics,
                    r#"turnify_livekit_signalling_connections_total{turn="cloudflare"} 2"#,
                );
                assert!(!metrics.contains(r#"turn="not-publisher""#), "{what}: {metrics}");
            } else {
                for line in [
                    r#"turnify_livekit_signalling_connections_total{turn="cloudflare"} 1"#,
                    r#"turnify_livekit_signalling_connections_total{turn="not-publisher"} 1"#,
                ] {
                    assert_counted(&metrics, line);
                }
            }
        }
    }
}

/// A reconnect names no one: under `publishers` it gets the entry only when
/// the join through this door that gave its `sid` let the participant
/// publish, whatever the resuming token says; a `sid` the door never saw
/// gets none.
#[tokio::test]
async fn under_publishers_a_reconnect_is_judged_by_the_join_that_gave_its_sid() {
    let stack = stack("publishers", false, LiveKitOptions::default()).await;
    let publishing = stack.livekit.token(PUBLISHER, "room");
    let subscribing = stack.livekit.subscriber_token(SUBSCRIBER, "room");
    assert_eq!(ice_servers(&joined(&stack, &publishing).await).len(), 2);
    assert_eq!(ice_servers(&joined(&stack, &subscribing).await).len(), 1);

    let reconnect = resumed(&stack, &publishing, &sid_of(PUBLISHER)).await;
    assert_eq!(ice_servers(&reconnect).len(), 2, "the publisher's resume");
    // The subscriber resumes on a token that would publish: its join said not.
    let subscriber_again = stack.livekit.token(SUBSCRIBER, "room");
    for token in [&subscribing, &subscriber_again] {
        let reconnect = resumed(&stack, token, &sid_of(SUBSCRIBER)).await;
        assert_eq!(reconnect, stack.livekit.reconnect_frame());
    }
    // A publisher resuming a sid this door never gave out.
    let unseen = resumed(
        &stack,
        &stack.livekit.token("@new:example.org", "room"),
        "PA_unseen",
    )
    .await;
    assert_eq!(unseen, stack.livekit.reconnect_frame());

    assert_eq!(stack.cloudflare.mint_count(), 1);
    let metrics = metrics_once_all_ended(stack.daemon.addr).await;
    for line in [
        r#"turnify_livekit_signalling_connections_total{turn="cloudflare"} 1"#,
        r#"turnify_livekit_signalling_connections_total{turn="reused"} 1"#,
        r#"turnify_livekit_signalling_connections_total{turn="not-publisher"} 4"#,
    ] {
        assert_counted(&metrics, line);
    }
}

/// `ParticipantPermission` (field 11 of `ParticipantInfo`), with `fields`.
fn permission(fields: &[u8]) -> Vec<u8> {
    [&[0x5a, fields.len() as u8][..], fields].concat()
}

/// After LiveKit's own permission (can_publish true, from the token), a
/// second one a decoder merges into it: one that says nothing of publishing
/// leaves the participant a publisher, one whose `can_publish` is false
/// makes it none, and one whose `can_publish` is not a varint (prost
/// refuses the frame) leaves the daemon unsure, so no entry under
/// `publishers`, where `everyone` still adds it.
#[tokio::test]
async fn a_permission_the_daemon_cannot_be_sure_of_gets_no_entry_under_publishers() {
    let can_subscribe = permission(&[0x08, 0x01]);
    let not_publishing = permission(&[0x10, 0x00]);
    let can_publish_as_bytes = permission(&[0x12, 0x01, 0x01]);
    for (extra, everyone, publishers) in [
        (can_subscribe, true, true),
        (not_publishing, true, false),
        (can_publish_as_bytes, true, false),
    ] {
        for (turn_for, spliced) in [("everyone", everyone), ("publishers", publishers)] {
            let options = LiveKitOptions {
                participant_extra: extra.clone(),
                ..LiveKitOptions::default()
            };
            let stack = stack(turn_for, false, options).await;
            let join = joined(&stack, &stack.livekit.token(PUBLISHER, "room")).await;
            let sent = stack.livekit.join_frame(PUBLISHER);
            assert_eq!(join != sent, spliced, "{turn_for}, {extra:02x?}");
            assert_eq!(
                stack.cloudflare.mint_count(),
                usize::from(spliced),
                "{turn_for}, {extra:02x?}"
            );
            let metrics = metrics_once_all_ended(stack.daemon.addr).await;
            let word = if spliced { "cloudflare" } else { "not-publisher" };
            assert_counted(
                &metrics,
                &format!(r#"turnify_livekit_signalling_connections_total{{turn="{word}"}} 1"#),
            );
        }
    }
}
