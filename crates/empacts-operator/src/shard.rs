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

    /// An app watch event as this replica's controller sees it: apps of other shards never
    /// enter its cache, and an app whose shard-key label moved it to another shard leaves the
    /// cache (its update becomes a deletion), so nothing here reconciles it any more.
    pub fn event(&self, event: watcher::Event<EmpactsApp>) -> Option<watcher::Event<EmpactsApp>> {
        use watcher::Event::*;
        match event {
            Apply(app) if !self.owns(&app) => Some(Delete(app)),
            InitApply(app) if !self.owns(&app) => None,
            other => Some(other),
        }
    }
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
