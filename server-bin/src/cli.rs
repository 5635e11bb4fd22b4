//! The command line of a dap daemon: dapd's, and that of any daemon built on [`Node`].
//!
//! ```text
//! NAME [--config FILE] [--log-format text|json]
//! NAME --print-default-config
//! NAME --check-config [--config FILE]
//! NAME keygen --node FILE | --client FILE | --cluster FILE
//! ```
//!
//! [`run`] parses it, loads the configuration (the file, or the embedded default), starts
//! logging, hands [`Node::from_config`]'s builder to the application to add its channels,
//! starts the node, prints one status line per listener on stdout (`NAME: listening on
//! ADDR`, `NAME: udp listening on ADDR`, ...), and drains on SIGINT or SIGTERM within
//! `[shutdown] grace_ms`. A whole daemon with its own channel:
//!
//! ```no_run
//! use dap_stream::{Channel, ChannelHandler, Message};
//!
//! struct Shout;
//! impl ChannelHandler for Shout {
//!     fn packet_in(&mut self, ch: &mut Channel<'_>, msg: Message) {
//!         let _ = ch.write(msg.ty, msg.data.to_ascii_uppercase());
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     dap_server::cli::run(|node| node.channel(b'S', |_session| Shout).builtin_channels())
//! }
//! ```
//!
//! Exit status: 0 after a drain on SIGINT/SIGTERM; 2 for a bad command line or
//! configuration, including a file it names that cannot be used (the message names the
//! key); 1 when the node cannot start for another reason (a port in use, no threads).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use dap_net::enc::keys::public_key_to_base64;
use dap_net::enc::{ClientCert, NodeKey};

use crate::signals::{self, ShutdownSignals, Signal};
use crate::{Config, DEFAULT_CONFIG, LogFormat, Node, NodeBuilder, logging};

/// A dap node: enc handshake, encrypted streams over HTTP and UDP with its channels, health
/// and Prometheus metrics.
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
    /// Check the configuration (values, and the files it names) and exit: 0 when it is
    /// good, 2 with the key at fault when not. Nothing is started or bound.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a new Ed25519 key (PEM, mode 0600, never overwritten) and print its public key.
    Keygen(Keygen),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `NAME man > NAME.1`.
    Man,
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
    /// A cluster key, for `[cluster] key_file` (the same file on every node).
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
}

fn keygen(name: &str, k: Keygen) -> ExitCode {
    if let Some(path) = k.cluster {
        return match save_cluster_key(&path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{name}: {}: {e}", path.display());
                ExitCode::FAILURE
            }
        };
    }
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
            eprintln!("{name}: {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// Writes a new cluster key to `path` (created, never overwritten; mode 0600).
fn save_cluster_key(path: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(crate::cluster::new_key_file().as_bytes())?;
    file.sync_all()
}

/// SIGHUP: reads the configuration file again and applies what can change; says what it
/// did, and what it refused and why, in the log. Without a file (the embedded default)
/// there is nothing to reload.
fn reload(node: &mut Node, path: Option<&Path>) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP: no --config file (the embedded default): nothing to reload");
        return;
    };
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: configuration refused; nothing changed");
            return;
        }
    };
    match node.reload(&new) {
        Ok(report) => {
            let mut applied: Vec<&str> = report.applied.clone();
            if report.applied.contains(&"log.level")
                && let Err(e) = logging::set_level(&new.log.filter())
            {
                applied.retain(|k| *k != "log.level");
                tracing::warn!(error = %e, "SIGHUP: log.level not applied");
            }
            tracing::info!(
                applied = %applied.join(","),
                need_restart = %report.need_restart.join(","),
                "SIGHUP: configuration reloaded"
            );
        }
        Err(e) => tracing::error!(error = %e, "SIGHUP: configuration refused; nothing changed"),
    }
}

