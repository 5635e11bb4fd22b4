//! dapd's configuration: a TOML file of sections, every key optional (a missing key takes
//! the value of the embedded default, [`DEFAULT_CONFIG`]), unknown keys refused.
//!
//! [`Config::from_toml`] parses and then [validates](Config::validate) every value, so that
//! a bad file fails at start with an error that names the key, never later.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The embedded default configuration: `config/dapd.toml`, byte for byte.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/dapd.toml");

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema (an unknown key, a value of
    /// the wrong type); the text gives the line and the key.
    #[error("{0}")]
    Parse(String),
    /// A value is out of range or inconsistent with another.
    #[error("{key}: {problem}")]
    Invalid {
        /// The key, as `section.key`.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

impl ConfigError {
    fn invalid(key: &str, problem: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.to_string(), problem: problem.into() }
    }

    /// The key at fault, for [`Invalid`](Self::Invalid).
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Config {
    /// `[listen]`: the plain HTTP listener.
    pub listen: ListenConfig,
    /// `[reactor]`: workers.
    pub reactor: ReactorConfig,
    /// `[http]`: HTTP limits and timeouts.
    pub http: HttpSection,
    /// `[enc]`: the handshake and enc_http.
    pub enc: EncSection,
    /// `[stream]`: sessions and streams.
    pub stream: StreamSection,
    /// `[udp]`: the UDP transport of streams.
    pub udp: UdpSection,
    /// `[proc]`: the proc pool.
    pub proc: ProcSection,
    /// `[pubsub]`: channel `'P'`.
    pub pubsub: PubSubSection,
    /// `[tls]`: an optional HTTPS listener.
    pub tls: TlsSection,
    /// `[dns]`: an optional authoritative DNS server.
    pub dns: DnsSection,
    /// `[shutdown]`: the drain on SIGINT/SIGTERM.
    pub shutdown: ShutdownSection,
    /// `[admin]`: the admin listener.
    pub admin: AdminSection,
    /// `[log]`: logging.
    pub log: LogSection,
    /// `[cluster]`: several nodes as one service, on Redis.
    pub cluster: ClusterSection,
}

/// `[cluster]`: several dapd nodes as one service, on Redis (see [`crate::cluster`]).
/// Without `redis`, the node is on its own.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// `redis://[user:password@]host:port/db`, or `rediss://` for TLS; empty: no cluster.
    pub redis: String,
    /// This node's name, unique in the cluster; empty: the advertised address.
    pub node_name: String,
    /// File of 64 hex digits: the key that seals secrets stored in Redis, the same on every
    /// node (`dapd keygen --cluster FILE`). Required with `redis`.
    pub key_file: String,
    /// Prefix of every Redis key and channel (several clusters may share one Redis).
    pub prefix: String,
    /// Connect, read and write timeout of each Redis call.
    pub timeout_ms: u64,
    /// A node's registration lives this long unless renewed (every third of it): a node
    /// that stops leaves the member list within this time.
    pub membership_ttl_ms: u64,
    /// pub/sub messages waiting to be relayed to Redis; past it they reach this node's
    /// subscribers only (counted).
    pub relay_queue: usize,
    /// `host:port` other nodes and DNS hand out for this node; empty: the listen address.
    pub advertise: String,
    /// With `rediss://`: a PEM file of the certificates that may sign Redis's (a private
    /// CA); empty: the system's roots.
    pub tls_ca_file: String,
    /// With `rediss://` and Redis's `tls-auth-clients`: this node's certificate chain (a
    /// PEM file; with `tls_key_file`).
    pub tls_cert_file: String,
    /// The key of `tls_cert_file` (a PEM file).
    pub tls_key_file: String,
    /// UDP sessions each worker takes from Redis at once for a first datagram that landed
    /// on this node (a session made on another, or made here and claimed); past it such
    /// datagrams are dropped (counted).
    pub udp_lookups: usize,
    /// Datagrams a UDP worker holds for one such session until Redis answers; past it they
    /// are dropped (counted), as a lossy path would drop them.
    pub udp_held: usize,
    /// Such lookups each UDP worker starts per second at most, whatever the ids (0: no
    /// bound); past it the datagrams are dropped (counted).
    pub udp_lookup_rate: u32,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            redis: String::new(),
            node_name: String::new(),
            key_file: String::new(),
            prefix: "dap".to_string(),
            timeout_ms: 500,
            membership_ttl_ms: 10_000,
            relay_queue: 65_536,
            advertise: String::new(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            udp_lookups: 64,
            udp_held: 8,
            udp_lookup_rate: 10_000,
        }
    }
}

