//! Metric analysis against a real Prometheus (built by the testbed) scraping a test exporter
//! whose traffic each test sets per revision: a healthy canary is promoted, a canary with 5%
//! errors is aborted (its down-migration first), an unreachable Prometheus is inconclusive and
//! aborts at the limit (never a pass), and a rolling update with `analysis.duration` is rolled
//! back on bad metrics.

use std::time::{Duration, Instant};

use empacts_api::{EmpactsApp, Phase};
use empacts_e2e::prometheus::{TestExporter, TestPrometheus, Traffic};
use empacts_e2e::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

const T: Duration = Duration::from_secs(120);
const V1: &str = "registry.example.com/api:1.0.0";
const V2: &str = "registry.example.com/api:2.0.0";

fn app(spec: &str) -> EmpactsApp {
    app_yaml(&format!("apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: api}}\nspec: {spec}\n"))
}

async fn shape(ns: &TestNamespace, name: &str) -> Option<(i32, String)> {
    let d = ns.api::<Deployment>().get_opt(name).await.ok()??;
    let spec = d.spec?;
    let image = spec.template.spec?.containers[0].image.clone().unwrap_or_default();
    Some((spec.replicas.unwrap_or(1), image))
}

async fn ready_replicas(ns: &TestNamespace, name: &str) -> i32 {
    let d = ns.api::<Deployment>().get_opt(name).await.ok().flatten();
    d.and_then(|d| d.status).and_then(|s| s.ready_replicas).unwrap_or(0)
}

/// Wait until the app desires a revision other than `old`, and return it.
async fn new_revision(ns: &TestNamespace, old: &str) -> String {
    let old = old.to_string();
    let a = wait_app(ns, "api", "the new desired revision", T, move |a| {
        observed_current(a) && a.status.as_ref().and_then(|s| s.desired_revision.as_deref()).is_some_and(|r| r != old)
    })
    .await;
    a.status.unwrap().desired_revision.unwrap()
}

fn revision(a: &EmpactsApp) -> String {
    a.status.as_ref().and_then(|s| s.desired_revision.clone()).unwrap()
}

fn analysis_counts(a: &EmpactsApp) -> (i32, i32, i32) {
    a.status
        .as_ref()
        .and_then(|s| s.analysis.as_ref())
        .map(|x| (x.passed, x.failed, x.inconclusive))
        .unwrap_or_default()
}

/// Spec of the app with a canary judged by Prometheus at `address`.
fn canary_spec(image: &str, address: &str, steps: &str, limits: &str, extra: &str) -> String {
    format!(
        "{{image: '{image}', replicas: 4, rollout: {{strategy: Canary, steps: {steps}, progressDeadlineSeconds: 60}}, \
         analysis: {{prometheus: {{address: '{address}'}}, interval: 2s, {limits}}}{extra}}}"
    )
}

const GOOD: Traffic = Traffic { rps: 20.0, error_ratio: 0.0, latency_seconds: 0.04 };

struct Setup {
    ns: TestNamespace,
    exporter: TestExporter,
    prometheus: TestPrometheus,
    op: Operator,
    v1: String,
}

async fn setup(prefix: &str, spec_v1: impl Fn(&str) -> String) -> Setup {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, prefix).await;
    let exporter = TestExporter::start().await;
    let prometheus = TestPrometheus::start(&[&exporter.address()], &[]).await;
    let op = Operator::start(&client, &ns.name).await;
    apply_app(&ns, &app(&spec_v1(&prometheus.address()))).await;
    let a = wait_app(&ns, "api", "Ready on v1", T, |a| phase(a) == Some(Phase::Ready) && observed_current(a)).await;
    let v1 = revision(&a);
    exporter.set(&ns.name, "api", &v1, GOOD);
    Setup { ns, exporter, prometheus, op, v1 }
}

