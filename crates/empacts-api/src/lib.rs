//! EmpactsApp custom resource (empacts.io/v1alpha1): types, defaults, validation and CRD
//! generation. No I/O here, so the CLI, the operator and tests share one definition.

pub mod conditions;
pub mod defaults;
pub mod spec;
pub mod status;
pub mod validate;

pub use spec::*;
pub use status::*;

/// API group of the custom resource.
pub const GROUP: &str = "empacts.io";
/// Served and stored version.
pub const VERSION: &str = "v1alpha1";

/// Annotations users (or the CLI) set on an EmpactsApp to ask for one-off actions.
pub mod annotations {
    /// Any new value asks the operator to retry a failed revision (migration or rollout).
    pub const RETRY: &str = "empacts.io/retry";
    /// Any new value asks the operator to regenerate every generated secret of the app.
    pub const ROTATE_SECRETS: &str = "empacts.io/rotate-secrets";
    /// `<revision>@<request id>`: roll back to that revision, exactly as an automatic rollback
    /// would (down-migrations first), leaving the spec as it is. Acknowledged on the ledger.
    pub const ROLLBACK_TO: &str = "empacts.io/rollback-to";
    /// Any new value promotes the canary one step (`full:<id>`: past every remaining step).
    pub const PROMOTE: &str = "empacts.io/promote";
    /// Any new value aborts the canary: its pods stop, the stable revision keeps serving,
    /// migrations done for it are undone as in an automatic rollback.
    pub const ABORT: &str = "empacts.io/abort";
    /// On a generated Secret: the rotation request its value satisfies.
    pub const ROTATION: &str = "empacts.io/rotation";
    /// On a pod template: hash of the referenced ConfigMap/Secret content.
    pub const CONFIG_HASH: &str = "empacts.io/config-hash";
    /// On children: the revision they belong to.
    pub const REVISION: &str = "empacts.io/revision";
}

/// Labels the operator puts on what it creates.
pub mod labels {
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    pub const VERSION: &str = "app.kubernetes.io/version";
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const PART_OF: &str = "app.kubernetes.io/part-of";
    /// Value of `app.kubernetes.io/managed-by`.
    pub const MANAGER: &str = "empacts-operator";
    /// Revision hash of a pod template or migration Job.
    pub const REVISION: &str = "empacts.io/revision";
    /// On migration Job pods instead of the selector labels: the app they belong to. Job pods
    /// must not match the app's Service, HPA or PDB selectors (a PDB that selects a Job's pods
    /// cannot compute maxUnavailable and then allows no eviction at all: node drains hang).
    pub const APP: &str = "empacts.io/app";
    /// On a Secret (`"true"`): the operator watches it, so apps referencing it roll within
    /// seconds of a change. Secrets without it are re-read at every resync of their apps: the
    /// operator never watches every Secret of a namespace.
    pub const WATCH: &str = "empacts.io/watch";
    /// `canary` on the canary Deployment's pods (and in its selector).
    pub const TRACK: &str = "empacts.io/track";
    /// Marks Secrets whose value the operator generated.
    pub const GENERATED_SECRET: &str = "empacts.io/generated-secret";
}
