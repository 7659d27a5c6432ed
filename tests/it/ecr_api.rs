//! The ECR-compatible API with its real clients: the aws CLI's `ecr get-login-password` into
//! `podman login` and a push and pull with the password, boto3's `ecr` client for the
//! operations and their errors, and requests signed by the `aws-sigv4` crate for what the
//! clients cannot send (a stale date, a changed body).

use crate::clients::{policy, run, skopeo};
use crate::harness::*;
use crate::images::build_layout;
use ferry::config::{AuthConfig, PrincipalConfig};
use std::path::Path;
use std::process::Command;

const ACCOUNT: &str = "123456789012";

pub fn venv() -> String {
    std::env::var("FERRY_TEST_VENV").unwrap_or_else(|_| "/var/tmp/ferry-venv".into())
}

/// A principal whose secret sits in a file (SigV4 needs the secret itself).
fn principal(dir: &Path, name: &str, key: &str, policy: serde_json::Value) -> (PrincipalConfig, String) {
    let secret = format!("{name}-secret-{}", uuid_like(name));
    let file = dir.join(format!("{name}.secret"));
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let config = PrincipalConfig {
        name: name.into(),
        access_key_id: key.into(),
        secret_access_key_file: file.display().to_string(),
        policies: vec![policy.to_string()],
        ..PrincipalConfig::default()
    };
    (config, secret)
}

fn uuid_like(seed: &str) -> String {
    digest(seed.as_bytes())[7..31].to_owned()
}

struct Api {
    f: TestFerry,
    _dir: tempfile::TempDir,
    ci_secret: String,
    nobody_secret: String,
}

const CI_KEY: &str = "AKIAFERRYCI000000001";
const NOBODY_KEY: &str = "AKIAFERRYNOBODY00001";
const PUSHER_KEY: &str = "AKIAFERRYPUSHER00001";

async fn start() -> Api {
    start_with(|_| {}).await
}

/// `ci` may do everything, `nobody` nothing, `pusher` push and pull anywhere but not create
/// repositories (its secret is `pusher-secret-<uuid_like("pusher")>`).
async fn start_with(change: impl FnOnce(&mut ferry::config::Config) + Send + 'static) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let everything =
        serde_json::json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","Resource":"*"}]});
    let nothing = serde_json::json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:DescribeImages","Resource":"*"}]});
    let (ci, ci_secret) = principal(dir.path(), "ci", CI_KEY, everything);
    let (nobody, nobody_secret) = principal(dir.path(), "nobody", NOBODY_KEY, nothing);
    let push = serde_json::json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":[
        "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability",
        "ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload", "ecr:PutImage"],"Resource":"*"}]});
    let (pusher, _) = principal(dir.path(), "pusher", PUSHER_KEY, push);
    let auth = AuthConfig {
        enabled: true,
        registry_id: ACCOUNT.into(),
        principals: vec![ci, nobody, pusher],
        ..AuthConfig::default()
    };
    let f = TestFerry::start_with(move |c| {
        c.auth = auth;
        change(c);
    })
    .await;
    Api { f, _dir: dir, ci_secret, nobody_secret }
}

/// The aws CLI with only these credentials (no profile, no CA bundle from the machine).
fn aws(key: &str, secret: &str, endpoint: &str, args: &[&str]) -> Command {
    let mut c = Command::new(format!("{}/bin/aws", venv()));
    c.args(args)
        .args(["--endpoint-url", endpoint, "--region", "us-east-1"])
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret);
    c
}

