//! Compact caches of the children watched by metadata (ServiceAccount, Service, HPA, PDB,
//! ConfigMap, ...) and of the watched Secrets.
//!
//! A k8s-openapi `ObjectMeta` in a kube reflector store costs ~3.5 KB per object once its
//! labels and annotations (B-tree maps of owned strings), owner references and the store's
//! key (which for dynamic kinds carries a copy of the kind's five-string `ApiResource`) are
//! counted; an app has ~7 such objects. What a reconcile reads of them fits in a record of
//! a few hundred bytes: name, UID, version, the controller reference, the two labels that
//! group children, the applied hash, the change marker, and whose field ownership it has.
//! Reads hand out an `ObjectMeta` rebuilt from the record ([`CachedChild::expand`]), so the
//! code that decides and applies reads the same type as from a fresh GET.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::RwLock;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta, OwnerReference, Time};
use kube::runtime::watcher;

use empacts_api::{annotations, labels};

use crate::children::{APPLIED_ANNOTATION, CHANGE_MARKER_ANNOTATION, SPEC_HASH_ANNOTATION};

/// Name of the manager standing for any other manager that owns content (see
/// `children::trim_for_cache`) in a rebuilt object.
const ANOTHER_MANAGER: &str = "another-manager";

/// What the cache keeps of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedChild {
    /// Name, UID, version, labels, annotations and the controller reference, in one block.
    strings: Packed<STRINGS>,
    generation: Option<i64>,
    /// What a trigger compares: generation (or spec hash), labels, annotations, owners; None
    /// for kinds with neither a generation nor a spec hash (every update triggers).
    fingerprint: Option<u64>,
    /// Owner references in all (a change of them is a change of the object).
    owners: u8,
    fields: Fields,
    /// Strings not kept because they repeat another or the usual value (`SAME_*` bits).
    same: u8,
}

// Bits of `CachedChild::same`: most children are named like their app, and all are controlled
// by an EmpactsApp of that name; ~60 bytes a child not stored.
const SAME_INSTANCE_AS_NAME: u8 = 1;
const SAME_CONTROLLER_NAME_AS_INSTANCE: u8 = 2;
const SAME_CONTROLLER_AS_APP_KIND: u8 = 4;
const APP_API_VERSION: &str = "empacts.io/v1alpha1";
const APP_KIND: &str = "EmpactsApp";

// The strings a `CachedChild` packs, by index.
const NAME: usize = 0;
const UID: usize = 1;
const RESOURCE_VERSION: usize = 2;
const INSTANCE: usize = 3;
const COMPONENT: usize = 4;
const APPLIED: usize = 5;
/// `children::change_marker` of the object as it arrived (before compaction).
const MARKER: usize = 6;
// The controller reference, if any.
const CONTROLLER_API_VERSION: usize = 7;
const CONTROLLER_KIND: usize = 8;
const CONTROLLER_NAME: usize = 9;
const CONTROLLER_UID: usize = 10;
const STRINGS: usize = 11;

/// Optional strings in one allocation: a record holds about ten, and as separate boxes each
/// would cost a heap block and a 16-byte pointer. UIDs in the canonical form the API server
/// gives them (36 characters) are kept as their 16 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Packed<const N: usize> {
    buf: Box<[u8]>,
    /// Where each string ends in `buf`.
    ends: [u32; N],
    /// Which strings are present (an absent one is empty in `buf`).
    present: u16,
    /// Which strings are UIDs kept as 16 bytes.
    uuids: u16,
}

impl<const N: usize> Packed<N> {
    /// `values`, those in `uid_fields` (a bit per index) kept as 16 bytes when canonical UIDs.
    fn new(values: [Option<&str>; N], uid_fields: u16) -> Self {
        const { assert!(N <= 16, "present is a u16") };
        let mut buf = Vec::with_capacity(values.iter().flatten().map(|v| v.len()).sum());
        let mut ends = [0; N];
        let (mut present, mut uuids) = (0, 0);
        for (i, value) in values.iter().enumerate() {
            if let Some(value) = value {
                match parse_uuid(value).filter(|_| uid_fields & (1 << i) != 0) {
                    Some(bytes) => {
                        buf.extend_from_slice(&bytes);
                        uuids |= 1 << i;
                    }
                    None => buf.extend_from_slice(value.as_bytes()),
                }
                present |= 1 << i;
            }
            // Object metadata is bounded far below 4 GiB by the API server's request limit.
            ends[i] = u32::try_from(buf.len()).expect("metadata strings under 4 GiB");
        }
        Packed { buf: buf.into_boxed_slice(), ends, present, uuids }
    }

    fn bytes(&self, i: usize) -> Option<&[u8]> {
        if self.present & (1 << i) == 0 {
            return None;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        Some(&self.buf[start..self.ends[i] as usize])
    }

    /// String `i` as it was given.
    fn get(&self, i: usize) -> Option<std::borrow::Cow<'_, str>> {
        let bytes = self.bytes(i)?;
        if self.uuids & (1 << i) != 0 {
            return Some(format_uuid(bytes).into());
        }
        // Only `&str`s went in, each whole: every slice between two ends is UTF-8.
        Some(std::str::from_utf8(bytes).expect("packed strings are UTF-8").into())
    }

