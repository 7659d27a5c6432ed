//! Where later features meet access control (issue 17): the replication header, the registry
//! policy, `?ns=` and the mirror default. Each case is the answer a hostile caller gets: a
//! header, query parameter or policy never lets a principal do what it could not do without it.

use crate::access::PUSH;
use crate::ecr_api::signed_call;
use crate::harness::*;
use ferry::config::{AuthConfig, PrincipalConfig};
use reqwest::StatusCode;
use std::path::Path;

const ACCOUNT: &str = "123456789012";
const FOREIGN: &str = "210987654321";

/// A principal whose secret is in a file (so it can sign the ECR API too).
fn principal(dir: &Path, name: &str, account: &str, policies: &[serde_json::Value]) -> (PrincipalConfig, Key) {
    let key = format!("AKIASEAMS{:0>11}", name.to_ascii_uppercase());
    let key: String = key.chars().filter(char::is_ascii_alphanumeric).take(20).collect();
    let secret = format!("{name}-secret-{}", &digest(name.as_bytes())[7..27]);
    let file = dir.join(format!("{name}.secret"));
    std::fs::write(&file, &secret).unwrap();
    let config = PrincipalConfig {
        name: name.into(),
        account: if account == ACCOUNT { String::new() } else { account.into() },
        access_key_id: key.clone(),
        secret_access_key_file: file.display().to_string(),
        policies: policies.iter().map(ToString::to_string).collect(),
        ..PrincipalConfig::default()
    };
    (config, Key { id: key, secret })
}

#[derive(Clone)]
struct Key {
    id: String,
    secret: String,
}

fn statement(effect: &str, actions: &[&str], resource: &str) -> serde_json::Value {
    serde_json::json!({"Effect": effect, "Action": actions, "Resource": resource})
}

fn policy(statements: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({"Version": "2012-10-17", "Statement": statements})
}

fn arn(name: &str) -> String {
    format!("arn:aws:ecr:us-east-1:{ACCOUNT}:repository/{name}")
}

/// The registry API as one principal (or nobody), with or without the replication header.
struct As<'a> {
    f: &'a TestFerry,
    key: Option<&'a Key>,
    replication: bool,
}

impl As<'_> {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.f.client.request(method, self.f.url(path));
        if let Some(k) = self.key {
            r = r.basic_auth(&k.id, Some(&k.secret));
        }
        if self.replication {
            r = r.header("Ferry-Replication", FOREIGN);
        }
        r
    }

    /// Pushes a blob in one request; the status.
    async fn push_blob(&self, repo: &str, bytes: &[u8]) -> u16 {
        let d = digest(bytes);
        let r = self.request(reqwest::Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={d}"));
        r.body(bytes.to_vec()).send().await.unwrap().status().as_u16()
    }

    /// Pushes a config blob and a manifest naming it under `tag`; the manifest PUT's status
    /// and the manifest's digest.
    async fn push_image(&self, repo: &str, tag: &str, config: &[u8]) -> (u16, String) {
        let blob = self.push_blob(repo, config).await;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": config.len()},
            "layers": [],
        }))
        .unwrap();
        let r = self.request(reqwest::Method::PUT, &format!("/v2/{repo}/manifests/{tag}"));
        let status = r.header("Content-Type", OCI_MANIFEST).body(manifest.clone()).send().await.unwrap().status();
        // The blob step's own refusal shows up as the manifest's (its config is missing).
        let status = if blob >= 400 { blob } else { status.as_u16() };
        (status, digest(&manifest))
    }

    async fn status(&self, method: reqwest::Method, path: &str) -> u16 {
        self.request(method, path).header("Accept", OCI_MANIFEST).send().await.unwrap().status().as_u16()
    }
}

