//! The storage contract: what every backend must do, checked through the [`Storage`] trait
//! alone: content, records, uploads, seals and commits of exactly the verified bytes,
//! conditional writes where two racing writers never both win, and leases built on them. Run
//! by each backend's tests (the memory and filesystem backends' unit tests, and the S3 suite
//! against moto and s3s-fs). Test support: it panics on the first broken promise.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::too_many_lines,
    missing_docs
)]

use super::lease::{Lease, LeaseError};
use super::{ByteRange, ByteStream, Key, ListPage, PutMode, Storage, UploadId};
use crate as ferry;
use crate::clock::ManualClock;
use crate::oci::Digest;
use crate::storage;
use bytes::Bytes;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// `size` bytes from `seed` (xorshift): distinct content without a random source.
fn random_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size);
    out
}

/// `sha256:<hex>` of `bytes`.
fn digest(bytes: &[u8]) -> String {
    Digest::sha256_of(bytes).to_string()
}

/// The whole of a stream.
async fn collect(mut s: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// `chunks` as a stream.
fn stream_of(chunks: Vec<Vec<u8>>) -> ByteStream {
    futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c)))).boxed()
}

/// What every backend must do, checked through the trait alone.
/// Checks every promise of the trait on `store` (`what` names it in failures). `atomic`: the
/// server decides concurrent conditional writes one at a time (AWS S3, moto, the filesystem);
/// s3s-fs 0.14 checks the condition and then writes, so two racing writers can both win there,
/// and only the sequential half of the conditional-write and lease checks runs on it.
pub async fn storage_contract(store: Arc<dyn Storage>, what: &str, atomic: bool) {
    let small = Bytes::from_static(b"{\"small\":true}");
    let d = Digest::sha256_of(&small);
    assert_eq!(store.blob_size(&d).await.unwrap(), None);
    let len = small.len() as u64;
    assert!(matches!(store.blob_read(&d, None, len).await, Err(storage::Error::NotFound)));
    store.blob_put_small(&d, small.clone()).await.unwrap();
    assert_eq!(store.blob_size(&d).await.unwrap(), Some(len));
    assert_eq!(store.blob_read_small(&d).await.unwrap(), small);
    // Bytes that do not hash to their digest are never returned as that digest's content.
    let other = Digest::sha256_of(b"what the digest names");
    store.blob_put_small(&other, Bytes::from_static(b"something else")).await.unwrap();
    assert!(matches!(store.blob_read_small(&other).await, Err(storage::Error::Corrupt(_))));
    assert_eq!(
        collect(store.blob_read(&d, Some(ByteRange { start: 2, end: 6 }), len).await.unwrap()).await,
        &small[2..=6]
    );
    // A stored object of another length than its link records is never streamed as if whole.
    for wrong in [len - 1, len + 1] {
        assert!(matches!(store.blob_read(&d, None, wrong).await, Err(storage::Error::Corrupt(_))), "{wrong}");
    }

    // Records: put, get, list one level, delete.
    let name = ferry::oci::RepositoryName::parse("team/app").unwrap();
    for tag in ["b", "a", "c"] {
        let key = Key::tag(&name, &ferry::oci::Tag::parse(tag).unwrap());
        store.record_put(&key, Bytes::from(tag.to_owned())).await.unwrap();
    }
    assert_eq!(store.record_list(&Key::tags(&name)).await.unwrap(), ["a", "b", "c"]);
    // Pages: sorted, after a name, at most the limit, saying whether more follow; records
    // only (a sub-folder's records are not this folder's).
    let page = |after: Option<&'static str>, limit| {
        let store = store.clone();
        let name = name.clone();
        async move { store.record_list_page(&Key::tags(&name), after, limit).await.unwrap() }
    };
    let nested = Key::lease("contract-dir/sub/record");
    store.record_put(&nested, Bytes::from_static(b"1")).await.unwrap();
    assert_eq!(page(None, 2).await, ListPage { names: vec!["a".into(), "b".into()], more: true }, "{what}");
    assert_eq!(page(Some("a"), 5).await, ListPage { names: vec!["b".into(), "c".into()], more: false }, "{what}");
    assert_eq!(page(Some("c"), 5).await, ListPage::default(), "{what}");
    assert_eq!(page(Some("bb"), 1).await, ListPage { names: vec!["c".into()], more: false }, "{what}");
    assert_eq!(page(None, 0).await, ListPage { names: vec![], more: true }, "{what}");
    assert_eq!(store.record_list(&Key::lease("contract-dir")).await.unwrap(), ["sub"], "{what}");
    let folders_only = store.record_list_page(&Key::lease("contract-dir"), None, 10).await.unwrap();
    assert_eq!(folders_only, ListPage::default(), "{what}");
    let records = store.record_list_page(&Key::lease("contract-dir/sub"), None, 10).await.unwrap();
    assert_eq!(records.names, ["record"], "{what}");
    store.record_delete(&nested).await.unwrap();
    let a = Key::tag(&name, &ferry::oci::Tag::parse("a").unwrap());
    assert_eq!(store.record_get(&a).await.unwrap().unwrap().as_ref(), b"a");
    assert!(store.record_delete(&a).await.unwrap());
    assert!(!store.record_delete(&a).await.unwrap());
    assert_eq!(store.record_get(&a).await.unwrap(), None);
    store.record_put(&Key::catalog_entry(&name), Bytes::new()).await.unwrap();
    assert_eq!(store.record_list(&Key::catalog()).await.unwrap(), ["team+app"]);

    // Uploads: several appends (one bigger than a part), ranges across them, commit.
    let data = random_bytes(12 << 20, 5);
    let id = UploadId::new();
    store.upload_create(&id, Bytes::from_static(b"{}")).await.unwrap();
    assert_eq!(store.upload_state(&id).await.unwrap().as_ref(), b"{}");
    assert_eq!(store.upload_size(&id).await.unwrap(), 0);
    let cuts = [0, 1 << 20, (1 << 20) + 7, 9 << 20, 12 << 20];
    for w in cuts.windows(2) {
        let piece = data[w[0]..w[1]].to_vec();
        let size = store
            .upload_append(&id, stream_of(vec![piece[..piece.len() / 2].to_vec(), piece[piece.len() / 2..].to_vec()]))
            .await
            .unwrap();
        assert_eq!(size, w[1] as u64);
    }
    assert_eq!(store.upload_size(&id).await.unwrap(), data.len() as u64);
    let r = ByteRange { start: (1 << 20) - 3, end: (9 << 20) + 5 };
    assert_eq!(collect(store.upload_read(&id, Some(r)).await.unwrap()).await, &data[r.start as usize..=r.end as usize]);
    assert_eq!(collect(store.upload_read(&id, None).await.unwrap()).await, data);
    assert!(store.upload_list().await.unwrap().iter().any(|(u, _)| *u == id));
    let big = Digest::parse(&digest(&data)).unwrap();
    // Sealed once: then no one (on any replica) sees the session's state, and a second seal fails.
    store.upload_seal(&id).await.unwrap();
    assert!(matches!(store.upload_state(&id).await, Err(storage::Error::NotFound)));
    assert!(matches!(store.upload_seal(&id).await, Err(storage::Error::Conflict { .. } | storage::Error::NotFound)));
    // Committing more bytes than the session holds stores nothing.
    let held = data.len() as u64;
    assert!(matches!(store.upload_commit(&id, &big, held + 1).await, Err(storage::Error::Corrupt(_))));
    assert_eq!(store.blob_size(&big).await.unwrap(), None);
    store.upload_commit(&id, &big, held).await.unwrap();
    assert_eq!(store.blob_size(&big).await.unwrap(), Some(held));
    assert_eq!(collect(store.blob_read(&big, None, held).await.unwrap()).await, data);
    assert!(matches!(store.upload_state(&id).await, Err(storage::Error::NotFound)));
    assert!(!store.upload_list().await.unwrap().iter().any(|(u, _)| *u == id));

    // One long append reports its progress as it goes (a fill's readers follow it): sizes
    // rise, never run ahead of what was sent, start before the stream ends, and end at the size.
    let followed = UploadId::new();
    store.upload_create(&followed, Bytes::from_static(b"{}")).await.unwrap();
    let data = random_bytes(16 << 20, 6);
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let body = {
        let (data, sent) = (Bytes::from(data.clone()), sent.clone());
        futures_util::stream::iter((0..data.len()).step_by(64 << 10).map(move |at| {
            let chunk = data.slice(at..(at + (64 << 10)).min(data.len()));
            sent.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::SeqCst);
            Ok(chunk)
        }))
        .boxed()
    };
    let reports = std::sync::Mutex::new(Vec::new());
    let on_written = |size: u64| {
        let sent = sent.load(std::sync::atomic::Ordering::SeqCst);
        reports.lock().unwrap().push((size, sent));
    };
    let size = store.upload_append_observed(&followed, body, &on_written).await.unwrap();
    assert_eq!(size, data.len() as u64);
    let reports = reports.into_inner().unwrap();
    assert_eq!(reports.last().map(|r| r.0), Some(size), "the last report is the final size: {reports:?}");
    assert!(reports.windows(2).all(|w| w[0].0 < w[1].0), "sizes rise: {reports:?}");
    assert!(reports.iter().all(|(size, sent)| size <= sent), "never ahead of the stream: {reports:?}");
    assert!(reports.iter().any(|(_, sent)| *sent < data.len() as u64), "progress before the end: {reports:?}");
    assert!(store.append_buffer_bytes() < data.len() as u64);
    assert_eq!(collect(store.upload_read(&followed, None).await.unwrap()).await, data);
    store.upload_delete(&followed).await.unwrap();

    // The cleanup of a backend's own leftovers works, or stands down quietly where the server
    // cannot list them (s3s-fs has no ListMultipartUploads).
    store.cleanup(std::time::SystemTime::now()).await.unwrap();
    store.cleanup(std::time::SystemTime::now()).await.unwrap();

    // A cancelled upload leaves nothing.
    let gone = UploadId::new();
    store.upload_create(&gone, Bytes::from_static(b"{}")).await.unwrap();
    store.upload_append(&gone, stream_of(vec![vec![1; 1000]])).await.unwrap();
    store.upload_delete(&gone).await.unwrap();
    assert!(matches!(store.upload_state(&gone).await, Err(storage::Error::NotFound)));
    assert!(!store.upload_list().await.unwrap().iter().any(|(u, _)| *u == gone));

    conditional_writes(store.as_ref(), what, atomic).await;
    leases(store.as_ref(), what, atomic).await;
}

