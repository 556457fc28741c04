//! The decision table (each row: an observed situation and the step it must lead to) and
//! property tests of the safety rules over arbitrary ledgers and observations.

use proptest::prelude::*;

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
        progressed_at: None,
    }
}

fn rolling(rev: &str) -> DeploymentState {
    DeploymentState { ready_replicas: 1, available_replicas: 1, updated_replicas: 1, replicas: 4, ..healthy(rev) }
}

fn stuck(rev: &str) -> DeploymentState {
    DeploymentState { progress_deadline_exceeded: true, ..rolling(rev) }
}

pub(super) fn entry(rev: &str, number: i64, desired_generation: i64) -> Entry {
    Entry { revision: rev.into(), number, desired_generation, spec_readable: true, ..Default::default() }
}

/// G good at generation 1 serves; D desired at generation 2.
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
        deployment: Some(healthy(G)),
        references_ok: vec![D.into(), G.into()],
        ..Default::default()
    }
}

fn with_migration(mut i: PlanInput, d_state: MigrationState, rollback_command: bool) -> PlanInput {
    i.has_migration = true;
    let d = i.ledger.get_mut(D).unwrap();
    d.migration = MigrationMark::new(if d_state == MigrationState::None { 0 } else { 1 }, d_state);
    d.has_rollback_command = rollback_command;
    i
}

fn job(kind: JobKind, rev: &str, attempt: u32, state: JobState) -> ObservedJob {
    let name = format!("app-{}-{rev}", if kind == JobKind::Migrate { "migrate" } else { "rollback" });
    ObservedJob { name, kind, revision: rev.into(), attempt, state, expiring: false }
}

fn failed(reason: FailReason, generation: i64) -> Option<FailedMark> {
    Some(FailedMark { generation, reason })
}

fn failed_job() -> JobState {
    JobState::Failed { reason: "BackoffLimitExceeded".into(), message: "backoff".into() }
}

fn marks(p: &Plan) -> Vec<(String, Mark)> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::Mark { revision, mark } => Some((revision.clone(), mark.clone())),
            _ => None,
        })
        .collect()
}

fn deploys(p: &Plan) -> Option<String> {
    p.actions.iter().find_map(|a| match a {
        Action::ApplyDeployment { revision } => Some(revision.clone()),
        _ => None,
    })
}

fn creates(p: &Plan) -> Vec<(JobKind, String, u32)> {
    p.actions
        .iter()
        .filter_map(|a| match a {
            Action::CreateJob { kind, revision, attempt } => Some((*kind, revision.clone(), *attempt)),
            _ => None,
        })
        .collect()
}

/// Index of the first action matching `f`.
fn pos(p: &Plan, f: impl Fn(&Action) -> bool) -> usize {
    p.actions.iter().position(f).unwrap_or_else(|| panic!("no such action in {:?}", p.actions))
}

#[test]
fn new_revision_without_migration_rolls_out() {
    let p = plan(&base());
    assert_eq!(p.phase, Phase::Progressing);
    assert_eq!(deploys(&p).as_deref(), Some(D));
}

#[test]
fn a_fresh_revision_is_recorded_before_anything_acts_on_it() {
    let mut input = base();
    input.ledger.entries.retain(|e| e.revision != D);
    let p = plan(&input);
    assert_eq!(p.actions[0], Action::RecordRevision { revision: D.into() });
    assert_eq!(p.ledger.get(D).map(|e| e.desired_generation), Some(2));
}

#[test]
fn migration_first_and_the_attempt_is_recorded_after_its_create() {
    let p = plan(&with_migration(base(), MigrationState::None, false));
    assert_eq!(p.phase, Phase::Migrating);
    assert_eq!(creates(&p), [(JobKind::Migrate, D.into(), 1)]);
    assert_eq!(deploys(&p), None, "the Deployment is untouched while migrating");
    let create = pos(&p, |a| matches!(a, Action::CreateJob { .. }));
    let mark = pos(&p, |a| matches!(a, Action::Mark { mark: Mark::Migration(_), .. }));
    assert!(create < mark);
}

