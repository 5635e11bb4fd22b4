//! Listener esockets: per-worker `SO_REUSEPORT` listeners, the single-listener fallback that
//! hands connections to the least-loaded worker, refusing, closing, and bind errors.

mod util;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use dap_reactor::{EsocketKind, Handler, ListenerMode, PeerAddr, Reactor};
use util::Mode;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[track_caller]
fn accepted(reactor: &Reactor) -> Vec<u64> {
    reactor.workers().iter().map(|w| w.stats().accepted).collect()
}

/// Waits until the workers have accepted `n` connections in all; returns the per-worker counts.
#[track_caller]
fn wait_accepted(reactor: &Reactor, n: u64) -> Vec<u64> {
    util::wait_until(&format!("{n} accepted connections"), || {
        accepted(reactor).iter().sum::<u64>() >= n
    });
    let counts = accepted(reactor);
    assert_eq!(counts.iter().sum::<u64>(), n, "per-worker accepted counts: {counts:?}");
    counts
}

#[test]
fn per_worker_listeners_share_the_port_and_both_accept() {
    const CONNS: u64 = 64;
    let reactor = util::reactor(2);
    let (factory, _events) = util::recording_factory(Mode::Echo);
    let listening = reactor.listen_tcp(loopback(), factory).unwrap();
    assert_eq!(listening.mode(), ListenerMode::PerWorker);
    let mut workers: Vec<usize> = listening.handles().iter().map(|h| h.worker_index()).collect();
    workers.sort_unstable();
    assert_eq!(workers, vec![0, 1], "one listener per worker");
    let addr = listening.local_addr().unwrap();
    for i in 0..CONNS {
        let mut c = util::connect(addr);
        util::round_trip(&mut c, format!("conn {i}").as_bytes());
    }
    // The kernel spreads by a hash of the addresses: not evenly, but over 64 connections
    // both workers get some (the odds of one getting all are 2^-63).
    let counts = wait_accepted(&reactor, CONNS);
    assert!(counts.iter().all(|&c| c > 0), "a worker accepted nothing: {counts:?}");
    util::shutdown(reactor);
}

#[test]
fn single_listener_hands_connections_to_the_least_loaded_worker() {
    const CONNS: u64 = 16;
    let reactor = util::builder(2).listener_mode(ListenerMode::Single).start().unwrap();
    let (factory, _events) = util::recording_factory(Mode::Echo);
    let listening = reactor.listen_tcp(loopback(), factory).unwrap();
    assert_eq!(listening.mode(), ListenerMode::Single);
    assert_eq!(listening.handles().len(), 1);
    let addr = listening.local_addr().unwrap();
    // Connections stay open, one at a time, so the loads differ when each is placed.
    let mut open = Vec::new();
    for i in 0..CONNS {
        let mut c = util::connect(addr);
        util::round_trip(&mut c, format!("conn {i}").as_bytes());
        open.push(c);
    }
    let counts = wait_accepted(&reactor, CONNS);
    assert!(counts.iter().all(|&c| c > 0), "a worker got nothing: {counts:?}");
    drop(open);
    util::shutdown(reactor);
}

/// A burst of connections accepted in one go must still be spread: the accepting worker has
/// to count the connections it has just kept when it compares loads.
#[test]
fn single_listener_spreads_a_burst_of_connections() {
    const CONNS: u64 = 16;
    let reactor = util::builder(2).listener_mode(ListenerMode::Single).start().unwrap();
    let (factory, _events) = util::recording_factory(Mode::Echo);
    let listening = reactor.listen_tcp(loopback(), factory).unwrap();
    let addr = listening.local_addr().unwrap();
    let listener_worker = reactor.worker(listening.handles()[0].worker_index()).unwrap();

    // Hold the listener's worker while the connections complete in the kernel's backlog.
    let release = util::hold(listener_worker);
    let mut open: Vec<TcpStream> = (0..CONNS).map(|_| util::connect(addr)).collect();
    release.send(()).unwrap();
    for (i, c) in open.iter_mut().enumerate() {
        util::round_trip(c, format!("conn {i}").as_bytes());
    }
    let counts = wait_accepted(&reactor, CONNS);
    assert!(counts.iter().all(|&c| c > 0), "the burst was not spread: {counts:?}");
    util::shutdown(reactor);
}

