//! One reconcile of one app: validate -> observe -> plan -> build -> apply -> status.
//! Only observe, apply and the status write touch the API server.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use empacts_api::{EmpactsApp, EmpactsAppStatus, Phase, annotations, conditions::reasons};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use crate::apply::{self, FIELD_MANAGER};
use crate::build::{self, configmap, deployment, revision as cr};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::observe::{self, Observed, References};
use crate::plan::{self, DeploymentTarget, JobState, Plan, PlanInput};
use crate::status::{self, StatusInput};
use crate::validate::{self, ValidatedApp};
use crate::{events, names};

/// Requeue while something is moving; watches usually wake us sooner.
const ACTIVE_REQUEUE: Duration = Duration::from_secs(5);
/// Periodic re-check of a settled app (drift, missed events).
const IDLE_REQUEUE: Duration = Duration::from_secs(300);

#[tracing::instrument(skip_all, fields(app = %app.name_any(), namespace = app.namespace().unwrap_or_default()))]
pub async fn reconcile(app: Arc<EmpactsApp>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer();
    if app.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the children.
        return Ok(Action::await_change());
    }
    let previous = app.status.clone().unwrap_or_default();
    let valid = match validate::validate(&app) {
        Ok(v) => v,
        Err(invalid) => return invalid_spec(&app, &ctx, &previous, Error::Invalid(invalid)).await,
    };
    let client = &ctx.client;

    let rotation = valid.annotations.get(annotations::ROTATE_SECRETS).cloned();
    let rotate = rotation.is_some() && rotation != previous.observed_rotation;
    let paused = valid.spec.paused();
    let generated =
        if paused { Default::default() } else { apply::ensure_generated_secrets(client, &valid, rotate).await? };

    let observed = observe::observe(client, &valid).await?;
    let desired = deployment::revision(&valid);
    let input = plan_input(&valid, &previous, &observed, &desired);
    let plan = plan::plan(&input);

    // A failed write still gets its status: users see why their app is not moving.
    let applied = if paused { Ok(()) } else { apply_plan(&ctx, &valid, &observed, &plan, &desired, &input).await };
    let apply_error = applied.as_ref().err().map(ToString::to_string);

    let retry = valid.annotations.get(annotations::RETRY).map(String::as_str).filter(|_| input.retry_requested);
    let new_status = status::compute(
        &plan,
        &StatusInput {
            previous: &previous,
            generation: valid.generation,
            desired: &desired,
            image: &valid.spec.image,
            has_migration: input.has_migration,
            migration_job: &input.migration_job,
            migration: &input.migration,
            deployment: observed.deployment_state.as_ref(),
            history_limit: valid.spec.rollout().revision_history_limit() as usize,
            retry,
            rotation: rotation.as_deref().filter(|_| rotate && !paused),
            error: apply_error.as_deref(),
            now: Time(k8s_openapi::jiff::Timestamp::now()),
        },
    );
    if new_status != previous {
        write_status(&ctx, &app, &new_status).await?;
    }
    applied?;
    // Domain events and counters only after the status that records them is stored.
    record_transitions(&ctx, &app, &previous, &new_status, &plan, &generated).await;
    for job in &observed.jobs {
        let component = job.labels().get(empacts_api::labels::COMPONENT).map(String::as_str);
        let kind = if component == Some(build::job::ROLLBACK_COMPONENT) { "rollback" } else { "migrate" };
        ctx.count_finished_job(job, kind);
    }
    ctx.set_phase(&app, plan.phase);

    let moving = matches!(plan.phase, Phase::Migrating | Phase::Progressing | Phase::RollingBack | Phase::Pending);
    Ok(Action::requeue(if moving { ACTIVE_REQUEUE } else { IDLE_REQUEUE }))
}

fn plan_input(app: &ValidatedApp, previous: &EmpactsAppStatus, observed: &Observed, desired: &str) -> PlanInput {
    let migration_job = names::migration_job(&app.name, desired);
    let migration = observe::job_state(observe::find_job(observed, &migration_job));
    let rollback_job = observe::job_state(observe::find_job(observed, &names::rollback_job(&app.name, desired)));
    let recorded = |rev: &str| observed.revisions.iter().find(|c| cr::revision_of(c) == Some(rev));
    let migrated = migration == JobState::Succeeded || recorded(desired).is_some_and(cr::migrated);
    let other_migration_running = observed
        .jobs
        .iter()
        .filter(|j| j.name_any() != migration_job)
        .find(|j| observe::job_state(Some(j)) == JobState::Running)
        .map(|j| j.name_any());
    let retry = app.annotations.get(annotations::RETRY);
    let rollout = app.spec.rollout();
    PlanInput {
        desired: desired.to_string(),
        has_migration: app.spec.migration.is_some(),
        has_rollback_command: app.spec.migration.as_ref().is_some_and(|m| m.rollback_command.is_some()),
        auto_rollback: rollout.auto_rollback(),
        paused: app.spec.paused(),
        retry_requested: retry.is_some() && retry != previous.observed_retry.as_ref(),
        last_good: previous.last_good_revision.clone(),
        failed: previous.failed_revision.clone(),
        last_good_recorded: previous.last_good_revision.as_deref().is_some_and(|g| recorded(g).is_some()),
        deployment: observed.deployment_state.clone(),
        migration_job,
        migration,
        migrated,
        rollback_job,
        other_migration_running,
        missing_reference: match &observed.references {
            References::Missing { reason, message } => Some((reason.to_string(), message.clone())),
            References::Present { .. } => None,
        },
    }
}

