//! Topic-based subscriptions (the Subscriptions R5 Backport IG for R4, ADR 16): topics, the
//! Subscriptions that name them, and the index a write is matched against. What a write
//! matches is recorded as events in its own transaction (see `rest::subscriptions`); jobs of
//! any node deliver them (see `rest::notify`).

pub mod built_in;
pub mod notification;
pub mod request;
pub mod topic;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::auth::Access;
pub use request::{Channel, Checks, Payload, SubscriptionRequest};
pub use topic::{Interaction, Judged, Topic, Trigger};

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
    subscribers: HashMap<String, Vec<Arc<Subscriber>>>,
}

impl Index {
    /// Builds the index from stored topics (`Basic`) and subscriptions; what cannot be used is
    /// left out and told in the problems.
    pub fn build(
        topic_resources: &[Value],
        subscriptions: Vec<(Value, Access)>,
        registry: &crate::search::Registry,
        base_url: &str,
        allow_http: bool,
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
        let checks = Checks { registry, base_url, topics: &index.topics, allow_http };
        for (resource, access) in subscriptions {
            let id = resource["id"].as_str().unwrap_or_default().to_string();
            match SubscriptionRequest::parse(&resource, &checks) {
                Ok(request) => {
                    let subscriber = Arc::new(Subscriber { id, request, access });
                    index.subscribers.entry(subscriber.request.topic.clone()).or_default().push(subscriber);
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

    /// Whether any subscribed topic triggers on `resource_type` (the cheap test every write makes).
    pub fn watches(&self, resource_type: &str) -> bool {
        self.watching(resource_type).next().is_some()
    }

    /// The subscribers of a topic.
    pub fn subscribers(&self, topic_url: &str) -> &[Arc<Subscriber>] {
        self.subscribers.get(topic_url).map(Vec::as_slice).unwrap_or_default()
    }
}
