//! NetworkPolicy (networking.k8s.io/v1) isolating the app's pods for ingress: everything is
//! denied except the Ingress controller's namespace and the callers of
//! `spec.networkPolicy.allowFrom`, on the allowed ports.
//!
//! Ingress only: egress is not restricted. The policy selects the pods the Service selects
//! (the selector labels); migration and rollback Job pods do not carry those labels, so they
//! are not selected at all and keep the app's unrestricted egress (to the database, say).

use std::collections::BTreeMap;

use empacts_api::NetworkPeer;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::{build::meta, build::pod, names, validate::ValidatedApp};

pub const COMPONENT: &str = "network-policy";

/// The label Kubernetes sets on every namespace to its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn labels(map: &BTreeMap<String, String>) -> LabelSelector {
    LabelSelector { match_labels: Some(map.clone()), match_expressions: None }
}

fn peer(p: &NetworkPeer) -> NetworkPolicyPeer {
    // A peer with only a podSelector selects pods of the policy's (the app's) namespace; one
    // with only a namespaceSelector, every pod of those namespaces.
    NetworkPolicyPeer {
        namespace_selector: p.namespace_selector.as_ref().map(labels),
        pod_selector: p.pod_selector.as_ref().map(labels),
        ip_block: None,
    }
}

fn tcp(port: IntOrString) -> NetworkPolicyPort {
    NetworkPolicyPort { port: Some(port), protocol: Some("TCP".into()), end_port: None }
}

/// The ports callers may reach: `allowPorts` as given, or else the app port and, with
/// monitoring on another port, the metrics port. The app port is the named container port,
/// like the Service's target, so it follows `spec.port` in every pod, also during a rollback
/// to a revision with another port.
fn ports(app: &ValidatedApp) -> Vec<NetworkPolicyPort> {
    let spec = &app.spec;
    if let Some(allowed) = spec.network_policy.as_ref().and_then(|n| n.allow_ports.as_ref()) {
        let mut seen = Vec::new();
        for port in allowed {
            if !seen.contains(port) {
                seen.push(*port);
            }
        }
        return seen.into_iter().map(|p| tcp(IntOrString::Int(p))).collect();
    }
    let mut out = vec![tcp(IntOrString::String(pod::PORT_NAME.into()))];
    if spec.monitoring.is_some() && spec.metrics_port() != spec.port() {
        out.push(tcp(IntOrString::Int(spec.metrics_port())));
    }
    out
}

