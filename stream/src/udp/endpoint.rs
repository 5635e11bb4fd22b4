//! One worker's UDP connections, sans-IO: routes datagrams by connection id, tells the
//! driver when a datagram belongs to another worker (the id names it), and drops — never
//! answers — datagrams for connections it does not have.
//!
//! # Calling order
//!
//! As for a [`Connection`], across all of them: [`handle_datagram`](Endpoint::handle_datagram)
//! for each datagram, [`handle_timeout`](Endpoint::handle_timeout) when
//! [`poll_timeout`](Endpoint::poll_timeout) says, then
//! [`poll_transmit`](Endpoint::poll_transmit) until `None`, then
//! [`poll_event`](Endpoint::poll_event) until `None` (closed connections are removed there).
//! After changing a connection from outside (through [`connection`](Endpoint::connection),
//! or when its mux's waker fired: [`touch`](Endpoint::touch)), poll again.
//!
//! # Cost per call
//!
//! Nothing here walks every connection: a worker may hold tens of thousands and most are
//! idle at any moment. A connection something happened to (a datagram, a timer, a touch)
//! joins the *active* list, which `poll_transmit` works through in turn until each has
//! nothing to send; one with events joins the *event* list `poll_event` works through; and
//! each connection's next timeout sits in a heap, so `poll_timeout` is the heap's top and
//! `handle_timeout` visits only the connections that are due.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::connection::{ConnStats, Connection, ConnectionConfig, Event, Incoming, Side, Transmit};
use super::ecn::Ecn;
use super::packet::{self, CidHash, ConnectionId};
use crate::mux::Mux;
use crate::session::SessionParams;

/// An endpoint's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EndpointConfig {
    /// This worker's index: byte 0 of the connection ids it hands out.
    pub worker: u8,
    /// Connections held at once (65,536).
    pub max_connections: usize,
    /// Each connection's settings.
    pub connection: ConnectionConfig,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            worker: 0,
            max_connections: 1 << 16,
            connection: ConnectionConfig::default(),
        }
    }
}

/// What became of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routed {
    /// Handed to this connection.
    Connection(ConnectionId),
    /// Its connection id names another worker: forward it there.
    Forward(usize),
    /// Not a packet of this version, or for no connection here: dropped and counted.
    Dropped,
}

/// The endpoint is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the endpoint holds its maximum of connections")]
pub struct EndpointFull;

/// Counters of an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams that cannot be packets of this version.
    pub not_ours: u64,
    /// Datagrams for a connection id this endpoint does not have.
    pub unknown_connection: u64,
    /// Datagrams whose id names another worker.
    pub forwarded: u64,
    /// Connections refused because the endpoint was full.
    pub refused_full: u64,
}

/// A connection and where it stands in the endpoint's lists.
#[derive(Debug)]
struct Slot {
    conn: Connection,
    /// In `active`.
    active: bool,
    /// In `eventful`.
    eventful: bool,
    /// The timeout last put in the heap for it (heap entries that differ are stale).
    deadline: Option<Instant>,
}

/// One worker's connections.
#[derive(Debug)]
pub struct Endpoint {
    config: EndpointConfig,
    conns: HashMap<ConnectionId, Slot, CidHash>,
    /// Connections that may have something to send, in turn.
    active: VecDeque<ConnectionId>,
    /// Connections that may have events, or are closed and to be removed.
    eventful: VecDeque<ConnectionId>,
    /// Each connection's next timeout (with stale entries, skipped when met).
    timers: BinaryHeap<Reverse<(Instant, ConnectionId)>>,
    stats: EndpointStats,
    /// The counters of the connections removed, summed.
    retired: ConnStats,
}

