//! TCP esockets: accepted and outgoing connections, adoption, IPv6, connect failures, and the
//! end of a stream.

mod util;

use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::time::Duration;

use dap_reactor::{EsocketKind, ReactorError};
use util::{Ev, Mode, Recorder};

#[test]
fn accepted_connection_reads_writes_and_reports_delete() {
    let reactor = util::reactor(1);
    let (factory, events) = util::recording_factory(Mode::Consume);
    let listening = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), factory).unwrap();
    let addr = listening.local_addr().unwrap();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0, "port 0 picks a real port");

    let mut client = util::connect(addr);
    let handle = match events.wait_for("on_new", |e| matches!(e, Ev::New(..))) {
        Ev::New(h, kind) => {
            assert_eq!(kind, EsocketKind::Tcp);
            h
        }
        _ => unreachable!(),
    };
    let (peer, local) =
        util::on_esocket(handle, |es| (es.peer_addr().unwrap(), es.local_addr().unwrap()));
    assert_eq!(peer, client.local_addr().unwrap());
    assert_eq!(local, addr);

    util::write_all(&mut client, b"hello");
    assert_eq!(events.read_bytes(5), b"hello");

    handle.write(&b"world"[..]).unwrap();
    assert_eq!(util::read_n(&mut client, 5), b"world");
    events.wait_for("on_write_finished", |e| matches!(e, Ev::WriteFinished));
    assert_eq!(reactor.worker(0).unwrap().stats().accepted, 1);

    // An orderly close by the peer is not an error.
    drop(client);
    assert_eq!(events.deleted(), None);
    util::wait_stats(reactor.worker(0).unwrap(), "the connection to be gone", |s| {
        s.esockets_of(EsocketKind::Tcp) == 0
    });
    util::shutdown(reactor);
}

#[test]
fn accepted_connection_echoes_a_megabyte() {
    let reactor = util::reactor(1);
    let (factory, _events) = util::recording_factory(Mode::Echo);
    let listening = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), factory).unwrap();
    let mut client = util::connect(listening.local_addr().unwrap());
    let data = util::random_bytes(1, 1 << 20);
    let mut writer = client.try_clone().unwrap();
    let sent = data.clone();
    let t = std::thread::spawn(move || util::write_all(&mut writer, &sent));
    let back = util::read_n(&mut client, data.len());
    t.join().unwrap();
    assert_eq!(util::Fnv::of(&back), util::Fnv::of(&data));
    util::shutdown(reactor);
}

#[test]
fn outgoing_connection_fires_on_connected_and_carries_data_both_ways() {
    let reactor = util::reactor(1);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (rec, events) = Recorder::new(Mode::Consume);
    let handle =
        util::on_worker(reactor.worker(0).unwrap(), move |w| w.connect_tcp(addr, rec.boxed()))
            .expect("connect starts");
    let (mut server, client_addr) = listener.accept().unwrap();
    server.set_read_timeout(Some(util::TIMEOUT)).unwrap();

    assert!(matches!(events.next(), Ev::New(_, EsocketKind::Tcp)));
    assert!(matches!(events.next(), Ev::Connected));
    let (peer, local) =
        util::on_esocket(handle, |es| (es.peer_addr().unwrap(), es.local_addr().unwrap()));
    assert_eq!(peer, addr);
    assert_eq!(local, client_addr);

    util::write_all(&mut server, b"ping");
    assert_eq!(events.read_bytes(4), b"ping");
    handle.write(&b"pong"[..]).unwrap();
    assert_eq!(util::read_n(&mut server, 4), b"pong");

    handle.close().unwrap();
    assert_eq!(events.deleted(), None);
    assert_eq!(util::read_to_eof(&mut server), b"");
    util::shutdown(reactor);
}

#[test]
fn adopted_tcp_stream_works() {
    let reactor = util::reactor(1);
    let (mut client, _handle, _events) = util::adopted(&reactor, Mode::Echo);
    util::round_trip(&mut client, b"adopted");
    util::shutdown(reactor);
}

