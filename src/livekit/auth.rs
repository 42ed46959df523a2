//! Which token LiveKit takes from a signalling request (docs/behaviour.md
//! §12), read as livekit-server reads it: the `Authorization` header first
//! (Go's `Header.Get`, the first one; a value that does not start with
//! `Bearer ` is refused with a 401), else `r.FormValue("access_token")`,
//! whose `net/url` parsing drops every pair holding a `;` or a bad `%`
//! escape, and keeps the first of two values. Where the daemon's reading and
//! Go's could differ, the daemon reads nothing: the credential is then keyed
//! on no identity rather than on another one than LiveKit's. Pure.

use http::header::{self, HeaderMap};

/// What LiveKit takes as the participant's token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenReading {
    /// No token: LiveKit refuses the request.
    Absent,
    Token(String),
    /// LiveKit could read another token than the daemon, or refuses this one.
    Unclear,
}

/// A query the daemon might read otherwise than Go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ambiguous;

/// Go's `net/url` gives up on a query of more pairs than this (its
/// `urlmaxqueryparams`), keeping none of them.
const GO_MAX_QUERY_PAIRS: usize = 10_000;

/// The token LiveKit reads from a request with `headers` and `query`.
pub fn token_as_livekit_reads(headers: &HeaderMap, query: Option<&str>) -> TokenReading {
    let mut authorization = headers.get_all(header::AUTHORIZATION).iter();
    let first = authorization.next();
    if authorization.next().is_some() {
        return TokenReading::Unclear;
    }
    // Go's `Header.Get` reads an empty header as none, and goes on to the query.
    if let Some(value) = first.filter(|value| !value.is_empty()) {
        return match value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
        {
            Some("") | None => TokenReading::Unclear,
            Some(token) => TokenReading::Token(token.to_owned()),
        };
    }
    match form_value(query.unwrap_or(""), "access_token") {
        Ok(Some(token)) if !token.is_empty() => TokenReading::Token(token),
        Ok(_) => TokenReading::Absent,
        Err(Ambiguous) => TokenReading::Unclear,
    }
}

/// The value of `name` in `query` as Go's `url.ParseQuery` and `FormValue`
/// read it; `Err` where the daemon would not read it the same: a pair
/// holding a `;` or a bad `%` escape anywhere (Go drops such a pair, and
/// could drop the one that comes first), a name given twice, a value that
/// is not UTF-8, or more pairs than Go reads.
pub(crate) fn form_value(query: &str, name: &str) -> Result<Option<String>, Ambiguous> {
    if query.matches('&').count() + 1 > GO_MAX_QUERY_PAIRS {
        return Err(Ambiguous);
    }
    let mut found = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        if pair.contains(';') {
            return Err(Ambiguous);
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (key, value) = (unescape(key)?, unescape(value)?);
        if key == name.as_bytes() {
            if found.is_some() {
                return Err(Ambiguous);
            }
            found = Some(String::from_utf8(value).map_err(|_| Ambiguous)?);
        }
    }
    Ok(found)
}

/// Go's `QueryUnescape`: `+` is a space, `%` must start two hex digits.
fn unescape(text: &str) -> Result<Vec<u8>, Ambiguous> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'%' => {
                let hex = |i: usize| bytes.get(i).and_then(|b| char::from(*b).to_digit(16));
                let (Some(high), Some(low)) = (hex(at + 1), hex(at + 2)) else {
                    return Err(Ambiguous);
                };
                out.push((high * 16 + low) as u8);
                at += 3;
            }
            b'+' => {
                out.push(b' ');
                at += 1;
            }
            byte => {
                out.push(byte);
                at += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(authorizations: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in authorizations {
            headers.append(
                header::AUTHORIZATION,
                HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

    fn token(text: &str) -> TokenReading {
        TokenReading::Token(text.to_owned())
    }

    #[test]
    fn the_query_token_is_read_as_go_reads_it() {
        let none = HeaderMap::new();
        let read = |query: &str| token_as_livekit_reads(&none, Some(query));
        assert_eq!(read("access_token=a.b.c&sdk=js"), token("a.b.c"));
        assert_eq!(read("x=1&access_token=a%2Eb.c"), token("a.b.c"));
        assert_eq!(read("access%5Ftoken=a.b.c&&sdk=js&"), token("a.b.c"));
        assert_eq!(read("access_token=a+b"), token("a b"));
        assert_eq!(read("access_token"), TokenReading::Absent);
        assert_eq!(read("access_token="), TokenReading::Absent);
        assert_eq!(read("sdk=js"), TokenReading::Absent);
        assert_eq!(token_as_livekit_reads(&none, None), TokenReading::Absent);
    }

    #[test]
    fn a_query_go_could_read_otherwise_gives_no_token() {
        let none = HeaderMap::new();
        for query in [
            // Go drops a pair with `;` or a bad escape: the second token is LiveKit's.
            "access_token=FORGED;&access_token=real",
            "access_token=FORGED%zz&access_token=real",
            "access_token=FORGED%4&access_token=real",
            "access_token=a.b.c&access_token=a.b.c",
            "access_token=a.b.c&access%5Ftoken=d.e.f",
            "access_token=a.b.c&x=1;y=2",
            "access_token=a.b.c&%zz=1",
            "access_token=a.b.c&x=%",
            "access_token=%ff%fe",
        ] {
            assert_eq!(
                token_as_livekit_reads(&none, Some(query)),
                TokenReading::Unclear,
                "{query}"
            );
        }
        let too_many = format!("access_token=a.b.c{}", "&x".repeat(GO_MAX_QUERY_PAIRS));
        assert_eq!(
            token_as_livekit_reads(&none, Some(&too_many)),
            TokenReading::Unclear
        );
        let just_enough = format!("access_token=a.b.c{}", "&x".repeat(GO_MAX_QUERY_PAIRS - 1));
        assert_eq!(token_as_livekit_reads(&none, Some(&just_enough)), token("a.b.c"));
    }

    #[test]
    fn the_header_comes_first_and_must_be_one_bearer() {
        let query = Some("access_token=q.u.e");
        assert_eq!(
            token_as_livekit_reads(&headers(&["Bearer h.e.d"]), query),
            token("h.e.d")
        );
        assert_eq!(
            token_as_livekit_reads(&headers(&["Bearer h.e.d"]), None),
            token("h.e.d")
        );
        // Go reads an empty header as none.
        assert_eq!(token_as_livekit_reads(&headers(&[""]), query), token("q.u.e"));
        for refused in [
            &["bearer h.e.d"][..],
            &["Basic dXNlcg=="],
            &["Bearer "],
            &["Bearer h.e.d", "Bearer o.t.h"],
        ] {
            assert_eq!(
                token_as_livekit_reads(&headers(refused), query),
                TokenReading::Unclear,
                "{refused:?}"
            );
        }
    }
}
