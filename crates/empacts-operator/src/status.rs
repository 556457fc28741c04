//! Last reconcile step, pure part: the status as a projection of the plan's ledger and
//! what was observed.
//! Conditions follow kstatus (Ready, Reconciling, Stalled) plus MigrationComplete;
//! lastTransitionTime moves only when a condition's status changes.

use empacts_api::conditions::{self, reasons};
use empacts_api::{
    AnalysisStatus, CanaryStatus, EmpactsAppStatus, MeasurementRecord, MigrationPhase, MigrationStatus, Phase,
    RevisionRecord, RevisionResult,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::ledger::{FailReason, MigrationState};
use crate::plan::{Action, DeploymentState, JobKind, JobState, Plan, PlanInput};

/// Inputs of the status besides the plan. The previous status only keeps condition
/// transition times; nothing else is carried over, so a lost status is rebuilt whole.
pub struct StatusInput<'a> {
    pub previous: &'a EmpactsAppStatus,
    pub input: &'a PlanInput,
    /// A write of this reconcile failed: Ready=False and Reconciling=True say so until it succeeds.
    pub error: Option<&'a str>,
    pub now: Time,
}

pub fn compute(plan: &Plan, s: &StatusInput<'_>) -> EmpactsAppStatus {
    let input = s.input;
    let d = input.desired.as_str();
    let dep = input.deployment.as_ref();
    let mut status = EmpactsAppStatus {
        observed_generation: Some(input.generation),
        phase: Some(plan.phase),
        conditions: s.previous.conditions.clone(),
        // After a failed write the Deployment still carries what was observed.
        current_revision: if s.error.is_some() { dep.and_then(|d| d.revision.clone()) } else { plan.current.clone() },
        desired_revision: Some(d.to_string()),
        last_good_revision: plan.ledger.last_good().map(|e| e.revision.clone()),
        failed_revision: plan.ledger.effective_failure(d).map(|_| d.to_string()),
        history: history(plan, s),
        replicas: dep.map(|d| d.replicas),
        ready_replicas: dep.map(|d| d.ready_replicas),
        updated_replicas: dep.map(|d| d.updated_replicas),
        migration: migration_status(plan, input),
        observed_retry: plan.ledger.get(d).and_then(|e| e.retry_ack.clone()),
        observed_rotation: rotation(plan, input).filter(|_| s.error.is_none()),
        canary: plan.canary.as_ref().map(|c| CanaryStatus {
            revision: c.revision.clone(),
            step: c.step as i32,
            steps: c.steps as i32,
            weight: c.weight,
            canary_replicas: c.replicas,
            stable_replicas: c.stable_replicas,
            progress: if c.step > c.steps {
                "promoting".into()
            } else {
                format!("{}/{} {}%", c.step, c.steps, c.weight)
            },
        }),
        analysis: analysis_status(plan, s),
        // The shard's claim is the reconcile's to carry (see `shard::Handoff`).
        shard: None,
    };
    let (generation, has_migration) = (input.generation, input.has_migration);
    set_conditions(&mut status.conditions, plan, d, dep, has_migration, generation, &s.now);
    if let Some(error) = s.error {
        let g = generation;
        set(&mut status.conditions, conditions::READY, false, reasons::RECONCILE_ERROR, error, g, &s.now);
        set(&mut status.conditions, conditions::RECONCILING, true, reasons::RECONCILE_ERROR, error, g, &s.now);
    }
    status
}

/// Measurements kept in status.analysis.
pub const MEASUREMENTS_KEPT: usize = 10;

/// The analysis counts of D from the ledger; the latest measurements (this reconcile's
/// first) carried over from the previous status, which is their only record.
fn analysis_status(plan: &Plan, s: &StatusInput<'_>) -> Option<AnalysisStatus> {
    let d = s.input.desired.as_str();
    let entry = plan.ledger.get(d)?;
    let mark = entry.analysis.filter(|a| a.generation == entry.desired_generation)?;
    let mut measurements: Vec<MeasurementRecord> = s
        .input
        .measurement
        .iter()
        .filter(|m| m.revision == d)
        .flat_map(|m| &m.results)
        .map(|r| MeasurementRecord {
            metric: r.metric.clone(),
            value: r.value.map(|v| v.to_string()),
            phase: r.verdict.as_str().into(),
            message: r.detail.clone(),
            at: s.now.clone(),
        })
        .collect();
    let earlier = s.previous.analysis.as_ref().filter(|a| a.revision == d);
    measurements.extend(earlier.into_iter().flat_map(|a| a.measurements.iter().cloned()));
    measurements.truncate(MEASUREMENTS_KEPT);
    Some(AnalysisStatus {
        revision: d.to_string(),
        passed: mark.passed as i32,
        failed: mark.failed as i32,
        inconclusive: mark.inconclusive as i32,
        measurements,
    })
}

/// The rotation request every generated Secret satisfies (or will, by this plan).
fn rotation(plan: &Plan, input: &PlanInput) -> Option<String> {
    let request = input.rotation.clone()?;
    let rotating =
        |env: &str| plan.actions.iter().any(|a| matches!(a, Action::RotateSecret { env: e, .. } if e == env));
    input
        .secrets
        .iter()
        .filter(|g| g.ours)
        .all(|g| g.rotation.as_ref() == Some(&request) || rotating(&g.env))
        .then_some(request)
}

