//! Kubernetes Events on the EmpactsApp. Best effort: a failed Event never fails a reconcile.

use empacts_api::EmpactsApp;
use kube::Resource;
use kube::runtime::events::{Event, EventType};
use tracing::warn;

use crate::context::Context;

/// Events are limited to 1 kB of note; keep the start, which says what happened.
const MAX_NOTE: usize = 1000;

pub async fn publish(ctx: &Context, app: &EmpactsApp, type_: EventType, reason: &str, action: &str, note: &str) {
    publish_on(ctx, &app.object_ref(&()), type_, reason, action, note).await
}

/// An Event on any object (e.g. an EmpactsApp this build cannot read as one).
pub async fn publish_on(
    ctx: &Context,
    object: &k8s_openapi::api::core::v1::ObjectReference,
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
    let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, object).await {
        warn!(error = %e, reason, "could not publish Event");
    }
}
