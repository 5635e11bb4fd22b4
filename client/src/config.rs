//! What a [`Client`](crate::Client) is told before it connects: where to, who it is, which
//! channels, and how hard to try.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dap_net::enc::{CipherSuite, ClientCert};
use dap_net::http::client::ClientConfig as HttpConfig;
use dap_stream::MuxConfig;

use crate::{ClientError, RetryPolicy};

/// The node a client talks to: an address, or a host name resolved on every EncInit (so a
/// node that moves is found again on reconnect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uplink {
    /// An IPv4 or IPv6 address and port.
    Addr(SocketAddr),
    /// A host name and port; `localhost` resolves to `127.0.0.1` without DNS.
    Host(String, u16),
}

impl Uplink {
    /// Parses `host:port`, `[v6]:port` or `v4:port`; `host` may be an address or a name.
    ///
    /// # Errors
    /// [`ClientError::WrongAddress`] when there is no port, the port is not a number, or
    /// the host is empty or not a valid DNS name (a name ending in a number, such as
    /// `127.0.01`, is refused: it is an IPv4 address in some other spelling).
    pub fn parse(s: &str) -> Result<Uplink, ClientError> {
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(Uplink::Addr(sa));
        }
        let bad = |why: &str| ClientError::WrongAddress(format!("{s:?}: {why}"));
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port (want HOST:PORT)"))?;
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number 0-65535"))?;
        Uplink::new(host, port)
    }

    /// An uplink from a host (address or name) and a port.
    ///
    /// # Errors
    /// [`ClientError::WrongAddress`] for an empty host or one that is neither an address
    /// nor a valid DNS name (see [`parse`](Self::parse)).
    pub fn new(host: &str, port: u16) -> Result<Uplink, ClientError> {
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Uplink::Addr(SocketAddr::new(ip, port)));
        }
        if !valid_host_name(host) {
            return Err(ClientError::WrongAddress(format!("{host:?} is not a host name")));
        }
        Ok(Uplink::Host(host.to_ascii_lowercase(), port))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Uplink::Addr(sa) => sa.port(),
            Uplink::Host(_, port) => *port,
        }
    }
}

impl std::fmt::Display for Uplink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Uplink::Addr(sa) => write!(f, "{sa}"),
            Uplink::Host(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

/// RFC 1123 host names: labels of letters, digits and hyphens, 1-63 bytes each, 253 in all,
/// the last one not all digits: a name ending in a number is an IPv4 address in some other
/// spelling (`127.1`, `127.0.01`, `10.0.0.1.`), which the HTTP client's URLs refuse too.
fn valid_host_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !h.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// How the stream is carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// An upgraded HTTP/1.1 connection (`GET /stream/…` → `101`).
    #[default]
    Http,
    /// The UDP transport (PROTOCOL §11): the session's datagrams go to the node's UDP port
    /// from the client's own socket; the stream is up at the node's first authenticated
    /// answer.
    Udp,
    /// UDP when it works, else HTTP, as browsers do with QUIC: UDP is asked for first; a
    /// node that does not offer it (406), or no authenticated UDP answer within
    /// [`ClientConfig::udp_fallback`], falls back to HTTP, and the client keeps to HTTP for
    /// this uplink for [`ClientConfig::udp_retry_after`] before trying UDP again.
    Auto,
}

