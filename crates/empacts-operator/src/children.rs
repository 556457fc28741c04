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

use empacts_api::labels;

use crate::observe::controlled_by;
use crate::validate::ValidatedApp;

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

/// The cached metadata of one app's children, taken once per reconcile.
#[derive(Debug, Clone, Default)]
pub struct ChildMetas {
    pub service_account: Option<ObjectMeta>,
    pub service: Option<ObjectMeta>,
    pub hpa: Option<ObjectMeta>,
    pub pdb: Option<ObjectMeta>,
    /// Every cached ConfigMap of the app (by instance label).
    pub config_maps: Vec<ObjectMeta>,
}

impl ChildMetas {
    pub fn snapshot(stores: Option<&ChildStores>, app: &ValidatedApp) -> Self {
        let Some(stores) = stores else { return ChildMetas::default() };
        let (ns, name) = (app.namespace.as_str(), app.name.as_str());
        let config_maps = stores
            .config_maps
            .state()
            .iter()
            .filter(|m| m.metadata.namespace.as_deref() == Some(ns))
            .filter(|m| {
                m.metadata.labels.as_ref().and_then(|l| l.get(labels::INSTANCE)).map(String::as_str) == Some(name)
            })
            .map(|m| m.metadata.clone())
            .collect();
        ChildMetas {
            service_account: ServiceAccount::cached_meta(stores, ns, name),
            service: Service::cached_meta(stores, ns, name),
            hpa: HorizontalPodAutoscaler::cached_meta(stores, ns, name),
            pdb: PodDisruptionBudget::cached_meta(stores, ns, name),
            config_maps,
        }
    }

    /// A child the spec wants whose name an object this app does not control holds.
    pub fn foreign(&self, app: &ValidatedApp) -> Option<String> {
        let wanted = [
            ("ServiceAccount", self.service_account.as_ref(), true),
            ("Service", self.service.as_ref(), true),
            ("HorizontalPodAutoscaler", self.hpa.as_ref(), app.spec.autoscaling.is_some()),
            ("PodDisruptionBudget", self.pdb.as_ref(), app.spec.disruption.is_some()),
        ];
        wanted.into_iter().find_map(|(kind, meta, wanted)| {
            let meta = meta.filter(|m| wanted && !controlled_by(m, &app.uid))?;
            Some(format!("{kind} {}/{}", app.namespace, meta.name.clone().unwrap_or_default()))
        })
    }

    /// Names of the app's env ConfigMaps.
    pub fn config_maps(&self, app: &ValidatedApp) -> Vec<String> {
        self.config_maps
            .iter()
            .filter(|m| controlled_by(m, &app.uid))
            .filter(|m| {
                m.labels.as_ref().and_then(|l| l.get(labels::COMPONENT)).map(String::as_str)
                    == Some(crate::build::configmap::COMPONENT)
            })
            .filter_map(|m| m.name.clone())
            .collect()
    }

    /// The cached metadata of a child of this kind and name.
    pub fn get(&self, kind: &str, name: &str) -> Option<&ObjectMeta> {
        let named = |m: &&ObjectMeta| m.name.as_deref() == Some(name);
        match kind {
            "ServiceAccount" => self.service_account.as_ref().filter(named),
            "Service" => self.service.as_ref().filter(named),
            "HorizontalPodAutoscaler" => self.hpa.as_ref().filter(named),
            "PodDisruptionBudget" => self.pdb.as_ref().filter(named),
            "ConfigMap" => self.config_maps.iter().find(named),
            _ => None,
        }
    }
}

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
