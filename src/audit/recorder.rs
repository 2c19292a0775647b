//! The node's writer of AuditEvents for requests that write nothing (reads, searches, refused
//! writes): each event is appended to the node's spool before the request is answered, and
//! committed from there in large batches (ADR 21).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::spool::{self, Spool};
use crate::store::audit::NewAuditEvent;
use crate::store::{Store, StoreError, StoreResult};

/// How often the spool is committed: batches of this long's events.
const COMMIT_EVERY: Duration = Duration::from_millis(50);

/// How often a node looks for the spools of stopped nodes (besides at start-up).
const SCAN_EVERY: Duration = Duration::from_secs(60);

/// How long a search of the log waits at most for this node's events to be committed.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Hands events to the node's spool (clones share it).
#[derive(Clone)]
pub struct Recorder {
    store: Arc<dyn Store>,
    /// `None`: recording is off (`--audit off`), nothing is spooled.
    dir: Option<PathBuf>,
    spool: Arc<tokio::sync::OnceCell<Arc<Spool>>>,
}

impl Recorder {
    /// A recorder for `store` spooling in `dir` (`None`: recording is off); its spool is
    /// created, and the spools of stopped nodes in `dir` taken over, with the first event or
    /// [`Recorder::start`], on the runtime that asks; its committing ends when the last clone
    /// is dropped.
    pub fn new(store: Arc<dyn Store>, dir: Option<PathBuf>) -> Recorder {
        Recorder { store, dir, spool: Arc::default() }
    }

    async fn spool(&self) -> StoreResult<&Arc<Spool>> {
        let Some(dir) = &self.dir else { return Err(StoreError::CommitFailed("recording is off".into())) };
        self.spool
            .get_or_try_init(|| async {
                let database = self.store.audit_database_id().await?;
                let spool = Spool::create(dir, &database).map_err(|error| {
                    StoreError::CommitFailed(format!("cannot create an audit spool in {}: {error}", dir.display()))
                })?;
                let spool = Arc::new(spool);
                let weak = Arc::downgrade(&spool);
                tokio::spawn(spool::move_spooled(self.store.clone(), weak, database, COMMIT_EVERY, SCAN_EVERY));
                Ok(spool)
            })
            .await
    }

    /// Starts spooling now: the spools stopped nodes left are committed without waiting for a
    /// first event. An error if the spool cannot be made (a directory others may write, a full
    /// disk): `hearth serve` stops there rather than answer every read with a 500.
    pub async fn start(&self) -> StoreResult<()> {
        if self.dir.is_none() {
            return Ok(());
        }
        self.spool().await.map(|_| ())
    }

    /// Records `event`; once this returns, the event will be committed even if the process
    /// is killed.
    pub async fn record(&self, event: NewAuditEvent) -> StoreResult<()> {
        let spool = self.spool().await?;
        spool.append(&event).map_err(|error| StoreError::CommitFailed(format!("cannot spool an AuditEvent: {error}")))
    }

    /// Waits (a few seconds at most) until the events this node recorded so far, and those of
    /// the stopped nodes' spools it found at start-up, are committed: a search of the log on
    /// this node sees its own recent events.
    pub async fn flush(&self) {
        if self.dir.is_none() {
            return;
        }
        if let Ok(spool) = self.spool().await {
            if tokio::time::timeout(FLUSH_WAIT, spool.flush()).await.is_err() {
                tracing::warn!(
                    "the audit spool is not committed yet; the log searched may lack this node's latest events"
                );
            }
        }
    }

    /// Bytes this node spooled that are not committed yet.
    pub fn backlog(&self) -> u64 {
        self.spool.get().map_or(0, |spool| spool.backlog())
    }

    /// Commits what the spool holds (waiting a few seconds at most) and removes it, or leaves
    /// it to the next node: a node stopping.
    pub async fn close(&self) {
        if let Some(spool) = self.spool.get() {
            let _ = tokio::time::timeout(FLUSH_WAIT, spool.flush()).await;
            spool.close();
        }
    }
}

/// Where a node spools by default: beside an SQLite database file (which one process holds);
/// for PostgreSQL, or SQLite in memory, [`state_spool_dir`].
pub fn default_spool_dir(database_url: &str) -> PathBuf {
    crate::store::local_dir(database_url, "audit-spool")
}

/// The user's state directory's `hearth/audit-spool` (see [`crate::store::state_dir`]).
pub fn state_spool_dir() -> PathBuf {
    crate::store::state_dir("audit-spool")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn an_sqlite_file_spools_beside_itself() {
        assert_eq!(default_spool_dir("sqlite://data/hearth.db?mode=rwc"), Path::new("data/hearth.db.audit-spool"));
        assert_eq!(default_spool_dir("sqlite:hearth.db"), Path::new("hearth.db.audit-spool"));
        assert_eq!(default_spool_dir("sqlite::memory:"), state_spool_dir());
        assert_eq!(default_spool_dir("postgres://h/db"), state_spool_dir());
    }
}
