//! The stage machine against a virtual clock and a scripted driver.

use super::*;

fn t0() -> Instant {
    Instant::now()
}

/// Runs every queued action: each step ends at once with `outcome(stage)`.
fn drive(
    m: &mut Machine,
    now: Instant,
    mut outcome: impl FnMut(Stage) -> Result<(), ClientError>,
) -> Vec<Action> {
    let mut log = Vec::new();
    while let Some(a) = m.poll_action() {
        log.push(a);
        if let Action::Run(stage) = a {
            match outcome(stage) {
                Ok(()) => m.step_done(now, stage),
                Err(e) => m.step_failed(now, e),
            }
        }
    }
    log
}

fn events(m: &mut Machine) -> Vec<Event> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

#[test]
fn every_stage_runs_in_order_to_streaming() {
    let mut m = Machine::new(RetryPolicy::default());
    let now = t0();
    m.go_stage(now, Stage::StreamStreaming);
    let log = drive(&mut m, now, |_| Ok(()));
    let runs: Vec<Stage> =
        log.iter().filter_map(|a| if let Action::Run(s) = a { Some(*s) } else { None }).collect();
    assert_eq!(runs, Stage::ALL[1..].to_vec());
    assert!(m.is_streaming());
    assert_eq!(events(&mut m).last(), Some(&Event::Reached(Stage::StreamStreaming)));
}

#[test]
fn a_higher_target_continues_and_a_lower_one_tears_down() {
    let mut m = Machine::new(RetryPolicy::default());
    let now = t0();
    m.go_stage(now, Stage::StreamCtl);
    drive(&mut m, now, |_| Ok(()));
    assert_eq!((m.stage(), m.status()), (Stage::StreamCtl, Status::Complete));
    m.go_stage(now, Stage::StreamStreaming);
    let log = drive(&mut m, now, |_| Ok(()));
    assert_eq!(log[0], Action::Run(Stage::StreamSession), "continues, no new handshake");
    m.go_stage(now, Stage::EncInit);
    assert_eq!(drive(&mut m, now, |_| Ok(())), vec![Action::TearDown { to: Stage::EncInit }]);
    assert_eq!((m.stage(), m.status()), (Stage::EncInit, Status::Complete));
}

#[test]
fn retries_back_off_doubling_then_give_up_after_max_tries() {
    let policy = RetryPolicy { jitter: 0.0, ..RetryPolicy::max_tries(4) };
    let mut m = Machine::new(policy);
    let mut now = t0();
    m.go_stage(now, Stage::StreamStreaming);
    let refused = || ClientError::ConnectRefused { stage: Stage::EncInit };
    drive(&mut m, now, |_| Err(refused()));
    for i in 0..3u32 {
        let due = m.poll_timeout().expect("a retry is scheduled");
        assert_eq!(due - now, policy.initial_delay * (1 << i), "try {}", i + 1);
        // Nothing happens before the delay.
        m.handle_timeout(now + (due - now) / 2);
        assert!(m.poll_action().is_none());
        now = due;
        m.handle_timeout(now);
        drive(&mut m, now, |_| Err(refused()));
    }
    assert_eq!(m.poll_timeout(), None);
    let evs = events(&mut m);
    assert!(evs.contains(&Event::Failed(refused())));
    // Every failure was told with its reason.
    let reasons = evs
        .iter()
        .filter(|e| matches!(e, Event::Stage { status: Status::Error, reason: Some(_), .. }))
        .count();
    assert_eq!(reasons, 4);
}

#[test]
fn by_default_a_client_never_gives_up_and_the_wait_stops_growing_at_max_delay() {
    let policy = RetryPolicy::default();
    assert_eq!(policy.max_tries, None);
    let mut m = Machine::with_seed(policy, 7);
    let mut now = t0();
    m.go_stage(now, Stage::StreamStreaming);
    let down = |s| Err(ClientError::ConnectRefused { stage: s });
    drive(&mut m, now, down);
    let mut waits = Vec::new();
    for _ in 0..40 {
        let due = m.poll_timeout().expect("always another try");
        waits.push(due - now);
        now = due;
        m.handle_timeout(now);
        drive(&mut m, now, down);
    }
    for (i, w) in waits.iter().enumerate() {
        let full = policy.backoff(i as u32 + 1);
        // Jitter 0.5: between half the back-off and all of it.
        assert!(*w <= full && *w >= full / 2, "wait {i}: {w:?} against {full:?}");
    }
    assert_eq!(policy.backoff(40), policy.max_delay);
    assert!(waits[39] <= policy.max_delay);
    // The node comes back: the next try streams, and nothing was given up.
    now = m.poll_timeout().unwrap();
    m.handle_timeout(now);
    drive(&mut m, now, |_| Ok(()));
    assert!(m.is_streaming());
    assert!(!events(&mut m).iter().any(|e| matches!(e, Event::Failed(_))));
}

