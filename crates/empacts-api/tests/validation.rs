//! Admission rules, evaluated client-side against the CRD's own schema: invalid specs are
//! refused with a message naming the field; valid ones pass.

use empacts_api::{EmpactsApp, validate::validate};

fn app(spec: &str) -> EmpactsApp {
    app_named("demo", spec)
}

fn app_named(name: &str, spec: &str) -> EmpactsApp {
    let yaml = format!(
        "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: {name}, namespace: ns}}\nspec: {spec}\n"
    );
    serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("fixture parses: {e}\n{yaml}"))
}

/// (spec, field the error must name, text the message must contain)
const REFUSED: &[(&str, &str, &str)] = &[
    ("{image: 'Registry/UPPER:1'}", "spec.image", "not a valid image reference"),
    ("{image: 'api:1 2'}", "spec.image", "not a valid image reference"),
    ("{image: ''}", "spec.image", ""),
    ("{image: 'api:1', port: 0}", "spec.port", "minimum"),
    ("{image: 'api:1', port: 70000}", "spec.port", "maximum"),
    ("{image: 'api:1', replicas: -1}", "spec.replicas", "minimum"),
    ("{image: 'api:1', env: {'1BAD': x}}", "spec.env", "C identifiers"),
    (
        "{image: 'api:1', env: {A: x}, secrets: [{env: A, generate: {}}]}",
        "spec.secrets",
        "both in spec.env and spec.secrets",
    ),
    ("{image: 'api:1', secrets: [{env: A}]}", "spec.secrets[0]", "exactly one of generate or secretKeyRef"),
    (
        "{image: 'api:1', secrets: [{env: A, generate: {}, secretKeyRef: {name: s, key: k}}]}",
        "spec.secrets[0]",
        "exactly one",
    ),
    (
        "{image: 'api:1', secrets: [{env: 'A-B', generate: {}}]}",
        "spec.secrets.0.env",
        "not a valid environment variable name",
    ),
    ("{image: 'api:1', secrets: [{env: A, generate: {length: 8}}]}", "spec.secrets.0.generate.length", "minimum"),
    (
        "{image: 'api:1', autoscaling: {minReplicas: 5, maxReplicas: 2, targetCPU: 50}}",
        "spec.autoscaling.minReplicas",
        "must not exceed",
    ),
    ("{image: 'api:1', autoscaling: {maxReplicas: 2}}", "spec.autoscaling", "targetCPU or targetMemory"),
    (
        "{image: 'api:1', replicas: 5, autoscaling: {maxReplicas: 2, targetCPU: 50}}",
        "spec.replicas",
        "must not exceed spec.autoscaling.maxReplicas",
    ),
    ("{image: 'api:1', disruption: {minAvailable: 1, maxUnavailable: 1}}", "spec.disruption", "exactly one"),
    ("{image: 'api:1', disruption: {}}", "spec.disruption", "exactly one"),
    ("{image: 'api:1', rollout: {maxSurge: 0}}", "spec.rollout", "cannot both be 0"),
    ("{image: 'api:1', rollout: {maxSurge: '0%', maxUnavailable: 0}}", "spec.rollout", "cannot both be 0"),
    ("{image: 'api:1', migration: {command: []}}", "spec.migration.command", ""),
    ("{image: 'api:1', migration: {command: [m], timeoutSeconds: 1}}", "spec.migration.timeoutSeconds", "minimum"),
    ("{image: 'api:1', probes: {liveness: {path: health}}}", "spec.probes.liveness.path", "starting with '/'"),
    ("{image: 'api:1', probes: {readiness: {path: '/a b'}}}", "spec.probes.readiness.path", "without spaces"),
    ("{image: 'api:1', probes: {startup: {path: \"/a\\tb\"}}}", "spec.probes.startup.path", "without spaces"),
    ("{image: 'api:1', probes: {startup: {path: '/héllo'}}}", "spec.probes.startup.path", "printable ASCII"),
    // A Secret name goes unencoded into the GET URL of the reconcile: none of these may pass.
    (
        "{image: 'api:1', secrets: [{env: A, secretKeyRef: {name: '?watch=true', key: k}}]}",
        "spec.secrets.0.secretKeyRef.name",
        "not a valid Secret name",
    ),
    (
        "{image: 'api:1', secrets: [{env: A, secretKeyRef: {name: '../x', key: k}}]}",
        "spec.secrets.0.secretKeyRef.name",
        "not a valid Secret name",
    ),
    (
        "{image: 'api:1', secrets: [{env: A, secretKeyRef: {name: 'a/b', key: k}}]}",
        "spec.secrets.0.secretKeyRef.name",
        "DNS-1123 subdomain",
    ),
    (
        "{image: 'api:1', secrets: [{env: A, secretKeyRef: {name: 'Db', key: k}}]}",
        "spec.secrets.0.secretKeyRef.name",
        "DNS-1123 subdomain",
    ),
    (
        "{image: 'api:1', secrets: [{env: A, secretKeyRef: {name: 'db-', key: k}}]}",
        "spec.secrets.0.secretKeyRef.name",
        "DNS-1123 subdomain",
    ),
    (
        "{image: 'api:1', secrets: [{env: A, secretKeyRef: {name: 'db', key: '.'}}]}",
        "spec.secrets.0.secretKeyRef.key",
        "not a valid Secret key",
    ),
    (
        "{image: 'api:1', secrets: [{env: A, secretKeyRef: {name: 'db', key: '..'}}]}",
        "spec.secrets.0.secretKeyRef.key",
        "not a valid Secret key",
    ),
    (
        "{image: 'api:1', secrets: [{env: A, secretKeyRef: {name: 'db', key: '..data'}}]}",
        "spec.secrets.0.secretKeyRef.key",
        "not starting with '..'",
    ),
    (
        "{image: 'api:1', secrets: [{env: A, secretKeyRef: {name: 'db', key: 'a/b'}}]}",
        "spec.secrets.0.secretKeyRef.key",
        "not a valid Secret key",
    ),
    ("{image: 'api:1', resources: {requests: {cpu: lots}}}", "spec.resources.requests.cpu", "not a valid quantity"),
    ("{image: 'api:1', resources: {limits: {memory: '-1Gi'}}}", "spec.resources.limits.memory", "non-negative"),
    ("{image: 'api:1', resources: {limits: {memory: '1 Gi'}}}", "spec.resources.limits.memory", "not a valid quantity"),
    (
        "{image: 'api:1', resources: {requests: {memory: '1gi'}}}",
        "spec.resources.requests.memory",
        "not a valid quantity",
    ),
    ("{image: 'api:1', resources: {requests: {'cpu count': 1}}}", "spec.resources.requests", "resource names"),
    ("{image: 'api:1', resources: {limits: {'/gpu': 1}}}", "spec.resources.limits", "resource names"),
    (
        "{image: 'api:1', disruption: {minAvailable: '150%'}}",
        "spec.disruption.minAvailable",
        "percentage from \"0%\" to \"100%\"",
    ),
    (
        "{image: 'api:1', disruption: {maxUnavailable: '5'}}",
        "spec.disruption.maxUnavailable",
        "not a valid pod count or percentage",
    ),
    ("{image: 'api:1', rollout: {maxSurge: '-1%'}}", "spec.rollout.maxSurge", "not a valid pod count or percentage"),
    ("{image: 'api:1', rollout: {maxSurge: 1, maxUnavailable: '101%'}}", "spec.rollout.maxUnavailable", "0%"),
    ("{image: 'api:1', rollout: {maxSurge: 1, maxUnavailable: 1001}}", "spec.rollout.maxUnavailable", "maximum"),
    (
        "{image: 'api:1', podLabels: {'app.kubernetes.io/name': other}}",
        "spec.podLabels",
        "must not set the operator's labels",
    ),
    (
        "{image: 'api:1', podLabels: {'empacts.io/revision': abc}}",
        "spec.podLabels",
        "must not set the operator's labels",
    ),
    ("{image: 'api:1', podLabels: {'bad key': x}}", "spec.podLabels", "qualified names"),
    ("{image: 'api:1', podLabels: {'Example.com/tier': x}}", "spec.podLabels", "qualified names"),
    ("{image: 'api:1', podLabels: {'a/b/c': x}}", "spec.podLabels", "qualified names"),
    ("{image: 'api:1', podLabels: {'-tier': x}}", "spec.podLabels", "qualified names"),
    ("{image: 'api:1', podLabels: {tier: 'a b'}}", "spec.podLabels.tier", "not a valid label value"),
    (
        "{image: 'api:1', podLabels: {'example.com/tier': 'web-'}}",
        "spec.podLabels.example.com/tier",
        "not a valid label value",
    ),
    (
        "{image: 'api:1', podAnnotations: {'empacts.io/config-hash': spoofed}}",
        "spec.podAnnotations",
        "must not set empacts.io/*",
    ),
    ("{image: 'api:1', podAnnotations: {'a b': x}}", "spec.podAnnotations", "qualified names"),
    ("{image: 'api:1', rollout: {strategy: Canary, steps: [{weight: 0}]}}", "spec.rollout.steps.0.weight", "minimum"),
    (
        "{image: 'api:1', rollout: {steps: [{weight: 10, pause: 2 min}]}}",
        "spec.rollout.steps.0.pause",
        "does not match",
    ),
    (
        "{image: 'api:1', analysis: {prometheus: {address: 'http://user:pw@prom:9090'}}}",
        "spec.analysis.prometheus.address",
        "does not match",
    ),
    (
        "{image: 'api:1', analysis: {prometheus: {address: 'http://p'}, metrics: [{name: x, query: up, thresholdRange: {}}]}}",
        "spec.analysis.metrics[0]",
        "needs min or max",
    ),
    ("{image: 'api:1', ingress: {host: 'API.example.com'}}", "spec.ingress.host", "does not match"),
    ("{image: 'api:1', ingress: {host: a.example.com, tls: {}}}", "spec.ingress.tls", "secretName, issuer"),
    (
        "{image: 'api:1', ingress: {host: a.example.com, annotations: {'cert-manager.io/cluster-issuer': x}}}",
        "spec.ingress.annotations",
        "tls.issuer",
    ),
    ("{image: 'api:1', networkPolicy: {allowFrom: [{}]}}", "spec.networkPolicy.allowFrom[0]", "namespaceSelector"),
    ("{image: 'api:1', monitoring: {labels: {'app.kubernetes.io/name': x}}}", "spec.monitoring.labels", "must not set"),
    ("{image: 'api:1', monitoring: {alerts: {errorRate: 2}}}", "spec.monitoring.alerts.errorRate", "maximum"),
    ("{image: 'api:1', monitoring: {port: 80}}", "spec.monitoring.port", "must differ from the Service port"),
    (
        "{image: 'api:1', service: {port: 9090}, monitoring: {port: 9090}}",
        "spec.monitoring.port",
        "must differ from the Service port",
    ),
];

