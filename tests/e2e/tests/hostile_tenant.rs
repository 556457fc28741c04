//! A hostile tenant who may only create EmpactsApps in their namespace: every injection the
//! spec allows is refused by the real API server at admission (HTTP 422 naming the field), so
//! none reaches the operator, which keeps reconciling a valid app with flat memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use empacts_api::{EmpactsApp, Phase};
use empacts_e2e::*;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, CustomResourceExt, ResourceExt};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(90);

/// Attempts of the whole table; each round creates every hostile app under a fresh name, so
/// without admission rules the operator would cache (and reconcile) `ROUNDS` MiB-sized apps.
const ROUNDS: usize = 8;

/// Growth of the operator's RSS allowed while the attempts run. Refused requests never reach
/// the operator, so only allocator noise remains; eight accepted 1 MiB apps alone would exceed it.
const RSS_GROWTH_BOUND_KIB: u64 = 16 * 1024;

/// (what, spec, the field the 422 must name)
fn hostile_specs() -> Vec<(&'static str, Value, &'static str)> {
    let image = "registry.example.com/api:1.0.0";
    let secret_ref =
        |name: &str| json!({"image": image, "secrets": [{"env": "DB", "secretKeyRef": {"name": name, "key": "url"}}]});
    vec![
        // kube puts the name into the GET URL unencoded: this one would turn the GET into a watch.
        ("Secret name ?watch=true", secret_ref("?watch=true"), "spec.secrets[0].secretKeyRef.name"),
        ("Secret name ../x", secret_ref("../x"), "spec.secrets[0].secretKeyRef.name"),
        ("Secret name a/b", secret_ref("a/b"), "spec.secrets[0].secretKeyRef.name"),
        (
            "Secret key ..data",
            json!({"image": image, "secrets": [{"env": "DB", "secretKeyRef": {"name": "db", "key": "..data"}}]}),
            "spec.secrets[0].secretKeyRef.key",
        ),
        (
            "another app's selector labels",
            json!({"image": image, "podLabels": {"app.kubernetes.io/name": "victim", "app.kubernetes.io/instance": "victim"}}),
            "spec.podLabels",
        ),
        ("an invalid label key", json!({"image": image, "podLabels": {"bad key!": "x"}}), "spec.podLabels"),
        ("an invalid label value", json!({"image": image, "podLabels": {"tier": "a b"}}), "spec.podLabels.tier"),
        (
            "a spoofed config hash",
            json!({"image": image, "podAnnotations": {"empacts.io/config-hash": "0000"}}),
            "spec.podAnnotations",
        ),
        ("a 1 MiB env value", json!({"image": image, "env": {"BIG": "x".repeat(1 << 20)}}), "spec.env.BIG"),
        (
            "cpu: lots",
            json!({"image": image, "resources": {"requests": {"cpu": "lots"}}}),
            "spec.resources.requests.cpu",
        ),
        (
            "minAvailable 150%",
            json!({"image": image, "disruption": {"minAvailable": "150%"}}),
            "spec.disruption.minAvailable",
        ),
        (
            "maxSurge over 32 bits",
            json!({"image": image, "rollout": {"maxSurge": 99_999_999_999_i64}}),
            "spec.rollout.maxSurge",
        ),
        (
            "a probe path with a space",
            json!({"image": image, "probes": {"liveness": {"path": "/a b"}}}),
            "spec.probes.liveness.path",
        ),
    ]
}

