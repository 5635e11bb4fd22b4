//! The session core: channels, fragmentation and reassembly, and flow control, sans-IO.
//!
//! A [`Mux`] knows nothing about the transport that carries it. The transport feeds it the
//! decrypted payloads it receives ([`Mux::handle_payload`]), asks it for the next payload to
//! send ([`Mux::poll_payload`]), and calls [`Mux::notify_writable`] once it has sent what it
//! could; the ordered HTTP transport wraps payloads in stream packets, the UDP engine will
//! carry the same payloads in its own packets. The order: after input, and whenever woken,
//! loop `poll_payload` → send until it returns `false` or the transport is full, then
//! `notify_writable`, then poll again if [`Mux::wants_send`].
//!
//! Flow control (credits count data-frame payload bytes; a CREDIT frame carries an absolute
//! limit on the running total, so a repeated or late frame grants nothing twice):
//! - each channel starts with `channel_window` bytes of credit per direction; the receiver
//!   moves the limit to "taken + window" as its handler takes messages, once that moves it by
//!   at least an eighth of the window; a channel that is not reading grants nothing, so its
//!   peer's writes block while the bytes already in flight wait in a buffer no larger than
//!   the window;
//! - the connection starts with `conn_window` bytes, granted back as frames are processed:
//!   it bounds what is in flight over the transport as a whole;
//! - a sender with data and no credit says so once per limit (BLOCKED); a receiver that is
//!   keeping up doubles that window, up to `max_channel_window` / `max_conn_window`, so
//!   windows grow to the bandwidth-delay product and no further;
//! - a message may be larger than the window: the bytes of an unfinished message are granted
//!   as they arrive while the channel reads, and its reassembly is capped by `max_message`.
//!
//! Receiving more than was granted, a message over the limit, a frame for a channel the
//! session does not have, or frames of a message out of order is a protocol violation:
//! [`Mux::handle_payload`] returns a [`MuxError`] and the transport closes the stream.

mod budget;
mod chan;

use std::sync::Arc;
use std::time::{Duration, Instant};

pub use budget::ReassemblyBudget;
pub(crate) use chan::ChanState;
pub(crate) use chan::Piece;
use chan::Reserve;

use crate::channel::{Channel, ChannelProcs, ChannelUse, SessionInfo};
use crate::codec::DecodeError;
use crate::codec::frame::{self, CONNECTION, Frame};
use crate::transport::Wake;

/// One data frame as [`Mux::poll_frames`] hands it over: its encoded header and the slice
/// `range` of the message it carries, uncopied.
#[derive(Debug)]
pub struct DataFrame<'a> {
    /// The channel.
    pub chan: u8,
    /// The application's message type.
    pub ty: u8,
    /// Whether the channel is unreliable (the frame carries a whole message).
    pub unreliable: bool,
    /// The frame's header, as [`frame::put_data_header`] encodes it.
    pub header: &'a [u8],
    /// The whole message.
    pub message: &'a bytes::Bytes,
    /// The bytes of the message this frame carries.
    pub range: std::ops::Range<usize>,
}

impl DataFrame<'_> {
    /// The bytes the frame takes encoded.
    pub fn encoded_len(&self) -> usize {
        self.header.len() + self.range.len()
    }
}

/// Where the mux puts the frames it sends. A `Vec<u8>` takes them encoded (the payload of
/// the HTTP transport); the UDP engine takes control frames as values and data frames as
/// slices of the messages, which saves copying every byte into a payload first.
pub trait FrameSink {
    /// Bytes taken so far, counted as encoded frames; the mux keeps what it adds within
    /// the `max` it was given.
    fn len(&self) -> usize;
    /// Whether nothing was taken yet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A CREDIT frame for `chan` (0: the connection).
    fn credit(&mut self, chan: u8, limit: u64);
    /// A BLOCKED frame for `chan` (0: the connection).
    fn blocked(&mut self, chan: u8, limit: u64);
    /// A data frame.
    fn data(&mut self, frame: DataFrame<'_>);
}

impl FrameSink for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn credit(&mut self, chan: u8, limit: u64) {
        frame::put_credit(self, chan, limit);
    }
    fn blocked(&mut self, chan: u8, limit: u64) {
        frame::put_blocked(self, chan, limit);
    }
    fn data(&mut self, f: DataFrame<'_>) {
        self.extend_from_slice(f.header);
        self.extend_from_slice(&f.message[f.range]);
    }
}