#[test]
fn invalid_specs_are_refused_naming_the_field() {
    for (spec, field, text) in REFUSED {
        let err = validate(&app(spec)).expect_err(&format!("must refuse {spec}"));
        let hit = err.errors.iter().find(|e| e.field == *field);
        let hit = hit.unwrap_or_else(|| panic!("{spec}: no error on {field}; got {err}"));
        assert!(hit.message.contains(text), "{spec}: message {:?} lacks {text:?}", hit.message);
        assert!(err.to_string().contains(field), "the Display form names the field: {err}");
    }
}

/// `{image, <field>: <value>}` with a generated value.
fn app_with(field: &str, value: serde_json::Value) -> EmpactsApp {
    let mut app = app("{image: 'api:1'}");
    let mut spec = serde_json::to_value(&app.spec).unwrap();
    spec[field] = value;
    app.spec = serde_json::from_value(spec).unwrap();
    app
}

fn refused_on(app: &EmpactsApp, field: &str, text: &str) {
    let err = validate(app).expect_err(&format!("must refuse a large {field}"));
    let hit = err.errors.iter().find(|e| e.field == field).unwrap_or_else(|| panic!("no error on {field}: {err}"));
    assert!(hit.message.contains(text), "message {:?} lacks {text:?}", hit.message);
}

