//! `/health` and `/metrics`: the metrics parse as Prometheus text (checked by a strict
//! parser here) and show the traffic that went through.

mod util;

use std::collections::{HashMap, HashSet};

use dap_net::enc::cipher::CipherSuite;
use dap_net::enc::client::handshake_blocking;
use dap_net::http::client::ClientConfig;
use dap_stream::pubsub::{PubSubMsg, Topic};
use util::*;

/// One sample: labels and value.
type Sample = (Vec<(String, String)>, f64);

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label(n: &str) -> bool {
    let mut c = n.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Parses the text exposition format 0.0.4 strictly: every family has HELP then TYPE
/// before its samples, samples of a family are contiguous, names and labels are valid,
/// values are floats, no family appears twice. Returns the samples by family name.
fn parse(text: &str) -> Result<HashMap<String, Vec<Sample>>, String> {
    let mut families: HashMap<String, Vec<Sample>> = HashMap::new();
    let mut done = HashSet::new();
    let mut help: Option<String> = None;
    let mut current: Option<(String, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let err = |why: &str| Err(format!("line {}: {why}: {line:?}", i + 1));
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').unwrap_or((rest, ""));
            if !valid_name(name) || doc.is_empty() || done.contains(name) {
                return err("bad HELP");
            }
            if let Some((prev, _)) = current.take() {
                done.insert(prev);
            }
            help = Some(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or("TYPE without a kind")?;
            if help.as_deref() != Some(name) {
                return err("TYPE not right after its HELP");
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return err("unknown type");
            }
            help = None;
            families.insert(name.to_string(), Vec::new());
            current = Some((name.to_string(), kind.to_string()));
        } else if line.starts_with('#') || line.is_empty() {
            return err("unexpected comment or blank line");
        } else {
            let Some((family, kind)) = &current else { return err("sample before TYPE") };
            let (series, value) = line.rsplit_once(' ').ok_or("no value")?;
            let value: f64 = value.parse().map_err(|_| format!("line {}: bad value", i + 1))?;
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => {
                    let l = l.strip_suffix('}').ok_or("unclosed labels")?;
                    let mut out = Vec::new();
                    for pair in l.split(',') {
                        let (k, v) = pair.split_once('=').ok_or("label without =")?;
                        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                        let Some(v) = v else { return err("unquoted label value") };
                        if !valid_label(k) || v.contains(['"', '\\', '\n']) {
                            return err("bad label");
                        }
                        out.push((k.to_string(), v.to_string()));
                    }
                    (n, out)
                }
                None => (series, Vec::new()),
            };
            // A histogram's samples are its _bucket (with `le`), _sum and _count series.
            let of_family = name == family
                || (kind == "histogram"
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|x| name.strip_suffix(x) == Some(family.as_str())));
            if !of_family || !valid_name(name) {
                return err("sample outside its family");
            }
            if kind == "counter" && (value.is_nan() || value < 0.0) {
                return err("negative counter");
            }
            let mut labels = labels;
            if name != family {
                // A histogram's series, told apart by a pseudo-label.
                labels.push(("__series".to_string(), name[family.len() + 1..].to_string()));
            }
            families.get_mut(family).expect("inserted at TYPE").push((labels, value));
        }
    }
    if help.is_some() {
        return Err("HELP without TYPE at the end".into());
    }
    Ok(families)
}

