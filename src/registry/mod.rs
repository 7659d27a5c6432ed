//! The registry domain: repositories (their settings, creation templates, and ECR's registry-wide
//! settings), blobs, uploads, manifests, tags, catalog and referrers, and pull-through reads of
//! them. Handlers call one method here; the rules (what must exist, what a digest must match)
//! live here. Pushes and deletes are handed to the injected [`outbox`]'s consumers; the registry
//! names none of them. Knows nothing of HTTP, access control, replication, webhooks, lifecycle or
//! the audit trail.

mod error;
pub mod images;
pub mod index;
mod manifests;
pub mod outbox;
mod pull_through;
pub mod pulls;
pub mod purge;
pub mod repositories;
pub mod settings;
pub mod templates;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod uploads;

pub use error::{Error, Result};
pub use manifests::{ManifestContent, ManifestRecord, StoredManifest};
pub use outbox::PushOrigin;
pub use pull_through::CacheResult;

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::oci::{Digest, RepositoryName};
use crate::proxy::fill::{FillError, Fills, ReadError};
use crate::proxy::upstream;
use crate::proxy::{Proxy, Route};
use crate::storage::{self, ByteRange, ByteStream, Key, Storage, UploadId};
use bytes::Bytes;
use repositories::RepositorySettings;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The most entries one page of a tag list or the catalog may hold; larger `n` is clamped.
pub const MAX_PAGE: usize = 10_000;

/// Registry settings taken from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Whether DELETE of blobs, manifests and tags is allowed.
    pub delete_enabled: bool,
    /// Upload sessions idle for longer than this are purged.
    pub upload_max_idle: Duration,
    /// Namespaces of this registry's own that a mirror-default rule never claims.
    pub local_namespaces: Vec<String>,
    /// Whether a push to a missing repository creates it when no `CREATE_ON_PUSH` template
    /// matches (an implicit `ROOT` template with default settings).
    pub create_on_push: bool,
    /// Content and links used within this long are never collected.
    pub gc_grace: Duration,
}

/// One page of a sorted listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The entries of this page.
    pub items: Vec<T>,
    /// Whether more entries follow the last one.
    pub more: bool,
}

/// The repository a request reads: a local one, or a pull-through cache of an upstream's.
#[derive(Clone)]
pub enum Repo {
    /// Pushed to this registry.
    Local(RepositoryName),
    /// Cached from an upstream by a pull-through rule.
    Proxied(Route),
}

impl Repo {
    /// The name the repository's content is stored under.
    pub fn name(&self) -> &RepositoryName {
        match self {
            Self::Local(n) => n,
            Self::Proxied(r) => &r.local,
        }
    }
}

/// A `Range` request, resolved once the blob's size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// `bytes=start-` or `bytes=start-end`.
    From(u64, Option<u64>),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl RangeRequest {
    /// The bytes this asks for in a blob of `size` bytes, or `RangeNotSatisfiable`.
    pub fn resolve(self, size: u64) -> Result<ByteRange> {
        match self {
            Self::Suffix(n) if n > 0 && size > 0 => {
                Ok(ByteRange { start: size.saturating_sub(n), end: size.saturating_sub(1) })
            }
            Self::From(start, end) if start < size && end.is_none_or(|e| e >= start) => {
                Ok(ByteRange { start, end: end.unwrap_or(u64::MAX).min(size.saturating_sub(1)) })
            }
            _ => Err(Error::RangeNotSatisfiable { size }),
        }
    }
}

/// A blob to send: its size (when known), the range served, and the bytes.
pub struct BlobContent {
    /// The whole blob's size; unknown only while an upstream without `Content-Length` is being fetched.
    pub size: Option<u64>,
    /// The range served, for a 206.
    pub range: Option<ByteRange>,
    /// The bytes.
    pub body: ByteStream,
    /// Where the client may fetch the blob itself instead (S3 with `redirect = true`).
    pub redirect: Option<String>,
}

