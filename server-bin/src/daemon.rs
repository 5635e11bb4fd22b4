//! [`Daemon`]: the reactor, the proc pool, the HTTP listeners with every route, the
//! optional TLS listener and DNS server, wired from a [`Config`]; and the drain that stops
//! it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dap_net::dns::{DnsServer, ServerConfig as DnsConfig, Zone};
use dap_net::enc::allow_list::AllowList;
use dap_net::enc::keys::{PUBLIC_KEY_LEN, public_key_to_base64};
use dap_net::enc::{ClientAuth, EncConfig, EncServer, NodeKey};
use dap_net::http::Response;
use dap_net::http::server::{HttpConfig, HttpServer, RouteLimits};
use dap_net::server::{AccessList, Server};
use dap_proc::ProcPool;
use dap_reactor::{Limits, ListenerMode, Reactor};
use dap_stream::pubsub::{self, Broker, BrokerConfig};
use dap_stream::session::SessionLimits;
use dap_stream::udp::congestion::ControllerConfig;
use dap_stream::udp::endpoint::EndpointConfig;
use dap_stream::{ChannelProcs, MuxConfig, StreamConfig, StreamServer};

use crate::config::{ClientAuthSetting, Config, ConfigError, ListenerModeSetting};
use crate::metrics::{self, Sources};

/// The health route.
pub const HEALTH_PATH: &str = "/health";
/// The metrics route.
pub const METRICS_PATH: &str = "/metrics";

/// Why the daemon did not start.
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
        /// `reactor` or `proc pool`.
        what: &'static str,
        /// Why.
        source: std::io::Error,
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

fn setting(key: &'static str, problem: impl ToString) -> StartError {
    StartError::Setting { key, problem: problem.to_string() }
}

/// What a drain did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Streams open when the drain began.
    pub streams: usize,
    /// Streams still open at the end of the grace period (closed without a CLOSE packet).
    pub left_open: usize,
    /// How long the drain took.
    pub took: Duration,
}

