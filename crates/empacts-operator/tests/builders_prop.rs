//! Property tests: any valid spec gives children without panicking, and the same children twice.

use std::collections::BTreeMap;

use empacts_api::*;
use empacts_operator::{build, secret_value::SecretValue, validate};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proptest::prelude::*;

fn env_name() -> impl Strategy<Value = String> {
    "[A-Z_][A-Z0-9_]{0,20}"
}

fn image() -> impl Strategy<Value = String> {
    ("(registry\\.example\\.com(:5000)?/)?[a-z0-9]{1,8}(/[a-z0-9]{1,8})?", "[a-z0-9][a-z0-9.-]{0,10}")
        .prop_map(|(repo, tag)| format!("{repo}:{tag}"))
}

fn int_or_percent() -> impl Strategy<Value = IntOrString> {
    prop_oneof![(1..5i32).prop_map(IntOrString::Int), (1..100i32).prop_map(|p| IntOrString::String(format!("{p}%")))]
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map("[a-z]{1,6}(\\.io/[a-z]{1,4})?", "[a-z0-9]{0,6}", 0..3)
}

fn ingress() -> impl Strategy<Value = IngressSpec> {
    (
        "[a-z][a-z0-9]{0,8}\\.example\\.com",
        proptest::option::of("/[a-z/]{0,8}"),
        proptest::option::of("[a-z]{1,8}"),
        proptest::option::of((proptest::option::of("[a-z]{1,8}"), proptest::option::of("[a-z]{1,8}"), any::<bool>())),
    )
        .prop_map(|(host, path, class_name, tls)| IngressSpec {
            host,
            path,
            class_name,
            tls: tls.map(|(secret, issuer, namespaced)| IngressTls {
                issuer_kind: namespaced.then_some(IssuerKind::Issuer),
                // One of the two at least (admission).
                secret_name: if issuer.is_none() { Some(secret.unwrap_or_else(|| "cert".into())) } else { secret },
                issuer,
            }),
            annotations: None,
        })
}

fn network_policy() -> impl Strategy<Value = NetworkPolicySpec> {
    (
        proptest::option::of(any::<bool>()),
        proptest::option::of("([a-z][a-z0-9-]{0,8}[a-z0-9])?"),
        proptest::option::of(proptest::collection::vec(
            (proptest::option::of(labels()), proptest::option::of(labels())),
            0..3,
        )),
        proptest::option::of(proptest::collection::vec(1..65535i32, 0..3)),
    )
        .prop_map(|(enabled, controller, peers, allow_ports)| NetworkPolicySpec {
            enabled,
            ingress_controller_namespace: controller,
            allow_from: peers.map(|peers| {
                peers
                    .into_iter()
                    .map(|(namespace_selector, pod_selector)| NetworkPeer {
                        // One of the two at least (admission).
                        pod_selector: pod_selector.or_else(|| namespace_selector.is_none().then(BTreeMap::new)),
                        namespace_selector,
                    })
                    .collect()
            }),
            allow_ports,
        })
}

