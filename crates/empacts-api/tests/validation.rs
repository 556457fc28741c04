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
