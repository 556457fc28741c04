//! The revision ledger on the real control plane: decisions survive a lost status, a
//! down-migration counts, a lost migration Job is never re-run by itself, and a revision
//! that never ran a pod never becomes a rollback target.

use std::time::{Duration, Instant};

use empacts_api::{EmpactsApp, Phase};
use empacts_e2e::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};

const T: Duration = Duration::from_secs(90);

fn app(spec: &str) -> EmpactsApp {
    app_yaml(&format!("apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: api}}\nspec: {spec}\n"))
}

fn image_of(d: &Deployment) -> String {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].image.clone().unwrap()
}

async fn deployment_image(ns: &TestNamespace) -> Option<String> {
    ns.api::<Deployment>().get_opt("api").await.unwrap().map(|d| image_of(&d))
}

async fn jobs(ns: &TestNamespace, component: &str) -> Vec<Job> {
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/component={component}"));
    ns.api::<Job>().list(&lp).await.unwrap().items
}

fn ready(a: &EmpactsApp, image: &str) -> bool {
    phase(a) == Some(Phase::Ready) && a.spec.image == image && observed_current(a)
}

const V1: &str = "registry.example.com/api:1.0.0";
const BAD: &str = "registry.example.com/api:2.0.0-fail-rollout";

/// Watch for `window` that the Deployment never carries `image`; says what it watched.
async fn never_serves(ns: &TestNamespace, image: &str, window: Duration) {
    let start = Instant::now();
    let mut reads = 0;
    while start.elapsed() < window {
        let now = deployment_image(ns).await;
        assert_ne!(now.as_deref(), Some(image), "the failed image was served again after {:?}", start.elapsed());
        reads += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(reads >= 5, "watched the Deployment {reads} times over {window:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_status_changes_no_decision_and_is_rebuilt() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "lost-status").await;
    let op = Operator::start(&client, &ns.name).await;
    let v1 = app(&format!("{{image: '{V1}', rollout: {{progressDeadlineSeconds: 10}}}}"));
    apply_app(&ns, &v1).await;
    let first = wait_app(&ns, "api", "Ready on v1", T, |a| ready(a, V1)).await;
    let good = first.status.unwrap().current_revision.unwrap();
    let mut bad = v1.clone();
    bad.spec.image = BAD.into();
    apply_app(&ns, &bad).await;
    wait_app(&ns, "api", "RolledBack", T, |a| phase(a) == Some(Phase::RolledBack)).await;

    // The status is deleted (a restore, a CRD re-create): the failed image must not come back.
    let apps: Api<EmpactsApp> = ns.api();
    apps.patch_status("api", &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": null})))
        .await
        .unwrap();
    let cleared = apps.get("api").await.unwrap();
    assert!(cleared.status.as_ref().and_then(|s| s.phase).is_none(), "the status was really removed");
    never_serves(&ns, BAD, Duration::from_secs(12)).await;
    let rebuilt = wait_app(&ns, "api", "the status rebuilt", T, |a| {
        phase(a) == Some(Phase::RolledBack) && a.status.as_ref().unwrap().last_good_revision.is_some()
    })
    .await;
    let s = rebuilt.status.unwrap();
    assert_eq!(s.last_good_revision.as_deref(), Some(good.as_str()), "lastGood comes back from the ledger");
    assert_eq!(s.current_revision.as_deref(), Some(good.as_str()));
    assert!(s.failed_revision.is_some());
    assert!(s.history.len() >= 2, "history is a projection of the ledger: {:?}", s.history);
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_down_migration_migrates_again_before_rolling_out() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "retry-down").await;
    let op = Operator::start(&client, &ns.name).await;
    let v1 = app(&format!(
        "{{image: '{V1}', migration: {{command: [up], rollbackCommand: [down]}}, rollout: {{progressDeadlineSeconds: 10}}}}"
    ));
    apply_app(&ns, &v1).await;
    wait_app(&ns, "api", "Ready on v1", T, |a| ready(a, V1)).await;
    let mut bad = v1.clone();
    bad.spec.image = BAD.into();
    apply_app(&ns, &bad).await;
    let rolled = wait_app(&ns, "api", "RolledBack", T, |a| phase(a) == Some(Phase::RolledBack)).await;
    let failed = rolled.status.unwrap().failed_revision.unwrap();
    assert_eq!(jobs(&ns, "rollback-migration").await.len(), 1, "the down-migration ran");

    empacts_cli::commands::retry(&client, &ns.name, "api").await.unwrap();
    // The retried revision runs its migration again (attempt 2) before any of its pods.
    let job = wait_until("a second migration attempt", T, || async {
        let job = ns.api::<Job>().get_opt(&format!("api-migrate-{failed}")).await.ok()??;
        (job.annotations().get("empacts.io/attempt").map(String::as_str) == Some("2")).then_some(job)
    })
    .await;
    let created = job.metadata.creation_timestamp.clone().unwrap().0;
    // Fails again: the new down-migration must run too (a fresh rollback Job, attempt 2).
    let rolled = wait_app(&ns, "api", "RolledBack again", T, |a| {
        phase(a) == Some(Phase::RolledBack)
            && a.status.as_ref().and_then(|s| s.observed_retry.as_ref()).is_some()
            && a.metadata.generation == a.status.as_ref().unwrap().observed_generation
    })
    .await;
    let rollback = ns.api::<Job>().get(&format!("api-rollback-{failed}")).await.unwrap();
    assert_eq!(rollback.annotations().get("empacts.io/attempt").map(String::as_str), Some("2"));
    assert!(rollback.metadata.creation_timestamp.unwrap().0 > created, "undone after the second migration");
    assert_ne!(rolled.status.unwrap().current_revision.as_deref(), Some(failed.as_str()), "held on the good one");
    assert_eq!(deployment_image(&ns).await.as_deref(), Some(V1));
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_job_deleted_before_its_result_is_recorded_is_not_run_again() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "lost-job").await;
    let op = Operator::start(&client, &ns.name).await;
    // The migration pod runs for 5 minutes (kwok test annotation): it is deleted while running.
    let v1 = app(&format!(
        "{{image: '{V1}', migration: {{command: [up]}}, podAnnotations: {{testbed.empacts.dev/run-duration: 300s}}}}"
    ));
    apply_app(&ns, &v1).await;
    let job = wait_until("the migration Job", T, || async { jobs(&ns, "migration").await.into_iter().next() }).await;
    let bg = DeleteParams::background();
    ns.api::<Job>().delete(&job.name_any(), &bg).await.unwrap();
    let stalled = wait_app(&ns, "api", "Stalled MigrationJobLost", T, |a| {
        condition(a, "Stalled").is_some_and(|c| c.status == "True" && c.reason == "MigrationJobLost")
    })
    .await;
    assert!(condition(&stalled, "Stalled").unwrap().message.contains("empacts retry"));
    // Watched for 8 s: no new migration Job and no Deployment.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        let now = jobs(&ns, "migration").await;
        assert!(
            now.iter().all(|j| j.uid() == job.uid()),
            "a migration Job was created again: {:?}",
            now.iter().map(|j| j.uid()).collect::<Vec<_>>()
        );
        assert!(deployment_image(&ns).await.is_none(), "pods ran without a recorded migration");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_scaled_to_zero_never_becomes_the_rollback_target() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "zero").await;
    let op = Operator::start(&client, &ns.name).await;
    let v1 = app(&format!("{{image: '{V1}', replicas: 0, rollout: {{progressDeadlineSeconds: 10}}}}"));
    apply_app(&ns, &v1).await;
    let zero = wait_app(&ns, "api", "Ready at 0 replicas", T, |a| ready(a, V1)).await;
    assert_eq!(condition(&zero, "Ready").unwrap().reason, "ScaledToZero");
    assert_eq!(zero.status.unwrap().last_good_revision, None, "no pod ran: not good");
    let mut bad = v1.clone();
    bad.spec.image = BAD.into();
    bad.spec.replicas = Some(1);
    apply_app(&ns, &bad).await;
    let stalled = wait_app(&ns, "api", "Stalled NoGoodRevision", T, |a| {
        condition(a, "Stalled").is_some_and(|c| c.status == "True" && c.reason == "NoGoodRevision")
    })
    .await;
    assert_eq!(stalled.status.unwrap().last_good_revision, None);
    op.stop().await;
    ns.cleanup().await;
}

