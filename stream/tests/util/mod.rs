//! Helpers for the stream tests: a server with stream routes, a client that records what
//! arrives, bounded waits.
#![allow(dead_code)]

pub mod relay;
pub mod udp_relay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use dap_net::enc::cipher::CipherSuite;
use dap_net::enc::client::handshake_blocking;
use dap_net::enc::{ClientCert, EncConfig, EncServer, EncSession, NodeKey};
use dap_net::http::client::ClientConfig;
use dap_net::http::server::{HttpConfig, HttpServer, RunningHttp};
use dap_net::server::Server;
use dap_proc::ProcPool;
use dap_reactor::{EsocketHandle, Reactor};
use dap_stream::session::ctl::{CtlRequest, decode_answer};
use dap_stream::session::{SessionParams, TransportKind};
use dap_stream::transport::StreamError;
use dap_stream::transport::http::StreamEvent;
use dap_stream::{
    Channel, ChannelHandle, ChannelHandler, ChannelProcs, Message, MuxConfig, StreamConfig,
    StreamServer, StreamStats,
};

/// Every wait in these tests ends within this.
pub const TIMEOUT: Duration = Duration::from_secs(30);

pub struct TestServer {
    pub addr: SocketAddr,
    pub stream: StreamServer,
    pub enc: EncServer,
    pub http: RunningHttp,
    pub pool: ProcPool,
    pub reactor: Reactor,
}

/// A server offering echo on every id in `ids`.
pub fn echo_server(ids: &[u8], config: StreamConfig) -> TestServer {
    let mut procs = ChannelProcs::new();
    for &id in ids {
        procs.ch_proc_add(id, |_| Box::new(dap_stream::echo::Echo::default())).unwrap();
    }
    server(procs, config)
}

/// [`echo_server`] on a reactor of `threads` workers.
pub fn echo_server_threads(ids: &[u8], config: StreamConfig, threads: usize) -> TestServer {
    let mut procs = ChannelProcs::new();
    for &id in ids {
        procs.ch_proc_add(id, |_| Box::new(dap_stream::echo::Echo::default())).unwrap();
    }
    server_on(procs, config, EncConfig::default(), threads)
}

pub fn server(procs: ChannelProcs, config: StreamConfig) -> TestServer {
    server_with_enc(procs, config, EncConfig::default())
}

/// A server with `/enc_init`, `/stream_ctl` and `/stream/`.
pub fn server_with_enc(procs: ChannelProcs, config: StreamConfig, enc: EncConfig) -> TestServer {
    server_on(procs, config, enc, 2)
}

/// [`server_with_enc`] on a reactor of `threads` workers.
pub fn server_on(
    procs: ChannelProcs,
    config: StreamConfig,
    enc: EncConfig,
    threads: usize,
) -> TestServer {
    let reactor = Reactor::builder().threads(threads).pin(false).start().expect("reactor");
    let pool = ProcPool::builder().pin(false).start_for(&reactor).expect("pool");
    let stream = StreamServer::new(procs, config);
    let enc = EncServer::new(NodeKey::generate(), enc);
    let mut http = HttpServer::new(HttpConfig::default());
    enc.install(&mut http);
    stream.install(&mut http, &enc);
    let http = http
        .start(&reactor, Server::builder().tcp("127.0.0.1:0".parse().unwrap()))
        .expect("http server");
    let addr = http.server().tcp_addrs()[0];
    TestServer { addr, stream, enc, http, pool, reactor }
}

impl TestServer {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The whole client path: enc_init (pinning the node key), stream_ctl over enc_http,
    /// then the stream, from `client`'s first worker.
    pub fn open(
        &self,
        client: &Reactor,
        channels: &[u8],
        suite: Option<CipherSuite>,
        cert: Option<&ClientCert>,
    ) -> Result<TestClient, String> {
        let w = client.worker(0).expect("worker");
        let http = ClientConfig::default();
        let suites = suite.map_or(CipherSuite::ALL.to_vec(), |s| vec![s]);
        let enc = handshake_blocking(
            w,
            &self.base_url(),
            &suites,
            cert,
            Some(self.enc.node_public_key()),
            &http,
        )
        .map_err(|e| format!("handshake: {e}"))?;
        let params = self.ctl(client, &enc, channels, suite)?;
        try_connect(client, self.addr, params).map_err(|e| format!("stream: {e}"))
    }

