//! The S3 backend: everything in one bucket (under an optional key prefix), so any number of
//! Ferry replicas pointed at the bucket behave as one registry. This file owns the client
//! (setup, the counted request helpers, listing, presigning) and the [`Storage`] promises over
//! it; `uploads` owns the segment protocol, `error` what a failure means. Object paths come
//! from [`keys`]. Knows nothing of repositories.

mod error;
use super::keys::{self, UploadObject};
use super::{
    ByteRange, ByteStream, Error, Key, ListPage, OnWritten, PutMode, Result, Storage, StoredBlob, UploadId, Version,
};
use crate::config::S3Config;
use crate::metrics::Metrics;
use crate::oci::Digest;
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{Delete, ObjectIdentifier, ServerSideEncryption};
use aws_sdk_s3::Client;
use bytes::Bytes;
use error::{backend_error, detail, is_condition_failed, sdk_error, status, HttpResponse};
use futures_util::StreamExt;
use std::io;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Adds the configured server-side encryption to any request builder that writes an object.
macro_rules! with_sse {
    ($store:expr, $req:expr) => {{
        let mut req = $req;
        if let Some(sse) = &$store.sse {
            req = req.server_side_encryption(sse.clone());
        }
        if let Some(k) = &$store.kms_key_id {
            req = req.ssekms_key_id(k);
        }
        req
    }};
}

mod uploads;

/// A listing: objects (key, size, last modified) and common prefixes.
type Listing = (Vec<(String, u64, Option<SystemTime>)>, Vec<String>);

/// Storage in one S3 bucket.
#[derive(Clone)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    prefix: String,
    part_size: usize,
    sse: Option<ServerSideEncryption>,
    kms_key_id: Option<String>,
    metrics: Option<Arc<Metrics>>,
    redirect: bool,
    /// Set once the server has said it cannot list multipart uploads (some S3-compatible
    /// servers cannot), so the cleanup stops asking and warns once.
    no_multipart_listing: Arc<std::sync::atomic::AtomicBool>,
}

