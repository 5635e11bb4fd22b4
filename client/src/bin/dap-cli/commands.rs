//! The commands other than `bench`.

use std::io::{BufRead, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use dap_client::{Client, ClientConfig, Stage, Status, WriteError};
use dap_reactor::Reactor;
use dap_stream::ChannelProcs;
use dap_stream::pubsub::{PUBSUB, PubSubMsg, Topic};
use parking_lot::Mutex;

use crate::{Fail, fail};

/// A one-worker reactor and a client on it; what arrives goes to the receiver.
pub(crate) struct Session {
    pub(crate) client: Client,
    pub(crate) rx: Receiver<(u8, dap_stream::Message)>,
    // Dropped after the client (fields drop in order).
    _reactor: Reactor,
}

impl Session {
    pub(crate) fn open(cfg: ClientConfig, channels: &[u8]) -> Result<Session, Fail> {
        let reactor = Reactor::builder()
            .threads(1)
            .pin(false)
            .start()
            .map_err(|e| fail(format!("cannot start the reactor: {e}")))?;
        let cfg = cfg.channels(channels);
        let client = Client::new(&reactor.workers()[0], cfg, ChannelProcs::new())?;
        let (tx, rx) = crossbeam_channel::unbounded();
        client.on_message(move |ch, m| {
            let _ = tx.send((ch, m));
        });
        Ok(Session { client, rx, _reactor: reactor })
    }

    /// Reaches streaming.
    pub(crate) fn stream(&self, timeout: Duration) -> Result<(), Fail> {
        self.client.go_stage_blocking(Stage::StreamStreaming, overall(timeout))?;
        Ok(())
    }

    /// Writes, waiting out back-pressure for up to `timeout`.
    pub(crate) fn write(&self, ch: u8, ty: u8, data: Bytes, timeout: Duration) -> Result<(), Fail> {
        let deadline = Instant::now() + timeout;
        let mut data = data;
        loop {
            match self.client.write(ch, ty, data) {
                Ok(()) => return Ok(()),
                Err(WriteError::Full(d)) if Instant::now() < deadline => {
                    data = d;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => return Err(self.explain(e.to_string())),
            }
        }
    }

    /// The next message, or why none came.
    pub(crate) fn recv(&self, timeout: Duration) -> Result<(u8, dap_stream::Message), Fail> {
        // A timeout too large for the clock means none.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            match self.rx.recv_timeout(Duration::from_millis(50)) {
                Ok(m) => return Ok(m),
                Err(RecvTimeoutError::Disconnected) => return Err(fail("the client stopped")),
                Err(RecvTimeoutError::Timeout) => {
                    if !self.client.is_streaming() {
                        return Err(self.explain("the stream ended".into()));
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(crate::timed_out(format!("no answer within {timeout:?}")));
                    }
                }
            }
        }
    }

    /// A failure, with the client's own reason when it has one.
    fn explain(&self, what: String) -> Fail {
        match self.client.last_error() {
            Some(e) => Fail::from(e),
            None => fail(what),
        }
    }
}

/// How long a whole climb to streaming may take: each stage's tries, each try bounded by a
/// connect and an answer, plus the delays between tries.
fn overall(timeout: Duration) -> Duration {
    timeout * 2 * 3 * 4 + Duration::from_secs(5)
}

pub(crate) fn ping(cfg: ClientConfig, timeout: Duration) -> Result<(), Fail> {
    let s = Session::open(cfg, b"E")?;
    let marks = Arc::new(Mutex::new(Vec::new()));
    let m = marks.clone();
    s.client.on_status(move |stage, status, _| m.lock().push((stage, status, Instant::now())));
    let start = Instant::now();
    let result = s.stream(timeout);
    let total = start.elapsed();
    let marks = marks.lock().clone();
    let mut began = start;
    let mut out = std::io::stdout().lock();
    for (stage, status, at) in marks {
        match status {
            Status::InProgress => began = at,
            Status::Done => {
                let ms = at.duration_since(began).as_secs_f64() * 1e3;
                let _ = writeln!(out, "{:<18}{ms:>9.3} ms", stage.name());
            }
            Status::Error => {
                let _ = writeln!(out, "{:<18}    error", stage.name());
            }
            Status::None | Status::Complete => {}
        }
    }
    result?;
    let _ = writeln!(out, "{:<18}{:>9.3} ms", "total", total.as_secs_f64() * 1e3);
    let transport = match s.client.transport() {
        Some(dap_client::Transport::Udp) => "udp",
        _ => "http",
    };
    let _ = writeln!(out, "{:<18}{transport:>12}", "transport");
    Ok(())
}

