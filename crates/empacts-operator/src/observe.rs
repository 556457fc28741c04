//! Second reconcile step: every read of the reconcile, and nothing else. Children the
//! controller watches (the Deployment, Jobs, and the metadata of the others) come from its
//! caches, an absence the ledger contradicts confirmed by a fresh read. The ledger
//! (ControllerRevisions) comes from its cache with this process's own writes laid over it
//! (`ledger_cache`), read fresh only until that cache has listed. Watched Secrets' values are
//! read once per resourceVersion; unwatched referenced Secrets are read fresh.

use std::collections::BTreeMap;

use empacts_api::{EmpactsAppSpec, EmpactsAppStatus, annotations, conditions::reasons, labels};
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ListParams;
use kube::{Api, Client, Resource, ResourceExt};

use crate::build::{self, configmap, revision as cr};
use crate::children::ChildMetas;
use crate::error::{Error, Result};
use crate::hash::HashKey;
use crate::ledger::{self, Entry, Ledger, MigrationState};
use crate::plan::{
    AnalysisSettings, Delivery, DeploymentState, GeneratedSecret, JobKind, JobState, ObservedJob, PlanInput,
    RollbackRequest, Step,
};
use crate::revision::{RevisionSpec, identity};
use crate::secret_reads::{SecretCache, SecretReads};
use crate::validate::ValidatedApp;
use crate::{hash, legacy, names};

/// What the cluster holds for one app, and the decision input made of it.
#[derive(Debug, Clone)]
pub struct Observed {
    pub input: PlanInput,
    /// The app with the names of its generated Secrets as found.
    pub app: ValidatedApp,
    /// The Deployment, if this app controls it.
    pub deployment: Option<Deployment>,
    /// The canary Deployment, if this app controls it.
    pub canary: Option<Deployment>,
    /// Recorded spec of each readable revision (D: the current spec).
    pub specs: BTreeMap<String, EmpactsAppSpec>,
    /// Hash of the referenced Secret content per revision whose references are all present.
    pub config_hashes: BTreeMap<String, Option<String>>,
    /// Generated Secrets that exist, by env name (for rotation and release).
    pub generated: BTreeMap<String, Secret>,
    /// Metadata of the children from the controller's caches.
    pub children: ChildMetas,
    /// The app's Jobs as read (for the migration metrics).
    pub jobs: Vec<Job>,
}

pub fn instance_selector(app: &str) -> String {
    format!("{}={app},{}={}", labels::INSTANCE, labels::MANAGED_BY, labels::MANAGER)
}

/// The app's ControllerRevisions, read fresh.
pub async fn list_revisions(client: &Client, ns: &str, app: &str) -> Result<Vec<ControllerRevision>> {
    let selector = ListParams::default().labels(&instance_selector(app));
    Api::<ControllerRevision>::namespaced(client.clone(), ns)
        .list(&selector)
        .await
        .map(|list| list.items)
        .map_err(|e| read_error("ControllerRevision", ns, &instance_selector(app), e))
}

/// This app is the controller of the object.
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == uid)
}

fn read_error(kind: &str, ns: &str, name: &str, source: kube::Error) -> Error {
    Error::Read { kind: kind.into(), namespace: ns.into(), name: name.into(), source: Box::new(source) }
}

