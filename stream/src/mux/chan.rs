//! One channel's state inside a [`Mux`](super::Mux): its send queue and credit, its
//! reassembly and receive window.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use super::{MuxConfig, MuxError};
use crate::channel::{ChanShared, ChannelHandler, Message, WriteError};
use crate::codec::frame;

/// A message being sent.
pub(crate) struct OutMsg {
    ty: u8,
    data: Bytes,
    /// Bytes already sent.
    off: usize,
}

/// A message being reassembled.
struct Partial {
    ty: u8,
    total: usize,
    buf: Vec<u8>,
}

/// What one data frame took.
pub(crate) struct Sent {
    pub(crate) bytes: usize,
    pub(crate) message_done: bool,
}

pub(crate) struct ChanState {
    pub(crate) id: u8,
    pub(crate) handler: Option<Box<dyn ChannelHandler>>,
    pub(crate) shared: Arc<ChanShared>,
    // Sending.
    pub(crate) outq: VecDeque<OutMsg>,
    /// Bound of `outq` in bytes (one message is always taken when it is empty).
    send_bound: usize,
    /// Unsent bytes in `outq`.
    pub(crate) out_bytes: usize,
    pub(crate) send_credit: u64,
    pub(crate) ready_to_write: bool,
    /// A write was refused: `packet_out` is owed once there is room.
    pub(crate) blocked: bool,
    // Receiving.
    partial: Option<Partial>,
    pub(crate) inbox: VecDeque<Message>,
    pub(crate) reading: bool,
    /// Bytes the peer may still send before more credit.
    recv_allowed: u64,
    /// Bytes taken by the handler (or the reassembler) and not yet granted back.
    to_grant: u64,
    /// Bytes received while not reading: granted when reading resumes.
    held: u64,
}

impl ChanState {
    pub(crate) fn new(id: u8, handler: Box<dyn ChannelHandler>, config: &MuxConfig) -> Self {
        ChanState {
            id,
            handler: Some(handler),
            shared: ChanShared::new(id, config.send_queue, config.max_message),
            outq: VecDeque::new(),
            out_bytes: 0,
            send_bound: config.send_queue,
            send_credit: config.channel_window as u64,
            ready_to_write: false,
            blocked: false,
            partial: None,
            inbox: VecDeque::new(),
            reading: true,
            recv_allowed: config.channel_window as u64,
            to_grant: 0,
            held: 0,
        }
    }

    pub(crate) fn write(
        &mut self,
        ty: u8,
        data: Bytes,
        max_message: usize,
    ) -> Result<(), WriteError> {
        if data.len() > max_message {
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

    /// Appends one data frame of the head message if credit and `room` allow.
    pub(crate) fn put_frame(
        &mut self,
        out: &mut Vec<u8>,
        room: usize,
        max_frame: usize,
        conn_credit: u64,
    ) -> Option<Sent> {
        let m = self.outq.front_mut()?;
        let first = m.off == 0;
        let overhead = frame::data_overhead(first);
        if room <= overhead && !(m.data.is_empty() && room >= overhead) {
            return None;
        }
        let left = m.data.len() - m.off;
        let credit = self.send_credit.min(conn_credit) as usize;
        let n = left.min(credit).min(max_frame).min(room - overhead);
        if n == 0 && left > 0 {
            return None;
        }
        let more = n < left;
        let total = first.then_some(m.data.len() as u32);
        frame::put_data_header(out, self.id, m.ty, total, more, n);
        out.extend_from_slice(&m.data[m.off..m.off + n]);
        m.off += n;
        self.send_credit -= n as u64;
        self.out_bytes -= n;
        if !more {
            self.outq.pop_front();
        }
        Some(Sent { bytes: n, message_done: !more })
    }

    /// Takes one data frame from the peer.
    pub(crate) fn receive(
        &mut self,
        ty: u8,
        first: Option<u32>,
        more: bool,
        payload: &[u8],
        max_message: usize,
    ) -> Result<(), MuxError> {
        let n = payload.len() as u64;
        if n > self.recv_allowed {
            return Err(MuxError::FlowControl(self.id));
        }
        self.recv_allowed -= n;
        if self.reading {
            self.to_grant += n;
        } else {
            self.held += n;
        }
        match (first, self.partial.as_mut()) {
            (Some(total), None) => {
                let total = total as usize;
                if total > max_message {
                    return Err(MuxError::MessageTooLarge { chan: self.id, total: total as u64 });
                }
                if payload.len() > total || (!more && payload.len() != total) {
                    return Err(MuxError::Fragment(self.id));
                }
                if !more {
                    self.inbox.push_back(Message { ty, data: payload.to_vec() });
                    return Ok(());
                }
                // Grow as bytes arrive: the announced total is the peer's word, not memory
                // to hand out up front.
                let mut buf = Vec::with_capacity(total.min(64 << 10));
                buf.extend_from_slice(payload);
                self.partial = Some(Partial { ty, total, buf });
            }
            (None, Some(p)) => {
                if p.ty != ty || p.buf.len() + payload.len() > p.total {
                    return Err(MuxError::Fragment(self.id));
                }
                p.buf.extend_from_slice(payload);
                if !more {
                    if p.buf.len() != p.total {
                        return Err(MuxError::Fragment(self.id));
                    }
                    let p = self.partial.take().expect("matched Some");
                    self.inbox.push_back(Message { ty: p.ty, data: p.buf });
                }
            }
            _ => return Err(MuxError::Fragment(self.id)),
        }
        Ok(())
    }

    pub(crate) fn take_message(&mut self) -> Option<Message> {
        self.inbox.pop_front()
    }

    pub(crate) fn set_reading(&mut self, on: bool) {
        if on && !self.reading {
            self.to_grant += std::mem::take(&mut self.held);
        }
        self.reading = on;
    }

    pub(crate) fn grant_due(&self, window: u32) -> bool {
        self.to_grant >= (window as u64 / 4).max(1)
    }

    pub(crate) fn put_grant(&mut self, out: &mut Vec<u8>) {
        let g = self.to_grant.min(u32::MAX as u64);
        frame::put_credit(out, self.id, g as u32);
        self.to_grant -= g;
        self.recv_allowed += g;
    }

    /// Whether `packet_out` is owed now.
    pub(crate) fn writable_due(&self, bound: usize) -> bool {
        self.handler.is_some()
            && (self.blocked || self.ready_to_write)
            && self.out_bytes < bound / 2
            && !self.shared.has_queued()
    }
}
