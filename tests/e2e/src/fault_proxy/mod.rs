//! A fault-injecting proxy between a client (an operator process, a test's kube `Client`) and
//! the test cluster's API server. Test helper, not product code.
//!
//! - Terminates TLS on `127.0.0.1:<free port>` with the API server's own serving certificate, so
//!   clients trust it with the testbed CA; forwards each HTTP/1.1 request to the API server on a
//!   fresh TLS connection. A request with an `Authorization` header (a ServiceAccount token) goes
//!   upstream as is, without a client certificate, so it keeps its identity and RBAC; any other
//!   request is sent with the admin client certificate. Response bodies stream through frame by
//!   frame (watches work).
//! - Records every request ([`RequestRecord`]): sequence number, method, path and query,
//!   user agent, status, watch or not, mutating or not.
//! - [`FaultProxy::kill_after_write`]: SIGKILL a process once the k-th counted write (see
//!   [`default_write_filter`]) has been applied by the API server, before its client sees the
//!   answer; the client's connection is then closed.
//! - [`FaultRule`]s (first match wins, optional hit limit): inject a status (429/500/503 with
//!   `Retry-After`), expire a watch (410), hang, drop the connection, delay response chunks.
//!
//! Dropping the [`FaultProxy`] stops the listener and closes every connection through it.

mod forward;
mod rules;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Uri;
use hyper_util::rt::TokioIo;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::ClusterEnv;
use forward::{RuleEntry, Shared, State, Upstream, WriteTrigger};
pub use rules::{Action, FaultRule, Match, RequestPredicate, RequestRecord, RuleId, default_write_filter};

/// A running proxy; see the module documentation.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The admin kubeconfig: its cluster entry (CA) is reused for the proxy's kubeconfigs.
    admin: serde_yaml::Value,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `cluster` entry (server, CA) of the kubeconfig's current context.
fn current_cluster(kubeconfig: &serde_yaml::Value) -> Option<&serde_yaml::Value> {
    let current = kubeconfig["current-context"].as_str()?;
    let contexts = kubeconfig["contexts"].as_sequence()?;
    let cluster = contexts.iter().find(|c| c["name"].as_str() == Some(current))?["context"]["cluster"].as_str()?;
    let clusters = kubeconfig["clusters"].as_sequence()?;
    clusters.iter().find(|c| c["name"].as_str() == Some(cluster)).map(|c| &c["cluster"])
}

impl FaultProxy {
    /// Start a proxy in front of the test cluster's API server (URL from the admin kubeconfig,
    /// certificates from the `pki` directory next to it). Panics if that fails.
    pub async fn start(env: &ClusterEnv) -> FaultProxy {
        let text = std::fs::read_to_string(&env.kubeconfig).expect("admin kubeconfig is readable");
        let admin: serde_yaml::Value = serde_yaml::from_str(&text).expect("admin kubeconfig parses");
        let server =
            current_cluster(&admin).and_then(|c| c["server"].as_str()).expect("admin kubeconfig names its server");
        let server: Uri = server.parse().expect("server URL");
        let pki = env.kubeconfig.parent().expect("kubeconfig is in the state dir").join("pki");
        let acceptor = forward::server_tls(&pki).expect("proxy TLS config from the testbed PKI");
        let state = State {
            log: Vec::new(),
            rules: Vec::new(),
            next_rule_id: 1,
            write_filter: Arc::new(default_write_filter),
            trigger: None,
            crash_points: Vec::new(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            rules_changed: tokio::sync::watch::Sender::new(0),
            upstream: Upstream::new(server, &pki).expect("upstream TLS config from the testbed PKI"),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let task = tokio::spawn(accept_loop(listener, acceptor, shared.clone()));
        FaultProxy { addr, shared, admin, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn proxy_kubeconfig(&self) -> serde_yaml::Value {
        let mut cluster = current_cluster(&self.admin).expect("admin kubeconfig has a cluster").clone();
        cluster["server"] = self.url().into();
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fault-proxy", "cluster": serde_json::to_value(cluster).unwrap()}],
            "users": [{"name": "fault-proxy-admin", "user": {}}],
            "contexts": [{"name": "fault-proxy", "context": {"cluster": "fault-proxy", "user": "fault-proxy-admin", "namespace": "default"}}],
            "current-context": "fault-proxy",
        });
        serde_json::from_value(config).unwrap()
    }

    /// Write a kubeconfig for the proxy: testbed CA, no credentials (the proxy authenticates
    /// upstream as admin).
    pub fn kubeconfig(&self, path: &Path) {
        write_private(path, &serde_yaml::to_string(&self.proxy_kubeconfig()).unwrap());
    }

    /// Copy the kubeconfig at `src` (e.g. one from [`crate::service_account_kubeconfig`]) to `dst`
    /// with every cluster's server pointing at the proxy; credentials (a token) are kept, and the
    /// proxy forwards them.
    pub fn wrap_kubeconfig(&self, src: &Path, dst: &Path) {
        let text = std::fs::read_to_string(src).expect("kubeconfig to wrap is readable");
        let mut config: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig to wrap parses");
        for cluster in config["clusters"].as_sequence_mut().expect("kubeconfig has clusters") {
            cluster["cluster"]["server"] = self.url().into();
        }
        write_private(dst, &serde_yaml::to_string(&config).unwrap());
    }

    /// A kube client configuration for the proxy (as admin), to adjust before building a client
    /// (e.g. `default_retry = false`: kube retries 429/503/504 by default, honouring `Retry-After`).
    pub async fn config(&self) -> kube::Config {
        let kubeconfig: Kubeconfig = serde_yaml::from_value(self.proxy_kubeconfig()).expect("proxy kubeconfig");
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("proxy kubeconfig is usable")
    }

    /// A kube client through the proxy (as admin), with kube's default settings.
    pub async fn client(&self) -> Client {
        Client::try_from(self.config().await).expect("client builds")
    }

    // ---- request log ----------------------------------------------------------------------

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().log.clone()
    }

    /// The requests for which `pred` holds.
    pub fn requests_matching(&self, pred: impl Fn(&RequestRecord) -> bool) -> Vec<RequestRecord> {
        self.shared.lock().log.iter().filter(|r| pred(r)).cloned().collect()
    }

    /// Number of requests with this method whose path (without query) is exactly `path`, e.g.
    /// `count("POST", "/apis/batch/v1/namespaces/ns/jobs")`.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.shared.lock().log.iter().filter(|r| r.is(method, path)).count()
    }

