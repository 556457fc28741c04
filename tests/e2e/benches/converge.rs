//! Scale benchmark against the real local control plane: the real `empacts run` process with N
//! apps (each with a generated secret, a migration, an HPA and a PDB, like the README example).
//! It prints, and asserts nothing:
//! - install and upgrade times, reconciles, operator RSS;
//! - a 60 s steady-state window (`--resync 30`, so every app is re-checked twice): API requests
//!   by verb from the operator's own counter, reconciles, applies, CPU seconds;
//! - HPA status churn: every HPA's status patched once, reconciles and HPA applies in 10 s;
//! - failed-rollout detection: ProgressDeadlineExceeded to phase RollingBack/RolledBack;
//! - 429s: responses Too Many Requests the operator got during install and upgrade (its own
//!   counter, by code), and the API server's priority-and-fairness rejections of all clients;
//! - the floor: the same children applied at once with server-side apply, in another namespace;
//! - Helm: the same fleet as one release per app (the migration a pre-install,pre-upgrade hook
//!   Job), `helm upgrade --install --wait` 8 at a time, install then upgrade, in another namespace.
//!
//! ```sh
//! cargo bench -p empacts-e2e --bench converge            # N = 100
//! EMPACTS_BENCH_APPS=300 cargo bench -p empacts-e2e --bench converge
//! EMPACTS_BENCH_HELM=0 cargo bench -p empacts-e2e --bench converge   # without the Helm phase
//! EMPACTS_BENCH_OPERATOR_ARGS="--kube-api-qps 200" cargo bench ...   # other operator flags
//! ```

use std::time::{Duration, Instant};

use empacts_api::{EmpactsApp, Phase};
use empacts_e2e::bench::*;
use empacts_e2e::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};

const RESYNC_SECS: u64 = 30;
const IDLE: Duration = Duration::from_secs(60);
const FAIL_SAMPLE: usize = 10;
/// How long a phase waits for the previous phase's namespace to be collected.
const GC_WAIT: Duration = Duration::from_secs(900);

fn delta(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}

fn secs(times: &[Duration]) -> Vec<f64> {
    times.iter().map(Duration::as_secs_f64).collect()
}

