//! The server side: stream_ctl, the session table, the `/stream/` upgrade route, and the
//! drain that ends every stream when the server shuts down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dap_reactor::{Esocket, EsocketHandle};
use parking_lot::{Condvar, Mutex};

use dap_net::enc::EncServer;
use dap_net::enc::cipher::{CipherSuite, KEY_LEN, random_bytes};
use dap_net::http::server::{Exchange, HttpServer, ProcHandler, RouteLimits};
use dap_net::http::{RequestHead, Response};

use crate::channel::{ChannelProcs, SessionInfo};
use crate::codec::packet;
use crate::mux::{Mux, ReassemblyBudget};
use crate::session::ctl::{CtlRequest, encode_answer};
use crate::session::{
    AttachError, SESSION_ID_LEN, SessionLimits, SessionParams, SessionTable, TransportKind,
    UdpRoute, unhex, url_names_channels,
};
use crate::stats::{StreamStats, StreamStatsSnapshot};
use crate::transport::http::{STREAM_PATH, StreamConn, UPGRADE_TOKEN};
use crate::transport::udp::{UdpCounters, UdpShared, UdpWorker};
use crate::udp::endpoint::EndpointConfig;
use crate::udp::packet::{CID_LEN, ConnectionId};

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
    /// The UDP port announced to clients; 0 announces the port [`StreamServer::serve_udp`]
    /// bound. UDP is offered once `serve_udp` has run.
    pub udp_port: u16,
    /// The host announced to clients for UDP (empty: the host they reached stream_ctl
    /// at); for a server behind NAT, a load balancer or a relay.
    pub udp_host: String,
    /// Each worker's UDP endpoint (its `worker` is set per worker; its connections get
    /// the sessions' idle timeout, keepalive and key-update interval).
    pub udp: EndpointConfig,
    /// Datagrams per GSO batch (64 at most).
    pub udp_gso_segments: usize,
    /// Send batches with GSO where the kernel has it (on); off, with `sendmmsg` (the
    /// fallback path, as on a kernel without GSO).
    pub udp_gso: bool,
    /// Let other processes bind the UDP port too (`SO_REUSEPORT` across processes; off: a
    /// port another process holds is refused with `AddrInUse`).
    pub udp_share_port: bool,
    /// Bytes all sessions together may hold in messages still being reassembled (256 MiB;
    /// see [`ReassemblyBudget`]): a stream whose unfinished message would take the total
    /// past it is closed with code 4 and frees what it held.
    pub max_reassembly: usize,
    /// In a cluster ([`StreamServer::share_sessions`]): a UDP worker's sessions being taken
    /// from the shared store at once (64): a datagram for a connection id no worker holds
    /// starts one (on a proc thread); past the bound such datagrams are dropped (counted).
    pub udp_cluster_lookups: usize,
    /// In a cluster: datagrams held for a connection id while its session is taken from
    /// the shared store (8); later ones are dropped (counted), as a lossy path would.
    pub udp_cluster_held: usize,
    /// In a cluster: lookups a UDP worker starts per second at most (10,000; bursts of as
    /// many); past it such datagrams are dropped (counted). 0: no bound.
    pub udp_cluster_lookup_rate: u32,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            limits: SessionLimits::default(),
            max_sessions: 65_536,
            suites: CipherSuite::ALL.to_vec(),
            udp_port: 0,
            udp_host: String::new(),
            udp: EndpointConfig::default(),
            udp_gso_segments: 64,
            udp_gso: true,
            udp_share_port: false,
            max_reassembly: 256 << 20,
            udp_cluster_lookups: 64,
            udp_cluster_held: 8,
            udp_cluster_lookup_rate: 10_000,
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
    /// The server is shutting down (503).
    #[error("the server is shutting down")]
    Draining,
}

impl CtlError {
    /// The HTTP status for this refusal.
    pub fn status(self) -> u16 {
        match self {
            CtlError::BadRequest(_) => 400,
            CtlError::UnknownChannel(_) => 404,
            CtlError::NotOffered => 406,
            CtlError::Full | CtlError::Draining => 503,
        }
    }
}

struct Inner {
    procs: ChannelProcs,
    table: SessionTable,
    stats: Arc<StreamStats>,
    config: StreamConfig,
    drain: DrainState,
    /// The UDP transport, once [`StreamServer::serve_udp`] ran.
    udp: OnceLock<Arc<UdpShared>>,
    /// How long sessions waited from stream_ctl until their stream attached.
    setup_latency: dap_net::histogram::LatencyHistogram,
    /// Unfinished messages' bytes, over every session.
    reassembly: Arc<ReassemblyBudget>,
    /// The cluster's shared sessions, once set ([`StreamServer::share_sessions`]).
    shared: OnceLock<Arc<dyn SharedSessions>>,
    /// Whether `/stream_ctl` was installed (its thread chosen by `shared`).
    routed: std::sync::atomic::AtomicBool,
}

