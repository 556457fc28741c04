//! kubectl-compatible global flags and the client they select.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Flags every verb takes, spelled as kubectl spells them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct GlobalArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace of the app (default: the context's namespace).
    #[arg(short, long, global = true, value_name = "NS")]
    pub namespace: Option<String>,
    /// `get`/`list`: apps of every namespace.
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// Print the full error chain (with RUST_BACKTRACE=1, a backtrace too).
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

/// Seconds to connect before the cluster counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for the selected kubeconfig and context, and the namespace to use.
pub async fn connect(global: &GlobalArgs) -> anyhow::Result<(Client, String)> {
    let options = KubeConfigOptions { context: global.context.clone(), cluster: None, user: None };
    let mut config = match (&global.kubeconfig, &global.context) {
        (Some(path), _) => {
            let kubeconfig =
                Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await.context("loading the kubeconfig")?
        }
        (None, Some(_)) => Config::from_kubeconfig(&options).await.context("loading the kubeconfig")?,
        (None, None) => Config::infer().await.context("loading the kubeconfig (set KUBECONFIG or --kubeconfig)")?,
    };
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    let namespace = global.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("building the client")?;
    Ok((client, namespace))
}
