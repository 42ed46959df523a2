//! The one change the LiveKit front door makes to LiveKit's messages
//! (docs/behaviour.md §12): a Cloudflare TURN entry appended to the ICE
//! servers of a join or reconnect, at the protobuf wire level, so every
//! other byte, fields this code does not know included, goes on as LiveKit
//! sent it. Pure: bytes in, bytes out.

use std::ops::Range;

use crate::credentials::turn::TurnCredential;

/// `SignalResponse.join` (livekit_rtc.proto).
const SIGNAL_JOIN: u64 = 1;
/// `SignalResponse.reconnect`.
const SIGNAL_RECONNECT: u64 = 19;
/// `SignalResponse.leave`.
const SIGNAL_LEAVE: u64 = 8;
/// `JoinResponse.participant`, a `ParticipantInfo`, whose `sid` is field 1
/// and `identity` field 2.
const JOIN_PARTICIPANT: u64 = 2;
const PARTICIPANT_SID: u64 = 1;
const PARTICIPANT_IDENTITY: u64 = 2;
/// `ParticipantInfo.permission`, a `ParticipantPermission` (livekit_models.proto),
/// whose `can_publish` is field 2, a bool.
const PARTICIPANT_PERMISSION: u64 = 11;
const PERMISSION_CAN_PUBLISH: u64 = 2;
/// `JoinResponse.ice_servers` and `JoinResponse.client_configuration`.
const JOIN_ICE_SERVERS: u64 = 5;
const JOIN_CLIENT_CONFIGURATION: u64 = 8;
/// `ReconnectResponse.ice_servers` and `ReconnectResponse.client_configuration`.
const RECONNECT_ICE_SERVERS: u64 = 1;
const RECONNECT_CLIENT_CONFIGURATION: u64 = 2;
/// `ICEServer.urls`, `.username`, `.credential`.
const ICE_URLS: u64 = 1;
const ICE_USERNAME: u64 = 2;
const ICE_CREDENTIAL: u64 = 3;
/// `ClientConfiguration.force_relay`, a `ClientConfigSetting`; `ENABLED` is 2.
const CONFIG_FORCE_RELAY: u64 = 5;
const SETTING_ENABLED: u64 = 2;

/// The protobuf wire types (protobuf.dev, "Encoding"); the group types 3
/// and 4 appear in no LiveKit message, and a frame holding them is left alone.
const WIRE_VARINT: u64 = 0;
const WIRE_I64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_I32: u64 = 5;

/// Which of the two messages that carry ICE servers a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Join,
    Reconnect,
}

/// `Some` when `frame` is a well-formed `SignalResponse` carrying a join or
/// a reconnect: LiveKit sends one only once it has accepted the
/// participant's token.
pub fn kind(frame: &[u8]) -> Option<Kind> {
    locate(frame).map(|found| found.kind)
}

/// `frame` with one more ICE server after LiveKit's own, carrying
/// `credential`'s URIs, username and password, and the join's (or
/// reconnect's) length prefix corrected; `None` when the frame is to go on
/// unchanged: it is not a join or reconnect, does not parse, or no URI of
/// ours is fit to add.
///
/// When LiveKit forces relay over TLS (its ICE fallback after UDP and TCP
/// failed: `force_relay` enabled and no `turn:` URI of its own, only
/// `turns:`), only our `turns:` URIs are added: the network the client is on
/// let nothing else through.
pub fn splice(frame: &[u8], credential: &TurnCredential) -> Option<Vec<u8>> {
    let found = locate(frame)?;
    let uris: Vec<&str> = credential
        .uris
        .iter()
        .map(String::as_str)
        .filter(|uri| !found.tls_only || has_scheme(uri, "turns:"))
        .collect();
    if uris.is_empty() {
        return None;
    }
    let mut server = Vec::new();
    for uri in uris {
        put_len_field(&mut server, ICE_URLS, uri.as_bytes());
    }
    put_len_field(&mut server, ICE_USERNAME, credential.username.as_bytes());
    put_len_field(&mut server, ICE_CREDENTIAL, credential.password.as_bytes());
    let mut entry = Vec::new();
    put_len_field(&mut entry, found.ice_servers_field, &server);

    let payload = &frame[found.payload.clone()];
    let mut out = Vec::with_capacity(frame.len() + entry.len() + 10);
    out.extend_from_slice(&frame[..found.length_at]);
    put_varint(&mut out, (payload.len() + entry.len()) as u64);
    out.extend_from_slice(payload);
    // A repeated field's entries are its occurrences in wire order: one
    // more at the end of the message is the last entry, wherever LiveKit's
    // own sit.
    out.extend_from_slice(&entry);
    out.extend_from_slice(&frame[found.payload.end..]);
    Some(out)
}

