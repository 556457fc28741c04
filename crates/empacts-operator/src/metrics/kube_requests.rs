//! Requests of the operator's Kubernetes client, by verb and status code: a tower layer under
//! the client's rate limit, so what it times is the API server, not our own queue.
//!
//! Durations are to the response headers. Watches are counted but not timed: their headers
//! arrive at once and the stream then lasts minutes, so neither says anything about latency.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{Method, Request, Response};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use tower::{Layer, Service};

#[derive(Clone)]
pub struct KubeRequests {
    pub total: IntCounterVec,
    pub duration: HistogramVec,
}

impl KubeRequests {
    pub fn new() -> Self {
        let total = IntCounterVec::new(
            Opts::new(
                "kube_requests_total",
                "Requests to the Kubernetes API by verb and HTTP status (error: no response)",
            ),
            &["verb", "code"],
        )
        .unwrap();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "kube_request_duration_seconds",
                "Time to the response headers of Kubernetes API requests (watches excluded)",
            )
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["verb"],
        )
        .unwrap();
        KubeRequests { total, duration }
    }

    pub fn collectors(&self) -> [Box<dyn prometheus::core::Collector>; 2] {
        [Box::new(self.total.clone()), Box::new(self.duration.clone())]
    }
}

impl Default for KubeRequests {
    fn default() -> Self {
        Self::new()
    }
}

/// The Kubernetes verb of a request: watch (`watch=true`), get (the path names an object),
/// list, create, update, patch, delete; `other` for anything else.
pub fn verb(method: &Method, path: &str, query: Option<&str>) -> &'static str {
    match *method {
        Method::GET => {
            let watch = query.unwrap_or_default().split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
            if watch {
                "watch"
            } else if names_object(path) {
                "get"
            } else {
                "list"
            }
        }
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// Whether a resource path names one object (`.../pods/x`, `.../namespaces/x`, `.../x/status`)
/// rather than a collection (`.../pods`, `.../namespaces/x/pods`). Discovery paths count as objects.
fn names_object(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return true,
    };
    let rest = match rest {
        ["namespaces", _ns, scoped @ ..] if !scoped.is_empty() => scoped,
        other => other,
    };
    rest.len() != 1
}

#[derive(Clone)]
pub struct KubeRequestLayer(KubeRequests);

impl KubeRequestLayer {
    pub fn new(requests: KubeRequests) -> Self {
        KubeRequestLayer(requests)
    }
}

impl<S> Layer<S> for KubeRequestLayer {
    type Service = KubeRequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        KubeRequestService { inner, requests: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct KubeRequestService<S> {
    inner: S,
    requests: KubeRequests,
}

impl<S, B, R> Service<Request<B>> for KubeRequestService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let verb = verb(request.method(), request.uri().path(), request.uri().query());
        // Kept for the log of refused requests (a path names objects, never their content),
        // copied only when that log is on: this runs for every request.
        let path = tracing::enabled!(tracing::Level::DEBUG).then(|| request.uri().path().to_owned());
        let requests = self.requests.clone();
        let start = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            requests.total.with_label_values(&[verb, &code]).inc();
            if let (Ok(r), Some(path)) = (&response, &path) {
                let code = r.status().as_u16();
                if code >= 400 {
                    tracing::debug!(verb, code, path, "Kubernetes API request refused");
                } else {
                    // Every request, for finding out which ones a workload sends.
                    tracing::trace!(verb, code, path, "Kubernetes API request");
                }
            }
            if verb != "watch" {
                requests.duration.with_label_values(&[verb]).observe(start.elapsed().as_secs_f64());
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_follow_the_method_the_watch_flag_and_whether_the_path_names_an_object() {
        let cases = [
            (Method::GET, "/api/v1/namespaces/ns/secrets/db", None, "get"),
            (Method::GET, "/api/v1/namespaces/ns/secrets", Some("labelSelector=a%3Db"), "list"),
            (
                Method::GET,
                "/api/v1/namespaces/ns/secrets",
                Some("labelSelector=a&watch=true&resourceVersion=1"),
                "watch",
            ),
            (Method::GET, "/apis/empacts.io/v1alpha1/empactsapps", Some("watch=true"), "watch"),
            (Method::GET, "/apis/empacts.io/v1alpha1/empactsapps", None, "list"),
            (Method::GET, "/apis/apps/v1/namespaces/ns/deployments/api/status", None, "get"),
            (Method::GET, "/api/v1/namespaces", None, "list"),
            (Method::GET, "/api/v1/namespaces/ns", None, "get"),
            (Method::GET, "/apis/coordination.k8s.io/v1/namespaces/ns/leases/empacts", Some("watcher=true"), "get"),
            (Method::GET, "/version", None, "get"),
            (Method::POST, "/apis/events.k8s.io/v1/namespaces/ns/events", None, "create"),
            (Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/ns/leases/empacts", None, "update"),
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/ns/deployments/api",
                Some("fieldManager=empacts&force=true"),
                "patch",
            ),
            (Method::DELETE, "/apis/batch/v1/namespaces/ns/jobs/api-migrate-1", None, "delete"),
            (Method::HEAD, "/api/v1/namespaces/ns/secrets/db", None, "other"),
        ];
        for (method, path, query, want) in cases {
            assert_eq!(verb(&method, path, query), want, "{method} {path}?{query:?}");
        }
    }

    #[tokio::test]
    async fn the_layer_counts_responses_by_verb_and_code_and_transport_errors_as_error() {
        let requests = KubeRequests::new();
        let layer = KubeRequestLayer::new(requests.clone());
        let mut ok = layer.layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, std::io::Error>(Response::builder().status(404).body(()).unwrap())
        }));
        let get = Request::get("/api/v1/namespaces/ns/secrets/db").body(()).unwrap();
        ok.call(get).await.unwrap();
        let watch = Request::get("/api/v1/namespaces/ns/secrets?watch=true").body(()).unwrap();
        ok.call(watch).await.unwrap();
        let mut failing = layer.layer(tower::service_fn(|_: Request<()>| async {
            Err::<Response<()>, _>(std::io::Error::other("connection refused"))
        }));
        let list = Request::get("/api/v1/namespaces/ns/secrets").body(()).unwrap();
        assert!(failing.call(list).await.is_err());

        assert_eq!(requests.total.with_label_values(&["get", "404"]).get(), 1);
        assert_eq!(requests.total.with_label_values(&["watch", "404"]).get(), 1);
        assert_eq!(requests.total.with_label_values(&["list", "error"]).get(), 1);
        assert_eq!(requests.duration.with_label_values(&["get"]).get_sample_count(), 1);
        assert_eq!(requests.duration.with_label_values(&["list"]).get_sample_count(), 1);
        assert_eq!(requests.duration.with_label_values(&["watch"]).get_sample_count(), 0, "watches are not timed");
    }
}
