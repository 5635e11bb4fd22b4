//! The I/O object behind each esocket kind, and the syscalls the worker makes on it.

use std::collections::VecDeque;
use std::io::{self, Error, ErrorKind, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use bytes::Bytes;
use mio::event::Source;
use mio::{Interest, Registry, Token};

use super::{EsState, Esocket, Factory};
use crate::queue::QueueDrain;
use crate::sys::eventfd::EventFd;

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
        out: VecDeque<(SocketAddr, Bytes)>,
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

/// Sends or queues one datagram; returns the bytes handed to the kernel now.
pub(crate) fn udp_send(
    st: &mut EsState,
    data: &[u8],
    to: SocketAddr,
    queue_limit: usize,
) -> io::Result<usize> {
    let Body::Udp { sock, out } = &mut st.body else {
        return Err(Error::new(ErrorKind::Unsupported, "send_to needs a UDP esocket"));
    };
    if out.is_empty() && st.write_ready {
        match sock.send_to(data, to) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => st.write_ready = false,
            Err(e) => return Err(e),
        }
    }
    if out.len() >= queue_limit {
        return Err(ErrorKind::WouldBlock.into());
    }
    out.push_back((to, Bytes::copy_from_slice(data)));
    Ok(0)
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
