//! Taking over from an earlier build: the facts it kept outside the ledger (in its status
//! and its Jobs) are imported into the ledger once, so an app it had rolled back stays
//! rolled back and a down-migration it ran still counts.

use empacts_api::{EmpactsAppStatus, RevisionResult};

use crate::ledger::{Entry, FailReason, FailedMark, Mark, MigrationMark, MigrationState};
use crate::plan::{JobKind, JobState, ObservedJob};

/// Facts of revisions an earlier build recorded, from what it left: its status (failed and
/// last good revision, history) and its Jobs (a failed migration, a down-migration that ran,
/// which that build never recorded on the revision). Applied to `entries` and returned as
/// marks to write once.
pub fn import(
    entries: &mut [Entry],
    previous: &EmpactsAppStatus,
    jobs: &[ObservedJob],
    generation: i64,
) -> Vec<(String, Mark)> {
    let mut out = Vec::new();
    for e in entries.iter_mut().filter(|e| e.legacy) {
        let job = |kind: JobKind| jobs.iter().find(|j| j.kind == kind && j.revision == e.revision).map(|j| &j.state);
        let migrate_failed = matches!(job(JobKind::Migrate), Some(JobState::Failed { .. }));
        let mut migration = e.migration;
        if matches!(job(JobKind::Rollback), Some(JobState::Succeeded)) {
            migration = MigrationMark::new(1, MigrationState::DownSucceeded);
        } else if migrate_failed && !migration.in_effect() {
            migration = MigrationMark::new(1, MigrationState::Failed);
        }
        let reason = if migrate_failed { FailReason::MigrationFailed } else { FailReason::RolloutFailed };
        let failed = (previous.failed_revision.as_deref() == Some(e.revision.as_str()))
            .then_some(FailedMark { generation, reason });
        let succeeded =
            previous.history.iter().any(|h| h.revision == e.revision && h.result == RevisionResult::Succeeded);
        let good = if previous.last_good_revision.as_deref() == Some(e.revision.as_str()) {
            Some(generation)
        } else {
            succeeded.then_some(0)
        };
        let mark = Mark::Import { migration, failed, good };
        mark.apply_to(e);
        out.push((e.revision.clone(), mark));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Ledger;
    use crate::plan::PlanInput;

    #[test]
    fn an_app_rolled_back_by_an_earlier_build_stays_rolled_back() {
        let legacy = |rev: &str, number| Entry {
            revision: rev.into(),
            number,
            legacy: true,
            spec_readable: true,
            migration: MigrationMark::new(1, MigrationState::Succeeded),
            ..Default::default()
        };
        let mut entries = vec![legacy("g", 1), legacy("d", 2)];
        let previous = EmpactsAppStatus {
            failed_revision: Some("d".into()),
            last_good_revision: Some("g".into()),
            ..Default::default()
        };
        let jobs = vec![ObservedJob {
            name: "api-rollback-d".into(),
            kind: JobKind::Rollback,
            revision: "d".into(),
            attempt: 1,
            state: JobState::Succeeded,
            expiring: false,
        }];
        let imports = import(&mut entries, &previous, &jobs, 3);
        assert_eq!(imports.len(), 2, "written once, for both");
        let input = PlanInput {
            app: "api".into(),
            generation: 3,
            desired: "d".into(),
            has_migration: true,
            auto_rollback: true,
            history_limit: 10,
            ledger: Ledger { entries },
            deployment: Some(crate::plan::DeploymentState {
                revision: Some("g".into()),
                generation: 1,
                observed_generation: 1,
                desired_replicas: 1,
                replicas: 1,
                updated_replicas: 1,
                ready_replicas: 1,
                available_replicas: 1,
                progress_deadline_exceeded: false,
                progressed_at: None,
            }),
            references_ok: vec!["g".into(), "d".into()],
            jobs,
            imports,
            ..Default::default()
        };
        let plan = crate::plan::plan(&input);
        assert_eq!(plan.phase, empacts_api::Phase::RolledBack, "{}", plan.message);
        let d = plan.ledger.get("d").unwrap();
        assert!(!d.migration.in_effect(), "its down-migration ran under the earlier build");
        assert!(
            !plan.actions.iter().any(|a| match a {
                crate::plan::Action::CreateJob { .. } => true,
                crate::plan::Action::ApplyDeployment { revision } => revision == "d",
                _ => false,
            }),
            "{:?}",
            plan.actions
        );
    }
}
