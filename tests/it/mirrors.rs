//! The real mirror clients: a Docker daemon with `registry-mirrors` in its daemon.json, and
//! containerd's `ctr` with a hosts.toml mirror (which adds `?ns=docker.io`). Both run in a
//! private network namespace with Ferry and the upstream, so their fallback to Docker Hub
//! fails locally ("network is unreachable") instead of leaving the machine.

use crate::clients::{policy, run};
use crate::images::build_layout;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A network namespace with loopback up, and the processes started in it.
struct NetNs {
    name: String,
    children: Vec<Child>,
}

impl NetNs {
    fn new() -> Self {
        let name = format!("ferry-t{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        assert!(
            Command::new("ip").args(["netns", "add", &name]).status().unwrap().success(),
            "ip netns add (needs root)"
        );
        assert!(Command::new("ip")
            .args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success());
        Self { name, children: Vec::new() }
    }

    /// A command that runs inside the namespace.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.name)).arg(program);
        c
    }

    fn spawn(&mut self, mut cmd: Command, log: &Path) {
        let log = std::fs::File::create(log).unwrap();
        let child = cmd.stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
        self.children.push(child);
    }

    /// Waits until `cmd` (run in the namespace) succeeds.
    fn wait_for(&self, what: &str, mut cmd: impl FnMut() -> Command, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if cmd().stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not come up:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Stop in reverse order, each by its PID: SIGTERM lets dockerd stop its own containerd.
        for c in self.children.iter_mut().rev() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn docker_cli() -> PathBuf {
    // Debian's client matches Debian's daemon; any other docker on PATH may be far newer.
    let debian = PathBuf::from("/usr/bin/docker");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("docker")
    }
}

