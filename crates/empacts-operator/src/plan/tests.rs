//! The decision table: each row is an observed situation and the step it must lead to.

use super::*;

const D: &str = "dddddddddd";
const G: &str = "gggggggggg";

fn healthy(rev: &str) -> DeploymentState {
    DeploymentState {
        revision: Some(rev.into()),
        generation: 2,
        observed_generation: 2,
        desired_replicas: 3,
        replicas: 3,
        updated_replicas: 3,
        ready_replicas: 3,
        available_replicas: 3,
        progress_deadline_exceeded: false,
    }
}

fn rolling(rev: &str) -> DeploymentState {
    DeploymentState { ready_replicas: 1, available_replicas: 1, updated_replicas: 1, replicas: 4, ..healthy(rev) }
}

fn stuck(rev: &str) -> DeploymentState {
    DeploymentState { progress_deadline_exceeded: true, ..rolling(rev) }
}

fn base() -> PlanInput {
    PlanInput {
        desired: D.into(),
        auto_rollback: true,
        last_good: Some(G.into()),
        last_good_recorded: true,
        deployment: Some(healthy(G)),
        migration_job: "app-migrate-dddddddddd".into(),
        migration: JobState::Absent,
        rollback_job: JobState::Absent,
        ..Default::default()
    }
}

fn with_migration(mut i: PlanInput) -> PlanInput {
    i.has_migration = true;
    i
}

fn failed_job() -> JobState {
    JobState::Failed {
        reason: "BackoffLimitExceeded".into(),
        message: "Job has reached the specified backoff limit".into(),
    }
}

struct Row {
    name: &'static str,
    input: PlanInput,
    phase: Phase,
    deployment: DeploymentTarget,
    create_migration: bool,
    create_rollback: bool,
    failed: Option<&'static str>,
    last_good: Option<&'static str>,
}

fn row(name: &'static str, input: PlanInput, phase: Phase, deployment: DeploymentTarget) -> Row {
    Row {
        name,
        input,
        phase,
        deployment,
        create_migration: false,
        create_rollback: false,
        failed: None,
        last_good: Some(G),
    }
}

