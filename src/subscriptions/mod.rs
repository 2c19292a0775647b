//! Topic-based subscriptions (the Subscriptions R5 Backport IG for R4, ADR 16): topics, the
//! Subscriptions that name them, and the index a write is matched against. What a write
//! matches is recorded as events in its own transaction (see `rest::subscriptions`); jobs of
//! any node deliver them (see `rest::notify`).

pub mod built_in;
pub mod endpoint;
pub mod notification;
pub mod request;
pub mod secrets;
pub mod topic;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::auth::Access;
pub use request::{Channel, Checks, Payload, SubscriptionRequest};
pub use topic::{Interaction, Judged, TimedEvent, Topic, Trigger};

/// The Backport IG's profile of R4 Subscription. The server does not carry the IG's package:
/// what the profile asks (a topic canonical as criteria, filter criteria, the channel and
/// payload extensions) is what [`SubscriptionRequest::parse`] checks on every write.
pub const BACKPORT_SUBSCRIPTION_PROFILE: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription";

/// Whether a claimed `profile` of a `resource_type` is checked by the server's own code rather
/// than from a StructureDefinition.
pub fn checked_in_code(resource_type: &str, profile: &str) -> bool {
    resource_type == "Subscription" && profile.split('|').next() == Some(BACKPORT_SUBSCRIPTION_PROFILE)
}

/// A subscription in force (active, or in error and still collecting events).
#[derive(Debug)]
pub struct Subscriber {
    pub id: String,
    pub request: SubscriptionRequest,
    /// Whose access its notifications pass (at delivery the grant is checked again).
    pub access: Access,
}

/// The topics and subscriptions in force, indexed for matching writes: a write of a type no
/// topic triggers on costs one map lookup.
#[derive(Debug, Default)]
pub struct Index {
    topics: Vec<Arc<Topic>>,
    /// Per resource type, the topics with a trigger on it (topics on every type included).
    by_type: HashMap<String, Vec<Arc<Topic>>>,
    /// Topics with a trigger on every type.
    on_every_type: Vec<Arc<Topic>>,
    /// Per topic URL, its subscribers.
    subscribers: HashMap<String, Subscribers>,
}

/// A topic's subscribers, keyed so that a write is checked against those it may concern: a
/// subscriber whose filter of a type requires a reference (`Observation?patient=Patient/1`)
/// is only looked at for writes of that type that reference that target.
#[derive(Debug, Default)]
struct Subscribers {
    /// By (resource type, reference parameter, target id) its filter of that type requires.
    keyed: HashMap<(String, String, String), Vec<Arc<Subscriber>>>,
    /// By resource type, those whose filter of that type requires no one reference.
    by_type: HashMap<String, Vec<Arc<Subscriber>>>,
    /// Those without filters (every event of the topic).
    unfiltered: Vec<Arc<Subscriber>>,
}

impl Subscribers {
    fn add(&mut self, subscriber: Arc<Subscriber>) {
        let filters = &subscriber.request.filters;
        if filters.is_empty() {
            self.unfiltered.push(subscriber);
            return;
        }
        let mut types: Vec<&str> = filters.iter().map(|f| f.resource_type.as_str()).collect();
        types.sort_unstable();
        types.dedup();
        for resource_type in types {
            let required = filters
                .iter()
                .filter(|f| f.resource_type == resource_type)
                .find_map(|f| required_reference(&f.condition));
            match required {
                Some((param, target)) => {
                    self.keyed.entry((resource_type.to_string(), param, target)).or_default().push(subscriber.clone())
                }
                None => self.by_type.entry(resource_type.to_string()).or_default().push(subscriber.clone()),
            }
        }
    }

    /// Every subscriber, once.
    fn all(&self) -> Vec<&Arc<Subscriber>> {
        let mut seen = std::collections::HashSet::new();
        let filtered = self.by_type.values().chain(self.keyed.values()).flatten();
        self.unfiltered.iter().chain(filtered).filter(|s| seen.insert(Arc::as_ptr(s))).collect()
    }

    /// The subscribers a write of `resource_type` with these index rows may concern (each once).
    fn candidates<'a>(&'a self, resource_type: &str, rows: &crate::store::IndexRows) -> Vec<&'a Arc<Subscriber>> {
        let mut found: Vec<&Arc<Subscriber>> = self.unfiltered.iter().collect();
        found.extend(self.by_type.get(resource_type).into_iter().flatten());
        if !self.keyed.is_empty() {
            for row in &rows.references {
                let Some(target) = &row.target_id else { continue };
                let key = (resource_type.to_string(), row.param.clone(), target.clone());
                for subscriber in self.keyed.get(&key).into_iter().flatten() {
                    if !found.iter().any(|f| Arc::ptr_eq(f, subscriber)) {
                        found.push(subscriber);
                    }
                }
            }
        }
        found
    }
}

/// A reference a filter's condition requires on its own (one criterion with one value,
/// `patient=Patient/1`): (parameter, target id).
fn required_reference(condition: &crate::store::Condition) -> Option<(String, String)> {
    use crate::store::Condition;
    let Condition::AllOf(groups) = condition else { return None };
    groups.iter().find_map(|group| match group {
        Condition::AnyOf(values) => match values.as_slice() {
            [Condition::Reference { param, target_id, .. }] => Some((param.clone(), target_id.clone())),
            _ => None,
        },
        _ => None,
    })
}

