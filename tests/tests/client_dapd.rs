//! dap-client against dapd, both in this process over loopback: streaming and echo,
//! publish/subscribe through the client, a restart under an always-reconnecting client,
//! and 1,000 clients at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use dap_client::{Client, ClientConfig, RetryPolicy, Stage, Status, Uplink};
use dap_reactor::Reactor;
use dap_server::{Config, Node};
use dap_stream::pubsub::{PUBSUB, PubSubMsg, Topic};

const TIMEOUT: Duration = Duration::from_secs(30);

/// dapd on an ephemeral loopback port with `threads` unpinned workers.
fn dapd(threads: usize) -> Node {
    let mut cfg = Config::embedded();
    cfg.listen.addr = "127.0.0.1:0".parse().unwrap();
    cfg.reactor.threads = threads;
    cfg.reactor.pin = false;
    cfg.proc.threads = 1;
    Node::from_config(cfg).builtin_channels().start().expect("dapd starts")
}

fn reactor(threads: usize) -> Reactor {
    Reactor::builder().threads(threads).pin(false).start().unwrap()
}

fn config(d: &Node, channels: &[u8]) -> ClientConfig {
    let quick = Duration::from_millis(50);
    let retry = RetryPolicy::max_tries(3).delays(quick, quick);
    ClientConfig::new(Uplink::Addr(d.local_addr()))
        .node_key(d.node_public_key())
        .channels(channels)
        .retry(retry)
}

fn client(r: &Reactor, w: usize, cfg: ClientConfig) -> (Client, Receiver<(u8, u8, Vec<u8>)>) {
    let c = Client::new(&r.workers()[w], cfg, Default::default()).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    c.on_message(move |ch, m| {
        let _ = tx.send((ch, m.ty, m.data.to_vec()));
    });
    (c, rx)
}

#[track_caller]
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_client_reaches_streaming_against_dapd_and_echoes() {
    let d = dapd(2);
    let r = reactor(1);
    let (c, rx) = client(&r, 0, config(&d, b"E"));
    assert_eq!(c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT), Ok(Stage::StreamStreaming));
    for i in 0..100u32 {
        c.write(b'E', 3, i.to_le_bytes().to_vec()).unwrap();
    }
    for i in 0..100u32 {
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), (b'E', 3, i.to_le_bytes().to_vec()));
    }
    drop(c);
    d.shutdown(Duration::from_secs(5));
}

