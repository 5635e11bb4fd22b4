//! The stream over HTTP: `GET /stream/<channels>?session_id=<hex>` with `Upgrade`, answered
//! `101 Switching Protocols`; then the TCP connection carries stream packets both ways.
//!
//! [`StreamConn`] is the reactor handler of such a connection on either end: it decodes and
//! opens packets from `buf_in`, feeds their payloads to the session's [`Mux`], and seals what
//! the mux has to send into `buf_out`, as room allows (so a slow peer pushes back on the
//! channels instead of filling memory). Keepalives go out after `keepalive` without input;
//! after `idle_timeout` the stream closes.
//!
//! # Drain
//!
//! A server stream can be tied to its server's drain ([`StreamConn::with_drain`]). Once the
//! server stops intake, the stream keeps reading packets but takes only the credit frames
//! out of them, and the mux hands on nothing it already holds ([`Mux::stop_intake`]): no
//! message reaches a handler, while the peer's credit still lets queued output go out.
//! [`StreamConn::go_away`] then sends everything its channels have queued (their handle
//! queues included), refuses new handle writes ([`Mux::seal_inputs`]), sends what was
//! written before that, seals a CLOSE with code `GoingAway`, and closes gracefully. A
//! stream whose peer does not take all that within the server's grace period is
//! [cut off](StreamConn::cut_off): what is still queued is discarded and counted, and the
//! CLOSE says how many messages were not sent (`docs/PROTOCOL.md` §10). Room for the CLOSE
//! is always kept in the output buffer, so it can be sealed after whatever was sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dap_reactor::{Esocket, EsocketHandle, Handler};

use super::{CloseCode, StreamError, Wake};
use crate::channel::ChannelHandle;
use crate::codec::DecodeError;
use crate::codec::frame::{self, Frame};
use crate::codec::packet::{self, Header, OpenError, Opener, PacketType, Sealer};
use crate::mux::{Mux, MuxError};
use crate::session::SessionParams;
use crate::stats::StreamStats;

/// The `Upgrade` token of the stream protocol.
pub const UPGRADE_TOKEN: &str = "dap-stream/2";
/// The path prefix of stream requests.
pub const STREAM_PATH: &str = "/stream/";
/// The longest response head a client reads before giving up on the upgrade.
const MAX_RESPONSE_HEAD: usize = 8 << 10;

/// Events a stream reports to its owner (the client's state machine, tests).
#[derive(Debug)]
pub enum StreamEvent {
    /// The session's transport is open and its first bytes are on their way: over UDP, the
    /// client's first datagram left (it may carry data already); `Connected` follows with
    /// the first authenticated answer. The HTTP transport reports `Connected` alone (the
    /// `101` is its first answer).
    Opened {
        /// The connection's esocket.
        esocket: EsocketHandle,
    },
    /// The stream is up (client: the server answered 101, or the first authenticated
    /// datagram arrived over UDP).
    Connected {
        /// The connection's esocket.
        esocket: EsocketHandle,
        /// A handle per channel, in the session's order.
        channels: Vec<ChannelHandle>,
    },
    /// The stream ended; last event.
    Closed(StreamError),
}

/// Receives a stream's events, on its worker.
pub type EventSink = Box<dyn FnMut(StreamEvent) + Send>;

/// Called once when a server stream opens, with its esocket; returns whether the server is
/// going away already (the stream then drains at once).
pub type OnOpen = Box<dyn FnOnce(EsocketHandle) -> bool + Send>;

/// The close reason sent with `GoingAway`; a stream cut off at the end of the grace
/// period adds `; N messages not sent` (`docs/PROTOCOL.md` §10).
pub const GOING_AWAY_REASON: &str = "server shutting down";

/// The reason of a CLOSE `GoingAway` that discarded `unsent` messages.
pub(crate) fn going_away_reason(unsent: usize) -> String {
    if unsent == 0 {
        GOING_AWAY_REASON.to_string()
    } else {
        format!("{GOING_AWAY_REASON}; {unsent} messages not sent")
    }
}

