//! Heap bytes the operator keeps per cached object, by kind: as the k8s-openapi object a
//! kube reflector store would hold (trimmed as the caches trim it) and as the compact record
//! `child_cache` keeps. Objects are one settled benchmark app's (`benches/fixtures/`, read
//! from the testbed: generated secret, migration, HPA, PDB). Counted by a counting global
//! allocator over 1,000 copies; store keys and hash tables are not included. Figures, not
//! assertions.
//!
//! `cargo bench -p empacts-operator --bench cache_sizes`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use empacts_operator::child_cache::{CachedChild, DeploymentRecord, JobRecord};
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::DynamicObject;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes per value `make` returns, held (with its inline size) as the stores hold them.
fn bytes<T>(make: impl Fn() -> T) -> isize {
    const N: isize = 1000;
    let before = LIVE.load(Ordering::Relaxed);
    let held: Vec<std::sync::Arc<T>> = (0..N).map(|_| std::sync::Arc::new(make())).collect();
    let after = LIVE.load(Ordering::Relaxed);
    drop(held);
    (after - before) / N
}

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/benches/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture parses")
}

fn row(kind: &str, object: isize, record: Option<isize>) {
    match record {
        Some(r) => println!("| {kind} | {object} | {r} | {:.1}× |", object as f64 / r as f64),
        None => println!("| {kind} | {object} | (kept as the object) | |"),
    }
}

fn main() {
    println!("| kind | k8s-openapi object, trimmed (bytes) | compact record (bytes) | ratio |");
    println!("| --- | --- | --- | --- |");

    let mut app: empacts_api::EmpactsApp = fixture("app");
    empacts_operator::children::trim_app_for_cache(&mut app.metadata);
    let stored = empacts_operator::stored_app::StoredApp::of(&app);
    row("EmpactsApp (the work queue)", bytes(|| app.clone()), Some(bytes(|| stored.clone())));

    let mut revision: ControllerRevision = fixture("controllerrevision");
    empacts_operator::ledger_cache::compact(&mut revision);
    let record = empacts_operator::ledger_cache::RevisionRecord::of(&revision);
    row("ControllerRevision (ledger cache)", bytes(|| revision.clone()), Some(bytes(|| record.clone())));

    let mut secret: Secret = fixture("secret");
    secret.metadata.managed_fields = None;
    // The secret cache keeps it as compressed JSON (`secret_reads`), read back when used.
    let json = empacts_operator::compressed::CompressedJson::pack(&secret);
    row("generated Secret (copy of its value)", bytes(|| secret.clone()), Some(bytes(|| json.clone())));

    for name in ["service", "hpa", "secret"] {
        let object: DynamicObject = fixture(name);
        let kind = object.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
        let meta = empacts_operator::children::spec_hashed_meta(&kind, &object);
        let record = CachedChild::of(&meta);
        row(&format!("{kind} metadata (metadata caches)"), bytes(|| meta.clone()), Some(bytes(|| record.clone())));
    }

    let mut deployment: Deployment = fixture("deployment");
    let record = DeploymentRecord::of(&deployment);
    empacts_operator::children::trim_for_cache(&mut deployment.metadata);
    if let Some(spec) = deployment.spec.as_mut() {
        spec.template.spec = None;
    }
    row("Deployment (pod template spec dropped)", bytes(|| deployment.clone()), Some(bytes(|| record.clone())));

    let mut job: Job = fixture("job");
    let record = JobRecord::of(&job);
    empacts_operator::children::trim_for_cache(&mut job.metadata);
    if let Some(spec) = job.spec.as_mut() {
        spec.template.spec = None;
    }
    row("Job (pod template spec dropped)", bytes(|| job.clone()), Some(bytes(|| record.clone())));
}
