//! A LiveKit participant's token (docs/behaviour.md §12): the identity it
//! names, read without verifying (LiveKit's own acceptance of the token is
//! the authentication then), or verified with LiveKit's API key and secret
//! (HS256, `exp` required), which lets a mint start before LiveKit answers;
//! and signed, for `check`'s test join. Pure: the current time is passed in.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::config::Secret;

/// The claims the daemon uses: who issued the token (the API key) and whom
/// it names (the participant's identity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub issuer: String,
    pub subject: String,
}

#[derive(Deserialize)]
struct Payload {
    iss: String,
    sub: String,
    exp: Option<u64>,
    nbf: Option<u64>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

fn decode<T: for<'de> Deserialize<'de>>(part: &str) -> Option<T> {
    // Base64url without padding (RFC 7515 §2); a padded part is tolerated.
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn payload(token: &str) -> Option<(&str, &str, Payload)> {
    let (signed, signature) = token.rsplit_once('.')?;
    let (_, payload) = signed.split_once('.')?;
    if payload.contains('.') {
        return None;
    }
    Some((signed, signature, decode(payload)?))
}

/// The claims of `token`, not verified: for a token LiveKit has accepted.
pub fn read(token: &str) -> Option<Claims> {
    let (_, _, payload) = payload(token)?;
    Some(Claims {
        issuer: payload.iss,
        subject: payload.sub,
    })
}

/// The claims of `token` if it is an HS256 JWT signed with `secret`,
/// issued by `api_key`, with an `exp` after `now` (seconds since the Unix
/// epoch) and no `nbf` after it: what LiveKit checks of a token's own.
pub fn verify(token: &str, api_key: &str, secret: &Secret, now: u64) -> Option<Claims> {
    let (signed, signature, payload) = payload(token)?;
    let (header, _) = signed.split_once('.')?;
    if decode::<Header>(header)?.alg != "HS256" {
        return None;
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(signed.as_bytes());
    mac.verify_slice(&signature).ok()?;
    let fresh = payload.exp.is_some_and(|exp| exp > now) && payload.nbf.is_none_or(|nbf| nbf <= now);
    (fresh && payload.iss == api_key).then_some(Claims {
        issuer: payload.iss,
        subject: payload.sub,
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

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "livekit-secret";
    const NOW: u64 = 1_800_000_000;

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

    const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    fn claims(exp: u64) -> String {
        format!(
            r#"{{"iss":"APIkey","sub":"@alice:example.org:DEVICE","exp":{exp},"nbf":{},"video":{{"roomJoin":true,"room":"!r:x"}}}}"#,
            NOW - 10
        )
    }

    fn alice() -> Option<Claims> {
        Some(Claims {
            issuer: "APIkey".into(),
            subject: "@alice:example.org:DEVICE".into(),
        })
    }

    #[test]
    fn a_token_livekit_issued_is_read_and_verified() {
        let good = token(HS256, &claims(NOW + 3600), SECRET);
        assert_eq!(read(&good), alice());
        assert_eq!(verify(&good, "APIkey", &Secret::new(SECRET), NOW), alice());
    }

    #[test]
    fn a_forged_expired_or_foreign_token_is_not_verified_but_still_read() {
        let secret = Secret::new(SECRET);
        let forged = token(HS256, &claims(NOW + 3600), "another-secret");
        let expired = token(HS256, &claims(NOW), SECRET);
        let no_exp = token(HS256, r#"{"iss":"APIkey","sub":"s"}"#, SECRET);
        let not_yet = token(
            HS256,
            &format!(
                r#"{{"iss":"APIkey","sub":"s","exp":{},"nbf":{}}}"#,
                NOW + 60,
                NOW + 30
            ),
            SECRET,
        );
        let none_alg = token(r#"{"alg":"none"}"#, &claims(NOW + 3600), SECRET);
        for refused in [&forged, &expired, &no_exp, &not_yet, &none_alg] {
            assert_eq!(verify(refused, "APIkey", &secret, NOW), None, "{refused}");
        }
        let good = token(HS256, &claims(NOW + 3600), SECRET);
        assert_eq!(verify(&good, "OtherKey", &secret, NOW), None);
        // LiveKit's acceptance authenticates a token the daemon cannot verify.
        assert_eq!(read(&forged), alice());
    }

    #[test]
    fn what_is_not_a_jwt_has_no_claims() {
        for token in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "e30.e30.sig",
            "eyJhbGciOiJIUzI1NiJ9.!!!.sig",
            &token(HS256, r#"{"iss":1,"sub":"s"}"#, SECRET),
            &token(HS256, r#"{"sub":"s"}"#, SECRET),
        ] {
            assert_eq!(read(token), None, "{token}");
        }
    }

    #[test]
    fn a_signed_token_is_what_the_verifier_and_livekit_expect() {
        let payload: serde_json::Value = serde_json::from_str(&claims(NOW + 3600)).expect("JSON");
        let signed = sign(&payload, &Secret::new(SECRET));
        assert_eq!(signed, token(HS256, &payload.to_string(), SECRET));
        assert_eq!(verify(&signed, "APIkey", &Secret::new(SECRET), NOW), alice());
        assert_eq!(verify(&signed, "APIkey", &Secret::new("another"), NOW), None);
    }
}
