//! `keys`: the key files and lists an operator writes. The first byte picks:
//!
//! - 0: a PEM key file, read as a node key and as a client certificate: both read it the
//!   same; a key read is written back in dap's form, which reads back to the same key and
//!   is a fixed point.
//! - 1: an allow list (at most as many keys as the second byte says): the keys it holds
//!   are exactly those of its lines, read independently; a refused list names its first
//!   bad line, or holds too many keys.
//! - 2: one public key in text: accepted only in its canonical base64url form or the
//!   padded standard form, and shown back in the first.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use dap_net::enc::keys::{is_weak_public_key, public_key_from_base64, public_key_to_base64};
use dap_net::enc::{AllowList, AllowListError, ClientCert, NodeKey};

/// The target.
pub fn run(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 3 {
        0 => pem(&String::from_utf8_lossy(body)),
        1 => {
            let Some((&max, text)) = body.split_first() else { return };
            allow_list(&String::from_utf8_lossy(text), usize::from(max % 16));
        }
        _ => public_key(&String::from_utf8_lossy(body)),
    }
}

fn pem(text: &str) {
    let node = NodeKey::from_pem(text);
    let cert = ClientCert::from_pem(text);
    match (&node, &cert) {
        (Ok(n), Ok(c)) => assert_eq!(n.public_key(), c.public_key()),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("a node key and a client certificate read the file differently"),
    }
    let Ok(key) = node else { return };
    assert!(!is_weak_public_key(&key.public_key()));
    let written = key.to_pem();
    let again = NodeKey::from_pem(&written).expect("a written key reads back");
    assert_eq!(again.public_key(), key.public_key());
    assert_eq!(again.to_pem(), written);
    assert!(written.contains(&public_key_to_base64(&key.public_key())));
}

/// The key of an allow-list line, read independently of the list's parser: `Err` for a
/// line that is not blank, a comment, or one key.
fn line_key(line: &str) -> Result<Option<[u8; 32]>, ()> {
    let line = line.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return Ok(None);
    }
    public_key_from_base64(line).map(Some).ok_or(())
}

fn allow_list(text: &str, max: usize) {
    let mut keys = HashSet::new();
    let mut first_bad = None;
    let mut too_many = false;
    for (i, line) in text.lines().enumerate() {
        match line_key(line) {
            Ok(Some(k)) => {
                keys.insert(k);
                if keys.len() > max {
                    too_many = true;
                    break;
                }
            }
            Ok(None) => {}
            Err(()) => {
                first_bad = Some(i + 1);
                break;
            }
        }
    }
    match AllowList::from_text(text, max) {
        Ok(list) => {
            assert!(first_bad.is_none() && !too_many);
            assert_eq!(list.len(), keys.len());
            assert!(keys.iter().all(|k| list.contains(k)));
        }
        Err(AllowListError::BadLine { line }) => assert_eq!(Some(line), first_bad),
        Err(AllowListError::TooManyKeys { max: m }) => assert!(too_many && m == max),
        Err(e) => panic!("reading text failed with {e}"),
    }
}

fn public_key(text: &str) {
    let Some(key) = public_key_from_base64(text) else { return };
    let shown = public_key_to_base64(&key);
    assert_eq!(public_key_from_base64(&shown), Some(key));
    assert_eq!(shown, URL_SAFE_NO_PAD.encode(key));
    let t = text.trim();
    assert!(t == shown || t == STANDARD.encode(key), "{t:?} read as {shown}");
    let _ = is_weak_public_key(&key);
}
