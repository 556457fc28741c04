//! Labels, selectors and metadata shared by every child.

use std::collections::BTreeMap;

use empacts_api::labels;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::validate::ValidatedApp;

/// Labels that select the app's pods. Immutable in a Deployment, so never add to them.
pub fn selector_labels(app: &ValidatedApp) -> BTreeMap<String, String> {
    BTreeMap::from([(labels::NAME.to_string(), app.name.clone()), (labels::INSTANCE.to_string(), app.name.clone())])
}

pub fn selector(app: &ValidatedApp) -> LabelSelector {
    LabelSelector { match_labels: Some(selector_labels(app)), ..Default::default() }
}

/// The standard app.kubernetes.io labels of every child.
pub fn common_labels(app: &ValidatedApp, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(app);
    labels.insert(labels::MANAGED_BY.to_string(), labels::MANAGER.to_string());
    labels.insert(labels::COMPONENT.to_string(), component.to_string());
    labels.insert(labels::PART_OF.to_string(), app.name.clone());
    if let Some(version) = image_version_label(&app.spec.image) {
        labels.insert(labels::VERSION.to_string(), version);
    }
    labels
}

/// Object metadata of a child owned by the app.
pub fn child_meta(app: &ValidatedApp, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(app.namespace.clone()),
        labels: Some(common_labels(app, component)),
        owner_references: Some(vec![app.owner_reference()]),
        ..Default::default()
    }
}

/// `app.kubernetes.io/version` from the image tag, when the tag is a valid label value.
pub fn image_version_label(image: &str) -> Option<String> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_segment = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let tag = last_segment.split_once(':').map(|(_, tag)| tag)?;
    let valid = !tag.is_empty()
        && tag.len() <= 63
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric())
        && tag.ends_with(|c: char| c.is_ascii_alphanumeric());
    valid.then(|| tag.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_label_comes_from_the_tag_not_the_registry_port() {
        assert_eq!(image_version_label("registry.example.com:5000/api:1.8.0").as_deref(), Some("1.8.0"));
        assert_eq!(image_version_label("registry.example.com:5000/api").as_deref(), None);
        assert_eq!(image_version_label("api:1.0@sha256:abc").as_deref(), Some("1.0"));
        assert_eq!(image_version_label("api:1.0_").as_deref(), None);
    }
}
