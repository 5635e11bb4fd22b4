//! `dap-bench serve-mio`: a raw mio echo server, "the limit".
//!
//! One event loop per thread, each with its own `SO_REUSEPORT` listener bound to the same
//! port (the kernel spreads connections across them). epoll is edge-triggered (mio always
//! is). On readable: read until `WouldBlock` or a short read (a read that returns less than
//! the buffer size drained the socket, the trick tokio uses too), and echo each chunk at once.
//! Only when a write is partial does the connection keep the rest in a pending-output `Vec`
//! and register interest in `WRITABLE`; once flushed it goes back to `READABLE` only. While
//! more than [`HIGH_WATER`] bytes are pending the connection stops reading (back-pressure)
//! and resumes after the flush.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

/// Token of the listener; connections use their slot index.
const LISTENER: Token = Token(usize::MAX);
/// Read buffer, shared by all connections of one loop.
const READ_BUF: usize = 64 * 1024;
/// Stop reading from a connection while this much of its output is unsent.
const HIGH_WATER: usize = 1024 * 1024;
/// Pending-output buffers larger than this are freed once flushed (idle connections stay small).
const KEEP_CAPACITY: usize = 64 * 1024;

/// Runs `threads` event loops on `addr` until the process is killed.
pub fn run(addr: SocketAddr, threads: usize) -> io::Result<()> {
    run_loops(addr, threads, "mio-loop", event_loop)
}

/// Binds `threads` `SO_REUSEPORT` listeners on `addr`, then runs `event_loop` on each, one
/// thread per listener (this thread runs the first); shared with `serve-raw-http`.
pub(crate) fn run_loops(
    addr: SocketAddr,
    threads: usize,
    name: &str,
    event_loop: fn(TcpListener) -> io::Result<()>,
) -> io::Result<()> {
    let _ = crate::procstat::raise_nofile_limit();
    let threads = threads.max(1);
    // Bind every listener before serving so the port is fully set up when connects succeed.
    let mut listeners =
        (0..threads).map(|_| reuseport_listener(addr)).collect::<io::Result<Vec<_>>>()?;
    let first = listeners.remove(0);
    let mut handles = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let h = std::thread::Builder::new()
            .name(format!("{name}-{}", i + 1))
            .spawn(move || event_loop(l))?;
        handles.push(h);
    }
    let res = event_loop(first);
    for h in handles {
        let _ = h.join();
    }
    res
}

/// A non-blocking `SO_REUSEPORT` listener on `addr`.
fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(TcpListener::from_std(sock.into()))
}

struct Conn {
    stream: TcpStream,
    /// Output not yet accepted by the kernel; `pending[sent..]` is still to go.
    pending: Vec<u8>,
    sent: usize,
    /// Registered for `WRITABLE` as well as `READABLE`.
    want_write: bool,
    /// Stopped reading because too much output is pending; resume after the flush.
    read_paused: bool,
    /// epoll reported the peer's FIN (`EPOLLRDHUP`): read to the end, not to a short read.
    rdhup: bool,
    /// The peer shut down its side: flush what is pending, then close.
    eof: bool,
}

impl Conn {
    fn unsent(&self) -> usize {
        self.pending.len() - self.sent
    }

