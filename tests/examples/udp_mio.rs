//! An external event loop: dap's UDP engine driven from a plain [mio] loop with its own
//! socket and no dap-reactor, echoing through channel `'E'` against dapd.
//!
//! ```text
//! cargo run --release -p dap-server --bin dapd        # logs its node key
//! cargo run -p dap-tests --example udp_mio -- --node-key=KEY --messages 100 127.0.0.1:8079
//! ```
//!
//! It gets a session as every client does: `POST /enc_init` (the handshake, `PROTOCOL.md`
//! §3), then `POST /stream_ctl` sealed under the new key, asking for transport UDP (§4, §5).
//! Both go over a blocking `std::net::TcpStream`, one request per connection, built and read
//! by dap-net's sans-IO pieces ([`init_request`], [`call_request`], [`ResponseParser`]). The
//! answer names the UDP port, the host and a connection id; from there on it is one thread,
//! one [`mio::Poll`], one [`mio::net::UdpSocket`] and the engine's [`Connection`]. It sends
//! `--messages` messages of 1 B to 300 KB on `'E'`, checks that each echo is, byte for byte,
//! what was sent, closes with CLOSE and exits 0. Any failure exits 1 with the reason.
//!
//! # The engine in a loop of your own
//!
//! [`Connection`] is sans-IO, like quinn-proto: it owns no socket and reads no clock. The
//! loop owns both, passes `now` to every call, and each turn does:
//!
//! 1. **Input.** Read the socket until `WouldBlock` and give each datagram to
//!    `handle_datagram_ecn(now, from, ecn, &mut datagram)`. It is opened in place and
//!    acknowledged, and its channel data is reassembled and handed to the channel handlers
//!    (`ChannelHandler::packet_in` runs inside this call, on this thread).
//! 2. **Timers.** Once the instant of `poll_timeout()` has passed, call `handle_timeout(now)`.
//!    Loss detection and probe timeouts, delayed ACKs, the pacer, keepalives, the idle
//!    timeout and the end of the closing period all hang on this one timer.
//! 3. **Application.** Write to channels: on this thread with
//!    `mux().with_channel(id, |ch| ch.write(..))`, as here, or from any thread through a
//!    [`ChannelHandle`](dap_stream::ChannelHandle), which calls the [`Wake`] given to
//!    `mux().start(..)`. Here that is a [`mio::Waker`]: the loop wakes up and flushes.
//! 4. **Output.** Call `poll_transmit(now, max_segments, &mut buf)` until it returns
//!    `None`, sending each [`Transmit`] it writes: one datagram, or a GSO batch of
//!    `segment_size`-byte datagrams (the last may be shorter). `None` means nothing to send
//!    *now* (nothing to say, the congestion window is full, or the pacer holds back); there
//!    is no need to ask again before the next input, timer or write.
//! 5. **Events.** Drain `poll_event()`: `Connected` (the first authentic packet from the
//!    server; the session is attached), `Migrated`, and last `Closed(reason)`.
//! 6. **Sleep** until the socket is readable, the waker fires, or `poll_timeout()` comes,
//!    whichever is first.
//!
//! # The same in other loops
//!
//! Only a readable socket (1), the timer (2) and the waker are events; 3 to 6 follow each.
//!
//! - **libevent**, as picoquic documents its use there: an `EV_READ | EV_PERSIST` event on
//!   the socket whose callback reads until `EAGAIN`, one timer event re-armed with
//!   `evtimer_add` to `poll_timeout() - now` after every flush, and `event_active` on a
//!   user event from [`Wake`] (thread-safe once `evthread_use_pthreads` was called).
//! - **tokio**: a task that owns the `Connection` and `select!`s over `socket.recv_from`,
//!   `sleep_until(poll_timeout)` and a `Notify` that [`Wake`] signals; the flush awaits
//!   `send_to`.
//! - **LSQUIC, picoquic, quinn-proto** split the work the same way: `handle_datagram_ecn`
//!   is `lsquic_engine_packet_in`, `picoquic_incoming_packet_ex`, `Endpoint::handle`;
//!   `poll_transmit` is LSQUIC's `ea_packets_out` callback (its engine owns no sockets
//!   either) and `picoquic_prepare_next_packet_ex`; `poll_timeout` with `handle_timeout`
//!   is `lsquic_engine_earliest_adv_tick` with `lsquic_engine_process_conns`, and
//!   `picoquic_get_next_wake_delay`.
//! - **dap-reactor** (`dap_stream::transport::udp`): a UDP esocket's `on_datagrams` is 1,
//!   its deadline (`Esocket::set_deadline`) is 2, and its flush is 4 to 6.
//!
//! # What a plain socket leaves out
//!
//! What dap's own driver on the reactor does and this loop does not:
//! - **GSO and GRO.** A batch goes out as one `send_to` per segment (plain `sendto` is fine
//!   for an example); asking for batches still saves engine work per call. With
//!   `UDP_SEGMENT` one `sendmsg` sends the whole batch.
//! - **ECN.** mio neither sets nor reads the ECN bits of the IP header, so ECN is off in
//!   the configuration and datagrams are fed with `ecn: None`. It takes `IP_TOS` /
//!   `IP_RECVTOS` ancillary data.
//! - **Path MTU discovery.** Probes must leave with don't-fragment set
//!   (`IP_PMTUDISC_PROBE`), which std and mio do not expose: without it a probe too large
//!   for the path is fragmented and seems to pass. The datagram size is therefore fixed at
//!   the 1,200 bytes every path carries.
//! - **A full send buffer.** When `send_to` answers `WouldBlock`, the rest of that
//!   transmit is lost: the engine already counts it in flight, and loss recovery sends the
//!   data again as after a loss on the path. The loop then stops flushing until mio says
//!   the socket is writable.
//! - **Socket buffers.** The kernel's defaults (about 208 KiB on Linux) are kept: a burst
//!   larger than a receive buffer is dropped there and recovered by the engine. A driver
//!   that expects large windows raises `SO_RCVBUF` and `SO_SNDBUF` (socket2 sets them).
//! - **Falling back.** dap-client's `Transport::Auto` moves to the HTTP stream when UDP
//!   brings no authenticated answer; this example gives up with an error.
//!
//! [`init_request`]: dap_net::enc::client::init_request
//! [`call_request`]: dap_net::enc::client::call_request

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dap_net::enc::CipherSuite;
use dap_net::enc::client::{
    HandshakeError, call_request, finish_init, init_request, read_response,
};
use dap_net::http::client::{
    ClientConfig, ClientError, Parsed, Request, Response, ResponseParseError, ResponseParser,
};
use dap_stream::client::{CtlError, ctl_call, read_ctl_answer, udp_server_addr};
use dap_stream::echo::ECHO;
use dap_stream::session::ctl::CtlRequest;
use dap_stream::session::{SessionParams, TransportKind};
use dap_stream::transport::{CloseCode, Wake};
use dap_stream::udp::connection::{
    CloseReason, ConnStats, Connection, ConnectionConfig, Event, Side, Transmit,
};
use dap_stream::udp::mtu::MtuConfig;
use dap_stream::udp::packet::ConnectionId;
use dap_stream::{
    Channel, ChannelHandler, ChannelProcs, Message, Mux, MuxConfig, SessionInfo, WriteError,
};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};

