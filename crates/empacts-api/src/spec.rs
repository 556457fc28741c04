//! The `EmpactsApp` custom resource: one object describing a whole application.
//!
//! Admission rules live next to the fields they guard: simple bounds as OpenAPI
//! keywords, cross-field rules as CEL (`x-kubernetes-validations`). The same CEL rules
//! are evaluated client-side by [`crate::validate`], so `empacts render` refuses what the
//! API server would refuse.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::status::EmpactsAppStatus;

/// A container image reference: `[registry[:port]/]path[:tag][@sha256:digest]`.
/// RE2-compatible so the API server (Go regexp) and the operator (regex crate) agree.
pub const IMAGE_PATTERN: &str = r"^([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]+)?/)?[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$";

/// Environment variable names the operator accepts (C identifiers, portable to every runtime).
pub const ENV_NAME_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]*$";

// Patterns shared by OpenAPI keywords and CEL rules are written as macros (so `concat!` can
// splice them into rules) and without backslashes (CEL string literals reject `\.`).

/// A DNS-1123 subdomain (names of Secrets, label/annotation key prefixes).
macro_rules! dns_subdomain {
    () => {
        "[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    };
}

/// A qualified name (label, annotation and resource-name keys): `[prefix/]name`, name at most
/// 63 characters. The prefix's 253-character bound is checked separately in CEL.
macro_rules! qualified_name {
    () => {
        concat!("^(", dns_subdomain!(), "/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
    };
}

/// CEL: every key of the map `self` is a qualified name.
macro_rules! keys_are_qualified_names {
    () => {
        concat!("self.all(k, k.matches('", qualified_name!(), "') && (!k.contains('/') || k.indexOf('/') <= 253))")
    };
}

/// A Secret name: kube puts it unencoded into request URLs, so anything but a DNS-1123
/// subdomain (`?watch=true`, `../x`, `a/b`) would change the request.
pub const DNS_SUBDOMAIN_PATTERN: &str = concat!("^", dns_subdomain!(), "$");

/// A Secret (or ConfigMap) key: `[-._a-zA-Z0-9]+`, neither `.` nor `..` nor starting with `..`.
pub const SECRET_KEY_PATTERN: &str = r"^(\.[-_a-zA-Z0-9][-._a-zA-Z0-9]*|[-_a-zA-Z0-9][-._a-zA-Z0-9]*)$";

/// A non-negative Kubernetes quantity (`500m`, `1.5`, `256Mi`, `1e3`).
pub const QUANTITY_PATTERN: &str =
    r"^(\+)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// A label value: at most 63 characters (checked by maxLength), alphanumeric at both ends, may be empty.
pub const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

/// A percentage of pods, `0%` to `100%` (integers are bounded with minimum/maximum instead).
pub const PERCENT_PATTERN: &str = r"^([0-9]|[1-9][0-9]|100)%$";

/// An HTTP probe path: absolute, printable ASCII without spaces (the kubelet puts it in a request line).
pub const PROBE_PATH_PATTERN: &str = r"^/[!-~]*$";

/// Largest pod count in an int-or-percent field (as `spec.replicas`); also keeps the
/// value within the 32-bit integer the operator reads, so one object cannot break its watch.
pub const MAX_POD_COUNT: i32 = 1000;

/// Longest value of one `spec.env` entry, in characters: at most 64 KiB as UTF-8, half the
/// kernel's 128 KiB limit on one environment string.
pub const MAX_ENV_VALUE_LEN: usize = 16384;

/// Longest `spec.env` in characters (keys plus values). Keys are ASCII and at most 128
/// characters, values at most 4 bytes a character, so the ConfigMap stays under its 1 MiB
/// limit: 256 * 128 + 245760 * 4 = 1015808 bytes.
pub const MAX_ENV_TOTAL_CHARS: usize = 245760;

/// Longest value of one pod annotation, in characters.
pub const MAX_ANNOTATION_VALUE_LEN: usize = 4096;

/// Largest `spec.podAnnotations` in bytes (keys plus UTF-8 values): 224 KiB, which leaves
/// 32 KiB of Kubernetes' 256 KiB annotation limit for the operator's own pod annotations.
pub const MAX_ANNOTATIONS_BYTES: usize = 229376;

/// Longest element of a command or its arguments, in characters (16 KiB as UTF-8 at most).
pub const MAX_ARG_LEN: usize = 4096;

/// The longest app name: children such as `<app>-migrate-<10 hex>` must stay within the
/// 63-character limit of label values (Jobs label their pods with their own name).
pub const MAX_APP_NAME_LEN: usize = 42;

/// Desired state of an application managed by the EmpactsApp operator.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "empacts.io",
    version = "v1alpha1",
    kind = "EmpactsApp",
    plural = "empactsapps",
    singular = "empactsapp",
    shortname = "eapp",
    category = "all",
    namespaced,
    status = "EmpactsAppStatus",
    derive = "PartialEq",
    doc = "An application whose Deployment, Service, autoscaler, config, secrets, migrations and rollbacks are managed by the EmpactsApp operator.",
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Revision", type_ = "string", json_path = ".status.currentRevision"),
    printcolumn(name = "Canary", type_ = "string", json_path = ".status.canary.progress"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 42").message("metadata.name must be at most 42 characters: child names such as <name>-migrate-<hash> must fit in 63"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter): it names the Service"),
)]
#[x_kube(
    cel,
    validation = Rule::new("!has(self.secrets) || !has(self.env) || self.secrets.all(s, !(s.env in self.env))").message("a variable is defined both in spec.env and spec.secrets; keep one").field_path(".secrets"),
    validation = Rule::new("!has(self.replicas) || !has(self.autoscaling) || self.replicas <= self.autoscaling.maxReplicas").message("spec.replicas must not exceed spec.autoscaling.maxReplicas").field_path(".replicas"),
    validation = Rule::new("!has(self.monitoring) || !has(self.monitoring.port) || self.monitoring.port == (has(self.port) ? self.port : 8080) || self.monitoring.port != (has(self.service) && has(self.service.port) ? self.service.port : 80)").message("spec.monitoring.port must differ from the Service port (spec.service.port, default 80): the Service exposes the metrics on a port of that number").field_path(".monitoring.port"),
)]
#[serde(rename_all = "camelCase")]
pub struct EmpactsAppSpec {
    /// Container image, e.g. `registry.example.com/empacts/api:1.8.0`. Its migration runs with this image before it rolls out.
    #[schemars(regex(pattern = IMAGE_PATTERN), length(min = 1, max = 512))]
    pub image: String,

