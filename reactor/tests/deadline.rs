//! Per-esocket deadlines (`Esocket::set_deadline` → `Handler::on_timeout`) and reaching a
//! handler's state from outside its callbacks (`Esocket::with_handler`).

mod util;

use std::io::Read;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use dap_reactor::{Esocket, Handler, ReactorError};

/// Reports each timeout; on the first it answers "late" and closes gracefully when `answer`
/// is set, else it declines and the reactor fails the esocket.
struct Timed {
    answer: bool,
    fired: Sender<Instant>,
    errors: Sender<Option<ReactorError>>,
    counter: u32,
}

impl Handler for Timed {
    fn on_timeout(&mut self, es: &mut Esocket<'_>) -> bool {
        let _ = self.fired.send(Instant::now());
        if self.answer {
            es.write(b"late").unwrap();
            es.close();
        }
        self.answer
    }

    fn on_error(&mut self, _: &mut Esocket<'_>, err: &std::io::Error) {
        let _ = self.errors.send(ReactorError::of(err));
    }
}

fn timed(
    answer: bool,
) -> (Timed, crossbeam_channel::Receiver<Instant>, crossbeam_channel::Receiver<Option<ReactorError>>)
{
    let (fired, fired_rx) = crossbeam_channel::unbounded();
    let (errors, errors_rx) = crossbeam_channel::unbounded();
    (Timed { answer, fired, errors, counter: 0 }, fired_rx, errors_rx)
}

#[test]
fn a_declined_deadline_fails_the_esocket_with_deadline_timeout() {
    let reactor = util::reactor(1);
    let (mut client, server) = util::tcp_pair();
    let (h, fired, errors) = timed(false);
    let handle = util::on_worker(reactor.worker(0).unwrap(), move |w| {
        w.adopt_tcp(server, Box::new(h)).unwrap()
    });
    util::on_esocket(handle, |es| es.set_deadline(Some(Duration::from_millis(20)))).unwrap();
    util::recv(&fired, "the deadline to fire");
    assert_eq!(util::recv(&errors, "the error callback"), Some(ReactorError::DeadlineTimeout));
    util::assert_closed(&mut client, true);
    util::shutdown(reactor);
}

#[test]
fn a_handled_deadline_can_answer_before_closing() {
    let reactor = util::reactor(1);
    let (mut client, server) = util::tcp_pair();
    let (h, fired, errors) = timed(true);
    let handle = util::on_worker(reactor.worker(0).unwrap(), move |w| {
        w.adopt_tcp(server, Box::new(h)).unwrap()
    });
    util::on_esocket(handle, |es| es.set_deadline(Some(Duration::from_millis(5)))).unwrap();
    util::recv(&fired, "the deadline to fire");
    assert_eq!(util::read_to_eof(&mut client), b"late");
    assert!(errors.try_recv().is_err(), "an answered timeout is no error");
    util::shutdown(reactor);
}

/// Moving a deadline later never lets the earlier one fire; moving it earlier re-arms; and a
/// cleared deadline never fires (checked by setting a later one that does).
#[test]
fn deadlines_move_both_ways_and_clear() {
    let reactor = util::reactor(1);
    let (_client, server) = util::tcp_pair();
    let (h, fired, _errors) = timed(true);
    let handle = util::on_worker(reactor.worker(0).unwrap(), move |w| {
        w.adopt_tcp(server, Box::new(h)).unwrap()
    });
    // Later: set 10 ms, then 300 ms. The loop clock may lag the caller's by the length of a
    // turn, hence the 50 ms of slack; a 10 ms deadline that fired would show up far below.
    let moved = Instant::now();
    util::on_esocket(handle, |es| {
        es.set_deadline(Some(Duration::from_millis(10))).unwrap();
        es.set_deadline(Some(Duration::from_millis(300))).unwrap();
    });
    let at = util::recv(&fired, "the moved deadline");
    assert!(at - moved >= Duration::from_millis(250), "fired {:?} after the move", at - moved);
    util::shutdown(reactor);

    let reactor = util::reactor(1);
    let (_client, server) = util::tcp_pair();
    let (h, fired, _errors) = timed(true);
    let handle = util::on_worker(reactor.worker(0).unwrap(), move |w| {
        w.adopt_tcp(server, Box::new(h)).unwrap()
    });
    // Earlier: an hour, then 5 ms: it fires (bounded by util::recv's timeout).
    util::on_esocket(handle, |es| {
        es.set_deadline(Some(Duration::from_secs(3600))).unwrap();
        es.set_deadline(Some(Duration::from_millis(5))).unwrap();
    });
    util::recv(&fired, "the earlier deadline");
    util::shutdown(reactor);

    let reactor = util::reactor(1);
    let (_client, server) = util::tcp_pair();
    let (h, fired, _errors) = timed(true);
    let handle = util::on_worker(reactor.worker(0).unwrap(), move |w| {
        w.adopt_tcp(server, Box::new(h)).unwrap()
    });
    // Cleared: 5 ms, cleared, then 300 ms: the timeout that comes is the last one.
    let set = Instant::now();
    util::on_esocket(handle, |es| {
        es.set_deadline(Some(Duration::from_millis(5))).unwrap();
        es.set_deadline(None).unwrap();
        es.set_deadline(Some(Duration::from_millis(300))).unwrap();
    });
    let at = util::recv(&fired, "the last deadline");
    assert!(at - set >= Duration::from_millis(250), "fired {:?} after the set", at - set);
    util::shutdown(reactor);
}

#[test]
fn with_handler_reaches_the_handler_of_the_right_type_only() {
    let reactor = util::reactor(1);
    let (mut client, server) = util::tcp_pair();
    let (h, _fired, _errors) = timed(false);
    let handle = util::on_worker(reactor.worker(0).unwrap(), move |w| {
        w.adopt_tcp(server, Box::new(h)).unwrap()
    });
    let counted = util::on_esocket(handle, |es| {
        es.with_handler::<Timed, _>(|h, es| {
            h.counter += 1;
            es.write(b"from the handler").unwrap();
            h.counter
        })
    });
    assert_eq!(counted, Some(1));
    let mut got = [0; 16];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from the handler");
    struct Other;
    impl Handler for Other {}
    assert!(util::on_esocket(handle, |es| es.with_handler::<Other, _>(|_, _| ())).is_none());
    util::shutdown(reactor);
}
