//! enc: the encryption handshake (`POST /enc_init`) and encrypted requests (enc_http).
//!
//! A client and a server agree on a key with one HTTP request, then exchange requests whose
//! sub-path, query and body are sealed with it (DAP's `enc_http`). `docs/PROTOCOL.md` §1–§4
//! is the exact, versioned wire spec, with test vectors.
//!
//! # How it works
//!
//! * **Handshake** ([`handshake`], [`message`]): the client `POST`s its ephemeral X25519
//!   key, the cipher suites it offers and, optionally, a [`ClientCert`] (an Ed25519 key and
//!   a signature over the request). The server answers with its own ephemeral key, the
//!   chosen suite, a 128-bit [`KeyId`] from the CSPRNG and the key's TTL, all signed by its
//!   long-term [`NodeKey`] over a hash of the whole exchange. Both sides derive one AEAD
//!   key per direction with HKDF-SHA256 (ChaCha20-Poly1305 by default, AES-256-GCM
//!   negotiable). A client that pins the node key cannot be talked to by anyone else.
//! * **Keys** ([`KeyStore`]): the server keeps each key under its id — concurrent,
//!   bounded (the oldest key no request has used makes room when full; a key in use is
//!   never evicted, and a store full of them answers handshakes `503 busy`), forgotten
//!   after an idle TTL (a short one for keys never used) or a maximum age. Requests for an
//!   unknown or expired key get 401. Handshakes are rate-limited per source address block
//!   (`429 rate-limited`, [`crate::limit`]).
//! * **enc_http** ([`enc_http`], [`EncSession`]): each request names its key (`KeyID`) and
//!   a counter (`Enc-Seq`) that the client never repeats and the server accepts only once
//!   ([`replay`]); the counter and a per-part prefix make every nonce unique. The response
//!   body comes back sealed under the other direction's key.
//!
//! The deciding parts — message codecs, handshake, key store, replay window, sealing and
//! opening — are sans-IO: no sockets, and time passed in. [`EncServer`] maps them onto the
//! [`HttpServer`](crate::http::server::HttpServer); [`client`] onto the HTTP client.
//!
//! Nothing secret reaches a log or a `Debug` output: keys show their suite or public half,
//! requests their lengths.
//!
//! # Example
//!
//! A handshake and a sealed round trip, sans-IO (over HTTP, see [`EncServer`] and
//! [`client::handshake_blocking`]):
//!
//! ```
//! use dap_net::enc::handshake::{self, AcceptParams};
//! use dap_net::enc::{CipherSuite, ClientAuth, EncInit, NodeKey, enc_http};
//!
//! let node = NodeKey::generate();
//! // Client: start, and send `request` as the body of POST /enc_init.
//! let (init, request) = EncInit::start(&[CipherSuite::ChaCha20Poly1305], None);
//! // Server: check it, answer with `accepted.response`, store `accepted.material`.
//! let params = AcceptParams {
//!     node: &node,
//!     suites: &CipherSuite::ALL,
//!     client_auth: &ClientAuth::None,
//!     key_ttl_secs: 600,
//! };
//! let accepted = handshake::accept(&request, &params)?;
//! // Client: verify the node's signature (pinning its key) and derive the session.
//! let session = init.finish(&accepted.response, Some(node.public_key()))?;
//!
//! let sealed = session.seal_request("POST", "notes/1", None, b"secret")?;
//! let opened = enc_http::open_request(
//!     &accepted.material.c2s,
//!     &session.key_id(),
//!     sealed.seq,
//!     "POST",
//!     &sealed.path_suffix,
//!     None,
//!     &sealed.body,
//! )?;
//! assert_eq!((opened.sub_path.as_str(), &opened.body[..]), ("notes/1", &b"secret"[..]));
//! let reply = enc_http::seal_response(
//!     &accepted.material.s2c,
//!     &session.key_id(),
//!     sealed.seq,
//!     "POST",
//!     opened.flags,
//!     200,
//!     b"stored",
//! );
//! assert_eq!(session.open_response(&sealed, 200, &reply)?, b"stored");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod allow_list;
pub mod cipher;
pub mod client;
mod config;
pub mod enc_http;
pub mod handshake;
pub mod key_id;
pub mod keys;
pub mod keystore;
pub mod message;
mod refusal;
pub mod replay;
mod server;
mod session;
mod stats;

pub use allow_list::{AllowList, AllowListError};
pub use cipher::CipherSuite;
pub use config::{ClientAuth, EncConfig};
pub use handshake::{AcceptError, EncInit, EncInitError};
pub use key_id::KeyId;
pub use keys::{ClientCert, KeyFileError, NodeKey};
pub use keystore::{
    KeyInfo, KeyMaterial, KeyStore, KeyStoreConfig, KeyStoreStats, LookupError, SharedKeys,
    StoreFull, UseError,
};
pub use refusal::{ENC_ERROR_HEADER, Refusal};
pub use replay::REPLAY_WINDOW;
pub use server::{ENC_INIT_PATH, EncRequest, EncServer};
pub use session::{EncSession, OpenResponseError, SealError, SealedRequest};
pub use stats::EncStatsSnapshot;
