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
            "identifier": [{"system": "http://hospital.example/mrn", "value": "A1",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
            "generalPractitioner": [{"reference": "Practitioner/prac-house"}]}),
        json!({"resourceType": "Practitioner", "id": "prac-house", "name": [{"family": "House", "given": ["Gregory"]}]}),
        json!({"resourceType": "Practitioner", "id": "prac-who", "name": [{"family": "Who"}],
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "999"}]}),
        json!({"resourceType": "Provenance", "id": "prov-1", "target": [{"reference": "Observation/obs-glucose-1"}],
            "recorded": "2024-03-05T10:00:00Z", "agent": [{"who": {"reference": "Practitioner/prac-house"}}]}),
        json!({"resourceType": "Questionnaire", "id": "q-phq", "status": "active", "url": "http://example.org/fhir/Questionnaire/phq-9"}),
        json!({"resourceType": "Encounter", "id": "enc-1", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "Patient/pat-cara"},
            "participant": [{"individual": {"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "999"}}}]}),
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
        json!({"resourceType": "Observation", "id": "obs-bp", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "Blood pressure panel"},
            "subject": {"reference": "Patient/pat-cara"},
            "effectiveDateTime": "2024-05-01",
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}], "text": "Systolic"},
                 "valueQuantity": {"value": 128, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                 "valueQuantity": {"value": 84, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]}),
        json!({"resourceType": "ValueSet", "id": "vs-glucose", "status": "active", "url": "http://example.org/fhir/ValueSet/glucose",
            "compose": {"include": [{"system": "http://loinc.org", "concept": [{"code": "2339-0"}, {"code": "2345-7"}]}]}}),
        json!({"resourceType": "ValueSet", "id": "vs-vitals", "status": "active", "url": "http://example.org/fhir/ValueSet/vitals",
            "compose": {"include": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                "concept": [{"code": "vital-signs"}]}]}}),
        json!({"resourceType": "Condition", "id": "cond-diabetes", "subject": {"reference": "Patient/pat-anna"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes mellitus type 2"}],
                "text": "Type 2 diabetes"}}),
        json!({"resourceType": "RiskAssessment", "id": "risk-low", "status": "final", "subject": {"reference": "Patient/pat-anna"},
            "prediction": [{"probabilityDecimal": 0.1}]}),
        json!({"resourceType": "RiskAssessment", "id": "risk-high", "status": "final", "subject": {"reference": "Patient/pat-bob"},
            "prediction": [{"probabilityDecimal": 0.85}]}),
        json!({"resourceType": "Invoice", "id": "inv-1", "status": "issued", "subject": {"reference": "Patient/pat-anna"},
            "date": "2025-01-02", "totalGross": {"value": 120.50, "currency": "USD"}}),
        json!({"resourceType": "Invoice", "id": "inv-2", "status": "balanced", "subject": {"reference": "Patient/pat-bob"},
            "date": "2025-02-15T10:00:00Z", "totalGross": {"value": 80, "currency": "EUR"}}),
        json!({"resourceType": "DocumentReference", "id": "doc-note", "status": "current",
            "content": [{"attachment": {"contentType": "text/plain", "title": "Visit note"}}]}),
        json!({"resourceType": "DocumentReference", "id": "doc-pdf", "status": "current",
            "content": [{"attachment": {"contentType": "application/pdf", "title": "Discharge letter"}}]}),
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
    ("Patient?birthdate=ap1980-04-02", &["pat-anna", "pat-cara"]),
    ("Observation?date=2024-03-05", &["obs-glucose-1"]),
    ("Observation?date=2024-03-05T09:30:00Z", &["obs-glucose-1"]),
    ("Observation?date=2024-03-05T10:30:00%2B01:00", &["obs-glucose-1"]),
    ("Observation?date=2024-06-10T12:00:00Z", &["obs-glucose-2"]),
    ("Observation?date=ge2024", &["obs-bp", "obs-glucose-1", "obs-glucose-2"]),
    ("Observation?date=2023-01-15", &[]),
    ("Observation?date=2023-01", &["obs-weight"]),
    ("Observation?date=lt2023-01-15", &["obs-weight"]),
    ("Observation?date=gt2023-01-15", &["obs-bp", "obs-glucose-1", "obs-glucose-2", "obs-weight"]),
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
    // :missing, :not, :identifier, :of-type, uri :below/:above.
    ("Patient?birthdate:missing=false&gender=male", &["pat-bob"]),
    ("Patient?identifier:missing=true", &["pat-bob", "pat-cara"]),
    ("Patient?general-practitioner:missing=false", &["pat-anna"]),
    ("Patient?gender:not=female", &["pat-bob"]),
    ("Observation?category:not=laboratory,vital-signs", &["obs-bp"]),
    // token :below/:above on path-like codes (mime types), no terminology needed.
    ("DocumentReference?contenttype:below=text/", &["doc-note"]),
    ("DocumentReference?contenttype:below=application", &["doc-pdf"]),
    ("DocumentReference?contenttype:above=application/pdf;charset=utf-8", &["doc-pdf"]),
    ("DocumentReference?contenttype:above=text", &[]),
    ("Encounter?participant:identifier=http://hl7.org/fhir/sid/us-npi|999", &["enc-1"]),
    ("Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|A1", &["pat-anna"]),
    ("Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|B2", &[]),
    ("Questionnaire?url=http://example.org/fhir/Questionnaire/phq-9", &["q-phq"]),
    ("Questionnaire?url:below=http://example.org/fhir", &["q-phq"]),
    ("Questionnaire?url:below=http://example.org/other", &[]),
    ("Questionnaire?url:above=http://example.org/fhir/Questionnaire/phq-9/_history/1", &["q-phq"]),
    // chains and reverse chains.
    ("Observation?subject:Patient.name=anna", &["obs-glucose-1", "obs-glucose-2"]),
    ("Observation?subject.name=baker", &["obs-weight"]),
    ("Observation?patient.general-practitioner.name=house", &["obs-glucose-1", "obs-glucose-2"]),
    ("Observation?subject:Patient.birthdate=lt1980", &["obs-weight"]),
    ("Patient?_has:Observation:patient:code=2339-0", &["pat-anna"]),
    ("Patient?_has:Observation:patient:code=29463-7,2339-0", &["pat-anna", "pat-bob"]),
    ("Practitioner?_has:Patient:general-practitioner:_has:Observation:patient:code=2339-0", &["prac-house"]),
    ("Observation?_has:Provenance:target:agent=Practitioner/prac-house", &["obs-glucose-1"]),
    // _sort: several keys, descending, missing values last, stable by id.
    ("Patient?_sort=birthdate", &["pat-bob", "pat-anna", "pat-cara"]),
    ("Patient?_sort=-birthdate", &["pat-cara", "pat-anna", "pat-bob"]),
    ("Observation?_sort=-date", &["obs-glucose-2", "obs-bp", "obs-glucose-1", "obs-weight"]),
    ("Patient?_sort=gender,-family", &["pat-cara", "pat-anna", "pat-bob"]),
    ("Practitioner?_sort=-_id", &["prac-who", "prac-house"]),
    ("Observation?_sort=value-quantity", &["obs-glucose-1", "obs-weight", "obs-glucose-2", "obs-bp"]),
    ("Patient?_sort=general-practitioner,_id", &["pat-anna", "pat-bob", "pat-cara"]),
    // _include and _revinclude (included entries are marked +).
    ("Observation?code=2339-0&_include=Observation:subject", &["obs-glucose-1", "obs-glucose-2", "+pat-anna"]),
    ("Observation?code=29463-7&_include=Observation:subject:Practitioner", &["obs-weight"]),
    ("Observation?_id=obs-glucose-1&_revinclude=Provenance:target", &["obs-glucose-1", "+prov-1"]),
    ("Observation?_id=obs-weight&_include=*", &["obs-weight", "+pat-bob"]),
    (
        "Observation?_id=obs-glucose-1&_include=Observation:patient&_include:iterate=Patient:general-practitioner",
        &["obs-glucose-1", "+pat-anna", "+prac-house"],
    ),
    (
        "Patient?_id=pat-anna&_revinclude=Observation:subject&_revinclude:iterate=Provenance:target",
        &["pat-anna", "+obs-glucose-1", "+obs-glucose-2", "+prov-1"],
    ),
    // token :text, :in and :not-in (ValueSets stored on the server).
    ("Condition?code:text=type 2", &["cond-diabetes"]),
    ("Condition?code:text=diabetes", &["cond-diabetes"]),
    ("Condition?code:text=asthma", &[]),
    ("Observation?code:in=http://example.org/fhir/ValueSet/glucose", &["obs-glucose-1", "obs-glucose-2"]),
    (
        "Observation?category:not-in=http://example.org/fhir/ValueSet/vitals",
        &["obs-bp", "obs-glucose-1", "obs-glucose-2"],
    ),
    // composites: components of one element stay paired.
    ("Observation?component-code-value-quantity=http://loinc.org|8480-6$gt120", &["obs-bp"]),
    ("Observation?component-code-value-quantity=http://loinc.org|8462-4$gt120", &[]),
    ("Observation?component-code-value-quantity=8462-4$84||mm[Hg]", &["obs-bp"]),
    ("Observation?code-value-quantity=http://loinc.org|2339-0$lt10", &["obs-glucose-1"]),
    ("Observation?code-value-quantity=2339-0$ge100|http://unitsofmeasure.org|mg/dL", &["obs-glucose-2"]),
    ("Observation?combo-code-value-quantity=8480-6$128", &["obs-bp"]),
    ("Observation?combo-code-value-quantity=2339-0$lt10", &["obs-glucose-1"]),
    // combo-* parameters: the code and value of the observation or of a component.
    ("Observation?combo-code=8480-6", &["obs-bp"]),
    ("Observation?combo-code=http://loinc.org|2339-0,85354-9", &["obs-bp", "obs-glucose-1", "obs-glucose-2"]),
    ("Observation?combo-code:text=systolic", &["obs-bp"]),
    ("Observation?combo-code:text=blood", &["obs-bp"]),
    ("Observation?combo-code:not=2339-0", &["obs-bp", "obs-weight"]),
    ("Observation?combo-code:not=8462-4", &["obs-glucose-1", "obs-glucose-2", "obs-weight"]),
    ("Observation?combo-value-quantity=gt120", &["obs-bp"]),
    ("Observation?combo-value-quantity=lt6", &["obs-glucose-1"]),
    ("Observation?combo-value-quantity:missing=false", &["obs-bp", "obs-glucose-1", "obs-glucose-2", "obs-weight"]),
    // Each observation lacks either the value or the components, never both.
    ("Observation?combo-value-quantity:missing=true", &[]),
    ("Observation?_sort=-combo-value-quantity", &["obs-bp", "obs-glucose-2", "obs-weight", "obs-glucose-1"]),
    ("Patient?_has:Observation:patient:combo-code=8480-6", &["pat-cara"]),
    ("Patient?_has:Observation:patient:combo-code:text=systolic", &["pat-cara"]),
    // several values of one parameter: any may match, and a resource matching two is listed once.
    ("Observation?code=2339-0,29463-7", &["obs-glucose-1", "obs-glucose-2", "obs-weight"]),
    ("Observation?subject=Patient/pat-anna,Patient/pat-bob", &["obs-glucose-1", "obs-glucose-2", "obs-weight"]),
    ("Observation?subject=Patient/pat-bob,Patient/pat-cara&code=2339-0,29463-7", &["obs-weight"]),
    (
        "Observation?code=http://loinc.org|2339-0,http://loinc.org|85354-9&subject=pat-anna",
        &["obs-glucose-1", "obs-glucose-2"],
    ),
    ("Patient?name=anna,chen", &["pat-anna", "pat-cara"]),
    ("Patient?name=anna,angstrom,gregory", &["pat-anna"]),
    ("Observation?date=2024-03-05,2023-01", &["obs-glucose-1", "obs-weight"]),
    ("Observation?value-quantity=5.4,gt100", &["obs-glucose-1", "obs-glucose-2"]),
    ("Observation?code=2339-0,85354-9&_sort=-date", &["obs-glucose-2", "obs-bp", "obs-glucose-1"]),
    ("Observation?combo-code=2339-0,8480-6", &["obs-bp", "obs-glucose-1", "obs-glucose-2"]),
    ("Observation?subject:Patient.name=anna,baker", &["obs-glucose-1", "obs-glucose-2", "obs-weight"]),
    ("Patient?_has:Observation:patient:code=29463-7,85354-9", &["pat-bob", "pat-cara"]),
    ("?_type=Patient,Practitioner&name=house,baker", &["pat-bob", "prac-house"]),
    ("Observation?code=2339-0,29463-7&code:not=29463-7", &["obs-glucose-1", "obs-glucose-2"]),
    // compartments and system search.
    ("Patient/pat-anna/Observation", &["obs-glucose-1", "obs-glucose-2"]),
    ("Patient/pat-anna/Observation?date=2024-06", &["obs-glucose-2"]),
    ("Patient/pat-bob/RiskAssessment", &["risk-high"]),
    ("Patient/pat-anna/Patient", &["pat-anna"]),
    ("Practitioner/prac-house/Provenance", &["prov-1"]),
    ("?_type=Patient,Practitioner&_id=pat-bob,prac-who", &["pat-bob", "prac-who"]),
    ("?_id=inv-2", &["inv-2"]),
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
        let ids: Vec<String> = bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let id = e["resource"]["id"].as_str().unwrap_or("");
                if e["search"]["mode"] == "include" {
                    format!("+{id}")
                } else {
                    id.to_string()
                }
            })
            .collect();
        if status != 200 || ids != *expected {
            failures.push(format!("{query}: expected {expected:?}, got {status} {ids:?}"));
        }
        // The count of the same search (its own SQL statement) agrees with the set.
        let matches = expected.iter().filter(|id| !id.starts_with('+')).count();
        let separator = if query.contains('?') { '&' } else { '?' };
        let counted: Value = server.get(&format!("{query}{separator}_summary=count")).await.json().await.unwrap();
        if counted["total"].as_u64() != Some(matches as u64) {
            failures.push(format!("{query}: expected a total of {matches}, got {}", counted["total"]));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

/// A parameter stored under others (`combo-value-quantity` is `value-quantity |
/// component-value-quantity`) is missing only where all of them are.
async fn combined_parameters_are_missing_where_all_parts_are(db: Db) {
    let server = TestServer::start(db).await;
    let code = json!({"coding": [{"system": "http://loinc.org", "code": "85354-9"}]});
    let fixtures = [
        json!({"resourceType": "Observation", "id": "value", "status": "final", "code": code,
            "valueQuantity": {"value": 5.4, "system": "http://unitsofmeasure.org", "code": "mmol/L"}}),
        json!({"resourceType": "Observation", "id": "components", "status": "final", "code": code,
            "component": [{"code": code, "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]}),
        json!({"resourceType": "Observation", "id": "neither", "status": "registered", "code": code}),
    ];
    for fixture in &fixtures {
        let path = format!("Observation/{}", fixture["id"].as_str().unwrap());
        assert_eq!(server.put(&path, fixture).await.status(), 201, "{path}");
    }
    for (query, expected) in [
        ("Observation?combo-value-quantity:missing=true", vec!["neither"]),
        ("Observation?combo-value-quantity:missing=false", vec!["components", "value"]),
    ] {
        let bundle: Value = server.get(query).await.json().await.unwrap();
        let ids: Vec<&str> =
            bundle["entry"].as_array().into_iter().flatten().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
        assert_eq!(ids, expected, "{query}");
    }
    let counted: Value =
        server.get("Observation?combo-value-quantity:missing=true&_summary=count").await.json().await.unwrap();
    assert_eq!(counted["total"], 1);
}

/// Hundreds of values for one parameter (a long list, a large ValueSet's concepts) are
/// answered: codes of one system as one lookup, more lookups than one `UNION ALL` takes as an
/// OR of them.
async fn long_value_lists_are_answered(db: Db) {
    let server = TestServer::start(db).await;
    for fixture in fixtures().iter().filter(|fixture| fixture["resourceType"] == "Observation") {
        let path = format!("Observation/{}", fixture["id"].as_str().unwrap());
        assert_eq!(server.put(&path, fixture).await.status(), 201, "{path}");
    }
    let one_system: Vec<String> = (0..600).map(|n| format!("http://loinc.org|{n}-9")).collect();
    let many_systems: Vec<String> = (0..600).map(|n| format!("urn:example:system-{n}|29463-7")).collect();
    for (mut values, wanted, expected) in [
        (one_system, "http://loinc.org|2339-0", vec!["obs-glucose-1", "obs-glucose-2"]),
        (many_systems, "http://loinc.org|29463-7", vec!["obs-weight"]),
    ] {
        values.insert(values.len() / 2, wanted.to_string());
        let query = format!("Observation?code={}", values.join(","));
        let response = server.get(&query).await;
        assert_eq!(response.status(), 200, "{} values", values.len());
        let bundle: Value = response.json().await.unwrap();
        let ids: Vec<&str> =
            bundle["entry"].as_array().into_iter().flatten().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
        assert_eq!(ids, expected, "{} values", values.len());
        let counted: Value = server.get(&format!("{query}&_summary=count")).await.json().await.unwrap();
        assert_eq!(counted["total"].as_u64(), Some(expected.len() as u64), "{} values", values.len());
    }
}

/// Paging through a search with several values (driven by their union, or by one lookup of
/// several codes) yields every match once, in the order of the unpaged search.
async fn searches_with_several_values_page_through_every_match(db: Db) {
    let server = TestServer::start(db).await;
    for fixture in fixtures().iter().filter(|fixture| fixture["resourceType"] == "Observation") {
        let path = format!("Observation/{}", fixture["id"].as_str().unwrap());
        assert_eq!(server.put(&path, fixture).await.status(), 201, "{path}");
    }
    let ids_and_next = |page: &Value| {
        let ids: Vec<String> = page["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect();
        let next = page["link"].as_array().into_iter().flatten().find(|l| l["relation"] == "next");
        (ids, next.map(|l| l["url"].as_str().unwrap().to_string()))
    };
    for query in [
        "Observation?code=2339-0,29463-7,85354-9",
        "Observation?code=2339-0,85354-9,29463-7&_sort=-date",
        "Observation?code=http://loinc.org|2339-0,http://snomed.info/sct|1,http://loinc.org|85354-9",
        "Observation?subject=Patient/pat-anna,Patient/pat-bob&_sort=value-quantity",
    ] {
        let whole: Value = server.get(&format!("{query}&_count=100")).await.json().await.unwrap();
        let (expected, _) = ids_and_next(&whole);
        assert!(expected.len() >= 3, "{query}: {expected:?}");
        let mut seen = Vec::new();
        let mut next = Some(server.url(&format!("{query}&_count=1")));
        while let Some(url) = next {
            let page: Value = server.client.get(&url).send().await.unwrap().json().await.unwrap();
            let (ids, link) = ids_and_next(&page);
            seen.extend(ids);
            next = link;
            assert!(seen.len() <= expected.len(), "{query}: pages go on past {expected:?}: {seen:?}");
        }
        assert_eq!(seen, expected, "{query}");
    }
}

/// A `code` element carries no system, but its required binding gives it one: `system|code`
/// with that system finds it (R4 search.html#token), another system does not.
async fn codes_have_the_system_of_their_required_binding(db: Db) {
    let server = TestServer::start(db).await;
    let id = server.create(&json!({"resourceType": "Patient", "gender": "female"})).await;
    let found = |query: &'static str| {
        let server = &server;
        async move { server.search_ids(query).await }
    };
    assert_eq!(found("Patient?gender=http://hl7.org/fhir/administrative-gender|female").await, vec![id.clone()]);
    assert_eq!(found("Patient?gender=http://hl7.org/fhir/administrative-gender|").await, vec![id.clone()]);
    assert!(found("Patient?gender=http://example.org/genders|female").await.is_empty());
    assert!(found("Patient?gender=http://hl7.org/fhir/administrative-gender|male").await.is_empty());
    assert_eq!(found("Patient?gender=female").await, vec![id]);
}

on_both_databases!(
    result_sets_match_the_specification,
    codes_have_the_system_of_their_required_binding,
    combined_parameters_are_missing_where_all_parts_are,
    long_value_lists_are_answered,
    searches_with_several_values_page_through_every_match
);
