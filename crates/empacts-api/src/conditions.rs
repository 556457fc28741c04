//! Condition types and reasons (kstatus style). Reasons are CamelCase, stable, and meant
//! to be matched by alerts and GitOps health checks.

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const MIGRATION_COMPLETE: &str = "MigrationComplete";

pub const TRUE: &str = "True";
pub const FALSE: &str = "False";
pub const UNKNOWN: &str = "Unknown";

pub mod reasons {
    pub const AVAILABLE: &str = "Available";
    pub const PROGRESSING: &str = "Progressing";
    pub const MIGRATING: &str = "Migrating";
    pub const MIGRATION_SUCCEEDED: &str = "MigrationSucceeded";
    pub const MIGRATION_FAILED: &str = "MigrationFailed";
    pub const NO_MIGRATION: &str = "NoMigration";
    pub const ROLLOUT_FAILED: &str = "RolloutFailed";
    pub const ROLLING_BACK: &str = "RollingBack";
    pub const ROLLED_BACK: &str = "RolledBack";
    pub const ROLLBACK_MIGRATION_FAILED: &str = "RollbackMigrationFailed";
    pub const ROLLBACK_NEEDS_COMMAND: &str = "RollbackNeedsRollbackCommand";
    pub const NO_GOOD_REVISION: &str = "NoGoodRevision";
    pub const AUTO_ROLLBACK_DISABLED: &str = "AutoRollbackDisabled";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const SECRET_KEY_NOT_FOUND: &str = "SecretKeyNotFound";
    pub const PAUSED: &str = "Paused";
    pub const RECONCILE_ERROR: &str = "ReconcileError";
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    /// A child's name is held by an object the app does not control.
    pub const NAME_TAKEN: &str = "NameTaken";
    /// A migration or rollback Job vanished before its result was recorded.
    pub const MIGRATION_JOB_LOST: &str = "MigrationJobLost";
    /// A canary step is running (or its pods are starting).
    pub const CANARY_STEP: &str = "CanaryStep";
    /// A canary step without a pause waits for `empacts promote`.
    pub const WAITING_FOR_PROMOTE: &str = "WaitingForPromote";
    /// The stable Deployment takes the canary's revision.
    pub const PROMOTING: &str = "Promoting";
    /// A completed rolling update is analysed for `analysis.duration`.
    pub const ANALYSING: &str = "Analysing";
    /// Metric analysis failed: the revision is rolled back.
    pub const ANALYSIS_FAILED: &str = "AnalysisFailed";
    /// A canary was aborted on request.
    pub const ABORTED: &str = "Aborted";
}
