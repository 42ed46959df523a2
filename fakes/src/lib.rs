//! Recording HTTP fakes of Synapse, of the Cloudflare Realtime TURN API and of
//! LiveKit's signalling ([`FakeLiveKit`]), for matrix-turnify's integration
//! tests, its demo and its benchmark.
//!
//! Each fake is a small HTTP/1.1 server on an ephemeral loopback port
//! (`127.0.0.1:0`), run in a spawned tokio task that is aborted, together with
//! every open connection, when the fake is dropped. Every request is recorded
//! (method, raw path and query, headers, body, peer) before it is answered;
//! see [`Recorded`].
//!
//! # Control endpoints of the Cloudflare fake
//!
//! For shell-driven tests of a fake running in its own process
//! (`cargo run -p turnify-fakes --bin fake_cloudflare`), [`FakeCloudflare`] also serves
//! endpoints that are not recorded and need no token (those of its analytics
//! API [below](#the-graphql-analytics-api-of-the-cloudflare-fake)):
//!
//! - `GET /__fake/stats` answers
//!   `{"mints":N,"last_custom_identifier":"…"|null,"revoked":["<username>",…],"requests":N,…}`:
//!   successful mints, the `customIdentifier` the latest one was asked for,
//!   revoked usernames, and requests received (control requests excluded).
//! - `POST /__fake/behaviour` switches the behaviour at run time; the body is
//!   one of
//!   - `{"fail_status":503}` (optionally `"retry_after":30`): every mint and
//!     revoke answers that status with a JSON error body;
//!   - `{"ok":true,"latency_ms":0}` (optionally `"shape":"legacy"`): normal
//!     minting after that latency;
//!   - `{"hang":true}`: requests are accepted and never answered.
//!
//!   It answers `204`, or `400` for a body it does not understand.
//!
//! # The GraphQL Analytics API of the Cloudflare fake
//!
//! [`FakeCloudflare`] also answers `POST /client/v4/graphql`
//! ([`FakeCloudflare::analytics_url`]) for the account
//! [`CloudflareOptions::account_id`] with the token
//! [`CloudflareOptions::analytics_token`], computing the
//! `callsTurnUsageAdaptiveGroups` dataset from [`UsageRecord`]s
//! ([`FakeCloudflare::add_usage`]); the docs of [`cloudflare::analytics`]
//! list the Cloudflare pages each answer follows. For the process form:
//!
//! - `POST /__fake/usage` adds a record:
//!   `{"key_id":"test-key-id","username":"…","egress_bytes":N,"ingress_bytes":N}`,
//!   optionally with `"custom_identifier":"…"`, `"concurrent_connections":N`
//!   and `"at":"2026-12-01T10:00:00Z"` (default now); `DELETE /__fake/usage`
//!   forgets them all. Both answer `204` (`400` for a record it cannot read).
//! - `POST /__fake/analytics` switches how queries that pass the checks are
//!   answered; the body is one of
//!   - `{"ok":true,"latency_ms":0}`: the data, after that latency;
//!   - `{"status":503,"body":"…"}`: that status and body;
//!   - `{"graphql_error":"…"}` (optionally `"status":429`): a GraphQL error in
//!     Cloudflare's shape, status 200 unless given;
//!   - `{"hang":true}`: never answered; `{"garbage":true}`: `200` and a body
//!     that is not JSON.
//!
//!   It answers `204`, or `400` for a body it does not understand.
//! - `GET /__fake/stats` also holds `"analytics_queries":N` (requests to the
//!   analytics endpoint, whatever their answer) and `"usage_records":N`.

pub mod cloudflare;
pub mod livekit;
pub mod process;
pub mod recorded;
mod serve;
pub mod synapse;
pub mod token_rules;

pub use cloudflare::{
    AnalyticsBehaviour, CfBehaviour, CloudflareOptions, FakeCloudflare, IceShape, MintedCredential, RealTurn,
    UsageRecord,
};
pub use livekit::{FakeLiveKit, LiveKitOptions, Session, SessionEnd};
pub use recorded::Recorded;
pub use synapse::{FakeSynapse, Flavour, SynapseBehaviour, SynapseOptions, WhoamiBehaviour};
