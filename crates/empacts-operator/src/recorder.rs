//! Our Event recorder (events.k8s.io/v1). kube's Recorder keys its cache without the note, so
//! a later Event with another message only bumps the first one's count and the message is
//! lost. Here the key holds a hash of the note: another message is another Event, while the
//! same message again patches the earlier Event's `series` instead of adding one. The cache is
//! bounded (entries expire, a cap evicts the oldest) and `forget` drops an app's entries.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;

/// A repeat later than this starts a new Event (as kube's Recorder and client-go do).
const TTL: SignedDuration = SignedDuration::from_mins(6);
/// At most this many Events are remembered for series; past it the oldest goes first.
const MAX_ENTRIES: usize = 2048;

/// What makes two Events the same Event: everything but the time, the note only by hash;
/// kept as hashes (keyed per process: a false match between the ~2,000 remembered Events is
/// ~2^-50), 16 bytes instead of nine strings (~1.4 MB at the cap, ~120 KB now).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    /// The whole Event but its time.
    event: u64,
    /// Its namespace and the name of the object it regards (what `forget` drops by).
    subject: u64,
}

#[derive(Debug, Clone)]
struct Seen {
    name: Box<str>,
    count: i32,
    last: Timestamp,
}

/// One Event to publish.
pub struct Record<'a> {
    pub regarding: &'a ObjectReference,
    pub related: Option<ObjectReference>,
    pub type_: EventType,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: String,
}

impl Record<'_> {
    fn key(&self, hasher: &RandomState) -> Key {
        let namespace = self.regarding.namespace.as_deref().unwrap_or_default();
        let event = (
            namespace,
            object(self.regarding),
            self.related.as_ref().map(object),
            type_name(self.type_),
            self.reason,
            self.action,
            &self.note,
        );
        Key { event: hasher.hash_one(event), subject: subject(hasher, namespace, self.regarding.name.as_deref()) }
    }
}

fn object(r: &ObjectReference) -> (Option<&str>, Option<&str>, Option<&str>) {
    (r.kind.as_deref(), r.name.as_deref(), r.uid.as_deref())
}

fn subject(hasher: &RandomState, namespace: &str, name: Option<&str>) -> u64 {
    hasher.hash_one((namespace, name))
}

