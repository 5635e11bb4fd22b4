//! `GET /metrics`: every counter the daemon's parts keep, in the Prometheus text exposition
//! format 0.0.4.
//!
//! The numbers already live in the parts' own counters (worker stats, proc stats, HTTP,
//! enc, stream and pub/sub snapshots), so this module only formats snapshots; a metrics
//! crate would want its own registered counters and double the bookkeeping. Names start
//! with `dap_`; counters end in `_total`; per-worker and per-thread values carry a
//! `worker` or `thread` label, errors a `kind` label.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::OnceLock;

use dap_net::dns::DnsServer;
use dap_net::enc::EncServer;
use dap_net::http::server::HttpStats;
use dap_net::limit::ConnLimiter;
use dap_net::server::ServerStats;
use dap_proc::{Priority, ProcThread};
use dap_reactor::{EsocketKind, Worker};
use dap_stream::pubsub::{Broker, PubSubStatsSnapshot};
use dap_stream::{ChannelStatsSnapshot, StreamServer};

/// The content type of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Listener counters by name (`plain`, `tls`), and the connection limits they share.
pub type Listeners = (Vec<(&'static str, Arc<ServerStats>)>, Arc<ConnLimiter>);

/// Where the numbers come from.
pub struct Sources {
    /// The reactor's workers.
    pub workers: Vec<Worker>,
    /// The reactor's buffer memory and its bound (`reactor.limits.buffer_budget`).
    pub buffers: Arc<dap_reactor::BufferBudget>,
    /// Times free heap was given back to the kernel (`reactor.release_memory_above`).
    pub memory_released: Arc<std::sync::atomic::AtomicU64>,
    /// The proc threads.
    pub procs: Vec<ProcThread>,
    /// The stream server.
    pub stream: StreamServer,
    /// The enc server.
    pub enc: EncServer,
    /// The pub/sub broker, when the built-in channels are on.
    pub broker: Option<Arc<Broker>>,
    /// HTTP counters per listener (`plain`, `tls`), set once the listeners are up.
    pub http: OnceLock<Vec<(&'static str, Arc<HttpStats>)>>,
    /// The DNS server, when there is one.
    pub dns: OnceLock<Arc<DnsServer>>,
    /// Listener counters (`plain`, `tls`) and the connection limits they share, set once
    /// the listeners are up.
    pub listeners: OnceLock<Listeners>,
    /// Whether the daemon is draining.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// The node's cluster link, if any.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").field("workers", &self.workers.len()).finish_non_exhaustive()
    }
}

/// Writes families: `# HELP`, `# TYPE`, then samples.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<f64>) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                // Label values here are ours (numbers, fixed words, and channel ids escaped by
                // `channel_label`).
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", value.into());
    }

    /// A family with one unlabelled sample.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value as f64);
    }

    /// A family with one sample per `(label value, value)` under label `label`.
    fn by(&mut self, name: &str, kind: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        self.family(name, kind, help);
        for (l, v) in values {
            self.sample(name, &[(label, l)], *v as f64);
        }
    }
}

