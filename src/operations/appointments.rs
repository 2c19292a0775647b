//! What $hold and $book share: reading the Appointment they are given, checking that it can
//! take its Slots now, and the searchset Bundle they answer with (IHE ITI Scheduling).
//!
//! These checks give the caller a precise answer early; the invariant itself (one active
//! Appointment per Slot, Slot statuses that follow) is kept by the write transaction at commit,
//! whatever path the write took (`rest/scheduling.rs`).

use serde_json::{json, Value};

use super::inputs::{parameter_path, unprocessable};
use super::Inputs;
use crate::model::resource::now;
use crate::model::{ErrorKind, FhirError, Issue, IssueCode};
use crate::portal::scheduling::{refers_to, slot_ids, span_of, status_of, times_disagree};
use crate::rest::{Body, BundleWriter, FhirResponse, OperationContext, OperationTx};
use crate::search::index::parse_local_reference;
use crate::store::ResourceVersion;

/// The Appointment an invocation names: a proposal given inline (stored as new), or a stored
/// one (`appointment-reference`).
pub struct Given {
    pub appointment: Value,
    pub stored: Option<ResourceVersion>,
}

/// Reads `appointment-resource` or `appointment-reference` (exactly one), the stored one
/// through the caller's transaction (404 when the caller does not reach it). Its status must
/// be one of `statuses`.
pub async fn given(tx: &mut OperationTx<'_>, inputs: &Inputs, statuses: &[&str]) -> Result<Given, FhirError> {
    let resource = inputs.resource("appointment-resource");
    let reference = inputs.text("appointment-reference");
    let given = match (resource, reference) {
        (Some(resource), None) => {
            let mut appointment = resource.clone();
            if let Some(object) = appointment.as_object_mut() {
                object.remove("id");
                object.remove("meta");
            }
            Given { appointment, stored: None }
        }
        (None, Some(reference)) => {
            let stored = stored_appointment(tx, reference, "appointment-reference").await?;
            let appointment = serde_json::from_slice(&stored.body).map_err(|_| FhirError::internal())?;
            Given { appointment, stored: Some(stored) }
        }
        _ => {
            return Err(FhirError::bad_request(
                "give exactly one of appointment-resource (a proposed Appointment) and appointment-reference",
            ))
        }
    };
    let status = status_of(&given.appointment);
    if !(status.is_empty() || statuses.contains(&status)) {
        return Err(unprocessable(
            format!("the Appointment is {status}; this operation takes one that is {}", statuses.join(" or ")),
            "Appointment.status",
        ));
    }
    Ok(given)
}

/// The id named by a local `Appointment/[id]` reference input.
fn appointment_id(base_url: &str, reference: &str, input: &str) -> Result<String, FhirError> {
    match parse_local_reference(reference, base_url) {
        Some(("Appointment", id)) => Ok(id.to_string()),
        _ => Err(FhirError::with_issues(
            ErrorKind::BadRequest,
            vec![Issue::error(IssueCode::Value, format!("'{reference}' is not a reference to an Appointment here"))
                .at(parameter_path(input))],
        )),
    }
}

/// The stored Appointment a reference input names (404 when the caller does not reach it).
pub async fn stored_appointment(
    tx: &mut OperationTx<'_>,
    reference: &str,
    input: &str,
) -> Result<ResourceVersion, FhirError> {
    let id = appointment_id(tx.base_url(), reference, input)?;
    tx.read("Appointment", &id).await?.ok_or_else(|| FhirError::not_found(format!("Appointment/{id} is not known")))
}

/// Checks that `appointment` can take its Slots now: it names at least one Slot and a
/// Patient, each Slot exists, is free (or already held by `holder`, the stored Appointment
/// being booked), starts in the future, and the Appointment's times are the Slots' (422, or
/// 409 for a Slot that is taken).
pub async fn check_slots(tx: &mut OperationTx<'_>, appointment: &Value, holder: Option<&str>) -> Result<(), FhirError> {
    let ids = slot_ids(appointment, tx.base_url());
    if ids.is_empty() {
        return Err(unprocessable("the Appointment names no Slot of this server", "Appointment.slot"));
    }
    if !names_patient(appointment) {
        return Err(unprocessable("the Appointment has no Patient participant", "Appointment.participant"));
    }
    let mut slots = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        let Some(version) = tx.read("Slot", id).await? else {
            return Err(unprocessable(format!("Slot/{id} does not exist"), &format!("Appointment.slot[{index}]")));
        };
        let slot: Value = serde_json::from_slice(&version.body).map_err(|_| FhirError::internal())?;
        let held_by_holder = holder.is_some() && status_of(&slot) == "busy-tentative";
        if status_of(&slot) != "free" && !held_by_holder {
            return Err(FhirError::with_issues(
                ErrorKind::Conflict,
                vec![Issue::error(IssueCode::Conflict, format!("Slot/{id} is no longer free"))
                    .at(format!("Appointment.slot[{index}]"))],
            ));
        }
        if span_of(&slot).is_none_or(|span| span.start <= now()) {
            return Err(unprocessable(format!("Slot/{id} is in the past"), &format!("Appointment.slot[{index}]")));
        }
        slots.push((id.clone(), slot));
    }
    if let Some(why) = times_disagree(appointment, &slots) {
        return Err(unprocessable(why, "Appointment.start"));
    }
    Ok(())
}

/// Whether one of the participants is a Patient.
fn names_patient(appointment: &Value) -> bool {
    let participants = appointment.get("participant").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    participants
        .iter()
        .filter_map(|p| p.pointer("/actor/reference").and_then(Value::as_str))
        .any(|reference| refers_to(reference, &["Patient"]))
}

/// Sets `status`, and the participants' own status where they have none (the patient and the
/// practitioners accept what they book).
pub fn with_status(mut appointment: Value, status: &str) -> Value {
    appointment["status"] = json!(status);
    if appointment.get("created").is_none() {
        appointment["created"] = json!(crate::model::resource::format_instant(now()));
    }
    if let Some(participants) = appointment.get_mut("participant").and_then(Value::as_array_mut) {
        for participant in participants {
            if participant.get("status").and_then(Value::as_str).is_none_or(|s| s == "needs-action") {
                participant["status"] = json!("accepted");
            }
        }
    }
    appointment
}

/// The answer of $hold and $book: a searchset Bundle of the Appointments, then the
/// OperationOutcome of `notes` when there are any.
pub fn searchset(context: &OperationContext<'_>, appointments: &[ResourceVersion], notes: Vec<Issue>) -> FhirResponse {
    let mut writer = BundleWriter::new("searchset", Some(appointments.len() as u64), &[]);
    for version in appointments {
        let entry = json!({"fullUrl": context.resource_url("Appointment", &version.id), "search": {"mode": "match"}});
        writer.entry(&entry, Some(&version.body));
    }
    if !notes.is_empty() {
        let outcome = crate::model::outcome::operation_outcome(&notes);
        let body = serde_json::to_vec(&outcome).unwrap_or_default();
        writer.entry(&json!({"search": {"mode": "outcome"}}), Some(&body));
    }
    FhirResponse::new(200, Body::Raw(writer.finish()))
}
