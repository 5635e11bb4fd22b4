//! `EsocketHandle`: reaching an esocket from other threads, racing its close, and staying
//! harmless once the esocket is gone (even when its slot is reused).

mod util;

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dap_reactor::{EsocketHandle, EsocketKind, PostError};
use util::{Ev, Mode};

/// The slot index in a handle's debug form `EsocketHandle(w0:INDEX.GENERATION)`, if it has
/// that form.
fn slot_index(h: EsocketHandle) -> Option<String> {
    let s = format!("{h:?}");
    let inner = s.strip_prefix("EsocketHandle(")?.strip_suffix(')')?;
    let (_, id) = inner.split_once(':')?;
    Some(id.split_once('.')?.0.to_owned())
}

#[test]
fn handle_is_send_sync_copy() {
    fn check<T: Send + Sync + Copy + 'static>() {}
    check::<EsocketHandle>();
}

#[test]
fn exec_on_a_live_esocket_has_mut_access_and_flushes_its_writes() {
    let reactor = util::reactor(1);
    let (mut client, handle, events) = util::adopted(&reactor, Mode::Consume);
    let (kind, worker, readable) = util::on_esocket(handle, |es| {
        es.write(b"written in exec").unwrap();
        es.set_readable(false);
        (es.kind(), es.worker().index(), es.is_readable())
    });
    assert_eq!((kind, worker, readable), (EsocketKind::Tcp, 0, false));
    assert_eq!(util::read_n(&mut client, 15), b"written in exec");
    events.wait_for("on_write_finished", |e| matches!(e, Ev::WriteFinished));
    util::shutdown(reactor);
}

#[test]
fn exec_on_a_dead_esocket_is_dropped_and_counted() {
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap();
    let (_client, handle, events) = util::adopted(&reactor, Mode::Consume);
    handle.close().unwrap();
    assert_eq!(events.deleted(), None);
    let before = worker.stats().dropped_dead;
    // The closure is dropped without running: its result channel disconnects.
    assert_eq!(util::try_on_esocket(handle, |_| ()), None);
    util::wait_stats(worker, "the dropped exec to be counted", |s| s.dropped_dead > before);
    assert_eq!(worker.stats().dropped_dead, before + 1);
    util::shutdown(reactor);
}

#[test]
fn set_writable_through_a_handle_fires_on_write() {
    let reactor = util::reactor(1);
    let (_client, handle, events) = util::adopted(&reactor, Mode::Consume);
    handle.set_writable(true).unwrap();
    events.wait_for("on_write", |e| matches!(e, Ev::Write));
    // The recorder returns false: write interest is dropped again.
    assert!(!util::on_esocket(handle, |es| es.is_writable()));
    util::shutdown(reactor);
}

#[test]
fn set_readable_through_a_handle_pauses_and_resumes_reading() {
    let reactor = util::reactor(1);
    let (mut client, handle, events) = util::adopted(&reactor, Mode::Consume);
    handle.set_readable(false).unwrap();
    assert!(!util::on_esocket(handle, |es| es.is_readable()));
    client.write_all(b"held back").unwrap();
    // Nothing is delivered while reading is off (a "nothing happens" check needs a window).
    if let Err(ev) = events.quiet_for(Duration::from_millis(200)) {
        panic!("{ev:?} while reading was paused");
    }
    handle.set_readable(true).unwrap();
    assert_eq!(events.read_bytes(9), b"held back");
    util::shutdown(reactor);
}

