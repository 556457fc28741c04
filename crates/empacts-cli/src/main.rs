//! `empacts`: the operator binary (`empacts run`) and the same user verbs as the
//! `kubectl-empacts` plugin.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use empacts_api::EmpactsApp;
use empacts_cli::cli::{Flavor, UserCommand, dispatch};
use empacts_cli::connect::GlobalArgs;
use empacts_cli::run;
use kube::CustomResourceExt;

#[derive(Parser, Debug)]
#[command(name = "empacts", version, about = "EmpactsApp operator and CLI")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator (reconciles EmpactsApps until SIGTERM/SIGINT); see `empacts run --help`.
    #[command(disable_help_flag = true)]
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print the EmpactsApp CustomResourceDefinition as YAML.
    Crd,
    #[command(flatten)]
    User(UserCommand),
}

/// `empacts run`'s own parser: its flags (`--namespace` among them) are not the user verbs'.
#[derive(Parser, Debug)]
#[command(name = "empacts run", bin_name = "empacts run", about = "Run the EmpactsApp operator")]
struct RunCli {
    #[command(flatten)]
    args: run::RunArgs,
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("run") {
        return operator(RunCli::parse_from(argv[1..].iter()).args);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Run { args } => {
            let argv = std::iter::once("run".to_string()).chain(args);
            operator(RunCli::parse_from(argv).args)
        }
        Command::Crd => {
            print!("{}", serde_yaml::to_string(&EmpactsApp::crd()).expect("the CRD serializes"));
            ExitCode::SUCCESS
        }
        Command::User(command) => dispatch(cli.global, command, Flavor::Operator, Cli::command),
    }
}

/// Heap profiling build: every allocation is tracked (slow), and `dhat-heap.json` (open it
/// with DHAT's viewer) is written when the operator exits.
#[cfg(feature = "heap-profile")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// jemalloc, configured for a long-lived process whose memory follows its fleet: one arena (the
/// work is I/O-bound: a few threads, no allocation contention worth per-thread arenas) and a
/// background thread that returns pages left free for ~10 s (glibc's malloc kept a restart's
/// burst: 35 MiB of heap settled at 1,000 apps against 19). `_RJEM_MALLOC_CONF` in the
/// environment overrides it.
#[cfg(all(feature = "jemalloc", not(feature = "heap-profile"), not(target_env = "msvc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this C string (`malloc_conf`, prefixed by the crate).
#[cfg(all(feature = "jemalloc", not(feature = "heap-profile"), not(target_env = "msvc")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static JEMALLOC_CONF: &u8 = &b"background_thread:true,narenas:1\0"[0];

fn operator(args: run::RunArgs) -> ExitCode {
    #[cfg(feature = "heap-profile")]
    let _profiler = {
        let profiler = dhat::Profiler::builder().trim_backtraces(Some(40)).build();
        // EMPACTS_HEAP_PROFILE_SECS=N: write it after N seconds, what is live then as "t-end"
        // (at exit the caches are gone).
        match std::env::var("EMPACTS_HEAP_PROFILE_SECS").ok().and_then(|s| s.parse().ok()) {
            Some(secs) => {
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_secs(secs));
                    drop(profiler);
                });
                None
            }
            None => Some(profiler),
        }
    };
    match run::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}
