//! `Appointment/$find` (IHE ITI-115): proposes Appointments for free Slots, earliest first.
//!
//! The Slots come from searches of free Slots by start, earliest first, over windows of the
//! range that double in length (one day, two, four…: each search sorts only its window's
//! Slots). A practitioner or location selects the Schedules whose actor it is (searched first,
//! then the Slots by `schedule`); a specialty or service type is the Slot's own or its
//! Schedule's. Everything is read from what the clinic publishes (see
//! [`OperationContext::published`]): a patient app finds a practitioner's free time although
//! the practitioner's Schedule is in no compartment of its. A Slot is proposed only when its
//! Schedule is active and the Slot lies inside the Schedule's `planningHorizon`, and only
//! in the future. Nothing is stored: a proposal is held or booked with `$hold` or `$book`.

use std::collections::HashMap;

use async_trait::async_trait;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::inputs::{bad_parameter, parameter_path};
use super::{Inputs, Level, Operation};
use crate::model::resource::{new_id, now};
use crate::model::{ErrorKind, FhirError, Issue, IssueCode};
use crate::portal::scheduling::span_of;
use crate::rest::{Body, BundleWriter, FhirResponse, Lookup, OperationContext, PublishedView};
use crate::search::date::parse_range;
use crate::search::index::parse_local_reference;
use crate::store::{Comparison, Condition, ResourceVersion, SearchQuery};

/// The fewest Slots one page reads: some may be left out by their Schedule's checks.
const MIN_PAGE: usize = 50;

/// The longest range one search may cover.
const MAX_RANGE_DAYS: i64 = 366;

/// How many pages of Slots one invocation looks at, at most, for proposals that pass the
/// Schedules' checks (a bound on the work of one request; windows count one page at least).
const MAX_PAGES: usize = 20;

pub struct Find;

#[async_trait]
impl Operation for Find {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        _level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let (from, to) = range(inputs)?;
        let wanted = inputs
            .integer("_count")
            .map(|n| n.clamp(1, context.paging().max_count as i64) as usize)
            .unwrap_or(context.paging().default_count);
        let patient = patient(context, inputs).await?;
        let published = context.published();
        let actors = actors(&published, inputs).await?;
        let mut schedules: HashMap<String, Option<Value>> = HashMap::new();
        let schedule_ids = match actors.is_empty() {
            true => None,
            false => Some(schedules_of(&published, &actors, &mut schedules).await?),
        };
        if schedule_ids.as_ref().is_some_and(Vec::is_empty) {
            return Ok(FhirResponse::new(200, Body::Raw(BundleWriter::new("searchset", Some(0), &[]).finish())));
        }
        let mut proposals = Vec::new();
        let mut pages = 0;
        // Windows of growing length from the earliest start: a search sorts only its window's
        // Slots, and the first day or two usually hold the earliest proposals.
        let (mut window_start, mut length) = (from, time::Duration::days(1));
        while proposals.len() < wanted && window_start < to && pages < MAX_PAGES {
            let window_end = (window_start + length).min(to);
            let window = Window { start: window_start, end: window_end };
            let page_size = (wanted - proposals.len()).max(MIN_PAGE);
            let mut query = slot_query(context, inputs, schedule_ids.as_deref(), &window, page_size)?;
            while pages < MAX_PAGES {
                pages += 1;
                let page = published.search(&query).await?;
                learn_schedules(&published, &page.resources, &mut schedules).await?;
                for slot in &page.resources {
                    if proposals.len() == wanted {
                        break;
                    }
                    let Ok(slot_value) = serde_json::from_slice::<Value>(&slot.body) else { continue };
                    let schedule = schedule_id(&slot_value, context.base_url())
                        .and_then(|id| schedules.get(&id).cloned().flatten());
                    let Some(schedule) = schedule else { continue };
                    if bookable_in(&schedule, &slot_value) {
                        proposals.push(proposal(&slot.id, &slot_value, &schedule, patient.as_deref()));
                    }
                }
                match page.next {
                    Some(next) if proposals.len() < wanted => query.cursor = Some(next),
                    _ => break,
                }
            }
            (window_start, length) = (window_end, length * 2);
        }
        let mut writer = BundleWriter::new("searchset", Some(proposals.len() as u64), &[]);
        for appointment in &proposals {
            let entry = json!({"fullUrl": format!("urn:uuid:{}", new_id()), "search": {"mode": "match"}});
            writer.entry(&entry, Some(&serde_json::to_vec(appointment).map_err(|_| FhirError::internal())?));
        }
        Ok(FhirResponse::new(200, Body::Raw(writer.finish())))
    }
}

