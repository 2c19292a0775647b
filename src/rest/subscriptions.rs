//! Subscriptions in the write path (ADR 16). Every write transaction runs through a
//! [`SubscriptionTx`]: it matches each version written against the subscriptions in force and
//! records their events in the same transaction (the outbox), and it keeps each Subscription's
//! delivery state with the resource. Delivery is the job of `notify`.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use super::workflow::{live, Workflow};
use super::FhirService;
use crate::auth::scope::Permission;
use crate::auth::Access;
use crate::model::{FhirError, Issue, IssueCode};
use crate::search::index::index_resource;
use crate::store::subscription::{NewEvent, Registration};
use crate::store::{IndexRows, ResourceVersion, SearchQuery, StoreError, StoreResult, StoreTx};
use crate::subscriptions::request::Problem;
use crate::subscriptions::{topic, Checks, Index, Interaction, Judged, Subscriber, SubscriptionRequest, Topic};

/// The resource types subscriptions and their topics are stored as.
pub(super) const SUBSCRIPTION_TYPES: &[&str] = &["Subscription", "Basic"];

/// Topics read per page.
const TOPICS_PAGE: usize = 500;

/// The statuses a client may give a Subscription: the server makes it `active` after the
/// handshake, and `error` when deliveries keep failing.
const CLIENT_STATUSES: &[&str] = &["requested", "off"];

impl FhirService {
    /// The topics and subscriptions in force.
    pub fn subscription_index(&self) -> Arc<Index> {
        self.subscriptions.current()
    }

    /// Rebuilds the index of topics and subscriptions from the store (and the subscriptions
    /// being activated). Loads run one at a time, each reading the store after the one before
    /// it: a load that read older state never replaces a newer index.
    pub async fn load_subscriptions(&self) -> Result<(), StoreError> {
        let starting = self.starting_subscriptions.lock().await;
        let newest = self.newest_write(SUBSCRIPTION_TYPES).await?;
        let topics = self.stored_topics().await?;
        let in_force: Vec<_> = self
            .store
            .deliveries()
            .await?
            .into_iter()
            .filter(|d| starting.contains_key(&d.subscription_id) || matches!(d.status.as_str(), "active" | "error"))
            .collect();
        let keys: Vec<(String, String)> = in_force
            .iter()
            .filter(|d| !starting.contains_key(&d.subscription_id))
            .map(|d| ("Subscription".to_string(), d.subscription_id.clone()))
            .collect();
        let mut stored: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
        for version in self.store.read_many(&keys).await? {
            if let Ok(resource) = serde_json::from_slice(&version.body) {
                stored.insert(version.id, resource);
            }
        }
        let mut subscriptions = Vec::new();
        for delivery in in_force {
            let id = &delivery.subscription_id;
            let Some(resource) = starting.get(id).cloned().or_else(|| stored.remove(id)) else { continue };
            let access = match delivery.owner.as_deref().map(serde_json::from_str) {
                None => Access::Open,
                Some(Ok(claims)) => crate::auth::granted_access(&claims),
                Some(Err(_)) => continue,
            };
            subscriptions.push((resource, access));
        }
        let endpoints = self.config.subscriptions.endpoints;
        let (index, problems) =
            Index::build(&topics, subscriptions, &self.registry(), &self.config.base_url, endpoints);
        for problem in problems {
            tracing::warn!(%problem, "a stored topic or subscription is not in force");
        }
        self.subscriptions.replace(index, newest);
        Ok(())
    }

    /// The stored topics: the `Basic` resources coded as SubscriptionTopic, searched for
    /// rather than every Basic read.
    async fn stored_topics(&self) -> Result<Vec<Value>, StoreError> {
        let code = format!("{}|{}", topic::TOPIC_CODE_SYSTEM, topic::TOPIC_CODE);
        let condition = self.criterion("Basic", "code", &code).map_err(|error| StoreError::Refused(Box::new(error)))?;
        let mut query = SearchQuery::new("Basic", TOPICS_PAGE);
        query.all_of.push(condition);
        let mut topics = Vec::new();
        loop {
            let page = self.store.search(&query).await?;
            topics.extend(page.resources.iter().filter_map(|v| serde_json::from_slice::<Value>(&v.body).ok()));
            match page.next {
                Some(next) => query.cursor = Some(next),
                None => return Ok(topics),
            }
        }
    }

