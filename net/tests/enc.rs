//! enc over real loopback sockets: `/enc_init` and enc routes on the HTTP server, driven by
//! the blocking client helpers and by raw requests (to tamper with and replay them).

mod http_util;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use dap_net::enc::client::{self, EncCall, HandshakeError, RequestError};
use dap_net::enc::keys::public_key_to_base64;
use dap_net::enc::{
    AllowList, CipherSuite, ClientAuth, ClientCert, EncConfig, EncInitError, EncServer, EncSession,
    KeyId, NodeKey, Refusal, SealedRequest,
};
use dap_net::http::Response;
use dap_net::http::client::{ClientConfig, Method};
use dap_net::http::server::{HttpConfig, HttpServer, RouteLimits, RunningHttp};
use dap_net::server::Server;
use dap_proc::ProcPool;
use dap_reactor::Reactor;
use http_util::{Resp, TIMEOUT, exchange, wait_until};

/// A reactor with a proc pool, an HTTP server with `/enc_init` and the enc route `/api/`.
struct EncTest {
    enc: EncServer,
    addr: SocketAddr,
    base: String,
    _http: RunningHttp,
    _pool: ProcPool,
    reactor: Reactor,
}

/// The `/api/` handler: `METHOD|sub-path|query|client|` followed by the body; a few
/// sub-paths behave differently.
fn api(req: &dap_net::enc::EncRequest) -> Response {
    match req.sub_path.as_str() {
        "teapot" => return Response::new(418).body("short and stout"),
        "empty" => return Response::new(204),
        "panic" => panic!("an enc handler panics on purpose"),
        _ => {}
    }
    let client = req.client.map_or_else(|| "-".to_string(), |k| public_key_to_base64(&k));
    let mut body = format!(
        "{}|{}|{}|{}|",
        req.method,
        req.sub_path,
        req.query.as_deref().unwrap_or("-"),
        client
    )
    .into_bytes();
    body.extend_from_slice(&req.body);
    Response::new(200).header("X-Plain", "visible").body(body)
}

impl EncTest {
    fn start(config: EncConfig) -> Self {
        let reactor = Reactor::builder().threads(2).pin(false).start().expect("reactor");
        let pool = ProcPool::builder().pin(false).start_for(&reactor).expect("pool");
        let enc = EncServer::new(NodeKey::generate(), config);
        let mut http = HttpServer::new(HttpConfig::default());
        enc.install(&mut http);
        let limits = RouteLimits::methods(&["GET", "POST", "HEAD"]).max_body(64 * 1024);
        enc.add_route(&mut http, "/api/", limits.clone(), api);
        // Answers the name of the thread it ran on.
        enc.add_cheap_route(&mut http, "/cheap/", limits, |_| {
            let name = std::thread::current().name().unwrap_or("?").to_string();
            Response::new(200).body(name)
        });
        let http = http
            .start(&reactor, Server::builder().tcp("127.0.0.1:0".parse().unwrap()))
            .expect("start");
        let addr = http.server().tcp_addrs()[0];
        EncTest { enc, addr, base: format!("http://{addr}"), _http: http, _pool: pool, reactor }
    }

    fn config() -> ClientConfig {
        let mut c = ClientConfig::default();
        c.connect_timeout = TIMEOUT;
        c.response_timeout = TIMEOUT;
        c
    }

    fn handshake(
        &self,
        suites: &[CipherSuite],
        cert: Option<&ClientCert>,
        pinned: Option<[u8; 32]>,
    ) -> Result<EncSession, HandshakeError> {
        let worker = self.reactor.worker(0).unwrap();
        client::handshake_blocking(worker, &self.base, suites, cert, pinned, &Self::config())
    }

    /// A handshake that must succeed, pinned to the server's node key.
    fn session(&self) -> EncSession {
        self.handshake(&[], None, Some(self.enc.node_public_key())).expect("handshake")
    }

    fn call(
        &self,
        s: &EncSession,
        call: &EncCall<'_>,
    ) -> Result<client::EncResponse, RequestError> {
        let worker = self.reactor.worker(1).unwrap();
        client::request_blocking(worker, &self.base, s, call, &Self::config())
    }

