//! Leader election on a coordination.k8s.io/v1 Lease with client-go's semantics, built so that
//! two replicas never reconcile at the same time:
//!
//! - a candidate takes over only after it has seen the same Lease record (resourceVersion)
//!   unchanged for the record's `leaseDurationSeconds`, timed by its own monotonic clock (never by
//!   comparing another machine's `renewTime` with its own wall clock);
//! - every acquire, renew and release is a replace carrying the resourceVersion it read, so of
//!   two candidates writing the same record only one wins;
//! - the leader renews every `renew_period`, each Lease call bounded by its own timeout, and
//!   counts itself lost once no renewal *sent* in the last `lease_duration - grace` succeeded.
//!   A standby's clock for that record starts no earlier than the write it saw, so it takes
//!   over no earlier than `lease_duration` after that send: `grace` is the margin the old leader
//!   has to stop writing.
//!
//! kube-lease-manager 0.13, used before, reports nothing on renewal errors (its renew has no
//! deadline and no timeout) and decides expiry by comparing another replica's `renewTime` with
//! the local wall clock, so it cannot give these guarantees from the outside.
//!
//! The decisions ([`campaign_step`], [`leader_step`], [`Observed::observe`] and the record
//! builders) are pure; [`Elector`] and [`Leadership`] do the I/O.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{debug, info, warn};

const FIELD_MANAGER: &str = "empacts-operator";

/// Annotation a candidate writes on a Lease held by another replica to ask for it back (its
/// preferred shard, see [`crate::shard`]); the holder sees it at its next renewal. Whoever
/// acquires the Lease next removes it.
pub const WANTED_BY_ANNOTATION: &str = "empacts.io/wanted-by";

/// Who asks for `lease` (None: nobody, or an empty value).
pub fn wanted_by(lease: &Lease) -> Option<String> {
    lease.metadata.annotations.as_ref()?.get(WANTED_BY_ANNOTATION).filter(|w| !w.is_empty()).cloned()
}

/// `current` with `identity` asking for it, when another replica holds it and `identity` has
/// not asked yet (None: nothing to write). Keeps the resourceVersion: the write is conditional.
pub fn asked_for(current: &Lease, identity: &str) -> Option<Lease> {
    let holder = current.spec.as_ref()?.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    if holder == identity || wanted_by(current).as_deref() == Some(identity) {
        return None;
    }
    let mut lease = current.clone();
    lease
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(WANTED_BY_ANNOTATION.into(), identity.into());
    Some(lease)
}

/// Invalid leader-election timing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("lease duration must be at least 1 s: raise --lease-duration")]
    DurationTooShort,
    #[error(
        "lease grace ({grace:?}) must be positive and shorter than the lease duration ({duration:?}): change --lease-grace or --lease-duration"
    )]
    Grace { grace: Duration, duration: Duration },
    #[error(
        "renew period ({period:?}) must be positive and shorter than lease duration minus grace ({window:?}), so a leader retries before it steps down: lower --lease-renew-period or --lease-grace"
    )]
    RenewPeriod { period: Duration, window: Duration },
}

/// Timing and identity of one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderConfig {
    pub identity: String,
    /// Written as `leaseDurationSeconds`: how long standbys wait for a silent leader.
    pub lease_duration: Duration,
    /// How often the leader renews, and a candidate polls.
    pub renew_period: Duration,
    /// The leader steps down this long before a standby may take over.
    pub grace: Duration,
}

impl LeaderConfig {
    /// `grace` defaults to a third of the duration; `renew_period` to a third of what remains,
    /// so a leader gets about three attempts before it steps down.
    pub fn new(
        identity: impl Into<String>,
        lease_duration: Duration,
        renew_period: Option<Duration>,
        grace: Option<Duration>,
    ) -> Result<Self, ConfigError> {
        if lease_duration < Duration::from_secs(1) {
            return Err(ConfigError::DurationTooShort);
        }
        let grace = grace.unwrap_or(lease_duration / 3);
        if grace.is_zero() || grace >= lease_duration {
            return Err(ConfigError::Grace { grace, duration: lease_duration });
        }
        let window = lease_duration - grace;
        let renew_period = renew_period.unwrap_or(window / 3);
        if renew_period.is_zero() || renew_period >= window {
            return Err(ConfigError::RenewPeriod { period: renew_period, window });
        }
        Ok(LeaderConfig { identity: identity.into(), lease_duration, renew_period, grace })
    }

    /// How long after the last successful renewal was sent the leader still leads.
    pub fn renew_deadline(&self) -> Duration {
        self.lease_duration - self.grace
    }

    /// Bound on one Lease call: shorter than the renew period, so attempts never pile up.
    pub fn request_timeout(&self) -> Duration {
        self.renew_period * 3 / 4
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// The Lease record as a candidate has seen it, timed by its own monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// None when the Lease is released (no or empty holderIdentity).
    pub holder: Option<String>,
    /// The record's `leaseDurationSeconds` (what its holder promised).
    pub lease_duration: Duration,
    pub resource_version: String,
    /// When this candidate first saw this very record.
    pub since: Instant,
}

impl Observed {
    /// Fold a freshly read Lease into what was seen before: `since` stays only while the record
    /// (its resourceVersion) is unchanged, so any write by the holder restarts the wait.
    pub fn observe(previous: Option<&Observed>, lease: &Lease, now: Instant, fallback_duration: Duration) -> Observed {
        let spec = lease.spec.as_ref();
        let holder = spec.and_then(|s| s.holder_identity.clone()).filter(|h| !h.is_empty());
        let lease_duration = spec
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map_or(fallback_duration, Duration::from_secs);
        let resource_version = lease.resource_version().unwrap_or_default();
        let since = match previous {
            Some(p) if p.resource_version == resource_version && !resource_version.is_empty() => p.since,
            _ => now,
        };
        Observed { holder, lease_duration, resource_version, since }
    }
}

/// What a candidate does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Campaign {
    /// No Lease exists: create it.
    Create,
    /// Write ourselves as holder over the record we read.
    Acquire,
    /// Another holder's record is still valid; read again at the latest then.
    WaitUntil(Instant),
}

