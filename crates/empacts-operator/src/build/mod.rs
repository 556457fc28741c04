//! Pure desired-state builders, one module per child kind. Every function here is a pure
//! function of the validated app (and, where noted, observed inputs passed in).

pub mod configmap;
pub mod deployment;
pub mod hpa;
pub mod ingress;
pub mod job;
pub mod meta;
pub mod networkpolicy;
pub mod pdb;
pub mod pod;
pub mod prometheusrule;
pub mod revision;
pub mod secret;
pub mod service;
pub mod serviceaccount;
pub mod servicemonitor;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use crate::{secret_value::SecretValue, validate::ValidatedApp};

/// Everything the operator would create for an app, in apply order.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub config_map: Option<ConfigMap>,
    pub generated_secrets: Vec<Secret>,
    pub migration_job: Option<Job>,
    pub deployment: Deployment,
    pub service: Service,
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub pdb: Option<PodDisruptionBudget>,

    pub ingress: Option<Ingress>,
    pub network_policy: Option<NetworkPolicy>,
    /// Prometheus Operator objects (generic manifests: their CRDs are optional; the
    /// reconciler applies them only while the CRDs are installed).
    pub service_monitor: Option<serde_json::Value>,
    pub prometheus_rule: Option<serde_json::Value>,
}

/// All children of `app` as a new revision of it would have them. `secret_value` supplies the value of each generated secret
/// (a placeholder when rendering); None leaves generated secrets out, as the reconciler
/// does: it only ever creates them, separately.
pub fn build_all(
    app: &ValidatedApp,
    config_hash: Option<&str>,
    current_replicas: Option<i32>,
    mut secret_value: impl FnMut(&empacts_api::SecretEnv) -> Option<SecretValue>,
) -> Children {
    let revision = crate::revision::identity(&app.spec);
    Children {
        service_account: serviceaccount::build(app),
        config_map: configmap::build(app),
        generated_secrets: app
            .spec
            .secrets()
            .iter()
            .filter(|e| e.generate.is_some())
            .filter_map(|e| secret::build(app, e, &secret_value(e)?))
            .collect(),
        migration_job: job::migration(app, &revision, 1),
        deployment: deployment::build(app, &revision, config_hash, current_replicas),
        service: service::build(app),
        hpa: hpa::build(app),
        pdb: pdb::build(app),

        ingress: ingress::build(app),
        network_policy: networkpolicy::build(app),
        service_monitor: servicemonitor::build(app),
        prometheus_rule: prometheusrule::build(app),
    }
}

/// A child as a generic object with apiVersion and kind set (in kubectl's key order).
pub fn manifest<K: k8s_openapi::Resource + serde::Serialize>(obj: &K) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).expect("Kubernetes objects serialize");
    let map = v.as_object_mut().expect("objects serialize to maps");
    map.insert("apiVersion".into(), K::API_VERSION.into());
    map.insert("kind".into(), K::KIND.into());
    let mut ordered = serde_json::Map::new();
    for key in ["apiVersion", "kind", "metadata"] {
        if let Some(val) = map.remove(key) {
            ordered.insert(key.into(), val);
        }
    }
    ordered.extend(std::mem::take(map));
    serde_json::Value::Object(ordered)
}

impl Children {
    /// The children as generic JSON values with apiVersion/kind set, in apply order.
    pub fn to_manifests(&self) -> Vec<serde_json::Value> {
        let mut out = vec![manifest(&self.service_account)];
        out.extend(self.config_map.iter().map(manifest));
        out.extend(self.generated_secrets.iter().map(manifest));
        out.extend(self.migration_job.iter().map(manifest));
        out.push(manifest(&self.deployment));
        out.extend(self.serving().into_iter().filter_map(|(_, obj)| obj));
        out
    }

    /// The children that serve whatever version runs, built from the current spec (never
    /// from a recorded revision): kind, and the object, or None when the spec does not ask
    /// for one (an existing one this app controls is removed). A new kind of this sort needs
    /// only its builder, a field here and its registry entry: the writes, watches and caches
    /// follow from the registry.
    pub fn serving(&self) -> Vec<(&'static str, Option<serde_json::Value>)> {
        let Children {
            service_account: _,
            config_map: _,
            generated_secrets: _,
            migration_job: _,
            deployment: _,
            service,
            hpa,
            pdb,

            ingress,
            network_policy,
            service_monitor,
            prometheus_rule,
        } = self;
        vec![
            ("Service", Some(manifest(service))),
            ("HorizontalPodAutoscaler", hpa.as_ref().map(manifest)),
            ("PodDisruptionBudget", pdb.as_ref().map(manifest)),
            ("Ingress", ingress.as_ref().map(manifest)),
            ("NetworkPolicy", network_policy.as_ref().map(manifest)),
            (servicemonitor::KIND, service_monitor.clone()),
            (prometheusrule::KIND, prometheus_rule.clone()),
        ]
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use empacts_api::EmpactsApp;

    use crate::validate::{ValidatedApp, validate};

    /// A validated app named `demo` in namespace `ns` from a YAML snippet holding `spec:`.
    pub fn app_from_yaml(yaml: &str) -> ValidatedApp {
        let mut value: serde_yaml::Value = serde_yaml::from_str(yaml).expect("test YAML parses");
        let map = value.as_mapping_mut().expect("test YAML is a mapping");
        map.insert("apiVersion".into(), "empacts.io/v1alpha1".into());
        map.insert("kind".into(), "EmpactsApp".into());
        map.insert("metadata".into(), serde_yaml::from_str("{name: demo, namespace: ns, uid: u-1}").unwrap());
        let app: EmpactsApp = serde_yaml::from_value(value).expect("test app deserializes");
        validate(&app).unwrap_or_else(|e| panic!("test app is valid: {e}"))
    }

    /// (file, spec) of every EmpactsApp in examples/.
    pub fn example_specs() -> Vec<(String, empacts_api::EmpactsAppSpec)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut files: Vec<_> =
            std::fs::read_dir(&dir).expect("examples/ exists").flatten().map(|f| f.path()).collect();
        files.sort();
        let mut out = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path).expect("example reads");
            let value: serde_yaml::Value = serde_yaml::from_str(&text).expect("example parses");
            if value.get("kind").and_then(|k| k.as_str()) == Some("EmpactsApp") {
                let app: EmpactsApp = serde_yaml::from_value(value).expect("example deserializes");
                out.push((path.file_name().unwrap().to_string_lossy().into_owned(), app.spec));
            }
        }
        out
    }
}
