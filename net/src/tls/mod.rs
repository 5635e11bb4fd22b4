//! TLS with rustls (ring provider), as a reactor [`Layer`]: once installed on an esocket,
//! its handler reads and writes plaintext and the worker encrypts and decrypts in the read
//! and write path. Nothing else changes for the handler.
//!
//! - Servers: [`server_config`] from PEM files, then [`accept`] in the handler's `on_new`
//!   (the HTTP server does this itself when given a config, see
//!   [`HttpServer::tls`](crate::http::server::HttpServer::tls)).
//! - Clients: [`client_config`] with the system's roots or one pinned certificate, then
//!   [`connect`] in `on_new` of an outgoing esocket.

mod pinned;

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use dap_reactor::{Esocket, Layer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, Connection, ServerConnection};

/// rustls's client configuration, as [`client_config`] makes it.
pub use rustls::ClientConfig;
/// rustls's server configuration, as [`server_config`] makes it and
/// `HttpServer::tls` takes it.
pub use rustls::ServerConfig;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or held no usable item.
    #[error("{path}: {why}")]
    Pem {
        /// The file.
        path: String,
        /// What was wrong.
        why: String,
    },
    /// rustls refused the configuration (a key that does not match the certificate, ...).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The system's trust store could not be loaded.
    #[error("no usable system root certificates: {0}")]
    NoRoots(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file (leaf first, then its chain).
///
/// # Errors
/// [`TlsError::Pem`] when the file cannot be read or holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |why: String| TlsError::Pem { path: path.display().to_string(), why };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no certificate".into()));
    }
    Ok(certs)
}

/// A server configuration from a PEM certificate chain and a PEM private key (PKCS#8,
/// PKCS#1 or SEC1), TLS 1.2 and 1.3, ALPN `http/1.1`.
///
/// # Errors
/// Unreadable files, or a key rustls refuses.
pub fn server_config(cert_pem: &Path, key_pem: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_reloadable(cert_pem, key_pem).map(|(config, _)| config)
}

/// [`server_config`], with a handle that replaces the certificate and key while the
/// configuration serves: new handshakes use the new pair, connections already up keep
/// theirs (a reload on SIGHUP).
///
/// # Errors
/// As [`server_config`].
pub fn server_config_reloadable(
    cert_pem: &Path,
    key_pem: &Path,
) -> Result<(Arc<ServerConfig>, CertReloader), TlsError> {
    let reloader = CertReloader(Arc::new(CertSlot(parking_lot::RwLock::new(certified_key(
        cert_pem, key_pem,
    )?))));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(reloader.0.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), reloader))
}

/// Reads a certificate chain and its key into what rustls serves; checks that they match.
fn certified_key(
    cert_pem: &Path,
    key_pem: &Path,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let certs = load_certs(cert_pem)?;
    let key = PrivateKeyDer::from_pem_file(key_pem)
        .map_err(|e| TlsError::Pem { path: key_pem.display().to_string(), why: e.to_string() })?;
    let key = rustls::sign::CertifiedKey::from_der(certs, key, &provider())?;
    Ok(Arc::new(key))
}

/// The certificate a reloadable server configuration serves.
#[derive(Debug)]
struct CertSlot(parking_lot::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl rustls::server::ResolvesServerCert for CertSlot {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().clone())
    }
}

/// Replaces the certificate of a configuration made by [`server_config_reloadable`].
#[derive(Clone, Debug)]
pub struct CertReloader(Arc<CertSlot>);

impl CertReloader {
    /// Reads the pair again and serves it from the next handshake on.
    ///
    /// # Errors
    /// As [`server_config`]; the pair in service is then kept.
    pub fn reload(&self, cert_pem: &Path, key_pem: &Path) -> Result<(), TlsError> {
        let key = certified_key(cert_pem, key_pem)?;
        *self.0.0.write() = key;
        Ok(())
    }
}