/// Sessions shared with the other nodes of a cluster: a session stream_ctl made on one node
/// attaches (over HTTP or UDP) on any. Best effort: when the shared store cannot be
/// reached, each node carries on with its own sessions.
///
/// A session is stored under a 16-byte name: its session id for transport HTTP (the attach
/// request names it), and for transport UDP its connection id's [`udp_share_name`] (the
/// first datagram names only that).
pub trait SharedSessions: Send + Sync + 'static {
    /// A session this node just made, before its client hears of it (called on a proc
    /// thread; may block briefly): `blob` is opaque, for [`take`](Self::take) on another
    /// node, and secret. It expires after `ttl` unless taken. True if it was stored; false
    /// if the store did not answer or already holds `name` (the session then stays with
    /// this node).
    fn publish(&self, name: &[u8; SESSION_ID_LEN], blob: &[u8], ttl: Duration) -> bool;
    /// Takes a session, atomically, so that no other node can: every attach of a shared
    /// session does, the node that made it included (called on a proc thread; may block
    /// briefly).
    fn take(&self, name: &[u8; SESSION_ID_LEN]) -> Taken;
    /// A tag over a UDP connection id's first [`CID_TAGGED`] bytes, under a key every node
    /// of the cluster holds and nobody else does (called on reactor workers: cheap, never
    /// blocking). Nodes of a cluster write it into the rest of the ids they make, and
    /// take from the store only for ids that carry it: one forged id in 65,536 reaches the
    /// store.
    fn cid_tag(&self, body: &[u8; CID_TAGGED]) -> [u8; CID_LEN - CID_TAGGED];
}

/// The bytes of a UDP connection id a cluster's tag covers ([`SharedSessions::cid_tag`]):
/// the worker byte and five from the CSPRNG; the last two are the tag.
pub const CID_TAGGED: usize = 6;

/// The name a UDP session is shared under ([`SharedSessions`]): its connection id, marked
/// so that it cannot be taken for a session id.
pub fn udp_share_name(cid: &[u8; CID_LEN]) -> [u8; SESSION_ID_LEN] {
    let mut n = [0u8; SESSION_ID_LEN];
    n[..8].copy_from_slice(UDP_SHARE_MARK);
    n[8..].copy_from_slice(cid);
    n
}

/// The first bytes of every [`udp_share_name`].
const UDP_SHARE_MARK: &[u8; 8] = b"dap-udp:";

fn is_udp_share_name(id: &[u8; SESSION_ID_LEN]) -> bool {
    id.starts_with(UDP_SHARE_MARK)
}

/// What [`SharedSessions::take`] found.
#[derive(Debug)]
pub enum Taken {
    /// The session, now removed from the shared store: this node attaches it.
    Found(zeroize::Zeroizing<Vec<u8>>),
    /// Not there: never published, expired, or taken by another node already.
    Absent,
    /// The shared store did not answer: the node decides alone.
    Unreachable,
}

/// The server's side of a drain, shared with its streams.
#[derive(Default)]
struct DrainState {
    /// Streams take no more messages (set first, before any stream is told to go away).
    intake_stopped: Arc<AtomicBool>,
    /// Streams go away (set once every stream has seen `intake_stopped`).
    going_away: AtomicBool,
    /// Open streams by session id, with their channel count. Bounded by the session table:
    /// a stream opens only for a session the table holds, and leaves here when it ends.
    live: Mutex<HashMap<[u8; SESSION_ID_LEN], (EsocketHandle, usize)>>,
    /// Signalled when a stream leaves `live` (or a UDP connection ends).
    left: Condvar,
    /// Open UDP connections (they drain through their workers, not `live`).
    udp_live: std::sync::atomic::AtomicUsize,
}

/// What [`StreamServer::drain`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Streams open when the drain began.
    pub streams: usize,
    /// Streams still open when the timeout passed. Each over HTTP was then
    /// [cut off](StreamConn::cut_off): what was still queued for it discarded (counted in
    /// `messages_unsent`) and a CLOSE sealed after what it had been sent, saying how many.
    pub left_open: usize,
    /// Messages discarded unsent by those cut-offs (a pub/sub MESSAGE among them was
    /// acknowledged to its publisher).
    pub messages_unsent: u64,
}

/// After the timeout, how long a drain waits for the workers to cut off the streams still
/// open (only a worker that is stuck makes it wait that long).
const CUT_OFF_WAIT: Duration = Duration::from_secs(1);

/// Sends one unit on its channel when dropped: whether the closure holding it ran or was
/// dropped unrun (its esocket gone), the waiter hears of it.
struct Ack(std::sync::mpsc::Sender<()>);

