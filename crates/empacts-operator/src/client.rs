//! The operator's Kubernetes client: bounded connect/read/write times and a client-side rate
//! limit, so a slow API server cannot hold a request forever and a burst of reconciles cannot
//! flood it (API priority and fairness would queue, then reject, the excess anyway). Every
//! request that passes the limit is counted and timed (`empacts_kube_requests_total`,
//! `empacts_kube_request_duration_seconds`).

use std::time::Duration;

use kube::client::ClientBuilder;
use tower::limit::RateLimitLayer;

use crate::metrics::{KubeRequestLayer, Metrics};

/// Limits of the client (flags of `empacts run`).
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Sustained requests per second.
    pub qps: f64,
    /// Requests allowed at once before the rate applies.
    pub burst: u32,
    pub connect_timeout: Duration,
    /// No byte for this long fails a response; must exceed the watch bookmark interval (~60 s),
    /// or idle watches break and restart.
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            qps: 200.0,
            burst: 400,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no cluster configuration found (in-cluster service account or KUBECONFIG): {0}; set KUBECONFIG or run in a pod"
    )]
    Config(#[from] kube::config::InferConfigError),
    #[error("building the Kubernetes client failed: {0}; check the cluster's TLS settings in the kubeconfig")]
    Build(#[from] kube::Error),
    #[error("--kube-api-qps and --kube-api-burst must be positive (got qps {qps}, burst {burst})")]
    Limits { qps: f64, burst: u32 },
}

/// The client for the inferred configuration (in-cluster, else KUBECONFIG), with `settings`,
/// its requests counted in `metrics`.
pub async fn build(settings: &ClientSettings, metrics: &Metrics) -> Result<kube::Client, ClientError> {
    let config = kube::Config::infer().await?;
    with_config(config, settings, metrics)
}

pub fn with_config(
    mut config: kube::Config,
    settings: &ClientSettings,
    metrics: &Metrics,
) -> Result<kube::Client, ClientError> {
    if settings.qps <= 0.0 || !settings.qps.is_finite() || settings.burst == 0 {
        return Err(ClientError::Limits { qps: settings.qps, burst: settings.burst });
    }
    config.connect_timeout = Some(settings.connect_timeout);
    config.read_timeout = Some(settings.read_timeout);
    config.write_timeout = Some(settings.write_timeout);
    // Count the read timeout from when a request is sent, not from when its pooled connection
    // went idle.
    config.reset_reader_on_write = true;
    // `burst` requests per window of burst/qps seconds: qps on average, burst at once.
    let window = Duration::from_secs_f64(f64::from(settings.burst) / settings.qps);
    let limit = RateLimitLayer::new(u64::from(settings.burst), window);
    // Layers wrap in order: the rate limit outside, so requests are timed from when they are sent.
    let counted = KubeRequestLayer::new(metrics.kube_requests.clone());
    Ok(ClientBuilder::try_from(config)?.with_layer(&counted).with_layer(&limit).build())
}