/// The socket's token.
const SOCKET: Token = Token(0);
/// The waker's token: a [`ChannelHandle`](dap_stream::ChannelHandle) write on another thread.
const WAKER: Token = Token(1);
/// Datagrams `poll_transmit` may put in one batch.
const MAX_SEGMENTS: usize = 16;
/// Datagrams read in one turn, so that a flood cannot hold back output and timers.
const READ_BATCH: usize = 64;
/// The largest UDP payload: a datagram is never cut short on the way into the buffer.
const MAX_DATAGRAM: usize = 65_535;

/// What to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// dapd's HTTP address (an IP address and port: names are not resolved here).
    pub http: SocketAddr,
    /// The node key to pin (dapd logs it at start); `None` trusts whatever node answers.
    pub node_key: Option<[u8; 32]>,
    /// Messages to send and see echoed.
    pub messages: usize,
    /// Bound of every wait: each HTTP exchange, the first answer over UDP, the time between
    /// two echoes, and the closing.
    pub timeout: Duration,
}

/// What it did.
#[derive(Clone, Debug)]
pub struct Report {
    /// The local UDP address.
    pub local: SocketAddr,
    /// Where the session's datagrams went.
    pub server: SocketAddr,
    /// enc_init and stream_ctl together.
    pub setup: Duration,
    /// From the connection's creation to the first authentic answer.
    pub connected_after: Duration,
    /// Messages echoed, each checked byte for byte.
    pub messages: usize,
    /// Bytes of messages, each way.
    pub bytes: u64,
    /// From the connection's creation to the last echo.
    pub echo_time: Duration,
    /// The engine's counters.
    pub stats: ConnStats,
    /// The smoothed RTT at the end.
    pub rtt: Duration,
    /// Datagrams sent with `send_to`.
    pub datagrams_out: u64,
    /// Datagrams read with `recv_from`.
    pub datagrams_in: u64,
    /// Datagrams lost to a full send buffer (`WouldBlock`).
    pub send_dropped: u64,
    /// How the connection ended.
    pub close: CloseReason,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket call failed.
    #[error("{what}: {source}")]
    Io {
        /// The call.
        what: &'static str,
        /// Its error.
        source: io::Error,
    },
    /// An HTTP request could not be built.
    #[error("HTTP request: {0}")]
    Request(#[from] ClientError),
    /// An HTTP response did not parse.
    #[error("HTTP response: {0}")]
    Response(#[from] ResponseParseError),
    /// enc_init failed (refused, or a node key other than the pinned one).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// stream_ctl failed (refused: 406 when the node serves no UDP).
    #[error(transparent)]
    StreamCtl(#[from] CtlError),
    /// The stream_ctl answer cannot be used over UDP.
    #[error("the stream_ctl answer: {0}")]
    Route(String),
    /// No authentic datagram came back: UDP may be filtered on the way.
    #[error("no authenticated answer over UDP from {server} within {timeout:?}")]
    NoAnswer {
        /// Where the datagrams went.
        server: SocketAddr,
        /// How long it waited.
        timeout: Duration,
    },
    /// Nothing moved for `timeout`.
    #[error("nothing moved for {timeout:?} while {what}")]
    Stalled {
        /// What it was waiting for.
        what: String,
        /// How long.
        timeout: Duration,
    },
    /// An echo differs from the message sent.
    #[error(
        "echo {index} differs from what was sent: {got} bytes of type {got_ty} back, {sent} \
         bytes of type {sent_ty} sent"
    )]
    Mismatch {
        /// The message's index.
        index: usize,
        /// Its length.
        sent: usize,
        /// Its type.
        sent_ty: u8,
        /// The echo's length.
        got: usize,
        /// The echo's type.
        got_ty: u8,
    },
    /// The channel refused a message.
    #[error("writing on channel 'E': {0}")]
    Write(#[from] WriteError),
    /// The connection ended before every echo came back.
    #[error("the connection closed early: {0:?}")]
    Closed(CloseReason),
}

/// Wraps an I/O error with the call that failed.
fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Gets a UDP session from dapd at `opts.http`, echoes `opts.messages` messages through
/// channel `'E'` from a mio loop, and closes.
///
/// # Errors
/// [`Error`]: the set-up was refused, the node is not the pinned one, UDP brought no
/// answer, an echo differs, or a wait ran out.
pub fn run(opts: &Options) -> Result<Report, Error> {
    let start = Instant::now();
    let params = udp_session(opts)?;
    echo_over_udp(opts, &params, start.elapsed())
}

// ---- The session: enc_init and stream_ctl over blocking HTTP ---------------------------

/// `POST /enc_init`, then `POST /stream_ctl` for channel `'E'` over UDP, sealed under the
/// key the first made.
fn udp_session(opts: &Options) -> Result<SessionParams, Error> {
    let base = format!("http://{}", opts.http);
    let (init, req) = init_request(&base, &CipherSuite::ALL, None)?;
    let resp = http_exchange(&req, opts.timeout)?;
    let enc = finish_init(init, &resp, opts.node_key)?;

    let ctl = CtlRequest {
        channels: vec![ECHO],
        suite: None,
        transport: TransportKind::Udp,
        unreliable: Vec::new(),
    }
    .encode();
    let (req, sealed) = call_request(&base, &enc, &ctl_call(&ctl)).map_err(CtlError::from)?;
    let resp = http_exchange(&req, opts.timeout)?;
    let answer = read_response(&enc, &sealed, resp).map_err(CtlError::from)?;
    Ok(read_ctl_answer(answer.status, &answer.body, MuxConfig::default())?)
}

/// One HTTP request on a fresh blocking TCP connection (dap-net's requests say
/// `Connection: close`), every step bounded by `timeout`; the response is read by the
/// same sans-IO parser dap's own HTTP client uses.
fn http_exchange(req: &Request, timeout: Duration) -> Result<Response, Error> {
    let addr = req.addr().expect("the URL is built from an address");
    let deadline = Instant::now() + timeout;
    let mut tcp = TcpStream::connect_timeout(&addr, timeout).map_err(io_err("HTTP connect"))?;
    tcp.set_write_timeout(Some(timeout)).map_err(io_err("HTTP set_write_timeout"))?;
    tcp.write_all(&req.encode_head()).map_err(io_err("HTTP write"))?;
    tcp.write_all(req.body()).map_err(io_err("HTTP write"))?;
    let mut parser = ResponseParser::new(req.method(), &ClientConfig::default());
    let mut chunk = [0u8; 16 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Io { what: "HTTP read", source: io::ErrorKind::TimedOut.into() });
        }
        tcp.set_read_timeout(Some(left)).map_err(io_err("HTTP set_read_timeout"))?;
        let n = tcp.read(&mut chunk).map_err(io_err("HTTP read"))?;
        if n == 0 {
            return Ok(parser.finish()?);
        }
        if let Parsed::Complete { response, .. } = parser.feed(&chunk[..n])? {
            return Ok(response);
        }
    }
}

