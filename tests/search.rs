//! The search conformance suite: a hand-written fixture set and, per parameter type, modifier
//! and prefix, the expected result set written out by hand. Runs on both databases.

mod common;

use common::{Db, TestServer};
use serde_json::{json, Value};

/// The fixtures, each with a client-chosen id so that expected results can name them.
fn fixtures() -> Vec<Value> {
    vec![
        json!({"resourceType": "Patient", "id": "pat-anna", "gender": "female", "birthDate": "1980-04-02",
            "name": [{"family": "Ångström", "given": ["Anna"]}],
            "identifier": [{"system": "http://hospital.example/mrn", "value": "A1"}]}),
        json!({"resourceType": "Patient", "id": "pat-bob", "gender": "male", "birthDate": "1975",
            "name": [{"family": "Baker", "given": ["Bob"]}]}),
        json!({"resourceType": "Patient", "id": "pat-cara", "gender": "female", "birthDate": "1980-12-31",
            "name": [{"family": "Chen", "given": ["Cara"]}]}),
        json!({"resourceType": "Observation", "id": "obs-glucose-1", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]}, "subject": {"reference": "Patient/pat-anna"},
            "effectiveDateTime": "2024-03-05T09:30:00Z",
            "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}}),
        json!({"resourceType": "Observation", "id": "obs-glucose-2", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]}, "subject": {"reference": "Patient/pat-anna"},
            "effectiveDateTime": "2024-06-10T14:00:00+02:00",
            "valueQuantity": {"value": 110, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"}}),
        json!({"resourceType": "Observation", "id": "obs-weight", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]}, "subject": {"reference": "Patient/pat-bob"},
            "effectivePeriod": {"start": "2023-01-01", "end": "2023-01-31"},
            "valueQuantity": {"value": 82.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}),
        json!({"resourceType": "RiskAssessment", "id": "risk-low", "status": "final", "subject": {"reference": "Patient/pat-anna"},
            "prediction": [{"probabilityDecimal": 0.1}]}),
        json!({"resourceType": "RiskAssessment", "id": "risk-high", "status": "final", "subject": {"reference": "Patient/pat-bob"},
            "prediction": [{"probabilityDecimal": 0.85}]}),
        json!({"resourceType": "Invoice", "id": "inv-1", "status": "issued", "subject": {"reference": "Patient/pat-anna"},
            "date": "2025-01-02", "totalGross": {"value": 120.50, "currency": "USD"}}),
        json!({"resourceType": "Invoice", "id": "inv-2", "status": "balanced", "subject": {"reference": "Patient/pat-bob"},
            "date": "2025-02-15T10:00:00Z", "totalGross": {"value": 80, "currency": "EUR"}}),
    ]
}

/// (query, expected ids in result order: by id unless the query sorts).
const CASES: &[(&str, &[&str])] = &[
    // date: partial dates are ranges, prefixes compare ranges, time zones count.
    ("Patient?birthdate=1980", &["pat-anna", "pat-cara"]),
    ("Patient?birthdate=1980-04", &["pat-anna"]),
    ("Patient?birthdate=1980-04-02", &["pat-anna"]),
    ("Patient?birthdate=ne1980", &["pat-bob"]),
    ("Patient?birthdate=lt1980", &["pat-bob"]),
    ("Patient?birthdate=gt1980-06", &["pat-cara"]),
    ("Patient?birthdate=ge1980-12-31", &["pat-cara"]),
    ("Patient?birthdate=le1975-06", &["pat-bob"]),
    ("Patient?birthdate=eb1980", &["pat-bob"]),
    ("Patient?birthdate=sa1976", &["pat-anna", "pat-cara"]),
    ("Patient?birthdate=ge1975&birthdate=lt1980-06", &["pat-anna", "pat-bob"]),
    ("Observation?date=2024-03-05", &["obs-glucose-1"]),
    ("Observation?date=2024-03-05T09:30:00Z", &["obs-glucose-1"]),
    ("Observation?date=2024-03-05T10:30:00%2B01:00", &["obs-glucose-1"]),
    ("Observation?date=2024-06-10T12:00:00Z", &["obs-glucose-2"]),
    ("Observation?date=ge2024", &["obs-glucose-1", "obs-glucose-2"]),
    ("Observation?date=2023-01-15", &[]),
    ("Observation?date=2023-01", &["obs-weight"]),
    ("Observation?date=lt2023-01-15", &["obs-weight"]),
    ("Observation?date=gt2023-01-15", &["obs-glucose-1", "obs-glucose-2", "obs-weight"]),
    ("Invoice?date=2025", &["inv-1", "inv-2"]),
    ("Invoice?date=2025-02-15", &["inv-2"]),
    // number: implicit precision of eq, exact comparisons otherwise.
    ("RiskAssessment?probability=0.1", &["risk-low"]),
    ("RiskAssessment?probability=0.10", &["risk-low"]),
    ("RiskAssessment?probability=0.12", &[]),
    ("RiskAssessment?probability=gt0.5", &["risk-high"]),
    ("RiskAssessment?probability=le0.85", &["risk-high", "risk-low"]),
    ("RiskAssessment?probability=ne0.1", &["risk-high"]),
    // quantity: value, value|system|code, value||unit.
    ("Observation?value-quantity=5.4", &["obs-glucose-1"]),
    ("Observation?value-quantity=5.4|http://unitsofmeasure.org|mmol/L", &["obs-glucose-1"]),
    ("Observation?value-quantity=5.4|http://unitsofmeasure.org|mg/dL", &[]),
    ("Observation?value-quantity=gt80||kg", &["obs-weight"]),
    ("Observation?value-quantity=gt100", &["obs-glucose-2"]),
    ("Observation?value-quantity=lt100&code=2339-0", &["obs-glucose-1"]),
    ("Invoice?totalgross=gt100|urn:iso:std:iso:4217|USD", &["inv-1"]),
    ("Invoice?totalgross=80||EUR", &["inv-2"]),
];

async fn result_sets_match_the_specification(db: Db) {
    let server = TestServer::start(db).await;
    for fixture in fixtures() {
        let path = format!("{}/{}", fixture["resourceType"].as_str().unwrap(), fixture["id"].as_str().unwrap());
        assert_eq!(server.put(&path, &fixture).await.status(), 201, "{path}");
    }
    let mut failures = Vec::new();
    for (query, expected) in CASES {
        let strict =
            server.request(reqwest::Method::GET, query).header("prefer", "handling=strict").send().await.unwrap();
        let status = strict.status();
        let bundle: Value = strict.json().await.unwrap();
        let ids: Vec<&str> = bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["resource"]["id"].as_str().unwrap_or(""))
            .collect();
        if status != 200 || ids != *expected {
            failures.push(format!("{query}: expected {expected:?}, got {status} {ids:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

on_both_databases!(result_sets_match_the_specification);