/// Renders every family.
pub fn render(src: &Sources) -> String {
    let mut o = Out(String::with_capacity(8 << 10));
    let draining = src.draining.load(std::sync::atomic::Ordering::Relaxed);
    o.one("dap_up", "gauge", "1 while the daemon runs.", 1);
    o.family("dap_build_info", "gauge", "The build: always 1, the version as a label.");
    o.sample("dap_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    process(&mut o);
    o.one("dap_draining", "gauge", "1 while the daemon drains for shutdown.", draining as u64);
    workers(&mut o, src);
    buffers(&mut o, src);
    if let Some(c) = &src.cluster {
        cluster(&mut o, c);
    }
    procs(&mut o, src);
    if let Some((listeners, limiter)) = src.listeners.get() {
        connections(&mut o, listeners, limiter);
    }
    if let Some(http) = src.http.get() {
        http_families(&mut o, http);
    }
    enc(&mut o, &src.enc);
    stream(&mut o, src);
    histogram(
        &mut o,
        "dap_enc_init_seconds",
        "Time to answer /enc_init (the handshake's work on its thread).",
        &src.enc.init_latency(),
    );
    histogram(
        &mut o,
        "dap_stream_setup_seconds",
        "Time from a session's stream_ctl to its stream attaching, over HTTP and UDP.",
        &src.stream.setup_latency(),
    );
    channels(&mut o, src);
    udp(&mut o, src);
    if let Some(broker) = &src.broker {
        pubsub(&mut o, &broker.stats());
    }
    if let Some(dns) = src.dns.get() {
        let s = dns.stats();
        o.one("dap_dns_queries_total", "counter", "DNS datagrams received.", s.received);
        o.by(
            "dap_dns_replies_total",
            "counter",
            "DNS replies sent, by outcome.",
            "kind",
            &[
                ("answer", s.answers),
                ("nodata", s.nodata),
                ("nxdomain", s.nxdomain),
                ("refused", s.refused),
                ("formerr", s.formerr),
                ("notimp", s.notimp),
                ("badvers", s.badvers),
                ("truncated", s.truncated),
            ],
        );
        o.by(
            "dap_dns_errors_total",
            "counter",
            "DNS datagrams dropped or replies not sent.",
            "kind",
            &[("dropped", s.dropped), ("send_failed", s.send_failed)],
        );
    }
    o.0
}

/// The process families every Prometheus exporter has, from `/proc/self` (Linux; a
/// family whose source cannot be read is left out).
fn process(o: &mut Out) {
    // Kernel clock ticks: USER_HZ, 100 on every Linux ABI that dap runs on.
    const TICKS: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    // Fields after the command name (which may hold spaces, so split after its ')').
    let fields: Vec<&str> = stat
        .as_deref()
        .and_then(|s| s.rsplit_once(')'))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        o.family("process_cpu_seconds_total", "counter", "User and system CPU time, seconds.");
        o.sample("process_cpu_seconds_total", &[], (utime + stime) / TICKS);
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok()))
    });
    if let (Some(boot), Some(start)) = (boot, field(22)) {
        o.family("process_start_time_seconds", "gauge", "Start time, seconds since the epoch.");
        o.sample("process_start_time_seconds", &[], boot + start / TICKS);
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok()
        })
    };
    if let Some(rss) = kib("VmRSS:") {
        o.family("process_resident_memory_bytes", "gauge", "Resident memory, bytes.");
        o.sample("process_resident_memory_bytes", &[], rss * 1024.0);
    }
    if let Some(vsz) = kib("VmSize:") {
        o.family("process_virtual_memory_bytes", "gauge", "Virtual memory, bytes.");
        o.sample("process_virtual_memory_bytes", &[], vsz * 1024.0);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        o.one("process_open_fds", "gauge", "Open file descriptors.", dir.count() as u64);
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let max = limits.lines().find_map(|l| {
        l.strip_prefix("Max open files")?.split_whitespace().next()?.parse::<u64>().ok()
    });
    if let Some(max) = max {
        o.one("process_max_fds", "gauge", "The open file descriptor limit.", max);
    }
}

/// A histogram family from a snapshot.
fn histogram(o: &mut Out, name: &str, help: &str, h: &dap_net::histogram::HistogramSnapshot) {
    histogram_of(o, name, help, h.buckets.iter().copied(), h.sum_seconds, h.count);
}

/// A histogram family from cumulative `(upper bound, count)` buckets (the last bound
/// infinite), their sum and count.
fn histogram_of(
    o: &mut Out,
    name: &str,
    help: &str,
    buckets: impl Iterator<Item = (f64, u64)>,
    sum: f64,
    count: u64,
) {
    o.family(name, "histogram", help);
    let bucket = format!("{name}_bucket");
    for (le, n) in buckets {
        let le = if le.is_infinite() { "+Inf".to_string() } else { le.to_string() };
        o.sample(&bucket, &[("le", &le)], n as f64);
    }
    o.sample(&format!("{name}_sum"), &[], sum);
    o.sample(&format!("{name}_count"), &[], count as f64);
}

