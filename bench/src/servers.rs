//! Server processes under test: which ones exist, how to build, spawn (pinned), await and reap
//! them.

use std::fs::{self, File};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procstat;

/// CPU the server under test runs on.
pub const SERVER_CPU: usize = 0;
/// CPU the load generator runs on.
pub const CLIENT_CPU: usize = 1;
/// How long a server gets to accept its first connection.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long building the dap example may take (it may wait for another build's lock).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// The contenders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// The framework's own echo example (`dap-reactor`, example `echo`).
    Dap,
    /// `dap-bench serve-tokio`.
    Tokio,
    /// `dap-bench serve-mio --threads 1`.
    Mio,
}

impl Kind {
    /// Name used in tables and `RESULT` keys.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dap => "dap",
            Kind::Tokio => "tokio",
            Kind::Mio => "mio",
        }
    }
}

/// Root of the dap repository (the parent of `bench/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Directory for build and server logs (`bench/target/bench-logs`).
pub fn log_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-logs");
    let _ = fs::create_dir_all(&d);
    d
}

/// A framework program the harness builds and runs: an example (a contender) or a binary
/// target (dapd, the subject of `memory`'s attacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Example {
    /// Cargo package that owns it.
    pub package: &'static str,
    /// Its name (`--example NAME` or `--bin NAME`).
    pub name: &'static str,
    /// An example (`target/release/examples/NAME`) or a binary (`target/release/NAME`).
    pub target: Target,
}

/// The kind of cargo target an [`Example`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `--example NAME`.
    Example,
    /// `--bin NAME`.
    Bin,
}

impl Target {
    /// The cargo flag that selects it.
    fn flag(self) -> &'static str {
        match self {
            Target::Example => "--example",
            Target::Bin => "--bin",
        }
    }

    /// Where cargo puts it, under `target/release`.
    fn dir(self) -> &'static str {
        match self {
            Target::Example => "target/release/examples",
            Target::Bin => "target/release",
        }
    }

    /// What to call it in messages.
    pub fn noun(self) -> &'static str {
        match self {
            Target::Example => "example",
            Target::Bin => "binary",
        }
    }
}

/// `dap-reactor`'s echo example (`echo`, `memory`).
pub const ECHO: Example = Example { package: "dap-reactor", name: "echo", target: Target::Example };
/// `dap-net`'s hello HTTP server (`http`, `https`).
pub const HELLO: Example = Example { package: "dap-net", name: "hello", target: Target::Example };
/// `dap-stream`'s stream server: enc_init, stream_ctl, `/stream/`, echo channels `E A B C`
/// and a sink `S` (`memory`'s idle sessions).
pub const STREAM_SERVER: Example =
    Example { package: "dap-stream", name: "stream_server", target: Target::Example };
/// The daemon, `dapd` of `dap-server` (`memory`'s attacks).
pub const DAPD: Example = Example { package: "dap-server", name: "dapd", target: Target::Bin };

/// Builds `<repo>/target/release/examples/NAME` (or `<repo>/target/release/NAME` for a
/// binary) with cargo and returns its path, or a printable reason why it is not available.
pub fn build_example(ex: Example) -> Result<PathBuf, String> {
    let root = repo_root();
    let log_path = log_dir().join(format!("dap-{}-build.log", ex.name));
    let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let flag = ex.target.flag();
    eprintln!(
        "building dap {} {}: cargo build --release -p {} {flag} {} (in {})",
        ex.name,
        ex.target.noun(),
        ex.package,
        ex.name,
        root.display()
    );
    let mut child = Command::new(cargo)
        .args(["build", "--release", "-p", ex.package, flag, ex.name])
        .current_dir(&root)
        // The binary must land in <repo>/target, whatever the caller's environment says.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("build timed out after {BUILD_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for cargo: {e}")),
        }
    };
    if !status.success() {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        return Err(format!(
            "build failed ({status}); last lines of {}:\n{tail}",
            log_path.display()
        ));
    }
    let bin = root.join(ex.target.dir()).join(ex.name);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("build succeeded but {} is missing", bin.display()))
    }
}

/// A running server; killed and reaped when dropped.
#[derive(Debug)]
pub struct ServerProc {
    child: Child,
    /// Name of the contender.
    pub name: &'static str,
    /// Its process id.
    pub pid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its stdout and stderr.
    pub log: PathBuf,
}