#[test]
fn oversized_values_are_refused() {
    use empacts_api::spec::{MAX_ANNOTATION_VALUE_LEN, MAX_ARG_LEN, MAX_ENV_TOTAL_CHARS, MAX_ENV_VALUE_LEN};
    use serde_json::json;
    refused_on(&app_with("env", json!({"K".repeat(129): "x"})), "spec.env", "at most 128 characters");
    validate(&app_with("env", json!({"K".repeat(128): "x"}))).expect("a 128-character name passes");
    let mib = "x".repeat(1 << 20);
    refused_on(&app_with("env", json!({"BIG": mib})), "spec.env.BIG", "longer than 16384");
    validate(&app_with("env", json!({"BIG": "x".repeat(MAX_ENV_VALUE_LEN)}))).expect("a value at the bound passes");

    // Each value within its bound, together over the total: the ConfigMap would be refused later.
    let per_value = MAX_ENV_TOTAL_CHARS / 15;
    let many: serde_json::Map<_, _> = (0..16).map(|i| (format!("K{i}"), json!("x".repeat(per_value)))).collect();
    refused_on(&app_with("env", json!(many)), "spec.env", "keys and values must total at most 245760 characters");
    let fewer: serde_json::Map<_, _> = (0..14).map(|i| (format!("K{i}"), json!("x".repeat(per_value)))).collect();
    validate(&app_with("env", json!(fewer))).expect("14 values of 1/15 of the total pass");

    refused_on(
        &app_with("podAnnotations", json!({"note": "x".repeat(MAX_ANNOTATION_VALUE_LEN + 1)})),
        "spec.podAnnotations.note",
        "longer than 4096",
    );
    // Bytes, not characters, count towards Kubernetes' annotation limit: 60 * 4096 'é' is 480 KiB.
    let wide: serde_json::Map<_, _> =
        (0..60).map(|i| (format!("k{i}"), json!("é".repeat(MAX_ANNOTATION_VALUE_LEN)))).collect();
    refused_on(&app_with("podAnnotations", json!(wide)), "spec.podAnnotations", "at most 229376 bytes");
    let ascii: serde_json::Map<_, _> =
        (0..50).map(|i| (format!("k{i}"), json!("x".repeat(MAX_ANNOTATION_VALUE_LEN)))).collect();
    validate(&app_with("podAnnotations", json!(ascii))).expect("50 values of 4096 ASCII characters pass");

    let arg = "x".repeat(MAX_ARG_LEN + 1);
    refused_on(&app_with("command", json!([arg])), "spec.command.0", "longer than 4096");
    refused_on(&app_with("args", json!(["ok", arg])), "spec.args.1", "longer than 4096");
    refused_on(&app_with("migration", json!({"command": [arg]})), "spec.migration.command.0", "longer than 4096");
    refused_on(
        &app_with("migration", json!({"command": ["m"], "rollbackCommand": [arg]})),
        "spec.migration.rollbackCommand.0",
        "longer than 4096",
    );
    refused_on(
        &app_with("probes", json!({"liveness": {"path": format!("/{}", "a".repeat(1024))}})),
        "spec.probes.liveness.path",
        "longer than 1024",
    );
}