#[tokio::test]
async fn a_canary_with_healthy_metrics_is_measured_and_promoted() {
    let steps = "[{weight: 50, pause: 8s}]";
    let limits = "failureLimit: 1, inconclusiveLimit: 6";
    let s = setup("analysis-ok", |addr| canary_spec(V1, addr, steps, limits, "")).await;
    apply_app(&s.ns, &app(&canary_spec(V2, &s.prometheus.address(), steps, limits, ""))).await;
    let v2 = new_revision(&s.ns, &s.v1).await;
    s.exporter.set(&s.ns.name, "api", &v2, GOOD);
    let a = wait_app(&s.ns, "api", "Ready on v2", T, |a| phase(a) == Some(Phase::Ready) && a.spec.image == V2).await;
    let (passed, failed, _) = analysis_counts(&a);
    assert!(passed >= 2, "measured through the 8 s pause every 2 s: {:?}", a.status.as_ref().map(|s| &s.analysis));
    assert_eq!(failed, 0);
    let analysis = a.status.unwrap().analysis.unwrap();
    assert!(
        analysis.measurements.iter().any(|m| m.metric == "error-rate" && m.phase == "Passed"),
        "{:?}",
        analysis.measurements
    );
    assert_eq!(shape(&s.ns, "api").await, Some((4, V2.to_string())));
    s.op.stop().await;
    s.ns.cleanup().await;
}

