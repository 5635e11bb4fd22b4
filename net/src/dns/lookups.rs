//! The resolver's state machine, sans-IO: no sockets, no clock.
//!
//! Inputs are [`Lookups::start`], [`Lookups::handle_datagram`] and
//! [`Lookups::handle_timeout`], each given `now`. After any input, drain
//! [`Lookups::poll_transmit`] (datagrams to send) and [`Lookups::poll_event`] (finished
//! lookups), then arm a timer for [`Lookups::poll_timeout`]. The driver in `resolver.rs` does
//! this on a worker; the tests below do it with a virtual clock.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

use super::wire::{self, IdSource};
use super::{ResolveError, ResolverConfig};

/// CNAME links followed within one answer; more means a loop or an abusive server.
const MAX_CNAME_HOPS: usize = 16;
/// Random ids tried before giving up on finding one not in use (only a nearly full id space
/// fails this, which `MAX_OUTSTANDING` rules out).
const ID_DRAWS: usize = 16;

/// Which addresses a lookup asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LookupKind {
    /// IPv4 addresses (A records).
    A,
    /// IPv6 addresses (AAAA records).
    Aaaa,
    /// Both, asked in parallel; IPv4 addresses come first in the result.
    Both,
}

/// A successful lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lookup {
    /// The name as it was asked for.
    pub name: String,
    /// The name the addresses belong to: the end of the CNAME chain (without trailing dot),
    /// or the name itself.
    pub canonical_name: String,
    /// The addresses, in the server's order (A before AAAA for [`LookupKind::Both`]).
    pub addrs: Vec<IpAddr>,
    /// The smallest TTL of the records used, in seconds (0 for an IP literal).
    pub ttl: u32,
}

/// Names a lookup in flight; results carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(u64);

/// A resolver's counters. Datagrams that are not the answer to a live query are dropped and
/// counted here, never delivered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResolverStats {
    /// Lookups started (IP literals included).
    pub lookups: u64,
    /// Queries sent, retries included.
    pub queries_sent: u64,
    /// Queries sent again after a timeout or a server failure.
    pub retries: u64,
    /// Queries given up after the last try timed out.
    pub timeouts: u64,
    /// Answers accepted (matched by id, server address and question).
    pub answers: u64,
    /// Datagrams whose id names no live query, or that are not responses (late, spoofed).
    pub unmatched: u64,
    /// Datagrams with a live id from an address that query was not sent to.
    pub wrong_source: u64,
    /// Datagrams with a live id, from the right server, about another question.
    pub wrong_question: u64,
    /// Datagrams with a live id from the right server that could not be decoded.
    pub malformed: u64,
    /// Datagrams the socket would not take (counted by the driver; the try then times out).
    pub send_errors: u64,
    /// Queries on the wire now.
    pub outstanding: u64,
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transmit {
    pub(crate) to: SocketAddr,
    pub(crate) data: Bytes,
}

/// One query on the wire (one name, one type).
#[derive(Debug)]
struct Pending {
    lookup: u64,
    name: Name,
    qtype: RecordType,
    /// The encoded query, sent again unchanged on retries (same id: a late answer to an
    /// earlier try is as good as any).
    wire: Bytes,
    first_server: usize,
    tries: u32,
    /// Bit i: sent to server i. Answers are taken only from these.
    sent_to: u32,
    deadline: Instant,
    /// The rcode of the last server that failed the query, reported if no try succeeds.
    last_failure: Option<u16>,
}

/// What one query found.
type Part = Result<Found, ResolveError>;

#[derive(Debug)]
struct Found {
    addrs: Vec<IpAddr>,
    canonical: String,
    ttl: u32,
}

/// One lookup: one query (A or AAAA) or two (both).
#[derive(Debug)]
struct LookupState {
    name: String,
    /// Query ids still on the wire, by part (0: A, 1: AAAA).
    ids: [Option<u16>; 2],
    parts: [Option<Part>; 2],
}