#[test]
fn pod_labels_never_set_the_operators_labels() {
    use empacts_api::labels;
    // Every label the operator sets, whatever its value: the selector ones would pull the pods
    // into another app's Service, PodDisruptionBudget and autoscaler.
    for key in [
        labels::NAME,
        labels::INSTANCE,
        labels::VERSION,
        labels::COMPONENT,
        labels::MANAGED_BY,
        labels::PART_OF,
        labels::REVISION,
        labels::GENERATED_SECRET,
    ] {
        let err = validate(&app_with("podLabels", serde_json::json!({key: "other"})))
            .expect_err(&format!("podLabels must refuse {key}"));
        assert!(
            err.errors.iter().any(|e| e.field == "spec.podLabels" && e.message.contains("operator's labels")),
            "{key}: {err}"
        );
    }
    for key in [empacts_api::annotations::CONFIG_HASH, empacts_api::annotations::REVISION] {
        let err = validate(&app_with("podAnnotations", serde_json::json!({key: "x"})))
            .expect_err(&format!("podAnnotations must refuse {key}"));
        assert!(err.to_string().contains("spec.podAnnotations"), "{key}: {err}");
    }
}

#[test]
fn names_that_cannot_name_children_are_refused() {
    let long = "a".repeat(43);
    let err = validate(&app_named(&long, "{image: 'api:1'}")).unwrap_err();
    assert!(err.to_string().contains("at most 42 characters"), "{err}");
    let err = validate(&app_named("'9lives'", "{image: 'api:1'}")).unwrap_err();
    assert!(err.to_string().contains("DNS-1035"), "{err}");
    assert!(validate(&app_named(&"a".repeat(42), "{image: 'api:1'}")).is_ok());
}

