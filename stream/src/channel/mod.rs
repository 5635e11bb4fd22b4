//! Channels: DAP's `ch_proc_add(id, handler)` and what a handler sees.
//!
//! A channel is one logical, two-way message flow of a session, named by one printable ASCII
//! byte (`'E'` for echo). The application registers a [`ChannelHandler`] factory per id in
//! [`ChannelProcs`]; each session that asks for that id gets its own handler, called on the
//! session's worker: [`on_new`](ChannelHandler::on_new) when the stream attaches,
//! [`packet_in`](ChannelHandler::packet_in) for each whole message (fragments reassembled),
//! [`packet_out`](ChannelHandler::packet_out) when there is room to write again, and
//! [`on_delete`](ChannelHandler::on_delete) when the session ends.
//!
//! Writes: [`Channel::write`] on the worker, or [`ChannelHandle::write`] from any thread.
//! Both are bounded: a full channel answers [`WriteError::WouldBlock`] (or
//! [`HandleWriteError::Full`]) instead of growing, and `packet_out` fires once the peer has
//! granted credit and the queue has drained. Reads are flow-controlled the same way: a handler
//! that calls [`Channel::set_ready_to_read`]`(false)` stops receiving, its channel stops
//! granting credit, and the sender blocks; other channels keep flowing.

mod handle;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;

pub(crate) use handle::ChanShared;
pub use handle::{ChannelHandle, HandleWriteError};

use crate::codec::frame::valid_channel_id;
use crate::mux::ChanState;

/// One whole message received on a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The application's message type (DAP's packet type byte).
    pub ty: u8,
    /// The bytes: a [`Bytes`] that owns the reassembled message (no copy to keep it,
    /// clone it or hand it to [`Channel::write`] or a [`ChannelHandle`]).
    pub data: Bytes,
}

/// Why a local write was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The channel's send queue is full: wait for [`ChannelHandler::packet_out`].
    #[error("the channel's send queue is full")]
    WouldBlock,
    /// The message is over the session's message limit.
    #[error("message over the size limit")]
    TooLarge,
    /// The session is closing.
    #[error("the session is closed")]
    Closed,
}

/// A channel's callbacks, on the session's worker. Only
/// [`packet_in`](Self::packet_in) is required.
pub trait ChannelHandler: 'static {
    /// The stream is attached and the channel can be written.
    fn on_new(&mut self, ch: &mut Channel<'_>) {
        let _ = ch;
    }

    /// A whole message arrived.
    fn packet_in(&mut self, ch: &mut Channel<'_>, msg: Message);

    /// There is room to write: after a write was refused with `WouldBlock`, or whenever the
    /// queue is below half full while [`Channel::set_ready_to_write`] is on.
    fn packet_out(&mut self, ch: &mut Channel<'_>) {
        let _ = ch;
    }

    /// The session ended; nothing more can be written. Messages still queued are dropped
    /// with it. `session` says which one ended (the same as [`Channel::session`] in the
    /// other callbacks), for handlers that keep per-session state elsewhere (a room's
    /// member list, a subscription table).
    fn on_delete(&mut self, id: u8, session: &SessionInfo) {
        let _ = (id, session);
    }
}

/// Makes a channel's handler for each session that asks for it.
pub type ChannelFactory = Arc<dyn Fn(&SessionInfo) -> Box<dyn ChannelHandler> + Send + Sync>;

/// What a channel factory is told about the session.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// The session id.
    pub session_id: [u8; 16],
    /// The client's authenticated public key, when it presented a certificate.
    pub client: Option<[u8; 32]>,
}

/// One channel id's counters, over every session of the server (or client) that registered
/// it: relaxed atomics, each exact, a snapshot not one instant.
#[derive(Debug, Default)]
pub struct ChannelStats {
    sessions: AtomicU64,
    open: AtomicU64,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// A copy of one channel id's counters ([`ChannelProcs::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStatsSnapshot {
    /// Sessions that opened the channel.
    pub sessions: u64,
    /// Sessions that have it open now.
    pub open: u64,
    /// Whole messages handed to handlers.
    pub messages_in: u64,
    /// Whole messages sent.
    pub messages_out: u64,
    /// Message bytes received.
    pub bytes_in: u64,
    /// Message bytes sent.
    pub bytes_out: u64,
}

impl ChannelStats {
    /// Reads every counter.
    pub fn snapshot(&self) -> ChannelStatsSnapshot {
        ChannelStatsSnapshot {
            sessions: self.sessions.load(Relaxed),
            open: self.open.load(Relaxed),
            messages_in: self.messages_in.load(Relaxed),
            messages_out: self.messages_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
        }
    }

    pub(crate) fn received(&self, bytes: u64) {
        self.bytes_in.fetch_add(bytes, Relaxed);
    }

    pub(crate) fn delivered(&self) {
        self.messages_in.fetch_add(1, Relaxed);
    }

    pub(crate) fn sent(&self, bytes: u64, message_done: bool) {
        self.bytes_out.fetch_add(bytes, Relaxed);
        if message_done {
            self.messages_out.fetch_add(1, Relaxed);
        }
    }
}

/// A session's hold on a channel id's counters: counted open while it lives.
///
/// Bytes received are counted here first and added to the shared counter in one atomic
/// addition per message (or per [`RX_REPORT`] bytes, and when the session ends), not per
/// piece: over UDP a piece is one packet's payload.
#[derive(Debug)]
pub(crate) struct ChannelUse(Arc<ChannelStats>, u64);

/// Bytes received a channel counts before it adds them to the shared counter.
const RX_REPORT: u64 = 64 << 10;

