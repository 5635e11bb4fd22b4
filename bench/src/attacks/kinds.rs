//! The attacks themselves. Each comes from source addresses of its own (127.0.1.x,
//! 127.0.2.x, ...: never the legitimate client's 127.0.0.2 nor the metrics reader's
//! 127.0.0.3), runs for a bounded time, and has closed every socket it opened when it
//! returns.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dap_net::enc::{CipherSuite, EncInit};
use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};

use super::subject::{self, Metrics, fmt_metric};
use crate::dapclient::{self, HttpConn, StreamClient};
use crate::procstat;

/// What the attacks need to know of their target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// dapd's listener.
    pub addr: SocketAddr,
    /// dapd's node key, for the attackers' own handshakes.
    pub node_key: [u8; 32],
    /// dapd's process id.
    pub pid: u32,
}

/// What an attack did: a line for people and `key=value` pairs for the `RESULT` line.
#[derive(Debug, Default)]
pub struct Outcome {
    /// A sentence or two.
    pub detail: String,
    /// Figures of this attack only.
    pub pairs: Vec<(String, String)>,
}

/// How long attackers keep what they hold before closing it.
const HOLD: Duration = Duration::from_secs(5);
/// Bound of a blocking connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Descriptors the harness keeps free for itself (the legitimate client, `/metrics`, ...).
const FD_RESERVE: u64 = 256;

fn src(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, a, b))
}