async fn apply_plan(
    ctx: &Context,
    app: &ValidatedApp,
    observed: &Observed,
    plan: &Plan,
    desired: &str,
    input: &PlanInput,
) -> Result<()> {
    let client = &ctx.client;
    let config_hash = match &observed.references {
        References::Present { config_hash } => config_hash.clone(),
        References::Missing { .. } => None,
    };
    let current_replicas = observed.deployment.as_ref().and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas);
    let live_deployment = observed.deployment.as_ref().map(|d| &d.metadata);
    let children = build::build_all(app, config_hash.as_deref(), current_replicas, |_| None);

    // Fixed order: identity and config before anything that runs pods.
    let sa = &children.service_account;
    apply::apply_cached_child(ctx, sa).await?;
    if let Some(cm) = &children.config_map {
        apply::apply_cached_child(ctx, cm).await?;
    }
    let acting_on_desired = plan.create_migration_job || plan.deployment == DeploymentTarget::Desired;
    if acting_on_desired {
        record_revision(ctx, app, observed, desired).await?;
    }
    if plan.delete_failed_migration_job {
        apply::delete_if_present::<Job>(client, &app.namespace, &input.migration_job).await?;
    }
    if plan.create_migration_job
        && let Some(job) = &children.migration_job
        && apply::create_if_absent(client, job).await?
    {
        info!(app = %app.name, namespace = %app.namespace, job = %input.migration_job, "migration started");
    }
    if input.migration == JobState::Succeeded {
        mark_migrated(ctx, app, observed, desired).await?;
    }
    if plan.create_rollback_job
        && let Some(job) = build::job::rollback(app)
    {
        apply::create_if_absent(client, &job).await?;
    }
    let mut keep_config_maps: BTreeSet<String> = children.config_map.iter().map(|c| c.name_any()).collect();
    match &plan.deployment {
        DeploymentTarget::Keep => {}
        DeploymentTarget::Desired => {
            apply::apply_child(ctx, &children.deployment, live_deployment).await?;
        }
        DeploymentTarget::Revision(good) => {
            let old = recorded_app(app, observed, good)?;
            let hash = match observe::references(client, &old, &old.spec).await? {
                References::Present { config_hash } => config_hash,
                References::Missing { .. } => config_hash.clone(),
            };
            if let Some(cm) = configmap::build(&old) {
                keep_config_maps.insert(cm.name_any());
                apply::apply_cached_child(ctx, &cm).await?;
            }
            let restored = deployment::build(&old, hash.as_deref(), current_replicas);
            apply::apply_child(ctx, &restored, live_deployment).await?;
        }
    }
    let svc = &children.service;
    apply::apply_cached_child(ctx, svc).await?;
    match &children.hpa {
        Some(hpa) => apply::apply_cached_child(ctx, hpa).await?,
        None => drop(apply::delete_owned::<HorizontalPodAutoscaler>(client, app, &app.name).await?),
    }
    match &children.pdb {
        Some(pdb) => apply::apply_cached_child(ctx, pdb).await?,
        None => drop(apply::delete_owned::<PodDisruptionBudget>(client, app, &app.name).await?),
    }
    prune(ctx, app, observed, plan, desired, keep_config_maps).await
}

/// The app as it was at an earlier revision, from its ControllerRevision.
fn recorded_app(app: &ValidatedApp, observed: &Observed, revision: &str) -> Result<ValidatedApp> {
    let record = observed.revisions.iter().find(|c| cr::revision_of(c) == Some(revision));
    let record = record.ok_or_else(|| Error::RecordedSpec {
        namespace: app.namespace.clone(),
        name: names::controller_revision(&app.name, revision),
        revision: revision.to_string(),
        source: serde::de::Error::custom("the ControllerRevision does not exist"),
    })?;
    let spec = cr::recorded_spec(record).map_err(|source| Error::RecordedSpec {
        namespace: app.namespace.clone(),
        name: record.name_any(),
        revision: revision.to_string(),
        source,
    })?;
    // Scaling and rollout settings are not part of a revision: the current spec's apply.
    let spec = empacts_api::EmpactsAppSpec {
        replicas: app.spec.replicas,
        autoscaling: app.spec.autoscaling.clone(),
        rollout: app.spec.rollout.clone(),
        ..spec
    };
    Ok(ValidatedApp { spec, ..app.clone() })
}