/// The limits of one session's multiplexing; both ends use the same values (the server
/// sends them in the stream_ctl answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MuxConfig {
    /// The largest message, in bytes (16 MiB).
    pub max_message: usize,
    /// Credit each channel starts with, per direction (256 KiB).
    pub channel_window: u32,
    /// Credit the connection starts with, per direction (1 MiB).
    pub conn_window: u32,
    /// Bound of each channel's send queue and of its handle queue (256 KiB).
    pub send_queue: usize,
    /// The largest data-frame payload (16 KiB): smaller frames interleave channels more
    /// finely.
    pub max_frame: usize,
    /// Local, not sent: the most a channel's receive window grows to (16 MiB).
    pub max_channel_window: u32,
    /// Local, not sent: the most the connection's receive window grows to (64 MiB).
    pub max_conn_window: u32,
    /// Local, not sent: the most this end holds in unfinished messages of the session, all
    /// channels together (32 MiB: two messages of the largest size at once). Charged as
    /// reassembly buffers are reserved; past it the stream ends (CLOSE code 4).
    pub max_session_reassembly: usize,
    /// Local, not sent: an unfinished message that gains no frame for this long ends the
    /// stream (CLOSE code 2), so a peer cannot park a message and keep the session alive
    /// with keepalives (30 s). Needs the transport's clock ([`Mux::set_clock`]).
    pub partial_timeout: Duration,
}

impl Default for MuxConfig {
    fn default() -> Self {
        MuxConfig {
            max_message: 16 << 20,
            channel_window: 256 << 10,
            conn_window: 1 << 20,
            send_queue: 256 << 10,
            max_frame: 16 << 10,
            max_channel_window: 16 << 20,
            max_conn_window: 64 << 20,
            max_session_reassembly: 32 << 20,
            partial_timeout: Duration::from_secs(30),
        }
    }
}

/// A protocol violation by the peer; the stream must close.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MuxError {
    /// A frame that could not be decoded.
    #[error("bad frame: {0}")]
    Decode(#[from] DecodeError),
    /// A frame for a channel this session does not have.
    #[error("unknown channel {0:#04x}")]
    UnknownChannel(u8),
    /// The peer sent more than it was granted.
    #[error("flow control violated on channel {0:#04x}")]
    FlowControl(u8),
    /// A message whose total is over the limit.
    #[error("message of {total} bytes on channel {chan:#04x} is over the limit")]
    MessageTooLarge {
        /// The channel.
        chan: u8,
        /// The announced total.
        total: u64,
    },
    /// Frames of a message out of order, or lengths that disagree with the total.
    #[error("fragments out of order on channel {0:#04x}")]
    Fragment(u8),
    /// In a channel's UDP stream (PROTOCOL §11.4.3), a control frame: the stream holds the
    /// channel's data frames only.
    #[error("a control frame in channel {0:#04x}'s stream")]
    ControlInStream(u8),
    /// In a channel's UDP stream, a data frame of another channel.
    #[error("a frame of channel {other:#04x} in channel {chan:#04x}'s stream")]
    ForeignInStream {
        /// The stream's channel.
        chan: u8,
        /// The channel the frame names.
        other: u8,
    },
    /// An unfinished message on this channel would take the server's
    /// [`ReassemblyBudget`] past its bound: not the peer's fault, but the stream ends
    /// (CLOSE code 4).
    #[error("reassembly over the server's budget on channel {0:#04x}")]
    OverBudget(u8),
    /// An unfinished message on this channel would take the session's unfinished messages
    /// past [`MuxConfig::max_session_reassembly`] (CLOSE code 4).
    #[error("unfinished messages over the session's bound on channel {0:#04x}")]
    SessionOverBudget(u8),
    /// The unfinished message on this channel gained no frame within
    /// [`MuxConfig::partial_timeout`] (CLOSE code 2).
    #[error("unfinished message on channel {0:#04x} idle past the partial timeout")]
    PartialTimeout(u8),
}

