//! Whose data a resource is: the patients whose compartment it is in (R4 CompartmentDefinition
//! Patient), from the index rows a write computed anyway, or from the resource itself for what
//! a read view let through.

use std::borrow::Cow;

use serde_json::Value;

use crate::search::index::index_selected;
use crate::search::Registry;
use crate::store::IndexRows;

/// The patients (ids) a resource with these index rows belongs to: a Patient itself, and the
/// Patients its compartment parameters reference.
pub fn in_rows(resource_type: &str, id: &str, rows: &IndexRows) -> Vec<String> {
    if resource_type == "Patient" {
        return vec![id.to_string()];
    }
    let Some(params) = crate::search::compartment::params("Patient", resource_type) else { return Vec::new() };
    let mut patients: Vec<String> = rows
        .references
        .iter()
        .filter(|row| row.target_type.as_deref() == Some("Patient") && params.contains(&row.param))
        .filter_map(|row| row.target_id.clone())
        .collect();
    patients.sort_unstable();
    patients.dedup();
    patients
}

/// The patients a stored resource (`resource_type/id`, its JSON bytes) belongs to (see
/// [`in_rows`]): parsed only when its type is in the Patient compartment and not a Patient;
/// none when it does not parse.
pub fn of_stored(registry: &Registry, base_url: &str, resource_type: &str, id: &str, body: &[u8]) -> Vec<String> {
    of_typed(registry, base_url, resource_type, id, || serde_json::from_slice(body).ok().map(Cow::Owned))
}

/// The patients a resource belongs to (see [`in_rows`]).
pub fn of_resource(registry: &Registry, base_url: &str, resource: &Value) -> Vec<String> {
    let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
    let id = resource.get("id").and_then(Value::as_str).unwrap_or_default();
    of_typed(registry, base_url, resource_type, id, || Some(Cow::Borrowed(resource)))
}

/// The patients of `resource_type/id`, whose content `resource` gives when its type does not
/// tell.
fn of_typed<'a>(
    registry: &Registry,
    base_url: &str,
    resource_type: &str,
    id: &str,
    resource: impl FnOnce() -> Option<Cow<'a, Value>>,
) -> Vec<String> {
    if resource_type == "Patient" {
        return vec![id.to_string()];
    }
    let Some(params) = crate::search::compartment::params("Patient", resource_type) else { return Vec::new() };
    let Some(resource) = resource() else { return Vec::new() };
    let rows = index_selected(registry, &resource, base_url, |code| params.iter().any(|p| p == code));
    in_rows(resource_type, id, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_resource_belongs_to_the_patients_its_compartment_parameters_name() {
        let registry = Registry::standard();
        let observation = json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/a"}, "performer": [{"reference": "Patient/b"}]});
        assert_eq!(of_resource(registry, "http://h/fhir", &observation), ["a", "b"]);
        let encounter = json!({"resourceType": "Encounter", "id": "e", "status": "finished", "class": {"code": "AMB"},
            "subject": {"reference": "http://h/fhir/Patient/c"}});
        assert_eq!(of_resource(registry, "http://h/fhir", &encounter), ["c"]);
        assert_eq!(of_resource(registry, "http://h/fhir", &json!({"resourceType": "Patient", "id": "d"})), ["d"]);
        assert!(of_resource(registry, "http://h/fhir", &json!({"resourceType": "Practitioner", "id": "p"})).is_empty());
    }

    #[test]
    fn a_stored_resource_belongs_to_the_same_patients_as_the_resource() {
        let registry = Registry::standard();
        let stored = |value: Value| serde_json::to_vec(&value).unwrap();
        let patient = stored(json!({"resourceType": "Patient", "id": "d", "name": [{"family": "X"}]}));
        assert_eq!(of_stored(registry, "http://h/fhir", "Patient", "d", &patient), ["d"]);
        let observation = stored(json!({"resourceType": "Observation", "id": "o", "status": "final",
            "code": {"text": "x"}, "subject": {"reference": "Patient/a"}}));
        assert_eq!(of_stored(registry, "http://h/fhir", "Observation", "o", &observation), ["a"]);
        let organization = stored(json!({"resourceType": "Organization", "id": "org", "name": "Clinic"}));
        assert!(of_stored(registry, "http://h/fhir", "Organization", "org", &organization).is_empty());
        assert!(of_stored(registry, "http://h/fhir", "Observation", "o", b"not json").is_empty());
        let escaped = br#"{"resourceType":"Pati\u0065nt","id":"e"}"#;
        assert_eq!(of_stored(registry, "http://h/fhir", "Patient", "e", escaped), ["e"]);
        let numeric_id = stored(json!({"resourceType": "Observation", "id": 7, "status": "final",
            "code": {"text": "x"}, "subject": {"reference": "Patient/a"}}));
        assert_eq!(
            of_stored(registry, "http://h/fhir", "Observation", "7", &numeric_id),
            ["a"],
            "the content, not its id, names the patient"
        );
    }
}
