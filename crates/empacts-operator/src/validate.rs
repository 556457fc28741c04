//! First reconcile step: turn an `EmpactsApp` into a [`ValidatedApp`] (admission rules
//! re-checked, identity and names fixed) or say precisely what is wrong. Pure.

use std::collections::BTreeMap;

use empacts_api::{EmpactsApp, EmpactsAppSpec, validate::ValidationError};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use crate::names;

/// An app that passed validation, with everything builders need to name and own children.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedApp {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub generation: i64,
    pub spec: EmpactsAppSpec,
    pub annotations: BTreeMap<String, String>,
    /// Env name -> the Secret holding its generated value (observe switches an entry to the
    /// legacy name when an earlier build generated it under that name).
    pub generated_names: BTreeMap<String, String>,
}

/// Why an app cannot be reconciled as written. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum InvalidApp {
    #[error(transparent)]
    Schema(#[from] ValidationError),
    #[error("spec.secrets: {first} and {second} would both be stored in Secret {secret}; rename one of them")]
    GeneratedSecretNameClash { first: String, second: String, secret: String },
    #[error("the EmpactsApp has no namespace; it is a namespaced resource")]
    NoNamespace,
}

/// Placeholder UID used when rendering offline (no API server assigned one).
pub const OFFLINE_UID: &str = "00000000-0000-0000-0000-000000000000";

pub fn validate(app: &EmpactsApp) -> Result<ValidatedApp, InvalidApp> {
    empacts_api::validate::validate(app)?;
    let namespace = app.namespace().ok_or(InvalidApp::NoNamespace)?;
    let name = app.name_any();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for entry in app.spec.secrets().iter().filter(|s| s.generate.is_some()) {
        let secret = names::generated_secret(&name, &entry.env);
        if let Some(first) = seen.insert(secret.clone(), entry.env.clone()) {
            return Err(InvalidApp::GeneratedSecretNameClash { first, second: entry.env.clone(), secret });
        }
    }
    let generated_names = app
        .spec
        .secrets()
        .iter()
        .filter(|s| s.generate.is_some())
        .map(|s| (s.env.clone(), names::generated_secret(&name, &s.env)))
        .collect();
    Ok(ValidatedApp {
        generated_names,
        uid: app.uid().unwrap_or_else(|| OFFLINE_UID.to_string()),
        generation: app.meta().generation.unwrap_or(0),
        annotations: app.annotations().clone(),
        spec: app.spec.clone(),
        name,
        namespace,
    })
}

impl ValidatedApp {
    /// The Secret of a generated entry.
    pub fn generated_secret(&self, env: &str) -> String {
        self.generated_names.get(env).cloned().unwrap_or_else(|| names::generated_secret(&self.name, env))
    }

    /// Owner reference that makes the garbage collector delete a child with its app.
    pub fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: format!("{}/{}", empacts_api::GROUP, empacts_api::VERSION),
            kind: "EmpactsApp".into(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(spec: &str) -> EmpactsApp {
        let yaml = format!(
            "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: api, namespace: ns}}\nspec: {spec}\n"
        );
        serde_yaml::from_str(&yaml).unwrap()
    }

    /// Objects stored before the CRD refused them (an older CRD, or admission bypassed) are
    /// refused again here, before any name reaches a URL or a child.
    #[test]
    fn the_operator_re_checks_admission_rules_on_stored_objects() {
        for (spec, field) in [
            (
                "{image: 'api:1', secrets: [{env: DB, secretKeyRef: {name: '?watch=true', key: url}}]}",
                "secretKeyRef.name",
            ),
            ("{image: 'api:1', secrets: [{env: DB, secretKeyRef: {name: '../x', key: url}}]}", "secretKeyRef.name"),
            ("{image: 'api:1', podLabels: {'app.kubernetes.io/instance': other}}", "podLabels"),
            ("{image: 'api:1', resources: {requests: {cpu: lots}}}", "resources"),
            ("{image: 'api:1', disruption: {minAvailable: '150%'}}", "minAvailable"),
        ] {
            let err = validate(&stored(spec)).expect_err(spec).to_string();
            assert!(err.contains(field), "{spec}: {err}");
        }
        validate(&stored("{image: 'api:1', secrets: [{env: DB, secretKeyRef: {name: db.main, key: url}}]}")).unwrap();
    }
}
