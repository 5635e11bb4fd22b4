//! Pinning workers to CPUs, and falling back to unpinned when the kernel refuses.

mod util;

use dap_reactor::{Reactor, Worker};
use util::Mode;

/// The CPUs the worker's own thread may run on, read on that thread.
#[track_caller]
fn worker_thread_cpus(worker: &Worker) -> Vec<usize> {
    util::on_worker(worker, |_| util::cpus_allowed("/proc/thread-self/status"))
}

#[track_caller]
fn echo_works(reactor: &Reactor) {
    let (factory, _events) = util::recording_factory(Mode::Echo);
    let listening = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), factory).unwrap();
    let mut c = util::connect(listening.local_addr().unwrap());
    util::round_trip(&mut c, b"pinned or not");
}

#[test]
fn pinning_to_a_missing_cpu_falls_back_to_running_unpinned() {
    util::init_tracing();
    let reactor =
        Reactor::builder().threads(1).pin(true).cpus(vec![1023]).start().expect("starts anyway");
    echo_works(&reactor);
    let worker = reactor.worker(0).unwrap();
    assert_eq!(worker.stats().pinned_cpu, None);
    assert_eq!(
        worker_thread_cpus(worker),
        util::cpus_allowed("/proc/self/status"),
        "affinity unchanged"
    );
    util::shutdown(reactor);
}

#[test]
fn pinned_worker_runs_on_one_allowed_cpu() {
    let allowed = util::cpus_allowed("/proc/self/status");
    let reactor = util::pinned_reactor(1);
    echo_works(&reactor);
    let worker = reactor.worker(0).unwrap();
    let cpu = worker.stats().pinned_cpu.expect("pinned");
    assert!(allowed.contains(&cpu), "pinned to {cpu}, allowed {allowed:?}");
    assert_eq!(worker_thread_cpus(worker), vec![cpu], "the thread's affinity is that one CPU");
    util::shutdown(reactor);
}

#[test]
fn explicit_cpus_are_used_round_robin() {
    let first = util::cpus_allowed("/proc/self/status")[0];
    let reactor = util::builder(2).pin(true).cpus(vec![first]).start().unwrap();
    for w in reactor.workers() {
        assert_eq!(worker_thread_cpus(w), vec![first]);
        assert_eq!(w.stats().pinned_cpu, Some(first));
    }
    util::shutdown(reactor);
}

#[test]
fn unpinned_workers_report_no_cpu() {
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap();
    assert_eq!(worker_thread_cpus(worker), util::cpus_allowed("/proc/self/status"));
    assert_eq!(worker.stats().pinned_cpu, None);
    util::shutdown(reactor);
}
