//! One UDP connection, sans-IO: the session's [`Mux`] carried over packets of §11 with
//! acknowledgements, loss recovery, congestion control and pacing.
//!
//! # Calling order
//!
//! The driver owns the socket and the clock. After creating a connection:
//! 1. feed every datagram for it to [`handle_datagram`](Connection::handle_datagram), or
//!    those of one receive batch together to
//!    [`handle_datagrams`](Connection::handle_datagrams) (one AEAD call for all of them);
//! 2. when the time of [`poll_timeout`](Connection::poll_timeout) has come, call
//!    [`handle_timeout`](Connection::handle_timeout);
//! 3. after either (and whenever a channel handle wakes the driver), call
//!    [`poll_transmit`](Connection::poll_transmit) until it returns `None`, sending each
//!    buffer it fills;
//! 4. drain [`poll_event`](Connection::poll_event);
//! 5. re-arm the timer from [`poll_timeout`](Connection::poll_timeout).
//!
//! # How the mux rides on packets
//!
//! The mux is the same as over TCP: channel handlers see no difference. What it produces
//! is split per channel: each channel's §8 data frames become that channel's reliable
//! stream ([`SendBuf`], retransmitted by range), and its CREDIT and BLOCKED frames become
//! UDP CREDIT and BLOCKED frames (absolute, so the latest value is simply sent again when a
//! packet carrying one is lost). On the other side each channel's stream is reassembled on
//! its own ([`Assembler`]) and its §8 frames go to the mux in order, so a lost packet holds
//! up only the channels whose bytes it carried.
//!
//! Channels chosen unreliable (`SessionParams::unreliable`) skip all that: each message
//! is one DATAGRAM frame, sent once, counted when its packet is lost, outside flow control.
//!
//! # What else it does
//!
//! - Acknowledgements, loss recovery and RTT as RFC 9002 ([`super::ack`],
//!   [`super::recovery`], [`super::rtt`]), with spurious losses detected and the
//!   reordering thresholds adapted to them; congestion control behind a trait
//!   ([`super::congestion`]) and pacing ([`super::pacer`]).
//! - Paths ([`super::path`]): anti-amplification before validation, validation of a new
//!   address before moving to it; path MTU discovery ([`super::mtu`]); ECN
//!   ([`super::ecn`]), with the codepoints the driver reports through
//!   [`handle_datagram_ecn`](Connection::handle_datagram_ecn) and sets from
//!   [`Transmit::ecn`].
//! - Key updates ([`super::keys`]) within the AEAD limits, keepalives, the idle timeout,
//!   and CLOSE with a closing or draining period.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::ack::{AckTracker, Received};
use super::assemble::Assembler;
use super::congestion::{Controller, ControllerConfig};
use super::ecn::{Ecn, EcnValidator};
use super::frame::{self, EcnCounts, Frame, Frames};
use super::keys::{RecvKeys, SendKeys};
use super::mtu::{Mtu, MtuConfig, MtuStats};
use super::pacer::{Pacer, PacerConfig};
use super::packet::{self, ConnectionId, Header, LABELS};
use super::path::Path;
use super::recovery::{Recovery, RecoveryConfig, SentPacket, Timeout};
use super::rtt::RttEstimator;
use super::send_buf::SendBuf;
use crate::codec::frame as mux_frame;
use crate::codec::keys::KeyChain;
use crate::codec::packet::Direction;
use crate::mux::{DataFrame, FrameSink, Mux, Piece};
use crate::session::SessionParams;
use crate::transport::CloseCode;
use bytes::Bytes;
use dap_net::enc::cipher::{BatchMsg, TAG_LEN};

/// A piece of a channel's send buffer a packet's text ends with, read by the AEAD where it
/// lies: the channel's index, the range, and the send buffer's chunk that holds it.
#[derive(Clone, Copy, Debug)]
struct Tail {
    chan: u16,
    start: u64,
    end: u64,
    chunk: usize,
}

/// A connection's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConnectionConfig {
    /// Datagram sizes: the base every path carries (1,200 bytes of UDP payload), and the
    /// most path MTU discovery tries.
    pub mtu: MtuConfig,
    /// The longest this end waits before acknowledging (25 ms); also what it tells its own
    /// loss recovery to expect of the peer.
    pub max_ack_delay: Duration,
    /// Close after this long without receiving anything.
    pub idle_timeout: Duration,
    /// Send a PING after this long without receiving, while the connection is idle.
    pub keepalive: Duration,
    /// The congestion controller.
    pub controller: ControllerConfig,
    /// The pacer.
    pub pacer: PacerConfig,
    /// Sent packets tracked at once (bounds what is in flight).
    pub max_tracked_packets: usize,
    /// Loss detection (adaptive reordering thresholds).
    pub recovery: RecoveryConfig,
    /// ACK ranges remembered.
    pub max_ack_ranges: usize,
    /// Thinning (PROTOCOL §11.4.1): while the peer sends steadily, acknowledge at once
    /// after an eighth of the ack-eliciting packets of the last round trip, at most this
    /// many (256); 2 acknowledges every second packet, always.
    pub max_ack_threshold: u32,
    /// Bytes one channel's stream may run ahead of what it delivered (out of order).
    pub max_reorder: u64,
    /// Bytes held out of order on all channels together.
    pub max_reorder_total: usize,
    /// Bytes of unreliable messages waiting to be sent; past it the oldest are dropped.
    pub max_datagram_queue: usize,
    /// Mark packets ECN-capable (ECT(0)) and react to CE marks, once the path and the peer
    /// prove they carry and report them (on; the driver must be able to set and read the
    /// codepoint).
    pub ecn: bool,
    /// Packets sealed under one key before moving to the next (2^20; never more than half
    /// the cipher's confidentiality limit).
    pub rekey_packets: u64,
    /// Seal a transmit's packets and open a receive batch's in one AEAD call where the CPU
    /// runs `dap-crypto`'s batch code (on); off, one packet at a time, as on a CPU without
    /// it (to compare, or to test that path).
    pub batch_aead: bool,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            mtu: MtuConfig::default(),
            max_ack_delay: Duration::from_millis(25),
            idle_timeout: Duration::from_secs(60),
            keepalive: Duration::from_secs(15),
            controller: ControllerConfig::default(),
            pacer: PacerConfig::default(),
            max_tracked_packets: 1 << 16,
            recovery: RecoveryConfig::default(),
            max_ack_ranges: 256,
            max_ack_threshold: 256,
            max_reorder: 32 << 20,
            max_reorder_total: 64 << 20,
            max_datagram_queue: 256 << 10,
            ecn: true,
            rekey_packets: crate::session::DEFAULT_REKEY_PACKETS,
            batch_aead: true,
        }
    }
}

/// What one sent packet carried: inline up to three items (a data range and an ACK riding
/// along: the usual packet), on the heap past that; and whether it went out marked ECT(0).
#[derive(Clone, Debug, Default)]
struct Info {
    items: smallvec::SmallVec<[Packed; 3]>,
    ect: bool,
}

impl Info {
    #[inline]
    fn push(&mut self, s: Sent) {
        self.items.push(Packed::pack(s));
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = Sent> + '_ {
        self.items.iter().map(|p| p.unpack())
    }
}

/// A [`Sent`] as [`Info`] holds it: two words, each stored whole. (As the enum, its first
/// word was stored a field at a time, a byte, two and four, and the sent record's copy
/// into the record of packets in flight read it back as one word, which the core cannot
/// forward from the three stores: the load waited for them to reach the cache, some 1.4 %
/// of the bulk sender's samples in session 21.)
#[derive(Clone, Copy, Debug, Default)]
struct Packed {
    /// The kind (bits 0..8), a channel index (8..24), whether the index is there (24),
    /// a length or size (32..64).
    head: u64,
    /// A stream offset or a packet number.
    arg: u64,
}

impl Packed {
    const DATA: u64 = 0;
    const CREDIT: u64 = 1;
    const BLOCKED: u64 = 2;
    const MTU_PROBE: u64 = 3;
    const DATAGRAM: u64 = 4;
    const ACK_OF: u64 = 5;

    #[inline]
    fn pack(s: Sent) -> Packed {
        let who = |w: Option<u16>| w.map_or(0, |i| (u64::from(i) << 8) | (1 << 24));
        let (head, arg) = match s {
            Sent::Data { idx, len, start } => {
                (Self::DATA | (u64::from(idx) << 8) | (u64::from(len) << 32), start)
            }
            Sent::Credit(w) => (Self::CREDIT | who(w), 0),
            Sent::Blocked(w) => (Self::BLOCKED | who(w), 0),
            Sent::MtuProbe(size) => (Self::MTU_PROBE | (u64::from(size) << 32), 0),
            Sent::Datagram => (Self::DATAGRAM, 0),
            Sent::AckOf(largest) => (Self::ACK_OF, largest),
        };
        Packed { head, arg }
    }

    #[inline]
    fn unpack(self) -> Sent {
        let idx = (self.head >> 8) as u16;
        let who = ((self.head >> 24) & 1 == 1).then_some(idx);
        let wide = (self.head >> 32) as u32;
        match self.head & 0xff {
            Self::DATA => Sent::Data { idx, len: wide, start: self.arg },
            Self::CREDIT => Sent::Credit(who),
            Self::BLOCKED => Sent::Blocked(who),
            Self::MTU_PROBE => Sent::MtuProbe(wide),
            Self::DATAGRAM => Sent::Datagram,
            _ => Sent::AckOf(self.arg),
        }
    }
}

/// The most bytes one transmit of several segments carries, so that one UDP GSO send takes
/// it whole (the kernels' limits are 65,507 bytes over IPv4 and 65,527 over IPv6; the
/// reactor's UDP sockets split larger batches at this size).
pub const MAX_TRANSMIT_BYTES: usize = 65_487;

/// Which end this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client: seals client→server.
    Client,
    /// The server.
    Server,
}

/// A datagram (or a GSO batch of equal-size segments) `poll_transmit` wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// Bytes written to the buffer.
    pub size: usize,
    /// With several segments: the size of each but the last (for GSO).
    pub segment_size: Option<usize>,
    /// The ECN codepoint to send it with (`None`: not ECN-capable).
    pub ecn: Option<Ecn>,
}