    /// Sends a sealed request as raw bytes, with `key_id` in place of the session's.
    fn send_raw(&self, sealed: &SealedRequest, key_id: Option<KeyId>) -> Resp {
        let mut raw =
            format!("{} {} HTTP/1.1\r\nHost: t\r\n", sealed.method, sealed.target("/api/"));
        for (name, value) in &sealed.headers {
            let value = match (*name, key_id) {
                ("KeyID", Some(id)) => id.to_base64(),
                _ => value.clone(),
            };
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        raw.push_str(&format!("Content-Length: {}\r\n\r\n", sealed.body.len()));
        let mut raw = raw.into_bytes();
        raw.extend_from_slice(&sealed.body);
        exchange(self.addr, &raw).0
    }
}

#[track_caller]
fn assert_refused(resp: &Resp, refusal: Refusal) {
    assert_eq!(resp.status, refusal.status(), "{resp:?}");
    assert_eq!(resp.header("enc-error"), Some(refusal.reason()), "{resp:?}");
}

#[track_caller]
fn assert_call_refused<T: std::fmt::Debug>(r: Result<T, RequestError>, refusal: Refusal) {
    match r {
        Err(RequestError::Refused { status, refusal: Some(got) }) => {
            assert_eq!((status, got), (refusal.status(), refusal));
        }
        other => panic!("expected {refusal}, got {other:?}"),
    }
}

#[test]
fn handshake_and_round_trips_for_both_suites() {
    let t = EncTest::start(EncConfig::default());
    for suite in CipherSuite::ALL {
        let s = t.handshake(&[suite], None, Some(t.enc.node_public_key())).unwrap();
        assert_eq!(s.suite(), suite);
        assert_eq!(s.key_ttl(), Duration::from_secs(600));
        let call = EncCall::new(Method::Post, "/api/", "notes/1").query("tag=a b").body(b"hello");
        let resp = t.call(&s, &call).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"POST|notes/1|tag=a b|-|hello");
        assert!(resp.headers.iter().any(|(n, v)| n == "X-Plain" && v == b"visible"));
        let resp = t.call(&s, &EncCall::new(Method::Get, "/api/", "")).unwrap();
        assert_eq!(resp.body, b"GET||-|-|");
        // Any status the handler picks comes back authenticated.
        let resp = t.call(&s, &EncCall::new(Method::Get, "/api/", "teapot")).unwrap();
        assert_eq!((resp.status, resp.body.as_slice()), (418, &b"short and stout"[..]));
    }
    let st = t.enc.stats();
    assert_eq!((st.handshakes_ok, st.requests_ok, st.keys_live), (2, 6, 2));
}

#[test]
fn one_session_serves_concurrent_requests() {
    let t = EncTest::start(EncConfig::default());
    let s = t.session();
    std::thread::scope(|scope| {
        for i in 0..4 {
            let (t, s) = (&t, &s);
            scope.spawn(move || {
                for j in 0..10 {
                    let path = format!("{i}/{j}");
                    let resp = t.call(s, &EncCall::new(Method::Get, "/api/", &path)).unwrap();
                    assert_eq!(resp.body, format!("GET|{path}|-|-|").as_bytes());
                }
            });
        }
    });
    assert_eq!(t.enc.stats().requests_ok, 40);
    assert_eq!(s.next_seq(), 40);
}

#[test]
fn an_unknown_key_gets_401() {
    let t = EncTest::start(EncConfig::default());
    let s = t.session();
    let sealed = s.seal_request("GET", "x", None, b"").unwrap();
    let resp = t.send_raw(&sealed, Some(KeyId::random()));
    assert_refused(&resp, Refusal::UnknownKey);
    assert_eq!(resp.header("www-authenticate"), Some("DapEnc"));
    assert_eq!(t.enc.stats().unknown_key, 1);
    // The real key still works with that very counter: a refusal uses up nothing.
    let resp = t.send_raw(&sealed, None);
    assert_eq!(resp.status, 200);
    assert_eq!(s.open_response(&sealed, 200, &resp.body).unwrap(), b"GET|x|-|-|");
}

