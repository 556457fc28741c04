//! Writes. Server-side apply with one field manager for the children we own; create-only
//! for what must never be overwritten (generated Secrets, migration Jobs, revisions).

use std::fmt::Debug;

use empacts_api::labels;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build;
use crate::children::{APPLIED_ANNOTATION, CachedMeta};
use crate::context::Context;
use crate::error::{Error, Result, is_conflict, is_not_found};
use crate::names;
use crate::secret_value::SecretValue;
use crate::validate::ValidatedApp;

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "empacts-operator";

fn write_error<K: Resource<DynamicType = ()>>(ns: &str, name: &str, source: kube::Error) -> Error {
    Error::Write {
        kind: K::kind(&()).into_owned(),
        namespace: ns.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    }
}

/// Server-side apply of a child we own, taking ownership of its fields from anyone else.
pub async fn apply<K>(client: &Client, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let mut value = serde_json::to_value(obj).expect("Kubernetes objects serialize");
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(value))
        .await
        .map_err(|e| write_error::<K>(&ns, &name, e))
}

/// Apply a child unless `live` (its cached or freshly read metadata) shows it already is
/// exactly what we would apply. The hash of the desired object travels in an annotation.
pub async fn apply_child<K>(ctx: &Context, obj: &K, live: Option<&ObjectMeta>) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let kind = K::kind(&()).into_owned();
    let hash = crate::hash::content_hash(obj);
    if live.is_some_and(|live| ctx.applied.is_current(&kind, live, &hash)) {
        ctx.metrics.child_applies.with_label_values(&[kind.as_str(), "skipped"]).inc();
        return Ok(());
    }
    let mut obj = obj.clone();
    obj.meta_mut().annotations.get_or_insert_with(Default::default).insert(APPLIED_ANNOTATION.into(), hash);
    let applied = match apply(&ctx.client, &obj).await {
        // Someone else's edit of a keyed list (say a Service port) can leave entries our apply
        // cannot remove, making the merged object invalid. Take the object back with a merge
        // patch (lists replaced whole), then apply again so we own the fields.
        // Only for objects this app already controls: never a way to take over someone else's.
        Err(Error::Write { source, .. })
            if matches!(source.as_ref(), kube::Error::Api(s) if s.code == 422) && controlled_by_us(&obj, live) =>
        {
            let ns = obj.namespace().unwrap_or_default();
            let name = obj.name_any();
            let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
            let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            api.patch(&name, &params, &Patch::Merge(&obj)).await.map_err(|e| write_error::<K>(&ns, &name, e))?;
            apply(&ctx.client, &obj).await?
        }
        other => other?,
    };
    ctx.applied.record(&kind, applied.meta());
    ctx.metrics.child_applies.with_label_values(&[kind.as_str(), "applied"]).inc();
    Ok(())
}

/// The live object already carries the controller reference the desired one has.
fn controlled_by_us<K: Resource>(desired: &K, live: Option<&ObjectMeta>) -> bool {
    let ours = desired.meta().owner_references.iter().flatten().find(|o| o.controller == Some(true));
    let theirs = live.and_then(|l| l.owner_references.as_ref());
    match (ours, theirs) {
        (Some(ours), Some(refs)) => refs.iter().any(|o| o.uid == ours.uid && o.controller == Some(true)),
        _ => false,
    }
}

/// [`apply_child`] for a kind whose live metadata the controller's caches hold.
pub async fn apply_cached_child<K>(ctx: &Context, obj: &K) -> Result<()>
where
    K: CachedMeta
        + Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let ns = obj.namespace().unwrap_or_default();
    let live = ctx.stores.get().and_then(|stores| K::cached_meta(stores, &ns, &obj.name_any()));
    apply_child(ctx, obj, live.as_ref()).await
}

/// Create unless it exists; never touches an existing object. Returns whether it created.
pub async fn create_if_absent<K>(client: &Client, obj: &K) -> Result<bool>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, obj).await {
        Ok(_) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(write_error::<K>(&ns, &name, e)),
    }
}

