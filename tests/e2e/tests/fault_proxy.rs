//! The fault-injecting proxy (src/fault_proxy) against the real control plane: forwarding and
//! streaming, identity, the request log, kill-after-write, watch delays, injected faults.

use std::os::unix::process::ExitStatusExt as _;
use std::time::{Duration, Instant};

use empacts_e2e::fault_proxy::{Action, FaultProxy, FaultRule, Match, RequestRecord};
use empacts_e2e::*;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret, ServiceAccount};
use kube::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;

const T: Duration = Duration::from_secs(30);

/// A ConfigMap labelled `fp=1` (lists and watchers select on it, leaving out `kube-root-ca.crt`).
fn cm(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"fp": "1"}}, "data": {"k": "v"}})).unwrap()
}

fn mine() -> ListParams {
    ListParams::default().labels("fp=1")
}

fn tmp(ns: &TestNamespace, name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("empacts-e2e-{}-{name}", ns.name))
}

/// The next item of `stream` for which `pick` returns Some, within `timeout`.
async fn next_matching<S, I, T2>(stream: &mut S, timeout: Duration, mut pick: impl FnMut(I) -> Option<T2>) -> T2
where
    S: Stream<Item = I> + Unpin,
{
    tokio::time::timeout(timeout, async {
        loop {
            let item = stream.next().await.expect("stream ended early");
            if let Some(v) = pick(item) {
                return v;
            }
        }
    })
    .await
    .expect("timed out waiting for a stream item")
}

