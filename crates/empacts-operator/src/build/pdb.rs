//! PodDisruptionBudget protecting the app during node drains.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};

use crate::{build::meta, names, validate::ValidatedApp};

pub const COMPONENT: &str = "disruption-budget";

pub fn build(app: &ValidatedApp) -> Option<PodDisruptionBudget> {
    let disruption = app.spec.disruption.as_ref()?;
    Some(PodDisruptionBudget {
        metadata: meta::child_meta(app, names::workload(&app.name), COMPONENT),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(meta::selector(app)),
            min_available: disruption.min_available.clone(),
            max_unavailable: disruption.max_unavailable.clone(),
            // Evicting a pod that is not ready anyway never hurts availability; lets drains finish.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::app_from_yaml;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    #[test]
    fn pdb_selects_the_pods() {
        let app = app_from_yaml("spec: {image: 'api:1', disruption: {minAvailable: 1}}");
        let spec = build(&app).unwrap().spec.unwrap();
        assert_eq!(spec.min_available, Some(IntOrString::Int(1)));
        assert_eq!(spec.max_unavailable, None);
        assert_eq!(spec.selector.unwrap().match_labels.unwrap()["app.kubernetes.io/name"], "demo");
    }

    #[test]
    fn percent_max_unavailable() {
        let app = app_from_yaml("spec: {image: 'api:1', disruption: {maxUnavailable: '25%'}}");
        assert_eq!(build(&app).unwrap().spec.unwrap().max_unavailable, Some(IntOrString::String("25%".into())));
    }
}
