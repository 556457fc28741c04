//! One registry of the kinds the operator creates: for each, the API resource, the verbs the
//! operator needs (the chart's RBAC must grant them: a unit test reads the chart), how the
//! controller watches it, and how what is no longer wanted goes away. The controller's
//! metadata watches and caches, and the writes of children, are driven from here.
//! `kinds_of` destructures [`Children`] without `..`, so a child kind added to the builders
//! does not compile until it is registered here.

use crate::build::Children;

/// How the controller learns about changes of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Full objects through `Controller::owns` (their status decides the rollout).
    Owned,
    /// Metadata only, also feeding the skip-unchanged caches.
    OwnedMetadata,
    /// Like [`Watch::OwnedMetadata`], for kinds without a `metadata.generation` whose status
    /// moves on its own (an HPA's metrics, a LoadBalancer Service's address): watched whole,
    /// cached as metadata plus a hash of the spec, so a status write is neither a trigger nor
    /// a reason to apply again.
    OwnedSpecHash,
    /// Metadata of every object of the kind, mapped to the apps that reference it.
    Referenced,
    /// Read fresh when a reconcile needs it, not watched (kinds of optional CRDs).
    ReadFresh,
    /// The ledger: watched whole into its own cache, which this process's own writes overlay
    /// until the watch shows them (see `ledger_cache`); not a trigger.
    Ledger,
}

/// How an object of the kind that is no longer wanted goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prune {
    /// Deleted when the spec no longer asks for it, if this app controls it.
    WhenUnwanted,
    /// Deleted by the retention policy (by label and revision).
    Retention,
    /// Only through the app's owner reference (garbage collection), never by the operator.
    OwnerReference,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildKind {
    pub kind: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub watch: Watch,
    pub prune: Prune,
}

pub const CHILD_KINDS: &[ChildKind] = &[
    ChildKind {
        kind: "ServiceAccount",
        group: "",
        version: "v1",
        resource: "serviceaccounts",
        verbs: &["list", "watch", "create", "patch"],
        watch: Watch::OwnedMetadata,
        prune: Prune::OwnerReference,
    },
    ChildKind {
        kind: "ConfigMap",
        group: "",
        version: "v1",
        resource: "configmaps",
        verbs: &["list", "watch", "create", "patch", "delete"],
        watch: Watch::OwnedMetadata,
        prune: Prune::Retention,
    },
    ChildKind {
        kind: "Secret",
        group: "",
        version: "v1",
        resource: "secrets",
        // Generated ones are created, replaced on rotation, released by a patch; never deleted.
        verbs: &["get", "list", "watch", "create", "patch", "update"],
        watch: Watch::Referenced,
        prune: Prune::OwnerReference,
    },
    ChildKind {
        kind: "Job",
        group: "batch",
        version: "v1",
        resource: "jobs",
        verbs: &["list", "watch", "create", "patch", "delete"],
        watch: Watch::Owned,
        prune: Prune::Retention,
    },
    ChildKind {
        kind: "Deployment",
        group: "apps",
        version: "v1",
        resource: "deployments",
        verbs: &["get", "list", "watch", "create", "patch"],
        watch: Watch::Owned,
        prune: Prune::OwnerReference,
    },
    ChildKind {
        kind: "Service",
        group: "",
        version: "v1",
        resource: "services",
        verbs: &["list", "watch", "create", "patch"],
        watch: Watch::OwnedSpecHash,
        prune: Prune::OwnerReference,
    },
    ChildKind {
        kind: "HorizontalPodAutoscaler",
        group: "autoscaling",
        version: "v2",
        resource: "horizontalpodautoscalers",
        verbs: &["list", "watch", "create", "patch", "delete"],
        watch: Watch::OwnedSpecHash,
        prune: Prune::WhenUnwanted,
    },
    ChildKind {
        kind: "PodDisruptionBudget",
        group: "policy",
        version: "v1",
        resource: "poddisruptionbudgets",
        verbs: &["list", "watch", "create", "patch", "delete"],
        watch: Watch::OwnedMetadata,
        prune: Prune::WhenUnwanted,
    },
    // Prometheus Operator kinds: optional CRDs, so not watched (a watch of a missing kind
    // fails); read fresh (metadata) when an app may need a write, and written only while
    // their CRDs are installed (see `monitoring`).
    ChildKind {
        kind: "ServiceMonitor",
        group: "monitoring.coreos.com",
        version: "v1",
        resource: "servicemonitors",
        verbs: &["get", "create", "patch", "delete"],
        watch: Watch::ReadFresh,
        prune: Prune::WhenUnwanted,
    },
    ChildKind {
        kind: "PrometheusRule",
        group: "monitoring.coreos.com",
        version: "v1",
        resource: "prometheusrules",
        verbs: &["get", "create", "patch", "delete"],
        watch: Watch::ReadFresh,
        prune: Prune::WhenUnwanted,
    },
    ChildKind {
        kind: "Ingress",
        group: "networking.k8s.io",
        version: "v1",
        resource: "ingresses",
        verbs: &["list", "watch", "create", "patch", "delete"],
        watch: Watch::OwnedMetadata,
        prune: Prune::WhenUnwanted,
    },
    ChildKind {
        kind: "NetworkPolicy",
        group: "networking.k8s.io",
        version: "v1",
        resource: "networkpolicies",
        verbs: &["list", "watch", "create", "patch", "delete"],
        watch: Watch::OwnedMetadata,
        prune: Prune::WhenUnwanted,
    },
    ChildKind {
        kind: "ControllerRevision",
        group: "apps",
        version: "v1",
        resource: "controllerrevisions",
        verbs: &["list", "watch", "create", "patch", "delete"],
        watch: Watch::Ledger,
        prune: Prune::Retention,
    },
];

