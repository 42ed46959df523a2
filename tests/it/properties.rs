//! Property tests of the Cloudflare-answer parser and the reshaping (docs/behaviour.md §4):
//! whatever Cloudflare sends, the daemon does not panic, and what it hands a
//! client has only usable, distinct TURN URIs — or it is an error, never an
//! empty list. PROPTEST_CASES raises the count for a longer run by hand.

use matrix_turnify::turn::{self, IceServersAnswer, Unusable};
use proptest::prelude::*;

fn scheme() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        6 => prop::sample::select(vec!["turn", "turns"]),
        1 => prop::sample::select(vec!["TURN", "stun", "stuns", "https", ""]),
    ]
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("turn.cloudflare.com".to_owned()),
        Just("53.53.53.53".to_owned()),
        Just("[2001:db8::53]".to_owned()),
        Just("[::1".to_owned()),
        Just(String::new()),
        "[a-z0-9.:-]{0,12}",
    ]
}

fn port() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(":53".to_owned()),
        Just(":5349".to_owned()),
        Just(":530".to_owned()),
        Just(":".to_owned()),
        (0u32..70_000).prop_map(|p| format!(":{p}")),
        "[:0-9a-z+]{0,6}",
    ]
}

fn query() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "?transport=udp", "?transport=tcp", "?", "?x=:53"])
}

fn url() -> impl Strategy<Value = String> {
    prop_oneof![
        9 => (scheme(), host(), port(), query()).prop_map(|(s, h, p, q)| format!("{s}:{h}{p}{q}")),
        1 => any::<String>(),
    ]
}

/// Mostly one consistent credential, sometimes a second one or a gap.
fn credential() -> impl Strategy<Value = (Option<&'static str>, Option<&'static str>)> {
    let part = || prop::option::of(prop::sample::select(vec!["u1", "u2", ""]));
    prop_oneof![
        7 => Just((Some("u1"), Some("p1"))),
        1 => Just((Some("u2"), Some("p2"))),
        2 => (part(), part()),
    ]
}

fn entry() -> impl Strategy<Value = serde_json::Value> {
    (prop::collection::vec(url(), 0..6), any::<bool>(), credential()).prop_map(
        |(urls, as_string, (username, password))| {
            let mut entry = serde_json::Map::new();
            let urls = match (as_string, urls.first()) {
                (true, Some(first)) => serde_json::json!(first),
                _ => serde_json::json!(urls),
            };
            entry.insert("urls".into(), urls);
            if let Some(username) = username {
                entry.insert("username".into(), username.into());
            }
            if let Some(password) = password {
                entry.insert("credential".into(), password.into());
            }
            serde_json::Value::Object(entry)
        },
    )
}

/// Answers in both documented shapes, plus arbitrary JSON-ish text.
fn answer() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(entry(), 0..4).prop_map(|list| serde_json::json!({"iceServers": list}).to_string()),
        2 => entry().prop_map(|one| serde_json::json!({"iceServers": one}).to_string()),
        1 => any::<String>(),
        1 => "\\{\"iceServers\":[\\[\\]{}\",:a-z0-9]{0,40}",
    ]
}

fn port_is_53(uri: &str) -> bool {
    let rest = uri.split_once(':').map_or("", |(_, rest)| rest);
    let authority = rest.split('?').next().unwrap_or("");
    let after_host = authority.rsplit_once(']').map_or(authority, |(_, after)| after);
    after_host.rsplit_once(':').is_some_and(|(_, port)| port == "53")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn parsing_and_reshaping_never_panic_and_keep_their_promises(text in answer()) {
        let Ok(parsed) = serde_json::from_str::<IceServersAnswer>(&text) else {
            return Ok(());
        };
        match turn::extract(&parsed.ice_servers) {
            Ok(credential) => {
                prop_assert!(!credential.uris.is_empty());
                prop_assert!(!credential.username.is_empty() && !credential.password.is_empty());
                for (i, uri) in credential.uris.iter().enumerate() {
                    let scheme = uri.split(':').next().unwrap_or("").to_ascii_lowercase();
                    prop_assert!(scheme == "turn" || scheme == "turns", "{uri}");
                    prop_assert!(!port_is_53(uri), "{uri}");
                    prop_assert!(!credential.uris[..i].contains(uri), "duplicate {uri}");
                    prop_assert!(text.contains(uri.as_str()), "{uri} came from the input");
                }
                let body = serde_json::to_value(turn::matrix_answer(&credential, 60)).expect("serialises");
                prop_assert_eq!(body["uris"].as_array().map(Vec::len), Some(credential.uris.len()));
            }
            Err(Unusable::NoTurnUri | Unusable::MissingCredential | Unusable::ConflictingCredentials) => {}
        }
    }

    #[test]
    fn a_custom_domain_never_touches_turns_uris(text in answer(), domain in "[a-z]{1,8}\\.example\\.org") {
        let Ok(parsed) = serde_json::from_str::<IceServersAnswer>(&text) else {
            return Ok(());
        };
        let Ok(credential) = turn::extract(&parsed.ice_servers) else {
            return Ok(());
        };
        let turns_before: Vec<String> =
            credential.uris.iter().filter(|u| u.to_ascii_lowercase().starts_with("turns:")).cloned().collect();
        let rewritten = turn::with_custom_domain(credential, &domain);
        let turns_after: Vec<String> =
            rewritten.uris.iter().filter(|u| u.to_ascii_lowercase().starts_with("turns:")).cloned().collect();
        prop_assert_eq!(turns_before, turns_after);
        prop_assert!(!rewritten.uris.is_empty());
    }
}