#[test]
fn docker_daemon_and_containerd_pull_through_ferry_as_a_mirror() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let policy = policy(w);
    let mut ns = NetNs::new();

    // The upstream, filled with skopeo inside the namespace.
    std::fs::write(
        w.join("upstream.yml"),
        format!("version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp: {{addr: \"127.0.0.1:5001\"}}\n", w.join("upstream").display()),
    )
    .unwrap();
    let mut c = ns.command("docker-registry");
    c.arg("serve").arg(w.join("upstream.yml")).env_remove("AWS_CA_BUNDLE");
    ns.spawn(c, &w.join("upstream.log"));
    ns.wait_for(
        "docker-registry",
        || {
            let mut c = ns.command("curl");
            c.args(["-sf", "http://127.0.0.1:5001/v2/"]);
            c
        },
        &w.join("upstream.log"),
    );
    let single = build_layout(&w.join("single"), "v1", &["amd64"], 40_000, true, 51);
    let multi = build_layout(&w.join("multi"), "v1", &["amd64", "arm64"], 40_000, false, 52);
    for (src, dest) in [
        (&single.source, "docker://127.0.0.1:5001/library/alpine:v1"),
        (&multi.source, "docker://127.0.0.1:5001/library/multi:v1"),
    ] {
        let mut c = ns.command("skopeo");
        c.env("REGISTRY_AUTH_FILE", w.join("auth.json")).args([
            "--policy",
            &policy,
            "copy",
            "--all",
            "--dest-tls-verify=false",
            src,
            dest,
        ]);
        run(&mut c);
    }

    // Ferry: the mirror default for dockerd's unprefixed names, and the docker.io namespace for containerd.
    std::fs::write(
        w.join("ferry.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:5000\"\nadmin_listen = \"127.0.0.1:5090\"\n[storage]\ndata_dir = \"{}\"\n[registry]\nlocal_namespaces = [\"team-a\"]\n\n\
             [[pull_through]]\nprefix = \"hub\"\nupstream = \"http://127.0.0.1:5001\"\nmirror_default = true\nlibrary_prefix = true\n\n\
             [[pull_through]]\nprefix = \"dockerio\"\nupstream = \"http://127.0.0.1:5001\"\nnamespace = \"docker.io\"\n",
            w.join("ferry-data").display()
        ),
    )
    .unwrap();
    let mut c = ns.command(env!("CARGO_BIN_EXE_ferry"));
    c.args(["serve", "--config"]).arg(w.join("ferry.toml"));
    ns.spawn(c, &w.join("ferry.log"));
    ns.wait_for(
        "ferry",
        || {
            let mut c = ns.command("curl");
            c.args(["-sf", "http://127.0.0.1:5000/v2/"]);
            c
        },
        &w.join("ferry.log"),
    );

    // dockerd with registry-mirrors.
    let d = w.join("d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("daemon.json"), r#"{"registry-mirrors": ["http://127.0.0.1:5000"]}"#).unwrap();
    let sock = format!("unix://{}", d.join("sock").display());
    let mut c = ns.command("dockerd");
    c.arg("--config-file")
        .arg(d.join("daemon.json"))
        .args([
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--bridge=none",
            "--storage-driver",
            "vfs",
        ])
        .arg("--data-root")
        .arg(d.join("root"))
        .arg("--exec-root")
        .arg(d.join("exec"))
        .arg("--pidfile")
        .arg(d.join("pid"))
        .args(["-H", &sock]);
    ns.spawn(c, &w.join("dockerd.log"));
    let docker = |args: &[&str]| {
        let mut c = Command::new(docker_cli());
        c.args(["-H", &sock]).args(args);
        c
    };
    ns.wait_for("dockerd", || docker(&["version"]), &w.join("dockerd.log"));
    run(&mut docker(&["pull", "alpine:v1"]));
    let digests = run(&mut docker(&["image", "inspect", "--format", "{{join .RepoDigests \",\"}}", "alpine:v1"]));
    assert!(digests.contains(&single.top), "dockerd pulled the upstream's manifest through Ferry: {digests}");
    run(&mut docker(&["pull", "multi:v1"]));
    let digests = run(&mut docker(&["image", "inspect", "--format", "{{join .RepoDigests \",\"}}", "multi:v1"]));
    assert!(digests.contains(&multi.top), "the multi-arch index kept its digest: {digests}");

    // Nobody can poison the mirror: a push to an unprefixed (mirrored) name is refused, and
    // the daemon still gets the upstream's image. A push under a local namespace goes through
    // and never reaches the upstream.
    run(&mut docker(&["tag", "alpine:v1", "127.0.0.1:5000/library/alpine:v1"]));
    let out = docker(&["push", "127.0.0.1:5000/library/alpine:v1"]).output().unwrap();
    assert!(!out.status.success(), "a push to a mirrored name must be refused");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("denied") || said.contains("local_namespaces"), "{said}");
    run(&mut docker(&["rmi", "alpine:v1", "127.0.0.1:5000/library/alpine:v1"]));
    run(&mut docker(&["pull", "alpine:v1"]));
    let digests = run(&mut docker(&["image", "inspect", "--format", "{{join .RepoDigests \",\"}}", "alpine:v1"]));
    assert!(digests.contains(&single.top), "still the upstream's image: {digests}");
    run(&mut docker(&["tag", "alpine:v1", "127.0.0.1:5000/team-a/alpine:v1"]));
    run(&mut docker(&["push", "127.0.0.1:5000/team-a/alpine:v1"]));
    let upstream_log = std::fs::read_to_string(w.join("upstream.log")).unwrap_or_default();
    assert!(!upstream_log.contains("team-a"), "a local namespace never reaches the upstream");

    // containerd with a hosts.toml mirror and a dead fallback.
    let cd = w.join("c");
    std::fs::create_dir_all(cd.join("hosts/docker.io")).unwrap();
    std::fs::write(
        cd.join("config.toml"),
        format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{0}/c.sock\"\n",
            cd.display()
        ),
    )
    .unwrap();
    std::fs::write(
        cd.join("hosts/docker.io/hosts.toml"),
        "server = \"http://127.0.0.1:1\"\n[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
    )
    .unwrap();
    let mut c = ns.command("containerd");
    c.arg("--config").arg(cd.join("config.toml"));
    ns.spawn(c, &w.join("containerd.log"));
    let csock = cd.join("c.sock").display().to_string();
    let ctr = |args: &[&str]| {
        let mut c = ns.command("ctr");
        c.args(["--address", &csock]).args(args);
        c
    };
    ns.wait_for("containerd", || ctr(&["version"]), &w.join("containerd.log"));
    let hosts = cd.join("hosts").display().to_string();
    run(&mut ctr(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        "native",
        "--hosts-dir",
        &hosts,
        "docker.io/library/multi:v1",
    ]));
    let listed = run(&mut ctr(&["images", "ls"]));
    assert!(listed.lines().any(|l| l.contains("docker.io/library/multi:v1") && l.contains(&multi.top)), "{listed}");

    // dockerd came by the mirror default, containerd by ?ns=docker.io: each rule cached its own copy.
    let mut catalog: Vec<String> = std::fs::read_dir(w.join("ferry-data/catalog"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    catalog.sort();
    assert_eq!(catalog, ["dockerio+library+multi", "hub+library+alpine", "hub+library+multi", "team-a+alpine"]);
}
