//! TLS as a reactor layer: HTTPS round trips with a rustls client, a TLS echo between two
//! reactor esockets, and refusals (wrong certificate, plaintext on the TLS port).

mod http_util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use dap_net::http::Response;
use dap_net::http::server::{HttpConfig, HttpServer, RouteLimits};
use dap_net::server::Server;
use dap_net::tls::{self, Trust};
use dap_reactor::{Esocket, Handler, PeerAddr, Reactor};
use rustls::pki_types::ServerName;

use http_util::cert::Cert;

struct Https {
    addr: std::net::SocketAddr,
    _http: dap_net::http::server::RunningHttp,
    _reactor: Reactor,
}

fn https_server(cert: &Cert) -> Https {
    let reactor = Reactor::builder().threads(2).pin(false).start().unwrap();
    let mut http = HttpServer::new(HttpConfig::default());
    http.add_inline("/", RouteLimits::default(), |_| Response::text(200, "Hello, World!"));
    http.add_inline("/echo", RouteLimits::default(), |req| {
        Response::new(200).body(req.body.clone())
    });
    http.add_inline("/big", RouteLimits::default(), |_| {
        Response::new(200).body(vec![7u8; 1 << 20])
    });
    http.tls(cert.server_config());
    let http = http.start(&reactor, Server::builder().tcp("127.0.0.1:0".parse().unwrap())).unwrap();
    Https { addr: http.server().tcp_addrs()[0], _http: http, _reactor: reactor }
}

fn tls_client(
    addr: std::net::SocketAddr,
    trust: Trust,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = tls::client_config(trust).unwrap();
    let conn =
        rustls::ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    rustls::StreamOwned::new(conn, http_util::connect(addr))
}

/// Reads one Content-Length response from a TLS stream.
fn read_response(s: &mut impl Read, pending: &mut Vec<u8>) -> (u16, Vec<u8>) {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(n) = r.parse(pending).unwrap() {
            let status = r.code.unwrap();
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap();
            while pending.len() < n + len {
                let mut buf = [0u8; 65536];
                let got = s.read(&mut buf).unwrap();
                assert!(got > 0, "closed mid-body");
                pending.extend_from_slice(&buf[..got]);
            }
            let body = pending[n..n + len].to_vec();
            pending.drain(..n + len);
            return (status, body);
        }
        let mut buf = [0u8; 65536];
        let got = s.read(&mut buf).unwrap();
        assert!(got > 0, "closed before a response");
        pending.extend_from_slice(&buf[..got]);
    }
}

#[test]
fn https_round_trips_with_keep_alive_and_large_bodies() {
    let cert = Cert::new();
    let srv = https_server(&cert);
    let mut s = tls_client(srv.addr, Trust::Pinned(cert.der.clone()));
    let mut pending = Vec::new();
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s, &mut pending), (200, b"Hello, World!".to_vec()));
    }
    let body = vec![b'z'; 300_000];
    let mut req =
        format!("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes();
    req.extend_from_slice(&body);
    s.write_all(&req).unwrap();
    let (status, echoed) = read_response(&mut s, &mut pending);
    assert_eq!(status, 200);
    assert!(echoed == body, "the echoed body differs ({} bytes back)", echoed.len());

    let mut s = tls_client(srv.addr, Trust::Pinned(cert.der.clone()));
    s.write_all(
        b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .unwrap();
    let (status, big) = read_response(&mut s, &mut pending);
    assert_eq!((status, big.len()), (200, 1 << 20));
    assert!(big.iter().all(|&b| b == 7));
    assert_eq!(read_response(&mut s, &mut pending).1, b"Hello, World!");
}

#[test]
fn a_client_pinning_another_certificate_refuses_the_server() {
    let cert = Cert::new();
    let other = Cert::new();
    let srv = https_server(&cert);
    let mut s = tls_client(srv.addr, Trust::Pinned(other.der.clone()));
    let err = s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").and_then(|()| {
        let mut buf = [0u8; 16];
        s.read(&mut buf).map(drop)
    });
    assert!(err.is_err(), "the handshake must fail");
    // The server is still up for a client that trusts it.
    let mut s = tls_client(srv.addr, Trust::Pinned(cert.der.clone()));
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, &mut Vec::new()).0, 200);
}

#[test]
fn plaintext_on_the_tls_port_is_dropped() {
    let cert = Cert::new();
    let srv = https_server(&cert);
    let mut plain = http_util::Reader::new(http_util::connect(srv.addr));
    plain.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(plain.closed(), "a plaintext request gets no HTTP answer, only a close");
    let mut s = tls_client(srv.addr, Trust::Pinned(cert.der.clone()));
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, &mut Vec::new()).0, 200);
}

/// Echoes over TLS (server side of the reactor-to-reactor test).
struct TlsEcho(Arc<rustls::ServerConfig>);

impl Handler for TlsEcho {
    fn on_new(&mut self, es: &mut Esocket<'_>) {
        tls::accept(es, &self.0).unwrap();
    }

    fn on_read(&mut self, es: &mut Esocket<'_>) {
        let _ = es.copy_in_to_out();
    }
}

/// Sends a message over TLS and reports what comes back.
struct TlsPing {
    config: Arc<rustls::ClientConfig>,
    got: Vec<u8>,
    want: usize,
    done: crossbeam_channel::Sender<Vec<u8>>,
}

impl Handler for TlsPing {
    fn on_new(&mut self, es: &mut Esocket<'_>) {
        tls::connect(es, &self.config, "127.0.0.1").unwrap();
        // Written before the handshake: the layer holds it until the keys are ready.
        es.write(&vec![b'p'; self.want]).unwrap();
    }

    fn on_read(&mut self, es: &mut Esocket<'_>) {
        self.got.extend_from_slice(es.buf_in());
        let n = es.buf_in().len();
        es.consume(n);
        if self.got.len() >= self.want {
            let _ = self.done.send(std::mem::take(&mut self.got));
            es.close();
        }
    }
}

#[test]
fn two_reactor_esockets_talk_tls() {
    let cert = Cert::new();
    let reactor = Reactor::builder().threads(2).pin(false).start().unwrap();
    let server_config = cert.server_config();
    let listening = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), move |_: &PeerAddr| {
            Some(Box::new(TlsEcho(server_config.clone())) as Box<dyn Handler>)
        })
        .unwrap();
    let addr = listening.local_addr().unwrap();
    let config = tls::client_config(Trust::Pinned(cert.der.clone())).unwrap();
    let (tx, rx) = crossbeam_channel::bounded(1);
    let want = 40_000;
    reactor
        .worker(1)
        .unwrap()
        .exec(move |w| {
            let h = TlsPing { config, got: Vec::new(), want, done: tx };
            w.connect_tcp(addr, Box::new(h)).unwrap();
        })
        .unwrap();
    let got = rx.recv_timeout(http_util::TIMEOUT).expect("the echo over TLS");
    assert_eq!(got, vec![b'p'; want]);
}
