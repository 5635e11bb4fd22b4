//! The built-in publish/subscribe channel `'P'`: a message published to a topic reaches
//! every session subscribed to it, on every worker, in order per publisher.
//!
//! The wire format (`docs/PROTOCOL.md` §10) is a channel message type byte and a body;
//! [`PubSubMsg`] encodes and decodes it, sans-IO, for servers and clients alike.
//!
//! # How it works
//!
//! One [`Broker`] is shared by every session of a server (`Arc`): a map from topic to its
//! subscribers, each a [`ChannelHandle`] (which is `Send` and wakes the subscriber's
//! worker). A PUBLISH takes the topic's subscriber list under the broker's lock (one
//! `Arc` clone: the list is copied on subscribe and unsubscribe, never on publish), then
//! queues the MESSAGE to each subscriber's handle outside the lock. Handle queues are FIFO
//! and one publisher's messages are queued one after another from its worker, so every
//! subscriber sees one publisher's messages in the order they were published. The ACK goes
//! back to the publisher once the message is queued to every subscriber: an acknowledged
//! message is in every subscriber's queue, and a stream drains its queues before it closes
//! (see [`StreamServer::drain`](crate::StreamServer::drain)).
//!
//! # Slow subscribers
//!
//! Every queue is bounded. When a subscriber's queue is full, the message is not dropped
//! silently and the publisher is not blocked (that would let one slow reader stall a worker
//! and every publisher on it): as Redis does with its pub/sub output limit, the slow
//! subscriber is *dropped from that topic*. It is removed at once, counted
//! ([`PubSubStatsSnapshot::slow_dropped`]), left out of the ACK's `delivered` count and
//! counted in its `dropped`, and told with an ERROR `slow-subscriber` naming the topic as
//! soon as its queue has room. A client that gets that error knows it missed messages on
//! the topic from that point and may subscribe again.
//!
//! Bounds: topics ([`BrokerConfig::max_topics`]), subscribers per topic, subscriptions per
//! session, topic length; messages are bounded by the session's message limit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::channel::{
    Channel, ChannelHandle, ChannelHandler, ChannelProcs, HandleWriteError, Message,
};

/// The pub/sub channel's id.
pub const PUBSUB: u8 = b'P';

/// The longest topic the wire format carries (a server may set a lower bound).
pub const MAX_TOPIC_LEN: usize = 255;

/// Message type bytes of channel `'P'`.
pub mod ty {
    /// Client → server: subscribe to a topic.
    pub const SUBSCRIBE: u8 = 0x01;
    /// Client → server: unsubscribe from a topic.
    pub const UNSUBSCRIBE: u8 = 0x02;
    /// Client → server: publish a payload to a topic.
    pub const PUBLISH: u8 = 0x03;
    /// Server → client: a message published to a subscribed topic.
    pub const MESSAGE: u8 = 0x81;
    /// Server → client: a PUBLISH was queued to every subscriber.
    pub const ACK: u8 = 0x82;
    /// Server → client: a request was refused, or a subscription was dropped.
    pub const ERROR: u8 = 0x83;
    /// Server → client: a SUBSCRIBE took effect.
    pub const SUBSCRIBED: u8 = 0x84;
    /// Server → client: an UNSUBSCRIBE took effect.
    pub const UNSUBSCRIBED: u8 = 0x85;
}

/// A topic name: 1 to [`MAX_TOPIC_LEN`] bytes (any bytes; UTF-8 is customary).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Box<[u8]>);

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Topic({:?})", String::from_utf8_lossy(&self.0))
    }
}

/// A topic that is empty or longer than [`MAX_TOPIC_LEN`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a topic must be 1 to 255 bytes")]
pub struct BadTopic;

