//! `diff -f app.yaml`: what applying the file would change in the app's children. Nothing is
//! written: the app goes through a server-side dry-run apply (defaulted and validated as the
//! API server would store it), the operator's pure builders make its children, and each is
//! compared with the live one, both normalised (see normalize.rs).

use anyhow::Context as _;
use empacts_api::EmpactsApp;
use empacts_operator::build::{self, revision as cr};
use empacts_operator::observe::{controlled_by, instance_selector};
use empacts_operator::registry::{self, Prune};
use empacts_operator::revision::{RevisionSpec, identity};
use empacts_operator::secret_value::SecretValue;
use empacts_operator::validate;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::Value;

use crate::normalize;

/// Default field manager of the dry-run apply: `kubectl apply --server-side`'s, so fields the
/// file no longer sets are dropped as that apply would drop them. Nothing is stored under it.
pub const DIFF_MANAGER: &str = "kubectl";

/// The unified diffs of every app in `yaml` (apps without a namespace go to `default_ns`).
/// Documents of other kinds are skipped with a note on stderr.
pub async fn diff(client: &Client, yaml: &str, default_ns: &str, manager: &str) -> anyhow::Result<Vec<String>> {
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
        out.extend(diff_app(client, value, default_ns, manager).await?);
    }
    Ok(out)
}

async fn diff_app(client: &Client, mut value: Value, default_ns: &str, manager: &str) -> anyhow::Result<Vec<String>> {
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
    let params = PatchParams { dry_run: true, force: true, field_manager: Some(manager.into()), ..Default::default() };
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

    let mut diffs = removed(client, &ns, &name, &app.uid, &children).await?;
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

/// Children the operator would delete: kinds the spec no longer asks for, still controlled by
/// the app (diffed against /dev/null).
async fn removed(
    client: &Client,
    ns: &str,
    name: &str,
    uid: &str,
    children: &build::Children,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for (kind, wanted) in children.serving() {
        let Some(child) = registry::child_kind(kind).filter(|k| k.prune == Prune::WhenUnwanted) else { continue };
        if wanted.is_some() {
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &child.api_resource());
        let live = match api.list(&ListParams::default().labels(&instance_selector(name))).await {
            Ok(list) => list.items,
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("listing {kind}s of {ns}/{name}"))),
        };
        for obj in live.into_iter().filter(|o| controlled_by(&o.metadata, uid)) {
            let title = format!("{kind}/{ns}/{}", obj.metadata.name.clone().unwrap_or_default());
            // In kubectl's key order, with the apiVersion and kind a listed item lacks.
            let mut value = serde_json::Map::new();
            value.insert("apiVersion".into(), child.api_resource().api_version.into());
            value.insert("kind".into(), kind.into());
            value.insert("metadata".into(), serde_json::to_value(&obj.metadata)?);
            if let Value::Object(data) = obj.data {
                value.extend(data);
            }
            out.push(normalize::removal(&title, &Value::Object(value)));
        }
    }
    Ok(out)
}

/// The name the operator gives the app's revision: the recorded one with the same
/// revision-defining spec, newest first, else today's identity.
async fn revision_name(
    client: &Client,
    ns: &str,
    name: &str,
    spec: &empacts_api::EmpactsAppSpec,
) -> anyhow::Result<String> {
    let records = crate::commands::revisions(client, ns, name).await?;
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
    let resource = match registry::child_kind(kind) {
        Some(child) => child.api_resource(),
        None => {
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
        }
    };
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
