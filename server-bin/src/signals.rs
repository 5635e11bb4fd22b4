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

/// Tells systemd (a `Type=notify` unit) how the daemon stands: `READY=1` once it serves,
/// `STOPPING=1` when the drain begins, `RELOADING=1`/`READY=1` around a reload. Does
/// nothing when `NOTIFY_SOCKET` is not set (not run by systemd); a failure is logged, not
/// fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sent = (|| -> std::io::Result<()> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            socket.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "could not notify systemd");
    }
}
