//! `check --public-url`: whether the reverse proxy routes each turnServer
//! path to the daemon.

use http::StatusCode;

use crate::matrix::routes::TURN_SERVER_ENDPOINTS;
use crate::matrix::synapse::VERSIONS_PATH;
use crate::matrix::synapse::carries_our_via;

use super::*;

/// The routing self-test: each turnServer path asked through the URL
/// clients use. Only an answer that carries the daemon's `Via` came through
/// it; the most likely failure of a deployment is a proxy rule that sends
/// the request straight to the homeserver, whose answer looks like success.
pub(super) async fn check_public_route(public: &PublicRoute, timeout: std::time::Duration) -> Vec<Finding> {
    let base = public.url.trim_end_matches('/');
    if !(base.starts_with("https://") || base.starts_with("http://")) {
        return vec![Finding::fail(
            format!("--public-url {base} is not an http(s) URL"),
            "give the URL clients use, e.g. --public-url https://matrix.example.com",
        )];
    }
    let client = match reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            return vec![Finding::fail(
                format!("HTTP client cannot be built: {e}"),
                "this is a bug or a broken TLS set-up; please report it",
            )];
        }
    };
    let mut findings = Vec::new();
    for path in TURN_SERVER_ENDPOINTS {
        let mut request = client.get(format!("{base}{path}"));
        if let Some(token) = &public.token {
            request = request.bearer_auth(token);
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                findings.push(Finding::fail(
                    format!(
                        "{path} through {base}: {}",
                        crate::edge::upstream::error_chain(&e.without_url())
                    ),
                    "check --public-url: it must be the address clients use, reachable from here",
                ));
                continue;
            }
        };
        let status = response.status();
        let through_us = carries_our_via(response.headers());
        let server = response
            .headers()
            .get_all(http::header::SERVER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        if !through_us {
            let seen = if server.is_empty() {
                String::new()
            } else {
                format!(", Server: {server}")
            };
            findings.push(Finding::fail(
                format!(
                    "{path} through {base} did not pass through matrix-turnify ({}{seen})",
                    status.as_u16()
                ),
                proxy_rule_hint(&server),
            ));
            continue;
        }
        // The credential round trip on the path every client uses; the
        // others only have to reach the daemon (Dendrite and the Conduit
        // family serve r0 and v3 alone).
        if public.token.is_some() && path == TURN_SERVER_ENDPOINTS[0] {
            let body: Option<serde_json::Value> = match response.bytes().await {
                Ok(bytes) => serde_json::from_slice(&bytes).ok(),
                Err(_) => None,
            };
            let credential = body.as_ref().is_some_and(|body| {
                body["username"].as_str().is_some_and(|u| !u.is_empty())
                    && body["uris"].as_array().is_some_and(|uris| !uris.is_empty())
            });
            findings.push(if status == StatusCode::OK && credential {
                Finding::pass(format!("{path} through {base}: a TURN credential from matrix-turnify"))
            } else {
                Finding::fail(
                    format!("{path} through {base} reached matrix-turnify but brought no credential ({})", status.as_u16()),
                    "the route works; run `check` without --public-url, and look at the daemon's log line for this request",
                )
            });
            continue;
        }
        findings.push(Finding::pass(format!(
            "{path} through {base} reaches matrix-turnify ({})",
            status.as_u16()
        )));
    }
    findings.push(match client.get(format!("{base}{VERSIONS_PATH}")).send().await {
        Ok(response) if carries_our_via(response.headers()) => Finding::warn(
            format!("{VERSIONS_PATH} through {base} also passed through matrix-turnify"),
            "the proxy sends more than the turnServer endpoint to the daemon; it passes the rest on, but every \
             request then costs an extra hop and a warning in its log: route only the turnServer paths to it",
        ),
        Ok(response) => Finding::pass(format!(
            "{VERSIONS_PATH} through {base} goes straight to the homeserver ({})",
            response.status().as_u16()
        )),
        Err(e) => Finding::fail(
            format!("{VERSIONS_PATH} through {base}: {}", crate::edge::upstream::error_chain(&e.without_url())),
            "check --public-url: it must be the address clients use, reachable from here",
        ),
    });
    findings
}

/// Which rule to look at, guessed from the `Server` header of the answer
/// that came without the daemon: nginx (and Nginx Proxy Manager's
/// OpenResty) and Cloudflare name themselves; Traefik passes the
/// homeserver's on.
pub(super) fn proxy_rule_hint(server: &str) -> String {
    let server = server.to_ascii_lowercase();
    let rule = "^/_matrix/client/(v3|r0|unstable|api/v1)/voip/turnServer$";
    if server.contains("nginx") || server.contains("openresty") {
        format!(
            "nginx: the `location ~ {rule}` block is missing, or another regex location that matches /_matrix (such \
             as `location ~ ^(/_matrix|/_synapse/client)` from Synapse's guide) comes before it: nginx takes the \
             first matching regex, so ours must come first"
        )
    } else if server.contains("cloudflare") {
        format!(
            "cloudflared: the ingress rule with path '{rule}' to matrix-turnify:4499 is missing or below the \
             hostname's other rule; a dashboard-managed tunnel adds new routes last: move it to the top"
        )
    } else if server.contains("caddy") {
        "Caddy: `reverse_proxy @turn` to matrix-turnify:4499 must come before the homeserver's, inside one `route` block"
            .to_owned()
    } else {
        format!(
            "the proxy sent it straight to the homeserver. Traefik: the matrix-turnify router needs \
             PathRegexp(`{rule}`) and a priority above the homeserver's router, and the container must be \
             healthy (Traefik skips one that is starting); other proxies: send exactly these paths to \
             matrix-turnify:4499, ahead of the homeserver's rule"
        )
    }
}