    /// Stores the built-in topics that are not stored yet (one deleted stays deleted).
    pub async fn install_topics(&self) -> Result<(), FhirError> {
        for resource in crate::subscriptions::built_in::topics() {
            let id = resource["id"].as_str().unwrap_or_default().to_string();
            let mut tx = self.begin(&Access::Open).await?;
            if tx.current("Basic", &id).await.map_err(super::store_error)?.is_some() {
                tx.rollback().await;
                continue;
            }
            let written =
                self.store_resource(tx.as_mut(), "Basic", &id, 1, resource, crate::store::WriteMethod::Update);
            match written.await {
                Ok(_) => tx.commit().await.map_err(super::store_error)?,
                Err(error) => {
                    tx.rollback().await;
                    return Err(error);
                }
            }
        }
        self.load_subscriptions().await.map_err(super::store_error)
    }

    /// Whether `subscriber`'s access reads `version`: it has events only of what it may read.
    pub(super) fn subscriber_reads(&self, subscriber: &Subscriber, version: &ResourceVersion) -> bool {
        match self.rule(&subscriber.access, Permission::Read, &version.resource_type) {
            Ok(rule) => self.admitted(rule.as_deref(), version),
            Err(_) => false,
        }
    }

    /// A Subscription read and checked against the topics in force.
    pub(super) fn subscription_request(&self, resource: &Value) -> Result<SubscriptionRequest, Problem> {
        let index = self.subscription_index();
        let checks = Checks {
            registry: &self.registry(),
            base_url: &self.config.base_url,
            topics: index.topics(),
            endpoints: self.config.subscriptions.endpoints,
        };
        SubscriptionRequest::parse(resource, &checks)
    }

    /// The content checks of a Subscription or a topic about to be stored (422 with where).
    pub(super) fn check_subscription_definition(&self, resource_type: &str, resource: &Value) -> Result<(), FhirError> {
        let problem = match resource_type {
            "Subscription" => self.subscription_request(resource).err().map(|p| (p.message, p.expression)),
            "Basic" if topic::is_topic(resource) => Topic::parse(resource, &self.registry(), &self.config.base_url)
                .err()
                .map(|message| (message, "Basic.extension".to_string())),
            _ => None,
        };
        match problem {
            None => Ok(()),
            Some((message, expression)) => {
                Err(FhirError::unprocessable(vec![Issue::error(IssueCode::Processing, message).at(&expression)]))
            }
        }
    }
}

/// The workflow that records the events a transaction's writes cause and keeps each
/// Subscription's delivery state (see the module documentation). It is the innermost layer, so
/// it sees the writes of every other workflow's settling too.
pub(super) struct SubscriptionTx {
    inner: Box<dyn StoreTx>,
    service: FhirService,
    access: Access,
    /// The server's own work (a handshake's outcome), which may set any status.
    server_work: bool,
    events: Vec<NewEvent>,
    /// Subscriptions written here, with their status before (`None`: new).
    subscriptions: Vec<(String, Option<String>)>,
    /// Whether the delivery workers have new work once this commits.
    deliveries_due: bool,
}

impl SubscriptionTx {
    pub(super) fn new(inner: Box<dyn StoreTx>, service: FhirService, access: Access, server_work: bool) -> Self {
        SubscriptionTx {
            inner,
            service,
            access,
            server_work,
            events: Vec::new(),
            subscriptions: Vec::new(),
            deliveries_due: false,
        }
    }

