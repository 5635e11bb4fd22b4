//! The resolver on a worker ([`LocalResolver`]) and its handle for any thread
//! ([`Resolver`]): UDP esockets driving the sans-IO [`Lookups`] state machine.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc::{RecvTimeoutError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dap_reactor::{
    Esocket, EsocketHandle, Handler, QueueSendError, QueueSender, Worker, WorkerCtx,
};

use super::lookups::{Lookups, Transmit};
use super::{
    Lookup, LookupId, LookupKind, ResolveError, ResolverConfig, ResolverStats, StartError,
};

/// How long [`Resolver::start`] waits for the worker to set up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Added to the longest lookup time when [`Resolver::resolve`] waits: the request may sit in
/// the queue, and the worker may be busy.
const RESOLVE_SLACK: Duration = Duration::from_secs(5);

/// A result callback on the worker.
type Done = Box<dyn FnOnce(&mut WorkerCtx, Result<Lookup, ResolveError>)>;
/// A result callback from another thread.
type SendDone = Box<dyn FnOnce(Result<Lookup, ResolveError>) + Send>;

/// The resolver's state on its worker, shared by the handle and the socket handlers.
///
/// The `RefCell` is never borrowed across a call out (a user callback, or a reactor call
/// that may run one of our socket handlers): every method takes what it needs, drops the
/// borrow, then calls out.
struct Shared {
    driver: RefCell<Driver>,
    stats: Arc<Mutex<ResolverStats>>,
    /// Every `LocalResolver` handle is gone: close the sockets once no lookup is in flight.
    orphaned: Cell<bool>,
    /// `close` was called: new lookups fail.
    closed: Cell<bool>,
}

struct Driver {
    core: Lookups,
    /// The IPv4 and IPv6 sockets; `None` when no server has that family, or once the socket
    /// is gone.
    sockets: [Option<EsocketHandle>; 2],
    callbacks: HashMap<LookupId, Done>,
    /// Datagrams whose socket was busy running a callback further up the stack; the `drive`
    /// of that callback sends them when control returns to it. At most one per query.
    held: VecDeque<Transmit>,
    /// The deadline set on the primary socket, if any.
    armed: Option<Instant>,
}

/// Where the driver is running: in a worker closure, or in one of its sockets' callbacks
/// (whose esocket cannot be reached through the worker while the callback runs).
enum At<'a, 'b> {
    Worker(&'a mut WorkerCtx),
    Socket(&'a mut Esocket<'b>),
}

impl At<'_, '_> {
    fn worker(&mut self) -> &mut WorkerCtx {
        match self {
            At::Worker(w) => w,
            At::Socket(es) => es.worker(),
        }
    }

    /// Runs `f` on the esocket `handle`: directly if it is the current one, else through the
    /// worker. `None` when it is busy further up the stack or gone.
    fn on<R>(&mut self, handle: EsocketHandle, f: impl FnOnce(&mut Esocket<'_>) -> R) -> Option<R> {
        match self {
            At::Socket(es) if es.handle() == handle => Some(f(es)),
            At::Socket(es) => es.worker().with_esocket(handle, f),
            At::Worker(w) => w.with_esocket(handle, f),
        }
    }
}

enum Sent {
    Done,
    Failed,
    Busy,
}

impl Shared {
    /// Sends what the core queued, delivers finished lookups, arms the deadline; repeats
    /// while callbacks start more work.
    fn drive(self: &Rc<Self>, at: &mut At<'_, '_>) {
        loop {
            let mut progress = false;
            let (sends, done, next) = {
                let mut d = self.driver.borrow_mut();
                let mut sends: Vec<Transmit> = d.held.drain(..).collect();
                sends.extend(std::iter::from_fn(|| d.core.poll_transmit()));
                let mut done = Vec::new();
                while let Some((id, result)) = d.core.poll_event() {
                    if let Some(cb) = d.callbacks.remove(&id) {
                        done.push((cb, result));
                    }
                }
                (sends, done, d.core.poll_timeout())
            };
            for t in sends {
                match self.send(at, &t) {
                    Sent::Done => progress = true,
                    Sent::Failed => {
                        progress = true;
                        self.driver.borrow_mut().core.note_send_error();
                    }
                    Sent::Busy => self.driver.borrow_mut().held.push_back(t),
                }
            }
            self.arm(at, next);
            self.publish();
            if done.is_empty() && !progress {
                break;
            }
            for (cb, result) in done {
                cb(at.worker(), result);
            }
        }
        if self.orphaned.get() && self.driver.borrow().core.in_flight() == 0 {
            self.close_sockets();
        }
    }

