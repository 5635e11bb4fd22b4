//! The HTTP/1.1 server: routes, connections on the reactor, and the handlers' side of it
//! (DAP's `dap_http_server` with `dap_http_simple` and url procs).
//!
//! Two kinds of route:
//! - [`HttpServer::add_proc`]: a [`ProcHandler`] per request, called on the connection's
//!   worker as the request arrives (headers-read, data-read, headers-write, data-write,
//!   error). It can answer at once, later from any thread ([`Responder`]), stream a body, or
//!   take the connection over after a `101` ([`Exchange::upgrade`]). Matched by prefix.
//! - [`HttpServer::add_simple`]: a whole-request function run on a proc thread (start a
//!   [`ProcPool`](dap_proc::ProcPool) for the reactor), its response written back on the
//!   connection's own worker. [`HttpServer::add_inline`] runs the same kind of function on
//!   the worker itself, for answers that need no blocking work. Matched by exact path;
//!   [`HttpServer::add_simple_prefix`] matches a prefix instead.
//!
//! What the server does for every route: keep-alive and pipelining (responses in request
//! order), chunked bodies both ways, `Expect: 100-continue`, `HEAD`, a cached `Date`, the
//! RFC 9112 framing rules (no request smuggling), limits and timeouts from [`HttpConfig`],
//! and the right status for each fault (400, 404, 405, 408, 411, 413, 414, 431, 500, 501, 503,
//! 505), closing the connection when it can no longer be trusted.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use dap_net::http::Response;
//! use dap_net::http::server::{HttpConfig, HttpServer, RouteLimits};
//! use dap_net::server::Server;
//! use dap_reactor::Reactor;
//!
//! let reactor = Reactor::builder().threads(2).start()?;
//! let _pool = dap_proc::ProcPool::for_reactor(&reactor)?;
//! let mut http = HttpServer::new(HttpConfig::default());
//! http.add_inline("/", RouteLimits::default(), |_| Response::text(200, "Hello, World!"));
//! http.add_simple("/slow", RouteLimits::default(), |req| {
//!     Response::text(200, format!("{} bytes", req.body.len()))
//! });
//! let running = http.start(&reactor, Server::builder().tcp("127.0.0.1:8080".parse().unwrap()))?;
//! println!("listening on {:?}", running.server().tcp_addrs());
//! # Ok(())
//! # }
//! ```

mod config;
mod conn;
mod exchange;
mod route;
mod stats;

use std::io;
use std::sync::Arc;

use dap_reactor::{Handler, PeerAddr, Reactor};

pub use config::{HttpConfig, RouteLimits};
pub use exchange::{BodyFlow, Exchange, HttpError, ProcHandler, Responder};
pub use stats::{HttpStats, HttpStatsSnapshot};

use crate::http::{HttpLimits, Request, RequestHead, Response};
use crate::server::{Server, ServerBuilder};
use route::{Route, RouteKind, Router};

/// What every connection of one server shares.
pub(crate) struct Shared {
    router: Router,
    config: HttpConfig,
    /// `config.limits` without the body limit: bodies are checked per route after routing.
    parse_limits: HttpLimits,
    stats: Arc<HttpStats>,
    /// Serve HTTPS: every connection gets a TLS layer first.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// [`HttpConfig::request_rate`]'s limiter, shared by every connection.
    rate: Option<crate::limit::RateLimiter>,
}

/// Statuses counted as bad requests (the client's input was at fault).
fn status_error_counter(status: u16) -> bool {
    matches!(status, 400 | 411 | 413 | 414 | 431 | 501 | 505)
}

/// An HTTP/1.1 server being set up: add routes, then [`start`](Self::start) it.
pub struct HttpServer {
    router: Router,
    config: HttpConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer").field("config", &self.config).finish_non_exhaustive()
    }
}

impl HttpServer {
    /// A server with no routes.
    pub fn new(config: HttpConfig) -> Self {
        HttpServer { router: Router::default(), config, tls: None }
    }

    /// Serves HTTPS: each connection is wrapped in TLS (see [`crate::tls::server_config`])
    /// before its first byte is read. Everything else is unchanged.
    pub fn tls(&mut self, config: Arc<rustls::ServerConfig>) -> &mut Self {
        self.tls = Some(config);
        self
    }

    /// Routes every path starting with `prefix` (the longest matching prefix wins; exact
    /// routes win over prefixes) to a streaming handler made per request by `factory`. The
    /// body limit is the server's unless the handler sets one; any method is accepted.
    pub fn add_proc(
        &mut self,
        prefix: &str,
        factory: impl Fn(&RequestHead) -> Box<dyn ProcHandler> + Send + Sync + 'static,
    ) -> &mut Self {
        let limits = RouteLimits { methods: Vec::new(), ..RouteLimits::default() };
        self.router.add_prefix(prefix, Route { kind: RouteKind::Proc(Arc::new(factory)), limits });
        self
    }