/// The resolver's state: queries on the wire, their deadlines, finished lookups.
#[derive(Debug)]
pub(crate) struct Lookups {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    tries_max: u32,
    rotate: bool,
    next_first: usize,
    max_queries: usize,
    edns_payload: Option<u16>,
    queries: HashMap<u16, Pending>,
    /// `(deadline, id)` of every query in `queries`, so the next deadline is the first.
    deadlines: BTreeSet<(Instant, u16)>,
    lookups: HashMap<u64, LookupState>,
    next_lookup: u64,
    /// Bounded by the queries on the wire: each input queues at most one send per query.
    transmits: VecDeque<Transmit>,
    /// Bounded by the lookups in flight: each finishes once.
    events: VecDeque<(LookupId, Result<Lookup, ResolveError>)>,
    ids: IdSource,
    stats: ResolverStats,
}

impl Lookups {
    /// A resolver core for a validated configuration.
    pub(crate) fn new(cfg: &ResolverConfig) -> Self {
        let n = cfg.servers.len().max(1) as u32;
        Lookups {
            servers: cfg.servers.clone(),
            timeout: cfg.timeout,
            tries_max: cfg.attempts.max(1).saturating_mul(n),
            rotate: cfg.rotate,
            next_first: 0,
            max_queries: cfg.max_outstanding,
            edns_payload: cfg.edns_payload,
            queries: HashMap::new(),
            deadlines: BTreeSet::new(),
            lookups: HashMap::new(),
            next_lookup: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            ids: IdSource::default(),
            stats: ResolverStats::default(),
        }
    }

    /// The counters.
    pub(crate) fn stats(&self) -> ResolverStats {
        ResolverStats { outstanding: self.queries.len() as u64, ..self.stats }
    }

    /// Counts a datagram the driver could not send.
    pub(crate) fn note_send_error(&mut self) {
        self.stats.send_errors += 1;
    }