/// A candidate's decision from what it read (`None`: the Lease does not exist).
pub fn campaign_step(identity: &str, observed: Option<&Observed>, now: Instant) -> Campaign {
    let Some(o) = observed else { return Campaign::Create };
    match o.holder.as_deref() {
        // Released, or ours from an earlier process of this replica (that process is gone:
        // an identity is a pod name), as client-go does.
        None => Campaign::Acquire,
        Some(h) if h == identity => Campaign::Acquire,
        Some(_) => {
            let expires = o.since + o.lease_duration;
            if now >= expires { Campaign::Acquire } else { Campaign::WaitUntil(expires) }
        }
    }
}

/// [`campaign_step`] for a candidate that may not acquire before `not_before` (a foster of
/// another replica's shard, see [`crate::shard`]): it reads the Lease meanwhile, so a holder's
/// silence is timed all along, but neither creates nor acquires it until then.
pub fn held_back(step: Campaign, now: Instant, not_before: Instant) -> Campaign {
    match step {
        Campaign::Create | Campaign::Acquire if now < not_before => Campaign::WaitUntil(not_before),
        other => other,
    }
}

/// Where the Leases of other configurations stand (see [`Elector::exclusive_of`]), by a
/// candidate's own clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Foreign {
    /// None is held: each is released, deleted, or has been seen unchanged for its duration
    /// (its holder has stopped, by the leader's own rule).
    Free,
    /// `lease` is held by `holder` and is free at `until` at the earliest (the latest of
    /// those held).
    Held { lease: String, holder: String, until: Instant },
}

/// Fold a fresh read of the namespace's Leases into what was seen of the foreign ones before:
/// `since` stays only while a record is unchanged; a Lease no longer listed was deleted.
pub fn observe_foreign(
    previous: &BTreeMap<String, Observed>,
    leases: &[Lease],
    foreign: &dyn Fn(&str) -> bool,
    now: Instant,
    fallback_duration: Duration,
) -> BTreeMap<String, Observed> {
    leases
        .iter()
        .filter_map(|l| {
            let name = l.metadata.name.clone().filter(|n| foreign(n))?;
            let seen = Observed::observe(previous.get(&name), l, now, fallback_duration);
            Some((name, seen))
        })
        .collect()
}

/// Whether any foreign Lease is still held. A holder of the candidate's own identity counts
/// too: a foreign Lease is another configuration's, whatever process wrote it.
pub fn foreign_step(observed: &BTreeMap<String, Observed>, now: Instant) -> Foreign {
    observed
        .iter()
        .filter_map(|(lease, o)| {
            let until = o.since + o.lease_duration;
            let holder = o.holder.clone().filter(|_| now < until)?;
            Some(Foreign::Held { lease: lease.clone(), holder, until })
        })
        .max_by_key(|f| match f {
            Foreign::Held { until, .. } => *until,
            Foreign::Free => now,
        })
        .unwrap_or(Foreign::Free)
}

/// What the leader does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderStep {
    Renew,
    WaitUntil(Instant),
    /// No renewal sent in the last `lease_duration - grace` succeeded: stop at once.
    StepDown,
}

/// The leader's decision: `renewed` is when the last successful renewal (or the acquire) was
/// sent, `next_renew` when the next attempt is due.
pub fn leader_step(cfg: &LeaderConfig, renewed: Instant, next_renew: Instant, now: Instant) -> LeaderStep {
    let deadline = renewed + cfg.renew_deadline();
    if now >= deadline {
        LeaderStep::StepDown
    } else if now >= next_renew {
        LeaderStep::Renew
    } else {
        LeaderStep::WaitUntil(next_renew.min(deadline))
    }
}

/// The record that makes `cfg.identity` the holder, over `old` (None: a new Lease).
pub fn acquired(cfg: &LeaderConfig, name: &str, old: Option<&Lease>, now: Timestamp) -> Lease {
    let old_spec = old.and_then(|l| l.spec.clone()).unwrap_or_default();
    let ours = old_spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
    let transitions = old_spec.lease_transitions.unwrap_or(0);
    let spec = LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.duration_seconds()),
        acquire_time: if ours { old_spec.acquire_time.clone() } else { Some(MicroTime(now)) },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours || old.is_none() { transitions } else { transitions + 1 }),
        ..old_spec
    };
    let mut metadata = match old {
        Some(l) => l.metadata.clone(),
        None => ObjectMeta { name: Some(name.to_string()), ..Default::default() },
    };
    // A request for the Lease was addressed to its previous holder.
    if let Some(a) = metadata.annotations.as_mut() {
        a.remove(WANTED_BY_ANNOTATION);
    }
    Lease { metadata, spec: Some(spec) }
}

/// `current` renewed at `now` (keeps its resourceVersion: the replace's precondition).
pub fn renewed(cfg: &LeaderConfig, current: &Lease, now: Timestamp) -> Lease {
    let mut lease = current.clone();
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(cfg.duration_seconds());
    lease
}

/// `current` released like client-go's ReleaseOnCancel: no holder, 1 s duration, so a standby
/// acquires at its next poll.
pub fn released(current: &Lease, now: Timestamp) -> Lease {
    let mut lease = current.clone();
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(now));
    lease
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LossReason {
    #[error("no Lease renewal succeeded for {0:?} (the API server is unreachable or slow)")]
    NotRenewed(Duration),
    #[error("the Lease is held by {0}")]
    TakenOver(String),
    #[error("the Lease was deleted")]
    Deleted,
}