pub(crate) fn echo(cfg: ClientConfig, timeout: Duration, text: &str) -> Result<(), Fail> {
    let s = Session::open(cfg, b"E")?;
    s.stream(timeout)?;
    s.write(b'E', 0, Bytes::copy_from_slice(text.as_bytes()), timeout)?;
    let (_, msg) = s.recv(timeout)?;
    println!("{}", String::from_utf8_lossy(&msg.data));
    Ok(())
}

pub(crate) fn send(
    cfg: ClientConfig,
    timeout: Duration,
    ch: u8,
    raw: bool,
    linger: Duration,
) -> Result<(), Fail> {
    let s = Session::open(cfg, &[ch])?;
    s.stream(timeout)?;
    // What arrives goes to stdout from its own thread, as it comes.
    let rx = s.rx.clone();
    let printer = std::thread::spawn(move || {
        let mut out = std::io::stdout().lock();
        let mut last = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok((_, m)) => {
                    let _ = out.write_all(&m.data);
                    if !raw {
                        let _ = out.write_all(b"\n");
                    }
                    let _ = out.flush();
                    last = Instant::now();
                }
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    // Quiet for `linger` after stdin ended: done.
                    if STDIN_DONE.load(std::sync::atomic::Ordering::Acquire)
                        && last.elapsed() >= linger
                    {
                        return;
                    }
                }
            }
        }
    });
    let result = pump_stdin(&s, ch, raw, timeout);
    STDIN_DONE.store(true, std::sync::atomic::Ordering::Release);
    let _ = printer.join();
    result
}

static STDIN_DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn pump_stdin(s: &Session, ch: u8, raw: bool, timeout: Duration) -> Result<(), Fail> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    if raw {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = input.read(&mut buf).map_err(|e| fail(format!("stdin: {e}")))?;
            if n == 0 {
                return Ok(());
            }
            s.write(ch, 0, Bytes::copy_from_slice(&buf[..n]), timeout)?;
        }
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input.read_until(b'\n', &mut line).map_err(|e| fail(format!("stdin: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        s.write(ch, 0, Bytes::copy_from_slice(text), timeout)?;
    }
}

fn topic(name: &str) -> Result<Topic, Fail> {
    Topic::new(name).map_err(|e| fail(format!("topic {name:?}: {e}")))
}

/// Sends a `'P'` request.
fn request(s: &Session, msg: &PubSubMsg, timeout: Duration) -> Result<(), Fail> {
    s.write(PUBSUB, msg.ty(), Bytes::from(msg.encode()), timeout)
}

/// The next `'P'` message.
fn next(s: &Session, timeout: Duration) -> Result<PubSubMsg, Fail> {
    let (_, m) = s.recv(timeout)?;
    PubSubMsg::decode(m.ty, &m.data)
        .map_err(|e| crate::protocol(format!("a bad message from the node: {e}")))
}

pub(crate) fn sub(
    cfg: ClientConfig,
    timeout: Duration,
    name: &str,
    count: Option<u64>,
) -> Result<(), Fail> {
    let t = topic(name)?;
    let s = Session::open(cfg, &[PUBSUB])?;
    s.stream(timeout)?;
    request(&s, &PubSubMsg::Subscribe { topic: t.clone() }, timeout)?;
    let mut got = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        if count.is_some_and(|c| got >= c) {
            return Ok(());
        }
        // Subscribed: wait as long as the stream lives.
        match next(&s, Duration::MAX)? {
            PubSubMsg::Subscribed { .. } => eprintln!("dap-cli: subscribed to {name}"),
            PubSubMsg::Message { payload, .. } => {
                got += 1;
                let _ = out.write_all(&payload);
                let _ = out.write_all(b"\n");
                let _ = out.flush();
            }
            PubSubMsg::Error { code, .. } => {
                return Err(crate::refused(format!("the node refused: {}", code.name())));
            }
            _ => {}
        }
    }
}

pub(crate) fn publish(
    cfg: ClientConfig,
    timeout: Duration,
    name: &str,
    text: &str,
) -> Result<(), Fail> {
    let t = topic(name)?;
    let s = Session::open(cfg, &[PUBSUB])?;
    s.stream(timeout)?;
    let msg = PubSubMsg::Publish { seq: 1, topic: t, payload: text.as_bytes().to_vec() };
    request(&s, &msg, timeout)?;
    loop {
        match next(&s, timeout)? {
            PubSubMsg::Ack { seq: 1, delivered, dropped } => {
                println!("delivered to {delivered} subscriber(s){}", dropped_note(dropped));
                return Ok(());
            }
            PubSubMsg::Error { code, .. } => {
                return Err(crate::refused(format!("the node refused: {}", code.name())));
            }
            _ => {}
        }
    }
}

fn dropped_note(dropped: u32) -> String {
    if dropped == 0 { String::new() } else { format!(", {dropped} slow one(s) dropped") }
}
