//! One HTTP/1.1 connection: the request state machine driven by esocket callbacks.
//!
//! Requests are taken one at a time: a pipelined request waits in `buf_in` until the one
//! before it is answered, so responses leave in request order without a reorder buffer, and
//! a client that sends faster than it reads fills its own buffers (reading pauses), never the
//! server's memory.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use dap_proc::Flip;
use dap_reactor::{Esocket, Handler, LogThrottle};

use super::exchange::{BodyFlow, Exchange, HttpError, ProcHandler};
use super::route::RouteKind;
use super::stats::Counter;
use super::{Shared, status_error_counter};
use crate::http::response::{BodyLen, Headers, push_chunk_header, status_has_body, write_head};
use crate::http::{
    BodyFraming, ChunkedDecoder, DateCache, Request, RequestHead, Response, parse_request_head,
};
use crate::limit::Admit;

thread_local! {
    /// One `Date` value per worker thread, rebuilt once a second.
    static DATE: RefCell<DateCache> = RefCell::new(DateCache::default());
}

/// Below this size a body is copied into `buf_out`; above, it is queued by reference.
const COPY_MAX: usize = 4096;

/// The kernel receive buffer of a connection once its source was over the request rate.
const PAUSED_RECV_BUFFER: usize = 16 << 10;

/// Pipelined requests started in one go; then the connection yields to the worker's others
/// (a client pipelining thousands of requests must not hold the worker for all of them).
const PIPELINE_BURST: usize = 16;

/// Warnings load can repeat on every connection: at most 5 lines per 10 s each, the next
/// one saying how many were left out (the counters keep the whole count).
static NO_TIMER: LogThrottle = LogThrottle::new(5, Duration::from_secs(10));
static NOT_RUN: LogThrottle = LogThrottle::new(5, Duration::from_secs(10));
static NO_TLS: LogThrottle = LogThrottle::new(5, Duration::from_secs(10));

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of a request (keep-alive idle).
    Idle,
    /// Part of a head has arrived.
    Head,
    /// Reading a body.
    Body,
    /// The request is read; its answer is being prepared.
    Handling,
    /// A streaming response body is being written.
    Streaming,
    /// The connection is closing; nothing more is read.
    Closing,
}

enum BodyState {
    Done,
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// A response a handler asked for, written once its callback returns.
pub(crate) enum Pending {
    Whole(Response),
    Start { status: u16, headers: Headers, len: Option<u64> },
    Upgrade(Response, Box<dyn Handler>),
}

/// The request being served.
struct Current {
    seq: u64,
    /// `None` once handed to a simple handler.
    head: Option<RequestHead>,
    route: usize,
    body: BodyState,
    max_body: u64,
    /// A simple route's body so far.
    body_buf: Vec<u8>,
    handler: Option<Box<dyn ProcHandler>>,
    is_head: bool,
    keep_alive: bool,
    http10: bool,
    pending: Option<Pending>,
    /// A streaming body: how it is framed, and bytes written so far.
    stream: Option<(BodyLen, u64)>,
    answered: bool,
}

impl Current {
    /// A request with no route, body or handler yet; one that closes unless told otherwise.
    fn bare(seq: u64) -> Self {
        Current {
            seq,
            head: None,
            route: usize::MAX,
            body: BodyState::Done,
            max_body: 0,
            body_buf: Vec::new(),
            handler: None,
            is_head: false,
            keep_alive: false,
            http10: false,
            pending: None,
            stream: None,
            answered: false,
        }
    }
}

/// The esocket handler of one HTTP connection.
pub(crate) struct HttpConn {
    sh: Arc<Shared>,
    pub(crate) peer: Option<SocketAddr>,
    worker: usize,
    phase: Phase,
    cur: Option<Current>,
    /// Output that did not fit `buf_out`; while any waits, no new request is started.
    out: VecDeque<Bytes>,
    head_buf: Vec<u8>,
    seq: u64,
    served: u64,
    /// The handler that took the connection over after a `101`.
    upgraded: Option<Box<dyn Handler>>,
    /// Closing after an error: input is read and discarded until the peer closes, the
    /// lingering time passes, or this many more bytes have been thrown away.
    linger_left: Option<usize>,
    /// The peer finished sending (it may have only half-closed): the requests already read
    /// are answered, then the connection closes.
    peer_done: bool,
    /// [`PIPELINE_BURST`] requests were started in one go and more wait in the input: the
    /// rest are served from `on_write` (write interest is on).
    deferred: bool,
    /// Reading is paused until the source's request rate allows the next request.
    rate_paused: bool,
    /// The next request already has its turn under the request rate (it waited for it).
    rate_admitted: bool,
    /// The request being answered, for its access-log line.
    access: Option<Access>,
}

/// One request's access-log line (target `dap::access`), written when its answer is done.
struct Access {
    method: String,
    /// The path without its query (which may carry a session id), at most 200 bytes.
    path: String,
    started: std::time::Instant,
    status: u16,
    bytes: u64,
}

impl Access {
    fn new(method: &str, path: &str) -> Self {
        let path = path.split('?').next().unwrap_or("");
        let cut = (0..=path.len().min(200)).rev().find(|&i| path.is_char_boundary(i)).unwrap_or(0);
        Access {
            method: method.chars().take(16).collect(),
            path: path[..cut].to_string(),
            started: std::time::Instant::now(),
            status: 0,
            bytes: 0,
        }
    }

