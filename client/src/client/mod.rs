//! [`Client`]: the [`Machine`] driven on a reactor worker — enc_init and stream_ctl as
//! non-blocking HTTP requests, then the stream — with writes from any thread.
//!
//! Everything the client owns lives on one worker: its requests, its stream, its retry
//! timer, and the callbacks it makes. Other threads talk to it through its inputs: a
//! command is queued and the worker is woken (an eventfd), so no method blocks on the
//! worker and none can be lost to a full inbox.

mod errors;
mod outbox;
mod steps;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dap_net::dns::{Resolver, ResolverConfig};
use dap_net::enc::{ClientCert, EncSession};
use dap_reactor::{EsocketHandle, EventSender, Worker, WorkerCtx};
use dap_stream::session::SessionParams;
use dap_stream::transport::StreamError;
use dap_stream::{ChannelProcs, StreamStats, StreamStatsSnapshot};
use parking_lot::Mutex;

pub use outbox::{MessageFn, WriteError};

use crate::config::{ClientConfig, Transport, Uplink};
use crate::machine::RetryPolicy;
use crate::machine::{Action, Event};
use crate::{ClientError, Machine, Stage, Status};
use outbox::Outbox;

/// Hears whether a [`Client::go_stage`] target was reached.
pub type StageCallback = Box<dyn FnOnce(Result<Stage, ClientError>) + Send>;
/// Hears every stage change; with [`Status::Error`], why (a retry follows unless the
/// target is given up on).
pub type StatusFn = Box<dyn FnMut(Stage, Status, Option<&ClientError>) + Send>;

/// What a finished step leaves behind.
pub(crate) enum StepOut {
    /// A key with the node at this address.
    Enc(Arc<EncSession>, SocketAddr),
    /// A session.
    Session(Box<SessionParams>),
}

/// What the driver hears.
pub(crate) enum Input {
    Go(Stage, Option<StageCallback>),
    Abort,
    Close,
    /// The retry timer armed for this deadline fired.
    Timer(Instant),
    /// The uplink's name resolved (or not) for EncInit attempt `attempt`.
    Resolved {
        attempt: u64,
        result: Result<SocketAddr, ClientError>,
    },
    Done {
        attempt: u64,
        stage: Stage,
        out: StepOut,
    },
    Failed {
        attempt: u64,
        err: ClientError,
    },
    /// Stream events carry the stream's serial, which changes only when a stream is closed
    /// (a tear-down that keeps the stream keeps hearing it).
    /// The stream's first bytes left (UDP: its first datagram); the answer is awaited.
    StreamOpened {
        serial: u64,
        esocket: EsocketHandle,
    },
    /// The stream is up: its first authenticated answer arrived.
    StreamUp {
        serial: u64,
        esocket: EsocketHandle,
    },
    StreamClosed {
        serial: u64,
        err: StreamError,
    },
}

/// A step to start, with what it needs, taken out of the core so that starting it runs
/// without the core's lock.
pub(crate) enum Work {
    EncInit {
        attempt: u64,
        cfg: Box<ClientConfig>,
    },
    EncFetch {
        attempt: u64,
        cfg: Box<ClientConfig>,
        addr: SocketAddr,
    },
    StreamCtl {
        attempt: u64,
        cfg: Box<ClientConfig>,
        enc: Arc<EncSession>,
        addr: SocketAddr,
    },
    StreamSession {
        serial: u64,
        cfg: Box<ClientConfig>,
        params: Box<SessionParams>,
        addr: SocketAddr,
    },
}

/// The state on the worker.
struct Core {
    machine: Machine,
    cfg: ClientConfig,
    /// Bumped by every tear-down: results of steps started before it are ignored.
    attempt: u64,
    /// Bumped when the stream is closed (or a new one is started): events of older
    /// streams are ignored.
    stream_serial: u64,
    /// Steps to start once the lock is released.
    work: Vec<Work>,
    /// Esockets to close from the worker once the lock is released.
    to_close: Vec<EsocketHandle>,
    inputs: VecDeque<Input>,
    /// A drive loop is running (inputs arriving meanwhile are picked up by it).
    driving: bool,
    addr: Option<SocketAddr>,
    enc: Option<Arc<EncSession>>,
    params: Option<Box<SessionParams>>,
    stream: Option<EsocketHandle>,
    /// The stream's first authenticated answer arrived (StreamConnected).
    stream_up: bool,
    timer: Option<(Instant, EsocketHandle)>,
    wake: Option<(EsocketHandle, EventSender)>,
    waiters: Vec<StageCallback>,
    on_status: Option<StatusFn>,
    closed: bool,
    /// With `Transport::Auto`: UDP failed at this uplink; HTTP until then.
    udp_down_until: Option<Instant>,
}