/// `previous` (the app's status) is read only to import the facts of revisions an earlier
/// build recorded, once; no decision reads it otherwise.
pub async fn observe(
    client: &Client,
    key: &HashKey,
    app: &ValidatedApp,
    previous: &EmpactsAppStatus,
    children: ChildMetas,
    secret_cache: Option<&SecretCache>,
) -> Result<Observed> {
    let mut app = app.clone();
    let ns = &app.namespace.clone();
    let selector = ListParams::default().labels(&instance_selector(&app.name));
    // From the controller's cache; an absence is confirmed by a fresh read unless the cache
    // has listed and this process did not create it (then a lagging watch cannot hide it; an
    // object someone else made meanwhile makes our create fail, as NameTaken).
    let deployment = match children.deployment.clone() {
        Some(d) if children.cached => Some(d),
        None if children.cached && children.deployment_absent => None,
        _ => Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(&names::workload(&app.name))
            .await
            .map_err(|e| read_error("Deployment", ns, &app.name, e))?,
    };
    // The canary exists only during canaries: a cached absence is believed (a canary the
    // cache has not shown yet is applied again, which changes nothing).
    let canary = match children.canary.clone() {
        Some(d) => Some(d),
        None if children.cached => None,
        None => Api::<Deployment>::namespaced(client.clone(), ns)
            .get_opt(&names::canary(&app.name))
            .await
            .map_err(|e| read_error("Deployment", ns, &names::canary(&app.name), e))?,
    };
    let revisions = match children.revisions.clone() {
        Some(cached) => cached,
        None => list_revisions(client, ns, &app.name).await?,
    };
    let mut specs = BTreeMap::new();
    let mut entries = Vec::new();
    for record in revisions.iter().filter(|c| controlled_by(&c.metadata, &app.uid)) {
        let Some(revision) = cr::revision_of(record) else { continue };
        let spec = cr::recorded_spec(record).ok();
        let mut entry = describe(&app, revision, spec.as_ref());
        ledger::read_marks(record, &mut entry);
        entry.recorded_at = record.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
        if let Some(spec) = spec {
            specs.insert(revision.to_string(), spec);
        }
        entries.push(entry);
    }
    entries.sort_by_key(|e| e.number);
    let desired = desired_revision(&app.spec, &entries, &specs);
    // D's effective spec is the current one (a rollbackCommand added later counts).
    specs.insert(desired.clone(), app.spec.clone());
    let desired_entry = describe(&app, &desired, Some(&app.spec));
    if let Some(e) = entries.iter_mut().find(|e| e.revision == desired) {
        e.has_rollback_command = desired_entry.has_rollback_command;
        e.spec_readable = true;
    }
    // Jobs from the cache, unless the ledger expects one the cache does not show (created by
    // the last reconcile, not seen yet): then fresh, so a lagging cache never reads as a lost Job.
    let expected = |jobs: &[Job]| {
        let seen: Vec<ObservedJob> = jobs.iter().filter_map(observed_job).collect();
        entries.iter().all(|e| {
            let kind = match e.migration.state {
                MigrationState::Created => JobKind::Migrate,
                MigrationState::DownCreated => JobKind::Rollback,
                _ => return true,
            };
            seen.iter().any(|j| j.kind == kind && j.revision == e.revision && j.attempt == e.migration.attempt)
        })
    };
    let jobs = if children.cached && expected(&children.jobs) {
        children.jobs.clone()
    } else {
        Api::<Job>::namespaced(client.clone(), ns)
            .list(&selector)
            .await
            .map_err(|e| read_error("Job", ns, &instance_selector(&app.name), e))?
            .items
    };
    let observed_jobs: Vec<ObservedJob> =
        jobs.iter().filter(|j| controlled_by(&j.metadata, &app.uid)).filter_map(observed_job).collect();
    let imports = legacy::import(&mut entries, previous, &observed_jobs, app.generation);
    let ledger = Ledger { entries };

    let mut name_taken = None;
    let deployment = match deployment {
        Some(d) if !controlled_by(&d.metadata, &app.uid) => {
            name_taken = Some(format!("Deployment {ns}/{}", d.name_any()));
            None
        }
        other => other,
    };
    let canary = match canary {
        Some(d) if !controlled_by(&d.metadata, &app.uid) => {
            name_taken = name_taken.or(Some(format!("Deployment {ns}/{}", d.name_any())));
            None
        }
        other => other,
    };
    // The named children the spec asks for: the ServiceAccount and the serving ones.
    let built = build::build_all(&app, None, None, |_| None);
    let wanted: Vec<&str> = std::iter::once("ServiceAccount")
        .chain(built.serving().into_iter().filter(|(_, obj)| obj.is_some()).map(|(kind, _)| kind))
        .collect();
    name_taken = name_taken.or_else(|| children.foreign(&app, &wanted));

    let mut generated = BTreeMap::new();
    let mut known: BTreeMap<String, Option<Secret>> = BTreeMap::new();
    let mut secrets = Vec::new();
    let secret_reads = SecretReads::new(client, ns, secret_cache, children.secrets.clone(), children.secrets_listed);
    let generated_entries: Vec<_> = app.spec.secrets().iter().filter(|e| e.generate.is_some()).cloned().collect();
    for entry in &generated_entries {
        let mut name = names::generated_secret(&app.name, &entry.env);
        let mut live = secret_reads.get_labelled(&name).await.map_err(|e| read_error("Secret", ns, &name, e))?;
        if live.is_none() {
            // Earlier builds did not label what they generated for the watch: read fresh.
            let legacy = names::legacy_generated_secret(&app.name, &entry.env);
            let old = secret_reads.get_opt(&legacy).await.map_err(|e| read_error("Secret", ns, &legacy, e))?;
            if let Some(old) = old.filter(|s| generated_for(s, &app)) {
                (name, live) = (legacy, Some(old));
                app.generated_names.insert(entry.env.clone(), name.clone());
            }
        }
        let retain = entry.generate.as_ref().is_some_and(|g| g.retain());
        let observed = match &live {
            None => GeneratedSecret { env: entry.env.clone(), name: name.clone(), retain, ..Default::default() },
            Some(s) => GeneratedSecret {
                env: entry.env.clone(),
                name: name.clone(),
                exists: true,
                ours: generated_for(s, &app),
                owned: s.owner_references().iter().any(|o| o.uid == app.uid),
                retain,
                rotation: s.annotations().get(annotations::ROTATION).cloned(),
            },
        };
        // Read once per reconcile, present or not: the references below reuse what this found.
        known.insert(name.clone(), live.clone());
        if let Some(s) = live {
            generated.insert(entry.env.clone(), s);
        }
        secrets.push(observed);
    }

    // References of D, and of the revision a rollback would restore.
    let mut config_hashes = BTreeMap::new();
    let mut missing_reference = None;
    let live_hash = deployment
        .as_ref()
        .and_then(|d| d.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()?.get(annotations::CONFIG_HASH))
        .cloned();
    let hashing = Hashing { key, live: live_hash.as_deref() };
    match references(&secret_reads, hashing, &app, &app.spec, &known).await? {
        References::Present { config_hash } => drop(config_hashes.insert(desired.clone(), config_hash)),
        References::Missing { reason, message } => missing_reference = Some((reason.to_string(), message)),
    }
    let mut candidates: Vec<String> =
        ledger.rollback_target(&desired).map(|e| e.revision.clone()).into_iter().collect();
    let rollback = rollback_request(&app, &ledger);
    if let Some(r) = &rollback {
        candidates.push(r.target.clone());
    }
    for revision in candidates {
        if revision == desired || config_hashes.contains_key(&revision) {
            continue;
        }
        let Some(spec) = specs.get(&revision) else { continue };
        if let References::Present { config_hash } = references(&secret_reads, hashing, &app, spec, &known).await? {
            config_hashes.insert(revision, config_hash);
        }
    }

    let live_replicas = deployment.as_ref().and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas);
    let input = PlanInput {
        app: app.name.clone(),
        generation: app.generation,
        invalid: None,
        desired,
        desired_entry,
        has_migration: app.spec.migration.is_some(),
        auto_rollback: app.spec.rollout().auto_rollback(),
        paused: app.spec.paused(),
        history_limit: app.spec.rollout().revision_history_limit().max(1) as usize,
        retry: app.annotations.get(annotations::RETRY).cloned(),
        rollback,
        rotation: app.annotations.get(annotations::ROTATE_SECRETS).cloned(),
        ledger,
        deployment: deployment.as_ref().map(deployment_state),
        jobs: observed_jobs,
        secrets,
        missing_reference,
        references_ok: config_hashes.keys().cloned().collect(),
        name_taken,
        config_maps: children.config_maps(&app),
        imports,
        now: k8s_openapi::jiff::Timestamp::now().as_second(),
        progress_deadline: i64::from(app.spec.rollout().progress_deadline_seconds()),
        delivery: delivery(&app.spec),
        analysis: app.spec.analysis.as_ref().map(|a| AnalysisSettings {
            interval: a.interval_seconds(),
            failure_limit: a.failure_limit(),
            inconclusive_limit: a.inconclusive_limit(),
            duration: a.duration_seconds(),
        }),
        measurement: None,
        canary: canary.as_ref().map(deployment_state),
        replicas: build::deployment::replicas(&app, live_replicas),
        autoscaled: app.spec.autoscaling.is_some(),
        promote: app.annotations.get(annotations::PROMOTE).cloned(),
        abort: app.annotations.get(annotations::ABORT).cloned(),
        monitoring_unavailable: None,
    };
    let mut input = input;
    if let Some(revision) = crate::plan::analysis_due(&input) {
        input.measurement = Some(crate::analysis::measure(&app.spec, ns, &app.name, &revision).await);
    }
    Ok(Observed { input, app, deployment, canary, specs, config_hashes, generated, children, jobs })
}

