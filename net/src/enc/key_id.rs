//! `KeyId`: the name of one enc_init key, as the server hands it out and as every enc_http
//! request carries it (header `KeyID`).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Length of a key id (bytes): 128 bits.
pub const KEY_ID_LEN: usize = 16;

/// The 128-bit id of a key in the server's [`KeyStore`](super::KeyStore), drawn from the
/// CSPRNG for every successful `/enc_init`.
///
/// It travels in the clear (base64url in the `KeyID` header) and is not a secret: without
/// the keys it names it lets no one read or forge anything. It is still random rather than a
/// counter so that ids say nothing about how many clients a server has, and so that a
/// guessed id is useless.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    /// A fresh id from the operating system's CSPRNG.
    pub fn random() -> Self {
        let mut id = [0u8; KEY_ID_LEN];
        super::cipher::random_bytes(&mut id);
        KeyId(id)
    }

    /// The id as sent in the `KeyID` header: base64url without padding (22 characters).
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// The id from its header form; `None` unless `s` is exactly 22 characters of canonical
    /// base64url without padding.
    pub fn from_base64(s: &[u8]) -> Option<Self> {
        // 22 characters is the only length 16 bytes can take; checking first bounds the work
        // an oversized header can cause.
        if s.len() != 22 {
            return None;
        }
        let mut out = [0u8; KEY_ID_LEN];
        match URL_SAFE_NO_PAD.decode_slice(s, &mut out) {
            Ok(KEY_ID_LEN) => Some(KeyId(out)),
            _ => None,
        }
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.to_base64())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_non_canonical_forms() {
        let id = KeyId([0xfb; KEY_ID_LEN]);
        let s = id.to_base64();
        assert_eq!(s.len(), 22);
        assert_eq!(KeyId::from_base64(s.as_bytes()), Some(id));
        // Padding, the standard alphabet, wrong lengths and non-zero trailing bits are refused.
        assert_eq!(KeyId::from_base64(format!("{s}==").as_bytes()), None);
        assert_eq!(KeyId::from_base64(s.replace('_', "/").as_bytes()), None);
        assert_eq!(KeyId::from_base64(&s.as_bytes()[..21]), None);
        let mut trailing = s.clone().into_bytes();
        trailing[21] = b'_';
        assert_eq!(KeyId::from_base64(&trailing), None);
        assert_ne!(KeyId::random(), KeyId::random());
    }
}
