//! A non-blocking eventfd: a u64 counter the kernel adds to on write and resets on read.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An owned, non-blocking, close-on-exec eventfd.
#[derive(Debug)]
pub(crate) struct EventFd {
    file: File,
}

impl EventFd {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; the flags are valid constants.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd, is open, and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventFd { file: File::from(owned) })
    }

    /// Adds `value` to the counter. `WouldBlock` if it would overflow (the reader is far
    /// behind); a zero add is a no-op.
    pub(crate) fn add(&self, value: u64) -> io::Result<()> {
        if value == 0 {
            return Ok(());
        }
        (&self.file).write_all(&value.to_ne_bytes())
    }

    /// Takes the counter (resetting it to zero); `Ok(0)` when nothing was added.
    pub(crate) fn take(&self) -> io::Result<u64> {
        let mut buf = [0u8; 8];
        match (&self.file).read(&mut buf) {
            Ok(8) => Ok(u64::from_ne_bytes(buf)),
            Ok(_) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short eventfd read")),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_semantics() {
        let ev = EventFd::new().unwrap();
        assert_eq!(ev.take().unwrap(), 0);
        ev.add(3).unwrap();
        ev.add(4).unwrap();
        assert_eq!(ev.take().unwrap(), 7);
        assert_eq!(ev.take().unwrap(), 0);
        ev.add(u64::MAX - 1).unwrap();
        assert_eq!(ev.add(1).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