    /// Desired pod count; ignored while `autoscaling` is set. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,

    /// Port the container listens on. Defaults to 8080.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Overrides the image entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(max = MAX_ARG_LEN)))]
    pub command: Option<Vec<String>>,

    /// Arguments to the entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(max = MAX_ARG_LEN)))]
    pub args: Option<Vec<String>>,

    /// Plain configuration, stored in a ConfigMap and loaded with envFrom. A change rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 256, "additionalProperties" = {"type": "string", "maxLength": MAX_ENV_VALUE_LEN}))]
    #[x_kube(
        validation = Rule::new("self.all(k, size(k) <= 128 && k.matches('^[A-Za-z_][A-Za-z0-9_]*$'))").message("spec.env keys must be C identifiers (letters, digits, '_', not starting with a digit) of at most 128 characters"),
        validation = Rule::new(format!("self.map(k, size(k) + size(self[k])).sum() <= {MAX_ENV_TOTAL_CHARS}")).message(format!("spec.env is too large: keys and values must total at most {MAX_ENV_TOTAL_CHARS} characters (the ConfigMap limit is 1 MiB); move large configuration into a file or Secret").as_str()),
    )]
    pub env: Option<BTreeMap<String, String>>,

    /// Secret environment variables: generated once by the operator, or referenced from a Secret you own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["env".into()]))]
    pub secrets: Option<Vec<SecretEnv>>,

    /// CPU and memory requests and limits of the application container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<Resources>>,

    /// HTTP health checks against the application port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Box<Probes>>,

    /// The Service in front of the pods. Defaults to ClusterIP on port 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Box<ServiceSpec>>,

    /// Horizontal autoscaling (autoscaling/v2). When set, `replicas` only seeds the first rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Box<Autoscaling>>,

    /// PodDisruptionBudget for voluntary disruptions (node drains).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption: Option<Box<Disruption>>,

    /// Database migration run as a Job with the new image before each new revision rolls out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Box<Migration>>,

    /// Rollout strategy and failure handling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Box<RolloutPolicy>>,

    /// Extra labels for the pods. The operator's own labels (`app.kubernetes.io/*` it sets, `empacts.io/*`) are refused: they select the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN}))]
    #[x_kube(
        validation = Rule::new(keys_are_qualified_names!()).message("spec.podLabels keys must be qualified names: [DNS-subdomain prefix/]name, the name at most 63 letters, digits, '-', '_' or '.', alphanumeric at both ends"),
        validation = Rule::new("self.all(k, !(k in ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/managed-by', 'app.kubernetes.io/component', 'app.kubernetes.io/part-of', 'app.kubernetes.io/version']) && !k.startsWith('empacts.io/'))").message("spec.podLabels must not set the operator's labels (app.kubernetes.io/name, instance, managed-by, component, part-of, version, or empacts.io/*): they decide which Service, PodDisruptionBudget and autoscaler select the pods"),
    )]
    pub pod_labels: Option<BTreeMap<String, String>>,

    /// Extra annotations for the pods. Keys under `empacts.io/` are the operator's and are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": MAX_ANNOTATION_VALUE_LEN}))]
    #[x_kube(
        validation = Rule::new(keys_are_qualified_names!()).message("spec.podAnnotations keys must be qualified names: [DNS-subdomain prefix/]name, the name at most 63 letters, digits, '-', '_' or '.', alphanumeric at both ends"),
        // empacts.io/test-* are the test control plane's kwok hooks (tests/cluster/kwok-stages.yaml); the operator sets none of them.
        validation = Rule::new("self.all(k, !k.startsWith('empacts.io/'))").message("spec.podAnnotations must not set empacts.io/* annotations: the operator sets them (e.g. empacts.io/config-hash)"),
        validation = Rule::new(format!("self.map(k, size(k) + size(bytes(self[k]))).sum() <= {MAX_ANNOTATIONS_BYTES}")).message(format!("spec.podAnnotations is too large: keys and values must total at most {MAX_ANNOTATIONS_BYTES} bytes (Kubernetes allows 256 KiB of annotations, the operator needs the rest)").as_str()),
    )]
    pub pod_annotations: Option<BTreeMap<String, String>>,

    /// Stop rolling out new revisions (children keep their current state; status still updates).
    /// A canary in progress holds at its current step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,

    /// Judge a rollout by the app's own metrics in Prometheus: a canary step, or a plain
    /// rolling update for `analysis.duration`, fails (and rolls back) when they go bad.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Box<Analysis>>,

    /// An Ingress routing a host (and path) to the Service, optionally with TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Box<IngressSpec>>,

    /// A NetworkPolicy that denies ingress to the app's pods except from the Ingress
    /// controller's namespace and the callers listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<Box<NetworkPolicySpec>>,

    /// Scraping and alerting through the Prometheus Operator (ServiceMonitor, PrometheusRule),
    /// created when its CRDs are installed in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<Box<Monitoring>>,
}

