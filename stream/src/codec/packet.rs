//! Stream packets: the encrypted envelope that carries channel frames over an ordered
//! transport (the upgraded HTTP connection).
//!
//! ```text
//! 0     2       3      4                 8                                16
//! +-----+-------+------+-----------------+--------------------------------+
//! | "DS"| ver=2 |K|type| length (u32 BE) | sequence number (u64 BE)       |
//! +-----+-------+------+-----------------+--------------------------------+
//! | AEAD ciphertext of the payload, then the 16-byte tag (length bytes)   |
//! ```
//!
//! Each direction has its own key chain and its own sequence, starting at 0 and rising by
//! one per packet of any type. The nonce is `"ds" 0 dir || seq` and the associated data the
//! 16-byte header, so a packet can be neither moved, replayed, reordered nor altered unseen;
//! the receiver accepts only the next sequence number, so a gap, a replay or a reordering is
//! caught before decryption.
//!
//! **Key updates.** The high bit `K` of the type byte is the key phase. A sender moves to
//! the next key of its direction's chain ([`KeyChain`]) after
//! [`SessionLimits::rekey_packets`](crate::session::SessionLimits::rekey_packets) packets
//! (never later than half the AEAD's confidentiality limit) and flips `K`; the receiver,
//! seeing `K` flip, derives the same next key and opens the packet with it. The transport
//! is ordered, so the old key is dropped at once: nothing can arrive under it any more.

use dap_net::enc::cipher::{AeadKey, CipherSuite, Nonce, TAG_LEN};

use super::DecodeError;

/// Bytes of a packet header.
pub const HEADER_LEN: usize = 16;
/// Bytes a packet adds around its payload.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The magic bytes.
pub const MAGIC: [u8; 2] = *b"DS";
/// The protocol version this build speaks.
pub const VERSION: u8 = 2;
/// The key-phase bit of the type byte.
pub const KEY_PHASE: u8 = 0x80;
/// The longest close reason sent (bytes of UTF-8).
pub const MAX_REASON: usize = 123;

pub use super::keys::{KeyChain, LABEL_KEY, LABEL_KEY_UPDATE};

/// Packets one AES-256-GCM key may seal when no packet is longer than 2^16 bytes
/// (RFC 9001 §6.6); longer packets scale it down (see [`confidentiality_limit`]).
pub const AES_GCM_PACKET_LIMIT: u64 = 1 << 23;

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
    /// The key phase bit.
    pub key_phase: bool,
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
        if buf.len() > 2 && buf[2] != VERSION {
            return Err(DecodeError::BadVersion(buf[2]));
        }
        return Ok(None);
    }
    if buf[..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if buf[2] != VERSION {
        return Err(DecodeError::BadVersion(buf[2]));
    }
    let ty = PacketType::from_u8(buf[3] & !KEY_PHASE).ok_or(DecodeError::BadType(buf[3]))?;
    let len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len < TAG_LEN || len - TAG_LEN > max_payload {
        return Err(DecodeError::TooLong(len as u64));
    }
    let seq = u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes"));
    Ok(Some(Header { ty, key_phase: buf[3] & KEY_PHASE != 0, len, seq }))
}

fn nonce(dir: Direction, seq: u64) -> Nonce {
    Nonce::new([b'd', b's', 0, dir as u8], seq)
}

/// The most packets one key of `suite` may seal or open when packets carry at most
/// `max_payload` bytes: RFC 9001 §6.6's confidentiality limit. AES-256-GCM: 2^23 packets of
/// up to 2^16 bytes, proportionally fewer for longer packets (the bound is on AES blocks).
/// ChaCha20-Poly1305's exceeds 2^62 and does not bind.
pub fn confidentiality_limit(suite: CipherSuite, max_payload: usize) -> u64 {
    match suite {
        CipherSuite::Aes256Gcm => {
            let packet = (max_payload + OVERHEAD) as u64;
            if packet <= 1 << 16 {
                AES_GCM_PACKET_LIMIT
            } else {
                (AES_GCM_PACKET_LIMIT << 16) / packet
            }
        }
        CipherSuite::ChaCha20Poly1305 => 1 << 62,
    }
}

