//! `kubectl-empacts`: the EmpactsApp kubectl plugin (`kubectl empacts ...` once on PATH).

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use empacts_cli::cli::{Flavor, UserCommand, dispatch};
use empacts_cli::connect::GlobalArgs;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-empacts",
    bin_name = "kubectl empacts",
    version,
    about = "Inspect, diff and steer EmpactsApps (kubectl plugin)",
    after_help = "Examples:
  kubectl empacts get -A
  kubectl empacts status api --watch --timeout 5m
  kubectl empacts diff -f app.yaml
  kubectl empacts history api -o yaml
  kubectl empacts rollback api --to 3

Exit codes: 0 ok; 1 app not healthy, operation refused or diff found; 2 usage;
3 cluster unreachable or forbidden; 4 any other error."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: UserCommand,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    dispatch(cli.global, cli.command, Flavor::Plugin, Cli::command)
}
