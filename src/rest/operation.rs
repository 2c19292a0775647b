//! Invoking a FHIR operation: the common steps in front of every operation of
//! [`crate::operations`], and the [`OperationContext`] through which an operation reaches data.

use std::sync::Arc;

use serde_json::Value;

use super::operation_tx::OperationTx;
use super::source::Source;
use super::view::{Lookup, ReadView};
use super::{Body, FhirRequest, FhirResponse, FhirService, Method};
use crate::model::validate::validate_resource;
use crate::model::FhirError;
use crate::operations::{self, inputs, Level, Needs, Registered};
use crate::search::criteria::{parse_criterion, Context, ValueSets};
use crate::search::params::parse_search;
use crate::search::params::Paging;
use crate::search::Registry;
use crate::store::{Condition, ResourceVersion, SearchQuery};

/// What an operation may use while it runs: the caller's guarded read view, the instance it
/// was invoked on (read through that view), and the few services operations share. There is
/// no way from here to the store that skips the caller's access.
pub struct OperationContext<'a> {
    /// Reads as the caller.
    pub view: ReadView<'a>,
    service: &'a FhirService,
    instance: Option<ResourceVersion>,
    cursor: Option<String>,
    read_only: bool,
    if_none_match: Option<String>,
    /// The invocation's URL, without its parameters when they came in a body.
    request_url: String,
    /// `Prefer: handling=lenient`, and the URL parameters it made the layer ignore.
    lenient: bool,
    ignored: Vec<String>,
}

