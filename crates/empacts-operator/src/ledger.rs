//! The revision ledger: every fact a lifecycle decision needs, kept as annotations on each
//! revision's ControllerRevision (`<app>-<revision>`), which the operator reads from its
//! ledger cache overlaid by its own writes (`ledger_cache`). `.status` is only a projection of
//! it: deleting the status changes no decision. Marks are written *before* the action they license (D is marked failed before
//! G is restored; a down-migration is recorded before the older code runs again).
//!
//! Marks (all on the revision they describe):
//! - `empacts.io/migration: "<attempt> <state>"`: the migration Job attempt and where it is
//!   (created, succeeded, failed, retried, down-created, down-succeeded, down-failed). After
//!   `down-succeeded` the revision counts as not migrated: using it again migrates first.
//! - `empacts.io/failed: "<generation> <reason>"`: the revision failed at that app
//!   generation; it is not rolled out again until another revision was desired after that
//!   generation, or a retry is acknowledged.
//! - `empacts.io/good: "<generation>"`: became available (with pods) while desired.
//! - `empacts.io/desired-generation: "<generation>"`: the last generation it became desired.
//! - `empacts.io/retry-ack`, `empacts.io/rollback-ack`: request values acted upon;
//!   `empacts.io/rollback-target`: where a requested rollback goes.
//! - `empacts.io/canary: "<generation> <step> <since|->"`: the canary of the revision, desired
//!   at that generation, is at that step (0-based; the number of steps means promoted), its
//!   pods ready since that Unix time (the step's pause counts from there).
//! - `empacts.io/analysis: "<generation> <started> <last> <passed> <failed> <inconclusive>"`:
//!   metric analysis of the revision desired at that generation: when it started, when it
//!   last measured, and the measurements by outcome. A new desired generation starts afresh.
//! - `empacts.io/promote-ack`, `empacts.io/abort-ack`: canary requests acted upon.
//! - `empacts.io/rolled-at: "<unix time>"`: when its pods were last asked for (the
//!   Deployment switched to it, or its canary step began); the operator's own progress
//!   deadline counts from there.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;

pub const MIGRATION: &str = "empacts.io/migration";
/// Written by earlier builds once a migration succeeded.
pub const LEGACY_MIGRATED: &str = "empacts.io/migrated";
pub const FAILED: &str = "empacts.io/failed";
pub const GOOD: &str = "empacts.io/good";
pub const DESIRED_GENERATION: &str = "empacts.io/desired-generation";
pub const RETRY_ACK: &str = "empacts.io/retry-ack";
pub const ROLLBACK_ACK: &str = "empacts.io/rollback-ack";
pub const ROLLBACK_TARGET: &str = "empacts.io/rollback-target";
pub const CANARY: &str = "empacts.io/canary";
pub const ANALYSIS: &str = "empacts.io/analysis";
pub const PROMOTE_ACK: &str = "empacts.io/promote-ack";
pub const ABORT_ACK: &str = "empacts.io/abort-ack";
pub const ROLLED_AT: &str = "empacts.io/rolled-at";
/// Set on every revision recorded (or imported) by a build that keeps this ledger. A
/// ControllerRevision without it and without a desired generation was recorded by an
/// earlier build: its facts are imported once from what that build left (status, Jobs).
pub const LEDGER_VERSION: &str = "empacts.io/ledger";
/// On migration and rollback Jobs: the attempt they run.
pub const JOB_ATTEMPT: &str = "empacts.io/attempt";

/// Where the migration of a revision stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MigrationState {
    #[default]
    None,
    Created,
    Succeeded,
    Failed,
    /// A failed attempt a retry forgave: the next attempt may run.
    Retried,
    DownCreated,
    DownSucceeded,
    DownFailed,
}

