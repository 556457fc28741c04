//! Writes, and only writes: the plan's actions in the plan's order. Objects are built by
//! the pure builders; nothing here reads the API server.
//!
//! Children are created with a plain create first and only ever server-side applied when
//! they carry this app's controller reference: an object of the same name that someone
//! else made is never changed (NameTaken). Generated Secrets, Jobs and ControllerRevisions
//! are create-only; ledger marks and rotations carry a resourceVersion precondition.

use std::collections::BTreeMap;
use std::fmt::Debug;

use empacts_api::{EmpactsAppSpec, annotations};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, ObjectMeta};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{self, configmap, deployment, revision as cr};
use crate::children::APPLIED_ANNOTATION;
use crate::context::Context;
use crate::error::{Error, Result, is_conflict, is_not_found};
use crate::observe::{Observed, controlled_by};
use crate::plan::{Action, JobKind, Plan};
use crate::secret_value::SecretValue;
use crate::validate::ValidatedApp;
use crate::{ledger, names, registry};

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "empacts-operator";

/// What the writes of one reconcile did, for Events and metrics (names only, never values).
#[derive(Debug, Default)]
pub struct Outcome {
    pub secrets_created: Vec<String>,
    pub secrets_rotated: Vec<String>,
    pub jobs_created: Vec<String>,
}

fn write_error<K: Resource<DynamicType = ()>>(ns: &str, name: &str, source: kube::Error) -> Error {
    dyn_write_error(&K::kind(&()), ns, name, source)
}

fn create_params() -> PostParams {
    PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

/// Carry out the plan's actions in order; the first failure stops the rest (the next
/// reconcile starts again from what was written).
pub async fn execute(ctx: &Context, app: &ValidatedApp, observed: &Observed, plan: &Plan) -> Result<Outcome> {
    let mut w = Writer { ctx, app, observed, plan, versions: BTreeMap::new(), outcome: Outcome::default() };
    for action in &plan.actions {
        w.run(action).await?;
    }
    Ok(w.outcome)
}

struct Writer<'a> {
    ctx: &'a Context,
    app: &'a ValidatedApp,
    observed: &'a Observed,
    plan: &'a Plan,
    /// resourceVersion of each ControllerRevision after our own marks.
    versions: BTreeMap<String, Option<String>>,
    outcome: Outcome,
}

