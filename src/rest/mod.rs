//! The FHIR REST interactions (FHIR R4 http.html), independent of any web framework.
//!
//! A [`FhirRequest`] (method, path relative to the base, query, the headers that matter, parsed
//! body) goes in and a [`FhirResponse`] comes out. Batch and transaction entries are dispatched
//! through the very same code, which is why nothing here knows about axum.

mod audit_events;
mod audit_seal;
mod audit_trail;
mod audited;
mod billing;
mod bundle;
mod bundle_writer;
pub mod capability;
mod export;
mod guard;
mod history;
mod hold_expiry;
mod jobs;
mod mail;
mod messaging;
mod notify;
mod operation;
mod operation_tx;
pub mod profiles;
mod refills;
mod reindex;
mod reminders;
mod route;
mod scheduling;
mod search;
mod source;
mod stored_definitions;
mod subscriptions;
mod view;
pub mod websocket;
mod workflow;
mod write;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use time::OffsetDateTime;

use crate::auth::Access;
use crate::live::Live;
use crate::model::{ErrorKind, FhirError};
use crate::operations::{definition, Level};
use crate::search::params::Paging;
use crate::search::Registry;
use crate::store::{Store, StoreError};
use crate::validation::Definitions;

pub use bundle_writer::BundleWriter;
pub use operation::{OperationContext, PublishedView};
pub use operation_tx::OperationTx;
pub use route::Route;
use search::SearchScope;
use source::Source;
pub use view::{Lookup, ReadView};
pub use write::version_response;

/// HTTP methods of FHIR interactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    /// Parses an HTTP method name.
    pub fn parse(name: &str) -> Option<Method> {
        match name {
            "GET" => Some(Method::Get),
            "HEAD" => Some(Method::Head),
            "POST" => Some(Method::Post),
            "PUT" => Some(Method::Put),
            "PATCH" => Some(Method::Patch),
            "DELETE" => Some(Method::Delete),
            _ => None,
        }
    }

    /// The HTTP name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    fn writes(self) -> bool {
        matches!(self, Method::Post | Method::Put | Method::Patch | Method::Delete)
    }
}

/// What `Prefer: return=…` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreferReturn {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

/// Which patch format a PATCH body is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchFormat {
    JsonPatch,
    MergePatch,
    FhirPathPatch,
}

/// The request headers FHIR interactions look at.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
    pub if_none_exist: Option<String>,
    pub if_modified_since: Option<OffsetDateTime>,
    pub prefer_return: PreferReturn,
    /// `Prefer: handling=strict`.
    pub strict: bool,
    /// `Prefer: handling=lenient`: an operation ignores parameters it does not know.
    pub lenient: bool,
}

/// One FHIR interaction request.
#[derive(Debug, Clone)]
pub struct FhirRequest {
    pub method: Method,
    /// Path relative to the FHIR base, without query (`Patient/1`).
    pub path: String,
    /// Decoded query parameters in order.
    pub query: Vec<(String, String)>,
    pub conditions: Conditions,
    pub body: Option<Value>,
    /// Set for PATCH bodies.
    pub patch_format: Option<PatchFormat>,
    /// What the caller may do (every entry of a bundle inherits the bundle's).
    pub access: Access,
    /// A read of a Binary's raw content: the Binary as stored is read, its content named
    /// rather than inlined, and the content is streamed from the store (ADR 11).
    pub content: bool,
}

impl FhirRequest {
    /// A request with no body and no conditions.
    pub fn new(method: Method, path: &str, query: Vec<(String, String)>) -> Self {
        FhirRequest {
            method,
            path: path.to_string(),
            query,
            conditions: Conditions::default(),
            body: None,
            patch_format: None,
            access: Access::Open,
            content: false,
        }
    }
}

/// A response body.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    None,
    /// Compact JSON bytes, ready to send (stored resources, bundles assembled from them).
    Raw(Bytes),
    /// A JSON value built for this response (OperationOutcome, CapabilityStatement…).
    Json(Value),
    /// Bytes that are not a FHIR resource, served as they are with their own media type
    /// (the `$bulk-publish` manifest and its NDJSON files).
    Document {
        content_type: &'static str,
        bytes: Bytes,
    },
    /// A file served as it is, streamed from disk (an export's NDJSON).
    File {
        content_type: &'static str,
        path: std::path::PathBuf,
    },
}

