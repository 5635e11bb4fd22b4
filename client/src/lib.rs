//! dap-client: a connection to a dap node through a state machine, usable from any thread.
//!
//! A client goes through stages `Begin → EncInit → StreamCtl → StreamSession →
//! StreamConnected → StreamStreaming` ([`Stage`]), each with a [`Status`]:
//!
//! - **EncInit**: `POST /enc_init` — an X25519 key agreed with the node, whose Ed25519
//!   signature is checked against the pinned node key; an optional client certificate;
//! - **StreamCtl**: `POST /stream_ctl` over enc_http — a session for the chosen channels;
//! - **StreamSession → StreamConnected**: the stream's connection, upgraded (`101`);
//! - **StreamStreaming**: channels are live; writes queued before streaming
//!   (connect-on-demand) drain in order.
//!
//! The deciding part, [`Machine`], is sans-IO: it says which step to run, when to retry
//! (exponential back-off with jitter, 0.5 s doubling to 30 s, without limit unless
//! [`RetryPolicy::max_tries`] says so) and what to tear down, and is
//! tested with a virtual clock. [`Client`] drives it on a reactor worker with non-blocking
//! requests; its methods can be called from any thread, and its callbacks run on its
//! worker. Failures are [`ClientError`]s that name the stage they belong to.
//!
//! # Examples
//!
//! A client that stays connected: [`Client::builder`] gives it a worker thread of its
//! own, reconnects without limit (back-off 0.5 s doubling to 30 s, with jitter), and
//! queues writes made while it is not streaming (connect-on-demand). Here against a node
//! on this machine with the echo channel `'E'` (the hidden lines start one):
//!
//! ```
//! # use dap_net::enc::{EncConfig, EncServer, NodeKey};
//! # use dap_net::http::server::{HttpConfig, HttpServer};
//! # use dap_net::server::Server;
//! # use dap_stream::{ChannelProcs, StreamConfig, StreamServer};
//! # let reactor = dap_reactor::Reactor::builder().threads(1).pin(false).start()?;
//! # let _pool = dap_proc::ProcPool::builder().pin(false).start_for(&reactor)?;
//! # let mut procs = ChannelProcs::new();
//! # dap_stream::echo::register(&mut procs);
//! # let stream = StreamServer::new(procs, StreamConfig::default());
//! # let enc = EncServer::new(NodeKey::generate(), EncConfig::default());
//! # let mut http = HttpServer::new(HttpConfig::default());
//! # enc.install(&mut http);
//! # stream.install(&mut http, &enc);
//! # let http = http.start(&reactor, Server::builder().tcp("127.0.0.1:0".parse()?))?;
//! # let (node_addr, node_key) = (http.server().tcp_addrs()[0], enc.node_public_key());
//! use std::sync::mpsc;
//! use std::time::Duration;
//! use dap_client::{Client, Transport, Uplink};
//!
//! let (tx, rx) = mpsc::channel();
//! let client = Client::builder(Uplink::Addr(node_addr))
//!     .node_key(node_key) // pinned: only this node will do
//!     .channels(b"E")
//!     .transport(Transport::Auto) // UDP when it answers, else HTTP
//!     .on_message(move |_channel, msg| tx.send(msg.data).unwrap())
//!     .on_status(|stage, status, why| {
//!         if let Some(why) = why {
//!             eprintln!("{stage}: {status:?} ({why}), trying again");
//!         }
//!     })
//!     .start()?;
//! client.write(b'E', 0, &b"hello"[..])?; // queued until the stream is up
//! assert_eq!(rx.recv_timeout(Duration::from_secs(30))?, &b"hello"[..]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The stages one by one, on a worker of the application's reactor:
//!
//! ```no_run
//! use std::time::Duration;
//! use dap_client::{Client, ClientConfig, Stage, Uplink};
//!
//! let reactor = dap_reactor::Reactor::builder().threads(1).start()?;
//! let cfg = ClientConfig::new(Uplink::parse("127.0.0.1:8079")?);
//! let client = Client::new(&reactor.workers()[0], cfg, Default::default())?;
//! client.on_status(|stage, status, why| println!("{stage}: {status:?} {why:?}"));
//! match client.go_stage_blocking(Stage::StreamStreaming, Duration::from_secs(10)) {
//!     Ok(_) => println!("streaming"),
//!     Err(e) => eprintln!("failed at {}: {e}", e.stage()),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod client;
mod config;
mod error;
pub mod machine;
mod stage;

pub use client::{Client, ClientBuilder, MessageFn, StageCallback, StatusFn, WriteError};
pub use config::{ClientConfig, Transport, Uplink};
pub use error::ClientError;
pub use machine::{Action, Event, Machine, RetryPolicy};
pub use stage::{Stage, Status};
