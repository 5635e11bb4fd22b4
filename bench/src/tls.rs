//! The rustls peer of `stream` and `setup`: TLS 1.3 only, exactly one cipher suite, X25519
//! only, no resumption of any kind, and a self-signed certificate made in memory by rcgen.
//!
//! Both ends use rustls's ring provider, the same crypto library dap's enc and stream layers
//! use, so the comparison is between protocols and their implementations, not between
//! AES or ChaCha20 code.

use std::io;
use std::sync::Arc;

use dap_net::enc::CipherSuite;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The two ciphers every encrypted comparison is run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// dap: ChaCha20-Poly1305; rustls: `TLS13_CHACHA20_POLY1305_SHA256`.
    ChaCha,
    /// dap: AES-256-GCM; rustls: `TLS13_AES_256_GCM_SHA384`.
    Aes,
}

impl Cipher {
    /// Both, in the order the tables use.
    pub const ALL: [Cipher; 2] = [Cipher::ChaCha, Cipher::Aes];

    /// Name in tables and `RESULT` keys.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::ChaCha => "chacha",
            Cipher::Aes => "aes",
        }
    }

    /// dap's suite.
    pub fn dap(self) -> CipherSuite {
        match self {
            Cipher::ChaCha => CipherSuite::ChaCha20Poly1305,
            Cipher::Aes => CipherSuite::Aes256Gcm,
        }
    }

    /// rustls's TLS 1.3 suite with the same AEAD.
    pub fn rustls(self) -> rustls::SupportedCipherSuite {
        match self {
            Cipher::ChaCha => rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            Cipher::Aes => rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        }
    }
}

/// The certificate's key type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CertKind {
    /// Ed25519: the signature algorithm of dap's node key (the default for `setup`).
    Ed25519,
    /// ECDSA P-256 with SHA-256 (rcgen's default; what the `https` comparison serves).
    P256,
}

/// A self-signed certificate for `127.0.0.1` and `localhost`, in memory.
pub struct Cert {
    /// The certificate (DER).
    pub der: CertificateDer<'static>,
    /// Its private key (PKCS#8 DER).
    key: Vec<u8>,
}

impl Cert {
    /// Generates one.
    pub fn generate(kind: CertKind) -> io::Result<Cert> {
        let alg = match kind {
            CertKind::Ed25519 => &rcgen::PKCS_ED25519,
            CertKind::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        };
        let err = |e: rcgen::Error| io::Error::other(format!("rcgen: {e}"));
        let key = rcgen::KeyPair::generate_for(alg).map_err(err)?;
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .map_err(err)?;
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Cert { der: cert.der().clone(), key: key.serialize_der() })
    }
}

/// rustls's ring provider cut down to one TLS 1.3 suite and X25519 (dap's key exchange).
fn provider(cipher: Cipher) -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = vec![cipher.rustls()];
    p.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    Arc::new(p)
}

/// A TLS 1.3 server config for `cipher` serving `cert`, with no session tickets and no
/// session cache: every connection is a full handshake.
pub fn server_config(cipher: Cipher, cert: &Cert) -> io::Result<Arc<rustls::ServerConfig>> {
    let err = |e: rustls::Error| io::Error::other(format!("rustls: {e}"));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key.clone()));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider(cipher))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], key)
        .map_err(err)?;
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(cfg))
}

/// A TLS 1.3 client config for `cipher` that trusts exactly `cert` (verifying the chain and
/// the handshake signature as any client does) and never resumes.
pub fn client_config(cipher: Cipher, cert: &Cert) -> io::Result<Arc<rustls::ClientConfig>> {
    let err = |e: rustls::Error| io::Error::other(format!("rustls: {e}"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).map_err(err)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider(cipher))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(err)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// The server name the client asks for (the certificate's IP address).
pub fn server_name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
}
