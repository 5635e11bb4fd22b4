//! `pubsub`: channel `'P'`'s messages. The first byte picks: even, the codec (a decoded
//! body re-encodes to the same bytes, under the same type); odd, two live sessions on one
//! broker fed `[session:1 … u8][ty u8][len u8][body]` records as client messages. Every
//! message the server sends must decode as a server message; each request gets one answer,
//! in order, that fits it (SUBSCRIBED or an ERROR for a SUBSCRIBE, an ACK or ERROR with the
//! request's sequence number for a PUBLISH, ...); and, until a slow subscriber is dropped,
//! a PUBLISH reaches exactly the sessions subscribed to its topic.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use dap_stream::codec::frame::{self, Frame};
use dap_stream::pubsub::{self, Broker, BrokerConfig, ErrorCode, PUBSUB, PubSubMsg, Topic, ty};
use dap_stream::{ChannelProcs, Mux, MuxConfig, SessionInfo};

use super::NoWake;

/// The target.
pub fn run(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    if which % 2 == 0 { codec(body) } else { live(body) }
}

fn codec(data: &[u8]) {
    let Some((&t, body)) = data.split_first() else { return };
    if let Ok(m) = PubSubMsg::decode(t, body) {
        assert_eq!(m.ty(), t);
        assert_eq!(m.encode(), body, "one encoding per message");
        assert_eq!(m.is_request(), t < 0x80);
    }
}

/// What a session asked, waiting for its answer.
#[derive(Debug)]
enum Asked {
    Subscribe(Topic),
    Unsubscribe(Topic),
    Publish(u64, Topic),
    /// Anything else: answered ERROR malformed, with this sequence number.
    Malformed(u64),
}

/// One session, from the client's side.
struct Session {
    mux: Mux,
    /// Requests not answered yet, oldest first.
    asked: VecDeque<Asked>,
    /// The topics the server said this session is subscribed to.
    topics: HashSet<Topic>,
    /// Data-frame payload bytes received, for the credit given back.
    received: u64,
}

const WINDOW: u64 = 1 << 16;

fn live(mut data: &[u8]) {
    let broker = Broker::new(BrokerConfig {
        max_topics: 4,
        max_subscribers_per_topic: 2,
        max_subscriptions_per_session: 3,
        max_topic_len: 8,
    });
    let mut procs = ChannelProcs::new();
    pubsub::register(&mut procs, broker.clone());
    let config = MuxConfig {
        channel_window: WINDOW as u32,
        conn_window: WINDOW as u32,
        // Small queues, so slow subscribers are dropped now and then.
        send_queue: 2048,
        ..MuxConfig::default()
    };
    let mut sessions: Vec<Session> = (0..2u8)
        .map(|i| {
            let info = SessionInfo { session_id: [i; 16], client: None };
            let mut mux = Mux::new(&[PUBSUB], &procs, info, config);
            mux.start(Arc::new(NoWake));
            Session { mux, asked: VecDeque::new(), topics: HashSet::new(), received: 0 }
        })
        .collect();
    // Set once a subscriber was dropped for being slow: from then on the subscriptions the
    // server told of may lag behind the broker's.
    let mut lagging = false;
    let mut broken = false;
    while data.len() >= 3 && !broken {
        let (s, t, len) = (data[0] as usize % 2, data[1], data[2] as usize);
        let body = &data[3..(3 + len).min(data.len())];
        data = &data[3 + body.len()..];
        let asked = match PubSubMsg::decode(t, body) {
            Ok(PubSubMsg::Subscribe { topic }) => Asked::Subscribe(topic),
            Ok(PubSubMsg::Unsubscribe { topic }) => Asked::Unsubscribe(topic),
            Ok(PubSubMsg::Publish { seq, topic, .. }) => Asked::Publish(seq, topic),
            _ => Asked::Malformed(match (t, body.first_chunk::<8>()) {
                (ty::PUBLISH, Some(s)) => u64::from_be_bytes(*s),
                _ => 0,
            }),
        };
        sessions[s].asked.push_back(asked);
        let mut payload = Vec::new();
        frame::put_data_header(&mut payload, PUBSUB, t, Some(body.len() as u32), false, body.len());
        payload.extend_from_slice(body);
        if sessions[s].mux.handle_payload(&payload).is_err() {
            broken = true;
        }
        broken |= !exchange(&mut sessions, &mut lagging);
    }
    if broken {
        return;
    }
    for _ in 0..8 {
        if !exchange(&mut sessions, &mut lagging) {
            return;
        }
    }
    for s in &sessions {
        assert!(s.asked.is_empty(), "requests left unanswered: {:?}", s.asked);
    }
}

