//! HorizontalPodAutoscaler (autoscaling/v2) scaling the Deployment on CPU and/or memory.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};

use crate::{build::meta, names, validate::ValidatedApp};

pub const COMPONENT: &str = "autoscaler";

fn utilization(resource: &str, percent: i32) -> MetricSpec {
    MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: resource.into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(percent),
                ..Default::default()
            },
        }),
        ..Default::default()
    }
}

pub fn build(app: &ValidatedApp) -> Option<HorizontalPodAutoscaler> {
    let scaling = app.spec.autoscaling.as_ref()?;
    let metrics: Vec<MetricSpec> = [("cpu", scaling.target_cpu), ("memory", scaling.target_memory)]
        .into_iter()
        .filter_map(|(resource, target)| target.map(|t| utilization(resource, t)))
        .collect();
    Some(HorizontalPodAutoscaler {
        metadata: meta::child_meta(app, names::workload(&app.name), COMPONENT),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: names::workload(&app.name),
            },
            min_replicas: Some(scaling.min_replicas()),
            max_replicas: scaling.max_replicas,
            metrics: Some(metrics),
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::app_from_yaml;

    #[test]
    fn hpa_scales_the_deployment_on_cpu_and_memory() {
        let app = app_from_yaml(
            "spec: {image: 'api:1', autoscaling: {minReplicas: 2, maxReplicas: 10, targetCPU: 70, targetMemory: 80}}",
        );
        let spec = build(&app).unwrap().spec.unwrap();
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 10));
        assert_eq!(spec.scale_target_ref.kind, "Deployment");
        assert_eq!(spec.scale_target_ref.name, "demo");
        let metrics = spec.metrics.unwrap();
        let targets: Vec<_> = metrics
            .iter()
            .map(|m| {
                let r = m.resource.as_ref().unwrap();
                (r.name.as_str(), r.target.average_utilization)
            })
            .collect();
        assert_eq!(targets, vec![("cpu", Some(70)), ("memory", Some(80))]);
    }

    #[test]
    fn only_cpu_when_only_cpu_is_asked() {
        let app = app_from_yaml("spec: {image: 'api:1', autoscaling: {maxReplicas: 3, targetCPU: 50}}");
        let spec = build(&app).unwrap().spec.unwrap();
        assert_eq!(spec.min_replicas, Some(1));
        assert_eq!(spec.metrics.unwrap().len(), 1);
    }

    #[test]
    fn no_autoscaling_no_hpa() {
        assert!(build(&app_from_yaml("spec: {image: 'api:1'}")).is_none());
    }
}
