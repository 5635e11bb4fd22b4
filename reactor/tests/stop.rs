//! Stopping a reactor: graceful flush, the grace deadline, and what handles see afterwards.

mod util;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use dap_reactor::{Esocket, EsocketKind, Handler, Limits, PostError, Reactor};
use util::{Ev, Mode, Recorder};

/// Queues `len` bytes of the test pattern as soon as it is added.
struct Dump(usize);

impl Handler for Dump {
    fn on_new(&mut self, es: &mut Esocket<'_>) {
        es.write_bytes(Bytes::from(util::pattern(0, self.0))).expect("buf_out_cap fits it");
    }
}

/// Calls `wait` on another thread; the receiver yields once it returns.
fn wait_in_background(reactor: Reactor) -> Receiver<()> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        reactor.wait();
        let _ = tx.send(());
    });
    rx
}

#[track_caller]
fn dumping(len: usize, reactor: &Reactor) -> (TcpStream, dap_reactor::EsocketHandle) {
    // Small kernel buffers, so most of the output is still in buf_out when the stop begins.
    let (client, server) = util::small_tcp_pair(16 * 1024);
    let handle = util::on_worker(reactor.worker(0).unwrap(), move |w| {
        w.adopt_tcp(server, Box::new(Dump(len)))
    })
    .unwrap();
    (client, handle)
}

fn big_out() -> Limits {
    let mut limits = Limits::default();
    limits.buf_out_cap = 4 << 20;
    limits
}

#[test]
fn graceful_stop_flushes_pending_output_then_closes() {
    const LEN: usize = 2 << 20;
    let reactor = util::builder(1).limits(big_out()).start().unwrap();
    let (mut client, handle) = dumping(LEN, &reactor);
    let pending = util::on_esocket(handle, |es| es.out_len());
    assert!(pending > 0, "the test needs output still queued when the stop begins");

    // Only now does the client read: everything arrives, then end of file.
    stop_then_read_all(reactor, &mut client, LEN);
}

/// Queues `len` bytes of the test pattern and never reads: the peer's input stays unread.
struct DumpDeaf(usize);

impl Handler for DumpDeaf {
    fn on_new(&mut self, es: &mut Esocket<'_>) {
        es.set_readable(false);
        es.write_bytes(Bytes::from(util::pattern(0, self.0))).expect("buf_out_cap fits it");
    }
}

/// A socket closed with input it never read would be answered with a reset, which throws
/// away what the kernel still had to send: the close reads and drops that input first, so
/// the peer gets everything, then a FIN.
#[test]
fn a_close_with_unread_input_is_a_fin_not_a_reset() {
    use std::io::Write;
    const LEN: usize = 2 << 20;
    let reactor = util::builder(1).limits(big_out()).start().unwrap();
    let (mut client, server) = util::small_tcp_pair(16 * 1024);
    util::on_worker(reactor.worker(0).unwrap(), move |w| {
        w.adopt_tcp(server, Box::new(DumpDeaf(LEN)))
    })
    .unwrap();
    client.write_all(&[7u8; 4096]).expect("the server's kernel takes it, unread");
    stop_then_read_all(reactor, &mut client, LEN);
}

/// Stops `reactor` gracefully, then reads `client` to its end: `len` bytes of the test
/// pattern, and `wait()` returns.
fn stop_then_read_all(reactor: Reactor, client: &mut TcpStream, len: usize) {
    reactor.stop(Duration::from_secs(10));
    let waited = wait_in_background(reactor);
    let got = util::read_to_eof(client);
    assert_eq!(got.len(), len);
    util::assert_pattern(&got);
    util::recv(&waited, "wait() to return");
}

#[test]
fn stop_deadline_bounds_a_flush_that_cannot_finish() {
    const LEN: usize = 2 << 20;
    let reactor = util::builder(1).limits(big_out()).start().unwrap();
    let (client, handle) = dumping(LEN, &reactor);
    assert!(util::on_esocket(handle, |es| es.out_len()) > 0);
    // The client never reads: the flush cannot finish, and the grace period ends it.
    let started = Instant::now();
    reactor.stop(Duration::from_millis(200));
    let waited = wait_in_background(reactor);
    util::recv(&waited, "wait() to return after the grace period");
    assert!(started.elapsed() >= Duration::from_millis(200) - Duration::from_millis(5));
    drop(client);
}

#[test]
fn after_stop_handles_and_workers_report_gone_and_the_port_is_closed() {
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap().clone();
    let (factory, conns) = util::per_connection_factory(Mode::Echo);
    let listening = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), factory).unwrap();
    let addr = listening.local_addr().unwrap();
    let mut client = util::connect(addr);
    util::round_trip(&mut client, b"hi");
    let events = util::recv(&conns, "the connection");
    let handle = events.new_handle();

    util::shutdown(reactor);
    // The connection was closed gracefully, and everything posted now fails with Gone.
    assert_eq!(events.deleted(), None);
    util::assert_closed(&mut client, true);
    assert_eq!(handle.write(&b"late"[..]), Err(PostError::Gone));
    assert_eq!(handle.close(), Err(PostError::Gone));
    assert_eq!(worker.exec(|_| {}), Err(PostError::Gone));
    let err = TcpStream::connect_timeout(&addr, util::TIMEOUT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    assert_eq!(worker.stats().esockets_total(), 0);
}

#[test]
fn stopping_worker_refuses_new_esockets() {
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap().clone();
    // Keep the worker alive through the stop with a connection whose peer is slow to read.
    let (client, server) = util::small_tcp_pair(16 * 1024);
    let (rec, events) = Recorder::new(Mode::Consume);
    let handle = util::on_worker(&worker, move |w| w.adopt_tcp(server, rec.boxed())).unwrap();
    events.new_handle();
    handle.write(Bytes::from(util::pattern(0, 200 * 1024))).unwrap();
    reactor.stop(Duration::from_secs(10));
    let refused = util::on_worker(&worker, move |w| {
        assert!(w.is_stopping());
        w.add_timer(Duration::from_millis(1), |_| true)
            .map(|_| ())
            .map_err(|e| dap_reactor::ReactorError::of(&e))
    });
    assert_eq!(refused, Err(Some(dap_reactor::ReactorError::Stopping)));
    let mut client = client;
    assert_eq!(util::read_to_eof(&mut client).len(), 200 * 1024);
    assert!(matches!(events.wait_for("on_delete", |e| matches!(e, Ev::Delete)), Ev::Delete));
    let waited = wait_in_background(reactor);
    util::recv(&waited, "wait() to return");
    assert_eq!(worker.stats().esockets_of(EsocketKind::Tcp), 0);
}

#[test]
fn dropping_a_reactor_stops_it() {
    let reactor = util::reactor(2);
    let worker = reactor.worker(1).unwrap().clone();
    let (_client, server) = util::tcp_pair();
    let (rec, _events) = Recorder::new(Mode::Consume);
    let handle = util::on_worker(&worker, move |w| w.adopt_tcp(server, rec.boxed())).unwrap();
    drop(reactor);
    assert_eq!(handle.write(&b"x"[..]), Err(PostError::Gone));
    assert_eq!(worker.exec(|_| {}), Err(PostError::Gone));
}