impl ChannelUse {
    pub(crate) fn new(stats: Arc<ChannelStats>) -> Self {
        stats.sessions.fetch_add(1, Relaxed);
        stats.open.fetch_add(1, Relaxed);
        ChannelUse(stats, 0)
    }

    /// Message bytes received.
    pub(crate) fn received(&mut self, bytes: u64) {
        self.1 += bytes;
        if self.1 >= RX_REPORT {
            self.report();
        }
    }

    /// Adds the bytes received so far to the shared counter.
    pub(crate) fn report(&mut self) {
        if self.1 > 0 {
            self.0.received(std::mem::take(&mut self.1));
        }
    }
}

impl std::ops::Deref for ChannelUse {
    type Target = ChannelStats;
    fn deref(&self) -> &ChannelStats {
        &self.0
    }
}

impl Drop for ChannelUse {
    fn drop(&mut self) {
        self.report();
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// The channel registry: DAP's `dap_stream_ch_proc_add`.
#[derive(Clone, Default)]
pub struct ChannelProcs {
    procs: HashMap<u8, (ChannelFactory, Arc<ChannelStats>)>,
}

impl std::fmt::Debug for ChannelProcs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<char> = self.ids().into_iter().map(char::from).collect();
        f.debug_struct("ChannelProcs").field("ids", &ids).finish()
    }
}

/// An id that cannot name a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("channel id {0:#04x} is not a printable ASCII byte")]
pub struct BadChannelId(pub u8);

impl ChannelProcs {
    /// No channels.
    pub fn new() -> Self {
        ChannelProcs::default()
    }

    /// Registers (or replaces) the handler factory of channel `id` (a replaced one keeps
    /// its counters).
    ///
    /// # Errors
    /// `id` is not printable ASCII (`0x21..=0x7e`).
    pub fn ch_proc_add(
        &mut self,
        id: u8,
        factory: impl Fn(&SessionInfo) -> Box<dyn ChannelHandler> + Send + Sync + 'static,
    ) -> Result<&mut Self, BadChannelId> {
        if !valid_channel_id(id) {
            return Err(BadChannelId(id));
        }
        let stats = self.procs.remove(&id).map(|(_, s)| s).unwrap_or_default();
        self.procs.insert(id, (Arc::new(factory), stats));
        Ok(self)
    }

    /// Whether channel `id` is registered.
    pub fn contains(&self, id: u8) -> bool {
        self.procs.contains_key(&id)
    }

    /// The factory of channel `id`.
    pub fn get(&self, id: u8) -> Option<&ChannelFactory> {
        self.procs.get(&id).map(|(f, _)| f)
    }

    /// The registered ids, ascending.
    pub fn ids(&self) -> Vec<u8> {
        let mut ids: Vec<u8> = self.procs.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Every registered channel's counters, by id ascending.
    pub fn stats(&self) -> Vec<(u8, ChannelStatsSnapshot)> {
        self.ids().into_iter().map(|id| (id, self.procs[&id].1.snapshot())).collect()
    }

    /// The factory and the counters of channel `id`.
    pub(crate) fn entry(&self, id: u8) -> Option<(&ChannelFactory, &Arc<ChannelStats>)> {
        self.procs.get(&id).map(|(f, s)| (f, s))
    }
}

/// A channel as its handler sees it, inside a callback.
pub struct Channel<'a> {
    pub(crate) st: &'a mut ChanState,
    pub(crate) max_message: usize,
    pub(crate) session: &'a SessionInfo,
}

impl std::fmt::Debug for Channel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("id", &(self.st.id as char)).finish_non_exhaustive()
    }
}

impl Channel<'_> {
    /// The channel id.
    pub fn id(&self) -> u8 {
        self.st.id
    }

    /// The session.
    pub fn session(&self) -> &SessionInfo {
        self.session
    }

    /// Queues a message. One message is always taken when the queue is empty (up to the
    /// message limit); after that, messages are taken while the queue stays under its bound.
    ///
    /// # Errors
    /// [`WriteError::WouldBlock`] when the queue is full (`packet_out` fires when it
    /// drains); [`WriteError::TooLarge`] over the message limit.
    pub fn write(&mut self, ty: u8, data: impl Into<Bytes>) -> Result<(), WriteError> {
        self.st.write(ty, data.into(), self.max_message)
    }

    /// Whether a message of `len` bytes would be taken now. When not, `packet_out` fires
    /// once there is room, exactly as after a refused [`write`](Self::write).
    pub fn can_write(&mut self, len: usize) -> bool {
        self.st.can_write(len)
    }

    /// Bytes queued and not yet sent.
    pub fn queued(&self) -> usize {
        self.st.out_bytes
    }

    /// Turns delivery of messages on or off. Off, arriving messages wait (bounded by the
    /// credit this channel has granted) and no more credit is granted, so the peer's writes
    /// block; on again, waiting messages are delivered first.
    pub fn set_ready_to_read(&mut self, on: bool) {
        self.st.set_reading(on);
    }

    /// Whether messages are being delivered.
    pub fn is_ready_to_read(&self) -> bool {
        self.st.reading
    }

    /// Asks for [`ChannelHandler::packet_out`] whenever the queue is below half full (for
    /// handlers that produce data as fast as the peer takes it).
    pub fn set_ready_to_write(&mut self, on: bool) {
        self.st.ready_to_write = on;
    }

    /// A `Send` handle for writes from other threads.
    pub fn handle(&self) -> ChannelHandle {
        ChannelHandle::new(self.st.shared.clone())
    }
}
