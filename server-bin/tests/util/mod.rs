//! Helpers for the dapd tests: a daemon in-process on an ephemeral port, clients through
//! the stream-level API (enc_init, stream_ctl, the stream), pub/sub helpers, bounded waits.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use dap_net::enc::cipher::CipherSuite;
use dap_net::enc::client::handshake_blocking;
use dap_net::http::client::ClientConfig;
use dap_reactor::Reactor;
use dap_server::{Config, Node};
use dap_stream::pubsub::{PubSubMsg, Topic};
use dap_stream::session::TransportKind;
use dap_stream::session::ctl::CtlRequest;
use dap_stream::transport::StreamError;
use dap_stream::transport::http::StreamEvent;
use dap_stream::{
    Channel, ChannelHandle, ChannelHandler, ChannelProcs, Message, MuxConfig, StreamStats,
};

/// Every wait in these tests ends within this.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The embedded default on 127.0.0.1:0 with `threads` unpinned workers.
pub fn config(threads: usize) -> Config {
    let mut c = Config::embedded();
    c.listen.addr = "127.0.0.1:0".parse().unwrap();
    c.reactor.threads = threads;
    c.reactor.pin = false;
    c.shutdown.grace_ms = 5_000;
    c
}

/// A daemon in this process.
pub fn daemon(config: Config) -> Node {
    Node::from_config(config).builtin_channels().start().expect("dapd starts")
}

/// A reactor for clients, apart from the daemon's.
pub fn client_reactor() -> Reactor {
    Reactor::builder().threads(1).pin(false).start().expect("client reactor")
}

/// Forwards every message to a channel.
struct Record(Sender<Message>);

impl ChannelHandler for Record {
    fn packet_in(&mut self, _: &mut Channel<'_>, msg: Message) {
        let _ = self.0.send(msg);
    }
}

/// One session, as a test sees it.
pub struct TestClient {
    pub channels: Vec<ChannelHandle>,
    pub messages: Receiver<Message>,
    pub events: Receiver<StreamEvent>,
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

    /// The next message, within [`TIMEOUT`].
    #[track_caller]
    pub fn next(&self) -> Message {
        self.messages.recv_timeout(TIMEOUT).expect("a message in time")
    }

    /// Sends a pub/sub message on `'P'`, waiting for room.
    pub fn send(&self, m: &PubSubMsg) -> Result<(), dap_stream::HandleWriteError> {
        self.channel(b'P').write_timeout(m.ty(), m.encode(), TIMEOUT)
    }

    /// Subscribes to `topic` and waits for SUBSCRIBED.
    #[track_caller]
    pub fn subscribe(&self, topic: &Topic) {
        self.send(&PubSubMsg::Subscribe { topic: topic.clone() }).unwrap();
        let m = self.next();
        assert_eq!(
            PubSubMsg::decode(m.ty, &m.data),
            Ok(PubSubMsg::Subscribed { topic: topic.clone() })
        );
    }
}

/// enc_init (pinning `node`), stream_ctl over enc_http, then the stream, from `client`'s
/// first worker.
pub fn open(
    client: &Reactor,
    addr: SocketAddr,
    node: [u8; 32],
    channels: &[u8],
) -> Result<TestClient, String> {
    open_over(client, addr, node, channels, TransportKind::Http)
}

/// [`open`] over `transport` (UDP: the session's connection on a socket of its own).
pub fn open_over(
    client: &Reactor,
    addr: SocketAddr,
    node: [u8; 32],
    channels: &[u8],
    transport: TransportKind,
) -> Result<TestClient, String> {
    open_across(client, [addr; 3], node, channels, transport)
}

