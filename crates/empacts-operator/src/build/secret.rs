//! Operator-generated Secrets, one per `generate` entry. The builder only shapes the
//! object; the value comes from the caller ([`crate::secret_value`]), and the apply step
//! only ever *creates* these (never updates), so a value is never overwritten.

use std::collections::BTreeMap;

use empacts_api::{SecretEnv, labels};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use crate::{build::meta, names, secret_value::SecretValue, validate::ValidatedApp};

pub const COMPONENT: &str = "generated-secret";

/// The generated Secret for `entry`, or None when the entry references a user Secret.
pub fn build(app: &ValidatedApp, entry: &SecretEnv, value: &SecretValue) -> Option<Secret> {
    let generate = entry.generate.as_ref()?;
    let mut metadata = meta::child_meta(app, app.generated_secret(&entry.env), COMPONENT);
    let secret_labels = metadata.labels.get_or_insert_with(BTreeMap::new);
    secret_labels.insert(labels::GENERATED_SECRET.into(), "true".into());
    // Watched: a deleted generated Secret is re-created at once, not at the next resync.
    secret_labels.insert(labels::WATCH.into(), "true".into());
    // Created once and never updated, so a version label would only go stale.
    secret_labels.remove(labels::VERSION);
    // Kept Secrets have no owner, so deleting the app does not garbage-collect them.
    if generate.retain() {
        metadata.owner_references = None;
    }
    Some(Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(names::GENERATED_SECRET_KEY.to_string(), ByteString(value.expose().to_vec()))])),
        immutable: None,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::app_from_yaml;

    #[test]
    fn generated_secret_holds_the_given_value_under_value() {
        let app = app_from_yaml("spec: {image: 'api:1', secrets: [{env: JWT_SECRET, generate: {length: 64}}]}");
        let entry = &app.spec.secrets()[0];
        let secret = build(&app, entry, &SecretValue::from_bytes(b"v".to_vec())).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("demo.gen.jwt-secret"));
        assert_eq!(secret.data.unwrap()["value"].0, b"v");
        assert_eq!(secret.metadata.labels.unwrap()[labels::GENERATED_SECRET], "true");
        assert!(secret.metadata.owner_references.is_some());
    }

    #[test]
    fn retained_secret_has_no_owner() {
        let app = app_from_yaml("spec: {image: 'api:1', secrets: [{env: K, generate: {retain: true}}]}");
        let secret = build(&app, &app.spec.secrets()[0], &SecretValue::from_bytes(b"v".to_vec())).unwrap();
        assert!(secret.metadata.owner_references.is_none());
    }

    #[test]
    fn referenced_secrets_are_not_built() {
        let app = app_from_yaml("spec: {image: 'api:1', secrets: [{env: K, secretKeyRef: {name: s, key: k}}]}");
        assert!(build(&app, &app.spec.secrets()[0], &SecretValue::from_bytes(vec![])).is_none());
    }
}