    fn send(&self, at: &mut At<'_, '_>, t: &Transmit) -> Sent {
        let Some(handle) = self.driver.borrow().sockets[usize::from(t.to.is_ipv6())] else {
            return Sent::Failed;
        };
        match at.on(handle, |es| es.send_to(&t.data, t.to)) {
            Some(Ok(_)) => Sent::Done,
            // The try times out and the next one goes out then.
            Some(Err(e)) => {
                tracing::debug!(error = %e, to = %t.to, "DNS query not sent");
                Sent::Failed
            }
            None => Sent::Busy,
        }
    }

    /// Sets the primary socket's deadline to the core's next timeout.
    fn arm(&self, at: &mut At<'_, '_>, next: Option<Instant>) {
        let (primary, armed) = {
            let d = self.driver.borrow();
            (d.sockets[0].or(d.sockets[1]), d.armed)
        };
        let (Some(primary), Some(next)) = (primary, next) else { return };
        // A deadline that fires early is harmless (nothing is due, it is re-armed); one set
        // later than needed would delay a retry, so re-arm whenever the next one is sooner.
        if armed.is_some_and(|a| a <= next) {
            return;
        }
        let after = next.saturating_duration_since(at.worker().now());
        match at.on(primary, |es| es.set_deadline(Some(after))) {
            Some(Ok(())) => {
                // Reaching the socket through the worker drives it, which may have run our
                // handler and armed again; that later call set the deadline in force.
                let mut d = self.driver.borrow_mut();
                if d.armed == armed {
                    d.armed = Some(next);
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "DNS resolver cannot arm its timer; retrying on next event");
            }
            // Busy up the stack: that callback's drive arms it.
            None => {}
        }
    }

    fn publish(&self) {
        let stats = self.driver.borrow().core.stats();
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner) = stats;
    }

    fn close_sockets(&self) {
        let sockets = {
            let mut d = self.driver.borrow_mut();
            d.armed = None;
            std::mem::take(&mut d.sockets)
        };
        for h in sockets.into_iter().flatten() {
            let _ = h.close();
        }
    }
}

/// The handler of a resolver socket. The primary socket (IPv4 if there is one) carries the
/// resolver's deadline.
struct ResolverSocket {
    shared: Rc<Shared>,
    family: usize,
}

impl Handler for ResolverSocket {
    fn on_datagram(&mut self, es: &mut Esocket<'_>, data: &[u8], from: SocketAddr) {
        self.shared.driver.borrow_mut().core.handle_datagram(Instant::now(), from, data);
        self.shared.drive(&mut At::Socket(es));
    }

    fn on_timeout(&mut self, es: &mut Esocket<'_>) -> bool {
        {
            let mut d = self.shared.driver.borrow_mut();
            d.armed = None;
            d.core.handle_timeout(Instant::now());
        }
        self.shared.drive(&mut At::Socket(es));
        true
    }

    fn on_delete(&mut self, es: &mut Esocket<'_>) {
        let none_left = {
            let mut d = self.shared.driver.borrow_mut();
            if d.sockets[self.family] == Some(es.handle()) {
                d.sockets[self.family] = None;
            }
            if d.sockets[self.family].is_none() && d.sockets.iter().all(Option::is_none) {
                d.core.close();
                true
            } else {
                false
            }
        };
        if none_left {
            // The worker is stopping or the resolver closed: tell whoever still waits.
            self.shared.drive(&mut At::Socket(es));
        }
    }
}

/// Drops of the last [`LocalResolver`] clone land here.
struct Owner {
    shared: Rc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.orphaned.set(true);
        let idle = self.shared.driver.try_borrow().is_ok_and(|d| d.core.in_flight() == 0);
        if idle {
            self.shared.close_sockets();
        }
    }
}

/// A DNS stub resolver living on one worker: A and AAAA lookups over UDP esockets, results
/// delivered to a callback on the same worker.
///
/// Each query gets a random id from the system CSPRNG and goes to the configured servers in
/// turn (try 1 to the first server, try 2 to the next, and so on, for `attempts` rounds),
/// each try waiting [`ResolverConfig::timeout`]. A SERVFAIL/REFUSED/NOTIMP/FORMERR answer
/// moves to the next try at once (after a FORMERR from a server without EDNS, the next tries
/// go without it). An answer is taken only if its id, its source address
/// (a server the query was sent to) and its question all match; anything else is counted in
/// [`ResolverStats`] and dropped. CNAME chains within an answer are followed. A truncated
/// answer fails with [`ResolveError::Truncated`]: there is no TCP fallback. Names are always
/// absolute (no search list) and `/etc/hosts` is not read; IP literals resolve to themselves.
///
/// `LocalResolver` is `!Send`: create it on its worker (in [`Worker::exec`], a start hook or
/// a callback) and keep it there; clones share the resolver. When the last clone is dropped
/// the resolver closes its sockets once its lookups have finished. For other threads, use
/// [`Resolver`].
#[derive(Clone)]
pub struct LocalResolver {
    owner: Rc<Owner>,
}

