//! Revision identity. A revision is what the user asked the pods and the migration to be:
//! the spec subset that defines the code, its configuration and its schema step, with the
//! API's defaults applied — not the pod template as this build of the operator renders it.
//! An operator upgrade that renders templates differently rolls pods (the applied-hash of
//! the Deployment changes) but is never a new revision, so it never runs a migration.
//!
//! Two specs are the same revision when their [`RevisionSpec`]s are equal. A recorded
//! revision keeps the name it was given when first recorded (earlier builds named revisions
//! differently; their ControllerRevisions are matched by content, not by name), and a new
//! revision is named by [`identity`]: a hash of the `RevisionSpec` and [`REVISION_SCHEMA`].

use std::collections::BTreeMap;

use empacts_api::{EmpactsAppSpec, HttpProbe};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Serialize;

use crate::hash;

/// Bump when the meaning of [`RevisionSpec`] changes (a field added or normalized
/// differently): it changes the names of new revisions, which the golden test pins.
pub const REVISION_SCHEMA: u32 = 1;

/// The normalized, revision-defining part of a spec. Left out on purpose: replicas and
/// autoscaling, the Service, disruption budget, rollout policy and pause (operations, not
/// code); the migration's timeout, backoff and rollbackCommand (how to run or undo a step,
/// not the step: adding a rollbackCommand to a failed revision must not migrate it again);
/// the length and retention of generated secrets (they change no pod).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevisionSpec {
    image: String,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    port: i32,
    env: BTreeMap<String, String>,
    secrets: Vec<SecretSource>,
    requests: BTreeMap<String, String>,
    limits: BTreeMap<String, String>,
    probes: [Option<ProbeSpec>; 3],
    pod_labels: BTreeMap<String, String>,
    pod_annotations: BTreeMap<String, String>,
    migration: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
