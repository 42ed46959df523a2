//! The LiveKit front door keys a credential on the identity LiveKit
//! admitted, never on one the caller chose (docs/behaviour.md §12): the
//! token is read as LiveKit reads it or not at all, the join's own
//! participant must be the token's, and a mint before LiveKit's answer
//! needs a verified token that grants a room join. The fake LiveKit reads
//! tokens as livekit-server does (header first, Go's query rules, JSON keys
//! matched without regard to case).

use std::time::{SystemTime, UNIX_EPOCH};

use turnify_fakes::LiveKitOptions;
use turnify_fakes::livekit::sid_of;

use crate::harness::{assert_counted, metrics_once_all_ended};
use crate::livekit::{LiveKitStack, binary, connect, ice_servers, next_data};

const ALICE: &str = "@alice:example.org:PHONE";
const MALLORY: &str = "@mallory:example.org:LAPTOP";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// A token payload as lk-jwt-service writes one, with `claims` (JSON
/// members, written as given) after its issuer and dates.
fn payload(claims: &str) -> String {
    format!(
        r#"{{"iss":"{}","nbf":{},"exp":{},{claims}}}"#,
        LiveKitOptions::default().api_key,
        now() - 10,
        now() + 3600
    )
}

const JOIN_GRANT: &str = r#""video":{"roomJoin":true,"room":"room"}"#;

async fn verifying_stack() -> LiveKitStack {
    let options = LiveKitOptions::default();
    let (key, secret) = (options.api_key.clone(), options.api_secret.clone());
    LiveKitStack::start(options, &[("LIVEKIT_KEY", &key), ("LIVEKIT_SECRET", &secret)]).await
}

async fn stack(verifying: bool) -> LiveKitStack {
    if verifying {
        verifying_stack().await
    } else {
        LiveKitStack::start(LiveKitOptions::default(), &[]).await
    }
}

/// Opens a signalling connection on `path_and_query` and returns LiveKit's
/// first frame as the client got it.
async fn first_frame(stack: &LiveKitStack, path_and_query: &str) -> Vec<u8> {
    let mut client = connect(stack.addr(), path_and_query, &[])
        .await
        .expect("LiveKit accepts the upgrade");
    binary(next_data(&mut client).await)
}

async fn joined(stack: &LiveKitStack, token: &str) -> Vec<u8> {
    first_frame(stack, &format!("/rtc?access_token={token}")).await
}

/// Given Alice holds a credential, when Mallory joins with her own real
/// token behind a forged one naming Alice, in a pair Go drops (`;` or a bad
/// escape), then LiveKit admits Mallory, her join goes on as LiveKit sent
/// it, and nothing is minted, however often she tries, with or without the
/// key that verifies tokens.
#[tokio::test]
async fn a_forged_token_in_a_pair_livekit_drops_gets_no_credential_and_costs_no_mint() {
    for verifying in [false, true] {
        let stack = stack(verifying).await;
        let alice = joined(&stack, &stack.livekit.token(ALICE, "room")).await;
        assert_eq!(ice_servers(&alice).len(), 2, "Alice's join is spliced");
        let forged = stack.livekit.forged_token(ALICE, "room");
        let own = stack.livekit.token(MALLORY, "room");
        for attempt in 0..15 {
            for separator in [";", "%zz"] {
                let join = first_frame(
                    &stack,
                    &format!("/rtc?access_token={forged}{separator}&access_token={own}&n={attempt}"),
                )
                .await;
                assert_eq!(join, stack.livekit.join_frame(MALLORY), "verifying={verifying}");
            }
        }
        assert_eq!(stack.cloudflare.mint_count(), 1, "verifying={verifying}");
        let metrics = metrics_once_all_ended(stack.daemon.addr).await;
        assert_counted(
            &metrics,
            r#"turnify_livekit_signalling_connections_total{turn="no-identity"} 30"#,
        );
    }
}

/// Go's JSON matches `sub` in any case, and the last match wins: LiveKit
/// admits Dave on `{"sub":"@carol","SUB":"@dave"}`. The daemon cannot be
/// sure whom LiveKit admits, and hands out neither Carol's credential nor a
/// new one.
#[tokio::test]
async fn claims_go_reads_otherwise_get_no_credential() {
    let stack = verifying_stack().await;
    let carol = joined(&stack, &stack.livekit.token("@carol", "room")).await;
    assert_eq!(ice_servers(&carol).len(), 2);
    for claims in [
        r#""sub":"@carol","SUB":"@dave""#,
        r#""Sub":"@dave""#,
        "\"sub\":\"@carol\",\"\u{17f}ub\":\"@dave\"",
        r#""sub":"@carol","sub":"@dave""#,
    ] {
        let token = stack
            .livekit
            .sign_payload(&payload(&format!("{claims},{JOIN_GRANT}")));
        let join = joined(&stack, &token).await;
        assert_eq!(ice_servers(&join).len(), 1, "{claims}: LiveKit's own entry only");
    }
    assert_eq!(stack.cloudflare.mint_count(), 1);
}