fn pair(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// A blocking connection from `from` to `to`, bounded.
fn connect_from(from: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let sock = dapclient::socket_from(from)?;
    sock.connect_timeout(&to.into(), CONNECT_TIMEOUT)?;
    Ok(sock.into())
}

// ---- reassembly ----------------------------------------------------------------------

/// Sessions of the reassembly attack, one per source 127.0.1.1, 127.0.1.2, ...
const REASSEMBLY_SESSIONS: u8 = 20;
/// The message each of them starts: the largest dapd takes (`[stream] max_message`).
const REASSEMBLY_MESSAGE: usize = 16 << 20;
/// What each keeps back of it.
const REASSEMBLY_HELD_BACK: usize = 1024;
/// Longest wait for every session to have sent its part.
const REASSEMBLY_SEND_WAIT: Duration = Duration::from_secs(90);

/// How one reassembly session's send ended.
type SendEnd = Result<(), (String, Option<u16>)>;

/// 20 sessions each send all but the last KiB of a 16 MiB message on `E` at once, then
/// hold their streams open (answering keepalives) for [`HOLD`].
pub fn reassembly(t: Target) -> Result<Outcome, String> {
    let msg = Bytes::from(vec![b'r'; REASSEMBLY_MESSAGE]);
    let upto = REASSEMBLY_MESSAGE - REASSEMBLY_HELD_BACK;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = crossbeam_channel::unbounded::<SendEnd>();
    let mut threads = Vec::new();
    for i in 0..REASSEMBLY_SESSIONS {
        let (msg, stop, tx) = (msg.clone(), stop.clone(), tx.clone());
        threads.push(thread::spawn(move || -> Option<String> {
            let from = src(1, 1 + i);
            let mut c = match dapclient::open_session_from(from, t.addr, t.node_key, b"E", None) {
                Ok((conn, params)) => StreamClient::new(conn, &params),
                Err(e) => {
                    let _ = tx.send(Err((format!("set-up from {from}: {e}"), None)));
                    return None;
                }
            };
            if let Err(e) = c.send_partial(b'E', &msg, upto) {
                let _ = tx.send(Err((e, c.close_code())));
                return None;
            }
            let _ = tx.send(Ok(()));
            // Some: the stream was lost while held.
            c.hold(&stop).err()
        }));
    }
    drop(tx);
    let deadline = Instant::now() + REASSEMBLY_SEND_WAIT;
    let (mut sent, mut over_budget, mut failed, mut first_error) = (0u32, 0u32, 0u32, None);
    for _ in 0..REASSEMBLY_SESSIONS {
        match rx.recv_deadline(deadline) {
            Ok(Ok(())) => sent += 1,
            Ok(Err((_, Some(4)))) => over_budget += 1,
            Ok(Err((e, _))) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(_) => break,
        }
    }
    let send_time = Instant::now();
    let held_bytes =
        Metrics::fetch(t.addr).ok().and_then(|m| m.sum("dap_stream_reassembly_bytes", &[]));
    thread::sleep(HOLD.saturating_sub(send_time.elapsed()));
    stop.store(true, Ordering::Relaxed);
    let lost_in_hold =
        threads.into_iter().map(|h| h.join()).filter(|r| !matches!(r, Ok(None))).count();
    let held = (sent as usize).saturating_sub(lost_in_hold);
    let refused =
        Metrics::fetch(t.addr).ok().and_then(|m| m.sum("dap_stream_reassembly_refused_total", &[]));
    let mut detail = format!(
        "{REASSEMBLY_SESSIONS} sessions (127.0.1.1-{REASSEMBLY_SESSIONS}) each started a 16 MiB message on 'E' and sent all \
         but its last KiB: {sent} wrote it all, {over_budget} were closed with code 4 (over budget) while writing, {failed} \
         failed otherwise; {held} still held after {}s (a stream that wrote everything may still be refused once dapd reads \
         it); dapd held {} B in unfinished messages meanwhile and closed {} streams over budget",
        HOLD.as_secs(),
        fmt_metric(held_bytes),
        fmt_metric(refused),
    );
    if let Some(e) = first_error {
        detail.push_str(&format!(" (first failure: {e})"));
    }
    Ok(Outcome {
        detail,
        pairs: vec![
            pair("sessions", REASSEMBLY_SESSIONS),
            pair("sent", sent),
            pair("over_budget", over_budget),
            pair("failed", failed),
            pair("held", held),
            pair("reassembly_bytes", fmt_metric(held_bytes)),
            pair("refused_total", fmt_metric(refused)),
        ],
    })
}

// ---- half_header ---------------------------------------------------------------------

/// Sources of the half-header attack, 127.0.2.1, 127.0.2.2, ...
const HALF_SOURCES: u8 = 16;
/// Connections from each (under `max_connections_per_source`).
const HALF_PER_SOURCE: usize = 1000;
/// What each connection sends: a request head without its blank line.
const HALF_HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n";
/// Longest time to open them all.
const HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(60);

/// As many connections as the limits and both processes' descriptors allow, each with half
/// a request head, held for [`HOLD`] once all are open.
pub fn half_header(t: Target) -> Result<Outcome, String> {
    let ours = procstat::raise_nofile_limit().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    // dapd raised its soft limit to its hard one at start.
    let nofile = subject::nofile_limit(t.pid).map_or(ours, |theirs| theirs.min(ours));
    let fit = (nofile.saturating_sub(FD_RESERVE) / u64::from(HALF_SOURCES)) as usize;
    let per = HALF_PER_SOURCE.min(fit);
    let mut held = Vec::with_capacity(per * usize::from(HALF_SOURCES));
    let (mut connect_failed, mut write_failed) = (0usize, 0usize);
    let t0 = Instant::now();
    let deadline = t0 + HALF_OPEN_TIMEOUT;
    'open: for s in 0..HALF_SOURCES {
        let from = src(2, 1 + s);
        for _ in 0..per {
            if Instant::now() >= deadline {
                break 'open;
            }
            let mut c = match connect_from(from, t.addr) {
                Ok(c) => c,
                Err(_) => {
                    connect_failed += 1;
                    continue;
                }
            };
            match c.write_all(HALF_HEAD) {
                Ok(()) => held.push(c),
                Err(_) => write_failed += 1,
            }
        }
    }
    let open_time = t0.elapsed();
    let m = Metrics::fetch(t.addr).ok();
    let limited = m.as_ref().and_then(|m| m.sum("dap_connections_limited", &[]));
    let refusals = m.as_ref().and_then(|m| m.sum("dap_connection_limit_refusals_total", &[]));
    thread::sleep(HOLD);
    let still_open = held.iter().filter(|c| is_open(c)).count();
    let opened = held.len();
    drop(held);
    Ok(Outcome {
        detail: format!(
            "{opened} connections from {HALF_SOURCES} sources (127.0.2.1-{HALF_SOURCES}, {per} each) sent half a head in {:.1} s \
             ({connect_failed} connects and {write_failed} writes failed); dapd held {} limited connections, refused {} at a limit; \
             {still_open} still open after {}s more",
            open_time.as_secs_f64(),
            fmt_metric(limited),
            fmt_metric(refusals),
            HOLD.as_secs(),
        ),
        pairs: vec![
            pair("conns", opened),
            pair("connect_failed", connect_failed),
            pair("limited", fmt_metric(limited)),
            pair("refusals", fmt_metric(refusals)),
            pair("still_open", still_open),
        ],
    })
}

