//! SIGINT, SIGTERM and SIGHUP, caught so that dapd drains instead of dying, and reloads
//! instead of hanging up.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// What a caught signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT or SIGTERM (its number): drain and stop. A second one during the drain
    /// stops at once.
    Shutdown(i32),
    /// SIGHUP: read the configuration again and apply what can change.
    Reload,
}

/// SIGINT, SIGTERM and SIGHUP, registered: from [`register`](Self::register) on, none of
/// them kills the process; [`wait`](Self::wait) returns each as it arrives.
pub struct ShutdownSignals(Signals);

impl std::fmt::Debug for ShutdownSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShutdownSignals")
    }
}

impl ShutdownSignals {
    /// Catches SIGINT, SIGTERM and SIGHUP. Register before announcing the daemon, so that
    /// a signal sent as soon as it is announced is handled, not fatal.
    ///
    /// # Errors
    /// The handlers could not be installed.
    pub fn register() -> std::io::Result<Self> {
        Signals::new([SIGINT, SIGTERM, SIGHUP]).map(ShutdownSignals)
    }

    /// Blocks until a signal arrives.
    pub fn next_signal(&mut self) -> Signal {
        loop {
            match self.0.forever().next() {
                Some(SIGHUP) => return Signal::Reload,
                Some(sig) => return Signal::Shutdown(sig),
                None => {}
            }
        }
    }

    /// Blocks until SIGINT or SIGTERM arrives (SIGHUP is ignored here); returns its number.
    pub fn wait(&mut self) -> i32 {
        loop {
            if let Signal::Shutdown(sig) = self.next_signal() {
                return sig;
            }
        }
    }
}

/// The name of a signal, for logs.
pub fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "signal",
    }
}
