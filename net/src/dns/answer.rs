//! The authoritative server's answers, sans-IO: query bytes and a zone in, reply bytes out.

use hickory_proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};

use super::wire::{self, CLASSIC_UDP_MAX, HEADER_LEN, RawHeader};
use super::zone::{Found, Zone};

/// What to do with a datagram.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Send `bytes` back; `kind` says what it was, for the counters.
    Reply { bytes: Vec<u8>, kind: ReplyKind, truncated: bool },
    /// Send nothing: under a header, or a response (answering responses could make two
    /// servers bounce a datagram between them forever).
    Drop,
}

/// The kinds of reply, one counter each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReplyKind {
    Answer,
    NoData,
    NxDomain,
    Refused,
    FormErr,
    NotImp,
    BadVers,
}

/// Answers one query datagram from `zone`. `max_payload` caps the reply size for queries
/// with EDNS; without EDNS the cap is 512 bytes. A reply that does not fit goes out as its
/// header and question only, with TC set.
pub(crate) fn respond(zone: &Zone, max_payload: u16, data: &[u8]) -> Outcome {
    let Some(h) = wire::raw_header(data) else { return Outcome::Drop };
    if h.is_response {
        return Outcome::Drop;
    }
    if !wire::is_query_opcode(h.opcode) {
        return header_only(&h, ResponseCode::NotImp, ReplyKind::NotImp);
    }
    let Ok(query) = wire::decode(data) else {
        return header_only(&h, ResponseCode::FormErr, ReplyKind::FormErr);
    };
    let [question] = query.queries.as_slice() else {
        return header_only(&h, ResponseCode::FormErr, ReplyKind::FormErr);
    };
    let cap = max_payload.max(CLASSIC_UDP_MAX);
    let mut resp = Message::response(h.id, OpCode::Query);
    resp.metadata.recursion_desired = h.recursion_desired;
    resp.add_query(question.clone());
    let limit = match &query.edns {
        Some(edns) => {
            let mut opt = Edns::new();
            opt.set_max_payload(cap);
            resp.set_edns(opt);
            if edns.version() != 0 {
                resp.metadata.response_code = ResponseCode::BADVERS;
                return encode(&resp, CLASSIC_UDP_MAX, ReplyKind::BadVers);
            }
            edns.max_payload().clamp(CLASSIC_UDP_MAX, cap)
        }
        None => CLASSIC_UDP_MAX,
    };
    if question.query_class != DNSClass::IN {
        resp.metadata.response_code = ResponseCode::Refused;
        return encode(&resp, limit, ReplyKind::Refused);
    }
    if matches!(question.query_type, RecordType::AXFR | RecordType::IXFR) {
        // Zone transfers need TCP, which this server does not speak.
        resp.metadata.response_code = ResponseCode::NotImp;
        return encode(&resp, limit, ReplyKind::NotImp);
    }
    let kind = match zone.find(&question.name, question.query_type) {
        Found::Outside => {
            resp.metadata.response_code = ResponseCode::Refused;
            return encode(&resp, limit, ReplyKind::Refused);
        }
        Found::Answer(records) => {
            resp.add_answers(records);
            ReplyKind::Answer
        }
        Found::NoData(records) => {
            resp.add_answers(records);
            resp.add_authority(zone.soa());
            ReplyKind::NoData
        }
        Found::NxDomain(records) => {
            resp.add_answers(records);
            resp.add_authority(zone.soa());
            resp.metadata.response_code = ResponseCode::NXDomain;
            ReplyKind::NxDomain
        }
    };
    resp.metadata.authoritative = true;
    encode(&resp, limit, kind)
}

