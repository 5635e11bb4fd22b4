//! The UDP transport's wire format, sans-IO (`docs/PROTOCOL.md` §11): packets with a
//! server-chosen connection id and a packet number that is never reused in a direction,
//! AEAD-sealed under keys of their own (never the TCP stream's), carrying frames: ACK with
//! ranges and ack delay, channel data at byte offsets, absolute credit, BLOCKED, PING, path
//! challenge and response, CLOSE and unreliable DATAGRAMs.
//!
//! This module is the codec the UDP engine is built on: no sockets, no clock, no state
//! beyond one packet. The engine (connections, loss recovery, congestion control) comes
//! on top of it.

pub mod frame;
pub mod packet;
#[cfg(test)]
mod vectors;

pub use packet::{ConnectionId, Header};
