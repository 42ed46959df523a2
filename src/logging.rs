//! Log output: `LOG_LEVEL` for our own events, warnings only from
//! dependencies, as text (coloured only on a terminal) or as JSON lines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use crate::config::LogFormat;

pub fn init(level: LevelFilter, format: LogFormat) {
    // Dependencies stay at `warn` even with LOG_LEVEL=debug: hyper and
    // rustls debug output could carry request details we never log.
    let filter = EnvFilter::new(format!("warn,matrix_turnify={level}"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