prop_compose! {
    fn spec()(
        image in image(),
        replicas in proptest::option::of(0..20i32),
        port in proptest::option::of(1..65535i32),
        env in proptest::collection::btree_map(env_name(), "[ -~]{0,20}", 0..5),
        secret_names in proptest::collection::btree_set(env_name(), 0..4),
        generate_mask in any::<u8>(),
        probe_path in proptest::option::of("/[a-z/]{0,10}"),
        scaling in proptest::option::of((1..5i32, 0..10i32, proptest::option::of(1..100i32), 1..100i32)),
        pdb in proptest::option::of(int_or_percent()),
        migration in proptest::option::of((proptest::collection::vec("[a-z:]{1,8}", 1..4), any::<bool>())),
        surge in proptest::option::of(int_or_percent()),
        paused in proptest::option::of(any::<bool>()),
        networking in (proptest::option::of(ingress()), proptest::option::of(network_policy())),
    ) -> EmpactsAppSpec {
        let secrets: Vec<SecretEnv> = secret_names
            .into_iter()
            .filter(|n| !env.contains_key(n))
            .enumerate()
            .map(|(i, env)| if generate_mask & (1 << (i % 8)) != 0 {
                SecretEnv { env, generate: Some(GenerateSecret::default()), secret_key_ref: None }
            } else {
                SecretEnv { env, generate: None, secret_key_ref: Some(SecretKeyRef { name: "db".into(), key: "url".into() }) }
            })
            .collect();
        let autoscaling = scaling.map(|(min, extra, cpu, mem)| Autoscaling {
            min_replicas: Some(min),
            max_replicas: min + extra,
            target_cpu: cpu,
            target_memory: Some(mem),
        });
        EmpactsAppSpec {
            image,
            replicas: replicas.map(|r| autoscaling.as_ref().map_or(r, |a| r.min(a.max_replicas))),
            port,
            command: None,
            args: None,
            env: Some(env),
            // Generated names must not clash after lowercasing; keep the first of any clash.
            secrets: Some(dedupe_generated(secrets)),
            resources: None,
            probes: probe_path.map(|path| Probes {
                liveness: Some(HttpProbe { path: path.clone(), port: None, initial_delay_seconds: None, period_seconds: None, timeout_seconds: None, failure_threshold: None }),
                readiness: None,
                startup: None,
            }).map(Box::new),
            service: None,
            autoscaling: autoscaling.map(Box::new),
            disruption: pdb.map(|p| Box::new(Disruption { min_available: Some(p), max_unavailable: None })),
            migration: migration.map(|(command, with_down)| Migration {
                rollback_command: with_down.then(|| vec!["down".to_string()]),
                command,
                timeout_seconds: None,
                backoff_limit: None,
            }).map(Box::new),
            rollout: Some(Box::new(RolloutPolicy { max_surge: surge, ..Default::default() })),
            pod_labels: None,
            pod_annotations: Some(BTreeMap::new()),
            paused,
            analysis: None,
            ingress: networking.0.map(Box::new),
            network_policy: networking.1.map(Box::new),
            monitoring: None,
        }
    }
}

fn dedupe_generated(secrets: Vec<SecretEnv>) -> Vec<SecretEnv> {
    let mut seen = std::collections::BTreeSet::new();
    secrets
        .into_iter()
        .filter(|s| s.generate.is_none() || seen.insert(empacts_operator::names::generated_secret("app", &s.env)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_valid_spec_builds_deterministically(spec in spec()) {
        let mut app = EmpactsApp::new("app", spec);
        app.metadata.namespace = Some("ns".into());
        app.metadata.uid = Some("uid-1".into());
        let valid = validate::validate(&app).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let value = |_: &SecretEnv| Some(SecretValue::from_bytes(b"x".to_vec()));
        let first = build::build_all(&valid, Some("h"), None, value);
        let second = build::build_all(&valid, Some("h"), None, value);
        prop_assert_eq!(&first, &second);
        let d = first.deployment.spec.as_ref().unwrap();
        // The selector must always match the pod template, or the API server refuses the Deployment.
        let template_labels = d.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        for (k, v) in d.selector.match_labels.as_ref().unwrap() {
            prop_assert_eq!(template_labels.get(k), Some(v));
        }
        prop_assert_eq!(first.hpa.is_some(), valid.spec.autoscaling.is_some());
        prop_assert_eq!(first.migration_job.is_some(), valid.spec.migration.is_some());
        prop_assert_eq!(first.ingress.is_some(), valid.spec.ingress.is_some());
        let policy_on = valid.spec.network_policy.as_ref().is_some_and(|n| n.enabled());
        prop_assert_eq!(first.network_policy.is_some(), policy_on);
        if let Some(policy) = &first.network_policy {
            // A rule without `from` admits every source: every rule names its callers.
            for rule in policy.spec.as_ref().unwrap().ingress.iter().flatten() {
                prop_assert!(rule.from.as_ref().is_some_and(|f| !f.is_empty()), "{:?}", rule);
            }
        }
        for m in first.to_manifests() {
            let name = m["metadata"]["name"].as_str().unwrap();
            prop_assert!(name.len() <= 253, "{}", name);
        }
    }
}