impl S3Storage {
    /// Connects to the bucket and checks that it is there, with a message that says what to fix.
    pub async fn connect(cfg: &S3Config, metrics: Option<Arc<Metrics>>) -> std::result::Result<Self, String> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(cfg.region.clone()));
        if !cfg.access_key_id.is_empty() {
            let secret = cfg.resolved_secret().map_err(|e| e.to_string())?.unwrap_or_default();
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                &cfg.access_key_id,
                secret,
                None,
                None,
                "ferry-config",
            ));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared).force_path_style(cfg.force_path_style);
        if !cfg.endpoint.is_empty() {
            builder = builder.endpoint_url(&cfg.endpoint);
        }
        let client = Client::from_conf(builder.build());
        let store = Self {
            client,
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.clone(),
            part_size: usize::try_from(cfg.part_size.0).unwrap_or(usize::MAX),
            sse: match cfg.sse.as_str() {
                "AES256" => Some(ServerSideEncryption::Aes256),
                "aws:kms" => Some(ServerSideEncryption::AwsKms),
                _ => None,
            },
            kms_key_id: (!cfg.kms_key_id.is_empty()).then(|| cfg.kms_key_id.clone()),
            metrics,
            redirect: cfg.redirect,
            no_multipart_listing: Arc::default(),
        };
        store.client.head_bucket().bucket(&store.bucket).send().await.map_err(|e| {
            format!(
                "storage.s3: cannot reach bucket {:?} at {}: {}. Check storage.s3.bucket, endpoint, region and credentials",
                cfg.bucket,
                if cfg.endpoint.is_empty() { "AWS" } else { &cfg.endpoint },
                detail(&e)
            )
        })?;
        Ok(store)
    }

    /// Counts one S3 request: `ferry_s3_requests_total{operation,result}` and its latency.
    fn observe<T, E>(&self, operation: &str, started: Instant, result: &std::result::Result<T, E>) {
        if let Some(m) = &self.metrics {
            m.s3.requests.with_label_values(&[operation, if result.is_ok() { "ok" } else { "error" }]).inc();
            m.s3.duration.with_label_values(&[operation]).observe(started.elapsed().as_secs_f64());
        }
    }

    /// Sends one request, counted as `operation` in the S3 metrics; a failure names the operation.
    async fn send<T, E>(
        &self,
        operation: &'static str,
        request: impl std::future::Future<Output = std::result::Result<T, aws_sdk_s3::error::SdkError<E, HttpResponse>>>,
    ) -> Result<T>
    where
        E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + Send + Sync + 'static,
    {
        let started = Instant::now();
        let result = request.await;
        self.observe(operation, started, &result);
        result.map_err(|e| sdk_error(operation, e))
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    fn blob_key(&self, d: &Digest) -> String {
        self.key(&keys::blob_object(d))
    }

    fn upload_key(&self, id: &UploadId, object: UploadObject) -> String {
        self.key(&keys::upload_object(id, object))
    }

    /// `bucket/key`, URL-encoded, as `CopySource` wants it.
    fn copy_source(&self, key: &str) -> String {
        let encoded = percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
            .replace("%2F", "/");
        format!("{}/{encoded}", self.bucket)
    }

    async fn put(&self, key: String, body: Bytes) -> Result<()> {
        let req = with_sse!(self, self.client.put_object().bucket(&self.bucket).key(key).body(S3Body::from(body)));
        self.send("PutObject", req.send()).await?;
        Ok(())
    }

    async fn get(&self, key: String, range: Option<ByteRange>) -> Result<Option<S3Body>> {
        Ok(self.get_sized(key, range).await?.map(|(body, _)| body))
    }

    /// A GET that also returns the whole object's size (from `Content-Range` for a range).
    async fn get_sized(&self, key: String, range: Option<ByteRange>) -> Result<Option<(S3Body, Option<u64>)>> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some(r) = range {
            req = req.range(format!("bytes={}-{}", r.start, r.end));
        }
        let started = Instant::now();
        let result = req.send().await;
        self.observe("GetObject", started, &result);
        match result {
            Ok(out) => {
                let total = match out.content_range() {
                    Some(cr) => cr.rsplit('/').next().and_then(|t| t.parse().ok()),
                    None => out.content_length().and_then(|l| u64::try_from(l).ok()),
                };
                Ok(Some((out.body, total)))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(sdk_error("GetObject", e)),
        }
    }

    /// Creates `key` only if it does not exist (`If-None-Match: *`); `Conflict` when it does.
    async fn put_if_absent(&self, key: String, body: Bytes) -> Result<()> {
        let req = with_sse!(
            self,
            self.client.put_object().bucket(&self.bucket).key(&key).body(S3Body::from(body)).if_none_match("*")
        );
        let started = Instant::now();
        let result = req.send().await;
        self.observe("PutObject", started, &result);
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(status(&e), false) => {
                Err(Error::Conflict { key: key.strip_prefix(&self.prefix).unwrap_or(&key).to_owned() })
            }
            Err(e) => Err(sdk_error("PutObject", e)),
        }
    }

    async fn head(&self, key: String) -> Result<Option<(u64, Option<SystemTime>)>> {
        let started = Instant::now();
        let result = self.client.head_object().bucket(&self.bucket).key(key).send().await;
        self.observe("HeadObject", started, &result);
        match result {
            Ok(out) => Ok(Some((
                out.content_length.unwrap_or(0).max(0) as u64,
                out.last_modified.and_then(|t| SystemTime::try_from(t).ok()),
            ))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(sdk_error("HeadObject", e)),
        }
    }

    /// Every object under `prefix`: (key, size, last modified).
    async fn list_all(&self, prefix: &str) -> Result<Vec<(String, u64, Option<SystemTime>)>> {
        Ok(self.list(prefix, false).await?.0)
    }

    /// One listing, every page: the objects under `prefix` (key, size, last modified) and, with
    /// `one_level`, the common prefixes one `/` further down.
    async fn list(&self, prefix: &str, one_level: bool) -> Result<Listing> {
        let (mut objects, mut prefixes) = (Vec::new(), Vec::new());
        let mut token = None;
        loop {
            let mut req =
                self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).set_continuation_token(token);
            if one_level {
                req = req.delimiter("/");
            }
            let started = Instant::now();
            let resp = req.send().await;
            self.observe("ListObjectsV2", started, &resp);
            let resp = resp.map_err(|e| sdk_error("ListObjectsV2", e))?;
            for o in resp.contents() {
                if let Some(k) = o.key() {
                    let modified = o.last_modified().and_then(|t| SystemTime::try_from(*t).ok());
                    objects.push((k.to_owned(), o.size().unwrap_or(0).max(0) as u64, modified));
                }
            }
            prefixes.extend(resp.common_prefixes().iter().filter_map(|p| p.prefix().map(str::to_owned)));
            match resp.next_continuation_token() {
                Some(t) if resp.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok((objects, prefixes)),
            }
        }
    }

    async fn delete_keys(&self, keys: Vec<String>) -> Result<()> {
        for batch in keys.chunks(1000) {
            let objects: Vec<ObjectIdentifier> =
                batch.iter().filter_map(|k| ObjectIdentifier::builder().key(k).build().ok()).collect();
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| backend_error("DeleteObjects", e))?;
            self.send("DeleteObjects", self.client.delete_objects().bucket(&self.bucket).delete(delete).send()).await?;
        }
        Ok(())
    }
}

