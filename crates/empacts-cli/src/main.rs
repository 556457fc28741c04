//! `empacts` (also usable as `kubectl-empacts`): the operator binary and its companion CLI.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use empacts_api::EmpactsApp;
use kube::CustomResourceExt;

#[derive(Parser, Debug)]
#[command(name = "empacts", version, about = "EmpactsApp operator and CLI")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
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
