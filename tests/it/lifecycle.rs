//! Lifecycle policies and pull-through cache limits end to end, on a manual clock (no sleeps):
//! boto3 puts, reads, previews and deletes policies (and gets ECR's exact errors); the preview
//! equals what `ferry lifecycle run` then expires; referrers and index children go with their
//! image and stay with a kept one; pull times recorded off the request path survive a restart
//! and decide `sinceImagePulled`; a pull-through rule over `max_bytes` evicts the least
//! recently pulled images, its stored bytes end under the limit after a collection, and an
//! evicted image is fetched again from the upstream.

use crate::ecr_api::python_json;
use crate::harness::*;
use crate::upstream::RealUpstream;
use ferry::clock::{ManualClock, SharedClock};
use ferry::config::{ByteSize, Config, HumanDuration, PullThroughRule};
use reqwest::StatusCode;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const DAY: Duration = Duration::from_secs(86_400);

/// Runs a boto3 script against an open Ferry's ECR API (`ecr` is the client; `error(call)`
/// gives the error code and message); returns the JSON it prints.
fn boto3(base: &str, body: &str) -> serde_json::Value {
    let script = format!(
        r#"
import boto3, botocore, json
ecr = boto3.client('ecr', endpoint_url='{base}', region_name='us-east-1',
                   aws_access_key_id='AKIAOPEN', aws_secret_access_key='open')
def error(call):
    try:
        call()
        return None
    except botocore.exceptions.ClientError as e:
        return [e.response['Error']['Code'], e.response['Error']['Message']]
{body}
"#
    );
    python_json(&script)
}

/// Pushes an image (a config naming `name` and one layer) under `reference` (a tag, or its
/// digest for an untagged image), optionally referring to `subject`; returns its digest.
async fn image(f: &TestFerry, repo: &str, reference: Option<&str>, name: &str, subject: Option<&str>) -> String {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","name":"{name}"}}"#).into_bytes();
    let layer = format!("layer of {name}").into_bytes();
    let config_digest = f.push_blob(repo, &config).await;
    let layer_digest = f.push_blob(repo, &layer).await;
    let mut m = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    });
    if let Some(s) = subject {
        m["subject"] = serde_json::json!({"mediaType": OCI_MANIFEST, "digest": s, "size": 1});
        m["artifactType"] = serde_json::json!("application/vnd.example.signature");
    }
    let bytes = serde_json::to_vec(&m).unwrap();
    let d = digest(&bytes);
    let resp = f.put_manifest(repo, reference.unwrap_or(&d), OCI_MANIFEST, &bytes).await;
    assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", resp.text().await);
    d
}

/// Pushes an index of `children` under `tag`; returns its digest.
async fn index(f: &TestFerry, repo: &str, tag: &str, children: &[&str]) -> String {
    let mut manifests = Vec::new();
    for c in children {
        let resp = f.client.get(f.url(&format!("/v2/{repo}/manifests/{c}"))).send().await.unwrap();
        let size = resp.bytes().await.unwrap().len();
        manifests.push(serde_json::json!({"mediaType": OCI_MANIFEST, "digest": c, "size": size,
            "platform": {"architecture": "amd64", "os": "linux"}}));
    }
    let bytes =
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}))
            .unwrap();
    let resp = f.put_manifest(repo, tag, OCI_INDEX, &bytes).await;
    assert_eq!(resp.status(), StatusCode::CREATED, "{:?}", resp.text().await);
    digest(&bytes)
}

async fn manifest_status(f: &TestFerry, repo: &str, reference: &str) -> StatusCode {
    f.client
        .get(f.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap()
        .status()
}

async fn lifecycle_run(config: &Config, clock: &SharedClock) -> ferry::lifecycle::worker::LifecycleReport {
    ferry::run_lifecycle(config, None, false, clock.clone()).await.expect("lifecycle runs")
}

/// The protective-rule policy from ECR's examples, plus an untagged age rule: keep prod*
/// always, expire untagged images older than 30 days, keep the newest 2 of the rest.
const POLICY: &str = r#"{"rules":[
 {"rulePriority":1,"description":"keep prod","selection":{"tagStatus":"tagged","tagPatternList":["prod*"],"countType":"imageCountMoreThan","countNumber":9999},"action":{"type":"expire"}},
 {"rulePriority":2,"description":"old untagged","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":30},"action":{"type":"expire"}},
 {"rulePriority":3,"description":"newest two","selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":2},"action":{"type":"expire"}}]}"#;

