//! UDP frames: what a packet's decrypted payload is made of, one after another. Every
//! integer is big-endian and of fixed width (`docs/PROTOCOL.md` §11.3).
//!
//! | type | frame | fields after the type byte |
//! |---|---|---|
//! | `0x00` | PADDING | none (runs of zero bytes) |
//! | `0x01` | PING | none |
//! | `0x02` | ACK | largest u64, ack delay u32 (µs), range count u16, first range u32, then per range: gap u32, length u32 |
//! | `0x03` | ACK_ECN | as ACK, then ECT(0), ECT(1) and CE counts, u64 each |
//! | `0x04` | CHANNEL_DATA | channel u8, offset u64, length u16, data |
//! | `0x05` | CREDIT | channel u8 (0: connection), limit u64 |
//! | `0x06` | BLOCKED | channel u8 (0: connection), limit u64 |
//! | `0x07` | DATAGRAM | channel u8, message type u8, length u16, data |
//! | `0x08` | PATH_CHALLENGE | 8 bytes |
//! | `0x09` | PATH_RESPONSE | 8 bytes |
//! | `0x0a` | CLOSE | code u16, reason length u8 (≤ 123), reason |

use std::ops::RangeInclusive;

use crate::codec::DecodeError;
use crate::codec::frame::{CONNECTION, valid_channel_id};

/// Frame type bytes.
pub mod ty {
    /// PADDING.
    pub const PADDING: u8 = 0x00;
    /// PING.
    pub const PING: u8 = 0x01;
    /// ACK.
    pub const ACK: u8 = 0x02;
    /// ACK with ECN counts.
    pub const ACK_ECN: u8 = 0x03;
    /// Reliable channel data.
    pub const CHANNEL_DATA: u8 = 0x04;
    /// Absolute flow-control credit.
    pub const CREDIT: u8 = 0x05;
    /// Blocked on credit.
    pub const BLOCKED: u8 = 0x06;
    /// An unreliable message.
    pub const DATAGRAM: u8 = 0x07;
    /// Path validation: the challenge.
    pub const PATH_CHALLENGE: u8 = 0x08;
    /// Path validation: the response.
    pub const PATH_RESPONSE: u8 = 0x09;
    /// The connection closes.
    pub const CLOSE: u8 = 0x0a;
}

/// The highest byte offset (exclusive) a channel's data may reach: 2^62.
pub const MAX_OFFSET: u64 = 1 << 62;
/// The longest CLOSE reason (bytes of UTF-8).
pub const MAX_REASON: usize = 123;
/// Bytes a CHANNEL_DATA frame adds to its data.
pub const CHANNEL_DATA_OVERHEAD: usize = 1 + 1 + 8 + 2;
/// Bytes a DATAGRAM frame adds to its data.
pub const DATAGRAM_OVERHEAD: usize = 1 + 1 + 1 + 2;
/// Bytes of a CREDIT or BLOCKED frame.
pub const CONTROL_LEN: usize = 1 + 1 + 8;
/// The largest message of an unreliable channel: one DATAGRAM frame in a datagram of the
/// base size every path carries (1,200 − 33 − 5).
pub const MAX_DATAGRAM_MESSAGE: usize =
    super::packet::MIN_DATAGRAM - super::packet::OVERHEAD - DATAGRAM_OVERHEAD;
/// Bytes of a PATH_CHALLENGE or PATH_RESPONSE frame.
pub const PATH_LEN: usize = 1 + 8;

/// ECN counts carried by ACK_ECN: packets received with each codepoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EcnCounts {
    /// ECT(0).
    pub ect0: u64,
    /// ECT(1).
    pub ect1: u64,
    /// CE (congestion experienced).
    pub ce: u64,
}

/// A decoded ACK frame; its ranges were checked when it was decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack<'a> {
    /// The largest packet number acknowledged.
    pub largest: u64,
    /// How long the sender held the ACK after receiving `largest`, in microseconds.
    pub delay_us: u32,
    first: u32,
    /// `count` × (gap u32, length u32).
    ranges: &'a [u8],
    /// ECN counts (ACK_ECN).
    pub ecn: Option<EcnCounts>,
}

