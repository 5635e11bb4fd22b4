//! The stage machine, sans-IO: it decides which step to run next, when to retry and what to
//! tear down; a driver runs the steps (HTTP requests, the stream's connection) and reports
//! back. Time is passed in, so tests drive it with a virtual clock.
//!
//! Calling order for a driver:
//! 1. [`Machine::go_stage`] when the application asks for a stage;
//! 2. [`Machine::poll_action`] until `None`, running each action ([`Action::Run`] starts a
//!    stage's step; [`Action::TearDown`] releases what the stages above a stage hold);
//! 3. [`Machine::step_done`] or [`Machine::step_failed`] when a step ends, and
//!    [`Machine::stream_lost`] when a stream that was up breaks; then back to 2;
//! 4. [`Machine::poll_timeout`] for when to call [`Machine::handle_timeout`] (retries);
//! 5. [`Machine::poll_event`] for what to tell the application.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::{ClientError, Stage, Status};

/// When and how often to try again: exponential back-off with jitter, and by default no
/// limit, as a long-lived client wants (it climbs back after any outage on its own).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Failed tries of one stage before the target is given up on (`Event::Failed`, the
    /// `go_stage` callback's error). `None`, the default: never give up on a retryable
    /// error. Configuration faults (a wrong node key, a refused certificate) are never
    /// retried.
    pub max_tries: Option<u32>,
    /// The wait before the first retry (500 ms). Each further failed try in a row doubles
    /// it; a stage passed starts over.
    pub initial_delay: Duration,
    /// The most a wait grows to (30 s).
    pub max_delay: Duration,
    /// The share of each wait drawn at random, 0 to 1 (0.5: between half the wait and all
    /// of it), so that clients cut off together do not all come back at the same instant.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_tries: None,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// The default policy giving up after `tries` failed tries of a stage.
    pub fn max_tries(tries: u32) -> Self {
        RetryPolicy { max_tries: Some(tries.max(1)), ..RetryPolicy::default() }
    }

    /// Sets the first wait and the most a wait grows to.
    pub fn delays(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_delay = initial;
        self.max_delay = max.max(initial);
        self
    }

    /// Sets the jitter (clamped to 0..=1).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_nan() { 0.0 } else { jitter.clamp(0.0, 1.0) };
        self
    }

    /// The wait after the `tries`-th failed try in a row (1 = the first), before jitter.
    pub fn backoff(&self, tries: u32) -> Duration {
        let doublings = tries.saturating_sub(1).min(31);
        self.initial_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay.max(self.initial_delay))
    }
}

/// What the driver must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start this stage's step; report its end with `step_done` or `step_failed`.
    Run(Stage),
    /// Release what every stage above `to` holds (close the stream, forget the session or
    /// the key). The machine is at `to` afterwards.
    TearDown {
        /// The highest stage whose state is kept.
        to: Stage,
    },
}

/// What the application hears.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A stage's status changed.
    Stage {
        /// The stage.
        stage: Stage,
        /// Its new status.
        status: Status,
        /// With [`Status::Error`]: why (a retry follows unless the target is given up on).
        reason: Option<ClientError>,
    },
    /// The target stage was reached (the `go_stage` callback's success).
    Reached(Stage),
    /// The target was given up on (the `go_stage` callback's failure).
    Failed(ClientError),
}

/// The client's stages and retries.
#[derive(Debug)]
pub struct Machine {
    stage: Stage,
    status: Status,
    target: Stage,
    policy: RetryPolicy,
    /// Failed tries since the stage that failed was last passed.
    tries: u32,
    /// The stage whose failures `tries` counts: a retry that restarts below it (a new
    /// session after a refused upgrade) passes lower stages without resetting the count.
    failed_at: Option<Stage>,
    retry_at: Option<Instant>,
    last_error: Option<ClientError>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    /// The jitter's generator (xorshift64*, seeded from the OS's CSPRNG or by a test).
    rng: u64,
}

impl Machine {
    /// A machine at `Begin`, going nowhere.
    pub fn new(policy: RetryPolicy) -> Self {
        let mut seed = [0u8; 8];
        dap_net::enc::cipher::random_bytes(&mut seed);
        Machine::with_seed(policy, u64::from_le_bytes(seed))
    }

