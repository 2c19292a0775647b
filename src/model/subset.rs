//! `_summary` and `_elements`: reduced forms of a resource, marked with the SUBSETTED tag
//! (FHIR R4 search.html §3.1.1.5.8-9).

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{json, Map, Value};

/// Elements always kept: without them the result is not a resource.
const ALWAYS_KEPT: &[&str] = &["resourceType", "id", "meta"];

static SUMMARY_ELEMENTS: LazyLock<HashMap<String, Vec<String>>> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../../conformance/summary-elements.json"))
        .expect("conformance/summary-elements.json is valid")
});

/// Keeps the top-level elements whose name (`value` for `valueQuantity`) `keep` accepts.
fn retain(resource: &Value, keep: impl Fn(&str) -> bool) -> Value {
    let Some(object) = resource.as_object() else { return resource.clone() };
    let resource_type = object.get("resourceType").and_then(Value::as_str).unwrap_or("");
    let mut subset: Map<String, Value> = object
        .iter()
        .filter(|(key, _)| {
            ALWAYS_KEPT.contains(&key.as_str()) || keep(crate::validation::element_name(resource_type, key))
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    mark_subsetted(&mut subset);
    Value::Object(subset)
}

fn mark_subsetted(resource: &mut Map<String, Value>) {
    let tag = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"});
    let meta = resource.entry("meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta.entry("tag").or_insert_with(|| json!([]));
        if let Some(tags) = tags.as_array_mut() {
            tags.push(tag);
        }
    }
}

/// `_summary=true`: the elements marked isSummary (or mandatory) in the specification.
pub fn summary(resource: &Value) -> Value {
    let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or("");
    let names = SUMMARY_ELEMENTS.get(resource_type);
    retain(resource, |name| names.is_some_and(|names| names.iter().any(|n| n == name)))
}

/// `_summary=text`: the narrative and the mandatory elements.
pub fn text_only(resource: &Value) -> Value {
    retain(resource, |name| name == "text")
}

/// `_summary=data`: everything but the narrative.
pub fn without_text(resource: &Value) -> Value {
    retain(resource, |name| name != "text")
}

/// `_elements=a,b`: the named top-level elements.
pub fn elements(resource: &Value, names: &[String]) -> Value {
    retain(resource, |name| names.iter().any(|n| n == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation() -> Value {
        json!({"resourceType": "Observation", "id": "o1", "meta": {"versionId": "1"}, "text": {"status": "generated", "div": "<div/>"},
            "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": 1}, "note": [{"text": "n"}]})
    }

    #[test]
    fn summary_keeps_summary_elements_and_tags() {
        let result = summary(&observation());
        assert!(result.get("note").is_none() && result.get("text").is_none());
        assert_eq!(result["valueQuantity"]["value"], json!(1));
        assert_eq!(result["meta"]["tag"][0]["code"], "SUBSETTED");
        assert_eq!(result["meta"]["versionId"], "1");
    }

    #[test]
    fn elements_text_and_data() {
        let result = elements(&observation(), &["status".to_string(), "value".to_string()]);
        let keys: Vec<&String> = result.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["resourceType", "id", "meta", "status", "valueQuantity"]);
        let patient = json!({"resourceType": "Patient", "gender": "female", "birthDate": "1990-01-01",
            "_birthDate": {"extension": [{"url": "http://example.org/t", "valueTime": "10:00:00"}]},
            "deceasedBoolean": false, "name": [{"family": "x"}]});
        let result = elements(&patient, &["birthDate".to_string(), "gender".to_string(), "deceased".to_string()]);
        let keys: Vec<&String> = result.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["resourceType", "gender", "birthDate", "_birthDate", "deceasedBoolean", "meta"]);
        assert!(text_only(&observation()).get("text").is_some() && text_only(&observation()).get("status").is_none());
        assert!(
            without_text(&observation()).get("text").is_none() && without_text(&observation()).get("note").is_some()
        );
    }
}
