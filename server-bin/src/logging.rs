//! Logging through `tracing-subscriber`: the filter comes from `RUST_LOG` when it is set,
//! else from `[log] level`; lines are text or JSON, on stderr (stdout carries only the
//! daemon's own status lines). The level can change while the daemon runs
//! ([`set_level`], on SIGHUP).
//!
//! Nothing secret is logged by dapd or the crates under it: keys appear only as their
//! public halves, sessions by a short id prefix.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::LogFormat;

/// The installed filter's handle, for [`set_level`].
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber. A second call (tests running the daemon in-process
/// several times) leaves the first in place.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Text => {
            registry.with(fmt::layer().with_writer(std::io::stderr).with_ansi(ansi)).try_init()
        }
        LogFormat::Json => {
            registry.with(fmt::layer().json().with_writer(std::io::stderr)).try_init()
        }
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Replaces the filter with `level` (`[log] level`'s syntax). `RUST_LOG`, when set, keeps
/// precedence: the level is then left as it is.
///
/// # Errors
/// Why the level was not applied (a bad filter, `RUST_LOG` set, no subscriber installed).
pub fn set_level(level: &str) -> Result<(), String> {
    if std::env::var_os(EnvFilter::DEFAULT_ENV).is_some() {
        return Err("RUST_LOG is set and takes precedence".into());
    }
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    let handle = FILTER.get().ok_or("no logger installed by this process")?;
    handle.reload(filter).map_err(|e| e.to_string())
}
