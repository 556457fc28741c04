//! The ledger (the apps' ControllerRevisions) as this process sees it, without a request: the
//! controller's watch of them fills a cache, and this process's own ledger writes overlay it
//! until the watch has shown them. A watch can lag by seconds; a decision taken on a ledger
//! that does not show the mark this process wrote a moment ago could run a migration twice or
//! roll a failed revision out again. So:
//!
//! - every create, mark and delete of a ControllerRevision records what the API server
//!   answered ([`LedgerCache::wrote`], [`LedgerCache::deleted`]); that copy wins over the
//!   cached one until the cache holds the same or a newer resourceVersion (or no longer holds
//!   the deleted UID);
//! - the cache is used only once its watch has listed (a consistent list after the process
//!   became leader, so it holds every write of an earlier leader); before that the ledger is
//!   read fresh;
//! - marks still carry the resourceVersion they were decided on, so a write decided on a view
//!   someone else's write made stale fails with 409 and the next reconcile decides again.
//!
//! A new process starts with an empty overlay and a fresh list: a crash loses nothing here.
//!
//! Cached revisions are compacted (only this operator's managedFields entries, the recorded spec
//! as its JSON text) and kept compressed ([`RevisionRecord`]), indexed by app: a reconcile
//! unpacks its own app's few revisions instead of scanning the fleet's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::ResourceExt;
use kube::runtime::watcher;

use empacts_api::labels;

use crate::child_cache::{ChildCache, Record};
use crate::compressed::CompressedJson;

/// The ledger's cache: every ControllerRevision of the scope labelled as ours, by app.
pub type RevisionCache = ChildCache<RevisionRecord>;

/// What the ledger cache keeps of one ControllerRevision: its name and instance label (the
/// cache's keys) and the compacted object, compressed (~110 bytes for a settled app's).
#[derive(Debug, Clone)]
pub struct RevisionRecord {
    name: Box<str>,
    instance: Option<Box<str>>,
    object: CompressedJson,
}

impl RevisionRecord {
    /// The record of `cr` (compacted by the watch, see [`compact`]).
    pub fn of(cr: &ControllerRevision) -> Self {
        RevisionRecord {
            name: cr.name_any().into(),
            instance: cr.labels().get(labels::INSTANCE).map(|i| i.as_str().into()),
            object: CompressedJson::pack(cr),
        }
    }

    pub fn expand(&self) -> ControllerRevision {
        // Packed by `of` from the same type: it reads back.
        self.object.unpack().expect("a packed ControllerRevision reads back")
    }
}

impl Record for RevisionRecord {
    fn name(&self) -> &str {
        &self.name
    }
    fn instance(&self) -> Option<&str> {
        self.instance.as_deref()
    }
    /// Revisions trigger nothing (see the controller): no fingerprint to compare.
    fn fingerprint(&self) -> Option<u64> {
        None
    }
}

/// The app's revisions in `cache`, ours by label.
fn cached_of_app(cache: &RevisionCache, namespace: &str, app: &str) -> Vec<ControllerRevision> {
    let records = cache.records_of_instance(namespace, app);
    records.iter().map(RevisionRecord::expand).filter(|cr| of_app(cr, namespace, app)).collect()
}

/// What this process last wrote to one ControllerRevision.
#[derive(Debug, Clone)]
enum Written {
    /// The object as the API server answered the create or patch.
    Object(Arc<ControllerRevision>),
    /// Deleted (or found gone) by this process: the object of this UID is no more.
    Deleted { uid: String },
}

type Key = (String, String);

/// This process's ledger writes the watch has not shown yet.
#[derive(Debug, Default)]
pub struct LedgerCache {
    written: Mutex<HashMap<Key, Written>>,
    /// Apps (namespace, name) whose ledger a write found changed by someone else: read fresh
    /// once, since the cache may be older than both.
    stale: Mutex<std::collections::HashSet<Key>>,
}

/// resourceVersions are opaque by contract but etcd revisions in practice: compared as
/// numbers when both are, else only equality says "the same write".
pub fn seen_at_least(seen: Option<&str>, written: Option<&str>) -> bool {
    match (seen, written) {
        (Some(s), Some(w)) => match (s.parse::<u64>(), w.parse::<u64>()) {
            (Ok(s), Ok(w)) => s >= w,
            _ => s == w,
        },
        _ => false,
    }
}

