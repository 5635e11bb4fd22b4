//! A server drain: streams stop taking messages, send what their channels queued, then a
//! CLOSE with `GoingAway`; new sessions are refused meanwhile.

mod util;

use dap_stream::pubsub::{self, Broker, BrokerConfig, PubSubMsg, Topic};
use dap_stream::transport::{CloseCode, StreamError};
use dap_stream::{ChannelProcs, StreamConfig};
use util::*;

fn procs() -> (ChannelProcs, std::sync::Arc<Broker>) {
    let mut p = ChannelProcs::new();
    dap_stream::echo::register(&mut p);
    let broker = Broker::new(BrokerConfig::default());
    pubsub::register(&mut p, broker.clone());
    (p, broker)
}

fn going_away(e: &StreamError) -> bool {
    matches!(e, StreamError::PeerClosed { code: CloseCode::GoingAway, .. })
}

#[test]
fn a_drain_flushes_echoes_and_sends_going_away() {
    let (procs, _) = procs();
    let srv = server(procs, StreamConfig::default());
    let client = client_reactor();
    let c = connect(&client, srv.addr, srv.session(b"E", None));
    let sent: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_be_bytes().repeat(64)).collect();
    for m in &sent {
        c.channel(b'E').write_timeout(1, m.clone(), TIMEOUT).unwrap();
    }
    let report = srv.stream.drain(TIMEOUT);
    assert_eq!((report.streams, report.left_open), (1, 0));
    let mut got = Vec::new();
    while let Ok((_, m)) = c.messages.try_recv() {
        got.push(m.data);
    }
    let end = c.closed();
    assert!(going_away(&end), "{end:?}");
    while let Ok((_, m)) = c.messages.try_recv() {
        got.push(m.data);
    }
    assert!(got.len() <= sent.len());
    assert_eq!(got[..], sent[..got.len()], "echoes are a gapless prefix");
    // Sessions are refused while draining.
    let req = dap_stream::session::ctl::CtlRequest {
        channels: b"E".to_vec(),
        suite: None,
        transport: dap_stream::session::TransportKind::Http,
        unreliable: Vec::new(),
    };
    let refused = srv.stream.stream_ctl(&req.encode(), None, std::time::Instant::now());
    assert_eq!(refused.unwrap_err().status(), 503);
}

#[test]
fn acknowledged_publishes_reach_subscribers_before_going_away() {
    let (procs, broker) = procs();
    let srv = server(procs, StreamConfig::default());
    let client = client_reactor();
    let topic = Topic::new("t").unwrap();
    let subs: Vec<TestClient> =
        (0..3).map(|_| connect(&client, srv.addr, srv.session(b"P", None))).collect();
    for s in &subs {
        let m = PubSubMsg::Subscribe { topic: topic.clone() };
        s.channel(b'P').write(m.ty(), m.encode()).unwrap();
        let (_, got) = s.messages.recv_timeout(TIMEOUT).unwrap();
        assert_eq!(
            PubSubMsg::decode(got.ty, &got.data),
            Ok(PubSubMsg::Subscribed { topic: topic.clone() })
        );
    }
    let publisher = connect(&client, srv.addr, srv.session(b"P", None));
    for seq in 1..=300u64 {
        let m =
            PubSubMsg::Publish { seq, topic: topic.clone(), payload: seq.to_be_bytes().to_vec() };
        publisher.channel(b'P').write_timeout(m.ty(), m.encode(), TIMEOUT).unwrap();
    }
    // Let some acknowledgements arrive, then drain mid-stream.
    let first = publisher.messages.recv_timeout(TIMEOUT).unwrap();
    let report = srv.stream.drain(TIMEOUT);
    assert_eq!(report.left_open, 0);
    let mut acked = Vec::new();
    for (_, m) in std::iter::once(first).chain(publisher.messages.try_iter()) {
        if let Ok(PubSubMsg::Ack { seq, dropped: 0, .. }) = PubSubMsg::decode(m.ty, &m.data) {
            acked.push(seq);
        }
    }
    assert!(going_away(&publisher.closed()));
    acked.extend(publisher.messages.try_iter().filter_map(|(_, m)| {
        match PubSubMsg::decode(m.ty, &m.data) {
            Ok(PubSubMsg::Ack { seq, .. }) => Some(seq),
            _ => None,
        }
    }));
    assert!(!acked.is_empty());
    for s in &subs {
        let end = s.closed();
        assert!(going_away(&end), "{end:?}");
        let seqs: Vec<u64> = s
            .messages
            .try_iter()
            .filter_map(|(_, m)| match PubSubMsg::decode(m.ty, &m.data) {
                Ok(PubSubMsg::Message { payload, .. }) => {
                    Some(u64::from_be_bytes(payload.try_into().unwrap()))
                }
                _ => None,
            })
            .collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, expected, "in order, no gap");
        assert!(acked.iter().all(|a| seqs.contains(a)), "every acknowledged message arrived");
    }
    wait_until("subscriptions gone", || broker.stats().subscriptions == 0);
}
