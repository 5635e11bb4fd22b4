//! dapd's `[udp]` section: on by default (bound beside the HTTP listener), the port bound
//! and the `advertise` setting in the stream_ctl answer, echo over UDP, the `/metrics`
//! families, and `enabled = false`.

mod util;

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dap_stream::session::TransportKind;
use dap_stream::session::ctl::{CtlRequest, decode_answer};
use dap_stream::transport::Wake;
use dap_stream::udp::connection::{Connection, ConnectionConfig, Side};
use dap_stream::udp::packet::ConnectionId;
use dap_stream::{Channel, ChannelHandler, ChannelProcs, Message, Mux, MuxConfig, SessionInfo};
use parking_lot::Mutex;
use util::*;

struct NoWake;
impl Wake for NoWake {
    fn wake(&self) {}
}

struct Record(Arc<Mutex<Vec<Message>>>);
impl ChannelHandler for Record {
    fn packet_in(&mut self, _: &mut Channel<'_>, msg: Message) {
        self.0.lock().push(msg);
    }
}

fn udp_ctl(d: &dap_server::Node) -> dap_stream::session::SessionParams {
    let req = CtlRequest {
        channels: b"E".to_vec(),
        suite: None,
        transport: TransportKind::Udp,
        unreliable: Vec::new(),
    };
    let answer = d.stream().stream_ctl(&req.encode(), None, Instant::now()).expect("stream_ctl");
    decode_answer(&answer, MuxConfig::default()).expect("answer")
}

#[test]
fn dapd_echoes_over_udp_by_default_and_counts_it() {
    let d = daemon(config(2));
    let addr = d.udp_addr().expect("UDP is on by default");
    assert_eq!(addr.ip(), d.local_addr().ip(), "beside the HTTP listener");
    let params = udp_ctl(&d);
    assert_eq!(params.udp_port, addr.port());
    let route = params.udp.clone().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut procs = ChannelProcs::new();
    let log = got.clone();
    procs.ch_proc_add(b'E', move |_| Box::new(Record(log.clone()))).unwrap();
    let info = SessionInfo { session_id: params.id, client: None };
    let mux = Mux::new(&params.channels, &procs, info, params.limits.mux);
    let now = Instant::now();
    let cid = ConnectionId(route.cid);
    let config = ConnectionConfig::default();
    let mut conn = Connection::new(Side::Client, &params, cid, Some(addr), mux, config, now);
    conn.mux().start(Arc::new(NoWake));
    let msg = vec![0x5a; 100_000];
    conn.mux().with_channel(b'E', |ch| ch.write(1, msg.clone()).unwrap()).unwrap();
    let mut end = ClientEnd::new();
    while got.lock().is_empty() {
        assert!(now.elapsed() < TIMEOUT, "no echo");
        end.turn(&mut conn);
    }
    assert!(got.lock()[0].data == msg);
    let (status, body) = http_get(d.local_addr(), "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("dap_udp_connections_total{event=\"attached\"} 1"), "{body}");
    assert!(body.contains("dap_udp_datagrams_total{direction=\"in\"}"), "{body}");
    // The connections' own statistics, published by the worker once a second.
    let mut body = String::new();
    wait_until("the UDP connection statistics are published", || {
        body = http_get(d.local_addr(), "/metrics").1;
        metric(&body, "dap_udp_rtt_seconds_count") >= 1.0
    });
    assert!(metric(&body, "dap_udp_bytes_total{direction=\"in\"}") >= 100_000.0, "{body}");
    assert!(metric(&body, "dap_udp_packets_total{direction=\"out\"}") >= 1.0, "{body}");
    // The server received 100 kB of ack-eliciting packets: it acknowledged some.
    assert!(metric(&body, "dap_udp_acks_sent_total") >= 1.0, "{body}");
    assert!(metric(&body, "dap_udp_cwnd_bytes") > 0.0, "{body}");
    assert_eq!(
        metric(&body, "dap_udp_rtt_seconds_bucket{le=\"+Inf\"}"),
        metric(&body, "dap_udp_rtt_seconds_count")
    );
    for family in [
        "dap_udp_lost_packets_total{kind=\"lost\"}",
        "dap_udp_retransmitted_bytes_total",
        "dap_udp_congestion_events_total{kind=\"pto\"}",
        "dap_udp_path_validations_total{result=\"validated\"}",
        "dap_udp_key_updates_total{by=\"local\"}",
    ] {
        assert!(body.contains(family), "{family} missing: {body}");
    }
    d.shutdown(Duration::from_secs(5));
}

