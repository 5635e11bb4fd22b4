//! The steps: each starts on the client's worker without blocking and reports its end as an
//! [`Input`] tagged with the attempt's generation.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dap_net::dns::LookupKind;
use dap_net::enc::client::{
    HandshakeError, RequestError, call_request, finish_init, init_request, read_response,
};
use dap_net::enc::{CipherSuite, EncSession};
use dap_net::http::client::fetch;
use dap_reactor::WorkerCtx;
use dap_stream::client::{
    CtlError, connect_on, connect_on_tls, ctl_call, read_ctl_answer, udp_connect_on,
    udp_server_addr,
};
use dap_stream::session::ctl::CtlRequest;
use dap_stream::session::{SessionParams, TransportKind};
use dap_stream::transport::http::{EventSink, StreamEvent};
use dap_stream::{ChannelHandler, ChannelProcs, SessionInfo};

use super::outbox::LaneHandler;
use super::{Inner, Input, StepOut, Work, errors};
use crate::config::{ClientConfig, Transport, Uplink};
use crate::{ClientError, Stage};

/// The base of a request URL: `http://addr`, or for an `https` uplink `https://HOST:PORT`
/// with the uplink's host name (what the certificate is checked against; the request is
/// sent to `addr`, see [`to_addr`]).
fn base_url(cfg: &ClientConfig, addr: SocketAddr) -> String {
    if !cfg.https {
        return format!("http://{addr}");
    }
    match &cfg.uplink {
        Uplink::Host(name, port) => format!("https://{name}:{port}"),
        Uplink::Addr(_) => format!("https://{addr}"),
    }
}

/// The name the server's certificate is checked against on an `https` uplink.
fn tls_name(cfg: &ClientConfig, addr: SocketAddr) -> String {
    match &cfg.uplink {
        Uplink::Host(name, _) => name.clone(),
        Uplink::Addr(_) => addr.ip().to_string(),
    }
}

/// Sends a request built on [`base_url`] to the address already resolved.
fn to_addr(
    req: dap_net::http::client::Request,
    addr: SocketAddr,
) -> dap_net::http::client::Request {
    req.resolve_to(addr.ip())
}

impl Inner {
    /// Starts `work`.
    pub(super) fn start(self: &Arc<Self>, ctx: &mut WorkerCtx, work: Work) {
        match work {
            Work::EncInit { attempt, cfg } => self.enc_init(ctx, attempt, &cfg),
            Work::EncFetch { attempt, cfg, addr } => self.enc_fetch(ctx, attempt, &cfg, addr),
            Work::StreamCtl { attempt, cfg, enc, addr } => {
                self.stream_ctl(ctx, attempt, &cfg, enc, addr);
            }
            Work::StreamSession { serial, cfg, params, addr } => {
                self.stream_session(ctx, serial, &cfg, *params, addr);
            }
        }
    }

    fn fail(self: &Arc<Self>, ctx: &mut WorkerCtx, attempt: u64, err: ClientError) {
        self.input_on(ctx, Input::Failed { attempt, err });
    }

