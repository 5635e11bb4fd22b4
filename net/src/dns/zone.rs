//! The zone table an authoritative server answers from: A, AAAA, TXT and CNAME records under
//! one origin, filled and edited by the application while the server runs.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::ZoneError;
use super::wire;

/// CNAME links the server follows inside its own zone for one answer.
const MAX_CHAIN: usize = 8;
/// Longest character-string in a TXT record (RFC 1035 §3.3); longer text is split.
const TXT_CHUNK: usize = 255;

/// Which records [`Zone::remove_records`] removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecordKind {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
    /// Text.
    Txt,
    /// An alias.
    Cname,
}

impl RecordKind {
    fn record_type(self) -> RecordType {
        match self {
            RecordKind::A => RecordType::A,
            RecordKind::Aaaa => RecordType::AAAA,
            RecordKind::Txt => RecordType::TXT,
            RecordKind::Cname => RecordType::CNAME,
        }
    }
}

/// Records of one zone, keyed by owner name (case-insensitive).
///
/// Names are absolute (a trailing dot is optional) and must be the origin or below it.
/// Adding a record that is already there (same name, type and data) only updates its TTL. A
/// CNAME cannot share its name with other records. There are no wildcards, delegations or
/// DNSSEC; negative answers carry a synthesised SOA (serial bumped on every change) so
/// resolvers can cache them for [`set_negative_ttl`](Self::set_negative_ttl) seconds.
///
/// A server reads the zone through a [`SharedZone`]; edit it through the same handle.
#[derive(Clone, Debug)]
pub struct Zone {
    /// Lower case.
    origin: Name,
    nodes: HashMap<Name, Vec<Record>>,
    /// For every name between an owner and the origin (the origin included, the owner not):
    /// how many owners lie below it. A name here with no node is an empty non-terminal,
    /// which exists (NODATA), unlike a name in neither map (NXDOMAIN).
    below: HashMap<Name, u32>,
    records: usize,
    max_records: usize,
    serial: u32,
    negative_ttl: u32,
}

/// What the zone says about a question.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// The name is outside the zone.
    Outside,
    /// NOERROR with these answers (possibly only CNAMEs leaving the zone).
    Answer(Vec<Record>),
    /// NOERROR, no record of the type at the (last) name; the answers hold any CNAMEs.
    NoData(Vec<Record>),
    /// The (last) name does not exist; the answers hold any CNAMEs that led there.
    NxDomain(Vec<Record>),
}

impl Zone {
    /// Most bytes of text in one TXT record.
    pub const MAX_TXT_LEN: usize = 4096;
    /// Default cap on the records in a zone.
    pub const DEFAULT_MAX_RECORDS: usize = 65_536;

    /// An empty zone for `origin` (e.g. `"example.com"`).
    ///
    /// # Errors
    /// [`ZoneError::BadName`] for an invalid origin.
    pub fn new(origin: &str) -> Result<Zone, ZoneError> {
        let origin = wire::parse_name(origin).ok_or(ZoneError::BadName)?.to_lowercase();
        Ok(Zone {
            origin,
            nodes: HashMap::new(),
            below: HashMap::new(),
            records: 0,
            max_records: Zone::DEFAULT_MAX_RECORDS,
            serial: 1,
            negative_ttl: 60,
        })
    }

    /// Caps the number of records (default [`DEFAULT_MAX_RECORDS`](Self::DEFAULT_MAX_RECORDS));
    /// adding more fails with [`ZoneError::Full`].
    pub fn with_max_records(mut self, max: usize) -> Zone {
        self.max_records = max;
        self
    }

    /// The origin, without trailing dot.
    pub fn origin(&self) -> String {
        wire::display_name(&self.origin)
    }

    /// The SOA serial: bumped by every change.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// How long resolvers may cache a negative answer, in seconds (the SOA minimum and TTL).
    /// Default 60.
    pub fn set_negative_ttl(&mut self, ttl: u32) {
        self.negative_ttl = ttl;
        self.bump();
    }

    /// Records in the zone.
    pub fn len(&self) -> usize {
        self.records
    }

