//! How each homeserver family reads the access token, and an appservice's
//! `user_id`, from a request. The fakes authenticate by these rules, and the
//! daemon's own reading is tested against them: a fake that parsed every
//! request the way Synapse does could never show a request that two
//! homeservers read differently.
//!
//! - [`twisted`]: Synapse, `get_access_token_from_request` in
//!   `synapse/api/auth/base.py`, on Twisted's `request.args`.
//! - [`conduit`]: Conduit, conduwuit, continuwuity and tuwunel
//!   (`src/api/router/auth.rs` and `src/api/router/request.rs` in tuwunel;
//!   `src/api/ruma_wrapper/axum.rs` in Conduit), with the very crates they
//!   use: `headers` (through axum-extra's `TypedHeader`) and
//!   `serde_html_form`.
//! - [`dendrite`]: Dendrite, `ExtractAccessToken` in
//!   `clientapi/auth/auth.go`, on Go's `net/url` `ParseQuery`.

use headers::Header;
use headers::authorization::{Authorization, Bearer};
use http::HeaderMap;
use http::header::AUTHORIZATION;
use serde::Deserialize;

/// What a homeserver reads from a request: the token, and the user an
/// appservice asks to act as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presented {
    pub token: String,
    pub user_id: Option<String>,
}

/// Why a homeserver found no token to look up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    InvalidHeader,
    TooManyHeaders,
    /// A header token and a query token together.
    Mixed,
    /// The query does not deserialise (Conduit family): a `400`.
    BadQuery(String),
}

/// Synapse: the query as Twisted's `parse_qs` splits it (on `&` and `;`),
/// the first `access_token`; a header must be exactly `Bearer <token>`;
/// mixing the two is refused before the header count is looked at.
pub fn twisted(headers: &HeaderMap, query: Option<&str>) -> Result<Presented, Refusal> {
    let auth: Vec<_> = headers.get_all(AUTHORIZATION).iter().collect();
    let query = query.unwrap_or("");
    let user_id = twisted_param(query, "user_id");
    let query_token = twisted_param(query, "access_token");
    let Some(first) = auth.first() else {
        return query_token
            .map(|token| Presented { token, user_id })
            .ok_or(Refusal::Missing);
    };
    if query_token.is_some() {
        return Err(Refusal::Mixed);
    }
    if auth.len() > 1 {
        return Err(Refusal::TooManyHeaders);
    }
    // `header.split(b" ")` must give exactly `[b"Bearer", token]`.
    match first.as_bytes().split(|b| *b == b' ').collect::<Vec<_>>()[..] {
        [b"Bearer", token] => Ok(Presented {
            token: String::from_utf8_lossy(token).into_owned(),
            user_id,
        }),
        _ => Err(Refusal::InvalidHeader),
    }
}

/// The first value of `name` as Twisted's `request.args` has it
/// (`parse_qs(query, 1)`, twisted/web/http.py): pairs split on `&` and `;`,
/// a pair without `=` skipped, an empty value kept.
pub fn twisted_param(query: &str, name: &str) -> Option<String> {
    query.split(['&', ';']).find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (form_decode(key) == name).then(|| form_decode(value))
    })
}

/// `application/x-www-form-urlencoded` decoding as Python's `unquote_plus`
/// does it: a malformed `%` escape is kept as it is.
fn form_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'+' => out.push(b' '),
            b'%' => match tail.get(..2).and_then(hex_byte) {
                Some(byte) => {
                    out.push(byte);
                    rest = &tail[2..];
                }
                None => out.push(b'%'),
            },
            _ => out.push(b),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_byte(hex: &[u8]) -> Option<u8> {
    let text = std::str::from_utf8(hex).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(text, 16).ok()
}

/// tuwunel's `QueryParams` (`src/api/router/request.rs`), the fields that
/// select a user; the others are ignored on deserialising, as there.
#[derive(Deserialize)]
struct ConduitQuery {
    access_token: Option<String>,
    user_id: Option<String>,
}

