//! One pub/sub run of `cluster`: a publisher session on one node, a subscriber session on
//! the same node or another, channel `'P'`, the publisher paced one of three ways
//! ([`Pace`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use dap_stream::pubsub::{ErrorCode, PubSubMsg, Topic};

use super::{Usage, percentiles_us};
use crate::dapclient::{self, StreamClient};

/// How long the subscriber waits for the messages still on their way once the publisher
/// has stopped (and had its last ACK).
const DRAIN: Duration = Duration::from_secs(1);
/// How long the publisher sleeps while the subscriber is `window` messages behind
/// ([`Pace::Received`]) and no ACK is due.
const BEHIND_SLEEP: Duration = Duration::from_micros(20);
/// How long one read of the subscriber may block before it looks at the clock again.
const POLL: Duration = Duration::from_millis(50);
/// How long the warm-up may take: until a message reaches the subscriber.
const WARM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the publisher waits for an ACK.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// How the publisher paces itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// At most `window` PUBLISH messages unacknowledged, as fast as the ACKs come back. An
    /// ACK says the message is queued to the node's subscribers and handed to the relay,
    /// not that it was received: nothing holds the publisher back when the subscriber, the
    /// relay or the other node falls behind.
    Acks,
    /// At most `window` messages published and not yet received by the subscriber (nor
    /// more than `window` unacknowledged): the most the path carries without queues
    /// filling anywhere.
    Received,
    /// One PUBLISH every 1/N s, each acknowledged before the next: latency with the nodes
    /// far from busy.
    Rate(u32),
}

impl Pace {
    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Pace::Acks => "acks",
            Pace::Received => "e2e",
            Pace::Rate(_) => "paced",
        }
    }
}

/// Where the two ends of a run are, and how it runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The publisher's node, and its key.
    pub publisher: (SocketAddr, [u8; 32]),
    /// The subscriber's node, and its key.
    pub subscriber: (SocketAddr, [u8; 32]),
    /// The topic (one per run, so that nothing late from an earlier run counts).
    pub topic: Topic,
    /// How the publisher paces itself.
    pub pace: Pace,
    /// PUBLISH messages the publisher keeps in flight at most (see [`Pace`]).
    pub window: usize,
    /// Bytes of each payload (at least 16: sequence number and timestamp).
    pub payload: usize,
    /// Publishing before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub secs: Duration,
    /// Processes whose CPU time is the run's own (this one, the nodes, Redis).
    pub pids: Vec<u32>,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Messages the subscriber received within the measured window, per second.
    pub msgs_per_s: f64,
    /// Publish-to-receipt latency of the messages published within the window: p50, p99
    /// (µs).
    pub p50_us: f64,
    /// See [`p50_us`](Self::p50_us).
    pub p99_us: f64,
    /// PUBLISH messages sent (after the warm-up handshake), and acknowledged.
    pub published: u64,
    /// See [`published`](Self::published).
    pub acked: u64,
    /// Messages the subscriber received (all of the run, not only the window).
    pub received: u64,
    /// Messages published and never received by the time the subscriber gave up.
    pub lost: u64,
    /// Messages that came out of order (a sequence number not above the last one).
    pub out_of_order: u64,
    /// ERROR `slow-subscriber` the subscriber was sent (it subscribes again each time).
    pub slow_errors: u64,
    /// The sum of the ACKs' `dropped` counts.
    pub acks_dropped: u64,
    /// CPU use over the window.
    pub usage: Usage,
    /// The first thing that went wrong (an ERROR answer, a timeout), if anything did.
    pub first_error: Option<String>,
}

/// What the subscriber saw.
#[derive(Default)]
struct Seen {
    /// Receipt time and publish time of every message, in ns since the run's base.
    times: Vec<(u64, u64)>,
    out_of_order: u64,
    slow_errors: u64,
    error: Option<String>,
}

/// What the publisher did.
#[derive(Default)]
struct Sent {
    published: u64,
    acked: u64,
    dropped: u64,
    error: Option<String>,
}

