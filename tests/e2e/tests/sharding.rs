//! Sharding across replicas against the real control plane: two `empacts run --shards 2`
//! replicas, each behind its own fault proxy whose request log shows which apps it wrote for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use empacts_api::{EmpactsApp, Phase};
use empacts_e2e::fault_proxy::{FaultProxy, RequestRecord};
use empacts_e2e::*;
use empacts_operator::shard::{SHARD_KEY_LABEL, lease_name, shard_of_key};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};

const T: Duration = Duration::from_secs(120);
const LEASE: &str = "empacts";
const SHARDS: u32 = 2;
const DURATION: Duration = Duration::from_secs(6);
const APPS: usize = 20;

fn tmp(ns: &TestNamespace, name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("empacts-e2e-{}-{name}", ns.name))
}

async fn lease_holder(ns: &TestNamespace, name: &str) -> Option<String> {
    let lease = ns.api::<Lease>().get_opt(name).await.ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// Holder of shard `shard`'s Lease out of [`SHARDS`].
async fn holder(ns: &TestNamespace, shard: u32) -> Option<String> {
    lease_holder(ns, &lease_name(LEASE, shard, SHARDS)).await
}

/// The app a successful write of `r` was for: the app itself (status) or its Deployment (named
/// like the app), in namespace `ns`.
fn written_app(r: &RequestRecord, ns: &str) -> Option<String> {
    if !r.mutating || !r.status.is_some_and(|s| (200..300).contains(&s)) {
        return None;
    }
    let path = r.path_only();
    let rest = path.split(&format!("/namespaces/{ns}/")).nth(1)?;
    let mut parts = rest.split('/');
    match (parts.next()?, parts.next()) {
        ("empactsapps" | "deployments", Some(name)) if !name.is_empty() => Some(name.to_string()),
        _ => None,
    }
}

fn apps_written(proxy: &FaultProxy, ns: &str, after: Instant) -> BTreeSet<String> {
    proxy.requests().iter().filter(|r| r.at > after).filter_map(|r| written_app(r, ns)).collect()
}

/// GET /metrics of a replica on `port`; None while it is down.
async fn scrape(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// The apps a replica exports `empacts_app_info` for (the apps its controller holds).
fn exported_apps(body: &str) -> BTreeSet<String> {
    metric_lines(body, "empacts_app_info")
        .iter()
        .filter_map(|l| l.split("app=\"").nth(1)?.split('"').next().map(str::to_string))
        .collect()
}

/// What the metrics watcher saw: every app each replica exported at some point, and every
/// scrape round in which an app was exported by both.
#[derive(Default, Debug)]
struct Seen {
    rounds: usize,
    by_replica: [BTreeSet<String>; 2],
    both: Vec<BTreeSet<String>>,
}

/// Scrape both replicas' /metrics (at `ports`, which a restart changes) every 100 ms until
/// aborted.
fn watch_metrics(ports: Arc<Mutex<[u16; 2]>>, seen: Arc<Mutex<Seen>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let ports = *ports.lock().unwrap();
            let a = scrape(ports[0]).await.map(|b| exported_apps(&b)).unwrap_or_default();
            let b = scrape(ports[1]).await.map(|b| exported_apps(&b)).unwrap_or_default();
            {
                let mut s = seen.lock().unwrap();
                s.rounds += 1;
                let both: BTreeSet<String> = a.intersection(&b).cloned().collect();
                if !both.is_empty() {
                    s.both.push(both);
                }
                s.by_replica[0].extend(a);
                s.by_replica[1].extend(b);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

fn app(name: &str, tag: &str, shard_key: Option<&str>) -> EmpactsApp {
    let labels = shard_key.map(|k| format!(", labels: {{{SHARD_KEY_LABEL}: {k}}}")).unwrap_or_default();
    app_yaml(&format!(
        "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: {name}{labels}}}\nspec: {{image: 'registry.example.com/{name}:{tag}'}}\n"
    ))
}

async fn deployment_image(ns: &TestNamespace, name: &str) -> Option<String> {
    let d = ns.api::<Deployment>().get_opt(name).await.ok()??;
    d.spec?.template.spec?.containers.first()?.image.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_the_apps_and_one_takes_over_a_killed_ones_shard() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "shard").await;
    let (proxy_a, proxy_b) = (FaultProxy::start(&env).await, FaultProxy::start(&env).await);
    let (kc_a, kc_b) = (tmp(&ns, "a.kubeconfig"), tmp(&ns, "b.kubeconfig"));
    proxy_a.kubeconfig(&kc_a);
    proxy_b.kubeconfig(&kc_b);
    let timing = [("EMPACTS_LEASE_DURATION", "6"), ("EMPACTS_LEASE_GRACE", "2"), ("EMPACTS_SHARDS", "2")];
    // StatefulSet-style names: each prefers the shard of its ordinal.
    let (name_a, name_b) = ("empacts-operator-0", "empacts-operator-1");
    let mut a = OperatorProcess::start_elected(&kc_a, name_a, &ns.name, LEASE, &tmp(&ns, "a.log"), &timing);
    let b = OperatorProcess::start_elected(&kc_b, name_b, &ns.name, LEASE, &tmp(&ns, "b.log"), &timing);
    wait_until("each replica holds its preferred shard", T, || async {
        (holder(&ns, 0).await.as_deref() == Some(name_a) && holder(&ns, 1).await.as_deref() == Some(name_b))
            .then_some(())
    })
    .await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let ports = Arc::new(Mutex::new([a.metrics_port, b.metrics_port]));
    let watcher = watch_metrics(ports.clone(), seen.clone());

    // 20 apps; the last two share a shard key, so they share its shard whatever their names.
    let mut shard_of: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..APPS {
        let name = format!("app-{i}");
        let key = (i >= APPS - 2).then_some("team-x");
        let shard = shard_of_key(&key.map_or(format!("{}/{name}", ns.name), str::to_string), SHARDS);
        apply_app(&ns, &app(&name, "1.0.0", key)).await;
        shard_of.insert(name, shard);
    }
    let expected: [BTreeSet<String>; 2] =
        [0, 1].map(|s| shard_of.iter().filter(|(_, v)| **v == s).map(|(k, _)| k.clone()).collect());
    println!("shard 0: {} apps, shard 1: {} apps", expected[0].len(), expected[1].len());
    assert!(!expected[0].is_empty() && !expected[1].is_empty(), "both shards have apps: {shard_of:?}");
    for name in shard_of.keys() {
        wait_app(&ns, name, "Ready", T, |a| phase(a) == Some(Phase::Ready)).await;
    }
    // Until every replica exported every app of its shard (the metrics of the last reconcile).
    wait_until("both replicas export their apps", T, || async {
        let s = seen.lock().unwrap();
        (s.by_replica[0] == expected[0] && s.by_replica[1] == expected[1]).then_some(())
    })
    .await;
    let start = Instant::now() - Duration::from_secs(3600);
    let (wrote_a, wrote_b) = (apps_written(&proxy_a, &ns.name, start), apps_written(&proxy_b, &ns.name, start));
    assert_eq!(wrote_a, expected[0], "replica-0 wrote for exactly the apps of shard 0");
    assert_eq!(wrote_b, expected[1], "replica-1 wrote for exactly the apps of shard 1");
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.by_replica, expected, "each replica exported only its shard's apps");
        assert!(s.both.is_empty(), "apps exported by both replicas at once: {:?}", s.both);
    }
    assert_eq!(a.metric("empacts_shards_held").await, Some(1.0));
    assert_eq!(b.metric("empacts_shards_held").await, Some(1.0));

    // Kill -9 replica-0, then change an app of its shard: replica-1 takes the shard over and
    // rolls the app out.
    let target = expected[0].iter().next().unwrap().clone();
    a.child.kill().unwrap();
    let killed = Instant::now();
    a.child.wait().unwrap();
    let image = format!("registry.example.com/{target}:2.0.0");
    let patch = serde_json::json!({"spec": {"image": image}});
    ns.api::<EmpactsApp>().patch(&target, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_until("replica-1 rolls out the killed replica's app", T, || async {
        (deployment_image(&ns, &target).await.as_deref() == Some(image.as_str())).then_some(())
    })
    .await;
    let took = killed.elapsed();
    let acquired = holder(&ns, 0).await;
    println!(
        "killed replica-0; replica-1 reconciled {target} (shard 0) {took:?} after the kill (lease duration {DURATION:?}, bound {:?})",
        DURATION + Duration::from_secs(5)
    );
    assert_eq!(acquired.as_deref(), Some(name_b), "replica-1 holds shard 0");
    assert!(took <= DURATION + Duration::from_secs(5), "takeover took {took:?}");
    assert!(apps_written(&proxy_b, &ns.name, killed).contains(&target), "through replica-1's proxy");
    wait_until("replica-1 holds both shards", T, || async {
        (b.metric("empacts_shards_held").await? == 2.0).then_some(())
    })
    .await;
    // Every app still ends Ready under replica-1 alone.
    for name in shard_of.keys() {
        wait_app(&ns, name, "Ready under replica-1", T, |a| phase(a) == Some(Phase::Ready)).await;
    }

    // Replica-0 comes back (a StatefulSet pod keeps its name): it asks for its shard, and
    // replica-1 stops reconciling it and hands it back.
    let back = Instant::now();
    let a = OperatorProcess::start_elected(&kc_a, name_a, &ns.name, LEASE, &tmp(&ns, "a2.log"), &timing);
    ports.lock().unwrap()[0] = a.metrics_port;
    wait_until("replica-0 gets its shard back", T, || async {
        (holder(&ns, 0).await.as_deref() == Some(name_a)).then_some(())
    })
    .await;
    let returned = back.elapsed();
    println!("restarted replica-0 holds shard 0 again {returned:?} after its start (hand-back)");
    assert!(returned < DURATION, "handed back, not waited out: {returned:?}");
    wait_until("each replica exports only its shard's apps again", T, || async {
        let a = exported_apps(&scrape(a.metrics_port).await?);
        let b = exported_apps(&scrape(b.metrics_port).await?);
        (a == expected[0] && b == expected[1]).then_some(())
    })
    .await;
    let image = format!("registry.example.com/{target}:3.0.0");
    let patch = serde_json::json!({"spec": {"image": image}});
    let changed = Instant::now();
    ns.api::<EmpactsApp>().patch(&target, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_until("replica-0 rolls out its app again", T, || async {
        (deployment_image(&ns, &target).await.as_deref() == Some(image.as_str())).then_some(())
    })
    .await;
    assert!(apps_written(&proxy_a, &ns.name, changed).contains(&target), "through replica-0's proxy");
    assert!(!apps_written(&proxy_b, &ns.name, changed).contains(&target), "replica-1 no longer writes for it");
    assert_eq!(b.metric("empacts_shards_held").await, Some(1.0));
    let b_log = std::fs::read_to_string(tmp(&ns, "b.log")).unwrap();
    assert!(b_log.contains("handing a fostered shard back"), "{b_log}");
    watcher.abort();
    let (rounds, both) = {
        let s = seen.lock().unwrap();
        (s.rounds, s.both.clone())
    };
    println!("metrics of both replicas scraped in {rounds} rounds (every 100 ms) from the apps' creation to the end");
    assert!(both.is_empty(), "apps exported by both replicas at once: {both:?}");
    assert!(rounds > 20, "the watcher ran");
    drop((a, b));
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_alone_takes_every_shard_after_its_head_start() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "shard-alone").await;
    let timing = [("EMPACTS_LEASE_DURATION", "4"), ("EMPACTS_SHARDS", "2")];
    empacts_binary();
    let started = Instant::now();
    let only = OperatorProcess::start_elected(&env.kubeconfig, "solo-1", &ns.name, LEASE, &tmp(&ns, "log"), &timing);
    wait_until("its preferred shard", T, || async {
        (holder(&ns, 1).await.as_deref() == Some("solo-1")).then_some(())
    })
    .await;
    let preferred_after = started.elapsed();
    wait_until("the other shard", T, || async { (holder(&ns, 0).await.as_deref() == Some("solo-1")).then_some(()) })
        .await;
    let foster_after = started.elapsed();
    println!("preferred shard after {preferred_after:?}, foster shard after {foster_after:?}");
    assert!(foster_after >= Duration::from_secs(4), "a foster waits its head start: {foster_after:?}");
    assert!(preferred_after < Duration::from_secs(4), "the preferred shard is taken at once: {preferred_after:?}");
    for i in 0..4 {
        apply_app(&ns, &app(&format!("app-{i}"), "1.0.0", None)).await;
    }
    for i in 0..4 {
        wait_app(&ns, &format!("app-{i}"), "Ready", T, |a| phase(a) == Some(Phase::Ready)).await;
    }
    assert_eq!(only.metric("empacts_shards_held").await, Some(2.0));
    drop(only);
    ns.cleanup().await;
}

/// A replica of a new configuration (`to` shards; 1: unsharded) starts while one of the old
/// configuration (`from`) holds every Lease of its own: the new one takes no Lease and writes
/// nothing, watched continuously while the old one keeps rolling an app out, until the old one
/// stops; then it takes over.
async fn a_new_configuration_waits_for_the_old_one(from: u32, to: u32, label: &str) {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, label).await;
    let old_leases: Vec<String> = (0..from).map(|i| lease_name(LEASE, i, from)).collect();
    let new_leases: Vec<String> = (0..to).map(|i| lease_name(LEASE, i, to)).collect();
    let (from_s, to_s) = (from.to_string(), to.to_string());
    let old_timing = [("EMPACTS_LEASE_DURATION", "4"), ("EMPACTS_SHARDS", from_s.as_str())];
    let mut old =
        OperatorProcess::start_elected(&env.kubeconfig, "old-0", &ns.name, LEASE, &tmp(&ns, "old.log"), &old_timing);
    wait_until("the old configuration holds all its Leases", T, || async {
        for lease in &old_leases {
            lease_holder(&ns, lease).await.filter(|h| h == "old-0")?;
        }
        Some(())
    })
    .await;
    apply_app(&ns, &app("app-0", "1.0.0", None)).await;
    wait_app(&ns, "app-0", "Ready", T, |a| phase(a) == Some(Phase::Ready)).await;

    let proxy = FaultProxy::start(&env).await;
    let kubeconfig = tmp(&ns, "new.kubeconfig");
    proxy.kubeconfig(&kubeconfig);
    let new_timing = [("EMPACTS_LEASE_DURATION", "4"), ("EMPACTS_SHARDS", to_s.as_str())];
    let new = OperatorProcess::start_elected(&kubeconfig, "new-0", &ns.name, LEASE, &tmp(&ns, "new.log"), &new_timing);
    wait_until("the new replica is up", T, || async { new.get("/readyz").await.filter(|(c, _)| *c == 200) }).await;
    let started = Instant::now();
    // Every 100 ms: no Lease of the new configuration held, the new replica not leading.
    let watched = {
        let (leases, api, port) = (new_leases.clone(), ns.api::<Lease>(), new.metrics_port);
        tokio::spawn(async move {
            let (mut rounds, mut seen) = (0usize, Vec::new());
            while started.elapsed() < Duration::from_secs(14) {
                for name in &leases {
                    let held = api.get_opt(name).await.ok().flatten().and_then(|l| l.spec?.holder_identity);
                    if let Some(h) = held.filter(|h| !h.is_empty()) {
                        seen.push(format!("{name} held by {h} after {:?}", started.elapsed()));
                    }
                }
                let leading = scrape(port).await.and_then(|b| {
                    b.lines().find_map(|l| l.strip_prefix("empacts_leader ").and_then(|v| v.trim().parse::<f64>().ok()))
                });
                if leading.is_some_and(|v| v != 0.0) {
                    seen.push(format!("the new replica leads after {:?}", started.elapsed()));
                }
                rounds += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (rounds, seen)
        })
    };
    // Past the lease duration and the foster head start, the old configuration still rolls out.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let image = "registry.example.com/app-0:2.0.0";
    let patch = serde_json::json!({"spec": {"image": image}});
    ns.api::<EmpactsApp>().patch("app-0", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_until("the old configuration rolls the app out", T, || async {
        (deployment_image(&ns, "app-0").await.as_deref() == Some(image)).then_some(())
    })
    .await;
    let (rounds, seen) = watched.await.unwrap();
    println!(
        "{from} -> {to} shards: watched the new configuration's Leases {new_leases:?} and its empacts_leader {rounds} times over 14 s"
    );
    assert!(
        seen.is_empty(),
        "the new configuration led while the old one ran, {} times; first: {:?}",
        seen.len(),
        &seen[..seen.len().min(4)]
    );
    assert!(rounds > 50, "the watcher ran: {rounds} rounds");
    let written: BTreeSet<String> = proxy.requests().iter().filter_map(|r| written_app(r, &ns.name)).collect();
    assert!(written.is_empty(), "the new replica wrote for {written:?} while the old one ran");

    old.signal("TERM");
    let stopped = Instant::now();
    while !old.exited() {
        assert!(stopped.elapsed() < T, "the old replica exits");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until("the new configuration takes its Leases", T, || async {
        for lease in &new_leases {
            lease_holder(&ns, lease).await.filter(|h| h == "new-0")?;
        }
        Some(())
    })
    .await;
    println!("the new configuration held all its Leases {:?} after the old one stopped", stopped.elapsed());
    let image = "registry.example.com/app-0:3.0.0";
    let patch = serde_json::json!({"spec": {"image": image}});
    let changed = Instant::now();
    ns.api::<EmpactsApp>().patch("app-0", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_until("the new configuration reconciles", T, || async {
        (deployment_image(&ns, "app-0").await.as_deref() == Some(image)).then_some(())
    })
    .await;
    assert!(apps_written(&proxy, &ns.name, changed).contains("app-0"), "through the new replica's proxy");
    drop(new);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_replicas_start_only_once_an_unsharded_leader_is_gone() {
    a_new_configuration_waits_for_the_old_one(1, 2, "shard-on").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsharded_replica_starts_only_once_the_sharded_ones_are_gone() {
    a_new_configuration_waits_for_the_old_one(2, 1, "shard-off").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_a_new_shard_count_start_only_once_the_old_count_is_gone() {
    a_new_configuration_waits_for_the_old_one(2, 3, "shard-count").await;
}

/// Which replica a move between shards kills (SIGKILL, then started again at once under its
/// name, so it takes its own shard's Lease back before the other could foster it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MoveCrash {
    None,
    /// The old shard's replica, right after the API server accepted its release.
    OldAfterRelease,
    /// The new shard's replica, right after the API server accepted its claim.
    NewAfterClaim,
}

/// An app whose shard-key label moves it to the other replica's shard, while the old replica's
/// view of the apps is 8 s behind. The old replica keeps reconciling it from that view (it
/// takes back a replica count changed by hand, every second), so without a handshake the new
/// one, whose view is current, reconciles it at the same time: both write for it. The new
/// shard waits until the old one releases its claim in the app's status; every write for the
/// app through the old replica's proxy (its restarted process's included) comes before the
/// first through the new one's.
async fn a_move_between_shards(label: &str, crash: MoveCrash) {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, label).await;
    let (proxy_a, proxy_b) = (FaultProxy::start(&env).await, FaultProxy::start(&env).await);
    let (kc_a, kc_b) = (tmp(&ns, "a.kubeconfig"), tmp(&ns, "b.kubeconfig"));
    proxy_a.kubeconfig(&kc_a);
    proxy_b.kubeconfig(&kc_b);
    // Replica-0's view of the apps is 8 s behind, all along (a watch is delayed from its start).
    let behind = Duration::from_secs(8);
    proxy_a.delay_watches("/empactsapps", behind);
    let timing = [("EMPACTS_LEASE_DURATION", "6"), ("EMPACTS_LEASE_GRACE", "2"), ("EMPACTS_SHARDS", "2")];
    let (name_a, name_b) = ("empacts-operator-0", "empacts-operator-1");
    let mut a = OperatorProcess::start_elected(&kc_a, name_a, &ns.name, LEASE, &tmp(&ns, "a.log"), &timing);
    let mut b = OperatorProcess::start_elected(&kc_b, name_b, &ns.name, LEASE, &tmp(&ns, "b.log"), &timing);
    wait_until("each replica holds its preferred shard", T, || async {
        (holder(&ns, 0).await.as_deref() == Some(name_a) && holder(&ns, 1).await.as_deref() == Some(name_b))
            .then_some(())
    })
    .await;
    let key_of = |s: u32| ["k-a", "k-b", "k-c", "k-d"].into_iter().find(|k| shard_of_key(k, SHARDS) == s).unwrap();
    apply_app(&ns, &app("mover", "1.0.0", Some(key_of(0)))).await;
    let ready = wait_app(&ns, "mover", "Ready in shard 0", T, |a| phase(a) == Some(Phase::Ready)).await;
    let claim = ready.status.as_ref().and_then(|s| s.shard.clone());
    assert_eq!(claim.as_deref(), Some("0-of-2"), "shard 0 claimed the app");

    let deployments = ns.api::<Deployment>();
    let replicas = deployments.get("mover").await.unwrap().spec.unwrap().replicas;
    assert_ne!(replicas, Some(3), "test setup");

    // Once replica-0 has seen its last status write, the app moves to shard 1.
    tokio::time::sleep(behind + Duration::from_secs(1)).await;
    let status_writes = |r: &RequestRecord| r.path_only().ends_with("/empactsapps/mover/status");
    match crash {
        MoveCrash::None => {}
        MoveCrash::OldAfterRelease => {
            proxy_a.set_write_filter(status_writes);
            proxy_a.kill_after_accepted_write(1, a.child.id());
        }
        MoveCrash::NewAfterClaim => {
            proxy_b.set_write_filter(status_writes);
            proxy_b.kill_after_accepted_write(1, b.child.id());
        }
    }
    let patch = serde_json::json!({"metadata": {"labels": {SHARD_KEY_LABEL: key_of(1)}}});
    let moved = Instant::now();
    ns.api::<EmpactsApp>().patch("mover", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    // Every second, someone scales the Deployment by hand: whoever reconciles the app takes
    // it back (a Deployment event, which no app watch delays).
    let by_hand = PatchParams { field_manager: Some("by-hand".into()), ..Default::default() };
    let (mut scaled, mut restarted) = (0, Vec::new());
    while moved.elapsed() < Duration::from_secs(14) {
        if a.exited() {
            a = OperatorProcess::start_elected(&kc_a, name_a, &ns.name, LEASE, &tmp(&ns, "a2.log"), &timing);
            restarted.push(format!("replica-0 at {:?}", moved.elapsed()));
        }
        if b.exited() {
            b = OperatorProcess::start_elected(&kc_b, name_b, &ns.name, LEASE, &tmp(&ns, "b2.log"), &timing);
            restarted.push(format!("replica-1 at {:?}", moved.elapsed()));
        }
        let scale = serde_json::json!({"spec": {"replicas": 3}});
        if deployments.patch("mover", &by_hand, &Patch::Merge(&scale)).await.is_ok() {
            scaled += 1;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let handed = wait_app(&ns, "mover", "claimed by shard 1", T, |a| {
        a.status.as_ref().and_then(|s| s.shard.as_deref()) == Some("1-of-2")
    })
    .await;
    assert_eq!(handed.labels().get(SHARD_KEY_LABEL).map(String::as_str), Some(key_of(1)));
    wait_until("replica-1 takes the replica count back", T, || async {
        let d = deployments.get("mover").await.ok()?;
        (d.spec?.replicas == replicas).then_some(())
    })
    .await;

    // Writes for the app after the move, by when; and those of its Deployment.
    let writes = |proxy: &FaultProxy, path: &str| -> Vec<Duration> {
        let requests = proxy.requests();
        let mut at: Vec<Duration> = requests
            .iter()
            .filter(|r| r.at > moved && written_app(r, &ns.name).as_deref() == Some("mover"))
            .filter(|r| r.path.contains(path))
            .map(|r| r.at - moved)
            .collect();
        at.sort();
        at
    };
    let (old, new) = (writes(&proxy_a, "/"), writes(&proxy_b, "/"));
    println!(
        "{crash:?}: scaled by hand {scaled} times; killed and restarted {restarted:?}; after the move, replica-0 wrote for the app at {old:?}, replica-1 at {new:?}"
    );
    if crash != MoveCrash::None {
        let crashes = [&proxy_a, &proxy_b].map(|p| p.crash_points().len());
        assert_eq!(crashes.iter().sum::<usize>(), 1, "one kill: {crashes:?}");
        assert_eq!(restarted.len(), 1, "{restarted:?}");
    }
    let stale_applies = writes(&proxy_a, "/deployments/");
    assert!(!stale_applies.is_empty(), "replica-0 reconciled the app from its stale view (the case under test)");
    assert!(!new.is_empty(), "replica-1 took the app over");
    assert!(
        old.last() < new.first(),
        "both replicas wrote for the app at once: replica-0 until {:?}, replica-1 from {:?}",
        old.last(),
        new.first()
    );
    let b_log = std::fs::read_to_string(tmp(&ns, "b.log")).unwrap();
    assert!(b_log.contains("waiting for its old shard to release it"), "replica-1 waited");
    drop((a, b));
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_moved_to_another_shard_is_handed_over_never_shared() {
    a_move_between_shards("shard-move", MoveCrash::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_between_shards_survives_the_old_replica_dying_right_after_its_release() {
    a_move_between_shards("shard-move-old", MoveCrash::OldAfterRelease).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_between_shards_survives_the_new_replica_dying_right_after_its_claim() {
    a_move_between_shards("shard-move-new", MoveCrash::NewAfterClaim).await;
}
