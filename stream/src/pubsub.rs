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
//! worker). A PUBLISH queues the MESSAGE to each subscriber's handle, then the ACK goes
//! back to the publisher: an acknowledged message is in every subscriber's queue, and a
//! stream drains its queues before it closes (see
//! [`StreamServer::drain`](crate::StreamServer::drain), and `docs/PROTOCOL.md` §10 for
//! what happens to a subscriber that does not read them before the server's grace period
//! ends).
//!
//! # Locks, order, and cost
//!
//! A lock per topic held across the fan-out, over a hash set of the topic's subscribers:
//! subscribing and unsubscribing cost O(1), and a publish O(1) per subscriber it reaches,
//! with no copy of the subscriber list. (A persistent, immutable set would keep publishes
//! lock-free, at O(log n) and an allocation per subscribe, and would lose the single order
//! per topic below; fan-out is short enough to hold a lock across.)
//!
//! - The topic map is split into 64 shards by the topic's hash, each behind its own
//!   mutex, held for one hash-map operation (look a topic up, add or remove it).
//! - Each topic has its own mutex over a hash map of its subscribers, keyed by
//!   subscriber id. SUBSCRIBE and UNSUBSCRIBE take it for one insert or remove: O(1),
//!   amortised over the map's growth and shrinking (a map at most a quarter full is
//!   halved, so a publish's walk over it stays proportional to its subscribers).
//! - A PUBLISH holds its topic's mutex while it queues the message to every subscriber.
//!   Queueing to a handle is a bounded push that never blocks (a full queue answers
//!   `Full` at once; waking the subscriber's worker is a non-blocking post), so the lock
//!   is held for O(subscribers) short steps; what it buys is
//!   that a topic's messages are queued in one order to all its subscribers (one total
//!   order per topic, which per-publisher order is a case of), and that a subscriber
//!   dropped for being slow is removed in the same pass, O(1), before the next publish to
//!   the topic can reach it.
//! - The shard's lock and a topic's are never held together: a topic whose last
//!   subscriber leaves is marked dead under its own lock, then taken out of the shard's
//!   map; a subscribe that finds a dead topic makes a new one. Publishes to different
//!   topics run in parallel; SUBSCRIBE to a topic waits at most for one publish to it.
//!
//! The copy-on-write list this replaces made a publish one `Arc` clone, but every
//! subscribe and unsubscribe a copy of the topic's list under one global lock: O(n) each,
//! O(n²) to fill a topic of n subscribers (50 million entry copies for 10,000).
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
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

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
    /// Subscriber entries written into topics' maps: one per subscribe, plus those moved
    /// when a map grows or shrinks. Not exported: tests check with it that adding and
    /// removing subscribers costs O(1) each (amortised), not a copy of the topic's list.
    entry_writes: AtomicU64,
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

/// Shards of the topic map. A power of two well above the worker count: two operations
/// on different topics rarely meet on a shard lock, and each holds it for one hash-map
/// operation.
const SHARDS: usize = 64;

/// A topic's subscribers, by subscriber id, behind the topic's own lock. A publish holds
/// it while it queues the message to each of them (a bounded, non-blocking push per
/// subscriber), so one topic's messages are queued in one order to every subscriber.
#[derive(Default)]
struct TopicSubs {
    subs: Mutex<HashMap<u64, Arc<SubShared>>>,
    /// Set (under `subs`' lock) when the last subscriber left: the entry is on its way out
    /// of the shard's map and takes no subscriber (a subscribe then makes a new entry).
    dead: AtomicBool,
}

/// One shard of the topic map.
type Shard = Mutex<HashMap<Topic, Arc<TopicSubs>>>;

/// Topics and their subscribers, shared by every session of a server; see the
/// [module docs](self).
pub struct Broker {
    /// Topic → its subscribers, split over [`SHARDS`] maps by the topic's hash. A shard's
    /// lock is held for one map operation, never together with a topic's lock, and no
    /// write to a channel happens under it.
    shards: Box<[Shard]>,
    /// Picks a topic's shard.
    hasher: RandomState,
    /// Live topics (reserved before one is added: never over `max_topics`; counted out
    /// when the last subscriber leaves).
    topics: AtomicUsize,
    /// Subscriptions in the topics' maps.
    subscriptions: AtomicUsize,
    config: BrokerConfig,
    counters: Counters,
    next_id: AtomicU64,
    /// Where this node's publishes also go (the cluster's other nodes), once set.
    relay: std::sync::OnceLock<Arc<dyn Relay>>,
}