#[test]
fn unix_listener_spreads_over_workers() {
    const CONNS: u64 = 8;
    let reactor = util::reactor(2);
    let path = util::TempPath::new("spread");
    let (factory, _events) = util::recording_factory(Mode::Echo);
    reactor.listen_unix(path.path(), factory).unwrap();
    let mut open = Vec::new();
    for _ in 0..CONNS {
        let mut c = UnixStream::connect(path.path()).unwrap();
        c.set_read_timeout(Some(util::TIMEOUT)).unwrap();
        std::io::Write::write_all(&mut c, b"u").unwrap();
        assert_eq!(util::read_n(&mut c, 1), b"u");
        open.push(c);
    }
    let counts = wait_accepted(&reactor, CONNS);
    assert!(counts.iter().all(|&c| c > 0), "a worker got nothing: {counts:?}");
    util::shutdown(reactor);
}

#[test]
fn factory_returning_none_refuses_the_connection() {
    let reactor = util::reactor(1);
    let listening =
        reactor.listen_tcp(loopback(), |_: &PeerAddr| None::<Box<dyn Handler>>).unwrap();
    let mut c = util::connect(listening.local_addr().unwrap());
    util::assert_closed(&mut c, true);
    assert_eq!(reactor.worker(0).unwrap().stats().accepted, 0);
    assert_eq!(reactor.worker(0).unwrap().stats().esockets_of(EsocketKind::Tcp), 0);
    util::shutdown(reactor);
}

#[test]
fn closing_the_listening_stops_accepting_but_keeps_connections() {
    let reactor = util::reactor(2);
    let (factory, _events) = util::recording_factory(Mode::Echo);
    let listening = reactor.listen_tcp(loopback(), factory).unwrap();
    let addr = listening.local_addr().unwrap();
    let mut kept = util::connect(addr);
    util::round_trip(&mut kept, b"before");

    listening.close();
    util::wait_until("the port to refuse connections", || {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Err(e) => e.kind() == ErrorKind::ConnectionRefused,
            Ok(_) => false,
        }
    });
    for w in reactor.workers() {
        util::wait_stats(w, "the listeners to go", |s| s.esockets_of(EsocketKind::Listener) == 0);
    }
    util::round_trip(&mut kept, b"after");
    util::shutdown(reactor);
}

#[test]
fn listening_on_a_taken_port_fails_with_addr_in_use() {
    let taken = TcpListener::bind(loopback()).unwrap();
    let addr = taken.local_addr().unwrap();
    for threads in [1, 2] {
        let reactor = util::reactor(threads);
        let (factory, _events) = util::recording_factory(Mode::Echo);
        let err = reactor.listen_tcp(addr, factory).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AddrInUse, "with {threads} worker(s)");
        util::shutdown(reactor);
    }
}

/// A worker whose esocket table is full leaves new connections in the kernel's backlog and
/// takes them as soon as a slot frees.
#[test]
fn full_worker_pauses_accepting_until_a_slot_frees() {
    let mut limits = dap_reactor::Limits::default();
    limits.max_esockets = 3; // the listener and two connections
    let reactor = util::builder(1).limits(limits).start().unwrap();
    let (factory, _events) = util::recording_factory(Mode::Echo);
    let listening = reactor.listen_tcp(loopback(), factory).unwrap();
    let addr = listening.local_addr().unwrap();
    let mut first = util::connect(addr);
    util::round_trip(&mut first, b"1");
    let mut second = util::connect(addr);
    util::round_trip(&mut second, b"2");

    let mut third = util::connect(addr); // completes in the kernel's backlog
    std::io::Write::write_all(&mut third, b"3").unwrap();
    third.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut byte = [0u8; 1];
    match std::io::Read::read(&mut third, &mut byte) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("a full worker served a third connection: {other:?}"),
    }
    assert_eq!(reactor.worker(0).unwrap().stats().accepted, 2);

    drop(first);
    third.set_read_timeout(Some(util::TIMEOUT)).unwrap();
    assert_eq!(util::read_n(&mut third, 1), b"3", "accepted once a slot freed");
    util::round_trip(&mut second, b"still");
    wait_accepted(&reactor, 3);
    util::shutdown(reactor);
}
