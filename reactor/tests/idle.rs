//! The idle sweep: stream esockets that move no byte for the idle timeout are closed, with
//! `TimedOut` reported first; active ones are left alone.

mod util;

use std::io::{ErrorKind, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dap_reactor::ReactorError;
use util::{Ev, Mode};

const IDLE: Duration = Duration::from_millis(200);

#[test]
fn idle_connection_is_closed_and_an_active_one_is_not() {
    let reactor = util::builder(1).idle_timeout(Some(IDLE)).start().unwrap();
    let worker = reactor.worker(0).unwrap();
    let (factory, conns) = util::per_connection_factory(Mode::Consume);
    let listening = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), factory).unwrap();
    let addr = listening.local_addr().unwrap();

    let connected = Instant::now();
    let mut idle = util::connect(addr);
    let idle_events = util::recv(&conns, "the idle connection");
    let mut active = util::connect(addr);
    let active_events = util::recv(&conns, "the active connection");
    let active_handle = active_events.new_handle();

    // The active client sends a byte every 50 ms (pacing, not synchronisation).
    let stop = Arc::new(AtomicBool::new(false));
    let pinger = {
        let stop = stop.clone();
        let mut active = active.try_clone().unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                active.write_all(b".").unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // The idle one gets TimedOut (IdleTimeout), then on_delete, then its client sees EOF.
    let error = idle_events.deleted();
    let closed_after = connected.elapsed();
    assert_eq!(error, Some((ErrorKind::TimedOut, Some(ReactorError::IdleTimeout))));
    assert!(closed_after >= IDLE - Duration::from_millis(20), "closed after only {closed_after:?}");
    util::assert_closed(&mut idle, false);
    util::wait_stats(worker, "idle_closed to count it", |s| s.idle_closed >= 1);

    // The active one survives three idle timeouts' worth of pinging.
    let pinging_until = connected + IDLE * 3;
    while Instant::now() < pinging_until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        util::try_on_esocket(active_handle, |_| ()).is_some(),
        "the active connection was closed"
    );
    while let Ok(ev) = active_events.rx.try_recv() {
        assert!(!matches!(ev, Ev::Error(..) | Ev::Delete), "active connection got {ev:?}");
    }
    assert_eq!(worker.stats().idle_closed, 1);

    // Once it stops talking it is closed too.
    stop.store(true, Ordering::Relaxed);
    pinger.join().unwrap();
    assert_eq!(
        active_events.deleted(),
        Some((ErrorKind::TimedOut, Some(ReactorError::IdleTimeout)))
    );
    util::assert_closed(&mut active, true);
    util::wait_stats(worker, "idle_closed to count both", |s| s.idle_closed == 2);
    util::shutdown(reactor);
}

#[test]
fn without_an_idle_timeout_nothing_is_swept() {
    let reactor = util::builder(1).start().unwrap();
    let (factory, conns) = util::per_connection_factory(Mode::Consume);
    let listening = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), factory).unwrap();
    let _client = util::connect(listening.local_addr().unwrap());
    let events = util::recv(&conns, "the connection");
    let handle = events.new_handle();
    // A bounded "nothing happens" window, several default-sweep intervals long.
    if let Err(ev) = events.quiet_for(IDLE * 2) {
        panic!("{ev:?} without an idle timeout");
    }
    assert!(util::try_on_esocket(handle, |_| ()).is_some());
    assert_eq!(reactor.worker(0).unwrap().stats().idle_closed, 0);
    util::shutdown(reactor);
}