/// The packets a sender seals under one key before it updates: `wanted`, but never more
/// than half the confidentiality limit, and at least 1.
pub fn update_interval(suite: CipherSuite, max_payload: usize, wanted: u64) -> u64 {
    wanted.clamp(1, (confidentiality_limit(suite, max_payload) / 2).max(1))
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
    /// The peer sent more packets under one key than the AEAD's confidentiality limit
    /// allows, without a key update.
    #[error("the peer did not update its key within the AEAD limit ({0} packets)")]
    KeyExhausted(u64),
}

/// Seals outgoing packets of one direction, updating the key every `update_after` packets.
#[derive(Debug)]
pub struct Sealer {
    chain: KeyChain,
    key: AeadKey,
    dir: Direction,
    seq: u64,
    phase: bool,
    /// Packets sealed under `key`.
    under_key: u64,
    update_after: u64,
}

impl Sealer {
    /// A sealer starting at sequence 0 with the chain's current key, moving to the next one
    /// after every `update_after` packets (see [`update_interval`]).
    pub fn new(chain: KeyChain, dir: Direction, update_after: u64) -> Self {
        Sealer { key: chain.key(), chain, dir, seq: 0, phase: false, under_key: 0, update_after }
    }

    /// The next sequence number.
    pub fn next_seq(&self) -> u64 {
        self.seq
    }

    /// Key updates done so far.
    pub fn updates(&self) -> u64 {
        self.chain.generation()
    }

    /// Starts a packet in `out`: reserves the header. Append the payload, then call
    /// [`seal`](Self::seal) with the same `start`.
    pub fn begin(out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER_LEN]);
        start
    }

    /// Seals the packet begun at `start` (everything after its header is the payload) and
    /// takes the next sequence number, first moving to the next key when this one has sealed
    /// its share.
    pub fn seal(&mut self, ty: PacketType, out: &mut Vec<u8>, start: usize) {
        if self.under_key >= self.update_after {
            self.chain.advance();
            self.key = self.chain.key();
            self.phase = !self.phase;
            self.under_key = 0;
        }
        self.under_key += 1;
        let len = out.len() - start - HEADER_LEN + TAG_LEN;
        let seq = self.seq;
        // u64 sequence numbers do not run out: 2^64 packets outlast any connection.
        self.seq += 1;
        let hdr = &mut out[start..start + HEADER_LEN];
        hdr[..2].copy_from_slice(&MAGIC);
        hdr[2] = VERSION;
        hdr[3] = ty as u8 | if self.phase { KEY_PHASE } else { 0 };
        hdr[4..8].copy_from_slice(&(len as u32).to_be_bytes());
        hdr[8..16].copy_from_slice(&seq.to_be_bytes());
        let mut aad = [0u8; HEADER_LEN];
        aad.copy_from_slice(hdr);
        let tag =
            self.key.seal_detached(nonce(self.dir, seq), &aad, &mut out[start + HEADER_LEN..]);
        out.extend_from_slice(&tag);
    }
}

/// Opens incoming packets of one direction, in order, following the peer's key updates.
#[derive(Debug)]
pub struct Opener {
    chain: KeyChain,
    key: AeadKey,
    dir: Direction,
    next: u64,
    phase: bool,
    /// Packets opened under `key`.
    under_key: u64,
    limit: u64,
}

impl Opener {
    /// An opener expecting sequence 0 under the chain's current key; a peer that sends more
    /// than `limit` packets under one key (see [`confidentiality_limit`]) is refused.
    pub fn new(chain: KeyChain, dir: Direction, limit: u64) -> Self {
        Opener { key: chain.key(), chain, dir, next: 0, phase: false, under_key: 0, limit }
    }

    /// The sequence number expected next.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// The peer's key updates followed so far.
    pub fn updates(&self) -> u64 {
        self.chain.generation()
    }

    /// Checks and decrypts one whole packet (`packet` starts with the header `hdr` was
    /// parsed from); returns the payload, decrypted in place. A flipped key phase moves to
    /// the next key first; the move sticks only if the packet authenticates.
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
        if hdr.key_phase != self.phase {
            let chain = self.chain.next();
            let key = chain.key();
            let plain =
                key.open(nonce(self.dir, hdr.seq), head, body).map_err(|_| OpenError::Auth)?;
            self.chain = chain;
            self.key = key;
            self.phase = hdr.key_phase;
            self.under_key = 1;
            self.next += 1;
            return Ok(plain);
        }
        if self.under_key >= self.limit {
            return Err(OpenError::KeyExhausted(self.limit));
        }
        let plain =
            self.key.open(nonce(self.dir, hdr.seq), head, body).map_err(|_| OpenError::Auth)?;
        self.under_key += 1;
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

