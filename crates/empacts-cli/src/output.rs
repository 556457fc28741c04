//! Output of `get`, `status` and `history`: kubectl-like tables, or JSON/YAML for scripts.

use std::fmt::Write as _;

use empacts_api::{EmpactsApp, Phase};
use kube::ResourceExt;
use serde::Serialize;

/// `-o`: how to print.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Serialize for `-o json|yaml` (a trailing newline either way).
pub fn serialized<T: Serialize>(value: &T, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(value)?),
        Format::Yaml | Format::Table => serde_yaml::to_string(value)?,
    })
}

/// The apps as kubectl prints a list (`kind: List`, the full objects), for `-o json|yaml`.
pub fn app_list(apps: &[EmpactsApp]) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": apps})
}

/// One row of `get`.
pub fn row(app: &EmpactsApp, now: k8s_openapi::jiff::Timestamp) -> Vec<String> {
    let s = app.status.clone().unwrap_or_default();
    let desired = app_desired_replicas(app);
    vec![
        app.namespace().unwrap_or_default(),
        app.name_any(),
        s.phase.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        s.current_revision.clone().unwrap_or_else(|| "-".into()),
        format!("{}/{}", s.ready_replicas.unwrap_or(0), desired),
        step(app),
        app.metadata.creation_timestamp.as_ref().map(|t| age(now.duration_since(t.0))).unwrap_or_else(|| "-".into()),
    ]
}

/// Pods the app wants: what the operator counted, else the spec's count.
fn app_desired_replicas(app: &EmpactsApp) -> i32 {
    app.status.as_ref().and_then(|s| s.replicas).unwrap_or_else(|| app.spec.replicas())
}

/// The canary step (`1/2 10%`) or the migration phase, else `-`.
pub fn step(app: &EmpactsApp) -> String {
    let Some(s) = &app.status else { return "-".into() };
    if let Some(c) = &s.canary {
        return c.progress.clone();
    }
    // A finished migration is history; a running or failed one is news.
    match &s.migration {
        Some(m) if m.phase != empacts_api::MigrationPhase::Succeeded => format!("migration {:?}", m.phase),
        _ => "-".into(),
    }
}

/// The `get` table; NAMESPACE only with `-A`.
pub fn table(apps: &[EmpactsApp], all_namespaces: bool) -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut rows =
        vec![["NAMESPACE", "NAME", "PHASE", "REVISION", "READY", "STEP/MIGRATION", "AGE"].map(String::from).to_vec()];
    rows.extend(apps.iter().map(|a| row(a, now)));
    if !all_namespaces {
        rows.iter_mut().for_each(|r| drop(r.remove(0)));
    }
    columns(&rows)
}

/// Left-aligned columns three spaces apart, like kubectl.
pub fn columns(rows: &[Vec<String>]) -> String {
    let width = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> =
        (0..width).map(|i| rows.iter().map(|r| r.get(i).map_or(0, |c| c.chars().count())).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}   ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// kubectl's short age: `45s`, `12m`, `3h20m`, `5d`.
pub fn age(d: k8s_openapi::jiff::SignedDuration) -> String {
    let s = d.as_secs().max(0);
    match s {
        0..120 => format!("{s}s"),
        120..3600 => format!("{}m", s / 60),
        3600..86400 if s % 3600 >= 60 && s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Exit judgement of `status`: Ok when the operator observed the current generation and the
/// app is Ready; otherwise what it is (exit code 1).
pub fn health(app: &EmpactsApp) -> Result<(), String> {
    let s = app.status.as_ref();
    let observed = s.and_then(|s| s.observed_generation);
    let generation = app.metadata.generation;
    if observed.is_none() || observed != generation {
        return Err(format!(
            "the operator has not yet observed generation {} (status is of {})",
            generation.unwrap_or(0),
            observed.map(|g| g.to_string()).unwrap_or_else(|| "none".into())
        ));
    }
    match s.and_then(|s| s.phase) {
        Some(Phase::Ready) => Ok(()),
        Some(phase) => {
            let why = s
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Stalled" && c.status == "True"))
                .map(|c| format!(": {} ({})", c.reason, c.message))
                .unwrap_or_default();
            Err(format!("phase {phase}{why}"))
        }
        None => Err("no phase yet".into()),
    }
}

/// One revision of `history -o json|yaml`.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The ControllerRevision's number, when it is still recorded.
    pub number: Option<i64>,
    pub revision: String,
    pub result: String,
    pub migrated: bool,
    pub at: String,
    pub image: String,
    /// This revision runs now.
    pub current: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    #[test]
    fn ages_read_like_kubectl() {
        let secs = |s| age(SignedDuration::from_secs(s));
        assert_eq!(
            [secs(5), secs(119), secs(600), secs(3 * 3600 + 1200), secs(10 * 3600), secs(3 * 86400)],
            ["5s", "119s", "10m", "3h20m", "10h", "3d"]
        );
    }

    #[test]
    fn health_judges_only_the_observed_generation() {
        let mut app: EmpactsApp = serde_yaml::from_str(
            "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {name: api, generation: 2}\nspec: {image: 'api:1'}\nstatus: {observedGeneration: 1, phase: Ready}\n",
        )
        .unwrap();
        assert!(health(&app).unwrap_err().contains("not yet observed generation 2"));
        app.status.as_mut().unwrap().observed_generation = Some(2);
        assert_eq!(health(&app), Ok(()));
        app.status.as_mut().unwrap().phase = Some(Phase::Stalled);
        assert_eq!(health(&app), Err("phase Stalled".into()));
    }

    #[test]
    fn table_has_namespace_only_for_all_namespaces() {
        let app: EmpactsApp = serde_yaml::from_str(
            "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {name: api, namespace: shop}\nspec: {image: 'api:1', replicas: 3}\nstatus: {phase: Progressing, readyReplicas: 1, currentRevision: abc, canary: {revision: abc, step: 1, steps: 2, weight: 10, canaryReplicas: 1, progress: 1/2 10%}}\n",
        )
        .unwrap();
        let one = table(std::slice::from_ref(&app), false);
        let lines: Vec<Vec<&str>> =
            one.lines().map(|l| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect()).collect();
        assert_eq!(lines[0], ["NAME", "PHASE", "REVISION", "READY", "STEP/MIGRATION", "AGE"]);
        assert_eq!(&lines[1][..5], ["api", "Progressing", "abc", "1/3", "1/2 10%"]);
        assert!(table(&[app], true).starts_with("NAMESPACE"));
    }
}
