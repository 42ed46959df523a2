//! A LiveKit participant's token (docs/behaviour.md §12), read as
//! livekit-server reads it, or not at all. LiveKit (Go) parses it with
//! golang-jwt and Go's `encoding/json`, which match JSON keys without regard
//! to case (`SUB` sets `sub`, and so do `ſub` and a Kelvin-sign `k`), let the
//! last of two equal keys win, and take fractional dates. So a key that only
//! such folding would match, a key given twice, or a value of a type LiveKit
//! would refuse makes the token unreadable here: the daemon then has no
//! identity, rather than another one than LiveKit's. Read unverified
//! (LiveKit's join is then the authentication), or verified with LiveKit's
//! API key and secret (HS256, `exp` required, no leeway), which lets a mint
//! start before LiveKit answers; and signed, for `check`'s test join. Pure:
//! the current time is passed in.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use sha2::Sha256;

use crate::config::Secret;

/// Who issued a token (the API key) and whom LiveKit admits with it: its
/// `sub`, or its `jti` when `sub` is empty (livekit/protocol's
/// `ParseAPIToken`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub issuer: String,
    pub identity: String,
}

/// A token the daemon has checked itself, whether it lets its bearer
/// join a room (`video.roomJoin`): only such a token may start a mint
/// before LiveKit has answered, and whether it lets them publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub claims: Claims,
    pub room_join: bool,
    /// `video.canPublish`, which LiveKit takes as true unless it is `false`
    /// (livekit/protocol `VideoGrant.GetCanPublish`).
    pub can_publish: bool,
}

/// The latest date the daemon reads: Go turns a larger one into a time it
/// cannot represent, and would judge it otherwise.
const LATEST_DATE: f64 = 253_402_300_799.0;

/// The claims of `token`, not verified: for a token LiveKit has accepted.
pub fn read(token: &str) -> Option<Claims> {
    let token = Parsed::of(token)?;
    claims(&fields(&token.payload, &[REGISTERED])?)
}

/// The claims of `token` if it is an HS256 JWT signed with `secret`,
/// issued by `api_key`, with an `exp` after `now` (seconds since the Unix
/// epoch) and no `nbf` after it, whose every claim LiveKit would accept:
/// stricter than LiveKit, which allows a minute of leeway.
pub fn verify(token: &str, api_key: &str, secret: &Secret, now: u64) -> Option<Verified> {
    let parsed = Parsed::of(token)?;
    let fields = fields(&parsed.payload, &[REGISTERED, GRANTS])?;
    let claims = claims(&fields)?;
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(parsed.signed.as_bytes());
    mac.verify_slice(&parsed.signature).ok()?;
    let now = now as f64;
    let exp = date(fields.get("exp"))??;
    let fresh = exp > now && date(fields.get("nbf"))?.is_none_or(|nbf| nbf <= now);
    let (room_join, can_publish) = match fields.get("video") {
        Some(Json::Object(video)) => {
            let grant = self::fields(video, &[VIDEO_GRANT])?;
            (
                matches!(grant.get("roomJoin"), Some(Json::Bool(true))),
                !matches!(grant.get("canPublish"), Some(Json::Bool(false))),
            )
        }
        _ => (false, true),
    };
    (fresh && claims.issuer == api_key).then_some(Verified {
        claims,
        room_join,
        can_publish,
    })
}

/// An HS256 JWT of `claims` signed with `secret`, as LiveKit's server SDKs
/// sign an access token.
pub fn sign(claims: &serde_json::Value, secret: &Secret) -> String {
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// A JWT taken apart as golang-jwt's `ParseUnverified` does: exactly three
/// parts, each unpadded base64url, a header naming HS256, a payload that is
/// one JSON object.
struct Parsed<'a> {
    signed: &'a str,
    payload: Vec<(String, Json)>,
    signature: Vec<u8>,
}

impl<'a> Parsed<'a> {
    fn of(token: &'a str) -> Option<Self> {
        let (signed, signature) = token.rsplit_once('.')?;
        let (header, payload) = signed.split_once('.')?;
        if payload.contains('.') {
            return None;
        }
        // The header is a map to golang-jwt: the last `alg` wins, as in
        // serde_json's own map, and its other keys are never folded.
        let header: serde_json::Value = serde_json::from_slice(&segment(header)?).ok()?;
        if header.get("alg")?.as_str()? != "HS256" {
            return None;
        }
        let Json::Object(payload) = serde_json::from_slice(&segment(payload)?).ok()? else {
            return None;
        };
        Some(Self {
            signed,
            payload,
            signature: segment(signature)?,
        })
    }
}

