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

use crate::serve_mio::{Slab, reuseport_listener};

const LISTENER: Token = Token(usize::MAX);
const READ_BUF: usize = 64 * 1024;
/// A request head longer than this without its terminator closes the connection.
const MAX_HEAD: usize = 16 * 1024;
const BODY: &[u8] = b"Hello, World!";

/// Runs `threads` event loops on `addr` until the process is killed.
pub fn run(addr: SocketAddr, threads: usize) -> io::Result<()> {
    let _ = crate::procstat::raise_nofile_limit();
    let threads = threads.max(1);
    let mut listeners =
        (0..threads).map(|_| reuseport_listener(addr)).collect::<io::Result<Vec<_>>>()?;
    let first = listeners.remove(0);
    let mut handles = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let h = std::thread::Builder::new()
            .name(format!("raw-http-{}", i + 1))
            .spawn(move || event_loop(l))?;
        handles.push(h);
    }
    let res = event_loop(first);
    for h in handles {
        let _ = h.join();
    }
    res
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
        let secs =
            SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.bytes.clear();
        self.bytes.extend_from_slice(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 13\r\ndate: ",
        );
        self.bytes.extend_from_slice(imf_fixdate(secs).as_bytes());
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

/// RFC 9110 IMF-fixdate of a Unix time.
fn imf_fixdate(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let _ = stream.set_nodelay(true);
                let idx = conns.next_index();
                if registry.register(&mut stream, Token(idx), Interest::READABLE).is_err() {
                    continue;
                }
                conns.insert(Conn {
                    stream,
                    partial: Vec::new(),
                    out: Vec::new(),
                    sent: 0,
                    want_write: false,
                    eof: false,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                eprintln!("serve-raw-http: accept: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_is_imf_fixdate() {
        assert_eq!(imf_fixdate(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(imf_fixdate(1_795_000_000), "Wed, 18 Nov 2026 11:06:40 GMT");
    }

    #[test]
    fn heads_are_counted_across_reads() {
        assert_eq!(count_heads(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nGET"), (2, 36));
        assert_eq!(count_heads(b"GET / HTTP/1.1\r\n\r"), (0, 0));
    }
}