/// One revision as this process must see it: the cached copy, unless our own write is newer.
fn view(cached: Option<&Arc<ControllerRevision>>, written: Option<&Written>) -> Option<Arc<ControllerRevision>> {
    match (cached, written) {
        (cached, None) => cached.cloned(),
        (Some(c), Some(Written::Object(w))) => {
            let cached_newer = seen_at_least(c.resource_version().as_deref(), w.resource_version().as_deref());
            Some(if cached_newer { c.clone() } else { w.clone() })
        }
        (None, Some(Written::Object(w))) => Some(w.clone()),
        (Some(c), Some(Written::Deleted { uid })) => (c.uid().as_ref() != Some(uid)).then(|| c.clone()),
        (None, Some(Written::Deleted { .. })) => None,
    }
}

/// The watch has caught up with `written` once it shows this object at the same or a newer
/// version, a different object under the name, or the deletion of the deleted one.
fn caught_up(event_obj: &ControllerRevision, deleted_event: bool, written: &Written) -> bool {
    match written {
        Written::Object(w) => {
            seen_at_least(event_obj.resource_version().as_deref(), w.resource_version().as_deref())
                || (event_obj.uid().is_some() && event_obj.uid() != w.uid())
        }
        Written::Deleted { uid } => {
            let same = event_obj.uid().as_ref() == Some(uid);
            if deleted_event { same } else { !same }
        }
    }
}

fn key_of(cr: &ControllerRevision) -> Key {
    (cr.namespace().unwrap_or_default(), cr.name_any())
}

/// The app's revisions among `revisions` (by instance label; ownership is checked by the caller).
fn of_app(cr: &ControllerRevision, namespace: &str, app: &str) -> bool {
    cr.namespace().as_deref() == Some(namespace)
        && cr.labels().get(labels::INSTANCE).map(String::as_str) == Some(app)
        && cr.labels().get(labels::MANAGED_BY).map(String::as_str) == Some(labels::MANAGER)
}

/// What the cache keeps of a ControllerRevision.
pub fn compact(cr: &mut ControllerRevision) {
    crate::children::trim_for_cache(&mut cr.metadata);
    if let Some(RawExtension(data)) = cr.data.as_mut()
        && !data.is_string()
    {
        *data = serde_json::Value::String(data.to_string());
    }
}

impl LedgerCache {
    /// The API server's answer to a create or patch of a ControllerRevision by this process.
    pub fn wrote(&self, cr: &ControllerRevision) {
        let mut cr = cr.clone();
        compact(&mut cr);
        self.written.lock().expect("ledger overlay lock").insert(key_of(&cr), Written::Object(Arc::new(cr)));
    }

    /// A ControllerRevision this process deleted (or found already gone).
    pub fn deleted(&self, namespace: &str, name: &str, uid: String) {
        let key = (namespace.to_string(), name.to_string());
        self.written.lock().expect("ledger overlay lock").insert(key, Written::Deleted { uid });
    }

    /// A ledger write of the app found its revision changed or gone (409, 404), or a revision
    /// it did not show (409 on create): someone else wrote, and the cache may be older than
    /// our own last write. The next reconcile reads the app's ledger fresh ([`Self::listed`]).
    pub fn invalidate(&self, namespace: &str, app: &str) {
        self.stale.lock().expect("ledger stale lock").insert((namespace.to_string(), app.to_string()));
    }

    /// A fresh list of the app's revisions: it is the truth as of now, newer than anything the
    /// cache or the overlay holds. Recorded as our own writes (each wins until the watch shows
    /// it), and what the cache holds that the list does not is hidden as deleted.
    pub fn listed(&self, cache: Option<&RevisionCache>, namespace: &str, app: &str, fresh: &[ControllerRevision]) {
        let listed: std::collections::HashSet<Option<String>> = fresh.iter().map(|c| c.uid()).collect();
        let mut gone = cache.map(|c| cached_of_app(c, namespace, app)).unwrap_or_default();
        gone.retain(|cr| !listed.contains(&cr.uid()));
        let mut written = self.written.lock().expect("ledger overlay lock");
        written.retain(|(ns, _), w| !(ns == namespace && matches!(w, Written::Object(o) if of_app(o, namespace, app))));
        for cr in fresh {
            let mut cr = cr.clone();
            compact(&mut cr);
            written.insert(key_of(&cr), Written::Object(Arc::new(cr)));
        }
        for cr in gone {
            if let Some(uid) = cr.uid() {
                written.insert(key_of(&cr), Written::Deleted { uid });
            }
        }
        drop(written);
        self.stale.lock().expect("ledger stale lock").remove(&(namespace.to_string(), app.to_string()));
    }