// ---- The application: messages on 'E' and their echoes --------------------------------

/// Message sizes, in turn: around one datagram (1,200 bytes), one mux frame (16 KiB), one
/// channel window (256 KiB), and larger than the window.
const SIZES: [usize; 10] = [1, 7, 100, 1_150, 1_201, 16_384, 16_385, 65_536, 262_144, 300_000];

/// Message `i`: its type and bytes, from a generator seeded by `i`, so that every message
/// differs and an echo can be checked without keeping what was sent.
fn message(i: usize) -> (u8, Vec<u8>) {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let data = (0..SIZES[i % SIZES.len()])
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    (1 + (i % 250) as u8, data)
}

/// Channel `'E'`'s handler: hands each echo to the loop. It runs inside
/// `handle_datagram_ecn`, on the loop's thread.
struct Inbox(mpsc::Sender<Message>);

impl ChannelHandler for Inbox {
    fn packet_in(&mut self, _: &mut Channel<'_>, msg: Message) {
        let _ = self.0.send(msg);
    }
}

/// The messages sent and the echoes checked.
struct Echoes {
    total: usize,
    sent: usize,
    received: usize,
    bytes: u64,
    inbox: mpsc::Receiver<Message>,
}

impl Echoes {
    fn done(&self) -> bool {
        self.received == self.total
    }

