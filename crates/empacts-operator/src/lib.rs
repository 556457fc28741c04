//! The EmpactsApp operator as a library: pure desired-state builders and decisions,
//! and the reconcile loop that applies them.

pub mod build;
pub mod hash;
pub mod names;
pub mod render;
pub mod secret_value;
pub mod validate;
