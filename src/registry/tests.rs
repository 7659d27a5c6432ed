//! The registry domain's rules, checked over the in-memory store: what a manifest must
//! reference, tag immutability, what the outbox is told and when, and the upload protocol.
//! No HTTP, no disk: each test runs in microseconds.

use super::outbox::{ImageAction, Outbox};
use super::repositories::{RepositorySettings, TagMutability};
use super::testing::{self, body, image_manifest, KeptEvents};
use super::{paginate, Error, Page, PushOrigin, Registry, Repo};
use crate::clock::{Clock as _, ManualClock, SharedClock};
use crate::oci::{Digest, Reference, RepositoryName, Tag};
use crate::storage::memory::MemoryStorage;
use std::sync::Arc;
use std::time::Duration;

struct Fixture {
    registry: Registry,
    clock: ManualClock,
    events: Arc<KeptEvents>,
}

fn fixture_with(settings: super::Settings, events: KeptEvents) -> Fixture {
    fixture_over(settings, events, false)
}

/// With `yielding`, every storage request gives way to other tasks first, so racing
/// operations interleave as they do over a network store.
fn fixture_over(settings: super::Settings, events: KeptEvents, yielding: bool) -> Fixture {
    let clock = ManualClock::new();
    let shared: SharedClock = Arc::new(clock.clone());
    let events = Arc::new(events);
    let memory: Arc<dyn crate::storage::Storage> = Arc::new(MemoryStorage::with_clock(shared.clone()));
    let storage: Arc<dyn crate::storage::Storage> = match yielding {
        true => Arc::new(crate::storage::counting::CountingStorage::yielding(memory)),
        false => memory,
    };
    let registry = testing::registry(storage, settings, shared).with_outbox(Outbox::new(vec![events.clone()]));
    Fixture { registry, clock, events }
}

impl Fixture {
    /// A client's push of `bytes` under `tag`.
    async fn push(&self, name: &RepositoryName, to: &str, bytes: bytes::Bytes) -> super::Result<super::StoredManifest> {
        self.registry.manifest_put(name, &tag(to), None, bytes, PushOrigin::Client).await
    }
}

fn fixture() -> Fixture {
    fixture_with(testing::settings(Duration::from_secs(3600)), KeptEvents::default())
}

fn repo(name: &str) -> RepositoryName {
    RepositoryName::parse(name).unwrap()
}

fn tag(t: &str) -> Reference {
    Reference::Tag(Tag::parse(t).unwrap())
}

const CONFIG: &[u8] = b"{}";
const LAYER: &[u8] = b"layer";

/// Pushes the config and layer blobs every test manifest names.
async fn push_blobs(registry: &Registry, name: &RepositoryName) -> (Digest, Digest) {
    let (config, layer) = (Digest::sha256_of(CONFIG), Digest::sha256_of(LAYER));
    registry.upload_monolithic(name, &config, body(CONFIG)).await.unwrap();
    registry.upload_monolithic(name, &layer, body(LAYER)).await.unwrap();
    (config, layer)
}

#[tokio::test]
async fn a_manifest_naming_a_blob_its_repository_lacks_is_refused_and_leaves_nothing() {
    let f = fixture();
    let (app, other) = (repo("team/app"), repo("team/other"));
    // The layer exists in the registry, but only in another repository.
    let (config, layer) = push_blobs(&f.registry, &other).await;
    f.registry.upload_monolithic(&app, &config, body(CONFIG)).await.unwrap();
    let manifest = image_manifest(&config, &layer, 1);
    let digest = Digest::sha256_of(&manifest);

    let err = f.push(&app, "v1", manifest).await.unwrap_err();
    assert!(matches!(&err, Error::ManifestBlobUnknown(d) if d == &layer), "{err:?}");
    assert!(!f.registry.holds_manifest(&app, &digest).await.unwrap());
    let read = f.registry.manifest_record(&Repo::Local(app.clone()), &tag("v1")).await.unwrap_err();
    assert!(matches!(read, Error::ManifestUnknown(_)), "{read:?}");
    assert!(f.events.events().is_empty(), "a refused push is never reported");
}

