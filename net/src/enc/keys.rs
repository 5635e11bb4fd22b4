//! Long-term Ed25519 keys: the server's [`NodeKey`] and a client's [`ClientCert`], generated
//! from the CSPRNG and kept in PEM files.
//!
//! # File format
//!
//! A key file is a PKCS#8 Ed25519 private key (RFC 8410) in PEM (RFC 7468), preceded by
//! comment lines that say what the key is and give its public key:
//!
//! ```text
//! # dap node key (Ed25519)
//! # public key: 11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo
//! -----BEGIN PRIVATE KEY-----
//! MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g
//! -----END PRIVATE KEY-----
//! ```
//!
//! dap writes the 48-byte PKCS#8 v1 form (what `openssl genpkey -algorithm ed25519` writes,
//! so `openssl pkey -in FILE -pubout` reads it) and reads v1 or v2 (with the public key, as
//! ring writes it; a v2 file whose public key does not match its private key is refused).
//! Text outside the `BEGIN`/`END` lines is ignored. Files are written with mode `0600` and
//! never overwrite an existing file; a key file readable by group or others is loaded with a
//! warning in the log.
//!
//! Public keys are shown and listed (see [`AllowList`](super::AllowList)) as the 32 raw
//! bytes in base64url without padding (43 characters).

use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
// Signing and verifying with AWS-LC (s2n-bignum's x86-64 Ed25519: about a third of ring's
// cost to sign and three quarters to verify on this machine; `handshake_speed` prints
// ring's). On x86-64 its point decoding is a little stricter than ring's (a public key
// whose y is not reduced mod p, or x = 0 with the sign bit set, is refused): no key an
// honest signer makes. The key file's PKCS#8 structure is still checked by ring, which also
// compares a v2 file's public key with its seed.
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _};

/// Length of an Ed25519 public key (bytes).
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature (bytes).
pub const SIGNATURE_LEN: usize = 64;
/// The largest key file read; a PEM Ed25519 key with comments takes a few hundred bytes.
pub const MAX_KEY_FILE: u64 = 16 * 1024;

