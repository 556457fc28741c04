//! Shared state of the reconcilers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use empacts_api::{EmpactsApp, Phase};
use k8s_openapi::api::batch::v1::Job;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;

use crate::children::{AppliedRecord, ChildStores};
use crate::metrics::Metrics;
use crate::server::Readiness;

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Fed to /readyz.
    pub readiness: Arc<Readiness>,
    /// Metadata caches of the children, set when the controller starts.
    pub stores: OnceLock<ChildStores>,
    /// What this process last applied, to skip applies that would change nothing.
    pub applied: AppliedRecord,
    /// Last phase of each app, feeding the apps-by-phase gauge.
    phases: Mutex<HashMap<ObjectRef<EmpactsApp>, Phase>>,
    /// Jobs already counted in the migration metrics (by UID).
    counted_jobs: Mutex<HashSet<String>>,
    /// Jobs that finished before this process started are not counted again.
    started: k8s_openapi::jiff::Timestamp,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: Option<String>) -> Self {
        let reporter = Reporter { controller: "empacts-operator".into(), instance };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            readiness: Arc::default(),
            stores: OnceLock::new(),
            applied: AppliedRecord::default(),
            phases: Mutex::default(),
            counted_jobs: Mutex::default(),
            started: k8s_openapi::jiff::Timestamp::now(),
        }
    }

    pub fn set_phase(&self, app: &EmpactsApp, phase: Phase) {
        let mut phases = self.phases.lock().expect("phase map lock");
        phases.insert(ObjectRef::from(app), phase);
        self.publish_phases(&phases);
    }

    /// Count a finished migration Job once: `migrations_total` and its duration.
    pub fn count_finished_job(&self, job: &Job, kind: &str) {
        let Some(status) = job.status.as_ref() else { return };
        let conditions = status.conditions.as_deref().unwrap_or_default();
        let finished = conditions.iter().find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
        let Some(finished) = finished else { return };
        let result = if finished.type_ == "Complete" { "succeeded" } else { "failed" };
        let end = status.completion_time.as_ref().or(finished.last_transition_time.as_ref()).map(|t| t.0);
        let (Some(uid), Some(end)) = (job.metadata.uid.clone(), end) else { return };
        if end < self.started || !self.counted_jobs.lock().expect("job set lock").insert(uid) {
            return;
        }
        self.metrics.migrations.with_label_values(&[kind, result]).inc();
        if let Some(start) = status.start_time.as_ref().map(|t| t.0) {
            let seconds = end.duration_since(start).as_secs_f64().max(0.0);
            self.metrics.migration_duration.with_label_values(&[kind, result]).observe(seconds);
        }
    }

    pub fn forget(&self, app: &ObjectRef<EmpactsApp>) {
        let mut phases = self.phases.lock().expect("phase map lock");
        phases.remove(app);
        self.publish_phases(&phases);
    }

    fn publish_phases(&self, phases: &HashMap<ObjectRef<EmpactsApp>, Phase>) {
        for phase in Phase::ALL {
            let n = phases.values().filter(|p| **p == phase).count();
            self.metrics.apps_by_phase.with_label_values(&[phase.as_str()]).set(n as i64);
        }
    }
}