    /// Routes `path` exactly to `handler`, run on the proc thread paired with the
    /// connection's worker. Without a proc pool for the reactor, requests get 503.
    pub fn add_simple(
        &mut self,
        path: &str,
        limits: RouteLimits,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> &mut Self {
        self.add_whole(path, false, false, limits, Arc::new(handler))
    }

    /// Routes every path starting with `prefix` to `handler`, run on a proc thread like
    /// [`add_simple`](Self::add_simple): for whole-request handlers that serve a tree of
    /// paths (enc routes, whose sealed sub-path follows the prefix). Prefix routes of both
    /// kinds share one table: the longest matching prefix wins, exact routes win over it.
    pub fn add_simple_prefix(
        &mut self,
        prefix: &str,
        limits: RouteLimits,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> &mut Self {
        self.add_whole(prefix, true, false, limits, Arc::new(handler))
    }

    /// Routes `path` exactly to `handler`, run on the connection's worker: for answers that
    /// are cheap and never block (health checks, metrics, static replies).
    pub fn add_inline(
        &mut self,
        path: &str,
        limits: RouteLimits,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> &mut Self {
        self.add_whole(path, false, true, limits, Arc::new(handler))
    }

    /// Routes every path starting with `prefix` to `handler`, run on the connection's worker
    /// like [`add_inline`](Self::add_inline): cheap answers that never block.
    pub fn add_inline_prefix(
        &mut self,
        prefix: &str,
        limits: RouteLimits,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> &mut Self {
        self.add_whole(prefix, true, true, limits, Arc::new(handler))
    }

    /// A whole-request route: at `path` exactly or every path under it (`prefix`), on the
    /// worker (`inline`) or a proc thread.
    fn add_whole(
        &mut self,
        path: &str,
        prefix: bool,
        inline: bool,
        limits: RouteLimits,
        f: route::SimpleFn,
    ) -> &mut Self {
        let route = Route { kind: RouteKind::Simple { f, inline }, limits };
        if prefix {
            self.router.add_prefix(path, route);
        } else {
            self.router.add_exact(path, route);
        }
        self
    }

    /// Freezes the routes and returns the connection factory, for use with any listener
    /// (e.g. behind TLS), and the counters.
    pub fn into_factory(
        self,
        workers: usize,
    ) -> (impl Fn(&PeerAddr) -> Option<Box<dyn Handler>> + Send + Sync + 'static, Arc<HttpStats>)
    {
        let stats = Arc::new(HttpStats::new(workers));
        let parse_limits = HttpLimits { max_body: u64::MAX, ..self.config.limits };
        let rate = self.config.request_rate.clone().map(crate::limit::RateLimiter::new);
        let shared = Arc::new(Shared {
            rate,
            router: self.router,
            config: self.config,
            parse_limits,
            stats: stats.clone(),
            tls: self.tls,
        });
        let factory = move |peer: &PeerAddr| -> Option<Box<dyn Handler>> {
            let addr = match peer {
                PeerAddr::Inet(a) => Some(*a),
                _ => None,
            };
            Some(Box::new(conn::HttpConn::new(shared.clone(), addr)))
        };
        (factory, stats)
    }

    /// Starts serving on the listeners of `server` (addresses and access list).
    ///
    /// # Errors
    /// Binding or installing a listener failed.
    pub fn start(self, reactor: &Reactor, server: ServerBuilder) -> io::Result<RunningHttp> {
        let (factory, stats) = self.into_factory(reactor.len());
        let server = server.start(reactor, factory)?;
        Ok(RunningHttp { server, stats })
    }
}

/// Runs `f` with the handler an HTTP server connection was upgraded to
/// ([`Exchange::upgrade`]), if `es` is such a connection and that handler is an `H`. The
/// upgraded handler sits inside the server's connection handler, so
/// [`Esocket::with_handler`](dap_reactor::Esocket::with_handler) does not reach it: code
/// that gets to an upgraded connection through its esocket handle (a waker, an `exec`
/// closure) uses this instead.
pub fn with_upgraded<H: Handler, R>(
    es: &mut dap_reactor::Esocket<'_>,
    f: impl FnOnce(&mut H, &mut dap_reactor::Esocket<'_>) -> R,
) -> Option<R> {
    es.with_handler::<conn::HttpConn, _>(|c, es| c.upgraded_as::<H>().map(|h| f(h, es))).flatten()
}

/// A started HTTP server. Dropping it closes the listeners; open connections finish their
/// requests.
#[derive(Debug)]
pub struct RunningHttp {
    server: Server,
    stats: Arc<HttpStats>,
}

impl RunningHttp {
    /// The listeners.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The request counters.
    pub fn stats(&self) -> HttpStatsSnapshot {
        self.stats.snapshot()
    }
}
