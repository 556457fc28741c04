//! The decision: a pure function from what was observed to the complete, ordered list of
//! writes of this reconcile (ledger marks, Jobs, children, prune sets) and the phase.
//!
//! Revisions: D = desired, C = what the Deployment carries, G = the rollback target.
//! Every fact comes from the ledger (see [`crate::ledger`]), never from `.status`. Marks are
//! placed before the writes they license, and the plan keeps deciding on the ledger as it
//! will be after its own marks, so one reconcile can take several dependent steps.
//! The rules:
//! - a new revision with a migration runs its Job first; only a succeeded Job lets it roll;
//!   a failed migration leaves the running version alone; a Job that vanished before its
//!   result was recorded is never re-run by itself (the database may be half-migrated);
//! - a rollout past its progress deadline marks D failed, then (with autoRollback) undoes
//!   the migrations done after G was good, newest first, each with its own rollbackCommand,
//!   then restores G; without a rollbackCommand for one of them it stalls;
//! - a manual rollback request is the same procedure towards the requested good revision;
//! - D stays failed until another revision was desired after the failure, or a retry.

pub(crate) mod lifecycle;
mod retention;

use empacts_api::Phase;
use empacts_api::conditions::reasons;

pub use crate::ledger::{
    AnalysisMark, CanaryMark, Entry, FailReason, FailedMark, Ledger, Mark, MigrationMark, MigrationState,
};
pub use lifecycle::analysis_due;
pub use retention::{Retention, retention};

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

impl JobState {
    pub fn finished(&self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobKind {
    Migrate,
    Rollback,
}

/// A migration or rollback Job of the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedJob {
    pub name: String,
    pub kind: JobKind,
    pub revision: String,
    pub attempt: u32,
    pub state: JobState,
    /// Carries ttlSecondsAfterFinished: the TTL controller removes it once finished.
    pub expiring: bool,
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
    /// Last update of the Progressing condition (Unix time): the controller saw progress.
    pub progressed_at: Option<i64>,
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

    pub fn failed(&self) -> bool {
        self.observed_generation >= self.generation && self.progress_deadline_exceeded
    }

    /// Complete with at least one pod: proof that the revision runs.
    pub fn proven(&self) -> bool {
        self.complete() && self.desired_replicas > 0 && self.ready_replicas > 0
    }
}

/// A generated Secret of the spec and what exists under its name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GeneratedSecret {
    pub env: String,
    pub name: String,
    pub exists: bool,
    /// Created by the operator for this app (owner UID, or for retained ones the app's labels).
    pub ours: bool,
    /// Carries this app's owner reference.
    pub owned: bool,
    pub retain: bool,
    /// The rotation request it last satisfied.
    pub rotation: Option<String>,
}

/// A manual rollback request (`empacts.io/rollback-to`): its value, and the revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackRequest {
    pub value: String,
    pub target: String,
}

/// One canary step as the decision uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub weight: i32,
    /// Seconds to hold the step once its pods are ready; None: until `empacts promote`.
    pub pause: Option<u64>,
}

/// How a new revision reaches the pods.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Delivery {
    #[default]
    RollingUpdate,
    Canary(Vec<Step>),
}

/// Metric analysis settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnalysisSettings {
    pub interval: u64,
    pub failure_limit: u32,
    pub inconclusive_limit: u32,
    /// Analysis of a completed rolling update lasts this long (None: canaries only).
    pub duration: Option<u64>,
}

/// Outcome of one metric's measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Failed,
    /// Prometheus unreachable, an error, or no data: never a pass.
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "Passed",
            Verdict::Failed => "Failed",
            Verdict::Inconclusive => "Inconclusive",
        }
    }
}

/// One metric measured once.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricResult {
    pub metric: String,
    pub value: Option<f64>,
    pub verdict: Verdict,
    /// Why it is not a pass (the range missed, or the error), for Events and status.
    pub detail: String,
}

/// Every metric of the analysis measured once, for `revision`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Measurement {
    pub revision: String,
    pub results: Vec<MetricResult>,
}

impl Measurement {
    /// A failed metric fails the measurement; otherwise an inconclusive one makes it inconclusive.
    pub fn verdict(&self) -> Verdict {
        let any = |v| self.results.iter().any(|r| r.verdict == v);
        if any(Verdict::Failed) {
            Verdict::Failed
        } else if any(Verdict::Inconclusive) || self.results.is_empty() {
            Verdict::Inconclusive
        } else {
            Verdict::Passed
        }
    }
}

