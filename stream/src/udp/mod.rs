//! The UDP transport, sans-IO (`docs/PROTOCOL.md` §11): packets with a server-chosen
//! connection id and a packet number that is never reused in a direction, AEAD-sealed
//! under keys of their own (never the TCP stream's), carrying frames: ACK with ranges, ack
//! delay and ECN counts, channel data at byte offsets, absolute credit, BLOCKED, PING, path
//! challenge and response, CLOSE and unreliable DATAGRAMs.
//!
//! [`endpoint::Endpoint`] routes a worker's datagrams to its [`connection::Connection`]s,
//! which carry a session's mux over packets. Their parts, each sans-IO and tested on its
//! own: the codec ([`packet`], [`frame`]); RTT estimation ([`rtt`], RFC 9002 §5); the
//! receiver's [`ack`] tracking and schedule; the sender's loss [`recovery`] (RFC 9002 §6,
//! with adaptive reordering thresholds); each channel's [`send_buf`] (data retransmitted,
//! never packets) and receive-side [`assemble`]r (in order, exactly once, per channel: no
//! cross-channel head-of-line blocking); congestion control ([`congestion`]: NewReno and
//! CUBIC behind one trait, HyStart++), the [`pacer`], [`ecn`] validation, path MTU
//! discovery ([`mtu`]), [`path`] validation and the key update schedule ([`keys`]). [`sim`]
//! is a simulated network on a virtual clock, to test engines without sockets.

pub mod ack;
pub mod assemble;
pub mod congestion;
pub mod connection;
pub mod ecn;
pub mod endpoint;
pub mod frame;
pub mod keys;
pub mod mtu;
pub mod pacer;
pub mod packet;
pub mod path;
pub mod recovery;
#[cfg(test)]
mod reorder_tests;
pub mod rtt;
pub mod send_buf;
pub mod sim;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;

pub use packet::{ConnectionId, Header};