/// Policies through boto3 (put, get, preview, delete and their errors); the preview names
/// exactly what the run then expires; a signature goes with its image; an index's children
/// stay with it; what is kept still pulls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_previewed_through_boto3_expires_exactly_what_the_preview_said() {
    let manual = ManualClock::new();
    let clock: SharedClock = Arc::new(manual.clone());
    let trail_dir = tempfile::tempdir().unwrap();
    let trail = trail_dir.path().join("audit.jsonl");
    let trail_path = trail.to_str().unwrap().to_owned();
    let f = TestFerry::start_with_clock(clock.clone(), move |c| c.audit.path = trail_path).await;
    let repo = "team/app";
    let prod = image(&f, repo, Some("prod-1"), "prod", None).await; // day 0
    let v1 = image(&f, repo, Some("v1"), "v1", None).await; // day 0
    let signature = image(&f, repo, None, "sig-of-v1", Some(&v1)).await;
    manual.advance(5 * DAY);
    let untagged = image(&f, repo, None, "untagged", None).await; // day 5
    manual.advance(5 * DAY);
    let v2 = image(&f, repo, Some("v2"), "v2", None).await; // day 10
    manual.advance(10 * DAY);
    let v3 = image(&f, repo, Some("v3"), "v3", None).await; // day 20
    manual.advance(5 * DAY);
    let amd = image(&f, repo, None, "multi-amd64", None).await;
    let arm = image(&f, repo, None, "multi-arm64", None).await;
    let multi = index(&f, repo, "multi", &[&amd, &arm]).await; // day 25
                                                               // Retagging v1 does not make it newer (ECR keeps the first push time).
    let v1_bytes =
        f.client.get(f.url(&format!("/v2/{repo}/manifests/{v1}"))).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(f.put_manifest(repo, "v1-again", OCI_MANIFEST, &v1_bytes).await.status(), StatusCode::CREATED);
    manual.advance(15 * DAY); // day 40

    let v = boto3(
        &f.base,
        &format!(
            r#"
out = {{}}
policy = {policy:?}
out['put'] = ecr.put_lifecycle_policy(repositoryName='{repo}', lifecyclePolicyText=policy)['repositoryName']
out['get'] = ecr.get_lifecycle_policy(repositoryName='{repo}')['lifecyclePolicyText'] == policy
out['no_preview'] = error(lambda: ecr.get_lifecycle_policy_preview(repositoryName='{repo}'))
out['started'] = ecr.start_lifecycle_policy_preview(repositoryName='{repo}')['status']
ecr.get_waiter('lifecycle_policy_preview_complete').wait(repositoryName='{repo}')
p = ecr.get_lifecycle_policy_preview(repositoryName='{repo}')
out['preview'] = sorted([[r['imageDigest'], r['appliedRulePriority'], r['action']['type'], sorted(r.get('imageTags', []))] for r in p['previewResults']])
out['summary'] = p['summary']['expiringImageTotalCount']
page = ecr.get_lifecycle_policy_preview(repositoryName='{repo}', maxResults=1)
out['paged'] = [len(page['previewResults']), 'nextToken' in page]
out['untagged_only'] = len(ecr.get_lifecycle_policy_preview(repositoryName='{repo}', filter={{'tagStatus': 'UNTAGGED'}})['previewResults'])
out['null'] = error(lambda: ecr.put_lifecycle_policy(repositoryName='{repo}', lifecyclePolicyText=policy.replace('"description":"keep prod"', '"description":null')))
out['no_rules'] = error(lambda: ecr.put_lifecycle_policy(repositoryName='{repo}', lifecyclePolicyText='{{"rules":[]}}' + ' ' * 90))
out['any_first'] = error(lambda: ecr.put_lifecycle_policy(repositoryName='{repo}', lifecyclePolicyText=policy.replace('"rulePriority":1,', '"rulePriority":4,')))
out['zero'] = error(lambda: ecr.put_lifecycle_policy(repositoryName='{repo}', lifecyclePolicyText=policy.replace('"rulePriority":3', '"rulePriority":0')))
out['missing_repo'] = error(lambda: ecr.get_lifecycle_policy(repositoryName='no/such'))
print(json.dumps(out))
"#,
            policy = POLICY,
        ),
    );
    assert_eq!(v["put"], repo);
    assert_eq!(v["get"], true);
    assert_eq!(v["no_preview"][0], "LifecyclePolicyPreviewNotFoundException");
    assert_eq!(v["started"], "COMPLETE");
    let mut expected = vec![
        (untagged.clone(), 2, vec![]),
        (v2.clone(), 3, vec!["v2".to_string()]),
        (v1.clone(), 3, vec!["v1".to_string(), "v1-again".to_string()]),
        (signature.clone(), 3, vec![]),
    ];
    expected.sort();
    let preview: Vec<(String, u64, Vec<String>)> = v["preview"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r[2], "EXPIRE");
            let tags = r[3].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
            (r[0].as_str().unwrap().to_owned(), r[1].as_u64().unwrap(), tags)
        })
        .collect();
    assert_eq!(preview, expected, "prod is protected, v3 and the index are the newest two, the signature goes with v1");
    assert_eq!(v["summary"], 4);
    assert_eq!(v["paged"], serde_json::json!([1, true]));
    assert_eq!(v["untagged_only"], 2);
    assert_eq!(
        v["null"],
        serde_json::json!(["InvalidParameterException", "Invalid parameter at 'LifecyclePolicyText' failed to satisfy constraint: 'Lifecycle policy validation failure: instance failed to match exactly one schema (matched 0 out of 2)'"])
    );
    assert_eq!(
        v["no_rules"],
        serde_json::json!(["InvalidParameterException", "Invalid parameter at 'LifecyclePolicyText' failed to satisfy constraint: 'Lifecycle policy validation failure: array is too short: must have at least 1 elements but instance has 0 elements'"])
    );
    assert_eq!(
        v["any_first"],
        serde_json::json!(["InvalidParameterException", "Invalid parameter at 'LifecyclePolicyText' failed to satisfy constraint: 'Lifecycle policy validation failure: the rule with tagStatus any must have the highest rulePriority'"])
    );
    assert_eq!(
        v["zero"],
        serde_json::json!(["InvalidParameterException", "Invalid parameter at 'LifecyclePolicyText' failed to satisfy constraint: 'Lifecycle policy validation failure: numeric instance is lower than the required minimum (minimum: 1, found: 0)'"])
    );
    assert_eq!(v["missing_repo"][0], "RepositoryNotFoundException");

    // The run expires exactly what the preview listed.
    let report = lifecycle_run(&f.config, &clock).await;
    let run: BTreeSet<(String, u64)> = report
        .repositories
        .iter()
        .flat_map(|r| r.expired.iter().map(|e| (e.digest.to_string(), e.rule_priority)))
        .collect();
    let previewed: BTreeSet<(String, u64)> = expected.iter().map(|(d, p, _)| (d.clone(), *p)).collect();
    assert_eq!(run, previewed);
    // Each expiry is in the audit trail, by the lifecycle worker.
    let expired_digests: BTreeSet<String> = run.iter().map(|(d, _)| d.clone()).collect();
    eventually("the expiries reach the audit file", std::time::Duration::from_secs(10), || async {
        let audited: BTreeSet<String> = std::fs::read_to_string(&trail)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["principal"] == "ferry:lifecycle" && e["action"] == "ecr:BatchDeleteImage")
            .filter_map(|e| e["reference"].as_str().map(str::to_owned))
            .collect();
        audited == expired_digests
    })
    .await;
    for gone in [&untagged, &v2, &v1, &signature] {
        assert_eq!(manifest_status(&f, repo, gone).await, StatusCode::NOT_FOUND, "{gone} expired");
    }
    for tag in ["v1", "v1-again", "v2"] {
        assert_eq!(manifest_status(&f, repo, tag).await, StatusCode::NOT_FOUND, "tag {tag} went with its image");
    }
    for kept in [&prod, &v3, &multi, &amd, &arm] {
        assert_eq!(manifest_status(&f, repo, kept).await, StatusCode::OK, "{kept} kept");
    }
    assert_eq!(manifest_status(&f, repo, "multi").await, StatusCode::OK);
    // A second run finds nothing more to do.
    assert!(lifecycle_run(&f.config, &clock).await.repositories.iter().all(|r| r.expired.is_empty()));

    let v = boto3(
        &f.base,
        &format!(
            r#"
out = {{}}
got = ecr.get_lifecycle_policy(repositoryName='{repo}')
out['evaluated'] = got['lastEvaluatedAt'].timestamp()
out['deleted'] = ecr.delete_lifecycle_policy(repositoryName='{repo}')['repositoryName']
out['gone'] = error(lambda: ecr.get_lifecycle_policy(repositoryName='{repo}'))
out['no_policy_preview'] = error(lambda: ecr.start_lifecycle_policy_preview(repositoryName='{repo}'))
print(json.dumps(out))
"#
        ),
    );
    assert_eq!(v["evaluated"].as_f64().unwrap() as u64, clock.now_ms() / 1000);
    assert_eq!(v["deleted"], repo);
    assert_eq!(v["gone"][0], "LifecyclePolicyNotFoundException");
    assert_eq!(v["no_policy_preview"][0], "LifecyclePolicyNotFoundException");
}

