//! The UDP transport on the reactor: one `SO_REUSEPORT` socket per worker, each worker's
//! [`Endpoint`] behind it, sessions created by stream_ctl moving onto UDP with their first
//! authentic datagram.
//!
//! - stream_ctl (transport UDP) picks a worker, a connection id that names it, and records
//!   the id as *pending* for the session; the answer carries the id and the port.
//! - A worker reads datagrams in batches. One for a connection it holds goes to that
//!   connection; one whose id names another worker is handed to that worker (the kernel's
//!   `SO_REUSEPORT` hash chose the socket, not the connection); one for a pending id of its
//!   own attaches the session (a server connection, its mux started with this socket as
//!   waker) and is handed to it.
//! - After every batch, timer and wake-up the worker flushes: each connection's transmits
//!   leave as GSO batches, events are taken (a closed connection detaches its session), and
//!   the socket's deadline is set to the endpoint's next timeout (pacing included).
//! - Writes from any thread through a `ChannelHandle` wake the worker, once per flush.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dap_proc::Flip;
use dap_reactor::{Datagrams, Esocket, EsocketHandle, Handler, UdpTransmit};
use parking_lot::Mutex;

use super::Wake;
use crate::channel::SessionInfo;
use crate::mux::Mux;
use crate::server::{CID_TAGGED, SharedSessions, StreamServer, Taken, udp_share_name};
use crate::session::SESSION_ID_LEN;
use crate::udp::connection::{ConnStats, Event, Incoming};
use crate::udp::ecn::Ecn;
use crate::udp::endpoint::{Endpoint, EndpointConfig, Routed};
use crate::udp::packet::{ConnectionId, peek_cid};

/// Counters of a server's UDP transport, all workers together.
#[derive(Debug, Default)]
pub struct UdpCounters {
    /// Datagrams received.
    pub datagrams_in: AtomicU64,
    /// Datagrams sent (segments of GSO batches counted one by one).
    pub datagrams_out: AtomicU64,
    /// Datagrams that reached a worker other than their connection's, handed over.
    pub forwarded: AtomicU64,
    /// Datagrams that could not be handed over (the other worker's inbox was full).
    pub forward_failed: AtomicU64,
    /// Sessions that moved onto UDP (their first datagram arrived).
    pub attached: AtomicU64,
    /// Datagrams for a pending id whose session was gone (expired) or could not attach.
    pub attach_failed: AtomicU64,
    /// In a cluster: sessions made on another node taken from the shared store for their
    /// first datagram here.
    pub cluster_taken: AtomicU64,
    /// In a cluster: datagrams for an id no node's session was found for (not tagged by
    /// the cluster, taken already, expired, or the store did not answer), or an id made
    /// here that another node attached first.
    pub cluster_missed: AtomicU64,
    /// In a cluster: datagrams dropped because the worker's lookups
    /// (`udp_cluster_lookups`, `udp_cluster_lookup_rate`), or the datagrams held for one
    /// (`udp_cluster_held`), were at their bound, the proc queue was full, the datagram was larger than a packet may
    /// be, or the server is draining (it takes no session from the cluster then).
    pub cluster_dropped: AtomicU64,
    /// Transmits the socket refused (its queue full): the engine sees them as lost.
    pub send_failed: AtomicU64,
    /// Datagrams that cannot be packets of this protocol (shorter than a packet, or other
    /// form bits), dropped.
    pub not_ours: AtomicU64,
    /// Datagrams for a connection id no connection, pending session or cluster knows,
    /// dropped.
    pub unknown_connection: AtomicU64,
    /// Connections that ended.
    pub closed: AtomicU64,
    /// Connections that moved to a new, validated client address (NAT rebinding).
    pub migrations: AtomicU64,
}

/// Bounds of the RTT histogram's buckets, in seconds (Prometheus `le`).
pub const RTT_BUCKETS: [f64; 12] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0];

/// How often each worker publishes its connections' statistics ([`UdpConnStats`]).
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// What a server's UDP connections did, all workers together, as last published: each
/// worker publishes once per [`PUBLISH_EVERY`] while it has connections (and once more
/// after its last one closed), so the figures are at most that old.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UdpConnStats {
    /// The counters of every connection, open or closed, summed: packets and bytes,
    /// losses, retransmissions, PTOs, key updates, path changes and validations.
    pub totals: ConnStats,
    /// Connections open.
    pub open: u64,
    /// The congestion windows of the open connections, summed, in bytes.
    pub cwnd_bytes: u64,
    /// Smoothed RTTs of the open connections, each observed once per publication: the
    /// count in each bucket of [`RTT_BUCKETS`] (not cumulative), then above the last.
    pub rtt_buckets: [u64; RTT_BUCKETS.len() + 1],
    /// The observed RTTs summed, in seconds.
    pub rtt_sum_seconds: f64,
    /// RTTs observed.
    pub rtt_count: u64,
}

