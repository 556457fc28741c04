//! Ingress (networking.k8s.io/v1) routing `spec.ingress.host` and path to the app's Service,
//! with TLS from a Secret or from cert-manager (its ingress-shim annotation on the Ingress).

use std::collections::BTreeMap;

use empacts_api::IssuerKind;
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, ServiceBackendPort,
};

use crate::{build::meta, names, validate::ValidatedApp};

pub const COMPONENT: &str = "ingress";

/// cert-manager's ingress-shim annotations: it issues the certificate into the TLS Secret.
pub const CLUSTER_ISSUER_ANNOTATION: &str = "cert-manager.io/cluster-issuer";
pub const ISSUER_ANNOTATION: &str = "cert-manager.io/issuer";

/// The TLS Secret cert-manager fills when only an issuer is given.
pub fn tls_secret(app: &str) -> String {
    format!("{app}-tls")
}

pub fn build(app: &ValidatedApp) -> Option<Ingress> {
    let spec = app.spec.ingress.as_ref()?;
    let mut metadata = meta::child_meta(app, names::workload(&app.name), COMPONENT);
    // The user's annotations cannot set cert-manager.io/* or empacts.io/* (admission refuses
    // them), so ours below never clash with theirs.
    let mut annotations: BTreeMap<String, String> = spec.annotations.clone().unwrap_or_default();
    let tls = spec.tls.as_ref().map(|tls| {
        if let Some(issuer) = &tls.issuer {
            let key = match tls.issuer_kind.unwrap_or_default() {
                IssuerKind::ClusterIssuer => CLUSTER_ISSUER_ANNOTATION,
                IssuerKind::Issuer => ISSUER_ANNOTATION,
            };
            annotations.insert(key.into(), issuer.clone());
        }
        IngressTLS {
            hosts: Some(vec![spec.host.clone()]),
            secret_name: Some(tls.secret_name.clone().unwrap_or_else(|| tls_secret(&app.name))),
        }
    });
    metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    let backend = IngressBackend {
        service: Some(IngressServiceBackend {
            name: names::workload(&app.name),
            port: Some(ServiceBackendPort { number: Some(app.spec.service_port()), name: None }),
        }),
        resource: None,
    };
    Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: spec.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(spec.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(spec.path().to_string()),
                        path_type: "Prefix".into(),
                        backend,
                    }],
                }),
            }]),
            tls: tls.map(|t| vec![t]),
            default_backend: None,
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::app_from_yaml;

    fn annotations(ingress: &Ingress) -> BTreeMap<String, String> {
        ingress.metadata.annotations.clone().unwrap_or_default()
    }

    #[test]
    fn routes_host_and_path_to_the_service_port_with_tls_from_a_cluster_issuer() {
        let app = app_from_yaml(
            "spec: {image: 'api:1', port: 3000, service: {port: 8080}, ingress: {host: api.example.com, path: /v1, \
             className: nginx, tls: {issuer: letsencrypt}, annotations: {nginx.ingress.kubernetes.io/limit-rps: '20'}}}",
        );
        let ingress = build(&app).unwrap();
        assert_eq!(ingress.metadata.name.as_deref(), Some("demo"));
        assert_eq!(ingress.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(ingress.metadata.labels.as_ref().unwrap()["app.kubernetes.io/component"], "ingress");
        assert_eq!(ingress.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");
        assert_eq!(
            annotations(&ingress),
            BTreeMap::from([
                ("cert-manager.io/cluster-issuer".to_string(), "letsencrypt".to_string()),
                ("nginx.ingress.kubernetes.io/limit-rps".to_string(), "20".to_string()),
            ])
        );
        let spec = ingress.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let rules = spec.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].host.as_deref(), Some("api.example.com"));
        let paths = &rules[0].http.as_ref().unwrap().paths;
        assert_eq!(paths.len(), 1);
        assert_eq!((paths[0].path.as_deref(), paths[0].path_type.as_str()), (Some("/v1"), "Prefix"));
        let service = paths[0].backend.service.as_ref().unwrap();
        assert_eq!(service.name, "demo");
        assert_eq!(service.port, Some(ServiceBackendPort { number: Some(8080), name: None }), "the Service port");
        let tls = spec.tls.unwrap();
        assert_eq!(tls.len(), 1);
        assert_eq!(tls[0].hosts, Some(vec!["api.example.com".to_string()]));
        assert_eq!(tls[0].secret_name.as_deref(), Some("demo-tls"), "cert-manager fills <app>-tls");
    }

    #[test]
    fn a_namespaced_issuer_and_a_named_secret() {
        let app = app_from_yaml(
            "spec: {image: 'api:1', ingress: {host: a.example.com, tls: {issuer: local, issuerKind: Issuer, secretName: a-cert}}}",
        );
        let ingress = build(&app).unwrap();
        assert_eq!(
            annotations(&ingress),
            BTreeMap::from([("cert-manager.io/issuer".to_string(), "local".to_string())])
        );
        assert_eq!(ingress.spec.unwrap().tls.unwrap()[0].secret_name.as_deref(), Some("a-cert"));
    }

    #[test]
    fn tls_from_a_secret_alone_has_no_cert_manager_annotation() {
        let app = app_from_yaml("spec: {image: 'api:1', ingress: {host: a.example.com, tls: {secretName: mine}}}");
        let ingress = build(&app).unwrap();
        assert_eq!(ingress.metadata.annotations, None);
        assert_eq!(ingress.spec.unwrap().tls.unwrap()[0].secret_name.as_deref(), Some("mine"));
    }

    #[test]
    fn defaults_plain_http_on_slash_to_service_port_80_with_the_default_class() {
        let ingress = build(&app_from_yaml("spec: {image: 'api:1', ingress: {host: a.example.com}}")).unwrap();
        assert_eq!(ingress.metadata.annotations, None);
        let spec = ingress.spec.unwrap();
        assert_eq!(spec.ingress_class_name, None);
        assert_eq!(spec.tls, None);
        let rules = spec.rules.unwrap();
        let path = &rules[0].http.as_ref().unwrap().paths[0];
        assert_eq!(path.path.as_deref(), Some("/"));
        assert_eq!(path.backend.service.as_ref().unwrap().port.as_ref().unwrap().number, Some(80));
    }

    #[test]
    fn no_ingress_without_spec_ingress() {
        assert!(build(&app_from_yaml("spec: {image: 'api:1'}")).is_none());
    }
}
