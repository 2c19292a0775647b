//! Resource identity and server-managed metadata (`id`, `meta.versionId`, `meta.lastUpdated`).

use serde_json::{Map, Value};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use super::{ErrorKind, FhirError, IssueCode};

/// Whether `id` is a valid FHIR logical id: 1–64 characters of `[A-Za-z0-9-.]`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A fresh server-assigned logical id: a time-ordered UUID (version 7). Ids created together
/// sort together, so the (type, id) B-trees of resources and index rows grow at their ends
/// instead of dirtying a random page per resource (ingest writes far fewer pages).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The current time, truncated to milliseconds so that what is stored equals what is shown.
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.millisecond() as u32 * 1_000_000).unwrap_or(now)
}

/// Formats an instant as a FHIR `instant` in UTC with millisecond precision.
pub fn format_instant(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        at.month() as u8,
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

/// Parses a FHIR `instant` or full `dateTime` with a time zone (as used by `_since`).
pub fn parse_instant(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

/// "Given Family" of a stored Patient, Practitioner or RelatedPerson (its first name).
pub fn person_name(body: &[u8]) -> Option<String> {
    let person: Value = serde_json::from_slice(body).ok()?;
    let name = person.get("name")?.get(0)?;
    let mut parts: Vec<&str> =
        name.get("given").and_then(|g| g.as_array()).into_iter().flatten().filter_map(|g| g.as_str()).collect();
    parts.extend(name.get("family").and_then(|f| f.as_str()));
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// Returns the resource's `resourceType`, or a 400 explaining what is missing.
pub fn resource_type_of(resource: &Value) -> Result<&str, FhirError> {
    let object = resource
        .as_object()
        .ok_or_else(|| FhirError::bad_request("the request body must be a JSON object (a FHIR resource)"))?;
    match object.get("resourceType") {
        Some(Value::String(t)) => Ok(t),
        Some(_) => Err(FhirError::new(ErrorKind::BadRequest, IssueCode::Structure, "resourceType must be a string")),
        None => Err(FhirError::new(ErrorKind::BadRequest, IssueCode::Required, "the resource has no resourceType")),
    }
}

/// Sets `id`, `meta.versionId` and `meta.lastUpdated`, keeping the rest of `meta` (tags,
/// profiles, security labels) as the client sent it. `id` is placed right after `resourceType`.
/// The other elements keep their order (a `remove` from the map would move its last element
/// into the gap, and a resource written again as it was read would come back reordered).
pub fn stamp(resource: &mut Value, id: &str, version: i64, last_updated: OffsetDateTime) {
    let Some(object) = resource.as_object_mut() else { return };
    let mut resource_type = None;
    let mut meta = Map::new();
    let mut rest = Map::with_capacity(object.len());
    for (name, value) in std::mem::take(object) {
        match (name.as_str(), value) {
            ("resourceType", value) => resource_type = Some(value),
            ("id", _) => {}
            ("meta", Value::Object(given)) => meta = given,
            ("meta", _) => {}
            (_, value) => {
                rest.insert(name, value);
            }
        }
    }
    meta.insert("versionId".into(), Value::String(version.to_string()));
    meta.insert("lastUpdated".into(), Value::String(format_instant(last_updated)));
    if let Some(resource_type) = resource_type {
        object.insert("resourceType".into(), resource_type);
    }
    object.insert("id".into(), Value::String(id.to_string()));
    object.insert("meta".into(), Value::Object(meta));
    object.append(&mut rest);
}

/// Calls `visit` with every `reference` string of `value`, wherever it is (Reference elements
/// at any depth, contained resources included).
pub fn visit_references(value: &Value, visit: &mut impl FnMut(&str)) {
    match value {
        Value::Object(fields) => {
            if let Some(Value::String(reference)) = fields.get("reference") {
                visit(reference);
            }
            fields.values().for_each(|v| visit_references(v, visit));
        }
        Value::Array(items) => items.iter().for_each(|v| visit_references(v, visit)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_follow_the_fhir_rule() {
        assert!(is_valid_id("abc-1.2"));
        assert!(is_valid_id(&"a".repeat(64)));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("a/b"));
        assert!(is_valid_id(&new_id()));
    }

    #[test]
    fn stamp_sets_server_metadata_and_keeps_tags() {
        let mut patient = json!({"resourceType": "Patient", "id": "old", "active": true,
            "meta": {"tag": [{"code": "x"}], "versionId": "9"}});
        let at = time::macros::datetime!(2026-01-02 03:04:05.678 UTC);
        stamp(&mut patient, "p1", 3, at);
        assert_eq!(
            serde_json::to_string(&patient).unwrap(),
            r#"{"resourceType":"Patient","id":"p1","meta":{"tag":[{"code":"x"}],"versionId":"3","lastUpdated":"2026-01-02T03:04:05.678Z"},"active":true}"#
        );
        // Stamped again as it was read (an import of an export), it keeps its order.
        let mut read: Value = serde_json::from_str(
            r#"{"resourceType":"Account","id":"a","meta":{"versionId":"1"},"subject":[],"owner":{},"status":"active","name":"n"}"#,
        )
        .unwrap();
        stamp(&mut read, "a", 1, at);
        let names: Vec<&String> = read.as_object().unwrap().keys().collect();
        assert_eq!(names, ["resourceType", "id", "meta", "subject", "owner", "status", "name"]);
    }

    #[test]
    fn instants_round_trip() {
        let at = time::macros::datetime!(2026-01-02 03:04:05.678 UTC);
        assert_eq!(parse_instant(&format_instant(at)), Some(at));
        assert_eq!(parse_instant("2026-01-02"), None);
    }
}