/// The replication header narrows, never widens: an identity Deny and a repository Deny hold
/// against it; a principal that may not replicate gains nothing by sending it and its push is
/// replicated on like any other; the foreign replicator, under a registry policy granting it
/// `ecr:*`, pushes as a replication (not replicated on) but cannot mount from, read, list or
/// delete a private repository, with or without the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replication_header_only_narrows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (admin_p, admin) = principal(d, "admin", ACCOUNT, &[policy(vec![statement("Allow", &["ecr:*"], "*")])]);
    let (ordinary_p, ordinary) = principal(
        d,
        "ordinary",
        ACCOUNT,
        &[policy(vec![statement("Allow", &["ecr:*"], "*"), statement("Deny", &["ecr:PutImage"], "*")])],
    );
    let (pusher_p, pusher) = principal(d, "pusher", ACCOUNT, &[policy(vec![statement("Allow", &PUSH, "*")])]);
    let (replicator_p, replicator) = principal(d, "replicator", FOREIGN, &[]);
    let auth = AuthConfig {
        enabled: true,
        registry_id: ACCOUNT.into(),
        principals: vec![admin_p, ordinary_p, pusher_p, replicator_p],
        ..AuthConfig::default()
    };
    let f = TestFerry::start_with(move |c| {
        c.auth = auth;
        c.replication.enabled = false;
    })
    .await;
    let api = |op: &'static str, body: serde_json::Value| {
        let (f, admin) = (&f, admin.clone());
        async move {
            let (status, answer) = signed_call(f, &admin.id, &admin.secret, op, &body.to_string()).await;
            assert_eq!(status, 200, "{op}: {answer}");
            answer
        }
    };
    for name in ["team-a/app", "team-a/prod", "private/secret", "public/leak"] {
        api("CreateRepository", serde_json::json!({"repositoryName": name})).await;
    }
    let registry_policy = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": format!("arn:aws:iam::{FOREIGN}:root")}, "Action": "ecr:*", "Resource": "*"}]});
    api("PutRegistryPolicy", serde_json::json!({"policyText": registry_policy.to_string()})).await;
    let deny_all = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Principal": "*", "Action": "ecr:*"}]});
    api(
        "SetRepositoryPolicy",
        serde_json::json!({"repositoryName": "team-a/prod", "policyText": deny_all.to_string(), "force": true}),
    )
    .await;
    let destination = serde_json::json!({"region": "eu-west-1", "registryId": ACCOUNT});
    api(
        "PutReplicationConfiguration",
        serde_json::json!({"replicationConfiguration": {"rules": [{"destinations": [destination]}]}}),
    )
    .await;
    let replicated_to = |repo: &'static str, tag: &'static str| {
        let (f, admin) = (&f, admin.clone());
        async move {
            let body = serde_json::json!({"repositoryName": repo, "imageId": {"imageTag": tag}}).to_string();
            let (status, answer) =
                signed_call(f, &admin.id, &admin.secret, "DescribeImageReplicationStatus", &body).await;
            assert_eq!(status, 200, "{answer}");
            answer["replicationStatuses"].as_array().unwrap().len()
        }
    };

    // A private image, with a layer nobody but admin may read.
    let admin_as = As { f: &f, key: Some(&admin), replication: false };
    let secret_layer = b"the private layer".as_slice();
    assert_eq!(admin_as.push_blob("private/secret", secret_layer).await, 201);
    assert_eq!(admin_as.push_image("private/secret", "v1", b"{\"private\":1}").await.0, 201);

    // An identity Deny of PutImage holds, header or not.
    for replication in [false, true] {
        let who = As { f: &f, key: Some(&ordinary), replication };
        assert_eq!(who.push_image("team-a/app", "ordinary", b"{\"o\":1}").await.0, 403, "header: {replication}");
    }
    // A repository Deny holds against an admin and against the replicator, header or not.
    for key in [&admin, &replicator] {
        for replication in [false, true] {
            let who = As { f: &f, key: Some(key), replication };
            assert_eq!(who.push_image("team-a/prod", "x", b"{\"p\":1}").await.0, 403, "{} {replication}", key.id);
        }
    }
    // The header from a principal that may not replicate is ignored: its push is replicated.
    let pusher_as = As { f: &f, key: Some(&pusher), replication: true };
    assert_eq!(pusher_as.push_image("team-a/app", "by-pusher", b"{\"pusher\":1}").await.0, 201);
    assert_eq!(replicated_to("team-a/app", "by-pusher").await, 1, "a client's push is replicated");

    // The replicator: a push with the header is a replication (not replicated on); without it,
    // nothing of the registry policy applies.
    let replicating = As { f: &f, key: Some(&replicator), replication: true };
    assert_eq!(replicating.push_image("team-a/app", "replicated", b"{\"r\":1}").await.0, 201);
    assert_eq!(replicated_to("team-a/app", "replicated").await, 0, "no chaining");
    let plain = As { f: &f, key: Some(&replicator), replication: false };
    assert_eq!(plain.push_image("team-a/app", "plain", b"{\"r\":2}").await.0, 403);

    // Nor does the registry policy reach anything but the push: a mount from a private
    // repository, reads, listings and deletes are refused, header or not.
    let layer = digest(secret_layer);
    for who in [&replicating, &plain] {
        let mount = who
            .status(reqwest::Method::POST, &format!("/v2/public/leak/blobs/uploads/?mount={layer}&from=private/secret"))
            .await;
        assert_eq!(mount, 403, "a mount from a private repository");
        assert_eq!(who.status(reqwest::Method::GET, &format!("/v2/private/secret/blobs/{layer}")).await, 403);
        assert_eq!(who.status(reqwest::Method::GET, "/v2/private/secret/manifests/v1").await, 403);
        assert_eq!(who.status(reqwest::Method::GET, "/v2/private/secret/tags/list").await, 403);
        assert_eq!(who.status(reqwest::Method::DELETE, "/v2/private/secret/manifests/v1").await, 403);
        let catalog: serde_json::Value =
            who.request(reqwest::Method::GET, "/v2/_catalog").send().await.unwrap().json().await.unwrap();
        assert_eq!(catalog["repositories"], serde_json::json!([]), "the catalog lists nothing");
    }
    // The layer never reached public/leak, so anonymous clients cannot read it there.
    let nobody = As { f: &f, key: None, replication: false };
    assert_eq!(nobody.status(reqwest::Method::GET, &format!("/v2/public/leak/blobs/{layer}")).await, 401);
    assert_eq!(admin_as.status(reqwest::Method::HEAD, &format!("/v2/public/leak/blobs/{layer}")).await, 404);
}

