//! The event loop: poll, dispatch events, drain the inbox, run ready esockets and timers,
//! sweep idle connections, and stop gracefully.

use std::io::ErrorKind;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::{Events, Poll, Token};

use super::{Msg, NS_PER_TICK, TimerWhat, WorkerCtx};
use crate::budget::PARKED_FREE;
use crate::error::ReactorError;
use crate::esocket::{Body, EsState, Esocket, EsocketKind};
use crate::log_throttle::LogThrottle;
use crate::slots::SlotId;

/// At most 5 budget-closed lines per 10 s; the count is in `WorkerStats::budget_closed`.
static BUDGET_CLOSED: LogThrottle = LogThrottle::new(5, Duration::from_secs(10));

/// The waker's token; never a valid esocket token (index `u32::MAX` is never allocated).
pub(crate) const WAKER_TOKEN: Token = Token(usize::MAX);
/// Inbox messages handled per turn before the loop polls again.
const INBOX_BUDGET: usize = 1024;
/// Queue items delivered per queue per turn.
pub(crate) const QUEUE_BUDGET: usize = 1024;

/// A hook run on each worker thread before its loop starts.
pub(crate) type StartHook = Arc<dyn Fn(&mut WorkerCtx) + Send + Sync>;

/// Converts loop time to a wheel tick, rounding up so a timer never fires early.
pub(crate) fn ns_to_tick(ns: u64) -> u64 {
    ns.div_ceil(NS_PER_TICK)
}

/// The next ideal tick of a periodic timer: the previous ideal tick plus the period, never
/// "now plus the period", so lateness in one tick does not shift the ones after it.
pub(crate) fn next_periodic_ns(prev_ns: u64, period_ns: u64) -> u64 {
    prev_ns.saturating_add(period_ns)
}

impl WorkerCtx {
    fn set_now(&mut self, now: Instant) {
        self.now = now;
        self.now_ns = now.saturating_duration_since(self.started).as_nanos() as u64;
    }

    /// The worker thread's body.
    pub(crate) fn run(mut self, mut poll: Poll, rx: Receiver<Msg>, on_start: Option<StartHook>) {
        let mut events = Events::with_capacity(self.cfg.limits.events_per_turn.max(16));
        self.set_now(Instant::now());
        if let Some(hook) = on_start
            && panic::catch_unwind(AssertUnwindSafe(|| hook(&mut self))).is_err()
        {
            self.stats.handler_panics += 1;
            tracing::error!(worker = self.index(), "worker start hook panicked");
        }
        let mut inbox_more = false;
        let mut turn_start = Instant::now();
        loop {
            let idle_from = Instant::now();
            self.stats.busy_ns += idle_from.saturating_duration_since(turn_start).as_nanos() as u64;
            self.publish(&rx);
            let timeout = self.poll_timeout(idle_from, inbox_more);
            if let Err(e) = poll.poll(&mut events, timeout)
                && e.kind() != ErrorKind::Interrupted
            {
                tracing::error!(worker = self.index(), error = %e, "poll failed; worker stops");
                break;
            }
            turn_start = Instant::now();
            self.set_now(turn_start);
            self.stats.loop_turns += 1;
            for event in events.iter() {
                if event.token() != WAKER_TOKEN {
                    self.stats.events += 1;
                    self.dispatch(event);
                }
            }
            inbox_more = self.drain_inbox(&rx);
            self.run_ready();
            self.run_timers();
            self.maybe_sweep();
            if let Some(deadline) = self.stopping
                && (self.slots.len() == 0 || self.now >= deadline)
            {
                break;
            }
        }
        self.shutdown(&rx);
    }

    fn publish(&mut self, rx: &Receiver<Msg>) {
        self.stats.inbox_depth = rx.len() as u64;
        self.shared.stats.publish(&self.stats);
        self.publish_conns();
    }