    /// stream_ctl over enc_http with `enc`.
    pub fn ctl(
        &self,
        client: &Reactor,
        enc: &EncSession,
        channels: &[u8],
        suite: Option<CipherSuite>,
    ) -> Result<SessionParams, String> {
        let w = client.worker(0).expect("worker");
        let local = MuxConfig::default();
        dap_stream::client::stream_ctl_blocking(
            w,
            &self.base_url(),
            enc,
            channels,
            suite,
            local,
            &ClientConfig::default(),
        )
        .map_err(|e| format!("stream_ctl: {e}"))
    }

    /// A session created the way stream_ctl creates one (without the enc_http wrapping).
    pub fn session(&self, channels: &[u8], suite: Option<CipherSuite>) -> SessionParams {
        let req = CtlRequest {
            channels: channels.to_vec(),
            suite,
            transport: TransportKind::Http,
            unreliable: Vec::new(),
        };
        let answer =
            self.stream.stream_ctl(&req.encode(), None, Instant::now()).expect("stream_ctl");
        decode_answer(&answer, MuxConfig::default()).expect("answer")
    }
}

/// Forwards every message to a channel; starts paused when asked to.
struct Record(Sender<(u8, Message)>, bool);

impl ChannelHandler for Record {
    fn on_new(&mut self, ch: &mut Channel<'_>) {
        if self.1 {
            ch.set_ready_to_read(false);
        }
    }

    fn packet_in(&mut self, ch: &mut Channel<'_>, msg: Message) {
        let _ = self.0.send((ch.id(), msg));
    }
}

pub struct TestClient {
    pub esocket: EsocketHandle,
    pub channels: Vec<ChannelHandle>,
    pub messages: Receiver<(u8, Message)>,
    pub events: Receiver<StreamEvent>,
    pub stats: Arc<StreamStats>,
}

impl TestClient {
    pub fn channel(&self, id: u8) -> &ChannelHandle {
        self.channels.iter().find(|h| h.id() == id).expect("channel")
    }

    /// Waits for the stream to end and returns why.
    #[track_caller]
    pub fn closed(&self) -> StreamError {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.events.recv_deadline(deadline).expect("stream did not close in time") {
                StreamEvent::Closed(e) => return e,
                StreamEvent::Opened { .. } | StreamEvent::Connected { .. } => {}
            }
        }
    }
}

/// Connects a client that records what arrives, on `reactor`'s first worker.
#[track_caller]
pub fn connect(reactor: &Reactor, addr: SocketAddr, params: SessionParams) -> TestClient {
    try_connect(reactor, addr, params).expect("connect")
}

pub fn try_connect(
    reactor: &Reactor,
    addr: SocketAddr,
    params: SessionParams,
) -> Result<TestClient, StreamError> {
    connect_paused(reactor, addr, params, b"")
}

/// As [`try_connect`], with the channels in `paused` not reading.
pub fn connect_paused(
    reactor: &Reactor,
    addr: SocketAddr,
    params: SessionParams,
    paused: &[u8],
) -> Result<TestClient, StreamError> {
    let (mtx, messages) = unbounded();
    let mut procs = ChannelProcs::new();
    for &id in &params.channels {
        let tx = mtx.clone();
        let pause = paused.contains(&id);
        procs.ch_proc_add(id, move |_| Box::new(Record(tx.clone(), pause))).unwrap();
    }
    let (etx, events) = unbounded();
    let stats = Arc::new(StreamStats::default());
    dap_stream::client::connect(
        reactor.worker(0).expect("worker 0"),
        addr,
        params,
        Arc::new(procs),
        stats.clone(),
        Duration::from_secs(10),
        Box::new(move |ev| {
            let _ = etx.send(ev);
        }),
    )
    .expect("post connect");
    loop {
        match events.recv_timeout(TIMEOUT).expect("no stream event in time") {
            StreamEvent::Opened { .. } => {}
            StreamEvent::Connected { esocket, channels } => {
                return Ok(TestClient { esocket, channels, messages, events, stats });
            }
            StreamEvent::Closed(e) => return Err(e),
        }
    }
}

/// Waits until `f` holds, polling; panics after [`TIMEOUT`].
#[track_caller]
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A reactor for clients, apart from the server's.
pub fn client_reactor() -> Reactor {
    Reactor::builder().threads(1).pin(false).start().expect("client reactor")
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().to_vec()
}
