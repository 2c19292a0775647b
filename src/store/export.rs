//! What a bulk export needs of the store (ADR 22): a snapshot kept as data (a [`Mark`]) that any
//! node can read "as of", the versions and deletions a mark sees, the marks kept under the
//! `transactionTime`s exports gave, and export jobs that belong to a client.

use std::fmt;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{Job, ResourceVersion, StoreResult};

/// A snapshot of the committed versions, as a value stored with a job: which versions an export
/// sees, whichever node reads and however long after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// SQLite: the highest `resource_history.seq` committed (one writer assigns `seq` in commit
    /// order, and a group commits its members together, so the mark sees exactly `seq <= n`).
    Seq(i64),
    /// PostgreSQL: `pg_current_snapshot()` as text (`xmin:xmax:xip,…`); a version is seen when
    /// `pg_visible_in_snapshot` says so of the transaction that wrote it.
    Snapshot(String),
}

impl Mark {
    /// Reads a mark written by its `Display`.
    pub fn parse(text: &str) -> Option<Mark> {
        match text.split_once(':')? {
            ("seq", n) => n.parse().ok().map(Mark::Seq),
            ("snapshot", snapshot) if is_snapshot(snapshot) => Some(Mark::Snapshot(snapshot.to_string())),
            _ => None,
        }
    }
}

/// Whether `text` has the form of a `pg_snapshot` (`xmin:xmax:xip,…`).
fn is_snapshot(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    matches!(parts.as_slice(), [xmin, xmax, xip]
        if [xmin, xmax].iter().all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            && xip.bytes().all(|b| b.is_ascii_digit() || b == b','))
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mark::Seq(n) => write!(f, "seq:{n}"),
            Mark::Snapshot(snapshot) => write!(f, "snapshot:{snapshot}"),
        }
    }
}

/// A search as a bulk export's mark sees it: every current row it matches (deleted ones
/// included: the mark may have seen them alive), each with the version the mark saw of it
/// ([`crate::store::SearchPage::marked`]). Most rows are as the mark saw them; the few written
/// after it are replaced by the export with that version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsOf {
    pub mark: Mark,
    /// Leaves out rows that cannot have changed since (their current version is no later).
    pub since: Option<Since>,
}

/// Since when an export lists changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Not seen by this earlier mark.
    Mark(Mark),
    /// Last updated after this instant.
    Time(OffsetDateTime),
}

