//! The `kubectl-empacts` plugin against the real control plane, run as users run it (a
//! process, also through kubectl's plugin lookup), with the operator in-process: outputs
//! parsed, `status --watch` ending on Ready and on a stall, `diff` of an image edit and of a
//! no-op, `-A`, exit codes, rollback and its resourceVersion precondition.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use empacts_api::{EmpactsApp, Phase, annotations};
use empacts_cli::error::{CONFLICT_MESSAGE, classify};
use empacts_e2e::*;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};

const T: Duration = Duration::from_secs(90);
const V1: &str = "registry.example.com/api:1.0.0";
const V2: &str = "registry.example.com/api:1.1.0";
const BAD: &str = "registry.example.com/api:2.0.0-fail-rollout";
/// An HPA child, so `diff` can show one the spec stops asking for.
const AUTOSCALING: &str = "autoscaling: {minReplicas: 2, maxReplicas: 3, targetCPU: 50}";
/// The stall test's progressDeadlineSeconds.
const DEADLINE: u64 = 10;

fn app_text(ns: &str, image: &str) -> String {
    format!(
        "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: api, namespace: {ns}}}\n\
         spec: {{image: '{image}', replicas: 2, secrets: [{{env: JWT, generate: {{}}}}], migration: {{command: [up]}}, \
         rollout: {{progressDeadlineSeconds: {DEADLINE}}}, {AUTOSCALING}}}\n"
    )
}

/// The plugin binary, built once per test process (a no-op when the workspace build made it).
fn plugin_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "--locked", "-p", "empacts-cli", "--bin", "kubectl-empacts"])
                .current_dir(repo_root())
                .status()
                .expect("cargo build runs");
            assert!(status.success(), "building kubectl-empacts failed");
            let dir =
                std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
            dir.join("debug").join("kubectl-empacts")
        })
        .clone()
}

