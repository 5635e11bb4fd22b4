//! The `Node` builder: wiring mistakes fail at `start()` naming the part, the builder and
//! `from_config` are one code path, and the short setters set the keys they name.

mod util;

use std::time::Duration;

use dap_server::{Config, Node, StartError};
use dap_stream::{Channel, ChannelHandler, Message};
use util::*;

struct Nothing;

impl ChannelHandler for Nothing {
    fn packet_in(&mut self, _: &mut Channel<'_>, _: Message) {}
}

fn quiet(b: dap_server::NodeBuilder) -> dap_server::NodeBuilder {
    b.http("127.0.0.1:0".parse().unwrap()).threads(1).reactor_pin(false)
}

#[test]
fn a_node_without_channels_fails_at_start_naming_them() {
    let err = quiet(Node::builder()).start().expect_err("no channels");
    assert!(matches!(err, StartError::Missing { part: "channels", .. }), "{err}");
    assert!(err.to_string().contains(".channel("), "{err}");
}

#[test]
fn a_channel_id_twice_or_a_built_in_id_fails_at_start() {
    let err = quiet(Node::builder())
        .channel(b'C', |_| Nothing)
        .channel(b'C', |_| Nothing)
        .start()
        .expect_err("twice");
    assert!(matches!(err, StartError::Channel { id: b'C', .. }), "{err}");
    assert!(err.to_string().contains("'C'") && err.to_string().contains("twice"), "{err}");

    let err = quiet(Node::builder())
        .builtin_channels()
        .channel(b'E', |_| Nothing)
        .start()
        .expect_err("built-in");
    assert!(err.to_string().contains("built-in"), "{err}");

    let err = quiet(Node::builder()).channel(b' ', |_| Nothing).start().expect_err("bad id");
    assert!(matches!(err, StartError::Channel { id: b' ', .. }), "{err}");
}

#[test]
fn a_setting_that_cannot_be_used_fails_at_start_naming_its_key() {
    let err = quiet(Node::builder())
        .builtin_channels()
        .tls("127.0.0.1:0".parse().unwrap(), "/nonexistent/cert.pem", "/nonexistent/key.pem")
        .start()
        .expect_err("no certificate");
    assert!(err.to_string().starts_with("tls."), "{err}");

    let err = quiet(Node::builder())
        .builtin_channels()
        .stream_max_frame(0)
        .start()
        .expect_err("out of range");
    assert!(err.to_string().contains("stream.max_frame"), "{err}");
}

#[test]
fn the_builder_and_from_config_make_the_same_node_for_the_embedded_default() {
    let a = Node::builder();
    let b = Node::from_config(Config::embedded());
    assert_eq!(a.config(), b.config());
    let start = |b: dap_server::NodeBuilder| {
        quiet(b).udp("127.0.0.1:0".parse().unwrap()).builtin_channels().start().unwrap()
    };
    let (a, b) = (start(a), start(b));
    assert_eq!(a.config().listen.addr, b.config().listen.addr);
    assert_eq!(a.config(), b.config());
    assert!(a.udp_addr().is_some() && b.udp_addr().is_some());
    // The same families, in the same order.
    let families = |n: &Node| -> Vec<String> {
        n.metrics().lines().filter(|l| l.starts_with("# TYPE")).map(String::from).collect()
    };
    assert_eq!(families(&a), families(&b));
    assert_eq!(a.stats().channels.len(), 2);
    a.shutdown(Duration::from_secs(5));
    b.shutdown(Duration::from_secs(5));
}

#[test]
fn the_short_setters_set_the_keys_they_name() {
    let b = Node::builder()
        .http("127.0.0.1:9".parse().unwrap())
        .udp("127.0.0.1:10".parse().unwrap())
        .threads(3)
        .stream_max_sessions(17)
        .udp_controller("newreno")
        .configure(|c| c.http.max_body = 99);
    let c = b.config();
    assert_eq!(c.listen.addr.port(), 9);
    assert!(c.udp.enabled);
    assert_eq!(c.udp.addr, "127.0.0.1:10");
    assert_eq!(c.reactor.threads, 3);
    assert_eq!(c.stream.max_sessions, 17);
    assert_eq!(c.udp.controller, "newreno");
    assert_eq!(c.http.max_body, 99);
    assert!(!b.without_udp().config().udp.enabled);
}

#[test]
fn an_application_channel_over_udp_answers() {
    let node = quiet(Node::builder())
        .udp("127.0.0.1:0".parse().unwrap())
        .channel(b'S', |_| Shout)
        .start()
        .unwrap();
    let client = client_reactor();
    let c = open_over(
        &client,
        node.local_addr(),
        node.node_public_key(),
        b"S",
        dap_stream::session::TransportKind::Udp,
    )
    .unwrap();
    c.channel(b'S').write(1, b"hello".to_vec()).unwrap();
    assert_eq!(c.next().data, &b"HELLO"[..]);
    node.shutdown(Duration::from_secs(5));
}

struct Shout;

impl ChannelHandler for Shout {
    fn packet_in(&mut self, ch: &mut Channel<'_>, msg: Message) {
        let _ = ch.write(msg.ty, msg.data.to_ascii_uppercase());
    }
}
