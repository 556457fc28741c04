//! The Service in front of the pods.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::{build::meta, build::pod, names, validate::ValidatedApp};

pub const COMPONENT: &str = "service";
/// The Service port of the metrics, when spec.monitoring puts them on a port of their own.
pub const METRICS_PORT_NAME: &str = "metrics";

pub fn build(app: &ValidatedApp) -> Service {
    let type_ = match app.spec.service_type() {
        empacts_api::ServiceType::ClusterIP => "ClusterIP",
        empacts_api::ServiceType::NodePort => "NodePort",
        empacts_api::ServiceType::LoadBalancer => "LoadBalancer",
    };
    let mut ports = vec![ServicePort {
        name: Some(pod::PORT_NAME.into()),
        port: app.spec.service_port(),
        // The named port follows spec.port, including during a rollback to another port.
        target_port: Some(IntOrString::String(pod::PORT_NAME.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }];
    let metrics = app.spec.metrics_port();
    if app.spec.monitoring.is_some() && metrics != app.spec.port() {
        // Scraped through the Service (the ServiceMonitor selects it); the pods' port by number.
        ports.push(ServicePort {
            name: Some(METRICS_PORT_NAME.into()),
            port: metrics,
            target_port: Some(IntOrString::Int(metrics)),
            protocol: Some("TCP".into()),
            ..Default::default()
        });
    }
    Service {
        metadata: meta::child_meta(app, names::workload(&app.name), COMPONENT),
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            selector: Some(meta::selector_labels(app)),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::app_from_yaml;

    #[test]
    fn service_targets_the_named_app_port() {
        let svc = build(&app_from_yaml("spec: {image: 'api:1', port: 3000, service: {type: NodePort, port: 8080}}"));
        let spec = svc.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        let port = &spec.ports.unwrap()[0];
        assert_eq!(port.port, 8080);
        assert_eq!(port.target_port, Some(IntOrString::String("http".into())));
        assert_eq!(spec.selector.unwrap()["app.kubernetes.io/instance"], "demo");
    }

    #[test]
    fn a_metrics_port_of_its_own_gets_a_service_port_only_with_monitoring() {
        let ports = |yaml: &str| build(&app_from_yaml(yaml)).spec.unwrap().ports.unwrap();
        let with = ports("spec: {image: 'api:1', port: 3000, monitoring: {port: 9102}}");
        assert_eq!(with.len(), 2);
        assert_eq!(with[1].name.as_deref(), Some("metrics"));
        assert_eq!((with[1].port, with[1].target_port.clone()), (9102, Some(IntOrString::Int(9102))));
        assert_eq!(ports("spec: {image: 'api:1', port: 3000, monitoring: {port: 3000}}").len(), 1, "same port");
        assert_eq!(ports("spec: {image: 'api:1', port: 3000, monitoring: {}}").len(), 1, "defaults to the app port");
        assert_eq!(ports("spec: {image: 'api:1', port: 3000}").len(), 1, "no monitoring");
    }

    #[test]
    fn defaults_to_cluster_ip_on_80() {
        let spec = build(&app_from_yaml("spec: {image: 'api:1'}")).spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.ports.unwrap()[0].port, 80);
    }
}