/// The PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410 §7): the 32-byte seed follows.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Opening, reading or writing the file failed (an existing file when saving included:
    /// [`io::ErrorKind::AlreadyExists`]).
    #[error("key file: {0}")]
    Io(#[from] io::Error),
    /// The file is larger than [`MAX_KEY_FILE`].
    #[error("key file larger than {MAX_KEY_FILE} bytes")]
    TooLarge,
    /// No `-----BEGIN PRIVATE KEY-----` … `-----END PRIVATE KEY-----` block.
    #[error("no PEM private key block in the key file")]
    NoPem,
    /// The PEM block is not valid base64.
    #[error("the PEM block is not valid base64")]
    BadBase64,
    /// The block is not an Ed25519 PKCS#8 private key (or its public key does not match).
    #[error("not an Ed25519 PKCS#8 private key: {0}")]
    BadKey(&'static str),
}

/// An Ed25519 signing key with its seed, so that it can be saved again. Shared by the two
/// public key kinds, which differ only in their role (and their file comment).
struct SigningKey {
    pair: Ed25519KeyPair,
    seed: [u8; 32],
}

impl SigningKey {
    fn generate() -> Self {
        let mut seed = [0u8; 32];
        super::cipher::random_bytes(&mut seed);
        Self::from_seed(&seed)
    }

    fn from_seed(seed: &[u8; 32]) -> Self {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32 bytes are a seed");
        SigningKey { pair, seed: *seed }
    }

    fn public(&self) -> [u8; PUBLIC_KEY_LEN] {
        let mut out = [0u8; PUBLIC_KEY_LEN];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, KeyFileError> {
        // ring checks the structure (v1 or v2) and, for v2, that the public key matches.
        use ring::signature::{Ed25519KeyPair as Parsed, KeyPair as _};
        let parsed = Parsed::from_pkcs8(der)
            .or_else(|_| Parsed::from_pkcs8_maybe_unchecked(der))
            .map_err(|_| KeyFileError::BadKey("not an Ed25519 PKCS#8 key"))?;
        // Both versions start with the same 16 bytes up to the seed (the version byte aside);
        // the seed is kept so the key can be written again.
        let seed: [u8; 32] = match der.get(..48) {
            Some(head)
                if head[0] == 0x30
                    && head[2..4] == [0x02, 0x01]
                    && head[4] <= 1
                    && head[5..16] == PKCS8_V1_PREFIX[5..] =>
            {
                head[16..48].try_into().expect("32 bytes")
            }
            _ => return Err(KeyFileError::BadKey("unsupported PKCS#8 layout")),
        };
        let key = Self::from_seed(&seed);
        if key.pair.public_key().as_ref() != parsed.public_key().as_ref() {
            return Err(KeyFileError::BadKey("unsupported PKCS#8 layout"));
        }
        Ok(key)
    }

    fn to_pem(&self, what: &str) -> String {
        let mut der = PKCS8_V1_PREFIX.to_vec();
        der.extend_from_slice(&self.seed);
        format!(
            "# {what} (Ed25519)\n# public key: {}\n{PEM_BEGIN}\n{}\n{PEM_END}\n",
            URL_SAFE_NO_PAD.encode(self.public()),
            STANDARD.encode(&der)
        )
    }

    fn from_pem(text: &str) -> Result<Self, KeyFileError> {
        let mut lines = text.lines().map(str::trim);
        if !lines.any(|l| l == PEM_BEGIN) {
            return Err(KeyFileError::NoPem);
        }
        let mut b64 = String::new();
        let mut ended = false;
        for line in lines {
            if line == PEM_END {
                ended = true;
                break;
            }
            b64.push_str(line);
        }
        if !ended {
            return Err(KeyFileError::NoPem);
        }
        let der = STANDARD.decode(b64.as_bytes()).map_err(|_| KeyFileError::BadBase64)?;
        Self::from_pkcs8(&der)
    }

    fn save(&self, path: &Path, what: &str) -> Result<(), KeyFileError> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        file.write_all(self.to_pem(what).as_bytes())?;
        file.sync_all()?;
        Ok(())
    }

    fn load(path: &Path) -> Result<Self, KeyFileError> {
        let file = std::fs::File::open(path)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = file.metadata()?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format_args!("{:o}", mode & 0o777),
                    "key file is readable by group or others");
            }
        }
        let mut text = String::new();
        let read = file.take(MAX_KEY_FILE + 1).read_to_string(&mut text);
        match read {
            Ok(n) if n as u64 > MAX_KEY_FILE => Err(KeyFileError::TooLarge),
            Ok(_) => Self::from_pem(&text),
            // Not UTF-8: certainly not PEM.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(KeyFileError::NoPem),
            Err(e) => Err(e.into()),
        }
    }
}

/// Every encoding of an Ed25519 point of small order (order 1, 2, 4 or 8), as
/// y-coordinates with the sign bit of `x` cleared: 0, 1, the two of order 8, p − 1, and the
/// non-canonical p and p + 1 (libsodium's list). The torsion points have no other
/// y-coordinates, and no other value of them fits in 255 bits twice.
const SMALL_ORDER: [[u8; 32]; 7] = {
    let mut keys = [[0u8; 32]; 7];
    keys[1][0] = 1;
    keys[2] = [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ];
    keys[3] = [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ];
    // p − 1, p, p + 1: 0xec, 0xed, 0xee followed by thirty 0xff and 0x7f (little-endian).
    let mut i = 4;
    while i < 7 {
        let mut j = 1;
        while j < 31 {
            keys[i][j] = 0xff;
            j += 1;
        }
        keys[i][0] = 0xe8 + i as u8;
        keys[i][31] = 0x7f;
        i += 1;
    }
    keys
};

/// Whether `key` is an Ed25519 public key of small order. Signatures under such a key prove
/// nothing (with the right signature, a message verifies without any private key), so dap
/// refuses them everywhere a signature is checked.
pub fn is_weak_public_key(key: &[u8; PUBLIC_KEY_LEN]) -> bool {
    SMALL_ORDER.iter().any(|w| w[..31] == key[..31] && w[31] == key[31] & 0x7f)
}

/// Verifies an Ed25519 signature made by `public` over `msg`; false for a weak `public`
/// ([`is_weak_public_key`]).
pub(crate) fn verify(public: &[u8; PUBLIC_KEY_LEN], msg: &[u8], sig: &[u8; SIGNATURE_LEN]) -> bool {
    !is_weak_public_key(public)
        && signature::UnparsedPublicKey::new(&signature::ED25519, public).verify(msg, sig).is_ok()
}

