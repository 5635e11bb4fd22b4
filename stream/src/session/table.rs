//! The server's table of sessions: created by stream_ctl, attached once by a stream.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{SESSION_ID_LEN, SessionParams};

type Id = [u8; SESSION_ID_LEN];

enum Entry {
    /// Waiting for its stream until `expires`; `shared`: published to the cluster (an
    /// attach here must claim it there first).
    Pending { params: Box<SessionParams>, created: Instant, expires: Instant, shared: bool },
    /// A stream carries it; removed when the stream ends.
    Attached,
}

/// The table is at its bound and no pending session has expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the session table is full")]
pub struct TableFull;

/// Why a stream could not attach to a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// No such session, or it expired before the stream came.
    #[error("unknown or expired session")]
    Unknown,
    /// A stream is attached to it already: a session attaches once.
    #[error("session attached already")]
    AlreadyAttached,
}

/// The least time between two sweeps of a full table for expired entries. A full table is
/// what an attacker holding a key aims for (stream_ctl after stream_ctl, never attaching);
/// each refusal must then cost little, not a pass over every entry, on whichever thread
/// answers stream_ctl (the connection's worker with `handshake_on_worker`). At worst a
/// session is refused for this long after room appeared.
pub(crate) const FULL_SWEEP_EVERY: Duration = Duration::from_millis(50);

/// When a full table may be swept for expired entries: at once the first time, then at
/// most every [`FULL_SWEEP_EVERY`].
#[derive(Debug, Default)]
pub(crate) struct SweepGate {
    last: Option<Instant>,
}

impl SweepGate {
    /// Whether to sweep now (and if so, the sweep is counted as done at `now`).
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        let due = self.last.is_none_or(|l| now.saturating_duration_since(l) >= FULL_SWEEP_EVERY);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// Sessions by id: bounded, with pending sessions expiring at their connect deadline.
pub struct SessionTable {
    inner: Mutex<Inner>,
    max: usize,
}

struct Inner {
    map: HashMap<Id, Entry>,
    /// Pending sessions that expired and were removed since the last call to
    /// [`SessionTable::take_expired`].
    expired: u64,
    /// When the full table may be swept again.
    sweep: SweepGate,
}

impl std::fmt::Debug for SessionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTable").field("len", &self.len()).field("max", &self.max).finish()
    }
}

impl SessionTable {
    /// A table holding at most `max` sessions (pending and attached).
    pub fn new(max: usize) -> Self {
        let inner = Inner { map: HashMap::new(), expired: 0, sweep: SweepGate::default() };
        SessionTable { inner: Mutex::new(inner), max }
    }

    /// Sessions held now.
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a pending session that expires at `expires`.
    ///
    /// # Errors
    /// [`TableFull`] when the table is at its bound after dropping expired sessions (swept
    /// at most every [`FULL_SWEEP_EVERY`] while it stays full).
    pub fn insert(
        &self,
        params: SessionParams,
        now: Instant,
        expires: Instant,
    ) -> Result<(), TableFull> {
        let mut g = self.inner.lock();
        if g.map.len() >= self.max {
            if g.sweep.due(now) {
                Self::purge_locked(&mut g, now);
            }
            if g.map.len() >= self.max {
                return Err(TableFull);
            }
        }
        g.map.insert(
            params.id,
            Entry::Pending { params: Box::new(params), created: now, expires, shared: false },
        );
        Ok(())
    }

    /// Attaches a stream to session `id`: returns its parameters, and the session stays in
    /// the table, attached, until [`detach`](Self::detach).
    ///
    /// # Errors
    /// [`AttachError`].
    pub fn attach(&self, id: &Id, now: Instant) -> Result<SessionParams, AttachError> {
        self.attach_timed(id, now).map(|(p, _)| p)
    }

    /// [`attach`](Self::attach), with how long the session waited since stream_ctl made it.
    ///
    /// # Errors
    /// [`AttachError`].
    pub fn attach_timed(
        &self,
        id: &Id,
        now: Instant,
    ) -> Result<(SessionParams, std::time::Duration), AttachError> {
        self.attach_shared(id, now).map(|(p, d, _)| (p, d))
    }

    /// Marks pending session `id` as published to a cluster ([`attach_shared`] says so).
    ///
    /// [`attach_shared`]: Self::attach_shared
    pub fn mark_shared(&self, id: &Id) {
        if let Some(Entry::Pending { shared, .. }) = self.inner.lock().map.get_mut(id) {
            *shared = true;
        }
    }

