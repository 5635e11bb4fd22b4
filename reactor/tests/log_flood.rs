//! A flood of refusals logs a few lines per window, then one line counting what was left
//! out. Its own test binary: the log throttles are per call site, for the whole process,
//! and the test installs the process's log subscriber.

mod util;

use std::io::Write;
use std::sync::{Arc, Mutex};

use dap_reactor::{Esocket, Handler, Limits, PeerAddr};

/// Log lines, collected.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    /// The lines that contain `needle`.
    fn matching(&self, needle: &str) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
    }
}

/// Keeps whatever it is sent, consuming nothing.
struct Hold;

impl Handler for Hold {
    fn on_read(&mut self, _: &mut Esocket<'_>) {}
}

#[test]
fn refused_connections_log_five_lines_then_a_count_of_the_rest() {
    const REFUSAL: &str = "buffer budget exhausted; refusing a new connection";
    let lines = Lines::default();
    let sink = lines.clone();
    tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .init();
    let mut limits = Limits::default();
    limits.buffer_budget = 1024;
    let reactor = util::builder(1).limits(limits).start().unwrap();
    let budget = reactor.buffer_budget();
    let listening = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), |_: &PeerAddr| {
            Some(Box::new(Hold) as Box<dyn Handler>)
        })
        .unwrap();
    let addr = listening.local_addr().unwrap();
    // One holder of 2 KiB (within what any connection may park) puts the total past 1 KiB.
    let mut holder = util::connect(addr);
    holder.write_all(&[0; 2048]).unwrap();
    util::wait_until("the budget to be exhausted", || budget.is_over());

    // A flood of 30 refusals in a moment: five lines, the rest held back.
    for _ in 0..30 {
        let mut s = util::connect(addr);
        util::assert_closed(&mut s, true);
    }
    util::wait_until("30 refusals", || budget.refused_accepts() == 30);
    assert_eq!(lines.matching(REFUSAL).len(), 5, "{:?}", lines.matching(REFUSAL));

    // The next window's first refusal says how many were left out: the 25 above and any
    // refused below before the window ended. The window is 10 s of real time: refuse one
    // every half second until its line appears (bounded well past the window).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let sixth = loop {
        assert!(std::time::Instant::now() < deadline, "no line counted the suppressed refusals");
        let mut s = util::connect(addr);
        util::assert_closed(&mut s, true);
        if let Some(line) = lines.matching(REFUSAL).get(5) {
            break line.clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let suppressed: u64 = sixth
        .split("suppressed=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no suppressed count in {sixth:?}"));
    assert!(suppressed >= 25, "{sixth}");
    assert_eq!(suppressed + 6, budget.refused_accepts(), "every refusal is logged or counted");
    drop(holder);
    drop(listening);
    util::shutdown(reactor);
}
