//! `dap-bench serve-raw-http`: the cheapest HTTP/1.1 responder a mio loop can be, "the limit"
//! of `dap-bench http`.
//!
//! It parses nothing: every `\r\n\r\n` in the input ends a request, and each request gets the
//! same canned keep-alive answer (`200`, `content-type: text/plain`, `content-length: 13`, a `date` refreshed once a
//! second, `Hello, World!`), the shape hyper's hello sends. All answers owed after one read go
//! out in one `write`. It is not a server anyone should run (no bodies, no limits, no
//! errors): it shows the rate this load generator reaches against a server that costs almost
//! nothing, so a ratio against hyper that even this loop cannot reach is a ceiling of the
//! machine and the load generator, not of the server under test.
//!
//! The event loop is `serve-mio`'s (one loop per thread, `SO_REUSEPORT`, edge-triggered,
//! short-read trick, `WRITABLE` interest only while output is pending).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};

use dap_net::http::http_date;

use crate::serve_mio::{Slab, accept_into, run_loops};

const LISTENER: Token = Token(usize::MAX);
const READ_BUF: usize = 64 * 1024;
/// A request head longer than this without its terminator closes the connection.
const MAX_HEAD: usize = 16 * 1024;
const BODY: &[u8] = b"Hello, World!";

/// Runs `threads` event loops on `addr` until the process is killed.
pub fn run(addr: SocketAddr, threads: usize) -> io::Result<()> {
    run_loops(addr, threads, "raw-http", event_loop)
}

/// The canned answer, its `date` refreshed at most once a second.
struct Answer {
    bytes: Vec<u8>,
    at: Instant,
}

impl Answer {
    fn new() -> Answer {
        let mut a = Answer { bytes: Vec::new(), at: Instant::now() };
        a.build();
        a
    }

    fn build(&mut self) {
        self.bytes.clear();
        self.bytes.extend_from_slice(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\ndate: ",
        );
        self.bytes.extend_from_slice(http_date(SystemTime::now()).as_bytes());
        self.bytes.extend_from_slice(b"\r\n\r\n");
        self.bytes.extend_from_slice(BODY);
        self.at = Instant::now();
    }

    fn refresh(&mut self, now: Instant) {
        if now.duration_since(self.at) >= Duration::from_secs(1) {
            self.build();
        }
    }
}

struct Conn {
    stream: TcpStream,
    /// The start of a request head whose terminator has not arrived yet.
    partial: Vec<u8>,
    /// Answers not yet accepted by the kernel; `out[sent..]` is still to go.
    out: Vec<u8>,
    sent: usize,
    want_write: bool,
    eof: bool,
}

/// How many request heads end in `data`, and where the last one ends.
fn count_heads(data: &[u8]) -> (usize, usize) {
    let mut n = 0;
    let mut end = 0;
    let mut i = 0;
    while i + 4 <= data.len() {
        if data[i + 3] != b'\n' {
            i += 1;
            continue;
        }
        if &data[i..i + 4] == b"\r\n\r\n" {
            n += 1;
            i += 4;
            end = i;
        } else {
            i += 1;
        }
    }
    (n, end)
}

impl Conn {
    fn flush(&mut self) -> io::Result<()> {
        while self.sent < self.out.len() {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.sent = 0;
        Ok(())
    }

    /// Counts the heads `data` completes and queues that many answers.
    fn take(&mut self, data: &[u8], answer: &[u8]) -> io::Result<()> {
        let n = if self.partial.is_empty() {
            let (n, end) = count_heads(data);
            self.partial.extend_from_slice(&data[end..]);
            n
        } else {
            self.partial.extend_from_slice(data);
            let (n, end) = count_heads(&self.partial);
            self.partial.drain(..end);
            n
        };
        if self.partial.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too long"));
        }
        for _ in 0..n {
            self.out.extend_from_slice(answer);
        }
        Ok(())
    }

    fn on_event(
        &mut self,
        buf: &mut [u8],
        answer: &[u8],
        registry: &Registry,
        token: Token,
    ) -> io::Result<bool> {
        if self.sent < self.out.len() {
            self.flush()?;
        }
        while !self.eof && self.out.len() - self.sent < READ_BUF {
            match self.stream.read(buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.take(&buf[..n], answer)?;
                    if n < buf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.flush()?;
        let pending = self.sent < self.out.len();
        if self.eof && !pending {
            return Ok(false);
        }
        if pending != self.want_write {
            let interest =
                if pending { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            registry.reregister(&mut self.stream, token, interest)?;
            self.want_write = pending;
        }
        Ok(true)
    }
}

fn event_loop(mut listener: TcpListener) -> io::Result<()> {
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; READ_BUF];
    let mut conns: Slab<Conn> = Slab::default();
    let mut answer = Answer::new();
    loop {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_secs(1))) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        answer.refresh(Instant::now());
        for ev in events.iter() {
            let token = ev.token();
            if token == LISTENER {
                accept_all(&listener, poll.registry(), &mut conns);
                continue;
            }
            let Some(Some(conn)) = conns.slots.get_mut(token.0) else {
                continue;
            };
            let keep =
                conn.on_event(&mut buf, &answer.bytes, poll.registry(), token).unwrap_or(false);
            if !keep && let Some(mut c) = conns.remove(token.0) {
                let _ = poll.registry().deregister(&mut c.stream);
            }
        }
    }
}

fn accept_all(listener: &TcpListener, registry: &Registry, conns: &mut Slab<Conn>) {
    accept_into(listener, registry, conns, "serve-raw-http", |stream| Conn {
        stream,
        partial: Vec::new(),
        out: Vec::new(),
        sent: 0,
        want_write: false,
        eof: false,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_counted_across_reads() {
        assert_eq!(count_heads(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nGET"), (2, 36));
        assert_eq!(count_heads(b"GET / HTTP/1.1\r\n\r"), (0, 0));
    }
}
