//! `empacts render`: what the operator would create for an app, without a cluster.

use std::collections::BTreeMap;

use empacts_api::EmpactsApp;
use serde::Deserialize;

use crate::{build, secret_value::SecretValue, validate};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot parse the EmpactsApp YAML: {0} (check indentation and field names against `empacts crd`)")]
    Parse(#[source] serde_yaml::Error),
    #[error("document {index} is a {kind}, not an EmpactsApp (apiVersion empacts.io/v1alpha1)")]
    NotAnApp { index: usize, kind: String },
    #[error(transparent)]
    Invalid(#[from] validate::InvalidApp),
}

/// Render every EmpactsApp in a (multi-document) YAML stream into the children's YAML.
/// Apps without a namespace render into `default_namespace`.
pub fn render_yaml(input: &str, default_namespace: &str) -> Result<String, RenderError> {
    let mut out = String::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).map_err(RenderError::Parse)?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("<no kind>").to_string();
        if kind != "EmpactsApp" {
            return Err(RenderError::NotAnApp { index, kind });
        }
        let mut app: EmpactsApp = serde_yaml::from_value(value).map_err(RenderError::Parse)?;
        if app.metadata.namespace.is_none() {
            app.metadata.namespace = Some(default_namespace.to_string());
        }
        let app = validate::validate(&app)?;
        let mut children = build::build_all(&app, None, None, |_| Some(SecretValue::placeholder()));
        // Show the placeholder readably; real values exist only in the cluster.
        for secret in &mut children.generated_secrets {
            let placeholder = String::from_utf8_lossy(SecretValue::placeholder().expose()).into_owned();
            secret.data = None;
            secret.string_data = Some(BTreeMap::from([(crate::names::GENERATED_SECRET_KEY.to_string(), placeholder)]));
        }
        for manifest in children.to_manifests() {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(&manifest).expect("JSON values convert to YAML"));
        }
        if let Some(canary) = first_canary_step(&app) {
            out.push_str(&canary);
        }
    }
    Ok(out)
}

/// With the Canary strategy: the canary Deployment as a new revision's first step runs it
/// (only while a canary is in progress; the stable Deployment above then runs the rest).
fn first_canary_step(app: &validate::ValidatedApp) -> Option<String> {
    let rollout = app.spec.rollout();
    if rollout.strategy() != empacts_api::RolloutStrategy::Canary {
        return None;
    }
    let step = rollout.steps().first()?.clone();
    let total = build::deployment::replicas(app, None);
    let replicas = crate::plan::lifecycle::canary_replicas(total, step.weight);
    let revision = crate::revision::identity(&app.spec);
    let canary = build::deployment::canary(app, &revision, None, replicas);
    let yaml = serde_yaml::to_string(&build::manifest(&canary)).expect("JSON values convert to YAML");
    Some(format!(
        "---\n# During a canary, first step ({}% of {total} pods; the stable Deployment runs {} of them):\n{yaml}",
        step.weight,
        if app.spec.autoscaling.is_some() { total } else { (total - replicas).max(1) }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_app_renders_its_first_step() {
        let yaml = "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {name: api}\nspec: {image: 'api:2', replicas: 10, rollout: {strategy: Canary, steps: [{weight: 20, pause: 1m}]}}\n";
        let out = render_yaml(yaml, "ns").unwrap();
        assert!(
            out.contains("# During a canary, first step (20% of 10 pods; the stable Deployment runs 8 of them)"),
            "{out}"
        );
        assert!(out.contains("name: api-canary"), "{out}");
        let plain = render_yaml(&yaml.replace("strategy: Canary, ", ""), "ns").unwrap();
        assert!(!plain.contains("api-canary"));
    }
}
