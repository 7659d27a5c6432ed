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

fn venv() -> String {
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

async fn start() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let everything =
        serde_json::json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:*","Resource":"*"}]});
    let nothing = serde_json::json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:DescribeImages","Resource":"*"}]});
    let (ci, ci_secret) = principal(dir.path(), "ci", CI_KEY, everything);
    let (nobody, nobody_secret) = principal(dir.path(), "nobody", NOBODY_KEY, nothing);
    let auth = AuthConfig {
        enabled: true,
        registry_id: ACCOUNT.into(),
        principals: vec![ci, nobody],
        ..AuthConfig::default()
    };
    let f = TestFerry::start_with(move |c| c.auth = auth).await;
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
