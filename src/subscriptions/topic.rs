//! SubscriptionTopics as FHIR R4 carries them (Subscriptions R5 Backport IG): `Basic` resources
//! coded `http://hl7.org/fhir/fhir-types|SubscriptionTopic`, with the R5 elements as
//! cross-version extensions. A topic says which writes are events (its resource triggers), which
//! time-based events the server raises for it (its event triggers: reminders), and on which
//! search parameters a subscription may filter them.

use serde_json::Value;

use crate::search::Registry;
use crate::store::Condition;

/// The code that marks a `Basic` resource as a SubscriptionTopic.
pub const TOPIC_CODE_SYSTEM: &str = "http://hl7.org/fhir/fhir-types";
pub const TOPIC_CODE: &str = "SubscriptionTopic";

/// The prefixes of the cross-version extensions (R5, and R4B which the IG's examples also use).
const EXTENSION_PREFIXES: &[&str] = &[
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic.",
    "http://hl7.org/fhir/4.3/StructureDefinition/extension-SubscriptionTopic.",
];

/// The code system of the time-based events the server raises (`eventTrigger.event`).
pub const EVENT_SYSTEM: &str = "http://hearth.dev/fhir/CodeSystem/subscription-event";

/// A time-based event: the server raises it by scanning for what is due (`rest::reminders`),
/// not because of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimedEvent {
    /// A booked Appointment starts within the subscriber's lead time.
    AppointmentStart,
    /// A CarePlan activity, ServiceRequest or ImmunizationRecommendation is due today.
    CareDue,
}

impl TimedEvent {
    pub const ALL: [TimedEvent; 2] = [TimedEvent::AppointmentStart, TimedEvent::CareDue];

    pub fn code(self) -> &'static str {
        match self {
            TimedEvent::AppointmentStart => "appointment-start",
            TimedEvent::CareDue => "care-due",
        }
    }

    /// The resource types it can be about.
    pub fn resource_types(self) -> &'static [&'static str] {
        match self {
            TimedEvent::AppointmentStart => &["Appointment"],
            TimedEvent::CareDue => &["CarePlan", "ServiceRequest", "ImmunizationRecommendation"],
        }
    }

    fn parse(code: &str) -> Option<TimedEvent> {
        TimedEvent::ALL.into_iter().find(|event| event.code() == code)
    }
}

/// One `eventTrigger`: a time-based event about resources of a type.
#[derive(Debug, Clone, PartialEq)]
pub struct EventTrigger {
    pub event: TimedEvent,
    pub resource_type: String,
}

/// A write, as a topic's `supportedInteraction` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Create,
    Update,
    Delete,
}

impl Interaction {
    fn parse(code: &str) -> Option<Interaction> {
        match code {
            "create" => Some(Interaction::Create),
            "update" => Some(Interaction::Update),
            "delete" => Some(Interaction::Delete),
            _ => None,
        }
    }
}

/// A search-criteria test on the version before or after a write (`queryCriteria`).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryCriteria {
    pub previous: Option<Condition>,
    pub current: Option<Condition>,
    /// What `previous` yields when there is no previous version (a create).
    pub passes_for_create: bool,
    /// What `current` yields when there is no current version (a delete).
    pub passes_for_delete: bool,
    /// Whether both tests must pass (else either).
    pub require_both: bool,
}

/// One `resourceTrigger`: writes of a type that are events of the topic.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// The resource type, or `None` for every type (`Resource`).
    pub resource_type: Option<String>,
    pub interactions: Vec<Interaction>,
    pub query: Option<QueryCriteria>,
    /// `fhirPathCriteria`, with `%previous` and `%current`.
    pub fhirpath: Option<std::sync::Arc<fhirpath::Expression>>,
}

/// One `canFilterBy`: a search parameter subscriptions may filter a type's events on.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterBy {
    /// `None`: any type of the topic's triggers.
    pub resource_type: Option<String>,
    /// `None`: any search parameter of the type.
    pub parameter: Option<String>,
}

/// One version of a resource as a trigger judges it: its content and its index rows.
pub struct Judged<'a> {
    pub resource_type: &'a str,
    pub id: &'a str,
    pub resource: &'a Value,
    pub rows: &'a crate::store::IndexRows,
}

