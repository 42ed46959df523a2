//! The token the homeserver saw (docs/behaviour.md §3): the daemon decides from the
//! request as it was forwarded, and mints only when every homeserver family
//! would read the same single token from it. Each test sends a request that
//! two families read differently to a fake that parses it the way that
//! family does (`turnify_fakes::token_rules`), and counts the mints.

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use turnify_fakes::token_rules::{self, Presented};
use turnify_fakes::{CloudflareOptions, Flavour, SynapseBehaviour, SynapseOptions};

use crate::harness::{ALICE, Stack, get, send};

const V3: &str = "/_matrix/client/v3/voip/turnServer";
/// A homeserver's own coturn answer, which must come back untouched.
const COTURN: &str = r#"{"username":"1795352607:@x:localhost","password":"p","ttl":3600,"uris":["turn:turn.example.test:3478"]}"#;

/// conduwuit (and older continuwuity and tuwunel) with `turn_allow_guests`
/// and TURN configured: 200 with its own credentials even without a token.
fn conduwuit_anonymous_turn() -> SynapseOptions {
    SynapseOptions {
        flavour: Flavour::Msc4166,
        anonymous_turn: true,
        turn_body: COTURN.to_owned(),
        ..SynapseOptions::default()
    }
}

/// A homeserver that answers 200 `{}` to any request: whether the daemon
/// mints then depends on its own reading of the token alone.
fn accepts_anything() -> SynapseOptions {
    SynapseOptions {
        behaviour: SynapseBehaviour::Status {
            status: 200,
            body: "{}".to_owned(),
            headers: Vec::new(),
        },
        ..SynapseOptions::default()
    }
}

async fn start(options: SynapseOptions, extra: &[(&str, &str)]) -> Stack {
    Stack::start_with(options, CloudflareOptions::default(), extra).await
}

/// Finding 1: Twisted splits the query on `;` as well as `&`, the Conduit
/// family does not, so `x=1;access_token=…` is anonymous to the homeserver.
#[tokio::test]
async fn a_semicolon_in_the_query_gets_no_credential() {
    let stack = start(conduwuit_anonymous_turn(), &[]).await;
    for i in 0..5 {
        let response = stack
            .get(&format!("{V3}?x=1;access_token=made-up-{i}"), None)
            .await;
        response.assert_status(200);
        assert_eq!(response.text(), COTURN, "the homeserver's own answer");
    }
    assert_eq!(stack.cloudflare.mint_count(), 0);
}

/// Finding 2: a header named in `Connection` never reaches the homeserver,
/// so it cannot be the token the homeserver authenticated.
#[tokio::test]
async fn a_token_in_a_header_that_connection_names_is_not_the_token() {
    let stack = start(conduwuit_anonymous_turn(), &[]).await;
    for i in 0..3 {
        let response = send(
            stack.daemon.addr,
            &format!("GET {V3} HTTP/1.1\r\nHost: x\r\nConnection: authorization\r\nAuthorization: Bearer zzz{i}\r\n\r\n"),
        )
        .await;
        assert_eq!(response.assert_status(200).text(), COTURN);
    }
    assert_eq!(stack.cloudflare.mint_count(), 0);
    assert!(
        stack
            .synapse
            .requests()
            .iter()
            .all(|r| r.header("authorization").is_none()),
        "the header was dropped on the way"
    );
}

/// Finding 2 on Synapse: the caller cannot choose the reuse key with a
/// header Synapse never sees; the key is the query token Synapse read.
#[tokio::test]
async fn on_synapse_the_reuse_key_is_the_token_synapse_read() {
    let stack = Stack::start().await;
    for i in 0..3 {
        send(
            stack.daemon.addr,
            &format!(
                "GET {V3}?access_token={ALICE} HTTP/1.1\r\nHost: x\r\nConnection: authorization\r\nAuthorization: Bearer chosen-{i}\r\n\r\n"
            ),
        )
        .await
        .assert_status(200);
    }
    assert_eq!(stack.cloudflare.mint_count(), 1, "one credential for alice");
    stack.get(V3, Some(ALICE)).await.assert_status(200);
    assert_eq!(stack.cloudflare.mint_count(), 1, "and it is alice's");
}

