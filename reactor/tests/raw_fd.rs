//! Raw-fd esockets: any descriptor epoll accepts, with the handler doing its own I/O.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use crossbeam_channel::{Receiver, Sender};
use dap_reactor::{Esocket, EsocketHandle, EsocketKind, Handler};

#[derive(Debug)]
enum RawEv {
    Data(Vec<u8>),
    Writable,
    Eof,
    Deleted,
}

/// Reads the raw fd (a Unix stream) until `WouldBlock`, as edge-triggered notification needs.
struct RawReader {
    expected_fd: RawFd,
    tx: Sender<RawEv>,
}

impl Handler for RawReader {
    fn on_read(&mut self, es: &mut Esocket<'_>) {
        assert_eq!(es.kind(), EsocketKind::Raw);
        let fd = es.raw_fd().expect("a raw esocket has a descriptor");
        assert_eq!(fd, self.expected_fd);
        // SAFETY: the esocket owns `fd` and keeps it open for the whole callback; ManuallyDrop
        // keeps this temporary view from closing it.
        let mut stream = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(fd) });
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => {
                    let _ = self.tx.send(RawEv::Eof);
                    es.close();
                    return;
                }
                Ok(n) => {
                    let _ = self.tx.send(RawEv::Data(buf[..n].to_vec()));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => panic!("raw read: {e}"),
            }
        }
    }

    fn on_write(&mut self, _es: &mut Esocket<'_>) -> bool {
        let _ = self.tx.send(RawEv::Writable);
        false
    }

    fn on_delete(&mut self, _es: &mut Esocket<'_>) {
        let _ = self.tx.send(RawEv::Deleted);
    }
}

#[track_caller]
fn collect(rx: &crossbeam_channel::Receiver<RawEv>, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        match util::recv(rx, "raw fd data") {
            RawEv::Data(d) => got.extend_from_slice(&d),
            other => panic!("unexpected {other:?} after {} bytes", got.len()),
        }
    }
    got
}

/// Adds one end of a fresh socket pair as a read-only raw esocket on worker 0; returns the
/// other end, the handler's events and the esocket's handle.
#[track_caller]
fn add_reader(reactor: &dap_reactor::Reactor) -> (UnixStream, Receiver<RawEv>, EsocketHandle) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    theirs.set_read_timeout(Some(util::TIMEOUT)).unwrap();
    let expected_fd = ours.as_raw_fd();
    let (tx, rx) = crossbeam_channel::unbounded();
    let handle = util::on_worker(reactor.worker(0).unwrap(), move |w| {
        w.add_raw_fd(OwnedFd::from(ours), true, false, Box::new(RawReader { expected_fd, tx }))
    })
    .unwrap();
    (theirs, rx, handle)
}

#[test]
fn raw_fd_is_readable_through_on_read_and_closed_on_removal() {
    let reactor = util::reactor(1);
    let (mut theirs, rx, handle) = add_reader(&reactor);

    theirs.write_all(b"raw bytes").unwrap();
    assert_eq!(collect(&rx, 9), b"raw bytes");
    // Edge-triggered: a second write gives a second notification.
    theirs.write_all(b"more").unwrap();
    assert_eq!(collect(&rx, 4), b"more");

    // Removing the esocket closes the descriptor: the other end sees end of file.
    handle.close().unwrap();
    assert!(matches!(util::recv(&rx, "on_delete"), RawEv::Deleted));
    let mut rest = Vec::new();
    theirs.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    util::shutdown(reactor);
}

#[test]
fn raw_fd_reports_the_peer_closing() {
    let reactor = util::reactor(1);
    let (mut theirs, rx, _handle) = add_reader(&reactor);
    theirs.write_all(b"bye").unwrap();
    assert_eq!(collect(&rx, 3), b"bye");
    drop(theirs);
    // (Whether a hang-up may also call on_write is checked by the next test.)
    let next = |what| loop {
        match util::recv(&rx, what) {
            RawEv::Writable => continue,
            ev => break ev,
        }
    };
    assert!(matches!(next("end of file"), RawEv::Eof));
    assert!(matches!(next("on_delete"), RawEv::Deleted));
    util::wait_stats(reactor.worker(0).unwrap(), "the raw esocket to go", |s| {
        s.esockets_of(EsocketKind::Raw) == 0
    });
    util::shutdown(reactor);
}

/// A raw fd registered for reading only never gets `on_write`, not even when the other end
/// hangs up, and no callback follows the handler's own `close()`.
#[test]
fn raw_fd_without_write_interest_never_gets_on_write() {
    let reactor = util::reactor(1);
    let (mut theirs, rx, _handle) = add_reader(&reactor);
    theirs.write_all(b"x").unwrap();
    assert_eq!(collect(&rx, 1), b"x");
    drop(theirs);
    let mut seen = Vec::new();
    loop {
        let ev = util::recv(&rx, "on_delete");
        let done = matches!(ev, RawEv::Deleted);
        seen.push(ev);
        if done {
            break;
        }
    }
    assert!(
        matches!(seen[..], [RawEv::Eof, RawEv::Deleted]),
        "callbacks after the hang-up: {seen:?}"
    );
    util::shutdown(reactor);
}

#[test]
fn raw_fd_with_write_interest_fires_on_write() {
    let reactor = util::reactor(1);
    let (ours, _theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let expected_fd = ours.as_raw_fd();
    let (tx, rx) = crossbeam_channel::unbounded();
    util::on_worker(reactor.worker(0).unwrap(), move |w| {
        w.add_raw_fd(OwnedFd::from(ours), false, true, Box::new(RawReader { expected_fd, tx }))
    })
    .unwrap();
    assert!(matches!(util::recv(&rx, "on_write"), RawEv::Writable));
    util::shutdown(reactor);
}
