//! Wiring: the watches of the apps and their children (per watched namespace, or one set for
//! all), feeding the caches and the work queue, and the reconcile loop over that queue.

use std::sync::Arc;
use std::time::Instant;

use empacts_api::{EmpactsApp, labels};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};

use crate::child_cache::{ChildCache, DeploymentRecord, JobRecord};
use crate::children::{ChildStores, trim_for_cache};
use crate::registry::{CHILD_KINDS, ChildKind, Watch};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::context::{AppId, Context};
use crate::events;
use crate::stored_app::StoredApp;
use crate::work::Work;

/// The kinds watched by hand below (typed, or mapped through the apps); every other
/// registered kind watched by metadata gets its watch and cache from the registry.
const WATCHED_BY_HAND: &[(&str, Watch)] = &[
    ("Deployment", Watch::Owned),
    ("Job", Watch::Owned),
    ("Secret", Watch::Referenced),
    ("ControllerRevision", Watch::Ledger),
];

/// Every kind the controller watches, and how (a unit test compares it with the registry).
pub fn watched() -> Vec<(&'static str, Watch)> {
    let from_registry = CHILD_KINDS.iter().filter(|k| k.cached()).map(|k| (k.kind, k.watch));
    WATCHED_BY_HAND.iter().copied().chain(from_registry).collect()
}

/// Where the operator looks for apps.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Only these namespaces; empty watches all namespaces.
    pub namespaces: Vec<String>,
}

impl Scope {
    pub fn all() -> Self {
        Scope::default()
    }

