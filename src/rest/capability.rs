//! The CapabilityStatement, generated from the resource types and the search registry the
//! server really uses, so that it lists exactly what is implemented.

use serde_json::{json, Value};

use super::{Body, FhirResponse};
use crate::model::validate::resource_types;
use crate::operations::Definition;
use crate::search::Registry;
use crate::validation::Definitions;

/// Interactions every resource type supports.
const TYPE_INTERACTIONS: &[&str] =
    &["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"];

/// The choices Hearth made where R4 leaves one, for the types the portal's workflows write
/// (`docs/portal.md` says more).
const WORKFLOW_NOTES: &[(&str, &str)] = &[
    ("AuditEvent", "Recorded by the server as BALP AuditEvents (ADR 19); none is created, changed or deleted through \
      the API (405). Searched by patient, date, action and agent, _sort=date or -date; a patient's token finds the \
      events about its patients (docs/audit.md)."),
    ("Appointment", "No Slot is held by two active Appointments; a Slot's status follows its holder (all write paths)."),
    ("Binary", "Raw bytes for a non-FHIR Accept; raw uploads with X-Security-Context; patients upload into their own record only."),
    ("Communication", "Secure messaging: patients write as themselves to their care team in their own threads; sent messages are not changed, only marked read (received)."),
    ("Coverage", "Patients submit insurance cards as status draft for the clinic to activate; they change no other card."),
    ("Invoice", "Patients read, never write. A PaymentReconciliation paying the total moves an issued Invoice to balanced."),
    ("PaymentNotice", "A patient's through the Invoice it names in request; patients read, never write."),
    ("PaymentReconciliation", "A patient's through the Invoice its detail.request names (search parameter detail-request); patients read, never write."),
    ("Subscription", "Topic-based (Subscriptions R5 Backport IG): topics at Basic?code=SubscriptionTopic; rest-hook and email channels; patients subscribe to their own records only."),
    ("Task", "Patients reach the Tasks for them, and create refill or renewal requests of their active prescriptions, one open each."),
];

/// The statement as a JSON value; `base_url` is the FHIR base (for the canonical URLs of the
/// project's own OperationDefinitions).
pub fn capability_statement(registry: &Registry, definitions: &Definitions, base_url: &str) -> Value {
    let resources: Vec<Value> = resource_types()
        .into_iter()
        .map(|resource_type| {
            let mut search_params = vec![json!({
                "name": "_id",
                "definition": "http://hl7.org/fhir/SearchParameter/Resource-id",
                "type": "token",
            })];
            search_params.extend(
                registry
                    .params_for(resource_type)
                    .filter(|p| p.kind.is_supported() && p.code != "_id")
                    .map(|p| json!({"name": p.code, "definition": p.url, "type": p.kind.as_str()})),
            );
            let mut resource = json!({
                "type": resource_type,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{resource_type}"),
                "interaction": TYPE_INTERACTIONS.iter().map(|code| json!({"code": code})).collect::<Vec<_>>(),
                "versioning": "versioned",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "modified-since",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "searchParam": search_params,
                "operation": operations_on(base_url, |d| (d.type_level || d.instance) && d.applies_to(resource_type)),
            });
            if resource_type == "AuditEvent" {
                // Recorded by the server only (ADR 19).
                resource["interaction"] = json!([{"code": "read"}, {"code": "search-type"}]);
                resource["updateCreate"] = json!(false);
                resource["conditionalCreate"] = json!(false);
                resource["conditionalUpdate"] = json!(false);
                resource["conditionalDelete"] = json!("not-supported");
                resource["readHistory"] = json!(false);
                resource["conditionalRead"] = json!("not-supported");
                // Searched in the audit tables, by these only (see docs/audit.md).
                if let Some(Value::Array(params)) = resource.get_mut("searchParam") {
                    params
                        .retain(|p| ["patient", "date", "action", "agent"].contains(&p["name"].as_str().unwrap_or("")));
                }
            }
            let profiles = definitions.profiles_of(resource_type);
            if !profiles.is_empty() {
                resource["supportedProfile"] = json!(profiles);
            }
            if let Some((_, note)) = WORKFLOW_NOTES.iter().find(|(t, _)| *t == resource_type) {
                resource["documentation"] = Value::String(note.to_string());
            }
            resource
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "Hearth",
        "kind": "instance",
        "software": {"name": "Hearth", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Hearth FHIR R4 server"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/fhir+xml"],
        "patchFormat": ["application/json-patch+json", "application/merge-patch+json", "application/fhir+json", "application/fhir+xml"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
            "operation": operations_on(base_url, |d| d.system),
        }],
    })
}

/// The operations whose definitions `defined_here` accepts, as `{name, definition}`.
fn operations_on(base_url: &str, defined_here: impl Fn(&Definition) -> bool) -> Vec<Value> {
    crate::operations::registered()
        .map(|r| r.definition)
        .filter(|d| defined_here(d))
        .map(|d| json!({"name": d.code, "definition": d.canonical(base_url)}))
        .collect()
}

/// `GET /metadata`, with `rest.security` when the server authorizes requests, and the topics
/// in force on Subscription (the Backport IG's `subscriptiontopic-canonical` extension).
pub(super) fn response(
    registry: &Registry,
    definitions: &Definitions,
    base_url: &str,
    security: Option<&Value>,
    topics: &[std::sync::Arc<crate::subscriptions::Topic>],
) -> FhirResponse {
    let mut statement = capability_statement(registry, definitions, base_url);
    if let Some(security) = security {
        statement["rest"][0]["security"] = security.clone();
    }
    let resources = statement["rest"][0]["resource"].as_array_mut();
    if let Some(subscription) = resources.into_iter().flatten().find(|r| r["type"] == "Subscription") {
        subscription["extension"] = topics
            .iter()
            .map(|topic| json!({"url": TOPIC_CANONICAL, "valueCanonical": topic.url}))
            .collect::<Vec<_>>()
            .into();
        subscription["supportedProfile"] = json!([crate::subscriptions::BACKPORT_SUBSCRIPTION_PROFILE]);
    }
    FhirResponse::new(200, Body::Json(statement))
}

/// The Backport IG's extension naming a topic a server supports.
const TOPIC_CANONICAL: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical";