    /// Lookups in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.lookups.len()
    }

    /// Starts a lookup. An IP literal finishes at once (its event is ready to poll).
    ///
    /// # Errors
    /// [`ResolveError::BadName`], [`ResolveError::TooManyQueries`], or
    /// [`ResolveError::Io`] when the random source fails; nothing was started.
    pub(crate) fn start(
        &mut self,
        now: Instant,
        name: &str,
        kind: LookupKind,
    ) -> Result<LookupId, ResolveError> {
        let lookup = self.next_lookup;
        if let Ok(ip) = name.parse::<IpAddr>() {
            let fits = matches!(
                (kind, ip),
                (LookupKind::Both, _)
                    | (LookupKind::A, IpAddr::V4(_))
                    | (LookupKind::Aaaa, IpAddr::V6(_))
            );
            let result = fits
                .then(|| Lookup {
                    name: name.to_owned(),
                    canonical_name: name.to_owned(),
                    addrs: vec![ip],
                    ttl: 0,
                })
                .ok_or(ResolveError::NoRecords);
            self.next_lookup += 1;
            self.stats.lookups += 1;
            self.events.push_back((LookupId(lookup), result));
            return Ok(LookupId(lookup));
        }
        let qname = wire::parse_name(name).ok_or(ResolveError::BadName)?;
        let types: &[(usize, RecordType)] = match kind {
            LookupKind::A => &[(0, RecordType::A)],
            LookupKind::Aaaa => &[(1, RecordType::AAAA)],
            LookupKind::Both => &[(0, RecordType::A), (1, RecordType::AAAA)],
        };
        if self.queries.len() + types.len() > self.max_queries {
            return Err(ResolveError::TooManyQueries);
        }
        let mut chosen = [None, None];
        for &(part, qtype) in types {
            let id = self.fresh_id(&chosen)?;
            chosen[part] = Some((id, build_query(id, &qname, qtype, self.edns_payload)?, qtype));
        }
        self.next_lookup += 1;
        self.stats.lookups += 1;
        let first_server = if self.rotate {
            self.next_first = (self.next_first + 1) % self.servers.len().max(1);
            self.next_first
        } else {
            0
        };
        let mut ids = [None; 2];
        for (part, (id, wire, qtype)) in
            chosen.into_iter().enumerate().filter_map(|(p, c)| Some((p, c?)))
        {
            ids[part] = Some(id);
            self.queries.insert(
                id,
                Pending {
                    lookup,
                    name: qname.clone(),
                    qtype,
                    wire,
                    first_server,
                    tries: 0,
                    sent_to: 0,
                    deadline: now,
                    last_failure: None,
                },
            );
            self.send_try(id, now);
        }
        self.lookups
            .insert(lookup, LookupState { name: name.to_owned(), ids, parts: [None, None] });
        Ok(LookupId(lookup))
    }

    /// A random id used by no query on the wire nor by `taken`.
    fn fresh_id(
        &mut self,
        taken: &[Option<(u16, Bytes, RecordType)>; 2],
    ) -> Result<u16, ResolveError> {
        for _ in 0..ID_DRAWS {
            let id = self.ids.next().map_err(ResolveError::Io)?;
            let in_use = taken.iter().flatten().any(|(t, _, _)| *t == id);
            if !in_use && !self.queries.contains_key(&id) {
                return Ok(id);
            }
        }
        Err(ResolveError::TooManyQueries)
    }

    /// Sends the next try of a query: the next server in its cycle, a fresh deadline.
    fn send_try(&mut self, id: u16, now: Instant) {
        let Some(q) = self.queries.get_mut(&id) else { return };
        let n = self.servers.len().max(1);
        let server = (q.first_server + q.tries as usize) % n;
        let Some(&to) = self.servers.get(server) else { return };
        self.deadlines.remove(&(q.deadline, id));
        if q.tries > 0 {
            self.stats.retries += 1;
        }
        q.tries += 1;
        q.sent_to |= 1 << server;
        q.deadline = now + self.timeout;
        self.deadlines.insert((q.deadline, id));
        self.stats.queries_sent += 1;
        self.transmits.push_back(Transmit { to, data: q.wire.clone() });
    }

    /// A datagram arrived on a resolver socket from `from`.
    pub(crate) fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let Some(h) = wire::raw_header(data) else {
            self.stats.unmatched += 1;
            return;
        };
        let Some(q) = self.queries.get(&h.id).filter(|_| h.is_response) else {
            self.stats.unmatched += 1;
            return;
        };
        let from_server = self.servers.iter().position(|s| *s == from);
        if from_server.is_none_or(|i| q.sent_to & (1 << i) == 0) {
            self.stats.wrong_source += 1;
            return;
        }
        let Ok(msg) = wire::decode(data) else {
            self.stats.malformed += 1;
            return;
        };
        let same_question = msg.metadata.op_code == OpCode::Query
            && msg.metadata.message_type == MessageType::Response
            && matches!(msg.queries.as_slice(), [one] if one.name == q.name
                && one.query_type == q.qtype
                && one.query_class == DNSClass::IN);
        if !same_question {
            self.stats.wrong_question += 1;
            return;
        }
        self.stats.answers += 1;
        let outcome = if msg.metadata.truncation {
            Err(ResolveError::Truncated)
        } else {
            match msg.metadata.response_code {
                ResponseCode::NoError => extract(&msg, &q.name, q.qtype),
                ResponseCode::NXDomain => Err(ResolveError::NxDomain),
                rcode => {
                    let (tries, rcode) = (q.tries, u16::from(rcode));
                    if tries < self.tries_max {
                        // Another server may do better: try it now rather than at the deadline.
                        if let Some(q) = self.queries.get_mut(&h.id) {
                            q.last_failure = Some(rcode);
                            // Servers that predate EDNS answer FORMERR to its OPT record
                            // (RFC 6891 §7): the next tries go without it.
                            if rcode == u16::from(ResponseCode::FormErr)
                                && msg.edns.is_none()
                                && let Ok(plain) = build_query(h.id, &q.name, q.qtype, None)
                            {
                                q.wire = plain;
                            }
                        }
                        self.send_try(h.id, now);
                        return;
                    }
                    Err(ResolveError::ServerFailure { rcode })
                }
            }
        };
        self.finish(h.id, outcome);
    }

    /// Retries or fails the queries whose deadline has passed.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(q) = self.queries.get(&id) else { continue };
            if q.tries < self.tries_max {
                self.send_try(id, now);
            } else {
                let err = match q.last_failure {
                    Some(rcode) => ResolveError::ServerFailure { rcode },
                    None => {
                        self.stats.timeouts += 1;
                        ResolveError::Timeout
                    }
                };
                self.finish(id, Err(err));
            }
        }
    }

    /// Fails every lookup in flight with [`ResolveError::Closed`].
    pub(crate) fn close(&mut self) {
        self.queries.clear();
        self.deadlines.clear();
        self.transmits.clear();
        let mut gone: Vec<u64> = self.lookups.drain().map(|(id, _)| id).collect();
        gone.sort_unstable();
        self.events.extend(gone.into_iter().map(|id| (LookupId(id), Err(ResolveError::Closed))));
    }

    /// Records a query's outcome; the lookup finishes when its last query does.
    fn finish(&mut self, id: u16, outcome: Part) {
        let Some(q) = self.queries.remove(&id) else { return };
        self.deadlines.remove(&(q.deadline, id));
        let Some(state) = self.lookups.get_mut(&q.lookup) else { return };
        let part = usize::from(q.qtype == RecordType::AAAA);
        let nx = matches!(outcome, Err(ResolveError::NxDomain));
        state.ids[part] = None;
        state.parts[part] = Some(outcome);
        if nx {
            // The name does not exist for any type: no need to wait for the other query.
            for sibling in state.ids.iter_mut().filter_map(Option::take) {
                if let Some(s) = self.queries.remove(&sibling) {
                    self.deadlines.remove(&(s.deadline, sibling));
                }
            }
        }
        if state.ids.iter().all(Option::is_none)
            && let Some(done) = self.lookups.remove(&q.lookup)
        {
            self.events.push_back((LookupId(q.lookup), combine(done)));
        }
    }

    /// The next datagram to send.
    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next finished lookup.
    pub(crate) fn poll_event(&mut self) -> Option<(LookupId, Result<Lookup, ResolveError>)> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }
}

