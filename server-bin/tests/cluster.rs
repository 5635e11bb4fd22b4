//! Three `dapd` processes and a real `redis-server`, all on loopback, as one service
//! (`[cluster]`): keys and sessions made on one node serve on another, pub/sub reaches
//! every subscriber on every node, Redis going away leaves each node serving its own, and
//! a node that dies leaves the member list.

mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dap_stream::pubsub::{PubSubMsg, Topic};
use dap_stream::session::TransportKind;
use util::*;

/// A `redis-server` of the test's own, on an ephemeral port, storing nothing on disk.
struct Redis {
    child: Option<Guard>,
    port: u16,
    dir: PathBuf,
    /// More arguments (TLS, a password), and the URL the nodes use then.
    args: Vec<String>,
    url: Option<String>,
}

/// A free TCP port on loopback (free a moment ago).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Redis {
    fn start(test: &str) -> Redis {
        Self::start_with(test, Vec::new(), None)
    }

    /// With more `args`, reached at `url` (the plain port stays for the test's PING).
    fn start_with(test: &str, args: Vec<String>, url: Option<String>) -> Redis {
        let port = free_port();
        let mut r = Redis { child: None, port, dir: Self::dir(test), args, url };
        r.restart();
        r
    }

    fn dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dap-redis-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Starts (again) on the same port.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .args(&self.args)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server is installed (`apt-get install -y redis-server`; .ci/run does)");
        self.child = Some(Guard(child));
        wait_until("redis-server answers PING", || self.ping());
    }

    /// Whether it answers (a PING, or a refusal for want of the password).
    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && (&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
    }

    /// Kills it (SIGKILL): everything it held is gone.
    fn kill(&mut self) {
        self.child = None;
        wait_until("redis-server to be gone", || !self.ping());
    }

    fn url(&self) -> String {
        self.url.clone().unwrap_or_else(|| format!("redis://127.0.0.1:{}/", self.port))
    }
}

/// One node: its process, address, node key and UDP address.
struct NodeProc {
    guard: Option<Guard>,
    addr: SocketAddr,
    key: [u8; 32],
    udp: Option<SocketAddr>,
}

/// A cluster key file for the test.
fn key_file(test: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("dap-cluster-{test}-{}.key", std::process::id()));
    let mut key = [0u8; 32];
    dap_net::enc::cipher::random_bytes(&mut key);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, hex).unwrap();
    path
}

/// Starts nodes `names` on `redis`, and waits until each lists them all.
fn cluster(test: &str, redis: &Redis, names: &[&str], extra: &str) -> Vec<NodeProc> {
    let key = key_file(test);
    let nodes = spawn_nodes(test, redis, names, &key, extra);
    for n in &nodes {
        wait_until("every node lists every node", || members(n.addr).len() == names.len());
    }
    nodes
}

/// The node processes of [`cluster`], not waited for.
fn spawn_nodes(
    test: &str,
    redis: &Redis,
    names: &[&str],
    key: &std::path::Path,
    extra: &str,
) -> Vec<NodeProc> {
    names.iter().enumerate().map(|(i, name)| spawn_node(test, redis, name, i, key, extra)).collect()
}

/// Node `name`, the `i`-th of its cluster, with `extra` config (TOML sections after
/// `[cluster]`).
fn spawn_node(
    test: &str,
    redis: &Redis,
    name: &str,
    i: usize,
    key: &std::path::Path,
    extra: &str,
) -> NodeProc {
    // Each advertises an address of its own (the DNS test tells them apart by it).
    let cfg = format!(
        "[cluster]\nredis = \"{}\"\nnode_name = \"{name}\"\nkey_file = \"{}\"\n\
         membership_ttl_ms = 1000\ntimeout_ms = 500\nadvertise = \"127.0.1.{}:8079\"\n{extra}",
        redis.url(),
        key.display(),
        i + 1
    );
    let d = spawn_dapd_with(test, name, &cfg, &[]);
    NodeProc { guard: Some(d.guard), addr: d.addr, key: d.key, udp: d.udp }
}

/// The names in a node's `/cluster`.
fn members(addr: SocketAddr) -> Vec<String> {
    let (status, body) = http_get(addr, "/cluster");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/cluster is JSON");
    v["members"]
        .as_array()
        .expect("a member list")
        .iter()
        .map(|m| m["name"].as_str().expect("a name").to_string())
        .collect()
}

