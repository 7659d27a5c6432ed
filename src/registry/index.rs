//! The per-repository image index, kept in each manifest link: the tags that name the manifest,
//! its image size and its subject, so the image operations read one record per image instead of
//! walking every tag. Tag records stay the truth of what a tag names; the index follows them.
//!
//! How it stays right:
//! - A tag moves by a conditional write of its record (read it with its version, write with
//!   that version), so every move knows exactly the digest it replaced.
//! - Before a move, a journal entry (`index-journal/<repository>@<tag>@<move>`, see
//!   [`Key::index_journal_entry`]) names the tag; after it, [`Registry::reconcile_tag`] makes
//!   the links of the old and the new digest agree with the tag record as it is *then*, and
//!   reads the tag again: if it moved meanwhile, it goes round again. Each step is a
//!   conditional update of one link, so concurrent moves on several replicas converge: whatever
//!   the order, the last reconcile of the last move sees the final tag.
//! - A crash between the move and its reconcile leaves the journal entry: the upload purge
//!   worker replays entries older than [`JOURNAL_REPLAY_AFTER_MS`] (reconciling is idempotent).
//!   Until then the index may list a tag under the digest it left, or miss it under the one it
//!   reached; it never names a manifest that is not there (the index lives in the manifest's
//!   own link).
//! - A repository written before the index has no `repos/<name>/_index` marker: the first
//!   reader rebuilds its index from the tag records ([`Registry::rebuild_index`]), checking
//!   every difference against the tag record at the time of each link's conditional write.
//!
//! Owns the index fields of links, the journal and the marker; knows nothing of HTTP.

use super::manifests::{decode, encode, ManifestRecord};
use super::{Error, Registry, Result};
use crate::oci::{Digest, Manifest, RepositoryName, Tag};
use crate::storage::{self, keys, records, EventId, Key, PutMode};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A journal entry older than this belongs to a move that did not finish (a move finishes in
/// one request): the purge worker reconciles its tag.
pub const JOURNAL_REPLAY_AFTER_MS: u64 = 60_000;

/// How many times a reconcile goes round while the tag keeps moving under it.
const RECONCILE_ROUNDS: usize = 8;

/// A tag move in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JournalEntry {
    /// The digests whose links the move touches (the one it left, the one it reaches).
    digests: Vec<Digest>,
    /// When the move began (ms since the epoch).
    at_ms: u64,
}

/// The repository's index marker.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexMarker {
    version: u32,
}

/// What a rebuild found and changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexReport {
    /// Manifest links looked at.
    pub images: usize,
    /// Links whose index fields were wrong or missing, and were (or would be) rewritten.
    pub fixed: usize,
}

impl Registry {
    /// The digest `tag` names now, with the record's version.
    async fn tag_target(&self, name: &RepositoryName, tag: &Tag) -> Result<Option<(ManifestRecord, storage::Version)>> {
        match self.storage.record_get_versioned(&Key::tag(name, tag)).await? {
            Some((bytes, version)) => Ok(Some((decode::<ManifestRecord>(&bytes)?, version))),
            None => Ok(None),
        }
    }

