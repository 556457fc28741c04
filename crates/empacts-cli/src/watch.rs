//! `status APP --watch`: a live view of a rollout until the app is Ready (0) or stalls (1),
//! like `kubectl rollout status`.

use std::io::Write as _;
use std::time::Duration;

use empacts_api::{EmpactsApp, MigrationPhase, Phase};
use futures::StreamExt as _;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};

use crate::error::CliError;

/// Where a watched rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Still going (or the operator has not observed the latest generation yet).
    Waiting,
    /// The desired revision is fully available.
    Ready,
    /// The operator stopped making progress; the message says why.
    Failed(String),
}

/// Judge only a status of the current generation: a freshly applied app still shows the old
/// Ready until the operator observed it.
pub fn verdict(app: &EmpactsApp) -> Verdict {
    let Some(s) = &app.status else { return Verdict::Waiting };
    if s.observed_generation.is_none() || s.observed_generation != app.metadata.generation {
        return Verdict::Waiting;
    }
    let stalled = s.conditions.iter().find(|c| c.type_ == "Stalled" && c.status == "True");
    match (s.phase, stalled) {
        (Some(Phase::Ready), None) => Verdict::Ready,
        (Some(phase @ (Phase::Stalled | Phase::RolledBack | Phase::MigrationFailed)), c)
        | (Some(phase), c @ Some(_)) => {
            let why = c.map(|c| format!(": {} {}", c.reason, c.message)).unwrap_or_default();
            Verdict::Failed(format!("phase {phase}{why}"))
        }
        _ => Verdict::Waiting,
    }
}

/// A text progress bar: `[######----]`.
pub fn bar(done: i32, total: i32, width: usize) -> String {
    let filled = if total <= 0 { width } else { (done.clamp(0, total) as usize * width) / total as usize };
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// The lines of the view for one state of the app.
pub fn view(app: &EmpactsApp) -> Vec<String> {
    let s = app.status.clone().unwrap_or_default();
    let generation = app.metadata.generation.unwrap_or(0);
    let observed = s.observed_generation.map(|g| g.to_string()).unwrap_or_else(|| "-".into());
    let phase = s.phase.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
    let mut lines = vec![format!(
        "{} phase {phase}, revision {} -> {} (generation {generation}, observed {observed})",
        app.metadata.name.as_deref().unwrap_or_default(),
        s.current_revision.as_deref().unwrap_or("-"),
        s.desired_revision.as_deref().unwrap_or("-"),
    )];
    if let Some(m) = &s.migration {
        let state = match m.phase {
            MigrationPhase::Running => "running",
            MigrationPhase::Succeeded => "succeeded",
            MigrationPhase::Failed => "failed",
        };
        let reason = m.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
        lines.push(format!("  migration {} {state}{reason}", m.job));
    }
    let total = s.replicas.unwrap_or_else(|| app.spec.replicas());
    let updated = s.updated_replicas.unwrap_or(0);
    let ready = s.ready_replicas.unwrap_or(0);
    lines.push(format!("  updated {} {updated}/{total}", bar(updated, total, 20)));
    lines.push(format!("  ready   {} {ready}/{total}", bar(ready, total, 20)));
    if let Some(c) = &s.canary {
        lines.push(format!("  canary  step {} ({} canary pods)", c.progress, c.canary_replicas));
    }
    lines
}

/// One line per state for logs and pipes: phase, revisions, pods, migration, canary.
pub fn line(app: &EmpactsApp) -> String {
    let s = app.status.clone().unwrap_or_default();
    let total = s.replicas.unwrap_or_else(|| app.spec.replicas());
    let mut out = format!(
        "{}: {} revision {} -> {}, updated {}/{total}, ready {}/{total}",
        app.metadata.name.as_deref().unwrap_or_default(),
        s.phase.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        s.current_revision.as_deref().unwrap_or("-"),
        s.desired_revision.as_deref().unwrap_or("-"),
        s.updated_replicas.unwrap_or(0),
        s.ready_replicas.unwrap_or(0),
    );
    if let Some(m) = &s.migration {
        out.push_str(&format!(", migration {:?}", m.phase));
    }
    if let Some(c) = &s.canary {
        out.push_str(&format!(", canary {}", c.progress));
    }
    if s.observed_generation != app.metadata.generation {
        out.push_str(" (not yet observed)");
    }
    out
}

/// Watch the app until it is Ready (Ok) or failed/timed out (CliError exit 1). `tty`: redraw
/// the view in place; otherwise print each new line state once.
pub async fn watch(client: &Client, ns: &str, name: &str, timeout: Duration, tty: bool) -> anyhow::Result<()> {
    let api: Api<EmpactsApp> = Api::namespaced(client.clone(), ns);
    // A first read reports a missing app or an unreachable cluster with its own exit code.
    let first = crate::commands::get_app(client, ns, name).await?;
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream =
        futures::stream::once(async { Ok(first) }).chain(watcher(api, config).default_backoff().applied_objects());
    let mut stream = std::pin::pin!(stream);
    let mut screen = Screen { tty, shown: Vec::new() };
    let mut errors = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                return Err(CliError::Unhealthy(format!(
                    "timed out after {} waiting for {ns}/{name} to become Ready",
                    humantime(timeout)
                ))
                .into());
            }
            Ok(None) => return Err(CliError::Other("the watch ended unexpectedly".into()).into()),
            Ok(Some(next)) => next,
        };
        let app = match next {
            Ok(app) => app,
            // The watcher re-lists after errors with backoff; only a run of them ends the watch.
            Err(e) => {
                errors += 1;
                if errors >= 5 {
                    return Err(anyhow::Error::new(e).context(format!("watching {ns}/{name}")));
                }
                continue;
            }
        };
        errors = 0;
        screen.draw(if tty { view(&app) } else { vec![line(&app)] });
        match verdict(&app) {
            Verdict::Waiting => {}
            Verdict::Ready => {
                println!("{ns}/{name} is Ready");
                return Ok(());
            }
            Verdict::Failed(why) => return Err(CliError::Unhealthy(format!("{ns}/{name} failed: {why}")).into()),
        }
    }
}