#[test]
fn ipv6_loopback_works_when_available() {
    let Ok(probe) = TcpListener::bind("[::1]:0") else {
        eprintln!("::1 is not available here; skipping");
        return;
    };
    drop(probe);
    let reactor = util::reactor(1);
    let (factory, _events) = util::recording_factory(Mode::Echo);
    let listening = reactor.listen_tcp("[::1]:0".parse().unwrap(), factory).unwrap();
    let addr = listening.local_addr().unwrap();
    assert!(addr.is_ipv6());
    let mut client = util::connect(addr);
    util::round_trip(&mut client, b"six");

    // And outgoing, from the worker.
    let (rec, events) = Recorder::new(Mode::Consume);
    util::on_worker(reactor.worker(0).unwrap(), move |w| w.connect_tcp(addr, rec.boxed())).unwrap();
    events.wait_for("on_connected", |e| matches!(e, Ev::Connected));
    util::shutdown(reactor);
}

#[test]
fn connecting_to_a_closed_port_is_refused() {
    let reactor = util::reactor(1);
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (rec, events) = Recorder::new(Mode::Consume);
    let started = util::on_worker(reactor.worker(0).unwrap(), move |w| {
        w.connect_tcp(addr, rec.boxed()).map_err(|e| e.kind())
    });
    match started {
        Err(kind) => assert_eq!(kind, ErrorKind::ConnectionRefused),
        Ok(_) => {
            let error = events.deleted();
            assert_eq!(
                error,
                Some((ErrorKind::ConnectionRefused, None)),
                "a refused connect is reported"
            );
            assert!(events.quiet_for(Duration::ZERO).is_ok());
        }
    }
    util::shutdown(reactor);
}

/// A listener with a full accept queue drops SYNs (Linux), so a connect to it hangs: a
/// loopback-only way to exercise the connect timeout.
#[test]
fn connect_timeout_fires_when_the_peer_never_answers() {
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    // Fill the accept queue until a connect hangs.
    let mut fillers = Vec::new();
    loop {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(e) if e.kind() == ErrorKind::TimedOut => break,
            Err(e) => panic!("filling the accept queue: {e}"),
        }
        assert!(fillers.len() < 64, "the accept queue never filled");
    }

    let reactor = util::reactor(1);
    let (rec, events) = Recorder::new(Mode::Consume);
    util::on_worker(reactor.worker(0).unwrap(), move |w| {
        w.connect_tcp_timeout(addr, Duration::from_millis(300), rec.boxed())
    })
    .expect("connect starts");
    assert!(matches!(events.next(), Ev::New(..)));
    let error = events.deleted();
    assert_eq!(error, Some((ErrorKind::TimedOut, Some(ReactorError::ConnectTimeout))));
    drop(fillers);
    util::shutdown(reactor);
}

#[test]
fn peer_half_close_flushes_the_reply_then_closes() {
    // The handler answers each read at once; the peer then shuts its side down and must get
    // the whole answer followed by end of file.
    struct Answer;
    impl dap_reactor::Handler for Answer {
        fn on_read(&mut self, es: &mut dap_reactor::Esocket<'_>) {
            let mut reply = b"re:".to_vec();
            reply.extend_from_slice(es.buf_in());
            let n = es.buf_in().len();
            es.consume(n);
            es.write(&reply).unwrap();
        }
    }
    let reactor = util::reactor(1);
    let listening = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), |_: &dap_reactor::PeerAddr| {
            Some(Box::new(Answer) as Box<dyn dap_reactor::Handler>)
        })
        .unwrap();
    let mut client = util::connect(listening.local_addr().unwrap());
    util::write_all(&mut client, b"q");
    assert_eq!(util::read_n(&mut client, 4), b"re:q");
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(util::read_to_eof(&mut client), b"");
    util::shutdown(reactor);
}

/// A handler that overrides `on_read_closed` keeps a half-closed connection open: it still
/// writes after the peer's FIN (here: a summary of everything read), then closes.
#[test]
fn a_handler_can_answer_after_the_peers_half_close() {
    #[derive(Default)]
    struct Summary {
        got: usize,
    }
    impl dap_reactor::Handler for Summary {
        fn on_read(&mut self, es: &mut dap_reactor::Esocket<'_>) {
            let n = es.buf_in().len();
            self.got += n;
            es.consume(n);
        }
        fn on_read_closed(&mut self, es: &mut dap_reactor::Esocket<'_>) {
            assert!(es.peer_closed() && !es.is_closing());
            es.write(format!("read {} bytes", self.got).as_bytes()).unwrap();
            es.close();
        }
    }
    let reactor = util::reactor(1);
    let listening = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), |_: &dap_reactor::PeerAddr| {
            Some(Box::new(Summary::default()) as Box<dyn dap_reactor::Handler>)
        })
        .unwrap();
    let mut client = util::connect(listening.local_addr().unwrap());
    util::write_all(&mut client, &[7u8; 5000]);
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(util::read_to_eof(&mut client), b"read 5000 bytes");
    util::shutdown(reactor);
}

