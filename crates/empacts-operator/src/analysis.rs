//! Metric analysis: each metric's PromQL, with the revision's labels filled in, sent to the
//! Prometheus HTTP API (`/api/v1/query`), its one number checked against the range. Only
//! I/O and parsing here; what a measurement means for the rollout is the plan's.

use std::sync::OnceLock;
use std::time::Duration;

use empacts_api::{AnalysisMetric, EmpactsAppSpec};
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::plan::{Measurement, MetricResult, Verdict};

/// One query may take this long: a slow Prometheus must not hold the reconcile (queries run
/// concurrently, so a measurement takes about this long at most).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(QUERY_TIMEOUT)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("an HTTP client with rustls builds")
    })
}

/// `{{namespace}}`, `{{app}}` and `{{revision}}` replaced. The values are label values the
/// operator controls (DNS labels and hex), so they need no PromQL escaping.
pub fn render_query(query: &str, namespace: &str, app: &str, revision: &str) -> String {
    query.replace("{{namespace}}", namespace).replace("{{app}}", app).replace("{{revision}}", revision)
}

/// The Prometheus HTTP API's answer to an instant query.
#[derive(Debug, Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<QueryData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum QueryData {
    Vector(Vec<VectorSample>),
    Scalar(SampleValue),
    Matrix(IgnoredAny),
    String(IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct VectorSample {
    value: SampleValue,
}

/// `[<unix time>, "<value>"]`: Prometheus sends values as strings (NaN, +Inf included).
#[derive(Debug, Deserialize)]
struct SampleValue(IgnoredAny, String);

/// The single number of a response body, or why there is none.
pub fn parse_value(body: &str) -> Result<f64, String> {
    let response: ApiResponse = serde_json::from_str(body).map_err(|e| format!("unreadable answer: {e}"))?;
    if response.status != "success" {
        let kind = response.error_type.unwrap_or_default();
        return Err(format!("query error {kind}: {}", response.error.unwrap_or_default()));
    }
    let raw = match response.data {
        Some(QueryData::Scalar(v)) => v.1,
        Some(QueryData::Vector(samples)) => match samples.as_slice() {
            [] => return Err("no data".into()),
            [one] => one.value.1.clone(),
            many => return Err(format!("{} series instead of one; aggregate the query (e.g. sum())", many.len())),
        },
        Some(QueryData::Matrix(_)) | Some(QueryData::String(_)) | None => {
            return Err("the query must return a scalar or one series".into());
        }
    };
    let value: f64 = raw.parse().map_err(|_| format!("not a number: {raw}"))?;
    if value.is_nan() {
        return Err("NaN (no traffic yet?)".into());
    }
    Ok(value)
}

/// Pass, fail, or the reason it is neither.
pub fn judge(metric: &AnalysisMetric, value: Result<f64, String>) -> MetricResult {
    let range = &metric.threshold_range;
    let (value, verdict, detail) = match value {
        Err(e) => (None, Verdict::Inconclusive, format!("is inconclusive: {e}")),
        Ok(v) => {
            let low = range.min.is_some_and(|min| v < min);
            let high = range.max.is_some_and(|max| v > max);
            let bounds = match (range.min, range.max) {
                (Some(min), Some(max)) => format!("[{min}, {max}]"),
                (Some(min), None) => format!(">= {min}"),
                (None, Some(max)) => format!("<= {max}"),
                (None, None) => "any".into(),
            };
            if low || high {
                (Some(v), Verdict::Failed, format!("= {v} is outside {bounds}"))
            } else {
                (Some(v), Verdict::Passed, format!("= {v} is within {bounds}"))
            }
        }
    };
    MetricResult { metric: metric.name.clone(), value, verdict, detail }
}

async fn query(address: &str, promql: &str) -> Result<f64, String> {
    let url = format!("{}/api/v1/query", address.trim_end_matches('/'));
    let response = http()
        .get(&url)
        .query(&[("query", promql)])
        .send()
        .await
        .map_err(|e| format!("Prometheus at {address} unreachable: {}", without_url(&e)))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| format!("reading the answer of {address}: {}", without_url(&e)))?;
    // 400/422/503 carry the API's JSON error; other statuses (a proxy's page) do not.
    match parse_value(&body) {
        Err(e) if !status.is_success() && !body.trim_start().starts_with('{') => Err(format!("HTTP {status}: {e}")),
        other => other,
    }
}