    /// True when the zone has no record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Adds an IPv4 address for `name`.
    ///
    /// # Errors
    /// [`ZoneError::BadName`], [`ZoneError::OutsideOrigin`], [`ZoneError::CnameConflict`],
    /// [`ZoneError::Full`].
    pub fn add_a(&mut self, name: &str, addr: Ipv4Addr, ttl: u32) -> Result<(), ZoneError> {
        self.add(name, ttl, RData::A(A(addr)))
    }

    /// Adds an IPv6 address for `name`.
    ///
    /// # Errors
    /// As [`add_a`](Self::add_a).
    pub fn add_aaaa(&mut self, name: &str, addr: Ipv6Addr, ttl: u32) -> Result<(), ZoneError> {
        self.add(name, ttl, RData::AAAA(AAAA(addr)))
    }

    /// Adds a TXT record; text over 255 bytes is split into several character-strings, as
    /// SPF and DKIM records are.
    ///
    /// # Errors
    /// As [`add_a`](Self::add_a), and [`ZoneError::TxtTooLong`] over
    /// [`MAX_TXT_LEN`](Self::MAX_TXT_LEN) bytes.
    pub fn add_txt(
        &mut self,
        name: &str,
        text: impl AsRef<[u8]>,
        ttl: u32,
    ) -> Result<(), ZoneError> {
        let text = text.as_ref();
        if text.len() > Zone::MAX_TXT_LEN {
            return Err(ZoneError::TxtTooLong);
        }
        let chunks: Vec<&[u8]> =
            if text.is_empty() { vec![&[][..]] } else { text.chunks(TXT_CHUNK).collect() };
        self.add(name, ttl, RData::TXT(TXT::from_bytes(chunks)))
    }

    /// Makes `name` an alias of `target` (which may be outside the zone). The server follows
    /// aliases within the zone when answering.
    ///
    /// # Errors
    /// As [`add_a`](Self::add_a); [`ZoneError::BadName`] for an invalid target;
    /// [`ZoneError::CnameConflict`] if `name` is the origin or has records (a second CNAME
    /// replaces the first).
    pub fn add_cname(&mut self, name: &str, target: &str, ttl: u32) -> Result<(), ZoneError> {
        let target = wire::parse_name(target).ok_or(ZoneError::BadName)?.to_lowercase();
        let owner = self.owner(name)?;
        if owner == self.origin {
            return Err(ZoneError::CnameConflict);
        }
        if self
            .nodes
            .get(&owner)
            .is_some_and(|rs| rs.iter().any(|r| r.record_type() == RecordType::CNAME))
        {
            self.remove_type(&owner, RecordType::CNAME);
        }
        self.add(name, ttl, RData::CNAME(CNAME(target)))
    }

    fn add(&mut self, name: &str, ttl: u32, data: RData) -> Result<(), ZoneError> {
        let owner = self.owner(name)?;
        let is_cname = matches!(data, RData::CNAME(_));
        if let Some(records) = self.nodes.get_mut(&owner) {
            if records.iter().any(|r| (r.record_type() == RecordType::CNAME) != is_cname) {
                return Err(ZoneError::CnameConflict);
            }
            if let Some(same) = records.iter_mut().find(|r| r.data == data) {
                same.ttl = ttl;
                self.bump();
                return Ok(());
            }
        }
        if self.records >= self.max_records {
            return Err(ZoneError::Full { max: self.max_records });
        }
        if !self.nodes.contains_key(&owner) {
            self.count_ancestors(&owner, true);
        }
        self.nodes.entry(owner.clone()).or_default().push(Record::from_rdata(owner, ttl, data));
        self.records += 1;
        self.bump();
        Ok(())
    }

    /// Removes every record of `name`; returns how many there were.
    pub fn remove(&mut self, name: &str) -> usize {
        let Ok(owner) = self.owner(name) else { return 0 };
        let Some(records) = self.nodes.remove(&owner) else { return 0 };
        self.count_ancestors(&owner, false);
        self.records -= records.len();
        self.bump();
        records.len()
    }

    /// Removes the records of one kind at `name`; returns how many there were.
    pub fn remove_records(&mut self, name: &str, kind: RecordKind) -> usize {
        match self.owner(name) {
            Ok(owner) => self.remove_type(&owner, kind.record_type()),
            Err(_) => 0,
        }
    }