impl Drop for Ack {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Posts `f` to `h`'s worker, waiting for room in a full inbox until `deadline`. Returns
/// whether it was posted (a closure for an esocket that is gone counts as posted: it is
/// dropped there).
fn post_until(
    h: EsocketHandle,
    f: impl FnOnce(&mut Esocket<'_>) + Send + 'static,
    deadline: Instant,
) -> bool {
    h.exec_timeout(f, deadline.saturating_duration_since(Instant::now())).is_ok()
}

/// Runs `f` on each esocket of `handles` (on its worker) and adds up what it returns, of
/// those whose worker answered within [`CUT_OFF_WAIT`].
fn sum_on_workers(
    handles: &[EsocketHandle],
    f: impl Fn(&mut Esocket<'_>) -> u64 + Clone + Send + 'static,
) -> u64 {
    if handles.is_empty() {
        return 0;
    }
    let deadline = Instant::now() + CUT_OFF_WAIT;
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let mut posted = 0usize;
    for &h in handles {
        let (tx, f) = (tx.clone(), f.clone());
        let run = move |es: &mut Esocket<'_>| {
            let _ = tx.send(f(es));
        };
        if post_until(h, run, deadline) {
            posted += 1;
        }
    }
    drop(tx);
    let mut sum = 0;
    for _ in 0..posted {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(n) => sum += n,
            Err(_) => break,
        }
    }
    sum
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
            reassembly: ReassemblyBudget::new(config.max_reassembly),
            table: SessionTable::new(config.max_sessions),
            procs,
            stats: Arc::new(StreamStats::default()),
            config,
            drain: DrainState::default(),
            udp: OnceLock::new(),
            setup_latency: Default::default(),
            shared: OnceLock::new(),
            routed: std::sync::atomic::AtomicBool::new(false),
        };
        StreamServer { inner: Arc::new(inner) }
    }

    /// Shares sessions with the other nodes of a cluster from now on (once; a second call
    /// is ignored): sessions stream_ctl makes are published, and an attach naming a session
    /// this node does not hold (an HTTP attach's session id, or a UDP datagram's connection
    /// id carrying the cluster's tag) takes it from the others, on a proc thread (the UDP
    /// worker holds the datagrams meanwhile, up to `udp_cluster_held`). A session made here
    /// is taken from the store too before it attaches here, so that it attaches once in the
    /// cluster. Call it before [`install`](Self::install): `/stream_ctl` then runs on proc
    /// threads, as publishing may block.
    pub fn share_sessions(&self, shared: Arc<dyn SharedSessions>) {
        if self.inner.routed.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                "StreamServer::share_sessions after install: /stream_ctl may run on the \
                 worker and block it while publishing sessions"
            );
        }
        let _ = self.inner.shared.set(shared);
    }

    /// The bytes held in unfinished messages over every session, and their bound.
    pub fn reassembly_budget(&self) -> &Arc<ReassemblyBudget> {
        &self.inner.reassembly
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

    /// Streams open now.
    pub fn live_streams(&self) -> usize {
        self.inner.drain.live.lock().len()
    }

    /// Channels of the streams open now.
    pub fn live_channels(&self) -> usize {
        self.inner.drain.live.lock().values().map(|v| v.1).sum()
    }

    /// Streams open now on each worker, indexed by worker (`workers` entries; streams on a
    /// worker at or past `workers` are not counted).
    pub fn live_streams_by_worker(&self, workers: usize) -> Vec<u64> {
        let mut out = vec![0u64; workers];
        for (h, _) in self.inner.drain.live.lock().values() {
            if let Some(n) = out.get_mut(h.worker_index()) {
                *n += 1;
            }
        }
        out
    }

    /// Whether a drain has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.drain.intake_stopped.load(Ordering::SeqCst)
    }

    /// Ends every stream for a shutdown, waiting up to `timeout`. Call it from a thread
    /// that is not one of the reactor's workers (it blocks).
    ///
    /// 1. New sessions are refused (stream_ctl and attach answer 503) and every stream
    ///    stops taking messages from its peer (credit still counts, so output can go on).
    ///    The drain waits until each stream's worker has seen this, so that no handler is
    ///    still acting on an earlier message anywhere: after this point no channel writes
    ///    anything new through another session's handle (a pub/sub publish, say).
    /// 2. Every stream [goes away](StreamConn::go_away): it sends what its channels have
    ///    queued, then a CLOSE with code `GoingAway`, and closes.
    /// 3. The drain waits until every stream has ended, or `timeout` passes.
    /// 4. Every stream still open then is [cut off](StreamConn::cut_off): the messages
    ///    still queued for it are discarded and counted, and its CLOSE says how many
    ///    (`docs/PROTOCOL.md` §10). The drain waits up to a second more for the workers to
    ///    do it, and logs the streams and messages at `warn`.
    ///
    /// Calling it again repeats the steps for whatever is still open.
    pub fn drain(&self, timeout: Duration) -> DrainReport {
        let deadline = Instant::now() + timeout;
        let d = &self.inner.drain;
        d.intake_stopped.store(true, Ordering::SeqCst);
        let live: Vec<EsocketHandle> = d.live.lock().values().map(|v| v.0).collect();
        let udp_live = d.udp_live.load(Ordering::SeqCst);
        let report = DrainReport { streams: live.len() + udp_live, ..DrainReport::default() };
        tracing::info!(streams = live.len(), "stream drain: intake stopped");
        // Step 1's barrier: a closure on each stream's worker runs after whatever that
        // worker was doing when intake stopped, and stops the stream's mux from handing
        // on messages it already holds (a paused channel's inbox): from the barrier on, no
        // peer message reaches a handler, so none can reach a session going away.
        let (tx, rx) = std::sync::mpsc::channel();
        let mut posted = 0usize;
        for &h in &live {
            let ack = Ack(tx.clone());
            let stop = move |es: &mut Esocket<'_>| {
                crate::transport::http::with_stream_conn(es, |c, _| c.mux().stop_intake());
                drop(ack);
            };
            if post_until(h, stop, deadline) {
                posted += 1;
            }
        }
        if let Some(u) = self.inner.udp.get() {
            for &h in u.worker_handles() {
                let ack = Ack(tx.clone());
                let stop = move |es: &mut Esocket<'_>| {
                    es.with_handler::<UdpWorker, _>(|w, _| w.stop_intake());
                    drop(ack);
                };
                if post_until(h, stop, deadline) {
                    posted += 1;
                }
            }
        }
        drop(tx);
        for _ in 0..posted {
            let left = deadline.saturating_duration_since(Instant::now());
            if rx.recv_timeout(left).is_err() {
                break;
            }
        }
        d.going_away.store(true, Ordering::SeqCst);
        // Streams that open from here on go away by themselves (see `on_open`).
        let live: Vec<EsocketHandle> = d.live.lock().values().map(|v| v.0).collect();
        for h in live {
            let go = |es: &mut Esocket<'_>| {
                crate::transport::http::with_stream_conn(es, |c, es| c.go_away(es));
            };
            post_until(h, go, deadline);
        }
        // UDP connections: each worker tells its own (and refuses new ones: draining).
        if let Some(u) = self.inner.udp.get() {
            for &h in u.worker_handles() {
                let go = |es: &mut Esocket<'_>| {
                    es.with_handler::<UdpWorker, _>(|w, es| w.go_away(es));
                };
                post_until(h, go, deadline);
            }
        }
        let mut g = d.live.lock();
        let busy = |g: &HashMap<_, _>| !g.is_empty() || d.udp_live.load(Ordering::SeqCst) > 0;
        while busy(&g) && !d.left.wait_until(&mut g, deadline).timed_out() {}
        let left_open = g.len() + d.udp_live.load(Ordering::SeqCst);
        let late: Vec<EsocketHandle> = g.values().map(|v| v.0).collect();
        let udp_late = d.udp_live.load(Ordering::SeqCst) > 0;
        drop(g);
        let mut messages_unsent = Self::cut_off(late);
        if udp_late && let Some(u) = self.inner.udp.get() {
            messages_unsent += Self::cut_off_udp(u.worker_handles());
        }
        if left_open > 0 {
            tracing::warn!(
                left_open,
                messages_unsent,
                "stream drain: grace period over; streams still open were cut off"
            );
        }
        tracing::info!(left_open, "stream drain: done");
        DrainReport { left_open, messages_unsent, ..report }
    }

    /// Cuts off each stream of `live` on its worker; returns the messages they discarded
    /// (of those whose worker answered within [`CUT_OFF_WAIT`]).
    fn cut_off(live: Vec<EsocketHandle>) -> u64 {
        sum_on_workers(&live, |es| {
            let n = crate::transport::http::with_stream_conn(es, |c, es| c.cut_off(es));
            n.flatten().unwrap_or(0) as u64
        })
    }

    /// Cuts off the UDP connections still open, on each UDP worker; returns the messages
    /// they discarded (of the workers that answered within [`CUT_OFF_WAIT`]).
    fn cut_off_udp(workers: &[EsocketHandle]) -> u64 {
        sum_on_workers(workers, |es| {
            es.with_handler::<UdpWorker, _>(|w, es| w.cut_off(es)).unwrap_or(0)
        })
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
        let r = if self.is_draining() {
            Err(CtlError::Draining)
        } else {
            self.create(body, client, now)
        };
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
        let udp = self.inner.udp.get();
        if req.transport == TransportKind::Udp && udp.is_none() {
            return Err(CtlError::NotOffered);
        }
        let mut id = [0u8; SESSION_ID_LEN];
        random_bytes(&mut id);
        let mut secret = [0u8; KEY_LEN];
        random_bytes(&mut secret);
        let expires = now + cfg.limits.connect_timeout;
        let shared = self.inner.shared.get();
        let (udp_port, route) = match udp {
            Some(u) if req.transport == TransportKind::Udp => {
                let tag = shared.map(|s| &**s);
                let cid =
                    u.reserve(id, now, expires, cfg.max_sessions, tag).ok_or(CtlError::Full)?;
                let port = if cfg.udp_port != 0 { cfg.udp_port } else { u.port };
                (port, Some(UdpRoute { cid: cid.0, host: cfg.udp_host.clone() }))
            }
            Some(u) => (if cfg.udp_port != 0 { cfg.udp_port } else { u.port }, None),
            None => (0, None),
        };
        let params = SessionParams {
            unreliable: req.unreliable,
            udp: route,
            id,
            suite,
            secret,
            channels: req.channels,
            transport: req.transport,
            limits: cfg.limits,
            udp_port,
            client,
        };
        let answer = encode_answer(&params);
        let cid = params.udp.as_ref().map(|r| r.cid);
        if self.inner.table.insert(params, now, expires).is_err() {
            if let (Some(u), Some(cid)) = (udp, cid) {
                u.take(&ConnectionId(cid));
            }
            return Err(CtlError::Full);
        }
        if let Some(s) = shared {
            // HTTP sessions are shared under their id, UDP ones under their connection id.
            let name = cid.map_or(id, |c| udp_share_name(&c));
            if s.publish(&name, &shared_blob(client, &answer), cfg.limits.connect_timeout) {
                match (udp, cid) {
                    (Some(u), Some(cid)) => u.mark_shared(&ConnectionId(cid)),
                    _ => self.inner.table.mark_shared(&id),
                }
            }
        }
        Ok(answer)
    }

    /// Serves the UDP transport on `addr` (port 0: an ephemeral one): one `SO_REUSEPORT`
    /// socket per worker of `reactor`, each with its endpoint. Returns the address bound.
    /// From then on stream_ctl offers transport UDP.
    ///
    /// # Errors
    /// Binding or installing a socket failed (those bound are closed again), or UDP is
    /// served already.
    pub fn serve_udp(
        &self,
        reactor: &dap_reactor::Reactor,
        addr: SocketAddr,
    ) -> std::io::Result<SocketAddr> {
        if self.inner.udp.get().is_some() {
            return Err(std::io::Error::other("UDP is served already"));
        }
        let cfg = &self.inner.config;
        if !cfg.udp_share_port {
            dap_net::server::udp_port_free(addr)?;
        }
        let mut bound = addr;
        let mut handles: Vec<EsocketHandle> = Vec::new();
        let mut shared: Option<Arc<UdpShared>> = None;
        let fail = |handles: &Vec<EsocketHandle>, e: std::io::Error| {
            for h in handles {
                let _ = h.close();
            }
            Err(e)
        };
        let mut conn = cfg.udp.connection;
        conn.idle_timeout = cfg.limits.idle_timeout;
        conn.keepalive = cfg.limits.keepalive;
        conn.rekey_packets = cfg.limits.rekey_packets;
        for (i, worker) in reactor.workers().iter().enumerate() {
            let socket = match dap_net::server::bind_udp_socket(bound, true) {
                Ok(s) => s,
                Err(e) => return fail(&handles, e),
            };
            bound = socket.local_addr()?;
            let sh = shared.get_or_insert_with(|| Arc::new(UdpShared::new(bound.port()))).clone();
            let config = EndpointConfig { worker: i as u8, connection: conn, ..cfg.udp };
            let server = self.clone();
            let gso = cfg.udp_gso_segments;
            let gso_on = cfg.udp_gso;
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let posted = worker.exec(move |w| {
                let handler = UdpWorker::new(server, sh, config, gso);
                let opts = dap_reactor::UdpOptions::default().dont_fragment(true).gso(gso_on);
                let _ = tx.send(w.add_udp_with(socket, opts, Box::new(handler)));
            });
            let added = match posted {
                Ok(()) => rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| {
                    Err(std::io::Error::other("worker did not take its socket"))
                }),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            match added {
                Ok(h) => handles.push(h),
                Err(e) => return fail(&handles, e),
            }
        }
        let shared = shared.ok_or_else(|| std::io::Error::other("the reactor has no workers"))?;
        shared.set_workers(handles);
        let _ = self.inner.udp.set(shared);
        Ok(bound)
    }

    /// The UDP transport's counters (`None` until [`serve_udp`](Self::serve_udp)).
    pub fn udp_counters(&self) -> Option<&UdpCounters> {
        self.inner.udp.get().map(|u| &u.counters)
    }

    /// What the UDP connections did, all workers together, as each worker last published
    /// it (once a second; `None` until [`serve_udp`](Self::serve_udp)).
    pub fn udp_conn_stats(&self) -> Option<crate::transport::udp::UdpConnStats> {
        self.inner.udp.get().map(|u| u.conn_stats())
    }

    /// How long sessions took from stream_ctl to their stream attaching (the client's
    /// set-up as the server sees it, over HTTP and UDP).
    pub fn setup_latency(&self) -> dap_net::histogram::HistogramSnapshot {
        self.inner.setup_latency.snapshot()
    }

    /// The channel registry (its ids and per-channel counters: [`ChannelProcs::stats`]).
    pub fn procs(&self) -> &ChannelProcs {
        &self.inner.procs
    }

    /// A UDP session's first datagram arrived: attaches it.
    pub(crate) fn udp_attach(
        &self,
        id: &[u8; SESSION_ID_LEN],
        now: Instant,
    ) -> Result<SessionParams, AttachError> {
        let stats = &self.inner.stats;
        match self.inner.table.attach_timed(id, now) {
            Ok((p, waited)) if p.transport == TransportKind::Udp => {
                StreamStats::inc(&stats.sessions_attached);
                self.inner.setup_latency.observe(waited);
                Ok(p)
            }
            Ok(_) => {
                self.inner.table.detach(id);
                Err(AttachError::Unknown)
            }
            Err(e) => {
                self.sync_expired();
                StreamStats::inc(&stats.attach_unknown);
                Err(e)
            }
        }
    }

    /// A UDP session ended.
    pub(crate) fn udp_detach(&self, id: &[u8; SESSION_ID_LEN]) {
        self.inner.table.detach(id);
    }

    /// A UDP connection opened.
    pub(crate) fn udp_opened(&self) {
        self.inner.drain.udp_live.fetch_add(1, Ordering::SeqCst);
    }

    /// A UDP connection ended: adds what its session's mux and the connection counted
    /// (refusals, timeouts, window growths, violations) to the stream statistics (the HTTP
    /// transport counts its own as they happen).
    pub(crate) fn note_udp_end(
        &self,
        c: &crate::mux::MuxCounters,
        conn: &crate::udp::connection::ConnStats,
    ) {
        let s = &self.inner.stats;
        crate::stats::StreamStats::add(&s.over_budget, c.reassembly_refused);
        crate::stats::StreamStats::add(&s.partial_timeouts, c.partial_timeouts);
        crate::stats::StreamStats::add(&s.window_growths, c.window_growths);
        // Violations, counted as over HTTP.
        crate::stats::StreamStats::add(&s.unknown_channel, conn.unknown_channel);
        crate::stats::StreamStats::add(&s.decode_errors, conn.decode_errors);
        crate::stats::StreamStats::add(&s.oversize_messages, conn.oversize_messages);
        crate::stats::StreamStats::add(&s.protocol_errors, conn.protocol_errors);
    }

    /// Counts UDP streams cut off at the end of a shutdown's grace period.
    pub(crate) fn note_cut_off(&self, streams: u64, unsent: u64) {
        let s = &self.inner.stats;
        StreamStats::add(&s.shutdown_cut_off, streams);
        StreamStats::add(&s.shutdown_unsent_messages, unsent);
    }

    pub(crate) fn udp_closed(&self) {
        let d = &self.inner.drain;
        let _g = d.live.lock();
        d.udp_live.fetch_sub(1, Ordering::SeqCst);
        d.left.notify_all();
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
        let handler = move |req: &dap_net::enc::EncRequest| match server.stream_ctl(
            &req.body,
            req.client,
            Instant::now(),
        ) {
            Ok(answer) => Response::new(200).body(answer),
            Err(e) => Response::text(e.status(), e.to_string()),
        };
        self.inner.routed.store(true, std::sync::atomic::Ordering::Relaxed);
        if self.inner.shared.get().is_some() {
            // Publishing the session to the cluster may block: a proc thread.
            enc.add_route(http, STREAM_CTL_PATH, limits, handler);
        } else {
            // Cheap and non-blocking: on the worker when the handshakes are.
            enc.add_cheap_route(http, STREAM_CTL_PATH, limits, handler);
        }
        self.install_stream_route(http);
    }

    /// Loads a session another node made (its [`shared_blob`]) into this node's table:
    /// for transport HTTP (`cid` `None`), or for transport UDP on connection id `cid`.
    /// False if the blob does not decode, is for another transport or id, or the table is
    /// full.
    pub(crate) fn load_shared(
        &self,
        blob: &[u8],
        now: Instant,
        cid: Option<[u8; CID_LEN]>,
    ) -> Option<[u8; SESSION_ID_LEN]> {
        let (client, answer) = read_shared_blob(blob)?;
        let cfg = &self.inner.config;
        let wire = crate::session::ctl::decode_answer(answer, cfg.limits.mux).ok()?;
        let made_for = match (wire.transport, &wire.udp) {
            (TransportKind::Udp, Some(r)) => Some(r.cid),
            (TransportKind::Http, None) => None,
            _ => return None,
        };
        if made_for != cid {
            return None;
        }
        // The answer's limits are what the client was told; the rest are this node's.
        let mut limits = cfg.limits;
        limits.mux = wire.limits.mux;
        limits.max_payload = wire.limits.max_payload;
        limits.keepalive = wire.limits.keepalive;
        limits.idle_timeout = wire.limits.idle_timeout;
        limits.connect_timeout = wire.limits.connect_timeout;
        let params = SessionParams { limits, client, ..wire };
        let expires = now + limits.connect_timeout;
        let id = params.id;
        self.inner.table.insert(params, now, expires).ok().map(|_| id)
    }

    /// The settings.
    pub(crate) fn config(&self) -> &StreamConfig {
        &self.inner.config
    }

    /// The cluster's shared sessions, if set.
    pub(crate) fn shared_store(&self) -> Option<Arc<dyn SharedSessions>> {
        self.inner.shared.get().cloned()
    }

    /// A UDP session made here was attached by another node first: spent here.
    pub(crate) fn udp_taken_elsewhere(&self, id: &[u8; SESSION_ID_LEN]) {
        self.inner.table.detach(id);
        StreamStats::inc(&self.inner.stats.attach_twice);
    }

    /// Attaches a stream request; the error is the status to answer, or `NotHere` for a
    /// session this node does not hold that another node of the cluster may.
    fn attach(&self, ex: &Exchange<'_, '_>, fetched: bool) -> Result<SessionParams, AttachRefusal> {
        let target = parse_stream_target(ex.request())?;
        if self.is_draining() {
            return Err((503, "the server is shutting down").into());
        }
        let channels = target.channels;
        let id = target.session_id.ok_or((400, "session_id missing, given twice or malformed"))?;
        let stats = &self.inner.stats;
        let (params, waited, shared) = match self.inner.table.attach_shared(&id, Instant::now()) {
            Ok(p) => p,
            Err(AttachError::Unknown) if !fetched && self.inner.shared.get().is_some() => {
                return Err(AttachRefusal::NotHere(id));
            }
            Err(AttachError::Unknown) => {
                self.sync_expired();
                StreamStats::inc(&stats.attach_unknown);
                return Err((404, "unknown or expired session").into());
            }
            Err(AttachError::AlreadyAttached) => {
                StreamStats::inc(&stats.attach_twice);
                return Err((409, "session attached already").into());
            }
        };
        if !url_names_channels(channels, &params.channels)
            || params.transport != TransportKind::Http
        {
            // The session is spent either way: a client that lies about its channels does
            // not get a second try with the same id.
            self.inner.table.detach(&id);
            return Err((400, "channels or transport differ from stream_ctl").into());
        }
        if shared && !fetched {
            // Published: the cluster may attach it elsewhere; claim it there first.
            return Err(AttachRefusal::Claim(Box::new(params), waited));
        }
        self.attached(waited);
        Ok(params)
    }

    /// Counts an attach that happened, `waited` after its stream_ctl.
    fn attached(&self, waited: Duration) {
        StreamStats::inc(&self.inner.stats.sessions_attached);
        self.inner.setup_latency.observe(waited);
    }
}

