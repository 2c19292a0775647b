//! Batch and transaction Bundles posted to the base URL.
//!
//! A transaction runs in one database transaction, in the order FHIR R4 prescribes (DELETE,
//! POST, PUT/PATCH, GET). Before anything is written, every POST gets its id (or finds its
//! `ifNoneExist` match), and every `fullUrl` (`urn:uuid:…` or placeholder) and conditional
//! reference (`Patient?identifier=…`) in the bundle's resources is rewritten to `Type/id`. Any
//! failing entry fails the whole bundle and nothing is stored. A batch runs each entry on its
//! own and reports each entry's status.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use serde_json::{json, Value};

use super::route::Route;
use super::source::Source;
use super::write::{parse_query_string, version_response};
use super::{store_error, Body, Conditions, FhirRequest, FhirResponse, FhirService, Method, PatchFormat, PreferReturn};
use crate::auth::Access;
use crate::model::resource::new_id;
use crate::model::validate::validate_resource;
use crate::model::{ErrorKind, FhirError, IssueCode};
use crate::store::StoreTx;

/// One parsed `Bundle.entry`.
struct Entry {
    index: usize,
    full_url: Option<String>,
    request: FhirRequest,
}

impl Entry {
    /// FHIR's processing order for transactions.
    fn rank(&self) -> u8 {
        match self.request.method {
            Method::Delete => 0,
            Method::Post => 1,
            Method::Put | Method::Patch => 2,
            Method::Get | Method::Head => 3,
        }
    }
}

/// What a transaction decided for a POST entry before writing.
enum PlannedCreate {
    /// Create a resource of this type with this id.
    New { resource_type: String, id: String },
    /// `ifNoneExist` found this one: nothing is created.
    Existing(crate::store::ResourceVersion),
}

