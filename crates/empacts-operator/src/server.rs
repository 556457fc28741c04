//! HTTP endpoints for Prometheus and the kubelet: /metrics, /healthz, /readyz.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::health::{Progress, Watches};
use crate::metrics::Metrics;

/// Default of `--stall-timeout`: a leader that finished no reconcile for this long while apps
/// wait fails /healthz, and the kubelet restarts it.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(300);

/// What /healthz and /readyz report. A standby replica is ready (it can take over); the
/// leader is ready while every watch behind its caches is synced and working.
pub struct Readiness {
    pub leader: AtomicBool,
    pub standby_ok: AtomicBool,
    /// Set by leader election when this replica lost its Lease but is still running.
    pub lease_lost: AtomicBool,
    pub progress: Progress,
    pub watches: Watches,
    stall_timeout_ms: AtomicU64,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            leader: AtomicBool::new(false),
            standby_ok: AtomicBool::new(false),
            lease_lost: AtomicBool::new(false),
            progress: Progress::default(),
            watches: Watches::default(),
            stall_timeout_ms: AtomicU64::new(DEFAULT_STALL_TIMEOUT.as_millis() as u64),
        }
    }
}

impl Readiness {
    pub fn set_stall_timeout(&self, timeout: Duration) {
        self.stall_timeout_ms.store(timeout.as_millis() as u64, Ordering::Release);
    }

    pub fn ready(&self) -> Result<(), String> {
        if !self.leader.load(Ordering::Acquire) {
            return if self.standby_ok.load(Ordering::Acquire) { Ok(()) } else { Err("starting".into()) };
        }
        let not_ready = self.watches.not_ready();
        match (self.watches.any(), not_ready.is_empty()) {
            (false, _) => Err("the controller has not started its watches".into()),
            (true, true) => Ok(()),
            (true, false) => Err(format!("watches not synced or failing: {}", not_ready.join(", "))),
        }
    }

    pub fn healthy(&self) -> Result<(), String> {
        if self.lease_lost.load(Ordering::Acquire) {
            return Err("lost the leader lease and still running".into());
        }
        if !self.leader.load(Ordering::Acquire) {
            return Ok(());
        }
        let timeout = Duration::from_millis(self.stall_timeout_ms.load(Ordering::Acquire));
        match self.progress.stalled(Instant::now(), timeout) {
            Some(for_) => Err(format!(
                "no reconcile finished for {}s while apps wait (stall timeout {}s)",
                for_.as_secs(),
                timeout.as_secs()
            )),
            None => Ok(()),
        }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

pub fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, readiness })
}

async fn metrics_handler(
    State(state): State<AppState>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.readiness.ready() {
        Ok(()) => (StatusCode::OK, "ok".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
    }
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.readiness.healthy() {
        Ok(()) => (StatusCode::OK, "ok".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("unhealthy: {why}")),
    }
}

/// Serve until `shutdown` resolves. Returns the bound address through `bound` (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    bound: tokio::sync::oneshot::Sender<SocketAddr>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let _ = bound.send(listener.local_addr()?);
    axum::serve(listener, router(metrics, readiness)).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn status(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.lines().next().unwrap_or_default().to_string()
    }

    #[tokio::test]
    async fn healthz_fails_once_the_lease_is_lost() {
        let readiness = Arc::new(Readiness::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let addr = "127.0.0.1:0".parse().unwrap();
        tokio::spawn(serve(addr, Arc::new(Metrics::new()), readiness.clone(), tx, std::future::pending()));
        let addr = rx.await.unwrap();
        assert!(status(addr, "/healthz").await.contains(" 200 "));
        readiness.lease_lost.store(true, Ordering::Release);
        assert!(status(addr, "/healthz").await.contains(" 503 "));
    }
}