    fn poll_timeout(&self, now: Instant, inbox_more: bool) -> Option<Duration> {
        if inbox_more || !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut until_ns = self.timers.next_deadline().map(|tick| tick.saturating_mul(NS_PER_TICK));
        if self.cfg.idle_timeout.is_some() {
            until_ns = Some(until_ns.map_or(self.next_sweep_ns, |t| t.min(self.next_sweep_ns)));
        }
        if let Some(deadline) = self.stopping {
            let d = deadline.saturating_duration_since(self.started).as_nanos() as u64;
            until_ns = Some(until_ns.map_or(d, |t| t.min(d)));
        }
        let now_ns = now.saturating_duration_since(self.started).as_nanos() as u64;
        until_ns.map(|t| Duration::from_nanos(t.saturating_sub(now_ns)))
    }

    fn dispatch(&mut self, event: &mio::event::Event) {
        let id = SlotId::from_token(event.token());
        // A stale token (the esocket closed earlier this turn) finds nothing.
        let Some(mut st) = self.slots.take(id) else { return };
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        let writable = event.is_writable() || event.is_write_closed() || event.is_error();
        st.read_ready |= readable;
        st.read_closed |= event.is_read_closed();
        st.write_ready |= writable;
        match st.kind {
            EsocketKind::Tcp | EsocketKind::Unix | EsocketKind::Pipe => {
                if st.connecting {
                    self.finish_connect(&mut st);
                } else if event.is_error() {
                    // Report a socket error even while reading is paused and nothing is
                    // queued to write, which would otherwise never touch the socket.
                    self.take_socket_error(&mut st);
                }
                self.drive_stream(&mut st);
            }
            EsocketKind::Udp => self.drive_udp(&mut st),
            EsocketKind::Listener => self.accept(&mut st),
            EsocketKind::Event => self.fire_event(&mut st),
            EsocketKind::Queue => self.drain_queue(&mut st, QUEUE_BUDGET),
            EsocketKind::Raw => self.fire_raw(&mut st, readable, writable),
            EsocketKind::Timer => {}
        }
        self.finish(st);
    }

    /// Handles inbox messages up to the budget; returns whether more are waiting.
    fn drain_inbox(&mut self, rx: &Receiver<Msg>) -> bool {
        // Clear first: a message posted from here on wakes the poller again.
        self.shared.notified.swap(false, std::sync::atomic::Ordering::AcqRel);
        for _ in 0..INBOX_BUDGET {
            match rx.try_recv() {
                Ok(msg) => self.handle_msg(msg),
                Err(_) => return false,
            }
        }
        !rx.is_empty()
    }

