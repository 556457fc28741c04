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
        self.rollout.as_deref().cloned().unwrap_or_default()
    }
    pub fn secrets(&self) -> &[SecretEnv] {
        self.secrets.as_deref().unwrap_or(&[])
    }
    /// Port serving metrics: spec.monitoring.port, else the app port.
    pub fn metrics_port(&self) -> i32 {
        self.monitoring.as_ref().and_then(|m| m.port).unwrap_or_else(|| self.port())
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

pub const DEFAULT_ANALYSIS_INTERVAL: &str = "30s";
pub const DEFAULT_FAILURE_LIMIT: i32 = 2;
pub const DEFAULT_INCONCLUSIVE_LIMIT: i32 = 5;
pub const DEFAULT_INGRESS_CONTROLLER_NAMESPACE: &str = "ingress-nginx";
pub const DEFAULT_METRICS_PATH: &str = "/metrics";
pub const DEFAULT_SCRAPE_INTERVAL: &str = "30s";
pub const DEFAULT_ALERT_ERROR_RATE: f64 = 0.01;
pub const DEFAULT_ALERT_LATENCY_P95_SECONDS: f64 = 0.5;
pub const DEFAULT_ALERT_FOR: &str = "5m";

/// Seconds of a duration matching [`DURATION_PATTERN`] (`30s`, `2m`, `1h`); None otherwise.
pub fn duration_seconds(d: &str) -> Option<u64> {
    let (n, unit) = d.split_at(d.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    match unit {
        "s" => Some(n),
        "m" => Some(n * 60),
        "h" => Some(n * 3600),
        _ => None,
    }
}

impl RolloutPolicy {
    pub fn strategy(&self) -> RolloutStrategy {
        self.strategy.unwrap_or_default()
    }
    /// The canary steps (the default ones when none are given).
    pub fn steps(&self) -> Vec<CanaryStep> {
        self.steps.clone().unwrap_or_else(|| {
            vec![
                CanaryStep { weight: 10, pause: Some("2m".into()) },
                CanaryStep { weight: 50, pause: Some("5m".into()) },
            ]
        })
    }
}

impl CanaryStep {
    /// None: wait for a manual promote.
    pub fn pause_seconds(&self) -> Option<u64> {
        self.pause.as_deref().and_then(duration_seconds)
    }
}

impl Analysis {
    pub fn interval_seconds(&self) -> u64 {
        self.interval.as_deref().and_then(duration_seconds).unwrap_or(30).max(1)
    }
    pub fn failure_limit(&self) -> u32 {
        self.failure_limit.unwrap_or(DEFAULT_FAILURE_LIMIT).max(1) as u32
    }
    pub fn inconclusive_limit(&self) -> u32 {
        self.inconclusive_limit.unwrap_or(DEFAULT_INCONCLUSIVE_LIMIT).max(1) as u32
    }
    pub fn duration_seconds(&self) -> Option<u64> {
        self.duration.as_deref().and_then(duration_seconds)
    }
    /// The checks (the default ones when none are given): the guides' alert thresholds,
    /// error ratio below 1% and p95 latency below 500 ms, of the revision under analysis.
    pub fn metrics(&self) -> Vec<AnalysisMetric> {
        self.metrics.clone().unwrap_or_else(default_analysis_metrics)
    }
}

/// Series selector of the revision under analysis, in the templated form.
const REVISION_SELECTOR: &str = r#"namespace="{{namespace}}",app="{{app}}",revision="{{revision}}""#;

pub fn default_analysis_metrics() -> Vec<AnalysisMetric> {
    let s = REVISION_SELECTOR;
    vec![
        AnalysisMetric {
            name: "error-rate".into(),
            query: format!(
                r#"sum(rate(http_requests_total{{{s},code=~"5.."}}[1m])) / sum(rate(http_requests_total{{{s}}}[1m]))"#
            ),
            threshold_range: ThresholdRange { min: None, max: Some(DEFAULT_ALERT_ERROR_RATE) },
        },
        AnalysisMetric {
            name: "latency-p95".into(),
            query: format!(
                r#"histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{{{s}}}[1m])))"#
            ),
            threshold_range: ThresholdRange { min: None, max: Some(DEFAULT_ALERT_LATENCY_P95_SECONDS) },
        },
    ]
}

impl NetworkPolicySpec {
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
    pub fn ingress_controller_namespace(&self) -> &str {
        self.ingress_controller_namespace.as_deref().unwrap_or(DEFAULT_INGRESS_CONTROLLER_NAMESPACE)
    }
}

impl IngressSpec {
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or("/")
    }
}

impl Monitoring {
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_METRICS_PATH)
    }
    pub fn interval(&self) -> &str {
        self.interval.as_deref().unwrap_or(DEFAULT_SCRAPE_INTERVAL)
    }
    pub fn alerts(&self) -> Alerts {
        self.alerts.clone().unwrap_or_default()
    }
}

impl Alerts {
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }
    pub fn error_rate(&self) -> f64 {
        self.error_rate.unwrap_or(DEFAULT_ALERT_ERROR_RATE)
    }
    pub fn latency_p95_seconds(&self) -> f64 {
        self.latency_p95_seconds.unwrap_or(DEFAULT_ALERT_LATENCY_P95_SECONDS)
    }
    pub fn for_(&self) -> &str {
        self.for_.as_deref().unwrap_or(DEFAULT_ALERT_FOR)
    }
}
