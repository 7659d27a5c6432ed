//! The real daemons: a Docker daemon with `registry-mirrors` in its daemon.json, containerd's
//! `ctr` with a hosts.toml mirror (which adds `?ns=docker.io`), and both logging in with an
//! ECR-style password from `aws ecr get-login-password`. They run in a private network
//! namespace with Ferry and the upstream, so their fallback to Docker Hub fails locally
//! ("network is unreachable") instead of leaving the machine.

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
        // One per test: tests of one process run side by side.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("ferry-t{}-{n}", std::process::id());
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

    /// Debian's docker-registry on 127.0.0.1:5001 in the namespace, its data and log in `w`.
    fn spawn_upstream(&mut self, w: &Path) {
        std::fs::write(
            w.join("upstream.yml"),
            format!("version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp: {{addr: \"127.0.0.1:5001\"}}\n", w.join("upstream").display()),
        )
        .unwrap();
        let mut c = self.command("docker-registry");
        c.arg("serve").arg(w.join("upstream.yml")).env_remove("AWS_CA_BUNDLE");
        self.spawn(c, &w.join("upstream.log"));
        self.wait_for(
            "docker-registry",
            || {
                let mut c = self.command("curl");
                c.args(["-sf", "http://127.0.0.1:5001/v2/"]);
                c
            },
            &w.join("upstream.log"),
        );
    }

    /// skopeo in the namespace, with the test's signature policy and auth file, and `args`.
    fn skopeo(&self, w: &Path, policy: &str, args: &[&str]) -> Command {
        let mut c = self.command("skopeo");
        c.env("REGISTRY_AUTH_FILE", w.join("auth.json")).args(["--policy", policy]).args(args);
        c
    }

    /// Ferry from `w/ferry.toml`, serving on 127.0.0.1:5000 in the namespace.
    fn spawn_ferry(&mut self, w: &Path) {
        let mut c = self.command(env!("CARGO_BIN_EXE_ferry"));
        c.args(["serve", "--config"]).arg(w.join("ferry.toml"));
        self.spawn(c, &w.join("ferry.log"));
        self.wait_for(
            "ferry",
            || {
                let mut c = self.command("curl");
                // Up means answering: 200, or 401 when access control is on.
                c.args(["-s", "-o", "/dev/null", "http://127.0.0.1:5000/v2/"]);
                c
            },
            &w.join("ferry.log"),
        );
    }

    /// dockerd with `daemon_json`, in `w/d`; returns a `docker` command builder for it.
    fn spawn_dockerd(&mut self, w: &Path, daemon_json: &str) -> impl Fn(&[&str]) -> Command {
        let d = w.join("d");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("daemon.json"), daemon_json).unwrap();
        let sock = format!("unix://{}", d.join("sock").display());
        let mut c = self.command("dockerd");
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
        self.spawn(c, &w.join("dockerd.log"));
        // The client's own config (credentials from `docker login`) stays in the test's directory.
        let client_config = d.join("client");
        let docker = move |args: &[&str]| {
            let mut c = Command::new(docker_cli());
            c.env("DOCKER_CONFIG", &client_config).args(["-H", &sock]).args(args);
            c
        };
        self.wait_for("dockerd", || docker(&["version"]), &w.join("dockerd.log"));
        docker
    }

    /// containerd in `w/c` (hosts.toml files go under `w/c/hosts`); returns a `ctr` builder.
    fn spawn_containerd(&mut self, w: &Path) -> impl Fn(&[&str]) -> Command {
        let cd = w.join("c");
        std::fs::create_dir_all(&cd).unwrap();
        std::fs::write(
            cd.join("config.toml"),
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{0}/c.sock\"\n",
                cd.display()
            ),
        )
        .unwrap();
        let mut c = self.command("containerd");
        c.arg("--config").arg(cd.join("config.toml"));
        self.spawn(c, &w.join("containerd.log"));
        let csock = cd.join("c.sock").display().to_string();
        let netns = self.name.clone();
        let ctr = move |args: &[&str]| {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{netns}")).arg("ctr").args(["--address", &csock]).args(args);
            c
        };
        self.wait_for("containerd", || ctr(&["version"]), &w.join("containerd.log"));
        ctr
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
    ns.spawn_upstream(w);
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
    ns.spawn_ferry(w);

    // dockerd with registry-mirrors.
    let docker = ns.spawn_dockerd(w, r#"{"registry-mirrors": ["http://127.0.0.1:5000"]}"#);
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
        cd.join("hosts/docker.io/hosts.toml"),
        "server = \"http://127.0.0.1:1\"\n[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
    )
    .unwrap();
    let ctr = ns.spawn_containerd(w);
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

