//! A value rebuilt from definitions stored as resources (the search parameters, the profiles),
//! replaced whole when they change: readers take a snapshot per request, so one request sees
//! one consistent set.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

/// The value in force and which state of the stored definitions it was built from.
#[derive(Debug)]
pub struct Live<T> {
    current: RwLock<Arc<T>>,
    /// The caller's marker of that state (the newest history sequence it has seen).
    source: AtomicI64,
}

impl<T> Live<T> {
    /// Starts with `initial`, built from no stored definitions.
    pub fn new(initial: T) -> Self {
        Live { current: RwLock::new(Arc::new(initial)), source: AtomicI64::new(-1) }
    }

    /// The value as it is now.
    pub fn current(&self) -> Arc<T> {
        self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Puts `value`, built from the stored definitions as of `source`, in force.
    pub fn replace(&self, value: T, source: i64) {
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(value);
        self.source.store(source, Ordering::Release);
    }

    /// The marker given with the value in force (-1 before the first).
    pub fn source(&self) -> i64 {
        self.source.load(Ordering::Acquire)
    }
}
