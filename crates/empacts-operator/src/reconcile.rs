//! One reconcile of one app, one way: validate (pure) -> observe (all reads) -> plan (pure:
//! the complete list of writes) -> apply (writes only, in the plan's order) -> status (pure
//! projection, written with a resourceVersion precondition so a stale view gets 409).

use std::sync::Arc;
use std::time::{Duration, Instant};

use empacts_api::{EmpactsApp, EmpactsAppStatus, Phase, conditions::reasons};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use crate::apply::{self, FIELD_MANAGER, Outcome};
use crate::children::ChildMetas;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::events::Subject;
use crate::plan::{self, Plan, PlanInput};
use crate::shard::Handoff;
use crate::status::{self, StatusInput};
use crate::stored_app::StoredApp;
use crate::{build, events, monitoring, observe, validate};

/// Requeue while something is moving; watches usually wake us sooner.
const ACTIVE_REQUEUE: Duration = Duration::from_secs(5);
/// Re-check of an app waiting for a referenced Secret (or key) to appear: unlabelled Secrets
/// are not watched, and Secrets often arrive after the app (GitOps sync order).
const MISSING_SECRET_REQUEUE: Duration = Duration::from_secs(10);
/// Re-check of an app waiting for its old shard's release (whose write wakes it sooner).
const HANDOFF_REQUEUE: Duration = Duration::from_secs(5);

/// One reconcile, bounded: the work queue starts it when the app's turn comes (it holds one
/// of the process's reconcile slots until it returns) and it runs under the reconcile
/// deadline; past it, the reconcile is dropped (its pending request with it) and reported as
/// DeadlineExceeded, so a hung API server cannot hold a slot forever.
///
/// The queue starts it once the caches of the app's namespace have listed (see `work::run`),
/// and keeps apps compressed (`stored_app`): the app is unpacked here.
pub async fn reconcile(stored: Arc<StoredApp>, ctx: Arc<Context>) -> Result<Next> {
    let app = Arc::new(stored.app());
    drop(stored);
    // Boxed: a running reconcile's state is tens of KiB, kept apart from the queue's futures.
    Box::pin(reconcile_bounded(app, ctx)).await
}

async fn reconcile_bounded(app: Arc<EmpactsApp>, ctx: Arc<Context>) -> Result<Next> {
    let _in_flight = ctx.metrics.in_flight();
    let key = crate::context::AppId::of(&app);
    let progress = &ctx.readiness.progress;
    progress.started(key, Instant::now());
    let timeout = ctx.settings.reconcile_timeout;
    let result = match tokio::time::timeout(timeout, reconcile_app(app.clone(), ctx.clone())).await {
        Ok(result) => result,
        Err(_) => {
            ctx.metrics.reconcile_deadline_exceeded.inc();
            Err(Error::DeadlineExceeded { seconds: timeout.as_secs() })
        }
    };
    // Every reconcile that ran to an outcome; the error policy counts the errors by reason.
    ctx.metrics.reconciles.inc();
    // On errors the error policy records the progress (the API server answered, or not).
    if let Ok(next) = &result {
        progress.finished(key, Instant::now(), *next);
        if let Some(failures) = ctx.record_success(&key) {
            let note = format!("reconciling works again after {} failed attempts", failures.count);
            events::publish(&ctx, &app, Subject::App, EventType::Normal, "Recovered", "Reconcile", &note).await;
        }
    }
    result
}

/// When the next reconcile is due without a trigger (None: only on a change).
pub type Next = Option<Duration>;

