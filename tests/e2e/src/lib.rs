//! Test harness for end-to-end tests against the real local control plane.
//!
//! - [`cluster`] starts the control plane once per test binary (`tests/cluster/up` is
//!   idempotent and returns at once when it already runs), installs the CRD and hands out
//!   a client;
//! - [`TestNamespace`] gives each test its own namespace;
//! - [`Operator`] runs the operator in-process, scoped to that namespace, so tests do not
//!   see each other's apps and can stop and restart it;
//! - [`prometheus`]: a real Prometheus ([`TestPrometheus`]) scraping a test exporter whose traffic
//!   the test sets ([`TestExporter`]), started on demand (`tests/cluster/up` only builds it).
//!
//! kwok conventions (tests/cluster/README.md): an image containing `fail-rollout` never gets
//! Ready; a Job pod whose image contains `fail-migration` fails; everything else becomes
//! Ready (Deployments) or Succeeded (Jobs).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use empacts_api::EmpactsApp;
use empacts_operator::context::Context;
use empacts_operator::controller::{self, Scope};
use empacts_operator::metrics::Metrics;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, CustomResourceExt, ResourceExt};
use tokio::sync::{OnceCell, oneshot};

pub use empacts_api as api;

pub mod bench;
pub mod fault_proxy;
pub mod helm;
pub mod prometheus;

pub use prometheus::{TestExporter, TestPrometheus, Traffic, prometheus_operator_crds, promtool_check_rules};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root exists")
}

/// What `tests/cluster/up` exported.
#[derive(Debug, Clone)]
pub struct ClusterEnv {
    pub kubeconfig: PathBuf,
    pub bin_dir: PathBuf,
}

impl ClusterEnv {
    /// A command for one of the control plane's tools (kubectl, helm) with KUBECONFIG set.
    pub fn tool(&self, name: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.bin_dir.join(name));
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }
}

static CLUSTER: OnceCell<ClusterEnv> = OnceCell::const_new();

