//! Regression tests for bugs found in review (2026-11-21); each failed on the code as it was
//! reviewed and passes since its fix.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::bounded;
use dap_proc::{Next, Priority, ProcPool};

const WAIT: Duration = Duration::from_secs(20);

fn pool(threads: usize) -> ProcPool {
    ProcPool::builder().threads(threads).pin(false).start().expect("pool starts")
}

/// `stop_cancel` after `stop_drain` (escalating a slow drain) must drop the queued jobs; the
/// thread keeps the first stop mode (`get_or_insert`) and runs them all instead.
#[test]

fn stop_cancel_overrides_an_earlier_stop_drain() {
    let pool = pool(1);
    let (release, gate) = bounded::<()>(1);
    let (started_tx, started) = bounded::<()>(1);
    pool.thread(0)
        .unwrap()
        .submit(Priority::Critical, move || {
            let _ = started_tx.send(());
            let _ = gate.recv_timeout(WAIT);
            Next::Done
        })
        .unwrap();
    started.recv_timeout(WAIT).expect("blocker started");
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let ran = ran.clone();
        pool.thread(0)
            .unwrap()
            .submit(Priority::Normal, move || {
                ran.fetch_add(1, Ordering::SeqCst);
                Next::Done
            })
            .unwrap();
    }
    pool.stop_drain(Duration::from_secs(3600));
    pool.stop_cancel();
    drop(release);
    pool.wait();
    assert_eq!(ran.load(Ordering::SeqCst), 0, "jobs ran after stop_cancel");
    assert_eq!(pool.thread(0).unwrap().stats().cancelled, 10);
}

/// Timeouts are added to `Instant::now()` unchecked: "wait as long as it takes"
/// (`Duration::MAX`) panics in `submit_timeout` and `stop_drain`.
#[test]

fn huge_timeouts_do_not_panic() {
    let pool = pool(1);
    let (tx, rx) = bounded(1);
    let submitted = panic::catch_unwind(AssertUnwindSafe(|| {
        pool.thread(0).unwrap().submit_timeout(
            Priority::Normal,
            move || {
                let _ = tx.send(());
                Next::Done
            },
            Duration::MAX,
        )
    }));
    assert!(matches!(submitted, Ok(Ok(()))), "submit_timeout(Duration::MAX) panicked or failed");
    rx.recv_timeout(WAIT).expect("job ran");
    let stopped = panic::catch_unwind(AssertUnwindSafe(|| pool.stop_drain(Duration::MAX)));
    assert!(stopped.is_ok(), "stop_drain(Duration::MAX) panicked");
    pool.stop_cancel();
    pool.wait();
}
