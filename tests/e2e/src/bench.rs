//! Helpers of the convergence benchmark (benches/converge.rs): snapshots of the operator's
//! counters; the "floor" — the same children applied directly with server-side apply, the
//! least any controller could take on this control plane; and the same fleet as one Helm
//! release per app, its migration a hook Job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::api::ListParams;

use crate::{ClusterEnv, OperatorProcess, TestNamespace, app_yaml, apply_app, metric_lines, observed_current, phase};
use empacts_api::{EmpactsApp, Phase};

/// The operator's counters at one instant.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// `empacts_kube_requests_total` summed over codes, by verb.
    pub requests: BTreeMap<String, f64>,
    /// `empacts_kube_requests_total` summed over verbs, by HTTP status code.
    pub codes: BTreeMap<String, f64>,
    pub reconciles: f64,
    /// `empacts_child_applies_total{result="applied"}` by kind.
    pub applies: BTreeMap<String, f64>,
    pub cpu_seconds: f64,
}

fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

fn value(line: &str) -> f64 {
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

impl Counters {
    pub async fn read(op: &OperatorProcess) -> Self {
        let (_, body) = op.get("/metrics").await.unwrap_or_default();
        let mut c = Counters::default();
        for l in metric_lines(&body, "empacts_kube_requests_total") {
            *c.requests.entry(label(l, "verb").unwrap_or("?").to_string()).or_default() += value(l);
            *c.codes.entry(label(l, "code").unwrap_or("?").to_string()).or_default() += value(l);
        }
        for l in metric_lines(&body, "empacts_child_applies_total") {
            if label(l, "result") == Some("applied") {
                *c.applies.entry(label(l, "kind").unwrap_or("?").to_string()).or_default() += value(l);
            }
        }
        c.reconciles = metric_lines(&body, "empacts_reconcile_total").iter().map(|l| value(l)).sum();
        c.cpu_seconds = metric_lines(&body, "process_cpu_seconds_total").iter().map(|l| value(l)).sum();
        c
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let diff = |now: &BTreeMap<String, f64>, then: &BTreeMap<String, f64>| {
            now.iter()
                .map(|(k, v)| (k.clone(), v - then.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v != 0.0)
                .collect()
        };
        Counters {
            requests: diff(&self.requests, &earlier.requests),
            codes: diff(&self.codes, &earlier.codes),
            reconciles: self.reconciles - earlier.reconciles,
            applies: diff(&self.applies, &earlier.applies),
            cpu_seconds: self.cpu_seconds - earlier.cpu_seconds,
        }
    }

    /// Reads (get, list), writes (create, update, patch, delete); watches are neither.
    pub fn reads_writes(&self) -> (f64, f64) {
        let sum = |verbs: &[&str]| verbs.iter().filter_map(|v| self.requests.get(*v)).sum();
        (sum(&["get", "list"]), sum(&["create", "update", "patch", "delete", "deletecollection"]))
    }

    /// Responses with HTTP status `code` (e.g. "429", Too Many Requests from priority and fairness).
    pub fn responses(&self, code: &str) -> f64 {
        self.codes.get(code).copied().unwrap_or(0.0)
    }

    pub fn applies_total(&self) -> f64 {
        self.applies.values().sum()
    }

    pub fn applies_of(&self, kind_part: &str) -> f64 {
        self.applies.iter().filter(|(k, _)| k.to_lowercase().contains(kind_part)).map(|(_, v)| v).sum()
    }

    /// `verb=count` pairs, per minute over `window`.
    pub fn per_minute(&self, window: Duration) -> String {
        let scale = 60.0 / window.as_secs_f64();
        let parts: Vec<String> = self.requests.iter().map(|(k, v)| format!("{k} {:.0}", v * scale)).collect();
        if parts.is_empty() { "none".into() } else { parts.join(", ") }
    }
}

/// Median and maximum of `values` (seconds); None when empty.
pub fn median_max(values: &mut [f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    Some((values[values.len() / 2], values[values.len() - 1]))
}

/// Deployments of `api` whose pods all run `image`, updated and available.
pub async fn deployments_available(api: &Api<Deployment>, image: &str) -> usize {
    let list = api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    list.iter()
        .filter(|d| {
            let spec = d.spec.as_ref();
            let runs_image = spec
                .and_then(|s| s.template.spec.as_ref())
                .is_some_and(|p| p.containers.iter().any(|c| c.image.as_deref() == Some(image)));
            let want = spec.and_then(|s| s.replicas).unwrap_or(1);
            let st = d.status.clone().unwrap_or_default();
            runs_image
                && st.observed_generation >= d.metadata.generation
                && st.updated_replicas == Some(want)
                && st.available_replicas == Some(want)
                && st.replicas == Some(want)
        })
        .count()
}

async fn jobs_complete(api: &Api<Job>) -> usize {
    let list = api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    list.iter().filter(|j| j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) >= 1).count()
}

/// Poll `count` until it reaches `n`; the time it took.
pub async fn wait_count<F, Fut>(what: &str, n: usize, mut count: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let start = Instant::now();
    while count().await < n {
        assert!(start.elapsed() < Duration::from_secs(900), "{what}: not reached in 15 minutes");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    start.elapsed()
}

/// The children `empacts render` prints for `apps` (EmpactsApp YAML documents) in `namespace`,
/// one value per object; owner references are dropped (there is no app to own them here, and
/// the garbage collector would delete children of a missing owner).
pub fn render_docs(apps: &str, namespace: &str) -> Vec<serde_yaml::Value> {
    let rendered = empacts_operator::render::render_yaml(apps, namespace).expect("bench apps render");
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&rendered) {
        let mut value: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("rendered YAML parses");
        if value.is_null() {
            continue;
        }
        if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_mapping_mut()) {
            meta.remove("ownerReferences");
        }
        docs.push(value);
    }
    docs
}

fn kind(doc: &serde_yaml::Value) -> &str {
    doc.get("kind").and_then(|k| k.as_str()).unwrap_or_default()
}

fn yaml_stream<'a>(docs: impl IntoIterator<Item = &'a serde_yaml::Value>) -> String {
    docs.into_iter().map(|d| format!("---\n{}", serde_yaml::to_string(d).expect("YAML serializes"))).collect()
}

