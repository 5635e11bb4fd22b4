//! One channel's state inside a [`Mux`](super::Mux): its send queue and credit, its
//! reassembly and receive window.
//!
//! Credit is absolute (QUIC's MAX_STREAM_DATA): each direction counts the data bytes sent
//! since the stream began, and a CREDIT frame raises the limit that count may reach. The
//! receiver's window (limit minus what its handler has taken) starts at the session's
//! `channel_window` and doubles, up to `max_channel_window`, each time the sender reports
//! itself BLOCKED at a limit while this channel is reading: the handler kept up, so the
//! window, not the reader, held the sender back.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{DataFrame, FrameSink, MuxConfig, MuxError, ReassemblyBudget};
use crate::channel::{ChanShared, ChannelHandler, ChannelUse, Message, WriteError};
use crate::codec::frame;

/// A message being sent.
pub(crate) struct OutMsg {
    ty: u8,
    data: Bytes,
    /// Bytes already sent.
    off: usize,
}

/// Where a payload passed to [`ChanState::receive`] sits in its frame.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Piece {
    /// The frame's payload length; `None`: this payload is all of it.
    pub(crate) frame_len: Option<usize>,
    /// Whether the frame ends with this piece.
    pub(crate) last: bool,
}

impl Piece {
    /// A whole frame.
    pub(crate) const WHOLE: Piece = Piece { frame_len: None, last: true };
}

/// A message being reassembled.
#[derive(Debug)]
struct Partial {
    ty: u8,
    total: usize,
    buf: Vec<u8>,
    /// Bytes charged for `buf`: its capacity, to the session's bound and (with one) the
    /// server's reassembly budget.
    charged: usize,
    /// When its last frame arrived (the mux's clock; `None` without one).
    last: Option<Instant>,
}

/// Where the bytes of unfinished messages are charged as they arrive: the session's own
/// bound and the server's budget shared by all sessions.
pub(crate) struct Reserve<'a> {
    pub(crate) budget: Option<&'a ReassemblyBudget>,
    /// What the session may still take under its own bound.
    pub(crate) session_room: usize,
    /// The mux's clock, stamped on each partial message a frame extends.
    pub(crate) now: Option<Instant>,
    /// The longest message taken.
    pub(crate) max_message: usize,
}

impl Reserve<'_> {
    fn take(&mut self, n: usize, chan: u8) -> Result<(), MuxError> {
        if n > self.session_room {
            return Err(MuxError::SessionOverBudget(chan));
        }
        if self.budget.is_some_and(|b| !b.try_charge(n)) {
            return Err(MuxError::OverBudget(chan));
        }
        self.session_room -= n;
        Ok(())
    }
}

/// What one data frame took.
pub(crate) struct Sent {
    pub(crate) bytes: usize,
    pub(crate) message_done: bool,
    /// Whether the bytes count against the connection's credit (not on an unreliable
    /// channel).
    pub(crate) credited: bool,
}

pub(crate) struct ChanState {
    pub(crate) id: u8,
    pub(crate) handler: Option<Box<dyn ChannelHandler>>,
    /// The id's counters, over all sessions (none in unit tests that build states bare).
    pub(crate) stats: Option<ChannelUse>,
    pub(crate) shared: Arc<ChanShared>,
    // Sending.
    pub(crate) outq: VecDeque<OutMsg>,
    /// Bound of `outq` in bytes (one message is always taken when it is empty).
    send_bound: usize,
    /// Unsent bytes in `outq`.
    pub(crate) out_bytes: usize,
    /// Data bytes sent so far.
    sent_total: u64,
    /// The peer's limit on `sent_total` (from its CREDIT frames; only increases).
    send_limit: u64,
    /// The `send_limit` a BLOCKED frame was last sent for.
    blocked_reported: Option<u64>,
    pub(crate) ready_to_write: bool,
    /// A write was refused: `packet_out` is owed once there is room.
    pub(crate) blocked: bool,
    // Receiving.
    partial: Option<Partial>,
    pub(crate) inbox: VecDeque<Message>,
    pub(crate) reading: bool,
    /// Data bytes received so far.
    recv_total: u64,
    /// The limit on `recv_total` last sent to the peer.
    recv_limit: u64,
    /// Bytes of `recv_total` the handler (or the reassembler, while reading) has taken:
    /// the next limit is `taken + window`.
    taken: u64,
    /// Bytes received while not reading: taken when reading resumes.
    held: u64,
    /// The receive window: starts at `channel_window`, grows to `max_window`.
    window: u64,
    max_window: u64,
    /// The window grows at most once per limit sent: BLOCKED frames at or under this
    /// limit are stale.
    grown_at: Option<u64>,
    /// A BLOCKED claim at a limit not all of whose bytes had arrived (over UDP a BLOCKED
    /// frame can overtake the data before it): weighed once they have and the handler has
    /// taken them ([`weigh_claim`](Self::weigh_claim)). A claim never backed by data grows
    /// nothing.
    blocked_claim: Option<u64>,
    /// Times the window grew (stats).
    pub(crate) window_growths: u32,
    /// An unreliable channel's largest message: each message is one data frame, outside
    /// flow control, carried by a transport that may drop it.
    pub(crate) unreliable: Option<usize>,
    /// Unreliable messages dropped on arrival: the handler was not taking them and the
    /// inbox was full.
    pub(crate) dropped: u64,
}