    /// [`attach_timed`](Self::attach_timed), and whether the session was published to a
    /// cluster ([`mark_shared`](Self::mark_shared)).
    ///
    /// # Errors
    /// [`AttachError`].
    pub fn attach_shared(
        &self,
        id: &Id,
        now: Instant,
    ) -> Result<(SessionParams, std::time::Duration, bool), AttachError> {
        let mut g = self.inner.lock();
        let entry = g.map.get_mut(id).ok_or(AttachError::Unknown)?;
        match entry {
            Entry::Attached => Err(AttachError::AlreadyAttached),
            Entry::Pending { expires, .. } if *expires <= now => {
                g.map.remove(id);
                g.expired += 1;
                Err(AttachError::Unknown)
            }
            Entry::Pending { .. } => {
                let Entry::Pending { params, created, shared, .. } =
                    std::mem::replace(entry, Entry::Attached)
                else {
                    unreachable!("matched Pending")
                };
                Ok((*params, now.saturating_duration_since(created), shared))
            }
        }
    }

    /// The stream of session `id` ended: forget the session.
    pub fn detach(&self, id: &Id) {
        self.inner.lock().map.remove(id);
    }

    /// Drops pending sessions past their deadline.
    pub fn purge(&self, now: Instant) {
        Self::purge_locked(&mut self.inner.lock(), now);
    }

    fn purge_locked(g: &mut Inner, now: Instant) {
        let before = g.map.len();
        g.map.retain(|_, e| !matches!(e, Entry::Pending { expires, .. } if *expires <= now));
        g.expired += (before - g.map.len()) as u64;
    }

    /// How many pending sessions expired since the last call.
    pub fn take_expired(&self) -> u64 {
        std::mem::take(&mut self.inner.lock().expired)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use dap_net::enc::cipher::CipherSuite;

    use super::*;
    use crate::session::{SessionLimits, TransportKind};

    fn params(id: u8) -> SessionParams {
        SessionParams {
            unreliable: Vec::new(),
            udp: None,
            id: [id; 16],
            suite: CipherSuite::ChaCha20Poly1305,
            secret: [0; 32],
            channels: b"E".to_vec(),
            transport: TransportKind::Http,
            limits: SessionLimits::default(),
            udp_port: 0,
            client: None,
        }
    }

    #[test]
    fn a_session_attaches_once() {
        let t = SessionTable::new(4);
        let now = Instant::now();
        t.insert(params(1), now, now + Duration::from_secs(1)).unwrap();
        assert!(t.attach(&[1; 16], now).is_ok());
        assert_eq!(t.attach(&[1; 16], now).unwrap_err(), AttachError::AlreadyAttached);
        t.detach(&[1; 16]);
        assert_eq!(t.attach(&[1; 16], now).unwrap_err(), AttachError::Unknown);
    }

    #[test]
    fn pending_sessions_expire_and_free_room() {
        let t = SessionTable::new(2);
        let now = Instant::now();
        let soon = now + Duration::from_secs(1);
        t.insert(params(1), now, soon).unwrap();
        t.insert(params(2), now, soon).unwrap();
        assert_eq!(t.insert(params(3), now, soon), Err(TableFull));
        let later = soon + Duration::from_millis(1);
        assert_eq!(t.attach(&[1; 16], later).unwrap_err(), AttachError::Unknown);
        t.insert(params(3), later, later + Duration::from_secs(1)).unwrap();
        t.purge(later);
        assert_eq!(t.take_expired(), 2);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_full_table_is_swept_at_most_every_interval() {
        let t = SessionTable::new(2);
        let now = Instant::now();
        let soon = now + Duration::from_millis(10);
        t.insert(params(1), now, soon).unwrap();
        t.insert(params(2), now, soon).unwrap();
        // Full, nothing expired: swept (nothing to drop) and refused.
        assert_eq!(t.insert(params(3), now, soon), Err(TableFull));
        // Both expired now, but the last sweep was too recent: refused without a sweep.
        let expired = soon + Duration::from_millis(1);
        assert!(expired - now < FULL_SWEEP_EVERY);
        assert_eq!(t.insert(params(3), expired, expired + FULL_SWEEP_EVERY), Err(TableFull));
        assert_eq!(t.len(), 2);
        // Once the interval has passed, the sweep makes room.
        let next = now + FULL_SWEEP_EVERY;
        t.insert(params(3), next, next + FULL_SWEEP_EVERY).unwrap();
        assert_eq!((t.len(), t.take_expired()), (1, 2));
    }
}
