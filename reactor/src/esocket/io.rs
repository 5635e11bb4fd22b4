//! The I/O object behind each esocket kind, and the syscalls the worker makes on it.

use std::collections::VecDeque;
use std::io::{self, Error, ErrorKind, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use bytes::Bytes;
use mio::event::Source;
use mio::{Interest, Registry, Token};

use super::{EsState, Esocket, Factory};
use crate::queue::QueueDrain;
use crate::sys::eventfd::EventFd;
use crate::sys::udp::UdpIo;
use crate::udp::{Ecn, UdpStats, UdpTransmit};

/// A transmit the socket could not take yet, with its own copy of the bytes.
#[derive(Debug)]
pub(crate) struct QueuedTransmit {
    to: SocketAddr,
    data: Bytes,
    segment_size: Option<usize>,
    ecn: Ecn,
    src_ip: Option<IpAddr>,
}

impl QueuedTransmit {
    fn transmit(&self) -> UdpTransmit<'_> {
        UdpTransmit {
            destination: self.to,
            contents: &self.data,
            segment_size: self.segment_size,
            ecn: self.ecn,
            src_ip: self.src_ip,
        }
    }
}

/// The most unread input [`StreamIo::finish`] reads and drops before a close.
pub(crate) const FINISH_READ_MAX: usize = 1 << 20;

/// A byte stream the worker reads and writes.
#[derive(Debug)]
pub(crate) enum StreamIo {
    Tcp(mio::net::TcpStream),
    Unix(mio::net::UnixStream),
    Pipe(mio::unix::pipe::Receiver),
}

impl StreamIo {
    pub(crate) fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            StreamIo::Tcp(s) => s.read(buf),
            StreamIo::Unix(s) => s.read(buf),
            StreamIo::Pipe(p) => p.read(buf),
        }
    }

    pub(crate) fn write_vectored(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        match (self, iov) {
            (StreamIo::Tcp(s), [one]) => s.write(one),
            (StreamIo::Tcp(s), _) => s.write_vectored(iov),
            (StreamIo::Unix(s), [one]) => s.write(one),
            (StreamIo::Unix(s), _) => s.write_vectored(iov),
            (StreamIo::Pipe(_), _) => Err(ErrorKind::Unsupported.into()),
        }
    }

    /// Just before a TCP socket's descriptor closes: sends the FIN (after whatever the
    /// kernel still holds to send), then reads and drops the peer's input that was never
    /// read, at most [`FINISH_READ_MAX`] bytes. A close with unread input is answered by the
    /// kernel with a reset, which throws away what it still had to send (the last of a
    /// reply, a stream's CLOSE packet) and may make the peer drop what it had received but
    /// not read yet; after this the close is a plain FIN. Input arriving later is still
    /// answered with a reset: a handler that expects more lingers itself before closing.
    pub(crate) fn finish(&mut self) {
        let StreamIo::Tcp(s) = self else { return };
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut buf = [0u8; 16 << 10];
        let mut left = FINISH_READ_MAX;
        while left > 0 {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => left = left.saturating_sub(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    pub(crate) fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            StreamIo::Tcp(s) => s.write(buf),
            StreamIo::Unix(s) => s.write(buf),
            StreamIo::Pipe(_) => Err(ErrorKind::Unsupported.into()),
        }
    }

    fn source(&mut self) -> &mut dyn Source {
        match self {
            StreamIo::Tcp(s) => s,
            StreamIo::Unix(s) => s,
            StreamIo::Pipe(p) => p,
        }
    }
}

/// Listening sockets.
#[derive(Debug)]
pub(crate) enum ListenIo {
    Tcp(mio::net::TcpListener),
    Unix(mio::net::UnixListener),
}