/// What a drive turn tells the application, outside the lock. A target's outcome goes to
/// the callbacks waiting at the moment it was decided.
enum Told {
    Status(Stage, Status, Option<ClientError>),
    Outcome(Result<Stage, ClientError>, Vec<StageCallback>),
}

pub(crate) struct Inner {
    worker: Worker,
    core: Mutex<Core>,
    out: Arc<Mutex<Outbox>>,
    stats: Arc<StreamStats>,
    procs: ChannelProcs,
    sink: Arc<Mutex<Option<MessageFn>>>,
    resolver: Mutex<Option<Resolver>>,
}

/// A connection to a node through the stages `Begin → … → StreamStreaming`, on one reactor
/// worker.
///
/// `Send + Sync`: share it (`Arc<Client>`) and call it from any thread. Callbacks — the
/// [`go_stage`](Self::go_stage) callback, [`on_status`](Self::on_status), the message
/// callback and channel handlers — run on the client's worker; keep them short.
///
/// Dropping the client tears it down (the stream closes, queued writes are dropped).
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use dap_client::{Client, ClientConfig, Stage, Uplink};
///
/// let reactor = dap_reactor::Reactor::builder().threads(1).start()?;
/// let cfg = ClientConfig::new(Uplink::parse("127.0.0.1:8079")?).channels(b"E");
/// let client = Client::new(&reactor.workers()[0], cfg, Default::default())?;
/// client.on_message(|ch, msg| println!("{}: {:?}", ch as char, msg.data));
/// client.go_stage_blocking(Stage::StreamStreaming, Duration::from_secs(10))?;
/// client.write(b'E', 0, &b"hello"[..]).map_err(|e| e.to_string())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Client {
    inner: Arc<Inner>,
    /// The reactor [`ClientBuilder::start`] made when it was given none; stopped after
    /// the client closes.
    own: Option<dap_reactor::Reactor>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.inner.core.lock();
        f.debug_struct("Client")
            .field("uplink", &c.cfg.uplink)
            .field("stage", &c.machine.stage())
            .field("status", &c.machine.status())
            .finish_non_exhaustive()
    }
}