/// A channel id as a label value: the printable ASCII character, `"` and `\` escaped.
fn channel_label(id: u8) -> String {
    match id {
        b'"' => "\\\"".to_string(),
        b'\\' => "\\\\".to_string(),
        _ => char::from(id).to_string(),
    }
}

/// Per channel id (built-in and the application's own), over every session.
fn channels(o: &mut Out, src: &Sources) {
    let stats = src.stream.procs().stats();
    let labels: Vec<String> = stats.iter().map(|(id, _)| channel_label(*id)).collect();
    let each = |o: &mut Out, name: &str, f: &dyn Fn(&ChannelStatsSnapshot) -> u64| {
        for ((_, s), l) in stats.iter().zip(&labels) {
            o.sample(name, &[("channel", l)], f(s) as f64);
        }
    };
    o.family("dap_channel_sessions_total", "counter", "Sessions that opened the channel.");
    each(o, "dap_channel_sessions_total", &|s| s.sessions);
    o.family("dap_channel_open", "gauge", "Sessions that have the channel open now.");
    each(o, "dap_channel_open", &|s| s.open);
    let both =
        |o: &mut Out, name: &str, help: &str, f: &dyn Fn(&ChannelStatsSnapshot) -> (u64, u64)| {
            o.family(name, "counter", help);
            for ((_, s), l) in stats.iter().zip(&labels) {
                let (i, out) = f(s);
                o.sample(name, &[("channel", l), ("direction", "in")], i as f64);
                o.sample(name, &[("channel", l), ("direction", "out")], out as f64);
            }
        };
    both(o, "dap_channel_messages_total", "Whole messages, by channel and direction.", &|s| {
        (s.messages_in, s.messages_out)
    });
    both(o, "dap_channel_bytes_total", "Message bytes, by channel and direction.", &|s| {
        (s.bytes_in, s.bytes_out)
    });
}

fn workers(o: &mut Out, src: &Sources) {
    let stats: Vec<_> = src.workers.iter().map(Worker::stats).collect();
    let names: Vec<String> = stats.iter().map(|s| s.worker.to_string()).collect();
    let mut per =
        |name: &str, kind: &str, help: &str, f: &dyn Fn(&dap_reactor::WorkerStats) -> f64| {
            o.family(name, kind, help);
            for (s, w) in stats.iter().zip(&names) {
                o.sample(name, &[("worker", w)], f(s));
            }
        };
    per("dap_connections", "gauge", "Open TCP and Unix connections, per worker.", &|s| {
        (s.esockets_of(EsocketKind::Tcp) + s.esockets_of(EsocketKind::Unix)) as f64
    });
    per("dap_esockets", "gauge", "Live esockets of every kind, per worker.", &|s| {
        s.esockets_total() as f64
    });
    per("dap_connections_accepted_total", "counter", "Connections accepted, per worker.", &|s| {
        s.accepted as f64
    });
    per("dap_worker_received_bytes_total", "counter", "Bytes read, per worker.", &|s| {
        s.bytes_in as f64
    });
    per("dap_worker_sent_bytes_total", "counter", "Bytes written, per worker.", &|s| {
        s.bytes_out as f64
    });
    per("dap_worker_loop_turns_total", "counter", "Event loop turns, per worker.", &|s| {
        s.loop_turns as f64
    });
    per("dap_worker_busy_seconds_total", "counter", "Time spent working, per worker.", &|s| {
        s.busy_ns as f64 / 1e9
    });
    per("dap_worker_inbox_depth", "gauge", "Messages waiting in the worker's inbox.", &|s| {
        s.inbox_depth as f64
    });
    o.family("dap_worker_errors_total", "counter", "Esockets closed or messages dropped, by kind.");
    for (s, w) in stats.iter().zip(&names) {
        for (kind, v) in [
            ("idle_closed", s.idle_closed),
            ("overflow_closed", s.overflow_closed),
            ("accept_dropped", s.accept_dropped),
            ("accept_failed", s.accept_failed),
            ("budget_closed", s.budget_closed),
            ("budget_refused", s.budget_refused),
            ("dropped_dead", s.dropped_dead),
            ("handler_panic", s.handler_panics),
        ] {
            o.sample("dap_worker_errors_total", &[("worker", w), ("kind", kind)], v as f64);
        }
    }
}

