//! The rollout state machine: migrate, roll, verify, and roll back.

use std::ops::ControlFlow;

use empacts_api::Phase;
use empacts_api::conditions::reasons;

use super::{
    Action, Builder, CanaryView, Delivery, DeploymentState, FailReason, FailedMark, JobKind, JobState, Mark,
    ObservedJob, Plan, PlanInput, Verdict,
};
use crate::ledger::{AnalysisMark, CanaryMark, Entry, MigrationMark, MigrationState};

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
    let unproven = b.ledger.get(&d).is_some_and(|e| e.good.is_none_or(|g| g < e.desired_generation));
    if dep.failed() || (unproven && overdue(&b, &d, &dep)) {
        let failure = b.failure(FailReason::RolloutFailed);
        b.mark(&d, Mark::Failed(failure));
        return failed(b, failure);
    }
    b.push(Action::ApplyDeployment { revision: d.clone() });
    if dep.complete() && input.canary.as_ref().is_some_and(|c| c.desired_replicas > 0) {
        // Promoted: the stable Deployment serves the revision on its own now.
        b.push(Action::StopCanary);
    }
    if dep.proven() {
        let entry = b.ledger.get(&d).cloned().unwrap_or_default();
        if entry.good.is_none_or(|g| g < entry.desired_generation) {
            b = match analyse_rollout(b, &entry) {
                ControlFlow::Continue(b) => b,
                ControlFlow::Break(plan) => return plan,
            };
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

/// D may roll out now: as a canary when the strategy asks for one and a good stable
/// revision serves, else as a rolling update of the Deployment.
fn roll(b: Builder<'_>, d: &str) -> Plan {
    if canary_applies(&b, d) {
        return canary(b, d);
    }
    rolling_update(b, d)
}

fn rolling_update(mut b: Builder<'_>, d: &str) -> Plan {
    b.mark(d, Mark::Rolled(b.input.now));
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
    match job.filter(|j| j.attempt == attempt).map(|j| j.state) {
        Some(JobState::Running) => migrating(b, format!("migration of revision {d} is running")),
        Some(JobState::Succeeded) => {
            // Recorded before the Deployment changes: the Job may be pruned later.
            b.mark(d, Mark::Migration(MigrationMark::new(attempt, MigrationState::Succeeded)));
            roll(b, d)
        }
        Some(JobState::Failed { .. }) => {
            b.mark(d, Mark::Migration(MigrationMark::new(attempt, MigrationState::Failed)));
            let failure = b.failure(FailReason::MigrationFailed);
            b.mark(d, Mark::Failed(failure));
            migration_failed(b, d)
        }
        Some(JobState::Absent) | None => {
            if b.ledger.effective_failure(d).map(|f| f.reason) != Some(FailReason::MigrationLost) {
                let failure = b.failure(FailReason::MigrationLost);
                b.mark(d, Mark::Failed(failure));
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
        FailReason::RolloutFailed
        | FailReason::RollbackRequested
        | FailReason::AnalysisFailed
        | FailReason::Aborted => roll_back(b, failure),
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
    let requested = matches!(failure.reason, FailReason::RollbackRequested | FailReason::Aborted);
    let why = match failure.reason {
        FailReason::RollbackRequested => "a rollback was requested from revision",
        FailReason::Aborted => "the canary was aborted for revision",
        FailReason::AnalysisFailed => "metric analysis failed for revision",
        _ => "rollout failed for revision",
    }
    .to_string();
    // The canary's pods go first, whatever follows: the stable pods have served on this
    // schema for the whole canary, so stopping the new code is always safe.
    b.push(Action::StopCanary);
    if !requested && !input.auto_rollback {
        let message = format!(
            "{why} {d} and rollout.autoRollback is false; the canary (if any) is stopped; fix the spec or run `empacts rollback`"
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
            let reason = match b.ledger.effective_failure(&d).map(|f| f.reason) {
                Some(FailReason::AnalysisFailed) => reasons::ANALYSIS_FAILED,
                Some(FailReason::Aborted) => reasons::ABORTED,
                _ => reasons::ROLLED_BACK,
            };
            b.finish(Phase::RolledBack, reason, message)
        }
        Some(dep) if dep.failed() => {
            let message = format!("{why} {d} and the rollback to {g} is not progressing either; fix the spec");
            b.finish(Phase::Stalled, reasons::ROLLOUT_FAILED, message)
        }
        Some(_) => rolling_back(b, format!("{why} {d}; waiting for revision {g} to become available again")),
        None => rolling_back(b, format!("{why} {d}; restoring revision {g}")),
    }
}

/// How long after the Deployment controller should have judged a rollout the operator
/// judges it itself.
pub const OVERDUE_GRACE_SECONDS: i64 = 30;

/// The rollout of `revision` (its pods asked for at its rolled-at mark) has not completed
/// within the progress deadline plus a grace. The Deployment controller's
/// ProgressDeadlineExceeded is the first judge, but it never comes when a Deployment
/// returns to a template whose ReplicaSet exists while its Progressing condition still says
/// NewReplicaSetAvailable (a retry right after a rollback): the controller sees no progress
/// and no deadline. The operator's clock is the backstop.
/// Progress the controller saw (its condition's last update) moves the deadline, as it does
/// for the controller: a long rollout that keeps progressing is never overdue.
fn overdue(b: &Builder<'_>, revision: &str, dep: &DeploymentState) -> bool {
    let input = b.input;
    let Some(rolled) = b.ledger.get(revision).and_then(|e| e.rolled_at) else { return false };
    let at = dep.progressed_at.map_or(rolled, |p| p.max(rolled));
    dep.observed_generation >= dep.generation
        && !dep.complete()
        && input.now > at + input.progress_deadline + OVERDUE_GRACE_SECONDS
}

/// D's canary mark, if it belongs to the generation D is desired at.
fn canary_mark(entry: &Entry) -> Option<CanaryMark> {
    entry.canary.filter(|c| c.generation == entry.desired_generation)
}

/// D's analysis mark, if it belongs to the generation D is desired at.
fn analysis_mark(entry: &Entry) -> Option<AnalysisMark> {
    entry.analysis.filter(|a| a.generation == entry.desired_generation)
}

/// A canary of this revision started at its current desired generation and the revision
/// did not become good since: an abort applies to it.
pub(crate) fn in_canary(entry: &Entry) -> bool {
    canary_mark(entry).is_some() && entry.good.is_none_or(|g| g < entry.desired_generation)
}

fn steps(input: &PlanInput) -> &[super::Step] {
    match &input.delivery {
        Delivery::Canary(steps) => steps,
        Delivery::RollingUpdate => &[],
    }
}

/// A canary needs a stable revision that is good and serves; once started it goes on.
fn canary_applies(b: &Builder<'_>, d: &str) -> bool {
    let input = b.input;
    if steps(input).is_empty() {
        return false;
    }
    if b.ledger.get(d).and_then(canary_mark).is_some() {
        return true;
    }
    let Some(c) = b.current.as_deref().filter(|c| *c != d) else { return false };
    let stable_good = b.ledger.get(c).is_some_and(|e| e.good.is_some()) && b.ledger.effective_failure(c).is_none();
    stable_good && input.deployment.as_ref().is_some_and(|dep| dep.revision.as_deref() == Some(c) && dep.complete())
}

/// Canary pods for a weight: the share of the app's pods, at least one.
pub fn canary_replicas(total: i32, weight: i32) -> i32 {
    ((i64::from(total.max(0)) * i64::from(weight) + 99) / 100).max(1) as i32
}

/// D runs as the canary next to the stable revision, step by step, then is promoted.
fn canary(mut b: Builder<'_>, d: &str) -> Plan {
    let input = b.input;
    let steps = steps(input).to_vec();
    let last = steps.len() as u32;
    let entry = b.ledger.get(d).cloned().unwrap_or_default();
    let mut mark =
        canary_mark(&entry).unwrap_or(CanaryMark { generation: entry.desired_generation, step: 0, since: None });
    if canary_mark(&entry).is_none() {
        // Recorded before the canary Deployment changes: a restart resumes this canary.
        b.mark(d, Mark::Canary(mark));
        b.mark(d, Mark::Rolled(input.now));
    }
    if let Some(value) = input.promote.as_ref().filter(|v| entry.promote_ack.as_ref() != Some(*v)) {
        let full = value.starts_with("full");
        let step = if full { last } else { (mark.step + 1).min(last) };
        mark = CanaryMark { step, since: None, ..mark };
        b.mark(d, Mark::PromoteAck { value: value.clone(), canary: Some(mark) });
        b.mark(d, Mark::Rolled(input.now));
    }
    if mark.step >= last {
        return promote(b, d, last);
    }
    let step = steps[mark.step as usize];
    let total = input.replicas;
    let replicas = canary_replicas(total, step.weight);
    let stable_replicas = (!input.autoscaled).then(|| (total - replicas).max(1));
    b.push(Action::ApplyCanary { revision: d.to_string(), replicas, stable_replicas });
    b.canary = Some(CanaryView {
        revision: d.to_string(),
        step: mark.step + 1,
        steps: last,
        weight: step.weight,
        replicas,
        stable_replicas,
    });
    let at = format!("canary of revision {d} at step {}/{last} ({}%)", mark.step + 1, step.weight);
    let observed = input.canary.clone().filter(|c| c.revision.as_deref() == Some(d) && c.desired_replicas == replicas);
    match observed {
        Some(c) if c.failed() || overdue(&b, d, &c) => {
            let failure = b.failure(FailReason::RolloutFailed);
            b.mark(d, Mark::Failed(failure));
            return failed(b, failure);
        }
        Some(c) if c.complete() => {}
        other => {
            let ready = other.map(|c| c.ready_replicas).unwrap_or(0);
            let message = format!("{at}: {ready}/{replicas} canary pods ready");
            return b.finish(Phase::Progressing, reasons::CANARY_STEP, message);
        }
    }
    let since = match mark.since {
        Some(t) => t,
        None => {
            mark.since = Some(input.now);
            b.mark(d, Mark::Canary(mark));
            input.now
        }
    };
    let mut b = match record_measurement(b, d, since) {
        ControlFlow::Continue(b) => b,
        ControlFlow::Break(plan) => return plan,
    };
    if let Some(a) = input.analysis {
        b.wake_in(a.interval);
    }
    let Some(pause) = step.pause else {
        let message = format!("{at}: waiting for `empacts promote` (or `empacts abort`)");
        return b.finish(Phase::Progressing, reasons::WAITING_FOR_PROMOTE, message);
    };
    let elapsed = input.now.saturating_sub(since).max(0) as u64;
    if elapsed < pause {
        b.wake_in(pause - elapsed);
        let message = format!("{at}: {replicas} canary pods ready; next step in {}s", pause - elapsed);
        return b.finish(Phase::Progressing, reasons::CANARY_STEP, message);
    }
    let next = CanaryMark { step: mark.step + 1, since: None, ..mark };
    b.mark(d, Mark::Canary(next));
    if next.step >= last {
        return promote(b, d, last);
    }
    b.mark(d, Mark::Rolled(input.now));
    let message = format!("canary of revision {d}: step {}/{last} passed, moving to the next", mark.step + 1);
    b.finish(Phase::Progressing, reasons::CANARY_STEP, message)
}

/// Every step passed: the stable Deployment takes D's template; the canary keeps its pods
/// until the stable ones are all available (then the main path stops it).
fn promote(mut b: Builder<'_>, d: &str, steps: u32) -> Plan {
    if b.current.as_deref() != Some(d) {
        b.mark(d, Mark::Rolled(b.input.now));
    }
    b.push(Action::ApplyDeployment { revision: d.to_string() });
    b.current = Some(d.to_string());
    let replicas = b.input.canary.as_ref().map(|c| c.desired_replicas).unwrap_or(0);
    b.canary = Some(CanaryView {
        revision: d.to_string(),
        step: steps + 1,
        steps,
        weight: 100,
        replicas,
        stable_replicas: None,
    });
    let message = format!("promoting revision {d}: the stable Deployment takes its template");
    b.finish(Phase::Progressing, reasons::PROMOTING, message)
}

/// Fold this reconcile's measurement of D into its analysis mark. Break(plan) when the
/// analysis failed: D is marked failed and rolled back (Break).
fn record_measurement<'a>(mut b: Builder<'a>, d: &str, started: i64) -> ControlFlow<Plan, Builder<'a>> {
    let input = b.input;
    let Some(settings) = input.analysis else { return ControlFlow::Continue(b) };
    let Some(m) = input.measurement.as_ref().filter(|m| m.revision == d) else { return ControlFlow::Continue(b) };
    let entry = b.ledger.get(d).cloned().unwrap_or_default();
    let mut a = analysis_mark(&entry).unwrap_or(AnalysisMark {
        generation: entry.desired_generation,
        started,
        ..Default::default()
    });
    a.last = Some(input.now);
    match m.verdict() {
        Verdict::Passed => a.passed += 1,
        Verdict::Failed => a.failed += 1,
        Verdict::Inconclusive => a.inconclusive += 1,
    }
    for r in m.results.iter().filter(|r| r.verdict != Verdict::Passed) {
        let reason = if r.verdict == Verdict::Failed { "AnalysisMeasurementFailed" } else { "AnalysisInconclusive" };
        b.notes.push((reason, format!("revision {d}: metric {} {}", r.metric, r.detail)));
    }
    b.mark(d, Mark::Analysis(a));
    let limit = if a.failed >= settings.failure_limit {
        let total = a.failed + a.passed + a.inconclusive;
        format!("{} of {total} measurements failed (failureLimit {})", a.failed, settings.failure_limit)
    } else if a.inconclusive >= settings.inconclusive_limit {
        format!("{} measurements were inconclusive (inconclusiveLimit {})", a.inconclusive, settings.inconclusive_limit)
    } else {
        return ControlFlow::Continue(b);
    };
    let failure = b.failure(FailReason::AnalysisFailed);
    // The applies of D this plan queued before the verdict go: the rollback decides now.
    b.actions.retain(|a| !matches!(a, Action::ApplyCanary { .. } | Action::ApplyDeployment { .. }));
    b.mark(d, Mark::Failed(failure));
    let mut plan = failed(b, failure);
    plan.message = format!("{limit}; {}", plan.message);
    ControlFlow::Break(plan)
}

/// A completed rolling update of D under `analysis.duration`: measure until the window
/// ends. Break(plan) while it runs or when it failed; Continue once it passed (D becomes good).
fn analyse_rollout<'a>(mut b: Builder<'a>, entry: &Entry) -> ControlFlow<Plan, Builder<'a>> {
    let input = b.input;
    let Some(duration) = input.analysis.and_then(|a| a.duration) else { return ControlFlow::Continue(b) };
    if !steps(input).is_empty() || b.ledger.rollback_target(&entry.revision).is_none() {
        // A canary was analysed step by step (its promotion ends the analysis); the first
        // rollout of an app has nothing to go back to, so nothing to decide.
        return ControlFlow::Continue(b);
    }
    let d = entry.revision.clone();
    let started = analysis_mark(entry).map(|a| a.started).unwrap_or(input.now);
    if analysis_mark(entry).is_none() {
        let a = AnalysisMark { generation: entry.desired_generation, started, ..Default::default() };
        b.mark(&d, Mark::Analysis(a));
    }
    let mut b = record_measurement(b, &d, started)?;
    let elapsed = input.now.saturating_sub(started).max(0) as u64;
    if elapsed >= duration {
        return ControlFlow::Continue(b);
    }
    b.wake_in(duration - elapsed);
    if let Some(a) = input.analysis {
        b.wake_in(a.interval);
    }
    let passed = b.ledger.get(&d).and_then(analysis_mark).map(|a| a.passed).unwrap_or(0);
    let message = format!(
        "revision {d} is rolled out; analysing it for {}s more ({passed} measurements passed)",
        duration - elapsed
    );
    ControlFlow::Break(b.finish(Phase::Progressing, reasons::ANALYSING, message))
}

/// The revision to measure in this reconcile, if its analysis is running and a
/// measurement is due (pure: observe asks before it queries Prometheus).
pub fn analysis_due(input: &PlanInput) -> Option<String> {
    let settings = input.analysis?;
    let d = &input.desired;
    let entry = input.ledger.get(d)?;
    if input.paused || input.ledger.effective_failure(d).is_some() {
        return None;
    }
    let current = input.deployment.as_ref().and_then(|dep| dep.revision.as_deref());
    let running = match &input.delivery {
        Delivery::Canary(steps) => {
            canary_mark(entry).is_some_and(|c| c.since.is_some() && (c.step as usize) < steps.len())
                && current != Some(d.as_str())
        }
        Delivery::RollingUpdate => {
            settings.duration.is_some()
                && input.ledger.rollback_target(d).is_some()
                && current == Some(d.as_str())
                && input.deployment.as_ref().is_some_and(DeploymentState::proven)
                && entry.good.is_none_or(|g| g < entry.desired_generation)
        }
    };
    let last = analysis_mark(entry).and_then(|a| a.last);
    let due = last.is_none_or(|t| input.now.saturating_sub(t) >= settings.interval as i64);
    (running && due).then(|| d.clone())
}
