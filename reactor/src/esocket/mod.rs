//! Event sockets: what a worker owns, and the `&mut` view a callback gets of one.

mod handle;
mod handler;
pub(crate) mod io;
mod layer;

use std::io::{Error, ErrorKind, Result};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use bytes::Bytes;

pub use handle::{EsocketHandle, ExecFn, PostError};
pub(crate) use handler::Factory;
pub use handler::{Handler, HandlerFactory, PeerAddr};
pub(crate) use io::Body;
pub use layer::Layer;

use crate::buffer::{InBuf, OutBuf};
use crate::slots::SlotId;
use crate::timer::TimerKey;
use crate::udp::{UdpStats, UdpTransmit};
use crate::worker::WorkerCtx;

/// What an esocket is. Each kind gets the callbacks that make sense for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EsocketKind {
    /// A TCP connection, accepted or outgoing.
    Tcp,
    /// A Unix-domain stream connection.
    Unix,
    /// The read end of a pipe.
    Pipe,
    /// A UDP socket.
    Udp,
    /// A TCP or Unix listener.
    Listener,
    /// A typed queue whose items are delivered to a callback.
    Queue,
    /// A timer on the worker's timer wheel.
    Timer,
    /// A u64 counter with eventfd semantics.
    Event,
    /// Any other file descriptor epoll can watch.
    Raw,
}

impl EsocketKind {
    /// Number of kinds (the length of [`WorkerStats::esockets`](crate::WorkerStats)).
    pub const COUNT: usize = 9;

    /// Stable index of the kind, `0..COUNT`.
    pub fn index(self) -> usize {
        self as usize
    }

    /// True for kinds that carry a byte stream through `buf_in` / `buf_out`.
    pub fn is_stream(self) -> bool {
        matches!(self, EsocketKind::Tcp | EsocketKind::Unix | EsocketKind::Pipe)
    }
}

/// The state of one esocket, owned by its worker's slab.
///
/// Flags follow epoll's edge-triggered model: `read_ready` / `write_ready` remember that the
/// kernel reported readiness we have not used up yet (a read or write short of `WouldBlock`),
/// so pausing and resuming never needs an `epoll_ctl` call.
pub(crate) struct EsState {
    pub(crate) id: SlotId,
    pub(crate) kind: EsocketKind,
    pub(crate) body: Body,
    pub(crate) handler: Option<Box<dyn Handler>>,
    /// The handler, set aside after one of its callbacks panicked: it gets no more callbacks
    /// except `on_error` and `on_delete` when the esocket is removed.
    pub(crate) poisoned: Option<Box<dyn Handler>>,
    pub(crate) buf_in: InBuf,
    pub(crate) buf_out: OutBuf,
    /// This esocket's own `[buf_in_cap, buf_out_cap]`, when raised from the worker's.
    pub(crate) caps: Option<[u32; 2]>,
    pub(crate) want_read: bool,
    pub(crate) want_write: bool,
    pub(crate) read_ready: bool,
    pub(crate) write_ready: bool,
    /// In the worker's ready list already.
    pub(crate) queued: bool,
    pub(crate) connecting: bool,
    /// The peer closed its side (read returned 0).
    pub(crate) eof: bool,
    /// The kernel reported the peer's end of stream (EPOLLRDHUP/HUP); reads continue to EOF.
    pub(crate) read_closed: bool,
    /// A local write was refused for lack of room: call `on_write` at the low-water mark.
    pub(crate) out_blocked: bool,
    /// `buf_out` had bytes since the last `on_write_finished`.
    pub(crate) out_pending: bool,
    /// Close once output is flushed.
    pub(crate) closing: bool,
    /// Close at the end of the current dispatch.
    pub(crate) close_now: bool,
    /// The flush deadline of a graceful close is armed.
    pub(crate) lingering: bool,
    /// The error to report through `on_error` when it closes.
    pub(crate) failure: Option<Error>,
    /// Loop time (ms since the worker started) of the last byte moved.
    pub(crate) last_active_ms: u64,
    /// Connect deadline, close linger, or a timer esocket's next tick.
    pub(crate) timer: Option<TimerKey>,
    /// A transform between the socket and the buffers (TLS).
    pub(crate) layer: Option<Box<dyn Layer>>,
    /// The layer may hold decoded bytes that have not reached `buf_in` yet.
    pub(crate) plain_pending: bool,
    /// The layer's orderly end has been started.
    pub(crate) layer_closed: bool,
    /// The handler's deadline (loop ns), reported through `on_timeout`.
    pub(crate) deadline_ns: Option<u64>,
    /// The wheel entry for the deadline and the tick it fires at. It may fire before
    /// `deadline_ns` (a deadline pushed later is not re-armed until then); never after.
    pub(crate) deadline_timer: Option<(TimerKey, u64)>,
    /// This esocket's share of the reactor's [`BufferBudget`](crate::BufferBudget) as last
    /// settled.
    pub(crate) charged: usize,
    /// The output part of `charged`: what `buf_out` held when last settled.
    pub(crate) charged_out: usize,
}

