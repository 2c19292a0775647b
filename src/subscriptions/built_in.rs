//! The topics every Hearth server has, as the `Basic` resources the Backport IG describes. They
//! are stored at start-up when missing (an operator who deletes one keeps it deleted), so they
//! are found with `GET /fhir/Basic?code=SubscriptionTopic` like topics an operator adds.

use serde_json::{json, Value};

use super::topic::{TimedEvent, EVENT_SYSTEM, TOPIC_CODE, TOPIC_CODE_SYSTEM};

/// Where Hearth's topics' canonical URLs start.
pub const TOPIC_BASE: &str = "http://hearth.dev/fhir/SubscriptionTopic/";

const R5: &str = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic.";

/// A `resourceTrigger`: the type, the interactions, and optional query and FHIRPath criteria.
struct Trigger {
    resource: &'static str,
    interactions: &'static [&'static str],
    /// (previous, current, requireBoth); a create passes `previous`, a delete fails `current`.
    query: Option<(&'static str, &'static str, bool)>,
    fhirpath: Option<&'static str>,
}

/// One topic: id (the `Basic` id and the end of its URL), title, description, triggers, the
/// time-based events the server raises for it as (event code, resource type), and the (type,
/// parameter) pairs subscriptions may filter on.
struct Definition {
    id: &'static str,
    title: &'static str,
    description: &'static str,
    triggers: &'static [Trigger],
    events: &'static [(TimedEvent, &'static str)],
    filters: &'static [(&'static str, &'static str)],
}

const RESULT_TYPES_CRITERIA: (&str, &str, bool) = ("status:not=final", "status=final,amended,corrected", true);

const DEFINITIONS: &[Definition] = &[
    Definition {
        id: "result-final",
        title: "A result was finalised",
        description: "An Observation or DiagnosticReport became final, or was amended or corrected.",
        triggers: &[
            Trigger {
                resource: "Observation",
                interactions: &["create", "update"],
                query: Some(RESULT_TYPES_CRITERIA),
                fhirpath: None,
            },
            Trigger {
                resource: "DiagnosticReport",
                interactions: &["create", "update"],
                query: Some(RESULT_TYPES_CRITERIA),
                fhirpath: None,
            },
        ],
        events: &[],
        filters: &[
            ("Observation", "patient"),
            ("Observation", "category"),
            ("Observation", "code"),
            ("DiagnosticReport", "patient"),
            ("DiagnosticReport", "category"),
            ("DiagnosticReport", "code"),
        ],
    },
    Definition {
        id: "message-received",
        title: "A message arrived",
        description: "A Communication was sent (completed) to its recipients.",
        triggers: &[Trigger {
            resource: "Communication",
            interactions: &["create", "update"],
            query: Some(("status:not=completed", "status=completed", true)),
            fhirpath: None,
        }],
        events: &[],
        filters: &[("Communication", "recipient"), ("Communication", "patient"), ("Communication", "sender")],
    },
    Definition {
        id: "appointment-changed",
        title: "An appointment was booked, changed or cancelled",
        description: "An Appointment was booked, a booked one changed, or one was cancelled.",
        triggers: &[Trigger {
            resource: "Appointment",
            interactions: &["create", "update"],
            query: Some(("", "status=booked,cancelled", true)),
            fhirpath: None,
        }],
        events: &[],
        filters: &[("Appointment", "patient"), ("Appointment", "actor"), ("Appointment", "practitioner")],
    },
    Definition {
        id: "appointment-reminder",
        title: "An appointment starts soon",
        description: "A booked Appointment starts within the subscription's lead time \
            (its reminder-hours-before extension, else the server's setting, 24 hours by default). \
            Raised once per appointment and start: again if it is rescheduled, never once it is cancelled.",
        triggers: &[],
        events: &[(TimedEvent::AppointmentStart, "Appointment")],
        filters: &[
            ("Appointment", "patient"),
            ("Appointment", "actor"),
            ("Appointment", "practitioner"),
            ("Appointment", "location"),
        ],
    },
    Definition {
        id: "care-due",
        title: "Care is due",
        description: "An active CarePlan's activity, an active ServiceRequest or an ImmunizationRecommendation \
            (due or overdue) is due today (UTC). Raised once per resource and due date.",
        triggers: &[],
        events: &[
            (TimedEvent::CareDue, "CarePlan"),
            (TimedEvent::CareDue, "ServiceRequest"),
            (TimedEvent::CareDue, "ImmunizationRecommendation"),
        ],
        filters: &[("CarePlan", "patient"), ("ServiceRequest", "patient"), ("ImmunizationRecommendation", "patient")],
    },
    Definition {
        id: "document-added",
        title: "A document was added",
        description: "A current DocumentReference was created.",
        triggers: &[Trigger {
            resource: "DocumentReference",
            interactions: &["create"],
            query: Some(("", "status=current", true)),
            fhirpath: None,
        }],
        events: &[],
        filters: &[("DocumentReference", "patient"), ("DocumentReference", "type"), ("DocumentReference", "category")],
    },
    Definition {
        id: "refill-status",
        title: "A refill request changed status",
        description: "A refill request (Task) was made, or its status changed.",
        triggers: &[Trigger {
            resource: "Task",
            interactions: &["create", "update"],
            query: Some(("", "code=http://hearth.dev/fhir/CodeSystem/portal-task|refill", true)),
            fhirpath: Some("%previous.empty() or %previous.status != %current.status"),
        }],
        events: &[],
        filters: &[("Task", "patient"), ("Task", "status"), ("Task", "focus")],
    },
    Definition {
        id: "resource-changed",
        title: "A resource was created, updated or deleted",
        description: "Any write of the type the subscription's filter names, filtered on any of its search parameters.",
        triggers: &[Trigger {
            resource: "http://hl7.org/fhir/StructureDefinition/Resource",
            interactions: &["create", "update", "delete"],
            query: None,
            fhirpath: None,
        }],
        events: &[],
        filters: &[("Resource", "")],
    },
];