impl Judged<'_> {
    /// Whether it meets `condition` (one the in-memory evaluator decides).
    pub fn meets(&self, condition: &Condition) -> bool {
        let candidate =
            crate::search::matcher::Candidate { resource_type: self.resource_type, id: self.id, rows: self.rows };
        crate::search::matcher::matches(condition, &candidate).unwrap_or(false)
    }
}

/// A topic in force.
#[derive(Debug, Clone)]
pub struct Topic {
    /// The id of the `Basic` that carries it.
    pub basic_id: String,
    /// Its canonical URL, what `Subscription.criteria` names.
    pub url: String,
    pub title: Option<String>,
    pub triggers: Vec<Trigger>,
    pub events: Vec<EventTrigger>,
    pub filters: Vec<FilterBy>,
}

/// Whether `resource` is a `Basic` that carries a SubscriptionTopic.
pub fn is_topic(resource: &Value) -> bool {
    resource["resourceType"] == "Basic"
        && resource["code"]["coding"]
            .as_array()
            .is_some_and(|codings| codings.iter().any(|c| c["system"] == TOPIC_CODE_SYSTEM && c["code"] == TOPIC_CODE))
}

/// The value of an extension, by its element name (`url`, `resourceTrigger`…), among
/// `extensions` of a topic.
fn topic_extensions<'a>(resource: &'a Value, element: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    resource["extension"].as_array().into_iter().flatten().filter(move |e| {
        let url = e["url"].as_str().unwrap_or_default();
        EXTENSION_PREFIXES.iter().any(|prefix| url.strip_prefix(prefix) == Some(element))
    })
}

/// The canonical URL of the topic a `Basic` carries.
pub fn url_of(resource: &Value) -> Option<&str> {
    topic_extensions(resource, "url").find_map(text)
}

/// The sub-extensions named `name` of a complex extension.
fn parts<'a>(extension: &'a Value, name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    extension["extension"].as_array().into_iter().flatten().filter(move |e| e["url"] == name)
}

/// The `value[x]` of an extension as text (uri, code, string, markdown, canonical…).
fn text(extension: &Value) -> Option<&str> {
    extension.as_object()?.iter().find(|(k, _)| k.starts_with("value")).and_then(|(_, v)| v.as_str())
}

fn boolean(extension: Option<&Value>) -> Option<bool> {
    extension?.get("valueBoolean")?.as_bool()
}

/// The type a topic's `resource` names: `Observation` or its StructureDefinition URL;
/// `None` for `Resource` (every type).
fn resource_type_of(uri: &str) -> Option<String> {
    let name = uri.rsplit('/').next().unwrap_or(uri);
    (name != "Resource" && name != "DomainResource").then(|| name.to_string())
}

impl Topic {
    /// Reads the topic a stored `Basic` carries; an error says what is wrong with it.
    pub fn parse(resource: &Value, registry: &Registry, base_url: &str) -> Result<Topic, String> {
        let url = url_of(resource)
            .ok_or("a SubscriptionTopic needs its canonical url (extension-SubscriptionTopic.url)")?
            .to_string();
        let basic_id = resource["id"].as_str().unwrap_or_default().to_string();
        let title = topic_extensions(resource, "title").find_map(text).map(str::to_string);
        let mut triggers = Vec::new();
        for trigger in topic_extensions(resource, "resourceTrigger") {
            triggers.push(Trigger::parse(trigger, registry, base_url)?);
        }
        let mut events = Vec::new();
        for trigger in topic_extensions(resource, "eventTrigger") {
            events.push(EventTrigger::parse(trigger)?);
        }
        if triggers.is_empty() && events.is_empty() {
            return Err(format!("topic {url} has no resourceTrigger (nor an eventTrigger this server raises)"));
        }
        let filters = topic_extensions(resource, "canFilterBy")
            .map(|filter| FilterBy {
                resource_type: parts(filter, "resource").find_map(text).and_then(resource_type_of),
                parameter: parts(filter, "filterParameter").find_map(text).map(str::to_string),
            })
            .collect();
        Ok(Topic { basic_id, url, title, triggers, events, filters })
    }