#[test]
fn datagrams_that_are_not_packets_or_name_no_connection_are_counted() {
    let d = daemon(config(2));
    let addr = d.udp_addr().expect("UDP is on by default");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Too short to be a packet; a packet's length with other form bits; a well-formed
    // header whose connection id nothing here made (one naming each worker).
    sock.send_to(&[0x40; 10], addr).unwrap();
    sock.send_to(&[0x80; 64], addr).unwrap();
    for worker in [0u8, 1] {
        let mut d = vec![0u8; 64];
        d[0] = dap_stream::udp::packet::FORM;
        d[1] = worker;
        d[2..9].copy_from_slice(&[0xee; 7]);
        sock.send_to(&d, addr).unwrap();
    }
    let kinds = [
        "dap_udp_errors_total{kind=\"not_dap\"}",
        "dap_udp_errors_total{kind=\"unknown_connection\"}",
    ];
    let mut body = String::new();
    wait_until("the dropped datagrams are counted", || {
        body = http_get(d.local_addr(), "/metrics").1;
        metric(&body, kinds[0]) >= 2.0 && metric(&body, kinds[1]) >= 2.0
    });
    assert_eq!((metric(&body, kinds[0]), metric(&body, kinds[1])), (2.0, 2.0), "{body}");
    d.shutdown(Duration::from_secs(5));
}

#[test]
fn a_violation_over_udp_is_counted_as_over_http() {
    let d = daemon(config(1));
    let addr = d.udp_addr().expect("UDP is on by default");
    let mut params = udp_ctl(&d);
    let route = params.udp.clone().unwrap();
    // The client believes in a channel `Z` the session does not have, and writes on it.
    params.channels.push(b'Z');
    let mut procs = ChannelProcs::new();
    let log = Arc::new(Mutex::new(Vec::new()));
    for id in [b'E', b'Z'] {
        let log = log.clone();
        procs.ch_proc_add(id, move |_| Box::new(Record(log.clone()))).unwrap();
    }
    let info = SessionInfo { session_id: params.id, client: None };
    let mux = Mux::new(&params.channels, &procs, info, params.limits.mux);
    let now = Instant::now();
    let (cid, config) = (ConnectionId(route.cid), ConnectionConfig::default());
    let mut conn = Connection::new(Side::Client, &params, cid, Some(addr), mux, config, now);
    conn.mux().start(Arc::new(NoWake));
    conn.mux().with_channel(b'Z', |ch| ch.write(1, b"who?".to_vec()).unwrap()).unwrap();
    let mut end = ClientEnd::new();
    let kind = "dap_stream_errors_total{kind=\"unknown_channel\"}";
    let mut body = String::new();
    wait_until("the violation is counted", || {
        end.turn(&mut conn);
        body = http_get(d.local_addr(), "/metrics").1;
        metric(&body, kind) >= 1.0
    });
    assert_eq!(metric(&body, kind), 1.0, "{body}");
    d.shutdown(Duration::from_secs(5));
}

/// A test's UDP client: its socket and buffers, for an engine `Connection` it drives.
struct ClientEnd {
    sock: UdpSocket,
    buf: Vec<u8>,
    rx: Vec<u8>,
}

impl ClientEnd {
    fn new() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        ClientEnd { sock, buf: Vec::new(), rx: vec![0u8; 65_536] }
    }

    /// One turn: everything `conn` has to send, at most one datagram in (waiting up to
    /// 2 ms), then its timer if due.
    fn turn(&mut self, conn: &mut Connection) {
        let t = Instant::now();
        while let Some(x) = conn.poll_transmit(t, 16, &mut self.buf) {
            for seg in self.buf[..x.size].chunks(x.segment_size.unwrap_or(x.size)) {
                self.sock.send_to(seg, x.destination).unwrap();
            }
        }
        if let Ok((n, from)) = self.sock.recv_from(&mut self.rx) {
            conn.handle_datagram(Instant::now(), from, &mut self.rx[..n]);
        }
        let t = Instant::now();
        if conn.poll_timeout().is_some_and(|x| x <= t) {
            conn.handle_timeout(t);
        }
    }
}

/// The value of the sample `name` (with its labels) in a /metrics body (NaN if absent).
fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

#[test]
fn advertise_reaches_the_client_and_udp_can_be_off() {
    let mut c = config(1);
    c.udp.advertise = "relay.example:4433".into();
    let d = daemon(c);
    let params = udp_ctl(&d);
    assert_eq!(params.udp_port, 4433);
    assert_eq!(params.udp.unwrap().host, "relay.example");
    d.shutdown(Duration::from_secs(5));

    let mut c = config(1);
    c.udp.enabled = false;
    let d = daemon(c);
    assert_eq!(d.udp_addr(), None);
    let req = CtlRequest {
        channels: b"E".to_vec(),
        suite: None,
        transport: TransportKind::Udp,
        unreliable: Vec::new(),
    };
    let refused = d.stream().stream_ctl(&req.encode(), None, Instant::now()).unwrap_err();
    assert_eq!(refused.status(), 406);
    d.shutdown(Duration::from_secs(5));
}

#[test]
fn bad_udp_settings_name_their_key() {
    for (toml, key) in [
        ("[udp]\naddr = \"nowhere\"\n", "udp.addr"),
        ("[udp]\nadvertise = \"no-port\"\n", "udp.advertise"),
        ("[udp]\ncontroller = \"bbr\"\n", "udp.controller"),
        ("[udp]\nmax_udp_payload = 100\n", "udp.max_udp_payload"),
        ("[udp]\ngso_segments = 65\n", "udp.gso_segments"),
    ] {
        let e = dap_server::Config::from_toml(toml).unwrap_err();
        assert_eq!(e.key(), Some(key), "{toml}");
    }
}