/// Untyped, so a spec the Rust types cannot even hold (a 64-bit maxSurge) is sent as written.
fn app(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "empacts.io/v1alpha1",
        "kind": "EmpactsApp",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("an object with metadata")
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the operator process is alive");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("/proc/<pid>/status has VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_apps_are_refused_at_admission_and_the_operator_does_not_notice() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "hostile").await;
    let log = std::env::temp_dir().join(format!("empacts-e2e-{}-hostile.log", ns.name));
    let op = OperatorProcess::start_single(&env.kubeconfig, "hostile", &ns.name, &log);

    // A valid app with a Secret reference, the very GET the hostile names aim at.
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "db"}, "stringData": {"url": "postgres://x"}})).unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &secret).await.expect("Secret creates");
    let valid: EmpactsApp = serde_json::from_value(json!({
        "apiVersion": "empacts.io/v1alpha1", "kind": "EmpactsApp", "metadata": {"name": "api"},
        "spec": {"image": "registry.example.com/api:1.0.0", "secrets": [{"env": "DB", "secretKeyRef": {"name": "db", "key": "url"}}],
               "podLabels": {"tier": "web"}, "disruption": {"minAvailable": "50%"}, "resources": {"requests": {"cpu": "200m"}}}}))
    .unwrap();
    apply_app(&ns, &valid).await;
    wait_app(&ns, "api", "the valid app Ready", T, |a| phase(a) == Some(Phase::Ready) && observed_current(a)).await;
    wait_until("/healthz", T, || async { op.get("/healthz").await.filter(|(c, _)| *c == 200) }).await;
    let errors_before = op.metric_sum("empacts_reconcile_errors_total").await.unwrap_or(0.0);

    // The CRD is shared with other worktrees' tests, which install their own build of it: apply
    // this build's right before the attempts, so a refusal is this schema's.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = EmpactsApp::crd();
    crds.patch(&crd.name_any(), &PatchParams::apply("empacts-e2e").force(), &Patch::Apply(&crd))
        .await
        .expect("CRD applies");

    let pid = op.child.id();
    let mut baseline = 0;
    for _ in 0..10 {
        baseline = baseline.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let (peak, done) = (peak.clone(), done.clone());
        move || {
            let mut samples = 0;
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        }
    });

    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns.name, &ApiResource::erase::<EmpactsApp>(&()));
    for round in 0..ROUNDS {
        for (i, (what, spec, field)) in hostile_specs().into_iter().enumerate() {
            let name = format!("evil-{round}-{i}");
            match api.create(&PostParams::default(), &app(&name, spec)).await {
                Err(kube::Error::Api(status)) => {
                    assert_eq!(status.code, 422, "{what}: refused as invalid, got {status:?}");
                    assert!(status.message.contains(field), "{what}: the message names {field}: {}", status.message);
                }
                Ok(_) => panic!("{what}: the API server accepted it (is an older CRD installed by another test?)"),
                Err(e) => panic!("{what}: unexpected error {e}"),
            }
        }
    }

    done.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("the sampler ran");
    let peak = peak.load(Ordering::Relaxed);
    assert!(samples >= 10, "RSS was sampled throughout the attempts ({samples} samples)");
    assert!(
        peak <= baseline + RSS_GROWTH_BOUND_KIB,
        "operator RSS grew from {baseline} KiB to {peak} KiB during the attempts (bound {RSS_GROWTH_BOUND_KIB} KiB)"
    );
    assert_eq!(op.get("/healthz").await.map(|(c, _)| c), Some(200), "/healthz answers after the attempts");
    let errors_after = op.metric_sum("empacts_reconcile_errors_total").await.unwrap_or(0.0);
    assert_eq!(errors_after, errors_before, "no hostile app reached the reconciler");
    // The operator still reconciles: an object that broke its watch (e.g. a number its types
    // cannot hold) would leave this change unobserved.
    let mut changed = valid.clone();
    changed.spec.pod_labels = Some([("tier".to_string(), "api".to_string())].into());
    let generation = apply_app(&ns, &changed).await.metadata.generation;
    wait_app(&ns, "api", "the valid app's change reconciled after the attempts", T, |a| {
        observed_current(a) && a.metadata.generation == generation && phase(a) == Some(Phase::Ready)
    })
    .await;
    eprintln!("hostile tenant: RSS baseline {baseline} KiB, peak {peak} KiB over {samples} samples");

    drop(op);
    ns.cleanup().await;
}
