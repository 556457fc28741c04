//! End-to-end: only meaningful changes of a child trigger a reconcile. Kinds without a
//! `metadata.generation` (a HorizontalPodAutoscaler, a Service) used to pass every status
//! write as a trigger, and the child was applied again each time: with a metrics-server
//! updating every HPA every 15 s that is a reconcile and a write per app, forever.

use std::time::{Duration, Instant};

use empacts_e2e::*;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Patch, PatchParams};

const T: Duration = Duration::from_secs(90);

fn reconciles(op: &Operator) -> u64 {
    op.metrics.reconciles.get()
}

fn hpa_applies(op: &Operator) -> u64 {
    op.metrics.child_applies.with_label_values(&["HorizontalPodAutoscaler", "applied"]).get()
}

/// Watches the operator's counters for `window`, failing at the first reconcile or HPA write.
async fn nothing_moves(op: &Operator, window: Duration, what: &str) {
    let (r0, a0) = (reconciles(op), hpa_applies(op));
    let start = Instant::now();
    let mut checks = 0;
    while start.elapsed() < window {
        let (r, a) = (reconciles(op), hpa_applies(op));
        assert!(
            r == r0 && a == a0,
            "{what}: {} reconciles and {} HPA applies after {:?} (watched every 100 ms)",
            r - r0,
            a - a0,
            start.elapsed()
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{what}: no reconcile and no HPA write in {window:?} ({checks} checks)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpa_status_updates_neither_reconcile_nor_reapply_but_a_spec_edit_is_reverted() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "triggers").await;
    let op = Operator::start(&client, &ns.name).await;
    let app = app_yaml(
        "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {name: api}\nspec: {image: 'api:1', \
         autoscaling: {minReplicas: 1, maxReplicas: 4, targetCPU: 70}}\n",
    );
    apply_app(&ns, &app).await;
    wait_app(&ns, "api", "Ready", T, |a| observed_current(a) && phase(a) == Some(empacts_api::Phase::Ready)).await;
    let hpas: kube::Api<HorizontalPodAutoscaler> = ns.api();
    // Settle: the reconciles the rollout itself triggered (Deployment status) are done.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // What a metrics-server-fed HPA controller writes every 15 s: the status subresource.
    let (r0, a0) = (reconciles(&op), hpa_applies(&op));
    for i in 0..5 {
        let status = serde_json::json!({"status": {
            "currentReplicas": 1, "desiredReplicas": 1,
            "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu",
                "current": {"averageUtilization": 10 + i, "averageValue": format!("{}m", 100 + i)}}}],
            "lastScaleTime": k8s_openapi::jiff::Timestamp::now().to_string(),
        }});
        hpas.patch_status("api", &PatchParams::default(), &Patch::Merge(&status)).await.expect("HPA status patch");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    nothing_moves(&op, Duration::from_secs(6), "after 5 HPA status writes").await;
    assert_eq!((reconciles(&op), hpa_applies(&op)), (r0, a0));

    // A hand edit of the HPA's spec is still drift: taken back.
    let edit = serde_json::json!({"spec": {"maxReplicas": 9}});
    hpas.patch("api", &PatchParams::default(), &Patch::Merge(&edit)).await.expect("HPA spec edit");
    wait_until("the HPA's maxReplicas taken back to 4", T, || async {
        let hpa = hpas.get("api").await.ok()?;
        (hpa.spec?.max_replicas == 4).then_some(())
    })
    .await;
    assert!(hpa_applies(&op) > a0, "the edit was reverted by an apply");
    op.stop().await;
    ns.cleanup().await;
}
