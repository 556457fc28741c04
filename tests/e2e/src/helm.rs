//! Helpers for the Helm chart tests (charts/empacts-operator): running helm and kubectl of the
//! testbed, rendering the chart and picking objects out of the rendered YAML.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_yaml::Value;

use crate::{ClusterEnv, repo_root};

pub fn chart() -> PathBuf {
    repo_root().join("charts/empacts-operator")
}

/// stdout and stderr of a finished command, for messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

pub fn helm(env: &ClusterEnv, args: &[&str]) -> Output {
    env.tool("helm").args(args).current_dir(repo_root()).output().expect("helm runs")
}

pub fn kubectl(env: &ClusterEnv, args: &[&str]) -> Output {
    env.tool("kubectl").args(args).output().expect("kubectl runs")
}

/// `helm template rel <chart>` in `namespace` with `--set` values; panics when it fails.
pub fn render(env: &ClusterEnv, namespace: &str, sets: &[&str]) -> Vec<Value> {
    render_chart(env, &chart(), namespace, sets, &[])
}

/// `helm template rel <chart>` with `--set` values and further arguments (e.g. `-f values.yaml`).
pub fn render_chart(env: &ClusterEnv, chart: &Path, namespace: &str, sets: &[&str], extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "rel", chart.to_str().unwrap(), "--namespace", namespace];
    for set in sets {
        args.extend(["--set", set]);
    }
    args.extend(extra);
    let out = helm(env, &args);
    assert!(out.status.success(), "helm template {sets:?} {extra:?} failed: {}", text(&out));
    docs(&String::from_utf8(out.stdout).unwrap())
}

/// The YAML documents of a stream, empty ones left out.
pub fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

pub fn kind_of(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind_of(d) == kind).collect()
}

/// The one object of `kind`; panics when there is not exactly one.
pub fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0]
}

/// A sequence of strings as a Vec (empty when absent).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().into_iter().flatten().map(|s| s.as_str().expect("a string").to_string()).collect()
}
