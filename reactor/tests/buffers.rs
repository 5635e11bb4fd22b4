//! `buf_in` and `buf_out`: hard caps, back-pressure in both directions, nothing lost.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dap_reactor::{Esocket, EsocketHandle, Handler, Limits, Reactor};
use util::{Ev, Fnv, Mode, Recorder};

const IN_CAP: usize = 4 * 1024;
const OUT_CAP: usize = 64 * 1024;
const LOW_WATER: usize = 16 * 1024;

fn small_buffers() -> Limits {
    let mut limits = Limits::default();
    limits.buf_in_cap = IN_CAP;
    limits.buf_out_cap = OUT_CAP;
    limits.buf_out_low_water = LOW_WATER;
    limits
}

/// Kernel socket buffer size for the back-pressure tests.
const KERNEL_BUF: usize = 16 * 1024;

#[track_caller]
fn adopt(
    reactor: &Reactor,
    handler: Box<dyn Handler + Send>,
) -> (std::net::TcpStream, EsocketHandle) {
    adopt_pair(reactor, util::tcp_pair(), handler)
}

#[track_caller]
fn adopt_pair(
    reactor: &Reactor,
    (client, server): (std::net::TcpStream, std::net::TcpStream),
    handler: Box<dyn Handler + Send>,
) -> (std::net::TcpStream, EsocketHandle) {
    let handle = util::on_worker(reactor.worker(0).unwrap(), move |w| w.adopt_tcp(server, handler))
        .expect("adopt");
    (client, handle)
}

// ---------------------------------------------------------------------------------------------
// buf_in: a full input buffer pauses reading; nothing is discarded.

#[derive(Debug, Default)]
struct Intake {
    hash: Fnv,
    consumed: usize,
    /// Bytes the handler may consume before it pauses again.
    budget: usize,
    /// The largest `buf_in` the handler ever saw.
    max_in: usize,
}

impl Intake {
    fn take(&mut self, es: &mut Esocket<'_>) {
        self.max_in = self.max_in.max(es.buf_in().len());
        let n = self.budget.min(es.buf_in().len());
        self.hash.update(&es.buf_in()[..n]);
        es.consume(n);
        self.consumed += n;
        self.budget -= n;
    }
}

/// Consumes only while it has budget; otherwise leaves `buf_in` alone.
struct SlowReader(Arc<Mutex<Intake>>);

impl Handler for SlowReader {
    fn on_read(&mut self, es: &mut Esocket<'_>) {
        self.0.lock().unwrap().take(es);
    }
}

