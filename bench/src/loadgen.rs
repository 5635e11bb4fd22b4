//! The echo load generator: one thread, one mio loop, many connections.
//!
//! Each connection keeps `depth` messages in flight. The content of a message does not
//! matter to an echo server, so outgoing bytes come from one shared pattern buffer and a
//! connection only counts how many bytes it still owes the socket; every message that
//! completes (its last byte echoed) queues a new one, and all messages queued by one read go
//! out in one `write` (batching when depth > 1). A FIFO of send instants per connection gives
//! each message's round-trip time. Reads use the short-read trick (a read shorter than the
//! buffer drained the socket), so a round trip costs the client one read and one write.
//!
//! A [`Session`] holds the connections to one server: a warm-up, then measured slices (one
//! window for `load`; many short ones alternating between contenders for `echo`). Every
//! slice is bounded in time, and the poll timeout never exceeds [`TICK`], so the loop always
//! ends on time even if the server stops answering.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::procstat;

/// Longest the loop sleeps in `poll` before looking at the clock again.
const TICK: Duration = Duration::from_millis(50);
/// The CPUs the server and the load generator are pinned to.
const BENCH_CPUS: [usize; 2] = [crate::servers::SERVER_CPU, crate::servers::CLIENT_CPU];
/// Read buffer size; the largest batch in flight on one connection (4 x 64 KiB) fits.
const READ_BUF: usize = 256 * 1024;

/// One load shape.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Short name used in tables and `RESULT` keys.
    pub name: &'static str,
    /// Concurrent connections.
    pub conns: usize,
    /// Bytes per message.
    pub msg_size: usize,
    /// Messages in flight per connection.
    pub depth: usize,
}

/// The three echo scenarios, in the order they run.
pub const SCENARIOS: [Scenario; 3] = [
    Scenario { name: "d1", conns: 64, msg_size: 64, depth: 1 },
    Scenario { name: "d16", conns: 64, msg_size: 64, depth: 16 },
    Scenario { name: "big", conns: 4, msg_size: 64 * 1024, depth: 4 },
];

/// What one measured window produced.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Messages whose echo completed inside the window.
    pub msgs: u64,
    /// Length of the window.
    pub wall: Duration,
    /// Median round-trip time.
    pub p50: Duration,
    /// 99th-percentile round-trip time.
    pub p99: Duration,
    /// Server CPU time (all threads, user + system) spent in the window.
    pub server_cpu: Duration,
    /// Load generator CPU time spent in the window.
    pub client_cpu: Duration,
    /// Busy time of the two benchmark CPUs in the window not accounted to the server or the
    /// load generator: other processes competing with the run (and interrupt time).
    pub other_cpu: Duration,
    /// Bytes per message.
    pub msg_size: usize,
}

impl Measurement {
    /// Messages per second.
    pub fn msgs_per_sec(&self) -> f64 {
        self.msgs as f64 / self.wall.as_secs_f64()
    }

    /// Payload echoed per second, in MB (10^6 bytes).
    pub fn mb_per_sec(&self) -> f64 {
        self.msgs_per_sec() * self.msg_size as f64 / 1e6
    }

    /// Server CPU nanoseconds per message.
    pub fn server_ns_per_msg(&self) -> f64 {
        per_msg_ns(self.server_cpu, self.msgs)
    }

    /// Client CPU nanoseconds per message.
    pub fn client_ns_per_msg(&self) -> f64 {
        per_msg_ns(self.client_cpu, self.msgs)
    }

    /// Server CPU use over the window, in percent of one CPU.
    pub fn server_cpu_pct(&self) -> f64 {
        100.0 * self.server_cpu.as_secs_f64() / self.wall.as_secs_f64()
    }

    /// Client CPU use over the window, in percent of one CPU.
    pub fn client_cpu_pct(&self) -> f64 {
        100.0 * self.client_cpu.as_secs_f64() / self.wall.as_secs_f64()
    }

    /// Foreign CPU use on the benchmark CPUs over the window, in percent of one CPU.
    pub fn other_cpu_pct(&self) -> f64 {
        100.0 * self.other_cpu.as_secs_f64() / self.wall.as_secs_f64()
    }
}

fn per_msg_ns(cpu: Duration, msgs: u64) -> f64 {
    if msgs == 0 { f64::NAN } else { cpu.as_nanos() as f64 / msgs as f64 }
}

struct Conn {
    stream: TcpStream,
    /// Bytes of queued messages not yet accepted by the socket.
    to_send: usize,
    /// Bytes of the message currently being received.
    rx_partial: usize,
    /// When each in-flight message was queued, oldest first.
    sent_at: VecDeque<Instant>,
    written: u64,
    received: u64,
}

