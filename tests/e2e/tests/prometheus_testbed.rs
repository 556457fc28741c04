//! The testbed's real Prometheus: it scrapes the test exporter, computes the error ratio and p95
//! latency per revision the way canary analysis will, survives being killed and restarted, and
//! loads alerting rules that promtool accepts. No Kubernetes cluster is involved.

use std::path::PathBuf;
use std::time::Duration;

use empacts_e2e::*;

const T: Duration = Duration::from_secs(60);

fn error_ratio(revision: &str, window: &str) -> String {
    format!(
        "sum(rate(http_requests_total{{revision=\"{revision}\",code=~\"5..\"}}[{window}])) / sum(rate(http_requests_total{{revision=\"{revision}\"}}[{window}]))"
    )
}

fn p95(revision: &str) -> String {
    format!(
        "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{{revision=\"{revision}\"}}[30s])))"
    )
}

/// A temp dir of this test, removed when it passes.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("empacts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_measures_the_exporters_traffic_survives_a_restart_and_loads_rules() {
    let scratch = Scratch::new("prometheus-testbed");
    let rules = scratch.0.join("rules.yaml");
    std::fs::write(
        &rules,
        "groups:\n- name: testbed\n  rules:\n  - alert: TestbedAlwaysFiring\n    expr: vector(1) > 0\n    for: 0s\n    labels: {severity: none}\n",
    )
    .unwrap();
    let checked = promtool_check_rules(&rules).expect("promtool accepts the rules file");
    assert!(checked.contains("SUCCESS: 1 rules found"), "promtool: {checked}");
    let broken = scratch.0.join("broken.yaml");
    std::fs::write(
        &broken,
        "groups:\n- name: testbed\n  rules:\n  - alert: Broken\n    expr: sum(rate(http_requests_total[5m]\n",
    )
    .unwrap();
    let refused = promtool_check_rules(&broken).expect_err("promtool refuses a rule with a broken expression");
    assert!(refused.contains("FAILED"), "promtool: {refused}");

    let exporter = TestExporter::start().await;
    exporter.set("shop", "web", "r1", Traffic::new(10.0, 0.0, 0.05));
    exporter.set("shop", "web", "r2", Traffic::new(10.0, 0.05, 0.8));
    let mut prometheus = TestPrometheus::start(&[&exporter.address()], &[&rules]).await;

    // Error ratios: the counters of one scrape are consistent, so the ratio is exact once there are
    // two scrapes in the window.
    let r2 = wait_until("r2's error ratio ~0.05", T, || async {
        let v = prometheus.query(&error_ratio("r2", "30s")).await?;
        ((v - 0.05).abs() < 0.002).then_some(v)
    })
    .await;
    let r1 = prometheus.query(&error_ratio("r1", "30s")).await.expect("r1's error ratio");
    assert_eq!(r1, 0.0, "r1 serves no errors (r2: {r2})");
    // rate() is the profile's rate once the window holds more than its length of samples (until
    // then Prometheus extrapolates only half a scrape interval past the first sample).
    wait_until("r2's request rate ~10/s over 5s", T, || async {
        let v = prometheus.query("sum(rate(http_requests_total{revision=\"r2\"}[5s]))").await?;
        ((v - 10.0).abs() < 0.5).then_some(v)
    })
    .await;

    // p95 latency: r2's observations are all in (0.5, 1], r1's in (0.025, 0.05].
    let p95_r2 = prometheus.query(&p95("r2")).await.expect("r2's p95");
    assert!(p95_r2 > 0.5 && p95_r2 <= 1.0, "r2's p95 is in the 1 s bucket: {p95_r2}");
    let p95_r1 = prometheus.query(&p95("r1")).await.expect("r1's p95");
    assert!(p95_r1 > 0.025 && p95_r1 <= 0.05, "r1's p95 is in the 0.05 s bucket: {p95_r1}");

    // The exporter's labels are kept (honor_labels), the sample of each revision is separate.
    let per_revision = prometheus
        .query_vector("sum by (namespace, app, revision) (http_requests_total)")
        .await
        .expect("per-revision totals");
    let mut revisions: Vec<_> = per_revision
        .iter()
        .map(|(labels, _)| (labels["namespace"].as_str(), labels["app"].as_str(), labels["revision"].as_str()))
        .collect();
    revisions.sort();
    assert_eq!(revisions, [("shop", "web", "r1"), ("shop", "web", "r2")]);

    // Rules: loaded and evaluated (for: 0s, so firing at the first evaluation).
    assert_eq!(prometheus.rules_loaded().await, ["TestbedAlwaysFiring"]);
    wait_until("the alert fires", T, || async {
        prometheus.query("ALERTS{alertname=\"TestbedAlwaysFiring\",alertstate=\"firing\"}").await.filter(|v| *v == 1.0)
    })
    .await;

    // A profile changed at runtime: r2 stops failing; over a 5 s window its ratio drops to 0.
    exporter.set("shop", "web", "r2", Traffic::new(10.0, 0.0, 0.8));
    wait_until("r2's error ratio over 5s back to 0", T, || async {
        prometheus.query(&error_ratio("r2", "5s")).await.filter(|v| *v == 0.0)
    })
    .await;
    // A removed revision goes stale at the next scrape: its series are gone from instant queries.
    exporter.remove("shop", "web", "r1");
    wait_until("r1's series stale", T, || async {
        let n = prometheus.query_vector("http_requests_total{revision=\"r1\"}").await?;
        n.is_empty().then_some(())
    })
    .await;

    // Prometheus down: every query fails; back on the same port with its data.
    prometheus.stop();
    assert_eq!(prometheus.query("vector(1)").await, None, "a stopped Prometheus does not answer");
    assert_eq!(prometheus.query(&error_ratio("r2", "30s")).await, None);
    assert!(prometheus.rules_loaded().await.is_empty());
    prometheus.restart().await;
    assert_eq!(prometheus.query("vector(1)").await, Some(1.0));
    let total_before_restart = prometheus
        .query("max_over_time(http_requests_total{revision=\"r2\",code=\"200\"}[10m])")
        .await
        .expect("r2's samples from before the restart are still there (same data dir)");
    assert!(total_before_restart > 0.0, "{total_before_restart}");
    wait_until("r2's rate measured again after the restart", T, || async {
        let v = prometheus.query("sum(rate(http_requests_total{revision=\"r2\"}[5s]))").await?;
        ((v - 10.0).abs() < 1.0).then_some(v)
    })
    .await;
    assert_eq!(prometheus.rules_loaded().await, ["TestbedAlwaysFiring"]);
}

#[test]
fn the_prometheus_operator_crds_are_servicemonitor_and_prometheusrule() {
    let names: Vec<String> = prometheus_operator_crds().into_iter().map(|crd| crd.metadata.name.unwrap()).collect();
    assert_eq!(names, ["servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"]);
}