/// How long [`Client::new`] waits for the worker to set the client up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// A client on `worker`, at `Begin`. `procs` holds the application's handlers for
    /// channels it wants to handle itself; the others deliver to
    /// [`on_message`](Self::on_message). Call from outside `worker`'s reactor (it waits for
    /// the worker); on a worker, use [`new_on`](Self::new_on).
    ///
    /// # Errors
    /// [`ClientError::Io`] when the worker does not set the client up (stopped, full) or
    /// the uplink is a name and no resolver could start.
    pub fn new(
        worker: &Worker,
        config: ClientConfig,
        procs: ChannelProcs,
    ) -> Result<Client, ClientError> {
        let resolver = resolver_for(worker, &config.uplink)?;
        let inner = Inner::new(worker.clone(), config, procs, resolver);
        let (tx, rx) = mpsc::sync_channel(1);
        let setup = inner.clone();
        let io = |reason: String| ClientError::Io { stage: Stage::Begin, reason };
        worker
            .exec_timeout(
                move |ctx| {
                    let made = setup.install_wake(ctx);
                    if made.is_ok() && tx.send(Ok(())).is_err() {
                        // `new` gave up waiting and returned an error: nobody will ever
                        // close this client, so undo the set-up now.
                        let wake = setup.core.lock().wake.take();
                        close_all(ctx, wake.into_iter().map(|(h, _)| h).collect());
                    } else if let Err(e) = made {
                        let _ = tx.send(Err(e));
                    }
                },
                SETUP_TIMEOUT,
            )
            .map_err(|e| io(e.to_string()))?;
        match rx.recv_timeout(SETUP_TIMEOUT) {
            Ok(Ok(())) => Ok(Client { inner, own: None }),
            Ok(Err(e)) => Err(io(e.to_string())),
            Err(_) => Err(io("the worker did not set the client up".into())),
        }
    }

    /// [`new`](Self::new) on the client's own worker. A host-name uplink needs a resolver
    /// here: pass one with [`set_resolver`](Self::set_resolver).
    ///
    /// # Errors
    /// [`ClientError::Io`] when the wake-up event cannot be added.
    pub fn new_on(
        ctx: &mut WorkerCtx,
        config: ClientConfig,
        procs: ChannelProcs,
    ) -> Result<Client, ClientError> {
        let inner = Inner::new(ctx.worker(), config, procs, None);
        inner
            .install_wake(ctx)
            .map_err(|e| ClientError::Io { stage: Stage::Begin, reason: e.to_string() })?;
        Ok(Client { inner, own: None })
    }

    /// Goes to `target`: from a completed stage a higher target continues; a lower one
    /// tears down to it. `callback` runs on the client's worker once the target is reached
    /// or given up on (after the retry policy's tries). A later `go_stage` before that
    /// re-aims the client; every callback still waiting hears the outcome of the latest
    /// target.
    pub fn go_stage(
        &self,
        target: Stage,
        callback: impl FnOnce(Result<Stage, ClientError>) + Send + 'static,
    ) {
        self.inner.input(Input::Go(target, Some(Box::new(callback))));
    }

    /// [`go_stage`](Self::go_stage), waiting up to `timeout` for the outcome. Not on the
    /// client's worker thread.
    ///
    /// # Errors
    /// The outcome's error; [`ClientError::Timeout`] at the current stage when `timeout`
    /// passes first (the client keeps trying).
    pub fn go_stage_blocking(
        &self,
        target: Stage,
        timeout: Duration,
    ) -> Result<Stage, ClientError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.go_stage(target, move |r| {
            let _ = tx.send(r);
        });
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(ClientError::Timeout { stage: self.stage().0 })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ClientError::Aborted(self.stage().0)),
        }
    }

    /// Stops trying and tears everything down; a pending target fails with `Aborted`.
    pub fn abort(&self) {
        self.inner.input(Input::Abort);
    }

    /// The stage and its status.
    pub fn stage(&self) -> (Stage, Status) {
        let c = self.inner.core.lock();
        (c.machine.stage(), c.machine.status())
    }

    /// The transport of the current session (`None` before stream_ctl answered): with
    /// [`Transport::Auto`](crate::Transport::Auto), the one it settled on.
    pub fn transport(&self) -> Option<crate::Transport> {
        let c = self.inner.core.lock();
        c.params.as_ref().map(|p| match p.transport {
            dap_stream::session::TransportKind::Udp => crate::Transport::Udp,
            _ => crate::Transport::Http,
        })
    }

    /// Whether channels are live.
    pub fn is_streaming(&self) -> bool {
        self.inner.core.lock().machine.is_streaming()
    }

    /// The last failure, if the client has not succeeded since.
    pub fn last_error(&self) -> Option<ClientError> {
        self.inner.core.lock().machine.last_error().cloned()
    }

    /// Points the client at another node (host name or address, IPv4 or IPv6), from the
    /// next EncInit on. A host name starts a DNS resolver (the system's servers) unless
    /// one was set; call this off the client's worker then.
    ///
    /// # Errors
    /// [`ClientError::WrongAddress`]; [`ClientError::Io`] when a resolver cannot start.
    pub fn set_uplink(&self, host: &str, port: u16) -> Result<(), ClientError> {
        let uplink = Uplink::new(host, port)?;
        if self.inner.resolver.lock().is_none()
            && let Some(r) = resolver_for(&self.inner.worker, &uplink)?
        {
            *self.inner.resolver.lock() = Some(r);
        }
        self.inner.core.lock().cfg.uplink = uplink;
        Ok(())
    }

    /// The DNS resolver for host-name uplinks.
    pub fn set_resolver(&self, resolver: Resolver) {
        *self.inner.resolver.lock() = Some(resolver);
    }

    /// The client certificate for the next enc_init (`None`: none).
    pub fn set_auth_cert(&self, cert: Option<Arc<ClientCert>>) {
        self.inner.core.lock().cfg.auth_cert = cert;
    }

    /// Pins the node key for the next enc_init (`None`: trust any).
    pub fn set_node_key(&self, key: Option<[u8; 32]>) {
        self.inner.core.lock().cfg.node_key = key;
    }

    /// The channels of the next session. Writes to channels no longer active fail with
    /// [`WriteError::NotActive`]; messages queued for them are dropped. To apply it to a
    /// live client, go to `StreamCtl`'s predecessor and back up.
    pub fn set_active_channels(&self, channels: &[u8]) {
        let mut c = self.inner.core.lock();
        c.cfg.channels = channels.to_vec();
        self.inner.out.lock().set_channels(channels);
    }

    /// Turns connect-on-demand on or off.
    pub fn set_connect_on_demand(&self, on: bool) {
        self.inner.core.lock().cfg.connect_on_demand = on;
    }

    /// Calls `f` with every stage change, on the client's worker. With [`Status::Error`]
    /// the third argument says why: a client that reconnects (after a lost stream, or a
    /// step that failed) is heard here with its reason, then again as it climbs back.
    pub fn on_status(&self, f: impl FnMut(Stage, Status, Option<&ClientError>) + Send + 'static) {
        self.inner.core.lock().on_status = Some(Box::new(f));
    }

    /// Calls `f` with each whole message of a channel that has no handler in the client's
    /// [`ChannelProcs`], on the client's worker. Do not call client methods that take this
    /// callback from inside it.
    pub fn on_message(&self, f: impl FnMut(u8, dap_stream::Message) + Send + 'static) {
        *self.inner.sink.lock() = Some(Box::new(f));
    }

    /// Writes a message of type `ty` to channel `ch`, from any thread, without waiting.
    /// Streaming, it goes into the stream's channel queue. Before streaming, with
    /// connect-on-demand on, it is queued (bounded) and the client heads for streaming if
    /// it was not already; the queue drains, in order, once the stream is up.
    ///
    /// Taken is not delivered: a stream that breaks loses what it had queued. Applications
    /// that need delivery acknowledge at their own level.
    ///
    /// # Errors
    /// [`WriteError`]; `Full` is back-pressure, retry later.
    pub fn write(&self, ch: u8, ty: u8, data: impl Into<Bytes>) -> Result<(), WriteError> {
        let (on_demand, stage, heading) = {
            let c = self.inner.core.lock();
            let m = &c.machine;
            let heading = m.target() == Stage::StreamStreaming;
            (c.cfg.connect_on_demand, m.stage(), heading)
        };
        self.inner.out.lock().write(ch, ty, data.into(), on_demand, stage)?;
        if on_demand && !heading {
            self.inner.input(Input::Go(Stage::StreamStreaming, None));
        }
        Ok(())
    }

    /// Messages queued for a stream that is not up yet.
    pub fn queued(&self) -> usize {
        self.inner.out.lock().queued()
    }

    /// Queued messages dropped so far: by [`abort`](Self::abort), or with a channel that
    /// [`set_active_channels`](Self::set_active_channels) removed.
    pub fn dropped(&self) -> u64 {
        self.inner.out.lock().dropped
    }

    /// The stream's counters (all the client's streams so far).
    pub fn stream_stats(&self) -> StreamStatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// The worker the client lives on.
    pub fn worker(&self) -> &Worker {
        &self.inner.worker
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.inner.input(Input::Close);
        if let Some(r) = self.own.take() {
            // The close is queued ahead of the stop: the worker closes the stream (a CLOSE
            // packet) before it stops.
            r.shutdown(Duration::from_secs(1));
        }
    }
}