/// `aws ecr get-login-password | podman login --username AWS --password-stdin`, then a push
/// with the password and a pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_login_password_works_with_podman_and_skopeo() {
    let api = start().await;
    let addr = api.f.server.as_ref().unwrap().addr;
    let password = run(&mut aws(CI_KEY, &api.ci_secret, &api.f.base, &["ecr", "get-login-password"]));
    let password = password.trim();
    assert!(!password.is_empty() && !password.contains(':'));
    // The password works on the registry API as `AWS`.
    let resp = api.f.client.get(api.f.url("/v2/")).basic_auth("AWS", Some(password)).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    let work = tempfile::tempdir().unwrap();
    let policy = policy(work.path());
    let built = build_layout(&work.path().join("src"), "v1", &["amd64"], 40_000, false, 71);
    let dest = format!("docker://{addr}/team-a/api:v1");
    let creds = format!("AWS:{password}");
    run(skopeo(&policy).args(["copy", "--dest-tls-verify=false", "--dest-creds", &creds, &built.source, &dest]));
    let root = work.path().join("podman");
    let podman = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.arg("--root").arg(root.join("root")).arg("--runroot").arg(root.join("run"));
        c.args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]);
        c.env("REGISTRY_AUTH_FILE", work.path().join("auth.json"));
        c.args(args);
        c
    };
    let mut login =
        podman(&["login", "--tls-verify=false", "--username", "AWS", "--password-stdin", &addr.to_string()]);
    login.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = login.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), password.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "podman login: {}", String::from_utf8_lossy(&out.stderr));
    let image = format!("{addr}/team-a/api:v1");
    run(&mut podman(&["pull", "--tls-verify=false", &image]));
    assert_eq!(run(&mut podman(&["image", "inspect", "--format", "{{.Digest}}", &image])).trim(), built.top);

    // A principal without ecr:GetAuthorizationToken gets AccessDeniedException.
    let out = aws(NOBODY_KEY, &api.nobody_secret, &api.f.base, &["ecr", "get-login-password"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AccessDeniedException") && err.contains("ecr:GetAuthorizationToken"), "{err}");
}

/// boto3's `ecr` client: the operations and the authentication errors it can provoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_operations_and_authentication_errors() {
    let api = start().await;
    let script = format!(
        r#"
import base64, boto3, botocore, json
def client(key, secret):
    return boto3.client('ecr', endpoint_url='{endpoint}', region_name='us-east-1',
                        aws_access_key_id=key, aws_secret_access_key=secret)
def error(call):
    try:
        call()
        return None
    except botocore.exceptions.ClientError as e:
        return [e.response['Error']['Code'], e.response['Error']['Message'],
                e.response['ResponseMetadata']['HTTPStatusCode'], e.response['ResponseMetadata'].get('RequestId', '')]
ci = client('{ci_key}', '{ci_secret}')
data = ci.get_authorization_token()['authorizationData'][0]
out = {{
  'token': base64.b64decode(data['authorizationToken']).decode(),
  'expires': data['expiresAt'].timestamp(),
  'proxy': data['proxyEndpoint'],
  'registry': ci.describe_registry()['registryId'],
  'wrong_secret': error(lambda: client('{ci_key}', 'not the secret').get_authorization_token()),
  'unknown_key': error(lambda: client('AKIAUNKNOWN000000000', 'x').get_authorization_token()),
  'denied': error(lambda: client('{nobody_key}', '{nobody_secret}').get_authorization_token()),
  'bad_registry': error(lambda: ci.get_authorization_token(registryIds=['12345'])),
}}
print(json.dumps(out))
"#,
        endpoint = api.f.base,
        ci_key = CI_KEY,
        ci_secret = api.ci_secret,
        nobody_key = NOBODY_KEY,
        nobody_secret = api.nobody_secret,
    );
    let out = Command::new(format!("{}/bin/python", venv()))
        .args(["-c", &script])
        .env_remove("AWS_CA_BUNDLE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = v["token"].as_str().unwrap();
    assert!(token.starts_with("AWS:"), "{token}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let ttl = v["expires"].as_f64().unwrap() - now;
    assert!((12.0 * 3600.0 - 60.0..=12.0 * 3600.0 + 60.0).contains(&ttl), "12 h: {ttl}");
    assert_eq!(v["proxy"], api.f.base.as_str());
    assert_eq!(v["registry"], ACCOUNT);
    let code = |k: &str| v[k][0].as_str().unwrap_or_default().to_owned();
    assert_eq!(code("wrong_secret"), "InvalidSignatureException");
    assert_eq!(code("unknown_key"), "UnrecognizedClientException");
    assert_eq!(code("denied"), "AccessDeniedException");
    assert!(v["denied"][1].as_str().unwrap().contains(&format!("arn:aws:iam::{ACCOUNT}:user/nobody")));
    assert_eq!(code("bad_registry"), "InvalidParameterException");
    assert_eq!(v["bad_registry"][2], 400);
    assert!(!v["bad_registry"][3].as_str().unwrap().is_empty(), "x-amzn-RequestId");
    // The password verifies on the registry API.
    let password = token.trim_start_matches("AWS:");
    let resp = api.f.client.get(api.f.url("/v2/")).basic_auth("AWS", Some(password)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// Signed by the `aws-sigv4` crate with a date from an hour ago, or with a body changed after
/// signing: both refused.
#[tokio::test]
async fn stale_dates_and_changed_bodies_are_refused() {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let api = start().await;
    let host = api.f.base.trim_start_matches("http://").to_owned();
    let send = |age: std::time::Duration, signed_body: &'static str, sent_body: &'static str| {
        let (client, url, host, secret) = (api.f.client.clone(), api.f.url("/"), host.clone(), api.ci_secret.clone());
        async move {
            let time = std::time::SystemTime::now() - age;
            let creds = aws_credential_types::Credentials::new(CI_KEY, secret, None, None, "test");
            let identity: aws_smithy_runtime_api::client::identity::Identity = creds.into();
            let params = aws_sigv4::sign::v4::SigningParams::builder()
                .identity(&identity)
                .region("us-east-1")
                .name("ecr")
                .time(time)
                .settings(SigningSettings::default())
                .build()
                .unwrap()
                .into();
            let target = "AmazonEC2ContainerRegistry_V20150921.DescribeRegistry";
            let headers =
                [("host", host.as_str()), ("x-amz-target", target), ("content-type", "application/x-amz-json-1.1")];
            let signable =
                SignableRequest::new("POST", "/", headers.iter().copied(), SignableBody::Bytes(signed_body.as_bytes()))
                    .unwrap();
            let (instructions, _) = sign(signable, &params).unwrap().into_parts();
            let mut req = client
                .post(url)
                .header("x-amz-target", target)
                .header("content-type", "application/x-amz-json-1.1")
                .body(sent_body);
            for (name, value) in instructions.headers() {
                req = req.header(name, value);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let v: serde_json::Value = resp.json().await.unwrap();
            (
                status,
                v["__type"].as_str().unwrap_or_default().to_owned(),
                v["message"].as_str().unwrap_or_default().to_owned(),
            )
        }
    };
    let fresh = send(std::time::Duration::ZERO, "{}", "{}").await;
    assert_eq!(fresh.0, 200, "{fresh:?}");
    let stale = send(std::time::Duration::from_secs(3600), "{}", "{}").await;
    assert_eq!((stale.0, stale.1.as_str()), (400, "InvalidSignatureException"), "{stale:?}");
    assert!(stale.2.contains("Signature expired"), "{stale:?}");
    let changed = send(std::time::Duration::ZERO, "{}", "{ }").await;
    assert_eq!((changed.0, changed.1.as_str()), (400, "InvalidSignatureException"), "{changed:?}");
    // Unsigned: missing token.
    let resp = api
        .f
        .client
        .post(api.f.url("/"))
        .header("x-amz-target", "AmazonEC2ContainerRegistry_V20150921.DescribeRegistry")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-amzn-errortype"], "MissingAuthenticationTokenException");
}

/// Runs a boto3 script against `api` (`ci` and `nobody` clients are defined), returning the
/// JSON it prints.
fn boto3(api: &Api, body: &str) -> serde_json::Value {
    let script = format!(
        r#"
import base64, boto3, botocore, json
def client(key, secret):
    return boto3.client('ecr', endpoint_url='{endpoint}', region_name='us-east-1',
                        aws_access_key_id=key, aws_secret_access_key=secret)
def error(call):
    try:
        call()
        return None
    except botocore.exceptions.ClientError as e:
        return e.response['Error']['Code']
ci = client('{ci_key}', '{ci_secret}')
nobody = client('{nobody_key}', '{nobody_secret}')
{body}
"#,
        endpoint = api.f.base,
        ci_key = CI_KEY,
        ci_secret = api.ci_secret,
        nobody_key = NOBODY_KEY,
        nobody_secret = api.nobody_secret,
    );
    python_json(&script)
}

/// Runs `body` with boto3 against a Ferry without access control at `base`: `ecr` is the
/// client and `error(f)` returns the error code `f` raises (or None); returns what it prints.
pub fn boto3_open(base: &str, body: &str) -> serde_json::Value {
    python_json(&format!(
        r#"
import boto3, json
from botocore.exceptions import ClientError
ecr = boto3.client('ecr', endpoint_url='{base}', region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='y')
def error(f):
    try:
        f()
        return None
    except ClientError as e:
        return e.response['Error']['Code']
{body}
"#
    ))
}

/// Runs a Python script in the test venv with no AWS profile or CA bundle from the machine,
/// returning the JSON it prints.
pub fn python_json(script: &str) -> serde_json::Value {
    let out = Command::new(format!("{}/bin/python", venv()))
        .args(["-c", script])
        .env_remove("AWS_CA_BUNDLE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Repositories through boto3: create (and its errors), describe (by name, and paged), tags,
/// tag mutability, repository policies, delete (empty, not empty, forced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_manages_repositories() {
    let api = start().await;
    let v = boto3(
        &api,
        r#"
out = {}
r = ci.create_repository(repositoryName='team-a/app', imageTagMutability='IMMUTABLE',
                         tags=[{'Key': 'team', 'Value': 'a'}])['repository']
out['created'] = [r['repositoryName'], r['imageTagMutability'], r['repositoryArn'], r['repositoryUri'], r['createdAt'].timestamp() > 0]
out['again'] = error(lambda: ci.create_repository(repositoryName='team-a/app'))
out['bad_name'] = error(lambda: ci.create_repository(repositoryName='Team/App'))
for i in range(3):
    ci.create_repository(repositoryName='list/r%d' % i)
out['described'] = [x['repositoryName'] for x in ci.describe_repositories(repositoryNames=['team-a/app'])['repositories']]
out['missing'] = error(lambda: ci.describe_repositories(repositoryNames=['no/such']))
page = ci.describe_repositories(maxResults=2)
out['page1'] = [x['repositoryName'] for x in page['repositories']]
out['page2'] = [x['repositoryName'] for x in ci.describe_repositories(maxResults=2, nextToken=page['nextToken'])['repositories']]
arn = r['repositoryArn']
ci.tag_resource(resourceArn=arn, tags=[{'Key': 'env', 'Value': 'prod'}, {'Key': 'team', 'Value': 'b'}])
ci.untag_resource(resourceArn=arn, tagKeys=['env'])
out['tags'] = ci.list_tags_for_resource(resourceArn=arn)['tags']
out['too_many'] = error(lambda: ci.tag_resource(resourceArn=arn, tags=[{'Key': 'k%d' % i, 'Value': 'v'} for i in range(50)]))
m = ci.put_image_tag_mutability(repositoryName='team-a/app', imageTagMutability='IMMUTABLE_WITH_EXCLUSION',
    imageTagMutabilityExclusionFilters=[{'filterType': 'WILDCARD', 'filter': 'latest*'}])
out['mutability'] = [m['imageTagMutability'], m['imageTagMutabilityExclusionFilters']]
out['no_policy'] = error(lambda: ci.get_repository_policy(repositoryName='team-a/app'))
out['bad_policy'] = error(lambda: ci.set_repository_policy(repositoryName='team-a/app', policyText='{"Version":"2012-10-17"}'))
policy = json.dumps({"Version": "2012-10-17", "Statement": [{"Sid": "pull", "Effect": "Allow", "Principal": "*",
                     "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]}]})
ci.set_repository_policy(repositoryName='list/r0', policyText=policy)
out['policy'] = json.loads(ci.get_repository_policy(repositoryName='list/r0')['policyText'])['Statement'][0]['Sid']
lockout = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*",
                      "Action": "ecr:SetRepositoryPolicy"}]})
ci.create_repository(repositoryName='lock/r')
out['lockout'] = error(lambda: ci.set_repository_policy(repositoryName='lock/r', policyText=lockout))
ci.set_repository_policy(repositoryName='lock/r', policyText=lockout, force=True)
out['locked_out'] = error(lambda: ci.set_repository_policy(repositoryName='lock/r', policyText=policy, force=True))
out['denied'] = error(lambda: nobody.create_repository(repositoryName='team-a/other'))
out['deleted'] = ci.delete_repository(repositoryName='list/r2')['repository']['repositoryName']
out['gone'] = error(lambda: ci.delete_repository(repositoryName='list/r2'))
print(json.dumps(out))
"#,
    );
    assert_eq!(v["created"][0], "team-a/app");
    assert_eq!(v["created"][1], "IMMUTABLE");
    assert_eq!(v["created"][2], format!("arn:aws:ecr:us-east-1:{ACCOUNT}:repository/team-a/app"));
    assert!(v["created"][3].as_str().unwrap().ends_with("/team-a/app"));
    assert_eq!(v["created"][4], true);
    assert_eq!(v["again"], "RepositoryAlreadyExistsException");
    assert_eq!(v["bad_name"], "InvalidParameterException");
    assert_eq!(v["described"], serde_json::json!(["team-a/app"]));
    assert_eq!(v["missing"], "RepositoryNotFoundException");
    assert_eq!(v["page1"], serde_json::json!(["list/r0", "list/r1"]));
    assert_eq!(v["page2"], serde_json::json!(["list/r2", "team-a/app"]));
    assert_eq!(v["tags"], serde_json::json!([{"Key": "team", "Value": "b"}]));
    assert_eq!(v["too_many"], "TooManyTagsException");
    assert_eq!(v["mutability"][0], "IMMUTABLE_WITH_EXCLUSION");
    assert_eq!(v["no_policy"], "RepositoryPolicyNotFoundException");
    assert_eq!(v["bad_policy"], "InvalidParameterException");
    assert_eq!(v["policy"], "pull");
    assert_eq!(v["denied"], "AccessDeniedException");
    assert_eq!(v["lockout"], "InvalidParameterException", "a policy locking the caller out needs force");
    assert_eq!(v["locked_out"], "AccessDeniedException", "forced, it is in force");
    assert_eq!(v["deleted"], "list/r2");
    assert_eq!(v["gone"], "RepositoryNotFoundException");

    // The repository policy lets anyone pull list/r0, with no identity policy for anonymous.
    let f = &api.f;
    let as_ci = |r: reqwest::RequestBuilder| r.basic_auth(CI_KEY, Some(&api.ci_secret));
    let layer = b"a public layer";
    let d = digest(layer);
    let resp = as_ci(f.client.post(f.url(&format!("/v2/list/r0/blobs/uploads/?digest={d}"))))
        .body(layer.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = f.client.get(f.url(&format!("/v2/list/r0/blobs/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the repository policy allows anonymous pulls");
    let resp = f.client.get(f.url(&format!("/v2/list/r1/blobs/{d}"))).send().await.unwrap();
    assert_eq!(resp.status(), 401, "list/r1 has no such policy");

    // Immutable tags (with `latest*` excluded) from the registry API: v1 once, latest freely.
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = digest(config);
    as_ci(f.client.post(f.url(&format!("/v2/team-a/app/blobs/uploads/?digest={cd}"))))
        .body(config.to_vec())
        .send()
        .await
        .unwrap();
    let manifest = |n: u32| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": [], "annotations": {"n": n.to_string()},
        }))
        .unwrap()
    };
    let put = |tag: &'static str, body: Vec<u8>| {
        as_ci(f.client.put(f.url(&format!("/v2/team-a/app/manifests/{tag}"))))
            .header("Content-Type", OCI_MANIFEST)
            .body(body)
            .send()
    };
    assert_eq!(put("v1", manifest(1)).await.unwrap().status(), 201);
    for body in [manifest(1), manifest(2)] {
        let resp = put("v1", body).await.unwrap();
        assert_eq!(resp.status(), 400, "an immutable tag is pushed once, even with the same image");
        let text = resp.text().await.unwrap();
        assert!(text.contains("TAG_INVALID"), "{text}");
        assert!(text.contains("The image tag 'v1' already exists in the 'team-a/app' repository and cannot be overwritten because the repository is immutable."), "{text}");
    }
    assert_eq!(put("latest", manifest(1)).await.unwrap().status(), 201);
    assert_eq!(put("latest", manifest(2)).await.unwrap().status(), 201, "latest* is excluded: it moves");

    // A repository with images is not deleted without force.
    let v = boto3(
        &api,
        r#"
out = {'not_empty': error(lambda: ci.delete_repository(repositoryName='team-a/app'))}
out['forced'] = ci.delete_repository(repositoryName='team-a/app', force=True)['repository']['repositoryName']
print(json.dumps(out))
"#,
    );
    assert_eq!(v["not_empty"], "RepositoryNotEmptyException");
    assert_eq!(v["forced"], "team-a/app");
    let resp = as_ci(f.client.get(f.url("/v2/team-a/app/manifests/v1"))).send().await.unwrap();
    assert_eq!(resp.status(), 404, "a deleted repository serves nothing");
}

/// Two replicas on one bucket race 20 pushes of different images to one immutable tag:
/// exactly one wins, every other gets TAG_INVALID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_racing_to_an_immutable_tag_let_exactly_one_win() {
    let moto = crate::s3::Moto::start();
    moto.bucket("imm").await;
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let moto_endpoint = moto.endpoint.clone();
        let f = TestFerry::start_with(move |c| {
            c.storage.backend = ferry::config::Backend::S3;
            c.storage.s3.bucket = "imm".into();
            c.storage.s3.endpoint = moto_endpoint;
            c.storage.s3.force_path_style = true;
            c.storage.s3.access_key_id = "test".into();
            c.storage.s3.secret_access_key = ferry::config::Secret("test".into());
        })
        .await;
        replicas.push(f);
    }
    // Open registry (auth off): set the repository immutable through the API, unsigned.
    let create = replicas[0]
        .client
        .post(replicas[0].url("/"))
        .header("x-amz-target", "AmazonEC2ContainerRegistry_V20150921.CreateRepository")
        .header("content-type", "application/x-amz-json-1.1")
        .body(r#"{"repositoryName":"race/imm","imageTagMutability":"IMMUTABLE"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), 200, "{:?}", create.text().await);
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = replicas[0].push_blob("race/imm", config).await;
    let mut pushes = Vec::new();
    for i in 0..20u32 {
        let f = &replicas[(i % 2) as usize];
        let body = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
            "layers": [], "annotations": {"n": i.to_string()},
        }))
        .unwrap();
        let req = f.client.put(f.url("/v2/race/imm/manifests/v1")).header("Content-Type", OCI_MANIFEST).body(body);
        pushes.push(tokio::spawn(async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }));
    }
    let mut results = Vec::new();
    for p in pushes {
        results.push(p.await.unwrap());
    }
    assert_eq!(results.iter().filter(|(s, _)| *s == 201).count(), 1, "{results:?}");
    assert!(results.iter().all(|(s, b)| *s == 201 || (*s == 400 && b.contains("TAG_INVALID"))), "{results:?}");
}

