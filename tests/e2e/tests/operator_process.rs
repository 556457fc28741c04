//! The operator as users run it: the `empacts run` process, its metrics, health endpoints,
//! leader election and graceful shutdown, against the real control plane.

use std::time::{Duration, Instant};

use empacts_api::Phase;
use empacts_e2e::*;
use k8s_openapi::api::coordination::v1::Lease;

const T: Duration = Duration::from_secs(90);

fn log_path(ns: &str, name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("empacts-e2e-{ns}-{name}.log"))
}

async fn holder(ns: &TestNamespace, lease: &str) -> Option<String> {
    ns.api::<Lease>().get_opt(lease).await.ok()??.spec?.holder_identity.filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints_follow_real_reconciles() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "metrics").await;
    let op = OperatorProcess::start(&env, "solo", &ns.name, "empacts", &log_path(&ns.name, "solo"));
    wait_until("/healthz", T, || async { op.get("/healthz").await.filter(|(c, _)| *c == 200) }).await;
    wait_until("/readyz", T, || async { op.get("/readyz").await.filter(|(c, _)| *c == 200) }).await;
    wait_until("leader", T, || async { (op.metric("empacts_leader").await? == 1.0).then_some(()) }).await;
    let before = op.metric("empacts_reconcile_total ").await.unwrap_or(0.0);

    let app = app_yaml(
        "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {name: api}\nspec: {image: 'registry.example.com/api:1.0.0', migration: {command: [up]}}\n",
    );
    apply_app(&ns, &app).await;
    wait_app(&ns, "api", "Ready", T, |a| phase(a) == Some(Phase::Ready)).await;
    wait_until("metrics move", T, || async {
        let ok = op.metric("empacts_reconcile_total ").await?;
        let ready = op.metric("empacts_apps{phase=\"Ready\"}").await?;
        let migrated = op.metric("empacts_migrations_total{kind=\"migrate\",result=\"succeeded\"}").await?;
        let generated = op.metric("empacts_reconcile_duration_seconds_count").await?;
        (ok > before && ready == 1.0 && migrated >= 1.0 && generated >= 1.0).then_some(())
    })
    .await;
    // The allocator as shipped: jemalloc, its embedded options in force (the background thread that
    // returns free pages runs only with `background_thread:true`).
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", op.child.id()))
        .expect("the operator's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect();
    assert!(threads.iter().any(|t| t == "jemalloc_bg_thd"), "no jemalloc background thread in {threads:?}");
    let (_, body) = op.get("/metrics").await.unwrap();
    assert!(body.contains("empacts_build_info{version="), "{body}");
    // Per-app series of the Ready app, process metrics unprefixed, the client's requests.
    let this_app = format!("app=\"api\",namespace=\"{}\"", ns.name);
    let ready = format!("empacts_app_ready{{{this_app}}} 1");
    wait_until("empacts_app_ready 1", T, || async { op.get("/metrics").await?.1.contains(&ready).then_some(()) }).await;
    let (_, body) = op.get("/metrics").await.unwrap();
    let info = metric_lines(&body, "empacts_app_info");
    let ours: Vec<&&str> = info.iter().filter(|l| l.contains(&this_app)).collect();
    assert_eq!(ours.len(), 1, "one app_info series per app: {info:?}");
    assert!(ours[0].contains("phase=\"Ready\",revision=\"") && !ours[0].contains("revision=\"\""), "{ours:?}");
    assert!(body.contains(&format!("empacts_app_stalled{{{this_app}}} 0")), "{body}");
    for name in ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"] {
        assert_eq!(metric_lines(&body, name).len(), 1, "{name} is exported unprefixed: {body}");
    }
    assert!(body.contains("empacts_kube_requests_total{code=\"200\",verb=\"list\"}"), "{body}");
    assert!(body.contains("empacts_kube_request_duration_seconds_count{verb=\"patch\"}"), "{body}");

    // Deleting the app removes every series that names it.
    ns.api::<empacts_api::EmpactsApp>().delete("api", &Default::default()).await.expect("the app deletes");
    let deadline = Instant::now() + T;
    loop {
        let (_, body) = op.get("/metrics").await.expect("/metrics answers");
        let stayed: Vec<&str> = body.lines().filter(|l| l.contains(&this_app)).collect();
        if stayed.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "series of the deleted app stayed for {T:?}: {stayed:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Structured logs: one JSON object per line, reconcile lines carry the app and namespace.
    let log = std::fs::read_to_string(log_path(&ns.name, "solo")).unwrap();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let phase_line = lines.iter().find(|l| l["message"] == "phase changed").expect("a phase change is logged");
    assert_eq!(phase_line["app"], "api");
    assert_eq!(phase_line["namespace"], ns.name.as_str());
    assert_eq!(phase_line["span"]["app"], "api");
    drop(op);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_replica_leads_and_a_standby_takes_over() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "leader").await;
    let a = OperatorProcess::start(&env, "replica-a", &ns.name, "empacts", &log_path(&ns.name, "a"));
    let first = wait_until("a leader", T, || async { holder(&ns, "empacts").await }).await;
    assert_eq!(first, "replica-a");
    let b = OperatorProcess::start(&env, "replica-b", &ns.name, "empacts", &log_path(&ns.name, "b"));
    wait_until("standby ready", T, || async { b.get("/readyz").await.filter(|(c, _)| *c == 200) }).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(a.metric("empacts_leader").await, Some(1.0));
    assert_eq!(b.metric("empacts_leader").await, Some(0.0), "the standby does not reconcile");
    assert_eq!(b.metric("empacts_reconcile_total ").await, Some(0.0));

    // Kill the leader hard: the standby takes over within the lease duration plus a few seconds.
    a.signal("KILL");
    let killed = Instant::now();
    wait_until("takeover", Duration::from_secs(40), || async {
        (holder(&ns, "empacts").await.as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(took <= Duration::from_secs(10 + 15), "takeover took {took:?}");
    wait_until("b leads", T, || async { (b.metric("empacts_leader").await? == 1.0).then_some(()) }).await;
    // And reconciles.
    let app = app_yaml(
        "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {name: api}\nspec: {image: 'registry.example.com/api:1.0.0'}\n",
    );
    apply_app(&ns, &app).await;
    wait_app(&ns, "api", "Ready under the new leader", T, |a| phase(a) == Some(Phase::Ready)).await;
    drop(a);
    drop(b);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_gracefully_and_releases_the_lease() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "sigterm").await;
    let mut op = OperatorProcess::start(&env, "only", &ns.name, "empacts", &log_path(&ns.name, "only"));
    wait_until("leader", T, || async { (holder(&ns, "empacts").await.as_deref() == Some("only")).then_some(()) }).await;
    op.signal("TERM");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = op.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "did not exit within the grace period");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "graceful exit: {status:?}");
    assert_eq!(holder(&ns, "empacts").await, None, "the lease is released for a fast hand-over");
    let log = std::fs::read_to_string(log_path(&ns.name, "only")).unwrap();
    assert!(log.lines().all(|l| l.starts_with('{')), "structured JSON logs");
    assert!(log.contains("lease released"), "{log}");
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_quickstart_brings_the_example_app_to_ready() {
    let (_env, client) = cluster().await;
    let ns = format!("quickstart-{:06}", rand::random::<u32>() % 1_000_000);
    let root = repo_root();
    let out = tokio::process::Command::new("bash")
        .arg(root.join("deploy/quickstart"))
        .env("EMPACTS_QUICKSTART_NAMESPACE", &ns)
        .output()
        .await
        .expect("quickstart runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "quickstart failed:\n{stdout}\n{stderr}");
    let line = stdout.lines().find(|l| l.starts_with("empacts-api")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.contains("Ready"), "kubectl get eapp shows Ready: {line}");
    let down = tokio::process::Command::new("bash")
        .arg(root.join("deploy/quickstart"))
        .arg("down")
        .env("EMPACTS_QUICKSTART_NAMESPACE", &ns)
        .output()
        .await
        .expect("quickstart down runs");
    assert!(down.status.success());
    let gone = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client).get_opt(&ns).await.unwrap();
    assert!(gone.is_none_or(|n| n.metadata.deletion_timestamp.is_some()), "down removes the demo namespace");
}