#[tracing::instrument(skip_all, fields(app = %app.name_any(), namespace = app.namespace().unwrap_or_default()))]
async fn reconcile_app(app: Arc<EmpactsApp>, ctx: Arc<Context>) -> Result<Next> {
    let _timer = ctx.metrics.reconcile_timer();
    if app.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the children.
        return Ok(None);
    }
    let (app, claim) = match ctx.handoff(&app) {
        None => (app, None),
        Some(Handoff::Reconcile { claim, write_claim: false }) => (app, Some(claim)),
        Some(Handoff::Reconcile { claim, write_claim: true }) => {
            // Before any other write.
            let claimed = write_shard(&ctx, &app, Some(claim.clone())).await?;
            info!(shard = %claim, "claimed the app for this shard");
            (Arc::new(claimed), Some(claim))
        }
        Some(Handoff::Wait { holder }) => {
            info!(holder_shard = holder, "the app moved to this shard; waiting for its old shard to release it");
            return Ok(Some(HANDOFF_REQUEUE));
        }
        Some(Handoff::Release) => {
            write_shard(&ctx, &app, None).await?;
            info!("the app moved to another shard: released it");
            return Ok(None);
        }
        Some(Handoff::NotOurs) => return Ok(None),
    };
    let previous = app.status.clone().unwrap_or_default();
    let valid = match validate::validate(&app) {
        Ok(v) => v,
        Err(invalid) => return invalid_spec(&app, &ctx, &previous, Error::Invalid(invalid)).await,
    };
    let stores = ctx.stores(&valid.namespace);
    let mut children = ChildMetas::snapshot(stores.as_ref(), &valid);
    // Our own create the watch has not shown yet is no absence.
    let workload = crate::names::workload(&valid.name);
    children.deployment_absent &= !ctx.applied.wrote("Deployment", &valid.namespace, &valid.name, &workload);
    if let Some(store) = stores.as_ref().and_then(|s| s.revisions.as_ref()) {
        let (ns, name) = (valid.namespace.as_str(), valid.name.as_str());
        children.revisions = match ctx.ledger.revisions(store, ns, name) {
            Some(revisions) => Some(revisions),
            // The cache has not listed yet, or a write found it behind: read fresh, and let
            // that read stand until the watch catches up with it.
            None => {
                let fresh = observe::list_revisions(&ctx.client, ns, name).await?;
                ctx.ledger.listed(Some(store), ns, name, &fresh);
                Some(fresh)
            }
        };
    }
    monitoring::observe(&ctx, &valid, &mut children).await?;
    let mut observed =
        observe::observe(&ctx.client, &ctx.hash_key, &valid, &previous, children, Some(&ctx.secret_cache)).await?;
    observed.input.monitoring_unavailable = ctx.monitoring.unavailable(&valid);
    if observed.input.monitoring_unavailable.is_none() {
        ctx.monitoring.clear_report(&valid.namespace, &valid.name);
    }
    let mut plan = plan::plan(&observed.input);

    // A failed write still gets its status: users see why their app is not moving.
    let applied = apply::execute(&ctx, &observed.app, &observed, &plan).await;
    let mut error = None;
    match &applied {
        Err(e @ Error::NameTaken { .. }) => {
            plan.phase = Phase::Stalled;
            plan.reason = reasons::NAME_TAKEN;
            plan.message = e.to_string();
        }
        Err(e) => error = Some(e.to_string()),
        Ok(_) => {}
    }
    let input = &observed.input;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let mut new_status =
        status::compute(&plan, &StatusInput { previous: &previous, input, error: error.as_deref(), now });
    new_status.shard = claim;
    if new_status != previous {
        write_status(&ctx, &app, &new_status).await?;
    }
    let outcome = match applied {
        Ok(outcome) => outcome,
        Err(Error::NameTaken { .. }) => Outcome::default(),
        Err(e) => return Err(e),
    };
    // Domain events and counters only after the status that records them is stored.
    record_transitions(&ctx, &app, &previous, &new_status, &plan, &outcome).await;
    for job in &observed.jobs {
        let component = job.labels().get(empacts_api::labels::COMPONENT).map(String::as_str);
        let kind = if component == Some(build::job::ROLLBACK_COMPONENT) { "rollback" } else { "migrate" };
        ctx.count_finished_job(&app, job, kind);
    }
    for result in observed.input.measurement.iter().flat_map(|m| &m.results) {
        ctx.metrics.analysis_measurements.with_label_values(&[result.verdict.as_str()]).inc();
    }
    ctx.set_status(&app, plan.phase, &new_status);

    let moving = matches!(plan.phase, Phase::Migrating | Phase::Progressing | Phase::RollingBack | Phase::Pending);
    let waits_for_secret = matches!(plan.reason, reasons::SECRET_NOT_FOUND | reasons::SECRET_KEY_NOT_FOUND);
    // A canary pause ending or a measurement due sooner than the usual requeue sets the time.
    let wake = plan.wake.map(Duration::from_secs);
    Ok(Some(match () {
        _ if moving => wake.map_or(ACTIVE_REQUEUE, |w| w.min(ACTIVE_REQUEUE)),
        _ if waits_for_secret => MISSING_SECRET_REQUEUE.min(ctx.settings.resync),
        _ => ctx.settings.resync,
    }))
}

/// Status is written on the version of the app this reconcile saw: if the app changed
/// since (or the view was stale), the API server answers 409 and the app is reconciled again.
/// Returns the app as written.
async fn write_status(ctx: &Context, app: &EmpactsApp, status: &EmpactsAppStatus) -> Result<EmpactsApp> {
    let ns = app.namespace().unwrap_or_default();
    let api: Api<EmpactsApp> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": format!("{}/{}", empacts_api::GROUP, empacts_api::VERSION),
        "kind": "EmpactsApp",
        "metadata": {"resourceVersion": app.resource_version()},
        "status": status,
    });
    api.patch_status(&app.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| Error::Status { namespace: ns, name: app.name_any(), source: Box::new(source) })
}

/// Claim (`Some`) or release the app for a shard: its status as it is, but for the claim,
/// written whole (server-side apply would drop what it leaves out) on the version this view saw.
async fn write_shard(ctx: &Context, app: &EmpactsApp, shard: Option<String>) -> Result<EmpactsApp> {
    let status = EmpactsAppStatus { shard, ..app.status.clone().unwrap_or_default() };
    write_status(ctx, app, &status).await
}