impl Writer<'_> {
    fn client(&self) -> &Client {
        &self.ctx.client
    }

    fn ns(&self) -> &str {
        &self.app.namespace
    }

    /// The app as it was at `revision` (D: as it is now). Scaling and rollout settings are
    /// not part of a revision: the current spec's apply.
    fn at(&self, revision: &str) -> Result<ValidatedApp> {
        let spec = self.observed.specs.get(revision).ok_or_else(|| Error::RecordedSpec {
            namespace: self.app.namespace.clone(),
            name: names::controller_revision(&self.app.name, revision),
            revision: revision.to_string(),
            source: serde::de::Error::custom("the ControllerRevision is missing or does not decode"),
        })?;
        let spec = EmpactsAppSpec {
            replicas: self.app.spec.replicas,
            autoscaling: self.app.spec.autoscaling.clone(),
            rollout: self.app.spec.rollout.clone(),
            ..spec.clone()
        };
        Ok(ValidatedApp { spec, ..self.app.clone() })
    }

    async fn run(&mut self, action: &Action) -> Result<()> {
        match action {
            Action::RecordRevision { revision } => {
                let number = self.plan.ledger.get(revision).map(|e| e.number).unwrap_or(1);
                let record = cr::build(self.app, revision, number, self.app.generation);
                let created = create(self.client(), &record).await.inspect_err(|e| {
                    // It exists after all: the next reconcile reads the ledger fresh.
                    if matches!(e, Error::Write { source, .. } if is_conflict(source)) {
                        self.ctx.ledger.invalidate(&self.app.namespace, &self.app.name);
                    }
                })?;
                // Seen by the next reconcile whatever the watch shows by then.
                self.ctx.ledger.wrote(&created);
            }
            Action::Mark { revision, mark } => self.mark(revision, mark).await?,
            Action::CreateSecret { env } => self.create_secret(env).await?,
            Action::RotateSecret { env, request } => self.rotate_secret(env, request).await?,
            Action::ReleaseSecret { env } => self.release_secret(env).await?,
            Action::ApplyConfig { revision } => {
                let app = self.at(revision)?;
                let sa = build::serviceaccount::build(&app);
                let live = self.observed.children.get("ServiceAccount", &sa.name_any());
                ensure(self.ctx, build::manifest(&sa), live, &app.uid).await?;
                if let Some(cm) = configmap::build(&app) {
                    // Immutable and named by content: one that exists is already right.
                    if self.observed.children.get("ConfigMap", &cm.name_any()).is_none() {
                        create_child(self.ctx, build::manifest(&cm)).await?;
                    } else {
                        self.ctx.metrics.child_applies.with_label_values(&["ConfigMap", "skipped"]).inc();
                    }
                }
            }
            Action::CreateJob { kind, revision, attempt } => {
                let app = self.at(revision)?;
                let job = match kind {
                    JobKind::Migrate => build::job::migration(&app, revision, *attempt),
                    JobKind::Rollback => build::job::rollback(&app, revision, *attempt),
                };
                if let Some(job) = job {
                    // A conflict means a Job of that name exists after all: the marks after
                    // this create must not be written; the next reconcile sees the Job.
                    create(self.client(), &job).await?;
                    self.outcome.jobs_created.push(job.name_any());
                }
            }
            Action::DeleteJob { name } => drop(delete::<Job>(self.client(), self.ns(), name).await?),
            Action::ApplyDeployment { revision } => {
                let app = self.at(revision)?;
                let hash = self.observed.config_hashes.get(revision).cloned().flatten();
                let live = self.observed.deployment.as_ref();
                let replicas = live.and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas);
                let desired = deployment::build(&app, revision, hash.as_deref(), replicas);
                // Scaled by someone else (`kubectl scale`, while we were down): the caches do not
                // count a scale entry as a change, so the count itself says to apply.
                let scaled = live.is_some() && desired.spec.as_ref().and_then(|s| s.replicas) != replicas;
                let live = live.map(|d| &d.metadata);
                ensure_with(self.ctx, build::manifest(&desired), live, &app.uid, scaled).await?;
            }
            Action::ApplyCanary { revision, replicas, stable_replicas } => {
                let app = self.at(revision)?;
                let hash = self.observed.config_hashes.get(revision).cloned().flatten();
                let desired = deployment::canary(&app, revision, hash.as_deref(), *replicas);
                let live = self.observed.canary.as_ref().map(|d| &d.metadata);
                ensure(self.ctx, build::manifest(&desired), live, &app.uid).await?;
                if let (Some(stable), Some(n)) = (self.observed.deployment.as_ref(), stable_replicas) {
                    scale(self.client(), stable, *n).await?;
                }
            }
            Action::StopCanary => {
                if let Some(canary) = self.observed.canary.as_ref() {
                    scale(self.client(), canary, 0).await?;
                }
            }
            Action::ApplyServing => self.serving().await?,
            Action::Prune(prune) => {
                let (client, ns) = (self.client().clone(), self.ns().to_string());
                for revision in &prune.revisions {
                    let name = names::controller_revision(&self.app.name, revision);
                    delete::<ControllerRevision>(&client, &ns, &name).await?;
                    if let Some(uid) = self.observed.input.ledger.get(revision).and_then(|e| e.uid.clone()) {
                        self.ctx.ledger.deleted(&ns, &name, uid);
                    }
                }
                for job in &prune.jobs {
                    delete::<Job>(&client, &ns, job).await?;
                }
                for cm in &prune.config_maps {
                    delete::<ConfigMap>(&client, &ns, cm).await?;
                }
                for job in &prune.expire_jobs {
                    expire_job(&client, &ns, job).await?;
                }
            }
        }
        Ok(())
    }

    /// A ledger mark: a merge patch of the revision's annotations, on the version we read.
    async fn mark(&mut self, revision: &str, mark: &ledger::Mark) -> Result<()> {
        let name = names::controller_revision(&self.app.name, revision);
        let version = match self.versions.get(revision) {
            Some(v) => v.clone(),
            None => self.observed.input.ledger.get(revision).and_then(|e| e.resource_version.clone()),
        };
        let mut metadata = serde_json::json!({"annotations": mark.annotations()});
        if let Some(v) = &version {
            metadata["resourceVersion"] = v.clone().into();
        }
        let api: Api<ControllerRevision> = Api::namespaced(self.client().clone(), self.ns());
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let patched = match api.patch(&name, &params, &Patch::Merge(&serde_json::json!({"metadata": metadata}))).await {
            Ok(patched) => patched,
            Err(e) => {
                // Changed or gone since our view: the next reconcile reads the ledger fresh.
                if is_conflict(&e) || is_not_found(&e) {
                    self.ctx.ledger.invalidate(self.ns(), &self.app.name);
                }
                return Err(write_error::<ControllerRevision>(self.ns(), &name, e));
            }
        };
        // Seen by the next reconcile whatever the watch shows by then.
        self.ctx.ledger.wrote(&patched);
        self.versions.insert(revision.to_string(), patched.metadata.resource_version);
        Ok(())
    }

    fn generated_entry(&self, env: &str) -> Option<&empacts_api::SecretEnv> {
        self.app.spec.secrets().iter().find(|e| e.env == env && e.generate.is_some())
    }

    async fn create_secret(&mut self, env: &str) -> Result<()> {
        let Some(entry) = self.generated_entry(env) else { return Ok(()) };
        let length = entry.generate.as_ref().map(|g| g.length()).unwrap_or_default();
        let mut secret = build::secret::build(self.app, entry, &SecretValue::generate(length))
            .expect("entry has generate, so a Secret is built");
        // A request made before the Secret existed is satisfied by its first value.
        if let Some(request) = &self.observed.input.rotation {
            secret.annotations_mut().insert(annotations::ROTATION.into(), request.clone());
        }
        let name = secret.name_any();
        match Api::<Secret>::namespaced(self.client().clone(), self.ns()).create(&create_params(), &secret).await {
            // Kept as read, so the next reconcile sees it even before the watch does.
            Ok(created) => self.ctx.secret_cache.put(&created),
            // It exists, yet our listed watch did not show it (made by someone else, without
            // the watch label): never overwritten; read fresh from now on, by the next reconcile
            // (an app creating its Secrets is requeued within seconds).
            Err(e) if is_conflict(&e) => {
                self.ctx.secret_cache.found_unlabelled(self.ns(), &name);
                return Ok(());
            }
            Err(e) => return Err(write_error::<Secret>(self.ns(), &name, e)),
        }
        self.outcome.secrets_created.push(name);
        Ok(())
    }

    async fn rotate_secret(&mut self, env: &str, request: &str) -> Result<()> {
        let (Some(entry), Some(current)) = (self.generated_entry(env), self.observed.generated.get(env)) else {
            return Ok(());
        };
        let length = entry.generate.as_ref().map(|g| g.length()).unwrap_or_default();
        let fresh = build::secret::build(self.app, entry, &SecretValue::generate(length))
            .expect("entry has generate, so a Secret is built");
        let mut next = current.clone();
        next.data = fresh.data;
        next.string_data = None;
        next.metadata.managed_fields = None;
        // The value and the request it satisfies change in one write; the resourceVersion
        // kept from `current` makes a concurrent change (or a second rotation) fail.
        next.annotations_mut().insert(annotations::ROTATION.into(), request.to_string());
        let name = current.name_any();
        let rotated = Api::<Secret>::namespaced(self.client().clone(), self.ns())
            .replace(&name, &create_params(), &next)
            .await
            .map_err(|e| write_error::<Secret>(self.ns(), &name, e))?;
        // The copy the next reconcile sees, whatever the watch shows by then (a lagging watch
        // would otherwise serve the value this replaced).
        self.ctx.secret_cache.put(&rotated);
        self.outcome.secrets_rotated.push(name);
        Ok(())
    }

    async fn release_secret(&mut self, env: &str) -> Result<()> {
        let Some(current) = self.observed.generated.get(env) else { return Ok(()) };
        let keep: Vec<_> = current.owner_references().iter().filter(|o| o.uid != self.app.uid).cloned().collect();
        let patch = serde_json::json!({"metadata": {
            "ownerReferences": keep,
            "resourceVersion": current.resource_version(),
        }});
        let name = current.name_any();
        let released = Api::<Secret>::namespaced(self.client().clone(), self.ns())
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| write_error::<Secret>(self.ns(), &name, e))?;
        self.ctx.secret_cache.put(&released);
        Ok(())
    }

    /// The serving children of the current spec; one no longer wanted goes, if ours.
    async fn serving(&mut self) -> Result<()> {
        let children = build::build_all(self.app, None, None, |_| None);
        let uid = self.app.uid.as_str();
        let name = names::workload(&self.app.name);
        for (kind, obj) in children.serving() {
            // Prometheus Operator objects only while their CRDs are installed.
            if !self.ctx.monitoring.writable(kind) {
                continue;
            }
            let live = self.observed.children.get(kind, &name);
            match obj {
                Some(obj) => ensure(self.ctx, obj, live, uid).await?,
                None if live.is_some_and(|m| controlled_by(m, uid)) => {
                    let api = dynamic_api(self.client(), self.ns(), kind);
                    let params =
                        DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
                    match api.delete(&name, &params).await {
                        Ok(_) => {}
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(dyn_write_error(kind, self.ns(), &name, e)),
                    }
                }
                None => {}
            }
        }
        Ok(())
    }
}