impl Topic {
    /// A topic from its bytes.
    ///
    /// # Errors
    /// [`BadTopic`] when empty or over [`MAX_TOPIC_LEN`] bytes.
    pub fn new(name: impl AsRef<[u8]>) -> Result<Self, BadTopic> {
        let name = name.as_ref();
        if name.is_empty() || name.len() > MAX_TOPIC_LEN {
            return Err(BadTopic);
        }
        Ok(Topic(name.into()))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a topic has at least one byte.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why a request was refused (the ERROR message's code byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 1: the message could not be decoded, or has a type a client may not send.
    Malformed,
    /// 2: the topic is longer than the server allows.
    BadTopic,
    /// 3: the server holds as many topics as it may.
    TooManyTopics,
    /// 4: the topic has as many subscribers as it may.
    TooManySubscribers,
    /// 5: this session has as many subscriptions as it may.
    TooManySubscriptions,
    /// 6: this session's queue was full when a message for the topic came: it was
    /// unsubscribed from the topic and missed messages from that point.
    SlowSubscriber,
    /// A code this version does not know.
    Other(u8),
}

impl ErrorCode {
    /// The code byte.
    pub fn code(self) -> u8 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::BadTopic => 2,
            ErrorCode::TooManyTopics => 3,
            ErrorCode::TooManySubscribers => 4,
            ErrorCode::TooManySubscriptions => 5,
            ErrorCode::SlowSubscriber => 6,
            ErrorCode::Other(c) => c,
        }
    }

    /// The code of byte `c`.
    pub fn from_code(c: u8) -> Self {
        match c {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::BadTopic,
            3 => ErrorCode::TooManyTopics,
            4 => ErrorCode::TooManySubscribers,
            5 => ErrorCode::TooManySubscriptions,
            6 => ErrorCode::SlowSubscriber,
            c => ErrorCode::Other(c),
        }
    }

    /// A short name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::BadTopic => "bad_topic",
            ErrorCode::TooManyTopics => "too_many_topics",
            ErrorCode::TooManySubscribers => "too_many_subscribers",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::SlowSubscriber => "slow_subscriber",
            ErrorCode::Other(_) => "other",
        }
    }
}

/// One message of channel `'P'`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PubSubMsg {
    /// Client → server: subscribe to `topic`; answered SUBSCRIBED or ERROR.
    Subscribe {
        /// The topic.
        topic: Topic,
    },
    /// Client → server: unsubscribe from `topic`; answered UNSUBSCRIBED (also when the
    /// session was not subscribed).
    Unsubscribe {
        /// The topic.
        topic: Topic,
    },
    /// Client → server: publish `payload` to `topic`; answered ACK or ERROR with `seq`.
    Publish {
        /// The publisher's sequence number, echoed in the answer (the server does not
        /// interpret it; clients count up from 1).
        seq: u64,
        /// The topic.
        topic: Topic,
        /// The payload.
        payload: Vec<u8>,
    },
    /// Server → client: a message published to a subscribed topic.
    Message {
        /// The topic.
        topic: Topic,
        /// The payload.
        payload: Vec<u8>,
    },
    /// Server → client: PUBLISH `seq` was queued to every subscriber of its topic.
    Ack {
        /// The PUBLISH's sequence number.
        seq: u64,
        /// Subscribers it was queued to.
        delivered: u32,
        /// Slow subscribers dropped from the topic instead (each told with an ERROR).
        dropped: u32,
    },
    /// Server → client: a refusal, or a dropped subscription.
    Error {
        /// Why.
        code: ErrorCode,
        /// The refused PUBLISH's sequence number (0 otherwise).
        seq: u64,
        /// The topic concerned, when there is one.
        topic: Option<Topic>,
    },
    /// Server → client: the session is subscribed to `topic`.
    Subscribed {
        /// The topic.
        topic: Topic,
    },
    /// Server → client: the session is not subscribed to `topic` (any more).
    Unsubscribed {
        /// The topic.
        topic: Topic,
    },
}

