//! What the app no longer needs: ControllerRevisions beyond the history limit, their
//! finished Jobs and env ConfigMaps. Never what a decision may still need: D, the revision
//! the Deployment runs, the rollback target, the last good revision, and every revision
//! whose migration is in effect since then (its rollbackCommand may have to run).

use std::collections::BTreeSet;

use super::{JobKind, ObservedJob, PlanInput};
use crate::ledger::{Ledger, MigrationMark, MigrationState};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Retention {
    /// Revisions whose ControllerRevision goes.
    pub revisions: Vec<String>,
    pub jobs: Vec<String>,
    pub config_maps: Vec<String>,
    /// Finished Jobs whose result the ledger holds: they get ttlSecondsAfterFinished, so the
    /// TTL controller removes them (and their pods) after a while for logs to be read.
    pub expire_jobs: Vec<String>,
}

impl Retention {
    pub fn is_empty(&self) -> bool {
        self.revisions.is_empty() && self.jobs.is_empty() && self.config_maps.is_empty() && self.expire_jobs.is_empty()
    }
}

/// The revisions to keep.
pub fn kept(ledger: &Ledger, desired: &str, current: Option<&str>, history_limit: usize) -> BTreeSet<String> {
    let mut keep: BTreeSet<String> = [Some(desired), current].into_iter().flatten().map(str::to_string).collect();
    let target = ledger.rollback_target(desired);
    let last_good = ledger.last_good();
    keep.extend(target.iter().chain(last_good.iter()).map(|e| e.revision.clone()));
    let since = target.iter().chain(last_good.iter()).filter_map(|e| e.good).min().unwrap_or(0);
    keep.extend(
        ledger
            .entries
            .iter()
            .filter(|e| e.migration.in_effect() && e.desired_generation > since)
            .map(|e| e.revision.clone()),
    );
    let mut by_number: Vec<_> = ledger.entries.iter().collect();
    by_number.sort_by_key(|e| std::cmp::Reverse(e.number));
    keep.extend(by_number.iter().take(history_limit.max(1)).map(|e| e.revision.clone()));
    keep
}

pub fn retention(ledger: &Ledger, desired: &str, current: Option<&str>, input: &PlanInput) -> Retention {
    let keep = kept(ledger, desired, current, input.history_limit);
    let revisions: Vec<String> =
        ledger.entries.iter().filter(|e| !keep.contains(&e.revision)).map(|e| e.revision.clone()).collect();
    let known: BTreeSet<&str> = ledger.entries.iter().map(|e| e.revision.as_str()).collect();
    let jobs: Vec<String> = input
        .jobs
        .iter()
        .filter(|j| j.state.finished() && (!keep.contains(&j.revision) || !known.contains(j.revision.as_str())))
        .filter(|j| j.revision != desired)
        .map(|j| j.name.clone())
        .collect();
    let used: BTreeSet<&str> = ledger
        .entries
        .iter()
        .filter(|e| keep.contains(&e.revision))
        .chain(std::iter::once(&input.desired_entry))
        .filter_map(|e| e.config_map.as_deref())
        .collect();
    let config_maps = input.config_maps.iter().filter(|c| !used.contains(c.as_str())).cloned().collect();
    let expire_jobs = input
        .jobs
        .iter()
        .filter(|j| j.state.finished() && !j.expiring && !jobs.contains(&j.name))
        .filter(|j| ledger.get(&j.revision).is_some_and(|e| result_recorded(e.migration, j)))
        .map(|j| j.name.clone())
        .collect();
    Retention { revisions, jobs, config_maps, expire_jobs }
}

