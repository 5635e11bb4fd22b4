//! Stream packets: the encrypted envelope that carries channel frames over an ordered
//! transport (the upgraded HTTP connection).
//!
//! ```text
//! 0     2       3      4                 8                                16
//! +-----+-------+------+-----------------+--------------------------------+
//! | "DS"| ver=1 | type | length (u32 BE) | sequence number (u64 BE)       |
//! +-----+-------+------+-----------------+--------------------------------+
//! | AEAD ciphertext of the payload, then the 16-byte tag (length bytes)   |
//! ```
//!
//! Each direction has its own key and its own sequence, starting at 0 and rising by one per
//! packet of any type. The nonce is `"ds" 0 dir || seq` and the associated data the 16-byte
//! header, so a packet can be neither moved, replayed, reordered nor altered unseen; the
//! receiver accepts only the next sequence number, so a gap, a replay or a reordering is
//! caught before decryption.

use dap_net::enc::cipher::{AeadKey, Nonce, TAG_LEN};

use super::DecodeError;

/// Bytes of a packet header.
pub const HEADER_LEN: usize = 16;
/// Bytes a packet adds around its payload.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The magic bytes.
pub const MAGIC: [u8; 2] = *b"DS";
/// The protocol version this build speaks.
pub const VERSION: u8 = 1;
/// The longest close reason sent (bytes of UTF-8).
pub const MAX_REASON: usize = 123;

/// Packet types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PacketType {
    /// Channel frames.
    Data = 1,
    /// "Are you there?": the peer answers [`Alive`](Self::Alive). Empty payload.
    Keepalive = 2,
    /// The answer to a keepalive. Empty payload.
    Alive = 3,
    /// The sender closes the stream: u16 code, then a UTF-8 reason. Nothing follows it.
    Close = 4,
}

impl PacketType {
    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(PacketType::Data),
            2 => Some(PacketType::Keepalive),
            3 => Some(PacketType::Alive),
            4 => Some(PacketType::Close),
            _ => None,
        }
    }
}

/// Which way a packet travels; part of the nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Direction {
    /// Client to server.
    ClientToServer = 0,
    /// Server to client.
    ServerToClient = 1,
}

/// A parsed packet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The type.
    pub ty: PacketType,
    /// Bytes after the header: ciphertext and tag.
    pub len: usize,
    /// The sequence number.
    pub seq: u64,
}

impl Header {
    /// Bytes of the whole packet.
    pub fn packet_len(&self) -> usize {
        HEADER_LEN + self.len
    }
}

/// Parses the header at the start of `buf`: `Ok(None)` until 16 bytes are there.
///
/// # Errors
/// Bad magic, version or type, a length under the tag size or over `max_payload` plus the
/// tag.
pub fn parse_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, DecodeError> {
    if buf.len() < HEADER_LEN {
        // Reject garbage as early as its first bytes allow.
        if !buf.is_empty() && buf[0] != MAGIC[0] || buf.len() > 1 && buf[1] != MAGIC[1] {
            return Err(DecodeError::BadMagic);
        }
        return Ok(None);
    }
    if buf[..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if buf[2] != VERSION {
        return Err(DecodeError::BadVersion(buf[2]));
    }
    let ty = PacketType::from_u8(buf[3]).ok_or(DecodeError::BadType(buf[3]))?;
    let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len < TAG_LEN || len - TAG_LEN > max_payload {
        return Err(DecodeError::TooLong(len as u64));
    }
    let seq = u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes"));
    Ok(Some(Header { ty, len, seq }))
}

fn nonce(dir: Direction, seq: u64) -> Nonce {
    Nonce::new([b'd', b's', 0, dir as u8], seq)
}

/// Why a received packet was refused. Each is fatal for the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The sequence number is not the next one: a lost, replayed or reordered packet.
    #[error("sequence {got}, expected {expected}")]
    Sequence {
        /// The next sequence number.
        expected: u64,
        /// The packet's.
        got: u64,
    },
    /// The tag did not verify: the packet was altered or is not from the peer.
    #[error("authentication failed")]
    Auth,
}

/// Seals outgoing packets of one direction.
#[derive(Debug)]
pub struct Sealer {
    key: AeadKey,
    dir: Direction,
    seq: u64,
}

impl Sealer {
    /// A sealer starting at sequence 0.
    pub fn new(key: AeadKey, dir: Direction) -> Self {
        Sealer { key, dir, seq: 0 }
    }

    /// The next sequence number.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Starts a packet in `out`: reserves the header. Append the payload, then call
    /// [`seal`](Self::seal) with the same `start`.
    pub fn begin(out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        start
    }

    /// Seals the packet begun at `start` (everything after its header is the payload) and
    /// takes the next sequence number.
    pub fn seal(&mut self, ty: PacketType, out: &mut Vec<u8>, start: usize) {
        let len = out.len() - start - HEADER_LEN + TAG_LEN;
        let seq = self.seq;
        // u64 sequence numbers do not run out: 2^64 packets outlast any connection.
        self.seq += 1;
        let hdr = &mut out[start..start + HEADER_LEN];
        hdr[..2].copy_from_slice(&MAGIC);
        hdr[2] = VERSION;
        hdr[3] = ty as u8;
        hdr[4..8].copy_from_slice(&(len as u32).to_be_bytes());
        hdr[8..16].copy_from_slice(&seq.to_be_bytes());
        let mut aad = [0u8; HEADER_LEN];
        aad.copy_from_slice(hdr);
        let tag =
            self.key.seal_detached(nonce(self.dir, seq), &aad, &mut out[start + HEADER_LEN..]);
        out.extend_from_slice(&tag);
    }
}