    fn remove_type(&mut self, owner: &Name, rtype: RecordType) -> usize {
        let Some(records) = self.nodes.get_mut(owner) else { return 0 };
        let before = records.len();
        records.retain(|r| r.record_type() != rtype);
        let removed = before - records.len();
        if records.is_empty() {
            self.nodes.remove(owner);
            self.count_ancestors(owner, false);
        }
        self.records -= removed;
        if removed > 0 {
            self.bump();
        }
        removed
    }

    /// Removes every record.
    pub fn clear(&mut self) {
        self.nodes.clear();
        self.below.clear();
        self.records = 0;
        self.bump();
    }

    fn bump(&mut self) {
        // Serial arithmetic (RFC 1982) wraps; 0 is avoided as some tools treat it specially.
        self.serial = self.serial.wrapping_add(1).max(1);
    }

    /// A user's name as a key: parsed, lower case, and inside the zone.
    fn owner(&self, name: &str) -> Result<Name, ZoneError> {
        let name = wire::parse_name(name).ok_or(ZoneError::BadName)?.to_lowercase();
        if !self.origin.zone_of(&name) {
            return Err(ZoneError::OutsideOrigin);
        }
        Ok(name)
    }

    /// Adds (or removes) `owner` to the counts of its ancestors up to the origin.
    fn count_ancestors(&mut self, owner: &Name, add: bool) {
        let mut name = owner.clone();
        while name.num_labels() > self.origin.num_labels() {
            name = name.base_name();
            if add {
                *self.below.entry(name.clone()).or_insert(0) += 1;
            } else if let Some(n) = self.below.get_mut(&name) {
                *n -= 1;
                if *n == 0 {
                    self.below.remove(&name);
                }
            }
        }
    }

    /// The SOA the zone answers with: synthesised from the origin.
    pub(crate) fn soa(&self) -> Record {
        let label =
            |l: &str| Name::from_ascii(l).ok().and_then(|n| n.append_domain(&self.origin).ok());
        let mname = label("ns").unwrap_or_else(|| self.origin.clone());
        let rname = label("hostmaster").unwrap_or_else(|| self.origin.clone());
        let soa = SOA::new(mname, rname, self.serial, 3600, 600, 86400, self.negative_ttl);
        Record::from_rdata(self.origin.clone(), self.negative_ttl, RData::SOA(soa))
    }

    /// Answers a question: follows CNAMEs inside the zone, distinguishes NODATA (the name
    /// exists, possibly as an empty non-terminal) from NXDOMAIN. The first answers' owner is
    /// `qname` as asked (its case preserved, for resolvers that randomise it).
    pub(crate) fn find(&self, qname: &Name, qtype: RecordType) -> Found {
        if !self.origin.zone_of(qname) {
            return Found::Outside;
        }
        let mut answers = Vec::new();
        let mut name = qname.clone();
        for _ in 0..=MAX_CHAIN {
            let at_origin = name == self.origin;
            let records = self.nodes.get(&name).map(Vec::as_slice).unwrap_or_default();
            if records.is_empty() && !at_origin && !self.below.contains_key(&name) {
                return Found::NxDomain(answers);
            }
            if let Some(alias) = records.iter().find(|r| r.record_type() == RecordType::CNAME)
                && !matches!(qtype, RecordType::CNAME | RecordType::ANY)
            {
                let mut r = alias.clone();
                r.name = name.clone();
                answers.push(r);
                let RData::CNAME(target) = &alias.data else { break };
                name = target.0.clone();
                if !self.origin.zone_of(&name) {
                    return Found::Answer(answers);
                }
                continue;
            }
            let before = answers.len();
            if at_origin && matches!(qtype, RecordType::SOA | RecordType::ANY) {
                let mut soa = self.soa();
                soa.name = name.clone();
                answers.push(soa);
            }
            for r in records.iter().filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
            {
                let mut r = r.clone();
                r.name = name.clone();
                answers.push(r);
            }
            return if answers.len() > before {
                Found::Answer(answers)
            } else {
                Found::NoData(answers)
            };
        }
        // The chain is longer than we follow: give what we have, as a partial answer.
        Found::Answer(answers)
    }
}

