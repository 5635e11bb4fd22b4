//! dap-proc: the callback-processor pool.
//!
//! One pinned thread per CPU, paired with the reactor worker on the same CPU, runs the longer
//! jobs that must not stall an event loop (database work, building a reply). Jobs are
//! `FnMut() -> Next` with five priorities and aging; the *flip* runs a closure on the paired
//! proc thread and delivers its result back to a callback on the esocket's own worker.
//!
//! This crate is a skeleton until the proc issue lands; see `docs/ARCHITECTURE.md`.
#![forbid(unsafe_code)]