/// `10m`, `90s`: the timeout as given.
fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) { format!("{}m", s / 60) } else { format!("{s}s") }
}

/// Parse `--timeout`: `90s`, `10m`, `1h` or plain seconds.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("{s:?} is not a duration like 90s, 10m or 1h"))?;
    match unit {
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?} is not a duration like 90s, 10m or 1h")),
    }
}

/// The terminal: redraws the view in place on a TTY, else prints each changed line state.
struct Screen {
    tty: bool,
    shown: Vec<String>,
}

impl Screen {
    fn draw(&mut self, lines: Vec<String>) {
        if lines == self.shown {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.tty {
            if !self.shown.is_empty() {
                // Cursor up over the last view, then clear to the end of the screen.
                let _ = write!(out, "\x1b[{}A\x1b[J", self.shown.len());
            }
            for l in &lines {
                let _ = writeln!(out, "{l}");
            }
        } else {
            for l in &lines {
                let _ = writeln!(out, "{l}");
            }
        }
        let _ = out.flush();
        self.shown = lines;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(status: &str) -> EmpactsApp {
        serde_yaml::from_str(&format!(
            "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {{name: api, generation: 3}}\nspec: {{image: 'api:1', replicas: 4}}\nstatus: {status}\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_stale_ready_status_is_not_the_end() {
        assert_eq!(verdict(&app("{observedGeneration: 2, phase: Ready}")), Verdict::Waiting);
        assert_eq!(verdict(&app("{observedGeneration: 3, phase: Ready}")), Verdict::Ready);
        assert_eq!(verdict(&app("{observedGeneration: 3, phase: Progressing}")), Verdict::Waiting);
    }

    #[test]
    fn stalled_and_rolled_back_fail_with_the_reason() {
        let stalled = app(
            "{observedGeneration: 3, phase: RolledBack, conditions: [{type: Stalled, status: 'True', reason: RolledBack, message: 'pods never ready', lastTransitionTime: '2026-01-01T00:00:00Z'}]}",
        );
        assert_eq!(verdict(&stalled), Verdict::Failed("phase RolledBack: RolledBack pods never ready".into()));
        assert!(matches!(verdict(&app("{observedGeneration: 3, phase: Stalled}")), Verdict::Failed(_)));
    }

    #[test]
    fn the_view_shows_bars_and_migration() {
        let lines = view(&app(
            "{observedGeneration: 3, phase: Progressing, replicas: 4, updatedReplicas: 2, readyReplicas: 1, migration: {job: api-migrate-x-1, revision: x, phase: Succeeded}}",
        ));
        assert!(lines.contains(&"  migration api-migrate-x-1 succeeded".to_string()), "{lines:?}");
        assert!(lines.contains(&format!("  updated [{}{}] 2/4", "#".repeat(10), "-".repeat(10))), "{lines:?}");
        assert!(lines.contains(&format!("  ready   [{}{}] 1/4", "#".repeat(5), "-".repeat(15))), "{lines:?}");
    }

    #[test]
    fn timeouts_parse() {
        assert_eq!(parse_timeout("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_timeout("45"), Ok(Duration::from_secs(45)));
        assert!(parse_timeout("ten").is_err());
    }
}
