//! Sharding across replicas: with `--shards N`, the apps are split into N disjoint shards and
//! every shard has its own Lease (`<lease-name>-shard-<i>-of-<n>`), elected with [`crate::leader`]'s
//! guarantees. A replica reconciles the apps of the shards whose Leases it holds, and only
//! those, so no app is ever reconciled by two replicas at once.
//!
//! - The shard of an app is a SHA-256 of its `empacts.io/shard-key` label if set, else of
//!   `namespace/name`, modulo N ([`shard_of`]): the same on every build and platform.
//! - Every replica has a preferred shard (its pod's ordinal, else a hash of its name) and
//!   campaigns for it at once; it campaigns for every other shard too, as a foster, but not
//!   before a head start of one lease duration after it started ([`campaign_start`]), so that
//!   replicas starting together end up one shard each. A foster then takes over a dead replica's
//!   shard once that Lease has been silent for its duration, as any standby does.
//! - A replica losing any of its shard Leases stops reconciling at once and exits, like a
//!   leader losing the single Lease.
//! - Replicas of different configurations (unsharded, or another count) split the apps
//!   differently, so a replica leads only while no Lease of another configuration is held
//!   ([`foreign_lease`], [`crate::leader::Elector::exclusive_of`]): a change of `--shards` in a
//!   running release waits for the old replicas to stop.
//!
//! The decisions here are pure; `empacts run` does the I/O.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use empacts_api::EmpactsApp;
use kube::ResourceExt;
use kube::runtime::watcher;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// Label users can set on an EmpactsApp to choose what decides its shard (apps with the same
/// key share a shard), like Flux's `sharding.fluxcd.io/key`.
pub const SHARD_KEY_LABEL: &str = "empacts.io/shard-key";

/// Shard of a key among `shards`: the first 8 bytes of its SHA-256, big-endian, modulo
/// `shards` (stable across builds and platforms, unlike std's hashers).
pub fn shard_of_key(key: &str, shards: u32) -> u32 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(shards.max(1))) as u32
}

/// What decides the shard of an app: its shard-key label if set and not empty, else
/// `namespace/name`.
pub fn shard_key(namespace: &str, name: &str, labels: &std::collections::BTreeMap<String, String>) -> String {
    match labels.get(SHARD_KEY_LABEL).filter(|k| !k.is_empty()) {
        Some(key) => key.clone(),
        None => format!("{namespace}/{name}"),
    }
}

/// Shard of an app among `shards`.
pub fn shard_of(app: &EmpactsApp, shards: u32) -> u32 {
    let key = shard_key(&app.namespace().unwrap_or_default(), &app.name_any(), app.labels());
    shard_of_key(&key, shards)
}

/// Name of shard `shard`'s Lease: `<base>-shard-<i>-of-<n>`; with a single shard, the Lease of
/// the unsharded operator. The count is part of the name: replicas configured with different
/// counts split the apps differently, so they must never hold Leases of the same name.
pub fn lease_name(base: &str, shard: u32, shards: u32) -> String {
    if shards <= 1 { base.to_string() } else { format!("{base}-shard-{shard}-of-{shards}") }
}

/// Whether `name` is a Lease of this operator (`base`) under another configuration than
/// `shards`: the unsharded Lease when sharded, a shard Lease when unsharded or of another
/// count, or one of the older `<base>-shard-<i>` form (which carried no count). While such a
/// Lease is held, a replica of another configuration is reconciling apps that may be in this
/// one's shards. Other Leases in the namespace are not this operator's.
pub fn foreign_lease(base: &str, shards: u32, name: &str) -> bool {
    if name == base {
        return shards > 1;
    }
    let Some(rest) = name.strip_prefix(base).and_then(|r| r.strip_prefix("-shard-")) else { return false };
    let number = |s: &str| s.parse::<u32>().ok().filter(|_| s.bytes().all(|b| b.is_ascii_digit()));
    match rest.split_once("-of-") {
        Some((i, n)) => match (number(i), number(n)) {
            (Some(i), Some(n)) => !(shards > 1 && n == shards && i < n),
            _ => false,
        },
        None => number(rest).is_some(),
    }
}

