//! Scale benchmark against the real local control plane: how long the operator (the real
//! `empacts run` process) takes to bring N apps to Ready — each with a generated secret and a
//! migration — and to upgrade them all, how many reconciles that costs, and how much memory
//! the process holds. Prints figures; it asserts nothing.
//!
//!     cargo bench -p empacts-e2e --bench converge            # N = 100
//!     EMPACTS_BENCH_APPS=300 cargo bench -p empacts-e2e --bench converge

use std::time::{Duration, Instant};

use empacts_api::{EmpactsApp, Phase};
use empacts_e2e::*;
use kube::Api;
use kube::api::ListParams;

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn all_ready(api: &Api<EmpactsApp>, n: usize, image: &str) -> usize {
    let apps = api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    let ready =
        apps.iter().filter(|a| a.spec.image == image && observed_current(a) && phase(a) == Some(Phase::Ready)).count();
    ready.min(n)
}

async fn converge(api: &Api<EmpactsApp>, n: usize, image: &str) -> Duration {
    let start = Instant::now();
    loop {
        if all_ready(api, n, image).await == n {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(900), "did not converge in 15 minutes");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Sum of `empacts_child_applies_total{result="applied"}` over kinds.
async fn applies_sent(op: &OperatorProcess) -> f64 {
    let (_, body) = op.get("/metrics").await.unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with("empacts_child_applies_total") && l.contains("result=\"applied\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("EMPACTS_BENCH_APPS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "bench").await;
    let log = std::env::temp_dir().join(format!("empacts-bench-{}.log", ns.name));
    let op = OperatorProcess::start(&env, "bench", &ns.name, "empacts", &log);
    let pid = op.child.id();
    wait_until("operator ready", Duration::from_secs(60), || async {
        op.get("/readyz").await.filter(|(c, _)| *c == 200)
    })
    .await;
    let idle_rss = rss_kib(pid, "VmRSS:");

    let spec = |image: &str| {
        format!(
            "{{image: '{image}', replicas: 2, env: {{MODE: bench}}, secrets: [{{env: JWT_SECRET, generate: {{}}}}], \
             migration: {{command: [migrate]}}, autoscaling: {{minReplicas: 2, maxReplicas: 4, targetCPU: 70}}, \
             disruption: {{minAvailable: 1}}}}"
        )
    };
    let api: Api<EmpactsApp> = ns.api();
    let v1 = "registry.example.com/bench:1.0.0";
    let created = Instant::now();
    for i in 0..n {
        let app = app_yaml(&format!(
            "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: app-{i}}}\nspec: {}\n",
            spec(v1)
        ));
        apply_app(&ns, &app).await;
    }
    let create_time = created.elapsed();
    let install = converge(&api, n, v1).await;
    let reconciles_install = op.metric("empacts_reconcile_total ").await.unwrap_or(0.0);
    let rss_after_install = rss_kib(pid, "VmRSS:");

    // Steady state: let the last events settle for 10 s, then nothing changes for 30 s.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = op.metric("empacts_reconcile_total ").await.unwrap_or(0.0);
    let applies_before = applies_sent(&op).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let idle_reconciles = op.metric("empacts_reconcile_total ").await.unwrap_or(0.0) - before;
    let idle_applies = applies_sent(&op).await - applies_before;

    // Upgrade every app: a migration per app, then a rollout.
    let v2 = "registry.example.com/bench:2.0.0";
    let upgrade_start = Instant::now();
    for i in 0..n {
        let app = app_yaml(&format!(
            "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: app-{i}}}\nspec: {}\n",
            spec(v2)
        ));
        apply_app(&ns, &app).await;
    }
    let upgrade = converge(&api, n, v2).await + Duration::ZERO;
    let upgrade_total = upgrade_start.elapsed();
    let reconciles_total = op.metric("empacts_reconcile_total ").await.unwrap_or(0.0);
    let duration_sum = op.metric("empacts_reconcile_duration_seconds_sum").await.unwrap_or(0.0);
    let duration_count = op.metric("empacts_reconcile_duration_seconds_count").await.unwrap_or(1.0);
    let peak = rss_kib(pid, "VmHWM:");
    let rss_end = rss_kib(pid, "VmRSS:");

    println!("EmpactsApp operator convergence benchmark ({n} apps, real control plane with kwok nodes)");
    println!("  apply {n} apps (client side)            {:>8.1} s", create_time.as_secs_f64());
    println!(
        "  all Ready after install (from first apply) {:>8.1} s",
        install.as_secs_f64() + create_time.as_secs_f64()
    );
    println!(
        "  reconciles to install                   {:>8.0} ({:.1} per app)",
        reconciles_install,
        reconciles_install / n as f64
    );
    println!("  reconciles / applies sent in 30 s idle  {:>8.0} / {}", idle_reconciles, idle_applies);
    println!(
        "  all Ready on v2 after upgrade applies   {:>8.1} s (upgrade wall time {:.1} s)",
        upgrade.as_secs_f64(),
        upgrade_total.as_secs_f64()
    );
    println!(
        "  reconciles in total                     {:>8.0} ({:.1} per app)",
        reconciles_total,
        reconciles_total / n as f64
    );
    println!("  mean reconcile duration                 {:>8.1} ms", 1000.0 * duration_sum / duration_count.max(1.0));
    println!("  operator RSS idle / after install / end {:>8} / {} / {} KiB", idle_rss, rss_after_install, rss_end);
    println!(
        "  operator peak RSS                       {:>8} KiB ({:.1} KiB per app over idle)",
        peak,
        (peak.saturating_sub(idle_rss)) as f64 / n as f64
    );
    drop(op);
    ns.cleanup().await;
}
