//! End-to-end: the Ingress and the NetworkPolicy of an app on the real control plane. They follow
//! the spec (created, updated, removed), a hand edit is taken back, and an object of the app's
//! name that the app does not control is never written, taken over or deleted. The control
//! plane runs no ingress controller and no network plugin: what is checked is the objects.

use std::collections::BTreeMap;
use std::time::Duration;

use empacts_api::{EmpactsApp, Phase};
use empacts_e2e::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};

const T: Duration = Duration::from_secs(90);
const IMAGE: &str = "registry.example.com/api:1.0.0";

fn app(name: &str, spec: &str) -> EmpactsApp {
    app_yaml(&format!("apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: {name}}}\nspec: {spec}\n"))
}

async fn ready(ns: &TestNamespace, name: &str) -> EmpactsApp {
    wait_app(ns, name, "Ready", T, is_ready).await
}

/// Force a reconcile (a Stalled app is otherwise looked at again only at resync).
async fn touch(ns: &TestNamespace, name: &str, value: &str) {
    let patch = serde_json::json!({"metadata": {"annotations": {"e2e/touch": value}}});
    ns.api::<EmpactsApp>().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

/// Wait for `pred`, touching the app every 2 s: the deletion of an object the app does not own
/// triggers no reconcile of it, and one touch could be reconciled before the cache saw the deletion.
async fn wait_touching(ns: &TestNamespace, name: &str, what: &str, pred: impl Fn(&EmpactsApp) -> bool) -> EmpactsApp {
    let start = std::time::Instant::now();
    for i in 0.. {
        touch(ns, name, &format!("wait-{i}")).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut last = None;
        while std::time::Instant::now() < deadline {
            let app = ns.api::<EmpactsApp>().get(name).await.unwrap();
            if pred(&app) {
                return app;
            }
            last = app.status;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let status = || serde_yaml::to_string(&last).unwrap();
        assert!(start.elapsed() < T, "timed out after {T:?} waiting for {what}; last status:\n{}", status());
    }
    unreachable!()
}

fn name_taken(app: &EmpactsApp, kind: &str) -> bool {
    observed_current(app)
        && condition(app, "Stalled").is_some_and(|c| {
            c.status == "True" && c.reason == "NameTaken" && c.message.starts_with(&format!("{kind} "))
        })
}

fn is_ready(app: &EmpactsApp) -> bool {
    phase(app) == Some(Phase::Ready)
        && observed_current(app)
        && condition(app, "Ready").is_some_and(|c| c.status == "True")
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn controlled_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.uid == uid && o.controller == Some(true) && o.kind == "EmpactsApp")
}

/// Host, path, pathType, backend Service and port number, TLS hosts and Secret of the (only) rule.
type Route = (String, String, String, String, i32, Vec<String>, String);

fn route(ingress: &Ingress) -> Route {
    let spec = ingress.spec.as_ref().unwrap();
    let rules = spec.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 1, "one rule: {rules:?}");
    let paths = &rules[0].http.as_ref().unwrap().paths;
    assert_eq!(paths.len(), 1, "one path: {paths:?}");
    let service = paths[0].backend.service.as_ref().unwrap();
    let tls = spec.tls.as_ref().unwrap();
    assert_eq!(tls.len(), 1, "one TLS entry: {tls:?}");
    (
        rules[0].host.clone().unwrap(),
        paths[0].path.clone().unwrap(),
        paths[0].path_type.clone(),
        service.name.clone(),
        service.port.as_ref().unwrap().number.unwrap(),
        tls[0].hosts.clone().unwrap(),
        tls[0].secret_name.clone().unwrap(),
    )
}

/// (namespaceSelector, podSelector) match labels of a peer.
type Peer = (Option<BTreeMap<String, String>>, Option<BTreeMap<String, String>>);

/// The peers of the (only) rule, and its ports.
type Peers = Vec<Peer>;

fn rule(policy: &NetworkPolicy) -> (Peers, Vec<(IntOrString, String)>) {
    let rules = policy.spec.as_ref().unwrap().ingress.clone().unwrap_or_default();
    assert_eq!(rules.len(), 1, "one ingress rule: {rules:?}");
    let labels = |s: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>| {
        s.as_ref().map(|s| s.match_labels.clone().unwrap_or_default())
    };
    let peers =
        rules[0].from.iter().flatten().map(|p| (labels(&p.namespace_selector), labels(&p.pod_selector))).collect();
    let ports = rules[0]
        .ports
        .iter()
        .flatten()
        .map(|p| (p.port.clone().unwrap(), p.protocol.clone().unwrap_or_default()))
        .collect();
    (peers, ports)
}

