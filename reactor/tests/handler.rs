//! The `Handler` callbacks: order, and isolation of a panicking handler.

mod util;

use std::io::{self, Write};

use dap_reactor::{Esocket, EsocketKind, Handler, PeerAddr, ReactorError};
use util::{Ev, Mode, Recorder};

/// Echoes, but panics when it reads "panic".
struct Fragile;

impl Handler for Fragile {
    fn on_read(&mut self, es: &mut Esocket<'_>) {
        assert!(es.buf_in() != b"panic", "the handler panics on purpose");
        let _ = es.copy_in_to_out();
    }
}

#[test]
fn a_panicking_handler_closes_only_its_connection() {
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap();
    let listening = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), |_: &PeerAddr| {
            Some(Box::new(Fragile) as Box<dyn Handler>)
        })
        .unwrap();
    let addr = listening.local_addr().unwrap();
    let mut survivor = util::connect(addr);
    util::round_trip(&mut survivor, b"before");

    let mut victim = util::connect(addr);
    util::round_trip(&mut victim, b"fine so far");
    victim.write_all(b"panic").unwrap();
    util::assert_closed(&mut victim, true);
    util::wait_stats(worker, "the panicking connection to go", |s| {
        s.esockets_of(EsocketKind::Tcp) == 1
    });

    // The worker carries on: the other connection still echoes, and new ones are accepted.
    util::round_trip(&mut survivor, b"after");
    let mut newcomer = util::connect(addr);
    util::round_trip(&mut newcomer, b"new");
    util::shutdown(reactor);
}

/// Records its callbacks; panics when it reads "panic", and in `on_error` too if told to.
struct FragileRecorder {
    inner: Recorder,
    panic_in_on_error: bool,
}

impl Handler for FragileRecorder {
    fn on_read(&mut self, es: &mut Esocket<'_>) {
        assert!(es.buf_in() != b"panic", "the handler panics on purpose");
        self.inner.on_read(es);
    }

    fn on_error(&mut self, es: &mut Esocket<'_>, err: &io::Error) {
        self.inner.on_error(es, err);
        assert!(!self.panic_in_on_error, "on_error panics on purpose");
    }

    fn on_delete(&mut self, es: &mut Esocket<'_>) {
        self.inner.on_delete(es);
    }
}

#[test]
fn a_handler_that_panicked_still_hears_on_error_and_on_delete() {
    for panic_in_on_error in [false, true] {
        let reactor = util::reactor(1);
        let worker = reactor.worker(0).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let listening = reactor
            .listen_tcp("127.0.0.1:0".parse().unwrap(), move |_: &PeerAddr| {
                let inner = Recorder::with(tx.clone(), Mode::Consume);
                Some(Box::new(FragileRecorder { inner, panic_in_on_error }) as Box<dyn Handler>)
            })
            .unwrap();
        let mut client = util::connect(listening.local_addr().unwrap());
        let events = util::Events { rx };
        client.write_all(b"fine").unwrap();
        assert_eq!(events.read_bytes(4), b"fine");
        client.write_all(b"panic").unwrap();
        // `deleted` fails on a second `on_error`: the panic in it is not reported to itself.
        let error = events.deleted();
        assert_eq!(error.map(|(_, re)| re), Some(Some(ReactorError::HandlerPanicked)));
        util::assert_closed(&mut client, true);
        let panics = if panic_in_on_error { 2 } else { 1 };
        util::wait_stats(worker, "both panics to be counted", |s| {
            s.handler_panics == panics && s.esockets_of(EsocketKind::Tcp) == 0
        });
        util::shutdown(reactor);
    }
}

#[test]
fn a_panicking_exec_closure_closes_the_esocket_with_an_error() {
    let reactor = util::reactor(1);
    let (mut client, handle, events) = util::adopted(&reactor, Mode::Consume);
    handle.exec(|_| panic!("an exec closure panics on purpose")).unwrap();
    let error = events.deleted();
    assert_eq!(error.map(|(_, re)| re), Some(Some(dap_reactor::ReactorError::HandlerPanicked)));
    util::assert_closed(&mut client, true);
    // The worker lives on.
    assert_eq!(util::on_worker(reactor.worker(0).unwrap(), |w| w.index()), 0);
    util::shutdown(reactor);
}

#[test]
fn a_panicking_worker_closure_leaves_the_worker_running() {
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap();
    worker.exec(|_| panic!("a worker closure panics on purpose")).unwrap();
    assert_eq!(util::on_worker(worker, |w| w.index()), 0);
    util::shutdown(reactor);
}

#[test]
fn callbacks_of_an_accepted_connection_come_in_order() {
    let reactor = util::reactor(1);
    let (factory, events) = util::recording_factory(Mode::Consume);
    let listening = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), factory).unwrap();
    let mut client = util::connect(listening.local_addr().unwrap());
    let handle = events.new_handle();
    client.write_all(b"abc").unwrap();
    assert_eq!(events.read_bytes(3), b"abc");
    handle.write(&b"x"[..]).unwrap();
    assert!(matches!(events.next(), Ev::WriteFinished));
    // Read it: closing a socket with unread input would send a reset instead of a FIN.
    assert_eq!(util::read_n(&mut client, 1), b"x");
    drop(client);
    let ev = events.next();
    assert!(matches!(ev, Ev::Delete), "an orderly close goes straight to on_delete, got {ev:?}");
    assert!(events.quiet_for(std::time::Duration::ZERO).is_ok());
    util::shutdown(reactor);
}