    fn handle_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Write(id, data) => self.on_esocket(id, |w, st| w.handle_write(st, data)),
            Msg::SendTo(id, data, to) => self.on_esocket(id, |w, st| {
                let limit = w.cfg.limits.udp_out_queue;
                let before = st.body.udp_stats();
                let t = crate::UdpTransmit::new(to, &data);
                let sent = crate::esocket::io::udp_send(st, &t, limit);
                w.count_udp(before, st.body.udp_stats());
                match sent {
                    Ok(n) => w.stats.bytes_out += n as u64,
                    Err(e) => {
                        tracing::debug!(worker = w.index(), error = %e, "datagram from a handle dropped");
                        w.stats.dropped_dead += 1;
                    }
                }
            }),
            Msg::SetReadable(id, on) => self.on_esocket(id, |w, st| {
                st.want_read = on;
                if on && st.read_ready {
                    w.schedule(st);
                }
            }),
            Msg::SetWritable(id, on) => self.on_esocket(id, |_, st| st.want_write = on),
            Msg::Close(id) => self.on_esocket(id, |_, st| st.closing = true),
            Msg::Exec(id, f) => self.on_esocket(id, |w, st| {
                if panic::catch_unwind(AssertUnwindSafe(|| f(&mut Esocket::new(st, w)))).is_err() {
                    w.note_panic(st);
                }
            }),
            Msg::Run(f) => {
                if panic::catch_unwind(AssertUnwindSafe(|| f(self))).is_err() {
                    self.stats.handler_panics += 1;
                    tracing::error!(worker = self.index(), "worker closure panicked");
                }
            }
            Msg::Adopt(io, peer, factory) => self.adopt(io, peer, &factory),
            Msg::Stop(deadline) => self.begin_stop(deadline),
        }
    }

    fn on_esocket(&mut self, id: SlotId, f: impl FnOnce(&mut Self, &mut EsState)) {
        match self.slots.take(id) {
            Some(mut st) => {
                f(self, &mut st);
                self.drive(&mut st);
                self.finish(st);
            }
            None => self.stats.dropped_dead += 1,
        }
    }

    fn run_ready(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        // Esockets scheduled while these run wait for the next turn.
        let mut list = std::mem::take(&mut self.ready);
        for id in list.drain(..) {
            if let Some(mut st) = self.slots.take(id) {
                st.queued = false;
                self.drive(&mut st);
                self.finish(st);
            }
        }
        if self.ready.is_empty() {
            self.ready = list;
        }
    }

    fn run_timers(&mut self) {
        let now_tick = self.now_ns / NS_PER_TICK;
        while let Some((key, _deadline, (id, what))) = self.timers.poll(now_tick) {
            let Some(mut st) = self.slots.take(id) else { continue };
            if st.timer == Some(key) {
                st.timer = None;
            }
            match what {
                TimerWhat::Tick => self.fire_timer(&mut st),
                TimerWhat::Connect => {
                    if st.connecting {
                        st.fail(ReactorError::ConnectTimeout.into());
                    }
                }
                TimerWhat::Linger => {
                    tracing::debug!(
                        worker = self.index(),
                        "close linger passed; discarding unsent output"
                    );
                    st.close_now = true;
                }
                TimerWhat::AcceptRetry => self.accept(&mut st),
                TimerWhat::Deadline => self.fire_deadline(&mut st, key),
            }
            self.finish(st);
        }
    }

    fn fire_timer(&mut self, st: &mut EsState) {
        let Body::Timer { cb, .. } = &mut st.body else { return };
        let Some(mut f) = cb.take() else { return };
        self.stats.timers_fired += 1;
        let again = match panic::catch_unwind(AssertUnwindSafe(|| f(&mut Esocket::new(st, self)))) {
            Ok(again) => again,
            Err(_) => {
                self.note_panic(st);
                false
            }
        };
        let Body::Timer { cb, period_ns, next_ns } = &mut st.body else { return };
        *cb = Some(f);
        if again && *period_ns > 0 && !st.close_now && !st.closing {
            *next_ns = next_periodic_ns(*next_ns, *period_ns);
            let tick = ns_to_tick(*next_ns);
            st.timer = Some(self.timers.insert(tick, (st.id, TimerWhat::Tick)));
        } else {
            st.close_now = true;
        }
    }

    fn fire_event(&mut self, st: &mut EsState) {
        let Body::Event { ev, cb } = &mut st.body else { return };
        let value = match ev.take() {
            Ok(0) => return,
            Ok(v) => v,
            Err(e) => return st.fail(e),
        };
        let Some(mut f) = cb.take() else { return };
        if panic::catch_unwind(AssertUnwindSafe(|| f(&mut Esocket::new(st, self), value))).is_err()
        {
            self.note_panic(st);
        }
        if let Body::Event { cb, .. } = &mut st.body {
            *cb = Some(f);
        }
    }

    pub(crate) fn drain_queue(&mut self, st: &mut EsState, budget: usize) {
        let Body::Queue { ev, drain } = &mut st.body else { return };
        let _ = ev.take();
        let Some(mut d) = drain.take() else { return };
        let more = match panic::catch_unwind(AssertUnwindSafe(|| {
            d.drain(&mut Esocket::new(st, self), budget)
        })) {
            Ok(more) => more,
            Err(_) => {
                self.note_panic(st);
                false
            }
        };
        if let Body::Queue { drain, .. } = &mut st.body {
            *drain = Some(d);
        }
        if more {
            self.schedule(st);
        }
    }

    fn fire_raw(&mut self, st: &mut EsState, readable: bool, writable: bool) {
        if readable && st.want_read {
            self.call(st, |h, es| h.on_read(es));
        }
        let wants_write = matches!(&st.body, Body::Raw { interest, .. } if interest.is_writable());
        if writable && wants_write && !st.close_now && !st.closing {
            self.call(st, |h, es| h.on_write(es));
        }
    }

    fn maybe_sweep(&mut self) {
        let Some(idle) = self.cfg.idle_timeout else { return };
        if self.now_ns < self.next_sweep_ns {
            return;
        }
        let interval = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        self.next_sweep_ns = self.now_ns + interval.as_nanos() as u64;
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let now_ms = self.now_ms();
        let mut expired = Vec::new();
        for (id, st) in self.slots.iter_mut() {
            // Connections only: a quiet pipe is a signalling channel, not an idle peer.
            let connection = matches!(st.kind, EsocketKind::Tcp | EsocketKind::Unix);
            if connection && now_ms.saturating_sub(st.last_active_ms) >= idle_ms {
                expired.push(id);
            }
        }
        for id in expired {
            if let Some(mut st) = self.slots.take(id) {
                self.stats.idle_closed += 1;
                st.fail(ReactorError::IdleTimeout.into());
                self.destroy(st);
            }
        }
    }

    /// Puts an esocket back after a dispatch, or removes it if it is done.
    pub(crate) fn finish(&mut self, mut st: Box<EsState>) {
        self.settle_budget(&mut st);
        if st.is_done() {
            self.destroy(st);
            return;
        }
        if st.closing && !st.connecting && !st.lingering {
            st.lingering = true;
            self.arm_linger(&mut st);
        }
        let id = st.id;
        self.slots.put_back(id, st);
    }

    /// Brings this esocket's share of the buffer budget up to date; past the budget, an
    /// esocket holding parked partial input beyond [`PARKED_FREE`] is closed (its peer is
    /// using the node as storage).
    fn settle_budget(&mut self, st: &mut EsState) {
        let held = st.buffer_bytes();
        if held != st.charged {
            self.cfg.budget.settle(st.charged, held);
            st.charged = held;
        }
        st.charged_out = st.buf_out.len();
        if st.buf_in.is_parked()
            && st.buf_in.len() > PARKED_FREE
            && !st.close_now
            && self.cfg.budget.is_over()
        {
            self.cfg.budget.note_closed();
            self.stats.budget_closed += 1;
            if let Some(suppressed) = BUDGET_CLOSED.check() {
                tracing::warn!(
                    worker = self.index(),
                    held = st.buf_in.len(),
                    suppressed,
                    "buffer budget exhausted: closing a connection that holds partial input"
                );
            }
            st.fail(ReactorError::BufferBudget.into());
        }
    }

    /// Removes an esocket: `on_error` (if it failed), `on_delete`, then the fd closes. A
    /// handler whose callback panicked still gets both (even if `on_error` panics too).
    pub(crate) fn destroy(&mut self, mut st: Box<EsState>) {
        if let Some(err) = st.failure.take() {
            st.revive_handler();
            self.call(&mut st, |h, es| h.on_error(es, &err));
        }
        st.revive_handler();
        self.call(&mut st, |h, es| h.on_delete(es));
        if let Some(key) = st.timer.take() {
            self.timers.remove(key);
        }
        if let Some((key, _)) = st.deadline_timer.take() {
            self.timers.remove(key);
        }
        if let Body::Stream(io) = &mut st.body {
            io.finish();
        }
        st.body.deregister(&self.registry);
        st.buf_out.clear(&mut self.pool);
        st.buf_in.consume(usize::MAX);
        st.buf_in.release_if_empty(&mut self.pool);
        self.cfg.budget.settle(std::mem::take(&mut st.charged), 0);
        if let Body::Queue { drain: Some(d), .. } = &mut st.body {
            // Items accepted by `send` that will never be delivered: counted, never silent.
            let lost = d.discard();
            if lost > 0 {
                self.stats.dropped_dead += lost;
                tracing::warn!(worker = self.index(), lost, "queue closed with items undelivered");
            }
        }
        self.slots.remove(st.id);
        self.shared.full.store(false, std::sync::atomic::Ordering::Relaxed);
        let count = &mut self.stats.esockets[st.kind.index()];
        *count = count.saturating_sub(1);
        if !self.paused_listeners.is_empty() {
            let paused = std::mem::take(&mut self.paused_listeners);
            for id in paused {
                if let Some(l) = self.slots.get_mut(id)
                    && !l.queued
                {
                    l.queued = true;
                    self.ready.push(id);
                }
            }
        }
    }

    /// Graceful stop: listeners close now, streams flush then close, queues deliver what
    /// they hold, everything else closes now.
    pub(crate) fn begin_stop(&mut self, deadline: Instant) {
        if self.stopping.is_some_and(|d| d <= deadline) {
            return;
        }
        self.stopping = Some(deadline);
        for id in self.slots.ids() {
            let Some(mut st) = self.slots.take(id) else { continue };
            match st.kind {
                k if k.is_stream() => st.closing = true,
                EsocketKind::Queue => {
                    // Deliver what was queued when the stop began; a callback that keeps
                    // feeding its own queue cannot hold the stop up.
                    let queued = match &st.body {
                        Body::Queue { drain: Some(d), .. } => d.pending(),
                        _ => 0,
                    };
                    self.drain_queue(&mut st, queued);
                    st.close_now = true;
                }
                _ => st.close_now = true,
            }
            self.drive(&mut st);
            self.finish(st);
        }
    }

    fn shutdown(&mut self, rx: &Receiver<Msg>) {
        if self.stopping.is_none() {
            self.stopping = Some(self.now);
        }
        let (mut cut, mut unsent) = (0usize, 0usize);
        for id in self.slots.ids() {
            if let Some(mut st) = self.slots.take(id) {
                if !st.buf_out.is_empty() {
                    cut += 1;
                    unsent += st.buf_out.len();
                }
                st.close_now = true;
                self.destroy(st);
            }
        }
        if cut > 0 {
            // What the kernel had taken still goes (the close is a FIN, not a reset).
            tracing::warn!(
                worker = self.index(),
                esockets = cut,
                unsent_bytes = unsent,
                "stop deadline passed; output discarded unsent"
            );
        }
        // Detach first: from here on handles get `Gone` instead of queueing into a dead inbox.
        self.shared.slot.release();
        let mut dropped = 0u64;
        while let Ok(msg) = rx.try_recv() {
            // Sockets handed over in the last moments are closed with the worker.
            dropped += 1;
            drop(msg);
        }
        if dropped > 0 {
            tracing::debug!(worker = self.index(), dropped, "messages dropped at stop");
            self.stats.dropped_dead += dropped;
        }
        self.stats.esockets = Default::default();
        self.shared.stats.publish(&self.stats);
        self.shared.conns.store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timer::TimerWheel;

    /// A periodic 10 ms timer whose every firing is late by up to 7 ms (a loaded machine)
    /// still has its 100th tick due at exactly 1 s: lateness does not accumulate.
    #[test]
    fn periodic_timers_do_not_drift_on_a_virtual_clock() {
        let mut wheel = TimerWheel::new();
        let period = 10 * NS_PER_TICK;
        let mut next = period;
        wheel.insert(ns_to_tick(next), ());
        let mut lateness = 0u64;
        let mut fired = Vec::new();
        let mut now_ns = 0u64;
        while fired.len() < 100 {
            lateness = (lateness * 7 + 3) % 8; // 0..=7 ms, deterministic
            now_ns = (next + lateness * NS_PER_TICK).max(now_ns);
            let (_, deadline, ()) = wheel.poll(now_ns / NS_PER_TICK).expect("due");
            fired.push(deadline);
            next = next_periodic_ns(next, period);
            wheel.insert(ns_to_tick(next), ());
        }
        assert_eq!(fired[99], 1000, "the 100th tick is due at 1000 ms");
        assert!(fired.windows(2).all(|w| w[1] - w[0] == 10));
    }

    #[test]
    fn ticks_round_up() {
        assert_eq!(ns_to_tick(0), 0);
        assert_eq!(ns_to_tick(1), 1);
        assert_eq!(ns_to_tick(NS_PER_TICK), 1);
        assert_eq!(ns_to_tick(NS_PER_TICK + 1), 2);
    }
}