/// Counts of what one mux saw, for the transport's stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MuxCounters {
    /// Messages delivered to handlers.
    pub messages_in: u64,
    /// Messages sent completely.
    pub messages_out: u64,
    /// Data bytes received.
    pub bytes_in: u64,
    /// Data bytes sent.
    pub bytes_out: u64,
    /// Times a receive window (a channel's or the connection's) grew.
    pub window_growths: u64,
    /// BLOCKED frames sent (we waited on the peer's credit).
    pub blocked_sent: u64,
    /// Messages of unreliable channels dropped on arrival (their handler was not taking
    /// them and the inbox was full).
    pub unreliable_dropped: u64,
    /// Unfinished messages refused: over the server's reassembly budget or the session's
    /// own bound (the stream ended with code 4).
    pub reassembly_refused: u64,
    /// Unfinished messages that gained no frame within the partial timeout (the stream
    /// ended with code 2).
    pub partial_timeouts: u64,
}

/// The connection's flow-control state, both directions (as [`ChanState`] keeps a
/// channel's).
#[derive(Debug)]
struct ConnFlow {
    sent_total: u64,
    send_limit: u64,
    blocked_reported: Option<u64>,
    recv_total: u64,
    recv_limit: u64,
    window: u64,
    max_window: u64,
    grown_at: Option<u64>,
}

impl ConnFlow {
    fn new(config: &MuxConfig) -> Self {
        let w = config.conn_window as u64;
        ConnFlow {
            sent_total: 0,
            send_limit: w,
            blocked_reported: None,
            recv_total: 0,
            recv_limit: w,
            window: w,
            max_window: (config.max_conn_window as u64).max(w),
            grown_at: None,
        }
    }

    fn send_credit(&self) -> u64 {
        self.send_limit.saturating_sub(self.sent_total)
    }

    /// Every byte is taken as soon as its frame is processed, so the next limit is
    /// `recv_total + window`.
    fn grant_due(&self) -> bool {
        self.recv_total + self.window >= self.recv_limit + (self.window / 8).max(1)
    }

    fn on_blocked(&mut self, limit: u64) -> bool {
        if self.grown_at.is_some_and(|g| limit <= g) || self.window >= self.max_window {
            return false;
        }
        self.window = (self.window * 2).min(self.max_window);
        self.grown_at = Some(self.recv_limit.max(limit));
        true
    }
}

/// One session's channels and flow control.
pub struct Mux {
    chans: Vec<ChanState>,
    /// Channel id → index in `chans` + 1 (0: none).
    index: [u8; 128],
    config: MuxConfig,
    session: SessionInfo,
    conn: ConnFlow,
    /// Round-robin position for fairness between channels.
    rr: usize,
    /// Whether BLOCKED frames may be sent now (the transport's output is idle).
    report_blocked: bool,
    /// Whether this end keeps up with its input (the transport's last read left nothing
    /// behind): only then do the peer's BLOCKED frames grow windows.
    input_drained: bool,
    started: bool,
    closed: bool,
    /// Handles refuse writes; what they queued before still goes ([`Mux::seal_inputs`]).
    inputs_sealed: bool,
    /// No message is handed to a handler any more ([`Mux::stop_intake`]).
    intake_stopped: bool,
    counters: MuxCounters,
    /// Where unfinished messages' bytes are charged (none: unbounded but by the limits).
    budget: Option<Arc<ReassemblyBudget>>,
    /// Bytes charged for this session's unfinished messages, all channels.
    partial_held: usize,
    /// The transport's clock as of its last [`set_clock`](Self::set_clock).
    clock: Option<Instant>,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: String = self.chans.iter().map(|c| c.id as char).collect();
        f.debug_struct("Mux").field("channels", &ids).field("closed", &self.closed).finish()
    }
}

impl Mux {
    /// A mux with a handler from `procs` for each id in `channels`. Unknown or repeated
    /// ids are skipped (stream_ctl refuses them before a session exists).
    pub fn new(
        channels: &[u8],
        procs: &ChannelProcs,
        session: SessionInfo,
        config: MuxConfig,
    ) -> Self {
        let mut chans = Vec::with_capacity(channels.len());
        let mut index = [0u8; 128];
        for &id in channels {
            let Some((factory, stats)) = procs.entry(id) else { continue };
            if index[id as usize] != 0 {
                continue;
            }
            let mut st = ChanState::new(id, factory(&session), &config);
            st.stats = Some(ChannelUse::new(stats.clone()));
            chans.push(st);
            index[id as usize] = chans.len() as u8;
        }
        Mux {
            chans,
            index,
            conn: ConnFlow::new(&config),
            config,
            session,
            rr: 0,
            report_blocked: true,
            input_drained: true,
            started: false,
            closed: false,
            inputs_sealed: false,
            intake_stopped: false,
            counters: MuxCounters::default(),
            budget: None,
            partial_held: 0,
            clock: None,
        }
    }