/// One datagram of a receive batch ([`Connection::handle_datagrams`]).
#[derive(Debug)]
pub struct Incoming<'a> {
    /// Who sent it.
    pub from: SocketAddr,
    /// Its ECN codepoint, where the socket reports it.
    pub ecn: Option<Ecn>,
    /// The datagram, decrypted in place if the connection takes it.
    pub data: &'a mut [u8],
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer sent CLOSE.
    Peer {
        /// Its code.
        code: u16,
        /// Its reason.
        reason: String,
    },
    /// We closed it (with this code).
    Local(u16),
    /// Nothing arrived within the idle timeout.
    IdleTimeout,
    /// The peer broke the protocol.
    Protocol(String),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Peer { code, reason } => {
                write!(f, "closed by the peer ({code}: {reason:?})")
            }
            CloseReason::Local(code) => write!(f, "closed here ({code})"),
            CloseReason::IdleTimeout => f.write_str("idle timeout"),
            CloseReason::Protocol(why) => write!(f, "protocol violation: {why}"),
        }
    }
}

/// What a connection tells its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The first authenticated packet from the peer arrived.
    Connected,
    /// The peer's new address was validated and the connection moved there (NAT
    /// rebinding, migration).
    Migrated(SocketAddr),
    /// The connection ended; last event.
    Closed(CloseReason),
}

/// Counters of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Packets sent.
    pub packets_out: u64,
    /// Packets received and processed.
    pub packets_in: u64,
    /// ACK frames sent (thinning, PROTOCOL §11.4.1, sends far fewer than one per two
    /// packets received from a steady sender).
    pub acks_sent: u64,
    /// Bytes sent (UDP payload).
    pub bytes_out: u64,
    /// Bytes received (UDP payload).
    pub bytes_in: u64,
    /// Packets declared lost.
    pub lost: u64,
    /// Packets declared lost and then acknowledged (reordering, not loss).
    pub spurious_losses: u64,
    /// Probe timeouts.
    pub ptos: u64,
    /// Persistent congestion (RFC 9002 §7.6): the window collapsed to its minimum.
    pub persistent_congestion: u64,
    /// Datagrams dropped: not authentic.
    pub auth_failed: u64,
    /// Datagrams dropped: unparsable header or another connection id.
    pub malformed: u64,
    /// Datagrams dropped: a packet number seen before.
    pub duplicates: u64,
    /// Packets dropped: their data ran too far ahead of what was delivered.
    pub reorder_drops: u64,
    /// Unreliable messages sent in DATAGRAM frames.
    pub datagrams_sent: u64,
    /// Unreliable messages received.
    pub datagrams_received: u64,
    /// Unreliable messages whose packet was lost (never sent again).
    pub datagrams_lost: u64,
    /// Unreliable messages dropped before sending: the oldest, when more waited than
    /// `max_datagram_queue`.
    pub datagrams_dropped: u64,
    /// Bytes of channel data sent again.
    pub retransmitted: u64,
    /// Times sending stopped at the anti-amplification limit.
    pub amplification_limited: u64,
    /// Address changes validated and moved to.
    pub migrations: u64,
    /// Address changes started (an authentic packet from a new address).
    pub path_changes: u64,
    /// Packets received marked CE (the path was congested on the way here).
    pub ce_received: u64,
    /// CE marks the peer reported on our packets.
    pub ce_reported: u64,
    /// ACKs that reported new CE marks: each a congestion signal with nothing lost (the
    /// controller reacts at most once per round trip).
    pub ce_acks: u64,
    /// Key updates this end made.
    pub key_updates_sent: u64,
    /// Key updates of the peer's followed.
    pub key_updates_received: u64,
    /// Closed for a violation: a frame for a channel the session does not have.
    pub unknown_channel: u64,
    /// Closed for a violation: a frame that does not decode.
    pub decode_errors: u64,
    /// Closed for a violation: a message over its limit.
    pub oversize_messages: u64,
    /// Closed for any other violation.
    pub protocol_errors: u64,
}

impl ConnStats {
    /// Adds another connection's counters to these (totals over connections).
    pub fn add(&mut self, o: &ConnStats) {
        self.packets_out += o.packets_out;
        self.packets_in += o.packets_in;
        self.acks_sent += o.acks_sent;
        self.bytes_out += o.bytes_out;
        self.bytes_in += o.bytes_in;
        self.lost += o.lost;
        self.spurious_losses += o.spurious_losses;
        self.ptos += o.ptos;
        self.persistent_congestion += o.persistent_congestion;
        self.auth_failed += o.auth_failed;
        self.malformed += o.malformed;
        self.duplicates += o.duplicates;
        self.reorder_drops += o.reorder_drops;
        self.datagrams_sent += o.datagrams_sent;
        self.datagrams_received += o.datagrams_received;
        self.datagrams_lost += o.datagrams_lost;
        self.datagrams_dropped += o.datagrams_dropped;
        self.retransmitted += o.retransmitted;
        self.amplification_limited += o.amplification_limited;
        self.migrations += o.migrations;
        self.path_changes += o.path_changes;
        self.ce_received += o.ce_received;
        self.ce_reported += o.ce_reported;
        self.ce_acks += o.ce_acks;
        self.key_updates_sent += o.key_updates_sent;
        self.key_updates_received += o.key_updates_received;
        self.unknown_channel += o.unknown_channel;
        self.decode_errors += o.decode_errors;
        self.oversize_messages += o.oversize_messages;
        self.protocol_errors += o.protocol_errors;
    }
}

/// What kind of violation closed a connection (counted in [`ConnStats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Violation {
    UnknownChannel,
    Decode,
    Oversize,
    Protocol,
}

impl Violation {
    fn of(e: &crate::mux::MuxError) -> Self {
        use crate::mux::MuxError;
        match e {
            MuxError::UnknownChannel(_) => Violation::UnknownChannel,
            MuxError::Decode(_) => Violation::Decode,
            MuxError::MessageTooLarge { .. } => Violation::Oversize,
            _ => Violation::Protocol,
        }
    }
}

/// What a packet carried, to know what to do when it is acknowledged or lost. Kept to 16
/// bytes: a record is made for every packet sent and read back for every one acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    /// Bytes `start..start + len` of channel `idx` (an index into the channels, fewer than
    /// 256; `len` at most a packet's size).
    Data {
        idx: u16,
        len: u32,
        start: u64,
    },
    Credit(Option<u16>),
    Blocked(Option<u16>),
    /// A path MTU probe of this size.
    MtuProbe(u32),
    /// An unreliable message (lost, it is only counted).
    Datagram,
    /// The packet carried an ACK up to this packet number: once it is acknowledged, the
    /// ranges up to there need not be sent again.
    AckOf(u64),
}

impl Sent {
    /// The channel data of `idx` from `start` to `end` (within one packet).
    fn data(idx: usize, start: u64, end: u64) -> Sent {
        // Channel ids are bytes, and a range is what one packet carries.
        debug_assert!(idx <= u16::MAX as usize && end - start <= u32::MAX as u64);
        Sent::Data { idx: idx as u16, len: (end - start) as u32, start }
    }
}

const _: () = assert!(std::mem::size_of::<Sent>() == 16);

/// The latest value of an absolute control frame (CREDIT or BLOCKED) and whether it is
/// still to be sent.
#[derive(Clone, Copy, Debug, Default)]
struct Ctl {
    latest: Option<u64>,
    pending: bool,
}

impl Ctl {
    fn set(&mut self, v: u64) {
        self.latest = Some(v);
        self.pending = true;
    }

    /// A packet carrying it was lost: send the latest value again.
    fn lost(&mut self) {
        self.pending |= self.latest.is_some();
    }
}

/// A channel's in-order stream cut back into §8 frames, payloads passed to the mux as they
/// arrive: a frame's payload is never gathered first (a frame may be 16 KiB or, from a
/// hostile peer, announce 4 GiB), so flow control, the message limit and the reassembly
/// budget apply to each byte as it comes, and no byte is copied on the way in. Only a
/// header split between packets is gathered, at most [`mux_frame::CONTROL_LEN`] bytes. A
/// control frame, or a frame of another channel, in a channel's stream is a violation.
#[derive(Debug, Default)]
struct RxFrames {
    /// The start of a frame whose header is not all there yet.
    head: Vec<u8>,
    /// The data frame whose payload is arriving.
    frame: Option<InFrame>,
}

/// What is left of a data frame whose payload is arriving.
#[derive(Clone, Copy, Debug)]
struct InFrame {
    chan: u8,
    ty: u8,
    /// The message total, until the first piece has gone.
    first: Option<u32>,
    more: bool,
    /// The frame's payload length.
    len: usize,
    /// Payload bytes still to come.
    left: usize,
}

