//! Second reconcile step: read the children and referenced objects. Reads only.

use std::collections::BTreeMap;

use empacts_api::{EmpactsAppSpec, annotations, conditions::reasons, labels};
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::error::{Error, Result, is_not_found};
use crate::hash;
use crate::names;
use crate::plan::{DeploymentState, JobState};
use crate::validate::ValidatedApp;

/// What the cluster holds for one app.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub deployment: Option<Deployment>,
    /// The Deployment as the decision sees it (computed once per reconcile).
    pub deployment_state: Option<DeploymentState>,
    /// Migration and rollback Jobs of the app.
    pub jobs: Vec<Job>,
    /// Recorded specs of the app's revisions.
    pub revisions: Vec<ControllerRevision>,
    /// Hash of the content of every referenced Secret key, or what is missing.
    pub references: References,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum References {
    /// All present; the hash rolls the pods when any value changes.
    Present { config_hash: Option<String> },
    /// (reason, message) naming the missing Secret or key.
    Missing { reason: &'static str, message: String },
}

impl Default for References {
    fn default() -> Self {
        References::Present { config_hash: None }
    }
}

pub fn instance_selector(app: &str) -> String {
    format!("{}={app},{}={}", labels::INSTANCE, labels::MANAGED_BY, labels::MANAGER)
}

pub async fn observe(client: &Client, app: &ValidatedApp) -> Result<Observed> {
    let ns = &app.namespace;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deployment = deployments.get_opt(&names::workload(&app.name)).await.map_err(|source| Error::Read {
        kind: "Deployment".into(),
        namespace: ns.clone(),
        name: app.name.clone(),
        source: Box::new(source),
    })?;
    let selector = ListParams::default().labels(&instance_selector(&app.name));
    let jobs = Api::<Job>::namespaced(client.clone(), ns).list(&selector).await.map_err(|source| Error::Read {
        kind: "Job".into(),
        namespace: ns.clone(),
        name: format!("-l {}", instance_selector(&app.name)),
        source: Box::new(source),
    })?;
    let revisions =
        Api::<ControllerRevision>::namespaced(client.clone(), ns).list(&selector).await.map_err(|source| {
            Error::Read {
                kind: "ControllerRevision".into(),
                namespace: ns.clone(),
                name: app.name.clone(),
                source: Box::new(source),
            }
        })?;
    let references = references(client, app, &app.spec).await?;
    let deployment_state = deployment.as_ref().map(deployment_state);
    Ok(Observed { deployment, deployment_state, jobs: jobs.items, revisions: revisions.items, references })
}

/// Read every Secret `spec` references (user-owned and generated) and hash their values.
pub async fn references(client: &Client, app: &ValidatedApp, spec: &EmpactsAppSpec) -> Result<References> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &app.namespace);
    let mut cache: BTreeMap<String, Option<Secret>> = BTreeMap::new();
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for entry in spec.secrets() {
        let (name, key, generated) = match &entry.secret_key_ref {
            Some(r) => (r.name.clone(), r.key.clone(), false),
            None => (names::generated_secret(&app.name, &entry.env), names::GENERATED_SECRET_KEY.to_string(), true),
        };
        if !cache.contains_key(&name) {
            let secret = match secrets.get(&name).await {
                Ok(s) => Some(s),
                Err(e) if is_not_found(&e) => None,
                Err(source) => {
                    return Err(Error::Read {
                        kind: "Secret".into(),
                        namespace: app.namespace.clone(),
                        name,
                        source: Box::new(source),
                    });
                }
            };
            cache.insert(name.clone(), secret);
        }
        let Some(secret) = cache[&name].as_ref() else {
            let message = if generated {
                format!("generated Secret {name} for {} does not exist yet", entry.env)
            } else {
                format!(
                    "Secret {name} (referenced by spec.secrets {} secretKeyRef) does not exist in namespace {}; create it or fix the reference",
                    entry.env, app.namespace
                )
            };
            return Ok(References::Missing { reason: reasons::SECRET_NOT_FOUND, message });
        };
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&key))
            .map(|v| v.0.clone())
            .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(&key)).map(|v| v.clone().into_bytes()));
        let Some(value) = value else {
            let keys: Vec<&String> = secret.data.iter().flat_map(|d| d.keys()).collect();
            return Ok(References::Missing {
                reason: reasons::SECRET_KEY_NOT_FOUND,
                message: format!(
                    "Secret {name} has no key {key} (referenced by spec.secrets {}); it has {keys:?}; add the key or fix the reference",
                    entry.env
                ),
            });
        };
        parts.push(name.into_bytes());
        parts.push(key.into_bytes());
        parts.push(value);
    }
    let config_hash = (!parts.is_empty()).then(|| hash::bytes_hash(parts.iter().map(Vec::as_slice)));
    Ok(References::Present { config_hash })
}

/// The Deployment as the decision sees it.
pub fn deployment_state(deployment: &Deployment) -> DeploymentState {
    let status = deployment.status.clone().unwrap_or_default();
    let generation = deployment.metadata.generation.unwrap_or(0);
    let observed_generation = status.observed_generation.unwrap_or(0);
    let progress_deadline_exceeded = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing" && c.status == "False" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    DeploymentState {
        revision: deployment.metadata.annotations.as_ref().and_then(|a| a.get(annotations::REVISION)).cloned(),
        generation,
        observed_generation,
        desired_replicas: deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        replicas: status.replicas.unwrap_or(0),
        updated_replicas: status.updated_replicas.unwrap_or(0),
        ready_replicas: status.ready_replicas.unwrap_or(0),
        available_replicas: status.available_replicas.unwrap_or(0),
        progress_deadline_exceeded,
    }
}

/// A Job's outcome from its conditions.
pub fn job_state(job: Option<&Job>) -> JobState {
    let Some(job) = job else { return JobState::Absent };
    let conditions = job.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    if conditions.iter().any(|c| c.type_ == "Complete" && c.status == "True") {
        return JobState::Succeeded;
    }
    if let Some(c) = conditions.iter().find(|c| c.type_ == "Failed" && c.status == "True") {
        return JobState::Failed {
            reason: c.reason.clone().unwrap_or_else(|| "Failed".into()),
            message: c.message.clone().unwrap_or_default(),
        };
    }
    JobState::Running
}

pub fn find_job<'a>(observed: &'a Observed, name: &str) -> Option<&'a Job> {
    observed.jobs.iter().find(|j| j.metadata.name.as_deref() == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

    fn job_with(type_: &str, reason: &str) -> Job {
        Job {
            status: Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: type_.into(),
                    status: "True".into(),
                    reason: Some(reason.into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn job_states() {
        assert_eq!(job_state(None), JobState::Absent);
        assert_eq!(job_state(Some(&Job::default())), JobState::Running);
        assert_eq!(job_state(Some(&job_with("Complete", ""))), JobState::Succeeded);
        assert_eq!(
            job_state(Some(&job_with("Failed", "DeadlineExceeded"))),
            JobState::Failed { reason: "DeadlineExceeded".into(), message: String::new() }
        );
    }
}