impl UdpConnStats {
    fn add(&mut self, o: &UdpConnStats) {
        self.totals.add(&o.totals);
        self.open += o.open;
        self.cwnd_bytes += o.cwnd_bytes;
        for (a, b) in self.rtt_buckets.iter_mut().zip(o.rtt_buckets) {
            *a += b;
        }
        self.rtt_sum_seconds += o.rtt_sum_seconds;
        self.rtt_count += o.rtt_count;
    }

    /// Observes one RTT.
    fn observe_rtt(&mut self, rtt: Duration) {
        let s = rtt.as_secs_f64();
        let i = RTT_BUCKETS.iter().position(|&b| s <= b).unwrap_or(RTT_BUCKETS.len());
        self.rtt_buckets[i] += 1;
        self.rtt_sum_seconds += s;
        self.rtt_count += 1;
    }
}

/// A connection id stream_ctl handed out, waiting for its first datagram.
#[derive(Clone, Copy)]
struct Pending {
    session: [u8; SESSION_ID_LEN],
    expires: Instant,
    /// Published to the cluster: taken from there before it attaches here.
    shared: bool,
}

/// What a server's UDP workers share with its stream_ctl.
pub(crate) struct UdpShared {
    /// The port every worker's socket is bound to.
    pub(crate) port: u16,
    /// Each worker's socket, by worker index (set once all are bound).
    workers: OnceLock<Vec<EsocketHandle>>,
    /// Connection ids handed out by stream_ctl and not yet used.
    pending: Mutex<HashMap<ConnectionId, Pending>>,
    /// When the full `pending` may be swept for expired ids again (taken inside its lock).
    sweep: Mutex<crate::session::SweepGate>,
    /// Round-robin choice of worker for new sessions.
    next: AtomicUsize,
    /// The counters.
    pub(crate) counters: UdpCounters,
    /// Each worker's last published connection statistics, by worker index.
    published: Mutex<Vec<UdpConnStats>>,
}

impl std::fmt::Debug for UdpShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpShared").field("port", &self.port).finish_non_exhaustive()
    }
}

impl UdpShared {
    pub(crate) fn new(port: u16) -> Self {
        UdpShared {
            port,
            workers: OnceLock::new(),
            pending: Mutex::new(HashMap::new()),
            sweep: Mutex::new(Default::default()),
            next: AtomicUsize::new(0),
            counters: UdpCounters::default(),
            published: Mutex::new(Vec::new()),
        }
    }

    /// Every worker's connection statistics, summed.
    pub(crate) fn conn_stats(&self) -> UdpConnStats {
        let mut t = UdpConnStats::default();
        for w in self.published.lock().iter() {
            t.add(w);
        }
        t
    }

    fn publish(&self, worker: usize, stats: UdpConnStats) {
        let mut p = self.published.lock();
        if p.len() <= worker {
            p.resize(worker + 1, UdpConnStats::default());
        }
        p[worker] = stats;
    }

    pub(crate) fn set_workers(&self, handles: Vec<EsocketHandle>) {
        let _ = self.workers.set(handles);
    }

    /// Each worker's socket.
    pub(crate) fn worker_handles(&self) -> &[EsocketHandle] {
        self.workers.get().map_or(&[], |w| w.as_slice())
    }

    /// A fresh connection id for a new session, naming the worker that will own it, kept
    /// pending until `expires` (at most `max` ids pending: expired ones go first). In a
    /// cluster (`tag`), its last bytes are the cluster's tag over the others.
    pub(crate) fn reserve(
        &self,
        session: [u8; SESSION_ID_LEN],
        now: Instant,
        expires: Instant,
        max: usize,
        tag: Option<&dyn SharedSessions>,
    ) -> Option<ConnectionId> {
        let n = self.workers.get().map_or(1, |w| w.len().max(1));
        let worker = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut pending = self.pending.lock();
        if pending.len() >= max {
            if self.sweep.lock().due(now) {
                pending.retain(|_, p| p.expires > now);
            }
            if pending.len() >= max {
                return None;
            }
        }
        let fresh = || {
            let mut cid = ConnectionId::random(worker as u8);
            if let Some(t) = tag {
                let body: [u8; CID_TAGGED] = cid.0[..CID_TAGGED].try_into().expect("6 bytes");
                cid.0[CID_TAGGED..].copy_from_slice(&t.cid_tag(&body));
            }
            cid
        };
        let mut cid = fresh();
        while pending.contains_key(&cid) {
            cid = fresh();
        }
        pending.insert(cid, Pending { session, expires, shared: false });
        Some(cid)
    }

    /// A session was published to the cluster under pending id `cid`.
    pub(crate) fn mark_shared(&self, cid: &ConnectionId) {
        if let Some(p) = self.pending.lock().get_mut(cid) {
            p.shared = true;
        }
    }

    /// A session taken from the cluster waits here for its first datagram (already in
    /// hand) as if stream_ctl had made it here.
    fn insert_taken(&self, cid: ConnectionId, session: [u8; SESSION_ID_LEN], expires: Instant) {
        self.pending.lock().insert(cid, Pending { session, expires, shared: false });
    }

