//! Short content hashes used in names and annotations.

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Hex characters kept from a SHA-256: 40 bits, plenty for one app's revisions.
pub const HASH_LEN: usize = 10;

/// Hash of the canonical JSON form of `value` (serde_json writes struct fields in
/// declaration order and BTreeMaps sorted, so equal values give equal hashes).
pub fn content_hash<T: Serialize + ?Sized>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).expect("in-memory Kubernetes objects always serialize");
    hex_prefix(&Sha256::digest(&bytes))
}

/// Hash of raw bytes, fed in order.
pub fn bytes_hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        // Length-prefix each part so ("ab","c") and ("a","bc") differ.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hex_prefix(&hasher.finalize())
}

/// The installation's secret key for hashes of secret material. Debug never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct HashKey(Vec<u8>);

impl HashKey {
    pub fn new(bytes: Vec<u8>) -> Self {
        HashKey(bytes)
    }
}

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(<redacted>)")
    }
}

/// HMAC-SHA256 of raw bytes under `key`, fed in order and length-prefixed like [`bytes_hash`]:
/// for hashes that reach objects others can read, of values that may be guessable.
pub fn keyed_bytes_hash<'a>(key: &HashKey, parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    hex_prefix(&mac.finalize().into_bytes())
}

fn hex_prefix(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect::<String>()[..HASH_LEN].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_and_bounded() {
        assert_eq!(content_hash(&["a", "b"]), content_hash(&["a", "b"]));
        assert_ne!(content_hash(&["a", "b"]), content_hash(&["ab"]));
        assert_eq!(content_hash(&1).len(), HASH_LEN);
        assert_ne!(bytes_hash([b"ab".as_slice(), b"c"]), bytes_hash([b"a".as_slice(), b"bc"]));
    }

    #[test]
    fn a_keyed_hash_of_a_weak_secret_cannot_be_matched_without_the_key() {
        let key = HashKey::new(vec![7; 32]);
        let parts = [b"db".as_slice(), b"password", b"hunter2"];
        let keyed = keyed_bytes_hash(&key, parts);
        // What someone reading the Deployment could compute offline: the old unkeyed scheme,
        // or a plain SHA-256 of the guessed value.
        assert_ne!(keyed, bytes_hash(parts));
        assert_ne!(keyed, hex_prefix(&Sha256::digest(b"hunter2")));
        // Another installation's key gives another hash; the same key the same one.
        assert_ne!(keyed, keyed_bytes_hash(&HashKey::new(vec![8; 32]), parts));
        assert_eq!(keyed, keyed_bytes_hash(&key.clone(), parts));
        assert_eq!(keyed.len(), HASH_LEN);
        assert_eq!(format!("{key:?}"), "HashKey(<redacted>)");
    }
}