/// Signs one ECR API call with the `aws-sigv4` crate and sends it; returns (status, JSON body).
pub async fn signed_call(
    f: &TestFerry,
    key: &str,
    secret: &str,
    operation: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    signed_call_in(f, "us-east-1", key, secret, operation, body).await
}

/// [`signed_call`] to a registry in `region`.
pub async fn signed_call_in(
    f: &TestFerry,
    region: &str,
    key: &str,
    secret: &str,
    operation: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    signed_call_at(&f.base, region, key, secret, operation, body).await
}

/// [`signed_call`] to the registry at `base` (a Ferry process, say) in `region`.
pub async fn signed_call_at(
    base: &str,
    region: &str,
    key: &str,
    secret: &str,
    operation: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let host = base.trim_start_matches("http://").to_owned();
    let creds = aws_credential_types::Credentials::new(key, secret, None, None, "test");
    let identity: aws_smithy_runtime_api::client::identity::Identity = creds.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("ecr")
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let target = format!("AmazonEC2ContainerRegistry_V20150921.{operation}");
    let headers =
        [("host", host.as_str()), ("x-amz-target", target.as_str()), ("content-type", "application/x-amz-json-1.1")];
    let signable =
        SignableRequest::new("POST", "/", headers.iter().copied(), SignableBody::Bytes(body.as_bytes())).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut req = reqwest::Client::new()
        .post(format!("{base}/"))
        .header("x-amz-target", &target)
        .header("content-type", "application/x-amz-json-1.1")
        .body(body.to_owned());
    for (name, value) in instructions.headers() {
        req = req.header(name, value);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or_default())
}

/// Two replicas on one bucket start at once and agree on one token key: a password replica A
/// issues through the API works on replica B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_one_replica_works_on_another() {
    let moto = crate::s3::Moto::start();
    moto.bucket("tokens").await;
    let dir = tempfile::tempdir().unwrap();
    let everything =
        serde_json::json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","Resource":"*"}]});
    let (ci, secret) = principal(dir.path(), "ci", CI_KEY, everything);
    let replica = || {
        let (endpoint, ci) = (moto.endpoint.clone(), ci.clone());
        TestFerry::start_with(move |c| {
            c.storage.backend = ferry::config::Backend::S3;
            c.storage.s3.bucket = "tokens".into();
            c.storage.s3.endpoint = endpoint;
            c.storage.s3.force_path_style = true;
            c.storage.s3.access_key_id = "test".into();
            c.storage.s3.secret_access_key = ferry::config::Secret("test".into());
            c.auth = AuthConfig {
                enabled: true,
                registry_id: ACCOUNT.into(),
                principals: vec![ci],
                ..AuthConfig::default()
            };
        })
    };
    let (a, b) = tokio::join!(replica(), replica());
    let (status, v) = signed_call(&a, CI_KEY, &secret, "GetAuthorizationToken", "{}").await;
    assert_eq!(status, 200, "{v}");
    let decoded = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        v["authorizationData"][0]["authorizationToken"].as_str().unwrap(),
    )
    .unwrap();
    let password = String::from_utf8(decoded).unwrap().trim_start_matches("AWS:").to_owned();
    for f in [&a, &b] {
        let resp = f.client.get(f.url("/v2/")).basic_auth("AWS", Some(&password)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", f.base);
    }
}