/// The range of starts asked for, `[from, to)`: from `start` (or now, when later) to `end`; 400 when `end`
/// is not after `start` or the range is longer than a year.
fn range(inputs: &Inputs) -> Result<(OffsetDateTime, OffsetDateTime), FhirError> {
    let bound = |name: &str, high: bool| {
        let text = inputs.text(name).unwrap_or_default();
        let range = parse_range(text).ok_or_else(|| bad_parameter(name, format!("'{text}' is not a dateTime")))?;
        let micros = if high { range.high } else { range.low };
        OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
            .map_err(|_| bad_parameter(name, "out of range"))
    };
    let (start, end) = (bound("start", false)?, bound("end", true)?);
    if end <= start {
        return Err(bad_parameter("end", "end must be after start"));
    }
    if end - start > time::Duration::days(MAX_RANGE_DAYS) {
        return Err(bad_parameter(
            "end",
            format!("the range from start to end may cover at most {MAX_RANGE_DAYS} days"),
        ));
    }
    // Whole seconds, so that windows start on them: a Slot's start (indexed with its
    // precision, a second) then falls inside one window, never across two.
    let from = start.max(now());
    let from = match from.nanosecond() {
        0 => from,
        _ => from.replace_nanosecond(0).map_err(|_| FhirError::internal())? + time::Duration::SECOND,
    };
    Ok((from, end))
}

/// The patient the proposals are for, read as the caller (a patient's token reaches only its
/// own patients: another one is unknown).
async fn patient(context: &mut OperationContext<'_>, inputs: &Inputs) -> Result<Option<String>, FhirError> {
    let Some((name, reference)) = one_of(inputs, &["patient-reference", "patient"]) else {
        return Ok(launched_patient(context.access()).map(|id| format!("Patient/{id}")));
    };
    let id = match parse_local_reference(reference, context.base_url()) {
        Some(("Patient", id)) => id.to_string(),
        _ => return Err(bad_parameter(name, format!("'{reference}' is not a reference to a Patient here"))),
    };
    match context.view.read("Patient", &id).await? {
        Lookup::Found(_) => Ok(Some(format!("Patient/{id}"))),
        _ => Err(FhirError::with_issues(
            ErrorKind::Unprocessable,
            vec![Issue::error(IssueCode::NotFound, format!("Patient/{id} is not known")).at(parameter_path(name))],
        )),
    }
}

/// The patient of a patient-launched token (the one patient its `patient/` scopes reach), for
/// whom a patient app finds appointments when it names nobody.
fn launched_patient(access: &crate::auth::Access) -> Option<&str> {
    match access {
        crate::auth::Access::Token(grant) => match grant.patients.as_slice() {
            [only] => Some(only),
            _ => None,
        },
        crate::auth::Access::Open => None,
    }
}

/// The first of `names` given, with its value.
fn one_of<'a>(inputs: &'a Inputs, names: &[&'a str]) -> Option<(&'a str, &'a str)> {
    names.iter().find_map(|name| inputs.text(name).map(|value| (*name, value)))
}