#[tokio::test]
async fn a_digest_reference_must_be_the_digest_of_the_bytes() {
    let f = fixture();
    let name = repo("team/app");
    let (config, layer) = push_blobs(&f.registry, &name).await;
    let claimed = Digest::sha256_of(b"something else");
    let err = f
        .registry
        .manifest_put(
            &name,
            &Reference::Digest(claimed.clone()),
            None,
            image_manifest(&config, &layer, 1),
            PushOrigin::Client,
        )
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::DigestMismatch { expected, .. } if expected == &claimed), "{err:?}");
    assert!(!f.registry.holds_manifest(&name, &claimed).await.unwrap());
}

#[tokio::test]
async fn an_immutable_tag_is_pushed_once_and_never_moves() {
    let f = fixture();
    let name = repo("team/app");
    let settings = RepositorySettings { image_tag_mutability: TagMutability::Immutable, ..Default::default() };
    f.registry.create_repository(&name, settings).await.unwrap();
    let (config, layer) = push_blobs(&f.registry, &name).await;
    let first = image_manifest(&config, &layer, 1);
    let stored = f.push(&name, "v1", first.clone()).await.unwrap();

    // Neither the same manifest again (as in ECR) nor another one may take the tag.
    for bytes in [first, image_manifest(&config, &layer, 2)] {
        let err = f.push(&name, "v1", bytes).await.unwrap_err();
        assert!(matches!(&err, Error::TagImmutable { tag, .. } if tag == "v1"), "{err:?}");
    }
    let record = f.registry.manifest_record(&Repo::Local(name.clone()), &tag("v1")).await.unwrap();
    assert_eq!(record.digest, stored.digest);
    // Other tags are still free to be pushed.
    f.push(&name, "v2", image_manifest(&config, &layer, 3)).await.unwrap();
    let pushed: Vec<_> = f.events.events().into_iter().map(|e| e.tag).collect();
    assert_eq!(pushed, [Some("v1".to_owned()), Some("v2".to_owned())], "refused pushes are not reported");
}

#[tokio::test]
async fn a_push_whose_event_cannot_be_recorded_stores_nothing() {
    let f = fixture_with(testing::settings(Duration::from_secs(3600)), KeptEvents { fail: true, ..Default::default() });
    let name = repo("team/app");
    let (config, layer) = push_blobs(&f.registry, &name).await;
    let manifest = image_manifest(&config, &layer, 1);
    let digest = Digest::sha256_of(&manifest);
    let err = f.push(&name, "v1", manifest).await.unwrap_err();
    assert!(matches!(err, Error::Storage(_)), "{err:?}");
    // Acknowledging a push its consumers never heard of would lose its replication.
    assert!(!f.registry.holds_manifest(&name, &digest).await.unwrap());
    assert!(f.registry.manifest_record(&Repo::Local(name), &tag("v1")).await.is_err());
    assert_eq!(f.events.woken(), 0);
}

#[tokio::test]
async fn a_push_is_reported_once_stored_and_wakes_its_consumers() {
    let f = fixture();
    let name = repo("team/app");
    let (config, layer) = push_blobs(&f.registry, &name).await;
    let stored = f
        .registry
        .manifest_put(&name, &tag("v1"), None, image_manifest(&config, &layer, 1), PushOrigin::Replication)
        .await
        .unwrap();
    let events = f.events.events();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(
        (event.action, &event.repository, &event.digest, event.tag.as_deref(), event.origin),
        (ImageAction::Push, &name, &stored.digest, Some("v1"), PushOrigin::Replication)
    );
    assert_eq!(f.events.woken(), 1);
}

#[tokio::test]
async fn a_retag_keeps_when_the_image_was_first_pushed() {
    let f = fixture();
    let name = repo("team/app");
    let (config, layer) = push_blobs(&f.registry, &name).await;
    let manifest = image_manifest(&config, &layer, 1);
    f.push(&name, "v1", manifest.clone()).await.unwrap();
    let local = Repo::Local(name.clone());
    let first = f.registry.manifest_record(&local, &tag("v1")).await.unwrap().pushed_at_ms;
    assert!(first.is_some());
    f.clock.advance(Duration::from_secs(86_400));
    f.push(&name, "latest", manifest).await.unwrap();
    let retagged = f.registry.manifest_record(&local, &tag("latest")).await.unwrap().pushed_at_ms;
    assert_eq!(retagged, first, "lifecycle's sinceImagePushed counts from the first push");
}