#[derive(Debug, Clone)]
enum TermState {
    Leading { deadline: Instant },
    Lost(LossReason),
}

/// Which Leases of the namespace belong to other configurations of this operator.
type ForeignLeases = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Campaigns for one Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    cfg: LeaderConfig,
    /// Ask another holder for the Lease ([`WANTED_BY_ANNOTATION`]).
    ask: bool,
    exclusive: Option<ForeignLeases>,
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, cfg: LeaderConfig) -> Self {
        Elector { api: Api::namespaced(client, namespace), name: name.to_string(), cfg, ask: false, exclusive: None }
    }

    /// Lead only while no Lease for which `foreign` holds is held: those of replicas of
    /// another configuration (sharded or not, another shard count), which reconcile apps this
    /// configuration also owns. Before acquiring, the candidate waits until every foreign Lease
    /// is free; after acquiring, it reads them again, and if one was taken meanwhile it
    /// releases its own and retries after a random pause. Of two candidates of different
    /// configurations, whichever reads second sees the other's Lease held, so they never both
    /// lead (both may back off, and retry).
    pub fn exclusive_of(mut self, foreign: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.exclusive = Some(Arc::new(foreign));
        self
    }

    /// While another replica holds the Lease, ask it to hand the Lease over (it may or may
    /// not; a holder that does stops its work first, then releases).
    pub fn asking(mut self) -> Self {
        self.ask = true;
        self
    }

    pub fn config(&self) -> &LeaderConfig {
        &self.cfg
    }

    /// Campaign until this replica holds the Lease. Dropping the future stops campaigning; an
    /// acquire already sent may then have succeeded, and the Lease simply expires.
    pub async fn campaign(&self) -> Leadership {
        self.campaign_from(Instant::now()).await
    }

    /// One read of the Lease, folded into `observed`: the record and when it was read; None
    /// after a failed read (past a pause of one renew period) or a timed-out one: read again.
    async fn read(&self, observed: &mut Option<Observed>) -> Option<(Option<Lease>, Instant)> {
        let read = timeout(self.cfg.request_timeout(), self.api.get_opt(&self.name)).await;
        let now = Instant::now();
        let current = match read {
            Ok(Ok(current)) => current,
            Ok(Err(e)) => {
                warn!(error = %e, lease = %self.name, "reading the Lease failed; retrying");
                sleep_until(now + self.cfg.renew_period).await;
                return None;
            }
            Err(_) => {
                warn!(lease = %self.name, timeout = ?self.cfg.request_timeout(), "reading the Lease timed out; retrying");
                return None;
            }
        };
        *observed = current.as_ref().map(|l| Observed::observe(observed.as_ref(), l, now, self.cfg.lease_duration));
        Some((current, now))
    }

    /// One read of the namespace's Leases, folded into `seen` (see [`observe_foreign`]);
    /// None after a failed or timed-out read.
    async fn read_foreign(&self, foreign: &ForeignLeases, seen: &mut BTreeMap<String, Observed>) -> Option<Instant> {
        // No resourceVersion: a consistent read, never a stale cache.
        let read = timeout(self.cfg.request_timeout(), self.api.list(&ListParams::default())).await;
        let now = Instant::now();
        match read {
            Ok(Ok(list)) => {
                *seen = observe_foreign(seen, &list.items, foreign.as_ref(), now, self.cfg.lease_duration);
                Some(now)
            }
            Ok(Err(e)) => {
                warn!(error = %e, lease = %self.name, "listing the Leases of other configurations failed; retrying");
                None
            }
            Err(_) => {
                warn!(lease = %self.name, "listing the Leases of other configurations timed out; retrying");
                None
            }
        }
    }

    /// [`Elector::campaign`], acquiring no earlier than `not_before` (see [`held_back`]).
    pub async fn campaign_from(&self, not_before: Instant) -> Leadership {
        let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let mut observed: Option<Observed> = None;
        let mut announced = None;
        let mut foreign_seen = BTreeMap::new();
        let mut foreign_read = false;
        let mut announced_foreign = None;
        loop {
            // Foreign Leases are timed from the start, so one left by a killed replica has
            // expired by the time this Lease may be taken.
            if let Some(foreign) = self.exclusive.as_ref().filter(|_| !foreign_read) {
                foreign_read = self.read_foreign(foreign, &mut foreign_seen).await.is_some();
            }
            let Some((current, now)) = self.read(&mut observed).await else { continue };
            let step = held_back(campaign_step(&self.cfg.identity, observed.as_ref(), now), now, not_before);
            if let Campaign::WaitUntil(until) = step {
                let holder = observed.as_ref().and_then(|o| o.holder.clone());
                if announced != holder {
                    info!(holder = ?holder, lease = %self.name, "another replica leads; standing by");
                    announced = holder;
                }
                if let Some(ask) = current.as_ref().filter(|_| self.ask).and_then(|l| asked_for(l, &self.cfg.identity))
                {
                    // A conflict (the holder renewed meanwhile) is retried at the next poll.
                    match timeout(self.cfg.request_timeout(), self.api.replace(&self.name, &pp, &ask)).await {
                        Ok(Ok(_)) => info!(lease = %self.name, "asked the holder to hand the Lease over"),
                        Ok(Err(e)) => debug!(error = %e, lease = %self.name, "asking for the Lease failed"),
                        Err(_) => debug!(lease = %self.name, "asking for the Lease timed out"),
                    }
                }
                sleep_until(until.min(now + self.cfg.renew_period)).await;
                continue;
            }
            // Free for this configuration: no other configuration may hold its Leases either.
            if let Some(foreign) = &self.exclusive {
                let Some(now) = self.read_foreign(foreign, &mut foreign_seen).await else {
                    sleep_until(now + self.cfg.renew_period).await;
                    continue;
                };
                if let Foreign::Held { lease, holder, until } = foreign_step(&foreign_seen, now) {
                    if announced_foreign.as_ref() != Some(&lease) {
                        info!(lease = %self.name, foreign = %lease, %holder, "a replica of another configuration (sharding or shard count) leads; waiting for it to stop or expire");
                        announced_foreign = Some(lease);
                    }
                    sleep_until(until.min(now + self.cfg.renew_period)).await;
                    continue;
                }
            }
            let sent = Instant::now();
            let lease = acquired(&self.cfg, &self.name, current.as_ref(), Timestamp::now());
            let write = if step == Campaign::Create {
                timeout(self.cfg.request_timeout(), self.api.create(&pp, &lease)).await
            } else {
                timeout(self.cfg.request_timeout(), self.api.replace(&self.name, &pp, &lease)).await
            };
            match write {
                Ok(Ok(lease)) => {
                    if self.exclusive.is_some() && !self.still_exclusive(&mut foreign_seen).await {
                        self.back_off(&pp, &lease).await;
                        continue;
                    }
                    return Leadership::start(self.api.clone(), self.name.clone(), self.cfg.clone(), lease, sent);
                }
                // Another candidate wrote first: read again at once.
                Ok(Err(e)) if is_status(&e, 409) => debug!(lease = %self.name, "lost the race for the Lease"),
                Ok(Err(e)) => {
                    warn!(error = %e, lease = %self.name, "acquiring the Lease failed; retrying");
                    sleep_until(sent + self.cfg.renew_period).await;
                }
                Err(_) => warn!(lease = %self.name, "acquiring the Lease timed out; retrying"),
            }
        }
    }

    /// After acquiring: whether the foreign Leases are still free (a candidate of another
    /// configuration may have taken one since they were read). An unreadable list is no proof.
    async fn still_exclusive(&self, seen: &mut BTreeMap<String, Observed>) -> bool {
        let Some(foreign) = &self.exclusive else { return true };
        match self.read_foreign(foreign, seen).await.map(|now| foreign_step(seen, now)) {
            Some(Foreign::Free) => true,
            Some(Foreign::Held { lease, holder, .. }) => {
                info!(lease = %self.name, foreign = %lease, %holder, "a replica of another configuration took its Lease meanwhile; releasing ours");
                false
            }
            None => false,
        }
    }

    /// Release `ours` (just acquired, never led) and pause a random part of two renew periods,
    /// so two candidates of different configurations that backed off together do not collide
    /// again. A failed release simply expires.
    async fn back_off(&self, pp: &PostParams, ours: &Lease) {
        let lease = released(ours, Timestamp::now());
        if let Ok(Err(e)) = timeout(self.cfg.request_timeout(), self.api.replace(&self.name, pp, &lease)).await {
            warn!(error = %e, lease = %self.name, "releasing the Lease after backing off failed; it expires");
        }
        sleep(self.cfg.renew_period.mul_f64(2.0 * rand::random::<f64>())).await;
    }
}