    /// The transport's time now: frames handled from here on are stamped with it, and
    /// unfinished messages are timed against it ([`stalled_partial`](Self::stalled_partial)).
    /// Transports call it before [`handle_payload`](Self::handle_payload); without it,
    /// unfinished messages never time out.
    pub fn set_clock(&mut self, now: Instant) {
        self.clock = Some(now);
    }

    /// A channel whose unfinished message gained no frame within
    /// [`MuxConfig::partial_timeout`] as of `now`, if any: the stream should end
    /// ([`MuxError::PartialTimeout`]).
    /// Counted in [`MuxCounters::partial_timeouts`].
    pub fn stalled_partial(&mut self, now: Instant) -> Option<u8> {
        if self.partial_held == 0 {
            return None;
        }
        let t = self.config.partial_timeout;
        let chan = self
            .chans
            .iter()
            .find(|c| c.partial_last().is_some_and(|last| now.saturating_duration_since(last) >= t))
            .map(|c| c.id)?;
        self.counters.partial_timeouts += 1;
        Some(chan)
    }

    /// When the oldest unfinished message times out, if there is one (for the transport's
    /// timer).
    pub fn partial_deadline(&self) -> Option<Instant> {
        if self.partial_held == 0 {
            return None;
        }
        self.chans
            .iter()
            .filter_map(|c| c.partial_last())
            .min()
            .map(|last| last + self.config.partial_timeout)
    }

    /// Bytes held for this session's unfinished messages.
    pub fn partial_bytes(&self) -> usize {
        self.partial_held
    }

    /// Charges the bytes of this session's unfinished messages to `budget` (shared with
    /// the server's other sessions) from now on.
    pub fn set_reassembly_budget(&mut self, budget: Arc<ReassemblyBudget>) {
        self.budget = Some(budget);
    }

    /// The session.
    pub fn session(&self) -> &SessionInfo {
        &self.session
    }

    /// The channel ids, in the order asked for.
    pub fn channel_ids(&self) -> Vec<u8> {
        self.chans.iter().map(|c| c.id).collect()
    }

    /// A handle to channel `id`.
    pub fn handle(&self, id: u8) -> Option<crate::channel::ChannelHandle> {
        self.find(id).map(|i| crate::channel::ChannelHandle::new(self.chans[i].shared.clone()))
    }

    /// What has been counted so far.
    pub fn counters(&self) -> MuxCounters {
        let mut c = self.counters;
        c.window_growths += self.chans.iter().map(|c| c.window_growths as u64).sum::<u64>();
        c.unreliable_dropped = self.chans.iter().map(|c| c.dropped).sum();
        c
    }

    /// Makes channel `id` unreliable, for a transport that can carry messages it may drop
    /// (UDP DATAGRAM frames): each message is one data frame of at most `max_message`
    /// bytes, outside flow control; what arrives while the handler is not taking messages
    /// and the inbox is full is dropped and counted. Returns whether the channel exists.
    /// Over TCP no channel is made unreliable.
    pub fn set_unreliable(&mut self, id: u8, max_message: usize) -> bool {
        let Some(i) = self.find(id) else { return false };
        let max = max_message.min(self.config.max_frame);
        self.chans[i].unreliable = Some(max);
        self.chans[i].shared.set_max_message(max);
        true
    }

    /// Whether channel `id` is unreliable.
    pub fn is_unreliable(&self, id: u8) -> bool {
        self.find(id).is_some_and(|i| self.chans[i].unreliable.is_some())
    }

    /// The receive window of channel `id` now, in bytes (tests, diagnostics).
    #[cfg(test)]
    pub(crate) fn recv_window(&self, id: u8) -> Option<u64> {
        self.find(id).map(|i| self.chans[i].window())
    }