/// Runs a daemon: the command line, the configuration, logging, `configure` on
/// [`Node::from_config`]'s builder (add the channels there), the node, and the drain on
/// SIGINT/SIGTERM. Returns the exit status for `main` to return.
pub fn run(configure: impl FnOnce(NodeBuilder) -> NodeBuilder) -> ExitCode {
    let name = std::env::args_os()
        .next()
        .and_then(|a| Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "dapd".into());
    // Once per process: the usage text names the program as it was called.
    let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
    let matches = Cli::command().name(leaked).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if cli.print_default_config {
        print!("{DEFAULT_CONFIG}");
        return ExitCode::SUCCESS;
    }
    match cli.command {
        Some(Command::Keygen(k)) => return keygen(&name, k),
        Some(Command::Completions { shell }) => {
            let mut cmd = Cli::command().name(leaked);
            clap_complete::generate(shell, &mut cmd, leaked, &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Command::Man) => {
            let cmd = Cli::command().name(leaked);
            return match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{name}: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    let config = match &cli.config {
        Some(path) => Config::load(path),
        None => Config::from_toml(DEFAULT_CONFIG),
    };
    // Errors before the logger is up: text, or JSON objects when JSON was asked for.
    let json_flag = cli.log_format == Some(LogFormat::Json);
    let error = |json: bool, what: &str| {
        if json {
            eprintln!(
                "{{\"program\":{},\"level\":\"ERROR\",\"error\":{}}}",
                quote(&name),
                quote(what)
            );
        } else {
            eprintln!("{name}: {what}");
        }
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            error(json_flag, &format!("configuration error: {e}"));
            return ExitCode::from(2);
        }
    };
    let json = format_is_json(cli.log_format, config.log.format);
    if cli.check_config {
        return match configure(Node::from_config(config)).check() {
            Ok(()) => {
                println!("{name}: configuration ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                error(json, &e.to_string());
                ExitCode::from(if e.is_config() { 2 } else { 1 })
            }
        };
    }
    let format = cli.log_format.unwrap_or(config.log.format);
    logging::init(&config.log.filter(), format);
    // Before the node is announced: a signal sent at once must drain, not kill.
    let mut sigs = match ShutdownSignals::register() {
        Ok(s) => s,
        Err(e) => {
            error(json, &format!("cannot catch SIGINT/SIGTERM: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let grace = config.grace();
    let node = match configure(Node::from_config(config)).start() {
        Ok(n) => n,
        Err(e) => {
            error(json, &e.to_string());
            return ExitCode::from(if e.is_config() { 2 } else { 1 });
        }
    };
    // Status lines on stdout, one per listener, for scripts and tests to read: text
    // (`NAME: listening on ADDR`) or, with JSON logs, one JSON object each.
    let mut out = std::io::stdout().lock();
    let mut line = |what: &str, value: String| {
        let _ = if json {
            writeln!(
                out,
                "{{\"program\":{},\"event\":{},\"value\":{}}}",
                quote(&name),
                quote(what),
                quote(&value)
            )
        } else {
            writeln!(out, "{name}: {what} {value}")
        };
    };
    line("listening on", node.local_addr().to_string());
    if let Some(a) = node.udp_addr() {
        line("udp listening on", a.to_string());
    }
    if let Some(a) = node.tls_addr() {
        line("tls listening on", a.to_string());
    }
    if let Some(a) = node.admin_addr() {
        line("admin listening on", a.to_string());
    }
    if let Some(a) = node.dns_addr() {
        line("dns listening on", a.to_string());
    }
    line("node key", public_key_to_base64(&node.node_public_key()));
    let _ = out.flush();
    drop(out);
    signals::notify("READY=1");
    let mut node = node;
    let sig = loop {
        match sigs.next_signal() {
            Signal::Shutdown(sig) => break sig,
            Signal::Reload => {
                signals::notify("RELOADING=1");
                reload(&mut node, cli.config.as_deref());
                signals::notify("READY=1");
            }
        }
    };
    signals::notify("STOPPING=1");
    tracing::info!(
        signal = signals::name(sig),
        grace_ms = grace.as_millis() as u64,
        "shutting down"
    );
    // A second SIGINT or SIGTERM during the drain stops at once (as nginx's fast stop).
    std::thread::spawn(move || {
        let sig = sigs.wait();
        tracing::warn!(
            signal = signals::name(sig),
            "second signal: exiting without finishing the drain"
        );
        std::process::exit(130);
    });
    let report = node.shutdown(grace);
    let drained = report.streams - report.left_open;
    let (left, unsent) = (report.left_open, report.messages_unsent);
    if json {
        println!(
            "{{\"program\":{},\"event\":\"stopped\",\"drained\":{drained},\"left_open\":{left},\"messages_unsent\":{unsent}}}",
            quote(&name),
        );
    } else {
        println!(
            "{name}: stopped ({drained} stream(s) drained, {left} cut off, {unsent} message(s) not sent)"
        );
    }
    ExitCode::SUCCESS
}

/// Whether lines are JSON: the flag, else the file's `[log] format`.
fn format_is_json(flag: Option<LogFormat>, file: LogFormat) -> bool {
    flag.unwrap_or(file) == LogFormat::Json
}

/// `s` as a JSON string.
pub(crate) fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if (c as u32) < 0x20 => q.push_str(&format!("\\u{:04x}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}