impl MigrationState {
    fn as_str(self) -> &'static str {
        match self {
            MigrationState::None => "none",
            MigrationState::Created => "created",
            MigrationState::Succeeded => "succeeded",
            MigrationState::Failed => "failed",
            MigrationState::Retried => "retried",
            MigrationState::DownCreated => "down-created",
            MigrationState::DownSucceeded => "down-succeeded",
            MigrationState::DownFailed => "down-failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            MigrationState::None,
            MigrationState::Created,
            MigrationState::Succeeded,
            MigrationState::Failed,
            MigrationState::Retried,
            MigrationState::DownCreated,
            MigrationState::DownSucceeded,
            MigrationState::DownFailed,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MigrationMark {
    pub attempt: u32,
    pub state: MigrationState,
}

impl MigrationMark {
    pub fn new(attempt: u32, state: MigrationState) -> Self {
        MigrationMark { attempt, state }
    }

    /// The schema is at this revision's step: its migration ran and was not undone.
    pub fn in_effect(&self) -> bool {
        matches!(self.state, MigrationState::Succeeded | MigrationState::DownCreated | MigrationState::DownFailed)
    }

    /// The attempt a new migration Job would run, when one may start.
    pub fn next_attempt(&self) -> Option<u32> {
        match self.state {
            MigrationState::None | MigrationState::Retried | MigrationState::DownSucceeded => Some(self.attempt + 1),
            _ => None,
        }
    }

    pub fn encode(&self) -> String {
        format!("{} {}", self.attempt, self.state.as_str())
    }

    pub fn decode(s: &str) -> Option<Self> {
        let (attempt, state) = s.split_once(' ')?;
        Some(MigrationMark { attempt: attempt.parse().ok()?, state: MigrationState::parse(state)? })
    }
}

/// Why a revision was marked failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// Its migration Job failed.
    MigrationFailed,
    /// Its rollout missed the progress deadline.
    RolloutFailed,
    /// Its migration Job vanished before its result was recorded.
    MigrationLost,
    /// A user asked to roll back from it.
    RollbackRequested,
    /// Its metric analysis failed (or stayed inconclusive) too often.
    AnalysisFailed,
    /// A user aborted its canary.
    Aborted,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::MigrationFailed => "MigrationFailed",
            FailReason::RolloutFailed => "RolloutFailed",
            FailReason::MigrationLost => "MigrationLost",
            FailReason::RollbackRequested => "RollbackRequested",
            FailReason::AnalysisFailed => "AnalysisFailed",
            FailReason::Aborted => "Aborted",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            FailReason::MigrationFailed,
            FailReason::RolloutFailed,
            FailReason::MigrationLost,
            FailReason::RollbackRequested,
            FailReason::AnalysisFailed,
            FailReason::Aborted,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// Where the canary of a revision stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanaryMark {
    /// The desired generation this canary belongs to (an older one no longer counts).
    pub generation: i64,
    /// Index of the current step; the number of steps: promoted.
    pub step: u32,
    /// Unix time the step's canary pods were all ready.
    pub since: Option<i64>,
}

impl CanaryMark {
    pub fn encode(&self) -> String {
        let since = self.since.map(|t| t.to_string()).unwrap_or_else(|| "-".into());
        format!("{} {} {since}", self.generation, self.step)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let mut it = s.split(' ');
        let generation = it.next()?.parse().ok()?;
        let step = it.next()?.parse().ok()?;
        let since = match it.next()? {
            "-" => None,
            t => Some(t.parse().ok()?),
        };
        Some(CanaryMark { generation, step, since })
    }
}

/// Measurements of a revision's metric analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AnalysisMark {
    /// The desired generation this analysis belongs to.
    pub generation: i64,
    /// Unix time the analysis started, and of its last measurement.
    pub started: i64,
    pub last: Option<i64>,
    pub passed: u32,
    pub failed: u32,
    pub inconclusive: u32,
}