/// Takes what both sessions have to send, checks it, and gives credit back. False when a
/// mux refused the credit (it cannot: it is a protocol violation on our side).
fn exchange(sessions: &mut [Session], lagging: &mut bool) -> bool {
    for i in 0..sessions.len() {
        let mut out = Vec::new();
        while sessions[i].mux.poll_payload(&mut out, 1 << 14) {
            let mut buf = &out[..];
            while !buf.is_empty() {
                let (f, n) = frame::decode(buf).expect("the server's frames decode");
                buf = &buf[n..];
                if let Frame::Data { chan, ty: t, first, more, payload } = f {
                    assert_eq!(chan, PUBSUB);
                    // Answers and deliveries are far smaller than a frame.
                    assert_eq!((first, more), (Some(payload.len() as u32), false));
                    sessions[i].received += payload.len() as u64;
                    let msg = PubSubMsg::decode(t, payload).expect("the server's messages decode");
                    assert!(!msg.is_request(), "the server sent a request: {msg:?}");
                    check(sessions, i, msg, lagging);
                }
            }
            out.clear();
        }
        let mut credit = Vec::new();
        let limit = sessions[i].received + WINDOW;
        frame::put_credit(&mut credit, frame::CONNECTION, limit);
        frame::put_credit(&mut credit, PUBSUB, limit);
        if sessions[i].mux.handle_payload(&credit).is_err() {
            return false;
        }
        sessions[i].mux.notify_writable();
    }
    true
}

/// Checks one message the server sent to session `i` against what it asked.
fn check(sessions: &mut [Session], i: usize, msg: PubSubMsg, lagging: &mut bool) {
    let subscribers = |sessions: &[Session], t: &Topic| {
        sessions.iter().filter(|s| s.topics.contains(t)).count() as u32
    };
    let me = &mut sessions[i];
    match msg {
        PubSubMsg::Message { topic, .. } => {
            if !*lagging {
                assert!(me.topics.contains(&topic), "a message for a topic not subscribed");
            }
            return;
        }
        PubSubMsg::Error { code: ErrorCode::SlowSubscriber, seq, topic } => {
            assert_eq!(seq, 0);
            let topic = topic.expect("a slow subscriber is told the topic");
            // The publisher's ACK (with `dropped`) may come later: sessions are read in turn.
            *lagging = true;
            me.topics.remove(&topic);
            return;
        }
        _ => {}
    }
    let asked = me.asked.pop_front().unwrap_or_else(|| panic!("an answer to nothing: {msg:?}"));
    match (asked, msg) {
        (Asked::Subscribe(t), PubSubMsg::Subscribed { topic }) => {
            assert_eq!(t, topic);
            me.topics.insert(topic);
        }
        (Asked::Subscribe(t), PubSubMsg::Error { code, seq: 0, topic: Some(topic) }) => {
            assert_eq!(t, topic);
            assert!(!me.topics.contains(&t), "refused a subscription it holds");
            assert!(matches!(
                code,
                ErrorCode::BadTopic
                    | ErrorCode::TooManyTopics
                    | ErrorCode::TooManySubscribers
                    | ErrorCode::TooManySubscriptions
            ));
        }
        (Asked::Unsubscribe(t), PubSubMsg::Unsubscribed { topic }) => {
            assert_eq!(t, topic);
            me.topics.remove(&topic);
        }
        (Asked::Publish(seq, t), PubSubMsg::Ack { seq: got, delivered, dropped }) => {
            assert_eq!(seq, got);
            if !*lagging {
                assert_eq!(delivered + dropped, subscribers(sessions, &t), "reached {t:?}");
            }
            *lagging |= dropped > 0;
        }
        (Asked::Publish(seq, t), PubSubMsg::Error { code, seq: got, topic: Some(topic) }) => {
            assert_eq!((code, seq, &t), (ErrorCode::BadTopic, got, &topic));
        }
        (Asked::Malformed(seq), PubSubMsg::Error { code, seq: got, topic: None }) => {
            assert_eq!((code, seq), (ErrorCode::Malformed, got));
        }
        (asked, msg) => panic!("{asked:?} answered with {msg:?}"),
    }
}