    /// Queues messages on `'E'` while the channel takes them. Its send queue is bounded, so
    /// a full one waits for the peer's credit; the next turn tries again.
    fn queue(&mut self, mux: &mut Mux) -> Result<(), Error> {
        while self.sent < self.total {
            let i = self.sent;
            let took = mux.with_channel(ECHO, |ch| {
                if !ch.can_write(SIZES[i % SIZES.len()]) {
                    return Ok(false);
                }
                let (ty, data) = message(i);
                ch.write(ty, data).map(|()| true)
            });
            match took {
                Some(Ok(true)) => self.sent += 1,
                Some(Ok(false)) => break,
                Some(Err(e)) => return Err(e.into()),
                // The session has ended: its `Closed` event says why.
                None => break,
            }
        }
        Ok(())
    }

    /// Checks the echoes that arrived; returns whether any did.
    fn check(&mut self) -> Result<bool, Error> {
        let mut any = false;
        while let Ok(msg) = self.inbox.try_recv() {
            let index = self.received;
            let (ty, data) = message(index);
            if index >= self.sent || msg.ty != ty || msg.data != data {
                return Err(Error::Mismatch {
                    index,
                    sent: data.len(),
                    sent_ty: ty,
                    got: msg.data.len(),
                    got_ty: msg.ty,
                });
            }
            self.bytes += data.len() as u64;
            self.received += 1;
            any = true;
        }
        Ok(any)
    }
}

