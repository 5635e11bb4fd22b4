//! Sans-IO helpers over DNS messages shared by the resolver and the server: cheap header
//! checks before decoding, decoding that cannot take the worker down, names, random ids.

use std::io;

use hickory_proto::op::{Message, OpCode};
use hickory_proto::rr::Name;

/// Length of the fixed DNS header.
pub(crate) const HEADER_LEN: usize = 12;
/// The classic UDP payload limit (RFC 1035 §4.2.1), used when a query carries no EDNS.
pub(crate) const CLASSIC_UDP_MAX: u16 = 512;
/// Random ids drawn per call to the system's random source.
const IDS_PER_REFILL: usize = 32;

/// The fields of a DNS header the handlers look at before decoding the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawHeader {
    pub(crate) id: u16,
    pub(crate) is_response: bool,
    pub(crate) opcode: u8,
    pub(crate) recursion_desired: bool,
    pub(crate) qdcount: u16,
}

/// Why a datagram was not decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WireError {
    /// Shorter than a header.
    Short,
    /// The header's counts promise more records than the datagram could hold.
    Counts,
    /// hickory-proto refused it.
    Decode,
}

/// Reads the header fields, or `None` when there are not 12 bytes.
pub(crate) fn raw_header(data: &[u8]) -> Option<RawHeader> {
    let h: &[u8; HEADER_LEN] = data.get(..HEADER_LEN)?.try_into().ok()?;
    let u16_at = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    Some(RawHeader {
        id: u16_at(0),
        is_response: h[2] & 0x80 != 0,
        opcode: (h[2] >> 3) & 0x0f,
        recursion_desired: h[2] & 0x01 != 0,
        qdcount: u16_at(4),
    })
}

/// Checks the header's counts against the datagram's length, then decodes it.
///
/// The check comes first because the decoder reserves memory for as many entries as the
/// header claims: a 12-byte datagram claiming 65,535 questions would cost megabytes. A
/// question takes at least 5 bytes (root name, type, class) and a record at least 11.
///
/// hickory-proto is fuzzed and meant not to panic, but a panic here would close the esocket
/// (the reactor catches handler panics by closing), which for a server socket means an outage;
/// so a panic is caught and reported as a decode error.
pub(crate) fn decode(data: &[u8]) -> Result<Message, WireError> {
    if data.len() < HEADER_LEN {
        return Err(WireError::Short);
    }
    let count = |i: usize| u64::from(u16::from_be_bytes([data[i], data[i + 1]]));
    let least = count(4) * 5 + (count(6) + count(8) + count(10)) * 11;
    if least > (data.len() - HEADER_LEN) as u64 {
        return Err(WireError::Counts);
    }
    match std::panic::catch_unwind(|| Message::from_vec(data)) {
        Ok(Ok(msg)) => Ok(msg),
        Ok(Err(_)) | Err(_) => Err(WireError::Decode),
    }
}

/// The opcode of a standard query.
pub(crate) fn is_query_opcode(opcode: u8) -> bool {
    OpCode::from_u8(opcode) == OpCode::Query
}

/// Parses a domain name given by a user: absolute whether or not it ends in a dot, IDNA
/// (non-ASCII) names converted to their ASCII form. `None` for the empty or root name and for
/// names over the length limits.
pub(crate) fn parse_name(name: &str) -> Option<Name> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.contains("..") {
        return None;
    }
    // ASCII names are taken as they are (underscores included, as in `_dmarc`, which IDNA
    // processing would refuse); others go through IDNA to their `xn--` form.
    let parsed =
        if trimmed.is_ascii() { Name::from_ascii(trimmed) } else { Name::from_utf8(trimmed) };
    let mut parsed = parsed.ok()?;
    parsed.set_fqdn(true);
    // hickory limits labels; the whole name must also fit its 255-byte wire form.
    (parsed.len() <= 253 && !parsed.is_root()).then_some(parsed)
}

/// A name for users: no trailing dot, lower case as stored.
pub(crate) fn display_name(name: &Name) -> String {
    let mut s = name.to_ascii();
    if s.len() > 1 && s.ends_with('.') {
        s.pop();
    }
    s
}

/// 16-bit query ids from the system's CSPRNG (`getrandom`), drawn in batches.
///
/// Ids must be unpredictable: an off-path attacker who can guess one (and the source port)
/// can forge the answer.
#[derive(Debug, Default)]
pub(crate) struct IdSource {
    buf: [u16; IDS_PER_REFILL],
    /// Ids of `buf` not handed out yet (taken from the end).
    left: usize,
}

impl IdSource {
    /// The next random id.
    ///
    /// # Errors
    /// The random source failed (only on a broken system).
    pub(crate) fn next(&mut self) -> io::Result<u16> {
        if self.left == 0 {
            let mut bytes = [0u8; IDS_PER_REFILL * 2];
            getrandom::fill(&mut bytes).map_err(io::Error::other)?;
            for (slot, pair) in self.buf.iter_mut().zip(bytes.chunks_exact(2)) {
                *slot = u16::from_ne_bytes([pair[0], pair[1]]);
            }
            self.left = IDS_PER_REFILL;
        }
        self.left -= 1;
        Ok(self.buf[self.left])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_header_fields() {
        let h = raw_header(&[0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0]).unwrap();
        assert_eq!(h.id, 0x1234);
        assert!(h.is_response && h.recursion_desired);
        assert_eq!((h.opcode, h.qdcount), (0, 1));
        assert!(raw_header(&[0; 11]).is_none());
        let update = raw_header(&[0, 0, 5 << 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(update.opcode, 5);
        assert!(!is_query_opcode(update.opcode) && is_query_opcode(0));
    }

    #[test]
    fn counts_beyond_the_datagram_are_refused_before_decoding() {
        assert_eq!(decode(&[0; 5]).unwrap_err(), WireError::Short);
        let mut huge = [0u8; 12];
        huge[4] = 0xff;
        huge[5] = 0xff;
        assert_eq!(decode(&huge).unwrap_err(), WireError::Counts);
        let mut records = [0u8; 40];
        records[11] = 4; // four additional records cannot fit 28 bytes
        assert_eq!(decode(&records).unwrap_err(), WireError::Counts);
        assert!(decode(&[0; 12]).is_ok());
        // One question whose name is a compression pointer to itself.
        let looped = [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert_eq!(decode(&looped).unwrap_err(), WireError::Decode);
    }

    #[test]
    fn names_parse_absolute_and_bad_names_are_refused() {
        let n = parse_name("WWW.Example.com").unwrap();
        assert!(n.is_fqdn());
        assert_eq!(display_name(&n), "WWW.Example.com");
        assert_eq!(parse_name("example.com.").unwrap(), parse_name("EXAMPLE.COM").unwrap());
        let long_label = "a".repeat(64);
        let long_name = ["a".repeat(60).as_str(); 5].join(".");
        for bad in ["", ".", "a..b", long_label.as_str(), long_name.as_str()] {
            assert!(parse_name(bad).is_none(), "{bad:?}");
        }
        assert_eq!(display_name(&parse_name("bücher.example").unwrap()), "xn--bcher-kva.example");
        assert_eq!(display_name(&parse_name("_dmarc.example.com").unwrap()), "_dmarc.example.com");
    }

    #[test]
    fn ids_vary() {
        let mut ids = IdSource::default();
        let drawn: std::collections::HashSet<u16> = (0..200).map(|_| ids.next().unwrap()).collect();
        // 200 draws from 65,536 values: a handful of repeats at most.
        assert!(drawn.len() > 190, "{}", drawn.len());
    }
}
