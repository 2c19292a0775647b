//! Storage of topic-based subscriptions (ADR 16): each Subscription's delivery state
//! (`subscription_delivery`) and its numbered events (`subscription_events`). Events are
//! recorded by the write transaction that causes them (an outbox), so a committed change always
//! has its events and a rolled-back one never does; a worker of any node claims a subscription
//! with undelivered events under a lease, and sends them in order.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::StoreResult;

/// What the store keeps of a Subscription written in a transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// `requested`, `active`, `error` or `off`, as the resource says.
    pub status: String,
    /// `rest-hook`, `websocket` or `email`.
    pub channel: String,
    /// The access token claims (JSON) of the last token that wrote the Subscription: whose
    /// access its notifications pass. `None` (a write without a token: the server's own status
    /// change) keeps the one stored.
    pub owner: Option<String>,
    /// Seconds between heartbeats (0: none).
    pub heartbeat: i64,
}

/// An event a write caused for one subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub subscription: String,
    pub focus_type: String,
    pub focus_id: String,
    pub focus_version: i64,
}

/// A time-based event, recorded once per subscription and `key` (what it reminds of, for
/// which start or due date).
#[derive(Debug, Clone, PartialEq)]
pub struct Reminder {
    pub key: String,
    pub event: NewEvent,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub number: i64,
    pub focus_type: String,
    pub focus_id: String,
    pub focus_version: i64,
    pub recorded: OffsetDateTime,
}

/// A subscription's delivery state.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub subscription_id: String,
    pub status: String,
    pub channel: String,
    pub owner: Option<String>,
    /// The number of the newest event recorded.
    pub events: i64,
    /// The number of the newest event delivered.
    pub delivered: i64,
    /// Failed sends in a row.
    pub failures: i64,
    pub last_error: Option<String>,
    pub heartbeat: i64,
    pub last_sent: OffsetDateTime,
}

/// How a delivery attempt ended, recorded by the worker that holds the lease.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryEnd {
    /// The newest event number now delivered.
    pub delivered: i64,
    pub failures: i64,
    pub last_error: Option<String>,
    /// When the next attempt may start.
    pub not_before: OffsetDateTime,
    /// Whether something reached the receiver (a heartbeat counts from then).
    pub sent: bool,
}

/// The subscription records outside a write transaction.
#[async_trait]
pub trait SubscriptionStore: Send + Sync {
    /// Takes up to `limit` subscriptions that need a delivery (a handshake, undelivered
    /// events, a heartbeat) and are due, the longest waiting first, for `owner` until
    /// `lease_until`, in one statement. Concurrent workers never take the same one. A
    /// websocket subscription is taken only to be activated: its events go to the clients bound
    /// to it, by the node each is connected to.
    async fn claim_deliveries(
        &self,
        owner: &str,
        lease_until: OffsetDateTime,
        limit: usize,
    ) -> StoreResult<Vec<Delivery>>;
    /// Records how `owner`'s attempts ended, in one transaction, and lets the subscriptions
    /// go; the ids of those `owner` no longer held.
    async fn end_deliveries(&self, owner: &str, ends: &[(String, DeliveryEnd)]) -> StoreResult<Vec<String>>;
    /// Forgets the events recorded before `events_before`, delivered or not, and the reminder
    /// keys recorded before `reminders_before`.
    async fn forget(&self, events_before: OffsetDateTime, reminders_before: OffsetDateTime) -> StoreResult<()>;
    /// The delivery state of a subscription.
    async fn delivery(&self, id: &str) -> StoreResult<Option<Delivery>>;
    /// Every subscription's delivery state (to build the in-memory index of subscriptions).
    async fn deliveries(&self) -> StoreResult<Vec<Delivery>>;
    /// The events numbered `first..=last` of a subscription, in order, at most `limit`.
    async fn subscription_events(&self, id: &str, first: i64, last: i64, limit: usize)
        -> StoreResult<Vec<StoredEvent>>;
}

/// The columns of a delivery row, in the order [`subscription_store!`] decodes.
pub(super) const DELIVERY_COLUMNS: &str =
    "subscription_id, status, channel, owner, events, delivered, failures, last_error, heartbeat, last_sent";

