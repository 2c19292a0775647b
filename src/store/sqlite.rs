//! The embedded default: SQLite in WAL mode with one writer connection and pooled readers.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::audit::audit_store;
use super::auth::auth_store;
use super::cache::{VersionCache, CACHED_VERSIONS};
use super::export::export_store;
use super::feed::Watched;
use super::group::WriterGate;
use super::sql::sql_store;
use super::subscription::subscription_store;
use super::{StoreError, StoreResult};

sql_store!(
    store = SqliteStore,
    tx = SqliteTx,
    db = sqlx::Sqlite,
    lock = "",
    skip_locked = "",
    one_query = true,
    dialect = super::planner::Dialect::Sqlite,
    session = super::group::Member
);
auth_store!(SqliteStore);
export_store!(SqliteStore, super::planner::Dialect::Sqlite);
subscription_store!(SqliteStore, SqliteTx, sqlx::Sqlite, "");
audit_store!(SqliteStore, SqliteTx, sqlx::Sqlite);

/// How many rows go into one multi-row INSERT (well under SQLite's variable limit).
const INSERT_CHUNK: usize = 500;

/// ` IN (…)` the ids, one bound parameter each.
fn push_one_of(query: &mut Builder, ids: &[&str]) {
    query.push(" IN (");
    let mut listed = query.separated(", ");
    for id in ids {
        listed.push_bind(id.to_string());
    }
    query.push(")");
}

/// The statements that insert `versions` into `table` (`resource_history` or `resources`),
/// each ending with `then`: multi-row INSERTs. `INSERT OR FAIL` spares a write the statement
/// journal (a copy of every page the statement touches), which only matters for rolling back
/// one statement of a transaction that goes on; a failed write is undone as a whole.
fn version_statements(statements: &mut Statements, table: &str, versions: &[&super::ResourceVersion], then: &str) {
    use super::sql::{to_micros, VERSION_COLUMNS};
    for chunk in versions.chunks(INSERT_CHUNK / 2) {
        statements
            .start(&format!("INSERT OR FAIL INTO {table} ({VERSION_COLUMNS}) "))
            .push_values(chunk, |mut b, v| {
                b.push_bind(v.resource_type.clone())
                    .push_bind(v.id.clone())
                    .push_bind(v.version)
                    .push_bind(to_micros(v.last_updated))
                    .push_bind(v.deleted)
                    .push_bind(v.method.as_str())
                    .push_bind(v.body.to_vec());
            })
            .push(then);
    }
}

/// The statements that insert the index rows of resources, moving the rows' values into
/// them: one multi-row INSERT per table and chunk (SQLite parses each anew, but the whole
/// flush is one call of the writer's thread). `INSERT OR FAIL`: see `version_statements`.
fn index_row_statements(statements: &mut Statements, mut current: Vec<(&super::ResourceVersion, super::IndexRows)>) {
    macro_rules! insert_rows {
        ($field:ident, $table:literal, $columns:literal, |$b:ident, $row:ident| $bind:block) => {
            let mut rows = current
                .iter_mut()
                .flat_map(|(v, index)| {
                    std::mem::take(&mut index.$field)
                        .into_iter()
                        .map(|row| (v.resource_type.as_str(), v.id.as_str(), row))
                })
                .peekable();
            while rows.peek().is_some() {
                let chunk = rows.by_ref().take(INSERT_CHUNK);
                let sql = concat!("INSERT OR FAIL INTO ", $table, " (resource_type, resource_id, ", $columns, ") ");
                statements.start(sql).push_values(chunk, |mut $b, (owner_type, owner_id, $row)| {
                    $b.push_bind(owner_type.to_string()).push_bind(owner_id.to_string());
                    $bind
                });
            }
        };
    }
    insert_rows!(tokens, "search_token", "param, system, code", |b, row| {
        b.push_bind(row.param).push_bind(row.system).push_bind(row.code);
    });
    insert_rows!(strings, "search_string", "param, normalized, exact", |b, row| {
        b.push_bind(row.param).push_bind(row.normalized).push_bind(row.exact);
    });
    insert_rows!(references, "search_reference", "param, target_type, target_id, target_url", |b, row| {
        b.push_bind(row.param).push_bind(row.target_type).push_bind(row.target_id).push_bind(row.target_url);
    });
    insert_rows!(uris, "search_uri", "param, value", |b, row| {
        b.push_bind(row.param).push_bind(row.value);
    });
    insert_rows!(dates, "search_date", "param, low, high", |b, row| {
        b.push_bind(row.param).push_bind(row.low).push_bind(row.high);
    });
    insert_rows!(numbers, "search_number", "param, value", |b, row| {
        b.push_bind(row.param).push_bind(row.value);
    });
    insert_rows!(quantities, "search_quantity", "param, value, system, code, unit", |b, row| {
        b.push_bind(row.param).push_bind(row.value).push_bind(row.system).push_bind(row.code).push_bind(row.unit);
    });
    insert_rows!(
        composites,
        "search_composite",
        "param, s0, c0, v0, lo0, hi0, s1, c1, v1, lo1, hi1, s2, c2, v2, lo2, hi2",
        |b, row| {
            b.push_bind(row.param);
            let mut parts = row.parts.into_iter();
            for _ in 0..3 {
                let part = parts.next().unwrap_or_default();
                b.push_bind(part.system)
                    .push_bind(part.code)
                    .push_bind(part.number)
                    .push_bind(part.low)
                    .push_bind(part.high);
            }
        }
    );
}