/// Which servers a client trusts.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Certificates that chain to the operating system's roots.
    SystemRoots,
    /// Exactly this certificate (compared byte for byte, in constant time), whatever its
    /// issuer or names: for nodes that publish their own self-signed certificate.
    Pinned(CertificateDer<'static>),
    /// Certificates that chain to these roots (a private CA's bundle; names checked), or
    /// that are one of them (a self-signed certificate given as its own root).
    Roots(Vec<CertificateDer<'static>>),
    /// Any certificate: the connection is encrypted but the server is not authenticated.
    /// For tests and first contact only (`dap-cli --insecure`).
    AnyCertificate,
}

/// A client configuration, TLS 1.2 and 1.3, ALPN `http/1.1`.
///
/// # Errors
/// [`TlsError::NoRoots`] when the system store holds no usable certificate.
pub fn client_config(trust: Trust) -> Result<Arc<ClientConfig>, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let mut config = match trust {
        Trust::SystemRoots => {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A malformed system certificate is skipped, not fatal.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                let why = found.errors.first().map_or("none found".into(), |e| e.to_string());
                return Err(TlsError::NoRoots(why));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pinned(cert) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(pinned::PinnedVerifier::new(
                cert,
                provider(),
            )))
            .with_no_client_auth(),
        Trust::Roots(certs) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in &certs {
                // A self-signed leaf may not make a valid anchor; it still pins below.
                let _ = roots.add(cert.clone());
            }
            let webpki = if roots.is_empty() {
                None
            } else {
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .ok()
            };
            let check = match webpki {
                Some(w) => pinned::Check::Roots(w, certs),
                None => match certs.into_iter().next() {
                    Some(cert) => pinned::Check::Pinned(cert),
                    None => return Err(TlsError::NoRoots("no certificate given".into())),
                },
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(pinned::PinnedVerifier::with(
                    check,
                    provider(),
                )))
                .with_no_client_auth()
        }
        Trust::AnyCertificate => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(pinned::PinnedVerifier::with(
                pinned::Check::Any,
                provider(),
            )))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Installs a server-side TLS layer on `es` (call in `on_new`).
///
/// # Errors
/// As [`Esocket::set_layer`], or rustls refusing the configuration.
pub fn accept(es: &mut Esocket<'_>, config: &Arc<ServerConfig>) -> io::Result<()> {
    let conn = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
    es.set_layer(Box::new(TlsLayer::new(conn.into())))
}

/// Installs a client-side TLS layer on an outgoing `es` (call in `on_new`), for the server
/// named `server_name` (a DNS name or an IP address).
///
/// # Errors
/// An invalid name, or as [`accept`].
pub fn connect(
    es: &mut Esocket<'_>,
    config: &Arc<ClientConfig>,
    server_name: &str,
) -> io::Result<()> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    es.set_layer(Box::new(TlsLayer::new(conn.into())))
}

/// A rustls connection as a reactor layer.
pub struct TlsLayer {
    conn: Connection,
}

impl std::fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLayer").field("handshaking", &self.conn.is_handshaking()).finish()
    }
}

impl TlsLayer {
    /// Wraps a client or server connection.
    pub fn new(conn: Connection) -> Self {
        TlsLayer { conn }
    }
}

impl Layer for TlsLayer {
    fn read_wire(&mut self, wire: &mut dyn Read) -> io::Result<usize> {
        self.conn.read_tls(wire)
    }

    fn process(&mut self) -> io::Result<()> {
        match self.conn.process_new_packets() {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "TLS connection failed");
                Err(io::Error::new(io::ErrorKind::InvalidData, e))
            }
        }
    }

    fn read_plain(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.conn.reader().read(buf)
    }

    fn write_plain(&mut self, data: &[u8]) -> io::Result<usize> {
        self.conn.writer().write(data)
    }

    fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    fn write_wire(&mut self, wire: &mut dyn Write) -> io::Result<usize> {
        self.conn.write_tls(wire)
    }

    fn close(&mut self) {
        self.conn.send_close_notify();
    }
}
