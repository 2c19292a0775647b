//! FHIR operations end to end through HTTP, on both databases: the definitions and the
//! CapabilityStatement, input checking, `$everything` (paged to the end of a large record),
//! `$validate`, IPS `$summary`, `$document`, and who may run them.

mod common;

use std::collections::{BTreeSet, HashSet};

use common::smart::{smart_server, Authorization, Smart};
use common::{body, outcome, Db, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

/// `(type, id)` of each entry of a bundle with the given `search.mode`.
fn entries_of(bundle: &Value, mode: &str) -> Vec<(String, String)> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| (e["resource"]["resourceType"].as_str().unwrap().into(), e["resource"]["id"].as_str().unwrap().into()))
        .collect()
}

fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"].as_array()?.iter().find(|l| l["relation"] == relation)?["url"].as_str().map(str::to_string)
}

/// Every `reference` in a document bundle resolves to one of its entries (FHIR R4 bundle.html
/// "Resolving references in Bundles").
fn assert_references_resolve(bundle: &Value, base: &str) {
    let entries = bundle["entry"].as_array().unwrap();
    let full_urls: HashSet<&str> = entries.iter().map(|e| e["fullUrl"].as_str().unwrap()).collect();
    assert_eq!(full_urls.len(), entries.len(), "fullUrls are unique");
    fn references<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
        match value {
            Value::Object(fields) => {
                if let Some(Value::String(reference)) = fields.get("reference") {
                    found.push(reference);
                }
                fields.values().for_each(|v| references(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| references(v, found)),
            _ => {}
        }
    }
    for entry in entries {
        let mut found = Vec::new();
        references(&entry["resource"], &mut found);
        for reference in found.into_iter().filter(|r| !r.starts_with('#')) {
            let absolute = if reference.contains("://") || reference.starts_with("urn:") {
                reference.to_string()
            } else {
                format!("{base}/{reference}")
            };
            assert!(
                full_urls.contains(absolute.as_str()),
                "{reference} in {} resolves in the bundle",
                entry["fullUrl"]
            );
        }
    }
}

/// A small record: patient P with a practitioner, clinic, medication and encounter, and an
/// unrelated patient Q with an observation of their own.
struct Record {
    patient: String,
    other: String,
    practitioner: String,
    clinic: String,
    medication: String,
    encounter: String,
    old_observation: String,
    new_observation: String,
    prescription: String,
    others_observation: String,
}

async fn record(server: &TestServer) -> Record {
    let patient = server
        .create(&json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "P-1"}], "name": [{"family": "Rivera"}]}))
        .await;
    let other = server.create(&json!({"resourceType": "Patient", "name": [{"family": "Other"}]})).await;
    let practitioner = server.create(&json!({"resourceType": "Practitioner", "name": [{"family": "House"}]})).await;
    let clinic = server.create(&json!({"resourceType": "Organization", "name": "Clinic"})).await;
    let medication =
        server.create(&json!({"resourceType": "Medication", "code": {"text": "Amoxicillin 500 mg"}})).await;
    let subject = json!({"reference": format!("Patient/{patient}")});
    let encounter = server
        .create(&json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
            "subject": subject, "serviceProvider": {"reference": format!("Organization/{clinic}")},
            "period": {"start": "2024-03-01T10:00:00Z"}}))
        .await;
    let observation = |date: &str| {
        json!({"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"text": "HbA1c"}, "subject": subject, "effectiveDateTime": date,
            "performer": [{"reference": format!("Practitioner/{practitioner}")}]})
    };
    let old_observation = server.create(&observation("2019-05-01")).await;
    let new_observation = server.create(&observation("2024-03-01")).await;
    let prescription = server
        .create(&json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": subject,
            "medicationReference": {"reference": format!("Medication/{medication}")},
            "requester": {"reference": format!("Practitioner/{practitioner}")}, "authoredOn": "2024-03-01"}))
        .await;
    let others_observation = server
        .create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "secret"},
            "subject": {"reference": format!("Patient/{other}")}, "performer": [{"reference": format!("Practitioner/{practitioner}")}]}))
        .await;
    Record {
        patient,
        other,
        practitioner,
        clinic,
        medication,
        encounter,
        old_observation,
        new_observation,
        prescription,
        others_observation,
    }
}