    /// String `i`, for indices never kept as UIDs.
    fn text(&self, i: usize) -> Option<&str> {
        debug_assert_eq!(self.uuids & (1 << i), 0, "string {i} may be a UID");
        self.bytes(i).map(|b| std::str::from_utf8(b).expect("packed strings are UTF-8"))
    }

    /// Heap bytes of the strings.
    fn heap(&self) -> usize {
        self.buf.len()
    }
}

/// The 16 bytes of a UID in canonical form (8-4-4-4-12 lowercase hex digits), which is how
/// it can be written back exactly.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut digits = b.iter().filter(|&&c| c != b'-');
    let mut out = [0u8; 16];
    for byte in &mut out {
        *byte = hex(*digits.next()?)? << 4 | hex(*digits.next()?)?;
    }
    Some(out)
}

fn format_uuid(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if [4, 6, 8, 10].contains(&i) {
            s.push('-');
        }
        // Read at every expansion of a record: no formatting machinery, no allocation per byte.
        s.push(HEX[usize::from(b >> 4)].into());
        s.push(HEX[usize::from(b & 0xf)].into());
    }
    s
}

/// The field ownership the cache keeps (see `children::trim_for_cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Fields {
    /// The object came with managedFields.
    known: bool,
    /// Our manager has an Update entry on the main resource (a create not yet upgraded to Apply).
    ours_update: bool,
    /// Another manager owns content.
    others: bool,
}

impl CachedChild {
    /// The record of `meta` (already trimmed by `children::trim_for_cache`; for kinds watched
    /// with a spec hash, carrying it).
    pub fn of(meta: &ObjectMeta) -> Self {
        let label = |key: &str| meta.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str);
        let controller = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true));
        let ours = |f: &ManagedFieldsEntry| f.manager.as_deref() == Some(crate::apply::FIELD_MANAGER);
        let main = |f: &ManagedFieldsEntry| f.subresource.as_deref().unwrap_or_default().is_empty();
        let scale = |f: &ManagedFieldsEntry| f.subresource.as_deref() == Some("scale");
        let fields = meta.managed_fields.as_ref().map_or(Fields::default(), |entries| Fields {
            known: true,
            ours_update: entries.iter().any(|f| ours(f) && main(f) && f.operation.as_deref() == Some("Update")),
            // An entry of the scale subresource owns spec.replicas alone, which a Deployment's
            // apply compares with the live count itself (an HPA's scaling is not a change to undo).
            others: entries.iter().any(|f| !ours(f) && !scale(f) && crate::children::owns_content(f)),
        });
        let marker = crate::children::change_marker(meta);
        let mut strings: [Option<&str>; STRINGS] = [None; STRINGS];
        strings[NAME] = Some(meta.name.as_deref().unwrap_or_default());
        strings[UID] = meta.uid.as_deref();
        strings[RESOURCE_VERSION] = meta.resource_version.as_deref();
        strings[INSTANCE] = label(labels::INSTANCE);
        strings[COMPONENT] = label(labels::COMPONENT);
        strings[APPLIED] = meta.annotations.as_ref().and_then(|a| a.get(APPLIED_ANNOTATION)).map(String::as_str);
        strings[MARKER] = marker.as_deref();
        if let Some(c) = controller {
            strings[CONTROLLER_API_VERSION] = Some(&c.api_version);
            strings[CONTROLLER_KIND] = Some(&c.kind);
            strings[CONTROLLER_NAME] = Some(&c.name);
            strings[CONTROLLER_UID] = Some(&c.uid);
        }
        let mut same = 0;
        if strings[INSTANCE].is_some() && strings[INSTANCE] == strings[NAME] {
            same |= SAME_INSTANCE_AS_NAME;
        }
        if strings[CONTROLLER_NAME].is_some() && strings[CONTROLLER_NAME] == strings[INSTANCE] {
            same |= SAME_CONTROLLER_NAME_AS_INSTANCE;
            strings[CONTROLLER_NAME] = None;
        }
        if same & SAME_INSTANCE_AS_NAME != 0 {
            strings[INSTANCE] = None;
        }
        if strings[CONTROLLER_API_VERSION] == Some(APP_API_VERSION) && strings[CONTROLLER_KIND] == Some(APP_KIND) {
            same |= SAME_CONTROLLER_AS_APP_KIND;
            strings[CONTROLLER_API_VERSION] = None;
            strings[CONTROLLER_KIND] = None;
        }
        CachedChild {
            strings: Packed::new(strings, 1 << UID | 1 << CONTROLLER_UID),
            generation: meta.generation,
            fingerprint: fingerprint(meta),
            owners: meta.owner_references.as_ref().map_or(0, |o| o.len().min(255) as u8),
            fields,
            same,
        }
    }

    /// String `i` as the object had it (kept, or the one it repeats); not the UIDs.
    fn get(&self, i: usize) -> Option<&str> {
        let same = |bit: u8| self.same & bit != 0;
        match i {
            INSTANCE if same(SAME_INSTANCE_AS_NAME) => self.strings.text(NAME),
            CONTROLLER_NAME if same(SAME_CONTROLLER_NAME_AS_INSTANCE) => self.get(INSTANCE),
            CONTROLLER_API_VERSION if same(SAME_CONTROLLER_AS_APP_KIND) => Some(APP_API_VERSION),
            CONTROLLER_KIND if same(SAME_CONTROLLER_AS_APP_KIND) => Some(APP_KIND),
            _ => self.strings.text(i),
        }
    }

    fn string(&self, i: usize) -> Option<String> {
        match i {
            UID | CONTROLLER_UID => self.strings.get(i).map(Into::into),
            _ => self.get(i).map(Into::into),
        }
    }

    /// An `ObjectMeta` with what the record kept: what `children`, `observe` and `apply` read
    /// (the change marker travels in an annotation only this process sees).
    pub fn expand(&self, namespace: &str) -> ObjectMeta {
        let mut labels = std::collections::BTreeMap::new();
        for (key, i) in [(labels::INSTANCE, INSTANCE), (labels::COMPONENT, COMPONENT)] {
            if let Some(value) = self.string(i) {
                labels.insert(key.to_string(), value);
            }
        }
        let mut annotations = std::collections::BTreeMap::new();
        for (key, i) in [(APPLIED_ANNOTATION, APPLIED), (CHANGE_MARKER_ANNOTATION, MARKER)] {
            if let Some(value) = self.string(i) {
                annotations.insert(key.to_string(), value);
            }
        }
        let owner_references = self.string(CONTROLLER_UID).map(|uid| {
            vec![OwnerReference {
                api_version: self.string(CONTROLLER_API_VERSION).unwrap_or_default(),
                kind: self.string(CONTROLLER_KIND).unwrap_or_default(),
                name: self.string(CONTROLLER_NAME).unwrap_or_default(),
                uid,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]
        });
        let entry = |manager: &str, operation: &str| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            ..Default::default()
        };
        let managed_fields = self.fields.known.then(|| {
            let mut entries = vec![entry(crate::apply::FIELD_MANAGER, "Apply")];
            if self.fields.ours_update {
                entries.push(entry(crate::apply::FIELD_MANAGER, "Update"));
            }
            if self.fields.others {
                entries.push(entry(ANOTHER_MANAGER, "Update"));
            }
            entries
        });
        ObjectMeta {
            name: self.string(NAME),
            namespace: Some(namespace.to_string()),
            uid: self.string(UID),
            resource_version: self.string(RESOURCE_VERSION),
            generation: self.generation,
            labels: (!labels.is_empty()).then_some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references,
            managed_fields,
            ..Default::default()
        }
    }

    /// The UID and resourceVersion (for Secrets: the version of a value read).
    pub fn version(&self) -> Option<(String, &str)> {
        Some((self.string(UID)?, self.get(RESOURCE_VERSION)?))
    }

    /// Heap bytes of the record, boxed as a cache keeps it.
    pub fn heap_size(&self) -> usize {
        std::mem::size_of::<Self>() + self.strings.heap()
    }
}

