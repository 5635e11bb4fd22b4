//! The authoritative DNS server: UDP esockets on one or every worker, answering from a
//! [`SharedZone`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use dap_reactor::{Esocket, EsocketHandle, Handler, Reactor, Worker};

use super::StartError;
use super::answer::{self, Outcome, ReplyKind};
use super::zone::SharedZone;

/// How long starting waits for the workers to take their sockets.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Server settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The largest reply sent to a query that advertises a larger EDNS payload. Default 1,232
    /// (no IP fragmentation on common paths); values under 512 count as 512.
    pub max_payload: u16,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { max_payload: 1232 }
    }
}

impl ServerConfig {
    /// Sets the largest reply for queries with EDNS.
    pub fn max_payload(mut self, size: u16) -> Self {
        self.max_payload = size;
        self
    }
}

/// The server's counters, summed over its workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Datagrams received.
    pub received: u64,
    /// NOERROR replies with records.
    pub answers: u64,
    /// NOERROR replies without records (NODATA).
    pub nodata: u64,
    /// NXDOMAIN replies.
    pub nxdomain: u64,
    /// REFUSED replies (names outside the zone, classes other than IN).
    pub refused: u64,
    /// FORMERR replies (undecodable queries, not exactly one question).
    pub formerr: u64,
    /// NOTIMP replies (opcodes other than QUERY, zone transfers).
    pub notimp: u64,
    /// BADVERS replies (EDNS versions other than 0).
    pub badvers: u64,
    /// Replies cut to their question with TC set.
    pub truncated: u64,
    /// Datagrams dropped unanswered: shorter than a header, or responses.
    pub dropped: u64,
    /// Replies the socket would not take (its output queue full).
    pub send_failed: u64,
}

/// Counters shared by the server's sockets (one per worker).
#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    answers: AtomicU64,
    nodata: AtomicU64,
    nxdomain: AtomicU64,
    refused: AtomicU64,
    formerr: AtomicU64,
    notimp: AtomicU64,
    badvers: AtomicU64,
    truncated: AtomicU64,
    dropped: AtomicU64,
    send_failed: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ServerStats {
        ServerStats {
            received: self.received.load(Relaxed),
            answers: self.answers.load(Relaxed),
            nodata: self.nodata.load(Relaxed),
            nxdomain: self.nxdomain.load(Relaxed),
            refused: self.refused.load(Relaxed),
            formerr: self.formerr.load(Relaxed),
            notimp: self.notimp.load(Relaxed),
            badvers: self.badvers.load(Relaxed),
            truncated: self.truncated.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            send_failed: self.send_failed.load(Relaxed),
        }
    }

    fn reply(&self, kind: ReplyKind) -> &AtomicU64 {
        match kind {
            ReplyKind::Answer => &self.answers,
            ReplyKind::NoData => &self.nodata,
            ReplyKind::NxDomain => &self.nxdomain,
            ReplyKind::Refused => &self.refused,
            ReplyKind::FormErr => &self.formerr,
            ReplyKind::NotImp => &self.notimp,
            ReplyKind::BadVers => &self.badvers,
        }
    }
}

/// The handler of one server socket.
struct ServerSocket {
    zone: SharedZone,
    max_payload: u16,
    counters: Arc<Counters>,
}

impl Handler for ServerSocket {
    fn on_datagram(&mut self, es: &mut Esocket<'_>, data: &[u8], from: SocketAddr) {
        self.counters.received.fetch_add(1, Relaxed);
        // The read lock is held only while the reply is built, never across the send.
        let outcome = answer::respond(&self.zone.read(), self.max_payload, data);
        let Outcome::Reply { bytes, kind, truncated } = outcome else {
            self.counters.dropped.fetch_add(1, Relaxed);
            return;
        };
        self.counters.reply(kind).fetch_add(1, Relaxed);
        if truncated {
            self.counters.truncated.fetch_add(1, Relaxed);
        }
        if es.send_to(&bytes, from).is_err() {
            self.counters.send_failed.fetch_add(1, Relaxed);
        }
    }
}

