//! What the proxy records about a request, and the rules that decide what it does with one.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request that reached the proxy, in arrival order. Predicates (rule matchers, the write
/// filter) see it before it is forwarded, with `status` and `fault` still `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// 1-based arrival order over the proxy's lifetime.
    pub seq: u64,
    /// When the request reached the proxy (its client sent it just before).
    pub at: Instant,
    pub method: String,
    /// Path and query, as the client sent them (`/api/v1/namespaces/a/configmaps?watch=true&...`).
    pub path: String,
    pub user_agent: String,
    /// The client sent an `Authorization` header (forwarded as is; no admin client cert upstream).
    pub authorization: bool,
    /// `watch=true` or `watch=1` in the query.
    pub watch: bool,
    /// POST, PUT, PATCH or DELETE.
    pub mutating: bool,
    /// Mutating and not excluded by the proxy's write filter: what `kill_after_write` counts.
    pub counted_write: bool,
    /// The status the client got: the API server's, or an injected one. `None` while in flight,
    /// and when there was no answer (hang, drop, upstream unreachable, or the client went away).
    pub status: Option<u16>,
    /// What a rule did to this request (`"status 503"`, `"watch-expired"`, `"hang"`, `"drop"`,
    /// `"delay 2s"`, `"kill-after-write"`, `"upstream error: ..."`); `None` for a plain forward.
    pub fault: Option<String>,
}

impl RequestRecord {
    pub(crate) fn new(seq: u64, method: &str, path: &str, user_agent: &str, authorization: bool) -> Self {
        let mut record = RequestRecord {
            seq,
            at: Instant::now(),
            method: method.to_string(),
            path: path.to_string(),
            user_agent: user_agent.to_string(),
            authorization,
            watch: false,
            mutating: matches!(method, "POST" | "PUT" | "PATCH" | "DELETE"),
            counted_write: false,
            status: None,
            fault: None,
        };
        let watch = record.query_params().any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
        record.watch = watch;
        record
    }

    /// The path without the query.
    pub fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(&self.path, |(p, _)| p)
    }

    /// The query string, if any.
    pub fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, q)| q)
    }

    /// `key=value` pairs of the query (not percent-decoded).
    pub fn query_params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.query().into_iter().flat_map(|q| q.split('&')).map(|kv| kv.split_once('=').unwrap_or((kv, "")))
    }

    /// Method is `method` (case-insensitive) and the path without query is exactly `path`.
    pub fn is(&self, method: &str, path: &str) -> bool {
        self.method.eq_ignore_ascii_case(method) && self.path_only() == path
    }
}

/// Predicate over a request, shared with the proxy's tasks.
pub type RequestPredicate = Arc<dyn Fn(&RequestRecord) -> bool + Send + Sync>;

/// The default write filter: every mutating request counts except Lease traffic
/// (`/apis/coordination.k8s.io/`) and Event creation (`/api/v1/namespaces/*/events`,
/// `/apis/events.k8s.io/`), which happen on timers, not as steps of a reconcile.
pub fn default_write_filter(r: &RequestRecord) -> bool {
    let path = r.path_only();
    let core_event = path.strip_prefix("/api/v1/namespaces/").and_then(|rest| rest.split('/').nth(1)) == Some("events");
    r.mutating
        && !path.starts_with("/apis/coordination.k8s.io/")
        && !path.starts_with("/apis/events.k8s.io/")
        && !core_event
}

/// Which requests a [`FaultRule`] applies to; every condition set must hold. `Match::any()`
/// matches everything.
#[derive(Clone, Default)]
pub struct Match {
    methods: Option<Vec<String>>,
    path: Option<String>,
    path_contains: Option<String>,
    predicate: Option<RequestPredicate>,
    watch: Option<bool>,
    user_agent_contains: Option<String>,
}

impl Match {
    pub fn any() -> Self {
        Match::default()
    }

    /// One of these methods (case-insensitive).
    pub fn methods<I: IntoIterator<Item = S>, S: Into<String>>(mut self, methods: I) -> Self {
        self.methods = Some(methods.into_iter().map(|m| m.into().to_ascii_uppercase()).collect());
        self
    }

    /// The path without the query is exactly `path` (e.g. one Lease, not the Lease list).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Path and query contain `needle`.
    pub fn path_contains(mut self, needle: impl Into<String>) -> Self {
        self.path_contains = Some(needle.into());
        self
    }

    /// An arbitrary condition on the request.
    pub fn predicate(mut self, pred: impl Fn(&RequestRecord) -> bool + Send + Sync + 'static) -> Self {
        self.predicate = Some(Arc::new(pred));
        self
    }

    /// Only watches (`true`) or only non-watch requests (`false`).
    pub fn watch(mut self, watch: bool) -> Self {
        self.watch = Some(watch);
        self
    }

    /// User-Agent contains `needle`.
    pub fn user_agent_contains(mut self, needle: impl Into<String>) -> Self {
        self.user_agent_contains = Some(needle.into());
        self
    }

    pub fn matches(&self, r: &RequestRecord) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.iter().any(|m| m.eq_ignore_ascii_case(&r.method)))
            && self.path.as_ref().is_none_or(|p| r.path_only() == p)
            && self.path_contains.as_ref().is_none_or(|n| r.path.contains(n.as_str()))
            && self.watch.is_none_or(|w| w == r.watch)
            && self.user_agent_contains.as_ref().is_none_or(|n| r.user_agent.contains(n.as_str()))
            && self.predicate.as_ref().is_none_or(|p| p(r))
    }
}

