//! The rollout state machine: migrate, roll, verify, and roll back.

use empacts_api::Phase;
use empacts_api::conditions::reasons;

use super::{Action, Builder, DeploymentState, FailReason, FailedMark, JobKind, JobState, Mark, ObservedJob, Plan};
use crate::ledger::{Entry, MigrationMark, MigrationState};

pub(super) fn decide(mut b: Builder<'_>) -> Plan {
    let input = b.input;
    let d = input.desired.clone();
    if let Some(failure) = b.ledger.effective_failure(&d) {
        return failed(b, failure);
    }
    let migrated = !input.has_migration || b.ledger.get(&d).is_some_and(|e| e.migration.in_effect());
    if b.current.as_deref() != Some(d.as_str()) || !migrated {
        // Also when the Deployment carries D on a schema that was undone: migrate first.
        return new_revision(b);
    }
    let dep = input.deployment.clone().expect("a current revision comes from a Deployment");
    if dep.failed() {
        let failure = FailedMark { generation: input.generation, reason: FailReason::RolloutFailed };
        b.mark(&d, Mark::Failed(failure));
        return failed(b, failure);
    }
    b.push(Action::ApplyDeployment { revision: d.clone() });
    if dep.proven() {
        let entry = b.ledger.get(&d).cloned().unwrap_or_default();
        if entry.good.is_none_or(|g| g < entry.desired_generation) {
            b.mark(&d, Mark::Good(input.generation));
        }
        let message = format!("revision {d} is available ({}/{} ready)", dep.ready_replicas, dep.desired_replicas);
        return b.finish(Phase::Ready, reasons::AVAILABLE, message);
    }
    if dep.complete() {
        // Nothing runs, so nothing proves the revision: it never becomes a rollback target.
        let message = format!("revision {d} is applied with 0 replicas; it becomes good once a pod of it is ready");
        return b.finish(Phase::Ready, reasons::SCALED_TO_ZERO, message);
    }
    let message = format!(
        "rolling out revision {d}: {}/{} updated, {}/{} ready",
        dep.updated_replicas, dep.desired_replicas, dep.ready_replicas, dep.desired_replicas
    );
    b.finish(Phase::Progressing, reasons::PROGRESSING, message)
}

fn job<'a>(b: &'a Builder<'_>, kind: JobKind, revision: &str) -> Option<&'a ObservedJob> {
    b.input.jobs.iter().find(|j| j.kind == kind && j.revision == revision)
}

/// Another migration or rollback Job still running: never two on one database at once.
fn other_running(b: &Builder<'_>, kind: JobKind, revision: &str) -> Option<String> {
    b.input
        .jobs
        .iter()
        .find(|j| j.state == JobState::Running && !(j.kind == kind && j.revision == revision))
        .map(|j| j.name.clone())
}

fn roll(mut b: Builder<'_>, d: &str) -> Plan {
    b.push(Action::ApplyDeployment { revision: d.to_string() });
    b.current = Some(d.to_string());
    b.finish(Phase::Progressing, reasons::PROGRESSING, format!("rolling out revision {d}"))
}

/// D is not what the Deployment carries: migrate first if needed, then roll.
fn new_revision(b: Builder<'_>) -> Plan {
    let d = b.input.desired.clone();
    let entry = b.ledger.get(&d).cloned().unwrap_or_default();
    if !b.input.has_migration || entry.migration.in_effect() {
        return roll(b, &d);
    }
    migrate(b, &entry)
}

fn migrating(b: Builder<'_>, message: String) -> Plan {
    b.finish(Phase::Migrating, reasons::MIGRATING, message)
}

fn migrate(mut b: Builder<'_>, entry: &Entry) -> Plan {
    let d = entry.revision.clone();
    let m = entry.migration;
    let existing = job(&b, JobKind::Migrate, &d).cloned();
    if let Some(next) = m.next_attempt() {
        match existing {
            Some(j) if j.attempt == next => {
                // Created before a crash kept us from recording it.
                b.mark(&d, Mark::Migration(MigrationMark::new(next, MigrationState::Created)));
                return created(b, &d, next, Some(j));
            }
            Some(j) if j.state.finished() => {
                // A finished Job of an earlier attempt holds the name; the next one needs it.
                b.push(Action::DeleteJob { name: j.name.clone() });
                return migrating(
                    b,
                    format!("clearing Job {} of an earlier migration attempt of revision {d}", j.name),
                );
            }
            Some(j) => return migrating(b, format!("waiting for Job {} of an earlier attempt to finish", j.name)),
            None => {}
        }
        if let Some(other) = other_running(&b, JobKind::Migrate, &d) {
            return migrating(b, format!("waiting for Job {other} to finish before migrating revision {d}"));
        }
        b.push(Action::CreateJob { kind: JobKind::Migrate, revision: d.clone(), attempt: next });
        b.mark(&d, Mark::Migration(MigrationMark::new(next, MigrationState::Created)));
        return migrating(b, format!("running the migration of revision {d}"));
    }
    match m.state {
        MigrationState::Created => created(b, &d, m.attempt, existing),
        MigrationState::Failed => migration_failed(b, &d),
        // in_effect or next_attempt covers every other state.
        _ => roll(b, &d),
    }
}