/// [`render_docs`] as two YAML streams: the migration Jobs, and everything else.
pub fn render_children(apps: &str, namespace: &str) -> (String, String) {
    let docs = render_docs(apps, namespace);
    let (jobs, rest): (Vec<_>, Vec<_>) = docs.iter().partition(|d| kind(d) == "Job");
    (yaml_stream(jobs), yaml_stream(rest))
}

/// `kubectl apply --server-side` of one file of many objects.
pub fn apply_server_side(env: &ClusterEnv, yaml: &str, file: &std::path::Path) {
    std::fs::write(file, yaml).expect("write manifests");
    let out = env
        .tool("kubectl")
        .args(["apply", "--server-side", "--force-conflicts", "--field-manager", "bench-floor", "-f"])
        .arg(file)
        .output()
        .expect("kubectl runs");
    assert!(out.status.success(), "kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Floor timings: install (all children at once → all Deployments available) and upgrade
/// (all migration Jobs at once → complete, then the rest → all Deployments available).
pub struct Floor {
    pub install: Duration,
    pub upgrade_jobs: Duration,
    pub upgrade: Duration,
}

pub async fn floor(env: &ClusterEnv, ns: &TestNamespace, apps: impl Fn(&str) -> String, v1: &str, v2: &str) -> Floor {
    let n_file = std::env::temp_dir().join(format!("{}-floor.yaml", ns.name));
    let deployments: Api<Deployment> = ns.api();
    let jobs: Api<Job> = ns.api();
    let (jobs1, rest1) = render_children(&apps(v1), &ns.name);
    let n = rest1.matches("\nkind: Deployment\n").count();
    let start = Instant::now();
    apply_server_side(env, &format!("{jobs1}{rest1}"), &n_file);
    wait_count("floor install", n, || deployments_available(&deployments, v1)).await;
    let install = start.elapsed();

    let (jobs2, rest2) = render_children(&apps(v2), &ns.name);
    let done_before = jobs_complete(&jobs).await;
    let new_jobs = jobs2.matches("\nkind: Job\n").count();
    let start = Instant::now();
    apply_server_side(env, &jobs2, &n_file);
    wait_count("floor migrations", done_before + new_jobs, || jobs_complete(&jobs)).await;
    let upgrade_jobs = start.elapsed();
    apply_server_side(env, &rest2, &n_file);
    wait_count("floor upgrade", n, || deployments_available(&deployments, v2)).await;
    let upgrade = start.elapsed();
    let _ = std::fs::remove_file(&n_file);
    Floor { install, upgrade_jobs, upgrade }
}

/// The API server's `apiserver_flowcontrol_rejected_requests_total` (requests priority and
/// fairness rejected with 429, all clients), summed over its labels; None when `/metrics` is
/// not readable. A counter that never moved is not exported at all: that reads as 0.
pub fn apiserver_rejected(env: &ClusterEnv) -> Option<f64> {
    let out = env.tool("kubectl").args(["get", "--raw", "/metrics"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let body = String::from_utf8_lossy(&out.stdout);
    Some(metric_lines(&body, "apiserver_flowcontrol_rejected_requests_total").iter().map(|l| value(l)).sum())
}

/// A Helm chart for one release, at `dir`: the children `empacts render` prints for `app` (one
/// EmpactsApp document), the migration Job as a `pre-install,pre-upgrade` hook. The Secret,
/// ConfigMap and ServiceAccount the migration's pod uses are hooks too, of a lower weight, so
/// they exist before it (as a chart that runs its migration in a hook has to do).
/// Rewriting it with another image and running `helm upgrade` is an upgrade.
pub fn write_helm_chart(dir: &Path, app: &str, namespace: &str) {
    let templates = dir.join("templates");
    std::fs::create_dir_all(&templates).expect("chart dir");
    let chart = "apiVersion: v2\nname: bench-app\nversion: 0.1.0\ndescription: one app of the converge benchmark\n";
    std::fs::write(dir.join("Chart.yaml"), chart).expect("write Chart.yaml");
    let mut docs = render_docs(app, namespace);
    for doc in &mut docs {
        let weight = match kind(doc) {
            "Job" => "0",
            "Secret" | "ConfigMap" | "ServiceAccount" => "-1",
            _ => continue,
        };
        let meta = doc.get_mut("metadata").and_then(|m| m.as_mapping_mut()).expect("children have metadata");
        let annotations = meta
            .entry("annotations".into())
            .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()))
            .as_mapping_mut()
            .expect("annotations are a mapping");
        annotations.insert("helm.sh/hook".into(), "pre-install,pre-upgrade".into());
        annotations.insert("helm.sh/hook-weight".into(), weight.into());
        annotations.insert("helm.sh/hook-delete-policy".into(), "before-hook-creation".into());
    }
    let (hooks, rest): (Vec<_>, Vec<_>) = docs.iter().partition(|d| {
        d.get("metadata").and_then(|m| m.get("annotations")).and_then(|a| a.get("helm.sh/hook")).is_some()
    });
    std::fs::write(templates.join("hooks.yaml"), yaml_stream(hooks)).expect("write hooks");
    std::fs::write(templates.join("app.yaml"), yaml_stream(rest)).expect("write app");
}

/// Run `helm upgrade --install --wait` of releases `<prefix>0..n` (charts `dirs[i]`) in
/// `namespace`, `parallel` at a time; each release's time, by index.
pub fn helm_fleet(env: &ClusterEnv, namespace: &str, dirs: &[PathBuf], parallel: usize) -> Vec<Duration> {
    let next = AtomicUsize::new(0);
    let times = Mutex::new(vec![Duration::ZERO; dirs.len()]);
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(dir) = dirs.get(i) else { break };
                    let start = Instant::now();
                    let release = format!("app-{i}");
                    let out = env
                        .tool("helm")
                        .args(["upgrade", "--install", &release])
                        .arg(dir)
                        .args(["--namespace", namespace, "--wait", "--timeout", "15m"])
                        .output()
                        .expect("helm runs");
                    assert!(
                        out.status.success(),
                        "helm upgrade --install {release} failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    times.lock().unwrap()[i] = start.elapsed();
                }
            });
        }
    });
    times.into_inner().unwrap()
}

