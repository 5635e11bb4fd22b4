//! UDP packets: one per datagram.
//!
//! ```text
//! 0        1                        9                               17
//! +--------+------------------------+-------------------------------+
//! |01K00000| connection id (8)      | packet number (u64 BE)        |
//! +--------+------------------------+-------------------------------+
//! | AEAD ciphertext of the frames, then the 16-byte tag             |
//! ```
//!
//! The first byte's top two bits are `01` (this version of the UDP transport), `K` is the
//! key phase, the other five bits are 0. The nonce is `"du" 0 dir || packet number`; the
//! associated data is the 17-byte header. A packet number is never reused in a direction,
//! so no nonce repeats under a key; the header is authenticated, so neither the connection
//! id, the key phase nor the packet number can be changed unseen.

use dap_net::enc::cipher::{AeadKey, BatchMsg, Nonce, TAG_LEN, random_bytes};

use crate::codec::DecodeError;
use crate::codec::keys::KeyLabels;
use crate::codec::packet::Direction;

/// Bytes of a connection id.
pub const CID_LEN: usize = 8;
/// Bytes of a packet header.
pub const HEADER_LEN: usize = 1 + CID_LEN + 8;
/// Bytes a packet adds around its frames.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The shortest packet: a header, one frame byte and the tag.
pub const MIN_PACKET: usize = OVERHEAD + 1;
/// Every peer must accept datagrams of this many bytes (UDP payload); path MTU discovery
/// starts here.
pub const MIN_DATAGRAM: usize = 1200;
/// Packet numbers are below 2^62 (a sender that reached it would have to close; none does:
/// at 10^9 packets a second that takes 146 years).
pub const MAX_PACKET_NUMBER: u64 = 1 << 62;
/// The top two bits of the first byte in this version.
pub const FORM: u8 = 0x40;
const FORM_MASK: u8 = 0xc0;
/// The key-phase bit.
pub const KEY_PHASE: u8 = 0x20;
const RESERVED: u8 = 0x1f;

/// HKDF info of the client→server UDP secret (generation 0).
pub const LABEL_C2S: &[u8] = b"dap v2 udp c2s";
/// HKDF info of the server→client UDP secret (generation 0).
pub const LABEL_S2C: &[u8] = b"dap v2 udp s2c";
/// The labels of a UDP key chain.
pub const LABELS: KeyLabels =
    KeyLabels { key: b"dap v2 udp key", update: b"dap v2 udp key update" };

/// A connection id: chosen by the server, it names the worker that owns the connection in
/// its first byte, so a datagram that lands on another worker can be forwarded; the other
/// seven bytes come from the CSPRNG.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConnectionId(pub [u8; CID_LEN]);

impl std::hash::Hash for ConnectionId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from_be_bytes(self.0));
    }
}

/// Hashes [`ConnectionId`]s for the tables that route every datagram. The ids in those
/// tables come from the CSPRNG, so a peer cannot make them collide, and a keyed hash
/// (SipHash) would buy nothing for its cost per datagram: the id's bits are mixed with one
/// multiplication.
#[derive(Clone, Copy, Debug, Default)]
pub struct CidHasher(u64);

impl std::hash::Hasher for CidHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }

    fn finish(&self) -> u64 {
        // Fibonacci hashing: each output bit depends on the input bits at and below it, and
        // the low input bits are the id's random bytes (the worker byte is the top one).
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

/// The hasher state of tables keyed by [`ConnectionId`].
pub type CidHash = std::hash::BuildHasherDefault<CidHasher>;

impl ConnectionId {
    /// A fresh id for a connection owned by worker `worker`.
    pub fn random(worker: u8) -> Self {
        let mut b = [0u8; CID_LEN];
        random_bytes(&mut b[1..]);
        b[0] = worker;
        ConnectionId(b)
    }

    /// The index of the worker that owns the connection.
    pub fn worker(&self) -> usize {
        self.0[0] as usize
    }
}

/// A parsed packet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The connection.
    pub cid: ConnectionId,
    /// The key phase bit.
    pub key_phase: bool,
    /// The packet number.
    pub pn: u64,
}

