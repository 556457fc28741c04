//! The CLI's errors and their exit codes: one clear line for the user, a number for scripts.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | ok |
//! | 1 | the app is not healthy, the operation was refused (conflict, no confirmation), or `diff` found differences |
//! | 2 | usage: bad flags or arguments (clap), or a confirmation needed and no terminal to ask on |
//! | 3 | the cluster is unreachable, or refused our credentials (401/403) |
//! | 4 | any other error: the app or file does not exist or is invalid, the API server answered an error |

use std::process::ExitCode;

/// What went wrong, as much as decides the exit code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CliError {
    /// The app is not (yet) healthy; the message says what it is.
    #[error("{0}")]
    Unhealthy(String),
    /// The operation was refused, or a precondition failed.
    #[error("{0}")]
    Refused(String),
    /// `diff` found differences; they were printed already.
    #[error("differences found")]
    DiffFound,
    /// The command line asks for something impossible here.
    #[error("{0}")]
    Usage(String),
    /// No connection to the API server, or no usable kubeconfig.
    #[error("cannot reach the cluster: {0}")]
    Unreachable(String),
    /// The API server refused our credentials or the verb (401/403).
    #[error("{0}")]
    Forbidden(String),
    /// Anything else, already one line.
    #[error("{0}")]
    Other(String),
}

/// The one-line message of an optimistic-concurrency conflict.
pub const CONFLICT_MESSAGE: &str = "the app changed since it was read; run the command again";

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unhealthy(_) | CliError::Refused(_) | CliError::DiffFound => 1,
            CliError::Usage(_) => 2,
            CliError::Unreachable(_) | CliError::Forbidden(_) => 3,
            CliError::Other(_) => 4,
        }
    }

    /// Print the error (one line unless `verbose`) and return the process's exit code.
    pub fn report(&self, verbose: bool, detail: Option<&anyhow::Error>) -> ExitCode {
        if matches!(self, CliError::DiffFound) {
            return ExitCode::from(self.exit_code());
        }
        eprintln!("error: {self}");
        if let Some(detail) = detail.filter(|_| verbose || backtrace_requested()) {
            eprintln!("{detail:?}");
        }
        ExitCode::from(self.exit_code())
    }
}

fn backtrace_requested() -> bool {
    std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0")
}

/// Classify an error from the commands by the first Kubernetes error in its chain; the
/// message is the context chain with the API server's own message (never a Debug dump).
pub fn classify(err: &anyhow::Error) -> CliError {
    if let Some(cli) = err.downcast_ref::<CliError>() {
        return cli.clone();
    }
    let contexts: Vec<String> = err
        .chain()
        .take_while(|e| {
            e.downcast_ref::<kube::Error>().is_none() && e.downcast_ref::<kube::config::KubeconfigError>().is_none()
        })
        .map(|e| e.to_string())
        .collect();
    let prefix = contexts.join(": ");
    let with = |detail: &str| if prefix.is_empty() { detail.to_string() } else { format!("{prefix}: {detail}") };
    for cause in err.chain() {
        if let Some(kube_err) = cause.downcast_ref::<kube::Error>() {
            return from_kube(kube_err, &with);
        }
        if let Some(config_err) = cause.downcast_ref::<kube::config::KubeconfigError>() {
            return CliError::Unreachable(with(&config_err.to_string()));
        }
        if let Some(config_err) = cause.downcast_ref::<kube::config::InferConfigError>() {
            return CliError::Unreachable(with(&config_err.to_string()));
        }
    }
    CliError::Other(format!("{err:#}"))
}

fn from_kube(err: &kube::Error, with: &dyn Fn(&str) -> String) -> CliError {
    match err {
        kube::Error::Api(status) => {
            let message = if status.message.is_empty() { status.reason.clone() } else { status.message.clone() };
            match status.code {
                401 | 403 => CliError::Forbidden(with(&format!("forbidden: {message}"))),
                409 if status.reason == "Conflict" => CliError::Refused(CONFLICT_MESSAGE.into()),
                _ => CliError::Other(with(&message)),
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => CliError::Unreachable(with(&root_cause(err))),
        kube::Error::InferConfig(_) | kube::Error::Auth(_) => CliError::Unreachable(with(&root_cause(err))),
        _ => CliError::Other(with(&root_cause(err))),
    }
}

/// The innermost message of an error chain (e.g. "Connection refused (os error 111)").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str, message: &str) -> anyhow::Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "code": code, "reason": reason, "message": message
        }))
        .unwrap();
        anyhow::Error::new(kube::Error::Api(Box::new(status))).context("annotating ns/api")
    }

    #[test]
    fn api_errors_map_to_codes_and_one_line() {
        let forbidden = classify(&api_error(403, "Forbidden", "user \"bob\" cannot patch"));
        assert_eq!(forbidden.exit_code(), 3);
        assert_eq!(forbidden.to_string(), "annotating ns/api: forbidden: user \"bob\" cannot patch");
        let conflict = classify(&api_error(409, "Conflict", "the object has been modified"));
        assert_eq!((conflict.exit_code(), conflict.to_string()), (1, CONFLICT_MESSAGE.to_string()));
        let missing = classify(&api_error(404, "NotFound", "empactsapps.empacts.io \"api\" not found"));
        assert_eq!(missing.exit_code(), 4);
        assert!(!missing.to_string().contains("ErrorResponse") && !missing.to_string().contains("Status {"));
        // An apply conflict (409 with reason Conflict too) is a refusal; AlreadyExists is not.
        assert_eq!(classify(&api_error(409, "AlreadyExists", "exists")).exit_code(), 4);
    }

    #[test]
    fn cli_errors_pass_through() {
        let err = anyhow::Error::new(CliError::Usage("pass --yes".into()));
        assert_eq!(classify(&err).exit_code(), 2);
    }
}