/// Repository creation templates through boto3, and what they decide: with
/// `registry.create_on_push = false` a push to a missing repository gets ECR's `NAME_UNKNOWN`
/// unless a `CREATE_ON_PUSH` template covers it; the repository it creates carries the
/// template's mutability, tags and policy; creating needs `ecr:CreateRepository` (pushing to
/// an existing repository does not); a `PULL_THROUGH_CACHE` template shapes cache repositories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_templates_decide_what_a_push_creates() {
    let hub = crate::upstream::RealUpstream::start();
    let client = reqwest::Client::new();
    push_config_image(&client, &hub.base, "library/cached", "v1", br#"{"cached":true}"#).await;
    let rule = crate::pull_through::rule("hub", &hub.base);
    let api = start_with(move |c| {
        c.registry.create_on_push = false;
        c.pull_through = vec![rule];
    })
    .await;
    let f = &api.f;
    let pusher_secret = format!("pusher-secret-{}", uuid_like("pusher"));
    let start_upload = |repo: &'static str, key: &'static str, secret: String| {
        let (c, base) = (f.client.clone(), f.base.clone());
        async move {
            let body = format!("layer of {repo}");
            let d = digest(body.as_bytes());
            let resp = c
                .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
                .basic_auth(key, Some(secret))
                .body(body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let ci = api.ci_secret.clone();
    let (code, text) = start_upload("team-c/app", CI_KEY, ci.clone()).await;
    assert_eq!(code, 404, "{text}");
    assert!(text.contains("NAME_UNKNOWN"), "{text}");
    assert!(
        text.contains(&format!(
            "The repository with name 'team-c/app' does not exist in the registry with id '{ACCOUNT}'"
        )),
        "{text}"
    );

    let v = boto3(
        &api,
        r#"
out = {}
policy = json.dumps({"Version": "2012-10-17", "Statement": [{"Sid": "anyone-pulls", "Effect": "Allow", "Principal": "*",
                     "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]}]})
t = ci.create_repository_creation_template(prefix='team-c/', appliedFor=['CREATE_ON_PUSH'], description='team c',
    imageTagMutability='IMMUTABLE', resourceTags=[{'Key': 'team', 'Value': 'c'}], repositoryPolicy=policy)
out['created'] = [t['repositoryCreationTemplate']['prefix'], t['repositoryCreationTemplate']['appliedFor'], t['registryId']]
out['again'] = error(lambda: ci.create_repository_creation_template(prefix='team-c', appliedFor=['REPLICATION']))
out['bad_prefix'] = error(lambda: ci.create_repository_creation_template(prefix='Team-C', appliedFor=['CREATE_ON_PUSH']))
out['bad_policy'] = error(lambda: ci.create_repository_creation_template(prefix='x1', appliedFor=['CREATE_ON_PUSH'], repositoryPolicy='{}'))
out['denied'] = error(lambda: nobody.create_repository_creation_template(prefix='x1', appliedFor=['CREATE_ON_PUSH']))
ci.create_repository_creation_template(prefix='ROOT', appliedFor=['REPLICATION'])
ci.create_repository_creation_template(prefix='hub', appliedFor=['PULL_THROUGH_CACHE'],
    resourceTags=[{'Key': 'source', 'Value': 'hub'}])
page = ci.describe_repository_creation_templates(maxResults=2)
out['page1'] = [x['prefix'] for x in page['repositoryCreationTemplates']]
out['page2'] = [x['prefix'] for x in ci.describe_repository_creation_templates(maxResults=2, nextToken=page['nextToken'])['repositoryCreationTemplates']]
out['by_prefix'] = [x['description'] for x in ci.describe_repository_creation_templates(prefixes=['team-c'])['repositoryCreationTemplates']]
u = ci.update_repository_creation_template(prefix='team-c', description='team c, immutable')['repositoryCreationTemplate']
out['updated'] = [u['description'], u['imageTagMutability'], u['updatedAt'] >= u['createdAt']]
out['update_missing'] = error(lambda: ci.update_repository_creation_template(prefix='nope', description='x'))
out['delete_missing'] = error(lambda: ci.delete_repository_creation_template(prefix='nope'))
print(json.dumps(out))
"#,
    );
    assert_eq!(v["created"], serde_json::json!(["team-c", ["CREATE_ON_PUSH"], ACCOUNT]));
    assert_eq!(v["again"], "TemplateAlreadyExistsException", "team-c and team-c/ are one prefix");
    assert_eq!(v["bad_prefix"], "InvalidParameterException");
    assert_eq!(v["bad_policy"], "InvalidParameterException");
    assert_eq!(v["denied"], "AccessDeniedException");
    assert_eq!(v["page1"], serde_json::json!(["ROOT", "hub"]));
    assert_eq!(v["page2"], serde_json::json!(["team-c"]));
    assert_eq!(v["by_prefix"], serde_json::json!(["team c"]));
    assert_eq!(v["updated"], serde_json::json!(["team c, immutable", "IMMUTABLE", true]));
    assert_eq!(v["update_missing"], "TemplateNotFoundException");
    assert_eq!(v["delete_missing"], "TemplateNotFoundException");

    // Creating on push needs ecr:CreateRepository: pusher may push, not create.
    let (code, text) = start_upload("team-c/app", PUSHER_KEY, pusher_secret.clone()).await;
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("DENIED") && text.contains("ecr:CreateRepository"), "{text}");
    // ci may: the repository appears with the template's settings.
    assert_eq!(start_upload("team-c/app", CI_KEY, ci.clone()).await.0, 201);
    // Now it exists, pusher pushes to it without needing to create anything.
    let (code, text) = start_upload("team-c/app", PUSHER_KEY, pusher_secret).await;
    assert_eq!(code, 201, "{text}");
    // The ROOT template is for replication only: pushes elsewhere still find no repository.
    assert_eq!(start_upload("team-d/app", CI_KEY, ci.clone()).await.0, 404);
    // The template's policy lets anyone pull.
    let layer = digest(b"layer of team-c/app");
    let resp = f.client.get(f.url(&format!("/v2/team-c/app/blobs/{layer}"))).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the template's repository policy allows anonymous pulls");
    // A pull through the cache creates hub/library/cached with the hub template's tags.
    let resp = f
        .client
        .get(f.url("/v2/hub/library/cached/manifests/v1"))
        .basic_auth(CI_KEY, Some(&ci))
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let v = boto3(
        &api,
        r#"
out = {}
r = ci.describe_repositories(repositoryNames=['team-c/app'])['repositories'][0]
out['mutability'] = r['imageTagMutability']
out['tags'] = ci.list_tags_for_resource(resourceArn=r['repositoryArn'])['tags']
out['policy'] = json.loads(ci.get_repository_policy(repositoryName='team-c/app')['policyText'])['Statement'][0]['Sid']
c = ci.describe_repositories(repositoryNames=['hub/library/cached'])['repositories'][0]
out['cache_tags'] = ci.list_tags_for_resource(resourceArn=c['repositoryArn'])['tags']
out['deleted'] = ci.delete_repository_creation_template(prefix='team-c/')['repositoryCreationTemplate']['prefix']
print(json.dumps(out))
"#,
    );
    assert_eq!(v["mutability"], "IMMUTABLE");
    assert_eq!(v["tags"], serde_json::json!([{"Key": "team", "Value": "c"}]));
    assert_eq!(v["policy"], "anyone-pulls");
    assert_eq!(v["cache_tags"], serde_json::json!([{"Key": "source", "Value": "hub"}]));
    assert_eq!(v["deleted"], "team-c");
    // Without the template, new names under team-c are unknown again.
    assert_eq!(start_upload("team-c/other", CI_KEY, ci).await.0, 404);
}

/// The replication configuration through boto3: put with ECR's shape, described back by
/// `DescribeRegistry` (also after a restart: it lives in storage), ECR's limits refused, and
/// `ecr:PutReplicationConfiguration` needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_puts_and_describes_the_replication_configuration() {
    let mut api = start().await;
    let v = boto3(
        &api,
        r#"
out = {}
config = {'rules': [{'destinations': [{'region': 'eu-west-1', 'registryId': '123456789012'},
                                      {'region': 'us-west-2', 'registryId': '210987654321'}],
                     'repositoryFilters': [{'filter': 'team-a/', 'filterType': 'PREFIX_MATCH'}]}]}
out['put'] = ci.put_replication_configuration(replicationConfiguration=config)['replicationConfiguration'] == config
out['described'] = ci.describe_registry()['replicationConfiguration'] == config
many = {'rules': [{'destinations': [{'region': 'eu-west-1', 'registryId': '123456789012'}]}] * 11}
out['too_many_rules'] = error(lambda: ci.put_replication_configuration(replicationConfiguration=many))
wide = {'rules': [{'destinations': [{'region': 'r%02d' % i, 'registryId': '123456789012'} for i in range(26)]}]}
out['too_many_destinations'] = error(lambda: ci.put_replication_configuration(replicationConfiguration=wide))
bad = {'rules': [{'destinations': [{'region': 'EU_WEST', 'registryId': '123456789012'}]}]}
out['bad_region'] = error(lambda: ci.put_replication_configuration(replicationConfiguration=bad))
deletes = {'rules': [{'destinations': [{'region': 'eu-west-1', 'registryId': '123456789012'}], 'deleteReplication': {'enabled': True}}]}
out['deletes'] = error(lambda: ci.put_replication_configuration(replicationConfiguration=deletes))
out['denied'] = error(lambda: nobody.put_replication_configuration(replicationConfiguration=config))
allow = json.dumps({'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Principal': {'AWS': 'arn:aws:iam::210987654321:root'},
                    'Action': ['ecr:ReplicateImage', 'ecr:CreateRepository'], 'Resource': 'arn:aws:ecr:us-east-1:123456789012:repository/*'}]})
out['no_registry_policy'] = error(lambda: ci.get_registry_policy())
out['registry_policy'] = ci.put_registry_policy(policyText=allow)['policyText'] == allow
out['got_registry_policy'] = ci.get_registry_policy()['policyText'] == allow
try:
    ci.put_registry_policy(policyText=allow.replace('ecr:CreateRepository', 'ecr:PutImage'))
    out['push_in_registry_policy'] = None
except botocore.exceptions.ClientError as e:
    out['push_in_registry_policy'] = e.response['Error']['Message']
out['deleted_registry_policy'] = ci.delete_registry_policy()['policyText'] == allow
out['registry_policy_gone'] = error(lambda: ci.delete_registry_policy())
print(json.dumps(out))
"#,
    );
    assert_eq!(v["put"], true);
    assert_eq!(v["described"], true);
    for case in ["too_many_rules", "too_many_destinations", "bad_region", "deletes"] {
        assert_eq!(v[case], "InvalidParameterException", "{case}");
    }
    assert_eq!(v["denied"], "AccessDeniedException");
    // A registry policy may grant only ECR's replication and pull-through actions.
    assert_eq!(v["no_registry_policy"], "RegistryPolicyNotFoundException");
    assert_eq!(
        (&v["registry_policy"], &v["got_registry_policy"]),
        (&serde_json::json!(true), &serde_json::json!(true))
    );
    assert_eq!(
        v["push_in_registry_policy"],
        "Invalid parameter at 'PolicyText' failed to satisfy constraint: 'Invalid registry policy provided'"
    );
    assert_eq!(v["deleted_registry_policy"], true);
    assert_eq!(v["registry_policy_gone"], "RegistryPolicyNotFoundException");
    api.f.restart().await;
    let v = boto3(
        &api,
        "print(json.dumps(ci.describe_registry()['replicationConfiguration']['rules'][0]['repositoryFilters']))",
    );
    assert_eq!(v, serde_json::json!([{"filter": "team-a/", "filterType": "PREFIX_MATCH"}]));
}

/// The image operations through boto3, as CI scripts use them: list (per tag, untagged by
/// digest, filtered, paged), describe (sizes, tags, times; an index sized by its largest
/// child), batch-get (a pull, with ECR's failure codes), put-image to retag without moving
/// data (and its exceptions), batch-delete (a tag; the last tag takes the image; a child an
/// index lists is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_lists_describes_gets_retags_and_deletes_images() {
    let f = TestFerry::start().await;
    let (a_manifest, a) = f.push_image("team/app", "v1", &random_bytes(4000, 1)).await;
    let resp = f.put_manifest("team/app", "latest", OCI_MANIFEST, &a_manifest).await;
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    let (_, b) = f.push_image("team/app", "v2", &random_bytes(5000, 2)).await;
    let (_, c) = f.push_image("team/app", "scratch", &random_bytes(6000, 3)).await;
    let resp = f.client.delete(f.url("/v2/team/app/manifests/scratch")).send().await.unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    let dir = tempfile::tempdir().unwrap();
    let multi = build_layout(&dir.path().join("multi"), "v1", &["linux/amd64", "linux/arm64"], 20_000, false, 4);
    crate::replication::skopeo_push(dir.path(), &multi.source, &f.base, "team/multi:v1");
    let missing_layer = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(b"{}"), "size": 2},
        "layers": []
    })
    .to_string();

    let v = boto3_open(
        &f.base,
        &format!(
            r#"
ids = lambda r: sorted((i['imageDigest'], i.get('imageTag', '')) for i in r['imageIds'])
out = {{}}
out['all'] = ids(ecr.list_images(repositoryName='team/app'))
out['tagged'] = len(ecr.list_images(repositoryName='team/app', filter={{'tagStatus': 'TAGGED'}})['imageIds'])
out['untagged'] = ids(ecr.list_images(repositoryName='team/app', filter={{'tagStatus': 'UNTAGGED'}}))
p1 = ecr.list_images(repositoryName='team/app', maxResults=3)
p2 = ecr.list_images(repositoryName='team/app', maxResults=3, nextToken=p1['nextToken'])
out['pages'] = [len(p1['imageIds']), len(p2['imageIds']), 'nextToken' in p2]
out['no_repo'] = error(lambda: ecr.list_images(repositoryName='team/none'))

got = ecr.batch_get_image(repositoryName='team/app', imageIds=[{{'imageTag': 'v1'}}, {{'imageTag': 'nope'}}, {{'imageDigest': '{a}', 'imageTag': 'v2'}}])
out['got'] = [(i['imageId']['imageDigest'], i['imageManifest'], i['imageManifestMediaType']) for i in got['images']]
out['get_failures'] = sorted(x['failureCode'] for x in got['failures'])

d = {{x['imageDigest']: x for x in ecr.describe_images(repositoryName='team/app')['imageDetails']}}
out['described'] = sorted((k, sorted(x.get('imageTags', [])), x['imageSizeInBytes'] > 0, x['imagePushedAt'].timestamp() > 0) for k, x in d.items())
out['pulled'] = 'lastRecordedPullTime' in d['{a}']
out['missing'] = error(lambda: ecr.describe_images(repositoryName='team/app', imageIds=[{{'imageTag': 'nope'}}]))
m = {{x['imageDigest']: x for x in ecr.describe_images(repositoryName='team/multi')['imageDetails']}}
out['index_size'] = [m['{top}']['imageSizeInBytes'], max(m[c]['imageSizeInBytes'] for c in {children})]

manifest = got['images'][0]['imageManifest']
r = ecr.put_image(repositoryName='team/app', imageManifest=manifest, imageTag='release')
out['retag'] = [r['image']['imageId'], r['image']['imageManifest'] == manifest]
out['again'] = error(lambda: ecr.put_image(repositoryName='team/app', imageManifest=manifest, imageTag='release'))
out['wrong_digest'] = error(lambda: ecr.put_image(repositoryName='team/app', imageManifest=manifest, imageTag='x', imageDigest='{b}'))
out['no_layers'] = error(lambda: ecr.put_image(repositoryName='team/app', imageManifest='{missing_layer}', imageTag='y'))
out['put_no_repo'] = error(lambda: ecr.put_image(repositoryName='team/none', imageManifest=manifest))

lay = ecr.batch_check_layer_availability(repositoryName='team/app', layerDigests=['{layer}', 'sha256:' + '0' * 64, 'nope'])
out['layers'] = [(l['layerDigest'], l['layerAvailability'], l.get('layerSize')) for l in lay['layers']]
out['layer_failures'] = [x['failureCode'] for x in lay['failures']]
out['url'] = ecr.get_download_url_for_layer(repositoryName='team/app', layerDigest='{layer}')['downloadUrl']
out['no_layer'] = error(lambda: ecr.get_download_url_for_layer(repositoryName='team/app', layerDigest='sha256:' + '0' * 64))

gone = ecr.batch_delete_image(repositoryName='team/app', imageIds=[{{'imageTag': 'latest'}}, {{'imageTag': 'v2'}}, {{'imageTag': 'nope'}}])
out['deleted'] = sorted((i['imageDigest'], i['imageTag']) for i in gone['imageIds'])
out['delete_failures'] = [x['failureCode'] for x in gone['failures']]
out['after'] = ids(ecr.list_images(repositoryName='team/app'))
child = ecr.batch_delete_image(repositoryName='team/multi', imageIds=[{{'imageDigest': '{child0}'}}])
out['child'] = [x['failureCode'] for x in child['failures']]
print(json.dumps(out))
"#,
            top = multi.top,
            children = serde_json::to_string(&multi.platforms).unwrap(),
            child0 = multi.platforms[0],
            layer = digest(&random_bytes(4000, 1)),
        ),
    );
    let mut all = vec![(a.clone(), "latest"), (a.clone(), "v1"), (b.clone(), "v2"), (c.clone(), "")];
    all.sort();
    assert_eq!(v["all"], serde_json::json!(all), "{v}");
    assert_eq!(v["tagged"], 3);
    assert_eq!(v["untagged"], serde_json::json!([[c, ""]]));
    assert_eq!(v["pages"], serde_json::json!([3, 1, false]));
    assert_eq!(v["no_repo"], "RepositoryNotFoundException");
    assert_eq!(v["got"], serde_json::json!([[a, String::from_utf8(a_manifest.clone()).unwrap(), OCI_MANIFEST]]));
    assert_eq!(v["get_failures"], serde_json::json!(["ImageNotFound", "ImageTagDoesNotMatchDigest"]));
    let mut described = vec![
        serde_json::json!([a, ["latest", "v1"], true, true]),
        serde_json::json!([b, ["v2"], true, true]),
        serde_json::json!([c, [], true, true]),
    ];
    described.sort_by_key(|x| x[0].as_str().unwrap().to_owned());
    assert_eq!(v["described"], serde_json::json!(described));
    assert_eq!(v["pulled"], true, "BatchGetImage is a pull");
    assert_eq!(v["missing"], "ImageNotFoundException");
    assert_eq!(v["index_size"][0], v["index_size"][1], "an index is as large as its largest child");
    assert_eq!(v["retag"], serde_json::json!([{"imageDigest": a, "imageTag": "release"}, true]));
    assert_eq!(v["again"], "ImageAlreadyExistsException");
    assert_eq!(v["wrong_digest"], "ImageDigestDoesNotMatchException");
    assert_eq!(v["no_layers"], "LayersNotFoundException");
    assert_eq!(v["put_no_repo"], "RepositoryNotFoundException");
    let mut deleted = vec![(a.clone(), "latest"), (b.clone(), "v2")];
    deleted.sort();
    assert_eq!(v["deleted"], serde_json::json!(deleted));
    assert_eq!(v["delete_failures"], serde_json::json!(["ImageNotFound"]));
    // v2 was B's last tag, so B went with it; A keeps v1 and release.
    let mut after = vec![(a.clone(), "release"), (a.clone(), "v1"), (c.clone(), "")];
    after.sort();
    assert_eq!(v["after"], serde_json::json!(after));
    assert_eq!(v["child"], serde_json::json!(["ImageReferencedByManifestList"]));
    let layer = random_bytes(4000, 1);
    let zero = format!("sha256:{}", "0".repeat(64));
    assert_eq!(
        v["layers"],
        serde_json::json!([[digest(&layer), "AVAILABLE", layer.len()], [zero, "UNAVAILABLE", null]])
    );
    assert_eq!(v["layer_failures"], serde_json::json!(["InvalidLayerDigest"]));
    assert_eq!(v["no_layer"], "LayersNotFoundException");
    // Without S3 redirects the URL is the registry's own, and it serves the layer.
    let url = v["url"].as_str().unwrap();
    assert_eq!(url, f.url(&format!("/v2/team/app/blobs/{}", digest(&layer))));
    assert_eq!(f.client.get(url).send().await.unwrap().bytes().await.unwrap().as_ref(), &layer[..]);
}