    fn log(self, peer: Option<SocketAddr>) {
        tracing::info!(
            target: "dap::access",
            method = %self.method,
            path = %self.path,
            status = self.status,
            bytes = self.bytes,
            duration_us = self.started.elapsed().as_micros() as u64,
            peer = %peer.map_or_else(|| "-".to_string(), |p| p.to_string()),
            "request"
        );
    }
}

impl HttpConn {
    pub(crate) fn new(sh: Arc<Shared>, peer: Option<SocketAddr>) -> Self {
        HttpConn {
            sh,
            peer,
            worker: 0,
            phase: Phase::Idle,
            cur: None,
            out: VecDeque::new(),
            head_buf: Vec::with_capacity(256),
            seq: 0,
            served: 0,
            upgraded: None,
            linger_left: None,
            peer_done: false,
            deferred: false,
            rate_paused: false,
            rate_admitted: false,
            access: None,
        }
    }

    /// The handler the connection was upgraded to, if it is an `H`.
    pub(crate) fn upgraded_as<H: Handler>(&mut self) -> Option<&mut H> {
        let h = self.upgraded.as_mut()?;
        let any: &mut dyn std::any::Any = &mut **h;
        any.downcast_mut::<H>()
    }

    pub(crate) fn head(&self) -> Option<&RequestHead> {
        self.cur.as_ref().and_then(|c| c.head.as_ref())
    }

    pub(crate) fn seq(&self) -> u64 {
        self.cur.as_ref().map_or(0, |c| c.seq)
    }

    pub(crate) fn set_max_body(&mut self, bytes: u64) {
        if let Some(c) = &mut self.cur {
            c.max_body = bytes;
        }
    }

    pub(crate) fn set_pending(&mut self, p: Pending) {
        if let Some(c) = &mut self.cur
            && !c.answered
            && c.pending.is_none()
        {
            c.pending = Some(p);
        }
    }

    fn count(&self, c: Counter) {
        self.sh.stats.add(self.worker, c);
    }

    fn deadline(&self, es: &mut Esocket<'_>, after: Option<Duration>) {
        if let Err(e) = es.set_deadline(after) {
            // The worker's timer table is full: without a deadline this connection could
            // be held open forever, so it is not kept.
            if let Some(suppressed) = NO_TIMER.check() {
                tracing::warn!(error = %e, suppressed, "no timer for an HTTP connection; closing it");
            }
            es.close_now();
        }
    }

    /// Parses and serves requests while input, output room and the phase allow; once the
    /// peer has finished sending and nothing more is owed to it, closes.
    fn process(&mut self, es: &mut Esocket<'_>) {
        self.serve_input(es);
        if self.peer_done && self.upgraded.is_none() && !es.is_closing() {
            let settled =
                self.out.is_empty() && !matches!(self.phase, Phase::Handling | Phase::Streaming);
            // With nothing being answered, what is left of the input is a head or a body
            // cut short by the end of the stream: it never completes.
            if settled {
                es.close();
            }
        }
    }

    fn serve_input(&mut self, es: &mut Esocket<'_>) {
        let mut started = 0;
        self.deferred = false;
        if self.rate_paused {
            return;
        }
        loop {
            if self.upgraded.is_some() || !self.out.is_empty() || es.is_closing() {
                return;
            }
            match self.phase {
                Phase::Idle | Phase::Head => {
                    if es.buf_in().is_empty() {
                        return;
                    }
                    if started == PIPELINE_BURST {
                        // Pipelined requests take turns with the worker's other
                        // connections: the rest are served when `on_write` comes round.
                        self.deferred = true;
                        es.set_writable(true);
                        return;
                    }
                    // A new request (not the rest of a head) counts against the rate, once:
                    // a request that waited for its turn goes on when it comes.
                    if self.phase == Phase::Idle
                        && !std::mem::take(&mut self.rate_admitted)
                        && let (Some(rate), Some(peer)) = (&self.sh.rate, self.peer)
                    {
                        match rate.admit(peer.ip(), es.worker().now()) {
                            Admit::Now => {}
                            Admit::After(wait) => return self.pause(es, wait),
                            Admit::Refused(r) => return self.refuse_rate(es, r.retry_after),
                        }
                    }
                    match parse_request_head(es.buf_in(), &self.sh.parse_limits) {
                        Ok(Some((head, n))) => {
                            es.consume(n);
                            started += 1;
                            self.start(es, head);
                        }
                        Ok(None) => {
                            if es.buf_in().len() >= es.worker().limits().buf_in_cap {
                                // The head cannot fit the input buffer: it never completes.
                                self.refuse(es, 431);
                                return;
                            }
                            if self.phase == Phase::Idle {
                                self.phase = Phase::Head;
                                self.deadline(es, Some(self.sh.config.header_timeout));
                            }
                            return;
                        }
                        Err(e) => {
                            tracing::debug!(peer = ?self.peer, error = %e, "bad request head");
                            self.refuse(es, e.status());
                            return;
                        }
                    }
                }
                Phase::Body => {
                    if !self.read_body(es) {
                        return;
                    }
                }
                Phase::Handling | Phase::Streaming | Phase::Closing => return,
            }
        }
    }

