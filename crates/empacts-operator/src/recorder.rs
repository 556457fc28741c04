//! Our Event recorder (events.k8s.io/v1). kube's Recorder keys its cache without the note, so
//! a later Event with another message only bumps the first one's count and the message is
//! lost. Here the key holds a hash of the note: another message is another Event, while the
//! same message again patches the earlier Event's `series` instead of adding one. The cache is
//! bounded (entries expire, a cap evicts the oldest) and `forget` drops an app's entries.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
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

/// What makes two Events the same Event: everything but the time, the note only by hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    regarding: (Option<String>, Option<String>, Option<String>),
    related: Option<(Option<String>, Option<String>, Option<String>)>,
    type_: &'static str,
    reason: String,
    action: String,
    note: u64,
}

fn object(r: &ObjectReference) -> (Option<String>, Option<String>, Option<String>) {
    (r.kind.clone(), r.name.clone(), r.uid.clone())
}

#[derive(Debug, Clone)]
struct Seen {
    name: String,
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
    fn key(&self) -> Key {
        let mut h = DefaultHasher::new();
        self.note.hash(&mut h);
        Key {
            namespace: self.regarding.namespace.clone().unwrap_or_default(),
            regarding: object(self.regarding),
            related: self.related.as_ref().map(object),
            type_: type_name(self.type_),
            reason: self.reason.into(),
            action: self.action.into(),
            note: h.finish(),
        }
    }
}

fn type_name(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

/// The remembered Events, bounded.
#[derive(Debug, Default)]
struct Cache(HashMap<Key, Seen>);

impl Cache {
    /// The Event a repeat of `key` at `now` adds to (count bumped), if it is recent.
    fn repeat(&mut self, key: &Key, now: Timestamp) -> Option<Seen> {
        self.0.retain(|_, s| s.last + TTL > now);
        let seen = self.0.get_mut(key)?;
        seen.count += 1;
        seen.last = now;
        Some(seen.clone())
    }

    fn insert(&mut self, key: Key, seen: Seen) {
        if !self.0.contains_key(&key) && self.0.len() >= MAX_ENTRIES {
            let oldest = self.0.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.0.remove(&oldest);
            }
        }
        self.0.insert(key, seen);
    }

    fn forget(&mut self, namespace: &str, name: &str) {
        self.0.retain(|k, _| !(k.namespace == namespace && k.regarding.1.as_deref() == Some(name)));
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
        let key = record.key();
        let namespace = key.namespace.clone();
        let events: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let repeat = self.cache.lock().expect("event cache lock").repeat(&key, now);
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
        self.cache.lock().expect("event cache lock").insert(key, Seen { name, count: 1, last: now });
        Ok(())
    }

    /// Drops what is remembered of the Events on `name` in `namespace`.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.cache.lock().expect("event cache lock").forget(namespace, name);
    }

    /// Events remembered (for tests of pruning).
    pub fn tracked(&self) -> usize {
        self.cache.lock().expect("event cache lock").0.len()
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

    fn key(regarding: &ObjectReference, reason: &str, note: &str) -> Key {
        Record { regarding, related: None, type_: EventType::Warning, reason, action: "Reconcile", note: note.into() }
            .key()
    }

    fn seen(name: &str, last: Timestamp) -> Seen {
        Seen { name: name.into(), count: 1, last }
    }

    #[test]
    fn the_note_is_part_of_the_key() {
        let a = app("ns", "api");
        assert_eq!(key(&a, "Failed", "one"), key(&a, "Failed", "one"));
        assert_ne!(key(&a, "Failed", "one"), key(&a, "Failed", "two"), "another message, another Event");
        assert_ne!(key(&a, "Failed", "one"), key(&a, "Other", "one"));
        assert_ne!(key(&a, "Failed", "one"), key(&app("ns2", "api"), "Failed", "one"));
    }

    #[test]
    fn a_recent_repeat_counts_on_the_same_event_and_an_old_one_does_not() {
        let a = app("ns", "api");
        let t0 = Timestamp::now();
        let mut cache = Cache::default();
        cache.insert(key(&a, "Failed", "one"), seen("api.1", t0));
        let again = cache.repeat(&key(&a, "Failed", "one"), t0 + SignedDuration::from_secs(10)).unwrap();
        assert_eq!((again.name.as_str(), again.count), ("api.1", 2));
        assert!(cache.repeat(&key(&a, "Failed", "two"), t0).is_none(), "another note is not a repeat");
        let later = t0 + SignedDuration::from_secs(10) + TTL;
        assert!(cache.repeat(&key(&a, "Failed", "one"), later).is_none(), "expired");
        assert_eq!(cache.0.len(), 0, "expired entries are dropped");
    }

    #[test]
    fn the_cache_is_bounded_and_evicts_the_oldest() {
        let a = app("ns", "api");
        let t0 = Timestamp::now();
        let mut cache = Cache::default();
        for i in 0..MAX_ENTRIES + 10 {
            let at = t0 + SignedDuration::from_millis(i as i64);
            cache.insert(key(&a, "Failed", &format!("note {i}")), seen(&format!("api.{i}"), at));
        }
        assert_eq!(cache.0.len(), MAX_ENTRIES);
        assert!(!cache.0.contains_key(&key(&a, "Failed", "note 0")), "the oldest went");
        assert!(cache.0.contains_key(&key(&a, "Failed", &format!("note {}", MAX_ENTRIES + 9))));
    }

    #[test]
    fn forget_drops_only_that_apps_events() {
        let t0 = Timestamp::now();
        let mut cache = Cache::default();
        cache.insert(key(&app("ns", "api"), "Failed", "one"), seen("a", t0));
        cache.insert(key(&app("ns", "api"), "Failed", "two"), seen("b", t0));
        cache.insert(key(&app("ns", "web"), "Failed", "one"), seen("c", t0));
        cache.insert(key(&app("other", "api"), "Failed", "one"), seen("d", t0));
        cache.forget("ns", "api");
        let left: Vec<&str> = {
            let mut v: Vec<&str> = cache.0.values().map(|s| s.name.as_str()).collect();
            v.sort();
            v
        };
        assert_eq!(left, ["c", "d"]);
    }
}
