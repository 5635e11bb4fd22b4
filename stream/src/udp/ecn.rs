//! Explicit Congestion Notification, sans-IO: the codepoints, and the sender's validation
//! of the path and the peer's counts (RFC 9000 §13.4, RFC 3168).
//!
//! The driver reports the codepoint each datagram arrived with (where its socket can read
//! it) and marks what it sends as [`Transmit::ecn`](super::connection::Transmit::ecn)
//! says. A receiver counts the codepoints of the packets it processes and reports the
//! counts in ACK_ECN frames. A sender marks its packets ECT(0) while the path is being
//! validated and after it passed, and checks every ACK that acknowledges something new:
//! - an ACK that newly acknowledges marked packets without ECN counts, counts that go
//!   down, counts above what was sent marked, or an increase of ECT(0) + CE smaller than
//!   the marked packets newly acknowledged: the path or the peer mangles ECN, and the
//!   sender stops marking for the rest of the connection;
//! - while testing, if every marked packet sent so far (at least [`TESTING_PACKETS`]) was
//!   lost, the path drops marked packets: stop marking;
//! - the first ACK whose counts check out makes the path capable;
//! - a CE count that grows is a congestion signal, handled as a loss would be but with
//!   nothing lost (once per round trip, by the congestion controller's recovery period).

use super::frame::EcnCounts;

/// The ECN field of an IP header: the reactor's codepoint, which its UDP sockets report
/// and set, so the driver hands it through as it is.
pub use dap_reactor::Ecn;

/// Marked packets that must all be lost, while testing, before the path is taken as one
/// that drops them.
pub const TESTING_PACKETS: u64 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Testing,
    Capable,
    Failed,
}

/// What an ACK's ECN counts said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EcnOutcome {
    /// The CE count grew: a congestion signal.
    pub congestion: bool,
    /// Validation failed with this ACK: marking stops.
    pub failed: bool,
}

/// The sender's side of ECN for one path.
#[derive(Clone, Debug)]
pub struct EcnValidator {
    state: State,
    /// Packets sent marked ECT(0).
    sent_marked: u64,
    /// Marked packets acknowledged.
    acked_marked: u64,
    /// Marked packets declared lost.
    lost_marked: u64,
    /// The peer's counts as last reported.
    peer: EcnCounts,
    /// CE marks the peer reported in all.
    ce_reported: u64,
}

impl EcnValidator {
    /// Validation of a new path, marking on (`enabled`), or never marking.
    pub fn new(enabled: bool) -> Self {
        EcnValidator {
            state: if enabled { State::Testing } else { State::Failed },
            sent_marked: 0,
            acked_marked: 0,
            lost_marked: 0,
            peer: EcnCounts::default(),
            ce_reported: 0,
        }
    }

    /// How to mark the next packet.
    pub fn mark(&self) -> Ecn {
        if self.state == State::Failed { Ecn::NotEct } else { Ecn::Ect0 }
    }

    /// A packet went out marked `ecn`.
    pub fn on_sent(&mut self, ecn: Ecn) {
        if ecn == Ecn::Ect0 {
            self.sent_marked += 1;
        }
    }

    /// Whether the path was validated as carrying ECN.
    pub fn capable(&self) -> bool {
        self.state == State::Capable
    }

    /// Whether marking stopped.
    pub fn failed(&self) -> bool {
        self.state == State::Failed
    }

    /// CE marks the peer reported.
    pub fn ce_reported(&self) -> u64 {
        self.ce_reported
    }

    fn fail(&mut self) -> EcnOutcome {
        self.state = State::Failed;
        EcnOutcome { congestion: false, failed: true }
    }

    /// An ACK that raised the largest acknowledged packet newly acknowledged
    /// `newly_marked` packets sent ECT(0), and carried `counts` (ACK_ECN) or not (ACK).
    pub fn on_ack(&mut self, newly_marked: u64, counts: Option<EcnCounts>) -> EcnOutcome {
        if self.state == State::Failed {
            return EcnOutcome::default();
        }
        self.acked_marked += newly_marked;
        let Some(c) = counts else {
            return if newly_marked > 0 { self.fail() } else { EcnOutcome::default() };
        };
        let p = self.peer;
        if c.ect0 < p.ect0 || c.ect1 < p.ect1 || c.ce < p.ce {
            return self.fail();
        }
        // Nothing was sent ECT(1); and no count can pass what was sent marked. (The counts
        // are the peer's word: any u64, so no sum of them may overflow.)
        if c.ect1 > 0 || c.ect0.saturating_add(c.ce) > self.sent_marked {
            return self.fail();
        }
        // Both within `sent_marked` now, so these cannot overflow.
        if (c.ect0 - p.ect0) + (c.ce - p.ce) < newly_marked {
            return self.fail();
        }
        self.peer = c;
        let congestion = c.ce > p.ce;
        self.ce_reported += c.ce - p.ce;
        if newly_marked > 0 {
            self.state = State::Capable;
        }
        EcnOutcome { congestion, failed: false }
    }

