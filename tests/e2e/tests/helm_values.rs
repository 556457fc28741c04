//! The Helm chart's optional values (image digest and registry, extra args and env, securityContext
//! and probe overrides, PodMonitor, scrape TLS and relabelings, common labels, NetworkPolicy, extra
//! objects, Grafana dashboard): every one renders as documented and the API server accepts every
//! rendered object (server-side dry run, monitoring CRDs installed); the dashboard's and the
//! PrometheusRule's PromQL parse (promtool).

use std::collections::BTreeSet;
use std::path::Path;

use empacts_e2e::helm::*;
use empacts_e2e::prometheus::{prometheus_operator_crd_file, promtool_check_rules};
use empacts_e2e::*;
use serde_yaml::Value;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Every optional value set (the ServiceMonitor variant; the PodMonitor is its alternative).
fn all_values() -> String {
    format!(
        r#"
commonLabels: {{team: platform}}
image: {{registry: mirror.example.com, digest: "{DIGEST}"}}
extraArgs: ["--log-level=debug"]
extraEnv: [{{name: RUST_BACKTRACE, value: "1"}}]
podSecurityContext: {{fsGroup: 2000}}
securityContext: {{runAsUser: 1000, runAsGroup: 1000}}
livenessProbe: {{periodSeconds: 20}}
readinessProbe: {{failureThreshold: 6}}
revisionHistoryLimit: 2
serviceMonitor:
  enabled: true
  scheme: https
  tlsConfig: {{insecureSkipVerify: true}}
  relabelings: [{{action: replace, sourceLabels: [__meta_kubernetes_pod_node_name], targetLabel: node}}]
  metricRelabelings: [{{action: drop, sourceLabels: [__name__], regex: go_.*}}]
prometheusRule: {{enabled: true}}
dashboard: {{enabled: true, annotations: {{grafana_folder: Operators}}}}
networkPolicy:
  enabled: true
  metricsFrom: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: monitoring}}}}}}]
  apiServer: {{cidrs: [10.0.0.1/32]}}
  extraEgress: [{{ports: [{{port: 9090, protocol: TCP}}]}}]
extraObjects:
  - apiVersion: v1
    kind: ConfigMap
    metadata: {{name: "{{{{ .Release.Name }}}}-extra"}}
    data: {{release: "{{{{ .Release.Name }}}}"}}
  - |
    apiVersion: v1
    kind: ConfigMap
    metadata:
      name: {{{{ .Release.Name }}}}-extra-text
"#
    )
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    container["env"].as_sequence()?.iter().find(|e| e["name"] == name)?["value"].as_str().map(String::from)
}

/// What each value does to the Deployment.
fn assert_deployment_values(docs: &[Value]) {
    let d = one(docs, "Deployment");
    assert_eq!(d["spec"]["revisionHistoryLimit"].as_u64(), Some(2));
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        c["image"].as_str(),
        Some(format!("mirror.example.com/ghcr.io/empacts/empacts-operator@{DIGEST}").as_str()),
        "the digest replaces the tag; the registry prefixes the repository"
    );
    assert_eq!(strings(&c["args"]).last().map(String::as_str), Some("--log-level=debug"));
    assert_eq!(env_value(c, "RUST_BACKTRACE").as_deref(), Some("1"));
    assert!(c["env"].as_sequence().unwrap().iter().any(|e| e["name"] == "POD_NAME"), "extraEnv adds, not replaces");
    // Overrides merge over the restricted defaults, which stay.
    assert_eq!(pod["securityContext"]["fsGroup"].as_u64(), Some(2000));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    let sc = &c["securityContext"];
    assert_eq!((sc["runAsUser"].as_u64(), sc["runAsGroup"].as_u64()), (Some(1000), Some(1000)));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(c["livenessProbe"]["periodSeconds"].as_u64(), Some(20));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    assert_eq!(c["readinessProbe"]["failureThreshold"].as_u64(), Some(6));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
}

