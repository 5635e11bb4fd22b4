//! Pipe esockets: bytes written to the `PipeWriter` (from any thread) arrive through `on_read`.

mod util;

use std::io::{ErrorKind, Write};

use dap_reactor::EsocketKind;
use util::{Ev, Mode, Recorder};

#[test]
fn bytes_written_to_the_pipe_arrive_in_order() {
    const TOTAL: usize = 1 << 20;
    let reactor = util::reactor(1);
    let (rec, events) = Recorder::new(Mode::Consume);
    let (handle, mut writer) =
        util::on_worker(reactor.worker(0).unwrap(), move |w| w.add_pipe(rec.boxed()).unwrap());
    assert!(matches!(events.next(), Ev::New(_, EsocketKind::Pipe)));
    assert_eq!(
        util::on_esocket(handle, |es| es.write(b"x").unwrap_err().kind()),
        ErrorKind::Unsupported
    );

    let data = util::random_bytes(3, TOTAL);
    let sent = data.clone();
    let t = std::thread::spawn(move || {
        writer.set_nonblocking(false).unwrap();
        for chunk in sent.chunks(7_000) {
            writer.write_all(chunk).unwrap();
        }
        writer
    });
    let got = events.read_bytes(TOTAL);
    assert_eq!(util::Fnv::of(&got), util::Fnv::of(&data));

    // Dropping the writer ends the stream: the pipe esocket closes, without an error.
    drop(t.join().unwrap());
    assert_eq!(events.deleted(), None);
    util::shutdown(reactor);
}

#[test]
fn non_blocking_writer_reports_would_block_when_the_pipe_is_full() {
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap().clone();
    let (handle, mut writer) = util::on_worker(&worker, |w| {
        let (rec, _events) = Recorder::new(Mode::Consume);
        w.add_pipe(rec.boxed()).unwrap()
    });
    // Stop reading, then fill the kernel's pipe buffer.
    handle.set_readable(false).unwrap();
    assert!(!util::on_esocket(handle, |es| es.is_readable()));
    let chunk = [0u8; 4096];
    let mut written = 0usize;
    loop {
        match writer.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("pipe write: {e}"),
        }
        assert!(written < 64 << 20, "the pipe never filled");
    }
    assert!(written > 0);
    util::shutdown(reactor);
}

/// Bytes and the writer's close that arrive together (one readiness event) must both be
/// seen. The worker is held busy while the writer writes and closes.
#[test]
fn data_followed_at_once_by_close_is_read_and_the_close_is_seen() {
    let reactor = util::reactor(1);
    let worker = reactor.worker(0).unwrap().clone();
    let (rec, events) = Recorder::new(Mode::Consume);
    let (_, mut writer) = util::on_worker(&worker, move |w| w.add_pipe(rec.boxed()).unwrap());
    events.new_handle();

    let release = util::hold(&worker);
    writer.write_all(b"last words").unwrap();
    drop(writer);
    release.send(()).unwrap();

    assert_eq!(events.read_bytes(10), b"last words");
    assert_eq!(events.deleted(), None, "the writer's close must be noticed");
    util::shutdown(reactor);
}
