//! DNS over real loopback sockets: the resolver against the built-in server and against
//! scripted std-socket servers (slow, silent, spoofing), and the server against raw and
//! broken queries. Ephemeral ports; every wait bounded.

#[path = "util/dns.rs"]
mod util;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dap_net::dns::{
    DnsServer, LocalResolver, LookupKind, ResolveError, Resolver, ResolverConfig, ServerConfig,
    Zone,
};
use hickory_proto::op::{OpCode, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use util::{Peer, TIMEOUT, ips, lookup, query_bytes, result, wait_until};

const SHORT: Duration = Duration::from_millis(150);

#[test]
fn resolves_a_aaaa_and_both_from_the_builtin_server() {
    let reactor = util::reactor(1);
    let server = util::serve(&reactor, "127.0.0.1");
    let resolver = util::resolver(&reactor, vec![server.local_addr()], TIMEOUT, 1);

    let a = resolver.resolve("www.example.test", LookupKind::A).unwrap();
    assert_eq!(a.addrs, ips(&[[192, 0, 2, 1], [192, 0, 2, 2]]));
    assert_eq!(
        (a.name.as_str(), a.canonical_name.as_str(), a.ttl),
        ("www.example.test", "www.example.test", 60)
    );
    let aaaa = resolver.resolve("WWW.Example.Test.", LookupKind::Aaaa).unwrap();
    assert_eq!(aaaa.addrs, [util::www_v6()]);
    let both = resolver.resolve("www.example.test", LookupKind::Both).unwrap();
    assert_eq!(both.addrs, [ips(&[[192, 0, 2, 1], [192, 0, 2, 2]]), vec![util::www_v6()]].concat());
    // Only one family has records: still a success.
    let v4 = resolver.resolve("v4only.example.test", LookupKind::Both).unwrap();
    assert_eq!(v4.addrs, ips(&[[192, 0, 2, 4]]));
    // An alias in the zone: the server follows it, the resolver follows the chain.
    let alias = resolver.resolve("alias.example.test", LookupKind::A).unwrap();
    assert_eq!((alias.addrs.len(), alias.canonical_name.as_str()), (2, "www.example.test"));

    let stats = resolver.stats();
    assert_eq!((stats.queries_sent, stats.answers, stats.retries), (7, 7, 0));
    assert_eq!(stats.unmatched + stats.wrong_source + stats.wrong_question + stats.malformed, 0);
    assert_eq!(server.stats().answers, 6);
    util::shutdown(reactor);
}

#[test]
fn nxdomain_nodata_literals_and_bad_names() {
    let reactor = util::reactor(1);
    let server = util::serve(&reactor, "127.0.0.1");
    let resolver = util::resolver(&reactor, vec![server.local_addr()], TIMEOUT, 1);

    let nx = resolver.resolve("missing.example.test", LookupKind::Both);
    assert!(matches!(nx, Err(ResolveError::NxDomain)), "{nx:?}");
    let nodata = resolver.resolve("v4only.example.test", LookupKind::Aaaa);
    assert!(matches!(nodata, Err(ResolveError::NoRecords)), "{nodata:?}");
    let nodata = resolver.resolve("txt.example.test", LookupKind::Both);
    assert!(matches!(nodata, Err(ResolveError::NoRecords)), "{nodata:?}");
    let outside = resolver.resolve("example.org", LookupKind::A);
    assert!(matches!(outside, Err(ResolveError::ServerFailure { rcode: 5 })), "{outside:?}");
    let bad = resolver.resolve("a..example.test", LookupKind::A);
    assert!(matches!(bad, Err(ResolveError::BadName)), "{bad:?}");
    let literal = resolver.resolve("127.0.0.9", LookupKind::A).unwrap();
    assert_eq!(literal.addrs, ips(&[[127, 0, 0, 9]]));

    let s = server.stats();
    // Both queries of the NXDOMAIN lookup were answered (the second after the first ended it).
    assert_eq!((s.nxdomain, s.nodata, s.refused), (2, 3, 1));
    util::shutdown(reactor);
}

#[test]
fn resolves_over_ipv6_loopback() {
    if !util::has_ipv6() {
        eprintln!("no IPv6 loopback here: skipped");
        return;
    }
    let reactor = util::reactor(1);
    let server = util::serve(&reactor, "::1");
    assert!(server.local_addr().is_ipv6());
    let resolver = util::resolver(&reactor, vec![server.local_addr()], TIMEOUT, 1);
    let both = resolver.resolve("www.example.test", LookupKind::Both).unwrap();
    assert_eq!(both.addrs.len(), 3);
    // Raw query over IPv6 as well.
    let client = Peer::bind("::1");
    let (reply, _) = client
        .ask(server.local_addr(), &query_bytes(7, "txt.example.test.", RecordType::TXT, None));
    assert_eq!((reply.metadata.id, reply.answers.len()), (7, 1));
    util::shutdown(reactor);
}

#[test]
fn raw_queries_txt_refused_notimp_and_case() {
    let reactor = util::reactor(1);
    let server = util::serve(&reactor, "127.0.0.1");
    let client = Peer::bind("127.0.0.1");
    let to = server.local_addr();

    let (m, _) = client.ask(to, &query_bytes(1, "TXT.example.TEST.", RecordType::TXT, None));
    assert_eq!((m.metadata.id, m.metadata.response_code), (1, ResponseCode::NoError));
    assert!(m.metadata.authoritative && !m.metadata.truncation);
    assert_eq!(
        m.queries[0].name.to_ascii(),
        "TXT.example.TEST.",
        "the question is echoed as asked"
    );
    let RData::TXT(txt) = &m.answers[0].data else { panic!("a TXT record: {m:?}") };
    assert_eq!(&*txt.txt_data[0], b"hello dns");
    assert_eq!(m.answers[0].ttl, 120);

    let (m, _) = client.ask(to, &query_bytes(2, "www.example.org.", RecordType::A, None));
    assert_eq!(
        (m.metadata.response_code, m.metadata.authoritative),
        (ResponseCode::Refused, false)
    );

    let (m, _) = client.ask(to, &query_bytes(3, "nope.example.test.", RecordType::TXT, None));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);

    let (m, _) = client.ask(to, &query_bytes(4, "www.example.test.", RecordType::TXT, None));
    assert_eq!((m.metadata.response_code, m.answers.len()), (ResponseCode::NoError, 0));
    assert!(m.metadata.authoritative);

    let mut notify = query_bytes(5, "example.test.", RecordType::SOA, None);
    notify[2] = (notify[2] & 0x87) | (4 << 3);
    let (m, len) = client.ask(to, &notify);
    assert_eq!(
        (m.metadata.response_code, m.metadata.op_code, len),
        (ResponseCode::NotImp, OpCode::Notify, 12)
    );
    util::shutdown(reactor);
}

