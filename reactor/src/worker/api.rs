//! Adding esockets on a worker (the `WorkerCtx` methods users call).

use std::io::{self, Error};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mio::Interest;

use super::{TimerWhat, WorkerCtx};
use crate::error::ReactorError;
use crate::esocket::io::{ListenIo, StreamIo};
use crate::esocket::{Body, EsState, Esocket, EsocketHandle, EsocketKind, Factory, Handler};
use crate::event::EventSender;
use crate::pipe::PipeWriter;
use crate::queue::{self, QueueSender};
use crate::sys::eventfd::EventFd;
use crate::sys::udp::UdpIo;
use crate::udp::UdpOptions;

impl WorkerCtx {
    /// Inserts, registers and announces (`on_new`) an esocket.
    pub(crate) fn add(
        &mut self,
        kind: EsocketKind,
        body: Body,
        handler: Option<Box<dyn Handler>>,
        setup: impl FnOnce(&mut EsState),
    ) -> io::Result<EsocketHandle> {
        if self.stopping.is_some() {
            return Err(ReactorError::Stopping.into());
        }
        let now_ms = self.now_ms();
        let id = self
            .slots
            .insert_with(|id| Box::new(EsState::new(id, kind, body, now_ms)))
            .ok_or(ReactorError::TableFull)?;
        let Some(mut st) = self.slots.take(id) else {
            unreachable!("an esocket just inserted is present")
        };
        if let Err(e) = st.body.register(&self.registry, id.to_token()) {
            self.slots.remove(id);
            return Err(e);
        }
        st.handler = handler;
        setup(&mut st);
        self.stats.esockets[kind.index()] += 1;
        self.shared.full.store(self.slots.is_full(), std::sync::atomic::Ordering::Relaxed);
        self.call(&mut st, |h, es| h.on_new(es));
        self.drive(&mut st);
        self.finish(st);
        Ok(self.handle_for(id))
    }

    /// Connects to a TCP address; `on_connected` or `on_error` follows. Uses the reactor's
    /// connect timeout.
    ///
    /// # Errors
    /// An immediate failure of the connect call, a full esocket table, or a stopping worker.
    pub fn connect_tcp(
        &mut self,
        addr: SocketAddr,
        handler: Box<dyn Handler>,
    ) -> io::Result<EsocketHandle> {
        let timeout = self.cfg.connect_timeout;
        self.connect_tcp_timeout(addr, timeout, handler)
    }

    /// As [`connect_tcp`](Self::connect_tcp) with an explicit timeout; on expiry `on_error`
    /// gets `TimedOut` ([`ReactorError::ConnectTimeout`]).
    ///
    /// # Errors
    /// As [`connect_tcp`](Self::connect_tcp).
    pub fn connect_tcp_timeout(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
        handler: Box<dyn Handler>,
    ) -> io::Result<EsocketHandle> {
        let stream = mio::net::TcpStream::connect(addr)?;
        if self.cfg.nodelay {
            let _ = stream.set_nodelay(true);
        }
        self.add_connecting(EsocketKind::Tcp, StreamIo::Tcp(stream), timeout, handler)
    }

    /// Connects to a Unix-domain stream socket.
    ///
    /// # Errors
    /// As [`connect_tcp`](Self::connect_tcp).
    pub fn connect_unix(
        &mut self,
        path: impl AsRef<Path>,
        handler: Box<dyn Handler>,
    ) -> io::Result<EsocketHandle> {
        let stream = mio::net::UnixStream::connect(path)?;
        let timeout = self.cfg.connect_timeout;
        self.add_connecting(EsocketKind::Unix, StreamIo::Unix(stream), timeout, handler)
    }

