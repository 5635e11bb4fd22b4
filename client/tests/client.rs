//! The client against a real node over loopback: stages, echo, connect-on-demand, each
//! error from a real fault, tear-down, reconnects, and many clients at once.

mod util;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dap_client::{ClientError, RetryPolicy, Stage, Status, WriteError};
use dap_net::enc::{AllowList, ClientAuth, ClientCert, EncConfig, NodeKey};
use parking_lot::Mutex;
use util::{Node, TIMEOUT, client, client_reactor, config, free_port, wait_until};

#[track_caller]
fn recv(rx: &crossbeam_channel::Receiver<(u8, Vec<u8>)>) -> (u8, Vec<u8>) {
    rx.recv_timeout(TIMEOUT).expect("a message in time")
}

#[test]
fn reaches_streaming_through_every_stage_and_echoes() {
    let node = Node::start(EncConfig::default());
    let reactor = client_reactor(1);
    let (c, rx) = client(&reactor, 0, config(node.addr, node.key));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    c.on_status(move |stage, status, _| s.lock().push((stage, status)));
    assert_eq!(
        c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap(),
        Stage::StreamStreaming
    );
    assert!(c.is_streaming());
    let done: Vec<Stage> =
        seen.lock().iter().filter(|(_, st)| *st == Status::Done).map(|(s, _)| *s).collect();
    assert_eq!(
        done,
        [
            Stage::EncInit,
            Stage::StreamCtl,
            Stage::StreamSession,
            Stage::StreamConnected,
            Stage::StreamStreaming
        ]
    );
    assert_eq!(seen.lock().last(), Some(&(Stage::StreamStreaming, Status::Complete)));
    c.write(b'E', 7, &b"hello"[..]).unwrap();
    c.write(b'F', 8, &b"world"[..]).unwrap();
    let mut got = vec![recv(&rx), recv(&rx)];
    got.sort();
    assert_eq!(got, vec![(b'E', b"hello".to_vec()), (b'F', b"world".to_vec())]);
    assert!(matches!(c.write(b'Z', 0, &b"x"[..]), Err(WriteError::NotActive('Z'))));
}

#[test]
fn writes_before_streaming_need_connect_on_demand_and_then_arrive_in_order() {
    let node = Node::start(EncConfig::default());
    let reactor = client_reactor(1);
    let (c, rx) = client(&reactor, 0, config(node.addr, node.key));
    assert!(matches!(c.write(b'E', 0, &b"early"[..]), Err(WriteError::WrongStage(Stage::Begin))));
    c.set_connect_on_demand(true);
    for i in 0..200u32 {
        c.write(b'E', 0, i.to_be_bytes().to_vec()).unwrap();
    }
    // No go_stage: the first write sets the client going.
    for i in 0..200u32 {
        assert_eq!(recv(&rx), (b'E', i.to_be_bytes().to_vec()));
    }
    assert!(c.is_streaming());
    assert_eq!(c.queued(), 0);
}

#[test]
fn a_node_that_is_down_is_connect_refused_at_enc_init() {
    let reactor = client_reactor(1);
    let (c, _rx) = client(&reactor, 0, config(free_port(), [1; 32]));
    let err = c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap_err();
    assert_eq!(err, ClientError::ConnectRefused { stage: Stage::EncInit });
    assert_eq!(err.stage(), Stage::EncInit);
    assert_eq!(c.stage(), (Stage::EncInit, Status::Error));
}

#[test]
fn a_wrong_node_key_fails_at_once_without_retries() {
    let node = Node::start(EncConfig::default());
    let reactor = client_reactor(1);
    let impostor = NodeKey::generate().public_key();
    let mut cfg = config(node.addr, impostor);
    cfg.retry = RetryPolicy::default().delays(Duration::from_secs(60), Duration::from_secs(60));
    let (c, _rx) = client(&reactor, 0, cfg);
    // Not retryable: the answer comes long before a single retry delay.
    assert_eq!(c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT), Err(ClientError::WrongKey));
}

