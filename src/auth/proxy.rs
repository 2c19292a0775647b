//! Proxy access from FHIR data: a RelatedPerson is the source of truth for a caregiver's access
//! (ADR 15). An account linked to `RelatedPerson/x` acts for `x.patient` while `x` is active (no
//! `active` counts as active), not deleted, and now is inside `x.period`. With the parent rule
//! (`--parent-access-until-age`, 18 by default), a parent's or guardian's access ends on the day
//! the patient reaches that age, unless the RelatedPerson's `period.start` is on or after that
//! birthday (the clinic renewed it for the adult patient).
//!
//! The links are worked out when the consent page is shown and when a token is issued; the
//! token carries them ([`Link`]), and every request made with it reads those RelatedPersons
//! again, so that editing the data stops the proxy's tokens at their next request.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::{Date, OffsetDateTime};

use super::records::UserRecord;
use crate::search::date::parse_range;
use crate::store::{Store, StoreResult};

/// The system of the relationship codes of parents and guardians.
const ROLE_CODES: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleCode";

/// Relationships whose access the parent rule ends at the patient's majority: parents (natural,
/// adoptive, step, foster, gestational) and guardians.
const PARENTS: &[&str] = &[
    "PRN", "MTH", "FTH", "NPRN", "NMTH", "NFTH", "ADOPTP", "ADOPTM", "ADOPTF", "STPPRN", "STPMTH", "STPFTH", "PRNFOST",
    "MTHFOST", "FTHFOST", "GESTM", "GUARD",
];

/// A patient reached through a RelatedPerson, as an access token carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// The RelatedPerson's id.
    #[serde(rename = "rp")]
    pub related_person: String,
    /// The patient's id.
    #[serde(rename = "p")]
    pub patient: String,
    /// When the parent rule ends the link (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
}

/// Which patients an account reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// The patients (ids); `None` for every patient (clinicians).
    pub patients: Option<Vec<String>>,
    /// The links through which patients are reached that the account does not reach otherwise
    /// (its own Patient, or a link the operator set with `hearth user add --patient`).
    pub links: Vec<Link>,
}

/// The parent rule: the age at which a parent's access ends; `None` when it never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyPolicy {
    pub parent_access_until_age: Option<u8>,
}

/// The patients `account` reaches now.
pub async fn reach(store: &dyn Store, policy: ProxyPolicy, account: &UserRecord) -> StoreResult<Reach> {
    if account.is_clinician() {
        return Ok(Reach { patients: None, links: Vec::new() });
    }
    let mut patients: Vec<String> =
        account.fhir_user.strip_prefix("Patient/").map(str::to_string).into_iter().collect();
    for patient in &account.patients {
        if !patients.contains(patient) {
            patients.push(patient.clone());
        }
    }
    let now = OffsetDateTime::now_utc();
    let mut links = Vec::new();
    for link in live_links(store, policy, &account.related_persons(), now).await? {
        // One link per patient: when it ends the token stops, and the next sign-in finds any
        // other.
        if !patients.contains(&link.patient) {
            patients.push(link.patient.clone());
            links.push(link);
        }
    }
    Ok(Reach { patients: Some(patients), links })
}

/// The links of RelatedPersons `ids` that grant access now.
async fn live_links(
    store: &dyn Store,
    policy: ProxyPolicy,
    ids: &[String],
    now: OffsetDateTime,
) -> StoreResult<Vec<Link>> {
    let mut links = Vec::new();
    for (id, related) in read_related(store, ids).await? {
        let Some(patient) = granted_patient(&related, now) else { continue };
        let until = match policy.parent_access_until_age.filter(|_| is_parent(&related)) {
            Some(age) => majority(store, &patient, age).await?.filter(|&adult| !renewed_after(&related, adult)),
            None => None,
        };
        if until.is_none_or(|until| now.unix_timestamp() < until) {
            links.push(Link { related_person: id, patient, until });
        }
    }
    Ok(links)
}

/// Whether every one of a token's links still grants its patient (one read of the
/// RelatedPersons).
pub async fn all_live(store: &dyn Store, links: &[Link]) -> StoreResult<bool> {
    let ids: Vec<String> = links.iter().map(|l| l.related_person.clone()).collect();
    let related = read_related(store, &ids).await?;
    let now = OffsetDateTime::now_utc();
    Ok(links.iter().all(|link| {
        link.until.is_none_or(|until| now.unix_timestamp() < until)
            && related.iter().any(|(id, resource)| {
                *id == link.related_person && granted_patient(resource, now).as_deref() == Some(link.patient.as_str())
            })
    }))
}

/// The stored, not deleted RelatedPersons among `ids`. Read one by one, since a read by id is
/// answered from the store's cache of current versions (an account has a handful of links).
async fn read_related(store: &dyn Store, ids: &[String]) -> StoreResult<Vec<(String, Value)>> {
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(version) = store.read("RelatedPerson", id).await?.filter(|v| !v.deleted) else { continue };
        if let Ok(resource) = serde_json::from_slice(&version.body) {
            found.push((version.id, resource));
        }
    }
    Ok(found)
}