impl ChanState {
    pub(crate) fn new(id: u8, handler: Box<dyn ChannelHandler>, config: &MuxConfig) -> Self {
        ChanState {
            id,
            handler: Some(handler),
            stats: None,
            shared: ChanShared::new(id, config.send_queue, config.max_message),
            outq: VecDeque::new(),
            out_bytes: 0,
            send_bound: config.send_queue,
            sent_total: 0,
            send_limit: config.channel_window as u64,
            blocked_reported: None,
            ready_to_write: false,
            blocked: false,
            partial: None,
            inbox: VecDeque::new(),
            reading: true,
            recv_total: 0,
            recv_limit: config.channel_window as u64,
            taken: 0,
            held: 0,
            window: config.channel_window as u64,
            max_window: (config.max_channel_window as u64).max(config.channel_window as u64),
            grown_at: None,
            blocked_claim: None,
            window_growths: 0,
            unreliable: None,
            dropped: 0,
        }
    }

    /// Bytes the peer lets us send now.
    pub(crate) fn send_credit(&self) -> u64 {
        if self.unreliable.is_some() {
            return u64::MAX;
        }
        self.send_limit.saturating_sub(self.sent_total)
    }

    /// A CREDIT frame from the peer: only a higher limit counts.
    pub(crate) fn on_credit(&mut self, limit: u64) {
        self.send_limit = self.send_limit.max(limit);
    }

    /// A BLOCKED frame from the peer at `limit`: grows the window if this channel is
    /// reading (the handler keeps up, so the window is what holds the sender back) and the
    /// window has not grown for this limit already, once every byte up to `limit` has
    /// arrived (until then the claim waits: believing a claim ahead of its data would let
    /// a peer double the window to its maximum without sending). The grant follows in the
    /// next payload.
    pub(crate) fn on_blocked(&mut self, limit: u64) {
        if self.recv_total < limit {
            self.blocked_claim = Some(self.blocked_claim.map_or(limit, |c| c.min(limit)));
            return;
        }
        self.grow_for(limit);
    }

    /// A claim whose bytes have all arrived since, weighed now (after delivery, so that
    /// the handler's state is its state with those bytes).
    pub(crate) fn weigh_claim(&mut self) {
        if let Some(c) = self.blocked_claim
            && self.recv_total >= c
        {
            self.blocked_claim = None;
            self.grow_for(c);
        }
    }

    fn grow_for(&mut self, limit: u64) {
        if !self.reading
            || self.held > 0
            || self.grown_at.is_some_and(|g| limit <= g)
            || self.window >= self.max_window
        {
            return;
        }
        self.window = (self.window * 2).min(self.max_window);
        self.grown_at = Some(self.recv_limit.max(limit));
        self.window_growths += 1;
    }

    /// Whether a BLOCKED frame is owed: data waits, channel credit is used up, and the
    /// peer has not been told at this limit yet.
    pub(crate) fn blocked_due(&self) -> bool {
        self.unreliable.is_none()
            && self.send_credit() == 0
            && self.outq.front().is_some_and(|m| m.data.len() > m.off)
            && self.blocked_reported != Some(self.send_limit)
    }

    pub(crate) fn put_blocked(&mut self, out: &mut impl FrameSink) {
        out.blocked(self.id, self.send_limit);
        self.blocked_reported = Some(self.send_limit);
    }

    /// The receive window now (tests).
    #[cfg(test)]
    pub(crate) fn window(&self) -> u64 {
        self.window
    }

    pub(crate) fn write(
        &mut self,
        ty: u8,
        data: Bytes,
        max_message: usize,
    ) -> Result<(), WriteError> {
        if data.len() > self.unreliable.unwrap_or(max_message) {
            return Err(WriteError::TooLarge);
        }
        if !self.can_write(data.len()) {
            return Err(WriteError::WouldBlock);
        }
        self.push(ty, data);
        Ok(())
    }