/// Held while this replica leads; renews in the background. Dropping it stops renewing.
pub struct Leadership {
    state: watch::Receiver<TermState>,
    /// Who asked for the Lease, as of the last renewal.
    wanted: watch::Receiver<Option<String>>,
    renewer: tokio::task::JoinHandle<()>,
    /// The record as last written by us: the precondition of the release.
    last: Arc<Mutex<Lease>>,
    api: Api<Lease>,
    name: String,
    renew_deadline: Duration,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl Leadership {
    fn start(api: Api<Lease>, name: String, cfg: LeaderConfig, lease: Lease, sent: Instant) -> Self {
        let (tx, state) = watch::channel(TermState::Leading { deadline: sent + cfg.renew_deadline() });
        let (wanted_tx, wanted) = watch::channel(None);
        let last = Arc::new(Mutex::new(lease));
        let renew_deadline = cfg.renew_deadline();
        let renewer = tokio::spawn(renew_loop(api.clone(), name.clone(), cfg, last.clone(), tx, wanted_tx, sent));
        Leadership { state, wanted, renewer, last, api, name, renew_deadline }
    }

    /// Resolves when leadership ends. The deadline is enforced here on this task's timer too,
    /// so a stalled renewer cannot keep this replica leading.
    pub async fn lost(&mut self) -> LossReason {
        until_lost(&mut self.state, self.renew_deadline).await
    }

    /// Who asks for the Lease ([`WANTED_BY_ANNOTATION`]) as seen at the renewals, to wait on
    /// with `wait_for(Option::is_some)`.
    pub fn wanted(&self) -> watch::Receiver<Option<String>> {
        self.wanted.clone()
    }

    /// Stop renewing and release the Lease for a fast hand-over, within `limit`. Writes only
    /// over our own last record (resourceVersion precondition), so a newer holder is never
    /// clobbered.
    pub async fn release(mut self, limit: Duration) -> Result<(), ReleaseError> {
        // Wait for the aborted renewer so no renewal races the release.
        self.renewer.abort();
        let _ = (&mut self.renewer).await;
        let current = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let lease = released(&current, Timestamp::now());
        let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        match timeout(limit, self.api.replace(&self.name, &pp, &lease)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if is_status(&e, 409) => Err(ReleaseError::Changed),
            Ok(Err(e)) => Err(ReleaseError::Api(e)),
            Err(_) => Err(ReleaseError::Timeout(limit)),
        }
    }
}

/// Resolves when the term in `state` ends: the renewer reported a loss, or the current
/// deadline passed without being moved (also when the renewer is gone).
async fn until_lost(state: &mut watch::Receiver<TermState>, renew_deadline: Duration) -> LossReason {
    let since_renewal = |deadline: Instant| {
        let renewed = deadline.checked_sub(renew_deadline).unwrap_or(deadline);
        LossReason::NotRenewed(Instant::now().saturating_duration_since(renewed))
    };
    loop {
        let deadline = match state.borrow_and_update().clone() {
            TermState::Lost(reason) => return reason,
            TermState::Leading { deadline } => deadline,
        };
        tokio::select! {
            _ = sleep_until(deadline) => {
                // A renewal may have moved the deadline just now.
                if matches!(*state.borrow(), TermState::Leading { deadline: d } if d <= Instant::now()) {
                    return since_renewal(deadline);
                }
            }
            changed = state.changed() => if changed.is_err() {
                // The renewer is gone (it panicked): lead no longer than its last deadline.
                sleep_until(deadline).await;
                return since_renewal(deadline);
            }
        }
    }
}

/// Releasing the Lease did not happen; it then expires after its duration.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("the Lease changed since our last renewal (another replica took it); left as is")]
    Changed,
    #[error("releasing the Lease failed: {0}; a standby takes over once it expires")]
    Api(kube::Error),
    #[error("releasing the Lease timed out after {0:?}; a standby takes over once it expires")]
    Timeout(Duration),
}

