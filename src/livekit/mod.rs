//! The LiveKit front door (docs/behaviour.md §12): the signalling proxy
//! (`proxy`), the pure splice of a Cloudflare TURN entry into LiveKit's join
//! (`splice`), and reading a participant's token as LiveKit does (`auth`,
//! `jwt`).

pub mod auth;
pub mod jwt;
pub mod proxy;
pub mod splice;
