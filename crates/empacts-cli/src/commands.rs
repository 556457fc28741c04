//! Client commands against a cluster: status, history, rollback, retry, promote, abort,
//! rotate-secret.
//! They only read the app or change its spec/annotations; the operator does the rest, so
//! the spec stays the one truth (GitOps users commit what `rollback` wrote).

use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use empacts_api::{EmpactsApp, EmpactsAppSpec, annotations};
use empacts_operator::build::revision as cr;
use empacts_operator::observe::instance_selector;
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use crate::output::HistoryEntry;

/// Field manager of CLI writes, distinct from the operator's.
pub const CLI_MANAGER: &str = "empacts-cli";

pub async fn get_app(client: &Client, ns: &str, name: &str) -> anyhow::Result<EmpactsApp> {
    Api::<EmpactsApp>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .with_context(|| format!("reading EmpactsApp {ns}/{name}"))
}

/// Human summary of an app's status.
pub async fn status(client: &Client, ns: &str, name: &str) -> anyhow::Result<String> {
    let app = get_app(client, ns, name).await?;
    let s = app.status.clone().unwrap_or_default();
    let mut out = String::new();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    writeln!(out, "EmpactsApp {ns}/{name}")?;
    writeln!(out, "  image:            {}", app.spec.image)?;
    writeln!(out, "  phase:            {}", s.phase.map(|p| p.to_string()).unwrap_or_else(|| "-".into()))?;
    writeln!(
        out,
        "  generation:       {} (observed {})",
        app.metadata.generation.unwrap_or(0),
        s.observed_generation.map(|g| g.to_string()).unwrap_or_else(|| "-".into())
    )?;
    writeln!(out, "  desired revision: {}", opt(&s.desired_revision))?;
    writeln!(out, "  current revision: {}", opt(&s.current_revision))?;
    writeln!(out, "  last good:        {}", opt(&s.last_good_revision))?;
    writeln!(out, "  failed:           {}", opt(&s.failed_revision))?;
    writeln!(
        out,
        "  replicas:         {} ready / {} updated / {} total",
        s.ready_replicas.unwrap_or(0),
        s.updated_replicas.unwrap_or(0),
        s.replicas.unwrap_or(0)
    )?;
    if let Some(m) = &s.migration {
        writeln!(
            out,
            "  migration:        {} {:?}{}",
            m.job,
            m.phase,
            m.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
        )?;
    }
    if let Some(c) = &s.canary {
        let stable = c.stable_replicas.map(|n| format!(", {n} stable")).unwrap_or_default();
        writeln!(
            out,
            "  canary:           {} step {} ({} canary pods{stable})",
            c.revision, c.progress, c.canary_replicas
        )?;
    }
    if let Some(a) = &s.analysis {
        writeln!(
            out,
            "  analysis:         {}: {} passed, {} failed, {} inconclusive",
            a.revision, a.passed, a.failed, a.inconclusive
        )?;
        for m in a.measurements.iter().take(4) {
            writeln!(out, "    {:<18} {:<12} {}", m.metric, m.phase, m.message)?;
        }
    }
    writeln!(out, "  conditions:")?;
    for c in &s.conditions {
        writeln!(out, "    {:<18} {:<7} {:<28} {}", c.type_, c.status, c.reason, c.message)?;
    }
    Ok(out)
}

/// The app's ControllerRevisions, newest first.
pub(crate) async fn revisions(client: &Client, ns: &str, name: &str) -> anyhow::Result<Vec<ControllerRevision>> {
    let mut list = Api::<ControllerRevision>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&instance_selector(name)))
        .await
        .with_context(|| format!("listing ControllerRevisions of {ns}/{name}"))?
        .items;
    list.sort_by_key(|c| std::cmp::Reverse(c.revision));
    Ok(list)
}

/// Revision history, newest first, with what each revision ran and how it ended.
pub async fn history(client: &Client, ns: &str, name: &str) -> anyhow::Result<String> {
    let entries = history_entries(client, ns, name).await?;
    let mut out = String::new();
    writeln!(out, "{:<4} {:<12} {:<16} {:<9} {:<22} IMAGE", "NO", "REVISION", "RESULT", "MIGRATED", "AT")?;
    for e in &entries {
        writeln!(
            out,
            "{:<4} {:<12} {:<16} {:<9} {:<22} {}",
            e.number.map(|n| n.to_string()).unwrap_or_else(|| "-".into()),
            format!("{}{}", e.revision, if e.current { "*" } else { "" }),
            e.result,
            e.migrated,
            e.at,
            e.image
        )?;
    }
    Ok(out)
}