#[test]
fn valid_specs_pass() {
    for spec in [
        "{image: 'api:1'}",
        "{image: 'registry.example.com:5000/team/api:1.8.0'}",
        "{image: 'api@sha256:0123456789012345678901234567890123456789012345678901234567890123'}",
        "{image: 'api:1', rollout: {maxSurge: 0, maxUnavailable: 1}}",
        "{image: 'api:1', rollout: {maxSurge: '25%', maxUnavailable: '0%'}}",
        "{image: 'api:1', disruption: {maxUnavailable: '25%'}}",
        "{image: 'api:1', replicas: 2, autoscaling: {minReplicas: 2, maxReplicas: 2, targetMemory: 80}}",
        "{image: 'api:1', env: {A: x}, secrets: [{env: B, generate: {length: 43}}, {env: C, secretKeyRef: {name: s, key: k}}]}",
        "{image: 'api:1', secrets: [{env: C, secretKeyRef: {name: db.prod-1, key: .dockerconfigjson}}, {env: D, secretKeyRef: {name: '0', key: tls.crt}}, {env: E, secretKeyRef: {name: x, key: A_b-1}}]}",
        "{image: 'api:1', resources: {requests: {cpu: 200m, memory: 256Mi, ephemeral-storage: 1G, 'nvidia.com/gpu': 1}}}",
        "{image: 'api:1', resources: {limits: {cpu: 2, memory: '1.5Gi', 'hugepages-2Mi': 0, 'example.com/dongle': '+1e3'}}}",
        "{image: 'api:1', resources: {limits: {cpu: '.5', memory: 1E6}}}",
        "{image: 'api:1', disruption: {minAvailable: '100%'}}",
        "{image: 'api:1', disruption: {minAvailable: 0}}",
        "{image: 'api:1', disruption: {maxUnavailable: 1000}}",
        "{image: 'api:1', rollout: {maxSurge: '0%', maxUnavailable: '100%'}}",
        "{image: 'api:1', podLabels: {tier: web, 'example.com/team': a.b_c-1, empty: '', 'app.kubernetes.io/tier': x, 'my.empacts.io/x': y}}",
        "{image: 'api:1', podAnnotations: {'prometheus.io/scrape': 'true', note: 'any text, even spaces: ok', 'empacts.io.example/x': y}}",
        // The test control plane's kwok hook (tests/cluster/kwok-stages.yaml), which e2e tests set.
        "{image: 'api:1', podAnnotations: {'testbed.empacts.dev/run-duration': 4s}}",
        "{image: 'api:1', probes: {liveness: {path: '/health?full=1&x=%20'}, readiness: {path: /}}}",
        "{image: 'api:1', command: [sh, -c, 'exec server --port 8080'], args: ['']}",
        "{image: 'api:1', rollout: {strategy: Canary, steps: [{weight: 10, pause: 30s}, {weight: 50}, {weight: 100, pause: 1h}]}}",
        "{image: 'api:1', analysis: {prometheus: {address: 'https://prometheus.monitoring.svc:9090/prom'}, interval: 10s, failureLimit: 1, duration: 5m, metrics: [{name: error-rate, query: 'sum(rate(x{app=\"{{app}}\"}[1m]))', thresholdRange: {max: 0.01}}]}}",
        "{image: 'api:1', ingress: {host: '*.example.com', path: /api, className: nginx, tls: {issuer: letsencrypt}, annotations: {'nginx.ingress.kubernetes.io/limit-rps': '20'}}}",
        "{image: 'api:1', networkPolicy: {ingressControllerNamespace: '', allowFrom: [{namespaceSelector: {'kubernetes.io/metadata.name': web}}, {podSelector: {role: client}}], allowPorts: [8080, 9090]}}",
        "{image: 'api:1', port: 80, monitoring: {port: 80}}",
        "{image: 'api:1', monitoring: {port: 9090, path: /metrics, interval: 15s, labels: {release: prometheus}, alerts: {errorRate: 0.05, latencyP95Seconds: 1.5, for: 10m}}}",
    ] {
        validate(&app(spec)).unwrap_or_else(|e| panic!("{spec} must be valid: {e}"));
    }
}

#[test]
fn examples_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("examples/ exists") {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
            if value.get("kind").and_then(|k| k.as_str()) == Some("EmpactsApp") {
                let app: EmpactsApp = serde_yaml::from_value(value).unwrap();
                validate(&app).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
    }
    assert!(seen >= 2, "examples/ holds at least the API and the minimal app");
}

#[test]
fn every_cel_rule_compiles_client_side() {
    // A rule that does not compile would be skipped by the client-side check.
    assert_eq!(empacts_api::validate::cel_compile_errors(), Vec::<String>::new());
}