fn controller_peer() -> Peer {
    (Some(map(&[("kubernetes.io/metadata.name", "ingress-nginx")])), None)
}

const SPEC: &str = "{image: 'registry.example.com/api:1.0.0', replicas: 2, port: 3000, migration: {command: [migrate]}, \
    ingress: {host: api.example.com, className: nginx, tls: {issuer: letsencrypt}, \
              annotations: {nginx.ingress.kubernetes.io/limit-rps: '20'}}, \
    networkPolicy: {allowFrom: [{namespaceSelector: {team: web}}]}}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_and_network_policy_follow_the_spec_and_hand_edits_are_reverted() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "net").await;
    let op = Operator::start(&client, &ns.name).await;
    apply_app(&ns, &app("api", SPEC)).await;
    let app_now = ready(&ns, "api").await;
    let uid = app_now.uid().unwrap();
    let ingresses: Api<Ingress> = ns.api();
    let policies: Api<NetworkPolicy> = ns.api();

    // The Ingress: the host and path to the Service's port, TLS from cert-manager's cluster issuer.
    let ingress = ingresses.get("api").await.expect("the app's Ingress");
    assert!(controlled_by(&ingress.metadata, &uid), "controlled by the app: {:?}", ingress.metadata.owner_references);
    assert_eq!(ingress.labels()["app.kubernetes.io/instance"], "api");
    assert_eq!(ingress.spec.as_ref().unwrap().ingress_class_name.as_deref(), Some("nginx"));
    assert_eq!(
        route(&ingress),
        (
            "api.example.com".into(),
            "/".into(),
            "Prefix".into(),
            "api".into(),
            80,
            vec!["api.example.com".into()],
            "api-tls".into()
        )
    );
    let annotations = ingress.annotations();
    assert_eq!(annotations.get("cert-manager.io/cluster-issuer").map(String::as_str), Some("letsencrypt"));
    assert_eq!(annotations.get("nginx.ingress.kubernetes.io/limit-rps").map(String::as_str), Some("20"));

    // The policy: default-deny ingress to the Service's pods, except the controller and the peer, on the app port.
    let policy = policies.get("api").await.expect("the app's NetworkPolicy");
    assert!(controlled_by(&policy.metadata, &uid));
    let spec = policy.spec.as_ref().unwrap();
    assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]), "ingress only");
    let selector = spec.pod_selector.as_ref().unwrap().match_labels.clone().unwrap();
    let svc = ns.api::<k8s_openapi::api::core::v1::Service>().get("api").await.unwrap();
    assert_eq!(Some(&selector), svc.spec.as_ref().unwrap().selector.as_ref(), "the pods the Service selects");
    let http = (IntOrString::String("http".into()), "TCP".to_string());
    assert_eq!(rule(&policy), (vec![controller_peer(), (Some(map(&[("team", "web")])), None)], vec![http.clone()]));
    // It selects the app's pods, whose port `http` is 3000, and not the migration Job's pod.
    let label_selector = selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let selected = ns.api::<Pod>().list(&ListParams::default().labels(&label_selector)).await.unwrap().items;
    assert_eq!(selected.len(), 2, "the 2 app pods");
    for pod in &selected {
        let port = &pod.spec.as_ref().unwrap().containers[0].ports.as_ref().unwrap()[0];
        assert_eq!((port.name.as_deref(), port.container_port), (Some("http"), 3000));
    }
    let jobs = ns.api::<Job>().list(&ListParams::default()).await.unwrap().items;
    assert_eq!(jobs.len(), 1, "the migration Job ran");
    let job_pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!("job-name={}", jobs[0].name_any())))
        .await
        .unwrap()
        .items;
    assert!(!job_pods.is_empty(), "the migration Job has its pod");
    assert!(job_pods.iter().all(|p| !selected.iter().any(|s| s.name_any() == p.name_any())), "Job pods not selected");

    // Settled: reconciles of the unchanged app send no apply of either.
    let applied = |kind: &str| op.metrics.child_applies.with_label_values(&[kind, "applied"]).get();
    let skipped = |kind: &str| op.metrics.child_applies.with_label_values(&[kind, "skipped"]).get();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ing_applied, np_applied, ing_skipped) = (applied("Ingress"), applied("NetworkPolicy"), skipped("Ingress"));
    let versions =
        (ingresses.get("api").await.unwrap().resource_version(), policies.get("api").await.unwrap().resource_version());
    for i in 0..2 {
        touch(&ns, "api", &i.to_string()).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!((applied("Ingress"), applied("NetworkPolicy")), (ing_applied, np_applied), "no apply sent");
    assert!(skipped("Ingress") >= ing_skipped + 2, "each reconcile skipped the Ingress apply");
    assert_eq!(
        (ingresses.get("api").await.unwrap().resource_version(), policies.get("api").await.unwrap().resource_version()),
        versions,
        "neither was written"
    );

    // A new host and other callers: both follow.
    let spec2 = SPEC.replace("host: api.example.com", "host: api2.example.com").replace(
        "{namespaceSelector: {team: web}}",
        "{podSelector: {role: frontend}}, {namespaceSelector: {team: ops}, podSelector: {role: admin}}",
    );
    apply_app(&ns, &app("api", &spec2)).await;
    wait_until("the Ingress serves the new host", T, || async {
        let ingress = ingresses.get("api").await.ok()?;
        let r = route(&ingress);
        (r.0 == "api2.example.com" && r.5 == vec!["api2.example.com".to_string()]).then_some(())
    })
    .await;
    let expected_peers = vec![
        controller_peer(),
        (None, Some(map(&[("role", "frontend")]))),
        (Some(map(&[("team", "ops")])), Some(map(&[("role", "admin")]))),
    ];
    wait_until("the policy admits the new callers", T, || async {
        let policy = policies.get("api").await.ok()?;
        (rule(&policy) == (expected_peers.clone(), vec![http.clone()])).then_some(())
    })
    .await;

    // Hand edits are taken back: a host pointed elsewhere, a policy opened to every namespace.
    let mut edited = ingresses.get("api").await.unwrap();
    edited.spec.as_mut().unwrap().rules.as_mut().unwrap()[0].host = Some("evil.example.com".into());
    let hand = PostParams { field_manager: Some("someone".into()), ..Default::default() };
    ingresses.replace("api", &hand, &edited).await.unwrap();
    let open = serde_json::json!({"spec": {"ingress": [{"from": [{"namespaceSelector": {}}]}]}});
    policies
        .patch(
            "api",
            &PatchParams { field_manager: Some("someone".into()), ..Default::default() },
            &Patch::Merge(&open),
        )
        .await
        .unwrap();
    wait_until("the Ingress host restored", T, || async {
        (route(&ingresses.get("api").await.ok()?).0 == "api2.example.com").then_some(())
    })
    .await;
    wait_until("the policy closed again", T, || async {
        (rule(&policies.get("api").await.ok()?) == (expected_peers.clone(), vec![http.clone()])).then_some(())
    })
    .await;

    // No spec.ingress: the Ingress goes, the policy stays.
    let no_ingress = spec2.replace(
        "ingress: {host: api2.example.com, className: nginx, tls: {issuer: letsencrypt}, \
              annotations: {nginx.ingress.kubernetes.io/limit-rps: '20'}}, ",
        "",
    );
    assert!(!no_ingress.contains("ingress:"), "{no_ingress}");
    apply_app(&ns, &app("api", &no_ingress)).await;
    wait_until("the Ingress removed", T, || async { ingresses.get_opt("api").await.ok()?.is_none().then_some(()) })
        .await;
    assert!(policies.get_opt("api").await.unwrap().is_some(), "the policy stays");

    // networkPolicy.enabled false: the policy goes.
    let disabled = no_ingress.replace("networkPolicy: {", "networkPolicy: {enabled: false, ");
    apply_app(&ns, &app("api", &disabled)).await;
    wait_until("the NetworkPolicy removed", T, || async {
        policies.get_opt("api").await.ok()?.is_none().then_some(())
    })
    .await;
    let after = ready(&ns, "api").await;
    assert_eq!(condition(&after, "Stalled").unwrap().status, "False");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        ingresses.get_opt("api").await.unwrap().is_none() && policies.get_opt("api").await.unwrap().is_none(),
        "not re-created"
    );

    op.stop().await;
    ns.cleanup().await;
}