    /// [`new`](Self::new) with the jitter drawn from `seed` (tests, simulations).
    pub fn with_seed(policy: RetryPolicy, seed: u64) -> Self {
        Machine {
            rng: seed | 1,
            stage: Stage::Begin,
            status: Status::None,
            target: Stage::Begin,
            policy,
            tries: 0,
            failed_at: None,
            retry_at: None,
            last_error: None,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The stage the client is at (or working on).
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Its status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The stage asked for.
    pub fn target(&self) -> Stage {
        self.target
    }

    /// The last failure, if any.
    pub fn last_error(&self) -> Option<&ClientError> {
        self.last_error.as_ref()
    }

    /// The retry policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Whether the client is streaming (the target reached at `StreamStreaming`).
    pub fn is_streaming(&self) -> bool {
        self.stage == Stage::StreamStreaming && self.status == Status::Complete
    }

    fn set(&mut self, stage: Stage, status: Status) {
        self.stage = stage;
        self.status = status;
        self.events.push_back(Event::Stage { stage, status, reason: None });
    }

    /// A uniform draw in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The wait before the next try: the back-off of `tries`, less its jittered share.
    fn retry_delay(&mut self) -> Duration {
        let d = self.policy.backoff(self.tries);
        let jitter = self.policy.jitter.clamp(0.0, 1.0);
        d.mul_f64(1.0 - jitter * self.uniform())
    }

    /// Goes to `target`: from a completed stage a higher target continues; a lower one
    /// tears down to it; the same one is reached at once.
    pub fn go_stage(&mut self, now: Instant, target: Stage) {
        self.target = target;
        self.tries = 0;
        self.failed_at = None;
        self.retry_at = None;
        if target < self.stage {
            self.actions.push_back(Action::TearDown { to: target });
            self.set(target, Status::Complete);
            self.events.push_back(Event::Reached(target));
            return;
        }
        if self.status == Status::InProgress {
            // The step running continues toward the new target.
            return;
        }
        self.advance(now);
    }

    /// Moves on from a finished (or idle) stage toward the target.
    fn advance(&mut self, _now: Instant) {
        let finished = matches!(self.status, Status::Done | Status::Complete)
            || (self.stage == Stage::Begin && self.status != Status::InProgress);
        if self.stage == self.target && finished {
            if self.status != Status::Complete {
                self.set(self.stage, Status::Complete);
            }
            self.events.push_back(Event::Reached(self.target));
            return;
        }
        // After an error the stage itself runs again; after a success, the next one.
        let stage = if finished { self.stage.next().unwrap_or(self.stage) } else { self.stage };
        self.set(stage, Status::InProgress);
        self.actions.push_back(Action::Run(stage));
    }

    /// The step of `stage` finished.
    pub fn step_done(&mut self, now: Instant, stage: Stage) {
        if stage != self.stage || self.status != Status::InProgress {
            // A late report for a step that was torn down; ignore it.
            return;
        }
        if self.failed_at.is_none_or(|f| stage >= f) {
            self.tries = 0;
            self.failed_at = None;
            self.last_error = None;
        }
        self.set(stage, Status::Done);
        self.advance(now);
    }

    /// The step of the current stage failed with `err`.
    pub fn step_failed(&mut self, now: Instant, err: ClientError) {
        if self.status != Status::InProgress {
            return;
        }
        self.fail(now, err);
    }

    /// A stream that was up broke.
    pub fn stream_lost(&mut self, now: Instant, err: ClientError) {
        if self.stage < Stage::StreamSession {
            return;
        }
        self.fail(now, err);
    }

    fn fail(&mut self, now: Instant, err: ClientError) {
        let failed_at = self.stage;
        self.status = Status::Error;
        self.events.push_back(Event::Stage {
            stage: failed_at,
            status: Status::Error,
            reason: Some(err.clone()),
        });
        // Drop what the failed attempt built; the retry starts below it.
        let restart = err.restart_from().min(failed_at);
        let keep = restart.prev().unwrap_or(Stage::Begin);
        self.actions.push_back(Action::TearDown { to: keep });
        self.stage = restart;
        self.failed_at = Some(self.failed_at.map_or(failed_at, |f| f.max(failed_at)));
        self.tries += 1;
        let retry = err.is_retryable();
        self.last_error = Some(err.clone());
        if retry && self.policy.max_tries.is_none_or(|max| self.tries < max) {
            let mut delay = self.retry_delay();
            if let ClientError::Busy { retry_after, .. } = err {
                // The node said when (PROTOCOL §3.7): never sooner.
                delay = delay.max(retry_after);
            }
            tracing::info!(
                stage = %failed_at,
                error = %err,
                try_ = self.tries,
                retry_in_ms = delay.as_millis() as u64,
                "client step failed; retrying"
            );
            self.retry_at = Some(now + delay);
        } else {
            self.retry_at = None;
            self.target = self.stage;
            self.events.push_back(Event::Failed(err));
        }
    }

    /// Stops trying: tears everything down and reports `Aborted` if a target was pending.
    pub fn abort(&mut self) {
        let pending = self.stage != self.target || self.status != Status::Complete;
        if pending {
            self.events.push_back(Event::Failed(ClientError::Aborted(self.stage)));
        }
        self.retry_at = None;
        self.target = Stage::Begin;
        self.actions.push_back(Action::TearDown { to: Stage::Begin });
        self.set(Stage::Begin, Status::None);
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Runs a retry that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            self.advance(now);
        }
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests;