impl FhirService {
    /// `POST /` with a batch or transaction Bundle.
    pub(super) async fn process_bundle(&self, request: &FhirRequest) -> Result<FhirResponse, FhirError> {
        let bundle = request
            .body
            .as_ref()
            .ok_or_else(|| FhirError::bad_request("POST to the base needs a batch or transaction Bundle"))?;
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(FhirError::bad_request("POST to the base needs a Bundle").with_expression("resourceType"));
        }
        if let Some(Value::Array(entries)) = bundle.get("entry") {
            crate::model::bundle::check_full_urls(entries)?;
        }
        validate_resource(&without_entry_resources(bundle), "Bundle")?;
        let kind = bundle.get("type").and_then(Value::as_str).unwrap_or("");
        let raw_entries: &[Value] = match bundle.get("entry") {
            None => &[],
            Some(Value::Array(entries)) => entries,
            Some(_) => {
                return Err(FhirError::bad_request("Bundle.entry must be an array").with_expression("Bundle.entry"))
            }
        };
        if raw_entries.len() > self.config.max_bundle_entries {
            return Err(FhirError::new(
                ErrorKind::PayloadTooLarge,
                IssueCode::TooCostly,
                format!(
                    "the bundle has {} entries; at most {} are accepted",
                    raw_entries.len(),
                    self.config.max_bundle_entries
                ),
            ));
        }
        let prefer = request.conditions.prefer_return;
        match kind {
            "transaction" => {
                let entries = raw_entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| self.parse_entry(i, e, prefer, &request.access))
                    .collect::<Result<Vec<_>, _>>()?;
                self.transaction(entries, &request.access).await
            }
            "batch" => Ok(self.batch(raw_entries, prefer, &request.access).await),
            other => Err(FhirError::bad_request(format!(
                "Bundle.type must be 'batch' or 'transaction' to be processed, not '{other}'"
            ))
            .with_expression("Bundle.type")),
        }
    }

    fn parse_entry(
        &self,
        index: usize,
        entry: &Value,
        prefer: PreferReturn,
        access: &Access,
    ) -> Result<Entry, FhirError> {
        let at = format!("Bundle.entry[{index}]");
        let fail = |message: String| FhirError::bad_request(format!("{at}: {message}")).with_expression(&at);
        let request = entry.get("request").ok_or_else(|| fail("the entry has no request".into()))?;
        let text = |name: &str| request.get(name).and_then(Value::as_str).map(str::to_string);
        let method_name = text("method").ok_or_else(|| fail("request.method is missing".into()))?;
        let method =
            Method::parse(&method_name).ok_or_else(|| fail(format!("unknown request.method '{method_name}'")))?;
        let url = text("url").ok_or_else(|| fail("request.url is missing".into()))?;
        let relative = url
            .strip_prefix(&self.config.base_url)
            .map(|rest| rest.trim_start_matches('/'))
            .unwrap_or(&url)
            .to_string();
        let (path, query) = match relative.split_once('?') {
            Some((path, query)) => (path.to_string(), parse_query_string(query)),
            None => (relative.clone(), Vec::new()),
        };
        let if_modified_since = text("ifModifiedSince").and_then(|t| crate::model::resource::parse_instant(&t));
        let resource = entry.get("resource").cloned();
        let patch_format = (method == Method::Patch).then_some(PatchFormat::FhirPathPatch);
        if method == Method::Patch
            && resource.as_ref().and_then(|r| r.get("resourceType")).and_then(Value::as_str) != Some("Parameters")
        {
            return Err(fail("a PATCH entry must carry a FHIRPath Patch Parameters resource".into()));
        }
        Ok(Entry {
            index,
            full_url: entry.get("fullUrl").and_then(Value::as_str).map(str::to_string),
            request: FhirRequest {
                method,
                path,
                query,
                conditions: Conditions {
                    if_match: text("ifMatch"),
                    if_none_match: text("ifNoneMatch"),
                    if_none_exist: text("ifNoneExist"),
                    if_modified_since,
                    prefer_return: prefer,
                    strict: false,
                    lenient: false,
                },
                body: resource,
                patch_format,
                access: access.clone(),
                content: false,
            },
        })
    }

    async fn transaction(&self, entries: Vec<Entry>, access: &Access) -> Result<FhirResponse, FhirError> {
        let mut tx = self.begin(access).await?;
        match self.transaction_entries(tx.as_mut(), entries).await {
            Ok(responses) => {
                tx.commit().await.map_err(store_error)?;
                Ok(response_bundle("transaction-response", responses))
            }
            Err(error) => {
                tx.rollback().await;
                Err(error)
            }
        }
    }

    /// Runs a transaction's entries in the order of the specification; their responses in
    /// the bundle's order.
    async fn transaction_entries(
        &self,
        tx: &mut dyn StoreTx,
        mut entries: Vec<Entry>,
    ) -> Result<Vec<FhirResponse>, FhirError> {
        let count = entries.len();
        entries.sort_by_key(Entry::rank);
        let mut responses: Vec<Option<FhirResponse>> = vec![None; count];

        // The resources the entries name, before any runs (R4 http.html#trules: "if any resource
        // identities overlap, the transaction SHALL fail"); `ifNoneExist` matches join below.
        let changed: Vec<(String, usize)> = entries
            .iter()
            .filter(|e| !matches!(e.request.method, Method::Get | Method::Head | Method::Post))
            .filter_map(|e| match Route::parse(&e.request.path) {
                Ok(Route::Instance(t, id)) => Some((format!("{t}/{id}"), e.index)),
                _ => None,
            })
            .collect();
        check_overlaps(changed.iter().map(|(identity, index)| (*index, identity.clone())))?;
        // 1. Deletes come first, so that later lookups see their effect.
        for entry in entries.iter_mut().filter(|e| e.request.method == Method::Delete) {
            let response = self.run_entry(&mut *tx, entry).await?;
            responses[entry.index] = Some(response);
        }
        // 2. Decide every POST's id, and learn where each fullUrl will live.
        let mut planned: HashMap<usize, PlannedCreate> = HashMap::new();
        // Every string of every resource is looked up here: foldhash, not SipHash.
        let mut targets: FullUrls = HashMap::default();
        for entry in &entries {
            let context = |e: FhirError| e.in_bundle_entry(entry.index);
            let location = match (entry.request.method, Route::parse(&entry.request.path).map_err(context)?) {
                (Method::Post, Route::Type(t)) => {
                    let plan = match &entry.request.conditions.if_none_exist {
                        Some(criteria) => match self
                            .find(&mut *tx, &t, &parse_query_string(criteria), 2)
                            .await
                            .map_err(context)?
                            .as_slice()
                        {
                            [] => PlannedCreate::New { resource_type: t.clone(), id: new_id() },
                            [existing] => PlannedCreate::Existing(existing.clone()),
                            _ => {
                                return Err(context(FhirError::precondition_failed(format!(
                                    "ifNoneExist '{criteria}' matches more than one resource"
                                ))))
                            }
                        },
                        None => PlannedCreate::New { resource_type: t.clone(), id: new_id() },
                    };
                    let id = match &plan {
                        PlannedCreate::New { id, .. } => id.clone(),
                        PlannedCreate::Existing(existing) => existing.id.clone(),
                    };
                    planned.insert(entry.index, plan);
                    Some(format!("{t}/{id}"))
                }
                (Method::Put, Route::Instance(t, id)) => Some(format!("{t}/{id}")),
                _ => None,
            };
            if let (Some(full_url), Some(location)) = (&entry.full_url, location) {
                targets.insert(full_url.clone(), location);
            }
        }
        let found = planned.iter().filter_map(|(index, plan)| match plan {
            PlannedCreate::Existing(existing) => Some((*index, format!("{}/{}", existing.resource_type, existing.id))),
            PlannedCreate::New { .. } => None,
        });
        check_overlaps(changed.iter().map(|(identity, index)| (*index, identity.clone())).chain(found))?;
        // 3. Rewrite references everywhere in the bundle's resources; a `urn:` reference left is
        //    to no entry, and fails the bundle.
        for entry in &mut entries {
            if let Some(body) = &mut entry.request.body {
                let index = entry.index;
                let context = |e: FhirError| e.in_bundle_entry(index);
                self.rewrite_references(&mut *tx, body, &targets).await.map_err(context)?;
                crate::model::bundle::unresolved(body).map_err(context)?;
            }
        }
        // 4. Everything else, in order.
        for entry in entries.iter_mut() {
            if responses[entry.index].is_some() {
                continue; // a DELETE, already done
            }
            let response = match planned.remove(&entry.index) {
                Some(PlannedCreate::Existing(existing)) => version_response(200, &existing),
                Some(PlannedCreate::New { resource_type, id }) => {
                    let index = entry.index;
                    let context = |e: FhirError| e.in_bundle_entry(index);
                    let resource = entry
                        .request
                        .body
                        .take()
                        .ok_or_else(|| context(FhirError::bad_request("a POST entry needs a resource")))?;
                    validate_resource(&resource, &resource_type).map_err(context)?;
                    let prefer = entry.request.conditions.prefer_return;
                    self.write_new(&mut *tx, &resource_type, &id, resource, prefer).await.map_err(context)?
                }
                None => self.run_entry(&mut *tx, entry).await?,
            };
            responses[entry.index] = Some(response);
        }
        Ok(responses.into_iter().map(|r| r.unwrap_or_else(|| FhirResponse::new(500, Body::None))).collect())
    }

    /// Runs one transaction entry inside `tx`; its error names the entry.
    async fn run_entry(&self, tx: &mut dyn StoreTx, entry: &mut Entry) -> Result<FhirResponse, FhirError> {
        let index = entry.index;
        let context = |e: FhirError| e.in_bundle_entry(index);
        let route = Route::parse(&entry.request.path).map_err(context)?;
        if route == Route::System {
            return Err(context(FhirError::bad_request("bundles cannot be nested")));
        }
        let request = std::mem::replace(&mut entry.request, FhirRequest::new(Method::Get, "", Vec::new()));
        Box::pin(self.dispatch(&mut Source::Tx(tx), route, request)).await.map_err(context)
    }

    /// Replaces every string equal to a mapped `fullUrl`, and every conditional reference
    /// (`Type?criteria`), with the local `Type/id`.
    async fn rewrite_references(
        &self,
        tx: &mut dyn StoreTx,
        value: &mut Value,
        targets: &FullUrls,
    ) -> Result<(), FhirError> {
        let mut conditional: Vec<String> = Vec::new();
        replace_strings(value, &mut |text| {
            if let Some(target) = targets.get(text) {
                return Some(target.clone());
            }
            if is_conditional_reference(text) {
                conditional.push(text.to_string());
            }
            None
        });
        let mut resolved = HashMap::new();
        for reference in conditional {
            let (resource_type, criteria) = reference.split_once('?').unwrap_or((&reference, ""));
            let id = self
                .single_match(tx, resource_type, &parse_query_string(criteria), &format!("reference '{reference}'"))
                .await?;
            resolved.insert(reference.clone(), format!("{resource_type}/{id}"));
        }
        if !resolved.is_empty() {
            replace_strings(value, &mut |text| resolved.get(text).cloned());
        }
        Ok(())
    }

    /// Runs a batch's entries one by one, each after the entries whose `fullUrl` it
    /// references, with those references rewritten to where those entries were stored. An
    /// entry referring to a failed entry, or to a `urn:` no entry has, fails alone: a batch
    /// never stores a reference it did not resolve.
    async fn batch(&self, raw_entries: &[Value], prefer: PreferReturn, access: &Access) -> FhirResponse {
        let full_urls: Vec<Option<&str>> =
            raw_entries.iter().map(|e| e.get("fullUrl").and_then(Value::as_str)).collect();
        let resources: Vec<Option<&Value>> = raw_entries.iter().map(|e| e.get("resource")).collect();
        let mut responses: Vec<Option<FhirResponse>> = vec![None; raw_entries.len()];
        let mut stored: FullUrls = HashMap::default();
        for (index, depends_on) in crate::model::bundle::dependency_order(&full_urls, &resources) {
            let failed = depends_on.iter().find(|&&d| responses[d].as_ref().is_some_and(|r| r.status >= 400));
            let outcome = match (failed, self.parse_entry(index, &raw_entries[index], prefer, access)) {
                (_, Err(error)) => Err(error),
                (Some(&dependency), _) => Err(FhirError::bad_request(format!(
                    "it refers to Bundle.entry[{dependency}] ({}), which failed",
                    full_urls[dependency].unwrap_or_default()
                ))),
                (None, Ok(entry)) if Route::parse(&entry.request.path).is_ok_and(|r| r == Route::System) => {
                    Err(FhirError::bad_request("bundles cannot be nested"))
                }
                (None, Ok(mut entry)) => match entry.request.body.as_mut() {
                    Some(body) => {
                        replace_strings(body, &mut |text| stored.get(text).cloned());
                        match crate::model::bundle::unresolved(body) {
                            Ok(()) => Box::pin(self.handle(entry.request)).await,
                            Err(error) => Err(error),
                        }
                    }
                    None => Box::pin(self.handle(entry.request)).await,
                },
            };
            let response = outcome.unwrap_or_else(|error| {
                let error = error.in_bundle_entry(index);
                FhirResponse::new(error.status(), Body::Json(error.outcome()))
            });
            if let (Some(full_url), Some(location)) = (full_urls[index], stored_at(&response, &self.config.base_url)) {
                stored.insert(full_url.to_string(), location);
            }
            responses[index] = Some(response);
        }
        response_bundle("batch-response", responses.into_iter().flatten().collect())
    }
}