#[tokio::test]
async fn deletes_report_what_they_removed() {
    let f = fixture();
    let name = repo("team/app");
    let (config, layer) = push_blobs(&f.registry, &name).await;
    let stored = f.push(&name, "v1", image_manifest(&config, &layer, 1)).await.unwrap();
    f.registry.manifest_delete(&name, &tag("v1")).await.unwrap();
    f.registry.manifest_delete(&name, &Reference::Digest(stored.digest.clone())).await.unwrap();
    let deletes: Vec<_> = f
        .events
        .events()
        .into_iter()
        .filter(|e| e.action == ImageAction::Delete)
        .map(|e| (e.digest, e.tag, e.removes_manifest))
        .collect();
    assert_eq!(deletes, [(stored.digest.clone(), Some("v1".to_owned()), false), (stored.digest.clone(), None, true)]);
    let gone = f.registry.manifest_record(&Repo::Local(name.clone()), &Reference::Digest(stored.digest)).await;
    assert!(matches!(gone, Err(Error::ManifestUnknown(_))), "{gone:?}");
    // Deleting what is gone is an error, and reports nothing.
    assert!(matches!(f.registry.manifest_delete(&name, &tag("v1")).await, Err(Error::ManifestUnknown(_))));
    assert_eq!(f.events.events().len(), 3);
}

#[tokio::test]
async fn deletes_are_refused_when_turned_off() {
    let settings = super::Settings { delete_enabled: false, ..testing::settings(Duration::from_secs(3600)) };
    let f = fixture_with(settings, KeptEvents::default());
    let name = repo("team/app");
    let (config, layer) = push_blobs(&f.registry, &name).await;
    f.push(&name, "v1", image_manifest(&config, &layer, 1)).await.unwrap();
    assert!(matches!(f.registry.manifest_delete(&name, &tag("v1")).await, Err(Error::DeleteDisabled)));
    assert!(matches!(f.registry.blob_delete(&name, &layer).await, Err(Error::DeleteDisabled)));
    assert!(f.registry.manifest_record(&Repo::Local(name), &tag("v1")).await.is_ok());
}

#[tokio::test]
async fn chunks_must_follow_each_other_and_the_blob_is_the_bytes_received() {
    let f = fixture();
    let name = repo("team/app");
    let id = f.registry.upload_start(&name).await.unwrap();
    assert_eq!(f.registry.upload_append(&name, &id, Some(0), body(b"abc")).await.unwrap(), 3);
    let err = f.registry.upload_append(&name, &id, Some(0), body(b"abc")).await.unwrap_err();
    assert!(matches!(err, Error::RangeMismatch { start: 0, size: 3 }), "{err:?}");
    assert_eq!(f.registry.upload_status(&name, &id).await.unwrap(), 3);
    let digest = Digest::sha256_of(b"abcdef");
    assert_eq!(f.registry.upload_finish(&name, &id, &digest, Some(3), Some(body(b"def"))).await.unwrap(), 6);
    assert_eq!(f.registry.blob_size(&Repo::Local(name.clone()), &digest).await.unwrap(), 6);
    // A finished session is gone: a second finish cannot commit anything.
    let again = f.registry.upload_finish(&name, &id, &digest, None, None).await.unwrap_err();
    assert!(matches!(again, Error::UploadUnknown), "{again:?}");
}

#[tokio::test]
async fn a_wrong_digest_stores_nothing_and_ends_the_session() {
    let f = fixture();
    let name = repo("team/app");
    let id = f.registry.upload_start(&name).await.unwrap();
    let claimed = Digest::sha256_of(b"not these bytes");
    let err = f.registry.upload_finish(&name, &id, &claimed, None, Some(body(b"abc"))).await.unwrap_err();
    assert!(matches!(&err, Error::DigestMismatch { expected, .. } if expected == &claimed), "{err:?}");
    assert!(matches!(f.registry.upload_status(&name, &id).await, Err(Error::UploadUnknown)));
    for d in [claimed, Digest::sha256_of(b"abc")] {
        let size = f.registry.blob_size(&Repo::Local(name.clone()), &d).await;
        assert!(matches!(size, Err(Error::NameUnknown(_) | Error::BlobUnknown(_))), "{size:?}");
    }
    assert!(!f.registry.repository_exists(&name).await.unwrap(), "a failed upload creates no repository");
}