/// The largest close packet: room for one is kept in `buf_out` whatever the data, so a
/// stream cut off while its peer does not read can still seal its CLOSE after what it
/// sent.
const CLOSE_PACKET_MAX: usize = packet::OVERHEAD + 2 + packet::MAX_REASON;

/// After a CLOSE `GoingAway`, how long the server keeps reading (and discarding) what the
/// peer still sends, until the peer closes its end. Closing at once with unread input would
/// make the kernel answer with a reset, which can destroy the CLOSE packet (and data before
/// it) in the peer's receive buffer before the peer has read them.
const GOING_AWAY_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// What one received packet led to.
enum Outcome {
    Ok,
    PeerClosed(StreamError),
    Violation(MuxError),
}

enum State {
    /// Client: the upgrade request is sent when the connection is up; then the answer is
    /// awaited.
    Upgrading { request: Vec<u8> },
    /// Packets flow.
    Open,
    /// Done: nothing more is read or sent.
    Closed,
}

/// One stream connection, on either end.
pub struct StreamConn {
    server: bool,
    state: State,
    mux: Mux,
    sealer: Sealer,
    opener: Opener,
    params: SessionParams,
    stats: Arc<StreamStats>,
    last_rx: Instant,
    pinged: bool,
    alive_owed: bool,
    /// A keepalive is due but `buf_out` had no room.
    keepalive_owed: bool,
    /// Why the stream ended, once it has.
    end: Option<StreamError>,
    /// Server: when the stream opened, for the session's access-log line.
    opened_at: Option<std::time::Instant>,
    /// Client: TLS to the server (an `https` uplink), with the name to check.
    tls: Option<(Arc<dap_net::tls::ClientConfig>, String)>,
    events: Option<EventSink>,
    /// Server: called once when the stream ends (frees the session).
    on_end: Option<Box<dyn FnOnce() + Send>>,
    /// Server: set when the server stops taking messages (shared by its streams).
    intake_stopped: Option<Arc<AtomicBool>>,
    /// Server: called once when the stream opens.
    on_open: Option<OnOpen>,
    /// Closing with `GoingAway` once everything queued is sent.
    going_away: bool,
    /// The CLOSE `GoingAway` is sent: input is discarded until the peer closes.
    lingering: bool,
    /// Key updates sent and received, and window growths, already added to `stats`.
    reported: (u64, u64, u64),
    /// Output waits for room in `buf_out`: `on_write` must keep firing.
    write_wanted: bool,
}

impl std::fmt::Debug for StreamConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamConn")
            .field("server", &self.server)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

struct EsWaker(EsocketHandle, Arc<StreamStats>);

