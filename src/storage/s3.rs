//! The S3 backend: everything in one bucket (under an optional key prefix), so any number of
//! Ferry replicas pointed at the bucket behave as one registry.
//!
//! Upload data is kept as segment objects (`uploads/<id>/seg/<offset>`) written by whichever
//! replica received the chunk, so a `PATCH` may reach another replica than the `POST`, and a
//! fill in progress can be read back. Finishing assembles the segments under the digest key
//! with a server-side copy (one `CopyObject`, or a multipart upload of `UploadPartCopy` parts),
//! so content appears under its digest only once, complete, after the caller verified it.

use super::{ByteRange, ByteStream, Error, Key, OnWritten, PutMode, Result, Storage, StoredBlob, UploadId, Version};
use crate::config::S3Config;
use crate::metrics::Metrics;
use crate::oci::Digest;
use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, ServerSideEncryption};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
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

/// A listing: objects (key, size, last modified) and common prefixes.
type Listing = (Vec<(String, u64, Option<SystemTime>)>, Vec<String>);

/// S3's smallest part, except the last.
const MIN_PART: u64 = 5 << 20;
/// The largest object a single `CopyObject` may copy.
const MAX_COPY: u64 = 5 << 30;

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

/// The SDK's HTTP response type, which every S3 error carries.
type HttpResponse = aws_sdk_s3::config::http::HttpResponse;

