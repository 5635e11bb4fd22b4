//! [`Node`]: a running dap node, and [`NodeBuilder`], the one way to make one.
//!
//! A node is everything dapd is: the reactor and its paired proc pool, the HTTP listener
//! with `/enc_init`, `/stream_ctl`, `/stream/`, `/health` and `/metrics`, the UDP transport,
//! TLS and DNS when configured, and the drain that stops it; with the application's own
//! channels beside (or instead of) the built-in `'E'` and `'P'`. The builder starts from
//! the embedded default ([`Node::builder`]) or from a loaded file ([`Node::from_config`]):
//! one code path, so a key set by a method and the same key read from a file make the same
//! node.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dap_net::dns::{DnsServer, ServerConfig as DnsConfig, Zone};
use dap_net::enc::allow_list::AllowList;
use dap_net::enc::keys::{PUBLIC_KEY_LEN, public_key_to_base64};
use dap_net::enc::{ClientAuth, EncConfig, EncServer, NodeKey};
use dap_net::http::Response;
use dap_net::http::server::{HttpConfig, HttpServer, RouteLimits};
use dap_net::limit::{ConnLimiter, ConnLimits, RateLimit, SourcePrefixes};
use dap_net::server::{AccessList, Server};
use dap_proc::ProcPool;
use dap_reactor::{Limits, ListenerMode, Reactor};
use dap_stream::pubsub::{self, Broker, BrokerConfig};
use dap_stream::session::SessionLimits;
use dap_stream::udp::congestion::ControllerConfig;
use dap_stream::udp::endpoint::EndpointConfig;
use dap_stream::{
    ChannelHandler, ChannelProcs, ChannelStatsSnapshot, MuxConfig, SessionInfo, StreamConfig,
    StreamServer, StreamStatsSnapshot,
};

use crate::cluster::{Cluster, ClusterSettings};
use crate::config::{
    ClientAuthSetting, Config, ConfigError, DnsRecord, ListenerModeSetting, LogFormat,
};
use crate::metrics::{self, Sources};

/// The health route.
pub const HEALTH_PATH: &str = "/health";
/// The metrics route.
pub const METRICS_PATH: &str = "/metrics";
/// The member list of the node's cluster (JSON), when `[cluster]` is on.
pub const CLUSTER_PATH: &str = "/cluster";

/// Why the node did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file or value named by a key could not be used (node key, allow list, TLS
    /// certificate, DNS zone).
    #[error("{key}: {problem}")]
    Setting {
        /// The key.
        key: &'static str,
        /// What went wrong.
        problem: String,
    },
    /// The reactor or the proc pool could not start.
    #[error("cannot start the {what}: {source}")]
    Threads {
        /// `reactor`, `proc pool` or `cluster`.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A channel cannot be registered as asked.
    #[error("channel {}: {problem}", channel_name(*.id))]
    Channel {
        /// The channel id.
        id: u8,
        /// What is wrong.
        problem: String,
    },
    /// A part the node cannot run without was not given.
    #[error("no {part}: {hint}")]
    Missing {
        /// The part.
        part: &'static str,
        /// How to give it.
        hint: &'static str,
    },
    /// A listener could not be bound.
    #[error("{key}: cannot listen on {addr}: {source}")]
    Listen {
        /// The key of the address.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

impl StartError {
    /// Whether the configuration (a key, a file it names, the channels asked for) is at
    /// fault, rather than the machine (threads, a listener): dapd exits with status 2 for
    /// these, which a service manager should not retry.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StartError::Config(_)
                | StartError::Setting { .. }
                | StartError::Channel { .. }
                | StartError::Missing { .. }
        )
    }
}

/// `'C'` for a printable id, `0x07` otherwise.
fn channel_name(id: u8) -> String {
    if id.is_ascii_graphic() { format!("'{}'", char::from(id)) } else { format!("{id:#04x}") }
}

fn setting(key: &'static str, problem: impl ToString) -> StartError {
    StartError::Setting { key, problem: problem.to_string() }
}

/// What a drain did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Streams open when the drain began.
    pub streams: usize,
    /// Streams still open at the end of the grace period: each was cut off, what was still
    /// queued for it discarded, with a CLOSE saying how many (over UDP, closed without a
    /// CLOSE).
    pub left_open: usize,
    /// Messages discarded unsent by those cut-offs (`docs/PROTOCOL.md` §10).
    pub messages_unsent: u64,
    /// How long the drain took.
    pub took: Duration,
}

/// What [`Node::reload`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadReport {
    /// Settings that changed and are in force now.
    pub applied: Vec<&'static str>,
    /// Sections that changed but take effect only at the next start.
    pub need_restart: Vec<&'static str>,
}

/// A node's counters ([`Node::stats`]); `/metrics` has these and more.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// The stream layer's counters.
    pub stream: StreamStatsSnapshot,
    /// Sessions held (pending and attached).
    pub sessions: usize,
    /// Streams open now.
    pub streams_open: u64,
    /// Each registered channel's counters, by id.
    pub channels: Vec<(u8, ChannelStatsSnapshot)>,
}

/// A running node. [`shutdown`](Self::shutdown) drains and stops it; dropping it without
/// that stops the threads without a drain.
pub struct Node {
    reactor: Reactor,
    pool: ProcPool,
    stream: StreamServer,
    enc: EncServer,
    broker: Option<Arc<Broker>>,
    plain: Server,
    tls: Option<Server>,
    /// Replaces the TLS listener's certificate on a reload.
    tls_reloader: Option<dap_net::tls::CertReloader>,
    admin: Option<Server>,
    dns: Option<Arc<DnsServer>>,
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    udp_addr: Option<SocketAddr>,
    sources: Arc<Sources>,
    draining: Arc<AtomicBool>,
    config: Config,
    /// The node's link to its cluster (`[cluster]`), if any.
    cluster: Option<Arc<Cluster>>,
}