impl Endpoint {
    /// An empty endpoint.
    pub fn new(config: EndpointConfig) -> Self {
        Endpoint {
            config,
            conns: HashMap::default(),
            active: VecDeque::new(),
            eventful: VecDeque::new(),
            timers: BinaryHeap::new(),
            stats: EndpointStats::default(),
            retired: ConnStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// The counters of every connection this endpoint has held, summed: those removed and
    /// those open.
    pub fn totals(&self) -> ConnStats {
        let mut t = self.retired;
        for s in self.conns.values() {
            t.add(&s.conn.stats());
        }
        t
    }

    /// The connections held, in no particular order.
    pub fn connections(&self) -> impl Iterator<Item = &Connection> {
        self.conns.values().map(|s| &s.conn)
    }

    /// Connections held.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A connection, to act on from outside: it is [touched](Self::touch), so the next
    /// polls see what changed.
    pub fn connection(&mut self, cid: ConnectionId) -> Option<&mut Connection> {
        self.touch(cid);
        self.conns.get_mut(&cid).map(|s| &mut s.conn)
    }

    /// Something may have changed for connection `cid` outside the endpoint's calls (its
    /// mux was written to from another thread, say): the next
    /// [`poll_transmit`](Self::poll_transmit) and [`poll_event`](Self::poll_event) look at
    /// it.
    pub fn touch(&mut self, cid: ConnectionId) {
        let Some(s) = self.conns.get_mut(&cid) else { return };
        if !s.active {
            s.active = true;
            self.active.push_back(cid);
        }
        if !s.eventful {
            s.eventful = true;
            self.eventful.push_back(cid);
        }
    }

    fn insert(&mut self, conn: Connection) -> Result<ConnectionId, EndpointFull> {
        if self.conns.len() >= self.config.max_connections {
            self.stats.refused_full += 1;
            return Err(EndpointFull);
        }
        let cid = conn.cid();
        self.conns.insert(cid, Slot { conn, active: false, eventful: false, deadline: None });
        self.touch(cid);
        Ok(cid)
    }
    /// Server: a session from stream_ctl becomes a connection waiting for the client's
    /// first packet, under a fresh connection id that names this worker (returned, for the
    /// stream_ctl answer).
    ///
    /// # Errors
    /// [`EndpointFull`].
    pub fn accept(
        &mut self,
        now: Instant,
        params: &SessionParams,
        mux: Mux,
    ) -> Result<ConnectionId, EndpointFull> {
        let mut cid = ConnectionId::random(self.config.worker);
        while self.conns.contains_key(&cid) {
            cid = ConnectionId::random(self.config.worker);
        }
        let conn =
            Connection::new(Side::Server, params, cid, None, mux, self.config.connection, now);
        self.insert(conn)
    }

    /// Server: a session whose connection id was chosen already (at stream_ctl, naming
    /// this worker) becomes a connection waiting for the client's first packet.
    ///
    /// # Errors
    /// [`EndpointFull`], or the id is in use here already (reported as full).
    pub fn accept_with_id(
        &mut self,
        now: Instant,
        params: &SessionParams,
        cid: ConnectionId,
        mux: Mux,
    ) -> Result<ConnectionId, EndpointFull> {
        if self.conns.contains_key(&cid) {
            return Err(EndpointFull);
        }
        let conn =
            Connection::new(Side::Server, params, cid, None, mux, self.config.connection, now);
        self.insert(conn)
    }

    /// Client: a connection to `remote` on the id the server chose.
    ///
    /// # Errors
    /// [`EndpointFull`], or the id is in use here already (reported as full).
    pub fn connect(
        &mut self,
        now: Instant,
        params: &SessionParams,
        cid: ConnectionId,
        remote: SocketAddr,
        mux: Mux,
    ) -> Result<ConnectionId, EndpointFull> {
        if self.conns.contains_key(&cid) {
            return Err(EndpointFull);
        }
        let conn = Connection::new(
            Side::Client,
            params,
            cid,
            Some(remote),
            mux,
            self.config.connection,
            now,
        );
        self.insert(conn)
    }

    /// A datagram arrived from `from` at `now` (decrypted in place if it is handled), its
    /// ECN codepoint unknown.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &mut [u8],
    ) -> Routed {
        self.handle_datagram_ecn(now, from, None, datagram)
    }

    /// A datagram arrived from `from` at `now` with the ECN codepoint `ecn`. It is
    /// decrypted in place if a connection takes it ([`Routed::Connection`]); otherwise it is
    /// left as it arrived, to forward or to try again.
    pub fn handle_datagram_ecn(
        &mut self,
        now: Instant,
        from: SocketAddr,
        ecn: Option<Ecn>,
        datagram: &mut [u8],
    ) -> Routed {
        let Some(cid) = packet::peek_cid(datagram) else {
            self.stats.not_ours += 1;
            return Routed::Dropped;
        };
        match self.conns.get_mut(&cid) {
            Some(s) => {
                s.conn.handle_datagram_ecn(now, from, ecn, datagram);
                self.touch(cid);
                Routed::Connection(cid)
            }
            None if cid.worker() != self.config.worker as usize => {
                self.stats.forwarded += 1;
                Routed::Forward(cid.worker())
            }
            None => {
                self.stats.unknown_connection += 1;
                Routed::Dropped
            }
        }
    }

    /// Datagrams of one receive batch for connection `cid`, in order
    /// ([`Connection::handle_datagrams`]); `false`, with nothing done, when no connection
    /// here has that id (route them one by one then).
    pub fn handle_datagrams(
        &mut self,
        now: Instant,
        cid: ConnectionId,
        batch: &mut [Incoming<'_>],
    ) -> bool {
        let Some(s) = self.conns.get_mut(&cid) else { return false };
        s.conn.handle_datagrams(now, batch);
        self.touch(cid);
        true
    }

    /// Every connection goes away gracefully with `code` ([`Connection::go_away`]).
    /// Every connection stops taking channel data and handing messages to handlers
    /// ([`Connection::stop_intake`]), as a server's drain begins.
    pub fn stop_intake_all(&mut self) {
        for s in self.conns.values_mut() {
            s.conn.stop_intake();
        }
    }

    /// Every connection still open is cut off ([`Connection::cut_off`]); returns how many
    /// were and the messages they discarded.
    pub fn cut_off_all(
        &mut self,
        now: Instant,
        code: u16,
        reason: impl Fn(usize) -> String,
    ) -> (usize, u64) {
        let cids: Vec<ConnectionId> = self.conns.keys().copied().collect();
        let (mut streams, mut unsent) = (0, 0);
        for cid in cids {
            if let Some(s) = self.conns.get_mut(&cid)
                && let Some(n) = s.conn.cut_off(now, code, &reason)
            {
                streams += 1;
                unsent += n as u64;
            }
            self.touch(cid);
        }
        (streams, unsent)
    }

    /// Every connection goes away gracefully ([`Connection::go_away`]).
    pub fn go_away_all(&mut self, code: u16) {
        let cids: Vec<ConnectionId> = self.conns.keys().copied().collect();
        for cid in cids {
            if let Some(s) = self.conns.get_mut(&cid) {
                s.conn.go_away(code);
            }
            self.touch(cid);
        }
    }

    /// Puts connection `cid`'s next timeout in the heap if it changed.
    fn schedule(&mut self, cid: ConnectionId) {
        let Some(s) = self.conns.get_mut(&cid) else { return };
        let d = s.conn.poll_timeout();
        if d == s.deadline {
            return;
        }
        s.deadline = d;
        if let Some(d) = d {
            self.timers.push(Reverse((d, cid)));
        }
        // Stale entries leave when they come due; past this many, rebuild the heap.
        if self.timers.len() > 2 * self.conns.len() + 1024 {
            self.timers = self
                .conns
                .iter()
                .filter_map(|(&cid, s)| s.deadline.map(|d| Reverse((d, cid))))
                .collect();
        }
    }

    /// Whether a heap entry is the connection's current timeout.
    fn is_current(&self, at: Instant, cid: ConnectionId) -> bool {
        self.conns.get(&cid).is_some_and(|s| s.deadline == Some(at))
    }

    /// The earliest timeout of any connection.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.settle();
        while let Some(&Reverse((at, cid))) = self.timers.peek() {
            if self.is_current(at, cid) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    /// Connections acted on since they last left the active list may have new timeouts:
    /// puts them in the heap.
    fn settle(&mut self) {
        for i in 0..self.active.len() {
            let cid = self.active[i];
            self.schedule(cid);
        }
    }

    /// Runs the timeouts that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.settle();
        while let Some(&Reverse((at, cid))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if !self.is_current(at, cid) {
                continue;
            }
            if let Some(s) = self.conns.get_mut(&cid) {
                s.deadline = None;
                s.conn.handle_timeout(now);
            }
            // Its next timeout is taken once it has sent (a timer such as a due ACK may
            // stay due until then): visited once here, whatever it says.
            self.touch(cid);
        }
    }

    /// The next datagram (or GSO batch) of any connection, taking the active connections
    /// in turn; each leaves the active list once it has nothing more to send.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_segments: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        while let Some(&cid) = self.active.front() {
            let Some(s) = self.conns.get_mut(&cid) else {
                self.active.pop_front();
                continue;
            };
            if let Some(t) = s.conn.poll_transmit(now, max_segments, buf) {
                // Its turn is over: the others go next.
                self.active.rotate_left(1);
                self.touch_events(cid);
                return Some(t);
            }
            s.active = false;
            self.active.pop_front();
            self.touch_events(cid);
            self.schedule(cid);
        }
        None
    }

