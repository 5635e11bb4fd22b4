//! dap-server: the library half of the `dapd` daemon (configuration, wiring).
//!
//! This crate is a skeleton until the daemon issue lands; see `docs/ARCHITECTURE.md`.
#![forbid(unsafe_code)]