#[test]
fn jitter_spreads_clients_cut_off_together() {
    let policy = RetryPolicy::default();
    let first_wait = |seed| {
        let mut m = Machine::with_seed(policy, seed);
        let now = t0();
        m.go_stage(now, Stage::StreamStreaming);
        drive(&mut m, now, |s| Err(ClientError::ConnectRefused { stage: s }));
        m.poll_timeout().unwrap() - now
    };
    let waits: std::collections::HashSet<_> = (1..=20).map(first_wait).collect();
    assert!(waits.len() > 10, "20 clients drew {} distinct waits", waits.len());
}

#[test]
fn a_lost_stream_reconnects_from_stream_ctl_keeping_the_key() {
    let policy = RetryPolicy::default();
    let mut m = Machine::new(policy);
    let now = t0();
    m.go_stage(now, Stage::StreamStreaming);
    drive(&mut m, now, |_| Ok(()));
    m.stream_lost(now, ClientError::StreamLost("reset".into()));
    assert_eq!(m.poll_action(), Some(Action::TearDown { to: Stage::EncInit }));
    let later = m.poll_timeout().unwrap();
    m.handle_timeout(later);
    let log = drive(&mut m, later, |_| Ok(()));
    assert_eq!(log[0], Action::Run(Stage::StreamCtl));
    assert!(m.is_streaming());
}

#[test]
fn an_expired_key_restarts_from_enc_init() {
    let mut m = Machine::new(RetryPolicy::default());
    let now = t0();
    m.go_stage(now, Stage::StreamStreaming);
    let mut first = true;
    drive(&mut m, now, |s| {
        if s == Stage::StreamCtl && std::mem::take(&mut first) {
            Err(ClientError::KeyExpired(Stage::StreamCtl))
        } else {
            Ok(())
        }
    });
    assert_eq!(m.stage(), Stage::EncInit);
    let t = m.poll_timeout().unwrap();
    m.handle_timeout(t);
    let log = drive(&mut m, t, |_| Ok(()));
    assert_eq!(log[0], Action::Run(Stage::EncInit));
    assert!(m.is_streaming());
}

#[test]
fn configuration_faults_are_not_retried() {
    let policy = RetryPolicy::default();
    let mut m = Machine::new(policy);
    let now = t0();
    m.go_stage(now, Stage::StreamStreaming);
    drive(&mut m, now, |_| Err(ClientError::WrongKey));
    assert_eq!(m.poll_timeout(), None);
    assert!(events(&mut m).contains(&Event::Failed(ClientError::WrongKey)));
}

#[test]
fn abort_tears_down_and_reports() {
    let mut m = Machine::new(RetryPolicy::default());
    let now = t0();
    m.go_stage(now, Stage::StreamStreaming);
    assert_eq!(m.poll_action(), Some(Action::Run(Stage::EncInit)));
    m.abort();
    assert_eq!(m.poll_action(), Some(Action::TearDown { to: Stage::Begin }));
    // The late answer of the aborted step is ignored.
    m.step_done(now, Stage::EncInit);
    assert_eq!(m.stage(), Stage::Begin);
    assert!(events(&mut m).contains(&Event::Failed(ClientError::Aborted(Stage::EncInit))));
}

#[test]
fn a_stage_that_keeps_failing_gives_up_even_when_the_stages_below_it_succeed() {
    // A refused upgrade restarts from StreamCtl, which succeeds every time: the count of
    // failed upgrades must still reach max_tries.
    let mut m = Machine::new(RetryPolicy::max_tries(3));
    let mut now = t0();
    m.go_stage(now, Stage::StreamStreaming);
    let refuse = |s: Stage| {
        if s == Stage::StreamSession {
            Err(ClientError::StreamResponse("upgrade answered with 403".into()))
        } else {
            Ok(())
        }
    };
    let mut upgrades = 0;
    for _ in 0..10 {
        let log = drive(&mut m, now, refuse);
        upgrades += log.iter().filter(|a| **a == Action::Run(Stage::StreamSession)).count();
        match m.poll_timeout() {
            Some(t) => {
                now = t;
                m.handle_timeout(now);
            }
            None => break,
        }
    }
    assert_eq!(upgrades, 3);
    assert!(matches!(events(&mut m).last(), Some(Event::Failed(ClientError::StreamResponse(_)))));
    assert_eq!(m.poll_timeout(), None);
}

/// A node that says "not now" (429 or 503, PROTOCOL §3.7) is tried again no sooner than
/// its `Retry-After`, however short the back-off would be.
#[test]
fn a_busy_node_is_retried_after_its_retry_after() {
    let mut m = Machine::new(RetryPolicy::default());
    let now = t0();
    m.go_stage(now, Stage::StreamStreaming);
    let mut first = true;
    drive(&mut m, now, |s| {
        if s == Stage::EncInit && std::mem::take(&mut first) {
            Err(ClientError::Busy {
                reason: "rate-limited".into(),
                retry_after: Duration::from_secs(7),
            })
        } else {
            Ok(())
        }
    });
    assert_eq!(m.stage(), Stage::EncInit);
    let t = m.poll_timeout().unwrap();
    assert!(t >= now + Duration::from_secs(7), "{:?}", t - now);
    m.handle_timeout(t);
    drive(&mut m, t, |_| Ok(()));
    assert!(m.is_streaming());
}