/// Runs `f` with the stream connection of esocket `es`: a client's (the esocket's own
/// handler) or a server's (inside the HTTP connection it was upgraded from). `None` when
/// `es` carries no stream, or its handler is running a callback higher up the stack.
pub fn with_stream_conn<R>(
    es: &mut Esocket<'_>,
    f: impl FnOnce(&mut StreamConn, &mut Esocket<'_>) -> R,
) -> Option<R> {
    let mut f = Some(f);
    let direct = es.with_handler::<StreamConn, _>(|c, es| f.take().map(|f| f(c, es)));
    match (direct, f) {
        (Some(r), _) => r,
        (None, Some(f)) => dap_net::http::server::with_upgraded::<StreamConn, _>(es, f),
        (None, None) => None,
    }
}

impl Wake for EsWaker {
    fn wake(&self) {
        let r = self.0.exec(|es| {
            with_stream_conn(es, |c, es| c.flush(es));
        });
        if r.is_err() {
            StreamStats::inc(&self.1.wake_failed);
        }
    }
}

impl StreamConn {
    /// The server end of an attached session (installed by the `/stream/` route after its
    /// `101`). `on_end` runs once when the stream ends.
    pub fn server(
        params: SessionParams,
        mux: Mux,
        stats: Arc<StreamStats>,
        on_end: Box<dyn FnOnce() + Send>,
    ) -> Self {
        Self::new(true, State::Open, params, mux, stats, None, Some(on_end))
    }

    /// The client end: sends the upgrade request for `params` (to `host`) once connected,
    /// then carries `mux`. `events` hears `Connected` and `Closed`.
    pub fn client(
        params: SessionParams,
        host: &str,
        mux: Mux,
        stats: Arc<StreamStats>,
        events: EventSink,
    ) -> Self {
        let request = upgrade_request(&params, host).into_bytes();
        Self::new(false, State::Upgrading { request }, params, mux, stats, Some(events), None)
    }

    /// Client: runs the stream over TLS (the server's HTTPS listener), checking the
    /// server's certificate against `server_name` as `config` says.
    pub fn with_tls(
        mut self,
        config: Arc<dap_net::tls::ClientConfig>,
        server_name: impl Into<String>,
    ) -> Self {
        self.tls = Some((config, server_name.into()));
        self
    }

    fn new(
        server: bool,
        state: State,
        params: SessionParams,
        mux: Mux,
        stats: Arc<StreamStats>,
        events: Option<EventSink>,
        on_end: Option<Box<dyn FnOnce() + Send>>,
    ) -> Self {
        let (sealer, opener) = params.packet_keys(server);
        StreamConn {
            server,
            state,
            mux,
            sealer,
            opener,
            params,
            stats,
            last_rx: Instant::now(),
            pinged: false,
            alive_owed: false,
            keepalive_owed: false,
            end: None,
            opened_at: None,
            tls: None,
            events,
            on_end,
            intake_stopped: None,
            on_open: None,
            going_away: false,
            lingering: false,
            reported: (0, 0, 0),
            write_wanted: false,
        }
    }

    /// Server: ties this stream to its server's drain. While `intake_stopped` is set, the
    /// stream takes only credit frames from what it receives (no message reaches a
    /// handler); `on_open` runs once when the stream opens and returns whether the server
    /// is going away already, in which case the stream [goes away](Self::go_away) at once.
    pub fn with_drain(mut self, intake_stopped: Arc<AtomicBool>, on_open: OnOpen) -> Self {
        self.intake_stopped = Some(intake_stopped);
        self.on_open = Some(on_open);
        self
    }

    /// Ends the stream because the server is shutting down: stops taking messages, sends
    /// what its channels have queued (as the peer grants credit), then a CLOSE with code
    /// `GoingAway`, and closes gracefully. Idempotent. A peer that grants no credit keeps
    /// the stream open until the server's grace period ends.
    pub fn go_away(&mut self, es: &mut Esocket<'_>) {
        if !matches!(self.state, State::Open) {
            return;
        }
        self.going_away = true;
        self.mux.stop_intake();
        self.flush(es);
    }

    fn intake_open(&self) -> bool {
        !self.going_away && self.intake_stopped.as_ref().is_none_or(|f| !f.load(Ordering::SeqCst))
    }

    /// The session's mux, for code running on the stream's worker. What is written
    /// through it goes out on the stream's next flush; prefer
    /// [`with_channel`](Self::with_channel), which flushes.
    pub fn mux(&mut self) -> &mut Mux {
        &mut self.mux
    }

    /// Runs `f` on channel `id` as if in one of its callbacks, then sends what it wrote.
    /// For application code on the stream's worker (an `exec` closure, a timer) that
    /// reaches the connection with [`with_stream_conn`].
    pub fn with_channel<R>(
        &mut self,
        es: &mut Esocket<'_>,
        id: u8,
        f: impl FnOnce(&mut crate::Channel<'_>) -> R,
    ) -> Option<R> {
        let r = self.mux.with_channel(id, f);
        self.flush(es);
        r
    }

    fn open(&mut self, es: &mut Esocket<'_>) {
        self.state = State::Open;
        self.opened_at = Some(std::time::Instant::now());
        es.set_buffer_caps(self.params.limits.buf_in, self.params.limits.buf_out);
        self.last_rx = es.worker().now();
        StreamStats::inc(&self.stats.streams_open);
        let waker = Arc::new(EsWaker(es.handle(), self.stats.clone()));
        self.mux.start(waker);
        let _ = es.set_deadline(Some(self.params.limits.keepalive));
        if let Some(ev) = self.events.as_mut() {
            let channels =
                self.mux.channel_ids().into_iter().filter_map(|id| self.mux.handle(id)).collect();
            ev(StreamEvent::Connected { esocket: es.handle(), channels });
        }
        if let Some(on_open) = self.on_open.take()
            && on_open(es.handle())
        {
            self.going_away = true;
        }
    }

    /// Sends a close packet with `code` and closes gracefully, recording why.
    fn fail(&mut self, es: &mut Esocket<'_>, code: CloseCode, reason: &str, err: StreamError) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.sync_stats();
        // Without room for the close packet the peer learns from the connection's end.
        if matches!(self.state, State::Open) {
            let _ = self.seal_out(es, PacketType::Close, 2 + packet::MAX_REASON, |out| {
                packet::close_payload(out, code as u16, reason);
            });
        }
        tracing::debug!(session = %crate::session::hex(&self.params.id[..4]), %err, "stream closing");
        self.end.get_or_insert(err);
        self.state = State::Closed;
        self.mux.close();
        es.close();
    }

    /// Closes the stream from our side (a close packet with code `Normal`).
    pub fn close(&mut self, es: &mut Esocket<'_>) {
        self.fail(es, CloseCode::Normal, "", StreamError::LocalClose);
    }

    /// Seals one packet of type `ty` straight into `buf_out` (pool storage: no allocation
    /// and no copy per packet); `payload` appends at most `max` bytes. Returns whether the
    /// packet went out: without room for `max` bytes nothing is sealed and no sequence
    /// number is taken.
    fn seal_out(
        &mut self,
        es: &mut Esocket<'_>,
        ty: PacketType,
        max: usize,
        payload: impl FnOnce(&mut Vec<u8>),
    ) -> bool {
        let sealer = &mut self.sealer;
        let built = es.write_with(packet::OVERHEAD + max, |out| {
            let start = Sealer::begin(out);
            payload(out);
            sealer.seal(ty, out, start);
            out.len() - start
        });
        match built {
            Ok(len) => {
                self.count_out(len);
                true
            }
            Err(_) => false,
        }
    }

    /// Asks for `on_write` once output drains (the callback's return value keeps asking).
    fn want_write(&mut self, es: &mut Esocket<'_>) {
        self.write_wanted = true;
        es.set_writable(true);
    }

    fn count_out(&mut self, len: usize) {
        StreamStats::inc(&self.stats.packets_out);
        StreamStats::add(&self.stats.bytes_out, len as u64);
    }

    /// Adds what changed since the last call to the shared counters: key updates both
    /// ways, window growths.
    fn sync_stats(&mut self) {
        let now =
            (self.sealer.updates(), self.opener.updates(), self.mux.counters().window_growths);
        let (s, r, g) = self.reported;
        StreamStats::add(&self.stats.key_updates_sent, now.0 - s);
        StreamStats::add(&self.stats.key_updates_received, now.1 - r);
        StreamStats::add(&self.stats.window_growths, now.2 - g);
        self.reported = now;
    }

    /// Sends an empty packet of type `ty` if `buf_out` has room; returns whether it did
    /// (no sequence number is taken otherwise).
    fn control_packet(&mut self, es: &mut Esocket<'_>, ty: PacketType) -> bool {
        // Not into the room kept for a CLOSE.
        let sent = es.out_room() >= packet::OVERHEAD + CLOSE_PACKET_MAX
            && self.seal_out(es, ty, 0, |_| {});
        if !sent {
            self.want_write(es);
        }
        sent
    }

    /// Reads every whole packet in `buf_in`.
    fn read_packets(&mut self, es: &mut Esocket<'_>) {
        let max = self.params.limits.max_payload;
        let mut got = false;
        let now = es.worker().now();
        self.mux.set_clock(now);
        if !self.intake_open() {
            self.mux.stop_intake();
        }
        while matches!(self.state, State::Open) {
            let buf = es.buf_in_mut();
            let hdr: Header = match packet::parse_header(buf, max) {
                Ok(Some(h)) if buf.len() >= h.packet_len() => h,
                Ok(_) => break,
                Err(e) => {
                    StreamStats::inc(&self.stats.decode_errors);
                    let err = StreamError::Protocol(e.to_string());
                    return self.fail(es, CloseCode::Protocol, "bad packet", err);
                }
            };
            let outcome = match self.opener.open(&hdr, buf) {
                Ok(plain) => match hdr.ty {
                    PacketType::Data if self.intake_open() => {
                        match self.mux.handle_payload(plain) {
                            Ok(()) => Outcome::Ok,
                            Err(e) => Outcome::Violation(e),
                        }
                    }
                    // Draining: the peer's credit still counts, its messages no longer do.
                    PacketType::Data => match credit_frames(plain) {
                        Ok(credits) => match self.mux.handle_payload(&credits) {
                            Ok(()) => Outcome::Ok,
                            Err(e) => Outcome::Violation(e),
                        },
                        Err(e) => Outcome::Violation(MuxError::Decode(e)),
                    },
                    PacketType::Keepalive => {
                        self.alive_owed = true;
                        Outcome::Ok
                    }
                    PacketType::Alive => Outcome::Ok,
                    PacketType::Close => {
                        let (code, reason) = packet::parse_close(plain)
                            .unwrap_or((CloseCode::Protocol as u16, String::new()));
                        Outcome::PeerClosed(StreamError::PeerClosed {
                            code: CloseCode::from_u16(code),
                            reason,
                        })
                    }
                },
                Err(OpenError::Auth) => {
                    StreamStats::inc(&self.stats.auth_failures);
                    let err = StreamError::Auth;
                    return self.fail(es, CloseCode::Protocol, "authentication failed", err);
                }
                Err(e @ OpenError::Sequence { .. }) => {
                    StreamStats::inc(&self.stats.sequence_errors);
                    let err = StreamError::Sequence(e.to_string());
                    return self.fail(es, CloseCode::Protocol, "bad sequence", err);
                }
                Err(e @ OpenError::KeyExhausted(_)) => {
                    StreamStats::inc(&self.stats.key_exhausted);
                    let err = StreamError::Protocol(e.to_string());
                    return self.fail(es, CloseCode::Protocol, "key update overdue", err);
                }
            };
            es.consume(hdr.packet_len());
            got = true;
            StreamStats::inc(&self.stats.packets_in);
            StreamStats::add(&self.stats.bytes_in, hdr.packet_len() as u64);
            match outcome {
                Outcome::Ok => {}
                Outcome::PeerClosed(err) => {
                    // Nothing is sent after a close packet, by either side.
                    self.end.get_or_insert(err);
                    self.state = State::Closed;
                    self.mux.close();
                    es.close();
                    return;
                }
                Outcome::Violation(e @ MuxError::OverBudget(_)) => {
                    StreamStats::inc(&self.stats.over_budget);
                    let err = StreamError::Protocol(e.to_string());
                    return self.fail(es, CloseCode::OverBudget, "reassembly over budget", err);
                }
                Outcome::Violation(e @ MuxError::SessionOverBudget(_)) => {
                    StreamStats::inc(&self.stats.over_budget);
                    let err = StreamError::Protocol(e.to_string());
                    let reason = "unfinished messages over the session's bound";
                    return self.fail(es, CloseCode::OverBudget, reason, err);
                }
                Outcome::Violation(e) => {
                    let c = match e {
                        MuxError::UnknownChannel(_) => &self.stats.unknown_channel,
                        MuxError::MessageTooLarge { .. } => &self.stats.oversize_messages,
                        MuxError::Decode(_) => &self.stats.decode_errors,
                        _ => &self.stats.protocol_errors,
                    };
                    StreamStats::inc(c);
                    let err = StreamError::Protocol(e.to_string());
                    return self.fail(es, CloseCode::Protocol, "protocol violation", err);
                }
            }
        }
        if got {
            self.sync_stats();
            self.last_rx = now;
            self.pinged = false;
            // Frames on other channels do not keep a parked message alive.
            if self.partial_stalled(es, now) {
                return;
            }
            let _ = es.set_deadline(Some(self.next_deadline(now, self.params.limits.keepalive)));
        }
    }

    /// Ends the stream (code 2) if an unfinished message gained no frame within the
    /// partial timeout; returns whether it did.
    fn partial_stalled(&mut self, es: &mut Esocket<'_>, now: Instant) -> bool {
        let Some(chan) = self.mux.stalled_partial(now) else { return false };
        StreamStats::inc(&self.stats.partial_timeouts);
        let e = MuxError::PartialTimeout(chan);
        let err = StreamError::Protocol(e.to_string());
        self.fail(es, CloseCode::IdleTimeout, "unfinished message idle too long", err);
        true
    }

    /// `after` from now, or sooner when an unfinished message times out sooner.
    fn next_deadline(&self, now: Instant, after: Duration) -> Duration {
        match self.mux.partial_deadline() {
            Some(at) => after.min(at.saturating_duration_since(now)),
            None => after,
        }
    }

    /// Seals and queues what the mux has to send, while `buf_out` has room; going away,
    /// closes once nothing is left.
    pub(crate) fn flush(&mut self, es: &mut Esocket<'_>) {
        self.flush_data(es);
        if self.going_away && matches!(self.state, State::Open) && self.mux_idle() {
            // Refuse new writes, then send what was written before the seal (accepted with
            // `Ok`) before the CLOSE.
            if !self.mux.inputs_sealed() {
                self.mux.seal_inputs();
                self.flush_data(es);
                if !self.mux_idle() {
                    return;
                }
            }
            if es.out_room() >= CLOSE_PACKET_MAX {
                self.close_going_away(es, GOING_AWAY_REASON);
            } else {
                self.want_write(es);
            }
        }
    }

    /// Ends the stream at once because the server's grace period is over and it is still
    /// open (its peer did not read, or grant credit, fast enough to take what was queued
    /// for it): discards the messages not yet wholly sent, and seals a CLOSE `GoingAway`
    /// whose reason says how many (`server shutting down; N messages not sent`) after
    /// whatever was sealed before; then lingers as a normal going away does, and the
    /// connection is closed gracefully, never reset. Returns the messages discarded, or
    /// `None` when the stream had ended already.
    pub fn cut_off(&mut self, es: &mut Esocket<'_>) -> Option<usize> {
        if !matches!(self.state, State::Open) {
            return None;
        }
        let unsent = self.mux.unsent_messages();
        StreamStats::inc(&self.stats.shutdown_cut_off);
        StreamStats::add(&self.stats.shutdown_unsent_messages, unsent as u64);
        tracing::warn!(
            session = %crate::session::hex(&self.params.id[..4]),
            unsent,
            unflushed_bytes = es.out_len(),
            "stream cut off at the end of the grace period"
        );
        self.sync_stats();
        // `flush_data` kept room for this in `buf_out`.
        self.close_going_away(es, &going_away_reason(unsent));
        Some(unsent)
    }

    /// Sends the CLOSE `GoingAway` and lingers: the connection stays open, discarding
    /// input, until the peer closes it or [`GOING_AWAY_LINGER`] passes.
    fn close_going_away(&mut self, es: &mut Esocket<'_>, reason: &str) {
        self.seal_out(es, PacketType::Close, 2 + packet::MAX_REASON, |out| {
            packet::close_payload(out, CloseCode::GoingAway as u16, reason);
        });
        self.end.get_or_insert(StreamError::LocalClose);
        self.state = State::Closed;
        self.mux.close();
        self.lingering = true;
        let n = es.buf_in().len();
        es.consume(n);
        if es.set_deadline(Some(GOING_AWAY_LINGER)).is_err() {
            es.close();
        }
    }

    /// Whether the mux has nothing left to send: no queued message, nothing in a handle
    /// queue, no credit owed.
    fn mux_idle(&self) -> bool {
        self.mux.queued() == 0 && !self.mux.wants_send()
    }

    fn flush_data(&mut self, es: &mut Esocket<'_>) {
        if !matches!(self.state, State::Open) {
            return;
        }
        if self.alive_owed {
            self.alive_owed = !self.control_packet(es, PacketType::Alive);
        }
        if self.keepalive_owed {
            self.keepalive_owed = !self.control_packet(es, PacketType::Keepalive);
        }
        let max = self.params.limits.max_payload;
        let full = packet::OVERHEAD + max;
        for _ in 0..64 {
            // Packets are full-size while output is backed up, so that they tile the
            // receiver's input buffer (no bytes slid to its front); a shorter packet goes
            // only into an empty buffer, when there is no more to say than that. Room for
            // a CLOSE is always kept (see `cut_off`).
            let room = es.out_room().saturating_sub(CLOSE_PACKET_MAX);
            let cap = if room >= full {
                max
            } else if es.out_len() == 0 && room > packet::OVERHEAD + Mux::frame_overhead() {
                room - packet::OVERHEAD
            } else {
                self.want_write(es);
                return;
            };
            // Credit is what holds us back only once our own output has drained.
            self.mux.set_report_blocked(es.out_len() == 0);
            let (mux, sealer) = (&mut self.mux, &mut self.sealer);
            let built = es.write_with(packet::OVERHEAD + cap, |out| {
                let start = Sealer::begin(out);
                if !mux.poll_payload(out, cap) {
                    out.truncate(start);
                    return 0;
                }
                sealer.seal(PacketType::Data, out, start);
                out.len() - start
            });
            match built {
                Ok(0) => {
                    self.mux.notify_writable();
                    if !self.mux.wants_send() {
                        self.sync_stats();
                        return;
                    }
                }
                Ok(len) => self.count_out(len),
                Err(_) => {
                    self.want_write(es);
                    return;
                }
            }
        }
        self.sync_stats();
        // Many packets in one go: let other esockets run, continue on the write callback.
        self.want_write(es);
    }

    fn finish(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end();
        }
        let err = self.end.take().unwrap_or(StreamError::Io("connection closed".into()));
        if self.server
            && let Some(opened) = self.opened_at.take()
        {
            let p = &self.params;
            let c = self.mux.counters();
            crate::stats::log_session_end(&p.id, "http", &p.channels, &c, opened.elapsed(), &err);
        }
        if let Some(mut ev) = self.events.take() {
            ev(StreamEvent::Closed(err));
        }
    }
}

impl Handler for StreamConn {
    fn on_new(&mut self, es: &mut Esocket<'_>) {
        if self.server {
            self.open(es);
            // Bytes that followed the upgrade request are already in buf_in.
            self.read_packets(es);
            self.flush(es);
        } else if let Some((config, name)) = &self.tls
            && let Err(e) = dap_net::tls::connect(es, config, name)
        {
            self.end.get_or_insert(StreamError::Io(format!("tls: {e}")));
            es.close();
        }
    }

    fn on_connected(&mut self, es: &mut Esocket<'_>) {
        if let State::Upgrading { request } = &self.state {
            let req = Bytes::from(request.clone());
            if es.write_bytes(req).is_err() {
                es.close_now();
            }
            let _ = es.set_deadline(Some(self.params.limits.connect_timeout));
        }
    }

    fn on_read(&mut self, es: &mut Esocket<'_>) {
        if self.lingering {
            let n = es.buf_in().len();
            es.consume(n);
            return;
        }
        if let State::Upgrading { .. } = self.state {
            match parse_upgrade_response(es.buf_in()) {
                Ok(None) if es.buf_in().len() < MAX_RESPONSE_HEAD => return,
                Ok(None) => {
                    self.end = Some(StreamError::Protocol("response head too long".into()));
                    self.state = State::Closed;
                    es.close_now();
                    return;
                }
                Ok(Some(n)) => {
                    es.consume(n);
                    self.open(es);
                }
                Err(status) => {
                    self.end = Some(StreamError::UpgradeRefused(status));
                    self.state = State::Closed;
                    es.close_now();
                    return;
                }
            }
        }
        // A read that did not fill buf_in took all the socket had: we keep up with the peer.
        self.mux.set_input_drained(es.buf_in().len() < es.in_cap());
        self.read_packets(es);
        self.flush(es);
    }

    fn on_write(&mut self, es: &mut Esocket<'_>) -> bool {
        self.write_wanted = false;
        self.flush(es);
        // Still waiting for room (a whole packet did not fit): keep the write interest, or
        // nothing would call us when the output drains.
        self.write_wanted
    }

    fn on_write_finished(&mut self, es: &mut Esocket<'_>) {
        // Output drained: if data waits only for the peer's credit, BLOCKED is now owed.
        if matches!(self.state, State::Open) && self.mux.wants_send_if_idle() {
            self.flush(es);
        }
    }

    fn on_timeout(&mut self, es: &mut Esocket<'_>) -> bool {
        let limits = self.params.limits;
        match self.state {
            State::Upgrading { .. } => {
                self.end = Some(StreamError::Io("upgrade timed out".into()));
                self.state = State::Closed;
                es.close_now();
                true
            }
            State::Closed => false,
            State::Open => {
                let now = es.worker().now();
                if self.partial_stalled(es, now) {
                    return true;
                }
                let idle = now.saturating_duration_since(self.last_rx);
                if idle >= limits.idle_timeout {
                    StreamStats::inc(&self.stats.idle_timeouts);
                    self.fail(es, CloseCode::IdleTimeout, "idle timeout", StreamError::IdleTimeout);
                    return true;
                }
                if !self.pinged && idle >= limits.keepalive {
                    self.pinged = true;
                    StreamStats::inc(&self.stats.keepalives_sent);
                    // With output full, it goes when the output drains.
                    self.keepalive_owed = !self.control_packet(es, PacketType::Keepalive);
                }
                let next =
                    if self.pinged { limits.idle_timeout - idle } else { limits.keepalive - idle };
                let _ = es.set_deadline(Some(self.next_deadline(now, next)));
                true
            }
        }
    }

    fn on_error(&mut self, _es: &mut Esocket<'_>, err: &std::io::Error) {
        self.end.get_or_insert(StreamError::Io(err.to_string()));
    }

    fn on_delete(&mut self, _es: &mut Esocket<'_>) {
        self.sync_stats();
        // A client that never got its 101 was never counted open.
        if self.mux.is_started() {
            StreamStats::dec(&self.stats.streams_open);
        }
        StreamStats::inc(&self.stats.streams_closed);
        self.state = State::Closed;
        self.mux.close();
        self.finish();
    }
}

/// The credit frames of a DATA payload, re-encoded; data frames are left out.
fn credit_frames(mut buf: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (f, n) = frame::decode(buf)?;
        buf = &buf[n..];
        match f {
            Frame::Credit { chan, limit } => frame::put_credit(&mut out, chan, limit),
            Frame::Blocked { chan, limit } => frame::put_blocked(&mut out, chan, limit),
            Frame::Data { .. } => {}
        }
    }
    Ok(out)
}

/// The upgrade request a client sends for `params`: the channel ids percent-encoded where
/// a URL needs it, the session id in lowercase hex.
pub fn upgrade_request(params: &SessionParams, host: &str) -> String {
    let channels = crate::session::channels_to_url(&params.channels);
    format!(
        "GET {STREAM_PATH}{channels}?session_id={} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: {UPGRADE_TOKEN}\r\n\r\n",
        crate::session::hex(&params.id),
    )
}

/// Parses the server's answer to the upgrade: `Ok(Some(head length))` on `101` with our
/// upgrade token, `Ok(None)` until the head is complete, `Err(status)` otherwise (0 for a
/// head that does not parse). Public for the fuzz targets only.
#[doc(hidden)]
pub fn parse_upgrade_response(buf: &[u8]) -> Result<Option<usize>, u16> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let code = resp.code.unwrap_or(0);
            let upgrade = resp.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("upgrade")
                    && h.value.eq_ignore_ascii_case(UPGRADE_TOKEN.as_bytes())
            });
            if code == 101 && upgrade { Ok(Some(n)) } else { Err(code.max(1)) }
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(0),
    }
}
