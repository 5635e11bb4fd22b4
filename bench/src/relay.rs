//! A lossy UDP relay for `dap-bench udp-loss`: one socket on one thread between a client and
//! a server, dropping each datagram with a given probability, independently per datagram
//! and per direction (a seeded PRNG per direction, so a run's drop pattern is repeatable).
//!
//! # How it works
//!
//! The relay is one UDP socket on `127.0.0.1`, run by a one-worker dap reactor, unpinned
//! (the benchmark's server is pinned to CPU 0 and its client to CPU 1; the relay takes time
//! wherever the scheduler finds it). It tells the two sides apart by source: a datagram from
//! the server's address goes to the client, anything else comes from the client (whose
//! address is the latest such source) and goes to the server. Nothing is reordered,
//! delayed or altered; the ECN codepoint is passed on.
//!
//! The reactor reads with `recvmmsg` and `UDP_GRO` and hands over one datagram at a time
//! (the runs the kernel coalesced split back), and sends with `UDP_SEGMENT` (GSO): the
//! relay re-joins consecutive kept datagrams of the same size into one send. Loss is
//! decided per datagram, so a GSO batch from a sender is thinned datagram by datagram, as a
//! lossy link would do it. The offloads are there only so that the relay keeps up: with
//! them off (`recvmmsg` and `sendmmsg`, a datagram at a time through the kernel's UDP
//! path) it forwarded 350 MB/s (0.24 M datagrams/s) in the measurement below, less than
//! either contender moves without it.
//!
//! The socket's buffers are as large as the system allows (`net.core.rmem_max`, 4 MiB
//! here), so that the relay drops what its PRNG says and nothing else; kernel drops on any
//! UDP socket are counted apart ([`udp_rcvbuf_errors`]) and reported by `udp-loss`.
//!
//! # What the relay alone forwards
//!
//! [`measure_alone`] blasts 1,452-byte datagrams in 64-datagram GSO batches from a thread on
//! CPU 1 through the relay at 0 % loss to a `UDP_GRO` sink on CPU 0, the placement of the
//! real runs, and counts what arrives. `dap-bench udp-loss` prints that figure before its
//! table (`relay_alone_mbs` in its `RESULT`). On the 2-core development VM (Xeon; short
//! helper runs while another process kept one CPU busy at nice 10, to be replaced by the
//! lead's measurement) it forwarded 2,230–2,900 MB/s (1.5–2.0 M datagrams/s), against
//! 240–560 MB/s moved by either contender through it at 0 % loss in the same session, and
//! 1,100–1,600 MB/s moved directly on a quiet machine (`dap-bench udp`, session 8): the
//! relay is not the bottleneck. It does take CPU from the two ends (there are only two
//! cores), so the sweep's 0 % row is below `dap-bench udp`'s figures; the comparison is
//! between contenders on the same relay.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dap_reactor::{Datagrams, Ecn, Esocket, Handler, Reactor, UdpOptions, UdpTransmit};

use crate::bulk::{Window, measure, one_worker_reactor};
use crate::procstat;
use crate::servers::{CLIENT_CPU, SERVER_CPU};

/// How much a relay drops, and the seed of its drop pattern.
#[derive(Debug, Clone, Copy)]
pub struct Loss {
    /// Fraction of datagrams dropped in each direction, 0.0 to 1.0.
    pub fraction: f64,
    /// Seed of the PRNGs (client → server uses it as is, server → client a mix of it).
    pub seed: u64,
}

/// What a relay did; index 0 is client → server, 1 server → client.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelayStats {
    /// Datagrams passed on.
    pub forwarded: [u64; 2],
    /// Datagrams dropped on purpose.
    pub dropped: [u64; 2],
    /// Datagrams the socket refused to send (its queue full): lost as well.
    pub send_failed: u64,
    /// Datagrams from the server before the client's first: nowhere to send them.
    pub unroutable: u64,
}

impl RelayStats {
    /// The share of datagrams dropped on purpose, both directions together, in %.
    pub fn dropped_pct(&self) -> f64 {
        let d = (self.dropped[0] + self.dropped[1]) as f64;
        let all = d + (self.forwarded[0] + self.forwarded[1]) as f64;
        if all > 0.0 { 100.0 * d / all } else { f64::NAN }
    }
}

