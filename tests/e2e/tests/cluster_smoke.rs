//! The control plane the tests run against is real: the Deployment, ReplicaSet and Job
//! controllers, the scheduler and kwok's fake kubelet all do their part.

use std::time::Duration;

use empacts_e2e::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_get_ready_pods_and_jobs_complete_or_fail() {
    let (env, client) = cluster().await;
    let version = client.apiserver_version().await.expect("the API server answers");
    assert_eq!(format!("{}.{}", version.major, version.minor), "1.34");
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await.unwrap();
    assert!(!nodes.items.is_empty(), "kwok registered fake nodes");

    let ns = TestNamespace::new(&client, "smoke").await;
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "registry.example.com/web:1"}]}}}
    }))
    .unwrap();
    ns.api::<Deployment>().create(&PostParams::default(), &deployment).await.unwrap();
    wait_until("2 ready pods", T, || async {
        let d = ns.api::<Deployment>().get("web").await.ok()?;
        (d.status?.ready_replicas? == 2).then_some(())
    })
    .await;
    let pods = ns.api::<Pod>().list(&ListParams::default().labels("app=web")).await.unwrap();
    assert!(pods.items.iter().all(|p| p.spec.as_ref().unwrap().node_name.is_some()), "the scheduler bound the pods");

    for (name, image, want) in [
        ("ok", "registry.example.com/job:1", "Complete"),
        ("bad", "registry.example.com/job:1-fail-migration", "Failed"),
    ] {
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
                     "containers": [{"name": "job", "image": image}]}}}
        }))
        .unwrap();
        ns.api::<Job>().create(&PostParams::default(), &job).await.unwrap();
        wait_until(&format!("Job {name} {want}"), T, || async {
            let j = ns.api::<Job>().get(name).await.ok()?;
            j.status?.conditions?.iter().any(|c| c.type_ == want && c.status == "True").then_some(())
        })
        .await;
    }

    // helm works against the chart sources of this repo.
    let out = env.tool("helm").args(["version", "--short"]).output().expect("helm runs");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("v3."));
    ns.cleanup().await;
}