impl EsState {
    /// The input cap of this esocket.
    pub(crate) fn in_cap(&self, limits: &crate::Limits) -> usize {
        self.caps.map_or(limits.buf_in_cap, |c| c[0] as usize)
    }

    /// The output cap of this esocket.
    pub(crate) fn out_cap(&self, limits: &crate::Limits) -> usize {
        self.caps.map_or(limits.buf_out_cap, |c| c[1] as usize)
    }

    /// The output cap writes see now: [`out_cap`](Self::out_cap), lowered (never below the
    /// low-water mark) to what the reactor's buffer budget has left.
    pub(crate) fn write_cap(&self, limits: &crate::Limits, budget: &crate::BufferBudget) -> usize {
        let cap = self.out_cap(limits);
        match budget.room() {
            None => cap,
            // Its output as last settled is already counted in the total: it may keep that
            // much and grow by what the budget has left (never by its own growth, or each
            // settle would raise its allowance).
            Some(room) => {
                cap.min(self.low_water(limits).max(self.charged_out.saturating_add(room)))
            }
        }
    }

    /// The bytes this esocket holds in its buffers, as the buffer budget counts them.
    pub(crate) fn buffer_bytes(&self) -> usize {
        self.buf_in.storage() + self.buf_out.len()
    }

    /// The output low-water mark: the worker's, or a quarter of a raised cap.
    pub(crate) fn low_water(&self, limits: &crate::Limits) -> usize {
        self.caps.map_or(limits.buf_out_low_water, |c| c[1] as usize / 4)
    }

    pub(crate) fn new(id: SlotId, kind: EsocketKind, body: Body, now_ms: u64) -> Self {
        EsState {
            id,
            kind,
            body,
            handler: None,
            poisoned: None,
            buf_in: InBuf::default(),
            buf_out: OutBuf::default(),
            caps: None,
            want_read: true,
            want_write: false,
            read_ready: false,
            write_ready: false,
            queued: false,
            connecting: false,
            eof: false,
            read_closed: false,
            out_blocked: false,
            out_pending: false,
            closing: false,
            close_now: false,
            lingering: false,
            failure: None,
            last_active_ms: now_ms,
            timer: None,
            layer: None,
            plain_pending: false,
            layer_closed: false,
            deadline_ns: None,
            deadline_timer: None,
            charged: 0,
            charged_out: 0,
        }
    }

    /// Records a failure; the esocket closes at the end of the dispatch.
    pub(crate) fn fail(&mut self, err: Error) {
        if self.failure.is_none() {
            self.failure = Some(err);
        }
        self.close_now = true;
    }

    /// Puts back a handler set aside after a panic, for its last calls.
    pub(crate) fn revive_handler(&mut self) {
        if self.handler.is_none() {
            self.handler = self.poisoned.take();
        }
    }

    /// True when this esocket should be removed at the end of the dispatch.
    pub(crate) fn is_done(&self) -> bool {
        self.close_now
            || (self.closing
                && self.buf_out.is_empty()
                && self.layer.as_ref().is_none_or(|l| !l.wants_write()))
    }
}

impl std::fmt::Debug for EsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EsState")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("buf_in", &self.buf_in.len())
            .field("buf_out", &self.buf_out.len())
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

