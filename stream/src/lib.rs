//! dap-stream: one physical connection, many logical channels.
//!
//! Channels are identified by one ASCII byte (e.g. `'E'`); packets are encrypted (AEAD),
//! ordered, defragmented and replay-protected, with per-channel flow control. The stream runs
//! over an upgraded HTTP connection and over UDP through a sans-IO reliable transport engine.
//!
//! This crate is a skeleton until the stream issue lands; see `docs/ARCHITECTURE.md`.
#![forbid(unsafe_code)]
