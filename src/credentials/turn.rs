//! The pure part of the job (docs/behaviour.md §4): Cloudflare's ICE-server answer becomes
//! a TURN credential, and a credential becomes the Matrix turnServer answer.
//! No I/O and no clock: the caller passes the remaining lifetime in.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Cloudflare's answer. `generate-ice-servers` sends `iceServers` as a list;
/// the older `generate` endpoint, used by the Python original, as one object.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceServersAnswer {
    pub ice_servers: IceServers,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum IceServers {
    List(Vec<IceServer>),
    Single(IceServer),
}

impl IceServers {
    fn entries(&self) -> &[IceServer] {
        match self {
            Self::List(list) => list,
            Self::Single(one) => std::slice::from_ref(one),
        }
    }
}

/// One WebRTC `RTCIceServer` entry; `urls` may be a string or a list of them.
#[derive(Deserialize)]
pub struct IceServer {
    pub urls: Urls,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
}

impl fmt::Debug for IceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("has_username", &self.username.is_some())
            .field("has_credential", &self.credential.is_some())
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Urls {
    One(String),
    Many(Vec<String>),
}

impl Urls {
    fn iter(&self) -> impl Iterator<Item = &str> {
        let many: &[String] = match self {
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(many) => many,
        };
        many.iter().map(String::as_str)
    }
}

/// A usable TURN credential: at least one TURN URI and a username/password.
#[derive(Clone, PartialEq, Eq)]
pub struct TurnCredential {
    pub username: String,
    pub password: String,
    pub uris: Vec<String>,
}

impl fmt::Debug for TurnCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnCredential")
            .field("username", &"[redacted]")
            .field("password", &"[redacted]")
            .field("uris", &self.uris)
            .finish()
    }
}

/// Why an otherwise well-formed Cloudflare answer cannot be handed to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("no turn: or turns: URI on a port other than 53")]
    NoTurnUri,
    #[error("the entry with TURN URIs has no username or credential")]
    MissingCredential,
    #[error("two entries carry different credentials")]
    ConflictingCredentials,
}

/// Picks the TURN URIs a Matrix client can use and the credential that goes
/// with them.
pub fn extract(servers: &IceServers) -> Result<TurnCredential, Unusable> {
    let mut credential: Option<(&str, &str)> = None;
    let mut uris: Vec<String> = Vec::new();
    for entry in servers.entries() {
        let usable: Vec<&str> = entry.urls.iter().filter(|uri| is_usable_turn_uri(uri)).collect();
        if usable.is_empty() {
            // STUN entries carry no credential, and an entry whose TURN URIs
            // are all dropped contributes nothing a client could use.
            continue;
        }
        let entry_credential = match (entry.username.as_deref(), entry.credential.as_deref()) {
            (Some(user), Some(pass)) if !user.is_empty() && !pass.is_empty() => (user, pass),
            _ => return Err(Unusable::MissingCredential),
        };
        match credential {
            Some(existing) if existing != entry_credential => {
                return Err(Unusable::ConflictingCredentials);
            }
            _ => credential = Some(entry_credential),
        }
        for uri in usable {
            if !uris.iter().any(|kept| kept == uri) {
                uris.push(uri.to_owned());
            }
        }
    }
    let (username, password) = credential.ok_or(Unusable::NoTurnUri)?;
    Ok(TurnCredential {
        username: username.to_owned(),
        password: password.to_owned(),
        uris,
    })
}

/// `turn:`/`turns:` (RFC 7065) on any port but 53. Port 53 goes because the
/// contract and Cloudflare's guidance ask for it: networks that capture DNS
/// traffic break TURN there, and it is a "bad port" for fetch in browsers.
/// Browsers differ on it for TURN (tests/e2e/relay.sh records it each run):
/// Firefox ESR 153 relays through it; Chromium 156 sends nothing to it, so
/// the URI yields no candidate (its WebRTC library itself allows 53, 80,
/// 443 and >= 1024). The port is parsed, not searched for: `:5349` must
/// survive.
fn is_usable_turn_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once(':') else {
        return false;
    };
    let default_port = if scheme.eq_ignore_ascii_case("turn") {
        3478
    } else if scheme.eq_ignore_ascii_case("turns") {
        5349
    } else {
        return false;
    };
    matches!(turn_uri_port(rest, default_port), Some(port) if port != 53)
}

