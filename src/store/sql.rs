//! The SQL shared by the SQLite and PostgreSQL stores.
//!
//! Both databases run the same statements (sqlx's `QueryBuilder` writes each dialect's
//! placeholders); the one difference that matters, row locking, is a parameter. The
//! [`sql_store!`] macro instantiates the store, its transaction type and the trait impls for one
//! sqlx database type, so the SQL exists once.

use time::OffsetDateTime;

use super::StoreError;

/// How many index rows go into one multi-row INSERT (keeps well under SQLite's variable limit).
pub(super) const INSERT_CHUNK: usize = 500;

/// Every search index table (each has `resource_type` and `resource_id` columns).
pub(super) const INDEX_TABLES: &[&str] = &[
    "search_token",
    "search_string",
    "search_reference",
    "search_uri",
    "search_date",
    "search_number",
    "search_quantity",
];

/// The column list every resource-version query selects, in the order [`sql_store!`] decodes.
pub(super) const VERSION_COLUMNS: &str = "resource_type, id, version, last_updated, deleted, method, body";

/// Microseconds since the Unix epoch: the stored form of instants.
pub(super) fn to_micros(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000) as i64
}

/// The inverse of [`to_micros`].
pub(super) fn from_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The exclusive upper bound of all strings starting with `prefix` (for index-friendly prefix
/// matching with `>=` and `<` instead of `LIKE`).
pub(super) fn prefix_upper_bound(prefix: &str) -> String {
    let mut upper = prefix.to_string();
    upper.push(char::MAX);
    upper
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
pub(super) fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

/// Maps driver errors, recognising unique violations as write conflicts.
pub(super) fn classify(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        sqlx::Error::Database(db) if db.code().as_deref() == Some("40001") => StoreError::Conflict,
        _ => StoreError::Database(error),
    }
}

/// Defines `$store` (with `readers`/`writers` pools of `$db`) and its transaction type, and
/// implements [`Store`](super::Store) and [`StoreTx`](super::StoreTx) with the shared SQL.
/// `$lock` is appended to the statement that reads a row a writer is about to replace.
macro_rules! sql_store {
    (store = $store:ident, tx = $tx:ident, db = $db:ty, lock = $lock:literal) => {
        /// A store on this database. Reads go to `readers`, write transactions to `writers`.
        pub struct $store {
            readers: sqlx::Pool<$db>,
            writers: sqlx::Pool<$db>,
        }

        /// A write transaction of this store.
        pub struct $tx(sqlx::Transaction<'static, $db>);

        type Conn = <$db as sqlx::Database>::Connection;
        type Builder = sqlx::QueryBuilder<'static, $db>;

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
            let row = sqlx::query(&sql).bind(resource_type).bind(id).fetch_optional(conn).await?;
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

        fn push_condition(qb: &mut Builder, condition: &$crate::store::Condition) {
            use $crate::store::{Condition, StringMatch, TokenSystem};
            let exists = |qb: &mut Builder, table: &str, param: &str| {
                qb.push(format!(
                    "EXISTS (SELECT 1 FROM {table} i WHERE i.resource_type = r.resource_type AND i.resource_id = r.id AND i.param = "
                ));
                qb.push_bind(param.to_string());
            };
            match condition {
                Condition::Id(id) => {
                    qb.push("r.id = ").push_bind(id.clone());
                    return;
                }
                Condition::Token { param, system, code } => {
                    exists(qb, "search_token", param);
                    if let Some(code) = code {
                        qb.push(" AND i.code = ").push_bind(code.clone());
                    }
                    match system {
                        TokenSystem::Any => {}
                        TokenSystem::None => {
                            qb.push(" AND i.system IS NULL");
                        }
                        TokenSystem::Is(system) => {
                            qb.push(" AND i.system = ").push_bind(system.clone());
                        }
                    }
                }
                Condition::String { param, value, matching } => {
                    exists(qb, "search_string", param);
                    match matching {
                        StringMatch::Exact => {
                            qb.push(" AND i.exact = ").push_bind(value.clone());
                        }
                        StringMatch::Prefix => {
                            qb.push(" AND i.normalized >= ").push_bind(value.clone());
                            qb.push(" AND i.normalized < ").push_bind($crate::store::sql::prefix_upper_bound(value));
                        }
                        StringMatch::Contains => {
                            let pattern = format!("%{}%", $crate::store::sql::like_escape(value));
                            qb.push(" AND i.normalized LIKE ").push_bind(pattern).push(" ESCAPE '\\'");
                        }
                    }
                }
                Condition::Reference { param, target_type, target_id } => {
                    exists(qb, "search_reference", param);
                    qb.push(" AND i.target_id = ").push_bind(target_id.clone());
                    if let Some(target_type) = target_type {
                        qb.push(" AND i.target_type = ").push_bind(target_type.clone());
                    }
                }
                Condition::ReferenceUrl { param, url } => {
                    exists(qb, "search_reference", param);
                    qb.push(" AND i.target_url = ").push_bind(url.clone());
                }
                Condition::Uri { param, value } => {
                    exists(qb, "search_uri", param);
                    qb.push(" AND i.value = ").push_bind(value.clone());
                }
                Condition::Date { param, comparison, low, high } => {
                    exists(qb, "search_date", param);
                    qb.push(" AND ");
                    push_interval_comparison(qb, *comparison, *low, *high);
                }
                Condition::Number { param, comparison, value, low, high } => {
                    exists(qb, "search_number", param);
                    qb.push(" AND ");
                    push_point_comparison(qb, *comparison, *value, *low, *high);
                }
                Condition::Quantity { param, comparison, value, low, high, system, code } => {
                    exists(qb, "search_quantity", param);
                    qb.push(" AND ");
                    push_point_comparison(qb, *comparison, *value, *low, *high);
                    match (system, code) {
                        (Some(system), Some(code)) => {
                            qb.push(" AND i.system = ").push_bind(system.clone());
                            qb.push(" AND i.code = ").push_bind(code.clone());
                        }
                        (None, Some(code)) => {
                            qb.push(" AND (i.code = ").push_bind(code.clone());
                            qb.push(" OR i.unit = ").push_bind(code.clone()).push(")");
                        }
                        (Some(system), None) => {
                            qb.push(" AND i.system = ").push_bind(system.clone());
                        }
                        (None, None) => {}
                    }
                }
            }
            qb.push(")");
        }

        /// Index interval `[i.low, i.high)` against the searched `[low, high)` (FHIR R4 prefixes).
        fn push_interval_comparison(qb: &mut Builder, comparison: $crate::store::Comparison, low: i64, high: i64) {
            use $crate::store::Comparison::*;
            let contained = |qb: &mut Builder| {
                qb.push("(i.low >= ").push_bind(low).push(" AND i.high <= ").push_bind(high).push(")");
            };
            match comparison {
                Eq => contained(qb),
                Ne => {
                    qb.push("NOT ");
                    contained(qb);
                }
                Gt => {
                    qb.push("i.high > ").push_bind(high);
                }
                Lt => {
                    qb.push("i.low < ").push_bind(low);
                }
                Ge => {
                    qb.push("(i.high > ").push_bind(high).push(" OR ");
                    contained(qb);
                    qb.push(")");
                }
                Le => {
                    qb.push("(i.low < ").push_bind(low).push(" OR ");
                    contained(qb);
                    qb.push(")");
                }
                Sa => {
                    qb.push("i.low >= ").push_bind(high);
                }
                Eb => {
                    qb.push("i.high <= ").push_bind(low);
                }
            }
        }

        /// Indexed point `i.value` against the searched `value` with precision range `[low, high)`.
        fn push_point_comparison(qb: &mut Builder, comparison: $crate::store::Comparison, value: f64, low: f64, high: f64) {
            use $crate::store::Comparison::*;
            match comparison {
                Eq => {
                    qb.push("(i.value >= ").push_bind(low).push(" AND i.value < ").push_bind(high).push(")");
                }
                Ne => {
                    qb.push("NOT (i.value >= ").push_bind(low).push(" AND i.value < ").push_bind(high).push(")");
                }
                Gt | Sa => {
                    qb.push("i.value > ").push_bind(value);
                }
                Lt | Eb => {
                    qb.push("i.value < ").push_bind(value);
                }
                Ge => {
                    qb.push("i.value >= ").push_bind(value);
                }
                Le => {
                    qb.push("i.value <= ").push_bind(value);
                }
            }
        }

        fn push_filters(qb: &mut Builder, query: &$crate::store::SearchQuery) {
            qb.push(" FROM resources r WHERE r.resource_type = ").push_bind(query.resource_type.clone());
            qb.push(" AND r.deleted = FALSE");
            for group in &query.all_of {
                if group.is_empty() {
                    qb.push(" AND 1 = 0");
                    continue;
                }
                qb.push(" AND (");
                for (n, condition) in group.iter().enumerate() {
                    if n > 0 {
                        qb.push(" OR ");
                    }
                    push_condition(qb, condition);
                }
                qb.push(")");
            }
        }

        async fn run_search(
            conn: &mut Conn,
            query: &$crate::store::SearchQuery,
        ) -> $crate::store::StoreResult<$crate::store::SearchPage> {
            use sqlx::Row;
            let total = if query.with_total {
                let mut qb = Builder::new("SELECT COUNT(*) AS n");
                push_filters(&mut qb, query);
                let row = qb.build().fetch_one(&mut *conn).await?;
                Some(row.try_get::<i64, _>("n")? as u64)
            } else {
                None
            };
            let mut qb = Builder::new("SELECT ");
            for (n, column) in $crate::store::sql::VERSION_COLUMNS.split(", ").enumerate() {
                qb.push(if n == 0 { "r." } else { ", r." }).push(column);
            }
            push_filters(&mut qb, query);
            if let Some(after) = &query.after_id {
                qb.push(" AND r.id > ").push_bind(after.clone());
            }
            qb.push(" ORDER BY r.id LIMIT ").push_bind(query.count as i64 + 1);
            let rows = qb.build().fetch_all(&mut *conn).await?;
            let resources = rows.iter().take(query.count).map(decode_version).collect::<Result<Vec<_>, _>>()?;
            Ok($crate::store::SearchPage { has_more: rows.len() > query.count, resources, total })
        }

        async fn write_version(
            conn: &mut Conn,
            version: &$crate::store::ResourceVersion,
            index: &$crate::store::IndexRows,
        ) -> $crate::store::StoreResult<()> {
            use $crate::store::sql::{classify, to_micros, INSERT_CHUNK, VERSION_COLUMNS};
            let micros = to_micros(version.last_updated);
            for table in ["resource_history", "resources"] {
                let mut sql = format!("INSERT INTO {table} ({VERSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)");
                if table == "resources" {
                    sql.push_str(
                        " ON CONFLICT (resource_type, id) DO UPDATE SET version = excluded.version, \
                         last_updated = excluded.last_updated, deleted = excluded.deleted, \
                         method = excluded.method, body = excluded.body",
                    );
                }
                sqlx::query(&sql)
                    .bind(&version.resource_type)
                    .bind(&version.id)
                    .bind(version.version)
                    .bind(micros)
                    .bind(version.deleted)
                    .bind(version.method.as_str())
                    .bind(version.body.to_vec())
                    .execute(&mut *conn)
                    .await
                    .map_err(classify)?;
            }
            // Version 1 has no earlier index rows to replace.
            let tables: &[&str] = if version.version == 1 { &[] } else { $crate::store::sql::INDEX_TABLES };
            for table in tables {
                sqlx::query(&format!("DELETE FROM {table} WHERE resource_type = $1 AND resource_id = $2"))
                    .bind(&version.resource_type)
                    .bind(&version.id)
                    .execute(&mut *conn)
                    .await?;
            }
            let owner = (version.resource_type.clone(), version.id.clone());
            macro_rules! insert_rows {
                ($rows:expr, $table:literal, $columns:literal, |$b:ident, $row:ident| $bind:block) => {
                    for chunk in $rows.chunks(INSERT_CHUNK) {
                        let mut qb = Builder::new(concat!("INSERT INTO ", $table, " (resource_type, resource_id, ", $columns, ") "));
                        qb.push_values(chunk, |mut $b, $row| {
                            $b.push_bind(owner.0.clone()).push_bind(owner.1.clone());
                            $bind
                        });
                        qb.build().execute(&mut *conn).await?;
                    }
                };
            }
            insert_rows!(index.tokens, "search_token", "param, system, code", |b, row| {
                b.push_bind(row.param.clone()).push_bind(row.system.clone()).push_bind(row.code.clone());
            });
            insert_rows!(index.strings, "search_string", "param, normalized, exact", |b, row| {
                b.push_bind(row.param.clone()).push_bind(row.normalized.clone()).push_bind(row.exact.clone());
            });
            insert_rows!(index.references, "search_reference", "param, target_type, target_id, target_url", |b, row| {
                b.push_bind(row.param.clone())
                    .push_bind(row.target_type.clone())
                    .push_bind(row.target_id.clone())
                    .push_bind(row.target_url.clone());
            });
            insert_rows!(index.uris, "search_uri", "param, value", |b, row| {
                b.push_bind(row.param.clone()).push_bind(row.value.clone());
            });
            insert_rows!(index.dates, "search_date", "param, low, high", |b, row| {
                b.push_bind(row.param.clone()).push_bind(row.low).push_bind(row.high);
            });
            insert_rows!(index.numbers, "search_number", "param, value", |b, row| {
                b.push_bind(row.param.clone()).push_bind(row.value);
            });
            insert_rows!(index.quantities, "search_quantity", "param, value, system, code, unit", |b, row| {
                b.push_bind(row.param.clone())
                    .push_bind(row.value)
                    .push_bind(row.system.clone())
                    .push_bind(row.code.clone())
                    .push_bind(row.unit.clone());
            });
            Ok(())
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            async fn read(&self, resource_type: &str, id: &str) -> $crate::store::StoreResult<Option<$crate::store::ResourceVersion>> {
                let mut conn = self.readers.acquire().await?;
                fetch_current(&mut conn, resource_type, id, "").await
            }

            async fn vread(
                &self,
                resource_type: &str,
                id: &str,
                version: i64,
            ) -> $crate::store::StoreResult<Option<$crate::store::ResourceVersion>> {
                let mut conn = self.readers.acquire().await?;
                fetch_version(&mut conn, resource_type, id, version).await
            }

            async fn history(&self, query: &$crate::store::HistoryQuery) -> $crate::store::StoreResult<$crate::store::HistoryPage> {
                let mut conn = self.readers.acquire().await?;
                fetch_history(&mut conn, query).await
            }

            async fn search(&self, query: &$crate::store::SearchQuery) -> $crate::store::StoreResult<$crate::store::SearchPage> {
                let mut conn = self.readers.acquire().await?;
                run_search(&mut conn, query).await
            }

            async fn begin(&self) -> $crate::store::StoreResult<Box<dyn $crate::store::StoreTx>> {
                Ok(Box::new($tx(self.writers.begin().await?)))
            }

            async fn ping(&self) -> $crate::store::StoreResult<()> {
                sqlx::query("SELECT 1").execute(&self.readers).await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::StoreTx for $tx {
            async fn current(&mut self, resource_type: &str, id: &str) -> $crate::store::StoreResult<Option<$crate::store::ResourceVersion>> {
                fetch_current(&mut self.0, resource_type, id, $lock).await
            }

            async fn vread(
                &mut self,
                resource_type: &str,
                id: &str,
                version: i64,
            ) -> $crate::store::StoreResult<Option<$crate::store::ResourceVersion>> {
                fetch_version(&mut self.0, resource_type, id, version).await
            }

            async fn search(&mut self, query: &$crate::store::SearchQuery) -> $crate::store::StoreResult<$crate::store::SearchPage> {
                run_search(&mut self.0, query).await
            }

            async fn write(
                &mut self,
                version: &$crate::store::ResourceVersion,
                index: &$crate::store::IndexRows,
            ) -> $crate::store::StoreResult<()> {
                write_version(&mut self.0, version, index).await
            }

            async fn commit(self: Box<Self>) -> $crate::store::StoreResult<()> {
                self.0.commit().await.map_err($crate::store::sql::classify)
            }
        }
    };
}

pub(super) use sql_store;
