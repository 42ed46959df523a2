//! The Cloudflare Realtime TURN API client (docs/behaviour.md §4): mint a short-lived
//! credential with the long-lived key's API token, or revoke one.

use std::time::Duration;

use http::StatusCode;
use http::header::{self, HeaderMap};
use serde::Serialize;
use url::Url;

use crate::config::{Config, Secret};
use crate::credentials::turn::{IceServers, IceServersAnswer};
use crate::edge::upstream::error_chain;

/// Cloudflare's answers are a few hundred bytes; anything near this is not
/// one, and must not be buffered whole.
pub(crate) const MAX_ANSWER_BYTES: usize = 1024 * 1024;
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest cool-down a 429's `Retry-After` may ask for (docs/behaviour.md §5).
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum CloudflareError {
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("no answer within the timeout")]
    Timeout,
    #[error("request failed: {0}")]
    Transport(String),
    #[error("answered HTTP {status}")]
    Status {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    #[error("the answer is larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
    #[error("the answer is not JSON: {0}")]
    NotJson(String),
    #[error("the answer has the wrong shape: {0}")]
    Shape(String),
}

impl CloudflareError {
    /// A short, fixed label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Timeout => "timeout",
            Self::Transport(_) => "transport",
            Self::Status { .. } => "status",
            Self::TooLarge => "too-large",
            Self::NotJson(_) => "not-json",
            Self::Shape(_) => "shape",
        }
    }

    pub(crate) fn from_reqwest(err: reqwest::Error) -> Self {
        if err.is_timeout() {
            return Self::Timeout;
        }
        // Never the URL, which reqwest's message includes: a revoke URL
        // carries the TURN username.
        let err = err.without_url();
        let text = error_chain(&err);
        if err.is_connect() {
            Self::Connect(text)
        } else {
            Self::Transport(text)
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MintRequest<'a> {
    ttl: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    custom_identifier: Option<&'a str>,
}

#[derive(Clone, Debug)]
pub(crate) struct CloudflareClient {
    http: reqwest::Client,
    keys_url: Url,
    api_token: Secret,
}

impl CloudflareClient {
    pub(crate) fn new(config: &Config) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("matrix-turnify/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT.min(config.cf_timeout))
            .timeout(config.cf_timeout)
            // The API token is sent only to the configured base URL: a
            // redirect would carry it elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        // The base URL was checked to be http(s), which always has path segments.
        let mut keys_url = config.cf_api_base_url.clone();
        if let Ok(mut segments) = keys_url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend(["turn", "keys", &config.cf_key_id, "credentials"]);
        }
        Ok(Self {
            http,
            keys_url,
            api_token: config.cf_api_token.clone(),
        })
    }

    fn credentials_url(&self, last: &[&str]) -> Url {
        let mut url = self.keys_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend(last);
        }
        url
    }

    /// `POST …/credentials/generate-ice-servers`: a new credential valid for
    /// `ttl` seconds, tagged with `custom_identifier` for Cloudflare's analytics.
    pub(crate) async fn mint(
        &self,
        ttl: u32,
        custom_identifier: Option<&str>,
    ) -> Result<IceServers, CloudflareError> {
        let body = serde_json::to_vec(&MintRequest {
            ttl,
            custom_identifier,
        })
        .map_err(|e| CloudflareError::Transport(e.to_string()))?;
        let response = self
            .http
            .post(self.credentials_url(&["generate-ice-servers"]))
            .bearer_auth(self.api_token.expose())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(CloudflareError::from_reqwest)?;
        let status = response.status();
        if !status.is_success() {
            return Err(CloudflareError::Status {
                status,
                retry_after: retry_after(response.headers()),
            });
        }
        let body = read_capped(response).await?;
        let answer: IceServersAnswer = serde_json::from_slice(&body).map_err(|e| {
            if e.is_data() {
                CloudflareError::Shape(e.to_string())
            } else {
                CloudflareError::NotJson(e.to_string())
            }
        })?;
        Ok(answer.ice_servers)
    }

    /// `POST …/credentials/{username}/revoke`: the credential stops working.
    pub(crate) async fn revoke(&self, username: &str) -> Result<(), CloudflareError> {
        let response = self
            .http
            .post(self.credentials_url(&[username, "revoke"]))
            .bearer_auth(self.api_token.expose())
            .send()
            .await
            .map_err(CloudflareError::from_reqwest)?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(CloudflareError::Status {
                status,
                retry_after: retry_after(response.headers()),
            })
        }
    }
}

/// Reads the body chunk by chunk and gives up past [`MAX_ANSWER_BYTES`],
/// whether or not the server announced its length.
pub(crate) async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, CloudflareError> {
    if response
        .content_length()
        .is_some_and(|length| length > MAX_ANSWER_BYTES as u64)
    {
        return Err(CloudflareError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(CloudflareError::from_reqwest)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(CloudflareError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Retry-After` in seconds (the form Cloudflare's API uses), capped.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_for(base: &str, key: &str) -> CloudflareClient {
        let config = Config::from_vars([
            ("CF_TURN_KEY_ID".to_owned(), key.to_owned()),
            ("CF_TURN_API_TOKEN".to_owned(), "t".to_owned()),
            ("CF_TURN_API_BASE_URL".to_owned(), base.to_owned()),
        ])
        .expect("valid config");
        CloudflareClient::new(&config).expect("client builds")
    }

    #[test]
    fn urls_are_built_under_the_base_path() {
        let client = client_for("https://rtc.live.cloudflare.com/v1", "abc");
        assert_eq!(
            client.credentials_url(&["generate-ice-servers"]).as_str(),
            "https://rtc.live.cloudflare.com/v1/turn/keys/abc/credentials/generate-ice-servers"
        );
        let client = client_for("http://127.0.0.1:9/v1/", "abc");
        assert_eq!(
            client.credentials_url(&["u/../x", "revoke"]).as_str(),
            "http://127.0.0.1:9/v1/turn/keys/abc/credentials/u%2F..%2Fx/revoke"
        );
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(header::RETRY_AFTER, "12".parse().expect("value"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(12)));
        headers.insert(header::RETRY_AFTER, "86400".parse().expect("value"));
        assert_eq!(retry_after(&headers), Some(MAX_RETRY_AFTER));
        headers.insert(
            header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("value"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn mint_request_body_matches_the_api() {
        let plain = serde_json::to_string(&MintRequest {
            ttl: 86_400,
            custom_identifier: None,
        })
        .expect("serialises");
        assert_eq!(plain, r#"{"ttl":86400}"#);
        let tagged = serde_json::to_string(&MintRequest {
            ttl: 60,
            custom_identifier: Some("@alice:example.org"),
        })
        .expect("serialises");
        assert_eq!(tagged, r#"{"ttl":60,"customIdentifier":"@alice:example.org"}"#);
    }

    #[tokio::test]
    async fn a_failed_revoke_does_not_name_the_turn_username() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}/v1", closed.local_addr().expect("addr"));
        drop(closed);
        let err = client_for(&base, "abc")
            .revoke("secret-turn-username")
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, CloudflareError::Connect(_)), "{err:?}");
        assert!(!err.to_string().contains("secret-turn-username"), "{err}");
    }
}
