//! The operator image built without a container engine (deploy/image/build: a static binary on
//! scratch, assembled with crane): its OCI config runs the binary as the non-root user, carries the
//! OCI labels, and the binary in its layer runs. Built with the cheaper `image` cargo profile.

use std::path::{Path, PathBuf};
use std::process::Command;

use empacts_e2e::helm::text;
use empacts_e2e::repo_root;
use serde_json::Value;

/// A blob of the OCI layout by digest (`sha256:<hex>`).
fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').expect("a digest");
    layout.join("blobs").join(algorithm).join(hex)
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn image_builds_without_a_container_engine_and_runs_its_static_binary_as_nonroot() {
    // Run as from a shell: without what cargo sets for test processes (CARGO_PKG_*, LD_LIBRARY_PATH,
    // ...), which some build scripts track; with them every run would rebuild the binary.
    let mut build = Command::new(repo_root().join("deploy/image/build"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME") || key == "LD_LIBRARY_PATH" || key == "OUT_DIR" {
            build.env_remove(key.as_ref());
        }
    }
    let out = build.env("EMPACTS_IMAGE_PROFILE", "image").output().expect("deploy/image/build runs");
    assert!(out.status.success(), "deploy/image/build failed:\n{}", text(&out));
    let layout = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(layout.starts_with(repo_root().join("target")), "{} is under target/", layout.display());
    assert!(layout.with_file_name("image.tar").is_file(), "the image tarball is next to the layout");

    // OCI layout: index -> manifest -> config and one layer.
    assert_eq!(json(&layout.join("oci-layout"))["imageLayoutVersion"], "1.0.0");
    let index = json(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    let manifest = json(&blob(&layout, manifests[0]["digest"].as_str().unwrap()));
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    let config = json(&blob(&layout, manifest["config"]["digest"].as_str().unwrap()));
    assert_eq!((config["os"].as_str(), config["architecture"].as_str()), (Some("linux"), Some("amd64")));
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532", "runs as nonroot (the chart's runAsUser)");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/empacts"]));
    assert_eq!(c["Cmd"], serde_json::json!(["run"]));
    let env: Vec<&str> = c["Env"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(env.contains(&"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"), "{env:?}");
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "empacts-operator");
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert!(labels["org.opencontainers.image.source"].as_str().is_some_and(|s| s.starts_with("https://")));
    let version = labels["org.opencontainers.image.version"].as_str().expect("a version label").to_string();
    assert_eq!(version, env!("CARGO_PKG_VERSION"), "the workspace version");
    assert!(labels["org.opencontainers.image.revision"].as_str().is_some_and(|r| !r.is_empty()));

    // The one layer: root-owned binary, CA bundle, nonroot user; the binary runs.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let layer = blob(&layout, layers[0]["digest"].as_str().unwrap());
    let listing = Command::new("tar").arg("-tvzf").arg(&layer).output().expect("tar runs");
    assert!(listing.status.success(), "{}", text(&listing));
    let listing = String::from_utf8(listing.stdout).unwrap();
    let binary =
        listing.lines().find(|l| l.ends_with(" ./empacts")).unwrap_or_else(|| panic!("no /empacts:\n{listing}"));
    assert!(binary.starts_with("-rwxr-xr-x 0/0"), "{binary}");
    assert!(listing.lines().any(|l| l.ends_with(" ./etc/ssl/certs/ca-certificates.crt")), "{listing}");
    let dir = std::env::temp_dir().join(format!("empacts-image-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("tar").arg("-xzf").arg(&layer).arg("-C").arg(&dir).output().expect("tar runs");
    assert!(out.status.success(), "{}", text(&out));
    let passwd = std::fs::read_to_string(dir.join("etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l.starts_with("nonroot:x:65532:65532:")), "{passwd}");
    let group = std::fs::read_to_string(dir.join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l.starts_with("nonroot:x:65532:")), "{group}");
    let ran = Command::new(dir.join("empacts")).arg("--version").env_clear().output().expect("the binary runs");
    assert!(ran.status.success(), "{}", text(&ran));
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), format!("empacts {version}"));
    // Static: no dynamic loader is asked for (scratch has none).
    let ldd = Command::new("ldd").arg(dir.join("empacts")).output().expect("ldd runs");
    assert!(!String::from_utf8_lossy(&ldd.stdout).contains("=>"), "dynamically linked: {}", text(&ldd));
    std::fs::remove_dir_all(&dir).ok();
}