    /// Takes a pending id: the session it was handed out for.
    pub(crate) fn take(&self, cid: &ConnectionId) -> Option<[u8; SESSION_ID_LEN]> {
        self.pending.lock().remove(cid).map(|p| p.session)
    }

    /// Whether `cid` is pending here, and if so whether it was published to the cluster.
    fn pending(&self, cid: &ConnectionId) -> Option<bool> {
        self.pending.lock().get(cid).map(|p| p.shared)
    }
}

/// Whether a connection id carries the cluster's tag ([`SharedSessions::cid_tag`]).
fn tagged(store: &dyn SharedSessions, cid: &ConnectionId) -> bool {
    let (body, tag) = cid.0.split_at(CID_TAGGED);
    let want = store.cid_tag(body.try_into().expect("CID_TAGGED bytes"));
    // Constant time, as for any tag.
    want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// A UDP socket's handler that sends what its connections have.
trait Flush: Handler + 'static {
    fn flush(&mut self, es: &mut Esocket<'_>, now: Instant);
}

/// Wakes a UDP socket to flush (after writes through channel handles), once per flush
/// however many writes call it.
struct FlushWake<H> {
    handle: EsocketHandle,
    armed: Arc<AtomicBool>,
    _handler: std::marker::PhantomData<fn() -> H>,
}

impl<H> FlushWake<H> {
    fn new(handle: EsocketHandle, armed: Arc<AtomicBool>) -> Arc<Self> {
        Arc::new(FlushWake { handle, armed, _handler: std::marker::PhantomData })
    }
}

impl<H: Flush> Wake for FlushWake<H> {
    fn wake(&self) {
        if self.armed.swap(true, Ordering::AcqRel) {
            return;
        }
        let armed = self.armed.clone();
        let r = self.handle.exec(move |es| {
            armed.store(false, Ordering::Release);
            es.with_handler::<H, _>(|h, es| h.flush(es, Instant::now()));
        });
        if r.is_err() {
            self.armed.store(false, Ordering::Release);
        }
    }
}

/// Wakes a server connection's worker to flush, naming the connection so that the worker
/// looks at it ([`Endpoint::touch`]) without walking the others. Each connection is on the
/// worker's list at most once; the worker is woken once per flush however many wake.
struct ConnWake {
    cid: ConnectionId,
    /// On the worker's woken list.
    queued: Arc<AtomicBool>,
    worker: Arc<WorkerWake>,
}

/// A worker's side of [`ConnWake`]: the connections woken since its last flush, and the
/// one flush posted for them.
struct WorkerWake {
    flush: Arc<FlushWake<UdpWorker>>,
    woken: Mutex<Vec<(ConnectionId, Arc<AtomicBool>)>>,
}

impl Wake for ConnWake {
    fn wake(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.worker.woken.lock().push((self.cid, self.queued.clone()));
        }
        self.worker.flush.wake();
    }
}

/// Sends a transmit the engine wrote into `buf` (a GSO batch when it has segments).
fn send(es: &mut Esocket<'_>, t: &crate::udp::connection::Transmit, buf: &[u8]) -> bool {
    let mut tx = UdpTransmit::new(t.destination, &buf[..t.size]);
    if let Some(s) = t.segment_size {
        tx = tx.with_segment_size(s);
    }
    if let Some(e) = t.ecn {
        tx = tx.with_ecn(e);
    }
    es.send_batch(&tx).is_ok()
}

/// One worker's UDP socket handler: its endpoint and the sessions on it.
pub(crate) struct UdpWorker {
    server: StreamServer,
    shared: Arc<UdpShared>,
    endpoint: Endpoint,
    /// Session id of each connection, to detach it when the connection ends.
    /// The session of each connection, with when it attached (for its access-log line).
    sessions: HashMap<ConnectionId, ([u8; SESSION_ID_LEN], Instant)>,
    /// Transmit buffer.
    buf: Vec<u8>,
    gso_segments: usize,
    /// How the connections' muxes wake this worker (made with the first connection).
    wake: Option<Arc<WorkerWake>>,
    /// The woken list taken at a flush (kept for its capacity).
    woken: Vec<(ConnectionId, Arc<AtomicBool>)>,
    /// This worker's index, and its RTT observations so far (they accumulate).
    worker: usize,
    rtt_seen: UdpConnStats,
    /// When the statistics are next published, and whether something changed with no
    /// connection left to show it (the last one closed).
    next_publish: Instant,
    publish_owed: bool,
    /// Connection ids whose session is being taken from the cluster's store (a proc job
    /// each): when each started, and the datagrams that arrived for it meanwhile.
    lookups: HashMap<ConnectionId, (Instant, Vec<Held>)>,
    /// Ids the store had no session for, not asked about again until the instant given
    /// (a flow a load balancer sends to the wrong node must not cost Redis a call per
    /// datagram); at most [`MISSED_PER_LOOKUP`] × `udp_cluster_lookups` of them.
    missed: HashMap<ConnectionId, Instant>,
    /// Lookups this worker may still start now (`udp_cluster_lookup_rate`, a token bucket
    /// refilled as time passes), and when it was last refilled.
    lookup_tokens: f64,
    lookup_refilled: Instant,
}

