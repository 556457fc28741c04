//! Defaults, in one place. The spec keeps what the user wrote (so GitOps diffs stay clean);
//! these accessors give the effective values.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::spec::*;

pub const DEFAULT_REPLICAS: i32 = 1;
pub const DEFAULT_PORT: i32 = 8080;
pub const DEFAULT_SERVICE_PORT: i32 = 80;
pub const DEFAULT_SECRET_LENGTH: u32 = 64;
pub const DEFAULT_MIGRATION_TIMEOUT_SECONDS: i64 = 600;
pub const DEFAULT_MIGRATION_BACKOFF_LIMIT: i32 = 1;
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 300;
pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;
pub const DEFAULT_MIN_REPLICAS: i32 = 1;

impl EmpactsAppSpec {
    pub fn replicas(&self) -> i32 {
        self.replicas.unwrap_or(DEFAULT_REPLICAS)
    }
    pub fn port(&self) -> i32 {
        self.port.unwrap_or(DEFAULT_PORT)
    }
    pub fn paused(&self) -> bool {
        self.paused.unwrap_or(false)
    }
    pub fn service_port(&self) -> i32 {
        self.service.as_ref().and_then(|s| s.port).unwrap_or(DEFAULT_SERVICE_PORT)
    }
    pub fn service_type(&self) -> ServiceType {
        self.service.as_ref().and_then(|s| s.type_).unwrap_or_default()
    }
    pub fn rollout(&self) -> RolloutPolicy {
        self.rollout.clone().unwrap_or_default()
    }
    pub fn secrets(&self) -> &[SecretEnv] {
        self.secrets.as_deref().unwrap_or(&[])
    }
}

impl RolloutPolicy {
    pub fn max_surge(&self) -> IntOrString {
        self.max_surge.clone().unwrap_or(IntOrString::String("25%".into()))
    }
    pub fn max_unavailable(&self) -> IntOrString {
        self.max_unavailable.clone().unwrap_or(IntOrString::Int(0))
    }
    pub fn progress_deadline_seconds(&self) -> i32 {
        self.progress_deadline_seconds.unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS)
    }
    pub fn auto_rollback(&self) -> bool {
        self.auto_rollback.unwrap_or(true)
    }
    pub fn revision_history_limit(&self) -> i32 {
        self.revision_history_limit.unwrap_or(DEFAULT_REVISION_HISTORY_LIMIT)
    }
}

impl Migration {
    pub fn timeout_seconds(&self) -> i64 {
        self.timeout_seconds.unwrap_or(DEFAULT_MIGRATION_TIMEOUT_SECONDS)
    }
    pub fn backoff_limit(&self) -> i32 {
        self.backoff_limit.unwrap_or(DEFAULT_MIGRATION_BACKOFF_LIMIT)
    }
}

impl GenerateSecret {
    pub fn length(&self) -> u32 {
        self.length.unwrap_or(DEFAULT_SECRET_LENGTH)
    }
    pub fn retain(&self) -> bool {
        self.retain.unwrap_or(false)
    }
}

impl Autoscaling {
    pub fn min_replicas(&self) -> i32 {
        self.min_replicas.unwrap_or(DEFAULT_MIN_REPLICAS)
    }
}
