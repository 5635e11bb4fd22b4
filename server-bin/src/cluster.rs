//! `[cluster]`: several dapd nodes as one service, on Redis.
//!
//! What the nodes share, all under the configured key prefix (`dap` by default):
//!
//! | Redis key | value | lifetime |
//! |---|---|---|
//! | `{p}:key:{key id}` | an enc key, sealed | the key store's idle TTL, renewed by each request |
//! | `{p}:seq:{key id}:{n}` | `1`: request `n` of that key was served (replays) | the idle TTL |
//! | `{p}:sess:{keyed hash of the session id}` | a session made by stream_ctl, sealed | the session's connect timeout, or until one node takes it |
//! | `{p}:node:{name}` | a member: name, address, UDP port, start time | `membership_ttl_ms`, renewed every third of it |
//! | channel `{p}:ps` | pub/sub messages published on any node | Redis pub/sub: not stored |
//!
//! Secrets (keys, sessions) are sealed with AES-256-GCM under the cluster key (a file of 64
//! hex digits, the same on every node), a random 96-bit nonce each, the Redis key name as
//! associated data: Redis never sees them in the clear, and a value cannot be moved to
//! another name. Pub/sub payloads are application data and travel as they are.
//!
//! Redis is reached from proc threads (keys, sessions: the enc and stream servers call
//! [`SharedKeys`] and [`SharedSessions`] there) and from three threads of the cluster's
//! own (relay out, relay in, membership); never from a reactor worker. Every call has the
//! configured timeout. When Redis cannot be reached, calls fail at once until the next
//! reconnection attempt (back-off from 100 ms to 5 s): each node keeps serving its own
//! keys, sessions and subscribers, counts the failures, and says `degraded` on `/health`.
//!
//! pub/sub uses Redis pub/sub rather than streams: delivery is push with no polling, one
//! round trip, nothing to trim, and a message is relayed at most once, which is what an
//! ACK can honestly promise across nodes (`docs/PROTOCOL.md` §10): a node that is cut off
//! from Redis for a moment misses what was published meanwhile, rather than replaying a
//! backlog its subscribers' queues could not hold anyway.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use dap_net::enc::cipher::{AeadKey, CipherSuite, Nonce, hkdf_sha256, random_bytes};
use dap_net::enc::{KeyId, SharedKeys};
use dap_reactor::LogThrottle;
use dap_stream::pubsub::{Broker, Relay, Topic};
use dap_stream::session::hex;
use dap_stream::{CID_TAGGED, SharedSessions, Taken};
use parking_lot::{Mutex, RwLock};
use zeroize::Zeroizing;

/// First back-off after a failed Redis call; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Relayed messages sent to Redis in one pipeline at most.
const RELAY_BATCH: usize = 256;
/// How often the relay threads look at the stop flag while idle.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Version byte of a relayed pub/sub message.
const RELAY_VERSION: u8 = 1;

static REDIS_ERRORS: LogThrottle = LogThrottle::new(5, Duration::from_secs(10));
static RELAY_DROPPED: LogThrottle = LogThrottle::new(5, Duration::from_secs(10));

/// What the cluster needs to start (from `[cluster]`).
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// `redis://host:port/db` or `rediss://` (TLS), with `user:password@` when needed.
    pub redis: String,
    /// The cluster key (32 bytes) that seals secrets in Redis.
    pub key: Zeroizing<[u8; 32]>,
    /// Prefix of every Redis key and channel.
    pub prefix: String,
    /// Connect, read and write timeout of each Redis call.
    pub timeout: Duration,
    /// A member's registration lives this long unless renewed.
    pub membership_ttl: Duration,
    /// Relayed pub/sub messages waiting for Redis.
    pub relay_queue: usize,
    /// With `rediss://`: the certificates that may sign Redis's (PEM; `None`: the system's
    /// roots).
    pub tls_roots: Option<Vec<u8>>,
    /// With `rediss://`: this node's certificate chain and key for Redis's
    /// `tls-auth-clients` (PEM; `None`: none).
    pub tls_client: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
}

/// One member of the cluster, as its registration says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its name.
    pub name: String,
    /// The address it advertises (`host:port`).
    pub addr: String,
    /// Its UDP port for streams (0: none).
    pub udp_port: u16,
    /// When it started (Unix milliseconds).
    pub started_ms: u64,
}

impl Member {
    fn encode(&self) -> String {
        format!("{}\t{}\t{}\t{}", self.name, self.addr, self.udp_port, self.started_ms)
    }