impl AnalysisMark {
    pub fn encode(&self) -> String {
        let last = self.last.map(|t| t.to_string()).unwrap_or_else(|| "-".into());
        format!("{} {} {last} {} {} {}", self.generation, self.started, self.passed, self.failed, self.inconclusive)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let v: Vec<&str> = s.split(' ').collect();
        let [generation, started, last, passed, failed, inconclusive] = v.as_slice() else { return None };
        Some(AnalysisMark {
            generation: generation.parse().ok()?,
            started: started.parse().ok()?,
            last: match *last {
                "-" => None,
                t => Some(t.parse().ok()?),
            },
            passed: passed.parse().ok()?,
            failed: failed.parse().ok()?,
            inconclusive: inconclusive.parse().ok()?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedMark {
    pub generation: i64,
    pub reason: FailReason,
}

/// One revision as the ledger knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub revision: String,
    /// Order of first recording (ControllerRevision.revision).
    pub number: i64,
    pub migration: MigrationMark,
    pub failed: Option<FailedMark>,
    pub good: Option<i64>,
    pub desired_generation: i64,
    pub retry_ack: Option<String>,
    pub rollback_ack: Option<String>,
    pub rollback_target: Option<String>,
    pub canary: Option<CanaryMark>,
    pub analysis: Option<AnalysisMark>,
    pub promote_ack: Option<String>,
    pub abort_ack: Option<String>,
    pub rolled_at: Option<i64>,
    /// Its effective spec has a rollbackCommand (for the desired revision: the current spec's).
    pub has_rollback_command: bool,
    /// The recorded spec decodes (it can be rolled back to).
    pub spec_readable: bool,
    /// Image and env ConfigMap of its spec, for status and retention.
    pub image: String,
    pub config_map: Option<String>,
    /// For the precondition of ledger writes.
    pub resource_version: Option<String>,
    /// Of its ControllerRevision, so a deletion hides exactly that object until the watch shows it.
    pub uid: Option<String>,
    /// When it was first recorded (RFC 3339), for the status history.
    pub recorded_at: String,
    /// Recorded by an earlier build, not imported yet.
    pub legacy: bool,
}

fn parse_i64(a: &BTreeMap<String, String>, key: &str) -> Option<i64> {
    a.get(key).and_then(|v| v.split(' ').next()).and_then(|v| v.parse().ok())
}

/// The marks found in a ControllerRevision's annotations (unknown values read as absent).
pub fn read_marks(cr: &ControllerRevision, entry: &mut Entry) {
    let empty = BTreeMap::new();
    let a = cr.metadata.annotations.as_ref().unwrap_or(&empty);
    entry.migration = match a.get(MIGRATION).and_then(|v| MigrationMark::decode(v)) {
        Some(m) => m,
        None if a.get(LEGACY_MIGRATED).is_some_and(|v| v == "true") => MigrationMark::new(1, MigrationState::Succeeded),
        None => MigrationMark::default(),
    };
    entry.failed = a.get(FAILED).and_then(|v| {
        let (generation, reason) = v.split_once(' ')?;
        Some(FailedMark { generation: generation.parse().ok()?, reason: FailReason::parse(reason)? })
    });
    entry.good = parse_i64(a, GOOD);
    entry.desired_generation = parse_i64(a, DESIRED_GENERATION).unwrap_or(0);
    entry.retry_ack = a.get(RETRY_ACK).cloned();
    entry.rollback_ack = a.get(ROLLBACK_ACK).cloned();
    entry.rollback_target = a.get(ROLLBACK_TARGET).cloned();
    entry.canary = a.get(CANARY).and_then(|v| CanaryMark::decode(v));
    entry.analysis = a.get(ANALYSIS).and_then(|v| AnalysisMark::decode(v));
    entry.promote_ack = a.get(PROMOTE_ACK).cloned();
    entry.abort_ack = a.get(ABORT_ACK).cloned();
    entry.rolled_at = parse_i64(a, ROLLED_AT);
    entry.number = cr.revision;
    entry.resource_version = cr.metadata.resource_version.clone();
    entry.uid = cr.metadata.uid.clone();
    entry.legacy = !a.contains_key(LEDGER_VERSION) && !a.contains_key(DESIRED_GENERATION);
}

/// A change to one revision's marks; None removes the annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    Desired(i64),
    Migration(MigrationMark),
    Failed(FailedMark),
    Good(i64),
    /// A retry acknowledged: forgets the failure; a failed migration may run again.
    RetryAck {
        value: String,
        migration: Option<MigrationMark>,
    },
    /// A rollback request acknowledged (target None: refused).
    RollbackAck {
        value: String,
        target: Option<String>,
        failed: Option<FailedMark>,
    },
    Canary(CanaryMark),
    Analysis(AnalysisMark),
    /// Its pods were asked for at this Unix time.
    Rolled(i64),
    /// A promote request acknowledged, with the canary step it leads to.
    PromoteAck {
        value: String,
        canary: Option<CanaryMark>,
    },
    /// An abort request acknowledged (failed None: there was no canary to abort).
    AbortAck {
        value: String,
        failed: Option<FailedMark>,
    },
    /// Facts of a revision recorded by an earlier build, written once.
    Import {
        migration: MigrationMark,
        failed: Option<FailedMark>,
        good: Option<i64>,
    },
}

impl Mark {
    /// The annotation changes of this mark.
    pub fn annotations(&self) -> BTreeMap<&'static str, Option<String>> {
        let failed = |f: &FailedMark| format!("{} {}", f.generation, f.reason.as_str());
        match self {
            Mark::Desired(g) => BTreeMap::from([(DESIRED_GENERATION, Some(g.to_string()))]),
            Mark::Migration(m) => BTreeMap::from([(MIGRATION, Some(m.encode()))]),
            Mark::Failed(f) => BTreeMap::from([(FAILED, Some(failed(f)))]),
            Mark::Good(g) => BTreeMap::from([(GOOD, Some(g.to_string()))]),
            Mark::RetryAck { value, migration } => {
                // A retry starts the canary and its analysis over.
                let mut out = BTreeMap::from([
                    (RETRY_ACK, Some(value.clone())),
                    (FAILED, None),
                    (ROLLBACK_TARGET, None),
                    (CANARY, None),
                    (ANALYSIS, None),
                ]);
                if let Some(m) = migration {
                    out.insert(MIGRATION, Some(m.encode()));
                }
                out
            }
            Mark::Canary(c) => BTreeMap::from([(CANARY, Some(c.encode()))]),
            Mark::Rolled(t) => BTreeMap::from([(ROLLED_AT, Some(t.to_string()))]),
            Mark::Analysis(a) => BTreeMap::from([(ANALYSIS, Some(a.encode()))]),
            Mark::PromoteAck { value, canary } => {
                let mut out = BTreeMap::from([(PROMOTE_ACK, Some(value.clone()))]);
                if let Some(c) = canary {
                    out.insert(CANARY, Some(c.encode()));
                }
                out
            }
            Mark::AbortAck { value, failed: f } => {
                let mut out = BTreeMap::from([(ABORT_ACK, Some(value.clone()))]);
                if let Some(f) = f {
                    out.insert(FAILED, Some(failed(f)));
                }
                out
            }
            Mark::Import { migration, failed: f, good } => BTreeMap::from([
                (LEDGER_VERSION, Some("1".to_string())),
                (MIGRATION, Some(migration.encode())),
                (FAILED, f.as_ref().map(failed)),
                (GOOD, good.map(|g| g.to_string())),
            ]),
            Mark::RollbackAck { value, target, failed: f } => {
                let mut out = BTreeMap::from([(ROLLBACK_ACK, Some(value.clone()))]);
                if let Some(t) = target {
                    out.insert(ROLLBACK_TARGET, Some(t.clone()));
                }
                if let Some(f) = f {
                    out.insert(FAILED, Some(failed(f)));
                }
                out
            }
        }
    }

    /// The same change on an in-memory entry, so a plan decides on what it has just marked.
    pub fn apply_to(&self, e: &mut Entry) {
        match self {
            Mark::Desired(g) => e.desired_generation = *g,
            Mark::Migration(m) => e.migration = *m,
            Mark::Failed(f) => e.failed = Some(*f),
            Mark::Good(g) => e.good = Some(*g),
            Mark::RetryAck { value, migration } => {
                e.retry_ack = Some(value.clone());
                e.failed = None;
                e.rollback_target = None;
                e.canary = None;
                e.analysis = None;
                if let Some(m) = migration {
                    e.migration = *m;
                }
            }
            Mark::Canary(c) => e.canary = Some(*c),
            Mark::Rolled(t) => e.rolled_at = Some(*t),
            Mark::Analysis(a) => e.analysis = Some(*a),
            Mark::PromoteAck { value, canary } => {
                e.promote_ack = Some(value.clone());
                if canary.is_some() {
                    e.canary = *canary;
                }
            }
            Mark::AbortAck { value, failed } => {
                e.abort_ack = Some(value.clone());
                if failed.is_some() {
                    e.failed = *failed;
                }
            }
            Mark::Import { migration, failed, good } => {
                e.migration = *migration;
                e.failed = *failed;
                e.good = *good;
                e.legacy = false;
            }
            Mark::RollbackAck { value, target, failed } => {
                e.rollback_ack = Some(value.clone());
                if target.is_some() {
                    e.rollback_target = target.clone();
                }
                if failed.is_some() {
                    e.failed = *failed;
                }
            }
        }
    }
}

/// The whole ledger of one app.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ledger {
    pub entries: Vec<Entry>,
}

