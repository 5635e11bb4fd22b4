//! The client side over dap's HTTP client: building the HTTP requests of a handshake and of
//! an enc_http call, reading their answers, and blocking conveniences for tests, tools and
//! examples.
//!
//! The builders ([`init_request`], [`call_request`]) and readers ([`finish_init`],
//! [`read_response`]) do no I/O, so code on a worker can run them around
//! [`fetch`](crate::http::client::fetch); [`handshake_blocking`] and [`request_blocking`]
//! wrap them around [`fetch_blocking`](client::fetch_blocking).

use dap_reactor::Worker;

use super::cipher::CipherSuite;
use super::handshake::{EncInit, EncInitError};
use super::keys::{ClientCert, PUBLIC_KEY_LEN};
use super::refusal::{ENC_ERROR_HEADER, Refusal};
use super::server::ENC_INIT_PATH;
use super::session::{EncSession, OpenResponseError, SealError, SealedRequest};
use crate::http::client::{self, ClientConfig, ClientError, Method, Request, Response};

/// Why a handshake over HTTP failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The HTTP exchange failed (a bad URL included).
    #[error("enc_init: {0}")]
    Http(#[from] ClientError),
    /// The server answered something other than `200`; `refusal` is its `Enc-Error`
    /// reason, when it sent a known one.
    #[error("enc_init refused with status {status} ({refusal:?})")]
    Refused {
        /// The status.
        status: u16,
        /// The reason.
        refusal: Option<Refusal>,
    },
    /// The `200` body did not check out (bad signature, wrong pinned key, ...).
    #[error("enc_init: {0}")]
    Init(#[from] EncInitError),
    /// The server said "not now" (`429 rate-limited` or `503 busy`, `docs/PROTOCOL.md`
    /// §3.7): the same request may succeed after `retry_after` (its `Retry-After`, 1 s
    /// when absent or unreadable).
    #[error(
        "enc_init refused for now with status {status} ({refusal:?}); retry after {retry_after:?}"
    )]
    NotNow {
        /// The status.
        status: u16,
        /// The reason.
        refusal: Refusal,
        /// How long to wait first.
        retry_after: std::time::Duration,
    },
}

/// Why an enc_http call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The request could not be sealed (no counters left, a bad method).
    #[error("enc request: {0}")]
    Seal(#[from] SealError),
    /// The HTTP exchange failed (a bad URL included).
    #[error("enc request: {0}")]
    Http(#[from] ClientError),
    /// The enc layer refused the request (the answer carried `Enc-Error`, or was not
    /// sealed); `refusal` is the reason when it is a known one. After
    /// [`Refusal::needs_new_key`] ones, run the handshake again.
    #[error("enc request refused with status {status} ({refusal:?})")]
    Refused {
        /// The status.
        status: u16,
        /// The reason.
        refusal: Option<Refusal>,
    },
    /// The sealed answer did not open.
    #[error("enc request: {0}")]
    Open(#[from] OpenResponseError),
}

/// One enc_http call: where to, and what to seal.
#[derive(Clone, Copy, Debug)]
pub struct EncCall<'a> {
    /// The method.
    pub method: Method,
    /// The route prefix, e.g. `/api/`.
    pub prefix: &'a str,
    /// The path below the prefix (sealed).
    pub sub_path: &'a str,
    /// The query (sealed), if any.
    pub query: Option<&'a str>,
    /// The body (sealed); empty for none.
    pub body: &'a [u8],
}

impl<'a> EncCall<'a> {
    /// A call with no query and no body.
    pub fn new(method: Method, prefix: &'a str, sub_path: &'a str) -> Self {
        EncCall { method, prefix, sub_path, query: None, body: &[] }
    }

    /// Sets the query.
    pub fn query(self, query: &'a str) -> Self {
        EncCall { query: Some(query), ..self }
    }

    /// Sets the body.
    pub fn body(self, body: &'a [u8]) -> Self {
        EncCall { body, ..self }
    }
}

/// A handler's answer, opened.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncResponse {
    /// The status (authenticated).
    pub status: u16,
    /// The headers as received (in the clear, not authenticated).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, opened.
    pub body: Vec<u8>,
}

