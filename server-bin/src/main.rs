//! `dapd`: the dap daemon, a [`Node`](dap_server::Node) with the built-in channels `'E'`
//! (echo) and `'P'` (publish/subscribe). The command line is [`dap_server::cli`]'s:
//!
//! ```text
//! dapd [--config FILE] [--log-format text|json]
//! dapd --print-default-config
//! dapd --check-config [--config FILE]
//! dapd keygen --node FILE | --client FILE | --cluster FILE
//! ```

fn main() -> std::process::ExitCode {
    dap_server::cli::run(|node| node.builtin_channels())
}