impl OperationContext<'_> {
    /// The current version of the instance an instance-level operation that needs
    /// [`Needs::ReadInstance`] was invoked on.
    pub fn instance(&self) -> Option<&ResourceVersion> {
        self.instance.as_ref()
    }

    /// The instance of an operation defined at instance level only, with its content: the
    /// layer read it before the operation ran (a missing one is the layer's fault, a 500).
    pub fn required_instance(&self) -> Result<(ResourceVersion, Value), FhirError> {
        let instance = self.instance.clone().ok_or_else(FhirError::internal)?;
        let resource = serde_json::from_slice(&instance.body).map_err(|_| FhirError::internal())?;
        Ok((instance, resource))
    }

    /// A one-time registration link for the person `fhir_user` names, and when it expires; 422
    /// when the resource cannot be invited (no birth date, a RelatedPerson of no Patient).
    pub async fn invite(&mut self, fhir_user: &str) -> Result<(String, time::OffsetDateTime), FhirError> {
        use crate::auth::registration::{invite, registration_link};
        let ttl = self.service.config.invite_ttl;
        let token = invite(self.service.store().as_ref(), fhir_user, ttl).await.map_err(invite_error)?;
        Ok((registration_link(self.service.config.server_url(), &token), time::OffsetDateTime::now_utc() + ttl))
    }

    /// Whether the server sends e-mail (`--smtp-url`).
    pub fn sends_email(&self) -> bool {
        self.service.config.mailer.sends()
    }

    /// Queues the e-mail of an invitation for `fhir_user` to `to` (its link is minted when it
    /// is sent); 422 when the resource cannot be invited.
    pub async fn queue_invitation(&mut self, fhir_user: &str, to: &str) -> Result<(), FhirError> {
        use crate::auth::registration::check_invitable;
        check_invitable(self.service.store().as_ref(), fhir_user).await.map_err(invite_error)?;
        let purpose = crate::mail::Purpose::Invitation { fhir_user: fhir_user.to_string(), to: to.to_string() };
        self.service.queue_mail(&crate::mail::Queued::new(purpose)).await
    }

    /// The `_cursor` of a paged operation's link, when the request follows one.
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// The request's `If-None-Match` header.
    pub fn if_none_match(&self) -> Option<&str> {
        self.if_none_match.as_deref()
    }

    /// The invocation's absolute URL (without the parameters of a POST body).
    pub fn request_url(&self) -> String {
        self.request_url.clone()
    }

    /// Whether the client asked for `Prefer: handling=lenient`.
    pub fn lenient(&self) -> bool {
        self.lenient
    }

    /// The URL parameters the operation does not define, which `handling=lenient` ignored.
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// The caller's token claims, to run later with the same access (checked again then).
    pub fn claims(&self) -> Option<crate::auth::tokens::AccessClaims> {
        match self.view.access() {
            crate::auth::Access::Token(grant) => grant.claims.as_deref().cloned(),
            crate::auth::Access::Open => None,
        }
    }

    /// The snapshot kept under `at`, when `at` is the `transactionTime` of an export.
    pub async fn export_mark_at(&mut self, at: time::OffsetDateTime) -> Result<Option<crate::store::Mark>, FhirError> {
        self.service.store.mark_at(at).await.map_err(super::store_error)
    }

    /// Takes the snapshot of `request` and queues it (202 with the status URL), or 429 when
    /// the client has as many exports running as it may.
    pub async fn queue_export(&mut self, request: crate::export::ExportRequest) -> Result<FhirResponse, FhirError> {
        self.service.queue_export(self.view.access(), request).await
    }

    /// Whether it was invoked with GET (or HEAD), which must change nothing.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The public FHIR base URL.
    pub fn base_url(&self) -> &str {
        &self.service.config.base_url
    }

    /// The server's page sizes.
    pub fn paging(&self) -> Paging {
        self.service.config.paging
    }

    /// The search parameters in force.
    pub fn registry(&self) -> Arc<Registry> {
        self.service.registry()
    }

    /// The condition group of one search criterion (`name=value`) on `resource_type`.
    pub fn criterion(&self, resource_type: &str, name: &str, value: &str) -> Result<Vec<Condition>, FhirError> {
        self.service.criterion(resource_type, name, value)
    }

    /// The absolute URL of a resource (a `fullUrl`).
    pub fn resource_url(&self, resource_type: &str, id: &str) -> String {
        self.service.resource_url(resource_type, id)
    }

    /// The checks a create or update of `resource` as a `resource_type` would make, storing
    /// nothing.
    pub fn check_content(&self, resource_type: &str, resource: &Value) -> Result<(), FhirError> {
        validate_resource(resource, resource_type)?;
        self.service.check_definition(resource_type, resource)?;
        self.service.check_profiles(resource_type, resource)
    }

    /// The problems of `resource` against the profile with canonical url `profile`, errors and
    /// warnings; `None` when the server does not carry it.
    pub fn profile_issues(&self, resource: &Value, profile: &str) -> Option<Vec<crate::model::Issue>> {
        let findings = crate::validation::against_profile(&self.service.definitions(), resource, profile)?;
        Some(findings.into_iter().map(crate::validation::Finding::into_issue).collect())
    }

    /// Queues a background job (202 with the status URL).
    pub async fn queue_job(&mut self, kind: &str, parameters: &str, what: &str) -> Result<FhirResponse, FhirError> {
        self.service.queue_job(kind, parameters, what).await
    }

    /// The delivery state of a Subscription (the caller has read the Subscription).
    pub async fn subscription_delivery(
        &mut self,
        id: &str,
    ) -> Result<Option<crate::store::subscription::Delivery>, FhirError> {
        self.service.store.delivery(id).await.map_err(super::store_error)
    }

    /// Events `first..=last` (at most `limit`) of a Subscription the caller has read, as the
    /// caller may see them now.
    pub async fn subscription_events(
        &mut self,
        id: &str,
        (first, last): (i64, i64),
        limit: usize,
        payload: crate::subscriptions::Payload,
    ) -> Result<Vec<crate::subscriptions::notification::Event>, FhirError> {
        let stored =
            self.service.store.subscription_events(id, first, last, limit).await.map_err(super::store_error)?;
        self.service.shown_events(self.view.access(), &stored, payload).await
    }

    /// A websocket binding token for Subscriptions the caller has read.
    pub async fn ws_binding_token(
        &mut self,
        subscriptions: &[(String, Value)],
    ) -> Result<super::websocket::BindingToken, FhirError> {
        self.service.ws_binding_token(self.view.access(), subscriptions).await
    }

    /// The caller's access.
    pub fn access(&self) -> &crate::auth::Access {
        self.view.access()
    }

    /// The answer to a create an operation made: 201 with the version, its ETag and `Location`,
    /// as a REST create answers.
    pub fn created(&self, version: &ResourceVersion) -> FhirResponse {
        self.service.written(201, version)
    }

    /// What uploaded files may be.
    pub fn uploads(&self) -> &crate::model::upload::UploadRules {
        &self.service.config.uploads
    }

    /// The scheduling settings of the server.
    pub fn scheduling(&self) -> crate::portal::scheduling::SchedulingSettings {
        self.service.config.scheduling
    }

    /// A search query over `resource_type` from search parameters (`name`, `value`), parsed
    /// as a REST search's are: chains, modifiers, `_sort` and `_count` included.
    pub fn search_query(&self, resource_type: &str, parameters: &[(String, String)]) -> Result<SearchQuery, FhirError> {
        self.service.search_query(resource_type, parameters)
    }

    /// The transaction the operation writes in, as the caller: the bundle's when it runs as a
    /// bundle entry, else one of its own (commit it with [`OperationTx::commit`]).
    pub async fn begin(&mut self) -> Result<OperationTx<'_>, FhirError> {
        if self.read_only {
            return Err(FhirError::method_not_allowed("this invocation stores data: use POST", "POST"));
        }
        let service = self.service;
        if matches!(self.view.source, Source::Store(_)) {
            let tx = service.begin(self.view.access()).await?;
            return Ok(OperationTx::owned(service, tx));
        }
        Ok(OperationTx::borrowed(service, self.view.source.tx()?))
    }

    /// What the clinic publishes for anyone to discover: Slots, their Schedules (those of
    /// practitioners, roles, locations, services and devices), Locations, HealthcareServices,
    /// Practitioners and PractitionerRoles, read without the caller's restriction (a patient
    /// app finds free time of a practitioner whose Schedule is not in its compartment). Only
    /// the operations that publish availability ($find, $bulk-publish) use it.
    pub fn published(&self) -> PublishedView<'_> {
        PublishedView { service: self.service }
    }

    /// Creates `resource` (checked as a create would be) as the caller: in the transaction
    /// the operation runs in, or in one of its own.
    pub async fn create(&mut self, resource_type: &str, resource: Value) -> Result<ResourceVersion, FhirError> {
        let mut tx = self.begin().await?;
        let created = tx.create(resource_type, resource).await;
        tx.finish(created).await
    }
}

