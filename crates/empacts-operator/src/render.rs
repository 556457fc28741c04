//! `empacts render`: what the operator would create for an app, without a cluster.

use std::collections::BTreeMap;

use empacts_api::EmpactsApp;
use serde::Deserialize;

use crate::{build, secret_value::SecretValue, validate};

/// Documents are numbered from 1, in file order (empty ones included), as an editor shows them.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot parse document {document} of the YAML: {source} (check indentation)")]
    Parse {
        document: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("document {document} has no kind: not a Kubernetes object")]
    NoKind { document: usize },
    #[error(
        "document {document} is an EmpactsApp that does not match the schema: {source} (check field names against `empacts crd`)"
    )]
    AppSchema {
        document: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("document {document} is an invalid EmpactsApp: {source}")]
    Invalid {
        document: usize,
        #[source]
        source: validate::InvalidApp,
    },
}

/// Render a (multi-document) YAML stream: each EmpactsApp is replaced by its children's YAML,
/// every other object is printed as it is (same content, re-serialized: comments go), in file
/// order, so a Secret an app reads stays before the app. Empty documents are skipped. Apps
/// without a namespace render into `default_namespace`; other objects are left untouched.
pub fn render_yaml(input: &str, default_namespace: &str) -> Result<String, RenderError> {
    let mut out = String::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let document = index + 1;
        let value = serde_yaml::Value::deserialize(doc).map_err(|source| RenderError::Parse { document, source })?;
        if value.is_null() {
            continue;
        }
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("EmpactsApp") => out.push_str(&render_app(value, document, default_namespace)?),
            Some(_) => {
                out.push_str("---\n");
                out.push_str(&serde_yaml::to_string(&value).expect("parsed YAML serializes"));
            }
            None => return Err(RenderError::NoKind { document }),
        }
    }
    Ok(out)
}

fn render_app(value: serde_yaml::Value, document: usize, default_namespace: &str) -> Result<String, RenderError> {
    let mut out = String::new();
    let mut app: EmpactsApp =
        serde_yaml::from_value(value).map_err(|source| RenderError::AppSchema { document, source })?;
    if app.metadata.namespace.is_none() {
        app.metadata.namespace = Some(default_namespace.to_string());
    }
    let app = validate::validate(&app).map_err(|source| RenderError::Invalid { document, source })?;
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

    const APP: &str =
        "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {name: api}\nspec: {image: 'api:1'}\n";
    const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {url: 'postgres://x'}\n";

    fn kinds(yaml: &str) -> Vec<String> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap()["kind"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn other_objects_pass_through_in_file_order_and_empty_documents_are_skipped() {
        let input = format!(
            "---\n{SECRET}---\n---\n# only a comment\n---\n{APP}---\nkind: ConfigMap\napiVersion: v1\nmetadata: {{name: c}}\n"
        );
        let out = render_yaml(&input, "ns").unwrap();
        assert_eq!(kinds(&out), ["Secret", "ServiceAccount", "Deployment", "Service", "ConfigMap"], "{out}");
        let docs: Vec<serde_yaml::Value> =
            serde_yaml::Deserializer::from_str(&out).map(|d| serde_yaml::Value::deserialize(d).unwrap()).collect();
        let secret: serde_yaml::Value = serde_yaml::from_str(SECRET).unwrap();
        assert_eq!(docs[0], secret, "the Secret is printed as it is (no namespace added)");
        assert_eq!(docs[2]["metadata"]["namespace"].as_str(), Some("ns"), "the app's children get the namespace");
    }

    #[test]
    fn an_invalid_app_or_an_object_without_kind_is_named_by_its_document_number() {
        let schema = format!(
            "{SECRET}---\nkind: EmpactsApp\napiVersion: empacts.io/v1alpha1\nmetadata: {{name: a}}\nspec: {{image: 1, replicas: many}}\n"
        );
        let err = render_yaml(&schema, "ns").unwrap_err().to_string();
        assert!(err.starts_with("document 2 is an EmpactsApp that does not match the schema"), "{err}");
        let invalid = format!(
            "{APP}---\n{}",
            APP.replace(
                "spec: {image: 'api:1'}",
                "spec: {image: 'api:1', autoscaling: {minReplicas: 4, maxReplicas: 2}}"
            )
        );
        let err = render_yaml(&invalid, "ns").unwrap_err().to_string();
        assert!(err.starts_with("document 2 is an invalid EmpactsApp: "), "{err}");
        let err = render_yaml(&format!("{APP}---\n---\nfoo: bar\n"), "ns").unwrap_err().to_string();
        assert_eq!(err, "document 3 has no kind: not a Kubernetes object");
        let err = render_yaml("kind: Secret\n---\nfoo: [\n", "ns").unwrap_err().to_string();
        assert!(err.starts_with("cannot parse document 2 of the YAML"), "{err}");
    }
}
