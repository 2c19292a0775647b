//! What time makes due: Subscriptions whose `end` has passed are turned off, events and
//! reminder keys older than they are kept are forgotten, and reminders are recorded (ADR 18).
//! Every node scans, each `reminder_scan`, for what is due to the subscribers of topics with
//! event triggers (built in: `appointment-reminder` and
//! `care-due`), in pages of [`PAGE`] resources, and records the events as a write's are
//! recorded (the outbox), each under a key the database keeps once per subscription: the node
//! that records a reminder first has it, any other finds the key taken and records nothing.
//!
//! A reminder's key names what is due and when (`appointment-start|Appointment/1|<start>`):
//! an appointment moved to a new start is reminded again, and one cancelled is no longer
//! found by the scan. Each subscriber gets only what its access reads at scan time and its
//! filters admit; delivery checks its access again, as for every event.

use std::time::Duration;

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{Date, OffsetDateTime};

use super::workflow::Wake;
use super::{store_error, FhirService};
use crate::model::FhirError;
use crate::search::index::index_resource;
use crate::store::subscription::{NewEvent, Reminder};
use crate::store::{ResourceVersion, SearchQuery};
use crate::subscriptions::{Judged, Subscriber, TimedEvent};

/// How long a reminder's key is kept: longer than any reminder can be due again (at most two
/// weeks ahead, and care for two days).
const REMINDERS_KEPT: time::Duration = time::Duration::days(30);

/// Resources read per batch of a scan.
const PAGE: usize = 200;

/// How many days late care is still reminded of (a day on which no node ran).
const CARE_DUE_GRACE_DAYS: i64 = 1;

/// LOINC "Date vaccine due": the `dateCriterion` of an ImmunizationRecommendation that says
/// when it is due.
const VACCINE_DUE: &str = "30980-7";

/// A moment something is due: for an appointment its start, for care its due date.
enum Due {
    Start(OffsetDateTime),
    Day(Date),
}

impl Due {
    /// Its part of the reminder key.
    fn key(&self) -> String {
        match self {
            Due::Start(start) => start.format(&Rfc3339).unwrap_or_default(),
            Due::Day(day) => day.to_string(),
        }
    }

    /// Whether it is due at `now` for a subscriber whose appointment lead is `lead`.
    fn is_due(&self, now: OffsetDateTime, lead: Duration) -> bool {
        match self {
            Due::Start(start) => *start > now && *start - lead <= now,
            Due::Day(day) => (now.date() - time::Duration::days(CARE_DUE_GRACE_DAYS)..=now.date()).contains(day),
        }
    }
}

impl FhirService {
    /// Ends the subscriptions whose end has passed, forgets old events and reminder keys, and
    /// records due reminders, every `reminder_scan`, until the process ends.
    pub(super) async fn run_reminders(self) {
        loop {
            let now = OffsetDateTime::now_utc();
            self.end_subscriptions(now).await;
            let events_before = now - self.config.subscriptions.event_retention;
            if let Err(error) = self.store.forget(events_before, now - REMINDERS_KEPT).await {
                tracing::warn!(%error, "cannot forget old subscription events and reminders");
            }
            if let Err(error) = self.scan_reminders(now).await {
                tracing::warn!(%error, "cannot scan for reminders");
            }
            tokio::time::sleep(self.config.subscriptions.reminder_scan).await;
        }
    }

    /// Turns off the subscriptions in force whose `end` has passed (they have had no events
    /// since: the write path and the scan leave them out).
    async fn end_subscriptions(&self, now: OffsetDateTime) {
        let index = self.subscription_index();
        for subscriber in index.subscribers().filter(|s| s.request.ended(now)) {
            let reason = Some("its end (Subscription.end) has passed");
            if let Err(error) = self.set_subscription_status(&subscriber.id, "off", reason).await {
                tracing::warn!(%error, subscription = %subscriber.id, "cannot turn off an ended subscription");
            }
        }
    }

    /// Records the reminders due at `now`; how many.
    async fn scan_reminders(&self, now: OffsetDateTime) -> Result<usize, FhirError> {
        let index = self.subscription_index();
        let mut recorded = 0;
        for event in TimedEvent::ALL {
            let raising = index.raising(event);
            for resource_type in event.resource_types() {
                let subscribers: Vec<&Subscriber> = raising
                    .iter()
                    .filter(|(topic, _)| topic.raises(event, resource_type))
                    .flat_map(|(_, subscribers)| subscribers.iter().map(|s| s.as_ref()))
                    .collect();
                if !subscribers.is_empty() {
                    recorded += self.scan_type(event, resource_type, &subscribers, now).await?;
                }
            }
        }
        Ok(recorded)
    }

