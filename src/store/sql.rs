//! The SQL shared by the SQLite and PostgreSQL stores.
//!
//! Both databases run the same statements (sqlx's `QueryBuilder` writes each dialect's
//! placeholders), except for bulk writes; the differences that matter, row locking and how
//! bulk INSERTs and DELETEs are written, are parameters and per-database functions. The
//! [`sql_store!`] macro instantiates the store, its transaction type and the trait impls for one
//! sqlx database type, so the SQL exists once.

use time::OffsetDateTime;

use super::{StoreError, StoreResult};

/// Every search index table (each has `resource_type` and `resource_id` columns).
pub(super) const INDEX_TABLES: &[&str] = &[
    "search_token",
    "search_string",
    "search_reference",
    "search_uri",
    "search_date",
    "search_number",
    "search_quantity",
    "search_composite",
];

/// Queues a job (`$1` kind, `$2` parameters, `$3` now, `$4` not before); a `RETURNING` clause
/// follows.
pub(super) const INSERT_JOB: &str =
    "INSERT INTO jobs (kind, parameters, status, processed, created, updated, not_before) \
     VALUES ($1, $2, 'queued', 0, $3, $3, $4)";

/// The statement `sql` (built on [`INSERT_JOB`]) with its values bound: a job due at
/// `not_before`.
pub(super) fn insert_job<'q, DB: sqlx::Database>(
    sql: &'q str,
    kind: &'q str,
    parameters: &'q str,
    not_before: OffsetDateTime,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let now = to_micros(OffsetDateTime::now_utc());
    sqlx::query(sql).bind(kind).bind(parameters).bind(now).bind(to_micros(not_before))
}

/// The columns of a job row, in the order [`sql_store!`] decodes.
pub(super) const JOB_COLUMNS: &str =
    "id, kind, parameters, status, progress, processed, message, created, updated, client";

/// The column list every resource-version query selects, in the order [`sql_store!`] decodes.
pub(super) const VERSION_COLUMNS: &str = "resource_type, id, version, last_updated, deleted, method, body";

/// What ends the INSERT of current versions into `resources`: a new version replaces the row.
pub(super) const REPLACE_CURRENT: &str = " ON CONFLICT (resource_type, id) DO UPDATE SET version = excluded.version, \
     last_updated = excluded.last_updated, deleted = excluded.deleted, method = excluded.method, body = excluded.body";

/// Microseconds since the Unix epoch: the stored form of instants.
pub fn to_micros(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000) as i64
}

/// The inverse of [`to_micros`].
pub fn from_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// How many (type, id) keys go into one row-value `IN` list.
pub(super) const KEY_CHUNK: usize = 500;

/// The SQL type of a sort key's value column.
pub(super) enum SortValueKind {
    Int,
    Float,
    Text,
}

/// What type the `s<n>` column of a sort key holds.
pub(super) fn sort_value_kind(key: &super::query::SortKey) -> SortValueKind {
    use super::query::{IndexTable, SortBy};
    match &key.by {
        SortBy::LastUpdated | SortBy::Param { table: IndexTable::Date, .. } => SortValueKind::Int,
        SortBy::Param { table: IndexTable::Number | IndexTable::Quantity, .. } => SortValueKind::Float,
        _ => SortValueKind::Text,
    }
}

/// Maps driver errors, recognising unique violations as write conflicts.
pub(super) fn classify(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        // Serialization failure, and a deadlock PostgreSQL broke by aborting this transaction.
        sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")) => StoreError::Conflict,
        _ => StoreError::Database(error),
    }
}

/// A write transaction's hold on the database, from its first statement until
/// [`WriteSession::commit`] or until it is dropped (which rolls its writes back).
#[async_trait::async_trait]
pub(super) trait WriteSession: Sized + Send {
    /// Where sessions begin: shared by all write transactions of a store.
    type Source: Clone + Send + Sync;
    type Connection;
    async fn begin(source: &Self::Source) -> StoreResult<Self>;
    /// The connection, for reads.
    fn connection(&mut self) -> &mut Self::Connection;
    /// The connection, for a write; `last` when nothing after it but the write itself can
    /// fail the transaction (its flush at commit), which SQLite need not be able to undo alone.
    async fn writing(&mut self, last: bool) -> StoreResult<&mut Self::Connection>;
    async fn commit(self) -> StoreResult<()>;
    async fn rollback(self);
}

/// PostgreSQL: a transaction of its own on a pooled connection per write transaction.
#[async_trait::async_trait]
impl WriteSession for sqlx::Transaction<'static, sqlx::Postgres> {
    type Source = sqlx::PgPool;
    type Connection = sqlx::PgConnection;

    async fn begin(pool: &sqlx::PgPool) -> StoreResult<Self> {
        Ok(pool.begin().await?)
    }

    fn connection(&mut self) -> &mut sqlx::PgConnection {
        self
    }

    async fn writing(&mut self, _last: bool) -> StoreResult<&mut sqlx::PgConnection> {
        Ok(self)
    }

    async fn commit(self) -> StoreResult<()> {
        sqlx::Transaction::commit(self).await.map_err(classify)
    }

    async fn rollback(self) {
        // A rollback that fails leaves nothing behind: the connection is closed.
        let _ = sqlx::Transaction::rollback(self).await;
    }
}

/// SQLite: a turn on the single writer inside a group commit.
#[async_trait::async_trait]
impl WriteSession for super::group::Member {
    type Source = super::group::WriterGate;
    type Connection = sqlx::SqliteConnection;

    async fn begin(gate: &super::group::WriterGate) -> StoreResult<Self> {
        gate.join().await
    }

    fn connection(&mut self) -> &mut sqlx::SqliteConnection {
        self.conn()
    }

