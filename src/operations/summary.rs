//! IPS `$summary` (International Patient Summary IG 2.0.0): `Patient/[id]/$summary` and
//! `Patient/$summary?identifier=system|value` generate, on demand, a `document` Bundle whose
//! Composition (LOINC 60591-5) has the IPS sections the patient's record supports. The three
//! required sections (Problems, Allergies, Medication Summary) are always there, with an
//! `emptyReason` when nothing is recorded (or the caller may not read that kind of record);
//! the recommended ones (Immunizations, Results, Procedures, Devices, Vital signs) and Past
//! illnesses appear when there is data. Nothing is stored.
//!
//! Every resource is read through the caller's view, and the resources the entries reference
//! (practitioners, organizations, medications…) are carried in the Bundle, so that every
//! reference in it resolves inside it.

use std::collections::HashSet;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::documents::{by_type, display_of, document_bundle, narrative_list, narrative_text, with_references, Entry};
use super::inputs::parameter_path;
use super::{Inputs, Level, Operation};
use crate::model::resource::{format_instant, new_id, now};
use crate::model::{ErrorKind, FhirError, IssueCode};
use crate::rest::{Body, FhirResponse, OperationContext};
use crate::search::compartment::membership;
use crate::store::{ResourceVersion, SearchQuery};

/// The IPS Composition profile (the only one this server generates).
const COMPOSITION_PROFILE: &str = "http://hl7.org/fhir/uv/ips/StructureDefinition/Composition-uv-ips";
const BUNDLE_PROFILE: &str = "http://hl7.org/fhir/uv/ips/StructureDefinition/Bundle-uv-ips";
const LOINC: &str = "http://loinc.org";

/// The most resources of one type a summary gathers.
const MAX_PER_TYPE: usize = 1000;

pub struct Summary;

/// One section of the summary.
struct Section {
    title: &'static str,
    code: &'static str,
    display: &'static str,
    /// Whether IPS requires it (it then appears empty, with an `emptyReason`).
    required: bool,
    /// Which gathered resources belong to it.
    holds: fn(&Entry) -> bool,
}

const SECTIONS: &[Section] = &[
    Section {
        title: "Problems",
        code: "11450-4",
        display: "Problem list - Reported",
        required: true,
        holds: is_current_problem,
    },
    Section {
        title: "Allergies and Intolerances",
        code: "48765-2",
        display: "Allergies and adverse reactions Document",
        required: true,
        holds: |e| e.resource_type == "AllergyIntolerance",
    },
    Section {
        title: "Medication Summary",
        code: "10160-0",
        display: "History of Medication use Narrative",
        required: true,
        holds: |e| matches!(e.resource_type.as_str(), "MedicationStatement" | "MedicationRequest"),
    },
    Section {
        title: "Immunizations",
        code: "11369-6",
        display: "History of Immunization Narrative",
        required: false,
        holds: |e| e.resource_type == "Immunization",
    },
    Section {
        title: "Results",
        code: "30954-2",
        display: "Relevant diagnostic tests/laboratory data Narrative",
        required: false,
        holds: is_result,
    },
    Section {
        title: "History of Procedures",
        code: "47519-4",
        display: "History of Procedures Document",
        required: false,
        holds: |e| e.resource_type == "Procedure",
    },
    Section {
        title: "Medical Devices",
        code: "46264-8",
        display: "History of medical device use",
        required: false,
        holds: |e| e.resource_type == "DeviceUseStatement",
    },
    Section {
        title: "Vital Signs",
        code: "8716-3",
        display: "Vital signs",
        required: false,
        holds: |e| has_category(e, "vital-signs"),
    },
    Section {
        title: "Past History of Illness",
        code: "11348-0",
        display: "History of Past illness Narrative",
        required: false,
        holds: is_past_problem,
    },
];

/// The types whose records the summary draws from.
const TYPES: &[&str] = &[
    "Condition",
    "AllergyIntolerance",
    "MedicationStatement",
    "MedicationRequest",
    "Immunization",
    "Observation",
    "DiagnosticReport",
    "Procedure",
    "DeviceUseStatement",
];

#[async_trait]
impl Operation for Summary {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        if let Some(profile) = inputs.text("profile") {
            if profile.split('|').next() != Some(COMPOSITION_PROFILE) {
                return Err(FhirError::new(
                    ErrorKind::BadRequest,
                    IssueCode::NotSupported,
                    format!("this server generates IPS summaries ({COMPOSITION_PROFILE}) only, not '{profile}'"),
                )
                .with_expression(&parameter_path("profile")));
            }
        }
        let patient = match (context.instance().cloned(), level) {
            (Some(patient), _) => patient,
            (None, _) => patient_by_identifier(context, inputs.text("identifier")).await?,
        };
        let mut gathered = vec![Entry::of(&patient)?];
        for resource_type in TYPES {
            gathered.extend(records(context, resource_type, &patient.id).await?);
        }
        let records: HashSet<(String, String)> = gathered.iter().map(Entry::key).collect();
        let entries = with_references(context, gathered, &Value::Null).await?;
        // Sections list the records gathered for them, not what those records reference.
        let sectioned: Vec<&Entry> = entries.iter().filter(|e| records.contains(&e.key())).collect();
        let composition = composition(context, &patient.id, &sectioned);
        // The generated Composition's fullUrl is the urn:uuid of its id.
        let url = format!("urn:uuid:{}", composition["id"].as_str().unwrap_or_default());
        let bundle = document_bundle(context, &url, composition, entries, Some(BUNDLE_PROFILE));
        Ok(FhirResponse::new(200, Body::Json(bundle)))
    }
}

