//! The `/enc_init` request and response bodies: exact encoding and decoding, sans-IO.
//!
//! Decoding is strict: every length is checked against a hard limit before anything is
//! read, a message must end exactly where its last field ends, and an encoding has one form
//! only, so the bytes a signature covers are the bytes that were decoded. The layouts are
//! in `docs/PROTOCOL.md` §3; the handshake that uses them is in
//! [`handshake`](super::handshake).

use super::key_id::{KEY_ID_LEN, KeyId};
use super::keys::{PUBLIC_KEY_LEN, SIGNATURE_LEN};

/// The protocol version this module speaks.
pub const VERSION: u8 = 1;
/// Length of an X25519 public key (bytes).
pub const X25519_LEN: usize = 32;
/// Most cipher suites a request may offer.
pub const MAX_SUITES: usize = 16;
/// Most bytes of KEM data in one message. Reserved for a hybrid post-quantum KEM (an
/// ML-KEM-1024 encapsulation key is 1,568 bytes); version 1 requires none.
pub const MAX_KEM_LEN: usize = 4096;
/// Most bytes of extensions in one message; version 1 requires none.
pub const MAX_EXT_LEN: usize = 1024;
/// `auth` byte: no client certificate.
pub const AUTH_NONE: u8 = 0;
/// `auth` byte: an Ed25519 client certificate (public key and signature) follows.
pub const AUTH_ED25519: u8 = 1;
/// KEM id meaning "no KEM"; the only one version 1 accepts.
pub const KEM_NONE: u16 = 0;
/// The largest request the decoder can accept (all limits reached).
pub const MAX_REQUEST_LEN: usize = 2
    + MAX_SUITES
    + X25519_LEN
    + 4
    + MAX_KEM_LEN
    + 2
    + MAX_EXT_LEN
    + 1
    + PUBLIC_KEY_LEN
    + SIGNATURE_LEN;
/// The largest response the decoder can accept.
pub const MAX_RESPONSE_LEN: usize = 2
    + X25519_LEN
    + 4
    + MAX_KEM_LEN
    + 2
    + MAX_EXT_LEN
    + KEY_ID_LEN
    + 4
    + PUBLIC_KEY_LEN
    + SIGNATURE_LEN;
/// Length of a version-1 response with no KEM data and no extensions.
pub const RESPONSE_LEN_V1: usize =
    2 + X25519_LEN + 4 + 2 + KEY_ID_LEN + 4 + PUBLIC_KEY_LEN + SIGNATURE_LEN;

/// Why a message body could not be decoded. Small and `Copy`, like every parser error here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The body ends before its last field.
    #[error("truncated")]
    Truncated,
    /// Bytes follow the last field.
    #[error("trailing bytes")]
    TrailingBytes,
    /// The body is longer than any valid message.
    #[error("too long")]
    TooLong,
    /// A version this decoder does not know; nothing after the version byte was read.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// The suite count is 0 or more than [`MAX_SUITES`].
    #[error("bad suite count")]
    BadSuiteCount,
    /// The KEM data is longer than [`MAX_KEM_LEN`].
    #[error("KEM data too long")]
    KemTooLong,
    /// The extensions are longer than [`MAX_EXT_LEN`].
    #[error("extensions too long")]
    ExtensionsTooLong,
    /// An `auth` byte other than [`AUTH_NONE`] or [`AUTH_ED25519`].
    #[error("unknown auth kind {0}")]
    UnknownAuth(u8),
}

/// The KEM block of a message: reserved for a hybrid post-quantum KEM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KemBlock {
    /// The KEM ([`KEM_NONE`] in version 1).
    pub id: u16,
    /// Its data (an encapsulation key in a request, a ciphertext in a response); empty in
    /// version 1.
    pub data: Vec<u8>,
}

impl KemBlock {
    /// True for the only block version 1 accepts: no KEM, no data.
    pub fn is_none(&self) -> bool {
        self.id == KEM_NONE && self.data.is_empty()
    }
}

/// A client certificate inside a request: the client's Ed25519 public key and its signature
/// over the request (see `docs/PROTOCOL.md` §3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAuthField {
    /// The client's Ed25519 public key.
    pub public_key: [u8; PUBLIC_KEY_LEN],
    /// Its signature.
    pub signature: [u8; SIGNATURE_LEN],
}

/// The body of `POST /enc_init`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitRequest {
    /// Offered suite codes, in the client's order; codes the receiver does not know are kept
    /// (and ignored by the handshake).
    pub suites: Vec<u8>,
    /// The client's ephemeral X25519 public key.
    pub ephemeral: [u8; X25519_LEN],
    /// The KEM block.
    pub kem: KemBlock,
    /// The extensions block.
    pub extensions: Vec<u8>,
    /// The client certificate, if sent.
    pub auth: Option<ClientAuthField>,
}