/// `[listen]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// The address (port 0 picks a free one).
    pub addr: SocketAddr,
    /// The listen backlog.
    pub backlog: u32,
    /// CIDR blocks admitted (empty: everyone not denied).
    pub allow: Vec<String>,
    /// CIDR blocks refused.
    pub deny: Vec<String>,
    /// Let another process listen on the same ports (TCP and UDP, `SO_REUSEPORT`), for a
    /// deliberate hand-over. Off (the default), a port another process holds is refused at
    /// start with "address in use".
    pub share_port: bool,
    /// Connections held at once on the HTTP and TLS listeners together; 0: no bound but
    /// the reactor's `max_esockets`.
    pub max_connections: usize,
    /// Connections held at once from one source block; 0: no bound.
    pub max_connections_per_source: usize,
    /// The width of a source block for IPv4 (per-source limits and handshake rates).
    pub source_prefix_v4: u8,
    /// The width of a source block for IPv6.
    pub source_prefix_v6: u8,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8079)),
            backlog: 1024,
            allow: Vec::new(),
            deny: Vec::new(),
            share_port: false,
            max_connections: 16_384,
            max_connections_per_source: 1024,
            source_prefix_v4: 32,
            source_prefix_v6: 64,
        }
    }
}

/// How TCP listeners are spread over the workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerModeSetting {
    /// One `SO_REUSEPORT` listener per worker.
    #[default]
    PerWorker,
    /// One listener handing connections to the least-loaded worker.
    Single,
}

/// `[reactor]`, as `dap_reactor::ReactorBuilder` takes it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReactorConfig {
    /// Workers (0: one per CPU).
    pub threads: usize,
    /// Pin workers (and proc threads) to CPUs.
    pub pin: bool,
    /// Close connections idle this long (0: never).
    pub idle_timeout_ms: u64,
    /// Outgoing connect timeout.
    pub connect_timeout_ms: u64,
    /// How long a graceful close may spend flushing.
    pub close_linger_ms: u64,
    /// Listener spreading.
    pub listener_mode: ListenerModeSetting,
    /// Every 5 s, when the allocator holds more than this many free bytes (a burst of
    /// connections has gone), give its free pages back to the kernel (0: never).
    pub release_memory_above: usize,
    /// `[reactor.limits]`.
    pub limits: LimitsSection,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig {
            threads: 0,
            pin: true,
            idle_timeout_ms: 300_000,
            connect_timeout_ms: 10_000,
            close_linger_ms: 5_000,
            listener_mode: ListenerModeSetting::PerWorker,
            release_memory_above: 16 << 20,
            limits: LimitsSection::default(),
        }
    }
}

/// `[reactor.limits]`: `dap_reactor::Limits`, per worker.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // Each key is `dap_reactor::Limits`' field of the same name.
pub struct LimitsSection {
    pub max_esockets: usize,
    pub buf_in_cap: usize,
    pub buf_out_cap: usize,
    pub buf_out_low_water: usize,
    pub handle_write_slack: usize,
    pub buffer_budget: usize,
    pub inbox_capacity: usize,
    pub pool_buffers: usize,
    pub buf_cap_max: usize,
    pub udp_out_queue: usize,
    pub max_timers: usize,
    pub events_per_turn: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let d = dap_reactor::Limits::default();
        LimitsSection {
            max_esockets: d.max_esockets,
            buf_in_cap: d.buf_in_cap,
            buf_out_cap: d.buf_out_cap,
            buf_out_low_water: d.buf_out_low_water,
            handle_write_slack: d.handle_write_slack,
            buffer_budget: d.buffer_budget,
            inbox_capacity: d.inbox_capacity,
            pool_buffers: d.pool_buffers,
            buf_cap_max: d.buf_cap_max,
            udp_out_queue: d.udp_out_queue,
            max_timers: d.max_timers,
            events_per_turn: d.events_per_turn,
        }
    }
}

/// `[http]`: `dap_net::http::server::HttpConfig`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // Each key is HttpConfig's (or HttpLimits') field of the same name.
pub struct HttpSection {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_url: usize,
    pub max_body: u64,
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub keep_alive_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub lingering_close_ms: u64,
    pub lingering_bytes: usize,
    /// 0: no limit.
    pub max_requests_per_connection: u64,
    /// Empty: no `Server` header.
    pub server_name: String,
    /// Answer the requests already read after the client's end of stream (`shutdown(SHUT_WR)`)
    /// instead of abandoning them.
    pub half_close: bool,
    /// Requests per second per source block (0: no limit); past it, a request waits for its
    /// turn (reading its connection paused).
    pub request_rate: u32,
    /// Requests a quiet source block may make at once; as many more may wait for their
    /// turn, and past that a request is answered 429 and its connection closed.
    pub request_burst: u32,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            max_header_bytes: 16 << 10,
            max_headers: 64,
            max_url: 8 << 10,
            max_body: 1 << 20,
            header_timeout_ms: 10_000,
            body_timeout_ms: 60_000,
            keep_alive_timeout_ms: 5_000,
            write_timeout_ms: 30_000,
            lingering_close_ms: 2_000,
            lingering_bytes: 1 << 20,
            max_requests_per_connection: 0,
            server_name: "dap".into(),
            half_close: false,
            request_rate: 0,
            request_burst: 200,
        }
    }
}

/// Whether `/enc_init` wants a client certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthSetting {
    /// Certificates are not used.
    #[default]
    None,
    /// A certificate may be sent, and is verified if it is.
    Optional,
    /// A certificate on the allow list is required.
    Required,
}

