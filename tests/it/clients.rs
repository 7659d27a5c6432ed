//! Real registry clients against Ferry: skopeo pushes and copies back single and multi-arch
//! images with OCI and Docker media types; podman pulls them.

use crate::harness::*;
use crate::images::build_layout;
use std::path::Path;
use std::process::Command;

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?} could not start: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// skopeo with the test's own auth file (see [`policy`]).
pub fn skopeo(policy: &str) -> Command {
    let mut c = Command::new("skopeo");
    c.env("REGISTRY_AUTH_FILE", Path::new(policy).with_file_name("auth.json"));
    c.args(["--policy", policy]);
    c
}

/// A private signature policy and an empty auth file, so nothing on the machine changes what is tested.
pub fn policy(dir: &Path) -> String {
    let p = dir.join("policy.json");
    std::fs::write(&p, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
    let auth = dir.join("auth.json");
    std::fs::write(&auth, r#"{"auths":{}}"#).unwrap();
    p.display().to_string()
}

/// Checks every blob in an OCI layout hashes to its name.
fn assert_layout_intact(dir: &Path) {
    for entry in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(digest(&bytes), format!("sha256:{}", entry.file_name().to_str().unwrap()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_push_and_copy_back_single_and_multi_arch() {
    let f = TestFerry::start().await;
    let addr = f.server.as_ref().unwrap().addr;
    let work = tempfile::tempdir().unwrap();
    let policy = policy(work.path());
    let cases: [(&str, &[&str], bool); 4] = [
        ("oci-single", &["amd64"], false),
        ("oci-multi", &["amd64", "arm64"], false),
        ("docker-single", &["amd64"], true),
        ("docker-multi", &["amd64", "arm64"], true),
    ];
    for (i, (name, platforms, docker)) in cases.into_iter().enumerate() {
        let src = work.path().join(format!("src-{name}"));
        let built = build_layout(&src, "v1", platforms, 200_000, docker, i as u64);
        let dest = format!("docker://{addr}/team-a/{name}:v1");
        run(skopeo(&policy).args(["copy", "--all", "--dest-tls-verify=false", &built.source, &dest]));

        let raw = run(skopeo(&policy).args(["inspect", "--raw", "--tls-verify=false", &dest]));
        assert_eq!(digest(raw.as_bytes()), built.top, "{name}: the manifest is served byte-identical");

        // Copy back out, into the same kind of layout, so no conversion happens.
        let out = work.path().join(format!("out-{name}"));
        let out_ref = if docker { format!("dir:{}", out.display()) } else { format!("oci:{}:v1", out.display()) };
        run(skopeo(&policy).args(["copy", "--all", "--src-tls-verify=false", &dest, &out_ref]));
        if docker {
            assert_eq!(digest(&std::fs::read(out.join("manifest.json")).unwrap()), built.top, "{name}");
            for p in &built.platforms[..] {
                let hex = p.trim_start_matches("sha256:");
                let file =
                    if platforms.len() == 1 { "manifest.json".to_owned() } else { format!("{hex}.manifest.json") };
                assert_eq!(&digest(&std::fs::read(out.join(file)).unwrap()), p, "{name}");
            }
            for entry in std::fs::read_dir(&out).unwrap() {
                let entry = entry.unwrap();
                let file = entry.file_name().to_str().unwrap().to_owned();
                if file.len() == 64 {
                    assert_eq!(digest(&std::fs::read(entry.path()).unwrap()), format!("sha256:{file}"));
                }
            }
        } else {
            let index: serde_json::Value =
                serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
            assert_eq!(index["manifests"][0]["digest"], built.top.as_str(), "{name}");
            for p in &built.platforms {
                assert!(out.join("blobs/sha256").join(p.trim_start_matches("sha256:")).exists(), "{name}: {p} copied");
            }
            assert_layout_intact(&out);
        }
        if platforms.len() > 1 {
            let arm = run(skopeo(&policy)
                .args(["--override-arch", "arm64", "inspect", "--tls-verify=false", "--format", "{{.Architecture}}"])
                .arg(&dest));
            assert_eq!(arm.trim(), "arm64", "{name}: the index resolves to the arm64 image");
        }
    }
    let catalog: serde_json::Value = f.client.get(f.url("/v2/_catalog")).send().await.unwrap().json().await.unwrap();
    assert_eq!(catalog["repositories"].as_array().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_pulls_pushed_images() {
    let f = TestFerry::start().await;
    let addr = f.server.as_ref().unwrap().addr;
    let work = tempfile::tempdir().unwrap();
    let policy = policy(work.path());
    for (i, (name, platforms, docker)) in
        [("single", &["amd64"][..], false), ("multi", &["amd64", "arm64"][..], true)].into_iter().enumerate()
    {
        let src = work.path().join(format!("src-{name}"));
        let built = build_layout(&src, "v1", platforms, 100_000, docker, 10 + i as u64);
        let dest = format!("docker://{addr}/podman/{name}:v1");
        run(skopeo(&policy).args(["copy", "--all", "--dest-tls-verify=false", &built.source, &dest]));

        let root = work.path().join(format!("podman-{name}"));
        let podman = |args: &[&str]| {
            let mut c = Command::new("podman");
            c.arg("--root").arg(root.join("root")).arg("--runroot").arg(root.join("run"));
            c.args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]);
            c.env("REGISTRY_AUTH_FILE", work.path().join("auth.json"));
            c.args(args);
            run(&mut c)
        };
        let image = format!("{addr}/podman/{name}:v1");
        podman(&["pull", "--tls-verify=false", "--arch", "amd64", &image]);
        let got = podman(&["image", "inspect", "--format", "{{.Digest}}", &image]);
        assert_eq!(got.trim(), built.top, "{name}: podman pulled the pushed image");
    }
}
