//! The cluster under test: a `redis-server` of the run's own and three dapd nodes on it,
//! all on loopback ports that were free a moment before, all killed and reaped when the
//! [`Cluster`] is dropped (also on errors and panics).

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dap_net::enc::NodeKey;

use crate::attacks::subject::ScratchDir;
use crate::dapclient::HttpConn;
use crate::servers::{self, ServerProc};

/// Nodes in the cluster: enough for a set-up to take each step on another one.
pub const NODES: usize = 3;
/// The nodes' names, which are also their log names (`server-NAME.log`).
const NAMES: [&str; NODES] = ["cluster-a", "cluster-b", "cluster-c"];
/// Reactor workers of each node.
pub const THREADS: usize = 2;
/// `[enc] max_keys` of each node. Every set-up leaves a key its stream_ctl used, and a
/// used key is never evicted before `key_idle_ttl_s` (600 s): at dapd's default of 10,000,
/// a node refuses every handshake and every key fetch with `503 busy` after its 10,000th
/// stream_ctl in 10 minutes, which the set-ups here reach in seconds. A run's set-ups
/// leave about 30,000 used keys per node.
pub const MAX_KEYS: usize = 100_000;
/// How long the nodes get to list each other (the member list is read every third of
/// `membership_ttl_ms`, 10 s by default).
const MEMBERS_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound of each read and write of the harness's own Redis and HTTP probes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A running dapd node of the cluster.
#[derive(Debug)]
pub struct Node {
    server: ServerProc,
    /// Its name in the cluster (`node_name`).
    pub name: &'static str,
    /// Its public node key, for clients to pin.
    pub node_key: [u8; 32],
}

impl Node {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.server.pid
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.server.log
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.server.exited()
    }
}

/// Redis and the nodes. Dropping it kills every process (the nodes first, then Redis) and
/// removes the scratch directory.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, `a`, `b`, `c`.
    pub nodes: Vec<Node>,
    /// The Redis server.
    redis: ServerProc,
    /// Configuration files, node keys, the cluster key, Redis's directory.
    dir: ScratchDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Nodes before Redis, so that no node spends its last moments reconnecting.
        self.nodes.clear();
    }
}

impl Cluster {
    /// Starts `redis-server` and [`NODES`] dapd nodes (`bin`) on it, and returns once every
    /// node lists every node in `GET /cluster` with Redis up.
    pub fn start(bin: &Path) -> Result<Cluster, String> {
        let dir = ScratchDir::named("cluster").map_err(|e| format!("scratch dir: {e}"))?;
        let redis = start_redis(dir.path()).map_err(|e| format!("redis-server: {e}"))?;
        let key_file = dir.path().join("cluster.key");
        fs::write(&key_file, cluster_key_hex()).map_err(|e| format!("cluster key: {e}"))?;
        let url = format!("redis://{}/", redis.addr);
        let mut cluster = Cluster { nodes: Vec::new(), redis, dir };
        for name in NAMES {
            let node = start_node(bin, name, cluster.dir.path(), &url, &key_file)
                .map_err(|e| format!("dapd {name}: {e}"))?;
            cluster.nodes.push(node);
        }
        cluster.wait_members()?;
        Ok(cluster)
    }

    /// Every process of the cluster (the nodes, then Redis).
    pub fn pids(&self) -> Vec<u32> {
        let mut p: Vec<u32> = self.nodes.iter().map(Node::pid).collect();
        p.push(self.redis.pid);
        p
    }