#[test]
fn replies_fit_512_bytes_without_edns_and_the_edns_size_with_it() {
    let reactor = util::reactor(1);
    let mut zone = Zone::new("big.test").unwrap();
    // 70 A records: about 1,160 bytes, over 512 and under the resolver's EDNS size of 1,232.
    for i in 0..70u8 {
        zone.add_a("many.big.test", Ipv4Addr::new(10, 0, 1, i), 60).unwrap();
    }
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let config = ServerConfig::default().max_payload(1400);
    let server = DnsServer::start_on(&reactor.workers()[0], addr, zone.into(), config).unwrap();
    let client = Peer::bind("127.0.0.1");
    let to = server.local_addr();

    let (m, len) = client.ask(to, &query_bytes(1, "many.big.test.", RecordType::A, None));
    assert!(m.metadata.truncation && m.answers.is_empty() && len <= 512, "{len} {m:?}");
    let (m, len) = client.ask(to, &query_bytes(2, "many.big.test.", RecordType::A, Some(4096)));
    assert!(!m.metadata.truncation && m.answers.len() == 70 && len <= 1400, "{len}");
    let (m, len) = client.ask(to, &query_bytes(3, "many.big.test.", RecordType::A, Some(700)));
    assert!(m.metadata.truncation && len <= 700 && m.edns.is_some(), "{len}");
    assert_eq!(server.stats().truncated, 2);

    let plain = ResolverConfig::new(vec![to]).timeout(TIMEOUT).edns_payload(None);
    let resolver = Resolver::start(&reactor.workers()[0], plain).unwrap();
    let cut = resolver.resolve("many.big.test", LookupKind::A);
    assert!(matches!(cut, Err(ResolveError::Truncated)), "{cut:?}");
    let resolver = util::resolver(&reactor, vec![to], TIMEOUT, 1);
    assert_eq!(resolver.resolve("many.big.test", LookupKind::A).unwrap().addrs.len(), 70);
    util::shutdown(reactor);
}

