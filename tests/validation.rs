//! The published examples of US Core 6.1.0 and IPS 2.0.0 (CC0, in `tests/data/`) are valid FHIR
//! R4: every one passes the server's validation (schema, definitions, invariants), so that its
//! checks refuse what the specification forbids and nothing the specification allows.

use std::path::Path;

use serde_json::Value;

fn examples(folder: &str) -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(folder);
    let mut found: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .expect("examples folder")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable");
            (path.file_name().unwrap().to_string_lossy().into_owned(), serde_json::from_str(&text).expect("JSON"))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// The problems found in examples that claim profiles (`meta.profile`), against those profiles.
fn profile_problems(folder: &str) -> (usize, Vec<String>) {
    let (mut checked, mut problems) = (0, Vec::new());
    for (name, resource) in examples(folder) {
        let profiles = resource.pointer("/meta/profile").and_then(Value::as_array).cloned().unwrap_or_default();
        for profile in profiles.iter().filter_map(Value::as_str) {
            let Some(findings) = hearth::validation::against_profile(&resource, profile) else { continue };
            checked += 1;
            let errors: Vec<String> = findings
                .iter()
                .filter(|f| f.severity == hearth::validation::Severity::Error)
                .map(|f| format!("{} [{}] {}", f.location, f.rule, f.message))
                .collect();
            if !errors.is_empty() {
                problems.push(format!("{name} against {profile}: {}", errors.join("; ")));
            }
        }
    }
    (checked, problems)
}

fn refusals(folder: &str) -> Vec<String> {
    let mut refused = Vec::new();
    for (name, resource) in examples(folder) {
        let resource_type = resource["resourceType"].as_str().unwrap_or_default().to_string();
        if let Err(error) = hearth::model::validate::validate_resource(&resource, &resource_type) {
            refused.push(format!("{name}: {}", error.outcome()));
        }
    }
    refused
}

#[test]
fn us_core_examples_are_valid() {
    let refused = refusals("us-core");
    assert!(refused.is_empty(), "{} refused:\n{}", refused.len(), refused.join("\n"));
}

#[test]
fn ips_examples_are_valid() {
    let refused = refusals("ips");
    assert!(refused.is_empty(), "{} refused:\n{}", refused.len(), refused.join("\n"));
}

#[test]
fn us_core_examples_conform_to_their_profiles() {
    let (checked, problems) = profile_problems("us-core");
    assert!(checked > 150, "{checked} checked");
    assert!(problems.is_empty(), "{} of {checked}:\n{}", problems.len(), problems.join("\n"));
}

fn example(folder: &str, name: &str) -> Value {
    examples(folder).into_iter().find(|(file, _)| file == name).expect("example").1
}

/// The rules `resource` breaks against `profile`, as (location, rule).
fn broken(resource: &Value, profile: &str) -> Vec<(String, String)> {
    let findings = hearth::validation::against_profile(resource, profile).expect("a carried profile");
    findings
        .into_iter()
        .filter(|f| f.severity == hearth::validation::Severity::Error)
        .map(|f| (f.location, f.rule))
        .collect()
}

const US_CORE: &str = "http://hl7.org/fhir/us/core/StructureDefinition/";

/// Mutations of valid US Core examples, each breaking one rule of the profile: each is found,
/// where it is, under the rule it breaks.
#[test]
fn broken_examples_fail_with_the_right_issue() {
    let patient = example("us-core", "Patient-example.json");
    let profile = format!("{US_CORE}us-core-patient");
    assert!(broken(&patient, &profile).is_empty());

    let mut no_identifier = patient.clone();
    no_identifier.as_object_mut().unwrap().remove("identifier");
    assert!(broken(&no_identifier, &profile).contains(&("Patient.identifier".into(), "cardinality".into())));

    let mut nameless = patient.clone();
    nameless["name"] = serde_json::json!([{"text": "Amy"}]);
    assert!(
        broken(&nameless, &profile).iter().any(|(_, rule)| rule == "us-core-6"),
        "{:?}",
        broken(&nameless, &profile)
    );

    let weight = example("us-core", "Observation-weight.json");
    let profile = format!("{US_CORE}us-core-body-weight");
    assert!(broken(&weight, &profile).is_empty());
    let mut not_vital = weight.clone();
    not_vital["category"][0]["coding"][0]["code"] = "laboratory".into();
    let found = broken(&not_vital, &profile);
    assert!(found.iter().any(|(at, rule)| at == "Observation.category:VSCat" && rule == "cardinality"), "{found:?}");
    let mut wrong_code = weight.clone();
    wrong_code["code"]["coding"][0]["code"] = "8302-2".into();
    let found = broken(&wrong_code, &profile);
    assert!(found.iter().any(|(at, rule)| at == "Observation.code" && rule == "profile"), "{found:?}");
    let mut wrong_unit = weight.clone();
    wrong_unit["valueQuantity"]["code"] = "lb_av_x".into();
    assert!(!broken(&wrong_unit, &profile).is_empty(), "a unit outside the required binding");

    let mut other_type = weight.clone();
    other_type["resourceType"] = "Patient".into();
    assert_eq!(broken(&other_type, &profile), vec![("Patient".to_string(), "profile".to_string())]);
}
