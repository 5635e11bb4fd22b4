//! `Reactor`: starts the workers, spreads listeners over them, stops them.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Config, Limits, ListenerMode};
use crate::esocket::{EsocketHandle, Factory, HandlerFactory};
use crate::sys::affinity;
use crate::worker::{Msg, Shared, StartHook, WAKER_TOKEN, Worker, WorkerCtx, WorkerSlot};

/// How long `listen_*` waits for the workers to take their listeners.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a [`Reactor`]; see [`Reactor::builder`].
#[derive(Default)]
pub struct ReactorBuilder {
    cfg: Config,
    on_start: Option<StartHook>,
}

impl std::fmt::Debug for ReactorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorBuilder").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl ReactorBuilder {
    /// Worker count; 0 (the default) means one per CPU this process may use.
    pub fn threads(mut self, n: usize) -> Self {
        self.cfg.threads = n;
        self
    }

    /// Pin each worker to a CPU (default on). A failed pin is logged as a warning and the
    /// worker runs unpinned.
    pub fn pin(mut self, on: bool) -> Self {
        self.cfg.pin = on;
        self
    }

    /// The CPUs to pin to, used round-robin (default: the CPUs this process may use).
    pub fn cpus(mut self, cpus: Vec<usize>) -> Self {
        self.cfg.cpus = Some(cpus);
        self
    }

    /// Per-worker limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.cfg.limits = limits;
        self
    }

    /// Close stream esockets that move no byte for this long (default: never). The error
    /// callback gets `TimedOut` first.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.cfg.idle_timeout = timeout;
        self
    }

    /// Default timeout of outgoing connects (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.connect_timeout = timeout;
        self
    }

    /// How long a graceful close may spend flushing output (default 5 s).
    pub fn close_linger(mut self, linger: Duration) -> Self {
        self.cfg.close_linger = linger;
        self
    }

    /// Set `TCP_NODELAY` on TCP esockets (default on: request/response traffic).
    pub fn nodelay(mut self, on: bool) -> Self {
        self.cfg.nodelay = on;
        self
    }

    /// Listen backlog (default 1024).
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.cfg.backlog = backlog;
        self
    }

    /// How TCP listen addresses are spread over the workers.
    pub fn listener_mode(mut self, mode: ListenerMode) -> Self {
        self.cfg.listener_mode = mode;
        self
    }

    /// Whether a TCP port may be shared with other processes (default off). In
    /// [`ListenerMode::PerWorker`] the workers' listeners share the port through
    /// `SO_REUSEPORT`, which would also let another process (a second copy of the same
    /// daemon) bind it and take part of the connections. Off, a port another process
    /// listens on is refused with `AddrInUse`, as with a single listener; on, for a
    /// deliberate hand-over (a new version started beside the old one).
    pub fn share_port(mut self, on: bool) -> Self {
        self.cfg.share_port = on;
        self
    }

    /// Thread name prefix (default `dap-worker`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.cfg.name = name.into();
        self
    }

    /// Runs `hook` on every worker thread before its loop starts: build per-worker state
    /// (listeners, timers) that need not be `Send`.
    pub fn on_worker_start(
        mut self,
        hook: impl Fn(&mut WorkerCtx) + Send + Sync + 'static,
    ) -> Self {
        self.on_start = Some(Arc::new(hook));
        self
    }

    /// Starts the workers.
    ///
    /// # Errors
    /// `InvalidInput` for limits that cannot work (a zero cap or capacity, a low-water mark
    /// above its cap); otherwise creating a poller, waker or thread failed.
    pub fn start(self) -> io::Result<Reactor> {
        self.cfg.limits.validate()?;
        Reactor::start(self.cfg, self.on_start)
    }
}

/// A set of event-loop workers, one per CPU by default, each pinned to its CPU.
///
/// Dropping a `Reactor` stops it gracefully (with the configured close linger) and waits
/// for its threads.
pub struct Reactor {
    workers: Vec<Worker>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    cfg: Arc<Config>,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor").field("workers", &self.workers.len()).finish_non_exhaustive()
    }
}

impl Reactor {
    /// A builder with the defaults: one pinned worker per CPU, default [`Limits`].
    pub fn builder() -> ReactorBuilder {
        ReactorBuilder::default()
    }