/// Where a successful write's response says the resource is (`Type/id`).
fn stored_at(response: &FhirResponse, base_url: &str) -> Option<String> {
    if response.status >= 400 {
        return None;
    }
    let location = response.location.as_deref()?;
    let relative = location.strip_prefix(base_url).unwrap_or(location).trim_start_matches('/');
    let mut parts = relative.split('/');
    Some(format!("{}/{}", parts.next()?, parts.next()?))
}

/// 400 when two entries of a transaction change the same resource, given as (entry, `Type/id`).
fn check_overlaps(identities: impl Iterator<Item = (usize, String)>) -> Result<(), FhirError> {
    let mut changed: HashMap<String, usize> = HashMap::new();
    for (index, identity) in identities {
        if let Some(first) = changed.insert(identity.clone(), index) {
            let (first, second) = (first.min(index), first.max(index));
            return Err(FhirError::bad_request(format!(
                "Bundle.entry[{first}] and Bundle.entry[{second}] both change {identity}: a transaction changes a resource once"
            ))
            .with_expression(&format!("Bundle.entry[{second}]")));
        }
    }
    Ok(())
}

/// The Bundle with its entries' resources left out: each of those is validated on its own by
/// the interaction that stores it, so the Bundle's own structure is checked without them.
fn without_entry_resources(bundle: &Value) -> Value {
    let Some(members) = bundle.as_object() else { return bundle.clone() };
    let shell = members
        .iter()
        .map(|(name, value)| match (name.as_str(), value) {
            ("entry", Value::Array(entries)) => {
                let entries = entries.iter().map(|entry| match entry.as_object() {
                    Some(fields) => Value::Object(
                        fields.iter().filter(|(k, _)| *k != "resource").map(|(k, v)| (k.clone(), v.clone())).collect(),
                    ),
                    None => entry.clone(),
                });
                (name.clone(), Value::Array(entries.collect()))
            }
            _ => (name.clone(), value.clone()),
        })
        .collect();
    Value::Object(shell)
}

