//! A stream server: `/enc_init`, `/stream_ctl` and `/stream/` with echo channels `E`, `A`,
//! `B`, `C` and a sink `S` that discards what it gets (for bulk transfers).
//!
//! ```text
//! cargo run --release -p dap-stream --example stream_server -- --addr 127.0.0.1:8079 --threads 2
//! ```
//!
//! `--node-key FILE` loads the node's Ed25519 key (PEM, as `keygen` writes it); without it a
//! fresh key is made. The node's public key is printed, for clients to pin. `--no-pin` runs
//! unpinned workers. Ctrl-C drains the streams and stops it.
//!
//! This example wires the pieces by hand; `dap_server::Node` (crate `dap-server`) does the
//! same, plus UDP, `/health`, `/metrics` and the drain, from one builder.

use std::net::SocketAddr;
use std::time::Duration;

use dap_net::enc::{EncConfig, EncServer, NodeKey, keys::public_key_to_base64};
use dap_net::http::server::{HttpConfig, HttpServer};
use dap_net::server::Server;
use dap_reactor::Reactor;
use dap_stream::{Channel, ChannelHandler, ChannelProcs, Message, StreamConfig, StreamServer};

/// Discards everything.
struct Sink;

impl ChannelHandler for Sink {
    fn packet_in(&mut self, _: &mut Channel<'_>, _: Message) {}
}

fn main() {
    let mut addr: SocketAddr = "127.0.0.1:8079".parse().expect("valid default");
    let mut threads = 0usize;
    let mut pin = true;
    let mut node_key: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--addr" => addr = value().parse().unwrap_or_else(|e| usage(&format!("--addr: {e}"))),
            "--threads" => {
                threads = value().parse().unwrap_or_else(|e| usage(&format!("--threads: {e}")))
            }
            "--no-pin" => pin = false,
            "--node-key" => node_key = Some(value().into()),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if let Err(e) = dap_reactor::raise_fd_limit() {
        eprintln!("stream_server: could not raise the open-file limit: {e}");
    }
    let node = match node_key {
        Some(path) => {
            NodeKey::load(&path).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())))
        }
        None => NodeKey::generate(),
    };
    let reactor = Reactor::builder()
        .threads(threads)
        .pin(pin)
        .start()
        .unwrap_or_else(|e| fail(&format!("cannot start the reactor: {e}")));
    let _pool = dap_proc::ProcPool::builder()
        .pin(pin)
        .start_for(&reactor)
        .unwrap_or_else(|e| fail(&format!("cannot start the proc pool: {e}")));
    let mut procs = ChannelProcs::new();
    for id in [b'E', b'A', b'B', b'C'] {
        procs.ch_proc_add(id, |_| Box::new(dap_stream::echo::Echo::default())).expect("valid id");
    }
    procs.ch_proc_add(b'S', |_| Box::new(Sink)).expect("valid id");
    let enc = EncServer::new(node, EncConfig::default());
    let stream = StreamServer::new(procs, StreamConfig::default());
    let mut http = HttpServer::new(HttpConfig::default());
    enc.install(&mut http);
    stream.install(&mut http, &enc);
    let running = http
        .start(&reactor, Server::builder().tcp(addr))
        .unwrap_or_else(|e| fail(&format!("cannot listen on {addr}: {e}")));
    println!(
        "stream_server: listening on http://{} with {} worker(s); node key {}",
        running.server().tcp_addrs().first().map_or_else(|| addr.to_string(), |a| a.to_string()),
        reactor.len(),
        public_key_to_base64(&enc.node_public_key()),
    );
    wait_for_signal();
    // The streams first: each sends what it has queued and a CLOSE going-away.
    let drained = stream.drain(Duration::from_secs(5));
    eprintln!("stream_server: stopping; {drained:?}; {:?}", stream.stats());
    drop(running);
    reactor.shutdown(Duration::from_secs(2));
}

fn fail(err: &str) -> ! {
    eprintln!("stream_server: {err}");
    std::process::exit(1);
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("stream_server: {err}");
    }
    eprintln!("usage: stream_server [--addr IP:PORT] [--threads N] [--no-pin] [--node-key PEM]");
    std::process::exit(if err.is_empty() { 0 } else { 2 });
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_signal() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(mut signals) => {
            let _ = signals.forever().next();
        }
        Err(e) => {
            eprintln!("stream_server: cannot watch signals ({e}); running until killed");
            loop {
                std::thread::park();
            }
        }
    }
}
