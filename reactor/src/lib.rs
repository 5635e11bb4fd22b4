//! dap-reactor: per-CPU pinned event-loop workers that own event sockets.
//!
//! A [`Reactor`] runs one worker thread per CPU (pinned by default). Each worker owns a mio
//! poller, a slab of *event sockets* ([`EsocketKind`]: TCP and Unix streams, listeners, UDP
//! sockets, typed queues, pipes, timers, events, raw fds), a bounded inbox, one timer wheel
//! and a buffer pool. An esocket is touched only by its worker:
//!
//! * inside a callback you get [`Esocket`], `&mut` access that cannot leave the thread
//!   (DAP's `_unsafe` functions): read `buf_in`, write `buf_out`, change interest, close;
//! * anywhere else you hold an [`EsocketHandle`] (`Send + Sync + Copy`, DAP's `_mt`
//!   functions): its methods post a message to the owning worker, and a message for an
//!   esocket that has gone is dropped and counted, never delivered to a newcomer in its slot.
//!
//! Buffers are bounded: a full `buf_in` pauses reading (nothing is discarded), a full
//! `buf_out` makes writes return `WouldBlock` and `on_write` fires at the low-water mark.
//! Idle esockets hold no buffer memory. See `docs/ARCHITECTURE.md` for the threads, the
//! ownership rules and the life of an esocket.
//!
//! # Example
//!
//! An echo server on one worker, and a client that talks to it:
//!
//! ```
//! use std::io::{Read, Write};
//! use std::time::Duration;
//! use dap_reactor::{Esocket, Handler, Reactor};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     fn on_read(&mut self, es: &mut Esocket<'_>) {
//!         let data = es.buf_in().to_vec();
//!         // Take what fits; the rest stays in buf_in until output drains.
//!         let n = es.write(&data).unwrap_or(0);
//!         es.consume(n);
//!     }
//!
//!     fn on_write(&mut self, es: &mut Esocket<'_>) -> bool {
//!         self.on_read(es);
//!         false
//!     }
//! }
//!
//! let reactor = Reactor::builder().threads(1).pin(false).start()?;
//! let listening = reactor.listen_tcp(
//!     "127.0.0.1:0".parse().unwrap(),
//!     |_: &dap_reactor::PeerAddr| Some(Box::new(Echo) as Box<dyn Handler>),
//! )?;
//!
//! let mut client = std::net::TcpStream::connect(listening.local_addr().unwrap())?;
//! client.set_read_timeout(Some(Duration::from_secs(10)))?;
//! client.write_all(b"hello")?;
//! let mut back = [0u8; 5];
//! client.read_exact(&mut back)?;
//! assert_eq!(&back, b"hello");
//!
//! reactor.shutdown(Duration::from_secs(1));
//! # Ok::<(), std::io::Error>(())
//! ```

mod budget;
mod buffer;
mod config;
mod error;
mod esocket;
mod event;
mod log_throttle;
mod pipe;
mod queue;
mod reactor;
mod slots;
mod stats;
mod sys;
mod timer;
mod udp;
mod worker;

pub use budget::{BufferBudget, PARKED_FREE};
pub use config::{Limits, ListenerMode};
pub use error::ReactorError;
pub use esocket::{
    Esocket, EsocketHandle, EsocketKind, ExecFn, Handler, HandlerFactory, Layer, PeerAddr,
    PostError,
};
pub use event::EventSender;
pub use log_throttle::LogThrottle;
pub use pipe::PipeWriter;
pub use queue::{QueueSendError, QueueSender};
pub use reactor::{Listening, Reactor, ReactorBuilder};
pub use stats::WorkerStats;
pub use udp::{
    Datagram, DatagramIter, DatagramIterMut, DatagramMut, Datagrams, Ecn, UdpOptions, UdpStats,
    UdpTransmit,
};
pub use worker::{Worker, WorkerCtx};

/// `now + d`, or a point a century away when that overflows (`Duration::MAX` means "no
/// deadline" without panicking).
pub(crate) fn deadline_after(d: std::time::Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + std::time::Duration::from_secs(100 * 365 * 24 * 3600))
}

/// The CPUs this process may run on (honours `taskset` and cgroups), ascending.
pub fn allowed_cpus() -> Vec<usize> {
    sys::affinity::allowed_cpus()
}

/// Pins the calling thread to `cpu`; crates that pair threads with workers (dap-proc) use it.
///
/// # Errors
/// `InvalidInput` for an id no CPU set can hold; `Other` when the kernel refuses (the CPU is
/// offline or outside this process's set).
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    sys::affinity::pin_current(cpu)
}

/// Sets the calling thread's nice value (Linux: per thread; 0 to 19 needs no privilege
/// when raising it). Thread pools that must yield to the reactor's workers on a busy CPU
/// (dap-proc) use it.
///
/// # Errors
/// The kernel's refusal (`EPERM` lowering it without the capability).
pub fn set_current_thread_nice(nice: i32) -> std::io::Result<()> {
    sys::affinity::set_nice(nice)
}

/// Raises this process's open-file soft limit to its hard limit and returns the new limit.
/// Servers holding many connections call this once at start-up.
///
/// # Errors
/// The `getrlimit` / `setrlimit` error.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    sys::rlimit::raise_nofile()
}

/// Gives the heap memory a burst freed back to the kernel when the allocator holds more
/// than `min_free` bytes free; returns the free bytes it found, or `None` when it left
/// them (below `min_free`, or an allocator that cannot say). For a daemon's housekeeping
/// timer: after a flood of connections closes, glibc keeps their buffers' pages resident
/// in its arenas; this returns them (`malloc_trim`), so resident memory comes back to
/// near its idle level. It walks the allocator's arenas: call it every few seconds, not
/// per request.
pub fn release_free_memory(min_free: usize) -> Option<usize> {
    let free = sys::alloc::free_bytes()?;
    (free > min_free && sys::alloc::trim()).then_some(free)
}