/// The registry service, shared by every request.
pub struct Registry {
    storage: Arc<dyn Storage>,
    clock: SharedClock,
    proxy: Arc<Proxy>,
    fills: Fills,
    /// Content in use: touched before content is stored or linked (the collector's protocol).
    uses: storage::uses::ContentUses,
    settings: Settings,
    metrics: Arc<Metrics>,
    /// Running hash of each upload this process is receiving, so finishing needs no re-read.
    upload_hashes: Mutex<HashMap<UploadId, Arc<tokio::sync::Mutex<uploads::UploadHash>>>>,
    /// Which repositories exist, and the one way a blob is linked into one.
    repositories: Repositories,
    /// When images were last pulled, noted in memory and flushed by a worker.
    pulls: Arc<pulls::PullTimes>,
    /// Repositories' settings, for a few seconds (replicas agree within that).
    settings_cache: moka::future::Cache<RepositoryName, Option<Arc<RepositorySettings>>>,
    /// Who is told of pushes and deletes (replication, webhooks), without the registry naming them.
    outbox: outbox::Outbox,
    /// Repository creation templates.
    templates: Arc<templates::TemplateStore>,
    /// Repositories whose links carry the image index (their marker was seen).
    indexed: moka::sync::Cache<RepositoryName, ()>,
}