/// One `ICEServer` of a join or reconnect, as a client would read it, but
/// without its credential: what `check` shows of a join.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceServerSeen {
    pub urls: Vec<String>,
    pub username: String,
}

/// The ICE servers of a join or reconnect frame, in order, the daemon's
/// own entry (the last, after a splice) included; `None` for any frame
/// [`kind`] does not recognise, or whose ICE servers a decoder would refuse.
pub fn ice_servers(frame: &[u8]) -> Option<(Kind, Vec<IceServerSeen>)> {
    let found = locate(frame)?;
    let message = &frame[found.payload];
    let mut servers = Vec::new();
    for field in fields(message)? {
        if field.number == found.ice_servers_field {
            let server = ice_server(field.len_of(message)?)?;
            servers.push(IceServerSeen {
                urls: server.urls.into_iter().map(str::to_owned).collect(),
                username: server.username.to_owned(),
            });
        }
    }
    Some((found.kind, servers))
}

/// The participant a join admits, as LiveKit names it: the identity the
/// credential is keyed on, the `sid` a later reconnect names it by, and
/// whether the join lets it publish media.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Admitted {
    pub sid: String,
    pub identity: String,
    /// `permission.can_publish`; false where the join leaves it out (as a
    /// decoder reads it) or the daemon cannot be sure how a decoder reads it.
    pub publisher: bool,
}

/// Whom a join frame admits; `None` for a reconnect (which names no one),
/// any other frame, or a participant given twice or not as a decoder would
/// read it one way only.
pub(crate) fn admitted(frame: &[u8]) -> Option<Admitted> {
    let found = locate(frame)?;
    if found.kind != Kind::Join {
        return None;
    }
    let join = &frame[found.payload];
    let participant = only(join, JOIN_PARTICIPANT)?;
    let text = |number| {
        only(participant, number).and_then(|bytes| std::str::from_utf8(bytes).ok().map(str::to_owned))
    };
    let admitted = Admitted {
        sid: text(PARTICIPANT_SID)?,
        identity: text(PARTICIPANT_IDENTITY)?,
        publisher: can_publish(participant) == Some(true),
    };
    (!admitted.identity.is_empty() && !admitted.sid.is_empty()).then_some(admitted)
}

/// `permission.can_publish` of a `ParticipantInfo` as a decoder reads it:
/// every `permission` merged into one, so the last `can_publish` in any of
/// them wins, and false when none has it. `None` where decoders differ or
/// refuse: a `permission` or a `can_publish` of another wire type (prost
/// refuses the frame, Go's protobuf keeps it as an unknown field), or a
/// `permission` that is not a well-formed message.
fn can_publish(participant: &[u8]) -> Option<bool> {
    let mut publisher = false;
    for field in fields(participant)? {
        if field.number != PARTICIPANT_PERMISSION {
            continue;
        }
        for setting in fields(field.len_of(participant)?)? {
            if setting.number == PERMISSION_CAN_PUBLISH {
                let Value::Varint(value) = setting.value else {
                    return None;
                };
                publisher = value != 0;
            }
        }
    }
    Some(publisher)
}

/// The one length-delimited field `number` of `message`: `None` when it is
/// absent, of another wire type, or given more than once (a decoder would
/// merge or overwrite).
fn only(message: &[u8], number: u64) -> Option<&[u8]> {
    let mut matching = fields(message)?
        .into_iter()
        .filter(|field| field.number == number);
    let field = matching.next()?;
    if matching.next().is_some() {
        return None;
    }
    field.len_of(message)
}

/// Whether `frame` is a well-formed `SignalResponse` carrying `leave`:
/// LiveKit's answer to a participant's own leave request, after which it
/// writes nothing more.
pub(crate) fn is_leave(frame: &[u8]) -> bool {
    fields(frame).is_some_and(|top| {
        top.iter()
            .any(|field| field.number == SIGNAL_LEAVE && matches!(field.value, Value::Len { .. }))
    })
}

/// Where the join or reconnect sits in a frame, and what it asks for.
struct Located {
    kind: Kind,
    /// Where the message's length prefix starts.
    length_at: usize,
    /// The message itself.
    payload: Range<usize>,
    ice_servers_field: u64,
    tls_only: bool,
}

