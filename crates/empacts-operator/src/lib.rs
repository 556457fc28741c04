//! The EmpactsApp operator as a library: pure desired-state builders and decisions,
//! and the reconcile loop that applies them.

pub mod analysis;
pub mod apply;
pub mod build;
pub mod child_cache;
pub mod children;
pub mod client;
pub mod context;
pub mod controller;
pub mod error;
pub mod events;
pub mod hash;
pub mod hash_key;
pub mod health;
pub mod leader;
pub mod ledger;
pub mod ledger_cache;
pub mod legacy;
pub mod metrics;
pub mod monitoring;
pub mod names;
pub mod observe;
pub mod plan;
pub mod reconcile;
pub mod recorder;
pub mod registry;
pub mod render;
pub mod revision;
pub mod secret_reads;
pub mod secret_value;
pub mod server;
pub mod shard;
pub mod slots;
pub mod status;
pub mod validate;