/// The API of a registered kind, for objects handled as generic JSON.
fn dynamic_api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let registered = registry::child_kind(kind).unwrap_or_else(|| panic!("{kind} is registered"));
    Api::namespaced_with(client.clone(), ns, &registered.api_resource())
}

fn dyn_write_error(kind: &str, ns: &str, name: &str, source: kube::Error) -> Error {
    Error::Write { kind: kind.into(), namespace: ns.into(), name: name.into(), source: Box::new(source) }
}

trait Object:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug
{
}
impl<K> Object for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug
{
}

/// Create; never touches an existing object (a conflict is an error).
async fn create<K: Object>(client: &Client, obj: &K) -> Result<K> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    Api::<K>::namespaced(client.clone(), &ns)
        .create(&create_params(), obj)
        .await
        .map_err(|e| write_error::<K>(&ns, &name, e))
}

/// Kind, namespace and name of a child given as generic JSON.
fn identity(obj: &serde_json::Value) -> (String, String, String) {
    let field = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    (field(&obj["kind"]), field(&obj["metadata"]["namespace"]), field(&obj["metadata"]["name"]))
}

fn with_applied_hash(mut obj: serde_json::Value) -> serde_json::Value {
    let hash = crate::hash::content_hash(&obj);
    let meta = obj["metadata"].as_object_mut().expect("children have metadata");
    let annotations = meta.entry("annotations").or_insert_with(|| serde_json::json!({}));
    annotations[APPLIED_ANNOTATION] = hash.into();
    obj
}