/// The last pull an image's link records.
async fn last_pulled(f: &TestFerry, link: &str) -> Option<u64> {
    let bytes = f.read_object(link).await.expect("the image's link");
    serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["last_pulled_ms"].as_u64()
}

/// A pull is noted without a write, written by the flush (here at shutdown), survives a
/// restart, and keeps a pulled image from a `sinceImagePulled` rule that expires the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_pull_times_survive_a_restart_and_decide_since_image_pulled() {
    let manual = ManualClock::new();
    let clock: SharedClock = Arc::new(manual.clone());
    let mut f = TestFerry::start_with_clock(clock.clone(), |_| {}).await;
    let pulled = image(&f, "app", Some("pulled"), "pulled", None).await;
    let idle = image(&f, "app", Some("idle"), "idle", None).await;
    manual.advance(20 * DAY);
    assert_eq!(manifest_status(&f, "app", "pulled").await, StatusCode::OK);
    // The image's link in the index keeps its last pull.
    let link = format!("repos/app/_manifests/sha256/{}", &pulled[7..]);
    assert_eq!(last_pulled(&f, &link).await, None, "a pull writes nothing on the request path");
    f.restart_with_clock(clock.clone()).await;
    assert_eq!(last_pulled(&f, &link).await, Some(clock.now_ms()), "the pull was written at shutdown");
    manual.advance(15 * DAY); // pulled 15 days ago; idle pushed 35 days ago, never pulled
    let policy = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"sinceImagePulled","countUnit":"days","countNumber":30},"action":{"type":"expire"}}]}"#;
    let v = boto3(
        &f.base,
        &format!("ecr.put_lifecycle_policy(repositoryName='app', lifecyclePolicyText={policy:?})\nprint('{{}}')"),
    );
    assert_eq!(v, serde_json::json!({}));
    let report = lifecycle_run(&f.config, &clock).await;
    let expired: Vec<String> = report.repositories[0].expired.iter().map(|e| e.digest.to_string()).collect();
    assert_eq!(expired, vec![idle.clone()]);
    assert_eq!(manifest_status(&f, "app", "pulled").await, StatusCode::OK);
    assert_eq!(manifest_status(&f, "app", "idle").await, StatusCode::NOT_FOUND);
}

