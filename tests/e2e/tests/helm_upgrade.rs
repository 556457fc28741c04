//! `helm upgrade` from the previous chart (CRD in crds/, which Helm never upgrades) to this one (CRD
//! as a template): the upgrade takes the CRD over, the API server then keeps a field the old CRD did
//! not have, and `helm uninstall` leaves the CRD and the apps (helm.sh/resource-policy: keep).
//!
//! The CRD is cluster-wide and shared by every test: both charts are copied and their CRD renamed
//! to a group of this test's own (`<namespace>.e2e.empacts.io`), so the testbed's CRD is untouched.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use empacts_e2e::helm::*;
use empacts_e2e::*;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, PostParams};
use kube::{Api, ResourceExt};

const T: Duration = Duration::from_secs(120);

/// The previous chart: the last commit before the API gained spec.ingress, networkPolicy, monitoring
/// and canary (1b17f35). HEAD's chart CRD before this chart change equalled the current CRD, so it
/// would not show a gained field; this one lacks spec.ingress.
const PREVIOUS_CHART_COMMIT: &str = "7d3625d";
const CRD_FILE: &str = "empactsapps.empacts.io.yaml";

/// The chart at `commit`, extracted with `git archive` into `dir`; returns the chart directory.
fn chart_at(commit: &str, dir: &Path) -> std::path::PathBuf {
    let archive = Command::new("git")
        .args(["archive", "--format=tar", commit, "charts/empacts-operator"])
        .current_dir(repo_root())
        .output()
        .expect("git runs");
    assert!(
        archive.status.success(),
        "git archive {commit} failed (a shallow clone? the test needs the history): {}",
        text(&archive)
    );
    let tar = dir.join("previous.tar");
    std::fs::write(&tar, &archive.stdout).unwrap();
    let out = Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(dir).output().expect("tar runs");
    assert!(out.status.success(), "{}", text(&out));
    dir.join("charts/empacts-operator")
}

/// Renames the CRD in `file` to `group` (its name and spec.group; nothing else names the group).
fn rename_group(file: &Path, group: &str) {
    let yaml = std::fs::read_to_string(file).unwrap();
    let renamed = yaml
        .replace("name: empactsapps.empacts.io\n", &format!("name: empactsapps.{group}\n"))
        .replace("  group: empacts.io\n", &format!("  group: {group}\n"));
    assert_eq!(renamed.matches(group).count(), 2, "{} names the group twice", file.display());
    std::fs::write(file, renamed).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    let out = Command::new("cp").arg("-r").arg(from).arg(to).output().expect("cp runs");
    assert!(out.status.success(), "{}", text(&out));
}

/// Uninstalls the release and deletes the test's CRD, also when the test fails half-way.
struct Cleanup {
    env: ClusterEnv,
    release: String,
    namespace: String,
    crd: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = helm(&self.env, &["uninstall", &self.release, "--namespace", &self.namespace]);
        let _ = kubectl(&self.env, &["delete", "crd", &self.crd, "--wait=false", "--ignore-not-found"]);
    }
}