/// A stale handle (its esocket deleted, its slot taken by a new esocket) reaches nothing:
/// writes, exec, interest changes and close are dropped and counted; the newcomer is untouched.
#[test]
fn stale_handle_never_reaches_the_esocket_that_reuses_its_slot() {
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap();
    let (_client_a, a, events_a) = util::adopted(&reactor, Mode::Consume);
    a.close().unwrap();
    assert_eq!(events_a.deleted(), None);

    let (mut client_b, b, events_b) = util::adopted(&reactor, Mode::Consume);
    assert_ne!(a, b, "a new esocket gets a new id");
    if let (Some(ia), Some(ib)) = (slot_index(a), slot_index(b)) {
        assert_eq!(ia, ib, "the test wants B in A's old slot");
    }
    let before = worker.stats().dropped_dead;

    let (ran_tx, ran) = crossbeam_channel::unbounded::<()>();
    assert_eq!(a.write(&b"stale write"[..]), Ok(()));
    assert_eq!(
        a.exec(move |es| {
            let _ = ran_tx.send(());
            let _ = es.write(b"stale exec");
            es.close_now();
        }),
        Ok(())
    );
    assert_eq!(a.set_readable(false), Ok(()));
    assert_eq!(a.set_writable(true), Ok(()));
    assert_eq!(a.close(), Ok(()));

    // Messages are handled in order: B's marker comes after all of A's stale messages.
    b.write(&b"B-ok"[..]).unwrap();
    assert_eq!(util::read_n(&mut client_b, 4), b"B-ok");
    assert_eq!(
        ran.recv_timeout(util::TIMEOUT),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected),
        "the stale exec closure must be dropped, not run"
    );
    let stats = util::wait_stats(worker, "five stale messages to be counted", |s| {
        s.dropped_dead >= before + 5
    });
    assert_eq!(stats.dropped_dead, before + 5);

    // B is still open, readable, and received nothing else.
    assert!(!util::on_esocket(b, |es| es.is_closing()));
    assert!(util::on_esocket(b, |es| es.is_readable()));
    client_b.write_all(b"still here").unwrap();
    assert_eq!(events_b.read_bytes(10), b"still here");
    client_b.set_nonblocking(true).unwrap();
    let mut extra = [0u8; 64];
    match client_b.read(&mut extra) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("B's peer got unexpected data or close: {other:?}"),
    }
    while let Ok(ev) = events_b.rx.try_recv() {
        assert!(!matches!(ev, Ev::Delete | Ev::Error(..)), "B must stay open, got {ev:?}");
    }
    util::shutdown(reactor);
}

/// Handles carry their worker's epoch: one from a stopped reactor is refused even when a new
/// reactor's worker (perhaps in the same registry slot) has an esocket with the same slot id.
#[test]
fn handle_from_a_stopped_reactor_never_reaches_a_new_one() {
    let old = util::reactor(1);
    let (_old_client, old_handle, _old_events) = util::adopted(&old, Mode::Consume);
    util::shutdown(old);

    let new = util::reactor(1);
    let (mut client, handle, events) = util::adopted(&new, Mode::Consume);
    assert_ne!(old_handle, handle);
    assert_eq!(old_handle.write(&b"from the past"[..]), Err(PostError::Gone));
    assert_eq!(old_handle.exec(|es| es.close_now()), Err(PostError::Gone));
    assert_eq!(old_handle.close(), Err(PostError::Gone));
    let reached =
        util::on_worker(new.worker(0).unwrap(), move |w| w.with_esocket(old_handle, |_| ()));
    assert_eq!(reached, None, "with_esocket must refuse another reactor's handle");

    handle.write(&b"new"[..]).unwrap();
    assert_eq!(util::read_n(&mut client, 3), b"new");
    while let Ok(ev) = events.rx.try_recv() {
        assert!(!matches!(ev, Ev::Delete | Ev::Error(..)), "the new esocket got {ev:?}");
    }
    util::shutdown(new);
}

const WRITERS: u8 = 4;
const RECORDS: u32 = 5_000;
const REC: usize = 16;

/// One distinguishable, self-checking record: magic, writer, sequence number, checksum.
fn record(writer: u8, seq: u32) -> [u8; REC] {
    let mut r = [0u8; REC];
    r[0] = 0xa5;
    r[1] = writer;
    r[2..6].copy_from_slice(&seq.to_le_bytes());
    let sum = util::Fnv::of(&r[..6]);
    r[6..14].copy_from_slice(&sum.to_le_bytes());
    r[14] = 0x5a;
    r[15] = !writer;
    r
}

fn parse(r: &[u8]) -> Option<(u8, u32)> {
    let seq = u32::from_le_bytes(r[2..6].try_into().ok()?);
    (record(r[1], seq) == r).then_some((r[1], seq))
}

enum CloseBy {
    /// A fifth thread calls `handle.close()`.
    Handle,
    /// The peer shuts down its sending side; the esocket sees end of file and closes.
    Peer,
}

