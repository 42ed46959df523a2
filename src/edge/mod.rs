//! The network edge both front doors stand on (docs/behaviour.md §2, §10): accepting
//! connections and bounding them, the outbound HTTP client, what a proxy does
//! to the headers it passes on, and the access-log line both doors write.

pub(crate) mod access_log;
pub(crate) mod headers;
pub(crate) mod server;
pub(crate) mod timed_io;
pub(crate) mod upstream;