/// A duration such as `30s`, `2m` or `1h` (one unit; seconds, minutes or hours).
pub const DURATION_PATTERN: &str = r"^[0-9]{1,5}(s|m|h)$";

/// An http(s) URL without credentials, e.g. `http://prometheus.monitoring:9090`.
pub const HTTP_URL_PATTERN: &str = r"^https?://[^\s/@?#]+(/[^\s?#]*)?$";

/// Rollout strategies.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RolloutStrategy {
    /// The Deployment rolls its pods (maxSurge, maxUnavailable).
    #[default]
    RollingUpdate,
    /// The new revision runs as `<app>-canary` next to the stable pods, behind the same Service,
    /// through `rollout.steps`, then is promoted.
    Canary,
}

/// One step of a canary: run the canary at this share of the pods, then wait.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// Percent of the app's pods that run the new revision (at least one pod).
    #[schemars(range(min = 1, max = 100))]
    pub weight: i32,
    /// How long to hold this step (analysis runs meanwhile). Without it the step waits for
    /// `empacts promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub pause: Option<String>,
}

/// Metric analysis against a Prometheus server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    /// Where the app's metrics are.
    pub prometheus: PrometheusSource,
    /// Time between measurements. Defaults to 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
    /// Failed measurements (of any metric) that abort the rollout. Defaults to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_limit: Option<i32>,
    /// Inconclusive measurements (Prometheus unreachable, no data) that abort the rollout:
    /// never a pass. Defaults to 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub inconclusive_limit: Option<i32>,
    /// With the RollingUpdate strategy: keep measuring this long after the rollout completes;
    /// a failure then rolls back like a failed rollout. Without it only canaries are analysed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub duration: Option<String>,
    /// The checks. Defaults to an error ratio below 1% and a p95 latency below 500 ms of the
    /// new revision (series `http_requests_total` and `http_request_duration_seconds` with
    /// labels namespace, app and revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 10))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub metrics: Option<Vec<AnalysisMetric>>,
}

