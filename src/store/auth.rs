//! Storage of the authorization server's state: small JSON records by kind and key, with an
//! expiry (`auth_objects`). The `auth` layer owns what the records mean; this layer only keeps
//! them, and makes the operations that must be atomic across nodes atomic: an insert that fails
//! when a live record exists (a client assertion `jti` seen before) and a take that deletes
//! while it reads (an authorization code used once).

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::feed::KeySet;
use super::StoreResult;

/// The key-value records of the authorization server.
#[async_trait]
pub trait AuthStore: Send + Sync {
    /// Stores a record unless a live one has that kind and key; `false` when one had.
    async fn auth_insert(&self, kind: &str, key: &str, data: &str, expires: OffsetDateTime) -> StoreResult<bool>;
    /// Stores a record, replacing any with that kind and key.
    async fn auth_upsert(&self, kind: &str, key: &str, data: &str, expires: OffsetDateTime) -> StoreResult<()>;
    /// Stores a record like [`AuthStore::auth_upsert`] and announces it: every node's
    /// [`AuthStore::auth_watch`] set of the kind gets the key when the write commits.
    async fn auth_publish(&self, kind: &str, key: &str, data: &str, expires: OffsetDateTime) -> StoreResult<()>;
    /// The keys of `kind` mirrored in memory (published records; loaded from the database on
    /// the first call), for checks that must not cost a query each.
    async fn auth_watch(&self, kind: &str) -> StoreResult<Arc<KeySet>>;
    /// Counts one more under a kind and key and returns the new count, atomically (of concurrent
    /// callers each gets its own number); a count whose expiry has passed starts again at 1,
    /// expiring at `expires`.
    async fn auth_increment(&self, kind: &str, key: &str, expires: OffsetDateTime) -> StoreResult<i64>;
    /// A live record.
    async fn auth_get(&self, kind: &str, key: &str) -> StoreResult<Option<String>>;
    /// A live record, deleted as it is read: of concurrent takers exactly one gets it.
    async fn auth_take(&self, kind: &str, key: &str) -> StoreResult<Option<String>>;
    /// Deletes a record; `false` when there was none.
    async fn auth_delete(&self, kind: &str, key: &str) -> StoreResult<bool>;
    /// Every live record of a kind, as (key, data), in key order.
    async fn auth_list(&self, kind: &str) -> StoreResult<Vec<(String, String)>>;
    /// Deletes the records whose expiry has passed; returns how many.
    async fn auth_purge(&self) -> StoreResult<u64>;
}