/// `[enc]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncSection {
    /// The node key's PEM file; empty: a fresh key each start (logged as a warning).
    pub node_key: String,
    /// Keys held at once.
    pub max_keys: usize,
    /// A key unused this long expires.
    pub key_idle_ttl_s: u64,
    /// A key older than this expires.
    pub key_max_age_s: u64,
    /// Client certificates.
    pub client_auth: ClientAuthSetting,
    /// The allow list file (for `required`).
    pub allow_list: String,
    /// Most keys read from the allow list.
    pub max_allow_list: usize,
    /// The largest `/enc_init` body.
    pub max_init_body: u64,
    /// Run handshakes, and `/stream_ctl` with them, on the worker instead of a proc thread
    /// (no hand-off per request: faster on few cores). Not in a cluster, whose key store
    /// may block.
    pub handshake_on_worker: bool,
    /// A key no request has used expires this long after its handshake.
    pub key_unused_ttl_s: u64,
    /// Handshakes per second from one source block, on average; 0: no limit.
    pub handshake_rate: u32,
    /// Handshakes one source block may make at once.
    pub handshake_burst: u32,
    /// Source blocks the handshake rate tracks at once.
    pub handshake_sources: usize,
}

impl Default for EncSection {
    fn default() -> Self {
        EncSection {
            node_key: String::new(),
            max_keys: 10_000,
            key_idle_ttl_s: 600,
            key_max_age_s: 86_400,
            client_auth: ClientAuthSetting::None,
            allow_list: String::new(),
            max_allow_list: 100_000,
            max_init_body: 4096,
            handshake_on_worker: true,
            key_unused_ttl_s: 30,
            handshake_rate: 100,
            handshake_burst: 1000,
            handshake_sources: 65_536,
        }
    }
}

/// `[stream]`: session limits (`dap_stream::session::SessionLimits`) and the table bound.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // Each key is the SessionLimits / MuxConfig field of the same name.
pub struct StreamSection {
    /// Sessions held at once, pending and attached.
    pub max_sessions: usize,
    /// Bytes all sessions together may hold in unfinished messages
    /// (`StreamConfig::max_reassembly`).
    pub max_reassembly: usize,
    /// Bytes one session may hold in unfinished messages (`MuxConfig::max_session_reassembly`).
    pub max_session_reassembly: usize,
    /// An unfinished message idle this long ends its stream (`MuxConfig::partial_timeout`).
    pub partial_timeout_ms: u64,
    pub max_message: usize,
    pub channel_window: u32,
    pub conn_window: u32,
    pub send_queue: usize,
    pub max_frame: usize,
    pub max_payload: usize,
    pub max_channel_window: u32,
    pub max_conn_window: u32,
    pub rekey_packets: u64,
    pub buf_in: usize,
    pub buf_out: usize,
    pub keepalive_ms: u64,
    pub idle_timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

impl Default for StreamSection {
    fn default() -> Self {
        StreamSection {
            max_sessions: 65_536,
            max_reassembly: 256 << 20,
            max_session_reassembly: 32 << 20,
            partial_timeout_ms: 30_000,
            max_message: 16 << 20,
            channel_window: 256 << 10,
            conn_window: 1 << 20,
            send_queue: 256 << 10,
            max_frame: 16 << 10,
            max_payload: dap_stream::session::DEFAULT_MAX_PAYLOAD,
            max_channel_window: 16 << 20,
            max_conn_window: 64 << 20,
            rekey_packets: dap_stream::session::DEFAULT_REKEY_PACKETS,
            buf_in: 512 << 10,
            buf_out: 1 << 20,
            keepalive_ms: 15_000,
            idle_timeout_ms: 60_000,
            connect_timeout_ms: 30_000,
        }
    }
}

/// `[udp]`: the UDP transport (sessions' limits are `[stream]`'s).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdpSection {
    /// Serve streams over UDP too.
    pub enabled: bool,
    /// The address to bind; empty: the address of `[listen]` (same IP and port; port 0
    /// picks a free one). One socket per worker shares it (`SO_REUSEPORT`).
    pub addr: String,
    /// The `host:port` announced to clients in the stream_ctl answer (behind NAT, a load
    /// balancer or a relay); empty: the port bound, and the host the client reached.
    pub advertise: String,
    /// Congestion control: `cubic` or `newreno`.
    pub controller: String,
    /// The largest UDP payload path MTU discovery tries (1,200 to 65,527; 1,200 turns it
    /// off).
    pub max_udp_payload: usize,
    /// Connections per worker.
    pub max_connections: usize,
    /// Datagrams per GSO batch (1 to 64).
    pub gso_segments: usize,
    /// Send batches with `UDP_SEGMENT` (GSO); off, batches go out with `sendmmsg`, as on a
    /// kernel without GSO (the path taken anyway when the kernel refuses it).
    pub gso: bool,
    /// The kernel receive buffer asked for each UDP socket, in bytes (0: the kernel's
    /// default); capped by `net.core.rmem_max`.
    pub recv_buffer: usize,
    /// The kernel send buffer asked for each UDP socket, in bytes (0: the kernel's
    /// default); capped by `net.core.wmem_max`.
    pub send_buffer: usize,
    /// Bytes a channel's data may run ahead of what it delivered, out of order.
    pub max_reorder: u64,
    /// Bytes held out of order on a connection.
    pub max_reorder_total: usize,
    /// Sent packets tracked per connection.
    pub max_tracked_packets: usize,
    /// ACK ranges remembered per connection.
    pub max_ack_ranges: usize,
    /// ACK thinning: while a peer sends steadily, acknowledge after at most this many
    /// ack-eliciting packets (about eight ACKs per round trip; 2: every second packet).
    pub max_ack_threshold: u32,
    /// Bytes of unreliable messages waiting to be sent per connection.
    pub max_datagram_queue: usize,
    /// Mark packets ECN-capable and react to CE.
    pub ecn: bool,
}