/// Create a child (with its applied-hash), reporting an existing object as NameTaken.
async fn create_child(ctx: &Context, obj: serde_json::Value) -> Result<()> {
    let (kind, ns, name) = identity(&obj);
    let obj: DynamicObject = serde_json::from_value(with_applied_hash(obj)).expect("children are objects");
    match dynamic_api(&ctx.client, &ns, &kind).create(&create_params(), &obj).await {
        Ok(created) => {
            ctx.applied.record(&kind, &crate::children::cached_meta(&kind, &created));
            ctx.metrics.child_applies.with_label_values(&[kind.as_str(), "created"]).inc();
            Ok(())
        }
        // Not in our view as ours, yet it exists: someone else's (or our view lags; the next
        // reconcile sees it then).
        Err(e) if is_conflict(&e) => Err(Error::NameTaken { kind, namespace: ns, name }),
        Err(e) => Err(dyn_write_error(&kind, &ns, &name, e)),
    }
}

/// A child this app must have: created when absent from `live` (cached or freshly read
/// metadata), server-side applied only when it carries this app's controller reference.
async fn ensure(ctx: &Context, obj: serde_json::Value, live: Option<&ObjectMeta>, uid: &str) -> Result<()> {
    ensure_with(ctx, obj, live, uid, false).await
}

