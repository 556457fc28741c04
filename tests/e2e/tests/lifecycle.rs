//! End-to-end lifecycle scenarios on the real control plane (kwok nodes and pods).

use std::collections::BTreeMap;
use std::time::Duration;

use empacts_api::{EmpactsApp, Phase};
use empacts_e2e::*;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};

const T: Duration = Duration::from_secs(90);

fn app(name: &str, spec: &str) -> EmpactsApp {
    app_yaml(&format!("apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: {name}}}\nspec: {spec}\n"))
}

fn with_image(mut app: EmpactsApp, image: &str) -> EmpactsApp {
    app.spec.image = image.into();
    app
}

async fn deployment(ns: &TestNamespace, name: &str) -> Deployment {
    ns.api::<Deployment>().get(name).await.expect("Deployment exists")
}

fn image_of(d: &Deployment) -> String {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].image.clone().unwrap()
}

async fn ready_on(ns: &TestNamespace, name: &str, image: &str) -> EmpactsApp {
    let image = image.to_string();
    wait_app(ns, name, &format!("Ready on {image}"), T, move |a| {
        phase(a) == Some(Phase::Ready)
            && a.spec.image == image
            && observed_current(a)
            && condition(a, "Ready").is_some_and(|c| c.status == "True")
    })
    .await
}

async fn create_secret(ns: &TestNamespace, name: &str, key: &str, value: &str) {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name}, "stringData": {key: value}
    }))
    .unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &secret).await.expect("secret creates");
}

async fn events_of(ns: &TestNamespace, app: &str) -> Vec<Event> {
    let lp = ListParams::default().fields(&format!("involvedObject.name={app}"));
    ns.api::<Event>().list(&lp).await.map(|l| l.items).unwrap_or_default()
}

async fn wait_event(ns: &TestNamespace, app: &str, reason: &str) -> Event {
    wait_until(&format!("Event {reason}"), T, || async {
        events_of(ns, app).await.into_iter().find(|e| e.reason.as_deref() == Some(reason))
    })
    .await
}