    fn pair_every(update_after: u64) -> (Sealer, Opener) {
        let chain = || KeyChain::new(CipherSuite::ChaCha20Poly1305, [9u8; 32]);
        let s = Sealer::new(chain(), Direction::ClientToServer, update_after);
        let o = Opener::new(chain(), Direction::ClientToServer, 1 << 62);
        (s, o)
    }

    fn pair() -> (Sealer, Opener) {
        pair_every(1 << 20)
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
        h[2] = 1;
        assert_eq!(parse_header(&h, 100), Err(DecodeError::BadVersion(1)));
        assert_eq!(parse_header(&h[..3], 100), Err(DecodeError::BadVersion(1)));
        h[2] = 2;
        h[3] = 9;
        assert_eq!(parse_header(&h, 100), Err(DecodeError::BadType(9)));
        h[3] = 1 | KEY_PHASE;
        h[4..8].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(parse_header(&h, 100), Err(DecodeError::TooLong(1000)));
    }

    #[test]
    fn keys_update_every_n_packets_and_the_receiver_follows() {
        let (mut s, mut o) = pair_every(3);
        for i in 0..20u8 {
            let mut p = packet(&mut s, &[i; 40]);
            let h = parse_header(&p, 1 << 16).unwrap().unwrap();
            assert_eq!(h.key_phase, (i / 3) % 2 == 1, "packet {i}");
            assert_eq!(o.open(&h, &mut p).unwrap(), &[i; 40]);
        }
        assert_eq!((s.updates(), o.updates()), (6, 6));
    }

    #[test]
    fn a_packet_under_a_retired_key_is_refused() {
        let (mut s, mut o) = pair_every(2);
        // A second sealer that lags one generation behind: its packets are sealed under the
        // key `s` has retired.
        let (mut old, _) = pair_every(1 << 20);
        for _ in 0..2 {
            let mut p = packet(&mut s, b"x");
            let _ = packet(&mut old, b"x");
            let h = parse_header(&p, 1 << 16).unwrap().unwrap();
            o.open(&h, &mut p).unwrap();
        }
        let mut p = packet(&mut s, b"x");
        let h = parse_header(&p, 1 << 16).unwrap().unwrap();
        o.open(&h, &mut p).unwrap();
        assert_eq!(o.updates(), 1);
        // Sequence 3 under generation 0 with the old phase bit: read as a further update,
        // which it is not, so it fails authentication.
        let _ = packet(&mut old, b"x");
        let mut stale = packet(&mut old, b"y");
        let h = parse_header(&stale, 1 << 16).unwrap().unwrap();
        assert_eq!(h.seq, 3);
        assert!(!h.key_phase);
        assert_eq!(o.open(&h, &mut stale), Err(OpenError::Auth));
        assert_eq!(o.updates(), 1, "a failed update does not stick");
    }

    #[test]
    fn a_peer_that_never_updates_hits_the_limit() {
        let chain = || KeyChain::new(CipherSuite::ChaCha20Poly1305, [9u8; 32]);
        let mut s = Sealer::new(chain(), Direction::ClientToServer, 1 << 20);
        let mut o = Opener::new(chain(), Direction::ClientToServer, 4);
        for _ in 0..4 {
            let mut p = packet(&mut s, b"x");
            let h = parse_header(&p, 1 << 16).unwrap().unwrap();
            o.open(&h, &mut p).unwrap();
        }
        let mut p = packet(&mut s, b"x");
        let h = parse_header(&p, 1 << 16).unwrap().unwrap();
        assert_eq!(o.open(&h, &mut p), Err(OpenError::KeyExhausted(4)));
    }

    #[test]
    fn limits_follow_rfc_9001() {
        assert_eq!(confidentiality_limit(CipherSuite::Aes256Gcm, 32 << 10), 1 << 23);
        assert_eq!(confidentiality_limit(CipherSuite::Aes256Gcm, (1 << 17) - OVERHEAD), 1 << 22);
        assert!(confidentiality_limit(CipherSuite::ChaCha20Poly1305, 16 << 20) >= 1 << 62);
        assert_eq!(update_interval(CipherSuite::Aes256Gcm, 32 << 10, u64::MAX), 1 << 22);
        assert_eq!(update_interval(CipherSuite::Aes256Gcm, 32 << 10, 0), 1);
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
