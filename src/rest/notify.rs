//! Delivery of subscription notifications (ADR 16). Every node runs delivery workers: each
//! claims, under a lease, a few subscriptions with something due (a handshake, undelivered
//! events, a heartbeat) with one statement, sends to them at once, and records how far each got
//! (those that ended together in one transaction: on SQLite's single writer, two statements per
//! notification kept the deliveries behind the writes). Events are read back under the
//! subscriber's access as it stands now: a resource the subscriber can no longer read is
//! counted but not shown, and a subscriber whose authorization has ended gets nothing more.
//!
//! A failed attempt is tried again after 5 s, 30 s, 2 min, 10 min, then every hour; after
//! [`ERROR_AFTER`] failures in a row the subscription's status becomes `error` (it keeps
//! collecting events and is tried hourly; a success makes it `active` again).

use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;

use super::FhirService;
use crate::auth::scope::Permission;
use crate::auth::Access;
use crate::model::resource::new_id;
use crate::store::subscription::{Delivery, DeliveryEnd, StoredEvent};
use crate::store::WriteMethod;
use crate::subscriptions::notification::{self, Event, Focus, Kind, Status};
use crate::subscriptions::{Channel, Payload, SubscriptionRequest};

/// How long a claimed delivery stays with its worker.
const LEASE: Duration = Duration::from_secs(120);

/// How often an idle worker looks for deliveries due because of other nodes' writes.
const POLL: Duration = Duration::from_millis(500);

/// What a write that recorded events, or changed a Subscription, wakes once it has committed.
#[derive(Default)]
pub(super) struct DeliveriesDue {
    /// This node's delivery workers (one of them).
    pub workers: tokio::sync::Notify,
    /// Every websocket session of this node: a counter they watch.
    pub sessions: tokio::sync::watch::Sender<u64>,
}

impl super::workflow::Wake for DeliveriesDue {
    fn wake(&self) {
        self.workers.notify_one();
        self.sessions.send_modify(|count| *count = count.wrapping_add(1));
    }
}

/// Failed attempts in a row after which a subscription's status is `error`.
pub const ERROR_AFTER: i64 = 5;

/// How long to wait after the `failures`-th failure in a row.
pub fn retry_delay(failures: i64) -> Duration {
    const DELAYS: [u64; 5] = [5, 30, 120, 600, 3600];
    Duration::from_secs(DELAYS[(failures.max(1) as usize - 1).min(DELAYS.len() - 1)])
}

/// What one attempt did.
struct Attempt {
    /// The newest event number delivered now.
    delivered: i64,
    /// Whether something reached the receiver.
    sent: bool,
    /// Why it failed, if it did.
    failure: Option<String>,
    /// The status the Subscription takes now, with the reason shown in `Subscription.error`.
    new_status: Option<(&'static str, Option<String>)>,
}

impl Attempt {
    fn nothing(delivery: &Delivery) -> Attempt {
        Attempt { delivered: delivery.delivered, sent: false, failure: None, new_status: None }
    }
}

/// Delivery workers per node.
const WORKERS: usize = 4;

/// Subscriptions a worker claims with one statement and delivers to at once.
const BATCH: usize = 8;

impl FhirService {
    /// This node's delivery workers, until the process ends.
    pub(super) async fn run_delivery_workers(self) {
        futures::future::join_all((0..WORKERS).map(|_| self.clone().run_deliveries())).await;
    }

