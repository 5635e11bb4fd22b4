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
//! frames of one channel's message arrive in order. `CTRL` frames carry flow-control credit.

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
    /// Payload: u32 big-endian, more bytes the receiver of this frame may send on the channel
    /// (or, on channel 0, on the whole connection).
    Credit = 1,
}

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
        /// Additional bytes the peer may send.
        bytes: u32,
    },
}

/// Reads the frame at the start of `buf`; returns it and the bytes it took.
///
/// # Errors
/// A frame that is truncated, has unknown flags or kinds, or names no valid channel.
pub fn decode(buf: &[u8]) -> Result<(Frame<'_>, usize), DecodeError> {
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
        if ty != Control::Credit as u8 {
            return Err(DecodeError::Malformed("unknown control kind"));
        }
        if len != 4 {
            return Err(DecodeError::Malformed("credit frame length"));
        }
        let p = buf.get(HEADER_LEN..HEADER_LEN + 4).ok_or(DecodeError::Truncated)?;
        let bytes = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
        return Ok((Frame::Credit { chan, bytes }, HEADER_LEN + 4));
    }
    if !valid_channel_id(chan) {
        return Err(DecodeError::Malformed("bad channel id"));
    }
    let mut at = HEADER_LEN;
    let first = if flags & FLAG_FIRST != 0 {
        let t = buf.get(at..at + TOTAL_LEN).ok_or(DecodeError::Truncated)?;
        at += TOTAL_LEN;
        Some(u32::from_be_bytes([t[0], t[1], t[2], t[3]]))
    } else {
        None
    };
    let payload = buf.get(at..at + len).ok_or(DecodeError::Truncated)?;
    let frame = Frame::Data { chan, ty, first, more: flags & FLAG_MORE != 0, payload };
    Ok((frame, at + len))
}

/// Bytes a data frame takes around its payload.
pub fn data_overhead(first: bool) -> usize {
    HEADER_LEN + if first { TOTAL_LEN } else { 0 }
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
    let mut flags = if more { FLAG_MORE } else { 0 };
    if first.is_some() {
        flags |= FLAG_FIRST;
    }
    out.extend_from_slice(&[chan, ty, flags, 0]);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    if let Some(total) = first {
        out.extend_from_slice(&total.to_be_bytes());
    }
}

/// Bytes of an encoded credit frame.
pub const CREDIT_LEN: usize = HEADER_LEN + 4;

/// Appends a credit frame.
pub fn put_credit(out: &mut Vec<u8>, chan: u8, bytes: u32) {
    out.extend_from_slice(&[chan, Control::Credit as u8, FLAG_CTRL, 0, 0, 0, 0, 4]);
    out.extend_from_slice(&bytes.to_be_bytes());
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
        let (f, n) = decode(&out).unwrap();
        assert_eq!(
            f,
            Frame::Data { chan: b'E', ty: 7, first: Some(5), more: true, payload: b"abc" }
        );
        let (f2, n2) = decode(&out[n..]).unwrap();
        assert_eq!(f2, Frame::Data { chan: b'E', ty: 7, first: None, more: false, payload: b"de" });
        let (f3, n3) = decode(&out[n + n2..]).unwrap();
        assert_eq!(f3, Frame::Credit { chan: 0, bytes: 65536 });
        assert_eq!(n + n2 + n3, out.len());
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
        assert!(decode(&[b'E', 9, FLAG_CTRL, 0, 0, 0, 0, 4, 0, 0, 0, 1]).is_err());
        assert!(decode(&[0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