/// The rollout strategy as the decision uses it.
pub fn delivery(spec: &EmpactsAppSpec) -> Delivery {
    let rollout = spec.rollout();
    match rollout.strategy() {
        empacts_api::RolloutStrategy::RollingUpdate => Delivery::RollingUpdate,
        empacts_api::RolloutStrategy::Canary => Delivery::Canary(
            rollout.steps().iter().map(|s| Step { weight: s.weight, pause: s.pause_seconds() }).collect(),
        ),
    }
}

/// A ledger entry's static facts from a revision's spec.
fn describe(app: &ValidatedApp, revision: &str, spec: Option<&EmpactsAppSpec>) -> Entry {
    Entry {
        revision: revision.to_string(),
        has_rollback_command: spec.and_then(|s| s.migration.as_ref()).is_some_and(|m| m.rollback_command.is_some()),
        spec_readable: spec.is_some(),
        image: spec.map(|s| s.image.clone()).unwrap_or_default(),
        config_map: spec.and_then(|s| configmap::name(app, &s.env.clone().unwrap_or_default())),
        ..Default::default()
    }
}

/// D: the recorded revision with the same revision-defining spec (newest first; earlier
/// builds named revisions differently), or a new one named by the current identity.
pub fn desired_revision(spec: &EmpactsAppSpec, entries: &[Entry], specs: &BTreeMap<String, EmpactsAppSpec>) -> String {
    let wanted = RevisionSpec::of(spec);
    entries
        .iter()
        .rev()
        .find(|e| specs.get(&e.revision).is_some_and(|s| RevisionSpec::of(s) == wanted))
        .map(|e| e.revision.clone())
        .unwrap_or_else(|| identity(spec))
}