    /// `n` marked packets were declared lost. Returns whether validation failed (every
    /// marked packet of the test was lost).
    pub fn on_lost(&mut self, n: u64) -> bool {
        self.lost_marked += n;
        if self.state == State::Testing
            && self.acked_marked == 0
            && self.lost_marked >= TESTING_PACKETS
            && self.lost_marked == self.sent_marked
        {
            self.state = State::Failed;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(ect0: u64, ce: u64) -> Option<EcnCounts> {
        Some(EcnCounts { ect0, ect1: 0, ce })
    }

    fn sent(v: &mut EcnValidator, n: u64) {
        for _ in 0..n {
            v.on_sent(v.mark());
        }
    }

    #[test]
    fn honest_counts_validate_the_path_and_ce_is_a_congestion_signal() {
        let mut v = EcnValidator::new(true);
        assert_eq!(v.mark(), Ecn::Ect0);
        sent(&mut v, 10);
        assert_eq!(v.on_ack(4, counts(4, 0)), EcnOutcome::default());
        assert!(v.capable());
        // Two of the next three acknowledged came marked CE.
        let out = v.on_ack(3, counts(5, 2));
        assert!(out.congestion && !out.failed);
        assert_eq!(v.ce_reported(), 2);
        // An ACK acknowledging nothing new, with the same counts: nothing.
        assert_eq!(v.on_ack(0, counts(5, 2)), EcnOutcome::default());
        assert_eq!(v.mark(), Ecn::Ect0);
    }

    #[test]
    fn mangled_or_missing_counts_stop_marking() {
        // Acknowledged marked packets without counts (the path bleaches ECN, or the peer
        // does not report it).
        let mut v = EcnValidator::new(true);
        sent(&mut v, 5);
        assert!(v.on_ack(2, None).failed);
        assert_eq!(v.mark(), Ecn::NotEct);
        // Counts that go down, that exceed what was sent, that fall short of what was
        // acknowledged, or that show ECT(1) nobody sent.
        for (first, second) in [
            (counts(3, 0), counts(2, 0)),
            (counts(3, 0), counts(30, 0)),
            (counts(3, 0), counts(3, 0)),
            (counts(3, 0), Some(EcnCounts { ect0: 3, ect1: 1, ce: 0 })),
        ] {
            let mut v = EcnValidator::new(true);
            sent(&mut v, 10);
            assert!(!v.on_ack(3, first).failed);
            assert!(v.on_ack(2, second).failed, "{second:?}");
            assert_eq!(v.mark(), Ecn::NotEct);
            assert_eq!(v.on_ack(2, counts(100, 100)), EcnOutcome::default(), "failed stays");
        }
        // Counts near 2^64 (the peer's word) fail validation, never overflow.
        let mut v = EcnValidator::new(true);
        sent(&mut v, 5);
        let huge = Some(EcnCounts { ect0: u64::MAX - 1, ect1: 0, ce: 3 });
        assert!(v.on_ack(1, huge).failed);
        // Off from the start: nothing is marked.
        assert_eq!(EcnValidator::new(false).mark(), Ecn::NotEct);
    }

    #[test]
    fn a_path_that_drops_marked_packets_is_detected_while_testing() {
        let mut v = EcnValidator::new(true);
        sent(&mut v, 10);
        assert!(!v.on_lost(9));
        assert!(v.on_lost(1));
        assert!(v.failed());
        // Losses after the path proved itself are only losses.
        let mut v = EcnValidator::new(true);
        sent(&mut v, 20);
        v.on_ack(1, counts(1, 0));
        assert!(!v.on_lost(19));
        assert!(v.capable());
    }

    #[test]
    fn codepoints_come_from_the_low_two_bits() {
        assert_eq!(Ecn::from_bits(0xb8), Ecn::NotEct);
        assert_eq!(Ecn::from_bits(0x02), Ecn::Ect0);
        assert_eq!(Ecn::from_bits(0x01), Ecn::Ect1);
        assert_eq!(Ecn::from_bits(0xff), Ecn::Ce);
    }
}
