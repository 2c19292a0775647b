//! read, vread, create, update, patch and delete, with their conditional forms.

use bytes::Bytes;
use serde_json::Value;

use super::source::Source;
use super::view::{Lookup, ReadView};
use super::{store_error, Body, Conditions, FhirRequest, FhirResponse, FhirService, PatchFormat, PreferReturn};
use crate::model::outcome::operation_outcome;
use crate::model::patch::PatchDocument;
use crate::model::resource::{is_valid_id, new_id, now, stamp};
use crate::model::validate::validate_resource;
use crate::model::{ErrorKind, FhirError, Issue, IssueCode};
use crate::search::criteria::{Context, ValueSets};
use crate::search::index::index_resource;
use crate::search::params::{parse_search, Paging};
use crate::store::{IndexRows, ResourceVersion, StoreTx, WriteMethod};

/// Parses an ETag-style version: `W/"3"`, `"3"` or `3`.
pub(super) fn parse_etag(text: &str) -> Option<i64> {
    let text = text.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    text.trim_matches('"').parse().ok()
}

impl FhirService {
    /// `GET [type]/[id]`: 404 unknown, 410 deleted, 304 when `If-None-Match`/`If-Modified-Since`
    /// say the client's copy is current.
    pub(super) async fn read(
        &self,
        view: &mut ReadView<'_>,
        resource_type: &str,
        id: &str,
        conditions: &Conditions,
    ) -> Result<FhirResponse, FhirError> {
        // What the caller may not reach does not exist for it (nor does its deletion).
        let current = match view.read(resource_type, id).await? {
            Lookup::Found(current) => current,
            Lookup::Deleted(deletion) => return Err(FhirError::gone(resource_type, id, deletion.version)),
            Lookup::Unknown => return Err(not_found(resource_type, id)),
        };
        let unchanged_by_etag = conditions.if_none_match.as_deref().and_then(parse_etag) == Some(current.version);
        let unchanged_by_date = conditions
            .if_modified_since
            .is_some_and(|since| current.last_updated.unix_timestamp() <= since.unix_timestamp());
        if unchanged_by_etag || (conditions.if_none_match.is_none() && unchanged_by_date) {
            return Ok(FhirResponse { body: Body::None, ..version_response(304, &current) });
        }
        Ok(version_response(200, &current))
    }

    /// `GET [type]/[id]/_history/[vid]`.
    pub(super) async fn vread(
        &self,
        view: &mut ReadView<'_>,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<FhirResponse, FhirError> {
        match view.vread(resource_type, id, version).await? {
            Lookup::Found(found) => Ok(version_response(200, &found)),
            Lookup::Deleted(_) => Err(FhirError::gone(resource_type, id, version)),
            Lookup::Unknown => Err(FhirError::not_found(format!("{resource_type}/{id} has no version {version}"))),
        }
    }

    /// `POST [type]`, honouring `If-None-Exist`.
    pub(super) async fn create(
        &self,
        tx: &mut dyn StoreTx,
        resource_type: &str,
        request: FhirRequest,
    ) -> Result<FhirResponse, FhirError> {
        let resource = required_body(request.body)?;
        validate_resource(&resource, resource_type)?;
        if let Some(criteria) = &request.conditions.if_none_exist {
            let matches = self.find(tx, resource_type, &parse_query_string(criteria), 2).await?;
            match matches.as_slice() {
                [] => {}
                [existing] => {
                    return Ok(self.respond(
                        version_response(200, existing),
                        request.conditions.prefer_return,
                        "the resource already exists; nothing was created",
                    ))
                }
                _ => {
                    return Err(FhirError::precondition_failed(format!(
                        "If-None-Exist '{criteria}' matches more than one resource"
                    )))
                }
            }
        }
        self.write_new(tx, resource_type, &new_id(), resource, request.conditions.prefer_return).await
    }

