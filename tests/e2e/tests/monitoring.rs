//! Monitoring children on the real control plane: the Prometheus Operator's CRDs are optional.
//! Without them an app with spec.monitoring is Ready and told why (one MonitoringUnavailable
//! Event); once they are installed the ServiceMonitor and PrometheusRule appear without any
//! change to the app, follow its spec, and go when the spec no longer asks for them.
//!
//! The CRDs come from the prometheus-operator module (example/prometheus-operator-crd), in
//! the directory named by EMPACTS_PROMETHEUS_OPERATOR_CRDS. The test removes them first (they
//! are cluster-wide) and leaves them installed at the end.

use std::path::PathBuf;
use std::time::Duration;

use empacts_api::{EmpactsApp, Phase};
use empacts_e2e::*;
use k8s_openapi::api::core::v1::{Event, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);
const CRDS: [&str; 2] = ["servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"];

fn app(spec: &str) -> EmpactsApp {
    app_yaml(&format!("apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: api}}\nspec: {spec}\n"))
}

/// The directory of the CRD YAMLs; None skips the test (a failure under EMPACTS_TESTBED_REQUIRED).
fn crd_dir() -> Option<PathBuf> {
    let from_up = || up_export("EMPACTS_PROMETHEUS_OPERATOR_CRDS").map(Into::into);
    match std::env::var_os("EMPACTS_PROMETHEUS_OPERATOR_CRDS").or_else(from_up) {
        Some(dir) => Some(PathBuf::from(dir)),
        None if std::env::var_os("EMPACTS_TESTBED_REQUIRED").is_some() => panic!(
            "EMPACTS_PROMETHEUS_OPERATOR_CRDS is not set: it must name the directory holding \
             monitoring.coreos.com_servicemonitors.yaml and monitoring.coreos.com_prometheusrules.yaml \
             (example/prometheus-operator-crd of github.com/prometheus-operator/prometheus-operator)"
        ),
        None => {
            eprintln!("skipped: EMPACTS_PROMETHEUS_OPERATOR_CRDS is not set");
            None
        }
    }
}

async fn remove_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRDS {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    for name in CRDS {
        wait_until(&format!("CRD {name} is gone"), T, || {
            let api = api.clone();
            async move { api.get_opt(name).await.ok()?.is_none().then_some(()) }
        })
        .await;
    }
}