/// [`open_over`] with each step at its own address (nodes of a cluster): enc_init at
/// `at[0]` (whose node key is `node`), stream_ctl at `at[1]`, the stream at `at[2]`.
pub fn open_across(
    client: &Reactor,
    at: [SocketAddr; 3],
    node: [u8; 32],
    channels: &[u8],
    transport: TransportKind,
) -> Result<TestClient, String> {
    let w = client.worker(0).expect("worker");
    let http = ClientConfig::default();
    let enc = handshake_blocking(
        w,
        &format!("http://{}", at[0]),
        &CipherSuite::ALL,
        None,
        Some(node),
        &http,
    )
    .map_err(|e| format!("handshake: {e}"))?;
    let base = format!("http://{}", at[1]);
    let addr = at[2];
    let req =
        CtlRequest { channels: channels.to_vec(), suite: None, transport, unreliable: Vec::new() };
    let params = dap_stream::client::stream_ctl_request_blocking(
        w,
        &base,
        &enc,
        &req,
        MuxConfig::default(),
        &http,
    )
    .map_err(|e| format!("stream_ctl: {e}"))?;
    let (mtx, messages) = unbounded();
    let mut procs = ChannelProcs::new();
    for &id in channels {
        let tx = mtx.clone();
        procs.ch_proc_add(id, move |_| Box::new(Record(tx.clone()))).unwrap();
    }
    let (etx, events) = unbounded();
    let sink: dap_stream::transport::http::EventSink = Box::new(move |ev| {
        let _ = etx.send(ev);
    });
    let stats = Arc::new(StreamStats::default());
    if transport == TransportKind::Udp {
        let server = dap_stream::client::udp_server_addr(&params, addr)?;
        w.exec(move |ctx| {
            let _ = dap_stream::client::udp_connect_on(
                ctx,
                server,
                params,
                &procs,
                stats,
                Duration::from_secs(10),
                sink,
            );
        })
        .map_err(|e| format!("udp connect: {e:?}"))?;
    } else {
        dap_stream::client::connect(
            w,
            addr,
            params,
            Arc::new(procs),
            stats,
            Duration::from_secs(10),
            sink,
        )
        .map_err(|e| format!("connect: {e}"))?;
    }
    loop {
        match events.recv_timeout(TIMEOUT).map_err(|_| "no stream event in time".to_string())? {
            StreamEvent::Opened { .. } => {}
            StreamEvent::Connected { channels, .. } => {
                return Ok(TestClient { channels, messages, events });
            }
            StreamEvent::Closed(e) => return Err(format!("stream: {e}")),
        }
    }
}

/// A plain `GET` with `Connection: close`: the status and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    (status, body.to_string())
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

/// A published payload: publisher id, then its sequence number.
pub fn payload(publisher: u8, seq: u64) -> Vec<u8> {
    let mut p = vec![publisher];
    p.extend_from_slice(&seq.to_be_bytes());
    p
}

/// Reads a payload made by [`payload`].
pub fn read_payload(p: &[u8]) -> (u8, u64) {
    assert_eq!(p.len(), 9, "payload length");
    (p[0], u64::from_be_bytes(p[1..9].try_into().unwrap()))
}

/// Kills a child process if the test ends before it exits.
pub struct Guard(pub std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the `dapd` binary with a config on port 0 (plus `extra`, TOML sections), its
/// files in a directory named after `test` and `name`; returns it, its address and its
/// node key.
pub fn spawn_dapd(test: &str, name: &str, extra: &str) -> (Guard, SocketAddr, [u8; 32]) {
    let d = spawn_dapd_with(test, name, extra, &[]);
    (d.guard, d.addr, d.key)
}

/// A `dapd` process started by [`spawn_dapd_with`].
pub struct Dapd {
    pub guard: Guard,
    pub addr: SocketAddr,
    pub key: [u8; 32],
    /// Its log lines (stderr), as they come; each is also printed to the test's output.
    pub log: crossbeam_channel::Receiver<String>,
    /// Its UDP address, when it serves UDP.
    pub udp: Option<SocketAddr>,
}

/// [`spawn_dapd`], run through `wrapper` (a command and its arguments that then runs dapd,
/// `prlimit --nofile=…`, say; empty: none), with its log lines kept.
pub fn spawn_dapd_with(test: &str, name: &str, extra: &str, wrapper: &[&str]) -> Dapd {
    let dir = std::env::temp_dir().join(format!("dapd-{test}-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dapd.toml");
    let text = format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n[reactor]\nthreads = 2\npin = false\n\
         [shutdown]\ngrace_ms = 10000\n[log]\nlevel = \"warn\"\n{extra}"
    );
    std::fs::write(&path, text).unwrap();
    let dapd = env!("CARGO_BIN_EXE_dapd");
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(dapd);
            c
        }
        None => Command::new(dapd),
    };
    let mut child = cmd
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dapd");
    let lines = |r: Box<dyn Read + Send>, echo: bool| {
        let (tx, rx) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("{line}");
                }
                // Read to the end even when nobody listens: dapd must never find its
                // output closed.
                let _ = tx.send(line);
            }
        });
        rx
    };
    let out = lines(Box::new(child.stdout.take().unwrap()), false);
    let log = lines(Box::new(child.stderr.take().unwrap()), true);
    let guard = Guard(child);
    let deadline = Instant::now() + TIMEOUT;
    let (mut addr, mut key, mut udp) = (None, None, None);
    // The node key comes last.
    while addr.is_none() || key.is_none() {
        let line = out.recv_deadline(deadline).expect("dapd announces itself in time");
        if let Some(a) = line.strip_prefix("dapd: listening on ") {
            addr = Some(a.parse().expect("an address"));
        } else if let Some(a) = line.strip_prefix("dapd: udp listening on ") {
            udp = Some(a.parse().expect("an address"));
        } else if let Some(k) = line.strip_prefix("dapd: node key ") {
            key = dap_net::enc::keys::public_key_from_base64(k);
        }
    }
    Dapd { guard, addr: addr.unwrap(), key: key.unwrap(), log, udp }
}
