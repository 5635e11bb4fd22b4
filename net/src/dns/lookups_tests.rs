//! Unit tests of the resolver state machine, with a virtual clock.

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::Record;
use hickory_proto::rr::rdata::{A, AAAA, CNAME};

use super::*;

const S0: &str = "192.0.2.1:53";
const S1: &str = "192.0.2.2:53";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn core(servers: &[&str], attempts: u32) -> Lookups {
    let cfg = ResolverConfig::new(servers.iter().map(|s| addr(s)).collect())
        .timeout(Duration::from_secs(1))
        .attempts(attempts)
        .max_outstanding(4);
    cfg.validate().unwrap();
    Lookups::new(&cfg)
}

fn sent(l: &mut Lookups) -> Vec<(SocketAddr, Message)> {
    std::iter::from_fn(|| l.poll_transmit())
        .map(|t| (t.to, Message::from_vec(&t.data).unwrap()))
        .collect()
}

/// A response to `query` carrying `answers`, with `rcode`.
fn reply(query: &Message, rcode: ResponseCode, answers: Vec<Record>) -> Vec<u8> {
    let mut r = Message::response(query.metadata.id, OpCode::Query);
    r.metadata.response_code = rcode;
    r.add_queries(query.queries.clone());
    r.add_answers(answers);
    r.to_vec().unwrap()
}

fn name(s: &str) -> Name {
    wire::parse_name(s).unwrap()
}

fn a(owner: &str, ip: [u8; 4], ttl: u32) -> Record {
    Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::from(ip))))
}

fn cname(owner: &str, target: &str) -> Record {
    Record::from_rdata(name(owner), 60, RData::CNAME(CNAME(name(target))))
}

fn event(l: &mut Lookups) -> Result<Lookup, ResolveError> {
    let (_, result) = l.poll_event().expect("a finished lookup");
    assert!(l.poll_event().is_none());
    result
}