impl Drop for Node {
    /// A node dropped without [`Node::shutdown`] still leaves its cluster (the member list,
    /// the Redis connections and their threads); the reactor stops on its own drop.
    fn drop(&mut self) {
        if let Some(cl) = &self.cluster {
            cl.stop();
        }
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("local_addr", &self.local_addr)
            .field("tls_addr", &self.tls_addr)
            .field("workers", &self.reactor.len())
            .finish_non_exhaustive()
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn reactor(c: &Config) -> Result<Reactor, StartError> {
    let r = &c.reactor;
    let l = &r.limits;
    let mut limits = Limits::default();
    limits.max_esockets = l.max_esockets;
    limits.buf_in_cap = l.buf_in_cap;
    limits.buf_out_cap = l.buf_out_cap;
    limits.buf_out_low_water = l.buf_out_low_water;
    limits.handle_write_slack = l.handle_write_slack;
    limits.buffer_budget = l.buffer_budget;
    limits.inbox_capacity = l.inbox_capacity;
    limits.pool_buffers = l.pool_buffers;
    limits.buf_cap_max = l.buf_cap_max;
    limits.udp_out_queue = l.udp_out_queue;
    limits.udp_recv_buffer = c.udp.recv_buffer;
    limits.udp_send_buffer = c.udp.send_buffer;
    limits.max_timers = l.max_timers;
    limits.events_per_turn = l.events_per_turn;
    let mode = match r.listener_mode {
        ListenerModeSetting::PerWorker => ListenerMode::PerWorker,
        ListenerModeSetting::Single => ListenerMode::Single,
    };
    Reactor::builder()
        .threads(r.threads)
        .pin(r.pin)
        .limits(limits)
        .idle_timeout((r.idle_timeout_ms > 0).then(|| ms(r.idle_timeout_ms)))
        .connect_timeout(ms(r.connect_timeout_ms))
        .close_linger(ms(r.close_linger_ms))
        .backlog(c.listen.backlog.min(i32::MAX as u32) as i32)
        .listener_mode(mode)
        .share_port(c.listen.share_port)
        .name("dapd-worker")
        .start()
        .map_err(|source| StartError::Threads { what: "reactor", source })
}

fn proc_pool(c: &Config, reactor: &Reactor) -> Result<ProcPool, StartError> {
    let p = &c.proc;
    let b = ProcPool::builder()
        .pin(c.reactor.pin)
        .queue_capacity(p.queue_capacity)
        .aging(ms(p.aging_ms))
        .nice(p.nice)
        .name("dapd-proc");
    let err = |source| StartError::Threads { what: "proc pool", source };
    if p.threads == 0 {
        return b.start_for(reactor).map_err(err);
    }
    let pool = b.threads(p.threads).start().map_err(err)?;
    // Pair worker i with thread i mod n, so HTTP simple routes find a proc thread.
    for (i, w) in reactor.workers().iter().enumerate() {
        if let Some(t) = pool.thread(i % pool.len()) {
            w.set_extension(Arc::new(t.clone()));
        }
    }
    Ok(pool)
}

fn node_key(c: &Config) -> Result<NodeKey, StartError> {
    if c.enc.node_key.is_empty() {
        let key = NodeKey::generate();
        tracing::warn!(
            public_key = %public_key_to_base64(&key.public_key()),
            "no enc.node_key configured: using a fresh node key for this run only; clients \
             that pin the node key will not recognise the next run"
        );
        return Ok(key);
    }
    NodeKey::load(Path::new(&c.enc.node_key))
        .map_err(|e| setting("enc.node_key", format!("{}: {e}", c.enc.node_key)))
}

/// Removes expired keys now and then (every quarter of the idle TTL, between 1 s and 1 min),
/// so that a node whose clients went away returns their memory. Lookups remove an expired
/// key too, and the store's bound holds without this.
fn sweep_keys(reactor: &Reactor, enc: &EncServer) {
    let ttl = enc.config().store.idle_ttl;
    let period = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let enc = enc.clone();
    let Some(worker) = reactor.worker(0) else { return };
    let posted = worker.exec(move |ctx| {
        let timer = ctx.add_timer(period, move |_| {
            let removed = enc.store().sweep(Instant::now());
            if removed > 0 {
                tracing::debug!(removed, "expired keys swept");
            }
            true
        });
        if let Err(e) = timer {
            tracing::warn!(error = %e, "no key sweep timer: expired keys go only when used or evicted");
        }
    });
    if let Err(e) = posted {
        tracing::warn!(error = %e, "no key sweep timer: expired keys go only when used or evicted");
    }
}

/// The cluster link `[cluster]` asks for (not yet joined: [`join_cluster`]).
fn cluster_link(c: &Config) -> Result<Option<Arc<Cluster>>, StartError> {
    let cc = &c.cluster;
    if cc.redis.is_empty() {
        return Ok(None);
    }
    let key = crate::cluster::load_key(Path::new(&cc.key_file))
        .map_err(|e| setting("cluster.key_file", format!("{}: {e}", cc.key_file)))?;
    let read = |what: &'static str, path: &str| {
        std::fs::read(path).map_err(|e| setting(what, format!("{path}: {e}")))
    };
    let tls_roots = match cc.tls_ca_file.as_str() {
        "" => None,
        path => Some(read("cluster.tls_ca_file", path)?),
    };
    let tls_client = match (cc.tls_cert_file.as_str(), cc.tls_key_file.as_str()) {
        ("", _) | (_, "") => None,
        (cert, key) => Some((
            read("cluster.tls_cert_file", cert)?,
            zeroize::Zeroizing::new(read("cluster.tls_key_file", key)?),
        )),
    };
    let settings = ClusterSettings {
        redis: cc.redis.clone(),
        key,
        prefix: cc.prefix.clone(),
        timeout: ms(cc.timeout_ms),
        membership_ttl: ms(cc.membership_ttl_ms),
        relay_queue: cc.relay_queue,
        tls_roots,
        tls_client,
    };
    Cluster::new(settings).map(Some).map_err(|e| setting("cluster.redis", e.to_string()))
}

/// Joins the cluster once the listeners are bound: the node's name and the address it
/// advertises default to the address it listens on.
fn join_cluster(
    c: &Config,
    cl: &Arc<Cluster>,
    local: SocketAddr,
    udp: Option<SocketAddr>,
) -> Result<(), StartError> {
    let cc = &c.cluster;
    let advertise = if cc.advertise.is_empty() { local.to_string() } else { cc.advertise.clone() };
    let name = if cc.node_name.is_empty() { advertise.clone() } else { cc.node_name.clone() };
    let udp_port = udp.map_or(0, |a| a.port());
    cl.run(name, advertise, udp_port)
        .map_err(|e| StartError::Threads { what: "cluster", source: std::io::Error::other(e) })
}

/// Keeps `[dns] cluster_name` in `zone` the cluster's member list: an A or AAAA record per
/// member whose advertised host is an address, and a TXT record per member.
fn publish_members(cl: &Arc<Cluster>, zone: dap_net::dns::SharedZone, c: &Config) {
    let name = c.dns.cluster_name.clone();
    let ttl = (c.cluster.membership_ttl_ms / 1000).max(1) as u32;
    cl.on_members(move |members| {
        let mut z = zone.write();
        z.remove(&name);
        for m in members {
            let added = match m.addr.parse::<SocketAddr>().map(|a| a.ip()) {
                Ok(std::net::IpAddr::V4(ip)) => z.add_a(&name, ip, ttl),
                Ok(std::net::IpAddr::V6(ip)) => z.add_aaaa(&name, ip, ttl),
                Err(_) => Ok(()),
            };
            let txt = format!("name={} addr={} udp={}", m.name, m.addr, m.udp_port);
            if let Err(e) = added.and_then(|()| z.add_txt(&name, txt, ttl)) {
                tracing::warn!(error = %e, member = %m.name, "cluster member not in DNS");
            }
        }
    });
}

/// How often the allocator is asked whether it holds free memory worth giving back.
const RELEASE_PERIOD: Duration = Duration::from_secs(5);

/// Gives free heap back to the kernel now and then (`reactor.release_memory_above`), on a
/// proc thread so that no worker stalls while the allocator walks its arenas; counts each
/// release in `released`.
fn release_memory(c: &Config, pool: &ProcPool, released: Arc<AtomicU64>) {
    let above = c.reactor.release_memory_above;
    if above == 0 {
        return;
    }
    let Some(thread) = pool.thread(0) else { return };
    let job = thread.add_periodic(RELEASE_PERIOD, move || {
        if let Some(free) = dap_reactor::release_free_memory(above) {
            released.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(free, "free heap given back to the kernel");
        }
        dap_proc::Next::Again
    });
    if job.is_err() {
        tracing::warn!("no memory release job: freed memory stays with the allocator");
    }
}

/// What one client is, for per-source limits: `[listen] source_prefix_v4/v6`.
fn source_prefixes(c: &Config) -> SourcePrefixes {
    SourcePrefixes { v4: c.listen.source_prefix_v4, v6: c.listen.source_prefix_v6 }
}

/// `[listen] max_connections` and `max_connections_per_source`, for the HTTP and TLS
/// listeners together (the admin listener is not limited: operators must get in).
fn conn_limits(c: &Config) -> ConnLimits {
    let mut l = ConnLimits::default();
    l.max_total = c.listen.max_connections;
    l.per_source = c.listen.max_connections_per_source;
    l.prefixes = source_prefixes(c);
    l
}

fn enc_config(c: &Config) -> Result<EncConfig, StartError> {
    let e = &c.enc;
    let mut config = EncConfig::default();
    config.store.max_keys = e.max_keys;
    config.store.idle_ttl = Duration::from_secs(e.key_idle_ttl_s);
    config.store.max_age = Duration::from_secs(e.key_max_age_s);
    config.store.unused_ttl = Duration::from_secs(e.key_unused_ttl_s);
    let mut rate = RateLimit::new(e.handshake_rate, e.handshake_burst);
    rate.max_sources = e.handshake_sources;
    rate.prefixes = source_prefixes(c);
    config.handshake_rate = rate;
    config.max_init_body = e.max_init_body;
    config.handshake_on_worker = e.handshake_on_worker;
    config.client_auth = match e.client_auth {
        ClientAuthSetting::None => ClientAuth::None,
        ClientAuthSetting::Optional => ClientAuth::Optional,
        ClientAuthSetting::Required => {
            let list = AllowList::load_limited(Path::new(&e.allow_list), e.max_allow_list)
                .map_err(|err| setting("enc.allow_list", format!("{}: {err}", e.allow_list)))?;
            tracing::info!(keys = list.len(), "client certificates required");
            ClientAuth::Required(list)
        }
    };
    Ok(config)
}

fn stream_config(c: &Config) -> StreamConfig {
    let s = &c.stream;
    let limits = SessionLimits {
        mux: MuxConfig {
            max_message: s.max_message,
            channel_window: s.channel_window,
            conn_window: s.conn_window,
            send_queue: s.send_queue,
            max_frame: s.max_frame,
            max_channel_window: s.max_channel_window,
            max_conn_window: s.max_conn_window,
            max_session_reassembly: s.max_session_reassembly,
            partial_timeout: ms(s.partial_timeout_ms),
        },
        max_payload: s.max_payload,
        keepalive: ms(s.keepalive_ms),
        idle_timeout: ms(s.idle_timeout_ms),
        connect_timeout: ms(s.connect_timeout_ms),
        rekey_packets: s.rekey_packets,
        buf_in: s.buf_in,
        buf_out: s.buf_out,
    };
    let u = &c.udp;
    let (udp_host, udp_port) = u.advertised().ok().flatten().unwrap_or_default();
    let mut conn = dap_stream::udp::connection::ConnectionConfig::default();
    if let Some(cc) = ControllerConfig::from_name(&u.controller) {
        conn.controller = cc;
    }
    conn.mtu.max = u.max_udp_payload;
    conn.max_reorder = u.max_reorder;
    conn.max_reorder_total = u.max_reorder_total;
    conn.max_tracked_packets = u.max_tracked_packets;
    conn.max_ack_ranges = u.max_ack_ranges;
    conn.max_ack_threshold = u.max_ack_threshold;
    conn.max_datagram_queue = u.max_datagram_queue;
    conn.ecn = u.ecn;
    let udp = EndpointConfig {
        max_connections: u.max_connections,
        connection: conn,
        ..EndpointConfig::default()
    };
    StreamConfig {
        limits,
        max_sessions: s.max_sessions,
        udp_port,
        udp_host,
        udp,
        udp_gso_segments: u.gso_segments,
        udp_gso: u.gso,
        udp_share_port: c.listen.share_port,
        max_reassembly: s.max_reassembly,
        udp_cluster_lookups: c.cluster.udp_lookups,
        udp_cluster_held: c.cluster.udp_held,
        udp_cluster_lookup_rate: c.cluster.udp_lookup_rate,
        ..StreamConfig::default()
    }
}

fn http_config(c: &Config) -> HttpConfig {
    let h = &c.http;
    let mut config = HttpConfig::default();
    config.limits.max_header_bytes = h.max_header_bytes;
    config.limits.max_headers = h.max_headers;
    config.limits.max_url = h.max_url;
    config.limits.max_body = h.max_body;
    config.header_timeout = ms(h.header_timeout_ms);
    config.body_timeout = ms(h.body_timeout_ms);
    config.keep_alive_timeout = ms(h.keep_alive_timeout_ms);
    config.write_timeout = ms(h.write_timeout_ms);
    config.lingering_close = ms(h.lingering_close_ms);
    config.lingering_bytes = h.lingering_bytes;
    config.max_requests_per_connection =
        (h.max_requests_per_connection > 0).then_some(h.max_requests_per_connection);
    config.server_name = (!h.server_name.is_empty()).then(|| h.server_name.clone());
    config.half_close = h.half_close;
    if h.request_rate > 0 {
        let mut rate = RateLimit::new(h.request_rate, h.request_burst);
        rate.prefixes = source_prefixes(c);
        config.request_rate = Some(rate);
    }
    config
}

fn access_list(c: &Config) -> Result<AccessList, StartError> {
    let mut acl = AccessList::new();
    for b in &c.listen.allow {
        acl.allow(b.parse().map_err(|e| setting("listen.allow", format!("{b}: {e}")))?);
    }
    for b in &c.listen.deny {
        acl.deny(b.parse().map_err(|e| setting("listen.deny", format!("{b}: {e}")))?);
    }
    Ok(acl)
}

fn zone(c: &Config) -> Result<Zone, StartError> {
    let d = &c.dns;
    let mut zone =
        Zone::new(&d.origin).map_err(|e| setting("dns.origin", e))?.with_max_records(d.max_records);
    for r in &d.records {
        let added = match r.kind.to_ascii_uppercase().as_str() {
            "A" => r
                .value
                .parse()
                .map_err(|e: std::net::AddrParseError| e.to_string())
                .and_then(|a| zone.add_a(&r.name, a, r.ttl).map_err(|e| e.to_string())),
            "AAAA" => r
                .value
                .parse()
                .map_err(|e: std::net::AddrParseError| e.to_string())
                .and_then(|a| zone.add_aaaa(&r.name, a, r.ttl).map_err(|e| e.to_string())),
            "TXT" => zone.add_txt(&r.name, &r.value, r.ttl).map_err(|e| e.to_string()),
            "CNAME" => zone.add_cname(&r.name, &r.value, r.ttl).map_err(|e| e.to_string()),
            other => Err(format!("unknown record type {other}")),
        };
        added.map_err(|e| setting("dns.records", format!("{}: {e}", r.name)))?;
    }
    Ok(zone)
}

type Factory = Arc<dyn Fn(&SessionInfo) -> Box<dyn ChannelHandler> + Send + Sync>;

type TlsParts = (Arc<dap_net::tls::ServerConfig>, dap_net::tls::CertReloader);
type Parts = (EncConfig, AccessList, Option<TlsParts>, Option<Zone>);

/// What `start` reads from files and lists before any thread starts (and `check` too).
fn checked_parts(config: &Config) -> Result<Parts, StartError> {
    let enc_config = enc_config(config)?;
    let acl = access_list(config)?;
    let tls_config = if config.tls.enabled {
        let t = &config.tls;
        Some(
            dap_net::tls::server_config_reloadable(Path::new(&t.cert), Path::new(&t.key))
                .map_err(|e| setting("tls.cert", e))?,
        )
    } else {
        None
    };
    let zone = if config.dns.enabled { Some(zone(config)?) } else { None };
    Ok((enc_config, acl, tls_config, zone))
}

/// Builds a [`Node`]: every key of dapd's configuration file has its method here (named
/// `<section>_<key>`, with short names for the common ones: [`http`](Self::http),
/// [`udp`](Self::udp), [`threads`](Self::threads), [`node_key`](Self::node_key),
/// [`tls`](Self::tls)), the application adds its channels with
/// [`channel`](Self::channel), and [`start`](Self::start) checks the whole before anything
/// runs.
///
/// ```
/// use dap_server::Node;
/// use dap_stream::{Channel, ChannelHandler, Message};
///
/// /// Answers every message in upper case.
/// struct Shout;
/// impl ChannelHandler for Shout {
///     fn packet_in(&mut self, ch: &mut Channel<'_>, msg: Message) {
///         let _ = ch.write(msg.ty, msg.data.to_ascii_uppercase());
///     }
/// }
///
/// let node = Node::builder()
///     .http("127.0.0.1:0".parse()?)
///     .udp("127.0.0.1:0".parse()?)
///     .threads(1)
///     .channel(b'S', |_session| Shout)
///     .builtin_channels()
///     .start()?;
/// println!("serving on {} and udp {:?}", node.local_addr(), node.udp_addr());
/// node.shutdown(std::time::Duration::from_secs(5));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a builder does nothing until start()"]
pub struct NodeBuilder {
    config: Config,
    node_key: Option<NodeKey>,
    channels: Vec<(u8, Factory)>,
    builtins: bool,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: String = self.channels.iter().map(|(id, _)| channel_name(*id)).collect();
        f.debug_struct("NodeBuilder")
            .field("config", &self.config)
            .field("channels", &ids)
            .field("builtin_channels", &self.builtins)
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    fn new(config: Config) -> Self {
        NodeBuilder { config, node_key: None, channels: Vec::new(), builtins: false }
    }

