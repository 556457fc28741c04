//! Safe to share: bounded failure against a faulty API server (hung responses, 429/5xx, 410 on
//! watches), node drains with migration Jobs, Secret watches that never cover every Secret,
//! and per-app state that goes with its app.

use std::time::{Duration, Instant};

use empacts_api::{EmpactsApp, Phase};
use empacts_e2e::fault_proxy::{Action, FaultProxy, FaultRule, Match};
use empacts_e2e::*;
use k8s_openapi::api::core::v1::{Event, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{DeleteParams, EvictParams, ListParams, Patch, PatchParams};

const T: Duration = Duration::from_secs(90);

fn app(name: &str, spec: &str) -> EmpactsApp {
    app_yaml(&format!("apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: {name}}}\nspec: {spec}\n"))
}

async fn ready(ns: &TestNamespace, name: &str) -> EmpactsApp {
    wait_app(ns, name, "Ready and current", T, |a| phase(a) == Some(Phase::Ready) && observed_current(a)).await
}

async fn scale(ns: &TestNamespace, name: &str, replicas: i32) {
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    ns.api::<EmpactsApp>().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

fn tmp(ns: &TestNamespace, name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("empacts-e2e-{}-{name}", ns.name))
}

/// The API server stops answering (every non-watch request hangs): each reconcile is abandoned
/// at its deadline and counted, /healthz turns unhealthy once nothing finished for the stall
/// timeout, one Warning Event is sent for the error (not one per retry), and the app converges
/// once the API server answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_api_server_abandons_reconciles_fails_liveness_and_recovers() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "hung").await;
    let proxy = FaultProxy::start(&env).await;
    let kubeconfig = tmp(&ns, "proxy.kubeconfig");
    proxy.kubeconfig(&kubeconfig);
    let log = tmp(&ns, "operator.log");
    let args = ["--reconcile-timeout", "3", "--stall-timeout", "8"];
    let op = OperatorProcess::start_single_args(&kubeconfig, "hung", &ns.name, &log, &args);
    apply_app(&ns, &app("api", "{image: 'registry.example.com/api:1.0.0', replicas: 1}")).await;
    ready(&ns, "api").await;
    assert_eq!(op.get("/healthz").await.map(|(c, _)| c), Some(200));

    let hang = proxy.add_rule(FaultRule::new(Match::any().watch(false), Action::Hang));
    let fault_at = Instant::now();
    scale(&ns, "api", 2).await; // directly: the watch (not hung) triggers a reconcile that hangs
    wait_until("a reconcile is abandoned at its deadline", T, || async {
        (op.metric("empacts_reconcile_deadline_exceeded_total").await? >= 1.0).then_some(())
    })
    .await;
    let abandoned_after = fault_at.elapsed();
    let (code, body) = wait_until("/healthz turns unhealthy", T, || async {
        op.get("/healthz").await.filter(|(code, _)| *code == 503)
    })
    .await;
    let unhealthy_after = fault_at.elapsed();
    assert!(body.contains("no reconcile finished"), "{code} {body}");
    // Still retrying, with backoff: more abandoned reconciles, far fewer than one per second.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let abandoned = op.metric("empacts_reconcile_deadline_exceeded_total").await.unwrap();
    let window = fault_at.elapsed().as_secs_f64();
    assert!(abandoned >= 2.0 && abandoned < window / 3.0, "{abandoned} abandoned in {window:.0}s");

    proxy.remove_rule(hang);
    let healed_at = Instant::now();
    wait_app(&ns, "api", "converged on 2 replicas", T, |a| {
        phase(a) == Some(Phase::Ready) && observed_current(a) && a.status.as_ref().and_then(|s| s.replicas) == Some(2)
    })
    .await;
    let converged_after = healed_at.elapsed();
    wait_until("/healthz is ok again", T, || async { op.get("/healthz").await.filter(|(c, _)| *c == 200) }).await;
    // One Warning Event for the error transition, not one per retry (Events sent while the API
    // server hung arrive once it answers; give them that time, then count).
    let events = wait_until("the DeadlineExceeded Event arrives", T, || async {
        let lp = ListParams::default().fields("involvedObject.name=api");
        let items: Vec<Event> = ns.api::<Event>().list(&lp).await.ok()?.items;
        let n = items.iter().filter(|e| e.reason.as_deref() == Some("DeadlineExceeded")).count();
        (n > 0).then_some(n)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lp = ListParams::default().fields("involvedObject.name=api");
    let items: Vec<Event> = ns.api::<Event>().list(&lp).await.unwrap().items;
    let deadline_events: i32 =
        items.iter().filter(|e| e.reason.as_deref() == Some("DeadlineExceeded")).map(|e| e.count.unwrap_or(1)).sum();
    assert_eq!(deadline_events, 1, "one Event per error transition ({events} seen first), {abandoned} retries");
    println!(
        "fault: all non-watch requests hang | first reconcile abandoned after {abandoned_after:?} | \
         /healthz 503 after {unhealthy_after:?} | converged {converged_after:?} after the API server answered"
    );
    // The operator never watched or listed Secrets it was not asked to watch.
    let unfiltered: Vec<String> = proxy
        .requests_matching(|r| r.method == "GET" && r.path_only().ends_with("/secrets"))
        .into_iter()
        .filter(|r| !r.path.contains("labelSelector=empacts.io%2Fwatch%3Dtrue"))
        .map(|r| r.path)
        .collect();
    assert!(unfiltered.is_empty(), "Secret lists/watches without the watch label selector: {unfiltered:?}");
    drop(op);
    drop(proxy);
    ns.cleanup().await;
}

/// 503s and 429s with Retry-After on every non-watch request for a while: the operator backs
/// off (it does not retry in a tight loop) and converges once the faults stop; a 410 Gone on the
/// Deployment watch does not stop the other watches from triggering reconciles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_back_off_and_a_broken_watch_does_not_freeze_the_others() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "errs").await;
    let proxy = FaultProxy::start(&env).await;
    let kubeconfig = tmp(&ns, "proxy.kubeconfig");
    proxy.kubeconfig(&kubeconfig);
    let log = tmp(&ns, "operator.log");
    let op = OperatorProcess::start_single(&kubeconfig, "errs", &ns.name, &log);
    apply_app(&ns, &app("api", "{image: 'registry.example.com/api:1.0.0', replicas: 1}")).await;
    ready(&ns, "api").await;

    // 500: the reconcile fails and the error policy backs off (1, 2, 4, 8 s, jittered down to at
    // least half), so at most ~7 attempts of up to 3 requests in 15 s. 503 and 429: kube's client itself retries
    // them with exponential backoff from 5 ms (honouring Retry-After) inside one reconcile,
    // which the reconcile deadline bounds; a tight loop would be hundreds of requests.
    let cases = [
        ("500", Action::status(500), 21, 2),
        ("503", Action::status(503), 40, 3),
        ("429 Retry-After 1", Action::status_retry_after(429, 1), 32, 2),
    ];
    for (fault, action, max_requests, want) in cases {
        // Every request but watches and Events: the reads come from caches, so these are the
        // writes of each attempt (a Deployment apply, the status) and the client's own retries.
        let requests = || {
            proxy
                .requests_matching(|r| !r.watch && !r.path.contains("/events") && !r.path.contains("coordination"))
                .len()
        };
        let rule = proxy.add_rule(FaultRule::new(Match::any().watch(false), action));
        let (start, before) = (Instant::now(), requests());
        scale(&ns, "api", want).await;
        tokio::time::sleep(Duration::from_secs(15)).await;
        let attempts = requests() - before;
        assert!(
            (1..=max_requests).contains(&attempts),
            "{fault}: {attempts} requests in 15 s (at most {max_requests})"
        );
        proxy.remove_rule(rule);
        let healed = Instant::now();
        wait_app(&ns, "api", "converged after the faults", T, |a| {
            observed_current(a) && a.status.as_ref().and_then(|s| s.replicas) == Some(want)
        })
        .await;
        println!(
            "fault: {fault} on every non-watch request for {:?} | {attempts} requests | converged {:?} after",
            start.elapsed(),
            healed.elapsed()
        );
    }

    // 410 Gone on every Deployment watch from the start of a fresh process (open watches are not
    // affected by new rules): the Deployment watcher relists in a loop, while the Service watch
    // still triggers reconciles (a deleted Service comes back).
    drop(op);
    let gone =
        proxy.add_rule(FaultRule::new(Match::any().watch(true).path_contains("/deployments"), Action::WatchExpired));
    let op = OperatorProcess::start_single(&kubeconfig, "errs-410", &ns.name, &log);
    wait_until("the Deployment watch meets the 410", T, || async { (proxy.rule_hits(gone)? >= 2).then_some(()) }).await;
    let deleted = Instant::now();
    ns.api::<Service>().delete("api", &DeleteParams::default()).await.unwrap();
    wait_until("the deleted Service comes back", T, || async {
        ns.api::<Service>().get_opt("api").await.ok()?.filter(|s| s.metadata.deletion_timestamp.is_none())
    })
    .await;
    println!(
        "fault: 410 Gone on every Deployment watch ({} times) | a deleted Service came back after {:?}",
        proxy.rule_hits(gone).unwrap_or_default(),
        deleted.elapsed()
    );
    proxy.remove_rule(gone);

    // A watch that cannot list (500 on every Deployment request) keeps /readyz unready, naming
    // the cache that is not current; it turns ready once the list succeeds.
    drop(op);
    let broken = proxy.add_rule(FaultRule::new(Match::any().path_contains("/deployments"), Action::status(500)));
    let op = OperatorProcess::start_single(&kubeconfig, "errs-500", &ns.name, &log);
    // Once the other watches synced, only the failing one is named (and stays named).
    let only_deployments =
        |code: u16, body: &str| code == 503 && body.contains("Deployment/") && !body.contains("Service/");
    wait_until("/readyz names only the failing watch", T, || async {
        op.get("/readyz").await.filter(|(code, body)| only_deployments(*code, body))
    })
    .await;
    for _ in 0..10 {
        let (code, body) = op.get("/readyz").await.unwrap();
        assert!(only_deployments(code, &body), "still unready for the failing watch only: {code} {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    proxy.remove_rule(broken);
    wait_until("/readyz is ok again", T, || async { op.get("/readyz").await.filter(|(c, _)| *c == 200) }).await;
    scale(&ns, "api", 1).await;
    wait_app(&ns, "api", "converged after the watch fault", T, |a| {
        observed_current(a) && a.status.as_ref().and_then(|s| s.replicas) == Some(1)
    })
    .await;
    drop(op);
    drop(proxy);
    ns.cleanup().await;
}

/// A node drain evicts an app's pod although the app ran a migration: the Job's pods carry none
/// of the labels the PDB selects, so the disruption controller can compute maxUnavailable
/// (a PDB selecting Job pods makes it fail and allow no eviction at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_is_allowed_for_an_app_with_a_migration_and_max_unavailable() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "drain").await;
    let op = Operator::start(&client, &ns.name).await;
    apply_app(
        &ns,
        &app(
            "api",
            "{image: 'registry.example.com/api:1.0.0', replicas: 2, migration: {command: [migrate]}, \
             disruption: {maxUnavailable: 1}}",
        ),
    )
    .await;
    ready(&ns, "api").await;
    let job_pods = ns.api::<Pod>().list(&ListParams::default().labels("empacts.io/app=api")).await.unwrap().items;
    assert!(!job_pods.is_empty(), "the migration Job's pod is still there (finished pods stay)");
    let selector = "app.kubernetes.io/name=api,app.kubernetes.io/instance=api";
    let selected = ns.api::<Pod>().list(&ListParams::default().labels(selector)).await.unwrap().items;
    assert!(selected.iter().all(|p| !p.labels().contains_key("empacts.io/app")), "Job pods are not selected");
    let pdb = wait_until("the PDB allows a disruption", T, || async {
        let pdb = ns.api::<PodDisruptionBudget>().get("api").await.ok()?;
        let status = pdb.status.clone()?;
        (status.disruptions_allowed >= 1).then_some(pdb)
    })
    .await;
    let status = pdb.status.unwrap();
    assert_eq!(status.expected_pods, 2, "the PDB counts the app's 2 pods, not the Job's");
    let victim = selected.iter().find(|p| p.metadata.deletion_timestamp.is_none()).unwrap().name_any();
    ns.api::<Pod>().evict(&victim, &EvictParams::default()).await.expect("eviction is allowed");
    // The finished migration Job, its result recorded in the ledger, expires (TTL controller).
    wait_until("the recorded migration Job gets a TTL", T, || async {
        let jobs = ns.api::<k8s_openapi::api::batch::v1::Job>().list(&ListParams::default()).await.ok()?.items;
        let ttl = jobs.first()?.spec.as_ref()?.ttl_seconds_after_finished?;
        (ttl == empacts_operator::apply::FINISHED_JOB_TTL_SECONDS).then_some(())
    })
    .await;
    op.stop().await;
    ns.cleanup().await;
}

/// Everything the process keeps per app (phases, counted Jobs, backoff, applied markers,
/// liveness) goes when the app is deleted: nothing grows with apps that no longer exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_app_state_is_pruned_when_apps_are_deleted() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "prune").await;
    let op = Operator::start(&client, &ns.name).await;
    for name in ["a", "b", "c"] {
        apply_app(&ns, &app(name, "{image: 'registry.example.com/api:1.0.0', migration: {command: [m]}}")).await;
    }
    for name in ["a", "b", "c"] {
        ready(&ns, name).await;
    }
    // Phases, counted migration Jobs, applied markers and liveness hold each app (backoff only
    // holds failing ones).
    let [phases, jobs, failing, applied, progress] = op.ctx.tracked();
    assert!([phases, jobs, applied, progress].iter().all(|n| *n == 3), "{:?}", op.ctx.tracked());
    assert_eq!(failing, 0);
    assert!(op.ctx.recorder.tracked() > 0, "the apps' Events are remembered for their series");
    for name in ["a", "b", "c"] {
        ns.api::<EmpactsApp>().delete(name, &DeleteParams::default()).await.unwrap();
    }
    wait_until("every per-app map and the Event cache are empty", T, || async {
        (op.ctx.tracked() == [0; 5] && op.ctx.recorder.tracked() == 0).then_some(())
    })
    .await;
    op.stop().await;
    ns.cleanup().await;
}

/// An app deleted while the apps' watch was down is dropped, with everything the process kept
/// of it, by the relist that follows (the delete event itself never arrives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_deleted_while_the_watch_was_down_goes_with_the_relist() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "relist").await;
    let proxy = FaultProxy::start(&env).await;
    let kubeconfig = tmp(&ns, "proxy.kubeconfig");
    proxy.kubeconfig(&kubeconfig);
    let first = Operator::start(&client, &ns.name).await;
    for name in ["a", "b"] {
        apply_app(&ns, &app(name, "{image: 'registry.example.com/api:1.0.0', replicas: 1}")).await;
    }
    for name in ["a", "b"] {
        ready(&ns, name).await;
    }
    first.stop().await;
    // A second process whose apps' watch hangs from its first request on: the list works (the
    // settled apps need no write), no event comes.
    let apps_watch = || Match::any().watch(true).path_contains("/empactsapps");
    let hang = proxy.add_rule(FaultRule::new(apps_watch(), Action::Hang));
    let op = Operator::start(&client_for(&kubeconfig).await, &ns.name).await;
    wait_until("both apps reconciled, the apps' watch waiting", T, || async {
        let [phases, _, _, _, progress] = op.ctx.tracked();
        (phases == 2 && progress == 2 && proxy.rule_hits(hang)? >= 1).then_some(())
    })
    .await;
    ns.api::<EmpactsApp>().delete("b", &DeleteParams::default()).await.unwrap();
    wait_until("b is gone", T, || async { ns.api::<EmpactsApp>().get_opt("b").await.ok()?.is_none().then_some(()) })
        .await;
    // The hung watch ends with 410 Gone: the watcher lists again.
    let gone = proxy.add_rule(FaultRule::new(apps_watch(), Action::WatchExpired).times(1));
    proxy.remove_rule(hang);
    wait_until("the relist dropped b and what the process kept of it", T, || async {
        let [phases, _, failing, _, progress] = op.ctx.tracked();
        (phases == 1 && progress == 1 && failing == 0).then_some(())
    })
    .await;
    assert_eq!(proxy.rule_hits(gone), Some(1), "the watch was expired once");
    let a = ns.api::<EmpactsApp>().get("a").await.unwrap();
    assert_eq!(phase(&a), Some(Phase::Ready), "a is untouched");
    op.stop().await;
    drop(proxy);
    ns.cleanup().await;
}

