//! Wiring: the kube-runtime Controller on EmpactsApp, its watches and error policy.

use std::sync::Arc;
use std::time::Duration;

use empacts_api::{EmpactsApp, labels};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};

use crate::children::ChildStores;
use crate::registry::{CHILD_KINDS, Watch};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::context::Context;
use crate::error::Error;
use crate::{events, names, reconcile};

/// The kinds watched by hand below (typed, or mapped through the apps); every other
/// registered kind watched by metadata gets its watch and cache from the registry.
const WATCHED_BY_HAND: &[(&str, Watch)] =
    &[("Deployment", Watch::Owned), ("Job", Watch::Owned), ("Secret", Watch::Referenced)];

/// Every kind the controller watches, and how (a unit test compares it with the registry).
pub fn watched() -> Vec<(&'static str, Watch)> {
    let from_registry = CHILD_KINDS.iter().filter(|k| k.watch == Watch::OwnedMetadata).map(|k| (k.kind, k.watch));
    WATCHED_BY_HAND.iter().copied().chain(from_registry).collect()
}

/// Quiet period before a triggered reconcile runs.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Where the operator looks for apps.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Only this namespace; None watches all namespaces.
    pub namespace: Option<String>,
}

fn api<K>(client: &Client, scope: &Scope) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match &scope.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A metadata watch of one registered child kind that also fills `writer`'s cache.
fn cached(
    writer: reflector::store::Writer<PartialObjectMeta<DynamicObject>>,
    api: Api<PartialObjectMeta<DynamicObject>>,
    config: &watcher::Config,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<DynamicObject>, watcher::Error>> + Send + 'static {
    // Status-only updates (an HPA reports metrics every 15 s, a PDB follows pod health) do not
    // concern us: for kinds with a generation, pass an update only when the generation, labels
    // or annotations moved. Deletions always pass, so a deleted child comes back at once.
    let mut seen: std::collections::HashMap<(Option<String>, String), u64> = Default::default();
    reflector(writer, watcher(api, config.clone()).default_backoff()).filter_map(move |event| {
        let out = match event {
            Err(e) => Some(Err(e)),
            Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                let key = (obj.metadata.namespace.clone(), obj.metadata.name.clone().unwrap_or_default());
                match spec_fingerprint(&obj.metadata) {
                    Some(fp) if seen.insert(key, fp) == Some(fp) => None,
                    _ => Some(Ok(obj)),
                }
            }
            Ok(watcher::Event::Delete(obj)) => {
                seen.remove(&(obj.metadata.namespace.clone(), obj.metadata.name.clone().unwrap_or_default()));
                Some(Ok(obj))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        };
        futures::future::ready(out)
    })
}

/// Hash of what a spec or metadata change moves, for kinds that have a generation.
fn spec_fingerprint(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let generation = meta.generation?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (generation, &meta.labels, &meta.annotations, &meta.owner_references.as_ref().map(|o| o.len())).hash(&mut h);
    Some(h.finish())
}

