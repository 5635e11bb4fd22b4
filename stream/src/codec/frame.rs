//! Channel frames: the content of a stream packet's payload, one after another.
//!
//! ```text
//! 0        1        2        3        4                               8
//! +--------+--------+--------+--------+--------------------------------+
//! | chan   | type   | flags  | 0      | length (u32, big-endian)       |
//! +--------+--------+--------+--------+--------------------------------+
//! | total (u32) if flags & FIRST and not CTRL |  payload (length bytes) ...
//! ```
//!
//! A message is one or more data frames of one channel: the first has `FIRST` and carries
//! the message's total length (checked against the receiver's limit before any byte is
//! kept), every one but the last has `MORE`. Frames of different channels interleave freely;
//! frames of one channel's message arrive in order. `CTRL` frames carry flow control: CREDIT
//! (an absolute limit, so a repeated frame grants nothing twice) and BLOCKED (the sender
//! waits on credit at that limit, which lets the receiver grow its window).

use super::DecodeError;

/// Bytes of a frame header without the `total` field.
pub const HEADER_LEN: usize = 8;
/// Bytes of the `total` field of a message's first frame.
pub const TOTAL_LEN: usize = 4;

/// First frame of a message: the header is followed by the message's total length.
pub const FLAG_FIRST: u8 = 0x01;
/// More frames of this message follow.
pub const FLAG_MORE: u8 = 0x02;
/// A control frame: `type` is a [`Control`] kind, not an application type.
pub const FLAG_CTRL: u8 = 0x80;
const KNOWN_FLAGS: u8 = FLAG_FIRST | FLAG_MORE | FLAG_CTRL;

/// Channel id of connection-level control frames.
pub const CONNECTION: u8 = 0;

/// Control frame kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Control {
    /// Payload: u64 big-endian, the absolute limit: the receiver of this frame may send
    /// data-frame payload bytes on the channel (or, on channel 0, on the whole connection)
    /// until its running total since the stream began reaches this value. Only an increase
    /// counts, so a repeated or late frame changes nothing.
    Credit = 1,
    /// Payload: u64 big-endian, the limit at which the sender of this frame has data waiting
    /// and no credit: the receiver may grow its window.
    Blocked = 2,
}

/// Bytes of a control frame's payload.
pub const CONTROL_PAYLOAD_LEN: usize = 8;

/// Whether `id` may name a channel: a printable ASCII byte other than space.
pub fn valid_channel_id(id: u8) -> bool {
    (0x21..=0x7e).contains(&id)
}

/// A decoded frame, borrowing its payload from the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A piece of a message.
    Data {
        /// The channel.
        chan: u8,
        /// The application's message type.
        ty: u8,
        /// `Some(total)` on the first frame of a message.
        first: Option<u32>,
        /// More frames of this message follow.
        more: bool,
        /// The bytes.
        payload: &'a [u8],
    },
    /// Flow-control credit for a channel, or for the connection when `chan` is
    /// [`CONNECTION`].
    Credit {
        /// The channel, or 0.
        chan: u8,
        /// The absolute limit of data bytes the receiver of the frame may have sent.
        limit: u64,
    },
    /// The peer has data waiting for credit on a channel (or, on [`CONNECTION`], on the
    /// connection) and has used everything up to `limit`.
    Blocked {
        /// The channel, or 0.
        chan: u8,
        /// The limit the peer is blocked at.
        limit: u64,
    },
}

/// A frame's header, read before its payload is all there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// A control frame: [`CONTROL_LEN`] bytes in all, header included.
    Control,
    /// A data frame whose `len` payload bytes follow the `head_len` bytes of its header.
    Data {
        /// The channel.
        chan: u8,
        /// The application's message type.
        ty: u8,
        /// `Some(total)` on the first frame of a message.
        first: Option<u32>,
        /// More frames of this message follow.
        more: bool,
        /// Payload bytes.
        len: usize,
        /// Header bytes.
        head_len: usize,
    },
}

/// Reads the header of the frame at the start of `buf`, checked as [`decode`] checks it;
/// the payload need not be there.
///
/// # Errors
/// [`DecodeError::Truncated`] while `buf` is shorter than the header; the header errors of
/// [`decode`] otherwise.
pub fn decode_head(buf: &[u8]) -> Result<Head, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Truncated);
    }
    let (chan, ty, flags) = (buf[0], buf[1], buf[2]);
    if buf[3] != 0 || flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::Malformed("reserved bits set"));
    }
    let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if flags & FLAG_CTRL != 0 {
        if flags != FLAG_CTRL {
            return Err(DecodeError::Malformed("data flags on a control frame"));
        }
        if chan != CONNECTION && !valid_channel_id(chan) {
            return Err(DecodeError::Malformed("bad channel id"));
        }
        if ty != Control::Credit as u8 && ty != Control::Blocked as u8 {
            return Err(DecodeError::Malformed("unknown control kind"));
        }
        if len != CONTROL_PAYLOAD_LEN {
            return Err(DecodeError::Malformed("control frame length"));
        }
        return Ok(Head::Control);
    }
    if !valid_channel_id(chan) {
        return Err(DecodeError::Malformed("bad channel id"));
    }
    let (first, head_len) = if flags & FLAG_FIRST != 0 {
        let t = buf.get(HEADER_LEN..HEADER_LEN + TOTAL_LEN).ok_or(DecodeError::Truncated)?;
        (Some(u32::from_be_bytes([t[0], t[1], t[2], t[3]])), HEADER_LEN + TOTAL_LEN)
    } else {
        (None, HEADER_LEN)
    };
    Ok(Head::Data { chan, ty, first, more: flags & FLAG_MORE != 0, len, head_len })
}

