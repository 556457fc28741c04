//! Per-app series: `empacts_app_info`, `empacts_app_ready`, `empacts_app_stalled`. Each app
//! has exactly one `app_info` series (its phase and revision are labels, so a change removes
//! the old series), and every series of an app goes when the app goes.
//!
//! The series are rendered from one map of what each app last reported, at scrape time: a
//! prometheus gauge vector keeps, per series, its own copy of the metric's options and label
//! pairs (~1.4 KB per app for these three, 14 MB at 10,000 apps), this map ~150 bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};

/// What one app exports, as last set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSeries {
    pub phase: &'static str,
    pub revision: Box<str>,
    pub ready: bool,
    pub stalled: bool,
}

/// Keyed by (namespace, app): boxed strings, without a String's spare capacity.
type Last = Arc<Mutex<HashMap<(Box<str>, Box<str>), AppSeries>>>;

#[derive(Clone)]
pub struct AppGauges {
    descs: Arc<[Desc; 3]>,
    /// What each app last reported, keyed by (namespace, app).
    last: Last,
}

const INFO: (&str, &str) = ("app_info", "1 per EmpactsApp, labelled with its phase and current revision");
const READY: (&str, &str) = ("app_ready", "1 while the app's Ready condition is True");
const STALLED: (&str, &str) = ("app_stalled", "1 while the app's Stalled condition is True");

impl AppGauges {
    pub fn new() -> Self {
        let desc = |(name, help): (&str, &str), labels: &[&str]| {
            Desc::new(name.into(), help.into(), labels.iter().map(|l| l.to_string()).collect(), HashMap::new())
                .expect("static metric description is valid")
        };
        let app = ["namespace", "app"];
        let descs = [desc(INFO, &["namespace", "app", "phase", "revision"]), desc(READY, &app), desc(STALLED, &app)];
        AppGauges { descs: Arc::new(descs), last: Arc::default() }
    }

    pub fn collectors(&self) -> [Box<dyn Collector>; 1] {
        [Box::new(self.clone())]
    }

    /// Export `series` for the app (an `app_info` series with other labels goes).
    pub fn set(&self, namespace: &str, app: &str, series: AppSeries) {
        self.last.lock().expect("app series lock").insert((namespace.into(), app.into()), series);
    }

    /// Remove every series of the app (deleted, or no longer ours to report).
    pub fn forget(&self, namespace: &str, app: &str) {
        self.last.lock().expect("app series lock").remove(&(namespace.into(), app.into()) as &(Box<str>, Box<str>));
    }

    /// Remove every app's series: a replica that stops leading must not report stale state.
    pub fn clear(&self) {
        let mut last = self.last.lock().expect("app series lock");
        last.clear();
        last.shrink_to_fit();
    }
}

impl Default for AppGauges {
    fn default() -> Self {
        Self::new()
    }
}

fn family((name, help): (&str, &str), metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.into());
    family.set_help(help.into());
    family.set_field_type(MetricType::GAUGE);
    family.set_metric(metrics);
    family
}

/// One gauge sample; `labels` in the order of the description (the registry sorts the
/// samples of a family, the text encoder writes labels as given: sorted by name here).
fn sample(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut pairs: Vec<LabelPair> = labels
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        })
        .collect();
    pairs.sort_by(|a, b| a.name().cmp(b.name()));
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    let mut metric = Metric::default();
    metric.set_label(pairs);
    metric.set_gauge(gauge);
    metric
}

impl Collector for AppGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let last = self.last.lock().expect("app series lock");
        let (mut info, mut ready, mut stalled) = (Vec::new(), Vec::new(), Vec::new());
        for ((namespace, app), s) in last.iter() {
            let labels = [("namespace", &**namespace), ("app", &**app), ("phase", s.phase), ("revision", &*s.revision)];
            info.push(sample(&labels, 1.0));
            ready.push(sample(&labels[..2], f64::from(u8::from(s.ready))));
            stalled.push(sample(&labels[..2], f64::from(u8::from(s.stalled))));
        }
        if info.is_empty() {
            // Like a gauge vector without children: no family at all.
            return Vec::new();
        }
        vec![family(INFO, info), family(READY, ready), family(STALLED, stalled)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn series(phase: &'static str, revision: &str, ready: bool) -> AppSeries {
        AppSeries { phase, revision: revision.into(), ready, stalled: false }
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