    fn decode(s: &str) -> Option<Member> {
        let mut f = s.split('\t');
        let m = Member {
            name: f.next()?.to_string(),
            addr: f.next()?.to_string(),
            udp_port: f.next()?.parse().ok()?,
            started_ms: f.next()?.parse().ok()?,
        };
        f.next().is_none().then_some(m)
    }
}

/// The cluster's counters.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Redis calls that failed (unreachable, timed out, refused), and calls not made while
    /// waiting to reconnect.
    pub redis_errors: AtomicU64,
    /// Connections (re)established to Redis.
    pub connects: AtomicU64,
    /// Keys published for the other nodes.
    pub keys_published: AtomicU64,
    /// Keys fetched, made by another node.
    pub keys_fetched: AtomicU64,
    /// Keys asked for and not found.
    pub keys_missed: AtomicU64,
    /// Requests refused because another node served the same request number.
    pub replays: AtomicU64,
    /// Sessions published for the other nodes.
    pub sessions_published: AtomicU64,
    /// Sessions taken, made by another node.
    pub sessions_taken: AtomicU64,
    /// Sessions asked for and not found.
    pub sessions_missed: AtomicU64,
    /// pub/sub messages relayed to the other nodes.
    pub relayed_out: AtomicU64,
    /// pub/sub messages received from the other nodes.
    pub relayed_in: AtomicU64,
    /// pub/sub messages not relayed: the queue was full, or Redis failed them.
    pub relay_dropped: AtomicU64,
    /// Values in Redis that did not open under the cluster key (another cluster's key, or
    /// tampering), or relayed messages that did not decode.
    pub bad_values: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A connection to Redis, or when to try again.
enum Link {
    Up(redis::Connection),
    Down { retry_at: Instant, backoff: Duration },
}

/// Calls Redis over one connection, reconnecting with back-off.
struct Conn {
    client: redis::Client,
    timeout: Duration,
    link: Link,
}

impl Conn {
    fn new(client: redis::Client, timeout: Duration) -> Self {
        Conn {
            client,
            timeout,
            link: Link::Down { retry_at: Instant::now(), backoff: BACKOFF_MIN },
        }
    }

    /// Runs `f` on the connection; `None` (counted) when Redis is unreachable or the call
    /// failed. Connects first if needed, unless a back-off is running.
    fn call<T>(
        &mut self,
        stats: &ClusterStats,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        let now = Instant::now();
        if let Link::Down { retry_at, backoff } = self.link {
            if now < retry_at {
                inc(&stats.redis_errors);
                return None;
            }
            match self.connect() {
                Ok(c) => {
                    inc(&stats.connects);
                    self.link = Link::Up(c);
                }
                Err(e) => {
                    self.fail(stats, backoff, &e);
                    return None;
                }
            }
        }
        let Link::Up(c) = &mut self.link else { return None };
        match f(c) {
            Ok(v) => Some(v),
            Err(e) => {
                self.fail(stats, BACKOFF_MIN, &e);
                None
            }
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let c = self.client.get_connection_with_timeout(self.timeout)?;
        c.set_read_timeout(Some(self.timeout))?;
        c.set_write_timeout(Some(self.timeout))?;
        Ok(c)
    }

    fn fail(&mut self, stats: &ClusterStats, backoff: Duration, e: &redis::RedisError) {
        inc(&stats.redis_errors);
        if let Some(suppressed) = REDIS_ERRORS.check() {
            tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, suppressed, "redis call failed; the node carries on alone until it is back");
        }
        self.link = Link::Down {
            retry_at: Instant::now() + backoff,
            backoff: (backoff * 2).min(BACKOFF_MAX),
        };
    }

    fn is_up(&self) -> bool {
        matches!(self.link, Link::Up(_))
    }
}

/// What is told the member list when it changes.
type MembersHook = Box<dyn Fn(&[Member]) + Send + Sync>;

/// What one of the cluster's threads runs.
type ThreadBody = fn(&Cluster);

/// A job for the relay-out thread: a pub/sub message published here.
struct Out(Topic, Bytes);

