//! ProcPool and ProcThread over real threads: priorities, fairness, back-pressure, panics,
//! counts, pinning, periodic jobs and stopping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded};
use dap_proc::{Next, Priority, ProcPool, SubmitError};

mod util;

use util::{WAIT, block, pool, pool_with_blocked};

#[test]
fn higher_priorities_run_first_when_fresh() {
    let pool =
        ProcPool::builder().threads(1).pin(false).aging(Duration::from_secs(60)).start().unwrap();
    let release = block(&pool, 0);
    let (tx, rx) = unbounded();
    for p in Priority::ALL {
        let tx = tx.clone();
        pool.thread(0)
            .unwrap()
            .submit(p, move || {
                tx.send(p).unwrap();
                Next::Done
            })
            .unwrap();
    }
    drop(release);
    let order: Vec<Priority> = (0..5).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    assert_eq!(
        order,
        vec![Priority::Critical, Priority::High, Priority::Normal, Priority::Low, Priority::Idle]
    );
}

#[test]
fn aging_lets_a_low_job_through_a_steady_stream_of_high_ones() {
    let pool =
        ProcPool::builder().threads(1).pin(false).aging(Duration::from_millis(5)).start().unwrap();
    let thread = pool.thread(0).unwrap().clone();
    let low_done = Arc::new(AtomicBool::new(false));
    let highs_after_low = Arc::new(AtomicU64::new(0));
    // A producer keeps the high queue non-empty with 200 µs jobs for as long as the test runs.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (thread, stop, low_done, highs_after_low) =
            (thread.clone(), stop.clone(), low_done.clone(), highs_after_low.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + WAIT;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if thread.stats().depth[Priority::High.index()] < 50 {
                    let (ld, h) = (low_done.clone(), highs_after_low.clone());
                    let _ = thread.submit(Priority::High, move || {
                        let until = Instant::now() + Duration::from_micros(200);
                        while Instant::now() < until {
                            std::hint::spin_loop();
                        }
                        if ld.load(Ordering::Relaxed) {
                            h.fetch_add(1, Ordering::Relaxed);
                        }
                        Next::Done
                    });
                } else {
                    std::thread::yield_now();
                }
            }
        })
    };
    // Let the high stream establish itself, then queue one low job behind it.
    let deadline = Instant::now() + WAIT;
    while thread.stats().depth[Priority::High.index()] < 20 {
        assert!(Instant::now() < deadline, "producer never filled the queue");
        std::thread::yield_now();
    }
    let (tx, rx) = bounded(1);
    let ld = low_done.clone();
    thread
        .submit(Priority::Low, move || {
            ld.store(true, Ordering::Relaxed);
            tx.send(()).unwrap();
            Next::Done
        })
        .unwrap();
    rx.recv_timeout(WAIT).expect("the low job ran while high jobs kept coming");
    // The high stream was still flowing when the low job ran: it did not just wait it out.
    let deadline = Instant::now() + WAIT;
    while highs_after_low.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no high job ran after the low one");
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    producer.join().unwrap();
}

#[test]
fn again_goes_behind_other_work_of_its_priority() {
    let pool = pool(1);
    let release = block(&pool, 0);
    let (tx, rx) = unbounded();
    let t = pool.thread(0).unwrap();
    let mut runs = 0;
    let tx_a = tx.clone();
    t.submit(Priority::Normal, move || {
        runs += 1;
        tx_a.send(format!("again{runs}")).unwrap();
        if runs < 3 { Next::Again } else { Next::Done }
    })
    .unwrap();
    for name in ["b", "c"] {
        let tx = tx.clone();
        t.submit(Priority::Normal, move || {
            tx.send(name.to_owned()).unwrap();
            Next::Done
        })
        .unwrap();
    }
    drop(release);
    let order: Vec<String> = (0..5).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    assert_eq!(order, ["again1", "b", "c", "again2", "again3"]);
    let deadline = Instant::now() + WAIT;
    while t.stats().requeued < 2 {
        assert!(Instant::now() < deadline);
        std::thread::yield_now();
    }
}

#[test]
fn a_full_queue_hands_the_job_back_and_submit_timeout_waits_for_room() {
    let pool = ProcPool::builder().threads(1).pin(false).queue_capacity(4).start().unwrap();
    let t = pool.thread(0).unwrap().clone();
    let release = block(&pool, 0); // the running blocker counts at Critical, not Normal
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..4 {
        let ran = ran.clone();
        t.submit(Priority::Normal, move || {
            ran.fetch_add(1, Ordering::SeqCst);
            Next::Done
        })
        .unwrap();
    }
    let ran2 = ran.clone();
    let err = t
        .submit(Priority::Normal, move || {
            ran2.fetch_add(100, Ordering::SeqCst);
            Next::Done
        })
        .unwrap_err();
    assert!(matches!(err, SubmitError::Full(_)));
    // The job handed back is the one we submitted: running it by hand shows it.
    let mut job = err.into_job();
    assert_eq!(job(), Next::Done);
    assert_eq!(ran.load(Ordering::SeqCst), 100);
    // Other priorities have their own room.
    t.submit(Priority::Low, || Next::Done).unwrap();
    // A waiting submit succeeds once the thread drains.
    let t2 = t.clone();
    let waiter = std::thread::spawn(move || {
        t2.submit_timeout(Priority::Normal, || Next::Done, WAIT).is_ok()
    });
    drop(release);
    assert!(waiter.join().unwrap(), "submit_timeout got room");
    // And a waiting submit gives up when no room comes.
    let release = block(&pool, 0);
    for _ in 0..4 {
        t.submit(Priority::High, || Next::Done).unwrap();
    }
    let started = Instant::now();
    let err =
        t.submit_timeout(Priority::High, || Next::Done, Duration::from_millis(50)).unwrap_err();
    assert!(err.is_full());
    assert!(started.elapsed() >= Duration::from_millis(50));
    drop(release);
}

