//! SIGTERM to the real `dapd` binary during traffic: it exits 0 within its grace period,
//! every client gets a CLOSE `GoingAway`, every acknowledged publish reached every
//! subscriber, and echoes are a gapless prefix of what was sent.

mod util;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dap_stream::HandleWriteError;
use dap_stream::pubsub::{PubSubMsg, Topic};
use dap_stream::session::TransportKind;
use dap_stream::transport::{CloseCode, StreamError};
use util::*;

/// Subscribers of the traffic test.
const SUBSCRIBERS: usize = 4;

fn going_away(e: &StreamError) -> bool {
    matches!(e, StreamError::PeerClosed { code: CloseCode::GoingAway, .. })
}

#[test]
fn sigterm_during_traffic_drains_and_exits_zero() {
    sigterm_during_traffic(TransportKind::Http, "http", "");
}

/// The same over UDP, with dapd's GSO off: its batches go out on the fallback path
/// (`sendmmsg`), which carries the traffic and the CLOSE frames.
#[test]
fn sigterm_during_udp_traffic_drains_and_exits_zero_on_the_gso_fallback_path() {
    sigterm_during_traffic(TransportKind::Udp, "udp", "[udp]\ngso = false\n");
}

/// SIGTERM while publishers, subscribers and an echo client stream over `transport`.
fn sigterm_during_traffic(transport: TransportKind, name: &str, extra: &str) {
    let (mut dapd, addr, node) = spawn_dapd("sigterm", name, extra);
    let client = client_reactor();
    let open = |channels: &[u8]| open_over(&client, addr, node, channels, transport).unwrap();
    let topic = Topic::new("live").unwrap();
    let subs: Vec<TestClient> = (0..SUBSCRIBERS).map(|_| open(b"P")).collect();
    for s in &subs {
        s.subscribe(&topic);
    }
    let pubs: Vec<TestClient> = (0..2).map(|_| open(b"P")).collect();
    let echo = open(b"E");
    // Acknowledgements seen per publisher: SIGTERM waits until both are under way.
    let acks_seen = [AtomicU64::new(0), AtomicU64::new(0)];

    let (acked, echo_sent, exit) = std::thread::scope(|s| {
        // Publishers: publish until the stream closes; collect what was acknowledged.
        let publishers: Vec<_> = pubs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let topic = topic.clone();
                let acks_seen = &acks_seen[i];
                s.spawn(move || {
                    let reader = s.spawn(move || {
                        let mut acked = Vec::new();
                        let deadline = Instant::now() + TIMEOUT;
                        while Instant::now() < deadline {
                            let m = match p.messages.recv_timeout(Duration::from_millis(20)) {
                                Ok(m) => m,
                                // Closed is reported after the last message was delivered.
                                Err(_) if !p.events.is_empty() => break,
                                Err(_) => continue,
                            };
                            if let Ok(PubSubMsg::Ack { seq, delivered, dropped }) =
                                PubSubMsg::decode(m.ty, &m.data)
                            {
                                acks_seen.fetch_add(1, Ordering::Relaxed);
                                // Queued to every subscriber: a subscriber dropped for
                                // being slow misses this publish and every later one.
                                if delivered as usize == SUBSCRIBERS && dropped == 0 {
                                    acked.push(seq);
                                }
                            }
                        }
                        acked
                    });
                    for seq in 1..=200_000u64 {
                        let payload = payload(i as u8, seq);
                        let m = PubSubMsg::Publish { seq, topic: topic.clone(), payload };
                        match p.send(&m) {
                            Ok(()) => {}
                            Err(HandleWriteError::Closed(_)) => break,
                            Err(e) => panic!("publish: {e}"),
                        }
                    }
                    reader.join().unwrap()
                })
            })
            .collect();
        // Echo: send numbered messages until the stream closes.
        let echo_sender = s.spawn(|| {
            let mut sent = 0u32;
            while sent < 1_000_000 {
                match echo.channel(b'E').write_timeout(1, sent.to_be_bytes().to_vec(), TIMEOUT) {
                    Ok(()) => sent += 1,
                    Err(HandleWriteError::Closed(_)) => break,
                    Err(e) => panic!("echo: {e}"),
                }
            }
            sent
        });
        // SIGTERM mid-traffic.
        wait_until("acknowledgements for every publisher", || {
            acks_seen.iter().all(|a| a.load(Ordering::Relaxed) >= 100)
        });
        let pid = dapd.0.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(killed.success());
        let deadline = Instant::now() + TIMEOUT;
        let exit = loop {
            if let Some(status) = dapd.0.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "dapd did not exit in time");
            std::thread::sleep(Duration::from_millis(10));
        };
        let acked: Vec<Vec<u64>> = publishers.into_iter().map(|h| h.join().unwrap()).collect();
        (acked, echo_sender.join().unwrap(), exit)
    });
    assert!(exit.success(), "dapd exited with {exit:?}");

    for p in &pubs {
        let e = p.closed();
        assert!(going_away(&e), "publisher: {e:?}");
    }
    // `acked` holds the publishes acknowledged as queued to every subscriber (`delivered`
    // all of them, `dropped: 0`). Under load a slow subscriber's queue may fill: it is
    // dropped from the topic (that publish acknowledged with `dropped: 1`, the later ones
    // with one fewer `delivered`, so none of them in `acked`): acknowledgements are in
    // order, not necessarily contiguous.
    for (i, a) in acked.iter().enumerate() {
        assert!(!a.is_empty(), "publisher {i} got acknowledgements");
        assert!(a.windows(2).all(|w| w[0] < w[1]), "publisher {i}: acknowledgements in order");
    }
    for (k, s) in subs.iter().enumerate() {
        let e = s.closed();
        assert!(going_away(&e), "subscriber {k}: {e:?}");
        let mut got: HashMap<u8, Vec<u64>> = HashMap::new();
        for m in s.messages.try_iter() {
            if let Ok(PubSubMsg::Message { payload, .. }) = PubSubMsg::decode(m.ty, &m.data) {
                let (p, seq) = read_payload(&payload);
                got.entry(p).or_default().push(seq);
            }
        }
        for (i, a) in acked.iter().enumerate() {
            let seqs = got.remove(&(i as u8)).unwrap_or_default();
            let in_order = seqs.windows(2).all(|w| w[0] < w[1]);
            assert!(in_order, "subscriber {k}, publisher {i}: in order, exactly once");
            let have: std::collections::HashSet<u64> = seqs.iter().copied().collect();
            let lost: Vec<u64> = a.iter().copied().filter(|s| !have.contains(s)).collect();
            assert!(
                lost.is_empty(),
                "subscriber {k} lost {} acknowledged messages of publisher {i}, first {:?}",
                lost.len(),
                lost.first()
            );
        }
    }
    let e = echo.closed();
    assert!(going_away(&e), "echo: {e:?}");
    let back: Vec<u32> = echo
        .messages
        .try_iter()
        .map(|m| u32::from_be_bytes(m.data[..].try_into().expect("4 bytes")))
        .collect();
    let expected: Vec<u32> = (0..back.len() as u32).collect();
    assert_eq!(back, expected, "echoes are a gapless prefix");
    assert!(back.len() as u32 <= echo_sent);
}
