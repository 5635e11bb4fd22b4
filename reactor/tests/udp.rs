//! UDP esockets: datagrams in through `on_datagram`, out through `send_to` (local and handle).

mod util;

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};

use dap_reactor::{EsocketHandle, EsocketKind, Reactor};
use util::{Ev, Events, Mode, Recorder};

#[track_caller]
fn client(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(util::TIMEOUT)).unwrap();
    s
}

#[track_caller]
fn bound(reactor: &Reactor, addr: SocketAddr, mode: Mode) -> (EsocketHandle, SocketAddr, Events) {
    let (rec, events) = Recorder::new(mode);
    let handle =
        util::on_worker(reactor.worker(0).unwrap(), move |w| w.bind_udp(addr, rec.boxed()))
            .unwrap();
    assert!(matches!(events.next(), Ev::New(_, EsocketKind::Udp)));
    let local = util::on_esocket(handle, |es| es.local_addr().unwrap());
    assert_ne!(local.port(), 0);
    (handle, local, events)
}

#[track_caller]
fn recv_from(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf).expect("a datagram");
    (buf[..n].to_vec(), from)
}

#[test]
fn bound_udp_receives_datagrams_and_answers_with_send_to() {
    let reactor = util::reactor(1);
    let (_handle, server, events) = bound(&reactor, "127.0.0.1:0".parse().unwrap(), Mode::Echo);
    let sock = client("127.0.0.1");
    for msg in [&b"ping"[..], b"second datagram", b""] {
        sock.send_to(msg, server).unwrap();
        match events.wait_for("on_datagram", |e| matches!(e, Ev::Datagram(..))) {
            Ev::Datagram(data, from) => {
                assert_eq!(data, msg);
                assert_eq!(from, sock.local_addr().unwrap());
            }
            _ => unreachable!(),
        }
        assert_eq!(recv_from(&sock), (msg.to_vec(), server));
    }
    util::shutdown(reactor);
}

#[test]
fn handle_send_to_sends_from_another_thread() {
    let reactor = util::reactor(1);
    let (handle, server, _events) = bound(&reactor, "127.0.0.1:0".parse().unwrap(), Mode::Consume);
    let sock = client("127.0.0.1");
    let to = sock.local_addr().unwrap();
    std::thread::spawn(move || handle.send_to(&b"from a handle"[..], to).unwrap()).join().unwrap();
    assert_eq!(recv_from(&sock), (b"from a handle".to_vec(), server));
    util::shutdown(reactor);
}

#[test]
fn added_udp_socket_works_and_has_no_stream_output() {
    let reactor = util::reactor(1);
    let std_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = std_sock.local_addr().unwrap();
    let (rec, events) = Recorder::new(Mode::Echo);
    let handle =
        util::on_worker(reactor.worker(0).unwrap(), move |w| w.add_udp(std_sock, rec.boxed()))
            .unwrap();
    let kind = util::on_esocket(handle, |es| es.write(b"no").unwrap_err().kind());
    assert_eq!(kind, ErrorKind::Unsupported);
    let sock = client("127.0.0.1");
    sock.send_to(b"added", server).unwrap();
    assert_eq!(recv_from(&sock), (b"added".to_vec(), server));
    events.wait_for("on_datagram", |e| matches!(e, Ev::Datagram(..)));
    util::shutdown(reactor);
}

#[test]
fn udp_over_ipv6_loopback_when_available() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("::1 is not available here; skipping");
        return;
    }
    let reactor = util::reactor(1);
    let (_handle, server, _events) = bound(&reactor, "[::1]:0".parse().unwrap(), Mode::Echo);
    let sock = client("[::1]");
    sock.send_to(b"six", server).unwrap();
    assert_eq!(recv_from(&sock), (b"six".to_vec(), server));
    util::shutdown(reactor);
}
