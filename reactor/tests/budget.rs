//! `Limits::buffer_budget`: the input and output buffer memory of every esocket together.
//! Peers that send half a message and go quiet are closed past the budget, new connections
//! are refused while it is exhausted, writes see less room, and well-behaved connections
//! keep working throughout; the memory is given back when the holders go.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dap_reactor::{Esocket, Handler, Limits, PARKED_FREE, PeerAddr, ReactorError};

/// Echoes whole lines back and leaves a partial line waiting for the rest.
struct Lines;

impl Handler for Lines {
    fn on_read(&mut self, es: &mut Esocket<'_>) {
        let Some(end) = es.buf_in().iter().rposition(|&b| b == b'\n') else { return };
        let line = es.buf_in()[..=end].to_vec();
        es.consume(end + 1);
        let _ = es.write(&line);
    }
}

/// Connects and proves the connection is served: one line echoed.
fn served(addr: std::net::SocketAddr, line: &[u8]) -> TcpStream {
    let mut s = util::connect(addr);
    util::round_trip(&mut s, line);
    s
}

#[test]
fn parked_partial_input_is_small_and_past_the_budget_the_holders_go() {
    const BUDGET: usize = 64 * 1024;
    const PARTIAL: usize = 8 * 1024;
    let mut limits = Limits::default();
    limits.buffer_budget = BUDGET;
    let reactor = util::builder(1).limits(limits).start().unwrap();
    let budget = reactor.buffer_budget();
    let listening = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), |_: &PeerAddr| {
            Some(Box::new(Lines) as Box<dyn Handler>)
        })
        .unwrap();
    let addr = listening.local_addr().unwrap();
    let mut legit = served(addr, b"hello\n");

    // One peer sends half a line and goes quiet: it holds its bytes (parked in storage of
    // their size), not a whole 64 KiB read buffer.
    let mut first = util::connect(addr);
    first.write_all(&[b'x'; 100]).unwrap();
    util::wait_until("the partial line to be parked", || budget.used() == 100);

    // Connected (and served) before the budget runs out.
    let mut big = served(addr, b"hi\n");

    // Peers holding a few KiB each push the total past the budget; each holds no more than
    // PARKED_FREE, so none of them is closed for it.
    const SMALL: usize = 3000;
    const { assert!(SMALL <= PARKED_FREE && PARTIAL > PARKED_FREE) };
    // All of them accepted first: past the budget, new connections are refused, and a
    // busy machine could read the first holders' bytes before accepting the last ones.
    let worker = reactor.worker(0).unwrap();
    let accepted = util::on_worker(worker, |w| w.stats().accepted);
    let mut holders: Vec<_> = (0..BUDGET / SMALL + 2).map(|_| util::connect(addr)).collect();
    let all = accepted + holders.len() as u64;
    util::wait_until("the holders to be accepted", || {
        util::on_worker(worker, |w| w.stats().accepted) == all
    });
    for s in &mut holders {
        s.write_all(&vec![b'y'; SMALL]).unwrap();
    }
    let small_total = 100 + holders.len() * SMALL;
    util::wait_until("the small partials to be parked", || budget.used() == small_total);
    assert!(budget.is_over() && budget.closed() == 0);

    // A peer holding more is closed: it was using the node as storage.
    big.write_all(&vec![b'z'; PARTIAL]).unwrap();
    util::wait_until("the budget to close the big holder", || budget.closed() == 1);
    util::assert_closed(&mut big, true);
    assert!(budget.peak() <= small_total + PARTIAL, "peak {} over the bound", budget.peak());
    let stats = util::on_worker(reactor.worker(0).unwrap(), |w| w.stats());
    assert_eq!(stats.budget_closed, 1);

    // While exhausted: a new connection is refused at once, an established one is served.
    let mut late = util::connect(addr);
    let _ = late.write_all(b"late\n");
    util::assert_closed(&mut late, true);
    assert!(budget.refused_accepts() > 0);
    util::round_trip(&mut legit, b"still here\n");

    // The holders go: the memory comes back and new connections are served again.
    drop(holders);
    drop(first);
    util::wait_until("the budget to empty", || budget.used() == 0);
    let _again = served(addr, b"again\n");
    util::round_trip(&mut legit, b"and again\n");
    drop(listening);
    util::shutdown(reactor);
}

