//! The `/enc_init` handshake, sans-IO: [`EncInit`] on the client, [`accept`] on the server,
//! and the key schedule both share.
//!
//! ```text
//! client                                          server (node key N)
//! e_c = X25519 ephemeral
//! request = v1 | suites | e_c.pub | KEM(none) | ext() | [C.pub | Sig_C(label | request…)]
//!                         ── POST /enc_init ──▶
//!                                                 choose suite, check client cert
//!                                                 e_s = X25519 ephemeral, key id = CSPRNG
//!                                                 TH = SHA-256(label | len | request | response…)
//!                         ◀── 200 ──
//! response = v1 | suite | e_s.pub | KEM(none) | ext() | key id | TTL | N.pub | Sig_N(TH)
//! verify Sig_N (and a pinned N)
//! both: shared = X25519(e, e_peer) ≠ 0; prk = HKDF-Extract(TH, shared);
//!       c2s = HKDF-Expand(prk, "dap v1 enc c2s"), s2c = HKDF-Expand(prk, "dap v1 enc s2c")
//! ```
//!
//! The node signature covers the whole request and every response field, so neither a
//! suite downgrade nor a swapped ephemeral key goes unnoticed by a client that knows the
//! node key. The client signature covers the client's ephemeral key, so a replayed request
//! is useless to anyone without the ephemeral private key. Exact bytes, limits and test
//! vectors: `docs/PROTOCOL.md` §2–§3.

use std::fmt;
use std::time::Duration;

// AWS-LC's X25519 (s2n-bignum's verified x86-64 code): half ring's cost per handshake on
// this machine (docs/BENCHMARKS.md, "Set-ups"). Its `PrivateKey` (not the ephemeral type)
// so that the test vectors can give fixed keys; each one is still used for one handshake
// only and dropped (AWS-LC wipes it when freed).
use aws_lc_rs::agreement::{self, PrivateKey as EphemeralPrivateKey, UnparsedPublicKey, X25519};

use super::cipher::{self, AeadKey, CipherSuite, KEY_LEN};
use super::config::ClientAuth;
use super::key_id::KeyId;
use super::keys::{self, ClientCert, NodeKey, SIGNATURE_LEN};
use super::keystore::KeyMaterial;
use super::message::{
    ClientAuthField, DecodeError, InitRequest, InitResponse, KemBlock, MAX_SUITES, X25519_LEN,
};
use super::refusal::Refusal;
use super::session::EncSession;

/// Prefix of the transcript hash input.
pub const TRANSCRIPT_LABEL: &[u8] = b"dap v1 enc_init transcript";
/// Prefix of the message a client certificate signs.
pub const CLIENT_SIG_LABEL: &[u8] = b"dap v1 enc_init client signature";
/// HKDF-Expand info of the client→server key.
pub const C2S_LABEL: &[u8] = b"dap v1 enc c2s";
/// HKDF-Expand info of the server→client key.
pub const S2C_LABEL: &[u8] = b"dap v1 enc s2c";

/// The two directional keys of a handshake.
#[derive(Clone, PartialEq, Eq)]
pub struct DerivedKeys {
    /// Client → server.
    pub c2s: [u8; KEY_LEN],
    /// Server → client.
    pub s2c: [u8; KEY_LEN],
}

impl fmt::Debug for DerivedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DerivedKeys(..)")
    }
}

/// The key schedule: `prk = HKDF-Extract(salt = transcript, ikm = shared)`, then one
/// HKDF-Expand per direction.
pub fn derive_keys(shared: &[u8; 32], transcript: &[u8; 32]) -> DerivedKeys {
    let prk = cipher::hkdf_extract(transcript, shared);
    DerivedKeys {
        c2s: cipher::hkdf_expand(&prk, C2S_LABEL),
        s2c: cipher::hkdf_expand(&prk, S2C_LABEL),
    }
}

