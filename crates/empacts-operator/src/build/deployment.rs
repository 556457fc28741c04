//! The Deployment running the app.

use std::collections::BTreeMap;

use empacts_api::{annotations, labels};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::{build::meta, build::pod, names, validate::ValidatedApp};

pub const COMPONENT: &str = "server";

/// The pod template as the spec defines it, without the revision label and the hash of
/// referenced secrets.
pub fn base_template(app: &ValidatedApp) -> PodTemplateSpec {
    let mut labels = meta::selector_labels(app);
    if let Some(version) = meta::image_version_label(&app.spec.image) {
        labels.insert(labels::VERSION.to_string(), version);
    }
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod::pod_labels(app, labels)),
            annotations: app.spec.pod_annotations.clone().filter(|a| !a.is_empty()),
            ..Default::default()
        }),
        spec: Some(pod::pod_spec(app, vec![pod::app_container(app)], None)),
    }
}

/// Replica count to apply. With autoscaling the HPA moves it through the scale subresource;
/// we write back what the Deployment has now (clamped to the HPA bounds) so an apply never
/// resets the HPA's choice, and a first rollout starts at spec.replicas within the bounds.
pub fn replicas(app: &ValidatedApp, current: Option<i32>) -> i32 {
    match &app.spec.autoscaling {
        None => app.spec.replicas(),
        Some(scaling) => {
            let seed = current.or(app.spec.replicas).unwrap_or_else(|| scaling.min_replicas());
            seed.clamp(scaling.min_replicas(), scaling.max_replicas.max(scaling.min_replicas()))
        }
    }
}

/// The Deployment for `app` (whose spec may be an older revision's, during a rollback).
/// `config_hash` is the hash of referenced Secret content: a change rolls the pods.
/// `current_replicas` is the live Deployment's spec.replicas, if it exists.
/// `revision` is the ledger name of the revision whose spec `app` carries.
pub fn build(
    app: &ValidatedApp,
    revision: &str,
    config_hash: Option<&str>,
    current_replicas: Option<i32>,
) -> Deployment {
    let revision = revision.to_string();
    let mut template = base_template(app);
    let template_meta = template.metadata.get_or_insert_with(Default::default);
    template_meta.labels.get_or_insert_with(BTreeMap::new).insert(labels::REVISION.into(), revision.clone());
    if let Some(config_hash) = config_hash {
        template_meta
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(annotations::CONFIG_HASH.into(), config_hash.to_string());
    }
    let rollout = app.spec.rollout();
    let mut metadata = meta::child_meta(app, names::workload(&app.name), COMPONENT);
    metadata.annotations = Some(BTreeMap::from([(annotations::REVISION.to_string(), revision)]));
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas(app, current_replicas)),
            selector: meta::selector(app),
            template,
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(rollout.max_surge()),
                    max_unavailable: Some(rollout.max_unavailable()),
                }),
            }),
            progress_deadline_seconds: Some(rollout.progress_deadline_seconds()),
            revision_history_limit: Some(rollout.revision_history_limit()),
            ..Default::default()
        }),
        status: None,
    }
}

pub const CANARY_COMPONENT: &str = "canary";

