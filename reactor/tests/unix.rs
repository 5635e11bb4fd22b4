//! Unix-domain stream esockets: listening, connecting and adopting.

mod util;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use dap_reactor::{EsocketKind, PeerAddr};
use util::{Ev, Mode, Recorder, TempPath};

#[track_caller]
fn unix_client(path: &std::path::Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(util::TIMEOUT)).unwrap();
    s.set_write_timeout(Some(util::TIMEOUT)).unwrap();
    s
}

#[test]
fn listen_unix_accepts_and_echoes() {
    let reactor = util::reactor(1);
    let path = TempPath::new("listen");
    let (tx, peers) = crossbeam_channel::unbounded();
    let (events_tx, events) = crossbeam_channel::unbounded();
    let listening = reactor
        .listen_unix(path.path(), move |peer: &PeerAddr| {
            let _ = tx.send(peer.clone());
            Some(Recorder::with(events_tx.clone(), Mode::Echo).boxed())
        })
        .unwrap();
    assert_eq!(listening.local_addr(), None);
    assert_eq!(listening.handles().len(), 1);

    let mut client = unix_client(path.path());
    assert_eq!(util::recv(&peers, "the factory"), PeerAddr::Unix);
    let events = util::Events { rx: events };
    assert!(matches!(events.next(), Ev::New(_, EsocketKind::Unix)));
    client.write_all(b"over a unix socket").unwrap();
    assert_eq!(util::read_n(&mut client, 18), b"over a unix socket");
    assert_eq!(reactor.worker(0).unwrap().stats().accepted, 1);

    drop(client);
    assert_eq!(events.deleted(), None);
    util::shutdown(reactor);
}

#[test]
fn connect_unix_fires_on_connected_and_carries_data_both_ways() {
    let reactor = util::reactor(1);
    let path = TempPath::new("connect");
    let listener = std::os::unix::net::UnixListener::bind(path.path()).unwrap();
    let (rec, events) = Recorder::new(Mode::Consume);
    let target = path.path().to_owned();
    let handle =
        util::on_worker(reactor.worker(0).unwrap(), move |w| w.connect_unix(target, rec.boxed()))
            .unwrap();
    let (mut server, _) = listener.accept().unwrap();
    server.set_read_timeout(Some(util::TIMEOUT)).unwrap();
    assert!(matches!(events.next(), Ev::New(_, EsocketKind::Unix)));
    assert!(matches!(events.next(), Ev::Connected));

    server.write_all(b"from server").unwrap();
    assert_eq!(events.read_bytes(11), b"from server");
    handle.write(&b"from worker"[..]).unwrap();
    assert_eq!(util::read_n(&mut server, 11), b"from worker");

    handle.close().unwrap();
    assert_eq!(events.deleted(), None);
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    util::shutdown(reactor);
}

#[test]
fn connect_unix_to_a_missing_path_fails() {
    let reactor = util::reactor(1);
    let path = TempPath::new("missing");
    let (rec, events) = Recorder::new(Mode::Consume);
    let target = path.path().to_owned();
    let result = util::on_worker(reactor.worker(0).unwrap(), move |w| {
        w.connect_unix(target, rec.boxed()).map(|_| ()).map_err(|e| e.kind())
    });
    match result {
        Err(kind) => assert_eq!(kind, std::io::ErrorKind::NotFound),
        Ok(()) => assert!(events.deleted().is_some(), "a failed connect reports an error"),
    }
    util::shutdown(reactor);
}

#[test]
fn adopted_unix_stream_works() {
    let reactor = util::reactor(1);
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(util::TIMEOUT)).unwrap();
    let (rec, events) = Recorder::new(Mode::Consume);
    let handle =
        util::on_worker(reactor.worker(0).unwrap(), move |w| w.adopt_unix(theirs, rec.boxed()))
            .unwrap();
    assert_eq!(events.new_handle(), handle);
    ours.write_all(b"abc").unwrap();
    assert_eq!(events.read_bytes(3), b"abc");
    handle.write(&b"xyz"[..]).unwrap();
    assert_eq!(util::read_n(&mut ours, 3), b"xyz");
    assert_eq!(util::on_esocket(handle, |es| es.kind()), EsocketKind::Unix);
    util::shutdown(reactor);
}