/// The transcript hash `SHA-256(TRANSCRIPT_LABEL || u32be(len(request)) || request ||
/// response_unsigned)`, where `response_unsigned` is the response without its signature.
/// The node key signs it; it salts the key schedule.
pub fn transcript_hash(request: &[u8], response_unsigned: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(TRANSCRIPT_LABEL);
    // Requests are at most a few KiB (the decoder's limit), so the length fits.
    ctx.update(&(request.len() as u32).to_be_bytes());
    ctx.update(request);
    ctx.update(response_unsigned);
    ctx.finish().as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// X25519 with the peer's public key; `None` for an all-zero result (a small-order peer
/// key), which AWS-LC also refuses. The private key is consumed: one handshake each.
fn agree(private: EphemeralPrivateKey, peer: &[u8; X25519_LEN]) -> Option<[u8; 32]> {
    let shared = agreement::agree(&private, UnparsedPublicKey::new(&X25519, peer), (), |s| {
        <[u8; 32]>::try_from(s).map_err(|_| ())
    })
    .ok()?;
    drop(private);
    // Checked here too, so that the rule does not rest on one library's behaviour.
    (!cipher::ct_eq(&shared, &[0u8; 32])).then_some(shared)
}

fn public_of(private: &EphemeralPrivateKey) -> [u8; X25519_LEN] {
    let public = private.compute_public_key().expect("X25519 public key from a valid private key");
    public.as_ref().try_into().expect("X25519 public keys are 32 bytes")
}

fn new_ephemeral() -> EphemeralPrivateKey {
    // AWS-LC draws the scalar from its CSPRNG (seeded by the OS).
    EphemeralPrivateKey::generate(&X25519).expect("the random source failed")
}

/// Why a client could not finish a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncInitError {
    /// The response body does not decode.
    #[error("malformed enc_init response: {0}")]
    Decode(#[from] DecodeError),
    /// The server chose a suite the client did not offer.
    #[error("the server chose suite {0}, which was not offered")]
    SuiteNotOffered(u8),
    /// The response carries KEM data or extensions, which version 1 does not have.
    #[error("the response uses a KEM or extensions")]
    Unsupported,
    /// The node key is not the pinned one.
    #[error("the node key is not the pinned one")]
    NodeKeyMismatch,
    /// The node signature does not verify.
    #[error("the node signature does not verify")]
    BadSignature,
    /// The server's ephemeral key gives an all-zero shared secret.
    #[error("the server's ephemeral key is invalid")]
    BadKey,
}

/// A client's handshake in progress: [`start`](Self::start) makes the request body,
/// [`finish`](Self::finish) checks the response and yields the [`EncSession`].
pub struct EncInit {
    ephemeral: EphemeralPrivateKey,
    request: Vec<u8>,
    offered: Vec<CipherSuite>,
}

impl fmt::Debug for EncInit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncInit").field("offered", &self.offered).finish_non_exhaustive()
    }
}

impl EncInit {
    /// Starts a handshake offering `suites` (in order of preference; duplicates dropped;
    /// empty offers [`CipherSuite::ALL`]), with a client certificate if `cert` is given.
    /// Returns the state to keep and the body to `POST` to `/enc_init`.
    pub fn start(suites: &[CipherSuite], cert: Option<&ClientCert>) -> (EncInit, Vec<u8>) {
        Self::start_with(new_ephemeral(), suites, cert)
    }

    /// [`start`](Self::start) with a given ephemeral key (test vectors).
    pub(crate) fn start_with(
        ephemeral: EphemeralPrivateKey,
        suites: &[CipherSuite],
        cert: Option<&ClientCert>,
    ) -> (EncInit, Vec<u8>) {
        let mut offered: Vec<CipherSuite> = Vec::with_capacity(CipherSuite::ALL.len());
        for &s in if suites.is_empty() { &CipherSuite::ALL[..] } else { suites } {
            if !offered.contains(&s) {
                offered.push(s);
            }
        }
        debug_assert!(offered.len() <= MAX_SUITES);
        let mut req = InitRequest {
            suites: offered.iter().map(|s| s.code()).collect(),
            ephemeral: public_of(&ephemeral),
            kem: KemBlock::default(),
            extensions: Vec::new(),
            auth: cert.map(|c| ClientAuthField {
                public_key: c.public_key(),
                signature: [0; SIGNATURE_LEN],
            }),
        };
        let mut request = req.encode();
        if let (Some(cert), Some(auth)) = (cert, req.auth.as_mut()) {
            let signed_len = request.len() - SIGNATURE_LEN;
            let mut msg = CLIENT_SIG_LABEL.to_vec();
            msg.extend_from_slice(&request[..signed_len]);
            auth.signature = cert.sign(&msg);
            request[signed_len..].copy_from_slice(&auth.signature);
        }
        (EncInit { ephemeral, request: request.clone(), offered }, request)
    }