/// Delete if present (background propagation, so a Job's pods go too).
pub async fn delete_if_present<K>(client: &Client, ns: &str, name: &str) -> Result<bool>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let params = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
    match api.delete(name, &params).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(write_error::<K>(ns, name, e)),
    }
}

/// Delete a child we no longer want, if it exists and this app owns it. Reads first so a
/// settled app sends no write at all.
pub async fn delete_owned<K>(client: &Client, app: &ValidatedApp, name: &str) -> Result<bool>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &app.namespace);
    let existing = api.get_metadata_opt(name).await.map_err(|source| Error::Read {
        kind: K::kind(&()).into_owned(),
        namespace: app.namespace.clone(),
        name: name.to_string(),
        source: Box::new(source),
    })?;
    let owned = existing.is_some_and(|m| m.owner_references().iter().any(|o| o.uid == app.uid));
    if !owned {
        return Ok(false);
    }
    delete_if_present::<K>(client, &app.namespace, name).await
}

/// Outcome of [`ensure_generated_secrets`], for Events and metrics (names only, never values).
#[derive(Debug, Default)]
pub struct GeneratedSecrets {
    pub created: Vec<String>,
    pub rotated: Vec<String>,
    /// Existing Secrets with a generated name that the operator did not create: left alone.
    pub foreign: Vec<String>,
}

/// Create each generated Secret that does not exist yet; with `rotate`, give each one the
/// operator created a new value (optimistic concurrency: a concurrent change fails the write).
pub async fn ensure_generated_secrets(client: &Client, app: &ValidatedApp, rotate: bool) -> Result<GeneratedSecrets> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &app.namespace);
    let mut outcome = GeneratedSecrets::default();
    for entry in app.spec.secrets().iter().filter(|e| e.generate.is_some()) {
        let length = entry.generate.as_ref().map(|g| g.length()).unwrap_or_default();
        let name = names::generated_secret(&app.name, &entry.env);
        let existing = api.get_opt(&name).await.map_err(|source| Error::Read {
            kind: "Secret".into(),
            namespace: app.namespace.clone(),
            name: name.clone(),
            source: Box::new(source),
        })?;
        match existing {
            None => {
                let secret = build::secret::build(app, entry, &SecretValue::generate(length))
                    .expect("entry has generate, so a Secret is built");
                if create_if_absent(client, &secret).await? {
                    outcome.created.push(name);
                }
            }
            Some(current) if rotate => {
                let ours = current.labels().get(labels::GENERATED_SECRET).is_some_and(|v| v == "true");
                if !ours {
                    outcome.foreign.push(name);
                    continue;
                }
                let mut next = current.clone();
                let fresh = build::secret::build(app, entry, &SecretValue::generate(length))
                    .expect("entry has generate, so a Secret is built");
                next.data = fresh.data;
                next.string_data = None;
                // resourceVersion is kept from `current`: replace fails on a concurrent change.
                api.replace(
                    &name,
                    &PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() },
                    &next,
                )
                .await
                .map_err(|e| write_error::<Secret>(&app.namespace, &name, e))?;
                outcome.rotated.push(name);
            }
            Some(current) => {
                if current.labels().get(labels::GENERATED_SECRET).is_none_or(|v| v != "true") {
                    outcome.foreign.push(name);
                    continue;
                }
                // `retain` turned on after creation: drop our owner reference (metadata only), so
                // deleting the app no longer garbage-collects the value.
                let retain = entry.generate.as_ref().is_some_and(|g| g.retain());
                let owned = current.owner_references().iter().any(|o| o.uid == app.uid);
                if retain && owned {
                    let keep: Vec<_> =
                        current.owner_references().iter().filter(|o| o.uid != app.uid).cloned().collect();
                    let patch = serde_json::json!({"metadata": {
                        "ownerReferences": keep,
                        "resourceVersion": current.resource_version(),
                    }});
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(|e| write_error::<Secret>(&app.namespace, &name, e))?;
                }
            }
        }
    }
    Ok(outcome)
}