fn assert_network_policy(docs: &[Value]) {
    let np = one(docs, "NetworkPolicy");
    assert_eq!(strings(&np["spec"]["policyTypes"]), ["Ingress", "Egress"]);
    let ingress = np["spec"]["ingress"].as_sequence().unwrap();
    assert_eq!(ingress.len(), 1, "one ingress rule: the metrics port");
    assert_eq!(ingress[0]["ports"][0]["port"].as_str(), Some("metrics"));
    assert_eq!(
        ingress[0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str(),
        Some("monitoring")
    );
    let egress = np["spec"]["egress"].as_sequence().unwrap();
    let ports = |rule: &Value| -> Vec<u64> {
        rule["ports"].as_sequence().unwrap().iter().filter_map(|p| p["port"].as_u64()).collect()
    };
    assert_eq!(egress.len(), 3, "API server, DNS, extraEgress: {egress:?}");
    assert_eq!(ports(&egress[0]), [443, 6443]);
    assert_eq!(egress[0]["to"][0]["ipBlock"]["cidr"].as_str(), Some("10.0.0.1/32"));
    assert_eq!(ports(&egress[1]), [53, 53]);
    assert_eq!(ports(&egress[2]), [9090]);
}

/// Writes the documents to a file and applies them with `kubectl apply --dry-run=server`: the API
/// server validates every object (schemas of the built-in kinds and of the CRDs) without storing it.
fn dry_run_apply(env: &ClusterEnv, docs: &[Value], dir: &Path, name: &str) {
    let file = dir.join(name);
    let yaml: Vec<String> = docs.iter().map(|d| serde_yaml::to_string(d).unwrap()).collect();
    std::fs::write(&file, yaml.join("---\n")).unwrap();
    let out = kubectl(env, &["apply", "--dry-run=server", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "the API server refuses {name}:\n{}", text(&out));
    let applied = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("(server dry run)")).count();
    assert_eq!(applied, docs.len(), "every object was dry-run applied:\n{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_renders_and_the_api_server_accepts_every_object() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "helmvals").await;
    let dir = std::env::temp_dir().join(format!("empacts-e2e-{}", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let values = dir.join("values.yaml");
    std::fs::write(&values, all_values()).unwrap();
    let values_arg = values.to_str().unwrap();

    let out = helm(&env, &["lint", "--strict", chart().to_str().unwrap(), "-f", values_arg]);
    assert!(out.status.success() && text(&out).contains("0 chart(s) failed"), "helm lint --strict:\n{}", text(&out));
    let all = render_chart(&env, &chart(), &ns.name, &[], &["-f", values_arg]);
    // commonLabels on every object of the chart (extraObjects are the user's own manifests).
    for doc in all.iter().filter(|d| !d["metadata"]["name"].as_str().unwrap_or_default().starts_with("rel-extra")) {
        let labels = &doc["metadata"]["labels"];
        assert_eq!(
            labels["team"].as_str(),
            Some("platform"),
            "{} {:?} lacks commonLabels",
            kind_of(doc),
            doc["metadata"]
        );
    }
    assert_deployment_values(&all);
    assert_network_policy(&all);
    let sm = one(&all, "ServiceMonitor");
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["scheme"].as_str(), Some("https"));
    assert_eq!(endpoint["tlsConfig"]["insecureSkipVerify"].as_bool(), Some(true));
    assert_eq!(endpoint["relabelings"][0]["targetLabel"].as_str(), Some("node"));
    assert_eq!(endpoint["metricRelabelings"][0]["action"].as_str(), Some("drop"));
    assert_eq!(endpoint["honorLabels"].as_bool(), Some(true));
    let extra: BTreeSet<&str> =
        of_kind(&all, "ConfigMap").iter().filter_map(|c| c["metadata"]["name"].as_str()).collect();
    assert_eq!(extra, BTreeSet::from(["rel-empacts-operator-dashboard", "rel-extra", "rel-extra-text"]));
    let dashboard =
        of_kind(&all, "ConfigMap").into_iter().find(|c| c["metadata"]["name"] == "rel-empacts-operator-dashboard");
    let dashboard = dashboard.unwrap();
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"].as_str(), Some("1"));
    assert_eq!(dashboard["metadata"]["annotations"]["grafana_folder"].as_str(), Some("Operators"));
    let shipped: serde_json::Value =
        serde_json::from_str(dashboard["data"]["empacts-operator.json"].as_str().unwrap()).expect("dashboard JSON");
    let file = std::fs::read_to_string(chart().join("dashboards/empacts-operator.json")).unwrap();
    assert_eq!(shipped, serde_json::from_str::<serde_json::Value>(&file).unwrap(), "the ConfigMap ships the file");

    // The PodMonitor alternative; the alerts then select its job, <namespace>/<name>.
    let pm_sets = ["serviceMonitor.enabled=false", "podMonitor.enabled=true", "podMonitor.scheme=https"];
    let pod_monitored = render_chart(&env, &chart(), &ns.name, &pm_sets, &["-f", values_arg]);
    let pm = one(&pod_monitored, "PodMonitor");
    assert!(of_kind(&pod_monitored, "ServiceMonitor").is_empty());
    let pm_endpoint = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!((pm_endpoint["port"].as_str(), pm_endpoint["honorLabels"].as_bool()), (Some("metrics"), Some(true)));
    assert_eq!(pm_endpoint["scheme"].as_str(), Some("https"));
    let rule = one(&pod_monitored, "PrometheusRule");
    let expr = rule["spec"]["groups"][0]["rules"][0]["expr"].as_str().unwrap();
    assert!(expr.contains(&format!(r#"job="{}/rel-empacts-operator""#, ns.name)), "{expr}");

    // Sharding: a StatefulSet of one replica per shard, each with --shards, allowed to write the
    // Leases of its shard count only (and to read all, to wait for other configurations).
    let out =
        helm(&env, &["lint", "--strict", chart().to_str().unwrap(), "-f", values_arg, "--set", "sharding.replicas=3"]);
    assert!(
        out.status.success() && text(&out).contains("0 chart(s) failed"),
        "helm lint --strict (sharded):\n{}",
        text(&out)
    );
    let sharded = render_chart(&env, &chart(), &ns.name, &["sharding.replicas=3"], &["-f", values_arg]);
    assert!(of_kind(&sharded, "Deployment").is_empty(), "sharded: no Deployment");
    let sts = one(&sharded, "StatefulSet");
    assert_eq!(sts["spec"]["replicas"].as_u64(), Some(3));
    assert_eq!(sts["spec"]["podManagementPolicy"].as_str(), Some("Parallel"));
    assert!(strings(&sts["spec"]["template"]["spec"]["containers"][0]["args"]).contains(&"--shards=3".to_string()));
    let lease_rules = |objects: &[serde_yaml::Value]| -> Vec<(Vec<String>, Vec<String>)> {
        of_kind(objects, "Role")
            .iter()
            .flat_map(|r| r["rules"].as_sequence().cloned().unwrap_or_default())
            .filter(|rule| strings(&rule["resources"]) == ["leases"])
            .map(|rule| (strings(&rule["verbs"]), strings(&rule["resourceNames"])))
            .collect()
    };
    let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(
        lease_rules(&sharded),
        [
            (names(&["create"]), vec![]),
            (names(&["get", "list"]), vec![]),
            (
                names(&["update", "patch"]),
                names(&[
                    "empacts-operator-shard-0-of-3",
                    "empacts-operator-shard-1-of-3",
                    "empacts-operator-shard-2-of-3"
                ])
            )
        ]
    );
    assert_eq!(one(&sharded, "PodDisruptionBudget")["spec"]["minAvailable"].as_u64(), Some(1));
    let unsharded = render_chart(&env, &chart(), &ns.name, &["replicas=1"], &["-f", values_arg]);
    assert_eq!(lease_rules(&unsharded)[2], (names(&["update", "patch"]), names(&["empacts-operator"])));
    assert!(of_kind(&unsharded, "StatefulSet").is_empty() && of_kind(&unsharded, "PodDisruptionBudget").is_empty());
    assert!(
        !strings(&one(&unsharded, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"])
            .iter()
            .any(|a| a.starts_with("--shards"))
    );

    // The schema and the template checks refuse what cannot work.
    for (set, expect) in [
        ("sharding.replicas=0", "sharding"),
        ("sharding.replicas=2,leaderElection.enabled=false", "sharding.replicas > 1 requires leaderElection"),
        ("image.digest=latest", "digest"),
        ("serviceMonitor.enabled=true,podMonitor.enabled=true", "alternatives"),
        ("networkPolicy.apiServer.ports={0}", "ports"),
        ("serviceMonitor.scheme=ftp", "scheme"),
        ("revisionHistoryLimit=-1", "revisionHistoryLimit"),
    ] {
        let out = helm(&env, &["template", "rel", chart().to_str().unwrap(), "--set", set]);
        assert!(!out.status.success(), "helm template --set {set} must fail");
        assert!(text(&out).contains(expect), "--set {set}: {}", text(&out));
    }

    // The API server accepts every rendered object, the monitoring ones against the Prometheus
    // Operator's CRDs (cluster-wide; left installed, as the monitoring tests do).
    for file in [
        "monitoring.coreos.com_servicemonitors.yaml",
        "monitoring.coreos.com_prometheusrules.yaml",
        "monitoring.coreos.com_podmonitors.yaml",
    ] {
        let path = prometheus_operator_crd_file(file);
        let out = kubectl(&env, &["apply", "--server-side", "--force-conflicts", "-f", path.to_str().unwrap()]);
        assert!(out.status.success(), "{file}: {}", text(&out));
    }
    let crds = ["servicemonitors", "prometheusrules", "podmonitors"].map(|c| format!("crd/{c}.monitoring.coreos.com"));
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    wait.extend(crds.iter().map(String::as_str));
    let out = kubectl(&env, &wait);
    assert!(out.status.success(), "{}", text(&out));
    dry_run_apply(&env, &all, &dir, "all-values.yaml");
    dry_run_apply(&env, &pod_monitored, &dir, "pod-monitor.yaml");
    dry_run_apply(&env, &sharded, &dir, "sharded.yaml");
    dry_run_apply(&env, &render(&env, &ns.name, &[]), &dir, "defaults.yaml");
    std::fs::remove_dir_all(&dir).ok();
    ns.cleanup().await;
}

/// A Grafana expression with sample values for its variables (`$var`, `${var}`): the `$__*`
/// intervals become 5m, the others (all used in regex matchers) `.*`.
fn substitute(expr: &str) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 1..];
        let (name, len) = match tail.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').expect("closed ${...}");
                (&braced[..end], end + 2)
            }
            None => {
                let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
                (&tail[..end], end)
            }
        };
        assert!(!name.is_empty(), "a lone $ in {expr}");
        out.push_str(if name.starts_with("__") { "5m" } else { ".*" });
        rest = &tail[len..];
    }
    out.push_str(rest);
    out
}

/// Every `expr` of the dashboard's panels (rows' nested panels included).
fn dashboard_exprs(panels: &serde_json::Value, out: &mut Vec<String>) {
    for panel in panels.as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().expect("every target has an expr").to_string());
        }
        dashboard_exprs(&panel["panels"], out);
    }
}

