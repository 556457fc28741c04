//! `diff -f app.yaml`: what applying the file would change in the app's children. Nothing is
//! written: the app goes through a server-side dry-run apply (defaulted and validated as the
//! API server would store it), the operator's pure builders make its children, and each is
//! compared with the live one, both normalised (see normalize.rs).

use anyhow::Context as _;
use empacts_api::EmpactsApp;
use empacts_operator::build::{self, revision as cr};
use empacts_operator::observe::instance_selector;
use empacts_operator::revision::{RevisionSpec, identity};
use empacts_operator::secret_value::SecretValue;
use empacts_operator::validate;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::Value;

use crate::normalize;

/// Field manager of the dry-run apply (nothing is stored under it).
pub const DIFF_MANAGER: &str = "kubectl-empacts-diff";

/// The unified diffs of every app in `yaml` (apps without a namespace go to `default_ns`).
/// Documents of other kinds are skipped with a note on stderr.
pub async fn diff(client: &Client, yaml: &str, default_ns: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = Value::deserialize(doc).context("parsing the YAML")?;
        if value.is_null() {
            continue;
        }
        if value.get("kind").and_then(Value::as_str) != Some("EmpactsApp") {
            let kind = value.get("kind").and_then(Value::as_str).unwrap_or("<no kind>");
            eprintln!("skipping a {kind}: only EmpactsApps are compared");
            continue;
        }
        out.extend(diff_app(client, value, default_ns).await?);
    }
    Ok(out)
}

async fn diff_app(client: &Client, mut value: Value, default_ns: &str) -> anyhow::Result<Vec<String>> {
    let name =
        value.pointer("/metadata/name").and_then(Value::as_str).context("the EmpactsApp has no metadata.name")?;
    let name = name.to_string();
    let ns = match value.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) => ns.to_string(),
        None => {
            value["metadata"]["namespace"] = default_ns.into();
            default_ns.to_string()
        }
    };
    let apps: Api<EmpactsApp> = Api::namespaced(client.clone(), &ns);
    let params =
        PatchParams { dry_run: true, force: true, field_manager: Some(DIFF_MANAGER.into()), ..Default::default() };
    let app = apps
        .patch(&name, &params, &Patch::Apply(&value))
        .await
        .with_context(|| format!("dry-run apply of EmpactsApp {ns}/{name}"))?;
    let current = app.status.as_ref().and_then(|s| s.current_revision.clone());
    let app = validate::validate(&app).map_err(|e| anyhow::anyhow!("{ns}/{name}: {e}"))?;

    let revision = revision_name(client, &ns, &name, &app.spec).await?;
    let live_deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get_opt(&empacts_operator::names::workload(&name))
        .await
        .with_context(|| format!("reading the Deployment of {ns}/{name}"))?;
    let replicas = live_deployment.as_ref().and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas);
    let mut children = build::build_all(&app, None, replicas, |_| Some(SecretValue::placeholder()));
    // The operator names a revision as the ledger has it, which earlier builds may have named
    // differently from today's identity.
    children.deployment = build::deployment::build(&app, &revision, None, replicas);
    children.migration_job = build::job::migration(&app, &revision, 1);

    let mut diffs = Vec::new();
    for desired in children.to_manifests() {
        let kind = desired["kind"].as_str().unwrap_or_default().to_string();
        let child = desired.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let Some(live) = live_child(client, &ns, &desired).await? else { continue };
        // A migration runs once per revision: the current revision's Job may be gone (TTL).
        if kind == "Job" && live.is_none() && current.as_deref() == Some(revision.as_str()) {
            continue;
        }
        if let Some(d) = normalize::unified(&format!("{kind}/{ns}/{child}"), live.as_ref(), &desired) {
            diffs.push(d);
        }
    }
    Ok(diffs)
}

/// The name the operator gives the app's revision: the recorded one with the same
/// revision-defining spec, newest first, else today's identity.
async fn revision_name(
    client: &Client,
    ns: &str,
    name: &str,
    spec: &empacts_api::EmpactsAppSpec,
) -> anyhow::Result<String> {
    let mut records = Api::<ControllerRevision>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&instance_selector(name)))
        .await
        .with_context(|| format!("listing ControllerRevisions of {ns}/{name}"))?
        .items;
    records.sort_by_key(|c| std::cmp::Reverse(c.revision));
    let wanted = RevisionSpec::of(spec);
    let found = records
        .iter()
        .filter(|c| cr::recorded_spec(c).is_ok_and(|s| RevisionSpec::of(&s) == wanted))
        .find_map(|c| cr::revision_of(c).map(String::from));
    Ok(found.unwrap_or_else(|| identity(spec)))
}

/// The live child of the desired one: Some(None) when it does not exist, None when it is not
/// compared (its kind is not served: Prometheus Operator CRDs absent, the operator applies none
/// then; or a Secret the user may not read).
async fn live_child(client: &Client, ns: &str, desired: &Value) -> anyhow::Result<Option<Option<Value>>> {
    let api_version = desired["apiVersion"].as_str().unwrap_or_default();
    let kind = desired["kind"].as_str().unwrap_or_default();
    let name = desired.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, &plural(kind));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    match api.get_opt(name).await {
        Ok(Some(obj)) => Ok(Some(Some(serde_json::to_value(obj)?))),
        Ok(None) => {
            // 404 for the object or for its whole kind: a list tells them apart.
            match api.list(&ListParams::default().limit(1)).await {
                Ok(_) => Ok(Some(None)),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                Err(e) => Err(anyhow::Error::new(e).context(format!("listing {kind}s in {ns}"))),
            }
        }
        // Users who may not read Secrets still get the rest of the diff.
        Err(kube::Error::Api(s)) if s.code == 403 && kind == "Secret" => {
            eprintln!("note: not comparing Secret {ns}/{name}: reading it is forbidden");
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {kind} {ns}/{name}"))),
    }
}

/// The resource name of a kind (the children's kinds are all regular English plurals).
fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else if lower.ends_with('s') {
        format!("{lower}es")
    } else {
        format!("{lower}s")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn plurals_of_the_children() {
        let kinds =
            ["ServiceAccount", "Secret", "Ingress", "NetworkPolicy", "HorizontalPodAutoscaler", "PrometheusRule"];
        assert_eq!(
            kinds.map(super::plural),
            [
                "serviceaccounts",
                "secrets",
                "ingresses",
                "networkpolicies",
                "horizontalpodautoscalers",
                "prometheusrules"
            ]
        );
    }
}