/// One FHIR interaction response.
#[derive(Debug, Clone, PartialEq)]
pub struct FhirResponse {
    pub status: u16,
    /// Absolute `Location` (with `_history/n`) of a created or updated resource.
    pub location: Option<String>,
    /// The version shown in `ETag: W/"n"`.
    pub version: Option<i64>,
    pub last_modified: Option<OffsetDateTime>,
    /// Further headers (`Content-Location` and `X-Progress` of asynchronous requests).
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

impl FhirResponse {
    /// A response with only a status and a body.
    pub fn new(status: u16, body: Body) -> Self {
        FhirResponse { status, location: None, version: None, last_modified: None, headers: Vec::new(), body }
    }
}

/// Settings of the FHIR service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The public FHIR base URL (`http://localhost:8080/fhir`), used in links and locations.
    pub base_url: String,
    pub paging: Paging,
    /// The most entries a batch or transaction may hold.
    pub max_bundle_entries: usize,
    /// The CapabilityStatement's `rest.security` (SMART on FHIR), when authorization is on.
    pub security: Option<Value>,
    pub scheduling: crate::portal::scheduling::SchedulingSettings,
    /// What uploaded files may be.
    pub uploads: crate::model::upload::UploadRules,
    pub messaging: crate::portal::messaging::MessagingSettings,
    /// Profiles required per type, and whether unknown ones are accepted.
    pub profiles: profiles::ProfilePolicy,
    /// How long an invitation's registration link is valid (`$invite`).
    pub invite_ttl: time::Duration,
    /// Where queued e-mail goes.
    pub mailer: crate::mail::Mailer,
    pub subscriptions: SubscriptionSettings,
    pub audit: crate::audit::AuditSettings,
    pub export: crate::export::ExportSettings,
}

/// How subscriptions are delivered.
#[derive(Debug, Clone)]
pub struct SubscriptionSettings {
    /// Where rest-hook notifications may go (`--allow-http-rest-hooks`,
    /// `--allow-private-rest-hooks`).
    pub endpoints: crate::subscriptions::endpoint::EndpointPolicy,
    /// How long before an appointment starts its reminder is due, for subscriptions that do
    /// not say (`--appointment-reminder-hours`).
    pub appointment_reminder_lead: std::time::Duration,
    /// How often each node scans for reminders that are due.
    pub reminder_scan: std::time::Duration,
    /// How long events are kept for `$events` and delivery (`--subscription-event-days`).
    pub event_retention: time::Duration,
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        SubscriptionSettings {
            endpoints: Default::default(),
            appointment_reminder_lead: std::time::Duration::from_secs(24 * 3600),
            reminder_scan: std::time::Duration::from_secs(60),
            event_retention: time::Duration::days(30),
        }
    }
}

impl ServiceConfig {
    /// The public URL of the server (the FHIR base without `/fhir`): where its own pages, such
    /// as those of one-time links, are.
    pub fn server_url(&self) -> &str {
        self.base_url.trim_end_matches("/fhir")
    }
}

/// The FHIR interactions over one store.
#[derive(Clone)]
pub struct FhirService {
    store: Arc<dyn Store>,
    registry: Arc<Live<Registry>>,
    /// The profiles in force (carried, the operator's packages', stored).
    definitions: Arc<Live<Definitions>>,
    config: Arc<ServiceConfig>,
    /// Wakes this node's job worker when a job is queued here.
    jobs_queued: Arc<tokio::sync::Notify>,
    /// The index rows access checks needed.
    access_rows: Arc<guard::AccessRows>,
    /// The topics and subscriptions in force.
    subscriptions: Arc<Live<crate::subscriptions::Index>>,
    /// Wakes this node's delivery worker and websocket sessions when a write recorded events here.
    deliveries_due: Arc<notify::DeliveriesDue>,
    /// Subscriptions this node is activating (id, content), in the index before their
    /// activation commits so that no write committed after it is missed (the store records
    /// events of active subscriptions only); its lock makes index loads run one at a time.
    starting_subscriptions: Arc<tokio::sync::Mutex<std::collections::HashMap<String, Value>>>,
    /// The node's writer of AuditEvents of requests that write nothing.
    recorder: crate::audit::Recorder,
    /// The node's bulk export state (its directory, status polls, workers' wake-up).
    exports: Arc<export::Exports>,
}