    /// The source is over its request rate and the next request has its turn after
    /// `wait`: reading stops until then (the kernel holds what the client sends meanwhile,
    /// and TCP slows it), then the request is served without being counted again. Without
    /// a timer slot the connection is closed instead of served early.
    fn pause(&mut self, es: &mut Esocket<'_>, wait: Duration) {
        self.count(Counter::RatePaused);
        self.rate_paused = true;
        self.rate_admitted = true;
        es.set_readable(false);
        // The wait is the server's, not the client's: the connection's deadline (keep-alive
        // or header) runs from when the turn comes.
        self.deadline(es, Some(wait + self.sh.config.header_timeout));
        // A client past its rate sends faster than it is served: a small kernel buffer
        // closes its TCP window soon, and a flood of requests stops costing the kernel too.
        // Kept for the connection's life (requests on it are rate-limited anyway).
        let _ = es.set_recv_buffer(PAUSED_RECV_BUFFER);
        let h = es.handle();
        let resume = move |t: &mut Esocket<'_>| {
            t.worker().with_esocket(h, |es| {
                es.set_readable(true);
                es.with_handler::<HttpConn, _>(|c, es| {
                    c.rate_paused = false;
                    c.process(es);
                });
            });
        };
        if es.worker().add_oneshot(wait.max(Duration::from_millis(1)), resume).is_err() {
            es.close_now();
        }
    }

