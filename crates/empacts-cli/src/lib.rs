//! The `empacts` CLI as a library, so end-to-end tests drive the same code users run.

pub mod commands;
pub mod run;