/// The app's revision history as data, newest first.
pub async fn history_entries(client: &Client, ns: &str, name: &str) -> anyhow::Result<Vec<HistoryEntry>> {
    let app = get_app(client, ns, name).await?;
    let status = app.status.clone().unwrap_or_default();
    let records = revisions(client, ns, name).await?;
    Ok(status
        .history
        .iter()
        .map(|r| HistoryEntry {
            number: records.iter().find(|c| cr::revision_of(c) == Some(r.revision.as_str())).map(|c| c.revision),
            revision: r.revision.clone(),
            result: format!("{:?}", r.result),
            migrated: r.migrated,
            at: r.at.0.to_string(),
            image: r.image.clone(),
            current: status.current_revision.as_deref() == Some(r.revision.as_str()),
            message: r.message.clone(),
        })
        .collect())
}

/// The apps of a namespace (None: of all namespaces), sorted by namespace and name.
pub async fn list_apps(client: &Client, ns: Option<&str>) -> anyhow::Result<Vec<EmpactsApp>> {
    let api: Api<EmpactsApp> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut apps = api.list(&ListParams::default()).await.context("listing EmpactsApps")?.items;
    apps.sort_by_key(|a| (a.metadata.namespace.clone(), a.metadata.name.clone()));
    Ok(apps)
}

/// The recorded spec of a revision, by hash or by number.
pub async fn recorded_spec(
    client: &Client,
    ns: &str,
    name: &str,
    to: &str,
) -> anyhow::Result<(String, EmpactsAppSpec)> {
    let records = revisions(client, ns, name).await?;
    let found = records.iter().find(|c| cr::revision_of(c) == Some(to) || c.revision.to_string() == to);
    let Some(record) = found else {
        let known: Vec<String> =
            records.iter().map(|c| format!("{} ({})", c.revision, cr::revision_of(c).unwrap_or("?"))).collect();
        bail!("{ns}/{name} has no recorded revision {to}; known revisions: {}", known.join(", "));
    };
    let spec = cr::recorded_spec(record).with_context(|| format!("decoding the spec recorded for revision {to}"))?;
    Ok((cr::revision_of(record).unwrap_or(to).to_string(), spec))
}

/// Ask the operator to roll back to a recorded revision, exactly as an automatic rollback
/// (down-migrations first), without touching the spec. Returns the revision. The write
/// carries the resourceVersion read first: if the app changed meanwhile it fails with a
/// conflict instead of acting on what the user did not see.
pub async fn rollback(client: &Client, ns: &str, name: &str, to: &str) -> anyhow::Result<String> {
    let app = get_app(client, ns, name).await?;
    rollback_read(client, &app, to).await
}

/// `rollback` of an app already read (its resourceVersion is the precondition).
pub async fn rollback_read(client: &Client, app: &EmpactsApp, to: &str) -> anyhow::Result<String> {
    let (ns, name) = (app.namespace().unwrap_or_default(), app.name_any());
    let (revision, _) = recorded_spec(client, &ns, &name, to).await?;
    let value = format!("{revision}@{}", k8s_openapi::jiff::Timestamp::now());
    let patch = rollback_patch(app, &value)?;
    Api::<EmpactsApp>::namespaced(client.clone(), &ns)
        .patch(
            &name,
            &PatchParams { field_manager: Some(CLI_MANAGER.into()), ..Default::default() },
            &Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("requesting the rollback of {ns}/{name}"))?;
    Ok(revision)
}

/// The merge patch of a rollback request, with the read object's resourceVersion as the
/// precondition (the API server answers 409 Conflict when the app changed since).
pub fn rollback_patch(app: &EmpactsApp, value: &str) -> anyhow::Result<serde_json::Value> {
    let Some(version) = app.metadata.resource_version.as_deref().filter(|v| !v.is_empty()) else {
        bail!("the app as read has no resourceVersion: cannot guard the rollback against concurrent changes");
    };
    Ok(serde_json::json!({"metadata": {
        "resourceVersion": version,
        "annotations": {annotations::ROLLBACK_TO: value},
    }}))
}

