//! Reconcile errors. Each message says what failed and what to check next; `category()`
//! labels the error metric and the Warning Event reason.

use crate::validate::InvalidApp;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(#[from] InvalidApp),

    #[error("reading {kind} {namespace}/{name} failed: {source}; check the API server and the operator's RBAC")]
    Read {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error(
        "writing {kind} {namespace}/{name} failed: {source}; check the operator's RBAC and any admission webhooks or policies"
    )]
    Write {
        kind: String,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error("updating the status of EmpactsApp {namespace}/{name} failed: {source}")]
    Status {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error(
        "{kind} {namespace}/{name} already exists and is not controlled by this EmpactsApp; the operator never takes over objects it does not own: delete or rename it, or rename the app"
    )]
    NameTaken { kind: String, namespace: String, name: String },

    #[error(
        "the reconcile did not finish within {seconds} s and was abandoned (is the API server slow or unreachable?); it is retried with backoff; raise --reconcile-timeout if the API server is merely slow"
    )]
    DeadlineExceeded { seconds: u64 },

    #[error(
        "the operator's caches of namespace {namespace} have not listed within {seconds} s ({waiting}); no child is written before they have (one they do not show yet may exist): check that the operator may list and watch these kinds there, and that the API server answers; retried with backoff"
    )]
    CachesNotListed { namespace: String, waiting: String, seconds: u64 },

    #[error(
        "the recorded spec of revision {revision} (ControllerRevision {namespace}/{name}) cannot be read: {source}; delete it to let the operator re-record it"
    )]
    RecordedSpec {
        namespace: String,
        name: String,
        revision: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Whether the API server answered (the reconcile ran to its end, just not successfully),
    /// as opposed to a reconcile abandoned at its deadline.
    pub fn answered(&self) -> bool {
        !matches!(self, Error::DeadlineExceeded { .. } | Error::CachesNotListed { .. })
    }

    /// Short, stable label for metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "InvalidSpec",
            Error::Read { .. } => "ReadFailed",
            Error::Write { source, .. } | Error::Status { source, .. } if is_conflict(source.as_ref()) => "Conflict",
            Error::Write { .. } => "WriteFailed",
            Error::Status { .. } => "StatusFailed",
            Error::RecordedSpec { .. } => "RecordedSpecUnreadable",
            Error::NameTaken { .. } => "NameTaken",
            Error::DeadlineExceeded { .. } => "DeadlineExceeded",
            Error::CachesNotListed { .. } => "CachesNotListed",
        }
    }
}

pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