impl Client {
    /// A builder for a client of `uplink` with the defaults of a long-lived client:
    /// reconnect without limit (back-off 0.5 s doubling to 30 s, with jitter),
    /// connect-on-demand on, its own worker thread unless given one.
    ///
    /// ```no_run
    /// use dap_client::{Client, Transport, Uplink};
    ///
    /// let client = Client::builder(Uplink::parse("127.0.0.1:8079")?)
    ///     .channels(b"E")
    ///     .transport(Transport::Auto)
    ///     .on_message(|ch, msg| println!("{}: {:?}", ch as char, msg.data))
    ///     .on_status(|stage, status, why| eprintln!("{stage} {status:?} {why:?}"))
    ///     .start()?;
    /// // Queued until the stream is up, then sent in order.
    /// client.write(b'E', 0, &b"hello"[..]).map_err(|e| e.to_string())?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder(uplink: Uplink) -> ClientBuilder {
        ClientBuilder {
            config: ClientConfig { connect_on_demand: true, ..ClientConfig::new(uplink) },
            worker: None,
            procs: ChannelProcs::new(),
            on_message: None,
            on_status: None,
            connect: true,
            bad: None,
        }
    }
}

/// Builds a [`Client`] ([`Client::builder`]).
#[must_use = "a builder does nothing until start()"]
pub struct ClientBuilder {
    config: ClientConfig,
    worker: Option<Worker>,
    procs: ChannelProcs,
    on_message: Option<MessageFn>,
    on_status: Option<StatusFn>,
    connect: bool,
    /// The first channel registration that failed, reported by `start`.
    bad: Option<String>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("config", &self.config)
            .field("own_worker", &self.worker.is_none())
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The channels asked for (printable ASCII ids).
    pub fn channels(mut self, channels: &[u8]) -> Self {
        self.config.channels = channels.to_vec();
        self
    }

