//! The Matrix front door (docs/behaviour.md §2–§8): the turnServer route and the
//! router around it (`routes`), forwarding to the homeserver (`synapse`), the
//! access token it saw (`token`), and the daemon's own Matrix errors (`error`).

pub(crate) mod error;
pub(crate) mod routes;
pub(crate) mod synapse;
pub(crate) mod token;