/// Reads of the published scheduling data (see [`OperationContext::published`]).
pub struct PublishedView<'a> {
    service: &'a FhirService,
}

impl PublishedView<'_> {
    /// The resource types it reads.
    pub const TYPES: &'static [&'static str] =
        &["Slot", "Schedule", "Location", "HealthcareService", "Practitioner", "PractitionerRole"];

    /// The public FHIR base URL.
    pub fn base_url(&self) -> &str {
        &self.service.config.base_url
    }

    /// A search query over a published type from search parameters.
    pub fn search_query(&self, resource_type: &str, parameters: &[(String, String)]) -> Result<SearchQuery, FhirError> {
        self.service.search_query(resource_type, parameters)
    }

    /// The history sequence number of the newest change (deletions included) to any of
    /// `types`: what an ETag of published data needs, one history row per type.
    pub async fn latest_change(&self, types: &[&str]) -> Result<Option<i64>, FhirError> {
        self.check(types.iter().copied())?;
        let mut latest = None;
        for resource_type in types {
            let query = crate::store::HistoryQuery {
                scope: crate::store::HistoryScope::Type(resource_type.to_string()),
                since: None,
                before_seq: None,
                count: 1,
            };
            let page = self.service.store.history(&query).await.map_err(super::store_error)?;
            latest = latest.max(page.entries.first().map(|(seq, _)| *seq));
        }
        Ok(latest)
    }

    /// A page of a search over published types; any other type is a programming error (500).
    pub async fn search(&self, query: &SearchQuery) -> Result<crate::store::SearchPage, FhirError> {
        self.check(query.resource_types.iter().map(String::as_str))?;
        let mut page = self.service.store.search(query).await.map_err(super::store_error)?;
        page.resources.retain(is_published);
        Ok(page)
    }

    /// The current resources of published types with these keys.
    pub async fn read_many(&self, keys: &[(String, String)]) -> Result<Vec<ResourceVersion>, FhirError> {
        self.check(keys.iter().map(|(t, _)| t.as_str()))?;
        let mut found = self.service.store.read_many(keys).await.map_err(super::store_error)?;
        found.retain(is_published);
        Ok(found)
    }

    fn check<'t>(&self, mut types: impl Iterator<Item = &'t str>) -> Result<(), FhirError> {
        match types.all(|t| Self::TYPES.contains(&t)) {
            true => Ok(()),
            false => Err(FhirError::internal()),
        }
    }
}

/// Whether a version of a published type is published: a Schedule of a patient or a related
/// person (the R4 actor may be one) is that person's data, not the clinic's.
fn is_published(version: &ResourceVersion) -> bool {
    if version.resource_type != "Schedule" {
        return true;
    }
    serde_json::from_slice::<Value>(&version.body)
        .is_ok_and(|schedule| !crate::portal::scheduling::is_persons_schedule(&schedule))
}

impl FhirService {
    /// A search query over `resource_type` from search parameters, parsed as a REST search's.
    pub(super) fn search_query(
        &self,
        resource_type: &str,
        parameters: &[(String, String)],
    ) -> Result<SearchQuery, FhirError> {
        let types = [resource_type.to_string()];
        self.with_search_context(|search| Ok(parse_search(search, &types, parameters, true, self.config.paging)?.query))
    }