    /// Scans the resources of one type that may be due, page by page.
    async fn scan_type(
        &self,
        event: TimedEvent,
        resource_type: &str,
        subscribers: &[&Subscriber],
        now: OffsetDateTime,
    ) -> Result<usize, FhirError> {
        let longest_lead = subscribers.iter().map(|s| self.reminder_lead(s)).max().unwrap_or_default();
        let mut query = SearchQuery::new(resource_type, PAGE);
        for (name, value) in candidates(resource_type, now, longest_lead) {
            query.all_of.push(self.criterion(resource_type, name, &value)?);
        }
        let mut recorded = 0;
        loop {
            let page = self.store.search(&query).await.map_err(store_error)?;
            let reminders: Vec<Reminder> =
                page.resources.iter().flat_map(|version| self.reminders_of(event, version, subscribers, now)).collect();
            recorded += self.record_reminders(&reminders).await?;
            match page.next {
                Some(next) => query.cursor = Some(next),
                None => return Ok(recorded),
            }
        }
    }

    /// The reminders `version` is due for at `now`, per subscriber that reads it and whose
    /// filters admit it.
    fn reminders_of(
        &self,
        event: TimedEvent,
        version: &ResourceVersion,
        subscribers: &[&Subscriber],
        now: OffsetDateTime,
    ) -> Vec<Reminder> {
        let Ok(resource) = serde_json::from_slice::<Value>(&version.body) else { return Vec::new() };
        let dues = due(&version.resource_type, &resource);
        if dues.is_empty() {
            return Vec::new();
        }
        let rows = index_resource(&self.registry(), &resource, &self.config.base_url);
        let judged =
            Judged { resource_type: &version.resource_type, id: &version.id, resource: &resource, rows: &rows };
        let mut reminders = Vec::new();
        for subscriber in subscribers {
            if subscriber.request.ended(now)
                || !subscriber.request.admits(&judged)
                || !self.subscriber_reads(subscriber, version)
            {
                continue;
            }
            let lead = self.reminder_lead(subscriber);
            for due in dues.iter().filter(|due| due.is_due(now, lead)) {
                reminders.push(Reminder {
                    key: format!("{}|{}/{}|{}", event.code(), version.resource_type, version.id, due.key()),
                    event: NewEvent {
                        subscription: subscriber.id.clone(),
                        focus_type: version.resource_type.clone(),
                        focus_id: version.id.clone(),
                        focus_version: version.version,
                    },
                });
            }
        }
        reminders
    }

    /// How long before an appointment starts `subscriber` is reminded of it.
    fn reminder_lead(&self, subscriber: &Subscriber) -> Duration {
        match subscriber.request.reminder_hours {
            Some(hours) => Duration::from_secs(hours * 3600),
            None => self.config.subscriptions.appointment_reminder_lead,
        }
    }

    /// Records reminders in a transaction of their own (a write that lost a race with
    /// another node's scan is tried again, and then finds the keys taken); wakes the delivery
    /// workers when one was new.
    async fn record_reminders(&self, reminders: &[Reminder]) -> Result<usize, FhirError> {
        if reminders.is_empty() {
            return Ok(0);
        }
        let recorded = super::retrying(|| async {
            let mut tx = self.store.begin().await.map_err(store_error)?;
            let recorded = match tx.record_reminders(reminders).await {
                Ok(recorded) => tx.commit().await.map(|()| recorded),
                Err(error) => {
                    tx.rollback().await;
                    Err(error)
                }
            };
            recorded.map_err(store_error)
        })
        .await?;
        if recorded > 0 {
            self.deliveries_due.wake();
        }
        Ok(recorded)
    }
}

/// The search criteria that find the resources of `resource_type` that may be due at `now`
/// (their content decides, see [`due`]).
fn candidates(resource_type: &str, now: OffsetDateTime, longest_lead: Duration) -> Vec<(&'static str, String)> {
    let instant = |at: OffsetDateTime| at.format(&Rfc3339).unwrap_or_default();
    let first_day = now.date() - time::Duration::days(CARE_DUE_GRACE_DAYS);
    // From the first day reminded of on: a Period without an end (scheduled from today on)
    // has no upper bound to compare with `le`; content decides which days are due.
    let days = |name: &'static str| vec![(name, format!("ge{first_day}"))];
    match resource_type {
        "Appointment" => vec![
            ("status", "booked".to_string()),
            ("date", format!("ge{}", instant(now))),
            ("date", format!("le{}", instant(now + longest_lead))),
        ],
        "ServiceRequest" => [vec![("status", "active".to_string())], days("occurrence")].concat(),
        "CarePlan" => [vec![("status", "active".to_string())], days("activity-date")].concat(),
        "ImmunizationRecommendation" => vec![("status", "due,overdue".to_string())],
        _ => Vec::new(),
    }
}

