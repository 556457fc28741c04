//! Canary steps, promotion, abort and metric analysis: the decision table.

use super::tests::entry;
use super::*;

const D: &str = "dddddddddd";
const G: &str = "gggggggggg";
const NOW: i64 = 1_800_000_000;

fn deployment(rev: &str, replicas: i32, ready: i32) -> DeploymentState {
    DeploymentState {
        revision: Some(rev.into()),
        generation: 2,
        observed_generation: 2,
        desired_replicas: replicas,
        replicas,
        updated_replicas: replicas,
        ready_replicas: ready,
        available_replicas: ready,
        progress_deadline_exceeded: false,
        progressed_at: None,
    }
}

/// G good and serving 10 pods; D desired at generation 2 with steps 10% (60 s) and 50% (60 s).
fn base() -> PlanInput {
    let mut g = entry(G, 1, 1);
    g.good = Some(1);
    PlanInput {
        app: "app".into(),
        generation: 2,
        desired: D.into(),
        auto_rollback: true,
        history_limit: 10,
        ledger: Ledger { entries: vec![g, entry(D, 2, 2)] },
        deployment: Some(deployment(G, 10, 10)),
        references_ok: vec![D.into(), G.into()],
        now: NOW,
        delivery: Delivery::Canary(vec![Step { weight: 10, pause: Some(60) }, Step { weight: 50, pause: Some(60) }]),
        replicas: 10,
        ..Default::default()
    }
}

fn at_step(mut i: PlanInput, step: u32, since: Option<i64>) -> PlanInput {
    i.ledger.get_mut(D).unwrap().canary = Some(CanaryMark { generation: 2, step, since });
    i
}

fn with_analysis(mut i: PlanInput) -> PlanInput {
    i.analysis = Some(AnalysisSettings { interval: 10, failure_limit: 2, inconclusive_limit: 3, duration: None });
    i
}

fn measured(verdict: Verdict) -> Measurement {
    Measurement {
        revision: D.into(),
        results: vec![MetricResult {
            metric: "error-rate".into(),
            value: Some(0.05),
            verdict,
            detail: "= 0.05 is outside <= 0.01".into(),
        }],
    }
}

/// The marks of a plan but the rolled-at clock (tested on its own).
fn marks(p: &Plan) -> Vec<Mark> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Mark { mark: Mark::Rolled(_), .. } => None,
            Action::Mark { mark, .. } => Some(mark.clone()),
            _ => None,
        })
        .collect()
}

fn rolled(p: &Plan) -> Vec<i64> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Mark { mark: Mark::Rolled(t), .. } => Some(*t),
            _ => None,
        })
        .collect()
}

fn canary_action(p: &Plan) -> Option<(i32, Option<i32>)> {
    p.actions.iter().find_map(|a| match a {
        Action::ApplyCanary { revision, replicas, stable_replicas } if revision == D => {
            Some((*replicas, *stable_replicas))
        }
        _ => None,
    })
}

fn deploys(p: &Plan) -> Option<String> {
    p.actions.iter().find_map(|a| match a {
        Action::ApplyDeployment { revision } => Some(revision.clone()),
        _ => None,
    })
}

fn pos(p: &Plan, f: impl Fn(&Action) -> bool) -> usize {
    p.actions.iter().position(f).unwrap_or_else(|| panic!("no such action in {:?}", p.actions))
}

#[test]
fn a_canary_starts_at_its_first_step_next_to_the_untouched_stable_template() {
    let p = plan(&base());
    let start = Mark::Canary(CanaryMark { generation: 2, step: 0, since: None });
    let marked = pos(&p, |a| matches!(a, Action::Mark { mark, .. } if *mark == start));
    let applied = pos(&p, |a| matches!(a, Action::ApplyCanary { .. }));
    assert!(marked < applied, "the canary is recorded before its Deployment changes");
    assert_eq!(canary_action(&p), Some((1, Some(9))), "10% of 10 pods: 1 canary, 9 stable");
    assert_eq!(deploys(&p), None, "the stable Deployment keeps its template");
    assert_eq!((p.phase, p.reason), (Phase::Progressing, reasons::CANARY_STEP));
    assert_eq!(p.current.as_deref(), Some(G));
    let view = p.canary.unwrap();
    assert_eq!((view.step, view.steps, view.weight), (1, 2, 10));
}