/// The Conduit family: the query through `serde_html_form` (split on `&`
/// only; a query that does not deserialise is a `400`), the header through
/// `headers`' `Authorization<Bearer>` (the first value, the scheme in any
/// case), the header preferred over the query. A header that is not a
/// Bearer one counts as absent (`.unwrap_or(None)` in tuwunel's `auth`).
pub fn conduit(headers: &HeaderMap, query: Option<&str>) -> Result<Presented, Refusal> {
    let params: ConduitQuery =
        serde_html_form::from_str(query.unwrap_or("")).map_err(|e| Refusal::BadQuery(e.to_string()))?;
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let bearer = Authorization::<Bearer>::decode(&mut values).ok();
    let token = match &bearer {
        Some(Authorization(bearer)) => bearer.token().to_owned(),
        None => params.access_token.ok_or(Refusal::Missing)?,
    };
    Ok(Presented {
        token,
        user_id: params.user_id,
    })
}

/// Dendrite: `req.Header.Get("Authorization")` (the first value) and
/// `req.URL.Query().Get("access_token")` (the first value; Go's `ParseQuery`
/// splits on `&` and drops a pair that holds a `;` or a malformed escape);
/// both together refused, the query preferred, then `SplitN(header, " ", 2)`
/// must give `["Bearer", token]`. An empty value counts as absent.
pub fn dendrite(headers: &HeaderMap, query: Option<&str>) -> Result<Presented, Refusal> {
    let header = headers
        .get(AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let query = query.unwrap_or("");
    let query_token = go_query_get(query, "access_token").unwrap_or_default();
    let user_id = go_query_get(query, "user_id").filter(|u| !u.is_empty());
    if !header.is_empty() && !query_token.is_empty() {
        return Err(Refusal::Mixed);
    }
    if !query_token.is_empty() {
        return Ok(Presented {
            token: query_token,
            user_id,
        });
    }
    if header.is_empty() {
        return Err(Refusal::Missing);
    }
    match header.split_once(' ') {
        Some(("Bearer", token)) => Ok(Presented {
            token: token.to_owned(),
            user_id,
        }),
        _ => Err(Refusal::InvalidHeader),
    }
}

/// `url.Values.Get` after `url.ParseQuery` (Go 1.17 and later).
fn go_query_get(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        if pair.contains(';') || pair.is_empty() {
            return None;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = go_unescape(key)?;
        let value = go_unescape(value)?;
        (key == name).then_some(value)
    })
}