/// The README's way to restrict what the right to create an EmpactsApp grants: the example
/// ValidatingAdmissionPolicy, applied as shipped, refuses a foreign image, a LoadBalancer and a
/// Secret not named after the app in a restricted namespace, and admits a compliant app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_admission_policy_restricts_tenants() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "tenant").await;
    let policy = repo_root().join("deploy/policies/empacts-tenant-restrictions.yaml");
    let out = env.tool("kubectl").args(["apply", "-f"]).arg(&policy).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let label = serde_json::json!({"metadata": {"labels": {"empacts.io/tenant": "restricted"}}});
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    namespaces.patch(&ns.name, &PatchParams::default(), &Patch::Merge(&label)).await.unwrap();
    let api = ns.api::<EmpactsApp>();
    let dry = kube::api::PostParams { dry_run: true, ..Default::default() };
    let refused = |spec: &'static str, why: &'static str| {
        let api = api.clone();
        let dry = dry.clone();
        async move {
            // The policy takes effect a moment after it is created: retry until it refuses.
            wait_until(&format!("the policy refuses: {why}"), T, || async {
                match api.create(&dry, &app("api", spec)).await {
                    Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => Some(s.message),
                    _ => None,
                }
            })
            .await
        }
    };
    let m = refused("{image: 'docker.io/evil:1'}", "foreign image").await;
    assert!(m.contains("spec.image must come from registry.example.com/"), "{m}");
    let m = refused("{image: 'registry.example.com/api:1', service: {type: LoadBalancer}}", "LoadBalancer").await;
    assert!(m.contains("ClusterIP"), "{m}");
    let m = refused(
        "{image: 'registry.example.com/api:1', secrets: [{env: DB, secretKeyRef: {name: payments-db, key: url}}]}",
        "someone else's Secret",
    )
    .await;
    assert!(m.contains("secretKeyRef.name must start with"), "{m}");
    let ok = "{image: 'registry.example.com/api:1', secrets: [{env: DB, secretKeyRef: {name: api-db, key: url}}]}";
    api.create(&dry, &app("api", ok)).await.expect("a compliant app is admitted");
    let out = env.tool("kubectl").args(["delete", "--ignore-not-found", "-f"]).arg(&policy).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    ns.cleanup().await;
}

