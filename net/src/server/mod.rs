//! `Server`: listeners on TCP, Unix and UDP addresses spread over a reactor's workers, with an
//! access list checked before a connection gets a handler (DAP's `dap_server_t`).
//!
//! TCP listeners use one `SO_REUSEPORT` socket per worker (the kernel spreads connections);
//! UDP addresses get one `SO_REUSEPORT` socket per worker as well, each with its own handler.
//! Accepting never blocks a worker: listeners are non-blocking and accept in bounded batches.

mod acl;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

use dap_reactor::{
    Datagrams, Esocket, EsocketHandle, Handler, HandlerFactory, Listening, LogThrottle, PeerAddr,
    Reactor,
};

use crate::limit::{ConnLimiter, ConnPermit, ConnRefused};

pub use acl::{AccessList, Cidr, CidrError};

/// Makes the handler of one worker's UDP socket; called once per worker with its index.
pub type UdpFactory = Arc<dyn Fn(usize) -> Box<dyn Handler> + Send + Sync>;

/// Counters of a [`Server`], shared by its listeners on every worker.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections admitted and handed a handler.
    pub accepted: AtomicU64,
    /// Connections refused by the access list.
    pub refused: AtomicU64,
    /// Connections the handler factory declined.
    pub declined: AtomicU64,
    /// Connections closed at once because a connection limit was reached (in all, or for
    /// their source block; see [`ServerBuilder::conn_limits`]).
    pub limited: AtomicU64,
    /// Datagrams dropped because their source is not admitted.
    pub datagrams_refused: AtomicU64,
}

/// Collects addresses and the access list, then starts listening; see [`Server`].
#[derive(Default)]
pub struct ServerBuilder {
    acl: AccessList,
    limiter: Option<Arc<ConnLimiter>>,
    tcp: Vec<SocketAddr>,
    unix: Vec<PathBuf>,
    udp: Vec<(SocketAddr, UdpFactory)>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("acl", &self.acl)
            .field("tcp", &self.tcp)
            .field("unix", &self.unix)
            .field("udp", &self.udp.iter().map(|(a, _)| a).collect::<Vec<_>>())
            .finish()
    }
}

impl ServerBuilder {
    /// Listens on a TCP address (port 0 picks a free one; see [`Server::tcp_addrs`]).
    pub fn tcp(mut self, addr: SocketAddr) -> Self {
        self.tcp.push(addr);
        self
    }

    /// Listens on a Unix-domain stream socket at `path` (which must not exist yet).
    pub fn unix(mut self, path: impl Into<PathBuf>) -> Self {
        self.unix.push(path.into());
        self
    }

    /// Binds a UDP address on every worker; `factory(worker_index)` makes each socket's
    /// handler. Datagrams from sources the access list refuses are dropped and counted.
    pub fn udp(
        mut self,
        addr: SocketAddr,
        factory: impl Fn(usize) -> Box<dyn Handler> + Send + Sync + 'static,
    ) -> Self {
        self.udp.push((addr, Arc::new(factory)));
        self
    }

    /// Admits peers in `block` (once any allow entry exists, only those are admitted).
    pub fn allow(mut self, block: Cidr) -> Self {
        self.acl.allow(block);
        self
    }

    /// Refuses peers in `block`; deny wins over allow.
    pub fn deny(mut self, block: Cidr) -> Self {
        self.acl.deny(block);
        self
    }

    /// Replaces the access list.
    pub fn access_list(mut self, acl: AccessList) -> Self {
        self.acl = acl;
        self
    }

    /// Bounds the stream connections held at once, in all and per source block, with
    /// `limiter` (which several servers may share, so that the bound is theirs together).
    /// A connection past a bound is accepted and closed at once, before it gets a handler
    /// or any buffer, and counted ([`ServerStats::limited`]); connections already held
    /// are not affected. Datagrams are not connections and are not counted.
    pub fn conn_limits(mut self, limiter: Arc<ConnLimiter>) -> Self {
        self.limiter = Some(limiter);
        self
    }