/// [`ensure`], applying even when `live` carries the current hash if `changed` says the live
/// object differs from it anyway.
async fn ensure_with(
    ctx: &Context,
    obj: serde_json::Value,
    live: Option<&ObjectMeta>,
    uid: &str,
    changed: bool,
) -> Result<()> {
    match live {
        None => create_child(ctx, obj).await,
        Some(live) if controlled_by(live, uid) => apply_child(ctx, obj, live, changed).await,
        Some(_) => {
            let (kind, namespace, name) = identity(&obj);
            Err(Error::NameTaken { kind, namespace, name })
        }
    }
}

/// Server-side apply of a child we control, unless `live` shows it already is exactly
/// what we would apply. The hash of the desired object travels in an annotation; the UID
/// in the body makes the API server refuse the write if the object was replaced meanwhile.
async fn apply_child(ctx: &Context, obj: serde_json::Value, live: &ObjectMeta, changed: bool) -> Result<()> {
    let (kind, ns, name) = identity(&obj);
    let hash = crate::hash::content_hash(&obj);
    if !changed && ctx.applied.is_current(&kind, live, &hash) {
        ctx.metrics.child_applies.with_label_values(&[kind.as_str(), "skipped"]).inc();
        return Ok(());
    }
    let mut value = with_applied_hash(obj);
    value["metadata"]["uid"] = live.uid.clone().into();
    let api = dynamic_api(&ctx.client, &ns, &kind);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    if upgraded_managed_fields(live.managed_fields.as_deref().unwrap_or_default()).is_some() {
        // The fields our create (or a replica-count patch) set belong to our Update entry, and
        // an apply never removes fields only that entry owns: an env var of a removed secret
        // would stay in the pod template. Hand them to our Apply entry first (what kubectl's
        // client-side-to-server-side upgrade does), on the version we read. The caches keep
        // only our own entries and the patch rewrites the whole list, so it is read whole
        // (a list by name: the verbs granted for every kind), once per object.
        let by_name = kube::api::ListParams::default().fields(&format!("metadata.name={name}"));
        let fresh = api.list(&by_name).await.map_err(|e| dyn_write_error(&kind, &ns, &name, e))?;
        // Gone meanwhile: the apply below fails on the UID and the next reconcile creates it.
        let fresh = fresh.items.into_iter().next().map(|o| o.metadata).unwrap_or_default();
        if let Some(fields) = upgraded_managed_fields(fresh.managed_fields.as_deref().unwrap_or_default()) {
            let patch = serde_json::json!({"metadata": {
                "managedFields": fields,
                "resourceVersion": fresh.resource_version,
                "uid": live.uid,
            }});
            let merge = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            api.patch(&name, &merge, &Patch::Merge(&patch)).await.map_err(|e| dyn_write_error(&kind, &ns, &name, e))?;
        }
    }
    let applied = match api.patch(&name, &params, &Patch::Apply(&value)).await {
        // Someone else's edit of a keyed list (say a Service port) can leave entries our apply
        // cannot remove, making the merged object invalid. Take the object back with a merge
        // patch (lists replaced whole), then apply again so we own the fields. Only for
        // objects this app controls (the UID in the body guards that).
        Err(kube::Error::Api(s)) if s.code == 422 => {
            let merge = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            api.patch(&name, &merge, &Patch::Merge(&value)).await.map_err(|e| dyn_write_error(&kind, &ns, &name, e))?;
            api.patch(&name, &params, &Patch::Apply(&value)).await.map_err(|e| dyn_write_error(&kind, &ns, &name, e))?
        }
        other => other.map_err(|e| dyn_write_error(&kind, &ns, &name, e))?,
    };
    ctx.applied.record(&kind, &crate::children::cached_meta(&kind, &applied));
    ctx.metrics.child_applies.with_label_values(&[kind.as_str(), "applied"]).inc();
    Ok(())
}

