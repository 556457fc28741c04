//! The rollout decision: a pure function from what was observed to the next step.
//!
//! Revisions: D = desired (hash of the spec), C = what the Deployment runs, G = last good,
//! F = a revision that failed and must not be retried until the spec changes or a retry is
//! requested. The rules (see DESIGN.md "Lifecycle rules"):
//! - a new revision with a migration runs its Job first; only a succeeded Job lets it roll;
//! - a failed migration leaves the running version alone;
//! - a rollout past its progress deadline is failed: with autoRollback the Deployment goes
//!   back to G, after running rollbackCommand when the failed revision migrated the DB;
//!   without a rollbackCommand in that case, or without a G, it stalls with the reason.

use empacts_api::Phase;
use empacts_api::conditions::reasons;

/// State of a Job the operator created.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum JobState {
    #[default]
    Absent,
    Running,
    Succeeded,
    Failed {
        reason: String,
        message: String,
    },
}

/// What the Deployment shows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeploymentState {
    /// `empacts.io/revision` annotation: the revision whose template it carries.
    pub revision: Option<String>,
    pub generation: i64,
    pub observed_generation: i64,
    /// spec.replicas (set by us or by the HPA).
    pub desired_replicas: i32,
    pub replicas: i32,
    pub updated_replicas: i32,
    pub ready_replicas: i32,
    pub available_replicas: i32,
    /// Progressing=False with reason ProgressDeadlineExceeded, for the current generation.
    pub progress_deadline_exceeded: bool,
}

impl DeploymentState {
    /// Every pod runs the current template and is available, and no old pod is left.
    pub fn complete(&self) -> bool {
        self.observed_generation >= self.generation
            && self.updated_replicas >= self.desired_replicas
            && self.available_replicas >= self.desired_replicas
            && self.ready_replicas >= self.desired_replicas
            && self.replicas == self.updated_replicas
    }

    fn failed(&self) -> bool {
        self.observed_generation >= self.generation && self.progress_deadline_exceeded
    }
}

/// Everything the decision needs, gathered by `observe` and `validate`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlanInput {
    /// D.
    pub desired: String,
    pub has_migration: bool,
    pub has_rollback_command: bool,
    pub auto_rollback: bool,
    pub paused: bool,
    /// A retry annotation value not yet acted upon.
    pub retry_requested: bool,
    /// G and F from the status.
    pub last_good: Option<String>,
    pub failed: Option<String>,
    /// The recorded spec of G can be loaded (its ControllerRevision exists).
    pub last_good_recorded: bool,
    pub deployment: Option<DeploymentState>,
    /// Name of D's migration Job, for messages.
    pub migration_job: String,
    /// The migration Job of D.
    pub migration: JobState,
    /// D's migration is known to have succeeded (Job result or recorded on its ControllerRevision).
    pub migrated: bool,
    /// The rollback Job of D (runs rollbackCommand with D's image).
    pub rollback_job: JobState,
    /// Another migration Job of this app still running (never two at once on one database).
    pub other_migration_running: Option<String>,
    /// A referenced Secret or key that does not exist: (reason, message).
    pub missing_reference: Option<(String, String)>,
}

/// Which pod template the Deployment should carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentTarget {
    /// Leave the Deployment as it is (or absent).
    Keep,
    /// Apply the template of D.
    Desired,
    /// Apply the template of this older revision (a rollback).
    Revision(String),
}

/// The next step and what it implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub phase: Phase,
    /// Condition reason and human message explaining the phase.
    pub reason: &'static str,
    pub message: String,
    pub deployment: DeploymentTarget,
    pub create_migration_job: bool,
    /// A retry of a failed migration: delete the failed Job first (it is complete, so this
    /// never leaves two Jobs of one revision running).
    pub delete_failed_migration_job: bool,
    pub create_rollback_job: bool,
    /// New value of status.failedRevision.
    pub failed: Option<String>,
    /// New value of status.lastGoodRevision.
    pub last_good: Option<String>,
    /// The migration of D is done (or not needed): condition MigrationComplete.
    pub migration_complete: Option<bool>,
}

impl Plan {
    fn new(input: &PlanInput, failed: Option<String>, phase: Phase, reason: &'static str, message: String) -> Self {
        Plan {
            phase,
            reason,
            message,
            deployment: DeploymentTarget::Keep,
            create_migration_job: false,
            delete_failed_migration_job: false,
            create_rollback_job: false,
            failed,
            last_good: input.last_good.clone(),
            migration_complete: migration_complete(input),
        }
    }

    fn deploy(mut self, target: DeploymentTarget) -> Self {
        self.deployment = target;
        self
    }
}

fn migration_complete(input: &PlanInput) -> Option<bool> {
    if !input.has_migration || input.migrated {
        return Some(true);
    }
    match input.migration {
        JobState::Failed { .. } => Some(false),
        _ => None,
    }
}