/// One name, one decision: `?ns=` and the mirror default are resolved before the decision,
/// so a read is decided on the repository it is served from. A principal allowed only on
/// `team-a/*` cannot read the cached `hub/team-a/app` by asking for `team-a/app?ns=docker.io`;
/// one allowed on `hub/*` can, and that is where its import right is decided too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ns_and_the_mirror_default_are_decided_on_the_repository_served() {
    let hub = crate::upstream::RealUpstream::start();
    let (manifest, d) =
        push_config_image(&reqwest::Client::new(), &hub.base, "team-a/app", "latest", b"{\"up\":1}").await;
    push_config_image(&reqwest::Client::new(), &hub.base, "library/tool", "v1", b"{\"up\":2}").await;
    let dir = tempfile::tempdir().unwrap();
    let pull = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability", "ecr:ListImages"];
    let mut import = pull.to_vec();
    import.push("ecr:BatchImportUpstreamImage");
    let (team_p, team) =
        principal(dir.path(), "team", ACCOUNT, &[policy(vec![statement("Allow", &import, &arn("team-a/*"))])]);
    let (hub_p, hub_reader) =
        principal(dir.path(), "hubreader", ACCOUNT, &[policy(vec![statement("Allow", &import, &arn("hub/*"))])]);
    let (cached_p, cached_only) =
        principal(dir.path(), "cachedonly", ACCOUNT, &[policy(vec![statement("Allow", &pull, &arn("hub/*"))])]);
    let auth = AuthConfig {
        enabled: true,
        registry_id: ACCOUNT.into(),
        principals: vec![team_p, hub_p, cached_p],
        ..AuthConfig::default()
    };
    let rule = ferry::config::PullThroughRule {
        prefix: "hub".into(),
        upstream: hub.base.clone(),
        namespace: "docker.io".into(),
        mirror_default: true,
        ..Default::default()
    };
    let f = TestFerry::start_with(move |c| {
        c.auth = auth;
        c.pull_through = vec![rule];
        c.registry.local_namespaces = vec!["team-a".into()];
    })
    .await;
    let team_as = As { f: &f, key: Some(&team), replication: false };
    let hub_as = As { f: &f, key: Some(&hub_reader), replication: false };
    let cached_as = As { f: &f, key: Some(&cached_only), replication: false };
    let via_ns = "/v2/team-a/app/manifests/latest?ns=docker.io";
    // Decided on hub/team-a/app: the team principal is refused before anything is fetched.
    assert_eq!(team_as.status(reqwest::Method::GET, via_ns).await, 403);
    let log = std::fs::read_to_string(hub.access_log()).unwrap_or_default();
    let asked = log.lines().any(|l| l.contains("\"GET /v2/team-a/app/") || l.contains("\"HEAD /v2/team-a/app/"));
    assert!(!asked, "a refused read reached the upstream:\n{log}");
    // Allowed on hub/*, without the import right: refused while nothing is cached.
    assert_eq!(cached_as.status(reqwest::Method::GET, via_ns).await, 403);
    // Allowed on hub/* with the import right: fetched and cached under hub/team-a/app.
    let resp = hub_as.request(reqwest::Method::GET, via_ns).header("Accept", OCI_MANIFEST).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &manifest[..]);
    // Cached now: still refused for the team principal, by every read endpoint.
    assert_eq!(team_as.status(reqwest::Method::GET, via_ns).await, 403);
    assert_eq!(team_as.status(reqwest::Method::HEAD, via_ns).await, 403);
    assert_eq!(team_as.status(reqwest::Method::GET, "/v2/team-a/app/tags/list?ns=docker.io").await, 403);
    assert_eq!(team_as.status(reqwest::Method::GET, &format!("/v2/team-a/app/manifests/{d}?ns=docker.io")).await, 403);
    // And served to the hub/* reader without the import right (a hit needs none).
    assert_eq!(cached_as.status(reqwest::Method::GET, via_ns).await, 200);
    // The team principal's own team-a/app is local (a local namespace), and empty.
    assert_eq!(team_as.status(reqwest::Method::GET, "/v2/team-a/app/manifests/latest").await, 404);
    // The mirror default: `tool` is hub/library/tool, decided there.
    assert_eq!(team_as.status(reqwest::Method::GET, "/v2/tool/manifests/v1").await, 403);
    assert_eq!(hub_as.status(reqwest::Method::GET, "/v2/tool/manifests/v1").await, 200);
    assert_eq!(cached_as.status(reqwest::Method::GET, "/v2/library/tool/manifests/v1").await, 200);
}