/// An SDK error as a storage error: throttling told apart from other failures, the SDK's error
/// kept as the source, and its full chain of causes in the message.
fn sdk_error<E>(operation: &'static str, e: aws_sdk_s3::error::SdkError<E, HttpResponse>) -> Error
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + Send + Sync + 'static,
{
    use aws_sdk_s3::error::ProvideErrorMetadata as _;
    let message = detail(&e);
    let throttled = matches!(
        e.code(),
        Some("SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded" | "TooManyRequests")
    ) || e.raw_response().is_some_and(|r| matches!(r.status().as_u16(), 429 | 503));
    if throttled {
        Error::Throttled { operation, message, source: Box::new(e) }
    } else {
        Error::Backend { operation, message, source: Box::new(e) }
    }
}

/// Any other failure of an S3 operation (reading a body, presigning), its cause kept.
fn backend_error(operation: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Backend { operation, message: e.to_string(), source: Box::new(e) }
}

/// An S3 error's service detail, for messages (the SDK's Display says only "service error").
fn detail<E: std::error::Error + 'static>(e: &aws_sdk_s3::error::SdkError<E, HttpResponse>) -> String {
    use std::error::Error as _;
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
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
        self.key(&format!("blobs/{}/{}/{}", d.algorithm().as_str(), &d.hex()[..2], d.hex()))
    }

    fn upload_prefix(&self, id: &UploadId) -> String {
        self.key(&format!("uploads/{id}/"))
    }

    fn segment_key(&self, id: &UploadId, offset: u64) -> String {
        format!("{}seg/{offset:020}", self.upload_prefix(id))
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
            self.client.put_object().bucket(&self.bucket).key(key).body(S3Body::from(body)).if_none_match("*")
        );
        let started = Instant::now();
        let result = req.send().await;
        self.observe("PutObject", started, &result);
        match result {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_response().map(|r| r.status().as_u16()), Some(412) | Some(409)) => {
                Err(Error::Conflict)
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

    /// The upload's segments in order: (offset, key, size); `NotFound` when they have a gap.
    async fn segments(&self, id: &UploadId) -> Result<Vec<(u64, String, u64)>> {
        let prefix = format!("{}seg/", self.upload_prefix(id));
        let mut segs: Vec<(u64, String, u64)> = self
            .list_all(&prefix)
            .await?
            .into_iter()
            .filter_map(|(k, size, _)| {
                k.strip_prefix(&prefix).and_then(|o| o.parse().ok()).map(|o| (o, k.clone(), size))
            })
            .collect();
        segs.sort_unstable();
        // Segments follow one another from offset 0. A gap means the upload is being removed
        // (its segments go once it is stored under its digest): reading on would shift bytes.
        let mut next = 0u64;
        for (offset, _, size) in &segs {
            if *offset != next {
                return Err(Error::NotFound);
            }
            next = next.saturating_add(*size);
        }
        Ok(segs)
    }

    /// Assembles the segments under `dest` with server-side copies.
    async fn assemble(&self, id: &UploadId, segs: &[(u64, String, u64)], dest: &str) -> Result<()> {
        let total: u64 = segs.iter().map(|s| s.2).sum();
        if segs.is_empty() {
            return self.put(dest.to_owned(), Bytes::new()).await;
        }
        if segs.len() == 1 && total <= MAX_COPY {
            let req = with_sse!(
                self,
                self.client.copy_object().bucket(&self.bucket).key(dest).copy_source(self.copy_source(&segs[0].1))
            );
            self.send("CopyObject", req.send()).await?;
            return Ok(());
        }
        let create = with_sse!(self, self.client.create_multipart_upload().bucket(&self.bucket).key(dest));
        let upload = self.send("CreateMultipartUpload", create.send()).await?;
        let upload_id = upload.upload_id().unwrap_or_default().to_owned();
        let result = self.copy_parts(id, segs, dest, &upload_id).await;
        match result {
            Ok(parts) => {
                let complete = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(dest)
                    .upload_id(&upload_id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build());
                self.send("CompleteMultipartUpload", complete.send()).await?;
                Ok(())
            }
            Err(e) => {
                let abort = self.client.abort_multipart_upload().bucket(&self.bucket).key(dest).upload_id(&upload_id);
                let _ = self.send("AbortMultipartUpload", abort.send()).await;
                Err(e)
            }
        }
    }

    /// Parts for a multipart upload: each segment copied server-side when S3's part rules allow,
    /// else the data re-streamed into parts of `part_size`.
    async fn copy_parts(
        &self,
        id: &UploadId,
        segs: &[(u64, String, u64)],
        dest: &str,
        upload_id: &str,
    ) -> Result<Vec<CompletedPart>> {
        let copyable = segs
            .iter()
            .enumerate()
            .all(|(i, s)| (s.2 >= MIN_PART || i.saturating_add(1) == segs.len()) && s.2 <= MAX_COPY);
        let mut parts = Vec::new();
        if copyable {
            for (n, (_, key, _)) in (1i32..).zip(segs) {
                let copy = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(dest)
                    .upload_id(upload_id)
                    .part_number(n)
                    .copy_source(self.copy_source(key));
                let out = self.send("UploadPartCopy", copy.send()).await?;
                let etag = out.copy_part_result().and_then(|r| r.e_tag()).unwrap_or_default().to_owned();
                parts.push(CompletedPart::builder().e_tag(etag).part_number(n).build());
            }
            return Ok(parts);
        }
        let total: u64 = segs.iter().map(|s| s.2).sum();
        let mut data = match total {
            0 => futures_util::stream::empty().boxed(),
            _ => self.upload_read(id, Some(ByteRange { start: 0, end: total.saturating_sub(1) })).await?,
        };
        let mut buf = BytesMut::with_capacity(self.part_size);
        let mut n: i32 = 0;
        loop {
            let next = data.next().await;
            if let Some(chunk) = &next {
                buf.extend_from_slice(chunk.as_ref().map_err(|e| Error::Io(io::Error::new(e.kind(), e.to_string())))?);
            }
            if buf.len() >= self.part_size || (next.is_none() && (!buf.is_empty() || n == 0)) {
                n = n.saturating_add(1);
                let body = buf.split().freeze();
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(dest)
                    .upload_id(upload_id)
                    .part_number(n)
                    .body(S3Body::from(body));
                let out = self.send("UploadPart", part.send()).await?;
                parts.push(CompletedPart::builder().e_tag(out.e_tag().unwrap_or_default()).part_number(n).build());
            }
            if next.is_none() {
                return Ok(parts);
            }
        }
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
        self.put(format!("{}state", self.upload_prefix(id)), state).await
    }

    async fn upload_state(&self, id: &UploadId) -> Result<Bytes> {
        match self.get(format!("{}state", self.upload_prefix(id)), None).await? {
            Some(body) => Ok(body.collect().await.map_err(|e| backend_error("GetObject", e))?.into_bytes()),
            None => Err(Error::NotFound),
        }
    }

    async fn upload_seal(&self, id: &UploadId) -> Result<()> {
        // Exactly one replica creates the marker; then the state goes, so every replica's
        // `upload_state` answers NotFound from here on.
        self.put_if_absent(format!("{}sealed", self.upload_prefix(id)), Bytes::new()).await?;
        let state = format!("{}state", self.upload_prefix(id));
        self.send("DeleteObject", self.client.delete_object().bucket(&self.bucket).key(state).send()).await?;
        Ok(())
    }

    async fn upload_append_observed(
        &self,
        id: &UploadId,
        mut body: ByteStream,
        on_written: OnWritten<'_>,
    ) -> Result<u64> {
        let mut offset = self.upload_size(id).await?;
        let mut buf = BytesMut::with_capacity(self.part_size.min(8 << 20));
        loop {
            let next = body.next().await;
            let done = next.is_none();
            match next {
                Some(Ok(b)) => buf.extend_from_slice(&b),
                // Nothing of a failed request is kept: the upload holds whole segments only.
                Some(Err(e)) => return Err(Error::Incoming(e)),
                None => {}
            }
            while buf.len() >= self.part_size || (done && !buf.is_empty()) {
                let take = buf.len().min(self.part_size);
                let segment = buf.split_to(take).freeze();
                let len = segment.len() as u64;
                // Write-once: a replica racing this append at the same offset cannot replace
                // bytes another append (and its running digest) already accounted for.
                self.put_if_absent(self.segment_key(id, offset), segment).await?;
                offset = offset.saturating_add(len);
                on_written(offset);
            }
            if done {
                return Ok(offset);
            }
        }
    }

    fn append_buffer_bytes(&self) -> u64 {
        self.part_size as u64
    }

    async fn upload_size(&self, id: &UploadId) -> Result<u64> {
        Ok(self.segments(id).await?.iter().map(|s| s.2).sum())
    }

    async fn upload_read(&self, id: &UploadId, range: Option<ByteRange>) -> Result<ByteStream> {
        let segs = self.segments(id).await?;
        let total: u64 = segs.iter().map(|s| s.2).sum();
        let (start, end) = match range {
            Some(r) => (r.start, r.end.min(total.saturating_sub(1))),
            None => (0, total.saturating_sub(1)),
        };
        if total == 0 || start > end {
            return Ok(futures_util::stream::empty().boxed());
        }
        let pieces: Vec<(String, ByteRange)> = segs
            .into_iter()
            .filter(|(off, _, size)| *size > 0 && off.saturating_add(*size) > start && *off <= end)
            .map(|(off, key, size)| {
                let from = start.saturating_sub(off);
                let to = end.saturating_sub(off).min(size.saturating_sub(1));
                (key, ByteRange { start: from, end: to })
            })
            .collect();
        let store = self.clone();
        let stream = futures_util::stream::iter(pieces)
            .then(move |(key, r)| {
                let store = store.clone();
                async move {
                    match store.get(key, Some(r)).await {
                        Ok(Some(body)) => body_stream(body),
                        Ok(None) => {
                            futures_util::stream::once(async { Err(io::Error::from(io::ErrorKind::NotFound)) }).boxed()
                        }
                        Err(e) => {
                            futures_util::stream::once(async move { Err(io::Error::other(e.to_string())) }).boxed()
                        }
                    }
                }
            })
            .flatten();
        Ok(stream.boxed())
    }

    async fn upload_commit(&self, id: &UploadId, digest: &Digest, size: u64) -> Result<()> {
        let dest = self.blob_key(digest);
        // Exactly the segments that tile the verified bytes: segments are written once per
        // offset, so these hold the very bytes the caller hashed; any written after (by a
        // request racing the finish on another replica) are left out and deleted below.
        let mut segs = self.segments(id).await?;
        let mut end = 0u64;
        let keep = segs.iter().take_while(|s| {
            let before = end;
            end = end.saturating_add(s.2);
            before < size
        });
        let keep = keep.count();
        segs.truncate(keep);
        let held: u64 = segs.iter().map(|s| s.2).sum();
        if held != size {
            return Err(Error::Corrupt(format!("upload for {digest} holds {held} bytes, {size} were verified")));
        }
        if self.head(dest.clone()).await?.map(|(stored, _)| stored) != Some(size) {
            self.assemble(id, &segs, &dest).await?;
        }
        self.upload_delete(id).await
    }

    async fn blob_list(&self, after: Option<&str>, limit: usize) -> Result<Vec<StoredBlob>> {
        let prefix = self.key("blobs/sha256/");
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
                let hex = o.key()?.rsplit('/').next()?;
                Some(StoredBlob {
                    digest: Digest::parse(&format!("sha256:{hex}")).ok()?,
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
        let keys: Vec<String> = self.list_all(&self.upload_prefix(id)).await?.into_iter().map(|(k, _, _)| k).collect();
        self.delete_keys(keys).await
    }

    async fn upload_list(&self) -> Result<Vec<(UploadId, SystemTime)>> {
        let prefix = self.key("uploads/");
        let mut latest: std::collections::HashMap<UploadId, SystemTime> = std::collections::HashMap::new();
        for (key, _, modified) in self.list_all(&prefix).await? {
            let Some(id) = key.strip_prefix(&prefix).and_then(|r| r.split('/').next()).and_then(UploadId::parse) else {
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
            // 412: the condition failed; 409: a concurrent conditional write; 404: If-Match on
            // a record that is gone.
            Err(e) if matches!(e.raw_response().map(|r| r.status().as_u16()), Some(412 | 409 | 404)) => {
                Err(Error::Conflict)
            }
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
        let mut names: Vec<String> = objects
            .iter()
            .map(|(k, _, _)| k.as_str())
            .chain(prefixes.iter().map(|p| p.trim_end_matches('/')))
            .filter_map(|k| k.strip_prefix(&full))
            .filter(|n| !n.is_empty() && !n.starts_with('.'))
            .map(str::to_owned)
            .collect();
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }
}