    /// Routes a parsed head and starts serving it.
    fn start(&mut self, es: &mut Esocket<'_>, head: RequestHead) {
        self.count(Counter::Requests);
        self.seq += 1;
        if tracing::enabled!(target: "dap::access", tracing::Level::INFO) {
            self.access = Some(Access::new(head.method(), head.path()));
        }
        let sh = self.sh.clone();
        let limit_reached =
            sh.config.max_requests_per_connection.is_some_and(|m| self.served + 1 >= m);
        let body = head.body;
        let mut cur = Current {
            max_body: sh.config.limits.max_body,
            is_head: head.method() == "HEAD",
            keep_alive: head.keep_alive && !limit_reached,
            http10: head.minor_version == 0,
            ..Current::bare(self.seq)
        };
        let Some(route_ix) = sh.router.find(head.path()) else {
            cur.head = Some(head);
            self.cur = Some(cur);
            self.answer_error(es, 404, body != BodyFraming::None, None);
            return;
        };
        let route = sh.router.get(route_ix);
        cur.route = route_ix;
        if !route.limits.allows(head.method()) {
            let allow = route.limits.methods.join(", ");
            cur.head = Some(head);
            self.cur = Some(cur);
            self.answer_error(es, 405, body != BodyFraming::None, Some(("Allow", allow)));
            return;
        }
        if let Some(m) = route.limits.max_body {
            cur.max_body = m;
        }
        let needs_length = route.limits.length_required
            && match body {
                BodyFraming::Chunked => true,
                BodyFraming::None => matches!(head.method(), "POST" | "PUT" | "PATCH"),
                BodyFraming::Length(_) => false,
            };
        let expect_continue = head.expect_continue;
        cur.head = Some(head);
        self.cur = Some(cur);
        if needs_length {
            self.count(Counter::BadRequests);
            self.answer_error(es, 411, true, None);
            return;
        }
        if let RouteKind::Proc(factory) = &route.kind {
            let made = catch_unwind(AssertUnwindSafe(|| factory(self.head().expect("set above"))));
            match made {
                Ok(h) => self.cur.as_mut().expect("set above").handler = Some(h),
                Err(_) => {
                    self.count(Counter::HandlerPanics);
                    self.answer_error(es, 500, body != BodyFraming::None, None);
                    return;
                }
            }
            self.call(es, |h, ex| h.headers_read(ex));
            if self.cur.as_ref().is_some_and(|c| c.pending.is_some()) {
                // Answered from the head alone; an unread body makes the connection unusable,
                // and the client may still be sending it: linger so it reads the answer.
                if body != BodyFraming::None {
                    self.cur.as_mut().expect("pending").keep_alive = false;
                    self.arm_linger(es);
                }
                self.emit(es);
                return;
            }
            if self.cur.is_none() || self.phase == Phase::Closing {
                return;
            }
        }
        let cur = self.cur.as_mut().expect("set above");
        cur.body = match body {
            BodyFraming::None => BodyState::Done,
            BodyFraming::Length(n) if n > cur.max_body => {
                self.count(Counter::BadRequests);
                self.answer_error(es, 413, true, None);
                return;
            }
            BodyFraming::Length(0) => BodyState::Done,
            BodyFraming::Length(n) => BodyState::Length(n),
            BodyFraming::Chunked => BodyState::Chunked(ChunkedDecoder::new(cur.max_body)),
        };
        if matches!(cur.body, BodyState::Done) {
            self.request_done(es);
            return;
        }
        if expect_continue {
            self.put(es, b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        self.phase = Phase::Body;
        self.deadline(es, Some(self.sh.config.body_timeout));
    }

    /// Moves body bytes from `buf_in` to the handler; true once the body is complete and
    /// handed on.
    fn read_body(&mut self, es: &mut Esocket<'_>) -> bool {
        let Some(cur) = self.cur.as_mut() else { return false };
        let simple = cur.handler.is_none();
        let mut piece = Vec::new();
        match &mut cur.body {
            BodyState::Done => {}
            BodyState::Length(left) => {
                let take = (*left).min(es.buf_in().len() as u64) as usize;
                if take == 0 {
                    return false;
                }
                if simple {
                    cur.body_buf.extend_from_slice(&es.buf_in()[..take]);
                } else {
                    piece.extend_from_slice(&es.buf_in()[..take]);
                }
                es.consume(take);
                *left -= take as u64;
                if *left == 0 {
                    cur.body = BodyState::Done;
                }
            }
            BodyState::Chunked(dec) => {
                if es.buf_in().is_empty() {
                    return false;
                }
                let out = if simple { &mut cur.body_buf } else { &mut piece };
                match dec.decode(es.buf_in(), out) {
                    Ok(n) => {
                        es.consume(n);
                        if dec.is_done() {
                            cur.body = BodyState::Done;
                        } else if n == 0 {
                            return false;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(peer = ?self.peer, error = ?e, "bad chunked body");
                        let status = e.status();
                        self.fail_request(HttpError::BadBody(status));
                        self.count(Counter::BadRequests);
                        self.answer_error(es, status, true, None);
                        return false;
                    }
                }
            }
        }
        if !piece.is_empty() {
            self.call(es, |h, ex| h.data_read(ex, &piece));
            if self.cur.as_ref().is_some_and(|c| c.pending.is_some()) {
                self.cur.as_mut().expect("pending").keep_alive = false;
                self.emit(es);
                return false;
            }
        }
        let done = self.cur.as_ref().is_some_and(|c| matches!(c.body, BodyState::Done));
        if done && self.phase == Phase::Body {
            self.request_done(es);
            return true;
        }
        // Input left after a partial chunk: `process` calls again, and stops when the
        // decoder can take nothing more.
        !done && !es.buf_in().is_empty() && self.phase == Phase::Body
    }

    /// The request is read: run its handler.
    fn request_done(&mut self, es: &mut Esocket<'_>) {
        self.phase = Phase::Handling;
        self.deadline(es, None);
        let sh = self.sh.clone();
        let Some(cur) = self.cur.as_mut() else { return };
        match &sh.router.get(cur.route).kind {
            RouteKind::Proc(_) => {
                self.call(es, |h, ex| h.request_done(ex));
                self.emit(es);
            }
            RouteKind::Simple { f, inline } => {
                let req = Request {
                    head: cur.head.take().expect("a simple request keeps its head until here"),
                    body: Bytes::from(std::mem::take(&mut cur.body_buf)),
                    peer: self.peer,
                };
                if *inline {
                    let resp = run_simple(f, &req);
                    if resp.is_none() {
                        self.count(Counter::HandlerPanics);
                    }
                    let resp = resp.unwrap_or_else(|| error_response(500));
                    self.set_pending(Pending::Whole(resp));
                    self.emit(es);
                    return;
                }
                let f = f.clone();
                let seq = cur.seq;
                let flipped = es.flip(
                    sh.config.proc_priority,
                    move || run_simple(&f, &req),
                    move |es, resp| {
                        es.with_handler::<HttpConn, _>(|c, es| {
                            if resp.is_none() {
                                c.count(Counter::HandlerPanics);
                            }
                            let resp = resp.unwrap_or_else(|| error_response(500));
                            c.deliver(es, seq, Pending::Whole(resp));
                        });
                    },
                );
                if let Err(e) = flipped {
                    if let Some(suppressed) = NOT_RUN.check() {
                        tracing::warn!(error = %e, suppressed, "simple handler not run");
                    }
                    self.count(Counter::Overloaded);
                    self.set_pending(Pending::Whole(
                        error_response(503).header("Retry-After", "1"),
                    ));
                    self.emit(es);
                }
            }
        }
    }

    /// A response that arrived from elsewhere (a proc thread, a [`Responder`]).
    ///
    /// [`Responder`]: super::Responder
    pub(crate) fn deliver(&mut self, es: &mut Esocket<'_>, seq: u64, p: Pending) {
        if self.cur.as_ref().is_none_or(|c| c.seq != seq) || self.upgraded.is_some() {
            return;
        }
        self.set_pending(p);
        self.emit(es);
        self.process(es);
    }

    /// Runs `f` with request `seq`'s exchange, if it is still the one being answered
    /// ([`Exchange::defer`]), then writes what it answered.
    pub(crate) fn continue_with(
        &mut self,
        es: &mut Esocket<'_>,
        seq: u64,
        f: impl FnOnce(&mut Exchange<'_, '_>),
    ) {
        if self.cur.as_ref().is_none_or(|c| c.seq != seq) || self.upgraded.is_some() {
            return;
        }
        f(&mut Exchange { es, conn: self });
        self.emit(es);
        self.process(es);
    }

    pub(crate) fn resume(&mut self, es: &mut Esocket<'_>, seq: u64) {
        if self.phase == Phase::Streaming && self.cur.as_ref().is_some_and(|c| c.seq == seq) {
            self.pump(es);
            self.process(es);
        }
    }

    /// Runs a streaming-handler callback with the handler taken out of the connection.
    fn call<R>(
        &mut self,
        es: &mut Esocket<'_>,
        f: impl FnOnce(&mut dyn ProcHandler, &mut Exchange<'_, '_>) -> R,
    ) -> Option<R> {
        let mut h = self.cur.as_mut().and_then(|c| c.handler.take())?;
        let r = f(&mut *h, &mut Exchange { es, conn: self });
        if let Some(c) = self.cur.as_mut() {
            c.handler = Some(h);
        }
        Some(r)
    }

    /// Writes the response a handler asked for, if any.
    fn emit(&mut self, es: &mut Esocket<'_>) {
        let Some(cur) = self.cur.as_mut() else { return };
        let Some(pending) = cur.pending.take() else { return };
        cur.answered = true;
        match pending {
            Pending::Whole(mut resp) => {
                if let Some(h) = cur.handler.as_mut() {
                    h.headers_write(&mut resp.status, &mut resp.headers);
                }
                let close = !cur.keep_alive || self.phase == Phase::Body;
                self.write_response(es, resp, close);
            }
            Pending::Start { mut status, mut headers, len } => {
                if let Some(h) = cur.handler.as_mut() {
                    h.headers_write(&mut status, &mut headers);
                }
                let has_body = status_has_body(status) && !cur.is_head;
                let framing = match len {
                    Some(n) => BodyLen::Known(n),
                    None if cur.http10 => {
                        cur.keep_alive = false;
                        BodyLen::None
                    }
                    None => BodyLen::Chunked,
                };
                let close = !cur.keep_alive || self.phase == Phase::Body;
                let shown = if status_has_body(status) { framing } else { BodyLen::None };
                self.write_head_only(es, status, &headers, shown, close);
                if close && let Some(c) = self.cur.as_mut() {
                    c.keep_alive = false;
                }
                if has_body {
                    if let Some(c) = self.cur.as_mut() {
                        c.stream = Some((framing, 0));
                    }
                    self.phase = Phase::Streaming;
                    self.deadline(es, None);
                    self.pump(es);
                } else {
                    self.finish_request(es, close);
                }
            }
            Pending::Upgrade(resp, handler) => {
                let mut resp = resp;
                if let Some(h) = cur.handler.as_mut() {
                    h.headers_write(&mut resp.status, &mut resp.headers);
                }
                if self.phase == Phase::Body {
                    // The body was not read: the new protocol would see its bytes.
                    self.write_response(es, error_response(400), true);
                    return;
                }
                let status = resp.status;
                self.write_head_only(es, status, &resp.headers, BodyLen::None, false);
                if !resp.body.is_empty() {
                    self.put_bytes(es, resp.body);
                }
                self.count(Counter::Upgrades);
                if let Some(a) = self.access.take() {
                    a.log(self.peer);
                }
                self.cur = None;
                self.phase = Phase::Closing;
                self.deadline(es, None);
                let mut h = handler;
                h.on_new(es);
                if !es.buf_in().is_empty() && !es.is_closing() {
                    h.on_read(es);
                }
                self.upgraded = Some(h);
            }
        }
    }

    /// Calls `data_write` while there is room and the handler has more.
    fn pump(&mut self, es: &mut Esocket<'_>) {
        while self.phase == Phase::Streaming && self.out.is_empty() && !es.is_closing() {
            if es.out_room() == 0 {
                es.set_writable(true);
                return;
            }
            match self.call(es, |h, ex| h.data_write(ex)).unwrap_or(BodyFlow::Done) {
                BodyFlow::More => {}
                BodyFlow::Pause => return,
                BodyFlow::Done => {
                    let Some(cur) = self.cur.as_mut() else { return };
                    let mut close = !cur.keep_alive;
                    match cur.stream {
                        Some((BodyLen::Chunked, _)) => self.put(es, b"0\r\n\r\n"),
                        Some((BodyLen::Known(n), written)) if written != n => {
                            tracing::warn!(
                                declared = n,
                                written,
                                "streamed body short of its length"
                            );
                            close = true;
                        }
                        Some((BodyLen::None, _)) => close = true,
                        _ => {}
                    }
                    self.finish_request(es, close);
                    return;
                }
            }
        }
        if self.phase == Phase::Streaming && !self.out.is_empty() {
            es.set_writable(true);
        }
    }

    pub(crate) fn write_body(&mut self, es: &mut Esocket<'_>, data: &[u8]) -> io::Result<usize> {
        let Some((framing, written)) = self.cur.as_ref().and_then(|c| c.stream) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no streaming body"));
        };
        if self.phase != Phase::Streaming {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no streaming body"));
        }
        if data.is_empty() {
            return Ok(0);
        }
        if !self.out.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let room = es.out_room();
        let n = match framing {
            BodyLen::Known(total) => {
                let left = total - written;
                if data.len() as u64 > left {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "body longer than its Content-Length",
                    ));
                }
                let n = data.len().min(room);
                if n == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                es.write(&data[..n])?
            }
            BodyLen::Chunked => {
                // Size line (up to 16 hex digits + CRLF) and the trailing CRLF.
                let n = data.len().min(room.saturating_sub(20));
                if n == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let mut frame = Vec::with_capacity(n + 20);
                push_chunk_header(&mut frame, n);
                frame.extend_from_slice(&data[..n]);
                frame.extend_from_slice(b"\r\n");
                es.write(&frame)?;
                n
            }
            BodyLen::None => {
                let n = data.len().min(room);
                if n == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                es.write(&data[..n])?
            }
        };
        if let Some(c) = self.cur.as_mut()
            && let Some((_, w)) = c.stream.as_mut()
        {
            *w += n as u64;
        }
        Ok(n)
    }