/// oras (oras-py, the Python ORAS client) pushes an artifact with its key pair through the
/// Bearer flow, and pulls it again without credentials from a repository the anonymous policy
/// opens (an anonymous token); a private one it may not pull without credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oras_pushes_logged_in_and_pulls_anonymously() {
    let dir = tempfile::tempdir().unwrap();
    let (admin_p, admin) =
        principal(dir.path(), "admin", ACCOUNT, &[policy(vec![statement("Allow", &["ecr:*"], "*")])]);
    let anonymous = policy(vec![statement(
        "Allow",
        &["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
        &arn("public/*"),
    )]);
    let auth = AuthConfig {
        enabled: true,
        registry_id: ACCOUNT.into(),
        principals: vec![admin_p],
        anonymous: ferry::config::AnonymousConfig { policies: vec![anonymous.to_string()] },
        ..AuthConfig::default()
    };
    let f = TestFerry::start_with(move |c| c.auth = auth).await;
    let host = f.base.trim_start_matches("http://").to_owned();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("artifact.txt");
    std::fs::write(&file, "an artifact pulled by nobody in particular\n").unwrap();
    let script = format!(
        r#"
import json, os, oras.client
os.chdir({dir:?})
pusher = oras.client.OrasClient(hostname={host:?}, insecure=True)
# The credentials for this client alone (login() would also write a docker config file).
pusher.auth.set_basic_auth({key:?}, {secret:?})
results = {{}}
for repo in ["public/art", "private/art"]:
    pusher.push(target={host:?} + "/" + repo + ":v1", files=["artifact.txt"])
anonymous = oras.client.OrasClient(hostname={host:?}, insecure=True)
pulled = anonymous.pull(target={host:?} + "/public/art:v1", outdir="out")
results["pulled"] = open(pulled[0]).read()
try:
    anonymous.pull(target={host:?} + "/private/art:v1", outdir="private-out")
    results["private"] = "pulled"
except Exception as e:
    results["private"] = "refused"
print(json.dumps(results))
"#,
        dir = work.path().display().to_string(),
        key = admin.id,
        secret = admin.secret,
    );
    let got = crate::ecr_api::python_json(&script);
    assert_eq!(got["pulled"], "an artifact pulled by nobody in particular\n", "{got}");
    assert_eq!(got["private"], "refused", "{got}");
    // The private artifact really is there, for those allowed.
    let as_admin = As { f: &f, key: Some(&admin), replication: false };
    assert_eq!(as_admin.status(reqwest::Method::GET, "/v2/private/art/tags/list").await, 200);
}
