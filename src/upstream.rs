//! What the two upstream clients (Synapse's and Cloudflare's) share.

/// An error with its whole cause chain: HTTP clients' top-level errors
/// ("client error (Connect)") say little on their own.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
