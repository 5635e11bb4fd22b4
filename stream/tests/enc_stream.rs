//! The whole path a client takes: enc_init, stream_ctl over enc_http, the stream; and what
//! happens with a wrong or expired key or a missing client certificate.

mod util;

use std::time::{Duration, Instant};

use dap_net::enc::allow_list::AllowList;
use dap_net::enc::cipher::CipherSuite;
use dap_net::enc::client::handshake_blocking;
use dap_net::enc::{ClientAuth, ClientCert, EncConfig, NodeKey};
use dap_net::http::client::ClientConfig;
use dap_stream::{Channel, ChannelHandler, ChannelProcs, Message, StreamConfig};
use util::*;

/// Answers every message with the session's client key (or 32 zero bytes).
struct WhoAmI;

impl ChannelHandler for WhoAmI {
    fn packet_in(&mut self, ch: &mut Channel<'_>, msg: Message) {
        let who = ch.session().client.unwrap_or([0; 32]);
        let _ = ch.write(msg.ty, who.to_vec());
    }
}

fn procs() -> ChannelProcs {
    let mut p = ChannelProcs::new();
    dap_stream::echo::register(&mut p);
    p.ch_proc_add(b'I', |_| Box::new(WhoAmI)).unwrap();
    p
}

fn roundtrip(c: &TestClient, id: u8, data: &[u8]) -> Vec<u8> {
    c.channel(id).write(1, data.to_vec()).unwrap();
    let (got, m) = c.messages.recv_timeout(TIMEOUT).expect("answer in time");
    assert_eq!(got, id);
    m.data.to_vec()
}

#[test]
fn a_client_opens_a_session_through_enc_init_and_stream_ctl() {
    let srv = server_with_enc(procs(), StreamConfig::default(), EncConfig::default());
    let client = client_reactor();
    for suite in [None, Some(CipherSuite::ChaCha20Poly1305), Some(CipherSuite::Aes256Gcm)] {
        let c = srv.open(&client, b"EI", suite, None).expect("open");
        assert_eq!(roundtrip(&c, b'E', b"over enc"), b"over enc");
        assert_eq!(roundtrip(&c, b'I', b"?"), [0; 32], "no certificate, no identity");
    }
    let s = srv.stream.stats();
    assert_eq!((s.sessions_created, s.sessions_attached), (3, 3));
}

#[test]
fn stream_ctl_refuses_unknown_channels() {
    let srv = server_with_enc(procs(), StreamConfig::default(), EncConfig::default());
    let client = client_reactor();
    let err = srv.open(&client, b"EZ", None, None).err().expect("refused");
    assert!(err.contains("404"), "{err}");
    assert_eq!(srv.stream.stats().ctl_refused, 1);
}

#[test]
fn a_wrong_key_id_gets_401() {
    let srv = server_with_enc(procs(), StreamConfig::default(), EncConfig::default());
    let other = server_with_enc(procs(), StreamConfig::default(), EncConfig::default());
    let client = client_reactor();
    let w = client.worker(0).unwrap();
    // A key made with another server: this one has never heard of its id.
    let enc = handshake_blocking(
        w,
        &other.base_url(),
        &CipherSuite::ALL,
        None,
        None,
        &ClientConfig::default(),
    )
    .unwrap();
    let err = srv.ctl(&client, &enc, b"E", None).expect_err("refused");
    assert!(err.contains("401"), "{err}");
    assert_eq!(srv.stream.stats().sessions_created, 0);
    // Other clients are served meanwhile.
    let c = srv.open(&client, b"E", None, None).unwrap();
    assert_eq!(roundtrip(&c, b'E', b"fine"), b"fine");
}

#[test]
fn an_expired_key_gets_401() {
    let mut enc_config = EncConfig::default();
    enc_config.store.idle_ttl = Duration::from_millis(300);
    let srv = server_with_enc(procs(), StreamConfig::default(), enc_config);
    let client = client_reactor();
    let w = client.worker(0).unwrap();
    let enc = handshake_blocking(
        w,
        &srv.base_url(),
        &CipherSuite::ALL,
        None,
        None,
        &ClientConfig::default(),
    )
    .unwrap();
    let made = Instant::now();
    wait_until("the key's idle TTL passed", || made.elapsed() > Duration::from_millis(600));
    let err = srv.ctl(&client, &enc, b"E", None).expect_err("refused");
    assert!(err.contains("401"), "{err}");
    // A fresh key works.
    let c = srv.open(&client, b"E", None, None).unwrap();
    assert_eq!(roundtrip(&c, b'E', b"fresh"), b"fresh");
}

#[test]
fn a_required_certificate_is_enforced_and_its_identity_reaches_channels() {
    let allowed = ClientCert::generate();
    let stranger = ClientCert::generate();
    let mut list = AllowList::new();
    list.insert(allowed.public_key());
    let mut enc_config = EncConfig::default();
    enc_config.client_auth = ClientAuth::Required(list);
    let srv = server_with_enc(procs(), StreamConfig::default(), enc_config);
    let client = client_reactor();
    let none = srv.open(&client, b"E", None, None).err().expect("no certificate refused");
    assert!(none.contains("403"), "{none}");
    let wrong = srv.open(&client, b"E", None, Some(&stranger)).err().expect("stranger refused");
    assert!(wrong.contains("403"), "{wrong}");
    let c = srv.open(&client, b"EI", None, Some(&allowed)).expect("allowed client");
    assert_eq!(roundtrip(&c, b'I', b"?"), allowed.public_key());
    assert_eq!(srv.stream.stats().sessions_created, 1);
}

#[test]
fn a_pinned_node_key_that_differs_fails_the_handshake() {
    let srv = server_with_enc(procs(), StreamConfig::default(), EncConfig::default());
    let client = client_reactor();
    let w = client.worker(0).unwrap();
    let impostor = NodeKey::generate().public_key();
    let r = handshake_blocking(
        w,
        &srv.base_url(),
        &CipherSuite::ALL,
        None,
        Some(impostor),
        &ClientConfig::default(),
    );
    assert!(r.is_err());
}