    /// The events `version` (about to be written, with `rows`) causes.
    async fn match_write(&mut self, version: &ResourceVersion, rows: &IndexRows) -> StoreResult<()> {
        // The index as it is now, at each write: a subscription activated since the
        // transaction began is matched.
        let index = self.service.subscription_index();
        let topics: Vec<Arc<Topic>> = index.watching(&version.resource_type).cloned().collect();
        if topics.is_empty() {
            return Ok(());
        }
        // A first version has nothing before it: no read (on SQLite, one on the writer).
        let previous = match version.version {
            1 => None,
            _ => self.inner.current(&version.resource_type, &version.id).await?.filter(|p| !p.deleted),
        };
        let interaction = match (&previous, version.deleted) {
            (_, true) => Interaction::Delete,
            (Some(_), false) => Interaction::Update,
            (None, false) => Interaction::Create,
        };
        let base_url = self.service.config.base_url.clone();
        let registry = self.service.registry();
        let parse = |v: &ResourceVersion| serde_json::from_slice::<Value>(&v.body).unwrap_or(Value::Null);
        let previous_content = previous.as_ref().map(parse);
        // Its index rows serve a trigger's `previous` criteria and the judging of a deletion;
        // other triggers look at its content only (FHIRPath): it is not indexed for them.
        let rows_needed = version.deleted
            || topics
                .iter()
                .flat_map(|t| &t.triggers)
                .any(|t| t.is_about(&version.resource_type) && t.query.as_ref().is_some_and(|q| q.previous.is_some()));
        let previous_rows = previous_content.as_ref().map(|c| match rows_needed {
            true => index_resource(&registry, c, &base_url),
            false => IndexRows::default(),
        });
        let current_content = (!version.deleted).then(|| parse(version));
        let previous_judged = match (&previous_content, &previous_rows) {
            (Some(resource), Some(rows)) => {
                Some(Judged { resource_type: &version.resource_type, id: &version.id, resource, rows })
            }
            _ => None,
        };
        let current_judged = current_content.as_ref().map(|resource| Judged {
            resource_type: &version.resource_type,
            id: &version.id,
            resource,
            rows,
        });
        // A deletion is judged, and its reader checked, by the version it deletes.
        let (Some(focus), Some(focus_version)) =
            (current_judged.as_ref().or(previous_judged.as_ref()), current_or(version, &previous))
        else {
            return Ok(());
        };
        let now = time::OffsetDateTime::now_utc();
        for topic in topics {
            let fires = topic.triggers.iter().any(|t| {
                t.is_about(&version.resource_type)
                    && t.fires(interaction, previous_judged.as_ref(), current_judged.as_ref())
            });
            if !fires {
                continue;
            }
            for subscriber in index.candidates(&topic.url, &version.resource_type, focus.rows) {
                if subscriber.request.ended(now) {
                    continue;
                }
                if subscriber.request.admits(focus) && self.service.subscriber_reads(subscriber, focus_version) {
                    self.events.push(NewEvent {
                        subscription: subscriber.id.clone(),
                        focus_type: version.resource_type.clone(),
                        focus_id: version.id.clone(),
                        focus_version: version.version,
                    });
                }
            }
        }
        Ok(())
    }

    /// A topic is in force for every subscriber: only a caller that may write every `Basic`
    /// (staff, a system, the server) adds, changes or retires one, and its URL names no other
    /// topic in force.
    async fn check_topic_write(&mut self, version: &ResourceVersion) -> StoreResult<()> {
        let written = (!version.deleted).then(|| serde_json::from_slice::<Value>(&version.body).ok()).flatten();
        let written = written.filter(topic::is_topic);
        let before = live(self.inner.as_mut(), "Basic", &version.id).await?;
        let was_topic = before.as_ref().is_some_and(topic::is_topic);
        if written.is_none() && !was_topic {
            return Ok(());
        }
        let permission = match (version.deleted, &before) {
            (true, _) => Permission::Delete,
            (false, None) => Permission::Create,
            (false, Some(_)) => Permission::Update,
        };
        if !self.service.reaches_all(&self.access, permission, "Basic") {
            return Err(super::workflow::refused(
                crate::model::ErrorKind::Forbidden,
                IssueCode::Forbidden,
                "a SubscriptionTopic is in force for every subscriber: only a client that may write every Basic \
                 adds, changes or retires one"
                    .into(),
            ));
        }
        let Some(url) = written.as_ref().and_then(topic::url_of) else { return Ok(()) };
        let index = self.service.subscription_index();
        match index.topic(url).filter(|other| other.basic_id != version.id) {
            Some(other) => Err(super::workflow::unprocessable(format!(
                "Basic/{} already carries the SubscriptionTopic {url}: a topic's URL names one topic",
                other.basic_id
            ))),
            None => Ok(()),
        }
    }

