//! `Conn`: the esocket handler that drives one request on its worker.
//!
//! Thin by design: it moves bytes between the esocket and the sans-IO
//! [`ResponseParser`], and turns reactor events into exactly one delivery. It touches only
//! `buf_in`, `buf_out` and the esocket's deadline, so for `https` the only difference is the
//! TLS layer installed in `on_new`: from then on the worker decrypts into `buf_in` and
//! encrypts from `buf_out`, and the request written at connect waits in the layer until the
//! handshake is done.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dap_reactor::{Esocket, Handler, ReactorError, WorkerCtx};

use super::config::ClientConfig;
use super::error::ClientError;
use super::parser::{Parsed, ResponseParser};
use super::request::Request;
use super::response::Response;

/// What a request ends with.
pub(crate) type Outcome = Result<Response, ClientError>;

/// The caller's callback, run on the worker that started the request.
pub(crate) type Callback = Box<dyn FnOnce(&mut WorkerCtx, Outcome)>;

/// The callback of one request, shared by whoever may have to deliver: the handler, and the
/// code that started the connect (which keeps a clone because a failed connect drops the
/// handler unseen). Taking it is what makes delivery happen at most once; every path below
/// ends in a delivery, which makes it exactly once.
#[derive(Clone)]
pub(crate) struct Reply(Rc<Cell<Option<Callback>>>);

impl Reply {
    pub(crate) fn new(callback: Callback) -> Reply {
        Reply(Rc::new(Cell::new(Some(callback))))
    }

    /// The callback, if nobody has delivered yet.
    pub(crate) fn take(&self) -> Option<Callback> {
        self.0.take()
    }

    fn is_pending(&self) -> bool {
        let cb = self.0.take();
        let pending = cb.is_some();
        self.0.set(cb);
        pending
    }
}

/// What `on_new` needs to put TLS on the connection.
pub(crate) struct TlsStart {
    pub(crate) config: Arc<rustls::ClientConfig>,
    /// Checked against the certificate and sent as SNI; valid (checked by the URL parser).
    pub(crate) server_name: String,
}

/// Handler of one outgoing connection carrying one request.
pub(crate) struct Conn {
    reply: Reply,
    /// For `https`, until `on_new` installs the layer.
    tls: Option<TlsStart>,
    /// Installing the layer failed; reported at `on_connected`, since `on_new` runs inside
    /// `fetch` and a callback must not run before `fetch` returns.
    failed: Option<ClientError>,
    /// Request bytes not yet in `buf_out`: the head, then the body.
    out: VecDeque<Bytes>,
    parser: ResponseParser,
    response_timeout: Duration,
    /// `on_connected` has run: later failures are not connect failures.
    connected: bool,
}

impl Conn {
    pub(crate) fn new(
        req: Request,
        config: &ClientConfig,
        tls: Option<TlsStart>,
        reply: Reply,
    ) -> Conn {
        let mut out = VecDeque::with_capacity(2);
        out.push_back(Bytes::from(req.encode_head()));
        if !req.body().is_empty() {
            out.push_back(req.body().clone());
        }
        Conn {
            reply,
            tls,
            failed: None,
            out,
            parser: ResponseParser::new(req.method(), config),
            response_timeout: config.response_timeout,
            connected: false,
        }
    }

    /// Delivers `outcome` unless something already was, closing the connection first: one
    /// request per connection, so whatever ends the request ends the connection.
    fn deliver(&mut self, es: &mut Esocket<'_>, outcome: Outcome) {
        es.close_now();
        if let Some(callback) = self.reply.take() {
            callback(es.worker(), outcome);
        }
    }