/// An image pushed entirely through the ECR API with the aws CLI (`initiate-layer-upload`, a
/// 23 MiB layer in three `upload-layer-part`s, `complete-layer-upload`, `put-image`) is pulled
/// byte for byte by skopeo from the registry API; then boto3 provokes every way the layer
/// upload can go wrong, and nothing wrong is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_pushes_through_the_layer_api_and_skopeo_pulls_it() {
    let api = start().await;
    let addr = api.f.server.as_ref().unwrap().addr;
    let work = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| -> serde_json::Value {
        let out = run(&mut aws(CI_KEY, &api.ci_secret, &api.f.base, args));
        if out.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&out).unwrap()
        }
    };
    cli(&["ecr", "create-repository", "--repository-name", "team/layers"]);
    let push_blob = |blob: &[u8], name: &str| -> String {
        let started = cli(&["ecr", "initiate-layer-upload", "--repository-name", "team/layers"]);
        let part_size = started["partSize"].as_u64().unwrap() as usize;
        assert_eq!(part_size, 10 << 20, "ECR's part size quota");
        let id = started["uploadId"].as_str().unwrap().to_owned();
        for (i, part) in blob.chunks(part_size).enumerate() {
            let file = work.path().join(format!("{name}.{i}"));
            std::fs::write(&file, part).unwrap();
            let (first, last) = (i * part_size, i * part_size + part.len() - 1);
            let r = cli(&[
                "ecr",
                "upload-layer-part",
                "--repository-name",
                "team/layers",
                "--upload-id",
                &id,
                "--part-first-byte",
                &first.to_string(),
                "--part-last-byte",
                &last.to_string(),
                "--layer-part-blob",
                &format!("fileb://{}", file.display()),
            ]);
            assert_eq!(r["lastByteReceived"], last as u64);
        }
        let d = digest(blob);
        let done = cli(&[
            "ecr",
            "complete-layer-upload",
            "--repository-name",
            "team/layers",
            "--upload-id",
            &id,
            "--layer-digests",
            &d,
        ]);
        assert_eq!(done["layerDigest"], d.as_str());
        d
    };
    let layer = random_bytes(23 << 20, 90);
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let layer_digest = push_blob(&layer, "layer");
    let config_digest = push_blob(&config, "config");
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}]
    })
    .to_string();
    let manifest_file = work.path().join("manifest.json");
    std::fs::write(&manifest_file, &manifest).unwrap();
    let put = cli(&[
        "ecr",
        "put-image",
        "--repository-name",
        "team/layers",
        "--image-tag",
        "v1",
        "--image-manifest",
        &format!("file://{}", manifest_file.display()),
    ]);
    assert_eq!(put["image"]["imageId"]["imageDigest"], digest(manifest.as_bytes()).as_str());

    let password = run(&mut aws(CI_KEY, &api.ci_secret, &api.f.base, &["ecr", "get-login-password"]));
    let creds = format!("AWS:{}", password.trim());
    let out = work.path().join("pulled");
    let policy = policy(work.path());
    run(skopeo(&policy).args([
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &format!("docker://{addr}/team/layers:v1"),
        // `dir:` keeps layers as they are (an OCI layout would compress this uncompressed one).
        &format!("dir:{}", out.display()),
    ]));
    let pulled = std::fs::read(out.join(layer_digest.trim_start_matches("sha256:"))).unwrap();
    assert!(pulled == layer, "the layer skopeo pulled is the one the aws CLI pushed");

    let v = boto3(
        &api,
        &format!(
            r#"
out = {{}}
def err(call):
    try:
        call()
        return None
    except botocore.exceptions.ClientError as e:
        return [e.response['Error']['Code'], e.response.get('lastValidByteReceived')]
repo = 'team/layers'
ci.create_repository(repositoryName='team/other')
u = ci.initiate_layer_upload(repositoryName=repo)['uploadId']
part = lambda first, data, upload=u, last=None, name=repo: ci.upload_layer_part(repositoryName=name, uploadId=upload,
    partFirstByte=first, partLastByte=first + len(data) - 1 if last is None else last, layerPartBlob=data)
out['gap_first'] = err(lambda: part(5, b'x' * 10))
out['first'] = part(0, b'a' * 10)['lastByteReceived']
out['overlap'] = err(lambda: part(5, b'b' * 10))
out['lengths'] = err(lambda: part(10, b'c' * 10, last=30))
out['too_big'] = err(lambda: part(10, b'd' * (10 * 1024 * 1024 + 1)))
out['other_repo'] = err(lambda: part(10, b'e' * 10, name='team/other'))
out['wrong_digest'] = err(lambda: ci.complete_layer_upload(repositoryName=repo, uploadId=u, layerDigests=['sha256:' + '0' * 64]))
out['after_wrong'] = err(lambda: part(10, b'f' * 10))
empty = ci.initiate_layer_upload(repositoryName=repo)['uploadId']
out['empty'] = err(lambda: ci.complete_layer_upload(repositoryName=repo, uploadId=empty, layerDigests=['sha256:' + '0' * 64]))
again = ci.initiate_layer_upload(repositoryName=repo)['uploadId']
ci.upload_layer_part(repositoryName=repo, uploadId=again, partFirstByte=0, partLastByte={config_len} - 1, layerPartBlob=bytes.fromhex('{config_hex}'))
out['exists'] = err(lambda: ci.complete_layer_upload(repositoryName=repo, uploadId=again, layerDigests=['{config_digest}']))
out['exists_then'] = err(lambda: ci.upload_layer_part(repositoryName=repo, uploadId=again, partFirstByte={config_len}, partLastByte={config_len}, layerPartBlob=b'z'))
out['unknown'] = err(lambda: ci.complete_layer_upload(repositoryName=repo, uploadId='{unknown}', layerDigests=['{config_digest}']))
out['no_repo'] = err(lambda: ci.initiate_layer_upload(repositoryName='team/none'))
out['denied'] = err(lambda: nobody.initiate_layer_upload(repositoryName=repo))
out['wrong_available'] = ci.batch_check_layer_availability(repositoryName=repo, layerDigests=['sha256:' + '0' * 64])['layers'][0]['layerAvailability']
out['layer_available'] = ci.batch_check_layer_availability(repositoryName=repo, layerDigests=['{layer_digest}'])['layers'][0]['layerSize']
print(json.dumps(out))
"#,
            config_hex = config.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            config_len = config.len(),
            config_digest = config_digest,
            layer_digest = layer_digest,
            unknown = "0f0e0d0c-0b0a-4908-8706-050403020100",
        ),
    );
    assert_eq!(v["gap_first"], serde_json::json!(["InvalidLayerPartException", null]), "{v}");
    assert_eq!(v["first"], 9);
    assert_eq!(v["overlap"], serde_json::json!(["InvalidLayerPartException", 9]), "the caller learns where to resume");
    assert_eq!(v["lengths"][0], "InvalidLayerPartException");
    assert_eq!(v["too_big"][0], "InvalidLayerPartException", "a part is at most 10 MiB");
    assert_eq!(v["other_repo"][0], "UploadNotFoundException", "an upload belongs to its repository");
    assert_eq!(v["wrong_digest"][0], "InvalidLayerException");
    assert_eq!(v["after_wrong"][0], "UploadNotFoundException", "a failed completion ends the upload");
    assert_eq!(v["empty"][0], "EmptyUploadException");
    assert_eq!(v["exists"][0], "LayerAlreadyExistsException");
    assert_eq!(v["exists_then"][0], "UploadNotFoundException");
    assert_eq!(v["unknown"][0], "UploadNotFoundException");
    assert_eq!(v["no_repo"][0], "RepositoryNotFoundException");
    assert_eq!(v["denied"][0], "AccessDeniedException");
    assert_eq!(v["wrong_available"], "UNAVAILABLE", "nothing is stored under a digest the bytes do not have");
    assert_eq!(v["layer_available"], layer.len() as u64);
}