/// Our managed-fields timestamps and the generation/resourceVersion of every child:
/// unchanged means the operator wrote nothing.
async fn write_fingerprint(ns: &TestNamespace) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mine = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        let ours: Vec<String> = meta
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| m.manager.as_deref() == Some("empacts-operator"))
            .map(|m| format!("{:?}/{:?}", m.operation, m.time.as_ref().map(|t| t.0.to_string())))
            .collect();
        format!("gen={:?} ours={ours:?}", meta.generation)
    };
    for d in ns.api::<Deployment>().list(&ListParams::default()).await.unwrap() {
        out.insert(format!("Deployment/{}", d.name_any()), mine(&d.metadata));
    }
    for s in ns.api::<Service>().list(&ListParams::default()).await.unwrap() {
        out.insert(format!("Service/{}", s.name_any()), format!("rv={:?}", s.resource_version()));
    }
    for s in ns.api::<ServiceAccount>().list(&ListParams::default()).await.unwrap() {
        out.insert(format!("ServiceAccount/{}", s.name_any()), format!("rv={:?}", s.resource_version()));
    }
    for c in ns.api::<ConfigMap>().list(&ListParams::default()).await.unwrap() {
        out.insert(format!("ConfigMap/{}", c.name_any()), format!("rv={:?}", c.resource_version()));
    }
    for s in ns.api::<Secret>().list(&ListParams::default()).await.unwrap() {
        out.insert(format!("Secret/{}", s.name_any()), format!("rv={:?}", s.resource_version()));
    }
    for p in ns.api::<PodDisruptionBudget>().list(&ListParams::default()).await.unwrap() {
        out.insert(format!("PDB/{}", p.name_any()), mine(&p.metadata));
    }
    for j in ns.api::<Job>().list(&ListParams::default()).await.unwrap() {
        out.insert(format!("Job/{}", j.name_any()), mine(&j.metadata));
    }
    for a in ns.api::<EmpactsApp>().list(&ListParams::default()).await.unwrap() {
        let status = serde_json::to_string(&a.status).unwrap();
        out.insert(format!("EmpactsApp/{}", a.name_any()), status);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_install_becomes_ready_and_a_noop_reconcile_writes_nothing() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "fresh").await;
    let op = Operator::start(&client, &ns.name).await;
    create_secret(&ns, "db", "url", "postgres://db/app").await;
    let spec = "{image: 'registry.example.com/api:1.0.0', replicas: 2, port: 3000, env: {NODE_ENV: production}, \
        secrets: [{env: JWT_SECRET, generate: {length: 64}}, {env: DATABASE_URL, secretKeyRef: {name: db, key: url}}], \
        probes: {readiness: {path: /ready}}, autoscaling: {minReplicas: 2, maxReplicas: 4, targetCPU: 70}, \
        disruption: {minAvailable: 1}, migration: {command: [migrate]}}";
    apply_app(&ns, &app("api", spec)).await;

    // kubectl wait works on the Ready condition.
    let out = env
        .tool("kubectl")
        .args(["wait", "--for=condition=Ready", "eapp/api", "-n", &ns.name, "--timeout=90s"])
        .output()
        .expect("kubectl runs");
    assert!(out.status.success(), "kubectl wait: {}", String::from_utf8_lossy(&out.stderr));

    let ready = ready_on(&ns, "api", "registry.example.com/api:1.0.0").await;
    let status = ready.status.clone().unwrap();
    assert_eq!(status.observed_generation, ready.metadata.generation);
    assert_eq!(status.ready_replicas, Some(2));
    assert_eq!(status.last_good_revision, status.desired_revision);
    assert_eq!(condition(&ready, "Reconciling").unwrap().status, "False");
    assert_eq!(condition(&ready, "Stalled").unwrap().status, "False");
    assert_eq!(condition(&ready, "MigrationComplete").unwrap().status, "True");

    // Every child exists and is owned by the app.
    let uid = ready.uid().unwrap();
    let owned = |refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>| {
        refs.is_some_and(|r| r.iter().any(|o| o.uid == uid && o.controller == Some(true)))
    };
    let d = deployment(&ns, "api").await;
    assert!(owned(d.metadata.owner_references.as_ref()));
    assert!(owned(ns.api::<Service>().get("api").await.unwrap().metadata.owner_references.as_ref()));
    assert!(owned(ns.api::<ServiceAccount>().get("api").await.unwrap().metadata.owner_references.as_ref()));
    assert!(owned(ns.api::<PodDisruptionBudget>().get("api").await.unwrap().metadata.owner_references.as_ref()));
    let hpa: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> = ns.api();
    assert_eq!(hpa.get("api").await.unwrap().spec.unwrap().max_replicas, 4);
    let jwt = ns.api::<Secret>().get("api.gen.jwt-secret").await.unwrap();
    let jwt_value = String::from_utf8(jwt.data.unwrap()["value"].0.clone()).unwrap();
    assert_eq!(jwt_value.len(), 64);
    wait_event(&ns, "api", "SecretGenerated").await;
    for event in events_of(&ns, "api").await {
        assert!(!event.message.unwrap_or_default().contains(&jwt_value), "a secret value leaked into an Event");
    }
    let status = serde_json::to_string(&ns.api::<EmpactsApp>().get("api").await.unwrap().status).unwrap();
    assert!(!status.contains(&jwt_value) && !status.contains("postgres://"), "no secret value in status");

    // Several reconciles of an unchanged app (forced by touching an unrelated annotation) write nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = write_fingerprint(&ns).await;
    let applies = |result: &str| {
        ["ServiceAccount", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
            .iter()
            .map(|kind| op.metrics.child_applies.with_label_values(&[*kind, result]).get())
            .sum::<u64>()
    };
    let (sent_before, skipped_before) = (applies("applied"), applies("skipped"));
    let apps: Api<EmpactsApp> = ns.api();
    for i in 0..3 {
        let patch = serde_json::json!({"metadata": {"annotations": {"e2e/touch": i.to_string()}}});
        apps.patch("api", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let after = write_fingerprint(&ns).await;
    assert_eq!(before, after, "a no-op reconcile must not write any child or the status");
    assert_eq!(applies("applied"), sent_before, "not even a no-op apply request is sent");
    assert!(applies("skipped") >= skipped_before + 6 * 3, "each of the 3 reconciles skipped its 6 applies");
    assert!(op.metrics.reconciles.get() >= 3, "the 3 reconciles are counted");

    // Drift is taken back: a hand-edited image, an edited Service port and a deleted
    // ServiceAccount are restored.
    let image_patch =
        serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "evil:1"}]}}}});
    ns.api::<Deployment>().patch("api", &PatchParams::default(), &Patch::Strategic(&image_patch)).await.unwrap();
    wait_until("image restored", T, || async {
        (image_of(&deployment(&ns, "api").await) == "registry.example.com/api:1.0.0").then_some(())
    })
    .await;
    let svc_patch = serde_json::json!({"spec": {"ports": [{"name": "http", "port": 9999, "protocol": "TCP", "targetPort": "http"}]}});
    ns.api::<Service>().patch("api", &PatchParams::default(), &Patch::Merge(&svc_patch)).await.unwrap();
    ns.api::<ServiceAccount>().delete("api", &DeleteParams::default()).await.unwrap();
    wait_until("drift corrected", T, || async {
        let svc = ns.api::<Service>().get("api").await.ok()?;
        let port = svc.spec?.ports?.first()?.port;
        let sa = ns.api::<ServiceAccount>().get_opt("api").await.ok()?;
        (port == 80 && sa.is_some()).then_some(())
    })
    .await;

    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_runs_the_migration_before_the_rollout() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "upgrade").await;
    let op = Operator::start(&client, &ns.name).await;
    // Migration pods run for 4 s (kwok test annotation), long enough to watch the gate hold.
    let v1 = app(
        "api",
        "{image: 'registry.example.com/api:1.0.0', replicas: 2, migration: {command: [migrate]}, \
         podAnnotations: {testbed.empacts.dev/run-duration: 4s}}",
    );
    apply_app(&ns, &v1).await;
    let first = ready_on(&ns, "api", "registry.example.com/api:1.0.0").await;
    let rev1 = first.status.unwrap().current_revision.unwrap();

    apply_app(&ns, &with_image(v1, "registry.example.com/api:2.0.0")).await;
    let migrating =
        wait_app(&ns, "api", "Migrating", T, |a| phase(a) == Some(Phase::Migrating) && observed_current(a)).await;
    assert_eq!(condition(&migrating, "MigrationComplete").unwrap().status, "Unknown");
    assert_eq!(
        image_of(&deployment(&ns, "api").await),
        "registry.example.com/api:1.0.0",
        "no rollout before the migration"
    );
    let second = ready_on(&ns, "api", "registry.example.com/api:2.0.0").await;
    let status = second.status.unwrap();
    let rev2 = status.current_revision.clone().unwrap();
    assert_ne!(rev1, rev2);
    assert_eq!(status.history.len(), 2);
    assert!(status.history[0].migrated);

    // The migration Job ran the new image and finished before the new ReplicaSet existed.
    let job = ns.api::<Job>().get(&format!("api-migrate-{rev2}")).await.expect("one Job for the revision");
    let pod_spec = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod_spec.containers[0].image.as_deref(), Some("registry.example.com/api:2.0.0"));
    let done = job.status.unwrap().completion_time.expect("Job completed").0;
    let rs = ns.api::<ReplicaSet>().list(&ListParams::default()).await.unwrap();
    let new_rs = rs
        .items
        .iter()
        .find(|r| {
            r.spec.as_ref().unwrap().template.as_ref().unwrap().spec.as_ref().unwrap().containers[0].image.as_deref()
                == Some("registry.example.com/api:2.0.0")
        })
        .expect("a ReplicaSet for 2.0.0");
    let rs_created = new_rs.creation_timestamp().unwrap().0;
    assert!(rs_created >= done, "the rollout started ({rs_created}) only after the migration finished ({done})");
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_migration_keeps_the_old_version_serving() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "migfail").await;
    let op = Operator::start(&client, &ns.name).await;
    let v1 = app(
        "api",
        "{image: 'registry.example.com/api:1.0.0', replicas: 2, migration: {command: [migrate], backoffLimit: 0}}",
    );
    apply_app(&ns, &v1).await;
    ready_on(&ns, "api", "registry.example.com/api:1.0.0").await;

    apply_app(&ns, &with_image(v1.clone(), "registry.example.com/api:2.0.0-fail-migration")).await;
    let failed = wait_app(&ns, "api", "MigrationFailed", T, |a| phase(a) == Some(Phase::MigrationFailed)).await;
    let status = failed.status.clone().unwrap();
    let job = status.migration.as_ref().unwrap().job.clone();
    assert!(job.starts_with("api-migrate-"));
    assert_eq!(status.failed_revision, status.desired_revision);
    let stalled = condition(&failed, "Stalled").unwrap();
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "MigrationFailed"));
    assert!(stalled.message.contains(&job), "the message names the Job: {}", stalled.message);
    assert_eq!(condition(&failed, "MigrationComplete").unwrap().status, "False");
    assert_eq!(condition(&failed, "Ready").unwrap().status, "False");
    wait_event(&ns, "api", "MigrationFailed").await;

    // The old version still serves, and stays (no retry without a new spec).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let d = deployment(&ns, "api").await;
    assert_eq!(image_of(&d), "registry.example.com/api:1.0.0");
    assert_eq!(d.status.unwrap().ready_replicas, Some(2));
    let jobs =
        ns.api::<Job>().list(&ListParams::default().labels("app.kubernetes.io/component=migration")).await.unwrap();
    assert_eq!(jobs.items.iter().filter(|j| j.name_any() == job).count(), 1, "never two Jobs for one revision");

    // A new spec proceeds.
    apply_app(&ns, &with_image(v1, "registry.example.com/api:2.0.1")).await;
    ready_on(&ns, "api", "registry.example.com/api:2.0.1").await;
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_rollout_rolls_back_automatically_without_touching_the_spec() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "rollback").await;
    let op = Operator::start(&client, &ns.name).await;
    let v1 = app(
        "api",
        "{image: 'registry.example.com/api:1.0.0', replicas: 2, env: {MODE: one}, rollout: {progressDeadlineSeconds: 10}}",
    );
    apply_app(&ns, &v1).await;
    let good = ready_on(&ns, "api", "registry.example.com/api:1.0.0").await;
    let good_rev = good.status.unwrap().current_revision.unwrap();

    let mut bad = with_image(v1, "registry.example.com/api:2.0.0-fail-rollout");
    bad.spec.env = Some(BTreeMap::from([("MODE".to_string(), "two".to_string())]));
    apply_app(&ns, &bad).await;
    let rolled = wait_app(&ns, "api", "RolledBack", T, |a| phase(a) == Some(Phase::RolledBack)).await;
    let status = rolled.status.clone().unwrap();
    assert_eq!(status.current_revision.as_deref(), Some(good_rev.as_str()));
    assert_eq!(status.failed_revision, status.desired_revision);
    assert_eq!(rolled.spec.image, "registry.example.com/api:2.0.0-fail-rollout", "the spec stays as Git has it");
    assert_eq!(condition(&rolled, "Stalled").unwrap().reason, "RolledBack");
    assert_eq!(status.history[0].result, empacts_api::RevisionResult::RolledBack);
    wait_event(&ns, "api", "RollingBack").await;

    // The old template, including its own env ConfigMap, is back and serving.
    let d = deployment(&ns, "api").await;
    assert_eq!(image_of(&d), "registry.example.com/api:1.0.0");
    let cm_name = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].env_from.as_ref().unwrap()[0]
        .config_map_ref
        .as_ref()
        .unwrap()
        .name
        .clone();
    assert_eq!(ns.api::<ConfigMap>().get(&cm_name).await.unwrap().data.unwrap()["MODE"], "one");

    // No flapping: it holds the rollback and does not retry the failed revision.
    let generation = d.metadata.generation;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let later = deployment(&ns, "api").await;
    assert_eq!(later.metadata.generation, generation, "no retry of the failed revision");
    assert_eq!(phase(&ns.api::<EmpactsApp>().get("api").await.unwrap()), Some(Phase::RolledBack));
    assert!(op.metrics.render().contains("empacts_rollbacks_total"));

    // Scaling is not part of a revision: while the rollback holds, a new replica count applies to it.
    let mut scaled = bad.clone();
    scaled.spec.replicas = Some(3);
    apply_app(&ns, &scaled).await;
    wait_until("the held revision scaled to 3", T, || async {
        let d = deployment(&ns, "api").await;
        (d.spec.as_ref()?.replicas == Some(3) && image_of(&d) == "registry.example.com/api:1.0.0").then_some(())
    })
    .await;
    let held =
        wait_app(&ns, "api", "still RolledBack", T, |a| phase(a) == Some(Phase::RolledBack) && observed_current(a))
            .await;
    assert_eq!(held.status.unwrap().current_revision.as_deref(), Some(good_rev.as_str()));

    // Someone deletes the Deployment while the rollback holds: the last good revision comes back.
    ns.api::<Deployment>().delete("api", &DeleteParams::default()).await.unwrap();
    wait_until("the last good revision restored", T, || async {
        let d = ns.api::<Deployment>().get_opt("api").await.ok()??;
        (d.metadata.deletion_timestamp.is_none() && image_of(&d) == "registry.example.com/api:1.0.0").then_some(())
    })
    .await;
    wait_app(&ns, "api", "RolledBack again", T, |a| phase(a) == Some(Phase::RolledBack)).await;
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_after_a_migration_runs_the_rollback_command_first() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "rbmig").await;
    let op = Operator::start(&client, &ns.name).await;
    let v1 = app(
        "api",
        "{image: 'registry.example.com/api:1.0.0', migration: {command: [up], rollbackCommand: [down]}, \
         rollout: {progressDeadlineSeconds: 10}}",
    );
    apply_app(&ns, &v1).await;
    ready_on(&ns, "api", "registry.example.com/api:1.0.0").await;
    apply_app(&ns, &with_image(v1, "registry.example.com/api:2.0.0-fail-rollout")).await;
    let rolled = wait_app(&ns, "api", "RolledBack", T, |a| phase(a) == Some(Phase::RolledBack)).await;
    let failed = rolled.status.unwrap().failed_revision.unwrap();
    let job = ns.api::<Job>().get(&format!("api-rollback-{failed}")).await.expect("the rollback Job ran");
    let c = &job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.command.as_deref().unwrap(), ["down"]);
    assert_eq!(c.image.as_deref(), Some("registry.example.com/api:2.0.0-fail-rollout"), "runs with the newer image");
    assert!(job.status.unwrap().succeeded.unwrap_or(0) >= 1);
    assert_eq!(image_of(&deployment(&ns, "api").await), "registry.example.com/api:1.0.0");
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_after_a_migration_without_rollback_command_stalls() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "rbstall").await;
    let op = Operator::start(&client, &ns.name).await;
    let v1 = app(
        "api",
        "{image: 'registry.example.com/api:1.0.0', migration: {command: [up]}, rollout: {progressDeadlineSeconds: 10}}",
    );
    apply_app(&ns, &v1).await;
    ready_on(&ns, "api", "registry.example.com/api:1.0.0").await;
    apply_app(&ns, &with_image(v1, "registry.example.com/api:2.0.0-fail-rollout")).await;
    let stalled = wait_app(&ns, "api", "Stalled", T, |a| phase(a) == Some(Phase::Stalled)).await;
    let cond = condition(&stalled, "Stalled").unwrap();
    assert_eq!(cond.reason, "RollbackNeedsRollbackCommand");
    assert!(cond.message.contains("rollbackCommand"), "{}", cond.message);
    // It does not roll back on its own: the migrated database must not meet the old code.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(image_of(&deployment(&ns, "api").await), "registry.example.com/api:2.0.0-fail-rollout");
    assert!(
        ns.api::<Job>()
            .list(&ListParams::default().labels("app.kubernetes.io/component=rollback-migration"))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    op.stop().await;
    ns.cleanup().await;
}

