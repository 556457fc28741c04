//! The Helm chart (charts/empacts-operator): lint, rendering (least-privilege RBAC, Pod Security
//! Standards "restricted", strict values schema), and a real `helm install` whose ServiceAccount's
//! RBAC is proven sufficient by running the operator with that ServiceAccount's token.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use empacts_api::Phase;
use empacts_e2e::helm::*;
use empacts_e2e::*;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_yaml::Value;

const T: Duration = Duration::from_secs(120);

/// (apiGroup, resource) -> verbs, over all rules of the given roles.
/// ClusterRoles aggregated into the built-in view/edit/admin roles (for users, not the operator).
fn aggregated(role: &Value) -> bool {
    role["metadata"]["labels"].as_mapping().is_some_and(|l| {
        l.keys().any(|k| k.as_str().is_some_and(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-")))
    })
}

/// The ClusterRole reading the Prometheus Operator CRDs (by name), rendered in every mode.
fn monitoring_crds(role: &Value) -> bool {
    role["metadata"]["name"].as_str().is_some_and(|n| n.ends_with("-monitoring-crds"))
}

/// The operator's own ClusterRoles (other than the CRD reader).
fn operator_cluster_roles(docs: &[Value]) -> Vec<&Value> {
    of_kind(docs, "ClusterRole").into_iter().filter(|r| !aggregated(r) && !monitoring_crds(r)).collect()
}

/// One ClusterRole (and its binding) reads exactly the two Prometheus Operator CRDs by name.
fn assert_monitoring_crds_role(docs: &[Value]) {
    let roles: Vec<&Value> = of_kind(docs, "ClusterRole").into_iter().filter(|r| monitoring_crds(r)).collect();
    assert_eq!(roles.len(), 1, "one ClusterRole reads the monitoring CRDs");
    let rules = roles[0]["rules"].as_sequence().expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(strings(&rules[0]["apiGroups"]), ["apiextensions.k8s.io"]);
    assert_eq!(strings(&rules[0]["resources"]), ["customresourcedefinitions"]);
    assert_eq!(
        strings(&rules[0]["resourceNames"]),
        ["servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"]
    );
    assert_eq!(strings(&rules[0]["verbs"]), ["get", "list", "watch"]);
    let bindings: Vec<&Value> = of_kind(docs, "ClusterRoleBinding")
        .into_iter()
        .filter(|b| b["roleRef"]["name"] == roles[0]["metadata"]["name"])
        .collect();
    assert_eq!(bindings.len(), 1, "the CRD reader is bound");
}

/// ClusterRoleBindings of the operator's own ClusterRoles (other than the CRD reader).
fn operator_cluster_bindings(docs: &[Value]) -> Vec<&Value> {
    of_kind(docs, "ClusterRoleBinding")
        .into_iter()
        .filter(|b| !b["roleRef"]["name"].as_str().is_some_and(|n| n.ends_with("-monitoring-crds")))
        .collect()
}

fn assert_aggregated_roles(docs: &[Value]) {
    let roles: Vec<&Value> = of_kind(docs, "ClusterRole").into_iter().filter(|r| aggregated(r)).collect();
    let names: BTreeSet<&str> = roles.iter().map(|r| r["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["empacts-edit", "empacts-view"]));
    for role in &roles {
        for ((group, resource), _) in grants(&[role]) {
            assert!(group == "empacts.io" && resource.starts_with("empactsapps"), "{resource} granted to users");
        }
    }
}

fn grants(roles: &[&Value]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for role in roles {
        for rule in role["rules"].as_sequence().expect("rules") {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    out.entry((group.clone(), resource)).or_default().extend(strings(&rule["verbs"]));
                }
            }
        }
    }
    out
}

/// What the operator does with the API (see the chart's rbac.yaml): no verb it never uses.
fn expected_grants() -> BTreeMap<(String, String), BTreeSet<String>> {
    let children = ["list", "watch", "create", "patch", "delete"];
    let table: Vec<(&str, &str, Vec<&str>)> = vec![
        ("empacts.io", "empactsapps", vec!["get", "list", "watch"]),
        ("empacts.io", "empactsapps/status", vec!["patch"]),
        ("empacts.io", "empactsapps/finalizers", vec!["update"]),
        ("", "secrets", vec!["get", "list", "watch", "create", "patch", "update"]),
        ("events.k8s.io", "events", vec!["create", "patch"]),
        ("", "events", vec!["create", "patch"]),
        ("apps", "deployments", vec!["get", "list", "watch", "create", "patch"]),
        ("apps", "controllerrevisions", vec!["list", "watch", "create", "patch", "delete"]),
        ("batch", "jobs", children.to_vec()),
        ("", "services", vec!["list", "watch", "create", "patch"]),
        ("", "serviceaccounts", vec!["list", "watch", "create", "patch"]),
        ("", "configmaps", children.to_vec()),
        ("autoscaling", "horizontalpodautoscalers", children.to_vec()),
        ("policy", "poddisruptionbudgets", children.to_vec()),
        ("networking.k8s.io", "ingresses", children.to_vec()),
        ("networking.k8s.io", "networkpolicies", children.to_vec()),
        ("monitoring.coreos.com", "servicemonitors", vec!["get", "create", "patch", "delete"]),
        ("monitoring.coreos.com", "prometheusrules", vec!["get", "create", "patch", "delete"]),
    ];
    table
        .into_iter()
        .map(|(g, r, verbs)| ((g.to_string(), r.to_string()), verbs.into_iter().map(String::from).collect()))
        .collect()
}

fn assert_no_wildcards(docs: &[Value]) {
    for role in docs.iter().filter(|d| matches!(kind_of(d), "Role" | "ClusterRole")) {
        for rule in role["rules"].as_sequence().expect("rules") {
            for field in ["verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"] {
                for s in strings(&rule[field]) {
                    assert!(!s.contains('*'), "wildcard {s:?} in {field} of {} {:?}", kind_of(role), role["metadata"]);
                }
            }
            assert!(rule.get("nonResourceURLs").is_none(), "no non-resource URLs");
        }
    }
}

/// The leader-election Role: only Leases, only in the release namespace.
fn assert_lease_role(docs: &[Value], release_ns: &str) {
    let lease_roles: Vec<&Value> = of_kind(docs, "Role")
        .into_iter()
        .filter(|r| grants(&[r]).keys().any(|(g, res)| g == "coordination.k8s.io" && res == "leases"))
        .collect();
    assert_eq!(lease_roles.len(), 1, "one Role grants Leases");
    let role = lease_roles[0];
    assert_eq!(role["metadata"]["namespace"].as_str(), Some(release_ns), "the Lease Role is in the release namespace");
    let g = grants(&[role]);
    assert_eq!(g.len(), 1, "the Lease Role grants nothing else: {g:?}");
    let verbs: Vec<&str> = g.values().next().unwrap().iter().map(String::as_str).collect();
    // list: a replica reads every Lease there, to wait for replicas of another configuration.
    assert_eq!(verbs, ["create", "get", "list", "patch", "update"]);
    for cr in of_kind(docs, "ClusterRole") {
        assert!(!grants(&[cr]).keys().any(|(_, r)| r == "leases"), "no cluster-wide Lease access");
    }
    // The binding of the Lease Role is in the release namespace, for the chart's ServiceAccount.
    let sa = one(docs, "ServiceAccount")["metadata"]["name"].as_str().unwrap().to_string();
    let binding = of_kind(docs, "RoleBinding")
        .into_iter()
        .find(|b| b["roleRef"]["name"] == role["metadata"]["name"])
        .expect("the Lease Role is bound");
    assert_eq!(binding["metadata"]["namespace"].as_str(), Some(release_ns));
    assert_eq!(binding["subjects"][0]["name"].as_str(), Some(sa.as_str()));
    assert_eq!(binding["subjects"][0]["namespace"].as_str(), Some(release_ns));
}

/// Helm's fromYaml/toYaml turn `4096.0` into `4096`: the same number to the API server (a float64 in
/// the CRD's schema), so numbers compare as floats.
fn numbers_as_floats(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::from(n.as_f64().expect("a number")),
        Value::Sequence(items) => Value::Sequence(items.iter().map(numbers_as_floats).collect()),
        Value::Mapping(m) => Value::Mapping(m.iter().map(|(k, v)| (k.clone(), numbers_as_floats(v))).collect()),
        other => other.clone(),
    }
}

fn assert_standard_labels(docs: &[Value]) {
    for doc in docs {
        let labels = &doc["metadata"]["labels"];
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ] {
            assert!(labels[key].as_str().is_some_and(|v| !v.is_empty()), "{} lacks label {key}", kind_of(doc));
        }
        assert_eq!(labels["app.kubernetes.io/instance"].as_str(), Some("rel"));
        assert_eq!(labels["app.kubernetes.io/managed-by"].as_str(), Some("Helm"));
        assert_eq!(labels["app.kubernetes.io/version"].as_str(), Some("0.1.0"));
    }
}

