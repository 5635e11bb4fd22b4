//! Key updates on UDP (RFC 9001 §6 in spirit), sans-IO. Packets can arrive reordered, so,
//! unlike the ordered stream (§7.1), the receiver keeps the previous key for late packets
//! of the old phase and tries the next key only for a flipped phase on a packet number
//! at or past the start of the current phase. The sender moves on only once a packet of
//! its current phase has been acknowledged, so the peer has the key it is about to retire.

use dap_net::enc::cipher::AeadKey;

use super::packet::{self, Header};
use crate::codec::keys::KeyChain;
use crate::codec::packet::Direction;

/// The sending side's keys.
#[derive(Debug)]
pub struct SendKeys {
    chain: KeyChain,
    key: AeadKey,
    phase: bool,
    under_key: u64,
    update_after: u64,
    phase_start: u64,
    acked_in_phase: bool,
}

impl SendKeys {
    /// Keys starting at the chain's generation 0, updating every `update_after` packets.
    pub fn new(chain: KeyChain, update_after: u64) -> Self {
        SendKeys {
            key: chain.key(),
            chain,
            phase: false,
            under_key: 0,
            update_after: update_after.max(1),
            phase_start: 0,
            acked_in_phase: false,
        }
    }

    /// The key and phase for packet `pn`, moving to the next key first when this one has
    /// sealed its share and the peer has acknowledged a packet under it.
    pub fn for_packet(&mut self, pn: u64) -> (&AeadKey, bool) {
        if self.under_key >= self.update_after && self.acked_in_phase {
            self.chain.advance();
            self.key = self.chain.key();
            self.phase = !self.phase;
            self.under_key = 0;
            self.phase_start = pn;
            self.acked_in_phase = false;
        }
        self.under_key += 1;
        (&self.key, self.phase)
    }

    /// Whether the next [`for_packet`](Self::for_packet) moves to the next key (packets
    /// sealed later must be sealed before it does).
    pub fn updates_next(&self) -> bool {
        self.under_key >= self.update_after && self.acked_in_phase
    }

    /// The key of the current phase.
    pub fn current(&self) -> &AeadKey {
        &self.key
    }

    /// The peer acknowledged packets up to `largest`.
    pub fn on_acked(&mut self, largest: u64) {
        if largest >= self.phase_start {
            self.acked_in_phase = true;
        }
    }

    /// Updates done.
    pub fn updates(&self) -> u64 {
        self.chain.generation()
    }
}

/// The receiving side's keys.
#[derive(Debug)]
pub struct RecvKeys {
    chain: KeyChain,
    key: AeadKey,
    phase: bool,
    /// The key before the last update, for late packets of the old phase.
    prev: Option<AeadKey>,
    /// The lowest packet number opened under the current key.
    phase_start: Option<u64>,
    /// The next generation, derived once (a forged flipped packet costs no derivation).
    next: Option<(KeyChain, AeadKey)>,
}

impl RecvKeys {
    /// Keys starting at the chain's generation 0.
    pub fn new(chain: KeyChain) -> Self {
        RecvKeys {
            key: chain.key(),
            chain,
            phase: false,
            prev: None,
            phase_start: None,
            next: None,
        }
    }

    /// Updates followed.
    pub fn updates(&self) -> u64 {
        self.chain.generation()
    }

    /// The current key and its phase: a batch's packets of that phase are opened with it
    /// at once, then each reported with [`opened_current`](Self::opened_current).
    pub fn current(&self) -> (&AeadKey, bool) {
        (&self.key, self.phase)
    }

    /// Whether packet `pn` of the previous phase is a late one the previous key still
    /// opens (it precedes the current phase's first packet).
    pub fn late_for_previous(&self, pn: u64) -> bool {
        self.prev.is_some() && self.phase_start.is_some_and(|s| pn < s)
    }

    /// A packet of the current phase was opened with [`current`](Self::current)'s key.
    pub fn opened_current(&mut self, pn: u64) {
        self.phase_start = Some(self.phase_start.map_or(pn, |s| s.min(pn)));
    }

    /// Authenticates and decrypts a datagram with the key its phase and number select;
    /// `None` when it does not verify (nothing changes then).
    pub fn open<'a>(
        &mut self,
        dir: Direction,
        hdr: &Header,
        datagram: &'a mut [u8],
    ) -> Option<&'a mut [u8]> {
        if hdr.key_phase == self.phase {
            let plain = packet::open(&self.key, dir, hdr, datagram)?;
            self.opened_current(hdr.pn);
            return Some(plain);
        }
        if self.phase_start.is_some_and(|s| hdr.pn < s) {
            // A late packet of the previous phase.
            return packet::open(self.prev.as_ref()?, dir, hdr, datagram);
        }
        if self.next.is_none() {
            let n = self.chain.next();
            let k = n.key();
            self.next = Some((n, k));
        }
        let (_, key) = self.next.as_ref().expect("set above");
        let plain = packet::open(key, dir, hdr, datagram)?;
        let (chain, key) = self.next.take().expect("set above");
        self.prev = Some(std::mem::replace(&mut self.key, key));
        self.chain = chain;
        self.phase = hdr.key_phase;
        self.phase_start = Some(hdr.pn);
        Some(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::packet::{ConnectionId, LABELS};
    use dap_net::enc::cipher::CipherSuite;

    fn chain() -> KeyChain {
        KeyChain::with_labels(LABELS, CipherSuite::Aes256Gcm, [4; 32])
    }

    fn packet(keys: &mut SendKeys, pn: u64) -> Vec<u8> {
        let (key, phase) = keys.for_packet(pn);
        let hdr = Header { cid: ConnectionId([1; 8]), key_phase: phase, pn };
        let mut out = Vec::new();
        let start = packet::begin(&mut out);
        out.push(1);
        packet::seal(key, Direction::ClientToServer, &hdr, &mut out, start);
        out
    }

    fn open(r: &mut RecvKeys, mut p: Vec<u8>) -> bool {
        let hdr = packet::parse_header(&p).unwrap();
        r.open(Direction::ClientToServer, &hdr, &mut p).is_some()
    }

    #[test]
    fn updates_wait_for_an_ack_and_late_packets_of_the_old_phase_still_open() {
        let mut s = SendKeys::new(chain(), 2);
        let mut r = RecvKeys::new(chain());
        let p: Vec<Vec<u8>> = (0..3).map(|pn| packet(&mut s, pn)).collect();
        assert_eq!(s.updates(), 0, "no update before an ACK of the current phase");
        s.on_acked(1);
        let p3 = packet(&mut s, 3);
        assert_eq!(s.updates(), 1);
        // Packets 0 and 3 arrive, then the late 1 and 2 of the old phase.
        assert!(open(&mut r, p[0].clone()));
        assert!(open(&mut r, p3));
        assert_eq!(r.updates(), 1);
        assert!(open(&mut r, p[2].clone()));
        assert!(open(&mut r, p[1].clone()));
        assert_eq!(r.updates(), 1);
    }

    #[test]
    fn a_forged_flip_changes_nothing() {
        let mut s = SendKeys::new(chain(), 1 << 20);
        let mut r = RecvKeys::new(chain());
        assert!(open(&mut r, packet(&mut s, 0)));
        let mut bad = packet(&mut s, 1);
        bad[0] ^= packet::KEY_PHASE;
        assert!(!open(&mut r, bad));
        assert_eq!(r.updates(), 0);
        assert!(open(&mut r, packet(&mut s, 2)));
    }
}