/// reqwest's message names the URL with the query; the address is said once already.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(&format!(" ({url})"), "").replace(url.as_str(), "");
    }
    if e.is_timeout() { format!("timed out after {}s", QUERY_TIMEOUT.as_secs()) } else { s }
}

/// Measure every metric of `spec.analysis` once for `revision` (concurrently).
pub async fn measure(spec: &EmpactsAppSpec, namespace: &str, app: &str, revision: &str) -> Measurement {
    let Some(analysis) = &spec.analysis else {
        return Measurement { revision: revision.into(), results: vec![] };
    };
    let metrics = analysis.metrics();
    let address = analysis.prometheus.address.as_str();
    let queries = metrics.iter().map(|m| {
        let promql = render_query(&m.query, namespace, app, revision);
        async move { judge(m, query(address, &promql).await) }
    });
    Measurement { revision: revision.into(), results: futures::future::join_all(queries).await }
}

#[cfg(test)]
mod tests {
    use super::*;
    use empacts_api::ThresholdRange;

    #[test]
    fn templated_labels_select_the_revision() {
        let q = empacts_api::defaults::default_analysis_metrics()[0].query.clone();
        let r = render_query(&q, "shop", "api", "5f6d7c8b9a");
        assert!(r.contains(r#"namespace="shop",app="api",revision="5f6d7c8b9a",code=~"5..""#), "{r}");
        assert!(!r.contains("{{"), "{r}");
    }

    #[test]
    fn values_are_read_from_the_api_json() {
        let vector = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000.1,"0.05"]}]}}"#;
        assert_eq!(parse_value(vector), Ok(0.05));
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"2"]}}"#;
        assert_eq!(parse_value(scalar), Ok(2.0));
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(parse_value(empty), Err("no data".into()));
        let nan = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        assert!(parse_value(nan).unwrap_err().contains("NaN"));
        let two = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}]}}"#;
        assert!(parse_value(two).unwrap_err().contains("2 series"));
        let error = r#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        assert!(parse_value(error).unwrap_err().contains("bad_data"));
        assert!(parse_value("<html>").unwrap_err().contains("unreadable"));
        let inf = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"+Inf"]}]}}"#;
        assert_eq!(parse_value(inf), Ok(f64::INFINITY));
    }

    #[test]
    fn the_range_is_inclusive_and_errors_never_pass() {
        let m = |min, max| AnalysisMetric {
            name: "m".into(),
            query: "q".into(),
            threshold_range: ThresholdRange { min, max },
        };
        assert_eq!(judge(&m(None, Some(0.01)), Ok(0.01)).verdict, Verdict::Passed);
        assert_eq!(judge(&m(None, Some(0.01)), Ok(0.0101)).verdict, Verdict::Failed);
        assert_eq!(judge(&m(Some(1.0), None), Ok(0.5)).verdict, Verdict::Failed);
        assert_eq!(judge(&m(Some(1.0), Some(2.0)), Ok(1.5)).verdict, Verdict::Passed);
        assert_eq!(judge(&m(None, Some(0.5)), Ok(f64::INFINITY)).verdict, Verdict::Failed);
        let r = judge(&m(None, Some(0.01)), Err("Prometheus at http://p unreachable".into()));
        assert_eq!((r.verdict, r.value), (Verdict::Inconclusive, None));
    }

    #[tokio::test]
    async fn an_unreachable_prometheus_is_inconclusive() {
        // Port 9 (discard) on loopback: nothing listens in the test environment.
        let spec: EmpactsAppSpec =
            serde_yaml::from_str("{image: 'a:1', analysis: {prometheus: {address: 'http://127.0.0.1:9'}}}").unwrap();
        let m = measure(&spec, "ns", "app", "r1").await;
        assert_eq!(m.results.len(), 2, "the two default metrics");
        assert!(m.results.iter().all(|r| r.verdict == Verdict::Inconclusive), "{m:?}");
        assert_eq!(m.verdict(), Verdict::Inconclusive);
        assert!(m.results[0].detail.contains("unreachable"), "{}", m.results[0].detail);
    }
}