fn type_name(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

/// The remembered Events, bounded.
#[derive(Debug, Default)]
struct Cache {
    seen: HashMap<Key, Seen>,
    hasher: RandomState,
}

impl Cache {
    /// The Event a repeat of `key` at `now` adds to (count bumped), if it is recent.
    fn repeat(&mut self, key: &Key, now: Timestamp) -> Option<Seen> {
        self.expire(now);
        let seen = self.seen.get_mut(key)?;
        seen.count += 1;
        seen.last = now;
        Some(seen.clone())
    }

    /// Drop expired entries; a table a burst grew gives its memory back once mostly empty.
    fn expire(&mut self, now: Timestamp) {
        self.seen.retain(|_, s| s.last + TTL > now);
        if self.seen.capacity() > 64 && self.seen.len() * 4 < self.seen.capacity() {
            self.seen.shrink_to_fit();
        }
    }

    fn insert(&mut self, key: Key, seen: Seen) {
        self.expire(seen.last);
        if !self.seen.contains_key(&key) && self.seen.len() >= MAX_ENTRIES {
            let oldest = self.seen.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(key, seen);
    }

    fn forget(&mut self, namespace: &str, name: &str) {
        let subject = subject(&self.hasher, namespace, Some(name));
        self.seen.retain(|k, _| k.subject != subject);
    }
}

pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    cache: Mutex<Cache>,
}

impl Recorder {
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        let instance = instance.unwrap_or_else(|| controller.to_string());
        Recorder { client, controller: controller.into(), instance, cache: Mutex::default() }
    }

    pub async fn publish(&self, record: Record<'_>) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let (key, repeat) = {
            let mut cache = self.cache.lock().expect("event cache lock");
            let key = record.key(&cache.hasher);
            (key, cache.repeat(&key, now))
        };
        let namespace = record.regarding.namespace.clone().unwrap_or_default();
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        if let Some(seen) = repeat {
            let series = EventSeries { count: seen.count, last_observed_time: MicroTime(now) };
            let patch = serde_json::json!({ "series": series });
            match events.patch(&seen.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(()),
                // Gone (the API server's Event TTL): a new Event follows.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let name =
            format!("{}.{:x}", record.regarding.name.as_deref().unwrap_or(&self.controller), now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(namespace), ..Default::default() },
            action: Some(record.action.into()),
            reason: Some(record.reason.into()),
            note: Some(record.note),
            type_: Some(type_name(record.type_).into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(record.regarding.clone()),
            related: record.related,
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        events.create(&PostParams::default(), &event).await?;
        self.cache.lock().expect("event cache lock").insert(key, Seen { name: name.into(), count: 1, last: now });
        Ok(())
    }

    /// Drops what is remembered of the Events on `name` in `namespace`.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.cache.lock().expect("event cache lock").forget(namespace, name);
    }

    /// Events remembered (for tests of pruning).
    pub fn tracked(&self) -> usize {
        self.cache.lock().expect("event cache lock").seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(ns: &str, name: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("EmpactsApp".into()),
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        }
    }

    /// The key as `cache` makes it.
    fn key_in(cache: &Cache, regarding: &ObjectReference, reason: &str, note: &str) -> Key {
        Record { regarding, related: None, type_: EventType::Warning, reason, action: "Reconcile", note: note.into() }
            .key(&cache.hasher)
    }

    fn seen(name: &str, last: Timestamp) -> Seen {
        Seen { name: name.into(), count: 1, last }
    }

    #[test]
    fn the_note_is_part_of_the_key() {
        let cache = Cache::default();
        let a = app("ns", "api");
        assert_eq!(key_in(&cache, &a, "Failed", "one"), key_in(&cache, &a, "Failed", "one"));
        assert_ne!(
            key_in(&cache, &a, "Failed", "one"),
            key_in(&cache, &a, "Failed", "two"),
            "another message, another Event"
        );
        assert_ne!(key_in(&cache, &a, "Failed", "one"), key_in(&cache, &a, "Other", "one"));
        assert_ne!(key_in(&cache, &a, "Failed", "one"), key_in(&cache, &app("ns2", "api"), "Failed", "one"));
    }

    #[test]
    fn a_recent_repeat_counts_on_the_same_event_and_an_old_one_does_not() {
        let a = app("ns", "api");
        let t0 = Timestamp::now();
        let mut cache = Cache::default();
        cache.insert(key_in(&cache, &a, "Failed", "one"), seen("api.1", t0));
        let again = cache.repeat(&key_in(&cache, &a, "Failed", "one"), t0 + SignedDuration::from_secs(10)).unwrap();
        assert_eq!((&*again.name, again.count), ("api.1", 2));
        assert!(cache.repeat(&key_in(&cache, &a, "Failed", "two"), t0).is_none(), "another note is not a repeat");
        let later = t0 + SignedDuration::from_secs(10) + TTL;
        assert!(cache.repeat(&key_in(&cache, &a, "Failed", "one"), later).is_none(), "expired");
        assert_eq!(cache.seen.len(), 0, "expired entries are dropped");
    }

    #[test]
    fn the_cache_is_bounded_and_evicts_the_oldest() {
        let a = app("ns", "api");
        let t0 = Timestamp::now();
        let mut cache = Cache::default();
        for i in 0..MAX_ENTRIES + 10 {
            let at = t0 + SignedDuration::from_millis(i as i64);
            cache.insert(key_in(&cache, &a, "Failed", &format!("note {i}")), seen(&format!("api.{i}"), at));
        }
        assert_eq!(cache.seen.len(), MAX_ENTRIES);
        assert!(!cache.seen.contains_key(&key_in(&cache, &a, "Failed", "note 0")), "the oldest went");
        assert!(cache.seen.contains_key(&key_in(&cache, &a, "Failed", &format!("note {}", MAX_ENTRIES + 9))));
    }

    #[test]
    fn forget_drops_only_that_apps_events() {
        let t0 = Timestamp::now();
        let mut cache = Cache::default();
        cache.insert(key_in(&cache, &app("ns", "api"), "Failed", "one"), seen("a", t0));
        cache.insert(key_in(&cache, &app("ns", "api"), "Failed", "two"), seen("b", t0));
        cache.insert(key_in(&cache, &app("ns", "web"), "Failed", "one"), seen("c", t0));
        cache.insert(key_in(&cache, &app("other", "api"), "Failed", "one"), seen("d", t0));
        cache.forget("ns", "api");
        let left: Vec<&str> = {
            let mut v: Vec<&str> = cache.seen.values().map(|s| &*s.name).collect();
            v.sort();
            v
        };
        assert_eq!(left, ["c", "d"]);
    }

    #[test]
    fn a_burst_expired_gives_its_table_back() {
        let a = app("ns", "api");
        let t0 = Timestamp::now();
        let mut cache = Cache::default();
        for i in 0..MAX_ENTRIES {
            cache.insert(key_in(&cache, &a, "Failed", &format!("note {i}")), seen("api", t0));
        }
        let full = cache.seen.capacity();
        let later = t0 + TTL + SignedDuration::from_secs(1);
        cache.insert(key_in(&cache, &a, "Failed", "late"), seen("api", later));
        assert_eq!(cache.seen.len(), 1, "the burst expired");
        assert!(cache.seen.capacity() * 16 <= full, "capacity {} after {full}", cache.seen.capacity());
    }
}