impl ChildKind {
    /// Watched by the controller and cached as metadata (with or without a spec hash).
    pub fn cached(&self) -> bool {
        matches!(self.watch, Watch::OwnedMetadata | Watch::OwnedSpecHash)
    }

    pub fn api_resource(&self) -> kube::api::ApiResource {
        let api_version =
            if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) };
        kube::api::ApiResource {
            group: self.group.to_string(),
            version: self.version.to_string(),
            api_version,
            kind: self.kind.to_string(),
            plural: self.resource.to_string(),
        }
    }
}

pub fn child_kind(kind: &str) -> Option<&'static ChildKind> {
    CHILD_KINDS.iter().find(|k| k.kind == kind)
}

/// The kind of every child the builders make. No `..`: a new field must be mapped here.
pub fn kinds_of(children: &Children) -> Vec<&'static str> {
    // Every field named (no `..`), so a new child kind does not compile until it is listed below.
    let Children {
        service_account: _,
        config_map: _,
        generated_secrets: _,
        migration_job: _,
        deployment: _,
        service: _,
        hpa: _,
        pdb: _,
        ingress: _,
        network_policy: _,
        service_monitor: _,
        prometheus_rule: _,
    } = children;
    vec![
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "Job",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::app_from_yaml;
    use crate::secret_value::SecretValue;

    #[test]
    fn every_built_child_and_the_ledger_are_registered() {
        let app = app_from_yaml(
            "spec: {image: 'api:1', env: {A: b}, secrets: [{env: K, generate: {}}], migration: {command: [m]}, \
             autoscaling: {maxReplicas: 3, targetCPU: 50}, disruption: {minAvailable: 1}, \
             ingress: {host: a.example.com}, networkPolicy: {}, monitoring: {}}",
        );
        let children = crate::build::build_all(&app, None, None, |_| Some(SecretValue::placeholder()));
        let built: Vec<String> =
            children.to_manifests().iter().map(|m| m["kind"].as_str().unwrap().to_string()).collect();
        for kind in &built {
            assert!(kinds_of(&children).contains(&kind.as_str()), "{kind} built but not in kinds_of");
            assert!(child_kind(kind).is_some(), "{kind} built but not registered");
        }
        for kind in kinds_of(&children) {
            assert!(built.iter().any(|b| b == kind), "{kind} is not built by this test's app: add its field");
        }
        assert!(child_kind("ControllerRevision").is_some(), "the ledger's kind");
    }

    #[test]
    fn every_registered_kind_is_watched_by_the_controller_as_declared() {
        for k in CHILD_KINDS {
            let watched = crate::controller::watched().into_iter().find(|(kind, _)| *kind == k.kind).map(|(_, w)| w);
            match k.watch {
                Watch::ReadFresh => assert_eq!(watched, None, "{} is read fresh, not watched", k.kind),
                w => assert_eq!(watched, Some(w), "{} must be watched as {w:?}", k.kind),
            }
        }
    }

    /// (apiGroups, resources, verbs) of each rule in the chart's rules template.
    fn chart_rules() -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../charts/empacts-operator/templates/rbac.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text.find("define \"empacts-operator.rules\"").unwrap();
        let body = &text[start..text[start..].find("{{- end }}").unwrap() + start];
        let list = |line: &str| -> Vec<String> {
            let inner = line.split_once('[').and_then(|(_, r)| r.split_once(']')).map(|(l, _)| l).unwrap_or("");
            inner
                .split(',')
                .map(|s| s.trim().trim_matches('"').to_string())
                .filter(|s| !s.is_empty() || inner.contains("\"\""))
                .collect()
        };
        let mut rules = Vec::new();
        let mut current: (Vec<String>, Vec<String>) = (vec![], vec![]);
        for line in body.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("- apiGroups:") {
                current = (list(rest), vec![]);
            } else if let Some(rest) = line.strip_prefix("resources:") {
                current.1 = list(rest);
            } else if let Some(rest) = line.strip_prefix("verbs:") {
                rules.push((current.0.clone(), current.1.clone(), list(rest)));
            }
        }
        rules
    }

    #[test]
    fn the_chart_grants_every_registered_kind_its_verbs_and_no_more() {
        let rules = chart_rules();
        assert!(rules.len() >= 8, "parsed the chart's rules: {rules:?}");
        for k in CHILD_KINDS {
            let granted: Vec<&String> = rules
                .iter()
                .filter(|(g, r, _)| g.iter().any(|g| g == k.group) && r.iter().any(|r| r == k.resource))
                .flat_map(|(_, _, v)| v)
                .collect();
            for verb in k.verbs {
                assert!(granted.iter().any(|g| g == verb), "the chart does not grant {verb} on {}", k.resource);
            }
            for verb in &granted {
                assert!(
                    k.verbs.contains(&verb.as_str()),
                    "the chart grants {verb} on {} that the operator never uses",
                    k.resource
                );
            }
        }
    }
}