    pub fn namespace(ns: &str) -> Self {
        Scope { namespaces: vec![ns.to_string()] }
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Watch events of `name`, reported to the readiness of the caches on the way.
fn reported<K: Send + 'static>(
    ctx: &Context,
    name: String,
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static {
    let readiness = ctx.readiness.clone();
    readiness.watches.register(&name);
    events.inspect(move |event| readiness.watches.observe(&name, event))
}

/// Objects per page of a watch's initial list. A page is held whole, as full objects, before
/// the cache trims them; with every watch listing at start, pages of kube's default 500 were
/// most of the process's peak memory (dhat, 1,000 apps: ~50 of 79 MB at its peak). Watches
/// of whole objects list in pages of 100, metadata-only ones (smaller objects) of 500.
const FULL_OBJECT_PAGE: u32 = 100;

type MetaEvents =
    futures::stream::BoxStream<'static, Result<watcher::Event<PartialObjectMeta<DynamicObject>>, watcher::Error>>;

/// The watch of one registered child kind, as metadata: a metadata watch, or for kinds
/// without a generation whose status moves on its own a watch of whole objects cached as
/// their metadata plus a hash of their spec (the objects themselves are not kept).
fn child_watch(client: &Client, ns: Option<&str>, kind: &ChildKind, config: &watcher::Config) -> MetaEvents {
    let ar = kind.api_resource();
    if kind.watch != Watch::OwnedSpecHash {
        let api: Api<PartialObjectMeta<DynamicObject>> = match ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        return watcher(api, config.clone()).modify(|m| trim_for_cache(&mut m.metadata)).default_backoff().boxed();
    }
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let kind = kind.kind;
    let meta = move |obj: DynamicObject| PartialObjectMeta {
        types: obj.types.clone(),
        metadata: crate::children::spec_hashed_meta(kind, &obj),
        _phantom: std::marker::PhantomData,
    };
    watcher(api, config.clone().page_size(FULL_OBJECT_PAGE))
        .default_backoff()
        .map(move |event| {
            use watcher::Event::*;
            event.map(|e| match e {
                Apply(o) => Apply(meta(o)),
                InitApply(o) => InitApply(meta(o)),
                Delete(o) => Delete(meta(o)),
                Init => Init,
                InitDone => InitDone,
            })
        })
        .boxed()
}

/// The watch of one registered child kind that also fills its compact cache.
fn cached(
    ctx: &Context,
    name: String,
    cache: Arc<ChildCache>,
    events: MetaEvents,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<DynamicObject>, watcher::Error>> + Send + 'static {
    // Status-only updates (an HPA reports metrics every 15 s, a PDB follows pod health) do not
    // concern us: the cache passes an update on only when the generation (or the spec hash of
    // kinds without one), labels, annotations or owners moved. Deletions always pass, so a
    // deleted child comes back at once; a relist passes only what changed while the watch was
    // down (objects deleted meanwhile leave the cache when the relist is done).
    reported(ctx, name, events).filter_map(move |event| {
        let out = match event {
            Err(e) => Some(Err(e)),
            Ok(event) => {
                let changed = cache.apply(&event);
                match event {
                    watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) | watcher::Event::Delete(obj)
                        if changed =>
                    {
                        Some(Ok(obj))
                    }
                    _ => None,
                }
            }
        };
        futures::future::ready(out)
    })
}

/// A watch event of an app read untyped, as an EmpactsApp; None drops an object this build
/// cannot read (after `report`).
pub fn typed(
    event: Result<watcher::Event<DynamicObject>, watcher::Error>,
    report: &dyn Fn(&DynamicObject, &serde_json::Error),
) -> Option<Result<watcher::Event<EmpactsApp>, watcher::Error>> {
    use watcher::Event::*;
    let read = |obj: DynamicObject| match serde_json::to_value(&obj).and_then(serde_json::from_value::<EmpactsApp>) {
        Ok(app) => Some(app),
        Err(error) => {
            report(&obj, &error);
            None
        }
    };
    let event = match event {
        Err(e) => return Some(Err(e)),
        Ok(Apply(obj)) => Apply(read(obj)?),
        Ok(InitApply(obj)) => InitApply(read(obj)?),
        // Never in the store if it could not be read: nothing to delete then.
        Ok(Delete(obj)) => Delete(read(obj)?),
        Ok(Init) => Init,
        Ok(InitDone) => InitDone,
    };
    Some(Ok(event))
}

/// Tell the app's owner (an Event on the object, a log line, a metric) why it is ignored.
fn unreadable(ctx: &Arc<Context>, obj: &DynamicObject, error: &serde_json::Error) {
    let (ns, name) = (obj.metadata.namespace.clone().unwrap_or_default(), obj.name_any());
    ctx.metrics.reconcile_errors.with_label_values(&["UnreadableSpec"]).inc();
    warn!(app = %name, namespace = %ns, %error, "EmpactsApp cannot be read by this operator version; skipped");
    let note = format!(
        "this EmpactsApp cannot be read by the operator ({error}); it was stored before the current CRD refused such values: fix the field (the CRD now says what it accepts) or delete and re-create the app"
    );
    let reference = obj.object_ref(&kube::api::ApiResource::erase::<EmpactsApp>(&()));
    let ctx = ctx.clone();
    tokio::spawn(async move {
        events::publish_on(&ctx, &reference, EventType::Warning, "UnreadableSpec", "Read", &note).await;
    });
}

/// Run the watches and reconciles until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(
    ctx: Arc<Context>,
    scope: Scope,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    run_sharded(ctx, scope, None, shutdown).await
}