/// The canary Deployment: `revision`'s pods next to the stable ones, behind the same
/// Service (whose selector they match), told apart by `empacts.io/track: canary`. Its own
/// selector includes that label, so it never counts the stable pods.
pub fn canary(app: &ValidatedApp, revision: &str, config_hash: Option<&str>, replicas: i32) -> Deployment {
    let mut d = build(app, revision, config_hash, None);
    d.metadata.name = Some(names::canary(&app.name));
    d.metadata.labels.get_or_insert_with(BTreeMap::new).insert(labels::COMPONENT.into(), CANARY_COMPONENT.into());
    let spec = d.spec.as_mut().expect("build sets a spec");
    spec.replicas = Some(replicas);
    spec.selector.match_labels.get_or_insert_with(BTreeMap::new).insert(labels::TRACK.into(), "canary".into());
    let template_meta = spec.template.metadata.get_or_insert_with(Default::default);
    template_meta.labels.get_or_insert_with(BTreeMap::new).insert(labels::TRACK.into(), "canary".into());
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::app_from_yaml;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    const API: &str = r#"
spec:
  image: registry.example.com/empacts/api:1.8.0
  replicas: 3
  port: 3000
  env: {NODE_ENV: production}
  secrets:
    - {env: JWT_SECRET, generate: {length: 64}}
    - {env: DATABASE_URL, secretKeyRef: {name: empacts-db, key: url}}
  resources: {requests: {cpu: 200m, memory: 256Mi}, limits: {cpu: 500m, memory: 512Mi}}
  probes: {liveness: {path: /health}, readiness: {path: /health/readiness, periodSeconds: 5}, startup: {path: /health, port: 9000}}
  rollout: {maxSurge: 1, maxUnavailable: 1, progressDeadlineSeconds: 120}
  migration: {command: [npm, run, migrate]}
"#;

    #[test]
    fn deployment_runs_the_image_with_config_secrets_and_probes() {
        let app = app_from_yaml(API);
        let d = build(&app, "r1", Some("abc"), None);
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.progress_deadline_seconds, Some(120));
        let ru = spec.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(ru.max_surge, Some(IntOrString::Int(1)));
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(1)));
        let tmeta = spec.template.metadata.unwrap();
        assert_eq!(tmeta.annotations.unwrap()[annotations::CONFIG_HASH], "abc");
        assert_eq!(tmeta.labels.as_ref().unwrap()[labels::REVISION], "r1");
        assert_eq!(tmeta.labels.unwrap()[labels::VERSION], "1.8.0");
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("demo"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.example.com/empacts/api:1.8.0"));
        assert_eq!(c.ports.as_ref().unwrap()[0].container_port, 3000);
        let env = c.env.as_ref().unwrap();
        let jwt = env[0].value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!(
            (env[0].name.as_str(), jwt.name.as_str(), jwt.key.as_str()),
            ("JWT_SECRET", "demo.gen.jwt-secret", "value")
        );
        let db = env[1].value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((db.name.as_str(), db.key.as_str()), ("empacts-db", "url"));
        assert!(env.iter().all(|e| e.value.is_none()), "secret values never inline");
        let cm = c.env_from.as_ref().unwrap()[0].config_map_ref.as_ref().unwrap();
        assert!(cm.name.starts_with("demo-env-"));
        let ready = c.readiness_probe.as_ref().unwrap();
        assert_eq!(ready.http_get.as_ref().unwrap().path.as_deref(), Some("/health/readiness"));
        assert_eq!(ready.http_get.as_ref().unwrap().port, IntOrString::String("http".into()));
        assert_eq!(ready.period_seconds, Some(5));
        assert_eq!(c.startup_probe.as_ref().unwrap().http_get.as_ref().unwrap().port, IntOrString::Int(9000));
        assert_eq!(c.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0, "512Mi");
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]));
    }

    #[test]
    fn the_canary_runs_the_revision_behind_the_same_service() {
        let app = app_from_yaml("spec: {image: 'api:2', replicas: 10}");
        let c = canary(&app, "r2", Some("h"), 3);
        assert_eq!(c.metadata.name.as_deref(), Some("demo-canary"));
        let spec = c.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        let selector = spec.selector.match_labels.unwrap();
        assert_eq!(selector[labels::TRACK], "canary");
        let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(pod_labels[labels::REVISION], "r2");
        for (k, v) in crate::build::service::build(&app).spec.unwrap().selector.unwrap() {
            assert_eq!(pod_labels.get(&k), Some(&v), "the Service selects canary pods by {k}");
        }
        let stable = build(&app, "r1", None, None).spec.unwrap().selector.match_labels.unwrap();
        assert!(!stable.contains_key(labels::TRACK));
    }

    #[test]
    fn selector_is_stable_across_versions() {
        let a = build(&app_from_yaml("spec: {image: 'api:1'}"), "r", None, None);
        let b = build(&app_from_yaml("spec: {image: 'api:2', replicas: 5}"), "r", None, None);
        assert_eq!(a.spec.as_ref().unwrap().selector, b.spec.as_ref().unwrap().selector);
    }

    #[test]
    fn autoscaling_keeps_the_hpa_choice_within_bounds() {
        let app = app_from_yaml(
            "spec: {image: 'api:1', replicas: 3, autoscaling: {minReplicas: 2, maxReplicas: 5, targetCPU: 70}}",
        );
        assert_eq!(build(&app, "r", None, None).spec.unwrap().replicas, Some(3), "first rollout seeds spec.replicas");
        assert_eq!(build(&app, "r", None, Some(4)).spec.unwrap().replicas, Some(4), "the HPA's choice stays");
        assert_eq!(build(&app, "r", None, Some(9)).spec.unwrap().replicas, Some(5), "clamped to maxReplicas");
        assert_eq!(build(&app, "r", None, Some(1)).spec.unwrap().replicas, Some(2), "clamped to minReplicas");
        let fixed = app_from_yaml("spec: {image: 'api:1', replicas: 3}");
        assert_eq!(build(&fixed, "r", None, Some(7)).spec.unwrap().replicas, Some(3), "without an HPA the spec rules");
    }

    #[test]
    fn referenced_secret_change_rolls_pods_without_a_new_revision() {
        let app = app_from_yaml("spec: {image: 'api:1'}");
        let a = build(&app, "r", Some("h1"), None);
        let b = build(&app, "r", Some("h2"), None);
        assert_ne!(a.spec.as_ref().unwrap().template, b.spec.as_ref().unwrap().template);
        assert_eq!(a.metadata.annotations, b.metadata.annotations);
    }
}