/// The Helm comparison: install and upgrade wall times of the whole fleet, and per release.
pub struct HelmRun {
    pub install: Duration,
    pub install_each: Vec<Duration>,
    pub upgrade: Duration,
    pub upgrade_each: Vec<Duration>,
    /// `apiserver_flowcontrol_rejected_requests_total` during install / upgrade.
    pub rejected: (Option<f64>, Option<f64>),
}

/// `app(i, image)` as one Helm release per app in `ns`, [`HELM_PARALLEL`] at a time: install
/// with `v1`, then upgrade all to `v2`; then checks every Deployment runs `v2`, available.
pub async fn helm_run(
    env: &ClusterEnv,
    ns: &TestNamespace,
    n: usize,
    app: impl Fn(usize, &str) -> String,
    v1: &str,
    v2: &str,
) -> HelmRun {
    let root = std::env::temp_dir().join(format!("{}-charts", ns.name));
    let dirs: Vec<PathBuf> = (0..n).map(|i| root.join(format!("app-{i}"))).collect();
    let deployments: Api<Deployment> = ns.api();
    let phase = |image: &str| {
        for (i, dir) in dirs.iter().enumerate() {
            write_helm_chart(dir, &app(i, image), &ns.name);
        }
        let (env, name, dirs) = (env.clone(), ns.name.clone(), dirs.clone());
        let rejected_before = apiserver_rejected(&env);
        async move {
            let start = Instant::now();
            let each = tokio::task::spawn_blocking(move || helm_fleet(&env, &name, &dirs, HELM_PARALLEL))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            (start.elapsed(), each, rejected_before)
        }
    };
    let (install, install_each, r0) = phase(v1).await;
    let r1 = apiserver_rejected(env);
    wait_count("helm install: Deployments available", n, || deployments_available(&deployments, v1)).await;
    let (upgrade, upgrade_each, r2) = phase(v2).await;
    let r3 = apiserver_rejected(env);
    wait_count("helm upgrade: Deployments available", n, || deployments_available(&deployments, v2)).await;
    let _ = std::fs::remove_dir_all(&root);
    let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    HelmRun { install, install_each, upgrade, upgrade_each, rejected: (delta(r0, r1), delta(r2, r3)) }
}

