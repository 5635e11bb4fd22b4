//! `dap-bench udp-sim`: the UDP engine's own ceiling. Two `dap_stream::udp::Connection`s in
//! this process, connected in memory (no sockets, no network: each transmit one end
//! writes is handed to the other at once, a GSO batch as one receive batch, as GRO would
//! deliver it), one channel, encrypted bulk one way; both ends
//! run on one thread, so the figures are for one core doing both sides' work. Reports MB/s
//! of application data and CPU nanoseconds per packet sent, for both ciphers and two
//! datagram sizes (1,452 and 8,952 bytes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dap_net::enc::cipher::CipherSuite;
use dap_stream::session::{SessionLimits, SessionParams, TransportKind};
use dap_stream::transport::Wake;
use dap_stream::udp::connection::{Connection, ConnectionConfig, Incoming, Side};
use dap_stream::udp::mtu::MtuConfig;
use dap_stream::udp::packet::ConnectionId;
use dap_stream::{Channel, ChannelHandler, ChannelProcs, Message, Mux, MuxConfig, SessionInfo};

use crate::report::{fmt_num, median, print_result_line};

/// Options of `dap-bench udp-sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct UdpSimArgs {
    /// Measured time per run, in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub secs: f64,
    /// Rounds; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Run only this cipher, `aes` or `chacha` (for profiling and A/B runs).
    #[arg(long)]
    pub cipher: Option<String>,
    /// Run only this datagram size, 1452 or 8952.
    #[arg(long)]
    pub datagram: Option<usize>,
}

struct NoWake;
impl Wake for NoWake {
    fn wake(&self) {}
}

