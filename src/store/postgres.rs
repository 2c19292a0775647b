//! PostgreSQL: a pool for reads and one for write transactions; writers lock the row they replace (`FOR UPDATE`), so concurrent updates
//! of one resource queue up and every version number is used exactly once.

use std::sync::Arc;

use sqlx::postgres::PgPoolOptions;

use super::audit::audit_store;
use super::auth::auth_store;
use super::cache::{VersionCache, CACHED_VERSIONS};
use super::export::export_store;
use super::feed::{Feed, Watched};
use super::sql::sql_store;
use super::subscription::subscription_store;
use super::StoreResult;

sql_store!(
    store = PostgresStore,
    tx = PostgresTx,
    db = sqlx::Postgres,
    lock = " FOR UPDATE",
    skip_locked = " FOR UPDATE SKIP LOCKED",
    one_query = false,
    dialect = super::planner::Dialect::Postgres,
    session = sqlx::Transaction<'static, sqlx::Postgres>
);
auth_store!(PostgresStore);
export_store!(PostgresStore, super::planner::Dialect::Postgres);
subscription_store!(PostgresStore, PostgresTx, sqlx::Postgres, " FOR UPDATE SKIP LOCKED");
audit_store!(PostgresStore, PostgresTx, sqlx::Postgres);

/// ` = ANY(…)` the ids, bound as one array: the statement's text is the same for any number of
/// ids.
fn push_one_of(query: &mut Builder, ids: &[&str]) {
    let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    query.push(" = ANY(").push_bind(ids).push("::text[])");
}

/// The statement that inserts `versions` into `table` (`resource_history` or `resources`),
/// ending with `then`: one `INSERT … SELECT * FROM UNNEST(…)` with an array per column (see
/// `index_row_statements`).
fn version_statements(statements: &mut Statements, table: &str, versions: &[&super::ResourceVersion], then: &str) {
    use super::sql::{to_micros, VERSION_COLUMNS};
    if versions.is_empty() {
        return;
    }
    let query = statements.start(&format!("INSERT INTO {table} ({VERSION_COLUMNS}) SELECT * FROM UNNEST("));
    query
        .push_bind(versions.iter().map(|v| v.resource_type.clone()).collect::<Vec<String>>())
        .push("::text[], ")
        .push_bind(versions.iter().map(|v| v.id.clone()).collect::<Vec<String>>())
        .push("::text[], ")
        .push_bind(versions.iter().map(|v| v.version).collect::<Vec<i64>>())
        .push("::int8[], ")
        .push_bind(versions.iter().map(|v| to_micros(v.last_updated)).collect::<Vec<i64>>())
        .push("::int8[], ")
        .push_bind(versions.iter().map(|v| v.deleted).collect::<Vec<bool>>())
        .push("::bool[], ")
        .push_bind(versions.iter().map(|v| v.method.as_str()).collect::<Vec<&'static str>>())
        .push("::text[], ")
        .push_bind(versions.iter().map(|v| v.body.to_vec()).collect::<Vec<Vec<u8>>>())
        .push("::bytea[])")
        .push(then);
}

/// The statements that insert the index rows of resources: per table, one
/// `INSERT … SELECT * FROM UNNEST(…)` with an array per column, the rows' values moved into
/// them. The text is the same whatever the number of rows, so a connection parses and plans it
/// once; a multi-row `VALUES` list was a new statement, parsed and planned, every time.
fn index_row_statements(statements: &mut Statements, mut current: Vec<(&super::ResourceVersion, super::IndexRows)>) {
    /// `$table`'s rows of `current` (field `$field`), each column an array of `$value`s cast to
    /// `$array`.
    macro_rules! unnest {
        (
            $field:ident,
            $table:literal,
            |$row:pat_param| { $($column:ident: $array:literal = $value:expr),+ $(,)? }
        ) => {{
            let (mut resource_type, mut resource_id) = (Vec::new(), Vec::new());
            $(let mut $column = Vec::new();)+
            for (version, index) in current.iter_mut() {
                for $row in std::mem::take(&mut index.$field) {
                    resource_type.push(version.resource_type.clone());
                    resource_id.push(version.id.clone());
                    $($column.push($value);)+
                }
            }
            if !resource_type.is_empty() {
                let query = statements.start(concat!(
                    "INSERT INTO ", $table, " (resource_type, resource_id",
                    $(", ", stringify!($column),)+
                    ") SELECT * FROM UNNEST("
                ));
                query.push_bind(resource_type).push("::text[], ").push_bind(resource_id).push("::text[]");
                $(query.push(", ").push_bind($column).push(concat!("::", $array));)+
                query.push(")");
            }
        }};
    }
    unnest!(tokens, "search_token", |row| {
        param: "text[]" = row.param,
        system: "text[]" = row.system,
        code: "text[]" = row.code,
    });
    unnest!(strings, "search_string", |row| {
        param: "text[]" = row.param,
        normalized: "text[]" = row.normalized,
        exact: "text[]" = row.exact,
    });
    unnest!(references, "search_reference", |row| {
        param: "text[]" = row.param,
        target_type: "text[]" = row.target_type,
        target_id: "text[]" = row.target_id,
        target_url: "text[]" = row.target_url,
    });
    unnest!(uris, "search_uri", |row| { param: "text[]" = row.param, value: "text[]" = row.value });
    unnest!(dates, "search_date", |row| {
        param: "text[]" = row.param,
        low: "int8[]" = row.low,
        high: "int8[]" = row.high,
    });
    unnest!(numbers, "search_number", |row| { param: "text[]" = row.param, value: "float8[]" = row.value });
    unnest!(quantities, "search_quantity", |row| {
        param: "text[]" = row.param,
        value: "float8[]" = row.value,
        system: "text[]" = row.system,
        code: "text[]" = row.code,
        unit: "text[]" = row.unit,
    });
    for (_, index) in current.iter_mut() {
        for row in &mut index.composites {
            row.parts.resize(3, super::CompositePart::default());
        }
    }
    unnest!(composites, "search_composite", |mut row| {
        param: "text[]" = row.param,
        s0: "text[]" = row.parts[0].system.take(),
        c0: "text[]" = row.parts[0].code.take(),
        v0: "float8[]" = row.parts[0].number,
        lo0: "int8[]" = row.parts[0].low,
        hi0: "int8[]" = row.parts[0].high,
        s1: "text[]" = row.parts[1].system.take(),
        c1: "text[]" = row.parts[1].code.take(),
        v1: "float8[]" = row.parts[1].number,
        lo1: "int8[]" = row.parts[1].low,
        hi1: "int8[]" = row.parts[1].high,
        s2: "text[]" = row.parts[2].system.take(),
        c2: "text[]" = row.parts[2].code.take(),
        v2: "float8[]" = row.parts[2].number,
        lo2: "int8[]" = row.parts[2].low,
        hi2: "int8[]" = row.parts[2].high,
    });
}

/// Connections in each pool per core of this machine. More connections than the cores can
/// serve only queue inside PostgreSQL: on 2 cores, 6 connections served 12-20% more searches
/// per second than 16 (wrk, 1000 synthetic patients).
const CONNECTIONS_PER_CORE: u32 = 3;

impl PostgresStore {
    /// Never: every node hears what another publishes through the change feed.
    fn announces_by_record(&self) -> bool {
        false
    }

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
