//! What the benchmarks share: starting Ferry (the release binary) and the CNCF reference
//! registry on free loopback ports, stopped by their PIDs when dropped, and reporting a
//! comparison as `<name> ferry=<v> peer=<v> ratio=<r> <unit>`.
#![allow(dead_code)]

#[path = "../../tests/support/process.rs"]
mod process;

pub use process::{free_port, ChildGuard};
use sha2::Digest as _;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A server process, killed when dropped.
pub struct Server {
    pub name: &'static str,
    pub base: String,
    /// Ferry's admin listener (`/metrics`); empty for the peer.
    pub admin: String,
    pub child: ChildGuard,
    pub dir: tempfile::TempDir,
}

/// Waits until the server on `port` listens.
pub fn wait_until_listening(port: u16) {
    process::wait_for_port(port, Duration::from_secs(20));
}

pub fn start_ferry() -> Server {
    start_ferry_with("")
}

/// Ferry with extra TOML (e.g. `[[pull_through]]` rules).
pub fn start_ferry_with(extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, extra).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        // Both registries log warnings only, so neither pays for per-request log lines.
        .env("FERRY_LOG_LEVEL", "warn")
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ferry starts");
    let child = ChildGuard::new(child);
    wait_until_listening(port);
    Server {
        name: "ferry",
        base: format!("http://127.0.0.1:{port}"),
        admin: format!("http://127.0.0.1:{admin}"),
        child,
        dir,
    }
}

pub fn start_peer() -> Server {
    start_peer_with("")
}

/// docker-registry with extra YAML (e.g. `proxy:`); its access log goes to `access.log`.
pub fn start_peer_with(extra: &str) -> Server {
    start_peer_on("filesystem: {rootdirectory: DATA}", extra)
}

/// docker-registry with a `storage:` driver line (`DATA` stands for its data directory).
pub fn start_peer_on(driver: &str, extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.yml");
    let driver = driver.replace("DATA", &dir.path().join("data").display().to_string());
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage:\n  {driver}\n  delete: {{enabled: true}}\n  cache: {{blobdescriptor: inmemory}}\nhttp: {{addr: \"127.0.0.1:{port}\"}}\n{extra}"
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .env_remove("AWS_CA_BUNDLE")
        .stdout(std::fs::File::create(dir.path().join("access.log")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .expect("docker-registry starts (apt-get install docker-registry)");
    let child = ChildGuard::new(child);
    wait_until_listening(port);
    Server { name: "docker-registry", base: format!("http://127.0.0.1:{port}"), admin: String::new(), child, dir }
}

/// A moto S3 server on a free loopback port with `buckets` created (credentials `bench` /
/// `benchsecret`): the process (kill it when done) and its endpoint.
pub async fn start_moto(buckets: &[&str]) -> (std::process::Child, String) {
    let venv = std::env::var("FERRY_TEST_VENV").unwrap_or_else(|_| "/var/tmp/ferry-venv".into());
    let port = free_port();
    let moto = Command::new(format!("{venv}/bin/moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto runs (scripts/test.sh installs it into FERRY_TEST_VENV)");
    wait_until_listening(port);
    let endpoint = format!("http://127.0.0.1:{port}");
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new("bench", "benchsecret", None, None, "bench"))
        .build();
    let sdk = aws_sdk_s3::Client::from_conf(conf);
    for b in buckets {
        sdk.create_bucket().bucket(*b).send().await.unwrap();
    }
    (moto, endpoint)
}

pub fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

pub fn report(name: &str, ferry: f64, peer: f64, higher_is_better: bool, unit: &str) {
    let ratio = if higher_is_better { ferry / peer } else { peer / ferry };
    println!("{name} ferry={ferry:.2} peer={peer:.2} ratio={ratio:.2} {unit}");
}
