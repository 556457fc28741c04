//! ConfigMap holding `spec.env`, loaded into the container with envFrom.
//!
//! Named by content and immutable: a change creates a new ConfigMap (and so a new pod
//! template), and an older revision restored by a rollback gets back its own config.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use crate::{build::meta, hash, names, validate::ValidatedApp};

pub const COMPONENT: &str = "config";

/// Name of the env ConfigMap for this env content, or None when there is no env.
pub fn name(app: &ValidatedApp, env: &BTreeMap<String, String>) -> Option<String> {
    (!env.is_empty()).then(|| names::env_config_map(&app.name, &hash::content_hash(env)))
}

pub fn build(app: &ValidatedApp) -> Option<ConfigMap> {
    let env = app.spec.env.clone().unwrap_or_default();
    let name = name(app, &env)?;
    Some(ConfigMap {
        metadata: meta::child_meta(app, name, COMPONENT),
        data: Some(env),
        immutable: Some(true),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::app_from_yaml;

    #[test]
    fn env_becomes_an_immutable_content_named_config_map() {
        let app = app_from_yaml("spec: {image: 'api:1', env: {NODE_ENV: production, LOG_LEVEL: info}}");
        let cm = build(&app).expect("env is set");
        let data = cm.data.as_ref().unwrap();
        assert_eq!(data["NODE_ENV"], "production");
        assert_eq!(data["LOG_LEVEL"], "info");
        assert_eq!(cm.immutable, Some(true));
        let name = cm.metadata.name.unwrap();
        assert!(name.starts_with("demo-env-"), "{name}");
        assert_eq!(cm.metadata.owner_references.unwrap()[0].name, "demo");
    }

    #[test]
    fn changing_env_changes_the_name() {
        let a = build(&app_from_yaml("spec: {image: 'api:1', env: {A: '1'}}")).unwrap();
        let b = build(&app_from_yaml("spec: {image: 'api:1', env: {A: '2'}}")).unwrap();
        assert_ne!(a.metadata.name, b.metadata.name);
    }

    #[test]
    fn no_env_no_config_map() {
        assert!(build(&app_from_yaml("spec: {image: 'api:1'}")).is_none());
    }
}
