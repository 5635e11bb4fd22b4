//! Helpers shared by the integration tests: small reactors, a recording handler, bounded waits,
//! loopback plumbing and a cheap content hash.
//!
//! Every wait here is bounded by [`TIMEOUT`]; nothing sleeps to synchronise. Short sleeps only
//! appear inside polling loops that re-check a condition until a deadline.

// Each test file compiles this module on its own and uses a different subset of it.
#![allow(dead_code)]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use dap_reactor::{
    Esocket, EsocketHandle, EsocketKind, Handler, PeerAddr, Reactor, ReactorBuilder, ReactorError,
    Worker, WorkerCtx, WorkerStats,
};

/// The bound on every wait in these tests. Generous: the machines are shared and have 2 cores.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Logs to the test's captured output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

/// A builder for a small unpinned reactor with a long close linger (so graceful closes in the
/// tests never lose output to the linger deadline).
pub fn builder(threads: usize) -> ReactorBuilder {
    init_tracing();
    Reactor::builder()
        .threads(threads)
        .pin(false)
        .close_linger(Duration::from_secs(10))
        .name("test-worker")
}

/// Starts a small unpinned reactor.
#[track_caller]
pub fn reactor(threads: usize) -> Reactor {
    builder(threads).start().expect("reactor starts")
}

/// Starts a small reactor with pinning on.
#[track_caller]
pub fn pinned_reactor(threads: usize) -> Reactor {
    builder(threads).pin(true).start().expect("reactor starts")
}

/// Stops a reactor gracefully and waits for its threads, failing the test if that takes
/// longer than [`TIMEOUT`].
#[track_caller]
pub fn shutdown(reactor: Reactor) {
    reactor.stop(Duration::from_secs(2));
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        reactor.wait();
        let _ = tx.send(());
    });
    recv(&rx, "reactor threads to exit");
}

/// Receives from a channel, failing the test after [`TIMEOUT`].
#[track_caller]
pub fn recv<T>(rx: &Receiver<T>, what: &str) -> T {
    match rx.recv_timeout(TIMEOUT) {
        Ok(v) => v,
        Err(RecvTimeoutError::Timeout) => panic!("timed out after {TIMEOUT:?} waiting for {what}"),
        Err(RecvTimeoutError::Disconnected) => panic!("channel closed while waiting for {what}"),
    }
}

/// Polls `cond` (with a short pause between checks) until it holds, failing after [`TIMEOUT`].
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        if Instant::now() >= deadline {
            panic!("timed out after {TIMEOUT:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Polls a worker's stats (read live on the worker; the published snapshot once it no longer
/// runs closures) until `cond` holds; returns the stats that satisfied it.
#[track_caller]
pub fn wait_stats(
    worker: &Worker,
    what: &str,
    mut cond: impl FnMut(&WorkerStats) -> bool,
) -> WorkerStats {
    let mut last = None;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let s = live_stats(worker).unwrap_or_else(|| worker.stats());
        if cond(&s) {
            return s;
        }
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}; last stats: {last:?}");
        }
        last = Some(s);
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The worker's counters as of now, read on the worker itself: the published snapshot lags
/// by up to a loop turn, so a test that waits for a count to drop could see the value from
/// before the esocket was even added. `None` once the worker no longer takes closures.
fn live_stats(worker: &Worker) -> Option<WorkerStats> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    worker
        .exec(move |w| {
            let _ = tx.send(w.stats());
        })
        .ok()?;
    rx.recv_timeout(TIMEOUT).ok()
}

/// Runs `f` on the worker's thread and returns its result.
#[track_caller]
pub fn on_worker<R: Send + 'static>(
    worker: &Worker,
    f: impl FnOnce(&mut WorkerCtx) -> R + Send + 'static,
) -> R {
    let (tx, rx) = crossbeam_channel::bounded(1);
    worker
        .exec(move |w| {
            let _ = tx.send(f(w));
        })
        .expect("worker takes the closure");
    recv(&rx, "a closure to run on the worker")
}