fn added(name: &str) -> impl FnMut(kube::Result<WatchEvent<ConfigMap>>) -> Option<()> + '_ {
    move |e| matches!(e.expect("watch event"), WatchEvent::Added(o) if o.name_any() == name).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_crud_and_streams_watches() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "fp-basic").await;
    let proxy = FaultProxy::start(&env).await;
    let kubeconfig = tmp(&ns, "proxy.kubeconfig");
    proxy.kubeconfig(&kubeconfig);
    let api: Api<ConfigMap> = Api::namespaced(client_for(&kubeconfig).await, &ns.name);
    let direct: Api<ConfigMap> = ns.api();

    api.create(&PostParams::default(), &cm("a")).await.expect("create through the proxy");
    assert_eq!(api.get("a").await.unwrap().data.unwrap()["k"], "v");
    let names: Vec<String> = api.list(&mine()).await.unwrap().iter().map(|c| c.name_any()).collect();
    assert_eq!(names, ["a"]);
    let patch = Patch::Merge(json!({"data": {"k": "w"}}));
    assert_eq!(api.patch("a", &PatchParams::default(), &patch).await.unwrap().data.unwrap()["k"], "w");
    assert_eq!(direct.get("a").await.unwrap().data.unwrap()["k"], "w", "the patch reached the API server");

    // A watcher through the proxy sees a ConfigMap created (directly) while its watch is open:
    // the chunked watch response is relayed as it arrives, not buffered.
    let (tx, mut applied) = tokio::sync::mpsc::unbounded_channel();
    let mut objects = watcher(api.clone(), watcher::Config::default().labels("fp=1")).applied_objects().boxed();
    let watching = tokio::spawn(async move {
        while let Some(Ok(o)) = objects.next().await {
            let _ = tx.send(o.name_any());
        }
    });
    let mut next =
        async || tokio::time::timeout(T, applied.recv()).await.expect("watcher event").expect("watcher runs");
    assert_eq!(next().await, "a", "the initial list");
    let is_watch = |r: &RequestRecord| r.watch && r.path_only() == format!("/api/v1/namespaces/{}/configmaps", ns.name);
    let watch = wait_until("the watch is open", T, || async {
        proxy.requests_matching(is_watch).pop().filter(|w| w.status == Some(200))
    })
    .await;
    assert_eq!((watch.method.as_str(), watch.fault.as_deref()), ("GET", None));
    direct.create(&PostParams::default(), &cm("b")).await.unwrap();
    let created = Instant::now();
    assert_eq!(next().await, "b");
    assert!(created.elapsed() < Duration::from_secs(5), "event took {:?}", created.elapsed());
    assert_eq!(proxy.requests_matching(is_watch).len(), 1, "one watch carried both events");
    watching.abort();
    drop(proxy);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_token_keeps_its_identity() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "fp-sa").await;
    let proxy = FaultProxy::start(&env).await;
    let sas: Api<ServiceAccount> = ns.api();
    wait_until("default ServiceAccount", T, || async { sas.get_opt("default").await.ok()? }).await;
    let (sa_config, wrapped) = (tmp(&ns, "sa.kubeconfig"), tmp(&ns, "sa-proxy.kubeconfig"));
    service_account_kubeconfig(&env, &ns.name, "default", &sa_config);
    proxy.wrap_kubeconfig(&sa_config, &wrapped);

    // The default ServiceAccount has no RBAC: through the proxy it is still itself, not admin.
    let as_sa: Api<ConfigMap> = Api::namespaced(client_for(&wrapped).await, &ns.name);
    match as_sa.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403);
            assert!(e.message.contains(&format!("system:serviceaccount:{}:default", ns.name)), "{}", e.message);
        }
        other => panic!("expected 403 for the ServiceAccount, got {other:?}"),
    }
    let as_admin: Api<ConfigMap> = Api::namespaced(proxy.client().await, &ns.name);
    as_admin.list(&ListParams::default()).await.expect("admin through the proxy may list");
    let log = proxy.requests();
    assert_eq!(
        log.iter().map(|r| (r.authorization, r.status)).collect::<Vec<_>>(),
        [(true, Some(403)), (false, Some(200))]
    );
    drop(proxy);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_mutating_requests_by_method_and_path() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "fp-count").await;
    let proxy = FaultProxy::start(&env).await;
    // kube sends no User-Agent of its own; this client sets one.
    let mut config = proxy.config().await;
    config.headers.push((hyper::header::USER_AGENT, hyper::header::HeaderValue::from_static("fp-count/1")));
    let api: Api<ConfigMap> = Api::namespaced(Client::try_from(config).unwrap(), &ns.name);
    let others = proxy.add_rule(FaultRule::new(Match::any().user_agent_contains("someone-else"), Action::status(500)));
    for name in ["c1", "c2", "c3"] {
        api.create(&PostParams::default(), &cm(name)).await.unwrap();
    }
    let mine = Match::any().methods(["GET"]).user_agent_contains("fp-count");
    proxy.add_rule(FaultRule::new(mine, Action::status(500)).times(1));
    assert!(matches!(api.get("c2").await, Err(kube::Error::Api(e)) if e.code == 500));
    api.get("c2").await.unwrap();
    assert_eq!(proxy.rule_hits(others), Some(0));

    let collection = format!("/api/v1/namespaces/{}/configmaps", ns.name);
    assert_eq!(proxy.mutating_count(), 3);
    assert_eq!(proxy.count("POST", &collection), 3);
    assert_eq!(proxy.count("GET", &format!("{collection}/c2")), 2);
    let writes = proxy.writes();
    assert_eq!(writes.len(), 3);
    for (i, w) in writes.iter().enumerate() {
        assert_eq!((w.seq, w.method.as_str(), w.path_only()), (i as u64 + 1, "POST", collection.as_str()));
        assert_eq!((w.status, w.watch, w.mutating, w.user_agent.as_str()), (Some(201), false, true, "fp-count/1"));
    }
    let log = proxy.requests();
    assert_eq!(
        log.iter().map(|r| r.status).collect::<Vec<_>>(),
        [Some(201), Some(201), Some(201), Some(500), Some(200)]
    );
    assert_eq!(log[3].fault.as_deref(), Some("status 500"));
    drop(proxy);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_the_process_after_the_kth_write() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "fp-kill").await;
    let proxy = FaultProxy::start(&env).await;
    let api: Api<ConfigMap> = Api::namespaced(proxy.client().await, &ns.name);
    let events: Api<Event> = Api::namespaced(proxy.client().await, &ns.name);
    let direct: Api<ConfigMap> = ns.api();
    let mut child = std::process::Command::new("sleep").arg("600").spawn().expect("sleep starts");
    let alive = |child: &mut std::process::Child| child.try_wait().unwrap().is_none();

    api.create(&PostParams::default(), &cm("before-arming")).await.unwrap();
    proxy.kill_after_write(2, child.id());
    assert!(proxy.armed());
    api.create(&PostParams::default(), &cm("write-1")).await.expect("1st write is answered");
    assert!(alive(&mut child), "killed after the 1st write");
    // Events (like Lease updates) are not counted by the default write filter.
    let event: Event = serde_json::from_value(json!({
        "metadata": {"name": "e1"}, "reason": "Test", "message": "not a counted write", "type": "Normal",
        "involvedObject": {"kind": "ConfigMap", "name": "write-1", "namespace": ns.name, "apiVersion": "v1"},
    }))
    .unwrap();
    events.create(&PostParams::default(), &event).await.expect("event is created");
    assert!(alive(&mut child), "killed after an Event");

    let second = api.create(&PostParams::default(), &cm("write-2")).await;
    assert!(matches!(second, Err(ref e) if !matches!(e, kube::Error::Api(_))), "connection error expected: {second:?}");
    let status = wait_until("child exits", T, || std::future::ready(child.try_wait().unwrap())).await;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "child died of SIGKILL: {status:?}");
    direct.get("write-2").await.expect("the 2nd write was applied before the kill");
    assert!(!proxy.armed(), "the trigger disarms after firing");

    // The proxy keeps serving: a 3rd write goes through and is answered normally.
    api.create(&PostParams::default(), &cm("write-3")).await.expect("3rd write after the kill");
    let collection = format!("/api/v1/namespaces/{}/configmaps", ns.name);
    let posts = proxy.requests_matching(|r| r.is("POST", &collection));
    assert_eq!(posts.len(), 4, "no retries: {posts:#?}");
    let crash = proxy.crash_points();
    assert_eq!(crash.len(), 1);
    assert_eq!((crash[0].seq, crash[0].status), (posts[2].seq, Some(201)), "crash point is the 2nd armed write");
    assert_eq!(posts[2].fault.as_deref(), Some("kill-after-write"));
    assert_eq!(proxy.writes().len(), 4, "the Event is not a counted write");
    drop(proxy);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delays_watch_events_but_not_other_requests() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "fp-delay").await;
    let proxy = FaultProxy::start(&env).await;
    let through = proxy.client().await;
    let rule = proxy.delay_watches("/configmaps", Duration::from_secs(2));
    let cms: Api<ConfigMap> = Api::namespaced(through.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(through, &ns.name);
    let wp = WatchParams::default().timeout(60);

    let rv = cms.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut cm_watch = cms.watch(&wp, &rv).await.unwrap().boxed();
    let rv = secrets.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut secret_watch = secrets.watch(&wp, &rv).await.unwrap().boxed();

    ns.api::<ConfigMap>().create(&PostParams::default(), &cm("late")).await.unwrap();
    let created = Instant::now();
    let get = Instant::now();
    cms.get("late").await.expect("GET through the proxy");
    let get_took = get.elapsed();
    next_matching(&mut cm_watch, T, added("late")).await;
    let event_took = created.elapsed();
    assert!(get_took < Duration::from_millis(1500), "GET was delayed: {get_took:?}");
    assert!(event_took >= Duration::from_millis(1800), "watch event came after {event_took:?}");
    assert!(event_took < Duration::from_secs(6), "watch event came after {event_took:?}");

    // The rule matches configmaps only: a secrets watch through the same proxy is not delayed.
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &secret).await.unwrap();
    let created = Instant::now();
    next_matching(&mut secret_watch, T, |e| matches!(e.expect("watch event"), WatchEvent::Added(_)).then_some(()))
        .await;
    assert!(created.elapsed() < Duration::from_millis(1500), "secret event came after {:?}", created.elapsed());
    assert_eq!(proxy.rule_hits(rule), Some(1));
    drop(proxy);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injects_statuses_hangs_and_drops() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "fp-faults").await;
    ns.api::<ConfigMap>().create(&PostParams::default(), &cm("x")).await.unwrap();
    let proxy = FaultProxy::start(&env).await;
    let mut config = proxy.config().await;
    config.default_retry = false;
    let api: Api<ConfigMap> = Api::namespaced(Client::try_from(config).unwrap(), &ns.name);
    let retrying: Api<ConfigMap> = Api::namespaced(proxy.client().await, &ns.name);
    let get_x = Match::any().methods(["GET"]).path_contains("/configmaps/x");

    // 503 with Retry-After, once: the client (retries off) gets it; the next GET is forwarded.
    let rule = proxy.add_rule(FaultRule::new(get_x.clone(), Action::status_retry_after(503, 1)).times(1));
    match api.get("x").await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (503, "ServiceUnavailable")),
        other => panic!("expected an injected 503, got {other:?}"),
    }
    api.get("x").await.expect("the rule is used up");
    assert_eq!(proxy.rule_hits(rule), Some(1));
    let gets = proxy.requests_matching(|r| r.method == "GET" && r.path.contains("/configmaps/x"));
    assert_eq!(gets.iter().map(|r| r.status).collect::<Vec<_>>(), [Some(503), Some(200)]);
    // kube's default client retries a 503 after Retry-After.
    proxy.add_rule(FaultRule::new(get_x.clone(), Action::status_retry_after(503, 1)).times(1));
    let start = Instant::now();
    retrying.get("x").await.expect("retried after Retry-After");
    assert!(start.elapsed() >= Duration::from_millis(900), "retried after {:?}", start.elapsed());

    // Hang: the request never gets an answer; other requests are served meanwhile; removing
    // the rule releases a hanging request, which is then forwarded.
    let hang = proxy.add_rule(FaultRule::new(get_x.clone(), Action::Hang));
    assert!(tokio::time::timeout(Duration::from_secs(1), api.get("x")).await.is_err(), "hung GET answered");
    api.list(&ListParams::default()).await.expect("unmatched requests are served");
    let pending = tokio::spawn({
        let api = api.clone();
        async move { api.get("x").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pending.is_finished(), "hung GET answered");
    assert!(proxy.remove_rule(hang));
    let released = tokio::time::timeout(Duration::from_secs(5), pending).await.expect("released").unwrap();
    assert_eq!(released.expect("released GET is forwarded").name_any(), "x");

    // Drop: the connection closes without an answer.
    let drop_rule = proxy.add_rule(FaultRule::new(get_x.clone(), Action::Drop));
    let dropped = api.get("x").await;
    assert!(matches!(dropped, Err(ref e) if !matches!(e, kube::Error::Api(_))), "{dropped:?}");
    assert_eq!(proxy.rule_hits(drop_rule), Some(1), "the client did not retry");

    // First match wins; clearing the rules restores normal service.
    proxy.add_rule(FaultRule::new(Match::any(), Action::status(500)));
    assert!(matches!(api.list(&ListParams::default()).await, Err(kube::Error::Api(e)) if e.code == 500));
    assert!(api.get("x").await.is_err());
    proxy.clear_rules();
    api.get("x").await.expect("served after clear_rules");
    api.list(&ListParams::default()).await.expect("served after clear_rules");

    // Dropping the proxy closes its connections (a hung request fails) and its port.
    proxy.add_rule(FaultRule::new(get_x, Action::Hang));
    let pending = tokio::spawn(async move { api.get("x").await });
    wait_until("the request hangs", T, || async {
        proxy.requests().last()?.fault.as_deref().filter(|f| *f == "hang").map(|_| ())
    })
    .await;
    let addr = proxy.addr();
    drop(proxy);
    let after_drop = tokio::time::timeout(Duration::from_secs(5), pending).await.expect("hung request ends").unwrap();
    assert!(matches!(after_drop, Err(ref e) if !matches!(e, kube::Error::Api(_))), "{after_drop:?}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed");
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_watch_makes_the_watcher_relist() {
    let (env, client) = cluster().await;
    let ns = TestNamespace::new(&client, "fp-410").await;
    ns.api::<ConfigMap>().create(&PostParams::default(), &cm("x")).await.unwrap();
    let proxy = FaultProxy::start(&env).await;
    let api: Api<ConfigMap> = Api::namespaced(proxy.client().await, &ns.name);
    let expire =
        || FaultRule::new(Match::any().watch(true).path_contains("/configmaps"), Action::WatchExpired).times(1);

    // The raw watch stream yields the 410 ERROR event, then ends.
    proxy.add_rule(expire());
    let rv = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut raw = api.watch(&WatchParams::default(), &rv).await.unwrap().boxed();
    match tokio::time::timeout(T, raw.try_next()).await.expect("an event") {
        Ok(Some(WatchEvent::Error(e))) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(tokio::time::timeout(T, raw.try_next()).await.expect("stream ends").unwrap().is_none());

    // kube's watcher takes the 410 as "desynced": it reports the error and lists again.
    proxy.add_rule(expire());
    let collection = format!("/api/v1/namespaces/{}/configmaps", ns.name);
    let lists = || proxy.requests_matching(|r| r.is("GET", &collection) && !r.watch).len();
    let lists_before = lists();
    let mut events = watcher(api.clone(), watcher::Config::default().labels("fp=1")).boxed();
    let mut seen = Vec::new();
    while seen.len() < 7 {
        let item = tokio::time::timeout(T, events.next()).await.expect("watcher event").expect("watcher runs");
        seen.push(match item {
            Ok(watcher::Event::Init) => "Init".to_string(),
            Ok(watcher::Event::InitApply(o)) => format!("InitApply({})", o.name_any()),
            Ok(watcher::Event::InitDone) => "InitDone".into(),
            Ok(watcher::Event::Apply(o)) => format!("Apply({})", o.name_any()),
            Ok(watcher::Event::Delete(o)) => format!("Delete({})", o.name_any()),
            Err(watcher::Error::WatchError(e)) => format!("WatchError({})", e.code),
            Err(e) => format!("{e}"),
        });
    }
    let relist = ["Init", "InitApply(x)", "InitDone"];
    assert_eq!(seen, [&relist[..], &["WatchError(410)"], &relist[..]].concat());
    assert_eq!(lists() - lists_before, 2, "the watcher listed again");
    drop(proxy);
    ns.cleanup().await;
}