/// Whether the server has neither closed `c` nor answered on it.
fn is_open(c: &TcpStream) -> bool {
    if c.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(c.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

// ---- pipeline ------------------------------------------------------------------------

/// Connections of the pipelining attack.
const PIPE_CONNS: usize = 400;
/// Connections per source (127.0.3.1, 127.0.3.2, ...).
const PIPE_PER_SOURCE: usize = 100;
/// How long they write.
const PIPE_WRITE: Duration = Duration::from_secs(5);
/// The request, pipelined: `/metrics` answers ~15 KB.
const PIPE_REQUEST: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

/// One pipelining connection.
struct Pipe {
    s: MioStream,
    /// Where the next write starts in the chunk (always at a request boundary modulo
    /// whole requests).
    off: usize,
    alive: bool,
}

/// 400 connections write pipelined `GET /metrics` requests as fast as their sockets take
/// them, never reading an answer, for 5 s; then hold for [`HOLD`] and close.
pub fn pipeline(t: Target) -> Result<Outcome, String> {
    let chunk: Vec<u8> = PIPE_REQUEST.repeat((64 << 10) / PIPE_REQUEST.len());
    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut pipes = Vec::with_capacity(PIPE_CONNS);
    for i in 0..PIPE_CONNS {
        let from = src(3, 1 + (i / PIPE_PER_SOURCE) as u8);
        let c = connect_from(from, t.addr).map_err(|e| format!("connect from {from}: {e}"))?;
        c.set_nonblocking(true).map_err(|e| format!("socket: {e}"))?;
        let mut s = MioStream::from_std(c);
        poll.registry()
            .register(&mut s, Token(i), Interest::WRITABLE)
            .map_err(|e| format!("register: {e}"))?;
        pipes.push(Pipe { s, off: 0, alive: true });
    }
    let mut events = Events::with_capacity(1024);
    let (mut written, mut closed) = (0u64, 0usize);
    let end = Instant::now() + PIPE_WRITE;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        poll.poll(&mut events, Some((end - now).min(Duration::from_millis(100))))
            .map_err(|e| format!("poll: {e}"))?;
        for ev in events.iter() {
            let Some(p) = pipes.get_mut(ev.token().0) else { continue };
            if !p.alive {
                continue;
            }
            // Edge-triggered: write until the socket is full.
            loop {
                match p.s.write(&chunk[p.off..]) {
                    Ok(n) => {
                        written += n as u64;
                        p.off = (p.off + n) % chunk.len();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        p.alive = false;
                        closed += 1;
                        break;
                    }
                }
            }
        }
    }
    thread::sleep(HOLD);
    drop(pipes);
    let requests = written / PIPE_REQUEST.len() as u64;
    Ok(Outcome {
        detail: format!(
            "{PIPE_CONNS} connections ({PIPE_PER_SOURCE} per source from 127.0.3.1) wrote {requests} pipelined GET /metrics \
             ({:.1} MB; most of it waits in the kernel's socket buffers, unread) in {}s without reading an answer, held {}s more; \
             dapd closed {closed} of them meanwhile",
            written as f64 / 1e6,
            PIPE_WRITE.as_secs(),
            HOLD.as_secs(),
        ),
        pairs: vec![
            pair("conns", PIPE_CONNS),
            pair("requests_written", requests),
            pair("closed", closed),
        ],
    })
}

// ---- handshake_flood -----------------------------------------------------------------

/// Handshakes of the flood, all from 127.0.4.1.
const FLOOD_HANDSHAKES: usize = 20_000;
/// The flood gives up after this long (a dapd with `[http] request_rate` makes it wait
/// between requests instead of refusing them: then fewer than [`FLOOD_HANDSHAKES`] go).
const FLOOD_MAX: Duration = Duration::from_secs(15);
/// Keep-alive connections they are spread over.
const FLOOD_CONNS: usize = 4;

/// What the flood's answers were.
#[derive(Debug, Default, Clone, Copy)]
struct FloodCounts {
    ok: u64,
    rate_limited: u64,
    busy: u64,
    other: u64,
    failed: u64,
}

impl FloodCounts {
    fn add(&mut self, o: FloodCounts) {
        self.ok += o.ok;
        self.rate_limited += o.rate_limited;
        self.busy += o.busy;
        self.other += o.other;
        self.failed += o.failed;
    }

    /// Every attempt, whatever came of it.
    fn total(&self) -> u64 {
        self.ok + self.rate_limited + self.busy + self.other + self.failed
    }
}

/// 20,000 `POST /enc_init` from one source as fast as four keep-alive connections go (at
/// most [`FLOOD_MAX`]).
pub fn handshake_flood(t: Target) -> Result<Outcome, String> {
    let (_, body) = EncInit::start(&CipherSuite::ALL, None);
    let req = Arc::new(dapclient::post("/enc_init", &t.addr.to_string(), &[], &body));
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..FLOOD_CONNS)
        .map(|_| {
            let (req, next) = (req.clone(), next.clone());
            thread::spawn(move || {
                let mut n = FloodCounts::default();
                let mut conn: Option<HttpConn> = None;
                while next.fetch_add(1, Ordering::Relaxed) < FLOOD_HANDSHAKES
                    && t0.elapsed() < FLOOD_MAX
                {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match HttpConn::connect_from(src(4, 1), t.addr) {
                            Ok(c) => conn.insert(c),
                            Err(_) => {
                                n.failed += 1;
                                continue;
                            }
                        },
                    };
                    match c.exchange(&req) {
                        Ok(r) => match r.status {
                            200 => n.ok += 1,
                            429 => n.rate_limited += 1,
                            503 => n.busy += 1,
                            _ => n.other += 1,
                        },
                        Err(_) => {
                            n.failed += 1;
                            conn = None;
                        }
                    }
                }
                n
            })
        })
        .collect();
    let mut n = FloodCounts::default();
    for h in threads {
        n.add(h.join().map_err(|_| "a flood thread panicked".to_string())?);
    }
    let secs = t0.elapsed().as_secs_f64();
    let m = Metrics::fetch(t.addr).ok();
    let keys = m.as_ref().and_then(|m| m.sum("dap_enc_keys", &[]));
    Ok(Outcome {
        detail: format!(
            "{} POST /enc_init from 127.0.4.1 over {FLOOD_CONNS} connections in {secs:.1} s ({:.0}/s): \
             {} 200, {} 429 rate-limited, {} 503 busy, {} other, {} failed; dapd then held {} keys (rate {HANDSHAKE_RATE}/s, burst {HANDSHAKE_BURST})",
            n.total(),
            n.total() as f64 / secs,
            n.ok,
            n.rate_limited,
            n.busy,
            n.other,
            n.failed,
            fmt_metric(keys),
            HANDSHAKE_RATE = subject::HANDSHAKE_RATE,
            HANDSHAKE_BURST = subject::HANDSHAKE_BURST,
        ),
        pairs: vec![
            pair("handshakes", n.total()),
            pair("ok", n.ok),
            pair("rate_limited", n.rate_limited),
            pair("busy", n.busy),
            pair("failed", n.failed + n.other),
            pair("keys", fmt_metric(keys)),
        ],
    })
}

