//! `empacts run`: the operator process.

use std::sync::Arc;

use clap::Args;
use empacts_operator::context::Context;
use empacts_operator::controller::{self, Scope};
use empacts_operator::metrics::Metrics;
use tracing_subscriber::EnvFilter;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "EMPACTS_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Log filter, e.g. `info` or `empacts_operator=debug,info`.
    #[arg(long, env = "EMPACTS_LOG", default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "EMPACTS_LOG_FORMAT", value_parser = ["json", "text"], default_value = "json")]
    pub log_format: String,
    /// Name of this replica (Events' reporting instance); defaults to the pod name.
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(&args.log_level, &args.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let client = kube::Client::try_default().await?;
        let metrics = Arc::new(Metrics::new());
        let ctx = Arc::new(Context::new(client, metrics, args.instance));
        controller::run(ctx, Scope { namespace: args.namespace }, shutdown_signal()).await;
        Ok(())
    })
}

fn init_logging(level: &str, format: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(level)?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().flatten_event(true).with_current_span(false).init();
    } else {
        builder.init();
    }
    Ok(())
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutdown requested; finishing in-flight reconciles");
}