    /// The configuration as built so far.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Changes the configuration in place, for several keys at once or whole sections.
    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Registers channel `id` (printable ASCII): each session that asks for it gets the
    /// handler `factory` makes, on the session's worker. Its counters appear in `/metrics`
    /// under `channel="<id>"`. An id given twice, or one the built-in channels use, fails
    /// at [`start`](Self::start).
    pub fn channel<H, F>(mut self, id: u8, factory: F) -> Self
    where
        H: ChannelHandler,
        F: Fn(&SessionInfo) -> H + Send + Sync + 'static,
    {
        self.channels.push((id, Arc::new(move |s: &SessionInfo| Box::new(factory(s)) as Box<_>)));
        self
    }

    /// Adds the built-in channels: `'E'` (echo, [`dap_stream::echo`]) and `'P'`
    /// (publish/subscribe, [`dap_stream::pubsub`], bounded by `[pubsub]`).
    pub fn builtin_channels(mut self) -> Self {
        self.builtins = true;
        self
    }

    /// The node key (instead of `[enc] node_key`'s file). Without either, the node makes
    /// a fresh key for this run and says so in the log.
    pub fn node_key(mut self, key: NodeKey) -> Self {
        self.node_key = Some(key);
        self
    }

    /// The plain HTTP listener's address (`[listen] addr`; port 0 picks one).
    pub fn http(mut self, addr: SocketAddr) -> Self {
        self.config.listen.addr = addr;
        self
    }