fn config_hash(d: &Deployment) -> String {
    d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()["empacts.io/config-hash"]
        .clone()
}

async fn label_secret(ns: &TestNamespace, name: &str, labels: serde_json::Value) {
    let patch = serde_json::json!({"metadata": {"labels": labels}});
    ns.api::<Secret>().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

/// A Secret labelled `empacts.io/watch=true` is watched: a change rolls the pods at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referenced_secret_change_rolls_the_pods() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "secretroll").await;
    let op = Operator::start(&client, &ns.name).await;
    create_secret(&ns, "db", "url", "hunter2").await;
    label_secret(&ns, "db", serde_json::json!({"empacts.io/watch": "true"})).await;
    apply_app(&ns, &app("api", "{image: 'registry.example.com/api:1.0.0', secrets: [{env: DATABASE_URL, secretKeyRef: {name: db, key: url}}]}")).await;
    ready_on(&ns, "api", "registry.example.com/api:1.0.0").await;
    let before = config_hash(&deployment(&ns, "api").await);
    // The hash is keyed: the scheme of earlier builds (unkeyed SHA-256 over name, key and
    // value), or a SHA-256 of the value itself, does not reproduce it from a guessed value.
    let unkeyed = empacts_operator::hash::bytes_hash([b"db".as_slice(), b"url", b"hunter2"]);
    let plain = empacts_operator::hash::bytes_hash([b"hunter2".as_slice()]);
    assert!(before != unkeyed && before != plain, "config hash {before} is computable from the value alone");
    let patch = serde_json::json!({"stringData": {"url": "postgres://two"}});
    ns.api::<Secret>().patch("db", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let after = wait_until("config hash changes", T, || async {
        let h = config_hash(&deployment(&ns, "api").await);
        (h != before).then_some(h)
    })
    .await;
    // The pods rolled: a second ReplicaSet carries the new hash.
    let sets = ns.api::<ReplicaSet>().list(&ListParams::default()).await.unwrap().items;
    let hashes: Vec<Option<String>> = sets
        .iter()
        .map(|rs| {
            let template = rs.spec.as_ref()?.template.as_ref()?.metadata.as_ref()?;
            template.annotations.as_ref()?.get("empacts.io/config-hash").cloned()
        })
        .collect();
    assert!(hashes.contains(&Some(after.clone())) && hashes.contains(&Some(before.clone())), "{hashes:?}");
    // Values never leak into the object.
    let json = serde_json::to_string(&deployment(&ns, "api").await).unwrap();
    assert!(!json.contains("postgres://") && !json.contains("hunter2"));
    op.stop().await;
    ns.cleanup().await;
}

/// A Secret without the watch label is not watched (the operator never watches every Secret
/// of a namespace): its change rolls the pods at the app's next resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwatched_referenced_secret_change_rolls_the_pods_at_resync() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "secretresync").await;
    let resync = Duration::from_secs(20);
    let settings = empacts_operator::context::Settings { resync, ..Default::default() };
    let op = Operator::start_with_settings(&client, &ns.name, settings).await;
    create_secret(&ns, "db", "url", "postgres://one").await;
    apply_app(&ns, &app("api", "{image: 'registry.example.com/api:1.0.0', secrets: [{env: DATABASE_URL, secretKeyRef: {name: db, key: url}}]}")).await;
    ready_on(&ns, "api", "registry.example.com/api:1.0.0").await;
    let before = config_hash(&deployment(&ns, "api").await);
    let patch = serde_json::json!({"stringData": {"url": "postgres://two"}});
    let changed_at = std::time::Instant::now();
    ns.api::<Secret>().patch("db", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_until("config hash changes at the resync", resync + T, || async {
        (config_hash(&deployment(&ns, "api").await) != before).then_some(())
    })
    .await;
    println!("unwatched Secret change picked up after {:?} (resync {resync:?})", changed_at.elapsed());
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_secret_survives_restart_reapply_and_retained_recreation() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "gensecret").await;
    let op = Operator::start(&client, &ns.name).await;
    let spec =
        "{image: 'registry.example.com/api:1.0.0', secrets: [{env: JWT_SECRET, generate: {length: 64, retain: true}}]}";
    apply_app(&ns, &app("api", spec)).await;
    ready_on(&ns, "api", "registry.example.com/api:1.0.0").await;
    let value =
        || async { ns.api::<Secret>().get("api.gen.jwt-secret").await.unwrap().data.unwrap()["value"].0.clone() };
    let original = value().await;
    assert_eq!(original.len(), 64);

    // Operator restart.
    op.stop().await;
    let op = Operator::start(&client, &ns.name).await;
    apply_app(&ns, &app("api", spec)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(value().await, original, "restart and re-apply keep the value");

    // Delete and re-create the app: the retained Secret stays and is reused.
    ns.api::<EmpactsApp>().delete("api", &DeleteParams::default()).await.unwrap();
    wait_until("app gone", T, || async {
        ns.api::<EmpactsApp>().get_opt("api").await.unwrap().is_none().then_some(())
    })
    .await;
    apply_app(&ns, &app("api", spec)).await;
    ready_on(&ns, "api", "registry.example.com/api:1.0.0").await;
    assert_eq!(value().await, original, "a retained secret survives re-creation of the app");

    // Rotation on request changes it, once.
    empacts_cli::commands::rotate_secrets(&client, &ns.name, "api").await.unwrap();
    let rotated = wait_until("rotated value", T, || async {
        let v = value().await;
        (v != original).then_some(v)
    })
    .await;
    assert_eq!(rotated.len(), 64);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(value().await, rotated, "rotation happens once per request");
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_rollback_is_a_request_that_leaves_the_spec_and_holds() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "manual").await;
    let op = Operator::start(&client, &ns.name).await;
    let v1 = app("api", "{image: 'registry.example.com/api:1.0.0', env: {A: one}}");
    apply_app(&ns, &v1).await;
    let first = ready_on(&ns, "api", "registry.example.com/api:1.0.0").await;
    let rev1 = first.status.unwrap().current_revision.unwrap();
    let mut v2 = with_image(v1.clone(), "registry.example.com/api:2.0.0");
    v2.spec.env = None;
    apply_app(&ns, &v2).await;
    ready_on(&ns, "api", "registry.example.com/api:2.0.0").await;

    let history = empacts_cli::commands::history(&client, &ns.name, "api").await.unwrap();
    assert!(history.contains(&rev1), "{history}");
    let rev = empacts_cli::commands::rollback(&client, &ns.name, "api", "1").await.unwrap();
    assert_eq!(rev, rev1, "revision number 1 resolves to the first revision");
    let held = wait_app(&ns, "api", "RolledBack to revision 1", T, |a| {
        phase(a) == Some(Phase::RolledBack) && a.status.as_ref().unwrap().current_revision.as_deref() == Some(&rev1)
    })
    .await;
    assert_eq!(held.spec.image, "registry.example.com/api:2.0.0", "the spec stays as Git has it");
    assert_eq!(image_of(&deployment(&ns, "api").await), "registry.example.com/api:1.0.0");
    let cm = deployment(&ns, "api").await.spec.unwrap().template.spec.unwrap().containers[0].env_from.clone();
    assert!(cm.is_some(), "revision 1's env ConfigMap is restored with it");
    // Held: the same spec does not roll forward again (watched continuously for 5 s).
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        assert_eq!(image_of(&deployment(&ns, "api").await), "registry.example.com/api:1.0.0", "rolled forward");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A retry rolls the spec's revision out again.
    empacts_cli::commands::retry(&client, &ns.name, "api").await.unwrap();
    ready_on(&ns, "api", "registry.example.com/api:2.0.0").await;

    // The spec-rewriting variant leaves no field ownership that makes a later GitOps apply conflict.
    empacts_cli::commands::rewrite_spec(&client, &ns.name, "api", &rev1).await.unwrap();
    let back = ready_on(&ns, "api", "registry.example.com/api:1.0.0").await;
    assert_eq!(back.spec.env.as_ref().unwrap()["A"], "one", "the whole recorded spec is restored");
    let mut value = serde_json::to_value(&v2).unwrap();
    value.as_object_mut().unwrap().remove("status");
    let apps: Api<EmpactsApp> = ns.api();
    apps.patch("api", &PatchParams::apply("e2e-gitops"), &Patch::Apply(&value))
        .await
        .expect("a non-forced server-side apply from Git does not conflict after a spec rewrite");
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_app_does_not_roll_out() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "pause").await;
    let op = Operator::start(&client, &ns.name).await;
    let v1 = app("api", "{image: 'registry.example.com/api:1.0.0'}");
    apply_app(&ns, &v1).await;
    ready_on(&ns, "api", "registry.example.com/api:1.0.0").await;
    let mut v2 = with_image(v1.clone(), "registry.example.com/api:2.0.0");
    v2.spec.paused = Some(true);
    apply_app(&ns, &v2).await;
    wait_app(&ns, "api", "Paused", T, |a| phase(a) == Some(Phase::Paused)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(image_of(&deployment(&ns, "api").await), "registry.example.com/api:1.0.0");
    v2.spec.paused = Some(false);
    apply_app(&ns, &v2).await;
    ready_on(&ns, "api", "registry.example.com/api:2.0.0").await;
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_refused_or_reported_and_other_apps_are_unaffected() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "invalid").await;
    let op = Operator::start(&client, &ns.name).await;

    // Admission refuses a bad image reference, naming the field.
    let api: Api<EmpactsApp> = ns.api();
    let bad = app("bad", "{image: 'Not A Valid/Image:!!'}");
    let err = api.create(&PostParams::default(), &bad).await.expect_err("admission refuses it");
    assert!(err.to_string().contains("spec.image"), "{err}");
    let bad = app("bad", "{image: 'api:1', autoscaling: {minReplicas: 5, maxReplicas: 2, targetCPU: 50}}");
    let err = api.create(&PostParams::default(), &bad).await.expect_err("CEL refuses it");
    assert!(err.to_string().contains("minReplicas"), "{err}");

    // A missing referenced Secret is reported in status; a healthy neighbour is unaffected.
    apply_app(
        &ns,
        &app(
            "broken",
            "{image: 'registry.example.com/api:1.0.0', secrets: [{env: DB, secretKeyRef: {name: missing, key: url}}]}",
        ),
    )
    .await;
    apply_app(&ns, &app("healthy", "{image: 'registry.example.com/api:1.0.0'}")).await;
    let broken =
        wait_app(&ns, "broken", "Stalled on the missing secret", T, |a| phase(a) == Some(Phase::Stalled)).await;
    let cond = condition(&broken, "Stalled").unwrap();
    assert_eq!(cond.reason, "SecretNotFound");
    assert!(cond.message.contains("missing"), "{}", cond.message);
    assert!(ns.api::<Deployment>().get_opt("broken").await.unwrap().is_none(), "no pods that cannot start");
    ready_on(&ns, "healthy", "registry.example.com/api:1.0.0").await;

    // Creating the secret unblocks it (an app waiting for a Secret re-checks it every 10 s).
    create_secret(&ns, "missing", "url", "postgres://x").await;
    ready_on(&ns, "broken", "registry.example.com/api:1.0.0").await;
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_reruns_a_failed_migration_and_deletion_removes_children() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "retry").await;
    let op = Operator::start(&client, &ns.name).await;
    // A retry with an unchanged spec must run the failed migration again (a new Job of the
    // same revision, created only after the failed one is gone).
    let spec = "{image: 'registry.example.com/api:1.0.0-fail-migration', migration: {command: [up], backoffLimit: 0}}";
    apply_app(&ns, &app("api", spec)).await;
    let failed = wait_app(&ns, "api", "MigrationFailed", T, |a| phase(a) == Some(Phase::MigrationFailed)).await;
    let job_name = failed.status.unwrap().migration.unwrap().job;
    let first_uid = ns.api::<Job>().get(&job_name).await.unwrap().uid();
    let requested = empacts_cli::commands::retry(&client, &ns.name, "api").await.unwrap();
    let second = wait_until("a new Job for the retry", T, || async {
        let job = ns.api::<Job>().get_opt(&job_name).await.ok()??;
        (job.uid() != first_uid).then_some(job)
    })
    .await;
    assert_eq!(second.annotations().get("empacts.io/attempt").map(String::as_str), Some("2"), "the second attempt");
    // Still failing (same image): back to MigrationFailed, and the retry was acknowledged.
    let again = wait_app(&ns, "api", "MigrationFailed after retry", T, |a| {
        phase(a) == Some(Phase::MigrationFailed) && a.status.as_ref().is_some_and(|s| s.observed_retry.is_some())
    })
    .await;
    assert_eq!(again.status.unwrap().observed_retry, Some(requested), "the acknowledged request is this retry");

    // Deleting the app garbage-collects its children.
    ns.api::<EmpactsApp>().delete("api", &DeleteParams::default()).await.unwrap();
    wait_until("children collected", T, || async {
        let sa = ns.api::<ServiceAccount>().get_opt("api").await.unwrap();
        let svc = ns.api::<Service>().get_opt("api").await.unwrap();
        let job = ns.api::<Job>().get_opt(&job_name).await.unwrap();
        (sa.is_none() && svc.is_none() && job.is_none()).then_some(())
    })
    .await;
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_on_retain_later_keeps_the_generated_secret_when_the_app_is_deleted() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "retainlater").await;
    let op = Operator::start(&client, &ns.name).await;
    let owned = "{image: 'registry.example.com/api:1.0.0', secrets: [{env: TOKEN, generate: {}}]}";
    apply_app(&ns, &app("api", owned)).await;
    ready_on(&ns, "api", "registry.example.com/api:1.0.0").await;
    let secret = ns.api::<Secret>().get("api.gen.token").await.unwrap();
    assert!(!secret.owner_references().is_empty(), "owned while retain is off");
    let value = secret.data.unwrap()["value"].0.clone();

    let retained = "{image: 'registry.example.com/api:1.0.0', secrets: [{env: TOKEN, generate: {retain: true}}]}";
    apply_app(&ns, &app("api", retained)).await;
    wait_until("owner reference dropped", T, || async {
        ns.api::<Secret>().get("api.gen.token").await.ok()?.owner_references().is_empty().then_some(())
    })
    .await;
    ns.api::<EmpactsApp>().delete("api", &DeleteParams::default()).await.unwrap();
    wait_until("service collected", T, || async {
        ns.api::<Service>().get_opt("api").await.ok()?.is_none().then_some(())
    })
    .await;
    let kept = ns.api::<Secret>().get("api.gen.token").await.expect("the retained secret survives");
    assert_eq!(kept.data.unwrap()["value"].0, value, "with its value");
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_past_its_timeout_fails_and_the_old_version_keeps_serving() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "migtimeout").await;
    let op = Operator::start(&client, &ns.name).await;
    let v1 = app("api", "{image: 'registry.example.com/api:1.0.0', migration: {command: [up], timeoutSeconds: 10}}");
    apply_app(&ns, &v1).await;
    ready_on(&ns, "api", "registry.example.com/api:1.0.0").await;
    // The new revision's migration pod runs for 5 minutes (kwok test annotation): past its 10 s deadline.
    let mut slow = with_image(v1, "registry.example.com/api:2.0.0");
    slow.spec.pod_annotations =
        Some(BTreeMap::from([("testbed.empacts.dev/run-duration".to_string(), "300s".to_string())]));
    apply_app(&ns, &slow).await;
    let failed =
        wait_app(&ns, "api", "MigrationFailed on timeout", T, |a| phase(a) == Some(Phase::MigrationFailed)).await;
    let migration = failed.status.unwrap().migration.unwrap();
    assert_eq!(migration.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(image_of(&deployment(&ns, "api").await), "registry.example.com/api:1.0.0");
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_name_controlled_by_someone_else_is_not_taken_over() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "foreign").await;
    // A Service named like the app, controlled by another object.
    let owner: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "other-owner"}})).unwrap();
    let owner = ns.api::<ConfigMap>().create(&PostParams::default(), &owner).await.unwrap();
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "api", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "other-owner",
                     "uid": owner.uid().unwrap(), "controller": true}]},
        "spec": {"ports": [{"port": 1234}], "selector": {"someone": "else"}}
    }))
    .unwrap();
    ns.api::<Service>().create(&PostParams::default(), &svc).await.unwrap();
    let op = Operator::start(&client, &ns.name).await;
    apply_app(&ns, &app("api", "{image: 'registry.example.com/api:1.0.0'}")).await;
    let stuck = wait_app(&ns, "api", "Stalled with NameTaken", T, |a| {
        condition(a, "Stalled").is_some_and(|c| c.status == "True" && c.reason == "NameTaken")
    })
    .await;
    assert!(condition(&stuck, "Stalled").unwrap().message.contains("Service"), "the condition names the object");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let svc = ns.api::<Service>().get("api").await.unwrap();
    assert_eq!(svc.owner_references().len(), 1, "still controlled by its owner only");
    assert_eq!(svc.owner_references()[0].uid, owner.uid().unwrap());
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 1234, "its spec untouched");
    op.stop().await;
    ns.cleanup().await;
}

