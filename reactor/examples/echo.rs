//! Echo server: every byte a client sends comes back.
//!
//! ```text
//! cargo run --release -p dap-reactor --example echo -- --addr 127.0.0.1:7000 --threads 2
//! ```
//!
//! `--threads 0` (the default) runs one pinned worker per CPU. Ctrl-C stops it.

use std::net::SocketAddr;
use std::time::Duration;

use dap_reactor::{Esocket, Handler, PeerAddr, Reactor};

/// Copies input to output; when output is full, input waits (and so does the peer).
struct Echo;

impl Handler for Echo {
    fn on_read(&mut self, es: &mut Esocket<'_>) {
        // WouldBlock means buf_out is full: on_write runs once it drains.
        let _ = es.copy_in_to_out();
    }

    fn on_write(&mut self, es: &mut Esocket<'_>) -> bool {
        let _ = es.copy_in_to_out();
        false
    }
}

fn main() {
    let mut addr: SocketAddr = "127.0.0.1:7000".parse().expect("valid default");
    let mut threads = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--addr" => addr = value().parse().unwrap_or_else(|e| usage(&format!("--addr: {e}"))),
            "--threads" => {
                threads = value().parse().unwrap_or_else(|e| usage(&format!("--threads: {e}")))
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if let Err(e) = dap_reactor::raise_fd_limit() {
        eprintln!("echo: could not raise the open-file limit: {e}");
    }
    let reactor = Reactor::builder().threads(threads).start().unwrap_or_else(|e| {
        eprintln!("echo: cannot start the reactor: {e}");
        std::process::exit(1);
    });
    let factory = |_: &PeerAddr| Some(Box::new(Echo) as Box<dyn Handler>);
    let listening = reactor.listen_tcp(addr, factory).unwrap_or_else(|e| {
        eprintln!("echo: cannot listen on {addr}: {e}");
        std::process::exit(1);
    });
    println!(
        "echo: listening on {} with {} worker(s)",
        listening.local_addr().map_or_else(|| addr.to_string(), |a| a.to_string()),
        reactor.len()
    );
    wait_for_signal();
    eprintln!("echo: stopping");
    reactor.shutdown(Duration::from_secs(2));
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_signal() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(mut signals) => {
            let _ = signals.forever().next();
        }
        Err(e) => {
            eprintln!("echo: cannot watch signals ({e}); running until killed");
            loop {
                std::thread::park();
            }
        }
    }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("echo: {problem}");
    }
    eprintln!("usage: echo [--addr IP:PORT] [--threads N]");
    std::process::exit(if problem.is_empty() { 0 } else { 2 });
}