    fn start(mut cfg: Config, on_start: Option<StartHook>) -> io::Result<Reactor> {
        cfg.budget = crate::BufferBudget::new(cfg.limits.buffer_budget);
        let allowed = affinity::allowed_cpus();
        let cpus = cfg.cpus.clone().filter(|c| !c.is_empty()).unwrap_or_else(|| allowed.clone());
        let n = if cfg.threads == 0 { allowed.len().max(1) } else { cfg.threads };
        let cfg = Arc::new(cfg);
        let mut polls = Vec::with_capacity(n);
        let mut shareds = Vec::with_capacity(n);
        for index in 0..n {
            let poll = mio::Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), WAKER_TOKEN)?;
            let (tx, rx) = crossbeam_channel::bounded(cfg.limits.inbox_capacity.max(1));
            let shared = Arc::new(Shared {
                index,
                assigned_cpu: cfg.pin.then(|| cpus[index % cpus.len()]),
                epoch: WorkerSlot::next_epoch(),
                tx,
                waker,
                notified: AtomicBool::new(false),
                stats: Default::default(),
                conns: AtomicU64::new(0),
                full: AtomicBool::new(false),
                slot: WorkerSlot::acquire(),
                extensions: Default::default(),
            });
            shared.slot.install(shared.clone());
            polls.push((poll, rx));
            shareds.push(shared);
        }
        let peers: Arc<[Arc<Shared>]> = shareds.clone().into();
        let workers: Vec<Worker> = shareds.iter().map(|s| Worker { shared: s.clone() }).collect();
        let reactor = Reactor { workers, threads: Mutex::new(Vec::new()), cfg: cfg.clone() };
        for (index, (poll, rx)) in polls.into_iter().enumerate() {
            let shared = shareds[index].clone();
            let peers = peers.clone();
            let cfg = cfg.clone();
            let hook = on_start.clone();
            let cpu = shared.assigned_cpu;
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{index}", cfg.name))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        match affinity::pin_current(cpu) {
                            Ok(()) => {
                                shared.stats.pinned_cpu.store(cpu as u64, std::sync::atomic::Ordering::Relaxed);
                                shared.stats.pinned.store(true, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(e) => tracing::warn!(worker = index, cpu, error = %e, "pinning failed; worker runs unpinned"),
                        }
                    }
                    let registry = match poll.registry().try_clone() {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(worker = index, error = %e, "cannot clone the poll registry");
                            shared.slot.release();
                            return;
                        }
                    };
                    WorkerCtx::new(shared, peers, cfg, registry).run(poll, rx, hook);
                });
            match spawned {
                Ok(handle) => reactor.threads.lock().push(handle),
                Err(e) => {
                    // Workers never started still hold their registry slot.
                    for s in &shareds[index..] {
                        s.slot.release();
                    }
                    reactor.stop(Duration::ZERO);
                    reactor.wait();
                    return Err(e);
                }
            }
        }
        Ok(reactor)
    }

    /// The input and output buffer memory of every esocket, together, and its bound
    /// ([`Limits::buffer_budget`](crate::Limits::buffer_budget)).
    pub fn buffer_budget(&self) -> Arc<crate::BufferBudget> {
        self.cfg.budget.clone()
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always false: a reactor has at least one worker.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// All workers, by index.
    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    /// Worker `i`, if there is one.
    pub fn worker(&self, i: usize) -> Option<&Worker> {
        self.workers.get(i)
    }

    /// The least-loaded worker: fewest live connections plus queued inbox messages, as of
    /// each worker's last loop turn. Ties go to the lowest index.
    pub fn worker_auto(&self) -> &Worker {
        self.workers.iter().min_by_key(|w| w.load()).expect("a reactor has at least one worker")
    }

    /// Listens on a TCP address. In [`ListenerMode::PerWorker`] every worker gets its own
    /// `SO_REUSEPORT` listener on the same port and the kernel spreads connections; if the
    /// option is refused (or in [`ListenerMode::Single`]), one listener hands each connection
    /// to the least-loaded worker. Port 0 picks a free port, shared by all the listeners.
    ///
    /// # Errors
    /// Binding failed, or the workers did not take their listeners in time.
    pub fn listen_tcp(
        &self,
        addr: SocketAddr,
        factory: impl HandlerFactory,
    ) -> io::Result<Listening> {
        let factory: Factory = Arc::new(factory);
        let n = self.workers.len();
        let mut listeners = Vec::new();
        let mut mode = self.cfg.listener_mode;
        if mode == ListenerMode::PerWorker && n > 1 {
            if addr.port() != 0 && !self.cfg.share_port {
                port_free(addr)?;
            }
            match bind_tcp(addr, true, self.cfg.backlog) {
                Ok(first) => {
                    let bound = first.local_addr()?;
                    listeners.push(first);
                    for _ in 1..n {
                        listeners.push(bind_tcp(bound, true, self.cfg.backlog)?);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "SO_REUSEPORT listeners unavailable; using one listener");
                    mode = ListenerMode::Single;
                }
            }
        }
        if listeners.is_empty() {
            listeners.push(bind_tcp(addr, false, self.cfg.backlog)?);
        }
        let local_addr = listeners[0].local_addr()?;
        let spread = mode == ListenerMode::Single && n > 1;
        let targets: Vec<usize> = if spread { vec![0] } else { (0..listeners.len()).collect() };
        let handles = self.install(
            targets,
            listeners,
            move |w, l, f| w.add_tcp_listener_std(l, f, spread),
            &factory,
        )?;
        Ok(Listening { local_addr: Some(local_addr), handles, mode })
    }

    /// Listens on a Unix-domain stream socket at `path`. One listener hands connections to the
    /// least-loaded worker.
    ///
    /// # Errors
    /// Binding failed, or the worker did not take the listener in time.
    pub fn listen_unix(
        &self,
        path: impl AsRef<Path>,
        factory: impl HandlerFactory,
    ) -> io::Result<Listening> {
        let factory: Factory = Arc::new(factory);
        let listener = std::os::unix::net::UnixListener::bind(path)?;
        let spread = self.workers.len() > 1;
        let handles = self.install(
            vec![0],
            vec![listener],
            move |w, l, f| w.add_unix_listener_std(l, f, spread),
            &factory,
        )?;
        Ok(Listening { local_addr: None, handles, mode: ListenerMode::Single })
    }

    fn install<L: Send + 'static>(
        &self,
        targets: Vec<usize>,
        listeners: Vec<L>,
        add: impl Fn(&mut WorkerCtx, L, Factory) -> io::Result<EsocketHandle>
        + Send
        + Sync
        + Copy
        + 'static,
        factory: &Factory,
    ) -> io::Result<Vec<EsocketHandle>> {
        let (tx, rx) = crossbeam_channel::bounded(listeners.len());
        for (target, listener) in targets.into_iter().zip(listeners) {
            let tx = tx.clone();
            let factory = factory.clone();
            self.workers[target]
                .exec_timeout(
                    move |w| {
                        let _ = tx.send(add(w, listener, factory));
                    },
                    INSTALL_TIMEOUT,
                )
                .map_err(io::Error::other)?;
        }
        drop(tx);
        let mut handles = Vec::new();
        let deadline = Instant::now() + INSTALL_TIMEOUT;
        let mut failure = None;
        while let Ok(result) = rx.recv_deadline(deadline) {
            match result {
                Ok(h) => handles.push(h),
                Err(e) => failure = Some(e),
            }
        }
        if failure.is_some() || handles.is_empty() {
            for h in &handles {
                let _ = h.close();
            }
            return Err(failure.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::TimedOut, "workers did not take the listener")
            }));
        }
        Ok(handles)
    }

    /// Begins a graceful stop on every worker and returns at once: listeners close, stream
    /// esockets flush their output and close, queues deliver what they hold; whatever is
    /// still open after `grace` is closed. [`wait`](Self::wait) for the threads.
    pub fn stop(&self, grace: Duration) {
        let deadline = crate::deadline_after(grace);
        for w in &self.workers {
            // A stop must not be lost to a momentarily full inbox.
            let _ = w.shared.post_timeout(Msg::Stop(deadline), INSTALL_TIMEOUT);
        }
    }

    /// Waits for every worker thread to exit (after [`stop`](Self::stop)).
    pub fn wait(&self) {
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }

    /// [`stop`](Self::stop), then [`wait`](Self::wait).
    pub fn shutdown(&self, grace: Duration) {
        self.stop(grace);
        self.wait();
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        if !self.threads.lock().is_empty() {
            self.shutdown(self.cfg.close_linger);
        }
    }
}

/// The listeners of one listen address.
#[derive(Debug)]
pub struct Listening {
    local_addr: Option<SocketAddr>,
    handles: Vec<EsocketHandle>,
    mode: ListenerMode,
}

impl Listening {
    /// The bound address (TCP); with port 0, the port that was picked.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The listener esockets, one per worker in per-worker mode.
    pub fn handles(&self) -> &[EsocketHandle] {
        &self.handles
    }

    /// The mode in effect (per-worker may have fallen back to single).
    pub fn mode(&self) -> ListenerMode {
        self.mode
    }

    /// Stops accepting: closes every listener. Accepted connections stay open.
    pub fn close(&self) {
        for h in &self.handles {
            let _ = h.close();
        }
    }
}

/// Whether no other socket listens on `addr`: a bind without `SO_REUSEPORT` fails when
/// one does, with or without it (the probe is closed at once; the port stays free for the
/// `SO_REUSEPORT` group that follows).
fn port_free(addr: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into()).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(io::ErrorKind::AddrInUse, format!("{addr}: address in use"))
        } else {
            e
        }
    })
}

fn bind_tcp(addr: SocketAddr, reuse_port: bool, backlog: i32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}