    /// Claims due deliveries, [`BATCH`] at a time, and carries them out at once, until the
    /// process ends. What they ended with is recorded as they end, those that ended together in
    /// one transaction: a slow receiver holds up its own subscription only.
    async fn run_deliveries(self) {
        let owner = new_id();
        loop {
            let lease_until = OffsetDateTime::now_utc() + LEASE;
            let claimed = match self.store.claim_deliveries(&owner, lease_until, BATCH).await {
                Ok(claimed) => claimed,
                Err(error) => {
                    tracing::warn!(%error, "cannot claim subscription deliveries");
                    tokio::time::sleep(POLL).await;
                    continue;
                }
            };
            if claimed.is_empty() {
                let _ = tokio::time::timeout(POLL, self.deliveries_due.workers.notified()).await;
                continue;
            }
            // A commit wakes one worker: one that found work wakes the next, since there may
            // be more (else the others would sleep until their poll).
            self.deliveries_due.workers.notify_one();
            // Tasks of their own: each goes on while the ends of others are recorded (one
            // changing its subscription's status holds SQLite's writer until it is done).
            let mut running = tokio::task::JoinSet::new();
            for delivery in claimed {
                let service = self.clone();
                running.spawn(async move { service.deliver(delivery).await });
            }
            while let Some(first) = running.join_next().await {
                let mut ended: Vec<(String, DeliveryEnd)> = first.into_iter().collect();
                while let Some(next) = running.try_join_next() {
                    ended.extend(next);
                }
                self.record_ends(&owner, &ended).await;
            }
        }
    }

    /// Records how deliveries ended (tried again after a lost race: on PostgreSQL a deadlock
    /// with a writer's events is one).
    async fn record_ends(&self, owner: &str, ended: &[(String, DeliveryEnd)]) {
        let recorded =
            super::retrying(|| async { self.store.end_deliveries(owner, ended).await.map_err(super::store_error) });
        match recorded.await {
            Ok(lost) => lost.iter().for_each(|id| tracing::warn!(subscription = %id, "a delivery's lease ran out")),
            Err(error) => tracing::warn!(%error, "cannot record deliveries"),
        }
    }

    /// Carries out one claimed delivery and the status change it calls for (while the lease is
    /// held); how it ended.
    async fn deliver(&self, delivery: Delivery) -> (String, DeliveryEnd) {
        let attempt = match self.attempt(&delivery).await {
            Ok(attempt) => attempt,
            Err(error) => Attempt { failure: Some(error), ..Attempt::nothing(&delivery) },
        };
        let failures = if attempt.failure.is_some() { delivery.failures + 1 } else { 0 };
        let not_before = match failures {
            0 => OffsetDateTime::now_utc(),
            n => OffsetDateTime::now_utc() + retry_delay(n),
        };
        let mut new_status = attempt.new_status.clone();
        if new_status.is_none() && delivery.status == "active" && failures >= ERROR_AFTER {
            new_status = Some(("error", attempt.failure.clone()));
        }
        if let Some(failure) = &attempt.failure {
            tracing::info!(subscription = %delivery.subscription_id, failures, %failure, "a notification was not delivered");
        }
        // The status changes while the lease is held: no other worker takes the subscription
        // up (for a second handshake) before its new status is stored.
        if let Some((status, reason)) = new_status.filter(|(status, _)| *status != delivery.status) {
            if let Err(error) = self.set_subscription_status(&delivery.subscription_id, status, reason.as_deref()).await
            {
                tracing::warn!(%error, subscription = %delivery.subscription_id, "cannot change a subscription's status");
            }
        }
        let end = DeliveryEnd {
            delivered: attempt.delivered,
            failures,
            last_error: attempt.failure.clone(),
            not_before,
            sent: attempt.sent,
        };
        (delivery.subscription_id, end)
    }

