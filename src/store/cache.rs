//! A cache of current resource versions for a store whose process is the only writer of its
//! database (SQLite: the store holds an exclusive lock file while open). Reads by id are then
//! answered without a database round trip; every committed write refreshes its entries.
//!
//! A read that went to the database may only fill the cache if no write committed meanwhile
//! (the write epoch is unchanged), so a slow reader never puts back a version older than one a
//! writer has just stored.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::ResourceVersion;

const SHARDS: usize = 16;

/// Current versions by `Type/id`, sharded to keep lock contention low.
pub struct VersionCache {
    shards: Vec<Mutex<HashMap<String, ResourceVersion>>>,
    capacity_per_shard: usize,
    hasher: RandomState,
    epoch: AtomicU64,
}

fn key(resource_type: &str, id: &str) -> String {
    format!("{resource_type}/{id}")
}

impl VersionCache {
    /// A cache holding about `capacity` resources.
    pub fn new(capacity: usize) -> Self {
        VersionCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            capacity_per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
            epoch: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, ResourceVersion>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// The cached current version, if any.
    pub fn get(&self, resource_type: &str, id: &str) -> Option<ResourceVersion> {
        let key = key(resource_type, id);
        self.shard(&key).lock().ok()?.get(&key).cloned()
    }

    /// The write epoch; pass it to [`VersionCache::fill`] after reading from the database.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Caches a version read from the database, unless a write committed since `epoch`.
    pub fn fill(&self, version: &ResourceVersion, epoch: u64) {
        if self.epoch() == epoch {
            self.store(version);
        }
    }

    /// Records versions a committed transaction wrote.
    pub fn committed(&self, versions: &[ResourceVersion]) {
        for version in versions {
            self.store(version);
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    fn store(&self, version: &ResourceVersion) {
        let key = key(&version.resource_type, &version.id);
        let Ok(mut shard) = self.shard(&key).lock() else { return };
        if shard.get(&key).is_some_and(|cached| cached.version >= version.version) {
            return;
        }
        if shard.len() >= self.capacity_per_shard && !shard.contains_key(&key) {
            if let Some(evicted) = shard.keys().next().cloned() {
                shard.remove(&evicted);
            }
        }
        shard.insert(key, version.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::WriteMethod;

    fn version(id: &str, number: i64) -> ResourceVersion {
        ResourceVersion {
            resource_type: "Patient".into(),
            id: id.into(),
            version: number,
            last_updated: time::OffsetDateTime::UNIX_EPOCH,
            deleted: false,
            method: WriteMethod::Update,
            body: bytes::Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn never_goes_back_in_versions() {
        let cache = VersionCache::new(100);
        cache.committed(&[version("a", 2)]);
        cache.committed(&[version("a", 1)]);
        assert_eq!(cache.get("Patient", "a").unwrap().version, 2);
    }

    #[test]
    fn a_read_that_raced_a_write_does_not_fill() {
        let cache = VersionCache::new(100);
        let epoch = cache.epoch();
        cache.committed(&[version("b", 3)]);
        cache.fill(&version("c", 1), epoch);
        assert!(cache.get("Patient", "c").is_none());
        cache.fill(&version("c", 1), cache.epoch());
        assert_eq!(cache.get("Patient", "c").unwrap().version, 1);
    }

    #[test]
    fn stays_within_capacity() {
        let cache = VersionCache::new(16);
        cache.committed(&(0..100).map(|n| version(&n.to_string(), 1)).collect::<Vec<_>>());
        let held: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= 16, "{held}");
    }
}
