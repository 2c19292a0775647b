//! PostgreSQL: one pool; writers lock the row they replace (`FOR UPDATE`), so concurrent updates
//! of one resource queue up and every version number is used exactly once.

use sqlx::postgres::PgPoolOptions;

use super::sql::sql_store;
use super::StoreResult;

sql_store!(
    store = PostgresStore,
    tx = PostgresTx,
    db = sqlx::Postgres,
    lock = " FOR UPDATE",
    skip_locked = " FOR UPDATE SKIP LOCKED",
    insert = "INSERT INTO",
    dialect = super::planner::Dialect::Postgres
);

/// Connections in the pool.
const CONNECTIONS: u32 = 16;

impl PostgresStore {
    /// Connects to the database named by `url` and migrates it.
    pub async fn open(url: &str) -> StoreResult<Self> {
        // No ping before every acquire (sqlx's default): it cost a round trip per request. A
        // connection that broke meanwhile fails its query instead, and sqlx drops it.
        let pool = PgPoolOptions::new().max_connections(CONNECTIONS).test_before_acquire(false).connect(url).await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        // Several nodes may write the same database: no process-local cache.
        Ok(PostgresStore { readers: pool.clone(), writers: pool, cache: None, _writer_lock: None })
    }
}
