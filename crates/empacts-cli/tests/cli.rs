//! The CLI without a cluster: CRD drift, rendering of every example, `run` flag validation,
//! the kubectl plugin's usage, completion and exit codes.

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
fn render_passes_other_objects_of_a_mixed_file_through_in_file_order() {
    let dir = std::env::temp_dir().join(format!("empacts-cli-mixed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mixed.yaml");
    let secret = std::fs::read_to_string(format!("{ROOT}/examples/empacts-db-secret.yaml")).unwrap();
    let app = std::fs::read_to_string(format!("{ROOT}/examples/empacts-api.yaml")).unwrap();
    std::fs::write(&file, format!("{secret}---\n---\n{app}")).unwrap();
    let out = empacts(&["render", "-f", file.to_str().unwrap(), "-n", "production"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout).unwrap();
    let kinds = kinds(&yaml);
    assert_eq!(kinds.first().map(String::as_str), Some("Secret"), "{kinds:?}");
    assert_eq!(kinds.len(), 11, "the Secret, then the app's 10 children: {kinds:?}");
    assert!(yaml.starts_with("---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: empacts-db\n"), "{yaml}");

    // A broken app in such a file is named by its document number.
    let broken = app.replace("image:", "imag:");
    std::fs::write(&file, format!("{secret}---\n{broken}")).unwrap();
    let out = empacts(&["render", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("document 2 is an EmpactsApp that does not match the schema"), "{err}");
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
        // `run --namespace` (scripts use it) stays run's own flag, not the user verbs' -n.
        (&["--namespace", "a", "--lease-duration", "6", "--lease-grace", "6"][..], "--lease-grace"),
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

fn plugin(args: &[&str], kubeconfig: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-empacts"))
        .args(args)
        .current_dir(ROOT)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("kubectl-empacts runs")
}

/// A kubeconfig whose server is a loopback port nothing listens on.
fn closed_port_kubeconfig(dir: &std::path::Path) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{port}'}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u, namespace: shop}}}}]\n\
             current-context: x\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("empacts-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn plugin_usage_says_kubectl_empacts() {
    let out = plugin(&["--help"], "/nonexistent");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Usage: kubectl empacts [OPTIONS] <COMMAND>"), "{help}");
    assert!(help.contains("kubectl empacts status api --watch"), "{help}");
    for flag in ["--kubeconfig", "--context", "--namespace", "--all-namespaces"] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
    assert!(!help.contains("\n  run "), "the plugin does not run the operator: {help}");
    let sub = String::from_utf8(plugin(&["status", "--help"], "/nonexistent").stdout).unwrap();
    assert!(sub.contains("Usage: kubectl empacts status [OPTIONS] <NAME>"), "{sub}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["status"][..],
        &["get", "-o", "xml"],
        &["run"],
        &["status", "api", "--timeout", "soon"],
        &["status", "api", "-w", "-o", "json"],
    ] {
        let out = plugin(args, "/nonexistent");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn completion_for_each_shell() {
    for (shell, marker) in [
        ("bash", "-o default kubectl-empacts"),
        ("zsh", "#compdef kubectl-empacts"),
        ("fish", "complete -c kubectl-empacts"),
    ] {
        let out = plugin(&["completion", shell], "/nonexistent");
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("rotate-secret") && script.contains("all-namespaces"), "{shell}");
    }
}

#[test]
fn rotate_secret_without_a_terminal_needs_yes() {
    let dir = temp_dir("rotate");
    let kubeconfig = closed_port_kubeconfig(&dir);
    let out = plugin(&["rotate-secret", "api"], &kubeconfig);
    let err = String::from_utf8_lossy(&out.stderr);
    // 2, not 3: refused before any connection.
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("pass --yes"), "{err}");
    // With --yes it goes ahead, and so meets the closed port.
    assert_eq!(plugin(&["rotate-secret", "api", "--yes"], &kubeconfig).status.code(), Some(3));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn an_unreachable_cluster_exits_3_with_one_line() {
    let dir = temp_dir("unreachable");
    let kubeconfig = closed_port_kubeconfig(&dir);
    let app = dir.join("app.yaml");
    std::fs::write(
        &app,
        "apiVersion: empacts.io/v1alpha1\nkind: EmpactsApp\nmetadata: {name: api}\nspec: {image: 'api:1'}\n",
    )
    .unwrap();
    for args in [
        &["get"][..],
        &["status", "api"],
        &["status", "api", "--watch"],
        &["history", "api", "-o", "json"],
        &["diff", "-f", app.to_str().unwrap()],
        &["rollback", "api", "--to", "1"],
    ] {
        let out = plugin(args, &kubeconfig);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.starts_with("error: cannot reach the cluster: ") && err.contains("Connection refused"), "{err}");
    }
    // --kubeconfig wins over KUBECONFIG, and --context picks the context.
    let out = plugin(&["--kubeconfig", &kubeconfig, "--context", "x", "get"], "/nonexistent");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let out = plugin(&["--kubeconfig", &kubeconfig, "--context", "nope", "get"], "/nonexistent");
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    std::fs::remove_dir_all(dir).ok();
}
