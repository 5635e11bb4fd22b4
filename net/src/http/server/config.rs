//! Server-wide settings and per-route limits.

use std::time::Duration;

use dap_proc::Priority;

use crate::http::HttpLimits;

/// Settings of an [`HttpServer`](super::HttpServer). The defaults suit a public-facing
/// server; every bound is configurable.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HttpConfig {
    /// Head limits, and the body limit of routes that do not set their own.
    pub limits: HttpLimits,
    /// From the first byte of a request head to its end (slowloris); then 408 and close.
    /// Default 10 s.
    pub header_timeout: Duration,
    /// From the end of a head to the end of its body; then 408 and close. Default 60 s.
    pub body_timeout: Duration,
    /// Idle time allowed between requests on a kept-alive connection; then it is closed
    /// quietly. Default 5 s.
    pub keep_alive_timeout: Duration,
    /// How long output may stay blocked (the client is not reading); then the connection is
    /// closed. Default 30 s.
    pub write_timeout: Duration,
    /// After an error answer that closes the connection, how long the server keeps reading
    /// (and discarding) what the client still sends, so that the client reads the answer
    /// instead of a reset (nginx's lingering close). Default 2 s.
    pub lingering_close: Duration,
    /// Bytes discarded during a lingering close before the connection is dropped anyway.
    /// Default 1 MiB.
    pub lingering_bytes: usize,
    /// Requests served on one connection before it is closed (`None`: no limit).
    pub max_requests_per_connection: Option<u64>,
    /// The `Server` header value (`None`: no header). Default `dap`.
    pub server_name: Option<String>,
    /// The proc-thread priority of simple handlers. Default normal.
    pub proc_priority: Priority,
    /// Whether a client may half-close: after the end of its stream (`shutdown(SHUT_WR)`),
    /// the requests already read are still answered, even those waiting on a proc thread
    /// or a `Responder`, and then the connection closes. Off (the default, as in hyper),
    /// the end of the stream means the client has gone: requests in flight are abandoned
    /// (their handlers hear [`HttpError::Closed`](super::HttpError)) and the connection
    /// closes at once, so a long-poll does not hold a departed client's connection.
    pub half_close: bool,
    /// Requests per source block (per /32 and /64 by default), as nginx's `limit_req`
    /// with a delay: within the rate and its burst a request is served at once; past it,
    /// it takes the block's next turn and the server stops reading that connection until
    /// the turn comes, so a client pipelining thousands of requests costs the worker
    /// nothing while it waits, and other clients are served in between. At most `burst`
    /// requests of a block wait at once: past that a request is answered `429 Too Many
    /// Requests` with `Retry-After` and its connection closes (as nginx refuses past its
    /// `burst`), so a block opening thousands of connections costs one answer each, not a
    /// wake-up per turn. Counted: [`HttpStatsSnapshot::rate_paused`] and
    /// [`rate_refused`](super::HttpStatsSnapshot::rate_refused). `None` (the default): no
    /// limit.
    ///
    /// [`HttpStatsSnapshot::rate_paused`]: super::HttpStatsSnapshot::rate_paused
    pub request_rate: Option<crate::limit::RateLimit>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            limits: HttpLimits::default(),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            keep_alive_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            lingering_close: Duration::from_secs(2),
            lingering_bytes: 1 << 20,
            max_requests_per_connection: None,
            server_name: Some("dap".to_string()),
            proc_priority: Priority::Normal,
            half_close: false,
            request_rate: None,
        }
    }
}

/// What a route accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouteLimits {
    /// Largest body, in bytes, after chunked decoding; beyond: 413 and close. `None`: the
    /// server's [`HttpLimits::max_body`].
    pub max_body: Option<u64>,
    /// Methods the route answers (empty: any); others get 405 with an `Allow` header.
    pub methods: Vec<String>,
    /// Refuse bodies without a `Content-Length` (chunked, or a POST/PUT/PATCH with no length
    /// at all) with 411.
    pub length_required: bool,
}

impl Default for RouteLimits {
    fn default() -> Self {
        RouteLimits {
            max_body: None,
            methods: vec!["GET".into(), "HEAD".into(), "POST".into()],
            length_required: false,
        }
    }
}

impl RouteLimits {
    /// Limits with these methods (and the other defaults).
    pub fn methods(methods: &[&str]) -> Self {
        RouteLimits { methods: methods.iter().map(|m| m.to_string()).collect(), ..Self::default() }
    }

    /// Sets the body limit.
    pub fn max_body(mut self, bytes: u64) -> Self {
        self.max_body = Some(bytes);
        self
    }

    /// Requires `Content-Length` on bodies.
    pub fn length_required(mut self, on: bool) -> Self {
        self.length_required = on;
        self
    }

    pub(crate) fn allows(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }
}