#[test]
fn an_expired_key_gets_401_then_is_forgotten() {
    let ttl = Duration::from_millis(300);
    let mut config = EncConfig::default();
    config.store.idle_ttl = ttl;
    let t = EncTest::start(config);
    let s = t.session();
    assert_eq!(s.key_ttl(), Duration::ZERO, "announced in whole seconds");
    t.call(&s, &EncCall::new(Method::Get, "/api/", "a")).unwrap();
    // Expiry depends on time alone: wait (bounded) until the TTL has certainly passed.
    let used = Instant::now();
    wait_until("the key's idle TTL to pass", || used.elapsed() > ttl + Duration::from_millis(20));
    assert_call_refused(t.call(&s, &EncCall::new(Method::Get, "/api/", "a")), Refusal::ExpiredKey);
    assert_call_refused(t.call(&s, &EncCall::new(Method::Get, "/api/", "a")), Refusal::UnknownKey);
    let st = t.enc.stats();
    assert_eq!((st.expired_key, st.unknown_key, st.keys_expired, st.keys_live), (1, 1, 1, 0));
    // A new handshake is the way back.
    let s = t.session();
    assert_eq!(t.call(&s, &EncCall::new(Method::Get, "/api/", "b")).unwrap().status, 200);
}

#[test]
fn flipped_bits_get_400_and_burn_no_counter() {
    let t = EncTest::start(EncConfig::default());
    let s = t.session();
    let sealed = s.seal_request("POST", "p/q", Some("k=v"), b"body").unwrap();
    let mut bad_body = sealed.clone();
    bad_body.body[0] ^= 0x01;
    assert_refused(&t.send_raw(&bad_body, None), Refusal::AuthFailed);
    let mut bad_path = sealed.clone();
    let mut raw = base64_decode(&sealed.path_suffix);
    raw[3] ^= 0x80;
    bad_path.path_suffix = base64_encode(&raw);
    assert_refused(&t.send_raw(&bad_path, None), Refusal::AuthFailed);
    let mut bad_query = sealed.clone();
    bad_query.query = None;
    assert_refused(&t.send_raw(&bad_query, None), Refusal::AuthFailed);
    // Not base64url at all.
    let mut garbage = sealed.clone();
    garbage.path_suffix = "%%%".into();
    assert_refused(&t.send_raw(&garbage, None), Refusal::Malformed);
    let st = t.enc.stats();
    assert_eq!((st.auth_failures, st.malformed, st.requests_ok), (3, 1, 0));
    // The genuine request, same counter, still goes through.
    let resp = t.send_raw(&sealed, None);
    assert_eq!(s.open_response(&sealed, resp.status, &resp.body).unwrap(), b"POST|p/q|k=v|-|body");
}

#[test]
fn a_replayed_request_gets_400_counted_as_a_replay() {
    let t = EncTest::start(EncConfig::default());
    let s = t.session();
    let sealed = s.seal_request("POST", "pay", None, b"1 coin").unwrap();
    assert_eq!(t.send_raw(&sealed, None).status, 200);
    assert_refused(&t.send_raw(&sealed, None), Refusal::Replay);
    // Later counters still work; an earlier one never used does too (within the window).
    let skipped = s.seal_request("GET", "a", None, b"").unwrap();
    let later = s.seal_request("GET", "b", None, b"").unwrap();
    assert_eq!(t.send_raw(&later, None).status, 200);
    assert_eq!(t.send_raw(&skipped, None).status, 200);
    assert_refused(&t.send_raw(&skipped, None), Refusal::Replay);
    let st = t.enc.stats();
    assert_eq!((st.replays, st.auth_failures, st.requests_ok), (2, 0, 3));
}