/// Why a `'P'` message could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PubSubDecodeError {
    /// A type byte this version does not know.
    #[error("unknown pub/sub message type {0:#04x}")]
    UnknownType(u8),
    /// The body ends before its fields do.
    #[error("pub/sub message truncated")]
    Truncated,
    /// A topic that is empty (where one is required) or longer than the body.
    #[error("bad topic in pub/sub message")]
    BadTopic,
    /// Bytes after the last field of a fixed-size message.
    #[error("trailing bytes in pub/sub message")]
    Trailing,
}

/// Reads `u8 length || topic` at the start of `b`: the topic (`None` for length 0) and the
/// rest.
fn take_topic(b: &[u8]) -> Result<(Option<Topic>, &[u8]), PubSubDecodeError> {
    let (&n, rest) = b.split_first().ok_or(PubSubDecodeError::Truncated)?;
    let n = n as usize;
    if rest.len() < n {
        return Err(PubSubDecodeError::Truncated);
    }
    let topic = if n == 0 { None } else { Some(Topic(rest[..n].into())) };
    Ok((topic, &rest[n..]))
}

fn take_u64(b: &[u8]) -> Result<(u64, &[u8]), PubSubDecodeError> {
    let (head, rest) = b.split_first_chunk::<8>().ok_or(PubSubDecodeError::Truncated)?;
    Ok((u64::from_be_bytes(*head), rest))
}

fn take_u32(b: &[u8]) -> Result<(u32, &[u8]), PubSubDecodeError> {
    let (head, rest) = b.split_first_chunk::<4>().ok_or(PubSubDecodeError::Truncated)?;
    Ok((u32::from_be_bytes(*head), rest))
}

fn whole_topic(b: &[u8]) -> Result<Topic, PubSubDecodeError> {
    Topic::new(b).map_err(|_| PubSubDecodeError::BadTopic)
}

fn put_topic(out: &mut Vec<u8>, topic: Option<&Topic>) {
    // A Topic is at most 255 bytes by construction.
    let t = topic.map_or(&[][..], Topic::as_bytes);
    out.push(t.len() as u8);
    out.extend_from_slice(t);
}

impl PubSubMsg {
    /// The channel message type byte.
    pub fn ty(&self) -> u8 {
        match self {
            PubSubMsg::Subscribe { .. } => ty::SUBSCRIBE,
            PubSubMsg::Unsubscribe { .. } => ty::UNSUBSCRIBE,
            PubSubMsg::Publish { .. } => ty::PUBLISH,
            PubSubMsg::Message { .. } => ty::MESSAGE,
            PubSubMsg::Ack { .. } => ty::ACK,
            PubSubMsg::Error { .. } => ty::ERROR,
            PubSubMsg::Subscribed { .. } => ty::SUBSCRIBED,
            PubSubMsg::Unsubscribed { .. } => ty::UNSUBSCRIBED,
        }
    }

    /// Whether a client may send this message (the others come from the server).
    pub fn is_request(&self) -> bool {
        self.ty() < 0x80
    }