/// Attempt `attempt` of D's migration was created: follow its Job.
fn created(mut b: Builder<'_>, d: &str, attempt: u32, job: Option<ObservedJob>) -> Plan {
    let generation = b.input.generation;
    match job.filter(|j| j.attempt == attempt).map(|j| j.state) {
        Some(JobState::Running) => migrating(b, format!("migration of revision {d} is running")),
        Some(JobState::Succeeded) => {
            // Recorded before the Deployment changes: the Job may be pruned later.
            b.mark(d, Mark::Migration(MigrationMark::new(attempt, MigrationState::Succeeded)));
            roll(b, d)
        }
        Some(JobState::Failed { .. }) => {
            b.mark(d, Mark::Migration(MigrationMark::new(attempt, MigrationState::Failed)));
            b.mark(d, Mark::Failed(FailedMark { generation, reason: FailReason::MigrationFailed }));
            migration_failed(b, d)
        }
        Some(JobState::Absent) | None => {
            if b.ledger.effective_failure(d).map(|f| f.reason) != Some(FailReason::MigrationLost) {
                b.mark(d, Mark::Failed(FailedMark { generation, reason: FailReason::MigrationLost }));
            }
            migration_lost(b, d)
        }
    }
}

fn migration_job_name(b: &Builder<'_>, d: &str) -> String {
    job(b, JobKind::Migrate, d).map(|j| j.name.clone()).unwrap_or_else(|| format!("of revision {d}"))
}

fn migration_failed(b: Builder<'_>, d: &str) -> Plan {
    let job = job(&b, JobKind::Migrate, d).cloned();
    let name = migration_job_name(&b, d);
    let detail = match job.map(|j| j.state) {
        Some(JobState::Failed { reason, message }) => format!(" ({reason}): {message}"),
        _ => String::new(),
    };
    let message = format!(
        "migration Job {name} of revision {d} failed{detail}; the previous version keeps serving; fix the spec or run `empacts retry`"
    );
    b.finish(Phase::MigrationFailed, reasons::MIGRATION_FAILED, message)
}

fn migration_lost(b: Builder<'_>, d: &str) -> Plan {
    let message = format!(
        "the migration Job of revision {d} was deleted before its result was recorded; the operator will not run it again on its own (the database may be half-migrated): check the database, then run `empacts retry` to run the migration again, or change the spec"
    );
    b.finish(Phase::Stalled, reasons::MIGRATION_JOB_LOST, message)
}

/// D failed and no retry or newer spec forgave it.
fn failed(b: Builder<'_>, failure: FailedMark) -> Plan {
    let d = b.input.desired.clone();
    match failure.reason {
        FailReason::MigrationFailed => migration_failed(b, &d),
        FailReason::MigrationLost => migration_lost(b, &d),
        FailReason::RolloutFailed | FailReason::RollbackRequested => roll_back(b, failure),
    }
}

fn stalled(b: Builder<'_>, reason: &'static str, message: String) -> Plan {
    b.finish(Phase::Stalled, reason, message)
}

fn rolling_back(b: Builder<'_>, message: String) -> Plan {
    b.finish(Phase::RollingBack, reasons::ROLLING_BACK, message)
}

