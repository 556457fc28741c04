//! Short content hashes used in names and annotations.

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
}
