//! The application container and pod, shared by the Deployment and the migration Jobs so
//! a migration sees exactly the configuration the new version will run with.

use std::collections::BTreeMap;

use empacts_api::{HttpProbe, SecretEnv};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction,
    PodSecurityContext, PodSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::{build::configmap, names, validate::ValidatedApp};

/// Name of the application container (and of its port).
pub const CONTAINER: &str = "app";
pub const PORT_NAME: &str = "http";

/// Environment from secrets: generated ones from the operator's Secret, others from the user's.
pub fn secret_env(app: &ValidatedApp) -> Vec<EnvVar> {
    app.spec.secrets().iter().map(|entry| secret_env_var(app, entry)).collect()
}

fn secret_env_var(app: &ValidatedApp, entry: &SecretEnv) -> EnvVar {
    let (name, key) = match &entry.secret_key_ref {
        Some(r) => (r.name.clone(), r.key.clone()),
        None => (app.generated_secret(&entry.env), names::GENERATED_SECRET_KEY.to_string()),
    };
    EnvVar {
        name: entry.env.clone(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name, key, optional: Some(false) }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env_from(app: &ValidatedApp) -> Option<Vec<EnvFromSource>> {
    let env = app.spec.env.clone().unwrap_or_default();
    configmap::name(app, &env).map(|name| {
        vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource { name, optional: Some(false) }),
            ..Default::default()
        }]
    })
}

fn resources(app: &ValidatedApp) -> Option<ResourceRequirements> {
    app.spec.resources.as_ref().map(|r| ResourceRequirements {
        requests: r.requests.clone(),
        limits: r.limits.clone(),
        ..Default::default()
    })
}

/// Defaults that satisfy the Pod Security Standards "restricted" profile.
fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

fn http_probe(app: &ValidatedApp, probe: &HttpProbe) -> Probe {
    // A probe on the app port uses the named port, so changing spec.port moves probes along.
    let port = match probe.port {
        Some(port) if port != app.spec.port() => IntOrString::Int(port),
        _ => IntOrString::String(PORT_NAME.into()),
    };
    Probe {
        http_get: Some(HTTPGetAction { path: Some(probe.path.clone()), port, ..Default::default() }),
        initial_delay_seconds: probe.initial_delay_seconds,
        period_seconds: probe.period_seconds,
        timeout_seconds: probe.timeout_seconds,
        failure_threshold: probe.failure_threshold,
        ..Default::default()
    }
}

/// The long-running application container.
pub fn app_container(app: &ValidatedApp) -> Container {
    let probes = app.spec.probes.clone().unwrap_or_default();
    Container {
        name: CONTAINER.into(),
        image: Some(app.spec.image.clone()),
        command: app.spec.command.clone(),
        args: app.spec.args.clone(),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: app.spec.port(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env_from: env_from(app),
        env: Some(secret_env(app)).filter(|e| !e.is_empty()),
        resources: resources(app),
        liveness_probe: probes.liveness.as_ref().map(|p| http_probe(app, p)),
        readiness_probe: probes.readiness.as_ref().map(|p| http_probe(app, p)),
        startup_probe: probes.startup.as_ref().map(|p| http_probe(app, p)),
        security_context: Some(container_security_context()),
        ..Default::default()
    }
}

/// A one-shot container running `command` with the app's image, config and secrets.
pub fn task_container(app: &ValidatedApp, name: &str, command: &[String]) -> Container {
    Container {
        name: name.into(),
        image: Some(app.spec.image.clone()),
        command: Some(command.to_vec()),
        env_from: env_from(app),
        env: Some(secret_env(app)).filter(|e| !e.is_empty()),
        resources: resources(app),
        security_context: Some(container_security_context()),
        ..Default::default()
    }
}

pub fn pod_spec(app: &ValidatedApp, containers: Vec<Container>, restart_policy: Option<&str>) -> PodSpec {
    PodSpec {
        containers,
        service_account_name: Some(names::workload(&app.name)),
        // Apps rarely need the Kubernetes API; not mounting a token is the safe default.
        automount_service_account_token: Some(false),
        restart_policy: restart_policy.map(str::to_string),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// User pod labels under the operator's own (ours win: they select the pods).
pub fn pod_labels(app: &ValidatedApp, ours: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = app.spec.pod_labels.clone().unwrap_or_default();
    labels.extend(ours);
    labels
}