/// Everything the decision needs, gathered by `validate` and `observe`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlanInput {
    /// The app's name (for messages and Job names).
    pub app: String,
    pub generation: i64,
    /// Why the spec cannot be acted upon, if it cannot.
    pub invalid: Option<String>,
    /// D (the name it has or will have in the ledger).
    pub desired: String,
    /// D as a new ledger entry would describe it (image, rollbackCommand, ConfigMap).
    pub desired_entry: Entry,
    pub has_migration: bool,
    pub auto_rollback: bool,
    pub paused: bool,
    pub history_limit: usize,
    pub retry: Option<String>,
    pub rollback: Option<RollbackRequest>,
    pub rotation: Option<String>,
    pub ledger: Ledger,
    /// The Deployment, if it exists and this app controls it.
    pub deployment: Option<DeploymentState>,
    pub jobs: Vec<ObservedJob>,
    pub secrets: Vec<GeneratedSecret>,
    /// Referenced Secrets of D that are missing: (reason, message).
    pub missing_reference: Option<(String, String)>,
    /// Revisions whose referenced Secrets are all present (D and rollback candidates).
    pub references_ok: Vec<String>,
    /// A child name held by an object this app does not control.
    pub name_taken: Option<String>,
    /// Env ConfigMaps of the app that exist.
    pub config_maps: Vec<String>,
    /// Facts of revisions recorded by an earlier build, to write once (already in `ledger`).
    pub imports: Vec<(String, Mark)>,
    /// Unix seconds of this reconcile: canary pauses, analysis intervals and the operator's
    /// own progress deadline count from it.
    pub now: i64,
    /// spec.rollout.progressDeadlineSeconds.
    pub progress_deadline: i64,
    pub delivery: Delivery,
    pub analysis: Option<AnalysisSettings>,
    /// This reconcile's measurement, taken when [`analysis_due`] said so.
    pub measurement: Option<Measurement>,
    /// The canary Deployment (`<app>-canary`), if this app controls it.
    pub canary: Option<DeploymentState>,
    /// Pods the app runs (spec.replicas, or the autoscaler's current count).
    pub replicas: i32,
    /// An autoscaler owns the stable Deployment's replica count.
    pub autoscaled: bool,
    /// `empacts.io/promote` and `empacts.io/abort` request values.
    pub promote: Option<String>,
    pub abort: Option<String>,
    /// Why the app's spec.monitoring cannot be honoured (a Prometheus Operator CRD is missing).
    pub monitoring_unavailable: Option<String>,
}

/// One write, in the order the plan gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create D's ControllerRevision (its spec, desired at this generation).
    RecordRevision {
        revision: String,
    },
    Mark {
        revision: String,
        mark: Mark,
    },
    CreateSecret {
        env: String,
    },
    /// New value, recording the request it satisfies (one write).
    RotateSecret {
        env: String,
        request: String,
    },
    /// Drop this app's owner reference (retain turned on later).
    ReleaseSecret {
        env: String,
    },
    /// ServiceAccount and the env ConfigMap of this revision.
    ApplyConfig {
        revision: String,
    },
    CreateJob {
        kind: JobKind,
        revision: String,
        attempt: u32,
    },
    DeleteJob {
        name: String,
    },
    /// The Deployment with this revision's template.
    ApplyDeployment {
        revision: String,
    },
    /// The canary Deployment with this revision's template at `replicas`, and the stable
    /// Deployment (keeping its revision) at `stable_replicas` unless an autoscaler owns them.
    ApplyCanary {
        revision: String,
        replicas: i32,
        stable_replicas: Option<i32>,
    },
    /// The canary Deployment to 0 pods (if it runs any).
    StopCanary,
    /// Service, HPA, PDB from the current spec (removed when no longer in it).
    ApplyServing,
    Prune(Retention),
}

/// The next step and what it implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub phase: Phase,
    /// Condition reason and human message explaining the phase.
    pub reason: &'static str,
    pub message: String,
    pub actions: Vec<Action>,
    /// The ledger as it will be once the marks are written: what status projects.
    pub ledger: Ledger,
    /// Revision the Deployment carries once the plan is applied.
    pub current: Option<String>,
    /// Migration of D done (or not needed): condition MigrationComplete.
    pub migration_complete: Option<bool>,
    /// Warnings worth an Event that are not a phase (names only, never values).
    pub notes: Vec<(&'static str, String)>,
    /// The canary in progress, for status.
    pub canary: Option<CanaryView>,
    /// Seconds until a pause ends or a measurement is due: reconcile again then.
    pub wake: Option<u64>,
}

