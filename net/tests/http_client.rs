//! The HTTP client over real loopback sockets, against small std servers that answer with
//! canned bytes, and over TLS against the project's own HTTPS server. Each test checks the
//! result and, at the end, that the callback ran exactly once.

#[path = "util/http_client.rs"]
mod util;

use std::cell::Cell;
use std::io::{ErrorKind, Write};
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dap_net::http::client::{self, ClientConfig, ClientError, Method, Request};
use util::{Cert, Client, HttpsServer, Server, config, reply_and_close, reply_and_wait_for_close};

#[test]
fn get_with_content_length() {
    let server = Server::start(
        "127.0.0.1:0",
        reply_and_wait_for_close(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"),
    );
    let mut client = Client::new();
    let resp = client.fetch(Request::get(&server.url("/a/b?c=d#frag")).unwrap(), config()).unwrap();
    assert_eq!((resp.status, resp.reason.as_str()), (200, "OK"));
    assert_eq!(resp.header("x-a"), Some(&b"1"[..]));
    assert_eq!(&resp.body[..], b"hello");

    let got = server.received();
    assert_eq!(got.head.lines().next(), Some("GET /a/b?c=d HTTP/1.1"));
    assert_eq!(got.header("host"), Some(server.addr.to_string().as_str()));
    assert_eq!(got.header("connection"), Some("close"));
    assert_eq!(got.header("content-length"), None);
    client.finish();
}

#[test]
fn chunked_response_with_extensions_and_trailers() {
    let server = Server::start("127.0.0.1:0", |s| {
        // In pieces, so that the chunk framing straddles reads.
        for piece in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=\"v\"\r\nWi"[..],
            b"ki\r\n5\r\npedia\r\n",
            b"0\r\nX-Checksum: abc\r\n\r\n",
        ] {
            s.write_all(piece).unwrap();
            s.flush().unwrap();
        }
        util::wait_for_close(s);
    });
    let mut client = Client::new();
    let resp = client.fetch(Request::get(&server.url("/")).unwrap(), config()).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(&resp.body[..], b"Wikipedia");
    assert_eq!(resp.header("x-checksum"), None, "trailers are dropped");
    client.finish();
}

#[test]
fn body_read_until_close() {
    let server = Server::start(
        "127.0.0.1:0",
        reply_and_close(b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nthe body ends at the close"),
    );
    let mut client = Client::new();
    let resp = client.fetch(Request::get(&server.url("/")).unwrap(), config()).unwrap();
    assert_eq!((resp.status, resp.minor_version), (200, 0));
    assert_eq!(&resp.body[..], b"the body ends at the close");
    client.finish();
}

#[test]
fn response_trickled_byte_by_byte() {
    let server = Server::start("127.0.0.1:0", |s| {
        for b in b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow" {
            s.write_all(&[*b]).unwrap();
        }
        util::wait_for_close(s);
    });
    let mut client = Client::new();
    let resp = client.fetch(Request::get(&server.url("/")).unwrap(), config()).unwrap();
    assert_eq!(&resp.body[..], b"slow");
    client.finish();
}

#[test]
fn head_response_has_no_body_even_with_content_length() {
    // The server keeps the connection open: the client must not wait for 1000 bytes.
    let server = Server::start(
        "127.0.0.1:0",
        reply_and_wait_for_close(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
    );
    let mut client = Client::new();
    let resp = client.fetch(Request::head(&server.url("/h")).unwrap(), config()).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some(&b"1000"[..]));
    assert!(resp.body.is_empty());
    assert_eq!(server.received().head.lines().next(), Some("HEAD /h HTTP/1.1"));
    client.finish();
}

#[test]
fn no_content_and_not_modified_have_no_body() {
    let mut client = Client::new();
    for (raw, status) in [
        (&b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"[..], 204),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: \"x\"\r\n\r\n", 304),
    ] {
        let server = Server::start("127.0.0.1:0", reply_and_wait_for_close(raw));
        let resp = client.fetch(Request::get(&server.url("/")).unwrap(), config()).unwrap();
        assert_eq!(resp.status, status);
        assert!(resp.body.is_empty());
    }
    client.finish();
}