#[test]
fn migration_success_is_marked_before_the_rollout() {
    let mut input = with_migration(base(), MigrationState::Created, false);
    input.jobs = vec![job(JobKind::Migrate, D, 1, JobState::Succeeded)];
    let p = plan(&input);
    assert_eq!(p.phase, Phase::Progressing);
    let mark =
        pos(&p, |a| matches!(a, Action::Mark { mark: Mark::Migration(m), .. } if m.state == MigrationState::Succeeded));
    let deploy = pos(&p, |a| matches!(a, Action::ApplyDeployment { .. }));
    assert!(mark < deploy);
}

#[test]
fn a_failed_migration_keeps_the_old_version_and_is_recorded() {
    let mut input = with_migration(base(), MigrationState::Created, false);
    input.jobs = vec![job(JobKind::Migrate, D, 1, failed_job())];
    let p = plan(&input);
    assert_eq!(p.phase, Phase::MigrationFailed);
    assert_eq!(deploys(&p), None);
    assert!(
        marks(&p)
            .iter()
            .any(|(r, m)| r == D && matches!(m, Mark::Failed(f) if f.reason == FailReason::MigrationFailed))
    );
}

#[test]
fn a_migration_job_deleted_before_its_result_is_recorded_never_runs_again_by_itself() {
    let input = with_migration(base(), MigrationState::Created, false);
    let p = plan(&input);
    assert_eq!(p.phase, Phase::Stalled);
    assert_eq!(p.reason, reasons::MIGRATION_JOB_LOST);
    assert!(creates(&p).is_empty());
    // A retry runs it again, as attempt 2.
    let mut retried = input.clone();
    retried.ledger = p.ledger.clone();
    retried.retry = Some("r1".into());
    let p = plan(&retried);
    assert_eq!(creates(&p), [(JobKind::Migrate, D.into(), 2)]);
}

#[test]
fn a_finished_job_of_an_earlier_attempt_is_cleared_before_the_next_attempt() {
    let mut input = with_migration(base(), MigrationState::DownSucceeded, true);
    input.jobs = vec![job(JobKind::Migrate, D, 1, JobState::Succeeded)];
    let p = plan(&input);
    assert_eq!(p.phase, Phase::Migrating);
    assert!(p.actions.contains(&Action::DeleteJob { name: format!("app-migrate-{D}") }));
    assert!(creates(&p).is_empty(), "the next attempt is created once the old Job is gone");
    assert_eq!(deploys(&p), None, "down-migrated: never rolled out without migrating again");
}

#[test]
fn never_two_migrations_at_once() {
    let mut input = with_migration(base(), MigrationState::None, false);
    input.jobs = vec![job(JobKind::Rollback, G, 1, JobState::Running)];
    let p = plan(&input);
    assert_eq!(p.phase, Phase::Migrating);
    assert!(creates(&p).is_empty());
}

#[test]
fn rollout_failure_marks_d_failed_before_restoring_g() {
    let mut input = base();
    input.deployment = Some(stuck(D));
    let p = plan(&input);
    assert_eq!(p.phase, Phase::RollingBack);
    assert_eq!(deploys(&p).as_deref(), Some(G));
    let mark = pos(&p, |a| matches!(a, Action::Mark { mark: Mark::Failed(_), .. }));
    let deploy = pos(&p, |a| matches!(a, Action::ApplyDeployment { .. }));
    assert!(mark < deploy);
    assert_eq!(p.current.as_deref(), Some(G));
}

#[test]
fn with_a_migration_the_rollback_command_runs_first_then_the_down_migration_is_recorded() {
    let mut input = with_migration(base(), MigrationState::Succeeded, true);
    input.deployment = Some(stuck(D));
    let p = plan(&input);
    assert_eq!(creates(&p), [(JobKind::Rollback, D.into(), 1)]);
    assert_eq!(deploys(&p), None);
    // The Job succeeded: recorded as down-migrated, then G is restored.
    let mut next = input.clone();
    next.ledger = p.ledger.clone();
    next.jobs = vec![job(JobKind::Rollback, D, 1, JobState::Succeeded)];
    let p = plan(&next);
    let down = pos(
        &p,
        |a| matches!(a, Action::Mark { mark: Mark::Migration(m), .. } if m.state == MigrationState::DownSucceeded),
    );
    let deploy = pos(&p, |a| matches!(a, Action::ApplyDeployment { revision } if revision == G));
    assert!(down < deploy);
}