/// The node's link to the cluster: shared keys and sessions, relayed pub/sub, membership.
pub struct Cluster {
    settings: ClusterSettings,
    /// Random per process: relayed messages name their origin, and a node skips its own.
    origin: [u8; 16],
    seal_key: AeadKey,
    /// The connection proc threads call through.
    conn: Mutex<Conn>,
    client: redis::Client,
    stats: ClusterStats,
    members: RwLock<Vec<Member>>,
    /// This node, once [`run`](Cluster::run) named it.
    me: std::sync::OnceLock<Member>,
    /// Whether the last call of each thread that talks to Redis succeeded: `/health`.
    up: AtomicBool,
    relay_tx: Sender<Out>,
    relay_rx: Receiver<Out>,

    broker: std::sync::OnceLock<Arc<Broker>>,
    /// Told the member list each time it changes (the DNS server's node records).
    on_members: std::sync::OnceLock<MembersHook>,
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.me.get().map(|m| &m.name))
            .field("prefix", &self.settings.prefix)
            .finish_non_exhaustive()
    }
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The `redis` URL does not parse.
    #[error("cluster.redis: {0}")]
    Url(redis::RedisError),
    /// A thread could not be started.
    #[error("cluster threads: {0}")]
    Thread(std::io::Error),
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    /// A cluster link (nothing is connected until [`run`](Self::run); a Redis that is
    /// down then is retried).
    ///
    /// # Errors
    /// [`ClusterError::Url`].
    pub fn new(settings: ClusterSettings) -> Result<Arc<Cluster>, ClusterError> {
        let client = if settings.tls_roots.is_some() || settings.tls_client.is_some() {
            let certs = redis::TlsCertificates {
                client_tls: settings.tls_client.as_ref().map(|(cert, key)| {
                    redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.to_vec() }
                }),
                root_cert: settings.tls_roots.clone(),
            };
            redis::Client::build_with_tls(settings.redis.as_str(), certs)
        } else {
            redis::Client::open(settings.redis.as_str())
        }
        .map_err(ClusterError::Url)?;
        let mut origin = [0u8; 16];
        random_bytes(&mut origin);
        let (relay_tx, relay_rx) = crossbeam_channel::bounded(settings.relay_queue.max(1));

        let c = Arc::new(Cluster {
            seal_key: AeadKey::new(CipherSuite::Aes256Gcm, &settings.key),
            conn: Mutex::new(Conn::new(client.clone(), settings.timeout)),
            client,
            origin,
            stats: ClusterStats::default(),
            members: RwLock::new(Vec::new()),
            me: std::sync::OnceLock::new(),
            up: AtomicBool::new(false),
            relay_tx,
            relay_rx,

            broker: std::sync::OnceLock::new(),
            on_members: std::sync::OnceLock::new(),
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            settings,
        });
        Ok(c)
    }

    /// Joins the cluster as `name`, reachable at `advertise` (`host:port`) and, for
    /// streams over UDP, at `udp_port` (0: none): starts the membership and relay threads.
    ///
    /// # Errors
    /// [`ClusterError::Thread`]; called twice, the second does nothing.
    pub fn run(
        self: &Arc<Self>,
        name: String,
        advertise: String,
        udp_port: u16,
    ) -> Result<(), ClusterError> {
        let me = Member { name, addr: advertise, udp_port, started_ms: unix_ms() };
        if self.me.set(me).is_err() {
            return Ok(());
        }
        let c = self;
        let jobs: [(&str, ThreadBody); 3] = [
            ("dapd-cluster-members", Cluster::membership_loop),
            ("dapd-cluster-out", Cluster::relay_out_loop),
            ("dapd-cluster-in", Cluster::relay_in_loop),
        ];
        for (name, job) in jobs {
            let me = c.clone();
            let t = std::thread::Builder::new()
                .name(name.to_string())
                .spawn(move || job(&me))
                .map_err(ClusterError::Thread);
            match t {
                Ok(t) => c.threads.lock().push(t),
                Err(e) => {
                    c.stop();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Relayed messages from the other nodes go to `broker`'s subscribers.
    pub fn attach_broker(&self, broker: Arc<Broker>) {
        let _ = self.broker.set(broker);
    }

    /// `f` hears the member list each time it changes (once; a second call is ignored),
    /// on the membership thread.
    pub fn on_members(&self, f: impl Fn(&[Member]) + Send + Sync + 'static) {
        let _ = self.on_members.set(Box::new(f));
    }

    /// Leaves the cluster (the registration is removed) and stops the threads.
    pub fn stop(&self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(me) = self.me.get() {
            let key = self.name_key("node", &me.name);
            let stats = &self.stats;
            let _ = self.conn.lock().call(stats, |c| redis::cmd("DEL").arg(&key).query::<()>(c));
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }

    /// This node's name (empty until [`run`](Self::run)).
    pub fn node_name(&self) -> &str {
        self.me.get().map_or("", |m| &m.name)
    }

    /// Whether Redis answered the last calls (false: the node serves alone, degraded).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The members as of the last membership round (this node included while Redis is
    /// reachable).
    pub fn members(&self) -> Vec<Member> {
        self.members.read().clone()
    }

    /// The counters.
    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// `{"node": …, "redis": "up"|"down", "members": [{…}, …]}` for `/cluster`.
    pub fn to_json(&self) -> String {
        let esc = crate::cli::quote;
        let members: Vec<String> = self
            .members()
            .iter()
            .map(|m| {
                format!(
                    "{{\"name\":{},\"addr\":{},\"udp_port\":{},\"started_ms\":{}}}",
                    esc(&m.name),
                    esc(&m.addr),
                    m.udp_port,
                    m.started_ms
                )
            })
            .collect();
        format!(
            "{{\"node\":{},\"redis\":\"{}\",\"members\":[{}]}}\n",
            esc(self.node_name()),
            if self.is_up() { "up" } else { "down" },
            members.join(",")
        )
    }

    /// The Redis key of session `id`: a keyed hash of the id, not the id, which authorises
    /// an attach and must not be readable by whoever can list Redis's keys.
    fn session_key(&self, id: &[u8; 16]) -> String {
        let h = hkdf_sha256(&self.settings.key[..], id, b"dap v1 cluster session name");
        self.name_key("sess", &hex(&h[..16]))
    }

    fn name_key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.settings.prefix)
    }

    /// Seals `plain` for the Redis key `name`: nonce ‖ ciphertext ‖ tag.
    fn seal(&self, name: &str, plain: &[u8]) -> Vec<u8> {
        let mut n = [0u8; 12];
        random_bytes(&mut n);
        let prefix: [u8; 4] = n[..4].try_into().expect("4 bytes");
        let counter = u64::from_be_bytes(n[4..].try_into().expect("8 bytes"));
        let mut out = n.to_vec();
        let mut body = plain.to_vec();
        self.seal_key.seal(Nonce::new(prefix, counter), name.as_bytes(), &mut body);
        out.extend_from_slice(&body);
        out
    }

    /// Opens what [`seal`](Self::seal) made for `name`; `None` (counted) if it does not.
    fn open(&self, name: &str, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let Some((n, body)) = sealed.split_first_chunk::<12>() else {
            inc(&self.stats.bad_values);
            return None;
        };
        let prefix: [u8; 4] = n[..4].try_into().expect("4 bytes");
        let counter = u64::from_be_bytes(n[4..].try_into().expect("8 bytes"));
        let mut buf = body.to_vec();
        match self.seal_key.open(Nonce::new(prefix, counter), name.as_bytes(), &mut buf) {
            Ok(plain) => {
                let len = plain.len();
                buf.truncate(len);
                Some(Zeroizing::new(buf))
            }
            Err(_) => {
                inc(&self.stats.bad_values);
                tracing::warn!(key = name, "a cluster value did not open under the cluster key");
                None
            }
        }
    }

    /// A call on the shared connection (proc threads).
    fn call<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        let mut conn = self.conn.lock();
        let r = conn.call(&self.stats, f);
        self.up.store(conn.is_up(), Ordering::Relaxed);
        r
    }

    /// Registers this node every third of the TTL and reads the member list.
    fn membership_loop(&self) {
        let period = self.settings.membership_ttl / 3;
        let Some(me) = self.me.get() else { return };
        let key = self.name_key("node", &me.name);
        let pattern = self.name_key("node", "*");
        let ttl_ms = self.settings.membership_ttl.as_millis() as u64;
        let mut conn = Conn::new(self.client.clone(), self.settings.timeout);
        while !self.stop.load(Ordering::SeqCst) {
            let value = me.encode();
            let members = conn.call(&self.stats, |c| {
                redis::cmd("SET").arg(&key).arg(&value).arg("PX").arg(ttl_ms).query::<()>(c)?;
                let mut names: Vec<String> = Vec::new();
                let mut cursor: u64 = 0;
                loop {
                    let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(256)
                        .query(c)?;
                    names.extend(batch);
                    cursor = next;
                    if cursor == 0 || names.len() > 100_000 {
                        break;
                    }
                }
                if names.is_empty() {
                    return Ok(Vec::new());
                }
                let values: Vec<Option<String>> = redis::cmd("MGET").arg(&names).query(c)?;
                Ok(values.into_iter().flatten().filter_map(|v| Member::decode(&v)).collect())
            });
            self.up.store(conn.is_up(), Ordering::Relaxed);
            if let Some(mut m) = members {
                m.sort_by(|a, b| a.name.cmp(&b.name));
                let changed = *self.members.read() != m;
                if changed {
                    if let Some(f) = self.on_members.get() {
                        f(&m);
                    }
                    *self.members.write() = m;
                }
            }
            self.sleep(period);
        }
    }

    /// Sleeps up to `d`, waking early when the cluster stops.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stop.load(Ordering::SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            // The stop flag is polled: stopping waits at most one poll.
            std::thread::park_timeout(left.min(IDLE_POLL));
        }
    }

    /// Sends relayed messages to Redis, in order, pipelined.
    fn relay_out_loop(&self) {
        let channel = format!("{}:ps", self.settings.prefix);
        let mut conn = Conn::new(self.client.clone(), self.settings.timeout);
        let mut batch = Vec::with_capacity(RELAY_BATCH);
        while !self.stop.load(Ordering::SeqCst) {
            match self.relay_rx.recv_timeout(IDLE_POLL) {
                Ok(job) => batch.push(job),
                Err(_) => continue,
            }
            while batch.len() < RELAY_BATCH {
                match self.relay_rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let mut pipe = redis::pipe();
            for Out(topic, payload) in &batch {
                pipe.cmd("PUBLISH").arg(&channel).arg(self.relay_frame(topic, payload)).ignore();
            }
            let n = batch.len() as u64;
            if conn.call(&self.stats, |c| pipe.query::<()>(c)).is_some() {
                self.stats.relayed_out.fetch_add(n, Ordering::Relaxed);
            } else {
                self.dropped(n, "redis did not take them");
            }
            batch.clear();
        }
    }

    /// Counts `n` messages that will not reach the other nodes, and says so (throttled).
    fn dropped(&self, n: u64, why: &str) {
        self.stats.relay_dropped.fetch_add(n, Ordering::Relaxed);
        if let Some(suppressed) = RELAY_DROPPED.check() {
            tracing::warn!(
                messages = n,
                why,
                suppressed,
                "pub/sub messages not relayed to the other nodes"
            );
        }
    }

    /// `version ‖ origin (16) ‖ topic length (1) ‖ topic ‖ payload`.
    fn relay_frame(&self, topic: &Topic, payload: &[u8]) -> Vec<u8> {
        let t = topic.as_bytes();
        let mut f = Vec::with_capacity(18 + t.len() + payload.len());
        f.push(RELAY_VERSION);
        f.extend_from_slice(&self.origin);
        f.push(t.len() as u8);
        f.extend_from_slice(t);
        f.extend_from_slice(payload);
        f
    }

    /// Receives the other nodes' messages and queues them to this node's subscribers.
    fn relay_in_loop(&self) {
        let channel = format!("{}:ps", self.settings.prefix);
        let mut backoff = BACKOFF_MIN;
        while !self.stop.load(Ordering::SeqCst) {
            let subscribed = (|| -> redis::RedisResult<()> {
                let mut c = self.client.get_connection_with_timeout(self.settings.timeout)?;
                c.set_write_timeout(Some(self.settings.timeout))?;
                let mut ps = c.as_pubsub();
                ps.subscribe(&channel)?;
                ps.set_read_timeout(Some(IDLE_POLL))?;
                inc(&self.stats.connects);
                backoff = BACKOFF_MIN;
                while !self.stop.load(Ordering::SeqCst) {
                    match ps.get_message() {
                        Ok(msg) => self.relayed(msg.get_payload_bytes()),
                        Err(e) if e.is_timeout() => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            })();
            if let Err(e) = subscribed {
                inc(&self.stats.redis_errors);
                self.up.store(false, Ordering::Relaxed);
                if let Some(suppressed) = REDIS_ERRORS.check() {
                    tracing::warn!(error = %e, suppressed, "cluster pub/sub subscription lost; retrying");
                }
                self.sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    /// One relayed message from Redis.
    fn relayed(&self, frame: &[u8]) {
        let parsed = (|| {
            let (&v, rest) = frame.split_first()?;
            let (origin, rest) = rest.split_first_chunk::<16>()?;
            let (&tlen, rest) = rest.split_first()?;
            let (topic, payload) = rest.split_at_checked(tlen as usize)?;
            (v == RELAY_VERSION).then_some((origin, Topic::new(topic).ok()?, payload))
        })();
        let Some((origin, topic, payload)) = parsed else {
            inc(&self.stats.bad_values);
            return;
        };
        if *origin == self.origin {
            return;
        }
        inc(&self.stats.relayed_in);
        if let Some(b) = self.broker.get() {
            b.deliver_relayed(&topic, payload);
        }
    }
}

impl SharedKeys for Cluster {
    fn publish(&self, id: &KeyId, material: &[u8], idle: Duration) {
        let name = self.name_key("key", &id.to_base64());
        let sealed = self.seal(&name, material);
        let ms = idle.as_millis() as u64;
        let r = self
            .call(|c| redis::cmd("SET").arg(&name).arg(sealed).arg("PX").arg(ms).query::<()>(c));
        if r.is_some() {
            inc(&self.stats.keys_published);
        }
    }

    fn fetch(&self, id: &KeyId) -> Option<Zeroizing<Vec<u8>>> {
        let name = self.name_key("key", &id.to_base64());
        let got: Option<Vec<u8>> = self.call(|c| redis::cmd("GET").arg(&name).query(c)).flatten();
        match got {
            Some(sealed) => {
                let plain = self.open(&name, &sealed)?;
                inc(&self.stats.keys_fetched);
                Some(plain)
            }
            None => {
                inc(&self.stats.keys_missed);
                None
            }
        }
    }

    fn claim(&self, id: &KeyId, seq: u64, idle: Duration) -> Option<bool> {
        let key = id.to_base64();
        let name = self.name_key("key", &key);
        let claim = self.name_key("seq", &format!("{key}:{seq}"));
        let ms = idle.as_millis() as u64;
        let (first,): (Option<String>,) = self.call(|c| {
            redis::pipe()
                .cmd("SET")
                .arg(&claim)
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .cmd("PEXPIRE")
                .arg(&name)
                .arg(ms)
                .ignore()
                .query(c)
        })?;
        if first.is_none() {
            inc(&self.stats.replays);
        }
        Some(first.is_some())
    }
}

impl SharedSessions for Cluster {
    fn publish(&self, id: &[u8; 16], blob: &[u8], ttl: Duration) -> bool {
        let name = self.session_key(id);
        let sealed = self.seal(&name, blob);
        let ms = ttl.as_millis() as u64;
        // NX: a name some node holds already (a UDP connection id two nodes drew) is not
        // overwritten; the session then stays with this node.
        let r: Option<Option<String>> = self.call(|c| {
            redis::cmd("SET").arg(&name).arg(sealed).arg("NX").arg("PX").arg(ms).query(c)
        });
        let stored = matches!(r, Some(Some(_)));
        if stored {
            inc(&self.stats.sessions_published);
        }
        stored
    }

    fn cid_tag(&self, body: &[u8; CID_TAGGED]) -> [u8; 2] {
        let h = hkdf_sha256(&self.settings.key[..], body, b"dap v1 cluster udp cid tag");
        [h[0], h[1]]
    }

    fn take(&self, id: &[u8; 16]) -> Taken {
        let name = self.session_key(id);
        let got: Option<Option<Vec<u8>>> = self.call(|c| redis::cmd("GETDEL").arg(&name).query(c));
        match got {
            Some(Some(sealed)) => match self.open(&name, &sealed) {
                Some(plain) => {
                    inc(&self.stats.sessions_taken);
                    Taken::Found(plain)
                }
                None => Taken::Absent,
            },
            Some(None) => {
                inc(&self.stats.sessions_missed);
                Taken::Absent
            }
            None => Taken::Unreachable,
        }
    }
}

impl Relay for Cluster {
    fn forward(&self, topic: &Topic, payload: &[u8]) {
        let job = Out(topic.clone(), Bytes::copy_from_slice(payload));
        match self.relay_tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped(1, "the relay queue is full");
            }
        }
    }
}

/// Reads a cluster key file: 64 hex digits (whitespace around them ignored).
///
/// # Errors
/// A message naming what is wrong.
pub fn load_key(path: &std::path::Path) -> Result<Zeroizing<[u8; 32]>, String> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| e.to_string())?);
    let digits = text.trim();
    if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("must hold 64 hex digits (32 bytes)".to_string());
    }
    let mut key = Zeroizing::new([0u8; 32]);
    for (i, pair) in digits.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
        key[i] = u8::from_str_radix(s, 16).map_err(|e| e.to_string())?;
    }
    Ok(key)
}

