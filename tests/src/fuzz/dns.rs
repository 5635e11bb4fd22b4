//! `dns`: the DNS wire decoder on both sides, and resolv.conf. The first byte picks:
//!
//! - 0: a datagram to the authoritative server (a zone of A, AAAA, TXT and CNAME records):
//!   nothing is sent back to a response or to less than a header; a reply keeps the
//!   query's id, is a response, and fits the size the query may receive.
//! - 1: answers to a resolver that looks up `www.example.test` (A and AAAA) from one of
//!   two servers: records `[pick u8][len u8][bytes]`, where `pick` splices the id of a
//!   query on the wire into the bytes, picks the source (the server asked, or not), and may
//!   run the resolver's timers. Every datagram is counted once (accepted, unmatched, wrong
//!   source, wrong question or malformed); a lookup ends once, with addresses on success.
//!   If none of them was accepted, the zone's own answers to the queries on the wire then
//!   finish the lookup with the zone's addresses.
//! - 2: resolv.conf text: what it yields keeps glibc's bounds, gives a working resolver
//!   configuration, and reads back the same from the text it would be written as.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Instant;

use dap_net::dns::sans_io::{ResolverCore, respond};
use dap_net::dns::{LookupKind, ResolvConf, ResolveError, ResolverConfig, Zone};

const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53)), 53);
const OTHER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 54)), 53);
const V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);

/// The target.
pub fn run(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 3 {
        0 => server(which, body),
        1 => resolver(which, body),
        _ => resolv_conf(body),
    }
}

/// The zone, built once.
fn zone() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(build_zone)
}

fn build_zone() -> Zone {
    let mut z = Zone::new("example.test").expect("a valid origin");
    z.add_a("www.example.test", V4, 300).expect("fits");
    z.add_aaaa("www.example.test", V6, 600).expect("fits");
    z.add_txt("txt.example.test", "v=spf1 -all", 60).expect("fits");
    z.add_txt("long.example.test", vec![b'x'; 2000], 60).expect("fits");
    z.add_cname("alias.example.test", "www.example.test", 30).expect("fits");
    z.add_cname("out.example.test", "elsewhere.test", 30).expect("fits");
    for i in 0..40u8 {
        z.add_a("many.example.test", Ipv4Addr::new(198, 51, 100, i), 300).expect("fits");
    }
    z
}

fn server(which: u8, data: &[u8]) {
    let max_payload = if which & 4 == 0 { 1232 } else { 4096 };
    let reply = respond(zone(), max_payload, data);
    let Some(reply) = reply else {
        assert!(data.len() < 12 || data[2] & 0x80 != 0, "a query went unanswered");
        return;
    };
    assert!(data.len() >= 12 && data[2] & 0x80 == 0, "answered a response");
    assert!(reply.len() >= 12);
    assert_eq!(reply[..2], data[..2], "the reply keeps the query's id");
    assert!(reply[2] & 0x80 != 0, "the reply is a response");
    assert!(reply.len() <= usize::from(max_payload), "{} bytes", reply.len());
}

fn resolver(which: u8, mut data: &[u8]) {
    let mut cfg = ResolverConfig::new(vec![SERVER, OTHER]);
    cfg.edns_payload = if which & 4 == 0 { Some(1232) } else { None };
    cfg.rotate = which & 8 != 0;
    cfg.validate().expect("a valid configuration");
    let mut core = ResolverCore::new(&cfg);
    let mut now = Instant::now();
    let lookup = core.start(now, "www.example.test", LookupKind::Both).expect("starts");
    // The queries on the wire, by id, with where each went.
    let mut wire: Vec<(u16, SocketAddr, Vec<u8>)> = Vec::new();
    fn take(core: &mut ResolverCore, wire: &mut Vec<(u16, SocketAddr, Vec<u8>)>) {
        while let Some((to, q)) = core.poll_transmit() {
            assert!(to == SERVER || to == OTHER);
            let id = u16::from_be_bytes([q[0], q[1]]);
            wire.retain(|(i, _, _)| *i != id);
            wire.push((id, to, q));
        }
    }
    take(&mut core, &mut wire);
    assert_eq!(wire.len(), 2);
    let mut fed = 0;
    let mut done = None;
    while data.len() >= 2 {
        let (pick, len) = (data[0], usize::from(data[1]));
        let mut d = data[2..(2 + len).min(data.len())].to_vec();
        data = &data[2 + d.len()..];
        if pick & 1 != 0
            && d.len() >= 2
            && let Some((id, _, _)) = wire.get(usize::from(pick >> 1 & 1))
        {
            d[..2].copy_from_slice(&id.to_be_bytes());
        }
        let from = match (pick >> 2 & 3, wire.first()) {
            (0, Some((_, to, _))) => *to,
            (1, _) => SERVER,
            (2, _) => OTHER,
            _ => SocketAddr::from(([203, 0, 113, 1], 53)),
        };
        core.handle_datagram(now, from, &d);
        fed += 1;
        if pick & 0x80 != 0
            && let Some(t) = core.poll_timeout()
        {
            now = now.max(t);
            core.handle_timeout(now);
        }
        take(&mut core, &mut wire);
        while let Some((id, result)) = core.poll_event() {
            assert_eq!(id, lookup);
            assert!(done.is_none(), "a lookup ended twice");
            if let Ok(found) = &result {
                assert!(!found.addrs.is_empty());
                assert_eq!(found.name, "www.example.test");
            }
            done = Some(result);
        }
    }
    let s = core.stats();
    assert_eq!(s.answers + s.unmatched + s.wrong_source + s.wrong_question + s.malformed, fed);
    if s.answers > 0 || s.timeouts > 0 || done.is_some() {
        return;
    }
    // Nothing was accepted: the zone's answers finish the lookup.
    for (_, to, q) in std::mem::take(&mut wire) {
        let reply = respond(zone(), 1232, &q).expect("the zone answers a query");
        core.handle_datagram(now, to, &reply);
    }
    let (_, result) = core.poll_event().expect("answered");
    let found = result.expect("the zone has the name");
    assert_eq!(found.addrs, [IpAddr::V4(V4), IpAddr::V6(V6)]);
    assert_eq!(found.canonical_name, "www.example.test");
    assert_eq!(found.ttl, 300);
    assert!(matches!(core.start(now, "..", LookupKind::A), Err(ResolveError::BadName)));
}

fn resolv_conf(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let conf = ResolvConf::parse(&text);
    assert!(conf.servers.len() <= 3);
    assert!(conf.servers.iter().all(|s| s.port() == 53));
    assert!(conf.timeout.is_none_or(|t| (1..=30).contains(&t.as_secs()) && t.subsec_nanos() == 0));
    assert!(conf.attempts.is_none_or(|a| (1..=5).contains(&a)));
    ResolverConfig::from_resolv_conf(&conf).validate().expect("a working configuration");
    // Written out and read again, it is the same.
    let mut again = String::new();
    for s in &conf.servers {
        match s {
            SocketAddr::V6(v6) if v6.scope_id() != 0 => {
                again.push_str(&format!("nameserver {}%{}\n", v6.ip(), v6.scope_id()));
            }
            _ => again.push_str(&format!("nameserver {}\n", s.ip())),
        }
    }
    again.push_str("options");
    if let Some(t) = conf.timeout {
        again.push_str(&format!(" timeout:{}", t.as_secs()));
    }
    if let Some(a) = conf.attempts {
        again.push_str(&format!(" attempts:{a}"));
    }
    if conf.rotate {
        again.push_str(" rotate");
    }
    assert_eq!(ResolvConf::parse(&again), conf, "from {again:?}");
}