/// Finding 3: the Conduit family takes `bearer` in any case and prefers the
/// header; Synapse takes only `Bearer` and refuses a header and a query
/// token together. Such a request is ambiguous: no credential.
#[tokio::test]
async fn a_lower_case_bearer_with_a_query_token_gets_no_credential() {
    let conduit_legacy = SynapseOptions {
        flavour: Flavour::ConduitLegacy,
        ..SynapseOptions::default()
    };
    let stack = start(conduit_legacy, &[]).await;
    let direct = get(stack.synapse.addr(), V3, Some(ALICE)).await;
    for i in 0..4 {
        let response = send(
            stack.daemon.addr,
            &format!("GET {V3}?access_token=made-up-{i} HTTP/1.1\r\nHost: x\r\nAuthorization: bearer {ALICE}\r\n\r\n"),
        )
        .await;
        response.assert_status(200);
        assert_eq!(response.text(), direct.text(), "Conduit's own answer");
    }
    assert_eq!(stack.cloudflare.mint_count(), 0);
}

/// Every ambiguous form, on a homeserver that answers 200 to anything: the
/// daemon's reading alone decides, and it mints for none of them.
#[tokio::test]
async fn no_ambiguous_form_gets_a_credential() {
    let anything = accepts_anything();
    let stack = start(anything, &[]).await;
    for (query, headers) in [
        ("?x=1;access_token=a", ""),
        ("?access_token=a;x=1", ""),
        ("?access_token=a&access_token=a", ""),
        ("?access_token=a&access%5Ftoken=b", ""),
        ("?access_token=a", "Authorization: Bearer a\r\n"),
        ("?access_token=", "Authorization: Bearer a\r\n"),
        ("?access_token", "Authorization: Bearer a\r\n"),
        ("", "Authorization: bearer a\r\n"),
        ("", "Authorization: BEARER a\r\n"),
        ("", "Authorization: Bearer  a\r\n"),
        ("", "Authorization: Bearer a b\r\n"),
        ("", "Authorization: Bearer a\r\nAuthorization: Bearer a\r\n"),
        ("", "Authorization: Bearer \r\n"),
        ("?access_token=", ""),
        ("?access_token", ""),
        ("?access_token=%zz", ""),
        ("?access_token=%C3%A9", ""),
        (
            "?access_token=a&user_id=%40x%3Alocalhost&user_id=%40y%3Alocalhost",
            "",
        ),
    ] {
        let response = send(
            stack.daemon.addr,
            &format!("GET {V3}{query} HTTP/1.1\r\nHost: x\r\n{headers}\r\n"),
        )
        .await;
        assert_eq!(response.assert_status(200).text(), "{}", "{query} {headers:?}");
        assert_eq!(stack.cloudflare.mint_count(), 0, "{query} {headers:?}");
    }
}

/// Finding 10: an appservice acting as its users (`?user_id=`) gets one
/// credential per user, named for that user, not one for the bot.
#[tokio::test]
async fn each_appservice_puppet_gets_its_own_credential() {
    let stack = start(SynapseOptions::default(), &[("CF_CUSTOM_IDENTIFIER", "user_id")]).await;
    for puppet in ["@puppet1:localhost", "@puppet2:localhost", "@puppet1:localhost"] {
        let query = format!(
            "?access_token=as_bridge_token&user_id={}",
            puppet.replace('@', "%40").replace(':', "%3A")
        );
        stack.get(&format!("{V3}{query}"), None).await.assert_status(200);
    }
    let named: Vec<String> = stack
        .cloudflare
        .requests()
        .iter()
        .map(|r| {
            r.json()["customIdentifier"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        named,
        ["@puppet1:localhost", "@puppet2:localhost"],
        "one mint per puppet"
    );
    let whoami = stack
        .synapse
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query.contains("/account/whoami"))
        .map(|r| r.path_and_query)
        .collect::<Vec<_>>();
    assert!(
        whoami.iter().all(|p| p.contains("user_id=%40puppet")),
        "whoami asked as the puppet: {whoami:?}"
    );
}

/// A user's own token with a made-up `user_id` each time: the homeserver
/// ignores it for a user, and so does the reuse key.
#[tokio::test]
async fn a_made_up_user_id_does_not_make_a_new_reuse_key() {
    let stack = Stack::start().await;
    for i in 0..5 {
        stack
            .get(&format!("{V3}?user_id=%40made-up-{i}%3Alocalhost"), Some(ALICE))
            .await
            .assert_status(200);
    }
    assert_eq!(stack.cloudflare.mint_count(), 1);
}

/// One generated request: `Authorization` lines, a `Connection` line, and a
/// query string, each drawn from the forms that homeservers read apart.
#[derive(Clone, Debug)]
struct Generated {
    authorization: Vec<String>,
    connection: Option<&'static str>,
    query: String,
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_]{1,8}",
        Just("syt%5Fenc".to_owned()),
        Just("a+b".to_owned()),
        Just("%zz".to_owned()),
        Just("%C3%A9".to_owned()),
        Just(String::new()),
    ]
}

