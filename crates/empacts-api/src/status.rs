//! Observed state of an `EmpactsApp`, following the Kubernetes API conventions
//! (observedGeneration, kstatus conditions) so `kubectl wait`, Argo CD and Flux read it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state written by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EmpactsAppStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Short summary of the lifecycle; conditions carry the detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Ready, Reconciling, Stalled, MigrationComplete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Revision the Deployment runs (or is rolling out) now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// Revision the spec asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_revision: Option<String>,
    /// Last revision that became fully available; the target of an automatic rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good_revision: Option<String>,
    /// A revision that failed; it is not retried until the spec changes or a retry is requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_revision: Option<String>,
    /// Newest first, bounded by rollout.revisionHistoryLimit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RevisionRecord>,
    /// Pods of the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Ready pods of the Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Pods running the current template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,
    /// The migration of the desired revision, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationStatus>,
    /// Last retry request (value of the empacts.io/retry annotation) acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_retry: Option<String>,
    /// Last rotation request (value of the empacts.io/rotate-secrets annotation) acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_rotation: Option<String>,
    /// The canary in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    /// Metric analysis of the desired revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,
    /// With a sharded operator, the shard that reconciles this app (`<i>-of-<n>`): claimed
    /// before its first write, released when the app moves to another shard (its
    /// `empacts.io/shard-key` label changed). The new shard waits for the release, so two
    /// replicas never reconcile the app at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

/// Where a canary stands.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// The revision running as the canary.
    pub revision: String,
    /// Current step, 1-based (steps + 1 while the stable Deployment takes the revision).
    pub step: i32,
    pub steps: i32,
    /// Percent of the app's pods the step asks for.
    pub weight: i32,
    /// Pods of the canary Deployment, and of the stable one (unless an autoscaler owns it).
    pub canary_replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_replicas: Option<i32>,
    /// Short form for `kubectl get`: `1/2 10%`, or `promoting`.
    pub progress: String,
}

/// Metric analysis so far.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    pub revision: String,
    pub passed: i32,
    pub failed: i32,
    pub inconclusive: i32,
    /// The latest measurements, newest first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<MeasurementRecord>,
}

/// One metric measured once.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeasurementRecord {
    pub metric: String,
    /// The query's value, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Passed, Failed or Inconclusive.
    pub phase: String,
    pub message: String,
    pub at: Time,
}

/// Lifecycle summary.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Accepted, nothing applied yet.
    Pending,
    /// The migration Job of a new revision is running.
    Migrating,
    /// The Deployment is rolling out a revision.
    Progressing,
    /// The desired revision is fully available.
    Ready,
    /// The migration of the desired revision failed; the previous revision keeps serving.
    MigrationFailed,
    /// A failed revision is being undone (rollback migration or template restore in progress).
    RollingBack,
    /// A failed rollout was rolled back to the last good revision.
    RolledBack,
    /// The operator cannot make progress without a human (see the Stalled condition).
    Stalled,
    /// spec.paused is set: no new revision is rolled out.
    Paused,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Pending,
        Phase::Migrating,
        Phase::Progressing,
        Phase::Ready,
        Phase::MigrationFailed,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::Stalled,
        Phase::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Migrating => "Migrating",
            Phase::Progressing => "Progressing",
            Phase::Ready => "Ready",
            Phase::MigrationFailed => "MigrationFailed",
            Phase::RollingBack => "RollingBack",
            Phase::RolledBack => "RolledBack",
            Phase::Stalled => "Stalled",
            Phase::Paused => "Paused",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the revision history. The full spec of each revision is kept in a
/// ControllerRevision named `<app>-<revision>`, so `empacts rollback` can restore it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRecord {
    /// Content hash of the pod template and migration.
    pub revision: String,
    /// Image of that revision.
    pub image: String,
    /// Whether its migration ran to success.
    #[serde(default)]
    pub migrated: bool,
    /// Outcome so far.
    pub result: RevisionResult,
    /// When the revision was first seen.
    pub at: Time,
    /// Human-readable detail of the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Outcome of a revision.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevisionResult {
    /// Migration or rollout in progress.
    InProgress,
    /// Became fully available.
    Succeeded,
    /// Its migration failed; it never served traffic.
    MigrationFailed,
    /// Its rollout failed and it was rolled back.
    RolledBack,
    /// Its rollout failed and it could not be rolled back automatically.
    Failed,
    /// Replaced by a newer revision before it finished.
    Superseded,
}

/// State of the migration Job of the desired revision.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStatus {
    /// Job name, `<app>-migrate-<revision>` (rollback runs: `<app>-rollback-<revision>`).
    pub job: String,
    /// Revision the Job migrates to (or from, for a rollback run).
    pub revision: String,
    /// Running, Succeeded or Failed.
    pub phase: MigrationPhase,
    /// Machine-readable reason, e.g. BackoffLimitExceeded or DeadlineExceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Phase of a migration Job.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationPhase {
    Running,
    Succeeded,
    Failed,
}