/// A payload: `seq` (u64), the publish time in ns since `base` (u64), then zeros.
fn payload(seq: u64, t_ns: u64, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len.max(16));
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&t_ns.to_be_bytes());
    p.resize(len.max(16), 0);
    p
}

/// The sequence number and publish time of a payload made by [`payload`].
fn read_payload(p: &[u8]) -> Option<(u64, u64)> {
    let (seq, rest) = p.split_first_chunk::<8>()?;
    let (t, _) = rest.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*seq), u64::from_be_bytes(*t)))
}

/// Opens a session with channel `'P'` at `at`, keeping what arrives.
fn open(at: (SocketAddr, [u8; 32])) -> Result<StreamClient, String> {
    let (conn, params) = dapclient::open_session(at.0, at.1, b"P", None)?;
    Ok(StreamClient::with_inbox(conn, &params))
}

/// One run. Each end is a thread with its own session (a client is not `Send`): the
/// subscriber subscribes; the publisher then publishes sequence number 0, one at a time,
/// until one reaches the subscriber (so the relay of the subscriber's node is subscribed
/// to Redis), and then `warmup` + `secs` with `window` PUBLISH messages in flight. This
/// thread samples the CPUs over the measured window.
pub fn run(plan: &Plan) -> Result<Outcome, String> {
    let origin = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let last_seq = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<()>(1);
    let (warm_tx, warm_rx) = crossbeam_channel::bounded::<()>(1);
    let (window_tx, window_rx) = crossbeam_channel::bounded::<(Instant, Instant)>(1);
    let subscriber = {
        let (done, last_seq, plan) = (done.clone(), last_seq.clone(), plan.clone());
        let received = received.clone();
        thread::Builder::new()
            .name("cluster-sub".into())
            .spawn(move || {
                let opened = open(plan.subscriber).and_then(|mut c| {
                    c.subscribe(&plan.topic)?;
                    Ok(c)
                });
                match opened {
                    Ok(mut c) => {
                        let _ = ready_tx.send(());
                        let ends = Ends { done: &done, last_seq: &last_seq, received: &received };
                        subscribe_loop(&mut c, &plan.topic, origin, &ends, &warm_tx)
                    }
                    Err(e) => Seen { error: Some(format!("subscriber: {e}")), ..Seen::default() },
                }
            })
            .map_err(|e| format!("thread: {e}"))?
    };
    let publisher = {
        let (done, last_seq, plan) = (done.clone(), last_seq.clone(), plan.clone());
        let received = received.clone();
        thread::Builder::new()
            .name("cluster-pub".into())
            .spawn(move || {
                let warmed = open(plan.publisher).and_then(|mut c| {
                    ready_rx
                        .recv_timeout(WARM_TIMEOUT)
                        .map_err(|_| "the subscriber did not subscribe".to_string())?;
                    warm_up(&mut c, &warm_rx, &plan)?;
                    Ok(c)
                });
                match warmed {
                    Ok(mut c) => {
                        let from = Instant::now() + plan.warmup;
                        let to = from + plan.secs;
                        let _ = window_tx.send((from, to));
                        let ends = Ends { done: &done, last_seq: &last_seq, received: &received };
                        publish_loop(&mut c, &plan, origin, to, &ends)
                    }
                    Err(e) => {
                        done.store(true, Ordering::SeqCst);
                        Sent { error: Some(format!("publisher: {e}")), ..Sent::default() }
                    }
                }
            })
            .map_err(|e| format!("thread: {e}"))?
    };
    let window = window_rx.recv_timeout(WARM_TIMEOUT * 3);
    let usage = window.map(|(from, to)| (from, to, Usage::over(&plan.pids, from, to)));
    let sent = publisher.join().map_err(|_| "the publisher panicked".to_string())?;
    done.store(true, Ordering::SeqCst);
    let seen = subscriber.join().map_err(|_| "the subscriber panicked".to_string())?;
    let Ok((measure_from, measure_to, usage)) = usage else {
        let e = sent.error.or(seen.error).unwrap_or_else(|| "no measured window".into());
        return Err(e);
    };

    let ns = |t: Instant| t.duration_since(origin).as_nanos() as u64;
    let (from_ns, to_ns) = (ns(measure_from), ns(measure_to));
    let in_window = seen.times.iter().filter(|(r, _)| (from_ns..to_ns).contains(r)).count();
    let mut lat: Vec<u64> = seen
        .times
        .iter()
        .filter(|(_, p)| (from_ns..to_ns).contains(p))
        .map(|(r, p)| r.saturating_sub(*p))
        .collect();
    let (p50_us, p99_us) = percentiles_us(&mut lat);
    let received = seen.times.len() as u64;
    Ok(Outcome {
        msgs_per_s: in_window as f64 / plan.secs.as_secs_f64(),
        p50_us,
        p99_us,
        published: sent.published,
        acked: sent.acked,
        received,
        lost: sent.published.saturating_sub(received),
        out_of_order: seen.out_of_order,
        slow_errors: seen.slow_errors,
        acks_dropped: sent.dropped,
        usage: usage?,
        first_error: sent.error.or(seen.error),
    })
}

