//! Sessions: what stream_ctl creates and a stream attaches to.
//!
//! stream_ctl (over enc_http) creates a session: a 128-bit id from the CSPRNG, the cipher,
//! 32 bytes of key material and the channels. The [`SessionTable`] holds it until a stream
//! attaches (once) or the connect timeout passes; it is bounded, and refuses new sessions
//! when full rather than dropping sessions a client is about to connect.

pub mod ctl;
mod table;

use std::time::Duration;

use dap_net::enc::cipher::{CipherSuite, KEY_LEN, hkdf_sha256};

#[cfg(test)]
pub(crate) use table::FULL_SWEEP_EVERY;
pub(crate) use table::SweepGate;
pub use table::{AttachError, SessionTable, TableFull};

use crate::codec::packet::{self, Direction, KeyChain, Opener, Sealer};
use crate::mux::MuxConfig;

/// Bytes of a session id.
pub const SESSION_ID_LEN: usize = 16;

/// HKDF label of the client→server stream secret (generation 0 of its key chain).
pub const LABEL_C2S: &[u8] = b"dap v2 stream c2s";
/// HKDF label of the server→client stream secret (generation 0 of its key chain).
pub const LABEL_S2C: &[u8] = b"dap v2 stream s2c";

/// The largest stream-packet payload by default: 32,736 bytes, so that a whole packet
/// (payload + 32) is 32 KiB and two of them tile a 64 KiB input buffer exactly.
pub const DEFAULT_MAX_PAYLOAD: usize = (32 << 10) - packet::OVERHEAD;

/// Packets sealed under one key before the sender moves to the next, by default: 2^20,
/// an eighth of AES-256-GCM's confidentiality limit (2^23 packets, RFC 9001 §6.6).
pub const DEFAULT_REKEY_PACKETS: u64 = 1 << 20;

/// The transports a session can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TransportKind {
    /// An upgraded HTTP/1.1 connection (`GET /stream/...`).
    Http = 1,
    /// The UDP transport engine.
    Udp = 2,
}

impl TransportKind {
    /// The kind with wire code `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(TransportKind::Http),
            2 => Some(TransportKind::Udp),
            _ => None,
        }
    }
}

/// Limits of one session, chosen by the server and sent in the stream_ctl answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Multiplexing limits (message size, windows, frame size).
    pub mux: MuxConfig,
    /// The largest stream-packet payload (bytes, without header and tag).
    pub max_payload: usize,
    /// Send a keepalive after this long without receiving anything.
    pub keepalive: Duration,
    /// Close after this long without receiving anything.
    pub idle_timeout: Duration,
    /// A session whose stream has not attached by then expires.
    pub connect_timeout: Duration,
    /// Local, not sent: packets this end seals under one key before it updates to the next
    /// (default [`DEFAULT_REKEY_PACKETS`]; never more than half the cipher's
    /// confidentiality limit, see [`packet::update_interval`]).
    pub rekey_packets: u64,
    /// Local, not sent: the stream connection's input buffer (512 KiB), raised from the
    /// reactor's default with `Esocket::set_buffer_caps` (clamped to the reactor's
    /// `buf_cap_max`): more bytes per read and per loop turn, and whole packets tile it.
    pub buf_in: usize,
    /// Local, not sent: the stream connection's output buffer (1 MiB), likewise.
    pub buf_out: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            mux: MuxConfig::default(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            keepalive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            rekey_packets: DEFAULT_REKEY_PACKETS,
            buf_in: 512 << 10,
            buf_out: 1 << 20,
        }
    }
}

/// Everything both ends know about a session once stream_ctl has answered.
#[derive(Clone)]
pub struct SessionParams {
    /// The session id.
    pub id: [u8; SESSION_ID_LEN],
    /// The cipher of stream packets.
    pub suite: CipherSuite,
    /// Key material: the stream keys are derived from it.
    pub secret: [u8; KEY_LEN],
    /// The channels, in the order asked for.
    pub channels: Vec<u8>,
    /// The transport.
    pub transport: TransportKind,
    /// The limits.
    pub limits: SessionLimits,
    /// The server's UDP port for this session (0 when UDP is off).
    pub udp_port: u16,
    /// The client's authenticated key, if it presented a certificate (server side).
    pub client: Option<[u8; 32]>,
    /// Channels whose messages the UDP transport carries unreliably (DATAGRAM frames: one
    /// datagram each, never retransmitted, drops counted); empty over TCP.
    pub unreliable: Vec<u8>,
    /// Where a UDP session's datagrams go (transport UDP, from the stream_ctl answer).
    pub udp: Option<UdpRoute>,
}

/// The UDP part of a stream_ctl answer (PROTOCOL §5): where the session's datagrams go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpRoute {
    /// The connection id the server chose; byte 0 names its worker (§11.2).
    pub cid: [u8; 8],
    /// The host to send to; empty: the host the client reached stream_ctl at. Servers
    /// behind NAT, a load balancer or a relay announce another.
    pub host: String,
}