/// Unpadded base64url (RFC 7515 §2), as golang-jwt decodes by default: a
/// padded part is refused there, and so here.
fn segment(part: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(part).ok()
}

/// The identity and issuer LiveKit takes from `fields`.
fn claims(fields: &Fields<'_>) -> Option<Claims> {
    let text = |name| match fields.get(name) {
        Some(Json::String(text)) => text.as_str(),
        _ => "",
    };
    let identity = match text("sub") {
        "" => text("jti"),
        sub => sub,
    };
    (!identity.is_empty() && !text("iss").is_empty()).then(|| Claims {
        issuer: text("iss").to_owned(),
        identity: identity.to_owned(),
    })
}

/// A NumericDate (RFC 7519 §2) in whole seconds, as golang-jwt truncates
/// it: `Some(None)` when absent or null, `None` when out of range.
fn date(value: Option<&&Json>) -> Option<Option<f64>> {
    match value {
        None | Some(Json::Null) => Some(None),
        Some(Json::Number(seconds)) => (0.0..=LATEST_DATE)
            .contains(seconds)
            .then_some(Some(seconds.trunc())),
        Some(_) => None,
    }
}

/// What a claim must hold for LiveKit to accept the token.
#[derive(Clone, Copy)]
enum Shape {
    Text,
    Date,
    Flag,
    Texts,
    /// `aud`: a string or a list of them.
    Audience,
    /// A map of strings (`attributes`).
    TextMap,
    Video,
    /// A grant the daemon does not model: a token that has it is not read.
    Unmodelled,
}

/// The claims golang-jwt reads into its registered claims: all the
/// unverified read reads, and the first of what verification reads.
const REGISTERED: &[(&str, Shape)] = &[
    ("iss", Shape::Text),
    ("sub", Shape::Text),
    ("aud", Shape::Audience),
    ("exp", Shape::Date),
    ("nbf", Shape::Date),
    ("iat", Shape::Date),
    ("jti", Shape::Text),
];

/// The claims LiveKit's verification reads beyond the registered ones
/// (livekit/protocol `auth`, `ClaimGrants`, at the version livekit-server
/// 1.13.5 pins).
const GRANTS: &[(&str, Shape)] = &[
    ("identity", Shape::Text),
    ("name", Shape::Text),
    ("kind", Shape::Text),
    ("kindDetails", Shape::Texts),
    ("video", Shape::Video),
    ("sip", Shape::Unmodelled),
    ("agent", Shape::Unmodelled),
    ("inference", Shape::Unmodelled),
    ("observability", Shape::Unmodelled),
    ("roomConfig", Shape::Unmodelled),
    ("roomPreset", Shape::Text),
    ("sha256", Shape::Text),
    ("metadata", Shape::Text),
    ("attributes", Shape::TextMap),
];

/// `VideoGrant`'s fields.
const VIDEO_GRANT: &[(&str, Shape)] = &[
    ("roomCreate", Shape::Flag),
    ("roomList", Shape::Flag),
    ("roomRecord", Shape::Flag),
    ("roomAdmin", Shape::Flag),
    ("roomJoin", Shape::Flag),
    ("room", Shape::Text),
    ("canPublish", Shape::Flag),
    ("canSubscribe", Shape::Flag),
    ("canPublishData", Shape::Flag),
    ("canPublishSources", Shape::Texts),
    ("canUpdateOwnMetadata", Shape::Flag),
    ("ingressAdmin", Shape::Flag),
    ("hidden", Shape::Flag),
    ("recorder", Shape::Flag),
    ("agent", Shape::Flag),
    ("canSubscribeMetrics", Shape::Flag),
    ("canManageAgentSession", Shape::Flag),
    ("destinationRoom", Shape::Text),
];

type Fields<'a> = std::collections::HashMap<&'static str, &'a Json>;