impl Registry {
    /// A registry over `storage`, with the pull-through rules of `proxy`.
    pub fn new(
        storage: Arc<dyn Storage>,
        proxy: Arc<Proxy>,
        settings: Settings,
        metrics: Arc<Metrics>,
        clock: SharedClock,
    ) -> Self {
        let uses = storage::uses::ContentUses::new(storage.clone(), clock.clone(), settings.gc_grace);
        let templates =
            Arc::new(templates::TemplateStore::new(storage.clone(), clock.clone(), settings.create_on_push));
        Self {
            templates,
            fills: Fills::new(storage.clone(), metrics.clone(), uploads::UploadState::for_fill(), uses.clone()),
            uses,
            pulls: Arc::new(pulls::PullTimes::new(storage.clone())),
            repositories: Repositories { storage: storage.clone(), known: Arc::default() },
            settings_cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(5))
                .build(),
            clock,
            proxy,
            storage,
            settings,
            metrics,
            upload_hashes: Mutex::new(HashMap::new()),
            outbox: outbox::Outbox::default(),
            indexed: moka::sync::Cache::new(1_000_000),
        }
    }

    /// The same registry telling `outbox`'s consumers of pushes and deletes.
    #[must_use]
    pub fn with_outbox(mut self, outbox: outbox::Outbox) -> Self {
        self.outbox = outbox;
        self
    }

    /// A repository's settings (its policy among them), from a cache of a few seconds: replicas
    /// agree within that, and this process's own changes apply at once. For the decision on
    /// every request, which must not read storage each time.
    pub async fn repository_settings_cached(&self, name: &RepositoryName) -> Result<Option<Arc<RepositorySettings>>> {
        if let Some(s) = self.settings_cache.get(name).await {
            return Ok(s);
        }
        let settings = self.repository_settings(name).await?.map(Arc::new);
        self.settings_cache.insert(name.clone(), settings.clone()).await;
        Ok(settings)
    }

    async fn forget_repository_policy(&self, name: &RepositoryName) {
        self.settings_cache.invalidate(name).await;
    }

    /// The store, for background work that runs beside the registry (the collector).
    pub fn storage_handle(&self) -> Arc<dyn Storage> {
        self.storage.clone()
    }

    /// The content-use records (shared with the collector, so its touches and claims meet).
    pub fn content_uses(&self) -> storage::uses::ContentUses {
        self.uses.clone()
    }

    /// The pull recorder (its flush runs as a worker).
    pub fn pull_times(&self) -> Arc<pulls::PullTimes> {
        self.pulls.clone()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The clock.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Whether the repository holds any content.
    pub async fn repository_exists(&self, name: &RepositoryName) -> Result<bool> {
        Ok(self.repositories.exists(name).await?)
    }

    /// Records that a repository exists, for the catalog.
    async fn ensure_repository(&self, name: &RepositoryName) -> Result<()> {
        Ok(self.repositories.ensure(name).await?)
    }

    /// `NameUnknown` when the repository does not exist, else `other`.
    async fn unknown(&self, name: &RepositoryName, other: Error) -> Error {
        match self.repository_exists(name).await {
            Ok(false) => Error::NameUnknown(name.clone()),
            Ok(true) => other,
            Err(e) => e,
        }
    }

    /// The size of a blob the repository holds (for a pull-through repository, the upstream's
    /// size when it is not cached yet).
    pub async fn blob_size(&self, repo: &Repo, digest: &Digest) -> Result<u64> {
        let name = repo.name();
        if let Some(v) = self.storage.record_get(&Key::blob_link(name, digest)).await? {
            if let Some(size) = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()) {
                return Ok(size);
            }
            return self.storage.blob_size(digest).await?.ok_or_else(|| Error::BlobUnknown(digest.clone()));
        }
        match repo {
            Repo::Local(name) => Err(self.unknown(name, Error::BlobUnknown(digest.clone())).await),
            Repo::Proxied(route) if !route.may_import => Err(Error::ImportDenied(route.local.clone())),
            Repo::Proxied(route) => match route.rule.upstream.blob_size(&route.upstream_repo, digest).await {
                Ok(Some(size)) => Ok(size),
                Ok(None) | Err(upstream::Error::NotFound) => Err(Error::BlobUnknown(digest.clone())),
                Err(e) => Err(Error::Upstream(e)),
            },
        }
    }

    /// A blob, or the requested range of it; a pull-through repository fetches what it lacks.
    pub async fn blob_get(&self, repo: &Repo, digest: &Digest, range: Option<RangeRequest>) -> Result<BlobContent> {
        let cached = self.storage.record_get(&Key::blob_link(repo.name(), digest)).await?.is_some();
        let route = match repo {
            Repo::Proxied(route) if !cached => route,
            _ => {
                if let Repo::Proxied(route) = repo {
                    self.count_cache(route, "blob", CacheResult::Hit);
                }
                let size = self.blob_size(repo, digest).await?;
                if let Some(url) = self.storage.blob_url(digest).await? {
                    let body = Box::pin(futures_util::stream::empty()) as ByteStream;
                    return Ok(BlobContent { size: Some(size), range: None, body, redirect: Some(url) });
                }
                let range = range.map(|r| r.resolve(size)).transpose()?;
                let body = if size == 0 {
                    Box::pin(futures_util::stream::empty()) as ByteStream
                } else {
                    self.storage.blob_read(digest, range, size).await.map_err(|e| match e {
                        storage::Error::NotFound => Error::BlobUnknown(digest.clone()),
                        e => e.into(),
                    })?
                };
                return Ok(BlobContent { size: Some(size), range, body, redirect: None });
            }
        };
        if !route.may_import {
            return Err(Error::ImportDenied(route.local.clone()));
        }
        let (rx, joined) = self.fills.join(
            route.rule.clone(),
            route.upstream_repo.clone(),
            digest,
            self.link_on_commit(route, digest),
        );
        self.count_cache(route, "blob", if joined { CacheResult::Coalesced } else { CacheResult::Miss });
        let reader = self
            .fills
            .read(rx, digest, |size| match (range, size) {
                (Some(r), Some(size)) => r.resolve(size).map(Some),
                _ => Ok(None),
            })
            .await;
        match reader {
            Ok(r) => Ok(BlobContent { size: r.size, range: r.range, body: r.body, redirect: None }),
            Err(ReadError::Resolve(e)) => Err(e),
            Err(ReadError::Fill(FillError::Upstream(upstream::Error::NotFound))) => {
                Err(Error::BlobUnknown(digest.clone()))
            }
            Err(ReadError::Fill(FillError::Upstream(e))) => Err(Error::Upstream(e)),
            Err(ReadError::Fill(FillError::Storage(e))) => Err(Error::FillStorage(e)),
            Err(ReadError::Fill(FillError::Internal(e))) => {
                Err(Error::Storage(storage::Error::Io(std::io::Error::other(e))))
            }
        }
    }

    /// Removes a blob from the repository (the content itself stays for other repositories).
    pub async fn blob_delete(&self, name: &RepositoryName, digest: &Digest) -> Result<()> {
        if !self.settings.delete_enabled {
            return Err(Error::DeleteDisabled);
        }
        if self.storage.record_delete(&Key::blob_link(name, digest)).await? {
            Ok(())
        } else {
            Err(self.unknown(name, Error::BlobUnknown(digest.clone())).await)
        }
    }

    /// Makes `digest` (of `size` bytes) servable from the repository.
    async fn link_blob(&self, name: &RepositoryName, digest: &Digest, size: u64) -> Result<()> {
        Ok(self.repositories.link_blob(name, digest, size).await?)
    }

    /// The catalog of repositories, one page after `last`. Names come in the order of their
    /// catalog entries (path components compared in turn, as distribution's catalog walks them:
    /// `a/b` before `a-b`), so a page is read from storage as one listing, whatever the registry
    /// holds. Only repositories `visible` allows are listed.
    pub async fn catalog(
        &self,
        n: Option<usize>,
        last: Option<&str>,
        visible: &(dyn Fn(&RepositoryName) -> bool + Sync),
    ) -> Result<Page<String>> {
        let limit = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
        let page = self.repositories_page(last, limit, visible).await?;
        Ok(Page { items: page.items.iter().map(|n| n.as_str().to_owned()).collect(), more: page.more })
    }

    /// One page of the repositories `visible` allows, after the name `after`, in catalog order.
    /// A caller that sees every repository costs one listing call per page; one that sees few
    /// costs the entries it passes over.
    pub async fn repositories_page(
        &self,
        after: Option<&str>,
        limit: usize,
        visible: &(dyn Fn(&RepositoryName) -> bool + Sync),
    ) -> Result<Page<RepositoryName>> {
        let mut items = Vec::new();
        // The listing resumes at the entry the name would have (`/` kept as `+`); a name that
        // is not a repository's is only compared, never used as a key.
        let mut cursor = after.map(|a| a.replace('/', "+"));
        if limit == 0 {
            return Ok(Page { items, more: false });
        }
        loop {
            let batch = limit.saturating_sub(items.len()).max(1);
            let page = self.storage.record_list_page(&Key::catalog(), cursor.as_deref(), batch).await?;
            let mut names = page.names.iter();
            for entry in names.by_ref() {
                cursor = Some(entry.clone());
                let Some(name) = storage::keys::decode_catalog_entry(entry) else { continue };
                if visible(&name) {
                    items.push(name);
                    if items.len() == limit {
                        break;
                    }
                }
            }
            if items.len() == limit {
                // More follow if the listing goes on or this batch holds another visible name.
                let rest = names.filter_map(|e| storage::keys::decode_catalog_entry(e)).any(|n| visible(&n));
                return Ok(Page { items, more: page.more || rest });
            }
            if !page.more {
                return Ok(Page { items, more: false });
            }
        }
    }
}

