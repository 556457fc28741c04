//! Leader election without split brain, against the real control plane: each `empacts run`
//! replica talks to the API server through its own fault proxy, whose request log (with arrival
//! instants on this process's monotonic clock) shows who wrote what when.

use std::time::{Duration, Instant};

use empacts_api::{EmpactsApp, Phase};
use empacts_e2e::fault_proxy::{Action, FaultProxy, FaultRule, Match, RequestRecord};
use empacts_e2e::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{Patch, PatchParams};

const T: Duration = Duration::from_secs(90);
const LEASE: &str = "empacts";

fn tmp(ns: &TestNamespace, name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("empacts-e2e-{}-{name}", ns.name))
}

async fn holder(ns: &TestNamespace) -> Option<String> {
    ns.api::<Lease>().get_opt(LEASE).await.ok()??.spec?.holder_identity.filter(|h| !h.is_empty())
}

fn lease_path(ns: &TestNamespace) -> String {
    format!("/apis/coordination.k8s.io/v1/namespaces/{}/leases/{LEASE}", ns.name)
}

/// A write of our Lease: create (POST to the collection), replace or patch.
fn lease_write(r: &RequestRecord, lease_path: &str) -> bool {
    let collection = lease_path.rsplit_once('/').map_or("", |(c, _)| c);
    (matches!(r.method.as_str(), "PUT" | "PATCH") && r.path_only() == lease_path)
        || (r.method == "POST" && r.path_only() == collection)
}

fn succeeded(r: &RequestRecord) -> bool {
    r.status.is_some_and(|s| (200..300).contains(&s))
}

/// Any write that is not the Lease: children, status, Events.
fn other_write(r: &RequestRecord, lease_path: &str) -> bool {
    r.mutating && !lease_write(r, lease_path)
}

fn app(tag: &str) -> EmpactsApp {
    app_yaml(&format!(
        "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: api}}\nspec: {{image: 'registry.example.com/api:{tag}'}}\n"
    ))
}