async fn record_revision(ctx: &Context, app: &ValidatedApp, observed: &Observed, desired: &str) -> Result<()> {
    if observed.revisions.iter().any(|c| cr::revision_of(c) == Some(desired)) {
        return Ok(());
    }
    let number = observed.revisions.iter().map(|c| c.revision).max().unwrap_or(0) + 1;
    apply::create_if_absent(&ctx.client, &cr::build(app, desired, number)).await.map(drop)
}

async fn mark_migrated(ctx: &Context, app: &ValidatedApp, observed: &Observed, desired: &str) -> Result<()> {
    let Some(record) = observed.revisions.iter().find(|c| cr::revision_of(c) == Some(desired)) else {
        return Ok(());
    };
    if cr::migrated(record) {
        return Ok(());
    }
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &app.namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {cr::MIGRATED_ANNOTATION: "true"}}});
    api.patch(&record.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(|source| {
        Error::Write {
            kind: "ControllerRevision".into(),
            namespace: app.namespace.clone(),
            name: record.name_any(),
            source: Box::new(source),
        }
    })?;
    Ok(())
}

/// Remove what no revision we may still need refers to: env ConfigMaps, old Jobs, old
/// ControllerRevisions beyond the history limit. The desired, current, last good and
/// failed revisions are always kept.
async fn prune(
    ctx: &Context,
    app: &ValidatedApp,
    observed: &Observed,
    plan: &Plan,
    desired: &str,
    mut keep_config_maps: BTreeSet<String>,
) -> Result<()> {
    let client = &ctx.client;
    let mut keep_revisions: BTreeSet<String> =
        [Some(desired.to_string()), plan.last_good.clone(), plan.failed.clone()].into_iter().flatten().collect();
    if let Some(current) = observed.deployment_state.as_ref().and_then(|d| d.revision.clone()) {
        keep_revisions.insert(current);
    }
    // Revisions still in the history window stay too.
    let limit = app.spec.rollout().revision_history_limit() as usize;
    let mut records: Vec<&ControllerRevision> = observed.revisions.iter().collect();
    records.sort_by_key(|c| std::cmp::Reverse(c.revision));
    for (i, record) in records.iter().enumerate() {
        let Some(rev) = cr::revision_of(record) else { continue };
        if i < limit {
            keep_revisions.insert(rev.to_string());
        }
    }
    for record in &records {
        let Some(rev) = cr::revision_of(record) else { continue };
        if keep_revisions.contains(rev) {
            // The env ConfigMap of every kept revision stays for rollbacks.
            if let Ok(spec) = cr::recorded_spec(record) {
                let env = spec.env.clone().unwrap_or_default();
                let old = ValidatedApp { spec, ..app.clone() };
                keep_config_maps.extend(configmap::name(&old, &env));
            }
        } else {
            apply::delete_if_present::<ControllerRevision>(client, &app.namespace, &record.name_any()).await?;
        }
    }
    for job in &observed.jobs {
        let rev = job.labels().get(empacts_api::labels::REVISION).cloned().unwrap_or_default();
        let finished = !matches!(observe::job_state(Some(job)), JobState::Running);
        if finished && !keep_revisions.contains(&rev) {
            apply::delete_if_present::<Job>(client, &app.namespace, &job.name_any()).await?;
        }
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &app.namespace);
    let selector = format!(
        "{},{}={}",
        observe::instance_selector(&app.name),
        empacts_api::labels::COMPONENT,
        configmap::COMPONENT
    );
    let listed = cms.list_metadata(&ListParams::default().labels(&selector)).await.map_err(|source| Error::Read {
        kind: "ConfigMap".into(),
        namespace: app.namespace.clone(),
        name: selector.clone(),
        source: Box::new(source),
    })?;
    for cm in listed.items {
        let name = cm.name_any();
        if !keep_config_maps.contains(&name) {
            apply::delete_if_present::<ConfigMap>(client, &app.namespace, &name).await?;
        }
    }
    Ok(())
}

