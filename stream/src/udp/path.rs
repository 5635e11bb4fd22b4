//! A network path to the peer: its address, whether the peer has proved it receives there
//! (path validation, a PATH_CHALLENGE answered), and, until then, the anti-amplification
//! limit — at most three times the bytes received from that address may be sent to it, so
//! a spoofed source address cannot turn the server into an amplifier.

use std::net::SocketAddr;
use std::time::Instant;

use dap_net::enc::cipher::random_bytes;

/// The factor of the anti-amplification limit.
pub const AMPLIFICATION_FACTOR: u64 = 3;
/// Challenges sent on one path before it is given up.
pub const MAX_CHALLENGES: u8 = 3;

/// One path.
#[derive(Clone, Debug)]
pub struct Path {
    /// The peer's address on it.
    pub addr: SocketAddr,
    /// The peer answered a challenge here (or, on a client, chose it).
    pub validated: bool,
    received: u64,
    sent: u64,
    /// The challenge outstanding, and when it was last sent.
    challenge: Option<([u8; 8], Option<Instant>)>,
    challenges_sent: u8,
}

impl Path {
    /// A path known good from the start (a client's path to its server).
    pub fn validated(addr: SocketAddr) -> Self {
        Path { addr, validated: true, received: 0, sent: 0, challenge: None, challenges_sent: 0 }
    }

    /// A path to validate, with a fresh challenge.
    pub fn unvalidated(addr: SocketAddr) -> Self {
        let mut d = [0u8; 8];
        random_bytes(&mut d);
        Path {
            addr,
            validated: false,
            received: 0,
            sent: 0,
            challenge: Some((d, None)),
            challenges_sent: 0,
        }
    }

    /// Bytes received from the address.
    pub fn on_received(&mut self, n: u64) {
        self.received = self.received.saturating_add(n);
    }

    /// Bytes sent to the address.
    pub fn on_sent(&mut self, n: u64) {
        self.sent = self.sent.saturating_add(n);
    }

    /// Bytes that may still be sent before validation (unlimited once validated).
    pub fn budget(&self) -> u64 {
        if self.validated {
            u64::MAX
        } else {
            (AMPLIFICATION_FACTOR * self.received).saturating_sub(self.sent)
        }
    }

    /// The challenge to send now, if one is outstanding and not sent within `resend_after`
    /// (a lost challenge is sent again, up to [`MAX_CHALLENGES`] times).
    pub fn challenge_due(
        &mut self,
        now: Instant,
        resend_after: std::time::Duration,
    ) -> Option<[u8; 8]> {
        let (d, at) = self.challenge.as_mut()?;
        if at.is_some_and(|t| now < t + resend_after) || self.challenges_sent >= MAX_CHALLENGES {
            return None;
        }
        *at = Some(now);
        self.challenges_sent += 1;
        Some(*d)
    }

    /// A PATH_RESPONSE arrived: whether it answers this path's challenge (the path is then
    /// validated).
    pub fn on_response(&mut self, data: [u8; 8]) -> bool {
        if self.challenge.is_some_and(|(d, _)| d == data) {
            self.challenge = None;
            self.validated = true;
            return true;
        }
        false
    }

    /// Whether a challenge is outstanding on the path (sent or to be sent).
    pub fn challenging(&self) -> bool {
        self.challenge.is_some()
    }

    /// Whether the path is given up at `now`: its last challenge went unanswered for
    /// `wait` (a probe timeout), as every one before it did.
    pub fn abandoned(&self, now: Instant, wait: std::time::Duration) -> bool {
        !self.validated
            && self.challenges_sent >= MAX_CHALLENGES
            && self.challenge.is_some_and(|(_, at)| at.is_some_and(|t| now >= t + wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_unvalidated_path_sends_at_most_three_times_what_it_received() {
        let mut p = Path::unvalidated(SocketAddr::from(([127, 0, 0, 1], 1)));
        assert_eq!(p.budget(), 0);
        p.on_received(1200);
        assert_eq!(p.budget(), 3600);
        p.on_sent(3000);
        assert_eq!(p.budget(), 600);
        let t = Instant::now();
        let d = p.challenge_due(t, Duration::from_millis(100)).unwrap();
        assert!(p.challenge_due(t, Duration::from_millis(100)).is_none(), "not twice at once");
        let mut wrong = d;
        wrong[0] ^= 1;
        assert!(!p.on_response(wrong));
        assert!(p.on_response(d));
        assert!(p.validated);
        assert_eq!(p.budget(), u64::MAX);
    }

    #[test]
    fn challenges_are_resent_then_the_path_is_given_up() {
        let mut p = Path::unvalidated(SocketAddr::from(([127, 0, 0, 1], 1)));
        let t = Instant::now();
        let wait = Duration::from_millis(100);
        for i in 0..MAX_CHALLENGES as u32 {
            assert!(p.challenge_due(t + wait * i, wait).is_some());
        }
        assert!(p.challenge_due(t + wait * 10, wait).is_none());
        // The last challenge, too, has a probe timeout to be answered in.
        assert!(!p.abandoned(t + wait * 2, wait));
        assert!(!p.abandoned(t + wait * 3 - Duration::from_millis(1), wait));
        assert!(p.abandoned(t + wait * 3, wait));
    }
}