#[test]
fn replica_counts_follow_the_weight_with_at_least_one_pod_each() {
    assert_eq!(lifecycle::canary_replicas(10, 10), 1);
    assert_eq!(lifecycle::canary_replicas(10, 50), 5);
    assert_eq!(lifecycle::canary_replicas(3, 10), 1);
    assert_eq!(lifecycle::canary_replicas(3, 50), 2);
    assert_eq!(lifecycle::canary_replicas(0, 10), 1);
    let mut one = base();
    one.replicas = 1;
    one.deployment = Some(deployment(G, 1, 1));
    assert_eq!(canary_action(&plan(&one)), Some((1, Some(1))), "the stable keeps a pod");
    let mut scaled = base();
    scaled.autoscaled = true;
    assert_eq!(canary_action(&plan(&scaled)), Some((1, None)), "the autoscaler owns the stable's count");
}

#[test]
fn the_pause_counts_from_when_the_step_is_ready_then_the_next_step_runs() {
    let mut i = at_step(base(), 0, None);
    i.canary = Some(deployment(D, 1, 0));
    let p = plan(&i);
    assert!(marks(&p).is_empty(), "not ready yet: {:?}", marks(&p));
    assert!(p.message.contains("0/1 canary pods ready"), "{}", p.message);

    i.canary = Some(deployment(D, 1, 1));
    let p = plan(&i);
    assert_eq!(marks(&p), vec![Mark::Canary(CanaryMark { generation: 2, step: 0, since: Some(NOW) })]);
    assert!(p.message.contains("next step in 60s"), "{}", p.message);

    let mut i = at_step(i, 0, Some(NOW - 59));
    let p = plan(&i);
    assert!(marks(&p).is_empty());
    assert_eq!(p.wake, Some(1), "reconcile again when the pause ends");
    i.now = NOW + 1;
    let p = plan(&i);
    assert_eq!(marks(&p), vec![Mark::Canary(CanaryMark { generation: 2, step: 1, since: None })]);

    let i = at_step(i, 1, None);
    assert_eq!(canary_action(&plan(&i)), Some((5, Some(5))), "50% of 10 pods");
}

#[test]
fn after_the_last_step_the_stable_takes_the_template_then_the_canary_stops() {
    let mut i = at_step(base(), 1, Some(NOW - 61));
    i.canary = Some(deployment(D, 5, 5));
    let p = plan(&i);
    assert_eq!(marks(&p), vec![Mark::Canary(CanaryMark { generation: 2, step: 2, since: None })]);
    assert_eq!(deploys(&p).as_deref(), Some(D));
    assert_eq!(p.reason, reasons::PROMOTING);
    assert!(!p.actions.contains(&Action::StopCanary), "the canary serves until the stable pods are up");

    let mut i = at_step(i, 2, None);
    i.deployment = Some(DeploymentState { ready_replicas: 4, available_replicas: 4, ..deployment(D, 10, 10) });
    let p = plan(&i);
    assert!(!p.actions.contains(&Action::StopCanary));
    assert_eq!(p.phase, Phase::Progressing);
    i.deployment = Some(deployment(D, 10, 10));
    let p = plan(&i);
    assert!(p.actions.contains(&Action::StopCanary));
    assert_eq!(p.phase, Phase::Ready);
    assert!(marks(&p).contains(&Mark::Good(2)));
}

#[test]
fn failed_measurements_up_to_the_limit_abort_the_canary_and_the_stable_serves() {
    let mut i = with_analysis(at_step(base(), 0, Some(NOW - 20)));
    i.canary = Some(deployment(D, 1, 1));
    i.measurement = Some(measured(Verdict::Failed));
    let p = plan(&i);
    let first = AnalysisMark { generation: 2, started: NOW - 20, last: Some(NOW), failed: 1, ..Default::default() };
    assert_eq!(marks(&p), vec![Mark::Analysis(first)]);
    assert_eq!(p.phase, Phase::Progressing, "one failure of two allowed");
    assert!(p.notes.iter().any(|(r, n)| *r == "AnalysisMeasurementFailed" && n.contains("error-rate")));

    i.ledger.get_mut(D).unwrap().analysis = Some(first);
    i.now = NOW + 10;
    let p = plan(&i);
    let failure = FailedMark { generation: 2, reason: FailReason::AnalysisFailed };
    let failed_at = pos(&p, |a| matches!(a, Action::Mark { mark: Mark::Failed(f), .. } if *f == failure));
    let stop = pos(&p, |a| *a == Action::StopCanary);
    assert!(failed_at < stop, "marked failed before anything is undone");
    assert_eq!(deploys(&p).as_deref(), Some(G), "the stable is applied at full size again");
    assert_eq!((p.phase, p.reason), (Phase::RolledBack, reasons::ANALYSIS_FAILED));
    assert!(p.message.contains("2 of 2 measurements failed"), "{}", p.message);
    assert!(canary_action(&p).is_none(), "the canary gets no new pods");
}

