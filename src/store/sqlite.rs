//! The embedded default: SQLite in WAL mode with one writer connection and pooled readers.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::auth::auth_store;
use super::cache::{VersionCache, CACHED_VERSIONS};
use super::feed::Watched;
use super::group::WriterGate;
use super::sql::sql_store;
use super::{StoreError, StoreResult};

sql_store!(
    store = SqliteStore,
    tx = SqliteTx,
    db = sqlx::Sqlite,
    lock = "",
    skip_locked = "",
    insert = "INSERT OR FAIL INTO",
    one_query = true,
    dialect = super::planner::Dialect::Sqlite,
    session = super::group::Member
);
auth_store!(SqliteStore);

/// Readers beside the single writer: enough to keep both cores busy while a write runs.
const READERS: u32 = 8;

/// Page cache of each reader connection (negative: KiB, as `PRAGMA cache_size` takes it).
const READER_CACHE_KIB: &str = "-8000";

impl SqliteStore {
    /// Opens (creating if missing) the database file named by `url` and migrates it. An
    /// `exclusive` store takes the single-writer lock and keeps the version cache; a shared one
    /// (administration of authorization records) does neither.
    pub async fn open(url: &str, exclusive: bool) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .pragma("cache_size", "-32000")
            // Checkpoint the WAL every ~40 MB instead of every 4 MB: ingest writes many pages
            // per transaction, and each checkpoint costs an fsync.
            .pragma("wal_autocheckpoint", "10000")
            .pragma("temp_store", "memory");
        // One writer: SQLite allows one at a time anyway, and queueing in the pool is cheaper
        // than retrying on SQLITE_BUSY.
        // One process writes the file: that makes the in-memory cache of current versions exact.
        let writer_lock = if exclusive { Some(take_writer_lock(&options)?) } else { None };
        // A connection to a local file does not break unnoticed: no ping before each acquire
        // (sqlx's default), which was a round trip to the connection's worker thread per request.
        let pool_options = || SqlitePoolOptions::new().test_before_acquire(false);
        let writers = pool_options().max_connections(1).connect_with(options.clone()).await?;
        sqlx::migrate!("./migrations/sqlite").run(&writers).await?;
        // Each connection has a page cache of its own (see .cargo/config.toml): the readers keep
        // small ones and leave the rest to the operating system's file cache, so that memory
        // stays bounded however many readers are busy.
        let reader_options = options.read_only(true).pragma("cache_size", READER_CACHE_KIB);
        let readers = pool_options().max_connections(READERS).connect_with(reader_options).await?;
        Ok(SqliteStore {
            readers,
            sessions: WriterGate::new(writers.clone()),
            writers,
            cache: exclusive.then(|| std::sync::Arc::new(VersionCache::exclusive(CACHED_VERSIONS))),
            // A shared store (administration) mirrors nothing: its sets never answer.
            watched: std::sync::Arc::new(if exclusive { Watched::exclusive() } else { Watched::default() }),
            feed: None,
            _writer_lock: writer_lock,
        })
    }
}

/// Makes this process the file's only writer (`<database>.lock`), or says who is.
fn take_writer_lock(options: &SqliteConnectOptions) -> StoreResult<std::fs::File> {
    let lock_path = format!("{}.lock", options.get_filename().display());
    let writer_lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
    writer_lock.try_lock().map_err(|_| {
        StoreError::Busy(format!(
            "another Hearth process has the SQLite database open ({lock_path} is locked); stop it, or send the data to its API"
        ))
    })?;
    Ok(writer_lock)
}