fn key(t: &str, id: &str) -> (String, String) {
    (t.to_string(), id.to_string())
}

async fn definitions_are_served_and_listed(db: Db) {
    let server = TestServer::start(db).await;
    let definition = body(server.get("OperationDefinition/Patient-everything").await).await;
    assert_eq!(definition["url"], "http://hl7.org/fhir/OperationDefinition/Patient-everything");
    let own = body(server.get("OperationDefinition/reindex").await).await;
    assert_eq!(own["url"], format!("{}/OperationDefinition/reindex", server.base), "own canonical under the base");
    assert_eq!(
        body(server.get("OperationDefinition/summary").await).await["url"],
        "http://hl7.org/fhir/uv/ips/OperationDefinition/summary"
    );
    let statement = body(server.get("metadata").await).await;
    let system: Vec<&str> =
        statement["rest"][0]["operation"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(system, ["reindex", "bulk-publish", "export"]);
    let resources = statement["rest"][0]["resource"].as_array().unwrap();
    let operations_of = |t: &str| -> BTreeSet<String> {
        let resource = resources.iter().find(|r| r["type"] == t).unwrap();
        resource["operation"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(
        operations_of("Patient"),
        ["everything", "export", "invite", "reindex", "summary", "validate"].map(String::from).into()
    );
    assert_eq!(operations_of("Composition"), ["document", "reindex", "validate"].map(String::from).into());
    assert_eq!(operations_of("Observation"), ["reindex", "validate"].map(String::from).into());
    assert_eq!(
        operations_of("Appointment"),
        ["book", "cancel", "find", "hold", "reindex", "validate"].map(String::from).into()
    );
    assert_eq!(operations_of("Group"), ["export", "reindex", "validate"].map(String::from).into());
    assert_eq!(operations_of("Schedule"), ["generate-slots", "reindex", "validate"].map(String::from).into());
    let find = body(server.get("OperationDefinition/appointment-find").await).await;
    assert_eq!(find["url"], format!("{}/OperationDefinition/appointment-find", server.base));
    let everything = resources.iter().find(|r| r["type"] == "Patient").unwrap()["operation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "everything")
        .unwrap()
        .clone();
    assert_eq!(everything["definition"], "http://hl7.org/fhir/OperationDefinition/Patient-everything");
}

async fn inputs_are_checked_against_the_definition(db: Db) {
    let server = TestServer::start(db).await;
    let patient = server.create(&json!({"resourceType": "Patient"})).await;
    let everything = format!("Patient/{patient}/$everything");
    for (query, named) in [
        ("colour=red", "colour"),
        ("_count=many", "_count"),
        ("start=2020-13", "start"),
        ("start=2020&start=2021", "start"),
        ("_since=yesterday", "_since"),
        ("_type=Spaceship", "Spaceship"),
    ] {
        let response = server.get(&format!("{everything}?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        let text = outcome(response).await;
        assert!(text.contains(named), "{query}: {text}");
    }
    // A Parameters body is checked the same way.
    let bad = json!({"resourceType": "Parameters", "parameter": [{"name": "_count", "valueString": "x"}]});
    assert_eq!(server.post(&everything, &bad).await.status(), 400);
    // A bare resource stands only for the single resource input of an operation.
    assert_eq!(server.post(&everything, &json!({"resourceType": "Patient"})).await.status(), 400);
    // Unknown operations, and operations at levels their definition does not allow.
    assert_eq!(server.get("Patient/$nonsense").await.status(), 404);
    assert_eq!(server.get("Observation/$everything").await.status(), 404);
    assert_eq!(server.get("$everything").await.status(), 404);
    // An operation that changes state refuses GET.
    let response = server.get("$reindex").await;
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(server.delete(&everything).await.status(), 405);
    // A cursor belongs to its own patient's $everything.
    let other = server.create(&json!({"resourceType": "Patient"})).await;
    let forged = server
        .request(Method::GET, &everything)
        .query(&[("_cursor", format!("[\"{other}\",false,null]"))])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400, "a cursor naming another patient");
    // Unknown instances are 404, exactly as a read.
    assert_eq!(server.get("Patient/nobody/$everything").await.status(), 404);
    assert_eq!(server.delete(&format!("Patient/{patient}")).await.status(), 204);
    assert_eq!(server.get(&everything).await.status(), 410, "a deleted patient is gone");
}

async fn everything_returns_the_record_and_what_it_references(db: Db) {
    let server = TestServer::start(db).await;
    let r = record(&server).await;
    let bundle = body(server.get(&format!("Patient/{}/$everything", r.patient)).await).await;
    assert_eq!(bundle["type"], "searchset");
    let matches: BTreeSet<_> = entries_of(&bundle, "match").into_iter().collect();
    let expected: BTreeSet<_> = [
        key("Patient", &r.patient),
        key("Encounter", &r.encounter),
        key("Observation", &r.old_observation),
        key("Observation", &r.new_observation),
        key("MedicationRequest", &r.prescription),
    ]
    .into();
    assert_eq!(matches, expected);
    assert_eq!(entries_of(&bundle, "match")[0], key("Patient", &r.patient), "the patient comes first");
    let included: BTreeSet<_> = entries_of(&bundle, "include").into_iter().collect();
    let referenced: BTreeSet<_> =
        [key("Practitioner", &r.practitioner), key("Organization", &r.clinic), key("Medication", &r.medication)].into();
    assert_eq!(included, referenced);
    assert!(!bundle.to_string().contains(&r.others_observation) && !bundle.to_string().contains(&r.other));

    // POST with Parameters gives the same record.
    let parameters =
        json!({"resourceType": "Parameters", "parameter": [{"name": "_type", "valueCode": "Observation"}]});
    let posted = body(server.post(&format!("Patient/{}/$everything", r.patient), &parameters).await).await;
    let posted_matches: BTreeSet<_> = entries_of(&posted, "match").into_iter().collect();
    assert_eq!(
        posted_matches,
        [key("Observation", &r.old_observation), key("Observation", &r.new_observation)].into(),
        "_type keeps only Observations"
    );
    assert_eq!(entries_of(&posted, "include"), vec![key("Practitioner", &r.practitioner)]);

    // start/end select by clinical date; undated resources stay.
    let recent = body(server.get(&format!("Patient/{}/$everything?start=2023-01-01", r.patient)).await).await;
    let recent: BTreeSet<_> = entries_of(&recent, "match").into_iter().collect();
    assert!(recent.contains(&key("Observation", &r.new_observation)));
    assert!(!recent.contains(&key("Observation", &r.old_observation)), "2019 is before start");
    assert!(recent.contains(&key("Patient", &r.patient)));
    let old =
        body(server.get(&format!("Patient/{}/$everything?end=2020-12-31&_type=Observation", r.patient)).await).await;
    assert_eq!(entries_of(&old, "match"), vec![key("Observation", &r.old_observation)]);

    // _since: only what changed since.
    let before = chrono_now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut updated = body(server.get(&format!("Observation/{}", r.old_observation)).await).await;
    updated["status"] = json!("amended");
    assert_eq!(server.put(&format!("Observation/{}", r.old_observation), &updated).await.status(), 200);
    let since = body(
        server
            .request(Method::GET, &format!("Patient/{}/$everything", r.patient))
            .query(&[("_since", before.as_str()), ("_type", "Observation")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(entries_of(&since, "match"), vec![key("Observation", &r.old_observation)]);
    let since_all = body(
        server
            .request(Method::GET, &format!("Patient/{}/$everything", r.patient))
            .query(&[("_since", before.as_str())])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        entries_of(&since_all, "match"),
        vec![key("Observation", &r.old_observation)],
        "the Patient, unchanged since, is left out too"
    );

    // Patient/$everything (open access): every patient's record, one patient after another.
    let mut seen = Vec::new();
    let mut next = Some(format!("{}/Patient/$everything?_count=50", server.base));
    while let Some(url) = next {
        let page = body(server.client.get(&url).send().await.unwrap()).await;
        seen.extend(entries_of(&page, "match"));
        next = link(&page, "next");
    }
    assert!(seen.contains(&key("Patient", &r.other)) && seen.contains(&key("Observation", &r.others_observation)));
    assert!(seen.contains(&key("Observation", &r.new_observation)));
    let distinct: HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "nothing repeated");
}

fn chrono_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// A patient with 10,000 resources, paged to the end while the record changes: every
/// resource there throughout comes exactly once, and the pages hold nothing else.
async fn everything_pages_through_a_large_record(db: Db) {
    let server = TestServer::start(db).await;
    let patient = server.create(&json!({"resourceType": "Patient"})).await;
    let total = 10_000;
    let entries: Vec<Value> = (0..total)
        .map(|n| {
            json!({"request": {"method": "POST", "url": "Observation"}, "resource": {
                "resourceType": "Observation", "status": "final", "code": {"text": format!("reading {n}")},
                "subject": {"reference": format!("Patient/{patient}")}, "valueInteger": n}})
        })
        .collect();
    let response = server.post("", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
    assert_eq!(response.status(), 200, "load 10,000 observations");
    let created: Vec<String> = body(response).await["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let location = e["response"]["location"].as_str().unwrap();
            location.split_once("/Observation/").unwrap().1.split('/').next().unwrap().to_string()
        })
        .collect();
    let mut expected: HashSet<String> = created.iter().cloned().collect();
    expected.insert(patient.clone());
    let mut seen: Vec<String> = Vec::new();
    let mut next = Some(format!("{}/Patient/{patient}/$everything?_count=1000", server.base));
    let mut pages = 0;
    // The last in id order, so on a page after the change.
    let deleted = created.iter().max().unwrap().clone();
    let mut late = String::new();
    while let Some(url) = next {
        let page = body(server.client.get(&url).send().await.unwrap()).await;
        pages += 1;
        for (_, id) in entries_of(&page, "match") {
            seen.push(id);
        }
        next = link(&page, "next");
        if pages == 3 {
            // The record changes between pages: one more, one fewer.
            late = server
                .create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "late"},
                    "subject": {"reference": format!("Patient/{patient}")}}))
                .await;
            assert_eq!(server.delete(&format!("Observation/{deleted}")).await.status(), 204);
            expected.remove(&deleted);
        }
    }
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "no resource on two pages");
    for id in &expected {
        assert!(distinct.contains(id), "{id} was returned");
    }
    assert!(!distinct.contains(&deleted), "deleted before its page");
    let extra: Vec<&&String> = distinct.iter().filter(|id| !expected.contains(**id)).collect();
    assert!(extra.iter().all(|id| **id == &late), "nothing else: {extra:?}");
    assert!(pages >= 10, "{pages} pages of at most 1,000");
}

async fn validate_checks_like_a_write_and_stores_nothing(db: Db) {
    let server = TestServer::start(db).await;
    let valid = json!({"resourceType": "Patient", "birthDate": "1970-01-01"});
    let response = server.post("Patient/$validate", &valid).await;
    assert_eq!(response.status(), 200);
    let answer = body(response).await;
    assert_eq!(answer["resourceType"], "OperationOutcome");
    assert_eq!(answer["issue"][0]["severity"], "information", "{answer}");

    let invalid = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource":
        {"resourceType": "Patient", "birthDate": "yesterday", "colour": "red"}}]});
    let response = server.post("Patient/$validate", &invalid).await;
    assert_eq!(response.status(), 200, "an invalid resource is still a 200");
    let answer = body(response).await;
    let text = answer["issue"].to_string();
    assert!(answer["issue"].as_array().unwrap().iter().all(|i| i["severity"] == "error"), "{answer}");
    assert!(text.contains("birthDate") && text.contains("colour"), "{text}");
    let stored = body(server.get("Patient?_summary=count").await).await;
    assert_eq!(stored["total"], 0, "nothing stored");

    // The type of the URL is the type validated.
    let wrong = server.post("Observation/$validate", &json!({"resourceType": "Patient"})).await;
    assert!(body(wrong).await["issue"].to_string().contains("does not match"));
    // mode=update needs the id; at instance level the instance's.
    let patient = server.create(&valid).await;
    let update = |resource: Value| {
        json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": resource}, {"name": "mode", "valueCode": "update"}]})
    };
    let answer = body(server.post("Patient/$validate", &update(valid.clone())).await).await;
    assert!(answer["issue"].to_string().contains("needs the resource's id"), "{answer}");
    let mut other_id = valid.clone();
    other_id["id"] = json!("someone-else");
    let answer = body(server.post(&format!("Patient/{patient}/$validate"), &update(other_id)).await).await;
    assert!(answer["issue"].to_string().contains("not the instance's id"), "{answer}");
    // Without a resource, an instance validates what is stored; delete mode needs no resource.
    let answer = body(server.get(&format!("Patient/{patient}/$validate")).await).await;
    assert_eq!(answer["issue"][0]["severity"], "information", "{answer}");
    let answer = body(server.get(&format!("Patient/{patient}/$validate?mode=delete")).await).await;
    assert_eq!(answer["issue"][0]["severity"], "information", "{answer}");
    // A profile the server does not know is an error issue; the base profile is known.
    let answer =
        body(server.get(&format!("Patient/{patient}/$validate?profile=http://example.org/Unknown")).await).await;
    assert!(answer["issue"][0]["diagnostics"].as_str().unwrap().contains("not known"), "{answer}");
    let base = "http://hl7.org/fhir/StructureDefinition/Patient";
    let answer = body(server.get(&format!("Patient/{patient}/$validate?profile={base}")).await).await;
    assert_eq!(answer["issue"][0]["severity"], "information", "{answer}");
    assert_eq!(server.get("Patient/$validate?mode=remove").await.status(), 400);
    assert_eq!(server.get("Patient/$validate").await.status(), 400, "nothing to validate");
    let stored = body(server.get("Patient?_summary=count").await).await;
    assert_eq!(stored["total"], 1, "still only the one created");
}

