//! `$export` (Bulk Data Access IG 2.0) at system, Patient and Group level: the kick-off. It
//! checks every parameter before anything is queued (a bad one is a 400 and no job), works out
//! which types and patients the export covers as the caller, takes the snapshot the export
//! will read (ADR 22), and queues the job that writes the files (`rest/export.rs`); the answer is
//! 202 with the status URL. See `docs/operations/export.md`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;

use super::inputs::bad_parameter;
use super::{Inputs, Level, Operation};
use crate::export::{ExportRequest, Level as Covers, SinceText};
use crate::model::validate::{is_resource_type, resource_types};
use crate::model::{ErrorKind, FhirError, Issue, IssueCode};
use crate::rest::{FhirResponse, Lookup, OperationContext};
use crate::search::compartment;
use crate::search::index::parse_local_reference;

/// The formats `_outputFormat` may name, all NDJSON (a `+` the URL decoding turned into a
/// space included).
const NDJSON: &[&str] = &["application/fhir+ndjson", "application/fhir ndjson", "application/ndjson", "ndjson"];

/// Search parameters a `_typeFilter` query may not use (the IG: no `_include` or `_sort`; the
/// others shape a page, which an export does not have).
const NOT_FILTERS: &[&str] = &["_include", "_revinclude", "_sort", "_count", "_summary", "_elements", "_total"];

/// How the error file introduces what `Prefer: handling=lenient` let the kick-off ignore.
const LENIENTLY: &str = "ignored (Prefer: handling=lenient):";

pub struct Export;

#[async_trait]
impl Operation for Export {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let mut ignored: Vec<String> =
            context.ignored().iter().map(|name| format!("{LENIENTLY} parameter '{name}'")).collect();
        for value in listed(inputs, "includeAssociatedData") {
            ignored.push(format!(
                "includeAssociatedData={value} is not applied: Provenance resources are exported as any other type"
            ));
        }
        let lenient = context.lenient();
        // A refusal under `Prefer: handling=strict` (the default), a note in the error file
        // under `handling=lenient`.
        let mut refuse = |error: FhirError| -> Result<(), FhirError> {
            if !lenient {
                return Err(error);
            }
            ignored.extend(error.issues.into_iter().map(|issue| format!("{LENIENTLY} {}", issue.diagnostics)));
            Ok(())
        };
        if let Some(format) = inputs.text("_outputFormat") {
            if !NDJSON.contains(&format) {
                let why = format!("'{format}' is not a format this server writes (application/fhir+ndjson)");
                return Err(unsupported("_outputFormat", why));
            }
        }
        let patient_level = !matches!(level, Level::System);
        let types = exported_types(context, inputs, patient_level, &mut refuse)?;
        let filters = type_filters(context, inputs, &types, &mut refuse)?;
        let elements = elements(inputs)?;
        let since = since(context, inputs).await?;
        let covers = match level {
            Level::System => Covers::System,
            Level::Type(_) => Covers::Patients(named_patients(context, inputs).await?),
            Level::Instance(..) => Covers::Patients(Some(group_patients(context, inputs).await?)),
        };
        let request = ExportRequest {
            request: context.request_url(),
            claims: context.claims(),
            level: covers,
            types,
            filters,
            since,
            elements,
            mark: String::new(),
            transaction_time: String::new(),
            ignored,
        };
        context.queue_export(request).await
    }
}

/// A 400 for a parameter value this server does not support.
fn unsupported(name: &str, why: impl std::fmt::Display) -> FhirError {
    let issue = Issue::error(IssueCode::NotSupported, format!("parameter '{name}': {why}"))
        .at(super::inputs::parameter_path(name));
    FhirError::with_issues(ErrorKind::BadRequest, vec![issue])
}

/// The comma-separated values of a repeatable parameter, repeats joined (the IG).
fn listed<'a>(inputs: &'a Inputs, name: &'a str) -> Vec<&'a str> {
    let mut values: Vec<&str> =
        inputs.texts(name).flat_map(|text| text.split(',')).map(str::trim).filter(|v| !v.is_empty()).collect();
    let mut seen = std::collections::HashSet::new();
    values.retain(|value| seen.insert(*value));
    values
}

/// The types exported, in order: `_type`, or every type the level covers; those the caller
/// may not search are refused when named and left out otherwise.
fn exported_types(
    context: &OperationContext<'_>,
    inputs: &Inputs,
    patient_level: bool,
    refuse: &mut impl FnMut(FhirError) -> Result<(), FhirError>,
) -> Result<Vec<String>, FhirError> {
    let covered = |t: &str| !patient_level || t == "Patient" || compartment::params("Patient", t).is_some();
    let named = listed(inputs, "_type");
    if named.is_empty() {
        let mut types: Vec<String> = resource_types()
            .into_iter()
            .filter(|t| covered(t) && context.view.may_search(t))
            .map(str::to_string)
            .collect();
        types.sort();
        return Ok(types);
    }
    let mut types = Vec::new();
    for name in named {
        if !is_resource_type(name) {
            refuse(bad_parameter("_type", format!("'{name}' is not a FHIR R4 resource type")))?;
        } else if !covered(name) {
            refuse(unsupported("_type", format!("{name} resources are never in a Patient compartment")))?;
        } else if !context.view.may_search(name) {
            refuse(FhirError::forbidden(format!("the token grants no search of {name}, which _type names")))?;
        } else {
            types.push(name.to_string());
        }
    }
    if types.is_empty() {
        return Err(bad_parameter("_type", "none of the types named can be exported"));
    }
    Ok(types)
}

