//! Property tests of the splice (docs/behaviour.md §12) over real LiveKit
//! messages, built and decoded with `livekit-protocol`, LiveKit's own Rust
//! bindings: a join or reconnect decodes, after the splice, to the same
//! message with one more ICE server, and every byte outside that entry is
//! the one LiveKit sent, unknown fields included; every other message, and
//! any bytes at all, go on unchanged or at least never panic; and what
//! `check` reads of a join is what a client decodes.

use livekit_protocol::{
    ClientConfiguration, IceServer, JoinResponse, ParticipantInfo, ReconnectResponse, Room,
    SessionDescription, SignalResponse, signal_response,
};
use matrix_turnify::splice::{self, Kind};
use matrix_turnify::turn::TurnCredential;
use proptest::prelude::*;
use prost::Message;

fn url() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["turn:", "turns:", "stun:", "TURN:", "Turns:"]),
        "[a-z0-9.:?=]{0,20}",
    )
        .prop_map(|(scheme, rest)| format!("{scheme}{rest}"))
}

fn ice_server() -> impl Strategy<Value = IceServer> {
    (prop::collection::vec(url(), 0..4), ".{0,12}", ".{0,12}").prop_map(|(urls, username, credential)| {
        IceServer {
            urls,
            username,
            credential,
        }
    })
}

fn client_configuration() -> impl Strategy<Value = Option<ClientConfiguration>> {
    prop::option::of(
        (0..=2i32, 0..=2i32).prop_map(|(force_relay, resume_connection)| ClientConfiguration {
            force_relay,
            resume_connection,
            ..ClientConfiguration::default()
        }),
    )
}

fn join() -> impl Strategy<Value = JoinResponse> {
    (
        prop::collection::vec(ice_server(), 0..4),
        client_configuration(),
        ".{0,16}",
        ".{0,16}",
        any::<i32>(),
        prop::collection::vec(any::<u8>(), 0..8),
        any::<bool>(),
    )
        .prop_map(
            |(ice_servers, client_configuration, room, identity, ping_timeout, sif_trailer, fast_publish)| {
                JoinResponse {
                    room: Some(Room {
                        name: room,
                        ..Room::default()
                    }),
                    participant: Some(ParticipantInfo {
                        identity,
                        ..ParticipantInfo::default()
                    }),
                    ice_servers,
                    client_configuration,
                    ping_timeout,
                    sif_trailer,
                    fast_publish,
                    ..JoinResponse::default()
                }
            },
        )
}

fn reconnect() -> impl Strategy<Value = ReconnectResponse> {
    (
        prop::collection::vec(ice_server(), 0..4),
        client_configuration(),
        any::<u32>(),
    )
        .prop_map(
            |(ice_servers, client_configuration, last_message_seq)| ReconnectResponse {
                ice_servers,
                client_configuration,
                last_message_seq,
                ..ReconnectResponse::default()
            },
        )
}

/// Fields no version of `livekit-protocol` knows (numbers from 3000 up),
/// of every wire type but groups, as a newer LiveKit could send them.
fn unknown_fields() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            3000u32..4000,
            0..3u8,
            prop::collection::vec(any::<u8>(), 0..12),
            any::<u64>(),
        ),
        0..3,
    )
    .prop_map(|fields| {
        let mut out = Vec::new();
        for (number, wire, bytes, value) in fields {
            match wire {
                0 => {
                    prost::encoding::encode_key(number, prost::encoding::WireType::Varint, &mut out);
                    prost::encoding::encode_varint(value, &mut out);
                }
                1 => {
                    prost::encoding::encode_key(number, prost::encoding::WireType::SixtyFourBit, &mut out);
                    out.extend_from_slice(&value.to_le_bytes());
                }
                _ => prost::encoding::bytes::encode(number, &bytes, &mut out),
            }
        }
        out
    })
}