fn extension(element: &str, value: Value) -> Value {
    let mut extension = json!({ "url": format!("{R5}{element}") });
    if let (Some(object), Some(value)) = (extension.as_object_mut(), value.as_object()) {
        object.extend(value.clone());
    }
    extension
}

fn trigger(trigger: &Trigger) -> Value {
    let resource = match trigger.resource.contains('/') {
        true => trigger.resource.to_string(),
        false => format!("http://hl7.org/fhir/StructureDefinition/{}", trigger.resource),
    };
    let mut parts = vec![json!({"url": "resource", "valueUri": resource})];
    parts.extend(trigger.interactions.iter().map(|i| json!({"url": "supportedInteraction", "valueCode": i})));
    if let Some((previous, current, require_both)) = trigger.query {
        let mut criteria = Vec::new();
        if !previous.is_empty() {
            criteria.push(json!({"url": "previous", "valueString": previous}));
        }
        criteria.push(json!({"url": "resultForCreate", "valueCode": "test-passes"}));
        criteria.push(json!({"url": "current", "valueString": current}));
        criteria.push(json!({"url": "resultForDelete", "valueCode": "test-fails"}));
        criteria.push(json!({"url": "requireBoth", "valueBoolean": require_both}));
        parts.push(json!({"url": "queryCriteria", "extension": criteria}));
    }
    if let Some(expression) = trigger.fhirpath {
        parts.push(json!({"url": "fhirPathCriteria", "valueString": expression}));
    }
    extension("resourceTrigger", json!({ "extension": parts }))
}

fn event_trigger((event, resource): &(TimedEvent, &str)) -> Value {
    let parts = json!([
        {"url": "event", "valueCodeableConcept": {"coding": [{"system": EVENT_SYSTEM, "code": event.code()}]}},
        {"url": "resource", "valueUri": format!("http://hl7.org/fhir/StructureDefinition/{resource}")},
    ]);
    extension("eventTrigger", json!({ "extension": parts }))
}

fn filter((resource, parameter): &(&str, &str)) -> Value {
    let mut parts = vec![json!({"url": "resource", "valueUri": resource})];
    if !parameter.is_empty() {
        parts.push(json!({"url": "filterParameter", "valueString": parameter}));
    }
    extension("canFilterBy", json!({ "extension": parts }))
}

fn topic(definition: &Definition) -> Value {
    let mut extensions = vec![
        extension("url", json!({"valueUri": format!("{TOPIC_BASE}{}", definition.id)})),
        extension("title", json!({"valueString": definition.title})),
        extension("status", json!({"valueCode": "active"})),
        extension("description", json!({"valueMarkdown": definition.description})),
    ];
    extensions.extend(definition.triggers.iter().map(trigger));
    extensions.extend(definition.events.iter().map(event_trigger));
    extensions.extend(definition.filters.iter().map(filter));
    json!({
        "resourceType": "Basic",
        "id": format!("topic-{}", definition.id),
        "code": {"coding": [{"system": TOPIC_CODE_SYSTEM, "code": TOPIC_CODE}]},
        "extension": extensions,
    })
}

/// The built-in topics as `Basic` resources.
pub fn topics() -> Vec<Value> {
    DEFINITIONS.iter().map(topic).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refill_topic_names_the_portal_task_code() {
        let refill = super::DEFINITIONS.iter().find(|d| d.id == "refill-status").unwrap();
        let (_, current, _) = refill.triggers[0].query.unwrap();
        assert_eq!(current, format!("code={}|refill", crate::portal::refills::TASK_CODES));
    }
}