/// The value of `sample` on a node's `/metrics` (0 when absent).
fn metric(addr: SocketAddr, sample: &str) -> f64 {
    let (_, text) = http_get(addr, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_key_from_one_node_a_session_from_another_and_the_stream_on_a_third() {
    let redis = Redis::start("three");
    let nodes = cluster("three", &redis, &["a", "b", "c"], "");
    let client = client_reactor();
    let at = [nodes[0].addr, nodes[1].addr, nodes[2].addr];
    let s = open_across(&client, at, nodes[0].key, b"E", TransportKind::Http)
        .expect("enc_init on a, stream_ctl on b, the stream on c");
    for i in 0..20u8 {
        s.channel(b'E').write_timeout(1, vec![i; 100 + i as usize], TIMEOUT).unwrap();
        assert_eq!(s.next().data.as_ref(), &vec![i; 100 + i as usize][..]);
    }
    assert_eq!(metric(nodes[0].addr, "dap_cluster_keys_total{op=\"published\"}"), 1.0);
    assert_eq!(metric(nodes[1].addr, "dap_cluster_keys_total{op=\"fetched\"}"), 1.0);
    assert_eq!(metric(nodes[1].addr, "dap_cluster_sessions_total{op=\"published\"}"), 1.0);
    assert_eq!(metric(nodes[2].addr, "dap_cluster_sessions_total{op=\"taken\"}"), 1.0);
    assert!(metric(nodes[2].addr, "dap_cluster_up") == 1.0);
}

/// A UDP session attaches on any node too: stream_ctl on b, whose `[udp] advertise` names
/// c's UDP address (as it would a UDP load balancer's in front of the nodes), then the
/// first datagram and the stream on c, which takes the session from Redis. A session made
/// on c and streamed on c is claimed there first. A datagram whose connection id the
/// cluster did not tag never reaches Redis.
#[test]
fn a_udp_session_made_on_one_node_streams_on_another() {
    let redis = Redis::start("udp");
    let key = key_file("udp");
    let a = spawn_node("udp", &redis, "a", 0, &key, "");
    let c = spawn_node("udp", &redis, "c", 2, &key, "");
    let c_udp = c.udp.expect("c serves UDP");
    let b = spawn_node("udp", &redis, "b", 1, &key, &format!("[udp]\nadvertise = \"{c_udp}\"\n"));
    for n in [&a, &b, &c] {
        wait_until("every node lists every node", || members(n.addr).len() == 3);
    }
    let client = client_reactor();
    let s = open_across(&client, [a.addr, b.addr, c.addr], a.key, b"E", TransportKind::Udp)
        .expect("enc_init on a, stream_ctl on b, the UDP stream on c");
    for i in 0..20u8 {
        let len = 100 + 20_000 * i as usize;
        s.channel(b'E').write_timeout(1, vec![i; len], TIMEOUT).unwrap();
        assert_eq!(s.next().data.as_ref(), &vec![i; len][..]);
    }
    assert_eq!(metric(b.addr, "dap_cluster_sessions_total{op=\"published\"}"), 1.0);
    assert_eq!(metric(c.addr, "dap_cluster_sessions_total{op=\"taken\"}"), 1.0);
    assert_eq!(metric(c.addr, "dap_udp_cluster_taken_total"), 1.0);
    assert_eq!(metric(b.addr, "dap_udp_connections_total{event=\"attached\"}"), 0.0);

    // Made on c, streamed on c: claimed in Redis before it attaches.
    let t = open_across(&client, [a.addr, c.addr, c.addr], a.key, b"E", TransportKind::Udp)
        .expect("a session of c's own on c");
    t.channel(b'E').write_timeout(1, b"mine".to_vec(), TIMEOUT).unwrap();
    assert_eq!(t.next().data.as_ref(), b"mine");
    assert_eq!(metric(c.addr, "dap_cluster_sessions_total{op=\"taken\"}"), 2.0);
    assert_eq!(metric(c.addr, "dap_udp_cluster_taken_total"), 1.0);

    // A datagram on an id no node made (its tag does not hold): dropped before Redis.
    let missed = "dap_udp_errors_total{kind=\"cluster_missed\"}";
    let before = metric(c.addr, missed);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut forged = vec![0u8; 64];
    dap_net::enc::cipher::random_bytes(&mut forged);
    forged[0] = 0x40; // the form bits of a packet
    forged[1] = 0; // worker 0
    // Bytes 7 and 8 (the id's last two): anything but the cluster's tag over the six before.
    let hex = std::fs::read_to_string(&key).unwrap();
    let k: Vec<u8> =
        (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    let tag = dap_net::enc::cipher::hkdf_sha256(&k, &forged[1..7], b"dap v1 cluster udp cid tag");
    forged[7] = !tag[0];
    forged[8] = !tag[1];
    sock.send_to(&forged, c_udp).unwrap();
    wait_until("the forged datagram is counted", || metric(c.addr, missed) > before);
    assert_eq!(metric(c.addr, "dap_cluster_sessions_total{op=\"missed\"}"), 0.0);
}

/// `rediss://` with a password: Redis serving the nodes on TLS only, with a certificate
/// from a CA of its own, client certificates required and `requirepass`; the nodes trust
/// that CA (`tls_ca_file`), show theirs (`tls_cert_file`, `tls_key_file`), and work as one:
/// membership, a key made on one used on the other.
#[test]
fn nodes_reach_redis_over_tls_with_a_password_and_client_certificates() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = Redis::dir("tls");
    // Each its own subject: a leaf named as its issuer would pass for self-signed.
    let named = |sans: Vec<String>, cn: &str| {
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p
    };
    let mut ca_params = named(Vec::new(), "dap test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let leaf = |name: &str, sans: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = named(sans, name).signed_by(&key, &ca).unwrap();
        (
            write(&format!("{name}.crt"), cert.pem()),
            write(&format!("{name}.key"), key.serialize_pem()),
        )
    };
    let ca_file = write("ca.crt", ca.pem());
    let (redis_crt, redis_key) = leaf("redis", vec!["127.0.0.1".into()]);
    let (node_crt, node_key) = leaf("node", vec!["node".into()]);
    let tls_port = free_port();
    let args = [
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &redis_crt,
        "--tls-key-file",
        &redis_key,
        "--tls-ca-cert-file",
        &ca_file,
        "--tls-auth-clients",
        "yes",
        "--requirepass",
        "s3cret",
    ];
    let url = format!("rediss://:s3cret@127.0.0.1:{tls_port}/");
    let redis = Redis::start_with("tls", args.iter().map(|a| a.to_string()).collect(), Some(url));
    let extra = format!(
        "tls_ca_file = \"{ca_file}\"\ntls_cert_file = \"{node_crt}\"\ntls_key_file = \"{node_key}\"\n"
    );
    let nodes = cluster("tls", &redis, &["a", "b"], &extra);
    let client = client_reactor();
    let s = open_across(
        &client,
        [nodes[0].addr, nodes[1].addr, nodes[1].addr],
        nodes[0].key,
        b"E",
        TransportKind::Http,
    )
    .expect("a key from a, the session and stream on b");
    s.channel(b'E').write_timeout(1, b"over tls".to_vec(), TIMEOUT).unwrap();
    assert_eq!(s.next().data.as_ref(), b"over tls");
    assert_eq!(metric(nodes[1].addr, "dap_cluster_keys_total{op=\"fetched\"}"), 1.0);
    assert_eq!(metric(nodes[1].addr, "dap_cluster_redis_errors_total"), 0.0);
}

/// The status of a raw stream upgrade for `params` at `addr`.
fn upgrade_status(addr: SocketAddr, params: &dap_stream::session::SessionParams) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let req = dap_stream::transport::http::upgrade_request(params, "x");
    s.write_all(req.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

/// A session attaches once in the cluster: wherever the first attach lands (another node,
/// or the node that made it), every other attempt is refused, there and everywhere.
#[test]
fn a_session_attaches_once_in_the_cluster() {
    let redis = Redis::start("once");
    let nodes = cluster("once", &redis, &["a", "b", "c"], "");
    let client = client_reactor();
    let w = client.worker(0).unwrap();
    let http = dap_net::http::client::ClientConfig::default();
    let enc = dap_net::enc::client::handshake_blocking(
        w,
        &format!("http://{}", nodes[0].addr),
        &dap_net::enc::cipher::CipherSuite::ALL,
        None,
        Some(nodes[0].key),
        &http,
    )
    .unwrap();
    let session = || {
        dap_stream::client::stream_ctl_blocking(
            w,
            &format!("http://{}", nodes[1].addr),
            &enc,
            b"E",
            None,
            dap_stream::MuxConfig::default(),
            &http,
        )
        .unwrap()
    };
    // Made on b, first attached on c: b (which still holds it) and a refuse it.
    let p = session();
    assert_eq!(upgrade_status(nodes[2].addr, &p), 101);
    assert_eq!(upgrade_status(nodes[1].addr, &p), 409);
    assert_eq!(upgrade_status(nodes[0].addr, &p), 404);
    // Made on b, first attached on b: the others find nothing.
    let q = session();
    assert_eq!(upgrade_status(nodes[1].addr, &q), 101);
    assert_eq!(upgrade_status(nodes[2].addr, &q), 404);
    assert_eq!(upgrade_status(nodes[0].addr, &q), 404);
}

/// Subscribers of the pub/sub test, by node, and publishers, one per node.
const SUBSCRIBER_NODES: [usize; 4] = [0, 1, 2, 0];
const MESSAGES: u64 = 300;

#[test]
fn pubsub_reaches_every_subscriber_on_every_node_once_in_order() {
    let redis = Redis::start("pubsub");
    let nodes = cluster("pubsub", &redis, &["a", "b", "c"], "");
    let client = client_reactor();
    let topic = Topic::new("everywhere").unwrap();
    let subs: Vec<TestClient> = SUBSCRIBER_NODES
        .iter()
        .map(|&n| {
            let s = open(&client, nodes[n].addr, nodes[n].key, b"P").unwrap();
            s.subscribe(&topic);
            s
        })
        .collect();
    let pubs: Vec<TestClient> =
        nodes.iter().map(|n| open(&client, n.addr, n.key, b"P").unwrap()).collect();
    // Every node's relay is subscribed once a message from each publisher reached every
    // subscriber: warm-up messages (seq 0), until they do.
    let mut seen: Vec<HashMap<u8, u64>> = vec![HashMap::new(); subs.len()];
    let mut warm = vec![vec![false; pubs.len()]; subs.len()];
    let deadline = Instant::now() + TIMEOUT;
    while warm.iter().flatten().any(|w| !w) {
        assert!(Instant::now() < deadline, "the relays never carried a warm-up: {warm:?}");
        for (p, publisher) in pubs.iter().enumerate() {
            let payload = payload(p as u8, 0);
            publisher.send(&PubSubMsg::Publish { seq: 0, topic: topic.clone(), payload }).unwrap();
            let _ = publisher.next(); // its ACK
        }
        for (i, s) in subs.iter().enumerate() {
            while let Ok(m) = s.messages.recv_timeout(Duration::from_millis(50)) {
                if let Ok(PubSubMsg::Message { payload, .. }) = PubSubMsg::decode(m.ty, &m.data) {
                    let (p, seq) = read_payload(&payload);
                    assert_eq!(seq, 0, "only warm-ups so far");
                    warm[i][p as usize] = true;
                }
            }
        }
    }
    for (p, publisher) in pubs.iter().enumerate() {
        for seq in 1..=MESSAGES {
            let payload = payload(p as u8, seq);
            publisher.send(&PubSubMsg::Publish { seq, topic: topic.clone(), payload }).unwrap();
        }
    }
    for publisher in &pubs {
        for seq in 1..=MESSAGES {
            let m = publisher.next();
            assert!(
                matches!(PubSubMsg::decode(m.ty, &m.data), Ok(PubSubMsg::Ack { seq: s, .. }) if s == seq),
                "ACK {seq} in order"
            );
        }
    }
    for (i, s) in subs.iter().enumerate() {
        let want = MESSAGES * pubs.len() as u64;
        let mut got = 0;
        while got < want {
            let m = s.next();
            let Ok(PubSubMsg::Message { payload, .. }) = PubSubMsg::decode(m.ty, &m.data) else {
                panic!("subscriber {i}: not a MESSAGE");
            };
            let (p, seq) = read_payload(&payload);
            if seq == 0 {
                continue; // a late warm-up
            }
            let last = seen[i].entry(p).or_insert(0);
            assert_eq!(seq, *last + 1, "subscriber {i}: publisher {p}'s messages once, in order");
            *last = seq;
            got += 1;
        }
    }
}

#[test]
fn without_redis_each_node_serves_its_own_and_cross_node_traffic_comes_back() {
    let mut redis = Redis::start("outage");
    let nodes = cluster("outage", &redis, &["a", "b"], "");
    let client = client_reactor();
    let topic = Topic::new("t").unwrap();
    let local_sub = open(&client, nodes[0].addr, nodes[0].key, b"P").unwrap();
    local_sub.subscribe(&topic);
    let local_pub = open(&client, nodes[0].addr, nodes[0].key, b"P").unwrap();
    let remote_pub = open(&client, nodes[1].addr, nodes[1].key, b"P").unwrap();
    let publish = |c: &TestClient, p: u8, seq: u64| {
        let payload = payload(p, seq);
        c.send(&PubSubMsg::Publish { seq, topic: topic.clone(), payload }).unwrap();
        let m = c.next();
        assert!(matches!(PubSubMsg::decode(m.ty, &m.data), Ok(PubSubMsg::Ack { .. })));
    };
    let next_from = |want: u8| loop {
        let m = local_sub.next();
        if let Ok(PubSubMsg::Message { payload, .. }) = PubSubMsg::decode(m.ty, &m.data) {
            let (p, seq) = read_payload(&payload);
            if p == want {
                return seq;
            }
        }
    };
    // Cross-node works.
    let mut seq = 0;
    wait_until("a message from node b reaches node a", || {
        seq += 1;
        publish(&remote_pub, 1, seq);
        local_sub.messages.recv_timeout(Duration::from_millis(200)).is_ok()
    });

    redis.kill();
    wait_until("node a says it is degraded", || {
        http_get(nodes[0].addr, "/health") == (200, "degraded: redis unreachable\n".into())
    });
    // Local traffic never stops: every acknowledged local publish reaches the local
    // subscriber, in order; new sessions and keys work on the node itself.
    while local_sub.messages.try_recv().is_ok() {}
    for s in 1..=50 {
        publish(&local_pub, 0, s);
        assert_eq!(next_from(0), s);
    }
    let fresh = open(&client, nodes[0].addr, nodes[0].key, b"E").expect("a new session on a");
    fresh.channel(b'E').write_timeout(1, vec![7; 10], TIMEOUT).unwrap();
    assert_eq!(fresh.next().data.as_ref(), &[7; 10][..]);
    let over_udp = open_over(&client, nodes[0].addr, nodes[0].key, b"E", TransportKind::Udp)
        .expect("a new UDP session on a");
    over_udp.channel(b'E').write_timeout(1, vec![8; 10], TIMEOUT).unwrap();
    assert_eq!(over_udp.next().data.as_ref(), &[8; 10][..]);
    assert!(metric(nodes[0].addr, "dap_cluster_redis_errors_total") > 0.0);
    assert_eq!(metric(nodes[0].addr, "dap_cluster_up"), 0.0);

    redis.restart();
    wait_until("node a says ok again", || {
        http_get(nodes[0].addr, "/health") == (200, "ok\n".into())
    });
    // Cross-node traffic resumes.
    wait_until("a message from node b reaches node a again", || {
        seq += 1;
        publish(&remote_pub, 1, seq);
        local_sub.messages.recv_timeout(Duration::from_millis(200)).is_ok()
    });
    wait_until("the members are back", || members(nodes[0].addr).len() == 2);
}

#[test]
fn a_node_that_dies_leaves_the_member_list_and_dns_within_its_ttl() {
    let redis = Redis::start("death");
    let key = key_file("death");
    let mut nodes = spawn_nodes("death", &redis, &["a", "b", "c"], &key, "");
    // A fourth node, in this process, hands the member list out through its DNS server.
    let mut cfg = config(1);
    cfg.cluster.redis = redis.url();
    cfg.cluster.node_name = "d".into();
    cfg.cluster.key_file = key.display().to_string();
    cfg.cluster.membership_ttl_ms = 1000;
    cfg.cluster.advertise = "127.0.1.4:8079".into();
    cfg.dns.enabled = true;
    cfg.dns.addr = "127.0.0.1:0".parse().unwrap();
    cfg.dns.cluster_name = format!("nodes.{}", cfg.dns.origin);
    let name = cfg.dns.cluster_name.clone();
    let d = daemon(cfg);
    let client = client_reactor();
    let resolver = dap_net::dns::Resolver::start(
        client.worker(0).unwrap(),
        dap_net::dns::ResolverConfig::new(vec![d.dns_addr().unwrap()]),
    )
    .unwrap();
    let in_dns = || {
        let mut found: Vec<String> = resolver
            .resolve(&name, dap_net::dns::LookupKind::A)
            .map(|l| l.addrs.iter().map(|a| a.to_string()).collect())
            .unwrap_or_default();
        found.sort();
        found
    };
    let all = ["127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.1.4"];
    wait_until("the four in d's DNS", || in_dns() == all);
    for n in &nodes {
        wait_until("every node lists every node", || members(n.addr).len() == 4);
    }

    let killed = Instant::now();
    nodes[2].guard = None;
    for n in &nodes[..2] {
        wait_until("c is gone from the others' lists", || members(n.addr) == ["a", "b", "d"]);
    }
    wait_until("c is gone from d's DNS", || in_dns() == ["127.0.1.1", "127.0.1.2", "127.0.1.4"]);
    // The TTL is 1 s and a list is read every third of it: generous bounds for 2 cores.
    assert!(killed.elapsed() < Duration::from_secs(10), "{:?}", killed.elapsed());
    // A node that stops leaves at once (it deletes its entry as it drains).
    d.shutdown(Duration::from_secs(5));
    wait_until("d is gone from a's list", || members(nodes[0].addr) == ["a", "b"]);
}
