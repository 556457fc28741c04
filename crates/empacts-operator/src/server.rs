//! HTTP endpoints for Prometheus and the kubelet: /metrics, /healthz, /readyz.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;

/// What /readyz reports: a standby replica is ready (it can take over); the leader is
/// ready once its caches have synced.
#[derive(Default)]
pub struct Readiness {
    pub leader: AtomicBool,
    pub caches_synced: AtomicBool,
    pub standby_ok: AtomicBool,
    /// This replica led and lost its Lease: /healthz fails until the process exits.
    pub lease_lost: AtomicBool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        if self.leader.load(Ordering::Acquire) {
            self.caches_synced.load(Ordering::Acquire)
        } else {
            self.standby_ok.load(Ordering::Acquire)
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

async fn healthz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.readiness.lease_lost.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "lost the leader lease")
    } else {
        (StatusCode::OK, "ok")
    }
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.readiness.ready() { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") }
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