/// Four threads write records through one handle while the esocket is closed under them.
/// Every record that arrives is whole and in per-writer order (a prefix of what each writer
/// sent); every posted record that did not arrive was dropped and counted; a bystander
/// esocket on the same worker receives nothing.
fn writers_racing_close(close_by: CloseBy) {
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap().clone();
    let (client, target, events) = util::adopted(&reactor, Mode::Consume);
    let (mut bystander_client, bystander, bystander_events) =
        util::adopted(&reactor, Mode::Consume);
    let dropped_before = worker.stats().dropped_dead;

    let posted = Arc::new(AtomicUsize::new(0));
    let full_retries = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(std::sync::Barrier::new(WRITERS as usize + 1));
    let mut threads = Vec::new();
    for writer in 0..WRITERS {
        let (posted, full_retries, start) = (posted.clone(), full_retries.clone(), start.clone());
        threads.push(std::thread::spawn(move || {
            start.wait();
            let deadline = Instant::now() + util::TIMEOUT;
            for seq in 0..RECORDS {
                let data = Bytes::copy_from_slice(&record(writer, seq));
                loop {
                    match target.write(data.clone()) {
                        Ok(()) => break,
                        Err(PostError::Full) => {
                            full_retries.fetch_add(1, Ordering::Relaxed);
                            assert!(Instant::now() < deadline, "inbox stayed full");
                            std::thread::yield_now();
                        }
                        Err(e) => panic!("writer {writer}: {e}"),
                    }
                }
                posted.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // The peer reads everything; in the peer-close variant it also shuts its side down.
    let shutdown_peer = matches!(close_by, CloseBy::Peer);
    let posted_for_reader = posted.clone();
    let reader = std::thread::spawn(move || {
        let mut client = client;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut shut = false;
        loop {
            if shutdown_peer && !shut && posted_for_reader.load(Ordering::Relaxed) >= 8_000 {
                client.shutdown(std::net::Shutdown::Write).unwrap();
                shut = true;
            }
            match client.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("peer read after {} bytes: {e}", got.len()),
            }
        }
    });

    start.wait();
    if let CloseBy::Handle = close_by {
        util::wait_until("writers to make progress", || posted.load(Ordering::Relaxed) >= 8_000);
        // The inbox may be full of records: retry, as any sender must.
        let deadline = Instant::now() + util::TIMEOUT;
        while let Err(e) = target.close() {
            assert_eq!(e, PostError::Full);
            assert!(Instant::now() < deadline, "inbox stayed full");
            std::thread::yield_now();
        }
    }
    for t in threads {
        t.join().expect("writer thread");
    }
    let got = reader.join().expect("reader thread");

    assert_eq!(got.len() % REC, 0, "a record was cut: {} bytes", got.len());
    let mut next = [0u32; WRITERS as usize];
    for (i, r) in got.chunks(REC).enumerate() {
        let (writer, seq) = parse(r).unwrap_or_else(|| panic!("record {i} is corrupt: {r:?}"));
        assert!(writer < WRITERS);
        assert_eq!(seq, next[writer as usize], "writer {writer} out of order at record {i}");
        next[writer as usize] += 1;
    }
    let received = (got.len() / REC) as u64;
    let total = u64::from(WRITERS) * u64::from(RECORDS);
    assert_eq!(events.deleted(), None, "a graceful close is not an error");
    // Every posted record either arrived or was dropped and counted.
    let stats = util::wait_stats(&worker, "dropped records to be counted", |s| {
        s.dropped_dead - dropped_before >= total - received
    });
    assert_eq!(stats.dropped_dead - dropped_before, total - received);
    eprintln!(
        "received {received} of {total} records; {} inbox-full retries",
        full_retries.load(Ordering::Relaxed)
    );

    // The bystander got nothing and is still open.
    bystander.write(&b"bystander"[..]).unwrap();
    assert_eq!(util::read_n(&mut bystander_client, 9), b"bystander");
    bystander_client.set_nonblocking(true).unwrap();
    match bystander_client.read(&mut [0u8; 16]) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("bystander's peer got unexpected data or close: {other:?}"),
    }
    while let Ok(ev) = bystander_events.rx.try_recv() {
        assert!(!matches!(ev, Ev::Delete | Ev::Error(..) | Ev::Read(_)), "bystander got {ev:?}");
    }
    util::shutdown(reactor);
}

#[test]
fn writers_on_four_threads_racing_a_handle_close() {
    writers_racing_close(CloseBy::Handle);
}

#[test]
fn writers_on_four_threads_racing_the_peer_closing() {
    writers_racing_close(CloseBy::Peer);
}