// ---- The driver: one mio poll, one UDP socket, the engine ------------------------------

/// Tells the loop that a channel handle queued a message (from any thread).
struct MioWake(Waker);

impl Wake for MioWake {
    fn wake(&self) {
        // Fails only if the poll is gone, and then there is no loop left to wake.
        let _ = self.0.wake();
    }
}

/// The loop's I/O: everything here is mechanical; the engine decides.
struct Driver {
    poll: Poll,
    events: Events,
    sock: UdpSocket,
    conn: Connection,
    /// Transmit buffer, reused.
    buf: Vec<u8>,
    /// Receive buffer.
    rx: Vec<u8>,
    /// The socket may hold datagrams not read yet. mio is edge-triggered: after a readable
    /// event it says nothing more until the socket was drained to `WouldBlock`.
    readable: bool,
    /// The socket's send buffer has room, as far as we know (cleared at `WouldBlock`, set
    /// again by mio's writable event).
    writable: bool,
    datagrams_out: u64,
    datagrams_in: u64,
    send_dropped: u64,
}

impl Driver {
    /// Step 1: feeds up to [`READ_BATCH`] datagrams to the engine.
    fn read(&mut self, now: Instant) -> Result<(), Error> {
        for _ in 0..READ_BATCH {
            match self.sock.recv_from(&mut self.rx) {
                Ok((n, from)) => {
                    self.datagrams_in += 1;
                    // Junk, or datagrams of another connection, are refused (counted in the
                    // stats) by the engine, never trusted: it authenticates every packet.
                    self.conn.handle_datagram_ecn(now, from, None, &mut self.rx[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("recv_from")(e)),
            }
        }
        Ok(())
    }

    /// Step 4: sends what the engine has, until it has nothing more now or the socket's
    /// send buffer is full.
    fn flush(&mut self, now: Instant) -> Result<(), Error> {
        while self.writable {
            let Some(t) = self.conn.poll_transmit(now, MAX_SEGMENTS, &mut self.buf) else {
                break;
            };
            self.send(&t)?;
        }
        Ok(())
    }

    /// Sends one transmit: a GSO batch as separate datagrams cut at `segment_size`.
    fn send(&mut self, t: &Transmit) -> Result<(), Error> {
        let segment = t.segment_size.unwrap_or(t.size);
        let count = t.size.div_ceil(segment) as u64;
        for (k, datagram) in self.buf[..t.size].chunks(segment).enumerate() {
            match self.sock.send_to(datagram, t.destination) {
                Ok(_) => self.datagrams_out += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Lost, as far as the engine knows: it recovers them like any loss.
                    self.send_dropped += count - k as u64;
                    self.writable = false;
                    return Ok(());
                }
                Err(e) => return Err(io_err("send_to")(e)),
            }
        }
        Ok(())
    }

    /// Step 6: sleeps until the socket or the waker has news, the engine's timer is due, or
    /// `give_up`; at once while datagrams are left to read.
    fn wait(&mut self, give_up: Instant) -> Result<(), Error> {
        let until = self.conn.poll_timeout().map_or(give_up, |t| t.min(give_up));
        let mut timeout = until.saturating_duration_since(Instant::now());
        if self.readable {
            timeout = Duration::ZERO;
        } else if !self.writable {
            // A due ACK or packet cannot leave a full send buffer, and only sending clears
            // its timer: wait for mio's writable event (or a millisecond), don't spin.
            timeout = timeout.max(Duration::from_millis(1));
        }
        // mio rounds a wait under a millisecond up to one (epoll's unit), so a pacing delay
        // never becomes a busy loop either.
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(io_err("poll")(e)),
        }
        for ev in self.events.iter() {
            if ev.token() == SOCKET {
                self.readable |= ev.is_readable();
                self.writable |= ev.is_writable();
            }
            // WAKER: nothing to read; the next turn's flush takes what the handle queued.
        }
        Ok(())
    }
}