    /// Runs one step of the handler. A panic in our own code is turned into an error for the
    /// caller here, because the reactor would drop this handler without calling `on_delete`
    /// and the callback would be lost. The caller's callback runs outside the guard: a panic
    /// there is the caller's, and the reactor catches and counts it as usual.
    fn guarded<R: Default>(
        &mut self,
        es: &mut Esocket<'_>,
        step: impl FnOnce(&mut Self, &mut Esocket<'_>) -> (R, Option<Outcome>),
    ) -> R {
        match panic::catch_unwind(AssertUnwindSafe(|| step(self, es))) {
            Ok((r, outcome)) => {
                if let Some(outcome) = outcome {
                    self.deliver(es, outcome);
                }
                r
            }
            Err(_) => {
                tracing::error!("http client handler panicked; failing the request");
                let err: io::Error = ReactorError::HandlerPanicked.into();
                self.deliver(es, Err(ClientError::Io(err)));
                R::default()
            }
        }
    }

    /// Moves request bytes into `buf_out` as room allows; returns whether some are left.
    fn pump(&mut self, es: &mut Esocket<'_>) -> bool {
        while let Some(piece) = self.out.front_mut() {
            let room = es.out_room();
            if room == 0 {
                return true;
            }
            // A slice of shared bytes: the body is never copied.
            let part = piece.split_to(room.min(piece.len()));
            if es.write_bytes(part).is_err() {
                // Only refused when closing (it fits by construction): nothing more to send.
                self.out.clear();
                return false;
            }
            if piece.is_empty() {
                self.out.pop_front();
            }
        }
        false
    }

    fn connected(&mut self, es: &mut Esocket<'_>) -> Option<Outcome> {
        self.connected = true;
        if !self.reply.is_pending() {
            // Delivered already (the connect call reported an error after the esocket was
            // added): nobody is waiting for this connection.
            es.close_now();
            return None;
        }
        if let Some(err) = self.failed.take() {
            return Some(Err(err));
        }
        if let Err(e) = es.set_deadline(Some(self.response_timeout)) {
            return Some(Err(ClientError::Io(e)));
        }
        let more = self.pump(es);
        es.set_writable(more);
        None
    }

    fn read(&mut self, es: &mut Esocket<'_>) -> Option<Outcome> {
        let n = es.buf_in().len();
        // The parser keeps what it needs (bounded by the config), so all input is consumed
        // and a small `buf_in` cap can never stall a large head.
        let parsed = self.parser.feed(es.buf_in());
        es.consume(n);
        match parsed {
            Ok(Parsed::Partial) => None,
            // Bytes after the response are not ours to read: the connection closes.
            Ok(Parsed::Complete { response, .. }) => Some(Ok(response)),
            Err(e) => Some(Err(e.into())),
        }
    }

    /// The esocket is going away without an error: decide what that means for the request.
    fn closed(&mut self, es: &mut Esocket<'_>) -> Option<Outcome> {
        if !self.reply.is_pending() {
            return None;
        }
        if es.peer_closed() {
            // End of stream completes a body delimited by the close, and nothing else.
            return Some(self.parser.finish().map_err(ClientError::from));
        }
        if es.worker().is_stopping() {
            return Some(Err(ClientError::Io(ReactorError::Stopping.into())));
        }
        Some(Err(ClientError::Closed))
    }
}

impl Handler for Conn {
    fn on_new(&mut self, es: &mut Esocket<'_>) {
        let Some(tls) = self.tls.take() else { return };
        // Not through `guarded`, which delivers at once: see `failed`.
        let installed = panic::catch_unwind(AssertUnwindSafe(|| {
            crate::tls::connect(es, &tls.config, &tls.server_name)
        }));
        self.failed = match installed {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(ClientError::Tls(e.to_string())),
            Err(_) => {
                tracing::error!("installing TLS panicked; failing the request");
                Some(ClientError::Io(ReactorError::HandlerPanicked.into()))
            }
        };
    }

    fn on_connected(&mut self, es: &mut Esocket<'_>) {
        self.guarded(es, |c, es| ((), c.connected(es)));
    }

    fn on_read(&mut self, es: &mut Esocket<'_>) {
        self.guarded(es, |c, es| ((), c.read(es)));
    }

    fn on_write(&mut self, es: &mut Esocket<'_>) -> bool {
        self.guarded(es, |c, es| (c.pump(es), None))
    }

    fn on_timeout(&mut self, es: &mut Esocket<'_>) -> bool {
        self.guarded(es, |_, _| (true, Some(Err(ClientError::ResponseTimeout))))
    }

    fn on_error(&mut self, es: &mut Esocket<'_>, err: &io::Error) {
        let connected = self.connected;
        self.guarded(es, |_, _| ((), Some(Err(ClientError::from_io(err, connected)))));
    }

    fn on_delete(&mut self, es: &mut Esocket<'_>) {
        self.guarded(es, |c, es| ((), c.closed(es)));
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Every path above delivers, and the reactor calls `on_delete` before dropping a
        // handler it did not lose to a panic (which `guarded` prevents). Reaching this with
        // the callback still pending means a reactor path we did not foresee: say so loudly.
        if self.reply.is_pending() && self.connected {
            tracing::error!("http client request dropped without a result; callback not run");
        }
    }
}
