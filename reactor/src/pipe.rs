//! Pipes: the read end is an esocket, the write end may go to any thread.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};

/// The write end of a pipe esocket. Non-blocking by default: a full pipe returns
/// `WouldBlock`; call [`set_nonblocking(false)`](Self::set_nonblocking) to block instead.
#[derive(Debug)]
pub struct PipeWriter {
    pub(crate) tx: mio::unix::pipe::Sender,
}

impl PipeWriter {
    /// Chooses blocking or non-blocking writes.
    ///
    /// # Errors
    /// The `fcntl` error, if any.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.tx.set_nonblocking(nonblocking)
    }
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.tx.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for PipeWriter {
    fn as_raw_fd(&self) -> RawFd {
        self.tx.as_raw_fd()
    }
}