/// The Prometheus HTTP API to query.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSource {
    /// Base URL, e.g. `http://prometheus-operated.monitoring:9090`.
    #[schemars(regex(pattern = HTTP_URL_PATTERN), length(min = 1, max = 512))]
    pub address: String,
}

/// One check: a PromQL query whose single value must lie within the range.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.thresholdRange.min) || has(self.thresholdRange.max)").message("analysis.metrics[].thresholdRange needs min or max (or both)"),
)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisMetric {
    /// Name shown in status and Events, e.g. `error-rate`.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(min = 1, max = 63))]
    pub name: String,
    /// PromQL returning one number. `{{namespace}}`, `{{app}}` and `{{revision}}` are
    /// replaced by the app's namespace, name and the revision under analysis.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    /// The measurement passes when min <= value <= max.
    pub threshold_range: ThresholdRange,
}

/// Inclusive bounds of a passing measurement.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// An Ingress for the app's Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Host name, e.g. `api.example.com` (a DNS-1123 subdomain, `*.` allowed as first label).
    #[schemars(
        regex(pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        length(min = 1, max = 253)
    )]
    pub host: String,
    /// Path prefix routed to the app. Defaults to `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[A-Za-z0-9/._~%!$&'()*+,;=:@-]*$"), length(min = 1, max = 1024))]
    pub path: Option<String>,
    /// IngressClass, e.g. `nginx`. Defaults to the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub class_name: Option<String>,
    /// Serve HTTPS with a certificate from this Secret, or issued by cert-manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<IngressTls>,
    /// Extra annotations for the Ingress controller, e.g. rate limits
    /// (`nginx.ingress.kubernetes.io/limit-rps: "20"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": MAX_ANNOTATION_VALUE_LEN}))]
    #[x_kube(
        validation = Rule::new(keys_are_qualified_names!()).message("spec.ingress.annotations keys must be qualified names: [DNS-subdomain prefix/]name"),
        validation = Rule::new("self.all(k, !k.startsWith('empacts.io/') && !k.startsWith('cert-manager.io/'))").message("spec.ingress.annotations must not set empacts.io/* or cert-manager.io/* annotations: use spec.ingress.tls.issuer for cert-manager"),
    )]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// TLS of the Ingress: a Secret you provide, or one cert-manager fills from an issuer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("has(self.secretName) || has(self.issuer)").message("spec.ingress.tls needs secretName, issuer, or both"),
)]
#[serde(rename_all = "camelCase")]
pub struct IngressTls {
    /// Secret holding the certificate (`tls.crt`, `tls.key`). With `issuer` it defaults to
    /// `<app>-tls`, which cert-manager creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// cert-manager issuer that issues the certificate (sets its ingress-shim annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub issuer: Option<String>,
    /// `ClusterIssuer` (default) or `Issuer` (namespaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_kind: Option<IssuerKind>,
}

/// cert-manager issuer kinds.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IssuerKind {
    #[default]
    ClusterIssuer,
    Issuer,
}

/// Ingress isolation of the app's pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create the NetworkPolicy. Defaults to true when `networkPolicy` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Namespace of the Ingress controller, allowed to reach the app port. Defaults to
    /// `ingress-nginx`; the empty string allows no controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"), length(max = 63))]
    pub ingress_controller_namespace: Option<String>,
    /// Callers allowed in: pods matching podSelector in namespaces matching
    /// namespaceSelector (either alone means: all pods of the app's namespace / all of those namespaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub allow_from: Option<Vec<NetworkPeer>>,
    /// Ports callers may reach. Defaults to the app port (and the metrics port with monitoring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), inner(range(min = 1, max = 65535)))]
    pub allow_ports: Option<Vec<i32>>,
}

