//! The Prometheus Operator is optional. Whether its CRDs (ServiceMonitor, PrometheusRule) are
//! installed is learnt from a watch of those two CustomResourceDefinitions (by name), kept
//! here, and a change reconciles every app: the monitoring children appear when the CRDs are
//! installed, without any change to the apps.
//!
//! The monitoring children are not watched (a watch of a kind whose CRD is missing only
//! fails). Instead, before the writes, their metadata is read fresh by name: always for an
//! app whose spec asks for the object (one GET per kind per reconcile, the price of not
//! watching them), and for an app that does not only until an absence is confirmed (then
//! remembered until the CRDs change, so apps without spec.monitoring cost nothing).
//! Until the CRD watch has listed once, the presence is unknown: no monitoring object is
//! read, written or deleted, and nothing is reported.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::DynamicObject;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tracing::{info, warn};

use crate::build::{prometheusrule, servicemonitor};
use crate::children::ChildMetas;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::validate::ValidatedApp;
use crate::{names, registry};

/// Event reason of an app asking for monitoring objects whose CRD is missing.
pub const UNAVAILABLE: &str = "MonitoringUnavailable";

/// (child kind, name of its CRD).
pub const CRDS: [(&str, &str); 2] = [
    (servicemonitor::KIND, "servicemonitors.monitoring.coreos.com"),
    (prometheusrule::KIND, "prometheusrules.monitoring.coreos.com"),
];

pub fn is_monitoring_kind(kind: &str) -> bool {
    CRDS.iter().any(|(k, _)| *k == kind)
}

/// What this process knows about the monitoring CRDs and the apps' monitoring objects.
#[derive(Default)]
pub struct Monitoring {
    /// Per kind: whether its CRD is installed (and Established, serving v1); no entry until
    /// the watch listed once.
    present: Mutex<BTreeMap<&'static str, bool>>,
    /// Triggers of the controllers' reconcile-all, one per controller.
    subscribers: Mutex<Vec<futures::channel::mpsc::UnboundedSender<()>>>,
    /// (namespace, app, kind) confirmed absent while the app did not ask for it.
    absent: Mutex<HashSet<(String, String, &'static str)>>,
    /// The MonitoringUnavailable note last published per (namespace, app).
    reported: Mutex<HashMap<(String, String), String>>,
}

impl Monitoring {
    /// Whether `kind`'s CRD is installed; None while unknown.
    pub fn present(&self, kind: &str) -> Option<bool> {
        self.present.lock().expect("monitoring lock").get(kind).copied()
    }

    /// Objects of `kind` may be read and written: not a monitoring kind, or its CRD is installed.
    pub fn writable(&self, kind: &str) -> bool {
        !is_monitoring_kind(kind) || self.present(kind) == Some(true)
    }

    /// Record what the CRD watch saw; on a change, every app is reconciled.
    pub fn set(&self, kind: &'static str, present: bool) {
        let previous = self.present.lock().expect("monitoring lock").insert(kind, present);
        if previous == Some(present) {
            return;
        }
        info!(kind, present, "Prometheus Operator CRD presence");
        self.absent.lock().expect("monitoring lock").clear();
        self.subscribers.lock().expect("monitoring lock").retain(|tx| tx.unbounded_send(()).is_ok());
    }

    /// A trigger that fires whenever a CRD's presence changes (for `Controller::reconcile_all_on`).
    pub fn changes(&self) -> futures::channel::mpsc::UnboundedReceiver<()> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        self.subscribers.lock().expect("monitoring lock").push(tx);
        rx
    }