/// Carries publishes to the other nodes of a cluster ([`Broker::relay_to`]).
pub trait Relay: Send + Sync + 'static {
    /// A message published on this node, after it was queued to this node's subscribers.
    /// Called on the publisher's worker, in publish order: must not block (queue it).
    fn forward(&self, topic: &Topic, payload: &[u8]);
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("topics", &self.topics.load(Relaxed))
            .field("subscriptions", &self.subscriptions.load(Relaxed))
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

/// A topic's map is shrunk when it is at most a quarter full (and larger than this), to
/// half its capacity: publishing walks the map's capacity, not only its entries.
const SHRINK_ABOVE: usize = 64;

/// Shrinks `subs` when it is mostly empty; returns the entries moved.
fn shrink(subs: &mut HashMap<u64, Arc<SubShared>>) -> u64 {
    if subs.capacity() > SHRINK_ABOVE && subs.len() < subs.capacity() / 4 {
        subs.shrink_to(subs.len() * 2);
        return subs.len() as u64;
    }
    0
}

impl Broker {
    /// An empty broker; `max_topic_len` is capped at [`MAX_TOPIC_LEN`].
    pub fn new(mut config: BrokerConfig) -> Arc<Self> {
        config.max_topic_len = config.max_topic_len.min(MAX_TOPIC_LEN);
        Arc::new(Broker {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            topics: AtomicUsize::new(0),
            subscriptions: AtomicUsize::new(0),
            config,
            counters: Counters::default(),
            next_id: AtomicU64::new(1),
            relay: std::sync::OnceLock::new(),
        })
    }

