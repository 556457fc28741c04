//! One reconcile's view of an app's children, taken from the controller's caches (compact
//! records, see `child_cache`), and the record of what this process last applied, so a
//! reconcile with nothing to change sends no write.
//!
//! A child is re-applied when: it is missing from the cache; the `empacts.io/applied` hash
//! on it differs from the hash of what we would apply now; or its generation (resourceVersion
//! for kinds without one) moved since our own last apply — someone else changed it, so
//! server-side apply must take our fields back. After a restart (nothing recorded yet) a child
//! whose hash is current is applied again only if another manager owns content of it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube::api::DynamicObject;

use empacts_api::labels;

use crate::child_cache::{CachedChild, ChildCache, DeploymentRecord, JobRecord};
use crate::observe::controlled_by;
use crate::registry::{CHILD_KINDS, Watch, child_kind};
use crate::validate::ValidatedApp;

/// Annotation carrying the hash of the object as the operator last applied it.
pub const APPLIED_ANNOTATION: &str = "empacts.io/applied";

/// Read handles of the metadata caches the controller keeps, one per registered kind
/// watched by metadata ([`Watch::OwnedMetadata`], [`Watch::OwnedSpecHash`]).
#[derive(Clone, Default)]
pub struct ChildStores {
    pub stores: BTreeMap<&'static str, Arc<ChildCache>>,
    /// Records of the kinds whose status decides the rollout (Jobs read by instance).
    pub deployments: Option<Arc<ChildCache<DeploymentRecord>>>,
    pub jobs: Option<Arc<ChildCache<JobRecord>>>,
    /// Metadata of the watched (labelled) Secrets.
    pub secrets: Option<Arc<ChildCache>>,
    /// The ledger's ControllerRevisions (compacted; see `ledger_cache`).
    pub revisions: Option<Arc<crate::ledger_cache::RevisionCache>>,
}

impl ChildStores {
    /// The kinds whose cache has not listed yet (the ledger's is read fresh until it has).
    pub fn not_listed(&self) -> Vec<&'static str> {
        let typed = [
            ("Deployment", self.deployments.as_ref().is_none_or(|c| c.listed())),
            ("Job", self.jobs.as_ref().is_none_or(|c| c.listed())),
            ("Secret", self.secrets.as_ref().is_none_or(|c| c.listed())),
        ];
        let registered = self.stores.iter().map(|(kind, cache)| (*kind, cache.listed()));
        typed.into_iter().chain(registered).filter(|(_, listed)| !listed).map(|(kind, _)| kind).collect()
    }
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
    /// The app's Deployment and Jobs as cached (observe confirms an absence with a fresh read
    /// unless `deployment_absent`).
    pub deployment: Option<Deployment>,
    /// The Deployment is absent from a cache that has listed, and this process has not written
    /// it: it does not exist, as far as the watch can tell (set by the reconcile, which knows
    /// this process's writes). Without it every reconcile before the first rollout would read
    /// the Deployment fresh (and get 404).
    pub deployment_absent: bool,
    /// The watched-Secret cache has listed: a generated Secret it does not show, and this
    /// process has not written or read, does not exist as far as the watch can tell.
    pub secrets_listed: bool,
    /// The canary Deployment (`<app>-canary`) as cached.
    pub canary: Option<Deployment>,
    pub jobs: Vec<Job>,
    /// Versions of the watched Secrets the app's spec names (generated and referenced).
    pub secrets: BTreeMap<String, crate::secret_reads::Version>,
    /// The app's ControllerRevisions from the ledger cache with this process's own writes laid
    /// over them; None: read them fresh (no cache, or it has not listed yet).
    pub revisions: Option<Vec<k8s_openapi::api::apps::v1::ControllerRevision>>,
}