/// What the Deployment cache keeps: the metadata record, the revision it runs, the replica
/// count, the pod template's annotations (the config hash) and the status the decision reads.
/// Not the pod template's spec, labels, selector, strategy, nor the other conditions.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentRecord {
    meta: CachedChild,
    revision: Option<Box<str>>,
    replicas: Option<i32>,
    template_annotations: Box<[(Box<str>, Box<str>)]>,
    status: Option<DeploymentStatusRecord>,
}

#[derive(Debug, Clone, PartialEq)]
struct DeploymentStatusRecord {
    observed_generation: Option<i64>,
    replicas: Option<i32>,
    updated_replicas: Option<i32>,
    ready_replicas: Option<i32>,
    available_replicas: Option<i32>,
    progressing: Option<Progressing>,
}

/// The Deployment's Progressing condition.
#[derive(Debug, Clone, PartialEq)]
struct Progressing {
    status: Box<str>,
    reason: Option<Box<str>>,
    last_update_time: Option<Time>,
}

impl Record for DeploymentRecord {
    fn name(&self) -> &str {
        self.meta.name()
    }
    fn instance(&self) -> Option<&str> {
        self.meta.instance()
    }
    fn fingerprint(&self) -> Option<u64> {
        None
    }
}

fn pairs(map: Option<&std::collections::BTreeMap<String, String>>) -> Box<[(Box<str>, Box<str>)]> {
    map.into_iter().flatten().map(|(k, v)| (k.as_str().into(), v.as_str().into())).collect()
}

