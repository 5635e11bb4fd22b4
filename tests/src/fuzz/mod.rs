//! The bodies of the fuzz targets under `fuzz/`: one function per target, taking the
//! fuzzer's bytes and panicking when a property fails. `fuzz/fuzz_targets/<name>.rs` is a
//! one-line `fuzz_target!` around [`TARGETS`]' function of that name; `tests/fuzz_corpus.rs`
//! runs every function over every file of `fuzz/corpus/<name>/`, so the corpus is checked
//! on the stable toolchain by `cargo test`.
//!
//! Nothing here reads a clock for its decisions, opens a socket or a file: the same input
//! does the same thing every time (the few fresh random keys, as in a handshake, decide
//! nothing the properties depend on).

pub mod config;
pub mod dns;
pub mod enc_http;
pub mod enc_init;
pub mod http_request;
pub mod http_response;
pub mod keys;
pub mod pubsub;
pub mod stream;
pub mod stream_client;
pub mod stream_packets;
pub mod stream_path;
pub mod udp;
pub mod udp_conn;
pub mod udp_endpoint;
pub mod urls;

/// A target: its name (the name of its binary under `fuzz/` and of its corpus directory)
/// and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("config", config::run),
    ("dns", dns::run),
    ("enc_http", enc_http::run),
    ("enc_init", enc_init::run),
    ("http_request", http_request::run),
    ("http_response", http_response::run),
    ("keys", keys::run),
    ("pubsub", pubsub::run),
    ("stream", stream::run),
    ("stream_client", stream_client::run),
    ("stream_packets", stream_packets::run),
    ("stream_path", stream_path::run),
    ("udp", udp::run),
    ("udp_conn", udp_conn::run),
    ("udp_endpoint", udp_endpoint::run),
    ("urls", urls::run),
];

/// The target named `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
}

/// A waker that does nothing: the targets poll everything themselves.
#[derive(Debug)]
pub(crate) struct NoWake;

impl dap_stream::transport::Wake for NoWake {
    fn wake(&self) {}
}

/// A channel handler that sends back every message it gets, so the send path runs too.
#[derive(Debug)]
pub(crate) struct Echo;

impl dap_stream::ChannelHandler for Echo {
    fn packet_in(&mut self, ch: &mut dap_stream::Channel<'_>, msg: dap_stream::Message) {
        let _ = ch.write(msg.ty, msg.data);
    }
}
