//! A fresh self-signed certificate for `localhost` and `127.0.0.1`, written as PEM files to
//! a temporary directory that is removed on drop (shared by the TLS and HTTPS-client tests).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::pki_types::CertificateDer;

pub struct Cert {
    dir: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Cert {
    #[track_caller]
    pub fn new() -> Cert {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("certificate");
        let dir = std::env::temp_dir().join(format!(
            "dap-test-cert-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("cert.pem"), ck.cert.pem()).expect("write cert");
        std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).expect("write key");
        Cert { dir, der: ck.cert.der().clone() }
    }

    /// A server configuration from the PEM files, as an application would load it.
    #[track_caller]
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        dap_net::tls::server_config(&self.dir.join("cert.pem"), &self.dir.join("key.pem"))
            .expect("server config")
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