#[derive(Default)]
struct Counters {
    forwarded: [AtomicU64; 2],
    dropped: [AtomicU64; 2],
    send_failed: AtomicU64,
    unroutable: AtomicU64,
}

/// SplitMix64: small, fast, and good enough to decide drops.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The PRNG value below which a datagram is dropped, for a loss `fraction` (0.0 to 1.0).
fn drop_threshold(fraction: f64) -> u64 {
    let f = fraction.clamp(0.0, 1.0);
    // 2^64 as f64; the cast saturates at 1.0 (u64::MAX drops all but one value in 2^64).
    (f * 18_446_744_073_709_551_616.0) as u64
}

/// Most datagrams re-joined into one GSO send (the reactor's own limit is 64).
const MAX_RUN: usize = 64;
/// Most bytes in one send.
const MAX_RUN_BYTES: usize = 65_000;

/// Kept datagrams waiting to leave as one GSO send: all to `to`, all `seg` bytes but
/// possibly the last.
struct Run {
    to: SocketAddr,
    dir: usize,
    ecn: Ecn,
    seg: usize,
    count: usize,
    /// The last datagram was shorter than `seg`: nothing may follow it in this send.
    closed: bool,
}

/// The relay's socket handler.
struct RelayHandler {
    server: SocketAddr,
    client: Option<SocketAddr>,
    /// Drop when the PRNG's next value is below this (`fraction * 2^64`).
    threshold: u64,
    rng: [SplitMix; 2],
    out: Vec<u8>,
    run: Option<Run>,
    /// Counted locally and published once per batch.
    local: RelayStats,
    counters: Arc<Counters>,
}

impl RelayHandler {
    fn flush(&mut self, es: &mut Esocket<'_>) {
        let Some(run) = self.run.take() else { return };
        let mut tx = UdpTransmit::new(run.to, &self.out).with_ecn(run.ecn);
        if run.count > 1 {
            tx = tx.with_segment_size(run.seg);
        }
        match es.send_batch(&tx) {
            Ok(()) => self.local.forwarded[run.dir] += run.count as u64,
            Err(_) => self.local.send_failed += run.count as u64,
        }
        self.out.clear();
    }

    fn push(&mut self, es: &mut Esocket<'_>, to: SocketAddr, dir: usize, ecn: Ecn, data: &[u8]) {
        let fits = self.run.as_ref().is_some_and(|r| {
            r.to == to
                && r.ecn == ecn
                && !r.closed
                && data.len() <= r.seg
                && r.count < MAX_RUN
                && self.out.len() + data.len() <= MAX_RUN_BYTES
        });
        if !fits {
            self.flush(es);
            self.run = Some(Run { to, dir, ecn, seg: data.len(), count: 0, closed: false });
        }
        let run = self.run.as_mut().expect("a run was just started");
        run.count += 1;
        // An empty datagram cannot be a segment: it leaves on its own.
        run.closed = data.len() < run.seg || data.is_empty();
        self.out.extend_from_slice(data);
    }

    fn publish(&mut self) {
        let c = &self.counters;
        let l = std::mem::take(&mut self.local);
        for d in 0..2 {
            c.forwarded[d].fetch_add(l.forwarded[d], Ordering::Relaxed);
            c.dropped[d].fetch_add(l.dropped[d], Ordering::Relaxed);
        }
        c.send_failed.fetch_add(l.send_failed, Ordering::Relaxed);
        c.unroutable.fetch_add(l.unroutable, Ordering::Relaxed);
    }
}

impl Handler for RelayHandler {
    fn on_datagrams(&mut self, es: &mut Esocket<'_>, batch: &mut Datagrams<'_>) {
        for d in batch.iter() {
            let (dir, to) = if d.from == self.server {
                match self.client {
                    Some(c) => (1, c),
                    None => {
                        self.local.unroutable += 1;
                        continue;
                    }
                }
            } else {
                self.client = Some(d.from);
                (0, self.server)
            };
            if self.rng[dir].next() < self.threshold {
                self.local.dropped[dir] += 1;
                continue;
            }
            self.push(es, to, dir, d.ecn, d.data);
        }
        self.flush(es);
        self.publish();
    }
}