/// The patient a RelatedPerson grants access to at `now`: it is active and `now` is inside its
/// period.
fn granted_patient(related: &Value, now: OffsetDateTime) -> Option<String> {
    if related["active"] == Value::Bool(false) {
        return None;
    }
    let now = now.unix_timestamp() as i128 * 1_000_000;
    let period = &related["period"];
    if let Some(start) = period["start"].as_str() {
        // A start that cannot be read grants nothing rather than everything.
        if now < parse_range(start)?.low as i128 {
            return None;
        }
    }
    if let Some(end) = period["end"].as_str() {
        if now >= parse_range(end)?.high as i128 {
            return None;
        }
    }
    let reference = related.pointer("/patient/reference")?.as_str()?;
    let id = reference.strip_prefix("Patient/")?;
    crate::model::resource::is_valid_id(id).then(|| id.to_string())
}

/// Whether a RelatedPerson's relationship is a parent's or a guardian's.
fn is_parent(related: &Value) -> bool {
    let concepts = related["relationship"].as_array().into_iter().flatten();
    concepts.flat_map(|concept| concept["coding"].as_array().into_iter().flatten()).any(|coding| {
        coding["system"].as_str().is_none_or(|system| system == ROLE_CODES)
            && coding["code"].as_str().is_some_and(|code| PARENTS.contains(&code))
    })
}

/// When patient `id` reaches `age` (Unix seconds, midnight UTC of that birthday); `None` when
/// the patient or a full birth date is not on record.
async fn majority(store: &dyn Store, id: &str, age: u8) -> StoreResult<Option<i64>> {
    let Some(stored) = store.read("Patient", id).await?.filter(|v| !v.deleted) else { return Ok(None) };
    let patient: Value = serde_json::from_slice(&stored.body).unwrap_or_default();
    let birth = patient["birthDate"]
        .as_str()
        .and_then(|text| Date::parse(text, &time::format_description::well_known::Iso8601::DATE).ok());
    Ok(birth.and_then(|birth| birthday(birth, age)).map(|day| day.midnight().assume_utc().unix_timestamp()))
}

/// The date someone born on `birth` turns `age` (29 February births: 1 March in other years).
fn birthday(birth: Date, age: u8) -> Option<Date> {
    let year = birth.year() + i32::from(age);
    Date::from_calendar_date(year, birth.month(), birth.day())
        .ok()
        .or_else(|| Date::from_calendar_date(year, time::Month::March, 1).ok())
}

/// Whether a RelatedPerson's period starts on or after `adult` (Unix seconds): the link was
/// made, or renewed, for the adult patient.
fn renewed_after(related: &Value, adult: i64) -> bool {
    related["period"]["start"].as_str().and_then(parse_range).is_some_and(|start| start.low >= adult * 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    #[test]
    fn a_related_person_grants_while_active_and_in_period() {
        let now = datetime!(2026-06-15 12:00 UTC);
        let related = |extra: Value| {
            let mut resource = json!({"resourceType": "RelatedPerson", "patient": {"reference": "Patient/p1"}});
            resource.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            resource
        };
        assert_eq!(granted_patient(&related(json!({})), now).as_deref(), Some("p1"));
        assert_eq!(granted_patient(&related(json!({"active": true})), now).as_deref(), Some("p1"));
        assert_eq!(granted_patient(&related(json!({"active": false})), now), None);
        assert_eq!(granted_patient(&related(json!({"period": {"end": "2026-06"}})), now).as_deref(), Some("p1"));
        assert_eq!(granted_patient(&related(json!({"period": {"end": "2026-06-14"}})), now), None);
        assert_eq!(granted_patient(&related(json!({"period": {"start": "2026-07-01"}})), now), None);
        assert_eq!(granted_patient(&related(json!({"period": {"start": "not a date"}})), now), None);
        assert_eq!(granted_patient(&json!({"patient": {"reference": "Group/g"}}), now), None);
    }

    #[test]
    fn parents_are_told_by_their_role_code() {
        let coded =
            |system: &str, code: &str| json!({"relationship": [{"coding": [{"system": system, "code": code}]}]});
        assert!(is_parent(&coded(ROLE_CODES, "MTH")));
        assert!(is_parent(&coded(ROLE_CODES, "GUARD")));
        assert!(!is_parent(&coded(ROLE_CODES, "FRND")));
        assert!(!is_parent(&coded("http://example.org/codes", "MTH")));
        assert!(!is_parent(&json!({})));
    }

    #[test]
    fn majority_falls_on_the_birthday() {
        let born = time::macros::date!(2008 - 02 - 29);
        assert_eq!(birthday(born, 18), Some(time::macros::date!(2026 - 03 - 01)));
        assert_eq!(birthday(time::macros::date!(2010 - 05 - 04), 18), Some(time::macros::date!(2028 - 05 - 04)));
        let adult = time::macros::date!(2026 - 03 - 01).midnight().assume_utc().unix_timestamp();
        assert!(renewed_after(&json!({"period": {"start": "2026-03-01"}}), adult));
        assert!(!renewed_after(&json!({"period": {"start": "2020-01-01"}}), adult));
        assert!(!renewed_after(&json!({}), adult));
    }
}