/// Publishes sequence number 0 one at a time (each acknowledged) until the subscriber
/// says one reached it.
fn warm_up(
    publ: &mut StreamClient,
    warm: &crossbeam_channel::Receiver<()>,
    plan: &Plan,
) -> Result<(), String> {
    let deadline = Instant::now() + WARM_TIMEOUT;
    loop {
        if Instant::now() >= deadline {
            return Err(format!("no warm-up message reached the subscriber in {WARM_TIMEOUT:?}"));
        }
        let msg =
            PubSubMsg::Publish { seq: 0, topic: plan.topic.clone(), payload: payload(0, 0, 16) };
        publ.queue_pubsub(&msg)?;
        publ.flush()?;
        match publ.next_pubsub(ACK_TIMEOUT)? {
            Some(PubSubMsg::Ack { .. }) => {}
            other => return Err(format!("warm-up: {other:?} instead of an ACK")),
        }
        if warm.recv_timeout(Duration::from_millis(20)).is_ok() {
            return Ok(());
        }
    }
}

/// What the two ends of a run share.
struct Ends<'a> {
    /// Set once the publisher has stopped (or failed).
    done: &'a AtomicBool,
    /// The last sequence number published.
    last_seq: &'a AtomicU64,
    /// Messages the subscriber has received ([`Pace::Received`] reads it).
    received: &'a AtomicU64,
}