fn credential() -> impl Strategy<Value = TurnCredential> {
    (
        prop::collection::vec(
            url().prop_filter("TURN URIs", |u| u.to_ascii_lowercase().starts_with("turn")),
            1..4,
        ),
        "[a-z0-9:]{1,20}",
        "[A-Za-z0-9+/=]{1,30}",
    )
        .prop_map(|(uris, username, password)| TurnCredential {
            username,
            password,
            uris,
        })
}

/// What the splice must add: our URIs, only the `turns:` ones when LiveKit
/// forces relay over TLS; `None` when there is nothing to add.
fn expected_entry(
    livekit: &[IceServer],
    configuration: Option<&ClientConfiguration>,
    ours: &TurnCredential,
) -> Option<IceServer> {
    let has = |url: &str, scheme: &str| url.to_ascii_lowercase().starts_with(scheme);
    let tls_only = configuration.is_some_and(|c| c.force_relay == 2)
        && !livekit.iter().flat_map(|s| &s.urls).any(|url| has(url, "turn:"));
    let urls: Vec<String> = ours
        .uris
        .iter()
        .filter(|uri| !tls_only || has(uri, "turns:"))
        .cloned()
        .collect();
    (!urls.is_empty()).then(|| IceServer {
        urls,
        username: ours.username.clone(),
        credential: ours.password.clone(),
    })
}

/// A frame as LiveKit could send it: unknown fields around the message,
/// and inside it after the fields `livekit-protocol` encodes.
struct Frame {
    before: Vec<u8>,
    tag: Vec<u8>,
    payload: Vec<u8>,
    after: Vec<u8>,
}

impl Frame {
    fn new(
        field: u32,
        message: &impl Message,
        inner_unknown: Vec<u8>,
        before: Vec<u8>,
        after: Vec<u8>,
    ) -> Self {
        let mut tag = Vec::new();
        prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut tag);
        Self {
            before,
            tag,
            payload: [message.encode_to_vec(), inner_unknown].concat(),
            after,
        }
    }

    fn bytes(&self, extra: &[u8]) -> Vec<u8> {
        let mut out = [self.before.as_slice(), &self.tag].concat();
        prost::encoding::encode_varint((self.payload.len() + extra.len()) as u64, &mut out);
        out.extend_from_slice(&self.payload);
        out.extend_from_slice(extra);
        out.extend_from_slice(&self.after);
        out
    }
}