/// The actors asked for, per kind (practitioners, locations), as `Type/id`: each must exist
/// (422 names the one that does not).
async fn actors(published: &PublishedView<'_>, inputs: &Inputs) -> Result<Vec<Vec<String>>, FhirError> {
    let kinds: [(&[&str], &[&str]); 2] = [
        (&["practitioner"], &["Practitioner", "PractitionerRole"]),
        (&["location-reference", "location"], &["Location"]),
    ];
    let mut groups = Vec::new();
    for (names, types) in kinds {
        let mut keys = Vec::new();
        for name in names {
            for reference in inputs.texts(name) {
                match parse_local_reference(reference, published.base_url()) {
                    Some((t, id)) if types.contains(&t) => keys.push((t.to_string(), id.to_string(), *name)),
                    _ => {
                        let expected = types.join(" or ");
                        return Err(bad_parameter(
                            name,
                            format!("'{reference}' is not a reference to a {expected} here"),
                        ));
                    }
                }
            }
        }
        if keys.is_empty() {
            continue;
        }
        let wanted: Vec<(String, String)> = keys.iter().map(|(t, id, _)| (t.clone(), id.clone())).collect();
        let found = published.read_many(&wanted).await?;
        if let Some((t, id, name)) =
            keys.iter().find(|(t, id, _)| !found.iter().any(|v| &v.resource_type == t && &v.id == id))
        {
            return Err(FhirError::with_issues(
                ErrorKind::Unprocessable,
                vec![Issue::error(IssueCode::NotFound, format!("{t}/{id} is not known")).at(parameter_path(name))],
            ));
        }
        groups.push(keys.into_iter().map(|(t, id, _)| format!("{t}/{id}")).collect());
    }
    Ok(groups)
}

/// Part of the range of starts searched: `[start, end)`.
struct Window {
    start: OffsetDateTime,
    end: OffsetDateTime,
}

/// The search for free Slots starting in a window, earliest first, of `schedules` when the
/// inputs named actors, with the inputs' other refinements.
fn slot_query(
    context: &OperationContext<'_>,
    inputs: &Inputs,
    schedules: Option<&[String]>,
    window: &Window,
    count: usize,
) -> Result<SearchQuery, FhirError> {
    let mut parameters = vec![
        ("status".to_string(), "free".to_string()),
        ("_sort".to_string(), "start".to_string()),
        ("_count".to_string(), count.to_string()),
    ];
    if let Some(schedules) = schedules {
        let references: Vec<String> = schedules.iter().map(|id| format!("Schedule/{id}")).collect();
        parameters.push(("schedule".to_string(), references.join(",")));
    }
    if let Some(types) = joined(inputs, &["appointment-type"]) {
        parameters.push(("appointment-type".to_string(), types));
    }
    let mut query = context.search_query("Slot", &parameters)?;
    // The window as one bounded range on the start's index row (`eq`: within it), which
    // drives the search: each window sorts only its own Slots.
    query.all_of.push(vec![Condition::Date {
        param: "start".to_string(),
        comparison: Comparison::Eq,
        low: micros(window.start),
        high: micros(window.end),
    }]);
    // A specialty or service type is the Slot's own, or else its Schedule's.
    for (param, names) in [("specialty", &["specialty"][..]), ("service-type", &["visit-type", "service-type"][..])] {
        if let Some(codes) = joined(inputs, names) {
            let mut either: Vec<Condition> = context.criterion("Slot", param, &codes)?;
            either.extend(context.criterion("Slot", &format!("schedule.{param}"), &codes)?);
            query.all_of.push(either);
        }
    }
    Ok(query)
}

/// The ids of the published Schedules with the actors asked for (any of each kind, every
/// kind), learnt into `schedules` as they are read.
async fn schedules_of(
    published: &PublishedView<'_>,
    actors: &[Vec<String>],
    schedules: &mut HashMap<String, Option<Value>>,
) -> Result<Vec<String>, FhirError> {
    let mut parameters: Vec<(String, String)> =
        actors.iter().map(|group| ("actor".to_string(), group.join(","))).collect();
    parameters.push(("_count".to_string(), "1000".to_string()));
    let mut query = published.search_query("Schedule", &parameters)?;
    let mut ids = Vec::new();
    loop {
        let page = published.search(&query).await?;
        for version in page.resources {
            schedules.insert(version.id.clone(), serde_json::from_slice(&version.body).ok());
            ids.push(version.id);
        }
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => return Ok(ids),
        }
    }
}