/// An Ingress and a NetworkPolicy of the app's name that the app does not control (one
/// controlled by another object, one left without owner, e.g. by an orphaning delete, both
/// carrying the operator's labels so they sit in its caches) are never written or deleted:
/// unwanted, they are left alone; wanted, the app stalls with NameTaken, as for a Service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingress_or_policy_the_app_does_not_control_is_never_taken_over_or_deleted() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "net-foreign").await;
    let owner: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "other-owner"}})).unwrap();
    let owner = ns.api::<ConfigMap>().create(&PostParams::default(), &owner).await.unwrap();
    let ours = serde_json::json!({"app.kubernetes.io/managed-by": "empacts-operator", "app.kubernetes.io/instance": "api", "app.kubernetes.io/name": "api"});
    let ingress: Ingress = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "api", "labels": ours,
                     "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "other-owner",
                                          "uid": owner.uid().unwrap(), "controller": true}]},
        "spec": {"rules": [{"host": "other.example.com", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": "other", "port": {"number": 1234}}}}]}}]}
    }))
    .unwrap();
    let ingresses: Api<Ingress> = ns.api();
    let ingress = ingresses.create(&PostParams::default(), &ingress).await.unwrap();
    let policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "api", "labels": ours},
        "spec": {"podSelector": {"matchLabels": {"someone": "else"}}, "policyTypes": ["Ingress"]}
    }))
    .unwrap();
    let policies: Api<NetworkPolicy> = ns.api();
    let policy = policies.create(&PostParams::default(), &policy).await.unwrap();
    let untouched = || async {
        let i = ingresses.get("api").await.unwrap();
        let p = policies.get("api").await.unwrap();
        assert_eq!(i.resource_version(), ingress.resource_version(), "the foreign Ingress was written");
        assert_eq!(p.resource_version(), policy.resource_version(), "the foreign NetworkPolicy was written");
        assert_eq!(i.owner_references().len(), 1, "still controlled by its owner only");
        assert!(p.owner_references().is_empty(), "still without owner");
    };

    // Not asked for: left alone (not deleted as unwanted), and the app is Ready.
    let op = Operator::start(&client, &ns.name).await;
    let unwanted = format!("{{image: '{IMAGE}', networkPolicy: {{enabled: false}}}}");
    apply_app(&ns, &app("api", &unwanted)).await;
    ready(&ns, "api").await;
    for i in 0..3 {
        touch(&ns, "api", &i.to_string()).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        untouched().await;
    }

    // Asked for: Stalled, NameTaken, naming the Ingress; neither object changes.
    // `enabled: true`, not `{}`: server-side apply stores `networkPolicy: {}` after `{enabled: false}`
    // as null (it removes the map whose only field this manager dropped), which means no policy.
    let wanted = format!("{{image: '{IMAGE}', ingress: {{host: api.example.com}}, networkPolicy: {{enabled: true}}}}");
    apply_app(&ns, &app("api", &wanted)).await;
    wait_app(&ns, "api", "NameTaken naming the Ingress", T, |a| name_taken(a, "Ingress")).await;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        untouched().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The foreign Ingress gone, the policy is the one in the way; then the app takes over the names.
    ingresses.delete("api", &DeleteParams::default()).await.unwrap();
    wait_touching(&ns, "api", "NameTaken naming the NetworkPolicy", |a| name_taken(a, "NetworkPolicy")).await;
    assert_eq!(policies.get("api").await.unwrap().resource_version(), policy.resource_version());
    assert!(ingresses.get_opt("api").await.unwrap().is_none(), "a stalled app writes nothing");
    policies.delete("api", &DeleteParams::default()).await.unwrap();
    let app_now = wait_touching(&ns, "api", "Ready", is_ready).await;
    let uid = app_now.uid().unwrap();
    let (i, p) = (ingresses.get("api").await.unwrap(), policies.get("api").await.unwrap());
    assert!(controlled_by(&i.metadata, &uid) && controlled_by(&p.metadata, &uid), "now the app's own");
    assert_eq!(route_host(&i), "api.example.com");
    op.stop().await;
    ns.cleanup().await;
}

fn route_host(ingress: &Ingress) -> String {
    ingress.spec.as_ref().unwrap().rules.as_ref().unwrap()[0].host.clone().unwrap()
}
