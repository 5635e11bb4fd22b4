//! The self-signed certificate both HTTPS contenders serve, generated at bench time.
//!
//! One certificate and key for `127.0.0.1` and `localhost`, written as PEM to
//! `bench/target/bench-certs/`; both servers load the same files. wrk does not verify
//! certificates; the harness's own probe trusts exactly this certificate.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Where the PEM files are and the certificate itself (DER), for the probe's trust store.
#[derive(Debug, Clone)]
pub struct Certs {
    /// Certificate, PEM.
    pub cert: PathBuf,
    /// Private key (PKCS#8), PEM.
    pub key: PathBuf,
    /// Certificate, DER.
    pub cert_der: Vec<u8>,
}

/// Generates a fresh self-signed certificate and key and writes them to
/// `bench/target/bench-certs/{cert,key}.pem`.
pub fn generate() -> io::Result<Certs> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-certs");
    fs::create_dir_all(&dir)?;
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .map_err(|e| io::Error::other(format!("rcgen: {e}")))?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    fs::write(&cert, ck.cert.pem())?;
    fs::write(&key, ck.signing_key.serialize_pem())?;
    Ok(Certs { cert, key, cert_der: ck.cert.der().to_vec() })
}
