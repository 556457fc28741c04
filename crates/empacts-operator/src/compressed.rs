//! Objects kept in memory as compressed JSON, for the caches that hold one per app (the apps
//! themselves, the ledger's ControllerRevisions, the copies of generated Secrets).
//!
//! A settled benchmark app is ~1.7 KB of JSON and ~3 KB as a k8s-openapi object (every string
//! and map its own heap block); its ControllerRevision ~1.1 / 2.4 KB. Most of those bytes are
//! the same in every app: field names, labels, condition types and reasons. LZ4 with a shared
//! dictionary (a representative app and revision, serialized as the caches serialize theirs)
//! keeps only what differs: ~230 and ~110 bytes. A reconcile unpacks the one app and its few
//! revisions it reads (microseconds each), so the fleet's bulk stays small.
//!
//! The dictionary lives in this process only (nothing packed here is written anywhere), so
//! changing it between builds is safe.

use std::sync::LazyLock;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// One value's JSON, LZ4-compressed against [`DICTIONARY`].
#[derive(Clone, PartialEq, Eq)]
pub struct CompressedJson {
    /// Length of the JSON (the decompressor's output size).
    len: u32,
    bytes: Box<[u8]>,
}

impl std::fmt::Debug for CompressedJson {
    // Never the content: a packed object may carry anything its owner wrote.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CompressedJson({} bytes, {} packed)", self.len, self.bytes.len())
    }
}

impl CompressedJson {
    pub fn pack<T: Serialize>(value: &T) -> Self {
        // Serializing a k8s-openapi or CRD type to JSON does not fail (string keys, no
        // non-finite floats in what the API server accepts).
        let json = serde_json::to_vec(value).expect("a Kubernetes object serializes to JSON");
        Self::of_json(&json)
    }

    pub fn of_json(json: &[u8]) -> Self {
        let len = u32::try_from(json.len()).expect("an object under 4 GiB");
        let bytes = lz4_flex::block::compress_with_dict(json, &DICTIONARY).into_boxed_slice();
        CompressedJson { len, bytes }
    }

    /// The JSON, decompressed.
    pub fn json(&self) -> Vec<u8> {
        // Only `of_json` makes these bytes, with the same dictionary.
        lz4_flex::block::decompress_with_dict(&self.bytes, self.len as usize, &DICTIONARY)
            .expect("bytes compressed by this process decompress")
    }

    pub fn unpack<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.json())
    }

    /// Heap bytes held.
    pub fn heap_size(&self) -> usize {
        self.bytes.len()
    }
}

