//! Metadata caches of the children (fed by the controller's own watches) and the record of
//! what this process last applied, so a reconcile with nothing to change sends no write.
//!
//! A child is re-applied when: it is missing from the cache; the `empacts.io/applied` hash
//! on it differs from the hash of what we would apply now; or its generation (resourceVersion
//! for kinds without one) moved since our own last apply — someone else changed it, so
//! server-side apply must take our fields back. After a restart every child is applied once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use empacts_api::labels;

use crate::observe::controlled_by;
use crate::registry::{CHILD_KINDS, Watch};
use crate::validate::ValidatedApp;

/// Annotation carrying the hash of the object as the operator last applied it.
pub const APPLIED_ANNOTATION: &str = "empacts.io/applied";

/// Read handles of the metadata caches the controller keeps, one per registered kind
/// watched by metadata ([`Watch::OwnedMetadata`]).
#[derive(Clone, Default)]
pub struct ChildStores {
    pub stores: BTreeMap<&'static str, Store<PartialObjectMeta<DynamicObject>>>,
    /// Full objects of the kinds whose status decides the rollout.
    pub deployments: Option<Store<Deployment>>,
    pub jobs: Option<Store<Job>>,
}

/// The cached metadata of one app's children, taken once per reconcile.
#[derive(Debug, Clone, Default)]
pub struct ChildMetas {
    /// The object named like the app, per cached kind (ConfigMaps are named by content).
    pub named: BTreeMap<&'static str, ObjectMeta>,
    /// Every cached ConfigMap of the app (by instance label).
    pub config_maps: Vec<ObjectMeta>,
    /// The caches exist (the controller runs); without them observe reads everything fresh.
    pub cached: bool,
    /// The app's Deployment and Jobs as cached (observe confirms an absence with a fresh read).
    pub deployment: Option<Deployment>,
    /// The canary Deployment (`<app>-canary`) as cached.
    pub canary: Option<Deployment>,
    pub jobs: Vec<Job>,
}

impl ChildMetas {
    pub fn snapshot(stores: Option<&ChildStores>, app: &ValidatedApp) -> Self {
        let Some(stores) = stores else { return ChildMetas::default() };
        let (ns, name) = (app.namespace.as_str(), app.name.as_str());
        let mut out =
            ChildMetas { cached: stores.deployments.is_some() && stores.jobs.is_some(), ..Default::default() };
        if let Some(deployments) = &stores.deployments {
            out.deployment = deployments.get(&ObjectRef::new(name).within(ns)).map(|d| d.as_ref().clone());
            let canary = crate::names::canary(name);
            out.canary = deployments.get(&ObjectRef::new(&canary).within(ns)).map(|d| d.as_ref().clone());
        }
        if let Some(jobs) = &stores.jobs {
            let ours = |j: &Job| {
                j.metadata.namespace.as_deref() == Some(ns)
                    && j.metadata.labels.as_ref().and_then(|l| l.get(labels::INSTANCE)).map(String::as_str)
                        == Some(name)
            };
            out.jobs = jobs.state().iter().filter(|j| ours(j)).map(|j| j.as_ref().clone()).collect();
        }
        for kind in CHILD_KINDS.iter().filter(|k| k.watch == Watch::OwnedMetadata) {
            let Some(store) = stores.stores.get(kind.kind) else { continue };
            if kind.kind == "ConfigMap" {
                let instance = |m: &PartialObjectMeta<DynamicObject>| {
                    m.metadata.labels.as_ref().and_then(|l| l.get(labels::INSTANCE)).map(String::as_str) == Some(name)
                };
                out.config_maps = store
                    .state()
                    .iter()
                    .filter(|m| m.metadata.namespace.as_deref() == Some(ns) && instance(m))
                    .map(|m| m.metadata.clone())
                    .collect();
                continue;
            }
            let key = ObjectRef::<PartialObjectMeta<DynamicObject>>::new_with(name, kind.api_resource()).within(ns);
            if let Some(meta) = store.get(&key) {
                out.named.insert(kind.kind, meta.metadata.clone());
            }
        }
        out
    }

    /// A child the app wants (`wanted`: kinds of its built children) whose name an object this
    /// app does not control holds.
    pub fn foreign(&self, app: &ValidatedApp, wanted: &[&str]) -> Option<String> {
        self.named.iter().find_map(|(kind, meta)| {
            let taken = wanted.contains(kind) && !controlled_by(meta, &app.uid);
            taken.then(|| format!("{kind} {}/{}", app.namespace, meta.name.clone().unwrap_or_default()))
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
            "ConfigMap" => self.config_maps.iter().find(named),
            _ => self.named.get(kind).filter(named),
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
    /// (namespace, app) -> (kind, child name) -> change marker; an app's group goes with it.
    markers: Mutex<HashMap<(String, String), Markers>>,
}

type Markers = HashMap<(String, String), String>;

/// The app controlling a child, from its controller reference.
fn owning_app(meta: &ObjectMeta) -> Option<String> {
    let refs = meta.owner_references.as_ref()?;
    refs.iter().find(|o| o.controller == Some(true) && o.kind == "EmpactsApp").map(|o| o.name.clone())
}

impl AppliedRecord {
    pub fn record(&self, kind: &str, meta: &ObjectMeta) {
        let (Some(ns), Some(name), Some(app), Some(marker)) =
            (&meta.namespace, &meta.name, owning_app(meta), change_marker(meta))
        else {
            return;
        };
        let mut markers = self.markers.lock().expect("applied record lock");
        markers.entry((ns.clone(), app)).or_default().insert((kind.into(), name.clone()), marker);
    }

    /// True when `live` still is exactly what we applied with hash `hash`.
    pub fn is_current(&self, kind: &str, live: &ObjectMeta, hash: &str) -> bool {
        let annotated = live.annotations.as_ref().and_then(|a| a.get(APPLIED_ANNOTATION)).is_some_and(|h| h == hash);
        let (Some(ns), Some(name), Some(app)) = (&live.namespace, &live.name, owning_app(live)) else { return false };
        let markers = self.markers.lock().expect("applied record lock");
        let ours = markers.get(&(ns.clone(), app)).and_then(|m| m.get(&(kind.into(), name.clone()))).cloned();
        annotated && ours.is_some() && ours == change_marker(live)
    }

    /// Drop what was recorded for a deleted app.
    pub fn forget(&self, namespace: &str, app: &str) {
        self.markers.lock().expect("applied record lock").remove(&(namespace.to_string(), app.to_string()));
    }

    /// Apps with records (for tests of pruning).
    pub fn apps(&self) -> usize {
        self.markers.lock().expect("applied record lock").len()
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
            owner_references: Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                kind: "EmpactsApp".into(),
                name: "app".into(),
                controller: Some(true),
                ..Default::default()
            }]),
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
        assert_eq!(record.apps(), 1);
        record.forget("ns", "app");
        assert_eq!(record.apps(), 0, "a deleted app leaves nothing behind");
        assert!(!record.is_current("Deployment", &live, "h1"));
    }
}