/// The known fields of `object`, by name; `None` when Go could read any of
/// them otherwise: a key equal to a field's name only when folded as Go
/// folds it, a field given twice, or a value of a type Go refuses there.
/// Keys no field matches are ignored, as Go ignores them.
fn fields<'a>(object: &'a [(String, Json)], known: &[&[(&'static str, Shape)]]) -> Option<Fields<'a>> {
    let mut found = Fields::new();
    for (key, value) in object {
        let Some(&(name, shape)) = known
            .iter()
            .flat_map(|table| table.iter())
            .find(|(name, _)| go_fold_eq(key, name))
        else {
            continue;
        };
        if key != name || found.insert(name, value).is_some() || !fits(value, shape) {
            return None;
        }
    }
    Some(found)
}

fn fits(value: &Json, shape: Shape) -> bool {
    let texts = |items: &[Json]| items.iter().all(|item| matches!(item, Json::String(_)));
    match (shape, value) {
        (Shape::Unmodelled, _) => false,
        (_, Json::Null) => true,
        (Shape::Text | Shape::Audience, Json::String(_)) => true,
        (Shape::Date, Json::Number(_)) => true,
        (Shape::Flag, Json::Bool(_)) => true,
        (Shape::Texts | Shape::Audience, Json::Array(items)) => texts(items),
        (Shape::TextMap, Json::Object(entries)) => entries
            .iter()
            .all(|(_, value)| matches!(value, Json::String(_) | Json::Null)),
        (Shape::Video, Json::Object(grant)) => fields(grant, &[VIDEO_GRANT]).is_some(),
        _ => false,
    }
}

/// Whether Go's `encoding/json` would match object key `key` to the field
/// named `name` (ASCII): equal under Unicode simple case folding, where
/// only the long s (U+017F) and the Kelvin sign (U+212A) fold to ASCII
/// letters from outside ASCII.
fn go_fold_eq(key: &str, name: &str) -> bool {
    let folded = key.chars().map(|c| match c {
        '\u{17f}' => 's',
        '\u{212a}' => 'k',
        c => c.to_ascii_lowercase(),
    });
    folded.eq(name.chars().map(|c| c.to_ascii_lowercase()))
}

/// A JSON value that keeps every key of an object, in order, duplicates
/// included, which `serde_json::Value` would merge.
#[derive(Debug)]
enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, value: bool) -> Result<Json, E> {
        Ok(Json::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Json, E> {
        Ok(Json::Number(value as f64))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Json, E> {
        Ok(Json::Number(value as f64))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Json, E> {
        Ok(Json::Number(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Json, E> {
        Ok(Json::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Json, E> {
        Ok(Json::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Json::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "livekit-secret";
    const NOW: u64 = 1_800_000_000;
    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    fn token(header: &str, payload: &str, secret: &str) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    fn signed(payload: &str) -> String {
        token(HS256, payload, SECRET)
    }

    fn claims(exp: u64) -> String {
        format!(
            r#"{{"iss":"APIkey","sub":"@alice:example.org:DEVICE","exp":{exp},"nbf":{},"video":{{"roomJoin":true,"room":"!r:x"}}}}"#,
            NOW - 10
        )
    }

    fn alice() -> Claims {
        Claims {
            issuer: "APIkey".into(),
            identity: "@alice:example.org:DEVICE".into(),
        }
    }

    fn verified(token: &str) -> Option<Verified> {
        verify(token, "APIkey", &Secret::new(SECRET), NOW)
    }

    #[test]
    fn a_token_livekit_issued_is_read_and_verified_with_its_room_join_grant() {
        let good = signed(&claims(NOW + 3600));
        assert_eq!(read(&good), Some(alice()));
        assert_eq!(
            verified(&good),
            Some(Verified {
                claims: alice(),
                room_join: true,
                can_publish: true,
            })
        );
    }

    /// LiveKit's join permission takes `canPublish` as true unless the
    /// grant says `false`, so only that token is known not to publish.
    #[test]
    fn a_token_publishes_unless_its_grant_says_false() {
        for (video, can_publish) in [
            (r#","video":{"roomJoin":true}"#, true),
            (r#","video":{"roomJoin":true,"canPublish":null}"#, true),
            (r#","video":{"roomJoin":true,"canPublish":true}"#, true),
            (
                r#","video":{"roomJoin":true,"canPublish":false,"canSubscribe":true}"#,
                false,
            ),
            (r#","video":{"canPublish":false}"#, false),
            ("", true),
            (r#","video":null"#, true),
        ] {
            let token = signed(&format!(
                r#"{{"iss":"APIkey","sub":"s","exp":{}{video}}}"#,
                NOW + 60
            ));
            let verified = verified(&token).expect(video);
            assert_eq!(verified.can_publish, can_publish, "{video}");
        }
    }

    #[test]
    fn a_token_without_the_room_join_grant_verifies_without_it() {
        for video in [
            "",
            r#","video":null"#,
            r#","video":{}"#,
            r#","video":{"roomJoin":false}"#,
            r#","video":{"roomJoin":null,"room":"r"}"#,
            r#","video":{"roomAdmin":true}"#,
        ] {
            let token = signed(&format!(
                r#"{{"iss":"APIkey","sub":"s","exp":{}{video}}}"#,
                NOW + 60
            ));
            let verified = verified(&token).expect(video);
            assert!(!verified.room_join, "{video}");
        }
    }

    #[test]
    fn the_identity_is_sub_else_jti_as_livekit_takes_it() {
        let with = |claims: &str| read(&signed(&format!(r#"{{"iss":"APIkey",{claims}}}"#)));
        let named = |identity: &str| {
            Some(Claims {
                issuer: "APIkey".into(),
                identity: identity.into(),
            })
        };
        assert_eq!(with(r#""sub":"@a","jti":"j""#), named("@a"));
        assert_eq!(with(r#""sub":"","jti":"j""#), named("j"));
        assert_eq!(with(r#""jti":"j""#), named("j"));
        assert_eq!(with(r#""sub":null,"jti":"j""#), named("j"));
        assert_eq!(with(r#""sub":"","jti":"""#), None);
        assert_eq!(read(&signed(r#"{"sub":"@a"}"#)), None, "no issuer");
    }

    #[test]
    fn keys_that_go_would_fold_onto_a_claim_or_give_twice_make_the_token_unreadable() {
        for payload in [
            r#"{"iss":"APIkey","sub":"@carol","SUB":"@dave"}"#,
            r#"{"iss":"APIkey","Sub":"@dave"}"#,
            r#"{"iss":"APIkey","sub":"@carol","\u017fub":"@dave"}"#,
            "{\"iss\":\"APIkey\",\"sub\":\"@carol\",\"\u{17f}ub\":\"@dave\"}",
            r#"{"iss":"APIkey","sub":"@carol","sub":"@dave"}"#,
            r#"{"ISS":"other","iss":"APIkey","sub":"@a"}"#,
            r#"{"iss":"APIkey","sub":"@a","JTI":"j"}"#,
        ] {
            assert_eq!(read(&signed(payload)), None, "{payload}");
        }
        // A Kelvin sign folds onto `k`: no claim of the unverified read has
        // one, LiveKit's grants do.
        let kelvin = format!(
            r#"{{"iss":"APIkey","sub":"@a","exp":{},"\u212aind":"x","kind":"y"}}"#,
            NOW + 60
        );
        assert_eq!(verified(&signed(&kelvin)), None);
        let video_twice = format!(
            r#"{{"iss":"APIkey","sub":"@a","exp":{},"video":{{"roomJoin":true,"roomjoin":false}}}}"#,
            NOW + 60
        );
        assert_eq!(verified(&signed(&video_twice)), None);
        // Keys no claim has are ignored, as Go ignores them.
        let other = signed(r#"{"iss":"APIkey","sub":"@a","subject":"@b","x":[1,{"sub":2}]}"#);
        assert_eq!(read(&other).map(|c| c.identity), Some("@a".into()));
    }

    #[test]
    fn a_claim_of_a_type_livekit_refuses_makes_the_token_unreadable() {
        for payload in [
            r#"{"iss":"APIkey","sub":5}"#,
            r#"{"iss":["APIkey"],"sub":"@a"}"#,
            r#"{"iss":"APIkey","sub":"@a","exp":"1800000000"}"#,
            r#"{"iss":"APIkey","sub":"@a","aud":[1]}"#,
            r#"{"iss":"APIkey","sub":"@a","iat":true}"#,
            r#"["iss","sub"]"#,
            r#"{"iss":"APIkey","sub":"@a"}x"#,
        ] {
            assert_eq!(read(&signed(payload)), None, "{payload}");
        }
        for grants in [
            r#""video":{"roomJoin":"yes"}"#,
            r#""video":{"room":1}"#,
            r#""video":[]"#,
            r#""name":1"#,
            r#""attributes":{"a":1}"#,
            r#""kindDetails":"x""#,
            r#""sip":{}"#,
            r#""roomConfig":null"#,
        ] {
            let payload = format!(r#"{{"iss":"APIkey","sub":"@a","exp":{},{grants}}}"#, NOW + 60);
            assert!(
                read(&signed(&payload)).is_some(),
                "{grants}: not a registered claim"
            );
            assert_eq!(verified(&signed(&payload)), None, "{grants}");
        }
        let fine = format!(
            r#"{{"iss":"APIkey","sub":"@a","exp":{},"aud":["x"],"name":null,"attributes":{{"a":"b"}},"kindDetails":["c"],"video":{{"canPublishSources":["camera"],"canPublish":false}}}}"#,
            NOW + 60
        );
        assert!(verified(&signed(&fine)).is_some());
    }

    #[test]
    fn dates_may_be_fractional_and_count_in_whole_seconds() {
        let at = |exp: &str, nbf: &str| {
            signed(&format!(
                r#"{{"iss":"APIkey","sub":"@a","exp":{exp},"nbf":{nbf}}}"#
            ))
        };
        assert!(
            verified(&at(&format!("{NOW}.999"), "0")).is_none(),
            "exp truncates to now"
        );
        assert!(verified(&at(&format!("{}.5", NOW + 1), "0")).is_some());
        assert!(verified(&at(&format!("{}e0", NOW + 1), &format!("{NOW}.9"))).is_some());
        assert!(
            verified(&at(&(NOW + 60).to_string(), &NOW.to_string())).is_some(),
            "valid from this very second"
        );
        assert!(verified(&at(&(NOW + 60).to_string(), &(NOW + 1).to_string())).is_none());
        assert!(verified(&at("1e300", "0")).is_none(), "beyond what Go represents");
        assert!(verified(&at(&(NOW + 60).to_string(), "-1")).is_none());
        assert!(verified(&at(&(NOW + 60).to_string(), "null")).is_some());
    }

    #[test]
    fn a_forged_expired_or_foreign_token_is_not_verified_but_still_read() {
        let secret = Secret::new(SECRET);
        let forged = token(HS256, &claims(NOW + 3600), "another-secret");
        let expired = signed(&claims(NOW));
        let no_exp = signed(r#"{"iss":"APIkey","sub":"s"}"#);
        let not_yet = signed(&format!(
            r#"{{"iss":"APIkey","sub":"s","exp":{},"nbf":{}}}"#,
            NOW + 60,
            NOW + 30
        ));
        for refused in [&forged, &expired, &no_exp, &not_yet] {
            assert_eq!(verify(refused, "APIkey", &secret, NOW), None, "{refused}");
        }
        let good = signed(&claims(NOW + 3600));
        assert_eq!(verify(&good, "OtherKey", &secret, NOW), None);
        // LiveKit's acceptance authenticates a token the daemon cannot verify.
        assert_eq!(read(&forged), Some(alice()));
    }

    #[test]
    fn only_an_hs256_header_golang_jwt_would_parse_is_read() {
        let payload = claims(NOW + 3600);
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS384"}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"ALG":"HS256"}"#,
            r#"["HS256"]"#,
            "not json",
            r#"{"alg":"HS256","alg":"none"}"#,
        ] {
            let token = token(header, &payload, SECRET);
            assert_eq!(read(&token), None, "{header}");
            assert_eq!(verified(&token), None, "{header}");
        }
        // The last `alg` wins in Go's map, as in serde_json's.
        let last = token(r#"{"alg":"none","alg":"HS256"}"#, &payload, SECRET);
        assert_eq!(read(&last), Some(alice()));
    }

    #[test]
    fn what_is_not_three_unpadded_base64url_parts_has_no_claims() {
        let good = signed(&claims(NOW + 3600));
        let (header, rest) = good.split_once('.').expect("parts");
        let (payload, signature) = rest.split_once('.').expect("parts");
        for token in [
            String::new(),
            "abc".into(),
            "a.b".into(),
            format!("{good}.x"),
            format!("{header}.{payload}"),
            format!("{header}=.{payload}.{signature}"),
            format!("{header}.{payload}=.{signature}"),
            format!("{header}.{payload}.{signature}="),
            format!("{header}.{payload}.!!"),
            format!("{header}.!!.{signature}"),
            format!("{header}\n.{payload}.{signature}"),
        ] {
            assert_eq!(read(&token), None, "{token}");
            assert_eq!(verified(&token), None, "{token}");
        }
    }

    #[test]
    fn a_signed_token_is_what_the_verifier_and_livekit_expect() {
        let payload: serde_json::Value = serde_json::from_str(&claims(NOW + 3600)).expect("JSON");
        let signed = sign(&payload, &Secret::new(SECRET));
        assert_eq!(signed, token(HS256, &payload.to_string(), SECRET));
        assert_eq!(verified(&signed).map(|v| v.claims), Some(alice()));
        assert_eq!(verify(&signed, "APIkey", &Secret::new("another"), NOW), None);
    }
}