    /// Resolves the uplink (a name through DNS, on every EncInit), then runs enc_init.
    fn enc_init(self: &Arc<Self>, ctx: &mut WorkerCtx, attempt: u64, cfg: &ClientConfig) {
        let (name, port) = match &cfg.uplink {
            Uplink::Addr(addr) => return self.enc_fetch(ctx, attempt, cfg, *addr),
            Uplink::Host(name, port) if name == "localhost" => {
                let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), *port);
                return self.enc_fetch(ctx, attempt, cfg, addr);
            }
            Uplink::Host(name, port) => (name.clone(), *port),
        };
        let Some(resolver) = self.resolver.lock().clone() else {
            let why = format!("{name}: no DNS resolver (Client::set_resolver)");
            return self.fail(ctx, attempt, ClientError::WrongAddress(why));
        };
        let me = self.clone();
        let lookup_name = name.clone();
        // The lookup ends on the resolver's worker; its result comes back as an input,
        // which cannot be lost to a full inbox.
        let done = move |result: Result<dap_net::dns::Lookup, dap_net::dns::ResolveError>| {
            let result = match result {
                Ok(l) => match l.addrs.first() {
                    Some(ip) => Ok(SocketAddr::new(*ip, port)),
                    None => Err(ClientError::WrongAddress(format!("{lookup_name}: no addresses"))),
                },
                Err(e) => {
                    let reason = format!("resolving {lookup_name}: {e}");
                    Err(ClientError::Io { stage: Stage::EncInit, reason })
                }
            };
            me.input(Input::Resolved { attempt, result });
        };
        if let Err(e) = resolver.lookup(&name, LookupKind::Both, done) {
            let reason = format!("resolving {name}: {e}");
            self.fail(ctx, attempt, ClientError::Io { stage: Stage::EncInit, reason });
        }
    }

    fn enc_fetch(
        self: &Arc<Self>,
        ctx: &mut WorkerCtx,
        attempt: u64,
        cfg: &ClientConfig,
        addr: SocketAddr,
    ) {
        let url = base_url(cfg, addr);
        let (init, req) = match init_request(&url, &cfg.suites, cfg.auth_cert.as_deref()) {
            Ok((init, req)) => (init, to_addr(req, addr)),
            Err(e) => return self.fail(ctx, attempt, errors::http(Stage::EncInit, &e)),
        };
        let me = self.clone();
        let pinned = cfg.node_key;
        fetch(ctx, req, &cfg.http, move |ctx, result| {
            let session = result
                .map_err(HandshakeError::from)
                .and_then(|resp| finish_init(init, &resp, pinned));
            let input = match session {
                Ok(s) => Input::Done {
                    attempt,
                    stage: Stage::EncInit,
                    out: StepOut::Enc(Arc::new(s), addr),
                },
                Err(e) => Input::Failed { attempt, err: errors::handshake(&e) },
            };
            me.input_on(ctx, input);
        });
    }

    fn stream_ctl(
        self: &Arc<Self>,
        ctx: &mut WorkerCtx,
        attempt: u64,
        cfg: &ClientConfig,
        enc: Arc<EncSession>,
        addr: SocketAddr,
    ) {
        let transport = match cfg.transport {
            Transport::Http => TransportKind::Http,
            Transport::Udp => TransportKind::Udp,
            Transport::Auto if self.udp_down() => TransportKind::Http,
            Transport::Auto => TransportKind::Udp,
        };
        let unreliable =
            if transport == TransportKind::Udp { cfg.unreliable.clone() } else { Vec::new() };
        // One suite offered is a requirement; several leave the choice to the node.
        let suite = match cfg.suites.as_slice() {
            [one] => Some(*one),
            _ => None::<CipherSuite>,
        };
        let body =
            CtlRequest { channels: cfg.channels.clone(), suite, transport, unreliable }.encode();
        let (req, sealed) = match call_request(&base_url(cfg, addr), &enc, &ctl_call(&body)) {
            Ok((req, sealed)) => (to_addr(req, addr), sealed),
            Err(e) => return self.fail(ctx, attempt, errors::ctl(&CtlError::Request(e))),
        };
        let me = self.clone();
        let mux = cfg.mux;
        let auto = (cfg.transport == Transport::Auto).then(|| (cfg.clone(), enc.clone()));
        fetch(ctx, req, &cfg.http, move |ctx, result| {
            let params = result
                .map_err(RequestError::from)
                .and_then(|resp| read_response(&enc, &sealed, resp))
                .map_err(CtlError::from)
                .and_then(|r| read_ctl_answer(r.status, &r.body, mux));
            // Auto, and the node offers no UDP: ask again for HTTP at once.
            if let (Some((cfg, enc)), Err(CtlError::Refused { status: 406, .. })) = (&auto, &params)
                && transport == TransportKind::Udp
            {
                me.set_udp_down(cfg.udp_retry_after);
                return me.stream_ctl(ctx, attempt, cfg, enc.clone(), addr);
            }
            let input = match params {
                Ok(p) => Input::Done {
                    attempt,
                    stage: Stage::StreamCtl,
                    out: StepOut::Session(Box::new(p)),
                },
                Err(e) => Input::Failed { attempt, err: errors::ctl(&e) },
            };
            me.input_on(ctx, input);
        });
    }

    fn stream_session(
        self: &Arc<Self>,
        ctx: &mut WorkerCtx,
        serial: u64,
        cfg: &ClientConfig,
        params: SessionParams,
        addr: SocketAddr,
    ) {
        let procs = self.lane_procs(serial, &params.channels);
        let me = self.clone();
        // Auto over UDP: a session that never gets its first answer means UDP does not get
        // through here; the retry goes over HTTP.
        let auto_udp = (cfg.transport == Transport::Auto && params.transport == TransportKind::Udp)
            .then_some(cfg.udp_retry_after);
        let mut up = false;
        let sink: EventSink = Box::new(move |ev| {
            if let (StreamEvent::Closed(_), Some(after), false) = (&ev, auto_udp, up) {
                me.set_udp_down(after);
            }
            up |= matches!(ev, StreamEvent::Connected { .. });
            let opened = matches!(ev, StreamEvent::Opened { .. });
            // Called on the worker, inside the stream's own callbacks: queue and wake.
            let input = match ev {
                // The channel handles are not needed: the lanes take theirs in `on_new`.
                StreamEvent::Opened { esocket } | StreamEvent::Connected { esocket, .. } => {
                    let stale = {
                        let c = me.core.lock();
                        c.closed || c.stream_serial != serial
                    };
                    if stale {
                        // Nobody will hear this stream (the client is gone or moved on).
                        let _ = esocket.close();
                        return;
                    }
                    if opened {
                        Input::StreamOpened { serial, esocket }
                    } else {
                        Input::StreamUp { serial, esocket }
                    }
                }
                StreamEvent::Closed(err) => Input::StreamClosed { serial, err },
            };
            me.input(input);
        });
        let stats = self.stats.clone();
        let timeout = match auto_udp {
            Some(_) => cfg.udp_fallback,
            None => cfg.http.connect_timeout,
        };
        let started = if params.transport == TransportKind::Udp {
            match udp_server_addr(&params, addr) {
                Ok(server) => udp_connect_on(ctx, server, params, &procs, stats, timeout, sink),
                Err(why) => {
                    let mut sink = sink;
                    sink(StreamEvent::Closed(dap_stream::transport::StreamError::Io(why)));
                    None
                }
            }
        } else if cfg.https {
            let tls = match cfg.http.tls_config() {
                Ok(c) => Some((c, tls_name(cfg, addr))),
                Err(e) => {
                    let mut sink = sink;
                    let why = format!("tls: {e}");
                    sink(StreamEvent::Closed(dap_stream::transport::StreamError::Io(why)));
                    return;
                }
            };
            connect_on_tls(ctx, addr, params, &procs, stats, timeout, sink, tls)
        } else {
            connect_on(ctx, addr, params, &procs, stats, timeout, sink)
        };
        if let Some(h) = started {
            // Held from now on, so a tear-down or a drop closes it even mid-connect.
            let mut c = self.core.lock();
            if !c.closed && c.stream_serial == serial {
                c.stream = Some(h);
            } else {
                c.to_close.push(h);
                drop(c);
                self.drive(ctx);
            }
        }
    }

    /// The stream's channel handlers: each drains its lane of queued writes and hands what
    /// arrives to the application's handler for the channel, or to the message callback.
    fn lane_procs(&self, serial: u64, channels: &[u8]) -> ChannelProcs {
        let mut procs = ChannelProcs::new();
        for &id in channels {
            let user = self.procs.get(id).cloned();
            let out = self.out.clone();
            let sink = self.sink.clone();
            let factory = move |info: &SessionInfo| -> Box<dyn ChannelHandler> {
                Box::new(LaneHandler {
                    serial,
                    out: out.clone(),
                    inner: user.as_ref().map(|f| f(info)),
                    sink: sink.clone(),
                })
            };
            // Ids came back from the node's own answer, already checked to be valid.
            if procs.ch_proc_add(id, factory).is_err() {
                tracing::warn!(id, "invalid channel id in a session");
            }
        }
        procs
    }

    /// With `Transport::Auto`: whether UDP failed here recently.
    fn udp_down(&self) -> bool {
        self.core.lock().udp_down_until.is_some_and(|t| Instant::now() < t)
    }

    /// With `Transport::Auto`: UDP failed here; HTTP for `after`.
    fn set_udp_down(&self, after: Duration) {
        tracing::info!(
            after_ms = after.as_millis() as u64,
            "UDP did not get through; falling back to HTTP"
        );
        self.core.lock().udp_down_until = Some(Instant::now() + after);
    }
}
