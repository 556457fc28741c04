//! Events say what happened: each one names its own Secret or revision, even when an earlier
//! Event had the same reason, and another message about the same subject is another Event
//! (only the same message again counts on the earlier one), against the real control plane
//! with the operator in-process. Also: the per-app metric series go when the controller stops.

use std::time::{Duration, Instant};

use empacts_api::Phase;
use empacts_e2e::*;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::runtime::events::EventType;

const T: Duration = Duration::from_secs(90);

fn app(image: &str) -> empacts_api::EmpactsApp {
    app_yaml(&format!(
        "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: api}}\nspec: {{image: '{image}', \
         secrets: [{{env: JWT_SECRET, generate: {{}}}}, {{env: SESSION_KEY, generate: {{}}}}, {{env: API_TOKEN, generate: {{}}}}]}}\n"
    ))
}

/// Wait until, for every wanted text, an Event of `reason` on the app has a note containing
/// it; fail naming the notes there are.
async fn wait_notes(ns: &TestNamespace, reason: &str, wanted: &[String]) {
    let deadline = Instant::now() + T;
    loop {
        let events = ns.api::<Event>().list(&ListParams::default().fields("regarding.name=api")).await.unwrap();
        let notes: Vec<String> = events
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.note.clone())
            .collect();
        let missing: Vec<&String> = wanted.iter().filter(|w| !notes.iter().any(|n| n.contains(w.as_str()))).collect();
        if missing.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "no {reason} Event names {missing:?}; the {reason} notes are {notes:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_names_its_own_secret_and_revision() {
    let (_env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "events").await;
    let op = Operator::start(&client, &ns.name).await;

    apply_app(&ns, &app("registry.example.com/api:1.0.0")).await;
    let mut revisions = Vec::new();
    let v1 = wait_app(&ns, "api", "v1 Ready", T, |a| phase(a) == Some(Phase::Ready) && observed_current(a)).await;
    revisions.push(v1.status.unwrap().current_revision.expect("a current revision"));
    let secrets: Vec<String> = ["JWT_SECRET", "SESSION_KEY", "API_TOKEN"]
        .iter()
        .map(|env| empacts_operator::names::generated_secret("api", env))
        .collect();
    wait_notes(&ns, "SecretGenerated", &secrets).await;

    // Two upgrades: each Available Event names the revision that became available.
    for image in ["registry.example.com/api:2.0.0", "registry.example.com/api:3.0.0"] {
        apply_app(&ns, &app(image)).await;
        let previous = revisions.last().unwrap().clone();
        let upgraded = wait_app(&ns, "api", image, T, |a| {
            phase(a) == Some(Phase::Ready)
                && observed_current(a)
                && a.status.as_ref().and_then(|s| s.current_revision.as_ref()) != Some(&previous)
        })
        .await;
        revisions.push(upgraded.status.unwrap().current_revision.unwrap());
    }
    let wanted: Vec<String> = revisions.iter().map(|r| format!("revision {r} is available")).collect();
    wait_notes(&ns, empacts_api::conditions::reasons::AVAILABLE, &wanted).await;

    // Another message about the same subject and reason is its own Event; the same message
    // again only counts (series) on the Event that has it.
    let current = ns.api::<empacts_api::EmpactsApp>().get("api").await.unwrap();
    let subject = empacts_operator::events::Subject::Revision(revisions.last().unwrap());
    for note in ["probe says one", "probe says two", "probe says two"] {
        empacts_operator::events::publish(&op.ctx, &current, subject, EventType::Warning, "E2eProbe", "Probe", note)
            .await;
    }
    let events = ns.api::<Event>().list(&ListParams::default().fields("regarding.name=api")).await.unwrap();
    let mut probes: Vec<(String, i32)> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("E2eProbe"))
        .map(|e| (e.note.clone().unwrap_or_default(), e.series.as_ref().map_or(1, |s| s.count)))
        .collect();
    probes.sort();
    assert_eq!(probes, [("probe says one".to_string(), 1), ("probe says two".to_string(), 2)], "E2eProbe Events");

    // The per-app series are the running controller's: they go when it stops (as on a lost Lease).
    let metrics = op.metrics.clone();
    let series = format!("empacts_app_ready{{app=\"api\",namespace=\"{}\"}} 1", ns.name);
    assert!(metrics.render().contains(&series), "{}", metrics.render());
    op.stop().await;
    let left: Vec<String> = metrics.render().lines().filter(|l| l.contains("app=\"api\"")).map(String::from).collect();
    assert!(left.is_empty(), "per-app series stayed after the controller stopped: {left:?}");
    ns.cleanup().await;
}