    /// The transport (`Http` by default; `Auto` tries UDP first).
    pub fn transport(mut self, transport: Transport) -> Self {
        self.config.transport = transport;
        self
    }

    /// Pins the node key.
    pub fn node_key(mut self, key: [u8; 32]) -> Self {
        self.config.node_key = Some(key);
        self
    }

    /// The client certificate for nodes that require one.
    pub fn auth_cert(mut self, cert: Arc<ClientCert>) -> Self {
        self.config.auth_cert = Some(cert);
        self
    }

    /// The retry policy (by default: without limit, 0.5 s doubling to 30 s, jitter 0.5).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.config.retry = retry;
        self
    }

    /// Gives up a target after `tries` failed tries of a stage (by default, never).
    pub fn max_tries(mut self, tries: u32) -> Self {
        self.config.retry.max_tries = Some(tries.max(1));
        self
    }

    /// Connect-on-demand (on by default): writes before streaming are queued (bounded by
    /// `queue_bytes` and `queue_messages`) and sent in order once the stream is up.
    pub fn connect_on_demand(mut self, on: bool) -> Self {
        self.config.connect_on_demand = on;
        self
    }

    /// Changes any other setting of the [`ClientConfig`].
    pub fn configure(mut self, f: impl FnOnce(&mut ClientConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// Runs the client on `worker` (of a reactor the application owns) instead of a
    /// worker thread of its own.
    pub fn worker(mut self, worker: &Worker) -> Self {
        self.worker = Some(worker.clone());
        self
    }

    /// A handler of the application's for channel `id`, on the client's worker, instead
    /// of [`on_message`](Self::on_message).
    pub fn channel<H, F>(mut self, id: u8, factory: F) -> Self
    where
        H: dap_stream::ChannelHandler,
        F: Fn(&dap_stream::SessionInfo) -> H + Send + Sync + 'static,
    {
        if let Err(e) = self.procs.ch_proc_add(id, move |s| Box::new(factory(s)) as Box<_>) {
            self.bad.get_or_insert(e.to_string());
        }
        self
    }

    /// Hears each whole message of a channel without a handler.
    pub fn on_message(mut self, f: impl FnMut(u8, dap_stream::Message) + Send + 'static) -> Self {
        self.on_message = Some(Box::new(f));
        self
    }

    /// Hears every stage change, with the reason of each failure ([`Client::on_status`]).
    pub fn on_status(
        mut self,
        f: impl FnMut(Stage, Status, Option<&ClientError>) + Send + 'static,
    ) -> Self {
        self.on_status = Some(Box::new(f));
        self
    }

    /// Whether [`start`](Self::start) heads for streaming at once (on by default); off,
    /// the client waits at `Begin` for [`Client::go_stage`] or, with connect-on-demand,
    /// the first write.
    pub fn connect_now(mut self, on: bool) -> Self {
        self.connect = on;
        self
    }

    /// Starts the client (and its worker thread, when it was given none) and, unless
    /// [`connect_now`](Self::connect_now) is off, heads for streaming.
    ///
    /// # Errors
    /// [`ClientError::Io`] at `Begin` for a channel id that cannot be one, or when the
    /// worker cannot start or set the client up.
    pub fn start(self) -> Result<Client, ClientError> {
        let ClientBuilder { config, worker, procs, on_message, on_status, connect, bad } = self;
        let io = |reason: String| ClientError::Io { stage: Stage::Begin, reason };
        if let Some(bad) = bad {
            return Err(io(bad));
        }
        let (worker, own) = match worker {
            Some(w) => (w, None),
            None => {
                let r = dap_reactor::Reactor::builder()
                    .threads(1)
                    .pin(false)
                    .name("dap-client")
                    .start()
                    .map_err(|e| io(format!("client worker: {e}")))?;
                let w = r.worker(0).ok_or_else(|| io("client worker: none started".into()))?;
                (w.clone(), Some(r))
            }
        };
        let mut client = Client::new(&worker, config, procs)?;
        client.own = own;
        if let Some(f) = on_message {
            *client.inner.sink.lock() = Some(f);
        }
        if let Some(f) = on_status {
            client.inner.core.lock().on_status = Some(f);
        }
        if connect {
            client.inner.input(Input::Go(Stage::StreamStreaming, None));
        }
        Ok(client)
    }
}

/// A resolver when `uplink` is a name other than `localhost`.
fn resolver_for(worker: &Worker, uplink: &Uplink) -> Result<Option<Resolver>, ClientError> {
    let Uplink::Host(name, _) = uplink else { return Ok(None) };
    if name == "localhost" {
        return Ok(None);
    }
    let io = |reason: String| ClientError::Io { stage: Stage::Begin, reason };
    let cfg = ResolverConfig::system().map_err(|e| io(format!("no DNS configuration: {e}")))?;
    Resolver::start(worker, cfg).map(Some).map_err(|e| io(format!("DNS resolver: {e}")))
}

impl Inner {
    fn new(
        worker: Worker,
        cfg: ClientConfig,
        procs: ChannelProcs,
        resolver: Option<Resolver>,
    ) -> Arc<Inner> {
        let out =
            Outbox::new(&cfg.channels, cfg.queue_bytes, cfg.queue_messages, cfg.mux.max_message);
        let core = Core {
            machine: Machine::new(cfg.retry),
            cfg,
            attempt: 0,
            stream_serial: 0,
            work: Vec::new(),
            to_close: Vec::new(),
            inputs: VecDeque::new(),
            driving: false,
            udp_down_until: None,
            addr: None,
            enc: None,
            params: None,
            stream: None,
            stream_up: false,
            timer: None,
            wake: None,
            waiters: Vec::new(),
            on_status: None,
            closed: false,
        };
        Arc::new(Inner {
            worker,
            core: Mutex::new(core),
            out: Arc::new(Mutex::new(out)),
            stats: Arc::new(StreamStats::default()),
            procs,
            sink: Arc::new(Mutex::new(None)),
            resolver: Mutex::new(resolver),
        })
    }

    /// Adds the eventfd that wakes the driver from other threads.
    fn install_wake(self: &Arc<Self>, ctx: &mut WorkerCtx) -> std::io::Result<()> {
        // Strong: the client's last input (`Close`, from its drop) must still find it. The
        // closure lives in the worker's table, not in `Inner`, so this is no cycle; the
        // esocket closes on `Close` (or with the worker).
        let me = self.clone();
        let (h, tx) = ctx.add_event(move |es, _| me.drive(es.worker()))?;
        self.core.lock().wake = Some((h, tx));
        Ok(())
    }

    /// Queues an input from any thread and wakes the worker.
    pub(crate) fn input(&self, input: Input) {
        let mut c = self.core.lock();
        c.inputs.push_back(input);
        if !c.driving
            && let Some((_, tx)) = &c.wake
            && let Err(e) = tx.signal(1)
        {
            // An eventfd add fails only at u64::MAX - 1 pending; the input waits for
            // the next wake-up either way.
            tracing::warn!(%e, "client wake-up failed");
        }
    }

    /// Queues an input on the worker and runs the driver now.
    pub(crate) fn input_on(self: &Arc<Self>, ctx: &mut WorkerCtx, input: Input) {
        self.core.lock().inputs.push_back(input);
        self.drive(ctx);
    }

    /// Runs the machine until it has nothing left to do: applies inputs, starts steps,
    /// arms the retry timer, and tells the application. Re-entrant calls (a step that
    /// reports at once) queue their input for the running loop.
    fn drive(self: &Arc<Self>, ctx: &mut WorkerCtx) {
        {
            let mut c = self.core.lock();
            if c.driving {
                return;
            }
            c.driving = true;
        }
        loop {
            let now = ctx.now();
            let mut c = self.core.lock();
            let mut told = Vec::new();
            while let Some(i) = c.inputs.pop_front() {
                c.apply(now, i, &self.out);
                c.plan(now, &self.out);
                c.collect(&mut told);
            }
            c.plan(now, &self.out);
            c.collect(&mut told);
            let work = std::mem::take(&mut c.work);
            let mut to_close = std::mem::take(&mut c.to_close);
            let timer = c.timer_change();
            let idle = work.is_empty() && told.is_empty() && timer.is_none();
            if idle && to_close.is_empty() && c.inputs.is_empty() {
                c.driving = false;
                if c.closed {
                    to_close.extend(c.release());
                    drop(c);
                    close_all(ctx, to_close);
                }
                return;
            }
            let mut on_status = c.on_status.take();
            drop(c);
            close_all(ctx, to_close);
            if let Some(t) = timer {
                self.arm_timer(ctx, t);
            }
            for w in work {
                self.start(ctx, w);
            }
            tell(told, &mut on_status);
            let mut c = self.core.lock();
            if c.on_status.is_none() {
                c.on_status = on_status;
            }
        }
    }

    /// Replaces the retry timer: `Some(deadline)` arms one, `None` inside means disarm.
    fn arm_timer(self: &Arc<Self>, ctx: &mut WorkerCtx, change: Option<Instant>) {
        let old = self.core.lock().timer.take();
        if let Some((_, h)) = old {
            close_all(ctx, vec![h]);
        }
        let Some(at) = change else { return };
        let me = Arc::downgrade(self);
        let delay = at.saturating_duration_since(ctx.now());
        match ctx.add_oneshot(delay, move |es| {
            if let Some(me) = me.upgrade() {
                me.input_on(es.worker(), Input::Timer(at));
            }
        }) {
            Ok(h) => self.core.lock().timer = Some((at, h)),
            Err(e) => {
                // No timer slot on the worker: the retry cannot be scheduled, so the
                // target ends now (as `Aborted`) rather than wait for a retry that never
                // comes.
                tracing::error!(%e, "client retry timer could not be armed; giving up");
                self.core.lock().machine.abort();
            }
        }
    }
}

/// Closes esockets from their own worker (no inbox message to lose); one that is running
/// a callback right now (the wake-up event, during its own callback) is closed by message.
fn close_all(ctx: &mut WorkerCtx, handles: Vec<EsocketHandle>) {
    for h in handles {
        if ctx.with_esocket(h, |es| es.close()).is_none() {
            let _ = h.close();
        }
    }
}

/// Runs the application's callbacks; a panic in one is logged and does not stop the
/// client.
fn tell(told: Vec<Told>, on_status: &mut Option<StatusFn>) {
    let guard = |what: &str, f: &mut dyn FnMut()| {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
            tracing::error!("a client {what} callback panicked");
        }
    };
    for t in told {
        match t {
            Told::Status(stage, status, reason) => {
                tracing::debug!(%stage, ?status, reason = ?reason.as_ref().map(|e| e.to_string()), "client stage");
                if let Some(f) = on_status.as_mut() {
                    guard("status", &mut || f(stage, status, reason.as_ref()));
                }
            }
            Told::Outcome(result, waiters) => {
                if let Err(e) = &result {
                    tracing::debug!(%e, "client target given up");
                }
                for w in waiters {
                    let mut w = Some(w);
                    let r = result.clone();
                    guard("go_stage", &mut || {
                        if let Some(w) = w.take() {
                            w(r.clone());
                        }
                    });
                }
            }
        }
    }
}