/// When a resource is due: a booked Appointment's start; the day an active ServiceRequest
/// occurs, an active CarePlan's activities that are not done are scheduled, or an
/// ImmunizationRecommendation's due or overdue vaccine is due.
fn due(resource_type: &str, resource: &Value) -> Vec<Due> {
    let texts = |values: Vec<&Value>| -> Vec<Due> {
        values.into_iter().filter_map(Value::as_str).filter_map(day).map(Due::Day).collect()
    };
    let active = resource["status"] == "active";
    match resource_type {
        "Appointment" if resource["status"] == "booked" => resource["start"]
            .as_str()
            .and_then(crate::model::resource::parse_instant)
            .map(|start| Due::Start(start.to_offset(time::UtcOffset::UTC)))
            .into_iter()
            .collect(),
        "ServiceRequest" if active => texts(moments(resource, "occurrence")),
        "CarePlan" if active => texts(
            resource["activity"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|activity| &activity["detail"])
                .filter(|detail| {
                    !matches!(
                        detail["status"].as_str(),
                        Some("completed" | "cancelled" | "stopped" | "entered-in-error")
                    )
                })
                .flat_map(|detail| moments(detail, "scheduled"))
                .collect(),
        ),
        "ImmunizationRecommendation" => texts(
            resource["recommendation"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| codes(&r["forecastStatus"]).any(|code| code == "due" || code == "overdue"))
                .flat_map(|r| r["dateCriterion"].as_array().into_iter().flatten())
                .filter(|criterion| codes(&criterion["code"]).any(|code| code == VACCINE_DUE))
                .map(|criterion| &criterion["value"])
                .collect(),
        ),
        _ => Vec::new(),
    }
}

/// The moments of a choice element `name[x]` that is a dateTime, Period (its start) or
/// Timing (its events).
fn moments<'a>(element: &'a Value, name: &str) -> Vec<&'a Value> {
    let mut found = vec![&element[format!("{name}DateTime")], &element[format!("{name}Period")]["start"]];
    found.extend(element[format!("{name}Timing")]["event"].as_array().into_iter().flatten());
    found
}

/// The codes of a CodeableConcept.
fn codes(concept: &Value) -> impl Iterator<Item = &str> {
    concept["coding"].as_array().into_iter().flatten().filter_map(|coding| coding["code"].as_str())
}

/// The day of a date or dateTime (as written, in its own time zone).
fn day(text: &str) -> Option<Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(text.get(..10)?, &format).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &Rfc3339).unwrap()
    }

    #[test]
    fn an_appointment_is_due_within_the_lead_before_its_start() {
        let booked = json!({"status": "booked", "start": "2026-12-08T09:00:00+01:00"});
        let [start] = due("Appointment", &booked).try_into().ok().unwrap();
        let day = Duration::from_secs(24 * 3600);
        assert!(!start.is_due(at("2026-12-07T07:59:59Z"), day));
        assert!(start.is_due(at("2026-12-07T08:00:00Z"), day));
        assert!(!start.is_due(at("2026-12-08T08:00:00Z"), day), "started");
        assert_eq!(start.key(), "2026-12-08T08:00:00Z", "in UTC: the same start written otherwise is the same key");
        let cancelled = json!({"status": "cancelled", "start": "2026-12-08T09:00:00Z"});
        assert!(due("Appointment", &cancelled).is_empty());
    }

    #[test]
    fn care_is_due_on_its_day_and_the_next() {
        let plan = json!({"status": "active", "activity": [
            {"detail": {"status": "scheduled", "scheduledTiming": {"event": ["2026-12-07T10:00:00Z", "2027-01-07"]}}},
            {"detail": {"status": "completed", "scheduledPeriod": {"start": "2026-12-07"}}}]});
        let dues = due("CarePlan", &plan);
        assert_eq!(dues.iter().map(Due::key).collect::<Vec<_>>(), ["2026-12-07", "2027-01-07"]);
        let lead = Duration::ZERO;
        assert!(dues[0].is_due(at("2026-12-07T00:00:00Z"), lead));
        assert!(dues[0].is_due(at("2026-12-08T23:59:59Z"), lead));
        assert!(!dues[0].is_due(at("2026-12-09T00:00:00Z"), lead));
        assert!(!dues[0].is_due(at("2026-12-06T23:59:59Z"), lead));
        let recommendation = json!({"recommendation": [
            {"forecastStatus": {"coding": [{"code": "due"}]},
             "dateCriterion": [{"code": {"coding": [{"code": "30981-5"}]}, "value": "2026-11-01"},
                               {"code": {"coding": [{"code": VACCINE_DUE}]}, "value": "2026-12-07"}]},
            {"forecastStatus": {"coding": [{"code": "complete"}]},
             "dateCriterion": [{"code": {"coding": [{"code": VACCINE_DUE}]}, "value": "2026-12-06"}]}]});
        assert_eq!(
            due("ImmunizationRecommendation", &recommendation).iter().map(Due::key).collect::<Vec<_>>(),
            ["2026-12-07"]
        );
        let draft = json!({"status": "draft", "occurrenceDateTime": "2026-12-07"});
        assert!(due("ServiceRequest", &draft).is_empty());
    }
}
