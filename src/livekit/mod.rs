//! The LiveKit front door (docs/behaviour.md §12): the signalling proxy
//! (`proxy`), the pure splice of a Cloudflare TURN entry into LiveKit's join
//! (`splice`), and reading a participant's token as LiveKit does (`auth`,
//! `jwt`).

pub(crate) mod auth;
pub(crate) mod jwt;
pub(crate) mod proxy;
pub(crate) mod splice;

pub use proxy::{
    Bounds, FREE_MESSAGE_BYTES, JOIN_HOLD, MAX_CLIENT_MESSAGE_BYTES, MAX_MESSAGE_BYTES, RELAY_BUDGET_BYTES,
};
