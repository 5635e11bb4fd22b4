//! `EncServer`: `/enc_init` and enc routes on an [`HttpServer`].
//!
//! The deciding is done by the sans-IO parts ([`handshake::accept`], [`KeyStore`],
//! [`enc_http::open_request`]); this file only maps HTTP requests onto them and their
//! outcomes onto responses.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::config::{ClientAuth, EncConfig};
use super::enc_http::{self, KEY_ID_HEADER, SEQ_HEADER};
use super::handshake::{self, AcceptParams};
use super::key_id::KeyId;
use super::keys::{NodeKey, PUBLIC_KEY_LEN, public_key_to_base64};
use super::keystore::{KeyMaterial, KeyStore, UseError};
use super::refusal::{ENC_ERROR_HEADER, Refusal};
use super::stats::{EncStats, EncStatsSnapshot};
use crate::http::server::{HttpServer, RouteLimits};
use crate::http::{Request, Response};
use crate::limit::RateLimiter;

/// The `Retry-After` of a `503 busy` handshake: a slot frees when a key in use expires,
/// which may be at any moment.
const BUSY_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// The path of the handshake.
pub const ENC_INIT_PATH: &str = "/enc_init";

/// A request to an enc route, opened and authenticated, as its handler sees it.
///
/// Its `Debug` output shows lengths, not the plaintext.
#[non_exhaustive]
pub struct EncRequest {
    /// The key the request was sealed with.
    pub key_id: KeyId,
    /// The request counter.
    pub seq: u64,
    /// The client's Ed25519 public key, when it authenticated with a certificate in the
    /// handshake that made this key.
    pub client: Option<[u8; PUBLIC_KEY_LEN]>,
    /// The method.
    pub method: String,
    /// The path after the route prefix, opened.
    pub sub_path: String,
    /// The query, opened (`None` when none was sent).
    pub query: Option<String>,
    /// The body, opened (empty when none was sent).
    pub body: Vec<u8>,
    /// The client's address (`None` on Unix sockets).
    pub peer: Option<SocketAddr>,
    /// Which optional parts were sent; bound into the response's associated data.
    flags: u8,
}

impl fmt::Debug for EncRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncRequest")
            .field("key_id", &self.key_id)
            .field("seq", &self.seq)
            .field("client", &self.client.map(|k| public_key_to_base64(&k)))
            .field("method", &self.method)
            .field("sub_path_len", &self.sub_path.len())
            .field("query_len", &self.query.as_ref().map(String::len))
            .field("body_len", &self.body.len())
            .field("peer", &self.peer)
            .finish()
    }
}

struct Inner {
    node: NodeKey,
    config: EncConfig,
    /// Who may run `/enc_init`: starts as `config.client_auth`, replaceable while serving
    /// ([`EncServer::set_client_auth`]).
    client_auth: parking_lot::RwLock<Arc<ClientAuth>>,
    store: KeyStore,
    /// Handshakes per source block.
    rate: RateLimiter,
    stats: EncStats,
    /// The cluster's shared keys, once set ([`EncServer::share_keys`]).
    shared: std::sync::OnceLock<Arc<dyn crate::enc::SharedKeys>>,
    /// Whether a route was installed that chose its thread by `shared` (see `share_keys`).
    routed: std::sync::atomic::AtomicBool,
}

/// The server side of enc: answers `/enc_init`, keeps the keys, serves enc routes.
///
/// Cheap to clone (one `Arc`), `Send + Sync`: every route holds a clone.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use dap_net::enc::{EncConfig, EncServer, NodeKey};
/// use dap_net::http::Response;
/// use dap_net::http::server::{HttpConfig, HttpServer, RouteLimits};
/// use dap_net::server::Server;
///
/// let reactor = dap_reactor::Reactor::builder().start()?;
/// let _pool = dap_proc::ProcPool::for_reactor(&reactor)?;
/// let enc = EncServer::new(NodeKey::load("node.key".as_ref())?, EncConfig::default());
/// let mut http = HttpServer::new(HttpConfig::default());
/// enc.install(&mut http);
/// enc.add_route(&mut http, "/api/", RouteLimits::methods(&["GET", "POST"]), |req| {
///     Response::new(200).body(format!("you sent {} bytes to {}", req.body.len(), req.sub_path))
/// });
/// let _running = http.start(&reactor, Server::builder().tcp("0.0.0.0:8079".parse()?))?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EncServer {
    inner: Arc<Inner>,
}

impl fmt::Debug for EncServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncServer")
            .field("node", &self.inner.node)
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

// Every route holds a clone, used from any proc thread.
const _: fn() = || {
    fn shared<T: Clone + Send + Sync + 'static>() {}
    shared::<EncServer>();
};