/// A repository creation template for pull-through caches attaches its lifecycle policy to
/// every cached repository, as in ECR; `max_bytes` keeps a rule's cache under its limit by
/// evicting the least recently pulled images; an evicted image is fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cache_evicts_the_least_recently_pulled_images_and_fetches_them_again() {
    const MIB: usize = 1 << 20;
    let upstream = RealUpstream::start();
    let client = reqwest::Client::new();
    let mut rng = Rng::new(Rng::seed("eviction"));
    let mut layers = Vec::new();
    for i in 0..10 {
        let layer: Vec<u8> = (0..30 * MIB).map(|_| rng.next_u64() as u8).collect();
        let (status, _, _) =
            crate::gc::push(&client, &upstream.base, &format!("lib/img{i}"), "v1", std::slice::from_ref(&layer)).await;
        assert_eq!(status, StatusCode::CREATED);
        layers.push(digest(&layer));
    }
    let manual = ManualClock::new();
    let clock: SharedClock = Arc::new(manual.clone());
    let mut f = TestFerry::start_with_clock(clock.clone(), |c| {
        c.pull_through = vec![PullThroughRule {
            prefix: "hub".into(),
            upstream: upstream.base.clone(),
            max_bytes: ByteSize(100 * MIB as u64),
            ..Default::default()
        }];
        c.gc.grace = HumanDuration(Duration::from_secs(60));
    })
    .await;
    let pull = |f: &TestFerry, i: usize| {
        let (client, base, layer) = (f.client.clone(), f.base.clone(), layers[i].clone());
        async move {
            let resp = client
                .get(format!("{base}/v2/hub/lib/img{i}/manifests/v1"))
                .header("Accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let bytes = client
                .get(format!("{base}/v2/hub/lib/img{i}/blobs/{layer}"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(digest(&bytes), layer, "img{i} pulls and re-hashes");
        }
    };
    // A template for the cache's repositories gives each a lifecycle policy, as in ECR.
    let keep_a_year = r#"{"rules":[{"rulePriority":1,"selection":{"tagStatus":"any","countType":"sinceImagePushed","countUnit":"days","countNumber":365},"action":{"type":"expire"}}]}"#;
    let v = boto3(
        &f.base,
        &format!(
            r#"
ecr.create_repository_creation_template(prefix='hub', appliedFor=['PULL_THROUGH_CACHE'], lifecyclePolicy={keep_a_year:?})
print(json.dumps({{}}))
"#
        ),
    );
    assert_eq!(v, serde_json::json!({}));
    // 300 MiB pulled in order, one minute apart; img0 and img1 again last, so img2.. are the
    // least recently pulled.
    for i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1] {
        pull(&f, i).await;
        manual.advance(Duration::from_secs(60));
    }
    let blob_gets =
        |i: usize, at_least: usize| upstream.requests("GET", &format!("/v2/lib/img{i}/blobs/{}", layers[i]), at_least);
    assert_eq!(blob_gets(2, 1), 1);
    f.restart_with_clock(clock.clone()).await; // writes the noted pulls
    let v = boto3(
        &f.base,
        "print(json.dumps(ecr.get_lifecycle_policy(repositoryName='hub/lib/img0')['lifecyclePolicyText']))",
    );
    assert_eq!(v, serde_json::json!(keep_a_year), "the cached repository has the template's policy");

    let report = lifecycle_run(&f.config, &clock).await;
    let cache = &report.caches[0];
    assert!(cache.bytes_before > 300 * MIB as u64, "{:?}", cache.bytes_before);
    assert!(cache.bytes_after <= 90 * MIB as u64, "down to the low-water mark: {}", cache.bytes_after);
    let evicted: BTreeSet<String> = cache.evicted.iter().map(|(repo, _)| repo.clone()).collect();
    let expected: BTreeSet<String> = (2..10).map(|i| format!("hub/lib/img{i}")).collect();
    assert_eq!(evicted, expected, "the least recently pulled go; img0 and img1 stay");

    // After the grace period a collection frees the bytes: the cache holds under its limit.
    manual.advance(Duration::from_secs(3600));
    ferry::collect_garbage_with_clock(&f.config, false, clock.clone(), &|_| {}).await.expect("gc runs");
    let stored: u64 = f.stored_objects().await.iter().filter(|(k, _)| k.starts_with("blobs/")).map(|(_, s)| s).sum();
    assert!(stored <= 100 * MIB as u64, "stored {stored} bytes");
    let usage = ferry::usage(&f.config).await.expect("usage");
    assert_eq!(usage.total_bytes, stored, "ferry usage matches what is stored");
    assert_eq!(usage.rules[0].bytes, stored);

    // An evicted image is simply fetched again.
    pull(&f, 3).await;
    assert_eq!(blob_gets(3, 2), 2, "img3 came from the upstream again");
    pull(&f, 0).await;
    assert_eq!(blob_gets(0, 1), 1, "img0 is still cached");
}