/// Runs `f` on an esocket through its handle. `None` if the closure was dropped without
/// running (the esocket is gone).
#[track_caller]
pub fn try_on_esocket<R: Send + 'static>(
    handle: EsocketHandle,
    f: impl FnOnce(&mut Esocket<'_>) -> R + Send + 'static,
) -> Option<R> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    handle
        .exec(move |es| {
            let _ = tx.send(f(es));
        })
        .expect("worker takes the closure");
    match rx.recv_timeout(TIMEOUT) {
        Ok(v) => Some(v),
        Err(RecvTimeoutError::Disconnected) => None,
        Err(RecvTimeoutError::Timeout) => panic!("timed out running a closure on {handle:?}"),
    }
}

/// Runs `f` on a live esocket through its handle and returns its result.
#[track_caller]
pub fn on_esocket<R: Send + 'static>(
    handle: EsocketHandle,
    f: impl FnOnce(&mut Esocket<'_>) -> R + Send + 'static,
) -> R {
    try_on_esocket(handle, f).unwrap_or_else(|| panic!("{handle:?} is not live"))
}

/// A callback event, as recorded by [`Recorder`].
#[derive(Debug)]
pub enum Ev {
    New(EsocketHandle, EsocketKind),
    Connected,
    /// Bytes consumed from `buf_in` (consume mode only).
    Read(Vec<u8>),
    Datagram(Vec<u8>, SocketAddr),
    Write,
    WriteFinished,
    Error(ErrorKind, Option<ReactorError>),
    Delete,
}

/// What a [`Recorder`] does with input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Records and consumes everything read.
    Consume,
    /// Echoes input back (stream: through `copy_in_to_out`; UDP: to the sender); records no
    /// reads.
    Echo,
}

/// A handler that forwards its callbacks to a channel.
#[derive(Debug)]
pub struct Recorder {
    tx: Sender<Ev>,
    mode: Mode,
}

impl Recorder {
    pub fn new(mode: Mode) -> (Recorder, Events) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Recorder { tx, mode }, Events { rx })
    }

    /// A recorder whose events go to an existing channel.
    pub fn with(tx: Sender<Ev>, mode: Mode) -> Recorder {
        Recorder { tx, mode }
    }

    pub fn boxed(self) -> Box<dyn Handler> {
        Box::new(self)
    }

    fn echo(es: &mut Esocket<'_>) {
        // WouldBlock: output is full, the rest waits in buf_in until on_write.
        let _ = es.copy_in_to_out();
    }
}

impl Handler for Recorder {
    fn on_new(&mut self, es: &mut Esocket<'_>) {
        let _ = self.tx.send(Ev::New(es.handle(), es.kind()));
    }

    fn on_connected(&mut self, _es: &mut Esocket<'_>) {
        let _ = self.tx.send(Ev::Connected);
    }

    fn on_read(&mut self, es: &mut Esocket<'_>) {
        match self.mode {
            Mode::Consume => {
                let data = es.buf_in().to_vec();
                es.consume(data.len());
                let _ = self.tx.send(Ev::Read(data));
            }
            Mode::Echo => Self::echo(es),
        }
    }

    fn on_datagram(&mut self, es: &mut Esocket<'_>, data: &[u8], from: SocketAddr) {
        if self.mode == Mode::Echo {
            es.send_to(data, from).expect("echo a datagram");
        }
        let _ = self.tx.send(Ev::Datagram(data.to_vec(), from));
    }

    fn on_write(&mut self, es: &mut Esocket<'_>) -> bool {
        let _ = self.tx.send(Ev::Write);
        if self.mode == Mode::Echo {
            Self::echo(es);
        }
        false
    }

    fn on_write_finished(&mut self, _es: &mut Esocket<'_>) {
        let _ = self.tx.send(Ev::WriteFinished);
    }

    fn on_error(&mut self, _es: &mut Esocket<'_>, err: &io::Error) {
        let _ = self.tx.send(Ev::Error(err.kind(), ReactorError::of(err)));
    }

    fn on_delete(&mut self, _es: &mut Esocket<'_>) {
        let _ = self.tx.send(Ev::Delete);
    }
}

/// A handler factory whose handlers all record to one channel.
pub fn recording_factory(
    mode: Mode,
) -> (impl Fn(&PeerAddr) -> Option<Box<dyn Handler>> + Send + Sync + 'static, Events) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let factory = move |_: &PeerAddr| Some(Recorder::with(tx.clone(), mode).boxed());
    (factory, Events { rx })
}