/// The one patient with `identifier` the caller may search; 404 when there is none, 422
/// when several match.
async fn patient_by_identifier(
    context: &mut OperationContext<'_>,
    identifier: Option<&str>,
) -> Result<ResourceVersion, FhirError> {
    let identifier = identifier.ok_or_else(|| {
        FhirError::bad_request(
            "Patient/$summary needs the parameter 'identifier' (system|value), or use Patient/[id]/$summary",
        )
    })?;
    let mut query = SearchQuery::new("Patient", 2);
    query.all_of.push(context.criterion("Patient", "identifier", identifier)?);
    let mut found = context.view.search(&mut query).await?.resources;
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(FhirError::not_found(format!("no patient has the identifier '{identifier}'"))),
        _ => Err(FhirError::new(
            ErrorKind::Unprocessable,
            IssueCode::Multiple,
            format!("more than one patient has the identifier '{identifier}'"),
        )),
    }
}

/// The `resource_type` records in the patient's compartment that the caller may search.
async fn records(
    context: &mut OperationContext<'_>,
    resource_type: &str,
    patient: &str,
) -> Result<Vec<Entry>, FhirError> {
    let mut query = SearchQuery::new(resource_type, MAX_PER_TYPE);
    query.all_of.push(membership("Patient", patient, resource_type).unwrap_or_default());
    if resource_type == "Observation" {
        // The observations of the Results and Vital Signs sections.
        query.all_of.push(context.criterion("Observation", "category", "laboratory,vital-signs")?);
    }
    let page = context.view.search_readable(&mut query).await?;
    let mut records = Vec::with_capacity(page.resources.len());
    for version in &page.resources {
        let record = Entry::of(version)?;
        if !entered_in_error(&record.resource) {
            records.push(record);
        }
    }
    Ok(records)
}

fn entered_in_error(resource: &Value) -> bool {
    let code_of = |name: &str| {
        resource
            .get(name)
            .and_then(|v| v.get("coding"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|c| c.get("code").and_then(Value::as_str) == Some("entered-in-error"))
    };
    resource.get("status").and_then(Value::as_str) == Some("entered-in-error") || code_of("verificationStatus")
}

/// The Composition: one section per IPS section, with entries and a narrative.
fn composition(context: &OperationContext<'_>, patient: &str, records: &[&Entry]) -> Value {
    let absolute = |t: &str, id: &str| context.resource_url(t, id);
    let grouped = by_type(records);
    let mut sections = Vec::new();
    for section in SECTIONS {
        let members: Vec<&Entry> = TYPES
            .iter()
            .flat_map(|t| grouped.get(t).into_iter().flatten())
            .copied()
            .filter(|e| (section.holds)(e))
            .collect();
        if members.is_empty() && !section.required {
            continue;
        }
        let mut value = json!({
            "title": section.title,
            "code": {"coding": [{"system": LOINC, "code": section.code, "display": section.display}]},
        });
        if members.is_empty() {
            value["text"] =
                narrative_text(&format!("No information about {} is available.", section.title.to_lowercase()));
            value["emptyReason"] = json!({"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/list-empty-reason",
                "code": "unavailable",
                "display": "Unavailable",
            }]});
        } else {
            let items: Vec<String> = members.iter().map(|e| display_of(e)).collect();
            value["text"] = narrative_list(&items);
            value["entry"] = members.iter().map(|e| json!({"reference": absolute(&e.resource_type, &e.id)})).collect();
        }
        sections.push(value);
    }
    let date = format_instant(now());
    json!({
        "resourceType": "Composition",
        "id": new_id(),
        "meta": {"profile": [COMPOSITION_PROFILE]},
        "status": "final",
        "type": {"coding": [{"system": LOINC, "code": "60591-5", "display": "Patient summary Document"}]},
        "subject": {"reference": absolute("Patient", patient)},
        "date": date,
        "author": [{"display": "Hearth FHIR server (generated on request)"}],
        "title": format!("International Patient Summary as of {date}"),
        "section": sections,
    })
}

fn clinical_status(entry: &Entry) -> Option<&str> {
    entry.resource.pointer("/clinicalStatus/coding/0/code").and_then(Value::as_str)
}

fn is_current_problem(entry: &Entry) -> bool {
    entry.resource_type == "Condition"
        && clinical_status(entry).is_none_or(|s| matches!(s, "active" | "recurrence" | "relapse"))
}

fn is_past_problem(entry: &Entry) -> bool {
    entry.resource_type == "Condition" && !is_current_problem(entry)
}

fn has_category(entry: &Entry, code: &str) -> bool {
    entry.resource_type == "Observation"
        && entry.resource.get("category").and_then(Value::as_array).into_iter().flatten().any(|category| {
            category
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| c.get("code").and_then(Value::as_str) == Some(code))
        })
}

fn is_result(entry: &Entry) -> bool {
    entry.resource_type == "DiagnosticReport"
        || (has_category(entry, "laboratory") && !has_category(entry, "vital-signs"))
}