    /// Why the app's monitoring objects cannot be created, when a CRD it needs is missing.
    pub fn unavailable(&self, app: &ValidatedApp) -> Option<String> {
        app.spec.monitoring.as_ref()?;
        let wanted = [(CRDS[0], servicemonitor::build(app).is_some()), (CRDS[1], prometheusrule::build(app).is_some())];
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|((kind, _), w)| *w && self.present(kind) == Some(false))
            .map(|((_, crd), _)| *crd)
            .collect();
        if missing.is_empty() {
            return None;
        }
        Some(format!(
            "spec.monitoring asks for Prometheus Operator objects, but the CRD {} is not installed in the cluster: install the Prometheus Operator CRDs or remove spec.monitoring; the app runs without them meanwhile",
            missing.join(" and ")
        ))
    }

    /// True the first time `note` is to be published for the app (once per transition).
    pub fn first_report(&self, namespace: &str, app: &str, note: &str) -> bool {
        let mut reported = self.reported.lock().expect("monitoring lock");
        let key = (namespace.to_string(), app.to_string());
        if reported.get(&key).is_some_and(|n| n == note) {
            return false;
        }
        reported.insert(key, note.to_string());
        true
    }

    /// The app's monitoring is available (or not asked for): a later absence is news again.
    pub fn clear_report(&self, namespace: &str, app: &str) {
        self.reported.lock().expect("monitoring lock").remove(&(namespace.to_string(), app.to_string()));
    }

    pub fn forget(&self, namespace: &str, app: &str) {
        self.clear_report(namespace, app);
        self.absent.lock().expect("monitoring lock").retain(|(ns, a, _)| !(ns == namespace && a == app));
    }

    /// Entries kept for apps (for tests of pruning).
    pub fn tracked(&self) -> usize {
        self.reported.lock().expect("monitoring lock").len() + self.absent.lock().expect("monitoring lock").len()
    }
}

/// Fresh metadata of the app's monitoring objects into `children` (see the module comment
/// for when they are read).
pub async fn observe(ctx: &Context, app: &ValidatedApp, children: &mut ChildMetas) -> Result<()> {
    let name = names::workload(&app.name);
    for (kind, wanted) in [
        (servicemonitor::KIND, servicemonitor::build(app).is_some()),
        (prometheusrule::KIND, prometheusrule::build(app).is_some()),
    ] {
        if ctx.monitoring.present(kind) != Some(true) {
            continue;
        }
        let key = (app.namespace.clone(), app.name.clone(), kind);
        if !wanted && ctx.monitoring.absent.lock().expect("monitoring lock").contains(&key) {
            continue;
        }
        let registered = registry::child_kind(kind).expect("monitoring kinds are registered");
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &app.namespace, &registered.api_resource());
        let live = api.get_metadata_opt(&name).await.map_err(|source| Error::Read {
            kind: kind.into(),
            namespace: app.namespace.clone(),
            name: name.clone(),
            source: Box::new(source),
        })?;
        let mut absent = ctx.monitoring.absent.lock().expect("monitoring lock");
        match live {
            Some(live) => {
                absent.remove(&key);
                children.named.insert(registered.kind, live.metadata);
            }
            None if !wanted => drop(absent.insert(key)),
            None => drop(absent.remove(&key)),
        }
    }
    Ok(())
}

/// Installed, Established and serving v1.
pub fn established(crd: &CustomResourceDefinition) -> bool {
    let serves_v1 = crd.spec.versions.iter().any(|v| v.name == "v1" && v.served);
    let conditions = crd.status.as_ref().and_then(|s| s.conditions.as_ref());
    serves_v1 && conditions.into_iter().flatten().any(|c| c.type_ == "Established" && c.status == "True")
}

/// Watch the two CRDs (each by name) until the future is dropped, keeping `ctx.monitoring`
/// current. Not counted in readiness: monitoring is optional, and an operator whose RBAC
/// lacks the CRD rule works (it never creates monitoring objects then; the error is logged).
pub async fn watch_crds(ctx: Arc<Context>) {
    let watches = CRDS.iter().map(|(kind, crd)| watch_one(ctx.clone(), ctx.client.clone(), kind, crd));
    futures::future::join_all(watches).await;
}

