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
//!
//! # A channel server of your own
//!
//! The short way is `dap_server::Node` (the `dap-server` crate), which wires all of the
//! below, plus UDP, `/health`, `/metrics` and the drain, from one builder. This is what
//! it wires, for programs that want the pieces: a handler, the [`StreamServer`] with
//! [`EncServer`](dap_net::enc::EncServer) on an HTTP server, and a client session that
//! talks to it (the `dap-client` crate does the client side with retries).
//!
//! ```
//! use std::sync::mpsc;
//! use std::time::Duration;
//! use dap_net::enc::{EncConfig, EncServer, NodeKey, cipher::CipherSuite};
//! use dap_net::http::client::ClientConfig;
//! use dap_net::http::server::{HttpConfig, HttpServer};
//! use dap_net::server::Server;
//! use dap_stream::session::{TransportKind, ctl::CtlRequest};
//! use dap_stream::transport::http::StreamEvent;
//! use dap_stream::{Channel, ChannelHandler, ChannelProcs, Message, MuxConfig};
//! use dap_stream::{StreamConfig, StreamServer};
//!
//! /// Channel 'S': answers every message in upper case.
//! struct Shout;
//! impl ChannelHandler for Shout {
//!     fn packet_in(&mut self, ch: &mut Channel<'_>, msg: Message) {
//!         let _ = ch.write(msg.ty, msg.data.to_ascii_uppercase());
//!     }
//! }
//!
//! // The server: a reactor and its proc pool (enc_init runs there), the handler's
//! // factory, enc, the stream routes, one HTTP listener.
//! let reactor = dap_reactor::Reactor::builder().threads(1).pin(false).start()?;
//! let pool = dap_proc::ProcPool::builder().pin(false).start_for(&reactor)?;
//! let mut procs = ChannelProcs::new();
//! procs.ch_proc_add(b'S', |_session| Box::new(Shout))?;
//! let stream = StreamServer::new(procs, StreamConfig::default());
//! let enc = EncServer::new(NodeKey::generate(), EncConfig::default());
//! let mut http = HttpServer::new(HttpConfig::default());
//! enc.install(&mut http);
//! stream.install(&mut http, &enc);
//! let http = http.start(&reactor, Server::builder().tcp("127.0.0.1:0".parse()?))?;
//! let addr = http.server().tcp_addrs()[0];
//!
//! // A client session: enc_init (the node key pinned), stream_ctl, the stream.
//! let worker = &reactor.workers()[0];
//! let base = format!("http://{addr}");
//! let cfg = ClientConfig::default();
//! let node_key = Some(enc.node_public_key());
//! let key = dap_net::enc::client::handshake_blocking(
//!     worker, &base, &CipherSuite::ALL, None, node_key, &cfg,
//! )?;
//! let ask = CtlRequest {
//!     channels: b"S".to_vec(),
//!     suite: None,
//!     transport: TransportKind::Http,
//!     unreliable: Vec::new(),
//! };
//! let params = dap_stream::client::stream_ctl_request_blocking(
//!     worker, &base, &key, &ask, MuxConfig::default(), &cfg,
//! )?;
//! let (tx, rx) = mpsc::channel();
//! let mut mine = ChannelProcs::new();
//! mine.ch_proc_add(b'S', move |_| {
//!     let tx = tx.clone();
//!     struct Print(mpsc::Sender<bytes::Bytes>);
//!     impl ChannelHandler for Print {
//!         fn packet_in(&mut self, _: &mut Channel<'_>, msg: Message) {
//!             let _ = self.0.send(msg.data);
//!         }
//!     }
//!     Box::new(Print(tx))
//! })?;
//! let (etx, events) = mpsc::channel();
//! dap_stream::client::connect(
//!     worker,
//!     addr,
//!     params,
//!     std::sync::Arc::new(mine),
//!     Default::default(),
//!     Duration::from_secs(10),
//!     Box::new(move |ev| drop(etx.send(ev))),
//! )?;
//! let Ok(StreamEvent::Connected { channels, .. }) = events.recv_timeout(Duration::from_secs(30))
//! else {
//!     panic!("the stream did not connect");
//! };
//! channels[0].write(0, &b"hello"[..])?;
//! assert_eq!(rx.recv_timeout(Duration::from_secs(30))?, &b"HELLO"[..]);
//!
//! // Stop: the streams first (CLOSE going-away), then the threads.
//! stream.drain(Duration::from_secs(5));
//! drop(http);
//! reactor.shutdown(Duration::from_secs(1));
//! pool.stop_drain(Duration::from_secs(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
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
pub use mux::{Mux, MuxConfig, MuxError, ReassemblyBudget};
pub use server::{CID_TAGGED, SharedSessions, StreamConfig, StreamServer, Taken, udp_share_name};
pub use stats::{StreamStats, StreamStatsSnapshot};
