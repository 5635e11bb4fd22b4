//! Trusting exactly one server certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error, SignatureScheme};

/// What the server's certificate is checked against.
#[derive(Debug)]
pub(super) enum Check {
    /// Exactly this certificate.
    Pinned(CertificateDer<'static>),
    /// A chain to one of these roots (with the name checked), or, for a self-signed
    /// certificate given as its own "root", that very certificate.
    Roots(Arc<rustls::client::WebPkiServerVerifier>, Vec<CertificateDer<'static>>),
    /// Anything (`--insecure`): encrypted, not authenticated.
    Any,
}

/// Accepts the server certificate as [`Check`] says; handshake signatures are still
/// checked against its key, so holding a certificate without the key gets an attacker
/// nowhere.
#[derive(Debug)]
pub(super) struct PinnedVerifier {
    check: Check,
    provider: Arc<CryptoProvider>,
}

impl PinnedVerifier {
    pub(super) fn new(cert: CertificateDer<'static>, provider: Arc<CryptoProvider>) -> Self {
        PinnedVerifier { check: Check::Pinned(cert), provider }
    }

    pub(super) fn with(check: Check, provider: Arc<CryptoProvider>) -> Self {
        PinnedVerifier { check, provider }
    }
}

/// Equality without an early exit, so timing does not tell how much of a guess matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let unknown = || Err(Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer));
        match &self.check {
            Check::Pinned(cert) if same(end_entity.as_ref(), cert.as_ref()) => {
                Ok(ServerCertVerified::assertion())
            }
            Check::Pinned(_) => unknown(),
            Check::Roots(webpki, given) => {
                match webpki.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                ) {
                    Ok(v) => Ok(v),
                    Err(_) if given.iter().any(|c| same(end_entity.as_ref(), c.as_ref())) => {
                        Ok(ServerCertVerified::assertion())
                    }
                    Err(e) => Err(e),
                }
            }
            Check::Any => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