    pub(crate) fn can_write(&mut self, len: usize) -> bool {
        let ok = self.outq.is_empty() || self.out_bytes + len <= self.send_bound;
        self.blocked |= !ok;
        ok
    }

    fn push(&mut self, ty: u8, data: Bytes) {
        self.out_bytes += data.len();
        self.outq.push_back(OutMsg { ty, data, off: 0 });
    }

    /// Moves messages written through handles into the send queue while it has room.
    pub(crate) fn pull_handle_writes(&mut self, bound: usize) {
        // One message is always taken into an empty queue, as with local writes.
        let was_empty = self.outq.is_empty();
        let queued = self.out_bytes;
        let taken = std::cell::Cell::new(0usize);
        let outq = &mut self.outq;
        let first = std::cell::Cell::new(was_empty);
        self.shared.drain(
            |len| first.get() || queued + taken.get() + len <= bound,
            |ty, data| {
                first.set(false);
                taken.set(taken.get() + data.len());
                outq.push_back(OutMsg { ty, data, off: 0 });
            },
        );
        self.out_bytes += taken.get();
    }

    /// Whether the next message to send is empty (it needs no credit).
    pub(crate) fn next_is_empty(&self) -> bool {
        self.outq.front().is_some_and(|m| m.data.is_empty())
    }

    /// Puts one data frame of the head message if credit and `room` allow.
    pub(crate) fn put_frame(
        &mut self,
        out: &mut impl FrameSink,
        room: usize,
        max_frame: usize,
        conn_credit: u64,
    ) -> Option<Sent> {
        let credit = self.send_credit().min(conn_credit) as usize;
        let m = self.outq.front_mut()?;
        let first = m.off == 0;
        let overhead = frame::data_overhead(first);
        let mut header = [0u8; frame::MAX_DATA_HEADER];
        if self.unreliable.is_some() {
            // Whole messages only, outside flow control.
            let len = m.data.len();
            if room < overhead + len {
                return None;
            }
            let h = frame::data_header(&mut header, self.id, m.ty, Some(len as u32), false, len);
            out.data(DataFrame {
                chan: self.id,
                ty: m.ty,
                unreliable: true,
                header: h,
                message: &m.data,
                range: 0..len,
            });
            self.out_bytes -= len;
            self.outq.pop_front();
            return Some(Sent { bytes: len, message_done: true, credited: false });
        }
        if room <= overhead && !(m.data.is_empty() && room >= overhead) {
            return None;
        }
        let left = m.data.len() - m.off;
        let n = left.min(credit).min(max_frame).min(room - overhead);
        if n == 0 && left > 0 {
            return None;
        }
        let more = n < left;
        let total = first.then_some(m.data.len() as u32);
        let h = frame::data_header(&mut header, self.id, m.ty, total, more, n);
        out.data(DataFrame {
            chan: self.id,
            ty: m.ty,
            unreliable: false,
            header: h,
            message: &m.data,
            range: m.off..m.off + n,
        });
        m.off += n;
        self.sent_total += n as u64;
        self.out_bytes -= n;
        if !more {
            self.outq.pop_front();
        }
        Some(Sent { bytes: n, message_done: !more, credited: true })
    }