/// Undo the migrations done since the target was good (newest first), then restore it.
fn roll_back(mut b: Builder<'_>, failure: FailedMark) -> Plan {
    let input = b.input;
    let d = input.desired.clone();
    let requested = failure.reason == FailReason::RollbackRequested;
    let why = if requested {
        "a rollback was requested from revision".to_string()
    } else {
        "rollout failed for revision".into()
    };
    if !requested && !input.auto_rollback {
        let message = format!(
            "rollout of revision {d} exceeded its progress deadline and rollout.autoRollback is false; fix the spec or run `empacts rollback`"
        );
        return stalled(b, reasons::AUTO_ROLLBACK_DISABLED, message);
    }
    let Some(target) = b.ledger.rollback_target(&d).cloned() else {
        let message = format!("{why} {d} and there is no earlier good revision to roll back to; fix the spec");
        return stalled(b, reasons::NO_GOOD_REVISION, message);
    };
    let g = target.revision.clone();
    if !input.references_ok.contains(&g) {
        let message = format!(
            "{why} {d}, but a Secret that revision {g} references is missing; restore it so the rollback can run"
        );
        return stalled(b, reasons::SECRET_NOT_FOUND, message);
    }
    let undo: Vec<Entry> = b.ledger.to_undo(&target).into_iter().cloned().collect();
    for x in undo {
        let r = x.revision.clone();
        if !x.has_rollback_command {
            let message = format!(
                "{why} {d}; revision {r} migrated the database after revision {g} was good, and without a migration.rollbackCommand for it the operator will not run revision {g} against that schema; add a rollbackCommand and run `empacts retry`, or fix forward"
            );
            return stalled(b, reasons::ROLLBACK_NEEDS_COMMAND, message);
        }
        let attempt = x.migration.attempt;
        let existing = job(&b, JobKind::Rollback, &r).cloned();
        let state = match x.migration.state {
            MigrationState::Succeeded => match existing {
                Some(j) if j.attempt == attempt => {
                    b.mark(&r, Mark::Migration(MigrationMark::new(attempt, MigrationState::DownCreated)));
                    j.state
                }
                Some(j) if j.state.finished() => {
                    b.push(Action::DeleteJob { name: j.name.clone() });
                    return rolling_back(b, format!("clearing Job {} of an earlier rollback of revision {r}", j.name));
                }
                Some(j) => return rolling_back(b, format!("waiting for Job {} to finish", j.name)),
                None => {
                    if let Some(other) = other_running(&b, JobKind::Rollback, &r) {
                        return rolling_back(
                            b,
                            format!("waiting for Job {other} to finish before undoing revision {r}"),
                        );
                    }
                    b.push(Action::CreateJob { kind: JobKind::Rollback, revision: r.clone(), attempt });
                    b.mark(&r, Mark::Migration(MigrationMark::new(attempt, MigrationState::DownCreated)));
                    return rolling_back(
                        b,
                        format!("{why} {d}; running the rollbackCommand of revision {r} before restoring revision {g}"),
                    );
                }
            },
            MigrationState::DownCreated => {
                existing.filter(|j| j.attempt == attempt).map(|j| j.state).unwrap_or_default()
            }
            _ => JobState::Failed { reason: "Failed".into(), message: "recorded as failed".into() },
        };
        match state {
            JobState::Running => {
                return rolling_back(b, format!("{why} {d}; the rollbackCommand of revision {r} is running"));
            }
            JobState::Succeeded => {
                // Recorded before the older code runs again.
                b.mark(&r, Mark::Migration(MigrationMark::new(attempt, MigrationState::DownSucceeded)));
            }
            JobState::Failed { reason, message } => {
                if x.migration.state != MigrationState::DownFailed {
                    b.mark(&r, Mark::Migration(MigrationMark::new(attempt, MigrationState::DownFailed)));
                }
                let message = format!(
                    "{why} {d} and the rollbackCommand of revision {r} failed ({reason}: {message}); the database needs a human; the Deployment stays as it is"
                );
                return stalled(b, reasons::ROLLBACK_MIGRATION_FAILED, message);
            }
            JobState::Absent => {
                let message = format!(
                    "{why} {d}; the rollback Job of revision {r} was deleted before its result was recorded; check the database, then run `empacts retry` or fix forward"
                );
                return stalled(b, reasons::MIGRATION_JOB_LOST, message);
            }
        }
    }
    restore(b, &g, &why)
}

/// Every undo is done: the Deployment carries (or gets) the target.
fn restore(mut b: Builder<'_>, g: &str, why: &str) -> Plan {
    let d = b.input.desired.clone();
    let on_target = b.current.as_deref() == Some(g);
    let dep: Option<DeploymentState> = b.input.deployment.clone();
    b.push(Action::ApplyConfig { revision: g.to_string() });
    b.push(Action::ApplyDeployment { revision: g.to_string() });
    b.current = Some(g.to_string());
    match dep.filter(|_| on_target) {
        Some(dep) if dep.complete() => {
            let message =
                format!("{why} {d}; rolled back to revision {g}, which serves; change the spec or run `empacts retry`");
            b.finish(Phase::RolledBack, reasons::ROLLED_BACK, message)
        }
        Some(dep) if dep.failed() => {
            let message = format!("{why} {d} and the rollback to {g} is not progressing either; fix the spec");
            b.finish(Phase::Stalled, reasons::ROLLOUT_FAILED, message)
        }
        Some(_) => rolling_back(b, format!("{why} {d}; waiting for revision {g} to become available again")),
        None => rolling_back(b, format!("{why} {d}; restoring revision {g}")),
    }
}