    /// A patient's or proxy's app has e-mail notifications sent only to its user's own address
    /// (an e-mail `telecom` of the signed-in user's resource as committed, not as changed in
    /// the same transaction): else any app could have the server mail whom it likes. Checked
    /// when the channel is new or changed; staff and systems are not confined. The problem, if
    /// any.
    async fn foreign_email(&mut self, id: &str, resource: &Value) -> StoreResult<Option<String>> {
        let channel = &resource["channel"];
        let Some(address) = channel["endpoint"].as_str().and_then(|e| e.strip_prefix("mailto:")) else {
            return Ok(None);
        };
        if channel["type"] != "email" || self.service.reaches_all(&self.access, Permission::Update, "Subscription") {
            return Ok(None);
        }
        let store = self.service.store.clone();
        let committed = |version: Option<ResourceVersion>| {
            version.filter(|v| !v.deleted).and_then(|v| serde_json::from_slice::<Value>(&v.body).ok())
        };
        let before = committed(store.read("Subscription", id).await?);
        if before.is_some_and(|before| {
            before["channel"]["type"] == channel["type"] && before["channel"]["endpoint"] == channel["endpoint"]
        }) {
            return Ok(None);
        }
        let user = match &self.access {
            Access::Token(grant) => grant.fhir_user.clone(),
            Access::Open => return Ok(None),
        };
        let user = match user.as_deref().and_then(|u| u.split_once('/')) {
            Some((resource_type, user_id)) => committed(store.read(resource_type, user_id).await?),
            None => None,
        };
        let own = user
            .as_ref()
            .is_some_and(|user| crate::mail::telecom_emails(user).any(|own| own.eq_ignore_ascii_case(address.trim())));
        Ok((!own).then(|| {
            "Subscription.channel.endpoint: a patient's app has notifications e-mailed only to its user's own \
             address (an email telecom of the signed-in user's Patient or RelatedPerson)"
                .to_string()
        }))
    }

    /// Checks the statuses of the Subscriptions written here and records their delivery state.
    async fn register_subscriptions(&mut self) -> StoreResult<()> {
        for (id, before) in std::mem::take(&mut self.subscriptions) {
            let Some(resource) = live(self.inner.as_mut(), "Subscription", &id).await? else {
                self.inner.register_subscription(&id, None).await?;
                continue;
            };
            let status = resource["status"].as_str().unwrap_or_default().to_string();
            let changed = before.as_deref() != Some(status.as_str());
            if changed && !self.server_work && !CLIENT_STATUSES.contains(&status.as_str()) {
                return Err(super::workflow::unprocessable(format!(
                    "Subscription/{id}: a client sets status requested (or off); the server makes it {status}"
                )));
            }
            if let Some(problem) = self.foreign_email(&id, &resource).await? {
                return Err(super::workflow::unprocessable(problem));
            }
            let channel = resource["channel"]["type"].as_str().unwrap_or_default().to_string();
            let heartbeat = crate::subscriptions::request::heartbeat_of(&resource);
            // The last token that wrote it is whose access it has: a patient who changes a
            // clinic's Subscription about them makes it theirs, never runs with the clinic's.
            let owner = match &self.access {
                Access::Token(grant) => grant.claims.as_ref().and_then(|c| serde_json::to_string(c.as_ref()).ok()),
                Access::Open => None,
            };
            let registration = Registration { status, channel, owner, heartbeat };
            self.inner.register_subscription(&id, Some(&registration)).await?;
        }
        Ok(())
    }
}

/// The version whose content a reader is checked against: the one written, or for a
/// deletion the one it deletes.
fn current_or<'a>(version: &'a ResourceVersion, previous: &'a Option<ResourceVersion>) -> Option<&'a ResourceVersion> {
    match version.deleted {
        false => Some(version),
        true => previous.as_ref(),
    }
}

#[async_trait]
impl Workflow for SubscriptionTx {
    fn inner(&mut self) -> &mut dyn StoreTx {
        self.inner.as_mut()
    }

    fn into_inner(self) -> Box<dyn StoreTx> {
        self.inner
    }

    async fn note(&mut self, version: &ResourceVersion, rows: &IndexRows) -> StoreResult<()> {
        if version.resource_type == "Basic" {
            self.check_topic_write(version).await?;
        }
        if version.resource_type == "Subscription" && !self.subscriptions.iter().any(|(id, _)| *id == version.id) {
            let before = live(self.inner.as_mut(), "Subscription", &version.id).await?;
            let status = before.map(|resource| resource["status"].as_str().unwrap_or_default().to_string());
            self.subscriptions.push((version.id.clone(), status));
        }
        self.match_write(version, rows).await
    }

    async fn settle(&mut self) -> StoreResult<()> {
        self.deliveries_due = !self.subscriptions.is_empty();
        self.register_subscriptions().await?;
        let recorded = self.inner.record_events(&std::mem::take(&mut self.events)).await?;
        self.deliveries_due |= recorded > 0;
        Ok(())
    }

    fn wake_after_commit(&mut self) -> Option<Arc<dyn super::workflow::Wake>> {
        self.deliveries_due.then(|| self.service.deliveries_due.clone() as Arc<dyn super::workflow::Wake>)
    }
}
