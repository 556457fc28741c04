//! The user verbs shared by `kubectl-empacts` and `empacts`, and how they run.

use std::io::{BufRead as _, IsTerminal as _, Read as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;

use crate::connect::{GlobalArgs, connect};
use crate::error::{CliError, classify};
use crate::output::{self, Format};
use crate::{commands, diff, watch};

/// Which binary runs: the plugin's `status` exits 1 for an unhealthy app and `rotate-secret`
/// asks first; `empacts` keeps its earlier behaviour for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Operator,
    Plugin,
}

impl Flavor {
    /// How the user invokes us, for hints in messages.
    pub fn invocation(self) -> &'static str {
        match self {
            Flavor::Operator => "empacts",
            Flavor::Plugin => "kubectl empacts",
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct AppArg {
    /// EmpactsApp name.
    pub name: String,
}

#[derive(clap::Args, Debug, Clone)]
pub struct OutputArg {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

#[derive(Subcommand, Debug, Clone)]
pub enum UserCommand {
    /// List apps: phase, revision, ready pods, canary step or migration, age (`-A`: every namespace).
    #[command(visible_alias = "list")]
    Get {
        /// Only this app.
        name: Option<String>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Show an app's phase, revisions, replicas, migration and conditions; `--watch` follows a
    /// rollout until the app is Ready (exit 0) or fails (exit 1).
    Status {
        #[command(flatten)]
        app: AppArg,
        #[command(flatten)]
        output: OutputArg,
        /// Follow the rollout live until Ready or failed, like `kubectl rollout status`.
        #[arg(short, long, conflicts_with = "output")]
        watch: bool,
        /// With --watch: give up after this long (exit 1), e.g. 90s, 10m, 1h.
        #[arg(long, default_value = "10m", value_parser = watch::parse_timeout)]
        timeout: Duration,
    },
    /// Show an app's revision history, newest first (* marks what runs now).
    History {
        #[command(flatten)]
        app: AppArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Roll back to a recorded good revision exactly as an automatic rollback does (newer
    /// migrations undone first with their rollbackCommand); the spec stays as Git has it and the
    /// rollback holds until the spec changes or `retry`.
    Rollback {
        #[command(flatten)]
        app: AppArg,
        /// Revision hash or number (see `history`).
        #[arg(long)]
        to: String,
        /// Instead, rewrite the spec to the recorded one (no down-migration runs; commit the
        /// same change to Git). Leaves no field ownership that conflicts with a later apply.
        #[arg(long)]
        rewrite_spec: bool,
    },
    /// Retry a failed revision (migration or rollout) without changing the spec.
    Retry(AppArg),
    /// Move a canary to its next step now (skipping the pause), or with --full past every step.
    Promote {
        #[command(flatten)]
        app: AppArg,
        /// Skip every remaining step: the stable Deployment takes the new revision.
        #[arg(long)]
        full: bool,
    },
    /// Abort a canary: its pods stop, the stable version keeps serving, migrations done for
    /// it are undone with their rollbackCommand; it holds until the spec changes or `retry`.
    Abort(AppArg),
    /// Regenerate every operator-generated secret of the app; pods roll to pick them up.
    RotateSecret {
        #[command(flatten)]
        app: AppArg,
        /// Do not ask for confirmation (needed without a terminal).
        #[arg(short, long)]
        yes: bool,
    },
    /// Print the Kubernetes objects the operator would create for an app, without a cluster
    /// (apps without a namespace go to -n, else `default`).
    Render {
        /// EmpactsApp YAML file (multi-document allowed); `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Show what applying the file would change in the apps' children, as unified diffs
    /// (nothing is written; exit 0: no differences, 1: differences, >1: error).
    Diff {
        /// EmpactsApp YAML file (multi-document allowed); `-` reads standard input.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Field manager of the dry-run apply: the one you apply with (Flux:
        /// kustomize-controller, Argo CD: argocd-controller), so fields the file dropped show
        /// as removed.
        #[arg(long, default_value = diff::DIFF_MANAGER)]
        field_manager: String,
    },
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Run a user verb; errors become one line on stderr and the documented exit code.
pub fn dispatch(global: GlobalArgs, command: UserCommand, flavor: Flavor, cli: fn() -> clap::Command) -> ExitCode {
    let verbose = global.verbose;
    match execute(global, command, flavor, cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => classify(&err).report(verbose, Some(&err)),
    }
}

fn execute(global: GlobalArgs, command: UserCommand, flavor: Flavor, cli: fn() -> clap::Command) -> anyhow::Result<()> {
    match command {
        UserCommand::Completion { shell } => {
            let mut cmd = cli();
            let name = cmd.get_name().to_string();
            clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
            return Ok(());
        }
        UserCommand::Render { file } => {
            let input = read_input(&file)?;
            let ns = global.namespace.as_deref().unwrap_or("default");
            let out = empacts_operator::render::render_yaml(&input, ns)
                .with_context(|| format!("rendering {}", file.display()))?;
            print!("{out}");
            return Ok(());
        }
        UserCommand::Get { .. } => {}
        _ if global.all_namespaces => {
            return Err(CliError::Usage(
                "-A/--all-namespaces works with get/list only; name the namespace with -n".into(),
            )
            .into());
        }
        UserCommand::RotateSecret { yes: false, .. } if flavor == Flavor::Plugin && !std::io::stdin().is_terminal() => {
            return Err(CliError::Usage(
                "rotate-secret needs confirmation and there is no terminal to ask on: pass --yes".into(),
            )
            .into());
        }
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let (client, ns) = connect(&global).await?;
        let hint = flavor.invocation();
        let out = match command {
            UserCommand::Get { name, output } => {
                let apps = match &name {
                    Some(name) => vec![commands::get_app(&client, &ns, name).await?],
                    None => commands::list_apps(&client, (!global.all_namespaces).then_some(ns.as_str())).await?,
                };
                match output.output {
                    Format::Table if apps.is_empty() && name.is_none() => {
                        let scope = if global.all_namespaces { "any namespace".into() } else { format!("namespace {ns}") };
                        eprintln!("No EmpactsApps found in {scope}.");
                        String::new()
                    }
                    Format::Table => output::table(&apps, global.all_namespaces),
                    format => output::serialized(&output::app_list(&apps), format)?,
                }
            }
            UserCommand::Status { app, watch: true, timeout, .. } => {
                watch::watch(&client, &ns, &app.name, timeout, std::io::stdout().is_terminal()).await?;
                String::new()
            }
            UserCommand::Status { app, output, .. } => {
                let read = commands::get_app(&client, &ns, &app.name).await?;
                let text = match output.output {
                    Format::Table => commands::status(&client, &ns, &app.name).await?,
                    format => output::serialized(&read, format)?,
                };
                if flavor == Flavor::Plugin {
                    print!("{text}");
                    output::health(&read)
                        .map_err(|why| CliError::Unhealthy(format!("{ns}/{}: not Ready: {why}", app.name)))?;
                    return Ok(());
                }
                text
            }
            UserCommand::History { app, output } => match output.output {
                Format::Table => commands::history(&client, &ns, &app.name).await?,
                format => output::serialized(&commands::history_entries(&client, &ns, &app.name).await?, format)?,
            },
            UserCommand::Rollback { app, to, rewrite_spec: true } => {
                let rev = commands::rewrite_spec(&client, &ns, &app.name, &to).await?;
                format!("{ns}/{}: spec rewritten to revision {rev}; the operator rolls it out\n", app.name)
            }
            UserCommand::Rollback { app, to, rewrite_spec: false } => {
                let rev = commands::rollback(&client, &ns, &app.name, &to).await?;
                format!(
                    "{ns}/{}: rollback to revision {rev} requested; see `{hint} status` (it holds until the spec changes or `{hint} retry`)\n",
                    app.name
                )
            }
            UserCommand::Retry(app) => {
                commands::retry(&client, &ns, &app.name).await?;
                format!("{ns}/{}: retry requested\n", app.name)
            }
            UserCommand::Promote { app, full } => {
                commands::promote(&client, &ns, &app.name, full).await?;
                let what = if full { "full promotion" } else { "promotion to the next step" };
                format!("{ns}/{}: {what} requested; see `{hint} status`\n", app.name)
            }
            UserCommand::Abort(app) => {
                commands::abort(&client, &ns, &app.name).await?;
                format!("{ns}/{}: abort requested; see `{hint} status`\n", app.name)
            }
            UserCommand::RotateSecret { app, yes } => {
                if flavor == Flavor::Plugin && !yes {
                    let read = commands::get_app(&client, &ns, &app.name).await?;
                    let n = commands::generated_secret_count(&read);
                    if n == 0 {
                        return Err(CliError::Refused(format!("{ns}/{} has no generated secrets", app.name)).into());
                    }
                    if !confirm(&format!("Regenerate {n} generated secrets of {ns}/{}? Pods will roll. [y/N] ", app.name))? {
                        return Err(CliError::Refused("not confirmed; nothing changed".into()).into());
                    }
                }
                commands::rotate_secrets(&client, &ns, &app.name).await?;
                format!("{ns}/{}: rotation of generated secrets requested\n", app.name)
            }
            UserCommand::Diff { file, field_manager } => {
                let input = read_input(&file)?;
                let diffs = diff::diff(&client, &input, &ns, &field_manager).await?;
                diffs.iter().for_each(|d| print!("{d}"));
                if !diffs.is_empty() {
                    return Err(CliError::DiffFound.into());
                }
                String::new()
            }
            UserCommand::Completion { .. } | UserCommand::Render { .. } => unreachable!("handled without a cluster"),
        };
        print!("{out}");
        Ok(())
    })
}

/// Ask on the terminal; only `y` or `yes` confirms.
fn confirm(question: &str) -> anyhow::Result<bool> {
    eprint!("{question}");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).context("reading the answer")?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// A file's content, or standard input for `-`.
pub fn read_input(file: &PathBuf) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}
