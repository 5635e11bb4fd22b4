//! Counters of an HTTP server, sharded per worker so that counting costs no shared writes.

use std::sync::atomic::{AtomicU64, Ordering};

/// What is counted.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    Requests,
    Status1xx,
    Status2xx,
    Status3xx,
    Status4xx,
    Status5xx,
    BadRequests,
    Timeouts,
    Upgrades,
    Overloaded,
    HandlerPanics,
    ConnectionsClosedEarly,
    RatePaused,
    RateRefused,
}

const COUNTERS: usize = 14;

#[repr(align(128))]
#[derive(Debug, Default)]
struct Shard([AtomicU64; COUNTERS]);

/// Live counters of an [`HttpServer`](super::HttpServer); read with [`snapshot`](Self::snapshot).
#[derive(Debug)]
pub struct HttpStats {
    shards: Box<[Shard]>,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpStatsSnapshot {
    /// Request heads accepted (parsed and routed or answered).
    pub requests: u64,
    /// Responses sent, by class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub responses: [u64; 5],
    /// Requests refused for malformed or oversized input (400, 411, 413, 414, 431, 501, 505).
    pub bad_requests: u64,
    /// Header, body, keep-alive or write timeouts.
    pub timeouts: u64,
    /// Connections taken over after a `101 Switching Protocols`.
    pub upgrades: u64,
    /// Requests answered 503 because the proc pool was missing or full.
    pub overloaded: u64,
    /// Handlers that panicked (answered 500).
    pub handler_panics: u64,
    /// Connections the client closed or broke with a request unfinished.
    pub closed_early: u64,
    /// Times a connection's reading paused because its source was over
    /// [`HttpConfig::request_rate`](super::HttpConfig::request_rate).
    pub rate_paused: u64,
    /// Requests answered `429` because their source was over its request rate with as
    /// many requests waiting as `request_burst` allows.
    pub rate_refused: u64,
}

impl HttpStats {
    pub(crate) fn new(workers: usize) -> Self {
        HttpStats { shards: (0..workers.max(1)).map(|_| Shard::default()).collect() }
    }

    pub(crate) fn add(&self, worker: usize, c: Counter) {
        let shard = &self.shards[worker % self.shards.len()];
        shard.0[c as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn status(&self, worker: usize, status: u16) {
        let c = match status {
            100..=199 => Counter::Status1xx,
            200..=299 => Counter::Status2xx,
            300..=399 => Counter::Status3xx,
            400..=499 => Counter::Status4xx,
            _ => Counter::Status5xx,
        };
        self.add(worker, c);
    }

    /// Sums the shards.
    pub fn snapshot(&self) -> HttpStatsSnapshot {
        let get = |c: Counter| -> u64 {
            self.shards.iter().map(|s| s.0[c as usize].load(Ordering::Relaxed)).sum()
        };
        HttpStatsSnapshot {
            requests: get(Counter::Requests),
            responses: [
                get(Counter::Status1xx),
                get(Counter::Status2xx),
                get(Counter::Status3xx),
                get(Counter::Status4xx),
                get(Counter::Status5xx),
            ],
            bad_requests: get(Counter::BadRequests),
            timeouts: get(Counter::Timeouts),
            upgrades: get(Counter::Upgrades),
            overloaded: get(Counter::Overloaded),
            handler_panics: get(Counter::HandlerPanics),
            closed_early: get(Counter::ConnectionsClosedEarly),
            rate_paused: get(Counter::RatePaused),
            rate_refused: get(Counter::RateRefused),
        }
    }
}