#[test]
fn inconclusive_measurements_never_pass_and_abort_at_their_limit() {
    let mut i = with_analysis(at_step(base(), 0, Some(NOW - 20)));
    i.canary = Some(deployment(D, 1, 1));
    i.measurement = Some(measured(Verdict::Inconclusive));
    i.ledger.get_mut(D).unwrap().analysis = Some(AnalysisMark {
        generation: 2,
        started: NOW - 20,
        last: Some(NOW - 10),
        inconclusive: 2,
        ..Default::default()
    });
    let p = plan(&i);
    assert_eq!(p.reason, reasons::ANALYSIS_FAILED);
    assert!(p.message.contains("3 measurements were inconclusive"), "{}", p.message);
    // A stale analysis of an earlier desired generation does not count.
    i.ledger.get_mut(D).unwrap().analysis =
        Some(AnalysisMark { generation: 1, started: 0, last: Some(1), inconclusive: 2, ..Default::default() });
    assert_eq!(plan(&i).phase, Phase::Progressing);
}

#[test]
fn an_aborted_canary_with_a_migration_runs_the_down_migration_after_stopping_the_canary() {
    let mut i = with_analysis(at_step(base(), 0, Some(NOW - 20)));
    i.has_migration = true;
    let d = i.ledger.get_mut(D).unwrap();
    d.migration = MigrationMark::new(1, MigrationState::Succeeded);
    d.has_rollback_command = true;
    i.canary = Some(deployment(D, 1, 1));
    i.abort = Some("a1".into());
    let p = plan(&i);
    let ack =
        Mark::AbortAck { value: "a1".into(), failed: Some(FailedMark { generation: 2, reason: FailReason::Aborted }) };
    assert_eq!(marks(&p)[0], ack);
    let stop = pos(&p, |a| *a == Action::StopCanary);
    let job = pos(&p, |a| matches!(a, Action::CreateJob { kind: JobKind::Rollback, .. }));
    assert!(stop < job);
    assert_eq!(deploys(&p), None, "the stable waits for the down-migration? no: it never changed");
    assert_eq!(p.phase, Phase::RollingBack);

    // Without a rollbackCommand: stalled, the canary stopped, the stable untouched.
    i.ledger.get_mut(D).unwrap().has_rollback_command = false;
    let p = plan(&i);
    assert_eq!(p.reason, reasons::ROLLBACK_NEEDS_COMMAND);
    assert!(p.actions.contains(&Action::StopCanary));
    assert_eq!(deploys(&p), None);
}

#[test]
fn abort_and_promote_without_a_canary_are_acknowledged_and_refused() {
    let mut i = base();
    i.delivery = Delivery::RollingUpdate;
    i.deployment = Some(deployment(D, 10, 10));
    i.abort = Some("a1".into());
    let p = plan(&i);
    assert!(marks(&p).contains(&Mark::AbortAck { value: "a1".into(), failed: None }));
    assert!(p.notes.iter().any(|(r, _)| *r == "AbortRefused"));
    assert_eq!(p.phase, Phase::Ready);
}

#[test]
fn promote_skips_the_current_pause_and_full_promote_skips_every_step() {
    let mut i = at_step(base(), 0, Some(NOW));
    i.canary = Some(deployment(D, 1, 1));
    i.promote = Some("p1".into());
    let p = plan(&i);
    let next = CanaryMark { generation: 2, step: 1, since: None };
    assert_eq!(marks(&p), vec![Mark::PromoteAck { value: "p1".into(), canary: Some(next) }]);
    assert_eq!(canary_action(&p), Some((5, Some(5))));
    i.ledger.get_mut(D).unwrap().promote_ack = Some("p1".into());
    i.ledger.get_mut(D).unwrap().canary = Some(next);
    assert!(marks(&plan(&i)).iter().all(|m| !matches!(m, Mark::PromoteAck { .. })), "acknowledged once");

    i.promote = Some("full:p2".into());
    let p = plan(&i);
    assert_eq!(deploys(&p).as_deref(), Some(D));
    assert_eq!(p.reason, reasons::PROMOTING);
}