#[test]
fn post_body_arrives_intact_with_its_content_length() {
    // Larger than the reactor's output cap: the body goes out in several rounds.
    let body: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let server = Server::start("127.0.0.1:0", |s| {
        s.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok").unwrap();
        util::wait_for_close(s);
    });
    let mut client = Client::new();
    let req = Request::post(&server.url("/submit?x=1"), body.clone())
        .unwrap()
        .with_header("Content-Type", "application/octet-stream")
        .unwrap();
    let resp = client.fetch(req, config()).unwrap();
    assert_eq!((resp.status, &resp.body[..]), (201, &b"ok"[..]));

    let got = server.received();
    assert_eq!(got.head.lines().next(), Some("POST /submit?x=1 HTTP/1.1"));
    assert_eq!(got.header("content-length"), Some("1048576"));
    assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    assert!(got.body == body, "the body arrived altered ({} bytes)", got.body.len());
    client.finish();
}

#[test]
fn ipv6_loopback() {
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        eprintln!("skipped: ::1 is not available here");
        return;
    };
    let server = Server::on(
        listener,
        reply_and_wait_for_close(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nv6"),
    );
    let url = format!("http://[::1]:{}/six", server.addr.port());
    let mut client = Client::new();
    let resp = client.fetch(Request::get(&url).unwrap(), config()).unwrap();
    assert_eq!(&resp.body[..], b"v6");
    assert_eq!(
        server.received().header("host"),
        Some(format!("[::1]:{}", server.addr.port()).as_str())
    );
    client.finish();
}

#[test]
fn connect_refused() {
    let addr = util::closed_port();
    let mut client = Client::new();
    let req = Request::for_addr(Method::Get, addr, "/").unwrap();
    match client.fetch(req, config()) {
        Err(ClientError::Connect(kind)) => assert_eq!(kind, ErrorKind::ConnectionRefused),
        other => panic!("expected a refused connect, got {other:?}"),
    }
    client.finish();
}

#[test]
fn connect_timeout() {
    let target = util::Unanswered::new();
    let mut client = Client::new();
    let mut cfg = config();
    cfg.connect_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let result = client.fetch(Request::for_addr(Method::Get, target.addr, "/").unwrap(), cfg);
    assert!(matches!(result, Err(ClientError::ConnectTimeout)), "got {result:?}");
    assert!(started.elapsed() >= Duration::from_millis(290));
    client.finish();
    drop(target);
}