#[test]
fn a_missing_or_unlisted_certificate_is_an_auth_error() {
    let allowed = Arc::new(ClientCert::generate());
    let mut list = AllowList::new();
    list.insert(allowed.public_key());
    let mut enc = EncConfig::default();
    enc.client_auth = ClientAuth::Required(list);
    let node = Node::start(enc);
    let reactor = client_reactor(1);
    let (c, _rx) = client(&reactor, 0, config(node.addr, node.key));
    let err = c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap_err();
    assert!(
        matches!(&err, ClientError::Auth { stage: Stage::EncInit, reason } if reason == "auth-required"),
        "{err:?}"
    );
    c.set_auth_cert(Some(Arc::new(ClientCert::generate())));
    let err = c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap_err();
    assert!(
        matches!(&err, ClientError::Auth { stage: Stage::EncInit, reason } if reason == "not-allowed"),
        "{err:?}"
    );
    c.set_auth_cert(Some(allowed));
    assert_eq!(c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT), Ok(Stage::StreamStreaming));
}

#[test]
fn a_garbage_stream_ctl_answer_is_a_bad_response() {
    let node = Node::start_at(
        "127.0.0.1:0".parse().unwrap(),
        EncConfig::default(),
        NodeKey::generate(),
        true,
    );
    let reactor = client_reactor(1);
    let (c, _rx) = client(&reactor, 0, config(node.addr, node.key));
    let err = c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap_err();
    assert!(matches!(err, ClientError::StreamCtlBadResponse(_)), "{err:?}");
    assert_eq!(err.stage(), Stage::StreamCtl);
    // The key was kept: the failure is at stream_ctl.
    assert_eq!(c.stage(), (Stage::StreamCtl, Status::Error));
}

#[test]
fn a_node_that_stops_answering_times_out() {
    // Accepts (the kernel does, from the backlog) and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let reactor = client_reactor(1);
    let mut cfg = config(silent.local_addr().unwrap(), [1; 32]);
    cfg.http.response_timeout = Duration::from_millis(300);
    let (c, _rx) = client(&reactor, 0, cfg);
    let err = c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap_err();
    assert_eq!(err, ClientError::Timeout { stage: Stage::EncInit });
    drop(silent);
}

#[test]
fn a_lower_target_tears_down_and_a_higher_one_builds_again() {
    let node = Node::start(EncConfig::default());
    let reactor = client_reactor(1);
    let (c, rx) = client(&reactor, 0, config(node.addr, node.key));
    c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap();
    wait_until("the session attached", || node.stream.table().len() == 1);
    // Down to the key: the stream and the session go.
    assert_eq!(c.go_stage_blocking(Stage::EncInit, TIMEOUT), Ok(Stage::EncInit));
    wait_until("the session released", || node.stream.table().is_empty());
    assert!(matches!(c.write(b'E', 0, &b"x"[..]), Err(WriteError::WrongStage(Stage::EncInit))));
    c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap();
    c.write(b'E', 0, &b"again"[..]).unwrap();
    assert_eq!(recv(&rx), (b'E', b"again".to_vec()));
    assert_eq!(node.stream.stats().sessions_created, 2);
    // Dropping the client closes its stream.
    drop(c);
    wait_until("the session released on drop", || node.stream.table().is_empty());
}

#[test]
fn abort_fails_a_pending_target() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let reactor = client_reactor(1);
    let (c, _rx) = client(&reactor, 0, config(silent.local_addr().unwrap(), [1; 32]));
    let (tx, rx) = crossbeam_channel::bounded(1);
    c.go_stage(Stage::StreamStreaming, move |r| {
        let _ = tx.send(r);
    });
    wait_until("enc_init in progress", || c.stage() == (Stage::EncInit, Status::InProgress));
    c.abort();
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), Err(ClientError::Aborted(Stage::EncInit)));
    assert_eq!(c.stage(), (Stage::Begin, Status::None));
}

