//! `AllowList`: the client public keys a server accepts when it requires client
//! certificates.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read};
use std::path::Path;

use super::keys::{PUBLIC_KEY_LEN, public_key_from_base64, public_key_to_base64};

/// Keys read by [`AllowList::load`] unless told otherwise.
pub const DEFAULT_MAX_ALLOWED: usize = 100_000;

/// Why an allow list could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AllowListError {
    /// Opening or reading the file failed.
    #[error("allow list: {0}")]
    Io(#[from] io::Error),
    /// A line is neither blank, a comment, nor one public key.
    #[error("allow list line {line}: not a base64 Ed25519 public key")]
    BadLine {
        /// 1-based line number.
        line: usize,
    },
    /// More keys than the limit; nothing is loaded.
    #[error("allow list holds more than {max} keys")]
    TooManyKeys {
        /// The limit.
        max: usize,
    },
}

/// A set of client Ed25519 public keys.
///
/// # File format
///
/// UTF-8 text, one public key per line in base64url without padding (43 characters, as
/// [`ClientCert`](super::ClientCert) files and the `keygen` example show them; standard
/// base64 is accepted too). `#` starts a comment that runs to the end of the line; blank
/// lines and surrounding whitespace are ignored. Duplicates count once.
///
/// ```text
/// # alice's laptop
/// 11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo
/// PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw   # build server
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    keys: HashSet<[u8; PUBLIC_KEY_LEN]>,
}

impl fmt::Debug for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.keys.iter().map(public_key_to_base64)).finish()
    }
}

impl AllowList {
    /// An empty list (which allows no one).
    pub fn new() -> Self {
        AllowList::default()
    }

    /// Adds a key; false if it was there already.
    pub fn insert(&mut self, key: [u8; PUBLIC_KEY_LEN]) -> bool {
        self.keys.insert(key)
    }

    /// Whether `key` is on the list.
    pub fn contains(&self, key: &[u8; PUBLIC_KEY_LEN]) -> bool {
        self.keys.contains(key)
    }

    /// How many keys the list holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the list holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Parses the file format from `text`, with at most `max_keys` distinct keys.
    ///
    /// # Errors
    /// [`AllowListError::BadLine`] or [`AllowListError::TooManyKeys`].
    pub fn from_text(text: &str, max_keys: usize) -> Result<Self, AllowListError> {
        let mut list = AllowList::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split_once('#').map_or(line, |(before, _)| before).trim();
            if line.is_empty() {
                continue;
            }
            let key =
                public_key_from_base64(line).ok_or(AllowListError::BadLine { line: i + 1 })?;
            list.insert(key);
            if list.len() > max_keys {
                return Err(AllowListError::TooManyKeys { max: max_keys });
            }
        }
        Ok(list)
    }

    /// Reads a file with at most [`DEFAULT_MAX_ALLOWED`] keys.
    ///
    /// # Errors
    /// See [`load_limited`](Self::load_limited).
    pub fn load(path: &Path) -> Result<Self, AllowListError> {
        Self::load_limited(path, DEFAULT_MAX_ALLOWED)
    }

    /// Reads a file with at most `max_keys` keys. Reading stops at a size no list of
    /// `max_keys` keys with a comment each can reach (1 KiB a key), so a huge file costs
    /// bounded memory.
    ///
    /// # Errors
    /// [`AllowListError::Io`] (not UTF-8 is `InvalidData`), [`AllowListError::BadLine`],
    /// [`AllowListError::TooManyKeys`] (also for a file past the size bound).
    pub fn load_limited(path: &Path, max_keys: usize) -> Result<Self, AllowListError> {
        let bound = (max_keys as u64).saturating_add(1).saturating_mul(1024);
        let mut text = String::new();
        std::fs::File::open(path)?.take(bound.saturating_add(1)).read_to_string(&mut text)?;
        if text.len() as u64 > bound {
            return Err(AllowListError::TooManyKeys { max: max_keys });
        }
        Self::from_text(&text, max_keys)
    }
}

impl FromIterator<[u8; PUBLIC_KEY_LEN]> for AllowList {
    fn from_iter<I: IntoIterator<Item = [u8; PUBLIC_KEY_LEN]>>(iter: I) -> Self {
        AllowList { keys: iter.into_iter().collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_comments_and_blank_lines() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let text = format!(
            "# clients\n\n  {}  # alice\n{}\n{}\n",
            public_key_to_base64(&a),
            public_key_to_base64(&b),
            public_key_to_base64(&a)
        );
        let list = AllowList::from_text(&text, 10).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list.contains(&a) && list.contains(&b) && !list.contains(&[3u8; 32]));
    }

    #[test]
    fn bad_lines_and_too_many_keys_are_refused() {
        let err = AllowList::from_text("# ok\nnot-a-key\n", 10).unwrap_err();
        assert!(matches!(err, AllowListError::BadLine { line: 2 }));
        let text: String =
            (0u8..3).map(|i| format!("{}\n", public_key_to_base64(&[i; 32]))).collect();
        assert!(matches!(
            AllowList::from_text(&text, 2),
            Err(AllowListError::TooManyKeys { max: 2 })
        ));
        let dir = std::env::temp_dir().join(format!("dap-allow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big");
        std::fs::write(&path, "#".repeat(5000)).unwrap();
        assert!(matches!(
            AllowList::load_limited(&path, 2),
            Err(AllowListError::TooManyKeys { max: 2 })
        ));
        std::fs::write(&path, &text).unwrap();
        assert_eq!(AllowList::load(&path).unwrap().len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