    /// Takes one data frame from the peer, or a piece of one: `piece` is `payload`'s place
    /// in its frame. A transport that receives frames whole passes [`Piece::WHOLE`]; one
    /// that passes a frame in pieces (the UDP engine) gives the frame's own `first` with the
    /// first piece only, and the frame's `more` and length with every piece, so that each
    /// rule is the one a whole frame meets: a frame that completes its message is not
    /// charged to the reassembly budget, a one-frame message with it.
    pub(crate) fn receive(
        &mut self,
        ty: u8,
        first: Option<u32>,
        more: bool,
        payload: &[u8],
        piece: Piece,
        reserve: &mut Reserve<'_>,
    ) -> Result<(), MuxError> {
        let max_message = reserve.max_message;
        let frame_len = piece.frame_len.unwrap_or(payload.len());
        if let Some(max) = self.unreliable {
            // One message per frame, outside flow control; a full inbox drops it.
            if first != Some(frame_len as u32) || more || !piece.last || payload.len() != frame_len
            {
                return Err(MuxError::Fragment(self.id));
            }
            if payload.len() > max {
                let total = payload.len() as u64;
                return Err(MuxError::MessageTooLarge { chan: self.id, total });
            }
            let queued: usize = self.inbox.iter().map(|m| m.data.len()).sum();
            if queued + payload.len() > self.send_bound {
                self.dropped += 1;
                return Ok(());
            }
            self.inbox.push_back(Message { ty, data: Bytes::copy_from_slice(payload) });
            return Ok(());
        }
        let n = payload.len() as u64;
        if self.recv_total + n > self.recv_limit {
            return Err(MuxError::FlowControl(self.id));
        }
        self.recv_total += n;
        if self.reading {
            self.taken += n;
        } else {
            self.held += n;
        }
        match (first, self.partial.as_mut()) {
            (Some(total), None) => {
                let total = total as usize;
                if total > max_message {
                    return Err(MuxError::MessageTooLarge { chan: self.id, total: total as u64 });
                }
                if frame_len > total || (!more && frame_len != total) {
                    return Err(MuxError::Fragment(self.id));
                }
                if !more && piece.last {
                    self.inbox.push_back(Message { ty, data: Bytes::copy_from_slice(payload) });
                    return Ok(());
                }
                let may_send = (self.recv_limit - self.recv_total + n) as usize;
                let cap = total.min(may_send.max(self.window as usize)).max(payload.len());
                let charged = if more {
                    // Reserve what the peer may send without further credit, at most the
                    // whole message: the announced total alone is the peer's word, not
                    // memory to hand out up front; past the window the buffer grows by
                    // doubling. The whole reservation is charged, not only the bytes in it.
                    reserve.take(cap, self.id)?;
                    cap
                } else {
                    // A one-frame message arriving in pieces: not charged, as it would not
                    // be whole; flow control bounds it.
                    0
                };
                let mut buf = Vec::with_capacity(cap);
                buf.extend_from_slice(payload);
                self.partial = Some(Partial { ty, total, buf, charged, last: reserve.now });
            }
            (None, Some(p)) => {
                if p.ty != ty || p.buf.len() + payload.len() > p.total {
                    return Err(MuxError::Fragment(self.id));
                }
                // Growth is charged before it happens (doubling, never past the total);
                // the last frame completes the message and its bytes go to the inbox,
                // where flow control bounds them, so its growth is not.
                let need = p.buf.len() + payload.len();
                if need > p.buf.capacity() {
                    let grow_to = need.max(p.buf.capacity() * 2).min(p.total);
                    if more {
                        reserve.take(grow_to - p.buf.capacity(), self.id)?;
                        p.charged += grow_to - p.buf.capacity();
                    }
                    p.buf.reserve_exact(grow_to - p.buf.len());
                }
                p.buf.extend_from_slice(payload);
                p.last = reserve.now;
                if !more && piece.last {
                    if p.buf.len() != p.total {
                        return Err(MuxError::Fragment(self.id));
                    }
                    let p = self.partial.take().expect("matched Some");
                    if let Some(b) = reserve.budget {
                        b.release(p.charged);
                    }
                    self.inbox.push_back(Message { ty: p.ty, data: p.buf.into() });
                }
            }
            _ => return Err(MuxError::Fragment(self.id)),
        }
        Ok(())
    }

    /// Drops the unfinished message, if any; returns the bytes it had charged.
    pub(crate) fn drop_partial(&mut self) -> usize {
        self.partial.take().map_or(0, |p| p.charged)
    }

    /// Bytes charged for the unfinished message (0: none).
    pub(crate) fn partial_charged(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.charged)
    }

    /// When the unfinished message last grew, if there is one and a clock.
    pub(crate) fn partial_last(&self) -> Option<Instant> {
        self.partial.as_ref().and_then(|p| p.last)
    }

    pub(crate) fn take_message(&mut self) -> Option<Message> {
        self.inbox.pop_front()
    }

    pub(crate) fn set_reading(&mut self, on: bool) {
        if on && !self.reading {
            self.taken += std::mem::take(&mut self.held);
        }
        self.reading = on;
    }

    /// Whether a CREDIT frame is due: the limit it would send is at least an eighth of the
    /// window past the last one.
    pub(crate) fn grant_due(&self) -> bool {
        self.unreliable.is_none()
            && self.taken + self.window >= self.recv_limit + (self.window / 8).max(1)
    }

    pub(crate) fn put_grant(&mut self, out: &mut impl FrameSink) {
        self.recv_limit = self.taken + self.window;
        out.credit(self.id, self.recv_limit);
    }

    /// Whether `packet_out` is owed now.
    pub(crate) fn writable_due(&self, bound: usize) -> bool {
        self.handler.is_some()
            && (self.blocked || self.ready_to_write)
            && self.out_bytes < bound / 2
            && !self.shared.has_queued()
    }
}
