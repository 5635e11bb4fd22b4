//! dap-stream: one physical connection, many logical channels.
//!
//! A *session* is created over enc_http by `POST /stream_ctl` (channels, cipher, transport
//! in; a 128-bit session id, key material and limits out) and then carried by a *stream*:
//! an upgraded HTTP connection (`GET /stream/<channels>?session_id=…` → `101`), or later the
//! UDP transport engine. Inside, *channels* — each named by one printable ASCII byte, DAP
//! style (`'E'` is the built-in echo) — carry messages both ways with fragmentation,
//! reassembly under a hard limit, and credit-based flow control per channel and per
//! connection. Every stream packet is AEAD-sealed with a nonce built from its direction and
//! sequence number; a gap, replay, reordering or forgery closes the stream.
//!
//! The layers, bottom up:
//! - [`codec`]: stream packets and channel frames, sans-IO (`docs/PROTOCOL.md` §7–§8);
//! - [`mux`]: the session core — channels, reassembly, flow control — sans-IO and unaware of
//!   the transport;
//! - [`transport`]: the HTTP transport on the reactor ([`transport::http::StreamConn`]);
//! - [`session`]: session parameters, the server's session table, the stream_ctl codec;
//! - [`server`] and [`client`]: the routes a server installs, and the client side of the
//!   handshake.
//!
//! Handlers: register a [`ChannelHandler`] factory per channel id in [`ChannelProcs`]
//! (DAP's `ch_proc_add`); each session gets its own handler, called on its worker.
#![forbid(unsafe_code)]

pub mod channel;
pub mod client;
pub mod codec;
pub mod echo;
pub mod mux;
pub mod pubsub;
pub mod server;
pub mod session;
pub mod stats;
pub mod transport;
pub mod udp;

pub use channel::{
    Channel, ChannelHandle, ChannelHandler, ChannelProcs, ChannelStats, ChannelStatsSnapshot,
    HandleWriteError, Message, SessionInfo, WriteError,
};
pub use mux::{Mux, MuxConfig, MuxError};
pub use server::{StreamConfig, StreamServer};
pub use stats::{StreamStats, StreamStatsSnapshot};