    /// Waits until each node's `/cluster` says Redis is up and lists all [`NODES`].
    fn wait_members(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + MEMBERS_TIMEOUT;
        for i in 0..self.nodes.len() {
            loop {
                if let Some(st) = self.nodes[i].exited() {
                    return Err(format!(
                        "dapd {} exited ({st}); see {}",
                        self.nodes[i].name,
                        self.nodes[i].log().display()
                    ));
                }
                let seen = members(self.nodes[i].addr());
                if matches!(seen, Ok((true, n)) if n == NODES) {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "dapd {} does not list {NODES} members with Redis up after {MEMBERS_TIMEOUT:?} (last: {seen:?})",
                        self.nodes[i].name
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

/// 32 random bytes as 64 hex digits: the cluster key file's contents.
fn cluster_key_hex() -> String {
    let mut key = [0u8; 32];
    dap_net::enc::cipher::random_bytes(&mut key);
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// `redis-server` on a fresh loopback port, storing nothing on disk (its working directory
/// in `dir`), its log in `bench/target/bench-logs/server-redis.log`; returns once it
/// answers `PING`.
fn start_redis(dir: &Path) -> io::Result<ServerProc> {
    let addr = servers::loopback_addr()?;
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
        .arg("--dir")
        .arg(dir);
    let server = servers::start_command_unpinned("redis", cmd, addr)?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    while !ping(addr) {
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!("no PONG from {addr}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(server)
}

/// Whether Redis at `addr` answers `PING` with `+PONG`.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else { return false };
    let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Writes node `name`'s key and configuration into `dir` and starts it; returns once it
/// accepts connections.
fn start_node(
    bin: &Path,
    name: &'static str,
    dir: &Path,
    redis: &str,
    key_file: &Path,
) -> io::Result<Node> {
    let node = NodeKey::generate();
    let node_key_path = dir.join(format!("{name}.key"));
    node.save(&node_key_path)
        .map_err(|e| io::Error::other(format!("{}: {e}", node_key_path.display())))?;
    let addr = servers::loopback_addr()?;
    let config_path = dir.join(format!("{name}.toml"));
    fs::write(&config_path, config_text(name, addr, &node_key_path, redis, key_file))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(&config_path).env_remove("RUST_LOG");
    let server = servers::start_command_unpinned(name, cmd, addr)?;
    Ok(Node { server, name, node_key: node.public_key() })
}

/// A node's configuration: dapd's defaults but the listener, two unpinned workers, UDP
/// on the listener's address (`[udp] enabled = true`, written out), warnings only in the
/// log, the node key, room for [`MAX_KEYS`] keys, and `[cluster]`.
fn config_text(
    name: &str,
    addr: SocketAddr,
    node_key: &Path,
    redis: &str,
    key_file: &Path,
) -> String {
    // `{:?}` of an ASCII path is a valid TOML basic string.
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    format!(
        "# dap-bench cluster: node {name}. Defaults but for these keys.\n\
         [listen]\n\
         addr = \"{addr}\"\n\
         \n\
         [reactor]\n\
         threads = {THREADS}\n\
         pin = false\n\
         \n\
         [enc]\n\
         node_key = {}\n\
         max_keys = {MAX_KEYS}\n\
         \n\
         [udp]\n\
         enabled = true\n\
         \n\
         [log]\n\
         level = \"warn\"\n\
         \n\
         [cluster]\n\
         redis = \"{redis}\"\n\
         node_name = \"{name}\"\n\
         key_file = {}\n",
        q(node_key),
        q(key_file),
    )
}

/// A node's `GET /cluster`: whether it says Redis is up, and how many members it lists.
fn members(addr: SocketAddr) -> Result<(bool, usize), String> {
    let body = get(addr, "/cluster")?;
    let up = body.contains("\"redis\":\"up\"");
    // The top-level object starts with "node"; each member object with "name".
    Ok((up, body.matches("{\"name\":").count()))
}

/// `GET path` on a fresh connection; the body of a 200.
pub fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut c = HttpConn::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let r = c.exchange(req.as_bytes()).map_err(|e| format!("{path}: {e}"))?;
    if r.status != 200 {
        return Err(format!("{path}: status {}", r.status));
    }
    Ok(String::from_utf8_lossy(&r.body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_cluster() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 8079));
        let t = config_text(
            "cluster-a",
            addr,
            Path::new("/tmp/a.key"),
            "redis://127.0.0.1:6379/",
            Path::new("/tmp/c.key"),
        );
        assert!(t.contains("[cluster]\nredis = \"redis://127.0.0.1:6379/\"\n"));
        assert!(t.contains("node_name = \"cluster-a\""));
        assert!(t.contains("key_file = \"/tmp/c.key\""));
        assert!(t.contains("threads = 2\npin = false"));
        assert!(t.contains("[udp]\nenabled = true"));
        assert!(t.contains("level = \"warn\""));
        assert!(t.contains("max_keys = 100000"));
    }

    #[test]
    fn key_is_64_hex_digits() {
        let k = cluster_key_hex();
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