/// What one renewal attempt found.
enum Renewal {
    Renewed(Box<Lease>),
    Lost(LossReason),
    Failed(String),
}

async fn renew_once(api: &Api<Lease>, name: &str, cfg: &LeaderConfig) -> Renewal {
    let current = match api.get_opt(name).await {
        Ok(Some(l)) => l,
        Ok(None) => return Renewal::Lost(LossReason::Deleted),
        Err(e) => return Renewal::Failed(format!("reading the Lease: {e}")),
    };
    let holder = current.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
    if holder != cfg.identity {
        return Renewal::Lost(LossReason::TakenOver(holder));
    }
    let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    match api.replace(name, &pp, &renewed(cfg, &current, Timestamp::now())).await {
        Ok(lease) => Renewal::Renewed(Box::new(lease)),
        // Someone wrote in between; the next attempt reads who holds it now.
        Err(e) => Renewal::Failed(format!("writing the Lease: {e}")),
    }
}

async fn renew_loop(
    api: Api<Lease>,
    name: String,
    cfg: LeaderConfig,
    last: Arc<Mutex<Lease>>,
    tx: watch::Sender<TermState>,
    wanted: watch::Sender<Option<String>>,
    mut renewed_at: Instant,
) {
    let mut next = renewed_at + cfg.renew_period;
    loop {
        let now = Instant::now();
        match leader_step(&cfg, renewed_at, next, now) {
            LeaderStep::StepDown => {
                let _ = tx.send(TermState::Lost(LossReason::NotRenewed(now - renewed_at)));
                return;
            }
            LeaderStep::WaitUntil(t) => sleep_until(t).await,
            LeaderStep::Renew => {
                let sent = Instant::now();
                next = sent + cfg.renew_period;
                let deadline = renewed_at + cfg.renew_deadline();
                let budget = cfg.request_timeout().min(deadline.saturating_duration_since(sent));
                match timeout(budget, renew_once(&api, &name, &cfg)).await {
                    Ok(Renewal::Renewed(lease)) => {
                        let asker = wanted_by(&lease).filter(|w| *w != cfg.identity);
                        wanted.send_if_modified(|w| std::mem::replace(w, asker.clone()) != asker);
                        *last.lock().unwrap_or_else(|e| e.into_inner()) = *lease;
                        renewed_at = sent;
                        let _ = tx.send(TermState::Leading { deadline: sent + cfg.renew_deadline() });
                    }
                    Ok(Renewal::Lost(reason)) => {
                        let _ = tx.send(TermState::Lost(reason));
                        return;
                    }
                    Ok(Renewal::Failed(error)) => warn!(%error, lease = %name, "renewing the Lease failed"),
                    Err(_) => warn!(lease = %name, timeout = ?budget, "renewing the Lease timed out"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn cfg() -> LeaderConfig {
        LeaderConfig::new("me", secs(15), Some(secs(2)), Some(secs(5))).unwrap()
    }

    fn lease(holder: Option<&str>, rv: &str, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta { name: Some("l".into()), resource_version: Some(rv.into()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                lease_duration_seconds: Some(duration),
                lease_transitions: Some(3),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = LeaderConfig::new("me", secs(15), None, None).unwrap();
        assert_eq!(
            (c.grace, c.renew_deadline(), c.renew_period),
            (secs(5), secs(10), Duration::from_nanos(3_333_333_333))
        );
        assert!(c.request_timeout() < c.renew_period);
        assert_eq!(LeaderConfig::new("me", Duration::from_millis(500), None, None), Err(ConfigError::DurationTooShort));
        assert!(matches!(LeaderConfig::new("me", secs(6), None, Some(secs(6))), Err(ConfigError::Grace { .. })));
        assert!(matches!(LeaderConfig::new("me", secs(6), None, Some(secs(0))), Err(ConfigError::Grace { .. })));
        assert!(matches!(
            LeaderConfig::new("me", secs(6), Some(secs(4)), Some(secs(2))),
            Err(ConfigError::RenewPeriod { .. })
        ));
        assert!(LeaderConfig::new("me", secs(6), Some(Duration::from_millis(3999)), Some(secs(2))).is_ok());
        let msg = LeaderConfig::new("me", secs(6), None, Some(secs(7))).unwrap_err().to_string();
        assert!(msg.contains("--lease-grace"), "{msg}");
    }

    #[test]
    fn observation_restarts_only_when_the_record_changes() {
        let t0 = Instant::now();
        let first = Observed::observe(None, &lease(Some("other"), "1", 6), t0, secs(15));
        assert_eq!((first.holder.as_deref(), first.lease_duration, first.since), (Some("other"), secs(6), t0));
        let same = Observed::observe(Some(&first), &lease(Some("other"), "1", 6), t0 + secs(4), secs(15));
        assert_eq!(same.since, t0, "an unchanged record keeps its first sighting");
        let renewed = Observed::observe(Some(&same), &lease(Some("other"), "2", 6), t0 + secs(5), secs(15));
        assert_eq!(renewed.since, t0 + secs(5), "a renewal restarts the wait");
        let empty = Observed::observe(None, &lease(Some(""), "3", 6), t0, secs(15));
        assert_eq!(empty.holder, None, "an empty holder is a released Lease");
        let mut no_duration = lease(Some("x"), "4", 1);
        no_duration.spec.as_mut().unwrap().lease_duration_seconds = None;
        assert_eq!(Observed::observe(None, &no_duration, t0, secs(15)).lease_duration, secs(15));
    }

    #[test]
    fn candidate_waits_a_full_duration_by_its_own_clock() {
        let t0 = Instant::now();
        assert_eq!(campaign_step("me", None, t0), Campaign::Create);
        // The record's renewTime is irrelevant: only when we first saw this version counts.
        let o = Observed::observe(None, &lease(Some("other"), "7", 6), t0, secs(15));
        assert_eq!(campaign_step("me", Some(&o), t0), Campaign::WaitUntil(t0 + secs(6)));
        assert_eq!(campaign_step("me", Some(&o), t0 + Duration::from_millis(5999)), Campaign::WaitUntil(t0 + secs(6)));
        assert_eq!(campaign_step("me", Some(&o), t0 + secs(6)), Campaign::Acquire);
        // A renewal seen just before expiry pushes the takeover a full duration further.
        let o2 = Observed::observe(Some(&o), &lease(Some("other"), "8", 6), t0 + secs(5), secs(15));
        assert_eq!(campaign_step("me", Some(&o2), t0 + secs(7)), Campaign::WaitUntil(t0 + secs(11)));
        let released = Observed::observe(None, &lease(None, "9", 1), t0, secs(15));
        assert_eq!(campaign_step("me", Some(&released), t0), Campaign::Acquire);
        let mine = Observed::observe(None, &lease(Some("me"), "9", 15), t0, secs(15));
        assert_eq!(campaign_step("me", Some(&mine), t0), Campaign::Acquire);
    }

    #[test]
    fn a_held_back_candidate_observes_but_acquires_only_from_its_start() {
        let t0 = Instant::now();
        let start = t0 + secs(15);
        assert_eq!(held_back(campaign_step("me", None, t0), t0, start), Campaign::WaitUntil(start));
        let released = Observed::observe(None, &lease(None, "9", 1), t0, secs(15));
        assert_eq!(held_back(campaign_step("me", Some(&released), t0), t0, start), Campaign::WaitUntil(start));
        assert_eq!(held_back(campaign_step("me", Some(&released), start), start, start), Campaign::Acquire);
        // The holder's silence counts from the first sighting, not from the start: a Lease seen
        // unchanged since t0 is taken over at the start, not a duration after it.
        let o = Observed::observe(None, &lease(Some("other"), "7", 6), t0, secs(15));
        assert_eq!(held_back(campaign_step("me", Some(&o), t0), t0, start), Campaign::WaitUntil(t0 + secs(6)));
        let later = t0 + secs(10);
        assert_eq!(held_back(campaign_step("me", Some(&o), later), later, start), Campaign::WaitUntil(start));
        assert_eq!(held_back(campaign_step("me", Some(&o), start), start, start), Campaign::Acquire);
        // Held back or not, a renewed Lease is never taken.
        let renewed = Observed::observe(Some(&o), &lease(Some("other"), "8", 6), start, secs(15));
        assert_eq!(
            held_back(campaign_step("me", Some(&renewed), start), start, t0),
            Campaign::WaitUntil(start + secs(6))
        );
    }

    #[test]
    fn a_candidate_asks_another_holder_once_and_the_next_holder_clears_the_request() {
        let held = lease(Some("foster"), "7", 6);
        let asked = asked_for(&held, "owner").expect("asks another holder");
        assert_eq!(wanted_by(&asked).as_deref(), Some("owner"));
        assert_eq!(asked.metadata.resource_version.as_deref(), Some("7"), "the write is conditional");
        assert_eq!(asked.spec, held.spec, "the holder's record is untouched");
        assert_eq!(asked_for(&asked, "owner"), None, "asked already: no write (it would restart the wait)");
        assert_eq!(asked_for(&held, "foster"), None, "never asks itself");
        assert_eq!(asked_for(&lease(None, "7", 1), "owner"), None, "a released Lease is acquired, not asked for");
        let taken = acquired(&cfg(), "l", Some(&asked), Timestamp::from_second(1_700_000_000).unwrap());
        assert_eq!(wanted_by(&taken), None);
        assert_eq!(
            wanted_by(&renewed(&cfg(), &asked, Timestamp::from_second(1_700_000_000).unwrap())).as_deref(),
            Some("owner"),
            "a renewal keeps the request for its holder to see"
        );
    }

    #[test]
    fn leader_renews_on_schedule_and_steps_down_at_the_deadline() {
        let c = cfg();
        let t0 = Instant::now();
        let next = t0 + secs(2);
        assert_eq!(leader_step(&c, t0, next, t0 + secs(1)), LeaderStep::WaitUntil(next));
        assert_eq!(leader_step(&c, t0, next, next), LeaderStep::Renew);
        // Renewals keep failing: attempts continue until lease_duration - grace after the last
        // successful one was sent, then the leader steps down (never waits past the deadline).
        assert_eq!(leader_step(&c, t0, t0 + secs(8), t0 + Duration::from_millis(9999)), LeaderStep::Renew);
        assert_eq!(leader_step(&c, t0, t0 + secs(12), t0 + secs(9)), LeaderStep::WaitUntil(t0 + secs(10)));
        assert_eq!(leader_step(&c, t0, t0 + secs(12), t0 + secs(10)), LeaderStep::StepDown);
        assert_eq!(leader_step(&c, t0, t0 + secs(11), t0 + secs(11)), LeaderStep::StepDown);
    }

    #[test]
    fn the_leader_stops_before_any_standby_can_take_over() {
        // Whatever the interleaving: a standby's sighting of our last successful renewal comes
        // after we sent it, so its takeover is at least lease_duration after `sent`, while we
        // step down lease_duration - grace after it.
        let c = cfg();
        let sent = Instant::now();
        for seen_after_ms in [0u64, 1, 500, 4000] {
            let seen = sent + Duration::from_millis(seen_after_ms);
            let o = Observed::observe(None, &lease(Some("me"), "5", 15), seen, secs(15));
            let takeover = match campaign_step("other", Some(&o), seen) {
                Campaign::WaitUntil(t) => t,
                other => panic!("standby acted at once: {other:?}"),
            };
            assert_eq!(leader_step(&c, sent, takeover, takeover - c.grace), LeaderStep::StepDown);
            assert!(takeover - (sent + c.renew_deadline()) >= c.grace);
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test]
    async fn the_term_ends_at_the_deadline_unless_a_renewal_moves_it() {
        let start = Instant::now();
        let (tx, mut rx) = watch::channel(TermState::Leading { deadline: start + ms(150) });
        let renewer = tokio::spawn(async move {
            tokio::time::sleep(ms(100)).await;
            // A renewal sent at +100 ms succeeded: the term now ends at +250 ms.
            tx.send(TermState::Leading { deadline: start + ms(250) }).unwrap();
            tokio::time::sleep(ms(1000)).await;
            drop(tx);
        });
        let reason = timeout(Duration::from_secs(5), until_lost(&mut rx, ms(150))).await.expect("the term ends");
        let ended = start.elapsed();
        assert!(ended >= ms(250) && ended < ms(1000), "ended after {ended:?}");
        assert!(matches!(reason, LossReason::NotRenewed(d) if d >= ms(150)), "{reason:?}");
        renewer.abort();
    }

    #[tokio::test]
    async fn a_reported_loss_ends_the_term_at_once() {
        let start = Instant::now();
        let (tx, mut rx) = watch::channel(TermState::Leading { deadline: start + Duration::from_secs(60) });
        tokio::spawn(async move {
            tokio::time::sleep(ms(50)).await;
            tx.send(TermState::Lost(LossReason::TakenOver("other".into()))).unwrap();
            // Keep the sender alive: the loss must come from the message, not the hang-up.
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let reason = timeout(Duration::from_secs(5), until_lost(&mut rx, ms(150))).await;
        assert_eq!(reason, Ok(LossReason::TakenOver("other".into())), "ends at once, not at the deadline");
    }

    #[tokio::test]
    async fn a_vanished_renewer_still_ends_the_term_at_its_deadline() {
        let start = Instant::now();
        let (tx, mut rx) = watch::channel(TermState::Leading { deadline: start + ms(200) });
        drop(tx);
        let reason = timeout(Duration::from_secs(5), until_lost(&mut rx, ms(200))).await.expect("the term ends");
        assert!(matches!(reason, LossReason::NotRenewed(_)), "{reason:?}");
        let ended = start.elapsed();
        assert!(ended >= ms(200) && ended < ms(2000), "ended after {ended:?}");
    }

    fn named(name: &str, holder: Option<&str>, rv: &str, duration: i32) -> Lease {
        let mut l = lease(holder, rv, duration);
        l.metadata.name = Some(name.into());
        l
    }

    #[test]
    fn foreign_leases_are_timed_like_any_holder_and_only_those_held_count() {
        let foreign = |n: &str| n.starts_with("old-");
        let t0 = Instant::now();
        let listed = [
            named("old-0", Some("a"), "1", 6),
            named("old-1", None, "2", 1),
            named("mine", Some("b"), "3", 6),
            named("other", Some("c"), "4", 6),
        ];
        let seen = observe_foreign(&BTreeMap::new(), &listed, &foreign, t0, secs(15));
        assert_eq!(seen.keys().collect::<Vec<_>>(), ["old-0", "old-1"], "only foreign Leases are kept");
        assert_eq!(
            foreign_step(&seen, t0),
            Foreign::Held { lease: "old-0".into(), holder: "a".into(), until: t0 + secs(6) }
        );
        // Unchanged for its duration: its holder has stopped.
        let later = observe_foreign(&seen, &listed, &foreign, t0 + secs(6), secs(15));
        assert_eq!(later["old-0"].since, t0);
        assert_eq!(foreign_step(&later, t0 + secs(6)), Foreign::Free);
        // Renewed: held again for a full duration from the sighting.
        let renewed = [named("old-0", Some("a"), "5", 6), listed[1].clone()];
        let again = observe_foreign(&later, &renewed, &foreign, t0 + secs(7), secs(15));
        assert_eq!(
            foreign_step(&again, t0 + secs(8)),
            Foreign::Held { lease: "old-0".into(), holder: "a".into(), until: t0 + secs(13) }
        );
        // The latest of several held is reported; a deleted one is forgotten.
        let two = [named("old-0", Some("a"), "5", 6), named("old-2", Some("me"), "6", 15)];
        let both = observe_foreign(&again, &two, &foreign, t0 + secs(8), secs(15));
        assert!(
            matches!(foreign_step(&both, t0 + secs(8)), Foreign::Held { lease, .. } if lease == "old-2"),
            "held by this very identity still counts: it is another configuration's"
        );
        assert_eq!(observe_foreign(&both, &[], &foreign, t0 + secs(9), secs(15)), BTreeMap::new());
    }

    /// Two candidates of different configurations (each the other's foreign Lease) run the
    /// campaign's steps — check the foreign Leases, acquire their own, check again, release
    /// on a conflict — in every interleaving, against a store whose writes are conditional:
    /// they never both lead, and one leads whenever they do not overlap.
    #[test]
    fn candidates_of_two_configurations_never_both_lead_in_any_interleaving() {
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        enum Pc {
            Check,
            Acquire,
            Recheck,
            Release,
            Leads,
            Waits,
            BackedOff,
        }
        let names = ["unsharded", "shard-0-of-2"];
        let step = |who: usize, pc: Pc, store: &mut BTreeMap<String, Lease>, t: Instant| -> Pc {
            let (own, other) = (names[who], names[1 - who]);
            let foreign = move |n: &str| n == other;
            let list: Vec<Lease> = store.values().cloned().collect();
            let free =
                || foreign_step(&observe_foreign(&BTreeMap::new(), &list, &foreign, t, secs(15)), t) == Foreign::Free;
            let c = LeaderConfig::new(format!("id-{who}"), secs(15), None, None).unwrap();
            match pc {
                Pc::Check => {
                    if free() {
                        Pc::Acquire
                    } else {
                        Pc::Waits
                    }
                }
                Pc::Acquire => {
                    let now = Timestamp::from_second(1_700_000_000).unwrap();
                    let mut l = acquired(&c, own, store.get(own), now);
                    l.metadata.resource_version = Some(format!("{}", store.len() + 10));
                    store.insert(own.into(), l);
                    Pc::Recheck
                }
                Pc::Recheck => {
                    if free() {
                        Pc::Leads
                    } else {
                        Pc::Release
                    }
                }
                Pc::Release => {
                    let l = released(&store[own], Timestamp::from_second(1_700_000_001).unwrap());
                    store.insert(own.into(), l);
                    Pc::BackedOff
                }
                done => done,
            }
        };
        let running = |pc: Pc| matches!(pc, Pc::Check | Pc::Acquire | Pc::Recheck | Pc::Release);
        let t = Instant::now();
        let mut explored = 0;
        let mut stack = vec![([Pc::Check, Pc::Check], BTreeMap::<String, Lease>::new(), Vec::<usize>::new())];
        while let Some((pcs, store, trace)) = stack.pop() {
            if !pcs.iter().any(|pc| running(*pc)) {
                explored += 1;
                assert!(!(pcs[0] == Pc::Leads && pcs[1] == Pc::Leads), "both lead after {trace:?}");
                let sequential = trace.windows(2).filter(|w| w[0] != w[1]).count() <= 1;
                if sequential {
                    assert!(pcs.contains(&Pc::Leads), "one runs after the other: the first leads {trace:?} {pcs:?}");
                }
                continue;
            }
            for who in 0..2 {
                if running(pcs[who]) {
                    let (mut pcs, mut store, mut trace) = (pcs, store.clone(), trace.clone());
                    pcs[who] = step(who, pcs[who], &mut store, t);
                    trace.push(who);
                    stack.push((pcs, store, trace));
                }
            }
        }
        assert!(explored >= 20, "explored {explored} interleavings");
    }

    #[test]
    fn records_follow_client_go() {
        let c = cfg();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let created = acquired(&c, "l", None, now);
        let spec = created.spec.as_ref().unwrap();
        assert_eq!(created.metadata.name.as_deref(), Some("l"));
        assert_eq!((spec.holder_identity.as_deref(), spec.lease_duration_seconds), (Some("me"), Some(15)));
        assert_eq!((spec.lease_transitions, spec.acquire_time.as_ref().map(|t| t.0)), (Some(0), Some(now)));

        let taken = acquired(&c, "l", Some(&lease(Some("other"), "7", 6)), now);
        assert_eq!(taken.metadata.resource_version.as_deref(), Some("7"), "the replace is conditional");
        assert_eq!(taken.spec.as_ref().unwrap().lease_transitions, Some(4));
        let again = acquired(&c, "l", Some(&lease(Some("me"), "7", 6)), now);
        assert_eq!(again.spec.as_ref().unwrap().lease_transitions, Some(3), "re-acquiring our own is no transition");

        let later = Timestamp::from_second(1_700_000_010).unwrap();
        let r = renewed(&c, &taken, later);
        assert_eq!(r.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(r.spec.as_ref().unwrap().renew_time.as_ref().map(|t| t.0), Some(later));
        assert_eq!(r.spec.as_ref().unwrap().acquire_time.as_ref().map(|t| t.0), Some(now));

        let gone = released(&r, later);
        assert_eq!(gone.metadata.resource_version.as_deref(), Some("7"), "never clobbers a newer holder");
        let spec = gone.spec.unwrap();
        assert_eq!(
            (spec.holder_identity, spec.lease_duration_seconds, spec.lease_transitions),
            (None, Some(1), Some(4))
        );
    }
}