    fn write_head_only(
        &mut self,
        es: &mut Esocket<'_>,
        status: u16,
        headers: &Headers,
        len: BodyLen,
        close: bool,
    ) {
        let keep_10 = !close && self.cur.as_ref().is_some_and(|c| c.http10);
        let mut buf = std::mem::take(&mut self.head_buf);
        buf.clear();
        DATE.with(|d| {
            let mut d = d.borrow_mut();
            let date = d.get_at(es.worker().now());
            write_head(&mut buf, status, headers, len, date, close, keep_10);
        });
        if let Some(name) = &self.sh.config.server_name {
            // Placed before the blank line: overwrite the final CRLF.
            buf.truncate(buf.len() - 2);
            buf.extend_from_slice(b"Server: ");
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(b"\r\n\r\n");
        }
        if let Some(a) = self.access.as_mut() {
            a.status = status;
        }
        self.put(es, &buf);
        self.head_buf = buf;
        self.sh.stats.status(self.worker, status);
    }

    fn write_response(&mut self, es: &mut Esocket<'_>, resp: Response, close: bool) {
        let is_head = self.cur.as_ref().is_some_and(|c| c.is_head);
        let has_body = status_has_body(resp.status);
        let len = if has_body { BodyLen::Known(resp.body.len() as u64) } else { BodyLen::None };
        self.write_head_only(es, resp.status, &resp.headers, len, close);
        if has_body && !is_head && !resp.body.is_empty() {
            self.put_bytes(es, resp.body);
        }
        self.finish_request(es, close);
    }