proptest! {
    #[test]
    fn a_join_decodes_to_the_same_join_plus_one_entry_and_keeps_every_other_byte(
        join in join(),
        ours in credential(),
        inner in unknown_fields(),
        before in unknown_fields(),
        after in unknown_fields(),
    ) {
        let frame = Frame::new(1, &join, inner, before, after);
        let input = frame.bytes(&[]);
        prop_assert_eq!(splice::kind(&input), Some(Kind::Join));
        let entry = expected_entry(&join.ice_servers, join.client_configuration.as_ref(), &ours);
        let spliced = splice::splice(&input, &ours);
        match &entry {
            Some(entry) => {
                let mut encoded = Vec::new();
                prost::encoding::message::encode(5, entry, &mut encoded);
                let expected_bytes = frame.bytes(&encoded);
                prop_assert_eq!(spliced.as_deref(), Some(expected_bytes.as_slice()));
                let mut expected = join.clone();
                expected.ice_servers.push(entry.clone());
                let decoded = SignalResponse::decode(spliced.unwrap_or_default().as_slice()).expect("decodes");
                prop_assert_eq!(decoded.message, Some(signal_response::Message::Join(expected)));
            }
            None => prop_assert_eq!(spliced, None),
        }
    }

    #[test]
    fn a_reconnect_decodes_to_the_same_reconnect_plus_one_entry_and_keeps_every_other_byte(
        reconnect in reconnect(),
        ours in credential(),
        inner in unknown_fields(),
        after in unknown_fields(),
    ) {
        let frame = Frame::new(19, &reconnect, inner, Vec::new(), after);
        let input = frame.bytes(&[]);
        prop_assert_eq!(splice::kind(&input), Some(Kind::Reconnect));
        let entry = expected_entry(&reconnect.ice_servers, reconnect.client_configuration.as_ref(), &ours);
        let spliced = splice::splice(&input, &ours);
        match &entry {
            Some(entry) => {
                let mut encoded = Vec::new();
                prost::encoding::message::encode(1, entry, &mut encoded);
                let expected_bytes = frame.bytes(&encoded);
                prop_assert_eq!(spliced.as_deref(), Some(expected_bytes.as_slice()));
                let mut expected = reconnect.clone();
                expected.ice_servers.push(entry.clone());
                let decoded = SignalResponse::decode(spliced.unwrap_or_default().as_slice()).expect("decodes");
                prop_assert_eq!(decoded.message, Some(signal_response::Message::Reconnect(expected)));
            }
            None => prop_assert_eq!(spliced, None),
        }
    }

    /// What `check` reads of a join is what a client decodes, the
    /// credentials left out, before the splice and after it.
    #[test]
    fn the_ice_servers_read_from_a_join_are_the_ones_a_client_decodes(
        join in join(),
        ours in credential(),
        inner in unknown_fields(),
        after in unknown_fields(),
    ) {
        let seen = |servers: &[IceServer]| {
            servers
                .iter()
                .map(|server| splice::IceServerSeen { urls: server.urls.clone(), username: server.username.clone() })
                .collect::<Vec<_>>()
        };
        let input = Frame::new(1, &join, inner, Vec::new(), after).bytes(&[]);
        prop_assert_eq!(splice::ice_servers(&input), Some((Kind::Join, seen(&join.ice_servers))));
        if let Some(spliced) = splice::splice(&input, &ours) {
            let Some(signal_response::Message::Join(decoded)) =
                SignalResponse::decode(spliced.as_slice()).expect("decodes").message
            else {
                panic!("a join stays a join");
            };
            prop_assert_eq!(splice::ice_servers(&spliced), Some((Kind::Join, seen(&decoded.ice_servers))));
        }
    }

    #[test]
    fn other_messages_go_on_unchanged(
        sdp in ".{0,40}",
        id in any::<u32>(),
        token in ".{0,30}",
        pong in any::<i64>(),
        ours in credential(),
    ) {
        let description = SessionDescription { r#type: "offer".into(), sdp, id, ..SessionDescription::default() };
        for message in [
            signal_response::Message::Offer(description.clone()),
            signal_response::Message::Answer(description),
            signal_response::Message::RefreshToken(token),
            signal_response::Message::Pong(pong),
        ] {
            let frame = SignalResponse { message: Some(message) }.encode_to_vec();
            prop_assert_eq!(splice::kind(&frame), None);
            prop_assert_eq!(splice::splice(&frame, &ours), None);
        }
    }

    /// The fuzz-style property: no input makes the splice panic, and what
    /// it returns for one is at least as long as the input plus an entry.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), ours in credential()) {
        if let Some(spliced) = splice::splice(&bytes, &ours) {
            prop_assert!(spliced.len() > bytes.len());
            prop_assert!(splice::kind(&bytes).is_some());
        }
        if splice::ice_servers(&bytes).is_some() {
            prop_assert!(splice::kind(&bytes).is_some());
        }
    }

    /// Real joins with a byte flipped, cut short or grown: never a panic,
    /// and a spliced output still decodes wherever the input did.
    #[test]
    fn damaged_joins_never_panic(
        join in join(),
        ours in credential(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<bool>(),
    ) {
        let mut frame = SignalResponse { message: Some(signal_response::Message::Join(join)) }.encode_to_vec();
        let i = at.index(frame.len());
        if cut { frame.truncate(i); } else { frame[i] = byte; }
        if let Some(spliced) = splice::splice(&frame, &ours) {
            if SignalResponse::decode(frame.as_slice()).is_ok() {
                prop_assert!(SignalResponse::decode(spliced.as_slice()).is_ok());
            }
        }
    }
}