impl ChildMetas {
    pub fn snapshot(stores: Option<&ChildStores>, app: &ValidatedApp) -> Self {
        let Some(stores) = stores else { return ChildMetas::default() };
        let (ns, name) = (app.namespace.as_str(), app.name.as_str());
        let mut out =
            ChildMetas { cached: stores.deployments.is_some() && stores.jobs.is_some(), ..Default::default() };
        if let Some(deployments) = &stores.deployments {
            out.deployment = deployments.record(ns, name).map(|d| d.expand(ns));
            out.deployment_absent = out.deployment.is_none() && deployments.listed();
            out.canary = deployments.record(ns, &crate::names::canary(name)).map(|d| d.expand(ns));
        }
        if let Some(jobs) = &stores.jobs {
            out.jobs = jobs.records_of_instance(ns, name).iter().map(|j| j.expand(ns)).collect();
        }
        if let Some(secrets) = &stores.secrets {
            out.secrets = watched_secrets(secrets, app);
            out.secrets_listed = secrets.listed();
        }
        for kind in CHILD_KINDS.iter().filter(|k| k.cached()) {
            let Some(cache) = stores.stores.get(kind.kind) else { continue };
            if kind.kind == "ConfigMap" {
                out.config_maps = cache.of_instance(ns, name);
                continue;
            }
            if let Some(meta) = cache.get(ns, name) {
                out.named.insert(kind.kind, meta);
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

/// The watched Secrets among those `app`'s spec names, with their versions.
fn watched_secrets(cache: &ChildCache, app: &ValidatedApp) -> BTreeMap<String, crate::secret_reads::Version> {
    let names = app.spec.secrets().iter().flat_map(|e| match &e.secret_key_ref {
        Some(r) => vec![r.name.clone()],
        None => vec![
            crate::names::generated_secret(&app.name, &e.env),
            crate::names::legacy_generated_secret(&app.name, &e.env),
        ],
    });
    names
        .filter_map(|name| {
            let record = cache.record(&app.namespace, &name)?;
            let (uid, resource_version) = record.version()?;
            let version = crate::secret_reads::Version { uid, resource_version: resource_version.to_string() };
            Some((name, version))
        })
        .collect()
}

/// Annotation on the *cached* metadata (never on the server) of kinds watched with
/// [`Watch::OwnedSpecHash`]: a hash of the object's spec, which they lack a generation for.
pub const SPEC_HASH_ANNOTATION: &str = "empacts.io/cached-spec-hash";

/// What the caches keep of a child's field ownership: who wrote it, not which fields (the
/// field sets are often the larger part of an object's metadata, and every cached child has
/// them). Our own entries stay as manager, operation and subresource: an Update entry of ours
/// tells that our create still needs its upgrade to Apply (`apply::upgraded_managed_fields`,
/// which reads the fields fresh). Another manager's entry stays, reduced the same way, only
/// when it owns content of the object (anything outside `status` and `metadata.annotations`):
/// it tells that the object may no longer be what we wrote (`AppliedRecord::is_current`).
pub fn trim_for_cache(meta: &mut ObjectMeta) {
    if let Some(fields) = meta.managed_fields.as_mut() {
        fields.retain(|f| f.manager.as_deref() == Some(crate::apply::FIELD_MANAGER) || owns_content(f));
        for f in fields.iter_mut() {
            *f = ManagedFieldsEntry {
                manager: f.manager.take(),
                operation: f.operation.take(),
                subresource: f.subresource.take(),
                ..Default::default()
            };
        }
    }
}

/// The entry owns a field of the object's content: anything but its status and annotations
/// (another controller's annotation, like a Deployment's revision, is not a change of ours).
/// An entry without a field set counts as owning content.
pub(crate) fn owns_content(entry: &ManagedFieldsEntry) -> bool {
    let Some(fields) = entry.fields_v1.as_ref().and_then(|f| f.0.as_object()) else { return true };
    fields.iter().any(|(key, value)| match key.as_str() {
        "f:status" | "." => false,
        "f:metadata" => value.as_object().is_none_or(|m| m.keys().any(|k| k != "f:annotations" && k != ".")),
        _ => true,
    })
}

/// No manager but this operator owns content of the object, as far as the cached entries tell
/// (see [`trim_for_cache`]): what it holds is what we last wrote.
pub fn only_ours(meta: &ObjectMeta) -> bool {
    meta.managed_fields
        .as_ref()
        .is_some_and(|fields| fields.iter().all(|f| f.manager.as_deref() == Some(crate::apply::FIELD_MANAGER)))
}

/// What the app cache keeps of an EmpactsApp's metadata: not its field ownership nor kubectl's
/// copy of the last applied object (together often larger than the spec), which no reconcile
/// reads; status is written by a server-side apply of status alone, so nothing the cache
/// dropped is ever written back.
pub fn trim_app_for_cache(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Annotation on metadata rebuilt from a cache record (never on the server): the change
/// marker of the object as it arrived, which the record keeps instead of its labels and
/// annotations.
pub const CHANGE_MARKER_ANNOTATION: &str = "empacts.io/cached-change-marker";

/// What the applied record keeps of an object a write returned: the metadata the caches
/// would hand out for it (see `child_cache`), so markers compare like with like.
pub fn cached_meta(kind: &str, obj: &DynamicObject) -> ObjectMeta {
    compacted(&spec_hashed_meta(kind, obj))
}

/// `meta` (trimmed) as a cache record rebuilt.
pub fn compacted(meta: &ObjectMeta) -> ObjectMeta {
    let mut meta = meta.clone();
    trim_for_cache(&mut meta);
    CachedChild::of(&meta).expand(meta.namespace.as_deref().unwrap_or_default())
}

/// The metadata of a child as its watch passes it on (trimmed): for kinds without a
/// generation whose status moves on its own, with a hash of the spec.
pub fn spec_hashed_meta(kind: &str, obj: &DynamicObject) -> ObjectMeta {
    let mut meta = obj.metadata.clone();
    trim_for_cache(&mut meta);
    if child_kind(kind).is_some_and(|k| k.watch == Watch::OwnedSpecHash) {
        let spec = obj.data.get("spec").cloned().unwrap_or_default();
        let hash = crate::hash::content_hash(&spec);
        meta.annotations.get_or_insert_with(Default::default).insert(SPEC_HASH_ANNOTATION.into(), hash);
    }
    meta
}

/// What moves when someone else changes a child: its generation if the kind has one; else,
/// when the cache hashed its spec, that hash with the labels and annotations (a status
/// write moves neither); else the resourceVersion (any write).
pub fn change_marker(meta: &ObjectMeta) -> Option<String> {
    let annotations = meta.annotations.as_ref();
    if let Some(marker) = annotations.and_then(|a| a.get(CHANGE_MARKER_ANNOTATION)) {
        return Some(marker.clone());
    }
    if let Some(g) = meta.generation {
        return Some(format!("g{g}"));
    }
    let annotations = meta.annotations.as_ref();
    if annotations.is_some_and(|a| a.contains_key(SPEC_HASH_ANNOTATION)) {
        let content = serde_json::json!([meta.labels, annotations, meta.owner_references.as_ref().map(Vec::len)]);
        return Some(format!("s{}", crate::hash::content_hash(&content)));
    }
    meta.resource_version.clone().map(|rv| format!("rv{rv}"))
}

/// What this process applied last, per child.
#[derive(Default)]
pub struct AppliedRecord {
    /// (namespace, app) -> per child: hashes of (kind, name) and of its change marker; an
    /// app's group goes with it. Hashes (keyed per process, 64 bits: a false match between an
    /// app's ~10 children is ~2^-60) instead of the strings: 16 bytes per child, not ~150.
    markers: Mutex<HashMap<crate::context::AppId, Vec<(u64, u64)>>>,
    keys: std::collections::hash_map::RandomState,
}

/// The app controlling a child, from its controller reference.
fn owning_app(meta: &ObjectMeta) -> Option<String> {
    let refs = meta.owner_references.as_ref()?;
    refs.iter().find(|o| o.controller == Some(true) && o.kind == "EmpactsApp").map(|o| o.name.clone())
}

impl AppliedRecord {
    fn child(&self, kind: &str, name: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.keys, (kind, name))
    }

    fn marker(&self, marker: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.keys, marker)
    }

    pub fn record(&self, kind: &str, meta: &ObjectMeta) {
        let (Some(ns), Some(name), Some(app), Some(marker)) =
            (&meta.namespace, &meta.name, owning_app(meta), change_marker(meta))
        else {
            return;
        };
        let (child, marker) = (self.child(kind, name), self.marker(&marker));
        let mut markers = self.markers.lock().expect("applied record lock");
        let children = markers.entry(crate::context::AppId::new(ns, &app)).or_default();
        match children.iter_mut().find(|(c, _)| *c == child) {
            Some(entry) => entry.1 = marker,
            None => children.push((child, marker)),
        }
    }

    fn recorded(&self, kind: &str, namespace: &str, app: &str, name: &str) -> Option<u64> {
        let child = self.child(kind, name);
        let markers = self.markers.lock().expect("applied record lock");
        markers.get(&crate::context::AppId::new(namespace, app))?.iter().find(|(c, _)| *c == child).map(|(_, m)| *m)
    }

    /// True when `live` still is exactly what we applied with hash `hash`.
    pub fn is_current(&self, kind: &str, live: &ObjectMeta, hash: &str) -> bool {
        let annotated = live.annotations.as_ref().and_then(|a| a.get(APPLIED_ANNOTATION)).is_some_and(|h| h == hash);
        let (Some(ns), Some(name), Some(app)) = (&live.namespace, &live.name, owning_app(live)) else { return false };
        match self.recorded(kind, ns, &app, name) {
            Some(ours) => annotated && Some(ours) == change_marker(live).map(|m| self.marker(&m)),
            // Nothing recorded (this process has not written it: after a restart): the hash
            // says our last write was this content, and no one else's entry says they changed
            // it since. Without this, a restart re-applies every child of every app.
            None => annotated && only_ours(live),
        }
    }

    /// Whether this process wrote `kind` `name` of `app` (created or applied it): a cache that
    /// does not show it yet lags behind our own write.
    pub fn wrote(&self, kind: &str, namespace: &str, app: &str, name: &str) -> bool {
        self.recorded(kind, namespace, app, name).is_some()
    }

    /// Drop what was recorded for a deleted app.
    pub fn forget(&self, namespace: &str, app: &str) {
        self.markers.lock().expect("applied record lock").remove(&crate::context::AppId::new(namespace, app));
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

    #[test]
    fn the_applied_record_tells_our_writes_per_app_and_forgets_an_app_whole() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let meta = |app: &str, generation: i64| ObjectMeta {
            name: Some("api".into()),
            namespace: Some("ns".into()),
            generation: Some(generation),
            owner_references: Some(vec![OwnerReference {
                kind: "EmpactsApp".into(),
                name: app.into(),
                controller: Some(true),
                ..Default::default()
            }]),
            annotations: Some([(APPLIED_ANNOTATION.to_string(), "h".to_string())].into()),
            ..Default::default()
        };
        let record = AppliedRecord::default();
        record.record("Service", &meta("api", 1));
        assert!(record.wrote("Service", "ns", "api", "api"));
        assert!(!record.wrote("Deployment", "ns", "api", "api"), "another kind");
        assert!(!record.wrote("Service", "ns", "web", "api"), "another app");
        assert!(!record.wrote("Service", "other", "api", "api"), "another namespace");
        assert!(record.is_current("Service", &meta("api", 1), "h"));
        assert!(!record.is_current("Service", &meta("api", 1), "h2"), "the desired content moved");
        assert!(!record.is_current("Service", &meta("api", 2), "h"), "someone else changed it since");
        record.record("Service", &meta("api", 2));
        assert!(record.is_current("Service", &meta("api", 2), "h"), "our newer write replaces the older");
        record.forget("ns", "api");
        assert!(!record.wrote("Service", "ns", "api", "api"));
        assert_eq!(record.apps(), 0);
    }

    #[test]
    fn the_kinds_whose_cache_has_not_listed_are_named_until_their_list_is_done() {
        use kube::api::DynamicObject;
        use kube::core::PartialObjectMeta;
        use kube::runtime::watcher::Event;
        let services = Arc::new(ChildCache::by_name());
        let deployments = Arc::new(ChildCache::<crate::child_cache::DeploymentRecord>::by_name());
        let stores = ChildStores {
            stores: [("Service", services.clone())].into(),
            deployments: Some(deployments.clone()),
            ..Default::default()
        };
        assert_eq!(stores.not_listed(), ["Deployment", "Service"]);
        services.apply(&Event::<PartialObjectMeta<DynamicObject>>::Init);
        assert_eq!(stores.not_listed(), ["Deployment", "Service"], "listing is not listed");
        services.apply(&Event::<PartialObjectMeta<DynamicObject>>::InitDone);
        deployments.apply_with(&Event::<k8s_openapi::api::apps::v1::Deployment>::InitDone, |_| unreachable!());
        assert!(stores.not_listed().is_empty());
    }

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
        assert!(!record.is_current("Deployment", &live, "h1"), "nothing recorded, no ownership known: apply");
        record.record("Deployment", &live);
        assert!(record.is_current("Deployment", &live, "h1"));
        assert!(!record.is_current("Deployment", &live, "h2"), "desired state changed");
        assert!(!record.is_current("Deployment", &meta(Some(4), "11", "h1"), "h1"), "someone else changed the spec");
        assert!(record.is_current("Deployment", &meta(Some(3), "12", "h1"), "h1"), "status updates do not count");
        let sa = meta(None, "5", "h");
        record.record("ServiceAccount", &sa);
        assert!(!record.is_current("ServiceAccount", &meta(None, "6", "h"), "h"), "no generation: any change counts");
        assert_eq!(record.apps(), 1);
        record.forget("ns", "app");
        assert_eq!(record.apps(), 0, "a deleted app leaves nothing behind");
        assert!(!record.is_current("Deployment", &live, "h1"));
    }

    fn hpa(rv: &str, max: i32, current: i32) -> DynamicObject {
        let mut obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": meta(None, rv, "h"),
            "spec": {"maxReplicas": max, "scaleTargetRef": {"kind": "Deployment", "name": "a"}},
            "status": {"currentReplicas": current},
        }))
        .unwrap();
        obj.metadata.resource_version = Some(rv.into());
        obj
    }

    #[test]
    fn without_a_generation_a_hashed_spec_ignores_status_writes_but_not_spec_or_label_edits() {
        let record = AppliedRecord::default();
        record.record("HorizontalPodAutoscaler", &cached_meta("HorizontalPodAutoscaler", &hpa("5", 4, 1)));
        let live = |obj: DynamicObject| cached_meta("HorizontalPodAutoscaler", &obj);
        assert!(record.is_current("HorizontalPodAutoscaler", &live(hpa("6", 4, 3)), "h"), "a status write");
        assert!(!record.is_current("HorizontalPodAutoscaler", &live(hpa("7", 9, 3)), "h"), "a spec edit");
        let mut labelled = hpa("8", 4, 3);
        labelled.metadata.labels = Some(BTreeMap::from([("x".to_string(), "y".to_string())]));
        assert!(!record.is_current("HorizontalPodAutoscaler", &live(labelled), "h"), "a label edit");
        // Kinds watched by metadata keep no spec hash: any write counts for them.
        assert!(
            !spec_hashed_meta("ServiceAccount", &hpa("9", 4, 3))
                .annotations
                .unwrap()
                .contains_key(SPEC_HASH_ANNOTATION)
        );
    }

    #[test]
    fn the_cache_keeps_who_owns_content_not_which_fields() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1;
        let entry = |manager: &str, operation: &str, fields: serde_json::Value| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            api_version: Some("v1".into()),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        };
        let ours = crate::apply::FIELD_MANAGER;
        let spec = serde_json::json!({"f:spec": {"f:replicas": {}}});
        let mut m = meta(Some(1), "1", "h");
        m.managed_fields = Some(vec![
            entry(ours, "Update", spec.clone()),
            // A Deployment's revision annotation and status: not content of ours.
            entry(
                "kube-controller-manager",
                "Update",
                serde_json::json!({"f:metadata": {"f:annotations": {"f:deployment.kubernetes.io/revision": {}}}, "f:status": {}}),
            ),
            entry(ours, "Apply", spec.clone()),
        ]);
        trim_for_cache(&mut m);
        let kept = |m: &ObjectMeta| -> Vec<(String, String)> {
            m.managed_fields.clone().unwrap().into_iter().map(|f| (f.manager.unwrap(), f.operation.unwrap())).collect()
        };
        assert_eq!(kept(&m), vec![(ours.into(), "Update".into()), (ours.into(), "Apply".into())]);
        assert!(m.managed_fields.iter().flatten().all(|f| f.fields_v1.is_none() && f.api_version.is_none()));
        assert!(only_ours(&m));
        for theirs in [
            entry("kubectl", "Apply", spec.clone()),
            entry("kubectl-label", "Update", serde_json::json!({"f:metadata": {"f:labels": {"f:x": {}}}})),
            ManagedFieldsEntry { manager: Some("unknown".into()), ..Default::default() },
        ] {
            let mut m = meta(Some(1), "1", "h");
            m.managed_fields = Some(vec![entry(ours, "Apply", spec.clone()), theirs.clone()]);
            trim_for_cache(&mut m);
            assert_eq!(m.managed_fields.as_ref().map(Vec::len), Some(2), "{theirs:?} stays");
            assert!(!only_ours(&m), "{theirs:?} owns content");
        }
    }

    #[test]
    fn after_a_restart_a_child_only_we_wrote_with_the_desired_hash_is_current() {
        let record = AppliedRecord::default();
        let mut live = meta(Some(3), "10", "h1");
        live.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some(crate::apply::FIELD_MANAGER.into()),
            operation: Some("Update".into()),
            ..Default::default()
        }]);
        assert!(record.is_current("Deployment", &live, "h1"), "our create, as desired, untouched");
        assert!(!record.is_current("Deployment", &live, "h2"), "desired state changed");
        let mut edited = live.clone();
        edited.managed_fields.as_mut().unwrap().push(ManagedFieldsEntry {
            manager: Some("kubectl-edit".into()),
            operation: Some("Update".into()),
            ..Default::default()
        });
        assert!(!record.is_current("Deployment", &edited, "h1"), "someone else changed content");
        let mut unknown = live.clone();
        unknown.managed_fields = None;
        assert!(!record.is_current("Deployment", &unknown, "h1"), "no ownership known: apply");
        // Once this process recorded a write, its marker decides.
        record.record("Deployment", &live);
        assert!(!record.is_current("Deployment", &meta(Some(4), "11", "h1"), "h1"), "generation moved");
    }

    fn size(value: &impl serde::Serialize) -> usize {
        serde_json::to_vec(value).unwrap().len()
    }

    #[test]
    fn the_deployment_cache_keeps_what_a_reconcile_reads() {
        use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let app = crate::build::test_support::app_from_yaml(
            "spec: {image: 'api:1', replicas: 3, env: {A: b}, secrets: [{env: S, generate: {}}]}",
        );
        let mut deployment = crate::build::deployment::build(&app, "r1", Some("hash-1"), None);
        deployment.spec.as_mut().unwrap().replicas = Some(5);
        deployment.metadata.generation = Some(4);
        deployment.metadata.uid = Some("d-1".into());
        deployment
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(APPLIED_ANNOTATION.into(), "h".into());
        deployment.metadata.managed_fields = Some(vec![
            ManagedFieldsEntry { manager: Some(crate::apply::FIELD_MANAGER.into()), ..Default::default() },
            ManagedFieldsEntry { manager: Some("kube-controller-manager".into()), ..Default::default() },
        ]);
        deployment.status = Some(DeploymentStatus {
            observed_generation: Some(4),
            replicas: Some(5),
            updated_replicas: Some(4),
            ready_replicas: Some(3),
            available_replicas: Some(3),
            conditions: Some(vec![
                DeploymentCondition { type_: "Available".into(), status: "True".into(), ..Default::default() },
                DeploymentCondition {
                    type_: "Progressing".into(),
                    status: "False".into(),
                    reason: Some("ProgressDeadlineExceeded".into()),
                    last_update_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::from_second(100).unwrap(),
                    )),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        });
        let cached = DeploymentRecord::of(&deployment).expand(deployment.metadata.namespace.as_deref().unwrap());
        let state = crate::observe::deployment_state;
        assert_eq!(state(&cached), state(&deployment));
        let spec = cached.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(5), "ApplyDeployment and scale read the live replicas");
        let template_annotations = spec.template.metadata.as_ref().and_then(|m| m.annotations.as_ref());
        assert_eq!(
            template_annotations,
            deployment.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref(),
            "the config hash observe reads stays"
        );
        assert!(spec.template.spec.is_none(), "the pod spec goes");
        assert_eq!(cached.metadata.uid, deployment.metadata.uid);
        assert!(crate::observe::controlled_by(&cached.metadata, &app.uid));
        let record = AppliedRecord::default();
        record.record("Deployment", &compacted(&deployment.metadata));
        assert!(record.is_current("Deployment", &cached.metadata, "h"), "what we applied, read back from the cache");
        let mut trimmed = deployment.metadata.clone();
        trim_for_cache(&mut trimmed);
        assert_eq!(only_ours(&cached.metadata), only_ours(&trimmed), "who owns content");
        assert!(!only_ours(&cached.metadata));
        assert!(size(&cached) < size(&deployment), "{} of {} bytes", size(&cached), size(&deployment));
    }

    #[test]
    fn the_job_cache_keeps_what_a_reconcile_reads() {
        use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let app = crate::build::test_support::app_from_yaml(
            "spec: {image: 'api:1', env: {A: b}, migration: {command: [migrate], rollbackCommand: [down]}}",
        );
        let at = |s| Some(Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap()));
        let condition = |type_: &str| JobCondition {
            type_: type_.into(),
            status: "True".into(),
            reason: Some("BackoffLimitExceeded".into()),
            message: Some("exit 1".into()),
            last_transition_time: at(150),
            ..Default::default()
        };
        for (mut job, conditions) in [
            (
                crate::build::job::migration(&app, "r1", 2).unwrap(),
                vec![condition("FailureTarget"), condition("Failed")],
            ),
            (
                crate::build::job::rollback(&app, "r1", 1).unwrap(),
                vec![condition("SuccessCriteriaMet"), condition("Complete")],
            ),
            (crate::build::job::rollback(&app, "r2", 1).unwrap(), vec![]),
        ] {
            job.metadata.uid = Some("j-1".into());
            job.spec.as_mut().unwrap().ttl_seconds_after_finished = Some(60);
            job.status = Some(JobStatus {
                start_time: at(100),
                completion_time: at(160),
                conditions: Some(conditions),
                ..Default::default()
            });
            let cached = JobRecord::of(&job).expand(job.metadata.namespace.as_deref().unwrap());
            assert_eq!(crate::observe::job_state(Some(&cached)), crate::observe::job_state(Some(&job)));
            let label = |j: &Job, key: &str| j.metadata.labels.as_ref().and_then(|l| l.get(key)).cloned();
            for key in [labels::COMPONENT, labels::REVISION, labels::INSTANCE] {
                assert_eq!(label(&cached, key), label(&job, key), "{key}: kind and revision of the Job");
            }
            let attempt =
                |j: &Job| j.metadata.annotations.as_ref().and_then(|a| a.get(crate::ledger::JOB_ATTEMPT)).cloned();
            assert_eq!(attempt(&cached), attempt(&job));
            assert_eq!(cached.metadata.name, job.metadata.name);
            assert_eq!(cached.metadata.uid, job.metadata.uid);
            assert!(crate::observe::controlled_by(&cached.metadata, &app.uid));
            let status = cached.status.as_ref().unwrap();
            let original = job.status.as_ref().unwrap();
            assert_eq!(
                (&status.start_time, &status.completion_time),
                (&original.start_time, &original.completion_time)
            );
            let finished =
                status.conditions.iter().flatten().map(|c| (c.type_.clone(), c.last_transition_time.clone()));
            let wanted = original.conditions.iter().flatten().filter(|c| c.type_ == "Complete" || c.type_ == "Failed");
            assert_eq!(
                finished.collect::<Vec<_>>(),
                wanted.map(|c| (c.type_.clone(), c.last_transition_time.clone())).collect::<Vec<_>>()
            );
            assert_eq!(cached.spec.as_ref().unwrap().ttl_seconds_after_finished, Some(60), "expiring");
            assert!(cached.spec.as_ref().unwrap().template.spec.is_none(), "the pod template goes");
            assert!(size(&cached) < size(&job), "{} of {} bytes", size(&cached), size(&job));
        }
    }
}