/// Now as SigV4 writes it: `20261203T120000Z`.
fn amz_date_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(['-', ':'], "")
}

/// Sends the head of an ECR API request for `target` from the loopback address `from`, signed
/// (in form only, the signature is made up) with `key` over `signed_headers`, announcing
/// `announced` body bytes; returns the open connection. `key` `None` sends no `Authorization`.
pub async fn api_head_from(
    from: &str,
    server: std::net::SocketAddr,
    target: &str,
    key: Option<&str>,
    signed_headers: &str,
    announced: usize,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = crate::limits::connect_from(from, server).await;
    let date = amz_date_now();
    let authorization = key.map_or(String::new(), |key| {
        format!(
            "Authorization: AWS4-HMAC-SHA256 Credential={key}/{}/us-east-1/ecr/aws4_request, SignedHeaders={signed_headers}, Signature={}\r\n",
            &date[..8],
            "0".repeat(64)
        )
    });
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\nX-Amz-Target: AmazonEC2ContainerRegistry_V20150921.{target}\r\n\
         Content-Type: application/x-amz-json-1.1\r\nX-Amz-Date: {date}\r\n{authorization}Content-Length: {announced}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

/// [`api_head_from`] 127.0.0.1, then `body`.
async fn api_request_head(
    server: std::net::SocketAddr,
    target: &str,
    key: Option<&str>,
    signed_headers: &str,
    announced: usize,
    body: &[u8],
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = api_head_from("127.0.0.1", server, target, key, signed_headers, announced).await;
    s.write_all(body).await.unwrap();
    s
}

/// What SDKs sign on the ECR API.
pub const SIGNED: &str = "content-type;host;x-amz-date;x-amz-target";

/// The head of an `UploadLayerPart` signed in form by `key`.
async fn layer_part_head(
    server: std::net::SocketAddr,
    key: &str,
    announced: usize,
    body: &[u8],
) -> tokio::net::TcpStream {
    api_request_head(server, "UploadLayerPart", Some(key), SIGNED, announced, body).await
}

/// The response's ECR error type, read to the end of the connection.
async fn error_type(mut s: tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    text.lines()
        .find_map(|l| l.strip_prefix("x-amzn-errortype: ").or_else(|| l.strip_prefix("X-Amzn-ErrorType: ")))
        .unwrap_or("")
        .trim()
        .to_owned()
}

/// Nothing unauthenticated holds the ECR API. A request that cannot be a principal's (no
/// signature, an unknown key, a required header left out of the signature) is refused before a
/// byte of its body is read. One signed in form with a known key id (key ids are not secrets)
/// can only be checked against its body, so the body is read, under a budget of unverified
/// bytes per client address (32 MiB: three 10 MB parts) and without an in-flight permit or a
/// layer-part permit: a fourth is throttled while signed requests go on, and the budget comes
/// back when the stalled clients go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_bodies_hold_only_their_budget() {
    let api = start().await;
    let addr = api.f.server.as_ref().unwrap().addr;
    let unsigned = api_request_head(addr, "UploadLayerPart", None, SIGNED, 10_000_000, b"").await;
    assert_eq!(error_type(unsigned).await, "MissingAuthenticationTokenException");
    let unknown = layer_part_head(addr, "AKIAUNKNOWN000000000", 10_000_000, b"").await;
    assert_eq!(error_type(unknown).await, "UnrecognizedClientException");
    for (signed, why) in [("host;x-amz-date", "X-Amz-Target"), ("content-type;x-amz-date;x-amz-target", "Host")] {
        let s = api_request_head(addr, "DeleteRepository", Some(CI_KEY), signed, 10_000_000, b"").await;
        assert_eq!(error_type(s).await, "InvalidSignatureException", "{why} left unsigned");
    }

    let small = br#"{"repositoryName":"team/x","uploadId":"0f0e0d0c-0b0a-4908-8706-050403020100","partFirstByte":0,"partLastByte":0,"layerPartBlob":"eA=="}"#;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(layer_part_head(addr, CI_KEY, 10_000_000, b"{\"layerPartBlob\":\"").await);
    }
    // The three hold their budget (a fourth is refused before its body) but no permit.
    eventually("the three are being read", std::time::Duration::from_secs(10), || async {
        metric(&api.f.metrics().await, "ferry_http_unverified_body_bytes") == 30_000_000.0
    })
    .await;
    assert_eq!(error_type(layer_part_head(addr, CI_KEY, 10_000_000, b"").await).await, "ThrottlingException");
    assert_eq!(metric(&api.f.metrics().await, "ferry_http_requests_in_flight"), 0.0);
    let v = boto3(&api, "print(json.dumps(len(ci.describe_repositories()['repositories'])))");
    assert_eq!(v, 0, "signed requests are served meanwhile");
    drop(stalled);
    eventually("the budget comes back", std::time::Duration::from_secs(10), || async {
        // Read now, and refused for its (made-up) signature.
        error_type(layer_part_head(addr, CI_KEY, small.len(), small).await).await == "InvalidSignatureException"
    })
    .await;
}