#[test]
fn a_step_without_pause_waits_for_promote() {
    let mut i = at_step(base(), 0, Some(NOW - 10_000));
    i.delivery = Delivery::Canary(vec![Step { weight: 20, pause: None }]);
    i.canary = Some(deployment(D, 2, 2));
    let p = plan(&i);
    assert_eq!(p.reason, reasons::WAITING_FOR_PROMOTE);
    assert!(marks(&p).is_empty());
}

#[test]
fn a_restarted_operator_resumes_at_the_recorded_step_without_another_migration() {
    let mut i = at_step(base(), 1, Some(NOW - 5));
    i.has_migration = true;
    i.ledger.get_mut(D).unwrap().migration = MigrationMark::new(1, MigrationState::Succeeded);
    i.canary = Some(deployment(D, 5, 5));
    let p = plan(&i);
    assert_eq!(canary_action(&p), Some((5, Some(5))));
    assert!(p.actions.iter().all(|a| !matches!(a, Action::CreateJob { .. })));
    assert!(marks(&p).is_empty());
}

#[test]
fn the_migration_gate_runs_before_the_canary() {
    let mut i = base();
    i.has_migration = true;
    let p = plan(&i);
    assert_eq!(p.phase, Phase::Migrating);
    assert!(canary_action(&p).is_none());
}

#[test]
fn the_first_rollout_and_an_unproven_stable_roll_without_canary() {
    let mut i = base();
    i.ledger.get_mut(G).unwrap().good = None;
    let p = plan(&i);
    assert_eq!(deploys(&p).as_deref(), Some(D));
    assert!(canary_action(&p).is_none());
    let mut first = base();
    first.deployment = None;
    first.ledger.entries.retain(|e| e.revision == D);
    assert_eq!(deploys(&plan(&first)).as_deref(), Some(D));
}

#[test]
fn a_canary_whose_pods_never_become_ready_fails_like_a_rollout() {
    let mut i = at_step(base(), 0, None);
    i.canary = Some(DeploymentState { progress_deadline_exceeded: true, ..deployment(D, 1, 0) });
    let p = plan(&i);
    assert!(marks(&p).contains(&Mark::Failed(FailedMark { generation: 2, reason: FailReason::RolloutFailed })));
    assert!(p.actions.contains(&Action::StopCanary));
}

#[test]
fn measurements_are_due_only_while_a_ready_canary_step_runs_and_each_interval() {
    let mut i = with_analysis(at_step(base(), 0, None));
    assert_eq!(analysis_due(&i), None, "the step's pods are not ready yet");
    i = at_step(i, 0, Some(NOW - 1));
    assert_eq!(analysis_due(&i).as_deref(), Some(D), "first measurement as soon as the step is ready");
    let mut ready = i.clone();
    ready.canary = Some(deployment(D, 1, 1));
    assert_eq!(plan(&ready).wake, Some(10), "the next measurement is due in one interval");
    i.ledger.get_mut(D).unwrap().analysis =
        Some(AnalysisMark { generation: 2, started: NOW - 1, last: Some(NOW - 9), ..Default::default() });
    assert_eq!(analysis_due(&i), None, "interval 10 s not over");
    i.now = NOW + 1;
    assert_eq!(analysis_due(&i).as_deref(), Some(D));
    i.paused = true;
    assert_eq!(analysis_due(&i), None, "a paused app is not measured");
    i.paused = false;
    i.analysis = None;
    assert_eq!(analysis_due(&i), None, "no analysis configured");
}

