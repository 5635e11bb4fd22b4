//! Driving stream and UDP esockets: reads into `buf_in`, writes from `buf_out`, and the
//! callbacks in between.

use std::io::{Error, ErrorKind};
use std::panic::{self, AssertUnwindSafe};

use super::{TimerWhat, WorkerCtx};
use crate::error::ReactorError;
use crate::esocket::io::{self, StreamIo};
use crate::esocket::{Body, EsState, Esocket, EsocketKind, Handler};
use crate::log_throttle::LogThrottle;
use crate::sys::udp::{RECV_SLOT, RecvBatch};
use crate::timer::TimerKey;

/// At most 5 output-overflow lines per 10 s (a flood of slow readers would repeat it); the
/// count is in `WorkerStats::overflow_closed`.
static OVERFLOW: LogThrottle = LogThrottle::new(5, std::time::Duration::from_secs(10));

impl WorkerCtx {
    /// Runs one handler callback, isolating panics: a panicking handler is dropped, its
    /// esocket closed, and the worker carries on.
    pub(crate) fn call<R: Default>(
        &mut self,
        st: &mut EsState,
        f: impl FnOnce(&mut dyn Handler, &mut Esocket<'_>) -> R,
    ) -> R {
        let Some(mut h) = st.handler.take() else { return R::default() };
        let result =
            panic::catch_unwind(AssertUnwindSafe(|| f(&mut *h, &mut Esocket::new(st, self))));
        match result {
            Ok(r) => {
                st.handler = Some(h);
                r
            }
            Err(_) => {
                // Set aside, not dropped: it still hears `on_error` and `on_delete`, so that
                // what it registered elsewhere can be released.
                if st.poisoned.is_none() {
                    st.poisoned = Some(h);
                }
                self.note_panic(st);
                R::default()
            }
        }
    }

    pub(crate) fn note_panic(&mut self, st: &mut EsState) {
        self.stats.handler_panics += 1;
        tracing::error!(worker = self.index(), kind = %format!("{:?}", st.kind).to_lowercase(), "esocket callback panicked; closing it");
        st.fail(ReactorError::HandlerPanicked.into());
    }

    /// Does whatever an esocket is ready for; called after events, messages and callbacks.
    pub(crate) fn drive(&mut self, st: &mut EsState) {
        match st.kind {
            EsocketKind::Tcp | EsocketKind::Unix | EsocketKind::Pipe => self.drive_stream(st),
            EsocketKind::Udp => self.drive_udp(st),
            EsocketKind::Listener => self.accept(st),
            EsocketKind::Queue => self.drain_queue(st, super::run::QUEUE_BUDGET),
            _ => {}
        }
    }

    pub(crate) fn drive_stream(&mut self, st: &mut EsState) {
        if st.connecting || st.close_now {
            return;
        }
        if st.layer.is_some() {
            if st.want_read && !st.closing && ((st.read_ready && !st.eof) || st.plain_pending) {
                self.read_layered(st);
            }
        } else if st.want_read && st.read_ready && !st.eof && !st.closing {
            self.read_stream(st);
        }
        self.flush_stream(st);
    }

    fn read_stream(&mut self, st: &mut EsState) {
        let cap = st.in_cap(&self.cfg.limits);
        let Body::Stream(io) = &mut st.body else { return };
        let outcome = st.buf_in.read_from(&mut self.pool, cap, |buf| {
            loop {
                match io.read(buf) {
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    other => break other,
                }
            }
        });
        match outcome {
            // Full: reading pauses here and resumes when the handler consumes.
            None => {}
            Some((Ok(0), _)) => {
                st.eof = true;
                st.read_ready = false;
                self.call(st, |h, es| h.on_read_closed(es));
            }
            Some((Ok(n), room)) => {
                self.stats.bytes_in += n as u64;
                st.last_active_ms = self.now_ms();
                // A short read drained the socket (as tokio does); edge-triggered epoll will
                // report new data, so no read is wasted on WouldBlock.
                if n < room && !st.read_closed {
                    st.read_ready = false;
                }
                self.call(st, |h, es| h.on_read(es));
                if st.read_ready && st.want_read && !st.buf_in.is_full(cap) {
                    self.schedule(st);
                }
            }
            Some((Err(e), _)) if e.kind() == ErrorKind::WouldBlock => st.read_ready = false,
            Some((Err(e), _)) => st.fail(e),
        }
        st.buf_in.release_if_empty(&mut self.pool);
        if !st.read_ready {
            // The peer has gone quiet with part of a message sent.
            st.buf_in.park(&mut self.pool);
        }
    }

    /// Reads through a layer: socket → layer → `buf_in`.
    fn read_layered(&mut self, st: &mut EsState) {
        let cap = st.in_cap(&self.cfg.limits);
        let (Body::Stream(io), Some(layer)) = (&mut st.body, st.layer.as_mut()) else { return };
        if st.read_ready && !st.eof {
            let got = loop {
                match layer.read_wire(io) {
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            match got {
                Ok(0) => {
                    st.eof = true;
                    st.read_ready = false;
                    // Whatever was decoded before the end still goes to the handler.
                    st.plain_pending = true;
                }
                Ok(n) => {
                    self.stats.bytes_in += n as u64;
                    st.last_active_ms = self.now_ms();
                    if let Err(e) = layer.process() {
                        // Let the layer's alert out before closing; best effort.
                        while layer.wants_write() {
                            if layer.write_wire(io).is_err() {
                                break;
                            }
                        }
                        st.fail(e);
                        return;
                    }
                    st.plain_pending = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => st.read_ready = false,
                Err(e) => {
                    st.fail(e);
                    return;
                }
            }
        }
        if st.plain_pending {
            let outcome = st.buf_in.read_from(&mut self.pool, cap, |buf| layer.read_plain(buf));
            match outcome {
                // Full: the rest waits in the layer; `consume` schedules another go.
                None => {}
                Some((Ok(0), _)) => {
                    st.plain_pending = false;
                    st.eof = true;
                    self.call(st, |h, es| h.on_read_closed(es));
                }
                Some((Ok(n), room)) => {
                    if n < room {
                        st.plain_pending = false;
                    }
                    self.call(st, |h, es| h.on_read(es));
                }
                Some((Err(e), _)) if e.kind() == ErrorKind::WouldBlock => {
                    st.plain_pending = false;
                    if st.eof {
                        st.closing = true;
                    }
                }
                // The stream ended without the layer's own end (a truncation): the peer
                // is gone either way.
                Some((Err(e), _)) if e.kind() == ErrorKind::UnexpectedEof => {
                    st.plain_pending = false;
                    st.closing = true;
                }
                Some((Err(e), _)) => st.fail(e),
            }
        }
        let full = st.buf_in.is_full(cap);
        if st.want_read && !full && ((st.read_ready && !st.eof) || st.plain_pending) {
            self.schedule(st);
        }
        st.buf_in.release_if_empty(&mut self.pool);
        if !st.read_ready && !st.plain_pending {
            st.buf_in.park(&mut self.pool);
        }
    }

    /// Writes through a layer: `buf_out` → layer → socket.
    fn write_layered(&mut self, st: &mut EsState) {
        let (Body::Stream(io), Some(layer)) = (&mut st.body, st.layer.as_mut()) else { return };
        loop {
            while st.write_ready && layer.wants_write() {
                match layer.write_wire(io) {
                    Ok(n) => {
                        self.stats.bytes_out += n as u64;
                        st.last_active_ms = self.now_ns / super::NS_PER_TICK;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => st.write_ready = false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        st.fail(e);
                        return;
                    }
                }
            }
            if !st.write_ready {
                return;
            }
            if st.buf_out.is_empty() {
                if st.closing && !st.layer_closed && !st.eof {
                    st.layer_closed = true;
                    layer.close();
                    continue;
                }
                return;
            }
            let (result, _) = st.buf_out.write_to(&mut self.pool, |iov| {
                let mut taken = 0;
                for slice in iov {
                    let n = layer.write_plain(slice)?;
                    taken += n;
                    if n < slice.len() {
                        break;
                    }
                }
                Ok(taken)
            });
            match result {
                Ok(0) if !layer.wants_write() => return,
                Ok(_) => {}
                Err(e) => {
                    st.fail(e);
                    return;
                }
            }
        }
    }

    fn write_out(&mut self, st: &mut EsState) {
        if st.layer.is_some() {
            return self.write_layered(st);
        }
        let Body::Stream(io) = &mut st.body else { return };
        while !st.buf_out.is_empty() && st.write_ready {
            let (result, offered) =
                st.buf_out.write_to(&mut self.pool, |iov| io.write_vectored(iov));
            match result {
                Ok(n) => {
                    self.stats.bytes_out += n as u64;
                    st.last_active_ms = self.now_ns / super::NS_PER_TICK;
                    if n < offered {
                        st.write_ready = false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => st.write_ready = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    st.fail(e);
                    return;
                }
            }
        }
    }

    fn flush_stream(&mut self, st: &mut EsState) {
        let low = st.low_water(&self.cfg.limits);
        // Two rounds: flush, let the handler refill once, flush that too. More would let one
        // bulk writer starve the rest of the turn; it is rescheduled instead.
        for _ in 0..2 {
            self.write_out(st);
            if st.close_now {
                return;
            }
            let wants = st.want_write || st.out_blocked;
            if !(wants && st.write_ready && !st.closing && st.buf_out.len() <= low) {
                break;
            }
            st.out_blocked = false;
            let before = st.buf_out.len();
            st.want_write = self.call(st, |h, es| h.on_write(es));
            if st.buf_out.len() == before {
                break;
            }
        }
        if st.out_pending && st.buf_out.is_empty() && !st.close_now {
            st.out_pending = false;
            self.call(st, |h, es| h.on_write_finished(es));
        }
        let layer_out = st.layer.as_ref().is_some_and(|l| l.wants_write())
            || (st.layer.is_some() && st.closing && !st.layer_closed && !st.eof);
        if st.write_ready
            && (!st.buf_out.is_empty()
                || layer_out
                || (st.want_write && !st.closing && st.buf_out.len() <= low))
        {
            self.schedule(st);
        }
    }

    /// Fails the esocket with its pending socket error (`SO_ERROR`), if it has one.
    pub(crate) fn take_socket_error(&mut self, st: &mut EsState) {
        let err = match &st.body {
            Body::Stream(StreamIo::Tcp(s)) => s.take_error(),
            Body::Stream(StreamIo::Unix(s)) => s.take_error(),
            _ => Ok(None),
        };
        match err {
            Ok(Some(e)) | Err(e) => st.fail(e),
            Ok(None) => {}
        }
    }

    /// Completes a non-blocking connect once epoll reports on it.
    pub(crate) fn finish_connect(&mut self, st: &mut EsState) {
        let Body::Stream(io) = &st.body else { return };
        let status = match io {
            StreamIo::Tcp(s) => s.take_error().and_then(|e| match e {
                Some(e) => Err(e),
                None => s.peer_addr().map(|_| ()),
            }),
            StreamIo::Unix(s) => s.take_error().and_then(|e| match e {
                Some(e) => Err(e),
                None => s.peer_addr().map(|_| ()),
            }),
            StreamIo::Pipe(_) => Ok(()),
        };
        match status {
            Ok(()) => {
                st.connecting = false;
                if let Some(key) = st.timer.take() {
                    self.timers.remove(key);
                }
                st.last_active_ms = self.now_ms();
                self.call(st, |h, es| h.on_connected(es));
            }
            // Spurious wake-up: still in progress.
            Err(e) if e.kind() == ErrorKind::NotConnected => {
                st.read_ready = false;
                st.write_ready = false;
            }
            Err(e) => st.fail(e),
        }
    }

    pub(crate) fn drive_udp(&mut self, st: &mut EsState) {
        if st.want_read && st.read_ready && !st.close_now && !st.closing {
            self.read_udp(st);
        }
        self.flush_udp(st);
        if st.want_write && st.write_ready && !st.close_now && !io::udp_queued(st) {
            st.want_write = self.call(st, |h, es| h.on_write(es));
            self.flush_udp(st);
            if st.want_write {
                self.schedule(st);
            }
        }
    }

    /// Reads batches (`recvmmsg`) and hands each to the handler, up to the read budget.
    fn read_udp(&mut self, st: &mut EsState) {
        let budget = self.cfg.limits.udp_read_budget;
        let slots = self.cfg.limits.udp_recv_batch;
        let mut batch = self.udp_batch.take().unwrap_or_else(|| RecvBatch::new(slots, RECV_SLOT));
        let mut count = 0;
        loop {
            if count >= budget {
                self.schedule(st);
                break;
            }
            let Body::Udp { sock, io, .. } = &mut st.body else { break };
            // A message holds one datagram or more: never ask for more than the budget left.
            let fd = std::os::fd::AsRawFd::as_raw_fd(sock);
            match io.recv(fd, &mut batch, budget - count) {
                Ok(messages) => {
                    let mut datagrams = batch.datagrams();
                    let n = datagrams.len();
                    // Dropped (truncated) messages count too, so the budget always shrinks.
                    count += n.max(messages);
                    if datagrams.is_empty() {
                        continue;
                    }
                    self.stats.datagrams_in += n as u64;
                    self.stats.bytes_in +=
                        datagrams.iter().map(|d| d.data.len() as u64).sum::<u64>();
                    st.last_active_ms = self.now_ms();
                    self.call(st, |h, es| h.on_datagrams(es, &mut datagrams));
                    if st.close_now || st.closing || !st.want_read {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    st.read_ready = false;
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // Errors on a datagram socket concern one datagram (an ICMP report,
                    // say); the socket itself is fine, and datagrams may be queued behind
                    // the error, so keep reading (within the budget).
                    count += 1;
                    tracing::debug!(worker = self.index(), error = %e, "udp receive error");
                }
            }
        }
        self.udp_batch = Some(batch);
    }

    fn flush_udp(&mut self, st: &mut EsState) {
        let before = st.body.udp_stats();
        let sent = io::udp_flush(st, self.shared.index);
        self.stats.bytes_out += sent as u64;
        self.count_udp(before, st.body.udp_stats());
    }

    /// Applies a write posted through a handle.
    pub(crate) fn handle_write(&mut self, st: &mut EsState, data: bytes::Bytes) {
        if !matches!(st.kind, EsocketKind::Tcp | EsocketKind::Unix) || st.closing || st.close_now {
            self.stats.dropped_dead += 1;
            return;
        }
        let limit = st.out_cap(&self.cfg.limits).saturating_add(self.cfg.limits.handle_write_slack);
        if st.buf_out.len().saturating_add(data.len()) > limit {
            self.stats.overflow_closed += 1;
            if let Some(suppressed) = OVERFLOW.check() {
                tracing::warn!(
                    worker = self.index(),
                    queued = st.buf_out.len(),
                    suppressed,
                    "closing esocket: output overflow"
                );
            }
            st.fail(ReactorError::OutputOverflow.into());
            return;
        }
        st.out_pending |= !data.is_empty();
        st.buf_out.push_shared(&mut self.pool, data);
    }

    /// Starts the flush deadline of a graceful close.
    pub(crate) fn arm_linger(&mut self, st: &mut EsState) {
        let linger = self.cfg.close_linger;
        let _ = self.arm(st, linger, TimerWhat::Linger);
    }

    /// Sets the handler's deadline; see [`Esocket::set_deadline`].
    pub(crate) fn set_deadline(
        &mut self,
        st: &mut EsState,
        after: std::time::Duration,
    ) -> Result<(), Error> {
        let at_ns = self.now_ns.saturating_add(after.as_nanos().min(u64::MAX as u128) as u64);
        let at_tick = super::ns_to_tick(at_ns);
        match st.deadline_timer {
            // The armed entry fires no later than the new deadline: it re-arms then.
            Some((_, armed)) if armed <= at_tick => {}
            _ => {
                if let Some((key, _)) = st.deadline_timer.take() {
                    self.timers.remove(key);
                }
                if self.timers.len() >= self.cfg.limits.max_timers {
                    return Err(ReactorError::TimersFull.into());
                }
                let key = self.timers.insert(at_tick, (st.id, TimerWhat::Deadline));
                st.deadline_timer = Some((key, at_tick));
            }
        }
        st.deadline_ns = Some(at_ns);
        Ok(())
    }

    /// A deadline entry fired: re-arm if the deadline moved later, else run `on_timeout`.
    pub(crate) fn fire_deadline(&mut self, st: &mut EsState, key: TimerKey) {
        if st.deadline_timer.is_some_and(|(k, _)| k == key) {
            st.deadline_timer = None;
        } else {
            return;
        }
        let Some(at_ns) = st.deadline_ns else { return };
        if st.close_now || st.failure.is_some() {
            return;
        }
        if at_ns > self.now_ns {
            let at_tick = super::ns_to_tick(at_ns);
            let key = self.timers.insert(at_tick, (st.id, TimerWhat::Deadline));
            st.deadline_timer = Some((key, at_tick));
            return;
        }
        st.deadline_ns = None;
        if !self.call(st, |h, es| h.on_timeout(es)) {
            st.fail(ReactorError::DeadlineTimeout.into());
        }
        self.drive(st);
    }

    /// Replaces the esocket's timer with one that fires after `delay`.
    pub(crate) fn arm(
        &mut self,
        st: &mut EsState,
        delay: std::time::Duration,
        what: TimerWhat,
    ) -> Result<(), Error> {
        if let Some(key) = st.timer.take() {
            self.timers.remove(key);
        }
        if self.timers.len() >= self.cfg.limits.max_timers {
            return Err(ReactorError::TimersFull.into());
        }
        let at_ns = self.now_ns.saturating_add(delay.as_nanos().min(u64::MAX as u128) as u64);
        st.timer = Some(self.timers.insert(super::ns_to_tick(at_ns), (st.id, what)));
        Ok(())
    }
}
