//! A real Prometheus for tests, and an exporter whose traffic a test dictates. Test helpers, not
//! product code.
//!
//! - [`TestExporter`]: HTTP server on `127.0.0.1:<free port>` serving `/metrics` in the Prometheus
//!   text format: the counter `http_requests_total{namespace,app,revision,code}` (`code` "200" or
//!   "500") and the histogram `http_request_duration_seconds{namespace,app,revision}` (the default
//!   Prometheus buckets 0.005 … 10, +Inf). A test sets a [`Traffic`] profile per (namespace, app,
//!   revision); the counters advance continuously with wall time (computed at scrape time), so
//!   `rate()` over them gives the profile's values.
//! - [`TestPrometheus`]: the testbed's Prometheus binary (built by `tests/cluster/build`, path from
//!   `EMPACTS_PROMETHEUS_BIN`) with a generated config in a temp dir: scrape and evaluation
//!   interval 1 s, static targets with `honor_labels: true`, optional rule files, listening on
//!   `127.0.0.1:<free port>`. It can be stopped and restarted on the same port and data dir, and
//!   is killed on drop.
//! - [`promtool_check_rules`]: `promtool check rules` (`EMPACTS_PROMTOOL_BIN`).
//! - [`prometheus_operator_crds`]: the ServiceMonitor and PrometheusRule CRDs of the pinned
//!   Prometheus Operator (`EMPACTS_PROMETHEUS_OPERATOR_CRDS`), not installed by `tests/cluster/up`;
//!   [`prometheus_operator_crd_file`]: the path of one of its CRD YAMLs (the PodMonitor's too).
//!
//! When an `EMPACTS_PROMETHEUS_*` variable is not set, the path is taken from what
//! `tests/cluster/up` exports (it is run once per test process, building what is missing), as
//! [`crate::cluster`] does; a path that does not exist fails the test.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Upper bounds of the histogram buckets (Prometheus' default buckets); `+Inf` is added.
pub const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The traffic of one revision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Traffic {
    /// Requests per second.
    pub rps: f64,
    /// Fraction of the requests answered with code "500" (the rest "200"), 0..=1.
    pub error_ratio: f64,
    /// Latency of every request in seconds: all observations land in the bucket of this value.
    pub latency_seconds: f64,
}

impl Traffic {
    pub fn new(rps: f64, error_ratio: f64, latency_seconds: f64) -> Self {
        assert!(
            rps >= 0.0 && (0.0..=1.0).contains(&error_ratio) && latency_seconds >= 0.0,
            "bad traffic {rps} {error_ratio} {latency_seconds}"
        );
        Traffic { rps, error_ratio, latency_seconds }
    }
}

/// (namespace, app, revision)
type SeriesKey = (String, String, String);

/// One revision's counters: what earlier profiles accumulated, plus the current profile since `since`.
#[derive(Debug, Clone)]
struct Series {
    traffic: Traffic,
    since: Instant,
    ok: f64,
    errors: f64,
    /// Cumulative bucket counts, one per [`BUCKETS`] entry (+Inf is the count).
    buckets: [f64; BUCKETS.len()],
    sum: f64,
}

impl Series {
    /// The counters at `now`.
    fn at(&self, now: Instant) -> Series {
        let n = self.traffic.rps * now.saturating_duration_since(self.since).as_secs_f64();
        let errors = n * self.traffic.error_ratio;
        let mut buckets = self.buckets;
        for (count, le) in buckets.iter_mut().zip(BUCKETS) {
            if self.traffic.latency_seconds <= le {
                *count += n;
            }
        }
        Series {
            traffic: self.traffic,
            since: now,
            ok: self.ok + (n - errors),
            errors: self.errors + errors,
            buckets,
            sum: self.sum + n * self.traffic.latency_seconds,
        }
    }
}

/// See the module documentation. Dropping it stops the server and closes its connections.
pub struct TestExporter {
    addr: SocketAddr,
    series: Arc<Mutex<BTreeMap<SeriesKey, Series>>>,
    task: JoinHandle<()>,
}