/// Pod Security Standards "restricted" and the rest of the operator's pod spec.
fn assert_deployment(docs: &[Value], watch_ns: Option<&str>) {
    let d = one(docs, "Deployment");
    assert_eq!(d["spec"]["replicas"].as_u64(), Some(2));
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"].as_u64(), Some(30));
    assert_eq!(pod["serviceAccountName"], one(docs, "ServiceAccount")["metadata"]["name"]);
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(psc["runAsUser"].as_u64(), Some(65532));
    assert_eq!(psc["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    for key in ["hostNetwork", "hostPID", "hostIPC", "volumes"] {
        assert!(pod.get(key).is_none(), "pod sets {key}");
    }
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["runAsUser"].as_u64(), Some(65532));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"].get("add").is_none(), "no added capabilities");
    assert_eq!(sc["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    assert_eq!(c["image"].as_str(), Some("ghcr.io/empacts/empacts-operator:0.1.0"), "tag defaults to appVersion");
    assert_eq!(c["imagePullPolicy"].as_str(), Some("IfNotPresent"));

    let args = strings(&c["args"]);
    assert_eq!(args[0], "run");
    assert!(args.contains(&"--metrics-addr=0.0.0.0:8080".to_string()), "{args:?}");
    assert!(args.contains(&"--leader-elect=true".to_string()), "{args:?}");
    // In-flight reconciles get 20 s, the Lease release 5 s: under the 30 s grace period.
    assert!(args.contains(&"--shutdown-timeout=20".to_string()), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--lease-grace") || a.starts_with("--lease-renew")), "{args:?}");
    match watch_ns {
        Some(ns) => assert!(args.contains(&format!("--namespaces={ns}")), "{args:?}"),
        None => assert!(!args.iter().any(|a| a.starts_with("--namespace")), "{args:?}"),
    }
    let env: BTreeMap<String, String> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| {
            let path = e["valueFrom"]["fieldRef"]["fieldPath"].as_str().unwrap_or_default();
            (e["name"].as_str().unwrap().to_string(), path.to_string())
        })
        .collect();
    assert_eq!(env.get("POD_NAME").map(String::as_str), Some("metadata.name"));
    assert_eq!(env.get("POD_NAMESPACE").map(String::as_str), Some("metadata.namespace"));

    let port = &c["ports"][0];
    assert_eq!((port["name"].as_str(), port["containerPort"].as_u64()), (Some("metrics"), Some(8080)));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    assert_eq!(c["livenessProbe"]["httpGet"]["port"].as_str(), Some("metrics"));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(c["readinessProbe"]["httpGet"]["port"].as_str(), Some("metrics"));
    assert!(c["resources"]["requests"]["memory"].as_str().is_some() && c["resources"]["limits"]["memory"].is_string());

    let svc = one(docs, "Service");
    let sp = &svc["spec"]["ports"][0];
    assert_eq!((sp["name"].as_str(), sp["port"].as_u64()), (Some("metrics"), Some(8080)));
    assert_eq!(svc["spec"]["selector"], d["spec"]["selector"]["matchLabels"]);

    let pdb = one(docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1));
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], d["spec"]["selector"]["matchLabels"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_lint_passes() {
    let (env, _client) = cluster().await;
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for args in [
        vec!["lint", chart],
        vec!["lint", "--strict", chart],
        vec!["lint", "--strict", chart, "--set", "watchNamespace=apps"],
        vec!["lint", "--strict", chart, "--set", "serviceMonitor.enabled=true,prometheusRule.enabled=true"],
    ] {
        let out = helm(&env, &args);
        assert!(out.status.success(), "helm {args:?} failed:\n{}", text(&out));
        assert!(text(&out).contains("0 chart(s) failed"), "{}", text(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_template_renders_least_privilege_restricted_manifests() {
    let (env, _client) = cluster().await;

    // Default values: all namespaces, cluster-scoped RBAC.
    let all = render(&env, "ops", &[]);
    let kinds: BTreeSet<&str> = all.iter().map(kind_of).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
            "Deployment",
            "PodDisruptionBudget",
            "CustomResourceDefinition"
        ]),
        "ServiceMonitor, PrometheusRule, PodMonitor, NetworkPolicy and the dashboard are off by default"
    );
    assert_no_wildcards(&all);
    assert_standard_labels(&all);
    assert_eq!(
        grants(&operator_cluster_roles(&all)),
        expected_grants(),
        "ClusterRole grants exactly what the operator uses"
    );
    assert_aggregated_roles(&all);
    assert_monitoring_crds_role(&all);
    let bindings = operator_cluster_bindings(&all);
    assert_eq!(bindings.len(), 1, "one ClusterRoleBinding of the operator's ClusterRole");
    let crb = bindings[0];
    assert_eq!(crb["roleRef"]["name"], operator_cluster_roles(&all)[0]["metadata"]["name"]);
    assert_eq!(crb["subjects"][0]["namespace"].as_str(), Some("ops"));
    assert_lease_role(&all, "ops");
    assert_deployment(&all, None);
    for doc in
        all.iter().filter(|d| !matches!(kind_of(d), "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition"))
    {
        assert_eq!(doc["metadata"]["namespace"].as_str(), Some("ops"), "{} is in the release namespace", kind_of(doc));
    }

    // Watched namespaces: a Role + RoleBinding in each, and no ClusterRole granting the operator
    // anything (only the users' aggregated roles, which grant EmpactsApps only).
    let scoped = render(&env, "ops", &["watchNamespaces={apps,web}"]);
    assert!(operator_cluster_roles(&scoped).is_empty() && operator_cluster_bindings(&scoped).is_empty());
    // Except the reader of the two Prometheus Operator CRDs (cluster-scoped objects).
    assert_monitoring_crds_role(&scoped);
    assert_aggregated_roles(&scoped);
    let web: Vec<&Value> =
        of_kind(&scoped, "Role").into_iter().filter(|r| r["metadata"]["namespace"].as_str() == Some("web")).collect();
    assert_eq!(grants(&web), expected_grants(), "every watched namespace gets the same Role");
    // The older single-namespace value still works.
    let single = render(&env, "ops", &["watchNamespace=apps"]);
    assert_deployment(&single, Some("apps"));
    assert_no_wildcards(&scoped);
    assert_standard_labels(&scoped);
    let main_roles: Vec<&Value> =
        of_kind(&scoped, "Role").into_iter().filter(|r| r["metadata"]["namespace"].as_str() == Some("apps")).collect();
    assert_eq!(main_roles.len(), 1);
    assert_eq!(grants(&main_roles), expected_grants(), "the Role grants exactly what the operator uses");
    let binding = of_kind(&scoped, "RoleBinding")
        .into_iter()
        .find(|b| b["metadata"]["namespace"].as_str() == Some("apps"))
        .expect("RoleBinding in the watched namespace");
    assert_eq!(binding["roleRef"]["kind"].as_str(), Some("Role"));
    assert_eq!(binding["roleRef"]["name"], main_roles[0]["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["namespace"].as_str(), Some("ops"));
    assert_lease_role(&scoped, "ops");
    assert_deployment(&scoped, Some("apps,web"));

    // Monitoring on: ServiceMonitor on the metrics port, PrometheusRule with the alerts.
    let monitored = render(&env, "ops", &["serviceMonitor.enabled=true", "prometheusRule.enabled=true"]);
    assert_no_wildcards(&monitored);
    assert_standard_labels(&monitored);
    let sm = one(&monitored, "ServiceMonitor");
    assert_eq!(sm["apiVersion"].as_str(), Some("monitoring.coreos.com/v1"));
    assert_eq!(sm["spec"]["endpoints"][0]["port"].as_str(), Some("metrics"));
    assert_eq!(sm["spec"]["selector"]["matchLabels"], one(&monitored, "Service")["spec"]["selector"]);
    let rule = one(&monitored, "PrometheusRule");
    let alerts: BTreeMap<String, String> = rule["spec"]["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| (r["alert"].as_str().unwrap().to_string(), r["expr"].as_str().unwrap().to_string()))
        .collect();
    let job = r#"job="rel-empacts-operator-metrics""#;
    for (alert, parts) in [
        ("EmpactsOperatorDown", vec!["absent(up{", job, "== 0"]),
        ("EmpactsReconcileErrors", vec!["rate(empacts_reconcile_errors_total{", "[5m]", "> 0"]),
        ("EmpactsAppRolledBack", vec!["max by (namespace, app) (empacts_app_info{", r#"phase="RolledBack""#, "> 0"]),
        ("EmpactsAppStalled", vec!["max by (namespace, app) (empacts_app_stalled{", "> 0"]),
        ("EmpactsAppMigrationFailed", vec!["max by (namespace, app) (empacts_app_info{", r#"phase="MigrationFailed""#]),
        ("EmpactsMigrationFailed", vec!["increase(empacts_migrations_total{", r#"result="failed""#, "[15m]", "> 0"]),
    ] {
        let expr = alerts.get(alert).unwrap_or_else(|| panic!("alert {alert} in {alerts:?}"));
        for part in parts {
            assert!(expr.contains(part), "{alert}: {expr:?} lacks {part:?}");
        }
    }
    // Per-app alerts name the app; their series carry the app's namespace, so they select by job only.
    for r in rule["spec"]["groups"][0]["rules"].as_sequence().unwrap() {
        let alert = r["alert"].as_str().unwrap();
        if alert.starts_with("EmpactsApp") {
            let summary = r["annotations"]["summary"].as_str().unwrap();
            assert!(summary.contains("{{ $labels.namespace }}/{{ $labels.app }}"), "{alert}: {summary}");
            assert!(!r["expr"].as_str().unwrap().contains(r#"namespace="ops""#), "{alert}");
        }
    }
    // The scrape keeps the metrics' own `namespace` label (else it becomes exported_namespace).
    assert_eq!(sm["spec"]["endpoints"][0]["honorLabels"].as_bool(), Some(true));

    // One replica: no PodDisruptionBudget (minAvailable 1 would block every drain).
    let single = render(&env, "ops", &["replicas=1"]);
    assert!(of_kind(&single, "PodDisruptionBudget").is_empty());

    // The CRD is a template (so `helm upgrade` upgrades it), kept on uninstall by default; its spec is
    // the committed files/crds copy (which the CLI tests compare with `empacts crd`).
    let crd = one(&all, "CustomResourceDefinition");
    assert_eq!(crd["metadata"]["name"].as_str(), Some("empactsapps.empacts.io"));
    assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"].as_str(), Some("keep"));
    let file = std::fs::read_to_string(chart().join("files/crds/empactsapps.empacts.io.yaml")).unwrap();
    let file: Value = serde_yaml::from_str(&file).unwrap();
    assert_eq!(
        numbers_as_floats(&crd["spec"]),
        numbers_as_floats(&file["spec"]),
        "the rendered CRD spec is the committed one"
    );
    let unkept = render(&env, "ops", &["crds.keep=false"]);
    assert!(one(&unkept, "CustomResourceDefinition")["metadata"].get("annotations").is_none());
    assert!(of_kind(&render(&env, "ops", &["crds.enabled=false"]), "CustomResourceDefinition").is_empty());

    // The strict schema rejects bad values; a bad combination fails the render.
    let chart = chart();
    for (set, expect) in [
        ("replicas=two", "replicas"),
        ("replica=2", "replica"),
        ("image.tags=1", "tags"),
        ("watchNamespace=Not_A_Namespace", "watchNamespace"),
        ("logging.format=xml", "format"),
        ("metrics.port=80", "port"),
        ("replicas=3,leaderElection.enabled=false", "leaderElection.enabled"),
        ("terminationGracePeriodSeconds=25", "shutdownTimeoutSeconds"),
        ("leaderElection.graceSeconds=15", "graceSeconds"),
        ("leaderElection.renewPeriodSeconds=0", "renewPeriodSeconds"),
    ] {
        let out = helm(&env, &["template", "rel", chart.to_str().unwrap(), "--set", set]);
        assert!(!out.status.success(), "helm template --set {set} must fail");
        assert!(text(&out).contains(expect), "--set {set}: {}", text(&out));
    }
    let timed = render(&env, "ops", &["leaderElection.graceSeconds=4,leaderElection.renewPeriodSeconds=2"]);
    let args = strings(&one(&timed, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]);
    for flag in ["--lease-grace=4", "--lease-renew-period=2"] {
        assert!(args.contains(&flag.to_string()), "{flag} in {args:?}");
    }
    let out = helm(&env, &["template", "rel", chart.to_str().unwrap(), "--set-string", "replicas=2"]);
    assert!(!out.status.success(), "replicas as a string is rejected");
}

async fn label_restricted(client: &kube::Client, ns: &str) {
    let patch = serde_json::json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    Api::<Namespace>::all(client.clone())
        .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("namespace labels patch");
}

async fn create_secret(ns: &TestNamespace, name: &str, key: &str, value: &str) {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name}, "stringData": {key: value}
    }))
    .unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &secret).await.expect("secret creates");
}

/// `kubectl auth can-i` as the chart's ServiceAccount.
fn can_i(env: &ClusterEnv, as_user: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend(args);
    all.extend(["--as", as_user]);
    let out = kubectl(env, &all);
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl auth can-i {args:?}: {other:?} {}", String::from_utf8_lossy(&out.stderr)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_rbac_is_enough_for_the_operator_and_pods_pass_restricted_pss() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "helm").await;
    label_restricted(&client, &ns.name).await;

    // Control: the namespace really enforces "restricted" (a plain pod is refused).
    let plain: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "pss-control"},
        "spec": {"containers": [{"name": "c", "image": "registry.example.com/plain:1"}]}
    }))
    .unwrap();
    let refused = ns.api::<Pod>().create(&PostParams { dry_run: true, ..Default::default() }, &plain).await;
    let err = refused.expect_err("a pod without a restricted securityContext is refused").to_string();
    assert!(err.contains("PodSecurity") && err.contains("restricted"), "{err}");

    let release = format!("e2e-{}", ns.name);
    let fullname = format!("{release}-empacts-operator");
    let chart = chart();
    let out = helm(
        &env,
        &[
            "install",
            &release,
            chart.to_str().unwrap(),
            "--namespace",
            &ns.name,
            // The testbed's CRD is not the release's (the test harness installed it).
            "--set",
            "crds.enabled=false",
            "--set",
            &format!("watchNamespaces={{{}}}", ns.name),
            "--set",
            "rbac.aggregatedRoles.create=false",
        ],
    );
    assert!(out.status.success(), "helm install failed:\n{}", text(&out));
    assert!(text(&out).contains("STATUS: deployed"), "{}", text(&out));
    assert!(text(&out).contains(&format!("namespace {} only", ns.name)), "NOTES are shown:\n{}", text(&out));

    // What the chart created, for real.
    ns.api::<ServiceAccount>().get(&fullname).await.expect("ServiceAccount");
    ns.api::<Role>().get(&fullname).await.expect("Role");
    ns.api::<RoleBinding>().get(&fullname).await.expect("RoleBinding");
    ns.api::<Role>().get(&format!("{fullname}-leader-election")).await.expect("leader-election Role");
    ns.api::<RoleBinding>().get(&format!("{fullname}-leader-election")).await.expect("leader-election RoleBinding");
    let svc = ns.api::<Service>().get(&format!("{fullname}-metrics")).await.expect("metrics Service");
    let port = &svc.spec.unwrap().ports.unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("metrics"), 8080));
    ns.api::<PodDisruptionBudget>().get(&fullname).await.expect("PodDisruptionBudget");
    ns.api::<Deployment>().get(&fullname).await.expect("Deployment");

    // The ReplicaSet's pods are admitted under PSS "restricted" (kwok then "runs" them).
    let selector = format!("app.kubernetes.io/instance={release}");
    let pods = wait_until("the operator's 2 pods are admitted", T, || async {
        let pods = ns.api::<Pod>().list(&ListParams::default().labels(&selector)).await.ok()?.items;
        (pods.len() == 2).then_some(pods)
    })
    .await;
    for pod in &pods {
        assert!(
            pod.owner_references().iter().any(|o| o.kind == "ReplicaSet"),
            "{} is the ReplicaSet's",
            pod.name_any()
        );
    }
    let replica_sets = ns.api::<ReplicaSet>().list(&ListParams::default().labels(&selector)).await.unwrap().items;
    assert_eq!(replica_sets.len(), 1);
    let rs = &replica_sets[0];
    let failures: Vec<_> = rs
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ == "ReplicaFailure")
        .collect();
    assert!(failures.is_empty(), "ReplicaSet failed to create pods: {failures:?}");
    let rs_events = ns
        .api::<CoreEvent>()
        .list(&ListParams::default().fields(&format!("involvedObject.name={}", rs.name_any())))
        .await
        .unwrap()
        .items;
    let failed_create: Vec<_> = rs_events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
        .map(|e| e.message.clone().unwrap_or_default())
        .collect();
    assert!(failed_create.is_empty(), "pods refused (Pod Security?): {failed_create:?}");

    // Least privilege, as the API server's authorizer sees it.
    let sa_user = format!("system:serviceaccount:{}:{fullname}", ns.name);
    let n = ns.name.as_str();
    assert!(can_i(&env, &sa_user, &["watch", "empactsapps.empacts.io", "-n", n]));
    assert!(can_i(&env, &sa_user, &["create", "jobs.batch", "-n", n]));
    assert!(can_i(&env, &sa_user, &["update", "secrets", "-n", n]));
    assert!(!can_i(&env, &sa_user, &["delete", "secrets", "-n", n]), "never deletes Secrets");
    assert!(!can_i(&env, &sa_user, &["list", "secrets", "-n", "default"]), "only the watched namespace");
    assert!(!can_i(&env, &sa_user, &["list", "empactsapps.empacts.io", "--all-namespaces"]));
    assert!(!can_i(&env, &sa_user, &["create", "pods", "-n", n]));
    assert!(!can_i(&env, &sa_user, &["delete", "empactsapps.empacts.io", "-n", n]));
    assert!(can_i(&env, &sa_user, &["update", "leases.coordination.k8s.io/empacts-operator", "-n", n]));
    assert!(!can_i(&env, &sa_user, &["update", "leases.coordination.k8s.io/other", "-n", n]));
    // Read them all: a replica starts only once other configurations' Leases are free.
    assert!(can_i(&env, &sa_user, &["list", "leases.coordination.k8s.io", "-n", n]));
    assert!(!can_i(&env, &sa_user, &["get", "leases.coordination.k8s.io/empacts-operator", "-n", "default"]));

    // The proof: the operator, authenticated as the chart's ServiceAccount (token), takes the Lease
    // and drives an app with every feature to Ready.
    let kubeconfig = std::env::temp_dir().join(format!("empacts-e2e-{}-sa.kubeconfig", ns.name));
    service_account_kubeconfig(&env, &ns.name, &fullname, &kubeconfig);
    let log = std::env::temp_dir().join(format!("empacts-e2e-{}-chart-sa.log", ns.name));
    let op = OperatorProcess::start_with_kubeconfig(&kubeconfig, "chart-sa", &ns.name, "empacts-operator", &log);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the operator leads with the chart's RBAC", T, || async {
        (op.metric("empacts_leader").await? == 1.0).then_some(())
    })
    .await;

    create_secret(&ns, "empacts-db", "url", "postgres://empacts:x@db:5432/empacts").await;
    let example = std::fs::read_to_string(repo_root().join("examples/empacts-api.yaml")).unwrap();
    let app = app_yaml(&example);
    assert!(app.spec.autoscaling.is_some() && app.spec.disruption.is_some() && app.spec.migration.is_some());
    assert!(app.spec.ingress.is_some() && app.spec.network_policy.is_some());
    apply_app(&ns, &app).await;
    let ready = wait_app(&ns, "empacts-api", "Ready with the chart's RBAC", T, |a| {
        phase(a) == Some(Phase::Ready) && observed_current(a)
    })
    .await;
    assert_eq!(phase(&ready), Some(Phase::Ready), "log:\n{}", log_text());
    // Every kind the operator manages was written with the chart's RBAC.
    let generated = ns.api::<Secret>().get("empacts-api.gen.jwt-secret").await.expect("generated Secret");
    assert!(generated.data.is_some_and(|d| d.values().next().is_some_and(|v| v.0.len() == 64)), "64-byte secret");
    ns.api::<Deployment>().get("empacts-api").await.expect("app Deployment");
    ns.api::<HorizontalPodAutoscaler>().get("empacts-api").await.expect("app HPA");
    ns.api::<PodDisruptionBudget>().get("empacts-api").await.expect("app PDB");
    ns.api::<Ingress>().get("empacts-api").await.expect("app Ingress");
    ns.api::<NetworkPolicy>().get("empacts-api").await.expect("app NetworkPolicy");
    let jobs = ns.api::<Job>().list(&ListParams::default()).await.unwrap().items;
    assert!(jobs.iter().any(|j| j.name_any().starts_with("empacts-api-migrate-")), "migration Job ran");
    let reporters = wait_until("an events.k8s.io Event on the app", T, || async {
        let lp = ListParams::default().fields("regarding.name=empacts-api");
        let items = ns.api::<Event>().list(&lp).await.ok()?.items;
        let ours: Vec<(String, String)> = items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("EmpactsApp"))
            .map(|e| (e.reporting_controller.unwrap_or_default(), e.reporting_instance.unwrap_or_default()))
            .collect();
        (!ours.is_empty()).then_some(ours)
    })
    .await;
    assert!(reporters.iter().all(|(c, i)| c == "empacts-operator" && i == "chart-sa"), "{reporters:?}");
    let log = log_text();
    let lower = log.to_lowercase();
    assert!(!lower.contains("forbidden"), "an API call was forbidden:\n{log}");
    assert!(!log.contains("could not publish Event"), "{log}");
    // Outside its namespaces the chart's ServiceAccount is refused by the API server itself.
    let sa_client = client_for(&kubeconfig).await;
    let outside: Api<Secret> = Api::namespaced(sa_client, "default");
    match outside.get("anything").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("a Secret outside the watched namespaces must be forbidden: {other:?}"),
    }
    drop(op);
    let _ = std::fs::remove_file(&kubeconfig);

    let out = helm(&env, &["uninstall", &release, "--namespace", &ns.name]);
    assert!(out.status.success(), "helm uninstall failed:\n{}", text(&out));
    wait_until("chart objects are removed", T, || async {
        let role = ns.api::<Role>().get_opt(&fullname).await.ok()?;
        let sa = ns.api::<ServiceAccount>().get_opt(&fullname).await.ok()?;
        let deploy = ns.api::<Deployment>().get_opt(&fullname).await.ok()?;
        (role.is_none() && sa.is_none() && deploy.is_none()).then_some(())
    })
    .await;
    ns.cleanup().await;
}
