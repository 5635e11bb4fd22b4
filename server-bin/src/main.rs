//! `dapd`: the dap daemon.
//!
//! ```text
//! dapd [--config FILE] [--log-format text|json]
//! dapd --print-default-config
//! dapd keygen --node FILE | --client FILE
//! ```
//!
//! Exit status: 0 after a drain on SIGINT/SIGTERM; 2 for a bad command line or
//! configuration (the message names the key); 1 when the daemon cannot start.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use dap_net::enc::keys::public_key_to_base64;
use dap_net::enc::{ClientCert, NodeKey};
use dap_server::signals::{self, ShutdownSignals};
use dap_server::{Config, DEFAULT_CONFIG, Daemon, LogFormat, logging};

/// The dap daemon: enc handshake, encrypted streams with echo ('E') and pub/sub ('P')
/// channels, health and Prometheus metrics.
#[derive(Debug, Parser)]
#[command(name = "dapd", version)]
struct Cli {
    /// The configuration file (TOML); without it, the embedded default.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log line format (overrides `[log] format`).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a new Ed25519 key (PEM, mode 0600, never overwritten) and print its public key.
    Keygen(Keygen),
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Keygen {
    /// A node key, for `[enc] node_key`.
    #[arg(long, value_name = "FILE")]
    node: Option<PathBuf>,
    /// A client certificate key (its public key goes on a server's allow list).
    #[arg(long, value_name = "FILE")]
    client: Option<PathBuf>,
}

fn keygen(k: Keygen) -> ExitCode {
    let (path, public, saved) = match (k.node, k.client) {
        (Some(path), _) => {
            let key = NodeKey::generate();
            let saved = key.save(&path);
            (path, key.public_key(), saved)
        }
        (None, Some(path)) => {
            let key = ClientCert::generate();
            let saved = key.save(&path);
            (path, key.public_key(), saved)
        }
        (None, None) => return ExitCode::from(2),
    };
    match saved {
        Ok(()) => {
            println!("{}", public_key_to_base64(&public));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dapd: {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Keygen(k)) = cli.command {
        return keygen(k);
    }
    let config = match &cli.config {
        Some(path) => Config::load(path),
        None => Config::from_toml(DEFAULT_CONFIG),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dapd: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(&config.log.level, cli.log_format.unwrap_or(config.log.format));
    // Before the daemon is announced: a signal sent at once must drain, not kill.
    let mut sigs = match ShutdownSignals::register() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dapd: cannot catch SIGINT/SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let grace = config.grace();
    let daemon = match Daemon::start(config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("dapd: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Status lines on stdout, one per listener, for scripts and tests to read.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "dapd: listening on {}", daemon.local_addr());
    if let Some(a) = daemon.tls_addr() {
        let _ = writeln!(out, "dapd: tls listening on {a}");
    }
    if let Some(a) = daemon.dns_addr() {
        let _ = writeln!(out, "dapd: dns listening on {a}");
    }
    let _ = writeln!(out, "dapd: node key {}", public_key_to_base64(&daemon.node_public_key()));
    let _ = out.flush();
    drop(out);
    let sig = sigs.wait();
    tracing::info!(signal = signals::name(sig), "shutting down");
    let report = daemon.drain_and_stop(grace);
    println!(
        "dapd: stopped ({} stream(s) drained, {} left open)",
        report.streams - report.left_open,
        report.left_open
    );
    ExitCode::SUCCESS
}
