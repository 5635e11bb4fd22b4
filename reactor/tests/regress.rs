//! Regression tests for bugs found in review (2026-11-21); each failed on the code as it was
//! reviewed and passes since its fix.

mod util;

use std::cell::RefCell;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dap_reactor::{EsocketKind, Handler, Limits, ListenerMode, PeerAddr, QueueSender};
use util::{Ev, Mode, Recorder};

/// A `HandlerFactory` is a user callback run on the worker; a panic in it is caught like any
/// other callback's. It used to kill the worker with every esocket it owned.
#[test]
fn factory_panic_does_not_kill_the_worker() {
    let reactor = util::reactor(1);
    let calls = Arc::new(AtomicUsize::new(0));
    let factory = {
        let calls = calls.clone();
        move |_: &PeerAddr| -> Option<Box<dyn Handler>> {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("factory refuses the first connection by panicking");
            }
            let (rec, _events) = Recorder::new(Mode::Echo);
            Some(rec.boxed())
        }
    };
    let listening = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), factory).unwrap();
    let addr = listening.local_addr().unwrap();
    let _first = util::connect(addr);
    util::wait_until("the factory to be called", || calls.load(Ordering::SeqCst) >= 1);
    // The worker must still be alive and serving its listener.
    let mut second = util::connect(addr);
    util::round_trip(&mut second, b"still alive");
    util::shutdown(reactor);
}

/// A "never give up" grace (`Duration::MAX`) in `Reactor::stop` means no deadline. It used to
/// be added to `Instant::now()` unchecked and panic (`close_linger` reaches it from `Drop`).
#[test]
fn stop_with_a_huge_grace_does_not_panic() {
    let reactor = util::reactor(1);
    let stopped = panic::catch_unwind(AssertUnwindSafe(|| reactor.stop(Duration::MAX)));
    assert!(stopped.is_ok(), "stop(Duration::MAX) panicked");
    util::shutdown(reactor);
}

/// Items a `QueueSender` accepted (`Ok`) are delivered, or counted when the queue esocket
/// closes with them still queued. Closing from the callback used to drop them silently.
#[test]
fn items_accepted_by_a_closing_queue_are_delivered_or_counted() {
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap().clone();
    let (delivered_tx, delivered) = crossbeam_channel::unbounded::<u32>();
    let (_handle, tx) = util::on_worker(&worker, move |w| {
        w.add_queue(16, move |es, item: u32| {
            let _ = delivered_tx.send(item);
            es.close();
        })
        .expect("queue")
    });
    let dead_before = worker.stats().dropped_dead;
    let release = util::hold(&worker);
    for i in 0..3 {
        tx.send(i).expect("the queue accepts the item");
    }
    drop(release);
    util::wait_stats(&worker, "the queue to close", |s| s.esockets_of(EsocketKind::Queue) == 0);
    let dead = worker.stats().dropped_dead - dead_before;
    let got = delivered.try_iter().count() as u64;
    assert_eq!(got + dead, 3, "{got} delivered, {dead} counted, of 3 accepted");
    util::shutdown(reactor);
}

/// A graceful stop delivers the items queued when it began, so a queue whose callback queues
/// more work (a retry, a state machine step) cannot hold it up. It used to drain with an
/// unlimited budget and never reach its grace deadline.
#[test]
fn stop_finishes_with_a_self_feeding_queue() {
    let reactor = util::reactor(1);
    let tx = util::on_worker(reactor.worker(0).unwrap(), |w| {
        let me: Rc<RefCell<Option<QueueSender<u64>>>> = Rc::default();
        let cb_me = me.clone();
        let (_, tx) = w
            .add_queue(4, move |_, n: u64| {
                if let Some(tx) = &*cb_me.borrow() {
                    let _ = tx.send(n + 1);
                }
            })
            .expect("queue");
        *me.borrow_mut() = Some(tx.clone());
        tx
    });
    tx.send(0).unwrap();
    drop(tx);
    // util::shutdown bounds the stop by util::TIMEOUT and fails the test if it hangs.
    util::shutdown(reactor);
}

/// In single-listener (spread) mode the listener skips workers with a full esocket table. It
/// used to pick by connection count alone, so a worker full of other esockets (timers here)
/// dropped the connection although the listener's own worker had room.
#[test]
fn spread_mode_does_not_drop_connections_while_a_worker_has_room() {
    let mut limits = Limits::default();
    limits.max_esockets = 3;
    let reactor = util::builder(2)
        .listener_mode(ListenerMode::Single)
        .limits(limits)
        .start()
        .expect("reactor starts");
    // Worker 1: three long timers fill its table; it holds no connection, so its load is 0.
    util::on_worker(reactor.worker(1).unwrap(), |w| {
        for _ in 0..3 {
            w.add_timer(Duration::from_secs(3600), |_| true).expect("timer");
        }
    });
    let (factory, _events) = util::recording_factory(Mode::Echo);
    let listening = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), factory).unwrap();
    assert_eq!(listening.mode(), ListenerMode::Single);
    let addr = listening.local_addr().unwrap();
    // The first connection stays on worker 0 (a tie keeps it local): listener + 1 of 3 slots.
    let mut first = util::connect(addr);
    util::round_trip(&mut first, b"one");
    // Worker 0 still has a free slot, but worker 1 has the lower load.
    let mut second = util::connect(addr);
    util::round_trip(&mut second, b"second connection");
    assert_eq!(util::sum_stat(&reactor, |s| s.accept_dropped), 0);
    util::shutdown(reactor);
}

/// Datagrams queued behind a UDP receive error (an ICMP report on a connected socket) are
/// still delivered. The error used to end the receive loop with `read_ready` set and nothing
/// rescheduled, so under edge-triggered epoll they waited for yet another datagram.
#[test]
fn udp_datagrams_queued_behind_an_error_are_delivered() {
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap().clone();
    // The peer the esocket is connected to; closed for a moment to provoke ECONNREFUSED.
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(peer_addr).unwrap();
    let sock_addr = sock.local_addr().unwrap();
    let clone = sock.try_clone().unwrap();
    let (rec, events) = Recorder::new(Mode::Consume);
    util::on_worker(&worker, move |w| w.add_udp(sock, rec.boxed())).expect("add udp");
    assert!(matches!(events.next(), Ev::New(_, EsocketKind::Udp)));

    // With the worker held, queue an error and then two datagrams on the socket.
    let release = util::hold(&worker);
    drop(peer);
    clone.send(b"to a closed port").unwrap();
    // The ICMP report is asynchronous in principle: wait until the socket carries the error
    // (poll reports POLLERR without consuming SO_ERROR).
    util::wait_until("the ICMP error to land", || {
        let mut pfd = libc::pollfd { fd: clone.as_raw_fd(), events: 0, revents: 0 };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n == 1 && pfd.revents & libc::POLLERR != 0
    });
    let peer = UdpSocket::bind(peer_addr).expect("rebind the peer's port");
    peer.send_to(b"d1", sock_addr).unwrap();
    peer.send_to(b"d2", sock_addr).unwrap();
    drop(release);
    for want in [&b"d1"[..], b"d2"] {
        match events.wait_for("a queued datagram", |e| matches!(e, Ev::Datagram(..))) {
            Ev::Datagram(data, _) => assert_eq!(data, want),
            _ => unreachable!(),
        }
    }
    util::shutdown(reactor);
}