/// Data and the peer's FIN that arrive together (one readiness event) must both be seen:
/// the handler gets the bytes, then the esocket closes. The worker is held busy while the
/// client writes and closes, so both are waiting when it next polls.
#[test]
fn data_followed_at_once_by_close_is_read_and_the_close_is_seen() {
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap().clone();
    let (mut client, server) = util::tcp_pair();
    let (rec, events) = Recorder::new(Mode::Consume);
    util::on_worker(&worker, move |w| w.adopt_tcp(server, rec.boxed())).unwrap();
    events.new_handle();

    let release = util::hold(&worker);
    client.write_all(b"last words").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    release.send(()).unwrap();

    assert_eq!(events.read_bytes(10), b"last words");
    assert_eq!(events.deleted(), None, "the peer's close must be noticed");
    assert_eq!(util::read_to_eof(&mut client), b"");
    util::shutdown(reactor);
}

#[test]
fn local_writes_are_refused_once_closing() {
    let reactor = util::reactor(1);
    let (mut client, handle, events) = util::adopted(&reactor, Mode::Consume);
    let kinds = util::on_esocket(handle, |es| {
        es.write(b"bye").unwrap();
        es.close();
        assert!(es.is_closing());
        (
            es.write(b"more").map_err(|e| e.kind()),
            es.write_bytes(bytes::Bytes::from_static(b"x")).is_err(),
        )
    });
    assert_eq!(kinds, (Err(ErrorKind::NotConnected), true));
    assert_eq!(util::read_to_eof(&mut client), b"bye", "queued output is flushed before the close");
    assert_eq!(events.deleted(), None);
    util::shutdown(reactor);
}

#[test]
fn close_now_discards_queued_output() {
    let reactor = util::reactor(1);
    let (mut client, handle, events) = util::adopted(&reactor, Mode::Consume);
    util::on_esocket(handle, |es| {
        es.write(b"never sent").unwrap();
        es.close_now();
    });
    assert_eq!(events.deleted(), None);
    assert_eq!(util::read_to_eof(&mut client), b"");
    util::shutdown(reactor);
}

#[test]
fn writes_queued_while_connecting_leave_once_connected() {
    let reactor = util::reactor(1);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (rec, events) = Recorder::new(Mode::Consume);
    util::on_worker(reactor.worker(0).unwrap(), move |w| {
        let h = w.connect_tcp(addr, rec.boxed()).unwrap();
        w.with_esocket(h, |es| es.write(b"early").unwrap()).expect("live")
    });
    let (mut server, _) = listener.accept().unwrap();
    server.set_read_timeout(Some(util::TIMEOUT)).unwrap();
    assert_eq!(util::read_n(&mut server, 5), b"early");
    events.wait_for("on_connected", |e| matches!(e, Ev::Connected));
    util::shutdown(reactor);
}

/// A graceful close whose output the peer never takes is cut off after the close linger,
/// rather than holding the esocket forever.
#[test]
fn graceful_close_gives_up_after_the_close_linger() {
    let reactor = util::builder(1).close_linger(Duration::from_millis(200)).start().unwrap();
    let (client, server) = util::small_tcp_pair(16 * 1024);
    let (rec, events) = Recorder::new(Mode::Consume);
    let handle =
        util::on_worker(reactor.worker(0).unwrap(), move |w| w.adopt_tcp(server, rec.boxed()))
            .unwrap();
    events.new_handle();
    let queued = util::on_esocket(handle, |es| {
        while es.write(&[0u8; 16 * 1024]).is_ok() {}
        es.close();
        es.out_len()
    });
    assert!(queued > 0);
    let closing = std::time::Instant::now();
    events.wait_for("on_delete", |e| matches!(e, Ev::Delete));
    assert!(closing.elapsed() >= Duration::from_millis(190), "cut off before the linger");
    drop(client);
    util::shutdown(reactor);
}