/// Starts a handshake: the state to keep and the `POST /enc_init` request to send to
/// `base_url` (`http://host:port` or `https://…`, no trailing slash).
///
/// # Errors
/// [`ClientError::BadUrl`] for a URL the client cannot use.
pub fn init_request(
    base_url: &str,
    suites: &[CipherSuite],
    cert: Option<&ClientCert>,
) -> Result<(EncInit, Request), ClientError> {
    let (init, body) = EncInit::start(suites, cert);
    let req = Request::post(&format!("{base_url}{ENC_INIT_PATH}"), body)?
        .with_header("Content-Type", "application/octet-stream")?;
    Ok((init, req))
}

/// Reads the answer to [`init_request`].
///
/// # Errors
/// [`HandshakeError::Refused`] for a status other than 200, [`HandshakeError::Init`] when
/// the body does not check out.
pub fn finish_init(
    init: EncInit,
    resp: &Response,
    pinned_node_key: Option<[u8; PUBLIC_KEY_LEN]>,
) -> Result<EncSession, HandshakeError> {
    if resp.status != 200 {
        let refusal = refusal_of(resp);
        if let Some(r) = refusal.filter(|r| r.is_transient() && r.status() == resp.status) {
            let secs = resp
                .header_str("Retry-After")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(1)
                .clamp(1, 3600);
            let retry_after = std::time::Duration::from_secs(secs);
            return Err(HandshakeError::NotNow { status: resp.status, refusal: r, retry_after });
        }
        return Err(HandshakeError::Refused { status: resp.status, refusal });
    }
    Ok(init.finish(&resp.body, pinned_node_key)?)
}

/// Seals `call` with `session`: the HTTP request to send to `base_url`, and the sealed
/// request to keep for [`read_response`].
///
/// # Errors
/// [`RequestError::Seal`] or [`RequestError::Http`] (a bad URL).
pub fn call_request(
    base_url: &str,
    session: &EncSession,
    call: &EncCall<'_>,
) -> Result<(Request, SealedRequest), RequestError> {
    let sealed =
        session.seal_request(call.method.as_str(), call.sub_path, call.query, call.body)?;
    let url = format!("{base_url}{}", sealed.target(call.prefix));
    let mut req = Request::new(call.method, &url)?.with_body(sealed.body.clone());
    for (name, value) in &sealed.headers {
        req = req.with_header(name, value)?;
    }
    Ok((req, sealed))
}

/// Reads the answer to a request from [`call_request`].
///
/// # Errors
/// [`RequestError::Refused`] when the enc layer refused it (an `Enc-Error` header),
/// [`RequestError::Open`] when a sealed body does not open.
pub fn read_response(
    session: &EncSession,
    sealed: &SealedRequest,
    resp: Response,
) -> Result<EncResponse, RequestError> {
    if resp.header(ENC_ERROR_HEADER).is_some() {
        return Err(RequestError::Refused { status: resp.status, refusal: refusal_of(&resp) });
    }
    let body = session.open_response(sealed, resp.status, &resp.body)?;
    Ok(EncResponse { status: resp.status, headers: resp.headers, body })
}

fn refusal_of(resp: &Response) -> Option<Refusal> {
    resp.header_str(ENC_ERROR_HEADER).and_then(Refusal::from_reason)
}

/// Runs a handshake with the server at `base_url` from `worker`, waiting for it (not on a
/// worker thread of the same reactor: see [`fetch_blocking`](client::fetch_blocking)).
///
/// # Errors
/// [`HandshakeError`].
pub fn handshake_blocking(
    worker: &Worker,
    base_url: &str,
    suites: &[CipherSuite],
    cert: Option<&ClientCert>,
    pinned_node_key: Option<[u8; PUBLIC_KEY_LEN]>,
    config: &ClientConfig,
) -> Result<EncSession, HandshakeError> {
    let (init, req) = init_request(base_url, suites, cert)?;
    let resp = client::fetch_blocking(worker, req, config)?;
    finish_init(init, &resp, pinned_node_key)
}

/// Sends one enc_http call to the server at `base_url` from `worker` and opens the answer,
/// waiting for it (not on a worker thread of the same reactor).
///
/// # Errors
/// [`RequestError`].
pub fn request_blocking(
    worker: &Worker,
    base_url: &str,
    session: &EncSession,
    call: &EncCall<'_>,
    config: &ClientConfig,
) -> Result<EncResponse, RequestError> {
    let (req, sealed) = call_request(base_url, session, call)?;
    let resp = client::fetch_blocking(worker, req, config)?;
    read_response(session, &sealed, resp)
}
