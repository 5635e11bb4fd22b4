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
//! The run is a warm-up followed by a measured window; both are bounded in time, and the
//! poll timeout never exceeds [`TICK`], so the loop always ends on time even if the server
//! stops answering.

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
    /// In the measured window: record latencies (messages are counted in warm-up too).
    measuring: bool,
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
                        if sink.measuring {
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
    let mut poll = Poll::new()?;
    let mut conns = connect_all(&poll, addr, sc)?;
    let pattern = vec![0xA5u8; sc.msg_size * sc.depth];
    let mut buf = vec![0u8; READ_BUF];
    let mut events = Events::with_capacity(1024);
    let mut sink = Sink { measuring: false, msgs: 0, lat_ns: Vec::new() };

    let start = Instant::now();
    for c in &mut conns {
        for _ in 0..sc.depth {
            c.sent_at.push_back(start);
        }
        c.to_send = sc.msg_size * sc.depth;
        c.flush(&pattern)?;
    }

    let warm_end = start + warmup;
    // (start instant, server CPU, client CPU, CPUs busy) once the measured window is open.
    let mut opened: Option<(Instant, Duration, Duration, Duration)> = None;
    let end = loop {
        let now = Instant::now();
        let deadline = match opened {
            Some((t0, ..)) if now >= t0 + window => break now,
            Some((t0, ..)) => t0 + window,
            None if now >= warm_end => {
                // Open the window. Size the latency log from the warm-up rate so that it
                // does not reallocate while measuring.
                let rate = sink.msgs as f64 / now.duration_since(start).as_secs_f64();
                let expect = (rate * window.as_secs_f64() * 1.5) as usize;
                sink.lat_ns.reserve(expect.clamp(1 << 16, 1 << 26));
                sink.measuring = true;
                sink.msgs = 0;
                let busy = procstat::cpus_busy_time(&BENCH_CPUS)?;
                let srv = procstat::process_cpu_time(server_pid)?;
                let cli = procstat::thread_cpu_time();
                opened = Some((Instant::now(), srv, cli, busy));
                continue;
            }
            None => warm_end,
        };
        let timeout = deadline.saturating_duration_since(now).min(TICK);
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            on_event(c, &mut buf, &pattern, sc.msg_size, &mut sink)?;
        }
    };
    let srv_end = procstat::process_cpu_time(server_pid)?;
    let cli_end = procstat::thread_cpu_time();
    let busy_end = procstat::cpus_busy_time(&BENCH_CPUS)?;
    let (t0, srv0, cli0, busy0) = opened.expect("the loop only ends once the window is open");
    let server_cpu = srv_end.saturating_sub(srv0);
    let client_cpu = cli_end.saturating_sub(cli0);
    drop(conns);

    let (p50, p99) = percentiles(&mut sink.lat_ns);
    Ok(Measurement {
        msgs: sink.msgs,
        wall: end.duration_since(t0),
        p50,
        p99,
        server_cpu,
        client_cpu,
        other_cpu: busy_end
            .saturating_sub(busy0)
            .saturating_sub(server_cpu)
            .saturating_sub(client_cpu),
        msg_size: sc.msg_size,
    })
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
