//! Helpers shared by the proc integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::bounded;
use dap_proc::{Next, Priority, ProcPool};

/// The bound on every wait. Generous: the machines are shared and have 2 cores.
pub const WAIT: Duration = Duration::from_secs(20);

/// An unpinned pool of `threads` threads.
#[track_caller]
pub fn pool(threads: usize) -> ProcPool {
    ProcPool::builder().threads(threads).pin(false).start().expect("pool starts")
}

/// Blocks thread `i` until the returned sender is dropped or sent to, so a test can queue
/// work behind it deterministically.
#[track_caller]
pub fn block(pool: &ProcPool, i: usize) -> crossbeam_channel::Sender<()> {
    let (release, gate) = bounded::<()>(1);
    let (started_tx, started) = bounded::<()>(1);
    pool.thread(i)
        .unwrap()
        .submit(Priority::Critical, move || {
            let _ = started_tx.send(());
            let _ = gate.recv_timeout(WAIT);
            Next::Done
        })
        .unwrap();
    started.recv_timeout(WAIT).expect("blocker started");
    release
}

/// A one-thread pool held by a running job, with ten low-priority jobs queued behind it;
/// returns the pool, the blocker's release, and the count of queued jobs that ran.
#[track_caller]
pub fn pool_with_blocked() -> (ProcPool, crossbeam_channel::Sender<()>, Arc<AtomicUsize>) {
    let p = pool(1);
    let release = block(&p, 0);
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let ran = ran.clone();
        p.thread(0)
            .unwrap()
            .submit(Priority::Low, move || {
                ran.fetch_add(1, Ordering::SeqCst);
                Next::Done
            })
            .unwrap();
    }
    (p, release, ran)
}