    /// The message body (send it with [`ty`](Self::ty) as the channel message type).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            PubSubMsg::Subscribe { topic }
            | PubSubMsg::Unsubscribe { topic }
            | PubSubMsg::Subscribed { topic }
            | PubSubMsg::Unsubscribed { topic } => out.extend_from_slice(topic.as_bytes()),
            PubSubMsg::Publish { seq, topic, payload } => {
                out.reserve(9 + topic.len() + payload.len());
                out.extend_from_slice(&seq.to_be_bytes());
                put_topic(&mut out, Some(topic));
                out.extend_from_slice(payload);
            }
            PubSubMsg::Message { topic, payload } => return message_body(topic, payload),
            PubSubMsg::Ack { seq, delivered, dropped } => {
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&delivered.to_be_bytes());
                out.extend_from_slice(&dropped.to_be_bytes());
            }
            PubSubMsg::Error { code, seq, topic } => {
                out.push(code.code());
                out.extend_from_slice(&seq.to_be_bytes());
                put_topic(&mut out, topic.as_ref());
            }
        }
        out
    }

    /// Decodes the body of a message of type `ty`. Never panics, whatever the bytes.
    ///
    /// # Errors
    /// [`PubSubDecodeError`].
    pub fn decode(ty: u8, body: &[u8]) -> Result<Self, PubSubDecodeError> {
        let fixed_end = |rest: &[u8]| {
            if rest.is_empty() { Ok(()) } else { Err(PubSubDecodeError::Trailing) }
        };
        Ok(match ty {
            ty::SUBSCRIBE => PubSubMsg::Subscribe { topic: whole_topic(body)? },
            ty::UNSUBSCRIBE => PubSubMsg::Unsubscribe { topic: whole_topic(body)? },
            ty::SUBSCRIBED => PubSubMsg::Subscribed { topic: whole_topic(body)? },
            ty::UNSUBSCRIBED => PubSubMsg::Unsubscribed { topic: whole_topic(body)? },
            ty::PUBLISH => {
                let (seq, rest) = take_u64(body)?;
                let (topic, payload) = take_topic(rest)?;
                let topic = topic.ok_or(PubSubDecodeError::BadTopic)?;
                PubSubMsg::Publish { seq, topic, payload: payload.to_vec() }
            }
            ty::MESSAGE => {
                let (topic, payload) = take_topic(body)?;
                let topic = topic.ok_or(PubSubDecodeError::BadTopic)?;
                PubSubMsg::Message { topic, payload: payload.to_vec() }
            }
            ty::ACK => {
                let (seq, rest) = take_u64(body)?;
                let (delivered, rest) = take_u32(rest)?;
                let (dropped, rest) = take_u32(rest)?;
                fixed_end(rest)?;
                PubSubMsg::Ack { seq, delivered, dropped }
            }
            ty::ERROR => {
                let (&code, rest) = body.split_first().ok_or(PubSubDecodeError::Truncated)?;
                let (seq, rest) = take_u64(rest)?;
                let (topic, rest) = take_topic(rest)?;
                fixed_end(rest)?;
                PubSubMsg::Error { code: ErrorCode::from_code(code), seq, topic }
            }
            other => return Err(PubSubDecodeError::UnknownType(other)),
        })
    }
}

/// The body of a MESSAGE, built once per publish and shared by every subscriber's queue.
fn message_body(topic: &Topic, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + topic.len() + payload.len());
    put_topic(&mut out, Some(topic));
    out.extend_from_slice(payload);
    out
}

/// Bounds of a [`Broker`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Topics with at least one subscriber, at most (10,000).
    pub max_topics: usize,
    /// Subscribers of one topic, at most (10,000).
    pub max_subscribers_per_topic: usize,
    /// Subscriptions of one session, at most (256).
    pub max_subscriptions_per_session: usize,
    /// The longest topic accepted, in bytes, at most [`MAX_TOPIC_LEN`] (255).
    pub max_topic_len: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_topics: 10_000,
            max_subscribers_per_topic: 10_000,
            max_subscriptions_per_session: 256,
            max_topic_len: MAX_TOPIC_LEN,
        }
    }
}

/// Live counters of a [`Broker`].
#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    delivered: AtomicU64,
    slow_dropped: AtomicU64,
    subscribes: AtomicU64,
    unsubscribes: AtomicU64,
    /// Refusals sent, by [`ErrorCode::code`] 1..=5 (index 0 unused).
    refused: [AtomicU64; 6],
}