/// A running dapd.
pub struct Daemon {
    reactor: Reactor,
    pool: ProcPool,
    stream: StreamServer,
    enc: EncServer,
    broker: Arc<Broker>,
    plain: Server,
    tls: Option<Server>,
    dns: Option<Arc<DnsServer>>,
    local_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    udp_addr: Option<SocketAddr>,
    sources: Arc<Sources>,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
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
    limits.inbox_capacity = l.inbox_capacity;
    limits.pool_buffers = l.pool_buffers;
    limits.buf_cap_max = l.buf_cap_max;
    limits.udp_out_queue = l.udp_out_queue;
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

fn enc_config(c: &Config) -> Result<EncConfig, StartError> {
    let e = &c.enc;
    let mut config = EncConfig::default();
    config.store.max_keys = e.max_keys;
    config.store.idle_ttl = Duration::from_secs(e.key_idle_ttl_s);
    config.store.max_age = Duration::from_secs(e.key_max_age_s);
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

/// The routes every listener serves.
fn routes(
    http: &mut HttpServer,
    enc: &EncServer,
    stream: &StreamServer,
    sources: &Arc<Sources>,
    draining: &Arc<AtomicBool>,
) {
    enc.install(http);
    stream.install(http, enc);
    let d = draining.clone();
    http.add_inline(HEALTH_PATH, RouteLimits::methods(&["GET", "HEAD"]), move |_| {
        if d.load(Ordering::Relaxed) {
            Response::text(503, "draining\n")
        } else {
            Response::text(200, "ok\n")
        }
    });
    let s = sources.clone();
    http.add_inline(METRICS_PATH, RouteLimits::methods(&["GET", "HEAD"]), move |_| {
        Response::new(200).header("Content-Type", metrics::CONTENT_TYPE).body(metrics::render(&s))
    });
}

impl Daemon {
    /// Starts everything `config` asks for and returns once every listener is bound.
    ///
    /// # Errors
    /// [`StartError`], naming the key at fault where there is one.
    pub fn start(config: Config) -> Result<Daemon, StartError> {
        config.validate()?;
        if let Err(e) = dap_reactor::raise_fd_limit() {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
        let node = node_key(&config)?;
        let enc_config = enc_config(&config)?;
        let acl = access_list(&config)?;
        let tls_config = if config.tls.enabled {
            let t = &config.tls;
            Some(
                dap_net::tls::server_config(Path::new(&t.cert), Path::new(&t.key))
                    .map_err(|e| setting("tls.cert", e))?,
            )
        } else {
            None
        };
        let zone = if config.dns.enabled { Some(zone(&config)?) } else { None };

        let reactor = reactor(&config)?;
        let pool = proc_pool(&config, &reactor)?;
        let p = &config.pubsub;
        let broker = Broker::new(BrokerConfig {
            max_topics: p.max_topics,
            max_subscribers_per_topic: p.max_subscribers_per_topic,
            max_subscriptions_per_session: p.max_subscriptions_per_session,
            max_topic_len: p.max_topic_len,
        });
        let mut procs = ChannelProcs::new();
        dap_stream::echo::register(&mut procs);
        pubsub::register(&mut procs, broker.clone());
        let enc = EncServer::new(node, enc_config);
        sweep_keys(&reactor, &enc);
        let stream = StreamServer::new(procs, stream_config(&config));
        let draining = Arc::new(AtomicBool::new(false));
        let sources = Arc::new(Sources {
            workers: reactor.workers().to_vec(),
            procs: pool.threads().to_vec(),
            stream: stream.clone(),
            enc: enc.clone(),
            broker: broker.clone(),
            http: OnceLock::new(),
            dns: OnceLock::new(),
            draining: draining.clone(),
        });

        let mut http = HttpServer::new(http_config(&config));
        routes(&mut http, &enc, &stream, &sources, &draining);
        let (factory, plain_stats) = http.into_factory(reactor.len());
        let addr = config.listen.addr;
        let plain = Server::builder()
            .tcp(addr)
            .access_list(acl.clone())
            .start(&reactor, factory)
            .map_err(|source| StartError::Listen { key: "listen.addr", addr, source })?;
        let local_addr = plain.tcp_addrs().first().copied().unwrap_or(addr);
        let mut http_stats = vec![("plain", plain_stats)];

        let mut tls = None;
        let mut tls_addr = None;
        if let Some(tls_config) = tls_config {
            let mut https = HttpServer::new(http_config(&config));
            https.tls(tls_config);
            routes(&mut https, &enc, &stream, &sources, &draining);
            let (factory, stats) = https.into_factory(reactor.len());
            let addr = config.tls.addr;
            let server = Server::builder()
                .tcp(addr)
                .access_list(acl)
                .start(&reactor, factory)
                .map_err(|source| StartError::Listen { key: "tls.addr", addr, source })?;
            tls_addr = server.tcp_addrs().first().copied();
            tls = Some(server);
            http_stats.push(("tls", stats));
        }
        let _ = sources.http.set(http_stats);

        let udp_addr = if config.udp.enabled {
            let addr = config.udp.bind_addr(local_addr).map_err(|e| setting("udp.addr", e))?;
            let bound = stream
                .serve_udp(&reactor, addr)
                .map_err(|e| setting("udp.addr", format!("{addr}: {e}")))?;
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
        tracing::info!(
            addr = %local_addr,
            tls = ?tls_addr,
            udp = ?udp_addr,
            dns = ?dns.as_ref().map(|d| d.local_addr()),
            workers = reactor.len(),
            node_key = %public_key_to_base64(&enc.node_public_key()),
            "dapd serving"
        );
        Ok(Daemon {
            reactor,
            pool,
            stream,
            enc,
            broker,
            plain,
            tls,
            dns,
            local_addr,
            tls_addr,
            udp_addr,
            sources,
            draining,
        })
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

    /// The pub/sub broker.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
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
    /// queued. Whatever is still open when `grace` has passed is closed.
    pub fn drain_and_stop(mut self, grace: Duration) -> DrainReport {
        let start = Instant::now();
        self.draining.store(true, Ordering::SeqCst);
        tracing::info!(grace_ms = grace.as_millis() as u64, "draining");
        self.plain.close();
        if let Some(t) = self.tls.as_mut() {
            t.close();
        }
        if let Some(d) = &self.dns {
            d.close();
        }
        let r = self.stream.drain(grace);
        // Leave the reactor a moment to flush what the streams' close packets left in
        // their buffers, within the grace period.
        let left = grace.saturating_sub(start.elapsed()).max(Duration::from_millis(100));
        self.reactor.shutdown(left);
        self.pool.stop_drain(grace.saturating_sub(start.elapsed()));
        self.pool.wait();
        let report =
            DrainReport { streams: r.streams, left_open: r.left_open, took: start.elapsed() };
        tracing::info!(
            streams = report.streams,
            left_open = report.left_open,
            took_ms = report.took.as_millis() as u64,
            "stopped"
        );
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
