//! The `empacts` CLI and the `kubectl-empacts` plugin as a library, so end-to-end tests drive
//! the same code users run.

pub mod cli;
pub mod commands;
pub mod connect;
pub mod diff;
pub mod error;
pub mod normalize;
pub mod output;
pub mod run;
pub mod watch;