/// Implements [`SubscriptionStore`] for a store type of [`super::sql::sql_store!`], and the
/// subscription statements of its transaction type (which the `StoreTx` implementation calls).
/// One SQL text serves both databases; `$skip_locked` ends the claim's inner SELECT.
macro_rules! subscription_store {
    ($store:ident, $tx:ident, $db:ty, $skip_locked:literal) => {
        fn decode_delivery(
            row: &<$db as sqlx::Database>::Row,
        ) -> Result<$crate::store::subscription::Delivery, sqlx::Error> {
            use sqlx::Row;
            Ok($crate::store::subscription::Delivery {
                subscription_id: row.try_get("subscription_id")?,
                status: row.try_get("status")?,
                channel: row.try_get("channel")?,
                owner: row.try_get("owner")?,
                events: row.try_get("events")?,
                delivered: row.try_get("delivered")?,
                failures: row.try_get("failures")?,
                last_error: row.try_get("last_error")?,
                heartbeat: row.try_get("heartbeat")?,
                last_sent: $crate::store::sql::from_micros(row.try_get("last_sent")?),
            })
        }

        #[async_trait::async_trait]
        impl $crate::store::SubscriptionStore for $store {
            async fn claim_deliveries(
                &self,
                owner: &str,
                lease_until: time::OffsetDateTime,
                limit: usize,
            ) -> $crate::store::StoreResult<Vec<$crate::store::subscription::Delivery>> {
                let now = $crate::store::sql::to_micros(time::OffsetDateTime::now_utc());
                let sql = format!(
                    "UPDATE subscription_delivery SET lease_owner = $1, lease_until = $2 WHERE subscription_id IN \
                     (SELECT subscription_id FROM subscription_delivery WHERE not_before <= $3 AND lease_until < $3 \
                     AND (status = 'requested' OR (channel <> 'websocket' \
                     AND ((status IN ('active', 'error') AND events > delivered) \
                     OR (status = 'active' AND heartbeat > 0 AND last_sent + heartbeat * 1000000 <= $3)))) \
                     ORDER BY not_before LIMIT $4{}) RETURNING {}",
                    $skip_locked,
                    $crate::store::subscription::DELIVERY_COLUMNS
                );
                let rows = sqlx::query(&sql)
                    .bind(owner)
                    .bind($crate::store::sql::to_micros(lease_until))
                    .bind(now)
                    .bind(limit as i64)
                    .fetch_all(&self.writers)
                    .await?;
                Ok(rows.iter().map(decode_delivery).collect::<Result<Vec<_>, _>>()?)
            }

            async fn end_deliveries(
                &self,
                owner: &str,
                ends: &[(String, $crate::store::subscription::DeliveryEnd)],
            ) -> $crate::store::StoreResult<Vec<String>> {
                let now = $crate::store::sql::to_micros(time::OffsetDateTime::now_utc());
                // In subscription order, as writers recording events lock them.
                let mut ends: Vec<&(String, $crate::store::subscription::DeliveryEnd)> = ends.iter().collect();
                ends.sort_by(|a, b| a.0.cmp(&b.0));
                let mut tx = self.writers.begin().await.map_err($crate::store::sql::classify)?;
                let mut lost = Vec::new();
                for (id, end) in ends {
                    let sent = if end.sent { ", last_sent = $7" } else { "" };
                    let sql = format!(
                        "UPDATE subscription_delivery SET delivered = $1, failures = $2, last_error = $3, \
                         not_before = $4, lease_owner = NULL, lease_until = 0{sent} \
                         WHERE subscription_id = $5 AND lease_owner = $6"
                    );
                    let mut query = sqlx::query(&sql)
                        .bind(end.delivered)
                        .bind(end.failures)
                        .bind(end.last_error.as_deref())
                        .bind($crate::store::sql::to_micros(end.not_before))
                        .bind(id)
                        .bind(owner);
                    if end.sent {
                        query = query.bind(now);
                    }
                    if query.execute(&mut *tx).await.map_err($crate::store::sql::classify)?.rows_affected() == 0 {
                        lost.push(id.clone());
                    }
                }
                tx.commit().await.map_err($crate::store::sql::classify)?;
                Ok(lost)
            }

            async fn forget(
                &self,
                events_before: time::OffsetDateTime,
                reminders_before: time::OffsetDateTime,
            ) -> $crate::store::StoreResult<()> {
                for (table, before) in [("subscription_events", events_before), ("subscription_reminders", reminders_before)] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE recorded < $1"))
                        .bind($crate::store::sql::to_micros(before))
                        .execute(&self.writers)
                        .await?;
                }
                Ok(())
            }

            async fn delivery(
                &self,
                id: &str,
            ) -> $crate::store::StoreResult<Option<$crate::store::subscription::Delivery>> {
                let sql = format!(
                    "SELECT {} FROM subscription_delivery WHERE subscription_id = $1",
                    $crate::store::subscription::DELIVERY_COLUMNS
                );
                let row = sqlx::query(&sql).bind(id).fetch_optional(&self.readers).await?;
                Ok(row.as_ref().map(decode_delivery).transpose()?)
            }

            async fn deliveries(&self) -> $crate::store::StoreResult<Vec<$crate::store::subscription::Delivery>> {
                let sql = format!(
                    "SELECT {} FROM subscription_delivery ORDER BY subscription_id",
                    $crate::store::subscription::DELIVERY_COLUMNS
                );
                let rows = sqlx::query(&sql).fetch_all(&self.readers).await?;
                Ok(rows.iter().map(decode_delivery).collect::<Result<Vec<_>, _>>()?)
            }

            async fn subscription_events(
                &self,
                id: &str,
                first: i64,
                last: i64,
                limit: usize,
            ) -> $crate::store::StoreResult<Vec<$crate::store::subscription::StoredEvent>> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT number, focus_type, focus_id, focus_version, recorded FROM subscription_events \
                     WHERE subscription_id = $1 AND number >= $2 AND number <= $3 ORDER BY number LIMIT $4",
                )
                .bind(id)
                .bind(first)
                .bind(last)
                .bind(limit as i64)
                .fetch_all(&self.readers)
                .await?;
                let decode = |row: &<$db as sqlx::Database>::Row| -> Result<_, sqlx::Error> {
                    Ok($crate::store::subscription::StoredEvent {
                        number: row.try_get("number")?,
                        focus_type: row.try_get("focus_type")?,
                        focus_id: row.try_get("focus_id")?,
                        focus_version: row.try_get("focus_version")?,
                        recorded: $crate::store::sql::from_micros(row.try_get("recorded")?),
                    })
                };
                Ok(rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?)
            }
        }

        impl $tx {
            /// See [`StoreTx::register_subscription`](crate::store::StoreTx::register_subscription).
            async fn register_subscription_rows(
                &mut self,
                id: &str,
                registration: Option<&$crate::store::subscription::Registration>,
            ) -> $crate::store::StoreResult<()> {
                let conn = self.write_conn(false).await?;
                let Some(registration) = registration else {
                    sqlx::query("DELETE FROM subscription_events WHERE subscription_id = $1")
                        .bind(id)
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("DELETE FROM subscription_reminders WHERE subscription_id = $1")
                        .bind(id)
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("DELETE FROM subscription_delivery WHERE subscription_id = $1")
                        .bind(id)
                        .execute(&mut *conn)
                        .await?;
                    return Ok(());
                };
                // A (re)requested subscription is due for its handshake at once, with no
                // failures counted against it.
                sqlx::query(
                    "INSERT INTO subscription_delivery (subscription_id, status, channel, owner, heartbeat) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (subscription_id) DO UPDATE SET \
                     status = excluded.status, channel = excluded.channel, heartbeat = excluded.heartbeat, \
                     owner = COALESCE(excluded.owner, subscription_delivery.owner), \
                     failures = CASE WHEN excluded.status = 'requested' THEN 0 ELSE subscription_delivery.failures END, \
                     not_before = CASE WHEN excluded.status = 'requested' THEN 0 ELSE subscription_delivery.not_before END",
                )
                .bind(id)
                .bind(&registration.status)
                .bind(&registration.channel)
                .bind(registration.owner.as_deref())
                .bind(registration.heartbeat)
                .execute(&mut *conn)
                .await
                .map_err($crate::store::sql::classify)?;
                Ok(())
            }

            /// See [`StoreTx::record_reminders`](crate::store::StoreTx::record_reminders).
            async fn record_reminder_rows(
                &mut self,
                reminders: &[$crate::store::subscription::Reminder],
            ) -> $crate::store::StoreResult<usize> {
                let now = $crate::store::sql::to_micros(time::OffsetDateTime::now_utc());
                // In key order, so that concurrent scans queue rather than deadlock: one
                // inserting a key another holds waits for that one's commit, then inserts nothing.
                let mut ordered: Vec<&$crate::store::subscription::Reminder> = reminders.iter().collect();
                ordered.sort_by(|a, b| (&a.event.subscription, &a.key).cmp(&(&b.event.subscription, &b.key)));
                let mut new = Vec::new();
                for reminder in ordered {
                    let conn = self.write_conn(false).await?;
                    // Only for a subscription that records events (one not yet active is
                    // reminded once it is), whose delivery row this locks first: a status
                    // change cannot come between the key and the event.
                    let records = sqlx::query(
                        "UPDATE subscription_delivery SET events = events \
                         WHERE subscription_id = $1 AND status IN ('active', 'error')",
                    )
                    .bind(&reminder.event.subscription)
                    .execute(&mut *conn)
                    .await
                    .map_err($crate::store::sql::classify)?
                    .rows_affected();
                    if records == 0 {
                        continue;
                    }
                    let inserted = sqlx::query(
                        "INSERT INTO subscription_reminders (subscription_id, reminder, recorded) VALUES ($1, $2, $3) \
                         ON CONFLICT (subscription_id, reminder) DO NOTHING",
                    )
                    .bind(&reminder.event.subscription)
                    .bind(&reminder.key)
                    .bind(now)
                    .execute(&mut *conn)
                    .await
                    .map_err($crate::store::sql::classify)?
                    .rows_affected();
                    if inserted == 1 {
                        new.push(reminder.event.clone());
                    }
                }
                self.record_event_rows(&new).await
            }

            /// See [`StoreTx::record_events`](crate::store::StoreTx::record_events).
            async fn record_event_rows(
                &mut self,
                events: &[$crate::store::subscription::NewEvent],
            ) -> $crate::store::StoreResult<usize> {
                use sqlx::Row;
                let mut by_subscription: std::collections::BTreeMap<&str, Vec<&$crate::store::subscription::NewEvent>> =
                    std::collections::BTreeMap::new();
                for event in events {
                    by_subscription.entry(&event.subscription).or_default().push(event);
                }
                let now = $crate::store::sql::to_micros(time::OffsetDateTime::now_utc());
                let conn = self.write_conn(false).await?;
                let mut recorded = 0;
                // In subscription order: concurrent writers take the counters' row locks in one
                // order, so they queue rather than deadlock.
                for (subscription, events) in by_subscription {
                    let row = sqlx::query(
                        "UPDATE subscription_delivery SET events = events + $1 \
                         WHERE subscription_id = $2 AND status IN ('active', 'error') RETURNING events",
                    )
                    .bind(events.len() as i64)
                    .bind(subscription)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err($crate::store::sql::classify)?;
                    let Some(row) = row else { continue };
                    let newest: i64 = row.try_get("events")?;
                    let first = newest - events.len() as i64 + 1;
                    for (number, event) in (first..).zip(events) {
                        sqlx::query(
                            "INSERT INTO subscription_events \
                             (subscription_id, number, focus_type, focus_id, focus_version, recorded) \
                             VALUES ($1, $2, $3, $4, $5, $6)",
                        )
                        .bind(subscription)
                        .bind(number)
                        .bind(&event.focus_type)
                        .bind(&event.focus_id)
                        .bind(event.focus_version)
                        .bind(now)
                        .execute(&mut *conn)
                        .await
                        .map_err($crate::store::sql::classify)?;
                        recorded += 1;
                    }
                }
                Ok(recorded)
            }
        }
    };
}

pub(super) use subscription_store;
