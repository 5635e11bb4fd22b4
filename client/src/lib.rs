//! dap-client: the client connection state machine.
//!
//! A client goes through stages `Begin → EncInit → StreamCtl → StreamSession →
//! StreamConnected → StreamStreaming` ([`Stage`]), each with a [`Status`]. The deciding
//! part, [`Machine`], is sans-IO: it says which step to run, when to retry (a short delay,
//! then a long one with `always_reconnect`) and what to tear down, and is tested with a
//! virtual clock. The driver that runs the steps on the reactor builds on it.
#![forbid(unsafe_code)]

mod error;
pub mod machine;
mod stage;

pub use error::ClientError;
pub use machine::{Action, Event, Machine, RetryPolicy};
pub use stage::{Stage, Status};