/// `&mut` access to one esocket, inside a callback on its owning worker (DAP's `_unsafe`
/// functions). It cannot leave the worker thread: to reach an esocket from elsewhere, keep its
/// [`EsocketHandle`].
pub struct Esocket<'a> {
    pub(crate) st: &'a mut EsState,
    pub(crate) w: &'a mut WorkerCtx,
    /// Esockets belong to one thread; this keeps the type `!Send` and `!Sync`.
    _not_send: PhantomData<*mut ()>,
}

impl std::fmt::Debug for Esocket<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Esocket").field("worker", &self.w.index()).field("state", &self.st).finish()
    }
}

impl<'a> Esocket<'a> {
    pub(crate) fn new(st: &'a mut EsState, w: &'a mut WorkerCtx) -> Self {
        Esocket { st, w, _not_send: PhantomData }
    }

    /// A `Send + Sync + Copy` handle to this esocket, for use from any thread.
    pub fn handle(&self) -> EsocketHandle {
        self.w.handle_for(self.st.id)
    }

    /// What kind of esocket this is.
    pub fn kind(&self) -> EsocketKind {
        self.st.kind
    }

    /// The worker that owns this esocket: add esockets and timers, reach other esockets.
    pub fn worker(&mut self) -> &mut WorkerCtx {
        self.w
    }

    /// Bytes received and not consumed yet.
    pub fn buf_in(&self) -> &[u8] {
        self.st.buf_in.as_slice()
    }

    /// Bytes received and not consumed yet, writable: for decoders that decrypt or unmask in
    /// place instead of copying out first.
    pub fn buf_in_mut(&mut self) -> &mut [u8] {
        self.st.buf_in.as_mut_slice()
    }

    /// Drops the first `n` bytes of `buf_in` (DAP's `shrink_buf_in`). If reading had paused
    /// because `buf_in` was full, it resumes.
    pub fn consume(&mut self, n: usize) {
        self.st.buf_in.consume(n);
        if (self.st.read_ready || self.st.plain_pending) && self.st.want_read {
            self.w.schedule(self.st);
        }
    }

    /// Queues bytes for output, copying as many as fit under the cap.
    ///
    /// Returns how many were taken; they leave after the callback returns.
    ///
    /// # Errors
    /// `WouldBlock` when nothing fits (the esocket's `on_write` fires once output drains to
    /// the low-water mark); `Unsupported` on kinds without output; `NotConnected` once the
    /// esocket is closing.
    pub fn write(&mut self, data: &[u8]) -> Result<usize> {
        self.check_writable()?;
        if data.is_empty() {
            return Ok(0);
        }
        let cap = self.write_cap();
        let n = self.st.buf_out.push_copy(self.w.pool(), cap, data);
        if n < data.len() {
            self.blocked(cap);
        }
        if n == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        self.st.out_pending = true;
        Ok(n)
    }

