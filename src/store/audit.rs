//! Storage of the audit log (ADR 19): AuditEvents in a table of their own (`audit_events`, each
//! event's record, rendered as BALP JSON when read: ADR 21), the patients each one is about (`audit_patients`, the patient's access
//! log), and the hash chain that seals them (`audit_chain` holds its head and the anchor that
//! retention leaves). Events are recorded by a write transaction ([`super::StoreTx::record_audit`]);
//! sealing and retention lock the chain's head row, so one runs at a time on any number of nodes.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::StoreResult;

/// An AuditEvent to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    pub id: String,
    pub recorded: OffsetDateTime,
    /// `C`, `R`, `U`, `D` or `E`.
    pub action: String,
    /// `0` (success), `4` (the client's failure), `8` (the server's).
    pub outcome: String,
    /// The requesting user (`Practitioner/1`), when a user signed in.
    pub agent: Option<String>,
    pub client_id: Option<String>,
    pub request_id: Option<String>,
    /// The patients (ids) whose data it disclosed or changed, each once.
    pub patients: Vec<String>,
    /// What is stored of the event (its record: `audit::balp::render` makes the AuditEvent of
    /// it); what the hash chain seals.
    pub body: Vec<u8>,
}

/// Which AuditEvents a search wants, in recording order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    /// Only events about one of these patients (`None`: any event).
    pub patients: Option<Vec<String>>,
    /// Recorded at or after (µs since the epoch).
    pub from: Option<i64>,
    /// Recorded before (µs since the epoch).
    pub until: Option<i64>,
    /// Any of these actions (empty: any).
    pub actions: Vec<String>,
    /// Any of these requesting users (empty: any).
    pub agents: Vec<String>,
    /// Newest first.
    pub newest_first: bool,
    /// Continue after this sequence number, in the order asked.
    pub after: Option<i64>,
    pub limit: usize,
}

/// A recorded AuditEvent.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAuditEvent {
    /// Where it stands in recording order (the paging cursor).
    pub seq: i64,
    pub body: Vec<u8>,
}

/// One sealed link of the chain, with the columns its body must agree with.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainLink {
    pub position: i64,
    pub body: Vec<u8>,
    pub hash: String,
    /// The `recorded` column (µs since the epoch).
    pub recorded: i64,
    /// The patients `audit_patients` lists for it, in order.
    pub patients: Vec<String>,
}

/// Where the chain starts (what retention left) and where it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainEnds {
    pub anchor_position: i64,
    pub anchor_hash: String,
    pub head_position: i64,
}

/// AuditEvents inserted by one statement (10 values each; SQLite takes at most 32,766).
pub const AUDIT_ROWS_PER_STATEMENT: usize = 500;

/// The hash of a link: of the hash before it, its position and its body.
pub type LinkHash = fn(previous: &str, position: i64, body: &[u8]) -> String;

/// The audit records outside a write transaction.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// One AuditEvent by id.
    async fn audit_event(&self, id: &str) -> StoreResult<Option<StoredAuditEvent>>;
    /// A page of AuditEvents (up to `query.limit`).
    async fn audit_events(&self, query: &AuditQuery) -> StoreResult<Vec<StoredAuditEvent>>;
    /// Links up to `limit` unsealed events, in recording order, into the chain; how many.
    async fn seal_audit(&self, limit: usize, link: LinkHash) -> StoreResult<usize>;
    /// The ends of the chain.
    async fn audit_chain_ends(&self) -> StoreResult<ChainEnds>;
    /// Up to `limit` sealed links after `position`, in order.
    async fn audit_chain(&self, after: i64, limit: usize) -> StoreResult<Vec<ChainLink>>;
    /// Removes the sealed events before the first one recorded at or after `before`, at most
    /// `limit`: a prefix of the chain, whose last hash becomes the anchor; how many it removed.
    async fn forget_audit(&self, before: OffsetDateTime, limit: usize) -> StoreResult<usize>;
    /// Records `events` sealed into the chain as they are inserted, in one transaction (a
    /// spool's batch, ADR 21), but those whose id is on record; how many it recorded.
    async fn record_sealed_audit(&self, events: &[NewAuditEvent], link: LinkHash) -> StoreResult<usize>;
    /// The database's own name, which the nodes' audit spools carry (ADR 21).
    async fn audit_database_id(&self) -> StoreResult<String>;
}

