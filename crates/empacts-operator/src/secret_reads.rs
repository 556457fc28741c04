//! Reads of the Secrets a reconcile hashes. A Secret the controller watches (labelled
//! `empacts.io/watch=true`: every generated one, and user Secrets so labelled) is read once
//! per change: its last read copy is kept while the watch shows the same uid and
//! resourceVersion, so a settled app's resync reads no Secret. Any other Secret, and a
//! watched one the cache has not seen at that version, is read fresh.
//!
//! A stale watch only delays the hash of a value someone else changed (its event then
//! triggers the reconcile that reads it), exactly like the trigger it is. The operator's own
//! writes (rotation, release) replace the copy, so a lagging watch never serves the value they
//! replaced; and those writes carry the resourceVersion they were read at, so even a stale copy
//! could never overwrite a newer value (409, retried).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::compressed::CompressedJson;

/// uid and resourceVersion of a watched Secret, as the watch last showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub uid: String,
    pub resource_version: String,
}

/// A kept copy: its version, and the Secret as compressed JSON (a fraction of the object's
/// heap bytes; read back only when a reconcile uses it).
struct KeptSecret {
    /// uid, a space, resourceVersion: one block (neither contains a space).
    version: Box<str>,
    json: CompressedJson,
}

impl KeptSecret {
    fn is(&self, version: &Version) -> bool {
        let (uid, rv) = (version.uid.as_str(), version.resource_version.as_str());
        self.version.len() == uid.len() + 1 + rv.len()
            && self.version.starts_with(uid)
            && self.version.ends_with(rv)
            && self.version.as_bytes()[uid.len()] == b' '
    }
}

/// A Secret's key in the cache: namespace, `/`, name, in one block (a `/` is in neither).
fn key(namespace: &str, name: &str) -> Box<str> {
    format!("{namespace}/{name}").into()
}

/// The last read copy of watched Secrets, per namespace and name. No Debug: it holds values.
#[derive(Default)]
pub struct SecretCache {
    entries: Mutex<HashMap<Box<str>, KeptSecret>>,
    /// Secrets that exist without the watch label, under a name the watch was expected to
    /// show (one someone else made under a generated Secret's name): read fresh each time.
    unlabelled: Mutex<std::collections::HashSet<Box<str>>>,
}

impl SecretCache {
    fn get(&self, namespace: &str, name: &str, version: &Version) -> Option<Secret> {
        let entries = self.entries.lock().expect("secret cache lock");
        let copy = entries.get(&key(namespace, name))?;
        // What `put` wrote always reads back; a copy that would not is read fresh instead.
        copy.is(version).then(|| copy.json.unpack().ok()).flatten()
    }

    /// Keep `secret` (a copy as read or as written) for as long as the watch shows its version.
    pub fn put(&self, secret: &Secret) {
        let key = key(&secret.namespace().unwrap_or_default(), &secret.name_any());
        let mut copy = secret.clone();
        // Nothing reads a copy's field ownership (a write starts from a fresh read or drops it).
        copy.metadata.managed_fields = None;
        let uid = copy.metadata.uid.as_deref().unwrap_or_default();
        let version = format!("{uid} {}", copy.metadata.resource_version.as_deref().unwrap_or_default()).into();
        // Empty if it cannot be written (never seen): the entry still says this process holds
        // the name, and a read of it goes to the API server.
        let json = CompressedJson::of_json(&serde_json::to_vec(&copy).unwrap_or_default());
        let copy = KeptSecret { version, json };
        self.entries.lock().expect("secret cache lock").insert(key, copy);
    }

    /// Whether an absence from the watch may hide `name`: this process holds a copy (it wrote
    /// or read it, and the watch may not show that version yet), or found it unlabelled.
    fn may_exist(&self, namespace: &str, name: &str) -> bool {
        let key = key(namespace, name);
        self.entries.lock().expect("secret cache lock").contains_key(&key)
            || self.unlabelled.lock().expect("secret cache lock").contains(&key)
    }

    /// `name` exists though the watch does not show it (our create was refused, or a fresh read
    /// found it unlabelled): read it fresh from now on.
    pub fn found_unlabelled(&self, namespace: &str, name: &str) {
        self.unlabelled.lock().expect("secret cache lock").insert(key(namespace, name));
    }

