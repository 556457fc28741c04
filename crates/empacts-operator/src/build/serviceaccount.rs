//! ServiceAccount the pods run as (its own identity per app, no token mounted by default).

use k8s_openapi::api::core::v1::ServiceAccount;

use crate::{build::meta, names, validate::ValidatedApp};

pub const COMPONENT: &str = "identity";

pub fn build(app: &ValidatedApp) -> ServiceAccount {
    ServiceAccount {
        metadata: meta::child_meta(app, names::workload(&app.name), COMPONENT),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::app_from_yaml;

    #[test]
    fn service_account_is_owned_and_mounts_no_token() {
        let sa = build(&app_from_yaml("spec: {image: 'api:1'}"));
        assert_eq!(sa.metadata.name.as_deref(), Some("demo"));
        assert_eq!(sa.automount_service_account_token, Some(false));
        assert_eq!(sa.metadata.owner_references.unwrap()[0].kind, "EmpactsApp");
    }
}