async fn write_status(ctx: &Context, app: &EmpactsApp, status: &EmpactsAppStatus) -> Result<()> {
    let ns = app.namespace().unwrap_or_default();
    let api: Api<EmpactsApp> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": format!("{}/{}", empacts_api::GROUP, empacts_api::VERSION),
        "kind": "EmpactsApp",
        "status": status,
    });
    api.patch_status(&app.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Status { namespace: ns, name: app.name_any(), source: Box::new(source) })?;
    Ok(())
}

/// An invalid spec: say so in status and an Event, then wait for the spec to change.
async fn invalid_spec(app: &EmpactsApp, ctx: &Context, previous: &EmpactsAppStatus, error: Error) -> Result<Action> {
    let message = error.to_string();
    warn!(app = %app.name_any(), namespace = app.namespace().unwrap_or_default(), detail = %message, "invalid spec");
    let plan = Plan {
        phase: Phase::Stalled,
        reason: reasons::INVALID_SPEC,
        message: message.clone(),
        deployment: DeploymentTarget::Keep,
        create_migration_job: false,
        delete_failed_migration_job: false,
        create_rollback_job: false,
        failed: previous.failed_revision.clone(),
        last_good: previous.last_good_revision.clone(),
        migration_complete: previous.migration.as_ref().map(|m| m.phase == empacts_api::MigrationPhase::Succeeded),
    };
    let desired = previous.desired_revision.clone().unwrap_or_default();
    let status = status::compute(
        &plan,
        &StatusInput {
            previous,
            generation: app.metadata.generation.unwrap_or(0),
            desired: &desired,
            image: &app.spec.image,
            has_migration: app.spec.migration.is_some(),
            migration_job: "",
            migration: &JobState::Absent,
            deployment: None,
            history_limit: app.spec.rollout().revision_history_limit().max(1) as usize,
            retry: None,
            rotation: None,
            error: None,
            now: Time(k8s_openapi::jiff::Timestamp::now()),
        },
    );
    // Keep replica counts and revisions from before: the running version is untouched.
    let status = EmpactsAppStatus {
        replicas: previous.replicas,
        ready_replicas: previous.ready_replicas,
        updated_replicas: previous.updated_replicas,
        current_revision: previous.current_revision.clone(),
        desired_revision: previous.desired_revision.clone(),
        migration: previous.migration.clone(),
        history: previous.history.clone(),
        ..status
    };
    if &status != previous {
        write_status(ctx, app, &status).await?;
        events::publish(ctx, app, EventType::Warning, reasons::INVALID_SPEC, "Validate", &message).await;
    }
    ctx.set_phase(app, Phase::Stalled);
    Ok(Action::await_change())
}

async fn record_transitions(
    ctx: &Context,
    app: &EmpactsApp,
    previous: &EmpactsAppStatus,
    new: &EmpactsAppStatus,
    plan: &Plan,
    generated: &apply::GeneratedSecrets,
) {
    ctx.metrics.secrets_generated.inc_by(generated.created.len() as u64);
    ctx.metrics.secret_rotations.inc_by(generated.rotated.len() as u64);
    let foreign = if previous.observed_generation != new.observed_generation { &generated.foreign[..] } else { &[] };
    // Names only: values never reach Events.
    let notes = generated
        .created
        .iter()
        .map(|n| (EventType::Normal, "SecretGenerated", "GenerateSecret", format!("created generated Secret {n}")))
        .chain(generated.rotated.iter().map(|n| {
            let note = format!("rotated generated Secret {n}; pods roll to pick it up");
            (EventType::Normal, "SecretRotated", "RotateSecret", note)
        }))
        .chain(foreign.iter().map(|n| {
            let note =
                format!("Secret {n} exists but was not generated by the operator; it is used as is and never rotated");
            (EventType::Warning, "SecretNotOwned", "GenerateSecret", note)
        }));
    for (type_, reason, action, note) in notes {
        events::publish(ctx, app, type_, reason, action, &note).await;
    }
    if previous.phase == new.phase && previous.observed_generation == new.observed_generation {
        return;
    }
    if new.phase == Some(Phase::RollingBack) && previous.phase != Some(Phase::RollingBack) {
        ctx.metrics.rollbacks.with_label_values(&[plan.reason]).inc();
    }
    if previous.phase != new.phase {
        let warning =
            matches!(plan.phase, Phase::MigrationFailed | Phase::Stalled | Phase::RollingBack | Phase::RolledBack);
        let type_ = if warning { EventType::Warning } else { EventType::Normal };
        events::publish(ctx, app, type_, plan.reason, plan.phase.as_str(), &plan.message).await;
        info!(app = %app.name_any(), namespace = app.namespace().unwrap_or_default(), phase = %plan.phase, reason = plan.reason, detail = %plan.message, "phase changed");
    }
}