    /// Serves the UDP transport on `addr` (`[udp] enabled = true`, `addr`; port 0 picks
    /// one, [`Node::udp_addr`] tells which).
    pub fn udp(mut self, addr: SocketAddr) -> Self {
        self.config.udp.enabled = true;
        self.config.udp.addr = addr.to_string();
        self
    }

    /// No UDP transport (`[udp] enabled = false`): sessions run over HTTP only.
    pub fn without_udp(mut self) -> Self {
        self.config.udp.enabled = false;
        self
    }

    /// Reactor workers (`[reactor] threads`; 0: one per CPU).
    pub fn threads(mut self, n: usize) -> Self {
        self.config.reactor.threads = n;
        self
    }

    /// A TLS listener on `addr` with a PEM certificate chain and key (`[tls]`).
    pub fn tls(
        mut self,
        addr: SocketAddr,
        cert: impl Into<String>,
        key: impl Into<String>,
    ) -> Self {
        let t = &mut self.config.tls;
        t.enabled = true;
        t.addr = addr;
        t.cert = cert.into();
        t.key = key.into();
        self
    }

    /// An authoritative DNS server on `addr` for `origin` with `records` (`[dns]`).
    pub fn dns(
        mut self,
        addr: SocketAddr,
        origin: impl Into<String>,
        records: Vec<DnsRecord>,
    ) -> Self {
        let d = &mut self.config.dns;
        d.enabled = true;
        d.addr = addr;
        d.origin = origin.into();
        d.records = records;
        self
    }
}

/// One setter per key of the configuration file: `method = "section.key" => field path: type`.
macro_rules! keys {
    ($($method:ident = $key:literal => $($field:ident).+ : $ty:ty;)*) => {
        impl NodeBuilder {
            $(
                #[doc = concat!("Sets `", $key, "` (`config/dapd.toml` documents it and its default).")]
                pub fn $method(mut self, value: $ty) -> Self {
                    self.config.$($field).+ = value.into();
                    self
                }
            )*
        }

        /// Every key that has a setter, as `section.key` (tests check it against the file).
        #[cfg(test)]
        const KEYS: &[&str] = &[$($key),*];
    };
}

keys! {
    listen_addr = "listen.addr" => listen.addr: SocketAddr;
    listen_backlog = "listen.backlog" => listen.backlog: u32;
    listen_allow = "listen.allow" => listen.allow: Vec<String>;
    listen_deny = "listen.deny" => listen.deny: Vec<String>;
    listen_share_port = "listen.share_port" => listen.share_port: bool;
    listen_max_connections = "listen.max_connections" => listen.max_connections: usize;
    listen_max_connections_per_source =
        "listen.max_connections_per_source" => listen.max_connections_per_source: usize;
    listen_source_prefix_v4 = "listen.source_prefix_v4" => listen.source_prefix_v4: u8;
    listen_source_prefix_v6 = "listen.source_prefix_v6" => listen.source_prefix_v6: u8;
    reactor_threads = "reactor.threads" => reactor.threads: usize;
    reactor_pin = "reactor.pin" => reactor.pin: bool;
    reactor_idle_timeout_ms = "reactor.idle_timeout_ms" => reactor.idle_timeout_ms: u64;
    reactor_connect_timeout_ms = "reactor.connect_timeout_ms" => reactor.connect_timeout_ms: u64;
    reactor_close_linger_ms = "reactor.close_linger_ms" => reactor.close_linger_ms: u64;
    reactor_listener_mode = "reactor.listener_mode" => reactor.listener_mode: ListenerModeSetting;
    reactor_release_memory_above = "reactor.release_memory_above" => reactor.release_memory_above: usize;
    reactor_limits_max_esockets = "reactor.limits.max_esockets" => reactor.limits.max_esockets: usize;
    reactor_limits_buf_in_cap = "reactor.limits.buf_in_cap" => reactor.limits.buf_in_cap: usize;
    reactor_limits_buf_out_cap = "reactor.limits.buf_out_cap" => reactor.limits.buf_out_cap: usize;
    reactor_limits_buf_out_low_water = "reactor.limits.buf_out_low_water" => reactor.limits.buf_out_low_water: usize;
    reactor_limits_handle_write_slack = "reactor.limits.handle_write_slack" => reactor.limits.handle_write_slack: usize;
    reactor_limits_buffer_budget = "reactor.limits.buffer_budget" => reactor.limits.buffer_budget: usize;
    reactor_limits_inbox_capacity = "reactor.limits.inbox_capacity" => reactor.limits.inbox_capacity: usize;
    reactor_limits_pool_buffers = "reactor.limits.pool_buffers" => reactor.limits.pool_buffers: usize;
    reactor_limits_buf_cap_max = "reactor.limits.buf_cap_max" => reactor.limits.buf_cap_max: usize;
    reactor_limits_udp_out_queue = "reactor.limits.udp_out_queue" => reactor.limits.udp_out_queue: usize;
    reactor_limits_max_timers = "reactor.limits.max_timers" => reactor.limits.max_timers: usize;
    reactor_limits_events_per_turn = "reactor.limits.events_per_turn" => reactor.limits.events_per_turn: usize;
    http_max_header_bytes = "http.max_header_bytes" => http.max_header_bytes: usize;
    http_max_headers = "http.max_headers" => http.max_headers: usize;
    http_max_url = "http.max_url" => http.max_url: usize;
    http_max_body = "http.max_body" => http.max_body: u64;
    http_header_timeout_ms = "http.header_timeout_ms" => http.header_timeout_ms: u64;
    http_body_timeout_ms = "http.body_timeout_ms" => http.body_timeout_ms: u64;
    http_keep_alive_timeout_ms = "http.keep_alive_timeout_ms" => http.keep_alive_timeout_ms: u64;
    http_write_timeout_ms = "http.write_timeout_ms" => http.write_timeout_ms: u64;
    http_lingering_close_ms = "http.lingering_close_ms" => http.lingering_close_ms: u64;
    http_lingering_bytes = "http.lingering_bytes" => http.lingering_bytes: usize;
    http_max_requests_per_connection = "http.max_requests_per_connection" => http.max_requests_per_connection: u64;
    http_server_name = "http.server_name" => http.server_name: impl Into<String>;
    http_half_close = "http.half_close" => http.half_close: bool;
    enc_node_key = "enc.node_key" => enc.node_key: impl Into<String>;
    enc_max_keys = "enc.max_keys" => enc.max_keys: usize;
    enc_key_idle_ttl_s = "enc.key_idle_ttl_s" => enc.key_idle_ttl_s: u64;
    enc_key_max_age_s = "enc.key_max_age_s" => enc.key_max_age_s: u64;
    enc_client_auth = "enc.client_auth" => enc.client_auth: ClientAuthSetting;
    enc_allow_list = "enc.allow_list" => enc.allow_list: impl Into<String>;
    enc_max_allow_list = "enc.max_allow_list" => enc.max_allow_list: usize;
    enc_max_init_body = "enc.max_init_body" => enc.max_init_body: u64;
    enc_handshake_on_worker = "enc.handshake_on_worker" => enc.handshake_on_worker: bool;
    enc_key_unused_ttl_s = "enc.key_unused_ttl_s" => enc.key_unused_ttl_s: u64;
    enc_handshake_rate = "enc.handshake_rate" => enc.handshake_rate: u32;
    enc_handshake_burst = "enc.handshake_burst" => enc.handshake_burst: u32;
    enc_handshake_sources = "enc.handshake_sources" => enc.handshake_sources: usize;
    stream_max_sessions = "stream.max_sessions" => stream.max_sessions: usize;
    stream_max_reassembly = "stream.max_reassembly" => stream.max_reassembly: usize;
    stream_max_session_reassembly = "stream.max_session_reassembly" => stream.max_session_reassembly: usize;
    stream_partial_timeout_ms = "stream.partial_timeout_ms" => stream.partial_timeout_ms: u64;
    stream_max_message = "stream.max_message" => stream.max_message: usize;
    stream_channel_window = "stream.channel_window" => stream.channel_window: u32;
    stream_conn_window = "stream.conn_window" => stream.conn_window: u32;
    stream_send_queue = "stream.send_queue" => stream.send_queue: usize;
    stream_max_frame = "stream.max_frame" => stream.max_frame: usize;
    stream_max_payload = "stream.max_payload" => stream.max_payload: usize;
    stream_max_channel_window = "stream.max_channel_window" => stream.max_channel_window: u32;
    stream_max_conn_window = "stream.max_conn_window" => stream.max_conn_window: u32;
    stream_rekey_packets = "stream.rekey_packets" => stream.rekey_packets: u64;
    stream_buf_in = "stream.buf_in" => stream.buf_in: usize;
    stream_buf_out = "stream.buf_out" => stream.buf_out: usize;
    stream_keepalive_ms = "stream.keepalive_ms" => stream.keepalive_ms: u64;
    stream_idle_timeout_ms = "stream.idle_timeout_ms" => stream.idle_timeout_ms: u64;
    stream_connect_timeout_ms = "stream.connect_timeout_ms" => stream.connect_timeout_ms: u64;
    udp_enabled = "udp.enabled" => udp.enabled: bool;
    udp_addr = "udp.addr" => udp.addr: impl Into<String>;
    udp_advertise = "udp.advertise" => udp.advertise: impl Into<String>;
    udp_controller = "udp.controller" => udp.controller: impl Into<String>;
    udp_max_udp_payload = "udp.max_udp_payload" => udp.max_udp_payload: usize;
    udp_max_connections = "udp.max_connections" => udp.max_connections: usize;
    udp_gso_segments = "udp.gso_segments" => udp.gso_segments: usize;
    udp_gso = "udp.gso" => udp.gso: bool;
    udp_recv_buffer = "udp.recv_buffer" => udp.recv_buffer: usize;
    udp_send_buffer = "udp.send_buffer" => udp.send_buffer: usize;
    udp_max_reorder = "udp.max_reorder" => udp.max_reorder: u64;
    udp_max_reorder_total = "udp.max_reorder_total" => udp.max_reorder_total: usize;
    udp_max_tracked_packets = "udp.max_tracked_packets" => udp.max_tracked_packets: usize;
    udp_max_ack_ranges = "udp.max_ack_ranges" => udp.max_ack_ranges: usize;
    udp_max_ack_threshold = "udp.max_ack_threshold" => udp.max_ack_threshold: u32;
    udp_max_datagram_queue = "udp.max_datagram_queue" => udp.max_datagram_queue: usize;
    udp_ecn = "udp.ecn" => udp.ecn: bool;
    proc_threads = "proc.threads" => proc.threads: usize;
    proc_queue_capacity = "proc.queue_capacity" => proc.queue_capacity: usize;
    proc_aging_ms = "proc.aging_ms" => proc.aging_ms: u64;
    pubsub_max_topics = "pubsub.max_topics" => pubsub.max_topics: usize;
    pubsub_max_subscribers_per_topic = "pubsub.max_subscribers_per_topic" => pubsub.max_subscribers_per_topic: usize;
    pubsub_max_subscriptions_per_session = "pubsub.max_subscriptions_per_session" => pubsub.max_subscriptions_per_session: usize;
    pubsub_max_topic_len = "pubsub.max_topic_len" => pubsub.max_topic_len: usize;
    tls_enabled = "tls.enabled" => tls.enabled: bool;
    tls_addr = "tls.addr" => tls.addr: SocketAddr;
    tls_cert = "tls.cert" => tls.cert: impl Into<String>;
    tls_key = "tls.key" => tls.key: impl Into<String>;
    dns_enabled = "dns.enabled" => dns.enabled: bool;
    dns_addr = "dns.addr" => dns.addr: SocketAddr;
    dns_origin = "dns.origin" => dns.origin: impl Into<String>;
    dns_max_records = "dns.max_records" => dns.max_records: usize;
    dns_max_payload = "dns.max_payload" => dns.max_payload: u16;
    dns_records = "dns.records" => dns.records: Vec<DnsRecord>;
    shutdown_grace_ms = "shutdown.grace_ms" => shutdown.grace_ms: u64;
    shutdown_drain_notice_ms = "shutdown.drain_notice_ms" => shutdown.drain_notice_ms: u64;
    admin_enabled = "admin.enabled" => admin.enabled: bool;
    admin_addr = "admin.addr" => admin.addr: SocketAddr;
    log_level = "log.level" => log.level: impl Into<String>;
    log_format = "log.format" => log.format: LogFormat;
    log_access = "log.access" => log.access: bool;
    http_request_rate = "http.request_rate" => http.request_rate: u32;
    http_request_burst = "http.request_burst" => http.request_burst: u32;
    proc_nice = "proc.nice" => proc.nice: i32;
    dns_cluster_name = "dns.cluster_name" => dns.cluster_name: impl Into<String>;
    cluster_redis = "cluster.redis" => cluster.redis: impl Into<String>;
    cluster_node_name = "cluster.node_name" => cluster.node_name: impl Into<String>;
    cluster_key_file = "cluster.key_file" => cluster.key_file: impl Into<String>;
    cluster_prefix = "cluster.prefix" => cluster.prefix: impl Into<String>;
    cluster_timeout_ms = "cluster.timeout_ms" => cluster.timeout_ms: u64;
    cluster_membership_ttl_ms = "cluster.membership_ttl_ms" => cluster.membership_ttl_ms: u64;
    cluster_relay_queue = "cluster.relay_queue" => cluster.relay_queue: usize;
    cluster_advertise = "cluster.advertise" => cluster.advertise: impl Into<String>;
    cluster_tls_ca_file = "cluster.tls_ca_file" => cluster.tls_ca_file: impl Into<String>;
    cluster_tls_cert_file = "cluster.tls_cert_file" => cluster.tls_cert_file: impl Into<String>;
    cluster_tls_key_file = "cluster.tls_key_file" => cluster.tls_key_file: impl Into<String>;
    cluster_udp_lookups = "cluster.udp_lookups" => cluster.udp_lookups: usize;
    cluster_udp_held = "cluster.udp_held" => cluster.udp_held: usize;
    cluster_udp_lookup_rate = "cluster.udp_lookup_rate" => cluster.udp_lookup_rate: u32;
}

/// The registry: the built-in channels when asked for, then the application's, each id
/// once.
fn channel_procs(
    config: &Config,
    channels: Vec<(u8, Factory)>,
    builtins: bool,
) -> Result<(ChannelProcs, Option<Arc<Broker>>), StartError> {
    let mut procs = ChannelProcs::new();
    let mut broker = None;
    if builtins {
        let p = &config.pubsub;
        let b = Broker::new(BrokerConfig {
            max_topics: p.max_topics,
            max_subscribers_per_topic: p.max_subscribers_per_topic,
            max_subscriptions_per_session: p.max_subscriptions_per_session,
            max_topic_len: p.max_topic_len,
        });
        dap_stream::echo::register(&mut procs);
        pubsub::register(&mut procs, b.clone());
        broker = Some(b);
    }
    for (id, factory) in channels {
        if procs.contains(id) {
            let problem = if builtins && (id == dap_stream::echo::ECHO || id == pubsub::PUBSUB) {
                "is a built-in channel (builtin_channels() registers 'E' and 'P'): pick another id"
            } else {
                "is registered twice"
            };
            return Err(StartError::Channel { id, problem: problem.into() });
        }
        procs
            .ch_proc_add(id, move |s| factory(s))
            .map_err(|e| StartError::Channel { id, problem: e.to_string() })?;
    }
    if procs.ids().is_empty() {
        return Err(StartError::Missing {
            part: "channels",
            hint: "a node serves channels: add .channel(id, factory) or .builtin_channels()",
        });
    }
    Ok((procs, broker))
}

/// `E,P,C`: the registered ids, for the log.
fn procs_names(procs: &ChannelProcs) -> String {
    procs.ids().into_iter().map(char::from).map(String::from).collect::<Vec<_>>().join(",")
}

/// The routes every data listener serves; `/metrics` too unless an admin listener has it.
fn routes(
    http: &mut HttpServer,
    enc: &EncServer,
    stream: &StreamServer,
    sources: &Arc<Sources>,
    draining: &Arc<AtomicBool>,
    metrics: bool,
) {
    enc.install(http);
    stream.install(http, enc);
    admin_routes(http, sources, draining, metrics);
}

/// `/health`, and `/metrics` when `metrics`.
fn admin_routes(
    http: &mut HttpServer,
    sources: &Arc<Sources>,
    draining: &Arc<AtomicBool>,
    metrics: bool,
) {
    let d = draining.clone();
    let cluster = sources.cluster.clone();
    http.add_inline(HEALTH_PATH, RouteLimits::methods(&["GET", "HEAD"]), move |_| {
        if d.load(Ordering::Relaxed) {
            Response::text(503, "draining\n")
        } else if cluster.as_ref().is_some_and(|c| !c.is_up()) {
            // Still serving its own sessions: degraded, not down.
            Response::text(200, "degraded: redis unreachable\n")
        } else {
            Response::text(200, "ok\n")
        }
    });
    if let Some(cl) = sources.cluster.clone() {
        http.add_inline(CLUSTER_PATH, RouteLimits::methods(&["GET", "HEAD"]), move |_| {
            Response::new(200).header("Content-Type", "application/json").body(cl.to_json())
        });
    }
    if !metrics {
        return;
    }
    let s = sources.clone();
    // Rendered on a proc thread: a scrape takes a fraction of a millisecond, and a client
    // asking for it in a loop must not hold the worker's other connections back.
    http.add_simple(METRICS_PATH, RouteLimits::methods(&["GET", "HEAD"]), move |_| {
        Response::new(200).header("Content-Type", metrics::CONTENT_TYPE).body(metrics::render(&s))
    });
}

impl NodeBuilder {
    /// Checks everything [`start`](Self::start) would, without starting anything: the
    /// values, the channels, and the files the configuration names (node key, allow list,
    /// TLS certificate and key, DNS records). `dapd --check-config`.
    ///
    /// # Errors
    /// The [`StartError`] `start` would fail with (never a listener's: nothing is bound).
    pub fn check(self) -> Result<(), StartError> {
        let NodeBuilder { config, node_key: given_key, channels, builtins } = self;
        config.validate()?;
        channel_procs(&config, channels, builtins)?;
        if given_key.is_none() && !config.enc.node_key.is_empty() {
            node_key(&config)?;
        }
        checked_parts(&config).map(drop)
    }