/// Opens incoming packets of one direction, in order.
#[derive(Debug)]
pub struct Opener {
    key: AeadKey,
    dir: Direction,
    next: u64,
}

impl Opener {
    /// An opener expecting sequence 0.
    pub fn new(key: AeadKey, dir: Direction) -> Self {
        Opener { key, dir, next: 0 }
    }

    /// The sequence number expected next.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Checks and decrypts one whole packet (`packet` starts with the header `hdr` was
    /// parsed from); returns the payload, decrypted in place.
    ///
    /// # Errors
    /// [`OpenError`]; the stream must then be closed.
    pub fn open<'a>(
        &mut self,
        hdr: &Header,
        packet: &'a mut [u8],
    ) -> Result<&'a mut [u8], OpenError> {
        if hdr.seq != self.next {
            return Err(OpenError::Sequence { expected: self.next, got: hdr.seq });
        }
        let (head, body) = packet[..hdr.packet_len()].split_at_mut(HEADER_LEN);
        let plain =
            self.key.open(nonce(self.dir, hdr.seq), head, body).map_err(|_| OpenError::Auth)?;
        self.next += 1;
        Ok(plain)
    }
}

/// Encodes a close payload: code, then the reason cut to [`MAX_REASON`] bytes on a
/// character boundary.
pub fn close_payload(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&reason.as_bytes()[..end]);
}

/// Decodes a close payload into its code and reason (invalid UTF-8 is replaced).
///
/// # Errors
/// A payload shorter than the code.
pub fn parse_close(payload: &[u8]) -> Result<(u16, String), DecodeError> {
    if payload.len() < 2 {
        return Err(DecodeError::Truncated);
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let reason = &payload[2..payload.len().min(2 + MAX_REASON)];
    Ok((code, String::from_utf8_lossy(reason).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dap_net::enc::cipher::CipherSuite;

    fn pair() -> (Sealer, Opener) {
        let k = [9u8; 32];
        let s =
            Sealer::new(AeadKey::new(CipherSuite::ChaCha20Poly1305, &k), Direction::ClientToServer);
        let o =
            Opener::new(AeadKey::new(CipherSuite::ChaCha20Poly1305, &k), Direction::ClientToServer);
        (s, o)
    }

    fn packet(s: &mut Sealer, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let start = Sealer::begin(&mut out);
        out.extend_from_slice(payload);
        s.seal(PacketType::Data, &mut out, start);
        out
    }

    #[test]
    fn packets_round_trip_in_order() {
        let (mut s, mut o) = pair();
        for i in 0..3u8 {
            let mut p = packet(&mut s, &[i; 10]);
            let h = parse_header(&p, 1 << 16).unwrap().unwrap();
            assert_eq!(h.seq, i as u64);
            assert_eq!(o.open(&h, &mut p).unwrap(), &[i; 10]);
        }
    }

    #[test]
    fn gaps_replays_and_flipped_bits_are_refused() {
        let (mut s, mut o) = pair();
        let mut p0 = packet(&mut s, b"zero");
        let mut p1 = packet(&mut s, b"one");
        let h1 = parse_header(&p1, 1 << 16).unwrap().unwrap();
        assert_eq!(o.open(&h1, &mut p1), Err(OpenError::Sequence { expected: 0, got: 1 }));
        let h0 = parse_header(&p0, 1 << 16).unwrap().unwrap();
        let mut copy = p0.clone();
        copy[HEADER_LEN] ^= 1;
        assert_eq!(o.open(&h0, &mut copy), Err(OpenError::Auth));
        o.open(&h0, &mut p0).unwrap();
        let mut again = packet(&mut pair().0, b"zero");
        let h = parse_header(&again, 1 << 16).unwrap().unwrap();
        assert!(matches!(o.open(&h, &mut again), Err(OpenError::Sequence { .. })));
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(parse_header(b"X", 100), Err(DecodeError::BadMagic));
        assert_eq!(parse_header(b"DS", 100), Ok(None));
        let mut h = [0u8; 16];
        h[..2].copy_from_slice(b"DS");
        h[2] = 2;
        assert_eq!(parse_header(&h, 100), Err(DecodeError::BadVersion(2)));
        h[2] = 1;
        h[3] = 9;
        assert_eq!(parse_header(&h, 100), Err(DecodeError::BadType(9)));
        h[3] = 1;
        h[4..8].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(parse_header(&h, 100), Err(DecodeError::TooLong(1000)));
    }

    #[test]
    fn close_payload_round_trips_and_cuts_long_reasons() {
        let mut out = Vec::new();
        close_payload(&mut out, 7, &"é".repeat(100));
        let (code, reason) = parse_close(&out).unwrap();
        assert_eq!(code, 7);
        assert!(reason.len() <= MAX_REASON && reason.chars().all(|c| c == 'é'));
    }
}