/// Go's `QueryUnescape`: `+` is a space, and a `%` must start two hex digits
/// or the whole pair is an error.
fn go_unescape(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                out.push(tail.get(..2).and_then(hex_byte)?);
                rest = &tail[2..];
            }
            _ => out.push(b),
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(auth: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in auth {
            map.append(AUTHORIZATION, HeaderValue::from_str(value).expect("valid header"));
        }
        map
    }

    fn token(t: &str) -> Result<Presented, Refusal> {
        Ok(Presented {
            token: t.to_owned(),
            user_id: None,
        })
    }

    #[track_caller]
    fn assert_reads(read: fn(&HeaderMap, Option<&str>) -> Result<Presented, Refusal>, cases: Vec<Case>) {
        for (auth, query, expected) in cases {
            assert_eq!(
                read(&headers(auth), query),
                expected,
                "Authorization {auth:?}, query {query:?}"
            );
        }
    }

    /// Authorization header lines, query string, expected token or refusal.
    type Case = (
        &'static [&'static str],
        Option<&'static str>,
        Result<Presented, Refusal>,
    );

    /// docs/synapse-facts.md §3, row by row, then the query forms Twisted's
    /// `parse_qs` reads its own way (tests/e2e compares them with real
    /// Synapse).
    #[test]
    fn twisted_follows_the_facts_table() {
        let cases: Vec<Case> = vec![
            (&["Bearer syt_a"], None, token("syt_a")),
            (&[], None, Err(Refusal::Missing)),
            (&[], Some("foo=bar"), Err(Refusal::Missing)),
            (&[], Some("access_token=syt_a"), token("syt_a")),
            (
                &[],
                Some("x=1&access_token=syt%5Fa&access_token=other"),
                token("syt_a"),
            ),
            (&[], Some("access_token"), Err(Refusal::Missing)),
            (&[], Some("access_token&access_token=syt_b"), token("syt_b")),
            (&[], Some("access_token=&access_token=syt_b"), token("")),
            (
                &[],
                Some("x=1;access_token=syt_a&access_token=syt_b"),
                token("syt_a"),
            ),
            (
                &[],
                Some("access%5Ftoken=syt_a&access_token=syt_b"),
                token("syt_a"),
            ),
            (&[], Some("access+token=syt_a"), Err(Refusal::Missing)),
            (&["Bearer syt_a"], Some("access_token=syt_a"), Err(Refusal::Mixed)),
            (
                &["Bearer syt_a", "Bearer syt_a"],
                Some("access_token=x"),
                Err(Refusal::Mixed),
            ),
            (
                &["Bearer syt_a", "Bearer syt_a"],
                None,
                Err(Refusal::TooManyHeaders),
            ),
            (&["bearer syt_a"], None, Err(Refusal::InvalidHeader)),
            (&["Bearer  syt_a"], None, Err(Refusal::InvalidHeader)),
            (&["Basic YWxpY2U6YWxpY2U="], None, Err(Refusal::InvalidHeader)),
            (&["Bearer"], None, Err(Refusal::InvalidHeader)),
            (&["Bearer "], None, token("")),
        ];
        assert_reads(twisted, cases);
    }

    /// The readings that tell the Conduit family apart from Synapse: the
    /// ones the daemon must treat as ambiguous.
    #[test]
    fn the_conduit_family_reads_some_requests_otherwise() {
        let cases: Vec<Case> = vec![
            (&["Bearer syt_a"], None, token("syt_a")),
            (&[], Some("access_token=syt_a"), token("syt_a")),
            // `;` is no separator: the pair is `x` = `1;access_token=anything`.
            (&[], Some("x=1;access_token=anything"), Err(Refusal::Missing)),
            // The scheme in any case, and the header wins over the query.
            (&["bearer syt_a"], Some("access_token=other"), token("syt_a")),
            (&["BEARER syt_a"], None, token("syt_a")),
            (&["Bearer syt_a"], Some("access_token=other"), token("syt_a")),
            // `headers` trims the token (measured: the crate decides).
            (&["Bearer  syt_a"], None, token("syt_a")),
            // Not a Bearer header: as if absent, the query decides.
            (&["Basic YWxpY2U6YWxpY2U="], Some("access_token=q"), token("q")),
            (&["Basic YWxpY2U6YWxpY2U="], None, Err(Refusal::Missing)),
            // Only the first header line is read.
            (&["Bearer syt_a", "Bearer syt_b"], None, token("syt_a")),
        ];
        assert_reads(conduit, cases);
        // Measured on serde_html_form 0.4: a repeated key is an error (a 400
        // from the homeserver), and an empty or bare key an empty token.
        assert_eq!(
            conduit(&HeaderMap::new(), Some("access_token=a&access_token=b")),
            Err(Refusal::BadQuery("unsupported value".to_owned()))
        );
        assert_eq!(conduit(&HeaderMap::new(), Some("access_token=")), token(""));
        assert_eq!(conduit(&HeaderMap::new(), Some("access_token")), token(""));
    }

    #[test]
    fn dendrite_reads_the_first_value_of_each_and_prefers_the_query() {
        let cases: Vec<Case> = vec![
            (&["Bearer syt_a"], None, token("syt_a")),
            (&[], Some("access_token=syt_a&access_token=b"), token("syt_a")),
            (&[], Some("x=1;access_token=anything"), Err(Refusal::Missing)),
            (&[], Some("access_token=%zz&access_token=b"), token("b")),
            (&["Bearer syt_a"], Some("access_token=q"), Err(Refusal::Mixed)),
            (&["Bearer syt_a"], Some("access_token="), token("syt_a")),
            (&["bearer syt_a"], None, Err(Refusal::InvalidHeader)),
            (&["Bearer  syt_a"], None, token(" syt_a")),
            (&["Bearer syt_a", "Bearer syt_b"], None, token("syt_a")),
        ];
        assert_reads(dendrite, cases);
    }

    #[test]
    fn an_appservice_user_id_is_read_by_every_family() {
        let query = Some("access_token=as_token&user_id=%40puppet%3Alocalhost");
        let expected = Ok(Presented {
            token: "as_token".to_owned(),
            user_id: Some("@puppet:localhost".to_owned()),
        });
        assert_eq!(twisted(&HeaderMap::new(), query), expected);
        assert_eq!(conduit(&HeaderMap::new(), query), expected);
        assert_eq!(dendrite(&HeaderMap::new(), query), expected);
    }
}