impl std::fmt::Debug for LocalResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalResolver").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

impl LocalResolver {
    /// Creates a resolver on the worker `w`: one UDP socket per address family its servers
    /// use, bound to the wildcard address and a kernel-chosen (randomised) port.
    ///
    /// # Errors
    /// An invalid configuration ([`StartError::NoServers`], [`StartError::BadConfig`]), or
    /// [`StartError::Io`] when no socket could be created.
    pub fn new(w: &mut WorkerCtx, config: ResolverConfig) -> Result<LocalResolver, StartError> {
        config.validate()?;
        let wanted = [
            config.servers.iter().any(SocketAddr::is_ipv4),
            config.servers.iter().any(SocketAddr::is_ipv6),
        ];
        let shared = Rc::new(Shared {
            driver: RefCell::new(Driver {
                core: Lookups::new(&config),
                sockets: [None, None],
                callbacks: HashMap::new(),
                held: VecDeque::new(),
                armed: None,
            }),
            stats: Arc::default(),
            orphaned: Cell::new(false),
            closed: Cell::new(false),
        });
        let mut last_error = None;
        for (family, wildcard) in ["0.0.0.0:0", "[::]:0"].into_iter().enumerate() {
            if !wanted[family] {
                continue;
            }
            let addr: SocketAddr = wildcard.parse().unwrap_or_else(|_| unreachable!("a literal"));
            let handler = ResolverSocket { shared: shared.clone(), family };
            match w.bind_udp(addr, Box::new(handler)) {
                Ok(h) => shared.driver.borrow_mut().sockets[family] = Some(h),
                // A host without IPv6 can still use the IPv4 servers; tries to the others fail
                // and time out.
                Err(e) => {
                    tracing::warn!(error = %e, %addr, "DNS resolver socket unavailable");
                    last_error = Some(e);
                }
            }
        }
        if shared.driver.borrow().sockets.iter().all(Option::is_none) {
            let e = last_error.unwrap_or_else(|| std::io::ErrorKind::AddrNotAvailable.into());
            return Err(StartError::Io(e));
        }
        Ok(LocalResolver { owner: Rc::new(Owner { shared }) })
    }

    /// Looks up `name`'s addresses; `done` runs on this worker with the result, exactly once
    /// (unless this returns an error). For an IP literal `done` runs before this returns.
    ///
    /// # Errors
    /// [`ResolveError::BadName`], [`ResolveError::TooManyQueries`] (at
    /// [`ResolverConfig::max_outstanding`]), [`ResolveError::Closed`], or
    /// [`ResolveError::Io`] if the random source fails; `done` is not called.
    pub fn lookup(
        &self,
        w: &mut WorkerCtx,
        name: &str,
        kind: LookupKind,
        done: impl FnOnce(&mut WorkerCtx, Result<Lookup, ResolveError>) + 'static,
    ) -> Result<LookupId, ResolveError> {
        self.lookup_boxed(w, name, kind, Box::new(done)).map_err(|(e, _)| e)
    }

    /// As [`lookup`](Self::lookup), handing the callback back on error.
    fn lookup_boxed(
        &self,
        w: &mut WorkerCtx,
        name: &str,
        kind: LookupKind,
        done: Done,
    ) -> Result<LookupId, (ResolveError, Done)> {
        let shared = &self.owner.shared;
        if shared.closed.get() {
            return Err((ResolveError::Closed, done));
        }
        let id = {
            let mut d = shared.driver.borrow_mut();
            if d.sockets.iter().all(Option::is_none) {
                return Err((ResolveError::Closed, done));
            }
            match d.core.start(Instant::now(), name, kind) {
                Ok(id) => {
                    d.callbacks.insert(id, done);
                    id
                }
                Err(e) => return Err((e, done)),
            }
        };
        shared.drive(&mut At::Worker(w));
        Ok(id)
    }