/// Keep the leader busy: a new image every second, so every reconcile writes.
fn keep_changing(ns: &TestNamespace) -> tokio::task::JoinHandle<()> {
    let api: Api<EmpactsApp> = ns.api();
    tokio::spawn(async move {
        for i in 1.. {
            let patch = serde_json::json!({"spec": {"image": format!("registry.example.com/api:2.0.{i}")}});
            let _ = api.patch("api", &PatchParams::default(), &Patch::Merge(&patch)).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

async fn exit_status(op: &mut OperatorProcess, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = op.child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < within, "{} did not exit within {within:?}", op.name);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_renewals_hang_stops_writing_before_the_standby_takes_over() {
    split_brain_is_prevented(Action::Hang, "split-hang").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_renewals_fail_stops_writing_before_the_standby_takes_over() {
    split_brain_is_prevented(Action::status(503), "split-503").await;
}

/// Two replicas, each behind its own proxy; once replica-a leads and writes, its proxy answers
/// its Lease renewals with `fault` (everything else still works). Asserted from the proxy logs.
async fn split_brain_is_prevented(fault: Action, prefix: &str) {
    const DURATION: Duration = Duration::from_secs(6);
    const GRACE: Duration = Duration::from_secs(2);
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, prefix).await;
    let lease_path = lease_path(&ns);
    let (proxy_a, proxy_b) = (FaultProxy::start(&env).await, FaultProxy::start(&env).await);
    let (kc_a, kc_b) = (tmp(&ns, "a.kubeconfig"), tmp(&ns, "b.kubeconfig"));
    proxy_a.kubeconfig(&kc_a);
    proxy_b.kubeconfig(&kc_b);
    let timing = [("EMPACTS_LEASE_DURATION", "6"), ("EMPACTS_LEASE_GRACE", "2")];

    let mut a = OperatorProcess::start_elected(&kc_a, "replica-a", &ns.name, LEASE, &tmp(&ns, "a.log"), &timing);
    wait_until("replica-a leads", T, || async { (holder(&ns).await.as_deref() == Some("replica-a")).then_some(()) })
        .await;
    apply_app(&ns, &app("1.0.0")).await;
    wait_app(&ns, "api", "Ready under replica-a", T, |a| phase(a) == Some(Phase::Ready)).await;
    let b = OperatorProcess::start_elected(&kc_b, "replica-b", &ns.name, LEASE, &tmp(&ns, "b.log"), &timing);
    wait_until("standby ready", T, || async { b.get("/readyz").await.filter(|(c, _)| *c == 200) }).await;

    let busy = keep_changing(&ns);
    let busy_since = Instant::now();
    wait_until("replica-a writes for the changing app", T, || async {
        let n = proxy_a.requests_matching(|r| r.at > busy_since && other_write(r, &lease_path) && succeeded(r)).len();
        (n >= 3).then_some(())
    })
    .await;

    let cut = Instant::now();
    let renewals = proxy_a.add_rule(FaultRule::new(Match::any().methods(["PUT", "PATCH"]).path(&lease_path), fault));
    wait_until("replica-b takes over", T, || async {
        (holder(&ns).await.as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    wait_until("replica-b leads", T, || async { (b.metric("empacts_leader").await? == 1.0).then_some(()) }).await;
    // Let the workload go on under the new leader: replica-a would write too if it still led.
    tokio::time::sleep(Duration::from_secs(4)).await;
    busy.abort();

    let a_log = proxy_a.requests();
    let last_renewal = a_log
        .iter()
        .rfind(|r| lease_write(r, &lease_path) && succeeded(r))
        .expect("replica-a renewed its Lease before the cut");
    assert!(last_renewal.at < cut, "a renewal after the cut succeeded: {last_renewal:?}");
    assert!(proxy_a.rule_hits(renewals).unwrap_or(0) >= 1, "replica-a tried to renew after the cut");
    let a_deadline = last_renewal.at + (DURATION - GRACE);
    let busy_until_deadline = a_log.iter().filter(|r| r.at > cut && r.at <= a_deadline && other_write(r, &lease_path));
    assert!(
        busy_until_deadline.count() >= 1,
        "replica-a kept writing while its renewals failed (else nothing is proved)"
    );
    // The leader stops *starting* writes at its deadline; a request it sent just before may reach
    // the proxy a moment later (loopback latency on a loaded 2-core machine). The grace (2 s)
    // keeps that far from the standby's takeover, asserted below.
    let in_flight = Duration::from_millis(200);
    let late: Vec<(Duration, &str, &str)> = a_log
        .iter()
        .filter(|r| r.at > a_deadline + in_flight && other_write(r, &lease_path))
        .map(|r| (r.at - a_deadline, r.method.as_str(), r.path.as_str()))
        .collect();
    assert!(
        late.is_empty(),
        "replica-a wrote after its last successful renewal + (lease - grace) ({} writes; time after that deadline, method, path): {late:#?}",
        late.len()
    );

    let b_log = proxy_b.requests();
    let acquired =
        b_log.iter().find(|r| lease_write(r, &lease_path) && succeeded(r)).expect("replica-b wrote the Lease");
    assert!(acquired.at > a_deadline, "replica-b acquired {:?} before replica-a's deadline", a_deadline - acquired.at);
    let last_a_write = a_log.iter().rfind(|r| other_write(r, &lease_path)).unwrap();
    println!(
        "{prefix}: replica-a's last successful renewal {:?} before the cut, last write {:?} after it ({} {}; deadline: +{:?}); replica-b acquired {:?} after it",
        cut - last_renewal.at,
        last_a_write.at.saturating_duration_since(last_renewal.at),
        last_a_write.method,
        last_a_write.path_only(),
        DURATION - GRACE,
        acquired.at - last_renewal.at
    );
    let b_writes = b_log.iter().filter(|r| r.at > acquired.at && other_write(r, &lease_path) && succeeded(r)).count();
    assert!(b_writes >= 1, "the workload went on under replica-b");

    // Exactly one replica leads: replica-b; replica-a stopped and exited non-zero.
    let status = exit_status(&mut a, Duration::from_secs(30)).await;
    assert!(!status.success(), "replica-a exits non-zero after losing the Lease: {status:?}");
    assert_eq!(holder(&ns).await.as_deref(), Some("replica-b"));
    assert_eq!(b.metric("empacts_leader").await, Some(1.0));
    let a_text = std::fs::read_to_string(tmp(&ns, "a.log")).unwrap();
    assert!(a_text.contains("lost the leader lease"), "{a_text}");
    drop(b);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_hung_api_server_exits_within_the_shutdown_bound() {
    const SHUTDOWN: Duration = Duration::from_secs(3);
    const RELEASE: Duration = Duration::from_secs(5);
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "hung").await;
    let proxy = FaultProxy::start(&env).await;
    let kc = tmp(&ns, "kubeconfig");
    proxy.kubeconfig(&kc);
    // A long lease, so the renew deadline (20 s after the last renewal) cannot end the drain.
    let timing = [("EMPACTS_LEASE_DURATION", "30"), ("EMPACTS_SHUTDOWN_TIMEOUT", "3")];
    let mut op = OperatorProcess::start_elected(&kc, "only", &ns.name, LEASE, &tmp(&ns, "log"), &timing);
    wait_until("leader", T, || async { (holder(&ns).await.as_deref() == Some("only")).then_some(()) }).await;
    apply_app(&ns, &app("1.0.0")).await;
    wait_app(&ns, "api", "Ready", T, |a| phase(a) == Some(Phase::Ready)).await;

    // Every new request hangs; open watches still deliver, so a spec change starts a reconcile
    // whose requests hang.
    proxy.add_rule(FaultRule::new(Match::any(), Action::Hang));
    let patch = serde_json::json!({"spec": {"image": "registry.example.com/api:2.0.0"}});
    ns.api::<EmpactsApp>().patch("api", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let hung = wait_until("a reconcile's request hangs", T, || async {
        let hung = proxy.requests_matching(|r| r.fault.as_deref() == Some("hang") && !r.path.contains("/leases"));
        (!hung.is_empty()).then_some(hung)
    })
    .await;
    println!("hung: {:?}", hung.iter().map(|r| (&r.method, &r.path)).collect::<Vec<_>>());

    op.signal("TERM");
    let start = Instant::now();
    let status = exit_status(&mut op, Duration::from_secs(30)).await;
    let took = start.elapsed();
    println!("exited {took:?} after SIGTERM with the API server hung ({status:?})");
    assert!(took >= SHUTDOWN, "in-flight reconciles got the shutdown timeout ({took:?})");
    assert!(took <= SHUTDOWN + RELEASE + Duration::from_secs(3), "shutdown is bounded: {took:?}");
    let log = std::fs::read_to_string(tmp(&ns, "log")).unwrap();
    assert!(log.contains("cancelling in-flight reconciles"), "{log}");
    assert!(log.contains("lease not released"), "{log}");
    ns.cleanup().await;
}