/// Decide the next step. Pure: same input, same plan.
pub fn plan(input: &PlanInput) -> Plan {
    let d = input.desired.as_str();
    // A retry request forgets the failure so the revision goes through the gates again.
    // A changed spec (D differs from F) likewise gives a clean slate.
    let failed = if input.retry_requested { None } else { input.failed.clone().filter(|f| f == d) };
    let current = input.deployment.as_ref().and_then(|dep| dep.revision.clone());

    if let Some((reason, message)) = &input.missing_reference {
        let reason = if reason == reasons::SECRET_KEY_NOT_FOUND {
            reasons::SECRET_KEY_NOT_FOUND
        } else {
            reasons::SECRET_NOT_FOUND
        };
        return Plan::new(input, failed, Phase::Stalled, reason, message.clone());
    }
    if input.paused {
        return Plan::new(
            input,
            failed,
            Phase::Paused,
            reasons::PAUSED,
            "spec.paused is set: no new revision is rolled out".into(),
        );
    }

    // D failed before and nobody asked to retry it.
    if failed.as_deref() == Some(d) {
        if current.as_deref() == Some(d) {
            return rollout_failed(input, failed);
        }
        if let JobState::Failed { reason, message } = &input.migration
            && !input.migrated
        {
            return Plan::new(
                input,
                failed,
                Phase::MigrationFailed,
                reasons::MIGRATION_FAILED,
                format!(
                    "migration Job {} of revision {d} failed ({reason}): {message}; the previous version keeps serving; fix the spec or run `empacts retry`",
                    input.migration_job
                ),
            );
        }
        return held_at_last_good(input, failed);
    }

    // A new revision: migrate first, then roll.
    if current.as_deref() != Some(d) {
        if input.has_migration && !input.migrated {
            match &input.migration {
                JobState::Absent | JobState::Failed { .. } if input.other_migration_running.is_some() => {
                    let other = input.other_migration_running.clone().unwrap_or_default();
                    return Plan::new(
                        input,
                        failed,
                        Phase::Migrating,
                        reasons::MIGRATING,
                        format!("waiting for migration Job {other} to finish before migrating revision {d}"),
                    );
                }
                JobState::Absent => {
                    let mut plan = Plan::new(
                        input,
                        failed,
                        Phase::Migrating,
                        reasons::MIGRATING,
                        format!("running the migration of revision {d}"),
                    );
                    plan.create_migration_job = true;
                    return plan;
                }
                JobState::Running => {
                    return Plan::new(
                        input,
                        failed,
                        Phase::Migrating,
                        reasons::MIGRATING,
                        format!("migration of revision {d} is running"),
                    );
                }
                JobState::Failed { reason, message } => {
                    if input.retry_requested {
                        let mut plan = Plan::new(
                            input,
                            failed,
                            Phase::Migrating,
                            reasons::MIGRATING,
                            format!("retrying the migration of revision {d}"),
                        );
                        plan.delete_failed_migration_job = true;
                        plan.migration_complete = None;
                        return plan;
                    }
                    return Plan::new(
                        input,
                        Some(d.to_string()),
                        Phase::MigrationFailed,
                        reasons::MIGRATION_FAILED,
                        format!(
                            "migration Job {} of revision {d} failed ({reason}): {message}; the previous version keeps serving; fix the spec or run `empacts retry`",
                            input.migration_job
                        ),
                    );
                }
                JobState::Succeeded => {}
            }
        }
        return Plan::new(input, failed, Phase::Progressing, reasons::PROGRESSING, format!("rolling out revision {d}"))
            .deploy(DeploymentTarget::Desired);
    }

    // The Deployment carries D: watch it.
    let dep = input.deployment.as_ref().expect("current is Some only with a Deployment");
    if dep.failed() {
        return rollout_failed(input, Some(d.to_string()));
    }
    // Re-applying D keeps replicas, referenced-secret hashes and drifted fields in line;
    // server-side apply makes it a no-op when nothing changed.
    if dep.complete() {
        let mut plan = Plan::new(
            input,
            failed,
            Phase::Ready,
            reasons::AVAILABLE,
            format!("revision {d} is available ({}/{} ready)", dep.ready_replicas, dep.desired_replicas),
        );
        plan.last_good = Some(d.to_string());
        return plan.deploy(DeploymentTarget::Desired);
    }
    Plan::new(
        input,
        failed,
        Phase::Progressing,
        reasons::PROGRESSING,
        format!(
            "rolling out revision {d}: {}/{} updated, {}/{} ready",
            dep.updated_replicas, dep.desired_replicas, dep.ready_replicas, dep.desired_replicas
        ),
    )
    .deploy(DeploymentTarget::Desired)
}