/// Start (or reuse) the control plane, install the CRD, return a client. Each test gets its
/// own client: a client's connections belong to the runtime of the test that made it.
pub async fn cluster() -> (ClusterEnv, Client) {
    let env = CLUSTER
        .get_or_init(|| async {
            init_logging();
            let env = start_cluster().await;
            let client = client_for(&env.kubeconfig).await;
            install_crd(&client).await;
            // Operator processes without a Lease namespace keep their config-hash key in the
            // kubeconfig's namespace: create it once up front, so no test counts its creation
            // among the writes of a reconcile.
            empacts_operator::hash_key::load_or_create(&client, "default").await.expect("config-hash key");
            env
        })
        .await
        .clone();
    let client = client_for(&env.kubeconfig).await;
    (env, client)
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("EMPACTS_TEST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

async fn start_cluster() -> ClusterEnv {
    tokio::task::spawn_blocking(|| ClusterEnv {
        kubeconfig: up_export("KUBECONFIG").expect("tests/cluster/up exports KUBECONFIG").into(),
        bin_dir: up_export("PATH").expect("tests/cluster/up exports PATH").into(),
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// What `tests/cluster/up` printed (run once per test process; blocking).
fn up_exports() -> &'static str {
    static EXPORTS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    EXPORTS.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(repo_root().join("tests/cluster/up"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("tests/cluster/up runs");
        assert!(out.status.success(), "tests/cluster/up failed (see its output above)");
        String::from_utf8(out.stdout).expect("exports are UTF-8")
    })
}

/// The value of `export NAME='value'` printed by `tests/cluster/up` (for PATH: the testbed's bin
/// dir, the part before the first `:`). Runs `up` on first use (blocking).
pub fn up_export(name: &str) -> Option<String> {
    let value = up_exports().lines().find_map(|l| l.strip_prefix(&format!("export {name}=")))?;
    let value = if name == "PATH" { value.split(':').next()? } else { value };
    Some(value.trim_matches(|c| c == '\'' || c == '"').to_string())
}

pub async fn client_for(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig parses");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("kubeconfig is usable");
    Client::try_from(config).expect("client builds")
}

async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = EmpactsApp::crd();
    let name = crd.name_any();
    crds.patch(&name, &PatchParams::apply("empacts-e2e").force(), &Patch::Apply(&crd)).await.expect("CRD applies");
    wait_until("CRD established", Duration::from_secs(30), || {
        let crds = crds.clone();
        let name = name.clone();
        async move {
            let crd = crds.get(&name).await.ok()?;
            let established = crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        }
    })
    .await;
}

/// Poll `check` every 200 ms until it returns Some, or panic after `timeout` naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A namespace of one test. `cleanup` deletes it; if the test fails first, dropping it does
/// (through kubectl, since the test's runtime is unwinding), so no namespace is left behind.
pub struct TestNamespace {
    pub name: String,
    client: Client,
    cleaned: bool,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let suffix: u32 = rand::random::<u32>() % 1_000_000;
        let name = format!("{prefix}-{suffix:06}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("namespace creates");
        TestNamespace { name, client: client.clone(), cleaned: false }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub async fn cleanup(mut self) {
        self.cleaned = true;
        let _ = Api::<Namespace>::all(self.client.clone()).delete(&self.name, &DeleteParams::default()).await;
    }

    /// [`Self::cleanup`], then wait until the namespace and everything in it are gone (the
    /// garbage collector and the namespace controller take minutes for thousands of objects):
    /// a benchmark's next phase then does not share the control plane with that work.
    pub async fn cleanup_and_wait(self, timeout: Duration) {
        let (client, name) = (self.client.clone(), self.name.clone());
        self.cleanup().await;
        let namespaces = Api::<Namespace>::all(client);
        let started = std::time::Instant::now();
        while started.elapsed() < timeout {
            if matches!(namespaces.get_opt(&name).await, Ok(None)) {
                println!("namespace {name} gone after {:.1} s", started.elapsed().as_secs_f64());
                return;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        println!("namespace {name} still terminating after {:.0} s; going on", timeout.as_secs_f64());
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        if let Some(env) = CLUSTER.get() {
            let _ = env.tool("kubectl").args(["delete", "namespace", &self.name, "--wait=false"]).output();
        }
    }
}

/// The operator running in this process, watching one namespace.
pub struct Operator {
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub metrics: Arc<Metrics>,
    pub ctx: Arc<Context>,
}

impl Operator {
    pub async fn start(client: &Client, namespace: &str) -> Self {
        Self::start_with_settings(client, namespace, Default::default()).await
    }

    pub async fn start_with_settings(
        client: &Client,
        namespace: &str,
        settings: empacts_operator::context::Settings,
    ) -> Self {
        Self::start_scoped(client, Scope::namespace(namespace), namespace, settings).await
    }

    /// The operator watching `scope`, its config-hash key in `own_namespace`.
    pub async fn start_scoped(
        client: &Client,
        scope: Scope,
        own_namespace: &str,
        settings: empacts_operator::context::Settings,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        let key = empacts_operator::hash_key::load_or_create(client, own_namespace).await.expect("config-hash key");
        let instance = Some(format!("e2e-{own_namespace}"));
        let ctx = Arc::new(Context::with_settings(client.clone(), metrics.clone(), instance, key, settings));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(controller::run(ctx.clone(), scope, async move {
            let _ = rx.await;
        }));
        Operator { shutdown: Some(tx), task, metrics, ctx }
    }

    /// Graceful stop: in-flight reconciles finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), &mut self.task).await;
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Parse an EmpactsApp from YAML.
pub fn app_yaml(yaml: &str) -> EmpactsApp {
    serde_yaml::from_str(yaml).expect("test app YAML parses")
}

/// Create or update an app the way `kubectl apply --server-side` (or a GitOps tool) does.
pub async fn apply_app(ns: &TestNamespace, app: &EmpactsApp) -> EmpactsApp {
    let api: Api<EmpactsApp> = ns.api();
    let mut value = serde_json::to_value(app).unwrap();
    value.as_object_mut().unwrap().remove("status");
    api.patch(&app.name_any(), &PatchParams::apply("e2e-gitops").force(), &Patch::Apply(&value))
        .await
        .expect("app applies")
}

/// Wait until the app's status satisfies `pred`; returns the app.
pub async fn wait_app(
    ns: &TestNamespace,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&EmpactsApp) -> bool,
) -> EmpactsApp {
    let api: Api<EmpactsApp> = ns.api();
    let mut last: Option<EmpactsApp> = None;
    let start = Instant::now();
    loop {
        if let Ok(app) = api.get(name).await {
            if pred(&app) {
                return app;
            }
            last = Some(app);
        }
        if start.elapsed() > timeout {
            let status = last.and_then(|a| a.status).map(|s| serde_yaml::to_string(&s).unwrap());
            panic!("timed out after {timeout:?} waiting for {what}; last status:\n{}", status.unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Phase of an app's status.
pub fn phase(app: &EmpactsApp) -> Option<empacts_api::Phase> {
    app.status.as_ref().and_then(|s| s.phase)
}

/// The status describes the current generation (not a stale one from before an update).
pub fn observed_current(app: &EmpactsApp) -> bool {
    app.status.as_ref().and_then(|s| s.observed_generation) == app.metadata.generation
}

/// A condition of an app's status.
pub fn condition<'a>(
    app: &'a EmpactsApp,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    app.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// The `empacts` binary, built once per test process so it is never stale (a no-op build when
/// `cargo test --workspace` already built it). Benchmarks, which run from target/release, get a
/// release build.
/// `EMPACTS_E2E_BINARY` runs the process tests against another build instead (e.g. an earlier
/// one, to see a test fail without a fix).
pub fn empacts_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(other) = std::env::var_os("EMPACTS_E2E_BINARY") {
                return PathBuf::from(other);
            }
            let exe = std::env::current_exe().expect("test executable path");
            let release = exe.components().any(|c| c.as_os_str() == "release");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = std::process::Command::new(cargo);
            cmd.args(["build", "--locked", "-p", "empacts-cli", "--bin", "empacts"]).current_dir(repo_root());
            if release {
                cmd.arg("--release");
            }
            assert!(cmd.status().expect("cargo build runs").success(), "building the empacts binary failed");
            let dir =
                std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
            dir.join(if release { "release" } else { "debug" }).join("empacts")
        })
        .clone()
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The sample lines of metric `name` (no HELP/TYPE lines, no other metric with that prefix).
pub fn metric_lines<'a>(body: &'a str, name: &str) -> Vec<&'a str> {
    body.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .collect()
}

/// An `empacts run` child process (killed on drop).
pub struct OperatorProcess {
    pub child: std::process::Child,
    pub metrics_port: u16,
    pub name: String,
}

impl OperatorProcess {
    /// Start `empacts run` against the test cluster, watching `namespace`, electing a leader
    /// through Lease `lease` in that namespace.
    pub fn start(env: &ClusterEnv, name: &str, namespace: &str, lease: &str, log: &Path) -> Self {
        Self::start_with_kubeconfig(&env.kubeconfig, name, namespace, lease, log)
    }

    /// GET a path of the metrics server; None while it is not up.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((code, body))
    }

    /// Value of a metric sample line, e.g. `empacts_leader`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        body.lines().find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
    }

    /// Sum of every series of a metric (all label values); None when /metrics is not up.
    pub async fn metric_sum(&self, name: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await?;
        Some(metric_lines(&body, name).iter().filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum())
    }

    pub fn signal(&self, signal: &str) {
        let _ = std::process::Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write a kubeconfig at `path` that authenticates as ServiceAccount `namespace/service_account`
/// with a bearer token from `kubectl create token` (valid 1 h), against the test cluster's API
/// server (server URL and CA taken from the admin kubeconfig). Clients using it get exactly
/// that ServiceAccount's RBAC.
pub fn service_account_kubeconfig(env: &ClusterEnv, namespace: &str, service_account: &str, path: &Path) {
    let out = env
        .tool("kubectl")
        .args(["create", "token", service_account, "-n", namespace, "--duration=1h"])
        .output()
        .expect("kubectl create token runs");
    assert!(out.status.success(), "kubectl create token failed: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).expect("token is UTF-8").trim().to_string();
    assert!(!token.is_empty(), "kubectl create token printed a token");

    let admin = Kubeconfig::read_from(&env.kubeconfig).expect("admin kubeconfig parses");
    let context_name = admin.current_context.clone().expect("admin kubeconfig has a current context");
    let cluster_name = admin
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .expect("admin kubeconfig's current context exists");
    let cluster = admin
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .expect("admin kubeconfig's cluster exists");
    let mut cluster_entry = serde_json::json!({"server": cluster.server.expect("cluster has a server URL")});
    if let Some(data) = cluster.certificate_authority_data {
        cluster_entry["certificate-authority-data"] = data.into();
    } else if let Some(file) = cluster.certificate_authority {
        cluster_entry["certificate-authority"] = file.into();
    }
    let user = format!("system:serviceaccount:{namespace}:{service_account}");
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster_name, "cluster": cluster_entry}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "service-account", "context": {"cluster": cluster_name, "user": user, "namespace": namespace}}],
        "current-context": "service-account",
    });
    std::fs::write(path, serde_yaml::to_string(&config).unwrap()).expect("kubeconfig is written");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("kubeconfig is private");
    }
}

impl OperatorProcess {
    /// A single `empacts run` replica without leader election (so a restarted process starts
    /// reconciling at once), watching `namespace`, talking to the API server through `kubeconfig`.
    pub fn start_single(kubeconfig: &Path, name: &str, namespace: &str, log: &Path) -> Self {
        Self::start_single_with(&empacts_binary(), kubeconfig, name, namespace, log)
    }

    /// [`OperatorProcess::start_single`] with another build of the binary.
    pub fn start_single_with(binary: &Path, kubeconfig: &Path, name: &str, namespace: &str, log: &Path) -> Self {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        Self::spawn(binary, kubeconfig, name, log, &["--namespace", namespace, "--leader-elect=false"])
    }

    /// [`OperatorProcess::start_single`] with more `empacts run` flags.
    pub fn start_single_args(kubeconfig: &Path, name: &str, namespace: &str, log: &Path, extra: &[&str]) -> Self {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let mut args = vec!["--namespace", namespace, "--leader-elect=false"];
        args.extend_from_slice(extra);
        Self::spawn(&empacts_binary(), kubeconfig, name, log, &args)
    }

    /// A replica electing a leader through Lease `lease` in `namespace` (also the watched one),
    /// through `kubeconfig` (e.g. a fault proxy's), with extra environment (the leader-election
    /// timings are read from `EMPACTS_LEASE_*`, so an older build ignores what it lacks).
    pub fn start_elected(
        kubeconfig: &Path,
        name: &str,
        namespace: &str,
        lease: &str,
        log: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let log = std::fs::File::create(log).expect("log file");
        let args = ["--namespace", namespace, "--lease-namespace", namespace, "--lease-name", lease];
        Self::spawn_env(&empacts_binary(), kubeconfig, name, log, &args, env)
    }

    /// `binary run` with `args`, metrics on a free loopback port, JSON logs to `log`.
    fn spawn(binary: &Path, kubeconfig: &Path, name: &str, log: std::fs::File, args: &[&str]) -> Self {
        Self::spawn_env(binary, kubeconfig, name, log, args, &[])
    }

    fn spawn_env(
        binary: &Path,
        kubeconfig: &Path,
        name: &str,
        log: std::fs::File,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let metrics_port = free_port();
        let child = std::process::Command::new(binary)
            .arg("run")
            .args(args)
            .args(["--instance", name, "--metrics-addr", &format!("127.0.0.1:{metrics_port}"), "--log-format", "json"])
            .env("KUBECONFIG", kubeconfig)
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("empacts run starts");
        OperatorProcess { child, metrics_port, name: name.to_string() }
    }

    /// The process has exited (or was killed).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Like [`OperatorProcess::start`], but the process authenticates with `kubeconfig` (e.g. one
    /// from [`service_account_kubeconfig`]) instead of the admin kubeconfig.
    pub fn start_with_kubeconfig(kubeconfig: &Path, name: &str, namespace: &str, lease: &str, log: &Path) -> Self {
        let log = std::fs::File::create(log).expect("log file");
        let args =
            ["--namespace", namespace, "--lease-namespace", namespace, "--lease-name", lease, "--lease-duration", "10"];
        Self::spawn(&empacts_binary(), kubeconfig, name, log, &args)
    }
}