enum SecretSource {
    Generated { env: String },
    Referenced { env: String, name: String, key: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct ProbeSpec {
    path: String,
    /// None: the app port (named port), however it was written.
    port: Option<i32>,
    initial_delay_seconds: Option<i32>,
    period_seconds: Option<i32>,
    timeout_seconds: Option<i32>,
    failure_threshold: Option<i32>,
}

fn quantities(map: Option<&BTreeMap<String, Quantity>>) -> BTreeMap<String, String> {
    map.into_iter().flatten().map(|(k, v)| (k.clone(), v.0.clone())).collect()
}

impl RevisionSpec {
    pub fn of(spec: &EmpactsAppSpec) -> Self {
        let port = spec.port();
        let probe = |p: Option<&HttpProbe>| {
            p.map(|p| ProbeSpec {
                path: p.path.clone(),
                port: p.port.filter(|&pp| pp != port),
                initial_delay_seconds: p.initial_delay_seconds,
                period_seconds: p.period_seconds,
                timeout_seconds: p.timeout_seconds,
                failure_threshold: p.failure_threshold,
            })
        };
        let probes = spec.probes.clone().unwrap_or_default();
        let resources = spec.resources.as_ref();
        RevisionSpec {
            image: spec.image.clone(),
            command: spec.command.clone(),
            args: spec.args.clone(),
            port,
            env: spec.env.clone().unwrap_or_default(),
            secrets: spec
                .secrets()
                .iter()
                .map(|s| match &s.secret_key_ref {
                    Some(r) => {
                        SecretSource::Referenced { env: s.env.clone(), name: r.name.clone(), key: r.key.clone() }
                    }
                    None => SecretSource::Generated { env: s.env.clone() },
                })
                .collect(),
            requests: quantities(resources.and_then(|r| r.requests.as_ref())),
            limits: quantities(resources.and_then(|r| r.limits.as_ref())),
            probes: [probe(probes.liveness.as_ref()), probe(probes.readiness.as_ref()), probe(probes.startup.as_ref())],
            pod_labels: spec.pod_labels.clone().unwrap_or_default(),
            pod_annotations: spec.pod_annotations.clone().unwrap_or_default(),
            migration: spec.migration.as_ref().map(|m| m.command.clone()),
        }
    }
}

/// Name of a new revision of `spec`.
pub fn identity(spec: &EmpactsAppSpec) -> String {
    hash::content_hash(&(REVISION_SCHEMA, RevisionSpec::of(spec)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::app_from_yaml;

    fn id(spec: &str) -> String {
        identity(&app_from_yaml(spec).spec)
    }

    #[test]
    fn defaults_and_operations_fields_do_not_make_a_revision() {
        let base = id("spec: {image: 'api:1'}");
        for same in [
            "spec: {image: 'api:1', port: 8080}",
            "spec: {image: 'api:1', replicas: 7, paused: true}",
            "spec: {image: 'api:1', env: {}, podLabels: {}, podAnnotations: {}, secrets: []}",
            "spec: {image: 'api:1', service: {port: 81}, disruption: {minAvailable: 1}}",
            "spec: {image: 'api:1', rollout: {progressDeadlineSeconds: 30, autoRollback: false}}",
            "spec: {image: 'api:1', autoscaling: {maxReplicas: 4, targetCPU: 50}}",
        ] {
            assert_eq!(id(same), base, "{same}");
        }
        let m = id("spec: {image: 'api:1', migration: {command: [m]}}");
        assert_eq!(
            id(
                "spec: {image: 'api:1', migration: {command: [m], rollbackCommand: [d], timeoutSeconds: 30, backoffLimit: 0}}"
            ),
            m,
            "how a migration runs or is undone is not part of the revision"
        );
        assert_eq!(
            id("spec: {image: 'api:1', probes: {readiness: {path: /r, port: 8080}}}"),
            id("spec: {image: 'api:1', probes: {readiness: {path: /r}}}"),
            "a probe on the app port written out is the same probe"
        );
    }

    #[test]
    fn code_config_and_schema_fields_make_a_revision() {
        let base = id("spec: {image: 'api:1'}");
        for other in [
            "spec: {image: 'api:2'}",
            "spec: {image: 'api:1', port: 3000}",
            "spec: {image: 'api:1', env: {A: b}}",
            "spec: {image: 'api:1', command: [x]}",
            "spec: {image: 'api:1', args: [x]}",
            "spec: {image: 'api:1', secrets: [{env: K, generate: {}}]}",
            "spec: {image: 'api:1', secrets: [{env: K, secretKeyRef: {name: s, key: k}}]}",
            "spec: {image: 'api:1', resources: {limits: {cpu: '1'}}}",
            "spec: {image: 'api:1', probes: {liveness: {path: /h}}}",
            "spec: {image: 'api:1', podLabels: {team: a}}",
            "spec: {image: 'api:1', podAnnotations: {a: b}}",
            "spec: {image: 'api:1', migration: {command: [m]}}",
        ] {
            assert_ne!(id(other), base, "{other}");
        }
    }

    /// Golden revisions: a change here renames every new revision of every app. Change it
    /// only with a deliberate bump of REVISION_SCHEMA, reviewed as such.
    #[test]
    fn golden_revisions() {
        let examples = crate::build::test_support::example_specs();
        let mut got: Vec<(String, String)> = examples.iter().map(|(n, s)| (n.clone(), identity(s))).collect();
        for (name, spec) in [
            ("minimal", "spec: {image: 'api:1'}"),
            ("env", "spec: {image: 'api:1', env: {A: b}}"),
            ("migration", "spec: {image: 'api:1', migration: {command: [npm, run, migrate]}}"),
            (
                "secrets",
                "spec: {image: 'api:1', secrets: [{env: K, generate: {}}, {env: D, secretKeyRef: {name: s, key: k}}]}",
            ),
        ] {
            got.push((name.to_string(), id(spec)));
        }
        let got: Vec<String> = got.iter().map(|(n, r)| format!("{n}={r}")).collect();
        assert_eq!(got, GOLDEN, "revision identity changed; bump REVISION_SCHEMA deliberately and update GOLDEN");
    }

    const GOLDEN: [&str; 7] = [
        "empacts-api-canary.yaml=549ff1c888",
        "empacts-api.yaml=7a356118ea",
        "minimal.yaml=b89fa59a3b",
        "minimal=3b74b932ea",
        "env=82428c9c2c",
        "migration=b5d27f9e84",
        "secrets=2bdf17f113",
    ];
}