impl Conn {
    fn flush(&mut self, pattern: &[u8]) -> io::Result<()> {
        while self.to_send > 0 {
            let k = self.to_send.min(pattern.len());
            match self.stream.write(&pattern[..k]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_send -= n;
                    self.written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Where the loop records completed messages.
struct Sink {
    /// While measuring: the slice's start. Latencies are recorded for messages sent since
    /// then (messages are counted in warm-up too).
    record_after: Option<Instant>,
    msgs: u64,
    lat_ns: Vec<u32>,
}

/// Reads everything available on `c`, completes messages, queues their replacements, writes.
fn on_event(
    c: &mut Conn,
    buf: &mut [u8],
    pattern: &[u8],
    msg: usize,
    sink: &mut Sink,
) -> io::Result<()> {
    loop {
        match c.stream.read(buf) {
            Ok(0) => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed"));
            }
            Ok(n) => {
                c.received += n as u64;
                if c.received > c.written {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "server echoed more bytes than were sent",
                    ));
                }
                c.rx_partial += n;
                if c.rx_partial >= msg {
                    let now = Instant::now();
                    while c.rx_partial >= msg {
                        c.rx_partial -= msg;
                        let sent = c.sent_at.pop_front().unwrap_or(now);
                        if sink.record_after.is_some_and(|t0| sent >= t0) {
                            let ns = now.duration_since(sent).as_nanos();
                            sink.lat_ns.push(u32::try_from(ns).unwrap_or(u32::MAX));
                        }
                        sink.msgs += 1;
                        c.sent_at.push_back(now);
                        c.to_send += msg;
                    }
                }
                if n < buf.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    c.flush(pattern)
}

fn connect_all(poll: &Poll, addr: SocketAddr, sc: &Scenario) -> io::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(sc.conns);
    for i in 0..sc.conns {
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(s);
        poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        conns.push(Conn {
            stream,
            to_send: 0,
            rx_partial: 0,
            sent_at: VecDeque::with_capacity(sc.depth + 1),
            written: 0,
            received: 0,
        });
    }
    Ok(conns)
}

/// Runs `sc` against the echo server at `addr` (process `server_pid`): `warmup`, then a
/// measured window of `window`.
pub fn run(
    addr: SocketAddr,
    server_pid: u32,
    sc: &Scenario,
    warmup: Duration,
    window: Duration,
) -> io::Result<Measurement> {
    let mut s = Session::open(addr, server_pid, sc)?;
    s.warm_up(warmup)?;
    let slice = s.measure(window)?;
    s.keep(&slice);
    Ok(s.finish())
}

/// One measured slice of a [`Session`].
#[derive(Debug, Clone)]
pub struct Slice {
    /// Messages completed in the slice.
    pub msgs: u64,
    /// Its length.
    pub wall: Duration,
    /// Server process CPU time in it.
    pub server_cpu: Duration,
    /// Load generator CPU time in it.
    pub client_cpu: Duration,
    /// Busy time of the benchmark CPUs not accounted to the server or the load generator.
    pub other_cpu: Duration,
    /// Length of the latency log before the slice.
    lat_len: usize,
}

impl Slice {
    /// Foreign CPU use on the benchmark CPUs over the slice, in percent of one CPU.
    pub fn other_cpu_pct(&self) -> f64 {
        100.0 * self.other_cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }
}

/// The load generator's connections to one server, kept open across measured slices.
///
/// `echo` opens one session per contender and measures them in short alternating slices
/// (A B C, B C A, ...), so that slow drift of the shared machine hits all contenders alike.
/// Between slices a session's connections sit idle; their in-flight messages complete in
/// the kernel's buffers and are read at the start of the session's next slice, where they
/// count as completed messages (at most `conns x depth` of them, a negligible share of a
/// slice) but give no latency sample (their wait includes the pause).
pub struct Session {
    poll: Poll,
    conns: Vec<Conn>,
    pattern: Vec<u8>,
    buf: Vec<u8>,
    events: Events,
    sink: Sink,
    server_pid: u32,
    msg_size: usize,
    /// Measured so far: messages, wall time, server / client / other CPU.
    msgs: u64,
    wall: Duration,
    server_cpu: Duration,
    client_cpu: Duration,
    other_cpu: Duration,
    /// Completed messages per second of the last warm-up, to size the latency log.
    warm_rate: f64,
}

impl Session {
    /// Connects `sc.conns` connections and puts `sc.depth` messages in flight on each.
    pub fn open(addr: SocketAddr, server_pid: u32, sc: &Scenario) -> io::Result<Session> {
        let poll = Poll::new()?;
        let mut conns = connect_all(&poll, addr, sc)?;
        let pattern = vec![0xA5u8; sc.msg_size * sc.depth];
        let now = Instant::now();
        for c in &mut conns {
            for _ in 0..sc.depth {
                c.sent_at.push_back(now);
            }
            c.to_send = sc.msg_size * sc.depth;
            c.flush(&pattern)?;
        }
        Ok(Session {
            poll,
            conns,
            pattern,
            buf: vec![0u8; READ_BUF],
            events: Events::with_capacity(1024),
            sink: Sink { record_after: None, msgs: 0, lat_ns: Vec::new() },
            server_pid,
            msg_size: sc.msg_size,
            msgs: 0,
            wall: Duration::ZERO,
            server_cpu: Duration::ZERO,
            client_cpu: Duration::ZERO,
            other_cpu: Duration::ZERO,
            warm_rate: 0.0,
        })
    }

    /// Drives the connections for `d` without measuring.
    pub fn warm_up(&mut self, d: Duration) -> io::Result<()> {
        self.sink.record_after = None;
        self.sink.msgs = 0;
        let t0 = Instant::now();
        self.drive(t0 + d)?;
        let took = t0.elapsed().as_secs_f64();
        if took > 0.0 {
            self.warm_rate = self.sink.msgs as f64 / took;
        }
        Ok(())
    }

    /// Drives the connections for a measured slice of `d`; [`Session::keep`] adds it to the
    /// totals, [`Session::discard`] drops it (with its latency samples).
    pub fn measure(&mut self, d: Duration) -> io::Result<Slice> {
        if self.sink.lat_ns.capacity() == 0 {
            // Size the latency log from the warm-up rate so that it rarely reallocates.
            let expect = (self.warm_rate * d.as_secs_f64() * 1.5) as usize;
            self.sink.lat_ns.reserve(expect.clamp(1 << 16, 1 << 26));
        }
        let lat_len = self.sink.lat_ns.len();
        self.sink.msgs = 0;
        let busy0 = procstat::cpus_busy_time(&BENCH_CPUS)?;
        let srv0 = procstat::process_cpu_time(self.server_pid)?;
        let cli0 = procstat::thread_cpu_time();
        let t0 = Instant::now();
        self.sink.record_after = Some(t0);
        let driven = self.drive(t0 + d);
        self.sink.record_after = None;
        driven?;
        let t1 = Instant::now();
        let server_cpu = procstat::process_cpu_time(self.server_pid)?.saturating_sub(srv0);
        let client_cpu = procstat::thread_cpu_time().saturating_sub(cli0);
        let busy = procstat::cpus_busy_time(&BENCH_CPUS)?.saturating_sub(busy0);
        Ok(Slice {
            msgs: self.sink.msgs,
            wall: t1.duration_since(t0),
            server_cpu,
            client_cpu,
            other_cpu: busy.saturating_sub(server_cpu).saturating_sub(client_cpu),
            lat_len,
        })
    }

    /// Adds a measured slice to the totals.
    pub fn keep(&mut self, s: &Slice) {
        self.msgs += s.msgs;
        self.wall += s.wall;
        self.server_cpu += s.server_cpu;
        self.client_cpu += s.client_cpu;
        self.other_cpu += s.other_cpu;
    }

    /// Drops the last measured slice, latency samples included.
    pub fn discard(&mut self, s: &Slice) {
        self.sink.lat_ns.truncate(s.lat_len);
    }

    /// Polls and serves the connections until `end` (the poll timeout never exceeds
    /// [`TICK`], so this returns on time even if the server stops answering).
    fn drive(&mut self, end: Instant) -> io::Result<()> {
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            let timeout = end.saturating_duration_since(now).min(TICK);
            if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in self.events.iter() {
                let c = &mut self.conns[ev.token().0];
                on_event(c, &mut self.buf, &self.pattern, self.msg_size, &mut self.sink)?;
            }
        }
    }

    /// The totals of every measured slice.
    pub fn finish(mut self) -> Measurement {
        let (p50, p99) = percentiles(&mut self.sink.lat_ns);
        Measurement {
            msgs: self.msgs,
            wall: self.wall,
            p50,
            p99,
            server_cpu: self.server_cpu,
            client_cpu: self.client_cpu,
            other_cpu: self.other_cpu,
            msg_size: self.msg_size,
        }
    }
}

/// p50 and p99 of the recorded round-trip times (zero when nothing was recorded).
fn percentiles(lat_ns: &mut [u32]) -> (Duration, Duration) {
    if lat_ns.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let mut pick = |q: f64| {
        let idx = ((lat_ns.len() - 1) as f64 * q).round() as usize;
        let (_, v, _) = lat_ns.select_nth_unstable(idx);
        Duration::from_nanos(u64::from(*v))
    };
    let p50 = pick(0.50);
    let p99 = pick(0.99);
    (p50, p99)
}