/// Helm releases installed or upgraded at once.
pub const HELM_PARALLEL: usize = 8;

/// The spec of a benchmark app: like the README example (generated secret, migration, HPA,
/// PDB, 2 replicas), `rollout` appended to it.
pub fn spec(image: &str, rollout: &str) -> String {
    format!(
        "{{image: '{image}', replicas: 2, env: {{MODE: bench}}, secrets: [{{env: JWT_SECRET, generate: {{}}}}], \
         migration: {{command: [migrate]}}, autoscaling: {{minReplicas: 2, maxReplicas: 4, targetCPU: 70}}, \
         disruption: {{minAvailable: 1}}{rollout}}}"
    )
}

/// Benchmark app `app-{i}` as a YAML document.
pub fn app_doc(i: usize, image: &str, rollout: &str) -> String {
    format!(
        "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: app-{i}}}\nspec: {}\n",
        spec(image, rollout)
    )
}

/// Apply apps `app-{i}` for i in `range`.
pub async fn apply_all(ns: &TestNamespace, range: std::ops::Range<usize>, image: &str, rollout: &str) {
    for i in range {
        apply_app(ns, &app_yaml(&app_doc(i, image, rollout))).await;
    }
}

/// A `/proc/<pid>/status` figure in KiB (`VmRSS:`, `VmHWM:` the peak).
pub fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Apps of `api` at `image`, observed and Ready (at most `n`).
pub async fn all_ready(api: &Api<EmpactsApp>, n: usize, image: &str) -> usize {
    let apps = api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    let ready =
        apps.iter().filter(|a| a.spec.image == image && observed_current(a) && phase(a) == Some(Phase::Ready)).count();
    ready.min(n)
}
