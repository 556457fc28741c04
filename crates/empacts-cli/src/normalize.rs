//! Pure normalisation for `diff`: live and desired children in one comparable shape, so that
//! applying an unchanged app shows no difference.

use serde_json::Value;

/// What a Secret's values show as: real values never reach the terminal.
pub const REDACTED: &str = "<redacted>";

/// Metadata the API server keeps for itself.
const SERVER_METADATA: [&str; 7] = [
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionGracePeriodSeconds",
];

/// Annotations written by controllers or kubectl, never by the operator's builders.
const SERVER_ANNOTATIONS: [&str; 2] =
    ["deployment.kubernetes.io/revision", "kubectl.kubernetes.io/last-applied-configuration"];

/// Drop status, server-kept metadata, nulls and empty maps/lists; redact Secret values.
pub fn clean(mut obj: Value) -> Value {
    if let Some(map) = obj.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            SERVER_METADATA.iter().for_each(|k| drop(meta.remove(*k)));
            if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                SERVER_ANNOTATIONS.iter().for_each(|k| drop(annotations.remove(*k)));
            }
        }
        if map.get("kind").and_then(Value::as_str) == Some("Secret") {
            redact_secret(map);
        }
    }
    drop_empty(&mut obj);
    obj
}

/// A Secret's `data` and `stringData` as one `data` map of its keys, every value redacted.
fn redact_secret(map: &mut serde_json::Map<String, Value>) {
    let mut keys: Vec<String> = Vec::new();
    for field in ["data", "stringData"] {
        if let Some(Value::Object(values)) = map.remove(field) {
            keys.extend(values.keys().cloned());
        }
    }
    keys.sort();
    keys.dedup();
    if !keys.is_empty() {
        let data = keys.into_iter().map(|k| (k, Value::String(REDACTED.into()))).collect();
        map.insert("data".into(), Value::Object(data));
    }
}

/// Remove nulls and empty maps/lists, bottom-up (the API server omits them as it stores).
fn drop_empty(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.values_mut().for_each(drop_empty);
            map.retain(|_, v| !is_empty(v));
        }
        Value::Array(items) => items.iter_mut().for_each(drop_empty),
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// The live object cut down to the fields the desired object sets: what the server defaults
/// and the builders never set is left out. List items pair by `name` when they have one, else
/// by position; live items without a desired partner stay whole (they would be removed).
pub fn prune_to(live: &Value, desired: &Value) -> Value {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => {
            let mut out = serde_json::Map::new();
            for (key, want) in d {
                if let Some(have) = l.get(key) {
                    out.insert(key.clone(), prune_to(have, want));
                }
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(d)) => Value::Array(
            l.iter()
                .enumerate()
                .map(|(i, item)| match partner(item, i, d) {
                    Some(want) => prune_to(item, want),
                    None => item.clone(),
                })
                .collect(),
        ),
        _ => live.clone(),
    }
}

fn partner<'a>(item: &Value, index: usize, desired: &'a [Value]) -> Option<&'a Value> {
    match item.get("name").and_then(Value::as_str) {
        Some(name) => desired.iter().find(|d| d.get("name").and_then(Value::as_str) == Some(name)),
        None => desired.get(index),
    }
}

/// A unified diff of one child, live (None: absent) against desired; None when they agree.
pub fn unified(title: &str, live: Option<&Value>, desired: &Value) -> Option<String> {
    let desired = clean(desired.clone());
    let live = live.map(|l| prune_to(&clean(l.clone()), &desired));
    let before = live.as_ref().map(yaml).unwrap_or_default();
    let after = yaml(&desired);
    if before == after {
        return None;
    }
    let live_name = if live.is_some() { format!("live/{title}") } else { "/dev/null".into() };
    let diff = similar::TextDiff::from_lines(&before, &after);
    Some(diff.unified_diff().context_radius(3).header(&live_name, &format!("desired/{title}")).to_string())
}

/// The diff of a live child the operator would delete.
pub fn removal(title: &str, live: &Value) -> String {
    let before = yaml(&clean(live.clone()));
    let diff = similar::TextDiff::from_lines(before.as_str(), "");
    diff.unified_diff().context_radius(3).header(&format!("live/{title}"), "/dev/null").to_string()
}

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).expect("JSON values convert to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api", "labels": {"app": "api"}},
               "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "app", "image": image, "env": []}]}}}})
    }

    fn live(image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "api", "labels": {"app": "api"}, "uid": "u", "resourceVersion": "7", "generation": 3,
                            "annotations": {"deployment.kubernetes.io/revision": "4"}, "managedFields": [{}]},
               "spec": {"replicas": 2, "revisionHistoryLimit": 10,
                        "template": {"spec": {"restartPolicy": "Always",
                            "containers": [{"name": "app", "image": image, "imagePullPolicy": "IfNotPresent"}]}}},
               "status": {"readyReplicas": 2}})
    }

    #[test]
    fn server_defaults_and_metadata_make_no_difference() {
        assert_eq!(unified("Deployment/api", Some(&live("api:1")), &deployment("api:1")), None);
    }

    #[test]
    fn an_image_change_is_the_only_difference() {
        let diff = unified("Deployment/api", Some(&live("api:1")), &deployment("api:2")).unwrap();
        let changed: Vec<&str> = diff
            .lines()
            .filter(|l| (l.starts_with('-') || l.starts_with('+')) && !l.starts_with("---") && !l.starts_with("+++"))
            .collect();
        assert_eq!(changed.len(), 2, "{diff}");
        assert!(changed[0].starts_with('-') && changed[0].ends_with("image: api:1"), "{diff}");
        assert!(changed[1].starts_with('+') && changed[1].ends_with("image: api:2"), "{diff}");
        assert!(diff.starts_with("--- live/Deployment/api\n+++ desired/Deployment/api\n"), "{diff}");
    }

    #[test]
    fn a_live_item_the_spec_dropped_shows_as_removed() {
        let mut want = deployment("api:1");
        want["spec"]["template"]["spec"]["containers"][0]["env"] = json!([{"name": "A", "value": "1"}]);
        let mut have = live("api:1");
        have["spec"]["template"]["spec"]["containers"][0]["env"] =
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]);
        let diff = unified("Deployment/api", Some(&have), &want).unwrap();
        assert!(diff.contains("\n-        - name: B\n-          value: '2'\n"), "{diff}");
    }

    #[test]
    fn secret_values_never_show() {
        let want = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"a": "b"}},
                          "stringData": {"value": "<generated-by-operator>"}});
        let have = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"value": "c2VjcmV0LXZhbHVl"}});
        let diff = unified("Secret/s", Some(&have), &want).unwrap();
        assert!(!diff.contains("c2VjcmV0LXZhbHVl") && !diff.contains("generated-by-operator"), "{diff}");
        assert!(diff.contains("+    a: b") && diff.contains(REDACTED), "{diff}");
        let gone = removal("Secret/s", &have);
        assert!(gone.starts_with("--- live/Secret/s\n+++ /dev/null\n"), "{gone}");
        assert!(
            gone.contains("-  name: s\n") && gone.contains(REDACTED) && !gone.contains("c2VjcmV0LXZhbHVl"),
            "{gone}"
        );
        let new = unified("Secret/s", None, &want).unwrap();
        assert!(new.starts_with("--- /dev/null") && !new.contains("generated-by-operator"), "{new}");
    }
}