/// D's rollout missed its progress deadline (now or earlier) and the Deployment still carries D.
fn rollout_failed(input: &PlanInput, failed: Option<String>) -> Plan {
    let d = input.desired.as_str();
    let stalled =
        |reason: &'static str, message: String| Plan::new(input, failed.clone(), Phase::Stalled, reason, message);
    if !input.auto_rollback {
        return stalled(
            reasons::AUTO_ROLLBACK_DISABLED,
            format!(
                "rollout of revision {d} exceeded its progress deadline and rollout.autoRollback is false; fix the spec or run `empacts rollback`"
            ),
        );
    }
    let good = match &input.last_good {
        Some(g) if g != d && input.last_good_recorded => g.clone(),
        _ => {
            return stalled(
                reasons::NO_GOOD_REVISION,
                format!(
                    "rollout of revision {d} exceeded its progress deadline and there is no earlier good revision to roll back to; fix the spec"
                ),
            );
        }
    };
    if input.has_migration && input.migrated {
        if !input.has_rollback_command {
            return stalled(
                reasons::ROLLBACK_NEEDS_COMMAND,
                format!(
                    "rollout of revision {d} failed after its migration ran; without migration.rollbackCommand the operator will not run revision {good} against the migrated database; add a rollbackCommand and run `empacts retry`, or fix forward"
                ),
            );
        }
        match &input.rollback_job {
            JobState::Absent => {
                let mut plan = Plan::new(
                    input,
                    failed,
                    Phase::RollingBack,
                    reasons::ROLLING_BACK,
                    format!(
                        "rollout of revision {d} failed; running its rollbackCommand before restoring revision {good}"
                    ),
                );
                plan.create_rollback_job = true;
                return plan;
            }
            JobState::Running => {
                return Plan::new(
                    input,
                    failed,
                    Phase::RollingBack,
                    reasons::ROLLING_BACK,
                    format!("rollout of revision {d} failed; its rollbackCommand is running"),
                );
            }
            JobState::Failed { reason, message } => {
                return stalled(
                    reasons::ROLLBACK_MIGRATION_FAILED,
                    format!(
                        "rollout of revision {d} failed and its rollbackCommand failed too ({reason}: {message}); the database needs a human; the Deployment stays on {d}"
                    ),
                );
            }
            JobState::Succeeded => {}
        }
    }
    Plan::new(
        input,
        failed,
        Phase::RollingBack,
        reasons::ROLLING_BACK,
        format!("rollout of revision {d} failed; restoring revision {good}"),
    )
    .deploy(DeploymentTarget::Revision(good))
}

/// D failed and the Deployment no longer carries it: hold the last good revision.
fn held_at_last_good(input: &PlanInput, failed: Option<String>) -> Plan {
    let d = input.desired.as_str();
    let current = input.deployment.as_ref().and_then(|dep| dep.revision.clone());
    let Some(dep) = input.deployment.as_ref() else {
        // The Deployment was deleted while holding a rollback: bring the last good revision back.
        return match &input.last_good {
            Some(g) if g != d && input.last_good_recorded => Plan::new(
                input,
                failed,
                Phase::RollingBack,
                reasons::ROLLING_BACK,
                format!("revision {d} failed and the Deployment is gone; restoring revision {g}"),
            )
            .deploy(DeploymentTarget::Revision(g.clone())),
            _ => Plan::new(
                input,
                failed,
                Phase::Stalled,
                reasons::NO_GOOD_REVISION,
                format!("revision {d} failed and there is no earlier good revision to run; fix the spec"),
            ),
        };
    };
    let on = current.unwrap_or_else(|| "an unknown revision".into());
    if dep.failed() {
        return Plan::new(
            input,
            failed,
            Phase::Stalled,
            reasons::ROLLOUT_FAILED,
            format!("revision {d} failed and the rollback to {on} is not progressing either; fix the spec"),
        );
    }
    // Holding G: keep applying it, so scaling and rollout settings of the spec (not part of a
    // revision) and drift are still handled; unchanged applies are skipped anyway.
    let hold = match &input.last_good {
        Some(g) if *g == on && input.last_good_recorded => DeploymentTarget::Revision(g.clone()),
        _ => DeploymentTarget::Keep,
    };
    if dep.complete() {
        return Plan::new(
            input,
            failed,
            Phase::RolledBack,
            reasons::ROLLED_BACK,
            format!(
                "revision {d} failed its rollout; rolled back to revision {on}, which serves; change the spec or run `empacts retry`"
            ),
        )
        .deploy(hold);
    }
    Plan::new(
        input,
        failed,
        Phase::RollingBack,
        reasons::ROLLING_BACK,
        format!("revision {d} failed; waiting for revision {on} to become available again"),
    )
    .deploy(hold)
}

#[cfg(test)]
mod tests;
