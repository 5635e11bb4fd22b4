//! The callbacks an esocket runs on its worker.

use std::any::Any;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use super::Esocket;
use crate::udp::Datagrams;

/// Callbacks of a stream, UDP or raw-fd esocket, run on the owning worker (DAP's
/// `dap_events_socket_callbacks_t`). Every method has a default that does nothing, so a
/// handler implements only what it needs.
///
/// Within a callback, `es` gives `&mut` access to the esocket: read and consume `buf_in`,
/// write to `buf_out`, change interest, close. Output is flushed after the callback returns,
/// so several writes in one callback leave in one (vectored) system call.
///
/// A callback that panics is caught; its esocket is closed and the panic is logged and
/// counted, and the worker carries on with its other esockets. The handler gets no further
/// callbacks except the last two: `on_error` with [`ReactorError::HandlerPanicked`], then
/// `on_delete`, so that what it registered elsewhere can still be released (its own state is
/// whatever the panic left).
///
/// [`ReactorError::HandlerPanicked`]: crate::ReactorError::HandlerPanicked
pub trait Handler: Any {
    /// The esocket was added to its worker (accepted, adopted, created, or connect started).
    fn on_new(&mut self, es: &mut Esocket<'_>) {
        let _ = es;
    }

    /// An outgoing connection was established.
    fn on_connected(&mut self, es: &mut Esocket<'_>) {
        let _ = es;
    }

    /// New bytes were appended to `buf_in` (or, for a raw fd, the fd is readable).
    ///
    /// Bytes left unconsumed stay for the next call; once `buf_in` reaches its cap, reading
    /// pauses until the handler consumes, so nothing is ever discarded.
    fn on_read(&mut self, es: &mut Esocket<'_>) {
        let _ = es;
    }

    /// The peer finished its side of a stream (a read returned end of file; through a layer,
    /// its orderly end), after every byte it sent went to [`on_read`](Self::on_read). The
    /// esocket can still write.
    ///
    /// The default closes gracefully (queued output is flushed first). A handler that still
    /// owes the peer an answer (a request handed to a proc thread, say) keeps the esocket
    /// open by not closing here, and closes once it has answered: the peer may have only
    /// half-closed (`shutdown(SHUT_WR)`) and be waiting to read. Reading is over either way.
    fn on_read_closed(&mut self, es: &mut Esocket<'_>) {
        es.close();
    }

    /// A datagram arrived on a UDP esocket (called by the default
    /// [`on_datagrams`](Self::on_datagrams)).
    fn on_datagram(&mut self, es: &mut Esocket<'_>, data: &[u8], from: SocketAddr) {
        let _ = (es, data, from);
    }

    /// Datagrams arrived on a UDP esocket: what one batched receive brought in, runs the
    /// kernel coalesced (GRO) already split, each datagram with its source, ECN codepoint and
    /// destination address. A handler that sends replies in batches
    /// ([`Esocket::send_batch`]) implements this one; the batch is writable
    /// ([`Datagrams::iter_mut`]) for a transport that decrypts in place.
    ///
    /// The default hands each datagram to [`on_datagram`](Self::on_datagram) in order, and
    /// stops if the handler closes the esocket. Pausing reading takes effect after the batch.
    fn on_datagrams(&mut self, es: &mut Esocket<'_>, batch: &mut Datagrams<'_>) {
        for d in batch.iter() {
            if es.is_closing() {
                break;
            }
            self.on_datagram(es, d.data, d.from);
        }
    }

    /// The esocket can take more output: write interest is set and `buf_out` is at or below
    /// its low-water mark, or an earlier write returned `WouldBlock` and output has drained
    /// to the low-water mark. Return whether to keep write interest.
    fn on_write(&mut self, es: &mut Esocket<'_>) -> bool {
        let _ = es;
        false
    }

    /// The deadline set with [`Esocket::set_deadline`] has passed. Return `true` if the
    /// handler dealt with it (answered, closed, or set a new deadline); `false` (the default)
    /// closes the esocket with `TimedOut` reported to [`on_error`](Self::on_error).
    fn on_timeout(&mut self, es: &mut Esocket<'_>) -> bool {
        let _ = es;
        false
    }

    /// Everything queued in `buf_out` has been handed to the kernel.
    fn on_write_finished(&mut self, es: &mut Esocket<'_>) {
        let _ = es;
    }

    /// The esocket failed and is about to be closed: an I/O error, a refused or timed-out
    /// connect, the idle sweep (`TimedOut`), or output overflow from cross-thread writes.
    /// Never called for an orderly close.
    fn on_error(&mut self, es: &mut Esocket<'_>, err: &io::Error) {
        let _ = (es, err);
    }

    /// The esocket is being removed; last call. Writes made here are discarded.
    fn on_delete(&mut self, es: &mut Esocket<'_>) {
        let _ = es;
    }

    /// For a handler that wraps another (to hold a guard, count or log around it): the
    /// wrapped handler, so that [`Esocket::with_handler`] finds a handler of the type it
    /// asks for inside the wrapper. Default: `None`.
    fn wrapped(&mut self) -> Option<&mut dyn Handler> {
        None
    }
}

/// Where an accepted connection came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerAddr {
    /// A TCP peer.
    Inet(SocketAddr),
    /// A Unix-domain peer (usually unnamed).
    Unix,
}

/// Makes a handler for each accepted connection; `None` refuses the connection (it is closed
/// at once). Shared by the listeners of every worker, hence `Send + Sync`.
pub trait HandlerFactory: Send + Sync + 'static {
    /// Called on the accepting worker for each new connection.
    fn new_handler(&self, peer: &PeerAddr) -> Option<Box<dyn Handler>>;
}

impl<F> HandlerFactory for F
where
    F: Fn(&PeerAddr) -> Option<Box<dyn Handler>> + Send + Sync + 'static,
{
    fn new_handler(&self, peer: &PeerAddr) -> Option<Box<dyn Handler>> {
        self(peer)
    }
}

/// A shared handler factory.
pub(crate) type Factory = Arc<dyn HandlerFactory>;
