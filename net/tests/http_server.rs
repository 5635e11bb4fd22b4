//! The HTTP/1.1 server over real loopback sockets: the protocol features, and a catalogue of
//! bad input, each answered with the right status (or a close) while the server stays up.

mod http_util;

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use dap_net::http::server::HttpConfig;
use http_util::{Reader, assert_serving, connect, exchange, server, server_with, short_server};

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let srv = server();
    let mut r = Reader::new(connect(srv.addr));
    for _ in 0..3 {
        r.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        let resp = r.response(false);
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"Hello, World!"[..]));
        assert!(!resp.closes());
        assert!(resp.header("date").is_some_and(|d| d.ends_with(" GMT")));
    }
}

#[test]
fn http_1_0_closes_unless_asked_to_keep_alive() {
    let srv = server();
    let (resp, mut r) = exchange(srv.addr, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert!(r.closed());
    let (resp, mut r) = exchange(srv.addr, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(resp.header("connection"), Some("keep-alive"));
    r.send(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.response(false).status, 200);
}

/// Pipelined requests, mixing routes answered on the worker and on proc threads, come back
/// strictly in order.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let srv = server();
    let mut r = Reader::new(connect(srv.addr));
    let mut batch = Vec::new();
    for i in 0..50 {
        let path = if i % 3 == 0 { "/pq" } else { "/q" };
        batch.extend_from_slice(format!("GET {path}?{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    r.send(&batch);
    for i in 0..50 {
        let resp = r.response(false);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, i.to_string().as_bytes(), "response {i} out of order");
    }
}

#[test]
fn simple_prefix_routes_serve_every_path_below_them() {
    let srv = server();
    let (resp, _) = exchange(srv.addr, b"GET /tree/a/b?x HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"/tree/a/b"[..]));
    let (resp, _) = exchange(srv.addr, b"GET /tree/ HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"/tree/"[..]));
    let (resp, _) = exchange(srv.addr, b"GET /tree HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 404);
    let (resp, _) = exchange(srv.addr, b"DELETE /tree/a HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 405);
}

#[test]
fn head_has_the_length_but_no_body() {
    let srv = server();
    let mut r = Reader::new(connect(srv.addr));
    r.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n");
    let resp = r.response(true);
    assert_eq!(resp.header("content-length"), Some("13"));
    // The next response starts right away: no body bytes were sent for HEAD.
    r.send(b"GET /q?next HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.response(false).body, b"next");
}

#[test]
fn bodies_by_length_and_chunked_reach_proc_handlers() {
    let srv = server();
    let (resp, _) =
        exchange(srv.addr, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"hello"[..]));
    let (resp, _) = exchange(
        srv.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nTrailer: x\r\n\r\n",
    );
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"abcdefg"[..]));
}

#[test]
fn a_body_sent_a_byte_at_a_time_arrives_whole() {
    let srv = server();
    let mut r = Reader::new(connect(srv.addr));
    r.s.set_nodelay(true).unwrap();
    let req = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    for b in req {
        r.send(&[*b]);
    }
    assert_eq!(r.response(false).body, b"hello");
}

#[test]
fn expect_100_continue_gets_an_interim_answer() {
    let srv = server();
    let mut r = Reader::new(connect(srv.addr));
    r.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    assert_eq!(r.response(false).status, 100);
    r.send(b"body");
    let resp = r.response(false);
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"body"[..]));
}

#[test]
fn expect_100_continue_over_the_limit_is_refused_without_reading() {
    let srv = server();
    let (resp, mut r) = exchange(
        srv.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(resp.status, 413);
    assert!(r.closed());
}

#[test]
fn streamed_responses_are_chunked() {
    let srv = server();
    let (resp, _) = exchange(srv.addr, b"GET /stream/x HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.body, b"chunk\n".repeat(5));
}

#[test]
fn a_response_larger_than_the_output_buffer_arrives_whole() {
    let srv = server();
    let mut r = Reader::new(connect(srv.addr));
    r.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.response(false).body.len(), 1 << 20);
    assert_eq!(r.response(false).body, b"Hello, World!");
}

/// With `half_close`, a client that half-closes (`shutdown(SHUT_WR)`) after its requests
/// still reads every answer, including one that a proc thread gives only after the end of the
/// client's stream has reached the server; then the server closes.
#[test]
fn a_half_closed_client_still_gets_every_answer() {
    let mut config = HttpConfig::default();
    config.half_close = true;
    let srv = server_with(config, true);
    let mut s = connect(srv.addr);
    s.write_all(
        b"GET /pq?1 HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /gate HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /q?3 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut r = Reader::new(s);
    assert_eq!(r.response(false).body, b"1");
    // The gate holds the second answer: the connection stays open for it meanwhile (a
    // server that closed on the client's FIN would show end of stream here).
    assert!(
        r.quiet_for(Duration::from_millis(300)),
        "the server answered past the gate or closed with an answer owed"
    );
    srv.open_gate();
    assert_eq!(r.response(false).body, b"opened");
    assert_eq!(r.response(false).body, b"3");
    assert!(r.closed_by_server(), "the server closes once everything is answered");
}

/// By default the end of the client's stream means it has gone: the request waiting on a
/// proc thread is abandoned (counted as closed early) and the connection closes at once.
#[test]
fn by_default_the_end_of_stream_abandons_requests_in_flight() {
    let srv = server();
    let mut s = connect(srv.addr);
    s.write_all(b"GET /gate HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut r = Reader::new(s);
    assert!(r.closed_by_server(), "the server keeps a departed client's connection");
    http_util::wait_until("the abandoned request counted", || srv.stats().closed_early >= 1);
    srv.open_gate();
}

/// A request cut short by the client's end of stream is dropped and the connection closed.
#[test]
fn a_head_cut_short_by_the_end_of_stream_is_closed() {
    let srv = server();
    let mut s = connect(srv.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHo").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut r = Reader::new(s);
    assert_eq!(r.response(false).body, b"Hello, World!");
    assert!(r.closed_by_server());
}

#[test]
fn responder_answers_from_another_thread() {
    let srv = server();
    let (resp, _) = exchange(srv.addr, b"GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.body, b"later");
}

#[test]
fn upgrade_hands_the_connection_over() {
    let srv = server();
    let mut r = Reader::new(connect(srv.addr));
    r.send(
        b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nearly",
    );
    let resp = r.response(false);
    assert_eq!(resp.status, 101);
    r.send(b" and late");
    assert_eq!(r.bytes(b"early and late".len()), b"early and late");
    assert_eq!(srv.stats().upgrades, 1);
}

// ---- Faults: each gets its status, then the server goes on serving. ----

/// Sends `raw`, expects `status`, expects the connection to close when `closes`.
#[track_caller]
fn refused(raw: &[u8], status: u16, closes: bool) {
    let srv = server();
    let (resp, mut r) = exchange(srv.addr, raw);
    assert_eq!(resp.status, status, "for {:?}", String::from_utf8_lossy(&raw[..raw.len().min(80)]));
    if closes {
        assert!(resp.closes(), "a {status} must announce the close");
        assert!(r.closed(), "the connection must close after {status}");
    }
    assert_serving(srv.addr);
}

#[test]
fn garbage_and_truncated_request_lines() {
    refused(b"HELLO\r\n\r\n", 400, true);
    refused(b"GET\r\n\r\n", 400, true);
    refused(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, true);
    refused(b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n", 400, true);
    refused(b"GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400, true);
    refused(b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n folded\r\n\r\n", 400, true);
    refused(b"GET / HTTP/1.1\r\nHost: t\0\r\n\r\n", 400, true);
    refused(b"GET /\0 HTTP/1.1\r\nHost: t\r\n\r\n", 400, true);
    // Truncated: the client gives up half-way; nothing is answered and the server lives on.
    let srv = server();
    let mut s = connect(srv.addr);
    s.write_all(b"GET / HT").unwrap();
    drop(s);
    http_util::wait_until("the early close to be counted", || srv.stats().closed_early >= 1);
    assert_serving(srv.addr);
}

#[test]
fn bad_versions() {
    refused(b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505, true);
    refused(b"GET / HTXP/1.1\r\nHost: t\r\n\r\n", 400, true);
    refused(b"GET / HTTP/1.1\r\n\r\n", 400, true); // HTTP/1.1 requires Host.
}

#[test]
fn oversized_heads_and_urls() {
    let long_url = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000));
    refused(long_url.as_bytes(), 414, true);
    let big_header = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "b".repeat(20_000));
    refused(big_header.as_bytes(), 431, true);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
    for i in 0..100 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    refused(many.as_bytes(), 431, true);
}

#[test]
fn bad_framing_is_refused() {
    refused(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, true);
    refused(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400, true);
    refused(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        400,
        true,
    );
    refused(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
        true,
    );
    refused(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501, true);
    refused(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", 400, true);
    refused(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n", 400, true);
}

#[test]
fn bodies_over_the_route_limit_get_413() {
    let body = "x".repeat(2000);
    let raw = format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n{body}");
    refused(raw.as_bytes(), 413, true);
    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{body}\r\n0\r\n\r\n"
    );
    refused(raw.as_bytes(), 413, true);
}

#[test]
fn routing_faults() {
    let srv = server();
    let (resp, _) = exchange(srv.addr, b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 404);
    assert!(!resp.closes(), "a 404 without a body keeps the connection");
    let (resp, _) = exchange(srv.addr, b"DELETE /echo HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("GET, HEAD, POST"));
    let (resp, _) = exchange(srv.addr, b"POST /len HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 411);
    let (resp, _) = exchange(
        srv.addr,
        b"POST /len HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(resp.status, 411);
    let (resp, _) = exchange(srv.addr, b"GET /panic HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 500);
    assert_eq!(srv.stats().handler_panics, 1);
    assert_serving(srv.addr);
}

#[test]
fn simple_routes_without_a_proc_pool_get_503() {
    let srv = http_util::server_with(Default::default(), false);
    let (resp, _) = exchange(srv.addr, b"GET /pq?x HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert_serving(srv.addr);
}

// ---- Slow and stuck clients (timeouts of 300 ms; bounds generous). ----

#[test]
fn slowloris_gets_408_while_others_are_served() {
    let srv = short_server();
    let mut r = Reader::new(connect(srv.addr));
    r.s.set_nodelay(true).unwrap();
    let started = Instant::now();
    let req = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut answered = None;
    for b in req {
        if r.s.write_all(&[*b]).is_err() {
            break;
        }
        // A byte every 50 ms: the whole head would take 3 s, ten times the header timeout.
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_millis(600) {
            answered = r.try_response(false);
            break;
        }
    }
    let resp = answered.expect("a 408 before the head completes");
    assert_eq!(resp.status, 408);
    assert!(r.closed());
    assert!(srv.stats().timeouts >= 1);
    assert_serving(srv.addr);
}

#[test]
fn many_clients_that_never_finish_their_heads_are_timed_out() {
    let srv = short_server();
    let mut stuck: Vec<Reader> = (0..64)
        .map(|_| {
            let mut r = Reader::new(connect(srv.addr));
            r.send(b"GET / HTTP/1.1\r\nHost: t\r\n");
            r
        })
        .collect();
    // Served meanwhile.
    assert_serving(srv.addr);
    for r in &mut stuck {
        assert_eq!(r.response(false).status, 408);
        assert!(r.closed());
    }
    assert!(srv.stats().timeouts >= 64);
}

#[test]
fn an_idle_kept_alive_connection_is_closed_quietly() {
    let srv = short_server();
    let (resp, mut r) = exchange(srv.addr, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert!(r.closed_by_server(), "closed after the keep-alive timeout, with no response");
    assert_eq!(srv.stats().responses[1], 1, "no answer but the first");
}

#[test]
fn a_body_that_stalls_gets_408() {
    let srv = short_server();
    let (resp, mut r) =
        exchange(srv.addr, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    assert_eq!(resp.status, 408);
    assert!(r.closed());
}

/// A client that sends requests and never reads: the server stops reading from it (its own
/// buffers stay bounded), then drops it after the write timeout; others are served meanwhile.
#[test]
fn a_client_that_never_reads_is_dropped() {
    let srv = short_server();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&srv.addr.into()).unwrap();
    let mut s: std::net::TcpStream = sock.into();
    s.set_write_timeout(Some(http_util::TIMEOUT)).unwrap();
    let writer = std::thread::spawn(move || {
        let req = b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n".repeat(64);
        let mut sent = 0usize;
        // Bounded: 64 MiB of requests would answer with far more than any buffer holds.
        while sent < 64 << 20 {
            match s.write_all(&req) {
                Ok(()) => sent += req.len(),
                Err(_) => return true,
            }
        }
        false
    });
    assert_serving(srv.addr);
    http_util::wait_until("the server to drop the client", || writer.is_finished());
    assert!(writer.join().unwrap(), "the writer saw the connection fail");
    assert!(srv.stats().timeouts >= 1);
    assert_serving(srv.addr);
}

/// A streaming handler that answers from the head alone, while the client is still sending a
/// large body: the client reads the answer (no reset), then the connection closes.
#[test]
fn an_answer_before_the_body_reaches_a_client_still_sending() {
    let srv = server();
    let mut r = Reader::new(connect(srv.addr));
    r.send(b"POST /upgrade HTTP/1.1\r\nHost: t\r\nContent-Length: 400000\r\n\r\n");
    let mut s = r.s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'b'; 40_000];
        for _ in 0..10 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let resp = r.response(false);
    assert_eq!(resp.status, 426);
    assert!(resp.closes());
    writer.join().unwrap();
    assert!(r.closed());
    assert_serving(srv.addr);
}

/// A connection from `ip` (a source block of its own; the test client is 127.0.0.1).
fn connect_from(ip: [u8; 4], addr: std::net::SocketAddr) -> std::net::TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&std::net::SocketAddr::from((ip, 0)).into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    let s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// A source opening many connections at once past its rate: `burst` requests are served at
/// once, `burst` more wait for their turns (one interval apart, longer than the header
/// timeout), and the rest are answered 429 with `Retry-After` and closed; another source
/// is served meanwhile.
#[test]
fn a_source_past_its_rate_and_its_waiting_room_is_answered_429() {
    let mut config = HttpConfig::default();
    // 2 per second: the test's requests all arrive within one interval (0.5 s).
    config.request_rate = Some(dap_net::limit::RateLimit::new(2, 3));
    // Shorter than the waits (up to 1.5 s): a wait for a turn is not the client's delay.
    config.header_timeout = Duration::from_millis(400);
    let srv = server_with(config, true);
    let mut conns: Vec<Reader> =
        (0..10).map(|_| Reader::new(connect_from([127, 0, 0, 5], srv.addr))).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        c.send(format!("GET /q?{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    let mut other = Reader::new(connect_from([127, 0, 0, 6], srv.addr));
    other.send(b"GET /q?other HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(other.response(false).body, b"other");
    let mut served = 0;
    let mut refused = 0;
    for (i, c) in conns.iter_mut().enumerate() {
        let r = c.response(false);
        match r.status {
            200 => {
                assert_eq!(r.body, i.to_string().as_bytes());
                served += 1;
            }
            429 => {
                assert!(r.header("retry-after").is_some_and(|v| v.parse::<u64>().unwrap() >= 1));
                assert!(r.closes(), "a refused connection closes");
                assert!(c.try_response(false).is_none());
                refused += 1;
            }
            s => panic!("status {s}"),
        }
    }
    // 3 at once, 3 waiting, the rest refused; give or take the one on a boundary: each of
    // the two workers reads the clock once per turn, so a request may see the other's
    // turns a little early or late, and the sixth's turn falls exactly on the bound.
    assert!((5..=7).contains(&served), "{served} served, {refused} refused");
    let st = srv.stats();
    assert_eq!(st.rate_refused, refused);
    assert!((2..=4).contains(&st.rate_paused), "{} waited", st.rate_paused);
    assert!(st.rate_paused <= served, "every one that waited was served");
}

/// Past `request_rate` a source's connection is paused, not refused: every pipelined
/// request is still answered, in order, and another source is served meanwhile.
#[test]
fn a_source_over_its_request_rate_waits_and_others_are_served() {
    let mut config = HttpConfig::default();
    config.request_rate = Some(dap_net::limit::RateLimit::new(20, 5));
    let srv = server_with(config, true);
    let mut fast = Reader::new(connect(srv.addr));
    let mut batch = Vec::new();
    for i in 0..30 {
        batch.extend_from_slice(format!("GET /q?{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    fast.send(&batch);
    // Five at once (the burst), then one per 50 ms: the rest wait in the kernel.
    for i in 0..5 {
        assert_eq!(fast.response(false).body, i.to_string().as_bytes());
    }
    let mut other = Reader::new(connect_from([127, 0, 0, 2], srv.addr));
    other.send(b"GET /q?other HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(other.response(false).body, b"other");
    assert!(srv.stats().rate_paused > 0, "the fast source was paused");
    for i in 5..30 {
        assert_eq!(fast.response(false).body, i.to_string().as_bytes(), "nothing lost, in order");
    }
}