    /// A watch event, after the cache applied it: drop the overlay entries it caught up with.
    pub fn observe(&self, event: &watcher::Event<ControllerRevision>) {
        let (obj, deleted) = match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) => (o, false),
            watcher::Event::Delete(o) => (o, true),
            watcher::Event::Init | watcher::Event::InitDone => return,
        };
        let mut written = self.written.lock().expect("ledger overlay lock");
        let key = key_of(obj);
        if written.get(&key).is_some_and(|w| caught_up(obj, deleted, w)) {
            written.remove(&key);
        }
    }

    /// Overlay entries not yet shown by the watch.
    pub fn pending(&self) -> usize {
        self.written.lock().expect("ledger overlay lock").len()
    }

    /// The app's ControllerRevisions from the cache with this process's writes laid over them;
    /// None while the cache has not listed yet, or after [`Self::invalidate`] (the caller reads
    /// fresh then, and hands the result to [`Self::listed`]).
    pub fn revisions(&self, cache: &RevisionCache, namespace: &str, app: &str) -> Option<Vec<ControllerRevision>> {
        if !cache.listed() {
            return None;
        }
        if self.stale.lock().expect("ledger stale lock").contains(&(namespace.to_string(), app.to_string())) {
            return None;
        }
        let cached = cached_of_app(cache, namespace, app).into_iter().map(Arc::new).collect();
        Some(self.overlay(cached, namespace, app))
    }

    fn overlay(&self, cached: Vec<Arc<ControllerRevision>>, namespace: &str, app: &str) -> Vec<ControllerRevision> {
        let mut written = self.written.lock().expect("ledger overlay lock");
        let mut by_name: std::collections::BTreeMap<String, Arc<ControllerRevision>> =
            cached.into_iter().map(|c| (c.name_any(), c)).collect();
        // Our copies the cache already shows (same object, same or newer version) are done:
        // dropped here, since no later event may come to drop them (the event came before our
        // write was recorded, or a fresh list recorded what the cache already held).
        written.retain(|(ns, name), w| match w {
            Written::Object(o) if ns == namespace && of_app(o, namespace, app) => !by_name.get(name).is_some_and(|c| {
                c.uid() == o.uid() && seen_at_least(c.resource_version().as_deref(), o.resource_version().as_deref())
            }),
            _ => true,
        });
        let ours: Vec<(&Key, &Written)> = written
            .iter()
            .filter(|((ns, _), w)| {
                ns == namespace
                    && match w {
                        Written::Object(o) => of_app(o, namespace, app),
                        Written::Deleted { .. } => true,
                    }
            })
            .collect();
        for ((_, name), w) in ours {
            match view(by_name.get(name), Some(w)) {
                Some(v) => drop(by_name.insert(name.clone(), v)),
                None => drop(by_name.remove(name)),
            }
        }
        by_name.into_values().map(|c| c.as_ref().clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn cr(name: &str, uid: &str, rv: &str, mark: &str) -> ControllerRevision {
        ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(uid.into()),
                resource_version: Some(rv.into()),
                labels: Some(
                    [
                        (labels::INSTANCE.to_string(), "api".to_string()),
                        (labels::MANAGED_BY.into(), labels::MANAGER.into()),
                    ]
                    .into(),
                ),
                annotations: Some([("m".to_string(), mark.to_string())].into()),
                ..Default::default()
            },
            data: Some(RawExtension(serde_json::json!({"image": "api:1"}))),
            revision: 1,
        }
    }

    fn marks(v: &[ControllerRevision]) -> Vec<(String, String)> {
        v.iter().map(|c| (c.name_any(), c.annotations()["m"].clone())).collect()
    }

    #[test]
    fn versions_compare_as_numbers_and_otherwise_only_by_equality() {
        assert!(seen_at_least(Some("10"), Some("9")), "10 >= 9 as numbers, not as text");
        assert!(seen_at_least(Some("9"), Some("9")));
        assert!(!seen_at_least(Some("9"), Some("10")));
        assert!(seen_at_least(Some("abc"), Some("abc")));
        assert!(!seen_at_least(Some("abd"), Some("abc")));
        assert!(!seen_at_least(None, Some("1")));
    }

    #[test]
    fn our_write_wins_until_the_cache_shows_it_or_something_newer() {
        let ledger = LedgerCache::default();
        let stale = Arc::new(cr("api-a", "u1", "5", "old"));
        ledger.wrote(&cr("api-a", "u1", "7", "ours"));
        assert_eq!(marks(&ledger.overlay(vec![stale], "ns", "api")), [("api-a".into(), "ours".into())]);
        let newer = Arc::new(cr("api-a", "u1", "9", "someone else's, later"));
        assert_eq!(marks(&ledger.overlay(vec![newer], "ns", "api"))[0].1, "someone else's, later");
    }

    #[test]
    fn our_copy_is_dropped_once_a_read_finds_the_cache_showing_it_even_without_a_later_event() {
        let ledger = LedgerCache::default();
        // The watch's event of our write came before the write was recorded.
        ledger.observe(&watcher::Event::Apply(cr("api-a", "u1", "7", "ours")));
        ledger.wrote(&cr("api-a", "u1", "7", "ours"));
        ledger.wrote(&cr("api-b", "u2", "9", "newer than the cache"));
        ledger.deleted("ns", "api-c", "u3".into());
        assert_eq!(ledger.pending(), 3);
        let cached = vec![Arc::new(cr("api-a", "u1", "7", "ours")), Arc::new(cr("api-b", "u2", "8", "older"))];
        let seen = marks(&ledger.overlay(cached, "ns", "api"));
        assert_eq!(seen, [("api-a".into(), "ours".into()), ("api-b".into(), "newer than the cache".into())]);
        assert_eq!(
            ledger.pending(),
            2,
            "only the copy the cache shows is dropped; the newer one and the deletion stay"
        );
        // Another app's read drops nothing of this one.
        ledger.overlay(vec![Arc::new(cr("api-b", "u2", "9", "x"))], "ns", "web");
        assert_eq!(ledger.pending(), 2);
    }

    #[test]
    fn a_created_revision_shows_before_the_watch_does_and_a_deleted_one_is_gone_at_once() {
        let ledger = LedgerCache::default();
        ledger.wrote(&cr("api-b", "u2", "8", "new"));
        ledger.deleted("ns", "api-a", "u1".into());
        let cached = vec![Arc::new(cr("api-a", "u1", "5", "old"))];
        assert_eq!(marks(&ledger.overlay(cached, "ns", "api")), [("api-b".into(), "new".into())]);
        // A new object under the deleted name (another UID) is not hidden.
        let recreated = vec![Arc::new(cr("api-a", "u3", "12", "recreated"))];
        assert_eq!(marks(&ledger.overlay(recreated, "ns", "api"))[0].1, "recreated");
        // Other apps and namespaces are not touched by the overlay.
        assert!(ledger.overlay(vec![], "ns", "other").is_empty());
        assert!(ledger.overlay(vec![], "other-ns", "api").is_empty());
    }

    #[test]
    fn the_overlay_empties_as_the_watch_catches_up_and_not_before() {
        let ledger = LedgerCache::default();
        ledger.wrote(&cr("api-a", "u1", "7", "ours"));
        ledger.observe(&watcher::Event::Apply(cr("api-a", "u1", "6", "older event")));
        assert_eq!(ledger.pending(), 1, "an event older than our write changes nothing");
        ledger.observe(&watcher::Event::Apply(cr("api-a", "u1", "7", "ours")));
        assert_eq!(ledger.pending(), 0);

        ledger.deleted("ns", "api-a", "u1".into());
        ledger.observe(&watcher::Event::Apply(cr("api-a", "u1", "8", "a late update")));
        assert_eq!(ledger.pending(), 1, "the deleted object still shows: keep hiding it");
        ledger.observe(&watcher::Event::Delete(cr("api-a", "u1", "9", "gone")));
        assert_eq!(ledger.pending(), 0);

        ledger.wrote(&cr("api-c", "u4", "20", "ours"));
        ledger.observe(&watcher::Event::Delete(cr("api-c", "u4", "21", "deleted by someone")));
        assert_eq!(ledger.pending(), 0, "deleted after our write: the cache's absence is the truth");
    }

    #[test]
    fn a_fresh_list_replaces_our_copies_and_hides_what_it_no_longer_holds() {
        let ledger = LedgerCache::default();
        ledger.wrote(&cr("api-a", "u1", "7", "ours"));
        ledger.wrote(&cr("api-x", "u9", "8", "ours, since deleted by someone"));
        ledger.invalidate("ns", "api");
        let fresh = vec![cr("api-a", "u1", "10", "someone else's")];
        ledger.listed(None, "ns", "api", &fresh);
        let cached = vec![Arc::new(cr("api-a", "u1", "5", "old")), Arc::new(cr("api-y", "u8", "3", "gone"))];
        // Without the store here the cached "api-y" is not known to the list: shown (the next
        // test covers the store).
        let seen = marks(&ledger.overlay(cached, "ns", "api"));
        assert_eq!(seen, [("api-a".into(), "someone else's".into()), ("api-y".into(), "gone".into())]);
        assert!(!ledger.stale.lock().unwrap().contains(&("ns".into(), "api".into())));
    }

    fn store_of(objects: Vec<ControllerRevision>) -> RevisionCache {
        let cache = RevisionCache::by_instance();
        cache.apply_with(&watcher::Event::Init, RevisionRecord::of);
        for o in objects {
            cache.apply_with(&watcher::Event::InitApply(o), RevisionRecord::of);
        }
        cache
    }

    #[test]
    fn the_cache_is_used_once_listed_and_not_while_the_app_is_marked_stale() {
        let ledger = LedgerCache::default();
        let store = store_of(vec![cr("api-a", "u1", "5", "cached"), cr("api-y", "u8", "3", "gone")]);
        assert!(ledger.revisions(&store, "ns", "api").is_none(), "not listed yet: read fresh");
        store.apply_with(&watcher::Event::InitDone, RevisionRecord::of);
        assert_eq!(marks(&ledger.revisions(&store, "ns", "api").unwrap())[0].1, "cached");
        ledger.invalidate("ns", "api");
        assert!(ledger.revisions(&store, "ns", "api").is_none(), "a write found it stale: read fresh");
        assert!(ledger.revisions(&store, "ns", "other").is_some(), "other apps keep their cache");
        ledger.listed(Some(&store), "ns", "api", &[cr("api-a", "u1", "10", "fresh")]);
        let seen = marks(&ledger.revisions(&store, "ns", "api").unwrap());
        assert_eq!(seen, [("api-a".into(), "fresh".into())], "api-y, absent from the list, is hidden");
    }

    #[test]
    fn compacted_revisions_keep_their_spec_as_text() {
        let mut c = cr("api-a", "u1", "1", "m");
        compact(&mut c);
        assert!(c.data.as_ref().unwrap().0.is_string());
        let spec = crate::build::revision::recorded_spec(&c).unwrap();
        assert_eq!(spec.image, "api:1");
        let again = c.clone();
        compact(&mut c);
        assert_eq!(c, again, "compacting twice changes nothing");
        assert_eq!(RevisionRecord::of(&c).expand(), c, "the cache's record reads back as the object");
    }

    #[test]
    fn the_cache_hands_out_only_the_apps_own_revisions_labelled_as_ours() {
        let mut foreign = cr("api-f", "u5", "4", "someone else's");
        foreign.metadata.labels.as_mut().unwrap().remove(labels::MANAGED_BY);
        let mut other = cr("web-a", "u6", "4", "another app's");
        other.metadata.labels.as_mut().unwrap().insert(labels::INSTANCE.into(), "web".into());
        let store = store_of(vec![cr("api-a", "u1", "5", "cached"), foreign, other]);
        store.apply_with(&watcher::Event::InitDone, RevisionRecord::of);
        let seen = marks(&LedgerCache::default().revisions(&store, "ns", "api").unwrap());
        assert_eq!(seen, [("api-a".into(), "cached".into())]);
    }
}