impl Core {
    fn apply(&mut self, now: Instant, input: Input, out: &Mutex<Outbox>) {
        match input {
            Input::Go(target, waiter) => {
                if let Some(w) = waiter {
                    self.waiters.push(w);
                }
                if !self.closed {
                    self.machine.go_stage(now, target);
                }
            }
            Input::Abort => {
                self.machine.abort();
                out.lock().clear();
            }
            Input::Close => {
                self.closed = true;
                self.machine.abort();
                out.lock().clear();
            }
            Input::Timer(at) => {
                // A timer replaced after it fired, before its input ran, is not this one.
                if self.timer.as_ref().is_some_and(|(t, _)| *t == at) {
                    self.timer = None;
                    self.machine.handle_timeout(now);
                }
            }
            Input::Resolved { attempt, result } if attempt == self.attempt => match result {
                Ok(addr) => {
                    let cfg = Box::new(self.cfg.clone());
                    self.work.push(Work::EncFetch { attempt, cfg, addr });
                }
                Err(err) => self.machine.step_failed(now, err),
            },
            Input::Done { attempt, stage, out: result } if attempt == self.attempt => {
                match result {
                    StepOut::Enc(enc, addr) => {
                        self.enc = Some(enc);
                        self.addr = Some(addr);
                    }
                    StepOut::Session(p) => self.params = Some(p),
                }
                self.machine.step_done(now, stage);
            }
            Input::Failed { attempt, err } if attempt == self.attempt => {
                self.machine.step_failed(now, err);
            }
            Input::StreamOpened { serial, esocket } if serial == self.stream_serial => {
                // StreamSession is done once the first datagram left; StreamConnected waits
                // for the answer.
                self.stream = Some(esocket);
                if self.machine.stage() == Stage::StreamSession
                    && self.machine.status() == Status::InProgress
                {
                    self.machine.step_done(now, Stage::StreamSession);
                }
            }
            Input::StreamUp { serial, esocket } if serial == self.stream_serial => {
                self.stream = Some(esocket);
                self.stream_up = true;
                let stage = self.machine.stage();
                if matches!(stage, Stage::StreamSession | Stage::StreamConnected)
                    && self.machine.status() == Status::InProgress
                {
                    // StreamSession (HTTP: the 101 is the first answer) or StreamConnected
                    // (UDP); the plan completes StreamConnected after StreamSession.
                    self.machine.step_done(now, stage);
                }
            }
            Input::StreamClosed { serial, err } if serial == self.stream_serial => {
                self.stream = None;
                self.stream_up = false;
                self.stream_serial += 1;
                out.lock().unlive();
                let setting_up =
                    matches!(self.machine.stage(), Stage::StreamSession | Stage::StreamConnected)
                        && self.machine.status() == Status::InProgress;
                let e = errors::stream(&err, !setting_up, self.machine.stage());
                if setting_up {
                    self.machine.step_failed(now, e);
                } else {
                    self.machine.stream_lost(now, e);
                }
            }
            Input::StreamOpened { esocket, .. } | Input::StreamUp { esocket, .. } => {
                // A stream of a torn-down attempt came up late: close it.
                self.to_close.push(esocket);
            }
            // Results of torn-down attempts.
            Input::Resolved { .. }
            | Input::Done { .. }
            | Input::Failed { .. }
            | Input::StreamClosed { .. } => {}
        }
    }

