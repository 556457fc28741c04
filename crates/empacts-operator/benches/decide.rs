//! Micro-benchmark of the pure per-reconcile work: validate, build every child, compute the
//! revision, decide, compute status. Prints ns per app; run with `cargo bench -p empacts-operator`.

use std::hint::black_box;
use std::time::Instant;

use empacts_api::{EmpactsApp, EmpactsAppStatus};
use empacts_operator::plan::{DeploymentState, Entry, Ledger, MigrationMark, MigrationState, PlanInput, plan};
use empacts_operator::status::{StatusInput, compute};
use empacts_operator::{build, secret_value::SecretValue, validate};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn main() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/empacts-api.yaml")).unwrap();
    let mut app: EmpactsApp = serde_yaml::from_str(&text).unwrap();
    app.metadata.namespace = Some("bench".into());
    app.metadata.uid = Some("uid".into());

    let iterations = 2_000u32;
    let measure = |name: &str, f: &dyn Fn()| {
        for _ in 0..50 {
            f();
        }
        let start = Instant::now();
        for _ in 0..iterations {
            f();
        }
        let per = start.elapsed() / iterations;
        println!("{name:<40} {:>10.1} µs/app", per.as_secs_f64() * 1e6);
    };

    measure("validate (schema + CEL)", &|| {
        black_box(validate::validate(black_box(&app)).unwrap());
    });
    let valid = validate::validate(&app).unwrap();
    measure("build all children", &|| {
        black_box(build::build_all(black_box(&valid), Some("h"), Some(3), |_| Some(SecretValue::placeholder())));
    });
    measure("revision identity", &|| {
        black_box(empacts_operator::revision::identity(black_box(&valid.spec)));
    });
    // A settled app with a 10-revision ledger.
    let ledger = Ledger {
        entries: (1..=10)
            .map(|n| Entry {
                revision: if n == 10 { "d".into() } else { format!("r{n}") },
                number: n,
                desired_generation: n,
                good: Some(n),
                migration: MigrationMark::new(1, MigrationState::Succeeded),
                spec_readable: true,
                ..Default::default()
            })
            .collect(),
    };
    let input = PlanInput {
        app: "api".into(),
        generation: 10,
        desired: "d".into(),
        has_migration: true,
        auto_rollback: true,
        history_limit: 10,
        ledger,
        deployment: Some(DeploymentState {
            revision: Some("d".into()),
            generation: 1,
            observed_generation: 1,
            desired_replicas: 3,
            replicas: 3,
            updated_replicas: 3,
            ready_replicas: 3,
            available_replicas: 3,
            progress_deadline_exceeded: false,
            progressed_at: None,
        }),
        ..Default::default()
    };
    measure("plan (decision)", &|| {
        black_box(plan(black_box(&input)));
    });
    let decided = plan(&input);
    let previous = EmpactsAppStatus::default();
    measure("status (compute)", &|| {
        black_box(compute(
            &decided,
            &StatusInput {
                previous: &previous,
                input: &input,
                error: None,
                now: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            },
        ));
    });
}