#[tokio::test]
async fn an_upload_session_belongs_to_its_repository() {
    let f = fixture();
    let (mine, theirs) = (repo("team/app"), repo("other/app"));
    let id = f.registry.upload_start(&mine).await.unwrap();
    assert!(matches!(f.registry.upload_status(&theirs, &id).await, Err(Error::UploadUnknown)));
    assert!(matches!(f.registry.upload_append(&theirs, &id, None, body(b"x")).await, Err(Error::UploadUnknown)));
    assert!(matches!(f.registry.upload_cancel(&theirs, &id).await, Err(Error::UploadUnknown)));
    assert_eq!(f.registry.upload_status(&mine, &id).await.unwrap(), 0);
}

#[tokio::test]
async fn a_mount_links_only_what_its_source_holds() {
    let f = fixture();
    let (source, target, empty) = (repo("team/base"), repo("team/app"), repo("team/empty"));
    let (_, layer) = push_blobs(&f.registry, &source).await;
    assert!(!f.registry.upload_mount(&target, &layer, &empty).await.unwrap());
    assert!(matches!(
        f.registry.blob_size(&Repo::Local(target.clone()), &layer).await,
        Err(Error::NameUnknown(_) | Error::BlobUnknown(_))
    ));
    assert!(f.registry.upload_mount(&target, &layer, &source).await.unwrap());
    assert_eq!(f.registry.blob_size(&Repo::Local(target), &layer).await.unwrap(), LAYER.len() as u64);
}

#[tokio::test]
async fn idle_uploads_are_purged_and_active_ones_kept() {
    let f = fixture();
    let name = repo("team/app");
    let idle = f.registry.upload_start(&name).await.unwrap();
    f.clock.advance(Duration::from_secs(7200));
    let active = f.registry.upload_start(&name).await.unwrap();
    f.registry.upload_append(&name, &active, None, body(b"x")).await.unwrap();
    let purged = f.registry.purge_uploads().await.unwrap();
    let left = f.registry.upload_ids().await.unwrap();
    assert_eq!((purged, left.contains(&idle), left.contains(&active)), (1, false, true));
}

#[test]
fn pagination() {
    let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
    assert_eq!(paginate(all.clone(), Some(2), None), Page { items: vec!["a".into(), "b".into()], more: true });
    assert_eq!(paginate(all.clone(), Some(2), Some("b")), Page { items: vec!["c".into(), "d".into()], more: false });
    assert_eq!(paginate(all.clone(), Some(0), None), Page { items: vec![], more: true });
    assert_eq!(paginate(all.clone(), None, Some("bb")).items, vec!["c".to_string(), "d".into()]);
    assert_eq!(paginate(all, Some(usize::MAX), Some("z")), Page { items: vec![], more: false });
}

#[tokio::test]
async fn an_image_lists_its_tags_references_and_referrer_subject() {
    let f = fixture();
    let name = repo("team/app");
    let (config, layer) = push_blobs(&f.registry, &name).await;
    let image = f.push(&name, "v1", image_manifest(&config, &layer, 1)).await.unwrap();
    f.push(&name, "latest", image_manifest(&config, &layer, 1)).await.unwrap();
    let second = image_manifest(&config, &layer, 2);
    let by_digest = Reference::Digest(Digest::sha256_of(&second));
    let untagged = f.registry.manifest_put(&name, &by_digest, None, second, PushOrigin::Client).await.unwrap();
    let mut images = f.registry.repository_images(&name).await.unwrap();
    images.sort_by_key(|i| std::cmp::Reverse(i.tags.len()));
    assert_eq!(images.len(), 2);
    assert_eq!(
        (&images[0].digest, images[0].tags.as_slice(), images[0].blobs.as_slice()),
        (&image.digest, &["latest".to_owned(), "v1".to_owned()][..], &[config.clone(), layer.clone()][..])
    );
    assert_eq!((&images[1].digest, images[1].tags.is_empty()), (&untagged.digest, true));
    assert!(images.iter().all(|i| i.pushed_at_ms.is_some() && i.last_pulled_ms.is_none()));
    // A pull is seen at once (noted in memory before any flush).
    f.registry.manifest_get(&Repo::Local(name.clone()), &tag("v1")).await.unwrap();
    let pulled = f.registry.repository_images(&name).await.unwrap();
    assert!(pulled.iter().any(|i| i.digest == image.digest && i.last_pulled_ms.is_some()));
}

