//! The client side of a session: stream_ctl over enc_http, then the stream. The full client
//! state machine (stages, retries) is in dap-client; these are the steps it drives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dap_net::enc::client::{EncCall, RequestError, request_blocking};
use dap_net::enc::{CipherSuite, EncSession};
use dap_net::http::client::{ClientConfig, Method};
use dap_reactor::{EsocketHandle, PostError, Worker, WorkerCtx};

use crate::channel::{ChannelProcs, SessionInfo};
use crate::codec::{DecodeError, packet};
use crate::mux::{Mux, MuxConfig};
use crate::server::STREAM_CTL_PATH;
use crate::session::ctl::{CtlRequest, decode_answer};
use crate::session::{SessionParams, TransportKind};
use crate::stats::StreamStats;
use crate::transport::StreamError;
use crate::transport::http::{EventSink, StreamConn, StreamEvent};

/// Why stream_ctl did not give a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CtlError {
    /// The enc_http call failed (connection, unknown key, replay, ...).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The server refused the request (400 malformed, 404 unknown channel, 406 cipher or
    /// transport not offered, 503 full).
    #[error("stream_ctl refused with {status}: {reason}")]
    Refused {
        /// The status.
        status: u16,
        /// The server's reason.
        reason: String,
    },
    /// The answer did not decode.
    #[error("bad stream_ctl answer: {0}")]
    BadAnswer(#[from] DecodeError),
}

/// The enc_http call that carries a stream_ctl request `body` (an encoded
/// [`CtlRequest`]), for callers that do their own HTTP.
pub fn ctl_call<'a>(body: &'a [u8]) -> EncCall<'a> {
    EncCall::new(Method::Post, STREAM_CTL_PATH, "").body(body)
}

/// Reads a stream_ctl answer (status and opened body) into the session's parameters;
/// `local` gives the limits the server does not send.
///
/// # Errors
/// [`CtlError::Refused`] for a status other than 200, `BadAnswer` for a body that does not
/// decode.
pub fn read_ctl_answer(
    status: u16,
    body: &[u8],
    local: MuxConfig,
) -> Result<SessionParams, CtlError> {
    if status != 200 {
        let reason = String::from_utf8_lossy(&body[..body.len().min(256)]).into_owned();
        return Err(CtlError::Refused { status, reason });
    }
    Ok(decode_answer(body, local)?)
}

/// Asks the server at `base_url` for a session, over enc_http with `enc`, waiting for the
/// answer (not on a worker thread of `worker`'s reactor).
///
/// # Errors
/// [`CtlError`].
pub fn stream_ctl_blocking(
    worker: &Worker,
    base_url: &str,
    enc: &EncSession,
    channels: &[u8],
    suite: Option<CipherSuite>,
    local: MuxConfig,
    http: &ClientConfig,
) -> Result<SessionParams, CtlError> {
    let req = CtlRequest {
        channels: channels.to_vec(),
        suite,
        transport: TransportKind::Http,
        unreliable: Vec::new(),
    };
    stream_ctl_request_blocking(worker, base_url, enc, &req, local, http)
}

/// [`stream_ctl_blocking`] with the whole request: any transport (UDP, with unreliable
/// channels) or suite.
///
/// # Errors
/// As [`stream_ctl_blocking`].
pub fn stream_ctl_request_blocking(
    worker: &Worker,
    base_url: &str,
    enc: &EncSession,
    req: &CtlRequest,
    local: MuxConfig,
    http: &ClientConfig,
) -> Result<SessionParams, CtlError> {
    let body = req.encode();
    let resp = request_blocking(worker, base_url, enc, &ctl_call(&body), http)?;
    read_ctl_answer(resp.status, &resp.body, local)
}

/// Connects to `addr` on `worker` and attaches the session `params` over HTTP, with a
/// handler from `procs` per channel: [`connect_on`] from any thread.
///
/// # Errors
/// The worker's inbox is full or it has stopped; `events` is dropped unheard.
pub fn connect(
    worker: &Worker,
    addr: SocketAddr,
    params: SessionParams,
    procs: Arc<ChannelProcs>,
    stats: Arc<StreamStats>,
    timeout: Duration,
    events: EventSink,
) -> Result<(), PostError> {
    worker.exec(move |ctx| {
        connect_on(ctx, addr, params, &procs, stats, timeout, events);
    })
}

/// Connects to `addr` from this worker and attaches the session `params` over HTTP, with a
/// handler from `procs` per channel. `events` hears [`StreamEvent::Connected`] (with a
/// handle per channel) and, last, [`StreamEvent::Closed`] — also when connecting fails at
/// once. `timeout` bounds the TCP connect and, separately, the wait for the `101`.
///
/// Returns the connection's esocket, or `None` when it failed at once (and `Closed` was
/// already reported).
pub fn connect_on(
    ctx: &mut WorkerCtx,
    addr: SocketAddr,
    params: SessionParams,
    procs: &ChannelProcs,
    stats: Arc<StreamStats>,
    timeout: Duration,
    events: EventSink,
) -> Option<EsocketHandle> {
    connect_on_tls(ctx, addr, params, procs, stats, timeout, events, None)
}