/// The connection's settings: the session's limits, as `dap_stream::client::udp_connect_on`
/// sets them, and what a plain socket cannot do turned off (see the module docs).
fn connection_config(params: &SessionParams) -> ConnectionConfig {
    ConnectionConfig {
        idle_timeout: params.limits.idle_timeout,
        keepalive: params.limits.keepalive,
        rekey_packets: params.limits.rekey_packets,
        ecn: false,
        mtu: MtuConfig::fixed(MtuConfig::default().base),
        ..ConnectionConfig::default()
    }
}

/// The UDP part: the engine's connection on a socket of our own, the echoes, the close.
fn echo_over_udp(opts: &Options, params: &SessionParams, setup: Duration) -> Result<Report, Error> {
    let route = params.udp.as_ref().ok_or_else(|| {
        Error::Route("no connection id: the node did not give the session UDP".into())
    })?;
    let server = udp_server_addr(params, opts.http).map_err(Error::Route)?;
    let bind: SocketAddr = if server.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let poll = Poll::new().map_err(io_err("mio Poll::new"))?;
    let mut sock = UdpSocket::bind(bind).map_err(io_err("UDP bind"))?;
    let local = sock.local_addr().map_err(io_err("UDP local_addr"))?;
    poll.registry()
        .register(&mut sock, SOCKET, Interest::READABLE | Interest::WRITABLE)
        .map_err(io_err("mio register"))?;
    let waker = Waker::new(poll.registry(), WAKER).map_err(io_err("mio Waker::new"))?;

    let (tx, inbox) = mpsc::channel();
    let mut procs = ChannelProcs::new();
    procs.ch_proc_add(ECHO, move |_| Box::new(Inbox(tx.clone()))).expect("'E' is a valid id");
    let info = SessionInfo { session_id: params.id, client: None };
    let mux = Mux::new(&params.channels, &procs, info, params.limits.mux);
    let created = Instant::now();
    let cid = ConnectionId(route.cid);
    let config = connection_config(params);
    let mut conn = Connection::new(Side::Client, params, cid, Some(server), mux, config, created);
    // After `Connection::new` (which sets up unreliable channels): every handler's `on_new`
    // runs now, and handle writes will wake the poll.
    conn.mux().start(Arc::new(MioWake(waker)));

    let mut d = Driver {
        poll,
        events: Events::with_capacity(16),
        sock,
        conn,
        buf: Vec::with_capacity(MAX_SEGMENTS * 1500),
        rx: vec![0; MAX_DATAGRAM],
        readable: false,
        writable: true,
        datagrams_out: 0,
        datagrams_in: 0,
        send_dropped: 0,
    };
    let mut echoes = Echoes { total: opts.messages, sent: 0, received: 0, bytes: 0, inbox };
    let mut connected_after = None;
    let mut echo_time = Duration::ZERO;
    let mut closing = false;
    // The last time something moved: the start, the first answer, an echo, the close.
    let mut progress = created;
    loop {
        let now = Instant::now();
        // 1. Input (the client speaks first: its first flush below sends the first packet).
        if d.readable {
            d.read(now)?;
        }
        // 2. Timers.
        if d.conn.poll_timeout().is_some_and(|t| t <= now) {
            d.conn.handle_timeout(now);
        }
        // 3. The application: echoes that input delivered, then more messages, or the close.
        if echoes.check()? {
            progress = now;
        }
        if !closing {
            echoes.queue(d.conn.mux())?;
            if echoes.done() {
                echo_time = now - created;
                d.conn.close(now, CloseCode::Normal as u16);
                closing = true;
                progress = now;
            }
        }
        // 4. Output.
        d.flush(now)?;
        // 5. Events.
        while let Some(ev) = d.conn.poll_event() {
            match ev {
                Event::Connected => {
                    connected_after = Some(now - created);
                    progress = now;
                }
                // The server answered from a new address, now validated: the engine sends
                // there from now on.
                Event::Migrated(_) => {}
                Event::Closed(close) if echoes.done() => {
                    return Ok(Report {
                        local,
                        server,
                        setup,
                        connected_after: connected_after.unwrap_or_default(),
                        messages: echoes.received,
                        bytes: echoes.bytes,
                        echo_time,
                        stats: d.conn.stats(),
                        rtt: d.conn.rtt().get(),
                        datagrams_out: d.datagrams_out,
                        datagrams_in: d.datagrams_in,
                        send_dropped: d.send_dropped,
                        close,
                    });
                }
                Event::Closed(close) => return Err(Error::Closed(close)),
            }
        }
        // 6. Sleep, never past `give_up`.
        let give_up = progress + opts.timeout;
        if now >= give_up {
            return Err(match (connected_after, closing) {
                (None, _) => Error::NoAnswer { server, timeout: opts.timeout },
                (Some(_), false) => Error::Stalled {
                    what: format!("waiting for echo {} of {}", echoes.received + 1, echoes.total),
                    timeout: opts.timeout,
                },
                (Some(_), true) => Error::Stalled { what: "closing".into(), timeout: opts.timeout },
            });
        }
        d.wait(give_up)?;
    }
}