/// How long an id the cluster's store had no session for is not asked about again.
const MISSED_FOR: Duration = Duration::from_secs(1);

/// Ids remembered as missed, per lookup a worker may have in flight.
const MISSED_PER_LOOKUP: usize = 16;

/// A datagram held while its connection's session is taken from the cluster.
struct Held {
    from: SocketAddr,
    ecn: Ecn,
    data: Vec<u8>,
}

/// What taking a session from the cluster's store came to.
enum Lookup {
    /// Made here, and now ours alone (or the store did not answer: ours anyway).
    Claimed,
    /// Made on another node, now in this node's table: this session.
    Loaded([u8; SESSION_ID_LEN]),
    /// Made here, but another node attached it first.
    TakenElsewhere,
    /// Not found, or not loadable.
    Missed,
}

impl UdpWorker {
    pub(crate) fn new(
        server: StreamServer,
        shared: Arc<UdpShared>,
        config: EndpointConfig,
        gso_segments: usize,
    ) -> Self {
        let lookup_rate = server.config().udp_cluster_lookup_rate;
        UdpWorker {
            server,
            shared,
            worker: config.worker as usize,
            endpoint: Endpoint::new(config),
            sessions: HashMap::new(),
            buf: Vec::new(),
            gso_segments: gso_segments.max(1),
            wake: None,
            woken: Vec::new(),
            rtt_seen: UdpConnStats::default(),
            next_publish: Instant::now() + PUBLISH_EVERY,
            publish_owed: false,
            lookups: HashMap::new(),
            missed: HashMap::new(),
            lookup_tokens: f64::from(lookup_rate),
            lookup_refilled: Instant::now(),
        }
    }

    /// Publishes this worker's connection statistics ([`UdpShared::conn_stats`]).
    fn publish(&mut self, now: Instant) {
        let mut s = UdpConnStats { totals: self.endpoint.totals(), ..UdpConnStats::default() };
        for c in self.endpoint.connections() {
            if c.is_closed() {
                continue;
            }
            s.open += 1;
            s.cwnd_bytes += c.window();
            if c.rtt().has_sample() {
                self.rtt_seen.observe_rtt(c.rtt().get());
            }
        }
        s.rtt_buckets = self.rtt_seen.rtt_buckets;
        s.rtt_sum_seconds = self.rtt_seen.rtt_sum_seconds;
        s.rtt_count = self.rtt_seen.rtt_count;
        self.shared.publish(self.worker, s);
        self.next_publish = now + PUBLISH_EVERY;
        self.publish_owed = false;
    }

    /// One datagram, from this worker's socket or handed over by another worker.
    ///
    /// The engine decrypts in place, and leaves the datagram as it was unless it routed it to
    /// a connection: a datagram forwarded, or retried once its connection is attached, is
    /// still the one that arrived.
    fn handle(
        &mut self,
        es: &mut Esocket<'_>,
        now: Instant,
        from: SocketAddr,
        ecn: Ecn,
        data: &mut [u8],
    ) {
        match self.endpoint.handle_datagram_ecn(now, from, Some(ecn), data) {
            Routed::Connection(_) => {}
            Routed::Forward(w) => {
                // In a cluster an id may name a worker of the node that made it, which this
                // node may not have: the worker it maps to here takes it.
                let n = self.shared.worker_handles().len().max(1);
                if w % n == self.worker {
                    self.unknown(es, now, from, ecn, data);
                } else {
                    self.forward(w % n, from, ecn, data);
                }
            }
            Routed::Dropped => self.unknown(es, now, from, ecn, data),
        }
    }