#[test]
fn a_swallowed_query_is_retried_and_the_retry_answered() {
    let reactor = util::reactor(1);
    let fake = Peer::bind("127.0.0.1");
    let resolver = util::resolver(&reactor, vec![fake.addr], SHORT, 3);
    let rx = lookup(&resolver, "slow.example", LookupKind::A);

    let (first, from) = fake.recv_msg();
    let (second, from2) = fake.recv_msg(); // the first went unanswered: this is the retry
    assert_eq!((from, second.metadata.id), (from2, first.metadata.id));
    assert_eq!(second.queries, first.queries);
    fake.answer_a(&second, from2, &[[203, 0, 113, 5]]);
    assert_eq!(result(&rx).unwrap().addrs, ips(&[[203, 0, 113, 5]]));
    let s = resolver.stats();
    assert_eq!((s.queries_sent, s.retries, s.answers, s.timeouts), (2, 1, 1, 0));
    util::shutdown(reactor);
}

#[test]
fn retries_move_on_to_the_next_server() {
    let reactor = util::reactor(1);
    let silent = Peer::bind("127.0.0.1");
    let server = util::serve(&reactor, "127.0.0.1");
    let resolver = util::resolver(&reactor, vec![silent.addr, server.local_addr()], SHORT, 1);
    let got = resolver.resolve("www.example.test", LookupKind::A).unwrap();
    assert_eq!(got.addrs.len(), 2);
    let (q, _) = silent.recv_msg();
    assert_eq!(q.queries[0].name.to_ascii(), "www.example.test.");
    assert_eq!(resolver.stats().retries, 1);
    util::shutdown(reactor);
}

#[test]
fn a_server_that_never_answers_times_out_after_every_try() {
    let reactor = util::reactor(1);
    let silent = Peer::bind("127.0.0.1");
    let resolver = util::resolver(&reactor, vec![silent.addr], Duration::from_millis(100), 3);
    let started = Instant::now();
    let err = resolver.resolve("void.example", LookupKind::Both).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, ResolveError::Timeout), "{err:?}");
    assert!(took >= Duration::from_millis(300) && took < TIMEOUT, "{took:?}");
    // Three tries for each of the two queries, each try with the query's one id.
    let mut ids = std::collections::HashMap::<u16, usize>::new();
    for _ in 0..6 {
        *ids.entry(silent.recv_msg().0.metadata.id).or_default() += 1;
    }
    assert_eq!(ids.values().copied().collect::<Vec<_>>(), [3, 3]);
    let s = resolver.stats();
    assert_eq!((s.queries_sent, s.retries, s.timeouts, s.outstanding), (6, 4, 2, 0));
    util::shutdown(reactor);
}

#[test]
fn spoofed_answers_are_ignored_and_counted() {
    let reactor = util::reactor(1);
    let fake = Peer::bind("127.0.0.1");
    let spoofer = Peer::bind("127.0.0.1");
    let resolver = util::resolver(&reactor, vec![fake.addr], TIMEOUT, 1);
    let rx = lookup(&resolver, "bank.example", LookupKind::A);
    let (query, resolver_addr) = fake.recv_msg();

    // Right id and question, wrong source address.
    spoofer.answer_a(&query, resolver_addr, &[[6, 6, 6, 6]]);
    // Right source, wrong id.
    let mut wrong_id = query.clone();
    wrong_id.metadata.id = query.metadata.id.wrapping_add(1);
    fake.answer_a(&wrong_id, resolver_addr, &[[6, 6, 6, 7]]);
    // Right source and id, another question.
    let mut other = query.clone();
    other.queries[0].name = hickory_proto::rr::Name::from_ascii("evil.example.").unwrap();
    fake.answer_a(&other, resolver_addr, &[[6, 6, 6, 8]]);
    // Right source and id, not DNS.
    let mut junk = query.metadata.id.to_be_bytes().to_vec();
    junk.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0]);
    fake.sock.send_to(&junk, resolver_addr).unwrap();
    wait_until("the forgeries to be counted", || {
        let s = resolver.stats();
        (s.wrong_source, s.unmatched, s.wrong_question, s.malformed) == (1, 1, 1, 1)
    });
    assert!(rx.try_recv().is_err(), "no forgery finished the lookup");

    fake.answer_a(&query, resolver_addr, &[[192, 0, 2, 55]]);
    assert_eq!(result(&rx).unwrap().addrs, ips(&[[192, 0, 2, 55]]));
    util::shutdown(reactor);
}

