//! Names of children. All derive from the app name (at most 42 characters, enforced at
//! admission) so each stays within the 63-character label-value limit.

/// Deployment, Service, ServiceAccount, HPA and PDB share the app's name.
pub fn workload(app: &str) -> String {
    app.to_string()
}

/// The canary Deployment: the new revision's pods during a canary.
pub fn canary(app: &str) -> String {
    format!("{app}-canary")
}

/// Immutable ConfigMap holding `spec.env`, named by its content so that every revision
/// keeps pointing at the exact configuration it was tested with (rollbacks restore it too).
pub fn env_config_map(app: &str, content_hash: &str) -> String {
    format!("{app}-env-{content_hash}")
}

/// Migration Job of a revision. Never re-created under the same name with other content.
pub fn migration_job(app: &str, revision: &str) -> String {
    format!("{app}-migrate-{revision}")
}

/// Job running `rollbackCommand` with the failed revision's image before a rollback.
pub fn rollback_job(app: &str, revision: &str) -> String {
    format!("{app}-rollback-{revision}")
}

fn kebab(env: &str) -> String {
    let kebab = env.to_ascii_lowercase().replace('_', "-");
    let kebab = kebab.trim_matches('-');
    // "_" alone is a valid variable name but would leave nothing to name the Secret by.
    if kebab.is_empty() { "env".into() } else { kebab.to_string() }
}

/// Operator-generated Secret for one `generate` entry, e.g. JWT_SECRET -> `<app>.gen.jwt-secret`.
/// App names are DNS labels (no dots), so the first dot ends the app's part: two apps can
/// never share a generated Secret name.
pub fn generated_secret(app: &str, env: &str) -> String {
    format!("{}{}", generated_secret_prefix(app), kebab(env))
}

/// What the names of every generated Secret of `app` start with (app names hold no dot, so
/// no other app's Secret does).
pub fn generated_secret_prefix(app: &str) -> String {
    format!("{app}.gen.")
}

/// The name earlier builds gave it (`<app>-gen-<env>`): still used for a Secret of that
/// name that was generated for this app, so an upgrade keeps every value.
pub fn legacy_generated_secret(app: &str, env: &str) -> String {
    format!("{app}-gen-{}", kebab(env))
}

/// Key inside a generated Secret.
pub const GENERATED_SECRET_KEY: &str = "value";

/// ControllerRevision recording the spec of one revision (for `empacts rollback`).
pub fn controller_revision(app: &str, revision: &str) -> String {
    format!("{app}-{revision}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_names_are_dns_safe_and_never_shared_by_two_apps() {
        assert_eq!(generated_secret("api", "JWT_SECRET"), "api.gen.jwt-secret");
        assert_eq!(generated_secret("api", "_X_"), "api.gen.x");
        // The old scheme gave both of these `a-gen-b-gen-c`.
        assert_eq!(legacy_generated_secret("a", "B_GEN_C"), legacy_generated_secret("a-gen-b", "C"));
        assert_ne!(generated_secret("a", "B_GEN_C"), generated_secret("a-gen-b", "C"));
    }

    #[test]
    fn longest_names_fit_label_values() {
        let app = "a".repeat(empacts_api::MAX_APP_NAME_LEN);
        let rev = "0123456789";
        assert!(migration_job(&app, rev).len() <= 63);
        assert!(rollback_job(&app, rev).len() <= 63);
        assert!(env_config_map(&app, rev).len() <= 63);
    }
}
