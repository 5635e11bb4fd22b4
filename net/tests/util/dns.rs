//! Helpers for the DNS tests: small reactors, a test zone, raw queries, and scripted fake
//! servers on std sockets.
//!
//! Every wait is bounded by [`TIMEOUT`]; nothing sleeps to synchronise. The only sleeps are
//! inside [`wait_until`], which re-checks a condition until a deadline.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dap_net::dns::{
    DnsServer, Lookup, LookupKind, ResolveError, Resolver, ResolverConfig, ServerConfig, Zone,
};
use dap_reactor::Reactor;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The bound on every wait. Generous: the machines are shared and have 2 cores.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A small unpinned reactor.
#[track_caller]
pub fn reactor(threads: usize) -> Reactor {
    Reactor::builder().threads(threads).pin(false).name("dns-test").start().expect("reactor starts")
}

/// Stops a reactor, bounded by its grace period.
pub fn shutdown(reactor: Reactor) {
    reactor.shutdown(Duration::from_secs(2));
}

/// `example.test` with addresses, text and an alias.
pub fn test_zone() -> Zone {
    let mut z = Zone::new("example.test").unwrap();
    z.add_a("www.example.test", Ipv4Addr::new(192, 0, 2, 1), 300).unwrap();
    z.add_a("www.example.test", Ipv4Addr::new(192, 0, 2, 2), 60).unwrap();
    z.add_aaaa("www.example.test", "2001:db8::1".parse().unwrap(), 300).unwrap();
    z.add_a("v4only.example.test", Ipv4Addr::new(192, 0, 2, 4), 30).unwrap();
    z.add_txt("txt.example.test", "hello dns", 120).unwrap();
    z.add_cname("alias.example.test", "www.example.test", 45).unwrap();
    z
}

/// The test zone served on `ip` port 0, from one worker of `reactor`.
#[track_caller]
pub fn serve(reactor: &Reactor, ip: &str) -> DnsServer {
    let addr = SocketAddr::new(ip.parse().unwrap(), 0);
    DnsServer::start(reactor, addr, test_zone().into(), ServerConfig::default()).expect("server")
}

/// A resolver on worker 0 asking `servers`, with a short per-try timeout.
#[track_caller]
pub fn resolver(
    reactor: &Reactor,
    servers: Vec<SocketAddr>,
    timeout: Duration,
    attempts: u32,
) -> Resolver {
    let config = ResolverConfig::new(servers).timeout(timeout).attempts(attempts);
    Resolver::start(&reactor.workers()[0], config).expect("resolver")
}

/// Starts a lookup whose result arrives on the returned channel.
#[track_caller]
pub fn lookup(
    resolver: &Resolver,
    name: &str,
    kind: LookupKind,
) -> mpsc::Receiver<Result<Lookup, ResolveError>> {
    let (tx, rx) = mpsc::sync_channel(1);
    resolver
        .lookup(name, kind, move |r| {
            let _ = tx.send(r);
        })
        .expect("lookup queued");
    rx
}

/// Waits (bounded) for a lookup's result.
#[track_caller]
pub fn result(rx: &mpsc::Receiver<Result<Lookup, ResolveError>>) -> Result<Lookup, ResolveError> {
    rx.recv_timeout(TIMEOUT).expect("the lookup finishes in time")
}

/// Polls `cond` until it holds, failing the test after [`TIMEOUT`].
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// True when this host has an IPv6 loopback.
pub fn has_ipv6() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}

/// The addresses `v4` as IP addresses.
pub fn ips(v4: &[[u8; 4]]) -> Vec<IpAddr> {
    v4.iter().map(|o| IpAddr::from(*o)).collect()
}

/// The IPv6 address in the test zone.
pub fn www_v6() -> IpAddr {
    IpAddr::from("2001:db8::1".parse::<Ipv6Addr>().unwrap())
}

/// A query for `name`/`qtype`, EDNS if a payload size is given.
pub fn query_bytes(id: u16, name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// A std UDP socket with bounded reads: a client for raw queries, or a fake server.
#[derive(Debug)]
pub struct Peer {
    pub sock: UdpSocket,
    pub addr: SocketAddr,
}

impl Peer {
    #[track_caller]
    pub fn bind(ip: &str) -> Peer {
        let sock = UdpSocket::bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        let addr = sock.local_addr().unwrap();
        Peer { sock, addr }
    }

    /// Receives one datagram (bounded).
    #[track_caller]
    pub fn recv(&self) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 65_536];
        let (n, from) = self.sock.recv_from(&mut buf).expect("a datagram in time");
        buf.truncate(n);
        (buf, from)
    }

    /// Receives one datagram and decodes it.
    #[track_caller]
    pub fn recv_msg(&self) -> (Message, SocketAddr) {
        let (bytes, from) = self.recv();
        (Message::from_vec(&bytes).expect("a DNS message"), from)
    }

    /// Sends `bytes` to `server` and returns the reply.
    #[track_caller]
    pub fn ask(&self, server: SocketAddr, bytes: &[u8]) -> (Message, usize) {
        self.sock.send_to(bytes, server).unwrap();
        let (reply, from) = self.recv();
        assert_eq!(from, server);
        (Message::from_vec(&reply).expect("a DNS reply"), reply.len())
    }

    /// Answers `query` (sent from `to`) with A records for its question.
    #[track_caller]
    pub fn answer_a(&self, query: &Message, to: SocketAddr, addrs: &[[u8; 4]]) {
        self.sock.send_to(&answer_a(query, addrs), to).unwrap();
    }
}

/// An answer to `query` with A records for its question's name.
pub fn answer_a(query: &Message, addrs: &[[u8; 4]]) -> Vec<u8> {
    let mut r = Message::response(query.metadata.id, OpCode::Query);
    r.metadata.recursion_desired = query.metadata.recursion_desired;
    r.add_queries(query.queries.clone());
    let name = query.queries[0].name.clone();
    for a in addrs {
        r.add_answer(Record::from_rdata(name.clone(), 60, RData::A(A(Ipv4Addr::from(*a)))));
    }
    r.to_vec().unwrap()
}