/// A copy of a [`Broker`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PubSubStatsSnapshot {
    /// Topics with at least one subscriber now.
    pub topics: u64,
    /// Subscriptions now (a session subscribed to two topics counts twice).
    pub subscriptions: u64,
    /// PUBLISH messages taken (each was answered ACK).
    pub published: u64,
    /// MESSAGE copies queued to subscribers.
    pub delivered: u64,
    /// Subscribers dropped from a topic because their queue was full.
    pub slow_dropped: u64,
    /// SUBSCRIBE requests that took effect.
    pub subscribes: u64,
    /// Subscriptions ended by UNSUBSCRIBE or by the session's end.
    pub unsubscribes: u64,
    /// Requests refused, by code: malformed, bad_topic, too_many_topics,
    /// too_many_subscribers, too_many_subscriptions.
    pub refused: [u64; 5],
}

impl PubSubStatsSnapshot {
    /// The codes of [`refused`](Self::refused), in order.
    pub const REFUSAL_CODES: [ErrorCode; 5] = [
        ErrorCode::Malformed,
        ErrorCode::BadTopic,
        ErrorCode::TooManyTopics,
        ErrorCode::TooManySubscribers,
        ErrorCode::TooManySubscriptions,
    ];
}

/// What a subscriber shares with the broker: its handle, and the topics it was dropped from
/// for being slow (to be told once its queue has room).
struct SubShared {
    handle: ChannelHandle,
    lagged_flag: AtomicBool,
    lagged: Mutex<Vec<Topic>>,
}

#[derive(Clone)]
struct Sub {
    id: u64,
    shared: Arc<SubShared>,
}

/// Topics and their subscribers, shared by every session of a server; see the
/// [module docs](self).
pub struct Broker {
    /// Topic → subscribers. Held only to look up, or to replace a list: no write to a
    /// channel happens under it.
    topics: Mutex<HashMap<Topic, Arc<[Sub]>>>,
    config: BrokerConfig,
    counters: Counters,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("topics", &self.topics.lock().len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one publish did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Subscribers the message was queued to.
    pub delivered: u32,
    /// Slow subscribers dropped from the topic instead.
    pub dropped: u32,
}

impl Broker {
    /// An empty broker; `max_topic_len` is capped at [`MAX_TOPIC_LEN`].
    pub fn new(mut config: BrokerConfig) -> Arc<Self> {
        config.max_topic_len = config.max_topic_len.min(MAX_TOPIC_LEN);
        Arc::new(Broker {
            topics: Mutex::new(HashMap::new()),
            config,
            counters: Counters::default(),
            next_id: AtomicU64::new(1),
        })
    }

    /// The bounds.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> PubSubStatsSnapshot {
        let (topics, subscriptions) = {
            let t = self.topics.lock();
            (t.len() as u64, t.values().map(|s| s.len() as u64).sum())
        };
        let c = &self.counters;
        PubSubStatsSnapshot {
            topics,
            subscriptions,
            published: c.published.load(Relaxed),
            delivered: c.delivered.load(Relaxed),
            slow_dropped: c.slow_dropped.load(Relaxed),
            subscribes: c.subscribes.load(Relaxed),
            unsubscribes: c.unsubscribes.load(Relaxed),
            refused: std::array::from_fn(|i| c.refused[i + 1].load(Relaxed)),
        }
    }

