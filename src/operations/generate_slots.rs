//! `Schedule/[id]/$generate-slots` (Hearth's own): writes the free Slots of a date range from
//! weekly availability, in the Schedule's time zone (see [`crate::portal::availability`]).
//!
//! Running it twice over a range creates nothing twice: a Slot's id is derived from its
//! Schedule and start instant, and a Slot that exists under that id (even deleted: a clinic
//! that removed one meant it) or a time another Slot of the Schedule already covers is left
//! alone. The Slots are written as the caller, so only those who may create Slots (staff,
//! systems; never a patient) can run it.

use async_trait::async_trait;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::inputs::bad_parameter;
use super::{Inputs, Level, Operation};
use crate::model::outcome::operation_outcome;
use crate::model::{FhirError, Issue};
use crate::portal::availability::{slot_times, SlotTime, Window, TIMEZONE_EXTENSION};
use crate::rest::{Body, FhirResponse, OperationContext, OperationTx};
use crate::store::ResourceVersion;

/// The longest range of dates one invocation covers.
const MAX_DAYS: i32 = 366;

/// The code system of an `appointment-type` given without one.
const APPOINTMENT_TYPES: &str = "http://terminology.hl7.org/CodeSystem/v2-0276";

pub struct GenerateSlots;

#[async_trait]
impl Operation for GenerateSlots {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        _level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let (schedule, schedule_value) = context.required_instance()?;
        let times = planned_times(inputs, &schedule_value)?;
        let template = template(inputs, &schedule.id)?;
        let mut tx = context.begin().await?;
        let written = write_slots(&mut tx, &schedule, &template, &times).await;
        let created = tx.finish(written).await?;
        let message = format!(
            "created {created} Slot(s) on Schedule/{}; {} of the {} planned existed already or overlap a Slot there",
            schedule.id,
            times.len() - created,
            times.len()
        );
        Ok(FhirResponse::new(200, Body::Json(operation_outcome(&[Issue::information(message)]))))
    }
}

/// The Slot times the inputs ask for, in the Schedule's time zone.
fn planned_times(inputs: &Inputs, schedule: &Value) -> Result<Vec<SlotTime>, FhirError> {
    let date = |name: &str| {
        let text = inputs.text(name).unwrap_or_default();
        text.parse::<jiff::civil::Date>()
            .map_err(|_| bad_parameter(name, format!("'{text}' is not a date (YYYY-MM-DD)")))
    };
    let (from, to) = (date("start")?, date("end")?);
    if to < from {
        return Err(bad_parameter("end", "the last date comes before the first"));
    }
    if (to - from).get_days() >= MAX_DAYS {
        return Err(bad_parameter("end", format!("one invocation covers at most {MAX_DAYS} days")));
    }
    let open = windows(inputs, "availability", false)?;
    let breaks = windows(inputs, "break", true)?;
    let length = inputs.integer("slot-minutes").unwrap_or_default();
    if !(5..=24 * 60).contains(&length) {
        return Err(bad_parameter("slot-minutes", "a Slot lasts from 5 minutes to 24 hours"));
    }
    let zone_name = schedule_zone(schedule).or_else(|| inputs.text("timezone").map(str::to_string));
    let zone_name = zone_name.ok_or_else(|| {
        bad_parameter("timezone", format!("the Schedule has no {TIMEZONE_EXTENSION} extension: give its time zone"))
    })?;
    let zone = jiff::tz::TimeZone::get(&zone_name)
        .map_err(|_| bad_parameter("timezone", format!("'{zone_name}' is not an IANA time zone")))?;
    slot_times(&open, &breaks, from, to, length as i32, &zone).map_err(|why| bad_parameter("availability", why))
}

fn windows(inputs: &Inputs, name: &str, every_day_by_default: bool) -> Result<Vec<Window>, FhirError> {
    inputs
        .texts(name)
        .map(|text| Window::parse(text, every_day_by_default).map_err(|why| bad_parameter(name, why)))
        .collect()
}