/// Reads the frame at the start of `buf`; returns it and the bytes it took.
///
/// # Errors
/// A frame that is truncated, has unknown flags or kinds, or names no valid channel.
pub fn decode(buf: &[u8]) -> Result<(Frame<'_>, usize), DecodeError> {
    match decode_head(buf)? {
        Head::Control => {
            let p = buf.get(HEADER_LEN..CONTROL_LEN).ok_or(DecodeError::Truncated)?;
            let limit = u64::from_be_bytes(p.try_into().expect("8 bytes"));
            let chan = buf[0];
            let frame = if buf[1] == Control::Credit as u8 {
                Frame::Credit { chan, limit }
            } else {
                Frame::Blocked { chan, limit }
            };
            Ok((frame, CONTROL_LEN))
        }
        Head::Data { chan, ty, first, more, len, head_len } => {
            let end = head_len.checked_add(len).ok_or(DecodeError::Truncated)?;
            let payload = buf.get(head_len..end).ok_or(DecodeError::Truncated)?;
            Ok((Frame::Data { chan, ty, first, more, payload }, end))
        }
    }
}

/// Bytes a data frame takes around its payload.
pub fn data_overhead(first: bool) -> usize {
    HEADER_LEN + if first { TOTAL_LEN } else { 0 }
}

/// The longest data frame header (a first frame's, with the message total).
pub const MAX_DATA_HEADER: usize = HEADER_LEN + TOTAL_LEN;

/// Encodes a data frame's header into `out`; returns the bytes used.
pub fn data_header(
    out: &mut [u8; MAX_DATA_HEADER],
    chan: u8,
    ty: u8,
    first: Option<u32>,
    more: bool,
    len: usize,
) -> &[u8] {
    let mut flags = if more { FLAG_MORE } else { 0 };
    if first.is_some() {
        flags |= FLAG_FIRST;
    }
    out[..4].copy_from_slice(&[chan, ty, flags, 0]);
    out[4..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    match first {
        Some(total) => {
            out[HEADER_LEN..].copy_from_slice(&total.to_be_bytes());
            &out[..]
        }
        None => &out[..HEADER_LEN],
    }
}

/// Appends a data frame's header (the payload follows, appended by the caller).
pub fn put_data_header(
    out: &mut Vec<u8>,
    chan: u8,
    ty: u8,
    first: Option<u32>,
    more: bool,
    len: usize,
) {
    let mut h = [0u8; MAX_DATA_HEADER];
    out.extend_from_slice(data_header(&mut h, chan, ty, first, more, len));
}

/// Bytes of an encoded control frame (CREDIT or BLOCKED).
pub const CONTROL_LEN: usize = HEADER_LEN + CONTROL_PAYLOAD_LEN;

fn put_control(out: &mut Vec<u8>, kind: Control, chan: u8, limit: u64) {
    out.extend_from_slice(&[chan, kind as u8, FLAG_CTRL, 0, 0, 0, 0, CONTROL_PAYLOAD_LEN as u8]);
    out.extend_from_slice(&limit.to_be_bytes());
}

/// Appends a CREDIT frame: the peer may send up to `limit` data bytes in total on `chan`
/// (0: the connection).
pub fn put_credit(out: &mut Vec<u8>, chan: u8, limit: u64) {
    put_control(out, Control::Credit, chan, limit);
}

/// Appends a BLOCKED frame: we have data for `chan` (0: the connection) and no credit past
/// `limit`.
pub fn put_blocked(out: &mut Vec<u8>, chan: u8, limit: u64) {
    put_control(out, Control::Blocked, chan, limit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_frames_round_trip() {
        let mut out = Vec::new();
        put_data_header(&mut out, b'E', 7, Some(5), true, 3);
        out.extend_from_slice(b"abc");
        put_data_header(&mut out, b'E', 7, None, false, 2);
        out.extend_from_slice(b"de");
        put_credit(&mut out, 0, 65536);
        put_blocked(&mut out, b'E', 1 << 40);
        let (f, n) = decode(&out).unwrap();
        assert_eq!(
            f,
            Frame::Data { chan: b'E', ty: 7, first: Some(5), more: true, payload: b"abc" }
        );
        let (f2, n2) = decode(&out[n..]).unwrap();
        assert_eq!(f2, Frame::Data { chan: b'E', ty: 7, first: None, more: false, payload: b"de" });
        let (f3, n3) = decode(&out[n + n2..]).unwrap();
        assert_eq!(f3, Frame::Credit { chan: 0, limit: 65536 });
        let (f4, n4) = decode(&out[n + n2 + n3..]).unwrap();
        assert_eq!(f4, Frame::Blocked { chan: b'E', limit: 1 << 40 });
        assert_eq!(n + n2 + n3 + n4, out.len());
    }

    #[test]
    fn bad_frames_are_refused() {
        assert_eq!(decode(&[b'E', 0, 0]), Err(DecodeError::Truncated));
        assert_eq!(
            decode(&[b'E', 0, 0, 1, 0, 0, 0, 0]).unwrap_err(),
            DecodeError::Malformed("reserved bits set")
        );
        assert!(decode(&[b' ', 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode(&[b'E', 0, 0x40, 0, 0, 0, 0, 0]).is_err());
        assert_eq!(decode(&[b'E', 0, 0, 0, 0, 0, 0, 9, 1]), Err(DecodeError::Truncated));
        assert!(decode(&[b'E', 9, FLAG_CTRL, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
        // Version 1's 4-byte credit is refused.
        assert!(decode(&[b'E', 1, FLAG_CTRL, 0, 0, 0, 0, 4, 0, 0, 0, 1]).is_err());
        assert_eq!(decode(&[b'E', 2, FLAG_CTRL, 0, 0, 0, 0, 8, 0]), Err(DecodeError::Truncated));
        assert!(decode(&[0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