/// A client's settings. [`Default`] gives a client of `127.0.0.1:8079` with channel `'E'`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The node.
    pub uplink: Uplink,
    /// The node's Ed25519 public key, pinned: enc_init fails with
    /// [`ClientError::WrongKey`] if the node signs with another. `None` trusts any node key
    /// (the session is still encrypted, but not authenticated to a node).
    pub node_key: Option<[u8; 32]>,
    /// The client certificate presented in enc_init, for nodes that require one.
    pub auth_cert: Option<Arc<ClientCert>>,
    /// The channels asked for in stream_ctl (printable ASCII ids).
    pub channels: Vec<u8>,
    /// Channels (among `channels`) to carry unreliably over UDP: each message one datagram
    /// of at most 1,162 bytes, never retransmitted (PROTOCOL §11.4.5). Over HTTP they are
    /// reliable like the others.
    pub unreliable: Vec<u8>,
    /// Ciphers offered, in order of preference.
    pub suites: Vec<CipherSuite>,
    /// The transport.
    pub transport: Transport,
    /// Tries and delays.
    pub retry: RetryPolicy,
    /// Timeouts and limits of the enc_init and stream_ctl requests. `connect_timeout` also
    /// bounds the stream's connect, and again its upgrade.
    pub http: HttpConfig,
    /// Writes made before streaming are queued and the client goes to streaming on its own
    /// (DAP's connect-on-demand; on by default). Off, such writes fail with
    /// [`WriteError::WrongStage`](crate::WriteError::WrongStage) (unless earlier queued
    /// messages still wait: a write never overtakes them).
    pub connect_on_demand: bool,
    /// Most bytes queued per channel before streaming (1 MiB).
    pub queue_bytes: usize,
    /// Most messages queued per channel before streaming (1,024).
    pub queue_messages: usize,
    /// This end's channel limits (message size, windows, queues).
    pub mux: MuxConfig,
    /// With [`Transport::Auto`]: how long to wait for the node's first authenticated UDP
    /// answer before falling back to HTTP (1 s).
    pub udp_fallback: Duration,
    /// With [`Transport::Auto`]: after a fallback, how long to keep to HTTP (5 minutes).
    pub udp_retry_after: Duration,
    /// The uplink is the node's HTTPS listener: enc_init, stream_ctl and the HTTP stream
    /// run over TLS, trusting what `http.tls` says (the system's roots when unset), with
    /// the certificate checked against the uplink's host. The UDP transport is unchanged.
    pub https: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            uplink: Uplink::Addr(SocketAddr::from(([127, 0, 0, 1], 8079))),
            node_key: None,
            auth_cert: None,
            channels: vec![b'E'],
            unreliable: Vec::new(),
            suites: CipherSuite::ALL.to_vec(),
            transport: Transport::Http,
            retry: RetryPolicy::default(),
            http: HttpConfig::default(),
            connect_on_demand: true,
            queue_bytes: 1 << 20,
            queue_messages: 1024,
            mux: MuxConfig::default(),
            udp_fallback: Duration::from_secs(1),
            udp_retry_after: Duration::from_secs(300),
            https: false,
        }
    }
}

impl ClientConfig {
    /// A default configuration for `uplink`.
    pub fn new(uplink: Uplink) -> Self {
        ClientConfig { uplink, ..ClientConfig::default() }
    }

    /// Sets the channels.
    pub fn channels(mut self, channels: &[u8]) -> Self {
        self.channels = channels.to_vec();
        self
    }

    /// Pins the node key.
    pub fn node_key(mut self, key: [u8; 32]) -> Self {
        self.node_key = Some(key);
        self
    }

    /// Sets the client certificate.
    pub fn auth_cert(mut self, cert: Arc<ClientCert>) -> Self {
        self.auth_cert = Some(cert);
        self
    }

    /// Sets the transport.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Turns connect-on-demand on or off.
    pub fn connect_on_demand(mut self, on: bool) -> Self {
        self.connect_on_demand = on;
        self
    }

    /// Sets the connect timeout (requests and the stream) and the response timeout.
    pub fn timeouts(mut self, connect: Duration, response: Duration) -> Self {
        self.http.connect_timeout = connect;
        self.http.response_timeout = response;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplinks_parse() {
        assert_eq!(
            Uplink::parse("127.0.0.1:8079").unwrap(),
            Uplink::Addr("127.0.0.1:8079".parse().unwrap())
        );
        assert_eq!(Uplink::parse("[::1]:9").unwrap(), Uplink::Addr("[::1]:9".parse().unwrap()));
        assert_eq!(
            Uplink::parse("Node.example:80").unwrap(),
            Uplink::Host("node.example".into(), 80)
        );
        assert_eq!(Uplink::new("::1", 5).unwrap(), Uplink::Addr("[::1]:5".parse().unwrap()));
        let numeric = ["127.0.01:8079", "127.1:80", "10.0.0.1.:80", "host.123:80", "0x7f.1:1"];
        for bad in ["", "host", "host:", "host:99999", ":80", "a b:1", "-x.y:1", "x..y:2"]
            .into_iter()
            .chain(numeric)
        {
            assert!(
                matches!(Uplink::parse(bad), Err(ClientError::WrongAddress(_))),
                "{bad:?} was taken"
            );
        }
    }
}