    /// Number of POST/PUT/PATCH/DELETE requests (all of them, whatever the write filter says).
    pub fn mutating_count(&self) -> usize {
        self.shared.lock().log.iter().filter(|r| r.mutating).count()
    }

    /// The mutating requests the write filter counts (what `kill_after_write` counts).
    pub fn writes(&self) -> Vec<RequestRecord> {
        self.requests_matching(|r| r.counted_write)
    }

    // ---- kill after the k-th write ----------------------------------------------------------

    /// Which mutating requests count as writes from now on (default: [`default_write_filter`]).
    /// The predicate sees only mutating requests.
    pub fn set_write_filter(&self, filter: impl Fn(&RequestRecord) -> bool + Send + Sync + 'static) {
        self.shared.lock().write_filter = Arc::new(filter);
    }

    /// Arm: when the `k`-th counted write from now has been answered by the API server, SIGKILL
    /// `pid` before relaying the answer, then close the client's connection. Fires once; replaces
    /// an armed trigger.
    pub fn kill_after_write(&self, k: usize, pid: u32) {
        self.arm(k, false, kill(pid));
    }

    /// Like [`FaultProxy::kill_after_write`], counting only the writes the API server accepted
    /// (a refused one, such as a 409 on a stale resourceVersion, changed nothing).
    pub fn kill_after_accepted_write(&self, k: usize, pid: u32) {
        self.arm(k, true, kill(pid));
    }

    /// Like [`FaultProxy::kill_after_write`] with any action (run on the proxy's task, before the
    /// answer is dropped).
    pub fn on_write(&self, k: usize, action: impl Fn() + Send + Sync + 'static) {
        self.arm(k, false, action);
    }

    fn arm(&self, k: usize, accepted_only: bool, action: impl Fn() + Send + Sync + 'static) {
        assert!(k >= 1, "k counts from 1");
        let trigger = WriteTrigger { after: k, seen: 0, accepted_only, action: Arc::new(action) };
        self.shared.lock().trigger = Some(trigger);
    }

    /// Disarm the trigger without firing it.
    pub fn disarm(&self) {
        self.shared.lock().trigger = None;
    }

    /// A trigger is armed and has not fired.
    pub fn armed(&self) -> bool {
        self.shared.lock().trigger.is_some()
    }

    /// The requests that fired the trigger (one per firing; status is the API server's answer
    /// the client never saw).
    pub fn crash_points(&self) -> Vec<RequestRecord> {
        self.shared.lock().crash_points.clone()
    }

    // ---- fault rules ------------------------------------------------------------------------

    /// Append a rule (earlier rules take precedence).
    pub fn add_rule(&self, rule: FaultRule) -> RuleId {
        let mut state = self.shared.lock();
        let id = RuleId(state.next_rule_id);
        state.next_rule_id += 1;
        state.rules.push(RuleEntry { id, rule, hits: 0 });
        id
    }

    /// Delay each chunk of watch responses whose path contains `path_contains` by `delay`.
    pub fn delay_watches(&self, path_contains: &str, delay: Duration) -> RuleId {
        self.add_rule(FaultRule::new(Match::any().watch(true).path_contains(path_contains), Action::Delay(delay)))
    }

    /// Remove a rule (requests it hangs are released and handled anew); false if it was gone.
    pub fn remove_rule(&self, id: RuleId) -> bool {
        let removed = {
            let mut state = self.shared.lock();
            let before = state.rules.len();
            state.rules.retain(|e| e.id != id);
            state.rules.len() != before
        };
        self.shared.rules_changed.send_modify(|n| *n += 1);
        removed
    }

    /// Remove all rules (releasing hung requests).
    pub fn clear_rules(&self) {
        self.shared.lock().rules.clear();
        self.shared.rules_changed.send_modify(|n| *n += 1);
    }

    /// How many requests the rule has applied to; None if it was removed.
    pub fn rule_hits(&self, id: RuleId) -> Option<usize> {
        self.shared.lock().rules.iter().find(|e| e.id == id).map(|e| e.hits)
    }
}

/// SIGKILL `pid`.
fn kill(pid: u32) -> impl Fn() + Send + Sync + 'static {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    move || {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("kubeconfig is written");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("kubeconfig is private");
}

/// Accept connections until aborted; connections live in a JoinSet owned by this task, so
/// aborting it closes them all.
async fn accept_loop(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        connections.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let service = hyper::service::service_fn(move |req| forward::handle(shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
        });
    }
}
