//! Crash at every write: each lifecycle scenario runs once without faults, counting the
//! operator's writes at the fault proxy, then once per crash point k with the operator
//! process SIGKILLed right after its k-th write reached the API server (before it saw the
//! answer) and restarted. Every run must converge to the fault-free final state, create
//! each Job and generated Secret exactly once, rotate exactly as often as asked, never serve
//! a rolled-back image again and keep the last good revision.
//!
//! By default a spread of about 6 crash points per scenario runs (3 at a time, each in its
//! own namespace); `EMPACTS_CRASH_EXHAUSTIVE=1` runs every crash point.
//!
//! The same scenarios also run with the operator's watches of EmpactsApps and of the ledger
//! (ControllerRevisions) delayed by 2 s (a stale view) and with the status deleted every second
//! throughout (a lost status): both must end exactly as the fault-free run.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use empacts_api::{EmpactsApp, Phase};
use empacts_e2e::fault_proxy::{Action, FaultProxy, FaultRule, Match, RequestRecord};
use empacts_e2e::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

const T: Duration = Duration::from_secs(120);
const V1: &str = "registry.example.com/api:1.0.0";
const V2: &str = "registry.example.com/api:2.0.0";
const BAD: &str = "registry.example.com/api:3.0.0-fail-rollout";
const PARALLEL: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    InstallWithMigration,
    UpgradeWithMigration,
    RollbackWithCommand,
    RollbackWithoutCommand,
    RetryAfterDownMigration,
    Rotation,
    /// A canary (steps 50% for 2 s) promoted.
    CanaryPromote,
    /// A canary whose pods never become ready: aborted, its migration undone, the stable untouched.
    CanaryAbort,
}

impl Scenario {
    /// Jobs and generated Secrets created, rotations done, in a correct run.
    fn expected(self) -> (usize, usize, usize) {
        match self {
            Scenario::InstallWithMigration => (1, 1, 0),
            Scenario::UpgradeWithMigration => (2, 1, 0),
            Scenario::RollbackWithCommand => (3, 1, 0),
            Scenario::RollbackWithoutCommand => (2, 1, 0),
            Scenario::RetryAfterDownMigration => (5, 1, 0),
            Scenario::Rotation => (1, 1, 1),
            Scenario::CanaryPromote => (2, 1, 0),
            Scenario::CanaryAbort => (3, 1, 0),
        }
    }
}

fn app(image: &str, rollback_command: bool) -> EmpactsApp {
    app_with(image, rollback_command, false)
}

/// With the Canary strategy: 2 pods, one step at 50% for 2 s.
fn canary_app(image: &str) -> EmpactsApp {
    app_with(image, true, true)
}

fn app_with(image: &str, rollback_command: bool, canary: bool) -> EmpactsApp {
    let down = if rollback_command { ", rollbackCommand: [down]" } else { "" };
    let (replicas, strategy) =
        if canary { (", replicas: 2", ", strategy: Canary, steps: [{weight: 50, pause: 2s}]") } else { ("", "") };
    app_yaml(&format!(
        "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: api}}\nspec: {{image: '{image}'{replicas}, \
         secrets: [{{env: JWT, generate: {{}}}}], migration: {{command: [up]{down}}}, rollout: {{progressDeadlineSeconds: 10{strategy}}}}}\n"
    ))
}

/// One run of a scenario: its namespace, proxy and operator process.
struct Run {
    client: Client,
    ns: TestNamespace,
    proxy: FaultProxy,
    kubeconfig: PathBuf,
    log: PathBuf,
    op: OperatorProcess,
    restarts: usize,
    /// Images of the Deployment's template, in the order they appeared.
    images: Arc<Mutex<Vec<String>>>,
    watch: tokio::task::JoinHandle<()>,
}