    /// The bounds.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> PubSubStatsSnapshot {
        let c = &self.counters;
        PubSubStatsSnapshot {
            topics: self.topics.load(Relaxed) as u64,
            subscriptions: self.subscriptions.load(Relaxed) as u64,
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

    fn shard(&self, topic: &Topic) -> &Shard {
        &self.shards[self.hasher.hash_one(topic) as usize % SHARDS]
    }

    /// The live entry of `topic`, made if there is none (`None`: `max_topics` reached).
    /// Only the shard's lock is taken.
    fn entry_or_new(&self, topic: &Topic) -> Option<Arc<TopicSubs>> {
        let mut shard = self.shard(topic).lock();
        match shard.get(topic) {
            Some(e) if !e.dead.load(Relaxed) => Some(e.clone()),
            _ => {
                let max = self.config.max_topics;
                self.topics.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)).ok()?;
                let e = Arc::new(TopicSubs::default());
                // A dead entry still in the map is replaced; its remover leaves this one.
                shard.insert(topic.clone(), e.clone());
                Some(e)
            }
        }
    }

    /// Marks `entry` dead if it has no subscriber (its lock is held: `subs`), counting the
    /// topic out; returns whether it did. The caller then calls [`Self::forget`].
    fn bury_if_empty(&self, entry: &TopicSubs, subs: &HashMap<u64, Arc<SubShared>>) -> bool {
        if subs.is_empty() && !entry.dead.swap(true, Relaxed) {
            self.topics.fetch_sub(1, Relaxed);
            return true;
        }
        false
    }

    /// Takes a dead `entry` of `topic` out of the shard's map (unless a new one replaced it).
    fn forget(&self, topic: &Topic, entry: &Arc<TopicSubs>) {
        let mut shard = self.shard(topic).lock();
        if shard.get(topic).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            shard.remove(topic);
        }
    }

    /// Adds `sub` to `topic`: O(1) (amortised: an insert into the shard's map when the
    /// topic is new, one into the topic's). The shard's lock and the topic's are never held
    /// together.
    fn subscribe(&self, topic: &Topic, sub: &Sub) -> Result<(), ErrorCode> {
        loop {
            let entry = self.entry_or_new(topic).ok_or(ErrorCode::TooManyTopics)?;
            let mut subs = entry.subs.lock();
            if entry.dead.load(Relaxed) {
                // Its last subscriber left after the lookup: look again.
                continue;
            }
            if subs.contains_key(&sub.id) {
                return Ok(());
            }
            if subs.len() >= self.config.max_subscribers_per_topic {
                // A topic made just now for this (a bound of 0) is not kept empty.
                if self.bury_if_empty(&entry, &subs) {
                    drop(subs);
                    self.forget(topic, &entry);
                }
                return Err(ErrorCode::TooManySubscribers);
            }
            let (len, cap) = (subs.len(), subs.capacity());
            subs.insert(sub.id, sub.shared.clone());
            // A growth moves every entry: amortised O(1) per insert.
            let moved = if subs.capacity() != cap { len as u64 } else { 0 };
            self.counters.entry_writes.fetch_add(1 + moved, Relaxed);
            self.subscriptions.fetch_add(1, Relaxed);
            self.counters.subscribes.fetch_add(1, Relaxed);
            return Ok(());
        }
    }

    /// Removes subscriber `id` from `topic`, and the topic once it has no subscriber;
    /// returns whether it was there. O(1) (amortised, with the map's shrinking).
    fn unsubscribe(&self, topic: &Topic, id: u64) -> bool {
        let Some(entry) = self.shard(topic).lock().get(topic).cloned() else { return false };
        let mut subs = entry.subs.lock();
        if subs.remove(&id).is_none() {
            return false;
        }
        self.counters.entry_writes.fetch_add(shrink(&mut subs), Relaxed);
        self.subscriptions.fetch_sub(1, Relaxed);
        self.counters.unsubscribes.fetch_add(1, Relaxed);
        if self.bury_if_empty(&entry, &subs) {
            drop(subs);
            self.forget(topic, &entry);
        }
        true
    }

    /// From now on, every message published on this node also goes to `relay` (once; a
    /// second call is ignored).
    pub fn relay_to(&self, relay: Arc<dyn Relay>) {
        let _ = self.relay.set(relay);
    }

    /// A message another node of the cluster published: queued to this node's subscribers
    /// as a local publish is (slow subscribers dropped and told), and not relayed again.
    pub fn deliver_relayed(&self, topic: &Topic, payload: &[u8]) -> PublishOutcome {
        self.queue(topic, payload)
    }

    /// A publish on this node: queued to its subscribers, then relayed.
    fn publish(&self, topic: &Topic, payload: &[u8]) -> PublishOutcome {
        let out = self.queue(topic, payload);
        if let Some(r) = self.relay.get() {
            r.forward(topic, payload);
        }
        out
    }

    /// Queues `payload` on `topic` to every subscriber, under the topic's lock: O(1) per
    /// subscriber reached, and O(1) per slow or closed subscriber dropped on the way.
    fn queue(&self, topic: &Topic, payload: &[u8]) -> PublishOutcome {
        self.counters.published.fetch_add(1, Relaxed);
        let Some(entry) = self.shard(topic).lock().get(topic).cloned() else {
            return PublishOutcome::default();
        };
        let body = Bytes::from(message_body(topic, payload));
        let mut out = PublishOutcome::default();
        let mut removed = 0usize;
        let emptied = {
            let mut subs = entry.subs.lock();
            subs.retain(|_, s| match s.handle.write(ty::MESSAGE, body.clone()) {
                Ok(()) => {
                    out.delivered += 1;
                    true
                }
                Err(HandleWriteError::Closed(_)) => {
                    // The session ended; its handler's unsubscribe finds it gone.
                    removed += 1;
                    false
                }
                Err(_) => {
                    // Full (or a smaller message limit): drop the subscriber from the topic
                    // and tell it, never lose the message silently.
                    removed += 1;
                    out.dropped += 1;
                    tracing::debug!(?topic, "slow subscriber dropped from topic");
                    s.lagged.lock().push(topic.clone());
                    s.lagged_flag.store(true, Relaxed);
                    false
                }
            });
            if removed > 0 {
                self.counters.entry_writes.fetch_add(shrink(&mut subs), Relaxed);
            }
            self.bury_if_empty(&entry, &subs)
        };
        if removed > 0 {
            self.subscriptions.fetch_sub(removed, Relaxed);
            self.counters.unsubscribes.fetch_add(removed as u64, Relaxed);
            self.counters.slow_dropped.fetch_add(out.dropped as u64, Relaxed);
        }
        if emptied {
            self.forget(topic, &entry);
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

    /// A subscriber whose handle queue holds `queue` bytes (no session behind it).
    fn sub(id: u64, queue: usize) -> (Sub, Arc<crate::channel::ChanShared>) {
        let chan = crate::channel::ChanShared::new(PUBSUB, queue, 1 << 20);
        let shared = Arc::new(SubShared {
            handle: ChannelHandle::new(chan.clone()),
            lagged_flag: AtomicBool::new(false),
            lagged: Mutex::new(Vec::new()),
        });
        (Sub { id, shared }, chan)
    }

    /// The payloads queued to a subscriber, in order (taken out of its queue).
    fn received(chan: &crate::channel::ChanShared) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        chan.drain(
            |_| true,
            |ty, body| {
                assert_eq!(ty, ty::MESSAGE);
                match PubSubMsg::decode(ty, &body) {
                    Ok(PubSubMsg::Message { payload, .. }) => out.push(payload),
                    other => panic!("not a MESSAGE: {other:?}"),
                }
            },
        );
        out
    }

    /// Filling a topic with 10,000 subscribers and emptying it again writes O(1) subscriber
    /// entries per operation (amortised), counted, not timed: the copy-on-write list
    /// before wrote n(n+1)/2 = 50,005,000 to fill it, and as many to empty it.
    #[test]
    fn a_topic_of_10_000_fills_and_empties_in_linear_work() {
        const N: usize = 10_000;
        let broker = Broker::new(BrokerConfig::default());
        let topic = t("crowd");
        let subs: Vec<_> = (1..=N as u64).map(|id| sub(id, 1 << 10)).collect();
        let writes = || broker.counters.entry_writes.load(Relaxed);
        for (i, (s, _)) in subs.iter().enumerate() {
            broker.subscribe(&topic, s).unwrap();
            // Subscribing again is a no-op, not a second entry.
            broker.subscribe(&topic, s).unwrap();
            if i + 1 == N / 2 {
                let r = broker.publish(&topic, b"half");
                assert_eq!(r, PublishOutcome { delivered: (N / 2) as u32, dropped: 0 });
            }
        }
        let fill = writes();
        // One write per subscriber, plus the moves of a map that doubles: under 2n.
        assert!(fill <= 3 * N as u64, "filling wrote {fill} entries for {N} subscribers");
        let st = broker.stats();
        assert_eq!((st.topics, st.subscriptions, st.subscribes), (1, N as u64, N as u64));
        let r = broker.publish(&topic, b"all");
        assert_eq!(r, PublishOutcome { delivered: N as u32, dropped: 0 });
        for (i, (_, chan)) in subs.iter().enumerate() {
            let want: &[&[u8]] = if i < N / 2 { &[b"half", b"all"] } else { &[b"all"] };
            assert_eq!(received(chan), want, "subscriber {i}");
        }
        // Out of the order they came in: every other one, then the rest backwards.
        let order = (0..N).step_by(2).chain((1..N).step_by(2).rev());
        for (k, i) in order.enumerate() {
            assert!(broker.unsubscribe(&topic, subs[i].0.id));
            assert!(!broker.unsubscribe(&topic, subs[i].0.id), "removed once");
            assert_eq!(broker.stats().subscriptions, (N - k - 1) as u64);
        }
        let empty = writes() - fill;
        // Removing writes nothing but the moves of a map that halves: under n.
        assert!(empty <= N as u64, "emptying wrote {empty} entries for {N} subscribers");
        let st = broker.stats();
        assert_eq!((st.topics, st.subscriptions, st.unsubscribes), (0, 0, N as u64));
        assert!(broker.shards.iter().all(|s| s.lock().is_empty()), "the topic is gone");
        assert_eq!(broker.publish(&topic, b"none"), PublishOutcome::default());
    }

    /// A slow subscriber is dropped in the publish that finds its queue full (O(1), no
    /// copy), told once, and the others get everything; a topic emptied so is removed.
    #[test]
    fn slow_subscribers_are_dropped_in_the_same_pass() {
        let broker = Broker::new(BrokerConfig::default());
        let topic = t("news");
        let (fast, fast_q) = sub(1, 1 << 20);
        // One message is always taken into an empty queue; a second does not fit.
        let (slow, slow_q) = sub(2, 1);
        broker.subscribe(&topic, &fast).unwrap();
        broker.subscribe(&topic, &slow).unwrap();
        assert_eq!(broker.publish(&topic, b"1"), PublishOutcome { delivered: 2, dropped: 0 });
        assert_eq!(broker.publish(&topic, b"2"), PublishOutcome { delivered: 1, dropped: 1 });
        assert_eq!(broker.publish(&topic, b"3"), PublishOutcome { delivered: 1, dropped: 0 });
        assert_eq!(received(&fast_q), [b"1", b"2", b"3"]);
        assert_eq!(received(&slow_q), [b"1"]);
        assert!(slow.shared.lagged_flag.load(Relaxed));
        assert_eq!(*slow.shared.lagged.lock(), std::slice::from_ref(&topic));
        let st = broker.stats();
        assert_eq!((st.subscriptions, st.slow_dropped, st.unsubscribes), (1, 1, 1));
        assert!(!broker.unsubscribe(&topic, slow.id), "already gone");
        // A topic whose last subscriber is dropped by a publish goes away.
        let lone = t("lone");
        let (only, _q) = sub(3, 1);
        broker.subscribe(&lone, &only).unwrap();
        broker.publish(&lone, b"a");
        assert_eq!(broker.publish(&lone, b"b"), PublishOutcome { delivered: 0, dropped: 1 });
        assert_eq!(broker.stats().topics, 1);
        // And it can be subscribed to again.
        broker.subscribe(&lone, &only).unwrap();
        assert_eq!(broker.stats().topics, 2);
    }

    /// Publishers on several threads, subscribers coming and going on others: every
    /// subscriber that stays sees the topic's messages in one and the same order (each
    /// publisher's in its own order), and the counts add up.
    #[test]
    fn one_order_per_topic_under_concurrency() {
        const PUBLISHERS: u64 = 4;
        const EACH: u64 = 500;
        let broker = Broker::new(BrokerConfig::default());
        let topic = t("t");
        let stay: Vec<_> = (1..=3).map(|id| sub(id, 1 << 20)).collect();
        for (s, _) in &stay {
            broker.subscribe(&topic, s).unwrap();
        }
        std::thread::scope(|sc| {
            for p in 0..PUBLISHERS {
                let (broker, topic) = (&broker, &topic);
                sc.spawn(move || {
                    for seq in 0..EACH {
                        let mut m = p.to_be_bytes().to_vec();
                        m.extend_from_slice(&seq.to_be_bytes());
                        let r = broker.publish(topic, &m);
                        assert_eq!(r.dropped, 0);
                        assert!(r.delivered >= 3);
                    }
                });
            }
            // Churn: subscribers join and leave the same topic meanwhile.
            let (broker, topic) = (&broker, &topic);
            sc.spawn(move || {
                for round in 0..200u64 {
                    let churn: Vec<_> =
                        (0..10).map(|i| sub(1000 + round * 10 + i, 1 << 20)).collect();
                    for (s, _) in &churn {
                        broker.subscribe(topic, s).unwrap();
                    }
                    for (s, _) in &churn {
                        assert!(broker.unsubscribe(topic, s.id));
                    }
                }
            });
        });
        let first = received(&stay[0].1);
        assert_eq!(first.len() as u64, PUBLISHERS * EACH);
        for p in 0..PUBLISHERS {
            let seqs: Vec<u64> = first
                .iter()
                .filter(|m| m[..8] == p.to_be_bytes())
                .map(|m| u64::from_be_bytes(m[8..16].try_into().unwrap()))
                .collect();
            assert_eq!(seqs, (0..EACH).collect::<Vec<_>>(), "publisher {p} in order");
        }
        for (_, q) in &stay[1..] {
            assert_eq!(received(q), first, "the same order for every subscriber");
        }
        let st = broker.stats();
        assert_eq!((st.topics, st.subscriptions), (1, 3));
        assert_eq!(st.published, PUBLISHERS * EACH);
    }

    #[test]
    fn error_codes_round_trip() {
        for c in 0..=255u8 {
            assert_eq!(ErrorCode::from_code(c).code(), c);
        }
    }
}
