//! Accepting connections, and placing them on a worker.

use std::io::ErrorKind;
use std::time::Duration;

use super::{AcceptedIo, Msg, TimerWhat, WorkerCtx};
use crate::esocket::io::{ListenIo, StreamIo};
use crate::esocket::{Body, EsState, EsocketKind, Factory, PeerAddr, PostError};
use crate::log_throttle::LogThrottle;

/// Connections accepted per listener per turn before other esockets get a go.
const ACCEPT_BUDGET: usize = 64;
/// How long a listener rests after the process ran out of descriptors or memory.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Accept-path warnings a flood can repeat (EMFILE every 100 ms on every worker): at most
/// 5 lines per 10 s per site, the next one saying how many were left out. Counters keep
/// the whole count.
static ACCEPT_FAILED: LogThrottle = LogThrottle::new(5, Duration::from_secs(10));
static NO_ROOM: LogThrottle = LogThrottle::new(5, Duration::from_secs(10));
static NOT_ADDED: LogThrottle = LogThrottle::new(5, Duration::from_secs(10));
static BUDGET: LogThrottle = LogThrottle::new(5, Duration::from_secs(10));

impl WorkerCtx {
    pub(crate) fn accept(&mut self, st: &mut EsState) {
        if !st.read_ready || self.stopping.is_some() || st.close_now || st.closing {
            return;
        }
        let Body::Listener { io, factory, spread } = &mut st.body else { return };
        let factory = factory.clone();
        let spread = *spread;
        for _ in 0..ACCEPT_BUDGET {
            if !spread && self.slots.is_full() {
                // Leave the rest in the kernel's backlog; a freed slot resumes us.
                if !self.paused_listeners.contains(&st.id) {
                    self.paused_listeners.push(st.id);
                }
                return;
            }
            if spread && self.slots.is_full() && self.peers.iter().all(|p| p.is_full()) {
                // Every worker is full, and a slot may free on any of them: look again soon.
                let _ = self.arm(st, ACCEPT_RETRY, TimerWhat::AcceptRetry);
                return;
            }
            let accepted = match io {
                ListenIo::Tcp(l) => {
                    l.accept().map(|(s, a)| (AcceptedIo::Tcp(s), PeerAddr::Inet(a)))
                }
                ListenIo::Unix(l) => l.accept().map(|(s, _)| (AcceptedIo::Unix(s), PeerAddr::Unix)),
            };
            match accepted {
                Ok((sock, peer)) => self.place(sock, peer, &factory, spread),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    st.read_ready = false;
                    return;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of descriptors or memory: the pending connection stays in the
                    // backlog, and edge-triggered epoll will not remind us, so retry on a timer
                    // rather than spin.
                    self.stats.accept_failed += 1;
                    if let Some(suppressed) = ACCEPT_FAILED.check() {
                        tracing::warn!(worker = self.index(), error = %e, suppressed, "accept failed; retrying shortly");
                    }
                    let _ = self.arm(st, ACCEPT_RETRY, TimerWhat::AcceptRetry);
                    return;
                }
            }
        }
        self.schedule(st);
    }

    /// Keeps an accepted socket here, or (spread mode) hands it to the least-loaded worker.
    fn place(&mut self, sock: AcceptedIo, peer: PeerAddr, factory: &Factory, spread: bool) {
        if spread && self.peers.len() > 1 {
            // Accepts earlier in this batch count too, not only those of the last turn.
            self.publish_conns();
            let target = self
                .peers
                .iter()
                .filter(|p| !p.is_full())
                .min_by_key(|p| (p.load(), p.index != self.shared.index))
                .cloned();
            if let Some(target) = target.filter(|t| t.index != self.shared.index) {
                match target.try_post(Msg::Adopt(sock, peer, factory.clone())) {
                    Ok(()) => return,
                    Err((PostError::Full | PostError::Gone, Msg::Adopt(sock, peer, _))) => {
                        return self.adopt(sock, peer, factory);
                    }
                    Err(_) => return,
                }
            }
        }
        self.adopt(sock, peer, factory);
    }

    /// Turns an accepted socket into an esocket on this worker.
    pub(crate) fn adopt(&mut self, sock: AcceptedIo, peer: PeerAddr, factory: &Factory) {
        if self.stopping.is_some() || self.slots.is_full() {
            self.stats.accept_dropped += 1;
            if let Some(suppressed) = NO_ROOM.check() {
                tracing::warn!(
                    worker = self.index(),
                    suppressed,
                    "no room for an accepted connection; closing it"
                );
            }
            return;
        }
        if self.cfg.budget.is_over() {
            // Out of buffer memory: the connections already here keep what they have.
            self.stats.budget_refused += 1;
            self.cfg.budget.note_refused_accept();
            if let Some(suppressed) = BUDGET.check() {
                tracing::warn!(
                    worker = self.index(),
                    suppressed,
                    "buffer budget exhausted; refusing a new connection"
                );
            }
            return;
        }
        let made =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| factory.new_handler(&peer)));
        let handler = match made {
            Ok(Some(handler)) => handler,
            Ok(None) => return,
            Err(_) => {
                self.stats.handler_panics += 1;
                tracing::error!(
                    worker = self.index(),
                    "handler factory panicked; connection closed"
                );
                return;
            }
        };
        let (kind, io) = match sock {
            AcceptedIo::Tcp(s) => {
                if self.cfg.nodelay {
                    let _ = s.set_nodelay(true);
                }
                (EsocketKind::Tcp, StreamIo::Tcp(s))
            }
            AcceptedIo::Unix(s) => (EsocketKind::Unix, StreamIo::Unix(s)),
        };
        match self.add(kind, Body::Stream(io), Some(handler), |st| st.write_ready = true) {
            Ok(_) => self.stats.accepted += 1,
            Err(e) => {
                self.stats.accept_dropped += 1;
                if let Some(suppressed) = NOT_ADDED.check() {
                    tracing::warn!(worker = self.index(), error = %e, suppressed, "could not add an accepted connection");
                }
            }
        }
    }
}