/// Two apps whose generated Secrets shared a name under the old scheme (`a-gen-b-gen-c`) each
/// get their own, with distinct values; neither touches the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_secret_names_never_collide_across_apps() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "collide").await;
    let op = Operator::start(&client, &ns.name).await;
    let named = |name: &str, env: &str| {
        app_yaml(&format!(
            "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: {name}}}\n\
             spec: {{image: '{V1}', secrets: [{{env: {env}, generate: {{}}}}]}}\n"
        ))
    };
    apply_app(&ns, &named("a", "B_GEN_C")).await;
    apply_app(&ns, &named("a-gen-b", "C")).await;
    for name in ["a", "a-gen-b"] {
        wait_app(&ns, name, "Ready", T, |a| phase(a) == Some(Phase::Ready) && observed_current(a)).await;
    }
    let secrets = ns.api::<k8s_openapi::api::core::v1::Secret>();
    let first = secrets.get("a.gen.b-gen-c").await.expect("a's secret");
    let second = secrets.get("a-gen-b.gen.c").await.expect("a-gen-b's secret");
    assert_ne!(first.uid(), second.uid());
    assert_ne!(
        first.data.as_ref().unwrap()["value"].0,
        second.data.as_ref().unwrap()["value"].0,
        "each app has its own value"
    );
    assert_eq!(first.owner_references()[0].name, "a");
    assert_eq!(second.owner_references()[0].name, "a-gen-b");
    op.stop().await;
    ns.cleanup().await;
}
