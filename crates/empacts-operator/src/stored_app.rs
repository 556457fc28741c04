//! The apps as the work queue keeps them between reconciles.
//!
//! As a k8s-openapi-style object a settled app costs ~3 KB of heap (every string, map and
//! optional spec section its own block), and the store holds every app of the scope all the
//! time: ~30 MB at 10,000 apps. A reconcile needs the whole app only while it runs, so the
//! queue keeps what it routes by (namespace, name, the Secrets the spec reads) and the app
//! itself as compressed JSON ([`CompressedJson`]), unpacked when its reconcile starts.

use kube::ResourceExt;

use empacts_api::EmpactsApp;

use crate::compressed::CompressedJson;
use crate::names;

#[derive(Clone, Debug)]
pub struct StoredApp {
    /// The namespace, then the name, in one block.
    names: Box<str>,
    /// Where the name starts in `names` (a namespace is at most 63 bytes).
    split: u8,
    /// Keyed hashes of the names of the Secrets the spec reads: referenced ones, and generated
    /// ones under their current and legacy names (a watched Secret's change reconciles the
    /// apps listing it; two names sharing a hash would only cost a reconcile).
    secrets: Box<[u64]>,
    app: CompressedJson,
}

/// The key of a Secret's name in [`StoredApp::reads_secret`].
fn secret_key(name: &str) -> u64 {
    static KEYS: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    std::hash::BuildHasher::hash_one(KEYS.get_or_init(Default::default), name)
}

impl StoredApp {
    pub fn of(app: &EmpactsApp) -> Self {
        let name = app.name_any();
        let secrets = app
            .spec
            .secrets()
            .iter()
            .flat_map(|e| match &e.secret_key_ref {
                Some(r) => vec![secret_key(&r.name)],
                None => vec![
                    secret_key(&names::generated_secret(&name, &e.env)),
                    secret_key(&names::legacy_generated_secret(&name, &e.env)),
                ],
            })
            .collect();
        let namespace = app.metadata.namespace.as_deref().unwrap_or_default();
        // The API server limits a namespace's name to 63 bytes.
        let split = u8::try_from(namespace.len()).expect("a namespace name of at most 63 bytes");
        StoredApp { names: format!("{namespace}{name}").into(), split, secrets, app: CompressedJson::pack(app) }
    }

    pub fn namespace(&self) -> &str {
        &self.names[..usize::from(self.split)]
    }

    pub fn name(&self) -> &str {
        &self.names[usize::from(self.split)..]
    }

    /// Its key in the per-app maps.
    pub fn id(&self) -> crate::context::AppId {
        crate::context::AppId::new(self.namespace(), self.name())
    }

    /// The app as it was stored.
    pub fn app(&self) -> EmpactsApp {
        // Packed by `of` from the same type (tested on every spec section): it reads back.
        self.app.unpack().expect("a stored EmpactsApp reads back")
    }

    /// The spec reads the Secret `name` (of the app's namespace).
    pub fn reads_secret(&self, name: &str) -> bool {
        let key = secret_key(name);
        self.secrets.contains(&key)
    }

    /// Heap bytes of the packed app.
    pub fn packed_size(&self) -> usize {
        self.app.heap_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn examples() -> Vec<EmpactsApp> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
        let mut apps = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = serde_yaml::Value::deserialize(doc).unwrap();
                if value.get("kind").and_then(|k| k.as_str()) == Some("EmpactsApp") {
                    apps.push(serde_yaml::from_value(value).unwrap());
                }
            }
        }
        apps
    }

    /// An app with every spec section and a status.
    fn full() -> EmpactsApp {
        let mut app = examples().into_iter().max_by_key(|a| serde_json::to_string(a).unwrap().len()).unwrap();
        app.metadata.namespace = Some("team".into());
        app.metadata.uid = Some("uid-1".into());
        app.metadata.resource_version = Some("42".into());
        app.metadata.annotations = Some([("empacts.io/rollback-to".to_string(), "3".to_string())].into());
        app.metadata.labels = Some([("empacts.io/shard-key".to_string(), "a".to_string())].into());
        app.status = Some(
            serde_json::from_value(serde_json::json!({
                "phase": "Ready", "observedGeneration": 3, "currentRevision": "abc", "shard": "0-of-2",
                "conditions": [{"type": "Ready", "status": "True", "reason": "Available", "message": "ok",
                                "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 3}]
            }))
            .unwrap(),
        );
        app
    }

    #[test]
    fn every_example_app_reads_back_as_it_was_stored() {
        let apps = examples();
        assert!(apps.len() >= 3, "the examples hold apps: {}", apps.len());
        for app in apps.into_iter().chain([full()]) {
            let stored = StoredApp::of(&app);
            assert_eq!(stored.app(), app);
            assert_eq!(Some(stored.name()), app.metadata.name.as_deref());
            assert_eq!(stored.namespace(), app.metadata.namespace.as_deref().unwrap_or_default());
            assert_eq!(stored.id(), crate::context::AppId::of(&app));
        }
    }

    #[test]
    fn it_knows_the_secrets_its_spec_reads() {
        let app: EmpactsApp = serde_json::from_value(serde_json::json!({
            "apiVersion": "empacts.io/v1alpha1", "kind": "EmpactsApp",
            "metadata": {"name": "api", "namespace": "team"},
            "spec": {"image": "api:1", "secrets": [
                {"env": "DB", "secretKeyRef": {"name": "db", "key": "url"}},
                {"env": "JWT", "generate": {}}
            ]}
        }))
        .unwrap();
        let stored = StoredApp::of(&app);
        assert!(stored.reads_secret("db"));
        assert!(stored.reads_secret(&names::generated_secret("api", "JWT")));
        assert!(stored.reads_secret(&names::legacy_generated_secret("api", "JWT")));
        assert!(!stored.reads_secret("other"));
    }

    #[test]
    fn a_settled_app_is_stored_in_a_fraction_of_its_json() {
        let app = full();
        let json = serde_json::to_vec(&app).unwrap().len();
        let packed = StoredApp::of(&app).packed_size();
        assert!(packed * 2 < json, "{packed} of {json}");
    }
}
