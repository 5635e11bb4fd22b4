//! Transports carry a session's [`Mux`](crate::mux::Mux) payloads between the two ends.
//!
//! The channel and session core is transport-agnostic: a transport feeds the mux the
//! payloads it receives, sends what the mux polls, and implements [`Wake`] so that writes
//! made through [`ChannelHandle`](crate::ChannelHandle)s on other threads reach it. The
//! HTTP transport ([`http`]) wraps payloads in encrypted, sequenced stream packets on an
//! upgraded TCP connection; the UDP engine carries the same payloads in its own packets.

pub mod http;
pub mod udp;

/// Tells a transport that a channel has something to send (called from any thread).
pub trait Wake: Send + Sync + 'static {
    /// Schedule a flush on the transport's own thread. Must not block.
    fn wake(&self);
}

/// Close codes carried in close packets (`docs/PROTOCOL.md` §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
#[non_exhaustive]
pub enum CloseCode {
    /// An orderly end.
    Normal = 0,
    /// The peer broke the protocol (bad frame, flow control, fragment order, message size,
    /// unknown channel).
    Protocol = 1,
    /// Nothing arrived within the idle timeout.
    IdleTimeout = 2,
    /// The server is shutting down.
    GoingAway = 3,
    /// The receiver is over a resource budget it shares with other streams (an unfinished
    /// message would take its reassembly past the bound); not the peer's fault: it may
    /// connect again later.
    OverBudget = 4,
}

impl CloseCode {
    /// The code for a received value (unknown values read as `Protocol`).
    pub fn from_u16(v: u16) -> Self {
        match v {
            0 => CloseCode::Normal,
            2 => CloseCode::IdleTimeout,
            3 => CloseCode::GoingAway,
            4 => CloseCode::OverBudget,
            _ => CloseCode::Protocol,
        }
    }
}

/// Why a stream ended, as its owner is told.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The peer closed it with a close packet.
    #[error("closed by the peer ({code:?}: {reason})")]
    PeerClosed {
        /// The code.
        code: CloseCode,
        /// The reason text.
        reason: String,
    },
    /// We closed it.
    #[error("closed locally")]
    LocalClose,
    /// A packet failed authentication.
    #[error("a packet failed authentication")]
    Auth,
    /// A packet's sequence number was not the next (lost, replayed or reordered).
    #[error("packet sequence broken: {0}")]
    Sequence(String),
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Nothing arrived within the idle timeout.
    #[error("idle timeout")]
    IdleTimeout,
    /// The server did not accept the upgrade (client side).
    #[error("upgrade refused: HTTP {0}")]
    UpgradeRefused(u16),
    /// The connection failed or closed without a close packet.
    #[error("connection lost: {0}")]
    Io(String),
}