    fn finish_request(&mut self, es: &mut Esocket<'_>, close: bool) {
        self.served += 1;
        if let Some(a) = self.access.take() {
            a.log(self.peer);
        }
        // Closing with a body unread: the client may still be sending it.
        let unread = self.phase == Phase::Body;
        self.cur = None;
        if close {
            self.phase = Phase::Closing;
            if unread || self.linger_left.is_some() {
                self.linger(es);
            } else {
                self.deadline(es, None);
                if self.out.is_empty() {
                    es.close();
                }
            }
            return;
        }
        self.phase = Phase::Idle;
        if self.out.is_empty() {
            self.deadline(es, Some(self.sh.config.keep_alive_timeout));
        }
    }

    /// Closes after an error without resetting the client: read and drop its input for a
    /// while, so that the answer is read rather than lost to a reset.
    fn linger(&mut self, es: &mut Esocket<'_>) {
        if self.linger_left.is_none() {
            self.arm_linger(es);
        }
        self.discard(es);
    }

    /// Decides to linger when this connection closes: its input may still be arriving.
    fn arm_linger(&mut self, es: &mut Esocket<'_>) {
        self.linger_left = Some(self.sh.config.lingering_bytes);
        self.deadline(es, Some(self.sh.config.lingering_close));
    }