/// A relay in front of a server, with its own reactor thread.
pub struct Relay {
    reactor: Reactor,
    addr: SocketAddr,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// The largest socket buffer to ask for; the kernel caps it at `net.core.[rw]mem_max`.
const SOCKET_BUFFER: usize = 16 << 20;

/// A UDP socket on an ephemeral loopback port with buffers as large as allowed.
fn big_socket() -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let r = socket2::SockRef::from(&sock);
    let _ = r.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = r.set_send_buffer_size(SOCKET_BUFFER);
    Ok(sock)
}

impl Relay {
    /// Starts a relay to `server` dropping as `loss` says; clients send to [`addr`](Self::addr).
    ///
    /// # Errors
    /// The socket or the reactor could not be set up (bounded: 10 s).
    pub fn start(server: SocketAddr, loss: Loss) -> io::Result<Relay> {
        let sock = big_socket()?;
        let addr = sock.local_addr()?;
        let reactor = Reactor::builder().threads(1).name("bench-relay").pin(false).start()?;
        let counters = Arc::new(Counters::default());
        let threshold = drop_threshold(loss.fraction);
        let handler = RelayHandler {
            server,
            client: None,
            threshold,
            rng: [SplitMix(loss.seed), SplitMix(loss.seed ^ 0x5851_f42d_4c95_7f2d)],
            out: Vec::with_capacity(MAX_RUN_BYTES + 2048),
            run: None,
            local: RelayStats::default(),
            counters: counters.clone(),
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let worker = reactor.worker(0).ok_or_else(|| io::Error::other("relay: no worker"))?;
        worker
            .exec(move |ctx| {
                let _ = tx.send(ctx.add_udp_with(sock, UdpOptions::default(), Box::new(handler)));
            })
            .map_err(|e| io::Error::other(format!("relay worker: {e:?}")))?;
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(_)) => Ok(Relay { reactor, addr, counters }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other("relay: the worker did not take its socket")),
        }
    }

    /// Where clients send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it did so far.
    pub fn stats(&self) -> RelayStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RelayStats {
            forwarded: [l(&c.forwarded[0]), l(&c.forwarded[1])],
            dropped: [l(&c.dropped[0]), l(&c.dropped[1])],
            send_failed: l(&c.send_failed),
            unroutable: l(&c.unroutable),
        }
    }

    /// Stops it (bounded) and returns what it did.
    pub fn stop(self) -> RelayStats {
        let s = self.stats();
        self.reactor.shutdown(Duration::from_secs(5));
        s
    }
}

/// `RcvbufErrors` of the `Udp:` line of `/proc/net/snmp`: datagrams the kernel dropped
/// because a UDP socket's receive buffer was full, on any socket of this network namespace.
pub fn udp_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Datagram size of the blast (the bulk benchmarks' datagram).
const BLAST_DATAGRAM: usize = 1452;
/// Datagrams per GSO send of the blast (44 x 1,452 bytes: the most under 64 KiB).
const BLAST_BATCH: usize = 44;

/// Sends `buf` to `to` as datagrams of `seg` bytes in one `sendmsg` with `UDP_SEGMENT`.
fn send_gso(sock: &UdpSocket, to: SocketAddr, buf: &[u8], seg: u16) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(to) = to else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "IPv4 only"));
    };
    let name = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*to.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let mut iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // Room for one control message with a u16, 8-byte aligned.
    let mut ctrl = [0u64; 4];
    // SAFETY: all-zeroes is a valid `msghdr` (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&name as *const libc::sockaddr_in).cast_mut().cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.as_mut_ptr().cast();
    // SAFETY: `CMSG_SPACE` is arithmetic on its argument.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(2) } as _;
    // SAFETY: `msg_control` points to `ctrl`, 32 bytes, 8-byte aligned, more than
    // `CMSG_SPACE(2)`; so the first header and its 2 data bytes lie inside `ctrl`.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
    }
    // SAFETY: `msg` points to `name`, `iov` (over `buf`) and `ctrl`, all alive and of the
    // lengths given, for the duration of the call; the kernel only reads them.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Sends GSO batches of [`BLAST_DATAGRAM`]-byte datagrams to `to` until `stop`, as fast as
