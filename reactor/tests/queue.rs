//! Queue esockets: typed items from any thread, delivered in order on the worker.

mod util;

use std::time::Duration;

use dap_reactor::{EsocketKind, QueueSendError};

#[test]
fn items_from_another_thread_arrive_in_order() {
    const ITEMS: u32 = 5_000;
    let reactor = util::reactor(1);
    let (tx, rx) = crossbeam_channel::unbounded();
    let (handle, sender) = util::on_worker(reactor.worker(0).unwrap(), move |w| {
        w.add_queue(64, move |es, item: u32| {
            assert_eq!(es.kind(), EsocketKind::Queue);
            tx.send(item).unwrap();
        })
        .unwrap()
    });
    assert_eq!(handle.worker_index(), 0);
    let producer = std::thread::spawn(move || {
        for i in 0..ITEMS {
            // More items than the queue holds: the producer waits for room.
            sender.send_timeout(i, util::TIMEOUT).expect("room in the queue");
        }
    });
    for expected in 0..ITEMS {
        assert_eq!(util::recv(&rx, "a queued item"), expected);
    }
    producer.join().unwrap();
    util::shutdown(reactor);
}

#[test]
fn full_queue_hands_the_item_back() {
    let reactor = util::reactor(1);
    let (tx, rx) = crossbeam_channel::unbounded();
    // Filled from inside the worker, so nothing can drain it in between.
    let refused = util::on_worker(reactor.worker(0).unwrap(), move |w| {
        let (_, sender) = w.add_queue(4, move |_, item: String| tx.send(item).unwrap()).unwrap();
        for i in 0..4 {
            sender.send(format!("item {i}")).unwrap();
        }
        assert_eq!(sender.len(), 4);
        match sender.send("one too many".to_owned()) {
            Err(QueueSendError::Full(item)) => item,
            other => panic!("expected Full, got {other:?}"),
        }
    });
    assert_eq!(refused, "one too many");
    for i in 0..4 {
        assert_eq!(util::recv(&rx, "a queued item"), format!("item {i}"));
    }
    util::shutdown(reactor);
}

#[test]
fn send_after_the_queue_closed_hands_the_item_back() {
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap();
    let (handle, sender) = util::on_worker(worker, |w| w.add_queue(4, |_, _: u8| {}).unwrap());
    handle.close().unwrap();
    util::wait_stats(worker, "the queue to close", |s| s.esockets_of(EsocketKind::Queue) == 0);
    assert_eq!(sender.send(7), Err(QueueSendError::Closed(7)));
    assert_eq!(
        sender.send_timeout(8, Duration::from_millis(10)).map_err(|e| e.into_inner()),
        Err(8)
    );
    util::shutdown(reactor);
}

/// Items waiting when the reactor stops are delivered before the worker exits. The worker is
/// held busy while the items and the stop are queued, so only the stop can deliver them.
#[test]
fn items_queued_before_stop_are_delivered() {
    const ITEMS: u32 = 2_000;
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap().clone();
    let (tx, rx) = crossbeam_channel::unbounded();
    let (_, sender) = util::on_worker(&worker, move |w| {
        w.add_queue(ITEMS as usize, move |_, item: u32| tx.send(item).unwrap()).unwrap()
    });

    let release = util::hold(&worker);
    for i in 0..ITEMS {
        sender.send(i).unwrap();
    }
    reactor.stop(Duration::from_secs(5));
    release.send(()).unwrap();
    util::shutdown(reactor);

    let got: Vec<u32> = rx.try_iter().collect();
    assert_eq!(got, (0..ITEMS).collect::<Vec<_>>());
    assert_eq!(sender.send(1), Err(QueueSendError::Closed(1)));
}
