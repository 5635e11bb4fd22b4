//! `ClientConfig`: the timeouts, limits and TLS trust of one request.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::tls::{self, TlsError, Trust};

use super::error::ClientError;

/// Timeouts and limits applied to a request, and whom `https` requests trust. Every limit is
/// a hard bound on memory the client keeps for one response.
///
/// ```
/// use std::time::Duration;
/// use dap_net::http::client::ClientConfig;
///
/// let mut config = ClientConfig::default();
/// config.response_timeout = Duration::from_secs(5);
/// config.max_response_bytes = 1024 * 1024;
/// ```
///
/// Trusting exactly one self-signed certificate (a node that publishes its own):
///
/// ```no_run
/// use dap_net::http::client::ClientConfig;
/// use dap_net::tls::{self, Trust};
///
/// let cert = tls::load_certs("node.pem".as_ref())?.remove(0);
/// let mut config = ClientConfig::default();
/// config.tls = Some(tls::client_config(Trust::Pinned(cert))?);
/// # Ok::<(), dap_net::tls::TlsError>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// How long the TCP connect may take (default 10 s); then
    /// [`ClientError::ConnectTimeout`](super::ClientError::ConnectTimeout).
    pub connect_timeout: Duration,
    /// How long, from the moment the connection is made, sending the request and receiving
    /// the whole response may take, a TLS handshake included (default 30 s); then
    /// [`ClientError::ResponseTimeout`](super::ClientError::ResponseTimeout). A total
    /// deadline, not an idle timer: a server that trickles one byte a second cannot hold the
    /// request open past it.
    pub response_timeout: Duration,
    /// Most bytes of response accepted, counted as they arrive on the wire: status line,
    /// headers and body, chunk framing included (default 8 MiB); beyond it
    /// [`ClientError::TooLarge`](super::ClientError::TooLarge). Under TLS, counted after
    /// decryption.
    pub max_response_bytes: u64,
    /// Most bytes of one response head, status line and headers (default 16 KiB).
    pub max_header_bytes: usize,
    /// Most header fields in one response head (default 64).
    pub max_headers: usize,
    /// The TLS configuration of `https` requests (unused for `http`), e.g. from
    /// [`tls::client_config`] with [`Trust::Pinned`].
    ///
    /// `None` (the default) trusts the operating system's root certificates. They are
    /// loaded once per process, by the first `https` request that needs them (or by
    /// [`fetch_on`](super::fetch_on) / [`fetch_blocking`](super::fetch_blocking) on the
    /// caller's thread, before the request goes to its worker), and cached, a failure
    /// included: every such request then ends with
    /// [`ClientError::NoRoots`](super::ClientError::NoRoots). To keep the load off the
    /// workers entirely, set `Some(tls::client_config(Trust::SystemRoots)?)` up front.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
            max_response_bytes: 8 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            tls: None,
        }
    }
}

impl ClientConfig {
    /// The TLS configuration an `https` request uses: [`tls`](Self::tls), else the system
    /// roots.
    pub fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, ClientError> {
        match &self.tls {
            Some(config) => Ok(config.clone()),
            None => system_roots(),
        }
    }
}

/// The client configuration trusting the system's roots, built on first use. A failure is
/// kept too: the store rarely changes while a process runs, and retrying would re-read it,
/// on a worker, for every request.
pub(crate) fn system_roots() -> Result<Arc<rustls::ClientConfig>, ClientError> {
    static ROOTS: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            tls::client_config(Trust::SystemRoots).map_err(|e| match e {
                TlsError::NoRoots(why) => why,
                other => other.to_string(),
            })
        })
        .clone()
        .map_err(ClientError::NoRoots)
}
