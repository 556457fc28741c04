//! Helpers of the convergence benchmark (benches/converge.rs): snapshots of the operator's
//! counters, and the "floor" — the same children applied directly with server-side apply, the
//! least any controller could take on this control plane.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::api::ListParams;

use crate::{ClusterEnv, OperatorProcess, TestNamespace, metric_lines};

/// The operator's counters at one instant.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// `empacts_kube_requests_total` summed over codes, by verb.
    pub requests: BTreeMap<String, f64>,
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
/// split into migration Jobs and everything else; owner references are dropped (there is no
/// app to own them here, and the garbage collector would delete children of a missing owner).
pub fn render_children(apps: &str, namespace: &str) -> (String, String) {
    let rendered = empacts_operator::render::render_yaml(apps, namespace).expect("bench apps render");
    let (mut jobs, mut rest) = (String::new(), String::new());
    for doc in serde_yaml::Deserializer::from_str(&rendered) {
        let mut value: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("rendered YAML parses");
        if value.is_null() {
            continue;
        }
        if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_mapping_mut()) {
            meta.remove("ownerReferences");
        }
        let text = format!("---\n{}", serde_yaml::to_string(&value).expect("YAML serializes"));
        if value.get("kind").and_then(|k| k.as_str()) == Some("Job") {
            jobs.push_str(&text)
        } else {
            rest.push_str(&text)
        }
    }
    (jobs, rest)
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