    /// Writes pending output; `Ok(true)` once all of it is gone.
    fn flush(&mut self) -> io::Result<bool> {
        while self.sent < self.pending.len() {
            match self.stream.write(&self.pending[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pending.clear();
        self.sent = 0;
        if self.pending.capacity() > KEEP_CAPACITY {
            self.pending = Vec::new();
        }
        Ok(true)
    }

    /// Echoes `data`: straight to the socket when nothing is queued, else behind the queue.
    fn echo(&mut self, data: &[u8]) -> io::Result<()> {
        let mut off = 0;
        if self.unsent() == 0 {
            while off < data.len() {
                match self.stream.write(&data[off..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => off += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        } else if self.sent > 0 && self.sent >= self.pending.len() / 2 {
            // Compact before appending so the queue does not creep forward forever.
            self.pending.drain(..self.sent);
            self.sent = 0;
        }
        self.pending.extend_from_slice(&data[off..]);
        Ok(())
    }

    /// Reads until drained (or paused by back-pressure, or end of stream), echoing as it goes.
    fn on_readable(&mut self, buf: &mut [u8]) -> io::Result<()> {
        while !self.eof {
            if self.unsent() >= HIGH_WATER {
                self.read_paused = true;
                return Ok(());
            }
            match self.stream.read(buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.echo(&buf[..n])?;
                    // A short read drained the socket, unless the FIN came with the data: then
                    // no further edge will come for it, so read on until end of stream.
                    if n < buf.len() && !self.rdhup {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Registers for `WRITABLE` exactly while output is pending.
    fn update_interest(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let need = self.unsent() > 0;
        if need != self.want_write {
            let interest =
                if need { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            registry.reregister(&mut self.stream, token, interest)?;
            self.want_write = need;
        }
        Ok(())
    }

    /// Handles one readiness event; `Ok(false)` means close the connection.
    fn on_event(
        &mut self,
        ev: &mio::event::Event,
        buf: &mut [u8],
        registry: &Registry,
        token: Token,
    ) -> io::Result<bool> {
        if ev.is_read_closed() || ev.is_error() {
            self.rdhup = true;
        }
        if ev.is_writable() && self.want_write && self.flush()? && self.read_paused {
            self.read_paused = false;
            self.on_readable(buf)?;
        }
        if (ev.is_readable() || ev.is_read_closed() || ev.is_error()) && !self.read_paused {
            self.on_readable(buf)?;
        }
        if self.eof && self.unsent() == 0 {
            return Ok(false);
        }
        self.update_interest(registry, token)?;
        Ok(true)
    }
}

/// Connection slots with a free list; the slot index is the mio token.
pub(crate) struct Slab<T> {
    pub(crate) slots: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { slots: Vec::new(), free: Vec::new() }
    }
}

impl<T> Slab<T> {
    /// The index the next `insert` will use.
    pub(crate) fn next_index(&self) -> usize {
        self.free.last().copied().unwrap_or(self.slots.len())
    }

    pub(crate) fn insert(&mut self, c: T) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(c);
                i
            }
            None => {
                self.slots.push(Some(c));
                self.slots.len() - 1
            }
        }
    }

    pub(crate) fn remove(&mut self, i: usize) -> Option<T> {
        let c = self.slots.get_mut(i)?.take();
        if c.is_some() {
            self.free.push(i);
        }
        c
    }
}

fn event_loop(mut listener: TcpListener) -> io::Result<()> {
    let mut poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; READ_BUF];
    let mut conns: Slab<Conn> = Slab::default();
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            let token = ev.token();
            if token == LISTENER {
                accept_all(&listener, poll.registry(), &mut conns);
                continue;
            }
            let Some(Some(conn)) = conns.slots.get_mut(token.0) else {
                continue;
            };
            let keep = conn.on_event(ev, &mut buf, poll.registry(), token).unwrap_or(false);
            if !keep && let Some(mut c) = conns.remove(token.0) {
                let _ = poll.registry().deregister(&mut c.stream);
            }
        }
    }
}

fn accept_all(listener: &TcpListener, registry: &Registry, conns: &mut Slab<Conn>) {
    accept_into(listener, registry, conns, "serve-mio", |stream| Conn {
        stream,
        pending: Vec::new(),
        sent: 0,
        want_write: false,
        read_paused: false,
        rdhup: false,
        eof: false,
    });
}

/// Accepts every waiting connection (`TCP_NODELAY`, registered readable under its slot's
/// token) into `conns`, built by `make`; shared with `serve-raw-http`.
pub(crate) fn accept_into<T>(
    listener: &TcpListener,
    registry: &Registry,
    conns: &mut Slab<T>,
    who: &str,
    make: impl Fn(TcpStream) -> T,
) {
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let _ = stream.set_nodelay(true);
                let idx = conns.next_index();
                if registry.register(&mut stream, Token(idx), Interest::READABLE).is_err() {
                    continue;
                }
                let got = conns.insert(make(stream));
                debug_assert_eq!(got, idx);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => {
                // EMFILE and friends: report and wait for the next edge rather than spin.
                eprintln!("{who}: accept: {e}");
                return;
            }
        }
    }
}