#[test]
fn response_timeout_when_the_server_never_answers() {
    let server = Server::start("127.0.0.1:0", util::wait_for_close);
    let mut client = Client::new();
    let mut cfg = config();
    cfg.response_timeout = Duration::from_millis(300);
    let started = Instant::now();
    let result = client.fetch(Request::get(&server.url("/")).unwrap(), cfg);
    assert!(matches!(result, Err(ClientError::ResponseTimeout)), "got {result:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(290) && took < util::TIMEOUT, "took {took:?}");
    // The request did go out; the server saw it, then the client hung up.
    server.received();
    client.finish();
}

#[test]
fn response_larger_than_the_cap_is_refused() {
    let mut cfg = config();
    cfg.max_response_bytes = 64 * 1024;
    let mut client = Client::new();

    // Declared too large: refused on the head.
    let server = Server::start(
        "127.0.0.1:0",
        reply_and_wait_for_close(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"),
    );
    let result = client.fetch(Request::get(&server.url("/")).unwrap(), cfg.clone());
    assert!(matches!(result, Err(ClientError::TooLarge)), "declared: {result:?}");

    // Streamed without end (until close, and chunked): refused at the cap. The server
    // writes until the client has hung up.
    for head in
        [&b"HTTP/1.1 200 OK\r\n\r\n"[..], b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
    {
        let chunked = head.len() > 20;
        let server = Server::start("127.0.0.1:0", move |s| {
            s.write_all(head).unwrap();
            let block = [b'x'; 4096];
            for _ in 0..(16 * 1024) {
                let sent = if chunked {
                    s.write_all(b"1000\r\n")
                        .and_then(|()| s.write_all(&block))
                        .and_then(|()| s.write_all(b"\r\n"))
                } else {
                    s.write_all(&block)
                };
                if sent.is_err() {
                    return;
                }
            }
            panic!("the client never hung up");
        });
        let result = client.fetch(Request::get(&server.url("/")).unwrap(), cfg.clone());
        assert!(matches!(result, Err(ClientError::TooLarge)), "chunked={chunked}: {result:?}");
    }

    // A head past max_header_bytes.
    let mut small = config();
    small.max_header_bytes = 256;
    let server = Server::start("127.0.0.1:0", |s| {
        let big = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "v".repeat(1024));
        let _ = s.write_all(big.as_bytes());
        util::wait_for_close(s);
    });
    let result = client.fetch(Request::get(&server.url("/")).unwrap(), small);
    assert!(matches!(result, Err(ClientError::TooLarge)), "head: {result:?}");
    client.finish();
}

#[test]
fn malformed_responses_are_bad_responses() {
    let mut client = Client::new();
    for (raw, why) in [
        (&b"garbage\r\n\r\n"[..], "not an HTTP/1.x status line"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "conflicting Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: three\r\n\r\n", "malformed Content-Length"),
    ] {
        let server = Server::start("127.0.0.1:0", reply_and_wait_for_close(raw));
        match client.fetch(Request::get(&server.url("/")).unwrap(), config()) {
            Err(ClientError::BadResponse(got)) => assert_eq!(got, why),
            other => panic!("expected BadResponse({why:?}), got {other:?}"),
        }
    }
    client.finish();
}

#[test]
fn peer_closing_mid_body_is_closed() {
    let mut client = Client::new();
    for raw in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"",
    ] {
        let server = Server::start("127.0.0.1:0", reply_and_close(raw));
        let result = client.fetch(Request::get(&server.url("/")).unwrap(), config());
        assert!(matches!(result, Err(ClientError::Closed)), "{raw:?}: {result:?}");
    }
    client.finish();
}

#[test]
fn unresolved_names_are_reported_through_the_callback() {
    let mut client = Client::new();
    let req = Request::get("http://service.invalid:8080/").unwrap();
    match client.fetch(req, config()) {
        Err(ClientError::Unresolved(name)) => assert_eq!(name, "service.invalid"),
        other => panic!("expected Unresolved, got {other:?}"),
    }
    // Once resolved, the name is what Host says.
    let server = Server::start(
        "127.0.0.1:0",
        reply_and_wait_for_close(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    );
    let url = format!("http://service.invalid:{}/", server.addr.port());
    let req = Request::get(&url).unwrap().resolve_to(server.addr.ip());
    assert_eq!(client.fetch(req, config()).unwrap().status, 200);
    assert_eq!(
        server.received().header("host"),
        Some(format!("service.invalid:{}", server.addr.port()).as_str())
    );
    client.finish();
}

#[test]
fn callbacks_run_on_the_callers_worker() {
    let server = Server::start(
        "127.0.0.1:0",
        reply_and_wait_for_close(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"),
    );
    let reactor = util::reactor(2);
    let worker = reactor.worker(1).unwrap();
    let (id_tx, id_rx) = mpsc::channel();
    worker.exec(move |_| id_tx.send(std::thread::current().id()).unwrap()).unwrap();
    let worker_thread = util::recv(&id_rx, "the worker's thread id");

    let (tx, rx) = mpsc::channel();
    let url = server.url("/");
    worker
        .exec(move |ctx| {
            // Worker-local state (not Send) is fine in a `fetch` callback.
            let local = Rc::new(Cell::new(0));
            let seen = local.clone();
            client::fetch(ctx, Request::get(&url).unwrap(), &config(), move |ctx, result| {
                seen.set(seen.get() + 1);
                let _ = tx.send((std::thread::current().id(), ctx.index(), seen.get(), result));
            });
        })
        .unwrap();
    let (thread, index, count, result) = util::recv(&rx, "the callback");
    assert_eq!((thread, index, count), (worker_thread, 1, 1));
    assert_eq!(&result.unwrap().body[..], b"hi");
    util::shutdown(reactor);
    assert!(rx.try_recv().is_err(), "the callback ran once");
}

#[test]
fn fetch_blocking_returns_the_response() {
    let server = Server::start(
        "127.0.0.1:0",
        reply_and_close(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nblocked"),
    );
    let reactor = util::reactor(1);
    let req =
        Request::new(Method::Put, &server.url("/p")).unwrap().with_body(Bytes::from_static(b"x"));
    let resp =
        client::fetch_blocking(reactor.worker(0).unwrap(), req, &ClientConfig::default()).unwrap();
    assert_eq!(&resp.body[..], b"blocked");
    let got = server.received();
    assert_eq!(got.head.lines().next(), Some("PUT /p HTTP/1.1"));
    assert_eq!(got.body, b"x");
    util::shutdown(reactor);
}

#[test]
fn a_callback_can_start_the_next_request() {
    let first = Server::start(
        "127.0.0.1:0",
        reply_and_wait_for_close(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond"),
    );
    let second = Server::start(
        "127.0.0.1:0",
        reply_and_wait_for_close(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone"),
    );
    let reactor = util::reactor(1);
    let (tx, rx) = mpsc::channel();
    let (url, next) = (first.url("/"), second.url("/"));
    reactor
        .worker(0)
        .unwrap()
        .exec(move |ctx| {
            client::fetch(ctx, Request::get(&url).unwrap(), &config(), move |ctx, first| {
                // Runs inside the first connection's callback, on the same worker.
                assert_eq!(&first.unwrap().body[..], b"second");
                client::fetch(ctx, Request::get(&next).unwrap(), &config(), move |_, second| {
                    let _ = tx.send(second);
                });
            });
        })
        .unwrap();
    assert_eq!(&util::recv(&rx, "the second response").unwrap().body[..], b"done");
    util::shutdown(reactor);
}

#[test]
fn a_request_in_flight_fails_when_the_worker_stops() {
    let server = Server::start("127.0.0.1:0", util::wait_for_close);
    let reactor = util::reactor(1);
    let (tx, rx) = mpsc::channel();
    client::fetch_on(
        reactor.worker(0).unwrap(),
        Request::get(&server.url("/")).unwrap(),
        config(),
        move |_, result| {
            let _ = tx.send(result);
        },
    )
    .unwrap();
    server.received();
    util::shutdown(reactor);
    match util::recv(&rx, "the callback") {
        Err(ClientError::Io(e)) => {
            assert_eq!(
                dap_reactor::ReactorError::of(&e),
                Some(dap_reactor::ReactorError::Stopping)
            );
        }
        other => panic!("expected the worker's stop, got {other:?}"),
    }
    assert!(rx.try_recv().is_err(), "the callback ran once");
}

#[test]
fn https_get_with_a_pinned_certificate() {
    let cert = Cert::new();
    let server = HttpsServer::start(&cert);
    let mut client = Client::new();
    let req = Request::get(&server.url("127.0.0.1", "/hello")).unwrap();
    assert!(req.is_tls());
    let resp = client.fetch(req, cert.pinned()).unwrap();
    assert_eq!((resp.status, &resp.body[..]), (200, &b"hello"[..]));

    // The request crossed TLS intact: method and Host as the client wrote them.
    let resp =
        client.fetch(Request::get(&server.url("127.0.0.1", "/echo")).unwrap(), cert.pinned());
    let resp = resp.unwrap();
    assert_eq!(resp.header("x-method"), Some(&b"GET"[..]));
    let host = format!("127.0.0.1:{}", server.addr.port());
    assert_eq!(resp.header("x-host"), Some(host.as_bytes()));
    client.finish();
}

#[test]
fn https_post_body_arrives_intact() {
    let cert = Cert::new();
    let server = HttpsServer::start(&cert);
    // Many TLS records, and more than one round of the reactor's output buffer.
    let body: Vec<u8> = (0..300 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let mut client = Client::new();
    let req = Request::post(&server.url("127.0.0.1", "/echo"), body.clone()).unwrap();
    let resp = client.fetch(req, cert.pinned()).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-method"), Some(&b"POST"[..]));
    assert!(resp.body == body, "the body came back altered ({} bytes)", resp.body.len());
    client.finish();
}

#[test]
fn https_refuses_a_certificate_that_is_not_the_pinned_one() {
    let cert = Cert::new();
    let other = Cert::new();
    let server = HttpsServer::start(&cert);
    let mut client = Client::new();
    let url = server.url("127.0.0.1", "/hello");
    match client.fetch(Request::get(&url).unwrap(), other.pinned()) {
        Err(ClientError::Tls(why)) => assert!(!why.is_empty()),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    // Refusing one client did not hurt the server.
    assert_eq!(client.fetch(Request::get(&url).unwrap(), cert.pinned()).unwrap().status, 200);
    client.finish();
}

#[test]
fn https_checks_the_certificate_against_the_urls_host() {
    let cert = Cert::new();
    let server = HttpsServer::start(&cert);
    let ip = server.addr.ip();
    let mut client = Client::new();

    // Sent to 127.0.0.1, checked against "localhost", which the certificate holds; Host
    // says "localhost" too.
    let req = Request::get(&server.url("localhost", "/echo")).unwrap().resolve_to(ip);
    let resp = client.fetch(req, cert.as_root()).unwrap();
    let host = format!("localhost:{}", server.addr.port());
    assert_eq!(resp.header("x-host"), Some(host.as_bytes()));

    // An address literal is checked as an address.
    let req = Request::get(&server.url("127.0.0.1", "/hello")).unwrap();
    assert_eq!(client.fetch(req, cert.as_root()).unwrap().status, 200);

    // Same address, a name the certificate does not hold: refused, though the bytes go to
    // the same server.
    let req = Request::get(&server.url("elsewhere.test", "/hello")).unwrap().resolve_to(ip);
    let result = client.fetch(req, cert.as_root());
    assert!(matches!(result, Err(ClientError::Tls(_))), "got {result:?}");
    client.finish();
}

#[test]
fn https_with_the_default_trust_refuses_a_self_signed_server() {
    let cert = Cert::new();
    let server = HttpsServer::start(&cert);
    let mut client = Client::new();
    let req =
        Request::get(&server.url("localhost", "/hello")).unwrap().resolve_to(server.addr.ip());
    // The system's roots do not hold a certificate made a moment ago; a system without
    // usable roots says so instead.
    let result = client.fetch(req, config());
    assert!(matches!(result, Err(ClientError::Tls(_) | ClientError::NoRoots(_))), "got {result:?}");
    client.finish();
}

#[test]
fn https_to_a_plaintext_server_is_a_tls_failure() {
    // A server that answers anything with plain HTTP, as one that does not speak TLS would.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let Some(mut s) = util::accept(&listener) else { return };
        let mut hello = [0u8; 512];
        let _ = std::io::Read::read(&mut s, &mut hello);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        util::wait_for_close(&mut s);
    });
    let mut client = Client::new();
    let cert = Cert::new();
    let req = Request::get(&format!("https://{addr}/")).unwrap();
    let result = client.fetch(req, cert.pinned());
    assert!(matches!(result, Err(ClientError::Tls(_))), "got {result:?}");
    client.finish();
    server.join().unwrap();
}
