//! SIGINT and SIGTERM, caught so that dapd drains instead of dying.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// SIGINT and SIGTERM, registered: from [`register`](Self::register) on, neither kills the
/// process; [`wait`](Self::wait) returns when one arrives.
pub struct ShutdownSignals(Signals);

impl std::fmt::Debug for ShutdownSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShutdownSignals")
    }
}

impl ShutdownSignals {
    /// Catches SIGINT and SIGTERM. Register before announcing the daemon, so that a signal
    /// sent as soon as it is announced starts a drain.
    ///
    /// # Errors
    /// The handlers could not be installed.
    pub fn register() -> std::io::Result<Self> {
        Signals::new([SIGINT, SIGTERM]).map(ShutdownSignals)
    }

    /// Blocks until SIGINT or SIGTERM arrives; returns its number.
    pub fn wait(&mut self) -> i32 {
        loop {
            if let Some(sig) = self.0.forever().next() {
                return sig;
            }
        }
    }
}

/// The name of a shutdown signal, for logs.
pub fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "signal",
    }
}
