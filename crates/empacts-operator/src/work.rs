//! The reconcile loop: the watches' triggers go into the work queue ([`crate::queue`]), and
//! up to `--concurrency` reconciles run from it, polled by this one future (dropping it, as
//! on a lost Lease, stops every reconcile at once, as kube's Controller did).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;
use tracing::warn;

use crate::context::{AppId, Context, NamespaceId};
use crate::error::Error;
use crate::queue::WorkQueue;
use crate::stored_app::StoredApp;
use crate::{events, reconcile};

/// Quiet period before a triggered reconcile runs: a rollout touches several children at once
/// (ReplicaSet -> Deployment status, Job status, the app's own status); their triggers join
/// into one reconcile without delaying it much.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// The apps of the scope and when each is reconciled next.
pub struct Work {
    queue: Mutex<WorkQueue<Arc<StoredApp>>>,
    /// Something in the queue changed that may start a reconcile sooner.
    wake: Notify,
}

impl Work {
    pub fn new(concurrency: usize) -> Arc<Self> {
        Arc::new(Work { queue: Mutex::new(WorkQueue::new(concurrency)), wake: Notify::new() })
    }

    fn queue(&self) -> MutexGuard<'_, WorkQueue<Arc<StoredApp>>> {
        self.queue.lock().expect("work queue lock")
    }

    /// An app entered the scope or changed: kept as stored, reconciled after the quiet period.
    pub fn app_changed(&self, app: StoredApp) {
        let (id, namespace) = (app.id(), NamespaceId::new(app.namespace()));
        let mut queue = self.queue();
        queue.upsert(id, namespace, Arc::new(app));
        queue.trigger(id, Instant::now() + DEBOUNCE);
        drop(queue);
        self.wake.notify_one();
    }

    /// The app left the scope: nothing of it runs again (a reconcile of it running finishes).
    pub fn app_gone(&self, app: AppId) {
        self.queue().remove(app);
    }

    /// Reconcile these apps after the quiet period (apps not in the scope are skipped).
    pub fn trigger(&self, apps: impl IntoIterator<Item = AppId>) {
        let at = Instant::now() + DEBOUNCE;
        let mut queue = self.queue();
        let mut any = false;
        for app in apps {
            any |= queue.trigger(app, at);
        }
        drop(queue);
        if any {
            self.wake.notify_one();
        }
    }

    /// Reconcile every app of the scope after the quiet period.
    pub fn trigger_all(&self) {
        self.queue().trigger_all(Instant::now() + DEBOUNCE);
        self.wake.notify_one();
    }

    /// The apps of `namespace` whose spec reads its Secret `name`.
    pub fn reading_secret(&self, namespace: &str, name: &str) -> Vec<AppId> {
        let queue = self.queue();
        queue.items().filter(|(_, a)| a.namespace() == namespace && a.reads_secret(name)).map(|(id, _)| id).collect()
    }

    /// The apps kept of `namespace` (None: of all namespaces).
    pub fn apps_in(&self, namespace: Option<&str>) -> Vec<Arc<StoredApp>> {
        let queue = self.queue();
        queue.items().filter(|(_, a)| namespace.is_none_or(|ns| a.namespace() == ns)).map(|(_, a)| a.clone()).collect()
    }

    /// Apps kept.
    pub fn len(&self) -> usize {
        self.queue().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Run reconciles from `work` until `shutdown` resolves; then the running ones finish and
/// nothing new starts.
///
/// An app starts only once every cache of its namespace has listed: before that a child its
/// cache does not show yet may exist, and taken for absent it would be created, refused as
/// existing and reported as someone else's (a Stalled NameTaken flap), as at a restart over a
/// settled fleet, whose first triggers come with the apps' list while other kinds still list.
/// Such apps wait in the queue without a slot, so a namespace whose caches cannot list holds
/// no slot from the others; past the reconcile deadline they start and fail at once with
/// `CachesNotListed` (retried with backoff), naming the kinds.
pub async fn run(work: Arc<Work>, ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()>) {
    let mut running = FuturesUnordered::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let patience = Instant::now() + ctx.settings.reconcile_timeout;
    // Subscribed before the first check: a list done in between still wakes the loop.
    let mut lists_done = ctx.readiness.watches.lists_done();
    loop {
        let wake_at = {
            let mut queue = work.queue();
            let now = Instant::now();
            let listed =
                |stored: &Arc<StoredApp>| now >= patience || ctx.caches_not_listed(stored.namespace()).is_empty();
            while let Some((app, stored)) = queue.next_where(now, listed) {
                running.push(reconcile_one(app, stored, ctx.clone()));
            }
            ctx.metrics.reconciles_queued.set(queue.ready() as i64);
            // Due apps and free slots left: apps held back until their caches list, or the deadline.
            let held_back = queue.ready() > 0 && queue.running() < ctx.settings.concurrency && now < patience;
            queue.next_due().into_iter().chain(held_back.then_some(patience)).min()
        };
        let timer = async move {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(ended) = running.next(), if !running.is_empty() => work.done(&ctx, ended),
            _ = work.wake.notified() => {}
            // The sender lives in the context, as long as this loop.
            _ = lists_done.changed() => {}
            _ = timer => {}
        }
    }
    while let Some(ended) = running.next().await {
        work.done(&ctx, ended);
    }
}

/// A reconcile that ended.
struct Ended {
    app: AppId,
    stored: Arc<StoredApp>,
    /// When it runs next without a trigger.
    next: Option<Duration>,
}

impl Work {
    fn done(&self, ctx: &Context, ended: Ended) {
        let in_scope = self.queue().done(ended.app, Instant::now(), ended.next);
        if !in_scope {
            // The app left while its reconcile ran, which may have recorded it again after
            // the app's state was dropped: drop it now that nothing of it runs.
            ctx.forget(&ObjectRef::new(ended.stored.name()).within(ended.stored.namespace()));
        }
    }
}

/// One reconcile of `app`.
async fn reconcile_one(app: AppId, stored: Arc<StoredApp>, ctx: Arc<Context>) -> Ended {
    let waiting = ctx.caches_not_listed(stored.namespace());
    let result = if waiting.is_empty() {
        reconcile::reconcile(stored.clone(), ctx.clone()).await
    } else {
        // Started past the deadline (see `run`).
        Err(Error::CachesNotListed {
            namespace: stored.namespace().to_string(),
            waiting: waiting.join(", "),
            seconds: ctx.settings.reconcile_timeout.as_secs(),
        })
    };
    let next = match result {
        Ok(next) => next,
        Err(error) => Some(error_policy(&stored, &error, &ctx)),
    };
    Ended { app, stored, next }
}

/// Errors retry with per-app exponential backoff and jitter; the Warning Event goes out on
/// an error *transition* (the first error, or a different kind of error), not per retry.
fn error_policy(stored: &StoredApp, error: &Error, ctx: &Arc<Context>) -> Duration {
    let app = Arc::new(stored.app());
    let category = error.category();
    ctx.metrics.reconcile_errors.with_label_values(&[category]).inc();
    let (count, transition) = ctx.record_failure(&app, category);
    let delay = ctx.backoff(count);
    if error.answered() {
        // The reconcile ran to its end: progress, and the app waits again from its retry.
        ctx.readiness.progress.finished(stored.id(), Instant::now(), Some(delay));
    }
    warn!(app = %app.name_any(), namespace = app.namespace().unwrap_or_default(), category, error = %error, attempt = count, retry_in_ms = delay.as_millis() as u64, "reconcile error");
    if transition {
        let note = error.to_string();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let subject = events::Subject::App;
            events::publish(&ctx, &app, subject, EventType::Warning, category, "Reconcile", &note).await;
        });
    }
    delay
}