    /// Turns the machine's actions into steps to start, tearing down as told.
    fn plan(&mut self, now: Instant, out: &Mutex<Outbox>) {
        while let Some(a) = self.machine.poll_action() {
            match a {
                Action::TearDown { to } => self.tear_down(to, out),
                Action::Run(stage) => {
                    let attempt = self.attempt;
                    let cfg = Box::new(self.cfg.clone());
                    match (stage, &self.enc, self.addr, &self.params) {
                        (Stage::Begin, ..) => self.machine.step_done(now, stage),
                        (Stage::EncInit, ..) => self.work.push(Work::EncInit { attempt, cfg }),
                        (Stage::StreamCtl, Some(enc), Some(addr), _) => {
                            let enc = enc.clone();
                            self.work.push(Work::StreamCtl { attempt, cfg, enc, addr });
                        }
                        (Stage::StreamSession, _, Some(addr), Some(p)) => {
                            // A new stream: events of any earlier one are stale from here.
                            self.stream_serial += 1;
                            self.stream_up = false;
                            let serial = self.stream_serial;
                            out.lock().expect_stream(serial);
                            let params = p.clone();
                            self.work.push(Work::StreamSession { serial, cfg, params, addr });
                        }
                        // Attached by the first answer (the 101, or the first authenticated
                        // datagram); channels open with it.
                        (Stage::StreamConnected | Stage::StreamStreaming, ..) if self.stream_up => {
                            self.machine.step_done(now, stage);
                        }
                        // UDP: the first datagram left; the answer completes the stage.
                        (Stage::StreamConnected, ..) if self.stream.is_some() => {}
                        // What the stage needs is gone (a tear-down raced it).
                        (stage, ..) => {
                            self.machine.step_failed(now, ClientError::WrongStage(stage));
                        }
                    }
                }
            }
        }
    }