/// An S3 body as a byte stream.
fn body_stream(body: S3Body) -> ByteStream {
    futures_util::stream::unfold(body, |mut b| async move {
        let item = b.next().await?;
        Some((item.map_err(io::Error::other), b))
    })
    .boxed()
}

#[async_trait]
impl Storage for S3Storage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.head(self.blob_key(digest)).await?.map(|(size, _)| size))
    }

    async fn blob_read(&self, digest: &Digest, range: Option<ByteRange>, size: u64) -> Result<ByteStream> {
        match self.get_sized(self.blob_key(digest), range).await? {
            Some((body, Some(stored))) if stored == size => Ok(body_stream(body)),
            Some((_, stored)) => {
                Err(Error::Corrupt(format!("{digest} is {stored:?} bytes in S3, its link records {size}")))
            }
            None => Err(Error::NotFound),
        }
    }

    async fn blob_url(&self, digest: &Digest) -> Result<Option<String>> {
        if !self.redirect {
            return Ok(None);
        }
        let presign = aws_sdk_s3::presigning::PresigningConfig::expires_in(std::time::Duration::from_secs(900))
            .map_err(|e| backend_error("presign", e))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.blob_key(digest))
            .presigned(presign)
            .await
            .map_err(|e| sdk_error("presign", e))?;
        Ok(Some(req.uri().to_owned()))
    }

    async fn blob_read_small_unverified(&self, digest: &Digest) -> Result<Bytes> {
        match self.get(self.blob_key(digest), None).await? {
            Some(body) => Ok(body.collect().await.map_err(|e| backend_error("GetObject", e))?.into_bytes()),
            None => Err(Error::NotFound),
        }
    }

    async fn blob_put_small(&self, digest: &Digest, bytes: Bytes) -> Result<()> {
        self.put(self.blob_key(digest), bytes).await
    }

    async fn upload_create(&self, id: &UploadId, state: Bytes) -> Result<()> {
        self.put(self.upload_key(id, UploadObject::State), state).await
    }

    async fn upload_state(&self, id: &UploadId) -> Result<Bytes> {
        match self.get(self.upload_key(id, UploadObject::State), None).await? {
            Some(body) => Ok(body.collect().await.map_err(|e| backend_error("GetObject", e))?.into_bytes()),
            None => Err(Error::NotFound),
        }
    }

    async fn upload_seal(&self, id: &UploadId) -> Result<()> {
        // Exactly one replica creates the marker; then the state goes, so every replica's
        // `upload_state` answers NotFound from here on.
        self.put_if_absent(self.upload_key(id, UploadObject::Sealed), Bytes::new()).await?;
        let state = self.upload_key(id, UploadObject::State);
        self.send("DeleteObject", self.client.delete_object().bucket(&self.bucket).key(state).send()).await?;
        Ok(())
    }

    async fn upload_append_observed(&self, id: &UploadId, body: ByteStream, on_written: OnWritten<'_>) -> Result<u64> {
        self.append_segments(id, body, on_written).await
    }

    fn append_buffer_bytes(&self) -> u64 {
        self.part_size as u64
    }

    async fn upload_size(&self, id: &UploadId) -> Result<u64> {
        Ok(uploads::total(&self.segments(id).await?))
    }

    async fn upload_read(&self, id: &UploadId, range: Option<ByteRange>) -> Result<ByteStream> {
        self.read_segments(id, range).await
    }

    async fn upload_commit(&self, id: &UploadId, digest: &Digest, size: u64) -> Result<()> {
        self.commit_segments(id, self.blob_key(digest), size, &digest.to_string()).await
    }

    async fn blob_list(&self, after: Option<&str>, limit: usize) -> Result<Vec<StoredBlob>> {
        let prefix = self.key(keys::SHA256_BLOBS);
        let start_after =
            after.and_then(|a| Digest::parse(a).ok()).map(|d| self.blob_key(&d)).unwrap_or_else(|| prefix.clone());
        let max_keys = i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000);
        let req = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .start_after(start_after)
            .max_keys(max_keys);
        let started = Instant::now();
        let resp = req.send().await;
        self.observe("ListObjectsV2", started, &resp);
        let resp = resp.map_err(|e| sdk_error("ListObjectsV2", e))?;
        Ok(resp
            .contents()
            .iter()
            .filter_map(|o| {
                Some(StoredBlob {
                    digest: keys::blob_object_digest(o.key()?)?,
                    size: u64::try_from(o.size().unwrap_or(0)).unwrap_or(0),
                    modified: o
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                })
            })
            .collect())
    }

    async fn blob_delete(&self, digest: &Digest) -> Result<bool> {
        let key = self.blob_key(digest);
        if self.head(key.clone()).await?.is_none() {
            return Ok(false);
        }
        self.send("DeleteObject", self.client.delete_object().bucket(&self.bucket).key(key).send()).await?;
        Ok(true)
    }

    async fn upload_delete(&self, id: &UploadId) -> Result<()> {
        self.delete_upload(id).await
    }

    async fn upload_list(&self) -> Result<Vec<(UploadId, SystemTime)>> {
        let prefix = self.key(keys::UPLOADS);
        let mut latest: std::collections::HashMap<UploadId, SystemTime> = std::collections::HashMap::new();
        for (key, _, modified) in self.list_all(&prefix).await? {
            let Some(id) = key.strip_prefix(&prefix).and_then(keys::upload_id_of) else {
                continue;
            };
            let t = modified.unwrap_or(SystemTime::UNIX_EPOCH);
            let e = latest.entry(id).or_insert(t);
            if t > *e {
                *e = t;
            }
        }
        Ok(latest.into_iter().collect())
    }

    async fn cleanup(&self, cutoff: SystemTime) -> Result<usize> {
        use aws_sdk_s3::error::ProvideErrorMetadata as _;
        use std::sync::atomic::Ordering;
        if self.no_multipart_listing.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let prefix = self.key("blobs/");
        let started = Instant::now();
        let listed = self.client.list_multipart_uploads().bucket(&self.bucket).prefix(&prefix).send().await;
        self.observe("ListMultipartUploads", started, &listed);
        let listed = match listed {
            Err(e) if e.code() == Some("NotImplemented") => {
                self.no_multipart_listing.store(true, Ordering::Relaxed);
                tracing::warn!(
                    bucket = %self.bucket,
                    "this S3 server cannot list multipart uploads: ones a crash left incomplete are not aborted by Ferry"
                );
                return Ok(0);
            }
            listed => listed.map_err(|e| sdk_error("ListMultipartUploads", e))?,
        };
        let mut aborted: usize = 0;
        for u in listed.uploads() {
            let old = u.initiated().and_then(|t| SystemTime::try_from(*t).ok()).is_some_and(|t| t < cutoff);
            if let (true, Some(key), Some(id)) = (old, u.key(), u.upload_id()) {
                let abort = self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(id);
                self.send("AbortMultipartUpload", abort.send()).await?;
                aborted = aborted.saturating_add(1);
            }
        }
        Ok(aborted)
    }

    async fn record_get(&self, key: &Key) -> Result<Option<Bytes>> {
        match self.get(self.key(key.as_str()), None).await? {
            Some(body) => Ok(Some(body.collect().await.map_err(|e| backend_error("GetObject", e))?.into_bytes())),
            None => Ok(None),
        }
    }

    async fn record_put(&self, key: &Key, value: Bytes) -> Result<()> {
        // One PUT: S3 replaces an object atomically, so readers see the old value or the new
        // one; writers that must not race use `record_put_if`.
        self.put(self.key(key.as_str()), value).await
    }

    async fn record_get_versioned(&self, key: &Key) -> Result<Option<(Bytes, Version)>> {
        let started = Instant::now();
        let result = self.client.get_object().bucket(&self.bucket).key(self.key(key.as_str())).send().await;
        self.observe("GetObject", started, &result);
        match result {
            Ok(out) => {
                let version = Version(out.e_tag().unwrap_or_default().to_owned());
                let body = out.body.collect().await.map_err(|e| backend_error("GetObject", e))?.into_bytes();
                Ok(Some((body, version)))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(sdk_error("GetObject", e)),
        }
    }

    async fn record_put_if(&self, key: &Key, value: Bytes, mode: PutMode) -> Result<Version> {
        let req = with_sse!(
            self,
            self.client.put_object().bucket(&self.bucket).key(self.key(key.as_str())).body(S3Body::from(value))
        );
        let req = match mode {
            PutMode::Create => req.if_none_match("*"),
            PutMode::Update(v) => req.if_match(v.0),
        };
        let started = Instant::now();
        let result = req.send().await;
        self.observe("PutObject", started, &result);
        match result {
            Ok(out) => Ok(Version(out.e_tag().unwrap_or_default().to_owned())),
            // Including 404: If-Match on a record that is gone.
            Err(e) if is_condition_failed(status(&e), true) => Err(Error::Conflict { key: key.as_str().to_owned() }),
            Err(e) => Err(sdk_error("PutObject", e)),
        }
    }

    async fn record_delete(&self, key: &Key) -> Result<bool> {
        let full = self.key(key.as_str());
        if self.head(full.clone()).await?.is_none() {
            return Ok(false);
        }
        self.send("DeleteObject", self.client.delete_object().bucket(&self.bucket).key(full).send()).await?;
        Ok(true)
    }

    async fn record_list(&self, prefix: &Key) -> Result<Vec<String>> {
        let full = format!("{}/", self.key(prefix.as_str()));
        let (objects, prefixes) = self.list(&full, true).await?;
        Ok(record_names(&full, objects.iter().map(|(k, _, _)| k.as_str()), &prefixes))
    }

    async fn record_list_page(&self, prefix: &Key, after: Option<&str>, limit: usize) -> Result<ListPage> {
        let full = format!("{}/", self.key(prefix.as_str()));
        // Records' keys sort as their names do; one more than the page says whether more follow.
        let want = limit.saturating_add(1).clamp(1, 1000);
        let mut req = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .delimiter("/")
            .max_keys(i32::try_from(want).unwrap_or(1000));
        if let Some(after) = after {
            req = req.start_after(format!("{full}{after}"));
        }
        let started = Instant::now();
        let resp = req.send().await;
        self.observe("ListObjectsV2", started, &resp);
        let resp = resp.map_err(|e| sdk_error("ListObjectsV2", e))?;
        let names = record_names(&full, resp.contents().iter().filter_map(|o| o.key()), &[]);
        let truncated = resp.is_truncated() == Some(true);
        let mut page = ListPage::of(names, after, limit);
        page.more |= truncated;
        Ok(page)
    }
}

/// The names one level under `full` that a listing shows: its objects and its common prefixes
/// (sub-folders) alike, sorted, each once; hidden (`.`) names are not records.
fn record_names<'a>(full: &str, objects: impl Iterator<Item = &'a str>, prefixes: &'a [String]) -> Vec<String> {
    let mut names: Vec<String> = objects
        .chain(prefixes.iter().map(|p| p.trim_end_matches('/')))
        .filter_map(|k| k.strip_prefix(full))
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .map(str::to_owned)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_listing_shows_records_and_folders_once_each() {
        let full = "pre/repos/team/app/_tags/";
        let objects = ["pre/repos/team/app/_tags/v2", "pre/repos/team/app/_tags/.tmp", "pre/repos/team/app/_tags/v1"];
        let prefixes = vec!["pre/repos/team/app/_tags/v1/".to_owned(), "pre/repos/team/app/_tags/sub/".to_owned()];
        assert_eq!(record_names(full, objects.into_iter(), &prefixes), ["sub", "v1", "v2"]);
        assert!(record_names(full, ["elsewhere/x"].into_iter(), &[]).is_empty());
    }
}