#[tokio::test]
async fn a_canary_with_five_percent_errors_is_aborted_its_migration_undone_and_the_stable_untouched() {
    let steps = "[{weight: 50, pause: 5m}]";
    let limits = "failureLimit: 2, inconclusiveLimit: 10";
    let migration = ", migration: {command: [up], rollbackCommand: [down]}";
    let s = setup("analysis-bad", |addr| canary_spec(V1, addr, steps, limits, migration)).await;
    apply_app(&s.ns, &app(&canary_spec(V2, &s.prometheus.address(), steps, limits, migration))).await;
    let v2 = new_revision(&s.ns, &s.v1).await;
    s.exporter.set(&s.ns.name, "api", &v2, Traffic { error_ratio: 0.05, ..GOOD });
    wait_until("the canary's pods are ready", T, || async {
        (ready_replicas(&s.ns, "api-canary").await == 2).then_some(())
    })
    .await;
    let ready_at = Instant::now();
    // From here until the abort the stable Deployment must keep v1 (watched continuously).
    let a = loop {
        let stable = shape(&s.ns, "api").await.expect("the stable Deployment exists");
        assert_eq!(stable.1, V1, "the stable Deployment took the failing revision");
        let a = Api::<EmpactsApp>::namespaced(s.op.ctx.client.clone(), &s.ns.name).get("api").await.unwrap();
        if matches!(phase(&a), Some(Phase::RollingBack | Phase::RolledBack)) {
            break a;
        }
        assert!(ready_at.elapsed() < T, "no abort; status {:?}", a.status);
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let latency = ready_at.elapsed();
    // interval 2 s * failureLimit 2, + 10 s
    println!("analysis-to-abort latency: {:.1} s (canary ready -> RollingBack)", latency.as_secs_f64());
    assert!(latency < Duration::from_secs(2 * 2 + 10), "aborted after {latency:?}");
    assert!(analysis_counts(&a).1 >= 2, "{:?}", a.status.as_ref().map(|s| &s.analysis));
    let a = wait_app(&s.ns, "api", "RolledBack", T, |a| phase(a) == Some(Phase::RolledBack)).await;
    assert_eq!(condition(&a, "Ready").map(|c| c.reason.as_str()), Some("AnalysisFailed"));
    assert_eq!(shape(&s.ns, "api").await, Some((4, V1.to_string())), "the stable serves at full size");
    assert_eq!(shape(&s.ns, "api-canary").await.map(|x| x.0), Some(0), "the canary is stopped");
    let jobs: Vec<String> =
        s.ns.api::<Job>().list(&ListParams::default()).await.unwrap().iter().map(|j| j.name_any()).collect();
    assert!(jobs.contains(&format!("api-rollback-{v2}")), "the down-migration ran: {jobs:?}");
    let events = s.ns.api::<k8s_openapi::api::core::v1::Event>().list(&ListParams::default()).await.unwrap();
    assert!(
        events.iter().any(|e| e.reason.as_deref() == Some("AnalysisMeasurementFailed")
            && e.message.as_deref().is_some_and(|m| m.contains("error-rate"))),
        "a Warning Event per failed measurement"
    );
    s.op.stop().await;
    s.ns.cleanup().await;
}

#[tokio::test]
async fn an_unreachable_prometheus_is_inconclusive_and_aborts_at_the_limit_never_passing() {
    let steps = "[{weight: 50, pause: 10m}]";
    // Room for the measurements of the canary's first seconds, before Prometheus has scraped
    // its series twice ("no data" is inconclusive too): at 3 a busy machine used them all up.
    let limits = "failureLimit: 1, inconclusiveLimit: 5";
    let mut s = setup("analysis-down", |addr| canary_spec(V1, addr, steps, limits, "")).await;
    apply_app(&s.ns, &app(&canary_spec(V2, &s.prometheus.address(), steps, limits, ""))).await;
    let v2 = new_revision(&s.ns, &s.v1).await;
    s.exporter.set(&s.ns.name, "api", &v2, GOOD);
    wait_app(&s.ns, "api", "a passed measurement", T, |a| analysis_counts(a).0 >= 1).await;
    s.prometheus.stop();
    let a = loop {
        let stable = shape(&s.ns, "api").await.expect("the stable Deployment exists");
        assert_eq!(stable.1, V1, "promoted without a verdict");
        let a = Api::<EmpactsApp>::namespaced(s.op.ctx.client.clone(), &s.ns.name).get("api").await.unwrap();
        if phase(&a) == Some(Phase::RolledBack) {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(condition(&a, "Ready").map(|c| c.reason.as_str()), Some("AnalysisFailed"));
    let ready = condition(&a, "Ready").unwrap().message.clone();
    assert!(ready.contains("5 measurements were inconclusive"), "{ready}");
    let analysis = a.status.clone().unwrap().analysis.unwrap();
    assert!(
        analysis.measurements.iter().any(|m| m.phase == "Inconclusive" && m.message.contains("unreachable")),
        "{:?}",
        analysis.measurements
    );
    assert_eq!(shape(&s.ns, "api").await, Some((4, V1.to_string())));
    s.op.stop().await;
    s.ns.cleanup().await;
}

#[tokio::test]
async fn a_rolling_update_measured_for_its_duration_rolls_back_on_bad_metrics() {
    let spec = |image: &str, addr: &str| {
        format!(
            "{{image: '{image}', replicas: 2, analysis: {{prometheus: {{address: '{addr}'}}, interval: 2s, duration: 2m, failureLimit: 2}}}}"
        )
    };
    // The first rollout is not analysed (nothing to go back to): v1 is good at once.
    let s = setup("analysis-rolling", |addr| spec(V1, addr)).await;
    apply_app(&s.ns, &app(&spec(V2, &s.prometheus.address()))).await;
    let v2 = new_revision(&s.ns, &s.v1).await;
    s.exporter.set(&s.ns.name, "api", &v2, Traffic { latency_seconds: 0.8, ..GOOD });
    let a = wait_app(&s.ns, "api", "RolledBack", T, |a| phase(a) == Some(Phase::RolledBack)).await;
    assert_eq!(condition(&a, "Ready").map(|c| c.reason.as_str()), Some("AnalysisFailed"));
    assert_eq!(shape(&s.ns, "api").await.map(|x| x.1), Some(V1.to_string()));
    let analysis = a.status.unwrap().analysis.unwrap();
    assert!(analysis.measurements.iter().any(|m| m.metric == "latency-p95" && m.phase == "Failed"));
    s.op.stop().await;
    s.ns.cleanup().await;
}