    fn tear_down(&mut self, to: Stage, out: &Mutex<Outbox>) {
        self.attempt += 1;
        if to < Stage::StreamSession {
            // The stream, also one still connecting: its events are stale from here.
            if let Some(h) = self.stream.take() {
                self.to_close.push(h);
            }
            self.stream_up = false;
            self.stream_serial += 1;
            out.lock().unlive();
        }
        if to < Stage::StreamCtl {
            self.params = None;
        }
        if to < Stage::EncInit {
            self.enc = None;
            self.addr = None;
        }
    }

    /// Moves the machine's events into `told`; an outcome takes the callbacks waiting now.
    fn collect(&mut self, told: &mut Vec<Told>) {
        while let Some(e) = self.machine.poll_event() {
            told.push(match e {
                Event::Stage { stage, status, reason } => Told::Status(stage, status, reason),
                Event::Reached(s) => Told::Outcome(Ok(s), std::mem::take(&mut self.waiters)),
                Event::Failed(e) => Told::Outcome(Err(e), std::mem::take(&mut self.waiters)),
            });
        }
    }

    /// `Some(new)` when the retry timer must change.
    fn timer_change(&self) -> Option<Option<Instant>> {
        let want = if self.closed { None } else { self.machine.poll_timeout() };
        let have = self.timer.as_ref().map(|(t, _)| *t);
        (want != have).then_some(want)
    }

    /// The client is gone: what it still holds on the worker, to close.
    fn release(&mut self) -> Vec<EsocketHandle> {
        let mut v = Vec::new();
        v.extend(self.timer.take().map(|(_, h)| h));
        v.extend(self.wake.take().map(|(h, _)| h));
        v.extend(self.stream.take());
        v
    }
}