impl RxFrames {
    /// Takes the next in-order bytes of channel `id`'s stream.
    fn feed(&mut self, id: u8, mux: &mut Mux, mut b: &[u8]) -> Result<(), crate::mux::MuxError> {
        while !b.is_empty() {
            if let Some(f) = self.frame.as_mut() {
                let take = f.left.min(b.len());
                let last = take == f.left;
                let piece = Piece { frame_len: Some(f.len), last };
                mux.handle_data(f.chan, f.ty, f.first.take(), f.more, &b[..take], piece)?;
                f.left -= take;
                b = &b[take..];
                if last {
                    self.frame = None;
                }
                continue;
            }
            // A header, gathered until it decodes (most come whole within one packet).
            let before = self.head.len();
            let add = (mux_frame::CONTROL_LEN - before).min(b.len());
            self.head.extend_from_slice(&b[..add]);
            match mux_frame::decode_head(&self.head) {
                Err(crate::codec::DecodeError::Truncated) => {
                    b = &b[add..];
                }
                Err(e) => return Err(e.into()),
                // A channel's stream holds its own data frames only (CREDIT and BLOCKED
                // have frames of their own).
                Ok(mux_frame::Head::Control) => {
                    return Err(crate::mux::MuxError::ControlInStream(id));
                }
                Ok(mux_frame::Head::Data { chan, .. }) if chan != id => {
                    return Err(crate::mux::MuxError::ForeignInStream { chan: id, other: chan });
                }
                Ok(mux_frame::Head::Data { chan, ty, first, more, len, head_len }) => {
                    // The header did not decode from the `before` bytes alone.
                    b = &b[head_len - before..];
                    self.head.clear();
                    if len == 0 {
                        mux.handle_data(chan, ty, first, more, &[], Piece::WHOLE)?;
                    } else {
                        self.frame = Some(InFrame { chan, ty, first, more, len, left: len });
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct ChanIo {
    id: u8,
    send: SendBuf,
    recv: Assembler,
    /// Where the channel's stream is in its §8 frames.
    rx: RxFrames,
    credit: Ctl,
    blocked: Ctl,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    /// We closed: CLOSE is sent (once), then nothing until the deadline.
    Closing {
        until: Instant,
        close_sent: bool,
        code: u16,
    },
    /// The peer closed: nothing is sent until the deadline.
    Draining {
        until: Instant,
    },
    Closed,
}

/// One UDP connection.
pub struct Connection {
    side: Side,
    cid: ConnectionId,
    /// The path to the peer: known from the start on a client; on a server, the source of
    /// the first authentic packet (nothing is sent before it), validated by a challenge.
    path: Option<Path>,
    /// A new address the peer's authentic packets came from, being validated before the
    /// connection moves to it.
    candidate: Option<Path>,
    /// The largest packet number received (an address change on an older, reordered
    /// packet is not one).
    largest_rx: Option<u64>,
    config: ConnectionConfig,
    send_keys: SendKeys,
    recv_keys: RecvKeys,
    next_pn: u64,
    /// Packets of the transmit being built, closed but not yet sealed: `(start, end,
    /// packet number)` in the buffer. [`poll_transmit`](Self::poll_transmit) seals them in
    /// one AEAD batch before it returns.
    unsealed: Vec<(usize, usize, u64)>,
    /// For each of `unsealed`: the piece of a channel's send buffer (channel index, range)
    /// its text ends with, read by the AEAD where it lies.
    unsealed_tails: Vec<Option<Tail>>,
    /// A piece of the packet being built left to the AEAD, and where its (zeroed) room in
    /// the transmit buffer starts.
    tail: Option<(Tail, usize)>,
    mux: Mux,
    chans: Vec<ChanIo>,
    index: [u8; 128],
    conn_credit: Ctl,
    conn_blocked: Ctl,
    recovery: Recovery<Info>,
    acks: AckTracker,
    rtt: RttEstimator,
    cc: Box<dyn Controller>,
    pacer: Pacer,
    mtu: Mtu,
    ecn: EcnValidator,
    /// The codepoints of the packets received, for ACK_ECN.
    ecn_rx: EcnCounts,
    pacing_until: Option<Instant>,
    /// The last packet built found the window with room and nothing it could send (flow
    /// control holds data back in the mux, so that shows as nothing to send): RFC 9002
    /// §7.8, acknowledgments do not grow the window meanwhile.
    app_limited: bool,
    probes: u8,
    last_rx: Instant,
    connected: bool,
    /// A `Closed` event was queued (there is only ever one).
    close_reported: bool,
    state: State,
    events: VecDeque<Event>,
    stats: ConnStats,
    rr: usize,
    tmp: Vec<u8>,
    /// Going away: no more channel data is taken; CLOSE (this code) goes out once
    /// everything sent is acknowledged.
    going_away: Option<u16>,
    /// The reason our CLOSE carries (empty but for violations and cut-offs).
    close_why: String,
    /// No channel data is taken, no message handed on ([`Connection::stop_intake`]).
    intake_stopped: bool,
    path_responses: VecDeque<[u8; 8]>,
    /// The ranges of the ACK being processed (kept for the next).
    ack_ranges: Vec<std::ops::RangeInclusive<u64>>,
    /// The (sent, bytes) of the in-flight packets an ACK acknowledged (kept for the next).
    acked_packets: Vec<(Instant, u64)>,
    /// Unreliable messages to send: (channel, type, bytes).
    datagrams: VecDeque<(u8, u8, Bytes)>,
    datagram_bytes: usize,
}

/// Takes the mux's frames apart for the UDP engine ([`Connection::fill_from_mux`]): data
/// frames of reliable channels join their channel's stream (the message bytes uncopied),
/// unreliable ones queue as DATAGRAM frames, and CREDIT and BLOCKED become the engine's
/// own control frames.
struct MuxOut<'a> {
    taken: usize,
    chans: &'a mut [ChanIo],
    index: &'a [u8],
    conn_credit: &'a mut Ctl,
    conn_blocked: &'a mut Ctl,
    datagrams: &'a mut VecDeque<(u8, u8, Bytes)>,
    datagram_bytes: &'a mut usize,
    max_datagram_queue: usize,
    datagrams_dropped: &'a mut u64,
}

impl MuxOut<'_> {
    fn chan(&mut self, id: u8) -> Option<&mut ChanIo> {
        match self.index.get(id as usize) {
            Some(&i) if i != 0 => self.chans.get_mut(i as usize - 1),
            _ => None,
        }
    }
}

impl FrameSink for MuxOut<'_> {
    fn len(&self) -> usize {
        self.taken
    }

    fn credit(&mut self, chan: u8, limit: u64) {
        self.taken += mux_frame::CONTROL_LEN;
        match chan {
            0 => self.conn_credit.set(limit),
            _ => {
                if let Some(c) = self.chan(chan) {
                    c.credit.set(limit);
                }
            }
        }
    }

    fn blocked(&mut self, chan: u8, limit: u64) {
        self.taken += mux_frame::CONTROL_LEN;
        match chan {
            0 => self.conn_blocked.set(limit),
            _ => {
                if let Some(c) = self.chan(chan) {
                    c.blocked.set(limit);
                }
            }
        }
    }

    fn data(&mut self, f: DataFrame<'_>) {
        self.taken += f.encoded_len();
        if f.unreliable {
            *self.datagram_bytes += f.range.len();
            self.datagrams.push_back((f.chan, f.ty, f.message.slice(f.range)));
            while *self.datagram_bytes > self.max_datagram_queue {
                let Some((_, _, d)) = self.datagrams.pop_front() else { break };
                *self.datagram_bytes -= d.len();
                *self.datagrams_dropped += 1;
            }
        } else if let Some(c) = self.chan(f.chan) {
            c.send.write(f.header);
            c.send.write_bytes(f.message.slice(f.range));
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("side", &self.side)
            .field("cid", &self.cid)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection for `params` on connection id `cid` with the peer at `remote` (`None`
    /// on a server that waits for the client's first packet), carrying `mux`. The
    /// channels of `params.unreliable` are made unreliable here, so start the mux (with
    /// the driver's waker) after this, through [`mux`](Self::mux): its handlers' `on_new`
    /// then sees each channel as it will be.
    pub fn new(
        side: Side,
        params: &SessionParams,
        cid: ConnectionId,
        remote: Option<SocketAddr>,
        mut mux: Mux,
        config: ConnectionConfig,
        now: Instant,
    ) -> Self {
        for &id in &params.unreliable {
            mux.set_unreliable(id, frame::MAX_DATAGRAM_MESSAGE);
        }
        let (c2s, s2c) = params.udp_secrets();
        let c2s = KeyChain::with_labels(LABELS, params.suite, c2s);
        let s2c = KeyChain::with_labels(LABELS, params.suite, s2c);
        let (send_chain, recv_chain) = match side {
            Side::Client => (c2s, s2c),
            Side::Server => (s2c, c2s),
        };
        let every = crate::codec::packet::update_interval(
            params.suite,
            config.mtu.max.max(config.mtu.base),
            config.rekey_packets,
        );
        let send_keys = SendKeys::new(send_chain, every);
        let recv_keys = RecvKeys::new(recv_chain);
        let mut index = [0u8; 128];
        let chans: Vec<ChanIo> = mux
            .channel_ids()
            .into_iter()
            .enumerate()
            .map(|(i, id)| {
                index[id as usize] = i as u8 + 1;
                ChanIo {
                    id,
                    send: SendBuf::new(),
                    recv: Assembler::new(),
                    rx: RxFrames::default(),
                    credit: Ctl::default(),
                    blocked: Ctl::default(),
                }
            })
            .collect();
        let mtu = Mtu::new(config.mtu);
        let mss = mtu.current() as u64;
        let cc = config.controller.build(mss);
        let rtt = RttEstimator::default();
        let pacer = Pacer::new(config.pacer, now, cc.window(), mss, rtt.get());
        Connection {
            side,
            cid,
            path: remote.map(Path::validated),
            candidate: None,
            largest_rx: None,
            config,
            send_keys,
            recv_keys,
            next_pn: 0,
            unsealed: Vec::new(),
            unsealed_tails: Vec::new(),
            tail: None,
            mux,
            chans,
            index,
            conn_credit: Ctl::default(),
            conn_blocked: Ctl::default(),
            recovery: Recovery::with_config(config.max_tracked_packets, config.recovery),
            acks: AckTracker::new(config.max_ack_ranges, config.max_ack_delay)
                .with_thinning(config.max_ack_threshold),
            rtt,
            cc,
            pacer,
            mtu,
            ecn: EcnValidator::new(config.ecn),
            ecn_rx: EcnCounts::default(),
            pacing_until: None,
            app_limited: false,
            // A client speaks first, with data if it has any, else a PING: the server
            // learns its address (and the session attaches) from that packet.
            probes: u8::from(side == Side::Client),
            last_rx: now,
            connected: false,
            close_reported: false,
            state: State::Open,
            events: VecDeque::new(),
            stats: ConnStats::default(),
            rr: 0,
            tmp: Vec::new(),
            going_away: None,
            close_why: String::new(),
            intake_stopped: false,
            path_responses: VecDeque::new(),
            datagrams: VecDeque::new(),
            datagram_bytes: 0,
            ack_ranges: Vec::new(),
            acked_packets: Vec::new(),
        }
    }

    fn dirs(&self) -> (Direction, Direction) {
        match self.side {
            Side::Client => (Direction::ClientToServer, Direction::ServerToClient),
            Side::Server => (Direction::ServerToClient, Direction::ClientToServer),
        }
    }

    /// The connection id.
    pub fn cid(&self) -> ConnectionId {
        self.cid
    }

    /// The session's mux (for application code on the driver's thread).
    pub fn mux(&mut self) -> &mut Mux {
        &mut self.mux
    }

    /// The counters.
    pub fn stats(&self) -> ConnStats {
        ConnStats {
            key_updates_sent: self.send_keys.updates(),
            key_updates_received: self.recv_keys.updates(),
            ..self.stats
        }
    }

    /// The RTT estimate.
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    /// Key updates done by this end and followed from the peer.
    pub fn key_updates(&self) -> (u64, u64) {
        (self.send_keys.updates(), self.recv_keys.updates())
    }

    /// The datagram size in use (path MTU discovery raises it from the base).
    pub fn mtu(&self) -> usize {
        self.mtu.current()
    }

    /// The counters of path MTU discovery.
    pub fn mtu_stats(&self) -> MtuStats {
        self.mtu.stats()
    }

    /// Whether congestion control is in slow start.
    pub fn in_slow_start(&self) -> bool {
        self.cc.in_slow_start()
    }

    /// The congestion window in bytes.
    pub fn window(&self) -> u64 {
        self.cc.window()
    }

    /// Whether the connection has ended (no more events, nothing to send).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn pto(&self) -> Duration {
        self.rtt.pto_base() + self.config.max_ack_delay
    }

    fn end(&mut self, reason: CloseReason) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.mux.close();
            self.report_closed(reason);
        }
    }

    fn report_closed(&mut self, reason: CloseReason) {
        if !self.close_reported {
            self.close_reported = true;
            self.events.push_back(Event::Closed(reason));
        }
    }

    /// Stops taking channel data from the peer (packets carrying some are not
    /// acknowledged) and handing messages to handlers, without going away yet: the first
    /// step of a server's drain, so that no message reaches a handler while other sessions
    /// go away. Idempotent.
    pub fn stop_intake(&mut self) {
        self.intake_stopped = true;
        self.mux.stop_intake();
    }

    /// Goes away gracefully (a server shutting down): from now on no channel data is taken
    /// from the peer (packets carrying some are not acknowledged), what this end has to
    /// send still goes, and once all of it is acknowledged a CLOSE with `code` follows.
    /// Idempotent.
    pub fn go_away(&mut self, code: u16) {
        if self.state == State::Open && self.going_away.is_none() {
            self.going_away = Some(code);
            self.stop_intake();
        }
    }

    /// Ends the connection now, however much it still had to send (a server whose
    /// shutdown grace period is over): the messages not yet wholly sent are discarded, and
    /// the CLOSE with `code` carries `reason(n)` for the `n` of them. Returns `n`, or
    /// `None` when the connection was closing already.
    pub fn cut_off(
        &mut self,
        now: Instant,
        code: u16,
        reason: impl FnOnce(usize) -> String,
    ) -> Option<usize> {
        if self.state != State::Open {
            return None;
        }
        let unsent = self.mux.unsent_messages();
        self.close_why = reason(unsent);
        self.close(now, code);
        Some(unsent)
    }

    /// Everything the mux had to send was sent and acknowledged.
    fn flushed(&self) -> bool {
        self.mux.queued() == 0
            && !self.mux.wants_send()
            && self.datagrams.is_empty()
            && !self.has_controls()
            && self.chans.iter().all(|c| c.send.all_acked())
    }

    /// Closes the connection: a CLOSE with `code` goes out, then the connection waits three
    /// PTOs (for the peer's last packets) and ends.
    pub fn close(&mut self, now: Instant, code: u16) {
        if self.state == State::Open {
            self.state = State::Closing { until: now + self.pto() * 3, close_sent: false, code };
            self.mux.close();
        }
    }

    /// What the mux refused: a violation, or (not the peer's fault) a message over the
    /// server's reassembly budget, which closes with code 4.
    fn mux_error(&mut self, now: Instant, e: crate::mux::MuxError) {
        match e {
            crate::mux::MuxError::OverBudget(_) | crate::mux::MuxError::SessionOverBudget(_) => {
                self.close_with(now, CloseCode::OverBudget, e.to_string());
            }
            e => self.violation(now, Violation::of(&e), e.to_string()),
        }
    }

    fn violation(&mut self, now: Instant, kind: Violation, why: String) {
        if self.state == State::Open {
            let s = &mut self.stats;
            *match kind {
                Violation::UnknownChannel => &mut s.unknown_channel,
                Violation::Decode => &mut s.decode_errors,
                Violation::Oversize => &mut s.oversize_messages,
                Violation::Protocol => &mut s.protocol_errors,
            } += 1;
        }
        self.close_with(now, CloseCode::Protocol, why);
    }

    fn close_with(&mut self, now: Instant, code: CloseCode, why: String) {
        if self.state == State::Open {
            self.close_why.clone_from(&why);
            self.state = State::Closing {
                until: now + self.pto() * 3,
                close_sent: false,
                code: code as u16,
            };
            self.mux.close();
            self.report_closed(CloseReason::Protocol(why));
        }
    }

    /// Whether the path was validated as carrying ECN (the peer's counts check out).
    pub fn ecn_capable(&self) -> bool {
        self.ecn.capable()
    }

    /// A datagram from `from` arrived at `now`, its ECN codepoint unknown. It is
    /// decrypted in place.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &mut [u8]) {
        self.handle_datagram_ecn(now, from, None, datagram)
    }

    /// A datagram from `from` arrived at `now` with the ECN codepoint `ecn` (where the
    /// socket reports it). It is decrypted in place.
    pub fn handle_datagram_ecn(
        &mut self,
        now: Instant,
        from: SocketAddr,
        ecn: Option<Ecn>,
        datagram: &mut [u8],
    ) {
        if matches!(self.state, State::Closed | State::Draining { .. }) {
            return;
        }
        let hdr = match packet::parse_header(datagram) {
            Ok(h) if h.cid == self.cid => h,
            _ => {
                self.stats.malformed += 1;
                return;
            }
        };
        let len = datagram.len();
        let (_, recv_dir) = self.dirs();
        let Some(plain) = self.recv_keys.open(recv_dir, &hdr, datagram) else {
            self.stats.auth_failed += 1;
            return;
        };
        self.on_packet(now, from, ecn, hdr, len, plain);
    }

    /// Datagrams that arrived together (one receive batch), in order: each as
    /// [`handle_datagram_ecn`](Self::handle_datagram_ecn) would take it, with the AEAD run
    /// over every packet of the current key phase at once (where the cipher has batch code,
    /// [`AeadKey::batches`](dap_net::enc::cipher::AeadKey::batches)).
    pub fn handle_datagrams(&mut self, now: Instant, batch: &mut [Incoming<'_>]) {
        if batch.len() < 2 || !self.config.batch_aead || !self.recv_keys.current().0.batches() {
            for d in batch {
                self.handle_datagram_ecn(now, d.from, d.ecn, d.data);
            }
            return;
        }
        // A group the AEAD opens at once, taken in whole while its plaintext is still in
        // the nearest cache: opening a whole receive batch (up to half a megabyte) before
        // reading any of it would read it all back from further away.
        for part in batch.chunks_mut(dap_net::enc::cipher::BATCH_GROUP) {
            self.open_group(now, part);
        }
    }

    /// Opens `batch` in one AEAD batch, then takes its packets in order.
    fn open_group(&mut self, now: Instant, batch: &mut [Incoming<'_>]) {
        if matches!(self.state, State::Closed | State::Draining { .. }) {
            return;
        }
        let (_, recv_dir) = self.dirs();
        let (key, phase) = self.recv_keys.current();
        // Headers first: the packets the current key opens go into one batch.
        // (A group is at most `BATCH_GROUP` packets: no allocation for it.)
        let mut hdrs: smallvec::SmallVec<[Option<Header>; 16]> = smallvec::SmallVec::new();
        let mut msgs: smallvec::SmallVec<[BatchMsg<'_>; 16]> = smallvec::SmallVec::new();
        for d in batch.iter_mut() {
            let h = match packet::parse_header(d.data) {
                Ok(h) if h.cid == self.cid && h.key_phase == phase => h,
                _ => {
                    hdrs.push(None);
                    continue;
                }
            };
            hdrs.push(Some(h));
            msgs.push(BatchMsg {
                nonce: packet::nonce(recv_dir, h.pn).bytes(),
                aad_len: packet::HEADER_LEN,
                buf: &mut *d.data,
            });
        }
        let mut ok = [false; dap_net::enc::cipher::BATCH_GROUP];
        let ok = &mut ok[..msgs.len().min(dap_net::enc::cipher::BATCH_GROUP)];
        key.open_batch(&mut msgs, ok);
        let generation = self.recv_keys.updates();
        drop(msgs);
        let mut results = ok.iter().copied();
        for (d, h) in batch.iter_mut().zip(hdrs) {
            if matches!(self.state, State::Closed | State::Draining { .. }) {
                return;
            }
            let Some(hdr) = h else {
                // Another phase, not ours, or malformed: the one-by-one path says which.
                self.handle_datagram_ecn(now, d.from, d.ecn, d.data);
                continue;
            };
            if !results.next().unwrap_or(false) {
                self.stats.auth_failed += 1;
                continue;
            }
            if self.recv_keys.updates() == generation {
                self.recv_keys.opened_current(hdr.pn);
            } else if !(self.recv_keys.updates() == generation + 1
                && self.recv_keys.late_for_previous(hdr.pn))
            {
                // A packet of this batch moved the keys on: one of the old phase is taken
                // only as a late packet of the previous key, as one by one it would be.
                self.stats.auth_failed += 1;
                continue;
            }
            let len = d.data.len();
            let plain = &mut d.data[packet::HEADER_LEN..len - TAG_LEN];
            self.on_packet(now, d.from, d.ecn, hdr, len, plain);
        }
    }

    /// An authentic packet, decrypted: its frames, `len` the datagram's size.
    fn on_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        ecn: Option<Ecn>,
        hdr: Header,
        len: usize,
        plain: &mut [u8],
    ) {
        if self.acks.check(hdr.pn) == Received::Duplicate {
            self.stats.duplicates += 1;
            return;
        }
        let plain: &[u8] = plain;
        // The bulk path's packet, one CHANNEL_DATA frame filling it: taken as the general
        // path below takes it, without a list of frames.
        if let Ok((Frame::ChannelData { chan, offset, data }, n)) = frame::decode(plain)
            && n == plain.len()
        {
            if !self.admit_data(now, chan, offset, data.len()) || !self.reorder_room(data.len()) {
                return;
            }
            self.note_packet(now, from, hdr.pn, len);
            let refused = self.intake_stopped;
            self.note_receipt(now, hdr.pn, true, refused, ecn);
            if self.state == State::Open && !refused {
                self.on_data(now, chan, offset, data);
            }
            return;
        }
        // Decode everything first: a bad frame refuses the whole packet, and data that runs
        // too far ahead drops it unacknowledged (the peer sends it again later).
        // (A packet of the bulk path holds one to three frames: no allocation for those.)
        let mut frames: smallvec::SmallVec<[Frame<'_>; 4]> = smallvec::SmallVec::new();
        let mut ahead = 0usize;
        for f in Frames::new(plain) {
            match f {
                Ok(f) => {
                    if let Frame::ChannelData { chan, offset, data } = f {
                        if !self.admit_data(now, chan, offset, data.len()) {
                            return;
                        }
                        ahead += data.len();
                    }
                    frames.push(f);
                }
                Err(e) => return self.violation(now, Violation::Decode, format!("bad frame: {e}")),
            }
        }
        if !self.reorder_room(ahead) {
            return;
        }
        self.note_packet(now, from, hdr.pn, len);
        let eliciting = frames.iter().any(|f| f.ack_eliciting());
        // Going away, a packet with data is not taken: it is not acknowledged (so the
        // peer never counts its data as delivered), its data is not delivered, but its
        // other frames (ACKs, credit) still count.
        let refused = self.intake_stopped
            && frames
                .iter()
                .any(|f| matches!(f, Frame::ChannelData { .. } | Frame::Datagram { .. }));
        // Path and close frames first; the rest below, once the packet is recorded as
        // received. (The frames borrow the datagram, not the connection.)
        for f in &frames {
            match *f {
                Frame::PathResponse(d) => self.on_path_response(d),
                Frame::PathChallenge(d) => self.path_responses.push_back(d),
                Frame::Close { code, reason } => {
                    let reason = String::from_utf8_lossy(reason).into_owned();
                    self.state = State::Draining { until: now + self.pto() * 3 };
                    self.mux.close();
                    self.report_closed(CloseReason::Peer { code, reason });
                    return;
                }
                _ => {}
            }
        }
        self.note_receipt(now, hdr.pn, eliciting, refused, ecn);
        for f in frames {
            if self.state != State::Open {
                return;
            }
            match f {
                Frame::Ack(a) => {
                    let mut ranges = std::mem::take(&mut self.ack_ranges);
                    ranges.clear();
                    ranges.extend(a.iter());
                    self.on_ack(now, &ranges, a.delay_us, a.ecn);
                    self.ack_ranges = ranges;
                }
                Frame::ChannelData { .. } | Frame::Datagram { .. } if refused => {}
                Frame::ChannelData { chan, offset, data } => self.on_data(now, chan, offset, data),
                Frame::Datagram { chan, ty, data } => self.on_datagram(now, chan, ty, data),
                Frame::Credit { chan, limit } => self.on_control(now, true, chan, limit),
                Frame::Blocked { chan, limit } => self.on_control(now, false, chan, limit),
                _ => {}
            }
        }
    }

    /// Whether a CHANNEL_DATA frame of `len` bytes at `offset` on `chan` may be taken; if
    /// not, its packet is dropped: a violation (an unknown or unreliable channel) ends the
    /// connection, data too far ahead of what was delivered is counted and left for the
    /// peer to send again.
    fn admit_data(&mut self, now: Instant, chan: u8, offset: u64, len: usize) -> bool {
        let Some(i) = self.find(chan) else {
            self.violation(now, Violation::UnknownChannel, format!("unknown channel {chan:#04x}"));
            return false;
        };
        if self.mux.is_unreliable(chan) {
            let why = format!("CHANNEL_DATA on unreliable channel {chan:#04x}");
            self.violation(now, Violation::Protocol, why);
            return false;
        }
        if offset + len as u64 > self.chans[i].recv.delivered() + self.config.max_reorder {
            self.stats.reorder_drops += 1;
            return false;
        }
        true
    }

    /// Whether `ahead` more bytes of channel data fit what the connection holds out of
    /// order in all (counted as a drop when they do not).
    fn reorder_room(&mut self, ahead: usize) -> bool {
        if ahead > 0
            && self.chans.iter().map(|c| c.recv.buffered()).sum::<usize>() + ahead
                > self.config.max_reorder_total
        {
            self.stats.reorder_drops += 1;
            return false;
        }
        true
    }

    /// An authentic, new packet of `len` bytes is taken: counted, its source seen.
    fn note_packet(&mut self, now: Instant, from: SocketAddr, pn: u64, len: usize) {
        self.stats.packets_in += 1;
        self.stats.bytes_in += len as u64;
        self.last_rx = now;
        self.on_path(from, pn, len as u64);
        if !self.connected {
            self.connected = true;
            self.events.push_back(Event::Connected);
        }
    }

    /// Records packet `pn` as received (to be acknowledged, unless `refused`) and its ECN
    /// codepoint.
    fn note_receipt(
        &mut self,
        now: Instant,
        pn: u64,
        eliciting: bool,
        refused: bool,
        ecn: Option<Ecn>,
    ) {
        if !refused {
            self.acks.on_received(now, pn, eliciting);
        }
        if let Some(e) = ecn {
            match e {
                Ecn::NotEct => {}
                Ecn::Ect0 => self.ecn_rx.ect0 += 1,
                Ecn::Ect1 => self.ecn_rx.ect1 += 1,
                Ecn::Ce => {
                    self.ecn_rx.ce += 1;
                    self.stats.ce_received += 1;
                    // The sender should hear of congestion at once (RFC 9000 §13.2.1).
                    self.acks.ack_now();
                }
            }
            // (Handed to the ACK tracker when an ACK is written, not on every packet.)
        }
    }

    /// A CREDIT or BLOCKED frame: to the mux as the §8 frame it stands for.
    fn on_control(&mut self, now: Instant, credit: bool, chan: u8, limit: u64) {
        self.tmp.clear();
        if credit {
            mux_frame::put_credit(&mut self.tmp, chan, limit);
        } else {
            mux_frame::put_blocked(&mut self.tmp, chan, limit);
        }
        let frame = std::mem::take(&mut self.tmp);
        if let Err(e) = self.mux.handle_payload(&frame) {
            self.violation(now, Violation::of(&e), e.to_string());
        }
        self.tmp = frame;
    }

    fn find(&self, chan: u8) -> Option<usize> {
        match self.index.get(chan as usize) {
            Some(&i) if i != 0 => Some(i as usize - 1),
            _ => None,
        }
    }

    fn on_data(&mut self, now: Instant, chan: u8, offset: u64, data: &[u8]) {
        let Some(i) = self.find(chan) else { return };
        self.mux.set_clock(now);
        let (c, mux) = (&mut self.chans[i], &mut self.mux);
        let (id, recv, rx) = (c.id, &mut c.recv, &mut c.rx);
        let mut result = Ok(());
        // The flow-control limit is the mux's, checked on each piece of payload.
        let limit = u64::MAX;
        let inserted = recv.insert(offset, data, limit, |b| {
            if result.is_ok() {
                result = rx.feed(id, mux, b);
            }
        });
        if inserted.is_err() {
            return;
        }
        // Messages completed before a violation are handed over first, as they would
        // have been frame by frame.
        self.mux.deliver();
        if let Err(e) = result {
            self.mux_error(now, e);
        }
    }

    /// An unreliable message: to the mux as the one-frame message it was.
    fn on_datagram(&mut self, now: Instant, chan: u8, ty: u8, data: &[u8]) {
        if !self.mux.is_unreliable(chan) {
            let why = format!("DATAGRAM on channel {chan:#04x}, not unreliable");
            return self.violation(now, Violation::Protocol, why);
        }
        self.stats.datagrams_received += 1;
        self.tmp.clear();
        mux_frame::put_data_header(
            &mut self.tmp,
            chan,
            ty,
            Some(data.len() as u32),
            false,
            data.len(),
        );
        self.tmp.extend_from_slice(data);
        let frame = std::mem::take(&mut self.tmp);
        if let Err(e) = self.mux.handle_payload(&frame) {
            self.violation(now, Violation::of(&e), e.to_string());
        }
        self.tmp = frame;
    }

    fn on_ack(
        &mut self,
        now: Instant,
        ranges: &[std::ops::RangeInclusive<u64>],
        delay_us: u32,
        ecn: Option<EcnCounts>,
    ) {
        let delay = Duration::from_micros(delay_us as u64);
        let largest_before = self.recovery.largest_acked();
        let max_ack_delay = self.config.max_ack_delay;
        let mut acked_large = false;
        // Newly acknowledged packets that went out marked ECT(0).
        let mut marked = 0u64;
        let (chans, mtu, cc, acks) = (&mut self.chans, &mut self.mtu, &mut self.cc, &mut self.acks);
        let acked_packets = &mut self.acked_packets;
        // A channel's bytes acknowledged, gathered while the packets' ranges follow on (the
        // packets come lowest first, and a bulk transfer's carry consecutive bytes): one
        // call to the send buffer per run, not per packet.
        let mut run: Option<(u16, u64, u64)> = None;
        let out = self.recovery.on_ack_with(
            now,
            ranges.iter().cloned(),
            delay,
            max_ack_delay,
            &mut self.rtt,
            |_, p| {
                acked_large |= mtu.is_large(p.bytes);
                marked += u64::from(p.info.ect);
                for s in p.info.iter() {
                    match s {
                        Sent::Data { idx, len, start } => match run.as_mut() {
                            Some((i, _, end)) if *i == idx && *end == start => {
                                *end += len as u64;
                            }
                            _ => {
                                if let Some((i, s, e)) =
                                    run.replace((idx, start, start + len as u64))
                                {
                                    chans[i as usize].send.on_acked(s..e);
                                }
                            }
                        },
                        Sent::MtuProbe(size) => {
                            if let Some(mss) = mtu.on_probe_acked(now, size as usize) {
                                cc.on_mss_update(mss as u64);
                            }
                        }
                        Sent::AckOf(largest) => acks.on_ack_acked(largest),
                        _ => {}
                    }
                }
                if p.in_flight {
                    acked_packets.push((p.time, p.bytes));
                }
            },
        );
        if let Some((i, s, e)) = run {
            self.chans[i as usize].send.on_acked(s..e);
        }
        self.stats.spurious_losses += out.spurious.len() as u64;
        if let Some(sent) = out.spurious.iter().filter(|s| s.in_flight).map(|s| s.sent).max() {
            self.cc.on_spurious_congestion(now, sent);
        }
        if let Some((pn, _)) = out.newest {
            self.send_keys.on_acked(pn);
        }
        self.cc.on_ack_packets(now, &self.acked_packets, self.app_limited, &self.rtt);
        self.acked_packets.clear();
        if acked_large {
            self.mtu.on_large_acked();
        }
        // ECN counts, from ACKs that raise the largest acknowledged (an older, reordered
        // ACK carries older counts).
        if self.recovery.largest_acked() > largest_before
            && let Some((_, newest)) = out.newest
        {
            let before = self.ecn.ce_reported();
            let o = self.ecn.on_ack(marked, ecn);
            self.stats.ce_reported += self.ecn.ce_reported() - before;
            if o.congestion {
                self.stats.ce_acks += 1;
                self.cc.on_ecn_ce(now, newest);
            }
        }
        if !out.lost.is_empty() {
            self.on_lost(now, out.lost, out.persistent_congestion, acked_large);
        }
        if out.newly_acked > 0 {
            self.probes = 0;
        }
        self.acks.set_rtt(self.rtt.has_sample().then(|| self.rtt.get()));
    }

    fn on_lost(
        &mut self,
        now: Instant,
        lost: Vec<(u64, SentPacket<Info>)>,
        persistent: bool,
        acked_large: bool,
    ) {
        let mut newest = None;
        let mut bytes = 0;
        let mut lost_large = false;
        let mut lost_marked = 0;
        for (_, p) in lost {
            lost_marked += u64::from(p.info.ect);
            // A lost MTU probe says the path is narrower, not that it is congested.
            if let Some(size) =
                p.info.iter().find_map(|s| if let Sent::MtuProbe(n) = s { Some(n) } else { None })
            {
                self.mtu.on_probe_lost(now, size as usize);
                continue;
            }
            self.stats.lost += 1;
            lost_large |= self.mtu.is_large(p.bytes);
            if p.in_flight {
                bytes += p.bytes;
                newest = newest.max(Some(p.time));
            }
            for s in p.info.iter() {
                match s {
                    // A lost ACK is not sent again: later ACKs cover its ranges.
                    Sent::MtuProbe(_) | Sent::AckOf(_) => {}
                    Sent::Datagram => self.stats.datagrams_lost += 1,
                    Sent::Data { idx, len, start } => {
                        self.chans[idx as usize].send.on_lost(start..start + len as u64)
                    }
                    // Absolute values: send the latest ones again.
                    Sent::Credit(None) => self.conn_credit.lost(),
                    Sent::Credit(Some(i)) => self.chans[i as usize].credit.lost(),
                    Sent::Blocked(None) => self.conn_blocked.lost(),
                    Sent::Blocked(Some(i)) => self.chans[i as usize].blocked.lost(),
                }
            }
        }
        if let Some(sent) = newest {
            self.stats.persistent_congestion += persistent as u64;
            self.cc.on_congestion_event(now, sent, persistent, bytes);
        }
        if let Some(mss) = self.mtu.on_loss_event(lost_large, acked_large) {
            self.cc.on_mss_update(mss as u64);
        }
        self.ecn.on_lost(lost_marked);
    }

    /// Accounts an authentic packet of `len` bytes, number `pn`, from `from`: the first one
    /// fixes a server's path (to be validated); one from another address, if it is the
    /// newest packet so far, starts validating that address (NAT rebinding, migration).
    fn on_path(&mut self, from: SocketAddr, pn: u64, len: u64) {
        let newest = self.largest_rx.is_none_or(|l| pn > l);
        self.largest_rx = Some(self.largest_rx.map_or(pn, |l| l.max(pn)));
        match self.path.as_mut() {
            None => {
                let mut p = Path::unvalidated(from);
                p.on_received(len);
                self.path = Some(p);
            }
            Some(p) if p.addr == from => p.on_received(len),
            Some(_) if newest => match self.candidate.as_mut() {
                Some(c) if c.addr == from => c.on_received(len),
                _ => {
                    self.stats.path_changes += 1;
                    let mut c = Path::unvalidated(from);
                    c.on_received(len);
                    self.candidate = Some(c);
                }
            },
            Some(_) => {}
        }
    }

    fn on_path_response(&mut self, d: [u8; 8]) {
        if self.path.as_mut().is_some_and(|p| p.on_response(d)) {
            return;
        }
        if let Some(mut c) = self.candidate.take() {
            if c.on_response(d) {
                // Moved: the new path's capacity and delay are unknown, so congestion
                // control and RTT start afresh (RFC 9000 §9.4).
                self.mtu = Mtu::new(self.config.mtu);
                let mss = self.mtu.current() as u64;
                self.cc = self.config.controller.build(mss);
                self.rtt = RttEstimator::default();
                self.acks.set_rtt(None);
                self.ecn = EcnValidator::new(self.config.ecn);
                self.path = Some(c);
                self.stats.migrations += 1;
                let to = self.path.as_ref().map(|p| p.addr);
                self.events.extend(to.map(Event::Migrated));
            } else {
                self.candidate = Some(c);
            }
        }
    }

    /// A packet that probes the candidate path: PATH_CHALLENGE (and whatever PATH_RESPONSE
    /// is owed), within the candidate's amplification budget. Not counted in flight: it
    /// belongs to no congestion controller yet.
    fn probe_candidate(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let pto = self.pto();
        let c = self.candidate.as_mut()?;
        if c.abandoned(now, pto) {
            self.candidate = None;
            return None;
        }
        let size = packet::OVERHEAD + frame::PATH_LEN * 2;
        if c.budget() < size as u64 {
            return None;
        }
        let d = c.challenge_due(now, pto)?;
        let addr = c.addr;
        let start = packet::begin(buf);
        frame::put_path_challenge(buf, d);
        if let Some(r) = self.path_responses.pop_front() {
            frame::put_path_response(buf, r);
        }
        self.seal(buf, start);
        let len = buf.len() - start;
        if let Some(c) = self.candidate.as_mut() {
            c.on_sent(len as u64);
        }
        Some(Transmit { destination: addr, size: buf.len(), segment_size: None, ecn: None })
    }

    /// Moves what the mux has to send into the channels' streams and control state,
    /// while what waits unsent is less than a congestion window.
    fn fill_from_mux(&mut self) {
        let budget = self.cc.window().max(64 << 10);
        for _ in 0..64 {
            let unsent: u64 = self.chans.iter().map(|c| c.send.unsent()).sum::<u64>()
                + self.datagram_bytes as u64;
            if unsent >= budget || !self.mux.wants_send() {
                break;
            }
            let mut out = MuxOut {
                taken: 0,
                chans: &mut self.chans,
                index: &self.index,
                conn_credit: &mut self.conn_credit,
                conn_blocked: &mut self.conn_blocked,
                datagrams: &mut self.datagrams,
                datagram_bytes: &mut self.datagram_bytes,
                max_datagram_queue: self.config.max_datagram_queue,
                datagrams_dropped: &mut self.stats.datagrams_dropped,
            };
            if !self.mux.poll_frames(&mut out, 64 << 10) {
                self.mux.notify_writable();
                if !self.mux.wants_send() {
                    break;
                }
            }
        }
        self.mux.notify_writable();
    }

    fn has_controls(&self) -> bool {
        self.conn_credit.pending
            || self.conn_blocked.pending
            || self.chans.iter().any(|c| c.credit.pending || c.blocked.pending)
    }

    fn has_data(&self) -> bool {
        !self.datagrams.is_empty() || self.chans.iter().any(|c| c.send.has_data())
    }

    /// Writes the next datagram (or batch of up to `max_segments` equal-size datagrams,
    /// for GSO) to send into `buf`, which it clears first; `None` when there is nothing to
    /// send now (pacing, the congestion window, or nothing to say).
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        max_segments: usize,
        buf: &mut Vec<u8>,
    ) -> Option<Transmit> {
        buf.clear();
        let size = self.mtu.current();
        let destination = self.path.as_ref()?.addr;
        match self.state {
            State::Closed | State::Draining { .. } => return None,
            State::Closing { close_sent: true, .. } => return None,
            State::Closing { until, close_sent: false, code } => {
                let start = packet::begin(buf);
                frame::put_close(buf, code, &self.close_why);
                self.seal(buf, start);
                self.state = State::Closing { until, close_sent: true, code };
                return Some(Transmit {
                    destination,
                    size: buf.len(),
                    segment_size: None,
                    ecn: None,
                });
            }
            State::Open => {}
        }
        if let Some(code) = self.going_away
            && self.flushed()
        {
            // Everything sent and acknowledged: refuse new writes, and close once what was
            // written meanwhile (accepted before the seal) is sent and acknowledged too.
            if !self.mux.inputs_sealed() {
                self.mux.seal_inputs();
            }
            if self.flushed() {
                self.close(now, code);
                return self.poll_transmit(now, max_segments, buf);
            }
        }
        if let Some(t) = self.probe_candidate(now, buf) {
            return Some(t);
        }
        self.fill_from_mux();
        if let Some(t) = self.send_mtu_probe(now, buf) {
            return Some(t);
        }
        // One GSO send carries at most 64 KiB: a longer batch would leave in two sends, the
        // second a short one, so it stops where one send is full.
        let max_segments = max_segments.min(MAX_TRANSMIT_BYTES / size).max(1);
        let mut segments = 0;
        // Full packets of channel data the window, the pacer and the record of packets in
        // flight allow without asking again (see `bulk_room`).
        let mut bulk = 0;
        while segments < max_segments {
            let start = buf.len();
            let in_bulk = bulk > 0;
            let built = if in_bulk {
                bulk -= 1;
                self.build_bulk(now, buf, size)
            } else {
                // Before validation, at most three times what the address sent us.
                let budget = self.path.as_ref().map_or(0, |p| p.budget());
                let room = (size as u64).min(budget) as usize;
                if room < packet::MIN_PACKET + frame::PATH_LEN + frame::ack_len(1, true) {
                    self.stats.amplification_limited += 1;
                    break;
                }
                self.build_packet(now, buf, room)
            };
            if !built {
                buf.truncate(start);
                break;
            }
            segments += 1;
            let len = buf.len() - start;
            if let Some(p) = self.path.as_mut() {
                p.on_sent(len as u64);
            }
            if len < size {
                // Only the last segment of a batch may be short (a room cut short by the
                // amplification limit makes a short packet too).
                break;
            }
            if !in_bulk {
                bulk = self.bulk_room(now, size);
            }
        }
        self.seal_unsealed(buf);
        if segments == 0 {
            return None;
        }
        let segment_size = (segments > 1).then_some(size);
        let mark = self.ecn.mark();
        let ecn = (mark != Ecn::NotEct).then_some(mark);
        Some(Transmit { destination, size: buf.len(), segment_size, ecn })
    }

    /// Seals the packet begun at `start` with the next packet number.
    fn seal(&mut self, buf: &mut Vec<u8>, start: usize) -> u64 {
        self.fill_tail(buf);
        let pn = self.next_pn;
        self.next_pn += 1;
        let (send_dir, _) = self.dirs();
        let (key, key_phase) = self.send_keys.for_packet(pn);
        let hdr = Header { cid: self.cid, key_phase, pn };
        packet::seal(key, send_dir, &hdr, buf, start);
        self.stats.packets_out += 1;
        self.stats.bytes_out += (buf.len() - start) as u64;
        pn
    }

    /// Closes the packet begun at `start` with the next packet number, to be sealed with
    /// the rest of the transmit by [`seal_unsealed`](Self::seal_unsealed).
    fn seal_later(&mut self, buf: &mut Vec<u8>, start: usize) -> u64 {
        // The packets waiting were numbered under the key about to be retired, or they are
        // a whole AEAD group, sealed now while in the nearest cache (a 64 KiB transmit is
        // not).
        if self.send_keys.updates_next() || self.unsealed.len() >= dap_net::enc::cipher::BATCH_GROUP
        {
            self.seal_unsealed(buf);
        }
        let pn = self.next_pn;
        self.next_pn += 1;
        let (_, key_phase) = self.send_keys.for_packet(pn);
        let hdr = Header { cid: self.cid, key_phase, pn };
        packet::finish_unsealed(&hdr, buf, start);
        self.unsealed.push((start, buf.len(), pn));
        self.unsealed_tails.push(self.tail.take().map(|(t, _)| t));
        self.stats.packets_out += 1;
        self.stats.bytes_out += (buf.len() - start) as u64;
        pn
    }

    /// Seals the packets [`seal_later`](Self::seal_later) closed, in one AEAD batch.
    fn seal_unsealed(&mut self, buf: &mut [u8]) {
        if self.unsealed.is_empty() {
            return;
        }
        let (send_dir, _) = self.dirs();
        let mut tails: smallvec::SmallVec<[&[u8]; 16]> = smallvec::SmallVec::new();
        for (&(_, end, _), t) in self.unsealed.iter().zip(&self.unsealed_tails) {
            let piece = t.and_then(|t| {
                let send = &self.chans[t.chan as usize].send;
                send.slice(t.chunk, t.start..t.end).or_else(|| {
                    // (Never: the piece was taken from one chunk, and nothing is dropped
                    // from the buffer before the packet is sealed. Copied in all the same.)
                    let at = end - TAG_LEN - (t.end - t.start) as usize;
                    send.copy_into(t.start..t.end, &mut buf[at..end - TAG_LEN]);
                    None
                })
            });
            tails.push(piece.unwrap_or(&[]));
        }
        packet::seal_batch_gather(self.send_keys.current(), send_dir, buf, &self.unsealed, &tails);
        self.unsealed.clear();
        self.unsealed_tails.clear();
    }

    /// Builds one packet of at most `size` bytes at the end of `buf`; returns whether it
    /// built one. It is sealed later, with the rest of the transmit.
    fn build_packet(&mut self, now: Instant, buf: &mut Vec<u8>, size: usize) -> bool {
        let start = packet::begin(buf);
        let limit = start + size - dap_net::enc::cipher::TAG_LEN;
        let mut info = Info::default();
        let mut eliciting = false;
        // An ACK when one is due, or riding along with anything else.
        let ack_due = self.acks.ack_due(now);
        let probing = self.probes > 0;
        let cwnd_room = self.recovery.bytes_in_flight() + size as u64 <= self.cc.window();
        let has_stuff = self.has_data() || self.has_controls() || !self.path_responses.is_empty();
        let want_data = has_stuff && (cwnd_room || probing);
        // RFC 9002 §7.8: while the window is not what holds the sender back (nothing to
        // send, or flow control), it must not grow; it may once the window limits again.
        if !cwnd_room {
            self.app_limited = false;
        } else if !has_stuff || self.recovery.is_full() {
            // Nothing the mux admitted is waiting, or the record of packets in flight is
            // full: either way not the window.
            self.app_limited = true;
        }
        // Pacing applies to what counts against the window.
        let paced = want_data
            && !probing
            && self
                .pacer
                .delay(now, size as u64, self.cc.window(), size as u64, self.rtt.get())
                .inspect(|&t| self.pacing_until = Some(t))
                .is_some();
        // With every tracking slot taken nothing ack-eliciting goes out: an untracked
        // packet's data could never be sent again if it were lost.
        let send_eliciting = ((want_data && !paced) || probing) && !self.recovery.is_full();
        let mut ack_of = None;
        if ack_due || (send_eliciting && self.acks.has_news()) {
            // The codepoints counted so far, once any packet came marked.
            if self.ecn_rx != EcnCounts::default() {
                self.acks.set_ecn(self.ecn_rx);
            }
            // As many of the most recent ranges as fit: older ones were acknowledged before.
            let fit = self.acks.ranges_fitting(limit - buf.len()).min(self.config.max_ack_ranges);
            if fit > 0 {
                ack_of = self.acks.write_ack(now, buf, fit);
                self.stats.acks_sent += u64::from(ack_of.is_some());
            }
        }
        // The current path's challenge, while it is not validated.
        let pto = self.pto();
        if let Some(d) = self.path.as_mut().and_then(|p| p.challenge_due(now, pto)) {
            frame::put_path_challenge(buf, d);
            eliciting = true;
        }
        if send_eliciting {
            self.pacing_until = None;
            eliciting |= self.put_path_responses(buf, limit);
            self.put_controls(buf, limit, &mut info);
            self.put_datagrams(buf, limit, size, &mut info);
            self.put_data(buf, limit, &mut info, false);
            if info.is_empty() && !probing {
                // Something waited but none of it went (an unreliable message too large,
                // control frames that did not fit beside an ACK): not the window.
                self.app_limited = true;
            }
            eliciting |= !info.is_empty();
            if probing && !eliciting {
                frame::put_ping(buf);
                eliciting = true;
            }
        } else if !self.recovery.is_full() {
            // A PATH_RESPONSE goes at once, whatever the window and the pacer (as a probe
            // does): the peer's validation of a new path waits on it, and after a NAT
            // rebinding the peer's ACKs, which would open the window, go to the old address
            // until it arrives.
            eliciting |= self.put_path_responses(buf, limit);
        }
        if buf.len() == start + packet::HEADER_LEN {
            buf.truncate(start);
            return false;
        }
        if eliciting && probing {
            self.probes -= 1;
        }
        // Markers, not contents (the packet's ack-elicitation was settled above).
        if let Some(largest) = ack_of {
            info.push(Sent::AckOf(largest));
        }
        self.finish_packet(now, buf, start, eliciting, info);
        true
    }

    /// How many packets of `size` bytes may follow the one just built in this transmit
    /// carrying channel data alone, each without the decisions [`build_packet`]
    /// (Self::build_packet) takes: none while anything else waits to be sent (an ACK, a
    /// control frame, an unreliable message, a path challenge or response), while probing,
    /// or before the path is validated; else as many as the congestion window, the pacer's
    /// bucket and the record of packets in flight all have room for, each asked once for
    /// the batch (`now` does not move within it, and nothing arrives).
    fn bulk_room(&mut self, now: Instant, size: usize) -> usize {
        let Some(path) = self.path.as_ref() else { return 0 };
        if !path.validated
            || path.challenging()
            || self.probes > 0
            || self.acks.has_news()
            || self.acks.ack_due(now)
            || !self.path_responses.is_empty()
            || !self.datagrams.is_empty()
            || self.has_controls()
        {
            return 0;
        }
        let window = self.cc.window();
        let cwnd = window.saturating_sub(self.recovery.bytes_in_flight()) / size as u64;
        let paced = self.pacer.tokens() / size as u64;
        (cwnd.min(paced) as usize).min(self.recovery.room())
    }

    /// A packet of channel data alone, as [`build_packet`](Self::build_packet) would build
    /// it where [`bulk_room`](Self::bulk_room) allows; returns whether there was data.
    fn build_bulk(&mut self, now: Instant, buf: &mut Vec<u8>, size: usize) -> bool {
        let start = packet::begin(buf);
        let limit = start + size - dap_net::enc::cipher::TAG_LEN;
        let mut info = Info::default();
        self.put_data(buf, limit, &mut info, self.gathers());
        if info.is_empty() {
            // The window had room and nothing waited: not the window (RFC 9002 §7.8).
            self.app_limited = true;
            buf.truncate(start);
            return false;
        }
        self.finish_packet(now, buf, start, true, info);
        true
    }

    /// Records the ECN mark, seals (now or with the rest of the transmit) and tracks the
    /// packet begun at `start`. Inlined, with `Recovery::on_sent`, into the packet loop: as
    /// calls, the sent record was copied from frame to frame, each copy waiting on the
    /// stores just made (session 20: some 1.5 % of the bulk sender's samples).
    #[inline(always)]
    fn finish_packet(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        start: usize,
        eliciting: bool,
        mut info: Info,
    ) {
        let mark = self.ecn.mark();
        self.ecn.on_sent(mark);
        info.ect = mark == Ecn::Ect0;
        // Sealed with the rest of the transmit where the cipher runs batches faster; at once
        // otherwise, while the packet is still in the nearest cache.
        let pn = if self.gathers() { self.seal_later(buf, start) } else { self.seal(buf, start) };
        let bytes = (buf.len() - start) as u64;
        if eliciting {
            self.pacer.on_sent(bytes);
        }
        let sent =
            SentPacket { time: now, bytes, ack_eliciting: eliciting, in_flight: eliciting, info };
        // Only an ACK-only packet can meet a full record (checked above); it carries nothing
        // to send again, so it need not be tracked.
        let _ = self.recovery.on_sent(pn, sent);
    }

    /// A path MTU probe, when one is due: PING padded to the size tried, alone in its
    /// datagram, on a validated path, within the congestion window and the pacer.
    fn send_mtu_probe(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        let size = self.mtu.probe_due(now)?;
        let path = self.path.as_ref()?;
        if !path.validated
            || !self.connected
            || self.probes > 0
            || self.recovery.is_full()
            || self.recovery.bytes_in_flight() + size as u64 > self.cc.window()
        {
            return None;
        }
        let destination = path.addr;
        let mss = self.mtu.current() as u64;
        if let Some(t) = self.pacer.delay(now, size as u64, self.cc.window(), mss, self.rtt.get()) {
            self.pacing_until = Some(t);
            return None;
        }
        let start = packet::begin(buf);
        frame::put_ping(buf);
        buf.resize(start + size - dap_net::enc::cipher::TAG_LEN, 0);
        let pn = self.seal(buf, start);
        self.mtu.on_probe_sent(size);
        self.pacer.on_sent(size as u64);
        if let Some(p) = self.path.as_mut() {
            p.on_sent(size as u64);
        }
        let mark = self.ecn.mark();
        self.ecn.on_sent(mark);
        let info = Info {
            items: smallvec::smallvec![Packed::pack(Sent::MtuProbe(size as u32))],
            ect: mark == Ecn::Ect0,
        };
        let sent = SentPacket {
            time: now,
            bytes: size as u64,
            ack_eliciting: true,
            in_flight: true,
            info,
        };
        let _ = self.recovery.on_sent(pn, sent);
        let ecn = (mark != Ecn::NotEct).then_some(mark);
        Some(Transmit { destination, size: buf.len(), segment_size: None, ecn })
    }

    fn put_controls(&mut self, buf: &mut Vec<u8>, limit: usize, info: &mut Info) {
        let mut one = |ctl: &mut Ctl, credit: bool, chan: u8, who: Option<u16>| {
            if ctl.pending && buf.len() + frame::CONTROL_LEN <= limit {
                let v = ctl.latest.expect("pending has a value");
                if credit {
                    frame::put_credit(buf, chan, v);
                    info.push(Sent::Credit(who));
                } else {
                    frame::put_blocked(buf, chan, v);
                    info.push(Sent::Blocked(who));
                }
                ctl.pending = false;
            }
        };
        one(&mut self.conn_credit, true, 0, None);
        one(&mut self.conn_blocked, false, 0, None);
        for (i, c) in self.chans.iter_mut().enumerate() {
            one(&mut c.credit, true, c.id, Some(i as u16));
            one(&mut c.blocked, false, c.id, Some(i as u16));
        }
    }

    /// Unreliable messages, oldest first, as many as fit; one too large for any packet of
    /// `size` bytes is dropped.
    fn put_datagrams(&mut self, buf: &mut Vec<u8>, limit: usize, size: usize, info: &mut Info) {
        while let Some((chan, ty, data)) = self.datagrams.front() {
            let need = frame::DATAGRAM_OVERHEAD + data.len();
            if need > size - packet::OVERHEAD {
                self.stats.datagrams_dropped += 1;
            } else if buf.len() + need <= limit {
                frame::put_datagram(buf, *chan, *ty, data);
                info.push(Sent::Datagram);
                self.stats.datagrams_sent += 1;
            } else {
                break;
            }
            let (_, _, d) = self.datagrams.pop_front().expect("front");
            self.datagram_bytes -= d.len();
        }
    }

    /// Puts the PATH_RESPONSEs owed that fit before `limit`; returns whether it put any.
    fn put_path_responses(&mut self, buf: &mut Vec<u8>, limit: usize) -> bool {
        let mut put = false;
        while let Some(d) = self.path_responses.front().copied() {
            if buf.len() + frame::PATH_LEN > limit {
                break;
            }
            frame::put_path_response(buf, d);
            self.path_responses.pop_front();
            put = true;
        }
        put
    }

    /// Whether packets are sealed with the rest of the transmit, in one AEAD batch, where
    /// the cipher runs batches faster (and so may read channel data where it lies).
    fn gathers(&self) -> bool {
        self.config.batch_aead && self.send_keys.current().batches()
    }

    /// Puts channel data in the packet being built, up to `limit`. With `gather` (a packet
    /// sealed later, in a batch), the last piece of the packet's last frame that lies in one
    /// chunk of its send buffer is not copied: its room is zeroed and the piece noted in
    /// `self.tail`, for the AEAD to read where it lies ([`seal_unsealed`](Self::seal_unsealed)).
    fn put_data(&mut self, buf: &mut Vec<u8>, limit: usize, info: &mut Info, gather: bool) {
        let n = self.chans.len();
        // Channels take turns, starting one further each packet; each fills what room is
        // left (in several frames where its bytes are not contiguous: lost ranges, or the
        // wrap of its ring). (Indices wrapped by a subtraction: a division a packet showed
        // in the bulk sender's profile.)
        let first = if self.rr < n { self.rr } else { 0 };
        for k in 0..n {
            let i = if first + k < n { first + k } else { first + k - n };
            loop {
                let room = limit.saturating_sub(buf.len() + frame::CHANNEL_DATA_OVERHEAD);
                if room == 0 || !self.chans[i].send.has_data() {
                    break;
                }
                let unsent_before = self.chans[i].send.unsent();
                let Some(r) = self.chans[i].send.take(room, u64::MAX) else { break };
                let (offset, end) = (r.start, r.end);
                // A piece left to the AEAD is the packet's last bytes only if no frame
                // follows it: this one does, so the piece before is copied in after all.
                self.fill_tail(buf);
                let c = &mut self.chans[i];
                frame::put_channel_data_header(buf, c.id, offset, (end - offset) as usize);
                if gather {
                    let (split, chunk) = c.send.last_piece(r.clone());
                    if split > offset {
                        c.send.copy_to(offset..split, buf);
                    }
                    let at = buf.len();
                    buf.resize(at + (end - split) as usize, 0);
                    let t = Tail { chan: i as u16, start: split, end, chunk };
                    self.tail = Some((t, at));
                } else {
                    c.send.copy_to(r, buf);
                }
                if self.chans[i].send.unsent() == unsent_before {
                    self.stats.retransmitted += end - offset;
                }
                info.push(Sent::data(i, offset, end));
            }
        }
        self.rr = if first + 1 < n { first + 1 } else { 0 };
    }

    /// Copies into the packet the piece [`put_data`](Self::put_data) left to the AEAD, if
    /// one waits (another frame follows it, or the packet is sealed at once).
    fn fill_tail(&mut self, buf: &mut [u8]) {
        if let Some((t, at)) = self.tail.take() {
            let n = (t.end - t.start) as usize;
            self.chans[t.chan as usize].send.copy_into(t.start..t.end, &mut buf[at..at + n]);
        }
    }

    /// Bytes of the packets in flight (for the tests' invariants).
    #[cfg(test)]
    pub(crate) fn bytes_in_flight(&self) -> u64 {
        self.recovery.bytes_in_flight()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        match self.state {
            State::Closed => return None,
            State::Closing { until, .. } | State::Draining { until } => return Some(until),
            State::Open => {}
        }
        at(self.acks.ack_deadline());
        at(self.recovery.timer(&self.rtt, self.config.max_ack_delay));
        at(self.pacing_until);
        at(self.mtu.timer());
        at(Some(self.last_rx + self.config.idle_timeout));
        at(self.mux.partial_deadline());
        if self.recovery.bytes_in_flight() == 0 {
            at(Some(self.last_rx + self.config.keepalive));
        }
        t
    }

    /// The time of [`poll_timeout`](Self::poll_timeout) has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Closed => return,
            State::Closing { until, .. } | State::Draining { until } => {
                if now >= until {
                    // A peer's CLOSE or a violation was reported when it happened; a local
                    // close is reported now that the closing period is over.
                    if let State::Closing { code, .. } = self.state {
                        self.report_closed(CloseReason::Local(code));
                    }
                    self.state = State::Closed;
                }
                return;
            }
            State::Open => {}
        }
        if now >= self.last_rx + self.config.idle_timeout {
            return self.end(CloseReason::IdleTimeout);
        }
        if let Some(chan) = self.mux.stalled_partial(now) {
            let why = crate::mux::MuxError::PartialTimeout(chan).to_string();
            return self.close_with(now, CloseCode::IdleTimeout, why);
        }
        if self.pacing_until.is_some_and(|t| t <= now) {
            self.pacing_until = None;
        }
        // A finished MTU search whose raise timer ran out starts again.
        let _ = self.mtu.probe_due(now);
        if self.recovery.timer(&self.rtt, self.config.max_ack_delay).is_some_and(|t| t <= now) {
            match self.recovery.on_timeout(now, &self.rtt, self.config.max_ack_delay) {
                Timeout::Lost { lost, persistent_congestion } => {
                    self.on_lost(now, lost, persistent_congestion, false)
                }
                Timeout::Probe(n) => {
                    self.stats.ptos += 1;
                    self.probes = n;
                    if let Some(mss) = self.mtu.on_pto(self.recovery.pto_count()) {
                        self.cc.on_mss_update(mss as u64);
                    }
                }
            }
        }
        if self.recovery.bytes_in_flight() == 0 && now >= self.last_rx + self.config.keepalive {
            self.probes = self.probes.max(1);
        }
    }
}

#[cfg(test)]
mod packed_tests {
    use super::{Packed, Sent};

    #[test]
    fn every_kind_of_sent_item_packs_and_unpacks_to_itself() {
        let all = [
            Sent::Data { idx: 0, len: 0, start: 0 },
            Sent::Data { idx: u16::MAX, len: u32::MAX, start: u64::MAX },
            Sent::Data { idx: 7, len: 1_419, start: 1 << 40 },
            Sent::Credit(None),
            Sent::Credit(Some(0)),
            Sent::Credit(Some(u16::MAX)),
            Sent::Blocked(None),
            Sent::Blocked(Some(3)),
            Sent::MtuProbe(1_452),
            Sent::MtuProbe(u32::MAX),
            Sent::Datagram,
            Sent::AckOf(0),
            Sent::AckOf(u64::MAX),
        ];
        for s in all {
            assert_eq!(Packed::pack(s).unpack(), s);
        }
    }
}
