//! Publish/subscribe through dapd: every subscriber, on either worker, gets every message
//! of every publisher exactly once, in each publisher's order.

mod util;

use std::collections::HashMap;

use dap_stream::pubsub::{ErrorCode, PubSubMsg, Topic};
use util::*;

const SUBSCRIBERS: usize = 6;
const PUBLISHERS: u8 = 3;
const MESSAGES: u64 = 300;

#[test]
fn every_subscriber_on_every_worker_gets_every_message_once_in_order() {
    let mut c = config(2);
    // One listener handing each connection to the least-loaded worker: sessions land on
    // both workers without relying on the kernel's hash.
    c.reactor.listener_mode = dap_server::config::ListenerModeSetting::Single;
    let d = daemon(c);
    let client = client_reactor();
    let topic = Topic::new("news/all").unwrap();
    let mut subs = Vec::new();
    while subs.len() < SUBSCRIBERS || d.stream().live_streams_by_worker(2).contains(&0) {
        assert!(subs.len() < 32, "sessions never landed on both workers");
        let s = open(&client, d.local_addr(), d.node_public_key(), b"P").unwrap();
        s.subscribe(&topic);
        subs.push(s);
    }
    assert!(d.stream().live_streams_by_worker(2).iter().all(|&n| n > 0));
    assert_eq!(d.broker().expect("built-in channels").stats().subscriptions, subs.len() as u64);

    let pubs: Vec<_> = (0..PUBLISHERS)
        .map(|_| open(&client, d.local_addr(), d.node_public_key(), b"P").unwrap())
        .collect();
    let n = subs.len();
    std::thread::scope(|s| {
        for (i, p) in pubs.iter().enumerate() {
            let topic = topic.clone();
            s.spawn(move || {
                for seq in 1..=MESSAGES {
                    let payload = payload(i as u8, seq);
                    let m = PubSubMsg::Publish { seq, topic: topic.clone(), payload };
                    p.send(&m).unwrap();
                }
                // Every publish is acknowledged, in order, with every subscriber reached.
                for seq in 1..=MESSAGES {
                    let m = p.next();
                    match PubSubMsg::decode(m.ty, &m.data) {
                        Ok(PubSubMsg::Ack { seq: got, delivered, dropped: 0 }) => {
                            assert_eq!(got, seq);
                            assert_eq!(delivered as usize, n);
                        }
                        other => panic!("expected ACK {seq}, got {other:?}"),
                    }
                }
            });
        }
    });
    for (k, s) in subs.iter().enumerate() {
        let mut next: HashMap<u8, u64> = HashMap::new();
        for _ in 0..PUBLISHERS as u64 * MESSAGES {
            let m = s.next();
            let Ok(PubSubMsg::Message { topic: t, payload }) = PubSubMsg::decode(m.ty, &m.data)
            else {
                panic!("subscriber {k}: not a MESSAGE: {m:?}");
            };
            assert_eq!(t, topic);
            let (publisher, seq) = read_payload(&payload);
            let want = next.entry(publisher).or_insert(1);
            assert_eq!(seq, *want, "subscriber {k}, publisher {publisher}: in order, no gap");
            *want += 1;
        }
        assert!(next.values().all(|&n| n == MESSAGES + 1));
        assert!(s.messages.try_recv().is_err(), "subscriber {k}: nothing more (no duplicate)");
    }
    let st = d.broker().expect("built-in channels").stats();
    assert_eq!(st.published, PUBLISHERS as u64 * MESSAGES);
    assert_eq!(st.delivered, st.published * subs.len() as u64);
    assert_eq!(st.slow_dropped, 0);
    d.shutdown(TIMEOUT);
}

#[test]
fn refusals_are_answered_and_counted() {
    let mut c = config(1);
    c.pubsub.max_topic_len = 8;
    c.pubsub.max_subscriptions_per_session = 2;
    let d = daemon(c);
    let client = client_reactor();
    let s = open(&client, d.local_addr(), d.node_public_key(), b"P").unwrap();
    let long = Topic::new("much-too-long").unwrap();
    s.send(&PubSubMsg::Subscribe { topic: long.clone() }).unwrap();
    let m = s.next();
    assert_eq!(
        PubSubMsg::decode(m.ty, &m.data),
        Ok(PubSubMsg::Error { code: ErrorCode::BadTopic, seq: 0, topic: Some(long) })
    );
    s.subscribe(&Topic::new("a").unwrap());
    s.subscribe(&Topic::new("b").unwrap());
    let c3 = Topic::new("c").unwrap();
    s.send(&PubSubMsg::Subscribe { topic: c3.clone() }).unwrap();
    let m = s.next();
    assert_eq!(
        PubSubMsg::decode(m.ty, &m.data),
        Ok(PubSubMsg::Error { code: ErrorCode::TooManySubscriptions, seq: 0, topic: Some(c3) })
    );
    // Garbage and server-only types are refused, not fatal.
    s.channel(b'P').write(0x03, vec![0, 0, 0, 0, 0, 0, 0, 9]).unwrap();
    let m = s.next();
    assert!(matches!(
        PubSubMsg::decode(m.ty, &m.data),
        Ok(PubSubMsg::Error { code: ErrorCode::Malformed, seq: 9, topic: None })
    ));
    s.channel(b'P').write(0x82, vec![1]).unwrap();
    let m = s.next();
    assert!(matches!(
        PubSubMsg::decode(m.ty, &m.data),
        Ok(PubSubMsg::Error { code: ErrorCode::Malformed, .. })
    ));
    let st = d.broker().expect("built-in channels").stats();
    assert_eq!(st.refused, [2, 1, 0, 0, 1]);
    // The session's end unsubscribes it.
    drop(s);
    drop(client);
    wait_until("subscriptions removed", || {
        d.broker().expect("built-in channels").stats().subscriptions == 0
    });
    d.shutdown(TIMEOUT);
}
