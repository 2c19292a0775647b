//! Notification Bundles exactly as the Backport IG shapes them for R4: a `history` Bundle whose
//! first entry is the SubscriptionStatus (a `Parameters`), then one entry per event's focus
//! (with the resource for `full-resource`, without it for `id-only`, none for `empty`).

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::request::Payload;

/// What a notification is (`SubscriptionStatus.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Handshake,
    Heartbeat,
    EventNotification,
    QueryStatus,
    QueryEvent,
}

impl Kind {
    pub fn code(self) -> &'static str {
        match self {
            Kind::Handshake => "handshake",
            Kind::Heartbeat => "heartbeat",
            Kind::EventNotification => "event-notification",
            Kind::QueryStatus => "query-status",
            Kind::QueryEvent => "query-event",
        }
    }
}

/// The state of a subscription a status reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Status<'a> {
    pub base_url: &'a str,
    pub subscription_id: &'a str,
    pub topic: &'a str,
    /// `requested`, `active`, `error` or `off`.
    pub status: &'a str,
    pub kind: Kind,
    pub events_since_start: i64,
    /// The last delivery error, reported while the subscription is in error.
    pub error: Option<&'a str>,
}

impl<'a> Status<'a> {
    /// The status a query (`$status`, `$events`) reports of a stored Subscription: its topic
    /// and status as the resource says, with what the delivery state counts.
    pub fn of_stored(
        base_url: &'a str,
        (subscription_id, resource): (&'a str, &'a Value),
        kind: Kind,
        events_since_start: i64,
        error: Option<&'a str>,
    ) -> Status<'a> {
        Status {
            base_url,
            subscription_id,
            topic: resource["criteria"].as_str().unwrap_or_default(),
            status: resource["status"].as_str().unwrap_or_default(),
            kind,
            events_since_start,
            error,
        }
    }
}

/// One event as a notification shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub number: i64,
    pub recorded: OffsetDateTime,
    /// The focus (type, id) and how it was written (`POST`, `PUT`, `PATCH`, `DELETE`); `None`
    /// when the subscriber may no longer read it (the event is counted, its resource not shown).
    pub focus: Option<Focus>,
}

/// An event's resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Focus {
    pub resource_type: String,
    pub id: String,
    pub method: &'static str,
    /// The resource, for `full-resource` payloads (not for a deletion).
    pub resource: Option<Value>,
}

fn instant(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// The SubscriptionStatus `Parameters` of a notification carrying `events`.
pub fn status_parameters(status: &Status<'_>, events: &[Event], payload: Payload) -> Value {
    let subscription_url = format!("{}/Subscription/{}", status.base_url, status.subscription_id);
    let mut parameters = vec![
        json!({"name": "subscription", "valueReference": {"reference": subscription_url}}),
        json!({"name": "topic", "valueCanonical": status.topic}),
        json!({"name": "status", "valueCode": status.status}),
        json!({"name": "type", "valueCode": status.kind.code()}),
        json!({"name": "events-since-subscription-start", "valueString": status.events_since_start.to_string()}),
    ];
    for event in events {
        let mut parts = vec![
            json!({"name": "event-number", "valueString": event.number.to_string()}),
            json!({"name": "timestamp", "valueInstant": instant(event.recorded)}),
        ];
        if let (Some(focus), false) = (&event.focus, payload == Payload::Empty) {
            let reference = format!("{}/{}/{}", status.base_url, focus.resource_type, focus.id);
            parts.push(json!({"name": "focus", "valueReference": {"reference": reference}}));
        }
        parameters.push(json!({"name": "notification-event", "part": parts}));
    }
    if let Some(error) = status.error {
        parameters.push(json!({"name": "error", "valueCodeableConcept": {"text": error}}));
    }
    json!({"resourceType": "Parameters", "id": crate::model::resource::new_id(), "parameter": parameters})
}

/// The notification Bundle of `events` (none for a handshake or heartbeat).
pub fn bundle(status: &Status<'_>, events: &[Event], payload: Payload) -> Value {
    let subscription_url = format!("{}/Subscription/{}", status.base_url, status.subscription_id);
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{}", uuid::Uuid::now_v7()),
        "resource": status_parameters(status, events, payload),
        "request": {"method": "GET", "url": format!("{subscription_url}/$status")},
        "response": {"status": "200"},
    })];
    if payload != Payload::Empty {
        for focus in events.iter().filter_map(|e| e.focus.as_ref()) {
            let relative = format!("{}/{}", focus.resource_type, focus.id);
            let mut entry = json!({
                "fullUrl": format!("{}/{relative}", status.base_url),
                "request": {"method": focus.method, "url": relative},
                "response": {"status": if focus.method == "POST" { "201" } else { "200" }},
            });
            if let (Payload::FullResource, Some(resource)) = (payload, &focus.resource) {
                entry["resource"] = resource.clone();
            }
            entries.push(entry);
        }
    }
    json!({
        "resourceType": "Bundle",
        "id": crate::model::resource::new_id(),
        "meta": {"profile": ["http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4"]},
        "type": "history",
        "timestamp": instant(OffsetDateTime::now_utc()),
        "entry": entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(kind: Kind) -> Status<'static> {
        Status {
            base_url: "http://h/fhir",
            subscription_id: "s1",
            topic: "http://t",
            status: "active",
            kind,
            events_since_start: 2,
            error: None,
        }
    }

    fn event(resource: Option<Value>) -> Event {
        Event {
            number: 2,
            recorded: OffsetDateTime::UNIX_EPOCH,
            focus: Some(Focus { resource_type: "Observation".into(), id: "o1".into(), method: "PUT", resource }),
        }
    }

    #[test]
    fn shapes_an_id_only_notification() {
        let bundle = bundle(&status(Kind::EventNotification), &[event(None)], Payload::IdOnly);
        assert_eq!(bundle["type"], "history");
        let parameters = &bundle["entry"][0]["resource"];
        assert_eq!(parameters["resourceType"], "Parameters");
        assert_eq!(parameters["parameter"][4]["valueString"], "2");
        let event = &parameters["parameter"][5];
        assert_eq!(event["name"], "notification-event");
        assert_eq!(event["part"][2]["valueReference"]["reference"], "http://h/fhir/Observation/o1");
        assert_eq!(bundle["entry"][1]["fullUrl"], "http://h/fhir/Observation/o1");
        assert!(bundle["entry"][1].get("resource").is_none());
    }

    #[test]
    fn empty_payloads_name_no_resource() {
        let bundle = bundle(&status(Kind::EventNotification), &[event(None)], Payload::Empty);
        assert_eq!(bundle["entry"].as_array().unwrap().len(), 1);
        assert_eq!(bundle["entry"][0]["resource"]["parameter"][5]["part"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn full_resource_payloads_carry_the_resource() {
        let resource = json!({"resourceType": "Observation", "id": "o1"});
        let bundle = bundle(&status(Kind::EventNotification), &[event(Some(resource.clone()))], Payload::FullResource);
        assert_eq!(bundle["entry"][1]["resource"], resource);
    }
}
