//! Kubernetes Events on the EmpactsApp. Best effort: a failed Event never fails a reconcile.
//!
//! An Event about one Secret or revision names that object as `related` (its subject). The
//! recorder keys Events by subject, reason and message: another message is another Event, the
//! same one again counts on the earlier Event (`series`).

use empacts_api::EmpactsApp;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::warn;

use crate::context::Context;
use crate::names;
use crate::recorder::Record;

/// What an Event is about, besides the app it is on.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// The app as a whole.
    App,
    Secret(&'a str),
    /// A revision (hash), as its ControllerRevision; also the subject of its migration Job's
    /// Events (the Job's name is the revision's).
    Revision(&'a str),
}

impl Subject<'_> {
    fn reference(&self, app: &EmpactsApp) -> Option<ObjectReference> {
        let (api_version, kind, name) = match self {
            Subject::App => return None,
            Subject::Secret(name) => ("v1", "Secret", name.to_string()),
            Subject::Revision(revision) => {
                ("apps/v1", "ControllerRevision", names::controller_revision(&app.name_any(), revision))
            }
        };
        Some(ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
            name: Some(name),
            namespace: app.namespace(),
            ..Default::default()
        })
    }
}

/// Events are limited to 1 kB of note; keep the start, which says what happened.
const MAX_NOTE: usize = 1000;

pub async fn publish(
    ctx: &Context,
    app: &EmpactsApp,
    subject: Subject<'_>,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let related = subject.reference(app);
    publish_related(ctx, &app.object_ref(&()), related, type_, reason, action, note).await
}

/// An Event on any object (e.g. an EmpactsApp this build cannot read as one).
pub async fn publish_on(
    ctx: &Context,
    object: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    publish_related(ctx, object, None, type_, reason, action, note).await
}

async fn publish_related(
    ctx: &Context,
    object: &ObjectReference,
    related: Option<ObjectReference>,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let mut note = note.to_string();
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    let record = Record { regarding: object, related, type_, reason, action, note };
    if let Err(e) = ctx.recorder.publish(record).await {
        warn!(error = %e, reason, "could not publish Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_subject_is_its_own_related_object_in_the_apps_namespace() {
        let app: EmpactsApp = serde_yaml::from_str(
            "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {name: api, namespace: ns}\nspec: {image: 'api:1'}\n",
        )
        .unwrap();
        assert_eq!(Subject::App.reference(&app), None);
        let a = Subject::Secret("api.gen.a").reference(&app).unwrap();
        let b = Subject::Secret("api.gen.b").reference(&app).unwrap();
        assert_ne!(a, b, "two Secrets, two Event keys");
        assert_eq!((a.kind.as_deref(), a.namespace.as_deref()), (Some("Secret"), Some("ns")));
        let r = Subject::Revision("abc123").reference(&app).unwrap();
        assert_eq!((r.kind.as_deref(), r.name.as_deref()), (Some("ControllerRevision"), Some("api-abc123")));
    }
}
