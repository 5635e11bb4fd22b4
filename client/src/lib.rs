//! dap-client: the client connection state machine.
//!
//! Stages `Begin → EncInit → StreamCtl → StreamSession → StreamConnected → StreamStreaming`,
//! with retries, driven sans-IO and usable from any thread.
//!
//! This crate is a skeleton until the client issue lands; see `docs/ARCHITECTURE.md`.
#![forbid(unsafe_code)]