/// Why an attach did not happen.
enum AttachRefusal {
    /// Answer this status and reason.
    Status(u16, &'static str),
    /// The session is not here; another node of the cluster may hold it.
    NotHere([u8; SESSION_ID_LEN]),
    /// The session is here and was published: take it from the cluster first, so that
    /// no other node attaches it too.
    Claim(Box<SessionParams>, Duration),
}

impl From<(u16, &'static str)> for AttachRefusal {
    fn from((status, why): (u16, &'static str)) -> Self {
        AttachRefusal::Status(status, why)
    }
}

/// What [`SharedSessions::publish`] stores: 0, or 1 and the client's key, then the
/// stream_ctl answer (§5) the client was given.
fn shared_blob(client: Option<[u8; 32]>, answer: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(33 + answer.len());
    match client {
        Some(k) => {
            b.push(1);
            b.extend_from_slice(&k);
        }
        None => b.push(0),
    }
    b.extend_from_slice(answer);
    b
}

/// Reads [`shared_blob`]'s form.
fn read_shared_blob(b: &[u8]) -> Option<(Option<[u8; 32]>, &[u8])> {
    match b.split_first()? {
        (0, answer) => Some((None, answer)),
        (1, rest) => {
            let (k, answer) = rest.split_first_chunk::<32>()?;
            Some((Some(*k), answer))
        }
        _ => None,
    }
}

/// What a `/stream/` request names: read by [`parse_stream_target`].
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamTarget<'a> {
    /// The `<channels>` segment as written (percent-encoded or raw).
    pub channels: &'a str,
    /// The `session_id` of the query, when it is there once and 32 lowercase hex digits.
    pub session_id: Option<[u8; SESSION_ID_LEN]>,
}

/// Reads a `/stream/<channels>?session_id=<hex>` request head: the method must be `GET` (else
/// 405) and `Upgrade` must name the stream protocol (else 426). Public for the fuzz targets
/// only.
///
/// # Errors
/// The status and reason to answer.
#[doc(hidden)]
pub fn parse_stream_target(head: &RequestHead) -> Result<StreamTarget<'_>, (u16, &'static str)> {
    if head.method() != "GET" {
        return Err((405, "GET only"));
    }
    let upgrade = head.header("upgrade").is_some_and(|v| {
        v.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(UPGRADE_TOKEN.as_bytes()))
    });
    if !upgrade {
        return Err((426, "upgrade to dap-stream/2 required"));
    }
    let channels = head.path().strip_prefix(STREAM_PATH).unwrap_or("");
    // Exactly one session_id, in lowercase hex (§6): a second one, or uppercase, could be
    // read differently by a proxy or a log in front.
    let mut ids = head
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.strip_prefix("session_id="));
    let session_id = match (ids.next(), ids.next()) {
        (Some(one), None) => unhex::<SESSION_ID_LEN>(one),
        _ => None,
    };
    Ok(StreamTarget { channels, session_id })
}

