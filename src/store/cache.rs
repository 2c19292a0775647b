//! A cache of current resource versions, so that reads by id need no database round trip.
//!
//! Two kinds:
//! - **exclusive**, for a store whose process is the database's only writer (SQLite holds a
//!   lock file): every committed write refreshes its entries, so the cache is exact.
//! - **shared**, for a database that other nodes write too (PostgreSQL): it serves only while
//!   the store's change feed is connected ([`VersionCache::go_live`]); a write of another node
//!   evicts its entry when its notification arrives ([`VersionCache::invalidate`]), a write of
//!   this node when it commits, and a lost feed empties and switches off the cache.
//!
//! A read that went to the database may only fill the cache if nothing was written or evicted
//! meanwhile (the epoch is unchanged), so a slow reader never puts back a version older than
//! one a writer has just stored. The epoch is compared and advanced under the entry's shard
//! lock, so a fill and an eviction of one key cannot interleave.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use foldhash::fast::RandomState;

use super::ResourceVersion;

const SHARDS: usize = 16;

/// Resources whose current version a store keeps in memory.
pub(super) const CACHED_VERSIONS: usize = 20_000;

/// Current versions by `Type/id`, sharded to keep lock contention low.
pub struct VersionCache {
    shards: Vec<Mutex<HashMap<String, ResourceVersion, RandomState>>>,
    capacity_per_shard: usize,
    hasher: RandomState,
    epoch: AtomicU64,
    /// Whether the cache answers and fills (a shared cache only while its feed is connected).
    live: AtomicBool,
    /// Whether other processes write the database too.
    shared: bool,
}

fn key(resource_type: &str, id: &str) -> String {
    format!("{resource_type}/{id}")
}

impl VersionCache {
    /// A cache of about `capacity` resources for the database's only writer; live at once.
    pub fn exclusive(capacity: usize) -> Self {
        Self::with(capacity, false)
    }

    /// A cache of about `capacity` resources for a database other nodes write too; off until
    /// [`VersionCache::go_live`].
    pub fn shared(capacity: usize) -> Self {
        Self::with(capacity, true)
    }

    fn with(capacity: usize, shared: bool) -> Self {
        VersionCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect(),
            capacity_per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::default(),
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(!shared),
            shared,
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, ResourceVersion, RandomState>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// The cached current version, if any.
    pub fn get(&self, resource_type: &str, id: &str) -> Option<ResourceVersion> {
        if !self.is_live() {
            return None;
        }
        let key = key(resource_type, id);
        self.shard(&key).lock().ok()?.get(&key).cloned()
    }

    /// The epoch; pass it to [`VersionCache::fill`] after reading from the database.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Caches a version read from the database, unless something was written or evicted
    /// since `epoch`.
    pub fn fill(&self, version: &ResourceVersion, epoch: u64) {
        let key = key(&version.resource_type, &version.id);
        let Ok(mut shard) = self.shard(&key).lock() else { return };
        if self.is_live() && self.epoch() == epoch {
            self.store(&mut shard, key, version);
        }
    }

    /// Records versions a transaction of this process has committed: stored when this process
    /// is the only writer, evicted (to be read again) when others write too, because another
    /// node's later version may already have been announced.
    pub fn committed(&self, versions: &[ResourceVersion]) {
        for version in versions {
            let key = key(&version.resource_type, &version.id);
            let Ok(mut shard) = self.shard(&key).lock() else { continue };
            self.epoch.fetch_add(1, Ordering::AcqRel);
            if self.shared {
                shard.remove(&key);
            } else {
                self.store(&mut shard, key, version);
            }
        }
    }

    /// Evicts a resource another node has written `version` of (unless a version at least as
    /// new is cached).
    pub fn invalidate(&self, resource_type: &str, id: &str, version: i64) {
        let key = key(resource_type, id);
        let Ok(mut shard) = self.shard(&key).lock() else { return };
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if shard.get(&key).is_some_and(|cached| cached.version < version) {
            shard.remove(&key);
        }
    }

    /// Starts answering, empty: the change feed is connected from now on.
    pub fn go_live(&self) {
        self.clear();
        self.live.store(true, Ordering::Release);
    }

    /// Stops answering and forgets everything: changes may go unannounced from now on.
    pub fn go_offline(&self) {
        self.live.store(false, Ordering::Release);
        self.clear();
    }

    fn clear(&self) {
        for shard in &self.shards {
            if let Ok(mut shard) = shard.lock() {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                shard.clear();
            }
        }
    }

    fn store(&self, shard: &mut HashMap<String, ResourceVersion, RandomState>, key: String, version: &ResourceVersion) {
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
        let cache = VersionCache::exclusive(100);
        cache.committed(&[version("a", 2)]);
        cache.committed(&[version("a", 1)]);
        assert_eq!(cache.get("Patient", "a").unwrap().version, 2);
    }

    #[test]
    fn a_read_that_raced_a_write_does_not_fill() {
        let cache = VersionCache::exclusive(100);
        let epoch = cache.epoch();
        cache.committed(&[version("b", 3)]);
        cache.fill(&version("c", 1), epoch);
        assert!(cache.get("Patient", "c").is_none());
        cache.fill(&version("c", 1), cache.epoch());
        assert_eq!(cache.get("Patient", "c").unwrap().version, 1);
    }

    #[test]
    fn stays_within_capacity() {
        let cache = VersionCache::exclusive(16);
        cache.committed(&(0..100).map(|n| version(&n.to_string(), 1)).collect::<Vec<_>>());
        let held: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= 16, "{held}");
    }

    #[test]
    fn a_shared_cache_answers_only_while_live() {
        let cache = VersionCache::shared(100);
        cache.fill(&version("d", 1), cache.epoch());
        assert!(cache.get("Patient", "d").is_none());
        cache.go_live();
        cache.fill(&version("d", 1), cache.epoch());
        assert_eq!(cache.get("Patient", "d").unwrap().version, 1);
        cache.go_offline();
        assert!(cache.get("Patient", "d").is_none());
        cache.go_live();
        assert!(cache.get("Patient", "d").is_none(), "going live starts empty");
    }

    #[test]
    fn a_shared_cache_evicts_what_others_and_this_node_write() {
        let cache = VersionCache::shared(100);
        cache.go_live();
        cache.fill(&version("e", 2), cache.epoch());
        cache.invalidate("Patient", "e", 2);
        assert_eq!(cache.get("Patient", "e").unwrap().version, 2, "the same version stays");
        let before = cache.epoch();
        cache.invalidate("Patient", "e", 3);
        assert!(cache.get("Patient", "e").is_none());
        cache.fill(&version("e", 2), before);
        assert!(cache.get("Patient", "e").is_none(), "a read from before the eviction does not fill");
        cache.fill(&version("e", 3), cache.epoch());
        cache.committed(&[version("e", 4)]);
        assert!(cache.get("Patient", "e").is_none(), "a shared cache reads its own writes again");
    }
}
