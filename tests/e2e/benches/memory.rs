//! Operator memory over a settled fleet: N apps (`EMPACTS_BENCH_APPS`, default 1,000) like
//! the converge benchmark's (generated secret, migration, HPA, PDB, 2 replicas), installed
//! until all are Ready; then the operator is killed and started again over them, as after a
//! crash or an upgrade. Prints RSS idle / after install / settled / peak of the first
//! process, and of the restarted one its peak, its settled RSS, and the requests its restart
//! sent (a settled fleet should cost it no write). Figures, not assertions.
//!
//! `cargo bench -p empacts-e2e --bench memory` (testbed up: `eval "$(tests/cluster/up)"`).

use std::time::{Duration, Instant};

use empacts_api::EmpactsApp;
use empacts_e2e::bench::*;
use empacts_e2e::*;
use kube::Api;

/// Quiet time after the install (and after the restart's reconciles) before RSS is read
/// (`EMPACTS_BENCH_SETTLE_SECS`, default 30; longer to take a heap profile of the settled
/// fleet, see the README).
fn settle() -> Duration {
    let secs = std::env::var("EMPACTS_BENCH_SETTLE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    Duration::from_secs(secs)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Start the operator and wait until it serves /readyz.
async fn start(env: &ClusterEnv, ns: &str, log: &std::path::Path) -> OperatorProcess {
    let op = OperatorProcess::start_single_args(&env.kubeconfig, "memory", ns, log, &[]);
    wait_until("operator ready", Duration::from_secs(120), || async {
        op.get("/readyz").await.filter(|(c, _)| *c == 200)
    })
    .await;
    op
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("EMPACTS_BENCH_APPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "memory").await;
    let log = std::env::temp_dir().join(format!("empacts-memory-{}.log", ns.name));
    let op = start(&env, &ns.name, &log).await;
    let pid = op.child.id();
    let idle = rss_kib(pid, "VmRSS:");
    // Anonymous memory (the heap) and file pages (the binary's code, mapped as it runs).
    let idle_split = (rss_kib(pid, "RssAnon:"), rss_kib(pid, "RssFile:"));

    let api: Api<EmpactsApp> = ns.api();
    let image = "registry.example.com/bench:1.0.0";
    let started = Instant::now();
    apply_all(&ns, 0..n, image, "").await;
    wait_count("install", n, || all_ready(&api, n, image)).await;
    let install = started.elapsed();
    let after_install = rss_kib(pid, "VmRSS:");
    tokio::time::sleep(settle()).await;
    let settled = rss_kib(pid, "VmRSS:");
    let settled_split = (rss_kib(pid, "RssAnon:"), rss_kib(pid, "RssFile:"));
    let peak = rss_kib(pid, "VmHWM:");
    let install_cpu = Counters::read(&op).await.cpu_seconds;
    drop(op);

    // The restart: every app is reconciled once by the new process (its first resync is
    // immediate), over caches filled by its initial lists.
    let op = start(&env, &ns.name, &log).await;
    let pid = op.child.id();
    let restarted = Instant::now();
    let restart_time = k8s_openapi::jiff::Timestamp::now();
    wait_count("reconciled after the restart", n, || async {
        op.metric_sum("empacts_reconcile_total").await.unwrap_or(0.0) as usize
    })
    .await;
    let first_pass = restarted.elapsed();
    tokio::time::sleep(settle()).await;
    // Everything the new process sent, its initial lists included.
    let restart = Counters::read(&op).await;
    let restart_settled = rss_kib(pid, "VmRSS:");
    let restart_split = (rss_kib(pid, "RssAnon:"), rss_kib(pid, "RssFile:"));
    let restart_peak = rss_kib(pid, "VmHWM:");
    let (reads, writes) = restart.reads_writes();
    drop(op);
    let reapplied = reapplied_deployments(&ns, restart_time).await;
    ns.cleanup_and_wait(Duration::from_secs(900)).await;

    let per_app = |kib: u64| (kib.saturating_sub(idle)) as f64 / n as f64;
    let idle_anon = idle_split.0;
    println!();
    println!("EmpactsApp operator memory: {n} apps (generated secret, migration, HPA, PDB; 2 replicas each)");
    println!("| figure | value |");
    println!("| --- | --- |");
    println!("| all Ready from the first apply | {:.1} s |", install.as_secs_f64());
    println!(
        "| RSS idle / after install / settled ({} s later) / peak | {:.0} / {:.0} / {:.0} / {:.0} MiB ({:.1} KiB per app settled, over idle) |",
        settle().as_secs(),
        mib(idle),
        mib(after_install),
        mib(settled),
        mib(peak),
        per_app(settled)
    );
    println!(
        "| operator CPU: install and settle / restart and settle | {install_cpu:.1} s / {:.1} s |",
        restart.cpu_seconds
    );
    println!(
        "| of which anonymous (heap) / file (code): idle / settled / restarted, settled | {:.0} + {:.0} / {:.0} + {:.0} / {:.0} + {:.0} MiB ({:.1} KiB of heap per app settled, over idle) |",
        mib(idle_split.0),
        mib(idle_split.1),
        mib(settled_split.0),
        mib(settled_split.1),
        mib(restart_split.0),
        mib(restart_split.1),
        (settled_split.0.saturating_sub(idle_anon)) as f64 / n as f64
    );
    println!(
        "| restarted over the settled fleet: every app reconciled once within / RSS settled / peak | {:.1} s / {:.0} / {:.0} MiB ({:.1} KiB per app settled) |",
        first_pass.as_secs_f64(),
        mib(restart_settled),
        mib(restart_peak),
        per_app(restart_settled)
    );
    println!(
        "| requests of the restarted process (its initial lists included, watches not): reads / writes; by verb | {:.0} / {:.0}; {:?} |",
        reads + 0.0,
        writes + 0.0,
        restart.requests
    );
    println!(
        "| of those writes: child applies by kind / the rest (status writes, ledger marks) | {:?} / {:.0} |",
        restart.applies,
        writes - restart.applies_total() + 0.0
    );
    if !reapplied.is_empty() {
        println!(
            "Deployments the restart applied again, with their field managers (manager/operation/subresource: top-level fields):"
        );
        for line in reapplied.iter().take(5) {
            println!("  {line}");
        }
    }
}

/// Deployments whose operator Apply entry is newer than `since`, each with its managedFields
/// in short: why a restart found them not current.
async fn reapplied_deployments(ns: &TestNamespace, since: k8s_openapi::jiff::Timestamp) -> Vec<String> {
    use k8s_openapi::api::apps::v1::Deployment;
    let deployments: Api<Deployment> = ns.api();
    let list = deployments.list(&Default::default()).await.expect("list Deployments");
    let mut out = Vec::new();
    for d in list.items {
        let fields = d.metadata.managed_fields.clone().unwrap_or_default();
        let ours_after = fields.iter().any(|f| {
            f.manager.as_deref() == Some(empacts_operator::apply::FIELD_MANAGER)
                && f.time.as_ref().is_some_and(|t| t.0 >= since)
        });
        if !ours_after {
            continue;
        }
        let managers: Vec<String> = fields
            .iter()
            .map(|f| {
                let top: Vec<String> = f
                    .fields_v1
                    .as_ref()
                    .and_then(|v| v.0.as_object())
                    .map(|o| o.keys().cloned().collect())
                    .unwrap_or_default();
                format!(
                    "{}/{}/{}: {}",
                    f.manager.as_deref().unwrap_or("?"),
                    f.operation.as_deref().unwrap_or("?"),
                    f.subresource.as_deref().unwrap_or("-"),
                    top.join(",")
                )
            })
            .collect();
        out.push(format!("{} [{}]", d.metadata.name.unwrap_or_default(), managers.join("; ")));
    }
    out
}