// ---- accept_emfile -------------------------------------------------------------------

/// dapd's `RLIMIT_NOFILE` in this attack.
pub const EMFILE_NOFILE: u64 = 1024;
/// Connections opened against it.
const EMFILE_CONNS: usize = 2000;
/// Per source (127.0.5.1, 127.0.5.2): under `max_connections_per_source`.
const EMFILE_PER_SOURCE: usize = 1000;
/// How long connects may take to complete (or not).
const EMFILE_CONNECT_WAIT: Duration = Duration::from_secs(3);

/// 2,000 connections (started at once, without blocking) against a dapd that may open
/// 1,024 files; held for [`HOLD`], then closed.
pub fn accept_emfile(t: Target) -> Result<Outcome, String> {
    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut conns = Vec::with_capacity(EMFILE_CONNS);
    let mut start_failed = 0usize;
    for i in 0..EMFILE_CONNS {
        let from = src(5, 1 + (i / EMFILE_PER_SOURCE) as u8);
        let sock = dapclient::socket_from(from).map_err(|e| format!("socket: {e}"))?;
        sock.set_nonblocking(true).map_err(|e| format!("socket: {e}"))?;
        match sock.connect(&t.addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(_) => {
                start_failed += 1;
                continue;
            }
        }
        let mut s = MioStream::from_std(sock.into());
        poll.registry()
            .register(&mut s, Token(conns.len()), Interest::WRITABLE)
            .map_err(|e| format!("register: {e}"))?;
        conns.push((s, None::<bool>));
    }
    // Each connect ends writable (established) or with an error; some may still be under
    // way (SYNs dropped by a full backlog are retried after 1 s, 3 s, ...).
    let mut events = Events::with_capacity(1024);
    let end = Instant::now() + EMFILE_CONNECT_WAIT;
    let mut decided = 0;
    while decided < conns.len() {
        let now = Instant::now();
        if now >= end {
            break;
        }
        poll.poll(&mut events, Some(end - now)).map_err(|e| format!("poll: {e}"))?;
        for ev in events.iter() {
            let Some((s, state)) = conns.get_mut(ev.token().0) else { continue };
            if state.is_some() {
                continue;
            }
            let ok = matches!(s.take_error(), Ok(None)) && s.peer_addr().is_ok();
            *state = Some(ok);
            decided += 1;
        }
    }
    let established = conns.iter().filter(|(_, st)| *st == Some(true)).count();
    let pending = conns.iter().filter(|(_, st)| st.is_none()).count();
    let failed = start_failed + conns.iter().filter(|(_, st)| *st == Some(false)).count();
    let fds = subject::open_fds(t.pid);
    thread::sleep(HOLD);
    drop(conns);
    Ok(Outcome {
        detail: format!(
            "{EMFILE_CONNS} connects from 127.0.5.1-2 against a dapd limited to {EMFILE_NOFILE} files: \
             {established} established (accepted or in the backlog), {pending} still under way after {}s, {} failed; \
             dapd had {fds} files open; all held {}s",
            EMFILE_CONNECT_WAIT.as_secs(),
            failed,
            HOLD.as_secs(),
        ),
        pairs: vec![
            pair("conns", EMFILE_CONNS),
            pair("established", established),
            pair("pending", pending),
            pair("dapd_fds", fds),
        ],
    })
}