impl<'a> Ack<'a> {
    /// The acknowledged packet numbers, as inclusive ranges from the highest down.
    pub fn iter(&self) -> AckRanges<'a> {
        AckRanges {
            next: Some(self.largest.saturating_sub(self.first as u64)..=self.largest),
            rest: self.ranges,
        }
    }
}

/// The ranges of an [`Ack`], highest first.
#[derive(Clone, Debug)]
pub struct AckRanges<'a> {
    next: Option<RangeInclusive<u64>>,
    rest: &'a [u8],
}

impl Iterator for AckRanges<'_> {
    type Item = RangeInclusive<u64>;

    fn next(&mut self) -> Option<RangeInclusive<u64>> {
        let cur = self.next.take()?;
        if self.rest.len() >= 8 {
            let gap = u32::from_be_bytes(self.rest[..4].try_into().expect("4 bytes")) as u64;
            let len = u32::from_be_bytes(self.rest[4..8].try_into().expect("4 bytes")) as u64;
            self.rest = &self.rest[8..];
            // Checked at decode: no underflow.
            let hi = cur.start() - gap - 2;
            self.next = Some(hi - len..=hi);
        }
        Some(cur)
    }
}

/// A decoded frame, borrowing from the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// This many padding bytes.
    Padding(usize),
    /// Asks for an acknowledgement; nothing else.
    Ping,
    /// Acknowledgements.
    Ack(Ack<'a>),
    /// Bytes of a channel's reliable stream at `offset`.
    ChannelData {
        /// The channel.
        chan: u8,
        /// Where `data` starts in the channel's stream.
        offset: u64,
        /// The bytes.
        data: &'a [u8],
    },
    /// The absolute limit of a channel's (or, on channel 0, the connection's) data.
    Credit {
        /// The channel, or 0.
        chan: u8,
        /// The limit.
        limit: u64,
    },
    /// The sender has data and no credit at `limit`.
    Blocked {
        /// The channel, or 0.
        chan: u8,
        /// The limit.
        limit: u64,
    },
    /// A whole message of an unreliable channel.
    Datagram {
        /// The channel.
        chan: u8,
        /// The application's message type.
        ty: u8,
        /// The message.
        data: &'a [u8],
    },
    /// Path validation: echo this in a PATH_RESPONSE.
    PathChallenge([u8; 8]),
    /// Path validation: the echo of a challenge.
    PathResponse([u8; 8]),
    /// The connection closes.
    Close {
        /// The close code (as the stream's, `docs/PROTOCOL.md` §7).
        code: u16,
        /// The reason, UTF-8 as sent (not checked).
        reason: &'a [u8],
    },
}

impl Frame<'_> {
    /// Whether a packet carrying this frame must be acknowledged (all but PADDING, ACK and
    /// CLOSE).
    pub fn ack_eliciting(&self) -> bool {
        !matches!(self, Frame::Padding(_) | Frame::Ack(_) | Frame::Close { .. })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn chan(&mut self, connection_ok: bool) -> Result<u8, DecodeError> {
        let c = self.u8()?;
        if valid_channel_id(c) || (connection_ok && c == CONNECTION) {
            Ok(c)
        } else {
            Err(DecodeError::Malformed("bad channel id"))
        }
    }
}

#[inline(never)]
fn decode_ack<'a>(r: &mut Reader<'a>, ecn: bool) -> Result<Ack<'a>, DecodeError> {
    let largest = r.u64()?;
    let delay_us = r.u32()?;
    let count = r.u16()? as usize;
    let first = r.u32()?;
    let ranges = r.take(count * 8)?;
    let mut low = largest.checked_sub(first as u64).ok_or(DecodeError::Malformed("ack range"))?;
    for pair in ranges.chunks_exact(8) {
        let gap = u32::from_be_bytes(pair[..4].try_into().expect("4 bytes")) as u64;
        let len = u32::from_be_bytes(pair[4..].try_into().expect("4 bytes")) as u64;
        let hi = low.checked_sub(gap + 2).ok_or(DecodeError::Malformed("ack range"))?;
        low = hi.checked_sub(len).ok_or(DecodeError::Malformed("ack range"))?;
    }
    let ecn =
        if ecn { Some(EcnCounts { ect0: r.u64()?, ect1: r.u64()?, ce: r.u64()? }) } else { None };
    Ok(Ack { largest, delay_us, first, ranges, ecn })
}