#[test]
fn full_buf_in_pauses_reading_and_resumes_without_loss() {
    const TOTAL: usize = 4 << 20;
    const BURST: usize = 256 * 1024;
    let reactor = util::builder(1).limits(small_buffers()).start().unwrap();
    let intake = Arc::new(Mutex::new(Intake::default()));
    let pair = util::small_tcp_pair(KERNEL_BUF);
    let (mut client, handle) = adopt_pair(&reactor, pair, Box::new(SlowReader(intake.clone())));
    let data = util::random_bytes(7, TOTAL);
    client.set_nonblocking(true).unwrap();
    let mut sent = 0;
    let deadline = Instant::now() + util::TIMEOUT * 3;

    // Paused from the start: the client must stall, with buf_in full and nothing consumed.
    loop {
        match client.write(&data[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("client write: {e}"),
        }
        assert!(sent < TOTAL, "the client never stalled although the handler consumed nothing");
        assert!(Instant::now() < deadline, "timed out filling the pipe");
    }
    util::wait_until("buf_in to reach its cap", || {
        util::on_esocket(handle, |es| es.buf_in().len()) == IN_CAP
    });
    assert_eq!(intake.lock().unwrap().consumed, 0);
    assert!(sent > IN_CAP, "the kernel buffers took more than buf_in holds");

    // Consume in bursts, triggered from this thread, until everything has gone through.
    let mut bursts = 0;
    loop {
        let (consumed, budget) = {
            let s = intake.lock().unwrap();
            (s.consumed, s.budget)
        };
        if consumed == TOTAL {
            break;
        }
        assert!(Instant::now() < deadline, "stuck at {consumed} of {TOTAL} consumed ({sent} sent)");
        if budget == 0 {
            bursts += 1;
            let intake = intake.clone();
            handle
                .exec(move |es| {
                    let mut s = intake.lock().unwrap();
                    s.budget += BURST;
                    s.take(es);
                })
                .unwrap();
        }
        if sent < TOTAL {
            match client.write(&data[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("client write: {e}"),
            }
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let s = intake.lock().unwrap();
    assert_eq!(s.hash.0, Fnv::of(&data), "consumed bytes differ from the sent ones");
    assert!(s.max_in <= IN_CAP, "buf_in held {} bytes, over its cap", s.max_in);
    assert!(bursts >= TOTAL / BURST);
    assert!(!util::on_esocket(handle, |es| es.is_closing()));
    drop(s);
    util::shutdown(reactor);
}

// ---------------------------------------------------------------------------------------------
// buf_out: a full output buffer refuses writes; on_write fires at the low-water mark.

#[derive(Debug, Default)]
struct Output {
    accepted: u64,
    would_block: u64,
    stop: bool,
    /// `out_len` seen by each `on_write` after `stop` was set.
    on_write_after_stop: Vec<usize>,
}

impl Output {
    fn fill(&mut self, es: &mut Esocket<'_>) {
        while !self.stop {
            let chunk = util::pattern(self.accepted, 16 * 1024);
            match es.write(&chunk) {
                Ok(n) => self.accepted += n as u64,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    assert_eq!(es.out_len(), OUT_CAP, "WouldBlock only when output is full");
                    assert_eq!(es.out_room(), 0);
                    self.would_block += 1;
                    return;
                }
                Err(e) => panic!("write: {e}"),
            }
        }
    }
}

/// Writes until `write` refuses, then waits for `on_write`.
struct Pusher(Arc<Mutex<Output>>);

impl Handler for Pusher {
    fn on_new(&mut self, es: &mut Esocket<'_>) {
        self.0.lock().unwrap().fill(es);
    }

    fn on_write(&mut self, es: &mut Esocket<'_>) -> bool {
        let mut s = self.0.lock().unwrap();
        if s.stop {
            s.on_write_after_stop.push(es.out_len());
            es.close();
        } else {
            s.fill(es);
        }
        false
    }
}

#[test]
fn full_buf_out_refuses_writes_and_on_write_fires_at_low_water() {
    let reactor = util::builder(1).limits(small_buffers()).start().unwrap();
    let out = Arc::new(Mutex::new(Output::default()));
    let pair = util::small_tcp_pair(KERNEL_BUF);
    let (mut client, handle) = adopt_pair(&reactor, pair, Box::new(Pusher(out.clone())));

    // The peer does not read: the writer must come to a halt, with output queued and no more
    // bytes accepted.
    let mut last = u64::MAX;
    util::wait_until("the writer to stall on a full buf_out", || {
        let out_len = util::on_esocket(handle, |es| es.out_len());
        let accepted = out.lock().unwrap().accepted;
        let stalled = out_len > 0 && accepted == last;
        last = accepted;
        if !stalled {
            std::thread::sleep(Duration::from_millis(50));
        }
        stalled
    });
    let accepted = {
        let mut s = out.lock().unwrap();
        assert!(s.would_block > 0, "write never returned WouldBlock");
        s.stop = true;
        s.accepted
    };

    // Now the peer reads everything: on_write fires once output drains to the low-water mark,
    // the handler closes, and every accepted byte arrives.
    let got = util::read_to_eof(&mut client);
    assert_eq!(got.len() as u64, accepted, "received bytes differ from those write() accepted");
    util::assert_pattern(&got);
    let s = out.lock().unwrap();
    assert!(!s.on_write_after_stop.is_empty(), "on_write never fired after the peer read");
    assert!(
        s.on_write_after_stop.iter().all(|&n| n <= LOW_WATER),
        "on_write fired above the low-water mark: {:?}",
        s.on_write_after_stop
    );
    drop(s);
    util::shutdown(reactor);
}

// ---------------------------------------------------------------------------------------------
// Bulk writers driven by on_write, with the peer reading as fast as it can.

#[derive(Clone, Copy, Debug)]
enum Drive {
    /// `write` until WouldBlock; `on_write` fires when output drains (returns false).
    Blocked,
    /// Write interest on (`on_write` returns true) and `write` only what `out_room` allows.
    Interest,
    /// `write_bytes` in shared chunks, all or nothing.
    Shared,
}

struct Bulk {
    total: u64,
    sent: u64,
    drive: Drive,
}

impl Bulk {
    /// Writes more; returns whether there is more to write.
    fn pump(&mut self, es: &mut Esocket<'_>) -> bool {
        while self.sent < self.total {
            let len = (self.total - self.sent).min(24 * 1024) as usize;
            match self.drive {
                Drive::Blocked => match es.write(&util::pattern(self.sent, len)) {
                    Ok(n) => self.sent += n as u64,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                    Err(e) => panic!("write: {e}"),
                },
                Drive::Interest => {
                    let room = es.out_room().min(len);
                    if room == 0 {
                        return true;
                    }
                    self.sent += es.write(&util::pattern(self.sent, room)).unwrap() as u64;
                }
                Drive::Shared => match es.write_bytes(Bytes::from(util::pattern(self.sent, len))) {
                    Ok(()) => self.sent += len as u64,
                    Err(back) => {
                        assert_eq!(back.len(), len, "write_bytes hands the data back whole");
                        return true;
                    }
                },
            }
        }
        es.close();
        false
    }
}

impl Handler for Bulk {
    fn on_new(&mut self, es: &mut Esocket<'_>) {
        if self.pump(es) && matches!(self.drive, Drive::Interest) {
            es.set_writable(true);
        }
    }

    fn on_write(&mut self, es: &mut Esocket<'_>) -> bool {
        self.pump(es) && matches!(self.drive, Drive::Interest)
    }
}

fn bulk_transfer(drive: Drive) {
    const TOTAL: u64 = 16 << 20;
    let reactor = util::builder(1).limits(small_buffers()).start().unwrap();
    let (mut client, _handle) = adopt(&reactor, Box::new(Bulk { total: TOTAL, sent: 0, drive }));
    let got = util::read_to_eof(&mut client);
    assert_eq!(got.len() as u64, TOTAL);
    util::assert_pattern(&got);
    util::shutdown(reactor);
}

#[test]
fn bulk_writer_driven_by_write_would_block_delivers_everything() {
    bulk_transfer(Drive::Blocked);
}

#[test]
fn bulk_writer_driven_by_write_interest_delivers_everything() {
    bulk_transfer(Drive::Interest);
}

#[test]
fn bulk_writer_using_write_bytes_delivers_everything() {
    bulk_transfer(Drive::Shared);
}

#[test]
fn echo_through_small_buffers_loses_nothing() {
    const TOTAL: usize = 4 << 20;
    let reactor = util::builder(1).limits(small_buffers()).start().unwrap();
    let (rec, _events) = Recorder::new(Mode::Echo);
    let (mut client, _handle) = adopt(&reactor, Box::new(rec));
    let data = util::random_bytes(11, TOTAL);
    let mut writer = client.try_clone().unwrap();
    let sent = data.clone();
    let t = std::thread::spawn(move || {
        util::write_all(&mut writer, &sent);
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(TOTAL);
    let mut buf = vec![0u8; 64 * 1024];
    while back.len() < TOTAL {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "echo closed early after {} bytes", back.len());
        back.extend_from_slice(&buf[..n]);
    }
    t.join().unwrap();
    assert_eq!(back.len(), TOTAL);
    assert_eq!(Fnv::of(&back), Fnv::of(&data));
    util::shutdown(reactor);
}

#[test]
fn cross_thread_writes_past_the_slack_close_with_output_overflow() {
    let mut limits = small_buffers();
    limits.handle_write_slack = 64 * 1024;
    let reactor = util::builder(1).limits(limits).start().unwrap();
    let worker = reactor.worker(0).unwrap();
    let (rec, events) = Recorder::new(Mode::Consume);
    let (_client, handle) = adopt(&reactor, Box::new(rec));
    events.new_handle();
    // The peer never reads; the kernel takes some, then output piles up past cap + slack.
    let chunk = Bytes::from(vec![7u8; 32 * 1024]);
    let deadline = Instant::now() + util::TIMEOUT;
    loop {
        match handle.write(chunk.clone()) {
            Ok(()) | Err(dap_reactor::PostError::Full) => {}
            Err(e) => panic!("write through the handle: {e}"),
        }
        if let Ok(ev) = events.rx.try_recv() {
            match ev {
                Ev::Error(kind, re) => {
                    assert_eq!(kind, ErrorKind::Other);
                    assert_eq!(re, Some(dap_reactor::ReactorError::OutputOverflow));
                    break;
                }
                Ev::WriteFinished => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(Instant::now() < deadline, "output never overflowed");
        std::thread::yield_now();
    }
    assert!(matches!(events.next(), Ev::Delete));
    util::wait_stats(worker, "overflow_closed", |s| s.overflow_closed == 1);
    util::shutdown(reactor);
}

// ---------------------------------------------------------------------------------------------
// Per-esocket caps: raised for bulk transports, within `buf_cap_max`.

#[test]
fn an_esocket_can_raise_its_own_caps_within_buf_cap_max() {
    let mut limits = small_buffers();
    limits.buf_cap_max = 256 * 1024;
    let reactor = util::builder(1).limits(limits).start().unwrap();
    // A reader that never consumes: buf_in fills to its cap and reading pauses there.
    let intake = Arc::new(Mutex::new(Intake::default()));
    let (mut client, handle) = adopt(&reactor, Box::new(SlowReader(intake.clone())));
    util::on_esocket(handle, |es| es.set_buffer_caps(32 * 1024, 200 * 1024));
    assert_eq!(util::on_esocket(handle, |es| es.out_room()), 200 * 1024);
    client.write_all(&[7u8; 40 * 1024]).unwrap();
    util::wait_until("buf_in to fill to the raised cap", || {
        util::on_esocket(handle, |es| es.buf_in().len()) == 32 * 1024
    });
    assert_eq!(intake.lock().unwrap().max_in, 32 * 1024, "never past the raised cap");
    // Clamped: never above buf_cap_max, never below the worker's own caps.
    util::on_esocket(handle, |es| es.set_buffer_caps(usize::MAX, usize::MAX));
    assert_eq!(util::on_esocket(handle, |es| es.out_room()), 256 * 1024);
    util::on_esocket(handle, |es| es.set_buffer_caps(0, 0));
    assert_eq!(util::on_esocket(handle, |es| es.out_room()), OUT_CAP);
    // Lowered below what it holds: nothing is lost or read past the cap.
    assert_eq!(util::on_esocket(handle, |es| es.buf_in().len()), 32 * 1024);
    util::shutdown(reactor);
}