/// `_typeFilter`: per type, the search queries (as query strings) a resource must match one of.
/// Each is parsed as a search now, so that a bad one is refused at the kick-off.
fn type_filters(
    context: &OperationContext<'_>,
    inputs: &Inputs,
    types: &[String],
    refuse: &mut impl FnMut(FhirError) -> Result<(), FhirError>,
) -> Result<BTreeMap<String, Vec<String>>, FhirError> {
    let mut filters: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for decoded in filter_queries(inputs) {
        let Some((resource_type, query)) = decoded.split_once('?') else {
            refuse(bad_parameter("_typeFilter", format!("'{decoded}' is not a search query Type?parameters")))?;
            continue;
        };
        if !types.iter().any(|t| t == resource_type) {
            refuse(bad_parameter(
                "_typeFilter",
                format!("'{decoded}' filters {resource_type}, which is not exported"),
            ))?;
            continue;
        }
        let parameters: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let shaping = parameters.iter().find(|(name, _)| {
            let base = name.split(':').next().unwrap_or(name);
            NOT_FILTERS.contains(&base) || base.starts_with("_contained")
        });
        if let Some((name, _)) = shaping {
            refuse(bad_parameter("_typeFilter", format!("'{decoded}' uses {name}, which a _typeFilter may not")))?;
            continue;
        }
        if let Err(error) = context.search_query(resource_type, &parameters) {
            let why = error.issues.first().map(|i| i.diagnostics.clone()).unwrap_or_default();
            refuse(bad_parameter("_typeFilter", format!("'{decoded}': {why}")))?;
            continue;
        }
        filters.entry(resource_type.to_string()).or_default().push(query.to_string());
    }
    Ok(filters)
}

/// The queries of `_typeFilter`. The IG has a client encode each query and join them with
/// commas; the URL's decoding has undone the encoding by now, so a comma starts a new query
/// only where `Type?` follows it (`Observation?status=final,amended` is one query).
fn filter_queries(inputs: &Inputs) -> Vec<String> {
    let mut queries: Vec<String> = Vec::new();
    for value in inputs.texts("_typeFilter") {
        for segment in value.split(',') {
            let starts_query = segment.split_once('?').is_some_and(|(t, _)| is_resource_type(t.trim()));
            match queries.last_mut() {
                Some(query) if !starts_query => {
                    query.push(',');
                    query.push_str(segment);
                }
                _ => queries.push(segment.trim().to_string()),
            }
        }
    }
    queries.retain(|q| !q.is_empty());
    queries.dedup();
    queries
}

/// `_elements`: `element` or `Type.element` entries.
fn elements(inputs: &Inputs) -> Result<Vec<String>, FhirError> {
    let mut elements = Vec::new();
    for entry in listed(inputs, "_elements") {
        let (resource_type, element) = match entry.split_once('.') {
            Some((resource_type, element)) => (Some(resource_type), element),
            None => (None, entry),
        };
        if resource_type.is_some_and(|t| !is_resource_type(t)) {
            return Err(bad_parameter("_elements", format!("'{entry}' does not start with a resource type")));
        }
        if element.is_empty() || !element.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad_parameter("_elements", format!("'{entry}' does not name a top-level element")));
        }
        elements.push(entry.to_string());
    }
    Ok(elements)
}

/// `_since`: the `transactionTime` of an earlier export (its mark), or another instant in the
/// past.
async fn since(context: &mut OperationContext<'_>, inputs: &Inputs) -> Result<Option<SinceText>, FhirError> {
    let Some(text) = inputs.text("_since") else { return Ok(None) };
    // A `+` of the offset arrives as a space when the client did not escape it.
    let text = text.replace(' ', "+");
    let at = crate::model::resource::parse_instant(&text)
        .ok_or_else(|| bad_parameter("_since", format!("'{text}' is not an instant")))?;
    if at > OffsetDateTime::now_utc() {
        return Err(bad_parameter("_since", format!("'{text}' is in the future")));
    }
    Ok(Some(match context.export_mark_at(at).await? {
        Some(mark) => SinceText::Mark(mark.to_string()),
        None => SinceText::time(at),
    }))
}

/// The ids in `patient` references (`Patient/1`), each one a patient the caller may read.
async fn patient_inputs(context: &mut OperationContext<'_>, inputs: &Inputs) -> Result<Vec<String>, FhirError> {
    let mut patients = Vec::new();
    for reference in inputs.texts("patient") {
        let id = match parse_local_reference(reference, context.base_url()) {
            Some(("Patient", id)) => id.to_string(),
            _ => return Err(bad_parameter("patient", format!("'{reference}' is not a reference to a Patient here"))),
        };
        if !matches!(context.view.read("Patient", &id).await?, Lookup::Found(_)) {
            return Err(bad_parameter("patient", format!("Patient/{id} is not known")));
        }
        if !patients.contains(&id) {
            patients.push(id);
        }
    }
    Ok(patients)
}

