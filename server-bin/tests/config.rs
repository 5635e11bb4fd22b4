//! The configuration: the embedded default, errors that name the key, and the binary's
//! behaviour with a bad file.

use std::process::Command;

use dap_server::{Config, DEFAULT_CONFIG};

const DAPD: &str = env!("CARGO_BIN_EXE_dapd");

/// A file of its own in the temporary directory.
fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dapd-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_embedded_default_is_config_dapd_toml_and_parses() {
    let file = include_str!("../../config/dapd.toml");
    assert_eq!(DEFAULT_CONFIG, file);
    let c = Config::from_toml(file).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.listen.addr.to_string(), "127.0.0.1:8079");
    assert_eq!(c.reactor.threads, 0);
}

#[test]
fn the_example_config_parses() {
    let example = include_str!("../../config/dapd.example.toml");
    Config::from_toml(example).unwrap();
}

#[test]
fn an_unknown_key_is_named() {
    let e = Config::from_toml("[pubsub]\nmax_topicz = 1\n").unwrap_err().to_string();
    assert!(e.contains("max_topicz"), "{e}");
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn a_bad_value_is_named() {
    let e = Config::from_toml("[stream]\nmax_message = 99999999\n").unwrap_err();
    assert_eq!(e.to_string(), "stream.max_message: must be between 1 and 16777216 (is 99999999)");
    let e = Config::from_toml("[reactor.limits]\nbuf_out_low_water = 999999999\n").unwrap_err();
    assert_eq!(e.key(), Some("reactor.limits.buf_out_low_water"));
    let e =
        Config::from_toml("[dns]\nrecords = [{ name = \"a\", type = \"MX\", value = \"x\" }]\n")
            .unwrap_err();
    assert_eq!(e.key(), Some("dns.records[0].type"));
}

#[test]
fn print_default_config_prints_a_config_that_parses() {
    let out = Command::new(DAPD).arg("--print-default-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, DEFAULT_CONFIG);
    Config::from_toml(&text).unwrap();
}

#[test]
fn the_binary_exits_non_zero_naming_the_bad_key() {
    let path =
        temp_file("bad.toml", "[listen]\naddr = \"127.0.0.1:0\"\n[pubsub]\nmax_topic_len = 300\n");
    let out = Command::new(DAPD).arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pubsub.max_topic_len"), "{err}");
    let path = temp_file("unknown.toml", "[listen]\nport = 1\n");
    let out = Command::new(DAPD).arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("port"));
    let out = Command::new(DAPD).arg("--config").arg("/nonexistent/dapd.toml").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// Every configuration error exits with 2 (a service manager's `RestartPreventExitStatus`),
/// files named by the configuration included; relative paths are the config file's.
#[test]
fn every_configuration_error_exits_2_and_paths_are_relative_to_the_file() {
    let dir = std::env::temp_dir().join(format!("dapd-exit2-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("a missing node key", "[enc]\nnode_key = \"missing.key\"\n", "enc.node_key"),
        ("a log level that is none", "[log]\nlevel = \"verbose\"\n", "log.level"),
        (
            "a missing certificate",
            "[tls]\nenabled = true\naddr = \"127.0.0.1:0\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
            "tls.",
        ),
    ];
    for (what, body, key) in cases {
        let path = dir.join("dapd.toml");
        std::fs::write(&path, format!("[listen]\naddr = \"127.0.0.1:0\"\n{body}")).unwrap();
        let out = Command::new(DAPD).arg("--config").arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains(key), "{what}: {err}");
    }
    // A relative key path is found next to the file, whatever the working directory.
    let key = dir.join("node.key");
    let made = Command::new(DAPD).args(["keygen", "--node"]).arg(&key).output().unwrap();
    assert!(made.status.success());
    let public = String::from_utf8(made.stdout).unwrap();
    let mut c = dap_server::Config::load(&{
        let path = dir.join("rel.toml");
        std::fs::write(&path, "[enc]\nnode_key = \"node.key\"\n").unwrap();
        path
    })
    .unwrap();
    assert_eq!(std::path::Path::new(&c.enc.node_key), key);
    c.resolve_paths(std::path::Path::new("/elsewhere"));
    assert_eq!(std::path::Path::new(&c.enc.node_key), key, "absolute paths stay");
    assert_eq!(
        dap_net::enc::keys::public_key_to_base64(
            &dap_net::enc::NodeKey::load(std::path::Path::new(&c.enc.node_key))
                .unwrap()
                .public_key()
        ),
        public.trim()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn keygen_writes_a_node_key_dapd_can_load() {
    let dir = std::env::temp_dir().join(format!("dapd-keygen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("node.key");
    let out = Command::new(DAPD).args(["keygen", "--node"]).arg(&key).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let public = String::from_utf8(out.stdout).unwrap();
    let public = dap_net::enc::keys::public_key_from_base64(public.trim()).expect("a public key");
    assert_eq!(dap_net::enc::NodeKey::load(&key).unwrap().public_key(), public);
    // Never overwritten.
    let again = Command::new(DAPD).args(["keygen", "--node"]).arg(&key).output().unwrap();
    assert!(!again.status.success());
    let mut c = Config::embedded();
    c.listen.addr = "127.0.0.1:0".parse().unwrap();
    c.reactor.threads = 1;
    c.reactor.pin = false;
    c.enc.node_key = key.display().to_string();
    let d = dap_server::Node::from_config(c).builtin_channels().start().unwrap();
    assert_eq!(d.node_public_key(), public);
    d.shutdown(std::time::Duration::from_secs(5));
}

/// The shipped systemd unit: no filter that kills dapd at start, a file limit that covers
/// its own, and a node key the dynamic user can read.
#[test]
fn the_systemd_unit_does_not_kill_dapd_and_matches_its_limits() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/dapd.service"))
            .unwrap();
    let lines: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .filter_map(|l| l.split_once('='))
        .collect();
    let values = |key: &str| -> Vec<&str> {
        lines.iter().filter(|(k, _)| *k == key).map(|(_, v)| *v).collect()
    };
    let filters = values("SystemCallFilter");
    if filters.iter().any(|f| f.starts_with('~')) {
        assert!(!values("SystemCallErrorNumber").is_empty(), "a deny filter without an errno");
    }
    for f in &filters {
        if let Some(denied) = f.strip_prefix('~') {
            for group in ["@resources", "sched_setaffinity", "setrlimit", "prlimit64"] {
                assert!(!denied.split_whitespace().any(|g| g == group), "{group} denied");
            }
        }
    }
    let nofile: u64 = values("LimitNOFILE")[0].parse().unwrap();
    let c = dap_server::Config::embedded();
    assert!(nofile >= c.reactor.limits.max_esockets as u64 * 2, "LimitNOFILE {nofile}");
    if values("DynamicUser") == ["yes"] {
        let cred = values("LoadCredential");
        assert!(cred.iter().any(|v| v.starts_with("node.key:")), "no key for the dynamic user");
        assert!(unit.contains("/run/credentials/dapd.service/node.key"));
    }
    assert!(values("ExecReload").iter().any(|v| v.contains("-HUP")));
    assert_eq!(values("RestartPreventExitStatus"), ["2"]);
    // systemd's own check, where it is installed (the binary path is this build's).
    let dir = std::env::temp_dir().join(format!("dapd-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("dapd.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/dapd", DAPD)).unwrap();
    if let Ok(out) = Command::new("systemd-analyze").arg("verify").arg(&copy).output() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !err.contains("dapd.service:"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `dapd --check-config`, as `nginx -t`: 0 for a good file, 2 naming the key for a bad one
/// (a file it names included), and nothing is bound either way.
#[test]
fn check_config_validates_and_exits() {
    let good = temp_file("check-good.toml", "[listen]\naddr = \"127.0.0.1:1\"\n");
    let out = Command::new(DAPD).arg("--check-config").arg("--config").arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration ok"));
    let bad = temp_file("check-bad.toml", "[enc]\nnode_key = \"/nonexistent/node.key\"\n");
    let out = Command::new(DAPD).arg("--check-config").arg("--config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("enc.node_key"));
    let out = Command::new(DAPD).arg("--check-config").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "the embedded default is good");
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(DAPD).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("check-config"), "{shell}");
    }
    let out = Command::new(DAPD).arg("man").output().unwrap();
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(man.contains(".TH dapd 1") && man.contains("check\\-config"), "{man}");
}