/// The body of a `200` answer to `POST /enc_init`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitResponse {
    /// The chosen suite code.
    pub suite: u8,
    /// The server's ephemeral X25519 public key.
    pub ephemeral: [u8; X25519_LEN],
    /// The KEM block.
    pub kem: KemBlock,
    /// The extensions block.
    pub extensions: Vec<u8>,
    /// The id of the new key.
    pub key_id: KeyId,
    /// Idle seconds after which the server forgets the key.
    pub key_ttl_secs: u32,
    /// The server's Ed25519 node public key.
    pub node_key: [u8; PUBLIC_KEY_LEN],
    /// The node key's signature over the transcript.
    pub signature: [u8; SIGNATURE_LEN],
}

/// Reads fields off the front of a byte slice; every read checks the length first.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn kem(&mut self) -> Result<KemBlock, DecodeError> {
        let id = self.u16()?;
        let len = usize::from(self.u16()?);
        if len > MAX_KEM_LEN {
            return Err(DecodeError::KemTooLong);
        }
        Ok(KemBlock { id, data: self.take(len)?.to_vec() })
    }

    fn extensions(&mut self) -> Result<Vec<u8>, DecodeError> {
        let len = usize::from(self.u16()?);
        if len > MAX_EXT_LEN {
            return Err(DecodeError::ExtensionsTooLong);
        }
        Ok(self.take(len)?.to_vec())
    }

    fn version(&mut self) -> Result<(), DecodeError> {
        match self.u8()? {
            VERSION => Ok(()),
            v => Err(DecodeError::UnsupportedVersion(v)),
        }
    }

    fn end(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() { Ok(()) } else { Err(DecodeError::TrailingBytes) }
    }
}

fn put_kem(out: &mut Vec<u8>, kem: &KemBlock) {
    out.extend_from_slice(&kem.id.to_be_bytes());
    // Encoders are only given blocks within the limits (debug-checked); the cast cannot
    // truncate then.
    debug_assert!(kem.data.len() <= MAX_KEM_LEN);
    out.extend_from_slice(&(kem.data.len() as u16).to_be_bytes());
    out.extend_from_slice(&kem.data);
}

fn put_extensions(out: &mut Vec<u8>, ext: &[u8]) {
    debug_assert!(ext.len() <= MAX_EXT_LEN);
    out.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    out.extend_from_slice(ext);
}

impl InitRequest {
    /// Decodes a request body.
    ///
    /// # Errors
    /// A [`DecodeError`]; nothing past a limit is read or allocated.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        if body.len() > MAX_REQUEST_LEN {
            return Err(DecodeError::TooLong);
        }
        let mut r = Reader(body);
        r.version()?;
        let n = usize::from(r.u8()?);
        if n == 0 || n > MAX_SUITES {
            return Err(DecodeError::BadSuiteCount);
        }
        let suites = r.take(n)?.to_vec();
        let ephemeral = r.array()?;
        let kem = r.kem()?;
        let extensions = r.extensions()?;
        let auth = match r.u8()? {
            AUTH_NONE => None,
            AUTH_ED25519 => Some(ClientAuthField { public_key: r.array()?, signature: r.array()? }),
            other => return Err(DecodeError::UnknownAuth(other)),
        };
        r.end()?;
        Ok(InitRequest { suites, ephemeral, kem, extensions, auth })
    }

    /// Encodes the request. With a certificate, the signature is the last
    /// [`SIGNATURE_LEN`] bytes and covers everything before it.
    ///
    /// # Panics
    /// In debug builds, if a field is past its limit (the caller builds requests; a decoded
    /// one is always within them).
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!((1..=MAX_SUITES).contains(&self.suites.len()));
        let mut out = Vec::with_capacity(160);
        out.push(VERSION);
        out.push(self.suites.len() as u8);
        out.extend_from_slice(&self.suites);
        out.extend_from_slice(&self.ephemeral);
        put_kem(&mut out, &self.kem);
        put_extensions(&mut out, &self.extensions);
        match &self.auth {
            None => out.push(AUTH_NONE),
            Some(a) => {
                out.push(AUTH_ED25519);
                out.extend_from_slice(&a.public_key);
                out.extend_from_slice(&a.signature);
            }
        }
        out
    }
}