/// [`run`] over the apps of the shards in `shard` only (None: every app).
pub async fn run_sharded(
    ctx: Arc<Context>,
    scope: Scope,
    shard: Option<crate::shard::Filter>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    ctx.readiness.progress.reset(Instant::now());
    ctx.set_shard(shard.clone());
    // Per-app series are the leader's view: when the controllers stop (or this future is
    // dropped, as on a lost Lease) they go, so a standby never exports stale ones.
    let _clear = ClearAppSeries(ctx.metrics.clone());
    // One queue for every watched namespace: the reconcile slots are the process's, handed out
    // in turn between namespaces.
    let work = Work::new(ctx.settings.concurrency);
    // Whether the Prometheus Operator's CRDs are installed, for as long as the controllers run.
    let crds = Box::pin(crate::monitoring::watch_crds(ctx.clone()));
    // A Prometheus Operator CRD installed or removed: every app (its monitoring objects).
    let monitoring = ctx.monitoring.changes().for_each({
        let work = work.clone();
        move |()| {
            work.trigger_all();
            futures::future::ready(())
        }
    });
    let namespaces: Vec<Option<String>> =
        if scope.namespaces.is_empty() { vec![None] } else { scope.namespaces.iter().cloned().map(Some).collect() };
    let watches = futures::future::join_all(
        namespaces.into_iter().map(|ns| watch_scope(ctx.clone(), ns, shard.clone(), work.clone())),
    );
    let watches = futures::future::join(watches, monitoring);
    info!(namespaces = ?scope.namespaces, "controller started");
    // The watches run while the reconciles run, and while they finish after `shutdown`.
    let reconciles = Box::pin(crate::work::run(work, ctx.clone(), shutdown));
    futures::future::select(reconciles, futures::future::select(Box::pin(watches), crds)).await;
    info!(namespaces = ?scope.namespaces, "controller stopped");
}

struct ClearAppSeries(Arc<crate::metrics::Metrics>);

impl Drop for ClearAppSeries {
    fn drop(&mut self) {
        self.0.apps.clear();
    }
}

/// What a watch event asks of the work queue.
enum Wake {
    Apps(Vec<AppId>),
    /// A watched Secret changed: the apps that read it.
    Secret {
        namespace: String,
        name: String,
    },
    Nothing,
}

/// The apps that own `obj` (by owner references to an EmpactsApp, as kube's `owns` read them).
fn owners<K: Resource>(obj: &K) -> Wake {
    let meta = obj.meta();
    let ns = meta.namespace.as_deref().unwrap_or_default();
    let (api_version, kind) = (EmpactsApp::api_version(&()), EmpactsApp::kind(&()));
    let apps = meta
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.api_version == api_version && o.kind == kind)
        .map(|o| AppId::new(ns, &o.name))
        .collect();
    Wake::Apps(apps)
}

type Wakes = futures::stream::BoxStream<'static, Result<Wake, watcher::Error>>;