/// `aws ecr get-login-password | docker login --username AWS --password-stdin`, then `docker
/// push` and `docker pull` of a fresh image; containerd's `ctr --user AWS:<password>` pulls
/// and pushes it too. Without the login both are refused.
#[test]
fn docker_and_containerd_log_in_with_an_ecr_password() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let mut ns = NetNs::new();
    let secret = "docker-login-secret-4c0ffee";
    std::fs::write(w.join("ci.secret"), format!("{secret}\n")).unwrap();
    let everything = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","Resource":"*"}]}"#;
    std::fs::write(
        w.join("ferry.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:5000\"\nadmin_listen = \"127.0.0.1:5090\"\n[storage]\ndata_dir = \"{}\"\n\
             [auth]\nenabled = true\nregistry_id = \"123456789012\"\n\n\
             [[auth.principals]]\nname = \"ci\"\naccess_key_id = \"AKIAFERRYDOCKER00001\"\nsecret_access_key_file = \"{}\"\npolicies = ['{everything}']\n",
            w.join("ferry-data").display(),
            w.join("ci.secret").display(),
        ),
    )
    .unwrap();
    ns.spawn_ferry(w);

    // The registry password, as ECR's users get it.
    let netns = ns.name.clone();
    let aws = move |args: &[&str]| {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{netns}")).arg(format!("{}/bin/aws", crate::ecr_api::venv()));
        c.args(args)
            .args(["--endpoint-url", "http://127.0.0.1:5000", "--region", "us-east-1"])
            .env_remove("AWS_CA_BUNDLE")
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_ACCESS_KEY_ID", "AKIAFERRYDOCKER00001")
            .env("AWS_SECRET_ACCESS_KEY", secret);
        c
    };
    let password = run(&mut aws(&["ecr", "get-login-password"])).trim().to_owned();
    assert!(!password.is_empty());

    // A fresh image in dockerd: one file, imported.
    let docker = ns.spawn_dockerd(w, "{}");
    let rootfs = w.join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/hello"), "pushed with an ECR password\n").unwrap();
    let tarball = w.join("rootfs.tar");
    run(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tarball).arg("."));
    let image = "127.0.0.1:5000/team-a/app:v1";
    run(&mut docker(&["import", &tarball.display().to_string(), image]));

    // Not logged in: refused.
    let out = docker(&["push", image]).output().unwrap();
    assert!(!out.status.success(), "a push without credentials must fail");

    let mut login = docker(&["login", "--username", "AWS", "--password-stdin", "127.0.0.1:5000"]);
    login.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = login.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), password.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "docker login: {}", String::from_utf8_lossy(&out.stderr));
    let wrong =
        docker(&["login", "--username", "AWS", "--password", "not-a-token", "127.0.0.1:5000"]).output().unwrap();
    assert!(!wrong.status.success(), "a wrong password must not log in");

    run(&mut docker(&["push", image]));
    let pushed = run(&mut docker(&["image", "inspect", "--format", "{{join .RepoDigests \",\"}}", image]));
    run(&mut docker(&["rmi", image]));
    run(&mut docker(&["pull", image]));
    let pulled = run(&mut docker(&["image", "inspect", "--format", "{{join .RepoDigests \",\"}}", image]));
    assert_eq!(pushed.trim(), pulled.trim());
    let digest = pulled.trim().rsplit('@').next().unwrap().to_owned();
    assert!(digest.starts_with("sha256:"), "{pulled}");

    // An immutable repository (made with the aws CLI; `latest` excluded): docker pushes v1
    // once; another image to v1 gets ECR's TAG_INVALID text, while latest moves.
    run(&mut aws(&[
        "ecr",
        "create-repository",
        "--repository-name",
        "team-a/frozen",
        "--image-tag-mutability",
        "IMMUTABLE_WITH_EXCLUSION",
        "--image-tag-mutability-exclusion-filters",
        "filterType=WILDCARD,filter=latest",
    ]));
    let frozen = "127.0.0.1:5000/team-a/frozen";
    run(&mut docker(&["tag", image, &format!("{frozen}:v1")]));
    run(&mut docker(&["tag", image, &format!("{frozen}:latest")]));
    run(&mut docker(&["push", &format!("{frozen}:v1")]));
    run(&mut docker(&["push", &format!("{frozen}:latest")]));
    std::fs::write(rootfs.join("etc/hello"), "another image\n").unwrap();
    run(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tarball).arg("."));
    run(&mut docker(&["import", &tarball.display().to_string(), &format!("{frozen}:v1")]));
    run(&mut docker(&["tag", &format!("{frozen}:v1"), &format!("{frozen}:latest")]));
    let out = docker(&["push", &format!("{frozen}:v1")]).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "an immutable tag must not move: {said}");
    assert!(
        said.contains("The image tag 'v1' already exists in the 'team-a/frozen' repository and cannot be overwritten because the repository is immutable."),
        "{said}"
    );
    run(&mut docker(&["push", &format!("{frozen}:latest")]));

    // containerd: refused without credentials, then pulls and pushes with --user.
    let ctr = ns.spawn_containerd(w);
    let pull = |user: Option<&str>| {
        let mut args = vec!["images", "pull", "--plain-http", "--snapshotter", "native"];
        if let Some(u) = user {
            args.extend(["--user", u]);
        }
        args.push(image);
        ctr(&args)
    };
    assert!(!pull(None).output().unwrap().status.success(), "ctr pull without credentials must fail");
    let user = format!("AWS:{password}");
    run(&mut pull(Some(&user)));
    let listed = run(&mut ctr(&["images", "ls"]));
    assert!(listed.lines().any(|l| l.contains(image) && l.contains(&digest)), "{listed}");
    let copy = "127.0.0.1:5000/team-a/from-ctr:v1";
    run(&mut ctr(&["images", "tag", image, copy]));
    run(&mut ctr(&["images", "push", "--plain-http", "--user", &user, copy]));
    run(&mut docker(&["pull", copy]));
    let copied = run(&mut docker(&["image", "inspect", "--format", "{{join .RepoDigests \",\"}}", copy]));
    assert!(copied.contains(&digest), "containerd pushed the same image: {copied}");
}

