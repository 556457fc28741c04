//! ServiceMonitor (monitoring.coreos.com/v1) scraping the app's Service, built as a generic
//! manifest: the Prometheus Operator's CRDs are optional, so no typed API is linked in.

use serde_json::{Value, json};

use crate::{build::meta, build::pod, build::service, names, validate::ValidatedApp};

pub const COMPONENT: &str = "monitoring";
pub const API_VERSION: &str = "monitoring.coreos.com/v1";
pub const KIND: &str = "ServiceMonitor";

/// Labels of a monitoring object: the common ones and spec.monitoring.labels (so a
/// Prometheus selecting by them picks it up).
pub fn labels(app: &ValidatedApp, monitoring: &empacts_api::Monitoring) -> Value {
    let mut labels = meta::common_labels(app, COMPONENT);
    for (k, v) in monitoring.labels.iter().flatten() {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    json!(labels)
}

/// Metadata of a monitoring object named like the app, owned by it.
pub fn metadata(app: &ValidatedApp, monitoring: &empacts_api::Monitoring) -> Value {
    json!({
        "name": names::workload(&app.name),
        "namespace": app.namespace,
        "labels": labels(app, monitoring),
        "ownerReferences": [app.owner_reference()],
    })
}

/// The Service port the metrics are scraped on: a port of its own when the metrics port
/// differs from the app port, else the app's `http` port.
pub fn endpoint_port(app: &ValidatedApp) -> &'static str {
    if app.spec.metrics_port() != app.spec.port() { service::METRICS_PORT_NAME } else { pod::PORT_NAME }
}

pub fn build(app: &ValidatedApp) -> Option<Value> {
    let monitoring = app.spec.monitoring.as_ref()?;
    let mut selector = meta::selector_labels(app);
    selector.insert(empacts_api::labels::COMPONENT.to_string(), service::COMPONENT.to_string());
    // Every series carries the labels the canary analysis queries by: {namespace, app, revision}.
    let relabel =
        |source: &str, target: &str| json!({"sourceLabels": [source], "targetLabel": target, "action": "replace"});
    Some(json!({
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata(app, monitoring),
        "spec": {
            "selector": {"matchLabels": selector},
            "endpoints": [{
                "port": endpoint_port(app),
                "path": monitoring.path(),
                "interval": monitoring.interval(),
                "relabelings": [
                    relabel("__meta_kubernetes_namespace", "namespace"),
                    relabel("__meta_kubernetes_pod_label_app_kubernetes_io_instance", "app"),
                    relabel("__meta_kubernetes_pod_label_empacts_io_revision", "revision"),
                ],
            }],
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::app_from_yaml;

    #[test]
    fn scrapes_the_http_port_with_the_analysis_labels() {
        let app = app_from_yaml(
            "spec: {image: 'api:1', port: 3000, monitoring: {labels: {release: prom}, interval: 15s, path: /m}}",
        );
        let sm = build(&app).unwrap();
        assert_eq!(sm["metadata"]["name"], "demo");
        assert_eq!(sm["metadata"]["labels"]["release"], "prom");
        assert_eq!(sm["metadata"]["labels"]["app.kubernetes.io/instance"], "demo");
        assert_eq!(sm["metadata"]["ownerReferences"][0]["uid"], "u-1");
        let selector = &sm["spec"]["selector"]["matchLabels"];
        assert_eq!(selector["app.kubernetes.io/instance"], "demo");
        assert_eq!(selector["app.kubernetes.io/component"], "service");
        let svc = crate::build::service::build(&app);
        for (k, v) in selector.as_object().unwrap() {
            assert_eq!(svc.metadata.labels.as_ref().unwrap().get(k).map(String::as_str), v.as_str(), "Service has {k}");
        }
        let ep = &sm["spec"]["endpoints"][0];
        assert_eq!(
            (ep["port"].as_str(), ep["path"].as_str(), ep["interval"].as_str()),
            (Some("http"), Some("/m"), Some("15s"))
        );
        let targets: Vec<(&str, &str)> = ep["relabelings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["sourceLabels"][0].as_str().unwrap(), r["targetLabel"].as_str().unwrap()))
            .collect();
        assert_eq!(
            targets,
            [
                ("__meta_kubernetes_namespace", "namespace"),
                ("__meta_kubernetes_pod_label_app_kubernetes_io_instance", "app"),
                ("__meta_kubernetes_pod_label_empacts_io_revision", "revision"),
            ]
        );
    }

    #[test]
    fn a_separate_metrics_port_is_scraped_by_name_and_defaults_apply() {
        let app = app_from_yaml("spec: {image: 'api:1', port: 3000, monitoring: {port: 9090}}");
        let ep = &build(&app).unwrap()["spec"]["endpoints"][0];
        assert_eq!(ep["port"], "metrics");
        assert_eq!((ep["path"].as_str(), ep["interval"].as_str()), (Some("/metrics"), Some("30s")));
        let same = app_from_yaml("spec: {image: 'api:1', port: 3000, monitoring: {port: 3000}}");
        assert_eq!(build(&same).unwrap()["spec"]["endpoints"][0]["port"], "http");
    }

    #[test]
    fn no_monitoring_no_service_monitor() {
        assert!(build(&app_from_yaml("spec: {image: 'api:1'}")).is_none());
    }
}
