//! One set-up run of `cluster`: client threads each doing full session set-ups back to
//! back (`POST /enc_init`, `POST /stream_ctl`, `GET /stream/E` → `101`, one echo round
//! trip; over UDP the first datagram carries the echoed message), every step on one node
//! or each step on another.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Usage, percentiles_us};
use crate::dapclient::{self, StreamClient};

/// Bytes of the echo round trip that ends each set-up.
const ECHO_BYTES: usize = 64;

/// Where the steps of a set-up go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    /// Every step on one node, over one keep-alive connection (as a client with one
    /// address does).
    One,
    /// Every step on one node, each on its own connection: [`Spread::Across`]'s
    /// connections without its cluster hops (the control).
    OneThreeConns,
    /// enc_init on one node, stream_ctl on the next, the stream on the third, each on its
    /// own connection.
    Across,
    /// Over UDP, every step on one node: enc_init and stream_ctl on one connection, then
    /// the first datagram (carrying the echoed message) to the node's UDP port.
    OneUdp,
    /// Over UDP, enc_init on one node, stream_ctl on the next (a connection each), the
    /// first datagram to the third's UDP port (as a UDP load balancer in front of the
    /// nodes would send it): that node takes the session from Redis.
    AcrossUdp,
}

impl Spread {
    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Spread::One => "one",
            Spread::OneThreeConns => "one-3conn",
            Spread::Across => "spread",
            Spread::OneUdp => "udp-one",
            Spread::AcrossUdp => "udp-spread",
        }
    }
}

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The nodes: address and node key.
    pub nodes: Vec<(SocketAddr, [u8; 32])>,
    /// Where the steps go.
    pub spread: Spread,
    /// Client threads, each doing one set-up at a time.
    pub clients: usize,
    /// Set-ups before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub secs: Duration,
    /// Processes whose CPU time is the run's own.
    pub pids: Vec<u32>,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Set-ups completed within the window, per second.
    pub per_s: f64,
    /// Latency of those set-ups (first connect to the echo back): p50, p99 (µs).
    pub p50_us: f64,
    /// See [`p50_us`](Self::p50_us).
    pub p99_us: f64,
    /// Set-ups that failed (the whole run).
    pub failed: u64,
    /// The first failure's text.
    pub first_error: Option<String>,
    /// CPU use over the window.
    pub usage: Usage,
}

/// What the client threads record: each set-up's end and length (ns since the run's
/// base), failures.
#[derive(Default)]
struct Log {
    done: Vec<(u64, u64)>,
    failed: u64,
    first_error: Option<String>,
}

/// One set-up by client `i`: thread `i` starts at node `i mod n`, so that every node
/// takes a share of each step in every case.
fn one_setup(plan: &Plan, i: usize, echo: &Bytes) -> Result<(), String> {
    let n = plan.nodes.len();
    let at = |k: usize| plan.nodes[(i + k) % n];
    // A node's UDP port is its listener's (`[udp] addr` left empty).
    let (conn, params) = match plan.spread {
        Spread::One => dapclient::open_session(at(0).0, at(0).1, b"E", None)?,
        Spread::OneThreeConns => dapclient::open_session_across([at(0).0; 3], at(0).1, b"E", None)?,
        Spread::Across => {
            dapclient::open_session_across([at(0).0, at(1).0, at(2).0], at(0).1, b"E", None)?
        }
        Spread::OneUdp => {
            let p = dapclient::open_udp_session([at(0).0; 2], at(0).1, b"E", None)?;
            return dapclient::udp_echo(&p, at(0).0, b'E', echo);
        }
        Spread::AcrossUdp => {
            let p = dapclient::open_udp_session([at(0).0, at(1).0], at(0).1, b"E", None)?;
            return dapclient::udp_echo(&p, at(2).0, b'E', echo);
        }
    };
    StreamClient::new(conn, &params).echo_each(b"E", echo)
}

/// One run: `plan.clients` threads doing set-ups until the window ends.
pub fn run(plan: &Plan) -> Result<Outcome, String> {
    if plan.nodes.is_empty() {
        return Err("no nodes".to_string());
    }
    let base = Instant::now();
    let measure_from = base + plan.warmup;
    let measure_to = measure_from + plan.secs;
    let log = Arc::new(Mutex::new(Log::default()));
    let echo = Bytes::from(vec![0x5a; ECHO_BYTES]);
    let mut threads = Vec::with_capacity(plan.clients);
    for i in 0..plan.clients {
        let (plan, log, echo) = (plan.clone(), log.clone(), echo.clone());
        let t = thread::Builder::new().name(format!("cluster-setup-{i}")).spawn(move || {
            let mut mine = Log::default();
            while Instant::now() < measure_to {
                let start = Instant::now();
                match one_setup(&plan, i, &echo) {
                    Ok(()) => {
                        let end = base.elapsed().as_nanos() as u64;
                        mine.done.push((end, start.elapsed().as_nanos() as u64));
                    }
                    Err(e) => {
                        mine.failed += 1;
                        mine.first_error.get_or_insert(e);
                        // A refusal comes back at once: do not spin on it.
                        thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            let mut all = log.lock().unwrap_or_else(|p| p.into_inner());
            all.done.extend(mine.done);
            all.failed += mine.failed;
            if all.first_error.is_none() {
                all.first_error = mine.first_error;
            }
        });
        threads.push(t.map_err(|e| format!("thread: {e}"))?);
    }
    let usage = Usage::over(&plan.pids, measure_from, measure_to);
    for t in threads {
        t.join().map_err(|_| "a client thread panicked".to_string())?;
    }
    let log = std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()));
    let from_ns = measure_from.duration_since(base).as_nanos() as u64;
    let to_ns = measure_to.duration_since(base).as_nanos() as u64;
    let mut lat: Vec<u64> =
        log.done.iter().filter(|(end, _)| (from_ns..to_ns).contains(end)).map(|d| d.1).collect();
    let per_s = lat.len() as f64 / plan.secs.as_secs_f64();
    let (p50_us, p99_us) = percentiles_us(&mut lat);
    Ok(Outcome {
        per_s,
        p50_us,
        p99_us,
        failed: log.failed,
        first_error: log.first_error,
        usage: usage?,
    })
}