fn query_pair() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => token().prop_map(|t| format!("access_token={t}")),
        1 => token().prop_map(|t| format!("access%5Ftoken={t}")),
        1 => token().prop_map(|t| format!("access+token={t}")),
        1 => Just("access_token".to_owned()),
        1 => Just("x=1".to_owned()),
        1 => Just("user_id=%40u%3Alocalhost".to_owned()),
        1 => Just(String::new()),
    ]
}

fn authorization() -> impl Strategy<Value = String> {
    let scheme = prop::sample::select(vec![
        "Bearer ", "bearer ", "BEARER ", "Bearer  ", "Basic ", "Bearer",
    ]);
    (
        scheme,
        "[A-Za-z0-9_]{0,8}",
        prop::sample::select(vec!["", "", "", " x"]),
    )
        .prop_map(|(scheme, token, tail)| format!("{scheme}{token}{tail}"))
}

fn generated() -> impl Strategy<Value = Generated> {
    let separator = prop::sample::select(vec!["&", "&", "&", ";"]);
    let query = prop::collection::vec((separator, query_pair()), 0..4).prop_map(|pairs| {
        let mut query = String::new();
        for (i, (separator, pair)) in pairs.into_iter().enumerate() {
            if i > 0 {
                query.push_str(separator);
            }
            query.push_str(&pair);
        }
        query
    });
    let connection = prop::option::weighted(
        0.3,
        prop::sample::select(vec!["authorization", "keep-alive", "x-other, Authorization"]),
    );
    (prop::collection::vec(authorization(), 0..3), connection, query).prop_map(
        |(authorization, connection, query)| Generated {
            authorization,
            connection,
            query,
        },
    )
}

impl Generated {
    fn request(&self) -> String {
        let query = if self.query.is_empty() {
            String::new()
        } else {
            format!("?{}", self.query)
        };
        let mut head = format!("GET {V3}{query} HTTP/1.1\r\nHost: x\r\n");
        if let Some(connection) = self.connection {
            head.push_str(&format!("Connection: {connection}\r\n"));
        }
        for value in &self.authorization {
            head.push_str(&format!("Authorization: {value}\r\n"));
        }
        head + "\r\n"
    }
}

/// For generated requests, against a homeserver that answers 200 to
/// anything: a mint happens only when Twisted's, the Conduit family's and
/// Dendrite's readings of the request as the homeserver received it are the
/// same single token, and that token is the reuse key (a plain Bearer
/// request with it afterwards mints nothing new).
#[test]
fn a_mint_means_every_family_read_the_same_single_token() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let anything = accepts_anything();
    let stack = runtime.block_on(start(anything, &[]));
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    let minted_cases = std::cell::Cell::new(0);
    runner
        .run(&generated(), |case| {
            runtime.block_on(async {
                let mints = stack.cloudflare.mint_count();
                let response = send(stack.daemon.addr, &case.request()).await;
                prop_assert_eq!(response.status, 200);
                let seen = stack.synapse.requests().pop().expect("the homeserver saw it");
                if stack.cloudflare.mint_count() == mints {
                    return Ok(());
                }
                minted_cases.set(minted_cases.get() + 1);
                let query = seen.path_and_query.split_once('?').map(|(_, q)| q);
                let twisted = token_rules::twisted(&seen.headers, query);
                let conduit = token_rules::conduit(&seen.headers, query);
                let dendrite = token_rules::dendrite(&seen.headers, query);
                let Ok(Presented { token, user_id: None }) = twisted.clone() else {
                    return Err(TestCaseError::fail(format!(
                        "minted, but Twisted read {twisted:?}"
                    )));
                };
                prop_assert_eq!(&twisted, &conduit, "Twisted and the Conduit family differ");
                prop_assert_eq!(&twisted, &dendrite, "Twisted and Dendrite differ");
                let again = stack.cloudflare.mint_count();
                get(stack.daemon.addr, V3, Some(&token)).await;
                prop_assert_eq!(stack.cloudflare.mint_count(), again, "the reuse key is {}", token);
                Ok(())
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        minted_cases.get() > 0,
        "the generator never produced an unambiguous request"
    );
}