impl Default for UdpSection {
    fn default() -> Self {
        let c = dap_stream::udp::connection::ConnectionConfig::default();
        UdpSection {
            enabled: true,
            addr: String::new(),
            advertise: String::new(),
            controller: "cubic".into(),
            max_udp_payload: c.mtu.max,
            max_connections: dap_stream::udp::endpoint::EndpointConfig::default().max_connections,
            gso_segments: 64,
            gso: true,
            recv_buffer: dap_reactor::Limits::default().udp_recv_buffer,
            send_buffer: dap_reactor::Limits::default().udp_send_buffer,
            max_reorder: c.max_reorder,
            max_reorder_total: c.max_reorder_total,
            max_tracked_packets: c.max_tracked_packets,
            max_ack_ranges: c.max_ack_ranges,
            max_ack_threshold: c.max_ack_threshold,
            max_datagram_queue: c.max_datagram_queue,
            ecn: c.ecn,
        }
    }
}

impl UdpSection {
    /// The address to bind, given the `[listen]` address.
    ///
    /// # Errors
    /// `udp.addr` is not an address.
    pub fn bind_addr(&self, listen: SocketAddr) -> Result<SocketAddr, ConfigError> {
        if self.addr.is_empty() {
            return Ok(listen);
        }
        self.addr.parse().map_err(|_| {
            ConfigError::invalid("udp.addr", format!("{:?} is not ip:port", self.addr))
        })
    }

    /// The announced host and port (`None`: announce the port bound, no host).
    ///
    /// # Errors
    /// `udp.advertise` is not `host:port`.
    pub fn advertised(&self) -> Result<Option<(String, u16)>, ConfigError> {
        if self.advertise.is_empty() {
            return Ok(None);
        }
        let bad = || ConfigError::invalid("udp.advertise", "must be host:port");
        let (host, port) = self.advertise.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty()
            || host.len() > dap_stream::session::ctl::MAX_HOST
            || !host.bytes().all(|b| (0x21..=0x7e).contains(&b))
            || port == 0
        {
            return Err(bad());
        }
        Ok(Some((host.to_string(), port)))
    }
}

/// `[proc]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcSection {
    /// Threads (0: one per worker, paired with it).
    pub threads: usize,
    /// Jobs one thread may hold waiting per priority.
    pub queue_capacity: usize,
    /// How much waiting lifts a job by one priority.
    pub aging_ms: u64,
    /// The proc threads' nice value (0 to 19): above the workers', so that on a busy CPU
    /// the event loops answer first and long jobs wait.
    pub nice: i32,
}

impl Default for ProcSection {
    fn default() -> Self {
        ProcSection { threads: 0, queue_capacity: 8192, aging_ms: 10, nice: 5 }
    }
}

/// `[pubsub]`: `dap_stream::pubsub::BrokerConfig`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // Each key is BrokerConfig's field of the same name.
pub struct PubSubSection {
    pub max_topics: usize,
    pub max_subscribers_per_topic: usize,
    pub max_subscriptions_per_session: usize,
    pub max_topic_len: usize,
}

impl Default for PubSubSection {
    fn default() -> Self {
        PubSubSection {
            max_topics: 10_000,
            max_subscribers_per_topic: 10_000,
            max_subscriptions_per_session: 256,
            max_topic_len: 255,
        }
    }
}

/// `[tls]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// Serve HTTPS too.
    pub enabled: bool,
    /// Its address.
    pub addr: SocketAddr,
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            enabled: false,
            addr: SocketAddr::from(([127, 0, 0, 1], 8443)),
            cert: String::new(),
            key: String::new(),
        }
    }
}

/// One zone record of `[dns]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRecord {
    /// The owner name (inside the zone).
    pub name: String,
    /// `A`, `AAAA`, `TXT` or `CNAME`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The address, text or target.
    pub value: String,
    /// Seconds.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
}

fn default_ttl() -> u32 {
    300
}

/// `[dns]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Serve DNS.
    pub enabled: bool,
    /// UDP address.
    pub addr: SocketAddr,
    /// The zone's origin.
    pub origin: String,
    /// Records the zone may hold.
    pub max_records: usize,
    /// Largest reply to EDNS queries.
    pub max_payload: u16,
    /// With `[cluster]`: the name (inside the zone) whose A / AAAA records are the
    /// cluster's members' addresses, and whose TXT records say `name=… addr=host:port
    /// udp=port` for each, kept up to date as nodes come and go; empty: none.
    pub cluster_name: String,
    /// The zone's records.
    pub records: Vec<DnsRecord>,
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            enabled: false,
            addr: SocketAddr::from(([127, 0, 0, 1], 8053)),
            cluster_name: String::new(),
            origin: "dapd.test".into(),
            max_records: 65_536,
            max_payload: 1232,
            records: Vec::new(),
        }
    }
}

