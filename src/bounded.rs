//! A small concurrent map of bounded size for values that are cheap to recompute (verified
//! tokens, the index rows an access check needs): sharded to keep lock contention low, and a
//! shard that grows past its share is emptied rather than kept in LRU order.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;

// foldhash (hashbrown's default, seeded per map): SipHash over a 400-byte access token, once
// for the shard and once in it, was a few per cent of an authenticated read.
use foldhash::fast::RandomState;

const SHARDS: usize = 16;

/// A map holding about `capacity` entries.
pub struct BoundedMap<K, V> {
    shards: Vec<Mutex<HashMap<K, V, RandomState>>>,
    capacity_per_shard: usize,
    hasher: RandomState,
}

impl<K: Hash + Eq, V: Clone> BoundedMap<K, V> {
    /// An empty map for about `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        BoundedMap {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect(),
            capacity_per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::default(),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Mutex<HashMap<K, V, RandomState>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// The value stored under `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(key).lock().expect("bounded map lock").get(key).cloned()
    }

    /// Stores `value` under `key`.
    pub fn insert(&self, key: K, value: V) {
        let mut shard = self.shard(&key).lock().expect("bounded map lock");
        self.make_room(&mut shard);
        shard.insert(key, value);
    }

    /// The value stored under `key`, storing `make()` first when there is none (one value
    /// however many callers ask at once).
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> V {
        let mut shard = self.shard(&key).lock().expect("bounded map lock");
        if let Some(value) = shard.get(&key) {
            return value.clone();
        }
        self.make_room(&mut shard);
        shard.entry(key).or_insert_with(make).clone()
    }

    /// Empties a full shard: cheaper than tracking use, and the bound is what matters.
    fn make_room(&self, shard: &mut HashMap<K, V, RandomState>) {
        if shard.len() >= self.capacity_per_shard {
            shard.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_bounded_and_answers() {
        let map = BoundedMap::new(32);
        for n in 0..1000 {
            map.insert(n.to_string(), n);
        }
        assert_eq!(map.get("999"), Some(999));
        let held: usize = map.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= 32, "{held}");
    }

    #[test]
    fn get_or_insert_with_keeps_the_first_value() {
        let map = BoundedMap::new(32);
        assert_eq!(map.get_or_insert_with("k".to_string(), || 1), 1);
        assert_eq!(map.get_or_insert_with("k".to_string(), || 2), 1);
        assert_eq!(map.get("k"), Some(1));
    }
}
