//! Client-side admission: checks an `EmpactsApp` against the very schema the CRD installs
//! (OpenAPI keywords with `jsonschema`, `x-kubernetes-validations` with kube's CEL
//! evaluator), so `empacts render` and the operator refuse exactly what the API server would.

use std::sync::OnceLock;

use kube::CustomResourceExt;
use serde_json::Value;

use crate::spec::EmpactsApp;

/// One refused field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the offending field, e.g. `spec.autoscaling.minReplicas`.
    pub field: String,
    /// What is wrong and, where possible, what to do.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The spec was refused; every problem found is listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid EmpactsApp: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ValidationError {
    pub errors: Vec<FieldError>,
}

/// The openAPIV3Schema of the generated CRD.
pub fn crd_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let crd = EmpactsApp::crd();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("the generated CRD always carries an openAPIV3Schema");
        serde_json::to_value(schema).expect("a JSONSchemaProps always serializes")
    })
}

fn structural_validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        // The CRD schema is OpenAPI v3's subset of draft 4; its x-kubernetes-* keywords are ignored.
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .should_validate_formats(false)
            .build(crd_schema())
            .expect("the generated CRD schema is a valid JSON schema")
    })
}

/// The CRD's CEL rules, compiled once.
pub fn compiled_cel() -> &'static kube::core::cel::CompiledSchema {
    static COMPILED: OnceLock<kube::core::cel::CompiledSchema> = OnceLock::new();
    COMPILED.get_or_init(|| kube::core::cel::compile_schema(crd_schema()))
}

/// Every CEL rule that failed to compile (empty when all compile), with its path.
pub fn cel_compile_errors() -> Vec<String> {
    fn walk(node: &kube::core::cel::CompiledSchema, path: &str, out: &mut Vec<String>) {
        for v in &node.validations {
            if let Err(e) = v {
                out.push(format!("{path}: {e}"));
            }
        }
        for (name, child) in &node.properties {
            walk(child, &format!("{path}.{name}"), out);
        }
        if let Some(items) = &node.items {
            walk(items, &format!("{path}[]"), out);
        }
        if let Some(additional) = &node.additional_properties {
            walk(additional, &format!("{path}{{}}"), out);
        }
    }
    let mut out = Vec::new();
    walk(compiled_cel(), "<root>", &mut out);
    out
}

/// Validate an app as admission would. Returns every problem, not just the first.
pub fn validate(app: &EmpactsApp) -> Result<(), ValidationError> {
    let value = serde_json::to_value(app)
        .map_err(|e| ValidationError { errors: vec![FieldError { field: "<root>".into(), message: e.to_string() }] })?;
    validate_value(&value)
}

/// Validate the JSON form of an app (e.g. parsed from a user's YAML).
pub fn validate_value(value: &Value) -> Result<(), ValidationError> {
    let mut errors: Vec<FieldError> = structural_validator()
        .iter_errors(value)
        .map(|e| {
            let field = json_pointer_to_path(e.instance_path().as_str());
            let message = friendly_message(&field, &e);
            FieldError { field, message }
        })
        .collect();
    // CEL rules assume a structurally valid object; evaluate them only then, as the API server does.
    if errors.is_empty()
        && let Err(cel) = kube::core::cel::Validator::new().validate_compiled(compiled_cel(), value, None)
    {
        errors.extend(cel.into_vec().into_iter().map(|e| FieldError {
            field: if e.field_path.is_empty() { "<root>".into() } else { e.field_path },
            message: e.message,
        }));
    }
    if errors.is_empty() { Ok(()) } else { Err(ValidationError { errors }) }
}

/// Regex patterns make unreadable messages; say what the field expects instead.
fn friendly_message(field: &str, error: &jsonschema::ValidationError<'_>) -> String {
    let is_pattern = matches!(error.kind(), jsonschema::error::ValidationErrorKind::Pattern { .. });
    if !is_pattern {
        return error.to_string();
    }
    let value = error.instance();
    let percent_field = [
        "spec.disruption.minAvailable",
        "spec.disruption.maxUnavailable",
        "spec.rollout.maxSurge",
        "spec.rollout.maxUnavailable",
    ];
    if field == "spec.image" {
        format!(
            "{value} is not a valid image reference: expected [registry[:port]/]repository[:tag][@sha256:digest] with a lowercase repository"
        )
    } else if field.starts_with("spec.podLabels.") {
        format!(
            "{value} is not a valid label value: at most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit (or empty)"
        )
    } else if field.starts_with("spec.resources.requests.") || field.starts_with("spec.resources.limits.") {
        format!("{value} is not a valid quantity: use a non-negative Kubernetes quantity such as 500m, 2, 256Mi or 1Gi")
    } else if percent_field.contains(&field) {
        format!(
            "{value} is not a valid pod count or percentage: use an integer from 0 to {} or a percentage from \"0%\" to \"100%\"",
            crate::spec::MAX_POD_COUNT
        )
    } else if field.ends_with(".secretKeyRef.name") {
        format!(
            "{value} is not a valid Secret name: use a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', alphanumeric at both ends)"
        )
    } else if field.ends_with(".secretKeyRef.key") {
        format!(
            "{value} is not a valid Secret key: use letters, digits, '-', '_' and '.', not '.' or '..' and not starting with '..'"
        )
    } else if field.ends_with(".env") {
        format!(
            "{value} is not a valid environment variable name: use letters, digits and '_', not starting with a digit"
        )
    } else if field.ends_with(".path") {
        format!("{value} must be an absolute HTTP path starting with '/', of printable ASCII without spaces")
    } else {
        error.to_string()
    }
}

/// `/spec/podLabels/example.com~1tier` -> `spec.podLabels.example.com/tier`.
fn json_pointer_to_path(pointer: &str) -> String {
    let segments: Vec<String> = pointer.split('/').skip(1).map(|s| s.replace("~1", "/").replace("~0", "~")).collect();
    if segments.is_empty() { "<root>".into() } else { segments.join(".") }
}
