//! The published examples of US Core 6.1.0 and IPS 2.0.0 (CC0, in `tests/data/`) are valid FHIR
//! R4: every one passes the server's validation (schema, definitions, invariants), so that its
//! checks refuse what the specification forbids and nothing the specification allows; they
//! conform to the profiles they claim, and broken copies do not. Writes enforce claimed and
//! required profiles on both databases.

mod common;

use std::path::Path;

use common::{body, Db, TestServer};
use hearth::rest::profiles::ProfilePolicy;
use hearth::validation::Definitions;
use serde_json::{json, Value};

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
            let Some(findings) = hearth::validation::against_profile(Definitions::carried(), &resource, profile) else {
                continue;
            };
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
    let findings =
        hearth::validation::against_profile(Definitions::carried(), resource, profile).expect("a carried profile");
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

    // Body weight is of a US Core Patient: not of a Group (which R4 allows), nor of a contained
    // patient without the identifier US Core requires.
    let mut of_group = weight.clone();
    of_group["subject"] = serde_json::json!({"reference": "Group/example"});
    let found = broken(&of_group, &profile);
    assert!(found.contains(&("Observation.subject".into(), "reference-target".into())), "{found:?}");
    let mut of_contained = weight.clone();
    of_contained["contained"] = serde_json::json!([{"resourceType": "Patient", "id": "p", "gender": "female"}]);
    of_contained["subject"] = serde_json::json!({"reference": "#p"});
    let found = broken(&of_contained, &profile);
    assert!(found.contains(&("Observation.subject".into(), "reference-target".into())), "{found:?}");
    let mut identified = of_contained.clone();
    identified["contained"][0] = patient.clone();
    identified["contained"][0]["id"] = "p".into();
    assert!(broken(&identified, &profile).is_empty(), "{:?}", broken(&identified, &profile));

    let mut other_type = weight.clone();
    other_type["resourceType"] = "Patient".into();
    assert_eq!(broken(&other_type, &profile), vec![("Patient".to_string(), "profile".to_string())]);
}

/// The issues of an OperationOutcome as (expression, rule).
fn issues_of(outcome: &Value) -> Vec<(String, String)> {
    let issues = outcome["issue"].as_array().cloned().unwrap_or_default();
    issues
        .iter()
        .map(|i| {
            let expression = i["expression"][0].as_str().unwrap_or_default().to_string();
            (expression, i["details"]["coding"][0]["code"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

async fn writes_conform_to_the_profiles_they_claim(db: Db) {
    let server = TestServer::start(db).await;
    let patient = example("us-core", "Patient-example.json");
    assert_eq!(server.post("Patient", &patient).await.status(), 201);
    let mut broken = patient.clone();
    broken.as_object_mut().unwrap().remove("identifier");
    let response = server.post("Patient", &broken).await;
    assert_eq!(response.status(), 422);
    let outcome = body(response).await;
    assert!(issues_of(&outcome).contains(&("Patient.identifier".into(), "cardinality".into())), "{outcome}");
    let mut unknown = patient.clone();
    unknown["meta"]["profile"] = json!(["http://example.org/StructureDefinition/nobody"]);
    let response = server.post("Patient", &unknown).await;
    assert_eq!(response.status(), 422);
    assert!(issues_of(&body(response).await).iter().any(|(_, rule)| rule == "unknown-profile"));
    assert_eq!(server.search_ids("Patient").await.len(), 1, "nothing refused was stored");

    // $validate against a profile the resource does not claim.
    let mut plain = broken.clone();
    plain.as_object_mut().unwrap().remove("meta");
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": plain},
        {"name": "profile", "valueUri": format!("{US_CORE}us-core-patient")}]});
    let response = server.post("Patient/$validate", &parameters).await;
    assert_eq!(response.status(), 200);
    let outcome = body(response).await;
    assert!(issues_of(&outcome).contains(&("Patient.identifier".into(), "cardinality".into())), "{outcome}");

    let statement = body(server.get("metadata").await).await;
    let resources = statement["rest"][0]["resource"].as_array().unwrap();
    let patients = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let supported = patients["supportedProfile"].as_array().unwrap();
    assert!(supported.contains(&json!(format!("{US_CORE}us-core-patient"))));
}

async fn operators_require_profiles_and_may_accept_unknown_ones(db: Db) {
    let required = ProfilePolicy {
        required: vec![("Patient".into(), format!("{US_CORE}us-core-patient"))],
        accept_unknown: true,
        ..ProfilePolicy::default()
    };
    let server = TestServer::start_with(db, |s| hearth::server::Settings { profiles: required, ..s }).await;
    let response = server.post("Patient", &json!({"resourceType": "Patient", "gender": "female"})).await;
    assert_eq!(response.status(), 422);
    assert!(issues_of(&body(response).await)
        .iter()
        .any(|(at, rule)| at == "Patient.meta.profile" && rule == "required-profile"));
    assert_eq!(server.post("Patient", &example("us-core", "Patient-example.json")).await.status(), 201);
    let observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "meta": {"profile": ["http://example.org/StructureDefinition/local-observation"]}});
    assert_eq!(server.post("Observation", &observation).await.status(), 201, "unknown profiles accepted");
}

on_both_databases!(writes_conform_to_the_profiles_they_claim, operators_require_profiles_and_may_accept_unknown_ones);

#[test]
fn ips_examples_conform_to_their_profiles() {
    let (checked, problems) = profile_problems("ips");
    assert!(checked > 0, "{checked} checked");
    assert!(problems.is_empty(), "{} of {checked}:\n{}", problems.len(), problems.join("\n"));
}