/// Implements [`AuthStore`] for a store type of [`super::sql::sql_store!`] (with its `readers` and
/// `writers` pools, its feed and watched sets, and its `announce`). One SQL text serves both
/// databases.
macro_rules! auth_store {
    ($store:ident) => {
        #[async_trait::async_trait]
        impl $crate::store::AuthStore for $store {
            async fn auth_insert(
                &self,
                kind: &str,
                key: &str,
                data: &str,
                expires: time::OffsetDateTime,
            ) -> $crate::store::StoreResult<bool> {
                let now = $crate::store::sql::to_micros(time::OffsetDateTime::now_utc());
                let done = sqlx::query(
                    "INSERT INTO auth_objects (kind, key, data, expires) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data, expires = excluded.expires \
                     WHERE auth_objects.expires <= $5",
                )
                .bind(kind)
                .bind(key)
                .bind(data)
                .bind($crate::store::sql::to_micros(expires))
                .bind(now)
                .execute(&self.writers)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn auth_upsert(
                &self,
                kind: &str,
                key: &str,
                data: &str,
                expires: time::OffsetDateTime,
            ) -> $crate::store::StoreResult<()> {
                let mut conn = self.writers.acquire().await?;
                upsert_auth_object(&mut conn, kind, key, data, expires).await
            }

            async fn auth_publish(
                &self,
                kind: &str,
                key: &str,
                data: &str,
                expires: time::OffsetDateTime,
            ) -> $crate::store::StoreResult<()> {
                let mut tx = self.writers.begin().await?;
                upsert_auth_object(&mut tx, kind, key, data, expires).await?;
                if self.announces_by_record() {
                    // An administration command beside a server that has no change feed
                    // (SQLite): the server reads the announcement and mirrors the record.
                    let kept = time::OffsetDateTime::now_utc()
                        + time::Duration::seconds($crate::store::feed::ANNOUNCEMENT_SECONDS);
                    upsert_auth_object(&mut tx, &$crate::store::feed::announced(kind), key, "", kept).await?;
                }
                let announcement = self.feed.as_ref().map(|feed| feed.auth_record(kind, key));
                if let Some(announcement) = &announcement {
                    announce(&mut tx, $crate::store::feed::AUTH, &announcement.payloads).await?;
                }
                tx.commit().await?;
                self.watched.published(kind, key);
                if let Some(announcement) = announcement {
                    announcement.heard_back().await;
                }
                Ok(())
            }

            async fn auth_watch(
                &self,
                kind: &str,
            ) -> $crate::store::StoreResult<std::sync::Arc<$crate::store::feed::KeySet>> {
                let (set, new) = self.watched.register(kind);
                if let (true, Some(generation)) = (new, self.watched.online()) {
                    let keys = self.auth_list(kind).await?.into_iter().map(|(key, _)| key).collect();
                    self.watched.loaded(&set, keys, generation);
                }
                Ok(set)
            }

            async fn auth_increment(
                &self,
                kind: &str,
                key: &str,
                expires: time::OffsetDateTime,
            ) -> $crate::store::StoreResult<i64> {
                use sqlx::Row;
                let now = $crate::store::sql::to_micros(time::OffsetDateTime::now_utc());
                let row = sqlx::query(
                    "INSERT INTO auth_objects (kind, key, data, expires) VALUES ($1, $2, '1', $3) \
                     ON CONFLICT (kind, key) DO UPDATE SET \
                     data = CASE WHEN auth_objects.expires <= $4 THEN '1' \
                     ELSE CAST(CAST(auth_objects.data AS INTEGER) + 1 AS TEXT) END, \
                     expires = CASE WHEN auth_objects.expires <= $4 THEN excluded.expires \
                     ELSE auth_objects.expires END \
                     RETURNING data",
                )
                .bind(kind)
                .bind(key)
                .bind($crate::store::sql::to_micros(expires))
                .bind(now)
                .fetch_one(&self.writers)
                .await?;
                let count: String = row.try_get("data")?;
                Ok(count.parse().unwrap_or(i64::MAX))
            }

            async fn auth_get(&self, kind: &str, key: &str) -> $crate::store::StoreResult<Option<String>> {
                use sqlx::Row;
                let now = $crate::store::sql::to_micros(time::OffsetDateTime::now_utc());
                let row = sqlx::query("SELECT data FROM auth_objects WHERE kind = $1 AND key = $2 AND expires > $3")
                    .bind(kind)
                    .bind(key)
                    .bind(now)
                    .fetch_optional(&self.readers)
                    .await?;
                Ok(row.map(|row| row.try_get("data")).transpose()?)
            }

            async fn auth_take(&self, kind: &str, key: &str) -> $crate::store::StoreResult<Option<String>> {
                use sqlx::Row;
                let now = $crate::store::sql::to_micros(time::OffsetDateTime::now_utc());
                let row = sqlx::query(
                    "DELETE FROM auth_objects WHERE kind = $1 AND key = $2 AND expires > $3 RETURNING data",
                )
                .bind(kind)
                .bind(key)
                .bind(now)
                .fetch_optional(&self.writers)
                .await?;
                Ok(row.map(|row| row.try_get("data")).transpose()?)
            }

            async fn auth_delete(&self, kind: &str, key: &str) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query("DELETE FROM auth_objects WHERE kind = $1 AND key = $2")
                    .bind(kind)
                    .bind(key)
                    .execute(&self.writers)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn auth_list(&self, kind: &str) -> $crate::store::StoreResult<Vec<(String, String)>> {
                live_auth_objects(&mut *self.readers.acquire().await?, kind).await
            }

            async fn auth_purge(&self) -> $crate::store::StoreResult<u64> {
                let now = $crate::store::sql::to_micros(time::OffsetDateTime::now_utc());
                let done = sqlx::query("DELETE FROM auth_objects WHERE expires <= $1")
                    .bind(now)
                    .execute(&self.writers)
                    .await?;
                Ok(done.rows_affected())
            }
        }

        /// The records of `kind` that have not expired (key, data), by key.
        async fn live_auth_objects(conn: &mut Conn, kind: &str) -> $crate::store::StoreResult<Vec<(String, String)>> {
            use sqlx::Row;
            let now = $crate::store::sql::to_micros(time::OffsetDateTime::now_utc());
            let rows = sqlx::query("SELECT key, data FROM auth_objects WHERE kind = $1 AND expires > $2 ORDER BY key")
                .bind(kind)
                .bind(now)
                .fetch_all(conn)
                .await?;
            rows.iter().map(|row| Ok((row.try_get("key")?, row.try_get("data")?))).collect()
        }

        /// Stores a record, replacing any with that kind and key.
        async fn upsert_auth_object(
            conn: &mut Conn,
            kind: &str,
            key: &str,
            data: &str,
            expires: time::OffsetDateTime,
        ) -> $crate::store::StoreResult<()> {
            sqlx::query(
                "INSERT INTO auth_objects (kind, key, data, expires) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data, expires = excluded.expires",
            )
            .bind(kind)
            .bind(key)
            .bind(data)
            .bind($crate::store::sql::to_micros(expires))
            .execute(conn)
            .await?;
            Ok(())
        }
    };
}
pub(super) use auth_store;