#[test]
fn bad_headers_methods_and_handlers() {
    let t = EncTest::start(EncConfig::default());
    let s = t.session();
    let head = b"GET /api/AAAA HTTP/1.1\r\nHost: t\r\n\r\n";
    assert_refused(&exchange(t.addr, head).0, Refusal::Malformed);
    let id = s.key_id().to_base64();
    let no_seq = format!("GET /api/AAAA HTTP/1.1\r\nHost: t\r\nKeyID: {id}\r\n\r\n");
    assert_refused(&exchange(t.addr, no_seq.as_bytes()).0, Refusal::Malformed);
    let bad_seq =
        format!("GET /api/AAAA HTTP/1.1\r\nHost: t\r\nKeyID: {id}\r\nEnc-Seq: -1\r\n\r\n");
    assert_refused(&exchange(t.addr, bad_seq.as_bytes()).0, Refusal::Malformed);
    let sealed = s.seal_request("HEAD", "x", None, b"").unwrap();
    let mut raw = format!("HEAD {} HTTP/1.1\r\nHost: t\r\n", sealed.target("/api/"));
    for (n, v) in &sealed.headers {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    let (resp, _) = exchange(t.addr, raw.as_bytes());
    assert_eq!((resp.status, resp.header("enc-error")), (405, Some("method")));
    // Handlers that panic or answer without a body.
    assert_call_refused(
        t.call(&s, &EncCall::new(Method::Get, "/api/", "panic")),
        Refusal::Internal,
    );
    assert_call_refused(
        t.call(&s, &EncCall::new(Method::Get, "/api/", "empty")),
        Refusal::Internal,
    );
    assert_eq!(t.enc.stats().handler_failures, 2);
}

#[test]
fn enc_init_refuses_bad_bodies_and_methods() {
    let t = EncTest::start(EncConfig::default());
    let post = |body: &[u8]| {
        let mut raw =
            format!("POST /enc_init HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", body.len())
                .into_bytes();
        raw.extend_from_slice(body);
        exchange(t.addr, &raw).0
    };
    assert_refused(&post(b""), Refusal::BadInit);
    assert_refused(&post(&[9, 1, 1]), Refusal::UnsupportedVersion);
    assert_eq!(post(&vec![1; 5000]).status, 413);
    let (resp, _) = exchange(t.addr, b"GET /enc_init HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(resp.status, 405);
    assert_eq!(t.enc.stats().handshakes_failed, 2);
}

#[test]
fn a_pinned_node_key_that_does_not_match_fails_the_handshake() {
    // (With the handshake on the worker, to cover that path too.)
    let mut config = EncConfig::default();
    config.handshake_on_worker = true;
    let t = EncTest::start(config);
    let wrong = NodeKey::generate().public_key();
    match t.handshake(&[], None, Some(wrong)) {
        Err(HandshakeError::Init(EncInitError::NodeKeyMismatch)) => {}
        other => panic!("expected a node key mismatch, got {other:?}"),
    }
    // Unpinned, the client learns the key and may pin it from then on.
    let s = t.handshake(&[], None, None).unwrap();
    assert_eq!(s.node_key(), t.enc.node_public_key());
}

#[test]
fn a_cheap_route_runs_where_the_handshakes_run() {
    for on_worker in [false, true] {
        let mut config = EncConfig::default();
        config.handshake_on_worker = on_worker;
        let t = EncTest::start(config);
        let s = t.session();
        let resp = t.call(&s, &EncCall::new(Method::Post, "/cheap/", "x").body(&b"hi"[..]));
        let resp = resp.unwrap();
        assert_eq!(resp.status, 200);
        let thread = String::from_utf8(resp.body.to_vec()).unwrap();
        let want = if on_worker { "dap-worker-" } else { "dap-proc-" };
        assert!(thread.starts_with(want), "on_worker {on_worker}: ran on {thread}");
    }
}

#[test]
fn client_certificates_required_and_allow_listed() {
    let alice = ClientCert::generate();
    let mallory = ClientCert::generate();
    let list: AllowList = [alice.public_key()].into_iter().collect();
    let mut config = EncConfig::default();
    config.client_auth = ClientAuth::Required(list);
    let t = EncTest::start(config);
    let refused = |cert: Option<&ClientCert>| match t.handshake(&[], cert, None) {
        Err(HandshakeError::Refused { status, refusal: Some(r) }) => (status, r),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(refused(None), (403, Refusal::AuthRequired));
    assert_eq!(refused(Some(&mallory)), (403, Refusal::NotAllowed));
    let s = t.handshake(&[], Some(&alice), Some(t.enc.node_public_key())).unwrap();
    let resp = t.call(&s, &EncCall::new(Method::Get, "/api/", "me")).unwrap();
    let want = format!("GET|me|-|{}|", public_key_to_base64(&alice.public_key()));
    assert_eq!(resp.body, want.as_bytes());
    let info = t.enc.store().info(&s.key_id(), Instant::now()).unwrap();
    assert_eq!(info.client, Some(alice.public_key()));
    let st = t.enc.stats();
    assert_eq!((st.handshakes_ok, st.handshakes_failed, st.handshakes_forbidden), (1, 2, 2));
}

#[test]
fn a_full_store_evicts_the_least_recently_used_key() {
    let mut config = EncConfig::default();
    config.store.max_keys = 1;
    let t = EncTest::start(config);
    let first = t.session();
    let second = t.session();
    assert_call_refused(
        t.call(&first, &EncCall::new(Method::Get, "/api/", "")),
        Refusal::UnknownKey,
    );
    assert_eq!(t.call(&second, &EncCall::new(Method::Get, "/api/", "")).unwrap().status, 200);
    let st = t.enc.stats();
    assert_eq!((st.keys_live, st.keys_evicted), (1, 1));
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