    fn find(&self, id: u8) -> Option<usize> {
        match self.index.get(id as usize) {
            Some(&i) if i != 0 => Some(i as usize - 1),
            _ => None,
        }
    }

    /// The stream is up: sets the waker for handle writes and calls every `on_new`.
    pub fn start(&mut self, waker: Arc<dyn Wake>) {
        self.started = true;
        for i in 0..self.chans.len() {
            self.chans[i].shared.set_waker(waker.clone());
            self.call(i, |h, ch| h.on_new(ch));
        }
    }

    fn call(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut dyn crate::channel::ChannelHandler, &mut Channel<'_>),
    ) {
        let st = &mut self.chans[i];
        let Some(mut h) = st.handler.take() else { return };
        let mut ch = Channel { st, max_message: self.config.max_message, session: &self.session };
        f(h.as_mut(), &mut ch);
        self.chans[i].handler = Some(h);
    }

    /// Processes one received payload (a sequence of frames), delivering whole messages
    /// to their handlers.
    ///
    /// # Errors
    /// A protocol violation; the stream must close.
    pub fn handle_payload(&mut self, mut buf: &[u8]) -> Result<(), MuxError> {
        while !buf.is_empty() {
            let (f, n) = frame::decode(buf)?;
            buf = &buf[n..];
            match f {
                Frame::Credit { chan: CONNECTION, limit } => {
                    self.conn.send_limit = self.conn.send_limit.max(limit);
                }
                Frame::Credit { chan, limit } => {
                    let i = self.find(chan).ok_or(MuxError::UnknownChannel(chan))?;
                    self.chans[i].on_credit(limit);
                }
                Frame::Blocked { chan: CONNECTION, limit } => {
                    if self.input_drained && self.conn.on_blocked(limit) {
                        self.counters.window_growths += 1;
                    }
                }
                Frame::Blocked { chan, limit } => {
                    let i = self.find(chan).ok_or(MuxError::UnknownChannel(chan))?;
                    if self.input_drained {
                        self.chans[i].on_blocked(limit);
                    }
                }
                Frame::Data { chan, ty, first, more, payload } => {
                    self.handle_data(chan, ty, first, more, payload, Piece::WHOLE)?;
                }
            }
        }
        self.deliver();
        Ok(())
    }

    /// One data frame's payload, or a piece of it: a transport that receives a frame in
    /// pieces (the UDP engine) passes each as it comes, the first with the frame's `first`,
    /// every one with the frame's `more` and its place in the frame (`piece`), so that the
    /// rules are those of the whole frame. Flow control applies to each piece as it comes.
    /// Messages it completes are handed to handlers at the next
    /// [`deliver`](Self::deliver) or `handle_payload`.
    pub(crate) fn handle_data(
        &mut self,
        chan: u8,
        ty: u8,
        first: Option<u32>,
        more: bool,
        payload: &[u8],
        piece: Piece,
    ) -> Result<(), MuxError> {
        let i = self.find(chan).ok_or(MuxError::UnknownChannel(chan))?;
        let n = payload.len() as u64;
        if self.chans[i].unreliable.is_none() {
            if self.conn.recv_total + n > self.conn.recv_limit {
                return Err(MuxError::FlowControl(CONNECTION));
            }
            self.conn.recv_total += n;
        }
        self.counters.bytes_in += n;
        if let Some(s) = &mut self.chans[i].stats {
            s.received(n);
        }
        let before = self.chans[i].partial_charged();
        let mut reserve = Reserve {
            budget: self.budget.as_deref(),
            session_room: self.config.max_session_reassembly.saturating_sub(self.partial_held),
            now: self.clock,
            max_message: self.config.max_message,
        };
        let r = self.chans[i].receive(ty, first, more, payload, piece, &mut reserve);
        self.partial_held = self.partial_held - before + self.chans[i].partial_charged();
        if matches!(r, Err(MuxError::OverBudget(_) | MuxError::SessionOverBudget(_))) {
            self.counters.reassembly_refused += 1;
        }
        r
    }

    /// The server is draining: no message is handed to a handler from now on, including
    /// those already received and waiting for their channel to read (they were never
    /// acknowledged by the application, and a handler acting on one now could reach
    /// sessions that are already going away). Idempotent.
    pub fn stop_intake(&mut self) {
        self.intake_stopped = true;
    }