    /// Puts `cid` on the event list.
    fn touch_events(&mut self, cid: ConnectionId) {
        if let Some(s) = self.conns.get_mut(&cid)
            && !s.eventful
        {
            s.eventful = true;
            self.eventful.push_back(cid);
        }
    }

    /// The next event of any connection; a closed connection is removed once its last
    /// event is taken.
    pub fn poll_event(&mut self) -> Option<(ConnectionId, Event)> {
        while let Some(&cid) = self.eventful.front() {
            let Some(s) = self.conns.get_mut(&cid) else {
                self.eventful.pop_front();
                continue;
            };
            if let Some(e) = s.conn.poll_event() {
                return Some((cid, e));
            }
            self.eventful.pop_front();
            s.eventful = false;
            if s.conn.is_closed()
                && let Some(s) = self.conns.remove(&cid)
            {
                self.retired.add(&s.conn.stats());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::channel::{Channel, ChannelHandler, ChannelProcs, Message, SessionInfo};
    use crate::mux::MuxConfig;
    use crate::session::{SessionLimits, TransportKind};
    use crate::transport::Wake;
    use dap_net::enc::cipher::CipherSuite;
    use parking_lot::Mutex;

    struct NoWake;
    impl Wake for NoWake {
        fn wake(&self) {}
    }

    struct Echo(Arc<Mutex<Vec<Vec<u8>>>>);
    impl ChannelHandler for Echo {
        fn packet_in(&mut self, ch: &mut Channel<'_>, msg: Message) {
            self.0.lock().push(msg.data.to_vec());
            let _ = ch.write(msg.ty, msg.data);
        }
    }

    fn params(n: u8) -> SessionParams {
        SessionParams {
            unreliable: Vec::new(),
            udp: None,
            id: [n; 16],
            suite: CipherSuite::Aes256Gcm,
            secret: [n.wrapping_add(1); 32],
            channels: b"E".to_vec(),
            transport: TransportKind::Udp,
            limits: SessionLimits::default(),
            udp_port: 0,
            client: None,
        }
    }

    fn mux(log: &Arc<Mutex<Vec<Vec<u8>>>>) -> Mux {
        let mut procs = ChannelProcs::new();
        let l = log.clone();
        procs.ch_proc_add(b'E', move |_| Box::new(Echo(l.clone()))).unwrap();
        let mut m = Mux::new(
            b"E",
            &procs,
            SessionInfo { session_id: [0; 16], client: None },
            MuxConfig::default(),
        );
        m.start(Arc::new(NoWake));
        m
    }

    #[test]
    fn datagrams_are_routed_forwarded_or_dropped_and_sessions_stay_apart() {
        let now = Instant::now();
        let server_addr = SocketAddr::from(([127, 0, 0, 1], 443));
        let mut server = Endpoint::new(EndpointConfig { worker: 1, ..EndpointConfig::default() });
        let mut clients = Vec::new();
        let mut logs = Vec::new();
        // Three sessions, each its own client endpoint and address.
        for n in 0..3u8 {
            let log = Arc::new(Mutex::new(Vec::new()));
            let cid = server.accept(now, &params(n), mux(&log)).unwrap();
            assert_eq!(cid.worker(), 1);
            let mut client = Endpoint::new(EndpointConfig::default());
            let clog = Arc::new(Mutex::new(Vec::new()));
            let m = mux(&clog);
            m.handle(b'E').unwrap().write(1, vec![n; 100 + n as usize]).unwrap();
            client.connect(now, &params(n), cid, server_addr, m).unwrap();
            clients.push((client, SocketAddr::from(([127, 0, 0, 2 + n], 5000)), clog));
            logs.push(log);
        }
        // Exchange until every client got its echo back.
        let mut buf = Vec::new();
        let mut t = now;
        for _ in 0..200 {
            for (client, addr, _) in &mut clients {
                while let Some(tx) = client.poll_transmit(t, 1, &mut buf) {
                    let r = server.handle_datagram(t, *addr, &mut buf[..tx.size]);
                    assert!(matches!(r, Routed::Connection(_)));
                }
            }
            while let Some(tx) = server.poll_transmit(t, 1, &mut buf) {
                let (client, _, _) = clients
                    .iter_mut()
                    .find(|(_, a, _)| *a == tx.destination)
                    .expect("answers go to the address the session came from");
                client.handle_datagram(t, server_addr, &mut buf[..tx.size]);
            }
            t += Duration::from_millis(30);
            server.handle_timeout(t);
            for (c, _, _) in &mut clients {
                c.handle_timeout(t);
            }
            if clients.iter().all(|(_, _, l)| !l.lock().is_empty()) {
                break;
            }
        }
        for (n, (_, _, clog)) in clients.iter().enumerate() {
            assert_eq!(logs[n].lock().as_slice(), [vec![n as u8; 100 + n]]);
            assert_eq!(clog.lock().as_slice(), [vec![n as u8; 100 + n]], "session {n}");
        }
        // Another worker's id is forwarded; an unknown one here, or junk, is dropped.
        let mut other = vec![0x40u8; 40];
        other[1] = 7;
        assert_eq!(server.handle_datagram(t, server_addr, &mut other), Routed::Forward(7));
        let mut unknown = vec![0x40u8; 40];
        unknown[1] = 1;
        assert_eq!(server.handle_datagram(t, server_addr, &mut unknown), Routed::Dropped);
        assert_eq!(server.handle_datagram(t, server_addr, &mut [0u8; 10]), Routed::Dropped);
        let s = server.stats();
        assert_eq!((s.forwarded, s.unknown_connection, s.not_ours), (1, 1, 1));
    }

    #[test]
    fn the_endpoint_is_bounded_and_closed_connections_leave_it() {
        let now = Instant::now();
        let mut ep =
            Endpoint::new(EndpointConfig { max_connections: 2, ..EndpointConfig::default() });
        let log = Arc::new(Mutex::new(Vec::new()));
        let a = ep.accept(now, &params(1), mux(&log)).unwrap();
        ep.accept(now, &params(2), mux(&log)).unwrap();
        assert_eq!(ep.accept(now, &params(3), mux(&log)), Err(EndpointFull));
        assert_eq!(ep.stats().refused_full, 1);
        // A connection that never hears from its client times out and leaves.
        let later = now + Duration::from_secs(61);
        ep.handle_timeout(later);
        let mut closed = 0;
        while let Some((_, e)) = ep.poll_event() {
            assert!(matches!(e, Event::Closed(_)));
            closed += 1;
        }
        while ep.poll_event().is_some() {}
        assert_eq!(closed, 2);
        assert!(ep.is_empty());
        assert!(ep.connection(a).is_none());
    }
}