async fn watch_one(ctx: Arc<Context>, client: Client, kind: &'static str, crd: &'static str) {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={crd}"));
    let mut listing = false;
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listing = false,
            Ok(watcher::Event::InitApply(obj)) => listing = established(&obj),
            Ok(watcher::Event::InitDone) => ctx.monitoring.set(kind, listing),
            Ok(watcher::Event::Apply(obj)) => ctx.monitoring.set(kind, established(&obj)),
            Ok(watcher::Event::Delete(_)) => ctx.monitoring.set(kind, false),
            Err(error) => warn!(crd, %error, "cannot watch the Prometheus Operator CRD"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::app_from_yaml;

    #[test]
    fn unavailable_names_the_missing_crds_of_what_the_app_asks_for() {
        let m = Monitoring::default();
        let app = app_from_yaml("spec: {image: 'api:1', monitoring: {}}");
        assert_eq!(m.unavailable(&app), None, "unknown until the watch listed");
        m.set(servicemonitor::KIND, false);
        m.set(prometheusrule::KIND, true);
        let note = m.unavailable(&app).unwrap();
        assert!(note.contains("servicemonitors.monitoring.coreos.com"), "{note}");
        assert!(!note.contains("prometheusrules"), "{note}");
        assert!(note.contains("remove spec.monitoring"), "{note}");
        m.set(prometheusrule::KIND, false);
        assert!(m.unavailable(&app).unwrap().contains("prometheusrules.monitoring.coreos.com"));
        let no_alerts = app_from_yaml("spec: {image: 'api:1', monitoring: {alerts: {enabled: false}}}");
        assert!(!m.unavailable(&no_alerts).unwrap().contains("prometheusrules"));
        assert_eq!(m.unavailable(&app_from_yaml("spec: {image: 'api:1'}")), None, "not asked for");
        assert!(!m.writable("ServiceMonitor") && m.writable("Service"));
    }

    #[test]
    fn a_note_is_reported_once_per_transition_and_changes_trigger_reconciles() {
        let m = Monitoring::default();
        assert!(m.first_report("ns", "a", "x"));
        assert!(!m.first_report("ns", "a", "x"), "once");
        assert!(m.first_report("ns", "a", "y"), "another note is news");
        m.clear_report("ns", "a");
        assert!(m.first_report("ns", "a", "y"), "again after it was resolved");
        m.forget("ns", "a");
        assert_eq!(m.tracked(), 0);

        let mut rx = m.changes();
        m.set(servicemonitor::KIND, true);
        m.set(servicemonitor::KIND, true);
        m.set(servicemonitor::KIND, false);
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err(), "no trigger without a change");
    }

    #[test]
    fn the_plan_carries_the_note() {
        let input = crate::plan::PlanInput { monitoring_unavailable: Some("missing".into()), ..Default::default() };
        let plan = crate::plan::plan(&input);
        assert!(plan.notes.contains(&(UNAVAILABLE, "missing".to_string())), "{:?}", plan.notes);
    }

    #[test]
    fn render_shows_the_monitoring_objects_when_asked_for() {
        let yaml = "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {name: api}\nspec: {image: 'api:1', monitoring: {}}\n";
        let out = crate::render::render_yaml(yaml, "ns").unwrap();
        assert!(out.contains("kind: ServiceMonitor") && out.contains("kind: PrometheusRule"), "{out}");
        let plain = crate::render::render_yaml(&yaml.replace(", monitoring: {}", ""), "ns").unwrap();
        assert!(!plain.contains("ServiceMonitor") && !plain.contains("PrometheusRule"));
    }

    #[test]
    fn established_needs_the_condition_and_v1() {
        let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
            "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                "names": {"plural": "servicemonitors", "kind": "ServiceMonitor"},
                "versions": [{"name": "v1", "served": true, "storage": true}]},
            "status": {"conditions": [{"type": "Established", "status": "True"}]}
        }))
        .unwrap();
        assert!(established(&crd));
        let mut pending = crd.clone();
        pending.status = None;
        assert!(!established(&pending));
    }
}