    /// One attempt: the handshake, the next events, or a heartbeat.
    async fn attempt(&self, delivery: &Delivery) -> Result<Attempt, String> {
        let id = &delivery.subscription_id;
        let stored = self.store.read("Subscription", id).await.map_err(|e| e.to_string())?;
        let Some(resource) = stored.filter(|s| !s.deleted).and_then(|s| serde_json::from_slice::<Value>(&s.body).ok())
        else {
            return Ok(Attempt::nothing(delivery));
        };
        let request = match self.subscription_request(&resource) {
            Ok(request) => request,
            // It no longer passes the checks (its topic was retired, a flag changed): a failure,
            // so that it backs off rather than being claimed again at once.
            Err(problem) => {
                let reason = format!("{} ({})", problem.message, problem.expression);
                return Ok(Attempt {
                    failure: Some(reason.clone()),
                    new_status: Some(("error", Some(reason))),
                    ..Attempt::nothing(delivery)
                });
            }
        };
        let access = match &delivery.owner {
            None => Access::Open,
            Some(owner) => {
                let claims = serde_json::from_str(owner).map_err(|e| format!("unreadable subscriber: {e}"))?;
                match crate::auth::kept_access(self.store.as_ref(), &claims).await.map_err(|e| e.to_string())? {
                    Some(access) => access,
                    None => {
                        let reason =
                            "the subscriber's authorization has ended (revoked, signed out, or proxy access over)";
                        return Ok(Attempt {
                            new_status: Some(("off", Some(reason.into()))),
                            ..Attempt::nothing(delivery)
                        });
                    }
                }
            }
        };
        let status = |kind, status: &'static str, events_since_start| Status {
            base_url: &self.config.base_url,
            subscription_id: id,
            topic: &request.topic,
            status,
            kind,
            events_since_start,
            error: None,
        };
        if delivery.status == "requested" {
            let handshake = status(Kind::Handshake, "requested", 0);
            return Ok(match self.send(&request, &handshake, &[]).await {
                Ok(()) => Attempt { sent: true, new_status: Some(("active", None)), ..Attempt::nothing(delivery) },
                Err(error) => Attempt {
                    failure: Some(error.clone()),
                    new_status: Some(("error", Some(format!("the handshake failed: {error}")))),
                    ..Attempt::nothing(delivery)
                },
            });
        }
        let shown_status = if delivery.status == "error" { "error" } else { "active" };
        if delivery.events > delivery.delivered {
            let last = delivery.events.min(delivery.delivered + request.max_count as i64);
            let stored = self
                .store
                .subscription_events(id, delivery.delivered + 1, last, request.max_count)
                .await
                .map_err(|e| e.to_string())?;
            let events = self.shown_events(&access, &stored, request.payload).await.map_err(|e| e.to_string())?;
            let notification = status(Kind::EventNotification, shown_status, last);
            return Ok(match self.send(&request, &notification, &events).await {
                Ok(()) => Attempt {
                    delivered: last,
                    sent: true,
                    failure: None,
                    new_status: (delivery.status == "error").then_some(("active", None)),
                },
                Err(error) => Attempt { failure: Some(error), ..Attempt::nothing(delivery) },
            });
        }
        let heartbeat = status(Kind::Heartbeat, shown_status, delivery.events);
        Ok(match self.send(&request, &heartbeat, &[]).await {
            Ok(()) => Attempt { sent: true, ..Attempt::nothing(delivery) },
            Err(error) => Attempt { failure: Some(error), ..Attempt::nothing(delivery) },
        })
    }

    /// Stored events as `access` may see them now: the version of each event, when it may
    /// read it (with its content for `full-resource`), else the event without its resource.
    pub(super) async fn shown_events(
        &self,
        access: &Access,
        stored: &[StoredEvent],
        payload: Payload,
    ) -> Result<Vec<Event>, crate::model::FhirError> {
        let mut source = super::source::Source::Store(self.store.as_ref());
        let mut events = Vec::with_capacity(stored.len());
        for event in stored {
            let version = source.vread(&event.focus_type, &event.focus_id, event.focus_version).await?;
            let readable = match (&version, self.rule(access, Permission::Read, &event.focus_type)) {
                (Some(version), Ok(rule)) => self.reaches(&mut source, rule.as_deref(), version).await?,
                _ => false,
            };
            let focus = version.filter(|_| readable).map(|version| Focus {
                resource_type: event.focus_type.clone(),
                id: event.focus_id.clone(),
                method: version.method.as_str(),
                resource: (payload == Payload::FullResource && !version.deleted)
                    .then(|| {
                        let shown = crate::subscriptions::secrets::shown_body(&event.focus_type, &version.body);
                        serde_json::from_slice(&shown).ok()
                    })
                    .flatten(),
            });
            events.push(Event { number: event.number, recorded: event.recorded, focus });
        }
        Ok(events)
    }