/// The connection id of a datagram, for routing before anything else is looked at:
/// `None` when it cannot be a packet of this version.
pub fn peek_cid(datagram: &[u8]) -> Option<ConnectionId> {
    if datagram.len() < MIN_PACKET || datagram[0] & FORM_MASK != FORM {
        return None;
    }
    Some(ConnectionId(datagram[1..1 + CID_LEN].try_into().expect("8 bytes")))
}

/// Parses the header of a datagram.
///
/// # Errors
/// A datagram shorter than [`MIN_PACKET`], another version (form bits), or reserved bits
/// set.
pub fn parse_header(datagram: &[u8]) -> Result<Header, DecodeError> {
    if datagram.len() < MIN_PACKET {
        return Err(DecodeError::Truncated);
    }
    let b = datagram[0];
    if b & FORM_MASK != FORM {
        return Err(DecodeError::BadVersion(b >> 6));
    }
    if b & RESERVED != 0 {
        return Err(DecodeError::Malformed("reserved bits set"));
    }
    let cid = ConnectionId(datagram[1..1 + CID_LEN].try_into().expect("8 bytes"));
    let pn = u64::from_be_bytes(datagram[1 + CID_LEN..HEADER_LEN].try_into().expect("8 bytes"));
    if pn >= MAX_PACKET_NUMBER {
        return Err(DecodeError::Malformed("packet number out of range"));
    }
    Ok(Header { cid, key_phase: b & KEY_PHASE != 0, pn })
}

pub(crate) fn nonce(dir: Direction, pn: u64) -> Nonce {
    Nonce::new([b'd', b'u', 0, dir as u8], pn)
}

/// Starts a packet in `out`: reserves the header. Append the frames, then call [`seal`]
/// with the same `start`.
pub fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    start
}

/// Seals the packet begun at `start` (everything after its header is the frames): writes
/// the header, encrypts in place and appends the tag.
pub fn seal(key: &AeadKey, dir: Direction, hdr: &Header, out: &mut Vec<u8>, start: usize) {
    let (head, body) = out[start..].split_at_mut(HEADER_LEN);
    write_header(hdr, head);
    let tag = key.seal_detached(nonce(dir, hdr.pn), head, body);
    out.extend_from_slice(&tag);
}

/// Closes the packet begun at `start` but for its AEAD: writes the header and appends the
/// tag's room. [`seal_batch`] then seals it with the others of its batch.
pub fn finish_unsealed(hdr: &Header, out: &mut Vec<u8>, start: usize) {
    write_header(hdr, &mut out[start..start + HEADER_LEN]);
    out.extend_from_slice(&[0u8; TAG_LEN]);
}

fn write_header(hdr: &Header, head: &mut [u8]) {
    head[0] = FORM | if hdr.key_phase { KEY_PHASE } else { 0 };
    head[1..1 + CID_LEN].copy_from_slice(&hdr.cid.0);
    head[1 + CID_LEN..HEADER_LEN].copy_from_slice(&hdr.pn.to_be_bytes());
}

/// Seals, in one AEAD batch, the packets of `buf` that [`finish_unsealed`] closed:
/// `packets` lists each one's `(start, end, packet number)`, in ascending order and
/// apart. The bytes are those [`seal`] would have written.
pub fn seal_batch(key: &AeadKey, dir: Direction, buf: &mut [u8], packets: &[(usize, usize, u64)]) {
    key.seal_batch(&mut batch_msgs(dir, buf, packets));
}

/// [`seal_batch`], but the frames of packet `i` end with `tails[i]`, read from there (their
/// room in `buf` is written, not read): channel data sealed where it lies.
pub fn seal_batch_gather(
    key: &AeadKey,
    dir: Direction,
    buf: &mut [u8],
    packets: &[(usize, usize, u64)],
    tails: &[&[u8]],
) {
    key.seal_batch_gather(&mut batch_msgs(dir, buf, packets), tails);
}