    /// The condition group of one search criterion (`name=value`) on `resource_type`.
    pub(super) fn criterion(&self, resource_type: &str, name: &str, value: &str) -> Result<Vec<Condition>, FhirError> {
        self.with_search_context(|search| parse_criterion(search, resource_type, name, value))
    }

    /// Runs `parse` with the search parameters in force and the server's base.
    fn with_search_context<T>(&self, parse: impl FnOnce(Context<'_>) -> T) -> T {
        let registry = self.registry();
        let value_sets = ValueSets::new();
        parse(Context { registry: &registry, base_url: &self.config.base_url, value_sets: &value_sets })
    }

    /// Invokes operation `code` at `level`: finds it, checks the method, the inputs and the
    /// access it needs, then runs it with the caller's read view over `source`.
    pub(super) async fn invoke(
        &self,
        mut source: Source<'_>,
        level: Level,
        code: &str,
        request: FhirRequest,
    ) -> Result<FhirResponse, FhirError> {
        let Registered { operation, definition, needs, pages } = operations::find(code, &level)?;
        let allowed = if definition.affects_state { "POST" } else { "GET, HEAD, POST" };
        let get = match request.method {
            Method::Get | Method::Head if !definition.affects_state => true,
            Method::Post => false,
            method => {
                let why = match method {
                    Method::Get | Method::Head => " (it changes data, so FHIR allows only POST)",
                    _ => "",
                };
                return Err(FhirError::method_not_allowed(
                    format!("${code} cannot be invoked with {}{why}; allowed: {allowed}", method.as_str()),
                    allowed,
                ));
            }
        };
        let request_url = invocation_url(&self.config.base_url, &request, get);
        let FhirRequest { mut query, body, access, conditions, .. } = request;
        let cursor = if pages { take_cursor(&mut query) } else { None };
        let mut ignored = Vec::new();
        if conditions.lenient {
            query.retain(|(name, _)| {
                let known = definition.inputs().any(|p| &p.name == name);
                if !known {
                    ignored.push(name.clone());
                }
                known
            });
        }
        if needs == Needs::Administrator && !access.is_administrator() {
            return Err(FhirError::forbidden(format!("${code} needs full system access (system/*.cruds)")));
        }
        let inputs = inputs::read(definition, &query, if get { None } else { body })?;
        let mut view = ReadView::new(self, &access, source.reborrow());
        let instance = match (&level, needs) {
            (Level::Instance(t, id), Needs::ReadInstance) => match view.read(t, id).await? {
                Lookup::Found(version) => Some(version),
                Lookup::Deleted(deletion) => {
                    return Err(FhirError::gone(t, id, deletion.version));
                }
                Lookup::Unknown => return Err(FhirError::not_found(format!("{t}/{id} is not known"))),
            },
            _ => None,
        };
        let if_none_match = conditions.if_none_match;
        let mut context = OperationContext {
            view,
            service: self,
            instance,
            cursor,
            read_only: get,
            if_none_match,
            request_url,
            lenient: conditions.lenient,
            ignored,
        };
        operation.run(&mut context, &level, &inputs).await
    }

    /// `GET OperationDefinition/[id]` of an operation this server implements: its definition
    /// as published, with this server's base in the project's own canonical URLs.
    pub(super) fn operation_definition(&self, id: &str) -> Result<FhirResponse, FhirError> {
        let definition = operations::definition::by_id(id)
            .ok_or_else(|| FhirError::not_found(format!("OperationDefinition/{id} is not known")))?;
        Ok(FhirResponse::new(200, Body::Json(definition.published(&self.config.base_url))))
    }
}

/// The absolute URL of an invocation: with its URL parameters, which a GET carries all of (a
/// POST's are in its body).
fn invocation_url(base_url: &str, request: &FhirRequest, get: bool) -> String {
    let url = format!("{base_url}/{}", request.path);
    if !get || request.query.is_empty() {
        return url;
    }
    let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&request.query).finish();
    format!("{url}?{query}")
}

/// Takes the paging `_cursor` out of an invocation's parameters.
fn take_cursor(query: &mut Vec<(String, String)>) -> Option<String> {
    let position = query.iter().position(|(name, _)| name == "_cursor")?;
    Some(query.remove(position).1)
}

/// 422 for who cannot be invited, with the reason.
fn invite_error(error: crate::auth::registration::InviteError) -> FhirError {
    use crate::auth::registration::InviteError;
    match error {
        InviteError::Refused(why) => {
            FhirError::unprocessable(vec![crate::model::Issue::error(crate::model::IssueCode::BusinessRule, why)])
        }
        InviteError::Store(error) => super::store_error(error),
    }
}
