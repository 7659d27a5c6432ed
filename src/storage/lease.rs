//! Leases: which replica does a background job (the upload purge now; GC, lifecycle and
//! replication later). A lease is one record written only with conditional writes, holding its
//! owner, its expiry and a generation that grows with every change of hands. A holder renews it
//! before it expires and checks it before committing work, so a holder that paused past its
//! expiry (and was replaced) cannot commit. Knows records and the clock, nothing of the jobs.

use super::{Error, Key, PutMode, Result, Storage, Version};
use crate::clock::Clock;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What the lease record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Who holds it (a replica's id).
    pub owner: String,
    /// When it lapses unless renewed (ms since the Unix epoch).
    pub expires_at_ms: u64,
    /// Grows by one each time the lease changes hands.
    pub generation: u64,
}

/// A lease this process holds.
#[derive(Debug, Clone)]
pub struct Lease {
    key: Key,
    owner: String,
    ttl: Duration,
    generation: u64,
    expires_at_ms: u64,
    version: Version,
}

/// Why a lease could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another owner holds it and it has not expired.
    #[error("held by {owner} until {expires_at_ms} (ms since the epoch)")]
    Held {
        /// The holder.
        owner: String,
        /// When it lapses.
        expires_at_ms: u64,
    },
    /// This holder lost it: it expired, or another owner took it over.
    #[error("the lease was lost")]
    Lost,
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] Error),
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

fn encode(record: &LeaseRecord) -> Result<Bytes> {
    serde_json::to_vec(record).map(Bytes::from).map_err(|e| Error::Corrupt(format!("lease record: {e}")))
}

fn decode(key: &Key, bytes: &[u8]) -> Result<LeaseRecord> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(format!("{key}: not a lease record: {e}")))
}

impl Lease {
    /// Takes the lease at `key` for `owner` for `ttl`: when nobody holds it, when its holder
    /// let it expire (a takeover: the generation grows), or when `owner` holds it already.
    pub async fn acquire(
        storage: &dyn Storage,
        clock: &dyn Clock,
        key: Key,
        owner: &str,
        ttl: Duration,
    ) -> std::result::Result<Self, LeaseError> {
        let now = clock.now_ms();
        let expires_at_ms = now.saturating_add(ttl_ms(ttl));
        let (generation, mode) = match storage.record_get_versioned(&key).await? {
            None => (1, PutMode::Create),
            Some((bytes, version)) => {
                let current = decode(&key, &bytes)?;
                if current.owner != owner && current.expires_at_ms > now {
                    return Err(LeaseError::Held { owner: current.owner, expires_at_ms: current.expires_at_ms });
                }
                let generation =
                    if current.owner == owner { current.generation } else { current.generation.saturating_add(1) };
                (generation, PutMode::Update(version))
            }
        };
        let record = LeaseRecord { owner: owner.to_owned(), expires_at_ms, generation };
        match storage.record_put_if(&key, encode(&record)?, mode).await {
            Ok(version) => Ok(Self { key, owner: owner.to_owned(), ttl, generation, expires_at_ms, version }),
            // Another replica took it between the read and the write.
            Err(Error::Conflict { .. }) => Err(LeaseError::Lost),
            Err(e) => Err(e.into()),
        }
    }

    /// Extends the lease by its ttl from now; `Lost` when it expired or changed hands.
    pub async fn renew(&mut self, storage: &dyn Storage, clock: &dyn Clock) -> std::result::Result<(), LeaseError> {
        let now = clock.now_ms();
        if now >= self.expires_at_ms {
            return Err(LeaseError::Lost);
        }
        let expires_at_ms = now.saturating_add(ttl_ms(self.ttl));
        let record = LeaseRecord { owner: self.owner.clone(), expires_at_ms, generation: self.generation };
        match storage.record_put_if(&self.key, encode(&record)?, PutMode::Update(self.version.clone())).await {
            Ok(version) => {
                self.version = version;
                self.expires_at_ms = expires_at_ms;
                Ok(())
            }
            Err(Error::Conflict { .. }) => Err(LeaseError::Lost),
            Err(e) => Err(e.into()),
        }
    }

    /// Checks, before committing work, that this holder still holds the lease: not expired by
    /// its own clock, and the record still names this owner and generation.
    pub async fn check(&self, storage: &dyn Storage, clock: &dyn Clock) -> std::result::Result<(), LeaseError> {
        if clock.now_ms() >= self.expires_at_ms {
            return Err(LeaseError::Lost);
        }
        match storage.record_get(&self.key).await? {
            Some(bytes) => {
                let current = decode(&self.key, &bytes)?;
                if current.owner == self.owner && current.generation == self.generation {
                    Ok(())
                } else {
                    Err(LeaseError::Lost)
                }
            }
            None => Err(LeaseError::Lost),
        }
    }

    /// Gives the lease up (it expires now), so another replica need not wait for its expiry.
    pub async fn release(self, storage: &dyn Storage) -> std::result::Result<(), LeaseError> {
        let record = LeaseRecord { owner: self.owner.clone(), expires_at_ms: 0, generation: self.generation };
        match storage.record_put_if(&self.key, encode(&record)?, PutMode::Update(self.version)).await {
            Ok(_) | Err(Error::Conflict { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the lease up for good, deleting its record: the job it guarded is finished and
    /// nothing else will ask for it. (A holder that lost it meanwhile deletes the taker's record;
    /// the taker then fails its check and retries, so nothing is committed twice.)
    pub async fn remove(self, storage: &dyn Storage) -> std::result::Result<(), LeaseError> {
        storage.record_delete(&self.key).await?;
        Ok(())
    }

    /// The generation this holder holds.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}
