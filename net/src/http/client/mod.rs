//! The HTTP/1.1 client on the reactor, over TCP (`http://`) or TLS (`https://`).
//!
//! A request runs on one worker, on an outgoing TCP esocket of its own, and its result comes
//! back to a callback on that same worker:
//!
//! * [`fetch`] from code already on a worker (a handler, a timer, a [`Worker::exec`]
//!   closure): the callback may hold worker-local state (`Rc`, `&mut` access through the
//!   [`WorkerCtx`] it is given);
//! * [`fetch_on`] from any thread, with a `Send` callback that runs on the chosen worker;
//! * [`fetch_blocking`] from a thread that can wait (tests, command-line tools).
//!
//! # What it does
//!
//! * `GET`, `HEAD`, `POST` (and `PUT`, `DELETE`, `OPTIONS`) to `http://` and `https://` URLs
//!   whose host is an IPv4 literal, a bracketed IPv6 literal, or a name the caller resolved
//!   ([`Request::resolve_to`]; this module does no DNS — see `dap_net::dns`).
//! * `https` runs TLS 1.2 or 1.3 (rustls, see [`crate::tls`]) on the same connection. The
//!   server's certificate is checked against the URL's host — the name, or the address
//!   literal — whatever address the request is sent to, and that name is sent as SNI. Whom
//!   to trust is [`ClientConfig::tls`]: `None` trusts the operating system's root
//!   certificates (loaded once per process and cached), or give a configuration from
//!   [`tls::client_config`](crate::tls::client_config), e.g. with
//!   [`Trust::Pinned`](crate::tls::Trust::Pinned) for a node's self-signed certificate. A
//!   refused certificate or a failed handshake ends the request with [`ClientError::Tls`];
//!   system roots that cannot be loaded, with [`ClientError::NoRoots`]. One limit: the
//!   reactor does not tell a TLS `close_notify` from a bare TCP close, so a body delimited
//!   only by the close (no `Content-Length`, not chunked) is taken as complete at either;
//!   bodies with either framing are never accepted short.
//! * One request per connection: the client sends `Connection: close` and closes the
//!   connection once the response is complete. No keep-alive, no pipelining, no redirects, no
//!   content decoding; `Host` and `Content-Length` are written for you.
//! * Bodies framed by `Content-Length`, by the chunked coding (extensions accepted, trailers
//!   read and dropped), or by the server closing the connection; no body for `HEAD`, 1xx,
//!   204 and 304 responses, whatever their headers say (RFC 9112 §6.3). Interim 1xx
//!   responses are skipped. Ambiguous framing (conflicting lengths, `Content-Length` with
//!   `Transfer-Encoding`, codings other than `chunked`) is refused.
//! * Limits ([`ClientConfig`]): a connect timeout, a total response timeout, and caps on
//!   response bytes, head bytes and header count. Nothing past a cap is stored.
//!
//! # How it is built
//!
//! [`ResponseParser`] is sans-IO: it reads bytes it is given and never touches a socket, so it
//! is tested byte by byte and can be fuzzed. The esocket handler around it only moves bytes
//! between `buf_in` / `buf_out` and the parser and maps reactor events (connect failure,
//! deadline, end of stream) to one result. For `https` it installs the TLS layer when the
//! esocket is created; the worker then decrypts into `buf_in` and encrypts from `buf_out`,
//! and nothing else changes. The response deadline is the esocket's own
//! ([`Esocket::set_deadline`](dap_reactor::Esocket::set_deadline)), so a request costs one
//! esocket and no extra timer.
//!
//! # Example
//!
//! ```
//! use std::io::{Read, Write};
//! use dap_net::http::client::{self, ClientConfig, Request};
//!
//! // A one-shot server on a thread.
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! let url = format!("http://{}/hello", listener.local_addr()?);
//! std::thread::spawn(move || {
//!     let (mut s, _) = listener.accept().unwrap();
//!     let mut buf = [0u8; 1024];
//!     let _ = s.read(&mut buf);
//!     s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nworld").unwrap();
//! });
//!
//! let reactor = dap_reactor::Reactor::builder().threads(1).pin(false).start()?;
//! let worker = reactor.worker(0).unwrap();
//! let resp = client::fetch_blocking(worker, Request::get(&url)?, &ClientConfig::default())?;
//! assert_eq!(resp.status, 200);
//! assert_eq!(&resp.body[..], b"world");
//! reactor.shutdown(std::time::Duration::from_secs(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`Worker::exec`]: dap_reactor::Worker::exec
//! [`WorkerCtx`]: dap_reactor::WorkerCtx

mod config;
mod conn;
mod error;
mod fetch;
mod parser;
mod request;
mod response;
mod url;

pub use config::ClientConfig;
pub use error::ClientError;
pub use fetch::{fetch, fetch_blocking, fetch_on};
pub use parser::{Parsed, ResponseParseError, ResponseParser};
pub use request::{Method, Request};
pub use response::Response;