/// A set of callers, by labels (exact matches).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("has(self.namespaceSelector) || has(self.podSelector)").message("spec.networkPolicy.allowFrom[] needs namespaceSelector, podSelector, or both"),
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPeer {
    /// Labels of the callers' namespaces, e.g. `{kubernetes.io/metadata.name: web}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 16, "additionalProperties" = {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN}))]
    #[x_kube(validation = Rule::new(keys_are_qualified_names!()).message("selector keys must be qualified names"))]
    pub namespace_selector: Option<BTreeMap<String, String>>,
    /// Labels of the caller pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 16, "additionalProperties" = {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN}))]
    #[x_kube(validation = Rule::new(keys_are_qualified_names!()).message("selector keys must be qualified names"))]
    pub pod_selector: Option<BTreeMap<String, String>>,
}

/// Prometheus Operator objects for the app.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Monitoring {
    /// Port serving metrics. Defaults to the app port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Metrics path. Defaults to `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = PROBE_PATH_PATTERN), length(min = 1, max = 1024))]
    pub path: Option<String>,
    /// Scrape interval. Defaults to 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub interval: Option<String>,
    /// Labels the Prometheus instance selects ServiceMonitors and PrometheusRules by, e.g. `{release: prometheus}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 16, "additionalProperties" = {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN}))]
    #[x_kube(
        validation = Rule::new(keys_are_qualified_names!()).message("spec.monitoring.labels keys must be qualified names"),
        validation = Rule::new("self.all(k, !k.startsWith('app.kubernetes.io/') && !k.startsWith('empacts.io/'))").message("spec.monitoring.labels must not set app.kubernetes.io/* or empacts.io/* labels: the operator sets them"),
    )]
    pub labels: Option<BTreeMap<String, String>>,
    /// Alerts in a PrometheusRule. Defaults to enabled with the thresholds below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Alerts>,
}

/// The app's alerts: HighErrorRate, HighResponseTime and PodCrashLooping.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Alerts {
    /// Create the PrometheusRule. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// HighErrorRate fires above this ratio of 5xx responses for `for`. Defaults to 0.01.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub error_rate: Option<f64>,
    /// HighResponseTime fires above this p95 latency in seconds for `for`. Defaults to 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.001, max = 3600.0))]
    pub latency_p95_seconds: Option<f64>,
    /// How long a condition must hold before its alert fires. Defaults to 5m.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub for_: Option<String>,
}

/// One secret environment variable: exactly one of `generate` or `secretKeyRef`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.generate) != has(self.secretKeyRef)").message("set exactly one of generate or secretKeyRef"),
)]
#[serde(rename_all = "camelCase")]
pub struct SecretEnv {
    /// Name of the environment variable.
    #[schemars(regex(pattern = ENV_NAME_PATTERN), length(min = 1, max = 128))]
    pub env: String,

    /// Let the operator create a random value once. It is never regenerated or overwritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<GenerateSecret>,

    /// Read the value from a Secret you own. A change of its content rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// A value the operator generates with a CSPRNG.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GenerateSecret {
    /// Length of the value in characters (alphanumeric, ~5.95 bits each). Defaults to 64; at least 43 for 256 bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 43, max = 4096))]
    pub length: Option<u32>,

    /// Keep the Secret when the EmpactsApp is deleted, so re-creating the app reuses the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<bool>,
}

/// A key of a Secret in the app's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name (a DNS-1123 subdomain).
    #[schemars(regex(pattern = DNS_SUBDOMAIN_PATTERN), length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(regex(pattern = SECRET_KEY_PATTERN), length(min = 1, max = 253))]
    pub key: String,
}

/// Compute resources of the application container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Minimum resources, e.g. `{cpu: 200m, memory: 256Mi}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 16, "additionalProperties" = {"x-kubernetes-int-or-string": true, "pattern": QUANTITY_PATTERN, "maxLength": 64, "minimum": 0}))]
    #[x_kube(validation = Rule::new(keys_are_qualified_names!()).message("spec.resources keys must be resource names such as cpu, memory, ephemeral-storage or nvidia.com/gpu"))]
    pub requests: Option<BTreeMap<String, Quantity>>,
    /// Maximum resources, e.g. `{cpu: 500m, memory: 512Mi}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 16, "additionalProperties" = {"x-kubernetes-int-or-string": true, "pattern": QUANTITY_PATTERN, "maxLength": 64, "minimum": 0}))]
    #[x_kube(validation = Rule::new(keys_are_qualified_names!()).message("spec.resources keys must be resource names such as cpu, memory, ephemeral-storage or nvidia.com/gpu"))]
    pub limits: Option<BTreeMap<String, Quantity>>,
}

