//! PostgreSQL: a pool for reads and one for write transactions; writers lock the row they replace (`FOR UPDATE`), so concurrent updates
//! of one resource queue up and every version number is used exactly once.

use std::sync::Arc;

use sqlx::postgres::PgPoolOptions;

use super::auth::auth_store;
use super::cache::{VersionCache, CACHED_VERSIONS};
use super::feed::{Feed, Watched};
use super::sql::sql_store;
use super::StoreResult;

sql_store!(
    store = PostgresStore,
    tx = PostgresTx,
    db = sqlx::Postgres,
    lock = " FOR UPDATE",
    skip_locked = " FOR UPDATE SKIP LOCKED",
    insert = "INSERT INTO",
    one_query = false,
    dialect = super::planner::Dialect::Postgres,
    session = sqlx::Transaction<'static, sqlx::Postgres>
);
auth_store!(PostgresStore);

/// Connections in each pool per core of this machine. More connections than the cores can
/// serve only queue inside PostgreSQL: on 2 cores, 6 connections served 12-20% more searches
/// per second than 16 (wrk, 1000 synthetic patients).
const CONNECTIONS_PER_CORE: u32 = 3;

impl PostgresStore {
    /// Connects to the database named by `url` and migrates it.
    pub async fn open(url: &str) -> StoreResult<Self> {
        // No ping before every acquire (sqlx's default): it cost a round trip per request. A
        // connection that broke meanwhile fails its query instead, and sqlx drops it.
        let pool = || PgPoolOptions::new().max_connections(connections()).test_before_acquire(false);
        // Two pools: a write transaction that reads outside itself (a history or _include
        // entry of a transaction bundle) never waits for a connection that only writers hold.
        let writers = pool().connect(url).await?;
        sqlx::migrate!("./migrations/postgres").run(&writers).await?;
        let readers = pool().connect(url).await?;
        // Several nodes may write the same database: the cache and the mirrored sets serve
        // while the change feed tells this node what the others write.
        let cache = Arc::new(VersionCache::shared(CACHED_VERSIONS));
        let watched = Arc::new(Watched::default());
        let feed = Feed::start(url, cache.clone(), watched.clone()).await?;
        Ok(PostgresStore {
            readers,
            sessions: writers.clone(),
            writers,
            cache: Some(cache),
            watched,
            feed: Some(Arc::new(feed)),
            _writer_lock: None,
        })
    }
}

/// The size of the connection pool for this machine.
fn connections() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
    cores * CONNECTIONS_PER_CORE
}