#[test]
fn publish_and_subscribe_through_clients_on_different_workers() {
    let d = dapd(2);
    let r = reactor(2);
    let topic = Topic::new("e2e").unwrap();
    let mut subs = Vec::new();
    for w in 0..4 {
        let (c, rx) = client(&r, w % 2, config(&d, b"P"));
        c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap();
        let sub = PubSubMsg::Subscribe { topic: topic.clone() };
        c.write(PUBSUB, sub.ty(), sub.encode()).unwrap();
        let (_, ty, body) = rx.recv_timeout(TIMEOUT).unwrap();
        assert!(matches!(PubSubMsg::decode(ty, &body), Ok(PubSubMsg::Subscribed { .. })));
        subs.push((c, rx));
    }
    let (publisher, acks) = client(&r, 1, config(&d, b"P"));
    publisher.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap();
    const N: u64 = 200;
    for seq in 1..=N {
        let msg =
            PubSubMsg::Publish { seq, topic: topic.clone(), payload: seq.to_le_bytes().to_vec() };
        let mut data = bytes::Bytes::from(msg.encode());
        // `Full` hands the message back for the retry, until the deadline.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match publisher.write(PUBSUB, msg.ty(), data) {
                Ok(()) => break,
                Err(dap_client::WriteError::Full(back)) => {
                    assert!(Instant::now() < deadline, "publish {seq} stayed refused as Full");
                    data = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    for seq in 1..=N {
        let (_, ty, body) = acks.recv_timeout(TIMEOUT).unwrap();
        match PubSubMsg::decode(ty, &body).unwrap() {
            PubSubMsg::Ack { seq: s, delivered, dropped } => {
                assert_eq!((s, delivered, dropped), (seq, 4, 0));
            }
            other => panic!("{other:?}"),
        }
    }
    for (_, rx) in &subs {
        for seq in 1..=N {
            let (_, ty, body) = rx.recv_timeout(TIMEOUT).unwrap();
            match PubSubMsg::decode(ty, &body).unwrap() {
                PubSubMsg::Message { payload, .. } => assert_eq!(payload, seq.to_le_bytes()),
                other => panic!("{other:?}"),
            }
        }
        assert!(rx.try_recv().is_err(), "a message arrived twice");
    }
}

#[test]
fn dapd_restarted_under_an_always_reconnecting_client_is_streamed_to_again() {
    let dir = std::env::temp_dir().join(format!("dap-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("node.key");
    let _ = std::fs::remove_file(&key);
    dap_net::enc::NodeKey::generate().save(&key).unwrap();
    let mut cfg = Config::embedded();
    cfg.listen.addr = "127.0.0.1:0".parse().unwrap();
    cfg.reactor.threads = 1;
    cfg.reactor.pin = false;
    cfg.proc.threads = 1;
    cfg.enc.node_key = key.to_string_lossy().into_owned();
    let d = Node::from_config(cfg.clone()).builtin_channels().start().unwrap();
    let addr = d.local_addr();
    let r = reactor(1);
    let long_delay = Duration::from_secs(1);
    let mut ccfg = config(&d, b"E");
    // The default policy (no limit), its waits capped at 1 s for the test.
    ccfg.retry = RetryPolicy::default().delays(Duration::from_millis(50), long_delay);
    let (c, rx) = client(&r, 0, ccfg);
    let streaming = Arc::new(AtomicUsize::new(0));
    let s = streaming.clone();
    c.on_status(move |stage, status, _| {
        if (stage, status) == (Stage::StreamStreaming, Status::Complete) {
            s.fetch_add(1, Ordering::SeqCst);
        }
    });
    c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap();
    d.shutdown(Duration::from_secs(5));
    wait_until("the client noticed", || !c.is_streaming());
    wait_until("the reconnects are refused", || {
        matches!(c.last_error(), Some(dap_client::ClientError::ConnectRefused { .. }))
    });
    cfg.listen.addr = addr;
    let d = Node::from_config(cfg).builtin_channels().start().unwrap();
    let restarted = Instant::now();
    wait_until("streaming again", || streaming.load(Ordering::SeqCst) == 2);
    // The bound is generous (load); the property is that the client came back by itself.
    assert!(restarted.elapsed() < long_delay + Duration::from_secs(10));
    c.write(b'E', 0, &b"back"[..]).unwrap();
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), (b'E', 0, b"back".to_vec()));
    drop(c);
    d.shutdown(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_thousand_clients_on_two_workers_stream_and_echo_at_once() {
    // 1,000 clients and their 1,000 server sides, plus wake-up events, in one process:
    // about 3,000 descriptors, well under the 20,000 cap.
    let _ = dap_reactor::raise_fd_limit();
    // 1,000 clients on one address, each with a stream and, while setting up, HTTP
    // connections: past the default per-source bound (1,024), as an operator with clients
    // behind one NAT would raise it.
    let d = dapd_with(|c| {
        c.reactor.threads = 2;
        c.listen.max_connections_per_source = 0;
    });
    let r = reactor(2);
    const N: usize = 1000;
    let (tx, rx) = crossbeam_channel::unbounded();
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let clients: Vec<Client> = (0..N)
        .map(|i| {
            let mut cfg = config(&d, b"E");
            cfg.retry.max_tries = Some(5);
            let c = Client::new(&r.workers()[i % 2], cfg, Default::default()).unwrap();
            let tx = tx.clone();
            c.on_message(move |_, m| {
                let _ = tx.send((i, m.data));
            });
            let done_tx = done_tx.clone();
            c.go_stage(Stage::StreamStreaming, move |res| {
                let _ = done_tx.send(res);
            });
            c
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..N {
        assert_eq!(done_rx.recv_deadline(deadline).unwrap(), Ok(Stage::StreamStreaming));
    }
    wait_until("every stream live at once", || d.stream().live_streams() == N);
    for (i, c) in clients.iter().enumerate() {
        c.write(b'E', 0, format!("#{i}").into_bytes()).unwrap();
    }
    let mut seen = vec![false; N];
    for _ in 0..N {
        let (i, data) = rx.recv_deadline(deadline).unwrap();
        assert_eq!(data, format!("#{i}").into_bytes());
        assert!(!std::mem::replace(&mut seen[i], true), "client {i} echoed twice");
    }
    drop(clients);
    d.shutdown(Duration::from_secs(5));
}

#[test]
fn the_client_streams_over_udp_against_dapd_and_echoes_every_size() {
    let d = dapd(2);
    let r = reactor(1);
    let cfg = config(&d, b"E").transport(dap_client::Transport::Udp);
    let (c, rx) = client(&r, 0, cfg);
    assert_eq!(c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT), Ok(Stage::StreamStreaming));
    let sizes = [1usize, 100, 1_162, 1_163, 16_384, 65_536, 200_000, 1 << 20];
    for (i, &n) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..n).map(|k| (k * 13 + i) as u8).collect();
        let mut pending = bytes::Bytes::from(data.clone());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match c.write(b'E', i as u8, pending) {
                Ok(()) => break,
                Err(dap_client::WriteError::Full(back)) => {
                    assert!(Instant::now() < deadline, "write {i} stayed Full");
                    pending = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        }
        let (ch, ty, got) = rx.recv_timeout(TIMEOUT).unwrap();
        assert_eq!((ch, ty as usize, got.len()), (b'E', i, n));
        assert!(got == data, "echo of {n} bytes differs");
    }
    let u = d.stream().udp_counters().unwrap();
    assert_eq!(u.attached.load(Ordering::Relaxed), 1, "the session went over UDP");
    drop(c);
    d.shutdown(Duration::from_secs(5));
}

/// dapd with `edit` applied to the embedded config (ephemeral port, 1 worker).
fn dapd_with(edit: impl FnOnce(&mut Config)) -> Node {
    let mut cfg = Config::embedded();
    cfg.listen.addr = "127.0.0.1:0".parse().unwrap();
    cfg.reactor.threads = 1;
    cfg.reactor.pin = false;
    cfg.proc.threads = 1;
    edit(&mut cfg);
    Node::from_config(cfg).builtin_channels().start().expect("dapd starts")
}

#[track_caller]
fn auto_reaches(d: &Node, r: &Reactor, want: dap_client::Transport, bound: Duration) {
    let mut cfg = config(d, b"E").transport(dap_client::Transport::Auto);
    cfg.udp_fallback = Duration::from_millis(300);
    let (c, rx) = client(r, 0, cfg);
    let start = Instant::now();
    assert_eq!(c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT), Ok(Stage::StreamStreaming));
    assert!(start.elapsed() < bound, "{:?}", start.elapsed());
    assert_eq!(c.transport(), Some(want));
    c.write(b'E', 1, &b"auto"[..]).unwrap();
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), (b'E', 1, b"auto".to_vec()));
}

#[test]
fn auto_uses_udp_where_it_works_and_falls_back_to_http_where_it_does_not() {
    let r = reactor(1);
    // UDP served: UDP.
    let d = dapd_with(|_| {});
    auto_reaches(&d, &r, dap_client::Transport::Udp, TIMEOUT);
    d.shutdown(Duration::from_secs(5));
    // UDP off: the node refuses transport UDP (406) and the client asks again for HTTP.
    let d = dapd_with(|c| c.udp.enabled = false);
    auto_reaches(&d, &r, dap_client::Transport::Http, TIMEOUT);
    d.shutdown(Duration::from_secs(5));
    // UDP announced where nothing answers (a black-holed port): no authenticated answer
    // within the 300 ms fallback, then HTTP.
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    let d = dapd_with(|c| c.udp.advertise = format!("127.0.0.1:{port}"));
    auto_reaches(&d, &r, dap_client::Transport::Http, Duration::from_secs(10));
    drop(hole);
    d.shutdown(Duration::from_secs(5));
}

#[test]
fn an_unreliable_channel_over_udp_carries_messages_as_datagrams() {
    let d = dapd(1);
    let r = reactor(1);
    let mut cfg = config(&d, b"E").transport(dap_client::Transport::Udp);
    cfg.unreliable = b"E".to_vec();
    let (c, rx) = client(&r, 0, cfg);
    assert_eq!(c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT), Ok(Stage::StreamStreaming));
    // Small messages one at a time (each a datagram; loopback loses none of so few).
    for i in 0..50u8 {
        c.write(b'E', i, vec![i; 500]).unwrap();
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), (b'E', i, vec![i; 500]));
    }
    drop(c);
    d.shutdown(Duration::from_secs(5));
}

