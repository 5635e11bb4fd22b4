//! Reasons the reactor itself closes or refuses an esocket.
//!
//! They travel inside `std::io::Error` (callbacks and add functions speak `io::Result`); match
//! with [`ReactorError::of`] rather than on message text.

use std::io;

/// Why the reactor closed or refused an esocket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReactorError {
    /// No traffic for longer than the idle timeout (kind `TimedOut`).
    #[error("idle for longer than the idle timeout")]
    IdleTimeout,
    /// An outgoing connection did not complete in time (kind `TimedOut`).
    #[error("connect timed out")]
    ConnectTimeout,
    /// A deadline set with [`Esocket::set_deadline`](crate::Esocket::set_deadline) passed and
    /// the handler did not deal with it (kind `TimedOut`).
    #[error("the esocket's deadline passed")]
    DeadlineTimeout,
    /// A graceful close could not flush its output within the close linger; the rest was
    /// discarded (kind `TimedOut`).
    #[error("close linger passed with output unsent")]
    LingerTimeout,
    /// Writes from other threads passed `buf_out_cap + handle_write_slack` (kind `Other`).
    #[error("output overflow: the peer is not reading fast enough")]
    OutputOverflow,
    /// The worker's esocket table is full (kind `Other`).
    #[error("the worker's esocket table is full (Limits::max_esockets)")]
    TableFull,
    /// The worker's timer table is full (kind `Other`).
    #[error("the worker's timer table is full (Limits::max_timers)")]
    TimersFull,
    /// The worker is stopping and takes no new esockets (kind `Other`).
    #[error("the worker is stopping")]
    Stopping,
    /// The esocket held parked partial input while the reactor's buffers, together, were
    /// past [`Limits::buffer_budget`](crate::Limits::buffer_budget) (kind `Other`).
    #[error("buffer budget: partial input held while the node is out of buffer memory")]
    BufferBudget,
    /// A callback panicked (kind `Other`).
    #[error("a callback panicked")]
    HandlerPanicked,
}

impl ReactorError {
    /// The reactor error inside an `io::Error`, if it carries one.
    pub fn of(err: &io::Error) -> Option<ReactorError> {
        err.get_ref()?.downcast_ref::<ReactorError>().copied()
    }

    fn kind(self) -> io::ErrorKind {
        match self {
            ReactorError::IdleTimeout
            | ReactorError::ConnectTimeout
            | ReactorError::DeadlineTimeout
            | ReactorError::LingerTimeout => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::Other,
        }
    }
}

impl From<ReactorError> for io::Error {
    fn from(e: ReactorError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}