async fn install_crds(client: &Client, dir: &std::path::Path) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRDS {
        let (plural, _) = name.split_once('.').unwrap();
        let path = dir.join(format!("monitoring.coreos.com_{plural}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let crd: Value = serde_yaml::from_str(&text).expect("CRD YAML parses");
        api.patch(name, &PatchParams::apply("e2e-monitoring").force(), &Patch::Apply(&crd)).await.expect("CRD applies");
    }
    for name in CRDS {
        wait_until(&format!("CRD {name} is Established"), T, || {
            let api = api.clone();
            async move { empacts_operator::monitoring::established(&api.get(name).await.ok()?).then_some(()) }
        })
        .await;
    }
}

fn monitoring_api(client: &Client, ns: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "monitoring.coreos.com".into(),
        version: "v1".into(),
        api_version: "monitoring.coreos.com/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// The object as JSON, None when absent (or when its kind does not exist).
async fn get(api: &Api<DynamicObject>, name: &str) -> Option<Value> {
    match api.get(name).await {
        Ok(obj) => Some(serde_json::to_value(obj).unwrap()),
        Err(kube::Error::Api(e)) if e.code == 404 => None,
        Err(e) => panic!("reading {name}: {e}"),
    }
}

async fn unavailable_events(ns: &TestNamespace) -> Vec<Event> {
    let lp = ListParams::default().fields("involvedObject.name=api");
    let items = ns.api::<Event>().list(&lp).await.expect("events list").items;
    items.into_iter().filter(|e| e.reason.as_deref() == Some("MonitoringUnavailable")).collect()
}

fn error_rate_expr(rule: &Value) -> String {
    let rules = rule["spec"]["groups"][0]["rules"].as_array().cloned().unwrap_or_default();
    let found = rules.iter().find(|r| r["alert"] == "HighErrorRate").expect("HighErrorRate rule");
    found["expr"].as_str().unwrap().to_string()
}

async fn service_ports(ns: &TestNamespace) -> Vec<(String, i32)> {
    let svc = ns.api::<Service>().get("api").await.expect("Service");
    svc.spec.unwrap().ports.unwrap().into_iter().map(|p| (p.name.unwrap_or_default(), p.port)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_children_follow_the_prometheus_operator_crds_and_the_spec() {
    let Some(dir) = crd_dir() else { return };
    let (_env, client) = cluster().await;

    // (a) No CRDs: the app is Ready, told once why it has no monitoring objects.
    remove_crds(&client).await;
    let ns = TestNamespace::new(&client, "mon").await;
    let op = Operator::start(&client, &ns.name).await;
    let spec = "{image: 'registry.example.com/api:1.0.0', port: 8080, \
                monitoring: {port: 9102, interval: 15s, labels: {release: prom}, alerts: {errorRate: 0.02, for: 2m}}}";
    apply_app(&ns, &app(spec)).await;
    let ready =
        wait_app(&ns, "api", "Ready without the CRDs", T, |a| phase(a) == Some(Phase::Ready) && observed_current(a))
            .await;
    let uid = ready.uid().unwrap();
    let events = wait_until("a MonitoringUnavailable Event", T, || async {
        let events = unavailable_events(&ns).await;
        (!events.is_empty()).then_some(events)
    })
    .await;
    let note = events[0].message.clone().unwrap_or_default();
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    for crd in CRDS {
        assert!(note.contains(crd), "the Event names the missing CRD {crd}: {note}");
    }
    assert!(note.contains("remove spec.monitoring"), "{note}");
    assert_eq!(service_ports(&ns).await, [("http".to_string(), 80), ("metrics".to_string(), 9102)]);
    // Another reconcile (an annotation: no new generation) reports nothing new.
    let api: Api<EmpactsApp> = ns.api();
    let touch = serde_json::json!({"metadata": {"annotations": {"e2e/touch": "1"}}});
    api.patch("api", &PatchParams::default(), &Patch::Merge(&touch)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let count: i32 = unavailable_events(&ns).await.iter().map(|e| e.count.unwrap_or(1)).sum();
    assert_eq!(count, 1, "one MonitoringUnavailable Event per transition");
    let app_now = api.get("api").await.unwrap();
    assert_eq!(phase(&app_now), Some(Phase::Ready), "still Ready");

    // (b) The CRDs appear: the objects follow without any change to the app.
    let generation = app_now.metadata.generation;
    install_crds(&client, &dir).await;
    let monitors = monitoring_api(&client, &ns.name, "ServiceMonitor", "servicemonitors");
    let rules = monitoring_api(&client, &ns.name, "PrometheusRule", "prometheusrules");
    let sm = wait_until("the ServiceMonitor appears", T, || async { get(&monitors, "api").await }).await;
    let rule = wait_until("the PrometheusRule appears", T, || async { get(&rules, "api").await }).await;
    assert_eq!(api.get("api").await.unwrap().metadata.generation, generation, "the app was not touched");
    for obj in [&sm, &rule] {
        assert_eq!(obj["metadata"]["labels"]["release"], "prom", "{obj}");
        let owner = &obj["metadata"]["ownerReferences"][0];
        assert_eq!((owner["uid"].as_str(), owner["controller"].as_bool()), (Some(uid.as_str()), Some(true)));
    }
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["interval"], "15s");
    let targets: Vec<&str> =
        endpoint["relabelings"].as_array().unwrap().iter().filter_map(|r| r["targetLabel"].as_str()).collect();
    assert_eq!(targets, ["namespace", "app", "revision"]);
    assert_eq!(sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"], "api");
    assert_eq!(rule["spec"]["groups"][0]["name"], "api.rules");
    let alerts: Vec<&str> =
        rule["spec"]["groups"][0]["rules"].as_array().unwrap().iter().filter_map(|r| r["alert"].as_str()).collect();
    assert_eq!(alerts, ["HighErrorRate", "HighResponseTime", "PodCrashLooping"]);
    let expr = error_rate_expr(&rule);
    assert!(expr.contains(&format!(r#"namespace="{}",app="api""#, ns.name)) && expr.ends_with("> 0.02"), "{expr}");
    assert_eq!(rule["spec"]["groups"][0]["rules"][0]["for"], "2m");

    // The live PrometheusRule's groups are a rule file the real Prometheus accepts and loads.
    let dir = std::env::temp_dir().join(format!("empacts-rules-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rules.yaml");
    let groups = serde_json::json!({"groups": rule["spec"]["groups"].clone()});
    std::fs::write(&file, serde_yaml::to_string(&groups).unwrap()).unwrap();
    empacts_e2e::prometheus::promtool_check_rules(&file).unwrap_or_else(|e| panic!("promtool refuses the rules: {e}"));
    let prometheus = empacts_e2e::prometheus::TestPrometheus::start(&[], &[&file]).await;
    let loaded = wait_until("Prometheus loaded the app's alerts", T, || async {
        let loaded = prometheus.rules_loaded().await;
        (loaded.len() == 3).then_some(loaded)
    })
    .await;
    assert_eq!(loaded, ["HighErrorRate", "HighResponseTime", "PodCrashLooping"]);
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);

    // (c) A new threshold updates the rule.
    let spec = spec.replace("errorRate: 0.02", "errorRate: 0.05");
    apply_app(&ns, &app(&spec)).await;
    wait_until("the rule has the new threshold", T, || async {
        get(&rules, "api").await.filter(|r| error_rate_expr(r).ends_with("> 0.05"))
    })
    .await;

    // (d) Alerts off: the rule goes, the ServiceMonitor stays; no monitoring: it goes too,
    // and so does the Service's metrics port.
    let spec = spec.replace("alerts: {errorRate: 0.05, for: 2m}", "alerts: {enabled: false}");
    apply_app(&ns, &app(&spec)).await;
    wait_until("the PrometheusRule is deleted", T, || async { get(&rules, "api").await.is_none().then_some(()) }).await;
    assert!(get(&monitors, "api").await.is_some(), "the ServiceMonitor stays");
    apply_app(&ns, &app("{image: 'registry.example.com/api:1.0.0', port: 8080}")).await;
    wait_until("the ServiceMonitor is deleted", T, || async { get(&monitors, "api").await.is_none().then_some(()) })
        .await;
    wait_until("the Service's metrics port is gone", T, || async {
        (service_ports(&ns).await == [("http".to_string(), 80)]).then_some(())
    })
    .await;
    wait_app(&ns, "api", "Ready without monitoring", T, |a| phase(a) == Some(Phase::Ready) && observed_current(a))
        .await;

    // (e) The CRDs stay installed.
    op.stop().await;
    ns.cleanup().await;
}