/// A [`Zone`] shared between the application and the server's workers.
///
/// Workers take the read lock for each query, just long enough to build the answer; writers
/// take the write lock, so a batch of edits inside one [`write`](Self::write) is seen by
/// queries all at once. Keep write sections short (build a large zone before sharing it, or
/// swap it in with one assignment): workers wait for them.
#[derive(Clone, Debug)]
pub struct SharedZone {
    inner: Arc<RwLock<Zone>>,
}

impl SharedZone {
    /// Shares `zone`.
    pub fn new(zone: Zone) -> Self {
        SharedZone { inner: Arc::new(RwLock::new(zone)) }
    }

    /// Read access. A writer that panicked leaves the zone as it was edited so far; readers
    /// carry on with it rather than fail every query.
    pub fn read(&self) -> RwLockReadGuard<'_, Zone> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Write access, for edits the server sees from its next query on.
    pub fn write(&self) -> RwLockWriteGuard<'_, Zone> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl From<Zone> for SharedZone {
    fn from(zone: Zone) -> Self {
        SharedZone::new(zone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        wire::parse_name(s).unwrap()
    }

    fn zone() -> Zone {
        let mut z = Zone::new("Example.COM.").unwrap();
        z.add_a("www.example.com", Ipv4Addr::new(192, 0, 2, 1), 300).unwrap();
        z.add_a("WWW.example.com.", Ipv4Addr::new(192, 0, 2, 2), 60).unwrap();
        z.add_aaaa("www.example.com", Ipv6Addr::LOCALHOST, 300).unwrap();
        z.add_txt("deep.a.b.example.com", "hello", 10).unwrap();
        z.add_cname("alias.example.com", "www.example.com", 30).unwrap();
        z.add_cname("out.example.com", "elsewhere.example.net", 30).unwrap();
        z
    }

    fn answers(found: Found) -> Vec<(String, RecordType, u32)> {
        let (Found::Answer(rs) | Found::NoData(rs) | Found::NxDomain(rs)) = found else {
            panic!("outside")
        };
        rs.iter().map(|r| (r.name.to_ascii(), r.record_type(), r.ttl)).collect()
    }

    #[test]
    fn lookups_are_case_insensitive_and_keep_the_question_case() {
        let z = zone();
        assert_eq!(z.origin(), "example.com");
        assert_eq!(z.len(), 6);
        let asked = Name::from_ascii("wWw.Example.com.").unwrap();
        let got = answers(z.find(&asked, RecordType::A));
        assert_eq!(
            got,
            [
                ("wWw.Example.com.".into(), RecordType::A, 300),
                ("wWw.Example.com.".into(), RecordType::A, 60)
            ]
        );
        assert_eq!(answers(z.find(&n("www.example.com"), RecordType::AAAA)).len(), 1);
        assert!(
            matches!(z.find(&n("www.example.com"), RecordType::TXT), Found::NoData(rs) if rs.is_empty())
        );
        assert!(matches!(z.find(&n("nope.example.com"), RecordType::A), Found::NxDomain(_)));
        assert_eq!(z.find(&n("example.org"), RecordType::A), Found::Outside);
        assert_eq!(z.find(&n("com"), RecordType::A), Found::Outside);
    }

    #[test]
    fn empty_non_terminals_and_the_origin_exist() {
        let mut z = zone();
        for ent in ["a.b.example.com", "b.example.com", "example.com"] {
            assert!(matches!(z.find(&n(ent), RecordType::A), Found::NoData(_)), "{ent}");
        }
        assert!(matches!(z.find(&n("c.b.example.com"), RecordType::A), Found::NxDomain(_)));
        let soa = answers(z.find(&n("example.com"), RecordType::SOA));
        assert_eq!(soa, [("example.com.".into(), RecordType::SOA, 60)]);
        assert_eq!(z.remove("deep.a.b.example.com"), 1);
        assert!(matches!(z.find(&n("b.example.com"), RecordType::A), Found::NxDomain(_)));
        assert!(z.below.is_empty() || z.below.keys().all(|k| *k == n("example.com")));
    }

    #[test]
    fn cnames_are_followed_inside_the_zone() {
        let z = zone();
        let got = answers(z.find(&n("alias.example.com"), RecordType::A));
        assert_eq!(got[0], ("alias.example.com.".into(), RecordType::CNAME, 30));
        assert_eq!(
            &got[1..],
            [
                ("www.example.com.".into(), RecordType::A, 300),
                ("www.example.com.".into(), RecordType::A, 60)
            ]
        );
        assert!(
            matches!(z.find(&n("alias.example.com"), RecordType::TXT), Found::NoData(rs) if rs.len() == 1)
        );
        assert!(
            matches!(z.find(&n("out.example.com"), RecordType::A), Found::Answer(rs) if rs.len() == 1)
        );
        assert_eq!(answers(z.find(&n("alias.example.com"), RecordType::CNAME)).len(), 1);
        let mut looped = Zone::new("example.com").unwrap();
        looped.add_cname("a.example.com", "b.example.com", 1).unwrap();
        looped.add_cname("b.example.com", "a.example.com", 1).unwrap();
        assert!(
            matches!(looped.find(&n("a.example.com"), RecordType::A), Found::Answer(rs) if rs.len() == MAX_CHAIN + 1)
        );
    }

    #[test]
    fn edits_are_checked_and_bounded() {
        let mut z = zone().with_max_records(7);
        let serial = z.serial();
        assert_eq!(z.add_a("x.example.org", Ipv4Addr::LOCALHOST, 1), Err(ZoneError::OutsideOrigin));
        assert_eq!(z.add_a("", Ipv4Addr::LOCALHOST, 1), Err(ZoneError::BadName));
        assert_eq!(
            z.add_a("alias.example.com", Ipv4Addr::LOCALHOST, 1),
            Err(ZoneError::CnameConflict)
        );
        assert_eq!(
            z.add_cname("www.example.com", "x.example.com", 1),
            Err(ZoneError::CnameConflict)
        );
        assert_eq!(z.add_cname("example.com", "x.example.com", 1), Err(ZoneError::CnameConflict));
        assert_eq!(
            z.add_txt("t.example.com", vec![b'x'; Zone::MAX_TXT_LEN + 1], 1),
            Err(ZoneError::TxtTooLong)
        );
        assert_eq!(z.serial(), serial, "refused edits change nothing");
        // The same data again only updates the TTL.
        z.add_a("www.example.com", Ipv4Addr::new(192, 0, 2, 1), 5).unwrap();
        assert_eq!(z.len(), 6);
        z.add_txt("t.example.com", vec![b'x'; 600], 1).unwrap();
        assert_eq!(
            z.add_a("full.example.com", Ipv4Addr::LOCALHOST, 1),
            Err(ZoneError::Full { max: 7 })
        );
        let Found::Answer(txt) = z.find(&n("t.example.com"), RecordType::TXT) else { panic!() };
        let RData::TXT(t) = &txt[0].data else { panic!() };
        assert_eq!(t.txt_data.iter().map(|c| c.len()).collect::<Vec<_>>(), [255, 255, 90]);
        // Re-pointing a CNAME replaces it.
        z.add_cname("alias.example.com", "t.example.com", 1).unwrap();
        assert_eq!(z.len(), 7);
        assert_eq!(z.remove_records("www.example.com", RecordKind::A), 2);
        assert_eq!(z.remove_records("www.example.com", RecordKind::A), 0);
        assert_eq!(z.remove("nothing.example.com"), 0);
        assert!(z.serial() > serial);
        z.clear();
        assert!(z.is_empty());
        assert!(matches!(z.find(&n("www.example.com"), RecordType::AAAA), Found::NxDomain(_)));
    }

    #[test]
    fn shared_zone_edits_are_visible() {
        let shared = SharedZone::from(Zone::new("example.com").unwrap());
        let clone = shared.clone();
        clone.write().add_a("new.example.com", Ipv4Addr::LOCALHOST, 1).unwrap();
        assert_eq!(shared.read().len(), 1);
    }
}