/// Seconds from each sample Deployment's ProgressDeadlineExceeded (its lastTransitionTime,
/// whole seconds, so up to 1 s high; and as the benchmark's watch delivered it) to its app's
/// phase RollingBack/RolledBack as the watch of the apps delivered it. Watches, not polling:
/// a poll lists every app and Deployment of the fleet, which at 1,000 apps takes longer than
/// the latency measured.
async fn rollback_latencies(ns: &TestNamespace, n: usize) -> (Vec<f64>, Vec<f64>) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    enum Seen {
        Deployment(Box<Deployment>),
        App(Box<EmpactsApp>),
    }
    let apps: Api<EmpactsApp> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let config = watcher::Config::default;
    let seen_deployments =
        watcher(deployments, config()).applied_objects().map(|d| d.ok().map(|d| Seen::Deployment(Box::new(d))));
    let seen_apps = watcher(apps, config()).applied_objects().map(|a| a.ok().map(|a| Seen::App(Box::new(a))));
    let mut events = futures::stream::select(seen_deployments.boxed(), seen_apps.boxed());
    let mut exceeded: Vec<Option<(Timestamp, Instant)>> = vec![None; n];
    let mut rolled: Vec<Option<(Timestamp, Instant)>> = vec![None; n];
    let mut last_phase = vec![String::new(); n];
    let index =
        |name: Option<&str>| name.and_then(|s| s.strip_prefix("app-")?.parse::<usize>().ok()).filter(|i| *i < n);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while rolled.iter().any(Option::is_none) {
        let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await else { break };
        match event {
            Some(Seen::Deployment(d)) => {
                let Some(i) = index(d.metadata.name.as_deref()) else { continue };
                let cond = d.status.as_ref().and_then(|s| s.conditions.as_ref()).and_then(|cs| {
                    cs.iter().find(|c| {
                        c.type_ == "Progressing"
                            && c.status == "False"
                            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                    })
                });
                if let (Some(c), true) = (cond, exceeded[i].is_none()) {
                    let at = c.last_transition_time.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now);
                    exceeded[i] = Some((at, Instant::now()));
                }
            }
            Some(Seen::App(a)) => {
                let Some(i) = index(a.metadata.name.as_deref()) else { continue };
                last_phase[i] = format!("{:?}", phase(&a));
                if rolled[i].is_none() && matches!(phase(&a), Some(Phase::RollingBack | Phase::RolledBack)) {
                    rolled[i] = Some((Timestamp::now(), Instant::now()));
                }
            }
            None => {}
        }
    }
    let (mut from_condition, mut from_seen) = (Vec::new(), Vec::new());
    for (i, (e, r)) in exceeded.iter().zip(&rolled).enumerate() {
        match (e, r) {
            (Some((e_at, e_seen)), Some((r_at, r_seen))) => {
                let by_time = (r_at.as_millisecond() - e_at.as_millisecond()) as f64 / 1000.0;
                let by_seen = r_seen.saturating_duration_since(*e_seen).as_secs_f64();
                println!("    app-{i}: {by_time:.1} s after lastTransitionTime, {by_seen:.1} s after first seen");
                from_condition.push(by_time);
                from_seen.push(by_seen);
            }
            (None, Some(_)) => println!("    app-{i}: rolled back before the Deployment said ProgressDeadlineExceeded"),
            (e, None) => println!(
                "    app-{i}: not rolled back within 120 s (phase {}, ProgressDeadlineExceeded seen: {})",
                last_phase[i],
                e.is_some()
            ),
        }
    }
    (from_condition, from_seen)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("EMPACTS_BENCH_APPS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let with_helm = std::env::var("EMPACTS_BENCH_HELM").map_or(true, |v| v != "0");
    let bench_start = Instant::now();
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "bench").await;
    let log = std::env::temp_dir().join(format!("empacts-bench-{}.log", ns.name));
    let resync = RESYNC_SECS.to_string();
    let extra = std::env::var("EMPACTS_BENCH_OPERATOR_ARGS").unwrap_or_default();
    let mut args = vec!["--resync", resync.as_str()];
    args.extend(extra.split_whitespace());
    println!("operator flags: {}", args.join(" "));
    let op = OperatorProcess::start_single_args(&env.kubeconfig, "bench", &ns.name, &log, &args);
    let pid = op.child.id();
    wait_until("operator ready", Duration::from_secs(60), || async {
        op.get("/readyz").await.filter(|(c, _)| *c == 200)
    })
    .await;
    let idle_rss = rss_kib(pid, "VmRSS:");

    let api: Api<EmpactsApp> = ns.api();
    let v1 = "registry.example.com/bench:1.0.0";
    let rejected_before_install = apiserver_rejected(&env);
    let created = Instant::now();
    apply_all(&ns, 0..n, v1, "").await;
    let create_time = created.elapsed();
    wait_count("install", n, || all_ready(&api, n, v1)).await;
    let install = created.elapsed();
    let install_counts = Counters::read(&op).await;
    let reconciles_install = install_counts.reconciles;
    let rejected_install = delta(rejected_before_install, apiserver_rejected(&env));
    let rss_after_install = rss_kib(pid, "VmRSS:");

    // 1. Steady state: let the last events settle for 10 s, then nothing changes for 60 s.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = Counters::read(&op).await;
    tokio::time::sleep(IDLE).await;
    let idle = Counters::read(&op).await.since(&before);
    let plus0 = |v: f64| v + 0.0;
    let (idle_reads, idle_writes) = idle.reads_writes();
    let resyncs = n as f64 * IDLE.as_secs_f64() / RESYNC_SECS as f64;

    // 2. HPA status churn, as an HPA controller fed by metrics-server writes it.
    let hpas: Api<HorizontalPodAutoscaler> = ns.api();
    let before = Counters::read(&op).await;
    for i in 0..n {
        let status = serde_json::json!({"status": {"currentReplicas": 2, "desiredReplicas": 3,
            "lastScaleTime": Timestamp::now().to_string()}});
        hpas.patch_status(&format!("app-{i}"), &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("patch HPA status");
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let churn = Counters::read(&op).await.since(&before);

    // Upgrade every app: a migration per app, then a rollout.
    let v2 = "registry.example.com/bench:2.0.0";
    let before = Counters::read(&op).await;
    let rejected_before_upgrade = apiserver_rejected(&env);
    let upgrade_start = Instant::now();
    apply_all(&ns, 0..n, v2, "").await;
    let upgrade = wait_count("upgrade", n, || all_ready(&api, n, v2)).await;
    let upgrade_total = upgrade_start.elapsed();
    let upgrade_counts = Counters::read(&op).await.since(&before);
    let rejected_upgrade = delta(rejected_before_upgrade, apiserver_rejected(&env));

    // 3. Failed rollouts on a sample: detection to rollback.
    let sample = FAIL_SAMPLE.min(n);
    let bad = "registry.example.com/bench:3.0.0-fail-rollout";
    // With a migration, rolling back needs the failed revision's rollbackCommand (else Stalled).
    for i in 0..sample {
        let doc = app_doc(i, bad, ", rollout: {progressDeadlineSeconds: 10, autoRollback: true}")
            .replace("command: [migrate]}", "command: [migrate], rollbackCommand: [migrate, down]}");
        apply_app(&ns, &app_yaml(&doc)).await;
    }
    println!("failed rollouts (progressDeadlineSeconds 10), ProgressDeadlineExceeded -> RollingBack/RolledBack:");
    let (mut by_condition, mut by_seen) = rollback_latencies(&ns, sample).await;

    let all = Counters::read(&op).await;
    let duration_sum = op.metric("empacts_reconcile_duration_seconds_sum").await.unwrap_or(0.0);
    let duration_count = op.metric("empacts_reconcile_duration_seconds_count").await.unwrap_or(1.0);
    let peak = rss_kib(pid, "VmHWM:");
    let rss_end = rss_kib(pid, "VmRSS:");
    drop(op);
    // Each phase starts on a quiet control plane: the previous namespace fully collected.
    ns.cleanup_and_wait(GC_WAIT).await;

    // 4. The floor, with no operator running.
    let floor_ns = TestNamespace::new(&client, "bench-floor").await;
    let docs = |image: &str| (0..n).map(|i| format!("---\n{}", app_doc(i, image, ""))).collect::<String>();
    let fl = floor(&env, &floor_ns, docs, v1, v2).await;
    floor_ns.cleanup_and_wait(GC_WAIT).await;

    // 5. Helm: one release per app, 8 at a time, with no operator running.
    let helm = if with_helm {
        let helm_ns = TestNamespace::new(&client, "bench-helm").await;
        let run = helm_run(&env, &helm_ns, n, |i, image| app_doc(i, image, ""), v1, v2).await;
        helm_ns.cleanup_and_wait(GC_WAIT).await;
        Some(run)
    } else {
        None
    };

    let s = |d: Duration| d.as_secs_f64();
    let (cond_med, cond_max) = median_max(&mut by_condition).unwrap_or((f64::NAN, f64::NAN));
    let (seen_med, seen_max) = median_max(&mut by_seen).unwrap_or((f64::NAN, f64::NAN));
    println!();
    println!("EmpactsApp operator benchmark: {n} apps (generated secret, migration, HPA, PDB; 2 replicas each)");
    println!("| figure | value |");
    println!("| --- | --- |");
    println!(
        "| {n} apps applied (client side) / all Ready from the first apply | {:.1} s / {:.1} s |",
        s(create_time),
        s(install)
    );
    println!(
        "| floor: all children applied at once (server-side apply) → all Deployments available | {:.1} s (operator/floor {:.1}×) |",
        s(fl.install),
        s(install) / s(fl.install)
    );
    println!(
        "| upgrade (migration, then rollout): all Ready | {:.1} s (wall time with applies {:.1} s) |",
        s(upgrade),
        s(upgrade_total)
    );
    println!(
        "| floor: all migration Jobs at once → complete, then all Deployments → available | {:.1} s ({:.1} s of Jobs; operator/floor {:.1}×) |",
        s(fl.upgrade),
        s(fl.upgrade_jobs),
        s(upgrade_total) / s(fl.upgrade)
    );
    if let Some(h) = &helm {
        let (mut i, mut u) = (secs(&h.install_each), secs(&h.upgrade_each));
        let (i_med, i_max) = median_max(&mut i).unwrap_or((f64::NAN, f64::NAN));
        let (u_med, u_max) = median_max(&mut u).unwrap_or((f64::NAN, f64::NAN));
        println!(
            "| Helm: {n} releases, `helm upgrade --install --wait` {HELM_PARALLEL} at a time (migration a hook Job): install / upgrade, all done | {:.1} s / {:.1} s (operator/Helm {:.2}× / {:.2}×) |",
            s(h.install),
            s(h.upgrade),
            s(install) / s(h.install),
            s(upgrade_total) / s(h.upgrade)
        );
        println!(
            "| Helm: one release's command, median / max: install / upgrade | {i_med:.1} / {i_max:.1} s / {u_med:.1} / {u_max:.1} s |"
        );
    }
    println!(
        "| 429 (Too Many Requests) responses to the operator: install / upgrade / whole run | {:.0} / {:.0} / {:.0} |",
        install_counts.responses("429"),
        upgrade_counts.responses("429"),
        all.responses("429")
    );
    println!(
        "| API server priority-and-fairness rejections (apiserver_flowcontrol_rejected_requests_total, all clients): operator install / upgrade{} | {} |",
        if helm.is_some() { "; Helm install / upgrade" } else { "" },
        [
            Some(rejected_install),
            Some(rejected_upgrade),
            helm.as_ref().map(|h| h.rejected.0),
            helm.as_ref().map(|h| h.rejected.1)
        ]
        .into_iter()
        .flatten()
        .map(|r| r.map_or("unreadable".to_string(), |v| format!("{v:.0}")))
        .collect::<Vec<_>>()
        .join(" / ")
    );
    println!(
        "| reconciles to install / upgrade | {:.1} / {:.1} per app |",
        reconciles_install / n as f64,
        upgrade_counts.reconciles / n as f64
    );
    println!(
        "| steady state, 60 s with --resync {RESYNC_SECS} (2 resyncs per app): API requests per minute by verb | {} |",
        idle.per_minute(IDLE)
    );
    println!(
        "| steady state: reads / writes per app per resync (target 0 / 0) | {:.2} / {:.2} |",
        idle_reads / resyncs,
        plus0(idle_writes / resyncs)
    );
    println!(
        "| steady state: reconciles / applies sent / operator CPU in 60 s | {:.0} / {:.0} / {:.2} s |",
        idle.reconciles,
        plus0(idle.applies_total()),
        idle.cpu_seconds
    );
    println!(
        "| status of all {n} HPAs patched once: reconciles / HPA applies in 10 s (target 0 / 0) | {:.0} / {:.0} |",
        churn.reconciles,
        plus0(churn.applies_of("horizontal"))
    );
    println!(
        "| failed rollout ({sample} apps, progressDeadlineSeconds 10): ProgressDeadlineExceeded → RollingBack, median / max | {cond_med:.1} / {cond_max:.1} s after lastTransitionTime ({seen_med:.1} / {seen_max:.1} s after first seen) |"
    );
    println!(
        "| mean reconcile duration / operator CPU in total | {:.1} ms / {:.1} s |",
        1000.0 * duration_sum / duration_count.max(1.0),
        all.cpu_seconds
    );
    println!(
        "| operator RSS idle / after install / end / peak | {} / {} / {} / {} MiB ({:.2} MiB per app over idle) |",
        idle_rss / 1024,
        rss_after_install / 1024,
        rss_end / 1024,
        peak / 1024,
        peak.saturating_sub(idle_rss) as f64 / 1024.0 / n as f64
    );
    println!("steady-state requests in 60 s by verb: {:?}; HPA churn requests: {:?}", idle.requests, churn.requests);
    println!("operator responses by code, whole run: {:?}", all.codes);
    println!("benchmark wall time: {:.0} s", s(bench_start.elapsed()));
}