fn migration_status(plan: &Plan, input: &PlanInput) -> Option<MigrationStatus> {
    if !input.has_migration {
        return None;
    }
    let d = input.desired.as_str();
    let entry = plan.ledger.get(d)?;
    let job = input.jobs.iter().find(|j| j.kind == JobKind::Migrate && j.revision == d);
    let job_name = job.map(|j| j.name.clone()).unwrap_or_else(|| crate::names::migration_job(&input.app, d));
    let (phase, reason, message) = match (entry.migration.state, job.map(|j| &j.state)) {
        (MigrationState::Created, Some(JobState::Failed { reason, message }))
        | (MigrationState::Failed, Some(JobState::Failed { reason, message })) => {
            (MigrationPhase::Failed, Some(reason.clone()), Some(message.clone()).filter(|m| !m.is_empty()))
        }
        (MigrationState::Created, Some(JobState::Succeeded)) => (MigrationPhase::Succeeded, None, None),
        (MigrationState::Created, _) => (MigrationPhase::Running, None, None),
        (MigrationState::Failed, _) => (MigrationPhase::Failed, None, None),
        (state, _) if entry.migration.in_effect() || state == MigrationState::Succeeded => {
            (MigrationPhase::Succeeded, None, None)
        }
        _ => return None,
    };
    Some(MigrationStatus { job: job_name, revision: d.to_string(), phase, reason, message })
}

/// Newest first, from the ledger, bounded by the history limit.
fn history(plan: &Plan, s: &StatusInput<'_>) -> Vec<RevisionRecord> {
    let d = s.input.desired.as_str();
    let mut entries: Vec<_> = plan.ledger.entries.iter().collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.number));
    entries
        .into_iter()
        .take(s.input.history_limit.max(1))
        .map(|e| {
            let failure = plan.ledger.effective_failure(&e.revision);
            let serving = plan.current.as_deref() == Some(e.revision.as_str());
            let result = match failure.map(|f| f.reason) {
                Some(FailReason::MigrationFailed) => RevisionResult::MigrationFailed,
                Some(FailReason::MigrationLost) => RevisionResult::Failed,
                Some(_) if serving => RevisionResult::Failed,
                Some(_) => RevisionResult::RolledBack,
                None if e.revision == d && plan.phase == Phase::Ready && e.good.is_some() => RevisionResult::Succeeded,
                None if e.revision == d => RevisionResult::InProgress,
                None if e.good.is_some() => RevisionResult::Succeeded,
                None => RevisionResult::Superseded,
            };
            let at = e.recorded_at.parse().map(Time).unwrap_or_else(|_| s.now.clone());
            let terminal =
                e.revision == d && result != RevisionResult::InProgress && result != RevisionResult::Succeeded;
            RevisionRecord {
                revision: e.revision.clone(),
                image: if e.image.is_empty() && e.revision == d {
                    s.input.desired_entry.image.clone()
                } else {
                    e.image.clone()
                },
                migrated: e.migration.in_effect(),
                result,
                at,
                message: terminal.then(|| plan.message.clone()),
            }
        })
        .collect()
}

fn set_conditions(
    conds: &mut Vec<Condition>,
    plan: &Plan,
    desired: &str,
    dep: Option<&DeploymentState>,
    has_migration: bool,
    g: i64,
    now: &Time,
) {
    let phase = plan.phase;
    let (ready, ready_reason) = match phase {
        Phase::Ready => (true, plan.reason),
        Phase::Paused => {
            let serving = dep.is_some_and(|d| d.complete() && d.revision.as_deref() == Some(desired));
            (serving, reasons::PAUSED)
        }
        _ => (false, plan.reason),
    };
    let reconciling = matches!(phase, Phase::Pending | Phase::Migrating | Phase::Progressing | Phase::RollingBack);
    let stalled = matches!(phase, Phase::Stalled | Phase::MigrationFailed | Phase::RolledBack);
    set(conds, conditions::READY, ready, ready_reason, &plan.message, g, now);
    set(conds, conditions::RECONCILING, reconciling, plan.reason, &plan.message, g, now);
    set(conds, conditions::STALLED, stalled, plan.reason, &plan.message, g, now);
    match plan.migration_complete {
        Some(done) => {
            let reason = if !has_migration {
                reasons::NO_MIGRATION
            } else if done {
                reasons::MIGRATION_SUCCEEDED
            } else {
                reasons::MIGRATION_FAILED
            };
            let message = if !has_migration {
                "spec.migration is not set".to_string()
            } else if done {
                format!("migration of revision {desired} succeeded")
            } else {
                plan.message.clone()
            };
            set(conds, conditions::MIGRATION_COMPLETE, done, reason, &message, g, now);
        }
        None => set_status(
            conds,
            conditions::MIGRATION_COMPLETE,
            conditions::UNKNOWN,
            reasons::MIGRATING,
            &format!("migration of revision {desired} has not finished"),
            g,
            now,
        ),
    }
}

fn set(conds: &mut Vec<Condition>, type_: &str, value: bool, reason: &str, msg: &str, g: i64, now: &Time) {
    let status = if value { conditions::TRUE } else { conditions::FALSE };
    set_status(conds, type_, status, reason, msg, g, now)
}

/// Upsert a condition; keep lastTransitionTime unless the status flips.
fn set_status(conds: &mut Vec<Condition>, type_: &str, status: &str, reason: &str, msg: &str, g: i64, now: &Time) {
    let last_transition_time = match conds.iter().find(|c| c.type_ == type_) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => now.clone(),
    };
    let new = Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: msg.to_string(),
        observed_generation: Some(g),
        last_transition_time,
    };
    match conds.iter_mut().find(|c| c.type_ == type_) {
        Some(slot) => *slot = new,
        None => conds.push(new),
    }
}

#[cfg(test)]
mod tests;