/// The watches of one namespace (None: all namespaces): the apps go into `work`, the children
/// into their caches, and every change that concerns an app triggers its reconcile.
async fn watch_scope(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shard: Option<crate::shard::Filter>,
    work: Arc<Work>,
) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let scope_name = ns.unwrap_or("*");
    let ours = watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    let ours_whole = ours.clone().page_size(FULL_OBJECT_PAGE);
    let mut wakes: Vec<Wakes> = Vec::new();

    // The apps, read untyped and typed one by one: an object stored under an older, looser CRD
    // that this build cannot read is reported and skipped, instead of failing the whole list
    // (and every app of the scope with it).
    let ar = kube::api::ApiResource::erase::<EmpactsApp>(&());
    let untyped: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let report = ctx.clone();
    // A consistent list, in pages: "any" (resourceVersion 0) is served whole from the API
    // server's cache, ignoring the page size (10,000 apps in one response), and may be older
    // than what an earlier leader saw.
    let app_events = watcher(untyped, watcher::Config::default().page_size(FULL_OBJECT_PAGE))
        .modify(|app| crate::children::trim_app_for_cache(&mut app.metadata))
        .default_backoff()
        .filter_map(move |event| futures::future::ready(typed(event, &|obj, error| unreadable(&report, obj, error))))
        // Sharded: only this replica's apps enter the queue (so only they are reconciled).
        .filter_map(move |event| {
            futures::future::ready(match (&shard, event) {
                (Some(shard), Ok(event)) => shard.event(event).map(Ok),
                (_, event) => Some(event),
            })
        });
    let apps = AppEvents { ctx: ctx.clone(), work: work.clone(), namespace: namespace.clone(), listed: None };
    wakes.push(
        reported(&ctx, format!("EmpactsApp/{scope_name}"), app_events)
            .scan(apps, |apps, event| futures::future::ready(Some(event.map(|e| apps.apply(e)))))
            .boxed(),
    );

    // Registered children watched by metadata also fill caches that let a reconcile skip
    // applies that would change nothing (and tell whose object a name is).
    // Deployments and Jobs are cached with their status, which decides the rollout, and
    // without their pod templates' specs, which no reconcile reads.
    let deployments = Arc::new(ChildCache::<DeploymentRecord>::by_name());
    let jobs = Arc::new(ChildCache::<JobRecord>::by_instance());
    let mut stores =
        ChildStores { deployments: Some(deployments.clone()), jobs: Some(jobs.clone()), ..Default::default() };
    let deployment_events = reported(
        &ctx,
        format!("Deployment/{scope_name}"),
        watcher(api::<Deployment>(&client, ns), ours_whole.clone()).default_backoff(),
    )
    .inspect(move |event| {
        if let Ok(event) = event {
            deployments.apply_with(event, DeploymentRecord::of);
        }
    });
    wakes.push(deployment_events.touched_objects().map(|r| r.map(|d| owners(&d))).boxed());
    let job_events = reported(
        &ctx,
        format!("Job/{scope_name}"),
        watcher(api::<Job>(&client, ns), ours_whole.clone()).default_backoff(),
    )
    .inspect(move |event| {
        if let Ok(event) = event {
            jobs.apply_with(event, JobRecord::of);
        }
    });
    wakes.push(job_events.touched_objects().map(|r| r.map(|j| owners(&j))).boxed());
    // The ledger: its cache is read by every reconcile (with this process's own writes laid
    // over it, see `ledger_cache`), but a change of it triggers nothing: only this operator
    // writes marks, as the outcome of a reconcile. The list is a consistent read (the process
    // has just become leader), so the cache starts with every write of an earlier leader.
    let revisions = Arc::new(crate::ledger_cache::RevisionCache::by_instance());
    stores.revisions = Some(revisions.clone());
    let overlay = ctx.clone();
    let revision_events = reported(
        &ctx,
        format!("ControllerRevision/{scope_name}"),
        watcher(api::<ControllerRevision>(&client, ns), ours_whole.clone())
            .modify(crate::ledger_cache::compact)
            .default_backoff(),
    )
    .map(move |event| {
        event.map(|event| {
            revisions.apply_with(&event, crate::ledger_cache::RevisionRecord::of);
            // After the cache applied the event: drop the overlaid writes it now shows.
            overlay.ledger.observe(&event);
            Wake::Nothing
        })
    });
    wakes.push(revision_events.boxed());
    for kind in CHILD_KINDS.iter().filter(|k| k.cached()) {
        // ConfigMaps are named by content: a reconcile reads them by the app's instance label.
        let cache = Arc::new(if kind.kind == "ConfigMap" { ChildCache::by_instance() } else { ChildCache::by_name() });
        stores.stores.insert(kind.kind, cache.clone());
        let name = format!("{}/{scope_name}", kind.kind);
        let events = child_watch(&client, ns, kind, &ours);
        wakes.push(cached(&ctx, name, cache, events).map(|r| r.map(|m| owners(&m))).boxed());
    }

    // Secrets: only those labelled for watching (generated ones, and user Secrets labelled
    // `empacts.io/watch=true`); never every Secret of a namespace. Others are re-read at
    // each app's resync.
    let watched_secrets = watcher::Config::default().labels(&format!("{}=true", labels::WATCH));
    let secret_events = reported(
        &ctx,
        format!("Secret/{scope_name}"),
        // Metadata only (kube sends metadata-only requests for PartialObjectMeta): no Secret
        // value travels on the watch or stays in its cache.
        watcher(api::<PartialObjectMeta<Secret>>(&client, ns), watched_secrets).default_backoff(),
    );
    let secrets = Arc::new(ChildCache::by_name());
    stores.secrets = Some(secrets.clone());
    let secret_events = secret_events.inspect(move |event| {
        if let Ok(event) = event {
            secrets.apply(event);
        }
    });
    wakes.push(
        secret_events
            .touched_objects()
            .map(|r| r.map(|s| Wake::Secret { namespace: s.namespace().unwrap_or_default(), name: s.name_any() }))
            .boxed(),
    );
    // Set before any app enters the queue (the apps come from the watches polled below).
    ctx.set_stores(ns, stores);
    info!(namespace = scope_name, "watches started");
    futures::stream::select_all(wakes)
        .for_each(|wake| {
            match wake {
                Ok(Wake::Apps(apps)) => work.trigger(apps),
                Ok(Wake::Secret { namespace, name }) => work.trigger(work.reading_secret(&namespace, &name)),
                Ok(Wake::Nothing) => {}
                Err(e) => {
                    // A watch stream failed; the watcher re-establishes it with backoff.
                    ctx.metrics.watch_restarts.inc();
                    warn!(error = %e, "watch failed; restarting it");
                }
            }
            futures::future::ready(())
        })
        .await;
}