    /// `PUT [type]/[id]`: update, or create with the client's id; `If-Match` guards the version.
    pub(super) async fn update(
        &self,
        tx: &mut dyn StoreTx,
        resource_type: &str,
        id: &str,
        request: FhirRequest,
    ) -> Result<FhirResponse, FhirError> {
        let resource = required_body(request.body)?;
        validate_resource(&resource, resource_type)?;
        match resource.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id == id => {}
            Some(body_id) => {
                return Err(FhirError::bad_request(format!(
                    "the resource id '{body_id}' does not match the id '{id}' in the URL"
                ))
                .with_expression(&format!("{resource_type}.id")))
            }
            None => {
                return Err(FhirError::bad_request("an update must carry the resource id in its body")
                    .with_expression(&format!("{resource_type}.id")))
            }
        }
        let current = tx.current(resource_type, id).await.map_err(store_error)?;
        check_if_match(&request.conditions, current.as_ref())?;
        match current {
            Some(current) if !current.deleted => {
                self.write_version(tx, resource, &current, WriteMethod::Update, request.conditions.prefer_return, 200)
                    .await
            }
            Some(deleted) => {
                self.write_version(tx, resource, &deleted, WriteMethod::Update, request.conditions.prefer_return, 201)
                    .await
            }
            None => self.write_new(tx, resource_type, id, resource, request.conditions.prefer_return).await,
        }
    }

    /// `PUT [type]?criteria`.
    pub(super) async fn conditional_update(
        &self,
        tx: &mut dyn StoreTx,
        resource_type: &str,
        request: FhirRequest,
    ) -> Result<FhirResponse, FhirError> {
        let matches = self.find(tx, resource_type, &request.query, 2).await?;
        let body_id = request.body.as_ref().and_then(|b| b.get("id")).and_then(Value::as_str).map(str::to_string);
        let target = match (matches.as_slice(), body_id) {
            ([], Some(id)) => id,
            ([], None) => {
                let resource = required_body(request.body)?;
                validate_resource(&resource, resource_type)?;
                return self.write_new(tx, resource_type, &new_id(), resource, request.conditions.prefer_return).await;
            }
            ([found], Some(id)) if id != found.id => {
                return Err(FhirError::bad_request(format!(
                    "the criteria match {resource_type}/{} but the body has id '{id}'",
                    found.id
                )))
            }
            ([found], _) => found.id.clone(),
            _ => {
                return Err(FhirError::precondition_failed(
                    "the conditional update criteria match more than one resource",
                ))
            }
        };
        let mut request = request;
        if let Some(Value::Object(body)) = &mut request.body {
            body.insert("id".into(), Value::String(target.clone()));
        }
        self.update(tx, resource_type, &target, request).await
    }

    /// `PATCH [type]/[id]` with JSON Patch or FHIRPath Patch.
    pub(super) async fn patch(
        &self,
        tx: &mut dyn StoreTx,
        resource_type: &str,
        id: &str,
        request: FhirRequest,
    ) -> Result<FhirResponse, FhirError> {
        let document = required_body(request.body)?;
        let patch = match request.patch_format {
            Some(PatchFormat::JsonPatch) => PatchDocument::json_patch(&document)?,
            Some(PatchFormat::MergePatch) => PatchDocument::merge_patch(&document)?,
            Some(PatchFormat::FhirPathPatch) => PatchDocument::fhirpath_patch(&document)?,
            None => {
                return Err(FhirError::new(
                    ErrorKind::UnsupportedMediaType,
                    IssueCode::NotSupported,
                    "PATCH needs application/json-patch+json, application/merge-patch+json or a FHIRPath Patch Parameters body",
                ))
            }
        };
        let current = tx.current(resource_type, id).await.map_err(store_error)?;
        check_if_match(&request.conditions, current.as_ref())?;
        let current = current.ok_or_else(|| not_found(resource_type, id))?;
        if current.deleted {
            return Err(FhirError::gone(resource_type, id, current.version));
        }
        // As the caller may see it: a patch cannot copy or test a hidden secret.
        let shown = crate::subscriptions::secrets::shown_body(resource_type, &current.body);
        let mut resource: Value = serde_json::from_slice(&shown).map_err(|_| FhirError::internal())?;
        patch.apply(&mut resource)?;
        if resource.get("id").and_then(Value::as_str) != Some(id) {
            return Err(FhirError::new(
                ErrorKind::Unprocessable,
                IssueCode::Processing,
                "a patch may not change or remove the resource id",
            ));
        }
        validate_resource(&resource, resource_type).map_err(|mut e| {
            e.kind = ErrorKind::Unprocessable;
            e.within("the patched resource is invalid")
        })?;
        self.write_version(tx, resource, &current, WriteMethod::Patch, request.conditions.prefer_return, 200).await
    }

    /// `PATCH [type]?criteria`.
    pub(super) async fn conditional_patch(
        &self,
        tx: &mut dyn StoreTx,
        resource_type: &str,
        request: FhirRequest,
    ) -> Result<FhirResponse, FhirError> {
        let id = self.single_match(tx, resource_type, &request.query, "conditional patch").await?;
        self.patch(tx, resource_type, &id, request).await
    }

    /// `DELETE [type]/[id]`: writes a deletion version; deleting what is absent is a no-op 204.
    pub(super) async fn delete(
        &self,
        tx: &mut dyn StoreTx,
        resource_type: &str,
        id: &str,
        conditions: &Conditions,
    ) -> Result<FhirResponse, FhirError> {
        refuse_audit_writes(resource_type)?;
        let current = tx.current(resource_type, id).await.map_err(store_error)?;
        check_if_match(conditions, current.as_ref())?;
        let Some(current) = current.filter(|c| !c.deleted) else {
            return Ok(self.respond(FhirResponse::new(204, Body::None), conditions.prefer_return, "nothing to delete"));
        };
        let deletion = ResourceVersion {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            version: current.version + 1,
            last_updated: now(),
            deleted: true,
            method: WriteMethod::Delete,
            body: Bytes::new(),
        };
        let (version, last_updated) = (deletion.version, deletion.last_updated);
        tx.write(deletion, IndexRows::default()).await.map_err(store_error)?;
        let response = FhirResponse {
            version: Some(version),
            last_modified: Some(last_updated),
            ..FhirResponse::new(204, Body::None)
        };
        Ok(self.respond(response, conditions.prefer_return, &format!("deleted {resource_type}/{id}")))
    }

    /// `DELETE [type]?criteria` (single match only).
    pub(super) async fn conditional_delete(
        &self,
        tx: &mut dyn StoreTx,
        resource_type: &str,
        request: FhirRequest,
    ) -> Result<FhirResponse, FhirError> {
        let matches = self.find(tx, resource_type, &request.query, 2).await?;
        match matches.as_slice() {
            [] => Ok(self.respond(
                FhirResponse::new(204, Body::None),
                request.conditions.prefer_return,
                "no resource matched",
            )),
            [found] => self.delete(tx, resource_type, &found.id.clone(), &request.conditions).await,
            _ => Err(FhirError::precondition_failed("the conditional delete criteria match more than one resource")),
        }
    }

    /// Resources of `resource_type` matching `criteria` (strictly parsed), at most `limit`.
    pub(super) async fn find(
        &self,
        tx: &mut dyn StoreTx,
        resource_type: &str,
        criteria: &[(String, String)],
        limit: usize,
    ) -> Result<Vec<ResourceVersion>, FhirError> {
        if criteria.is_empty() {
            return Err(FhirError::bad_request("a conditional interaction needs search criteria"));
        }
        let paging = Paging { default_count: limit, max_count: limit };
        let value_sets = ValueSets::new();
        let registry = self.registry();
        let context = Context { registry: &registry, base_url: &self.config.base_url, value_sets: &value_sets };
        let parsed = parse_search(context, &[resource_type.to_string()], criteria, true, paging)?;
        let mut query = parsed.query;
        query.count = limit;
        Ok(Source::Tx(tx).search(&query).await?.resources)
    }

    /// The id of the one resource matching `criteria`; 404 for none, 412 for several.
    pub(super) async fn single_match(
        &self,
        tx: &mut dyn StoreTx,
        resource_type: &str,
        criteria: &[(String, String)],
        what: &str,
    ) -> Result<String, FhirError> {
        let matches = self.find(tx, resource_type, criteria, 2).await?;
        match matches.as_slice() {
            [found] => Ok(found.id.clone()),
            [] => Err(FhirError::not_found(format!("the {what} criteria match no {resource_type}"))),
            _ => {
                Err(FhirError::precondition_failed(format!("the {what} criteria match more than one {resource_type}")))
            }
        }
    }

    /// Stores version 1 of a new resource.
    pub(super) async fn write_new(
        &self,
        tx: &mut dyn StoreTx,
        resource_type: &str,
        id: &str,
        resource: Value,
        prefer: PreferReturn,
    ) -> Result<FhirResponse, FhirError> {
        let version = self.store_resource(tx, resource_type, id, 1, resource, WriteMethod::Create).await?;
        Ok(self.respond(self.written(201, &version), prefer, &format!("created {resource_type}/{id}")))
    }

    /// Stores the version after `previous`.
    async fn write_version(
        &self,
        tx: &mut dyn StoreTx,
        resource: Value,
        previous: &ResourceVersion,
        method: WriteMethod,
        prefer: PreferReturn,
        status: u16,
    ) -> Result<FhirResponse, FhirError> {
        let version = self
            .store_resource(tx, &previous.resource_type, &previous.id, previous.version + 1, resource, method)
            .await?;
        let message =
            format!("{} {}/{} is now version {}", method.as_str(), version.resource_type, version.id, version.version);
        Ok(self.respond(self.written(status, &version), prefer, &message))
    }

    /// Stamps metadata, serialises once, indexes, and writes.
    pub(super) async fn store_resource(
        &self,
        tx: &mut dyn StoreTx,
        resource_type: &str,
        id: &str,
        version: i64,
        mut resource: Value,
        method: WriteMethod,
    ) -> Result<ResourceVersion, FhirError> {
        if !is_valid_id(id) {
            return Err(FhirError::bad_request(format!("'{id}' is not a valid resource id")));
        }
        refuse_audit_writes(resource_type)?;
        if resource_type == "Subscription" {
            let current = tx.current(resource_type, id).await.map_err(store_error)?.filter(|v| !v.deleted);
            let stored = current.and_then(|v| serde_json::from_slice::<Value>(&v.body).ok());
            crate::subscriptions::secrets::restore(&mut resource, stored.as_ref()).map_err(|message| {
                FhirError::unprocessable(
                    vec![Issue::error(IssueCode::Value, message).at("Subscription.channel.header")],
                )
            })?;
        }
        let last_updated = now();
        stamp(&mut resource, id, version, last_updated);
        self.check_definition(resource_type, &resource)?;
        self.check_profiles(resource_type, &resource)?;
        let registry = self.registry();
        let index = index_resource(&registry, &resource, &self.config.base_url);
        let body = Bytes::from(serde_json::to_vec(&resource).map_err(|_| FhirError::internal())?);
        let stored = ResourceVersion {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            version,
            last_updated,
            deleted: false,
            method,
            body,
        };
        tx.write(stored.clone(), index).await.map_err(store_error)?;
        Ok(stored)
    }

    /// The checks of definitions the server acts on: an active SearchParameter the server
    /// cannot honour is refused (422) rather than stored and ignored.
    pub(super) fn check_definition(&self, resource_type: &str, resource: &Value) -> Result<(), FhirError> {
        if resource_type != "SearchParameter" {
            return self.check_subscription_definition(resource_type, resource);
        }
        self.registry().as_ref().clone().add_custom(resource).map(|_| ()).map_err(|invalid| {
            let issue = Issue::error(IssueCode::Processing, invalid.message.clone()).at(invalid.location());
            FhirError::unprocessable(vec![issue])
        })
    }

    pub(super) fn written(&self, status: u16, version: &ResourceVersion) -> FhirResponse {
        FhirResponse {
            location: Some(self.version_url(&version.resource_type, &version.id, version.version)),
            ..version_response(status, version)
        }
    }

    /// Applies `Prefer: return=…` to a write response.
    fn respond(&self, response: FhirResponse, prefer: PreferReturn, message: &str) -> FhirResponse {
        match prefer {
            PreferReturn::Representation => response,
            PreferReturn::Minimal => FhirResponse { body: Body::None, ..response },
            PreferReturn::OperationOutcome => {
                FhirResponse { body: Body::Json(operation_outcome(&[Issue::information(message)])), ..response }
            }
        }
    }
}