#[test]
fn garbage_is_counted_and_the_server_keeps_answering() {
    let reactor = util::reactor(1);
    let server = util::serve(&reactor, "127.0.0.1");
    let client = Peer::bind("127.0.0.1");
    let to = server.local_addr();
    let valid = query_bytes(0x4242, "www.example.test.", RecordType::A, None);
    let mut as_response = valid.clone();
    as_response[2] |= 0x80;
    let mut huge_counts = valid[..12].to_vec();
    huge_counts[4..12].fill(0xff);
    let pointer_loop = [0x11, 0x11, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
    let mut cut_short = valid.clone();
    cut_short.truncate(valid.len() - 3);
    let mut random = vec![0u8; 300];
    getrandom_fill(&mut random);
    random[2] &= 0x07; // a query with opcode QUERY, so it is decoded (and refused)

    // Dropped silently: too short for a header, or responses.
    for d in [&b""[..], b"\x00", &[0xff; 11], &as_response] {
        client.sock.send_to(d, to).unwrap();
    }
    // Header-only FORMERR with the id echoed.
    for d in [&huge_counts[..], &pointer_loop, &cut_short, &random] {
        client.sock.send_to(d, to).unwrap();
        let (reply, _) = client.recv();
        assert_eq!(&reply[..2], &d[..2]);
        assert_eq!((reply.len(), reply[2] & 0x80, reply[3] & 0x0f), (12, 0x80, 1), "{d:?}");
    }
    let (m, _) = client.ask(to, &valid);
    assert_eq!((m.metadata.id, m.answers.len()), (0x4242, 2));
    wait_until("the counters", || server.stats().received == 9);
    let s = server.stats();
    assert_eq!((s.dropped, s.formerr, s.answers), (4, 4, 1));
    util::shutdown(reactor);
}

/// Random bytes for garbage, from the same source the resolver uses.
fn getrandom_fill(buf: &mut [u8]) {
    // Not a dependency of the tests: derive bytes from the std hasher's random keys.
    use std::hash::{BuildHasher, Hasher};
    let state = std::collections::hash_map::RandomState::new();
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut h = state.build_hasher();
        h.write_usize(i);
        let bytes = h.finish().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

#[test]
fn zone_edits_are_seen_while_the_server_runs() {
    let reactor = util::reactor(1);
    let server = util::serve(&reactor, "127.0.0.1");
    let resolver = util::resolver(&reactor, vec![server.local_addr()], TIMEOUT, 1);
    let name = "new.example.test";
    assert!(matches!(resolver.resolve(name, LookupKind::A), Err(ResolveError::NxDomain)));

    server.zone().write().add_a(name, Ipv4Addr::new(198, 51, 100, 1), 5).unwrap();
    assert_eq!(resolver.resolve(name, LookupKind::A).unwrap().addrs, ips(&[[198, 51, 100, 1]]));
    {
        // One batch: queries see all of it or none.
        let mut zone = server.zone().write();
        zone.remove(name);
        zone.add_cname(name, "v4only.example.test", 5).unwrap();
    }
    let moved = resolver.resolve(name, LookupKind::A).unwrap();
    assert_eq!(
        (moved.addrs, moved.canonical_name.as_str()),
        (ips(&[[192, 0, 2, 4]]), "v4only.example.test")
    );
    util::shutdown(reactor);
}

#[test]
fn the_server_answers_on_every_worker() {
    let reactor = util::reactor(2);
    let server = util::serve(&reactor, "127.0.0.1");
    assert_eq!(server.handles().len(), 2);
    let workers: std::collections::HashSet<usize> =
        server.handles().iter().map(|h| h.worker_index()).collect();
    assert_eq!(workers.len(), 2);
    // Several source ports, so the kernel's hash can pick either socket; all are answered.
    for i in 0..8u16 {
        let client = Peer::bind("127.0.0.1");
        let (m, _) = client
            .ask(server.local_addr(), &query_bytes(i, "www.example.test.", RecordType::A, None));
        assert_eq!((m.metadata.id, m.answers.len()), (i, 2));
    }
    assert_eq!(server.stats().answers, 8);
    server.close();
    util::shutdown(reactor);
}

#[test]
fn local_resolver_on_its_worker_with_bounds_and_close() {
    let reactor = util::reactor(1);
    let server = util::serve(&reactor, "127.0.0.1");
    let silent = Peer::bind("127.0.0.1");
    let (tx, rx) = mpsc::channel::<(&'static str, Result<Vec<IpAddr>, String>)>();
    let servers = (server.local_addr(), silent.addr);
    reactor.workers()[0]
        .exec(move |w| {
            let good = LocalResolver::new(w, ResolverConfig::new(vec![servers.0])).unwrap();
            let t = tx.clone();
            good.lookup(w, "www.example.test", LookupKind::A, move |_, r| {
                let _ = t.send(("good", r.map(|l| l.addrs).map_err(|e| e.to_string())));
            })
            .unwrap();

            let config = ResolverConfig::new(vec![servers.1]).max_outstanding(1);
            let stuck = LocalResolver::new(w, config).unwrap();
            let t = tx.clone();
            stuck
                .lookup(w, "hang.example", LookupKind::A, move |_, r| {
                    let _ = t.send(("stuck", r.map(|l| l.addrs).map_err(|e| e.to_string())));
                })
                .unwrap();
            let refused = stuck.lookup(w, "more.example", LookupKind::A, |_, _| unreachable!());
            let _ = tx.send(("bound", refused.map(|_| Vec::new()).map_err(|e| e.to_string())));
            stuck.close(w);
            let after = stuck.lookup(w, "late.example", LookupKind::A, |_, _| unreachable!());
            let _ = tx.send(("closed", after.map(|_| Vec::new()).map_err(|e| e.to_string())));
        })
        .unwrap();
    let mut got: Vec<_> = (0..4).map(|_| rx.recv_timeout(TIMEOUT).expect("a result")).collect();
    got.sort_by_key(|(what, _)| *what);
    let expect_err = |e: ResolveError| Err(e.to_string());
    assert_eq!(got[0], ("bound", expect_err(ResolveError::TooManyQueries)));
    assert_eq!(got[1], ("closed", expect_err(ResolveError::Closed)));
    assert_eq!(got[2], ("good", Ok(ips(&[[192, 0, 2, 1], [192, 0, 2, 2]]))));
    assert_eq!(got[3], ("stuck", expect_err(ResolveError::Closed)));
    util::shutdown(reactor);
}

#[test]
fn a_stopping_reactor_ends_lookups_with_closed() {
    let reactor = util::reactor(1);
    let silent = Peer::bind("127.0.0.1");
    let resolver = util::resolver(&reactor, vec![silent.addr], Duration::from_secs(30), 1);
    let rx = lookup(&resolver, "never.example", LookupKind::A);
    silent.recv_msg(); // the query is on the wire
    reactor.stop(Duration::from_secs(1));
    assert!(matches!(result(&rx), Err(ResolveError::Closed)));
    reactor.wait();
    assert!(matches!(
        resolver.lookup("x.example", LookupKind::A, |_| ()),
        Err(ResolveError::Closed)
    ));
}

#[test]
fn dropping_the_resolver_closes_its_sockets() {
    let reactor = util::reactor(1);
    let server = util::serve(&reactor, "127.0.0.1");
    let worker = reactor.workers()[0].clone();
    let udp_count = move || {
        let (tx, rx) = mpsc::sync_channel(1);
        worker
            .exec(move |w| {
                let _ = tx.send(w.stats().esockets_of(dap_reactor::EsocketKind::Udp));
            })
            .unwrap();
        rx.recv_timeout(TIMEOUT).unwrap()
    };
    let before = udp_count();
    let resolver = util::resolver(&reactor, vec![server.local_addr()], TIMEOUT, 1);
    resolver.resolve("www.example.test", LookupKind::A).unwrap();
    assert_eq!(udp_count(), before + 1);
    drop(resolver);
    wait_until("the resolver socket to close", || udp_count() == before);
    util::shutdown(reactor);
}