/// Where a canary stands, for status and `kubectl get`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryView {
    pub revision: String,
    /// 1-based; steps + 1 while promoting.
    pub step: u32,
    pub steps: u32,
    pub weight: i32,
    pub replicas: i32,
    pub stable_replicas: Option<i32>,
}

/// The plan under construction: marks update the working ledger as they are emitted.
pub(crate) struct Builder<'a> {
    pub input: &'a PlanInput,
    pub ledger: Ledger,
    pub actions: Vec<Action>,
    pub notes: Vec<(&'static str, String)>,
    pub current: Option<String>,
    pub canary: Option<CanaryView>,
    pub wake: Option<u64>,
}

impl<'a> Builder<'a> {
    pub fn mark(&mut self, revision: &str, mark: Mark) {
        if let Some(e) = self.ledger.get_mut(revision) {
            mark.apply_to(e);
        }
        self.actions.push(Action::Mark { revision: revision.to_string(), mark });
    }

    /// D failed now, for `reason`. At the app's generation, or the one D was last desired at
    /// if the view is older than the ledger: a failure must count against the revision as the
    /// ledger knows it, never be forgiven by a stale generation.
    pub fn failure(&self, reason: FailReason) -> FailedMark {
        let d = self.ledger.get(&self.input.desired).map(|e| e.desired_generation).unwrap_or(0);
        FailedMark { generation: self.input.generation.max(d), reason }
    }

    /// Reconcile again within `seconds` (the soonest of all asked for).
    pub fn wake_in(&mut self, seconds: u64) {
        self.wake = Some(self.wake.map_or(seconds, |w| w.min(seconds)).max(1));
    }

    pub fn push(&mut self, action: Action) {
        self.actions.push(action);
    }

    pub fn finish(self, phase: Phase, reason: &'static str, message: String) -> Plan {
        let d = self.input.desired.as_str();
        let migration_complete = migration_complete(self.input, self.ledger.get(d));
        Plan {
            phase,
            reason,
            message,
            actions: self.actions,
            ledger: self.ledger,
            current: self.current,
            migration_complete,
            notes: self.notes,
            canary: self.canary,
            wake: self.wake,
        }
    }
}

fn migration_complete(input: &PlanInput, d: Option<&Entry>) -> Option<bool> {
    if !input.has_migration {
        return Some(true);
    }
    match d.map(|e| e.migration.state) {
        Some(MigrationState::Succeeded) => Some(true),
        Some(MigrationState::Failed) => Some(false),
        _ => None,
    }
}

/// Decide the next step. Pure: same input, same plan.
pub fn plan(input: &PlanInput) -> Plan {
    let mut b = Builder {
        input,
        ledger: input.ledger.clone(),
        actions: Vec::new(),
        notes: Vec::new(),
        current: input.deployment.as_ref().and_then(|d| d.revision.clone()),
        canary: None,
        wake: None,
    };
    if let Some(message) = &input.invalid {
        return b.finish(Phase::Stalled, reasons::INVALID_SPEC, message.clone());
    }
    if let Some(note) = &input.monitoring_unavailable {
        b.notes.push((crate::monitoring::UNAVAILABLE, note.clone()));
    }
    if let Some(name) = &input.name_taken {
        let message = format!(
            "{name} already exists and is not controlled by this EmpactsApp; the operator never takes over objects it does not own: delete or rename it, or rename the app"
        );
        return b.finish(Phase::Stalled, reasons::NAME_TAKEN, message);
    }
    if input.paused {
        return b.finish(Phase::Paused, reasons::PAUSED, "spec.paused is set: no new revision is rolled out".into());
    }
    for (revision, mark) in &input.imports {
        b.push(Action::Mark { revision: revision.clone(), mark: mark.clone() });
    }
    if generated_secrets(&mut b) {
        // Pods and Jobs start once every generated Secret exists (the next reconcile sees them).
        return b.finish(Phase::Pending, reasons::PROGRESSING, "creating generated Secrets".into());
    }
    if let Some((reason, message)) = &input.missing_reference {
        let reason = if reason == reasons::SECRET_KEY_NOT_FOUND {
            reasons::SECRET_KEY_NOT_FOUND
        } else {
            reasons::SECRET_NOT_FOUND
        };
        return b.finish(Phase::Stalled, reason, message.clone());
    }
    let d = input.desired.clone();
    let newest_other =
        b.ledger.entries.iter().filter(|e| e.revision != d).map(|e| e.desired_generation).max().unwrap_or(0);
    let mine = b.ledger.get(&d).map(|e| e.desired_generation);
    if mine.is_none_or(|m| m < newest_other) && input.generation <= newest_other {
        // Another revision was desired at a later generation than this view shows: the
        // view is stale. Decide nothing on it.
        let message = format!("waiting for a current view of the app (generation {} is stale)", input.generation);
        return b.finish(Phase::Progressing, reasons::PROGRESSING, message);
    }
    match mine {
        None => {
            b.push(Action::RecordRevision { revision: d.clone() });
            b.ledger.entries.push(Entry {
                revision: d.clone(),
                number: input.ledger.entries.iter().map(|e| e.number).max().unwrap_or(0) + 1,
                desired_generation: input.generation,
                spec_readable: true,
                ..input.desired_entry.clone()
            });
        }
        Some(m) if m < newest_other => b.mark(&d, Mark::Desired(input.generation)),
        Some(_) => {}
    }
    requests(&mut b);
    b.push(Action::ApplyConfig { revision: d.clone() });
    let mut plan = lifecycle::decide(b);
    plan.actions.push(Action::ApplyServing);
    let prune = retention(&plan.ledger, &input.desired, plan.current.as_deref(), input);
    if !prune.is_empty() {
        plan.actions.push(Action::Prune(prune));
    }
    plan
}