    /// Sends one notification over the subscription's channel.
    async fn send(&self, request: &SubscriptionRequest, status: &Status<'_>, events: &[Event]) -> Result<(), String> {
        match &request.channel {
            Channel::RestHook { endpoint, headers } => {
                let body = notification_body(request, status, events)?;
                let mut post = self
                    .config
                    .subscriptions
                    .endpoints
                    .client()
                    .post(endpoint.clone())
                    .timeout(Duration::from_secs(request.timeout))
                    .header("content-type", request.content_type.as_str())
                    .body(body);
                for (name, value) in headers {
                    post = post.header(name.as_str(), value.as_str());
                }
                let response = post.send().await.map_err(|error| format!("{endpoint}: {}", without_url(&error)))?;
                match response.status() {
                    status if status.is_success() => Ok(()),
                    status => Err(format!("{endpoint} answered {status}")),
                }
            }
            Channel::Email { to } => {
                if status.kind != Kind::EventNotification {
                    return Ok(());
                }
                let index = self.subscription_index();
                let what = index.topic(&request.topic).and_then(|t| t.title.clone()).unwrap_or_default();
                let (subject, text) = crate::mail::notification_text(&what);
                self.config.mailer.send(to, &subject, text).await
            }
            // Activation only: each client that binds gets its handshake, then the events.
            Channel::Websocket => Ok(()),
        }
    }

    /// Makes a Subscription's status (and `error`) what delivery found, as the server's own
    /// write, and puts the change in force on this node.
    pub(super) async fn set_subscription_status(
        &self,
        id: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<(), crate::model::FhirError> {
        let mut tx = self.begin_server_work().await?;
        let current = tx.current("Subscription", id).await.map_err(super::store_error)?.filter(|v| !v.deleted);
        let Some(current) = current else {
            tx.rollback().await;
            return Ok(());
        };
        let mut resource: Value =
            serde_json::from_slice(&current.body).map_err(|_| crate::model::FhirError::internal())?;
        if resource["status"] == status && resource["error"].as_str() == reason {
            // Another worker or node made it so already.
            tx.rollback().await;
            return Ok(());
        }
        resource["status"] = Value::from(status);
        match reason {
            Some(reason) => resource["error"] = Value::from(reason),
            None => {
                if let Some(object) = resource.as_object_mut() {
                    object.remove("error");
                }
            }
        }
        let starting = status == "active";
        let content = resource.clone();
        let written = self
            .store_resource(tx.as_mut(), "Subscription", id, current.version + 1, resource, WriteMethod::Update)
            .await;
        if let Err(error) = written {
            tx.rollback().await;
            return Err(error);
        }
        if starting {
            self.starting_subscriptions.lock().await.insert(id.to_string(), content);
            self.load_subscriptions().await.map_err(super::store_error)?;
        }
        let committed = tx.commit().await.map_err(super::store_error);
        if starting {
            self.starting_subscriptions.lock().await.remove(id);
        }
        committed?;
        self.load_subscriptions().await.map_err(super::store_error)
    }
}

/// A notification Bundle in the subscription's content type.
pub(super) fn notification_body(
    request: &SubscriptionRequest,
    status: &Status<'_>,
    events: &[Event],
) -> Result<Vec<u8>, String> {
    let bundle = notification::bundle(status, events, request.payload);
    let json = serde_json::to_vec(&bundle).map_err(|e| e.to_string())?;
    Ok(match request.content_type.as_str() {
        "application/fhir+xml" => fhir_xml::json_to_xml(&json, false).map_err(|e| e.to_string())?.into_bytes(),
        _ => json,
    })
}

/// A reqwest error's text without the URL it repeats (the endpoint is named once).
fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "the request failed"
    };
    kind.to_string()
}