/// Run the controller until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(
    ctx: Arc<Context>,
    scope: Scope,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ours = watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    let controller = Controller::new(api::<EmpactsApp>(&client, &scope), watcher::Config::default().any_semantic());
    let store = controller.store();
    let synced = (store.clone(), ctx.readiness.clone());
    tokio::spawn(async move {
        // The store's readiness future wakes only its most recent waiter (the controller's own
        // runner also waits on it), so poll it again every half second until it resolves.
        loop {
            match tokio::time::timeout(Duration::from_millis(500), synced.0.wait_until_ready()).await {
                Err(_) => continue,
                Ok(Ok(())) => {
                    synced.1.caches_synced.store(true, std::sync::atomic::Ordering::Release);
                    info!("caches synced");
                }
                Ok(Err(e)) => warn!(error = %e, "the EmpactsApp cache never synced"),
            }
            break;
        }
    });
    // Registered children watched by metadata also fill caches that let a reconcile skip
    // applies that would change nothing (and tell whose object a name is).
    // Deployments and Jobs are cached whole: their status decides the rollout.
    let deployments = reflector::store::Writer::<Deployment>::default();
    let jobs = reflector::store::Writer::<Job>::default();
    let mut stores =
        ChildStores { deployments: Some(deployments.as_reader()), jobs: Some(jobs.as_reader()), ..Default::default() };
    let deployment_events = watcher(api::<Deployment>(&client, &scope), ours.clone()).default_backoff();
    let job_events = watcher(api::<Job>(&client, &scope), ours.clone()).default_backoff();
    let mut controller = controller
        .owns_stream(reflector(deployments, deployment_events).touched_objects())
        .owns_stream(reflector(jobs, job_events).touched_objects());
    for kind in CHILD_KINDS.iter().filter(|k| k.watch == Watch::OwnedMetadata) {
        let ar = kind.api_resource();
        let writer = reflector::store::Writer::new(ar.clone());
        stores.stores.insert(kind.kind, writer.as_reader());
        let api: Api<PartialObjectMeta<DynamicObject>> = match &scope.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        controller = controller.owns_stream_with(cached(writer, api, &ours), ar);
    }
    let _ = ctx.stores.set(stores);
    let controller = controller
        .watches(api::<PartialObjectMeta<Secret>>(&client, &scope), watcher::Config::default(), move |secret| {
            // A referenced (or generated) Secret changed: reconcile every app that uses it.
            let ns = secret.namespace();
            let name = secret.name_any();
            store
                .state()
                .into_iter()
                .filter(|app| app.namespace() == ns)
                .filter(|app| {
                    app.spec.secrets().iter().any(|e| match &e.secret_key_ref {
                        Some(r) => r.name == name,
                        None => {
                            names::generated_secret(&app.name_any(), &e.env) == name
                                || names::legacy_generated_secret(&app.name_any(), &e.env) == name
                        }
                    })
                })
                .map(|app| ObjectRef::from(app.as_ref()))
                .collect::<Vec<_>>()
        })
        // A rollout touches several children at once (ReplicaSet -> Deployment status, Job
        // status, HPA status); coalescing their triggers saves reconciles without delaying much.
        .with_config(kube::runtime::controller::Config::default().debounce(DEBOUNCE))
        .graceful_shutdown_on(shutdown);
    info!(namespace = ?scope.namespace, "controller started");
    controller
        .run(reconcile::reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            let ctx = ctx.clone();
            async move {
                match result {
                    Ok((obj, _)) => {
                        ctx.metrics.reconciles.with_label_values(&["ok"]).inc();
                        tracing::debug!(app = %obj.name, "reconciled");
                    }
                    Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                        ctx.forget(&ObjectRef::new(&obj.name).within(obj.namespace.as_deref().unwrap_or_default()))
                    }
                    Err(kube::runtime::controller::Error::QueueError(e)) => {
                        // A watch stream failed; the watcher re-establishes it with backoff.
                        ctx.metrics.watch_restarts.inc();
                        warn!(error = %e, "watch failed; restarting it");
                    }
                    Err(e) => {
                        ctx.metrics.reconciles.with_label_values(&["error"]).inc();
                        warn!(error = %e, "reconcile failed");
                    }
                }
            }
        })
        .await;
    info!("controller stopped");
}

/// Transient errors retry with a delay; the Event tells users why their app is not moving.
fn error_policy(app: Arc<EmpactsApp>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.with_label_values(&[error.category()]).inc();
    warn!(app = %app.name_any(), namespace = app.namespace().unwrap_or_default(), category = error.category(), error = %error, "reconcile error");
    let note = error.to_string();
    let reason = error.category();
    let ctx2 = ctx.clone();
    tokio::spawn(async move {
        events::publish(&ctx2, &app, EventType::Warning, reason, "Reconcile", &note).await;
    });
    let delay = if error.category() == "Conflict" { Duration::from_secs(1) } else { Duration::from_secs(10) };
    Action::requeue(delay)
}