/// Create missing generated Secrets, rotate on request, release retained ones. Returns
/// whether any is being created.
fn generated_secrets(b: &mut Builder<'_>) -> bool {
    let mut creating = false;
    for s in &b.input.secrets {
        if !s.exists {
            b.push(Action::CreateSecret { env: s.env.clone() });
            creating = true;
        } else if !s.ours {
            b.notes.push((
                "SecretNotOwned",
                format!(
                    "Secret {} exists but was not generated by the operator for this app; it is used as is and never rotated",
                    s.name
                ),
            ));
        } else {
            if let Some(request) = b.input.rotation.as_ref().filter(|r| s.rotation.as_ref() != Some(*r)) {
                b.push(Action::RotateSecret { env: s.env.clone(), request: request.clone() });
            }
            if s.retain && s.owned {
                b.push(Action::ReleaseSecret { env: s.env.clone() });
            }
        }
    }
    creating
}

/// Acknowledge retry, rollback and abort requests on D's ledger entry, before acting on
/// them (a promote is acknowledged where the canary is decided).
fn requests(b: &mut Builder<'_>) {
    let input = b.input;
    let d = input.desired.as_str();
    let entry = b.ledger.get(d).cloned().unwrap_or_default();
    if let Some(value) = input.abort.as_ref().filter(|v| entry.abort_ack.as_ref() != Some(*v)) {
        let failed = if lifecycle::in_canary(&entry) && b.ledger.effective_failure(d).is_none() {
            Some(b.failure(FailReason::Aborted))
        } else {
            b.notes.push(("AbortRefused", format!("abort refused: no canary of revision {d} is in progress")));
            None
        };
        b.mark(d, Mark::AbortAck { value: value.clone(), failed });
    }
    if let Some(value) = input.retry.as_ref().filter(|v| entry.retry_ack.as_ref() != Some(*v)) {
        let m = entry.migration;
        let migration = match m.state {
            MigrationState::Failed => Some(MigrationMark::new(m.attempt, MigrationState::Retried)),
            MigrationState::DownFailed => Some(MigrationMark::new(m.attempt, MigrationState::Succeeded)),
            // A lost Job: the user checked the database and asks to run it again.
            MigrationState::Created if entry.failed.map(|f| f.reason) == Some(FailReason::MigrationLost) => {
                Some(MigrationMark::new(m.attempt, MigrationState::Retried))
            }
            _ => None,
        };
        b.mark(d, Mark::RetryAck { value: value.clone(), migration });
    }
    if let Some(request) = input.rollback.as_ref().filter(|r| entry.rollback_ack.as_ref() != Some(&r.value)) {
        let mut probe = b.ledger.clone();
        if let Some(e) = probe.get_mut(d) {
            e.rollback_target = Some(request.target.clone());
            e.failed = None;
        }
        let acceptable = request.target != d && probe.rollback_target(d).is_some();
        if acceptable {
            let failed = b.failure(FailReason::RollbackRequested);
            let mark = Mark::RollbackAck {
                value: request.value.clone(),
                target: Some(request.target.clone()),
                failed: Some(failed),
            };
            b.mark(d, mark);
        } else {
            b.notes.push((
                "RollbackRefused",
                format!(
                    "rollback to revision {} refused: it is the desired revision, unknown, never became available, failed since, or its record cannot be read; see `empacts history`",
                    request.target
                ),
            ));
            b.mark(d, Mark::RollbackAck { value: request.value.clone(), target: None, failed: None });
        }
    }
}

#[cfg(test)]
mod canary_tests;
#[cfg(test)]
mod tests;