#[tokio::test]
async fn expiring_an_image_retagged_since_it_was_judged_removes_nothing() {
    let f = fixture();
    let name = repo("team/app");
    let (config, layer) = push_blobs(&f.registry, &name).await;
    let image = f.push(&name, "v1", image_manifest(&config, &layer, 1)).await.unwrap();
    let judged = vec!["v1".to_owned()];
    // A push tags it again between the judgement and the expiry.
    f.push(&name, "keep", image_manifest(&config, &layer, 1)).await.unwrap();
    assert!(!f.registry.expire_image(&name, &image.digest, &judged).await.unwrap());
    assert!(f.registry.holds_manifest(&name, &image.digest).await.unwrap());
    // Judged with its tags as they are, it goes, with its tags; the outbox hears of it.
    let now = vec!["keep".to_owned(), "v1".to_owned()];
    assert!(f.registry.expire_image(&name, &image.digest, &now).await.unwrap());
    assert!(!f.registry.holds_manifest(&name, &image.digest).await.unwrap());
    assert!(f.registry.repository_images(&name).await.unwrap().is_empty());
    let last = f.events.events().pop().map(|e| (e.action, e.removes_manifest));
    assert_eq!(last, Some((ImageAction::Delete, true)));
}

#[tokio::test]
async fn expiry_works_with_deletes_turned_off() {
    let settings = super::Settings { delete_enabled: false, ..testing::settings(Duration::from_secs(3600)) };
    let f = fixture_with(settings, KeptEvents::default());
    let name = repo("team/app");
    let (config, layer) = push_blobs(&f.registry, &name).await;
    let image = f.push(&name, "v1", image_manifest(&config, &layer, 1)).await.unwrap();
    // A lifecycle policy the owner set expires images even where clients may not delete.
    assert!(f.registry.expire_image(&name, &image.digest, &["v1".to_owned()]).await.unwrap());
    assert!(!f.registry.holds_manifest(&name, &image.digest).await.unwrap());
}

/// The tags the index lists under `digest`.
async fn indexed_tags(f: &Fixture, name: &RepositoryName, digest: &Digest) -> Option<Vec<String>> {
    let link = f.registry.storage.record_get(&crate::storage::Key::manifest_link(name, digest)).await.unwrap()?;
    super::manifests::decode::<super::ManifestRecord>(&link).unwrap().tags
}

#[tokio::test]
async fn the_index_follows_pushes_retags_and_deletes() {
    let f = fixture();
    let name = repo("team/app");
    let (config, layer) = push_blobs(&f.registry, &name).await;
    let a = f.push(&name, "v1", image_manifest(&config, &layer, 1)).await.unwrap().digest;
    f.push(&name, "v2", image_manifest(&config, &layer, 1)).await.unwrap();
    assert_eq!(indexed_tags(&f, &name, &a).await, Some(vec!["v1".to_owned(), "v2".to_owned()]));
    let b = f.push(&name, "v1", image_manifest(&config, &layer, 2)).await.unwrap().digest;
    assert_eq!(indexed_tags(&f, &name, &a).await, Some(vec!["v2".to_owned()]));
    assert_eq!(indexed_tags(&f, &name, &b).await, Some(vec!["v1".to_owned()]));
    f.registry.manifest_delete(&name, &tag("v2")).await.unwrap();
    assert_eq!(indexed_tags(&f, &name, &a).await, Some(vec![]));
    // Every move finished: nothing is left in the journal.
    let journal = f.registry.storage.record_list(&crate::storage::Key::index_journal()).await.unwrap();
    assert!(journal.is_empty(), "{journal:?}");
    let images = f.registry.repository_images(&name).await.unwrap();
    let size = (CONFIG.len() + LAYER.len()) as u64;
    assert!(images.iter().all(|i| i.image_size == Some(size)), "{images:?}");
}