/// Issue 17's first use: a Docker daemon with `registry-mirrors` pulls through a Ferry with
/// access control on, without logging in (dockerd never sends credentials to a mirror; it
/// follows the Bearer flow to an anonymous token), filling the cache from the upstream once;
/// containerd's `?ns=docker.io` pull is then a cache hit. docker, podman, `skopeo --src-no-creds`
/// and `ctr` pull an anonymously readable repository with no credentials, and are refused a
/// private one. A logged-in docker still pushes (through the same Bearer flow, with its key
/// pair).
#[test]
fn anonymous_clients_and_a_docker_mirror_work_with_access_control_on() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let policy = policy(w);
    let mut ns = NetNs::new();

    // The upstream, with one image.
    ns.spawn_upstream(w);
    let alpine = build_layout(&w.join("alpine"), "v1", &["amd64"], 40_000, true, 71);
    let to_upstream = ["copy", "--dest-tls-verify=false", &alpine.source, "docker://127.0.0.1:5001/library/alpine:v1"];
    run(&mut ns.skopeo(w, &policy, &to_upstream));

    // Ferry with access control: admin may do anything; anonymous callers may pull the mirror
    // (and make Ferry fetch it) and public/*, nothing else.
    let secret = "anonymous-test-admin-secret";
    std::fs::write(w.join("admin.secret"), secret).unwrap();
    let admin = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","Resource":"*"}]}"#;
    let anonymous = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["ecr:BatchGetImage","ecr:GetDownloadUrlForLayer","ecr:BatchCheckLayerAvailability","ecr:BatchImportUpstreamImage"],"Resource":["arn:aws:ecr:us-east-1:123456789012:repository/hub/*","arn:aws:ecr:us-east-1:123456789012:repository/public/*"]}]}"#;
    std::fs::write(
        w.join("ferry.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:5000\"\nadmin_listen = \"127.0.0.1:5090\"\n[storage]\ndata_dir = \"{}\"\n\
             [registry]\nlocal_namespaces = [\"public\", \"private\"]\ncreate_on_push = true\n\n\
             [[pull_through]]\nprefix = \"hub\"\nupstream = \"http://127.0.0.1:5001\"\nmirror_default = true\nnamespace = \"docker.io\"\n\n\
             [auth]\nenabled = true\nregistry_id = \"123456789012\"\n\n\
             [[auth.principals]]\nname = \"admin\"\naccess_key_id = \"AKIAFERRYADMIN000001\"\nsecret_access_key_file = \"{}\"\npolicies = ['{admin}']\n\n\
             [auth.anonymous]\npolicies = ['{anonymous}']\n",
            w.join("ferry-data").display(),
            w.join("admin.secret").display(),
        ),
    )
    .unwrap();
    ns.spawn_ferry(w);

    // An image in a public and in a private repository, pushed by admin.
    let public_image = build_layout(&w.join("public"), "v1", &["amd64"], 30_000, true, 72);
    let creds = format!("AKIAFERRYADMIN000001:{secret}");
    for repo in ["public/tool", "private/app"] {
        let dest = format!("docker://127.0.0.1:5000/{repo}:v1");
        let args = ["copy", "--dest-tls-verify=false", "--dest-creds", &creds, &public_image.source, &dest];
        run(&mut ns.skopeo(w, &policy, &args));
    }

    // dockerd, mirror configured, never logged in.
    let docker = ns.spawn_dockerd(w, r#"{"registry-mirrors": ["http://127.0.0.1:5000"]}"#);
    run(&mut docker(&["pull", "alpine:v1"]));
    let digests = run(&mut docker(&["image", "inspect", "--format", "{{join .RepoDigests \",\"}}", "alpine:v1"]));
    assert!(digests.contains(&alpine.top), "dockerd pulled through the mirror: {digests}");
    assert!(ferry_catalog(w).contains(&"hub+library+alpine".to_owned()), "cached under the rule's prefix");
    // Again, after removing it: from the cache.
    run(&mut docker(&["rmi", "alpine:v1"]));
    run(&mut docker(&["pull", "alpine:v1"]));
    let upstream_blob_gets = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("\"GET /v2/library/alpine/blobs/sha256:"))
            .map(|l| l.split("/blobs/").nth(1).unwrap_or("").split(' ').next().unwrap_or("").to_owned())
            .collect()
    };
    let gets = upstream_blob_gets(&std::fs::read_to_string(w.join("upstream.log")).unwrap_or_default());
    let mut unique = gets.clone();
    unique.sort();
    unique.dedup();
    assert!(!gets.is_empty(), "the upstream served the blobs");
    assert_eq!(gets.len(), unique.len(), "each blob came from the upstream once: {gets:?}");

    // docker pulls the public repository anonymously, and is refused the private one.
    run(&mut docker(&["pull", "127.0.0.1:5000/public/tool:v1"]));
    let out = docker(&["pull", "127.0.0.1:5000/private/app:v1"]).output().unwrap();
    assert!(!out.status.success(), "an anonymous docker pull of a private repository must fail");

    // podman and skopeo, with no credentials.
    let podman = |args: &[&str]| {
        let mut c = ns.command("podman");
        c.arg("--root").arg(w.join("podman/root")).arg("--runroot").arg(w.join("podman/run"));
        c.args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]);
        c.env("REGISTRY_AUTH_FILE", w.join("auth.json")).args(args);
        c
    };
    run(&mut podman(&["pull", "--tls-verify=false", "127.0.0.1:5000/public/tool:v1"]));
    let got = run(&mut podman(&["image", "inspect", "--format", "{{.Digest}}", "127.0.0.1:5000/public/tool:v1"]));
    assert_eq!(got.trim(), public_image.top);
    let out = podman(&["pull", "--tls-verify=false", "127.0.0.1:5000/private/app:v1"]).output().unwrap();
    assert!(!out.status.success(), "an anonymous podman pull of a private repository must fail");
    let skopeo_copy = |repo: &str, dest: &str| {
        let (src, dest) = (format!("docker://127.0.0.1:5000/{repo}:v1"), format!("oci:{}:v1", w.join(dest).display()));
        ns.skopeo(w, &policy, &["copy", "--src-no-creds", "--src-tls-verify=false", &src, &dest])
    };
    run(&mut skopeo_copy("public/tool", "copy-public"));
    assert!(!skopeo_copy("private/app", "copy-private").output().unwrap().status.success());

    // ctr: the public repository directly, the mirror through ?ns=docker.io (a cache hit), and
    // not the private repository.
    let cd = w.join("c");
    std::fs::create_dir_all(cd.join("hosts/docker.io")).unwrap();
    std::fs::write(
        cd.join("hosts/docker.io/hosts.toml"),
        "server = \"http://127.0.0.1:1\"\n[host.\"http://127.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
    )
    .unwrap();
    let ctr = ns.spawn_containerd(w);
    let hosts = cd.join("hosts").display().to_string();
    let ctr_pull =
        |image: &str| ctr(&["images", "pull", "--plain-http", "--snapshotter", "native", "--hosts-dir", &hosts, image]);
    run(&mut ctr_pull("127.0.0.1:5000/public/tool:v1"));
    run(&mut ctr_pull("docker.io/library/alpine:v1"));
    assert!(!ctr_pull("127.0.0.1:5000/private/app:v1").output().unwrap().status.success());
    let listed = run(&mut ctr(&["images", "ls"]));
    assert!(listed.lines().any(|l| l.contains("docker.io/library/alpine:v1") && l.contains(&alpine.top)), "{listed}");
    let gets_after = upstream_blob_gets(&std::fs::read_to_string(w.join("upstream.log")).unwrap_or_default());
    assert_eq!(gets_after.len(), gets.len(), "containerd's pull was served from the cache");

    // A logged-in docker still pushes, through the Bearer flow with its key pair.
    let mut login = docker(&["login", "--username", "AKIAFERRYADMIN000001", "--password-stdin", "127.0.0.1:5000"]);
    login.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = login.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), secret.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "docker login: {}", String::from_utf8_lossy(&out.stderr));
    run(&mut docker(&["tag", "127.0.0.1:5000/public/tool:v1", "127.0.0.1:5000/public/pushed:v2"]));
    run(&mut docker(&["push", "127.0.0.1:5000/public/pushed:v2"]));
    run(&mut docker(&["logout", "127.0.0.1:5000"]));
    let out = docker(&["push", "127.0.0.1:5000/public/pushed:v2"]).output().unwrap();
    assert!(!out.status.success(), "an anonymous push must fail");
}

/// The repositories Ferry's filesystem catalog lists, as stored.
fn ferry_catalog(w: &Path) -> Vec<String> {
    std::fs::read_dir(w.join("ferry-data/catalog"))
        .map(|d| d.map(|e| e.unwrap().file_name().into_string().unwrap()).collect())
        .unwrap_or_default()
}