/// `--namespaces a,b`: one process drives apps in each listed namespace, with the caches of
/// each, and leaves an app in any other namespace alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_serves_exactly_the_listed_namespaces() {
    let (_env, client) = cluster().await;
    let (a, b, other) = tokio::join!(
        TestNamespace::new(&client, "ns-a"),
        TestNamespace::new(&client, "ns-b"),
        TestNamespace::new(&client, "ns-other")
    );
    let scope = empacts_operator::controller::Scope { namespaces: vec![a.name.clone(), b.name.clone()] };
    let op = Operator::start_scoped(&client, scope, &a.name, Default::default()).await;
    let spec =
        "{image: 'registry.example.com/api:1.0.0', migration: {command: [m]}, secrets: [{env: K, generate: {}}]}";
    for ns in [&a, &b, &other] {
        apply_app(ns, &app("api", spec)).await;
    }
    ready(&a, "api").await;
    ready(&b, "api").await;
    // Watched continuously while a and b converged and for 5 s after: nothing in `other`.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let untouched: EmpactsApp = other.api().get("api").await.unwrap();
        assert!(untouched.status.is_none(), "an app outside the listed namespaces got a status");
        let deployments = other.api::<k8s_openapi::api::apps::v1::Deployment>().list(&ListParams::default()).await;
        assert!(deployments.unwrap().items.is_empty(), "a Deployment appeared outside the listed namespaces");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    op.stop().await;
    for ns in [a, b, other] {
        ns.cleanup().await;
    }
}