/// A representative generated Secret, ControllerRevision (compacted as the ledger cache keeps
/// them) and app (trimmed as the apps' cache keeps them), each serialized by the types the
/// caches pack.
/// LZ4 finds matches anywhere in the dictionary, nearest last: the app comes last, the larger
/// and more frequent of the two.
static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let spec = serde_json::json!({
        "autoscaling": {"maxReplicas": 4, "minReplicas": 2, "targetCPU": 70},
        "disruption": {"minAvailable": 1},
        "env": {"LOG_LEVEL": "info"},
        "image": "registry.example.com/team/app:1.0.0",
        "migration": {"command": ["migrate"], "rollbackCommand": ["migrate", "down"]},
        "port": 8080,
        "replicas": 2,
        "secrets": [{"env": "DATABASE_URL", "secretKeyRef": {"name": "db", "key": "url"}},
                    {"env": "JWT_SECRET", "generate": {}}]
    });
    let labels = |component: &str| {
        serde_json::json!({
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/instance": "app",
            "app.kubernetes.io/managed-by": "empacts-operator",
            "app.kubernetes.io/name": "app",
            "app.kubernetes.io/part-of": "app",
            "app.kubernetes.io/version": "1.0.0",
            "empacts.io/revision": "0123456789"
        })
    };
    let mut revision: k8s_openapi::api::apps::v1::ControllerRevision = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {
            "annotations": {"empacts.io/desired-generation": "1", "empacts.io/good": "1", "empacts.io/ledger": "1",
                            "empacts.io/migration": "1 succeeded", "empacts.io/rolled-at": "1700000000"},
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": labels("revision"),
            "name": "app-0123456789", "namespace": "default",
            "ownerReferences": [{"apiVersion": "empacts.io/v1alpha1", "blockOwnerDeletion": true, "controller": true,
                                 "kind": "EmpactsApp", "name": "app", "uid": "00000000-0000-0000-0000-000000000000"}],
            "resourceVersion": "1000", "uid": "00000000-0000-0000-0000-000000000000"
        },
        "data": spec.clone(),
        "revision": 1
    }))
    .expect("the dictionary's revision parses");
    crate::ledger_cache::compact(&mut revision);
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        serde_json::json!({"lastTransitionTime": "2026-01-01T00:00:00Z", "message": message,
                           "observedGeneration": 1, "reason": reason, "status": status, "type": kind})
    };
    let available = "revision 0123456789 is available (2/2 ready)";
    let app: empacts_api::EmpactsApp = serde_json::from_value(serde_json::json!({
        "apiVersion": "empacts.io/v1alpha1", "kind": "EmpactsApp",
        "metadata": {"creationTimestamp": "2026-01-01T00:00:00Z", "generation": 1, "name": "app",
                     "namespace": "default", "resourceVersion": "1000",
                     "uid": "00000000-0000-0000-0000-000000000000"},
        "spec": spec,
        "status": {
            "conditions": [
                condition("Ready", "True", "Available", available),
                condition("Reconciling", "False", "Available", available),
                condition("Stalled", "False", "Available", available),
                condition("MigrationComplete", "True", "MigrationSucceeded", "migration of revision 0123456789 succeeded")
            ],
            "currentRevision": "0123456789", "desiredRevision": "0123456789",
            "history": [{"at": "2026-01-01T00:00:00Z", "image": "registry.example.com/team/app:1.0.0",
                         "migrated": true, "result": "Succeeded", "revision": "0123456789"}],
            "lastGoodRevision": "0123456789",
            "migration": {"job": "app-migrate-0123456789", "phase": "Succeeded", "revision": "0123456789"},
            "observedGeneration": 1, "phase": "Ready", "readyReplicas": 2, "replicas": 2, "updatedReplicas": 2
        }
    }))
    .expect("the dictionary's app parses");
    // A generated Secret as the Secret reads keep it (its value is random: only the rest packs).
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"app.kubernetes.io/component": "generated-secret", "app.kubernetes.io/instance": "app",
                       "app.kubernetes.io/managed-by": "empacts-operator", "app.kubernetes.io/name": "app",
                       "app.kubernetes.io/part-of": "app", "empacts.io/generated-secret": "true",
                       "empacts.io/watch": "true"},
            "name": "app.gen.jwt-secret", "namespace": "default",
            "ownerReferences": [{"apiVersion": "empacts.io/v1alpha1", "blockOwnerDeletion": true, "controller": true,
                                 "kind": "EmpactsApp", "name": "app", "uid": "00000000-0000-0000-0000-000000000000"}],
            "resourceVersion": "1000", "uid": "00000000-0000-0000-0000-000000000000"
        },
        "data": {"value": ""}
    }))
    .expect("the dictionary's Secret parses");
    let mut out = serde_json::to_vec(&secret).expect("serializes");
    out.extend(serde_json::to_vec(&revision).expect("serializes"));
    out.extend(serde_json::to_vec(&app).expect("serializes"));
    out
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_comes_back_as_it_was_packed() {
        let value = serde_json::json!({"name": "api", "n": [1, 2, 3], "s": "ü∂"});
        let packed = CompressedJson::pack(&value);
        assert_eq!(packed.unpack::<serde_json::Value>().unwrap(), value);
        assert!(!format!("{packed:?}").contains("api"), "Debug shows no content");
    }

    #[test]
    fn an_app_like_the_dictionarys_packs_to_a_fraction_of_its_json() {
        // The dictionary's own app, renamed: what differs is names, UIDs, times.
        let json = String::from_utf8(DICTIONARY.clone()).unwrap();
        let app_json = &json[json.find("{\"apiVersion\":\"empacts.io").unwrap()..];
        let other = app_json.replace("\"app\"", "\"payments\"").replace("0123456789", "9f8e7d6c5b");
        let packed = CompressedJson::of_json(other.as_bytes());
        assert!(packed.heap_size() * 4 < other.len(), "{} of {}", packed.heap_size(), other.len());
        assert_eq!(packed.json(), other.as_bytes());
    }

    #[test]
    fn an_empty_or_unlike_value_round_trips() {
        for json in [&b""[..], b"[]", b"\"\xc3\xa9\"", &[b'x'; 70_000]] {
            assert_eq!(CompressedJson::of_json(json).json(), json);
        }
    }
}