    /// Checks the server's `200` body and derives the session. With `pinned_node_key`, the
    /// node key must be exactly that one (compared in constant time); without, any node key
    /// whose signature verifies is taken (trust on first use: see
    /// [`EncSession::node_key`]).
    ///
    /// # Errors
    /// [`EncInitError`]; the handshake must then be started again.
    pub fn finish(
        self,
        response: &[u8],
        pinned_node_key: Option<[u8; 32]>,
    ) -> Result<EncSession, EncInitError> {
        let resp = InitResponse::decode(response)?;
        let suite = CipherSuite::from_code(resp.suite)
            .filter(|s| self.offered.contains(s))
            .ok_or(EncInitError::SuiteNotOffered(resp.suite))?;
        if !resp.kem.is_none() || !resp.extensions.is_empty() {
            return Err(EncInitError::Unsupported);
        }
        if let Some(pinned) = pinned_node_key
            && !cipher::ct_eq(&pinned, &resp.node_key)
        {
            return Err(EncInitError::NodeKeyMismatch);
        }
        let th = transcript_hash(&self.request, &response[..response.len() - SIGNATURE_LEN]);
        if !keys::verify(&resp.node_key, &th, &resp.signature) {
            return Err(EncInitError::BadSignature);
        }
        let shared = agree(self.ephemeral, &resp.ephemeral).ok_or(EncInitError::BadKey)?;
        let keys = derive_keys(&shared, &th);
        Ok(EncSession::new(
            resp.key_id,
            suite,
            &keys.c2s,
            &keys.s2c,
            resp.node_key,
            Duration::from_secs(u64::from(resp.key_ttl_secs)),
        ))
    }
}

/// What the server's side of a handshake needs.
#[derive(Clone, Copy, Debug)]
pub struct AcceptParams<'a> {
    /// The node key that signs the response.
    pub node: &'a NodeKey,
    /// Allowed suites, in the server's order of preference.
    pub suites: &'a [CipherSuite],
    /// The client-certificate policy.
    pub client_auth: &'a ClientAuth,
    /// The idle TTL to announce, in seconds.
    pub key_ttl_secs: u32,
}

/// A handshake the server accepted: the body to answer with, and the key to store.
#[derive(Debug)]
pub struct Accepted {
    /// The `200` body.
    pub response: Vec<u8>,
    /// The new key's id.
    pub key_id: KeyId,
    /// The new key.
    pub material: KeyMaterial,
}

/// Why the server refused a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// The body does not decode (an unknown version included).
    #[error("malformed enc_init request: {0}")]
    Decode(#[from] DecodeError),
    /// The request asks for a KEM (none is supported in version 1).
    #[error("unsupported KEM {0}")]
    UnsupportedKem(u16),
    /// The request carries extensions (none is supported in version 1).
    #[error("unsupported extensions")]
    UnsupportedExtension,
    /// No offered suite is allowed.
    #[error("no common cipher suite")]
    NoCommonSuite,
    /// A client certificate is required and none was sent.
    #[error("client certificate required")]
    ClientAuthRequired,
    /// The client's key is not on the allow list.
    #[error("client not on the allow list")]
    ClientNotAllowed,
    /// The client certificate's signature does not verify.
    #[error("bad client signature")]
    BadClientSignature,
    /// The client's ephemeral key gives an all-zero shared secret.
    #[error("invalid client ephemeral key")]
    BadKey,
}