fn value(f: &HashMap<String, Vec<Sample>>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = f.get(name).unwrap_or_else(|| panic!("family {name} missing"));
    samples
        .iter()
        .filter(|(l, _)| labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn health_is_ok_while_serving() {
    let d = daemon(config(1));
    let (status, body) = http_get(d.local_addr(), "/health");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    d.shutdown(TIMEOUT);
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_the_traffic() {
    let d = daemon(config(2));
    let client = client_reactor();
    let e = open(&client, d.local_addr(), d.node_public_key(), b"EP").unwrap();
    for i in 0..10u8 {
        e.channel(b'E').write(1, vec![i; 100]).unwrap();
        assert_eq!(e.next().data, vec![i; 100]);
    }
    let topic = Topic::new("m").unwrap();
    e.subscribe(&topic);
    e.send(&PubSubMsg::Publish { seq: 1, topic: topic.clone(), payload: b"x".to_vec() }).unwrap();
    let _message_and_ack = (e.next(), e.next());
    let (_, missing) = http_get(d.local_addr(), "/nope");
    assert!(!missing.is_empty());

    let (status, text) = http_get(d.local_addr(), "/metrics");
    assert_eq!(status, 200);
    let f = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(value(&f, "dap_up", &[]), 1.0);
    assert_eq!(value(&f, "dap_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert!(value(&f, "process_cpu_seconds_total", &[]) > 0.0);
    assert!(value(&f, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&f, "process_open_fds", &[]) >= 3.0);
    assert!(value(&f, "process_max_fds", &[]) >= value(&f, "process_open_fds", &[]));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let started = value(&f, "process_start_time_seconds", &[]);
    assert!(started > 1e9 && started <= now.as_secs_f64() + 1.0, "{started}");
    assert_eq!(f["dap_connections"].len(), 2, "one sample per worker");
    assert!(value(&f, "dap_connections", &[]) >= 2.0, "the stream and this request");
    assert!(value(&f, "dap_connections_accepted_total", &[]) >= 4.0);
    assert_eq!(value(&f, "dap_stream_sessions_total", &[("event", "created")]), 1.0);
    assert_eq!(value(&f, "dap_stream_sessions_total", &[("event", "attached")]), 1.0);
    assert_eq!(value(&f, "dap_stream_streams_open", &[]), 1.0);
    assert_eq!(value(&f, "dap_stream_channels_open", &[]), 2.0);
    assert!(value(&f, "dap_stream_bytes_total", &[("direction", "in")]) > 1000.0);
    assert!(value(&f, "dap_stream_bytes_total", &[("direction", "out")]) > 1000.0);
    assert_eq!(value(&f, "dap_stream_errors_total", &[("kind", "auth")]), 0.0);
    assert_eq!(value(&f, "dap_enc_handshakes_total", &[("result", "ok")]), 1.0);
    let init = "dap_enc_init_seconds";
    assert_eq!(value(&f, init, &[("__series", "count")]), 1.0);
    assert_eq!(value(&f, init, &[("__series", "bucket"), ("le", "+Inf")]), 1.0);
    assert!(value(&f, init, &[("__series", "sum")]) > 0.0);
    assert_eq!(value(&f, "dap_stream_setup_seconds", &[("__series", "count")]), 1.0);
    assert_eq!(value(&f, "dap_enc_keys", &[]), 1.0);
    assert!(value(&f, "dap_http_requests_total", &[("listener", "plain")]) >= 3.0);
    assert!(value(&f, "dap_http_responses_total", &[("class", "4xx")]) >= 1.0);
    assert_eq!(value(&f, "dap_http_upgrades_total", &[]), 1.0);
    assert_eq!(value(&f, "dap_pubsub_published_total", &[]), 1.0);
    assert_eq!(value(&f, "dap_pubsub_delivered_total", &[]), 1.0);
    assert_eq!(value(&f, "dap_pubsub_topics", &[]), 1.0);
    assert_eq!(f["dap_proc_queue_depth"].len(), 2 * 5, "per thread and priority");
    assert!(f.contains_key("dap_pubsub_errors_total"));
    assert!(f.contains_key("dap_worker_errors_total"));
    d.shutdown(TIMEOUT);
}

/// Answers every message in upper case.
struct Shout;

impl dap_stream::ChannelHandler for Shout {
    fn packet_in(&mut self, ch: &mut dap_stream::Channel<'_>, msg: dap_stream::Message) {
        let _ = ch.write(msg.ty, msg.data.to_ascii_uppercase());
    }
}

#[test]
fn an_application_channel_is_counted_by_its_id() {
    let d = dap_server::Node::from_config(config(1))
        .channel(b'U', |_| Shout)
        .builtin_channels()
        .start()
        .expect("the node starts");
    let client = client_reactor();
    let c = open(&client, d.local_addr(), d.node_public_key(), b"UE").unwrap();
    for i in 0..3u8 {
        c.channel(b'U').write(7, vec![b'a' + i; 10]).unwrap();
        assert_eq!(c.next().data, vec![b'A' + i; 10]);
    }
    let f = parse(&http_get(d.local_addr(), "/metrics").1).unwrap();
    let u = [("channel", "U")];
    assert_eq!(value(&f, "dap_channel_sessions_total", &u), 1.0);
    assert_eq!(value(&f, "dap_channel_open", &u), 1.0);
    assert_eq!(
        value(&f, "dap_channel_messages_total", &[("channel", "U"), ("direction", "in")]),
        3.0
    );
    assert_eq!(
        value(&f, "dap_channel_bytes_total", &[("channel", "U"), ("direction", "out")]),
        30.0
    );
    // 'E' was opened and not used; 'P' is registered and not opened.
    assert_eq!(value(&f, "dap_channel_open", &[("channel", "E")]), 1.0);
    assert_eq!(value(&f, "dap_channel_messages_total", &[("channel", "E")]), 0.0);
    assert_eq!(value(&f, "dap_channel_sessions_total", &[("channel", "P")]), 0.0);
    let stats = d.stats();
    let (_, u) = stats.channels.iter().find(|(id, _)| *id == b'U').expect("'U' in stats");
    assert_eq!((u.messages_in, u.messages_out, u.bytes_in), (3, 3, 30));
    d.shutdown(TIMEOUT);
}

#[test]
fn idle_keys_are_swept_without_any_traffic() {
    let mut c = config(1);
    c.enc.key_idle_ttl_s = 1;
    let d = daemon(c);
    let client = client_reactor();
    let w = client.worker(0).unwrap();
    let base = format!("http://{}", d.local_addr());
    for _ in 0..3 {
        let node = Some(d.node_public_key());
        handshake_blocking(w, &base, &CipherSuite::ALL, None, node, &ClientConfig::default())
            .unwrap();
    }
    // Nothing uses the keys again, so only the sweep can remove them.
    let metrics = || {
        let (_, text) = http_get(d.local_addr(), "/metrics");
        parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    };
    wait_until("the idle keys to be swept", || value(&metrics(), "dap_enc_keys", &[]) == 0.0);
    let f = metrics();
    assert_eq!(value(&f, "dap_enc_keys_removed_total", &[("reason", "expired")]), 3.0);
    assert_eq!(value(&f, "dap_enc_keys_removed_total", &[("reason", "evicted")]), 0.0);
    d.shutdown(TIMEOUT);
}

#[test]
fn an_admin_listener_takes_metrics_off_the_data_port() {
    let mut c = config(1);
    c.admin.enabled = true;
    c.admin.addr = "127.0.0.1:0".parse().unwrap();
    let d = daemon(c);
    let admin = d.admin_addr().expect("the admin listener");
    assert_ne!(admin, d.local_addr());
    let (status, text) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    let f = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(value(&f, "dap_up", &[]), 1.0);
    assert_eq!(http_get(d.local_addr(), "/metrics").0, 404, "not on the data port");
    assert_eq!(http_get(d.local_addr(), "/health").0, 200);
    assert_eq!(http_get(admin, "/health").0, 200);
    d.shutdown(TIMEOUT);
}

#[test]
fn a_drain_notice_answers_503_while_the_listener_still_accepts() {
    let mut c = config(1);
    c.shutdown.drain_notice_ms = 3_000;
    let d = daemon(c);
    let addr = d.local_addr();
    assert_eq!(http_get(addr, "/health").0, 200);
    let stopping = std::thread::spawn(move || d.shutdown(TIMEOUT));
    // The probe sees the drain on a connection the listener still accepts.
    wait_until("/health says 503", || http_get(addr, "/health").0 == 503);
    stopping.join().unwrap();
    assert!(std::net::TcpStream::connect(addr).is_err(), "the listener closed after the notice");
}