    /// Starts listening on every address, with `factory` making each stream connection's
    /// handler.
    ///
    /// # Errors
    /// The first bind or install error; listeners already started are closed again.
    pub fn start(self, reactor: &Reactor, factory: impl HandlerFactory) -> io::Result<Server> {
        let stats = Arc::new(ServerStats::default());
        let acl: SharedAcl = Arc::new(RwLock::new(self.acl.clone()));
        let guarded: Arc<Guarded<_>> = Arc::new(Guarded {
            acl: acl.clone(),
            stats: stats.clone(),
            limiter: self.limiter.clone(),
            inner: factory,
        });
        let mut server =
            Server { stats, acl: acl.clone(), tcp: Vec::new(), unix: Vec::new(), udp: Vec::new() };
        let result = (|| {
            for addr in &self.tcp {
                let g = guarded.clone();
                let l = reactor.listen_tcp(*addr, move |p: &PeerAddr| g.new_handler(p))?;
                server.tcp.push(l);
            }
            for path in &self.unix {
                let g = guarded.clone();
                let l = reactor.listen_unix(path, move |p: &PeerAddr| g.new_handler(p))?;
                server.unix.push((l, path.clone()));
            }
            for (addr, factory) in &self.udp {
                let sockets = bind_udp(reactor, *addr, factory, &acl, &server.stats)?;
                server.udp.push(sockets);
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(server),
            Err(e) => {
                server.close();
                Err(e)
            }
        }
    }
}

/// The access list, shared by a server's listeners and replaceable while they run.
type SharedAcl = Arc<RwLock<AccessList>>;

/// At most 5 lines per 10 s about connections refused at a limit (a flood repeats it);
/// [`ServerStats::limited`] keeps the count.
static LIMITED: LogThrottle = LogThrottle::new(5, Duration::from_secs(10));

/// The user's factory behind the access list and the connection limits.
struct Guarded<F> {
    acl: SharedAcl,
    stats: Arc<ServerStats>,
    limiter: Option<Arc<ConnLimiter>>,
    inner: F,
}

impl<F: HandlerFactory> Guarded<F> {
    fn new_handler(&self, peer: &PeerAddr) -> Option<Box<dyn Handler>> {
        let ip = match peer {
            PeerAddr::Inet(addr) => Some(addr.ip()),
            _ => None,
        };
        if let Some(ip) = ip
            && !self.acl.read().admits(ip)
        {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%ip, "connection refused by the access list");
            return None;
        }
        let permit = match self.limiter.as_ref().map(|l| l.acquire(ip)) {
            None => None,
            Some(Ok(p)) => Some(p),
            Some(Err(why)) => {
                self.stats.limited.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = LIMITED.check() {
                    let block = match (why, ip) {
                        (ConnRefused::PerSource, Some(ip)) => {
                            self.limiter.as_ref().map(|l| l.limits().prefixes.block(ip))
                        }
                        _ => None,
                    };
                    let block = block.map(|b| b.to_string()).unwrap_or_default();
                    tracing::warn!(reason = %why, block, suppressed, "connection refused");
                }
                return None;
            }
        };
        match self.inner.new_handler(peer) {
            Some(h) => {
                self.stats.accepted.fetch_add(1, Ordering::Relaxed);
                Some(match permit {
                    Some(permit) => Box::new(Limited { inner: h, _permit: permit }),
                    None => h,
                })
            }
            None => {
                self.stats.declined.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// A connection's handler holding its place in the connection limits until it is dropped
/// (when the esocket is deleted).
struct Limited {
    inner: Box<dyn Handler>,
    _permit: ConnPermit,
}

impl Handler for Limited {
    fn on_new(&mut self, es: &mut Esocket<'_>) {
        self.inner.on_new(es);
    }

    fn on_connected(&mut self, es: &mut Esocket<'_>) {
        self.inner.on_connected(es);
    }

    fn on_read(&mut self, es: &mut Esocket<'_>) {
        self.inner.on_read(es);
    }

    fn on_read_closed(&mut self, es: &mut Esocket<'_>) {
        self.inner.on_read_closed(es);
    }

    fn on_datagram(&mut self, es: &mut Esocket<'_>, data: &[u8], from: SocketAddr) {
        self.inner.on_datagram(es, data, from);
    }

    fn on_datagrams(&mut self, es: &mut Esocket<'_>, batch: &mut Datagrams<'_>) {
        self.inner.on_datagrams(es, batch);
    }

    fn on_write(&mut self, es: &mut Esocket<'_>) -> bool {
        self.inner.on_write(es)
    }

    fn on_timeout(&mut self, es: &mut Esocket<'_>) -> bool {
        self.inner.on_timeout(es)
    }

    fn on_write_finished(&mut self, es: &mut Esocket<'_>) {
        self.inner.on_write_finished(es);
    }

    fn on_error(&mut self, es: &mut Esocket<'_>, err: &io::Error) {
        self.inner.on_error(es, err);
    }

    fn on_delete(&mut self, es: &mut Esocket<'_>) {
        self.inner.on_delete(es);
    }

    fn wrapped(&mut self) -> Option<&mut dyn Handler> {
        Some(&mut *self.inner)
    }
}

/// A UDP handler behind the access list.
struct GuardedUdp {
    acl: SharedAcl,
    stats: Arc<ServerStats>,
    inner: Box<dyn Handler>,
}

impl Handler for GuardedUdp {
    fn on_new(&mut self, es: &mut Esocket<'_>) {
        self.inner.on_new(es);
    }

    fn on_datagram(&mut self, es: &mut Esocket<'_>, data: &[u8], from: SocketAddr) {
        if !self.acl.read().admits(from.ip()) {
            self.stats.datagrams_refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_datagram(es, data, from);
    }

    fn on_write(&mut self, es: &mut Esocket<'_>) -> bool {
        self.inner.on_write(es)
    }

    fn on_timeout(&mut self, es: &mut Esocket<'_>) -> bool {
        self.inner.on_timeout(es)
    }

    fn on_error(&mut self, es: &mut Esocket<'_>, err: &io::Error) {
        self.inner.on_error(es, err);
    }

    fn on_delete(&mut self, es: &mut Esocket<'_>) {
        self.inner.on_delete(es);
    }
}

/// How long to wait for a worker to take its UDP socket.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(10);

fn bind_udp(
    reactor: &Reactor,
    addr: SocketAddr,
    factory: &UdpFactory,
    acl: &SharedAcl,
    stats: &Arc<ServerStats>,
) -> io::Result<Vec<(EsocketHandle, SocketAddr)>> {
    let mut bound = addr;
    let mut out = Vec::new();
    let close_all = |out: &Vec<(EsocketHandle, SocketAddr)>| {
        for (h, _) in out {
            let _ = h.close();
        }
    };
    for worker in reactor.workers() {
        let socket = match udp_socket(bound) {
            Ok(s) => s,
            Err(e) => {
                close_all(&out);
                return Err(e);
            }
        };
        bound = socket.local_addr()?;
        let (acl, stats, factory) = (acl.clone(), stats.clone(), factory.clone());
        let (tx, rx) = crossbeam_channel::bounded(1);
        // The handler is made on its worker: handlers need not be `Send`.
        let posted = worker.exec(move |w| {
            let inner = factory(w.index());
            let _ = tx.send(w.add_udp(socket, Box::new(GuardedUdp { acl, stats, inner })));
        });
        let added = match posted {
            Ok(()) => rx
                .recv_timeout(INSTALL_TIMEOUT)
                .unwrap_or_else(|_| Err(io::Error::other("worker did not take its UDP socket"))),
            Err(e) => Err(io::Error::other(e)),
        };
        match added {
            Ok(h) => out.push((h, bound)),
            Err(e) => {
                close_all(&out);
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    bind_udp_socket(addr, true)
}

/// Whether no other socket is bound to UDP `addr` (a bind without `SO_REUSEPORT` fails if
/// one is, with or without it); the probe is closed at once. For a group of `SO_REUSEPORT`
/// sockets that must not share the port with another process.
///
/// # Errors
/// `AddrInUse` naming the address, or another bind error.
pub fn udp_port_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    bind_udp_socket(addr, false).map(drop).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(io::ErrorKind::AddrInUse, format!("{addr}: address in use"))
        } else {
            e
        }
    })
}

/// A non-blocking UDP socket bound to `addr`; with `reuse_port`, one per worker can bind the
/// same port. IPv6 sockets are IPv6-only (dual-stack behaviour varies by sysctl).
///
/// # Errors
/// Creating, configuring or binding the socket failed.
pub fn bind_udp_socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Listeners on a reactor, sharing one access list and one handler factory.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// use dap_net::server::Server;
/// use dap_reactor::{Esocket, Handler, PeerAddr, Reactor};
///
/// struct Echo;
/// impl Handler for Echo {
///     fn on_read(&mut self, es: &mut Esocket<'_>) {
///         let _ = es.copy_in_to_out();
///     }
/// }
///
/// let reactor = Reactor::builder().threads(2).start()?;
/// let server = Server::builder()
///     .tcp("127.0.0.1:7000".parse().unwrap())
///     .allow("127.0.0.0/8".parse().unwrap())
///     .start(&reactor, |_: &PeerAddr| Some(Box::new(Echo) as Box<dyn Handler>))?;
/// # drop(server);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Server {
    stats: Arc<ServerStats>,
    acl: SharedAcl,
    tcp: Vec<Listening>,
    unix: Vec<(Listening, PathBuf)>,
    udp: Vec<Vec<(EsocketHandle, SocketAddr)>>,
}

impl Server {
    /// Collects the addresses to listen on.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Replaces the access list of every listener, for connections and datagrams from now
    /// on (connections already accepted stay): a configuration reload.
    pub fn set_access_list(&self, acl: AccessList) {
        *self.acl.write() = acl;
    }

    /// The access list in force.
    pub fn access_list(&self) -> AccessList {
        self.acl.read().clone()
    }

    /// The bound TCP addresses, in the order given.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp.iter().filter_map(Listening::local_addr).collect()
    }

    /// The bound UDP addresses, in the order given (one per address, shared by the workers).
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp.iter().filter_map(|s| s.first().map(|(_, a)| *a)).collect()
    }

    /// The counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// The counters, shared (for a metrics page that outlives this borrow).
    pub fn shared_stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// Closes every listener and UDP socket; connections already accepted carry on. Unix
    /// socket files are removed.
    pub fn close(&mut self) {
        for l in self.tcp.drain(..) {
            l.close();
        }
        for (l, path) in self.unix.drain(..) {
            l.close();
            let _ = std::fs::remove_file(path);
        }
        for sockets in self.udp.drain(..) {
            for (h, _) in sockets {
                let _ = h.close();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close();
    }
}
