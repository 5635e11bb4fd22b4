//! `dap-cli`: talk to a dap node from the command line.
//!
//! ```text
//! dap-cli ping                         reach streaming; print each stage's time
//! dap-cli echo hello                   through the echo channel 'E'
//! dap-cli send --channel E < file      stdin to a channel; what arrives to stdout
//! dap-cli sub news                     print what is published to a topic (channel 'P')
//! dap-cli pub news "it works"          publish, and wait for the node's acknowledgement
//! dap-cli bench --bytes 64M --conns 8  echo throughput and set-up latency
//! ```
//!
//! Errors name the stage that failed and why; the exit status is then 1 (2 for usage).

mod bench;
mod commands;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dap_client::{ClientConfig, ClientError, RetryPolicy, Transport, Uplink};
use dap_net::enc::keys::public_key_from_base64;
use dap_net::enc::{ClientCert, NodeKey};

/// Talk to a dap node: reach streaming, echo, send, publish/subscribe, benchmark.
#[derive(Debug, Parser)]
#[command(
    name = "dap-cli",
    version,
    after_help = "Exit status: 0 done; 1 another failure; 2 a bad command line or local file; \
                  3 the node could not be reached; 4 a time limit passed (--timeout, \
                  --max-time); 5 the node refused (key, certificate, session, channel); \
                  6 the node's answer broke the protocol or the stream broke."
)]
struct Cli {
    /// The node, HOST:PORT (an IPv4 or IPv6 address, or a host name); `https://HOST:PORT`
    /// for its TLS listener (the certificate checked against HOST: see --cacert,
    /// --insecure).
    #[arg(long, global = true, env = "DAP_UPLINK", default_value = "127.0.0.1:8079")]
    uplink: String,
    /// With an https:// uplink: trust certificates that chain to these (PEM: a private
    /// CA, or the node's own self-signed certificate) instead of the system's roots.
    #[arg(long, global = true, env = "DAP_CACERT", value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// With an https:// uplink: accept any certificate (encrypted, not authenticated;
    /// pin the node key with --node-key to authenticate the node itself).
    #[arg(long, global = true)]
    insecure: bool,
    /// The node's public key to pin: base64url, a file holding it, or the node's key file
    /// (PEM). Without it any node key is accepted.
    #[arg(long, global = true, env = "DAP_NODE_KEY", value_name = "FILE|KEY")]
    node_key: Option<String>,
    /// A client certificate (PEM, from `dapd keygen --client`) for nodes that require one.
    #[arg(long, global = true, env = "DAP_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Seconds to wait for each connect and for each answer.
    #[arg(long, global = true, env = "DAP_TIMEOUT", default_value_t = 10.0)]
    timeout: f64,
    /// Seconds the whole command may take; past it, exit 4.
    #[arg(long, global = true, env = "DAP_MAX_TIME", value_name = "SECONDS")]
    max_time: Option<f64>,
    /// Tries per stage before giving up.
    #[arg(long, global = true, default_value_t = 3)]
    tries: u32,
    /// How the stream is carried: `auto` (UDP, falling back to HTTP when UDP does not get
    /// through), `udp` or `http` (an upgraded HTTP connection).
    #[arg(long, global = true, env = "DAP_TRANSPORT", default_value = "auto")]
    transport: String,
    /// Log what the client does on stderr (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reach streaming and print how long each stage took.
    Ping,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `dap-cli man > dap-cli.1`.
    Man,
    /// Send TEXT through the echo channel and print what comes back.
    Echo {
        /// The text.
        text: String,
    },
    /// Send standard input to a channel (one message per line, or per chunk with --raw);
    /// write what arrives to standard output.
    Send {
        /// The channel id (one printable ASCII character).
        #[arg(long, short, default_value = "E")]
        channel: char,
        /// Send stdin in chunks of up to 64 KiB instead of lines.
        #[arg(long)]
        raw: bool,
        /// After stdin ends, wait this many seconds for more to arrive.
        #[arg(long, default_value_t = 1.0)]
        linger: f64,
    },
    /// Subscribe to TOPIC on channel 'P' and print each message as it arrives.
    Sub {
        /// The topic.
        topic: String,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Publish TEXT to TOPIC on channel 'P' and wait for the node's acknowledgement.
    Pub {
        /// The topic.
        topic: String,
        /// The message.
        text: String,
    },
    /// Echo throughput and set-up latency over K connections.
    Bench(bench::Args),
}

/// Exit statuses (listed in `--help`).
pub(crate) mod exit {
    pub(crate) const OTHER: u8 = 1;
    pub(crate) const USAGE: u8 = 2;
    pub(crate) const CONNECT: u8 = 3;
    pub(crate) const TIMEOUT: u8 = 4;
    pub(crate) const REFUSED: u8 = 5;
    pub(crate) const PROTOCOL: u8 = 6;
}

/// A failure to report: the text, and its exit status.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) text: String,
    pub(crate) code: u8,
}

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Self {
        let (stage, text) = (e.stage().name(), e.to_string());
        // Most errors already begin with their stage's name.
        let text = if text.starts_with(stage) {
            format!("failed at {text}")
        } else {
            format!("failed at {stage}: {text}")
        };
        let code = match e {
            ClientError::ConnectRefused { .. } | ClientError::Io { .. } => exit::CONNECT,
            ClientError::Timeout { .. } => exit::TIMEOUT,
            ClientError::NoKey(_)
            | ClientError::WrongKey
            | ClientError::Auth { .. }
            | ClientError::StreamCtl(_)
            | ClientError::KeyExpired(_) => exit::REFUSED,
            ClientError::StreamCtlBadResponse(_)
            | ClientError::StreamResponse(_)
            | ClientError::StreamLost(_) => exit::PROTOCOL,
            ClientError::WrongAddress(_) => exit::USAGE,
            _ => exit::OTHER,
        };
        Fail { text, code }
    }
}