/// The `/stream/` route's per-request handler.
struct Attach {
    server: StreamServer,
}

impl Attach {
    /// Takes session `id` from the cluster on a proc thread, then attaches again here.
    fn take_from_cluster(&self, ex: &mut Exchange<'_, '_>, id: [u8; SESSION_ID_LEN]) {
        let Some(shared) = self.server.inner.shared.get().cloned() else { return };
        if is_udp_share_name(&id) {
            // Not a session id: the name a UDP session is shared under, which an HTTP
            // attach must not take from its client: answered as unknown.
            return self.attach(ex, true);
        }
        let server = self.server.clone();
        let work = move || match shared.take(&id) {
            Taken::Found(blob) => server.load_shared(&blob, Instant::now(), None).map(|_| ()),
            Taken::Absent | Taken::Unreachable => None,
        };
        let server = self.server.clone();
        let then = move |ex: &mut Exchange<'_, '_>, _: Option<()>| {
            Attach { server }.attach(ex, true);
        };
        if ex.defer(work, then).is_err() {
            ex.respond(Response::text(503, "busy, try again"));
        }
    }

    /// A session made here and published: taken from the cluster (on a proc thread) before
    /// it attaches, so that it attaches once in the cluster. Another node that took it
    /// first wins: here it is refused as attached already. Without an answer from the
    /// cluster, the node attaches it alone.
    fn claim_then_upgrade(
        &self,
        ex: &mut Exchange<'_, '_>,
        params: SessionParams,
        waited: Duration,
    ) {
        let Some(shared) = self.server.inner.shared.get().cloned() else { return };
        let id = params.id;
        let work = move || !matches!(shared.take(&id), Taken::Absent);
        let server = self.server.clone();
        let then = move |ex: &mut Exchange<'_, '_>, ours: bool| {
            if ours {
                server.attached(waited);
                Attach { server }.upgrade(ex, params);
            } else {
                server.inner.table.detach(&id);
                StreamStats::inc(&server.inner.stats.attach_twice);
                ex.respond(Response::text(409, "session attached already"));
            }
        };
        if ex.defer(work, then).is_err() {
            self.server.inner.table.detach(&id);
            ex.respond(Response::text(503, "busy, try again"));
        }
    }

