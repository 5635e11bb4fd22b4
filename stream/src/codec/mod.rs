//! Wire formats, sans-IO: stream packets (the encrypted envelope on ordered transports) and
//! channel frames (what a packet's payload is made of). `docs/PROTOCOL.md` §7–§8 is the spec.

pub mod frame;
pub mod keys;
pub mod packet;
#[cfg(test)]
mod vectors;

/// Why bytes from the peer could not be decoded. Every variant is fatal for the stream that
/// carried them (the peer is broken or hostile).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The packet does not start with the magic bytes `DS`.
    #[error("bad magic")]
    BadMagic,
    /// A protocol version this build does not speak.
    #[error("unsupported version {0}")]
    BadVersion(u8),
    /// An unknown packet type.
    #[error("unknown packet type {0}")]
    BadType(u8),
    /// An unknown frame type (UDP packets, PROTOCOL §11.3).
    #[error("unknown frame type {0:#04x}")]
    BadFrameType(u8),
    /// A length field over the configured limit.
    #[error("length {0} over the limit")]
    TooLong(u64),
    /// A frame or packet that ends before its declared length.
    #[error("truncated")]
    Truncated,
    /// A field with a value the spec forbids (reserved bits set, a bad channel id, ...).
    #[error("malformed: {0}")]
    Malformed(&'static str),
}