/// The publisher: publishes as `plan.pace` allows until `until`, then waits for the last
/// ACKs. Each payload carries its publish time.
fn publish_loop(
    c: &mut StreamClient,
    plan: &Plan,
    base: Instant,
    until: Instant,
    ends: &Ends<'_>,
) -> Sent {
    let mut s = Sent::default();
    let mut in_flight = 0usize;
    let mut next_ack = 1u64;
    let start = Instant::now();
    // When message `k` (from 1) is due, at `Pace::Rate(r)`.
    let due = |k: u64, r: u32| start + Duration::from_secs_f64((k - 1) as f64 / f64::from(r));
    let res = (|| -> Result<(), String> {
        loop {
            let now = Instant::now();
            if now < until {
                let mut queued = false;
                while in_flight < plan.window {
                    let seq = s.published + 1;
                    let may = match plan.pace {
                        Pace::Acks => true,
                        Pace::Received => {
                            s.published - ends.received.load(Ordering::Relaxed) < plan.window as u64
                        }
                        Pace::Rate(r) => in_flight == 0 && due(seq, r) <= now,
                    };
                    if !may {
                        break;
                    }
                    let t = base.elapsed().as_nanos() as u64;
                    let payload = payload(seq, t, plan.payload);
                    c.queue_pubsub(&PubSubMsg::Publish {
                        seq,
                        topic: plan.topic.clone(),
                        payload,
                    })?;
                    s.published = seq;
                    in_flight += 1;
                    queued = true;
                }
                if queued {
                    c.flush()?;
                    ends.last_seq.store(s.published, Ordering::SeqCst);
                }
            } else if in_flight == 0 {
                return Ok(());
            }
            if in_flight == 0 {
                // No ACK to wait for: wait for the subscriber, or for the next message due.
                match plan.pace {
                    Pace::Rate(r) => {
                        let next = due(s.published + 1, r).min(until);
                        thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                    _ => thread::sleep(BEHIND_SLEEP),
                }
                continue;
            }
            // One ACK (waiting), then every one already here.
            let mut wait = ACK_TIMEOUT;
            while let Some(m) = c.next_pubsub(wait)? {
                wait = Duration::ZERO;
                match m {
                    PubSubMsg::Ack { seq, dropped, .. } => {
                        if seq != next_ack {
                            return Err(format!("ACK {seq} where {next_ack} was due"));
                        }
                        next_ack += 1;
                        s.acked += 1;
                        s.dropped += u64::from(dropped);
                        in_flight -= 1;
                    }
                    PubSubMsg::Error { code, seq, .. } => {
                        return Err(format!("PUBLISH {seq} refused: {}", code.name()));
                    }
                    _ => {}
                }
            }
            if wait == ACK_TIMEOUT {
                return Err(format!("no ACK within {ACK_TIMEOUT:?} ({in_flight} in flight)"));
            }
        }
    })();
    if let Err(e) = res {
        s.error = Some(format!("publisher: {e}"));
    }
    ends.last_seq.store(s.published, Ordering::SeqCst);
    s
}

/// The subscriber: records each message's receipt and publish times until the publisher is
/// `done` and the last message it published has arrived, or [`DRAIN`] after `done`. Tells
/// the publisher through `warm` when a warm-up message (sequence number 0) arrives, and
/// subscribes again after an ERROR `slow-subscriber`.
fn subscribe_loop(
    c: &mut StreamClient,
    topic: &Topic,
    base: Instant,
    ends: &Ends<'_>,
    warm: &crossbeam_channel::Sender<()>,
) -> Seen {
    let mut s = Seen { times: Vec::with_capacity(1 << 20), ..Seen::default() };
    let mut last = 0u64;
    let mut drain_until: Option<Instant> = None;
    let res = (|| -> Result<(), String> {
        loop {
            if ends.done.load(Ordering::SeqCst) {
                let end = *drain_until.get_or_insert_with(|| Instant::now() + DRAIN);
                if last >= ends.last_seq.load(Ordering::SeqCst) || Instant::now() >= end {
                    return Ok(());
                }
            }
            let Some(m) = c.next_pubsub(POLL)? else { continue };
            match m {
                PubSubMsg::Message { payload, .. } => {
                    let now = base.elapsed().as_nanos() as u64;
                    let Some((seq, t)) = read_payload(&payload) else {
                        return Err("a MESSAGE without sequence number and time".to_string());
                    };
                    if seq == 0 {
                        // A warm-up: the publisher may start.
                        let _ = warm.try_send(());
                        continue;
                    }
                    if seq <= last {
                        s.out_of_order += 1;
                    }
                    last = last.max(seq);
                    s.times.push((now, t));
                    ends.received.store(s.times.len() as u64, Ordering::Relaxed);
                }
                PubSubMsg::Error { code: ErrorCode::SlowSubscriber, .. } => {
                    s.slow_errors += 1;
                    s.error.get_or_insert_with(|| "subscriber: ERROR slow-subscriber".into());
                    c.queue_pubsub(&PubSubMsg::Subscribe { topic: topic.clone() })?;
                    c.flush()?;
                }
                PubSubMsg::Error { code, .. } => return Err(format!("ERROR {}", code.name())),
                _ => {}
            }
        }
    })();
    if let Err(e) = res {
        s.error = Some(format!("subscriber: {e}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let p = payload(7, 123_456, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(read_payload(&p), Some((7, 123_456)));
        assert_eq!(payload(1, 2, 3).len(), 16);
        assert_eq!(read_payload(&[0; 15]), None);
    }
}
