//! Migration Jobs: `<app>-migrate-<revision>` runs `migration.command` with the new image
//! before the revision rolls out; `<app>-rollback-<revision>` runs `rollbackCommand` with
//! the failed (newer) image before a rollback. Names are fixed by revision and the Jobs
//! are only ever created, never replaced, so one revision never migrates twice at once.

use std::collections::BTreeMap;

use empacts_api::{annotations, labels};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::{build::meta, build::pod, names, validate::ValidatedApp};

pub const MIGRATION_COMPONENT: &str = "migration";
pub const ROLLBACK_COMPONENT: &str = "rollback-migration";

/// Migration Job (attempt `attempt`) of revision `revision` whose spec `app` carries, or
/// None without `spec.migration`.
pub fn migration(app: &ValidatedApp, revision: &str, attempt: u32) -> Option<Job> {
    let m = app.spec.migration.as_ref()?;
    let name = names::migration_job(&app.name, revision);
    Some(job(app, name, MIGRATION_COMPONENT, revision, attempt, &m.command))
}

/// Down-migration Job undoing attempt `attempt` of revision `revision` (spec in `app`), or
/// None without a rollbackCommand.
pub fn rollback(app: &ValidatedApp, revision: &str, attempt: u32) -> Option<Job> {
    let command = app.spec.migration.as_ref()?.rollback_command.as_ref()?;
    Some(job(app, names::rollback_job(&app.name, revision), ROLLBACK_COMPONENT, revision, attempt, command))
}

fn job(app: &ValidatedApp, name: String, component: &str, revision: &str, attempt: u32, command: &[String]) -> Job {
    let m = app.spec.migration.as_ref().expect("callers checked spec.migration");
    let mut metadata = meta::child_meta(app, name, component);
    metadata.labels.get_or_insert_with(BTreeMap::new).insert(labels::REVISION.into(), revision.into());
    metadata.annotations = Some(BTreeMap::from([
        (annotations::REVISION.to_string(), revision.to_string()),
        (crate::ledger::JOB_ATTEMPT.to_string(), attempt.to_string()),
    ]));
    // The Job object keeps the common labels (observe lists Jobs by instance); its pods get
    // none of the selector labels, so no Service, HPA or PDB of the app selects them.
    let mut pod_labels = meta::common_labels(app, component);
    for selecting in meta::selector_labels(app).keys() {
        pod_labels.remove(selecting);
    }
    pod_labels.insert(labels::APP.into(), app.name.clone());
    pod_labels.insert(labels::REVISION.into(), revision.into());
    Job {
        metadata,
        spec: Some(JobSpec {
            backoff_limit: Some(m.backoff_limit()),
            active_deadline_seconds: Some(m.timeout_seconds()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod::pod_labels(app, pod_labels)),
                    annotations: app.spec.pod_annotations.clone().filter(|a| !a.is_empty()),
                    ..Default::default()
                }),
                spec: Some(pod::pod_spec(app, vec![pod::task_container(app, component, command)], Some("Never"))),
            },
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::app_from_yaml;

    const APP: &str = "spec: {image: 'api:2', env: {A: b}, secrets: [{env: DB, secretKeyRef: {name: db, key: url}}], migration: {command: [npm, run, migrate], rollbackCommand: [npm, run, 'migrate:down'], timeoutSeconds: 300, backoffLimit: 2}}";

    #[test]
    fn migration_job_runs_the_new_image_with_app_config() {
        let app = app_from_yaml(APP);
        let job = migration(&app, "r1", 2).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("demo-migrate-r1"));
        assert_eq!(job.metadata.annotations.as_ref().unwrap()[crate::ledger::JOB_ATTEMPT], "2");
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(2));
        assert_eq!(spec.active_deadline_seconds, Some(300));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("api:2"));
        assert_eq!(c.command.as_deref().unwrap(), ["npm", "run", "migrate"]);
        assert_eq!(c.env.as_ref().unwrap()[0].name, "DB");
        assert!(c.env_from.is_some());
        assert!(c.readiness_probe.is_none());
    }

    #[test]
    fn job_pods_match_no_selector_of_the_app() {
        let app = app_from_yaml("spec: {image: 'api:2', podLabels: {team: a}, migration: {command: [m]}}");
        let job = migration(&app, "r1", 1).unwrap();
        let pod = job.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        // The Service, HPA (through the Deployment) and PDB all select with these.
        for (k, v) in meta::selector_labels(&app) {
            assert_ne!(pod.get(&k), Some(&v), "Job pods carry selector label {k}");
        }
        assert_eq!(pod[labels::APP], "demo");
        assert_eq!(pod[labels::COMPONENT], MIGRATION_COMPONENT);
        assert_eq!(pod["team"], "a");
        // The Job object itself is still found by the app's instance label.
        assert_eq!(job.metadata.labels.unwrap()[labels::INSTANCE], "demo");
    }

    #[test]
    fn rollback_job_runs_rollback_command_with_the_failed_image() {
        let app = app_from_yaml(APP);
        let job = rollback(&app, "r1", 1).unwrap();
        assert!(job.metadata.name.unwrap().starts_with("demo-rollback-"));
        let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
        assert_eq!(c.command.as_deref().unwrap(), ["npm", "run", "migrate:down"]);
        assert_eq!(c.image.as_deref(), Some("api:2"));
    }

    #[test]
    fn no_migration_no_job() {
        let app = app_from_yaml("spec: {image: 'api:1'}");
        assert!(migration(&app, "r", 1).is_none());
        assert!(rollback(&app, "r", 1).is_none());
        let app = app_from_yaml("spec: {image: 'api:1', migration: {command: [m]}}");
        assert!(rollback(&app, "r", 1).is_none());
    }
}