    /// Moves as much of `buf_in` to `buf_out` as fits and returns how many bytes moved: the
    /// whole of an echo server, or one direction of a proxy, without an intermediate copy.
    ///
    /// # Errors
    /// As [`write`](Self::write); `WouldBlock` only when `buf_in` is not empty and nothing fit.
    pub fn copy_in_to_out(&mut self) -> Result<usize> {
        self.check_writable()?;
        let cap = self.write_cap();
        let pending = self.st.buf_in.len();
        if pending > 0 && pending <= cap && self.st.buf_out.is_empty() {
            // Move the input storage to output whole: no copy, and the pool hands the next
            // read a fresh vector.
            let (buf, start, end) = self.st.buf_in.take_storage();
            self.st.buf_out.push_moved(&mut self.w.pool, buf, start, end);
            self.st.out_pending = true;
            return Ok(pending);
        }
        let n = self.st.buf_out.push_copy(&mut self.w.pool, cap, self.st.buf_in.as_slice());
        self.st.buf_in.consume(n);
        if n < pending {
            self.blocked(cap);
        }
        if n > 0 {
            self.st.out_pending = true;
        } else if pending > 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Queues shared bytes without copying, all or nothing.
    ///
    /// # Errors
    /// Gives `data` back when it does not fit under the cap (then `on_write` fires at the
    /// low-water mark), when the kind has no output, or when the esocket is closing.
    pub fn write_bytes(&mut self, data: Bytes) -> std::result::Result<(), Bytes> {
        if self.check_writable().is_err() {
            return Err(data);
        }
        let cap = self.write_cap();
        if self.st.buf_out.len() + data.len() > cap {
            self.blocked(cap);
            return Err(data);
        }
        self.st.out_pending |= !data.is_empty();
        self.st.buf_out.push_shared(self.w.pool(), data);
        Ok(())
    }

    /// Builds output in place: `build` appends at most `max` bytes to the vector it is
    /// given, which may already hold queued output (it must only append). The storage is
    /// a pool buffer when `max` fits one, so a handler that frames or seals its own records
    /// (the dap stream) allocates nothing and copies nothing per record in steady state.
    /// Returns `build`'s result.
    ///
    /// # Errors
    /// `WouldBlock` when `max` bytes would not fit under the cap (then `on_write` fires at
    /// the low-water mark); otherwise as [`write`](Self::write).
    pub fn write_with<R>(
        &mut self,
        max: usize,
        build: impl FnOnce(&mut Vec<u8>) -> R,
    ) -> Result<R> {
        self.check_writable()?;
        let cap = self.write_cap();
        if self.st.buf_out.len() + max > cap {
            self.blocked(cap);
            return Err(ErrorKind::WouldBlock.into());
        }
        let (r, added) = self.st.buf_out.push_with(&mut self.w.pool, max, build);
        self.st.out_pending |= added > 0;
        Ok(r)
    }

    /// The output cap for this write: the esocket's own, or less when the reactor's buffer
    /// budget is short.
    fn write_cap(&self) -> usize {
        self.st.write_cap(&self.w.cfg.limits, &self.w.cfg.budget)
    }

    /// A write did not fit under `cap`: `on_write` fires as output drains.
    fn blocked(&mut self, cap: usize) {
        self.st.out_blocked = true;
        if cap < self.st.out_cap(&self.w.cfg.limits) {
            self.w.cfg.budget.note_write_refusal();
        }
    }

    fn check_writable(&self) -> Result<()> {
        if !self.st.kind.is_stream() || self.st.kind == EsocketKind::Pipe {
            return Err(Error::new(ErrorKind::Unsupported, "this esocket kind has no output"));
        }
        if self.st.closing || self.st.close_now {
            return Err(Error::new(ErrorKind::NotConnected, "esocket is closing"));
        }
        Ok(())
    }

    /// Bytes queued in `buf_out`.
    pub fn out_len(&self) -> usize {
        self.st.buf_out.len()
    }

    /// The most `buf_in` holds before reading pauses (the worker's cap, or this esocket's
    /// own, see [`set_buffer_caps`](Self::set_buffer_caps)). A `buf_in` shorter than this
    /// after a read means the read took everything the socket had.
    pub fn in_cap(&self) -> usize {
        self.st.in_cap(self.w.limits())
    }

    /// Room left in `buf_out` before writes return `WouldBlock` (less than the cap allows
    /// when the reactor's buffer budget is short).
    pub fn out_room(&self) -> usize {
        self.write_cap().saturating_sub(self.st.buf_out.len())
    }

    /// Raises (or restores) this esocket's buffer caps: at most `buf_in` bytes of unread
    /// input and `buf_out` of queued output (write callbacks then fire at a quarter of
    /// `buf_out`). Each is clamped between the worker's own cap and
    /// [`Limits::buf_cap_max`](crate::Limits::buf_cap_max). For bulk transports: a larger
    /// input buffer takes more per `read` and per loop turn, a larger output buffer more per
    /// `writev`. An idle esocket still holds no buffer memory.
    pub fn set_buffer_caps(&mut self, buf_in: usize, buf_out: usize) {
        let l = self.w.limits();
        let max = l.buf_cap_max.min(u32::MAX as usize);
        let i = buf_in.clamp(l.buf_in_cap.min(max), max.max(l.buf_in_cap));
        let o = buf_out.clamp(l.buf_out_cap.min(max), max.max(l.buf_out_cap));
        self.st.caps =
            if i == l.buf_in_cap && o == l.buf_out_cap { None } else { Some([i as u32, o as u32]) };
    }

    /// Pauses (`false`) or resumes (`true`) reading. While paused, the kernel's receive
    /// buffer fills and TCP flow control slows the peer; nothing is lost.
    pub fn set_readable(&mut self, on: bool) {
        self.st.want_read = on;
        if on && self.st.read_ready {
            self.w.schedule(self.st);
        }
    }

    /// Asks for (`true`) or drops (`false`) `on_write` calls whenever output can be taken.
    pub fn set_writable(&mut self, on: bool) {
        self.st.want_write = on;
        if on {
            self.w.schedule(self.st);
        }
    }

    /// Whether reading is on.
    pub fn is_readable(&self) -> bool {
        self.st.want_read
    }

    /// Whether write interest is on.
    pub fn is_writable(&self) -> bool {
        self.st.want_write
    }

    /// Sets (or with `None` clears) a deadline `after` from now; when it passes, the handler's
    /// [`on_timeout`](Handler::on_timeout) runs. One deadline per esocket: a new one replaces
    /// the old. Cheap enough to call per request: pushing a deadline later touches no timer.
    ///
    /// # Errors
    /// [`ReactorError::TimersFull`](crate::ReactorError::TimersFull) when the worker's timer
    /// table is at its limit; the esocket keeps its previous deadline.
    pub fn set_deadline(&mut self, after: Option<std::time::Duration>) -> Result<()> {
        match after {
            None => {
                self.st.deadline_ns = None;
                Ok(())
            }
            Some(d) => self.w.set_deadline(self.st, d),
        }
    }

    /// Installs a layer (TLS) between the socket and the buffers: from now on `buf_in` holds
    /// decoded bytes and writes are encoded. Install it in `on_new` (or `on_connected`),
    /// before the first byte is read.
    ///
    /// # Errors
    /// `Unsupported` on kinds other than TCP and Unix streams; `InvalidInput` when a layer
    /// is installed already or bytes have been read.
    pub fn set_layer(&mut self, layer: Box<dyn Layer>) -> Result<()> {
        if !matches!(self.st.kind, EsocketKind::Tcp | EsocketKind::Unix) {
            return Err(Error::new(ErrorKind::Unsupported, "layers go on stream sockets"));
        }
        if self.st.layer.is_some() || !self.st.buf_in.is_empty() {
            return Err(Error::new(ErrorKind::InvalidInput, "install a layer before reading"));
        }
        self.st.layer = Some(layer);
        // The layer may have bytes to send at once (a TLS client's hello).
        self.w.schedule(self.st);
        Ok(())
    }

    /// Whether a layer is installed.
    pub fn has_layer(&self) -> bool {
        self.st.layer.is_some()
    }

    /// Runs `f` with this esocket's handler, if it is of type `H` and not already running a
    /// callback higher up the stack (then `None`). This is how work finished elsewhere (an
    /// [`EsocketHandle::exec`] closure, a proc thread's result) reaches the handler's state.
    pub fn with_handler<H: Handler, R>(
        &mut self,
        f: impl FnOnce(&mut H, &mut Esocket<'_>) -> R,
    ) -> Option<R> {
        let mut h = self.st.handler.take()?;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            find_handler::<H>(&mut *h).map(|h| f(h, &mut Esocket::new(self.st, self.w)))
        }));
        // A callback inside `f` may not install another handler, so this slot is still empty.
        // It is refilled even if `f` panicked, so the handler hears how its esocket ends.
        self.st.handler = Some(h);
        r.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Closes gracefully: reading stops, queued output is flushed (up to the reactor's close
    /// linger), then the esocket is removed. A TCP socket is then shut down for writing
    /// and its unread input (up to 1 MiB) read and dropped before its descriptor closes,
    /// so that the close is a FIN, not a reset that would destroy what the kernel still
    /// has to send (this, whichever way the esocket ends).
    pub fn close(&mut self) {
        self.st.closing = true;
    }

    /// Closes at the end of this callback, discarding queued output.
    pub fn close_now(&mut self) {
        self.st.close_now = true;
    }

    /// True once `close` or `close_now` was called (the default
    /// [`Handler::on_read_closed`] calls `close` when the peer finishes its side).
    pub fn is_closing(&self) -> bool {
        self.st.closing || self.st.close_now
    }

    /// True when the peer has closed its side of the stream (read returned end of file).
    pub fn peer_closed(&self) -> bool {
        self.st.eof
    }

    /// Sends a datagram from a UDP esocket. If the socket cannot take it now, it is queued
    /// (bounded by [`Limits::udp_out_queue`](crate::Limits)).
    ///
    /// # Errors
    /// `WouldBlock` when the queue is full; `Unsupported` on other kinds; the socket's error
    /// otherwise.
    pub fn send_to(&mut self, data: &[u8], to: SocketAddr) -> Result<usize> {
        self.send_batch(&UdpTransmit::new(to, data))?;
        Ok(data.len())
    }

    /// Sends a batch of datagrams (or one) from a UDP esocket: with GSO, one system call for
    /// up to [`Limits::udp_gso_segments`](crate::Limits) segments; where the kernel refuses
    /// GSO, one message per datagram (counted in [`UdpStats::gso_fallbacks`]). What the
    /// socket cannot take now is queued, within
    /// [`Limits::udp_out_queue`](crate::Limits) datagrams (an empty queue takes any batch
    /// whole).
    ///
    /// # Errors
    /// `WouldBlock` when the queue has no room for the batch (nothing of it was sent);
    /// `Unsupported` on other kinds; the socket's error otherwise (`EMSGSIZE` for a datagram
    /// larger than the path allows: don't-fragment is set).
    pub fn send_batch(&mut self, transmit: &UdpTransmit<'_>) -> Result<()> {
        let limit = self.w.limits().udp_out_queue;
        let before = self.st.body.udp_stats();
        let sent = io::udp_send(self.st, transmit, limit);
        self.w.count_udp(before, self.st.body.udp_stats());
        self.w.count_out(sent?);
        Ok(())
    }

    /// A UDP esocket's counters and offload state; `None` on other kinds.
    pub fn udp_stats(&self) -> Option<UdpStats> {
        self.st.body.udp_stats()
    }

    /// The remote address of a TCP or connected UDP esocket.
    ///
    /// # Errors
    /// `Unsupported` on other kinds; the socket's error (e.g. `NotConnected`).
    pub fn peer_addr(&self) -> Result<SocketAddr> {
        self.st.body.peer_addr()
    }

    /// The local address of a TCP, UDP or listener esocket.
    ///
    /// # Errors
    /// `Unsupported` on other kinds; the socket's error.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.st.body.local_addr()
    }