#[test]
fn spec_paused_holds_the_canary_at_its_step() {
    let mut i = at_step(base(), 0, Some(NOW - 1000));
    i.canary = Some(deployment(D, 1, 1));
    i.paused = true;
    let p = plan(&i);
    assert_eq!(p.phase, Phase::Paused);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn a_rolling_update_with_analysis_duration_becomes_good_only_after_the_window() {
    let mut i = base();
    i.delivery = Delivery::RollingUpdate;
    i.analysis = Some(AnalysisSettings { interval: 10, failure_limit: 1, inconclusive_limit: 3, duration: Some(300) });
    i.deployment = Some(deployment(D, 10, 10));
    assert_eq!(analysis_due(&i).as_deref(), Some(D));
    i.measurement = Some(measured(Verdict::Passed));
    let p = plan(&i);
    assert_eq!(p.reason, reasons::ANALYSING);
    assert!(!marks(&p).contains(&Mark::Good(2)));
    let started = AnalysisMark { generation: 2, started: NOW, last: Some(NOW), passed: 1, ..Default::default() };
    assert!(marks(&p).contains(&Mark::Analysis(started)));

    i.ledger.get_mut(D).unwrap().analysis = Some(started);
    i.measurement = None;
    i.now = NOW + 300;
    let p = plan(&i);
    assert!(marks(&p).contains(&Mark::Good(2)));
    assert_eq!(p.phase, Phase::Ready);

    i.now = NOW + 100;
    i.measurement = Some(measured(Verdict::Failed));
    let p = plan(&i);
    assert!(marks(&p).contains(&Mark::Failed(FailedMark { generation: 2, reason: FailReason::AnalysisFailed })));
    assert_eq!(deploys(&p).as_deref(), Some(G), "rolled back to the last good revision");

    // The first rollout of an app has nothing to go back to: it is not analysed.
    i.ledger.get_mut(G).unwrap().good = None;
    i.ledger.get_mut(D).unwrap().analysis = None;
    assert_eq!(analysis_due(&i), None);
    let p = plan(&i);
    assert_eq!(p.phase, Phase::Ready);
    assert!(marks(&p).contains(&Mark::Good(2)));
}

#[test]
fn the_operator_judges_a_rollout_the_deployment_controller_never_times_out() {
    // D rolled at NOW - 100 with a 10 s deadline; the Deployment never reports
    // ProgressDeadlineExceeded (a stale NewReplicaSetAvailable condition).
    let mut i = base();
    i.delivery = Delivery::RollingUpdate;
    i.progress_deadline = 10;
    let p = plan(&i);
    assert_eq!(rolled(&p), vec![NOW], "the clock starts when the Deployment switches to D");
    let stuck = DeploymentState { ready_replicas: 0, available_replicas: 0, ..deployment(D, 1, 0) };
    i.deployment = Some(stuck);
    i.ledger.get_mut(D).unwrap().rolled_at = Some(NOW - 10 - lifecycle::OVERDUE_GRACE_SECONDS);
    assert_eq!(plan(&i).phase, Phase::Progressing, "within the grace the controller still judges");
    i.ledger.get_mut(D).unwrap().rolled_at = Some(NOW - 11 - lifecycle::OVERDUE_GRACE_SECONDS);
    let p = plan(&i);
    assert!(marks(&p).contains(&Mark::Failed(FailedMark { generation: 2, reason: FailReason::RolloutFailed })));
    // Progress the controller reported moves the deadline.
    i.deployment.as_mut().unwrap().progressed_at = Some(NOW - 5);
    assert_eq!(plan(&i).phase, Phase::Progressing, "still progressing: not overdue");
    i.deployment.as_mut().unwrap().progressed_at = Some(NOW - 1000);
    assert!(marks(&plan(&i)).iter().any(|m| matches!(m, Mark::Failed(_))), "a stale condition does not help");
    // A revision that was good at this desired generation is never judged by the clock
    // (a later scale-up waiting for nodes is no failed rollout).
    i.ledger.get_mut(D).unwrap().good = Some(2);
    assert!(!marks(&plan(&i)).iter().any(|m| matches!(m, Mark::Failed(_))));
}

#[test]
fn a_canary_step_whose_pods_stay_unready_past_the_deadline_fails() {
    let mut i = at_step(base(), 0, None);
    i.progress_deadline = 10;
    i.ledger.get_mut(D).unwrap().rolled_at = Some(NOW - 60);
    i.canary = Some(deployment(D, 1, 0));
    let p = plan(&i);
    assert!(marks(&p).contains(&Mark::Failed(FailedMark { generation: 2, reason: FailReason::RolloutFailed })));
    assert!(p.actions.contains(&Action::StopCanary));
    let first = plan(&base());
    assert_eq!(rolled(&first), vec![NOW], "a canary's clock starts with its first step");
}