/// The Schedule's time zone extension, if it has one.
fn schedule_zone(schedule: &Value) -> Option<String> {
    let extensions = schedule.get("extension")?.as_array()?;
    let zone = extensions.iter().find(|e| e.get("url").and_then(Value::as_str) == Some(TIMEZONE_EXTENSION))?;
    zone.get("valueCode")?.as_str().map(str::to_string)
}

/// The Slot every generated one copies: its Schedule, status and codes.
fn template(inputs: &Inputs, schedule_id: &str) -> Result<Value, FhirError> {
    let mut slot =
        json!({"resourceType": "Slot", "schedule": {"reference": format!("Schedule/{schedule_id}")}, "status": "free"});
    let coding = |text: &str, default_system: Option<&str>| match text.split_once('|') {
        Some((system, code)) if !code.is_empty() => json!({"system": system, "code": code}),
        _ => match default_system {
            Some(system) => json!({"system": system, "code": text}),
            None => json!({"code": text}),
        },
    };
    let services: Vec<Value> =
        inputs.texts("service-type").map(|text| json!({"coding": [coding(text, None)]})).collect();
    if !services.is_empty() {
        slot["serviceType"] = json!(services);
    }
    if let Some(text) = inputs.text("appointment-type") {
        slot["appointmentType"] = json!({"coding": [coding(text, Some(APPOINTMENT_TYPES))]});
    }
    Ok(slot)
}

/// The id of the Slot of `schedule_id` starting at `start`: the same every time.
fn slot_id(schedule_id: &str, start: jiff::Timestamp) -> String {
    let digest = Sha256::digest(format!("Schedule/{schedule_id}|{}", start.as_second()));
    digest[..16].iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Writes the planned Slots that do not exist yet; how many it wrote.
async fn write_slots(
    tx: &mut OperationTx<'_>,
    schedule: &ResourceVersion,
    template: &Value,
    times: &[SlotTime],
) -> Result<usize, FhirError> {
    let (Some(first), Some(last)) = (times.first(), times.last()) else { return Ok(0) };
    let existing = existing_spans(tx, &schedule.id, first.start, last.end).await?;
    let mut created = 0;
    for time in times {
        let overlaps = existing.iter().any(|(start, end)| *start < time.end && time.start < *end);
        let id = slot_id(&schedule.id, time.start);
        if overlaps || tx.exists("Slot", &id).await? {
            continue;
        }
        let mut slot = template.clone();
        slot["start"] = json!(time.start_text);
        slot["end"] = json!(time.end_text);
        tx.create_as("Slot", &id, slot).await?;
        created += 1;
    }
    Ok(created)
}

/// The spans of the Schedule's Slots that start before `to` and end after `from`.
async fn existing_spans(
    tx: &mut OperationTx<'_>,
    schedule_id: &str,
    from: jiff::Timestamp,
    to: jiff::Timestamp,
) -> Result<Vec<(jiff::Timestamp, jiff::Timestamp)>, FhirError> {
    let day = jiff::SignedDuration::from_hours(24);
    let parameters = [
        ("schedule".to_string(), format!("Schedule/{schedule_id}")),
        ("start".to_string(), format!("ge{}", from - day)),
        ("start".to_string(), format!("lt{to}")),
        ("_count".to_string(), "1000".to_string()),
    ];
    let mut query = tx.search_query("Slot", &parameters)?;
    let mut spans = Vec::new();
    loop {
        let page = tx.search(&query).await?;
        for version in &page.resources {
            let Ok(slot) = serde_json::from_slice::<Value>(&version.body) else { continue };
            let instant = |name: &str| slot.get(name)?.as_str()?.parse::<jiff::Timestamp>().ok();
            if let (Some(start), Some(end)) = (instant("start"), instant("end")) {
                spans.push((start, end));
            }
        }
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => return Ok(spans),
        }
    }
}
