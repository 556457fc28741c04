//! ControllerRevision recording the full spec of one revision, so a rollback (automatic or
//! requested) can rebuild exactly that revision's children; its annotations are the
//! revision's ledger (see `crate::ledger`). Keeping specs here
//! rather than in status keeps the status small and out of the CRD's CEL cost budget.

use std::collections::BTreeMap;

use empacts_api::{EmpactsAppSpec, labels};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use serde::Deserialize;

use crate::{build::meta, names, validate::ValidatedApp};

pub const COMPONENT: &str = "revision";

/// The ledger entry of a revision first desired at app generation `generation`.
pub fn build(app: &ValidatedApp, revision: &str, number: i64, generation: i64) -> ControllerRevision {
    let mut metadata = meta::child_meta(app, names::controller_revision(&app.name, revision), COMPONENT);
    metadata.labels.get_or_insert_with(BTreeMap::new).insert(labels::REVISION.into(), revision.into());
    metadata.annotations = Some(BTreeMap::from([
        (crate::ledger::LEDGER_VERSION.to_string(), "1".to_string()),
        (crate::ledger::DESIRED_GENERATION.to_string(), generation.to_string()),
    ]));
    ControllerRevision {
        metadata,
        data: Some(RawExtension(serde_json::to_value(&app.spec).expect("specs serialize"))),
        revision: number,
    }
}

/// The spec recorded in a ControllerRevision (as stored, or as the ledger cache keeps it: the
/// same JSON as text).
pub fn recorded_spec(cr: &ControllerRevision) -> Result<EmpactsAppSpec, serde_json::Error> {
    match cr.data.as_ref().map(|d| &d.0) {
        Some(serde_json::Value::String(text)) => serde_json::from_str(text),
        Some(value) => EmpactsAppSpec::deserialize(value),
        None => serde_json::from_value(serde_json::Value::Null),
    }
}

pub fn revision_of(cr: &ControllerRevision) -> Option<&str> {
    cr.metadata.labels.as_ref()?.get(labels::REVISION).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::app_from_yaml;

    #[test]
    fn recorded_spec_round_trips() {
        let app = app_from_yaml("spec: {image: 'api:1', env: {A: b}, migration: {command: [m]}}");
        let cr = build(&app, "abc", 3, 7);
        assert_eq!(cr.revision, 3);
        assert_eq!(cr.metadata.name.as_deref(), Some("demo-abc"));
        assert_eq!(revision_of(&cr), Some("abc"));
        assert_eq!(recorded_spec(&cr).unwrap(), app.spec);
        assert_eq!(cr.metadata.annotations.unwrap()[crate::ledger::DESIRED_GENERATION], "7");
    }
}
