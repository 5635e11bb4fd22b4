//! `config`: dapd's configuration file. The first byte picks:
//!
//! - even: the rest is TOML text for `Config::from_toml` (every section, `[listen]`'s CIDR
//!   lists and `[dns]`'s records included). A configuration it accepts must also pass the
//!   node's own check — everything `dapd --check-config` does, with the file-backed keys
//!   (node key, allow list, TLS) left out: only a DNS record the zone refuses may fail
//!   there; and its CIDR blocks read back from their text.
//! - odd: the rest is lines, each read as a CIDR block: a block shows as text that reads
//!   back to it, and contains its own address, masked.

use std::net::IpAddr;

use dap_net::server::Cidr;
use dap_server::config::ClientAuthSetting;
use dap_server::node::StartError;
use dap_server::{Config, Node};

/// The target.
pub fn run(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(body);
    if which % 2 == 1 {
        text.lines().for_each(cidr);
        return;
    }
    let Ok(mut config) = Config::from_toml(&text) else { return };
    for block in config.listen.allow.iter().chain(&config.listen.deny) {
        cidr(block);
        assert!(block.parse::<Cidr>().is_ok(), "{block:?} passed validation");
    }
    let _ = config.log.filter();
    if let Ok(Some((host, port))) = config.udp.advertised() {
        assert!(!host.is_empty() && port != 0);
    }
    // No files: what they name is read at start, not by the configuration.
    config.enc.node_key.clear();
    if config.enc.client_auth == ClientAuthSetting::Required {
        config.enc.client_auth = ClientAuthSetting::Optional;
    }
    config.enc.allow_list.clear();
    config.tls.enabled = false;
    match Node::from_config(config).builtin_channels().check() {
        Ok(()) | Err(StartError::Setting { key: "dns.records", .. }) => {}
        Err(e) => panic!("validated, yet the node refuses it: {e}"),
    }
}

fn cidr(text: &str) {
    let Ok(block) = text.parse::<Cidr>() else { return };
    let shown = block.to_string();
    assert_eq!(shown.parse::<Cidr>(), Ok(block), "{text:?} shows as {shown:?}");
    let addr = text.split_once('/').map_or(text, |(a, _)| a);
    let addr: IpAddr = addr.parse().expect("the address part parsed");
    assert!(block.contains(addr), "{text:?} does not contain its own address");
}
