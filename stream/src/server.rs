//! The server side: stream_ctl, the session table, and the `/stream/` upgrade route.

use std::sync::Arc;
use std::time::Instant;

use dap_net::enc::EncServer;
use dap_net::enc::cipher::{CipherSuite, KEY_LEN, random_bytes};
use dap_net::http::Response;
use dap_net::http::server::{Exchange, HttpServer, ProcHandler, RouteLimits};

use crate::channel::{ChannelProcs, SessionInfo};
use crate::codec::packet;
use crate::mux::Mux;
use crate::session::ctl::{CtlRequest, encode_answer};
use crate::session::{
    AttachError, SESSION_ID_LEN, SessionLimits, SessionParams, SessionTable, TransportKind, unhex,
};
use crate::stats::{StreamStats, StreamStatsSnapshot};
use crate::transport::http::{STREAM_PATH, StreamConn, UPGRADE_TOKEN};

/// The path of stream_ctl, an enc_http route.
pub const STREAM_CTL_PATH: &str = "/stream_ctl";

/// Server settings.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// Limits every session gets.
    pub limits: SessionLimits,
    /// The most sessions held at once, pending and attached (65,536).
    pub max_sessions: usize,
    /// Ciphers offered, in order of preference (both).
    pub suites: Vec<CipherSuite>,
    /// The UDP port announced to clients (0: UDP off).
    pub udp_port: u16,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            limits: SessionLimits::default(),
            max_sessions: 65_536,
            suites: CipherSuite::ALL.to_vec(),
            udp_port: 0,
        }
    }
}

/// Why stream_ctl refused a request; the status is what the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CtlError {
    /// The request could not be decoded (400).
    #[error("bad stream_ctl request: {0}")]
    BadRequest(crate::codec::DecodeError),
    /// A channel the server does not have (404).
    #[error("unknown channel {0:?}")]
    UnknownChannel(char),
    /// A cipher or transport the server does not offer (406).
    #[error("cipher or transport not offered")]
    NotOffered,
    /// The session table is full (503).
    #[error("too many sessions")]
    Full,
}

impl CtlError {
    /// The HTTP status for this refusal.
    pub fn status(self) -> u16 {
        match self {
            CtlError::BadRequest(_) => 400,
            CtlError::UnknownChannel(_) => 404,
            CtlError::NotOffered => 406,
            CtlError::Full => 503,
        }
    }
}

struct Inner {
    procs: ChannelProcs,
    table: SessionTable,
    stats: Arc<StreamStats>,
    config: StreamConfig,
}

/// A stream server: channels, sessions and counters; cheap to clone, `Send + Sync`.
///
/// Install its routes on an [`HttpServer`]: `/stream_ctl` behind enc_http
/// ([`install`](Self::install)) and `/stream/` for the upgrade.
#[derive(Clone)]
pub struct StreamServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for StreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamServer")
            .field("procs", &self.inner.procs)
            .field("table", &self.inner.table)
            .finish_non_exhaustive()
    }
}

impl StreamServer {
    /// A server offering the channels in `procs`.
    pub fn new(procs: ChannelProcs, config: StreamConfig) -> Self {
        let inner = Inner {
            table: SessionTable::new(config.max_sessions),
            procs,
            stats: Arc::new(StreamStats::default()),
            config,
        };
        StreamServer { inner: Arc::new(inner) }
    }

    /// The counters.
    pub fn stats(&self) -> StreamStatsSnapshot {
        self.sync_expired();
        self.inner.stats.snapshot()
    }

    /// The session table.
    pub fn table(&self) -> &SessionTable {
        &self.inner.table
    }

    fn sync_expired(&self) {
        let n = self.inner.table.take_expired();
        if n > 0 {
            StreamStats::add(&self.inner.stats.sessions_expired, n);
        }
    }

    /// Handles a decrypted stream_ctl body from a client (`client`: its authenticated key):
    /// creates a pending session and returns the answer to encrypt back.
    ///
    /// # Errors
    /// [`CtlError`], counted in `ctl_refused`.
    pub fn stream_ctl(
        &self,
        body: &[u8],
        client: Option<[u8; 32]>,
        now: Instant,
    ) -> Result<Vec<u8>, CtlError> {
        let r = self.create(body, client, now);
        self.sync_expired();
        match &r {
            Ok(_) => StreamStats::inc(&self.inner.stats.sessions_created),
            Err(e) => {
                tracing::debug!(%e, "stream_ctl refused");
                StreamStats::inc(&self.inner.stats.ctl_refused);
            }
        }
        r
    }