fn locate(frame: &[u8]) -> Option<Located> {
    let top = fields(frame)?;
    // A oneof member appearing twice would be merged by a decoder; LiveKit
    // never sends that, so such a frame is left as it is.
    let mut members = top
        .iter()
        .filter(|field| matches!(field.number, SIGNAL_JOIN | SIGNAL_RECONNECT));
    let member = members.next()?;
    if members.next().is_some() {
        return None;
    }
    let Value::Len { length_at, payload } = member.value.clone() else {
        return None;
    };
    let (kind, ice_servers_field, configuration_field) = match member.number {
        SIGNAL_JOIN => (Kind::Join, JOIN_ICE_SERVERS, JOIN_CLIENT_CONFIGURATION),
        _ => (
            Kind::Reconnect,
            RECONNECT_ICE_SERVERS,
            RECONNECT_CLIENT_CONFIGURATION,
        ),
    };
    let message = &frame[payload.clone()];
    let mut force_relay = 0;
    let mut livekit_offers_turn = false;
    for field in fields(message)? {
        if field.number == ice_servers_field {
            for uri in ice_server(field.len_of(message)?)?.urls {
                livekit_offers_turn |= has_scheme(uri, "turn:");
            }
        } else if field.number == configuration_field {
            // Embedded messages merge, and the last scalar wins.
            for setting in fields(field.len_of(message)?)? {
                if setting.number == CONFIG_FORCE_RELAY {
                    let Value::Varint(value) = setting.value else {
                        return None;
                    };
                    force_relay = value;
                }
            }
        }
    }
    Some(Located {
        kind,
        length_at,
        payload,
        ice_servers_field,
        tls_only: force_relay == SETTING_ENABLED && !livekit_offers_turn,
    })
}

/// The parts of one `ICEServer` a client reads.
struct ParsedServer<'a> {
    urls: Vec<&'a str>,
    /// The last one, as a decoder keeps the last of a scalar field.
    username: &'a str,
}

/// One `ICEServer`; `None` if it is malformed (a decoder would refuse the
/// whole frame).
fn ice_server(server: &[u8]) -> Option<ParsedServer<'_>> {
    let mut parsed = ParsedServer {
        urls: Vec::new(),
        username: "",
    };
    for field in fields(server)? {
        match (field.number, &field.value) {
            (ICE_URLS | ICE_USERNAME | ICE_CREDENTIAL, Value::Len { .. }) => {
                let text = std::str::from_utf8(field.len_of(server)?).ok()?;
                match field.number {
                    ICE_URLS => parsed.urls.push(text),
                    ICE_USERNAME => parsed.username = text,
                    _ => {}
                }
            }
            (ICE_URLS | ICE_USERNAME | ICE_CREDENTIAL, _) => return None,
            _ => {}
        }
    }
    Some(parsed)
}

fn has_scheme(uri: &str, scheme: &str) -> bool {
    uri.get(..scheme.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(scheme))
}

#[derive(Clone, Debug)]
enum Value {
    Varint(u64),
    Fixed,
    Len { length_at: usize, payload: Range<usize> },
}

struct Field {
    number: u64,
    value: Value,
}

impl Field {
    /// The bytes of a length-delimited field within `message`; `None` for
    /// another wire type, which a decoder would refuse for these fields.
    fn len_of<'a>(&self, message: &'a [u8]) -> Option<&'a [u8]> {
        match &self.value {
            Value::Len { payload, .. } => message.get(payload.clone()),
            _ => None,
        }
    }
}

/// Every field of `message`, or `None` if it is not a well-formed sequence
/// of fields to its last byte.
fn fields(message: &[u8]) -> Option<Vec<Field>> {
    let mut fields = Vec::new();
    let mut at = 0;
    while at < message.len() {
        let tag = varint(message, &mut at)?;
        let number = tag >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return None;
        }
        let value = match tag & 7 {
            WIRE_VARINT => Value::Varint(varint(message, &mut at)?),
            WIRE_I64 => skip(message, &mut at, 8).map(|()| Value::Fixed)?,
            WIRE_I32 => skip(message, &mut at, 4).map(|()| Value::Fixed)?,
            WIRE_LEN => {
                let length_at = at;
                let length = usize::try_from(varint(message, &mut at)?).ok()?;
                let start = at;
                skip(message, &mut at, length)?;
                Value::Len {
                    length_at,
                    payload: start..at,
                }
            }
            _ => return None,
        };
        fields.push(Field { number, value });
    }
    Some(fields)
}

fn skip(message: &[u8], at: &mut usize, length: usize) -> Option<()> {
    let end = at.checked_add(length).filter(|end| *end <= message.len())?;
    *at = end;
    Some(())
}