#[test]
fn always_reconnect_streams_again_after_the_node_restarts() {
    let key = NodeKey::generate();
    let seed = key.to_pem();
    let node = Node::start_at("127.0.0.1:0".parse().unwrap(), EncConfig::default(), key, false);
    let addr = node.addr;
    let reactor = client_reactor(1);
    let long_delay = Duration::from_millis(800);
    let mut cfg = config(addr, node.key);
    // The default policy (no limit), its waits capped for the test.
    cfg.retry = RetryPolicy::default().delays(Duration::from_millis(50), long_delay);
    let (c, rx) = client(&reactor, 0, cfg);
    let streaming = Arc::new(AtomicUsize::new(0));
    let s = streaming.clone();
    c.on_status(move |stage, status, _| {
        if stage == Stage::StreamStreaming && status == Status::Complete {
            s.fetch_add(1, Ordering::SeqCst);
        }
    });
    c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap();
    node.stop();
    wait_until("the client noticed", || !c.is_streaming());
    // Down long enough for a few refused reconnects.
    wait_until("the reconnects are refused", || {
        c.last_error().is_some_and(|e| matches!(e, ClientError::ConnectRefused { .. }))
    });
    let node = Node::start_at(addr, EncConfig::default(), NodeKey::from_pem(&seed).unwrap(), false);
    let restarted = Instant::now();
    wait_until("streaming again", || streaming.load(Ordering::SeqCst) == 2);
    // Generous bound: one long delay plus set-up time under load.
    assert!(
        restarted.elapsed() < long_delay + Duration::from_secs(10),
        "{:?}",
        restarted.elapsed()
    );
    c.write(b'E', 0, &b"back"[..]).unwrap();
    assert_eq!(recv(&rx), (b'E', b"back".to_vec()));
    drop(node);
}

#[test]
fn a_thousand_clients_on_two_workers_stream_and_echo() {
    let _ = dap_reactor::raise_fd_limit();
    let node = Node::start(EncConfig::default());
    let reactor = client_reactor(2);
    const N: usize = 1000;
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut clients = Vec::with_capacity(N);
    for i in 0..N {
        let mut cfg = config(node.addr, node.key);
        cfg.retry.max_tries = Some(5);
        cfg.connect_on_demand = true;
        let c =
            dap_client::Client::new(&reactor.workers()[i % 2], cfg, Default::default()).unwrap();
        let tx = tx.clone();
        c.on_message(move |ch, m| {
            let _ = tx.send((i, ch, m.data));
        });
        clients.push(c);
    }
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    for c in &clients {
        let done_tx = done_tx.clone();
        c.go_stage(Stage::StreamStreaming, move |r| {
            let _ = done_tx.send(r);
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..N {
        let r = done_rx.recv_deadline(deadline).expect("every client in time");
        assert_eq!(r, Ok(Stage::StreamStreaming));
    }
    // All streaming at once, then each echoes.
    wait_until("all sessions attached", || node.stream.table().len() == N);
    for (i, c) in clients.iter().enumerate() {
        c.write(b'E', 0, format!("client {i}").into_bytes()).unwrap();
    }
    let mut seen = vec![false; N];
    for _ in 0..N {
        let (i, ch, data) = rx.recv_deadline(deadline).expect("every echo in time");
        assert_eq!((ch, data.to_vec()), (b'E', format!("client {i}").into_bytes()));
        assert!(!seen[i], "client {i} echoed twice");
        seen[i] = true;
    }
}

#[test]
fn a_key_the_node_forgot_is_replaced_by_a_new_handshake() {
    let mut enc = EncConfig::default();
    enc.store.idle_ttl = Duration::from_millis(200);
    let node = Node::start(enc);
    let reactor = client_reactor(1);
    let (c, rx) = client(&reactor, 0, config(node.addr, node.key));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    c.on_status(move |stage, status, _| s.lock().push((stage, status)));
    c.go_stage_blocking(Stage::EncInit, TIMEOUT).unwrap();
    let made = Instant::now();
    wait_until("the key's idle TTL passed", || made.elapsed() > Duration::from_millis(400));
    // stream_ctl is refused (401 expired key); the client runs enc_init again by itself.
    c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap();
    let seen = seen.lock().clone();
    assert!(seen.contains(&(Stage::StreamCtl, Status::Error)), "{seen:?}");
    let inits = seen.iter().filter(|s| **s == (Stage::EncInit, Status::Done)).count();
    assert_eq!(inits, 2, "{seen:?}");
    c.write(b'E', 0, &b"renewed"[..]).unwrap();
    assert_eq!(recv(&rx), (b'E', b"renewed".to_vec()));
}

#[test]
fn dropped_clients_release_everything_they_held_on_the_worker() {
    let node = Node::start(EncConfig::default());
    let reactor = client_reactor(1);
    let w = &reactor.workers()[0];
    let live = || w.stats().esockets.iter().sum::<u64>();
    let before = live();
    for i in 0..50 {
        let (c, _rx) = client(&reactor, 0, config(node.addr, node.key));
        if i % 2 == 0 {
            c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap();
        }
    }
    // Idle ones, streaming ones: each wake-up event, timer and stream is gone.
    wait_until("every client's esockets closed", || live() == before);
    wait_until("every session released", || node.stream.table().is_empty());
}

#[test]
fn each_go_stage_callback_hears_its_own_target() {
    let node = Node::start(EncConfig::default());
    let reactor = client_reactor(1);
    let (c, _rx) = client(&reactor, 0, config(node.addr, node.key));
    for _ in 0..20 {
        let (tx, rx) = crossbeam_channel::bounded(1);
        // Both usually reach the worker in one batch: the first is decided at once, the
        // second only after the climb.
        c.go_stage(Stage::Begin, move |r| {
            let _ = tx.send(r);
        });
        assert_eq!(
            c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT),
            Ok(Stage::StreamStreaming)
        );
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), Ok(Stage::Begin));
    }
}

