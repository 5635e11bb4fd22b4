//! The real `dapd` binary as an operator meets it: a port held by another process is
//! refused, signals do what they say.

mod util;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use util::{Guard, TIMEOUT};

const DAPD: &str = env!("CARGO_BIN_EXE_dapd");

fn config(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dapd-ops-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dapd.toml");
    let log = if body.contains("[log]") { "" } else { "[log]\nlevel = \"warn\"\n" };
    let text = format!("[reactor]\nthreads = 2\npin = false\n{log}{body}");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts dapd and waits for its "listening on" line.
fn start(path: &PathBuf) -> (Guard, SocketAddr, crossbeam_channel::Receiver<String>) {
    start_env(path, &[])
}

/// [`start`] with environment variables.
fn start_env(
    path: &PathBuf,
    env: &[(&str, &std::ffi::OsStr)],
) -> (Guard, SocketAddr, crossbeam_channel::Receiver<String>) {
    let mut cmd = Command::new(DAPD);
    cmd.envs(env.iter().copied()).arg("--config").arg(path);
    let (child, rx) = spawn_lines(cmd);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let line = rx.recv_deadline(deadline).expect("dapd announces itself in time");
        if let Some(a) = line.strip_prefix("dapd: listening on ") {
            return (child, a.parse().unwrap(), rx);
        }
    }
}

/// Spawns `cmd` with its stdout and stderr read line by line into one channel (which
/// ends when both do).
fn spawn_lines(mut cmd: Command) -> (Guard, crossbeam_channel::Receiver<String>) {
    let mut child =
        Guard(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn dapd"));
    let (tx, rx) = crossbeam_channel::unbounded();
    for out in [
        Box::new(child.0.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.0.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    (child, rx)
}

/// Waits (bounded) for dapd to exit.
fn exit_status(dapd: &mut Guard) -> std::process::ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(s) = dapd.0.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "dapd did not exit in time");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs dapd to its exit (bounded).
fn run(path: &PathBuf) -> Output {
    let mut child = Command::new(DAPD)
        .arg("--config")
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dapd did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A port no one holds now (bound and released).
fn free_port() -> u16 {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind(tcp.local_addr().unwrap());
    match udp {
        Ok(_) => tcp.local_addr().unwrap().port(),
        Err(_) => free_port(),
    }
}

#[test]
fn a_second_dapd_on_a_busy_port_exits_non_zero_naming_the_address() {
    let first = config("busy-1", "[listen]\naddr = \"127.0.0.1:0\"\n");
    let (_first, addr, _) = start(&first);
    let second = config("busy-2", &format!("[listen]\naddr = \"{addr}\"\n"));
    let out = run(&second);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&addr.to_string()) && err.contains("in use"), "{err}");
}

#[test]
fn sharing_a_port_is_an_explicit_choice_of_both() {
    let share = "share_port = true\n";
    let first = config("share-1", &format!("[listen]\naddr = \"127.0.0.1:0\"\n{share}"));
    let (_first, addr, _) = start(&first);
    let second = config("share-2", &format!("[listen]\naddr = \"{addr}\"\n{share}"));
    let (_second, addr2, _) = start(&second);
    assert_eq!(addr, addr2);
}

#[test]
fn a_busy_udp_port_is_refused_too() {
    // The first dapd holds UDP port P (its TCP listener elsewhere); the second asks for TCP
    // P (free) and UDP on the same port, which is not.
    let port = free_port();
    let first = config(
        "udp-1",
        &format!("[listen]\naddr = \"127.0.0.1:0\"\n[udp]\naddr = \"127.0.0.1:{port}\"\n"),
    );
    let (_first, _, _) = start(&first);
    let second = config("udp-2", &format!("[listen]\naddr = \"127.0.0.1:{port}\"\n"));
    let out = run(&second);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("udp.addr") && err.contains("in use"), "{err}");
}

fn signal(child: &Guard, sig: &str) {
    let pid = child.0.id().to_string();
    assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
}

/// Waits for a log line containing `what`; returns it.
fn line_with(rx: &crossbeam_channel::Receiver<String>, what: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let line = rx.recv_deadline(deadline).unwrap_or_else(|_| panic!("no line with {what:?}"));
        if line.contains(what) {
            return line;
        }
    }
}

