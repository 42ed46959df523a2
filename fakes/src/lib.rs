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
//! (`cargo run -p turnify-fakes --bin fake_cloudflare`), [`FakeCloudflare`] also serves two
//! endpoints that are not recorded and need no token:
//!
//! - `GET /__fake/stats` answers
//!   `{"mints":N,"revoked":["<username>",…],"requests":N}`: successful mints,
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

pub mod cloudflare;
pub mod livekit;
pub mod process;
pub mod recorded;
mod serve;
pub mod synapse;
pub mod token_rules;

pub use cloudflare::{CfBehaviour, CloudflareOptions, FakeCloudflare, IceShape, MintedCredential, RealTurn};
pub use livekit::{FakeLiveKit, LiveKitOptions, Session, SessionEnd};
pub use recorded::Recorded;
pub use synapse::{FakeSynapse, Flavour, SynapseBehaviour, SynapseOptions, WhoamiBehaviour};
