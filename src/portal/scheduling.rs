//! Scheduling rules (IHE ITI Scheduling on FHIR R4): which Appointments hold their Slots, what
//! status a Slot must then have, and whether an Appointment's times agree with its Slots.
//!
//! The invariant every write keeps: a Slot is held by at most one active Appointment, and its
//! status follows that Appointment (`busy-tentative` for a `pending` hold, `busy` for a booked
//! one); a Slot no Appointment holds is `free`, `busy-unavailable` (blocked by the clinic) or
//! `entered-in-error`, never `busy` or `busy-tentative`.

use serde_json::Value;
use time::OffsetDateTime;

use crate::model::resource::parse_instant;
use crate::search::index::parse_local_reference;

/// How a clinic runs its scheduling (`hearth serve` flags).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulingSettings {
    /// How long `$hold` keeps a Slot for a patient before it frees itself (`--hold-seconds`).
    pub hold: time::Duration,
    /// How close to its start a patient may no longer cancel an appointment
    /// (`--cancel-cutoff`; none by default).
    pub cancel_cutoff: Option<time::Duration>,
    /// Whether `$bulk-publish` and its files are open without a token (`--publish-slots`).
    pub publish_slots: bool,
}

impl Default for SchedulingSettings {
    fn default() -> Self {
        SchedulingSettings { hold: time::Duration::minutes(10), cancel_cutoff: None, publish_slots: false }
    }
}

/// The job kind that ends a hold: no worker claims it before the hold runs out.
pub const HOLD_EXPIRY_JOB: &str = "appointment-hold-expiry";

/// Which hold an expiry job ends: the Appointment, if it is still `pending` by then (a
/// booking or a cancellation ended the hold already; editing it does not extend it).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct HoldExpiry {
    pub appointment: String,
}

/// Why an expired hold's Appointment was cancelled (its `cancelationReason.text`).
pub const HOLD_EXPIRED: &str = "The hold expired before the appointment was booked";

/// Appointment statuses that hold their Slots. `proposed` (an offer from `$find`) and
/// `waitlist` hold nothing yet; `cancelled`, `noshow` and `entered-in-error` hold nothing any
/// more. `fulfilled` keeps its Slot: the time was used.
pub const HOLDING_STATUSES: &[&str] = &["pending", "booked", "arrived", "checked-in", "fulfilled"];

/// The status of a Slot held by an Appointment in `appointment_status`, if that status holds.
pub fn held_slot_status(appointment_status: &str) -> Option<&'static str> {
    match appointment_status {
        "pending" => Some("busy-tentative"),
        s if HOLDING_STATUSES.contains(&s) => Some("busy"),
        _ => None,
    }
}

/// The status a Slot now in `current` must have when `holder` (the status of the one
/// Appointment holding it) or nobody holds it.
pub fn expected_slot_status(current: &str, holder: Option<&str>) -> String {
    match holder.and_then(held_slot_status) {
        Some(status) => status.to_string(),
        None if matches!(current, "busy" | "busy-tentative") => "free".to_string(),
        None => current.to_string(),
    }
}

/// Whether a Slot in `status` may be taken by an Appointment (one already holding it keeps it).
pub fn is_bookable(status: &str) -> bool {
    !matches!(status, "busy-unavailable" | "entered-in-error")
}

/// Whether a reference (relative, absolute, or versioned) names a resource of one of `types`.
pub fn refers_to(reference: &str, types: &[&str]) -> bool {
    reference.split('/').any(|segment| types.contains(&segment))
}

/// Whether a Schedule's actors include a person whose data it then is (a Patient or a
/// RelatedPerson; a contained actor counts as one): such a Schedule is not the clinic's to
/// publish.
pub fn is_persons_schedule(schedule: &Value) -> bool {
    let actors = schedule.get("actor").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    actors
        .iter()
        .filter_map(|a| a.get("reference").and_then(Value::as_str))
        .any(|reference| reference.starts_with('#') || refers_to(reference, &["Patient", "RelatedPerson"]))
}

/// An Appointment's `status` (empty when it has none).
pub fn status_of(appointment: &Value) -> &str {
    appointment.get("status").and_then(Value::as_str).unwrap_or("")
}

/// The ids of the local Slots an Appointment names in `slot`, in order, without repeats.
pub fn slot_ids(appointment: &Value, base_url: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let references = appointment.get("slot").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for reference in references.iter().filter_map(|r| r.get("reference").and_then(Value::as_str)) {
        if let Some(("Slot", id)) = parse_local_reference(reference, base_url) {
            if !ids.iter().any(|known| known == id) {
                ids.push(id.to_string());
            }
        }
    }
    ids
}

/// The Slots an Appointment holds: those it names while its status holds, none otherwise.
pub fn held_slot_ids(appointment: &Value, base_url: &str) -> Vec<String> {
    match held_slot_status(status_of(appointment)) {
        Some(_) => slot_ids(appointment, base_url),
        None => Vec::new(),
    }
}

/// Whether an Appointment in `status` can still be cancelled (it has not happened, nor been
/// cancelled or entered in error).
pub fn is_cancellable(status: &str) -> bool {
    matches!(status, "proposed" | "pending" | "booked" | "arrived" | "checked-in" | "waitlist")
}

/// The Appointment cancelled, with `reason` as its `cancelationReason` text.
pub fn cancelled(mut appointment: Value, reason: &str) -> Value {
    appointment["status"] = Value::String("cancelled".into());
    appointment["cancelationReason"] = serde_json::json!({"text": reason});
    appointment
}