/// Whether `/health` answers (the access list admits us).
fn health_answers(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = write!(s, "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    raw.starts_with(b"HTTP/1.1 200")
}

#[test]
fn sighup_reloads_what_can_change_and_the_process_lives() {
    let base = "[listen]\naddr = \"127.0.0.1:0\"\n";
    let path = config("hup", base);
    let (mut dapd, addr, lines) = start(&path);
    assert!(health_answers(addr));
    // The new file: deny ourselves, log more, and a change that needs a restart.
    let body = "[listen]\naddr = \"127.0.0.1:0\"\ndeny = [\"127.0.0.0/8\"]\n\
                [stream]\nmax_sessions = 77\n";
    let text = format!("[reactor]\nthreads = 2\npin = false\n[log]\nlevel = \"info\"\n{body}");
    std::fs::write(&path, text).unwrap();
    signal(&dapd, "-HUP");
    let line = line_with(&lines, "SIGHUP: configuration reloaded");
    assert!(line.contains("listen.allow/deny") && line.contains("log.level"), "{line}");
    assert!(line.contains("stream"), "needs a restart: {line}");
    assert!(!health_answers(addr), "the deny list is in force");
    assert!(dapd.0.try_wait().unwrap().is_none(), "SIGHUP did not stop dapd");
    // A bad file is refused as a whole, and dapd keeps running.
    std::fs::write(&path, "[listen]\nbacklog = 0\n").unwrap();
    signal(&dapd, "-HUP");
    let line = line_with(&lines, "SIGHUP: configuration refused");
    assert!(line.contains("listen.backlog"), "{line}");
    signal(&dapd, "-TERM");
    let status = exit_status(&mut dapd);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_second_sigint_during_the_drain_exits_at_once() {
    let path = config(
        "twice",
        "[listen]\naddr = \"127.0.0.1:0\"\n[shutdown]\ngrace_ms = 60000\n[log]\nlevel = \"info\"\n",
    );
    let (mut dapd, addr, lines) = start(&path);
    // A stream whose client stops answering: the drain waits for it (the CLOSE's linger).
    let node_key = line_with(&lines, "dapd: node key ");
    let key = dap_net::enc::keys::public_key_from_base64(
        node_key.trim_start_matches("dapd: node key ").trim(),
    )
    .unwrap();
    let client = util::client_reactor();
    let _stream = util::open(&client, addr, key, b"E").unwrap();
    let (release, held) = crossbeam_channel::bounded::<()>(1);
    client
        .worker(0)
        .unwrap()
        .exec(move |_| {
            let _ = held.recv_timeout(TIMEOUT);
        })
        .unwrap();
    signal(&dapd, "-INT");
    line_with(&lines, "shutting down");
    signal(&dapd, "-INT");
    let status = exit_status(&mut dapd);
    let _ = release.send(());
    assert_eq!(status.code(), Some(130), "forced, not a finished drain");
    line_with(&lines, "second signal");
}

#[test]
fn under_systemd_dapd_says_ready_and_stopping() {
    let dir = std::env::temp_dir().join(format!("dapd-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let path = config("notify", "[listen]\naddr = \"127.0.0.1:0\"\n");
    let (mut dapd, _, _lines) = start_env(&path, &[("NOTIFY_SOCKET", sock_path.as_os_str())]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 in time");
    assert_eq!(&buf[..n], b"READY=1");
    signal(&dapd, "-TERM");
    let n = sock.recv(&mut buf).expect("STOPPING=1 in time");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = exit_status(&mut dapd);
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn json_mode_prints_every_line_as_json_with_an_access_log() {
    let path = config("json", "[listen]\naddr = \"127.0.0.1:0\"\n[log]\nlevel = \"info\"\n");
    let mut cmd = Command::new(DAPD);
    cmd.args(["--log-format", "json", "--config"]).arg(&path);
    let (child, rx) = spawn_lines(cmd);
    let mut lines = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    let (addr, key) = loop {
        let line = rx.recv_deadline(deadline).expect("the status lines in time");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        lines.push(line);
        if v["event"] == "node key" {
            let addr = lines
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["event"] == "listening on")
                .map(|v| v["value"].as_str().unwrap().parse::<SocketAddr>().unwrap())
                .expect("the listening line");
            let key = v["value"].as_str().unwrap().to_string();
            break (addr, key);
        }
    };
    assert!(health_answers(addr));
    let key = dap_net::enc::keys::public_key_from_base64(&key).unwrap();
    let client = util::client_reactor();
    let s = util::open(&client, addr, key, b"E").unwrap();
    s.channel(b'E').write(1, &b"hi"[..]).unwrap();
    assert_eq!(s.next().data, &b"hi"[..]);
    signal(&child, "-TERM");
    let _ = s.closed();
    while let Ok(line) = rx.recv_deadline(Instant::now() + TIMEOUT) {
        lines.push(line);
    }
    let values: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        assert!(!l.contains("Some(") && !l.contains(": None"), "a Debug-formatted field: {l}");
    }
    let access = |msg: &'static str| {
        values.iter().filter(move |v| v["target"] == "dap::access" && v["fields"]["message"] == msg)
    };
    let health = access("request")
        .find(|v| v["fields"]["path"] == "/health")
        .expect("an access line for /health");
    assert_eq!(health["fields"]["status"], 200);
    assert_eq!(health["fields"]["method"], "GET");
    let session = access("session ended").next().expect("an access line for the session");
    assert_eq!(session["fields"]["transport"], "http");
    assert_eq!(session["fields"]["channels"], "E");
    assert!(session["fields"]["bytes_in"].as_u64().unwrap() >= 2);
    assert!(values.iter().any(|v| v["event"] == "stopped"), "the stopped line");
}

#[test]
fn json_mode_reports_a_bad_configuration_as_json_too() {
    let out = Command::new(DAPD)
        .args(["--log-format", "json", "--config", "/nonexistent/dapd.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value =
        serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert!(v["error"].as_str().unwrap().contains("/nonexistent/dapd.toml"), "{v}");
}