#[test]
fn without_a_rollback_command_a_migrated_revision_is_not_rolled_back() {
    let mut input = with_migration(base(), MigrationState::Succeeded, false);
    input.deployment = Some(stuck(D));
    let p = plan(&input);
    assert_eq!(p.reason, reasons::ROLLBACK_NEEDS_COMMAND);
    assert_eq!(deploys(&p), None);
}

#[test]
fn a_failed_revision_stays_failed_when_the_status_is_gone_and_is_held_at_g() {
    let mut input = base();
    input.ledger.get_mut(D).unwrap().failed = failed(FailReason::RolloutFailed, 2);
    let p = plan(&input);
    assert_eq!(p.phase, Phase::RolledBack);
    assert_eq!(deploys(&p).as_deref(), Some(G));
}

#[test]
fn a_retry_after_a_down_migration_migrates_again_before_rolling() {
    let mut input = with_migration(base(), MigrationState::DownSucceeded, true);
    input.ledger.get_mut(D).unwrap().failed = failed(FailReason::RolloutFailed, 2);
    input.retry = Some("now".into());
    let p = plan(&input);
    assert_eq!(creates(&p), [(JobKind::Migrate, D.into(), 2)]);
    assert_eq!(deploys(&p), None);
    let ack = pos(&p, |a| matches!(a, Action::Mark { mark: Mark::RetryAck { .. }, .. }));
    assert!(ack < pos(&p, |a| matches!(a, Action::CreateJob { .. })));
}

#[test]
fn zero_replicas_never_make_a_revision_good() {
    let mut input = base();
    input.deployment = Some(DeploymentState {
        desired_replicas: 0,
        replicas: 0,
        updated_replicas: 0,
        ready_replicas: 0,
        available_replicas: 0,
        ..healthy(D)
    });
    let p = plan(&input);
    assert_eq!(p.phase, Phase::Ready);
    assert_eq!(p.reason, reasons::SCALED_TO_ZERO);
    assert!(p.ledger.get(D).unwrap().good.is_none());
    input.deployment = Some(healthy(D));
    assert!(plan(&input).ledger.get(D).unwrap().good.is_some());
}

#[test]
fn a_manual_rollback_undoes_newer_migrations_newest_first_and_leaves_the_spec() {
    // G good; H migrated and good since; D migrated and serving.
    let mut input = with_migration(base(), MigrationState::Succeeded, true);
    let mut h = entry("hhhhhhhhhh", 3, 3);
    h.good = Some(3);
    h.migration = MigrationMark::new(1, MigrationState::Succeeded);
    h.has_rollback_command = true;
    input.ledger.entries.push(h);
    let d = input.ledger.get_mut(D).unwrap();
    d.desired_generation = 4;
    d.good = Some(4);
    input.generation = 4;
    input.deployment = Some(healthy(D));
    input.rollback = Some(RollbackRequest { value: format!("{G}@t"), target: G.into() });
    let p = plan(&input);
    assert_eq!(p.phase, Phase::RollingBack);
    assert_eq!(creates(&p), [(JobKind::Rollback, D.into(), 1)], "D first");
    let mut next = input.clone();
    next.ledger = p.ledger.clone();
    next.jobs = vec![job(JobKind::Rollback, D, 1, JobState::Succeeded)];
    let p = plan(&next);
    assert_eq!(creates(&p), [(JobKind::Rollback, "hhhhhhhhhh".into(), 1)], "then H");
    assert_eq!(deploys(&p), None, "G runs only after every newer migration is undone");
}