/// `[shutdown]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    /// How long a drain may take before what is left is closed.
    pub grace_ms: u64,
    /// At the start of a drain, how long `/health` answers 503 while the listeners still
    /// accept, so that load balancers stop sending new clients first (part of the grace
    /// period; 0: the listeners close at once).
    pub drain_notice_ms: u64,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        ShutdownSection { grace_ms: 10_000, drain_notice_ms: 0 }
    }
}

/// `[admin]`: a listener of its own for `/metrics` and `/health`, so that the data port can
/// face the internet while the metrics stay private.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// On: `/metrics` moves to the admin listener (`/health` stays on the data port too,
    /// for load balancers).
    pub enabled: bool,
    /// Its address (port 0 picks one).
    pub addr: SocketAddr,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection { enabled: false, addr: SocketAddr::from(([127, 0, 0, 1], 8078)) }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// The filter when `RUST_LOG` is not set (`info`, `dap_stream=debug,info`, ...).
    pub level: String,
    /// Line format.
    pub format: LogFormat,
    /// The access log (target `dap::access`, at info): one line per HTTP request and one
    /// per stream session when it ends.
    pub access: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection { level: "info".into(), format: LogFormat::Text, access: true }
    }
}

impl LogSection {
    /// The filter to install: `level`, with the access log off when `access` is.
    pub fn filter(&self) -> String {
        if self.access { self.level.clone() } else { format!("{},dap::access=off", self.level) }
    }
}

/// Checks `lo <= v <= hi`.
fn range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(ConfigError::invalid(key, format!("must be between {lo} and {hi} (is {v})")));
    }
    Ok(())
}

