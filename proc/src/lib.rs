//! dap-proc: the callback-processor pool.
//!
//! Event-loop workers must never block, so longer jobs (database work, building a reply) run
//! on *proc threads*: one per CPU, each pinned to the same CPU as the reactor worker it pairs
//! with. A job is `FnMut() -> Next`; [`Next::Again`] puts it back behind the other work of its
//! [`Priority`].
//!
//! * **Pairing.** [`ProcPool::for_reactor`] starts one thread per worker, pinned to that
//!   worker's CPU, and attaches thread *i* to worker *i*: [`ProcExt::proc`] finds it from a
//!   `Worker` or `WorkerCtx`, and [`Flip::flip`] uses it from an esocket callback. A reactor
//!   does not start a pool by itself (the reactor crate sits below this one); start the pool
//!   right after the reactor. [`ProcPool::builder`] also makes free-standing pools.
//! * **Priorities and aging.** Five priorities, idle to critical. Each queued job gets a
//!   virtual deadline, its enqueue time plus `(Critical − priority) × aging` (aging defaults to
//!   10 ms), and the thread runs the earliest; so higher priorities go first, yet a job that
//!   has waited long enough outranks any newer one and nothing starves (DAP's pool does
//!   starve low priorities).
//! * **Bounded queues.** Each thread holds at most `queue_capacity` jobs per priority;
//!   [`ProcThread::submit`] on a full queue returns [`SubmitError::Full`] with the job, and
//!   [`ProcThread::submit_timeout`] waits for room. Nothing is dropped silently.
//! * **The flip.** [`Flip::flip`] runs a closure on the paired proc thread, then a callback
//!   with its result on the esocket's own worker, with `&mut` access to the esocket; if the
//!   esocket closed meanwhile, the result is dropped and counted by the worker.
//! * **Periodic jobs** ([`ProcThread::add_periodic`]) run on a fixed grid, without drift.
//! * **Panics** in a job are caught, logged and counted ([`ProcStats::panics`]); the thread
//!   carries on.
//! * **Stopping.** [`ProcPool::stop_drain`] stops taking jobs and runs the queued ones until a
//!   deadline, then cancels the rest; [`ProcPool::stop_cancel`] drops queued jobs at once.
//!   Cancelled jobs are counted ([`ProcStats::cancelled`]). Dropping the pool drains for up to
//!   5 s.
//!
//! # Example
//!
//! ```
//! use std::sync::mpsc;
//! use dap_proc::{Next, Priority, ProcPool};
//!
//! let pool = ProcPool::builder().threads(2).pin(false).start()?;
//! let (tx, rx) = mpsc::channel();
//! let mut left = 3;
//! pool.auto().submit(Priority::Normal, move || {
//!     left -= 1;
//!     if left > 0 {
//!         return Next::Again; // yields to other work, then runs again
//!     }
//!     tx.send("done").unwrap();
//!     Next::Done
//! }).unwrap();
//! assert_eq!(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap(), "done");
//! pool.stop_drain(std::time::Duration::from_secs(1));
//! pool.wait();
//! # Ok::<(), std::io::Error>(())
//! ```
#![forbid(unsafe_code)]

mod flip;
mod job;
mod policy;
mod pool;
mod run;
mod stats;
mod thread;

pub use flip::{Flip, FlipError, ProcExt};
pub use job::{Job, Next, Priority};
pub use pool::{ProcPool, ProcPoolBuilder};
pub use stats::ProcStats;
pub use thread::{PeriodicHandle, ProcThread, SubmitError};
