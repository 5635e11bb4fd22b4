//! The write path: per channel, the live stream's [`ChannelHandle`] once streaming, and
//! before that a bounded queue (connect-on-demand) that the channel drains, in order, as
//! soon as the stream is up.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use dap_stream::{
    Channel, ChannelHandle, ChannelHandler, HandleWriteError, Message, WriteError as WriteError2,
};
use parking_lot::Mutex;

use crate::Stage;

/// Why [`Client::write`](crate::Client::write) did not take a message. `Full` and
/// `TooLarge` hand the message back, for a retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The channel is not one of the client's active channels.
    #[error("channel {0:?} is not active on this client")]
    NotActive(char),
    /// Not streaming, and connect-on-demand is off.
    #[error("not streaming (at {0}) and connect-on-demand is off")]
    WrongStage(Stage),
    /// The channel's queue is full (the stream's, or the queue before streaming): retry
    /// later.
    #[error("the channel's queue is full")]
    Full(Bytes),
    /// Over the session's message size limit: the message, and the limit in bytes.
    #[error("a message of {len} bytes is over the limit of {limit} bytes", len = .0.len(), limit = .1)]
    TooLarge(Bytes, usize),
    /// The stream refused it for another reason.
    #[error(transparent)]
    Stream(HandleWriteError),
}

/// The messages of one channel.
#[derive(Debug, Default)]
struct Lane {
    id: u8,
    /// Written before streaming (or while earlier ones still drain), oldest first.
    pending: VecDeque<(u8, Bytes)>,
    bytes: usize,
    /// The live stream's handle, and the stream's serial.
    live: Option<(u64, ChannelHandle)>,
}

/// Every active channel's lane.
#[derive(Debug)]
pub(crate) struct Outbox {
    lanes: Vec<Lane>,
    max_bytes: usize,
    max_messages: usize,
    max_message: usize,
    /// Messages dropped: with a queue the client gave up on, or refused by the stream.
    pub(crate) dropped: u64,
    /// The stream whose channels may take the queues (the one being set up or live).
    serial: Option<u64>,
}

impl Outbox {
    pub(crate) fn new(
        channels: &[u8],
        max_bytes: usize,
        max_messages: usize,
        max_message: usize,
    ) -> Self {
        let mut o = Outbox {
            lanes: Vec::new(),
            max_bytes,
            max_messages,
            max_message,
            dropped: 0,
            serial: None,
        };
        o.set_channels(channels);
        o
    }

    /// Keeps the lanes of `channels` (queued messages included) and adds new ones.
    pub(crate) fn set_channels(&mut self, channels: &[u8]) {
        let mut lanes = Vec::with_capacity(channels.len());
        for &id in channels {
            match self.lanes.iter().position(|l| l.id == id) {
                Some(i) => lanes.push(self.lanes.swap_remove(i)),
                None => lanes.push(Lane { id, ..Lane::default() }),
            }
        }
        for gone in &self.lanes {
            self.dropped += gone.pending.len() as u64;
        }
        self.lanes = lanes;
    }

    fn lane(&mut self, id: u8) -> Option<&mut Lane> {
        self.lanes.iter_mut().find(|l| l.id == id)
    }

    /// Writes or queues a message. `queue_ok`: the client may queue (connect-on-demand).
    pub(crate) fn write(
        &mut self,
        id: u8,
        ty: u8,
        data: Bytes,
        queue_ok: bool,
        stage: Stage,
    ) -> Result<(), WriteError> {
        let (max_bytes, max_messages) = (self.max_bytes, self.max_messages);
        if data.len() > self.max_message {
            let limit = self.max_message;
            return Err(WriteError::TooLarge(data, limit));
        }
        let lane = self.lane(id).ok_or(WriteError::NotActive(id as char))?;
        if lane.pending.is_empty()
            && let Some((_, h)) = &lane.live
        {
            match h.write(ty, data) {
                Ok(()) => return Ok(()),
                Err(HandleWriteError::Full(d)) => return Err(WriteError::Full(d)),
                Err(HandleWriteError::TooLarge(d)) => {
                    return Err(WriteError::TooLarge(d, h.max_message()));
                }
                // The stream ended under us: queue it for the next one, if allowed.
                Err(HandleWriteError::Closed(d)) => {
                    lane.live = None;
                    return queue(lane, ty, d, queue_ok, stage, max_bytes, max_messages);
                }
                Err(e) => return Err(WriteError::Stream(e)),
            }
        }
        // Earlier messages still wait: this one goes behind them, whatever the stage.
        let queue_ok = queue_ok || !lane.pending.is_empty();
        queue(lane, ty, data, queue_ok, stage, max_bytes, max_messages)
    }

