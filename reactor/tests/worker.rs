//! `Reactor` and `Worker`: placement, closures on the worker, start hooks, counters.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dap_reactor::{EsocketKind, Reactor, Worker};
use util::{Mode, Recorder};

/// Adds `n` adopted connections to `worker`; returns their clients (keep them open).
#[track_caller]
fn add_connections(worker: &Worker, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let (client, server) = util::tcp_pair();
            let (rec, _events) = Recorder::new(Mode::Consume);
            util::on_worker(worker, move |w| w.adopt_tcp(server, rec.boxed())).unwrap();
            client
        })
        .collect()
}

#[test]
fn worker_auto_picks_the_worker_with_fewer_connections() {
    let reactor = util::reactor(2);
    assert_eq!(reactor.worker_auto().index(), 0, "ties go to the lowest index");
    let w0 = reactor.worker(0).unwrap();
    let w1 = reactor.worker(1).unwrap();

    let _on_0 = add_connections(w0, 3);
    util::wait_until("worker 0's load to show", || w0.load() == 3);
    assert_eq!(reactor.worker_auto().index(), 1);

    let _on_1 = add_connections(w1, 5);
    util::wait_until("worker 1's load to show", || w1.load() == 5);
    assert_eq!(reactor.worker_auto().index(), 0);
    util::shutdown(reactor);
}

#[test]
fn reactor_lists_its_workers() {
    let reactor = util::reactor(2);
    assert_eq!(reactor.len(), 2);
    assert!(!reactor.is_empty());
    assert!(reactor.worker(2).is_none());
    let indices: Vec<usize> = reactor.workers().iter().map(|w| w.index()).collect();
    assert_eq!(indices, vec![0, 1]);
    let names = util::on_worker(reactor.worker(1).unwrap(), |w| {
        (w.index(), w.peers().len(), std::thread::current().name().map(str::to_owned))
    });
    assert_eq!(names, (1, 2, Some("test-worker-1".to_owned())));
    util::shutdown(reactor);
}

#[test]
fn zero_threads_means_one_worker_per_allowed_cpu() {
    let reactor = util::builder(0).start().unwrap();
    assert_eq!(reactor.len(), util::cpus_allowed("/proc/self/status").len());
    util::shutdown(reactor);
}

#[test]
fn start_hook_runs_on_every_worker_thread() {
    let ran = Arc::new(AtomicUsize::new(0));
    let seen = ran.clone();
    let reactor: Reactor = util::builder(2)
        .on_worker_start(move |w| {
            assert!(std::thread::current().name().unwrap().starts_with("test-worker-"));
            seen.fetch_add(1 << (w.index() * 8), Ordering::SeqCst);
        })
        .start()
        .unwrap();
    // Closures posted after start run after the hook.
    for w in reactor.workers() {
        util::on_worker(w, |_| ());
    }
    assert_eq!(ran.load(Ordering::SeqCst), 1 | (1 << 8), "once on each worker");
    util::shutdown(reactor);
}

#[test]
fn stats_count_esockets_bytes_and_turns() {
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap();
    let (mut client, server) = util::tcp_pair();
    let (rec, events) = Recorder::new(Mode::Consume);
    let handle = util::on_worker(worker, move |w| w.adopt_tcp(server, rec.boxed())).unwrap();
    events.new_handle();
    client.write_all(&[1u8; 1000]).unwrap();
    events.read_bytes(1000);
    handle.write(vec![2u8; 500]).unwrap();
    util::read_n(&mut client, 500);
    let s = util::wait_stats(worker, "byte counters", |s| s.bytes_in >= 1000 && s.bytes_out >= 500);
    assert_eq!((s.bytes_in, s.bytes_out), (1000, 500));
    assert_eq!(s.worker, 0);
    assert_eq!(s.esockets_of(EsocketKind::Tcp), 1);
    assert_eq!(s.esockets_total(), 1);
    assert!(s.loop_turns > 0 && s.events > 0);
    // The in-worker view agrees.
    let inside = util::on_worker(worker, |w| w.stats());
    assert_eq!(inside.esockets_of(EsocketKind::Tcp), 1);
    assert_eq!(inside.bytes_in, 1000);
    util::shutdown(reactor);
}

#[test]
fn with_esocket_reaches_another_esocket_of_the_same_worker() {
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap();
    let (mut client, server) = util::tcp_pair();
    let (rec, _events) = Recorder::new(Mode::Consume);
    let handle = util::on_worker(worker, move |w| w.adopt_tcp(server, rec.boxed())).unwrap();
    let wrote =
        util::on_worker(worker, move |w| w.with_esocket(handle, |es| es.write(b"direct").unwrap()));
    assert_eq!(wrote, Some(6));
    assert_eq!(util::read_n(&mut client, 6), b"direct");
    handle.close().unwrap();
    util::wait_stats(worker, "the esocket to go", |s| s.esockets_of(EsocketKind::Tcp) == 0);
    assert_eq!(util::on_worker(worker, move |w| w.with_esocket(handle, |_| ())), None);
    util::shutdown(reactor);
}
