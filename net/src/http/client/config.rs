//! `ClientConfig`: the timeouts and limits of one request.

use std::time::Duration;

/// Timeouts and limits applied to a request. Every limit is a hard bound on memory the
/// client keeps for one response.
///
/// ```
/// use std::time::Duration;
/// use dap_net::http::client::ClientConfig;
///
/// let mut config = ClientConfig::default();
/// config.response_timeout = Duration::from_secs(5);
/// config.max_response_bytes = 1024 * 1024;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// How long the TCP connect may take (default 10 s); then
    /// [`ClientError::ConnectTimeout`](super::ClientError::ConnectTimeout).
    pub connect_timeout: Duration,
    /// How long, from the moment the connection is made, sending the request and receiving
    /// the whole response may take (default 30 s); then
    /// [`ClientError::ResponseTimeout`](super::ClientError::ResponseTimeout). A total
    /// deadline, not an idle timer: a server that trickles one byte a second cannot hold the
    /// request open past it.
    pub response_timeout: Duration,
    /// Most bytes of response accepted, counted as they arrive on the wire: status line,
    /// headers and body, chunk framing included (default 8 MiB); beyond it
    /// [`ClientError::TooLarge`](super::ClientError::TooLarge).
    pub max_response_bytes: u64,
    /// Most bytes of one response head, status line and headers (default 16 KiB).
    pub max_header_bytes: usize,
    /// Most header fields in one response head (default 64).
    pub max_headers: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
            max_response_bytes: 8 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 64,
        }
    }
}
