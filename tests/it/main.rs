//! Integration tests, one binary: the daemon on loopback against recording
//! fakes of Synapse and Cloudflare, and the built binary for start-up and
//! logging behaviour.

mod binary;
mod budget;
mod chaos;
mod check;
mod dashboards;
mod documented;
mod endpoint;
mod faults;
mod hangups;
mod hardening;
mod harness;
mod homeservers;
mod limits;
mod livekit;
mod livekit_identity;
mod livekit_limits;
mod livekit_publishers;
mod livekit_reading;
mod odd_inputs;
mod pass_through;
mod properties;
mod request_loop;
mod reuse;
mod splice;
mod token_seen;
mod turn_server;