    fn attach(&self, ex: &mut Exchange<'_, '_>, fetched: bool) {
        match self.server.attach(ex, fetched) {
            Ok(params) => self.upgrade(ex, params),
            Err(AttachRefusal::Status(status, why)) => ex.respond(Response::text(status, why)),
            Err(AttachRefusal::NotHere(id)) => self.take_from_cluster(ex, id),
            Err(AttachRefusal::Claim(params, waited)) => {
                self.claim_then_upgrade(ex, *params, waited)
            }
        }
    }

    /// Answers `101` and hands the connection to the session's stream.
    fn upgrade(&self, ex: &mut Exchange<'_, '_>, params: SessionParams) {
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
        let mut mux = Mux::new(&params.channels, &inner.procs, info, params.limits.mux);
        mux.set_reassembly_budget(inner.reassembly.clone());
        let server = self.server.clone();
        let id = params.id;
        let on_end = Box::new(move || {
            let d = &server.inner.drain;
            if d.live.lock().remove(&id).is_some() {
                d.left.notify_all();
            }
            server.inner.table.detach(&id);
        });
        let server = self.server.clone();
        let channels = params.channels.len();
        let on_open = Box::new(move |h: EsocketHandle| {
            // Registered before `going_away` is read: a drain either finds this stream in
            // `live` or this stream finds `going_away` set.
            let d = &server.inner.drain;
            d.live.lock().insert(id, (h, channels));
            d.going_away.load(Ordering::SeqCst)
        });
        let conn = StreamConn::server(params, mux, inner.stats.clone(), on_end)
            .with_drain(inner.drain.intake_stopped.clone(), on_open);
        let resp =
            Response::new(101).header("Connection", "Upgrade").header("Upgrade", UPGRADE_TOKEN);
        ex.upgrade(resp, Box::new(conn));
    }
}

impl ProcHandler for Attach {
    fn request_done(&mut self, ex: &mut Exchange<'_, '_>) {
        self.attach(ex, false);
    }
}
