//! Logging through `tracing-subscriber`: the filter comes from `RUST_LOG` when it is set,
//! else from `[log] level`; lines are text or JSON, on stderr (stdout carries only the
//! daemon's own status lines).
//!
//! Nothing secret is logged by dapd or the crates under it: keys appear only as their
//! public halves, sessions by a short id prefix.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. A second call (tests running the daemon in-process
/// several times) leaves the first in place.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