impl ServerProc {
    /// Whether the process has exited, and how (reaping it if so).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Starts the `kind` server with one worker on a fresh loopback port, pinned to
/// [`SERVER_CPU`], and waits until it accepts connections.
///
/// `dap_bin` is the dap echo example (required for [`Kind::Dap`]).
pub fn start(kind: Kind, dap_bin: Option<&Path>) -> io::Result<ServerProc> {
    let addr = loopback_addr()?;
    let cmd = match kind {
        Kind::Dap => {
            let bin = dap_bin.ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "dap echo example not built")
            })?;
            let mut c = Command::new(bin);
            c.args(["--addr", &addr.to_string(), "--threads", "1"]);
            c
        }
        Kind::Tokio => {
            let mut c = Command::new(std::env::current_exe()?);
            c.args(["serve-tokio", "--addr", &addr.to_string()]);
            c
        }
        Kind::Mio => {
            let mut c = Command::new(std::env::current_exe()?);
            c.args(["serve-mio", "--addr", &addr.to_string(), "--threads", "1"]);
            c
        }
    };
    start_command(kind.name(), cmd, addr, Placement::Pinned)
}

/// A fresh loopback address (port free a moment ago) for a server to listen on.
pub fn loopback_addr() -> io::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// Which CPUs a server process may run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Only [`SERVER_CPU`] (one-worker comparisons).
    Pinned,
    /// Both benchmark CPUs, [`SERVER_CPU`] and [`CLIENT_CPU`] (multi-worker comparisons).
    Both,
}

impl Placement {
    /// The CPUs, as a list for `sched_setaffinity`.
    pub fn cpus(self) -> &'static [usize] {
        match self {
            Placement::Pinned => &[SERVER_CPU],
            Placement::Both => &[SERVER_CPU, CLIENT_CPU],
        }
    }

    /// The CPUs as the kernel prints `Cpus_allowed_list` (and `taskset -c` takes them).
    pub fn cpu_list(self) -> String {
        let v: Vec<String> = self.cpus().iter().map(usize::to_string).collect();
        if v.len() == 2 && SERVER_CPU + 1 == CLIENT_CPU {
            format!("{SERVER_CPU}-{CLIENT_CPU}")
        } else {
            v.join(",")
        }
    }
}

/// Spawns `cmd` (a server named `name` that will listen on `addr`) on the CPUs of
/// `placement`, its output going to `bench/target/bench-logs/server-NAME.log`, and waits
/// until it accepts connections.
pub fn start_command(
    name: &'static str,
    mut cmd: Command,
    addr: SocketAddr,
    placement: Placement,
) -> io::Result<ServerProc> {
    let log_path = log_dir().join(format!("server-{name}.log"));
    let log = File::create(&log_path)?;
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let child = spawn_on(&mut cmd, placement)?;
    let pid = child.id();
    let mut server = ServerProc { child, name, pid, addr, log: log_path };
    wait_ready(&mut server)?;
    Ok(server)
}

/// Spawns `cmd` (a server named `name` that will listen on `addr`) wherever the scheduler
/// puts it, leaving the calling thread's CPUs alone, its output going to
/// `bench/target/bench-logs/server-NAME.log`, and waits until it accepts connections.
pub fn start_command_unpinned(
    name: &'static str,
    mut cmd: Command,
    addr: SocketAddr,
) -> io::Result<ServerProc> {
    let log_path = log_dir().join(format!("server-{name}.log"));
    let log = File::create(&log_path)?;
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    let child = cmd.spawn()?;
    let pid = child.id();
    let mut server = ServerProc { child, name, pid, addr, log: log_path };
    wait_ready(&mut server)?;
    Ok(server)
}

/// Spawns `cmd` so that it starts life restricted to the CPUs of `placement`: the calling
/// thread pins itself there, forks (the child inherits the mask before it runs a single
/// instruction of the server, so even a framework that reads its allowed CPUs at start-up sees
/// only those), then pins itself back to [`CLIENT_CPU`].
fn spawn_on(cmd: &mut Command, placement: Placement) -> io::Result<Child> {
    let pin = procstat::can_pin_two_cpus();
    if pin {
        procstat::pin_current_thread_cpus(placement.cpus())?;
    }
    let child = cmd.spawn();
    if pin {
        procstat::pin_current_thread(CLIENT_CPU)?;
    }
    child
}

/// Retries connecting until the server accepts, it exits, or [`READY_TIMEOUT`] passes.
fn wait_ready(s: &mut ServerProc) -> io::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(st) = s.child.try_wait()? {
            let text = fs::read_to_string(&s.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
            return Err(io::Error::other(format!(
                "{} server exited before accepting ({st}); {}: {tail}",
                s.name,
                s.log.display()
            )));
        }
        if TcpStream::connect_timeout(&s.addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} server not accepting on {} after {READY_TIMEOUT:?}", s.name, s.addr),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