    /// Drop the copies of `names` (an app that went, or a Secret the watch no longer shows).
    pub fn forget<'a>(&self, namespace: &str, names: impl IntoIterator<Item = &'a str>) {
        let mut entries = self.entries.lock().expect("secret cache lock");
        let mut unlabelled = self.unlabelled.lock().expect("secret cache lock");
        for name in names {
            let key = key(namespace, name);
            entries.remove(&key);
            unlabelled.remove(&key);
        }
    }

    /// Drop the copies of an app's generated Secrets, when the app goes.
    pub fn forget_generated(&self, namespace: &str, app: &str) {
        let prefix = key(namespace, &crate::names::generated_secret_prefix(app));
        let mut entries = self.entries.lock().expect("secret cache lock");
        entries.retain(|key, _| !key.starts_with(&*prefix));
        let mut unlabelled = self.unlabelled.lock().expect("secret cache lock");
        unlabelled.retain(|key| !key.starts_with(&*prefix));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("secret cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The Secret reads of one reconcile in one namespace.
pub struct SecretReads<'a> {
    api: Api<Secret>,
    namespace: String,
    cache: Option<&'a SecretCache>,
    /// Watched Secrets of the namespace the app may read, by name, from the watch's cache.
    watched: BTreeMap<String, Version>,
    /// The watch has listed: `watched` is its whole view of the names the app may read.
    listed: bool,
}

impl<'a> SecretReads<'a> {
    pub fn new(
        client: &Client,
        namespace: &str,
        cache: Option<&'a SecretCache>,
        watched: BTreeMap<String, Version>,
        listed: bool,
    ) -> Self {
        let api = Api::namespaced(client.clone(), namespace);
        SecretReads { api, namespace: namespace.into(), cache, watched, listed }
    }

    /// A Secret that carries the watch label from its creation on (a generated one): absent when
    /// the listed watch does not show it and this process holds no copy of it (one it wrote or
    /// read, which a lagging watch may not show yet); otherwise as [`Self::get_opt`]. A Secret
    /// made meanwhile by someone else makes our create fail, and is read fresh from then on.
    pub async fn get_labelled(&self, name: &str) -> kube::Result<Option<Secret>> {
        let Some(cache) = self.cache.filter(|_| self.listed && !self.watched.contains_key(name)) else {
            return self.get_opt(name).await;
        };
        if !cache.may_exist(&self.namespace, name) {
            return Ok(None);
        }
        let secret = self.api.get_opt(name).await?;
        match &secret {
            // Ours (or labelled like ours): the watch has not shown it yet.
            Some(s) if s.labels().get(empacts_api::labels::WATCH).is_some_and(|v| v == "true") => cache.put(s),
            Some(_) => cache.found_unlabelled(&self.namespace, name),
            None => cache.forget(&self.namespace, [name]),
        }
        Ok(secret)
    }

    /// The Secret, from the cache when the watch shows the version the cache holds, else read
    /// fresh (and kept when watched). An absence is always read fresh.
    pub async fn get_opt(&self, name: &str) -> kube::Result<Option<Secret>> {
        let watched = self.watched.get(name);
        if let (Some(cache), Some(version)) = (self.cache, watched)
            && let Some(secret) = cache.get(&self.namespace, name, version)
        {
            return Ok(Some(secret));
        }
        let secret = self.api.get_opt(name).await?;
        if let Some(cache) = self.cache {
            match (&secret, watched) {
                (Some(s), Some(_)) => cache.put(s),
                // Gone, or no longer watched: no copy is kept.
                _ => cache.forget(&self.namespace, [name]),
            }
        }
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn secret(uid: &str, rv: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("s".into()),
                namespace: Some("ns".into()),
                uid: Some(uid.into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn version(uid: &str, rv: &str) -> Version {
        Version { uid: uid.into(), resource_version: rv.into() }
    }

    #[test]
    fn a_copy_reads_back_as_it_was_put_without_field_ownership() {
        let cache = SecretCache::default();
        let mut put = secret("u1", "5");
        put.metadata.labels = Some([("empacts.io/watch".to_string(), "true".to_string())].into());
        put.metadata.owner_references = Some(vec![Default::default()]);
        put.metadata.managed_fields = Some(vec![Default::default()]);
        put.data = Some([("value".to_string(), k8s_openapi::ByteString(vec![0, 159, 146, 150]))].into());
        cache.put(&put);
        let got = cache.get("ns", "s", &version("u1", "5")).expect("the version put");
        put.metadata.managed_fields = None;
        assert!(got == put, "every field but field ownership comes back as it went in");
    }

    #[test]
    fn a_copy_serves_only_the_version_the_watch_shows() {
        let cache = SecretCache::default();
        cache.put(&secret("u1", "5"));
        assert!(cache.get("ns", "s", &version("u1", "5")).is_some());
        assert!(cache.get("ns", "s", &version("u1", "6")).is_none(), "changed since: read again");
        assert!(cache.get("ns", "s", &version("u2", "5")).is_none(), "deleted and re-created: read again");
        assert!(cache.get("other", "s", &version("u1", "5")).is_none());
        assert!(cache.get("ns", "s", &version("u", "1 5")).is_none(), "uid and version apart, not their text");
        assert!(cache.get("ns", "s", &version("u1", "55")).is_none());
        cache.forget("ns", ["s"]);
        assert!(cache.is_empty());
        let mut generated = secret("u1", "5");
        generated.metadata.name = Some(crate::names::generated_secret("api", "JWT_SECRET"));
        cache.put(&generated);
        cache.forget_generated("ns", "api-v2");
        assert_eq!(cache.len(), 1, "another app's prefix");
        cache.forget_generated("n", "api");
        assert_eq!(cache.len(), 1, "another namespace's");
        cache.forget_generated("ns", "api");
        assert!(cache.is_empty(), "the app's generated copies go with it");
    }

    #[test]
    fn an_absence_is_trusted_only_for_names_this_process_neither_holds_nor_found_unlabelled() {
        let cache = SecretCache::default();
        let name = crate::names::generated_secret("api", "JWT");
        assert!(!cache.may_exist("ns", &name), "never written nor read: the listed watch is the whole truth");
        let mut created = secret("u1", "5");
        created.metadata.name = Some(name.clone());
        cache.put(&created);
        assert!(cache.may_exist("ns", &name), "our create, which the watch may not show yet");
        cache.forget("ns", [name.as_str()]);
        assert!(!cache.may_exist("ns", &name));
        cache.found_unlabelled("ns", &name);
        assert!(cache.may_exist("ns", &name), "made by hand: read fresh from now on");
        assert!(!cache.may_exist("other", &name));
        cache.forget_generated("ns", "api");
        assert!(!cache.may_exist("ns", &name), "the app went, and what was known of its Secrets");
    }
}