    /// Whether a subscription may filter events of `resource_type` on `parameter`.
    pub fn can_filter(&self, resource_type: &str, parameter: &str) -> bool {
        self.filters.iter().any(|f| {
            f.resource_type.as_deref().is_none_or(|t| t == resource_type)
                && f.parameter.as_deref().is_none_or(|p| p == parameter)
        })
    }

    /// Whether the topic has events of `resource_type` at all.
    pub fn covers(&self, resource_type: &str) -> bool {
        self.triggers.iter().any(|t| t.is_about(resource_type))
            || self.events.iter().any(|e| e.resource_type == resource_type)
    }

    /// Whether the server raises `event` about `resource_type` for this topic.
    pub fn raises(&self, event: TimedEvent, resource_type: &str) -> bool {
        self.events.iter().any(|e| e.event == event && e.resource_type == resource_type)
    }
}

impl EventTrigger {
    /// An `eventTrigger` whose `event` is coded in [`EVENT_SYSTEM`]: the server cannot raise
    /// events it does not know of, so any other is refused.
    fn parse(extension: &Value) -> Result<EventTrigger, String> {
        let codings = parts(extension, "event").flat_map(|e| e["valueCodeableConcept"]["coding"].as_array()).flatten();
        let event = codings
            .filter(|coding| coding["system"] == EVENT_SYSTEM)
            .find_map(|coding| TimedEvent::parse(coding["code"].as_str()?))
            .ok_or_else(|| {
                let known: Vec<&str> = TimedEvent::ALL.iter().map(|e| e.code()).collect();
                format!("an eventTrigger's event is one this server raises: {EVENT_SYSTEM} {}", known.join(", "))
            })?;
        let resource = parts(extension, "resource").find_map(text).unwrap_or_default();
        let resource_type = resource_type_of(resource).unwrap_or_default();
        if !event.resource_types().contains(&resource_type.as_str()) {
            return Err(format!(
                "the event {} is about {}, not '{resource}'",
                event.code(),
                event.resource_types().join(", ")
            ));
        }
        Ok(EventTrigger { event, resource_type })
    }
}

impl Trigger {
    fn parse(extension: &Value, registry: &Registry, base_url: &str) -> Result<Trigger, String> {
        let resource =
            parts(extension, "resource").find_map(text).ok_or("a resourceTrigger needs the resource it is about")?;
        let resource_type = resource_type_of(resource);
        let interactions: Vec<Interaction> =
            parts(extension, "supportedInteraction").filter_map(text).filter_map(Interaction::parse).collect();
        let interactions = match interactions.is_empty() {
            true => vec![Interaction::Create, Interaction::Update, Interaction::Delete],
            false => interactions,
        };
        let query = match parts(extension, "queryCriteria").next() {
            None => None,
            Some(criteria) => {
                let Some(resource_type) = &resource_type else {
                    return Err("queryCriteria need a trigger of one resource type".into());
                };
                let condition = |name: &str| -> Result<Option<Condition>, String> {
                    match parts(criteria, name).find_map(text) {
                        None | Some("") => Ok(None),
                        Some(query) => {
                            crate::search::matcher::memory_condition(registry, base_url, resource_type, query)
                                .map(Some)
                                .map_err(|error| format!("queryCriteria.{name} '{query}': {error}"))
                        }
                    }
                };
                Some(QueryCriteria {
                    previous: condition("previous")?,
                    current: condition("current")?,
                    passes_for_create: parts(criteria, "resultForCreate").find_map(text) != Some("test-fails"),
                    passes_for_delete: parts(criteria, "resultForDelete").find_map(text) != Some("test-fails"),
                    require_both: boolean(parts(criteria, "requireBoth").next()).unwrap_or(false),
                })
            }
        };
        let fhirpath = match parts(extension, "fhirPathCriteria").find_map(text) {
            None => None,
            Some(expression) => Some(std::sync::Arc::new(
                fhirpath::parse(expression).map_err(|error| format!("fhirPathCriteria '{expression}': {error}"))?,
            )),
        };
        Ok(Trigger { resource_type, interactions, query, fhirpath })
    }

