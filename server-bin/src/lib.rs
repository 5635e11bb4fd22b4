//! dap-server: the library half of the `dapd` daemon.
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
//! [`Daemon`] runs it in-process (tests use port 0), [`Daemon::drain_and_stop`] shuts it
//! down gracefully; the `dapd` binary adds the command line, logging and signals.
//!
//! ```no_run
//! use std::time::Duration;
//! use dap_server::{Config, Daemon};
//!
//! let mut config = Config::embedded();
//! config.listen.addr = "127.0.0.1:0".parse()?;
//! let daemon = Daemon::start(config)?;
//! println!("listening on {}", daemon.local_addr());
//! daemon.drain_and_stop(Duration::from_secs(5));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod config;
pub mod daemon;
pub mod logging;
pub mod metrics;
pub mod signals;

pub use config::{Config, ConfigError, DEFAULT_CONFIG, LogFormat};
pub use daemon::{Daemon, DrainReport, StartError};