/// The shard a replica campaigns for first: `explicit` if given, else the trailing ordinal of
/// its identity (`empacts-operator-1` -> 1, a StatefulSet pod's name) modulo `shards`, else a
/// hash of the identity.
pub fn preferred_shard(identity: &str, shards: u32, explicit: Option<u32>) -> u32 {
    let shards = shards.max(1);
    if let Some(k) = explicit {
        return k % shards;
    }
    let ordinal = identity.rsplit_once('-').and_then(|(_, tail)| tail.parse::<u64>().ok());
    match ordinal {
        Some(n) => (n % u64::from(shards)) as u32,
        None => shard_of_key(identity, shards),
    }
}

/// Earliest instant at which a replica started at `started` may acquire a shard's Lease (it
/// observes the Lease before, so a holder's silence is timed from the start): at once for its
/// preferred shard, one lease duration later as a foster of another.
pub fn campaign_start(preferred: bool, started: Instant, lease_duration: Duration) -> Instant {
    if preferred { started } else { started + lease_duration }
}

/// The shards whose apps this replica reconciles, out of how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub shards: u32,
    pub held: Arc<BTreeSet<u32>>,
}

impl Filter {
    pub fn new(shards: u32, held: impl IntoIterator<Item = u32>) -> Self {
        Filter { shards, held: Arc::new(held.into_iter().collect()) }
    }

    pub fn owns(&self, app: &EmpactsApp) -> bool {
        self.held.contains(&shard_of(app, self.shards))
    }

    /// Whether the app's status names a shard of this configuration that this replica holds.
    fn claimed_here(&self, app: &EmpactsApp) -> bool {
        claimed_shard(app, self.shards).is_some_and(|i| self.held.contains(&i))
    }

    /// An app watch event as this replica's controller sees it: apps of other shards never
    /// enter its cache, and an app whose shard-key label moved it to another shard leaves the
    /// cache (its update becomes a deletion) once this replica has released it, so nothing here
    /// reconciles it any more. Until then it stays: its next reconcile is the release, which
    /// the controller runs only after any reconcile of it still in flight.
    pub fn event(&self, event: watcher::Event<EmpactsApp>) -> Option<watcher::Event<EmpactsApp>> {
        use watcher::Event::*;
        let ours = |app: &EmpactsApp| self.owns(app) || self.claimed_here(app);
        match event {
            Apply(app) if !ours(&app) => Some(Delete(app)),
            InitApply(app) if !ours(&app) => None,
            other => Some(other),
        }
    }

    /// What a reconcile of `app` may do here: see [`Handoff`].
    pub fn handoff(&self, app: &EmpactsApp) -> Handoff {
        let own = shard_of(app, self.shards);
        let claimed = claimed_shard(app, self.shards);
        if !self.held.contains(&own) {
            return if claimed.is_some_and(|i| self.held.contains(&i)) { Handoff::Release } else { Handoff::NotOurs };
        }
        let claim = claim_name(own, self.shards);
        match claimed {
            Some(i) if i == own => Handoff::Reconcile { claim, write_claim: false },
            // Claimed by a shard held elsewhere: that replica may still be reconciling it.
            Some(i) if !self.held.contains(&i) => Handoff::Wait { holder: i },
            // Unclaimed, claimed by another shard held here (no one else can be reconciling it),
            // or by a replica of another configuration (they have all stopped: see
            // `foreign_lease`).
            _ => Handoff::Reconcile { claim, write_claim: true },
        }
    }
}

/// The claim a shard writes in the status of the apps it reconciles: `<i>-of-<n>`.
pub fn claim_name(shard: u32, shards: u32) -> String {
    format!("{shard}-of-{shards}")
}

/// The shard of this configuration (`shards`) the app's status names, if any.
fn claimed_shard(app: &EmpactsApp, shards: u32) -> Option<u32> {
    let claim = app.status.as_ref()?.shard.as_deref()?;
    let (i, n) = claim.split_once("-of-")?;
    let (i, n) = (i.parse::<u32>().ok()?, n.parse::<u32>().ok()?);
    (n == shards && i < n && claim == claim_name(i, n)).then_some(i)
}