/// An invalid spec goes through the same plan (Stalled, no writes); the status keeps what
/// it said about the running version, which is untouched.
async fn invalid_spec(app: &EmpactsApp, ctx: &Context, previous: &EmpactsAppStatus, error: Error) -> Result<Next> {
    let message = error.to_string();
    warn!(app = %app.name_any(), namespace = app.namespace().unwrap_or_default(), detail = %message, "invalid spec");
    let input = PlanInput {
        app: app.name_any(),
        generation: app.metadata.generation.unwrap_or(0),
        invalid: Some(message.clone()),
        desired: previous.desired_revision.clone().unwrap_or_default(),
        has_migration: app.spec.migration.is_some(),
        ..Default::default()
    };
    let plan = plan::plan(&input);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = status::compute(&plan, &StatusInput { previous, input: &input, error: None, now });
    let status = EmpactsAppStatus {
        replicas: previous.replicas,
        ready_replicas: previous.ready_replicas,
        updated_replicas: previous.updated_replicas,
        current_revision: previous.current_revision.clone(),
        desired_revision: previous.desired_revision.clone(),
        last_good_revision: previous.last_good_revision.clone(),
        failed_revision: previous.failed_revision.clone(),
        migration: previous.migration.clone(),
        history: previous.history.clone(),
        observed_retry: previous.observed_retry.clone(),
        observed_rotation: previous.observed_rotation.clone(),
        canary: previous.canary.clone(),
        analysis: previous.analysis.clone(),
        shard: previous.shard.clone(),
        ..status
    };
    if &status != previous {
        write_status(ctx, app, &status).await?;
        let subject = Subject::App;
        events::publish(ctx, app, subject, EventType::Warning, reasons::INVALID_SPEC, "Validate", &message).await;
    }
    ctx.set_status(app, Phase::Stalled, &status);
    Ok(None)
}

async fn record_transitions(
    ctx: &Context,
    app: &EmpactsApp,
    previous: &EmpactsAppStatus,
    new: &EmpactsAppStatus,
    plan: &Plan,
    outcome: &Outcome,
) {
    ctx.metrics.secrets_generated.inc_by(outcome.secrets_created.len() as u64);
    ctx.metrics.secret_rotations.inc_by(outcome.secrets_rotated.len() as u64);
    let changed = previous.phase != new.phase || previous.observed_generation != new.observed_generation;
    let requested = plan.actions.iter().any(|a| {
        matches!(
            a,
            plan::Action::Mark {
                mark: plan::Mark::RollbackAck { .. } | plan::Mark::AbortAck { .. } | plan::Mark::PromoteAck { .. },
                ..
            }
        )
    });
    // Names only: values never reach Events.
    // Each Event names its subject (see `events`): one per Secret, one per revision.
    let revision = new.desired_revision.as_deref().map_or(Subject::App, Subject::Revision);
    let notes = outcome
        .secrets_created
        .iter()
        .map(|n| {
            let note = format!("created generated Secret {n}");
            (Subject::Secret(n), EventType::Normal, "SecretGenerated", "GenerateSecret", note)
        })
        .chain(outcome.secrets_rotated.iter().map(|n| {
            let note = format!("rotated generated Secret {n}; pods roll to pick it up");
            (Subject::Secret(n), EventType::Normal, "SecretRotated", "RotateSecret", note)
        }))
        .chain(
            plan.notes
                .iter()
                // Each failed or inconclusive measurement is news of its own; missing monitoring
                // CRDs once per transition.
                .filter(|(reason, note)| match *reason {
                    monitoring::UNAVAILABLE => {
                        ctx.monitoring.first_report(&app.namespace().unwrap_or_default(), &app.name_any(), note)
                    }
                    _ => changed || requested || reason.starts_with("Analysis"),
                })
                .map(|(reason, note)| (revision, EventType::Warning, *reason, "Reconcile", note.clone())),
        );
    for (subject, type_, reason, action, note) in notes {
        events::publish(ctx, app, subject, type_, reason, action, &note).await;
    }
    if !changed {
        return;
    }
    if new.phase == Some(Phase::RollingBack) && previous.phase != Some(Phase::RollingBack) {
        ctx.metrics.rollbacks.with_label_values(&[plan.reason]).inc();
    }
    if previous.phase != new.phase {
        let warning =
            matches!(plan.phase, Phase::MigrationFailed | Phase::Stalled | Phase::RollingBack | Phase::RolledBack);
        let type_ = if warning { EventType::Warning } else { EventType::Normal };
        events::publish(ctx, app, revision, type_, plan.reason, plan.phase.as_str(), &plan.message).await;
        info!(app = %app.name_any(), namespace = app.namespace().unwrap_or_default(), phase = %plan.phase, reason = plan.reason, detail = %plan.message, "phase changed");
    }
}
