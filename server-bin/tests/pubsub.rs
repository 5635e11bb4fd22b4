//! Publish/subscribe through dapd: every subscriber, on either worker, gets every message
//! of every publisher exactly once, in each publisher's order.

mod util;

use std::collections::HashMap;

use dap_stream::pubsub::{ErrorCode, PubSubMsg, Topic};
use dap_stream::session::TransportKind;
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

/// What an acknowledgement promises at shutdown (`docs/PROTOCOL.md` §10): a subscriber
/// that does not read past the grace period is cut off, and its stream still ends, after
/// every message it was sent and in order, with a CLOSE saying exactly how many of the
/// acknowledged messages were not sent, counted by the server too. The connection ends
/// with a FIN, not a reset, so the subscriber reads all of it once it reads again. A
/// publisher that keeps up gets the plain CLOSE.
#[test]
fn a_subscriber_stalled_past_the_grace_learns_how_many_messages_it_missed() {
    stalled_subscriber(TransportKind::Http);
}

/// The same over UDP: the cut-off connection's CLOSE says how many were not sent (the
/// subscriber's socket holds the datagrams until it reads again).
#[test]
fn a_udp_subscriber_stalled_past_the_grace_learns_how_many_messages_it_missed() {
    stalled_subscriber(TransportKind::Udp);
}

fn stalled_subscriber(transport: TransportKind) {
    const MESSAGES: u64 = 100;
    const PAD: usize = 1000;
    let mut c = config(1);
    // Little credit, and no growth: what the server may send before the subscriber reads
    // again fits in the kernel's buffers; the rest waits in the server's queues.
    c.stream.channel_window = 16 << 10;
    c.stream.max_channel_window = 16 << 10;
    c.stream.conn_window = 64 << 10;
    c.stream.max_conn_window = 64 << 10;
    let d = daemon(c);
    let stream = d.stream().clone();
    let (sub_side, pub_side) = (client_reactor(), client_reactor());
    let topic = Topic::new("stall").unwrap();
    let s = open_over(&sub_side, d.local_addr(), d.node_public_key(), b"P", transport).unwrap();
    s.subscribe(&topic);
    let p = open(&pub_side, d.local_addr(), d.node_public_key(), b"P").unwrap();

    // The subscriber stalls: its client's only worker is held, its socket unread.
    let (held_tx, held) = crossbeam_channel::bounded(1);
    let (release, release_rx) = crossbeam_channel::bounded::<()>(1);
    sub_side
        .worker(0)
        .unwrap()
        .exec(move |_| {
            let _ = held_tx.send(());
            let _ = release_rx.recv_timeout(TIMEOUT);
        })
        .unwrap();
    held.recv_timeout(TIMEOUT).expect("the subscriber's worker is held");

    for seq in 1..=MESSAGES {
        let mut payload = seq.to_be_bytes().to_vec();
        payload.resize(PAD, 0);
        p.send(&PubSubMsg::Publish { seq, topic: topic.clone(), payload }).unwrap();
    }
    for seq in 1..=MESSAGES {
        let m = p.next();
        assert_eq!(
            PubSubMsg::decode(m.ty, &m.data),
            Ok(PubSubMsg::Ack { seq, delivered: 1, dropped: 0 }),
            "every publish acknowledged as queued to the subscriber"
        );
    }

    let report = d.shutdown(std::time::Duration::from_millis(300));
    assert_eq!(report.left_open, 1, "the stalled subscriber was still open: {report:?}");
    let lost = report.messages_unsent;
    assert!((1..MESSAGES).contains(&lost), "{lost} of {MESSAGES} not sent");
    let st = stream.stats();
    assert_eq!((st.shutdown_cut_off, st.shutdown_unsent_messages), (1, lost));

    // The publisher read everything: its stream ended with the plain CLOSE.
    match p.closed() {
        dap_stream::transport::StreamError::PeerClosed { code, reason } => {
            assert_eq!(code, dap_stream::transport::CloseCode::GoingAway);
            assert_eq!(reason, "server shutting down");
        }
        e => panic!("publisher: {e:?}"),
    }
    // The subscriber reads again: a gapless prefix of what was acknowledged, then the
    // CLOSE naming the rest.
    release.send(()).unwrap();
    match s.closed() {
        dap_stream::transport::StreamError::PeerClosed { code, reason } => {
            assert_eq!(code, dap_stream::transport::CloseCode::GoingAway);
            assert_eq!(reason, format!("server shutting down; {lost} messages not sent"));
        }
        e => panic!("subscriber: {e:?} (a reset or an end without CLOSE loses the count)"),
    }
    let got: Vec<u64> = s
        .messages
        .try_iter()
        .map(|m| match PubSubMsg::decode(m.ty, &m.data) {
            Ok(PubSubMsg::Message { payload, .. }) => {
                u64::from_be_bytes(payload[..8].try_into().unwrap())
            }
            other => panic!("not a MESSAGE: {other:?}"),
        })
        .collect();
    let want: Vec<u64> = (1..=MESSAGES - lost).collect();
    assert_eq!(got, want, "received + not sent = acknowledged, in order");
}