/// The store's part of bulk export.
#[async_trait]
pub trait ExportStore: Send + Sync {
    /// A mark of everything committed now.
    async fn take_mark(&self) -> StoreResult<Mark>;
    /// Keeps `mark` under `at` (an export's `transactionTime`), unless another export's mark
    /// is kept there already (that one stays).
    async fn keep_mark(&self, at: OffsetDateTime, mark: &Mark) -> StoreResult<()>;
    /// The mark kept at `at` or within the millisecond after it: a client that truncated a
    /// `transactionTime` to milliseconds still gets exactly the changes since.
    async fn mark_at(&self, at: OffsetDateTime) -> StoreResult<Option<Mark>>;
    /// Forgets the marks kept under instants before `before`; how many.
    async fn forget_marks(&self, before: OffsetDateTime) -> StoreResult<u64>;
    /// Whether a version of `resource_type` may have been written after `mark`: when not, its
    /// current rows are all as the mark saw them, and an export reads them without asking
    /// (SQLite: the type's highest history `seq`; PostgreSQL cannot tell as cheaply, and says
    /// yes).
    async fn written_since(&self, resource_type: &str, mark: &Mark) -> StoreResult<bool>;
    /// The latest version of a resource that `mark` sees (a deletion included), with its
    /// content.
    async fn version_as_of(&self, resource_type: &str, id: &str, mark: &Mark) -> StoreResult<Option<ResourceVersion>>;
    /// Up to `limit` resources of `resource_type`, in id order after `after`, whose latest
    /// version `mark` sees is a deletion made since `since`: those deletion versions.
    async fn deletions(
        &self,
        resource_type: &str,
        mark: &Mark,
        since: &Since,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ResourceVersion>>;
    /// Queues a job for `client` unless it has `limit` of that kind queued or running already
    /// (`None` then). Two nodes queueing at the same instant may both pass: the limit protects
    /// the server from one client, it is not a lock.
    async fn enqueue_client_job(
        &self,
        kind: &str,
        parameters: &str,
        client: &str,
        limit: u32,
    ) -> StoreResult<Option<Job>>;
    /// Deletes a job that has ended; `false` when there was none.
    async fn delete_job(&self, id: i64) -> StoreResult<bool>;
}

/// Implements [`ExportStore`] for a store type of [`super::sql::sql_store!`], in the module that
/// invoked it (its `readers` and `writers`, `decode_version`, `decode_job`, `inflate_one` and
/// `bind_args`).
macro_rules! export_store {
    ($store:ident, $dialect:expr) => {
        #[async_trait::async_trait]
        impl $crate::store::ExportStore for $store {
            async fn take_mark(&self) -> $crate::store::StoreResult<$crate::store::Mark> {
                let text: String =
                    sqlx::query_scalar($crate::store::planner::take_mark($dialect)).fetch_one(&self.readers).await?;
                $crate::store::Mark::parse(&text).ok_or_else(|| {
                    $crate::store::StoreError::from(sqlx::Error::Decode(format!("'{text}' is no mark").into()))
                })
            }

            async fn keep_mark(
                &self,
                at: time::OffsetDateTime,
                mark: &$crate::store::Mark,
            ) -> $crate::store::StoreResult<()> {
                sqlx::query(
                    "INSERT INTO export_marks (transaction_time, mark) VALUES ($1, $2) \
                     ON CONFLICT (transaction_time) DO NOTHING",
                )
                .bind($crate::store::sql::to_micros(at))
                .bind(mark.to_string())
                .execute(&self.writers)
                .await?;
                Ok(())
            }

            async fn mark_at(
                &self,
                at: time::OffsetDateTime,
            ) -> $crate::store::StoreResult<Option<$crate::store::Mark>> {
                let text: Option<String> = sqlx::query_scalar(
                    "SELECT mark FROM export_marks WHERE transaction_time <= $1 AND transaction_time >= $2 \
                     ORDER BY transaction_time LIMIT 1",
                )
                .bind($crate::store::sql::to_micros(at + time::Duration::microseconds(999)))
                .bind($crate::store::sql::to_micros(at))
                .fetch_optional(&self.readers)
                .await?;
                Ok(text.as_deref().and_then($crate::store::Mark::parse))
            }

            async fn forget_marks(&self, before: time::OffsetDateTime) -> $crate::store::StoreResult<u64> {
                let done = sqlx::query("DELETE FROM export_marks WHERE transaction_time < $1")
                    .bind($crate::store::sql::to_micros(before))
                    .execute(&self.writers)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn written_since(
                &self,
                resource_type: &str,
                mark: &$crate::store::Mark,
            ) -> $crate::store::StoreResult<bool> {
                let $crate::store::Mark::Seq(seq) = mark else { return Ok(true) };
                let last: i64 =
                    sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM resource_history WHERE resource_type = $1")
                        .bind(resource_type)
                        .fetch_one(&self.readers)
                        .await?;
                Ok(last > *seq)
            }

            async fn version_as_of(
                &self,
                resource_type: &str,
                id: &str,
                mark: &$crate::store::Mark,
            ) -> $crate::store::StoreResult<Option<$crate::store::ResourceVersion>> {
                let mut conn = self.readers.acquire().await?;
                let sql = $crate::store::planner::version_as_of(resource_type, id, mark);
                let row = bind_args(&sql).fetch_optional(&mut *conn).await?;
                let found = row.as_ref().map(decode_version).transpose()?;
                inflate_one(&mut conn, found).await
            }

            async fn deletions(
                &self,
                resource_type: &str,
                mark: &$crate::store::Mark,
                since: &$crate::store::Since,
                after: Option<&str>,
                limit: usize,
            ) -> $crate::store::StoreResult<Vec<$crate::store::ResourceVersion>> {
                let sql = $crate::store::planner::deletions(resource_type, mark, since, after, limit);
                let rows = bind_args(&sql).fetch_all(&self.readers).await?;
                Ok(rows.iter().map(decode_version).collect::<Result<Vec<_>, _>>()?)
            }

            async fn enqueue_client_job(
                &self,
                kind: &str,
                parameters: &str,
                client: &str,
                limit: u32,
            ) -> $crate::store::StoreResult<Option<$crate::store::Job>> {
                let now = $crate::store::sql::to_micros(time::OffsetDateTime::now_utc());
                let sql = format!(
                    "INSERT INTO jobs (kind, parameters, status, processed, created, updated, not_before, client) \
                     SELECT $1, $2, 'queued', 0, $3, $3, 0, $4 WHERE (SELECT COUNT(*) FROM jobs \
                     WHERE client = $4 AND kind = $1 AND status IN ('queued', 'running')) < $5 RETURNING {}",
                    $crate::store::sql::JOB_COLUMNS
                );
                let row = sqlx::query(&sql)
                    .bind(kind)
                    .bind(parameters)
                    .bind(now)
                    .bind(client)
                    .bind(i64::from(limit))
                    .fetch_optional(&self.writers)
                    .await?;
                Ok(row.as_ref().map(decode_job).transpose()?)
            }

            async fn delete_job(&self, id: i64) -> $crate::store::StoreResult<bool> {
                let done = sqlx::query("DELETE FROM jobs WHERE id = $1 AND status IN ('done', 'failed', 'cancelled')")
                    .bind(id)
                    .execute(&self.writers)
                    .await?;
                Ok(done.rows_affected() == 1)
            }
        }
    };
}
pub(super) use export_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_refuse_what_is_not_one() {
        for mark in
            [Mark::Seq(0), Mark::Seq(42), Mark::Snapshot("100:105:101,103".into()), Mark::Snapshot("7:7:".into())]
        {
            assert_eq!(Mark::parse(&mark.to_string()), Some(mark));
        }
        for text in ["", "seq:", "seq:x", "snapshot:1:2", "snapshot:1:2:3'); DROP", "other:1"] {
            assert_eq!(Mark::parse(text), None, "{text}");
        }
    }
}