#[test]
fn a_closed_holder_learns_why() {
    const BUDGET: usize = 16 * 1024;
    let mut limits = Limits::default();
    limits.buffer_budget = BUDGET;
    let reactor = util::builder(1).limits(limits).start().unwrap();
    let budget = reactor.buffer_budget();
    let why = Arc::new(Mutex::new(Vec::new()));
    let w = why.clone();
    let listening = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), move |_: &PeerAddr| {
            struct Tell(Arc<Mutex<Vec<Option<ReactorError>>>>);
            impl Handler for Tell {
                fn on_read(&mut self, _: &mut Esocket<'_>) {}
                fn on_error(&mut self, _: &mut Esocket<'_>, err: &std::io::Error) {
                    self.0.lock().unwrap().push(ReactorError::of(err));
                }
            }
            Some(Box::new(Tell(w.clone())) as Box<dyn Handler>)
        })
        .unwrap();
    let addr = listening.local_addr().unwrap();
    let mut a = util::connect(addr);
    a.write_all(&vec![1; 12 * 1024]).unwrap();
    util::wait_until("the first to be parked", || budget.used() == 12 * 1024);
    let mut b = util::connect(addr);
    b.write_all(&vec![2; 12 * 1024]).unwrap();
    util::wait_until("the second to be closed", || !why.lock().unwrap().is_empty());
    assert_eq!(why.lock().unwrap()[0], Some(ReactorError::BufferBudget));
    util::assert_closed(&mut b, true);
    // The first is still there, holding its bytes.
    a.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let mut byte = [0u8; 1];
    assert!(
        matches!(a.read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut)
    );
    assert_eq!(budget.used(), 12 * 1024);
    drop(listening);
    util::shutdown(reactor);
}

/// Writes a pattern until `WouldBlock`, then waits for `on_write`; records what was taken.
struct Pusher {
    total: usize,
    sent: usize,
}

impl Pusher {
    fn pump(&mut self, es: &mut Esocket<'_>) {
        while self.sent < self.total {
            let n = (self.total - self.sent).min(8 * 1024);
            match es.write(&util::pattern(self.sent as u64, n)) {
                Ok(k) => self.sent += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => panic!("write: {e}"),
            }
        }
        es.close();
    }
}

impl Handler for Pusher {
    fn on_new(&mut self, es: &mut Esocket<'_>) {
        self.pump(es);
    }
    fn on_write(&mut self, es: &mut Esocket<'_>) -> bool {
        self.pump(es);
        false
    }
}

#[test]
fn past_the_budget_writes_see_the_low_water_mark_and_nothing_is_lost() {
    const BUDGET: usize = 96 * 1024;
    const LOW: usize = 16 * 1024;
    const TOTAL: usize = 2 << 20;
    let mut limits = Limits::default();
    limits.buffer_budget = BUDGET;
    limits.buf_out_cap = 256 * 1024;
    limits.buf_out_low_water = LOW;
    let reactor = util::builder(1).limits(limits).start().unwrap();
    let budget = reactor.buffer_budget();
    let mut peers = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..4 {
        let (client, server) = util::small_tcp_pair(16 * 1024);
        let h = util::on_worker(reactor.worker(0).unwrap(), move |w| {
            w.adopt_tcp(server, Box::new(Pusher { total: TOTAL, sent: 0 }))
        })
        .unwrap();
        peers.push(client);
        handles.push(h);
    }
    // Nobody reads: output piles up to the budget, then each esocket only to the low-water
    // mark (and one write past it).
    util::wait_until("writers to be held back by the budget", || budget.write_refusals() > 0);
    let held: Vec<usize> =
        handles.iter().map(|&h| util::on_esocket(h, |es| es.out_len())).collect();
    let total: usize = held.iter().sum();
    assert!(
        total <= BUDGET + 4 * (LOW + 8 * 1024),
        "queued {total} bytes ({held:?}) past a {BUDGET}-byte budget"
    );
    // Every peer reads: everything every writer was given arrives, in order.
    let readers: Vec<_> = peers
        .into_iter()
        .map(|mut p| std::thread::spawn(move || util::read_to_eof(&mut p)))
        .collect();
    for r in readers {
        let got = r.join().unwrap();
        assert_eq!(got.len(), TOTAL);
        util::assert_pattern(&got);
    }
    util::wait_until("the budget to empty", || budget.used() == 0);
    util::shutdown(reactor);
}