/// The metric names an expression uses (empacts_* and process_*), histogram suffixes removed.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["empacts_", "process_"] {
        for (i, _) in expr.match_indices(prefix) {
            let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            names.insert(name.trim_end_matches("_bucket").to_string());
        }
    }
    names
}

/// The metrics the operator exports (README, "Operating it").
const METRICS: [&str; 27] = [
    "empacts_reconcile_total",
    "empacts_reconcile_errors_total",
    "empacts_reconcile_duration_seconds",
    "empacts_apps",
    "empacts_migrations_total",
    "empacts_migration_duration_seconds",
    "empacts_rollbacks_total",
    "empacts_analysis_measurements_total",
    "empacts_secrets_generated_total",
    "empacts_secret_rotations_total",
    "empacts_watch_restarts_total",
    "empacts_reconcile_deadline_exceeded_total",
    "empacts_leader",
    "empacts_shards_held",
    "empacts_build_info",
    "empacts_child_applies_total",
    "empacts_app_info",
    "empacts_app_ready",
    "empacts_app_stalled",
    "empacts_reconciles_in_flight",
    "empacts_reconciles_queued",
    "empacts_kube_requests_total",
    "empacts_kube_request_duration_seconds",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_start_time_seconds",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_expressions_parse_and_use_only_exported_metrics() {
    let (env, _client) = cluster().await;
    let text = std::fs::read_to_string(chart().join("dashboards/empacts-operator.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");

    // Data source, operator job, namespace and app variables; every panel queries the chosen data source.
    let vars: Vec<&str> =
        dashboard["templating"]["list"].as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(vars, ["datasource", "job", "namespace", "app"]);
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard["panels"], &mut exprs);
    for panel in dashboard["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row") {
        assert_eq!(panel["datasource"]["uid"].as_str(), Some("${datasource}"), "{}", panel["title"]);
    }
    assert!(exprs.len() >= 30, "{} expressions", exprs.len());

    // Only metrics the operator exports, and every one of them shown somewhere.
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    let known: BTreeSet<String> = METRICS.iter().map(|m| m.to_string()).collect();
    assert_eq!(used, known, "dashboard metrics (left) vs exported metrics (right)");

    // Every expression parses: promtool checks them as recording rules, with the chart's
    // PrometheusRule groups in a second file.
    let dir = std::env::temp_dir().join(format!("empacts-e2e-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"record": format!("dashboard:expr_{i}"), "expr": substitute(e)}))
        .collect();
    let file = dir.join("dashboard.rules.yaml");
    let groups = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, serde_yaml::to_string(&groups).unwrap()).unwrap();
    let checked =
        promtool_check_rules(&file).unwrap_or_else(|e| panic!("promtool refuses a dashboard expression: {e}"));
    assert!(checked.contains(&format!("SUCCESS: {} rules found", exprs.len())), "{checked}");

    let rendered = render(&env, "ops", &["prometheusRule.enabled=true"]);
    let rule = one(&rendered, "PrometheusRule");
    let file = dir.join("chart.rules.yaml");
    let groups = serde_json::json!({"groups": serde_json::to_value(&rule["spec"]["groups"]).unwrap()});
    std::fs::write(&file, serde_yaml::to_string(&groups).unwrap()).unwrap();
    let checked = promtool_check_rules(&file).unwrap_or_else(|e| panic!("promtool refuses the chart's alerts: {e}"));
    assert!(checked.contains("SUCCESS: 6 rules found"), "{checked}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn grafana_variables_are_substituted() {
    assert_eq!(
        substitute(r#"sum(rate(x{job=~"$job", app=~"${app}"}[$__rate_interval]))"#),
        r#"sum(rate(x{job=~".*", app=~".*"}[5m]))"#
    );
    assert_eq!(metric_names("histogram_quantile(0.99, empacts_reconcile_duration_seconds_bucket{a=\"b\"})").len(), 1);
}