pub fn build(app: &ValidatedApp) -> Option<NetworkPolicy> {
    let policy = app.spec.network_policy.as_ref().filter(|n| n.enabled())?;
    let mut from = Vec::new();
    let controller = policy.ingress_controller_namespace();
    if !controller.is_empty() {
        let selector = BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), controller.to_string())]);
        from.push(NetworkPolicyPeer { namespace_selector: Some(labels(&selector)), ..Default::default() });
    }
    from.extend(policy.allow_from.iter().flatten().map(peer));
    // A rule without `from` would admit every source: with no caller at all there is no rule,
    // and the policy denies all ingress.
    let ingress = if from.is_empty() {
        vec![]
    } else {
        vec![NetworkPolicyIngressRule { from: Some(from), ports: Some(ports(app)) }]
    };
    Some(NetworkPolicy {
        metadata: meta::child_meta(app, names::workload(&app.name), COMPONENT),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(meta::selector(app)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            egress: None,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::app_from_yaml;

    /// Each peer as (namespaceSelector, podSelector) match labels.
    type Peer = (Option<BTreeMap<String, String>>, Option<BTreeMap<String, String>>);

    fn peers(rule: &NetworkPolicyIngressRule) -> Vec<Peer> {
        let labels = |s: &Option<LabelSelector>| {
            s.as_ref().map(|s| {
                assert_eq!(s.match_expressions, None);
                s.match_labels.clone().unwrap()
            })
        };
        rule.from
            .iter()
            .flatten()
            .map(|p| {
                assert_eq!(p.ip_block, None);
                (labels(&p.namespace_selector), labels(&p.pod_selector))
            })
            .collect()
    }

    fn ports_of(rule: &NetworkPolicyIngressRule) -> Vec<(IntOrString, String)> {
        rule.ports
            .iter()
            .flatten()
            .map(|p| {
                assert_eq!(p.end_port, None);
                (p.port.clone().unwrap(), p.protocol.clone().unwrap())
            })
            .collect()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn tcp(port: IntOrString) -> (IntOrString, String) {
        (port, "TCP".to_string())
    }

    fn http() -> IntOrString {
        IntOrString::String("http".into())
    }

    #[test]
    fn selects_the_service_pods_and_admits_the_controller_and_each_peer_on_the_app_port() {
        let app = app_from_yaml(
            "spec: {image: 'api:1', port: 3000, networkPolicy: {allowFrom: [\
             {namespaceSelector: {team: web}, podSelector: {role: frontend}}, \
             {podSelector: {app: worker}}, \
             {namespaceSelector: {kubernetes.io/metadata.name: monitoring}}]}}",
        );
        let np = build(&app).unwrap();
        assert_eq!(np.metadata.name.as_deref(), Some("demo"));
        assert_eq!(np.metadata.labels.as_ref().unwrap()["app.kubernetes.io/component"], "network-policy");
        assert_eq!(np.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");
        let spec = np.spec.unwrap();
        assert_eq!(spec.pod_selector.unwrap().match_labels.unwrap(), meta::selector_labels(&app), "the Service's pods");
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]), "ingress only: egress stays open");
        assert_eq!(spec.egress, None);
        let rules = spec.ingress.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            peers(&rules[0]),
            vec![
                (Some(map(&[("kubernetes.io/metadata.name", "ingress-nginx")])), None),
                (Some(map(&[("team", "web")])), Some(map(&[("role", "frontend")]))),
                (None, Some(map(&[("app", "worker")]))),
                (Some(map(&[("kubernetes.io/metadata.name", "monitoring")])), None),
            ]
        );
        assert_eq!(ports_of(&rules[0]), vec![tcp(http())], "the named app port (3000 in the pods)");
    }

    #[test]
    fn another_controller_namespace_and_the_metrics_port_with_monitoring() {
        let app = app_from_yaml(
            "spec: {image: 'api:1', port: 3000, monitoring: {port: 9090}, networkPolicy: {ingressControllerNamespace: traefik}}",
        );
        let rules = build(&app).unwrap().spec.unwrap().ingress.unwrap();
        assert_eq!(peers(&rules[0]), vec![(Some(map(&[("kubernetes.io/metadata.name", "traefik")])), None)]);
        assert_eq!(ports_of(&rules[0]), vec![tcp(http()), tcp(IntOrString::Int(9090))]);
    }

    #[test]
    fn monitoring_on_the_app_port_adds_no_port() {
        let app = app_from_yaml("spec: {image: 'api:1', port: 3000, monitoring: {}, networkPolicy: {}}");
        let rules = build(&app).unwrap().spec.unwrap().ingress.unwrap();
        assert_eq!(ports_of(&rules[0]), vec![tcp(http())]);
        let app = app_from_yaml("spec: {image: 'api:1', port: 3000, monitoring: {port: 3000}, networkPolicy: {}}");
        let rules = build(&app).unwrap().spec.unwrap().ingress.unwrap();
        assert_eq!(ports_of(&rules[0]), vec![tcp(http())]);
    }

    #[test]
    fn allow_ports_replace_the_default_ports() {
        let app = app_from_yaml(
            "spec: {image: 'api:1', port: 3000, monitoring: {port: 9090}, networkPolicy: {allowPorts: [8443, 3000, 8443]}}",
        );
        let rules = build(&app).unwrap().spec.unwrap().ingress.unwrap();
        assert_eq!(ports_of(&rules[0]), vec![tcp(IntOrString::Int(8443)), tcp(IntOrString::Int(3000))]);
    }

    #[test]
    fn no_controller_and_no_callers_denies_all_ingress() {
        let app = app_from_yaml("spec: {image: 'api:1', networkPolicy: {ingressControllerNamespace: ''}}");
        let spec = build(&app).unwrap().spec.unwrap();
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        assert_eq!(spec.ingress, Some(vec![]), "no rule at all: a rule without `from` would admit everyone");
        let app = app_from_yaml(
            "spec: {image: 'api:1', networkPolicy: {ingressControllerNamespace: '', allowFrom: [{podSelector: {a: b}}]}}",
        );
        let rules = build(&app).unwrap().spec.unwrap().ingress.unwrap();
        assert_eq!(peers(&rules[0]), vec![(None, Some(map(&[("a", "b")])))], "the controller is left out");
    }

    #[test]
    fn disabled_or_absent_means_no_policy() {
        assert!(build(&app_from_yaml("spec: {image: 'api:1'}")).is_none());
        assert!(build(&app_from_yaml("spec: {image: 'api:1', networkPolicy: {enabled: false}}")).is_none());
        assert!(build(&app_from_yaml("spec: {image: 'api:1', networkPolicy: {enabled: true}}")).is_some());
    }

    #[test]
    fn migration_job_pods_are_not_selected() {
        let app = app_from_yaml("spec: {image: 'api:1', migration: {command: [m]}, networkPolicy: {}}");
        let selector = build(&app).unwrap().spec.unwrap().pod_selector.unwrap().match_labels.unwrap();
        let job = crate::build::job::migration(&app, "r1", 1).unwrap();
        let job_pod = job.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        assert!(!selector.iter().all(|(k, v)| job_pod.get(k) == Some(v)), "Job pods keep unrestricted traffic");
        let deployment = crate::build::deployment::build(&app, "r1", None, None);
        let pod = deployment.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        assert!(selector.iter().all(|(k, v)| pod.get(k) == Some(v)), "the app's pods are selected");
    }
}