/// Over UDP, StreamSession completes once the first datagram has left, and StreamConnected
/// only with the first authenticated answer: against a node that announces a UDP address
/// where nothing answers, the session stage is reached (the datagram arrives there) and the
/// connected stage fails within the connect timeout.
#[test]
fn over_udp_the_session_stage_is_the_first_datagram_and_connected_is_the_answer() {
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    hole.set_read_timeout(Some(TIMEOUT)).unwrap();
    let port = hole.local_addr().unwrap().port();
    let d = dapd_with(|c| c.udp.advertise = format!("127.0.0.1:{port}"));
    let r = reactor(1);
    let mut cfg = config(&d, b"E").transport(dap_client::Transport::Udp);
    cfg.http.connect_timeout = Duration::from_millis(300);
    cfg.retry.max_tries = Some(1);
    let (c, _rx) = client(&r, 0, cfg);
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let log = statuses.clone();
    c.on_status(move |stage, status, _| log.lock().unwrap().push((stage, status)));
    assert_eq!(c.go_stage_blocking(Stage::StreamSession, TIMEOUT), Ok(Stage::StreamSession));
    let mut buf = [0u8; 2048];
    let (n, _) = hole.recv_from(&mut buf).expect("the first datagram reached the announced port");
    assert!(n > 0);
    let err = c.go_stage_blocking(Stage::StreamConnected, TIMEOUT).unwrap_err();
    assert_eq!(err.stage(), Stage::StreamConnected, "{err:?}");
    let seen = statuses.lock().unwrap().clone();
    assert!(seen.contains(&(Stage::StreamSession, Status::Complete)), "{seen:?}");
    assert!(!seen.contains(&(Stage::StreamConnected, Status::Done)), "{seen:?}");
    drop(c);
    d.shutdown(Duration::from_secs(5));
}
