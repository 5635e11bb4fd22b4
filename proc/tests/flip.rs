//! The flip: esocket callback → paired proc thread → the esocket's own worker.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded};
use dap_proc::{Flip, Next, Priority, ProcExt, ProcPool};
use dap_reactor::{Esocket, Handler, PeerAddr, Reactor};

const WAIT: Duration = Duration::from_secs(20);

/// Answers each line by computing its length on the proc thread.
struct LenOnProc {
    worker_thread: Option<std::thread::ThreadId>,
}

impl Handler for LenOnProc {
    fn on_new(&mut self, _es: &mut Esocket<'_>) {
        self.worker_thread = Some(std::thread::current().id());
    }

    fn on_read(&mut self, es: &mut Esocket<'_>) {
        while let Some(nl) = es.buf_in().iter().position(|&b| b == b'\n') {
            let line = es.buf_in()[..nl].to_vec();
            es.consume(nl + 1);
            self.flip_line(es, line);
        }
    }
}

impl LenOnProc {
    fn flip_line(&self, es: &mut Esocket<'_>, line: Vec<u8>) {
        let worker_thread = self.worker_thread;
        es.flip(
            Priority::Normal,
            move || (line.len(), std::thread::current().id()),
            move |es, (len, proc_thread)| {
                assert_ne!(Some(proc_thread), worker_thread, "work ran off the worker");
                assert_eq!(
                    Some(std::thread::current().id()),
                    worker_thread,
                    "then ran on the worker"
                );
                let _ = es.write(format!("{len}\n").as_bytes());
            },
        )
        .expect("flip starts");
    }
}

#[test]
fn flip_round_trip_to_a_live_esocket() {
    let reactor = Reactor::builder().threads(2).pin(false).start().unwrap();
    let pool = ProcPool::builder().pin(false).start_for(&reactor).unwrap();
    assert_eq!(pool.len(), 2);
    for w in reactor.workers() {
        assert_eq!(w.proc().expect("paired").index(), w.index());
    }
    let listening = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), |_: &PeerAddr| {
            Some(Box::new(LenOnProc { worker_thread: None }) as Box<dyn Handler>)
        })
        .unwrap();
    let mut c = TcpStream::connect(listening.local_addr().unwrap()).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"hello\nlonger line\n\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.iter().filter(|&&b| b == b'\n').count() < 3 {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "server closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"5\n11\n0\n");
    reactor.shutdown(Duration::from_secs(5));
}

#[test]
fn a_flip_result_for_a_closed_esocket_is_dropped_and_counted() {
    let reactor = Reactor::builder().threads(1).pin(false).start().unwrap();
    let pool = ProcPool::builder().pin(false).start_for(&reactor).unwrap();
    let proc = pool.thread(0).unwrap().clone();
    // Hold the proc thread so the flip's work waits until the esocket has closed.
    let (release, gate) = bounded::<()>(1);
    let (started_tx, started) = bounded::<()>(1);
    proc.submit(Priority::Critical, move || {
        started_tx.send(()).unwrap();
        let _ = gate.recv_timeout(WAIT);
        Next::Done
    })
    .unwrap();
    started.recv_timeout(WAIT).unwrap();

    let (events, seen) = unbounded::<&'static str>();
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    struct Flipper(crossbeam_channel::Sender<&'static str>);
    impl Handler for Flipper {
        fn on_new(&mut self, es: &mut Esocket<'_>) {
            let tx = self.0.clone();
            let tx2 = self.0.clone();
            es.flip(
                Priority::Normal,
                move || tx2.send("work").unwrap(),
                move |_, ()| {
                    tx.send("then").unwrap();
                },
            )
            .unwrap();
            es.close_now();
        }
        fn on_delete(&mut self, _es: &mut Esocket<'_>) {
            self.0.send("deleted").unwrap();
        }
    }
    let before = reactor.worker(0).unwrap().stats().dropped_dead;
    let tx = events.clone();
    reactor
        .worker(0)
        .unwrap()
        .exec(move |w| {
            w.adopt_unix(a, Box::new(Flipper(tx))).unwrap();
        })
        .unwrap();
    assert_eq!(seen.recv_timeout(WAIT).unwrap(), "deleted");
    drop(release);
    assert_eq!(seen.recv_timeout(WAIT).unwrap(), "work");
    let deadline = std::time::Instant::now() + WAIT;
    while reactor.worker(0).unwrap().stats().dropped_dead <= before {
        assert!(std::time::Instant::now() < deadline, "the dropped result was counted");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(seen.recv_timeout(Duration::from_millis(100)).is_err(), "then never ran");
    drop(b);
    reactor.shutdown(Duration::from_secs(5));
}

#[test]
fn flip_without_a_paired_pool_is_a_clear_error() {
    let reactor = Reactor::builder().threads(1).pin(false).start().unwrap();
    let (tx, rx) = bounded(1);
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    struct Try(crossbeam_channel::Sender<bool>);
    impl Handler for Try {
        fn on_new(&mut self, es: &mut Esocket<'_>) {
            let r = es.flip(Priority::Normal, || (), |_, ()| {});
            self.0.send(matches!(r, Err(dap_proc::FlipError::NoProcThread))).unwrap();
        }
    }
    reactor
        .worker(0)
        .unwrap()
        .exec(move |w| {
            w.adopt_unix(a, Box::new(Try(tx))).unwrap();
        })
        .unwrap();
    assert!(rx.recv_timeout(WAIT).unwrap());
}