impl std::fmt::Debug for SessionParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("SessionParams")
            .field("id", &hex(&self.id))
            .field("suite", &self.suite)
            .field("channels", &String::from_utf8_lossy(&self.channels))
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// Lowercase hex, for ids in logs and URLs.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lowercase hex (the only form `docs/PROTOCOL.md` §6 allows) into exactly `N`
/// bytes; uppercase digits are refused.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let d = |c: u8| match c {
            b'0'..=b'9' => Some(u32::from(c - b'0')),
            b'a'..=b'f' => Some(u32::from(c - b'a' + 10)),
            _ => None,
        };
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

/// Whether a channel id goes into the `/stream/<channels>` URL as itself: an RFC 3986
/// `pchar` other than `%` (unreserved, sub-delims, `:` and `@`).
fn url_safe(id: u8) -> bool {
    id.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&id)
}

/// Writes channel ids for the `/stream/<channels>` URL (`docs/PROTOCOL.md` §6): an id that
/// is an RFC 3986 `pchar` other than `%` as itself, any other as `%XX` (uppercase hex).
pub fn channels_to_url(ids: &[u8]) -> String {
    let mut out = String::with_capacity(ids.len() * 3);
    for &id in ids {
        if url_safe(id) {
            out.push(id as char);
        } else {
            out.push_str(&format!("%{id:02X}"));
        }
    }
    out
}

/// Decodes every `%XX` (hex digits of either case) of a URL segment; `None` when a `%` is
/// not followed by two hex digits.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            let d = |c: u8| (c as char).to_digit(16);
            out.push((d(hex[0])? * 16 + d(hex[1])?) as u8);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Whether the `<channels>` segment of a `/stream/` URL names exactly `ids`, in order:
/// once every `%XX` in it is decoded, or byte for byte as written (clients that write ids
/// raw, as earlier versions of the spec said).
pub fn url_names_channels(segment: &str, ids: &[u8]) -> bool {
    segment.as_bytes() == ids || percent_decode(segment).is_some_and(|d| d == ids)
}

impl SessionParams {
    /// The two stream secrets, generation 0 of each direction's key chain:
    /// `(client→server, server→client)`.
    pub fn keys(&self) -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
        (
            hkdf_sha256(&self.id, &self.secret, LABEL_C2S),
            hkdf_sha256(&self.id, &self.secret, LABEL_S2C),
        )
    }

    /// The two UDP secrets, generation 0 of each direction's UDP key chain (labels of
    /// their own, so no UDP key is ever a stream key): `(client→server, server→client)`.
    pub fn udp_secrets(&self) -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
        use crate::udp::packet::{LABEL_C2S as U_C2S, LABEL_S2C as U_S2C};
        (hkdf_sha256(&self.id, &self.secret, U_C2S), hkdf_sha256(&self.id, &self.secret, U_S2C))
    }

    /// The packet sealer and opener of one end: the sealer updates its key every
    /// [`SessionLimits::rekey_packets`] packets (clamped to the cipher's limit), the opener
    /// refuses a peer that passes the confidentiality limit without an update.
    pub fn packet_keys(&self, server: bool) -> (Sealer, Opener) {
        let (c2s, s2c) = self.keys();
        let c2s = KeyChain::new(self.suite, c2s);
        let s2c = KeyChain::new(self.suite, s2c);
        let max = self.limits.max_payload;
        let every = packet::update_interval(self.suite, max, self.limits.rekey_packets);
        let limit = packet::confidentiality_limit(self.suite, max);
        if server {
            (
                Sealer::new(s2c, Direction::ServerToClient, every),
                Opener::new(c2s, Direction::ClientToServer, limit),
            )
        } else {
            (
                Sealer::new(c2s, Direction::ClientToServer, every),
                Opener::new(s2c, Direction::ServerToClient, limit),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_ids_in_the_url_are_percent_encoded_and_decoded() {
        // Every id a session may have round-trips, one at a time and all together.
        let all: Vec<u8> = (0x21..=0x7e).collect();
        for ids in all.chunks(1).chain([&all[..]]) {
            let url = channels_to_url(ids);
            assert!(!url.contains(['/', '?', '#']), "{url}");
            assert!(url_names_channels(&url, ids), "{url}");
        }
        assert_eq!(channels_to_url(b"E/?#%a"), "E%2F%3F%23%25a");
        // Lowercase hex is accepted; ids written raw are accepted too.
        assert!(url_names_channels("%2f%3F", b"/?"));
        assert!(url_names_channels("E/%", b"E/%"));
        assert!(url_names_channels("%41", b"%41"));
        assert!(url_names_channels("%41", b"A"));
        // Anything else names other channels.
        assert!(!url_names_channels("%4", b"A"));
        assert!(!url_names_channels("%zz", b"%"));
        assert!(!url_names_channels("EF", b"FE"));
        assert!(!url_names_channels("", b"E"));
    }

    #[test]
    fn session_ids_parse_in_either_case() {
        let id: [u8; 2] = [0xab, 0x0f];
        assert_eq!(hex(&id), "ab0f");
        assert_eq!(unhex::<2>("ab0f"), Some(id));
        assert_eq!(unhex::<2>("AB0F"), None, "uppercase is refused");
        assert_eq!(unhex::<2>("aB0f"), None);
        assert_eq!(unhex::<2>("ab0"), None);
        assert_eq!(unhex::<2>("ab0g"), None);
        assert_eq!(unhex::<2>("+b0f"), None);
    }
}