    fn add_connecting(
        &mut self,
        kind: EsocketKind,
        io: StreamIo,
        timeout: Duration,
        handler: Box<dyn Handler>,
    ) -> io::Result<EsocketHandle> {
        if self.timers.len() >= self.cfg.limits.max_timers {
            return Err(ReactorError::TimersFull.into());
        }
        let mut armed = Ok(());
        let handle = self.add(kind, Body::Stream(io), Some(handler), |st| st.connecting = true)?;
        if let Some(mut st) = self.slots.take(handle.id) {
            armed = self.arm(&mut st, timeout, TimerWhat::Connect);
            self.finish(st);
        }
        armed.map(|()| handle)
    }

    /// Adds a connected TCP stream (made elsewhere) to this worker.
    ///
    /// # Errors
    /// Registration failure, a full esocket table, or a stopping worker.
    pub fn adopt_tcp(
        &mut self,
        stream: std::net::TcpStream,
        handler: Box<dyn Handler>,
    ) -> io::Result<EsocketHandle> {
        stream.set_nonblocking(true)?;
        if self.cfg.nodelay {
            let _ = stream.set_nodelay(true);
        }
        let io = StreamIo::Tcp(mio::net::TcpStream::from_std(stream));
        self.add(EsocketKind::Tcp, Body::Stream(io), Some(handler), |st| st.write_ready = true)
    }

    /// Adds a connected Unix stream to this worker.
    ///
    /// # Errors
    /// As [`adopt_tcp`](Self::adopt_tcp).
    pub fn adopt_unix(
        &mut self,
        stream: std::os::unix::net::UnixStream,
        handler: Box<dyn Handler>,
    ) -> io::Result<EsocketHandle> {
        stream.set_nonblocking(true)?;
        let io = StreamIo::Unix(mio::net::UnixStream::from_std(stream));
        self.add(EsocketKind::Unix, Body::Stream(io), Some(handler), |st| st.write_ready = true)
    }

    /// Adds a bound, listening TCP socket; accepted connections stay on this worker.
    /// [`Reactor::listen_tcp`](crate::Reactor::listen_tcp) puts one on every worker.
    ///
    /// # Errors
    /// As [`adopt_tcp`](Self::adopt_tcp).
    pub fn listen_tcp(
        &mut self,
        listener: std::net::TcpListener,
        factory: impl crate::HandlerFactory,
    ) -> io::Result<EsocketHandle> {
        self.add_listener(ListenIo::Tcp(Self::mio_tcp(listener)?), Arc::new(factory), false)
    }

    fn mio_tcp(listener: std::net::TcpListener) -> io::Result<mio::net::TcpListener> {
        listener.set_nonblocking(true)?;
        Ok(mio::net::TcpListener::from_std(listener))
    }

    pub(crate) fn add_listener(
        &mut self,
        io: ListenIo,
        factory: Factory,
        spread: bool,
    ) -> io::Result<EsocketHandle> {
        // A listener is "read ready" from the start: connections may already be waiting.
        self.add(EsocketKind::Listener, Body::Listener { io, factory, spread }, None, |st| {
            st.read_ready = true;
        })
    }

    pub(crate) fn add_tcp_listener_std(
        &mut self,
        listener: std::net::TcpListener,
        factory: Factory,
        spread: bool,
    ) -> io::Result<EsocketHandle> {
        self.add_listener(ListenIo::Tcp(Self::mio_tcp(listener)?), factory, spread)
    }

    pub(crate) fn add_unix_listener_std(
        &mut self,
        listener: std::os::unix::net::UnixListener,
        factory: Factory,
        spread: bool,
    ) -> io::Result<EsocketHandle> {
        listener.set_nonblocking(true)?;
        let io = ListenIo::Unix(mio::net::UnixListener::from_std(listener));
        self.add_listener(io, factory, spread)
    }