#[tokio::test]
async fn a_repository_written_before_the_index_is_indexed_by_its_first_reader() {
    let f = fixture();
    let name = repo("team/app");
    let (config, layer) = push_blobs(&f.registry, &name).await;
    let a = f.push(&name, "v1", image_manifest(&config, &layer, 1)).await.unwrap().digest;
    f.push(&name, "latest", image_manifest(&config, &layer, 1)).await.unwrap();
    // As an older Ferry left it: links without index fields, no marker.
    let storage = f.registry.storage.clone();
    let key = crate::storage::Key::manifest_link(&name, &a);
    let mut link: super::ManifestRecord =
        super::manifests::decode(&storage.record_get(&key).await.unwrap().unwrap()).unwrap();
    (link.tags, link.image_size) = (None, None);
    storage.record_put(&key, super::manifests::encode(&link).unwrap()).await.unwrap();
    storage.record_delete(&crate::storage::Key::image_index(&name)).await.unwrap();
    f.registry.indexed.invalidate(&name);

    let check = f.registry.rebuild_index(&name, false).await.unwrap();
    assert_eq!((check.images, check.fixed), (1, 1), "a check finds the link to fix and changes nothing");
    assert_eq!(indexed_tags(&f, &name, &a).await, None);
    let images = f.registry.repository_images(&name).await.unwrap();
    assert_eq!(images[0].tags, ["latest", "v1"]);
    assert_eq!(indexed_tags(&f, &name, &a).await, Some(vec!["latest".to_owned(), "v1".to_owned()]));
    assert!(storage.record_get(&crate::storage::Key::image_index(&name)).await.unwrap().is_some());
    assert_eq!(f.registry.rebuild_index(&name, false).await.unwrap().fixed, 0);
}

#[tokio::test]
async fn a_move_a_crash_left_unfinished_is_finished_by_the_journal() {
    let f = fixture();
    let name = repo("team/app");
    let (config, layer) = push_blobs(&f.registry, &name).await;
    let a = f.push(&name, "v1", image_manifest(&config, &layer, 1)).await.unwrap().digest;
    let second = image_manifest(&config, &layer, 2);
    let by_digest = Reference::Digest(Digest::sha256_of(&second));
    let b = f.registry.manifest_put(&name, &by_digest, None, second, PushOrigin::Client).await.unwrap().digest;
    // The process died after moving v1 to b and before the index followed: the tag record and
    // the journal say so, the links do not.
    let storage = f.registry.storage.clone();
    let t = Tag::parse("v1").unwrap();
    let journal = serde_json::json!({ "digests": [a, b], "atMs": f.clock.now_ms() });
    let entry = crate::storage::Key::index_journal_entry(&name, &t, &crate::storage::EventId::new(f.clock.now_ms()));
    storage.record_put(&entry, journal.to_string().into()).await.unwrap();
    let moved = super::ManifestRecord::new(b.clone(), "application/vnd.oci.image.manifest.v1+json".into(), 1);
    storage.record_put(&crate::storage::Key::tag(&name, &t), super::manifests::encode(&moved).unwrap()).await.unwrap();
    assert_eq!(indexed_tags(&f, &name, &a).await, Some(vec!["v1".to_owned()]));

    // A fresh entry may belong to a move still running: left alone.
    assert_eq!(f.registry.replay_index_journal().await.unwrap(), 0);
    f.clock.advance(Duration::from_millis(super::index::JOURNAL_REPLAY_AFTER_MS));
    assert_eq!(f.registry.replay_index_journal().await.unwrap(), 1);
    assert_eq!(indexed_tags(&f, &name, &a).await, Some(vec![]));
    assert_eq!(indexed_tags(&f, &name, &b).await, Some(vec!["v1".to_owned()]));
    assert!(storage.record_list(&crate::storage::Key::index_journal()).await.unwrap().is_empty());
}

/// Sixteen pushes of one tag to sixteen manifests at once: whichever wins, exactly its link
/// lists the tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_moves_of_one_tag_leave_it_listed_once_where_it_points() {
    let f = Arc::new(fixture_over(testing::settings(Duration::from_secs(3600)), KeptEvents::default(), true));
    let name = repo("team/app");
    let (config, layer) = push_blobs(&f.registry, &name).await;
    // Rounds, each racing a tag of its own, so the interleavings that matter come up.
    for round in 0..8u32 {
        let to = format!("r{round}");
        let pushes = (0..16u32).map(|n| {
            let (f, name, config, layer, to) = (f.clone(), name.clone(), config.clone(), layer.clone(), to.clone());
            let bytes = image_manifest(&config, &layer, round * 100 + n);
            tokio::spawn(async move { f.push(&name, &to, bytes).await.map(|s| s.digest) })
        });
        let mut digests = Vec::new();
        for p in futures_util::future::join_all(pushes).await {
            digests.push(p.unwrap().unwrap());
        }
        let winner = f.registry.manifest_record(&Repo::Local(name.clone()), &tag(&to)).await.unwrap().digest;
        for d in &digests {
            let listed = indexed_tags(&f, &name, d).await.unwrap_or_default();
            assert_eq!(listed.contains(&to), d == &winner, "round {round}, {d}: {listed:?}");
        }
    }
}