/// A period with both ends as instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
}

/// The `start` and `end` of a Slot or Appointment, when both are instants.
pub fn span_of(resource: &Value) -> Option<Span> {
    let instant = |name: &str| resource.get(name).and_then(Value::as_str).and_then(parse_instant);
    Some(Span { start: instant("start")?, end: instant("end")? })
}

/// Why an Appointment's times disagree with the Slots it names, if they do: it must start
/// when its first Slot starts and end when its last one ends (IHE ITI Scheduling), and its
/// Slots must follow one another without gaps.
pub fn times_disagree(appointment: &Value, slots: &[(String, Value)]) -> Option<String> {
    let mut spans = Vec::new();
    for (id, slot) in slots {
        match span_of(slot) {
            Some(span) => spans.push((id, span)),
            None => return Some(format!("Slot/{id} has no start and end instants")),
        }
    }
    spans.sort_by_key(|(_, span)| span.start);
    let (Some((_, first)), Some((_, last))) = (spans.first(), spans.last()) else { return None };
    for pair in spans.windows(2) {
        if pair[0].1.end != pair[1].1.start {
            return Some(format!("Slot/{} and Slot/{} do not follow one another", pair[0].0, pair[1].0));
        }
    }
    let Some(appointment_span) = span_of(appointment) else {
        return Some("an Appointment that holds Slots needs start and end instants".to_string());
    };
    let wanted = Span { start: first.start, end: last.end };
    (appointment_span != wanted).then(|| {
        format!(
            "the Appointment runs from {} to {}, but its Slots from {} to {}",
            text(appointment, "start"),
            text(appointment, "end"),
            text(&slots_by(&spans, first.start, slots), "start"),
            text(&slots_by(&spans, last.start, slots), "end"),
        )
    })
}

fn slots_by(spans: &[(&String, Span)], start: OffsetDateTime, slots: &[(String, Value)]) -> Value {
    let id = spans.iter().find(|(_, span)| span.start == start).map(|(id, _)| id.as_str()).unwrap_or("");
    slots.iter().find(|(slot_id, _)| slot_id == id).map(|(_, slot)| slot.clone()).unwrap_or(Value::Null)
}

fn text<'a>(resource: &'a Value, name: &str) -> &'a str {
    resource.get(name).and_then(Value::as_str).unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slot(start: &str, end: &str) -> Value {
        json!({"resourceType": "Slot", "start": start, "end": end, "status": "free"})
    }

    #[test]
    fn slot_status_follows_its_holder() {
        assert_eq!(expected_slot_status("free", Some("booked")), "busy");
        assert_eq!(expected_slot_status("free", Some("pending")), "busy-tentative");
        assert_eq!(expected_slot_status("busy", Some("cancelled")), "free");
        assert_eq!(expected_slot_status("busy-tentative", None), "free");
        assert_eq!(expected_slot_status("busy-unavailable", None), "busy-unavailable");
        assert_eq!(expected_slot_status("busy", Some("fulfilled")), "busy");
        assert_eq!(expected_slot_status("busy", Some("proposed")), "free");
    }

    #[test]
    fn persons_schedules_are_recognised() {
        let schedule = |reference: &str| json!({"actor": [{"reference": "Practitioner/p"}, {"reference": reference}]});
        assert!(is_persons_schedule(&schedule("Patient/1")));
        assert!(is_persons_schedule(&schedule("http://other/fhir/RelatedPerson/2/_history/3")));
        assert!(is_persons_schedule(&schedule("#contained")));
        assert!(!is_persons_schedule(&schedule("Location/l1")));
    }

    #[test]
    fn only_holding_statuses_hold_slots() {
        let base = "http://h/fhir";
        let mut appointment = json!({"status": "booked", "slot": [
            {"reference": "Slot/a"}, {"reference": "http://h/fhir/Slot/b"}, {"reference": "Slot/a"},
            {"reference": "http://elsewhere/Slot/c"}]});
        assert_eq!(held_slot_ids(&appointment, base), ["a", "b"]);
        appointment["status"] = json!("proposed");
        assert!(held_slot_ids(&appointment, base).is_empty());
        assert_eq!(slot_ids(&appointment, base), ["a", "b"]);
    }

    #[test]
    fn appointment_times_must_match_its_slots() {
        let slots = vec![
            ("b".to_string(), slot("2030-01-01T09:15:00Z", "2030-01-01T09:30:00Z")),
            ("a".to_string(), slot("2030-01-01T09:00:00Z", "2030-01-01T09:15:00Z")),
        ];
        let matching = json!({"start": "2030-01-01T10:00:00+01:00", "end": "2030-01-01T09:30:00Z"});
        assert_eq!(times_disagree(&matching, &slots), None);
        let late = json!({"start": "2030-01-01T09:05:00Z", "end": "2030-01-01T09:30:00Z"});
        let why = times_disagree(&late, &slots).unwrap();
        assert!(why.contains("09:05") && why.contains("09:00:00Z"), "{why}");
        assert!(times_disagree(&json!({}), &slots).unwrap().contains("needs start and end"));
        let gap = vec![slots[1].clone(), ("c".to_string(), slot("2030-01-01T10:00:00Z", "2030-01-01T10:15:00Z"))];
        assert!(times_disagree(&matching, &gap).unwrap().contains("do not follow"));
    }
}