/// Encodes `resp`; if it is over `limit` bytes, sends header, question and OPT only, with
/// TC set (whole RRsets or nothing: a resolver must not take a partial set for the whole).
fn encode(resp: &Message, limit: u16, kind: ReplyKind) -> Outcome {
    match resp.to_vec() {
        Ok(bytes) if bytes.len() <= usize::from(limit) => {
            return Outcome::Reply { bytes, kind, truncated: false };
        }
        _ => {}
    }
    let mut short = resp.clone();
    short.answers.clear();
    short.authorities.clear();
    short.additionals.clear();
    short.metadata.truncation = true;
    match short.to_vec() {
        Ok(bytes) if bytes.len() <= usize::from(limit) => {
            Outcome::Reply { bytes, kind, truncated: true }
        }
        // Header, one question (at most 259 bytes) and an empty OPT always fit 512 bytes, so
        // this is unreachable in practice; answer with the header alone rather than nothing.
        _ => {
            let h = RawHeader {
                id: resp.metadata.id,
                is_response: true,
                opcode: 0,
                recursion_desired: resp.metadata.recursion_desired,
                qdcount: 0,
            };
            header_only(&h, ResponseCode::ServFail, kind)
        }
    }
}

/// A reply that is just a header: for queries too broken to echo their question.
fn header_only(h: &RawHeader, rcode: ResponseCode, kind: ReplyKind) -> Outcome {
    let mut bytes = vec![0u8; HEADER_LEN];
    bytes[..2].copy_from_slice(&h.id.to_be_bytes());
    bytes[2] = 0x80 | (h.opcode << 3) | u8::from(h.recursion_desired);
    bytes[3] = rcode.low();
    Outcome::Reply { bytes, kind, truncated: false }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::{MessageType, Query};
    use hickory_proto::rr::{Name, RData};

    use super::*;

    fn zone() -> Zone {
        let mut z = Zone::new("example.com").unwrap();
        z.add_a("www.example.com", Ipv4Addr::new(192, 0, 2, 1), 300).unwrap();
        z.add_txt("txt.example.com", "v=spf1 -all", 60).unwrap();
        for i in 0..60u8 {
            z.add_a("many.example.com", Ipv4Addr::new(10, 0, 0, i), 60).unwrap();
        }
        z
    }

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn reply(out: Outcome) -> (Message, ReplyKind, bool, usize) {
        let Outcome::Reply { bytes, kind, truncated } = out else { panic!("dropped") };
        (Message::from_vec(&bytes).unwrap(), kind, truncated, bytes.len())
    }

    #[test]
    fn answers_nodata_nxdomain_refused() {
        let z = zone();
        let (m, kind, _, _) =
            reply(respond(&z, 1232, &query("WWW.example.com.", RecordType::A, None)));
        assert_eq!(
            (m.metadata.id, kind, m.metadata.response_code),
            (0xbeef, ReplyKind::Answer, ResponseCode::NoError)
        );
        assert!(
            m.metadata.authoritative
                && m.metadata.recursion_desired
                && !m.metadata.recursion_available
        );
        assert_eq!(m.queries[0].name.to_ascii(), "WWW.example.com.");
        assert!(matches!(m.answers[0].data, RData::A(a) if a.0 == Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(m.answers[0].ttl, 300);

        let (m, kind, _, _) =
            reply(respond(&z, 1232, &query("www.example.com.", RecordType::AAAA, None)));
        assert_eq!(
            (kind, m.metadata.response_code, m.answers.len()),
            (ReplyKind::NoData, ResponseCode::NoError, 0)
        );
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);

        let (m, kind, _, _) =
            reply(respond(&z, 1232, &query("nope.example.com.", RecordType::A, None)));
        assert_eq!((kind, m.metadata.response_code), (ReplyKind::NxDomain, ResponseCode::NXDomain));
        assert!(m.metadata.authoritative);

        let (m, kind, _, _) =
            reply(respond(&z, 1232, &query("www.example.org.", RecordType::A, None)));
        assert_eq!((kind, m.metadata.response_code), (ReplyKind::Refused, ResponseCode::Refused));
        assert!(!m.metadata.authoritative);

        let (m, kind, _, _) =
            reply(respond(&z, 1232, &query("example.com.", RecordType::AXFR, None)));
        assert_eq!((kind, m.metadata.response_code), (ReplyKind::NotImp, ResponseCode::NotImp));
    }

    #[test]
    fn size_limits_with_and_without_edns() {
        let z = zone();
        // 60 A records: about 1 KB.
        let (m, _, tc, len) =
            reply(respond(&z, 1232, &query("many.example.com.", RecordType::A, None)));
        assert!(tc && m.metadata.truncation && m.answers.is_empty() && len <= 512);
        assert_eq!(m.queries.len(), 1);
        let (m, _, tc, len) =
            reply(respond(&z, 1232, &query("many.example.com.", RecordType::A, Some(4096))));
        assert!(!tc && m.answers.len() == 60 && len <= 1232);
        assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));
        // The server's cap wins over the client's advertised size...
        let (_, _, tc, len) =
            reply(respond(&z, 600, &query("many.example.com.", RecordType::A, Some(4096))));
        assert!(tc && len <= 600);
        // ...and an advertised size under 512 counts as 512.
        let (m, _, tc, _) =
            reply(respond(&z, 1232, &query("www.example.com.", RecordType::A, Some(100))));
        assert!(!tc && m.answers.len() == 1 && m.edns.is_some());
    }

    #[test]
    fn broken_queries_get_formerr_notimp_or_nothing() {
        let z = zone();
        assert_eq!(respond(&z, 1232, &[]), Outcome::Drop);
        assert_eq!(respond(&z, 1232, &[0xab; 11]), Outcome::Drop);
        let mut response = query("www.example.com.", RecordType::A, None);
        response[2] |= 0x80;
        assert_eq!(respond(&z, 1232, &response), Outcome::Drop);

        let mut update = query("www.example.com.", RecordType::A, None);
        update[2] = (update[2] & 0x87) | (5 << 3);
        let Outcome::Reply { bytes, kind, .. } = respond(&z, 1232, &update) else { panic!() };
        assert_eq!(
            (kind, bytes.len(), bytes[3] & 0x0f, (bytes[2] >> 3) & 0x0f),
            (ReplyKind::NotImp, 12, 4, 5)
        );

        let mut junk = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        junk.extend_from_slice(&[63, b'x']);
        let Outcome::Reply { bytes, kind, .. } = respond(&z, 1232, &junk) else { panic!() };
        assert_eq!(
            (kind, &bytes[..2], bytes[3] & 0x0f),
            (ReplyKind::FormErr, &[0x12, 0x34][..], 1)
        );
        let no_question = [0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            respond(&z, 1232, &no_question),
            Outcome::Reply { kind: ReplyKind::FormErr, .. }
        ));

        let mut two = Message::new(1, MessageType::Query, OpCode::Query);
        two.add_query(Query::query(Name::from_ascii("a.example.com.").unwrap(), RecordType::A));
        two.add_query(Query::query(Name::from_ascii("b.example.com.").unwrap(), RecordType::A));
        assert!(matches!(
            respond(&z, 1232, &two.to_vec().unwrap()),
            Outcome::Reply { kind: ReplyKind::FormErr, .. }
        ));

        let mut chaos = Message::new(2, MessageType::Query, OpCode::Query);
        let mut q = Query::query(Name::from_ascii("version.bind.").unwrap(), RecordType::TXT);
        q.set_query_class(DNSClass::CH);
        chaos.add_query(q);
        assert!(matches!(
            respond(&z, 1232, &chaos.to_vec().unwrap()),
            Outcome::Reply { kind: ReplyKind::Refused, .. }
        ));
    }

    #[test]
    fn edns_version_other_than_zero_gets_badvers() {
        let z = zone();
        let mut m =
            Message::from_vec(&query("www.example.com.", RecordType::A, Some(1232))).unwrap();
        if let Some(e) = m.edns.as_mut() {
            e.set_version(1);
        }
        let (r, kind, _, _) = reply(respond(&z, 1232, &m.to_vec().unwrap()));
        // BADVERS and BADSIG share code 16; the decoder names it BADSIG.
        assert_eq!((kind, u16::from(r.metadata.response_code)), (ReplyKind::BadVers, 16));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let z = zone();
        let seed = query("txt.example.com.", RecordType::TXT, Some(1232));
        // Every single-byte change of a valid query, and every prefix of it.
        for i in 0..seed.len() {
            for v in [0u8, 1, 0x3f, 0x40, 0xc0, 0xff] {
                let mut q = seed.clone();
                q[i] = v;
                let _ = respond(&z, 1232, &q);
            }
            let _ = respond(&z, 1232, &seed[..i]);
        }
    }
}
