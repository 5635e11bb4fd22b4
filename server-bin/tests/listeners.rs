//! dapd's optional listeners: HTTPS (the same routes over TLS) and the DNS server (the
//! zone's records from `[dns]`).

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};

use dap_net::dns::{LookupKind, Resolver, ResolverConfig};
use dap_net::http::client::{ClientConfig, Request, fetch_blocking};
use dap_net::tls::{Trust, client_config};
use dap_server::config::DnsRecord;
use util::*;

#[test]
fn https_serves_health_and_dns_serves_the_configured_zone() {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "dapd-listeners-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();

    let mut cfg = config(1);
    cfg.tls.enabled = true;
    cfg.tls.addr = "127.0.0.1:0".parse().unwrap();
    cfg.tls.cert = dir.join("cert.pem").to_string_lossy().into_owned();
    cfg.tls.key = dir.join("key.pem").to_string_lossy().into_owned();
    cfg.dns.enabled = true;
    cfg.dns.addr = "127.0.0.1:0".parse().unwrap();
    let origin = cfg.dns.origin.clone();
    cfg.dns.records = vec![DnsRecord {
        name: format!("node.{origin}"),
        kind: "A".into(),
        value: "127.0.0.9".into(),
        ttl: 60,
    }];
    let d = daemon(cfg);
    let client = client_reactor();
    let w = &client.workers()[0];

    let tls_addr = d.tls_addr().expect("a TLS listener");
    let mut http = ClientConfig::default();
    http.tls = Some(client_config(Trust::Pinned(ck.cert.der().clone())).unwrap());
    let req = Request::get(&format!("https://localhost:{}/health", tls_addr.port()))
        .unwrap()
        .resolve_to(tls_addr.ip());
    let resp = fetch_blocking(w, req, &http).expect("https answers");
    assert_eq!(resp.status, 200);

    let dns_addr = d.dns_addr().expect("a DNS server");
    let resolver = Resolver::start(w, ResolverConfig::new(vec![dns_addr])).unwrap();
    let found = resolver.resolve(&format!("node.{origin}"), LookupKind::A).expect("the record");
    assert_eq!(found.addrs, vec![std::net::IpAddr::from([127, 0, 0, 9])]);
    assert!(resolver.resolve(&format!("missing.{origin}"), LookupKind::A).is_err());

    d.shutdown(std::time::Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reload serves a renewed certificate (same paths, new files) and a new client allow
/// list, without a restart.
#[test]
fn a_reload_serves_a_renewed_certificate_and_a_new_client_allow_list() {
    use dap_net::enc::ClientCert;
    use dap_net::enc::cipher::CipherSuite;
    use dap_net::enc::client::handshake_blocking;
    use dap_net::enc::keys::public_key_to_base64;
    let dir = std::env::temp_dir().join(format!("dapd-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let new_cert = || rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let write_cert = |ck: &rcgen::CertifiedKey<rcgen::KeyPair>| {
        std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    };
    let (a, b) = (new_cert(), new_cert());
    write_cert(&a);
    let (alice, bob) = (ClientCert::generate(), ClientCert::generate());
    let allow = dir.join("allow.txt");
    std::fs::write(&allow, format!("{}\n", public_key_to_base64(&alice.public_key()))).unwrap();

    let mut cfg = config(1);
    cfg.tls.enabled = true;
    cfg.tls.addr = "127.0.0.1:0".parse().unwrap();
    cfg.tls.cert = dir.join("cert.pem").to_string_lossy().into_owned();
    cfg.tls.key = dir.join("key.pem").to_string_lossy().into_owned();
    cfg.enc.client_auth = dap_server::config::ClientAuthSetting::Required;
    cfg.enc.allow_list = allow.to_string_lossy().into_owned();
    let mut d = daemon(cfg.clone());
    let client = client_reactor();
    let w = &client.workers()[0];
    let tls_addr = d.tls_addr().unwrap();
    let health = |ck: &rcgen::CertifiedKey<rcgen::KeyPair>| {
        let mut http = ClientConfig::default();
        http.tls = Some(client_config(Trust::Pinned(ck.cert.der().clone())).unwrap());
        let url = format!("https://localhost:{}/health", tls_addr.port());
        let req = Request::get(&url).unwrap().resolve_to(tls_addr.ip());
        fetch_blocking(w, req, &http).is_ok_and(|r| r.status == 200)
    };
    let base = format!("http://{}", d.local_addr());
    let node = Some(d.node_public_key());
    let handshake = |who: &ClientCert| {
        handshake_blocking(w, &base, &CipherSuite::ALL, Some(who), node, &ClientConfig::default())
            .is_ok()
    };
    assert!(health(&a) && !health(&b));
    assert!(handshake(&alice) && !handshake(&bob));

    // Renewed in place, and bob instead of alice.
    write_cert(&b);
    std::fs::write(&allow, format!("{}\n", public_key_to_base64(&bob.public_key()))).unwrap();
    let report = d.reload(&cfg).expect("the reload applies");
    assert!(report.applied.contains(&"tls.cert/key"), "{report:?}");
    assert!(report.applied.contains(&"enc.client_auth/allow_list"), "{report:?}");
    assert!(report.need_restart.is_empty(), "{report:?}");
    assert!(health(&b) && !health(&a), "the renewed certificate serves");
    assert!(handshake(&bob) && !handshake(&alice), "the new allow list holds");

    // A certificate that does not match its key: refused, nothing changes.
    std::fs::write(dir.join("key.pem"), a.signing_key.serialize_pem()).unwrap();
    let err = d.reload(&cfg).expect_err("a mismatched pair");
    assert!(err.to_string().contains("tls."), "{err}");
    assert!(health(&b));
    d.shutdown(std::time::Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}
