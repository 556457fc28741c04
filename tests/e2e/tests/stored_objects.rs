//! Apps stored before the current CRD's checks (under a looser CRD of an earlier version): the
//! operator does not trust stored objects. It reads apps one by one, so an app it cannot read is
//! reported (a Warning Event on it) and skipped, and every other app of the namespace is still
//! reconciled: one tenant's old object cannot stop the operator for everyone.

use std::time::Duration;

use empacts_api::{EmpactsApp, Phase};
use empacts_e2e::*;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSONSchemaProps};
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, CustomResourceExt, ResourceExt};

const T: Duration = Duration::from_secs(90);

/// Puts the real CRD back, also when the test fails (other test binaries run after this one).
struct RestoreCrd(ClusterEnv);

impl RestoreCrd {
    fn restore(&self) {
        let crd = repo_root().join("deploy/crds/empactsapps.empacts.io.yaml");
        let out = self
            .0
            .tool("kubectl")
            .args(["apply", "--server-side", "--force-conflicts", "--field-manager=empacts-e2e", "-f"])
            .arg(crd)
            .output()
            .expect("kubectl runs");
        assert!(out.status.success(), "restoring the CRD failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for RestoreCrd {
    fn drop(&mut self) {
        self.restore();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_stored_under_a_looser_crd_is_reported_and_skipped_and_the_others_reconcile() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "stored").await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let guard = RestoreCrd(env.clone());

    // An earlier, looser CRD: any spec is stored.
    let mut loose = EmpactsApp::crd();
    let schema = loose.spec.versions[0].schema.as_mut().unwrap().open_api_v3_schema.as_mut().unwrap();
    schema.properties.as_mut().unwrap().insert(
        "spec".into(),
        JSONSchemaProps {
            type_: Some("object".into()),
            x_kubernetes_preserve_unknown_fields: Some(true),
            ..Default::default()
        },
    );
    crds.patch(&loose.name_any(), &PatchParams::apply("empacts-e2e").force(), &Patch::Apply(&loose)).await.unwrap();
    let untyped: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns.name, &ApiResource::erase::<EmpactsApp>(&()));
    let bad: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "empacts.io/v1alpha1", "kind": "EmpactsApp", "metadata": {"name": "old"},
        "spec": {"image": "registry.example.com/api:1.0.0", "replicas": "many"}
    }))
    .unwrap();
    // The looser schema takes effect a moment after the CRD update.
    wait_until("the looser CRD stores the old app", T, || async {
        untyped.create(&PostParams::default(), &bad).await.ok()
    })
    .await;
    guard.restore();
    drop(guard);
    // Back to the real CRD: the stored object stays as it was.
    let good = app_yaml(
        "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {name: api}\nspec: {image: 'registry.example.com/api:1.0.0'}\n",
    );
    wait_until("the real CRD is back", T, || async {
        let refused = untyped.create(&PostParams { dry_run: true, ..Default::default() }, &bad).await.is_err();
        refused.then_some(())
    })
    .await;
    apply_app(&ns, &good).await;

    let op = Operator::start(&client, &ns.name).await;
    wait_app(&ns, "api", "the readable app reconciles", T, |a| phase(a) == Some(Phase::Ready) && observed_current(a))
        .await;
    let note = wait_until("an UnreadableSpec Event on the old app", T, || async {
        let lp = ListParams::default().fields("involvedObject.name=old");
        let events: Vec<Event> = ns.api::<Event>().list(&lp).await.ok()?.items;
        events.into_iter().find(|e| e.reason.as_deref() == Some("UnreadableSpec"))?.message
    })
    .await;
    assert!(note.contains("replicas") || note.contains("invalid type"), "the Event says what is wrong: {note}");
    assert!(op.ctx.readiness.watches.not_ready().is_empty(), "{:?}", op.ctx.readiness.watches.not_ready());
    op.stop().await;
    ns.cleanup().await;
}