fn app(name: &str, ingress: bool) -> serde_json::Value {
    let mut spec = serde_json::json!({"image": "registry.example.com/api:1.0.0", "port": 8080});
    if ingress {
        spec["ingress"] = serde_json::json!({"host": format!("{name}.example.com")});
    }
    serde_json::json!({ "spec": spec })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_from_the_previous_chart_upgrades_the_crd_and_uninstall_keeps_it() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "helmup").await;
    let group = format!("{}.e2e.empacts.io", ns.name);
    let crd_name = format!("empactsapps.{group}");
    let dir = std::env::temp_dir().join(format!("empacts-e2e-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let previous = chart_at(PREVIOUS_CHART_COMMIT, &dir);
    let old_crd = previous.join("crds").join(CRD_FILE);
    let old_text = std::fs::read_to_string(&old_crd).expect("the previous chart ships its CRD in crds/");
    assert!(!old_text.contains("ingress:"), "the previous chart's CRD must lack spec.ingress");
    rename_group(&old_crd, &group);
    let current = dir.join("current");
    copy_dir(&chart(), &current);
    rename_group(&current.join("files/crds").join(CRD_FILE), &group);

    let release = format!("e2e-{}", ns.name);
    let cleanup =
        Cleanup { env: env.clone(), release: release.clone(), namespace: ns.name.clone(), crd: crd_name.clone() };
    let watch = format!("watchNamespaces={{{}}}", ns.name);
    let sets = ["--set", &watch, "--set", "rbac.aggregatedRoles.create=false", "--set", "replicas=1"];
    let mut install = vec!["install", &release, previous.to_str().unwrap(), "--namespace", &ns.name];
    install.extend(sets);
    let out = helm(&env, &install);
    assert!(out.status.success(), "helm install of the previous chart failed:\n{}", text(&out));

    let resource = ApiResource {
        group: group.clone(),
        version: "v1alpha1".into(),
        api_version: format!("{group}/v1alpha1"),
        kind: "EmpactsApp".into(),
        plural: "empactsapps".into(),
    };
    let apps: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &resource);
    let object = |name: &str, ingress: bool| {
        let mut object = DynamicObject::new(name, &resource);
        object.data = app(name, ingress);
        object
    };
    // Control: the old schema prunes the unknown field silently.
    let before = wait_until("the previous CRD serves", T, || async {
        apps.create(&PostParams::default(), &object("before", true)).await.ok()
    })
    .await;
    assert!(before.data["spec"].get("ingress").is_none(), "the previous CRD keeps spec.ingress: {:?}", before.data);

    // The CRD came from crds/ without Helm's ownership metadata: a plain upgrade refuses to take it.
    let mut upgrade = vec!["upgrade", &release, current.to_str().unwrap(), "--namespace", &ns.name];
    upgrade.extend(sets);
    let out = helm(&env, &upgrade);
    assert!(!out.status.success(), "the upgrade must refuse a CRD it does not own");
    assert!(text(&out).contains("invalid ownership metadata"), "{}", text(&out));
    // As documented (README, "Helm chart"): the first upgrade from 0.1 takes ownership.
    upgrade.push("--take-ownership");
    let out = helm(&env, &upgrade);
    assert!(out.status.success(), "helm upgrade --take-ownership failed:\n{}", text(&out));

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds.get(&crd_name).await.expect("the CRD exists");
    assert_eq!(crd.annotations().get("helm.sh/resource-policy").map(String::as_str), Some("keep"));
    assert_eq!(crd.annotations().get("meta.helm.sh/release-name"), Some(&release), "the release owns the CRD");
    // The upgraded schema keeps the field: an app created with it (the API server switches to the new
    // schema shortly after the update; a copy pruned before that is deleted and created again) ...
    wait_until("an app created after the upgrade keeps spec.ingress", T, || async {
        let _ = apps.delete("after", &DeleteParams::default()).await;
        let created = apps.create(&PostParams::default(), &object("after", true)).await.ok()?;
        created.data["spec"].get("ingress").is_some().then_some(())
    })
    .await;
    // ... has it in storage.
    let stored = apps.get("after").await.expect("the app reads back");
    assert_eq!(stored.data["spec"]["ingress"]["host"].as_str(), Some("after.example.com"), "{:?}", stored.data);

    // Uninstall keeps the CRD, so the apps stay.
    let out = helm(&env, &["uninstall", &release, "--namespace", &ns.name]);
    assert!(out.status.success(), "helm uninstall failed:\n{}", text(&out));
    assert!(text(&out).contains("kept due to the resource policy"), "{}", text(&out));
    crds.get(&crd_name).await.expect("the CRD is kept");
    assert!(apps.get_opt("before").await.unwrap().is_some() && apps.get_opt("after").await.unwrap().is_some());

    drop(cleanup);
    std::fs::remove_dir_all(&dir).ok();
    ns.cleanup().await;
}