    /// A datagram for a connection id this worker's endpoint does not hold: the first of a
    /// session stream_ctl made here, or in a cluster made on another node.
    fn unknown(
        &mut self,
        es: &mut Esocket<'_>,
        now: Instant,
        from: SocketAddr,
        ecn: Ecn,
        data: &mut [u8],
    ) {
        let c = &self.shared.counters;
        let Some(cid) = peek_cid(data) else {
            c.not_ours.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let cfg = self.server.config();
        // Held datagrams are bounded in bytes too: none larger than a packet may be.
        let fits = data.len() <= cfg.udp.connection.mtu.max;
        if let Some((_, held)) = self.lookups.get_mut(&cid) {
            if fits && held.len() < cfg.udp_cluster_held {
                held.push(Held { from, ecn, data: data.to_vec() });
            } else {
                c.cluster_dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let pending = self.shared.pending(&cid);
        if pending == Some(false) {
            if self.attach(es, now, cid) {
                self.endpoint.handle_datagram_ecn(now, from, Some(ecn), data);
            }
            return;
        }
        let Some(store) = self.server.shared_store() else {
            c.unknown_connection.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.server.is_draining() || !fits {
            // A draining node takes no session from the cluster: another node may serve
            // it, and one published here stays there for them too.
            c.cluster_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let held = Held { from, ecn, data: data.to_vec() };
        if pending.is_some() {
            return self.look_up(es, now, store, cid, true, held);
        }
        let asked = self.missed.get(&cid).is_some_and(|until| *until > now);
        if !asked && tagged(store.as_ref(), &cid) {
            self.look_up(es, now, store, cid, false, held);
        } else {
            c.cluster_missed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes `cid`'s session from the cluster's store on a proc thread, holding `first`
    /// (and what follows it) until then: to claim a session made here (`made_here`) so that
    /// no other node attaches it, or to load one another node made.
    fn look_up(
        &mut self,
        es: &mut Esocket<'_>,
        now: Instant,
        store: Arc<dyn SharedSessions>,
        cid: ConnectionId,
        made_here: bool,
        first: Held,
    ) {
        let shared = self.shared.clone();
        let c = &shared.counters;
        let cfg = self.server.config();
        let (max, stale_after) = (cfg.udp_cluster_lookups, cfg.limits.connect_timeout);
        if self.lookups.len() >= max {
            // A lookup whose answer never came (its proc job lost) must not hold a place.
            let stale = now.checked_sub(stale_after).unwrap_or(now);
            self.lookups.retain(|_, (since, _)| *since > stale);
            if self.lookups.len() >= max {
                c.cluster_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if !self.lookup_allowed(now) {
            c.cluster_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let server = self.server.clone();
        let work = move || {
            let name = udp_share_name(&cid.0);
            match (store.take(&name), made_here) {
                (Taken::Found(_) | Taken::Unreachable, true) => Lookup::Claimed,
                (Taken::Absent, true) => Lookup::TakenElsewhere,
                (Taken::Found(blob), false) => server
                    .load_shared(&blob, Instant::now(), Some(cid.0))
                    .map_or(Lookup::Missed, Lookup::Loaded),
                (Taken::Absent | Taken::Unreachable, false) => Lookup::Missed,
            }
        };
        let then = move |es: &mut Esocket<'_>, found: Lookup| {
            es.with_handler::<UdpWorker, _>(|w, es| w.looked_up(es, cid, found));
        };
        match es.flip(dap_proc::Priority::Normal, work, then) {
            Ok(()) => {
                self.lookups.insert(cid, (now, vec![first]));
            }
            Err(_) => {
                // The proc queue is full: the datagram is dropped (the client sends again)
                // and the id stays as it was. Not attached unclaimed: another node could
                // still take the session.
                c.cluster_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Takes one lookup from the worker's budget (`udp_cluster_lookup_rate`), if any is
    /// left: whatever the ids, a worker never asks the store more often than that.
    fn lookup_allowed(&mut self, now: Instant) -> bool {
        let rate = f64::from(self.server.config().udp_cluster_lookup_rate);
        if rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.lookup_refilled).as_secs_f64();
        self.lookup_refilled = now;
        self.lookup_tokens = (self.lookup_tokens + elapsed * rate).min(rate);
        if self.lookup_tokens < 1.0 {
            return false;
        }
        self.lookup_tokens -= 1.0;
        true
    }

    /// Remembers that the store had no session for `cid` (for [`MISSED_FOR`]).
    fn remember_missed(&mut self, cid: ConnectionId, now: Instant) {
        let max = self.server.config().udp_cluster_lookups.saturating_mul(MISSED_PER_LOOKUP);
        if self.missed.len() >= max {
            self.missed.retain(|_, until| *until > now);
        }
        if self.missed.len() >= max {
            // Still full of live entries: one makes room (any one: the table only spares
            // the store calls, it promises nothing).
            if let Some(&old) = self.missed.keys().next() {
                self.missed.remove(&old);
            }
        }
        self.missed.insert(cid, now + MISSED_FOR);
    }

    /// The cluster's answer for `cid` ([`look_up`](Self::look_up)): attaches the session
    /// and hands it the datagrams held, or drops them.
    fn looked_up(&mut self, es: &mut Esocket<'_>, cid: ConnectionId, found: Lookup) {
        let now = Instant::now();
        // Its entry may be gone (dropped as stale while the store was slow): the answer is
        // acted on all the same, with no datagrams to hand over.
        let held = self.lookups.remove(&cid).map(|(_, held)| held).unwrap_or_default();
        let c = self.shared.clone();
        let c = &c.counters;
        let attached = match found {
            Lookup::Claimed => self.attach(es, now, cid),
            Lookup::Loaded(id) => {
                // Loaded into the table on the proc thread: pending here from now on.
                c.cluster_taken.fetch_add(1, Ordering::Relaxed);
                let expires = now + self.server.config().limits.connect_timeout;
                self.shared.insert_taken(cid, id, expires);
                self.attach(es, now, cid)
            }
            Lookup::TakenElsewhere => {
                if let Some(id) = self.shared.take(&cid) {
                    self.server.udp_taken_elsewhere(&id);
                }
                false
            }
            Lookup::Missed => false,
        };
        if attached {
            for mut h in held {
                self.endpoint.handle_datagram_ecn(now, h.from, Some(h.ecn), &mut h.data);
            }
        } else {
            c.cluster_missed.fetch_add(held.len() as u64, Ordering::Relaxed);
            self.remember_missed(cid, now);
        }
        self.flush(es, now);
    }

    /// Hands a datagram to the worker its connection id names.
    fn forward(&self, worker: usize, from: SocketAddr, ecn: Ecn, data: &[u8]) {
        let c = &self.shared.counters;
        let Some(h) = self.shared.workers.get().and_then(|w| w.get(worker)) else {
            c.forward_failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut data = data.to_vec();
        let r = h.exec(move |es| {
            es.with_handler::<UdpWorker, _>(|w, es| {
                let now = Instant::now();
                w.handle(es, now, from, ecn, &mut data);
                w.flush(es, now);
            });
        });
        match r {
            Ok(()) => c.forwarded.fetch_add(1, Ordering::Relaxed),
            Err(_) => c.forward_failed.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// The first datagram for a pending id: the session moves onto UDP here.
    fn attach(&mut self, es: &mut Esocket<'_>, now: Instant, cid: ConnectionId) -> bool {
        let c = &self.shared.counters;
        let Some(id) = self.shared.take(&cid) else { return false };
        if self.server.is_draining() {
            c.attach_failed.fetch_add(1, Ordering::Relaxed);
            self.server.udp_detach(&id);
            return false;
        }
        let Ok(params) = self.server.udp_attach(&id, now) else {
            c.attach_failed.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let info = SessionInfo { session_id: params.id, client: params.client };
        let mut mux = Mux::new(&params.channels, self.server.procs(), info, params.limits.mux);
        mux.set_reassembly_budget(self.server.reassembly_budget().clone());
        if self.endpoint.accept_with_id(now, &params, cid, mux).is_err() {
            c.attach_failed.fetch_add(1, Ordering::Relaxed);
            self.server.udp_detach(&id);
            return false;
        }
        let worker = self
            .wake
            .get_or_insert_with(|| {
                Arc::new(WorkerWake {
                    flush: FlushWake::new(es.handle(), Arc::new(AtomicBool::new(false))),
                    woken: Mutex::new(Vec::new()),
                })
            })
            .clone();
        let waker = Arc::new(ConnWake { cid, queued: Arc::new(AtomicBool::new(false)), worker });
        if let Some(conn) = self.endpoint.connection(cid) {
            conn.mux().start(waker);
        }
        self.sessions.insert(cid, (id, Instant::now()));
        self.server.udp_opened();
        c.attached.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The server's drain, step 1: no connection takes channel data or hands a message
    /// to a handler any more.
    pub(crate) fn stop_intake(&mut self) {
        self.endpoint.stop_intake_all();
    }

    /// The server is shutting down: every connection sends what it holds, then CLOSE
    /// going-away.
    pub(crate) fn go_away(&mut self, es: &mut Esocket<'_>) {
        self.endpoint.go_away_all(crate::transport::CloseCode::GoingAway as u16);
        self.flush(es, Instant::now());
    }

    /// The shutdown's grace period is over: every connection still open is cut off, its
    /// CLOSE saying how many messages it discarded. Returns the messages discarded.
    pub(crate) fn cut_off(&mut self, es: &mut Esocket<'_>) -> u64 {
        let now = Instant::now();
        let code = crate::transport::CloseCode::GoingAway as u16;
        let reason = super::http::going_away_reason;
        let (streams, unsent) = self.endpoint.cut_off_all(now, code, reason);
        if streams > 0 {
            self.server.note_cut_off(streams as u64, unsent);
            tracing::warn!(streams, unsent, "udp streams cut off at the end of the grace period");
        }
        self.flush(es, now);
        unsent
    }
}

impl Flush for UdpWorker {
    /// Sends what every connection has, takes their events, and re-arms the deadline.
    fn flush(&mut self, es: &mut Esocket<'_>, now: Instant) {
        if let Some(w) = &self.wake {
            std::mem::swap(&mut *w.woken.lock(), &mut self.woken);
            for (cid, queued) in self.woken.drain(..) {
                queued.store(false, Ordering::Release);
                self.endpoint.touch(cid);
            }
        }
        let c = &self.shared.counters;
        while let Some(t) = self.endpoint.poll_transmit(now, self.gso_segments, &mut self.buf) {
            let n = t.segment_size.map_or(1, |s| t.size.div_ceil(s)) as u64;
            let counter = if send(es, &t, &self.buf) { &c.datagrams_out } else { &c.send_failed };
            counter.fetch_add(n, Ordering::Relaxed);
        }
        while let Some((cid, ev)) = self.endpoint.poll_event() {
            if let Event::Migrated(to) = ev {
                tracing::debug!(%to, "udp connection moved to a new address");
                c.migrations.fetch_add(1, Ordering::Relaxed);
            }
            if let Event::Closed(reason) = ev {
                tracing::debug!(?reason, "udp connection closed");
                c.closed.fetch_add(1, Ordering::Relaxed);
                self.publish_owed = true;
                if let Some((id, opened)) = self.sessions.remove(&cid) {
                    if let Some(conn) = self.endpoint.connection(cid) {
                        let m = conn.mux();
                        let (channels, counters) = (m.channel_ids(), m.counters());
                        self.server.note_udp_end(&counters, &conn.stats());
                        let lasted = opened.elapsed();
                        crate::stats::log_session_end(
                            &id, "udp", &channels, &counters, lasted, &reason,
                        );
                    }
                    self.server.udp_detach(&id);
                    self.server.udp_closed();
                }
            }
        }
        if now >= self.next_publish && (self.publish_owed || !self.endpoint.is_empty()) {
            self.publish(now);
        }
        let mut next = self.endpoint.poll_timeout();
        if self.publish_owed || !self.endpoint.is_empty() {
            next = Some(next.map_or(self.next_publish, |t| t.min(self.next_publish)));
        }
        let after = next.map(|t| t.saturating_duration_since(now));
        let _ = es.set_deadline(after.map(|d| d.max(Duration::from_micros(100))));
    }
}

/// Datagrams listed at a time by [`in_parts`].
const PART: usize = 64;

/// Hands the datagrams of `batch` to `f` in order, in parts of up to [`PART`] listed on
/// the stack (a receive batch is up to hundreds: one list of them all would be fresh heap
/// memory every time); returns how many there were.
fn in_parts(batch: &mut Datagrams<'_>, mut f: impl FnMut(&mut [Incoming<'_>])) -> u64 {
    let mut items: smallvec::SmallVec<[Incoming<'_>; PART]> = smallvec::SmallVec::new();
    let mut datagrams = batch.iter_mut();
    let mut total = 0;
    loop {
        items.clear();
        items.extend(datagrams.by_ref().take(PART).map(|d| Incoming {
            from: d.from,
            ecn: Some(d.ecn),
            data: d.data,
        }));
        if items.is_empty() {
            return total;
        }
        total += items.len() as u64;
        f(&mut items);
    }
}

impl UdpWorker {
    /// Runs of datagrams for one connection here go to it together (one AEAD batch);
    /// anything else is routed one by one.
    fn dispatch(&mut self, es: &mut Esocket<'_>, now: Instant, items: &mut [Incoming<'_>]) {
        let n = items.len();
        let mut i = 0;
        while i < n {
            let cid = peek_cid(items[i].data);
            let mut end = i + 1;
            if let Some(cid) = cid {
                while end < n && peek_cid(items[end].data) == Some(cid) {
                    end += 1;
                }
                if self.endpoint.handle_datagrams(now, cid, &mut items[i..end]) {
                    i = end;
                    continue;
                }
            }
            for d in &mut items[i..end] {
                self.handle(es, now, d.from, d.ecn.unwrap_or(Ecn::NotEct), d.data);
            }
            i = end;
        }
    }
}

impl Handler for UdpWorker {
    fn on_datagrams(&mut self, es: &mut Esocket<'_>, batch: &mut Datagrams<'_>) {
        let now = Instant::now();
        // A run for one connection cut at a part's end goes on in the next part, in order.
        let total = in_parts(batch, |items| self.dispatch(es, now, items));
        self.shared.counters.datagrams_in.fetch_add(total, Ordering::Relaxed);
        self.flush(es, now);
    }

    fn on_timeout(&mut self, es: &mut Esocket<'_>) -> bool {
        let now = Instant::now();
        self.endpoint.handle_timeout(now);
        self.flush(es, now);
        true
    }
}

/// A client session over UDP: its own socket (an ephemeral port), its [`Connection`], and
/// the stream events a client machine expects.
///
/// [`Connection`]: crate::udp::connection::Connection
pub(crate) struct UdpClientConn {
    conn: crate::udp::connection::Connection,
    events: super::http::EventSink,
    stats: Arc<crate::stats::StreamStats>,
    /// Until the first authentic answer: when to give up.
    connect_by: Option<Instant>,
    connected: bool,
    /// The first datagram left (`StreamEvent::Opened` reported).
    opened: bool,
    closed: bool,
    buf: Vec<u8>,
    gso_segments: usize,
    wake_armed: Arc<AtomicBool>,
}

impl UdpClientConn {
    pub(crate) fn new(
        conn: crate::udp::connection::Connection,
        events: super::http::EventSink,
        stats: Arc<crate::stats::StreamStats>,
        connect_timeout: Duration,
    ) -> Self {
        UdpClientConn {
            conn,
            events,
            stats,
            connect_by: Some(Instant::now() + connect_timeout),
            connected: false,
            opened: false,
            closed: false,
            buf: Vec::new(),
            gso_segments: 64,
            wake_armed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn end(&mut self, es: &mut Esocket<'_>, err: super::StreamError) {
        if !self.closed {
            self.closed = true;
            if self.connected {
                crate::stats::StreamStats::dec(&self.stats.streams_open);
            }
            crate::stats::StreamStats::inc(&self.stats.streams_closed);
            (self.events)(super::http::StreamEvent::Closed(err));
        }
        es.close();
    }
}

impl Flush for UdpClientConn {
    fn flush(&mut self, es: &mut Esocket<'_>, now: Instant) {
        if self.closed {
            return;
        }
        while let Some(t) = self.conn.poll_transmit(now, self.gso_segments, &mut self.buf) {
            let sent = send(es, &t, &self.buf);
            if sent && !self.opened {
                self.opened = true;
                (self.events)(super::http::StreamEvent::Opened { esocket: es.handle() });
            }
        }
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::Connected => {
                    self.connected = true;
                    self.connect_by = None;
                    crate::stats::StreamStats::inc(&self.stats.streams_open);
                    let channels = self
                        .conn
                        .mux()
                        .channel_ids()
                        .into_iter()
                        .filter_map(|id| self.conn.mux().handle(id))
                        .collect();
                    (self.events)(super::http::StreamEvent::Connected {
                        esocket: es.handle(),
                        channels,
                    });
                }
                Event::Migrated(_) => {}
                Event::Closed(reason) => {
                    use crate::udp::connection::CloseReason;
                    let err = match reason {
                        CloseReason::Peer { code, reason } => super::StreamError::PeerClosed {
                            code: super::CloseCode::from_u16(code),
                            reason,
                        },
                        CloseReason::Local(_) => super::StreamError::LocalClose,
                        CloseReason::IdleTimeout => super::StreamError::IdleTimeout,
                        CloseReason::Protocol(why) => super::StreamError::Protocol(why),
                    };
                    return self.end(es, err);
                }
            }
        }
        if self.connect_by.is_some_and(|t| now >= t) {
            let err = super::StreamError::Io("no authenticated answer over UDP".into());
            return self.end(es, err);
        }
        let next = [self.conn.poll_timeout(), self.connect_by].into_iter().flatten().min();
        let after = next.map(|t| t.saturating_duration_since(now));
        let _ = es.set_deadline(after.map(|d| d.max(Duration::from_micros(100))));
    }
}

impl Handler for UdpClientConn {
    fn on_new(&mut self, es: &mut Esocket<'_>) {
        let waker = FlushWake::<UdpClientConn>::new(es.handle(), self.wake_armed.clone());
        self.conn.mux().start(waker);
        self.flush(es, Instant::now());
    }

    fn on_datagrams(&mut self, es: &mut Esocket<'_>, batch: &mut Datagrams<'_>) {
        let now = Instant::now();
        in_parts(batch, |items| self.conn.handle_datagrams(now, items));
        self.flush(es, now);
    }

    fn on_timeout(&mut self, es: &mut Esocket<'_>) -> bool {
        let now = Instant::now();
        self.conn.handle_timeout(now);
        self.flush(es, now);
        true
    }

    fn on_delete(&mut self, es: &mut Esocket<'_>) {
        // Closed from here (the client tore the session down): tell the server, best
        // effort, then report.
        if !self.closed {
            let now = Instant::now();
            self.conn.close(now, super::CloseCode::Normal as u16);
            if let Some(t) = self.conn.poll_transmit(now, 1, &mut self.buf) {
                let _ = es.send_batch(&UdpTransmit::new(t.destination, &self.buf[..t.size]));
            }
            self.closed = true;
            if self.connected {
                crate::stats::StreamStats::dec(&self.stats.streams_open);
            }
            crate::stats::StreamStats::inc(&self.stats.streams_closed);
            (self.events)(super::http::StreamEvent::Closed(super::StreamError::LocalClose));
        }
        self.conn.mux().close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::FULL_SWEEP_EVERY;

    #[test]
    fn full_pending_ids_are_swept_at_most_every_interval() {
        let shared = UdpShared::new(1);
        let now = Instant::now();
        let soon = now + Duration::from_millis(10);
        let a = shared.reserve([1; SESSION_ID_LEN], now, soon, 2, None).unwrap();
        assert!(shared.reserve([2; SESSION_ID_LEN], now, soon, 2, None).is_some());
        assert!(shared.reserve([3; SESSION_ID_LEN], now, soon, 2, None).is_none());
        // Both expired, but the last sweep was too recent.
        let expired = soon + Duration::from_millis(1);
        assert!(shared.reserve([3; SESSION_ID_LEN], expired, expired, 2, None).is_none());
        assert_eq!(shared.pending(&a), Some(false));
        // Past the interval the expired ids go and the new one fits.
        let next = now + FULL_SWEEP_EVERY;
        let c = shared.reserve([3; SESSION_ID_LEN], next, next + FULL_SWEEP_EVERY, 2, None);
        assert!(c.is_some());
        assert_eq!(shared.pending(&a), None);
        assert_eq!(shared.take(&c.unwrap()), Some([3; SESSION_ID_LEN]));
    }
}