fn refuse(r: Refusal) -> Response {
    refuse_after(r, None)
}

/// A refusal, with `Retry-After` in whole seconds (at least 1) when `retry` is given.
fn refuse_after(r: Refusal, retry: Option<std::time::Duration>) -> Response {
    let mut resp = Response::text(r.status(), format!("{r}\n"))
        .header(ENC_ERROR_HEADER, r.reason())
        .header("Cache-Control", "no-store");
    if let Some(after) = retry {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        resp = resp.header("Retry-After", secs.max(1).to_string());
    }
    if r.status() == 401 {
        // RFC 9110 §11.6.1: a 401 names its scheme; ours is "run /enc_init".
        resp = resp.header("WWW-Authenticate", "DapEnc");
    }
    resp
}

/// Statuses whose responses carry no body (RFC 9110 §6.4.1): an enc response must have one.
fn status_has_no_body(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

impl EncServer {
    /// A server signing with `node`.
    pub fn new(node: NodeKey, config: EncConfig) -> Self {
        let store = KeyStore::new(config.store.clone());
        let client_auth = parking_lot::RwLock::new(Arc::new(config.client_auth.clone()));
        let rate = RateLimiter::new(config.handshake_rate.clone());
        let inner = Inner {
            node,
            config,
            client_auth,
            store,
            rate,
            stats: EncStats::default(),
            shared: std::sync::OnceLock::new(),
            routed: std::sync::atomic::AtomicBool::new(false),
        };
        EncServer { inner: Arc::new(inner) }
    }

    /// Shares keys with the other nodes of a cluster from now on (once; a second call is
    /// ignored): each key `/enc_init` makes is published before its client hears of it, a
    /// request with a key this node does not hold fetches it, and each request's number
    /// is claimed cluster-wide, so a request replayed to another node is refused as on
    /// this one. `/enc_init` then runs on proc threads whatever
    /// [`EncConfig::handshake_on_worker`] says (publishing may block briefly). Call it
    /// before [`install`](Self::install) and [`add_cheap_route`](Self::add_cheap_route),
    /// which choose the thread when they are called.
    pub fn share_keys(&self, shared: Arc<dyn crate::enc::SharedKeys>) {
        if self.inner.routed.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "EncServer::share_keys after its routes were installed: /enc_init (and cheap \
                 routes) may run on the worker and block it while publishing keys"
            );
        }
        let _ = self.inner.shared.set(shared);
    }

    fn shared(&self) -> Option<&Arc<dyn crate::enc::SharedKeys>> {
        self.inner.shared.get()
    }

    /// Replaces who may run `/enc_init` from the next handshake on (a configuration
    /// reload: a new client allow list). Keys already made stay valid until they expire.
    pub fn set_client_auth(&self, auth: ClientAuth) {
        *self.inner.client_auth.write() = Arc::new(auth);
    }

    /// Who may run `/enc_init` now.
    pub fn client_auth(&self) -> Arc<ClientAuth> {
        self.inner.client_auth.read().clone()
    }

    /// The node public key clients pin.
    pub fn node_public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.inner.node.public_key()
    }

    /// The configuration.
    pub fn config(&self) -> &EncConfig {
        &self.inner.config
    }

    /// The key store, for layers that look up a key's identity (e.g. `stream_ctl`) and for
    /// periodic [`sweep`](KeyStore::sweep)s.
    pub fn store(&self) -> &KeyStore {
        &self.inner.store
    }

    /// The counters, key store included.
    pub fn stats(&self) -> EncStatsSnapshot {
        self.inner.stats.snapshot(self.inner.store.stats())
    }

    /// Adds `POST /enc_init` to `http`: on a proc thread, or on the worker with
    /// [`EncConfig::handshake_on_worker`]. Bodies over [`EncConfig::max_init_body`] get 413.
    pub fn install(&self, http: &mut HttpServer) {
        let limits = RouteLimits::methods(&["POST"]).max_body(self.inner.config.max_init_body);
        let me = self.clone();
        let f =
            move |req: &Request| me.serve_init(&req.body, req.peer.map(|p| p.ip()), Instant::now());
        self.inner.routed.store(true, std::sync::atomic::Ordering::Relaxed);
        if self.inner.config.handshake_on_worker && self.shared().is_none() {
            http.add_inline(ENC_INIT_PATH, limits, f);
        } else {
            http.add_simple(ENC_INIT_PATH, limits, f);
        }
    }

    /// Answers one `/enc_init` body from `peer` at `now`: `200` with the response body
    /// (and the key stored), or a [`Refusal`] — `429 rate-limited` when `peer`'s address
    /// block is over [`EncConfig::handshake_rate`] (checked first, before any handshake
    /// work), `503 busy` when the key store is full of keys in use. What the `/enc_init`
    /// route runs; public for servers on other transports.
    pub fn serve_init(&self, body: &[u8], peer: Option<IpAddr>, now: Instant) -> Response {
        if let Some(ip) = peer
            && let Err(r) = self.inner.rate.check(ip, now)
        {
            self.inner.stats.handshake_refused(Refusal::RateLimited);
            return refuse_after(Refusal::RateLimited, Some(r.retry_after));
        }
        let began = Instant::now();
        let resp = self.answer_init(body, now);
        self.inner.stats.init_latency.observe(began.elapsed());
        resp
    }

    /// How long answering `/enc_init` has taken (each one's handshake work).
    pub fn init_latency(&self) -> crate::histogram::HistogramSnapshot {
        self.inner.stats.init_latency.snapshot()
    }

    fn answer_init(&self, body: &[u8], now: Instant) -> Response {
        let inner = &self.inner;
        let params = AcceptParams {
            node: &inner.node,
            suites: &inner.config.suites,
            client_auth: &self.client_auth(),
            key_ttl_secs: u32::try_from(inner.config.store.idle_ttl.as_secs()).unwrap_or(u32::MAX),
        };
        match handshake::accept(body, &params) {
            Ok(accepted) => {
                let shared = self.shared().map(|s| (s, accepted.material.to_bytes()));
                if inner.store.insert(accepted.key_id, accepted.material, now).is_err() {
                    // Every key held is in use: refuse rather than evict one (§4.8).
                    inner.stats.handshake_refused(Refusal::Busy);
                    return refuse_after(Refusal::Busy, Some(BUSY_RETRY_AFTER));
                }
                if let Some((s, bytes)) = shared {
                    s.publish(&accepted.key_id, &bytes, inner.config.store.idle_ttl);
                }
                inner.stats.handshake_ok();
                Response::new(200)
                    .header("Content-Type", "application/octet-stream")
                    .header("Cache-Control", "no-store")
                    .body(accepted.response)
            }
            Err(e) => {
                let r = e.refusal();
                tracing::debug!(error = %e, "enc_init refused");
                inner.stats.handshake_refused(r);
                refuse(r)
            }
        }
    }

    /// Routes every path under `prefix` (which should end with `/`) to `handler`, on a
    /// proc thread: requests are opened and checked first (see `docs/PROTOCOL.md` §4), the
    /// handler sees the plaintext in an [`EncRequest`], and its response body is sealed on
    /// the way out. `limits` apply to the sealed request (a sealed body is 16 bytes longer
    /// than its plaintext).
    ///
    /// The handler's headers are sent as they are, in the clear and unauthenticated, except
    /// that `Content-Type` becomes `application/octet-stream`; put what matters in the
    /// body. Its status is authenticated with the body. A handler that panics, or answers a
    /// status that has no body (1xx, 204, 304), gets the client a 500 `internal` refusal.
    pub fn add_route(
        &self,
        http: &mut HttpServer,
        prefix: &str,
        limits: RouteLimits,
        handler: impl Fn(&EncRequest) -> Response + Send + Sync + 'static,
    ) {
        let me = self.clone();
        let owned_prefix = prefix.to_string();
        http.add_simple_prefix(prefix, limits, move |req| {
            me.serve_request(&owned_prefix, req, &handler, Instant::now())
        });
    }

    /// [`add_route`](Self::add_route), run on the connection's worker instead of a proc
    /// thread when the handshakes are
    /// ([`EncConfig::handshake_on_worker`]): for handlers that are cheap and never block
    /// (`/stream_ctl`), which then cost no hand-off to a proc thread and back. Once the
    /// node shares keys with a cluster ([`share_keys`](Self::share_keys), which must come
    /// first), opening a request may fetch its key from the cluster, so the route stays on
    /// a proc thread.
    pub fn add_cheap_route(
        &self,
        http: &mut HttpServer,
        prefix: &str,
        limits: RouteLimits,
        handler: impl Fn(&EncRequest) -> Response + Send + Sync + 'static,
    ) {
        self.inner.routed.store(true, std::sync::atomic::Ordering::Relaxed);
        if !(self.inner.config.handshake_on_worker && self.shared().is_none()) {
            return self.add_route(http, prefix, limits, handler);
        }
        let me = self.clone();
        let owned_prefix = prefix.to_string();
        http.add_inline_prefix(prefix, limits, move |req| {
            me.serve_request(&owned_prefix, req, &handler, Instant::now())
        });
    }

    /// Loads a key another node of the cluster made; `UnknownKey` when none has it,
    /// `Busy` when the local store is full of keys in use.
    fn fetch_shared(&self, key_id: &KeyId, now: Instant) -> Result<(), Refusal> {
        let shared = self.shared().ok_or(Refusal::UnknownKey)?;
        let bytes = shared.fetch(key_id).ok_or(Refusal::UnknownKey)?;
        let material = KeyMaterial::from_bytes(&bytes).ok_or(Refusal::UnknownKey)?;
        self.inner.store.insert(*key_id, material, now).map_err(|_| Refusal::Busy)
    }

    /// Serves one request to an enc route mounted at `prefix`, at `now`. What
    /// [`add_route`](Self::add_route) runs; public for servers on other transports.
    pub fn serve_request(
        &self,
        prefix: &str,
        req: &Request,
        handler: &dyn Fn(&EncRequest) -> Response,
        now: Instant,
    ) -> Response {
        let inner = &self.inner;
        match self.open(prefix, req, now) {
            Ok((enc, material)) => {
                let outcome = catch_unwind(AssertUnwindSafe(|| handler(&enc)));
                let resp = match outcome {
                    Ok(resp) if !status_has_no_body(resp.status) => resp,
                    Ok(resp) => {
                        tracing::error!(
                            status = resp.status,
                            "enc handler answered without a body"
                        );
                        inner.stats.request_refused(Refusal::Internal);
                        return refuse(Refusal::Internal);
                    }
                    Err(_) => {
                        tracing::error!(path = %req.path(), "enc handler panicked");
                        inner.stats.request_refused(Refusal::Internal);
                        return refuse(Refusal::Internal);
                    }
                };
                // Sealed with the material the request was opened with, even if the key was
                // evicted meanwhile: the client still holds it and can read the answer.
                let sealed = enc_http::seal_response(
                    &material.s2c,
                    &enc.key_id,
                    enc.seq,
                    &enc.method,
                    enc.flags,
                    resp.status,
                    &resp.body,
                );
                inner.stats.request_ok();
                let mut headers = resp.headers;
                headers.retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
                headers
                    .push(("Content-Type".into(), Bytes::from_static(b"application/octet-stream")));
                Response { status: resp.status, headers, body: Bytes::from(sealed) }
            }
            Err(r) => {
                tracing::debug!(reason = r.reason(), peer = ?req.peer, "enc request refused");
                inner.stats.request_refused(r);
                refuse(r)
            }
        }
    }

    /// Checks and opens a request; marks its counter used once it authenticated.
    fn open(
        &self,
        prefix: &str,
        req: &Request,
        now: Instant,
    ) -> Result<(EncRequest, Arc<KeyMaterial>), Refusal> {
        let store = &self.inner.store;
        let method = req.method();
        if method == "HEAD" {
            return Err(Refusal::Method);
        }
        let key_id =
            req.header(KEY_ID_HEADER).and_then(KeyId::from_base64).ok_or(Refusal::Malformed)?;
        let seq = req.header(SEQ_HEADER).and_then(enc_http::parse_seq).ok_or(Refusal::Malformed)?;
        let use_error = |e| match e {
            UseError::Unknown => Refusal::UnknownKey,
            UseError::Expired => Refusal::ExpiredKey,
            UseError::Replay(_) => Refusal::Replay,
        };
        let material = match store.begin(&key_id, seq, now) {
            Err(UseError::Unknown) if self.shared().is_some() => {
                self.fetch_shared(&key_id, now)?;
                store.begin(&key_id, seq, now)
            }
            r => r,
        }
        .map_err(use_error)?;
        let sealed_path = req.path().strip_prefix(prefix).ok_or(Refusal::Malformed)?;
        let opened = enc_http::open_request(
            &material.c2s,
            &key_id,
            seq,
            method,
            sealed_path,
            req.query(),
            &req.body,
        )?;
        // Only now, authenticated, may the request use up its counter: of two copies racing
        // on two threads, exactly one gets past this.
        store.commit(&key_id, seq, now).map_err(use_error)?;
        // And across the cluster: a copy replayed to another node is refused there too.
        if let Some(s) = self.shared()
            && s.claim(&key_id, seq, self.inner.config.store.idle_ttl) == Some(false)
        {
            return Err(Refusal::Replay);
        }
        let enc = EncRequest {
            key_id,
            seq,
            client: material.client,
            method: method.to_string(),
            sub_path: opened.sub_path,
            query: opened.query,
            body: opened.body,
            peer: req.peer,
            flags: opened.flags,
        };
        Ok((enc, material))
    }
}