/// `ListImageReferrers` through boto3 lists what the registry API's referrers endpoint lists
/// for the same subject: filtered by artifact type, paged, none archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_lists_image_referrers_as_the_registry_api_does() {
    let f = TestFerry::start().await;
    let (subject_manifest, subject) = f.push_image("team/signed", "v1", &random_bytes(3000, 5)).await;
    let empty = f.push_blob("team/signed", b"{}").await;
    let mut pushed = Vec::new();
    for (artifact_type, note) in
        [("application/vnd.example.signature", "sig"), ("application/vnd.example.sbom", "sbom")]
    {
        let m = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_manifest.len()},
            "annotations": {"org.example.note": note},
        })
        .to_string();
        let d = digest(m.as_bytes());
        let resp = f.put_manifest("team/signed", &d, OCI_MANIFEST, m.as_bytes()).await;
        assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
        pushed.push((d, artifact_type));
    }
    let index: serde_json::Value = f
        .client
        .get(f.url(&format!("/v2/team/signed/referrers/{subject}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut from_registry: Vec<String> =
        index["manifests"].as_array().unwrap().iter().map(|m| m["digest"].as_str().unwrap().to_owned()).collect();
    from_registry.sort();

    let v = boto3_open(
        &f.base,
        &format!(
            r#"
subject = {{'imageDigest': '{subject}'}}
out = {{}}
r = ecr.list_image_referrers(repositoryName='team/signed', subjectId=subject)['referrers']
out['all'] = sorted(x['digest'] for x in r)
out['fields'] = sorted([x['artifactType'], x['annotations']['org.example.note'], x['artifactStatus'], x['size'] > 0] for x in r)
out['sbom'] = [x['digest'] for x in ecr.list_image_referrers(repositoryName='team/signed', subjectId=subject,
    filter={{'artifactTypes': ['application/vnd.example.sbom']}})['referrers']]
p1 = ecr.list_image_referrers(repositoryName='team/signed', subjectId=subject, maxResults=1)
p2 = ecr.list_image_referrers(repositoryName='team/signed', subjectId=subject, maxResults=1, nextToken=p1['nextToken'])
out['pages'] = [x['digest'] for x in p1['referrers'] + p2['referrers']] + ['nextToken' in p2]
out['archived'] = len(ecr.list_image_referrers(repositoryName='team/signed', subjectId=subject,
    filter={{'artifactStatus': 'ARCHIVED'}})['referrers'])
out['none'] = len(ecr.list_image_referrers(repositoryName='team/signed', subjectId={{'imageDigest': 'sha256:' + '1' * 64}})['referrers'])
out['no_repo'] = error(lambda: ecr.list_image_referrers(repositoryName='team/none', subjectId=subject))
out['bad_digest'] = error(lambda: ecr.list_image_referrers(repositoryName='team/signed', subjectId={{'imageDigest': 'nope'}}))
print(json.dumps(out))
"#,
        ),
    );
    assert_eq!(v["all"], serde_json::json!(from_registry), "{v}");
    assert_eq!(v["all"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["fields"],
        serde_json::json!([
            ["application/vnd.example.sbom", "sbom", "ACTIVE", true],
            ["application/vnd.example.signature", "sig", "ACTIVE", true]
        ])
    );
    let sbom = &pushed.iter().find(|(_, t)| t.ends_with("sbom")).unwrap().0;
    assert_eq!(v["sbom"], serde_json::json!([sbom]));
    let mut pages = from_registry.iter().map(|d| serde_json::json!(d)).collect::<Vec<_>>();
    pages.push(serde_json::json!(false));
    assert_eq!(v["pages"], serde_json::json!(pages));
    assert_eq!(v["archived"], 0);
    assert_eq!(v["none"], 0);
    assert_eq!(v["no_repo"], "RepositoryNotFoundException");
    assert_eq!(v["bad_digest"], "InvalidParameterException");
}

/// The audit trail, in a file: a skopeo push (each blob's `ecr:CompleteLayerUpload` and the
/// manifest's `ecr:PutImage`, by the principal whose password it used), an ECR API change and
/// a refused one, a pull (recorded because `audit.pulls` is on); nothing for reads of the API
/// or for the ping a client makes before it logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_records_who_changed_what_and_who_was_refused() {
    let trail_dir = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: Ferry creates it.
    let trail = trail_dir.path().join("audit").join("ferry.jsonl");
    let path = trail.to_str().unwrap().to_owned();
    let api = start_with(move |c| {
        c.audit.path = path;
        c.audit.pulls = true;
    })
    .await;
    let addr = api.f.server.as_ref().unwrap().addr;
    let password = run(&mut aws(CI_KEY, &api.ci_secret, &api.f.base, &["ecr", "get-login-password"]));
    let creds = format!("AWS:{}", password.trim());
    let work = tempfile::tempdir().unwrap();
    let built = build_layout(&work.path().join("src"), "v1", &["amd64"], 20_000, false, 33);
    run(skopeo(&policy(work.path())).args([
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &built.source,
        &format!("docker://{addr}/team/audited:v1"),
    ]));
    let resp = api.f.client.get(api.f.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 401, "the anonymous ping is refused, and not recorded");
    let resp = api
        .f
        .client
        .get(api.f.url("/v2/team/audited/manifests/v1"))
        .header("Accept", OCI_MANIFEST)
        .basic_auth("AWS", Some(password.trim()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v = boto3(
        &api,
        r#"
ci.describe_repositories()
ci.put_image_tag_mutability(repositoryName='team/audited', imageTagMutability='IMMUTABLE')
print(json.dumps(error(lambda: nobody.create_repository(repositoryName='team/nope'))))
"#,
    );
    assert_eq!(v, "AccessDeniedException");

    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&trail).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    eventually("the refusal reaches the file", std::time::Duration::from_secs(10), || async {
        read().iter().any(|e| e["outcome"] == "denied")
    })
    .await;
    let events = read();
    let ci = format!("arn:aws:iam::{ACCOUNT}:user/ci");
    let find = |op: &str| events.iter().filter(|e| e["operation"] == op).collect::<Vec<_>>();
    let put = find("manifest_put");
    assert_eq!(put.len(), 1, "{events:?}");
    assert_eq!(put[0]["principal"], ci.as_str());
    assert_eq!(put[0]["action"], "ecr:PutImage");
    assert_eq!(put[0]["repository"], "team/audited");
    assert_eq!(put[0]["reference"], "v1");
    assert_eq!(put[0]["outcome"], "success");
    assert_eq!(put[0]["client"], "127.0.0.1");
    assert!(put[0]["time"].as_str().unwrap().ends_with('Z'));
    let blobs = find("upload_finish").len() + find("upload_start").len();
    assert!(blobs >= 2, "the layer and the config: {events:?}");
    assert!(events.iter().all(|e| e["operation"] != "base"), "the ping is not recorded");
    let pulls = find("manifest_get");
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0]["action"], "ecr:BatchGetImage");
    assert!(find("DescribeRepositories").is_empty(), "reads of the API are not recorded");
    let changed = find("PutImageTagMutability");
    assert_eq!(changed.len(), 1);
    assert_eq!((changed[0]["api"].as_str(), changed[0]["outcome"].as_str()), (Some("ecr"), Some("success")));
    let token = find("GetAuthorizationToken");
    assert_eq!(token.len(), 1, "handing out a password is recorded");
    let refused = find("CreateRepository");
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["principal"], format!("arn:aws:iam::{ACCOUNT}:user/nobody"));
    assert_eq!(refused[0]["outcome"], "denied");
    assert!(refused[0]["detail"].as_str().unwrap().contains("ecr:CreateRepository"));
    let m = api.f.metrics().await;
    assert!(metric_sum(&m, "ferry_audit_events_total", &["outcome=\"denied\""]) >= 1.0);
}