    /// Forgets the live handles of stream `serial` (it ended).
    pub(crate) fn stream_ended(&mut self, serial: u64) {
        for l in &mut self.lanes {
            if l.live.as_ref().is_some_and(|(s, _)| *s == serial) {
                l.live = None;
            }
        }
    }

    /// Forgets every live handle (the stream is being torn down): no stream takes the
    /// queues until [`expect_stream`](Self::expect_stream).
    pub(crate) fn unlive(&mut self) {
        self.serial = None;
        for l in &mut self.lanes {
            l.live = None;
        }
    }

    /// Stream `serial` is being set up: its channels, and no other stream's, take the
    /// queues.
    pub(crate) fn expect_stream(&mut self, serial: u64) {
        self.unlive();
        self.serial = Some(serial);
    }

    /// The lane of channel `id` for stream `serial`, if that stream is the expected one.
    fn lane_of(&mut self, serial: u64, id: u8) -> Option<&mut Lane> {
        if self.serial != Some(serial) {
            return None;
        }
        self.lane(id)
    }

    /// Drops every queued message (the client gave up); returns how many.
    pub(crate) fn clear(&mut self) -> u64 {
        let mut n = 0;
        for l in &mut self.lanes {
            n += l.pending.len() as u64;
            l.pending.clear();
            l.bytes = 0;
        }
        self.dropped += n;
        n
    }

    /// Messages waiting for a stream.
    pub(crate) fn queued(&self) -> usize {
        self.lanes.iter().map(|l| l.pending.len()).sum()
    }
}

fn queue(
    lane: &mut Lane,
    ty: u8,
    data: Bytes,
    queue_ok: bool,
    stage: Stage,
    max_bytes: usize,
    max_messages: usize,
) -> Result<(), WriteError> {
    if !queue_ok {
        return Err(WriteError::WrongStage(stage));
    }
    // One message always fits an empty queue, as in the stream's own queues.
    if !lane.pending.is_empty()
        && (lane.pending.len() >= max_messages || lane.bytes + data.len() > max_bytes)
    {
        return Err(WriteError::Full(data));
    }
    lane.bytes += data.len();
    lane.pending.push_back((ty, data));
    Ok(())
}

/// Moves queued messages into the channel while it takes them; `packet_out` brings the
/// rest. Returns how many the stream refused (a message over the session's limit, which
/// the node sets and may set lower than ours); they are dropped and counted.
fn drain(lane: &mut Lane, ch: &mut Channel<'_>) -> u64 {
    let mut refused = 0;
    while let Some(len) = lane.pending.front().map(|(_, d)| d.len()) {
        if !ch.can_write(len) {
            break;
        }
        let (ty, data) = lane.pending.pop_front().expect("front was Some");
        lane.bytes -= data.len();
        match ch.write(ty, data) {
            Ok(()) => {}
            Err(WriteError2::TooLarge) => refused += 1,
            // The session is closing: the rest waits for the next stream.
            Err(_) => break,
        }
    }
    refused
}

/// Receives whole messages of channels that have no handler of their own.
pub type MessageFn = Box<dyn FnMut(u8, Message) + Send>;

