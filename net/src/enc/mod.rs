//! enc: the encryption handshake (`POST /enc_init`) and encrypted requests (enc_http).
//!
//! The primitives every encrypted part of dap shares are in [`cipher`].

pub mod cipher;