impl AcceptError {
    /// The refusal (status and `Enc-Error` reason) to answer with.
    pub fn refusal(self) -> Refusal {
        match self {
            AcceptError::Decode(DecodeError::UnsupportedVersion(_)) => Refusal::UnsupportedVersion,
            AcceptError::Decode(_) => Refusal::BadInit,
            AcceptError::UnsupportedKem(_) => Refusal::UnsupportedKem,
            AcceptError::UnsupportedExtension => Refusal::UnsupportedExtension,
            AcceptError::NoCommonSuite => Refusal::NoCommonSuite,
            AcceptError::ClientAuthRequired => Refusal::AuthRequired,
            AcceptError::ClientNotAllowed => Refusal::NotAllowed,
            AcceptError::BadClientSignature => Refusal::BadSignature,
            AcceptError::BadKey => Refusal::BadKey,
        }
    }
}

/// The server's side: checks a `/enc_init` body and, if it is acceptable, makes a new key
/// (ephemeral X25519 key and key id from the CSPRNG) and the signed response.
///
/// # Errors
/// [`AcceptError`]; [`AcceptError::refusal`] says how to answer.
pub fn accept(request: &[u8], params: &AcceptParams<'_>) -> Result<Accepted, AcceptError> {
    accept_with(request, params, new_ephemeral, KeyId::random)
}

/// [`accept`] with given randomness (test vectors). The closures run only once the request
/// has passed every check, so refused requests cost no randomness.
pub(crate) fn accept_with(
    request: &[u8],
    params: &AcceptParams<'_>,
    ephemeral: impl FnOnce() -> EphemeralPrivateKey,
    key_id: impl FnOnce() -> KeyId,
) -> Result<Accepted, AcceptError> {
    let req = InitRequest::decode(request)?;
    if !req.kem.is_none() {
        return Err(AcceptError::UnsupportedKem(req.kem.id));
    }
    if !req.extensions.is_empty() {
        return Err(AcceptError::UnsupportedExtension);
    }
    let suite = params
        .suites
        .iter()
        .copied()
        .find(|s| req.suites.contains(&s.code()))
        .ok_or(AcceptError::NoCommonSuite)?;
    let client = match (params.client_auth, &req.auth) {
        (ClientAuth::None, _) => None,
        (ClientAuth::Optional, None) => None,
        (ClientAuth::Required(_), None) => return Err(AcceptError::ClientAuthRequired),
        (policy, Some(auth)) => {
            // The allow list first: an unlisted key costs no signature check.
            if !policy.allows(&auth.public_key) {
                return Err(AcceptError::ClientNotAllowed);
            }
            let mut msg = CLIENT_SIG_LABEL.to_vec();
            msg.extend_from_slice(&request[..request.len() - SIGNATURE_LEN]);
            if !keys::verify(&auth.public_key, &msg, &auth.signature) {
                return Err(AcceptError::BadClientSignature);
            }
            Some(auth.public_key)
        }
    };
    let ephemeral = ephemeral();
    let ephemeral_public = public_of(&ephemeral);
    let shared = agree(ephemeral, &req.ephemeral).ok_or(AcceptError::BadKey)?;
    let mut resp = InitResponse {
        suite: suite.code(),
        ephemeral: ephemeral_public,
        kem: KemBlock::default(),
        extensions: Vec::new(),
        key_id: key_id(),
        key_ttl_secs: params.key_ttl_secs,
        node_key: params.node.public_key(),
        signature: [0; SIGNATURE_LEN],
    };
    let mut response = resp.encode();
    let unsigned = response.len() - SIGNATURE_LEN;
    let th = transcript_hash(request, &response[..unsigned]);
    resp.signature = params.node.sign(&th);
    response[unsigned..].copy_from_slice(&resp.signature);
    let keys = derive_keys(&shared, &th);
    let material = KeyMaterial {
        suite,
        c2s: AeadKey::new(suite, &keys.c2s),
        s2c: AeadKey::new(suite, &keys.s2c),
        client,
    };
    Ok(Accepted { response, key_id: resp.key_id, material })
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