    /// Points `tag` at `record`'s manifest (whose link exists), by a conditional write; refuses
    /// with `TagImmutable` when `immutable` and the tag exists. Keeps the index: see the module.
    pub(super) async fn set_tag(
        &self,
        name: &RepositoryName,
        tag: &Tag,
        record: &ManifestRecord,
        immutable: bool,
    ) -> Result<()> {
        let key = Key::tag(name, tag);
        let bytes = encode(&record.for_tag())?;
        let move_id = EventId::new(self.clock.now_ms());
        let journaled = std::sync::atomic::AtomicBool::new(false);
        let conflict = |e: &Error| matches!(e, Error::Storage(storage::Error::Conflict { .. }));
        let previous = crate::clock::retry::retry(crate::clock::retry::Backoff::CONFLICT, conflict, || async {
            let current = self.tag_target(name, tag).await?;
            if immutable && current.is_some() {
                return Err(Error::TagImmutable { tag: tag.to_string(), repository: name.clone() });
            }
            let (previous, mode) = match current {
                Some((r, version)) => (Some(r.digest), PutMode::Update(version)),
                None => (None, PutMode::Create),
            };
            if previous.as_ref() != Some(&record.digest) {
                self.journal(name, tag, &move_id, previous.iter().chain([&record.digest])).await?;
                journaled.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            match self.storage.record_put_if(&key, bytes.clone(), mode).await {
                Ok(_) => Ok(previous),
                // An immutable tag another replica created first.
                Err(storage::Error::Conflict { .. }) if immutable => {
                    Err(Error::TagImmutable { tag: tag.to_string(), repository: name.clone() })
                }
                Err(e) => Err(e.into()),
            }
        })
        .await;
        let previous = match previous {
            Ok(p) => p,
            Err(e) => {
                // A journal entry was written for a move that did not happen: nothing moved,
                // so the entry just goes.
                if journaled.load(std::sync::atomic::Ordering::SeqCst) {
                    self.storage.record_delete(&Key::index_journal_entry(name, tag, &move_id)).await?;
                }
                return Err(e);
            }
        };
        if previous.as_ref() != Some(&record.digest) {
            let digests: Vec<Digest> = previous.into_iter().chain([record.digest.clone()]).collect();
            self.finish_move(name, tag, &move_id, &digests).await?;
        }
        Ok(())
    }

    /// Removes `tag`; returns the record it held. Keeps the index.
    pub(super) async fn unset_tag(&self, name: &RepositoryName, tag: &Tag) -> Result<Option<ManifestRecord>> {
        let Some((record, _)) = self.tag_target(name, tag).await? else { return Ok(None) };
        let move_id = EventId::new(self.clock.now_ms());
        self.journal(name, tag, &move_id, [&record.digest]).await?;
        let removed = self.storage.record_delete(&Key::tag(name, tag)).await?;
        self.finish_move(name, tag, &move_id, std::slice::from_ref(&record.digest)).await?;
        Ok(removed.then_some(record))
    }

    async fn journal<'a>(
        &self,
        name: &RepositoryName,
        tag: &Tag,
        move_id: &EventId,
        digests: impl IntoIterator<Item = &'a Digest>,
    ) -> Result<()> {
        let entry = JournalEntry { digests: digests.into_iter().cloned().collect(), at_ms: self.clock.now_ms() };
        Ok(records::put(self.storage.as_ref(), &Key::index_journal_entry(name, tag, move_id), &entry).await?)
    }

    /// Reconciles `tag` on the links of `digests`, then drops the move's journal entry.
    async fn finish_move(&self, name: &RepositoryName, tag: &Tag, move_id: &EventId, digests: &[Digest]) -> Result<()> {
        self.reconcile_tag(name, tag, digests).await?;
        self.storage.record_delete(&Key::index_journal_entry(name, tag, move_id)).await?;
        Ok(())
    }

    /// Makes the links of `digests` (the ones a move left and reached) list `tag` exactly when
    /// the tag names them, as the tag record is when each link is written; goes round again
    /// while the tag moves meanwhile. Only those links: a link a later move reached is that
    /// move's to fix, and adding the tag to it here could land after that move's successor
    /// removed it, where nobody would look again.
    pub(super) async fn reconcile_tag(&self, name: &RepositoryName, tag: &Tag, digests: &[Digest]) -> Result<()> {
        let mut target = self.tag_target(name, tag).await?.map(|(r, _)| r.digest);
        for _ in 0..RECONCILE_ROUNDS {
            let touched: BTreeSet<&Digest> = digests.iter().collect();
            for digest in touched {
                let wanted = target.as_ref() == Some(digest);
                self.set_link_tag(name, digest, tag, wanted).await?;
            }
            let now = self.tag_target(name, tag).await?.map(|(r, _)| r.digest);
            if now == target {
                return Ok(());
            }
            target = now;
        }
        Err(Error::Storage(storage::Error::Conflict { key: Key::tag(name, tag).as_str().to_owned() }))
    }

    /// Adds `tag` to (or removes it from) the index of `digest`'s link, when the link exists.
    async fn set_link_tag(&self, name: &RepositoryName, digest: &Digest, tag: &Tag, present: bool) -> Result<()> {
        let key = Key::manifest_link(name, digest);
        let conflict = |e: &Error| matches!(e, Error::Storage(storage::Error::Conflict { .. }));
        crate::clock::retry::retry(crate::clock::retry::Backoff::CONFLICT, conflict, || async {
            let Some((bytes, version)) = self.storage.record_get_versioned(&key).await? else { return Ok(()) };
            let mut link: ManifestRecord = decode(&bytes)?;
            let tags = link.tags.get_or_insert_with(Vec::new);
            let has = tags.iter().any(|t| t == tag.as_str());
            if has == present {
                return Ok(());
            }
            if present {
                tags.push(tag.to_string());
                tags.sort_unstable();
            } else {
                tags.retain(|t| t != tag.as_str());
            }
            self.storage.record_put_if(&key, encode(&link)?, PutMode::Update(version)).await?;
            Ok(())
        })
        .await
    }

