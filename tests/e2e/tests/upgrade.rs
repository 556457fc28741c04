//! Operator upgrade: apps settled by an earlier build (the commit in tests/e2e/upgrade-baseline,
//! built once from git into ~/.cache/empacts-operator-builds/<commit>) are taken over by this
//! build with no new revision, no Job, no pod roll, and an app that build had rolled back stays
//! rolled back (its facts are imported into the ledger once).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use empacts_api::{EmpactsApp, Phase};
use empacts_e2e::*;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::ListParams;

const T: Duration = Duration::from_secs(120);
const V1: &str = "registry.example.com/api:1.0.0";
const BAD: &str = "registry.example.com/api:2.0.0-fail-rollout";

/// The earlier build's `empacts` binary, built from git once and cached by commit.
fn baseline_binary() -> PathBuf {
    let root = repo_root();
    let commit = std::fs::read_to_string(root.join("tests/e2e/upgrade-baseline")).unwrap().trim().to_string();
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"))
        .join("empacts-operator-builds");
    let binary = cache.join(&commit).join("empacts");
    if binary.exists() {
        return binary;
    }
    let src = cache.join(&commit).join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).unwrap();
    let archive = Command::new("git")
        .args(["-C", root.to_str().unwrap(), "archive", "--format=tar", &commit])
        .output()
        .expect("git runs");
    assert!(
        archive.status.success(),
        "git archive {commit} failed (a shallow clone?): {}",
        String::from_utf8_lossy(&archive.stderr)
    );
    let mut tar = Command::new("tar")
        .args(["-x", "-C", src.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(tar.stdin.as_mut().unwrap(), &archive.stdout).unwrap();
    drop(tar.stdin.take());
    assert!(tar.wait().unwrap().success(), "tar -x failed");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = cache.join("target");
    let status = Command::new(cargo)
        .args(["build", "--locked", "-p", "empacts-cli", "--bin", "empacts"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the baseline operator {commit} failed");
    std::fs::copy(target.join("debug/empacts"), &binary).unwrap();
    let _ = std::fs::remove_dir_all(&src);
    binary
}

fn app(name: &str, spec: &str) -> EmpactsApp {
    app_yaml(&format!("apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: {name}}}\nspec: {spec}\n"))
}

/// Everything an upgrade must not change, per app.
async fn snapshot(ns: &TestNamespace) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for d in ns.api::<Deployment>().list(&ListParams::default()).await.unwrap() {
        let template = serde_json::to_string(&d.spec.as_ref().unwrap().template).unwrap();
        out.insert(format!("Deployment/{}", d.name_any()), format!("gen={:?} {template}", d.metadata.generation));
    }
    for j in ns.api::<Job>().list(&ListParams::default()).await.unwrap() {
        out.insert(format!("Job/{}", j.name_any()), j.uid().unwrap_or_default());
    }
    for c in ns.api::<ControllerRevision>().list(&ListParams::default()).await.unwrap() {
        out.insert(format!("ControllerRevision/{}", c.name_any()), c.uid().unwrap_or_default());
    }
    for s in ns.api::<Secret>().list(&ListParams::default().labels("empacts.io/generated-secret=true")).await.unwrap() {
        out.insert(format!("SecretRV/{}", s.name_any()), s.resource_version().unwrap_or_default());
    }
    out
}

async fn wait_phase(ns: &TestNamespace, name: &str, image: &str, phase: Phase) -> EmpactsApp {
    let image = image.to_string();
    wait_app(ns, name, &format!("{name} {phase}"), T, move |a| {
        empacts_e2e::phase(a) == Some(phase) && a.spec.image == image && observed_current(a)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_settled_by_the_previous_build_keep_their_revisions_jobs_and_pods() {
    let baseline = baseline_binary();
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "upgrade").await;
    let dir = std::env::temp_dir().join(format!("empacts-upgrade-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("operator.log");
    let mut old = OperatorProcess::start_single_with(&baseline, &env.kubeconfig, "old", &ns.name, &log);

    let full = app(
        "full",
        &format!(
            "{{image: '{V1}', replicas: 2, env: {{A: b}}, secrets: [{{env: JWT, generate: {{}}}}], \
             migration: {{command: [up]}}, autoscaling: {{minReplicas: 2, maxReplicas: 4, targetCPU: 70}}, \
             disruption: {{minAvailable: 1}}, probes: {{readiness: {{path: /r}}}}}}"
        ),
    );
    let minimal = app("minimal", &format!("{{image: '{V1}'}}"));
    let held = app(
        "held",
        &format!(
            "{{image: '{V1}', migration: {{command: [up], rollbackCommand: [down]}}, rollout: {{progressDeadlineSeconds: 10}}}}"
        ),
    );
    for a in [&full, &minimal, &held] {
        apply_app(&ns, a).await;
    }
    for name in ["full", "minimal", "held"] {
        wait_phase(&ns, name, V1, Phase::Ready).await;
    }
    let mut bad = held.clone();
    bad.spec.image = BAD.into();
    apply_app(&ns, &bad).await;
    wait_phase(&ns, "held", BAD, Phase::RolledBack).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = snapshot(&ns).await;
    let _ = old.child.kill();
    let _ = old.child.wait();

    let _new = OperatorProcess::start_single(&env.kubeconfig, "new", &ns.name, &log);
    // Watched for 15 s from the new build's start: nothing an upgrade must not change moves,
    // and the held app stays held.
    let start = Instant::now();
    let mut checks = 0;
    while start.elapsed() < Duration::from_secs(15) {
        let now = snapshot(&ns).await;
        let changed: Vec<&String> = now.keys().chain(before.keys()).filter(|k| now.get(*k) != before.get(*k)).collect();
        assert!(changed.is_empty(), "the upgrade changed {changed:?}\nbefore {before:#?}\nafter {now:#?}");
        let held_now: EmpactsApp = ns.api().get("held").await.unwrap();
        assert_ne!(
            held_now.status.as_ref().and_then(|s| s.phase),
            Some(Phase::Progressing),
            "the failed revision rolls again"
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(checks >= 5, "watched {checks} times");
    // The new build took over: every earlier revision is imported into its ledger.
    wait_until("the ledger imported", T, || async {
        let crs = ns.api::<ControllerRevision>().list(&ListParams::default()).await.ok()?;
        crs.items.iter().all(|c| c.annotations().contains_key("empacts.io/ledger")).then_some(())
    })
    .await;
    let held_now = wait_phase(&ns, "held", BAD, Phase::RolledBack).await;
    assert!(held_now.status.unwrap().last_good_revision.is_some(), "the last good revision came over");
    for name in ["full", "minimal"] {
        wait_phase(&ns, name, V1, Phase::Ready).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    ns.cleanup().await;
}