/// The client's side of a channel: it drains the lane into the stream, and hands what
/// arrives to the application's handler, or to the client's message callback.
pub(crate) struct LaneHandler {
    pub(crate) serial: u64,
    pub(crate) out: Arc<Mutex<Outbox>>,
    pub(crate) inner: Option<Box<dyn ChannelHandler>>,
    pub(crate) sink: Arc<Mutex<Option<MessageFn>>>,
}

impl LaneHandler {
    fn drain(&self, ch: &mut Channel<'_>, go_live: bool) {
        let mut out = self.out.lock();
        let Some(lane) = out.lane_of(self.serial, ch.id()) else { return };
        if go_live {
            lane.live = Some((self.serial, ch.handle()));
        }
        let refused = drain(lane, ch);
        if refused > 0 {
            tracing::warn!(refused, channel = %(ch.id() as char), "queued messages over the node's size limit dropped");
            out.dropped += refused;
        }
    }
}

impl ChannelHandler for LaneHandler {
    fn on_new(&mut self, ch: &mut Channel<'_>) {
        self.drain(ch, true);
        if let Some(h) = &mut self.inner {
            h.on_new(ch);
        }
    }

    fn packet_in(&mut self, ch: &mut Channel<'_>, msg: Message) {
        match &mut self.inner {
            Some(h) => h.packet_in(ch, msg),
            None => {
                if let Some(f) = self.sink.lock().as_mut() {
                    f(ch.id(), msg);
                }
            }
        }
    }

    fn packet_out(&mut self, ch: &mut Channel<'_>) {
        self.drain(ch, false);
        if let Some(h) = &mut self.inner {
            h.packet_out(ch);
        }
    }

    fn on_delete(&mut self, id: u8, session: &dap_stream::SessionInfo) {
        self.out.lock().stream_ended(self.serial);
        if let Some(h) = &mut self.inner {
            h.on_delete(id, session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_bounded_and_ordered() {
        let mut o = Outbox::new(b"EP", 10, 3, 100);
        let st = Stage::Begin;
        assert!(matches!(
            o.write(b'X', 0, Bytes::new(), true, st),
            Err(WriteError::NotActive('X'))
        ));
        assert!(matches!(
            o.write(b'E', 0, Bytes::from_static(b"a"), false, st),
            Err(WriteError::WrongStage(Stage::Begin))
        ));
        // One message always fits an empty queue, even over the byte bound.
        o.write(b'E', 1, Bytes::from(vec![0; 50]), true, st).unwrap();
        assert!(matches!(
            o.write(b'E', 1, Bytes::from_static(b"b"), true, st),
            Err(WriteError::Full(_))
        ));
        o.write(b'P', 1, Bytes::from_static(b"1"), true, st).unwrap();
        o.write(b'P', 1, Bytes::from_static(b"2"), true, st).unwrap();
        o.write(b'P', 1, Bytes::from_static(b"3"), true, st).unwrap();
        assert!(matches!(
            o.write(b'P', 1, Bytes::from_static(b"4"), true, st),
            Err(WriteError::Full(_))
        ));
        let too_large = o.write(b'P', 1, Bytes::from(vec![0; 101]), true, st).unwrap_err();
        assert!(matches!(too_large, WriteError::TooLarge(_, 100)));
        assert_eq!(too_large.to_string(), "a message of 101 bytes is over the limit of 100 bytes");
        assert_eq!(o.queued(), 4);
        o.set_channels(b"P");
        assert_eq!(o.queued(), 3);
        assert_eq!(o.dropped, 1);
        let order: Vec<_> = o.lanes[0].pending.iter().map(|(_, d)| d.clone()).collect();
        assert_eq!(
            order,
            vec![Bytes::from_static(b"1"), Bytes::from_static(b"2"), Bytes::from_static(b"3")]
        );
        assert_eq!(o.clear(), 3);
        // Once messages wait, a later one queues behind them even without queue_ok.
        o.write(b'P', 1, Bytes::from_static(b"x"), true, st).unwrap();
        o.write(b'P', 1, Bytes::from_static(b"y"), false, st).unwrap();
    }
}
