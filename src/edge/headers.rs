//! What both front doors do to the headers of a request they pass on
//! (docs/behaviour.md §3, §12): drop hop-by-hop headers, append the peer to
//! `X-Forwarded-For`, and name the client for the access log.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1) describe one connection, not the
/// message: a proxy must not pass them on.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those a `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    retain(headers, |name| {
        !HOP_BY_HOP.contains(name) && !named.contains(name)
    });
}

/// Keeps the headers `keep` accepts, in their original order (removing from
/// a `HeaderMap` in place would reorder it).
fn retain(headers: &mut HeaderMap, keep: impl Fn(&HeaderName) -> bool) {
    if headers.keys().all(&keep) {
        return;
    }
    let mut current: Option<HeaderName> = None;
    for (name, value) in std::mem::take(headers) {
        // `None` means "another value of the previous name".
        if name.is_some() {
            current = name;
        }
        if let Some(name) = current.as_ref().filter(|name| keep(name)) {
            headers.append(name.clone(), value);
        }
    }
}

/// The headers to send upstream for a client's request: everything it sent
/// but `Host` and hop-by-hop headers, with `X-Forwarded-For` merged into one
/// line and the peer appended, so Synapse (`x_forwarded: true`) still sees
/// the real client first.
pub(crate) fn upstream_headers(mut headers: HeaderMap, peer: IpAddr) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    retain(&mut headers, |name| name != header::HOST);
    let mut forwarded_for: Vec<String> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
        .collect();
    forwarded_for.push(peer.to_string());
    // Every part came from a valid header value or is an IP address, so the
    // joined line is a valid header value too.
    if let Ok(value) = HeaderValue::from_str(&forwarded_for.join(", ")) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers
}

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client as the log line names it: the first `X-Forwarded-For` entry
/// (what the reverse proxy saw), else the TCP peer.
pub(crate) fn client_address(headers: &HeaderMap, peer: IpAddr) -> String {
    headers
        .get(X_FORWARDED_FOR)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next())
        .map(str::trim)
        .filter(|first| !first.is_empty())
        .map_or_else(|| peer.to_string(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10));

    #[test]
    fn host_and_hop_by_hop_headers_are_dropped() {
        let sent = upstream_headers(
            headers(&[
                ("host", "matrix.example.org"),
                ("connection", "keep-alive, X-Custom-Hop"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("trailer", "x"),
                ("transfer-encoding", "chunked"),
                ("upgrade", "websocket"),
                ("x-custom-hop", "1"),
                ("authorization", "Bearer  two-spaces-kept"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "matrix.example.org"),
                ("user-agent", "Element"),
            ]),
            PEER,
        );
        let names: Vec<&str> = sent.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            [
                "authorization",
                "x-forwarded-proto",
                "x-forwarded-host",
                "user-agent",
                "x-forwarded-for"
            ]
        );
        assert_eq!(sent["authorization"], "Bearer  two-spaces-kept");
    }

    #[test]
    fn forwarded_for_is_created_when_absent() {
        let sent = upstream_headers(HeaderMap::new(), PEER);
        assert_eq!(sent[X_FORWARDED_FOR], "192.0.2.10");
    }

    #[test]
    fn forwarded_for_lines_are_merged_in_order_and_the_peer_appended() {
        let sent = upstream_headers(
            headers(&[
                ("x-forwarded-for", "203.0.113.7, 198.51.100.9"),
                ("x-forwarded-for", "2001:db8::1"),
            ]),
            PEER,
        );
        assert_eq!(sent.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(
            sent[X_FORWARDED_FOR],
            "203.0.113.7, 198.51.100.9, 2001:db8::1, 192.0.2.10"
        );
    }

    #[test]
    fn two_authorization_headers_stay_two() {
        // Synapse refuses them ("Too many Authorization headers."); we must
        // not make such a request valid or invalid on our own.
        let sent = upstream_headers(
            headers(&[("authorization", "Bearer a"), ("authorization", "Bearer a")]),
            PEER,
        );
        assert_eq!(sent.get_all(header::AUTHORIZATION).iter().count(), 2);
    }

    #[test]
    fn response_hop_by_hop_headers_are_stripped() {
        let mut answer = headers(&[
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("server", "Synapse/1.163.2"),
            ("access-control-allow-origin", "*"),
        ]);
        strip_hop_by_hop(&mut answer);
        let names: Vec<&str> = answer.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["server", "access-control-allow-origin"]);
    }

    #[test]
    fn client_address_prefers_the_first_forwarded_entry() {
        assert_eq!(
            client_address(&headers(&[("x-forwarded-for", " 203.0.113.7 , 10.0.0.1")]), PEER),
            "203.0.113.7"
        );
        assert_eq!(client_address(&HeaderMap::new(), PEER), "192.0.2.10");
        assert_eq!(
            client_address(&headers(&[("x-forwarded-for", "")]), PEER),
            "192.0.2.10"
        );
    }
}