impl Ledger {
    pub fn get(&self, revision: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.revision == revision)
    }

    pub fn get_mut(&mut self, revision: &str) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.revision == revision)
    }

    /// Highest generation at which any revision other than `revision` became desired.
    fn others_desired_since(&self, revision: &str) -> i64 {
        self.entries.iter().filter(|e| e.revision != revision).map(|e| e.desired_generation).max().unwrap_or(0)
    }

    /// The failure of `revision` that still holds: no other revision was desired after it.
    pub fn effective_failure(&self, revision: &str) -> Option<FailedMark> {
        let e = self.get(revision)?;
        e.failed.filter(|f| f.generation >= self.others_desired_since(revision))
    }

    /// The revision to roll back to from `from`: the requested target if it is good, else
    /// the newest good revision other than `from` that did not fail since and can be read.
    pub fn rollback_target(&self, from: &str) -> Option<&Entry> {
        let usable = |e: &&Entry| {
            e.revision != from && e.good.is_some() && e.spec_readable && self.effective_failure(&e.revision).is_none()
        };
        if let Some(t) = self.get(from).and_then(|e| e.rollback_target.as_deref()) {
            return self.get(t).filter(usable);
        }
        self.entries.iter().filter(usable).max_by_key(|e| (e.good, e.number))
    }

    /// Revisions whose migrations must be undone, newest first, before `target` runs
    /// again: every revision desired after `target` was last good whose migration is in
    /// effect.
    pub fn to_undo(&self, target: &Entry) -> Vec<&Entry> {
        let since = target.good.unwrap_or(0);
        let mut out: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.revision != target.revision && e.desired_generation > since && e.migration.in_effect())
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse((e.desired_generation, e.number)));
        out
    }

    /// The newest good revision (status.lastGoodRevision).
    pub fn last_good(&self) -> Option<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.good.is_some() && self.effective_failure(&e.revision).is_none())
            .max_by_key(|e| (e.good, e.number))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rev: &str, number: i64) -> Entry {
        Entry { revision: rev.into(), number, spec_readable: true, ..Default::default() }
    }

    #[test]
    fn marks_round_trip_through_annotations() {
        let marks = [
            Mark::Desired(4),
            Mark::Migration(MigrationMark::new(2, MigrationState::DownSucceeded)),
            Mark::Failed(FailedMark { generation: 3, reason: FailReason::RolloutFailed }),
            Mark::Good(5),
            Mark::RetryAck { value: "r1".into(), migration: Some(MigrationMark::new(1, MigrationState::Retried)) },
            Mark::RollbackAck {
                value: "x".into(),
                target: Some("g".into()),
                failed: Some(FailedMark { generation: 6, reason: FailReason::RollbackRequested }),
            },
            Mark::Import {
                migration: MigrationMark::new(1, MigrationState::DownSucceeded),
                failed: Some(FailedMark { generation: 3, reason: FailReason::RolloutFailed }),
                good: None,
            },
            Mark::Canary(CanaryMark { generation: 3, step: 1, since: Some(1_700_000_000) }),
            Mark::Canary(CanaryMark { generation: 3, step: 0, since: None }),
            Mark::Analysis(AnalysisMark {
                generation: 3,
                started: 10,
                last: Some(40),
                passed: 2,
                failed: 1,
                inconclusive: 3,
            }),
            Mark::Analysis(AnalysisMark { generation: 3, started: 10, last: None, ..Default::default() }),
            Mark::PromoteAck { value: "p".into(), canary: Some(CanaryMark { generation: 3, step: 2, since: None }) },
            Mark::AbortAck {
                value: "a".into(),
                failed: Some(FailedMark { generation: 4, reason: FailReason::Aborted }),
            },
            Mark::Failed(FailedMark { generation: 4, reason: FailReason::AnalysisFailed }),
            Mark::Rolled(1_800_000_000),
        ];
        for mark in marks {
            let mut expected = entry("r", 1);
            mark.apply_to(&mut expected);
            let mut cr = ControllerRevision { revision: 1, ..Default::default() };
            let annotations: BTreeMap<String, String> =
                mark.annotations().into_iter().filter_map(|(k, v)| Some((k.to_string(), v?))).collect();
            cr.metadata.annotations = Some(annotations);
            let mut got = entry("r", 1);
            read_marks(&cr, &mut got);
            let legacy = std::mem::take(&mut got.legacy);
            assert_eq!(got, expected, "{mark:?}");
            assert_eq!(legacy, !matches!(mark, Mark::Desired(_) | Mark::Import { .. }), "{mark:?}");
        }
    }

    #[test]
    fn legacy_migrated_reads_as_a_succeeded_first_attempt() {
        let mut cr = ControllerRevision::default();
        cr.metadata.annotations = Some(BTreeMap::from([(LEGACY_MIGRATED.to_string(), "true".to_string())]));
        let mut e = Entry::default();
        read_marks(&cr, &mut e);
        assert_eq!(e.migration, MigrationMark::new(1, MigrationState::Succeeded));
        assert!(e.migration.in_effect());
    }

    #[test]
    fn a_down_migration_makes_the_revision_migrate_again() {
        let down = MigrationMark::new(1, MigrationState::DownSucceeded);
        assert!(!down.in_effect());
        assert_eq!(down.next_attempt(), Some(2));
        assert_eq!(MigrationMark::new(1, MigrationState::Succeeded).next_attempt(), None);
        assert_eq!(MigrationMark::new(1, MigrationState::Created).next_attempt(), None);
        assert_eq!(MigrationMark::new(1, MigrationState::Failed).next_attempt(), None);
    }

    #[test]
    fn a_failure_holds_until_another_revision_is_desired_after_it() {
        let mut d = entry("d", 2);
        d.failed = Some(FailedMark { generation: 5, reason: FailReason::RolloutFailed });
        d.desired_generation = 4;
        let mut g = entry("g", 1);
        g.desired_generation = 3;
        g.good = Some(3);
        let mut ledger = Ledger { entries: vec![g, d] };
        assert!(ledger.effective_failure("d").is_some());
        ledger.get_mut("g").unwrap().desired_generation = 6;
        assert!(ledger.effective_failure("d").is_none(), "the spec moved away from d and back");
    }

    #[test]
    fn rollback_target_is_the_newest_good_and_never_a_failed_or_unreadable_one() {
        let mut a = entry("a", 1);
        a.good = Some(2);
        let mut b = entry("b", 2);
        b.good = Some(4);
        let mut c = entry("c", 3);
        c.good = Some(6);
        c.failed = Some(FailedMark { generation: 7, reason: FailReason::RolloutFailed });
        let d = entry("d", 4);
        let mut ledger = Ledger { entries: vec![a, b, c, d] };
        assert_eq!(ledger.rollback_target("d").map(|e| e.revision.as_str()), Some("b"));
        ledger.get_mut("b").unwrap().spec_readable = false;
        assert_eq!(ledger.rollback_target("d").map(|e| e.revision.as_str()), Some("a"));
        ledger.get_mut("d").unwrap().rollback_target = Some("c".into());
        assert_eq!(ledger.rollback_target("d"), None, "a requested target that failed is refused");
    }

    #[test]
    fn undo_newest_first_everything_migrated_after_the_target_was_good() {
        let mut g = entry("g", 1);
        g.good = Some(2);
        g.desired_generation = 2;
        g.migration = MigrationMark::new(1, MigrationState::Succeeded);
        let mut h = entry("h", 2);
        h.desired_generation = 3;
        h.migration = MigrationMark::new(1, MigrationState::Succeeded);
        let mut x = entry("x", 3);
        x.desired_generation = 4;
        x.migration = MigrationMark::new(1, MigrationState::DownSucceeded);
        let mut d = entry("d", 4);
        d.desired_generation = 5;
        d.migration = MigrationMark::new(2, MigrationState::Succeeded);
        let ledger = Ledger { entries: vec![g, h, x, d] };
        let undo: Vec<&str> = ledger.to_undo(ledger.get("g").unwrap()).iter().map(|e| e.revision.as_str()).collect();
        assert_eq!(undo, ["d", "h"]);
    }
}