/// Objects made by hand or by Helm with the app's name (no owner at all) are never adopted:
/// not written, not owned, and they survive deleting the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unowned_objects_named_like_the_app_are_untouched_and_survive_its_deletion() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "unowned").await;
    let helm = serde_json::json!({"app.kubernetes.io/managed-by": "Helm"});
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "api", "labels": helm},
        "spec": {"ports": [{"port": 1234}], "selector": {"someone": "else"}}
    }))
    .unwrap();
    let svc = ns.api::<Service>().create(&PostParams::default(), &svc).await.unwrap();
    let sa: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "api", "labels": helm}})).unwrap();
    let sa = ns.api::<ServiceAccount>().create(&PostParams::default(), &sa).await.unwrap();
    let op = Operator::start(&client, &ns.name).await;
    apply_app(&ns, &app("api", "{image: 'registry.example.com/api:1.0.0'}")).await;
    let stuck = wait_app(&ns, "api", "Stalled with NameTaken", T, |a| {
        condition(a, "Stalled").is_some_and(|c| c.status == "True" && c.reason == "NameTaken")
    })
    .await;
    assert!(condition(&stuck, "Stalled").unwrap().message.contains("ServiceAccount"), "names the first one met");
    // Watched for 5 s: neither object changes (resourceVersion), and no Deployment appears.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let now_svc = ns.api::<Service>().get("api").await.unwrap();
        let now_sa = ns.api::<ServiceAccount>().get("api").await.unwrap();
        assert_eq!(now_svc.resource_version(), svc.resource_version(), "the Service was written");
        assert_eq!(now_sa.resource_version(), sa.resource_version(), "the ServiceAccount was written");
        assert!(ns.api::<Deployment>().get_opt("api").await.unwrap().is_none(), "no pods of a stalled app");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ns.api::<EmpactsApp>().delete("api", &DeleteParams::default()).await.unwrap();
    wait_until("app gone", T, || async {
        ns.api::<EmpactsApp>().get_opt("api").await.unwrap().is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(ns.api::<Service>().get_opt("api").await.unwrap().is_some(), "the Service survives the app");
    assert!(ns.api::<ServiceAccount>().get_opt("api").await.unwrap().is_some(), "the ServiceAccount survives the app");
    op.stop().await;
    ns.cleanup().await;
}

/// Children are created with a plain create (never taking over), which leaves their fields
/// owned by the operator's Update entry; a later server-side apply must still remove what the
/// spec no longer asks for (an env var of a removed secret, a probe, a Service port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_spec_no_longer_asks_for_is_removed_from_children_created_earlier() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "fields-removed").await;
    let op = Operator::start(&client, &ns.name).await;
    create_secret(&ns, "db", "url", "postgres://x").await;
    let v1 = app(
        "api",
        "{image: 'registry.example.com/api:1.0.0', secrets: [{env: A, generate: {}}, {env: DB, secretKeyRef: {name: db, key: url}}], \
         probes: {readiness: {path: /ready}}, monitoring: {port: 9090}}",
    );
    apply_app(&ns, &v1).await;
    ready_on(&ns, "api", "registry.example.com/api:1.0.0").await;
    let v2 = app("api", "{image: 'registry.example.com/api:1.0.1', secrets: [{env: A, generate: {}}]}");
    apply_app(&ns, &v2).await;
    ready_on(&ns, "api", "registry.example.com/api:1.0.1").await;
    let d = deployment(&ns, "api").await;
    let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
    let env: Vec<String> = c.env.iter().flatten().map(|e| e.name.clone()).collect();
    assert_eq!(env, ["A"], "the removed secret's variable is gone from the pod template");
    assert!(c.readiness_probe.is_none(), "the removed probe is gone: {:?}", c.readiness_probe);
    let svc = ns.api::<Service>().get("api").await.unwrap();
    let ports: Vec<String> = svc.spec.unwrap().ports.iter().flatten().filter_map(|p| p.name.clone()).collect();
    assert_eq!(ports, ["http"], "the metrics port is gone from the Service");
    op.stop().await;
    ns.cleanup().await;
}
