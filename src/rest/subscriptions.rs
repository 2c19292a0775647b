//! Subscriptions in the write path (ADR 16). Every write transaction runs through a
//! [`SubscriptionTx`]: it matches each version written against the subscriptions in force and
//! records their events in the same transaction (the outbox), and it keeps each Subscription's
//! delivery state with the resource. Delivery is the job of `notify`.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;

use super::FhirService;
use crate::auth::scope::Permission;
use crate::auth::Access;
use crate::model::{FhirError, Issue, IssueCode};
use crate::search::index::index_resource;
use crate::store::subscription::{NewEvent, Registration};
use crate::store::{IndexRows, JobStep, ResourceVersion, SearchPage, SearchQuery, StoreError, StoreResult, StoreTx};
use crate::subscriptions::request::Problem;
use crate::subscriptions::{topic, Checks, Index, Interaction, Judged, SubscriptionRequest, Topic};

/// The resource types subscriptions and their topics are stored as.
pub(super) const SUBSCRIPTION_TYPES: &[&str] = &["Subscription", "Basic"];

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
        let topics = self.stored(&["Basic"]).await?;
        let mut subscriptions = Vec::new();
        for delivery in self.store.deliveries().await? {
            let starts = starting.get(&delivery.subscription_id).cloned();
            if starts.is_none() && !matches!(delivery.status.as_str(), "active" | "error") {
                continue;
            }
            let resource = match starts {
                Some(resource) => resource,
                None => {
                    let Some(stored) = self.store.read("Subscription", &delivery.subscription_id).await? else {
                        continue;
                    };
                    let Ok(resource) = serde_json::from_slice::<Value>(&stored.body) else { continue };
                    resource
                }
            };
            let access = match delivery.owner.as_deref().map(serde_json::from_str) {
                None => Access::Open,
                Some(Ok(claims)) => crate::auth::granted_access(&claims),
                Some(Err(_)) => continue,
            };
            subscriptions.push((resource, access));
        }
        let allow_http = self.config.subscriptions.allow_http;
        let (index, problems) =
            Index::build(&topics, subscriptions, &self.registry(), &self.config.base_url, allow_http);
        for problem in problems {
            tracing::warn!(%problem, "a stored topic or subscription is not in force");
        }
        self.subscriptions.replace(index, newest);
        Ok(())
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

    /// A Subscription read and checked against the topics in force.
    pub(super) fn subscription_request(&self, resource: &Value) -> Result<SubscriptionRequest, Problem> {
        let index = self.subscription_index();
        let checks = Checks {
            registry: &self.registry(),
            base_url: &self.config.base_url,
            topics: index.topics(),
            allow_http: self.config.subscriptions.allow_http,
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

/// A write transaction that records the events its writes cause and keeps each Subscription's
/// delivery state (see the module documentation). It is the innermost layer, so it sees the
/// writes of every workflow's settling too.
pub(super) struct SubscriptionTx {
    inner: Box<dyn StoreTx>,
    service: FhirService,
    access: Access,
    /// The server's own work (a handshake's outcome), which may set any status.
    server_work: bool,
    events: Vec<NewEvent>,
    /// Subscriptions written here, with their status before (`None`: new).
    subscriptions: Vec<(String, Option<String>)>,
}

impl SubscriptionTx {
    pub(super) fn new(inner: Box<dyn StoreTx>, service: FhirService, access: Access, server_work: bool) -> Self {
        SubscriptionTx { inner, service, access, server_work, events: Vec::new(), subscriptions: Vec::new() }
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
        let previous = self.inner.current(&version.resource_type, &version.id).await?.filter(|p| !p.deleted);
        let interaction = match (&previous, version.deleted) {
            (_, true) => Interaction::Delete,
            (Some(_), false) => Interaction::Update,
            (None, false) => Interaction::Create,
        };
        let base_url = self.service.config.base_url.clone();
        let registry = self.service.registry();
        let parse = |v: &ResourceVersion| serde_json::from_slice::<Value>(&v.body).unwrap_or(Value::Null);
        let previous_content = previous.as_ref().map(parse);
        let previous_rows = previous_content.as_ref().map(|c| index_resource(&registry, c, &base_url));
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
        for topic in topics {
            let fires = topic.triggers.iter().any(|t| {
                t.is_about(&version.resource_type)
                    && t.fires(interaction, previous_judged.as_ref(), current_judged.as_ref())
            });
            if !fires {
                continue;
            }
            for subscriber in index.candidates(&topic.url, &version.resource_type, focus.rows) {
                let readable = match self.service.rule(&subscriber.access, Permission::Read, &version.resource_type) {
                    Ok(rule) => self.service.admitted(rule.as_deref(), focus_version),
                    Err(_) => false,
                };
                if readable && subscriber.request.admits(focus) {
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

    /// Checks the statuses of the Subscriptions written here and records their delivery state.
    async fn register_subscriptions(&mut self) -> StoreResult<()> {
        for (id, before) in std::mem::take(&mut self.subscriptions) {
            let Some(current) = self.inner.current("Subscription", &id).await?.filter(|v| !v.deleted) else {
                self.inner.register_subscription(&id, None).await?;
                continue;
            };
            let resource: Value = serde_json::from_slice(&current.body).unwrap_or(Value::Null);
            let status = resource["status"].as_str().unwrap_or_default().to_string();
            let changed = before.as_deref() != Some(status.as_str());
            if changed && !self.server_work && !CLIENT_STATUSES.contains(&status.as_str()) {
                return Err(super::workflow::unprocessable(format!(
                    "Subscription/{id}: a client sets status requested (or off); the server makes it {status}"
                )));
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
impl StoreTx for SubscriptionTx {
    async fn current(&mut self, resource_type: &str, id: &str) -> StoreResult<Option<ResourceVersion>> {
        self.inner.current(resource_type, id).await
    }

    async fn vread(&mut self, resource_type: &str, id: &str, version: i64) -> StoreResult<Option<ResourceVersion>> {
        self.inner.vread(resource_type, id, version).await
    }

    async fn search(&mut self, query: &SearchQuery) -> StoreResult<SearchPage> {
        self.inner.search(query).await
    }

    async fn write(&mut self, version: ResourceVersion, index: IndexRows) -> StoreResult<()> {
        if version.resource_type == "Subscription" && !self.subscriptions.iter().any(|(id, _)| *id == version.id) {
            let before = self.inner.current("Subscription", &version.id).await?.filter(|v| !v.deleted);
            let status = before.map(|v| {
                let resource: Value = serde_json::from_slice(&v.body).unwrap_or(Value::Null);
                resource["status"].as_str().unwrap_or_default().to_string()
            });
            self.subscriptions.push((version.id.clone(), status));
        }
        self.match_write(&version, &index).await?;
        self.inner.write(version, index).await
    }

    async fn reindex(&mut self, batch: &[(ResourceVersion, IndexRows)]) -> StoreResult<usize> {
        self.inner.reindex(batch).await
    }

    async fn job_step(&mut self, step: &JobStep<'_>) -> StoreResult<bool> {
        self.inner.job_step(step).await
    }

    async fn enqueue_job(&mut self, kind: &str, parameters: &str, not_before: OffsetDateTime) -> StoreResult<i64> {
        self.inner.enqueue_job(kind, parameters, not_before).await
    }

    async fn register_subscription(&mut self, id: &str, registration: Option<&Registration>) -> StoreResult<()> {
        self.inner.register_subscription(id, registration).await
    }

    async fn record_events(&mut self, events: &[NewEvent]) -> StoreResult<usize> {
        self.inner.record_events(events).await
    }

    async fn commit(mut self: Box<Self>) -> StoreResult<()> {
        let wrote_subscriptions = !self.subscriptions.is_empty();
        let settled = match self.register_subscriptions().await {
            Ok(()) => self.inner.record_events(&std::mem::take(&mut self.events)).await,
            Err(error) => Err(error),
        };
        let recorded = match settled {
            Ok(recorded) => recorded,
            Err(error) => {
                self.inner.rollback().await;
                return Err(error);
            }
        };
        self.inner.commit().await?;
        if recorded > 0 || wrote_subscriptions {
            self.service.deliveries_due.notify_one();
        }
        Ok(())
    }

    async fn rollback(self: Box<Self>) {
        self.inner.rollback().await
    }
}