/// A sharded replica's view of one app, before a reconcile writes anything for it.
///
/// An app moves between shards when its shard-key label changes, and the two replicas see the
/// change when their own watches show it: the old one may still be reconciling the app (a
/// reconcile in flight, or a watch behind) while the new one starts. The app's status carries
/// a claim (`status.shard`) that makes the move a handshake: the new shard waits while another
/// shard's claim stands, and the old shard clears its claim only from a view that shows the
/// move, after its last reconcile of the app (the controller never runs two reconciles of one
/// app at once). Both writes carry the resourceVersion they were decided on, so a claim made
/// from a stale view is refused (409).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handoff {
    /// The app is in a held shard: reconcile it, writing the claim first if it is not there yet.
    Reconcile { claim: String, write_claim: bool },
    /// The app is in a held shard, but the claim of shard `holder`, held by another replica,
    /// stands: write nothing until that replica releases it.
    Wait { holder: u32 },
    /// The app moved out of the held shards and this replica's claim stands: clear it, and
    /// write nothing else.
    Release,
    /// Neither in a held shard nor claimed by one (left over in the cache): nothing to do.
    NotOurs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn app(ns: &str, name: &str, key: Option<&str>) -> EmpactsApp {
        let mut labels = serde_json::Map::new();
        if let Some(k) = key {
            labels.insert(SHARD_KEY_LABEL.into(), k.into());
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "empacts.io/v1alpha1", "kind": "EmpactsApp",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"image": "api:1"}
        }))
        .unwrap()
    }

    #[test]
    fn shards_are_pinned_across_builds() {
        // Computed independently (Python's hashlib); these must never change between releases,
        // or an upgrade would move apps between replicas mid-rollout.
        let pinned: Vec<u32> = ["team-a/api", "team-a/web", "team-b/api", "default/x"]
            .iter()
            .map(|k| shard_of_key(k, 2))
            .chain(["team-a/api", "team-a/web", "team-b/api", "default/x"].iter().map(|k| shard_of_key(k, 7)))
            .collect();
        assert_eq!(
            pinned,
            vec![
                PINNED_2[0],
                PINNED_2[1],
                PINNED_2[2],
                PINNED_2[3],
                PINNED_7[0],
                PINNED_7[1],
                PINNED_7[2],
                PINNED_7[3]
            ]
        );
        assert_eq!(shard_of_key("anything", 1), 0);
        assert_eq!(shard_of_key("anything", 0), 0, "0 shards is read as 1");
    }

    const PINNED_2: [u32; 4] = [1, 1, 1, 0];
    const PINNED_7: [u32; 4] = [6, 2, 3, 3];

    #[test]
    fn shards_spread_evenly() {
        for shards in [2u32, 3, 5] {
            let mut counts = vec![0u32; shards as usize];
            for i in 0..10_000 {
                counts[shard_of_key(&format!("ns-{}/app-{i}", i % 37), shards) as usize] += 1;
            }
            let even = 10_000 / shards;
            for c in &counts {
                assert!(c.abs_diff(even) < even / 10, "{shards} shards: {counts:?}");
            }
        }
    }

    #[test]
    fn the_shard_key_label_overrides_namespace_and_name() {
        let plain = app("team-a", "api", None);
        assert_eq!(shard_of(&plain, 5), shard_of_key("team-a/api", 5));
        // Apps sharing a key share a shard, whatever their names.
        let keys: Vec<u32> = (0..50).map(|i| shard_of(&app("ns", &format!("app-{i}"), Some("tenant-1")), 5)).collect();
        assert!(keys.iter().all(|s| *s == shard_of_key("tenant-1", 5)), "{keys:?}");
        let empty = app("team-a", "api", Some(""));
        assert_eq!(shard_of(&empty, 5), shard_of(&plain, 5), "an empty key is no key");
        assert_eq!(shard_key("a", "b", &BTreeMap::new()), "a/b");
    }

    #[test]
    fn leases_and_preferences() {
        assert_eq!(lease_name("empacts-operator", 0, 1), "empacts-operator", "one shard: today's Lease");
        assert_eq!(lease_name("empacts-operator", 1, 2), "empacts-operator-shard-1-of-2");
        assert_eq!(preferred_shard("empacts-operator-0", 2, None), 0);
        assert_eq!(preferred_shard("empacts-operator-1", 2, None), 1);
        assert_eq!(preferred_shard("empacts-operator-5", 2, None), 1);
        assert_eq!(preferred_shard("empacts-operator-1", 2, Some(0)), 0, "explicit wins");
        assert_eq!(preferred_shard("x", 3, Some(4)), 1);
        assert_eq!(preferred_shard("empacts-7d9f-abcde", 3, None), shard_of_key("empacts-7d9f-abcde", 3));
        assert_eq!(preferred_shard("host", 1, None), 0);
    }

    #[test]
    fn leases_of_another_configuration_are_foreign() {
        let base = "empacts-operator";
        // Unsharded: every shard Lease, of any count or form, is another configuration's.
        for name in ["empacts-operator-shard-0-of-2", "empacts-operator-shard-2-of-3", "empacts-operator-shard-1"] {
            assert!(foreign_lease(base, 1, name), "{name}");
        }
        assert!(!foreign_lease(base, 1, base), "its own Lease");
        // Sharded by 2: the unsharded Lease, other counts and the count-less form are foreign.
        for name in [base, "empacts-operator-shard-0-of-3", "empacts-operator-shard-0", "empacts-operator-shard-2-of-2"]
        {
            assert!(foreign_lease(base, 2, name), "{name}");
        }
        for own in (0..2).map(|i| lease_name(base, i, 2)) {
            assert!(!foreign_lease(base, 2, &own), "{own}");
            assert!(foreign_lease(base, 3, &own), "{own} under 3 shards");
            assert!(foreign_lease(base, 1, &own), "{own} unsharded");
        }
        // Not this operator's: other names, other releases sharing a prefix, malformed tails.
        for name in [
            "empacts-operator-2",
            "empacts-operator-other",
            "empacts-operator-shard-",
            "empacts-operator-shard-x",
            "empacts-operator-shard-1-of-",
            "empacts-operator-shard-+1",
            "empacts-operator-shard-1-of-2-x",
            "other-shard-1-of-2",
            "empacts",
        ] {
            assert!(!foreign_lease(base, 2, name) && !foreign_lease(base, 1, name), "{name}");
        }
    }

    #[test]
    fn fosters_wait_a_lease_duration_after_start() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        assert_eq!(campaign_start(true, t0, d), t0);
        assert_eq!(campaign_start(false, t0, d), t0 + d);
    }

    /// A shard key of each shard out of 2.
    fn keys() -> [&'static str; 2] {
        let k = |s: u32| ["k-a", "k-b", "k-c", "k-d", "k-e"].into_iter().find(|k| shard_of_key(k, 2) == s).unwrap();
        [k(0), k(1)]
    }

    fn claimed(key: &str, claim: Option<&str>) -> EmpactsApp {
        let mut a = app("ns", "a", Some(key));
        a.status = Some(empacts_api::EmpactsAppStatus { shard: claim.map(str::to_string), ..Default::default() });
        a
    }

    #[test]
    fn a_held_shard_claims_its_apps_and_waits_for_another_replicas_claim() {
        let [k0, k1] = keys();
        let f = Filter::new(2, [0]);
        let reconcile = |write_claim| Handoff::Reconcile { claim: "0-of-2".into(), write_claim };
        assert_eq!(f.handoff(&claimed(k0, Some("0-of-2"))), reconcile(false), "already claimed");
        assert_eq!(f.handoff(&claimed(k0, None)), reconcile(true), "unclaimed: claim first");
        assert_eq!(f.handoff(&claimed(k0, Some("1-of-2"))), Handoff::Wait { holder: 1 }, "shard 1 is elsewhere");
        // Claims of another configuration are void: its replicas have all stopped.
        for other in ["0-of-3", "2-of-3", "0", "x-of-2", "01-of-2", "2-of-2", ""] {
            assert_eq!(f.handoff(&claimed(k0, Some(other))), reconcile(true), "{other:?}");
        }
        // Claimed by another shard this replica holds (a foster): no one else can be at it.
        let both = Filter::new(2, [0, 1]);
        assert_eq!(both.handoff(&claimed(k0, Some("1-of-2"))), reconcile(true));
        // Moved away: released if claimed here, else none of this replica's business.
        assert_eq!(f.handoff(&claimed(k1, Some("0-of-2"))), Handoff::Release);
        assert_eq!(f.handoff(&claimed(k1, Some("1-of-2"))), Handoff::NotOurs);
        assert_eq!(f.handoff(&claimed(k1, None)), Handoff::NotOurs);
        assert_eq!(f.handoff(&claimed(k1, Some("0-of-3"))), Handoff::NotOurs);
        assert_eq!(claim_name(1, 2), "1-of-2");
    }

    #[test]
    fn an_app_that_moved_away_stays_in_the_cache_until_released() {
        use watcher::Event::*;
        let [k0, k1] = keys();
        let f = Filter::new(2, [0]);
        let moved = claimed(k1, Some("0-of-2"));
        assert!(matches!(f.event(Apply(moved.clone())), Some(Apply(_))), "still to be released");
        assert!(matches!(f.event(InitApply(moved)), Some(InitApply(_))), "after a restart too");
        assert!(matches!(f.event(Apply(claimed(k1, None))), Some(Delete(_))), "released: gone");
        assert!(f.event(InitApply(claimed(k1, Some("1-of-2")))).is_none());
        assert!(matches!(f.event(Apply(claimed(k0, Some("1-of-2")))), Some(Apply(_))), "moved in: kept, waits");
    }

    /// The app as the API server holds it, and as a replica's watch shows it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    struct Version {
        rv: u32,
        shard: u32,
        claim: Option<u32>,
    }

    /// A replica in the model: the versions its watch showed so far (it shows them in order,
    /// any number behind), and the reconcile in flight (whether it may write children).
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct Replica {
        seen: usize,
        in_flight: Option<bool>,
    }

    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct World {
        history: Vec<Version>,
        replicas: [Replica; 2],
        /// Which replica wrote children, in order (consecutive writes of one collapsed).
        writers: Vec<usize>,
        relabelled: bool,
    }

    fn as_app(v: &Version) -> EmpactsApp {
        let mut a = claimed(keys()[v.shard as usize], v.claim.map(|c| claim_name(c, 2)).as_deref());
        a.metadata.resource_version = Some(v.rv.to_string());
        a
    }

    /// Every state one step from `w`: a replica's watch catches up one version, a replica
    /// starts a reconcile from its view (claim and release writes are conditional on its
    /// version), writes a child in it, or ends it; the user moves the app to shard 1 once.
    /// `preconditions`: claim and release writes are refused unless the view is current.
    fn steps(w: &World, preconditions: bool, decide: &dyn Fn(&Filter, &EmpactsApp) -> Handoff) -> Vec<World> {
        let mut out = Vec::new();
        let now = *w.history.last().unwrap();
        if !w.relabelled {
            let mut n = w.clone();
            n.history.push(Version { rv: now.rv + 1, shard: 1, ..now });
            n.relabelled = true;
            out.push(n);
        }
        for r in 0..2 {
            let replica = &w.replicas[r];
            if replica.seen + 1 < w.history.len() {
                let mut n = w.clone();
                n.replicas[r].seen += 1;
                out.push(n);
            }
            match replica.in_flight {
                None => {
                    let view = w.history[replica.seen];
                    let filter = Filter::new(2, [r as u32]);
                    let mut n = w.clone();
                    let current = view.rv == now.rv || !preconditions;
                    let mut write = |claim: Option<u32>| {
                        n.history.push(Version { rv: now.rv + 1, claim, ..now });
                    };
                    n.replicas[r].in_flight = Some(match decide(&filter, &as_app(&view)) {
                        Handoff::Reconcile { write_claim: false, .. } => true,
                        Handoff::Reconcile { write_claim: true, .. } if current => {
                            write(Some(r as u32));
                            true
                        }
                        Handoff::Release if current => {
                            write(None);
                            false
                        }
                        // Refused (409) or nothing to do.
                        _ => false,
                    });
                    out.push(n);
                }
                Some(may_write) => {
                    if may_write && w.writers.last() != Some(&r) {
                        let mut n = w.clone();
                        n.writers.push(r);
                        out.push(n);
                    }
                    let mut n = w.clone();
                    n.replicas[r].in_flight = None;
                    out.push(n);
                }
            }
        }
        out
    }

    /// What exploring every interleaving found (depth-first, states deduplicated).
    #[derive(Debug, Default)]
    struct Explored {
        /// A state in which the replicas' child writes alternate (replica 0 wrote after
        /// replica 1 had), if any.
        overlap: Option<World>,
        /// Whether replica 1 (the app's new shard) ever writes its children.
        moved: bool,
    }

    /// From the app in shard 0 with each of `claims`, which replica 0 has seen.
    fn explore(
        claims: &[Option<u32>],
        preconditions: bool,
        decide: &dyn Fn(&Filter, &EmpactsApp) -> Handoff,
    ) -> Explored {
        let mut found = Explored::default();
        for &claim in claims {
            let start = World {
                history: vec![Version { rv: 1, shard: 0, claim }],
                replicas: [Replica { seen: 0, in_flight: None }, Replica { seen: 0, in_flight: None }],
                writers: vec![],
                relabelled: false,
            };
            let mut seen = std::collections::HashSet::new();
            let mut stack = vec![start];
            while let Some(w) = stack.pop() {
                if w.writers.len() > 2 || w.writers.first() == Some(&1) && w.writers.len() > 1 {
                    found.overlap.get_or_insert(w);
                    continue;
                }
                found.moved |= w.writers.last() == Some(&1);
                // Bounded: the handshake takes a handful of writes.
                if w.history.len() > 6 || !seen.insert(w.clone()) {
                    continue;
                }
                stack.extend(steps(&w, preconditions, decide));
            }
        }
        found
    }

    #[test]
    fn a_move_between_shards_never_lets_two_replicas_write_in_any_interleaving() {
        // Claimed by shard 0, or not yet (replica 0 may still claim it from a stale view).
        let handshake = explore(&[Some(0), None], true, &|f, a| f.handoff(a));
        assert!(handshake.overlap.is_none(), "{:?}", handshake.overlap);
        assert!(handshake.moved, "the new shard takes the app over");
        // The model finds the race without the wait: the new shard reconciles at once.
        let eager = explore(&[Some(0)], true, &|f, a| match f.handoff(a) {
            Handoff::Wait { .. } => Handoff::Reconcile { claim: String::new(), write_claim: false },
            other => other,
        });
        let race = eager.overlap.expect("the race without the wait");
        assert_eq!(race.writers, vec![0, 1, 0], "{race:?}");
        // Without the release, the new shard would wait forever for a claimed app.
        let unreleased = explore(&[Some(0)], true, &|f, a| match f.handoff(a) {
            Handoff::Release => Handoff::NotOurs,
            other => other,
        });
        assert!(unreleased.overlap.is_none() && !unreleased.moved, "{unreleased:?}");
        // A claim written from a stale view (the app not yet moved, as replica 0 saw it) must be
        // refused, or it takes an app replica 1 already claimed.
        let blind = explore(&[None], false, &|f, a| f.handoff(a));
        assert!(blind.overlap.is_some(), "the race without preconditions");
    }

    #[test]
    fn the_filter_keeps_only_owned_apps_and_drops_apps_that_move_away() {
        use watcher::Event::*;
        let a = app("ns", "a", Some("k-a"));
        let owned = shard_of(&a, 2);
        let f = Filter::new(2, [owned]);
        let other = app("ns", "b", Some(if shard_of_key("k-b", 2) == owned { "k-c" } else { "k-b" }));
        assert_ne!(shard_of(&other, 2), owned, "test setup");
        assert!(f.owns(&a) && !f.owns(&other));
        assert!(matches!(f.event(Apply(a.clone())), Some(Apply(_))));
        assert!(matches!(f.event(InitApply(a.clone())), Some(InitApply(_))));
        assert!(f.event(InitApply(other.clone())).is_none());
        assert!(matches!(f.event(Apply(other.clone())), Some(Delete(o)) if o.name_any() == "b"));
        assert!(matches!(f.event(Delete(other)), Some(Delete(_))));
        assert!(matches!(f.event(Init), Some(Init)));
        assert!(matches!(f.event(InitDone), Some(InitDone)));
        let all = Filter::new(2, [0, 1]);
        assert!((0..20).all(|i| all.owns(&app("ns", &format!("x-{i}"), None))));
    }
}