/// Reads the frame at the start of `buf`; returns it and the bytes it took.
///
/// # Errors
/// A truncated frame, an unknown type, a bad channel id, ACK ranges below packet 0, data
/// past [`MAX_OFFSET`], or a reason over [`MAX_REASON`]. Each is a protocol violation by
/// the peer (the packet authenticated).
// Inlined into the frame loop, so that the frame stays in registers rather than going
// through memory on every packet.
#[inline]
pub fn decode(buf: &[u8]) -> Result<(Frame<'_>, usize), DecodeError> {
    let mut r = Reader(buf);
    let t = r.u8()?;
    let frame = match t {
        ty::PADDING => {
            let n = 1 + r.0.iter().take_while(|&&b| b == 0).count();
            r.0 = &r.0[n - 1..];
            Frame::Padding(n)
        }
        ty::PING => Frame::Ping,
        ty::ACK | ty::ACK_ECN => Frame::Ack(decode_ack(&mut r, t == ty::ACK_ECN)?),
        ty::CHANNEL_DATA => {
            let chan = r.chan(false)?;
            let offset = r.u64()?;
            let len = r.u16()? as usize;
            let data = r.take(len)?;
            if offset.checked_add(len as u64).is_none_or(|end| end > MAX_OFFSET) {
                return Err(DecodeError::Malformed("channel data past the maximum offset"));
            }
            Frame::ChannelData { chan, offset, data }
        }
        ty::CREDIT => Frame::Credit { chan: r.chan(true)?, limit: r.u64()? },
        ty::BLOCKED => Frame::Blocked { chan: r.chan(true)?, limit: r.u64()? },
        ty::DATAGRAM => {
            let chan = r.chan(false)?;
            let ty = r.u8()?;
            let len = r.u16()? as usize;
            Frame::Datagram { chan, ty, data: r.take(len)? }
        }
        ty::PATH_CHALLENGE => Frame::PathChallenge(r.take(8)?.try_into().expect("8 bytes")),
        ty::PATH_RESPONSE => Frame::PathResponse(r.take(8)?.try_into().expect("8 bytes")),
        ty::CLOSE => {
            let code = r.u16()?;
            let len = r.u8()? as usize;
            if len > MAX_REASON {
                return Err(DecodeError::Malformed("close reason too long"));
            }
            Frame::Close { code, reason: r.take(len)? }
        }
        other => return Err(DecodeError::BadFrameType(other)),
    };
    Ok((frame, buf.len() - r.0.len()))
}

/// The frames of a payload, in order; stops at the first error (the packet is then
/// refused whole).
#[derive(Clone, Debug)]
pub struct Frames<'a>(&'a [u8]);

impl<'a> Frames<'a> {
    /// The frames of `payload`.
    pub fn new(payload: &'a [u8]) -> Self {
        Frames(payload)
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, DecodeError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        match decode(self.0) {
            Ok((f, n)) => {
                self.0 = &self.0[n..];
                Some(Ok(f))
            }
            Err(e) => {
                self.0 = &[];
                Some(Err(e))
            }
        }
    }
}

/// Appends a PING.
pub fn put_ping(out: &mut Vec<u8>) {
    out.push(ty::PING);
}

/// Appends `n` bytes of PADDING.
pub fn put_padding(out: &mut Vec<u8>, n: usize) {
    out.resize(out.len() + n, ty::PADDING);
}

/// Bytes of an ACK frame with `ranges` ranges (ECN counts included or not).
pub fn ack_len(ranges: usize, ecn: bool) -> usize {
    1 + 8 + 4 + 2 + 4 + 8 * ranges.saturating_sub(1) + if ecn { 24 } else { 0 }
}