    fn create(
        &self,
        body: &[u8],
        client: Option<[u8; 32]>,
        now: Instant,
    ) -> Result<Vec<u8>, CtlError> {
        let cfg = &self.inner.config;
        let req = CtlRequest::decode(body).map_err(CtlError::BadRequest)?;
        if let Some(&c) = req.channels.iter().find(|&&c| !self.inner.procs.contains(c)) {
            return Err(CtlError::UnknownChannel(c as char));
        }
        let suite = match req.suite {
            Some(s) if cfg.suites.contains(&s) => s,
            Some(_) => return Err(CtlError::NotOffered),
            None => *cfg.suites.first().ok_or(CtlError::NotOffered)?,
        };
        if req.transport == TransportKind::Udp && cfg.udp_port == 0 {
            return Err(CtlError::NotOffered);
        }
        let mut id = [0u8; SESSION_ID_LEN];
        random_bytes(&mut id);
        let mut secret = [0u8; KEY_LEN];
        random_bytes(&mut secret);
        let params = SessionParams {
            id,
            suite,
            secret,
            channels: req.channels,
            transport: req.transport,
            limits: cfg.limits,
            udp_port: cfg.udp_port,
            client,
        };
        let answer = encode_answer(&params);
        let expires = now + cfg.limits.connect_timeout;
        self.inner.table.insert(params, now, expires).map_err(|_| CtlError::Full)?;
        Ok(answer)
    }

    /// Adds the `/stream/` upgrade route to `http`.
    pub fn install_stream_route(&self, http: &mut HttpServer) {
        let server = self.clone();
        http.add_proc(STREAM_PATH, move |_| Box::new(Attach { server: server.clone() }));
    }

    /// Adds `/stream_ctl` (behind enc_http) and `/stream/` to `http`.
    pub fn install(&self, http: &mut HttpServer, enc: &EncServer) {
        let server = self.clone();
        // A sealed request is at most 4 + 32 channel bytes plus the tag.
        let limits = RouteLimits::methods(&["POST"]).max_body(1024);
        enc.add_route(http, STREAM_CTL_PATH, limits, move |req| {
            match server.stream_ctl(&req.body, req.client, Instant::now()) {
                Ok(answer) => Response::new(200).body(answer),
                Err(e) => Response::text(e.status(), e.to_string()),
            }
        });
        self.install_stream_route(http);
    }

    /// Attaches a stream request; the error is the status to answer.
    fn attach(&self, ex: &Exchange<'_, '_>) -> Result<SessionParams, (u16, &'static str)> {
        let head = ex.request();
        if head.method != "GET" {
            return Err((405, "GET only"));
        }
        let upgrade = head.header("upgrade").is_some_and(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(UPGRADE_TOKEN.as_bytes()))
        });
        if !upgrade {
            return Err((426, "upgrade to dap-stream/1 required"));
        }
        let channels = head.path().strip_prefix(STREAM_PATH).unwrap_or("");
        let id = head
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("session_id=")))
            .and_then(unhex::<SESSION_ID_LEN>)
            .ok_or((400, "session_id missing or malformed"))?;
        let stats = &self.inner.stats;
        let params = match self.inner.table.attach(&id, Instant::now()) {
            Ok(p) => p,
            Err(AttachError::Unknown) => {
                self.sync_expired();
                StreamStats::inc(&stats.attach_unknown);
                return Err((404, "unknown or expired session"));
            }
            Err(AttachError::AlreadyAttached) => {
                StreamStats::inc(&stats.attach_twice);
                return Err((409, "session attached already"));
            }
        };
        if params.channels != channels.as_bytes() || params.transport != TransportKind::Http {
            // The session is spent either way: a client that lies about its channels does
            // not get a second try with the same id.
            self.inner.table.detach(&id);
            return Err((400, "channels or transport differ from stream_ctl"));
        }
        StreamStats::inc(&stats.sessions_attached);
        Ok(params)
    }
}

/// The `/stream/` route's per-request handler.
struct Attach {
    server: StreamServer,
}

impl ProcHandler for Attach {
    fn request_done(&mut self, ex: &mut Exchange<'_, '_>) {
        let params = match self.server.attach(ex) {
            Ok(p) => p,
            Err((status, why)) => return ex.respond(Response::text(status, why)),
        };
        let inner = &self.server.inner;
        let buf_in = ex.esocket().worker().limits().buf_in_cap;
        if params.limits.max_payload + packet::OVERHEAD > buf_in {
            tracing::error!(
                max_payload = params.limits.max_payload,
                buf_in,
                "stream max_payload does not fit the reactor's buf_in_cap; raise buf_in_cap"
            );
            inner.table.detach(&params.id);
            return ex.respond(Response::text(500, "server misconfigured"));
        }
        let info = SessionInfo { session_id: params.id, client: params.client };
        let mux = Mux::new(&params.channels, &inner.procs, info, params.limits.mux);
        let server = self.server.clone();
        let id = params.id;
        let on_end = Box::new(move || server.inner.table.detach(&id));
        let conn = StreamConn::server(params, mux, inner.stats.clone(), on_end);
        let resp =
            Response::new(101).header("Connection", "Upgrade").header("Upgrade", UPGRADE_TOKEN);
        ex.upgrade(resp, Box::new(conn));
    }
}
