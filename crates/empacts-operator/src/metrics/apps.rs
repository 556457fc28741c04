//! Per-app series: `empacts_app_info`, `empacts_app_ready`, `empacts_app_stalled`. Each app
//! has exactly one `app_info` series (its phase and revision are labels, so a change removes
//! the old series), and every series of an app goes when the app goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::{IntGaugeVec, Opts};

/// What one app exports, as last set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSeries {
    pub phase: String,
    pub revision: String,
    pub ready: bool,
    pub stalled: bool,
}

#[derive(Clone)]
pub struct AppGauges {
    pub info: IntGaugeVec,
    pub ready: IntGaugeVec,
    pub stalled: IntGaugeVec,
    /// The labels of each app's `app_info` series, keyed by (namespace, app), to remove it.
    last: Arc<Mutex<HashMap<(String, String), AppSeries>>>,
}

impl AppGauges {
    pub fn new() -> Self {
        let info = IntGaugeVec::new(
            Opts::new("app_info", "1 per EmpactsApp, labelled with its phase and current revision"),
            &["namespace", "app", "phase", "revision"],
        )
        .unwrap();
        let ready = IntGaugeVec::new(
            Opts::new("app_ready", "1 while the app's Ready condition is True"),
            &["namespace", "app"],
        )
        .unwrap();
        let stalled = IntGaugeVec::new(
            Opts::new("app_stalled", "1 while the app's Stalled condition is True"),
            &["namespace", "app"],
        )
        .unwrap();
        AppGauges { info, ready, stalled, last: Arc::default() }
    }

    pub fn collectors(&self) -> [Box<dyn prometheus::core::Collector>; 3] {
        [Box::new(self.info.clone()), Box::new(self.ready.clone()), Box::new(self.stalled.clone())]
    }

    /// Export `series` for the app; an `app_info` series with other labels is removed.
    pub fn set(&self, namespace: &str, app: &str, series: AppSeries) {
        let mut last = self.last.lock().expect("app series lock");
        let key = (namespace.to_string(), app.to_string());
        if let Some(old) = last.get(&key)
            && (old.phase != series.phase || old.revision != series.revision)
        {
            let _ = self.info.remove_label_values(&[namespace, app, &old.phase, &old.revision]);
        }
        self.info.with_label_values(&[namespace, app, &series.phase, &series.revision]).set(1);
        self.ready.with_label_values(&[namespace, app]).set(i64::from(series.ready));
        self.stalled.with_label_values(&[namespace, app]).set(i64::from(series.stalled));
        last.insert(key, series);
    }

    /// Remove every series of the app (deleted, or no longer ours to report).
    pub fn forget(&self, namespace: &str, app: &str) {
        let mut last = self.last.lock().expect("app series lock");
        if let Some(old) = last.remove(&(namespace.to_string(), app.to_string())) {
            self.remove(namespace, app, &old);
        }
    }

    /// Remove every app's series: a replica that stops leading must not report stale state.
    pub fn clear(&self) {
        let mut last = self.last.lock().expect("app series lock");
        for ((namespace, app), old) in last.drain() {
            self.remove(&namespace, &app, &old);
        }
    }

    fn remove(&self, namespace: &str, app: &str, old: &AppSeries) {
        let _ = self.info.remove_label_values(&[namespace, app, &old.phase, &old.revision]);
        let _ = self.ready.remove_label_values(&[namespace, app]);
        let _ = self.stalled.remove_label_values(&[namespace, app]);
    }
}

impl Default for AppGauges {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn series(phase: &str, revision: &str, ready: bool) -> AppSeries {
        AppSeries { phase: phase.into(), revision: revision.into(), ready, stalled: false }
    }

    fn lines(m: &Metrics, prefix: &str) -> Vec<String> {
        m.render().lines().filter(|l| l.starts_with(prefix)).map(str::to_string).collect()
    }

    #[test]
    fn an_app_has_one_info_series_that_follows_its_phase_and_goes_with_it() {
        let m = Metrics::new();
        m.apps.set("ns", "api", series("Progressing", "", false));
        m.apps.set("ns", "web", series("Ready", "r1", true));
        assert_eq!(
            lines(&m, "empacts_app_info{app=\"api\",namespace=\"ns\""),
            ["empacts_app_info{app=\"api\",namespace=\"ns\",phase=\"Progressing\",revision=\"\"} 1"]
        );
        assert_eq!(
            lines(&m, "empacts_app_ready{app=\"api\",namespace=\"ns\"}"),
            ["empacts_app_ready{app=\"api\",namespace=\"ns\"} 0"]
        );

        m.apps.set("ns", "api", series("Ready", "abc", true));
        assert_eq!(
            lines(&m, "empacts_app_info{app=\"api\",namespace=\"ns\""),
            ["empacts_app_info{app=\"api\",namespace=\"ns\",phase=\"Ready\",revision=\"abc\"} 1"],
            "the old phase's series is removed"
        );
        assert_eq!(
            lines(&m, "empacts_app_ready{app=\"api\",namespace=\"ns\"}"),
            ["empacts_app_ready{app=\"api\",namespace=\"ns\"} 1"]
        );
        assert_eq!(
            lines(&m, "empacts_app_stalled{app=\"api\",namespace=\"ns\"}"),
            ["empacts_app_stalled{app=\"api\",namespace=\"ns\"} 0"]
        );

        m.apps.forget("ns", "api");
        let out = m.render();
        assert!(!out.contains("app=\"api\""), "every series of a forgotten app is gone:\n{out}");
        assert!(
            out.contains("empacts_app_info{app=\"web\",namespace=\"ns\",phase=\"Ready\",revision=\"r1\"} 1"),
            "{out}"
        );

        m.apps.clear();
        assert!(!m.render().contains("app=\"web\""), "clear removes every app");
    }

    #[test]
    fn a_stalled_app_reports_stalled_and_forgetting_an_unknown_app_is_harmless() {
        // `Context::forget` calls this; an unknown app is a no-op.
        let m = Metrics::new();
        m.apps.forget("ns", "never-seen");
        m.apps.set("ns", "api", AppSeries { stalled: true, ..series("Stalled", "r", false) });
        assert!(m.render().contains("empacts_app_stalled{app=\"api\",namespace=\"ns\"} 1"));
        m.apps.forget("ns", "api");
        assert!(!m.render().contains("app=\"api\""));
    }
}