/// the socket takes them (one datagram per send where the kernel has no GSO).
fn blast(to: SocketAddr, stop: &AtomicBool) -> io::Result<()> {
    let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    sock.set_write_timeout(Some(Duration::from_millis(100)))?;
    let buf = vec![0x5a; BLAST_DATAGRAM * BLAST_BATCH];
    let mut gso = true;
    while !stop.load(Ordering::Relaxed) {
        let r = if gso {
            send_gso(&sock, to, &buf, BLAST_DATAGRAM as u16)
        } else {
            sock.send_to(&buf[..BLAST_DATAGRAM], to)
        };
        match r {
            Ok(_) => {}
            Err(e) if gso && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) => {
                gso = false;
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The sink: counts the bytes of every datagram.
struct Count(Arc<AtomicU64>);

impl Handler for Count {
    fn on_datagrams(&mut self, _: &mut Esocket<'_>, batch: &mut Datagrams<'_>) {
        let n: usize = batch.iter().map(|d| d.data.len()).sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// What the relay alone forwards at 0 % loss: a blast from CPU 1 through it to a sink on
/// CPU 0, counted at the sink over `secs` after `warmup`. Returns the window (its count in
/// bytes) and what the relay did.
///
/// # Errors
/// A socket, thread or reactor could not be set up.
pub fn measure_alone(warmup: f64, secs: f64) -> io::Result<(Window, RelayStats)> {
    let received = Arc::new(AtomicU64::new(0));
    let sink = one_worker_reactor(SERVER_CPU, "bench-sink")?;
    let sock = big_socket()?;
    let sink_addr = sock.local_addr()?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    let r = received.clone();
    sink.worker(0)
        .ok_or_else(|| io::Error::other("sink: no worker"))?
        .exec(move |ctx| {
            let _ = tx.send(ctx.add_udp_with(sock, UdpOptions::default(), Box::new(Count(r))));
        })
        .map_err(|e| io::Error::other(format!("sink worker: {e:?}")))?;
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|_| io::Error::other("sink: the worker did not take its socket"))??;
    let relay = Relay::start(sink_addr, Loss { fraction: 0.0, seed: 0 })?;
    let stop = Arc::new(AtomicBool::new(false));
    let (to, st) = (relay.addr(), stop.clone());
    let pin = procstat::can_pin_two_cpus();
    let blaster = std::thread::spawn(move || -> io::Result<()> {
        if pin {
            procstat::pin_current_thread(CLIENT_CPU)?;
        }
        blast(to, &st)
    });
    let res = measure(&received, warmup, secs);
    stop.store(true, Ordering::Relaxed);
    // The blaster sees `stop` within its 100 ms write timeout.
    let joined = join_bounded(blaster, Duration::from_secs(5));
    let stats = relay.stop();
    sink.shutdown(Duration::from_secs(5));
    joined??;
    Ok((res?, stats))
}

/// Joins `t`, waiting at most `limit` (a thread still running then is left behind).
///
/// # Errors
/// The thread panicked or did not end in time.
pub fn join_bounded<T>(t: std::thread::JoinHandle<T>, limit: Duration) -> io::Result<T> {
    let until = Instant::now() + limit;
    while !t.is_finished() {
        if Instant::now() >= until {
            return Err(io::Error::other("a thread did not stop in time"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    t.join().map_err(|_| io::Error::other("a thread panicked"))
}

#[cfg(test)]
mod tests {
    use super::{SplitMix, drop_threshold};

    #[test]
    fn drops_the_fraction_asked() {
        for (fraction, n) in [(0.0, 0u64), (0.01, 10_000), (0.10, 100_000)] {
            let t = drop_threshold(fraction);
            let mut rng = SplitMix(7);
            let dropped = (0..1_000_000).filter(|_| rng.next() < t).count() as u64;
            // Within 5 % of the expectation (binomial: several standard deviations).
            assert!(dropped.abs_diff(n) <= n / 20, "{fraction}: {dropped}");
        }
        assert_eq!(drop_threshold(1.0), u64::MAX);
    }
}