    /// Starts everything the configuration asks for, with the channels given, and returns
    /// once every listener is bound.
    ///
    /// # Errors
    /// [`StartError`], naming the key, the channel or the missing part at fault: a wiring
    /// mistake fails here, never at the first request.
    pub fn start(self) -> Result<Node, StartError> {
        let NodeBuilder { config, node_key: given_key, channels, builtins } = self;
        config.validate()?;
        let (procs, broker) = channel_procs(&config, channels, builtins)?;
        if let Err(e) = dap_reactor::raise_fd_limit() {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
        let node = match given_key {
            Some(key) => key,
            None => node_key(&config)?,
        };
        let (enc_config, acl, tls_config, zone) = checked_parts(&config)?;

        let reactor = reactor(&config)?;
        let pool = proc_pool(&config, &reactor)?;
        let enc = EncServer::new(node, enc_config);
        sweep_keys(&reactor, &enc);
        let memory_released = Arc::new(AtomicU64::new(0));
        release_memory(&config, &pool, memory_released.clone());
        let stream = StreamServer::new(procs, stream_config(&config));
        // Shared before the routes are installed: /enc_init moves to proc threads.
        let cluster = cluster_link(&config)?;
        if let Some(cl) = &cluster {
            enc.share_keys(cl.clone());
            stream.share_sessions(cl.clone());
            if let Some(b) = &broker {
                b.relay_to(cl.clone());
                cl.attach_broker(b.clone());
            }
        }
        let draining = Arc::new(AtomicBool::new(false));
        let sources = Arc::new(Sources {
            workers: reactor.workers().to_vec(),
            buffers: reactor.buffer_budget(),
            memory_released,
            procs: pool.threads().to_vec(),
            stream: stream.clone(),
            enc: enc.clone(),
            broker: broker.clone(),
            http: OnceLock::new(),
            dns: OnceLock::new(),
            listeners: OnceLock::new(),
            draining: draining.clone(),
            cluster: cluster.clone(),
        });

        let mut http = HttpServer::new(http_config(&config));
        let data_metrics = !config.admin.enabled;
        routes(&mut http, &enc, &stream, &sources, &draining, data_metrics);
        let (factory, plain_stats) = http.into_factory(reactor.len());
        let addr = config.listen.addr;
        let conn_limiter = ConnLimiter::new(conn_limits(&config));
        let plain = Server::builder()
            .tcp(addr)
            .access_list(acl.clone())
            .conn_limits(conn_limiter.clone())
            .start(&reactor, factory)
            .map_err(|source| StartError::Listen { key: "listen.addr", addr, source })?;
        let local_addr = plain.tcp_addrs().first().copied().unwrap_or(addr);
        let mut http_stats = vec![("plain", plain_stats)];

        let mut tls = None;
        let mut tls_addr = None;
        let mut tls_reloader = None;
        if let Some((tls_config, reloader)) = tls_config {
            tls_reloader = Some(reloader);
            let mut https = HttpServer::new(http_config(&config));
            https.tls(tls_config);
            routes(&mut https, &enc, &stream, &sources, &draining, data_metrics);
            let (factory, stats) = https.into_factory(reactor.len());
            let addr = config.tls.addr;
            let server = Server::builder()
                .tcp(addr)
                .access_list(acl)
                .conn_limits(conn_limiter.clone())
                .start(&reactor, factory)
                .map_err(|source| StartError::Listen { key: "tls.addr", addr, source })?;
            tls_addr = server.tcp_addrs().first().copied();
            tls = Some(server);
            http_stats.push(("tls", stats));
        }
        let mut admin = None;
        if config.admin.enabled {
            let mut http = HttpServer::new(http_config(&config));
            admin_routes(&mut http, &sources, &draining, true);
            let (factory, stats) = http.into_factory(reactor.len());
            let addr = config.admin.addr;
            let server = Server::builder()
                .tcp(addr)
                .start(&reactor, factory)
                .map_err(|source| StartError::Listen { key: "admin.addr", addr, source })?;
            admin = Some(server);
            http_stats.push(("admin", stats));
        }
        let _ = sources.http.set(http_stats);
        let mut listener_stats = vec![("plain", plain.shared_stats())];
        if let Some(t) = &tls {
            listener_stats.push(("tls", t.shared_stats()));
        }
        let _ = sources.listeners.set((listener_stats, conn_limiter));

        let udp_addr =
            if config.udp.enabled {
                let addr = config.udp.bind_addr(local_addr).map_err(|e| setting("udp.addr", e))?;
                let bound = stream
                    .serve_udp(&reactor, addr)
                    .map_err(|source| StartError::Listen { key: "udp.addr", addr, source })?;
                Some(bound)
            } else {
                None
            };
        let dns = match zone {
            Some(zone) => {
                let d = &config.dns;
                let dns_config = DnsConfig::default().max_payload(d.max_payload);
                let server = DnsServer::start(&reactor, d.addr, zone.into(), dns_config)
                    .map_err(|e| setting("dns.addr", format!("{}: {e}", d.addr)))?;
                let server = Arc::new(server);
                let _ = sources.dns.set(server.clone());
                Some(server)
            }
            None => None,
        };
        if let Some(cl) = &cluster {
            if let Some(d) = &dns
                && !config.dns.cluster_name.is_empty()
            {
                publish_members(cl, d.zone().clone(), &config);
            }
            join_cluster(&config, cl, local_addr, udp_addr)?;
            tracing::info!(node = cl.node_name(), "cluster joined");
        }
        tracing::info!(
            addr = %local_addr,
            tls = %tls_addr.map_or_else(|| "-".into(), |a| a.to_string()),
            udp = %udp_addr.map_or_else(|| "-".into(), |a| a.to_string()),
            dns = %dns.as_ref().map_or_else(|| "-".into(), |d| d.local_addr().to_string()),
            workers = reactor.len(),
            node_key = %public_key_to_base64(&enc.node_public_key()),
            channels = %procs_names(stream.procs()),
            "node serving"
        );
        Ok(Node {
            reactor,
            pool,
            stream,
            enc,
            broker,
            plain,
            tls,
            tls_reloader,
            admin,
            dns,
            local_addr,
            tls_addr,
            udp_addr,
            sources,
            draining,
            config,
            cluster,
        })
    }
}

impl Node {
    /// A builder on the embedded default configuration ([`Config::embedded`]: 127.0.0.1:8079,
    /// UDP on the same port, one worker per CPU), with no channels yet.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::new(Config::embedded())
    }

