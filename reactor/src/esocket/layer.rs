//! Layers: a transform between a stream socket and its handler's buffers (TLS is one).
//!
//! With a layer installed, `buf_in` holds decoded bytes and `buf_out` takes bytes to encode;
//! the handler does not change. The worker moves bytes through the layer: socket → layer →
//! `buf_in` on the way in, `buf_out` → layer → socket on the way out. The interface follows
//! rustls's `Connection` so that a TLS connection is a layer with a few lines of glue.

use std::io;

/// A transform installed on a stream esocket with
/// [`Esocket::set_layer`](crate::Esocket::set_layer). Methods are called on the worker.
pub trait Layer: 'static {
    /// Reads encoded bytes from `wire` (the socket) into the layer. `Ok(0)` is the end of
    /// the stream; `WouldBlock` means nothing is waiting.
    ///
    /// # Errors
    /// The socket's errors, or the layer's buffer being full.
    fn read_wire(&mut self, wire: &mut dyn io::Read) -> io::Result<usize>;

    /// Decodes what [`read_wire`](Self::read_wire) took in.
    ///
    /// # Errors
    /// Anything fatal (a bad record, a failed handshake): the esocket is closed with it,
    /// after the layer's alert, if any, has been written.
    fn process(&mut self) -> io::Result<()>;

    /// Takes decoded bytes. `WouldBlock` when none are ready, `Ok(0)` when the peer ended the
    /// layer cleanly, `UnexpectedEof` when the stream ended without that.
    ///
    /// # Errors
    /// As described.
    fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Gives bytes to encode; returns how many were taken (0 while the layer is full).
    ///
    /// # Errors
    /// The layer can take no more output (it was closed).
    fn write_plain(&mut self, data: &[u8]) -> io::Result<usize>;

    /// Encoded bytes are waiting for the socket.
    fn wants_write(&self) -> bool;

    /// Writes encoded bytes to `wire`.
    ///
    /// # Errors
    /// The socket's errors (`WouldBlock` when it is full).
    fn write_wire(&mut self, wire: &mut dyn io::Write) -> io::Result<usize>;

    /// Starts an orderly end of the layer (TLS `close_notify`), sent before the socket
    /// closes.
    fn close(&mut self);
}