#[test]
fn answers_are_matched_by_id_source_and_question() {
    let mut l = core(&[S0], 1);
    let t0 = Instant::now();
    l.start(t0, "www.example.com", LookupKind::A).unwrap();
    let [(to, q)] = sent(&mut l).try_into().unwrap();
    assert_eq!(to, addr(S0));
    assert!(q.metadata.recursion_desired);
    assert_eq!(q.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    let good = reply(&q, ResponseCode::NoError, vec![a("www.example.com", [10, 0, 0, 1], 30)]);

    let mut wrong_id = good.clone();
    wrong_id[0] ^= 0xff;
    l.handle_datagram(t0, to, &wrong_id);
    l.handle_datagram(t0, addr("192.0.2.99:53"), &good);
    l.handle_datagram(t0, addr("192.0.2.1:5353"), &good);
    let mut other = q.clone();
    other.queries[0].name = name("evil.example.com");
    l.handle_datagram(t0, to, &reply(&other, ResponseCode::NoError, vec![]));
    l.handle_datagram(t0, to, &good[..good.len() - 3]);
    let mut as_query = good.clone();
    as_query[2] &= 0x7f;
    l.handle_datagram(t0, to, &as_query);
    l.handle_datagram(t0, to, &[1, 2, 3]);
    assert!(l.poll_event().is_none(), "nothing but the real answer finishes the lookup");

    l.handle_datagram(t0, to, &good);
    let got = event(&mut l).unwrap();
    assert_eq!(got.addrs, [IpAddr::from([10, 0, 0, 1])]);
    assert_eq!(
        (got.name.as_str(), got.canonical_name.as_str(), got.ttl),
        ("www.example.com", "www.example.com", 30)
    );
    l.handle_datagram(t0, to, &good); // a duplicate, now late
    let s = l.stats();
    assert_eq!((s.unmatched, s.wrong_source, s.wrong_question, s.malformed), (4, 2, 1, 1));
    assert_eq!((s.answers, s.queries_sent, s.outstanding, s.lookups), (1, 1, 0, 1));
    assert_eq!(l.poll_timeout(), None);
}

#[test]
fn timeouts_cycle_through_the_servers_then_fail() {
    let mut l = core(&[S0, S1], 2);
    let t0 = Instant::now();
    l.start(t0, "example.com", LookupKind::Aaaa).unwrap();
    let mut order = vec![sent(&mut l)[0].0];
    let mut now = t0;
    for _ in 0..3 {
        assert!(l.poll_timeout().is_some());
        // Not yet due: nothing happens.
        l.handle_timeout(now + Duration::from_millis(999));
        assert!(l.poll_transmit().is_none());
        now = l.poll_timeout().unwrap();
        l.handle_timeout(now);
        order.push(sent(&mut l)[0].0);
    }
    assert_eq!(order, [addr(S0), addr(S1), addr(S0), addr(S1)]);
    assert!(l.poll_event().is_none());
    l.handle_timeout(l.poll_timeout().unwrap());
    assert!(matches!(event(&mut l), Err(ResolveError::Timeout)));
    assert_eq!(l.poll_timeout(), None);
    let s = l.stats();
    assert_eq!((s.queries_sent, s.retries, s.timeouts, s.outstanding), (4, 3, 1, 0));
}

#[test]
fn a_late_answer_to_an_earlier_try_is_accepted() {
    let mut l = core(&[S0, S1], 1);
    let t0 = Instant::now();
    l.start(t0, "example.com", LookupKind::A).unwrap();
    let [(_, q)] = sent(&mut l).try_into().unwrap();
    l.handle_timeout(l.poll_timeout().unwrap());
    assert_eq!(sent(&mut l)[0].0, addr(S1));
    l.handle_datagram(
        t0,
        addr(S0),
        &reply(&q, ResponseCode::NoError, vec![a("example.com", [1, 2, 3, 4], 5)]),
    );
    assert_eq!(event(&mut l).unwrap().addrs, [IpAddr::from([1, 2, 3, 4])]);
}

#[test]
fn server_failure_moves_to_the_next_server_at_once() {
    let mut l = core(&[S0, S1], 1);
    let t0 = Instant::now();
    l.start(t0, "example.com", LookupKind::A).unwrap();
    let [(_, q)] = sent(&mut l).try_into().unwrap();
    l.handle_datagram(t0, addr(S0), &reply(&q, ResponseCode::ServFail, vec![]));
    let [(to, q2)] = sent(&mut l).try_into().unwrap();
    assert_eq!((to, q2.metadata.id), (addr(S1), q.metadata.id));
    l.handle_datagram(t0, addr(S1), &reply(&q, ResponseCode::Refused, vec![]));
    assert!(matches!(event(&mut l), Err(ResolveError::ServerFailure { rcode: 5 })));

    // A failure, then silence: the failure is what is reported.
    l.start(t0, "example.com", LookupKind::A).unwrap();
    let [(_, q)] = sent(&mut l).try_into().unwrap();
    l.handle_datagram(t0, addr(S0), &reply(&q, ResponseCode::ServFail, vec![]));
    sent(&mut l);
    l.handle_timeout(l.poll_timeout().unwrap());
    assert!(matches!(event(&mut l), Err(ResolveError::ServerFailure { rcode: 2 })));
}

#[test]
fn nxdomain_nodata_and_truncation() {
    let mut l = core(&[S0], 1);
    let t0 = Instant::now();
    type Expect = fn(&ResolveError) -> bool;
    let cases: [(ResponseCode, bool, Expect); 3] = [
        (ResponseCode::NXDomain, false, |e| matches!(e, ResolveError::NxDomain)),
        (ResponseCode::NoError, false, |e| matches!(e, ResolveError::NoRecords)),
        (ResponseCode::NoError, true, |e| matches!(e, ResolveError::Truncated)),
    ];
    for (rcode, tc, expected) in cases {
        l.start(t0, "example.com", LookupKind::A).unwrap();
        let [(_, q)] = sent(&mut l).try_into().unwrap();
        let mut r = reply(&q, rcode, vec![]);
        if tc {
            r[2] |= 0x02;
        }
        l.handle_datagram(t0, addr(S0), &r);
        let err = event(&mut l).unwrap_err();
        assert!(expected(&err), "{err:?}");
    }
}

#[test]
fn both_families_join_and_nxdomain_cancels_the_sibling() {
    let mut l = core(&[S0], 1);
    let t0 = Instant::now();
    l.start(t0, "dual.example", LookupKind::Both).unwrap();
    let qs = sent(&mut l);
    assert_eq!(qs.len(), 2);
    assert_ne!(qs[0].1.metadata.id, qs[1].1.metadata.id);
    let (qa, qaaaa) = (&qs[0].1, &qs[1].1);
    assert_eq!(
        (qa.queries[0].query_type, qaaaa.queries[0].query_type),
        (RecordType::A, RecordType::AAAA)
    );
    let v6 = Record::from_rdata(name("dual.example"), 7, RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)));
    l.handle_datagram(t0, addr(S0), &reply(qaaaa, ResponseCode::NoError, vec![v6]));
    assert!(l.poll_event().is_none(), "waits for the A query");
    l.handle_datagram(
        t0,
        addr(S0),
        &reply(qa, ResponseCode::NoError, vec![a("dual.example", [127, 0, 0, 1], 9)]),
    );
    let got = event(&mut l).unwrap();
    assert_eq!(got.addrs, [IpAddr::from([127, 0, 0, 1]), IpAddr::from(Ipv6Addr::LOCALHOST)]);
    assert_eq!(got.ttl, 7);

    l.start(t0, "gone.example", LookupKind::Both).unwrap();
    let qs = sent(&mut l);
    l.handle_datagram(t0, addr(S0), &reply(&qs[0].1, ResponseCode::NXDomain, vec![]));
    assert!(matches!(event(&mut l), Err(ResolveError::NxDomain)));
    assert_eq!((l.stats().outstanding, l.poll_timeout()), (0, None));

    // One family with no records and the other timing out: the timeout is the news.
    l.start(t0, "half.example", LookupKind::Both).unwrap();
    let qs = sent(&mut l);
    l.handle_datagram(t0, addr(S0), &reply(&qs[0].1, ResponseCode::NoError, vec![]));
    l.handle_timeout(l.poll_timeout().unwrap());
    assert!(matches!(event(&mut l), Err(ResolveError::Timeout)));
}

