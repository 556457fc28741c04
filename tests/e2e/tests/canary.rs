//! Canary delivery on the real control plane: steps by replica weight, promotion, manual
//! promote/abort, spec.paused, a canary whose pods never become ready, and kill -9 mid-step.
//! Metric analysis against a real Prometheus is in `analysis.rs`.

use std::time::{Duration, Instant};

use empacts_api::{EmpactsApp, Phase};
use empacts_e2e::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

const T: Duration = Duration::from_secs(90);

fn app(name: &str, spec: &str) -> EmpactsApp {
    app_yaml(&format!("apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: {name}}}\nspec: {spec}\n"))
}

/// (replicas, image) of a Deployment, None when absent.
async fn shape(ns: &TestNamespace, name: &str) -> Option<(i32, String)> {
    let d = ns.api::<Deployment>().get_opt(name).await.ok()??;
    let spec = d.spec?;
    let image = spec.template.spec?.containers[0].image.clone().unwrap_or_default();
    Some((spec.replicas.unwrap_or(1), image))
}

async fn wait_shapes(ns: &TestNamespace, what: &str, stable: (i32, &str), canary: Option<(i32, &str)>) {
    let want_stable = (stable.0, stable.1.to_string());
    let want_canary = canary.map(|(n, i)| (n, i.to_string()));
    wait_until(what, T, || {
        let (want_stable, want_canary) = (want_stable.clone(), want_canary.clone());
        async move {
            let s = shape(ns, "api").await;
            let c = shape(ns, "api-canary").await;
            let canary_ok = match &want_canary {
                Some(w) => c.as_ref() == Some(w),
                None => c.is_none_or(|(n, _)| n == 0),
            };
            (s.as_ref() == Some(&want_stable) && canary_ok).then_some(())
        }
    })
    .await
}

fn canary_progress(a: &EmpactsApp) -> Option<String> {
    a.status.as_ref()?.canary.as_ref().map(|c| c.progress.clone())
}

async fn ready_on(ns: &TestNamespace, image: &str) -> EmpactsApp {
    let image = image.to_string();
    wait_app(ns, "api", &format!("Ready on {image}"), T, move |a| {
        phase(a) == Some(Phase::Ready) && a.spec.image == image && observed_current(a)
    })
    .await
}

const V1: &str = "registry.example.com/api:1.0.0";
const V2: &str = "registry.example.com/api:2.0.0";

fn canary_spec(image: &str, replicas: i32, steps: &str, extra: &str) -> String {
    format!("{{image: '{image}', replicas: {replicas}, rollout: {{strategy: Canary, steps: {steps}}}{extra}}}")
}