/// [`connect_on`], over TLS when `tls` gives a client configuration and the server name
/// to check (the node's HTTPS listener).
#[allow(clippy::too_many_arguments)]
pub fn connect_on_tls(
    ctx: &mut WorkerCtx,
    addr: SocketAddr,
    params: SessionParams,
    procs: &ChannelProcs,
    stats: Arc<StreamStats>,
    timeout: Duration,
    events: EventSink,
    tls: Option<(Arc<dap_net::tls::ClientConfig>, String)>,
) -> Option<EsocketHandle> {
    // The sink moves into the connection; if connecting fails at once, it comes back
    // through this slot to report it.
    let slot = Arc::new(parking_lot::Mutex::new(Some(events)));
    let back = slot.clone();
    let fail = move |e: String| {
        if let Some(mut f) = slot.lock().take() {
            f(StreamEvent::Closed(StreamError::Io(e)));
        }
    };
    let buf_in = ctx.limits().buf_in_cap;
    if params.limits.max_payload + packet::OVERHEAD > buf_in {
        fail(format!(
            "the server's max_payload {} does not fit buf_in_cap {buf_in}",
            params.limits.max_payload
        ));
        return None;
    }
    let info = SessionInfo { session_id: params.id, client: None };
    let mux = Mux::new(&params.channels, procs, info, params.limits.mux);
    let mut params = params;
    params.limits.connect_timeout = timeout;
    let sink: EventSink = Box::new(move |ev| {
        if let Some(f) = back.lock().as_mut() {
            f(ev);
        }
    });
    let host = match &tls {
        Some((_, name)) if name.parse::<std::net::Ipv6Addr>().is_ok() => {
            format!("[{name}]:{}", addr.port())
        }
        Some((_, name)) => format!("{name}:{}", addr.port()),
        None => addr.to_string(),
    };
    let mut conn = StreamConn::client(params, &host, mux, stats, sink);
    if let Some((config, name)) = tls {
        conn = conn.with_tls(config, name);
    }
    match ctx.connect_tcp_timeout(addr, timeout, Box::new(conn)) {
        Ok(h) => Some(h),
        Err(e) => {
            fail(e.to_string());
            None
        }
    }
}

/// Starts a session's UDP connection on `ctx`'s worker: a socket on an ephemeral port of
/// `server`'s family, the engine's client connection to `server` (the session's UDP port,
/// at the host of its answer), its first datagram at once. `events` hears `Opened` when
/// the first datagram has left, `Connected` at the first authentic answer, and `Closed`
/// once; with no answer within `timeout`, the
/// session ends (`Io`). Returns the socket's handle, or `None` after reporting `Closed`.
pub fn udp_connect_on(
    ctx: &mut WorkerCtx,
    server: SocketAddr,
    params: SessionParams,
    procs: &ChannelProcs,
    stats: Arc<StreamStats>,
    timeout: Duration,
    mut events: EventSink,
) -> Option<EsocketHandle> {
    use crate::udp::connection::{Connection, Side};
    let Some(route) = params.udp.clone() else {
        events(StreamEvent::Closed(StreamError::Protocol(
            "a UDP answer without a connection id".into(),
        )));
        return None;
    };
    let bind: SocketAddr = if server.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = match std::net::UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => {
            events(StreamEvent::Closed(StreamError::Io(e.to_string())));
            return None;
        }
    };
    // Connected to the server: the kernel keeps the route instead of looking it up on every
    // send (a few per cent of a bulk sender's time), and drops datagrams from anyone else.
    // (dapd answers from the address it was reached at, as NATs and relays do.)
    if let Err(e) = socket.connect(server) {
        tracing::debug!(error = %e, %server, "UDP client socket left unconnected");
    }
    let info = SessionInfo { session_id: params.id, client: None };
    let mux = Mux::new(&params.channels, procs, info, params.limits.mux);
    let config = crate::udp::connection::ConnectionConfig {
        idle_timeout: params.limits.idle_timeout,
        keepalive: params.limits.keepalive,
        rekey_packets: params.limits.rekey_packets,
        ..Default::default()
    };
    let cid = crate::udp::packet::ConnectionId(route.cid);
    let now = std::time::Instant::now();
    let conn = Connection::new(Side::Client, &params, cid, Some(server), mux, config, now);
    // The sink comes back if the socket cannot be added.
    let slot = Arc::new(parking_lot::Mutex::new(Some(events)));
    let back = slot.clone();
    let sink: EventSink = Box::new(move |ev| {
        if let Some(f) = back.lock().as_mut() {
            f(ev);
        }
    });
    let handler = crate::transport::udp::UdpClientConn::new(conn, sink, stats, timeout);
    let opts = dap_reactor::UdpOptions::default().dont_fragment(true);
    match ctx.add_udp_with(socket, opts, Box::new(handler)) {
        Ok(h) => Some(h),
        Err(e) => {
            if let Some(mut f) = slot.lock().take() {
                f(StreamEvent::Closed(StreamError::Io(e.to_string())));
            }
            None
        }
    }
}

/// Where a UDP session's datagrams go: the session's UDP port at the host its answer
/// names, or, when it names none, at the host stream_ctl was reached at (`ctl`).
///
/// # Errors
/// The answer names a host that is not an IP address (names are not resolved here).
pub fn udp_server_addr(params: &SessionParams, ctl: SocketAddr) -> Result<SocketAddr, String> {
    let host = params.udp.as_ref().map_or("", |r| r.host.as_str());
    let ip = if host.is_empty() {
        ctl.ip()
    } else {
        host.parse().map_err(|_| format!("UDP host {host:?} is not an IP address"))?
    };
    Ok(SocketAddr::new(ip, params.udp_port))
}