/// Encodes a recursive query for `name`/`qtype`, with EDNS(0) when a payload size is given.
fn build_query(
    id: u16,
    name: &Name,
    qtype: RecordType,
    edns: Option<u16>,
) -> Result<Bytes, ResolveError> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(name.clone(), qtype));
    if let Some(size) = edns {
        let mut opt = Edns::new();
        opt.set_max_payload(size);
        msg.set_edns(opt);
    }
    msg.to_vec().map(Bytes::from).map_err(|_| ResolveError::BadName)
}

/// The addresses an answer gives for `qname`, following CNAMEs within the answer section.
fn extract(msg: &Message, qname: &Name, qtype: RecordType) -> Part {
    let mut name = qname;
    let mut addrs = Vec::new();
    let mut ttl = u32::MAX;
    for hop in 0..=MAX_CNAME_HOPS {
        for r in msg.answers.iter().filter(|r| r.dns_class == DNSClass::IN && r.name == *name) {
            let ip = match (&r.data, qtype) {
                (RData::A(a), RecordType::A) => IpAddr::V4(a.0),
                (RData::AAAA(a), RecordType::AAAA) => IpAddr::V6(a.0),
                _ => continue,
            };
            addrs.push(ip);
            ttl = ttl.min(r.ttl);
        }
        if !addrs.is_empty() || hop == MAX_CNAME_HOPS {
            break;
        }
        let cname = msg.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.dns_class == DNSClass::IN && r.name == *name => {
                ttl = ttl.min(r.ttl);
                Some(&target.0)
            }
            _ => None,
        });
        match cname {
            Some(target) => name = target,
            None => break,
        }
    }
    if addrs.is_empty() {
        return Err(ResolveError::NoRecords);
    }
    Ok(Found { addrs, canonical: wire::display_name(name), ttl })
}

/// The result of a lookup from its parts: any addresses make it a success; otherwise the most
/// telling error (NXDOMAIN, then the first error other than "no records").
fn combine(state: LookupState) -> Result<Lookup, ResolveError> {
    let mut addrs = Vec::new();
    let mut canonical = None;
    let mut ttl = u32::MAX;
    let mut errors = Vec::new();
    for part in state.parts.into_iter().flatten() {
        match part {
            Ok(found) => {
                addrs.extend(found.addrs);
                canonical.get_or_insert(found.canonical);
                ttl = ttl.min(found.ttl);
            }
            Err(e) => errors.push(e),
        }
    }
    if !addrs.is_empty() {
        let canonical_name = canonical.unwrap_or_else(|| state.name.clone());
        return Ok(Lookup { name: state.name, canonical_name, addrs, ttl });
    }
    if let Some(i) = errors.iter().position(|e| matches!(e, ResolveError::NxDomain)) {
        return Err(errors.swap_remove(i));
    }
    match errors.iter().position(|e| !matches!(e, ResolveError::NoRecords)) {
        Some(i) => Err(errors.swap_remove(i)),
        None => Err(ResolveError::NoRecords),
    }
}

#[cfg(test)]
#[path = "lookups_tests.rs"]
mod tests;