    /// Whether `interaction`, from `previous` to `current` (each `None` where there is no
    /// version: before a create, after a delete), is an event of this trigger.
    pub fn fires(&self, interaction: Interaction, previous: Option<&Judged<'_>>, current: Option<&Judged<'_>>) -> bool {
        if !self.interactions.contains(&interaction) {
            return false;
        }
        if let Some(query) = &self.query {
            let test =
                |condition: &Option<Condition>, judged: Option<&Judged<'_>>, absent: bool| match (condition, judged) {
                    (None, _) => true,
                    (Some(_), None) => absent,
                    (Some(condition), Some(judged)) => judged.meets(condition),
                };
            let previous_passes = test(&query.previous, previous, query.passes_for_create);
            let current_passes = test(&query.current, current, query.passes_for_delete);
            let passes = match query.require_both {
                true => previous_passes && current_passes,
                false => previous_passes || current_passes,
            };
            if !passes {
                return false;
            }
        }
        match &self.fhirpath {
            None => true,
            Some(expression) => {
                let null = Value::Null;
                let focus = current.or(previous).map_or(&null, |j| j.resource);
                let model = crate::validation::model::CoreModel;
                let mut context = fhirpath::Context::new(focus, &model);
                let previous_items = previous.map(|j| fhirpath::resource(j.resource)).unwrap_or_default();
                let current_items = current.map(|j| fhirpath::resource(j.resource)).unwrap_or_default();
                context.variables.insert("previous".into(), previous_items);
                context.variables.insert("current".into(), current_items);
                let result = expression.evaluate(fhirpath::resource(focus), &context);
                result.is_ok_and(|result| fhirpath::truth(&result) == Some(true))
            }
        }
    }

    /// Whether this trigger is about writes of `resource_type`.
    pub fn is_about(&self, resource_type: &str) -> bool {
        self.resource_type.as_deref().is_none_or(|t| t == resource_type)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_built_in_topics() {
        for resource in super::super::built_in::topics() {
            assert!(is_topic(&resource));
            let topic = Topic::parse(&resource, Registry::standard(), "http://h/fhir").unwrap();
            assert!(topic.url.starts_with("http://hearth.dev/fhir/SubscriptionTopic/"), "{}", topic.url);
            assert!(!topic.triggers.is_empty() || !topic.events.is_empty());
        }
    }

    #[test]
    fn refuses_a_topic_without_url_or_trigger() {
        let basic = json!({"resourceType": "Basic", "id": "t",
            "code": {"coding": [{"system": TOPIC_CODE_SYSTEM, "code": TOPIC_CODE}]}});
        assert!(Topic::parse(&basic, Registry::standard(), "").unwrap_err().contains("canonical url"));
        let mut with_url = basic.clone();
        with_url["extension"] = json!([{
            "url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic.url",
            "valueUri": "http://x/t"}]);
        assert!(Topic::parse(&with_url, Registry::standard(), "").unwrap_err().contains("no resourceTrigger"));
    }

    #[test]
    fn event_triggers_are_events_the_server_raises() {
        let topic = |code: &str, resource: &str| {
            json!({"resourceType": "Basic", "id": "t",
                "code": {"coding": [{"system": TOPIC_CODE_SYSTEM, "code": TOPIC_CODE}]},
                "extension": [
                    {"url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic.url",
                     "valueUri": "http://x/t"},
                    {"url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic.eventTrigger",
                     "extension": [
                        {"url": "event", "valueCodeableConcept": {"coding": [{"system": EVENT_SYSTEM, "code": code}]}},
                        {"url": "resource", "valueUri": resource}]}]})
        };
        let parsed = Topic::parse(&topic("care-due", "ServiceRequest"), Registry::standard(), "").unwrap();
        assert!(parsed.raises(TimedEvent::CareDue, "ServiceRequest") && parsed.covers("ServiceRequest"));
        assert!(!parsed.covers("Observation"));
        let unknown = Topic::parse(&topic("birthday", "Patient"), Registry::standard(), "").unwrap_err();
        assert!(unknown.contains("appointment-start, care-due"), "{unknown}");
        let wrong = Topic::parse(&topic("appointment-start", "Observation"), Registry::standard(), "").unwrap_err();
        assert!(wrong.contains("is about Appointment"), "{wrong}");
    }
}