impl Index {
    /// Builds the index from stored topics (`Basic`) and subscriptions; what cannot be used is
    /// left out and told in the problems.
    pub fn build(
        topic_resources: &[Value],
        subscriptions: Vec<(Value, Access)>,
        registry: &crate::search::Registry,
        base_url: &str,
        endpoints: endpoint::EndpointPolicy,
    ) -> (Index, Vec<String>) {
        let mut index = Index::default();
        let mut problems = Vec::new();
        for resource in topic_resources.iter().filter(|r| topic::is_topic(r)) {
            match Topic::parse(resource, registry, base_url) {
                Ok(topic) => index.topics.push(Arc::new(topic)),
                Err(problem) => problems.push(format!("Basic/{}: {problem}", resource["id"].as_str().unwrap_or(""))),
            }
        }
        for topic in &index.topics {
            for trigger in &topic.triggers {
                let list = match &trigger.resource_type {
                    Some(resource_type) => index.by_type.entry(resource_type.clone()).or_default(),
                    None => &mut index.on_every_type,
                };
                if !list.iter().any(|t| Arc::ptr_eq(t, topic)) {
                    list.push(topic.clone());
                }
            }
        }
        let checks = Checks { registry, base_url, topics: &index.topics, endpoints };
        for (resource, access) in subscriptions {
            let id = resource["id"].as_str().unwrap_or_default().to_string();
            match SubscriptionRequest::parse(&resource, &checks) {
                Ok(request) => {
                    let subscriber = Arc::new(Subscriber { id, request, access });
                    index.subscribers.entry(subscriber.request.topic.clone()).or_default().add(subscriber);
                }
                Err(problem) => {
                    problems.push(format!("Subscription/{id}: {} ({})", problem.message, problem.expression))
                }
            }
        }
        (index, problems)
    }

    /// The topics in force.
    pub fn topics(&self) -> &[Arc<Topic>] {
        &self.topics
    }

    /// The topic with this canonical URL.
    pub fn topic(&self, url: &str) -> Option<&Arc<Topic>> {
        self.topics.iter().find(|t| t.url == url)
    }

    /// The topics that have subscribers and a trigger on `resource_type`.
    pub fn watching(&self, resource_type: &str) -> impl Iterator<Item = &Arc<Topic>> {
        let own = self.by_type.get(resource_type).map(Vec::as_slice).unwrap_or_default();
        own.iter().chain(&self.on_every_type).filter(|t| self.subscribers.contains_key(&t.url))
    }

    /// Every subscription in force.
    pub fn subscribers(&self) -> impl Iterator<Item = &Arc<Subscriber>> {
        self.subscribers.values().flat_map(Subscribers::all)
    }

    /// The topics that raise `event` and have subscribers, each with them.
    pub fn raising(&self, event: TimedEvent) -> Vec<(&Arc<Topic>, Vec<&Arc<Subscriber>>)> {
        let raises = |topic: &&Arc<Topic>| topic.events.iter().any(|e| e.event == event);
        self.topics
            .iter()
            .filter(raises)
            .filter_map(|topic| Some((topic, self.subscribers.get(&topic.url)?.all())))
            .collect()
    }

    /// The subscribers of a topic that a write of `resource_type` with these index rows may
    /// concern (their filters decide).
    pub fn candidates(
        &self,
        topic_url: &str,
        resource_type: &str,
        rows: &crate::store::IndexRows,
    ) -> Vec<&Arc<Subscriber>> {
        self.subscribers.get(topic_url).map(|s| s.candidates(resource_type, rows)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{IndexRows, ReferenceRow};
    use serde_json::json;

    fn subscription(id: &str, filters: &[&str]) -> Value {
        let filters: Vec<Value> =
            filters.iter().map(|f| json!({"url": request::FILTER_CRITERIA, "valueString": f})).collect();
        json!({"resourceType": "Subscription", "id": id, "status": "active", "reason": "t",
            "criteria": format!("{}result-final", built_in::TOPIC_BASE), "_criteria": {"extension": filters},
            "channel": {"type": "rest-hook", "endpoint": "https://example.org/hook"}})
    }

    fn of_patient(id: &str) -> IndexRows {
        let row = |param: &str| ReferenceRow {
            param: param.into(),
            target_type: Some("Patient".into()),
            target_id: Some(id.into()),
            target_url: None,
        };
        IndexRows { references: vec![row("subject"), row("patient")], ..IndexRows::default() }
    }

    #[test]
    fn a_write_is_checked_against_the_subscribers_of_its_patient_only() {
        let subscriptions = vec![
            (subscription("a", &["Observation?patient=Patient/1"]), Access::Open),
            (subscription("b", &["Observation?patient=Patient/2"]), Access::Open),
            (subscription("c", &["Observation?category=laboratory"]), Access::Open),
            (subscription("d", &[]), Access::Open),
            (subscription("e", &["DiagnosticReport?patient=Patient/1"]), Access::Open),
        ];
        let (index, problems) = Index::build(
            &built_in::topics(),
            subscriptions,
            crate::search::Registry::standard(),
            "http://h/fhir",
            endpoint::EndpointPolicy::default(),
        );
        assert!(problems.is_empty(), "{problems:?}");
        let topic = format!("{}result-final", built_in::TOPIC_BASE);
        let mut ids: Vec<&str> =
            index.candidates(&topic, "Observation", &of_patient("1")).iter().map(|s| s.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["a", "c", "d"]);
        let ids: Vec<&str> =
            index.candidates(&topic, "DiagnosticReport", &of_patient("2")).iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["d"]);
    }
}