fn batch_msgs<'a>(
    dir: Direction,
    buf: &'a mut [u8],
    packets: &[(usize, usize, u64)],
) -> smallvec::SmallVec<[BatchMsg<'a>; 16]> {
    // (A batch is one AEAD group, at most `BATCH_GROUP` packets: no allocation for it.)
    let mut msgs = smallvec::SmallVec::new();
    let mut rest = buf;
    let mut at = 0;
    for &(start, end, pn) in packets {
        let (_, tail) = rest.split_at_mut(start - at);
        let (p, tail) = tail.split_at_mut(end - start);
        rest = tail;
        at = end;
        msgs.push(BatchMsg { nonce: nonce(dir, pn).bytes(), aad_len: HEADER_LEN, buf: p });
    }
    msgs
}

/// Authenticates and decrypts a whole datagram whose header `hdr` was parsed from it;
/// returns the frames, decrypted in place. `None` when the tag does not verify under `key`
/// (the datagram is then to be dropped and counted, never answered).
pub fn open<'a>(
    key: &AeadKey,
    dir: Direction,
    hdr: &Header,
    datagram: &'a mut [u8],
) -> Option<&'a mut [u8]> {
    let (head, body) = datagram.split_at_mut(HEADER_LEN);
    key.open(nonce(dir, hdr.pn), head, body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dap_net::enc::cipher::CipherSuite;

    fn key() -> AeadKey {
        AeadKey::new(CipherSuite::Aes256Gcm, &[5; 32])
    }

    fn packet(hdr: &Header, frames: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let start = begin(&mut out);
        out.extend_from_slice(frames);
        seal(&key(), Direction::ClientToServer, hdr, &mut out, start);
        out
    }

    #[test]
    fn packets_round_trip_and_carry_their_worker() {
        let cid = ConnectionId::random(3);
        assert_eq!(cid.worker(), 3);
        let hdr = Header { cid, key_phase: true, pn: 1 << 40 };
        let mut p = packet(&hdr, b"\x01");
        assert_eq!(p.len(), MIN_PACKET);
        assert_eq!(peek_cid(&p), Some(cid));
        let parsed = parse_header(&p).unwrap();
        assert_eq!(parsed, hdr);
        assert_eq!(open(&key(), Direction::ClientToServer, &parsed, &mut p).unwrap(), b"\x01");
    }

    #[test]
    fn tampering_anywhere_is_caught() {
        let hdr = Header { cid: ConnectionId([9; 8]), key_phase: false, pn: 7 };
        let p = packet(&hdr, b"\x01\x00\x00");
        for i in 0..p.len() {
            let mut bad = p.clone();
            bad[i] ^= 0x04;
            let Ok(h) = parse_header(&bad) else { continue };
            assert!(open(&key(), Direction::ClientToServer, &h, &mut bad).is_none(), "byte {i}");
        }
        // The other direction's nonce does not open it either.
        let mut q = p.clone();
        assert!(open(&key(), Direction::ServerToClient, &hdr, &mut q).is_none());
    }

    #[test]
    fn bad_headers_are_refused() {
        assert_eq!(parse_header(&[0x40; 10]), Err(DecodeError::Truncated));
        assert_eq!(parse_header(&[0x80; MIN_PACKET]), Err(DecodeError::BadVersion(2)));
        assert!(parse_header(&[0x41; MIN_PACKET]).is_err());
        assert_eq!(peek_cid(&[0x00; MIN_PACKET]), None);
        let mut big = [0u8; MIN_PACKET];
        big[0] = FORM;
        big[9..17].copy_from_slice(&MAX_PACKET_NUMBER.to_be_bytes());
        assert_eq!(parse_header(&big), Err(DecodeError::Malformed("packet number out of range")));
    }
}