/// A handler factory that gives each accepted connection its own recorder and hands the
/// test that recorder's [`Events`], in accept order.
pub fn per_connection_factory(
    mode: Mode,
) -> (impl Fn(&PeerAddr) -> Option<Box<dyn Handler>> + Send + Sync + 'static, Receiver<Events>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let factory = move |_: &PeerAddr| {
        let (rec, events) = Recorder::new(mode);
        let _ = tx.send(events);
        Some(rec.boxed())
    };
    (factory, rx)
}

/// The receiving end of a [`Recorder`].
#[derive(Debug)]
pub struct Events {
    pub rx: Receiver<Ev>,
}

impl Events {
    /// The next event.
    #[track_caller]
    pub fn next(&self) -> Ev {
        recv(&self.rx, "a handler callback")
    }

    /// Skips events until one matches; fails after [`TIMEOUT`].
    #[track_caller]
    pub fn wait_for(&self, what: &str, mut pred: impl FnMut(&Ev) -> bool) -> Ev {
        let deadline = Instant::now() + TIMEOUT;
        let mut skipped = Vec::new();
        loop {
            match self.rx.recv_deadline(deadline) {
                Ok(ev) if pred(&ev) => return ev,
                Ok(ev) => skipped.push(ev),
                Err(_) => panic!("timed out waiting for {what}; saw {skipped:?}"),
            }
        }
    }

    /// Waits for `on_new` and returns the esocket's handle.
    #[track_caller]
    pub fn new_handle(&self) -> EsocketHandle {
        match self.wait_for("on_new", |e| matches!(e, Ev::New(..))) {
            Ev::New(h, _) => h,
            _ => unreachable!(),
        }
    }

    /// Collects consumed bytes until `n` have arrived. Fails on an error or delete first.
    #[track_caller]
    pub fn read_bytes(&self, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            match self.next() {
                Ev::Read(data) => got.extend_from_slice(&data),
                ev @ (Ev::Error(..) | Ev::Delete) => {
                    panic!("{ev:?} after {} of {n} bytes", got.len())
                }
                _ => {}
            }
        }
        assert_eq!(got.len(), n, "more bytes than expected");
        got
    }

    /// Waits for `on_delete`; returns the error reported just before it, if any.
    #[track_caller]
    pub fn deleted(&self) -> Option<(ErrorKind, Option<ReactorError>)> {
        let mut error = None;
        loop {
            match self.next() {
                Ev::Error(kind, re) => {
                    assert!(error.is_none(), "on_error twice");
                    error = Some((kind, re));
                }
                Ev::Delete => return error,
                _ => {}
            }
        }
    }

    /// True if no event arrives within `window` (used only for "nothing happens" checks).
    pub fn quiet_for(&self, window: Duration) -> Result<(), Ev> {
        match self.rx.recv_timeout(window) {
            Ok(ev) => Err(ev),
            Err(_) => Ok(()),
        }
    }
}

/// A connected pair of std TCP streams over 127.0.0.1: (client, server side).
#[track_caller]
pub fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = connect(listener.local_addr().expect("local addr"));
    let (server, _) = listener.accept().expect("accept");
    (client, server)
}

/// Like [`tcp_pair`], but both sockets have small kernel buffers (`SO_SNDBUF` / `SO_RCVBUF`
/// of about `size` bytes, set before the connection exists), so that back-pressure reaches
/// the sender after kilobytes rather than the megabytes loopback autotuning allows.
#[track_caller]
pub fn small_tcp_pair(size: usize) -> (TcpStream, TcpStream) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    listener.set_recv_buffer_size(size).expect("SO_RCVBUF");
    listener.set_send_buffer_size(size).expect("SO_SNDBUF");
    listener.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
    listener.listen(8).expect("listen");
    let addr = listener.local_addr().expect("local addr");
    let client = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    client.set_recv_buffer_size(size).expect("SO_RCVBUF");
    client.set_send_buffer_size(size).expect("SO_SNDBUF");
    client.connect_timeout(&addr, TIMEOUT).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let client: TcpStream = client.into();
    client.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    client.set_write_timeout(Some(TIMEOUT)).expect("write timeout");
    (client, server.into())
}