    /// Hands waiting messages to handlers of channels that are reading (`handle_payload`
    /// does at its end; a transport passing pieces with `handle_data` calls it itself).
    pub(crate) fn deliver(&mut self) {
        if self.intake_stopped {
            return;
        }
        for i in 0..self.chans.len() {
            while self.chans[i].reading {
                let Some(msg) = self.chans[i].take_message() else { break };
                self.counters.messages_in += 1;
                if let Some(s) = &mut self.chans[i].stats {
                    s.report();
                    s.delivered();
                }
                self.call(i, |h, ch| h.packet_in(ch, msg));
            }
            if self.input_drained {
                self.chans[i].weigh_claim();
            }
        }
    }

    /// Lets the transport say whether a BLOCKED frame would be true now (on by default).
    /// A sender whose own output is still backed up is held back by the transport, not
    /// by the peer's credit, and growing the peer's window would only add to what is
    /// queued in between; the HTTP transport therefore allows BLOCKED frames only once
    /// its output has drained.
    pub fn set_report_blocked(&mut self, on: bool) {
        self.report_blocked = on;
    }

    /// Lets the transport say whether this end has caught up with its input (on by
    /// default): its last read took everything there was. A receiver that is behind (its
    /// input keeps piling up) is the bottleneck itself, so a BLOCKED peer then grows no
    /// window: more credit would only queue more bytes in the transport's buffers.
    pub fn set_input_drained(&mut self, drained: bool) {
        self.input_drained = drained;
    }

    /// Whether there would be something to send with BLOCKED frames allowed.
    pub fn wants_send_if_idle(&mut self) -> bool {
        let was = std::mem::replace(&mut self.report_blocked, true);
        let r = self.wants_send();
        self.report_blocked = was;
        r
    }

    /// Whether [`poll_payload`](Self::poll_payload) has something to send.
    pub fn wants_send(&self) -> bool {
        if self.closed {
            return false;
        }
        let conn_credit = self.conn.send_credit();
        self.conn.grant_due()
            || self.chans.iter().any(|c| {
                c.grant_due()
                    || (self.report_blocked && c.blocked_due())
                    || (!c.outq.is_empty()
                        && (c.send_credit() > 0 || c.next_is_empty())
                        && (conn_credit > 0 || c.unreliable.is_some()))
                    || c.shared.has_queued()
            })
            || (self.report_blocked
                && conn_credit == 0
                && self.conn.blocked_reported != Some(self.conn.send_limit)
                && self
                    .chans
                    .iter()
                    .any(|c| c.unreliable.is_none() && c.send_credit() > 0 && !c.outq.is_empty()))
    }

    /// Appends to `out` the next payload to send, at most `max` bytes (the transport's
    /// room for one packet); returns whether anything was appended.
    pub fn poll_payload(&mut self, out: &mut Vec<u8>, max: usize) -> bool {
        self.poll_frames(out, max)
    }

    /// [`poll_payload`](Self::poll_payload) into any [`FrameSink`]: the frames of the next
    /// payload, at most `max` bytes of them encoded.
    pub fn poll_frames(&mut self, out: &mut impl FrameSink, max: usize) -> bool {
        if self.closed {
            return false;
        }
        let start = out.len();
        let limit = start + max;
        for c in &mut self.chans {
            c.pull_handle_writes(self.config.send_queue);
        }
        // Credit first: it unblocks the peer.
        if self.conn.grant_due() && out.len() + frame::CONTROL_LEN <= limit {
            self.conn.recv_limit = self.conn.recv_total + self.conn.window;
            out.credit(CONNECTION, self.conn.recv_limit);
        }
        for c in &mut self.chans {
            if c.grant_due() && out.len() + frame::CONTROL_LEN <= limit {
                c.put_grant(out);
            }
        }
        // Then data, one frame per channel per round, so channels share the connection.
        let n = self.chans.len();
        loop {
            let mut progress = false;
            for k in 0..n {
                let i = (self.rr + k) % n;
                let room = limit.saturating_sub(out.len());
                let c = &mut self.chans[i];
                if let Some(sent) =
                    c.put_frame(out, room, self.config.max_frame, self.conn.send_credit())
                {
                    if sent.credited {
                        self.conn.sent_total += sent.bytes as u64;
                    }
                    self.counters.bytes_out += sent.bytes as u64;
                    if sent.message_done {
                        self.counters.messages_out += 1;
                    }
                    if let Some(s) = &c.stats {
                        s.sent(sent.bytes as u64, sent.message_done);
                    }
                    progress = true;
                }
            }
            self.rr = (self.rr + 1) % n.max(1);
            if !progress {
                break;
            }
        }
        // Then what holds us back: the peer grows a window it learns is too small.
        if !self.report_blocked {
            return out.len() > start;
        }
        let conn_credit = self.conn.send_credit();
        for c in &mut self.chans {
            if c.blocked_due() && out.len() + frame::CONTROL_LEN <= limit {
                c.put_blocked(out);
                self.counters.blocked_sent += 1;
            }
        }
        if conn_credit == 0
            && self.conn.blocked_reported != Some(self.conn.send_limit)
            && self
                .chans
                .iter()
                .any(|c| c.unreliable.is_none() && c.send_credit() > 0 && !c.outq.is_empty())
            && out.len() + frame::CONTROL_LEN <= limit
        {
            out.blocked(CONNECTION, self.conn.send_limit);
            self.conn.blocked_reported = Some(self.conn.send_limit);
            self.counters.blocked_sent += 1;
        }
        out.len() > start
    }