#[test]
fn a_panicking_job_is_caught_and_the_thread_lives_on() {
    let pool = pool(1);
    let t = pool.thread(0).unwrap();
    t.submit(Priority::Normal, || panic!("job bug")).unwrap();
    let (tx, rx) = bounded(1);
    t.submit(Priority::Normal, move || {
        tx.send(()).unwrap();
        Next::Done
    })
    .unwrap();
    rx.recv_timeout(WAIT).expect("the thread still serves");
    let deadline = Instant::now() + WAIT;
    while t.stats().panics != 1 {
        assert!(Instant::now() < deadline, "panic counted");
        std::thread::yield_now();
    }
    assert_eq!(t.stats().depth, [0; 5], "the panicked job left the queue");
}

#[test]
fn a_million_jobs_from_four_producers_each_run_exactly_once() {
    const PER: usize = 250_000;
    let pool = Arc::new(pool(2));
    let seen: Arc<Vec<AtomicU64>> =
        Arc::new((0..4 * PER / 64 + 1).map(|_| AtomicU64::new(0)).collect());
    let runs = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (pool, seen, runs) = (pool.clone(), seen.clone(), runs.clone());
            std::thread::spawn(move || {
                for i in 0..PER {
                    let id = p * PER + i;
                    let (seen, runs) = (seen.clone(), runs.clone());
                    let job = move || {
                        let bit = 1u64 << (id % 64);
                        let old = seen[id / 64].fetch_or(bit, Ordering::Relaxed);
                        assert_eq!(old & bit, 0, "job {id} ran twice");
                        runs.fetch_add(1, Ordering::Relaxed);
                        Next::Done
                    };
                    pool.auto().submit_timeout(Priority::ALL[id % 5], job, WAIT).expect("queued");
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs.load(Ordering::Relaxed) < 4 * PER {
        assert!(Instant::now() < deadline, "only {} ran", runs.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(5));
    }
    let set: u64 = seen.iter().map(|w| w.load(Ordering::Relaxed).count_ones() as u64).sum();
    assert_eq!(set, (4 * PER) as u64);
    let total: u64 = pool.threads().iter().map(|t| t.stats().panics).sum();
    assert_eq!(total, 0);
}

#[test]
fn pinning_to_a_cpu_that_does_not_exist_falls_back_to_unpinned() {
    let pool = ProcPool::builder().threads(1).pin(true).cpus(vec![1023]).start().unwrap();
    let (tx, rx) = bounded(1);
    pool.thread(0)
        .unwrap()
        .submit(Priority::Normal, move || {
            tx.send(()).unwrap();
            Next::Done
        })
        .unwrap();
    rx.recv_timeout(WAIT).expect("an unpinned thread still runs jobs");
    assert_eq!(pool.thread(0).unwrap().stats().pinned_cpu, None);

    let cpu = dap_reactor::allowed_cpus()[0];
    let pinned = ProcPool::builder().threads(1).pin(true).cpus(vec![cpu]).start().unwrap();
    let deadline = Instant::now() + WAIT;
    while pinned.thread(0).unwrap().stats().pinned_cpu != Some(cpu) {
        assert!(Instant::now() < deadline, "pinned to an allowed cpu");
        std::thread::yield_now();
    }
}

#[test]
fn periodic_jobs_repeat_until_done_or_cancelled() {
    let pool = pool(1);
    let t = pool.thread(0).unwrap();
    let (tx, rx) = unbounded();
    let mut n = 0;
    t.add_periodic(Duration::from_millis(2), move || {
        n += 1;
        tx.send(n).unwrap();
        if n == 5 { Next::Done } else { Next::Again }
    })
    .unwrap();
    let got: Vec<i32> = (0..5).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    assert_eq!(got, [1, 2, 3, 4, 5]);
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "Done stops it");

    let (tx, rx) = unbounded();
    let handle = t
        .add_periodic(Duration::from_millis(1), move || {
            let _ = tx.send(());
            Next::Again
        })
        .unwrap();
    rx.recv_timeout(WAIT).unwrap();
    handle.cancel();
    // Drain what was in flight, then nothing more comes.
    while rx.recv_timeout(Duration::from_millis(50)).is_ok() {}
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
}

#[test]
fn stop_drain_runs_queued_jobs_and_stop_cancel_drops_them() {
    let (pool, release, ran) = pool_with_blocked();
    pool.stop_drain(WAIT);
    assert!(matches!(
        pool.thread(0).unwrap().submit(Priority::Low, || Next::Done),
        Err(SubmitError::Stopped(_))
    ));
    drop(release);
    pool.wait();
    assert_eq!(ran.load(Ordering::SeqCst), 10, "drain ran everything queued");

    let (pool, release, ran) = pool_with_blocked();
    pool.stop_cancel();
    drop(release);
    pool.wait();
    assert_eq!(ran.load(Ordering::SeqCst), 0, "cancel ran nothing");
    assert_eq!(pool.thread(0).unwrap().stats().cancelled, 10);
}
