//! The CLI without a cluster: CRD drift, rendering of every example, `run` flag validation.

use std::process::Command;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn empacts(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_empacts")).args(args).current_dir(ROOT).output().expect("empacts runs")
}

#[test]
fn committed_crd_matches_the_rust_types() {
    let out = empacts(&["crd"]);
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(format!("{ROOT}/deploy/crds/empactsapps.empacts.io.yaml"))
        .expect("deploy/crds/empactsapps.empacts.io.yaml is committed");
    assert!(
        generated == committed,
        "deploy/crds/empactsapps.empacts.io.yaml is stale: run `cargo run -p empacts-cli -- crd > deploy/crds/empactsapps.empacts.io.yaml`"
    );
}

fn kinds(yaml: &str) -> Vec<String> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
            v["kind"].as_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn render_api_example_shows_every_child() {
    let out = empacts(&["render", "-f", "examples/empacts-api.yaml", "-n", "production"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        kinds(&yaml),
        [
            "ServiceAccount",
            "ConfigMap",
            "Secret",
            "Job",
            "Deployment",
            "Service",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Ingress",
            "NetworkPolicy"
        ]
    );
    assert!(yaml.contains("namespace: production"));
    assert!(yaml.contains("<generated-by-operator>"), "generated secret shows a placeholder");
    assert!(yaml.contains("name: empacts-api-migrate-"));
    assert!(yaml.contains("cert-manager.io/cluster-issuer: letsencrypt"), "the Ingress asks cert-manager");
    assert!(yaml.contains("secretName: empacts-api-tls"));
    assert!(yaml.contains("kubernetes.io/metadata.name: ingress-nginx"), "the policy admits the controller");
}

#[test]
fn render_minimal_example() {
    let out = empacts(&["render", "-f", "examples/minimal.yaml"]);
    assert!(out.status.success());
    assert_eq!(kinds(&String::from_utf8(out.stdout).unwrap()), ["ServiceAccount", "Deployment", "Service"]);
}

#[test]
fn render_refuses_invalid_input_with_the_field() {
    let dir = std::env::temp_dir().join(format!("empacts-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {name: bad}\nspec: {image: 'api:1', autoscaling: {minReplicas: 4, maxReplicas: 2, targetCPU: 50}}\n",
    )
    .unwrap();
    let out = empacts(&["render", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.autoscaling.minReplicas"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn chart_crd_matches_deploy_crd() {
    let deploy = std::fs::read(format!("{ROOT}/deploy/crds/empactsapps.empacts.io.yaml"))
        .expect("deploy/crds/empactsapps.empacts.io.yaml is committed");
    let chart = std::fs::read(format!("{ROOT}/charts/empacts-operator/files/crds/empactsapps.empacts.io.yaml"))
        .expect("charts/empacts-operator/files/crds/empactsapps.empacts.io.yaml is committed");
    assert!(
        chart == deploy,
        "charts/empacts-operator/files/crds/empactsapps.empacts.io.yaml differs from deploy/crds/empactsapps.empacts.io.yaml: \
         run `cp deploy/crds/empactsapps.empacts.io.yaml charts/empacts-operator/files/crds/empactsapps.empacts.io.yaml`"
    );
}

#[test]
fn run_refuses_inconsistent_lease_timing_before_connecting() {
    // KUBECONFIG points nowhere: the error must come from the timing check, not the connection.
    for (args, flag) in [
        (&["--lease-duration", "6", "--lease-grace", "6"][..], "--lease-grace"),
        (&["--lease-duration", "6", "--lease-grace", "2", "--lease-renew-period", "4"][..], "--lease-renew-period"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_empacts"))
            .arg("run")
            .args(args)
            .args(["--log-format", "text", "--metrics-addr", "127.0.0.1:0"])
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .output()
            .expect("empacts runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} is refused");
        assert!(stderr.contains(flag) && !stderr.contains("connecting"), "{args:?}: {stderr}");
    }
}