    /// Writes a manifest's link by a conditional update that keeps what the link already
    /// holds: its tags, and when it was first pushed (a re-push keeps it, as in ECR). Returns
    /// the link as written.
    pub(super) async fn write_link(&self, name: &RepositoryName, record: ManifestRecord) -> Result<ManifestRecord> {
        let key = Key::manifest_link(name, &record.digest);
        let conflict = |e: &Error| matches!(e, Error::Storage(storage::Error::Conflict { .. }));
        crate::clock::retry::retry(crate::clock::retry::Backoff::CONFLICT, conflict, || async {
            let (link, mode) = match self.storage.record_get_versioned(&key).await? {
                Some((bytes, version)) => {
                    let existing: Option<ManifestRecord> = decode(&bytes).ok();
                    let link = ManifestRecord {
                        pushed_at_ms: existing.as_ref().and_then(|e| e.pushed_at_ms).or(record.pushed_at_ms),
                        last_pulled_ms: existing.as_ref().and_then(|e| e.last_pulled_ms).or(record.last_pulled_ms),
                        tags: existing.and_then(|e| e.tags).or_else(|| record.tags.clone()),
                        ..record.clone()
                    };
                    (link, PutMode::Update(version))
                }
                None => (record.clone(), PutMode::Create),
            };
            self.storage.record_put_if(&key, encode(&link)?, mode).await?;
            Ok(link)
        })
        .await
    }

    /// Replays the journal entries older than [`JOURNAL_REPLAY_AFTER_MS`] (moves a crash left
    /// unfinished); returns how many.
    pub async fn replay_index_journal(&self) -> Result<usize> {
        let now = self.clock.now_ms();
        let mut replayed = 0usize;
        for entry in self.storage.record_list(&Key::index_journal()).await? {
            let Some((name, tag, move_id)) = keys::decode_index_journal_entry(&entry) else { continue };
            let key = Key::index_journal_entry(&name, &tag, &move_id);
            let Some(journal) = records::get::<JournalEntry>(self.storage.as_ref(), &key).await.ok().flatten() else {
                continue;
            };
            if now.saturating_sub(journal.at_ms) < JOURNAL_REPLAY_AFTER_MS {
                continue;
            }
            self.reconcile_tag(&name, &tag, &journal.digests).await?;
            self.storage.record_delete(&key).await?;
            replayed = replayed.saturating_add(1);
        }
        Ok(replayed)
    }

    /// Whether the repository's links carry the index (its marker is there).
    pub(super) async fn is_indexed(&self, name: &RepositoryName) -> Result<bool> {
        if self.indexed.contains_key(name) {
            return Ok(true);
        }
        let indexed = self.storage.record_get(&Key::image_index(name)).await?.is_some();
        if indexed {
            self.indexed.insert(name.clone(), ());
        }
        Ok(indexed)
    }

    /// Makes sure the repository's links carry the index, rebuilding it when its marker is
    /// missing (a repository written before the index).
    pub(super) async fn ensure_indexed(&self, name: &RepositoryName) -> Result<()> {
        // A name nobody pushed to has nothing to index, and asking must write nothing.
        if !self.is_indexed(name).await? && self.repository_exists(name).await? {
            self.rebuild_index(name, true).await?;
        }
        Ok(())
    }

    /// Checks the repository's index against its tag records and manifests, and with `repair`
    /// rewrites the links that are wrong (then marks the repository indexed).
    pub async fn rebuild_index(&self, name: &RepositoryName, repair: bool) -> Result<IndexReport> {
        let mut tagged: BTreeMap<Digest, BTreeSet<String>> = BTreeMap::new();
        for tag in self.storage.record_list(&Key::tags(name)).await? {
            let Ok(t) = Tag::parse(&tag) else { continue };
            if let Some((record, _)) = self.tag_target(name, &t).await? {
                tagged.entry(record.digest).or_default().insert(tag);
            }
        }
        let mut report = IndexReport::default();
        for hex in self.storage.record_list(&Key::manifest_links(name)).await? {
            let Ok(digest) = Digest::parse(&format!("sha256:{hex}")) else { continue };
            report.images = report.images.saturating_add(1);
            let snapshot = tagged.remove(&digest).unwrap_or_default();
            if self.rebuild_link(name, &digest, &snapshot, repair).await? {
                report.fixed = report.fixed.saturating_add(1);
            }
        }
        if repair {
            records::put(self.storage.as_ref(), &Key::image_index(name), &IndexMarker { version: 1 }).await?;
            self.indexed.insert(name.clone(), ());
        }
        Ok(report)
    }