/// The manual rollback request on the app, with a revision number resolved to its name.
fn rollback_request(app: &ValidatedApp, ledger: &Ledger) -> Option<RollbackRequest> {
    let value = app.annotations.get(annotations::ROLLBACK_TO)?;
    let wanted = value.split('@').next().unwrap_or_default();
    let target = ledger
        .entries
        .iter()
        .find(|e| e.revision == wanted || e.number.to_string() == wanted)
        .map(|e| e.revision.clone())
        .unwrap_or_else(|| wanted.to_string());
    Some(RollbackRequest { value: value.clone(), target })
}

/// The operator generated this Secret for this app: it is owned by the app, or (retained,
/// so without an owner) labelled as generated for an app of this name.
fn generated_for(secret: &Secret, app: &ValidatedApp) -> bool {
    let refs = secret.owner_references();
    let labels = secret.labels();
    let generated = labels.get(labels::GENERATED_SECRET).is_some_and(|v| v == "true");
    let owned = refs.iter().any(|o| o.uid == app.uid);
    let unowned_ours = refs.is_empty() && labels.get(labels::INSTANCE) == Some(&app.name);
    generated && (owned || unowned_ours)
}

fn observed_job(job: &Job) -> Option<ObservedJob> {
    let labels = job.labels();
    let kind = match labels.get(labels::COMPONENT).map(String::as_str) {
        Some(build::job::ROLLBACK_COMPONENT) => JobKind::Rollback,
        Some(build::job::MIGRATION_COMPONENT) => JobKind::Migrate,
        _ => return None,
    };
    Some(ObservedJob {
        name: job.name_any(),
        kind,
        revision: labels.get(labels::REVISION)?.clone(),
        // Jobs of earlier builds carry no attempt: they ran the first one.
        attempt: job.annotations().get(ledger::JOB_ATTEMPT).and_then(|a| a.parse().ok()).unwrap_or(1),
        state: job_state(Some(job)),
        expiring: job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished).is_some(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum References {
    /// All present; the hash rolls the pods when any value changes.
    Present { config_hash: Option<String> },
    /// (reason, message) naming the missing Secret or key.
    Missing { reason: &'static str, message: String },
}

/// How the content hash of referenced Secrets is computed.
#[derive(Debug, Clone, Copy)]
pub struct Hashing<'a> {
    /// The installation's key.
    pub key: &'a HashKey,
    /// The hash the live pod template carries.
    pub live: Option<&'a str>,
}

impl Hashing<'_> {
    /// An HMAC under the installation's key. One exception, so an upgrade does not roll every
    /// pod: when every value is operator-generated (random, 256 bits and more), the unkeyed hash
    /// of earlier builds reveals nothing, and a live template still carrying it keeps it.
    /// Any user-referenced value may be guessable: then the keyed hash replaces the old one.
    pub fn hash(&self, parts: &[Vec<u8>], all_generated: bool) -> String {
        let unkeyed = || hash::bytes_hash(parts.iter().map(Vec::as_slice));
        match self.live {
            Some(live) if all_generated && live == unkeyed() => live.to_string(),
            _ => hash::keyed_bytes_hash(self.key, parts.iter().map(Vec::as_slice)),
        }
    }
}

/// Read every Secret `spec` references (user-owned and generated; those in `known` were read
/// already this reconcile) and hash their values (see [`Hashing`]).
pub async fn references(
    secrets: &SecretReads<'_>,
    hashing: Hashing<'_>,
    app: &ValidatedApp,
    spec: &EmpactsAppSpec,
    known: &BTreeMap<String, Option<Secret>>,
) -> Result<References> {
    let mut cache = known.clone();
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let all_generated = spec.secrets().iter().all(|e| e.secret_key_ref.is_none());
    for entry in spec.secrets() {
        let (name, data_key, generated) = match &entry.secret_key_ref {
            Some(r) => (r.name.clone(), r.key.clone(), false),
            None => (app.generated_secret(&entry.env), names::GENERATED_SECRET_KEY.to_string(), true),
        };
        if !cache.contains_key(&name) {
            let secret =
                secrets.get_opt(&name).await.map_err(|source| read_error("Secret", &app.namespace, &name, source))?;
            cache.insert(name.clone(), secret);
        }
        let Some(secret) = cache[&name].as_ref() else {
            let message = if generated {
                format!("generated Secret {name} for {} does not exist yet", entry.env)
            } else {
                format!(
                    "Secret {name} (referenced by spec.secrets {} secretKeyRef) does not exist in namespace {}; create it or fix the reference",
                    entry.env, app.namespace
                )
            };
            return Ok(References::Missing { reason: reasons::SECRET_NOT_FOUND, message });
        };
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&data_key))
            .map(|v| v.0.clone())
            .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(&data_key)).map(|v| v.clone().into_bytes()));
        // The message names the missing key only: the Secret's other key names are not the
        // app author's to learn (they may only be allowed to create EmpactsApps).
        let Some(value) = value else {
            return Ok(References::Missing {
                reason: reasons::SECRET_KEY_NOT_FOUND,
                message: format!(
                    "Secret {name} has no key {data_key} (referenced by spec.secrets {}); add the key or fix the reference",
                    entry.env
                ),
            });
        };
        parts.push(name.into_bytes());
        parts.push(data_key.into_bytes());
        parts.push(value);
    }
    let config_hash = (!parts.is_empty()).then(|| hashing.hash(&parts, all_generated));
    Ok(References::Present { config_hash })
}