fn unpairs(pairs: &[(Box<str>, Box<str>)]) -> Option<std::collections::BTreeMap<String, String>> {
    (!pairs.is_empty()).then(|| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

impl DeploymentRecord {
    pub fn of(deployment: &Deployment) -> Self {
        let mut meta = deployment.metadata.clone();
        crate::children::trim_for_cache(&mut meta);
        let spec = deployment.spec.as_ref();
        let template = spec.and_then(|s| s.template.metadata.as_ref());
        let status = deployment.status.as_ref().map(|s| DeploymentStatusRecord {
            observed_generation: s.observed_generation,
            replicas: s.replicas,
            updated_replicas: s.updated_replicas,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            progressing: s.conditions.iter().flatten().find(|c| c.type_ == "Progressing").map(|c| Progressing {
                status: c.status.as_str().into(),
                reason: c.reason.as_deref().map(Into::into),
                last_update_time: c.last_update_time.clone(),
            }),
        });
        DeploymentRecord {
            revision: meta.annotations.as_ref().and_then(|a| a.get(annotations::REVISION)).map(|v| v.as_str().into()),
            meta: CachedChild::of(&meta),
            replicas: spec.and_then(|s| s.replicas),
            template_annotations: pairs(template.and_then(|t| t.annotations.as_ref())),
            status,
        }
    }

    /// A Deployment with what the record kept.
    pub fn expand(&self, namespace: &str) -> Deployment {
        let mut metadata = self.meta.expand(namespace);
        if let Some(revision) = &self.revision {
            metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(annotations::REVISION.into(), revision.to_string());
        }
        let template = PodTemplateSpec {
            metadata: Some(ObjectMeta { annotations: unpairs(&self.template_annotations), ..Default::default() }),
            spec: None,
        };
        let status = self.status.as_ref().map(|s| DeploymentStatus {
            observed_generation: s.observed_generation,
            replicas: s.replicas,
            updated_replicas: s.updated_replicas,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            conditions: s.progressing.as_ref().map(|p| {
                vec![DeploymentCondition {
                    type_: "Progressing".into(),
                    status: p.status.to_string(),
                    reason: p.reason.as_deref().map(Into::into),
                    last_update_time: p.last_update_time.clone(),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        Deployment {
            metadata,
            spec: Some(DeploymentSpec { replicas: self.replicas, template, ..Default::default() }),
            status,
        }
    }
}

/// What the Job cache keeps: the metadata record, its revision and attempt, whether it
/// expires, its start and completion times and the condition that finished it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    meta: CachedChild,
    revision: Option<Box<str>>,
    attempt: Option<Box<str>>,
    ttl_seconds_after_finished: Option<i32>,
    start_time: Option<Time>,
    completion_time: Option<Time>,
    finished: Option<Finished>,
}

/// The condition that finished a Job: Complete or Failed.
#[derive(Debug, Clone, PartialEq)]
struct Finished {
    complete: bool,
    reason: Option<Box<str>>,
    message: Option<Box<str>>,
    last_transition_time: Option<Time>,
}

impl Record for JobRecord {
    fn name(&self) -> &str {
        self.meta.name()
    }
    fn instance(&self) -> Option<&str> {
        self.meta.instance()
    }
    fn fingerprint(&self) -> Option<u64> {
        None
    }
}

impl JobRecord {
    pub fn of(job: &Job) -> Self {
        let mut meta = job.metadata.clone();
        crate::children::trim_for_cache(&mut meta);
        let status = job.status.as_ref();
        let conditions = status.and_then(|s| s.conditions.as_ref()).into_iter().flatten();
        let done = |type_: &str| conditions.clone().find(|c| c.type_ == type_ && c.status == "True");
        let finished = done("Complete").or_else(|| done("Failed")).map(|c| Finished {
            complete: c.type_ == "Complete",
            reason: c.reason.as_deref().map(Into::into),
            message: c.message.as_deref().map(Into::into),
            last_transition_time: c.last_transition_time.clone(),
        });
        JobRecord {
            revision: meta.labels.as_ref().and_then(|l| l.get(labels::REVISION)).map(|v| v.as_str().into()),
            attempt: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::ledger::JOB_ATTEMPT))
                .map(|v| v.as_str().into()),
            meta: CachedChild::of(&meta),
            ttl_seconds_after_finished: job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished),
            start_time: status.and_then(|s| s.start_time.clone()),
            completion_time: status.and_then(|s| s.completion_time.clone()),
            finished,
        }
    }

    /// A Job with what the record kept.
    pub fn expand(&self, namespace: &str) -> Job {
        let mut metadata = self.meta.expand(namespace);
        if let Some(revision) = &self.revision {
            metadata.labels.get_or_insert_with(Default::default).insert(labels::REVISION.into(), revision.to_string());
        }
        if let Some(attempt) = &self.attempt {
            let annotations = metadata.annotations.get_or_insert_with(Default::default);
            annotations.insert(crate::ledger::JOB_ATTEMPT.into(), attempt.to_string());
        }
        let conditions = self.finished.as_ref().map(|f| {
            vec![JobCondition {
                type_: if f.complete { "Complete" } else { "Failed" }.into(),
                status: "True".into(),
                reason: f.reason.as_deref().map(Into::into),
                message: f.message.as_deref().map(Into::into),
                last_transition_time: f.last_transition_time.clone(),
                ..Default::default()
            }]
        });
        Job {
            metadata,
            spec: Some(JobSpec { ttl_seconds_after_finished: self.ttl_seconds_after_finished, ..Default::default() }),
            status: Some(JobStatus {
                start_time: self.start_time.clone(),
                completion_time: self.completion_time.clone(),
                conditions,
                ..Default::default()
            }),
        }
    }
}

/// What a trigger compares, for kinds with a generation or a cached spec hash (None: any
/// update is a change). Status writes move neither; labels, annotations and owners count.
pub fn fingerprint(meta: &ObjectMeta) -> Option<u64> {
    let spec_hash = || meta.annotations.as_ref()?.get(SPEC_HASH_ANNOTATION).cloned();
    let version = meta.generation.map(|g| g.to_string()).or_else(spec_hash)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (version, &meta.labels, &meta.annotations, &meta.owner_references.as_ref().map(|o| o.len())).hash(&mut h);
    Some(h.finish())
}

/// What a cache keeps of one object of its kind.
pub trait Record: Clone {
    fn name(&self) -> &str;
    /// Its `app.kubernetes.io/instance` label.
    fn instance(&self) -> Option<&str>;
    /// See [`CachedChild::fingerprint`] (None: any update is a change).
    fn fingerprint(&self) -> Option<u64>;
}

impl Record for CachedChild {
    fn name(&self) -> &str {
        self.get(NAME).unwrap_or_default()
    }
    fn instance(&self) -> Option<&str> {
        self.get(INSTANCE)
    }
    fn fingerprint(&self) -> Option<u64> {
        self.fingerprint
    }
}

/// A record in a namespace's set, found by its name: a set of boxes costs a pointer per slot
/// (a map of records inline would cost a record per slot, empty ones included) and does not
/// repeat the name as a key.
struct Named<R>(Box<R>);

impl<R: Record> std::borrow::Borrow<str> for Named<R> {
    fn borrow(&self) -> &str {
        self.0.name()
    }
}

impl<R: Record> PartialEq for Named<R> {
    fn eq(&self, other: &Self) -> bool {
        self.0.name() == other.0.name()
    }
}

impl<R: Record> Eq for Named<R> {}

impl<R: Record> Hash for Named<R> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that lookups by `&str` (through `Borrow`) find it.
        self.0.name().hash(state)
    }
}

/// One namespace's objects of a kind.
struct Namespace<R> {
    objects: HashSet<Named<R>>,
    /// Names by instance label, sorted (kept for kinds read by instance: ConfigMaps, Jobs).
    by_instance: HashMap<Box<str>, Vec<Box<str>>>,
}

impl<R> Default for Namespace<R> {
    fn default() -> Self {
        Namespace { objects: HashSet::new(), by_instance: HashMap::new() }
    }
}

impl<R: Record> Namespace<R> {
    fn get(&self, name: &str) -> Option<&R> {
        self.objects.get(name).map(|n| &*n.0)
    }

    fn insert(&mut self, child: R, index: bool) -> Option<R> {
        let instance: Option<Box<str>> = child.instance().map(Into::into);
        if index && let Some(instance) = &instance {
            let names = self.by_instance.entry(instance.clone()).or_default();
            if let Err(at) = names.binary_search_by(|n| (**n).cmp(child.name())) {
                names.insert(at, child.name().into());
            }
        }
        let old = self.objects.replace(Named(Box::new(child))).map(|n| *n.0);
        if let Some(old) = &old {
            self.unindex(old, Some(&instance));
        }
        old
    }

    fn remove(&mut self, name: &str) -> Option<R> {
        let old = *self.objects.take(name)?.0;
        self.unindex(&old, None);
        Some(old)
    }

    /// Drop `old`'s instance entry unless the object now has the same instance.
    fn unindex(&mut self, old: &R, now: Option<&Option<Box<str>>>) {
        let Some(instance) = old.instance() else { return };
        if now.is_some_and(|now| now.as_deref() == Some(instance)) {
            return;
        }
        if let Some(names) = self.by_instance.get_mut(instance) {
            if let Ok(at) = names.binary_search_by(|n| (**n).cmp(old.name())) {
                names.remove(at);
            }
            if names.is_empty() {
                self.by_instance.remove(instance);
            }
        }
    }
}

struct State<R> {
    namespaces: HashMap<Box<str>, Namespace<R>>,
    /// The relist under way: it replaces `namespaces` when done.
    relist: Option<HashMap<Box<str>, Namespace<R>>>,
    /// A first list has completed: an absence here is the watch's view, not a cache still filling.
    listed: bool,
}

impl<R> Default for State<R> {
    fn default() -> Self {
        State { namespaces: HashMap::new(), relist: None, listed: false }
    }
}

/// The cache of one kind, fed by its watch's events.
pub struct ChildCache<R = CachedChild> {
    /// Keep the by-instance index.
    index: bool,
    state: RwLock<State<R>>,
}

impl ChildCache<CachedChild> {
    /// Apply a watch event of metadata (trimmed as for the cache); see [`Self::apply_with`].
    pub fn apply<K: kube::Resource>(&self, event: &watcher::Event<K>) -> bool {
        self.apply_with(event, |obj| CachedChild::of(obj.meta()))
    }

    /// The object `namespace/name`, rebuilt.
    pub fn get(&self, namespace: &str, name: &str) -> Option<ObjectMeta> {
        self.record(namespace, name).map(|c| c.expand(namespace))
    }

    /// The objects of `namespace` labelled with `instance` (a cache made [`Self::by_instance`]).
    pub fn of_instance(&self, namespace: &str, instance: &str) -> Vec<ObjectMeta> {
        self.records_of_instance(namespace, instance).iter().map(|c| c.expand(namespace)).collect()
    }
}

impl<R: Record> ChildCache<R> {
    /// A cache whose objects are read by name.
    pub fn by_name() -> Self {
        ChildCache { index: false, state: RwLock::default() }
    }

    /// A cache whose objects are also read by their instance label.
    pub fn by_instance() -> Self {
        ChildCache { index: true, state: RwLock::default() }
    }

    /// Apply a watch event, keeping `record` of each object; true when it changed what a
    /// trigger compares: a new or deleted object, or an update that moved its fingerprint
    /// (or of a kind without one).
    pub fn apply_with<K: kube::Resource>(&self, event: &watcher::Event<K>, record: impl Fn(&K) -> R) -> bool {
        let mut state = self.state.write().expect("child cache lock");
        let namespace = |meta: &ObjectMeta| -> Box<str> { meta.namespace.as_deref().unwrap_or_default().into() };
        match event {
            watcher::Event::Init => {
                state.relist = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                let child = record(obj);
                let ns = namespace(obj.meta());
                let previous = state.namespaces.get(&ns).and_then(|n| n.get(child.name()));
                let changed =
                    previous.is_none_or(|p| p.fingerprint().is_none() || p.fingerprint() != child.fingerprint());
                let relist = state.relist.get_or_insert_with(HashMap::new);
                relist.entry(ns).or_default().insert(child, self.index);
                changed
            }
            watcher::Event::InitDone => {
                if let Some(relist) = state.relist.take() {
                    state.namespaces = relist;
                }
                state.listed = true;
                false
            }
            watcher::Event::Apply(obj) => {
                let child = record(obj);
                let fingerprint = child.fingerprint();
                let old = state.namespaces.entry(namespace(obj.meta())).or_default().insert(child, self.index);
                old.is_none_or(|old| fingerprint.is_none() || old.fingerprint() != fingerprint)
            }
            watcher::Event::Delete(obj) => {
                let meta = obj.meta();
                let ns = namespace(meta);
                if let Some(objects) = state.namespaces.get_mut(&ns) {
                    objects.remove(meta.name.as_deref().unwrap_or_default());
                    if objects.objects.is_empty() {
                        state.namespaces.remove(&ns);
                    }
                }
                true
            }
        }
    }

    /// The record of `namespace/name`.
    pub fn record(&self, namespace: &str, name: &str) -> Option<R> {
        let state = self.state.read().expect("child cache lock");
        state.namespaces.get(namespace)?.get(name).cloned()
    }

    /// The records of `namespace` labelled with `instance` (a cache made [`Self::by_instance`]).
    pub fn records_of_instance(&self, namespace: &str, instance: &str) -> Vec<R> {
        let state = self.state.read().expect("child cache lock");
        let Some(objects) = state.namespaces.get(namespace) else { return Vec::new() };
        let names = objects.by_instance.get(instance).into_iter().flatten();
        names.filter_map(|name| objects.get(name)).cloned().collect()
    }

    /// Whether the watch has listed once: before that, an object missing here may exist.
    pub fn listed(&self) -> bool {
        self.state.read().expect("child cache lock").listed
    }

    /// Objects held.
    pub fn len(&self) -> usize {
        self.state.read().expect("child cache lock").namespaces.values().map(|n| n.objects.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    type Meta = kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Secret>;

    fn object(metadata: ObjectMeta) -> Meta {
        Meta { types: None, metadata, _phantom: std::marker::PhantomData }
    }

    fn meta(name: &str, instance: &str, generation: Option<i64>, rv: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            resource_version: Some(rv.into()),
            generation,
            labels: Some(BTreeMap::from([
                (labels::INSTANCE.to_string(), instance.to_string()),
                (labels::COMPONENT.to_string(), "env".to_string()),
                ("app.kubernetes.io/name".to_string(), instance.to_string()),
                (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
            ])),
            annotations: Some(BTreeMap::from([(APPLIED_ANNOTATION.to_string(), "h1".to_string())])),
            owner_references: Some(vec![OwnerReference {
                api_version: "empacts.io/v1alpha1".into(),
                kind: "EmpactsApp".into(),
                name: instance.into(),
                uid: "app-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            managed_fields: Some(vec![ManagedFieldsEntry {
                manager: Some(crate::apply::FIELD_MANAGER.into()),
                operation: Some("Apply".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn a_rebuilt_object_decides_like_the_original() {
        use crate::children::{AppliedRecord, only_ours};
        use crate::observe::controlled_by;
        for generation in [Some(3), None] {
            let original = meta("app", "app", generation, "10");
            let rebuilt = CachedChild::of(&original).expand("ns");
            assert_eq!(rebuilt.name, original.name);
            assert_eq!(rebuilt.uid, original.uid);
            assert_eq!(controlled_by(&rebuilt, "app-uid"), controlled_by(&original, "app-uid"));
            assert!(!controlled_by(&rebuilt, "other-uid"));
            assert_eq!(only_ours(&rebuilt), only_ours(&original));
            let record = AppliedRecord::default();
            // Recorded from an apply's answer, read back from the cache: the same marker.
            record.record("ServiceAccount", &crate::children::compacted(&original));
            assert!(record.is_current("ServiceAccount", &rebuilt, "h1"), "{generation:?}");
            assert!(!record.is_current("ServiceAccount", &rebuilt, "h2"), "{generation:?}: the desired hash moved");
            let moved = CachedChild::of(&meta("app", "app", generation.map(|g| g + 1), "11")).expand("ns");
            assert!(!record.is_current("ServiceAccount", &moved, "h1"), "{generation:?}: someone else wrote it");
        }
        let mut edited = meta("app", "app", Some(1), "1");
        edited.managed_fields.as_mut().unwrap().push(ManagedFieldsEntry {
            manager: Some("kubectl-edit".into()),
            operation: Some("Update".into()),
            ..Default::default()
        });
        edited.managed_fields.as_mut().unwrap().push(ManagedFieldsEntry {
            manager: Some(crate::apply::FIELD_MANAGER.into()),
            operation: Some("Update".into()),
            ..Default::default()
        });
        let rebuilt = CachedChild::of(&edited).expand("ns");
        assert!(!only_ours(&rebuilt), "another manager's content stays known");
        let fields = rebuilt.managed_fields.unwrap();
        assert!(crate::apply::upgraded_managed_fields(&fields).is_some(), "our create still needs its upgrade");
        assert!(
            crate::apply::upgraded_managed_fields(
                &CachedChild::of(&meta("a", "a", None, "1")).expand("ns").managed_fields.unwrap()
            )
            .is_none()
        );
        // An HPA (or `kubectl scale`) writes spec.replicas through the scale subresource: its
        // entry stays after our next apply, and must not make every restart apply again.
        let mut scaled = meta("app", "app", Some(2), "2");
        scaled.managed_fields.as_mut().unwrap().push(ManagedFieldsEntry {
            manager: Some("horizontal-pod-autoscaler".into()),
            operation: Some("Update".into()),
            subresource: Some("scale".into()),
            fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
                serde_json::json!({"f:spec": {"f:replicas": {}}}),
            )),
            ..Default::default()
        });
        assert!(only_ours(&CachedChild::of(&scaled).expand("ns")), "a scale entry is not another manager's content");
        scaled.managed_fields.as_mut().unwrap().last_mut().unwrap().subresource = None;
        assert!(!only_ours(&CachedChild::of(&scaled).expand("ns")), "the same fields on the main resource are");
        let unknown = ObjectMeta { managed_fields: None, ..meta("a", "a", None, "1") };
        assert!(CachedChild::of(&unknown).expand("ns").managed_fields.is_none(), "unknown ownership stays unknown");
    }

    #[test]
    fn strings_left_out_as_repeats_come_back_as_they_were() {
        use empacts_api::EmpactsApp;
        use kube::Resource;
        assert_eq!(APP_API_VERSION, EmpactsApp::api_version(&()));
        assert_eq!(APP_KIND, EmpactsApp::kind(&()));
        let same = meta("app", "app", Some(1), "1");
        let mut other_name = meta("app-x", "app", Some(1), "1");
        let mut other_owner = meta("app", "app", Some(1), "1");
        let owner = &mut other_owner.owner_references.as_mut().unwrap()[0];
        (owner.api_version, owner.kind, owner.name) = ("apps/v1".into(), "ReplicaSet".into(), "rs".into());
        other_name.owner_references.as_mut().unwrap()[0].name = "other-app".into();
        for original in [same, other_name, other_owner] {
            let record = CachedChild::of(&original);
            let rebuilt = record.expand("ns");
            assert_eq!(rebuilt.name, original.name);
            assert_eq!(record.instance(), original.labels.as_ref().unwrap().get(labels::INSTANCE).map(String::as_str));
            assert_eq!(rebuilt.labels.unwrap().get(labels::INSTANCE), original.labels.unwrap().get(labels::INSTANCE));
            let (r, o) = (&rebuilt.owner_references.unwrap()[0], &original.owner_references.unwrap()[0]);
            assert_eq!((&r.api_version, &r.kind, &r.name, &r.uid), (&o.api_version, &o.kind, &o.name, &o.uid));
        }
        // The usual child keeps its name once, and no owner kind: name, UID, version, component,
        // applied hash, marker, owner UID.
        let plain = CachedChild::of(&meta("app", "app", Some(1), "1"));
        assert_eq!(plain.strings.heap(), ["app", "uid-app", "1", "env", "h1", "g1", "app-uid"].concat().len());
    }

    #[test]
    fn a_foreign_object_under_the_apps_name_stays_foreign() {
        let foreign = ObjectMeta {
            name: Some("app".into()),
            namespace: Some("ns".into()),
            uid: Some("u".into()),
            owner_references: Some(vec![OwnerReference {
                kind: "Deployment".into(),
                name: "x".into(),
                uid: "x-uid".into(),
                controller: None,
                ..Default::default()
            }]),
            ..Default::default()
        };
        let rebuilt = CachedChild::of(&foreign).expand("ns");
        assert!(!crate::observe::controlled_by(&rebuilt, "x-uid"), "not a controller reference");
        assert!(rebuilt.labels.is_none() && rebuilt.managed_fields.is_none());
    }

    #[test]
    fn triggers_only_on_what_a_decision_reads() {
        let cache = ChildCache::by_name();
        let ev = |m: ObjectMeta| watcher::Event::Apply(object(m));
        assert!(cache.apply(&ev(meta("a", "a", Some(1), "1"))), "new");
        assert!(!cache.apply(&ev(meta("a", "a", Some(1), "2"))), "a status write");
        assert!(cache.apply(&ev(meta("a", "a", Some(2), "3"))), "a spec change");
        let mut labelled = meta("a", "a", Some(2), "4");
        labelled.labels.as_mut().unwrap().insert("team".into(), "x".into());
        assert!(cache.apply(&ev(labelled)), "a label edit");
        assert!(cache.apply(&ev(meta("b", "b", None, "1"))), "new");
        assert!(cache.apply(&ev(meta("b", "b", None, "2"))), "no generation, no spec hash: any write");
        assert!(cache.apply(&watcher::Event::Delete(object(meta("b", "b", None, "2")))));
        assert!(cache.get("ns", "b").is_none());
        assert_eq!(cache.get("ns", "a").unwrap().resource_version.as_deref(), Some("4"));
    }

    #[test]
    fn a_relist_replaces_the_objects_when_done() {
        let cache = ChildCache::by_instance();
        cache.apply(&watcher::Event::Apply(object(meta("app-env-1", "app", None, "1"))));
        cache.apply(&watcher::Event::Apply(object(meta("app-env-2", "app", None, "1"))));
        cache.apply(&watcher::Event::Apply(object(meta("other-env-1", "other", None, "1"))));
        let names = |v: Vec<ObjectMeta>| v.into_iter().map(|m| m.name.unwrap()).collect::<Vec<_>>();
        assert_eq!(names(cache.of_instance("ns", "app")), ["app-env-1", "app-env-2"]);
        cache.apply(&watcher::Event::<Meta>::Init);
        cache.apply(&watcher::Event::InitApply(object(meta("app-env-2", "app", None, "1"))));
        assert_eq!(cache.len(), 3, "the old objects stay until the relist is done");
        assert!(!cache.listed(), "no list has completed: an absence says nothing yet");
        cache.apply(&watcher::Event::<Meta>::InitDone);
        assert!(cache.listed());
        assert_eq!(names(cache.of_instance("ns", "app")), ["app-env-2"], "deleted while the watch was down");
        assert!(cache.of_instance("ns", "other").is_empty());
        // An object whose instance label changes moves between groups.
        cache.apply(&watcher::Event::Apply(object(meta("app-env-2", "other", None, "2"))));
        assert!(cache.of_instance("ns", "app").is_empty());
        assert_eq!(names(cache.of_instance("ns", "other")), ["app-env-2"]);
        cache.apply(&watcher::Event::Delete(object(meta("app-env-2", "other", None, "3"))));
        assert!(cache.is_empty());
        assert!(cache.of_instance("ns", "other").is_empty());
    }

    #[test]
    fn packed_strings_keep_absent_apart_from_empty() {
        let packed = Packed::<4>::new([Some("name"), None, Some(""), Some("uid")], 0b1000);
        assert_eq!(packed.text(0), Some("name"));
        assert_eq!(packed.text(1), None);
        assert_eq!(packed.text(2), Some(""), "an empty string is present");
        assert_eq!(packed.get(3).as_deref(), Some("uid"), "not a UID's form: kept as given");
        assert_eq!(packed.heap(), 7, "one block of the strings' bytes");
        let none = Packed::<2>::new([None, None], 0);
        assert_eq!((none.text(0), none.text(1)), (None, None));
    }

    #[test]
    fn canonical_uids_are_kept_as_16_bytes_and_read_back_exactly() {
        let uid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let packed = Packed::<3>::new([Some(uid), Some(uid), Some("x")], 0b001);
        assert_eq!(packed.heap(), 16 + 36 + 1, "only the field marked as a UID is packed");
        assert_eq!(packed.get(0).as_deref(), Some(uid));
        assert_eq!(packed.get(1).as_deref(), Some(uid));
        for other in ["0F8FAD5B-D9CB-469F-A165-70867728950E", "0f8fad5b-d9cb-469f-a165-70867728950", "uid-1", ""] {
            let packed = Packed::<1>::new([Some(other)], 1);
            assert_eq!(packed.get(0).as_deref(), Some(other), "not canonical: kept as text");
        }
    }

    #[test]
    fn a_record_is_a_fraction_of_the_object() {
        let original = meta("app-env-8d9f2c", "app", None, "123456");
        let record = CachedChild::of(&original);
        let heap = |c: &CachedChild| c.heap_size();
        let json = serde_json::to_vec(&original).unwrap().len();
        println!("record {} bytes, ObjectMeta as JSON {json} bytes", heap(&record));
        assert!(heap(&record) < 250, "{} bytes", heap(&record));
    }
}