struct Source(Bytes);
impl ChannelHandler for Source {
    fn on_new(&mut self, ch: &mut Channel<'_>) {
        ch.set_ready_to_write(true);
        self.packet_out(ch);
    }
    fn packet_in(&mut self, _: &mut Channel<'_>, _: Message) {}
    fn packet_out(&mut self, ch: &mut Channel<'_>) {
        while ch.can_write(self.0.len()) {
            if ch.write(0, self.0.clone()).is_err() {
                return;
            }
        }
    }
}

struct Sink(Arc<AtomicU64>);
impl ChannelHandler for Sink {
    fn packet_in(&mut self, _: &mut Channel<'_>, msg: Message) {
        self.0.fetch_add(msg.data.len() as u64, Ordering::Relaxed);
    }
}

fn conn(side: Side, suite: CipherSuite, datagram: usize, counter: &Arc<AtomicU64>) -> Connection {
    let params = SessionParams {
        unreliable: Vec::new(),
        udp: None,
        id: [7; 16],
        suite,
        secret: [8; 32],
        channels: b"S".to_vec(),
        transport: TransportKind::Udp,
        limits: SessionLimits::default(),
        udp_port: 0,
        client: None,
    };
    let mut procs = ChannelProcs::new();
    match side {
        Side::Client => {
            let msg = Bytes::from(vec![0x5a; 64 << 10]);
            procs.ch_proc_add(b'S', move |_| Box::new(Source(msg.clone()))).expect("valid id");
        }
        Side::Server => {
            let c = counter.clone();
            procs.ch_proc_add(b'S', move |_| Box::new(Sink(c.clone()))).expect("valid id");
        }
    }
    let mut mux = Mux::new(
        b"S",
        &procs,
        SessionInfo { session_id: [7; 16], client: None },
        MuxConfig::default(),
    );
    mux.start(Arc::new(NoWake));
    let config =
        ConnectionConfig { mtu: MtuConfig::fixed(datagram), ..ConnectionConfig::default() };
    let (here, there) = addrs(side);
    let _ = here;
    Connection::new(side, &params, ConnectionId([0; 8]), Some(there), mux, config, Instant::now())
}

fn addrs(side: Side) -> (SocketAddr, SocketAddr) {
    let c = SocketAddr::from(([127, 0, 0, 1], 1));
    let s = SocketAddr::from(([127, 0, 0, 1], 2));
    if side == Side::Client { (c, s) } else { (s, c) }
}

/// One run: returns (MB/s, ns of CPU per packet sent by the client).
fn run(suite: CipherSuite, datagram: usize, secs: f64) -> (f64, f64) {
    let received = Arc::new(AtomicU64::new(0));
    let mut client = conn(Side::Client, suite, datagram, &received);
    let mut server = conn(Side::Server, suite, datagram, &received);
    let (ca, sa) = addrs(Side::Client);
    let mut buf = Vec::with_capacity(64 * datagram);
    let start = Instant::now();
    let mut warm = true;
    let mut t0 = start;
    let mut b0 = 0;
    let mut p0 = 0;
    loop {
        let now = Instant::now();
        if warm && now - start > Duration::from_secs_f64(0.5) {
            warm = false;
            t0 = now;
            b0 = received.load(Ordering::Relaxed);
            p0 = client.stats().packets_out;
        }
        if !warm && now - t0 > Duration::from_secs_f64(secs) {
            break;
        }
        // As a driver's loop turn does: one batch out, then what came in.
        let mut moved = false;
        // Each GSO batch reaches the other end as one receive batch, as GRO delivers it.
        if let Some(t) = client.poll_transmit(now, 32, &mut buf) {
            server.handle_datagrams(now, &mut incoming(&mut buf[..t.size], t.segment_size, ca));
            moved = true;
        }
        let now = Instant::now();
        if let Some(t) = server.poll_transmit(now, 32, &mut buf) {
            client.handle_datagrams(now, &mut incoming(&mut buf[..t.size], t.segment_size, sa));
            moved = true;
        }
        for c in [&mut client, &mut server] {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
        }
        if !moved {
            std::hint::spin_loop();
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    if std::env::var_os("DAP_BENCH_DEBUG").is_some() {
        eprintln!(
            "client {:?} window {} rtt {:?} timeout {:?}; server {:?}",
            client.stats(),
            client.window(),
            client.rtt(),
            client.poll_timeout().map(|t| t.saturating_duration_since(Instant::now())),
            server.stats()
        );
    }
    let bytes = received.load(Ordering::Relaxed) - b0;
    let packets = client.stats().packets_out - p0;
    (bytes as f64 / wall / 1e6, wall * 1e9 / packets.max(1) as f64)
}

/// Runs every cipher and datagram size; returns the RESULT pairs.
pub fn run_all(args: &UdpSimArgs) -> Vec<(String, String)> {
    println!(
        "== udp-sim: two dap UDP engines in memory on one thread, one channel, 64 KiB messages, {} s x {} round(s)",
        args.secs, args.rounds
    );
    println!("{:<8} {:>9} {:>10} {:>14}", "cipher", "datagram", "MB/s", "ns/packet");
    let mut pairs = Vec::new();
    for (suite, name) in
        [(CipherSuite::ChaCha20Poly1305, "chacha"), (CipherSuite::Aes256Gcm, "aes")]
    {
        if args.cipher.as_deref().is_some_and(|c| c != name) {
            continue;
        }
        for datagram in [1452usize, 8952] {
            if args.datagram.is_some_and(|d| d != datagram) {
                continue;
            }
            let runs: Vec<(f64, f64)> =
                (0..args.rounds).map(|_| run(suite, datagram, args.secs)).collect();
            let mbs = median(&runs.iter().map(|r| r.0).collect::<Vec<_>>());
            let ns = median(&runs.iter().map(|r| r.1).collect::<Vec<_>>());
            println!("{name:<8} {datagram:>9} {mbs:>10.1} {ns:>14.0}");
            pairs.push((format!("{name}_{datagram}_mbs"), fmt_num(mbs, 1)));
            pairs.push((format!("{name}_{datagram}_ns_per_packet"), fmt_num(ns, 0)));
        }
    }
    print_result_line(&pairs);
    pairs
}

/// The datagrams of one transmit (`segment` bytes each, the last perhaps shorter) from
/// `from`, as a receive batch.
fn incoming(buf: &mut [u8], segment: Option<usize>, from: SocketAddr) -> Vec<Incoming<'_>> {
    let seg = segment.unwrap_or(buf.len()).max(1);
    buf.chunks_mut(seg).map(|data| Incoming { from, ecn: None, data }).collect()
}