/// Microseconds since the epoch, as the date index holds instants.
fn micros(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1000) as i64
}

/// The values of the inputs `names`, joined with commas (a search's "any of").
fn joined(inputs: &Inputs, names: &[&str]) -> Option<String> {
    let values: Vec<&str> = names.iter().flat_map(|name| inputs.texts(name)).collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// Reads the Schedules of `slots` not read yet (`None` for one that is not published).
async fn learn_schedules(
    published: &PublishedView<'_>,
    slots: &[ResourceVersion],
    schedules: &mut HashMap<String, Option<Value>>,
) -> Result<(), FhirError> {
    let base_url = published.base_url().to_string();
    let mut missing: Vec<(String, String)> = Vec::new();
    for slot in slots {
        let Ok(value) = serde_json::from_slice::<Value>(&slot.body) else { continue };
        if let Some(id) = schedule_id(&value, &base_url) {
            if !schedules.contains_key(&id) && !missing.iter().any(|(_, known)| known == &id) {
                missing.push(("Schedule".to_string(), id));
            }
        }
    }
    let found = published.read_many(&missing).await?;
    for (_, id) in missing {
        let schedule = found.iter().find(|v| v.id == id).and_then(|v| serde_json::from_slice(&v.body).ok());
        schedules.insert(id, schedule);
    }
    Ok(())
}

fn schedule_id(slot: &Value, base_url: &str) -> Option<String> {
    let reference = slot.pointer("/schedule/reference")?.as_str()?;
    match parse_local_reference(reference, base_url)? {
        ("Schedule", id) => Some(id.to_string()),
        _ => None,
    }
}

/// Whether `schedule` offers `slot`: the Schedule is active and the Slot lies inside its
/// planning horizon (when it has one), and the Slot starts in the future.
fn bookable_in(schedule: &Value, slot: &Value) -> bool {
    if schedule.get("active").and_then(Value::as_bool) == Some(false) {
        return false;
    }
    let Some(span) = span_of(slot) else { return false };
    if span.start <= now() {
        return false;
    }
    let horizon =
        |name: &str| {
            schedule
                .pointer(&format!("/planningHorizon/{name}"))
                .and_then(Value::as_str)
                .and_then(parse_range)
                .map(|r| if name == "start" { r.low } else { r.high })
        };
    horizon("start").is_none_or(|low| micros(span.start) >= low)
        && horizon("end").is_none_or(|high| micros(span.end) <= high)
}

/// A proposed Appointment for one Slot: its times, its codes, the Schedule's actors and the
/// patient as participants.
fn proposal(slot_id: &str, slot: &Value, schedule: &Value, patient: Option<&str>) -> Value {
    let mut participants: Vec<Value> = schedule
        .get("actor")
        .and_then(Value::as_array)
        .map(|actors| {
            actors
                .iter()
                .map(|actor| json!({"actor": actor, "required": "required", "status": "needs-action"}))
                .collect()
        })
        .unwrap_or_default();
    if let Some(patient) = patient {
        participants.push(json!({"actor": {"reference": patient}, "required": "required", "status": "needs-action"}));
    }
    let mut appointment = json!({
        "resourceType": "Appointment",
        "status": "proposed",
        "start": slot["start"],
        "end": slot["end"],
        "slot": [{"reference": format!("Slot/{slot_id}")}],
        "participant": participants,
    });
    if let Some(span) = span_of(slot) {
        appointment["minutesDuration"] = json!((span.end - span.start).whole_minutes());
    }
    let inherited = [("serviceCategory", true), ("serviceType", true), ("specialty", true), ("appointmentType", false)];
    for (element, from_schedule) in inherited {
        let value = slot.get(element).or_else(|| from_schedule.then(|| schedule.get(element)).flatten());
        if let Some(value) = value {
            appointment[element] = value.clone();
        }
    }
    appointment
}