impl Run {
    async fn start(env: &ClusterEnv, client: &Client, label: &str, fault: Fault) -> Run {
        let ns = TestNamespace::new(client, label).await;
        let proxy = FaultProxy::start(env).await;
        let dir = std::env::temp_dir().join(format!("empacts-crash-{}", ns.name));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        proxy.kubeconfig(&kubeconfig);
        let log = dir.join("operator.log");
        let op = OperatorProcess::start_single(&kubeconfig, &ns.name, &ns.name, &log);
        match fault {
            Fault::None | Fault::DeleteStatus => {}
            Fault::CrashAfter(k) => proxy.kill_after_write(k, op.child.id()),
            Fault::StaleView => {
                // The apps, the ledger and the caches of Deployments and Secrets all lag (a
                // Deployment or generated Secret the operator just created is not shown yet).
                for watched in STALE_WATCHES {
                    let _ = proxy.delay_watches(watched, Duration::from_secs(2));
                }
            }
        }
        let images = Arc::new(Mutex::new(Vec::new()));
        let seen = images.clone();
        let deployments: Api<Deployment> = ns.api();
        let watch = tokio::spawn(async move {
            let stream = watcher(deployments, watcher::Config::default()).applied_objects();
            let _ = stream
                .try_for_each(|d| {
                    // The stable Deployment only: a canary's image is not what the app serves.
                    let stable = d.metadata.name.as_deref() == Some("api");
                    let image = d
                        .spec
                        .filter(|_| stable)
                        .and_then(|s| s.template.spec)
                        .and_then(|p| p.containers[0].image.clone());
                    let mut seen = seen.lock().unwrap();
                    if let Some(image) = image
                        && seen.last() != Some(&image)
                    {
                        seen.push(image);
                    }
                    futures::future::ready(Ok(()))
                })
                .await;
        });
        Run { client: client.clone(), ns, proxy, kubeconfig, log, op, restarts: 0, images, watch }
    }

    /// Restart the operator if the proxy killed it.
    fn keep_alive(&mut self) {
        if self.op.exited() {
            self.restarts += 1;
            self.op = OperatorProcess::start_single(&self.kubeconfig, &self.ns.name, &self.ns.name, &self.log);
        }
    }