/// A blocking TCP client with [`TIMEOUT`] on reads and writes.
#[track_caller]
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(TIMEOUT)).expect("write timeout");
    s
}

/// Reads exactly `n` bytes (blocking, bounded by the stream's read timeout).
#[track_caller]
pub fn read_n(stream: &mut impl Read, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    buf
}

/// Reads to end of file; the stream must have a read timeout.
#[track_caller]
pub fn read_to_eof(stream: &mut impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    stream
        .read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("reading to EOF after {} bytes: {e}", buf.len()));
    buf
}

/// Asserts the peer closed: a read returns end of file (or a reset, when `reset_ok`).
#[track_caller]
pub fn assert_closed(stream: &mut TcpStream, reset_ok: bool) {
    stream.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Ok(_) => panic!("expected end of file, got data"),
        Err(e) if reset_ok && e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("expected end of file, got {e}"),
    }
}

/// Writes and reads back through an echo server.
#[track_caller]
pub fn round_trip(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).expect("write");
    assert_eq!(read_n(stream, msg.len()), msg);
}

/// 64-bit FNV-1a, enough to compare megabytes of test data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn of(data: &[u8]) -> u64 {
        let mut h = Fnv::default();
        h.update(data);
        h.0
    }
}

/// `len` pseudo-random bytes (xorshift64*), reproducible from `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The byte at stream offset `i` of the deterministic pattern used by bulk-output tests.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// `len` bytes of the pattern, starting at stream offset `from`.
pub fn pattern(from: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern_byte(from + i)).collect()
}

/// Checks that `data` is the pattern from offset 0.
#[track_caller]
pub fn assert_pattern(data: &[u8]) {
    if let Some(i) = data.iter().enumerate().position(|(i, &b)| b != pattern_byte(i as u64)) {
        panic!("pattern broken at byte {i} of {}", data.len());
    }
}

/// A unique path for a Unix socket, removed when dropped.
#[derive(Debug)]
pub struct TempPath(PathBuf);

impl TempPath {
    pub fn new(tag: &str) -> TempPath {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("dap-reactor-{}-{tag}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        TempPath(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sum of a stat over all workers of a reactor.
pub fn sum_stat(reactor: &Reactor, f: impl Fn(&WorkerStats) -> u64) -> u64 {
    reactor.workers().iter().map(|w| f(&w.stats())).sum()
}

/// True for the errors a write to a closed stream may give.
pub fn is_closed_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
    )
}

/// Writes all of `data`, ignoring nothing: a helper for client threads.
#[track_caller]
pub fn write_all(stream: &mut impl Write, data: &[u8]) {
    stream.write_all(data).unwrap_or_else(|e| panic!("writing {} bytes: {e}", data.len()));
}

/// `Cpus_allowed_list` of a `/proc/.../status` file, expanded ("0-2,5" → [0, 1, 2, 5]).
pub fn cpus_allowed(status_path: &str) -> Vec<usize> {
    let status = std::fs::read_to_string(status_path).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in status")
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// Adopts the server side of a fresh loopback pair on worker 0; returns the client side.
#[track_caller]
pub fn adopted(reactor: &Reactor, mode: Mode) -> (TcpStream, EsocketHandle, Events) {
    let (client, server) = tcp_pair();
    let (rec, events) = Recorder::new(mode);
    let handle = on_worker(reactor.worker(0).unwrap(), move |w| w.adopt_tcp(server, rec.boxed()))
        .expect("adopt");
    assert_eq!(events.new_handle(), handle);
    (client, handle, events)
}

/// Keeps `worker` busy in an `exec` closure until the returned sender is used or dropped, so
/// a test can queue work behind it deterministically. Returns once the worker is held.
#[track_caller]
pub fn hold(worker: &Worker) -> Sender<()> {
    let (entered_tx, entered) = crossbeam_channel::bounded(1);
    let (release, release_rx) = crossbeam_channel::bounded::<()>(1);
    worker
        .exec(move |_| {
            let _ = entered_tx.send(());
            let _ = release_rx.recv_timeout(TIMEOUT);
        })
        .unwrap();
    recv(&entered, "the worker to be held");
    release
}