impl Drop for TestExporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestExporter {
    /// Start serving on `127.0.0.1:<free port>`, with no series yet.
    pub async fn start() -> TestExporter {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("exporter binds a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let series = Arc::new(Mutex::new(BTreeMap::new()));
        let task = tokio::spawn(serve_metrics(listener, series.clone()));
        TestExporter { addr, series, task }
    }

    /// `127.0.0.1:<port>`, the form of a scrape target.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Set (or change) the traffic of a revision from now on. Its counters keep what they counted
    /// so far and go on from there at the new rates.
    pub fn set(&self, namespace: &str, app: &str, revision: &str, traffic: Traffic) {
        let now = Instant::now();
        let key = (namespace.to_string(), app.to_string(), revision.to_string());
        let mut series = self.series.lock().unwrap();
        let entry = match series.get(&key) {
            Some(old) => Series { traffic, ..old.at(now) },
            None => Series { traffic, since: now, ok: 0.0, errors: 0.0, buckets: [0.0; BUCKETS.len()], sum: 0.0 },
        };
        series.insert(key, entry);
    }

    /// Remove a revision: its series are no longer exposed (Prometheus marks them stale at the
    /// next scrape). Setting it again starts its counters from 0 (a counter reset).
    pub fn remove(&self, namespace: &str, app: &str, revision: &str) {
        self.series.lock().unwrap().remove(&(namespace.to_string(), app.to_string(), revision.to_string()));
    }

    /// What `/metrics` serves now.
    pub fn render(&self) -> String {
        render(&self.series.lock().unwrap(), Instant::now())
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

fn render(series: &BTreeMap<SeriesKey, Series>, now: Instant) -> String {
    use std::fmt::Write;
    let now: Vec<(String, Series)> = series
        .iter()
        .map(|((ns, app, rev), s)| {
            (format!("namespace=\"{}\",app=\"{}\",revision=\"{}\"", escape(ns), escape(app), escape(rev)), s.at(now))
        })
        .collect();
    let mut out = String::new();
    out.push_str("# HELP http_requests_total Requests served, by status code (empacts e2e test exporter).\n");
    out.push_str("# TYPE http_requests_total counter\n");
    for (labels, s) in &now {
        writeln!(out, "http_requests_total{{{labels},code=\"200\"}} {}", s.ok).unwrap();
        writeln!(out, "http_requests_total{{{labels},code=\"500\"}} {}", s.errors).unwrap();
    }
    out.push_str("# HELP http_request_duration_seconds Request latency (empacts e2e test exporter).\n");
    out.push_str("# TYPE http_request_duration_seconds histogram\n");
    for (labels, s) in &now {
        for (count, le) in s.buckets.iter().zip(BUCKETS) {
            writeln!(out, "http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {count}").unwrap();
        }
        let total = s.ok + s.errors;
        writeln!(out, "http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {total}").unwrap();
        writeln!(out, "http_request_duration_seconds_sum{{{labels}}} {}", s.sum).unwrap();
        writeln!(out, "http_request_duration_seconds_count{{{labels}}} {total}").unwrap();
    }
    out
}

/// Serve `/metrics` until aborted; connections live in a JoinSet owned by this task, so aborting
/// it closes them all.
async fn serve_metrics(listener: TcpListener, series: Arc<Mutex<BTreeMap<SeriesKey, Series>>>) {
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
        let series = series.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let series = series.clone();
                async move {
                    let response = if req.uri().path() == "/metrics" {
                        let body = render(&series.lock().unwrap(), Instant::now());
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(Full::new(Bytes::from(body)))
                    } else {
                        Response::builder().status(StatusCode::NOT_FOUND).body(Full::new(Bytes::from("not found\n")))
                    };
                    Ok::<_, Infallible>(response.unwrap())
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}

/// The exports of `tests/cluster/up`, run once per test process.
fn testbed_path(var: &str) -> PathBuf {
    let path = match std::env::var_os(var) {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(
            crate::up_export(var).unwrap_or_else(|| panic!("{var} is not set and tests/cluster/up does not export it")),
        ),
    };
    assert!(path.exists(), "{var}={} does not exist: run tests/cluster/build", path.display());
    path
}

/// The ServiceMonitor and PrometheusRule CRDs of the pinned Prometheus Operator version, parsed
/// (`EMPACTS_PROMETHEUS_OPERATOR_CRDS`). `tests/cluster/up` does not install them: a test that
/// needs them applies them, one that needs a cluster without them must run before that.
pub fn prometheus_operator_crds() -> Vec<CustomResourceDefinition> {
    let dir = testbed_path("EMPACTS_PROMETHEUS_OPERATOR_CRDS");
    ["monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml"]
        .iter()
        .map(|file| {
            let text =
                std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file} in {}: {e}", dir.display()));
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file} is a CustomResourceDefinition: {e}"))
        })
        .collect()
}

/// The path of one CRD YAML of the pinned Prometheus Operator (`EMPACTS_PROMETHEUS_OPERATOR_CRDS`), e.g.
/// `monitoring.coreos.com_podmonitors.yaml`, for tests that apply them with kubectl.
pub fn prometheus_operator_crd_file(file: &str) -> PathBuf {
    let path = testbed_path("EMPACTS_PROMETHEUS_OPERATOR_CRDS").join(file);
    assert!(path.is_file(), "{} is missing: run tests/cluster/build", path.display());
    path
}

/// `promtool check rules <path>`: Ok(its output) when it accepts the file, Err(its output) when not.
pub fn promtool_check_rules(path: &Path) -> Result<String, String> {
    let out = Command::new(testbed_path("EMPACTS_PROMTOOL_BIN"))
        .args(["check", "rules"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("promtool runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(text) } else { Err(text) }
}

/// GET `path` (with query) from `host:port` on a fresh HTTP/1.1 connection; None on any
/// connection error or after 5 s.
async fn http_get(authority: &str, path: &str) -> Option<(StatusCode, String)> {
    let request = async {
        let tcp = TcpStream::connect(authority).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
        tokio::spawn(conn);
        let req = Request::get(path).header("host", authority).body(Full::new(Bytes::new())).ok()?;
        let response = sender.send_request(req).await.ok()?;
        let status = response.status();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), request).await.ok().flatten()
}

/// Percent-encoding of a query parameter value (RFC 3986 unreserved characters kept).
fn encode_query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// See the module documentation.
pub struct TestPrometheus {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl TestPrometheus {
    /// Start Prometheus scraping `targets` (`host:port`, e.g. [`TestExporter::address`]) every
    /// second, evaluating `rule_files` every second, and wait until it is ready. Panics (with the
    /// tail of its log) if it does not get ready within 60 s.
    pub async fn start(targets: &[&str], rule_files: &[&Path]) -> TestPrometheus {
        let binary = tokio::task::spawn_blocking(|| testbed_path("EMPACTS_PROMETHEUS_BIN")).await.unwrap();
        let dir = std::env::temp_dir().join(format!(
            "empacts-prometheus-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("Prometheus temp dir");
        let rule_files: Vec<String> = rule_files
            .iter()
            .map(|p| std::path::absolute(p).expect("absolute rule file path").display().to_string())
            .collect();
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files,
            "scrape_configs": [{
                "job_name": "empacts-e2e",
                "honor_labels": true,
                "fallback_scrape_protocol": "PrometheusText0.0.4",
                "static_configs": [{"targets": targets}],
            }],
        });
        std::fs::write(dir.join("prometheus.yml"), serde_yaml::to_string(&config).unwrap()).expect("config is written");
        let mut prometheus = TestPrometheus { binary, dir, port: crate::free_port(), child: None };
        prometheus.spawn();
        prometheus.wait_ready().await;
        prometheus
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let child = Command::new(&self.binary)
            .arg(format!("--config.file={}", self.dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", self.dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--web.enable-lifecycle")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        self.child = Some(child);
    }

    /// `http://127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The temp dir: `prometheus.yml`, `data/`, `prometheus.log`. Removed on drop, unless the
    /// test is failing.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("prometheus.log")
    }

    /// The last `lines` lines of Prometheus' log (all its runs).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Wait until `/-/ready` answers 200; panics with the log's tail if the process exits or
    /// 60 s pass.
    pub async fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some((StatusCode::OK, _)) = self.get("/-/ready").await {
                return;
            }
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait().ok().flatten().map(|s| s.to_string()),
                None => Some("not running (stopped)".to_string()),
            };
            if let Some(status) = exited {
                panic!("Prometheus exited ({status}) before it was ready; its log:\n{}", self.log_tail(40));
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!("Prometheus was not ready after 60 s; its log:\n{}", self.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kill the process (SIGKILL, like a crash) and wait for it. Queries fail until [`Self::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop if running, start again on the same port with the same config and data dir, and wait
    /// until ready.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_ready().await;
    }

    /// Re-read the config and the rule files (`POST /-/reload`); true if Prometheus accepted them.
    pub async fn reload(&self) -> bool {
        let request = async {
            let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
            tokio::spawn(conn);
            let req = Request::post("/-/reload").header("host", "127.0.0.1").body(Full::new(Bytes::new())).ok()?;
            Some(sender.send_request(req).await.ok()?.status())
        };
        tokio::time::timeout(Duration::from_secs(10), request).await.ok().flatten() == Some(StatusCode::OK)
    }

    /// GET a path of Prometheus' HTTP server; None if it does not answer.
    pub async fn get(&self, path: &str) -> Option<(StatusCode, String)> {
        http_get(&format!("127.0.0.1:{}", self.port), path).await
    }

    /// The JSON `data` of a successful `/api/v1/...` answer.
    async fn api(&self, path: &str) -> Option<serde_json::Value> {
        let (status, body) = self.get(path).await?;
        let mut json: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == StatusCode::OK && json["status"] == "success").then(|| json["data"].take())
    }

    /// Every sample of an instant query (`/api/v1/query`) now: its labels and value. None if
    /// Prometheus does not answer or refuses the query; a scalar result has no labels.
    pub async fn query_vector(&self, promql: &str) -> Option<Vec<(BTreeMap<String, String>, f64)>> {
        let data = self.api(&format!("/api/v1/query?query={}", encode_query_value(promql))).await?;
        let value = |v: &serde_json::Value| v.get(1)?.as_str()?.parse::<f64>().ok();
        match data["resultType"].as_str()? {
            "vector" => data["result"]
                .as_array()?
                .iter()
                .map(|sample| {
                    let labels = serde_json::from_value(sample["metric"].clone()).ok()?;
                    Some((labels, value(&sample["value"])?))
                })
                .collect(),
            "scalar" => Some(vec![(BTreeMap::new(), value(&data["result"])?)]),
            _ => None,
        }
    }

    /// The value of an instant query: its first sample (NaN included, e.g. 0/0). None if
    /// Prometheus does not answer, refuses the query or the result is empty.
    pub async fn query(&self, promql: &str) -> Option<f64> {
        self.query_vector(promql).await?.first().map(|(_, v)| *v)
    }

    /// Names of the alerting rules Prometheus has loaded (`/api/v1/rules`); empty if it does not
    /// answer.
    pub async fn rules_loaded(&self) -> Vec<String> {
        let Some(data) = self.api("/api/v1/rules?type=alert").await else { return Vec::new() };
        let groups = data["groups"].as_array().cloned().unwrap_or_default();
        groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["type"] == "alerting")
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for TestPrometheus {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("Prometheus of the failed test: {} (log: {})", self.dir.display(), self.log_path().display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_advance_with_time_and_keep_their_totals_across_profile_changes() {
        let t0 = Instant::now();
        let key = ("ns".to_string(), "web".to_string(), "r\"1".to_string());
        let series = Series {
            traffic: Traffic::new(10.0, 0.1, 0.3),
            since: t0,
            ok: 0.0,
            errors: 0.0,
            buckets: [0.0; BUCKETS.len()],
            sum: 0.0,
        };
        let after = series.at(t0 + Duration::from_secs(2));
        assert!((after.ok - 18.0).abs() < 1e-9 && (after.errors - 2.0).abs() < 1e-9, "{after:?}");
        // 0.3 s: not in le=0.25, in le=0.5 and above
        assert_eq!(after.buckets[5], 0.0);
        assert!((after.buckets[6] - 20.0).abs() < 1e-9 && (after.buckets[10] - 20.0).abs() < 1e-9);
        assert!((after.sum - 6.0).abs() < 1e-9);

        let changed = Series { traffic: Traffic::new(5.0, 0.0, 0.01), ..after };
        let later = changed.at(t0 + Duration::from_secs(4));
        assert!((later.ok - 28.0).abs() < 1e-9 && (later.errors - 2.0).abs() < 1e-9, "{later:?}");
        assert!((later.buckets[1] - 10.0).abs() < 1e-9 && (later.buckets[6] - 30.0).abs() < 1e-9);

        let text = render(&BTreeMap::from([(key, series)]), t0 + Duration::from_secs(1));
        assert!(
            text.contains("http_requests_total{namespace=\"ns\",app=\"web\",revision=\"r\\\"1\",code=\"500\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("revision=\"r\\\"1\",le=\"+Inf\"} 10\n"), "{text}");
        assert!(
            text.contains("http_request_duration_seconds_count{namespace=\"ns\",app=\"web\",revision=\"r\\\"1\"} 10\n"),
            "{text}"
        );
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode_query_value("sum(x{a=~\"5..\"}[30s]) / 2"),
            "sum%28x%7Ba%3D~%225..%22%7D%5B30s%5D%29%20%2F%202"
        );
    }
}
