//! Odd paths, queries and request heads (issue 6): each gets a defined
//! answer, and Synapse receives only what the client sent. What hyper refuses
//! while parsing gets hyper's status, and Synapse hears nothing of it.

use matrix_turnify::MAX_HEADER_BYTES;
use turnify_fakes::Recorded;

use crate::harness::{ALICE, BOB, Stack, send_bytes};

const V3: &str = "/_matrix/client/v3/voip/turnServer";

/// docs/synapse-facts.md §1: Synapse's answer for a path it does not serve.
const UNRECOGNIZED: &str = r#"{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}"#;

/// What the daemon does with one odd request.
#[derive(Debug)]
enum Expect<'a> {
    /// Synapse gets exactly this path and query and answers 404, which the
    /// client gets unchanged; nothing is minted.
    NotFound(&'a str),
    /// Synapse gets exactly this path and query and answers 200; the client
    /// gets one freshly minted Cloudflare credential.
    Credential(&'a str),
    /// hyper refuses the request while parsing it, with this status;
    /// Synapse hears nothing and nothing is minted.
    Refused(u16),
}

/// A GET of `target` (any bytes, valid or not) with extra header `lines`,
/// closing the connection after the answer.
fn get(target: impl AsRef<[u8]>, lines: &str) -> Vec<u8> {
    let head = format!(" HTTP/1.1\r\nHost: x\r\n{lines}Connection: close\r\n\r\n");
    [b"GET ", target.as_ref(), head.as_bytes()].concat()
}

/// Alice's token as a header line for [`get`].
fn alice() -> String {
    format!("Authorization: Bearer {ALICE}\r\n")
}

/// A target of `before`, `a`s and `after` that makes the head of
/// `get(target, "")` exactly `size` bytes.
fn target_for_head_of(size: usize, before: &str, after: &str) -> String {
    let bare = get(format!("{before}{after}"), "");
    format!("{before}{}{after}", "a".repeat(size - bare.len()))
}

/// Sends `request` to a fresh daemon and checks `expect`; `case` names the
/// row in every failure.
async fn assert_case(case: &str, request: &[u8], expect: &Expect<'_>) {
    let stack = Stack::start().await;
    let response = send_bytes(stack.daemon.addr, request).await;
    let upstream = stack.synapse.requests();
    let (status, path_and_query) = match expect {
        Expect::NotFound(path_and_query) => (404, Some(path_and_query)),
        Expect::Credential(path_and_query) => (200, Some(path_and_query)),
        Expect::Refused(status) => (*status, None),
    };
    assert_eq!(
        response.status,
        status,
        "{case}: {response:#?}\n{}",
        response.text()
    );
    let Some(path_and_query) = path_and_query else {
        assert!(upstream.is_empty(), "{case}: Synapse got {upstream:#?}");
        assert_eq!(stack.cloudflare.mint_count(), 0, "{case}");
        return;
    };
    assert_eq!(upstream.len(), 1, "{case}: Synapse got {upstream:#?}");
    assert_eq!(upstream[0].path_and_query, *path_and_query, "{case}");
    let added: Vec<&str> = upstream[0]
        .headers
        .keys()
        .map(|name| name.as_str())
        .filter(|name| !["authorization", "host", "x-forwarded-for", "via"].contains(name))
        .collect();
    assert!(added.is_empty(), "{case}: Synapse got headers {added:?}");
    if status == 200 {
        assert!(
            response.json()["password"].is_string(),
            "{case}: {}",
            response.text()
        );
        assert_eq!(stack.cloudflare.mint_count(), 1, "{case}");
    } else {
        assert_eq!(response.text(), UNRECOGNIZED, "{case}");
        assert_eq!(stack.cloudflare.mint_count(), 0, "{case}");
    }
}

/// Sends `request` to a fresh daemon, which must answer with a freshly minted
/// credential, and returns the one request Synapse got for it.
async fn the_request_synapse_got(case: &str, request: &[u8]) -> Recorded {
    let stack = Stack::start().await;
    let response = send_bytes(stack.daemon.addr, request).await;
    assert_eq!(response.status, 200, "{case}: {}", response.text());
    assert_eq!(stack.cloudflare.mint_count(), 1, "{case}");
    let mut upstream = stack.synapse.requests();
    assert_eq!(upstream.len(), 1, "{case}: Synapse got {upstream:#?}");
    upstream.remove(0)
}

/// The headers of `request` as (name, value) pairs in wire order, without
/// the two the daemon adds (Host and X-Forwarded-For).
/// The headers Synapse got but those the daemon sets itself (`Host`,
/// `X-Forwarded-For`, and its `Via`, the mark a request loop is known by).
fn client_headers(request: &Recorded) -> Vec<(String, String)> {
    request
        .headers
        .iter()
        .filter(|(name, _)| !["host", "x-forwarded-for", "via"].contains(&name.as_str()))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn odd_paths_reach_synapse_byte_for_byte_and_only_its_200_mints() {
    // Only a path ending in `/voip/turnServer` is the turnServer route (docs/behaviour.md
    // §3); Synapse decides the rest. It serves none of these paths
    // (docs/synapse-facts.md §1, and tests/e2e compares them with real Synapse),
    // so its 404 comes back and nothing is minted, whichever route they took.
    let cases = [
        (
            "percent-encoded slash %2F",
            "/_matrix/client/v3/voip%2FturnServer",
        ),
        (
            "percent-encoded slash %2f",
            "/_matrix/client/v3/voip%2fturnServer",
        ),
        ("empty first segment", "//voip/turnServer"),
        ("empty segment before voip", "/_matrix/client/v3//voip/turnServer"),
        ("trailing slash", "/_matrix/client/v3/voip/turnServer/"),
        ("path parameter", "/_matrix/client/v3/voip/turnServer;x"),
        ("lower-case turnserver", "/_matrix/client/v3/voip/turnserver"),
        ("upper-case VOIP", "/_matrix/client/v3/VOIP/turnServer"),
        (
            "%0d%0a in the path",
            "/_matrix/client/v3/voip/turnServer%0d%0aInjected:%20yes",
        ),
    ];
    for (case, path) in cases {
        assert_case(case, &get(path, &alice()), &Expect::NotFound(path)).await;
    }
}

#[tokio::test]
async fn odd_queries_are_forwarded_byte_for_byte_and_still_work() {
    // Raw UTF-8 is valid to hyper and forwarded as it came. The fake accepts
    // it; real Synapse (Twisted) answers 400, which comes back unchanged like
    // any answer but a 200.
    let crlf = format!("{V3}?x=%0d%0aInjected:%20yes");
    let invalid_utf8 = format!("{V3}?x=%FF%FE&access_token={ALICE}");
    let raw_utf8 = format!("{V3}?x=caf\u{e9}");
    let cases = [
        ("%0d%0a in the query", get(&crlf, &alice()), &crlf),
        (
            "percent-encoded invalid UTF-8",
            get(&invalid_utf8, ""),
            &invalid_utf8,
        ),
        ("raw UTF-8", get(&raw_utf8, &alice()), &raw_utf8),
    ];
    for (case, request, path_and_query) in cases {
        assert_case(case, &request, &Expect::Credential(path_and_query)).await;
    }
}

#[tokio::test]
async fn a_fragment_in_the_request_target_is_dropped_before_forwarding() {
    // A request-target cannot carry a fragment (RFC 9112 §3.2); hyper's URI
    // parser drops one and keeps path and query, which are then forwarded
    // byte for byte. The reuse-cache key is read from the same query, so it
    // stays the token Synapse authenticates.
    let after_the_path = get(format!("{V3}#x"), &alice());
    assert_case(
        "fragment after the path",
        &after_the_path,
        &Expect::Credential(V3),
    )
    .await;
    let inside_the_query = get(format!("{V3}?access_token={ALICE}#&access_token={BOB}"), "");
    let forwarded = format!("{V3}?access_token={ALICE}");
    assert_case(
        "fragment inside the query",
        &inside_the_query,
        &Expect::Credential(&forwarded),
    )
    .await;
}

#[tokio::test]
async fn heads_of_exactly_32_kib_are_forwarded_intact() {
    let path = target_for_head_of(MAX_HEADER_BYTES, "/", "/voip/turnServer");
    let query = target_for_head_of(
        MAX_HEADER_BYTES,
        &format!("{V3}?pad="),
        &format!("&access_token={ALICE}"),
    );
    assert_eq!(get(&path, "").len(), MAX_HEADER_BYTES);
    assert_case("long path", &get(&path, ""), &Expect::NotFound(&path)).await;
    assert_case("long query", &get(&query, ""), &Expect::Credential(&query)).await;
}

#[tokio::test]
async fn malformed_heads_are_refused_before_synapse() {
    let valid = |lines: &str| get(V3, &format!("{}{lines}", alice()));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "raw 0xFF in the query",
            get(
                [V3.as_bytes(), b"?x=\xff&access_token=", ALICE.as_bytes()].concat(),
                "",
            ),
            400,
        ),
        (
            "raw 0xFF in the path",
            get([V3.as_bytes(), b"\xff"].concat(), &alice()),
            400,
        ),
        (
            "bare CR in a header value",
            valid("X-A: foo\rInjected: yes\r\n"),
            400,
        ),
        (
            "obs-fold with a space",
            valid("X-A: foo\r\n Injected: yes\r\n"),
            400,
        ),
        (
            "obs-fold with a tab",
            valid("X-A: foo\r\n\tInjected: yes\r\n"),
            400,
        ),
        ("space inside a header name", valid("X A: v\r\n"), 400),
        ("space before the colon", valid("Injected : yes\r\n"), 400),
        ("empty header name", valid(": yes\r\n"), 400),
        ("pseudo-header name", valid(":authority: evil\r\n"), 400),
        ("header line without a colon", valid("Injected yes\r\n"), 400),
        (
            "two different Content-Lengths",
            valid("Content-Length: 0\r\nContent-Length: 5\r\n"),
            400,
        ),
        ("a Content-Length list", valid("Content-Length: 0, 5\r\n"), 400),
        (
            "chunked not the last coding",
            valid("Transfer-Encoding: chunked, gzip\r\n"),
            400,
        ),
        (
            "a coding other than chunked",
            valid("Transfer-Encoding: identity\r\n"),
            400,
        ),
        (
            "head one byte over 32 KiB (long path)",
            get(
                target_for_head_of(MAX_HEADER_BYTES + 1, "/", "/voip/turnServer"),
                "",
            ),
            431,
        ),
        (
            "head one byte over 32 KiB (long query)",
            get(
                target_for_head_of(MAX_HEADER_BYTES + 1, &format!("{V3}?pad="), ""),
                "",
            ),
            431,
        ),
        (
            "target over http's 64 KiB URI cap",
            get(target_for_head_of(70 * 1024, "/", "/voip/turnServer"), ""),
            431,
        ),
    ];
    for (case, request, status) in cases {
        assert_case(case, &request, &Expect::Refused(status)).await;
    }
}