    fn discard(&mut self, es: &mut Esocket<'_>) {
        let n = es.buf_in().len();
        es.consume(n);
        match self.linger_left.as_mut() {
            Some(left) if *left > n => *left -= n,
            _ => es.close(),
        }
    }

    /// Answers a request that cannot be served with a short error response.
    fn answer_error(
        &mut self,
        es: &mut Esocket<'_>,
        status: u16,
        close: bool,
        header: Option<(&'static str, String)>,
    ) {
        let mut resp = error_response(status);
        if let Some((n, v)) = header {
            resp = resp.header(n, v);
        }
        if close {
            // The body, if any, is not read: linger so the client sees this answer.
            self.arm_linger(es);
        }
        let close = close || self.cur.as_ref().is_none_or(|c| !c.keep_alive);
        if let Some(c) = self.cur.as_mut() {
            c.answered = true;
        }
        self.write_response(es, resp, close);
    }

    /// The source is over its request rate with as many requests waiting as it may have:
    /// `429 Too Many Requests` with `Retry-After`, and the connection closes.
    fn refuse_rate(&mut self, es: &mut Esocket<'_>, retry_after: Duration) {
        self.count(Counter::RateRefused);
        let secs = retry_after.as_secs().max(1).to_string();
        self.refuse_with(es, 429, error_response(429).header("Retry-After", secs));
    }

    /// Refuses malformed input: answer, then close (the stream cannot be trusted any more).
    fn refuse(&mut self, es: &mut Esocket<'_>, status: u16) {
        self.refuse_with(es, status, error_response(status));
    }

    /// Answers `resp` (an error, `status`) to the head in hand, and closes.
    fn refuse_with(&mut self, es: &mut Esocket<'_>, status: u16, resp: Response) {
        if self.access.is_none() && tracing::enabled!(target: "dap::access", tracing::Level::INFO) {
            self.access = Some(Access::new("-", "-"));
        }
        if status_error_counter(status) {
            self.count(Counter::BadRequests);
        }
        // What follows a refused head cannot be parsed; the client may still be sending it.
        self.arm_linger(es);
        self.fail_request(HttpError::BadBody(status));
        if self.cur.is_none() {
            self.cur = Some(Current { answered: true, ..Current::bare(self.seq) });
        }
        self.write_response(es, resp, true);
    }

    /// Tells the streaming handler, if any, that its request failed.
    fn fail_request(&mut self, err: HttpError) {
        if let Some(c) = self.cur.as_mut()
            && !c.answered
            && let Some(h) = c.handler.as_mut()
        {
            c.answered = true;
            h.error(err);
        }
    }

    /// Queues output: straight into `buf_out` when it fits, else held here (bounded: no new
    /// request starts while anything is held).
    fn put(&mut self, es: &mut Esocket<'_>, data: &[u8]) {
        if let Some(a) = self.access.as_mut() {
            a.bytes += data.len() as u64;
        }
        if self.out.is_empty() && es.out_room() >= data.len() {
            if es.write(data).is_ok() {
                return;
            }
            if es.is_closing() {
                return;
            }
        }
        self.hold(es, Bytes::copy_from_slice(data));
    }

    fn put_bytes(&mut self, es: &mut Esocket<'_>, data: Bytes) {
        if let Some(a) = self.access.as_mut() {
            a.bytes += data.len() as u64;
        }
        if self.out.is_empty() {
            if data.len() <= COPY_MAX && es.out_room() >= data.len() {
                if es.write(&data).is_ok() {
                    return;
                }
            } else {
                match es.write_bytes(data) {
                    Ok(()) => return,
                    Err(d) if !es.is_closing() => return self.hold(es, d),
                    Err(_) => return,
                }
            }
            if es.is_closing() {
                return;
            }
        }
        self.hold(es, data);
    }

    fn hold(&mut self, es: &mut Esocket<'_>, data: Bytes) {
        if self.out.is_empty() {
            self.deadline(es, Some(self.sh.config.write_timeout));
        }
        self.out.push_back(data);
        es.set_writable(true);
    }

    /// Moves held output into `buf_out` as room appears.
    fn flush_held(&mut self, es: &mut Esocket<'_>) {
        while let Some(front) = self.out.pop_front() {
            if let Err(mut rest) = es.write_bytes(front) {
                // It does not fit whole (it may be larger than the cap): send what fits.
                let room = es.out_room().min(rest.len());
                if room > 0 && !es.is_closing() && es.write_bytes(rest.slice(..room)).is_ok() {
                    rest.advance(room);
                }
                self.out.push_front(rest);
                return;
            }
        }
        // Drained: the phase's own deadline applies again.
        match self.phase {
            Phase::Idle => self.deadline(es, Some(self.sh.config.keep_alive_timeout)),
            Phase::Closing if self.upgraded.is_none() && self.linger_left.is_none() => es.close(),
            Phase::Closing => {}
            _ => self.deadline(es, None),
        }
    }
}

fn run_simple(f: &super::route::SimpleFn, req: &Request) -> Option<Response> {
    match catch_unwind(AssertUnwindSafe(|| f(req))) {
        Ok(r) => Some(r),
        Err(_) => {
            tracing::error!(path = %req.path(), "simple handler panicked; answering 500");
            None
        }
    }
}

fn error_response(status: u16) -> Response {
    let mut body = String::with_capacity(40);
    body.push_str(&status.to_string());
    body.push(' ');
    body.push_str(crate::http::reason(status));
    body.push('\n');
    Response::text(status, body)
}

impl Handler for HttpConn {
    fn on_new(&mut self, es: &mut Esocket<'_>) {
        self.worker = es.worker().index();
        if let Some(config) = &self.sh.tls
            && let Err(e) = crate::tls::accept(es, config)
        {
            if let Some(suppressed) = NO_TLS.check() {
                tracing::warn!(error = %e, suppressed, "cannot start TLS on a connection; closing it");
            }
            es.close_now();
            return;
        }
        // A connection that never sends a request gets the header timeout, not keep-alive's.
        self.deadline(es, Some(self.sh.config.header_timeout));
    }