impl InitResponse {
    /// Decodes a response body.
    ///
    /// # Errors
    /// A [`DecodeError`]; nothing past a limit is read or allocated.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        if body.len() > MAX_RESPONSE_LEN {
            return Err(DecodeError::TooLong);
        }
        let mut r = Reader(body);
        r.version()?;
        let suite = r.u8()?;
        let ephemeral = r.array()?;
        let kem = r.kem()?;
        let extensions = r.extensions()?;
        let key_id = KeyId(r.array()?);
        let key_ttl_secs = r.u32()?;
        let node_key = r.array()?;
        let signature = r.array()?;
        r.end()?;
        Ok(InitResponse {
            suite,
            ephemeral,
            kem,
            extensions,
            key_id,
            key_ttl_secs,
            node_key,
            signature,
        })
    }

    /// Encodes the response; the signature is the last [`SIGNATURE_LEN`] bytes and the
    /// transcript covers everything before it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RESPONSE_LEN_V1);
        out.push(VERSION);
        out.push(self.suite);
        out.extend_from_slice(&self.ephemeral);
        put_kem(&mut out, &self.kem);
        put_extensions(&mut out, &self.extensions);
        out.extend_from_slice(&self.key_id.0);
        out.extend_from_slice(&self.key_ttl_secs.to_be_bytes());
        out.extend_from_slice(&self.node_key);
        out.extend_from_slice(&self.signature);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(auth: bool) -> InitRequest {
        InitRequest {
            suites: vec![1, 2, 9],
            ephemeral: [5; 32],
            kem: KemBlock::default(),
            extensions: Vec::new(),
            auth: auth.then_some(ClientAuthField { public_key: [6; 32], signature: [7; 64] }),
        }
    }

    fn response() -> InitResponse {
        InitResponse {
            suite: 1,
            ephemeral: [1; 32],
            kem: KemBlock::default(),
            extensions: Vec::new(),
            key_id: KeyId([2; 16]),
            key_ttl_secs: 600,
            node_key: [3; 32],
            signature: [4; 64],
        }
    }

    #[test]
    fn requests_round_trip_with_the_documented_lengths() {
        for auth in [false, true] {
            let req = request(auth);
            let bytes = req.encode();
            assert_eq!(bytes.len(), 41 + 3 + if auth { 96 } else { 0 });
            assert_eq!(InitRequest::decode(&bytes), Ok(req));
        }
        let bytes = request(false).encode();
        assert_eq!(&bytes[..5], &[1, 3, 1, 2, 9]);
        assert_eq!(&bytes[37..], &[0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn responses_round_trip_with_the_documented_length() {
        let bytes = response().encode();
        assert_eq!(bytes.len(), RESPONSE_LEN_V1);
        assert_eq!(RESPONSE_LEN_V1, 156);
        // The limits docs/PROTOCOL.md §3.8 states.
        assert_eq!((MAX_REQUEST_LEN, MAX_RESPONSE_LEN), (5273, 5276));
        assert_eq!(InitResponse::decode(&bytes), Ok(response()));
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        for bytes in [request(true).encode(), response().encode()] {
            let is_req = bytes.len() != RESPONSE_LEN_V1;
            let decode = |b: &[u8]| {
                if is_req {
                    InitRequest::decode(b).map(|_| ())
                } else {
                    InitResponse::decode(b).map(|_| ())
                }
            };
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(decode(&longer), Err(DecodeError::TrailingBytes));
            assert_eq!(
                decode(&vec![1; MAX_RESPONSE_LEN.max(MAX_REQUEST_LEN) + 1]),
                Err(DecodeError::TooLong)
            );
        }
    }

    #[test]
    fn field_limits_and_unknown_values() {
        let mut b = request(false).encode();
        b[0] = 2;
        assert_eq!(InitRequest::decode(&b), Err(DecodeError::UnsupportedVersion(2)));
        let mut b = request(false).encode();
        b[1] = 0;
        assert_eq!(InitRequest::decode(&b), Err(DecodeError::BadSuiteCount));
        b[1] = 17;
        assert_eq!(InitRequest::decode(&b), Err(DecodeError::BadSuiteCount));
        let mut b = request(false).encode();
        b[39..41].copy_from_slice(&[0x10, 0x01]); // KEM length 4097
        assert_eq!(InitRequest::decode(&b), Err(DecodeError::KemTooLong));
        let mut b = request(false).encode();
        b[41..43].copy_from_slice(&[0x04, 0x01]); // extensions 1025
        assert_eq!(InitRequest::decode(&b), Err(DecodeError::ExtensionsTooLong));
        let mut b = request(false).encode();
        *b.last_mut().unwrap() = 2;
        assert_eq!(InitRequest::decode(&b), Err(DecodeError::UnknownAuth(2)));
        // A KEM block and extensions decode (a later version uses them).
        let mut req = request(false);
        req.kem = KemBlock { id: 7, data: vec![1, 2, 3] };
        req.extensions = vec![9; 4];
        assert_eq!(InitRequest::decode(&req.encode()), Ok(req));
    }
}
