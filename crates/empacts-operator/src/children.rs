//! Metadata caches of the children (fed by the controller's own watches) and the record of
//! what this process last applied, so a reconcile with nothing to change sends no write.
//!
//! A child is re-applied when: it is missing from the cache; the `empacts.io/applied` hash
//! on it differs from the hash of what we would apply now; or its generation (resourceVersion
//! for kinds without one) moved since our own last apply — someone else changed it, so
//! server-side apply must take our fields back. After a restart every child is applied once.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

/// Annotation carrying the hash of the object as the operator last applied it.
pub const APPLIED_ANNOTATION: &str = "empacts.io/applied";

/// Read handles of the metadata caches the controller keeps for its children.
#[derive(Clone)]
pub struct ChildStores {
    pub services: Store<PartialObjectMeta<Service>>,
    pub service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    pub hpas: Store<PartialObjectMeta<HorizontalPodAutoscaler>>,
    pub pdbs: Store<PartialObjectMeta<PodDisruptionBudget>>,
}

/// Looks up the cached metadata of a child by kind, namespace and name.
pub trait CachedMeta {
    fn cached_meta(stores: &ChildStores, namespace: &str, name: &str) -> Option<ObjectMeta>;
}

macro_rules! cached_meta {
    ($kind:ty, $field:ident) => {
        impl CachedMeta for $kind {
            fn cached_meta(stores: &ChildStores, namespace: &str, name: &str) -> Option<ObjectMeta> {
                let key = ObjectRef::<PartialObjectMeta<$kind>>::new(name).within(namespace);
                stores.$field.get(&key).map(|m| m.metadata.clone())
            }
        }
    };
}

cached_meta!(Service, services);
cached_meta!(ServiceAccount, service_accounts);
cached_meta!(ConfigMap, config_maps);
cached_meta!(HorizontalPodAutoscaler, hpas);
cached_meta!(PodDisruptionBudget, pdbs);

/// Generation if the kind has one, else resourceVersion: what moves when someone changes it.
pub fn change_marker(meta: &ObjectMeta) -> Option<String> {
    meta.generation.map(|g| format!("g{g}")).or_else(|| meta.resource_version.clone().map(|rv| format!("rv{rv}")))
}

/// What this process applied last, per child.
#[derive(Default)]
pub struct AppliedRecord {
    markers: Mutex<HashMap<(String, String, String), String>>,
}

impl AppliedRecord {
    pub fn record(&self, kind: &str, meta: &ObjectMeta) {
        if let (Some(ns), Some(name), Some(marker)) = (&meta.namespace, &meta.name, change_marker(meta)) {
            self.markers.lock().expect("applied record lock").insert((kind.into(), ns.clone(), name.clone()), marker);
        }
    }

    /// True when `live` still is exactly what we applied with hash `hash`.
    pub fn is_current(&self, kind: &str, live: &ObjectMeta, hash: &str) -> bool {
        let annotated = live.annotations.as_ref().and_then(|a| a.get(APPLIED_ANNOTATION)).is_some_and(|h| h == hash);
        let (Some(ns), Some(name)) = (&live.namespace, &live.name) else { return false };
        let ours =
            self.markers.lock().expect("applied record lock").get(&(kind.into(), ns.clone(), name.clone())).cloned();
        annotated && ours.is_some() && ours == change_marker(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn meta(generation: Option<i64>, rv: &str, hash: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some("a".into()),
            namespace: Some("ns".into()),
            generation,
            resource_version: Some(rv.into()),
            annotations: Some(BTreeMap::from([(APPLIED_ANNOTATION.to_string(), hash.to_string())])),
            ..Default::default()
        }
    }

    #[test]
    fn current_only_when_hash_and_marker_match_our_last_apply() {
        let record = AppliedRecord::default();
        let live = meta(Some(3), "10", "h1");
        assert!(!record.is_current("Deployment", &live, "h1"), "nothing recorded after a restart: apply once");
        record.record("Deployment", &live);
        assert!(record.is_current("Deployment", &live, "h1"));
        assert!(!record.is_current("Deployment", &live, "h2"), "desired state changed");
        assert!(!record.is_current("Deployment", &meta(Some(4), "11", "h1"), "h1"), "someone else changed the spec");
        assert!(record.is_current("Deployment", &meta(Some(3), "12", "h1"), "h1"), "status updates do not count");
        let svc = meta(None, "5", "h");
        record.record("Service", &svc);
        assert!(!record.is_current("Service", &meta(None, "6", "h"), "h"), "no generation: any change counts");
    }
}
