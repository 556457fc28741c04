//! PrometheusRule (monitoring.coreos.com/v1) with the app's alerts, built as a generic
//! manifest; [`rule_file`] gives the same groups as a plain Prometheus rule file.

use serde_json::{Value, json};

use crate::{build::servicemonitor, validate::ValidatedApp};

pub const KIND: &str = "PrometheusRule";

/// The alert rule groups of the app (one, `<app>.rules`), or None without alerts.
pub fn groups(app: &ValidatedApp) -> Option<Value> {
    let monitoring = app.spec.monitoring.as_ref()?;
    let alerts = monitoring.alerts();
    if !alerts.enabled() {
        return None;
    }
    let (ns, name) = (app.namespace.as_str(), app.name.as_str());
    let (error_rate, latency, for_) = (alerts.error_rate(), alerts.latency_p95_seconds(), alerts.for_());
    let series = format!(r#"namespace="{ns}",app="{name}""#);
    let rule = |alert: &str, expr: String, severity: &str, summary: String, description: String| {
        json!({
            "alert": alert,
            "expr": expr,
            "for": for_,
            "labels": {"severity": severity},
            "annotations": {"summary": summary, "description": description},
        })
    };
    let rules = vec![
        rule(
            "HighErrorRate",
            format!(
                r#"sum(rate(http_requests_total{{{series},code=~"5.."}}[5m])) / sum(rate(http_requests_total{{{series}}}[5m])) > {error_rate}"#
            ),
            "critical",
            format!("{name} in {ns}: more than {error_rate} of requests fail"),
            format!(
                "The ratio of 5xx responses of {ns}/{name} over 5m is {{{{ $value }}}}, above {error_rate}, for {for_}."
            ),
        ),
        rule(
            "HighResponseTime",
            format!(
                r#"histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{{{series}}}[5m]))) > {latency}"#
            ),
            "warning",
            format!("{name} in {ns}: p95 latency above {latency}s"),
            format!("The p95 response time of {ns}/{name} over 5m is {{{{ $value }}}}s, above {latency}s, for {for_}."),
        ),
        rule(
            "PodCrashLooping",
            format!(
                r#"increase(kube_pod_container_status_restarts_total{{namespace="{ns}",pod=~"{name}-.*"}}[15m]) > 3"#
            ),
            "critical",
            format!("{name} in {ns}: a pod restarts repeatedly"),
            format!("Pod {{{{ $labels.pod }}}} of {ns}/{name} restarted more than 3 times in 15m (for {for_})."),
        ),
    ];
    Some(json!([{"name": format!("{name}.rules"), "rules": rules}]))
}

pub fn build(app: &ValidatedApp) -> Option<Value> {
    let monitoring = app.spec.monitoring.as_ref()?;
    let groups = groups(app)?;
    let metadata = servicemonitor::metadata(app, monitoring);
    Some(json!({
        "apiVersion": servicemonitor::API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {"groups": groups},
    }))
}

/// The app's alert rules as a Prometheus rule file (YAML with `groups:`), as `promtool
/// check rules` and Prometheus' `rule_files` read them; None without alerts.
pub fn rule_file(app: &ValidatedApp) -> Option<String> {
    let groups = groups(app)?;
    Some(serde_yaml::to_string(&json!({"groups": groups})).expect("JSON values convert to YAML"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::app_from_yaml;

    fn rules(app: &ValidatedApp) -> Vec<Value> {
        build(app).unwrap()["spec"]["groups"][0]["rules"].as_array().unwrap().clone()
    }

    fn expr<'a>(rules: &'a [Value], alert: &str) -> &'a str {
        rules.iter().find(|r| r["alert"] == alert).unwrap()["expr"].as_str().unwrap()
    }

    #[test]
    fn alerts_carry_the_apps_thresholds_and_selectors() {
        let app = app_from_yaml(
            "spec: {image: 'api:1', monitoring: {labels: {release: prom}, alerts: {errorRate: 0.05, latencyP95Seconds: 1.5, for: 10m}}}",
        );
        let rule = build(&app).unwrap();
        assert_eq!(rule["metadata"]["name"], "demo");
        assert_eq!(rule["metadata"]["labels"]["release"], "prom");
        assert_eq!(rule["spec"]["groups"][0]["name"], "demo.rules");
        let rules = rules(&app);
        let errors = expr(&rules, "HighErrorRate");
        assert!(errors.contains(r#"http_requests_total{namespace="ns",app="demo",code=~"5.."}[5m]"#), "{errors}");
        assert!(errors.contains(r#"http_requests_total{namespace="ns",app="demo"}[5m]"#), "{errors}");
        assert!(errors.ends_with("> 0.05"), "{errors}");
        let latency = expr(&rules, "HighResponseTime");
        assert!(latency.starts_with("histogram_quantile(0.95,"), "{latency}");
        assert!(latency.contains(r#"http_request_duration_seconds_bucket{namespace="ns",app="demo"}[5m]"#));
        assert!(latency.ends_with("> 1.5"), "{latency}");
        let crash = expr(&rules, "PodCrashLooping");
        assert_eq!(
            crash,
            r#"increase(kube_pod_container_status_restarts_total{namespace="ns",pod=~"demo-.*"}[15m]) > 3"#
        );
        for r in &rules {
            assert_eq!(r["for"], "10m");
            assert!(r["labels"]["severity"].is_string());
            assert!(r["annotations"]["summary"].is_string() && r["annotations"]["description"].is_string());
        }
        let errors_rule = rules.iter().find(|r| r["alert"] == "HighErrorRate").unwrap();
        assert!(errors_rule["annotations"]["description"].as_str().unwrap().contains("0.05"));
    }

    #[test]
    fn defaults_and_disabled_alerts() {
        let app = app_from_yaml("spec: {image: 'api:1', monitoring: {}}");
        let rules = rules(&app);
        assert!(expr(&rules, "HighErrorRate").ends_with("> 0.01"));
        assert!(expr(&rules, "HighResponseTime").ends_with("> 0.5"));
        assert!(rules.iter().all(|r| r["for"] == "5m"));
        assert!(build(&app_from_yaml("spec: {image: 'api:1', monitoring: {alerts: {enabled: false}}}")).is_none());
        assert!(build(&app_from_yaml("spec: {image: 'api:1'}")).is_none());
    }

    #[test]
    fn the_rule_file_holds_the_same_groups() {
        let app = app_from_yaml("spec: {image: 'api:1', monitoring: {alerts: {errorRate: 0.2}}}");
        let file: serde_yaml::Value = serde_yaml::from_str(&rule_file(&app).unwrap()).unwrap();
        let file: Value = serde_json::to_value(file).unwrap();
        assert_eq!(file["groups"], build(&app).unwrap()["spec"]["groups"]);
        assert!(rule_file(&app_from_yaml("spec: {image: 'api:1'}")).is_none());
    }
}