/// A namespace whose caches cannot list (its Services refused) holds no reconcile slot: its
/// apps wait in the queue, and another namespace's app converges as if it were alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_whose_caches_cannot_list_holds_no_slot_from_the_others() {
    let (env, client) = cluster().await;
    let (broken, healthy) =
        tokio::join!(TestNamespace::new(&client, "unlisted"), TestNamespace::new(&client, "listed"));
    let spec = "{image: 'registry.example.com/api:1.0.0', replicas: 1}";
    for i in 0..4 {
        apply_app(&broken, &app(&format!("api-{i}"), spec)).await;
    }
    let proxy = FaultProxy::start(&env).await;
    let kubeconfig = tmp(&healthy, "proxy.kubeconfig");
    proxy.kubeconfig(&kubeconfig);
    let refused = Match::any().path_contains(format!("/namespaces/{}/services", broken.name));
    let rule = proxy.add_rule(FaultRule::new(refused, Action::status(500)));
    let scope = empacts_operator::controller::Scope { namespaces: vec![broken.name.clone(), healthy.name.clone()] };
    // Two slots, four apps in the namespace that cannot list: were they to take slots while
    // waiting for their caches, they would hold both for the reconcile deadline (60 s).
    let settings = empacts_operator::context::Settings { concurrency: 2, ..Default::default() };
    let proxied = client_for(&kubeconfig).await;
    let op = Operator::start_scoped(&proxied, scope, &healthy.name, settings).await;
    wait_until("the refused Service list", T, || async { (proxy.rule_hits(rule)? >= 1).then_some(()) }).await;
    let start = Instant::now();
    apply_app(&healthy, &app("api", spec)).await;
    ready(&healthy, "api").await;
    let took = start.elapsed();
    println!("an app in a listed namespace Ready after {took:?} beside 4 apps waiting for their caches");
    assert!(took < Duration::from_secs(30), "the healthy namespace waited {took:?}");
    for i in 0..4 {
        let waiting: EmpactsApp = broken.api().get(&format!("api-{i}")).await.unwrap();
        assert!(waiting.status.is_none(), "an app of the namespace whose caches never listed was reconciled");
    }
    op.stop().await;
    drop(proxy);
    broken.cleanup().await;
    healthy.cleanup().await;
}

/// A Secret lacking the referenced key: the status says which key is missing, and never which
/// keys the Secret has (an app author may not be allowed to read the Secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_is_reported_without_the_secrets_other_key_names() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "keys").await;
    let op = Operator::start(&client, &ns.name).await;
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "db"}, "stringData": {"admin-password": "x", "replica-user": "y"}
    }))
    .unwrap();
    ns.api::<k8s_openapi::api::core::v1::Secret>().create(&Default::default(), &secret).await.unwrap();
    let spec = "{image: 'registry.example.com/api:1.0.0', secrets: [{env: DB, secretKeyRef: {name: db, key: url}}]}";
    apply_app(&ns, &app("api", spec)).await;
    let stalled = wait_app(&ns, "api", "Stalled on the missing key", T, |a| phase(a) == Some(Phase::Stalled)).await;
    let cond = condition(&stalled, "Stalled").unwrap();
    assert_eq!(cond.reason, "SecretKeyNotFound");
    assert!(cond.message.contains("url"), "{}", cond.message);
    assert!(!cond.message.contains("admin-password") && !cond.message.contains("replica-user"), "{}", cond.message);
    op.stop().await;
    ns.cleanup().await;
}
