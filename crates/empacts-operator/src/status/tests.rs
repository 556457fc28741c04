use super::*;
use crate::plan::{PlanInput, plan};

fn t(secs: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
}

fn input<'a>(prev: &'a EmpactsAppStatus, desired: &'a str, now: i64) -> StatusInput<'a> {
    StatusInput {
        previous: prev,
        generation: 1,
        desired,
        image: "api:1",
        has_migration: false,
        migration_job: "app-migrate-x",
        migration: &JobState::Absent,
        deployment: None,
        history_limit: 3,
        retry: None,
        rotation: None,
        error: None,
        now: t(now),
    }
}

fn progressing(desired: &str) -> Plan {
    plan(&PlanInput { desired: desired.into(), auto_rollback: true, ..Default::default() })
}

fn cond<'a>(s: &'a EmpactsAppStatus, type_: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn kstatus_conditions_while_progressing() {
    let prev = EmpactsAppStatus::default();
    let s = compute(&progressing("r1"), &input(&prev, "r1", 10));
    assert_eq!(s.phase, Some(Phase::Progressing));
    assert_eq!(cond(&s, "Ready").status, "False");
    assert_eq!(cond(&s, "Reconciling").status, "True");
    assert_eq!(cond(&s, "Stalled").status, "False");
    assert_eq!(cond(&s, "MigrationComplete").reason, "NoMigration");
    assert_eq!(s.observed_generation, Some(1));
    assert_eq!(s.current_revision.as_deref(), Some("r1"));
    assert_eq!(s.history[0].result, RevisionResult::InProgress);
}

#[test]
fn last_transition_time_moves_only_on_a_status_flip() {
    let prev = EmpactsAppStatus::default();
    let first = compute(&progressing("r1"), &input(&prev, "r1", 10));
    let again = compute(&progressing("r1"), &input(&first, "r1", 20));
    assert_eq!(cond(&again, "Reconciling").last_transition_time, t(10));
    assert_eq!(first, again, "same situation, same status: no write");
    let mut ready_plan = progressing("r1");
    ready_plan.phase = Phase::Ready;
    let ready = compute(&ready_plan, &input(&again, "r1", 30));
    assert_eq!(cond(&ready, "Ready").last_transition_time, t(30));
    assert_eq!(cond(&ready, "Reconciling").last_transition_time, t(30));
    assert_eq!(cond(&ready, "Stalled").last_transition_time, t(10));
    assert_eq!(ready.history[0].result, RevisionResult::Succeeded);
}

#[test]
fn history_is_bounded_newest_first_and_supersedes_unfinished() {
    let mut status = EmpactsAppStatus::default();
    for (i, rev) in ["r1", "r2", "r3", "r4"].iter().enumerate() {
        status = compute(&progressing(rev), &input(&status, rev, i as i64));
    }
    let revs: Vec<&str> = status.history.iter().map(|r| r.revision.as_str()).collect();
    assert_eq!(revs, ["r4", "r3", "r2"]);
    assert_eq!(status.history[1].result, RevisionResult::Superseded);
    assert_eq!(status.history[0].result, RevisionResult::InProgress);
}

#[test]
fn a_failed_write_shows_in_ready_and_reconciling() {
    let prev = EmpactsAppStatus::default();
    let mut ready_plan = progressing("r1");
    ready_plan.phase = Phase::Ready;
    let s = compute(
        &ready_plan,
        &StatusInput { error: Some("writing Service ns/api failed: boom"), ..input(&prev, "r1", 1) },
    );
    let ready = cond(&s, "Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "ReconcileError"));
    assert!(ready.message.contains("Service ns/api"));
    assert_eq!(cond(&s, "Reconciling").status, "True");
}