/// The port of `host[:port][?query]`, where host may be a bracketed IPv6
/// address. `None` for a malformed authority.
fn turn_uri_port(rest: &str, default_port: u16) -> Option<u16> {
    let authority = rest.split_once('?').map_or(rest, |(authority, _)| authority);
    let port_part = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        if host.is_empty() {
            return None;
        }
        match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        }
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if host.is_empty() || host.contains(':') {
            return None;
        }
        port
    };
    match port_part {
        None => Some(default_port),
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => port.parse().ok(),
        Some(_) => None,
    }
}

/// Points `turn:` URIs at the admin's own CNAME of `turn.cloudflare.com`.
/// `turns:` URIs keep Cloudflare's host: a custom domain has no certificate
/// there, so TLS to it would fail (Cloudflare TURN docs, "Custom TURN domain").
pub fn with_custom_domain(mut credential: TurnCredential, domain: &str) -> TurnCredential {
    for uri in &mut credential.uris {
        if let Some(rewritten) = rewrite_turn_host(uri, domain) {
            *uri = rewritten;
        }
    }
    let mut seen = Vec::with_capacity(credential.uris.len());
    credential.uris.retain(|uri| {
        let first = !seen.contains(uri);
        if first {
            seen.push(uri.clone());
        }
        first
    });
    credential
}

fn rewrite_turn_host(uri: &str, domain: &str) -> Option<String> {
    let (scheme, rest) = uri.split_once(':')?;
    if !scheme.eq_ignore_ascii_case("turn") {
        return None;
    }
    let (authority, query) = match rest.split_once('?') {
        Some((authority, query)) => (authority, Some(query)),
        None => (rest, None),
    };
    let port = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']')?.1
    } else {
        authority.rfind(':').map_or("", |i| &authority[i..])
    };
    let mut rewritten = format!("{scheme}:{domain}{port}");
    if let Some(query) = query {
        rewritten.push('?');
        rewritten.push_str(query);
    }
    Some(rewritten)
}

/// The Matrix `GET /voip/turnServer` answer body, in Synapse's key order.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct MatrixTurnAnswer<'a> {
    pub username: &'a str,
    pub password: &'a str,
    /// Seconds the credential is still valid: clients store `now + ttl` as
    /// its expiry, so this is the remaining lifetime, never the configured one.
    pub ttl: u64,
    pub uris: &'a [String],
}