/// At Patient level: the patients named by `patient` (POST), or all the caller may read.
async fn named_patients(context: &mut OperationContext<'_>, inputs: &Inputs) -> Result<Option<Vec<String>>, FhirError> {
    if inputs.texts("patient").next().is_some() && context.read_only() {
        return Err(bad_parameter("patient", "is a POST parameter (a Parameters body)"));
    }
    let patients = patient_inputs(context, inputs).await?;
    Ok((!patients.is_empty()).then_some(patients))
}

/// At Group level: the Group's Patient members, those of Groups it lists (one level deep), and
/// of them those `patient` names when it does.
async fn group_patients(context: &mut OperationContext<'_>, inputs: &Inputs) -> Result<Vec<String>, FhirError> {
    let (group, resource) = context.required_instance()?;
    let base_url = context.base_url().to_string();
    let mut members = Vec::new();
    collect_members(&resource, &group.id, &base_url, &mut members, true)?;
    let nested: Vec<String> = members.iter().filter_map(|m| m.strip_prefix("Group/")).map(str::to_string).collect();
    let mut patients: Vec<String> =
        members.iter().filter_map(|m| m.strip_prefix("Patient/")).map(str::to_string).collect();
    for id in nested {
        // A nested Group the caller cannot read adds nobody (as if it were not listed).
        if let Lookup::Found(version) = context.view.read("Group", &id).await? {
            let resource: Value = serde_json::from_slice(&version.body).map_err(|_| FhirError::internal())?;
            let mut inner = Vec::new();
            collect_members(&resource, &id, &base_url, &mut inner, false)?;
            patients.extend(inner.iter().filter_map(|m| m.strip_prefix("Patient/")).map(str::to_string));
        }
    }
    let mut seen = std::collections::HashSet::new();
    patients.retain(|p| seen.insert(p.clone()));
    if inputs.texts("patient").next().is_none() {
        return Ok(patients);
    }
    if context.read_only() {
        return Err(bad_parameter("patient", "is a POST parameter (a Parameters body)"));
    }
    let named = patient_inputs(context, inputs).await?;
    if let Some(outsider) = named.iter().find(|id| !patients.contains(id)) {
        return Err(bad_parameter("patient", format!("Patient/{outsider} is not a member of Group/{}", group.id)));
    }
    Ok(named)
}

/// The local member references (`Patient/1`, `Group/2`) of an actual Group of persons; 400
/// for a Group of anything else. `nested`: whether Groups may be members (one level).
fn collect_members(
    group: &Value,
    id: &str,
    base_url: &str,
    members: &mut Vec<String>,
    nested: bool,
) -> Result<(), FhirError> {
    let kind = group.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "person" {
        return Err(FhirError::bad_request(format!(
            "Group/{id} is a group of {kind}, not of patients: only a Group of type person can be exported"
        )));
    }
    if group.get("actual").and_then(Value::as_bool) == Some(false) {
        return Err(FhirError::bad_request(format!(
            "Group/{id} is a definitional group (actual = false): it has no members to export"
        )));
    }
    for member in group.get("member").and_then(Value::as_array).into_iter().flatten() {
        if member.get("inactive").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        let Some(reference) = member.pointer("/entity/reference").and_then(Value::as_str) else { continue };
        match parse_local_reference(reference, base_url) {
            Some(("Patient", member)) => members.push(format!("Patient/{member}")),
            Some(("Group", member)) if nested && member != id => members.push(format!("Group/{member}")),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn members_are_patients_and_groups_of_an_actual_person_group() {
        let group = json!({"resourceType": "Group", "type": "person", "actual": true, "member": [
            {"entity": {"reference": "Patient/a"}},
            {"entity": {"reference": "http://h/fhir/Patient/b"}},
            {"entity": {"reference": "http://other/fhir/Patient/z"}},
            {"entity": {"reference": "Group/g2"}},
            {"entity": {"reference": "Practitioner/x"}},
            {"entity": {"reference": "Patient/c"}, "inactive": true}]});
        let mut members = Vec::new();
        collect_members(&group, "g1", "http://h/fhir", &mut members, true).unwrap();
        assert_eq!(members, vec!["Patient/a", "Patient/b", "Group/g2"]);
        let mut flat = Vec::new();
        collect_members(&group, "g1", "http://h/fhir", &mut flat, false).unwrap();
        assert_eq!(flat, vec!["Patient/a", "Patient/b"]);
        let devices = json!({"resourceType": "Group", "type": "device", "actual": true});
        assert_eq!(collect_members(&devices, "g", "http://h/fhir", &mut Vec::new(), false).unwrap_err().status(), 400);
        let definitional = json!({"resourceType": "Group", "type": "person", "actual": false});
        assert_eq!(
            collect_members(&definitional, "g", "http://h/fhir", &mut Vec::new(), false).unwrap_err().status(),
            400
        );
    }
}
