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
fn retries_wait_the_short_delay_then_give_up() {
    let policy = RetryPolicy { max_tries: 3, ..RetryPolicy::default() };
    let mut m = Machine::new(policy);
    let mut now = t0();
    m.go_stage(now, Stage::StreamStreaming);
    let refused = || ClientError::ConnectRefused { stage: Stage::EncInit };
    drive(&mut m, now, |_| Err(refused()));
    for _ in 0..2 {
        let due = m.poll_timeout().expect("a retry is scheduled");
        assert_eq!(due - now, policy.short_delay);
        // Nothing happens before the delay.
        m.handle_timeout(now + policy.short_delay / 2);
        assert!(m.poll_action().is_none());
        now = due;
        m.handle_timeout(now);
        drive(&mut m, now, |_| Err(refused()));
    }
    assert_eq!(m.poll_timeout(), None);
    assert!(events(&mut m).contains(&Event::Failed(refused())));
}

#[test]
fn always_reconnect_waits_the_long_delay_and_starts_over() {
    let policy = RetryPolicy { max_tries: 2, always_reconnect: true, ..RetryPolicy::default() };
    let mut m = Machine::new(policy);
    let mut now = t0();
    m.go_stage(now, Stage::StreamStreaming);
    let down = |s| Err(ClientError::ConnectRefused { stage: s });
    drive(&mut m, now, down);
    now = m.poll_timeout().unwrap();
    m.handle_timeout(now);
    drive(&mut m, now, down);
    let due = m.poll_timeout().expect("reconnect scheduled");
    assert_eq!(due - now, policy.long_delay);
    now = due;
    m.handle_timeout(now);
    drive(&mut m, now, |_| Ok(()));
    assert!(m.is_streaming());
    assert!(!events(&mut m).iter().any(|e| matches!(e, Event::Failed(_))));
}

#[test]
fn a_lost_stream_reconnects_from_stream_ctl_keeping_the_key() {
    let policy = RetryPolicy { always_reconnect: true, ..RetryPolicy::default() };
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
    let policy = RetryPolicy { always_reconnect: true, ..RetryPolicy::default() };
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
    let mut m = Machine::new(RetryPolicy::default());
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
