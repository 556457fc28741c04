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
    }
    Ok(out)
}
