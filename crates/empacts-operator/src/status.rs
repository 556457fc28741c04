//! Last reconcile step, pure part: the new status from the plan and what was observed.
//! Conditions follow kstatus (Ready, Reconciling, Stalled) plus MigrationComplete;
//! lastTransitionTime moves only when a condition's status changes.

use empacts_api::conditions::{self, reasons};
use empacts_api::{EmpactsAppStatus, MigrationPhase, MigrationStatus, Phase, RevisionRecord, RevisionResult};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::plan::{DeploymentState, DeploymentTarget, JobState, Plan};

/// Inputs of the status besides the plan.
pub struct StatusInput<'a> {
    pub previous: &'a EmpactsAppStatus,
    pub generation: i64,
    pub desired: &'a str,
    pub image: &'a str,
    pub has_migration: bool,
    pub migration_job: &'a str,
    pub migration: &'a JobState,
    pub deployment: Option<&'a DeploymentState>,
    pub history_limit: usize,
    /// The retry annotation's value, recorded once acted upon.
    pub retry: Option<&'a str>,
    pub rotation: Option<&'a str>,
    /// A write of this reconcile failed: Ready=False and Reconciling=True say so until it succeeds.
    pub error: Option<&'a str>,
    pub now: Time,
}

pub fn compute(plan: &Plan, input: &StatusInput<'_>) -> EmpactsAppStatus {
    let prev = input.previous;
    let mut status = EmpactsAppStatus {
        observed_generation: Some(input.generation),
        phase: Some(plan.phase),
        conditions: prev.conditions.clone(),
        // After a failed write the Deployment still carries what was observed.
        current_revision: match &plan.deployment {
            _ if input.error.is_some() => input.deployment.and_then(|d| d.revision.clone()),
            DeploymentTarget::Desired => Some(input.desired.to_string()),
            DeploymentTarget::Revision(r) => Some(r.clone()),
            DeploymentTarget::Keep => input.deployment.and_then(|d| d.revision.clone()),
        },
        desired_revision: Some(input.desired.to_string()),
        last_good_revision: plan.last_good.clone(),
        failed_revision: plan.failed.clone(),
        history: prev.history.clone(),
        replicas: input.deployment.map(|d| d.replicas),
        ready_replicas: input.deployment.map(|d| d.ready_replicas),
        updated_replicas: input.deployment.map(|d| d.updated_replicas),
        migration: migration_status(input),
        observed_retry: input.retry.map(str::to_string).or_else(|| prev.observed_retry.clone()),
        observed_rotation: input.rotation.map(str::to_string).or_else(|| prev.observed_rotation.clone()),
    };
    set_conditions(&mut status.conditions, plan, input);
    if let Some(error) = input.error {
        let g = input.generation;
        set(&mut status.conditions, conditions::READY, false, reasons::RECONCILE_ERROR, error, g, &input.now);
        set(&mut status.conditions, conditions::RECONCILING, true, reasons::RECONCILE_ERROR, error, g, &input.now);
    }
    update_history(&mut status.history, plan, input);
    status
}

fn migration_status(input: &StatusInput<'_>) -> Option<MigrationStatus> {
    if !input.has_migration {
        return None;
    }
    let (phase, reason, message) = match input.migration {
        JobState::Absent => return input.previous.migration.clone().filter(|m| m.revision == input.desired),
        JobState::Running => (MigrationPhase::Running, None, None),
        JobState::Succeeded => (MigrationPhase::Succeeded, None, None),
        JobState::Failed { reason, message } => {
            (MigrationPhase::Failed, Some(reason.clone()), Some(message.clone()).filter(|m| !m.is_empty()))
        }
    };
    Some(MigrationStatus {
        job: input.migration_job.to_string(),
        revision: input.desired.to_string(),
        phase,
        reason,
        message,
    })
}

fn set_conditions(conds: &mut Vec<Condition>, plan: &Plan, input: &StatusInput<'_>) {
    let phase = plan.phase;
    let (ready, ready_reason) = match phase {
        Phase::Ready => (true, reasons::AVAILABLE),
        Phase::Paused => {
            let serving =
                input.deployment.is_some_and(|d| d.complete() && d.revision.as_deref() == Some(input.desired));
            (serving, reasons::PAUSED)
        }
        _ => (false, plan.reason),
    };
    let reconciling = matches!(phase, Phase::Pending | Phase::Migrating | Phase::Progressing | Phase::RollingBack);
    let stalled = matches!(phase, Phase::Stalled | Phase::MigrationFailed | Phase::RolledBack);
    let g = input.generation;
    set(conds, conditions::READY, ready, ready_reason, &plan.message, g, &input.now);
    set(conds, conditions::RECONCILING, reconciling, plan.reason, &plan.message, g, &input.now);
    set(conds, conditions::STALLED, stalled, plan.reason, &plan.message, g, &input.now);
    match plan.migration_complete {
        Some(done) => {
            let reason = if !input.has_migration {
                reasons::NO_MIGRATION
            } else if done {
                reasons::MIGRATION_SUCCEEDED
            } else {
                reasons::MIGRATION_FAILED
            };
            let message = if !input.has_migration {
                "spec.migration is not set".to_string()
            } else if done {
                format!("migration of revision {} succeeded", input.desired)
            } else {
                plan.message.clone()
            };
            set(conds, conditions::MIGRATION_COMPLETE, done, reason, &message, g, &input.now);
        }
        None => set_status(
            conds,
            conditions::MIGRATION_COMPLETE,
            conditions::UNKNOWN,
            reasons::MIGRATING,
            &format!("migration of revision {} has not finished", input.desired),
            g,
            &input.now,
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

fn update_history(history: &mut Vec<RevisionRecord>, plan: &Plan, input: &StatusInput<'_>) {
    let d = input.desired;
    let failed_here = plan.failed.as_deref() == Some(d);
    let acted_on = match plan.phase {
        Phase::Paused | Phase::Pending => false,
        // A missing reference stalls before D is acted upon; only D's own failure is history.
        Phase::Stalled => failed_here,
        _ => true,
    };
    if !acted_on {
        return;
    }
    for record in history.iter_mut() {
        if record.revision != d && record.result == RevisionResult::InProgress {
            record.result = RevisionResult::Superseded;
        }
    }
    let result = match plan.phase {
        Phase::Ready => RevisionResult::Succeeded,
        Phase::MigrationFailed => RevisionResult::MigrationFailed,
        Phase::RolledBack => RevisionResult::RolledBack,
        Phase::RollingBack if failed_here => RevisionResult::RolledBack,
        Phase::Stalled => RevisionResult::Failed,
        _ => RevisionResult::InProgress,
    };
    let migrated = input.has_migration && plan.migration_complete == Some(true);
    let terminal = result != RevisionResult::InProgress;
    match history.iter_mut().find(|r| r.revision == d) {
        Some(record) => {
            record.result = result;
            record.migrated |= migrated;
            record.message = terminal.then(|| plan.message.clone());
        }
        None => history.insert(
            0,
            RevisionRecord {
                revision: d.to_string(),
                image: input.image.to_string(),
                migrated,
                result,
                at: input.now.clone(),
                message: terminal.then(|| plan.message.clone()),
            },
        ),
    }
    history.truncate(input.history_limit.max(1));
}

#[cfg(test)]
mod tests;