    /// Calls `packet_out` on channels that have room again (after a refused write, or
    /// while they asked for it with `set_ready_to_write`). Call after sending.
    pub fn notify_writable(&mut self) {
        if self.closed {
            return;
        }
        for i in 0..self.chans.len() {
            if self.chans[i].writable_due(self.config.send_queue) {
                self.chans[i].blocked = false;
                self.call(i, |h, ch| h.packet_out(ch));
            }
        }
        // A handler may have resumed reading inside packet_out.
        self.deliver();
    }

    /// Runs `f` on channel `id` as if in a callback (for timers and application code on
    /// the session's worker). Returns `None` when the session has no such channel.
    pub fn with_channel<R>(&mut self, id: u8, f: impl FnOnce(&mut Channel<'_>) -> R) -> Option<R> {
        if self.closed {
            return None;
        }
        let i = self.find(id)?;
        let st = &mut self.chans[i];
        let mut ch = Channel { st, max_message: self.config.max_message, session: &self.session };
        let r = f(&mut ch);
        self.deliver();
        Some(r)
    }

    /// Bytes waiting to be sent on all channels (queues, not counting handle queues).
    pub fn queued(&self) -> usize {
        self.chans.iter().map(|c| c.out_bytes).sum()
    }

    /// Messages not yet wholly sent, on all channels: in the send queues (one partly sent
    /// counts) and in the handle queues. What [`close`](Self::close) would discard.
    pub fn unsent_messages(&self) -> usize {
        self.chans.iter().map(|c| c.outq.len() + c.shared.queued_messages()).sum()
    }

    /// For a graceful end: handles refuse writes from now on (`Closed`), while what they
    /// queued before stays queued and is still sent. A transport going away calls this once
    /// everything is sent, then waits for the mux to be idle again before its CLOSE: a
    /// message another thread queued between "idle" and the CLOSE is then sent, not lost
    /// after its writer was told `Ok`. Idempotent.
    pub fn seal_inputs(&mut self) {
        self.inputs_sealed = true;
        for c in &self.chans {
            c.shared.seal();
        }
    }

    /// Whether [`seal_inputs`](Self::seal_inputs) ran.
    pub fn inputs_sealed(&self) -> bool {
        self.inputs_sealed
    }

    /// Ends the session: handles refuse writes, every handler gets `on_delete`. Idempotent.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        for c in &mut self.chans {
            c.shared.close();
            c.outq.clear();
            c.out_bytes = 0;
            if let Some(mut h) = c.handler.take() {
                h.on_delete(c.id, &self.session);
            }
        }
    }

    /// Whether [`start`](Self::start) ran.
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// Whether [`close`](Self::close) ran.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Bytes a data frame adds to its payload; transports size packets with it.
    pub fn frame_overhead() -> usize {
        frame::data_overhead(true)
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.close();
        for c in &mut self.chans {
            let charged = c.drop_partial();
            if let Some(b) = &self.budget {
                b.release(charged);
            }
        }
        self.partial_held = 0;
    }
}

#[cfg(test)]
mod tests;
