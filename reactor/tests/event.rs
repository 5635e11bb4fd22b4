//! Event esockets: a u64 counter with eventfd semantics.

mod util;

use dap_reactor::EsocketKind;

#[test]
fn signals_before_the_worker_reads_are_summed() {
    let reactor = util::reactor(1);
    let (tx, rx) = crossbeam_channel::unbounded();
    // Signalled from inside the worker: it cannot read in between, so one call gets the sum.
    util::on_worker(reactor.worker(0).unwrap(), move |w| {
        let (_, sender) = w
            .add_event(move |es, value| {
                assert_eq!(es.kind(), EsocketKind::Event);
                tx.send(value).unwrap();
            })
            .unwrap();
        sender.signal(2).unwrap();
        sender.signal(0).unwrap();
        sender.signal(3).unwrap();
        sender
    });
    assert_eq!(util::recv(&rx, "the event"), 5);
    assert!(rx.try_recv().is_err());
    util::shutdown(reactor);
}

#[test]
fn signals_from_other_threads_add_up() {
    let reactor = util::reactor(1);
    let (tx, rx) = crossbeam_channel::unbounded();
    let (_, sender) = util::on_worker(reactor.worker(0).unwrap(), move |w| {
        w.add_event(move |_, v| tx.send(v).unwrap()).unwrap()
    });
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let sender = sender.clone();
            std::thread::spawn(move || {
                for _ in 0..500 {
                    sender.signal(2).unwrap();
                    sender.signal(3).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // However the adds were split between reads, the values add up to the total.
    let mut total = 0;
    while total < 5_000 {
        let v = util::recv(&rx, "an event");
        assert!(v > 0, "a callback with nothing signalled");
        total += v;
    }
    assert_eq!(total, 5_000);
    util::shutdown(reactor);
}