/// Roll back by rewriting the spec to a revision's recorded spec. Returns the revision.
/// The CLI then gives up the fields it wrote, so the next `kubectl apply --server-side` of
/// the Git copy does not conflict with it.
pub async fn rewrite_spec(client: &Client, ns: &str, name: &str, to: &str) -> anyhow::Result<String> {
    let read = get_app(client, ns, name).await?;
    let (revision, spec) = recorded_spec(client, ns, name, to).await?;
    let api: Api<EmpactsApp> = Api::namespaced(client.clone(), ns);
    // A JSON patch replacing /spec whole: fields the old revision did not set disappear too.
    // The resourceVersion read first is the precondition (409 if the app changed since).
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        {"op": "replace", "path": "/metadata/resourceVersion", "value": read.metadata.resource_version},
        {"op": "replace", "path": "/spec", "value": spec}
    ]))?;
    api.patch(
        name,
        &PatchParams { field_manager: Some(CLI_MANAGER.into()), ..Default::default() },
        &Patch::<()>::Json(patch),
    )
    .await
    .with_context(|| format!("rewriting the spec of {ns}/{name}"))?;
    let app = get_app(client, ns, name).await?;
    let kept: Vec<_> =
        app.metadata.managed_fields.iter().flatten().filter(|m| m.manager.as_deref() != Some(CLI_MANAGER)).collect();
    if kept.len() != app.metadata.managed_fields.as_ref().map_or(0, Vec::len) {
        let patch =
            serde_json::json!({"metadata": {"managedFields": kept, "resourceVersion": app.metadata.resource_version}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("dropping the CLI's field ownership of {ns}/{name}"))?;
    }
    Ok(revision)
}

async fn annotate(client: &Client, ns: &str, name: &str, key: &str) -> anyhow::Result<String> {
    let value = k8s_openapi::jiff::Timestamp::now().to_string();
    annotate_with(client, ns, name, key, &value).await?;
    Ok(value)
}

/// A request on the app: one annotation, written under the CLI's own field manager.
async fn annotate_with(client: &Client, ns: &str, name: &str, key: &str, value: &str) -> anyhow::Result<()> {
    let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
    Api::<EmpactsApp>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams { field_manager: Some(CLI_MANAGER.into()), ..Default::default() },
            &Patch::Merge(&patch),
        )
        .await
        .with_context(|| format!("annotating {ns}/{name}"))?;
    Ok(())
}

/// Ask the operator to retry a failed revision (migration or rollout).
pub async fn retry(client: &Client, ns: &str, name: &str) -> anyhow::Result<String> {
    annotate(client, ns, name, annotations::RETRY).await
}

/// Promote the canary one step (`full`: past every remaining step).
pub async fn promote(client: &Client, ns: &str, name: &str, full: bool) -> anyhow::Result<String> {
    let stamp = k8s_openapi::jiff::Timestamp::now().to_string();
    let value = if full { format!("full:{stamp}") } else { stamp };
    annotate_with(client, ns, name, annotations::PROMOTE, &value).await?;
    Ok(value)
}

/// Abort the canary: its pods stop, the stable revision serves, migrations are undone.
pub async fn abort(client: &Client, ns: &str, name: &str) -> anyhow::Result<String> {
    annotate(client, ns, name, annotations::ABORT).await
}

/// How many secrets of the app the operator generates (what a rotation regenerates).
pub fn generated_secret_count(app: &EmpactsApp) -> usize {
    app.spec.secrets().iter().filter(|e| e.generate.is_some()).count()
}

/// Ask the operator to regenerate every generated secret of the app (pods roll).
pub async fn rotate_secrets(client: &Client, ns: &str, name: &str) -> anyhow::Result<String> {
    annotate(client, ns, name, annotations::ROTATE_SECRETS).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollback_patch_carries_the_read_resource_version() {
        let mut app: EmpactsApp = serde_yaml::from_str(
            "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {name: api, namespace: shop, resourceVersion: '42'}\nspec: {image: 'api:1'}\n",
        )
        .unwrap();
        let patch = rollback_patch(&app, "r1@now").unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(patch["metadata"]["annotations"][annotations::ROLLBACK_TO], "r1@now");
        app.metadata.resource_version = None;
        assert!(rollback_patch(&app, "r1@now").is_err(), "no unguarded write");
    }
}