    /// Adds a UDP socket; datagrams arrive in batches through [`Handler::on_datagrams`]
    /// (whose default hands each to [`Handler::on_datagram`]). The socket is set up for ECN,
    /// destination addresses, don't-fragment, GRO and GSO where the kernel has them, and its
    /// kernel buffers as [`Limits::udp_recv_buffer`] and [`Limits::udp_send_buffer`] say.
    ///
    /// [`Limits::udp_recv_buffer`]: crate::Limits::udp_recv_buffer
    /// [`Limits::udp_send_buffer`]: crate::Limits::udp_send_buffer
    ///
    /// # Errors
    /// `InvalidInput` when the socket is not IPv4 or IPv6; as [`adopt_tcp`](Self::adopt_tcp).
    pub fn add_udp(
        &mut self,
        socket: std::net::UdpSocket,
        handler: Box<dyn Handler>,
    ) -> io::Result<EsocketHandle> {
        self.add_udp_with(socket, UdpOptions::default(), handler)
    }

    /// Adds a UDP socket with offloads turned off as `options` say (to compare, or to test a
    /// handler on the paths a kernel without them takes).
    ///
    /// # Errors
    /// As [`add_udp`](Self::add_udp).
    pub fn add_udp_with(
        &mut self,
        socket: std::net::UdpSocket,
        options: UdpOptions,
        handler: Box<dyn Handler>,
    ) -> io::Result<EsocketHandle> {
        socket.set_nonblocking(true)?;
        crate::sys::udp::set_buffers(
            &socket,
            self.cfg.limits.udp_recv_buffer,
            self.cfg.limits.udp_send_buffer,
        );
        let io = UdpIo::new(socket.as_fd(), options, self.cfg.limits.udp_gso_segments)?;
        let sock = mio::net::UdpSocket::from_std(socket);
        let body = Body::Udp { sock, io, out: Default::default(), queued: 0 };
        self.add(EsocketKind::Udp, body, Some(handler), |st| st.write_ready = true)
    }

    /// Binds a UDP socket to `addr` and adds it.
    ///
    /// # Errors
    /// The bind error, or as [`adopt_tcp`](Self::adopt_tcp).
    pub fn bind_udp(
        &mut self,
        addr: SocketAddr,
        handler: Box<dyn Handler>,
    ) -> io::Result<EsocketHandle> {
        self.add_udp(std::net::UdpSocket::bind(addr)?, handler)
    }

