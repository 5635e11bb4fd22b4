//! Hello server: `GET /` answers `Hello, World!`, with keep-alive and pipelining.
//!
//! ```text
//! cargo run --release -p dap-net --example hello -- --addr 127.0.0.1:8080 --threads 2
//! ```
//!
//! `--threads 0` (the default) runs one pinned worker per CPU (`--no-pin`: unpinned); `--cert FILE --key FILE`
//! (PEM) serve HTTPS instead. Ctrl-C stops it.

use std::net::SocketAddr;
use std::time::Duration;

use dap_net::http::Response;
use dap_net::http::server::{HttpConfig, HttpServer, RouteLimits};
use dap_net::server::Server;
use dap_reactor::Reactor;

fn main() {
    let mut addr: SocketAddr = "127.0.0.1:8080".parse().expect("valid default");
    let mut threads = 0usize;
    let mut pin = true;
    let mut cert: Option<std::path::PathBuf> = None;
    let mut key: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--addr" => addr = value().parse().unwrap_or_else(|e| usage(&format!("--addr: {e}"))),
            "--threads" => {
                threads = value().parse().unwrap_or_else(|e| usage(&format!("--threads: {e}")))
            }
            "--no-pin" => pin = false,
            "--cert" => cert = Some(value().into()),
            "--key" => key = Some(value().into()),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if let Err(e) = dap_reactor::raise_fd_limit() {
        eprintln!("hello: could not raise the open-file limit: {e}");
    }
    let reactor = Reactor::builder().threads(threads).pin(pin).start().unwrap_or_else(|e| {
        eprintln!("hello: cannot start the reactor: {e}");
        std::process::exit(1);
    });
    let mut http = HttpServer::new(HttpConfig::default());
    // An answer that needs no blocking work runs on the worker itself.
    let hello = bytes::Bytes::from_static(b"Hello, World!");
    http.add_inline("/", RouteLimits::methods(&["GET", "HEAD"]), move |_| {
        Response::new(200).header("Content-Type", "text/plain").body(hello.clone())
    });
    match (&cert, &key) {
        (Some(cert), Some(key)) => match dap_net::tls::server_config(cert, key) {
            Ok(config) => {
                http.tls(config);
            }
            Err(e) => {
                eprintln!("hello: {e}");
                std::process::exit(1);
            }
        },
        (None, None) => {}
        _ => usage("--cert and --key go together"),
    }
    let running = http.start(&reactor, Server::builder().tcp(addr)).unwrap_or_else(|e| {
        eprintln!("hello: cannot listen on {addr}: {e}");
        std::process::exit(1);
    });
    println!(
        "hello: listening on {}{} with {} worker(s)",
        if cert.is_some() { "https://" } else { "http://" },
        running.server().tcp_addrs().first().map_or_else(|| addr.to_string(), |a| a.to_string()),
        reactor.len()
    );
    wait_for_signal();
    eprintln!("hello: stopping; {:?}", running.stats());
    drop(running);
    reactor.shutdown(Duration::from_secs(2));
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("hello: {err}");
    }
    eprintln!("usage: hello [--addr IP:PORT] [--threads N] [--no-pin] [--cert PEM --key PEM]");
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
            eprintln!("hello: cannot watch signals ({e}); running until killed");
            loop {
                std::thread::park();
            }
        }
    }
}
