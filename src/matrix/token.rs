//! The access token the homeserver saw (docs/behaviour.md §3). A credential is minted
//! only for a request the homeserver authenticated, and reused by its
//! token, so the token must be the one the homeserver read. It is read from
//! the request as it was forwarded (headers named in `Connection` are gone
//! by then), and only when every homeserver family reads the same single
//! token from it. They parse differently:
//!
//! - Synapse (Twisted) splits the query on `&` and `;`, takes the first
//!   `access_token`, wants exactly `Bearer <token>`, and refuses a header
//!   together with a query token;
//! - the Conduit family (Conduit, conduwuit, continuwuity, tuwunel) splits
//!   on `&` only (`serde_html_form`, which refuses a repeated key), takes
//!   the scheme in any case (`headers`), and prefers the header;
//! - Dendrite (Go's `net/url`) drops pairs holding a `;` or a malformed
//!   escape, takes the first of each, and prefers the query.
//!
//! A request those rules read apart is ambiguous, and gets no credential.
//! No Synapse user loses anything: Synapse itself refuses the mixed forms.

use http::HeaderMap;
use http::header::AUTHORIZATION;

/// What a forwarded request presents to the homeserver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Presented {
    /// No access token in any reading.
    Absent,
    /// Homeserver families would read it differently; the reason is for the
    /// debug log.
    Ambiguous(&'static str),
    /// One token that every family reads alike.
    Token(AccessToken),
}

/// A token, and the user an appservice asks to act as, if any.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AccessToken {
    pub token: String,
    /// The `user_id=…` pair as it came, to pass on to whoami unchanged: it
    /// selects the user as much as the token does.
    pub acting_as: Option<String>,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("acting_as", &self.acting_as)
            .finish()
    }
}

/// One `name=value` pair of the query, split on `&`.
struct Pair<'a> {
    raw: &'a str,
    name: Option<String>,
    value: Option<&'a str>,
}

fn pairs(query: &str) -> impl Iterator<Item = Pair<'_>> {
    query.split('&').filter(|raw| !raw.is_empty()).map(|raw| {
        let (name, value) = match raw.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (raw, None),
        };
        Pair {
            raw,
            name: form_decode(name),
            value,
        }
    })
}

/// `application/x-www-form-urlencoded` decoding, strictly: `+` is a space,
/// and `None` for a `%` that does not start two hex digits (Go drops such a
/// pair, Python and `serde_html_form` keep the `%`) or bytes that are not
/// UTF-8.
fn form_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let high = char::from(bytes.next()?).to_digit(16)?;
                let low = char::from(bytes.next()?).to_digit(16)?;
                u8::try_from(high * 16 + low).ok()?
            }
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

/// A token as every family can carry it in a header and a query alike:
/// visible ASCII, no space. Matrix tokens are far narrower than that.
fn is_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())
}

