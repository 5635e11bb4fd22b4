//! The external-event-loop example (`examples/udp_mio.rs`) against dapd in this process:
//! its mio loop, with no dap-reactor on the client side, gets a UDP session, echoes
//! messages of every size through channel `'E'` byte for byte, and closes cleanly.

#[path = "../examples/udp_mio.rs"]
#[allow(dead_code)] // The example's `main` and command line.
mod udp_mio;

use std::time::Duration;

use dap_server::{Config, Node};
use dap_stream::udp::connection::CloseReason;

/// Every wait of the run ends within this.
const TIMEOUT: Duration = Duration::from_secs(30);

/// dapd on ephemeral loopback ports (HTTP, and UDP beside it, on by default) with two
/// unpinned workers, so that the session's connection id may name the worker the kernel did
/// not pick and datagrams are handed over.
fn dapd() -> Node {
    let mut cfg = Config::embedded();
    cfg.listen.addr = "127.0.0.1:0".parse().unwrap();
    cfg.reactor.threads = 2;
    cfg.reactor.pin = false;
    cfg.proc.threads = 1;
    Node::from_config(cfg).builtin_channels().start().expect("dapd starts")
}

#[test]
fn a_plain_mio_loop_echoes_every_size_through_dapd_over_udp() {
    let d = dapd();
    assert!(d.udp_addr().is_some(), "dapd serves UDP");
    let opts = udp_mio::Options {
        http: d.local_addr(),
        node_key: Some(d.node_public_key()),
        // Two rounds of the example's sizes, 1 B to 300 KB: 662,908 bytes a round.
        messages: 20,
        timeout: TIMEOUT,
    };
    let report = udp_mio::run(&opts).unwrap_or_else(|e| panic!("udp_mio: {e}"));
    assert_eq!(report.messages, 20);
    assert_eq!(report.bytes, 2 * 662_908);
    assert_eq!(report.server, d.udp_addr().unwrap());
    assert_eq!(report.close, CloseReason::Local(0));
    // Every packet the engine built left as one datagram, or was lost to a full buffer.
    assert_eq!(report.datagrams_out + report.send_dropped, report.stats.packets_out);
    assert!(report.stats.packets_in > 0);
    let counted = d.metrics();
    assert!(counted.contains("dap_udp_connections_total{event=\"attached\"} 1"), "{counted}");
    d.shutdown(Duration::from_secs(5));
}

#[test]
fn a_wrong_node_key_is_refused_before_any_udp() {
    let d = dapd();
    let opts = udp_mio::Options {
        http: d.local_addr(),
        node_key: Some([7; 32]),
        messages: 1,
        timeout: TIMEOUT,
    };
    match udp_mio::run(&opts) {
        Err(udp_mio::Error::Handshake(_)) => {}
        other => panic!("{other:?}"),
    }
    d.shutdown(Duration::from_secs(5));
}