/// Which repositories exist (their catalog entries, remembered once seen: entries are never
/// removed yet), and the one way a blob is linked into a repository, shared by pushes, mounts
/// and pull-through fills (which link from their own task, hence a cheap clone).
#[derive(Clone)]
pub(crate) struct Repositories {
    storage: Arc<dyn Storage>,
    known: Arc<Mutex<HashSet<RepositoryName>>>,
}

impl Repositories {
    async fn exists(&self, name: &RepositoryName) -> storage::Result<bool> {
        if self.known.lock().map(|k| k.contains(name)).unwrap_or(false) {
            return Ok(true);
        }
        let exists = self.storage.record_get(&Key::catalog_entry(name)).await?.is_some();
        if exists {
            self.remember(name);
        }
        Ok(exists)
    }

    fn forget(&self, name: &RepositoryName) {
        if let Ok(mut k) = self.known.lock() {
            k.remove(name);
        }
    }

    fn remember(&self, name: &RepositoryName) {
        if let Ok(mut k) = self.known.lock() {
            k.insert(name.clone());
        }
    }

    async fn ensure(&self, name: &RepositoryName) -> storage::Result<()> {
        if !self.exists(name).await? {
            self.storage.record_put(&Key::catalog_entry(name), Bytes::new()).await?;
            self.remember(name);
        }
        Ok(())
    }

    /// Makes `digest` (of `size` bytes) servable from `name`, and lists `name` in the catalog.
    pub(crate) async fn link_blob(&self, name: &RepositoryName, digest: &Digest, size: u64) -> storage::Result<()> {
        self.storage.record_put(&Key::blob_link(name, digest), Bytes::from(size.to_string())).await?;
        self.ensure(name).await
    }
}

/// Takes the page of sorted `items` that follows `last`, at most `n` long (clamped to [`MAX_PAGE`]).
pub fn paginate(items: Vec<String>, n: Option<usize>, last: Option<&str>) -> Page<String> {
    let limit = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let start = match last {
        Some(l) => items.partition_point(|i| i.as_str() <= l),
        None => 0,
    };
    let mut items = items;
    let rest = items.split_off(start.min(items.len()));
    let more = rest.len() > limit;
    Page { items: rest.into_iter().take(limit).collect(), more }
}