/// Appends an ACK (ACK_ECN with `ecn`) for `ranges`: inclusive, disjoint, non-adjacent
/// ranges of packet numbers, highest first; at most 65,536 of them and each spanning less
/// than 2^32 packets (the caller keeps its ranges within that). Returns `false`, appending
/// nothing, when `ranges` is empty or breaks those rules.
pub fn put_ack(
    out: &mut Vec<u8>,
    ranges: &[RangeInclusive<u64>],
    delay_us: u32,
    ecn: Option<EcnCounts>,
) -> bool {
    let Some(first) = ranges.first() else { return false };
    if ranges.len() > 1 << 16 {
        return false;
    }
    let span = |r: &RangeInclusive<u64>| {
        r.end().checked_sub(*r.start()).and_then(|d| u32::try_from(d).ok())
    };
    let Some(first_len) = span(first) else { return false };
    let start = out.len();
    out.push(if ecn.is_some() { ty::ACK_ECN } else { ty::ACK });
    out.extend_from_slice(&first.end().to_be_bytes());
    out.extend_from_slice(&delay_us.to_be_bytes());
    out.extend_from_slice(&((ranges.len() - 1) as u16).to_be_bytes());
    out.extend_from_slice(&first_len.to_be_bytes());
    let mut low = *first.start();
    for r in &ranges[1..] {
        let gap = low.checked_sub(r.end() + 2).and_then(|g| u32::try_from(g).ok());
        let (Some(gap), Some(len)) = (gap, span(r)) else {
            out.truncate(start);
            return false;
        };
        out.extend_from_slice(&gap.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        low = *r.start();
    }
    if let Some(e) = ecn {
        for c in [e.ect0, e.ect1, e.ce] {
            out.extend_from_slice(&c.to_be_bytes());
        }
    }
    true
}

/// Appends a CHANNEL_DATA frame (`data` at most 65,535 bytes).
pub fn put_channel_data(out: &mut Vec<u8>, chan: u8, offset: u64, data: &[u8]) {
    put_channel_data_header(out, chan, offset, data.len());
    out.extend_from_slice(data);
}

/// Appends a CHANNEL_DATA frame's header; its `len` bytes follow, appended by the caller.
pub fn put_channel_data_header(out: &mut Vec<u8>, chan: u8, offset: u64, len: usize) {
    debug_assert!(len <= u16::MAX as usize);
    let mut h = [0u8; CHANNEL_DATA_OVERHEAD];
    h[0] = ty::CHANNEL_DATA;
    h[1] = chan;
    h[2..10].copy_from_slice(&offset.to_be_bytes());
    h[10..].copy_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&h);
}

/// Appends a CREDIT frame.
pub fn put_credit(out: &mut Vec<u8>, chan: u8, limit: u64) {
    out.extend_from_slice(&[ty::CREDIT, chan]);
    out.extend_from_slice(&limit.to_be_bytes());
}

/// Appends a BLOCKED frame.
pub fn put_blocked(out: &mut Vec<u8>, chan: u8, limit: u64) {
    out.extend_from_slice(&[ty::BLOCKED, chan]);
    out.extend_from_slice(&limit.to_be_bytes());
}