pub fn matrix_answer(credential: &TurnCredential, remaining_seconds: u64) -> MatrixTurnAnswer<'_> {
    MatrixTurnAnswer {
        username: &credential.username,
        password: &credential.password,
        ttl: remaining_seconds,
        uris: &credential.uris,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> IceServers {
        serde_json::from_str::<IceServersAnswer>(json)
            .expect("valid answer")
            .ice_servers
    }

    /// The documented `generate-ice-servers` answer (docs/behaviour.md §4).
    const CURRENT: &str = r#"{"iceServers":[
        {"urls":["stun:stun.cloudflare.com:3478","stun:stun.cloudflare.com:53"]},
        {"urls":["turn:turn.cloudflare.com:3478?transport=udp","turn:turn.cloudflare.com:53?transport=udp",
                 "turn:turn.cloudflare.com:3478?transport=tcp","turn:turn.cloudflare.com:80?transport=tcp",
                 "turns:turn.cloudflare.com:5349?transport=tcp","turns:turn.cloudflare.com:443?transport=tcp"],
         "username":"u1","credential":"p1"}]}"#;

    const EXPECTED_URIS: [&str; 5] = [
        "turn:turn.cloudflare.com:3478?transport=udp",
        "turn:turn.cloudflare.com:3478?transport=tcp",
        "turn:turn.cloudflare.com:80?transport=tcp",
        "turns:turn.cloudflare.com:5349?transport=tcp",
        "turns:turn.cloudflare.com:443?transport=tcp",
    ];

    #[test]
    fn current_answer_keeps_turn_uris_in_order_without_port_53() {
        let credential = extract(&parse(CURRENT)).expect("usable");
        assert_eq!(credential.uris, EXPECTED_URIS);
        assert_eq!(credential.username, "u1");
        assert_eq!(credential.password, "p1");
    }

    #[test]
    fn legacy_single_object_with_string_urls_is_accepted() {
        let legacy = r#"{"iceServers":{"urls":"turns:turn.cloudflare.com:5349?transport=tcp","username":"u","credential":"p"}}"#;
        let credential = extract(&parse(legacy)).expect("usable");
        assert_eq!(credential.uris, ["turns:turn.cloudflare.com:5349?transport=tcp"]);
    }

    #[test]
    fn legacy_single_object_with_a_url_list_is_accepted() {
        let legacy = r#"{"iceServers":{"urls":["stun:stun.cloudflare.com:3478","turn:turn.cloudflare.com:3478?transport=udp","turn:turn.cloudflare.com:53?transport=udp"],"username":"u","credential":"p"}}"#;
        let credential = extract(&parse(legacy)).expect("usable");
        assert_eq!(credential.uris, ["turn:turn.cloudflare.com:3478?transport=udp"]);
    }

    #[test]
    fn port_filter_parses_the_port() {
        let cases: &[(&str, bool)] = &[
            ("turn:turn.cloudflare.com:53?transport=udp", false),
            ("turn:turn.cloudflare.com:53", false),
            ("turns:turn.cloudflare.com:53?transport=tcp", false),
            ("turns:turn.cloudflare.com:5349?transport=tcp", true),
            ("turn:turn.cloudflare.com:530", true),
            ("turn:turn.cloudflare.com:3478", true),
            ("turn:turn.cloudflare.com", true),
            ("turns:turn.cloudflare.com?transport=tcp", true),
            ("turn:53.53.53.53:3478", true),
            ("turn:[2001:db8::53]:3478?transport=udp", true),
            ("turn:[2001:db8::1]:53?transport=udp", false),
            ("turn:[2001:db8::1]", true),
            ("turn:[::1]x", false),
            ("turn:[]:3478", false),
            ("turn:[]", false),
            ("turns:[]:443?transport=tcp", false),
            ("turn:2001:db8::1:3478", false),
            ("turn::3478", false),
            ("turn:host:", false),
            ("turn:host:99999", false),
            ("turn:host:+80", false),
            ("TURN:turn.example.org:3478", true),
            ("stun:stun.cloudflare.com:3478", false),
            ("stuns:stun.cloudflare.com:5349", false),
            ("https://turn.cloudflare.com:443", false),
            ("turnturn.cloudflare.com", false),
            ("", false),
        ];
        for (uri, usable) in cases {
            assert_eq!(is_usable_turn_uri(uri), *usable, "{uri}");
        }
    }

    #[test]
    fn duplicates_are_dropped_keeping_the_first() {
        let answer = r#"{"iceServers":[{"urls":["turn:a:3478","turns:a:443","turn:a:3478"],"username":"u","credential":"p"},
                                        {"urls":"turns:a:443","username":"u","credential":"p"}]}"#;
        assert_eq!(
            extract(&parse(answer)).expect("usable").uris,
            ["turn:a:3478", "turns:a:443"]
        );
    }

    #[test]
    fn unusable_answers_are_errors_not_empty_lists() {
        let cases: &[(&str, Unusable)] = &[
            (r#"{"iceServers":[]}"#, Unusable::NoTurnUri),
            (
                r#"{"iceServers":[{"urls":["stun:stun.cloudflare.com:3478"]}]}"#,
                Unusable::NoTurnUri,
            ),
            (
                r#"{"iceServers":[{"urls":["turn:t:53?transport=udp","turns:t:53"],"username":"u","credential":"p"}]}"#,
                Unusable::NoTurnUri,
            ),
            (
                r#"{"iceServers":[{"urls":"turn:t:3478","username":"u"}]}"#,
                Unusable::MissingCredential,
            ),
            (
                r#"{"iceServers":[{"urls":"turn:t:3478","credential":"p"}]}"#,
                Unusable::MissingCredential,
            ),
            (
                r#"{"iceServers":[{"urls":"turn:t:3478","username":"","credential":"p"}]}"#,
                Unusable::MissingCredential,
            ),
            (
                r#"{"iceServers":[{"urls":"turn:t:3478","username":"u","credential":"p"},{"urls":"turns:t:443","username":"u2","credential":"p2"}]}"#,
                Unusable::ConflictingCredentials,
            ),
        ];
        for (answer, expected) in cases {
            assert_eq!(extract(&parse(answer)), Err(*expected), "{answer}");
        }
    }

    #[test]
    fn entries_with_only_dropped_uris_need_no_credential() {
        let answer =
            r#"{"iceServers":[{"urls":"turn:t:53"},{"urls":"turn:t:3478","username":"u","credential":"p"}]}"#;
        assert_eq!(extract(&parse(answer)).expect("usable").uris, ["turn:t:3478"]);
    }

    #[test]
    fn wrong_shapes_do_not_parse() {
        for answer in [
            r#"{}"#,
            r#"{"iceServers":"turn:t:3478"}"#,
            r#"{"iceServers":[{"username":"u"}]}"#,
            r#"{"iceServers":[{"urls":3478}]}"#,
            r#"[]"#,
        ] {
            assert!(
                serde_json::from_str::<IceServersAnswer>(answer).is_err(),
                "{answer}"
            );
        }
    }

    #[test]
    fn matrix_answer_has_synapses_key_order_and_the_remaining_ttl() {
        let credential = extract(&parse(CURRENT)).expect("usable");
        let body = serde_json::to_string(&matrix_answer(&credential, 1234)).expect("serialises");
        let expected_uris = serde_json::to_string(&EXPECTED_URIS).expect("serialises");
        assert_eq!(
            body,
            format!(r#"{{"username":"u1","password":"p1","ttl":1234,"uris":{expected_uris}}}"#)
        );
    }

    #[test]
    fn custom_domain_rewrites_turn_hosts_but_never_turns() {
        let credential = extract(&parse(CURRENT)).expect("usable");
        let rewritten = with_custom_domain(credential, "turn.example.org");
        assert_eq!(
            rewritten.uris,
            [
                "turn:turn.example.org:3478?transport=udp",
                "turn:turn.example.org:3478?transport=tcp",
                "turn:turn.example.org:80?transport=tcp",
                "turns:turn.cloudflare.com:5349?transport=tcp",
                "turns:turn.cloudflare.com:443?transport=tcp",
            ]
        );
    }

    #[test]
    fn custom_domain_keeps_a_missing_port_missing_and_handles_ipv6() {
        let credential = TurnCredential {
            username: "u".into(),
            password: "p".into(),
            uris: vec![
                "turn:turn.cloudflare.com".into(),
                "turn:[2001:db8::1]:3478?transport=udp".into(),
            ],
        };
        assert_eq!(
            with_custom_domain(credential, "t.example").uris,
            ["turn:t.example", "turn:t.example:3478?transport=udp"]
        );
    }

    /// Two `turn:` URIs that differ only in Cloudflare's host name become
    /// the same URI on the custom domain: a client would try it twice.
    #[test]
    fn custom_domain_drops_the_uris_its_rewrite_made_equal() {
        let credential = TurnCredential {
            username: "u".into(),
            password: "p".into(),
            uris: vec![
                "turn:turn.cloudflare.com:3478?transport=udp".into(),
                "turn:TURN.cloudflare.com:3478?transport=udp".into(),
                "turns:turn.cloudflare.com:443?transport=tcp".into(),
                "turn:turn.cloudflare.com:3478?transport=udp".into(),
                "turn:[2001:db8::1]:3478?transport=udp".into(),
            ],
        };
        assert_eq!(
            with_custom_domain(credential, "t.example").uris,
            [
                "turn:t.example:3478?transport=udp",
                "turns:turn.cloudflare.com:443?transport=tcp",
            ]
        );
    }

    /// Cloudflare's answer itself, as a debug log of it would print it.
    #[test]
    fn debug_output_of_the_answer_hides_the_credential() {
        let answer = r#"{"iceServers":[{"urls":"turn:t:3478","username":"cf-user-secret","credential":"cf-pass-secret"}]}"#;
        let parsed = serde_json::from_str::<IceServersAnswer>(answer).expect("valid answer");
        let debug = format!("{parsed:?}");
        assert!(debug.contains("turn:t:3478"), "{debug}");
        assert!(
            !debug.contains("cf-user-secret") && !debug.contains("cf-pass-secret"),
            "{debug}"
        );
    }

    #[test]
    fn debug_output_hides_the_credential() {
        let credential = extract(&parse(CURRENT)).expect("usable");
        let debug = format!("{credential:?}");
        assert!(!debug.contains("u1") && !debug.contains("p1"), "{debug}");
        // What a log reader needs of it stays: where clients will connect.
        assert!(debug.contains(EXPECTED_URIS[0]), "{debug}");
    }
}