/// Liveness, readiness and startup checks.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Probes {
    /// Restart the container when this fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<HttpProbe>,
    /// Take the pod out of the Service while this fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<HttpProbe>,
    /// Hold the other probes until this succeeds once (slow starters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<HttpProbe>,
}

/// An HTTP GET probe.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpProbe {
    /// Request path, e.g. `/health`.
    #[schemars(regex(pattern = PROBE_PATH_PATTERN), length(min = 1, max = 1024))]
    pub path: String,
    /// Port to probe; defaults to the app port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: Option<i32>,
}

/// How the Service exposes the app.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type. Defaults to ClusterIP.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ServiceType>,
    /// Service port; traffic goes to the app port. Defaults to 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// Kubernetes Service types the operator supports.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// HorizontalPodAutoscaler settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not exceed autoscaling.maxReplicas").field_path(".minReplicas"),
    validation = Rule::new("has(self.targetCPU) || has(self.targetMemory)").message("autoscaling needs targetCPU or targetMemory (or both)"),
)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Lower bound. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: Option<i32>,
    /// Upper bound.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Target average CPU utilization, percent of requests.
    #[serde(default, rename = "targetCPU", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu: Option<i32>,
    /// Target average memory utilization, percent of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_memory: Option<i32>,
}

/// PodDisruptionBudget: exactly one of minAvailable or maxUnavailable.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.minAvailable) != has(self.maxUnavailable)").message("set exactly one of disruption.minAvailable or disruption.maxUnavailable"),
)]
#[serde(rename_all = "camelCase")]
pub struct Disruption {
    /// Pods (or percent) that must stay up during a voluntary disruption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = PERCENT_PATTERN, "minimum" = 0, "maximum" = MAX_POD_COUNT))]
    pub min_available: Option<IntOrString>,
    /// Pods (or percent) that may be down during a voluntary disruption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = PERCENT_PATTERN, "minimum" = 0, "maximum" = MAX_POD_COUNT))]
    pub max_unavailable: Option<IntOrString>,
}

/// A database migration run before a new revision rolls out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Migration {
    /// Command run with the new image, e.g. `[npm, run, migrate]`.
    #[schemars(length(min = 1, max = 64), inner(length(max = MAX_ARG_LEN)))]
    pub command: Vec<String>,
    /// Command run with the newer (failed) image before an automatic rollback, e.g. `[npm, run, migrate:down]`.
    /// Without it, a failed rollout whose migration already ran is not rolled back automatically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), inner(length(max = MAX_ARG_LEN)))]
    pub rollback_command: Option<Vec<String>>,
    /// Deadline of one migration run. Defaults to 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub timeout_seconds: Option<i64>,
    /// Retries of the migration pod before the migration counts as failed. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: Option<i32>,
}

/// Rollout strategy and failure handling.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("!(has(self.maxSurge) && string(self.maxSurge) in ['0', '0%'] && (!has(self.maxUnavailable) || string(self.maxUnavailable) in ['0', '0%']))").message("rollout.maxSurge and rollout.maxUnavailable cannot both be 0 (maxUnavailable defaults to 0)"),
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicy {
    /// Extra pods during a rollout. Defaults to 25%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = PERCENT_PATTERN, "minimum" = 0, "maximum" = MAX_POD_COUNT))]
    pub max_surge: Option<IntOrString>,
    /// Pods that may be unavailable during a rollout. Defaults to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = PERCENT_PATTERN, "minimum" = 0, "maximum" = MAX_POD_COUNT))]
    pub max_unavailable: Option<IntOrString>,
    /// A rollout without progress for this long has failed. Defaults to 300.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub progress_deadline_seconds: Option<i32>,
    /// Restore the last good revision when a rollout fails. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<bool>,
    /// Revisions kept in status.history. Defaults to 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub revision_history_limit: Option<i32>,
    /// `RollingUpdate` (default) or `Canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<RolloutStrategy>,
    /// Canary steps, by increasing weight. Defaults to `[{weight: 10, pause: 2m}, {weight: 50, pause: 5m}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20))]
    pub steps: Option<Vec<CanaryStep>>,
}