/// LiveKit names a participant by `jti` when `sub` is empty, and accepts a
/// fractional `exp`: each participant gets a credential of their own.
#[tokio::test]
async fn an_identity_from_jti_and_fractional_dates_are_read_as_livekit_reads_them() {
    for verifying in [false, true] {
        let stack = stack(verifying).await;
        let mut credentials = Vec::new();
        for jti in ["participant-1", "participant-2"] {
            let payload = format!(
                r#"{{"iss":"{}","sub":"","jti":"{jti}","nbf":{}.25,"exp":{}.5,{JOIN_GRANT}}}"#,
                LiveKitOptions::default().api_key,
                now() - 10,
                now() + 3600
            );
            let join = joined(&stack, &stack.livekit.sign_payload(&payload)).await;
            let servers = ice_servers(&join);
            assert_eq!(servers.len(), 2, "{jti} verifying={verifying}");
            credentials.push(servers[1].username.clone());
        }
        assert_ne!(credentials[0], credentials[1], "one credential each");
        assert_eq!(stack.cloudflare.mint_count(), 2);
    }
}

/// With the key, a correctly signed token that grants no room join is
/// refused by LiveKit, and costs no mint.
#[tokio::test]
async fn a_verified_token_without_a_room_join_grant_costs_no_mint() {
    let stack = verifying_stack().await;
    for video in [
        r#""video":{"room":"room"}"#,
        r#""video":{"roomJoin":false,"room":"room"}"#,
        r#""name":"no video grant""#,
    ] {
        let token = stack
            .livekit
            .sign_payload(&payload(&format!(r#""sub":"{ALICE}",{video}"#)));
        let refused = connect(stack.addr(), &format!("/rtc?access_token={token}"), &[]).await;
        let Err(tokio_tungstenite::tungstenite::Error::Http(answer)) = refused else {
            panic!("refused: {refused:?}");
        };
        assert_eq!(answer.status(), 401, "{video}");
    }
    assert!(stack.cloudflare.requests().is_empty());
}

/// A LiveKit that admits another participant than the token names gets
/// its join on unchanged: the credential minted early for the token's
/// identity is not handed to anyone else, and serves that identity later.
#[tokio::test]
async fn a_join_that_names_another_participant_than_the_token_gets_no_credential() {
    let options = LiveKitOptions {
        admit_as: Some(MALLORY.to_owned()),
        ..LiveKitOptions::default()
    };
    let (key, secret) = (options.api_key.clone(), options.api_secret.clone());
    let stack = LiveKitStack::start(options, &[("LIVEKIT_KEY", &key), ("LIVEKIT_SECRET", &secret)]).await;
    let join = joined(&stack, &stack.livekit.token(ALICE, "room")).await;
    assert_eq!(join, stack.livekit.join_frame(MALLORY));
    let metrics = metrics_once_all_ended(stack.daemon.addr).await;
    assert_counted(
        &metrics,
        r#"turnify_livekit_signalling_connections_total{turn="identity-mismatch"} 1"#,
    );
}

/// A reconnect names no participant: the one an earlier join through the
/// daemon gave its `sid` is the one it resumes, and a token that names
/// another gets nothing; with no such join, the token's identity counts.
#[tokio::test]
async fn a_reconnect_resumes_the_participant_its_sid_was_given_to() {
    let stack = LiveKitStack::start(LiveKitOptions::default(), &[]).await;
    let alice = stack.livekit.token(ALICE, "room");
    let join = joined(&stack, &alice).await;
    let alices = ice_servers(&join)[1].clone();
    let resume = |token: &str, sid: &str| format!("/rtc?access_token={token}&reconnect=1&sid={sid}");
    let reconnect = first_frame(&stack, &resume(&alice, &sid_of(ALICE))).await;
    assert_eq!(
        ice_servers(&reconnect).last(),
        Some(&alices),
        "Alice's own credential"
    );
    let mallory = stack.livekit.token(MALLORY, "room");
    let reconnect = first_frame(&stack, &resume(&mallory, &sid_of(ALICE))).await;
    assert_eq!(
        reconnect,
        stack.livekit.reconnect_frame(),
        "Alice's sid, Mallory's token"
    );
    let reconnect = first_frame(&stack, &resume(&mallory, "PA_unknown")).await;
    let mallorys = ice_servers(&reconnect);
    assert_eq!(mallorys.len(), 2);
    assert_ne!(mallorys[1], alices);
    assert_eq!(stack.cloudflare.mint_count(), 2);
}