    /// Rewrites one link's index fields when they are wrong; returns whether they were. Tags
    /// where the link and the snapshot differ are checked against the tag record at the time
    /// of the write, so a move racing the rebuild is neither lost nor undone.
    async fn rebuild_link(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        snapshot: &BTreeSet<String>,
        repair: bool,
    ) -> Result<bool> {
        let key = Key::manifest_link(name, digest);
        for _ in 0..RECONCILE_ROUNDS {
            let Some((bytes, version)) = self.storage.record_get_versioned(&key).await? else { return Ok(false) };
            let mut link: ManifestRecord = decode(&bytes)?;
            let listed: BTreeSet<String> = link.tags.iter().flatten().cloned().collect();
            let mut tags = BTreeSet::new();
            for t in snapshot.union(&listed) {
                let names_it = match (snapshot.contains(t), listed.contains(t)) {
                    (true, true) => true,
                    _ => match Tag::parse(t) {
                        Ok(tag) => self.tag_target(name, &tag).await?.is_some_and(|(r, _)| &r.digest == digest),
                        Err(_) => false,
                    },
                };
                if names_it {
                    tags.insert(t.clone());
                }
            }
            let tags: Vec<String> = tags.into_iter().collect();
            let (image_size, subject) = match (link.image_size, &link.subject, link.tags.is_some()) {
                (Some(size), subject, true) => (size, subject.clone()),
                _ => self.measure_image(name, digest, &link.media_type).await?,
            };
            let right = link.tags.as_ref() == Some(&tags) && link.image_size == Some(image_size);
            if right {
                return Ok(false);
            }
            if !repair {
                return Ok(true);
            }
            if link.tags.is_none() {
                // A link the index first reaches takes over its legacy pull record.
                let recorded = self.pulls.read(name, digest).await?;
                link.last_pulled_ms = link.last_pulled_ms.max(recorded);
            }
            link.tags = Some(tags);
            link.image_size = Some(image_size);
            link.subject = subject;
            match self.storage.record_put_if(&key, encode(&link)?, PutMode::Update(version)).await {
                Ok(_) => return Ok(true),
                Err(storage::Error::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Storage(storage::Error::Conflict { key: key.as_str().to_owned() }))
    }

    /// A stored manifest's image size and subject, from its bytes and its blobs' links (for an
    /// index, its largest child's size).
    pub(super) async fn measure_image(
        &self,
        name: &RepositoryName,
        digest: &Digest,
        media_type: &str,
    ) -> Result<(u64, Option<Digest>)> {
        let manifest = match self.storage.blob_read_small(digest).await {
            Ok(bytes) => Manifest::parse(&bytes, Some(media_type)).ok(),
            Err(storage::Error::NotFound) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(manifest) = manifest else { return Ok((0, None)) };
        let mut size = self.blobs_size(name, &manifest.blobs).await?;
        for child in &manifest.children {
            let child_size = match self.storage.record_get(&Key::manifest_link(name, child)).await? {
                Some(v) => match decode::<ManifestRecord>(&v)?.image_size {
                    Some(s) => s,
                    None => match self.storage.blob_read_small(child).await {
                        Ok(bytes) => match Manifest::parse(&bytes, None) {
                            Ok(m) => self.blobs_size(name, &m.blobs).await?,
                            Err(_) => 0,
                        },
                        Err(_) => 0,
                    },
                },
                None => 0,
            };
            size = size.max(child_size);
        }
        Ok((size, manifest.subject.map(|s| s.digest)))
    }

    /// The stored sizes of `blobs` as the repository links them, each distinct blob once.
    pub(super) async fn blobs_size(&self, name: &RepositoryName, blobs: &[Digest]) -> Result<u64> {
        let distinct: BTreeSet<&Digest> = blobs.iter().collect();
        let mut size = 0u64;
        for d in distinct {
            size = size.saturating_add(self.linked_blob_size(name, d).await?);
        }
        Ok(size)
    }
}