/// Formats a public key as dap shows and lists it: base64url without padding.
pub fn public_key_to_base64(key: &[u8; PUBLIC_KEY_LEN]) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// Reads a public key in the form of [`public_key_to_base64`]; standard base64 with padding
/// (`+`, `/`, `=`) is accepted too, for keys pasted from other tools.
pub fn public_key_from_base64(s: &str) -> Option<[u8; PUBLIC_KEY_LEN]> {
    let s = s.trim();
    // 44 is the padded standard form; anything longer cannot be 32 bytes.
    if s.len() > 44 {
        return None;
    }
    let mut out = [0u8; 48];
    let n = URL_SAFE_NO_PAD
        .decode_slice(s, &mut out)
        .or_else(|_| STANDARD.decode_slice(s, &mut out))
        .ok()?;
    (n == PUBLIC_KEY_LEN).then(|| out[..PUBLIC_KEY_LEN].try_into().expect("32 bytes"))
}

macro_rules! key_kind {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        pub struct $name(SigningKey);

        impl $name {
            /// A new key from the operating system's CSPRNG.
            pub fn generate() -> Self {
                $name(SigningKey::generate())
            }

            /// The key whose RFC 8032 secret (seed) is `seed`: for test vectors and for keys
            /// kept in other stores. Keep `seed` secret.
            pub fn from_seed(seed: &[u8; 32]) -> Self {
                $name(SigningKey::from_seed(seed))
            }

            /// The 32-byte public key.
            pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
                self.0.public()
            }

            /// Signs `msg`.
            pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
                self.0.sign(msg)
            }

            /// The key as a file's text (see the [module docs](self)).
            pub fn to_pem(&self) -> String {
                self.0.to_pem($what)
            }

            /// The key from a file's text.
            ///
            /// # Errors
            /// [`KeyFileError`] when the text holds no valid Ed25519 key.
            pub fn from_pem(text: &str) -> Result<Self, KeyFileError> {
                SigningKey::from_pem(text).map($name)
            }

            /// Writes the key to a new file with mode `0600`.
            ///
            /// # Errors
            /// [`KeyFileError::Io`], of kind `AlreadyExists` when `path` exists: a key is
            /// never overwritten.
            pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
                self.0.save(path, $what)
            }

            /// Reads a key file.
            ///
            /// # Errors
            /// [`KeyFileError`] when the file cannot be read or holds no valid key.
            pub fn load(path: &Path) -> Result<Self, KeyFileError> {
                SigningKey::load(path).map($name)
            }
        }

        impl Clone for $name {
            fn clone(&self) -> Self {
                $name(SigningKey::from_seed(&self.0.seed))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // The public half only.
                f.debug_tuple(stringify!($name))
                    .field(&public_key_to_base64(&self.0.public()))
                    .finish()
            }
        }
    };
}

key_kind!(
    /// The server's long-term Ed25519 key: it signs every `/enc_init` response, so a client
    /// that knows (pins) the public key knows whom it talks to.
    NodeKey,
    "dap node key"
);

