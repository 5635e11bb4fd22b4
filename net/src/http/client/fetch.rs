//! Starting requests: on the caller's worker, from any thread, or blocking.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use dap_reactor::{Esocket, Handler, ReactorError, Worker, WorkerCtx};

use super::config::ClientConfig;
use super::conn::{Callback, Conn, Outcome, Reply, TlsStart};
use super::error::ClientError;
use super::request::Request;
use super::response::Response;

/// How long [`fetch_blocking`] waits beyond the request's own timeouts before it gives up on
/// the worker: a graceful close may linger while the worker flushes, and a busy worker
/// answers late, but a worker that never answers must not hang the caller forever.
const BLOCKING_SLACK: Duration = Duration::from_secs(30);

/// Sends `req` from this worker and calls `callback` on this same worker with the response
/// or the error.
///
/// `callback` runs exactly once, on every path: a response, a refused or timed-out connect,
/// a response timeout, a response past the limits, a malformed response, the peer closing
/// early, the worker stopping. It runs after `fetch` returns, from the worker's loop; only
/// when the worker cannot even hold one more esocket (out of file descriptors, its table
/// full, or it is stopping) does an early error run it before `fetch` returns.
///
/// Each request gets a connection of its own, closed once the response is complete (no
/// keep-alive). The connect is bounded by `config.connect_timeout`; from the moment the
/// connection is made, sending the request and receiving the whole response are bounded by
/// `config.response_timeout`.
///
/// An `https` request runs TLS on that connection, trusting what `config.tls` says (the
/// system's roots when it is `None`; see [`ClientConfig::tls`]), and checks the server's
/// certificate against the URL's host. The first such request of the process that relies
/// on the system roots loads them here, on this worker.
///
/// # Examples
///
/// ```no_run
/// use dap_net::http::client::{self, ClientConfig, Request};
///
/// let reactor = dap_reactor::Reactor::builder().threads(1).start()?;
/// reactor.worker(0).unwrap().exec(|ctx| {
///     let req = Request::get("http://127.0.0.1:8080/status").unwrap();
///     client::fetch(ctx, req, &ClientConfig::default(), |_ctx, result| match result {
///         Ok(resp) => println!("{} {} bytes", resp.status, resp.body.len()),
///         Err(e) => eprintln!("failed: {e}"),
///     });
/// }).unwrap();
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn fetch(
    ctx: &mut WorkerCtx,
    req: Request,
    config: &ClientConfig,
    callback: impl FnOnce(&mut WorkerCtx, Result<Response, ClientError>) + 'static,
) {
    let callback: Callback = Box::new(callback);
    let Some(addr) = req.addr() else {
        let name = req.unresolved_name().unwrap_or_default().to_owned();
        return deliver_later(ctx, callback, Err(ClientError::Unresolved(name)));
    };
    let tls = if req.is_tls() {
        match config.tls_config() {
            Ok(config) => Some(TlsStart { config, server_name: req.server_name() }),
            Err(e) => return deliver_later(ctx, callback, Err(e)),
        }
    } else {
        None
    };
    let reply = Reply::new(callback);
    let conn = Conn::new(req, config, tls, reply.clone());
    if let Err(e) = ctx.connect_tcp_timeout(addr, config.connect_timeout, Box::new(conn)) {
        // The handler was dropped unseen (or, if the esocket was added, will find the reply
        // taken and close): deliver from here.
        if let Some(callback) = reply.take() {
            deliver_later(ctx, callback, Err(ClientError::from_io(&e, false)));
        }
    }
}

/// [`fetch`] from any thread: the request starts on `worker`, and `callback` runs there.
///
/// # Errors
/// [`PostError`](dap_reactor::PostError) when the worker's inbox is full or the worker has
/// stopped; then nothing was sent and `callback` is dropped without running. The same
/// happens if the worker stops after taking the message but before running it: a stopping
/// worker discards its inbox. Once the request has started, `callback` runs exactly once.
pub fn fetch_on(
    worker: &Worker,
    req: Request,
    config: ClientConfig,
    callback: impl FnOnce(&mut WorkerCtx, Result<Response, ClientError>) + Send + 'static,
) -> Result<(), dap_reactor::PostError> {
    preload_tls(&req, &config);
    worker.exec(move |ctx| fetch(ctx, req, &config, callback))
}

/// [`fetch`] on `worker`, waiting for the result: for tests, command-line tools and other
/// threads that have nothing else to do meanwhile.
///
/// Must not be called on a worker thread of the same reactor: it would block the loop that
/// has to run the request (it gives up after the request's timeouts plus a margin, with
/// [`ClientError::Io`] of kind `TimedOut`).
///
/// # Errors
/// Every [`ClientError`] the request can end with; [`ClientError::Io`] when the worker's
/// inbox stays full for `config.connect_timeout`, or the worker stops.
pub fn fetch_blocking(
    worker: &Worker,
    req: Request,
    config: &ClientConfig,
) -> Result<Response, ClientError> {
    preload_tls(&req, config);
    let (tx, rx) = mpsc::sync_channel(1);
    let cfg = config.clone();
    let start = move |ctx: &mut WorkerCtx| {
        fetch(ctx, req, &cfg, move |_, result| {
            let _ = tx.send(result);
        });
    };
    worker
        .exec_timeout(start, config.connect_timeout)
        .map_err(|e| ClientError::Io(io::Error::other(e)))?;
    let bound = config
        .connect_timeout
        .saturating_add(config.response_timeout)
        .saturating_add(BLOCKING_SLACK);
    match rx.recv_timeout(bound) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(ClientError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            "the worker did not answer in time",
        ))),
        // The worker dropped the request unrun: it stopped.
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(ClientError::Io(ReactorError::Stopping.into()))
        }
    }
}

/// Loads the system roots, if `req` will need them, on the calling thread rather than on the
/// worker; a failure is cached and reported by [`fetch`].
fn preload_tls(req: &Request, config: &ClientConfig) {
    if req.is_tls() {
        let _ = config.tls_config();
    }
}

/// Runs `callback` from the worker's loop rather than inside the caller's `fetch` call, so
/// that a callback never re-enters code that is still starting the request.
///
/// The carrier is a pipe esocket whose writer is dropped at once: its end of stream comes
/// round on the next loop turn and removes it, and `on_delete` delivers. A handler esocket
/// rather than a timer because `on_delete` runs on every way out, a worker stopping
/// included, where a timer would be discarded unrun. Only failed starts pay for the pipe.
fn deliver_later(ctx: &mut WorkerCtx, callback: Callback, outcome: Outcome) {
    let slot = Rc::new(Cell::new(Some((callback, outcome))));
    let carrier = Deferred(slot.clone());
    match ctx.add_pipe(Box::new(carrier)) {
        Ok((_, writer)) => drop(writer),
        Err(_) => {
            // No room even for a pipe (out of fds, table full, stopping): deliver now.
            if let Some((callback, outcome)) = slot.take() {
                callback(ctx, outcome);
            }
        }
    }
}

/// Carries a result to the next loop turn; see [`deliver_later`].
struct Deferred(Rc<Cell<Option<(Callback, Outcome)>>>);

impl Handler for Deferred {
    fn on_delete(&mut self, es: &mut Esocket<'_>) {
        if let Some((callback, outcome)) = self.0.take() {
            callback(es.worker(), outcome);
        }
    }
}