/// Conditional writes: create only when absent, update only from the version read; of two
/// writers racing from one state, exactly one wins.
async fn conditional_writes(store: &dyn Storage, what: &str, atomic: bool) {
    let key = Key::lease("contract-record");
    assert_eq!(store.record_get_versioned(&key).await.unwrap(), None);
    let v1 = store.record_put_if(&key, Bytes::from_static(b"one"), PutMode::Create).await.unwrap();
    // The conflict names what was written, relative to the store (so a log says which record).
    match store.record_put_if(&key, Bytes::from_static(b"x"), PutMode::Create).await {
        Err(storage::Error::Conflict { key: named }) => assert_eq!(named, key.as_str(), "{what}"),
        other => panic!("{what}: a second create must conflict: {other:?}"),
    }
    let (value, read) = store.record_get_versioned(&key).await.unwrap().unwrap();
    assert_eq!((value.as_ref(), &read), (&b"one"[..], &v1));
    let v2 = store.record_put_if(&key, Bytes::from_static(b"two"), PutMode::Update(v1.clone())).await.unwrap();
    assert_ne!(v1, v2);
    // An update from a version that is no longer current is refused, and changes nothing.
    assert!(matches!(
        store.record_put_if(&key, Bytes::from_static(b"stale"), PutMode::Update(v1)).await,
        Err(storage::Error::Conflict { .. })
    ));
    assert_eq!(store.record_get(&key).await.unwrap().unwrap().as_ref(), b"two");

    if !atomic {
        return;
    }
    // Racing: eight writers create one record, eight update from one version; one wins each.
    let race = Key::lease("contract-race");
    let creates = (0..8u8).map(|i| store.record_put_if(&race, Bytes::from(vec![i]), PutMode::Create));
    let won = futures_util::future::join_all(creates).await;
    assert_eq!(won.iter().filter(|r| r.is_ok()).count(), 1, "{what}: racing creates: {won:?}");
    assert!(won.iter().all(|r| r.is_ok() || matches!(r, Err(storage::Error::Conflict { .. }))));
    let (_, v) = store.record_get_versioned(&race).await.unwrap().unwrap();
    let updates = (0..8u8).map(|i| store.record_put_if(&race, Bytes::from(vec![100 + i]), PutMode::Update(v.clone())));
    let won = futures_util::future::join_all(updates).await;
    assert_eq!(won.iter().filter(|r| r.is_ok()).count(), 1, "{what}: racing updates: {won:?}");
    let winner = won.iter().position(|r| r.is_ok()).unwrap() as u8;
    assert_eq!(store.record_get(&race).await.unwrap().unwrap().as_ref(), &[100 + winner]);
}