/// Appends a DATAGRAM frame (`data` at most 65,535 bytes).
pub fn put_datagram(out: &mut Vec<u8>, chan: u8, msg_ty: u8, data: &[u8]) {
    debug_assert!(data.len() <= u16::MAX as usize);
    out.extend_from_slice(&[ty::DATAGRAM, chan, msg_ty]);
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

/// Appends a PATH_CHALLENGE.
pub fn put_path_challenge(out: &mut Vec<u8>, data: [u8; 8]) {
    out.push(ty::PATH_CHALLENGE);
    out.extend_from_slice(&data);
}

/// Appends a PATH_RESPONSE.
pub fn put_path_response(out: &mut Vec<u8>, data: [u8; 8]) {
    out.push(ty::PATH_RESPONSE);
    out.extend_from_slice(&data);
}

/// Appends a CLOSE; the reason is cut to [`MAX_REASON`] bytes on a character boundary.
pub fn put_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out.push(ty::CLOSE);
    out.extend_from_slice(&code.to_be_bytes());
    out.push(end as u8);
    out.extend_from_slice(&reason.as_bytes()[..end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(buf: &[u8]) -> Vec<Frame<'_>> {
        Frames::new(buf).collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn every_frame_round_trips() {
        let mut out = Vec::new();
        put_ping(&mut out);
        put_padding(&mut out, 5);
        put_channel_data(&mut out, b'E', 1 << 40, b"hello");
        put_credit(&mut out, 0, 1 << 20);
        put_blocked(&mut out, b'E', 99);
        put_datagram(&mut out, b'V', 7, b"rtp");
        put_path_challenge(&mut out, [1; 8]);
        put_path_response(&mut out, [2; 8]);
        put_close(&mut out, 3, "bye");
        let f = all(&out);
        assert_eq!(
            f,
            [
                Frame::Ping,
                Frame::Padding(5),
                Frame::ChannelData { chan: b'E', offset: 1 << 40, data: b"hello" },
                Frame::Credit { chan: 0, limit: 1 << 20 },
                Frame::Blocked { chan: b'E', limit: 99 },
                Frame::Datagram { chan: b'V', ty: 7, data: b"rtp" },
                Frame::PathChallenge([1; 8]),
                Frame::PathResponse([2; 8]),
                Frame::Close { code: 3, reason: b"bye" },
            ]
        );
        assert!(f[0].ack_eliciting() && !f[1].ack_eliciting() && !f[8].ack_eliciting());
    }

    #[test]
    fn ack_ranges_round_trip() {
        let ranges = [100..=105, 90..=97, 3..=3, 0..=1];
        for ecn in [None, Some(EcnCounts { ect0: 5, ect1: 0, ce: 1 })] {
            let mut out = Vec::new();
            assert!(put_ack(&mut out, &ranges, 250, ecn));
            assert_eq!(out.len(), ack_len(ranges.len(), ecn.is_some()));
            let [Frame::Ack(a)] = all(&out)[..] else { panic!("one ack") };
            assert_eq!((a.largest, a.delay_us, a.ecn), (105, 250, ecn));
            assert_eq!(a.iter().collect::<Vec<_>>(), ranges);
        }
        let mut out = Vec::new();
        assert!(!put_ack(&mut out, &[], 0, None));
        assert!(!put_ack(&mut out, &[5..=6, 6..=6], 0, None), "adjacent ranges");
        assert!(out.is_empty());
    }

    #[test]
    fn bad_frames_are_refused() {
        // An ACK whose first range goes below packet 0.
        let mut a = vec![ty::ACK];
        a.extend_from_slice(&5u64.to_be_bytes());
        a.extend_from_slice(&0u32.to_be_bytes());
        a.extend_from_slice(&0u16.to_be_bytes());
        a.extend_from_slice(&6u32.to_be_bytes());
        assert_eq!(decode(&a), Err(DecodeError::Malformed("ack range")));
        // A gap below packet 0.
        let mut b = vec![ty::ACK];
        b.extend_from_slice(&5u64.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(decode(&b), Err(DecodeError::Malformed("ack range")));
        // Data past 2^62, a bad channel, an unknown type, a long reason, truncation.
        let mut c = Vec::new();
        put_channel_data(&mut c, b'E', MAX_OFFSET - 1, b"ab");
        assert!(decode(&c).is_err());
        assert!(decode(&[ty::CREDIT, b' ', 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode(&[ty::CHANNEL_DATA, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert_eq!(decode(&[0x77]), Err(DecodeError::BadFrameType(0x77)));
        let mut d = vec![ty::CLOSE, 0, 0, 124];
        d.extend_from_slice(&[b'x'; 124]);
        assert!(decode(&d).is_err());
        assert_eq!(decode(&[ty::PATH_CHALLENGE, 1, 2]), Err(DecodeError::Truncated));
        let mut e = Vec::new();
        put_datagram(&mut e, b'V', 1, b"abc");
        e.pop();
        assert_eq!(decode(&e), Err(DecodeError::Truncated));
        // An error ends the iteration.
        let mut f = vec![ty::PING, 0x77, ty::PING];
        let got: Vec<_> = Frames::new(&f).collect();
        assert_eq!(got.len(), 2);
        f.clear();
    }
}
