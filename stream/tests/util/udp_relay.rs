//! A user-space UDP impairment relay (this kernel has no netem): datagrams between one
//! client and a server cross it, each direction losing, duplicating and reordering them at
//! set rates, from a seeded generator. `rebind` moves the relay's server-facing side to a
//! new source port, as a NAT that forgets its mapping does: what the server sends to the
//! old port is lost from then on.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

/// Impairment of one direction.
#[derive(Clone, Copy, Debug)]
pub struct Impair {
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is sent twice.
    pub duplicate: f64,
    /// Probability a datagram is held back and sent after the next one.
    pub reorder: f64,
}

/// What the relay did.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub forwarded: AtomicU64,
    pub lost: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
    /// Datagrams the server sent to a port the relay had left.
    pub stale: AtomicU64,
}

pub struct UdpRelay {
    /// Where the client sends.
    pub addr: SocketAddr,
    upstream: Arc<RwLock<Arc<UdpSocket>>>,
    stop: Arc<AtomicBool>,
    pub stats: Arc<RelayStats>,
}

struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Sends `d` to `to` through `sock`, impaired; `held` is the datagram waiting to be
/// reordered behind the next one.
fn pass(
    sock: &UdpSocket,
    to: SocketAddr,
    d: &[u8],
    imp: Impair,
    rng: &mut Rng,
    held: &mut Option<Vec<u8>>,
    stats: &RelayStats,
) {
    if rng.uniform() < imp.loss {
        stats.lost.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if held.is_none() && rng.uniform() < imp.reorder {
        stats.reordered.fetch_add(1, Ordering::Relaxed);
        *held = Some(d.to_vec());
        return;
    }
    let copies = if rng.uniform() < imp.duplicate { 2 } else { 1 };
    stats.duplicated.fetch_add(copies - 1, Ordering::Relaxed);
    for _ in 0..copies {
        let _ = sock.send_to(d, to);
        stats.forwarded.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(h) = held.take() {
        let _ = sock.send_to(&h, to);
        stats.forwarded.fetch_add(1, Ordering::Relaxed);
    }
}

fn bind() -> Arc<UdpSocket> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    Arc::new(s)
}

impl UdpRelay {
    /// A relay to `server`, impairing each direction as given.
    pub fn start(server: SocketAddr, c2s: Impair, s2c: Impair, seed: u64) -> UdpRelay {
        let front = bind();
        let addr = front.local_addr().unwrap();
        let upstream = Arc::new(RwLock::new(bind()));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(RelayStats::default());
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        {
            let (front, upstream, stop, stats, client) =
                (front.clone(), upstream.clone(), stop.clone(), stats.clone(), client.clone());
            std::thread::spawn(move || {
                let (mut rng, mut held, mut buf) = (Rng(seed | 1), None, vec![0u8; 65_536]);
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = front.recv_from(&mut buf) else { continue };
                    *client.lock() = Some(from);
                    let up = upstream.read().clone();
                    pass(&up, server, &buf[..n], c2s, &mut rng, &mut held, &stats);
                }
            });
        }
        {
            let (upstream, stop, stats) = (upstream.clone(), stop.clone(), stats.clone());
            std::thread::spawn(move || {
                let mut rng = Rng((seed ^ 0x9e37_79b9) | 1);
                let (mut held, mut buf) = (None, vec![0u8; 65_536]);
                while !stop.load(Ordering::Relaxed) {
                    let up = upstream.read().clone();
                    let Ok((n, _)) = up.recv_from(&mut buf) else { continue };
                    if !Arc::ptr_eq(&up, &upstream.read()) {
                        // The mapping moved on: this went to the old port.
                        stats.stale.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let Some(to) = *client.lock() else { continue };
                    pass(&front, to, &buf[..n], s2c, &mut rng, &mut held, &stats);
                }
            });
        }
        UdpRelay { addr, upstream, stop, stats }
    }

    /// The server-facing side moves to a new source port (NAT rebinding).
    pub fn rebind(&self) {
        *self.upstream.write() = bind();
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