#[test]
fn cname_chains_are_followed_and_loops_end() {
    let mut l = core(&[S0], 1);
    let t0 = Instant::now();
    l.start(t0, "www.example.com", LookupKind::A).unwrap();
    let [(_, q)] = sent(&mut l).try_into().unwrap();
    let chain = vec![
        a("unrelated.example.com", [9, 9, 9, 9], 60),
        cname("WWW.example.com", "edge.example.net"),
        cname("edge.example.net", "host.example.org"),
        a("host.example.org", [192, 0, 2, 10], 120),
        a("host.example.org", [192, 0, 2, 11], 30),
    ];
    l.handle_datagram(t0, addr(S0), &reply(&q, ResponseCode::NoError, chain));
    let got = event(&mut l).unwrap();
    assert_eq!(got.addrs, [IpAddr::from([192, 0, 2, 10]), IpAddr::from([192, 0, 2, 11])]);
    assert_eq!((got.canonical_name.as_str(), got.ttl), ("host.example.org", 30));

    l.start(t0, "loop.example", LookupKind::A).unwrap();
    let [(_, q)] = sent(&mut l).try_into().unwrap();
    let looped = vec![cname("loop.example", "pool.example"), cname("pool.example", "loop.example")];
    l.handle_datagram(t0, addr(S0), &reply(&q, ResponseCode::NoError, looped));
    assert!(matches!(event(&mut l), Err(ResolveError::NoRecords)));
}

#[test]
fn bounds_bad_names_literals_and_close() {
    let mut l = core(&[S0], 1);
    let t0 = Instant::now();
    assert!(matches!(l.start(t0, "", LookupKind::A), Err(ResolveError::BadName)));
    assert!(matches!(l.start(t0, "a..b", LookupKind::A), Err(ResolveError::BadName)));
    let lit = l.start(t0, "::1", LookupKind::Both).unwrap();
    let (id, got) = l.poll_event().unwrap();
    assert_eq!((id, got.unwrap().addrs), (lit, vec![IpAddr::from(Ipv6Addr::LOCALHOST)]));
    l.start(t0, "10.1.2.3", LookupKind::Aaaa).unwrap();
    assert!(matches!(event(&mut l), Err(ResolveError::NoRecords)));
    assert!(l.poll_transmit().is_none(), "literals send nothing");

    // max_outstanding is 4 queries: two "both" lookups fill it.
    let first = l.start(t0, "one.example", LookupKind::Both).unwrap();
    let second = l.start(t0, "two.example", LookupKind::Both).unwrap();
    assert!(matches!(
        l.start(t0, "three.example", LookupKind::A),
        Err(ResolveError::TooManyQueries)
    ));
    assert_eq!((l.stats().outstanding, l.in_flight()), (4, 2));
    l.close();
    let closed: Vec<_> = std::iter::from_fn(|| l.poll_event()).collect();
    assert_eq!(closed.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [first, second]);
    assert!(closed.iter().all(|(_, r)| matches!(r, Err(ResolveError::Closed))));
    assert_eq!((l.stats().outstanding, l.poll_timeout()), (0, None));
    assert!(l.poll_transmit().is_none());
}

#[test]
fn plain_queries_without_edns() {
    let cfg = ResolverConfig::new(vec![addr(S0)]).edns_payload(None);
    let mut l = Lookups::new(&cfg);
    l.start(Instant::now(), "example.com", LookupKind::A).unwrap();
    let [(_, q)] = sent(&mut l).try_into().unwrap();
    assert!(q.edns.is_none());
}

#[test]
fn formerr_to_edns_retries_without_it() {
    let mut l = core(&[S0], 2);
    let t0 = Instant::now();
    l.start(t0, "old.example", LookupKind::A).unwrap();
    let [(_, q)] = sent(&mut l).try_into().unwrap();
    assert!(q.edns.is_some());
    l.handle_datagram(t0, addr(S0), &reply(&q, ResponseCode::FormErr, vec![]));
    let [(to, plain)] = sent(&mut l).try_into().unwrap();
    assert_eq!((to, plain.metadata.id, plain.edns.is_none()), (addr(S0), q.metadata.id, true));
    assert_eq!(plain.queries, q.queries);
    l.handle_datagram(
        t0,
        addr(S0),
        &reply(&plain, ResponseCode::NoError, vec![a("old.example", [1, 1, 1, 1], 1)]),
    );
    assert_eq!(event(&mut l).unwrap().addrs, [IpAddr::from([1, 1, 1, 1])]);
}