    /// Starts a timer on this worker's wheel. `callback` runs every `period` and returns
    /// whether to keep going. Ticks are scheduled on a fixed grid from the start (the n-th
    /// tick is due at start + n × period), so a late tick does not delay the later ones; if
    /// the worker falls behind by several periods, the missed ticks fire back to back.
    ///
    /// Close the returned handle to cancel the timer.
    ///
    /// # Errors
    /// A full esocket or timer table, a stopping worker, or a zero period.
    pub fn add_timer(
        &mut self,
        period: Duration,
        callback: impl FnMut(&mut Esocket<'_>) -> bool + 'static,
    ) -> io::Result<EsocketHandle> {
        if period.is_zero() {
            return Err(Error::new(io::ErrorKind::InvalidInput, "timer period must be > 0"));
        }
        self.add_timer_inner(period, period, Box::new(callback))
    }

    /// Runs `callback` once after `delay`.
    ///
    /// # Errors
    /// A full esocket or timer table, or a stopping worker.
    pub fn add_oneshot(
        &mut self,
        delay: Duration,
        callback: impl FnOnce(&mut Esocket<'_>) + 'static,
    ) -> io::Result<EsocketHandle> {
        let mut callback = Some(callback);
        let cb = move |es: &mut Esocket<'_>| {
            if let Some(f) = callback.take() {
                f(es);
            }
            false
        };
        self.add_timer_inner(delay, Duration::ZERO, Box::new(cb))
    }

    fn add_timer_inner(
        &mut self,
        first: Duration,
        period: Duration,
        cb: crate::esocket::io::TimerFn,
    ) -> io::Result<EsocketHandle> {
        if self.timers.len() >= self.cfg.limits.max_timers {
            return Err(ReactorError::TimersFull.into());
        }
        let first_ns = self.elapsed_ns().saturating_add(dur_ns(first));
        let body = Body::Timer { cb: Some(cb), period_ns: dur_ns(period), next_ns: first_ns };
        let handle = self.add(EsocketKind::Timer, body, None, |_| {})?;
        if let Some(mut st) = self.slots.take(handle.id) {
            let tick = super::run::ns_to_tick(first_ns);
            st.timer = Some(self.timers.insert(tick, (st.id, TimerWhat::Tick)));
            self.slots.put_back(handle.id, st);
        }
        Ok(handle)
    }

    /// Time since the worker started, read from the clock (not the turn's cached time), so a
    /// timer started late in a long turn still gets its full period.
    fn elapsed_ns(&self) -> u64 {
        dur_ns(self.started.elapsed())
    }

    /// Adds an event: a u64 counter that other threads add to through the returned
    /// [`EventSender`]; `callback` receives the sum accumulated since its last call.
    ///
    /// # Errors
    /// eventfd creation, a full esocket table, or a stopping worker.
    pub fn add_event(
        &mut self,
        callback: impl FnMut(&mut Esocket<'_>, u64) + 'static,
    ) -> io::Result<(EsocketHandle, EventSender)> {
        let ev = Arc::new(EventFd::new()?);
        let body = Body::Event { ev: ev.clone(), cb: Some(Box::new(callback)) };
        let handle = self.add(EsocketKind::Event, body, None, |_| {})?;
        Ok((handle, EventSender { ev }))
    }

    /// Adds a typed queue holding at most `capacity` items; other threads send through the
    /// returned [`QueueSender`] and `callback` receives each item on this worker, in order.
    /// Items still queued when the worker stops are delivered before it exits.
    ///
    /// # Errors
    /// As [`add_event`](Self::add_event).
    pub fn add_queue<T: Send + 'static>(
        &mut self,
        capacity: usize,
        callback: impl FnMut(&mut Esocket<'_>, T) + 'static,
    ) -> io::Result<(EsocketHandle, QueueSender<T>)> {
        let ev = Arc::new(EventFd::new()?);
        let (tx, drain) = queue::pair(capacity, ev.clone(), Box::new(callback));
        let body = Body::Queue { ev, drain: Some(drain) };
        let handle = self.add(EsocketKind::Queue, body, None, |_| {})?;
        Ok((handle, tx))
    }

    /// Creates a pipe: bytes written to the returned [`PipeWriter`] (from any thread) arrive
    /// in this esocket's `buf_in` through `on_read`.
    ///
    /// # Errors
    /// pipe creation, a full esocket table, or a stopping worker.
    pub fn add_pipe(
        &mut self,
        handler: Box<dyn Handler>,
    ) -> io::Result<(EsocketHandle, PipeWriter)> {
        let (tx, rx) = mio::unix::pipe::new()?;
        let handle =
            self.add(EsocketKind::Pipe, Body::Stream(StreamIo::Pipe(rx)), Some(handler), |_| {})?;
        Ok((handle, PipeWriter { tx }))
    }

    /// Watches any file descriptor epoll accepts. Notification is edge-triggered:
    /// `on_read` / `on_write` fire when the fd becomes readable / writable, and the handler
    /// must do its own I/O on [`Esocket::raw_fd`] until `WouldBlock` to be told again. The fd
    /// is closed when the esocket is removed.
    ///
    /// # Errors
    /// Registration failure (e.g. a regular file), a full table, or a stopping worker.
    pub fn add_raw_fd(
        &mut self,
        fd: OwnedFd,
        readable: bool,
        writable: bool,
        handler: Box<dyn Handler>,
    ) -> io::Result<EsocketHandle> {
        let interest = match (readable, writable) {
            (true, true) => Interest::READABLE | Interest::WRITABLE,
            (false, true) => Interest::WRITABLE,
            _ => Interest::READABLE,
        };
        self.add(EsocketKind::Raw, Body::Raw { fd, interest }, Some(handler), |_| {})
    }
}

fn dur_ns(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}