/// The Deployment as the decision sees it.
pub fn deployment_state(deployment: &Deployment) -> DeploymentState {
    let status = deployment.status.clone().unwrap_or_default();
    let generation = deployment.metadata.generation.unwrap_or(0);
    let observed_generation = status.observed_generation.unwrap_or(0);
    let progress_deadline_exceeded = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing" && c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    DeploymentState {
        revision: deployment.meta().annotations.as_ref().and_then(|a| a.get(annotations::REVISION)).cloned(),
        generation,
        observed_generation,
        desired_replicas: deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        replicas: status.replicas.unwrap_or(0),
        updated_replicas: status.updated_replicas.unwrap_or(0),
        ready_replicas: status.ready_replicas.unwrap_or(0),
        available_replicas: status.available_replicas.unwrap_or(0),
        progress_deadline_exceeded,
        progressed_at: status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Progressing")
            .and_then(|c| c.last_update_time.as_ref())
            .map(|t| t.0.as_second()),
    }
}

/// A Job's outcome from its conditions.
pub fn job_state(job: Option<&Job>) -> JobState {
    let Some(job) = job else { return JobState::Absent };
    let conditions = job.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    if conditions.iter().any(|c| c.type_ == "Complete" && c.status == "True") {
        return JobState::Succeeded;
    }
    if let Some(c) = conditions.iter().find(|c| c.type_ == "Failed" && c.status == "True") {
        return JobState::Failed {
            reason: c.reason.clone().unwrap_or_else(|| "Failed".into()),
            message: c.message.clone().unwrap_or_default(),
        };
    }
    JobState::Running
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

    fn job_with(type_: &str, reason: &str) -> Job {
        Job {
            status: Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: type_.into(),
                    status: "True".into(),
                    reason: Some(reason.into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_unkeyed_hash_of_earlier_builds_survives_only_for_generated_values() {
        let key = HashKey::new(vec![1; 32]);
        let parts = vec![b"api.gen.jwt".to_vec(), b"value".to_vec(), b"random-64-chars".to_vec()];
        let unkeyed = hash::bytes_hash(parts.iter().map(Vec::as_slice));
        let keyed = hash::keyed_bytes_hash(&key, parts.iter().map(Vec::as_slice));
        let live = |live| Hashing { key: &key, live };
        assert_eq!(live(Some(&unkeyed)).hash(&parts, true), unkeyed, "generated only: no roll on upgrade");
        assert_eq!(live(Some(&unkeyed)).hash(&parts, false), keyed, "a user value: the leak goes");
        assert_eq!(live(None).hash(&parts, true), keyed, "new templates are always keyed");
        assert_eq!(live(Some("other")).hash(&parts, true), keyed, "a changed value gets the keyed hash");
    }

    #[test]
    fn job_states() {
        assert_eq!(job_state(None), JobState::Absent);
        assert_eq!(job_state(Some(&Job::default())), JobState::Running);
        assert_eq!(job_state(Some(&job_with("Complete", ""))), JobState::Succeeded);
        assert_eq!(
            job_state(Some(&job_with("Failed", "DeadlineExceeded"))),
            JobState::Failed { reason: "DeadlineExceeded".into(), message: String::new() }
        );
    }

    #[test]
    fn a_recorded_revision_keeps_its_name_when_the_identity_scheme_changes() {
        let app = crate::build::test_support::app_from_yaml("spec: {image: 'api:1', port: 8080}");
        // Named by an earlier build's scheme; same revision-defining content, defaults differ in form.
        let recorded = crate::build::test_support::app_from_yaml("spec: {image: 'api:1'}").spec;
        let entries = vec![Entry { revision: "legacy0001".into(), number: 1, ..Default::default() }];
        let specs = BTreeMap::from([("legacy0001".to_string(), recorded)]);
        assert_eq!(desired_revision(&app.spec, &entries, &specs), "legacy0001");
        let other = crate::build::test_support::app_from_yaml("spec: {image: 'api:2'}");
        assert_eq!(desired_revision(&other.spec, &entries, &specs), identity(&other.spec));
    }
}