fn rows() -> Vec<Row> {
    use DeploymentTarget::*;
    vec![
        Row {
            last_good: None,
            ..row(
                "fresh install without migration rolls out",
                PlanInput { deployment: None, last_good: None, ..base() },
                Phase::Progressing,
                Desired,
            )
        },
        Row {
            create_migration: true,
            last_good: None,
            ..row(
                "fresh install with migration migrates first",
                with_migration(PlanInput { deployment: None, last_good: None, ..base() }),
                Phase::Migrating,
                Keep,
            )
        },
        row("upgrade without migration rolls out", base(), Phase::Progressing, Desired),
        Row {
            create_migration: true,
            ..row("upgrade with migration creates the Job", with_migration(base()), Phase::Migrating, Keep)
        },
        row(
            "migration running: wait, keep serving",
            PlanInput { migration: JobState::Running, ..with_migration(base()) },
            Phase::Migrating,
            Keep,
        ),
        row(
            "another migration still running: wait for it",
            PlanInput { other_migration_running: Some("app-migrate-old".into()), ..with_migration(base()) },
            Phase::Migrating,
            Keep,
        ),
        row(
            "migration succeeded: roll out",
            PlanInput { migration: JobState::Succeeded, migrated: true, ..with_migration(base()) },
            Phase::Progressing,
            Desired,
        ),
        Row {
            failed: Some(D),
            ..row(
                "migration failed: old version keeps serving",
                PlanInput { migration: failed_job(), ..with_migration(base()) },
                Phase::MigrationFailed,
                Keep,
            )
        },
        Row {
            failed: Some(D),
            ..row(
                "failed migration is not retried",
                PlanInput { migration: failed_job(), failed: Some(D.into()), ..with_migration(base()) },
                Phase::MigrationFailed,
                Keep,
            )
        },
        row(
            "retry of a failed migration",
            PlanInput {
                migration: failed_job(),
                failed: Some(D.into()),
                retry_requested: true,
                ..with_migration(base())
            },
            Phase::Migrating,
            Keep,
        ),
        row("rolling out", PlanInput { deployment: Some(rolling(D)), ..base() }, Phase::Progressing, Desired),
        row(
            "stale status of a new generation is not judged",
            PlanInput { deployment: Some(DeploymentState { observed_generation: 1, ..stuck(D) }), ..base() },
            Phase::Progressing,
            Desired,
        ),
        Row {
            last_good: Some(D),
            ..row(
                "rollout complete: ready, D becomes last good",
                PlanInput { deployment: Some(healthy(D)), ..base() },
                Phase::Ready,
                Desired,
            )
        },
        Row {
            failed: Some(D),
            ..row(
                "rollout failed: roll back to G",
                PlanInput { deployment: Some(stuck(D)), ..base() },
                Phase::RollingBack,
                Revision(G.into()),
            )
        },
        Row {
            failed: Some(D),
            ..row(
                "rollout failed without autoRollback: stall",
                PlanInput { deployment: Some(stuck(D)), auto_rollback: false, ..base() },
                Phase::Stalled,
                Keep,
            )
        },
        Row {
            failed: Some(D),
            last_good: None,
            ..row(
                "first rollout failed: nothing to roll back to",
                PlanInput { deployment: Some(stuck(D)), last_good: None, ..base() },
                Phase::Stalled,
                Keep,
            )
        },
        Row {
            failed: Some(D),
            ..row(
                "G's recorded spec lost: stall rather than guess",
                PlanInput { deployment: Some(stuck(D)), last_good_recorded: false, ..base() },
                Phase::Stalled,
                Keep,
            )
        },
        Row {
            failed: Some(D),
            ..row(
                "failed after migration without rollbackCommand: stall",
                PlanInput { deployment: Some(stuck(D)), migrated: true, ..with_migration(base()) },
                Phase::Stalled,
                Keep,
            )
        },
        Row {
            failed: Some(D),
            create_rollback: true,
            ..row(
                "failed after migration with rollbackCommand: run it first",
                PlanInput {
                    deployment: Some(stuck(D)),
                    migrated: true,
                    has_rollback_command: true,
                    ..with_migration(base())
                },
                Phase::RollingBack,
                Keep,
            )
        },
        Row {
            failed: Some(D),
            ..row(
                "rollback migration running: wait",
                PlanInput {
                    deployment: Some(stuck(D)),
                    migrated: true,
                    has_rollback_command: true,
                    rollback_job: JobState::Running,
                    failed: Some(D.into()),
                    ..with_migration(base())
                },
                Phase::RollingBack,
                Keep,
            )
        },
        Row {
            failed: Some(D),
            ..row(
                "rollback migration done: restore G",
                PlanInput {
                    deployment: Some(stuck(D)),
                    migrated: true,
                    has_rollback_command: true,
                    rollback_job: JobState::Succeeded,
                    failed: Some(D.into()),
                    ..with_migration(base())
                },
                Phase::RollingBack,
                Revision(G.into()),
            )
        },
        Row {
            failed: Some(D),
            ..row(
                "rollback migration failed: stall on D",
                PlanInput {
                    deployment: Some(stuck(D)),
                    migrated: true,
                    has_rollback_command: true,
                    rollback_job: failed_job(),
                    failed: Some(D.into()),
                    ..with_migration(base())
                },
                Phase::Stalled,
                Keep,
            )
        },
        Row {
            failed: Some(D),
            ..row(
                "rolled back and G serves: hold, no flapping",
                PlanInput { deployment: Some(healthy(G)), failed: Some(D.into()), ..base() },
                Phase::RolledBack,
                Revision(G.into()),
            )
        },
        Row {
            failed: Some(D),
            ..row(
                "rolled back, G still coming up",
                PlanInput { deployment: Some(rolling(G)), failed: Some(D.into()), ..base() },
                Phase::RollingBack,
                Revision(G.into()),
            )
        },
        row(
            "retry after a rollback rolls D again",
            PlanInput { deployment: Some(healthy(G)), failed: Some(D.into()), retry_requested: true, ..base() },
            Phase::Progressing,
            Desired,
        ),
        row(
            "a new spec after a failure proceeds",
            PlanInput { deployment: Some(healthy(G)), failed: Some("ffffffffff".into()), ..base() },
            Phase::Progressing,
            Desired,
        ),
        row("paused: nothing rolls", PlanInput { paused: true, ..base() }, Phase::Paused, Keep),
        row(
            "missing referenced secret: stall before touching pods",
            PlanInput { missing_reference: Some(("SecretNotFound".into(), "Secret db not found".into())), ..base() },
            Phase::Stalled,
            Keep,
        ),
        Row {
            failed: Some(D),
            ..row(
                "Deployment deleted while rolled back: restore G",
                PlanInput { deployment: None, failed: Some(D.into()), ..base() },
                Phase::RollingBack,
                Revision(G.into()),
            )
        },
        Row {
            failed: Some(D),
            last_good: None,
            ..row(
                "Deployment deleted, nothing good ever ran: stall",
                PlanInput { deployment: None, failed: Some(D.into()), last_good: None, ..base() },
                Phase::Stalled,
                Keep,
            )
        },
    ]
}

#[test]
fn decision_table() {
    for r in rows() {
        let p = plan(&r.input);
        assert_eq!(p.phase, r.phase, "{}: phase ({})", r.name, p.message);
        assert_eq!(p.deployment, r.deployment, "{}: deployment", r.name);
        assert_eq!(p.create_migration_job, r.create_migration, "{}: create migration", r.name);
        assert_eq!(p.create_rollback_job, r.create_rollback, "{}: create rollback", r.name);
        assert_eq!(p.failed.as_deref(), r.failed, "{}: failed revision", r.name);
        assert_eq!(p.last_good.as_deref(), r.last_good, "{}: last good", r.name);
        assert!(!p.message.is_empty(), "{}: every step explains itself", r.name);
    }
}

#[test]
fn migration_failure_message_names_the_job() {
    let p = plan(&PlanInput { migration: failed_job(), ..with_migration(base()) });
    assert!(p.message.contains("app-migrate-dddddddddd"), "{}", p.message);
    assert!(p.message.contains("BackoffLimitExceeded"), "{}", p.message);
    assert_eq!(p.migration_complete, Some(false));
}

#[test]
fn a_plan_is_a_pure_function() {
    for r in rows() {
        assert_eq!(plan(&r.input), plan(&r.input), "{}", r.name);
    }
}
