//! The chat example (`examples/chat.rs`, compiled in here as it is): three members over each
//! transport hear each other in order, and a member climbs back after the server restarts.

#[path = "../examples/chat.rs"]
#[allow(dead_code)]
mod chat;
mod util;

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, unbounded};
use dap_client::{Client, RetryPolicy, Stage, Transport, Uplink};
use dap_server::Node;
use util::{TIMEOUT, wait_until};

fn open_members(node: &Node) -> u64 {
    let stats = node.stats();
    stats.channels.iter().find(|(id, _)| *id == chat::ROOM).map_or(0, |(_, s)| s.open)
}

fn member(addr: std::net::SocketAddr, transport: Transport) -> (Client, Receiver<String>) {
    let (tx, rx) = unbounded();
    let c = chat::join(Uplink::Addr(addr), transport, None, move |line| {
        let _ = tx.send(line);
    })
    .expect("the client starts");
    (c, rx)
}

fn three_members_hear_each_other(transport: Transport) {
    let node = chat::server("127.0.0.1:0".parse().unwrap()).expect("the chat node starts");
    let names = ["ann", "bob", "cid"];
    let members: Vec<_> = names.iter().map(|_| member(node.local_addr(), transport)).collect();
    for (c, _) in &members {
        c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).expect("streaming");
        assert_eq!(c.transport(), Some(transport));
    }
    // Everyone is in the room before anyone speaks (a late joiner hears nothing old).
    wait_until("three members in the room", || open_members(&node) == 3);
    const LINES: usize = 50;
    for i in 0..LINES {
        for (n, (c, _)) in names.iter().zip(&members) {
            chat::say(c, n, &format!("line {i}")).unwrap();
        }
    }
    for (me, (_, rx)) in names.iter().zip(&members) {
        let mut next = std::collections::HashMap::new();
        for _ in 0..2 * LINES {
            let line = rx.recv_timeout(TIMEOUT).expect("every line of the two others");
            let (who, text) = line.split_once(": ").expect("NAME: text");
            assert_ne!(who, *me, "{me} heard itself");
            let i = next.entry(who.to_string()).or_insert(0usize);
            assert_eq!(text, format!("line {i}"), "{me} heard {who} out of order");
            *i += 1;
        }
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "nothing more for {me}");
    }
    drop(members);
    node.shutdown(Duration::from_secs(5));
}

#[test]
fn three_members_hear_each_other_in_order_over_http() {
    three_members_hear_each_other(Transport::Http);
}

#[test]
fn three_members_hear_each_other_in_order_over_udp() {
    three_members_hear_each_other(Transport::Udp);
}

#[test]
fn a_member_climbs_back_after_the_server_restarts_and_its_next_lines_arrive() {
    let node = chat::server("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = node.local_addr();
    let (a, _) = member(addr, Transport::Udp);
    let (b, b_lines) = member(addr, Transport::Http);
    for c in [&a, &b] {
        c.go_stage_blocking(Stage::StreamStreaming, TIMEOUT).unwrap();
    }
    wait_until("two members", || open_members(&node) == 2);
    node.shutdown(Duration::from_secs(5));
    wait_until("both noticed", || !a.is_streaming() && !b.is_streaming());
    let node = chat::server(addr).expect("the server starts again on its port");
    let restarted = Instant::now();
    wait_until("both back", || a.is_streaming() && b.is_streaming() && open_members(&node) == 2);
    // The default policy: the wait never exceeds max_delay (generous slack for load).
    let bound = RetryPolicy::default().max_delay + Duration::from_secs(10);
    assert!(restarted.elapsed() < bound, "back after {:?}", restarted.elapsed());
    chat::say(&a, "ann", "back").unwrap();
    assert_eq!(b_lines.recv_timeout(TIMEOUT).unwrap(), "ann: back");
    drop((a, b));
    node.shutdown(Duration::from_secs(5));
}
