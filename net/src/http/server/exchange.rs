//! Streaming handlers: DAP's http "proc" callbacks, run on the connection's worker.

use std::io;
use std::net::SocketAddr;

use dap_reactor::{Esocket, EsocketHandle, Handler, PostError};

use super::conn::{HttpConn, Pending};
use crate::http::{Headers, RequestHead, Response};

/// Why a request ended without a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The client closed or broke the connection.
    #[error("the client went away")]
    Closed,
    /// The header, body or write timeout passed.
    #[error("timed out")]
    Timeout,
    /// The body was malformed or too large; the client got this status.
    #[error("bad request body (answered {0})")]
    BadBody(u16),
}

/// What [`ProcHandler::data_write`] wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFlow {
    /// Call again when there is room for more output.
    More,
    /// Do not call until [`Responder::resume`] (data is not ready yet).
    Pause,
    /// The body is complete.
    Done,
}

/// A streaming request handler, one per request, on the connection's worker (DAP's http proc
/// callbacks: headers-read, data-read, headers-write, data-write, error). Only
/// [`request_done`](Self::request_done) is required.
///
/// A handler answers with [`Exchange::respond`] (whole response), [`Exchange::start`] (head
/// now, body through `data_write`), or [`Exchange::upgrade`] (take the connection over), from
/// any callback, or later from any thread through a [`Responder`]. Responses on a connection
/// go out strictly in request order: the next pipelined request waits until this one is
/// answered.
pub trait ProcHandler: 'static {
    /// The head has been read. The handler may answer at once (the body, if any, is then
    /// not read and the connection closes after the answer) or raise the body limit with
    /// [`Exchange::set_max_body`].
    fn headers_read(&mut self, ex: &mut Exchange<'_, '_>) {
        let _ = ex;
    }

    /// A piece of the body, chunked coding removed.
    fn data_read(&mut self, ex: &mut Exchange<'_, '_>, data: &[u8]) {
        let _ = (ex, data);
    }

    /// The whole request has been read. Answer now, or later through
    /// [`Exchange::responder`].
    fn request_done(&mut self, ex: &mut Exchange<'_, '_>);

    /// The response head is about to be written: last chance to change its status or
    /// headers.
    fn headers_write(&mut self, status: &mut u16, headers: &mut Headers) {
        let _ = (status, headers);
    }

    /// Room for more of a body begun with [`Exchange::start`]: write with
    /// [`Exchange::write`].
    fn data_write(&mut self, ex: &mut Exchange<'_, '_>) -> BodyFlow {
        let _ = ex;
        BodyFlow::Done
    }

    /// The request ended without a complete response.
    fn error(&mut self, err: HttpError) {
        let _ = err;
    }
}

/// One request's view of its connection, handed to [`ProcHandler`] callbacks.
pub struct Exchange<'a, 'b> {
    pub(crate) es: &'a mut Esocket<'b>,
    pub(crate) conn: &'a mut HttpConn,
}

impl std::fmt::Debug for Exchange<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange").field("request", &self.conn.head()).finish_non_exhaustive()
    }
}

impl<'b> Exchange<'_, 'b> {
    /// The request head.
    pub fn request(&self) -> &RequestHead {
        self.conn.head().expect("a streaming request keeps its head")
    }

    /// The client's address (`None` on Unix sockets).
    pub fn peer(&self) -> Option<SocketAddr> {
        self.conn.peer
    }

    /// The connection's esocket: its worker, handle and buffers.
    pub fn esocket(&mut self) -> &mut Esocket<'b> {
        self.es
    }

    /// Raises or lowers the body limit of this request (in `headers_read`, before the body
    /// is read). A declared length over the limit is answered 413.
    pub fn set_max_body(&mut self, bytes: u64) {
        self.conn.set_max_body(bytes);
    }

    /// Answers with a whole response. The second answer to one request is ignored.
    pub fn respond(&mut self, resp: Response) {
        self.conn.set_pending(Pending::Whole(resp));
    }

    /// Answers with a head now and a body written through
    /// [`ProcHandler::data_write`]: `len` is the body length, or `None` for a chunked body
    /// (close-delimited for HTTP/1.0 clients).
    pub fn start(&mut self, status: u16, headers: Headers, len: Option<u64>) {
        self.conn.set_pending(Pending::Start { status, headers, len });
    }

    /// Writes body bytes of a response begun with [`start`](Self::start), from
    /// `data_write`; returns how many were taken.
    ///
    /// # Errors
    /// `WouldBlock` when output is full (`data_write` runs again when it drains);
    /// `InvalidInput` past the declared length or outside a streaming body.
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.conn.write_body(self.es, data)
    }

    /// Answers (normally `101 Switching Protocols`) and hands the connection to `handler`:
    /// it gets `on_new`, then `on_read` for any bytes that followed the request, and every
    /// later callback. HTTP is done with this connection.
    pub fn upgrade(&mut self, resp: Response, handler: Box<dyn Handler>) {
        self.conn.set_pending(Pending::Upgrade(resp, handler));
    }

    /// Runs `work` on the worker's proc thread (a blocking lookup, say), then `then` back
    /// on this connection's worker with this request's exchange and `work`'s result, to
    /// answer (or upgrade) as from any callback. If the request is gone by then (the
    /// connection closed), `then` is not called.
    ///
    /// # Errors
    /// No proc thread is paired with the worker, or its queue is full, or it is stopping:
    /// `work` did not run; answer now.
    pub fn defer<R, W, T>(&mut self, work: W, then: T) -> Result<(), dap_proc::FlipError>
    where
        R: Send + 'static,
        W: FnOnce() -> R + Send + 'static,
        T: FnOnce(&mut Exchange<'_, '_>, R) + Send + 'static,
    {
        use dap_proc::Flip;
        let seq = self.conn.seq();
        self.es.flip(dap_proc::Priority::Normal, work, move |es, r| {
            es.with_handler::<HttpConn, _>(|c, es| c.continue_with(es, seq, |ex| then(ex, r)));
        })
    }

    /// A `Send` handle that answers this request later, from any thread.
    pub fn responder(&self) -> Responder {
        Responder { handle: self.es.handle(), seq: self.conn.seq() }
    }
}

/// Answers one request from any thread ([`Exchange::responder`]).
#[derive(Clone, Copy, Debug)]
pub struct Responder {
    handle: EsocketHandle,
    seq: u64,
}

impl Responder {
    /// Delivers the response to the connection's worker. If the connection is gone, or the
    /// request was answered already, the response is dropped.
    ///
    /// # Errors
    /// The worker's inbox is full or the connection is gone: retry or give up.
    pub fn respond(self, resp: Response) -> Result<(), PostError> {
        let seq = self.seq;
        self.handle.exec(move |es| {
            es.with_handler::<HttpConn, _>(|c, es| c.deliver(es, seq, Pending::Whole(resp)));
        })
    }

    /// Resumes a streaming body paused with [`BodyFlow::Pause`].
    ///
    /// # Errors
    /// As [`respond`](Self::respond).
    pub fn resume(self) -> Result<(), PostError> {
        let seq = self.seq;
        self.handle.exec(move |es| {
            es.with_handler::<HttpConn, _>(|c, es| c.resume(es, seq));
        })
    }
}