    fn on_read(&mut self, es: &mut Esocket<'_>) {
        if let Some(h) = self.upgraded.as_mut() {
            return h.on_read(es);
        }
        if self.phase == Phase::Closing && self.linger_left.is_some() {
            return self.discard(es);
        }
        self.process(es);
    }

    fn on_read_closed(&mut self, es: &mut Esocket<'_>) {
        if let Some(h) = self.upgraded.as_mut() {
            return h.on_read_closed(es);
        }
        if !self.sh.config.half_close {
            // The client has gone: what is in flight is abandoned (`on_delete` tells its
            // handler), what is queued is still flushed.
            es.close();
            return;
        }
        // The client may have half-closed after its last request and still read the
        // answers: the requests already read are served (even those waiting on a proc
        // thread), then the connection closes.
        self.peer_done = true;
        self.process(es);
    }

    fn on_write(&mut self, es: &mut Esocket<'_>) -> bool {
        if self.upgraded.is_some() {
            // The 101 head may still be held; it goes before anything the new owner writes.
            if !self.out.is_empty() {
                self.flush_held(es);
                if !self.out.is_empty() {
                    return true;
                }
            }
            return self.upgraded.as_mut().is_some_and(|h| h.on_write(es));
        }
        self.flush_held(es);
        if self.out.is_empty() {
            self.pump(es);
            self.process(es);
        }
        !self.out.is_empty()
            || self.deferred
            || (self.phase == Phase::Streaming && es.out_room() == 0)
    }

    fn on_write_finished(&mut self, es: &mut Esocket<'_>) {
        if let Some(h) = self.upgraded.as_mut() {
            h.on_write_finished(es);
        }
    }

    fn on_timeout(&mut self, es: &mut Esocket<'_>) -> bool {
        if let Some(h) = self.upgraded.as_mut() {
            return h.on_timeout(es);
        }
        if !self.out.is_empty() {
            // The client stopped reading: nothing more can be said to it.
            self.count(Counter::Timeouts);
            self.fail_request(HttpError::Timeout);
            es.close_now();
            return true;
        }
        match self.phase {
            Phase::Idle if es.buf_in().is_empty() => es.close(),
            Phase::Idle | Phase::Head | Phase::Body => {
                self.count(Counter::Timeouts);
                self.fail_request(HttpError::Timeout);
                self.refuse(es, 408);
            }
            Phase::Handling => {}
            // The lingering time is over.
            Phase::Closing if self.linger_left.is_some() => es.close(),
            Phase::Streaming | Phase::Closing => {
                self.count(Counter::Timeouts);
                self.fail_request(HttpError::Timeout);
                es.close_now();
            }
        }
        true
    }

    fn on_error(&mut self, es: &mut Esocket<'_>, err: &io::Error) {
        if let Some(h) = self.upgraded.as_mut() {
            return h.on_error(es, err);
        }
        tracing::debug!(peer = ?self.peer, error = %err, "HTTP connection failed");
    }

    fn on_delete(&mut self, es: &mut Esocket<'_>) {
        if let Some(h) = self.upgraded.as_mut() {
            return h.on_delete(es);
        }
        let unfinished = self.cur.as_ref().is_some_and(|c| !c.answered)
            || matches!(self.phase, Phase::Head | Phase::Body | Phase::Streaming);
        if unfinished {
            self.count(Counter::ConnectionsClosedEarly);
            self.fail_request(HttpError::Closed);
        }
    }
}