#[test]
fn a_stream_kept_by_a_lower_target_is_still_watched() {
    let node = Node::start(EncConfig::default());
    let reactor = client_reactor(1);
    let (c, _rx) = client(&reactor, 0, config(node.addr, node.key));
    c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap();
    // Down to StreamConnected: the stream stays.
    assert_eq!(c.go_stage_blocking(Stage::StreamConnected, TIMEOUT), Ok(Stage::StreamConnected));
    assert_eq!(node.stream.live_streams(), 1);
    // The node goes away: the client must notice the stream it kept.
    node.stream.drain(Duration::from_secs(5));
    wait_until("the client noticed the lost stream", || c.last_error().is_some());
    assert_ne!(c.stage(), (Stage::StreamConnected, Status::Complete));
}

#[test]
fn an_ipv6_uplink_streams() {
    let node = Node::start_at(
        "[::1]:0".parse().unwrap(),
        EncConfig::default(),
        NodeKey::generate(),
        false,
    );
    let reactor = client_reactor(1);
    let (c, rx) = client(&reactor, 0, config(node.addr, node.key));
    c.set_uplink("::1", node.addr.port()).unwrap();
    c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap();
    c.write(b'E', 0, &b"v6"[..]).unwrap();
    assert_eq!(recv(&rx), (b'E', b"v6".to_vec()));
}

#[test]
fn a_host_name_uplink_is_resolved_through_dns_at_each_enc_init() {
    use dap_net::dns::{DnsServer, Resolver, ResolverConfig, ServerConfig, SharedZone, Zone};
    let node = Node::start(EncConfig::default());
    let reactor = client_reactor(1);
    let mut zone = Zone::new("test").unwrap();
    zone.add_a("node.test", std::net::Ipv4Addr::LOCALHOST, 60).unwrap();
    let dns = DnsServer::start_on(
        &reactor.workers()[0],
        "127.0.0.1:0".parse().unwrap(),
        SharedZone::new(zone),
        ServerConfig::default(),
    )
    .unwrap();
    let resolver =
        Resolver::start(&reactor.workers()[0], ResolverConfig::new(vec![dns.local_addr()]))
            .unwrap();
    let (c, rx) = client(&reactor, 0, config(free_port(), node.key));
    c.set_resolver(resolver);
    c.set_uplink("node.test", node.addr.port()).unwrap();
    c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap();
    c.write(b'E', 0, &b"by name"[..]).unwrap();
    assert_eq!(recv(&rx), (b'E', b"by name".to_vec()));
    // A name that does not exist fails at enc_init, naming the name.
    c.set_uplink("nowhere.test", node.addr.port()).unwrap();
    c.go_stage_blocking(Stage::Begin, TIMEOUT).unwrap();
    let err = c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap_err();
    assert_eq!(err.stage(), Stage::EncInit);
    assert!(err.to_string().contains("nowhere.test"), "{err}");
    assert!(c.set_uplink("bad name!", 1).is_err());
}