async fn summary_is_an_ips_document(db: Db) {
    let server = TestServer::start(db).await;
    let r = record(&server).await;
    let subject = json!({"reference": format!("Patient/{}", r.patient)});
    let practitioner = json!({"reference": format!("Practitioner/{}", r.practitioner)});
    let condition = server
        .create(&json!({"resourceType": "Condition", "subject": subject, "code": {"text": "Diabetes"}, "recorder": practitioner,
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}}))
        .await;
    let resolved = server
        .create(&json!({"resourceType": "Condition", "subject": subject, "code": {"text": "Measles"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}]}}))
        .await;
    let immunization = server
        .create(&json!({"resourceType": "Immunization", "status": "completed", "patient": subject,
            "vaccineCode": {"text": "Tetanus"}, "occurrenceDateTime": "2020-01-01"}))
        .await;
    let mistake = server
        .create(&json!({"resourceType": "AllergyIntolerance", "patient": subject, "code": {"text": "Nothing"},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "entered-in-error"}]}}))
        .await;
    for path in [format!("Patient/{}/$summary", r.patient), "Patient/$summary?identifier=urn:mrn|P-1".to_string()] {
        let response = server.get(&path).await;
        assert_eq!(response.status(), 200, "{path}");
        let document = body(response).await;
        assert_eq!(document["type"], "document");
        assert!(document["identifier"]["value"].as_str().unwrap().starts_with("urn:uuid:"));
        assert!(document["timestamp"].is_string());
        let composition = &document["entry"][0]["resource"];
        assert_eq!(composition["resourceType"], "Composition");
        assert_eq!(document["entry"][0]["fullUrl"], format!("urn:uuid:{}", composition["id"].as_str().unwrap()));
        assert_eq!(composition["type"]["coding"][0]["code"], "60591-5");
        assert_eq!(composition["subject"]["reference"], format!("{}/Patient/{}", server.base, r.patient));
        let section = |code: &str| {
            composition["section"].as_array().unwrap().iter().find(|s| s["code"]["coding"][0]["code"] == code).cloned()
        };
        let in_section = |code: &str| -> Vec<String> {
            section(code).map_or(Vec::new(), |s| {
                s["entry"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| e["reference"].as_str().unwrap().to_string())
                    .collect()
            })
        };
        let url = |t: &str, id: &str| format!("{}/{t}/{id}", server.base);
        assert_eq!(in_section("11450-4"), vec![url("Condition", &condition)], "active problems");
        assert_eq!(in_section("11348-0"), vec![url("Condition", &resolved)], "past illnesses");
        let allergies = section("48765-2").expect("the allergies section is required");
        assert!(allergies.get("entry").is_none(), "the entered-in-error allergy is left out");
        assert_eq!(allergies["emptyReason"]["coding"][0]["code"], "unavailable");
        assert_eq!(in_section("10160-0"), vec![url("MedicationRequest", &r.prescription)]);
        assert_eq!(in_section("11369-6"), vec![url("Immunization", &immunization)]);
        let results = in_section("30954-2");
        assert!(results.contains(&url("Observation", &r.new_observation)) && results.len() == 2, "{results:?}");
        assert!(section("47519-4").is_none(), "no procedures, no recommended section");
        for s in composition["section"].as_array().unwrap() {
            assert!(s["text"]["div"].as_str().unwrap().starts_with("<div xmlns=\"http://www.w3.org/1999/xhtml\">"));
        }
        assert_references_resolve(&document, &server.base);
        let text = document.to_string();
        assert!(text.contains(&format!("Medication/{}", r.medication)), "the prescribed medication is carried");
        assert!(!text.contains(&mistake) && !text.contains(&r.others_observation));
    }
    // A patient with no records still gets the three required sections.
    let empty = server.create(&json!({"resourceType": "Patient"})).await;
    let document = body(server.get(&format!("Patient/{empty}/$summary")).await).await;
    let sections = document["entry"][0]["resource"]["section"].as_array().unwrap().clone();
    let codes: Vec<&str> = sections.iter().map(|s| s["code"]["coding"][0]["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["11450-4", "48765-2", "10160-0"]);
    assert!(sections.iter().all(|s| s["emptyReason"].is_object()));
    assert_references_resolve(&document, &server.base);
    assert_eq!(server.get("Patient/$summary?identifier=urn:mrn|nobody").await.status(), 404);
    assert_eq!(server.get("Patient/$summary").await.status(), 400, "type level needs an identifier");
    assert_eq!(server.get(&format!("Patient/{empty}/$summary?profile=http://example.org/X")).await.status(), 400);
    let stored = body(server.get("Composition?_summary=count").await).await;
    assert_eq!(stored["total"], 0, "nothing stored");
}

async fn document_bundles_a_stored_composition(db: Db) {
    let server = TestServer::start(db).await;
    let r = record(&server).await;
    let composition = server
        .create(&json!({"resourceType": "Composition", "status": "final", "type": {"text": "Discharge summary"},
            "subject": {"reference": format!("Patient/{}", r.patient)}, "date": "2024-03-02",
            "author": [{"reference": format!("Practitioner/{}", r.practitioner)}], "title": "Discharge",
            "custodian": {"reference": format!("Organization/{}", r.clinic)},
            "section": [{"title": "Results", "entry": [{"reference": format!("Observation/{}", r.new_observation)}]},
                        {"title": "Nested", "section": [{"title": "Medications", "entry": [{"reference": format!("MedicationRequest/{}", r.prescription)}]}]}]}))
        .await;
    let path = format!("Composition/{composition}/$document");
    let document = body(server.get(&path).await).await;
    assert_eq!(document["type"], "document");
    assert_eq!(document["entry"][0]["resource"]["id"], composition.as_str());
    assert_eq!(document["entry"][0]["fullUrl"], format!("{}/Composition/{composition}", server.base));
    let carried: HashSet<String> =
        document["entry"].as_array().unwrap().iter().map(|e| e["fullUrl"].as_str().unwrap().to_string()).collect();
    for (t, id) in [
        ("Patient", &r.patient),
        ("Practitioner", &r.practitioner),
        ("Organization", &r.clinic),
        ("Observation", &r.new_observation),
        ("MedicationRequest", &r.prescription),
        ("Medication", &r.medication),
    ] {
        assert!(carried.contains(&format!("{}/{t}/{id}", server.base)), "{t}/{id} is carried");
    }
    assert_references_resolve(&document, &server.base);
    let by_id = body(server.get(&format!("Composition/$document?id={composition}")).await).await;
    assert_eq!(by_id["entry"].as_array().unwrap().len(), document["entry"].as_array().unwrap().len());
    // persist=true stores the document as a Bundle, with POST only.
    assert_eq!(server.get(&format!("{path}?persist=true")).await.status(), 405);
    assert_eq!(body(server.get("Bundle?_summary=count").await).await["total"], 0, "GET stored nothing");
    let response = server.post(&format!("{path}?persist=true"), &json!({"resourceType": "Parameters"})).await;
    assert_eq!(response.status(), 200);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let stored = body(response).await;
    assert_eq!(stored["type"], "document");
    let id = stored["id"].as_str().unwrap();
    assert!(location.contains(&format!("/Bundle/{id}/_history/1")), "{location}");
    assert_eq!(
        body(server.get(&format!("Bundle/{id}")).await).await["entry"][0]["resource"]["id"],
        composition.as_str()
    );
    assert_eq!(server.get("Composition/nothing/$document").await.status(), 404);
}

/// The operations under SMART tokens: a patient's own record, another's, a proxy's, and
/// tokens without the scopes an operation needs.
async fn operations_apply_the_callers_access(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    smart.add_secret_client("admin", "admin-secret").await;
    let admin = smart.system_token("admin", "admin-secret", "system/*.cruds").await;
    let create = |resource: Value| {
        let (smart, admin) = (&smart, &admin);
        async move { smart.create(admin, &resource).await }
    };
    let ana = create(json!({"resourceType": "Patient", "name": [{"family": "Rivera", "given": ["Ana"]}]})).await;
    let luis = create(json!({"resourceType": "Patient", "name": [{"family": "Rivera", "given": ["Luis"]}]})).await;
    let observation = |patient: &str| json!({"resourceType": "Observation", "status": "final", "code": {"text": "bp"}, "subject": {"reference": format!("Patient/{patient}")}});
    let anas = create(observation(&ana)).await;
    let luiss = create(observation(&luis)).await;
    let condition = create(json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{ana}")}, "code": {"text": "asthma"}})).await;
    smart.add_public_client("app").await;
    smart.add_user("ana", "ana-password", &format!("Patient/{ana}"), &[]).await;
    smart.add_user("mum", "mum-password", "RelatedPerson/rp1", &[&ana]).await;
    let token = |user: &'static str, password: &'static str, scope: &'static str| {
        let smart = &smart;
        async move {
            let token = smart.launch(&Authorization::new("app", scope, user, password)).await;
            token["access_token"].as_str().unwrap().to_string()
        }
    };
    let ids = |bundle: &Value| -> HashSet<String> {
        bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["resource"]["id"].as_str().map(String::from))
            .collect()
    };
    for (who, access) in [
        ("patient", token("ana", "ana-password", "launch/patient patient/*.rs").await),
        ("proxy", token("mum", "mum-password", "user/*.rs").await),
    ] {
        let own = smart.get(&format!("Patient/{ana}/$everything"), &access).await;
        assert_eq!(own.status(), 200, "{who}");
        let own = ids(&body(own).await);
        assert!(own.contains(&anas) && own.contains(&condition) && !own.contains(&luiss), "{who}: {own:?}");
        for path in [
            format!("Patient/{luis}/$everything"),
            format!("Patient/{luis}/$summary"),
            format!("Patient/{luis}/$validate"),
        ] {
            assert_eq!(smart.get(&path, &access).await.status(), 404, "{who}: {path}");
        }
        let all = ids(&body(smart.get("Patient/$everything", &access).await).await);
        assert!(all.contains(&ana) && !all.contains(&luis) && !all.contains(&luiss), "{who}: {all:?}");
        let cursor = format!("[\"{luis}\",false,null]");
        let forged =
            smart.fhir_request(Method::GET, "Patient/$everything", &access).query(&[("_cursor", cursor)]).send();
        assert_eq!(forged.await.unwrap().status(), 400, "{who}: a cursor naming a patient out of reach");
        let summary = smart.get(&format!("Patient/{ana}/$summary"), &access).await;
        assert_eq!(summary.status(), 200, "{who}");
        assert!(!body(summary).await.to_string().contains(&luiss));
        // $validate reads nothing at type level.
        let valid = smart.send(Method::POST, "Observation/$validate", &access, &observation(&luis)).await;
        assert_eq!(valid.status(), 200, "{who}: $validate");
        let reindex = smart.send(Method::POST, "$reindex", &access, &json!({"resourceType": "Parameters"})).await;
        assert_eq!(reindex.status(), 403, "{who}: $reindex");
    }
    // A token without the Observation and Condition scopes gets neither from $everything.
    let narrow = token("ana", "ana-password", "launch/patient patient/Patient.rs").await;
    let record = smart.get(&format!("Patient/{ana}/$everything"), &narrow).await;
    assert_eq!(record.status(), 200);
    assert_eq!(ids(&body(record).await), HashSet::from([ana.clone()]));
    // Nor may a token without the Patient scope run $everything on a patient.
    let observations_only = token("ana", "ana-password", "launch/patient patient/Observation.rs").await;
    assert_eq!(smart.get(&format!("Patient/{ana}/$everything"), &observations_only).await.status(), 403);
    assert_eq!(smart.get("Patient/$everything", &observations_only).await.status(), 403);
    // A patient may validate an update of their own record but is told they may not update another's.
    let writer = token("ana", "ana-password", "launch/patient patient/*.rs").await;
    let mut mine = body(smart.get(&format!("Observation/{anas}"), &admin).await).await;
    mine["status"] = json!("amended");
    let parameters = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": mine}, {"name": "mode", "valueCode": "update"}]});
    let answer =
        body(smart.send(Method::POST, &format!("Observation/{anas}/$validate"), &writer, &parameters).await).await;
    assert!(answer["issue"].to_string().contains("does not allow to update"), "read-only token: {answer}");
    // The system token reaches everything.
    let all = ids(&body(smart.get("Patient/$everything?_count=100", &admin).await).await);
    assert!(all.contains(&ana), "the first patient's record first");
    assert_eq!(
        smart.send(Method::POST, "$reindex", &admin, &json!({"resourceType": "Parameters"})).await.status(),
        202
    );
}

on_both_databases!(
    definitions_are_served_and_listed,
    inputs_are_checked_against_the_definition,
    everything_returns_the_record_and_what_it_references,
    everything_pages_through_a_large_record,
    validate_checks_like_a_write_and_stores_nothing,
    summary_is_an_ips_document,
    document_bundles_a_stored_composition,
    operations_apply_the_callers_access,
);
