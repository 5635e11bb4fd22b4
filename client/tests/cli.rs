//! dap-cli against a real node: what it prints, and its exit status.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dap_net::enc::EncConfig;
use dap_net::enc::keys::public_key_to_base64;
use util::{Node, TIMEOUT, free_port};

fn cli(node: Option<&Node>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dap-cli"));
    c.stdin(Stdio::null()).args(["--timeout", "10"]);
    if let Some(n) = node {
        // `=`: a key whose base64 starts with '-' must not read as a flag.
        let key = format!("--node-key={}", public_key_to_base64(&n.key));
        c.args(["--uplink", &n.addr.to_string(), &key]);
    }
    c
}

#[track_caller]
fn run(mut c: Command) -> (i32, String, String) {
    let out = c.output().expect("dap-cli runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn ping_prints_every_stage_and_echo_comes_back() {
    let node = Node::start(EncConfig::default());
    let mut c = cli(Some(&node));
    c.arg("ping");
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    for stage in [
        "enc_init",
        "stream_ctl",
        "stream_session",
        "stream_connected",
        "stream_streaming",
        "total",
    ] {
        assert!(out.lines().any(|l| l.starts_with(stage) && l.ends_with(" ms")), "{stage}: {out}");
    }
    let mut c = cli(Some(&node));
    c.args(["echo", "hello dap"]);
    assert_eq!(run(c), (0, "hello dap\n".into(), String::new()));
}

#[test]
fn send_carries_stdin_and_prints_what_arrives() {
    let node = Node::start(EncConfig::default());
    let mut c = cli(Some(&node));
    c.args(["send", "--channel", "F", "--linger", "0.5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"one\ntwo\nthree\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\nthree\n");
}

#[test]
fn pub_reaches_a_subscriber() {
    let node = Node::start(EncConfig::default());
    let mut s = cli(Some(&node));
    s.args(["sub", "news", "--count", "1"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut sub = s.spawn().unwrap();
    // The subscriber says so on stderr once the node confirmed it.
    let mut err = BufReader::new(sub.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("subscribed to news"), "{line}");
    let mut p = cli(Some(&node));
    p.args(["pub", "news", "it works"]);
    let (code, out, err) = run(p);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "delivered to 1 subscriber(s)\n");
    let deadline = Instant::now() + TIMEOUT;
    let out = loop {
        if let Some(_status) = sub.try_wait().unwrap() {
            break sub.wait_with_output().unwrap();
        }
        assert!(Instant::now() < deadline, "the subscriber did not finish");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "it works\n");
}

#[test]
fn failures_name_the_stage_and_exit_non_zero() {
    let mut c = cli(None);
    let dead = free_port().to_string();
    c.args(["--uplink", &dead, "--tries", "1", "ping"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 3, "could not reach the node: {err}");
    assert!(err.contains("failed at enc_init") && err.contains("connection refused"), "{err}");
    assert!(err.contains(&dead), "the error names host:port: {err}");

    let node = Node::start(EncConfig::default());
    let mut c = cli(None);
    let other = public_key_to_base64(&dap_net::enc::NodeKey::generate().public_key());
    let other = format!("--node-key={other}");
    c.args(["--uplink", &node.addr.to_string(), &other, "echo", "x"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 5, "refused: {err}");
    assert!(err.contains("failed at enc_init") && err.contains("wrong node key"), "{err}");

    // The uplink from the environment, and an overall time limit.
    let mut c = cli(None);
    c.env("DAP_UPLINK", node.addr.to_string()).args(["--max-time", "0.001", "sub", "t"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 4, "--max-time: {err}");
    assert!(err.contains(&node.addr.to_string()) && err.contains("max-time"), "{err}");

    let mut c = cli(None);
    c.args(["--uplink", "no-port", "ping"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no port"), "{err}");
}

#[test]
fn ping_and_echo_work_over_udp() {
    let node = Node::start(EncConfig::default());
    let mut c = cli(Some(&node));
    c.args(["--transport", "udp", "echo", "over udp"]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("over udp"), "{out}");
    let attached =
        node.stream.udp_counters().unwrap().attached.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(attached, 1, "the session went over UDP");
    // The default, auto, settles on UDP where the node serves it, and ping says so.
    let mut c = cli(Some(&node));
    c.arg("ping");
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.starts_with("transport")).unwrap_or_default();
    assert!(line.ends_with("udp"), "{out}");
    let mut c = cli(Some(&node));
    c.args(["--transport", "http", "ping"]);
    let (_, out, _) = run(c);
    assert!(out.lines().any(|l| l.starts_with("transport") && l.ends_with("http")), "{out}");
    let mut c = cli(Some(&node));
    c.args(["--transport", "carrier-pigeon", "ping"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--transport"), "{err}");
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definition() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dap-cli"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--transport"));
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_dap-cli")).arg("man").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH dap-cli 1"));
}

#[test]
fn bench_interrupted_prints_the_result_so_far() {
    let node = Node::start(EncConfig::default());
    let mut c = cli(Some(&node));
    c.args(["--transport", "http", "bench", "--conns", "1", "--bytes", "64G"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    util::wait_until("the transfer is under way", || node.stream.stats().bytes_in > (1 << 20));
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "bench did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let result = stdout.lines().find(|l| l.starts_with("RESULT")).expect("a RESULT line");
    assert!(result.ends_with("partial=1"), "{result}");
    let bytes: u64 = result
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("bytes="))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(bytes > 0 && bytes < 64 << 30, "{bytes}");
}

#[test]
fn an_https_uplink_reaches_the_tls_listener() {
    let mut node = Node::start(EncConfig::default());
    let dir = std::env::temp_dir().join(format!("dap-cli-https-{}", std::process::id()));
    let (tls, cert) = node.serve_tls(&dir);
    let key = format!("--node-key={}", public_key_to_base64(&node.key));
    let uplink = format!("https://127.0.0.1:{}", tls.port());
    let echo = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dap-cli"));
        c.stdin(Stdio::null()).args(["--timeout", "10", "--tries", "1", "--transport", "http"]);
        c.args(["--uplink", &uplink, &key]).args(extra).args(["echo", "over tls"]);
        run(c)
    };
    // The node's self-signed certificate given as the root to trust.
    let (code, out, err) = echo(&["--cacert", cert.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("over tls"), "{out}");
    // Any certificate, on request.
    let (code, out, err) = echo(&["--insecure"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("over tls"), "{out}");
    // The system's roots do not know it: refused, with the address named.
    let (code, _, err) = echo(&[]);
    assert_ne!(code, 0);
    assert!(err.contains(&format!("127.0.0.1:{}", tls.port())), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
