//! `empacts` (also usable as `kubectl-empacts`): the operator binary and its companion CLI.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use empacts_api::EmpactsApp;
use empacts_cli::{commands, run};
use kube::CustomResourceExt;

#[derive(Parser, Debug)]
#[command(name = "empacts", version, about = "EmpactsApp operator and CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the `run` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator (reconciles EmpactsApps until SIGTERM/SIGINT).
    Run(run::RunArgs),
    /// Show an app's phase, revisions, replicas, migration and conditions.
    Status(AppArgs),
    /// Show an app's revision history, newest first (* marks what runs now).
    History(AppArgs),
    /// Roll back to a recorded good revision exactly as an automatic rollback does (newer
    /// migrations undone first with their rollbackCommand); the spec stays as Git has it and the
    /// rollback holds until the spec changes or `empacts retry`.
    Rollback {
        #[command(flatten)]
        app: AppArgs,
        /// Revision hash or number (see `empacts history`).
        #[arg(long)]
        to: String,
        /// Instead, rewrite the spec to the recorded one (no down-migration runs; commit the
        /// same change to Git). Leaves no field ownership that conflicts with a later apply.
        #[arg(long)]
        rewrite_spec: bool,
    },
    /// Retry a failed revision (migration or rollout) without changing the spec.
    Retry(AppArgs),
    /// Move a canary to its next step now (skipping the pause), or with --full past every step.
    Promote {
        #[command(flatten)]
        app: AppArgs,
        /// Skip every remaining step: the stable Deployment takes the new revision.
        #[arg(long)]
        full: bool,
    },
    /// Abort a canary: its pods stop, the stable version keeps serving, migrations done for
    /// it are undone with their rollbackCommand; it holds until the spec changes or `empacts retry`.
    Abort(AppArgs),
    /// Regenerate every operator-generated secret of the app; pods roll to pick them up.
    RotateSecret(AppArgs),
    /// Print the EmpactsApp CustomResourceDefinition as YAML.
    Crd,
    /// Print the Kubernetes objects the operator would create for an app, without a cluster.
    Render {
        /// EmpactsApp YAML file (multi-document allowed); `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace for apps that do not set one.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
}

#[derive(clap::Args, Debug)]
struct AppArgs {
    /// EmpactsApp name.
    name: String,
    /// Namespace (default: the kubeconfig context's namespace).
    #[arg(short, long)]
    namespace: Option<String>,
}

fn client_command<F, Fut>(app: AppArgs, f: F) -> anyhow::Result<()>
where
    F: FnOnce(kube::Client, String, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let client = kube::Client::try_default().await.context("connecting to the cluster (check KUBECONFIG)")?;
        let ns = app.namespace.unwrap_or_else(|| client.default_namespace().to_string());
        let out = f(client, ns, app.name).await?;
        print!("{out}");
        Ok(())
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Status(app) => {
            client_command(app, |c, ns, name| async move { commands::status(&c, &ns, &name).await })
        }
        Command::History(app) => {
            client_command(app, |c, ns, name| async move { commands::history(&c, &ns, &name).await })
        }
        Command::Rollback { app, to, rewrite_spec } => client_command(app, move |c, ns, name| async move {
            if rewrite_spec {
                let rev = commands::rewrite_spec(&c, &ns, &name, &to).await?;
                return Ok(format!("{ns}/{name}: spec rewritten to revision {rev}; the operator rolls it out\n"));
            }
            let rev = commands::rollback(&c, &ns, &name, &to).await?;
            Ok(format!(
                "{ns}/{name}: rollback to revision {rev} requested; see `empacts status` (it holds until the spec changes or `empacts retry`)\n"
            ))
        }),
        Command::Retry(app) => client_command(app, |c, ns, name| async move {
            commands::retry(&c, &ns, &name).await?;
            Ok(format!("{ns}/{name}: retry requested\n"))
        }),
        Command::Promote { app, full } => client_command(app, move |c, ns, name| async move {
            commands::promote(&c, &ns, &name, full).await?;
            let what = if full { "full promotion" } else { "promotion to the next step" };
            Ok(format!("{ns}/{name}: {what} requested; see `empacts status`\n"))
        }),
        Command::Abort(app) => client_command(app, |c, ns, name| async move {
            commands::abort(&c, &ns, &name).await?;
            Ok(format!("{ns}/{name}: abort requested; see `empacts status`\n"))
        }),
        Command::RotateSecret(app) => client_command(app, |c, ns, name| async move {
            commands::rotate_secrets(&c, &ns, &name).await?;
            Ok(format!("{ns}/{name}: rotation of generated secrets requested\n"))
        }),
        Command::Crd => {
            print!("{}", crd_yaml());
            Ok(())
        }
        Command::Render { file, namespace } => {
            let input = read_input(&file)?;
            let out = empacts_operator::render::render_yaml(&input, &namespace)
                .with_context(|| format!("rendering {}", file.display()))?;
            print!("{out}");
            Ok(())
        }
    }
}

/// The CRD exactly as committed under deploy/crds/.
fn crd_yaml() -> String {
    serde_yaml::to_string(&EmpactsApp::crd()).expect("the CRD serializes")
}

fn read_input(file: &PathBuf) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}