#[tokio::test]
async fn odd_header_lines_that_parse_reach_synapse_as_parsed() {
    let cases = [
        // RFC 9112 §2.2 lets a recipient end a line at a lone LF; hyper does
        // (as nginx does), so `Injected` is a header line the client sent and
        // Synapse gets it as one: a value never carries a CR or LF upstream.
        (
            "bare LF in a header value",
            "X-A: foo\nInjected: yes\r\n",
            vec![("x-a", "foo"), ("injected", "yes")],
        ),
        ("double colon", "X-A:: v\r\n", vec![("x-a", ": v")]),
        (
            "the same Content-Length twice",
            "Content-Length: 0\r\nContent-Length: 0\r\n",
            vec![("content-length", "0")],
        ),
    ];
    for (case, lines, expected) in cases {
        let upstream = the_request_synapse_got(case, &get(V3, &format!("{}{lines}", alice()))).await;
        let mut sent = vec![("authorization".to_owned(), format!("Bearer {ALICE}"))];
        sent.extend(expected.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())));
        assert_eq!(client_headers(&upstream), sent, "{case}");
    }
}

#[tokio::test]
async fn a_smuggling_attempt_reaches_synapse_as_one_clean_request() {
    // Content-Length and Transfer-Encoding together: hyper reads the chunked
    // body, drops the Content-Length and closes the connection after the
    // answer (RFC 9112 §6.1), so the request hidden behind the chunked body
    // is never served. No `Connection: close` here: hyper must close on its
    // own, or the read below runs into the harness's wait.
    let chunked = "5\r\nhello\r\n0\r\n\r\n";
    let smuggled =
        format!("GET {V3} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {BOB}\r\nInjected: yes\r\n\r\n");
    let length = chunked.len() + smuggled.len();
    let cases = [
        (
            "Content-Length first",
            format!("Content-Length: {length}\r\nTransfer-Encoding: chunked\r\n"),
        ),
        (
            "Transfer-Encoding first",
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n".to_owned(),
        ),
    ];
    for (case, framing) in cases {
        let request = format!(
            "GET {V3} HTTP/1.1\r\nHost: x\r\n{}{framing}\r\n{chunked}{smuggled}",
            alice()
        );
        let upstream = the_request_synapse_got(case, request.as_bytes()).await;
        assert_eq!(
            client_headers(&upstream),
            [
                ("authorization".to_owned(), format!("Bearer {ALICE}")),
                // Set by the daemon's client for the body it forwards.
                ("content-length".to_owned(), "5".to_owned()),
            ],
            "{case}"
        );
        assert_eq!(&upstream.body[..], b"hello", "{case}");
    }
}