/// Timer callback: returns whether to fire again.
pub(crate) type TimerFn = Box<dyn FnMut(&mut Esocket<'_>) -> bool>;
/// Event callback: receives the counter's value.
pub(crate) type EventFn = Box<dyn FnMut(&mut Esocket<'_>, u64)>;

/// Kind-specific part of an esocket.
pub(crate) enum Body {
    Stream(StreamIo),
    Udp {
        sock: mio::net::UdpSocket,
        /// Offload state and counters.
        io: UdpIo,
        out: VecDeque<QueuedTransmit>,
        /// Datagrams in `out` (a batch counts each), bounded by `Limits::udp_out_queue`.
        queued: usize,
    },
    Listener {
        io: ListenIo,
        factory: Factory,
        /// Hands accepted sockets to the least-loaded worker instead of keeping them.
        spread: bool,
    },
    Timer {
        cb: Option<TimerFn>,
        /// Zero for a one-shot timer.
        period_ns: u64,
        /// The ideal time of the next tick, in ns since the worker started; periodic timers
        /// add the period to this, never to "now", so they do not drift.
        next_ns: u64,
    },
    Event {
        ev: Arc<EventFd>,
        cb: Option<EventFn>,
    },
    Queue {
        ev: Arc<EventFd>,
        drain: Option<Box<dyn QueueDrain>>,
    },
    Raw {
        fd: OwnedFd,
        interest: Interest,
    },
}

impl Body {
    /// Registers the I/O object with the poller (timers have none).
    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        let rw = Interest::READABLE | Interest::WRITABLE;
        match self {
            Body::Stream(s) => registry.register(s.source(), token, rw),
            Body::Udp { sock, .. } => registry.register(sock, token, rw),
            Body::Listener { io: ListenIo::Tcp(l), .. } => {
                registry.register(l, token, Interest::READABLE)
            }
            Body::Listener { io: ListenIo::Unix(l), .. } => {
                registry.register(l, token, Interest::READABLE)
            }
            Body::Timer { .. } => Ok(()),
            Body::Event { ev, .. } | Body::Queue { ev, .. } => registry.register(
                &mut mio::unix::SourceFd(&ev.as_raw_fd()),
                token,
                Interest::READABLE,
            ),
            Body::Raw { fd, interest } => {
                registry.register(&mut mio::unix::SourceFd(&fd.as_raw_fd()), token, *interest)
            }
        }
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) {
        // Closing the fd removes it from epoll anyway; an explicit deregister keeps the
        // interest list exact while the fd may still be shared (dup'ed raw fds).
        let _ = match self {
            Body::Stream(s) => registry.deregister(s.source()),
            Body::Udp { sock, .. } => registry.deregister(sock),
            Body::Listener { io: ListenIo::Tcp(l), .. } => registry.deregister(l),
            Body::Listener { io: ListenIo::Unix(l), .. } => registry.deregister(l),
            Body::Timer { .. } => Ok(()),
            Body::Event { ev, .. } | Body::Queue { ev, .. } => {
                registry.deregister(&mut mio::unix::SourceFd(&ev.as_raw_fd()))
            }
            Body::Raw { fd, .. } => registry.deregister(&mut mio::unix::SourceFd(&fd.as_raw_fd())),
        };
    }

    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Body::Stream(StreamIo::Tcp(s)) => s.peer_addr(),
            Body::Udp { sock, .. } => sock.peer_addr(),
            _ => Err(Error::new(ErrorKind::Unsupported, "no inet peer for this esocket kind")),
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Body::Stream(StreamIo::Tcp(s)) => s.local_addr(),
            Body::Udp { sock, .. } => sock.local_addr(),
            Body::Listener { io: ListenIo::Tcp(l), .. } => l.local_addr(),
            _ => Err(Error::new(ErrorKind::Unsupported, "no inet address for this esocket kind")),
        }
    }

    /// A UDP esocket's counters.
    pub(crate) fn udp_stats(&self) -> Option<UdpStats> {
        match self {
            Body::Udp { io, .. } => Some(io.stats),
            _ => None,
        }
    }

    pub(crate) fn as_raw_fd(&self) -> Option<RawFd> {
        Some(match self {
            Body::Stream(StreamIo::Tcp(s)) => s.as_raw_fd(),
            Body::Stream(StreamIo::Unix(s)) => s.as_raw_fd(),
            Body::Stream(StreamIo::Pipe(p)) => p.as_raw_fd(),
            Body::Udp { sock, .. } => sock.as_raw_fd(),
            Body::Listener { io: ListenIo::Tcp(l), .. } => l.as_raw_fd(),
            Body::Listener { io: ListenIo::Unix(l), .. } => l.as_raw_fd(),
            Body::Timer { .. } => return None,
            Body::Event { ev, .. } | Body::Queue { ev, .. } => ev.as_raw_fd(),
            Body::Raw { fd, .. } => fd.as_raw_fd(),
        })
    }
}