/// Where each entry's `fullUrl` lives on this server (`Type/id`).
type FullUrls = HashMap<String, String, RandomState>;

fn is_conditional_reference(text: &str) -> bool {
    text.split_once('?').is_some_and(|(t, q)| !q.is_empty() && crate::model::validate::is_resource_type(t))
}

/// Calls `replace` on every string value inside `value` (object keys excluded) and swaps in
/// what it returns.
fn replace_strings(value: &mut Value, replace: &mut impl FnMut(&str) -> Option<String>) {
    match value {
        Value::String(text) => {
            if let Some(new) = replace(text) {
                *text = new;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| replace_strings(item, replace)),
        Value::Object(members) => members.values_mut().for_each(|member| replace_strings(member, replace)),
        _ => {}
    }
}

/// A `batch-response` or `transaction-response` Bundle, entries in request order.
fn response_bundle(kind: &str, responses: Vec<FhirResponse>) -> FhirResponse {
    let entries: Vec<Value> = responses.into_iter().map(response_entry).collect();
    let mut bundle = json!({"resourceType": "Bundle", "id": new_id(), "type": kind});
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    FhirResponse::new(200, Body::Json(bundle))
}

fn response_entry(response: FhirResponse) -> Value {
    let reason = http::StatusCode::from_u16(response.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let mut outcome = json!({"status": format!("{} {reason}", response.status).trim_end().to_string()});
    if let Some(location) = &response.location {
        outcome["location"] = json!(location);
    }
    if let Some(version) = response.version {
        outcome["etag"] = json!(format!("W/\"{version}\""));
    }
    if let Some(at) = response.last_modified {
        outcome["lastModified"] = json!(crate::model::resource::format_instant(at));
    }
    let mut entry = json!({});
    match response.body {
        Body::Raw(bytes) => {
            if let Ok(resource) = serde_json::from_slice::<Value>(&bytes) {
                entry["resource"] = resource;
            }
        }
        Body::Json(resource)
            if resource.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome")
                && response.status >= 400 =>
        {
            outcome["outcome"] = resource;
        }
        Body::Json(resource) => entry["resource"] = resource,
        Body::None | Body::Document { .. } | Body::File { .. } => {}
    }
    entry["response"] = outcome;
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_strings_equal_to_full_urls() {
        let mut resource = json!({"subject": {"reference": "urn:uuid:1"}, "note": [{"text": "urn:uuid:1 stays"}],
            "focus": [{"reference": "urn:uuid:2"}]});
        replace_strings(&mut resource, &mut |t| (t == "urn:uuid:1").then(|| "Patient/a".to_string()));
        assert_eq!(resource["subject"]["reference"], json!("Patient/a"));
        assert_eq!(resource["note"][0]["text"], json!("urn:uuid:1 stays"));
        assert_eq!(resource["focus"][0]["reference"], json!("urn:uuid:2"));
    }

    #[test]
    fn recognises_conditional_references() {
        assert!(is_conditional_reference("Patient?identifier=a|b"));
        assert!(!is_conditional_reference("Patient/1"));
        assert!(!is_conditional_reference("http://x?y=1"));
        assert!(!is_conditional_reference("Patient?"));
    }
}
