//! The rows of dataset versions, decoded once and kept in memory by blob
//! hash: paging through a version's rows reads the blob once, not once a
//! page. Bounded by entries and by blob bytes, least recently used out
//! first; a version is immutable, so a cached one is never stale.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datasets::Rows;
use domain::BlobHash;
use store::EventStore;

/// Versions kept at most.
pub const MAX_ENTRIES: usize = 32;
/// Blob bytes kept at most (decoded rows take a small multiple). One
/// version larger than this is still kept, alone.
pub const MAX_BYTES: usize = 128 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error("the blob {0} of a published version is missing from the store")]
    Missing(BlobHash),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("the blob {hash} does not decode: {source}")]
    Decode {
        hash: BlobHash,
        source: datasets::DecodeError,
    },
    #[error("decoding ran into trouble: {0}")]
    Task(String),
}

struct Entry {
    rows: Arc<Rows>,
    bytes: usize,
    last_used: u64,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<BlobHash, Entry>,
    bytes: usize,
    clock: u64,
}

#[derive(Default)]
pub struct RowsCache {
    inner: Mutex<Lru>,
}

impl RowsCache {
    /// The rows stored under `hash`: from memory, or read and decoded (off
    /// the async runtime) and remembered.
    pub async fn get(
        &self,
        store: &dyn EventStore,
        hash: BlobHash,
    ) -> Result<Arc<Rows>, RowsError> {
        if let Some(rows) = self.cached(&hash) {
            return Ok(rows);
        }
        let blob = store
            .get_blob(&hash)
            .await?
            .ok_or(RowsError::Missing(hash))?;
        let bytes = blob.len();
        let rows = tokio::task::spawn_blocking(move || datasets::decode(&blob))
            .await
            .map_err(|e| RowsError::Task(e.to_string()))?
            .map_err(|source| RowsError::Decode { hash, source })?;
        Ok(self.insert(hash, Arc::new(rows), bytes))
    }

    /// Remembers rows just published under `hash` (their blob is `bytes` long).
    pub fn insert(&self, hash: BlobHash, rows: Arc<Rows>, bytes: usize) -> Arc<Rows> {
        let mut lru = self.lock();
        lru.clock += 1;
        let last_used = lru.clock;
        if let Some(old) = lru.entries.insert(
            hash,
            Entry {
                rows: rows.clone(),
                bytes,
                last_used,
            },
        ) {
            lru.bytes -= old.bytes;
        }
        lru.bytes += bytes;
        while lru.entries.len() > MAX_ENTRIES || (lru.bytes > MAX_BYTES && lru.entries.len() > 1) {
            let Some(oldest) = lru
                .entries
                .iter()
                .filter(|(h, _)| **h != hash)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(h, _)| *h)
            else {
                break;
            };
            if let Some(gone) = lru.entries.remove(&oldest) {
                lru.bytes -= gone.bytes;
            }
        }
        rows
    }

    /// How many versions are in memory, and their blob bytes.
    pub fn usage(&self) -> (usize, usize) {
        let lru = self.lock();
        (lru.entries.len(), lru.bytes)
    }

    fn cached(&self, hash: &BlobHash) -> Option<Arc<Rows>> {
        let mut lru = self.lock();
        lru.clock += 1;
        let now = lru.clock;
        let entry = lru.entries.get_mut(hash)?;
        entry.last_used = now;
        Some(entry.rows.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Arc<Rows> {
        Arc::new(Rows::Targets(Vec::with_capacity(n)))
    }

    fn hash(i: u8) -> BlobHash {
        BlobHash([i; 32])
    }

    #[test]
    fn the_least_recently_used_version_goes_first_when_full() {
        let cache = RowsCache::default();
        for i in 0..MAX_ENTRIES as u8 {
            cache.insert(hash(i), rows(0), 10);
        }
        // Version 0 is used again, so 1 is now the oldest.
        assert!(cache.cached(&hash(0)).is_some());
        cache.insert(hash(200), rows(0), 10);
        assert_eq!(cache.usage(), (MAX_ENTRIES, 10 * MAX_ENTRIES));
        assert!(cache.cached(&hash(0)).is_some());
        assert!(cache.cached(&hash(1)).is_none());
        assert!(cache.cached(&hash(200)).is_some());
    }

    #[test]
    fn blob_bytes_are_bounded_but_one_large_version_is_kept_alone() {
        let cache = RowsCache::default();
        cache.insert(hash(1), rows(0), MAX_BYTES / 2);
        cache.insert(hash(2), rows(0), MAX_BYTES / 2);
        assert_eq!(cache.usage(), (2, MAX_BYTES));
        cache.insert(hash(3), rows(0), 1);
        assert_eq!(cache.usage(), (2, MAX_BYTES / 2 + 1));
        assert!(cache.cached(&hash(1)).is_none());
        cache.insert(hash(4), rows(0), MAX_BYTES * 2);
        assert_eq!(cache.usage(), (1, MAX_BYTES * 2));
        assert!(cache.cached(&hash(4)).is_some());
    }
}