/// Readers beside the single writer: enough to keep both cores busy while a write runs.
const READERS: u32 = 8;

/// Page cache of each reader connection (negative: KiB, as `PRAGMA cache_size` takes it).
const READER_CACHE_KIB: &str = "-8000";

impl SqliteStore {
    /// Whether what this store publishes (`auth_publish`) is announced by a record for the
    /// server to read: a shared store is an administration command beside the server, and
    /// SQLite has no change feed to tell it.
    fn announces_by_record(&self) -> bool {
        self.cache.is_none()
    }

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
            .pragma("temp_store", "memory");
        // One writer: SQLite allows one at a time anyway, and queueing in the pool is cheaper
        // than retrying on SQLITE_BUSY.
        // One process writes the file: that makes the in-memory cache of current versions exact.
        let writer_lock = if exclusive { Some(take_writer_lock(&options)?) } else { None };
        // A connection to a local file does not break unnoticed: no ping before each acquire
        // (sqlx's default), which was a round trip to the connection's worker thread per request.
        let pool_options = || SqlitePoolOptions::new().test_before_acquire(false);
        let writer_options = options.clone().pragma("wal_autocheckpoint", WRITER_CHECKPOINT_PAGES);
        let writers = pool_options().max_connections(1).connect_with(writer_options).await?;
        sqlx::migrate!("./migrations/sqlite").run(&writers).await?;
        // Each connection has a page cache of its own (see .cargo/config.toml): the readers keep
        // small ones and leave the rest to the operating system's file cache, so that memory
        // stays bounded however many readers are busy.
        let reader_options = options.clone().read_only(true).pragma("cache_size", READER_CACHE_KIB);
        let readers = pool_options().max_connections(READERS).connect_with(reader_options).await?;
        let sessions = WriterGate::new(writers.clone());
        if exclusive {
            // A checkpoint copies log frames without the page cache: it gets a small one.
            let checkpointer_options = options.pragma("cache_size", CHECKPOINTER_CACHE_KIB);
            let checkpointer = pool_options().max_connections(1).connect_with(checkpointer_options).await?;
            tokio::spawn(checkpoint_in_background(checkpointer, sessions.alive()));
        }
        // A shared store (administration) mirrors nothing: its sets never answer.
        let watched = std::sync::Arc::new(if exclusive { Watched::exclusive() } else { Watched::default() });
        if exclusive {
            tokio::spawn(mirror_published_elsewhere(readers.clone(), watched.clone(), sessions.alive()));
        }
        Ok(SqliteStore {
            readers,
            sessions,
            writers,
            cache: exclusive.then(|| std::sync::Arc::new(VersionCache::exclusive(CACHED_VERSIONS))),
            watched,
            feed: None,
            _writer_lock: writer_lock,
        })
    }
}

/// How often the write-ahead log is copied back into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// Page cache of the checkpointer's connection (KiB, negative as `PRAGMA cache_size` takes it).
const CHECKPOINTER_CACHE_KIB: &str = "-256";

/// The log size (in 4 KiB pages, ~40 MB) at which the writer checkpoints at commit
/// (`wal_autocheckpoint`). Only a checkpoint that reaches the end of the log lets the log start
/// over, and one beside a busy writer never does; by then the background checkpoints have
/// copied and synced most of it, and the writer's part is short.
const WRITER_CHECKPOINT_PAGES: &str = "10000";

/// Copies the write-ahead log back into the database file every [`CHECKPOINT_INTERVAL`], on a
/// connection of its own, until the store is dropped. A `PASSIVE` checkpoint runs beside the
/// writer and the readers. When the writer did all of it at commit, every write waited for the
/// copy and for the fsyncs of the log and the database file (a quarter of the writer's
/// context switches during ingest). With nothing new in the log, a checkpoint reads its header
/// and no more.
async fn checkpoint_in_background(checkpointer: sqlx::SqlitePool, store: super::group::GateAlive) {
    let mut ticks = tokio::time::interval(CHECKPOINT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !store.is_alive() {
            break;
        }
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&checkpointer).await {
            tracing::warn!(%error, "checkpoint of the SQLite write-ahead log failed");
        }
    }
    checkpointer.close().await;
}

/// How often the server looks for records that administration commands in other processes
/// published (`hearth user disable` beside a running server).
const ANNOUNCEMENTS_INTERVAL: Duration = Duration::from_secs(1);

/// Mirrors the records that other processes announced (see `feed::announced`) until the store
/// is dropped: the server's own publications reach its mirror at once, and with no change feed
/// on SQLite this is how an administration command's reach it. One indexed read per mirrored
/// kind a second.
async fn mirror_published_elsewhere(
    readers: sqlx::SqlitePool,
    watched: std::sync::Arc<Watched>,
    store: super::group::GateAlive,
) {
    let mut ticks = tokio::time::interval(ANNOUNCEMENTS_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !store.is_alive() {
            break;
        }
        for kind in watched.kinds() {
            let announced = match readers.acquire().await {
                Ok(mut conn) => live_auth_objects(&mut conn, &super::feed::announced(&kind)).await,
                Err(error) => Err(error.into()),
            };
            match announced {
                Ok(records) => records.iter().for_each(|(key, _)| watched.published(&kind, key)),
                Err(error) => tracing::warn!(%error, "cannot read the records other processes published"),
            }
        }
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