/// Run the plugin (asynchronously: the in-process operator keeps running meanwhile).
async fn plugin(env: &ClusterEnv, args: &[&str]) -> Output {
    tokio::process::Command::new(plugin_binary())
        .args(args)
        .env("KUBECONFIG", &env.kubeconfig)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("kubectl-empacts runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn temp_dir(ns: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kubectl-plugin-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn apply_text(ns: &TestNamespace, text: &str) {
    apply_app(ns, &app_yaml(text)).await;
}

fn ready(a: &EmpactsApp, image: &str) -> bool {
    phase(a) == Some(Phase::Ready) && a.spec.image == image && observed_current(a)
}

/// The changed lines of a unified diff (no headers).
fn changed(diff: &str) -> Vec<&str> {
    diff.lines()
        .filter(|l| (l.starts_with('+') && !l.starts_with("+++")) || (l.starts_with('-') && !l.starts_with("---")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_diff_watch_to_ready_and_rollback() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "plugin").await;
    let op = Operator::start(&client, &ns.name).await;
    let dir = temp_dir(&ns.name);
    let n = ns.name.as_str();
    apply_text(&ns, &app_text(n, V1)).await;
    wait_app(&ns, "api", "v1 Ready", T, |a| ready(a, V1)).await;

    // get: a kubectl-like table, and a List of the objects.
    let out = plugin(&env, &["-n", n, "get"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = stdout(&out);
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["NAME", "PHASE", "REVISION", "READY", "STEP/MIGRATION", "AGE"], "{table}");
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(&rows[1][..5], ["api", "Ready", rows[1][2], "2/2", "-"], "{table}");
    let list: serde_json::Value =
        serde_json::from_slice(&plugin(&env, &["-n", n, "list", "-o", "json"]).await.stdout).unwrap();
    let items: Vec<EmpactsApp> = serde_json::from_value(list["items"].clone()).unwrap();
    assert_eq!((list["kind"].as_str(), items.len(), items[0].spec.image.as_str()), (Some("List"), 1, V1));

    // status: text, and the object as YAML; Ready exits 0.
    let out = plugin(&env, &["-n", n, "status", "api"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("EmpactsApp {n}/api")) && stdout(&out).contains("phase:            Ready"));
    let out = plugin(&env, &["-n", n, "status", "api", "-o", "yaml"]).await;
    let status: EmpactsApp = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(phase(&status), Some(Phase::Ready));
    let v1_revision = status.status.unwrap().current_revision.unwrap();
    assert_eq!(rows[1][2], v1_revision);

    // diff: nothing for the applied file, exactly the image change for an edit; no writes.
    let same = write(&dir, "same.yaml", &app_text(n, V1));
    let out = plugin(&env, &["diff", "-f", &same]).await;
    assert_eq!((out.status.code(), stdout(&out)), (Some(0), String::new()), "{}", stderr(&out));
    let edited = write(&dir, "edited.yaml", &app_text(n, V2));
    let out = plugin(&env, &["diff", "-f", &edited]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let diff = stdout(&out);
    let deployment = diff.split("--- ").find(|d| d.starts_with("live/Deployment/")).expect("the Deployment differs");
    let lines = changed(deployment);
    assert!(lines.contains(&format!("-        image: {V1}").as_str()), "{deployment}");
    assert!(lines.contains(&format!("+        image: {V2}").as_str()), "{deployment}");
    // Besides the image: only what the image decides (version label, revision name).
    assert!(
        lines
            .iter()
            .all(|l| l.contains("image: ") || l.contains("app.kubernetes.io/version: ") || l.contains("revision: ")),
        "{deployment}"
    );
    assert!(diff.contains("--- /dev/null\n+++ desired/Job/"), "the new revision's migration Job: {diff}");
    assert!(!diff.contains("kind: Secret"), "the generated Secret is unchanged: {diff}");
    // Dropping autoscaling: the HPA goes, whole, and nothing else changes, when the dry-run
    // applies as the manager that set autoscaling (apply_app's); under another it stays.
    let unscaled = write(&dir, "unscaled.yaml", &app_text(n, V1).replace(&format!(", {AUTOSCALING}"), ""));
    let out = plugin(&env, &["diff", "-f", &unscaled]).await;
    assert_eq!((out.status.code(), stdout(&out)), (Some(0), String::new()), "{}", stderr(&out));
    let out = plugin(&env, &["diff", "-f", &unscaled, "--field-manager", "e2e-gitops"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let diff = stdout(&out);
    assert!(diff.starts_with(&format!("--- live/HorizontalPodAutoscaler/{n}/api\n+++ /dev/null\n")), "{diff}");
    assert_eq!(diff.matches("\n--- ").count(), 0, "only the HPA differs: {diff}");
    let live: EmpactsApp = ns.api().get("api").await.unwrap();
    assert_eq!((live.spec.image.as_str(), live.metadata.generation), (V1, Some(1)), "diff wrote nothing");
    assert!(live.spec.autoscaling.is_some(), "diff wrote nothing");

    // status --watch through an upgrade: 0 once the new generation is Ready.
    apply_text(&ns, &app_text(n, V2)).await;
    let out = plugin(&env, &["-n", n, "status", "api", "--watch", "--timeout", "60s"]).await;
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    let watched = stdout(&out);
    assert!(watched.ends_with(&format!("{n}/api is Ready\n")), "{watched}");
    assert!(watched.contains("Migrating") || watched.contains("Progressing"), "the rollout was shown: {watched}");
    let now: EmpactsApp = ns.api().get("api").await.unwrap();
    assert!(ready(&now, V2), "the watch ended on the upgraded generation");

    // kubectl finds the plugin on PATH.
    let path = format!(
        "{}:{}:{}",
        plugin_binary().parent().unwrap().display(),
        env.bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new(env.bin_dir.join("kubectl"))
        .args(["empacts", "status", "api", "-n", n])
        .env("PATH", path)
        .env("KUBECONFIG", &env.kubeconfig)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("EmpactsApp {n}/api")), "{}", stdout(&out));

    // history as JSON, newest first.
    let out = plugin(&env, &["-n", n, "history", "api", "-o", "json"]).await;
    let history: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!((history[0]["image"].as_str(), history[0]["current"].as_bool()), (Some(V2), Some(true)));
    assert_eq!((history[1]["revision"].as_str(), history[1]["number"].as_i64()), (Some(v1_revision.as_str()), Some(1)));

    // rollback: a stale read is refused with one clear line; a fresh one is requested.
    let stale: EmpactsApp = ns.api().get("api").await.unwrap();
    let touch = serde_json::json!({"metadata": {"annotations": {"example.com/touched": "yes"}}});
    ns.api::<EmpactsApp>().patch("api", &PatchParams::default(), &Patch::Merge(&touch)).await.unwrap();
    let err = empacts_cli::commands::rollback_read(&client, &stale, "1").await.expect_err("a stale read is refused");
    let refused = classify(&err);
    assert_eq!((refused.exit_code(), refused.to_string()), (1, CONFLICT_MESSAGE.to_string()), "{err:#}");
    let annotated: EmpactsApp = ns.api().get("api").await.unwrap();
    assert!(!annotated.annotations().contains_key(annotations::ROLLBACK_TO), "nothing was written");
    let out = plugin(&env, &["-n", n, "rollback", "api", "--to", "1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("rollback to revision {v1_revision} requested")), "{}", stdout(&out));
    let annotated: EmpactsApp = ns.api().get("api").await.unwrap();
    let request = annotated.annotations().get(annotations::ROLLBACK_TO).cloned().unwrap_or_default();
    assert!(request.starts_with(&format!("{v1_revision}@")), "{request}");

    op.stop().await;
    ns.cleanup().await;
    std::fs::remove_dir_all(dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_exits_1_when_a_rollout_stalls_or_times_out() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "plugin-stall").await;
    let op = Operator::start(&client, &ns.name).await;
    let n = ns.name.as_str();
    apply_text(&ns, &app_text(n, V1)).await;
    wait_app(&ns, "api", "v1 Ready", T, |a| ready(a, V1)).await;

    apply_text(&ns, &app_text(n, BAD)).await;
    let start = Instant::now();
    // Well inside the progress deadline: the timeout ends the watch.
    let out = plugin(&env, &["-n", n, "status", "api", "-w", "--timeout", "2s"]).await;
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(stderr(&out), format!("error: timed out after 2s waiting for {n}/api to become Ready\n"));
    let out = plugin(&env, &["-n", n, "status", "api", "-w", "--timeout", "90s"]).await;
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).starts_with(&format!("error: {n}/api failed: phase ")), "{}", stderr(&out));
    assert!(took < Duration::from_secs(DEADLINE + 30), "stalled after {took:?}, deadline {DEADLINE}s");
    // Plain `status` of the failed app exits 1 too.
    let out = plugin(&env, &["-n", n, "status", "api"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not Ready"), "{}", stderr(&out));

    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_namespaces_and_exit_codes() {
    let (env, client) = cluster().await;
    let a = TestNamespace::new(&client, "plugin-a").await;
    let b = TestNamespace::new(&client, "plugin-b").await;
    for ns in [&a, &b] {
        apply_text(ns, &app_text(&ns.name, V1)).await;
    }

    let out = plugin(&env, &["get", "-A"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("NAMESPACE "), "{table}");
    for ns in [&a, &b] {
        assert!(table.lines().any(|l| l.split_whitespace().take(2).eq([ns.name.as_str(), "api"])), "{table}");
    }
    let out = plugin(&env, &["get", "-A", "-o", "yaml"]).await;
    let list: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let namespaces: Vec<&str> =
        list["items"].as_sequence().unwrap().iter().filter_map(|i| i["metadata"]["namespace"].as_str()).collect();
    assert!(namespaces.contains(&a.name.as_str()) && namespaces.contains(&b.name.as_str()), "{namespaces:?}");
    // Without -A: the namespace's apps only.
    let out = plugin(&env, &["get", "-n", &a.name]).await;
    assert!(!stdout(&out).contains(&b.name) && stdout(&out).contains("api"), "{}", stdout(&out));

    // A missing app: 4, one line, the API server's message.
    let out = plugin(&env, &["status", "nope", "-n", &a.name]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("\"nope\" not found"), "{}", stderr(&out));
    // A ServiceAccount without RBAC is forbidden: 3.
    let made = env.tool("kubectl").args(["create", "serviceaccount", "nobody", "-n", &a.name]).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let dir = temp_dir(&a.name);
    let kubeconfig = dir.join("kubeconfig");
    service_account_kubeconfig(&env, &a.name, "nobody", &kubeconfig);
    let out = plugin(&env, &["--kubeconfig", kubeconfig.to_str().unwrap(), "get"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).starts_with("error: listing EmpactsApps: forbidden: "), "{}", stderr(&out));

    a.cleanup().await;
    b.cleanup().await;
    std::fs::remove_dir_all(dir).ok();
}
