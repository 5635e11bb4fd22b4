//! dap-server: the node, the framework's entry point, and the `dapd` daemon built on it.
//!
//! dapd serves, on one HTTP/1.1 listener (and optionally a TLS one):
//! `POST /enc_init` (the handshake), `POST /stream_ctl` (enc_http; creates a session),
//! `GET /stream/<channels>` (the stream upgrade), `GET /health` (`200 ok`, `503` while
//! draining) and `GET /metrics` (Prometheus text), with the built-in channels `'E'` (echo)
//! and `'P'` (publish/subscribe, [`dap_stream::pubsub`]); optionally an authoritative DNS
//! server. Everything is configured by a TOML file ([`Config`]); the embedded default
//! ([`DEFAULT_CONFIG`], the repository's `config/dapd.toml`) listens on 127.0.0.1:8079 with
//! one worker per CPU.
//!
//! [`Node`] is all of that as a library: [`Node::builder`] (or [`Node::from_config`]) adds
//! the application's own channels beside or instead of the built-in ones, starts
//! everything, and [`Node::shutdown`] drains it. [`cli::run`] is dapd's whole command line
//! for a daemon of your own; dapd's `main` is that one call with the built-in channels.
//!
//! ```
//! use std::time::Duration;
//! use dap_server::Node;
//!
//! let node = Node::builder()
//!     .http("127.0.0.1:0".parse()?)
//!     .threads(1)
//!     .builtin_channels()
//!     .start()?;
//! println!("listening on {}", node.local_addr());
//! node.shutdown(Duration::from_secs(5));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod cli;
pub mod cluster;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod signals;

pub use config::{Config, ConfigError, DEFAULT_CONFIG, LogFormat};
pub use node::{DrainReport, Node, NodeBuilder, NodeStats, ReloadReport, StartError};