impl fmt::Debug for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Match")
            .field("methods", &self.methods)
            .field("path", &self.path)
            .field("path_contains", &self.path_contains)
            .field("predicate", &self.predicate.as_ref().map(|_| "<fn>"))
            .field("watch", &self.watch)
            .field("user_agent_contains", &self.user_agent_contains)
            .finish()
    }
}

/// What the proxy does with a request a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer `code` with a Kubernetes `Status` body (and `Retry-After: secs` if set) without
    /// forwarding.
    Status { code: u16, retry_after: Option<u32> },
    /// Answer 200 with a single watch event `ERROR` carrying a 410 Expired `Status`, then end the
    /// stream (what the API server does when a watch's resourceVersion is too old).
    WatchExpired,
    /// Never answer, until the rule is removed (then the request is handled as if it had just
    /// arrived) or the proxy is dropped (then the connection closes).
    Hang,
    /// Close the connection without an answer.
    Drop,
    /// Forward, but hold each chunk of the response body for this long after it arrived from the
    /// API server (order preserved; headers are not delayed).
    Delay(Duration),
}

impl Action {
    /// [`Action::Status`] without `Retry-After`.
    pub fn status(code: u16) -> Self {
        Action::Status { code, retry_after: None }
    }

    /// [`Action::Status`] with `Retry-After: secs`.
    pub fn status_retry_after(code: u16, secs: u32) -> Self {
        Action::Status { code, retry_after: Some(secs) }
    }

    pub(crate) fn label(&self) -> String {
        match self {
            Action::Status { code, .. } => format!("status {code}"),
            Action::WatchExpired => "watch-expired".into(),
            Action::Hang => "hang".into(),
            Action::Drop => "drop".into(),
            Action::Delay(d) => format!("delay {d:?}"),
        }
    }
}

/// A fault rule: the first rule (in insertion order) that matches a request and has hits left
/// decides what happens to it.
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub matcher: Match,
    pub action: Action,
    /// At most this many requests get the action; `None`: unlimited.
    pub max_hits: Option<usize>,
}

impl FaultRule {
    pub fn new(matcher: Match, action: Action) -> Self {
        FaultRule { matcher, action, max_hits: None }
    }

    /// Apply to at most `n` requests, then stop matching.
    pub fn times(mut self, n: usize) -> Self {
        self.max_hits = Some(n);
        self
    }
}

/// Handle of an added rule, for [`super::FaultProxy::remove_rule`] and
/// [`super::FaultProxy::rule_hits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(pub(crate) u64);

/// A [`Status`](https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/status/)
/// object as the API server sends it for an error.
pub(crate) fn status_json(code: u16, message: &str) -> serde_json::Value {
    let reason = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    };
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(method: &str, path: &str) -> RequestRecord {
        RequestRecord::new(1, method, path, "ua/1", false)
    }

    #[test]
    fn classifies_requests() {
        assert!(rec("GET", "/api/v1/namespaces/a/configmaps?watch=true&rv=1").watch);
        assert!(rec("GET", "/api/v1/configmaps?watch=1").watch);
        assert!(!rec("GET", "/api/v1/configmaps?watch=false").watch);
        assert!(!rec("GET", "/api/v1/watchers").watch);
        assert!(rec("PATCH", "/x").mutating && !rec("GET", "/x").mutating);
        assert_eq!(rec("GET", "/a/b?c=d").path_only(), "/a/b");
        assert!(rec("post", "/a/b?x").is("POST", "/a/b"));
    }

    #[test]
    fn default_write_filter_excludes_leases_and_events() {
        assert!(default_write_filter(&rec("POST", "/apis/batch/v1/namespaces/a/jobs")));
        assert!(default_write_filter(&rec("PUT", "/api/v1/namespaces/events/configmaps/x")));
        assert!(!default_write_filter(&rec("GET", "/apis/batch/v1/namespaces/a/jobs")));
        assert!(!default_write_filter(&rec("PUT", "/apis/coordination.k8s.io/v1/namespaces/a/leases/l")));
        assert!(!default_write_filter(&rec("POST", "/api/v1/namespaces/a/events")));
        assert!(!default_write_filter(&rec("POST", "/apis/events.k8s.io/v1/namespaces/a/events")));
    }

    #[test]
    fn match_conditions_combine() {
        let m = Match::any().methods(["get"]).path_contains("/configmaps").watch(true).user_agent_contains("ua");
        assert!(m.matches(&rec("GET", "/api/v1/namespaces/a/configmaps?watch=true")));
        assert!(!m.matches(&rec("GET", "/api/v1/namespaces/a/configmaps")));
        assert!(!m.matches(&rec("POST", "/api/v1/namespaces/a/configmaps?watch=true")));
        assert!(!Match::any().predicate(|r| r.seq > 1).matches(&rec("GET", "/")));
        assert!(Match::any().matches(&rec("DELETE", "/")));
    }

    #[test]
    fn path_matches_exactly_without_the_query() {
        let lease = "/apis/coordination.k8s.io/v1/namespaces/a/leases/l";
        let renewals = Match::any().methods(["PUT", "PATCH"]).path(lease);
        assert!(renewals.matches(&rec("PUT", lease)));
        assert!(renewals.matches(&rec("patch", &format!("{lease}?fieldManager=x"))));
        assert!(!renewals.matches(&rec("GET", lease)), "reads pass");
        assert!(!renewals.matches(&rec("PUT", &format!("{lease}2"))), "another Lease passes");
        assert!(!renewals.matches(&rec("PUT", "/apis/coordination.k8s.io/v1/namespaces/a/leases")));
    }
}