    /// The counters (as of the last event this resolver handled).
    pub fn stats(&self) -> ResolverStats {
        *self.owner.shared.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the resolver: lookups in flight finish with [`ResolveError::Closed`] (their
    /// callbacks run now), new ones are refused, and the sockets close.
    pub fn close(&self, w: &mut WorkerCtx) {
        let shared = &self.owner.shared;
        shared.closed.set(true);
        shared.driver.borrow_mut().core.close();
        shared.drive(&mut At::Worker(w));
        shared.close_sockets();
    }
}

/// A lookup request from another thread.
struct Request {
    name: String,
    kind: LookupKind,
    done: SendDone,
}

/// A [`LocalResolver`] on one worker, reachable from any thread: requests go through a
/// bounded queue to the worker, and results come back through a `Send` callback (run on the
/// worker) or, with [`resolve`](Self::resolve), to the blocked caller.
///
/// Clones share the resolver. When the last clone is dropped (or on [`close`](Self::close))
/// the request queue closes; lookups in flight still finish, then the sockets close.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<ResolverInner>,
}

struct ResolverInner {
    tx: QueueSender<Request>,
    queue: EsocketHandle,
    stats: Arc<Mutex<ResolverStats>>,
    max_wait: Duration,
}

impl Drop for ResolverInner {
    fn drop(&mut self) {
        let _ = self.queue.close();
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("queue", &self.inner.queue)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// Starts a resolver on `worker` and waits (up to 10 s) for it to be ready.
    ///
    /// # Errors
    /// As [`LocalResolver::new`]; [`StartError::Worker`] or [`StartError::NoReply`] when the
    /// worker does not take or finish the setup.
    pub fn start(worker: &Worker, config: ResolverConfig) -> Result<Resolver, StartError> {
        config.validate()?;
        let capacity = config.queue_capacity;
        let max_wait = config.max_lookup_time();
        let (reply, replies) = sync_channel(1);
        let setup = move |w: &mut WorkerCtx| {
            let made = LocalResolver::new(w, config).and_then(|local| {
                let stats = local.owner.shared.stats.clone();
                let on_request = move |es: &mut Esocket<'_>, req: Request| {
                    let Request { name, kind, done } = req;
                    let cb: Done = Box::new(move |_, result| done(result));
                    if let Err((e, cb)) = local.lookup_boxed(es.worker(), &name, kind, cb) {
                        cb(es.worker(), Err(e));
                    }
                };
                let (queue, tx) = w.add_queue(capacity, on_request).map_err(StartError::Io)?;
                Ok(ResolverInner { tx, queue, stats, max_wait })
            });
            let _ = reply.send(made);
        };
        worker.exec_timeout(setup, SETUP_TIMEOUT).map_err(StartError::Worker)?;
        match replies.recv_timeout(SETUP_TIMEOUT) {
            Ok(made) => Ok(Resolver { inner: Arc::new(made?) }),
            Err(_) => Err(StartError::NoReply),
        }
    }

    /// Queues a lookup; `done` runs on the resolver's worker with the result, exactly once
    /// (unless this returns an error). Keep `done` short: it runs on an event loop.
    ///
    /// # Errors
    /// [`ResolveError::TooManyQueries`] when the request queue is full,
    /// [`ResolveError::Closed`] when the resolver is gone; `done` is not called. Errors found
    /// on the worker (a bad name, too many queries outstanding) reach `done`.
    pub fn lookup(
        &self,
        name: &str,
        kind: LookupKind,
        done: impl FnOnce(Result<Lookup, ResolveError>) + Send + 'static,
    ) -> Result<(), ResolveError> {
        let req = Request { name: name.to_owned(), kind, done: Box::new(done) };
        match self.inner.tx.send(req) {
            Ok(()) => Ok(()),
            Err(QueueSendError::Full(_)) => Err(ResolveError::TooManyQueries),
            Err(_) => Err(ResolveError::Closed),
        }
    }

    /// Looks up `name` and blocks until the result. Never call this on a worker thread: the
    /// worker would wait for itself (use [`lookup`](Self::lookup) there).
    ///
    /// # Errors
    /// As [`lookup`](Self::lookup), plus every [`ResolveError`] a lookup can end with.
    pub fn resolve(&self, name: &str, kind: LookupKind) -> Result<Lookup, ResolveError> {
        let (tx, rx) = sync_channel(1);
        self.lookup(name, kind, move |result| {
            let _ = tx.send(result);
        })?;
        match rx.recv_timeout(self.inner.max_wait + RESOLVE_SLACK) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(ResolveError::Timeout),
            // The callback was dropped unrun: the worker stopped.
            Err(RecvTimeoutError::Disconnected) => Err(ResolveError::Closed),
        }
    }

    /// The counters, as of the last event the resolver handled.
    pub fn stats(&self) -> ResolverStats {
        *self.inner.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops taking requests (for every clone); lookups in flight still finish.
    pub fn close(&self) {
        let _ = self.inner.queue.close();
    }
}