    /// A builder on `config` (from [`Config::load`], say), with no channels yet.
    pub fn from_config(config: Config) -> NodeBuilder {
        NodeBuilder::new(config)
    }

    /// The plain HTTP listener's address (with port 0 configured, the port picked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The TLS listener's address, when TLS is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The UDP transport's address, when UDP is on (with port 0 configured, the port
    /// picked).
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp_addr
    }

    /// The admin listener's address (`/metrics`, `/health`), when `[admin]` is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.tcp_addrs().first().copied())
    }

    /// The DNS server's address, when DNS is on.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().map(|d| d.local_addr())
    }

    /// The node's Ed25519 public key, for clients to pin.
    pub fn node_public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.enc.node_public_key()
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.reactor.len()
    }

    /// The stream server (sessions, counters).
    pub fn stream(&self) -> &StreamServer {
        &self.stream
    }

    /// The pub/sub broker, when the built-in channels are on.
    pub fn broker(&self) -> Option<&Arc<Broker>> {
        self.broker.as_ref()
    }

    /// The configuration it runs with (the builder's, or the file's).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Applies what of `new` can change while the node runs, without dropping a
    /// connection: `[listen] allow` and `deny` (for connections from now on, on every
    /// listener), the client allow list (`[enc] client_auth`, `allow_list`: for handshakes
    /// from now on), and the TLS certificate and key (read again even when their paths did
    /// not change: a renewed certificate; new handshakes use it). Returns what was applied,
    /// and what changed but needs a restart; `[log] level` is the caller's (it owns the
    /// logger: [`crate::logging`]). The node keeps its configuration as it was for what
    /// was not applied.
    ///
    /// # Errors
    /// `new` is invalid, an access list entry is not a CIDR block, the allow list or the
    /// certificate cannot be read: nothing is applied.
    pub fn reload(&mut self, new: &Config) -> Result<ReloadReport, StartError> {
        new.validate()?;
        let acl = access_list(new)?;
        let enc_new = enc_config(new)?;
        let tls_on = self.tls_reloader.is_some() && new.tls.enabled;
        let old = self.config.clone();
        let mut report = ReloadReport::default();
        // First, as it can still fail (a certificate that does not match its key): then
        // nothing at all is applied.
        if let Some(r) = self.tls_reloader.as_ref().filter(|_| tls_on) {
            r.reload(Path::new(&new.tls.cert), Path::new(&new.tls.key))
                .map_err(|e| setting("tls.cert", e))?;
            self.config.tls.cert = new.tls.cert.clone();
            self.config.tls.key = new.tls.key.clone();
            report.applied.push("tls.cert/key");
        }
        let auth_keys =
            |c: &Config| (c.enc.client_auth, c.enc.allow_list.clone(), c.enc.max_allow_list);
        if auth_keys(&old) != auth_keys(new) || new.enc.client_auth == ClientAuthSetting::Required {
            self.enc.set_client_auth(enc_new.client_auth);
            self.config.enc.client_auth = new.enc.client_auth;
            self.config.enc.allow_list = new.enc.allow_list.clone();
            self.config.enc.max_allow_list = new.enc.max_allow_list;
            report.applied.push("enc.client_auth/allow_list");
        }
        if (&old.listen.allow, &old.listen.deny) != (&new.listen.allow, &new.listen.deny) {
            self.plain.set_access_list(acl.clone());
            if let Some(t) = &self.tls {
                t.set_access_list(acl);
            }
            self.config.listen.allow = new.listen.allow.clone();
            self.config.listen.deny = new.listen.deny.clone();
            report.applied.push("listen.allow/deny");
        }
        if (&old.log.level, old.log.access) != (&new.log.level, new.log.access) {
            self.config.log.level = new.log.level.clone();
            self.config.log.access = new.log.access;
            report.applied.push("log.level");
        }
        let mut listen = new.listen.clone();
        listen.allow = old.listen.allow.clone();
        listen.deny = old.listen.deny.clone();
        let sections: [(&'static str, bool); 13] = [
            ("listen", listen != old.listen),
            ("reactor", new.reactor != old.reactor),
            ("http", new.http != old.http),
            ("enc", {
                let mut e = new.enc.clone();
                (e.client_auth, e.allow_list, e.max_allow_list) =
                    (old.enc.client_auth, old.enc.allow_list.clone(), old.enc.max_allow_list);
                e != old.enc
            }),
            ("stream", new.stream != old.stream),
            ("udp", new.udp != old.udp),
            ("proc", new.proc != old.proc),
            ("pubsub", new.pubsub != old.pubsub),
            ("tls", {
                let mut t = new.tls.clone();
                if tls_on {
                    (t.cert, t.key) = (old.tls.cert.clone(), old.tls.key.clone());
                }
                t != old.tls
            }),
            ("dns", new.dns != old.dns),
            ("shutdown", new.shutdown != old.shutdown),
            ("admin", new.admin != old.admin),
            ("log.format", new.log.format != old.log.format),
        ];
        report.need_restart = sections.iter().filter(|(_, c)| *c).map(|(n, _)| *n).collect();
        Ok(report)
    }

    /// Its counters now.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            stream: self.stream.stats(),
            sessions: self.stream.table().len(),
            streams_open: self.stream.live_streams_by_worker(self.reactor.len()).iter().sum(),
            channels: self.stream.procs().stats(),
        }
    }

    /// The `/metrics` text as it would be served now.
    pub fn metrics(&self) -> String {
        metrics::render(&self.sources)
    }

    /// Whether a drain has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Shuts down gracefully within `grace`: `/health` answers 503; the listeners close
    /// (and the DNS server); every stream stops taking messages, sends what its channels
    /// queued and a CLOSE `GoingAway` ([`StreamServer::drain`]); then the reactor stops
    /// (open HTTP connections finish what they are sending) and the proc pool runs what is
    /// queued. Whatever is still open when `grace` has passed is closed: a stream is cut
    /// off ([`StreamServer::drain`] step 4), its discarded messages counted and logged,
    /// and TCP connections end with a FIN, never a reset.
    pub fn shutdown(mut self, grace: Duration) -> DrainReport {
        let start = Instant::now();
        self.draining.store(true, Ordering::SeqCst);
        tracing::info!(grace_ms = grace.as_millis() as u64, "draining");
        // `[shutdown] drain_notice_ms`: /health says 503 while the listeners still accept,
        // so that load balancers take this node out before it stops accepting.
        let notice = Duration::from_millis(self.config.shutdown.drain_notice_ms).min(grace);
        if !notice.is_zero() {
            tracing::info!(notice_ms = notice.as_millis() as u64, "draining: /health answers 503");
            std::thread::sleep(notice);
        }
        self.plain.close();
        if let Some(a) = self.admin.as_mut() {
            a.close();
        }
        if let Some(t) = self.tls.as_mut() {
            t.close();
        }
        if let Some(d) = &self.dns {
            d.close();
        }
        let r = self.stream.drain(grace);
        // Out of the member list at once, rather than when the registration expires.
        if let Some(cl) = &self.cluster {
            cl.stop();
        }
        // Leave the reactor a moment to flush what the streams' close packets left in
        // their buffers, within the grace period.
        let left = grace.saturating_sub(start.elapsed()).max(Duration::from_millis(100));
        self.reactor.shutdown(left);
        self.pool.stop_drain(grace.saturating_sub(start.elapsed()));
        self.pool.wait();
        let report = DrainReport {
            streams: r.streams,
            left_open: r.left_open,
            messages_unsent: r.messages_unsent,
            took: start.elapsed(),
        };
        tracing::info!(
            streams = report.streams,
            left_open = report.left_open,
            messages_unsent = report.messages_unsent,
            took_ms = report.took.as_millis() as u64,
            "stopped"
        );
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `section.key` for every key of the embedded file (an array of tables is one key).
    fn file_keys(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (k, v) in table {
            let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
            match v {
                toml::Value::Table(t) => file_keys(&key, t, out),
                _ => out.push(key),
            }
        }
    }

    #[test]
    fn every_key_of_the_file_has_its_builder_method() {
        let table: toml::Table = crate::DEFAULT_CONFIG.parse().unwrap();
        let mut keys = Vec::new();
        file_keys("", &table, &mut keys);
        // dns.records is an (empty) array in the file, commented out when empty: accept
        // either.
        for k in &keys {
            assert!(KEYS.contains(&k.as_str()), "no builder method for {k}");
        }
        assert!(keys.len() >= 80, "the file lists {} keys", keys.len());
        // And every method names a key that exists: it round-trips through the parser.
        for k in KEYS {
            let (section, key) = k.rsplit_once('.').unwrap();
            let text = format!("[{section}]\n{key} = 0\n");
            if let Err(ConfigError::Parse(m)) = Config::from_toml(&text) {
                assert!(!m.contains("unknown field"), "{k}: {m}");
            }
        }
    }

    #[test]
    fn http_keys_reach_the_http_config() {
        let c = Config::from_toml(
            "[http]\nhalf_close = true\nmax_requests_per_connection = 7\nserver_name = \"\"\n",
        )
        .unwrap();
        let h = http_config(&c);
        assert!(h.half_close);
        assert_eq!(h.max_requests_per_connection, Some(7));
        assert_eq!(h.server_name, None);
        let d = http_config(&Config::default());
        assert!(!d.half_close);
        assert_eq!(d.max_requests_per_connection, None);
        assert_eq!(d.server_name.as_deref(), Some("dap"));
    }
}