/// What the daemon answers a query the homeserver families read their own
/// ways.
enum Expected<'a> {
    /// A credential, this user's.
    Credential(&'a serde_json::Value),
    /// Synapse's own 200 answer, passed on: the request is ambiguous.
    Homeservers,
    /// Synapse's 401 with this body.
    Refused(&'static str),
}

#[tokio::test]
async fn the_reuse_cache_key_is_the_token_every_homeserver_reads() {
    // A reused credential is looked up by the request's token (docs/behaviour.md §5): if
    // the daemon read another token than the one the homeserver
    // authenticated, one user could be handed a credential cached for
    // another. Synapse reads the first `access_token` in Twisted's reading
    // of the query (docs/synapse-facts.md §3; tests/e2e compares these with real
    // Synapse), Dendrite the first in Go's, and the Conduit family refuses
    // a repeated one: a query with more than one, or a `;`, is ambiguous
    // and gets Synapse's own answer.
    use Expected::{Credential, Homeservers, Refused};
    const UNKNOWN_TOKEN: &str =
        r#"{"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token passed.","soft_logout":false}"#;
    const MIXING: &str = r#"{"errcode":"M_MISSING_TOKEN","error":"Mixing Authorization headers and access_token query parameters."}"#;
    let stack = Stack::start().await;
    let alice = stack.get(V3, Some(ALICE)).await.json()["username"].clone();
    let bob = stack.get(V3, Some(BOB)).await.json()["username"].clone();
    let cases = [
        (
            "alice's token",
            None,
            format!("access_token={ALICE}"),
            Credential(&alice),
        ),
        (
            "bob's token",
            None,
            format!("x=1&access_token={BOB}"),
            Credential(&bob),
        ),
        (
            "two tokens",
            None,
            format!("access_token={ALICE}&access_token={BOB}"),
            Homeservers,
        ),
        (
            "bob's token first",
            None,
            format!("access_token={BOB}&access_token={ALICE}"),
            Homeservers,
        ),
        (
            "a bogus token first",
            None,
            format!("access_token=bogus&access_token={ALICE}"),
            Refused(UNKNOWN_TOKEN),
        ),
        (
            "an empty token first",
            None,
            format!("access_token=&access_token={ALICE}"),
            Refused(UNKNOWN_TOKEN),
        ),
        (
            "a bare name first",
            None,
            format!("access_token&access_token={BOB}&access_token={ALICE}"),
            Homeservers,
        ),
        (
            "';' between pairs",
            None,
            format!("x=1;access_token={BOB}"),
            Homeservers,
        ),
        (
            "percent-encoded name",
            None,
            format!("access%5Ftoken={BOB}&access_token={ALICE}"),
            Homeservers,
        ),
        (
            "percent-encoded token",
            None,
            format!("access_token={}", ALICE.replace('_', "%5F")),
            Credential(&alice),
        ),
        (
            "header and query",
            Some(ALICE),
            format!("access_token={ALICE}"),
            Refused(MIXING),
        ),
        (
            "header and percent-encoded name",
            Some(ALICE),
            format!("access%5Ftoken={BOB}"),
            Refused(MIXING),
        ),
    ];
    for (case, header, query, expected) in cases {
        let response = stack.get(&format!("{V3}?{query}"), header).await;
        match expected {
            Credential(username) => {
                assert_eq!(response.status, 200, "{case}: {}", response.text());
                assert_eq!(&response.json()["username"], username, "{case}");
            }
            Homeservers => {
                assert_eq!(response.status, 200, "{case}: {}", response.text());
                assert_eq!(response.text(), "{}", "{case}");
            }
            Refused(body) => {
                assert_eq!(response.status, 401, "{case}: {}", response.text());
                assert_eq!(response.text(), body, "{case}");
            }
        }
    }
    assert_eq!(
        stack.cloudflare.mint_count(),
        2,
        "one credential per user, each reused"
    );
}