/// A base-128 varint of at most 10 bytes that fits 64 bits.
fn varint(message: &[u8], at: &mut usize) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = *message.get(*at)?;
        *at += 1;
        if shift == 63 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_len_field(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_varint(out, number << 3 | WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours() -> TurnCredential {
        TurnCredential {
            username: "cf-user".into(),
            password: "cf-pass".into(),
            uris: vec![
                "turn:turn.cloudflare.com:3478?transport=udp".into(),
                "turns:turn.cloudflare.com:443?transport=tcp".into(),
            ],
        }
    }

    fn len_field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_len_field(&mut out, number, bytes);
        out
    }

    fn varint_field(number: u64, value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, number << 3);
        put_varint(&mut out, value);
        out
    }

    fn ice_server(urls: &[&str], username: &str, credential: &str) -> Vec<u8> {
        let mut server: Vec<u8> = urls.iter().flat_map(|url| len_field(1, url.as_bytes())).collect();
        server.extend(len_field(2, username.as_bytes()));
        server.extend(len_field(3, credential.as_bytes()));
        server
    }

    fn our_entry(field: u64, urls: &[&str]) -> Vec<u8> {
        len_field(field, &ice_server(urls, "cf-user", "cf-pass"))
    }

    const BOTH: &[&str] = &[
        "turn:turn.cloudflare.com:3478?transport=udp",
        "turns:turn.cloudflare.com:443?transport=tcp",
    ];

    /// Given a join with LiveKit's own STUN entry and fields of every wire
    /// type this code does not know, inside and around it, the output is
    /// the same bytes with our entry after LiveKit's and the join's length
    /// grown by exactly its size.
    #[test]
    fn a_join_gets_one_entry_after_livekits_and_keeps_unknown_fields() {
        let mut join = len_field(1, b"room-bytes");
        join.extend(len_field(
            5,
            &ice_server(&["stun:stun.l.google.com:19302"], "", ""),
        ));
        join.extend(varint_field(10, 20));
        join.extend([0x9d, 0x06, 1, 2, 3, 4]); // field 99, fixed32
        join.extend([0xa1, 0x06, 1, 2, 3, 4, 5, 6, 7, 8]); // field 100, fixed64
        join.extend(len_field(4000, b"a field from a newer LiveKit"));
        let unknown_before = varint_field(900, 7);
        let unknown_after = len_field(901, b"x");
        let frame = [unknown_before.clone(), len_field(1, &join), unknown_after.clone()].concat();

        let spliced = splice(&frame, &ours()).expect("a join is spliced");

        let grown = [join.clone(), our_entry(5, BOTH)].concat();
        assert_eq!(
            spliced,
            [unknown_before, len_field(1, &grown), unknown_after].concat()
        );
        assert_eq!(kind(&frame), Some(Kind::Join));
    }

    #[test]
    fn a_reconnect_gets_the_entry_in_its_own_field() {
        let reconnect = [
            len_field(1, &ice_server(&["turn:livekit.example.org:3478"], "lk", "pw")),
            varint_field(4, 42),
        ]
        .concat();
        let frame = len_field(19, &reconnect);
        let spliced = splice(&frame, &ours()).expect("a reconnect is spliced");
        assert_eq!(spliced, len_field(19, &[reconnect, our_entry(1, BOTH)].concat()));
        assert_eq!(kind(&frame), Some(Kind::Reconnect));
    }

    #[test]
    fn a_length_that_needs_one_more_byte_is_rewritten() {
        let join = len_field(4, &[b'v'; 100]);
        let frame = len_field(1, &join);
        assert_eq!(frame[1], 102, "one length byte before");
        let spliced = splice(&frame, &ours()).expect("spliced");
        let grown = [join, our_entry(5, BOTH)].concat();
        assert!(grown.len() > 127);
        assert_eq!(spliced, len_field(1, &grown));
    }

    #[test]
    fn an_empty_join_gets_the_entry() {
        let frame = len_field(1, &[]);
        assert_eq!(splice(&frame, &ours()), Some(len_field(1, &our_entry(5, BOTH))));
    }

    /// LiveKit's ICE fallback over TLS: force_relay on and only `turns:`
    /// servers of its own. Our `turn:` URIs are useless on such a network.
    #[test]
    fn forced_relay_over_tls_gets_only_our_turns_uris() {
        let forced = len_field(8, &varint_field(5, SETTING_ENABLED));
        let livekit_tls = len_field(
            5,
            &ice_server(&["turns:lk.example.org:443?transport=tcp"], "u", "p"),
        );
        let stun = len_field(5, &ice_server(&["stun:stun.example.org:3478"], "", ""));
        let join = [stun, livekit_tls, forced].concat();
        let spliced = splice(&len_field(1, &join), &ours()).expect("spliced");
        let turns_only = &["turns:turn.cloudflare.com:443?transport=tcp"][..];
        assert_eq!(spliced, len_field(1, &[join, our_entry(5, turns_only)].concat()));

        // A reconnect carries its configuration in field 2.
        let reconnect = [
            len_field(
                1,
                &ice_server(&["turns:lk.example.org:443?transport=tcp"], "u", "p"),
            ),
            len_field(2, &varint_field(5, SETTING_ENABLED)),
        ]
        .concat();
        let spliced = splice(&len_field(19, &reconnect), &ours()).expect("spliced");
        assert_eq!(
            spliced,
            len_field(19, &[reconnect, our_entry(1, turns_only)].concat())
        );
    }

    #[test]
    fn relay_forced_with_livekits_own_udp_turn_or_tls_only_without_force_gets_every_uri() {
        let udp = len_field(
            5,
            &ice_server(&["turn:lk.example.org:3478?transport=udp"], "u", "p"),
        );
        let tls = len_field(5, &ice_server(&["turns:lk.example.org:443"], "u", "p"));
        let forced = len_field(8, &varint_field(5, SETTING_ENABLED));
        let disabled = len_field(8, &varint_field(5, 1));
        for join in [
            [udp.clone(), tls.clone(), forced.clone()].concat(),
            tls.clone(),
            [tls.clone(), disabled.clone()].concat(),
            // The last setting wins: enabled, then disabled.
            [tls.clone(), forced.clone(), disabled].concat(),
        ] {
            let spliced = splice(&len_field(1, &join), &ours()).expect("spliced");
            assert_eq!(spliced, len_field(1, &[join, our_entry(5, BOTH)].concat()));
        }
    }

    #[test]
    fn forced_tls_relay_and_no_turns_uri_of_ours_leaves_the_frame_alone() {
        let join = [
            len_field(5, &ice_server(&["turns:lk.example.org:443"], "u", "p")),
            len_field(8, &varint_field(5, SETTING_ENABLED)),
        ]
        .concat();
        let udp_only = TurnCredential {
            uris: vec!["turn:turn.cloudflare.com:3478".into()],
            ..ours()
        };
        assert_eq!(splice(&len_field(1, &join), &udp_only), None);
    }

    #[test]
    fn other_messages_and_malformed_frames_go_on_unchanged() {
        let join = len_field(1, &len_field(4, b"1.13.0"));
        for frame in [
            Vec::new(),
            len_field(2, b"an answer"),
            len_field(3, &len_field(1, b"offer")),
            varint_field(18, 12345),
            len_field(16, b"refresh-token"),
            // Two joins: a decoder would merge them.
            [join.clone(), join.clone()].concat(),
            // A join of the wrong wire type.
            varint_field(1, 5),
            // Truncated: the length says more than there is.
            join[..join.len() - 1].to_vec(),
            // A tag whose varint never ends.
            vec![0x80; 11],
            // A varint longer than 64 bits.
            [&[0x08][..], &[0xff; 9], &[0x02]].concat(),
            // Field number 0.
            vec![0x02, 0x00],
            // A group (wire type 3).
            vec![0x0b, 0x0c],
            // The join holds an ICE server whose URL is not UTF-8.
            len_field(1, &len_field(5, &len_field(1, &[0xff, 0xfe]))),
            // An ICE server's username of the wrong wire type.
            len_field(1, &len_field(5, &varint_field(2, 1))),
            // force_relay of the wrong wire type.
            len_field(1, &len_field(8, &len_field(5, b"2"))),
            // A join whose own fields run past its end.
            len_field(1, &[0x2a, 0x05, 0x0a]),
        ] {
            assert_eq!(splice(&frame, &ours()), None, "{frame:02x?}");
            assert_eq!(kind(&frame), None, "{frame:02x?}");
            assert_eq!(ice_servers(&frame), None, "{frame:02x?}");
        }
    }

    fn key(number: u64, wire: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, number << 3 | wire);
        out
    }

    /// The largest field number protobuf allows, 2^29 - 1.
    const MAX_FIELD: u64 = (1 << 29) - 1;

    /// A part whose malformation would go unnoticed where the frame is
    /// refused for another reason, so each is put beside a join that would
    /// otherwise be spliced, before it and inside it, and a decoder that
    /// shares no code with the splice (prost, with LiveKit's own messages)
    /// must refuse the frame too.
    #[test]
    fn a_join_beside_a_part_a_decoder_refuses_goes_on_unchanged() {
        use livekit_protocol::SignalResponse;
        use prost::Message;

        let version = len_field(4, b"1.13.0");
        let spliceable = len_field(1, &version);
        assert!(splice(&spliceable, &ours()).is_some());
        let ten_byte_varint = |last: u8| [&[0xff; 9][..], &[last]].concat();
        for (part, what) in [
            ([0x02, 0x00].to_vec(), "field number 0"),
            (
                [key(MAX_FIELD + 1, WIRE_VARINT), vec![0x00]].concat(),
                "field number 2^29",
            ),
            (
                [key(900, WIRE_VARINT), ten_byte_varint(2)].concat(),
                "a varint whose 10th byte is 2",
            ),
            (
                [key(900, WIRE_VARINT), ten_byte_varint(0x7f)].concat(),
                "a varint whose 10th byte is 0x7f",
            ),
        ] {
            for frame in [
                [part.clone(), spliceable.clone()].concat(),
                len_field(1, &[part.clone(), version.clone()].concat()),
            ] {
                assert!(
                    SignalResponse::decode(&frame[..]).is_err(),
                    "{what}: prost reads {frame:02x?}"
                );
                assert_eq!(splice(&frame, &ours()), None, "{what}: {frame:02x?}");
                assert_eq!(kind(&frame), None, "{what}");
                assert_eq!(ice_servers(&frame), None, "{what}");
            }
        }
    }

    /// The valid extremes of the same parts: a decoder reads the frame, and
    /// the join is spliced.
    #[test]
    fn a_join_beside_the_largest_field_number_or_a_full_ten_byte_varint_is_spliced() {
        use livekit_protocol::{SignalResponse, signal_response};
        use prost::Message;

        let version = len_field(4, b"1.13.0");
        let largest = [key(MAX_FIELD, WIRE_VARINT), vec![0x01]].concat();
        let top_bit = [key(900, WIRE_VARINT), [&[0x80; 9][..], &[0x01]].concat()].concat();
        for part in [largest, top_bit] {
            for (frame, spliced) in [
                (
                    [part.clone(), len_field(1, &version)].concat(),
                    [
                        part.clone(),
                        len_field(1, &[version.clone(), our_entry(5, BOTH)].concat()),
                    ]
                    .concat(),
                ),
                (
                    len_field(1, &[part.clone(), version.clone()].concat()),
                    len_field(1, &[part.clone(), version.clone(), our_entry(5, BOTH)].concat()),
                ),
            ] {
                assert!(SignalResponse::decode(&frame[..]).is_ok(), "{frame:02x?}");
                assert_eq!(splice(&frame, &ours()), Some(spliced.clone()), "{frame:02x?}");
                let decoded = SignalResponse::decode(&spliced[..]).expect("prost reads the splice");
                let Some(signal_response::Message::Join(join)) = decoded.message else {
                    panic!("not a join: {decoded:?}");
                };
                assert_eq!(join.ice_servers.len(), 1);
                assert_eq!(join.ice_servers[0].urls, BOTH);
            }
        }
    }

    fn seen(urls: &[&str], username: &str) -> IceServerSeen {
        IceServerSeen {
            urls: urls.iter().map(|url| (*url).to_owned()).collect(),
            username: username.to_owned(),
        }
    }

    /// What `check` reads of a join: LiveKit's entries and, after a splice,
    /// ours last, each with its URIs and username, unknown fields skipped.
    #[test]
    fn the_ice_servers_of_a_join_are_read_in_order_and_ours_comes_last() {
        let join = [
            len_field(1, b"room-bytes"),
            len_field(5, &ice_server(&["stun:stun.l.google.com:19302"], "", "")),
            varint_field(10, 20),
            len_field(
                5,
                &[
                    ice_server(
                        &["turn:lk.example.org:3478", "turns:lk.example.org:443"],
                        "lk",
                        "pw",
                    ),
                    len_field(77, b"a field from a newer LiveKit"),
                ]
                .concat(),
            ),
            len_field(8, &varint_field(5, 1)),
        ]
        .concat();
        let frame = [varint_field(900, 7), len_field(1, &join)].concat();
        let livekits = vec![
            seen(&["stun:stun.l.google.com:19302"], ""),
            seen(&["turn:lk.example.org:3478", "turns:lk.example.org:443"], "lk"),
        ];
        assert_eq!(ice_servers(&frame), Some((Kind::Join, livekits.clone())));

        let spliced = splice(&frame, &ours()).expect("spliced");
        let mut with_ours = livekits;
        with_ours.push(seen(BOTH, "cf-user"));
        assert_eq!(ice_servers(&spliced), Some((Kind::Join, with_ours)));
    }

    #[test]
    fn a_reconnects_ice_servers_are_read_from_its_own_field_and_the_last_username_wins() {
        let twice = [
            len_field(1, b"turn:lk.example.org:3478"),
            len_field(2, b"first"),
            len_field(2, b"second"),
        ]
        .concat();
        let reconnect = [
            len_field(1, &twice),
            varint_field(4, 42),
            len_field(5, b"not ice"),
        ]
        .concat();
        assert_eq!(
            ice_servers(&len_field(19, &reconnect)),
            Some((
                Kind::Reconnect,
                vec![seen(&["turn:lk.example.org:3478"], "second")]
            ))
        );
        assert_eq!(ice_servers(&len_field(1, &[])), Some((Kind::Join, Vec::new())));
    }

    #[test]
    fn livekits_leave_is_told_from_other_frames() {
        let leave = len_field(8, &[varint_field(2, 1), varint_field(3, 0)].concat());
        assert!(is_leave(&leave));
        assert!(is_leave(&len_field(8, &[])));
        for other in [
            len_field(1, &[]),
            varint_field(8, 1),
            leave[..leave.len() - 1].to_vec(),
            Vec::new(),
        ] {
            assert!(!is_leave(&other), "{other:02x?}");
        }
    }
    fn participant(fields: &[Vec<u8>]) -> Vec<u8> {
        len_field(JOIN_PARTICIPANT, &fields.concat())
    }

    #[test]
    fn a_join_names_the_participant_it_admits() {
        let info = participant(&[
            len_field(1, b"PA_alice"),
            len_field(2, b"@alice:example.org:DEV"),
            len_field(3, b"Alice"),
            varint_field(4, 1),
        ]);
        let join = len_field(
            1,
            &[len_field(1, b"room"), info.clone(), len_field(5, b"")].concat(),
        );
        assert_eq!(
            admitted(&join),
            Some(Admitted {
                sid: "PA_alice".into(),
                identity: "@alice:example.org:DEV".into(),
                publisher: false,
            })
        );
        // A reconnect names no one, and neither does any other frame.
        assert_eq!(admitted(&len_field(19, &info)), None);
        assert_eq!(admitted(&len_field(8, &info)), None);
    }

    #[test]
    fn a_participant_a_decoder_could_read_otherwise_names_no_one() {
        let sid = len_field(1, b"PA_x");
        let identity = len_field(2, b"@x");
        for join in [
            Vec::new(),
            participant(std::slice::from_ref(&sid)),
            participant(std::slice::from_ref(&identity)),
            participant(&[sid.clone(), identity.clone(), len_field(2, b"@y")]),
            participant(&[sid.clone(), len_field(2, b"")]),
            participant(&[sid.clone(), len_field(2, b"\xff")]),
            participant(&[sid.clone(), varint_field(2, 7)]),
            [
                participant(&[sid.clone(), identity.clone()]),
                participant(std::slice::from_ref(&identity)),
            ]
            .concat(),
            varint_field(JOIN_PARTICIPANT, 1),
        ] {
            assert_eq!(admitted(&len_field(1, &join)), None, "{join:02x?}");
        }
    }

    /// The join as LiveKit sends it: a participant with a sid, an identity
    /// and `parts`, given as raw fields.
    fn join_of(parts: &[Vec<u8>]) -> Vec<u8> {
        let info = [len_field(1, b"PA_x"), len_field(2, b"@x:example.org:DEV")]
            .into_iter()
            .chain(parts.iter().cloned())
            .collect::<Vec<_>>();
        len_field(1, &[len_field(4, b"1.13.5"), participant(&info)].concat())
    }

    fn permission(settings: &[Vec<u8>]) -> Vec<u8> {
        len_field(PARTICIPANT_PERMISSION, &settings.concat())
    }

    /// What prost, with LiveKit's own messages, reads as the joined
    /// participant's `permission.can_publish`; `None` when it refuses the frame.
    fn prost_can_publish(frame: &[u8]) -> Option<bool> {
        use livekit_protocol::{SignalResponse, signal_response};
        use prost::Message;

        match SignalResponse::decode(frame).ok()?.message {
            Some(signal_response::Message::Join(join)) => Some(
                join.participant
                    .and_then(|participant| participant.permission)
                    .is_some_and(|permission| permission.can_publish),
            ),
            other => panic!("not a join: {other:?}"),
        }
    }

    /// Every `permission` a decoder merges into one, the last `can_publish`
    /// of any of them winning, and proto3's absent bool is false: the
    /// daemon's reading is prost's, case by case.
    #[test]
    fn a_join_says_whether_its_participant_may_publish_as_a_decoder_reads_it() {
        use livekit_protocol::ParticipantPermission;
        use prost::Message;

        let publish = |value| varint_field(PERMISSION_CAN_PUBLISH, value);
        let subscribe = varint_field(1, 1);
        let as_livekit_sends = |can_publish| {
            len_field(
                PARTICIPANT_PERMISSION,
                &ParticipantPermission {
                    can_subscribe: true,
                    can_publish,
                    can_publish_data: true,
                    can_publish_sources: vec![1, 2],
                    can_update_metadata: true,
                    ..ParticipantPermission::default()
                }
                .encode_to_vec(),
            )
        };
        for (parts, publisher) in [
            (vec![], false),
            (vec![permission(&[])], false),
            (vec![as_livekit_sends(true)], true),
            (vec![as_livekit_sends(false)], false),
            (vec![permission(&[publish(1)])], true),
            (vec![permission(&[subscribe.clone(), publish(0)])], false),
            (vec![permission(std::slice::from_ref(&subscribe))], false),
            // Any value but zero is true.
            (vec![permission(&[publish(2)])], true),
            (vec![permission(&[publish(1 << 63)])], true),
            // The last value wins, within one permission or across two.
            (vec![permission(&[publish(1), publish(0)])], false),
            (vec![permission(&[publish(0), publish(1)])], true),
            (vec![permission(&[publish(1)]), permission(&[publish(0)])], false),
            (vec![permission(&[publish(0)]), permission(&[publish(1)])], true),
            // A later permission without `can_publish` keeps the earlier one's.
            (
                vec![
                    permission(&[publish(1)]),
                    permission(std::slice::from_ref(&subscribe)),
                ],
                true,
            ),
            (
                vec![
                    permission(&[publish(1)]),
                    len_field(5, b"metadata"),
                    permission(&[]),
                ],
                true,
            ),
            // Fields the daemon does not know, around it and inside it.
            (
                vec![
                    varint_field(3, 1),
                    permission(&[len_field(900, b"newer"), publish(1), varint_field(13, 1)]),
                    len_field(901, b"newer"),
                ],
                true,
            ),
        ] {
            let frame = join_of(&parts);
            assert_eq!(prost_can_publish(&frame), Some(publisher), "prost: {parts:02x?}");
            let admitted = admitted(&frame).expect("the participant is named");
            assert_eq!(admitted.publisher, publisher, "{parts:02x?}");
        }
    }

    /// Where prost refuses the frame (and Go's protobuf would keep the odd
    /// part as an unknown field, reading the rest), the daemon cannot be sure
    /// what a client or LiveKit makes of it: not a publisher, the safe
    /// direction; the participant it names is still the one admitted.
    #[test]
    fn a_permission_decoders_read_otherwise_is_not_a_publisher() {
        let publish = varint_field(PERMISSION_CAN_PUBLISH, 1);
        for parts in [
            vec![varint_field(PARTICIPANT_PERMISSION, 1)],
            vec![
                permission(std::slice::from_ref(&publish)),
                varint_field(PARTICIPANT_PERMISSION, 1),
            ],
            vec![permission(&[len_field(PERMISSION_CAN_PUBLISH, &[1])])],
            vec![permission(&[
                publish.clone(),
                len_field(PERMISSION_CAN_PUBLISH, &[1]),
                publish.clone(),
            ])],
            vec![permission(&[[
                key(PERMISSION_CAN_PUBLISH, WIRE_I32),
                vec![1, 0, 0, 0],
            ]
            .concat()])],
            vec![permission(&[[
                key(PERMISSION_CAN_PUBLISH, WIRE_I64),
                vec![1, 0, 0, 0, 0, 0, 0, 0],
            ]
            .concat()])],
            // A permission whose own fields run past its end.
            vec![permission(&[publish.clone(), vec![0x12, 0x05, 0x0a]])],
            vec![
                permission(std::slice::from_ref(&publish)),
                len_field(PARTICIPANT_PERMISSION, &[0x10]),
            ],
        ] {
            let frame = join_of(&parts);
            assert_eq!(prost_can_publish(&frame), None, "prost reads {parts:02x?}");
            let admitted = admitted(&frame).expect("the participant is named");
            assert!(!admitted.publisher, "{parts:02x?}");
        }
    }
}