fn procs(o: &mut Out, src: &Sources) {
    let stats: Vec<_> = src.procs.iter().map(ProcThread::stats).collect();
    let names: Vec<String> = stats.iter().map(|s| s.thread.to_string()).collect();
    o.family(
        "dap_proc_queue_depth",
        "gauge",
        "Jobs queued or running, per proc thread and priority.",
    );
    for (s, t) in stats.iter().zip(&names) {
        for p in Priority::ALL {
            let label = format!("{p:?}").to_ascii_lowercase();
            let v = s.depth[p.index()] as f64;
            o.sample("dap_proc_queue_depth", &[("thread", t), ("priority", &label)], v);
        }
    }
    o.family("dap_proc_jobs_total", "counter", "Job runs, per proc thread.");
    for (s, t) in stats.iter().zip(&names) {
        o.sample("dap_proc_jobs_total", &[("thread", t)], s.jobs_run as f64);
    }
    o.family("dap_proc_errors_total", "counter", "Jobs that panicked or were cancelled.");
    for (s, t) in stats.iter().zip(&names) {
        o.sample("dap_proc_errors_total", &[("thread", t), ("kind", "panic")], s.panics as f64);
        o.sample(
            "dap_proc_errors_total",
            &[("thread", t), ("kind", "cancelled")],
            s.cancelled as f64,
        );
    }
}

