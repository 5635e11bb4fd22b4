//! The legitimate client: one stream session from 127.0.0.2 through the real handshake,
//! doing 64-byte echo round trips on channel `E`, one every half millisecond, timing each.
//! A failed round trip is counted and the client sets its session up again.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use crate::dapclient::{self, StreamClient};

/// Where the legitimate client comes from.
pub const SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// The pause between two round trips: a client with work to do, not a load generator, so
/// that its own CPU use does not decide the figures.
const PACE: Duration = Duration::from_micros(500);
/// The echoed message.
const MESSAGE_LEN: usize = 64;
/// After a failed set-up, the pause before the next try.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Longest wait for the idle round trips, and for the signal to go on under attack.
const PHASE_WAIT: Duration = Duration::from_secs(120);

/// The legitimate client, on a thread of its own (a session's channel handlers stay on the
/// thread that made them): first a number of round trips on the idle node, then round trips
/// until told to stop.
pub struct Legit {
    idle: Receiver<Result<Vec<Duration>, String>>,
    go: Option<Sender<()>>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Run>,
}

/// What the client saw while an attack ran.
#[derive(Debug, Default)]
pub struct Run {
    /// The time of every successful round trip.
    pub rtts: Vec<Duration>,
    /// Failed round trips and failed set-ups.
    pub errors: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
}

/// The client's own state, on its thread.
struct Client {
    addr: SocketAddr,
    node_key: [u8; 32],
    msg: Bytes,
}

impl Legit {
    /// Sets up a session with the node at `addr` (pinning `node_key`) from [`SOURCE`], and
    /// does `idle_round_trips` round trips ([`idle`](Self::idle) has them); then waits for
    /// [`go`](Self::go).
    pub fn start(addr: SocketAddr, node_key: [u8; 32], idle_round_trips: usize) -> Legit {
        let (idle_tx, idle) = crossbeam_channel::bounded(1);
        let (go, go_rx) = crossbeam_channel::bounded(1);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::spawn(move || {
            let c = Client { addr, node_key, msg: Bytes::from(vec![b'l'; MESSAGE_LEN]) };
            c.main(idle_round_trips, &idle_tx, &go_rx, &s)
        });
        Legit { idle, go: Some(go), stop, thread }
    }

    /// The idle round trips' times (waits for them, bounded).
    ///
    /// # Errors
    /// The set-up or a round trip failed (on an idle node, a failure of the run).
    pub fn idle(&self) -> Result<Vec<Duration>, String> {
        self.idle
            .recv_timeout(PHASE_WAIT)
            .map_err(|_| "the legitimate client's idle round trips timed out".to_string())?
    }

    /// Goes on with round trips until [`finish`](Self::finish).
    pub fn go(&mut self) {
        if let Some(go) = self.go.take() {
            let _ = go.send(());
        }
    }

    /// Stops the round trips; what the client saw since [`go`](Self::go).
    pub fn finish(mut self) -> Run {
        self.stop.store(true, Ordering::Relaxed);
        // Not started: dropping the sender lets the thread end.
        self.go = None;
        self.thread.join().unwrap_or_default()
    }
}

impl Client {
    fn connect(&self) -> Result<StreamClient, String> {
        let (conn, params) =
            dapclient::open_session_from(SOURCE, self.addr, self.node_key, b"E", None)?;
        Ok(StreamClient::new(conn, &params))
    }

    fn main(
        &self,
        idle_round_trips: usize,
        idle: &Sender<Result<Vec<Duration>, String>>,
        go: &Receiver<()>,
        stop: &AtomicBool,
    ) -> Run {
        let first = self.connect().and_then(|mut c| {
            let mut rtts = Vec::with_capacity(idle_round_trips);
            for i in 0..idle_round_trips {
                let t = Instant::now();
                c.echo_each(b"E", &self.msg).map_err(|e| format!("idle round trip {i}: {e}"))?;
                rtts.push(t.elapsed());
                thread::sleep(PACE);
            }
            Ok((c, rtts))
        });
        let mut client = match first {
            Ok((c, rtts)) => {
                let _ = idle.send(Ok(rtts));
                Some(c)
            }
            Err(e) => {
                let _ = idle.send(Err(e));
                return Run::default();
            }
        };
        if go.recv_timeout(PHASE_WAIT).is_err() {
            return Run::default();
        }
        let mut run = Run { rtts: Vec::with_capacity(1 << 16), ..Run::default() };
        let fail = |run: &mut Run, e: String| {
            run.errors += 1;
            run.first_error.get_or_insert(e);
        };
        while !stop.load(Ordering::Relaxed) {
            let Some(c) = client.as_mut() else {
                match self.connect() {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        fail(&mut run, format!("set-up: {e}"));
                        thread::sleep(RETRY_PAUSE);
                    }
                }
                continue;
            };
            let t = Instant::now();
            match c.echo_each(b"E", &self.msg) {
                Ok(()) => run.rtts.push(t.elapsed()),
                Err(e) => {
                    fail(&mut run, format!("echo: {e}"));
                    client = None;
                }
            }
            thread::sleep(PACE);
        }
        run
    }
}

/// The `p`-th percentile (0..=100, nearest rank) of `v`, in microseconds; NaN when empty.
pub fn percentile_us(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s: Vec<Duration> = v.to_vec();
    s.sort_unstable();
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1].as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile_us(&v, 50.0), 50.0);
        assert_eq!(percentile_us(&v, 99.0), 99.0);
        assert_eq!(percentile_us(&v[..1], 99.0), 1.0);
        assert!(percentile_us(&[], 50.0).is_nan());
    }
}