/// AuditEvents are the server's record of who did what (ADR 19): nobody creates, changes or
/// deletes one through the API, in REST and bundles alike (405).
fn refuse_audit_writes(resource_type: &str) -> Result<(), FhirError> {
    if resource_type != "AuditEvent" {
        return Ok(());
    }
    Err(FhirError::method_not_allowed(
        "AuditEvents are recorded by the server: none is created, changed or deleted through the API",
        "GET, HEAD",
    ))
}

/// The response carrying a stored version (as it may be shown) with its ETag and Last-Modified.
pub fn version_response(status: u16, version: &ResourceVersion) -> FhirResponse {
    let body = crate::subscriptions::secrets::shown_body(&version.resource_type, &version.body);
    FhirResponse {
        version: Some(version.version),
        last_modified: Some(version.last_updated),
        ..FhirResponse::new(status, if body.is_empty() { Body::None } else { Body::Raw(body) })
    }
}

fn check_if_match(conditions: &Conditions, current: Option<&ResourceVersion>) -> Result<(), FhirError> {
    let Some(expected) = &conditions.if_match else { return Ok(()) };
    let expected_version = parse_etag(expected)
        .ok_or_else(|| FhirError::bad_request(format!("If-Match '{expected}' is not an ETag like W/\"3\"")))?;
    match current {
        Some(current) if current.version == expected_version && !current.deleted => Ok(()),
        Some(current) => Err(FhirError::precondition_failed(format!(
            "If-Match expected version {expected_version} but the current version is {}",
            current.version
        ))),
        None => Err(FhirError::precondition_failed("If-Match was given but the resource does not exist")),
    }
}

fn required_body(body: Option<Value>) -> Result<Value, FhirError> {
    body.ok_or_else(|| FhirError::bad_request("this interaction needs a request body"))
}

fn not_found(resource_type: &str, id: &str) -> FhirError {
    FhirError::not_found(format!("{resource_type}/{id} is not known"))
}

/// Decodes `a=1&b=2` (as in `If-None-Exist` or a bundle entry URL) into pairs.
pub(super) fn parse_query_string(query: &str) -> Vec<(String, String)> {
    let query = query.split_once('?').map_or(query, |(_, q)| q);
    url::form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_etags() {
        assert_eq!(parse_etag("W/\"3\""), Some(3));
        assert_eq!(parse_etag("\"12\""), Some(12));
        assert_eq!(parse_etag("7"), Some(7));
        assert_eq!(parse_etag("W/\"x\""), None);
    }

    #[test]
    fn parses_criteria() {
        assert_eq!(
            parse_query_string("Patient?identifier=a%7Cb&name=x"),
            vec![("identifier".to_string(), "a|b".to_string()), ("name".to_string(), "x".to_string())]
        );
        assert_eq!(parse_query_string("identifier=1"), vec![("identifier".to_string(), "1".to_string())]);
    }
}