/// The apps' watch events into the work queue, and a deleted app's per-process state gone
/// with it. A relist (after the watch was down) drops the apps it no longer shows.
struct AppEvents {
    ctx: Arc<Context>,
    work: Arc<Work>,
    namespace: Option<String>,
    /// The apps a relist in progress has shown so far.
    listed: Option<std::collections::HashSet<AppId>>,
}

impl AppEvents {
    fn apply(&mut self, event: watcher::Event<EmpactsApp>) -> Wake {
        use watcher::Event::*;
        match event {
            Init => self.listed = Some(Default::default()),
            InitApply(app) | Apply(app) => {
                if let Some(listed) = self.listed.as_mut() {
                    listed.insert(AppId::of(&app));
                }
                self.work.app_changed(StoredApp::of(&app));
            }
            Delete(app) => self.gone(app.namespace().unwrap_or_default().as_str(), &app.name_any()),
            InitDone => {
                let listed = self.listed.take().unwrap_or_default();
                for app in self.work.apps_in(self.namespace.as_deref()) {
                    if !listed.contains(&app.id()) {
                        self.gone(app.namespace(), app.name());
                    }
                }
            }
        }
        Wake::Nothing
    }

    fn gone(&self, namespace: &str, name: &str) {
        self.work.app_gone(AppId::new(namespace, name));
        self.ctx.forget(&ObjectRef::new(name).within(namespace));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(spec: serde_json::Value) -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "empacts.io/v1alpha1", "kind": "EmpactsApp",
            "metadata": {"name": "a", "namespace": "ns"}, "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn an_unreadable_stored_app_is_reported_and_dropped_and_the_rest_pass() {
        let reported = std::cell::RefCell::new(Vec::new());
        let report =
            |obj: &DynamicObject, e: &serde_json::Error| reported.borrow_mut().push((obj.name_any(), e.to_string()));
        let good = stored(serde_json::json!({"image": "api:1"}));
        let bad = stored(serde_json::json!({"image": "api:1", "replicas": "many"}));
        let typed_good = typed(Ok(watcher::Event::InitApply(good)), &report);
        assert!(matches!(typed_good, Some(Ok(watcher::Event::InitApply(app))) if app.spec.image == "api:1"));
        assert!(typed(Ok(watcher::Event::Apply(bad.clone())), &report).is_none());
        assert!(typed(Ok(watcher::Event::Delete(bad)), &report).is_none());
        assert!(matches!(typed(Ok(watcher::Event::InitDone), &report), Some(Ok(watcher::Event::InitDone))));
        let reported = reported.into_inner();
        assert_eq!(reported.len(), 2);
        assert!(reported[0].1.contains("invalid type"), "{reported:?}");
    }
}