/// Sends or queues a transmit; returns the bytes handed to the kernel now.
///
/// Sends at once when nothing is queued and the socket is writable; what the kernel does not
/// take is queued, as long as the queue is empty or has room for all of it.
pub(crate) fn udp_send(
    st: &mut EsState,
    t: &UdpTransmit<'_>,
    queue_limit: usize,
) -> io::Result<usize> {
    let Body::Udp { sock, io, out, queued } = &mut st.body else {
        return Err(Error::new(ErrorKind::Unsupported, "send_to needs a UDP esocket"));
    };
    let mut taken = 0;
    if out.is_empty() && st.write_ready {
        match io.send(sock.as_raw_fd(), t) {
            Ok(n) if n == t.contents.len() => return Ok(n),
            // The socket filled part-way: the rest waits for it to drain.
            Ok(n) => {
                taken = n;
                st.write_ready = false;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => st.write_ready = false,
            Err(e) => return Err(e),
        }
    }
    let rest = UdpTransmit { contents: &t.contents[taken..], ..*t };
    let datagrams = rest.datagrams();
    if !out.is_empty() && queued.saturating_add(datagrams) > queue_limit {
        return Err(ErrorKind::WouldBlock.into());
    }
    out.push_back(QueuedTransmit {
        to: t.destination,
        data: Bytes::copy_from_slice(rest.contents),
        segment_size: t.segment_size,
        ecn: t.ecn,
        src_ip: t.src_ip,
    });
    *queued += datagrams;
    Ok(taken)
}

/// Sends queued transmits while the socket takes them; returns the bytes sent. A transmit
/// the kernel fails (other than `WouldBlock`) is dropped, as a network would drop it.
pub(crate) fn udp_flush(st: &mut EsState, worker: usize) -> usize {
    let Body::Udp { sock, io, out, queued } = &mut st.body else { return 0 };
    let mut sent = 0;
    while st.write_ready {
        let Some(q) = out.front_mut() else { break };
        let before = q.transmit().datagrams();
        match io.send(sock.as_raw_fd(), &q.transmit()) {
            Ok(n) if n >= q.data.len() => {
                sent += n;
                *queued = queued.saturating_sub(before);
                out.pop_front();
            }
            Ok(n) => {
                sent += n;
                q.data = q.data.slice(n..);
                *queued = queued.saturating_sub(before - q.transmit().datagrams());
                st.write_ready = false;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => st.write_ready = false,
            Err(e) => {
                tracing::debug!(worker, error = %e, to = %q.to, "udp send failed; datagrams dropped");
                *queued = queued.saturating_sub(before);
                out.pop_front();
            }
        }
    }
    sent
}

/// Whether a UDP esocket has transmits waiting.
pub(crate) fn udp_queued(st: &EsState) -> bool {
    matches!(&st.body, Body::Udp { out, .. } if !out.is_empty())
}

impl io::Read for StreamIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        StreamIo::read(self, buf)
    }
}

impl io::Write for StreamIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        StreamIo::write(self, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
