//! Regression tests for bugs found in review (2026-11-21); each failed on the code as it was
//! reviewed and passes since its fix.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::bounded;
use dap_proc::{Next, Priority};

mod util;

use util::{WAIT, pool, pool_with_blocked};

/// `stop_cancel` after `stop_drain` (escalating a slow drain) drops the queued jobs. The
/// thread used to keep the first stop mode and run them all.
#[test]
fn stop_cancel_overrides_an_earlier_stop_drain() {
    let (pool, release, ran) = pool_with_blocked();
    pool.stop_drain(Duration::from_secs(3600));
    pool.stop_cancel();
    drop(release);
    pool.wait();
    assert_eq!(ran.load(Ordering::SeqCst), 0, "jobs ran after stop_cancel");
    assert_eq!(pool.thread(0).unwrap().stats().cancelled, 10);
}

/// "Wait as long as it takes" (`Duration::MAX`) in `submit_timeout` and `stop_drain` means no
/// deadline. Both used to add it to `Instant::now()` unchecked and panic.
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