    async fn wait(&mut self, what: &str, pred: impl Fn(&EmpactsApp) -> bool) -> EmpactsApp {
        let api: Api<EmpactsApp> = self.ns.api();
        let start = Instant::now();
        loop {
            self.keep_alive();
            let app = api.get("api").await.ok();
            if let Some(app) = app.as_ref().filter(|a| pred(a) && observed_current(a)) {
                return app.clone();
            }
            if start.elapsed() > T {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "{}: timed out waiting for {what}; status: {:?}; crash points {:?}; operator log tail:\n{}",
                    self.ns.name,
                    app.and_then(|a| a.status),
                    self.proxy.crash_points(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn phase(&mut self, image: &str, phase: Phase) -> EmpactsApp {
        let image = image.to_string();
        self.wait(&format!("{phase} on {image}"), move |a| {
            empacts_e2e::phase(a) == Some(phase) && a.spec.image == image
        })
        .await
    }

    async fn secret(&self) -> Vec<u8> {
        let secret = self.ns.api::<Secret>().get("api.gen.jwt").await.expect("generated secret");
        secret.data.unwrap()["value"].0.clone()
    }

    fn count(&self, f: impl Fn(&RequestRecord) -> bool) -> usize {
        self.proxy.requests_matching(f).len()
    }
}

/// The watches a StaleView run delays.
const STALE_WATCHES: [&str; 4] = ["/empactsapps", "/controllerrevisions", "/deployments", "/secrets"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    CrashAfter(usize),
    /// The operator's watch events (apps, ledger, Deployments, Secrets) arrive 2 s late.
    StaleView,
    /// The status subresource is cleared every second until the scenario's last step is done.
    DeleteStatus,
}

/// Clear the app's status every second until dropped.
fn delete_status_repeatedly(api: Api<EmpactsApp>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let clear = serde_json::json!({"status": null});
            let _ = api.patch_status("api", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&clear)).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// What a run ended with.
#[derive(Debug, PartialEq)]
struct Outcome {
    phase: Option<Phase>,
    reason: String,
    image: String,
    current: Option<String>,
    last_good: Option<String>,
    jobs_created: usize,
    secrets_created: usize,
    rotations: usize,
}

struct Finished {
    outcome: Outcome,
    writes: usize,
    restarts: usize,
    crash_point: Option<RequestRecord>,
}

async fn run(env: &ClusterEnv, client: &Client, scenario: Scenario, fault: Fault) -> Finished {
    let label = match fault {
        Fault::None => "fault-none".to_string(),
        Fault::CrashAfter(k) => format!("crash-{k}"),
        Fault::StaleView => "stale-view".into(),
        Fault::DeleteStatus => "lost-status".into(),
    };
    let mut r = Run::start(env, client, &label, fault).await;
    let with_command = scenario != Scenario::RollbackWithoutCommand;
    let canary = matches!(scenario, Scenario::CanaryPromote | Scenario::CanaryAbort);
    apply_app(&r.ns, &if canary { canary_app(V1) } else { app(V1, with_command) }).await;
    let deleter = (fault == Fault::DeleteStatus).then(|| delete_status_repeatedly(r.ns.api()));
    r.phase(V1, Phase::Ready).await;
    match scenario {
        Scenario::InstallWithMigration => {}
        Scenario::UpgradeWithMigration => {
            apply_app(&r.ns, &app(V2, true)).await;
            r.phase(V2, Phase::Ready).await;
        }
        Scenario::RollbackWithCommand | Scenario::RetryAfterDownMigration => {
            apply_app(&r.ns, &app(BAD, true)).await;
            r.phase(BAD, Phase::RolledBack).await;
            if scenario == Scenario::RetryAfterDownMigration {
                let rolled_back = r.images.lock().unwrap().len();
                assert_no_bad_after_rollback(&r, &r.images.lock().unwrap()[..rolled_back]);
                let value = empacts_cli::commands::retry(&r.client, &r.ns.name, "api").await.unwrap();
                r.wait("RolledBack after the retry", |a| {
                    empacts_e2e::phase(a) == Some(Phase::RolledBack)
                        && a.status.as_ref().and_then(|s| s.observed_retry.as_deref()) == Some(value.as_str())
                })
                .await;
            }
        }
        Scenario::RollbackWithoutCommand => {
            apply_app(&r.ns, &app(BAD, false)).await;
            r.wait("Stalled without a rollbackCommand", |a| {
                condition(a, "Stalled")
                    .is_some_and(|c| c.status == "True" && c.reason == "RollbackNeedsRollbackCommand")
            })
            .await;
        }
        Scenario::CanaryPromote => {
            apply_app(&r.ns, &canary_app(V2)).await;
            r.phase(V2, Phase::Ready).await;
        }
        Scenario::CanaryAbort => {
            apply_app(&r.ns, &canary_app(BAD)).await;
            r.phase(BAD, Phase::RolledBack).await;
            let images = r.images.lock().unwrap().clone();
            assert!(
                !images.contains(&BAD.to_string()),
                "{}: the stable took the canary's image: {images:?}",
                r.ns.name
            );
        }
        Scenario::Rotation => {
            let before = r.secret().await;
            let value = empacts_cli::commands::rotate_secrets(&r.client, &r.ns.name, "api").await.unwrap();
            r.wait("the rotation acknowledged", |a| {
                a.status.as_ref().and_then(|s| s.observed_rotation.as_deref()) == Some(value.as_str())
                    && empacts_e2e::phase(a) == Some(Phase::Ready)
            })
            .await;
            assert_ne!(r.secret().await, before, "{}: the secret was rotated", r.ns.name);
        }
    }
    if matches!(scenario, Scenario::RollbackWithCommand | Scenario::RollbackWithoutCommand) {
        assert_no_bad_after_rollback(&r, &r.images.lock().unwrap());
    }
    if let Some(deleter) = deleter {
        deleter.abort();
        // The last deletion may land after the scenario's last wait: wait for the rebuilt status.
        r.wait("the status rebuilt", |a| a.status.as_ref().is_some_and(|s| s.phase.is_some())).await;
    }
    // Settled: give a crashed-and-restarted operator time to do anything it would still do. A
    // crash in that window (a late write) restarts the operator and settles again; the crash
    // point counts as fired only if it fired before the last check, when a restart could follow.
    let fired = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let restarts = r.restarts;
        let fired = r.proxy.crash_points().into_iter().next();
        if fired.is_some() && restarts == 0 {
            // The proxy kills before it answers: wait for the process to be gone.
            let start = Instant::now();
            while !r.op.exited() && start.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        r.keep_alive();
        if r.restarts == restarts {
            break fired;
        }
    };
    let app = r.ns.api::<EmpactsApp>().get("api").await.unwrap();
    let status = app.status.clone().unwrap_or_default();
    let ns = r.ns.name.clone();
    let jobs_path = format!("/apis/batch/v1/namespaces/{ns}/jobs");
    let secrets_path = format!("/api/v1/namespaces/{ns}/secrets");
    let outcome = Outcome {
        phase: status.phase,
        reason: condition(&app, "Stalled").map(|c| c.reason.clone()).unwrap_or_default(),
        image: r.images.lock().unwrap().last().cloned().unwrap_or_default(),
        current: status.current_revision,
        last_good: status.last_good_revision,
        jobs_created: r.count(|q| q.method == "POST" && q.path_only() == jobs_path && q.status == Some(201)),
        secrets_created: r.count(|q| q.method == "POST" && q.path_only() == secrets_path && q.status == Some(201)),
        rotations: r.count(|q| {
            q.method == "PUT" && q.path_only().starts_with(&format!("{secrets_path}/")) && q.status == Some(200)
        }),
    };
    // Only this operator writes the ledger here: a mark refused for its resourceVersion means
    // it decided on a ledger older than its own last write (a lagging cache not overlaid by
    // what it wrote). After a crash the new process lists fresh, so that never happens either.
    let revisions_path = format!("/apis/apps/v1/namespaces/{ns}/controllerrevisions/");
    let stale_marks: Vec<String> = r
        .proxy
        .requests()
        .iter()
        .filter(|q| q.method == "PATCH" && q.path_only().starts_with(&revisions_path) && q.status == Some(409))
        .map(|q| q.path_only().to_string())
        .collect();
    assert!(stale_marks.is_empty(), "{ns}: ledger marks decided on a stale ledger (409): {stale_marks:?}");
    // Likewise only this operator creates the Deployment: a create refused as existing means a
    // cache that did not show our own earlier create yet was taken for an absence (a
    // transient NameTaken a user would see).
    let deployments_path = format!("/apis/apps/v1/namespaces/{ns}/deployments");
    let refused_creates = r.count(|q| q.method == "POST" && q.path_only() == deployments_path && q.status == Some(409));
    assert_eq!(
        refused_creates, 0,
        "{ns}: Deployment creates refused as existing (409): a lagging cache read as absence"
    );
    if fault == Fault::StaleView {
        for watched in STALE_WATCHES {
            let delayed = r.count(|q| q.watch && q.path.contains(watched) && q.fault.is_some());
            assert!(delayed >= 1, "{}: the {watched} watch went through the delay rule", r.ns.name);
        }
    }
    let finished = Finished { writes: r.proxy.writes().len(), restarts: r.restarts, crash_point: fired, outcome };
    r.watch.abort();
    // Logs stay only for a run that failed (a panic above skips this).
    let _ = std::fs::remove_dir_all(r.kubeconfig.parent().unwrap());
    r.ns.cleanup().await;
    finished
}

/// Once the Deployment went back from the failed image, it never carries it again.
fn assert_no_bad_after_rollback(r: &Run, images: &[String]) {
    if let Some(first_bad) = images.iter().position(|i| i == BAD) {
        let after = &images[first_bad..];
        if let Some(back) = after.iter().position(|i| i != BAD) {
            assert!(!after[back..].contains(&BAD.to_string()), "{}: failed image served again: {images:?}", r.ns.name);
        }
    }
}

fn crash_points(total: usize) -> Vec<usize> {
    if std::env::var("EMPACTS_CRASH_EXHAUSTIVE").is_ok_and(|v| v == "1") {
        return (1..=total).collect();
    }
    let step = total.div_ceil(6).max(1);
    let mut points: Vec<usize> = (1..=total).step_by(step).collect();
    if points.last() != Some(&total) {
        points.push(total);
    }
    points
}

async fn every_crash_point(scenario: Scenario) {
    let (env, client) = cluster().await;
    let clean = run(&env, &client, scenario, Fault::None).await;
    let (jobs, secrets, rotations) = scenario.expected();
    let expected = &clean.outcome;
    assert_eq!(
        (expected.jobs_created, expected.secrets_created, expected.rotations),
        (jobs, secrets, rotations),
        "{scenario:?} without faults"
    );
    let points = crash_points(clean.writes);
    let runs: Vec<(usize, Finished)> = futures::stream::iter(points.clone())
        .map(|k| {
            let (env, client) = (env.clone(), client.clone());
            async move { (k, run(&env, &client, scenario, Fault::CrashAfter(k)).await) }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut crashed = 0;
    for (k, f) in &runs {
        let at = f.crash_point.as_ref().map(|c| format!("{} {} -> {:?}", c.method, c.path_only(), c.status));
        assert_eq!(&f.outcome, expected, "{scenario:?} crashed after write {k} ({at:?})");
        if f.crash_point.is_some() {
            crashed += 1;
            assert!(f.restarts >= 1, "{scenario:?} k={k}: the operator was restarted");
        }
    }
    println!(
        "{scenario:?}: {} writes without faults; {} crash points exercised ({crashed} fired), all converged: {points:?}",
        clean.writes,
        runs.len()
    );
    assert!(crashed >= runs.len().saturating_sub(1), "crash points fired: {crashed} of {}", runs.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_at_every_write_install_with_migration() {
    every_crash_point(Scenario::InstallWithMigration).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_at_every_write_upgrade_with_migration() {
    every_crash_point(Scenario::UpgradeWithMigration).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_at_every_write_failed_rollout_rollback_with_rollback_command() {
    every_crash_point(Scenario::RollbackWithCommand).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_at_every_write_failed_rollout_without_rollback_command() {
    every_crash_point(Scenario::RollbackWithoutCommand).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_at_every_write_retry_after_down_migration() {
    every_crash_point(Scenario::RetryAfterDownMigration).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_at_every_write_rotation() {
    every_crash_point(Scenario::Rotation).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_at_every_write_canary_promote() {
    every_crash_point(Scenario::CanaryPromote).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_at_every_write_canary_abort_with_rollback_command() {
    every_crash_point(Scenario::CanaryAbort).await;
}

/// A stale view (EmpactsApp watch events 2 s late) and a status deleted every second end
/// exactly as the fault-free run, for the scenarios whose decisions a stale or lost status
/// used to change.
async fn same_outcome_under(scenario: Scenario, faults: &[Fault]) {
    let (env, client) = cluster().await;
    let clean = run(&env, &client, scenario, Fault::None).await;
    let runs: Vec<(Fault, Finished)> = futures::stream::iter(faults.to_vec())
        .map(|fault| {
            let (env, client) = (env.clone(), client.clone());
            async move { (fault, run(&env, &client, scenario, fault).await) }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    for (fault, f) in &runs {
        assert_eq!(f.outcome, clean.outcome, "{scenario:?} under {fault:?}");
        assert_eq!(f.restarts, 0, "{scenario:?} under {fault:?}: the operator did not crash");
    }
    println!("{scenario:?}: same outcome as without faults under {faults:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_view_and_lost_status_rollback_with_rollback_command() {
    same_outcome_under(Scenario::RollbackWithCommand, &[Fault::StaleView, Fault::DeleteStatus]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_view_and_lost_status_retry_after_down_migration() {
    same_outcome_under(Scenario::RetryAfterDownMigration, &[Fault::StaleView, Fault::DeleteStatus]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_view_and_lost_status_upgrade_and_rotation() {
    same_outcome_under(Scenario::UpgradeWithMigration, &[Fault::StaleView, Fault::DeleteStatus]).await;
    same_outcome_under(Scenario::Rotation, &[Fault::StaleView, Fault::DeleteStatus]).await;
}

/// A settled app's reconcile (what each resync costs) sends no request at all: no write, and
/// no read — the ledger, the children and the watched generated Secret all come from caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settled_app_writes_nothing_and_reads_nothing_per_reconcile() {
    let (env, client) = cluster().await;
    let mut r = Run::start(&env, &client, "settled", Fault::None).await;
    let mut full = app(V1, true);
    full.spec.env = Some([("A".to_string(), "b".to_string())].into());
    apply_app(&r.ns, &full).await;
    r.phase(V1, Phase::Ready).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = r.proxy.requests().len();
    let reconciles_before = r.op.metric("empacts_reconcile_total").await.expect("operator metrics");
    let apps: Api<EmpactsApp> = r.ns.api();
    let touches = 5;
    for i in 0..touches {
        // An annotation the operator ignores: each change is one more reconcile of a settled app.
        let patch = serde_json::json!({"metadata": {"annotations": {"e2e/touch": i.to_string()}}});
        apps.patch("api", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let during: Vec<_> = r.proxy.requests().into_iter().skip(before).collect();
    let writes: Vec<_> =
        during.iter().filter(|q| q.counted_write).map(|q| format!("{} {}", q.method, q.path)).collect();
    assert!(writes.is_empty(), "a settled app wrote: {writes:?}");
    let reads: Vec<_> = during.iter().filter(|q| !q.mutating && !q.watch && !q.path.contains("coordination")).collect();
    let reconciles = r.op.metric("empacts_reconcile_total").await.expect("operator metrics") - reconciles_before;
    assert!(reconciles >= touches as f64, "each touch caused a reconcile: {reconciles} reconciles");
    let per = reads.len() as f64 / reconciles;
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for q in &reads {
        let path = q.path_only();
        let kind = path.split('/').rev().find(|s| s.ends_with('s') && !s.contains('.')).unwrap_or("?").to_string();
        *kinds.entry(format!("{} {kind}", q.method)).or_default() += 1;
    }
    println!("settled app: 0 writes; {per:.1} reads per reconcile over {reconciles} reconciles: {kinds:?}");
    // Its generated Secret is watched: its value was read once, and is not read again while
    // the watch shows it unchanged; the ledger comes from its cache.
    assert!(kinds.is_empty(), "a settled app's reconciles read: {kinds:?}");
    r.watch.abort();
    r.ns.cleanup().await;
}

/// An operator restart (an upgrade, a rescheduled pod) finds every child as it left it: the
/// new process has no record of its writes, yet it applies nothing again (its children carry
/// the hash of what it wrote, and no other manager's field ownership). Before, every child of
/// every app was applied again, and each create's field ownership upgraded: ~10 writes per app.
#[tokio::test]
async fn a_restarted_operator_writes_nothing_to_a_settled_app() {
    let (env, client) = cluster().await;
    let mut r = Run::start(&env, &client, "restarted", Fault::None).await;
    let mut full = app(V1, true);
    full.spec.env = Some([("A".to_string(), "b".to_string())].into());
    full.spec.autoscaling =
        Some(serde_json::from_value(serde_json::json!({"minReplicas": 1, "maxReplicas": 3, "targetCPU": 70})).unwrap());
    full.spec.disruption = Some(serde_json::from_value(serde_json::json!({"minAvailable": 1})).unwrap());
    apply_app(&r.ns, &full).await;
    r.phase(V1, Phase::Ready).await;
    // The HPA scaled the Deployment (through the scale subresource, under its own manager):
    // its entry owns spec.replicas, which the operator follows rather than undoes.
    let deployments: Api<Deployment> = r.ns.api();
    let hpa = PatchParams { field_manager: Some("horizontal-pod-autoscaler".into()), ..Default::default() };
    let scale = serde_json::json!({"spec": {"replicas": 2}});
    deployments.patch_scale("api", &hpa, &Patch::Merge(&scale)).await.expect("scale the Deployment");
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.op.child.kill().unwrap();
    r.op.child.wait().unwrap();
    let before = r.proxy.requests().len();
    r.op = OperatorProcess::start_single(&r.kubeconfig, &r.ns.name, &r.ns.name, &r.log);
    let start = Instant::now();
    while r.op.metric("empacts_reconcile_total").await.unwrap_or(0.0) < 1.0 {
        assert!(start.elapsed() < T, "the restarted operator reconciled the app");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Whatever its first reconcile wrote would trigger more: watch a while longer.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during: Vec<_> = r.proxy.requests().into_iter().skip(before).collect();
    let writes: Vec<_> =
        during.iter().filter(|q| q.counted_write).map(|q| format!("{} {}", q.method, q.path_only())).collect();
    let reconciles = r.op.metric("empacts_reconcile_total").await.expect("operator metrics");
    let reads: Vec<_> = during
        .iter()
        .filter(|q| !q.mutating && !q.watch && !q.path.contains("coordination"))
        .map(|q| format!("{} {} {:?}", q.method, q.path, q.status))
        .collect();
    println!(
        "restart: {reconciles} reconciles, {} writes, {} reads (lists of the caches included): {reads:#?}",
        writes.len(),
        reads.len()
    );
    assert!(writes.is_empty(), "the restarted operator wrote to a settled app: {writes:?}");
    r.watch.abort();
    r.ns.cleanup().await;
}

/// An install reads no child the caches already say is absent: before its first rollout an
/// app used to read its Deployment fresh in every reconcile (and its generated Secret until
/// created), each answered 404: ~7 wasted reads per app, ~70 s of a 1,000-app install at the
/// client's 100 requests/s. Only reads of what this process itself just wrote (the watch may
/// not show it yet) stay, and the one read of the name earlier builds gave a generated Secret
/// (they did not label it for the watch), before the Secret is created.
#[tokio::test]
async fn an_install_reads_nothing_the_caches_say_is_absent() {
    let (env, client) = cluster().await;
    let mut r = Run::start(&env, &client, "absent", Fault::None).await;
    let before = r.proxy.requests().len();
    apply_app(&r.ns, &app(V1, true)).await;
    r.phase(V1, Phase::Ready).await;
    let during: Vec<_> = r.proxy.requests().into_iter().skip(before).collect();
    let absent: Vec<_> = during
        .iter()
        .filter(|q| !q.mutating && !q.watch && q.status == Some(404))
        .filter(|q| !q.path_only().ends_with("/secrets/api-gen-jwt"))
        .map(|q| format!("{} {}", q.method, q.path_only()))
        .collect();
    let reads: Vec<_> = during
        .iter()
        .filter(|q| !q.mutating && !q.watch && !q.path.contains("coordination"))
        .map(|q| format!("{} {} {:?}", q.method, q.path_only(), q.status))
        .collect();
    println!("install: {} reads, {} of them answered 404: {reads:#?}", reads.len(), absent.len());
    assert!(absent.is_empty(), "the install read children the caches showed absent: {absent:?}");
    r.watch.abort();
    r.ns.cleanup().await;
}

/// The other side of trusting the listed Secret watch: a Secret made by hand under a generated
/// Secret's name, without the watch label, is not in the cache. The operator's create is
/// refused (it exists); from then on the name is read fresh, so the app runs with that value,
/// which is never overwritten.
#[tokio::test]
async fn a_secret_made_by_hand_under_a_generated_name_is_used_and_never_overwritten() {
    let (env, client) = cluster().await;
    let mut r = Run::start(&env, &client, "handmade", Fault::None).await;
    let secrets: Api<Secret> = r.ns.api();
    let handmade: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "api.gen.jwt"},
        "stringData": {"value": "made-by-hand"},
    }))
    .unwrap();
    secrets.create(&Default::default(), &handmade).await.expect("create the Secret by hand");
    apply_app(&r.ns, &app(V1, true)).await;
    r.phase(V1, Phase::Ready).await;
    let secret = secrets.get("api.gen.jwt").await.expect("the Secret");
    let value = secret.data.as_ref().and_then(|d| d.get("value")).map(|v| v.0.clone());
    assert_eq!(value.as_deref(), Some(&b"made-by-hand"[..]), "the hand-made value stays");
    assert!(secret.owner_references().is_empty(), "the operator did not adopt a Secret it did not make");
    let deployments: Api<Deployment> = r.ns.api();
    let deployment = deployments.get("api").await.expect("the Deployment");
    let env = serde_json::to_string(&deployment.spec.unwrap().template.spec.unwrap().containers[0].env).unwrap();
    assert!(env.contains("api.gen.jwt"), "the pods read the hand-made Secret: {env}");
    r.watch.abort();
    r.ns.cleanup().await;
}

/// A restarted process starts reconciling while its caches still list (an app's first trigger
/// arrives with the apps' list). A child whose cache has not listed yet is not absent: taken for
/// absent, it was created, refused as existing and reported as someone else's (a Stalled
/// NameTaken flap on a settled app, seen on 8 of 1,000 apps in the memory benchmark). The
/// restarted process here gets the Services' list 4 s late; over the 12 s after its start, every
/// request it sends is watched: no create is refused as existing and no status is written.
#[tokio::test]
async fn a_restart_whose_caches_still_list_takes_no_child_for_absent() {
    let (env, client) = cluster().await;
    let mut r = Run::start(&env, &client, "listing", Fault::None).await;
    apply_app(&r.ns, &app(V1, true)).await;
    r.phase(V1, Phase::Ready).await;
    // Settled: the Job's TTL and the last status write are done.
    tokio::time::sleep(Duration::from_secs(3)).await;
    r.op.child.kill().unwrap();
    r.op.child.wait().unwrap();
    let late_list = Match::any().watch(false).methods(["GET"]).path_contains("/services");
    let rule = r.proxy.add_rule(FaultRule::new(late_list, Action::Delay(Duration::from_secs(4))));
    let before = r.proxy.requests().len();
    r.op = OperatorProcess::start_single(&r.kubeconfig, &r.ns.name, &r.ns.name, &r.log);
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(r.proxy.rule_hits(rule).unwrap_or(0) >= 1, "the Services' list was held back");
    let after: Vec<_> = r.proxy.requests().into_iter().skip(before).collect();
    let refused: Vec<_> = after
        .iter()
        .filter(|q| q.method == "POST" && q.status == Some(409))
        .map(|q| q.path_only().to_string())
        .collect();
    let status_writes: Vec<_> =
        after.iter().filter(|q| q.mutating && q.path_only().ends_with("/status")).map(|q| q.path_only()).collect();
    println!(
        "restart: {} requests; creates refused as existing: {refused:?}; status writes: {status_writes:?}",
        after.len()
    );
    assert!(refused.is_empty(), "the restart created children its caches did not show yet: {refused:?}");
    assert!(status_writes.is_empty(), "the restart wrote the settled app's status: {status_writes:?}");
    let app = r.ns.api::<EmpactsApp>().get("api").await.expect("the app");
    assert_eq!(phase(&app), Some(Phase::Ready));
    r.watch.abort();
    r.ns.cleanup().await;
}

/// The other side of not counting a scale entry as a change: an app without autoscaling whose
/// Deployment was scaled while no operator ran gets its own replica count back at the restart.
#[tokio::test]
async fn a_restarted_operator_takes_back_a_replica_count_scaled_while_it_was_down() {
    let (env, client) = cluster().await;
    let mut r = Run::start(&env, &client, "rescaled", Fault::None).await;
    apply_app(&r.ns, &app(V1, true)).await;
    r.phase(V1, Phase::Ready).await;
    r.op.child.kill().unwrap();
    r.op.child.wait().unwrap();
    let deployments: Api<Deployment> = r.ns.api();
    let kubectl = PatchParams { field_manager: Some("kubectl".into()), ..Default::default() };
    let scale = serde_json::json!({"spec": {"replicas": 3}});
    deployments.patch_scale("api", &kubectl, &Patch::Merge(&scale)).await.expect("scale the Deployment");
    r.op = OperatorProcess::start_single(&r.kubeconfig, &r.ns.name, &r.ns.name, &r.log);
    let start = Instant::now();
    loop {
        let replicas = deployments.get("api").await.expect("the Deployment").spec.and_then(|s| s.replicas);
        if replicas == Some(1) {
            break;
        }
        assert!(start.elapsed() < T, "the restarted operator set the app's replica count back: {replicas:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    r.watch.abort();
    r.ns.cleanup().await;
}