#[tokio::test]
async fn canary_steps_advance_by_weight_then_the_stable_takes_the_revision() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "canary-steps").await;
    let op = Operator::start(&client, &ns.name).await;
    let steps = "[{weight: 10, pause: 4s}, {weight: 50, pause: 4s}]";
    apply_app(&ns, &app("api", &canary_spec(V1, 10, steps, ""))).await;
    ready_on(&ns, V1).await;
    assert!(shape(&ns, "api-canary").await.is_none(), "the first rollout needs no canary");

    apply_app(&ns, &app("api", &canary_spec(V2, 10, steps, ""))).await;
    wait_shapes(&ns, "step 1: 1 canary pod, 9 stable", (9, V1), Some((1, V2))).await;
    let a = wait_app(&ns, "api", "status shows step 1", T, |a| canary_progress(a).is_some()).await;
    assert_eq!(canary_progress(&a).as_deref(), Some("1/2 10%"), "{:?}", a.status);
    assert_eq!(phase(&a), Some(Phase::Progressing));
    wait_shapes(&ns, "step 2: 5 canary pods, 5 stable", (5, V1), Some((5, V2))).await;
    let a = ready_on(&ns, V2).await;
    assert_eq!(shape(&ns, "api").await, Some((10, V2.to_string())), "the stable runs the new template at full size");
    assert_eq!(shape(&ns, "api-canary").await.map(|s| s.0), Some(0), "the canary is scaled to 0");
    let s = a.status.unwrap();
    assert_eq!(s.last_good_revision, s.desired_revision);
    assert!(s.canary.is_none(), "no canary in progress: {:?}", s.canary);
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn promote_abort_and_pause_act_on_a_running_canary() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "canary-manual").await;
    let op = Operator::start(&client, &ns.name).await;
    let steps = "[{weight: 20}, {weight: 40, pause: 3s}, {weight: 60}]";
    apply_app(&ns, &app("api", &canary_spec(V1, 5, steps, ""))).await;
    ready_on(&ns, V1).await;
    apply_app(&ns, &app("api", &canary_spec(V2, 5, steps, ""))).await;
    let a = wait_app(&ns, "api", "waiting for promote at step 1", T, |a| {
        condition(a, "Ready").is_some_and(|c| c.reason == "WaitingForPromote")
    })
    .await;
    assert_eq!(canary_progress(&a).as_deref(), Some("1/3 20%"));
    assert_eq!(shape(&ns, "api-canary").await, Some((1, V2.to_string())));

    // promote: step 2 (40%, 3 s pause) then step 3, which waits for promote again.
    empacts_cli::commands::promote(&client, &ns.name, "api", false).await.unwrap();
    wait_shapes(&ns, "step 2 after promote", (3, V1), Some((2, V2))).await;

    // spec.paused holds the canary at its step past the step's pause: watched for 8 s.
    apply_app(&ns, &app("api", &canary_spec(V2, 5, steps, ", paused: true"))).await;
    wait_app(&ns, "api", "Paused", T, |a| phase(a) == Some(Phase::Paused) && observed_current(a)).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        let c = shape(&ns, "api-canary").await;
        let s = shape(&ns, "api").await;
        assert_eq!(c, Some((2, V2.to_string())), "the canary moved while paused");
        assert_eq!(s, Some((3, V1.to_string())), "the stable moved while paused");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    apply_app(&ns, &app("api", &canary_spec(V2, 5, steps, ", paused: false"))).await;
    wait_shapes(&ns, "step 3 after unpausing", (2, V1), Some((3, V2))).await;

    // abort: the canary's pods stop, the stable serves at full size on the old template.
    empacts_cli::commands::abort(&client, &ns.name, "api").await.unwrap();
    let a = wait_app(&ns, "api", "RolledBack after abort", T, |a| phase(a) == Some(Phase::RolledBack)).await;
    assert_eq!(condition(&a, "Ready").map(|c| c.reason.as_str()), Some("Aborted"));
    assert_eq!(shape(&ns, "api").await, Some((5, V1.to_string())));
    assert_eq!(shape(&ns, "api-canary").await.map(|s| s.0), Some(0));
    let s = a.status.unwrap();
    assert_eq!(s.failed_revision, s.desired_revision, "the aborted revision holds as failed");
    assert_eq!(a.spec.image, V2, "the spec stays as Git has it");
    op.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn a_canary_that_never_becomes_ready_is_undone_with_its_down_migration_and_the_stable_untouched() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "canary-unready").await;
    let op = Operator::start(&client, &ns.name).await;
    let extra = ", migration: {command: [up], rollbackCommand: [down]}, rollout: {strategy: Canary, steps: [{weight: 50, pause: 3s}], progressDeadlineSeconds: 10}";
    let spec = |image: &str| format!("{{image: '{image}', replicas: 4{extra}}}");
    apply_app(&ns, &app("api", &spec(V1))).await;
    ready_on(&ns, V1).await;
    let bad = "registry.example.com/api:2.0.0-fail-rollout";
    apply_app(&ns, &app("api", &spec(bad))).await;
    wait_shapes(&ns, "the canary runs at 50%", (2, V1), Some((2, bad))).await;
    let a = wait_app(&ns, "api", "RolledBack", Duration::from_secs(120), |a| phase(a) == Some(Phase::RolledBack)).await;
    assert_eq!(shape(&ns, "api").await, Some((4, V1.to_string())), "the stable serves at full size, untouched");
    assert_eq!(shape(&ns, "api-canary").await.map(|s| s.0), Some(0));
    let jobs = ns.api::<Job>().list(&ListParams::default()).await.unwrap();
    let names: Vec<String> = jobs.iter().map(|j| j.name_any()).collect();
    assert!(names.iter().any(|n| n.starts_with("api-rollback-")), "the down-migration ran: {names:?}");
    assert!(a.status.unwrap().message_contains("rollout failed"));
    op.stop().await;
    ns.cleanup().await;
}

trait StatusText {
    fn message_contains(&self, text: &str) -> bool;
}

impl StatusText for empacts_api::EmpactsAppStatus {
    fn message_contains(&self, text: &str) -> bool {
        self.conditions.iter().any(|c| c.message.contains(text))
    }
}

#[tokio::test]
async fn a_killed_operator_resumes_the_canary_at_its_step_without_another_migration() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "canary-kill").await;
    let dir = std::env::temp_dir().join(format!("empacts-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("operator.log");
    let mut op = OperatorProcess::start_single(&env.kubeconfig, "canary-kill", &ns.name, &log);
    let steps = "[{weight: 25, pause: 2s}, {weight: 50}]";
    let spec = |image: &str| {
        format!(
            "{{image: '{image}', replicas: 4, migration: {{command: [up]}}, rollout: {{strategy: Canary, steps: {steps}}}}}"
        )
    };
    apply_app(&ns, &app("api", &spec(V1))).await;
    ready_on(&ns, V1).await;
    apply_app(&ns, &app("api", &spec(V2))).await;
    wait_app(&ns, "api", "waiting for promote at step 2", T, |a| {
        condition(a, "Ready").is_some_and(|c| c.reason == "WaitingForPromote")
    })
    .await;
    let jobs_before = ns.api::<Job>().list(&ListParams::default()).await.unwrap().items.len();
    op.signal("KILL");
    wait_until("the operator process exits", T, || {
        let exited = op.exited();
        async move { exited.then_some(()) }
    })
    .await;
    drop(op);
    let _op = OperatorProcess::start_single(&env.kubeconfig, "canary-kill-2", &ns.name, &log);
    // The new process resumes at step 2 (not step 1), holding it for 10 s, watched continuously.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        assert_eq!(shape(&ns, "api-canary").await, Some((2, V2.to_string())), "the canary left step 2");
        assert_eq!(shape(&ns, "api").await, Some((2, V1.to_string())), "the stable changed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let a = Api::<EmpactsApp>::namespaced(client.clone(), &ns.name).get("api").await.unwrap();
    assert_eq!(canary_progress(&a).as_deref(), Some("2/2 50%"));
    let jobs_after = ns.api::<Job>().list(&ListParams::default()).await.unwrap().items.len();
    assert_eq!(jobs_after, jobs_before, "no migration ran again");
    empacts_cli::commands::promote(&client, &ns.name, "api", true).await.unwrap();
    ready_on(&ns, V2).await;
    assert_eq!(shape(&ns, "api").await, Some((4, V2.to_string())));
    ns.cleanup().await;
}