/// Whether the ledger holds the outcome of `job`: once it does, the Job is only a log.
fn result_recorded(mark: MigrationMark, job: &ObservedJob) -> bool {
    use MigrationState::*;
    if mark.attempt != job.attempt {
        return mark.attempt > job.attempt;
    }
    match job.kind {
        JobKind::Migrate => !matches!(mark.state, None | Created),
        JobKind::Rollback => matches!(mark.state, DownSucceeded | DownFailed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Entry, FailReason, FailedMark, MigrationMark, MigrationState};
    use crate::plan::{JobKind, JobState, ObservedJob};

    fn entry(rev: &str, number: i64, good: Option<i64>) -> Entry {
        Entry {
            revision: rev.into(),
            number,
            good,
            desired_generation: number,
            spec_readable: true,
            config_map: Some(format!("app-env-{rev}")),
            ..Default::default()
        }
    }

    fn finished(rev: &str) -> ObservedJob {
        ObservedJob {
            name: format!("app-migrate-{rev}"),
            kind: JobKind::Migrate,
            revision: rev.into(),
            attempt: 1,
            state: JobState::Succeeded,
            expiring: false,
        }
    }

    #[test]
    fn keeps_the_history_window_and_prunes_the_rest_with_jobs_and_config() {
        let ledger = Ledger { entries: (1..=5).map(|n| entry(&format!("r{n}"), n, Some(n))).collect() };
        let input = PlanInput {
            history_limit: 2,
            desired_entry: entry("r5", 5, None),
            jobs: vec![finished("r1"), finished("r5")],
            config_maps: (1..=5).map(|n| format!("app-env-r{n}")).collect(),
            ..Default::default()
        };
        let r = retention(&ledger, "r5", Some("r5"), &input);
        assert_eq!(r.revisions, ["r1", "r2", "r3"]);
        assert_eq!(r.jobs, ["app-migrate-r1"]);
        assert_eq!(r.config_maps, ["app-env-r1", "app-env-r2", "app-env-r3"]);
        // r5's Job is kept but its result is not recorded (r5 has no migration mark).
        assert!(r.expire_jobs.is_empty(), "{r:?}");
    }

    #[test]
    fn a_finished_job_expires_only_once_the_ledger_holds_its_result() {
        let mut r5 = entry("r5", 5, None);
        let input = |r5: &Entry, jobs: Vec<ObservedJob>| PlanInput {
            history_limit: 10,
            desired_entry: r5.clone(),
            jobs,
            ..Default::default()
        };
        let ledger = |r5: &Entry| Ledger { entries: vec![r5.clone()] };
        r5.migration = MigrationMark::new(1, MigrationState::Created);
        let r = retention(&ledger(&r5), "r5", Some("r5"), &input(&r5, vec![finished("r5")]));
        assert!(r.expire_jobs.is_empty(), "not recorded yet: {r:?}");
        r5.migration = MigrationMark::new(1, MigrationState::Succeeded);
        let r = retention(&ledger(&r5), "r5", Some("r5"), &input(&r5, vec![finished("r5")]));
        assert_eq!(r.expire_jobs, ["app-migrate-r5"]);
        let expiring = ObservedJob { expiring: true, ..finished("r5") };
        assert!(retention(&ledger(&r5), "r5", Some("r5"), &input(&r5, vec![expiring])).expire_jobs.is_empty());
        // A down-migration's Job: recorded only with its own result, not with the up result.
        let down = ObservedJob { kind: JobKind::Rollback, name: "app-rollback-r5".into(), ..finished("r5") };
        r5.migration = MigrationMark::new(1, MigrationState::DownCreated);
        assert!(retention(&ledger(&r5), "r5", Some("r5"), &input(&r5, vec![down.clone()])).expire_jobs.is_empty());
        r5.migration = MigrationMark::new(1, MigrationState::DownSucceeded);
        let r = retention(&ledger(&r5), "r5", Some("r5"), &input(&r5, vec![down]));
        assert_eq!(r.expire_jobs, ["app-rollback-r5"]);
        // An earlier attempt's Job once a later attempt is recorded.
        r5.migration = MigrationMark::new(2, MigrationState::Created);
        let r = retention(&ledger(&r5), "r5", Some("r5"), &input(&r5, vec![finished("r5")]));
        assert_eq!(r.expire_jobs, ["app-migrate-r5"]);
    }

    #[test]
    fn never_prunes_the_rollback_target_the_current_or_an_undo_that_may_be_needed() {
        // r1 good long ago; r2..r5 desired since, r3 migrated (in effect); r5 desired and failed.
        let mut entries: Vec<Entry> = (1..=5).map(|n| entry(&format!("r{n}"), n, None)).collect();
        entries[0].good = Some(1);
        entries[2].migration = MigrationMark::new(1, MigrationState::Succeeded);
        entries[4].failed = Some(FailedMark { generation: 5, reason: FailReason::RolloutFailed });
        let ledger = Ledger { entries };
        let input = PlanInput { history_limit: 1, ..Default::default() };
        let keep = kept(&ledger, "r5", Some("r4"), input.history_limit);
        for rev in ["r1", "r3", "r4", "r5"] {
            assert!(keep.contains(rev), "{rev} kept: {keep:?}");
        }
        assert_eq!(retention(&ledger, "r5", Some("r4"), &input).revisions, ["r2"]);
    }
}