/// Scanning configuration and account settings through boto3, as Terraform's
/// `aws_ecr_registry_scanning_configuration` and `aws_ecr_account_setting` drive them: kept,
/// shown, validated; a registry rule decides a repository's frequency; `BLOB_MOUNTING` set to
/// `DISABLED` turns a cross-repository mount into an upload session (the spec's fallback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_keeps_scanning_configuration_and_account_settings() {
    let f = TestFerry::start().await;
    let layer = b"a layer to mount";
    f.push_image("team/source", "v1", layer).await;
    let mount = |to: &'static str| {
        let url = f.url(&format!("/v2/{to}/blobs/uploads/?mount={}&from=team/source", digest(layer)));
        let client = f.client.clone();
        async move { client.post(url).send().await.unwrap().status() }
    };
    assert_eq!(mount("team/first").await, reqwest::StatusCode::CREATED, "mounts are on by default");

    let v = boto3_open(
        &f.base,
        r#"
out = {}
out['default'] = ecr.get_registry_scanning_configuration()['scanningConfiguration']
ecr.create_repository(repositoryName='team/scanned')
ecr.create_repository(repositoryName='other/plain')
r = ecr.put_image_scanning_configuration(repositoryName='other/plain', imageScanningConfiguration={'scanOnPush': True})
out['repo_put'] = r['imageScanningConfiguration']
out['repo_missing'] = error(lambda: ecr.put_image_scanning_configuration(repositoryName='team/none', imageScanningConfiguration={'scanOnPush': True}))
put = ecr.put_registry_scanning_configuration(scanType='BASIC', rules=[{'scanFrequency': 'SCAN_ON_PUSH',
    'repositoryFilters': [{'filter': 'team/*', 'filterType': 'WILDCARD'}]}])
out['put'] = put['registryScanningConfiguration']
out['got'] = ecr.get_registry_scanning_configuration()['scanningConfiguration']
out['bad_frequency'] = error(lambda: ecr.put_registry_scanning_configuration(scanType='BASIC', rules=[{'scanFrequency': 'HOURLY', 'repositoryFilters': []}]))
out['too_many'] = error(lambda: ecr.put_registry_scanning_configuration(scanType='BASIC', rules=[{'scanFrequency': 'MANUAL', 'repositoryFilters': []}] * 3))
b = ecr.batch_get_repository_scanning_configuration(repositoryNames=['team/scanned', 'other/plain', 'team/none'])
out['repos'] = sorted([c['repositoryName'], c['scanFrequency'], c['scanOnPush'], [x['filter'] for x in c['appliedScanFilters']]] for c in b['scanningConfigurations'])
out['repo_failures'] = [(x['repositoryName'], x['failureCode']) for x in b['failures']]
out['setting_default'] = ecr.get_account_setting(name='BLOB_MOUNTING')['value']
r = ecr.put_account_setting(name='BLOB_MOUNTING', value='DISABLED')
out['setting_put'] = {'name': r['name'], 'value': r['value']}
ecr.put_account_setting(name='REGISTRY_POLICY_SCOPE', value='V1')
out['settings'] = [ecr.get_account_setting(name=n)['value'] for n in ['BLOB_MOUNTING', 'REGISTRY_POLICY_SCOPE', 'BASIC_SCAN_TYPE_VERSION']]
out['bad_name'] = error(lambda: ecr.get_account_setting(name='NOPE'))
out['bad_value'] = error(lambda: ecr.put_account_setting(name='BLOB_MOUNTING', value='MAYBE'))
print(json.dumps(out))
"#,
    );
    assert_eq!(v["default"], serde_json::json!({"scanType": "BASIC", "rules": []}), "{v}");
    assert_eq!(v["repo_put"], serde_json::json!({"scanOnPush": true}));
    assert_eq!(v["repo_missing"], "RepositoryNotFoundException");
    let rules = serde_json::json!({"scanType": "BASIC", "rules": [{"scanFrequency": "SCAN_ON_PUSH",
        "repositoryFilters": [{"filter": "team/*", "filterType": "WILDCARD"}]}]});
    assert_eq!(v["put"], rules);
    assert_eq!(v["got"], rules);
    assert_eq!(v["bad_frequency"], "InvalidParameterException");
    assert_eq!(v["too_many"], "InvalidParameterException");
    assert_eq!(
        v["repos"],
        serde_json::json!([
            ["other/plain", "SCAN_ON_PUSH", true, []],
            ["team/scanned", "SCAN_ON_PUSH", true, ["team/*"]]
        ])
    );
    assert_eq!(v["repo_failures"], serde_json::json!([["team/none", "REPOSITORY_NOT_FOUND"]]));
    assert_eq!(v["setting_default"], "ENABLED");
    assert_eq!(v["setting_put"], serde_json::json!({"name": "BLOB_MOUNTING", "value": "DISABLED"}));
    assert_eq!(v["settings"], serde_json::json!(["DISABLED", "V1", "AWS_NATIVE"]));
    assert_eq!(v["bad_name"], "ValidationException");
    assert_eq!(v["bad_value"], "ValidationException");
    assert_eq!(mount("team/second").await, reqwest::StatusCode::ACCEPTED, "with mounting off, a session instead");
}