/// Leases: one holder at a time; renewals; a holder past its expiry (paused) cannot commit,
/// and its lease is taken over with a higher generation; a released lease is free at once.
async fn leases(store: &dyn Storage, what: &str, atomic: bool) {
    let clock = ManualClock::new();
    let key = || Key::lease("contract-lease");
    let ttl = Duration::from_secs(30);
    // Two replicas race for it: one holds it (one after the other where writes are not atomic).
    let (a, b) = if atomic {
        tokio::join!(
            Lease::acquire(store, &clock, key(), "replica-a", ttl),
            Lease::acquire(store, &clock, key(), "replica-b", ttl)
        )
    } else {
        let a = Lease::acquire(store, &clock, key(), "replica-a", ttl).await;
        (a, Lease::acquire(store, &clock, key(), "replica-b", ttl).await)
    };
    let (mut holder, other) = match (a, b) {
        (Ok(l), Err(e)) => (l, ("replica-b", e)),
        (Err(e), Ok(l)) => (l, ("replica-a", e)),
        other => panic!("{what}: exactly one replica must get the lease: {other:?}"),
    };
    assert!(matches!(other.1, LeaseError::Held { .. } | LeaseError::Lost), "{:?}", other.1);
    holder.check(store, &clock).await.unwrap();
    assert!(matches!(Lease::acquire(store, &clock, key(), other.0, ttl).await, Err(LeaseError::Held { .. })));
    clock.advance(Duration::from_secs(20));
    holder.renew(store, &clock).await.unwrap();
    clock.advance(Duration::from_secs(20));
    holder.check(store, &clock).await.unwrap();
    assert!(matches!(Lease::acquire(store, &clock, key(), other.0, ttl).await, Err(LeaseError::Held { .. })));
    // The holder dies (or pauses) past its expiry: the other replica takes over.
    clock.advance(Duration::from_secs(31));
    let taken = Lease::acquire(store, &clock, key(), other.0, ttl).await.unwrap();
    assert_eq!(taken.generation(), holder.generation() + 1);
    assert!(matches!(holder.check(store, &clock).await, Err(LeaseError::Lost)), "a paused holder cannot commit");
    assert!(matches!(holder.renew(store, &clock).await, Err(LeaseError::Lost)));
    taken.check(store, &clock).await.unwrap();
    // Released: free at once for anyone.
    taken.release(store).await.unwrap();
    let again = Lease::acquire(store, &clock, key(), "replica-c", ttl).await.unwrap();
    again.check(store, &clock).await.unwrap();
}