/// Our manager's entries of the main resource merged into one Apply entry, when any of them
/// is an Update entry (None: nothing to upgrade).
pub fn upgraded_managed_fields(fields: &[ManagedFieldsEntry]) -> Option<Vec<ManagedFieldsEntry>> {
    let main = |f: &ManagedFieldsEntry| f.subresource.as_deref().unwrap_or_default().is_empty();
    let ours = |f: &ManagedFieldsEntry| f.manager.as_deref() == Some(FIELD_MANAGER) && main(f);
    if !fields.iter().any(|f| ours(f) && f.operation.as_deref() == Some("Update")) {
        return None;
    }
    let mut merged = serde_json::json!({});
    let mut api_version = None;
    let mut time = None;
    for f in fields.iter().filter(|f| ours(f)) {
        if let Some(v) = &f.fields_v1 {
            merge_fields(&mut merged, &v.0);
        }
        if f.operation.as_deref() == Some("Apply") || api_version.is_none() {
            api_version = f.api_version.clone();
        }
        time = time.max(f.time.clone());
    }
    let mut out: Vec<ManagedFieldsEntry> = fields.iter().filter(|f| !ours(f)).cloned().collect();
    out.push(ManagedFieldsEntry {
        manager: Some(FIELD_MANAGER.into()),
        operation: Some("Apply".into()),
        api_version,
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(FieldsV1(merged)),
        time,
        subresource: None,
    });
    Some(out)
}

/// Union of two FieldsV1 trees (nested maps whose leaves are `{}`).
fn merge_fields(into: &mut serde_json::Value, from: &serde_json::Value) {
    let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) else { return };
    for (k, v) in from {
        merge_fields(into.entry(k.clone()).or_insert_with(|| serde_json::json!({})), v);
    }
}

/// Delete if present (background propagation, so a Job's pods go too).
async fn delete<K: Object>(client: &Client, ns: &str, name: &str) -> Result<bool> {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(write_error::<K>(ns, name, e)),
    }
}

/// Set a Deployment's replica count (only that field: its template stays as it is), if it
/// differs. A later apply of the Deployment sets its own count again.
async fn scale(client: &Client, deployment: &k8s_openapi::api::apps::v1::Deployment, replicas: i32) -> Result<()> {
    if deployment.spec.as_ref().and_then(|s| s.replicas) == Some(replicas) {
        return Ok(());
    }
    let (ns, name) = (deployment.namespace().unwrap_or_default(), deployment.name_any());
    let api: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"metadata": {"uid": deployment.metadata.uid}, "spec": {"replicas": replicas}});
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    match api.patch(&name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(write_error::<k8s_openapi::api::apps::v1::Deployment>(&ns, &name, e)),
    }
}

/// How long a finished migration Job (and its pod's logs) stays once the ledger holds its result.
pub const FINISHED_JOB_TTL_SECONDS: i32 = 24 * 3600;

/// Let the TTL controller remove a finished Job whose result is recorded.
async fn expire_job(client: &Client, ns: &str, name: &str) -> Result<()> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({"spec": {"ttlSecondsAfterFinished": FINISHED_JOB_TTL_SECONDS}});
    match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(write_error::<Job>(ns, name, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(manager: &str, operation: &str, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            api_version: Some("apps/v1".into()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    #[test]
    fn our_update_entry_is_merged_into_our_apply_entry_and_others_are_kept() {
        let create = entry(FIELD_MANAGER, "Update", serde_json::json!({"f:spec": {"f:replicas": {}, "f:a": {}}}));
        let apply = entry(FIELD_MANAGER, "Apply", serde_json::json!({"f:spec": {"f:b": {}}}));
        let theirs = entry("kubectl", "Update", serde_json::json!({"f:metadata": {"f:labels": {}}}));
        let mut status = entry(FIELD_MANAGER, "Update", serde_json::json!({"f:status": {}}));
        status.subresource = Some("status".into());
        let out = upgraded_managed_fields(&[create, apply.clone(), theirs.clone(), status.clone()]).unwrap();
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(out.contains(&theirs) && out.contains(&status), "others' entries and subresources stay");
        let ours = out.iter().find(|f| f.operation.as_deref() == Some("Apply")).unwrap();
        let merged = &ours.fields_v1.as_ref().unwrap().0;
        assert_eq!(merged, &serde_json::json!({"f:spec": {"f:replicas": {}, "f:a": {}, "f:b": {}}}));
        assert_eq!(upgraded_managed_fields(&[apply, theirs]), None, "nothing to upgrade");
    }
}