#[test]
fn a_rollback_to_a_revision_that_never_became_good_is_refused() {
    let mut input = base();
    input.ledger.entries.push(entry("xxxxxxxxxx", 3, 0));
    input.deployment = Some(healthy(D));
    input.rollback = Some(RollbackRequest { value: "x@t".into(), target: "xxxxxxxxxx".into() });
    let p = plan(&input);
    assert_eq!(deploys(&p).as_deref(), Some(D));
    assert!(p.notes.iter().any(|(r, _)| *r == "RollbackRefused"));
}

#[test]
fn a_stale_view_decides_nothing() {
    let mut input = base();
    input.ledger.get_mut(G).unwrap().desired_generation = 5;
    let p = plan(&input);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn name_taken_and_paused_write_nothing() {
    let mut input = base();
    input.name_taken = Some("Service ns/app".into());
    assert!(plan(&input).actions.is_empty());
    let mut input = base();
    input.paused = true;
    assert!(plan(&input).actions.is_empty());
}

#[test]
fn rotation_is_one_write_per_secret_and_acknowledged_on_it() {
    let mut input = base();
    input.rotation = Some("r1".into());
    let secret = GeneratedSecret {
        env: "K".into(),
        name: "app-gen-k".into(),
        exists: true,
        ours: true,
        owned: true,
        ..Default::default()
    };
    input.secrets = vec![secret.clone()];
    assert_eq!(plan(&input).actions.iter().filter(|a| matches!(a, Action::RotateSecret { .. })).count(), 1);
    input.secrets = vec![GeneratedSecret { rotation: Some("r1".into()), ..secret }];
    assert!(!plan(&input).actions.iter().any(|a| matches!(a, Action::RotateSecret { .. })), "already satisfied");
}

#[test]
fn a_plan_is_a_pure_function() {
    // Two inputs that differ only in fields the decision must ignore (notes text aside):
    // equal plans. And the same input twice from independent clones: equal plans.
    let mut a = with_migration(base(), MigrationState::Succeeded, true);
    a.deployment = Some(stuck(D));
    let b = a.clone();
    assert_eq!(plan(&a), plan(&b));
    let mut c = a.clone();
    c.config_maps = vec!["unrelated".into()];
    assert_eq!(plan(&a).phase, plan(&c).phase);
    assert_ne!(plan(&a), plan(&PlanInput { deployment: Some(healthy(D)), ..a.clone() }));
}

// ---- properties -------------------------------------------------------------------------

const REVS: [&str; 4] = [D, G, "hhhhhhhhhh", "kkkkkkkkkk"];

fn arb_state() -> impl Strategy<Value = MigrationState> {
    prop_oneof![
        Just(MigrationState::None),
        Just(MigrationState::Created),
        Just(MigrationState::Succeeded),
        Just(MigrationState::Failed),
        Just(MigrationState::Retried),
        Just(MigrationState::DownCreated),
        Just(MigrationState::DownSucceeded),
        Just(MigrationState::DownFailed),
    ]
}

fn arb_job_state() -> impl Strategy<Value = JobState> {
    prop_oneof![Just(JobState::Running), Just(JobState::Succeeded), Just(failed_job())]
}

fn arb_entry(rev: &'static str, number: i64) -> impl Strategy<Value = Entry> {
    (
        arb_state(),
        1u32..3,
        prop::option::of((
            0i64..6,
            prop_oneof![
                Just(FailReason::RolloutFailed),
                Just(FailReason::MigrationFailed),
                Just(FailReason::RollbackRequested)
            ],
        )),
        prop::option::of(0i64..6),
        0i64..6,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(state, attempt, failed, good, dg, rb, readable)| Entry {
            revision: rev.into(),
            number,
            migration: MigrationMark::new(attempt, state),
            failed: failed.map(|(generation, reason)| FailedMark { generation, reason }),
            good,
            desired_generation: dg,
            has_rollback_command: rb,
            spec_readable: readable,
            ..Default::default()
        })
}

fn arb_deployment() -> impl Strategy<Value = Option<DeploymentState>> {
    prop::option::of((prop::sample::select(REVS.to_vec()), 0u8..3, any::<bool>()).prop_map(|(rev, shape, zero)| {
        let d = match shape {
            0 => healthy(rev),
            1 => rolling(rev),
            _ => stuck(rev),
        };
        if zero { DeploymentState { desired_replicas: 0, ready_replicas: 0, ..d } } else { d }
    }))
}

const NOW: i64 = 1_800_000_000;

type CanarySide =
    (Option<(u32, bool)>, Option<DeploymentState>, Option<AnalysisSettings>, Option<Verdict>, (bool, bool));

/// The strategy, D's canary mark, the canary Deployment, analysis settings, this
/// reconcile's measurement, and abort/promote requests.
fn arb_delivery() -> impl Strategy<Value = (Delivery, CanarySide)> {
    let steps = vec![Step { weight: 25, pause: Some(30) }, Step { weight: 50, pause: None }];
    (
        prop_oneof![Just(Delivery::RollingUpdate), Just(Delivery::Canary(steps))],
        prop::option::of((0u32..3, any::<bool>())),
        prop::option::of((0u8..3).prop_map(|shape| match shape {
            0 => healthy(D),
            1 => rolling(D),
            _ => stuck(D),
        })),
        prop::option::of((1u32..3, prop::option::of(Just(60u64))).prop_map(|(limit, duration)| AnalysisSettings {
            interval: 10,
            failure_limit: limit,
            inconclusive_limit: limit,
            duration,
        })),
        prop::option::of(prop_oneof![Just(Verdict::Passed), Just(Verdict::Failed), Just(Verdict::Inconclusive)]),
        (any::<bool>(), any::<bool>()),
    )
        .prop_map(|(delivery, mark, canary, analysis, verdict, requests)| {
            (delivery, (mark, canary, analysis, verdict, requests))
        })
}

/// The plan gives D pods: the Deployment's template or the canary's.
fn runs_d(p: &Plan) -> bool {
    p.actions.iter().any(|a| match a {
        Action::ApplyDeployment { revision } => revision == D,
        Action::ApplyCanary { revision, replicas, .. } => revision == D && *replicas > 0,
        _ => false,
    })
}

fn arb_input() -> impl Strategy<Value = PlanInput> {
    (
        (arb_entry(D, 4), arb_entry(G, 1), arb_entry("hhhhhhhhhh", 2), arb_entry("kkkkkkkkkk", 3)),
        arb_deployment(),
        prop::collection::vec((prop::sample::select(REVS.to_vec()), any::<bool>(), 1u32..3, arb_job_state()), 0..3),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(Just("retry".to_string())),
        prop::option::of(prop::sample::select(REVS.to_vec())),
        3i64..8,
        arb_delivery(),
    )
        .prop_map(
            |(entries, deployment, jobs, has_migration, auto_rollback, retry, rollback, generation, delivery)| {
                let (mut d, g, h, k) = entries;
                let (canary_mark, canary, analysis, verdict, requests) = delivery.1;
                d.canary = canary_mark.map(|(step, ready)| CanaryMark {
                    generation: d.desired_generation,
                    step,
                    since: ready.then_some(NOW - 100),
                });
                d.rolled_at = Some(NOW - 50);
                let (abort, promote) = requests;
                PlanInput {
                    now: NOW,
                    progress_deadline: 10,
                    delivery: delivery.0,
                    canary,
                    analysis,
                    measurement: verdict.map(|v| Measurement {
                        revision: D.into(),
                        results: vec![MetricResult {
                            metric: "m".into(),
                            value: None,
                            verdict: v,
                            detail: String::new(),
                        }],
                    }),
                    replicas: 3,
                    abort: abort.then(|| "a1".to_string()),
                    promote: promote.then(|| "p1".to_string()),
                    app: "app".into(),
                    generation,
                    desired: D.into(),
                    has_migration,
                    auto_rollback,
                    history_limit: 2,
                    retry,
                    rollback: rollback.map(|t| RollbackRequest { value: format!("{t}@1"), target: t.into() }),
                    ledger: Ledger { entries: vec![g, h, k, d] },
                    deployment,
                    jobs: jobs
                        .into_iter()
                        .map(|(rev, migrate, attempt, state)| {
                            job(if migrate { JobKind::Migrate } else { JobKind::Rollback }, rev, attempt, state)
                        })
                        .collect(),
                    references_ok: REVS.iter().map(|r| r.to_string()).collect(),
                    ..Default::default()
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// D is never rolled out while the ledger (after this plan's own marks) says it failed
    /// and no retry forgave it.
    #[test]
    fn never_rolls_out_a_failed_revision(input in arb_input()) {
        let p = plan(&input);
        if runs_d(&p) {
            prop_assert!(p.ledger.effective_failure(D).is_none(), "{:?}", p.actions);
        }
    }

    /// Neither the Deployment nor a canary gets D while D's migration is needed and not in effect.
    #[test]
    fn never_rolls_out_before_the_migration_succeeded(input in arb_input()) {
        let p = plan(&input);
        if input.has_migration && runs_d(&p) {
            prop_assert!(p.ledger.get(D).unwrap().migration.in_effect(), "{:?}", p.actions);
        }
    }

    /// Whenever the plan undoes D (a rollback Job, or the stable restored), the canary is
    /// stopped in the same plan, before anything else runs.
    #[test]
    fn a_failed_canary_is_stopped_first(input in arb_input()) {
        let p = plan(&input);
        let undoing = p.actions.iter().any(|a| matches!(a, Action::CreateJob { kind: JobKind::Rollback, .. }))
            || deploys(&p).is_some_and(|r| r != D);
        if undoing {
            let stop = p.actions.iter().position(|a| *a == Action::StopCanary);
            prop_assert!(stop.is_some(), "{:?}", p.actions);
            let first_undo = p.actions.iter().position(|a| matches!(a, Action::CreateJob { .. } | Action::ApplyDeployment { .. }));
            prop_assert!(stop < first_undo || first_undo.is_none(), "{:?}", p.actions);
        }
    }

    /// An analysis that reached a limit this reconcile fails D in the same plan.
    #[test]
    fn an_analysis_over_its_limit_fails_the_revision(input in arb_input()) {
        let p = plan(&input);
        let Some(settings) = input.analysis else { return Ok(()) };
        if let Some(a) = p.ledger.get(D).and_then(|e| e.analysis) {
            let recorded = p.actions.iter().any(|x| matches!(x, Action::Mark { mark: Mark::Analysis(_), .. }));
            if recorded && (a.failed >= settings.failure_limit || a.inconclusive >= settings.inconclusive_limit) {
                prop_assert!(p.ledger.effective_failure(D).is_some(), "{:?}", p.actions);
                prop_assert!(!runs_d(&p), "{:?}", p.actions);
            }
        }
    }

    /// A rollback only ever restores a revision that became good, is not failed, and whose
    /// newer migrations were all undone first.
    #[test]
    fn never_rolls_back_to_a_revision_that_is_not_good(input in arb_input()) {
        let p = plan(&input);
        if let Some(target) = deploys(&p).filter(|t| t != D) {
            let e = p.ledger.get(&target).unwrap();
            prop_assert!(e.good.is_some() && e.spec_readable, "{target}: {e:?}");
            prop_assert!(p.ledger.effective_failure(&target).is_none());
            prop_assert!(p.ledger.to_undo(e).is_empty(), "undo first: {:?}", p.ledger.to_undo(e));
        }
    }

    /// At most one Job is created per reconcile, never while another one runs, and marks of
    /// a Job's creation follow the create.
    #[test]
    fn one_job_at_a_time(input in arb_input()) {
        let p = plan(&input);
        let created = creates(&p);
        prop_assert!(created.len() <= 1);
        if !created.is_empty() {
            prop_assert!(input.jobs.iter().all(|j| j.state != JobState::Running), "{:?}", input.jobs);
        }
    }

    /// Pure: the same input gives the same plan.
    #[test]
    fn deterministic(input in arb_input()) {
        prop_assert_eq!(plan(&input), plan(&input.clone()));
    }
}
