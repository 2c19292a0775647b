//! `$bulk-publish` (SMART Scheduling Links): the manifest of the availability a clinic
//! publishes — NDJSON files of its Locations, Schedules and Slots (free and busy; a Slot never
//! says who holds it) — for slot finders that poll many clinics.
//!
//! Without `_type` it answers the manifest; with `_type` the NDJSON file of that type, which is
//! what the manifest's `output` URLs name. `_since` keeps what changed since then, and the
//! manifest's `transactionTime` is the `_since` of the next poll. Each answer carries an ETag
//! from the newest change to the published types (one history row per type): `If-None-Match`
//! with it answers 304 without reading anything else. With `--publish-slots` it needs no token
//! (the HTTP layer lets it through); otherwise the caller must be allowed to search every Slot,
//! Schedule and Location.
//!
//! What is published is what a slot finder needs and no more: Locations as stored (the
//! clinic's addresses), Schedules and Slots cut to their scheduling elements (no comments,
//! identifiers or other extensions), and never a Schedule of a patient or related person, nor
//! the Slots of one.

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use std::collections::HashSet;

use serde_json::{json, Map, Value};

use super::inputs::parameter_path;
use super::{Inputs, Level, Operation};
use crate::auth::scope::Permission;
use crate::model::resource::{format_instant, now};
use crate::model::{ErrorKind, FhirError, Issue, IssueCode};
use crate::portal::availability::TIMEZONE_EXTENSION;
use crate::rest::{Body, FhirResponse, OperationContext, PublishedView};
use crate::search::index::parse_local_reference;

/// The types a manifest lists, in its order.
const PUBLISHED: [&str; 3] = ["Location", "Schedule", "Slot"];

/// Resources read per page while a file is written.
const PAGE: usize = 1000;

pub struct BulkPublish;

#[async_trait]
impl Operation for BulkPublish {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        _level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let open = context.scheduling().publish_slots;
        if !open && !PUBLISHED.iter().all(|t| context.view.reaches_all(Permission::Search, t)) {
            return Err(FhirError::forbidden(
                "$bulk-publish needs a token that may search every Location, Schedule and Slot \
                 (or the server's --publish-slots)",
            ));
        }
        let requested_type = inputs.text("_type");
        if let Some(unknown) = requested_type.filter(|t| !PUBLISHED.contains(t)) {
            return Err(FhirError::with_issues(
                ErrorKind::BadRequest,
                vec![Issue::error(
                    IssueCode::Value,
                    format!("'{unknown}' is not published: Location, Schedule or Slot"),
                )
                .at(parameter_path("_type"))],
            ));
        }
        let since = inputs.text("_since");
        let transaction_time = now();
        let published = context.published();
        let etag = format!("W/\"{}\"", published.latest_change(&PUBLISHED).await?.unwrap_or(0));
        if context.if_none_match() == Some(etag.as_str()) {
            let mut response = FhirResponse::new(304, Body::None);
            response.headers.push(("etag", etag));
            return Ok(response);
        }
        let mut response = match requested_type {
            Some(resource_type) => file(&published, resource_type, since).await?,
            None => manifest(context.base_url(), transaction_time, since),
        };
        response.headers.push(("etag", etag));
        Ok(response)
    }
}

/// The manifest: one output file per published type.
fn manifest(base_url: &str, transaction_time: time::OffsetDateTime, since: Option<&str>) -> FhirResponse {
    let since_query = since.map(|s| format!("_since={}", urlencoding(s)));
    let url = |resource_type: Option<&str>| {
        let query: Vec<String> =
            resource_type.map(|t| format!("_type={t}")).into_iter().chain(since_query.clone()).collect();
        match query.is_empty() {
            true => format!("{base_url}/$bulk-publish"),
            false => format!("{base_url}/$bulk-publish?{}", query.join("&")),
        }
    };
    let output: Vec<_> = PUBLISHED.iter().map(|t| json!({"type": t, "url": url(Some(t))})).collect();
    let manifest = json!({
        "transactionTime": format_instant(transaction_time),
        "request": url(None),
        "output": output,
        "error": [],
    });
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    FhirResponse::new(200, Body::Document { content_type: "application/json", bytes: bytes.into() })
}

/// `+` and `:` of an instant, escaped for a query string.
fn urlencoding(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The elements of a Schedule and a Slot that are published (SMART Scheduling Links).
const SCHEDULE_ELEMENTS: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "active",
    "serviceCategory",
    "serviceType",
    "specialty",
    "actor",
    "planningHorizon",
];
const SLOT_ELEMENTS: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "serviceCategory",
    "serviceType",
    "specialty",
    "appointmentType",
    "schedule",
    "status",
    "start",
    "end",
];

/// The NDJSON file of one published type (changed since `since`).
async fn file(
    published: &PublishedView<'_>,
    resource_type: &str,
    since: Option<&str>,
) -> Result<FhirResponse, FhirError> {
    let schedules = match resource_type {
        "Slot" => Some(published_schedules(published).await?),
        _ => None,
    };
    let mut parameters = vec![("_count".to_string(), PAGE.to_string())];
    if let Some(since) = since {
        parameters.push(("_lastUpdated".to_string(), format!("ge{since}")));
    }
    let mut query = published.search_query(resource_type, &parameters)?;
    let mut out = BytesMut::new();
    loop {
        let page = published.search(&query).await?;
        for version in &page.resources {
            let line = match resource_type {
                "Location" => version.body.to_vec(),
                _ => {
                    let Ok(resource) = serde_json::from_slice::<Value>(&version.body) else { continue };
                    if let Some(schedules) = &schedules {
                        let schedule = resource.pointer("/schedule/reference").and_then(Value::as_str);
                        let schedule = schedule.and_then(|r| parse_local_reference(r, published.base_url()));
                        if !schedule.is_some_and(|(_, id)| schedules.contains(id)) {
                            continue;
                        }
                    }
                    serde_json::to_vec(&published_part(&resource)).map_err(|_| FhirError::internal())?
                }
            };
            out.put_slice(&line);
            out.put_u8(b'\n');
        }
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => break,
        }
    }
    Ok(FhirResponse::new(200, Body::Document { content_type: "application/fhir+ndjson", bytes: out.freeze() }))
}

/// The ids of the published Schedules.
async fn published_schedules(published: &PublishedView<'_>) -> Result<HashSet<String>, FhirError> {
    let mut query = published.search_query("Schedule", &[("_count".to_string(), PAGE.to_string())])?;
    let mut ids = HashSet::new();
    loop {
        let page = published.search(&query).await?;
        ids.extend(page.resources.into_iter().map(|version| version.id));
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => return Ok(ids),
        }
    }
}

/// A Schedule or Slot cut to the elements a slot finder needs; of a Schedule's extensions only
/// its time zone.
fn published_part(resource: &Value) -> Value {
    let elements = match resource.get("resourceType").and_then(Value::as_str) {
        Some("Schedule") => SCHEDULE_ELEMENTS,
        _ => SLOT_ELEMENTS,
    };
    let mut part: Map<String, Value> =
        elements.iter().filter_map(|name| resource.get(*name).map(|value| (name.to_string(), value.clone()))).collect();
    let time_zone: Vec<Value> = resource
        .get("extension")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| e.get("url").and_then(Value::as_str) == Some(TIMEZONE_EXTENSION))
        .cloned()
        .collect();
    if !time_zone.is_empty() {
        part.insert("extension".to_string(), Value::Array(time_zone));
    }
    Value::Object(part)
}
