//! Typed records over [`Storage`]: JSON that fails loudly both ways (a record that does not
//! decode is `Corrupt`; one that cannot be encoded is never written as an empty record),
//! queues of events (their ids in order, versioned reads, conditional updates), and the one
//! compare-and-swap loop, with backoff. The registry and every feature's store build on these;
//! this module knows nothing of what the records mean.

use super::{Error, EventId, Key, PutMode, Result, Storage, Version};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A record's bytes.
pub fn encode<T: Serialize>(value: &T) -> Result<Bytes> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| Error::Io(std::io::Error::other(e)))
}

/// A record read back; one that does not decode is corrupt (said so, and never retried).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("a stored record does not decode: {e}")))
}

/// The record at `key`, decoded.
pub async fn get<T: DeserializeOwned>(storage: &dyn Storage, key: &Key) -> Result<Option<T>> {
    storage.record_get(key).await?.map(|b| decode(&b)).transpose()
}

/// The record at `key`, decoded, with its version.
pub async fn get_versioned<T: DeserializeOwned>(storage: &dyn Storage, key: &Key) -> Result<Option<(T, Version)>> {
    match storage.record_get_versioned(key).await? {
        Some((bytes, version)) => Ok(Some((decode(&bytes)?, version))),
        None => Ok(None),
    }
}

/// Writes `value` at `key` (last writer wins).
pub async fn put<T: Serialize>(storage: &dyn Storage, key: &Key, value: &T) -> Result<()> {
    storage.record_put(key, encode(value)?).await
}

/// Writes `value` at `key` under `mode`'s condition: its new version, or `Conflict`.
pub async fn put_if<T: Serialize>(storage: &dyn Storage, key: &Key, value: &T, mode: PutMode) -> Result<Version> {
    storage.record_put_if(key, encode(value)?, mode).await
}

/// Writes `value` at `key` if the record is still at `version`: its new version, or `None`
/// when another writer changed it first.
pub async fn put_if_unchanged<T: Serialize>(
    storage: &dyn Storage,
    key: &Key,
    value: &T,
    version: Version,
) -> Result<Option<Version>> {
    match put_if(storage, key, value, PutMode::Update(version)).await {
        Ok(v) => Ok(Some(v)),
        Err(Error::Conflict { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The digests of the records directly below `prefix` named by a sha256's hex (a repository's
/// manifest or blob links), sorted; other names are skipped.
pub async fn sha256_names(storage: &dyn Storage, prefix: &Key) -> Result<Vec<crate::oci::Digest>> {
    Ok(storage
        .record_list(prefix)
        .await?
        .iter()
        .filter_map(|hex| crate::oci::Digest::parse(&format!("sha256:{hex}")).ok())
        .collect())
}

/// The oldest ids queued under `prefix`, at most `limit` (one listing page: ids sort by time),
/// and whether more wait.
pub async fn oldest_event_ids(storage: &dyn Storage, prefix: &Key, limit: usize) -> Result<(Vec<EventId>, bool)> {
    let page = storage.record_list_page(prefix, None, limit).await?;
    Ok((page.names.iter().filter_map(|s| EventId::parse(s)).collect(), page.more))
}

/// The ids of the events queued under `prefix`, oldest first (other names are skipped).
pub async fn event_ids(storage: &dyn Storage, prefix: &Key) -> Result<Vec<EventId>> {
    let mut ids: Vec<EventId> = storage.record_list(prefix).await?.iter().filter_map(|s| EventId::parse(s)).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Why an [`update`] did not write.
#[derive(Debug)]
pub enum UpdateError<E> {
    /// Storage failed (or other writers kept winning: `Conflict`).
    Storage(Error),
    /// `change` refused.
    Refused(E),
}

/// Changes the record at `key` (its default when absent) with `change` by a conditional
/// write, retried with backoff when another writer got there first (so `change` must only
/// look at what it is given); returns the record as written and what `change` returned.
pub async fn update<T, R, E>(
    storage: &dyn Storage,
    key: &Key,
    change: impl Fn(&mut T) -> std::result::Result<R, E>,
) -> std::result::Result<(T, R), UpdateError<E>>
where
    T: Serialize + DeserializeOwned + Default,
{
    let conflict = |e: &UpdateError<E>| matches!(e, UpdateError::Storage(Error::Conflict { .. }));
    crate::clock::retry::retry(crate::clock::retry::Backoff::CONFLICT, conflict, || async {
        let (mut value, mode) = match storage.record_get_versioned(key).await.map_err(UpdateError::Storage)? {
            Some((bytes, version)) => (decode::<T>(&bytes).map_err(UpdateError::Storage)?, PutMode::Update(version)),
            None => (T::default(), PutMode::Create),
        };
        let out = change(&mut value).map_err(UpdateError::Refused)?;
        let bytes = encode(&value).map_err(UpdateError::Storage)?;
        storage.record_put_if(key, bytes, mode).await.map_err(UpdateError::Storage)?;
        Ok((value, out))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStorage;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_updates_all_land_once_each() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let key = Key::lease("records-test");
        let adds = (0..20u32).map(|i| {
            let storage = storage.clone();
            let key = key.clone();
            tokio::spawn(async move {
                update::<Vec<u32>, (), ()>(storage.as_ref(), &key, |v| {
                    v.push(i);
                    Ok(())
                })
                .await
            })
        });
        for a in adds {
            assert!(a.await.unwrap().is_ok());
        }
        let mut got: Vec<u32> = get(storage.as_ref(), &key).await.unwrap().unwrap();
        got.sort_unstable();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
        // A refusal writes nothing; a record that does not decode is corrupt.
        let refused = update::<Vec<u32>, (), &str>(storage.as_ref(), &key, |_| Err("no")).await;
        assert!(matches!(refused, Err(UpdateError::Refused("no"))));
        storage.record_put(&key, Bytes::from_static(b"not json")).await.unwrap();
        assert!(matches!(get::<Vec<u32>>(storage.as_ref(), &key).await, Err(Error::Corrupt(_))));
    }

    /// A writer that lands between an update's read and its write: the update retries on the
    /// new record instead of overwriting it.
    #[tokio::test]
    async fn an_update_raced_between_its_read_and_its_write_keeps_the_other_writers_change() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let key = Key::lease("records-test");
        let calls = std::sync::atomic::AtomicU32::new(0);
        let (_, ()) = update::<Vec<u32>, (), ()>(storage.as_ref(), &key, |v| {
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                // The memory store's futures finish at once, so this write lands right here.
                let other =
                    futures_util::FutureExt::now_or_never(storage.record_put(&key, encode(&vec![7u32]).unwrap()));
                assert!(matches!(other, Some(Ok(()))));
            }
            v.push(1);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(get::<Vec<u32>>(storage.as_ref(), &key).await.unwrap(), Some(vec![7, 1]));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