/// A running authoritative DNS server.
///
/// It answers A, AAAA, TXT, CNAME and SOA questions from its zone with the AA flag, NXDOMAIN
/// for names the zone does not have, NODATA for names without the type asked, REFUSED for
/// names outside the zone's origin, FORMERR for undecodable queries and NOTIMP for opcodes
/// other than QUERY. Replies are at most 512 bytes, or what the query's EDNS advertises up to
/// [`ServerConfig::max_payload`]; a reply that does not fit is sent with TC set and no records
/// (there is no TCP listener to retry on). Nothing a datagram holds can make it panic or stop.
///
/// Dropping the server does not stop it; [`close`](Self::close) does, as does stopping the
/// reactor.
#[derive(Debug)]
pub struct DnsServer {
    zone: SharedZone,
    counters: Arc<Counters>,
    handles: Vec<EsocketHandle>,
    local_addr: SocketAddr,
}

impl DnsServer {
    /// Listens on `addr` on every worker of `reactor`: one `SO_REUSEPORT` socket per worker,
    /// so the kernel spreads queries over them. Port 0 picks a free port, shared by all.
    ///
    /// # Errors
    /// [`StartError::Io`] when binding fails; [`StartError::Worker`] or
    /// [`StartError::NoReply`] when a worker does not take its socket.
    pub fn start(
        reactor: &Reactor,
        addr: SocketAddr,
        zone: SharedZone,
        config: ServerConfig,
    ) -> Result<DnsServer, StartError> {
        let first = bind(addr, true).map_err(StartError::Io)?;
        let local_addr = first.local_addr().map_err(StartError::Io)?;
        let mut sockets = vec![first];
        for _ in 1..reactor.len() {
            sockets.push(bind(local_addr, true).map_err(StartError::Io)?);
        }
        let targets: Vec<&Worker> = reactor.workers().iter().collect();
        DnsServer::install(&targets, sockets, local_addr, zone, config)
    }

    /// Listens on `addr` on one worker.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_on(
        worker: &Worker,
        addr: SocketAddr,
        zone: SharedZone,
        config: ServerConfig,
    ) -> Result<DnsServer, StartError> {
        let socket = bind(addr, false).map_err(StartError::Io)?;
        let local_addr = socket.local_addr().map_err(StartError::Io)?;
        DnsServer::install(&[worker], vec![socket], local_addr, zone, config)
    }

    fn install(
        workers: &[&Worker],
        sockets: Vec<std::net::UdpSocket>,
        local_addr: SocketAddr,
        zone: SharedZone,
        config: ServerConfig,
    ) -> Result<DnsServer, StartError> {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = std::sync::mpsc::sync_channel(sockets.len());
        let mut posted = 0;
        let mut failure = None;
        for (worker, socket) in workers.iter().zip(sockets) {
            let handler = ServerSocket {
                zone: zone.clone(),
                max_payload: config.max_payload,
                counters: counters.clone(),
            };
            let tx = tx.clone();
            let setup = move |w: &mut dap_reactor::WorkerCtx| {
                let _ = tx.send(w.add_udp(socket, Box::new(handler)));
            };
            match worker.exec_timeout(setup, SETUP_TIMEOUT) {
                Ok(()) => posted += 1,
                Err(e) => failure = Some(StartError::Worker(e)),
            }
        }
        drop(tx);
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let mut handles = Vec::new();
        for _ in 0..posted {
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Ok(handle)) => handles.push(handle),
                Ok(Err(e)) => failure = Some(StartError::Io(e)),
                Err(_) => failure = Some(StartError::NoReply),
            }
        }
        let server = DnsServer { zone, counters, handles, local_addr };
        match failure {
            Some(e) => {
                server.close();
                Err(e)
            }
            None => Ok(server),
        }
    }

    /// The bound address (with the port picked, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The zone it answers from: edit it through this handle while the server runs.
    pub fn zone(&self) -> &SharedZone {
        &self.zone
    }

    /// The counters, summed over the workers.
    pub fn stats(&self) -> ServerStats {
        self.counters.snapshot()
    }

    /// The server's UDP esockets, one per worker it listens on.
    pub fn handles(&self) -> &[EsocketHandle] {
        &self.handles
    }

    /// Stops answering: closes the sockets.
    pub fn close(&self) {
        for h in &self.handles {
            let _ = h.close();
        }
    }
}

/// A non-blocking UDP socket bound to `addr`; with `reuse_port`, more can bind the same port.
fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    crate::server::bind_udp_socket(addr, reuse_port)
}