/// A new cluster key, as the file [`load_key`] reads.
pub fn new_key_file() -> Zeroizing<String> {
    let mut key = Zeroizing::new([0u8; 32]);
    random_bytes(&mut key[..]);
    Zeroizing::new(format!("{}\n", hex(&key[..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_and_refuse_garbage() {
        let m = Member { name: "a".into(), addr: "127.0.0.1:1".into(), udp_port: 2, started_ms: 3 };
        assert_eq!(Member::decode(&m.encode()), Some(m));
        assert_eq!(Member::decode("a\tb\tx\t1"), None);
        assert_eq!(Member::decode("a\tb\t1\t1\textra"), None);
    }

    fn unconnected() -> Arc<Cluster> {
        let mut key = Zeroizing::new([0u8; 32]);
        random_bytes(&mut key[..]);
        Cluster::new(ClusterSettings {
            redis: "redis://127.0.0.1:1/".into(),
            key,
            prefix: "t".into(),
            timeout: Duration::from_millis(50),
            membership_ttl: Duration::from_secs(1),
            relay_queue: 2,
            tls_roots: None,
            tls_client: None,
        })
        .unwrap()
    }

    #[test]
    fn sealed_values_open_only_under_their_name_and_key() {
        let c = unconnected();
        let sealed = c.seal("t:key:abc", b"secret");
        assert!(!sealed.windows(6).any(|w| w == b"secret"), "never in the clear");
        assert_eq!(c.open("t:key:abc", &sealed).as_deref().map(|v| &v[..]), Some(&b"secret"[..]));
        // Moved to another name, altered, or cut short: refused and counted.
        assert!(c.open("t:key:abd", &sealed).is_none());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(c.open("t:key:abc", &altered).is_none());
        assert!(c.open("t:key:abc", &sealed[..5]).is_none());
        assert_eq!(c.stats().bad_values.load(Ordering::Relaxed), 3);
        // Another cluster's key does not open it.
        assert!(unconnected().open("t:key:abc", &sealed).is_none());
        // Two seals of one value differ (a fresh nonce each).
        assert_ne!(c.seal("t:key:abc", b"secret"), sealed);
    }

    #[test]
    fn relayed_frames_round_trip_and_a_node_skips_its_own() {
        let a = unconnected();
        let b = unconnected();
        let topic = Topic::new("news").unwrap();
        let frame = a.relay_frame(&topic, b"hello");
        // No broker attached: counted as received, nowhere to go.
        b.relayed(&frame);
        assert_eq!(b.stats().relayed_in.load(Ordering::Relaxed), 1);
        a.relayed(&frame);
        assert_eq!(a.stats().relayed_in.load(Ordering::Relaxed), 0, "its own message");
        b.relayed(&frame[..10]);
        b.relayed(&[9; 30]);
        assert_eq!(b.stats().bad_values.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_full_relay_queue_drops_and_counts_and_redis_down_fails_fast() {
        let c = unconnected();
        let topic = Topic::new("t").unwrap();
        for _ in 0..5 {
            c.forward(&topic, b"x");
        }
        assert_eq!(c.stats().relay_dropped.load(Ordering::Relaxed), 3, "queue of 2");
        // Nothing listens on port 1: the call fails, and the next fails at once (back-off).
        let id = KeyId::random();
        assert!(SharedKeys::fetch(&*c, &id).is_none());
        let t = Instant::now();
        assert!(SharedKeys::fetch(&*c, &id).is_none());
        assert!(t.elapsed() < Duration::from_millis(40), "no connection attempt in back-off");
        assert!(c.stats().redis_errors.load(Ordering::Relaxed) >= 2);
        assert!(!c.is_up());
    }

    #[test]
    fn key_files_are_64_hex_digits() {
        let dir = std::env::temp_dir().join(format!("dap-cluster-key-{}", std::process::id()));
        std::fs::write(&dir, new_key_file().as_bytes()).unwrap();
        assert!(load_key(&dir).is_ok());
        std::fs::write(&dir, "abcd").unwrap();
        assert!(load_key(&dir).is_err());
        let _ = std::fs::remove_file(&dir);
    }
}
