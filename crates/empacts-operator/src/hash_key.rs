//! The per-installation key of the pod-template config hash. An unkeyed hash of a Secret's
//! value lets anyone who can read Deployments test guesses offline (`hunter2` falls at once);
//! an HMAC under a key only the operator reads does not.
//!
//! The key lives in a Secret in the operator's own namespace, created once (create-only, so
//! replicas racing at start agree on the first one written) and never rotated by the operator:
//! a new key re-hashes every app and rolls every pod that references a Secret.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use rand::RngCore;

use crate::error::{is_conflict, is_not_found};
use crate::hash::HashKey;

/// Name of the key's Secret in the operator's namespace.
pub const SECRET_NAME: &str = "empacts-config-hash-key";
/// Key of the Secret's data.
const DATA_KEY: &str = "key";
/// Bytes of a new key (HMAC-SHA256 wants at least its output size).
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "reading or creating Secret {namespace}/{SECRET_NAME} (the config-hash key) failed: {source}; the operator needs get and create on Secrets in its own namespace"
    )]
    Api {
        namespace: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(
        "Secret {namespace}/{SECRET_NAME} has no usable `{DATA_KEY}` (at least 16 bytes); delete it to let the operator create a new key (every app that references a Secret then rolls its pods once)"
    )]
    Unusable { namespace: String },
}

/// Read the installation's key, creating it on first start.
pub async fn load_or_create(client: &kube::Client, namespace: &str) -> Result<HashKey, KeyError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let err = |source: kube::Error| KeyError::Api { namespace: namespace.to_string(), source: Box::new(source) };
    for _ in 0..2 {
        match api.get(SECRET_NAME).await {
            Ok(secret) => return key_of(&secret).ok_or(KeyError::Unusable { namespace: namespace.to_string() }),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(err(e)),
        }
        let mut bytes = vec![0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut bytes);
        match api.create(&PostParams::default(), &key_secret(namespace, bytes.clone())).await {
            Ok(_) => return Ok(HashKey::new(bytes)),
            // Another replica created it first: use theirs.
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(err(e)),
        }
    }
    Err(KeyError::Unusable { namespace: namespace.to_string() })
}

fn key_of(secret: &Secret) -> Option<HashKey> {
    let bytes = secret.data.as_ref()?.get(DATA_KEY)?.0.clone();
    (bytes.len() >= 16).then(|| HashKey::new(bytes))
}

fn key_secret(namespace: &str, key: Vec<u8>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(SECRET_NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                empacts_api::labels::MANAGED_BY.to_string(),
                empacts_api::labels::MANAGER.to_string(),
            )])),
            ..Default::default()
        },
        immutable: Some(true),
        data: Some(BTreeMap::from([(DATA_KEY.to_string(), ByteString(key))])),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}
