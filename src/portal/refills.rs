//! Prescription refill requests: a Task whose `code` is `refill` or `renewal` (Hearth's task
//! codes), `focus` the MedicationRequest, `for` its patient, `owner` its prescriber. The rules
//! are pure here; the write transaction applies them (`rest/refills.rs`).

use serde_json::{json, Value};

use crate::search::index::parse_local_reference;

/// The code system of the portal's task codes (R4's `task-code` has no refill).
pub const TASK_CODES: &str = "http://hearth.dev/fhir/CodeSystem/portal-task";

/// Statuses of a request still being handled (R4 `task-status` without the ended ones).
pub const OPEN_STATUSES: &[&str] = &["draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold"];

/// Whether a Task is a refill or renewal request.
pub fn is_refill_request(task: &Value) -> bool {
    let codings = task.pointer("/code/coding").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    codings.iter().any(|coding| {
        coding.get("system").and_then(Value::as_str) == Some(TASK_CODES)
            && matches!(coding.get("code").and_then(Value::as_str), Some("refill" | "renewal"))
    })
}

/// A Task's `status` (empty when it has none).
pub fn status_of(task: &Value) -> &str {
    task.get("status").and_then(Value::as_str).unwrap_or("")
}

/// Whether a Task is a refill request still being handled.
pub fn is_open_request(task: &Value) -> bool {
    is_refill_request(task) && OPEN_STATUSES.contains(&status_of(task))
}

/// The local `Type/id` an element's `reference` names.
pub fn local_reference<'a>(resource: &'a Value, pointer: &str, base_url: &str) -> Option<(&'a str, &'a str)> {
    parse_local_reference(resource.pointer(pointer)?.as_str()?, base_url)
}

/// The refill request a patient makes for `prescription` (a MedicationRequest `id`): for its
/// patient, requested by them, owned by its prescriber.
pub fn request_for(prescription_id: &str, prescription: &Value, note: Option<&str>, authored_on: &str) -> Value {
    let mut task = json!({
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "code": {"coding": [{"system": TASK_CODES, "code": "refill", "display": "Refill request"}]},
        "focus": {"reference": format!("MedicationRequest/{prescription_id}")},
        "for": prescription["subject"],
        "requester": prescription["subject"],
        "authoredOn": authored_on,
    });
    if let Some(prescriber) = prescription.get("requester") {
        task["owner"] = prescriber.clone();
    }
    if let Some(note) = note {
        task["note"] = json!([{"text": note}]);
    }
    task
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_open_refill_requests() {
        let prescription =
            json!({"subject": {"reference": "Patient/p1"}, "requester": {"reference": "Practitioner/d1"}});
        let task = request_for("m1", &prescription, Some("running out"), "2026-12-06T10:00:00Z");
        assert!(is_open_request(&task));
        assert_eq!(task["owner"]["reference"], "Practitioner/d1");
        assert_eq!(local_reference(&task, "/focus/reference", "http://h/fhir"), Some(("MedicationRequest", "m1")));
        let mut done = task.clone();
        done["status"] = json!("completed");
        assert!(is_refill_request(&done) && !is_open_request(&done));
        let mut other = task;
        other["code"]["coding"][0]["system"] = json!("http://elsewhere");
        assert!(!is_refill_request(&other));
    }
}