    fn refused(&self, code: ErrorCode) {
        if let Some(c) = self.counters.refused.get(code.code() as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    fn subscribe(&self, topic: &Topic, sub: &Sub) -> Result<(), ErrorCode> {
        let mut topics = self.topics.lock();
        let list: &[Sub] = match topics.get(topic) {
            Some(list) => list,
            None if topics.len() >= self.config.max_topics => {
                return Err(ErrorCode::TooManyTopics);
            }
            None => &[],
        };
        if list.iter().any(|s| s.id == sub.id) {
            return Ok(());
        }
        if list.len() >= self.config.max_subscribers_per_topic {
            return Err(ErrorCode::TooManySubscribers);
        }
        let mut new = Vec::with_capacity(list.len() + 1);
        new.extend(list.iter().cloned());
        new.push(sub.clone());
        topics.insert(topic.clone(), new.into());
        self.counters.subscribes.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Removes subscriber `id` from `topic`; returns whether it was there.
    fn unsubscribe(&self, topic: &Topic, id: u64) -> bool {
        let mut topics = self.topics.lock();
        let Some(list) = topics.get(topic) else { return false };
        if !list.iter().any(|s| s.id == id) {
            return false;
        }
        let rest: Vec<Sub> = list.iter().filter(|s| s.id != id).cloned().collect();
        if rest.is_empty() {
            topics.remove(topic);
        } else {
            topics.insert(topic.clone(), rest.into());
        }
        self.counters.unsubscribes.fetch_add(1, Relaxed);
        true
    }

    /// Queues `payload` on `topic` to every subscriber, in this caller's order.
    fn publish(&self, topic: &Topic, payload: &[u8]) -> PublishOutcome {
        self.counters.published.fetch_add(1, Relaxed);
        let Some(subs) = self.topics.lock().get(topic).cloned() else {
            return PublishOutcome::default();
        };
        let body = Bytes::from(message_body(topic, payload));
        let mut out = PublishOutcome::default();
        for s in subs.iter() {
            if s.shared.lagged_flag.load(Relaxed) && s.shared.lagged.lock().contains(topic) {
                // Dropped from this topic by a concurrent publish: it is being told.
                continue;
            }
            match s.shared.handle.write(ty::MESSAGE, body.clone()) {
                Ok(()) => out.delivered += 1,
                Err(HandleWriteError::Closed(_)) => {
                    // The session ended; its handler unsubscribes it. Nothing to deliver to.
                    self.unsubscribe(topic, s.id);
                }
                Err(_) => {
                    // Full (or a smaller message limit): drop the subscriber from the topic
                    // and tell it, never lose the message silently.
                    out.dropped += 1;
                    if self.unsubscribe(topic, s.id) {
                        self.counters.slow_dropped.fetch_add(1, Relaxed);
                        tracing::debug!(?topic, "slow subscriber dropped from topic");
                        s.shared.lagged.lock().push(topic.clone());
                        s.shared.lagged_flag.store(true, Relaxed);
                    }
                }
            }
        }
        self.counters.delivered.fetch_add(out.delivered as u64, Relaxed);
        out
    }
}

/// The `'P'` channel handler of one session.
pub struct PubSubChannel {
    broker: Arc<Broker>,
    sub: Option<Sub>,
    topics: HashSet<Topic>,
    /// Answers that did not fit yet (reading is off while any wait).
    pending: VecDeque<(u8, Vec<u8>)>,
}

impl std::fmt::Debug for PubSubChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubChannel")
            .field("topics", &self.topics.len())
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl PubSubChannel {
    /// A handler for one session, on `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        PubSubChannel { broker, sub: None, topics: HashSet::new(), pending: VecDeque::new() }
    }

    fn sub(&mut self, ch: &Channel<'_>) -> Sub {
        self.sub
            .get_or_insert_with(|| Sub {
                id: self.broker.next_id.fetch_add(1, Relaxed),
                shared: Arc::new(SubShared {
                    handle: ch.handle(),
                    lagged_flag: AtomicBool::new(false),
                    lagged: Mutex::new(Vec::new()),
                }),
            })
            .clone()
    }

    fn reply(&mut self, msg: PubSubMsg) {
        self.pending.push_back((msg.ty(), msg.encode()));
    }

    fn refuse(&mut self, code: ErrorCode, seq: u64, topic: Option<Topic>) {
        self.broker.refused(code);
        self.reply(PubSubMsg::Error { code, seq, topic });
    }

    fn handle(&mut self, ch: &Channel<'_>, msg: Message) {
        let req = match PubSubMsg::decode(msg.ty, &msg.data) {
            Ok(m) if m.is_request() => m,
            Ok(_) | Err(_) => {
                // The sequence number of a PUBLISH that does not decode further is still
                // readable when its first 8 bytes are there.
                let seq = match (msg.ty, msg.data.first_chunk::<8>()) {
                    (ty::PUBLISH, Some(s)) => u64::from_be_bytes(*s),
                    _ => 0,
                };
                return self.refuse(ErrorCode::Malformed, seq, None);
            }
        };
        let max_len = self.broker.config.max_topic_len;
        match req {
            PubSubMsg::Subscribe { topic } => {
                if topic.len() > max_len {
                    return self.refuse(ErrorCode::BadTopic, 0, Some(topic));
                }
                if !self.topics.contains(&topic) {
                    if self.topics.len() >= self.broker.config.max_subscriptions_per_session {
                        return self.refuse(ErrorCode::TooManySubscriptions, 0, Some(topic));
                    }
                    let sub = self.sub(ch);
                    if let Err(code) = self.broker.subscribe(&topic, &sub) {
                        return self.refuse(code, 0, Some(topic));
                    }
                    self.topics.insert(topic.clone());
                }
                self.reply(PubSubMsg::Subscribed { topic });
            }
            PubSubMsg::Unsubscribe { topic } => {
                if self.topics.remove(&topic)
                    && let Some(sub) = &self.sub
                {
                    self.broker.unsubscribe(&topic, sub.id);
                }
                self.reply(PubSubMsg::Unsubscribed { topic });
            }
            PubSubMsg::Publish { seq, topic, payload } => {
                if topic.len() > max_len {
                    return self.refuse(ErrorCode::BadTopic, seq, Some(topic));
                }
                let r = self.broker.publish(&topic, &payload);
                self.reply(PubSubMsg::Ack { seq, delivered: r.delivered, dropped: r.dropped });
            }
            // Server messages were refused above; this keeps the match total.
            _ => self.refuse(ErrorCode::Malformed, 0, None),
        }
    }

    /// Queues an ERROR for each topic this session was dropped from.
    fn tell_lagged(&mut self) {
        let Some(sub) = &self.sub else { return };
        if !sub.shared.lagged_flag.swap(false, Relaxed) {
            return;
        }
        let lagged = std::mem::take(&mut *sub.shared.lagged.lock());
        for topic in lagged {
            self.topics.remove(&topic);
            let code = ErrorCode::SlowSubscriber;
            self.reply(PubSubMsg::Error { code, seq: 0, topic: Some(topic) });
        }
    }

    /// Writes waiting answers in order; returns whether all went.
    fn drain(&mut self, ch: &mut Channel<'_>) -> bool {
        while let Some(len) = self.pending.front().map(|m| m.1.len()) {
            if !ch.can_write(len) {
                return false;
            }
            let Some((ty, body)) = self.pending.pop_front() else { break };
            // Cannot block (checked) nor be too large (answers are small); an error means
            // the session is going.
            if ch.write(ty, body).is_err() {
                self.pending.clear();
                return true;
            }
        }
        true
    }
}

impl ChannelHandler for PubSubChannel {
    fn on_new(&mut self, ch: &mut Channel<'_>) {
        // packet_out whenever the queue has room: that is when a slow subscriber is told.
        ch.set_ready_to_write(true);
    }

    fn packet_in(&mut self, ch: &mut Channel<'_>, msg: Message) {
        self.tell_lagged();
        self.handle(ch, msg);
        if !self.drain(ch) {
            ch.set_ready_to_read(false);
        }
    }

    fn packet_out(&mut self, ch: &mut Channel<'_>) {
        self.tell_lagged();
        if self.drain(ch) && !ch.is_ready_to_read() {
            ch.set_ready_to_read(true);
        }
    }

    fn on_delete(&mut self, _id: u8, _session: &crate::channel::SessionInfo) {
        if let Some(sub) = self.sub.take() {
            for topic in self.topics.drain() {
                self.broker.unsubscribe(&topic, sub.id);
            }
        }
    }
}

/// Registers the pub/sub channel under `'P'`, every session sharing `broker`.
pub fn register(procs: &mut ChannelProcs, broker: Arc<Broker>) {
    procs
        .ch_proc_add(PUBSUB, move |_| Box::new(PubSubChannel::new(broker.clone())))
        .expect("'P' is a valid id");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    #[test]
    fn every_message_round_trips() {
        let msgs = [
            PubSubMsg::Subscribe { topic: t("news") },
            PubSubMsg::Unsubscribe { topic: t("news") },
            PubSubMsg::Publish { seq: 7, topic: t("a/b"), payload: b"hello".to_vec() },
            PubSubMsg::Publish { seq: u64::MAX, topic: t("x"), payload: Vec::new() },
            PubSubMsg::Message { topic: t("a/b"), payload: b"hello".to_vec() },
            PubSubMsg::Ack { seq: 7, delivered: 3, dropped: 1 },
            PubSubMsg::Error { code: ErrorCode::TooManyTopics, seq: 0, topic: Some(t("z")) },
            PubSubMsg::Error { code: ErrorCode::Malformed, seq: 9, topic: None },
            PubSubMsg::Error { code: ErrorCode::Other(200), seq: 1, topic: None },
            PubSubMsg::Subscribed { topic: t(&"t".repeat(255)) },
            PubSubMsg::Unsubscribed { topic: t("news") },
        ];
        for m in msgs {
            let body = m.encode();
            assert_eq!(PubSubMsg::decode(m.ty(), &body), Ok(m.clone()), "{m:?}");
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let m = PubSubMsg::Publish { seq: 1, topic: t("ab"), payload: b"x".to_vec() };
        assert_eq!(m.encode(), [0, 0, 0, 0, 0, 0, 0, 1, 2, b'a', b'b', b'x']);
        let a = PubSubMsg::Ack { seq: 2, delivered: 3, dropped: 0 };
        assert_eq!(a.encode(), [0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0]);
        let e = PubSubMsg::Error { code: ErrorCode::SlowSubscriber, seq: 0, topic: Some(t("q")) };
        assert_eq!(e.encode(), [6, 0, 0, 0, 0, 0, 0, 0, 0, 1, b'q']);
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        use PubSubDecodeError::*;
        assert_eq!(PubSubMsg::decode(ty::SUBSCRIBE, b""), Err(BadTopic));
        assert_eq!(PubSubMsg::decode(ty::SUBSCRIBE, &[b'a'; 256]), Err(BadTopic));
        assert_eq!(PubSubMsg::decode(ty::PUBLISH, &[0; 7]), Err(Truncated));
        assert_eq!(PubSubMsg::decode(ty::PUBLISH, &[0; 8]), Err(Truncated));
        assert_eq!(PubSubMsg::decode(ty::PUBLISH, &[0; 9]), Err(BadTopic));
        assert_eq!(
            PubSubMsg::decode(ty::PUBLISH, &[0, 0, 0, 0, 0, 0, 0, 0, 5, b'a']),
            Err(Truncated)
        );
        assert_eq!(PubSubMsg::decode(ty::ACK, &[0; 17]), Err(Trailing));
        assert_eq!(PubSubMsg::decode(ty::ERROR, &[1; 3]), Err(Truncated));
        assert_eq!(PubSubMsg::decode(0x42, b"x"), Err(UnknownType(0x42)));
        // Every short prefix of every type, and some noise.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for ty in 0..=255u8 {
            for len in 0..40 {
                let body: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect();
                let _ = PubSubMsg::decode(ty, &body);
            }
        }
    }

    #[test]
    fn topics_are_bounded() {
        assert_eq!(Topic::new(""), Err(BadTopic));
        assert_eq!(Topic::new([0u8; 256]), Err(BadTopic));
        assert!(Topic::new([0u8; 255]).is_ok());
    }

    #[test]
    fn error_codes_round_trip() {
        for c in 0..=255u8 {
            assert_eq!(ErrorCode::from_code(c).code(), c);
        }
    }
}
