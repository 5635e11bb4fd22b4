//! Helpers for the client tests: an in-process node (enc_init, stream_ctl, echo), a client
//! reactor, and bounded waits.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dap_client::{Client, ClientConfig, RetryPolicy, Uplink};
use dap_net::enc::{EncConfig, EncServer, NodeKey};
use dap_net::http::Response;
use dap_net::http::server::{HttpConfig, HttpServer, RouteLimits, RunningHttp};
use dap_net::server::Server;
use dap_proc::ProcPool;
use dap_reactor::Reactor;
use dap_stream::server::STREAM_CTL_PATH;
use dap_stream::{ChannelProcs, StreamConfig, StreamServer};

/// Every wait in these tests ends within this.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A node: `/enc_init`, `/stream_ctl`, `/stream/` with echo on `E` and `F`, and
/// publish/subscribe on `P`.
pub struct Node {
    pub addr: SocketAddr,
    pub key: [u8; 32],
    pub stream: StreamServer,
    pub enc: EncServer,
    pub http: RunningHttp,
    /// The HTTPS listener, once [`Node::serve_tls`] ran.
    pub https: Option<RunningHttp>,
    pub pool: ProcPool,
    pub reactor: Reactor,
}

impl Node {
    /// A node on an ephemeral port.
    pub fn start(enc: EncConfig) -> Node {
        Node::start_at("127.0.0.1:0".parse().unwrap(), enc, NodeKey::generate(), false)
    }

    /// A node at `addr` with `key`; `garbage_ctl` answers stream_ctl with a sealed body that
    /// is not a stream_ctl answer.
    pub fn start_at(addr: SocketAddr, enc: EncConfig, key: NodeKey, garbage_ctl: bool) -> Node {
        let reactor = Reactor::builder().threads(2).pin(false).start().expect("reactor");
        let pool = ProcPool::builder().pin(false).start_for(&reactor).expect("pool");
        let mut procs = ChannelProcs::new();
        dap_stream::echo::register(&mut procs);
        procs.ch_proc_add(b'F', |_| Box::new(dap_stream::echo::Echo::default())).unwrap();
        let broker = dap_stream::pubsub::Broker::new(Default::default());
        dap_stream::pubsub::register(&mut procs, broker);
        let stream = StreamServer::new(procs, StreamConfig::default());
        let enc = EncServer::new(key, enc);
        let mut http = HttpServer::new(HttpConfig::default());
        enc.install(&mut http);
        if garbage_ctl {
            let limits = RouteLimits::methods(&["POST"]).max_body(1024);
            enc.add_route(&mut http, STREAM_CTL_PATH, limits, |_| {
                Response::new(200).body(b"\x07not a stream_ctl answer".to_vec())
            });
            stream.install_stream_route(&mut http);
        } else {
            stream.install(&mut http, &enc);
        }
        let http = http.start(&reactor, Server::builder().tcp(addr)).expect("http server");
        let addr = http.server().tcp_addrs()[0];
        // Streams over UDP too, on a port of their own (announced in stream_ctl answers).
        stream.serve_udp(&reactor, "127.0.0.1:0".parse().unwrap()).expect("udp");
        Node { addr, key: enc.node_public_key(), stream, enc, http, https: None, pool, reactor }
    }

    /// Serves the node's routes over TLS too, on another ephemeral port, with a fresh
    /// self-signed certificate for `localhost` and 127.0.0.1; returns the address and the
    /// certificate's PEM file.
    pub fn serve_tls(&mut self, dir: &std::path::Path) -> (SocketAddr, std::path::PathBuf) {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let ck = rcgen::generate_simple_self_signed(names).expect("a certificate");
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let config = dap_net::tls::server_config(&cert, &key).expect("TLS config");
        let mut https = HttpServer::new(HttpConfig::default());
        https.tls(config);
        self.enc.install(&mut https);
        self.stream.install(&mut https, &self.enc);
        let running = https
            .start(&self.reactor, Server::builder().tcp("127.0.0.1:0".parse().unwrap()))
            .expect("https server");
        let addr = running.server().tcp_addrs()[0];
        self.https = Some(running);
        (addr, cert)
    }

    /// Stops the node: listeners and connections close.
    pub fn stop(self) {
        let Node { http, https, reactor, pool, .. } = self;
        drop(https);
        drop(http);
        reactor.shutdown(Duration::from_secs(1));
        pool.stop_cancel();
        pool.wait();
    }
}

/// A client reactor with `threads` workers.
pub fn client_reactor(threads: usize) -> Reactor {
    Reactor::builder().threads(threads).pin(false).start().expect("client reactor")
}

/// A client config for `addr` pinning `key`, quick to give up.
pub fn config(addr: SocketAddr, key: [u8; 32]) -> ClientConfig {
    let retry =
        RetryPolicy::max_tries(2).delays(Duration::from_millis(50), Duration::from_millis(50));
    ClientConfig::new(Uplink::Addr(addr))
        .node_key(key)
        .channels(b"EF")
        .retry(retry)
        // These tests ask for their stages; the ones about connect-on-demand turn it on.
        .connect_on_demand(false)
        .timeouts(Duration::from_secs(5), Duration::from_secs(10))
}

/// A client on `reactor`'s worker `w`; messages go to the returned receiver.
pub fn client(
    reactor: &Reactor,
    w: usize,
    cfg: ClientConfig,
) -> (Arc<Client>, crossbeam_channel::Receiver<(u8, Vec<u8>)>) {
    let c = Client::new(&reactor.workers()[w], cfg, ChannelProcs::new()).expect("client");
    let (tx, rx) = crossbeam_channel::unbounded();
    c.on_message(move |ch, m| {
        let _ = tx.send((ch, m.data.to_vec()));
    });
    (Arc::new(c), rx)
}

/// A port nothing listens on (bound, then released).
pub fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Waits until `f` holds, or panics after [`TIMEOUT`].
#[track_caller]
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