// ---- The command line ------------------------------------------------------------------

const USAGE: &str = "usage: udp_mio [--node-key=KEY] [--messages N] [--timeout SECS] [HOST:PORT]
  HOST:PORT     dapd's HTTP address, an IP address (default 127.0.0.1:8079)
  --node-key    the node key dapd logs at start (base64url); without it any node is trusted
  --messages    messages to echo through channel 'E' (default 100)
  --timeout     seconds any one wait may take (default 10)";

fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut opts = Options {
        http: SocketAddr::from((Ipv4Addr::LOCALHOST, 8079)),
        node_key: None,
        messages: 100,
        timeout: Duration::from_secs(10),
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        // `--name=value` or `--name value` (a base64 key may begin with '-': use '=').
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value =
            || inline.clone().or_else(|| args.next()).ok_or(format!("{name} needs a value"));
        match name.as_str() {
            "--node-key" => {
                let v = value()?;
                let key = dap_net::enc::keys::public_key_from_base64(v.trim())
                    .ok_or(format!("--node-key {v:?} is not a base64url key"))?;
                opts.node_key = Some(key);
            }
            "--messages" => {
                opts.messages = value()?.parse().map_err(|e| format!("--messages: {e}"))?;
            }
            "--timeout" => {
                let secs: f64 = value()?.parse().map_err(|e| format!("--timeout: {e}"))?;
                if !(secs > 0.0 && secs < 1e6) {
                    return Err("--timeout must be a positive number of seconds".into());
                }
                opts.timeout = Duration::from_secs_f64(secs);
            }
            "-h" | "--help" => return Err(String::new()),
            a if a.starts_with('-') => return Err(format!("unknown option {a}")),
            a => opts.http = a.parse().map_err(|e| format!("{a:?} is not IP:PORT: {e}"))?,
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("udp_mio: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    if opts.node_key.is_none() {
        eprintln!("udp_mio: no --node-key: trusting whatever node answers");
    }
    match run(&opts) {
        Ok(r) => {
            let secs = r.echo_time.as_secs_f64().max(1e-9);
            println!(
                "udp_mio: session from {} over UDP to {} (enc_init + stream_ctl {:.1} ms; first \
                 answer {:.1} ms after the first datagram)",
                r.local,
                r.server,
                r.setup.as_secs_f64() * 1e3,
                r.connected_after.as_secs_f64() * 1e3,
            );
            println!(
                "udp_mio: {} messages of 1 to {} bytes echoed on 'E', every one identical: {} \
                 bytes each way in {:.1} ms ({:.1} MB/s each way)",
                r.messages,
                SIZES.iter().take(r.messages).max().copied().unwrap_or(0),
                r.bytes,
                secs * 1e3,
                r.bytes as f64 / secs / 1e6,
            );
            println!(
                "udp_mio: datagrams {} out, {} in ({} lost to a full send buffer); engine: \
                 {} packets lost, {} bytes sent again, RTT {:.2} ms",
                r.datagrams_out,
                r.datagrams_in,
                r.send_dropped,
                r.stats.lost,
                r.stats.retransmitted,
                r.rtt.as_secs_f64() * 1e3,
            );
            println!("udp_mio: closed: {:?}", r.close);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("udp_mio: {e}");
            ExitCode::FAILURE
        }
    }
}