/// `[log] level`: a filter as `RUST_LOG` takes it, where a bare word must be a level.
/// (The filter syntax would take `verbose` as a target name and log nothing else.)
/// ASCII only: tracing-subscriber's directive parser slices a directive with leading
/// whitespace at the wrong offsets, and panics when that splits a non-ASCII character
/// (`" é[x]"`); target, span and field names are ASCII anyway.
fn check_log_level(level: &str) -> Result<(), ConfigError> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    if !level.is_ascii() {
        return Err(ConfigError::invalid("log.level", "must be ASCII"));
    }
    for d in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let (target, lvl) = match d.split_once('=') {
            Some((t, l)) => (Some(t), l),
            None => (None, d),
        };
        let is_level = LEVELS.contains(&lvl.to_ascii_lowercase().as_str());
        if !is_level && (target.is_some() || !d.contains(['[', ':'])) {
            return Err(ConfigError::invalid(
                "log.level",
                format!(
                    "{d:?}: not a level (want trace, debug, info, warn, error or off, \
                     or target=level)"
                ),
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(level)
        .map(drop)
        .map_err(|e| ConfigError::invalid("log.level", e.to_string()))
}

const MS_HOUR: u64 = 3_600_000;
const MS_DAY: u64 = 24 * MS_HOUR;

impl Config {
    /// The embedded default ([`DEFAULT_CONFIG`]).
    pub fn embedded() -> Self {
        // The embedded file is tested to parse and validate; this cannot fail in a build
        // whose tests pass, and the code defaults are the same values.
        Config::from_toml(DEFAULT_CONFIG).unwrap_or_default()
    }

    /// Parses and validates a configuration.
    ///
    /// # Errors
    /// [`ConfigError::Parse`] naming the line and key, or [`ConfigError::Invalid`].
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    ///
    /// # Errors
    /// As [`from_toml`](Self::from_toml), and [`ConfigError::Read`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut config = Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!("{}: {m}", path.display())),
            e => e,
        })?;
        config.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(config)
    }

    /// Checks every value's range and the values that depend on each other.
    ///
    /// # Errors
    /// The first [`ConfigError::Invalid`], naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if !c.redis.is_empty() {
            if !(c.redis.starts_with("redis://")
                || c.redis.starts_with("rediss://")
                || c.redis.starts_with("redis+unix://")
                || c.redis.starts_with("unix://"))
            {
                return Err(ConfigError::invalid(
                    "cluster.redis",
                    "must be a redis://, rediss:// or unix:// URL",
                ));
            }
            if c.key_file.is_empty() {
                return Err(ConfigError::invalid(
                    "cluster.key_file",
                    "must name a key file when cluster.redis is set (dapd keygen --cluster FILE)",
                ));
            }
            range("cluster.timeout_ms", c.timeout_ms, 10, 60_000)?;
            range("cluster.membership_ttl_ms", c.membership_ttl_ms, 300, MS_HOUR)?;
            range("cluster.relay_queue", c.relay_queue, 1, 1 << 24)?;
            range("cluster.udp_lookups", c.udp_lookups, 1, 1 << 16)?;
            if c.tls_cert_file.is_empty() != c.tls_key_file.is_empty() {
                return Err(ConfigError::invalid(
                    "cluster.tls_cert_file",
                    "tls_cert_file and tls_key_file go together",
                ));
            }
            let tls = !c.tls_ca_file.is_empty() || !c.tls_cert_file.is_empty();
            if tls && !c.redis.starts_with("rediss://") {
                return Err(ConfigError::invalid(
                    "cluster.tls_ca_file",
                    "the TLS files need a rediss:// URL in cluster.redis",
                ));
            }
            range("cluster.udp_held", c.udp_held, 1, 1024)?;
            range("cluster.udp_lookup_rate", c.udp_lookup_rate, 0, 10_000_000)?;
            let name_ok = |s: &str| s.len() <= 255 && !s.chars().any(|ch| ch.is_control());
            if !name_ok(&c.node_name) || !name_ok(&c.advertise) {
                return Err(ConfigError::invalid(
                    "cluster.node_name",
                    "node_name and advertise: at most 255 characters, no control characters",
                ));
            }
            if c.prefix.is_empty() || !name_ok(&c.prefix) || c.prefix.contains(':') {
                return Err(ConfigError::invalid(
                    "cluster.prefix",
                    "must be 1 to 255 characters, no control characters or ':'",
                ));
            }
        }
        let l = &self.listen;
        range("listen.backlog", l.backlog, 1, 65_535)?;
        range("listen.max_connections", l.max_connections, 0, 1 << 24)?;
        range("listen.max_connections_per_source", l.max_connections_per_source, 0, 1 << 24)?;
        range("listen.source_prefix_v4", l.source_prefix_v4, 1, 32)?;
        range("listen.source_prefix_v6", l.source_prefix_v6, 1, 128)?;
        for (key, blocks) in [("listen.allow", &l.allow), ("listen.deny", &l.deny)] {
            range(key, blocks.len(), 0, 10_000)?;
            for b in blocks {
                b.parse::<dap_net::server::Cidr>().map_err(|e| {
                    ConfigError::invalid(key, format!("{b:?} is not a CIDR block ({e})"))
                })?;
            }
        }
        let r = &self.reactor;
        range("reactor.threads", r.threads, 0, 1024)?;
        range("reactor.idle_timeout_ms", r.idle_timeout_ms, 0, 30 * MS_DAY)?;
        range("reactor.connect_timeout_ms", r.connect_timeout_ms, 1, MS_HOUR)?;
        range("reactor.close_linger_ms", r.close_linger_ms, 0, MS_HOUR)?;
        let m = &r.limits;
        range("reactor.limits.max_esockets", m.max_esockets, 16, 1 << 24)?;
        range("reactor.limits.buf_in_cap", m.buf_in_cap, 4096, 1 << 30)?;
        range("reactor.limits.buf_out_cap", m.buf_out_cap, 4096, 1 << 30)?;
        range("reactor.limits.buf_out_low_water", m.buf_out_low_water, 0, m.buf_out_cap)?;
        range("reactor.limits.handle_write_slack", m.handle_write_slack, 0, 1 << 30)?;
        range("reactor.limits.buffer_budget", m.buffer_budget, 0, 1 << 40)?;
        range("reactor.limits.inbox_capacity", m.inbox_capacity, 16, 1 << 24)?;
        range("reactor.limits.pool_buffers", m.pool_buffers, 0, 1 << 16)?;
        range("reactor.limits.buf_cap_max", m.buf_cap_max, 1024, 1 << 30)?;
        range("reactor.limits.udp_out_queue", m.udp_out_queue, 1, 1 << 20)?;
        range("reactor.limits.max_timers", m.max_timers, 16, 1 << 24)?;
        range("reactor.limits.events_per_turn", m.events_per_turn, 1, 1 << 20)?;
        let h = &self.http;
        range("http.max_header_bytes", h.max_header_bytes, 256, 1 << 20)?;
        range("http.request_rate", h.request_rate, 0, 10_000_000)?;
        range("http.request_burst", h.request_burst, 1, 10_000_000)?;
        range("http.max_headers", h.max_headers, 1, 1024)?;
        range("http.max_url", h.max_url, 16, 1 << 20)?;
        range("http.max_body", h.max_body, 1024, 1 << 32)?;
        range("http.header_timeout_ms", h.header_timeout_ms, 1, MS_HOUR)?;
        range("http.body_timeout_ms", h.body_timeout_ms, 1, MS_HOUR)?;
        range("http.keep_alive_timeout_ms", h.keep_alive_timeout_ms, 1, MS_HOUR)?;
        range("http.write_timeout_ms", h.write_timeout_ms, 1, MS_HOUR)?;
        range("http.lingering_close_ms", h.lingering_close_ms, 0, 60_000)?;
        range("http.lingering_bytes", h.lingering_bytes, 0, 1 << 30)?;
        range("http.server_name", h.server_name.len(), 0, 256)?;
        if !h.server_name.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(ConfigError::invalid("http.server_name", "must be printable ASCII"));
        }
        let e = &self.enc;
        range("enc.max_keys", e.max_keys, 1, 1 << 24)?;
        range("enc.key_idle_ttl_s", e.key_idle_ttl_s, 1, 30 * 86_400)?;
        range("enc.key_max_age_s", e.key_max_age_s, 1, 365 * 86_400)?;
        range("enc.max_allow_list", e.max_allow_list, 1, 1 << 24)?;
        range("enc.max_init_body", e.max_init_body, 256, 1 << 20)?;
        range("enc.key_unused_ttl_s", e.key_unused_ttl_s, 1, 30 * 86_400)?;
        range("enc.handshake_rate", e.handshake_rate, 0, 1_000_000)?;
        range("enc.handshake_burst", e.handshake_burst, 1, 1_000_000)?;
        range("enc.handshake_sources", e.handshake_sources, 1, 1 << 24)?;
        if e.client_auth == ClientAuthSetting::Required && e.allow_list.is_empty() {
            return Err(ConfigError::invalid(
                "enc.allow_list",
                "must name a file when enc.client_auth = \"required\"",
            ));
        }
        let s = &self.stream;
        range("stream.max_sessions", s.max_sessions, 1, 1 << 24)?;
        range("stream.max_reassembly", s.max_reassembly, 1 << 16, 1 << 40)?;
        range("stream.max_message", s.max_message, 1, 16 << 20)?;
        range(
            "stream.max_session_reassembly",
            s.max_session_reassembly,
            s.max_message,
            s.max_reassembly.max(s.max_message),
        )?;
        range("stream.partial_timeout_ms", s.partial_timeout_ms, 1000, MS_HOUR)?;
        range("stream.channel_window", s.channel_window, 1024, 1 << 30)?;
        range("stream.conn_window", s.conn_window, 1024, 1 << 30)?;
        range("stream.send_queue", s.send_queue, 1024, 1 << 30)?;
        range("stream.max_channel_window", s.max_channel_window, s.channel_window, 1 << 30)?;
        range("stream.max_conn_window", s.max_conn_window, s.conn_window, 1 << 30)?;
        range("stream.rekey_packets", s.rekey_packets, 1, 1 << 40)?;
        range("stream.buf_in", s.buf_in, 1024, 1 << 30)?;
        range("stream.buf_out", s.buf_out, 1024, 1 << 30)?;
        let overhead = dap_stream::codec::packet::OVERHEAD;
        let max_payload = m.buf_in_cap.saturating_sub(overhead);
        if s.max_payload > max_payload {
            return Err(ConfigError::invalid(
                "stream.max_payload",
                format!(
                    "must be at most reactor.limits.buf_in_cap - {overhead} = {max_payload} \
                     (is {}); raise buf_in_cap or lower max_payload",
                    s.max_payload
                ),
            ));
        }
        range("stream.max_payload", s.max_payload, 2048, 16 << 20)?;
        range("stream.max_frame", s.max_frame, 1, s.max_payload)?;
        range("stream.keepalive_ms", s.keepalive_ms, 100, MS_DAY)?;
        range("stream.idle_timeout_ms", s.idle_timeout_ms, s.keepalive_ms + 1, 7 * MS_DAY)?;
        range("stream.connect_timeout_ms", s.connect_timeout_ms, 100, MS_HOUR)?;
        let u = &self.udp;
        u.bind_addr(self.listen.addr)?;
        u.advertised()?;
        if dap_stream::udp::congestion::ControllerConfig::from_name(&u.controller).is_none() {
            return Err(ConfigError::invalid("udp.controller", "must be cubic or newreno"));
        }
        range("udp.max_udp_payload", u.max_udp_payload, 1200, 65_527)?;
        range("udp.max_connections", u.max_connections, 1, 1 << 24)?;
        range("udp.gso_segments", u.gso_segments, 1, 64)?;
        // Linux keeps twice the request in an int.
        range("udp.recv_buffer", u.recv_buffer, 0, (i32::MAX / 2) as usize)?;
        range("udp.send_buffer", u.send_buffer, 0, (i32::MAX / 2) as usize)?;
        range("udp.max_reorder", u.max_reorder, 65_536, 1 << 34)?;
        range("udp.max_reorder_total", u.max_reorder_total, 65_536, 1 << 34)?;
        range("udp.max_tracked_packets", u.max_tracked_packets, 64, 1 << 24)?;
        range("udp.max_ack_ranges", u.max_ack_ranges, 1, 1 << 16)?;
        range("udp.max_ack_threshold", u.max_ack_threshold, 2, 1 << 16)?;
        range("udp.max_datagram_queue", u.max_datagram_queue, 2048, 1 << 30)?;
        let p = &self.proc;
        range("proc.threads", p.threads, 0, 1024)?;
        range("proc.queue_capacity", p.queue_capacity, 1, 1 << 24)?;
        range("proc.aging_ms", p.aging_ms, 1, 60_000)?;
        range("proc.nice", p.nice, 0, 19)?;
        let ps = &self.pubsub;
        range("pubsub.max_topics", ps.max_topics, 1, 1 << 24)?;
        range("pubsub.max_subscribers_per_topic", ps.max_subscribers_per_topic, 1, 1 << 20)?;
        range(
            "pubsub.max_subscriptions_per_session",
            ps.max_subscriptions_per_session,
            1,
            1 << 16,
        )?;
        range("pubsub.max_topic_len", ps.max_topic_len, 1, dap_stream::pubsub::MAX_TOPIC_LEN)?;
        if self.tls.enabled {
            for (key, v) in [("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)] {
                if v.is_empty() {
                    return Err(ConfigError::invalid(key, "must name a PEM file when tls.enabled"));
                }
            }
        }
        let d = &self.dns;
        range("dns.max_records", d.max_records, 1, 1 << 24)?;
        range("dns.records", d.records.len(), 0, d.max_records)?;
        range("dns.max_payload", d.max_payload, 512, 65_535)?;
        if d.enabled {
            dap_net::dns::Zone::new(&d.origin)
                .map_err(|e| ConfigError::invalid("dns.origin", e.to_string()))?;
        }
        for (i, rec) in d.records.iter().enumerate() {
            let kind = rec.kind.to_ascii_uppercase();
            let ok = match kind.as_str() {
                "A" => rec.value.parse::<std::net::Ipv4Addr>().is_ok(),
                "AAAA" => rec.value.parse::<std::net::Ipv6Addr>().is_ok(),
                "TXT" | "CNAME" => true,
                _ => {
                    let key = format!("dns.records[{i}].type");
                    return Err(ConfigError::invalid(&key, "must be A, AAAA, TXT or CNAME"));
                }
            };
            if !ok {
                let key = format!("dns.records[{i}].value");
                return Err(ConfigError::invalid(&key, format!("not an address for {kind}")));
            }
        }
        range("shutdown.grace_ms", self.shutdown.grace_ms, 0, MS_HOUR)?;
        range(
            "shutdown.drain_notice_ms",
            self.shutdown.drain_notice_ms,
            0,
            self.shutdown.grace_ms,
        )?;
        check_log_level(&self.log.level)?;
        Ok(())
    }

    /// Makes the file paths of the configuration (node key, allow list, TLS certificate
    /// and key) that are relative relative to `dir`, the configuration file's directory,
    /// as nginx does: the daemon's working directory does not change what a file means.
    pub fn resolve_paths(&mut self, dir: &Path) {
        for p in [
            &mut self.enc.node_key,
            &mut self.enc.allow_list,
            &mut self.tls.cert,
            &mut self.tls.key,
        ] {
            if !p.is_empty() && Path::new(p.as_str()).is_relative() {
                *p = dir.join(p.as_str()).to_string_lossy().into_owned();
            }
        }
    }

    /// The drain's grace period.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.shutdown.grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_parses_and_equals_the_code_defaults() {
        let parsed = Config::from_toml(DEFAULT_CONFIG).expect("embedded default");
        assert_eq!(parsed, Config::default());
        assert_eq!(parsed.listen.addr, "127.0.0.1:8079".parse().unwrap());
        assert_eq!(parsed.reactor.threads, 0);
        assert!(parsed.enc.handshake_on_worker);
    }

    #[test]
    fn an_empty_file_is_the_default() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml("[stream]\nmax_mesage = 5\n").unwrap_err().to_string();
        assert!(e.contains("max_mesage"), "{e}");
        let e = Config::from_toml("[nosuch]\n").unwrap_err().to_string();
        assert!(e.contains("nosuch"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = Config::from_toml("[stream]\nmax_message = 0\n").unwrap_err();
        assert_eq!(e.key(), Some("stream.max_message"));
        assert!(e.to_string().starts_with("stream.max_message: must be between 1 and 16777216"));
        let e = Config::from_toml("[listen]\nallow = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert_eq!(e.key(), Some("listen.allow"));
        let e = Config::from_toml("[stream]\nmax_payload = 70000\n").unwrap_err();
        assert_eq!(e.key(), Some("stream.max_payload"));
        let e = Config::from_toml("[enc]\nclient_auth = \"required\"\n").unwrap_err();
        assert_eq!(e.key(), Some("enc.allow_list"));
        let e = Config::from_toml("[log]\nlevel = \"=[\"\n").unwrap_err();
        assert_eq!(e.key(), Some("log.level"));
        // Not ASCII: refused before the filter parser, which would panic on these.
        for bad in [" d\u{fffd}[p_stream=debug", "\u{3000}a[b]=info", "info, é[x]"] {
            let e = Config::from_toml(&format!("[log]\nlevel = \"{bad}\"\n")).unwrap_err();
            assert_eq!(e.to_string(), "log.level: must be ASCII", "{bad}");
        }
        for bad in ["verbose", "dap_stream=loud", "info,chatty"] {
            let e = Config::from_toml(&format!("[log]\nlevel = \"{bad}\"\n")).unwrap_err();
            assert_eq!(e.key(), Some("log.level"), "{bad}");
        }
        for good in ["info", "WARN", "dap_stream=debug,info", "off", "dap_net::http=trace"] {
            Config::from_toml(&format!("[log]\nlevel = \"{good}\"\n")).expect(good);
        }
        let e = Config::from_toml("[listen]\naddr = \"nowhere\"\n").unwrap_err().to_string();
        assert!(e.contains("addr"), "{e}");
    }
}