/// Implements [`AuditStore`] for a store type of [`super::sql::sql_store!`], and the insert of
/// its transaction type (which the `StoreTx` implementation calls). One SQL text serves both
/// databases.
macro_rules! audit_store {
    ($store:ident, $tx:ident, $db:ty) => {
        use $crate::store::audit::AUDIT_ROWS_PER_STATEMENT;

        fn decode_audit(
            row: &<$db as sqlx::Database>::Row,
        ) -> Result<$crate::store::audit::StoredAuditEvent, sqlx::Error> {
            use sqlx::Row;
            Ok($crate::store::audit::StoredAuditEvent { seq: row.try_get("seq")?, body: row.try_get("body")? })
        }

        /// Locks the chain's head (one sealer or retention at a time) and reads it.
        async fn lock_chain(
            conn: &mut <$db as sqlx::Database>::Connection,
        ) -> $crate::store::StoreResult<(i64, String, i64, String)> {
            use sqlx::Row;
            let row = sqlx::query(
                "UPDATE audit_chain SET head_pos = head_pos WHERE id = 1 \
                 RETURNING head_pos, head_hash, anchor_pos, anchor_hash",
            )
            .fetch_one(&mut *conn)
            .await
            .map_err($crate::store::sql::classify)?;
            Ok((
                row.try_get("head_pos")?,
                row.try_get("head_hash")?,
                row.try_get("anchor_pos")?,
                row.try_get("anchor_hash")?,
            ))
        }

        /// Moves the chain's head (locked by [`lock_chain`]) to `position` and `hash`, and commits.
        async fn commit_chain_head(
            mut tx: sqlx::Transaction<'_, $db>,
            position: i64,
            hash: &str,
        ) -> $crate::store::StoreResult<()> {
            sqlx::query("UPDATE audit_chain SET head_pos = $1, head_hash = $2 WHERE id = 1")
                .bind(position)
                .bind(hash)
                .execute(&mut *tx)
                .await?;
            tx.commit().await.map_err($crate::store::sql::classify)
        }

        /// Inserts `events` (at most [`AUDIT_ROWS_PER_STATEMENT`]), sealed at `links` (position
        /// and hash of each) when given, and their patients; an event whose id is on record is
        /// skipped. How many it inserted.
        async fn insert_audit(
            conn: &mut <$db as sqlx::Database>::Connection,
            events: &[&$crate::store::audit::NewAuditEvent],
            links: Option<&[(i64, String)]>,
        ) -> $crate::store::StoreResult<usize> {
            use sqlx::Row;
            let mut qb = sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO audit_events \
                 (id, recorded, action, outcome, agent, client_id, request_id, body, chain_pos, hash) ",
            );
            qb.push_values(events.iter().enumerate(), |mut row, (n, event)| {
                let link = links.map(|links| &links[n]);
                row.push_bind(event.id.clone())
                    .push_bind($crate::store::sql::to_micros(event.recorded))
                    .push_bind(event.action.clone())
                    .push_bind(event.outcome.clone())
                    .push_bind(event.agent.clone())
                    .push_bind(event.client_id.clone())
                    .push_bind(event.request_id.clone())
                    .push_bind(event.body.clone())
                    .push_bind(link.map(|(position, _)| *position))
                    .push_bind(link.map(|(_, hash)| hash.clone()));
            });
            qb.push(" ON CONFLICT (id) DO NOTHING RETURNING id, seq");
            let rows = qb.build().fetch_all(&mut *conn).await.map_err($crate::store::sql::classify)?;
            let mut seqs = std::collections::HashMap::with_capacity(rows.len());
            for row in &rows {
                seqs.insert(row.try_get::<String, _>("id")?, row.try_get::<i64, _>("seq")?);
            }
            let mut patients: Vec<(&str, i64)> = Vec::new();
            for event in events {
                if let Some(&seq) = seqs.get(&event.id) {
                    patients.extend(event.patients.iter().map(|patient| (patient.as_str(), seq)));
                }
            }
            for patients in patients.chunks(AUDIT_ROWS_PER_STATEMENT * 4) {
                let mut qb = sqlx::QueryBuilder::<$db>::new("INSERT INTO audit_patients (patient_id, seq) ");
                qb.push_values(patients, |mut row, (patient, seq)| {
                    row.push_bind(patient.to_string()).push_bind(*seq);
                });
                qb.build().execute(&mut *conn).await.map_err($crate::store::sql::classify)?;
            }
            Ok(seqs.len())
        }

        #[async_trait::async_trait]
        impl $crate::store::audit::AuditStore for $store {
            async fn audit_event(
                &self,
                id: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::audit::StoredAuditEvent>> {
                let row = sqlx::query("SELECT seq, body FROM audit_events WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.readers)
                    .await?;
                Ok(row.as_ref().map(decode_audit).transpose()?)
            }

            async fn audit_events(
                &self,
                query: &$crate::store::audit::AuditQuery,
            ) -> $crate::store::StoreResult<Vec<$crate::store::audit::StoredAuditEvent>> {
                // A patient's log is read along the (patient, seq) key: an event about several
                // of the patients asked comes once per patient, and is kept once below.
                let (mut qb, order_column) = match &query.patients {
                    Some(patients) if patients.is_empty() => return Ok(Vec::new()),
                    Some(patients) => {
                        let mut qb = sqlx::QueryBuilder::<$db>::new(
                            "SELECT e.seq, e.body FROM audit_patients p JOIN audit_events e ON e.seq = p.seq \
                             WHERE p.patient_id IN (",
                        );
                        let mut list = qb.separated(", ");
                        for patient in patients {
                            list.push_bind(patient.clone());
                        }
                        qb.push(")");
                        (qb, "p.seq")
                    }
                    None => (
                        sqlx::QueryBuilder::<$db>::new("SELECT e.seq, e.body FROM audit_events e WHERE 1 = 1"),
                        "e.seq",
                    ),
                };
                if let Some(from) = query.from {
                    qb.push(" AND e.recorded >= ").push_bind(from);
                }
                if let Some(until) = query.until {
                    qb.push(" AND e.recorded < ").push_bind(until);
                }
                for (column, values) in [("action", &query.actions), ("agent", &query.agents)] {
                    if values.is_empty() {
                        continue;
                    }
                    qb.push(format!(" AND e.{column} IN ("));
                    let mut list = qb.separated(", ");
                    for value in values {
                        list.push_bind(value.clone());
                    }
                    qb.push(")");
                }
                let (after, order) = if query.newest_first { (" < ", " DESC") } else { (" > ", "") };
                if let Some(cursor) = query.after {
                    qb.push(format!(" AND {order_column}")).push(after).push_bind(cursor);
                }
                // Enough rows for `limit` events however many of the patients each is about.
                let copies = query.patients.as_ref().map_or(1, Vec::len);
                qb.push(format!(" ORDER BY {order_column}")).push(order).push(" LIMIT ");
                qb.push_bind(query.limit.saturating_mul(copies) as i64);
                let rows = qb.build().fetch_all(&self.readers).await?;
                let mut events = rows.iter().map(decode_audit).collect::<Result<Vec<_>, _>>()?;
                events.dedup_by_key(|event| event.seq);
                events.truncate(query.limit);
                Ok(events)
            }

            async fn seal_audit(
                &self,
                limit: usize,
                link: $crate::store::audit::LinkHash,
            ) -> $crate::store::StoreResult<usize> {
                use sqlx::Row;
                // Asked of a reader first: an idle node takes no lock every second.
                let waiting: Option<i64> =
                    sqlx::query_scalar("SELECT seq FROM audit_events WHERE chain_pos IS NULL LIMIT 1")
                        .fetch_optional(&self.readers)
                        .await?;
                if waiting.is_none() {
                    return Ok(0);
                }
                let mut tx = self.writers.begin().await.map_err($crate::store::sql::classify)?;
                let (mut position, mut hash, _, _) = lock_chain(&mut tx).await?;
                let rows =
                    sqlx::query("SELECT seq, body FROM audit_events WHERE chain_pos IS NULL ORDER BY seq LIMIT $1")
                        .bind(limit as i64)
                        .fetch_all(&mut *tx)
                        .await?;
                for row in &rows {
                    let seq: i64 = row.try_get("seq")?;
                    let body: Vec<u8> = row.try_get("body")?;
                    position += 1;
                    hash = link(&hash, position, &body);
                    sqlx::query("UPDATE audit_events SET chain_pos = $1, hash = $2 WHERE seq = $3")
                        .bind(position)
                        .bind(&hash)
                        .bind(seq)
                        .execute(&mut *tx)
                        .await?;
                }
                commit_chain_head(tx, position, &hash).await?;
                Ok(rows.len())
            }

            async fn audit_chain_ends(&self) -> $crate::store::StoreResult<$crate::store::audit::ChainEnds> {
                use sqlx::Row;
                let row = sqlx::query("SELECT head_pos, anchor_pos, anchor_hash FROM audit_chain WHERE id = 1")
                    .fetch_one(&self.readers)
                    .await?;
                Ok($crate::store::audit::ChainEnds {
                    anchor_position: row.try_get("anchor_pos")?,
                    anchor_hash: row.try_get("anchor_hash")?,
                    head_position: row.try_get("head_pos")?,
                })
            }

            async fn audit_chain(
                &self,
                after: i64,
                limit: usize,
            ) -> $crate::store::StoreResult<Vec<$crate::store::audit::ChainLink>> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT seq, chain_pos, body, hash, recorded FROM audit_events WHERE chain_pos > $1 \
                     ORDER BY chain_pos LIMIT $2",
                )
                .bind(after)
                .bind(limit as i64)
                .fetch_all(&self.readers)
                .await?;
                let mut links = Vec::with_capacity(rows.len());
                let mut seqs = Vec::with_capacity(rows.len());
                for row in &rows {
                    seqs.push(row.try_get::<i64, _>("seq")?);
                    links.push($crate::store::audit::ChainLink {
                        position: row.try_get("chain_pos")?,
                        body: row.try_get("body")?,
                        hash: row.try_get::<Option<String>, _>("hash")?.unwrap_or_default(),
                        recorded: row.try_get("recorded")?,
                        patients: Vec::new(),
                    });
                }
                let (Some(low), Some(high)) = (seqs.iter().min(), seqs.iter().max()) else { return Ok(links) };
                let patient_rows = sqlx::query(
                    "SELECT seq, patient_id FROM audit_patients WHERE seq >= $1 AND seq <= $2 ORDER BY seq, patient_id",
                )
                .bind(low)
                .bind(high)
                .fetch_all(&self.readers)
                .await?;
                let mut by_seq: std::collections::HashMap<i64, Vec<String>> = std::collections::HashMap::new();
                for row in &patient_rows {
                    by_seq.entry(row.try_get("seq")?).or_default().push(row.try_get("patient_id")?);
                }
                for (link, seq) in links.iter_mut().zip(&seqs) {
                    link.patients = by_seq.remove(seq).unwrap_or_default();
                    // In byte order whatever the database's collation.
                    link.patients.sort_unstable();
                }
                Ok(links)
            }

            async fn forget_audit(
                &self,
                before: time::OffsetDateTime,
                limit: usize,
            ) -> $crate::store::StoreResult<usize> {
                use sqlx::Row;
                let mut tx = self.writers.begin().await.map_err($crate::store::sql::classify)?;
                let (head, _, anchor, _) = lock_chain(&mut tx).await?;
                // The prefix ends before the first sealed event recorded at or after the cut
                // (a late or forged old `recorded` further on does not extend it), at most
                // `limit` past the anchor.
                let first_kept: Option<i64> = sqlx::query_scalar(
                    "SELECT MIN(chain_pos) FROM audit_events WHERE chain_pos IS NOT NULL AND recorded >= $1",
                )
                .bind($crate::store::sql::to_micros(before))
                .fetch_one(&mut *tx)
                .await?;
                let last = first_kept.map_or(head, |kept| kept - 1).min(anchor + limit as i64);
                if last <= anchor {
                    return Ok(0);
                }
                let row = sqlx::query("SELECT hash FROM audit_events WHERE chain_pos = $1")
                    .bind(last)
                    .fetch_one(&mut *tx)
                    .await?;
                let hash: String = row.try_get("hash")?;
                sqlx::query(
                    "DELETE FROM audit_patients WHERE seq IN (SELECT seq FROM audit_events WHERE chain_pos <= $1)",
                )
                .bind(last)
                .execute(&mut *tx)
                .await?;
                let removed = sqlx::query("DELETE FROM audit_events WHERE chain_pos <= $1")
                    .bind(last)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query("UPDATE audit_chain SET anchor_pos = $1, anchor_hash = $2 WHERE id = 1")
                    .bind(last)
                    .bind(&hash)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await.map_err($crate::store::sql::classify)?;
                Ok(removed as usize)
            }

            async fn record_sealed_audit(
                &self,
                events: &[$crate::store::audit::NewAuditEvent],
                link: $crate::store::audit::LinkHash,
            ) -> $crate::store::StoreResult<usize> {
                use sqlx::Row;
                let mut tx = self.writers.begin().await.map_err($crate::store::sql::classify)?;
                // Locked first: a write from the start (SQLite waits for its writer lock rather
                // than failing on a snapshot gone stale), and what is on record is then all
                // that any other sealer committed.
                let (mut position, mut hash, _, _) = lock_chain(&mut tx).await?;
                // Those on record already (a spool committed again after a crash), or twice in
                // the batch, keep their one place in the chain: no position is given twice,
                // none left out.
                let mut known = std::collections::HashSet::new();
                for ids in events.chunks(AUDIT_ROWS_PER_STATEMENT) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT id FROM audit_events WHERE id IN (");
                    let mut list = qb.separated(", ");
                    for event in ids {
                        list.push_bind(event.id.clone());
                    }
                    qb.push(")");
                    for row in qb.build().fetch_all(&mut *tx).await? {
                        known.insert(row.try_get::<String, _>("id")?);
                    }
                }
                let fresh: Vec<&$crate::store::audit::NewAuditEvent> =
                    events.iter().filter(|event| known.insert(event.id.clone())).collect();
                if fresh.is_empty() {
                    return Ok(0);
                }
                for events in fresh.chunks(AUDIT_ROWS_PER_STATEMENT) {
                    let links: Vec<(i64, String)> = events
                        .iter()
                        .map(|event| {
                            position += 1;
                            hash = link(&hash, position, &event.body);
                            (position, hash.clone())
                        })
                        .collect();
                    let inserted = insert_audit(&mut *tx, events, Some(&links)).await?;
                    if inserted != links.len() {
                        // Committed meanwhile by another: the chain would have a gap.
                        return Err($crate::store::StoreError::Conflict);
                    }
                }
                commit_chain_head(tx, position, &hash).await?;
                Ok(fresh.len())
            }

            async fn audit_database_id(&self) -> $crate::store::StoreResult<String> {
                Ok(sqlx::query_scalar("SELECT database_id FROM audit_chain WHERE id = 1")
                    .fetch_one(&self.readers)
                    .await?)
            }
        }

        impl $tx {
            /// Writes the AuditEvents [`StoreTx::record_audit`](crate::store::StoreTx::record_audit)
            /// buffered: the last writes of the transaction, at its commit. An event whose id is
            /// on record already is skipped: a spool committed again after a crash (ADR 21).
            async fn record_audit_rows(
                &mut self,
                events: &[$crate::store::audit::NewAuditEvent],
            ) -> $crate::store::StoreResult<()> {
                // In chunks that stay below SQLite's limit of bound values per statement.
                for events in events.chunks(AUDIT_ROWS_PER_STATEMENT) {
                    let conn = self.write_conn(true).await?;
                    let events: Vec<&$crate::store::audit::NewAuditEvent> = events.iter().collect();
                    insert_audit(conn, &events, None).await?;
                }
                Ok(())
            }
        }
    };
}

pub(super) use audit_store;
