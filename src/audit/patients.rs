//! Whose data a resource is: the patients whose compartment it is in (R4 CompartmentDefinition
//! Patient), from the index rows a write computed anyway, or from the resource itself for what
//! a response disclosed.

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

/// The patients a resource belongs to (see [`in_rows`]).
pub fn of_resource(registry: &Registry, base_url: &str, resource: &Value) -> Vec<String> {
    let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
    let id = resource.get("id").and_then(Value::as_str).unwrap_or_default();
    if resource_type == "Patient" {
        return vec![id.to_string()];
    }
    let Some(params) = crate::search::compartment::params("Patient", resource_type) else { return Vec::new() };
    let rows = index_selected(registry, resource, base_url, |code| params.iter().any(|p| p == code));
    in_rows(resource_type, id, &rows)
}

/// What a response body disclosed: the resources in it (a Bundle's entries, one level of
/// Bundles inside them, a Parameters' resources, or the resource itself), and the patients
/// they belong to.
pub fn disclosed(registry: &Registry, base_url: &str, body: &Value) -> Vec<String> {
    let mut patients = Vec::new();
    let mut each = |resource: &Value| patients.extend(of_resource(registry, base_url, resource));
    for resource in contained_resources(body) {
        match resource.get("resourceType").and_then(Value::as_str) {
            Some("Bundle") | Some("Parameters") => contained_resources(resource).for_each(&mut each),
            _ => each(resource),
        }
    }
    patients.sort_unstable();
    patients.dedup();
    patients
}

/// The resources a Bundle or Parameters carries, or the resource itself.
fn contained_resources(body: &Value) -> Box<dyn Iterator<Item = &Value> + '_> {
    let inner = |list: &'static str| {
        body.get(list).and_then(Value::as_array).into_iter().flatten().filter_map(|item| item.get("resource"))
    };
    match body.get("resourceType").and_then(Value::as_str) {
        Some("Bundle") => Box::new(inner("entry")),
        Some("Parameters") => Box::new(inner("parameter")),
        Some("OperationOutcome") | None => Box::new(std::iter::empty()),
        Some(_) => Box::new(std::iter::once(body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_search_discloses_the_patients_of_its_entries() {
        let registry = Registry::standard();
        let bundle = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
                "subject": {"reference": "Patient/a"}}},
            {"resource": {"resourceType": "Patient", "id": "b"}},
            {"resource": {"resourceType": "Practitioner", "id": "d"}},
            {"resource": {"resourceType": "OperationOutcome", "issue": []}}
        ]});
        assert_eq!(disclosed(registry, "http://h/fhir", &bundle), ["a", "b"]);
        let one = json!({"resourceType": "Encounter", "id": "e", "status": "finished", "class": {"code": "AMB"},
            "subject": {"reference": "http://h/fhir/Patient/c"}});
        assert_eq!(disclosed(registry, "http://h/fhir", &one), ["c"]);
        assert!(disclosed(registry, "http://h/fhir", &json!({"resourceType": "OperationOutcome"})).is_empty());
    }
}