/// How many resource versions' access-check index rows are kept.
const ACCESS_ROWS_CACHED: usize = 50_000;

impl FhirService {
    /// A service over `store` with the standard R4 search parameters; call
    /// [`FhirService::load_search_parameters`] and [`FhirService::load_profiles`] to add the
    /// definitions stored in it.
    pub fn new(store: Arc<dyn Store>, config: ServiceConfig) -> Self {
        FhirService {
            recorder: crate::audit::Recorder::new(
                store.clone(),
                config
                    .audit
                    .record
                    .then(|| config.audit.spool_dir.clone().unwrap_or_else(crate::audit::state_spool_dir)),
            ),
            store,
            registry: Arc::new(Live::new(Registry::standard().clone())),
            definitions: Arc::new(Live::new(Definitions::with(&[]))),
            config: Arc::new(config),
            jobs_queued: Arc::new(tokio::sync::Notify::new()),
            access_rows: Arc::new(crate::bounded::BoundedMap::new(ACCESS_ROWS_CACHED)),
            subscriptions: Arc::new(Live::new(crate::subscriptions::Index::default())),
            deliveries_due: Arc::default(),
            starting_subscriptions: Arc::default(),
            exports: Arc::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// The store behind the service (for readiness checks).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The size and the chunks of the content a Binary read as stored names (`None` when its
    /// `data` is inline, ADR 11), each chunk read from the store as the one before has been
    /// sent: a download holds one chunk in memory, however large the file. The caller has read
    /// the Binary under its access rules.
    pub fn content_stream(
        &self,
        stored_binary: &[u8],
    ) -> Option<(u64, impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static)> {
        let named = crate::store::content::stored_content_of(stored_binary)?;
        let (store, chunks, size) = (self.store.clone(), named.chunk_count(), named.size);
        let stream = futures::stream::try_unfold(0i64, move |seq| {
            let (store, sha256) = (store.clone(), named.sha256.clone());
            async move {
                if seq >= chunks {
                    return Ok(None);
                }
                match store.content_chunk(&sha256, seq).await {
                    Ok(Some(chunk)) => Ok(Some((chunk, seq + 1))),
                    Ok(None) => Err(std::io::Error::other(format!("chunk {seq} of content {sha256} is missing"))),
                    Err(error) => Err(std::io::Error::other(error.to_string())),
                }
            }
        });
        Some((size, stream))
    }

    /// Carries out one interaction; writes run in their own database transaction. A write that
    /// lost a race with a concurrent writer (two transactions creating the same new id) is
    /// retried from the start, so the loser becomes the next version instead of failing.
    pub async fn handle(&self, request: FhirRequest) -> Result<FhirResponse, FhirError> {
        let outcome = retrying(|| self.handle_once(&request)).await;
        if outcome.is_ok() {
            self.reload_after(&request).await.map_err(store_error)?;
        }
        outcome
    }

    async fn handle_once(&self, request: &FhirRequest) -> Result<FhirResponse, FhirError> {
        let route = Route::parse(&request.path)?;
        if route == Route::System && request.method == Method::Post {
            return self.process_bundle(request).await;
        }
        let request = request.clone();
        if request.method.writes() && matches!(route, Route::Type(_) | Route::Instance(..)) {
            let mut tx = self.begin(&request.access).await?;
            match self.dispatch(&mut Source::Tx(tx.as_mut()), route, request).await {
                Ok(response) => {
                    tx.commit().await.map_err(store_error)?;
                    Ok(response)
                }
                Err(error) => {
                    tx.rollback().await;
                    Err(error)
                }
            }
        } else if request.content {
            self.dispatch(&mut Source::Stored(self.store.as_ref()), route, request).await
        } else {
            self.dispatch(&mut Source::Store(self.store.as_ref()), route, request).await
        }
    }

    /// Routes one interaction to its implementation, reading and writing through `source`.
    async fn dispatch(
        &self,
        source: &mut Source<'_>,
        route: Route,
        request: FhirRequest,
    ) -> Result<FhirResponse, FhirError> {
        use Method::*;

        // The caller's access outlives the request, which some arms take apart.
        let access = &request.access.clone();
        match (request.method, route) {
            (Get | Head, Route::Metadata) => Ok(capability::response(
                &self.registry(),
                &self.definitions(),
                &self.config.base_url,
                self.config.security.as_ref(),
                self.subscription_index().topics(),
            )),
            (Get | Head, Route::SystemHistory) => {
                self.history(&mut self.view(source, access), crate::store::HistoryScope::System, &request).await
            }
            (Get | Head, Route::TypeHistory(t)) => {
                self.history(&mut self.view(source, access), crate::store::HistoryScope::Type(t), &request).await
            }
            (Get | Head, Route::InstanceHistory(t, id)) => {
                self.history(&mut self.view(source, access), crate::store::HistoryScope::Instance(t, id), &request)
                    .await
            }
            (Get | Head, Route::Instance(t, id)) if t == "AuditEvent" => self.read_audit_event(access, &id).await,
            (Get | Head, Route::Version(t, id, 1)) if t == "AuditEvent" => self.read_audit_event(access, &id).await,
            (Get | Head, Route::Type(t)) | (Post, Route::TypeSearch(t)) if t == "AuditEvent" => {
                self.search_audit_events(&request).await
            }
            (Get | Head, Route::Instance(t, id)) if t == "OperationDefinition" && definition::by_id(&id).is_some() => {
                self.rule(access, crate::auth::scope::Permission::Read, "OperationDefinition")?;
                self.operation_definition(&id)
            }
            (Get | Head, Route::Instance(t, id)) => {
                self.read(&mut self.view(source, access), &t, &id, &request.conditions).await
            }
            (Get | Head, Route::Version(t, id, v)) => self.vread(&mut self.view(source, access), &t, &id, v).await,
            (Get | Head, Route::Type(t)) | (Post, Route::TypeSearch(t)) => {
                let scope = SearchScope {
                    resource_types: vec![t.clone()],
                    path: t,
                    required: Vec::new(),
                    link_params: Vec::new(),
                };
                self.search(&mut self.view(source, access), scope, &request).await
            }
            (Get | Head, Route::Compartment(compartment, id, t)) => {
                let membership = crate::search::compartment::membership(&compartment, &id, &t).ok_or_else(|| {
                    FhirError::not_found(format!("{t} resources are never in a {compartment} compartment"))
                })?;
                let path = format!("{compartment}/{id}/{t}");
                let scope =
                    SearchScope { resource_types: vec![t], path, required: vec![membership], link_params: Vec::new() };
                self.search(&mut self.view(source, access), scope, &request).await
            }
            (Get | Head, Route::System) => {
                let mut request = request;
                let (resource_types, link_params) = system_search_types(&mut request.query)?;
                let scope = SearchScope { resource_types, path: String::new(), required: Vec::new(), link_params };
                self.search(&mut self.view(source, access), scope, &request).await
            }
            (_, Route::SystemOperation(name)) => self.invoke(source.reborrow(), Level::System, &name, request).await,
            (_, Route::TypeOperation(t, name)) => self.invoke(source.reborrow(), Level::Type(t), &name, request).await,
            (_, Route::InstanceOperation(t, id, name)) => {
                self.invoke(source.reborrow(), Level::Instance(t, id), &name, request).await
            }
            (Post, Route::Type(t)) => self.create(source.tx()?, &t, request).await,
            (Put, Route::Instance(t, id)) => self.update(source.tx()?, &t, &id, request).await,
            (Put, Route::Type(t)) => self.conditional_update(source.tx()?, &t, request).await,
            (Patch, Route::Instance(t, id)) => self.patch(source.tx()?, &t, &id, request).await,
            (Patch, Route::Type(t)) => self.conditional_patch(source.tx()?, &t, request).await,
            (Delete, Route::Instance(t, id)) => self.delete(source.tx()?, &t, &id, &request.conditions).await,
            (Delete, Route::Type(t)) => self.conditional_delete(source.tx()?, &t, request).await,
            (Get | Head, Route::Job(id)) => match self.export_status(access, id).await? {
                Some(response) => Ok(response),
                None => self.job_status(access, id).await,
            },
            (Delete, Route::Job(id)) => match self.delete_export(access, id).await? {
                Some(response) => Ok(response),
                None => self.cancel_job(access, id).await,
            },
            (Get | Head, Route::JobFile(id, file)) => self.export_file(access, id, &file).await,
            (method, route) => Err(FhirError::method_not_allowed(
                format!(
                    "{} is not allowed on {}; allowed: {}",
                    method.as_str(),
                    route.describe(),
                    route.allowed_methods()
                ),
                route.allowed_methods(),
            )),
        }
    }

    /// The caller's read view over `source`.
    fn view<'s>(&'s self, source: &'s mut Source<'_>, access: &'s Access) -> ReadView<'s> {
        ReadView::new(self, access, source.reborrow())
    }

    /// Absolute URL of a resource.
    fn resource_url(&self, resource_type: &str, id: &str) -> String {
        format!("{}/{resource_type}/{id}", self.config.base_url)
    }

    /// Absolute URL of a resource version (the `Location` header).
    fn version_url(&self, resource_type: &str, id: &str, version: i64) -> String {
        format!("{}/_history/{version}", self.resource_url(resource_type, id))
    }
}

/// Takes `_type` out of a system search's parameters: the listed types (or every type), and
/// the `_type` parameters for the links.
type TypesAndLinkParams = (Vec<String>, Vec<(String, String)>);
fn system_search_types(query: &mut Vec<(String, String)>) -> Result<TypesAndLinkParams, FhirError> {
    let (type_params, rest): (Vec<_>, Vec<_>) = query.drain(..).partition(|(name, _)| name == "_type");
    *query = rest;
    let listed: Vec<String> = type_params.iter().flat_map(|(_, v)| v.split(',').map(str::to_string)).collect();
    if let Some(unknown) = listed.iter().find(|t| !crate::model::validate::is_resource_type(t)) {
        return Err(FhirError::bad_request(format!("_type: '{unknown}' is not a resource type")));
    }
    if listed.is_empty() {
        return Ok((crate::model::validate::resource_types().into_iter().map(str::to_string).collect(), type_params));
    }
    Ok((listed, type_params))
}

/// How often a write that lost a race is tried in all.
const WRITE_ATTEMPTS: usize = 3;

/// Runs `write` again while it loses a race with a concurrent writer (409), [`WRITE_ATTEMPTS`]
/// times in all; the last outcome.
async fn retrying<T, F: std::future::Future<Output = Result<T, FhirError>>>(
    mut write: impl FnMut() -> F,
) -> Result<T, FhirError> {
    let mut attempt = 1;
    loop {
        match write().await {
            Err(error) if attempt < WRITE_ATTEMPTS && error.kind == ErrorKind::WriteConflict => attempt += 1,
            outcome => return outcome,
        }
    }
}

/// Storage failures as FHIR errors: conflicts are 409, the rest is logged and hidden.
fn store_error(error: StoreError) -> FhirError {
    match error {
        StoreError::Conflict => FhirError::new(
            ErrorKind::WriteConflict,
            crate::model::IssueCode::Conflict,
            "a concurrent write to the same resource won; retry with the current version",
        ),
        StoreError::Forbidden(message) => FhirError::forbidden(message),
        StoreError::Hidden(message) => FhirError::not_found(message),
        StoreError::Refused(error) => *error,
        other => {
            tracing::error!(error = %other, "storage failure");
            FhirError::internal()
        }
    }
}