fn http_families(o: &mut Out, http: &[(&'static str, Arc<HttpStats>)]) {
    let snaps: Vec<_> = http.iter().map(|(l, s)| (*l, s.snapshot())).collect();
    o.family("dap_http_requests_total", "counter", "HTTP requests, per listener.");
    for (l, s) in &snaps {
        o.sample("dap_http_requests_total", &[("listener", l)], s.requests as f64);
    }
    o.family("dap_http_responses_total", "counter", "HTTP responses, by status class.");
    for (l, s) in &snaps {
        for (class, v) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().zip(s.responses) {
            o.sample("dap_http_responses_total", &[("listener", l), ("class", class)], v as f64);
        }
    }
    o.family("dap_http_upgrades_total", "counter", "Connections upgraded to streams.");
    for (l, s) in &snaps {
        o.sample("dap_http_upgrades_total", &[("listener", l)], s.upgrades as f64);
    }
    o.family(
        "dap_http_rate_paused_total",
        "counter",
        "Requests that waited for their turn: their source was over http.request_rate.",
    );
    for (l, s) in &snaps {
        o.sample("dap_http_rate_paused_total", &[("listener", l)], s.rate_paused as f64);
    }
    o.family(
        "dap_http_rate_refused_total",
        "counter",
        "Requests answered 429: their source was over http.request_rate with request_burst \
         requests waiting already.",
    );
    for (l, s) in &snaps {
        o.sample("dap_http_rate_refused_total", &[("listener", l)], s.rate_refused as f64);
    }
    o.family("dap_http_errors_total", "counter", "HTTP faults, by kind.");
    for (l, s) in &snaps {
        for (kind, v) in [
            ("bad_request", s.bad_requests),
            ("timeout", s.timeouts),
            ("overloaded", s.overloaded),
            ("handler_panic", s.handler_panics),
            ("closed_early", s.closed_early),
        ] {
            o.sample("dap_http_errors_total", &[("listener", l), ("kind", kind)], v as f64);
        }
    }
}

fn connections(o: &mut Out, listeners: &[(&str, Arc<ServerStats>)], limiter: &ConnLimiter) {
    use std::sync::atomic::Ordering::Relaxed;
    o.one(
        "dap_connections_limited",
        "gauge",
        "Connections held on the HTTP and TLS listeners, what listen.max_connections bounds.",
        limiter.held() as u64,
    );
    o.family(
        "dap_connections_refused_total",
        "counter",
        "Connections closed at accept, by listener and reason (the access list, or a \
         connection limit).",
    );
    for (l, s) in listeners {
        for (reason, v) in
            [("access_list", s.refused.load(Relaxed)), ("limit", s.limited.load(Relaxed))]
        {
            o.sample(
                "dap_connections_refused_total",
                &[("listener", l), ("reason", reason)],
                v as f64,
            );
        }
    }
    let (total, per_source) = limiter.refused();
    o.by(
        "dap_connection_limit_refusals_total",
        "counter",
        "Connections refused at a limit, by which (both listeners together).",
        "limit",
        &[("total", total), ("per_source", per_source)],
    );
}

fn enc(o: &mut Out, enc: &EncServer) {
    let s = enc.stats();
    o.by(
        "dap_enc_handshakes_total",
        "counter",
        "enc_init handshakes, by result.",
        "result",
        &[("ok", s.handshakes_ok), ("refused", s.handshakes_failed)],
    );
    o.one("dap_enc_requests_total", "counter", "enc_http requests answered.", s.requests_ok);
    o.by(
        "dap_enc_errors_total",
        "counter",
        "enc refusals, by kind.",
        "kind",
        &[
            ("forbidden", s.handshakes_forbidden),
            ("rate_limited", s.handshakes_rate_limited),
            ("busy", s.handshakes_busy),
            ("unknown_key", s.unknown_key),
            ("expired_key", s.expired_key),
            ("malformed", s.malformed),
            ("auth", s.auth_failures),
            ("replay", s.replays),
            ("handler_failure", s.handler_failures),
        ],
    );
    o.one("dap_enc_keys", "gauge", "Keys in the key store.", s.keys_live as u64);
    o.one(
        "dap_enc_keys_used",
        "gauge",
        "Keys in the key store that a request has used (never evicted for new keys).",
        s.keys_used as u64,
    );
    o.by(
        "dap_enc_keys_removed_total",
        "counter",
        "Keys removed from the store, by reason.",
        "reason",
        &[("evicted", s.keys_evicted), ("expired", s.keys_expired)],
    );
}

fn udp(o: &mut Out, src: &Sources) {
    let Some(u) = src.stream.udp_counters() else { return };
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    o.by(
        "dap_udp_datagrams_total",
        "counter",
        "UDP datagrams of stream sessions, by direction.",
        "direction",
        &[("in", get(&u.datagrams_in)), ("out", get(&u.datagrams_out))],
    );
    o.by(
        "dap_udp_connections_total",
        "counter",
        "UDP connections, by event (attached: a session's first datagram arrived).",
        "event",
        &[("attached", get(&u.attached)), ("closed", get(&u.closed))],
    );
    o.one(
        "dap_udp_connections_active",
        "gauge",
        "UDP connections open.",
        get(&u.attached).saturating_sub(get(&u.closed)),
    );
    o.one(
        "dap_udp_forwarded_total",
        "counter",
        "Datagrams that reached another worker than their connection's, handed over.",
        get(&u.forwarded),
    );
    o.by(
        "dap_udp_errors_total",
        "counter",
        "UDP datagrams dropped, by kind (not_dap: too short or other form bits; \
         unknown_connection: an id nothing here or in the cluster knows).",
        "kind",
        &[
            ("forward_failed", get(&u.forward_failed)),
            ("attach_failed", get(&u.attach_failed)),
            ("send_failed", get(&u.send_failed)),
            ("not_dap", get(&u.not_ours)),
            ("unknown_connection", get(&u.unknown_connection)),
            ("cluster_missed", get(&u.cluster_missed)),
            ("cluster_dropped", get(&u.cluster_dropped)),
        ],
    );
    o.one(
        "dap_udp_cluster_taken_total",
        "counter",
        "UDP sessions made on another node of the cluster, taken from Redis for their first \
         datagram here.",
        get(&u.cluster_taken),
    );
    o.family("dap_udp_gso_fallbacks_total", "counter", "Sockets whose kernel refused GSO.");
    for (i, w) in src.workers.iter().enumerate() {
        let n = w.stats().gso_fallbacks as f64;
        o.sample("dap_udp_gso_fallbacks_total", &[("worker", &i.to_string())], n);
    }
    if let Some(c) = src.stream.udp_conn_stats() {
        udp_connections(o, &c);
    }
}

/// What the UDP connections did, as the workers last published it (once a second).
fn udp_connections(o: &mut Out, c: &dap_stream::transport::udp::UdpConnStats) {
    let t = &c.totals;
    o.by(
        "dap_udp_packets_total",
        "counter",
        "UDP transport packets, by direction (each worker publishes once a second).",
        "direction",
        &[("in", t.packets_in), ("out", t.packets_out)],
    );
    o.by(
        "dap_udp_bytes_total",
        "counter",
        "UDP payload bytes of the transport's packets, by direction.",
        "direction",
        &[("in", t.bytes_in), ("out", t.bytes_out)],
    );
    o.by(
        "dap_udp_lost_packets_total",
        "counter",
        "Packets declared lost (spurious: later acknowledged after all, reordering).",
        "kind",
        &[("lost", t.lost), ("spurious", t.spurious_losses)],
    );
    o.one(
        "dap_udp_acks_sent_total",
        "counter",
        "ACK frames sent (thinned to about eight per round trip while a peer sends steadily).",
        t.acks_sent,
    );
    o.one(
        "dap_udp_retransmitted_bytes_total",
        "counter",
        "Channel data bytes sent again after a loss.",
        t.retransmitted,
    );
    o.by(
        "dap_udp_congestion_events_total",
        "counter",
        "Probe timeouts, persistent congestion, and ACKs reporting new ECN CE marks.",
        "kind",
        &[("pto", t.ptos), ("persistent", t.persistent_congestion), ("ecn_ce", t.ce_acks)],
    );
    o.by(
        "dap_udp_path_validations_total",
        "counter",
        "Peer address changes: started (an authentic packet from a new address), validated \
         (the connection moved there).",
        "result",
        &[("started", t.path_changes), ("validated", t.migrations)],
    );
    o.by(
        "dap_udp_key_updates_total",
        "counter",
        "Packet key updates, by the end that made them.",
        "by",
        &[("local", t.key_updates_sent), ("peer", t.key_updates_received)],
    );
    o.by(
        "dap_udp_dropped_packets_total",
        "counter",
        "Packets dropped by connections, by reason.",
        "reason",
        &[
            ("auth", t.auth_failed),
            ("malformed", t.malformed),
            ("duplicate", t.duplicates),
            ("reorder", t.reorder_drops),
        ],
    );
    o.one(
        "dap_udp_cwnd_bytes",
        "gauge",
        "Congestion windows of the open UDP connections, summed.",
        c.cwnd_bytes,
    );
    let bounds = dap_stream::transport::udp::RTT_BUCKETS.into_iter().chain([f64::INFINITY]);
    let cumulative = c.rtt_buckets.iter().scan(0, |sum, n| {
        *sum += n;
        Some(*sum)
    });
    histogram_of(
        o,
        "dap_udp_rtt_seconds",
        "Smoothed RTT of each open UDP connection, observed once a second.",
        bounds.zip(cumulative),
        c.rtt_sum_seconds,
        c.rtt_count,
    );
}

fn cluster(o: &mut Out, c: &crate::cluster::Cluster) {
    use std::sync::atomic::Ordering::Relaxed;
    let s = c.stats();
    o.one(
        "dap_cluster_up",
        "gauge",
        "1 while Redis answers; 0: the node serves alone (degraded).",
        c.is_up() as u64,
    );
    o.one(
        "dap_cluster_members",
        "gauge",
        "Nodes in the member list (this one included).",
        c.members().len() as u64,
    );
    o.family(
        "dap_cluster_member",
        "gauge",
        "A node of the cluster: always 1, its name and address as labels.",
    );
    for m in c.members() {
        o.sample("dap_cluster_member", &[("name", &m.name), ("addr", &m.addr)], 1.0);
    }
    o.one(
        "dap_cluster_redis_errors_total",
        "counter",
        "Redis calls that failed or were not made while reconnecting.",
        s.redis_errors.load(Relaxed),
    );
    o.one(
        "dap_cluster_redis_connects_total",
        "counter",
        "Connections made to Redis.",
        s.connects.load(Relaxed),
    );
    o.by(
        "dap_cluster_keys_total",
        "counter",
        "enc keys shared through Redis.",
        "op",
        &[
            ("published", s.keys_published.load(Relaxed)),
            ("fetched", s.keys_fetched.load(Relaxed)),
            ("missed", s.keys_missed.load(Relaxed)),
        ],
    );
    o.by(
        "dap_cluster_sessions_total",
        "counter",
        "Sessions shared through Redis.",
        "op",
        &[
            ("published", s.sessions_published.load(Relaxed)),
            ("taken", s.sessions_taken.load(Relaxed)),
            ("missed", s.sessions_missed.load(Relaxed)),
        ],
    );
    o.by(
        "dap_cluster_relay_total",
        "counter",
        "pub/sub messages relayed between nodes.",
        "dir",
        &[
            ("out", s.relayed_out.load(Relaxed)),
            ("in", s.relayed_in.load(Relaxed)),
            ("dropped", s.relay_dropped.load(Relaxed)),
        ],
    );
    o.one(
        "dap_cluster_replays_total",
        "counter",
        "enc requests refused: another node served the same request number.",
        s.replays.load(Relaxed),
    );
    o.one("dap_cluster_bad_values_total", "counter", "Redis values that did not open under the cluster key, or relayed messages that did not decode.", s.bad_values.load(Relaxed));
}

fn buffers(o: &mut Out, src: &Sources) {
    let b = &src.buffers;
    o.one(
        "dap_buffer_bytes",
        "gauge",
        "Input and output buffer bytes all connections hold (reactor.limits.buffer_budget bounds it).",
        b.used() as u64,
    );
    o.one(
        "dap_buffer_budget_bytes",
        "gauge",
        "reactor.limits.buffer_budget (0: no bound).",
        b.limit() as u64,
    );
    o.one(
        "dap_buffer_peak_bytes",
        "gauge",
        "The most buffer bytes held at once since start.",
        b.peak() as u64,
    );
    o.one(
        "dap_buffer_budget_closed_total",
        "counter",
        "Connections closed for holding a partial message past the buffer budget.",
        b.closed(),
    );
    o.one(
        "dap_buffer_budget_refused_total",
        "counter",
        "Connections refused at accept while the buffer budget was exhausted.",
        b.refused_accepts(),
    );
    o.one(
        "dap_buffer_budget_write_refusals_total",
        "counter",
        "Writes held back to the low-water mark because the buffer budget was short.",
        b.write_refusals(),
    );
    o.one(
        "dap_memory_released_total",
        "counter",
        "Times free heap was given back to the kernel (reactor.release_memory_above).",
        src.memory_released.load(std::sync::atomic::Ordering::Relaxed),
    );
}

fn stream(o: &mut Out, src: &Sources) {
    let b = src.stream.reassembly_budget();
    o.one(
        "dap_stream_reassembly_bytes",
        "gauge",
        "Bytes held in unfinished messages, all sessions (stream.max_reassembly bounds it).",
        b.used() as u64,
    );
    o.one(
        "dap_stream_reassembly_refused_total",
        "counter",
        "Streams closed with code 4: an unfinished message did not fit stream.max_reassembly.",
        b.refused(),
    );
    let s = src.stream.stats();
    o.by(
        "dap_stream_sessions_total",
        "counter",
        "Stream sessions, by event.",
        "event",
        &[
            ("created", s.sessions_created),
            ("attached", s.sessions_attached),
            ("expired", s.sessions_expired),
        ],
    );
    o.one(
        "dap_stream_sessions_active",
        "gauge",
        "Sessions held, pending and attached.",
        src.stream.table().len() as u64,
    );
    let per_worker = src.stream.live_streams_by_worker(src.workers.len());
    o.family("dap_stream_streams_open", "gauge", "Open streams, per worker.");
    for (w, n) in per_worker.iter().enumerate() {
        o.sample("dap_stream_streams_open", &[("worker", &w.to_string())], *n as f64);
    }
    o.one("dap_stream_streams_closed_total", "counter", "Streams that ended.", s.streams_closed);
    o.one(
        "dap_stream_channels_open",
        "gauge",
        "Channels of the open streams.",
        src.stream.live_channels() as u64,
    );
    o.by(
        "dap_stream_packets_total",
        "counter",
        "Stream packets, by direction.",
        "direction",
        &[("in", s.packets_in), ("out", s.packets_out)],
    );
    o.by(
        "dap_stream_bytes_total",
        "counter",
        "Stream bytes (whole packets), by direction.",
        "direction",
        &[("in", s.bytes_in), ("out", s.bytes_out)],
    );
    o.one("dap_stream_keepalives_sent_total", "counter", "Keepalives sent.", s.keepalives_sent);
    o.by(
        "dap_stream_key_updates_total",
        "counter",
        "Key updates of stream packets, by direction (out: ours, in: the peer's).",
        "direction",
        &[("in", s.key_updates_received), ("out", s.key_updates_sent)],
    );
    o.one(
        "dap_stream_shutdown_cut_off_total",
        "counter",
        "Streams still open when a shutdown's grace period ended, cut off.",
        s.shutdown_cut_off,
    );
    o.one(
        "dap_stream_shutdown_unsent_messages_total",
        "counter",
        "Messages queued for a peer and discarded unsent when its stream was cut off.",
        s.shutdown_unsent_messages,
    );
    o.one(
        "dap_stream_window_growths_total",
        "counter",
        "Receive windows grown because the sender was blocked while the reader kept up.",
        s.window_growths,
    );
    o.by(
        "dap_stream_errors_total",
        "counter",
        "Stream faults, by kind.",
        "kind",
        &[
            ("auth", s.auth_failures),
            ("sequence", s.sequence_errors),
            ("decode", s.decode_errors),
            ("unknown_channel", s.unknown_channel),
            ("oversize", s.oversize_messages),
            ("protocol", s.protocol_errors),
            ("idle_timeout", s.idle_timeouts),
            ("partial_timeout", s.partial_timeouts),
            ("over_budget", s.over_budget),
            ("ctl_refused", s.ctl_refused),
            ("attach_unknown", s.attach_unknown),
            ("attach_twice", s.attach_twice),
            ("wake_failed", s.wake_failed),
            ("key_exhausted", s.key_exhausted),
        ],
    );
}

fn pubsub(o: &mut Out, s: &PubSubStatsSnapshot) {
    o.one("dap_pubsub_topics", "gauge", "Topics with subscribers.", s.topics);
    o.one("dap_pubsub_subscriptions", "gauge", "Subscriptions.", s.subscriptions);
    o.one("dap_pubsub_published_total", "counter", "Messages published.", s.published);
    o.one(
        "dap_pubsub_delivered_total",
        "counter",
        "Message copies queued to subscribers.",
        s.delivered,
    );
    o.one("dap_pubsub_subscribes_total", "counter", "Subscriptions made.", s.subscribes);
    o.one("dap_pubsub_unsubscribes_total", "counter", "Subscriptions ended.", s.unsubscribes);
    o.one(
        "dap_pubsub_slow_dropped_total",
        "counter",
        "Subscribers dropped from a topic because their queue was full.",
        s.slow_dropped,
    );
    let refused: Vec<(&str, u64)> = PubSubStatsSnapshot::REFUSAL_CODES
        .iter()
        .zip(s.refused)
        .map(|(c, v)| (c.name(), v))
        .collect();
    o.by(
        "dap_pubsub_errors_total",
        "counter",
        "Pub/sub requests refused, by kind.",
        "kind",
        &refused,
    );
}