key_kind!(
    /// A client's long-term Ed25519 key, its "certificate": sent with `/enc_init` (public key
    /// and a signature), it proves the client holds the key; the server may require it and
    /// check it against an [`AllowList`](super::AllowList).
    ClientCert,
    "dap client certificate"
);

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 §7.1, test 1.
    const SEED: [u8; 32] = [
        0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c,
        0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae,
        0x7f, 0x60,
    ];

    #[test]
    fn rfc8032_public_key_and_signature() {
        let key = NodeKey::from_seed(&SEED);
        assert_eq!(
            public_key_to_base64(&key.public_key()),
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        let sig = key.sign(b"");
        assert_eq!(sig[..4], [0xe5, 0x56, 0x43, 0x00]);
        assert!(verify(&key.public_key(), b"", &sig));
        assert!(!verify(&key.public_key(), b"x", &sig));
    }

    #[test]
    fn small_order_keys_are_weak_and_their_signatures_refused() {
        let hexes = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
            "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ];
        for h in hexes {
            let mut key: [u8; 32] = (0..32)
                .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
                .collect::<Vec<_>>()
                .try_into()
                .unwrap();
            assert!(is_weak_public_key(&key), "{h}");
            key[31] |= 0x80;
            assert!(is_weak_public_key(&key), "{h} with the sign bit");
        }
        assert!(!is_weak_public_key(&NodeKey::from_seed(&SEED).public_key()));
        // The all-zero key (order 4) with the all-zero signature: the library accepts it for
        // some messages; dap never does.
        let (key, sig) = ([0u8; 32], [0u8; 64]);
        let lib_accepts = |m: &[u8]| {
            signature::UnparsedPublicKey::new(&signature::ED25519, &key).verify(m, &sig).is_ok()
        };
        let forged = (0u32..256).map(|i| i.to_be_bytes()).find(|m| lib_accepts(m));
        let forged = forged.expect("a message that verifies under the zero key");
        assert!(!verify(&key, &forged, &sig));
    }

    #[test]
    fn pem_round_trips_and_matches_the_documented_example() {
        let key = NodeKey::from_seed(&SEED);
        let pem = key.to_pem();
        assert!(pem.contains("MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g"));
        let back = NodeKey::from_pem(&pem).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        // ring's PKCS#8 v2 (with the public key) is read too.
        use ring::signature::{Ed25519KeyPair as RingPair, KeyPair as _};
        let v2 = RingPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let text = format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", STANDARD.encode(v2.as_ref()));
        let key = ClientCert::from_pem(&text).unwrap();
        let want = RingPair::from_pkcs8(v2.as_ref()).unwrap();
        assert_eq!(key.public_key()[..], *want.public_key().as_ref());
    }

    #[test]
    fn bad_files_are_typed_errors() {
        assert!(matches!(NodeKey::from_pem(""), Err(KeyFileError::NoPem)));
        assert!(matches!(NodeKey::from_pem(PEM_BEGIN), Err(KeyFileError::NoPem)));
        let bad = format!("{PEM_BEGIN}\n!!!\n{PEM_END}\n");
        assert!(matches!(NodeKey::from_pem(&bad), Err(KeyFileError::BadBase64)));
        let short = format!("{PEM_BEGIN}\nMC4CAQAw\n{PEM_END}\n");
        assert!(matches!(NodeKey::from_pem(&short), Err(KeyFileError::BadKey(_))));
        // A v2 key whose public key belongs to another seed.
        let mut der = vec![0x30, 0x51, 0x02, 0x01, 0x01];
        der.extend_from_slice(&PKCS8_V1_PREFIX[5..]);
        der.extend_from_slice(&SEED);
        der.extend_from_slice(&[0x81, 0x21, 0x00]);
        der.extend_from_slice(&[7u8; 32]);
        let text = format!("{PEM_BEGIN}\n{}\n{PEM_END}\n", STANDARD.encode(&der));
        assert!(matches!(NodeKey::from_pem(&text), Err(KeyFileError::BadKey(_))));
    }

    #[test]
    fn files_are_private_and_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("dap-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.key");
        let key = NodeKey::generate();
        key.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let err = NodeKey::generate().save(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::Io(e) if e.kind() == io::ErrorKind::AlreadyExists));
        assert_eq!(NodeKey::load(&path).unwrap().public_key(), key.public_key());
        std::fs::write(dir.join("big"), vec![b'#'; MAX_KEY_FILE as usize + 1]).unwrap();
        assert!(matches!(NodeKey::load(&dir.join("big")), Err(KeyFileError::TooLarge)));
        std::fs::write(dir.join("bin"), [0xff, 0xfe]).unwrap();
        assert!(matches!(NodeKey::load(&dir.join("bin")), Err(KeyFileError::NoPem)));
        assert!(format!("{key:?}").contains(&public_key_to_base64(&key.public_key())));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn public_keys_in_both_base64_forms() {
        let key = [0xfbu8; 32];
        let url = public_key_to_base64(&key);
        assert_eq!(public_key_from_base64(&url), Some(key));
        assert_eq!(public_key_from_base64(&STANDARD.encode(key)), Some(key));
        assert_eq!(public_key_from_base64(&url[..42]), None);
        assert_eq!(public_key_from_base64("AAAA"), None);
        assert_eq!(public_key_from_base64(&"A".repeat(1000)), None);
    }
}
