//! Status projection: rebuilt whole from the plan's ledger, conditions keep their times.

use super::*;
use crate::ledger::{Entry, FailReason, FailedMark, Ledger};
use crate::plan::{PlanInput, plan};

fn t(secs: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
}

fn cond<'a>(s: &'a EmpactsAppStatus, type_: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

fn held_input() -> PlanInput {
    let g = Entry {
        revision: "g".into(),
        number: 1,
        good: Some(1),
        desired_generation: 1,
        spec_readable: true,
        image: "api:1".into(),
        ..Default::default()
    };
    let d = Entry {
        revision: "d".into(),
        number: 2,
        desired_generation: 2,
        failed: Some(FailedMark { generation: 2, reason: FailReason::RolloutFailed }),
        spec_readable: true,
        image: "api:2".into(),
        ..Default::default()
    };
    PlanInput {
        app: "api".into(),
        generation: 2,
        desired: "d".into(),
        auto_rollback: true,
        history_limit: 5,
        ledger: Ledger { entries: vec![g, d] },
        deployment: Some(DeploymentState {
            revision: Some("g".into()),
            generation: 3,
            observed_generation: 3,
            desired_replicas: 1,
            replicas: 1,
            updated_replicas: 1,
            ready_replicas: 1,
            available_replicas: 1,
            progress_deadline_exceeded: false,
            progressed_at: None,
        }),
        references_ok: vec!["g".into(), "d".into()],
        ..Default::default()
    }
}

#[test]
fn a_deleted_status_is_rebuilt_from_the_ledger() {
    let input = held_input();
    let p = plan(&input);
    let s = compute(&p, &StatusInput { previous: &EmpactsAppStatus::default(), input: &input, error: None, now: t(5) });
    assert_eq!(s.phase, Some(Phase::RolledBack));
    assert_eq!(s.last_good_revision.as_deref(), Some("g"));
    assert_eq!(s.failed_revision.as_deref(), Some("d"));
    assert_eq!(s.current_revision.as_deref(), Some("g"));
    let results: Vec<_> = s.history.iter().map(|r| (r.revision.as_str(), r.result)).collect();
    assert_eq!(results, [("d", RevisionResult::RolledBack), ("g", RevisionResult::Succeeded)]);
    assert_eq!(cond(&s, "Stalled").status, "True");
    assert_eq!(cond(&s, "Ready").status, "False");
}

#[test]
fn transition_times_move_only_when_a_condition_flips() {
    let input = held_input();
    let p = plan(&input);
    let first =
        compute(&p, &StatusInput { previous: &EmpactsAppStatus::default(), input: &input, error: None, now: t(5) });
    let again = compute(&p, &StatusInput { previous: &first, input: &input, error: None, now: t(50) });
    assert_eq!(cond(&again, "Stalled").last_transition_time, t(5));
    let errored = compute(&p, &StatusInput { previous: &first, input: &input, error: Some("boom"), now: t(60) });
    assert_eq!(cond(&errored, "Reconciling").status, "True");
    assert_eq!(cond(&errored, "Reconciling").last_transition_time, t(60));
    assert_eq!(cond(&errored, "Ready").reason, reasons::RECONCILE_ERROR);
}