/// Reads the forwarded request's `Authorization` lines and query.
pub(crate) fn read(headers: &HeaderMap, query: Option<&str>) -> Presented {
    let query = query.unwrap_or("");
    if query.contains(';') {
        return Presented::Ambiguous("a ';' in the query, which only Synapse splits on");
    }
    let named = |name: &str| {
        pairs(query)
            .filter(|pair| pair.name.as_deref() == Some(name))
            .collect::<Vec<_>>()
    };
    let query_tokens = named("access_token");
    let acting_as = match &named("user_id")[..] {
        [] => None,
        [pair] => match pair.value.and_then(form_decode) {
            Some(user_id) if !user_id.is_empty() => Some(pair.raw.to_owned()),
            _ => return Presented::Ambiguous("a user_id that not every homeserver reads alike"),
        },
        _ => return Presented::Ambiguous("more than one user_id"),
    };
    let headers: Vec<_> = headers.get_all(AUTHORIZATION).iter().collect();
    let token = match (&headers[..], &query_tokens[..]) {
        ([], []) => return Presented::Absent,
        ([_, ..], [_, ..]) => return Presented::Ambiguous("a header token and a query token"),
        ([_, _, ..], []) => return Presented::Ambiguous("more than one Authorization header"),
        ([], [_, _, ..]) => return Presented::Ambiguous("more than one access_token"),
        ([header], []) => {
            let Some(value) = header.to_str().ok() else {
                return Presented::Ambiguous("an Authorization header that is not ASCII");
            };
            match value.strip_prefix("Bearer ") {
                Some(token) => token.to_owned(),
                None if value.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("bearer ")) => {
                    return Presented::Ambiguous("a Bearer scheme in another case");
                }
                None => return Presented::Ambiguous("an Authorization header that is not Bearer"),
            }
        }
        ([], [pair]) => match pair.value.and_then(form_decode) {
            Some(token) => token,
            None => return Presented::Ambiguous("an access_token that not every homeserver reads alike"),
        },
    };
    if !is_token(&token) {
        return Presented::Ambiguous("a token with a space, or empty, or not ASCII");
    }
    Presented::Token(AccessToken { token, acting_as })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn read_with(auth: &[&str], query: &str) -> Presented {
        let mut headers = HeaderMap::new();
        for value in auth {
            headers.append(AUTHORIZATION, HeaderValue::from_str(value).expect("header"));
        }
        read(&headers, (!query.is_empty()).then_some(query))
    }

    fn token(token: &str, acting_as: Option<&str>) -> Presented {
        Presented::Token(AccessToken {
            token: token.to_owned(),
            acting_as: acting_as.map(str::to_owned),
        })
    }

    /// Everything a Synapse user sends today still gets its token.
    #[test]
    fn the_forms_every_homeserver_reads_alike() {
        for (auth, query, expected) in [
            (&["Bearer syt_a"][..], "", token("syt_a", None)),
            (&[], "access_token=syt_a", token("syt_a", None)),
            (&[], "x=1&access_token=syt%5Fa&y=2", token("syt_a", None)),
            (&[], "access%5Ftoken=syt_a", token("syt_a", None)),
            (&["Bearer syt_a"], "x=1", token("syt_a", None)),
            (
                &[],
                "access_token=as&user_id=%40p%3Alocalhost",
                token("as", Some("user_id=%40p%3Alocalhost")),
            ),
            (
                &["Bearer as"],
                "user_id=@p:localhost",
                token("as", Some("user_id=@p:localhost")),
            ),
        ] {
            assert_eq!(read_with(auth, query), expected, "{auth:?} {query:?}");
        }
    }

    #[test]
    fn no_token_in_any_reading() {
        for query in ["", "x=1", "access+token=a", "access_token%=a"] {
            assert_eq!(read_with(&[], query), Presented::Absent, "{query:?}");
        }
    }

    #[test]
    fn the_forms_homeservers_read_apart_are_ambiguous() {
        for (auth, query) in [
            (&[][..], "x=1;access_token=a"),
            (&["Bearer a"], "x=1;y=2"),
            (&[], "access_token=a&access_token=a"),
            (&[], "access_token=a&access%5Ftoken=b"),
            (&[], "access_token"),
            (&[], "access_token="),
            (&[], "access_token=%zz"),
            (&[], "access_token=%C3%A9"),
            (&[], "access_token=a+b"),
            (&["Bearer a"], "access_token=a"),
            (&["Bearer a"], "access_token"),
            (&["bearer a"], ""),
            (&["BEARER a"], ""),
            (&["Bearer  a"], ""),
            (&["Bearer a b"], ""),
            (&["Bearer "], ""),
            (&["Bearer"], ""),
            (&["Basic YTpi"], ""),
            (&["Bearer a", "Bearer a"], ""),
            (&[], "access_token=a&user_id=%40x%3Ay&user_id=%40z%3Ay"),
            (&[], "access_token=a&user_id="),
            (&[], "access_token=a&user_id=%zz"),
        ] {
            assert!(
                matches!(read_with(auth, query), Presented::Ambiguous(_)),
                "{auth:?} {query:?}: {:?}",
                read_with(auth, query)
            );
        }
    }

    #[test]
    fn the_token_is_not_in_the_debug_output() {
        let debug = format!(
            "{:?}",
            read_with(&["Bearer syt_secret"], "user_id=@bot:example.org")
        );
        assert!(!debug.contains("syt_secret"), "{debug}");
        // Whom an appservice acts as is no secret, and tells requests apart.
        assert!(debug.contains("@bot:example.org"), "{debug}");
    }
}