    /// Sets the kernel's receive buffer of a TCP esocket (`SO_RCVBUF`; the kernel doubles
    /// it, and stops autotuning it). A handler that stops reading a peer for a while (a rate
    /// limit) shrinks it, so that the peer's window closes after a little and a flood stops
    /// costing the kernel work, and raises it again after.
    ///
    /// # Errors
    /// `Unsupported` on other kinds; the kernel's refusal.
    pub fn set_recv_buffer(&mut self, bytes: usize) -> Result<()> {
        match &self.st.body {
            Body::Stream(io::StreamIo::Tcp(s)) => {
                socket2::SockRef::from(s).set_recv_buffer_size(bytes)
            }
            _ => Err(Error::new(ErrorKind::Unsupported, "not a TCP esocket")),
        }
    }

    /// The underlying file descriptor, for options the reactor does not wrap. Do not close
    /// it or change its blocking mode.
    pub fn raw_fd(&self) -> Option<RawFd> {
        self.st.body.as_raw_fd()
    }
}

impl AsRawFd for Esocket<'_> {
    /// Returns -1 for kinds without a descriptor of their own (timers).
    fn as_raw_fd(&self) -> RawFd {
        self.raw_fd().unwrap_or(-1)
    }
}

/// `h` as an `H`, or the handler of that type it wraps ([`Handler::wrapped`]), however deep.
fn find_handler<H: Handler>(h: &mut dyn Handler) -> Option<&mut H> {
    if (&*h as &dyn std::any::Any).is::<H>() {
        return (h as &mut dyn std::any::Any).downcast_mut::<H>();
    }
    h.wrapped().and_then(find_handler::<H>)
}