pub(crate) fn fail(text: impl Into<String>) -> Fail {
    Fail { text: text.into(), code: exit::OTHER }
}

/// A time limit passed.
pub(crate) fn timed_out(text: impl Into<String>) -> Fail {
    Fail { text: text.into(), code: exit::TIMEOUT }
}

/// The node said no.
pub(crate) fn refused(text: impl Into<String>) -> Fail {
    Fail { text: text.into(), code: exit::REFUSED }
}

/// The node's answer made no sense.
pub(crate) fn protocol(text: impl Into<String>) -> Fail {
    Fail { text: text.into(), code: exit::PROTOCOL }
}

fn usage(text: impl Into<String>) -> Fail {
    Fail { text: text.into(), code: exit::USAGE }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.verbose > 0 {
        let level = if cli.verbose > 1 { "trace" } else { "debug" };
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let uplink = cli.uplink.clone();
    if let Some(max) = cli.max_time {
        if !(max.is_finite() && max > 0.0) {
            eprintln!("dap-cli: --max-time must be a positive number of seconds");
            return ExitCode::from(exit::USAGE);
        }
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs_f64(max));
            eprintln!("dap-cli: {uplink}: --max-time {max} s passed");
            std::process::exit(exit::TIMEOUT.into());
        });
    }
    let uplink = cli.uplink.clone();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) if f.code == exit::USAGE => {
            eprintln!("dap-cli: {}", f.text);
            ExitCode::from(f.code)
        }
        Err(f) => {
            eprintln!("dap-cli: {uplink}: {}", f.text);
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Fail> {
    match cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "dap-cli", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            return clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map_err(|e| fail(e.to_string()));
        }
        _ => {}
    }
    let cfg = client_config(&cli)?;
    let timeout = Duration::from_secs_f64(cli.timeout);
    match cli.command {
        Command::Ping => commands::ping(cfg, timeout),
        Command::Echo { text } => commands::echo(cfg, timeout, &text),
        Command::Send { channel, raw, linger } => {
            let ch = channel_id(channel)?;
            commands::send(cfg, timeout, ch, raw, Duration::from_secs_f64(linger.max(0.0)))
        }
        Command::Sub { topic, count } => commands::sub(cfg, timeout, &topic, count),
        Command::Pub { topic, text } => commands::publish(cfg, timeout, &topic, &text),
        Command::Bench(args) => bench::run(cfg, timeout, &args),
        Command::Completions { .. } | Command::Man => Ok(()),
    }
}

fn channel_id(c: char) -> Result<u8, Fail> {
    u8::try_from(c)
        .ok()
        .filter(|b| (0x21..=0x7e).contains(b))
        .ok_or_else(|| usage(format!("channel {c:?} is not one printable ASCII character")))
}

fn client_config(cli: &Cli) -> Result<ClientConfig, Fail> {
    if !(cli.timeout.is_finite() && cli.timeout > 0.0) {
        return Err(usage("--timeout must be a positive number of seconds"));
    }
    let (https, rest) = match cli.uplink.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, cli.uplink.strip_prefix("http://").unwrap_or(&cli.uplink)),
    };
    let uplink = Uplink::parse(rest.trim_end_matches('/')).map_err(|e| usage(e.to_string()))?;
    let timeout = Duration::from_secs_f64(cli.timeout);
    let mut cfg = ClientConfig::new(uplink)
        .timeouts(timeout, timeout)
        .retry(RetryPolicy::max_tries(cli.tries));
    if (cli.cacert.is_some() || cli.insecure) && !https {
        return Err(usage("--cacert and --insecure go with an https:// uplink"));
    }
    cfg.https = https;
    let trust = match (&cli.cacert, cli.insecure) {
        (Some(_), true) => return Err(usage("--cacert or --insecure, not both")),
        (Some(path), false) => {
            let certs = dap_net::tls::load_certs(path)
                .map_err(|e| usage(format!("--cacert {}: {e}", path.display())))?;
            Some(dap_net::tls::Trust::Roots(certs))
        }
        (None, true) => Some(dap_net::tls::Trust::AnyCertificate),
        (None, false) => None,
    };
    if let Some(trust) = trust {
        cfg.http.tls =
            Some(dap_net::tls::client_config(trust).map_err(|e| usage(format!("tls: {e}")))?);
    }
    if let Some(k) = &cli.node_key {
        cfg = cfg.node_key(node_key(k)?);
    }
    cfg = cfg.transport(match cli.transport.as_str() {
        "http" => Transport::Http,
        "udp" => Transport::Udp,
        "auto" => Transport::Auto,
        other => return Err(usage(format!("--transport {other:?}: auto, udp or http"))),
    });
    if let Some(path) = &cli.cert {
        let cert =
            ClientCert::load(path).map_err(|e| usage(format!("--cert {}: {e}", path.display())))?;
        cfg = cfg.auth_cert(Arc::new(cert));
    }
    Ok(cfg)
}

/// A node key from base64url, a file holding it, or the node's own key file.
fn node_key(arg: &str) -> Result<[u8; 32], Fail> {
    let path = Path::new(arg);
    if path.is_file() {
        if let Ok(key) = NodeKey::load(path) {
            return Ok(key.public_key());
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| usage(format!("--node-key {arg}: {e}")))?;
        return public_key_from_base64(text.trim()).ok_or_else(|| {
            usage(format!("--node-key {arg}: neither a key file nor a base64 key"))
        });
    }
    public_key_from_base64(arg.trim())
        .ok_or_else(|| usage(format!("--node-key {arg:?}: not a file, nor a base64url key")))
}
