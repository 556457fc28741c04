//! Shared state of the reconcilers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use empacts_api::{EmpactsApp, Phase};
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;

use crate::metrics::Metrics;
use crate::server::Readiness;

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Fed to /readyz.
    pub readiness: Arc<Readiness>,
    /// Last phase of each app, feeding the apps-by-phase gauge.
    phases: Mutex<HashMap<ObjectRef<EmpactsApp>, Phase>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: Option<String>) -> Self {
        let reporter = Reporter { controller: "empacts-operator".into(), instance };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            readiness: Arc::default(),
            phases: Mutex::default(),
        }
    }

    pub fn set_phase(&self, app: &EmpactsApp, phase: Phase) {
        let mut phases = self.phases.lock().expect("phase map lock");
        phases.insert(ObjectRef::from(app), phase);
        self.publish_phases(&phases);
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