    async fn writing(&mut self, last: bool) -> StoreResult<&mut sqlx::SqliteConnection> {
        super::group::Member::writing(self, last).await
    }

    async fn commit(self) -> StoreResult<()> {
        super::group::Member::commit(self).await
    }

    async fn rollback(self) {
        super::group::Member::rollback(self).await
    }
}

/// Defines `$store` (with `readers`/`writers` pools of `$db`) and its transaction type, and
/// implements [`Store`](super::Store) and [`StoreTx`](super::StoreTx) with the shared SQL.
/// `$lock` is appended to the statement that reads a row a writer is about to replace, and
/// `$skip_locked` to the one that picks a job to claim. With `$one_query` the
/// statements of a batch are joined into one query (SQLite runs them in one call of its
/// connection's thread; PostgreSQL's extended protocol takes one statement per query).
/// `$session` is the [`WriteSession`] a write transaction holds. The invoking module defines
/// `version_statements`, `index_row_statements` and `push_one_of`: how its database best
/// takes many rows, and many keys, in one statement.
macro_rules! sql_store {
    (
        store = $store:ident,
        tx = $tx:ident,
        db = $db:ty,
        lock = $lock:literal,
        skip_locked = $skip_locked:literal,
        one_query = $one_query:literal,
        dialect = $dialect:expr,
        session = $session:ty
    ) => {
        /// A store on this database. Reads go to `readers`, write transactions to `writers`.
        pub struct $store {
            readers: sqlx::Pool<$db>,
            /// Writes outside a write transaction (jobs, authorization records).
            writers: sqlx::Pool<$db>,
            /// Where write transactions begin.
            sessions: <$session as $crate::store::sql::WriteSession>::Source,
            /// Current versions (exclusive when this process is the database's only writer,
            /// shared when its change feed keeps it).
            cache: Option<std::sync::Arc<$crate::store::cache::VersionCache>>,
            /// Authorization record kinds mirrored in memory.
            watched: std::sync::Arc<$crate::store::feed::Watched>,
            /// Where this node announces its writes to the others sharing the database.
            feed: Option<std::sync::Arc<$crate::store::feed::Feed>>,
            /// The lock file that makes this process the only writer, held while the store lives.
            _writer_lock: Option<std::fs::File>,
        }

        /// A write transaction of this store. Writes are buffered and flushed in batches, before
        /// a search inside the transaction and at commit (reads of one resource look in the buffer).
        /// The database transaction begins with the first statement: a bundle of new resources
        /// is validated, indexed and serialised without holding a writer connection (SQLite has
        /// one), so concurrent bundles prepare in parallel and queue only to write.
        pub struct $tx {
            tx: Option<$session>,
            sessions: <$session as $crate::store::sql::WriteSession>::Source,
            pending: Vec<($crate::store::ResourceVersion, $crate::store::IndexRows)>,
            /// The content of the Binaries in `pending`, split off to be stored apart (ADR 11),
            /// by their (type, id, version).
            contents: Vec<((String, String, i64), $crate::store::content::Split)>,
            cache: Option<std::sync::Arc<$crate::store::cache::VersionCache>>,
            /// What this transaction wrote, for the cache and the feed.
            written: Vec<$crate::store::ResourceVersion>,
            /// Whether it has locked a row it read (`$lock`).
            locked: bool,
            feed: Option<std::sync::Arc<$crate::store::feed::Feed>>,
            /// AuditEvents to record, written by the last flush (ADR 19): after everything
            /// else, so that on SQLite they need no savepoint of their own.
            audit: Vec<$crate::store::audit::NewAuditEvent>,
        }

        impl $store {
            /// The current version as stored (a Binary's content named, not inlined), through
            /// the cache when there is one.
            async fn read_stored(
                &self,
                resource_type: &str,
                id: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::ResourceVersion>> {
                let Some(cache) = &self.cache else {
                    let mut conn = self.readers.acquire().await?;
                    return fetch_current(&mut conn, resource_type, id, "").await;
                };
                if let Some(cached) = cache.get(resource_type, id) {
                    return Ok(Some(cached));
                }
                let epoch = cache.epoch();
                let mut conn = self.readers.acquire().await?;
                let found = fetch_current(&mut conn, resource_type, id, "").await?;
                if let Some(version) = &found {
                    cache.fill(version, epoch);
                }
                Ok(found)
            }
        }

        impl $tx {
            /// The transaction's connection, beginning the transaction on first use.
            async fn conn(&mut self) -> $crate::store::StoreResult<&mut Conn> {
                use $crate::store::sql::WriteSession;
                if self.tx.is_none() {
                    self.tx = Some(<$session as WriteSession>::begin(&self.sessions).await?);
                }
                Ok(self.tx.as_mut().expect("begun above").connection())
            }

            /// The transaction's connection for a write (see `WriteSession::writing`).
            async fn write_conn(&mut self, last: bool) -> $crate::store::StoreResult<&mut Conn> {
                use $crate::store::sql::WriteSession;
                self.conn().await?;
                WriteSession::writing(self.tx.as_mut().expect("begun above"), last).await
            }

            /// [`StoreTx::commit`](super::StoreTx::commit)'s work: the last flush, the commit, and
            /// what the cache and the feed learn of it.
            async fn flush_and_commit(mut self: Box<Self>) -> $crate::store::StoreResult<()> {
                use $crate::store::sql::WriteSession;
                if let Err(error) = self.flush(true).await {
                    // Answered only once the group this ran in has ended, like any other error.
                    $crate::store::StoreTx::rollback(self).await;
                    return Err(error);
                }
                let $tx { tx, cache, written, feed, .. } = *self;
                let Some(mut tx) = tx else {
                    return Ok(()); // nothing was read or written
                };
                let announcement = feed.as_ref().map(|feed| feed.resources(&written));
                if let Some(announcement) = &announcement {
                    announce(tx.connection(), $crate::store::feed::RESOURCES, &announcement.payloads).await?;
                }
                WriteSession::commit(tx).await?;
                if let Some(cache) = cache {
                    cache.committed(&written);
                }
                if let Some(announcement) = announcement {
                    announcement.heard_back().await;
                }
                Ok(())
            }

            /// Writes the buffered versions; `last` at commit, with the AuditEvents.
            async fn flush(&mut self, last: bool) -> $crate::store::StoreResult<()> {
                self.flush_versions(last).await?;
                if last && !self.audit.is_empty() {
                    let events = std::mem::take(&mut self.audit);
                    self.record_audit_rows(&events).await?;
                }
                Ok(())
            }

            async fn flush_versions(&mut self, last: bool) -> $crate::store::StoreResult<()> {
                if self.pending.is_empty() {
                    return Ok(());
                }
                let mut pending = std::mem::take(&mut self.pending);
                let contents = std::mem::take(&mut self.contents);
                for (version, _) in pending.iter_mut() {
                    let key = (version.resource_type.clone(), version.id.clone(), version.version);
                    if let Some((_, split)) = contents.iter().find(|(k, _)| *k == key) {
                        version.body = split.stored.clone();
                    }
                }
                // Built before the writer is taken: binding a batch's values is work of its own.
                let (statements, versions) = batch_statements(pending);
                let conn = self.write_conn(last).await?;
                for (_, split) in &contents {
                    store_content(conn, &split.content).await?;
                }
                statements.execute(conn).await?;
                if self.cache.is_some() {
                    self.written.extend(versions);
                }
                Ok(())
            }
        }

        type Conn = <$db as sqlx::Database>::Connection;
        type Builder = sqlx::QueryBuilder<'static, $db>;

        /// Sends `payloads` on a feed channel; inside a transaction they are delivered when it
        /// commits (only stores with a feed, PostgreSQL, call this).
        async fn announce(
            conn: &mut Conn,
            channel: &'static str,
            payloads: &[String],
        ) -> $crate::store::StoreResult<()> {
            if payloads.is_empty() {
                return Ok(());
            }
            let mut builder = Builder::new("SELECT ");
            let mut notifications = builder.separated(", ");
            for payload in payloads.iter().cloned() {
                notifications.push("pg_notify(");
                notifications.push_bind_unseparated(channel);
                notifications.push_unseparated(", ");
                notifications.push_bind_unseparated(payload);
                notifications.push_unseparated(")");
            }
            builder.build().execute(conn).await?;
            Ok(())
        }

        fn decode_version(row: &<$db as sqlx::Database>::Row) -> Result<$crate::store::ResourceVersion, sqlx::Error> {
            use sqlx::Row;
            Ok($crate::store::ResourceVersion {
                resource_type: row.try_get("resource_type")?,
                id: row.try_get("id")?,
                version: row.try_get("version")?,
                last_updated: $crate::store::sql::from_micros(row.try_get("last_updated")?),
                deleted: row.try_get("deleted")?,
                method: $crate::store::WriteMethod::parse(row.try_get::<&str, _>("method")?),
                body: bytes::Bytes::from(row.try_get::<Vec<u8>, _>("body")?),
            })
        }

        /// Stores a Binary's content unless it is stored already (ADR 11).
        async fn store_content(
            conn: &mut Conn,
            content: &$crate::store::content::Content,
        ) -> $crate::store::StoreResult<()> {
            let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM binary_content WHERE sha256 = $1")
                .bind(&content.sha256)
                .fetch_one(&mut *conn)
                .await?;
            if stored == content.chunk_count() {
                return Ok(());
            }
            for (seq, chunk) in content.chunks() {
                sqlx::query(
                    "INSERT INTO binary_content (sha256, seq, chunk) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(&content.sha256)
                .bind(seq)
                .bind(chunk.as_ref())
                .execute(&mut *conn)
                .await?;
            }
            Ok(())
        }

        /// One chunk of a stored content.
        async fn fetch_chunk(
            conn: &mut Conn,
            sha256: &str,
            seq: i64,
        ) -> $crate::store::StoreResult<Option<bytes::Bytes>> {
            let chunk: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT chunk FROM binary_content WHERE sha256 = $1 AND seq = $2")
                    .bind(sha256)
                    .bind(seq)
                    .fetch_optional(conn)
                    .await?;
            Ok(chunk.map(bytes::Bytes::from))
        }

        /// Puts `data` back into the Binaries among `versions` whose content is stored apart.
        async fn inflate(
            conn: &mut Conn,
            versions: &mut [$crate::store::ResourceVersion],
        ) -> $crate::store::StoreResult<()> {
            for version in versions.iter_mut() {
                let Some(stored) = $crate::store::content::stored_content(version) else { continue };
                let chunks: Vec<Vec<u8>> =
                    sqlx::query_scalar("SELECT chunk FROM binary_content WHERE sha256 = $1 ORDER BY seq")
                        .bind(&stored.sha256)
                        .fetch_all(&mut *conn)
                        .await?;
                let content = chunks.concat();
                if content.len() as u64 != stored.size {
                    let problem = format!("the content of Binary/{} (sha256 {}) is missing", version.id, stored.sha256);
                    return Err(sqlx::Error::Decode(problem.into()).into());
                }
                version.body = $crate::store::content::inflated(&version.body, &stored, &content);
            }
            Ok(())
        }

        /// [`inflate`] for one version, if any.
        async fn inflate_one(
            conn: &mut Conn,
            version: Option<$crate::store::ResourceVersion>,
        ) -> $crate::store::StoreResult<Option<$crate::store::ResourceVersion>> {
            let mut versions: Vec<_> = version.into_iter().collect();
            inflate(conn, &mut versions).await?;
            Ok(versions.pop())
        }

        fn decode_job(row: &<$db as sqlx::Database>::Row) -> Result<$crate::store::Job, sqlx::Error> {
            use sqlx::Row;
            Ok($crate::store::Job {
                id: row.try_get("id")?,
                kind: row.try_get("kind")?,
                parameters: row.try_get("parameters")?,
                status: $crate::store::JobStatus::parse(row.try_get::<&str, _>("status")?),
                progress: row.try_get("progress")?,
                processed: row.try_get("processed")?,
                message: row.try_get("message")?,
                created: $crate::store::sql::from_micros(row.try_get("created")?),
                updated: $crate::store::sql::from_micros(row.try_get("updated")?),
                client: row.try_get("client")?,
            })
        }

        async fn fetch_current(
            conn: &mut Conn,
            resource_type: &str,
            id: &str,
            lock: &str,
        ) -> $crate::store::StoreResult<Option<$crate::store::ResourceVersion>> {
            let sql = format!(
                "SELECT {} FROM resources WHERE resource_type = $1 AND id = $2{lock}",
                $crate::store::sql::VERSION_COLUMNS
            );
            // A row lock can end in a deadlock PostgreSQL breaks: a conflict, retried.
            let row = sqlx::query(&sql)
                .bind(resource_type)
                .bind(id)
                .fetch_optional(conn)
                .await
                .map_err($crate::store::sql::classify)?;
            Ok(row.as_ref().map(decode_version).transpose()?)
        }

        async fn fetch_version(
            conn: &mut Conn,
            resource_type: &str,
            id: &str,
            version: i64,
        ) -> $crate::store::StoreResult<Option<$crate::store::ResourceVersion>> {
            let sql = format!(
                "SELECT {} FROM resource_history WHERE resource_type = $1 AND id = $2 AND version = $3",
                $crate::store::sql::VERSION_COLUMNS
            );
            let row = sqlx::query(&sql).bind(resource_type).bind(id).bind(version).fetch_optional(conn).await?;
            Ok(row.as_ref().map(decode_version).transpose()?)
        }

        async fn fetch_history(
            conn: &mut Conn,
            query: &$crate::store::HistoryQuery,
        ) -> $crate::store::StoreResult<$crate::store::HistoryPage> {
            use sqlx::Row;
            let mut qb = Builder::new("SELECT seq, ");
            qb.push($crate::store::sql::VERSION_COLUMNS).push(" FROM resource_history WHERE 1 = 1");
            match &query.scope {
                $crate::store::HistoryScope::System => {}
                $crate::store::HistoryScope::Type(t) => {
                    qb.push(" AND resource_type = ").push_bind(t.clone());
                }
                $crate::store::HistoryScope::Instance(t, id) => {
                    qb.push(" AND resource_type = ").push_bind(t.clone());
                    qb.push(" AND id = ").push_bind(id.clone());
                }
            }
            if let Some(since) = query.since {
                qb.push(" AND last_updated >= ").push_bind($crate::store::sql::to_micros(since));
            }
            if let Some(before) = query.before_seq {
                qb.push(" AND seq < ").push_bind(before);
            }
            qb.push(" ORDER BY seq DESC LIMIT ").push_bind(query.count as i64 + 1);
            let rows = qb.build().fetch_all(conn).await?;
            let mut entries = Vec::with_capacity(rows.len());
            for row in rows.iter().take(query.count) {
                entries.push((row.try_get::<i64, _>("seq")?, decode_version(row)?));
            }
            Ok($crate::store::HistoryPage { has_more: rows.len() > query.count, entries })
        }

        fn bind_args(
            sql: &$crate::store::planner::Sql,
        ) -> sqlx::query::Query<'_, $db, <$db as sqlx::Database>::Arguments<'_>> {
            use $crate::store::planner::Arg;
            sql.args.iter().fold(sqlx::query(&sql.text), |query, arg| match arg {
                Arg::Text(text) => query.bind(text.as_str()),
                Arg::Int(int) => query.bind(*int),
                Arg::Float(float) => query.bind(*float),
            })
        }

        async fn run_search(
            conn: &mut Conn,
            query: &$crate::store::SearchQuery,
        ) -> $crate::store::StoreResult<$crate::store::SearchPage> {
            use sqlx::Row;
            use $crate::store::planner;
            let total = if query.with_total {
                let sql = planner::count(query, $dialect);
                let row = bind_args(&sql).fetch_one(&mut *conn).await?;
                Some(row.try_get::<i64, _>("n")? as u64)
            } else {
                None
            };
            // `_count=0` (and `_summary=count`) asks for the total only.
            if query.count == 0 {
                return Ok($crate::store::SearchPage {
                    next: None,
                    previous: None,
                    resources: Vec::new(),
                    total,
                    marked: Vec::new(),
                });
            }
            let sql = planner::page(query, $dialect);
            let rows = bind_args(&sql).fetch_all(&mut *conn).await?;
            let more = rows.len() > query.count;
            let mut shown: Vec<&<$db as sqlx::Database>::Row> = rows.iter().take(query.count).collect();
            let backward = query.cursor.as_ref().is_some_and(|c| c.backward);
            if backward {
                shown.reverse();
            }
            let resources = shown.iter().map(|row| decode_version(row)).collect::<Result<Vec<_>, _>>()?;
            let marked = match query.as_of {
                Some(_) => shown
                    .iter()
                    .map(|row| row.try_get::<Option<i64>, _>("marked_version"))
                    .collect::<Result<Vec<_>, _>>()?,
                None => Vec::new(),
            };
            // The anchor of a neighbouring page: a shown row with its sort values.
            let anchor =
                |row: &<$db as sqlx::Database>::Row, resource: &$crate::store::ResourceVersion, backward: bool| {
                    let mut values = Vec::with_capacity(query.sort.len());
                    for (n, key) in query.sort.iter().enumerate() {
                        let column = format!("s{n}");
                        let value = match $crate::store::sql::sort_value_kind(key) {
                            $crate::store::sql::SortValueKind::Int => {
                                row.try_get::<Option<i64>, _>(column.as_str())?.map($crate::store::SortValue::Int)
                            }
                            $crate::store::sql::SortValueKind::Float => {
                                row.try_get::<Option<f64>, _>(column.as_str())?.map($crate::store::SortValue::Float)
                            }
                            $crate::store::sql::SortValueKind::Text => {
                                row.try_get::<Option<String>, _>(column.as_str())?.map($crate::store::SortValue::Text)
                            }
                        };
                        values.push(value.unwrap_or($crate::store::SortValue::Null));
                    }
                    Ok::<_, sqlx::Error>($crate::store::Cursor {
                        values,
                        resource_type: resource.resource_type.clone(),
                        id: resource.id.clone(),
                        backward,
                    })
                };
            // Going forward there is a next page when more rows matched, and a previous one
            // when this page started at a cursor; going backward, the other way round.
            let (has_next, has_previous) = if backward { (true, more) } else { (more, query.cursor.is_some()) };
            let next = match (has_next, shown.last(), resources.last()) {
                (true, Some(row), Some(resource)) => Some(anchor(row, resource, false)?),
                _ => None,
            };
            let previous = match (has_previous, shown.first(), resources.first()) {
                (true, Some(row), Some(resource)) => Some(anchor(row, resource, true)?),
                _ => None,
            };
            Ok($crate::store::SearchPage { next, previous, resources, total, marked })
        }

        async fn fetch_keys(
            conn: &mut Conn,
            sql: &$crate::store::planner::Sql,
        ) -> $crate::store::StoreResult<Vec<(String, String)>> {
            use sqlx::Row;
            let rows = bind_args(sql).fetch_all(conn).await?;
            rows.iter().map(|row| Ok((row.try_get("resource_type")?, row.try_get("id")?))).collect()
        }

        /// The statements that write buffered versions: a bulk INSERT per table (see
        /// `version_statements` and `index_row_statements`) instead of several statements per
        /// resource (on SQLite, all of them sent as one query: one round trip to the writer's
        /// thread). The index rows are moved into the
        /// statements; the versions come back.
        fn batch_statements(
            batch: Vec<($crate::store::ResourceVersion, $crate::store::IndexRows)>,
        ) -> (Statements, Vec<$crate::store::ResourceVersion>) {
            let (versions, mut rows): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let mut statements = Statements::default();
            version_statements(&mut statements, "resource_history", &versions.iter().collect::<Vec<_>>(), "");
            // One row per resource in `resources`: the last version written wins.
            let mut seen = std::collections::HashSet::with_capacity(versions.len());
            let latest: Vec<usize> = (0..versions.len())
                .rev()
                .filter(|&n| seen.insert((versions[n].resource_type.as_str(), versions[n].id.as_str())))
                .collect();
            let current_versions: Vec<&$crate::store::ResourceVersion> = latest.iter().map(|&n| &versions[n]).collect();
            version_statements(&mut statements, "resources", &current_versions, $crate::store::sql::REPLACE_CURRENT);
            // Version 1 replaces no earlier index rows.
            let replaced: Vec<(String, String)> = latest
                .iter()
                .map(|&n| &versions[n])
                .filter(|v| v.version > 1)
                .map(|v| (v.resource_type.clone(), v.id.clone()))
                .collect();
            delete_index_rows(&mut statements, &replaced);
            let current = latest.iter().map(|&n| (&versions[n], std::mem::take(&mut rows[n]))).collect();
            index_row_statements(&mut statements, current);
            (statements, versions)
        }

        /// Statements to run in order; on SQLite joined into one query.
        #[derive(Default)]
        struct Statements(Vec<Builder>);

        impl Statements {
            /// Starts the next statement with `sql`.
            fn start(&mut self, sql: &str) -> &mut Builder {
                match self.0.last_mut() {
                    Some(query) if $one_query => {
                        query.push(";\n").push(sql);
                    }
                    _ => self.0.push(Builder::new(sql)),
                }
                self.0.last_mut().expect("a statement was started")
            }

            async fn execute(self, conn: &mut Conn) -> $crate::store::StoreResult<()> {
                use $crate::store::sql::classify;
                for mut statement in self.0 {
                    // A joined query's text is new each time: not worth a prepared-statement slot.
                    statement.build().persistent(!$one_query).execute(&mut *conn).await.map_err(classify)?;
                }
                Ok(())
            }
        }

        /// Deletes every index row of the resources with these keys: per table and type,
        /// `resource_type = ? AND resource_id` among the ids (`push_one_of`), which both
        /// databases look up in the owner indexes.
        fn delete_index_rows(statements: &mut Statements, keys: &[(String, String)]) {
            for (resource_type, ids) in $crate::store::planner::group_by_type(keys) {
                for chunk in ids.chunks($crate::store::sql::KEY_CHUNK) {
                    for table in $crate::store::sql::INDEX_TABLES {
                        let query = statements.start(&format!("DELETE FROM {table} WHERE resource_type = "));
                        query.push_bind(resource_type.to_string()).push(" AND resource_id");
                        push_one_of(query, chunk);
                    }
                }
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            async fn read(
                &self,
                resource_type: &str,
                id: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::ResourceVersion>> {
                let found = self.read_stored(resource_type, id).await?;
                if found.as_ref().and_then($crate::store::content::stored_content).is_none() {
                    return Ok(found);
                }
                inflate_one(&mut *self.readers.acquire().await?, found).await
            }

            async fn vread(
                &self,
                resource_type: &str,
                id: &str,
                version: i64,
            ) -> $crate::store::StoreResult<Option<$crate::store::ResourceVersion>> {
                let mut conn = self.readers.acquire().await?;
                let found = fetch_version(&mut conn, resource_type, id, version).await?;
                inflate_one(&mut conn, found).await
            }

            async fn history(
                &self,
                query: &$crate::store::HistoryQuery,
            ) -> $crate::store::StoreResult<$crate::store::HistoryPage> {
                let mut conn = self.readers.acquire().await?;
                let mut page = fetch_history(&mut conn, query).await?;
                for (_, version) in page.entries.iter_mut() {
                    inflate(&mut conn, std::slice::from_mut(version)).await?;
                }
                Ok(page)
            }

            async fn search(
                &self,
                query: &$crate::store::SearchQuery,
            ) -> $crate::store::StoreResult<$crate::store::SearchPage> {
                let mut conn = self.readers.acquire().await?;
                let mut page = run_search(&mut conn, query).await?;
                inflate(&mut conn, &mut page.resources).await?;
                Ok(page)
            }

            async fn read_many(
                &self,
                keys: &[(String, String)],
            ) -> $crate::store::StoreResult<Vec<$crate::store::ResourceVersion>> {
                let mut conn = self.readers.acquire().await?;
                let mut found = Vec::with_capacity(keys.len());
                for chunk in keys.chunks($crate::store::sql::KEY_CHUNK) {
                    let sql = $crate::store::planner::fetch_many(chunk);
                    for row in bind_args(&sql).fetch_all(&mut *conn).await? {
                        found.push(decode_version(&row)?);
                    }
                }
                inflate(&mut conn, &mut found).await?;
                Ok(found)
            }

            async fn references_from(
                &self,
                sources: &[(String, String)],
                param: Option<&str>,
                target_type: Option<&str>,
            ) -> $crate::store::StoreResult<Vec<(String, String)>> {
                let mut conn = self.readers.acquire().await?;
                let mut keys = Vec::new();
                for chunk in sources.chunks($crate::store::sql::KEY_CHUNK) {
                    keys.extend(
                        fetch_keys(&mut conn, &$crate::store::planner::outgoing_references(chunk, param, target_type))
                            .await?,
                    );
                }
                Ok(keys)
            }

            async fn references_to(
                &self,
                targets: &[(String, String)],
                source_type: &str,
                param: Option<&str>,
            ) -> $crate::store::StoreResult<Vec<(String, String)>> {
                let mut conn = self.readers.acquire().await?;
                let mut keys = Vec::new();
                for chunk in targets.chunks($crate::store::sql::KEY_CHUNK) {
                    keys.extend(
                        fetch_keys(&mut conn, &$crate::store::planner::incoming_references(chunk, source_type, param))
                            .await?,
                    );
                }
                Ok(keys)
            }

            async fn referring_types(
                &self,
                target_type: &str,
                target_id: &str,
            ) -> $crate::store::StoreResult<Vec<String>> {
                use sqlx::Row;
                let mut conn = self.readers.acquire().await?;
                let sql = $crate::store::planner::referring_types(target_type, target_id);
                let rows = bind_args(&sql).fetch_all(&mut *conn).await?;
                Ok(rows.iter().map(|row| row.try_get("resource_type")).collect::<Result<Vec<String>, _>>()?)
            }

            async fn begin(&self) -> $crate::store::StoreResult<Box<dyn $crate::store::StoreTx>> {
                Ok(Box::new($tx {
                    tx: None,
                    sessions: self.sessions.clone(),
                    pending: Vec::new(),
                    contents: Vec::new(),
                    cache: self.cache.clone(),
                    written: Vec::new(),
                    locked: false,
                    feed: self.feed.clone(),
                    audit: Vec::new(),
                }))
            }

            async fn scan(
                &self,
                types: &[String],
                after: Option<&(String, String)>,
                limit: usize,
            ) -> $crate::store::StoreResult<Vec<$crate::store::ResourceVersion>> {
                let mut conn = self.readers.acquire().await?;
                let sql = $crate::store::planner::scan(types, after, limit);
                let rows = bind_args(&sql).fetch_all(&mut *conn).await?;
                Ok(rows.iter().map(decode_version).collect::<Result<Vec<_>, _>>()?)
            }

            async fn enqueue_job(
                &self,
                kind: &str,
                parameters: &str,
            ) -> $crate::store::StoreResult<$crate::store::Job> {
                let now = time::OffsetDateTime::now_utc();
                let sql = format!("{} RETURNING {}", $crate::store::sql::INSERT_JOB, $crate::store::sql::JOB_COLUMNS);
                let row = $crate::store::sql::insert_job(&sql, kind, parameters, now).fetch_one(&self.writers).await?;
                Ok(decode_job(&row)?)
            }

            async fn job(&self, id: i64) -> $crate::store::StoreResult<Option<$crate::store::Job>> {
                let sql = format!("SELECT {} FROM jobs WHERE id = $1", $crate::store::sql::JOB_COLUMNS);
                let row = sqlx::query(&sql).bind(id).fetch_optional(&self.readers).await?;
                Ok(row.as_ref().map(decode_job).transpose()?)
            }

            async fn claim_job(
                &self,
                owner: &str,
                lease_until: time::OffsetDateTime,
                kinds: $crate::store::JobKinds<'_>,
            ) -> $crate::store::StoreResult<Option<$crate::store::Job>> {
                let now = $crate::store::sql::to_micros(time::OffsetDateTime::now_utc());
                let of_kind = match kinds {
                    $crate::store::JobKinds::Only(_) => " AND kind = $4".to_string(),
                    $crate::store::JobKinds::Except(kinds) => {
                        (0..kinds.len()).map(|n| format!(" AND kind <> ${}", n + 4)).collect()
                    }
                };
                let sql = format!(
                    "UPDATE jobs SET status = 'running', owner = $1, lease_until = $2, updated = $3 \
                     WHERE id = (SELECT id FROM jobs WHERE ((status = 'queued' AND not_before <= $3) \
                     OR (status = 'running' AND lease_until < $3)){of_kind} ORDER BY id LIMIT 1{}) RETURNING {}",
                    $skip_locked,
                    $crate::store::sql::JOB_COLUMNS
                );
                let mut query =
                    sqlx::query(&sql).bind(owner).bind($crate::store::sql::to_micros(lease_until)).bind(now);
                match kinds {
                    $crate::store::JobKinds::Only(kind) => query = query.bind(kind),
                    $crate::store::JobKinds::Except(kinds) => {
                        for kind in kinds {
                            query = query.bind(*kind);
                        }
                    }
                }
                let row = query.fetch_optional(&self.writers).await?;
                Ok(row.as_ref().map(decode_job).transpose()?)
            }

            async fn finish_job(
                &self,
                id: i64,
                owner: &str,
                status: $crate::store::JobStatus,
                message: &str,
            ) -> $crate::store::StoreResult<bool> {
                let now = $crate::store::sql::to_micros(time::OffsetDateTime::now_utc());
                let done = sqlx::query(
                    "UPDATE jobs SET status = $1, message = $2, updated = $3, owner = NULL, lease_until = NULL \
                     WHERE id = $4 AND owner = $5 AND status = 'running'",
                )
                .bind(status.as_str())
                .bind(message)
                .bind(now)
                .bind(id)
                .bind(owner)
                .execute(&self.writers)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn cancel_job(&self, id: i64) -> $crate::store::StoreResult<bool> {
                let now = $crate::store::sql::to_micros(time::OffsetDateTime::now_utc());
                let done = sqlx::query(
                    "UPDATE jobs SET status = 'cancelled', message = 'cancelled on request', updated = $1, \
                     owner = NULL, lease_until = NULL WHERE id = $2 AND status IN ('queued', 'running')",
                )
                .bind(now)
                .bind(id)
                .execute(&self.writers)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn binary_as_stored(
                &self,
                id: &str,
                version: Option<i64>,
            ) -> $crate::store::StoreResult<Option<$crate::store::ResourceVersion>> {
                match version {
                    None => self.read_stored("Binary", id).await,
                    Some(version) => fetch_version(&mut *self.readers.acquire().await?, "Binary", id, version).await,
                }
            }

            async fn content_chunk(&self, sha256: &str, seq: i64) -> $crate::store::StoreResult<Option<bytes::Bytes>> {
                fetch_chunk(&mut *self.readers.acquire().await?, sha256, seq).await
            }

            async fn ping(&self) -> $crate::store::StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.readers).await?;
                Ok(())
            }

            async fn gauges(&self) -> $crate::store::StoreResult<$crate::store::Gauges> {
                use sqlx::Row;
                let pool = |name: &'static str, pool: &sqlx::Pool<$db>| {
                    let idle = pool.num_idle() as u32;
                    (name, pool.size().saturating_sub(idle), idle)
                };
                let now = $crate::store::sql::to_micros(time::OffsetDateTime::now_utc());
                let jobs = sqlx::query(
                    "SELECT kind, COUNT(*) AS queued, MIN(created) AS oldest FROM jobs \
                     WHERE status = 'queued' GROUP BY kind ORDER BY kind",
                )
                .fetch_all(&self.readers)
                .await?
                .iter()
                .map(|row| -> Result<(String, i64, f64), sqlx::Error> {
                    let oldest: i64 = row.try_get("oldest")?;
                    Ok((row.try_get("kind")?, row.try_get("queued")?, (now - oldest).max(0) as f64 / 1e6))
                })
                .collect::<Result<Vec<_>, _>>()?;
                let pending: Option<i64> = sqlx::query_scalar(
                    "SELECT CAST(SUM(events - delivered) AS BIGINT) FROM subscription_delivery \
                     WHERE status IN ('active', 'error') AND channel <> 'websocket'",
                )
                .fetch_one(&self.readers)
                .await?;
                let unsealed: Option<i64> =
                    sqlx::query_scalar("SELECT MIN(recorded) FROM audit_events WHERE chain_pos IS NULL")
                        .fetch_one(&self.readers)
                        .await?;
                Ok($crate::store::Gauges {
                    pools: vec![pool("readers", &self.readers), pool("writers", &self.writers)],
                    jobs,
                    notifications_pending: pending.unwrap_or(0),
                    audit_seal_lag: unsealed.map_or(0.0, |oldest| (now - oldest).max(0) as f64 / 1e6),
                })
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::StoreTx for $tx {
            async fn current(
                &mut self,
                resource_type: &str,
                id: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::ResourceVersion>> {
                // Where reading the current version locks its row (PostgreSQL), what is buffered
                // before the transaction's first lock is written first. A bundle's creates come
                // before its updates, so concurrent bundles that all update one shared resource
                // do not hold its lock while inserting their new resources. Later writes stay
                // buffered (a bundle of updates is flushed once), as they do without row locks.
                if !$lock.is_empty() && !self.locked {
                    self.flush(false).await?;
                    self.locked = true;
                }
                let pending = self.pending.iter().rev().find(|(v, _)| v.resource_type == resource_type && v.id == id);
                if let Some((version, _)) = pending {
                    return Ok(Some(version.clone()));
                }
                let conn = self.conn().await?;
                let found = fetch_current(conn, resource_type, id, $lock).await?;
                inflate_one(conn, found).await
            }

            async fn vread(
                &mut self,
                resource_type: &str,
                id: &str,
                version: i64,
            ) -> $crate::store::StoreResult<Option<$crate::store::ResourceVersion>> {
                let pending = self
                    .pending
                    .iter()
                    .find(|(v, _)| v.resource_type == resource_type && v.id == id && v.version == version);
                if let Some((found, _)) = pending {
                    return Ok(Some(found.clone()));
                }
                let conn = self.conn().await?;
                let found = fetch_version(conn, resource_type, id, version).await?;
                inflate_one(conn, found).await
            }

            async fn search(
                &mut self,
                query: &$crate::store::SearchQuery,
            ) -> $crate::store::StoreResult<$crate::store::SearchPage> {
                self.flush(false).await?;
                let conn = self.conn().await?;
                let mut page = run_search(conn, query).await?;
                inflate(conn, &mut page.resources).await?;
                Ok(page)
            }

            async fn write(
                &mut self,
                version: $crate::store::ResourceVersion,
                index: $crate::store::IndexRows,
            ) -> $crate::store::StoreResult<()> {
                if let Some(split) = $crate::store::content::split(&version)? {
                    self.contents.push(((version.resource_type.clone(), version.id.clone(), version.version), split));
                }
                self.pending.push((version, index));
                Ok(())
            }

            async fn reindex(
                &mut self,
                batch: &[($crate::store::ResourceVersion, $crate::store::IndexRows)],
            ) -> $crate::store::StoreResult<usize> {
                use sqlx::Row;
                self.flush(false).await?;
                let keys: Vec<(String, String)> =
                    batch.iter().map(|(v, _)| (v.resource_type.clone(), v.id.clone())).collect();
                let mut current = std::collections::HashSet::new();
                for chunk in keys.chunks($crate::store::sql::KEY_CHUNK) {
                    let mut sql = $crate::store::planner::current_versions(chunk);
                    sql.text.push_str($lock);
                    let rows =
                        bind_args(&sql).fetch_all(self.conn().await?).await.map_err($crate::store::sql::classify)?;
                    for row in rows {
                        let key: (String, String, i64) =
                            (row.try_get("resource_type")?, row.try_get("id")?, row.try_get("version")?);
                        current.insert(key);
                    }
                }
                let unchanged: Vec<(&$crate::store::ResourceVersion, $crate::store::IndexRows)> = batch
                    .iter()
                    .filter(|(v, _)| current.contains(&(v.resource_type.clone(), v.id.clone(), v.version)))
                    .map(|(v, rows)| (v, rows.clone()))
                    .collect();
                let unchanged_keys: Vec<(String, String)> =
                    unchanged.iter().map(|(v, _)| (v.resource_type.clone(), v.id.clone())).collect();
                let mut statements = Statements::default();
                delete_index_rows(&mut statements, &unchanged_keys);
                index_row_statements(&mut statements, unchanged);
                statements.execute(self.write_conn(false).await?).await?;
                Ok(unchanged_keys.len())
            }

            async fn job_step(&mut self, step: &$crate::store::JobStep<'_>) -> $crate::store::StoreResult<bool> {
                let now = $crate::store::sql::to_micros(time::OffsetDateTime::now_utc());
                let done = sqlx::query(
                    "UPDATE jobs SET progress = $1, processed = $2, lease_until = $3, updated = $4 \
                     WHERE id = $5 AND owner = $6 AND status = 'running'",
                )
                .bind(step.progress)
                .bind(step.processed)
                .bind($crate::store::sql::to_micros(step.lease_until))
                .bind(now)
                .bind(step.id)
                .bind(step.owner)
                .execute(self.write_conn(false).await?)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn enqueue_job(
                &mut self,
                kind: &str,
                parameters: &str,
                not_before: time::OffsetDateTime,
            ) -> $crate::store::StoreResult<i64> {
                use sqlx::Row;
                let sql = format!("{} RETURNING id", $crate::store::sql::INSERT_JOB);
                let row = $crate::store::sql::insert_job(&sql, kind, parameters, not_before)
                    .fetch_one(self.write_conn(false).await?)
                    .await?;
                Ok(row.try_get("id")?)
            }

            async fn register_subscription(
                &mut self,
                id: &str,
                registration: Option<&$crate::store::subscription::Registration>,
            ) -> $crate::store::StoreResult<()> {
                self.register_subscription_rows(id, registration).await
            }

            async fn record_events(
                &mut self,
                events: &[$crate::store::subscription::NewEvent],
            ) -> $crate::store::StoreResult<usize> {
                self.record_event_rows(events).await
            }

            async fn record_reminders(
                &mut self,
                reminders: &[$crate::store::subscription::Reminder],
            ) -> $crate::store::StoreResult<usize> {
                self.record_reminder_rows(reminders).await
            }

            async fn record_audit(
                &mut self,
                events: &[$crate::store::audit::NewAuditEvent],
            ) -> $crate::store::StoreResult<()> {
                self.audit.extend_from_slice(events);
                Ok(())
            }

            async fn commit(self: Box<Self>) -> $crate::store::StoreResult<()> {
                // In a task of its own: a caller that stops waiting (a client hung up) must cut
                // short neither the last flush, which on SQLite has no savepoint of its own (its
                // whole group would fail with it), nor the cache's learning what was committed.
                tokio::spawn(self.flush_and_commit())
                    .await
                    .map_err(|_| $crate::store::StoreError::CommitFailed("the commit task stopped".into()))?
            }

            async fn rollback(self: Box<Self>) {
                use $crate::store::sql::WriteSession;
                if let Some(tx) = self.tx {
                    WriteSession::rollback(tx).await;
                }
            }
        }
    };
}

pub(super) use sql_store;
