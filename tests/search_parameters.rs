//! Custom SearchParameter resources and `$reindex`, end to end through HTTP, on both databases.

mod common;

use std::time::Duration;

use common::{body, outcome, Db, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

const MAIDEN_NAME: &str = "http://example.org/fhir/StructureDefinition/mothers-maiden-name";

fn maiden_name_parameter(status: &str) -> Value {
    json!({"resourceType": "SearchParameter", "url": "http://example.org/fhir/SearchParameter/mothers-maiden-name",
        "name": "MothersMaidenName", "status": status, "description": "The mother's maiden name",
        "code": "mothers-maiden-name", "base": ["Patient"], "type": "string",
        "expression": format!("Patient.extension('{MAIDEN_NAME}').value")})
}

fn patient_with_maiden_name(family: &str, maiden_name: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family}],
        "extension": [{"url": MAIDEN_NAME, "valueString": maiden_name}]})
}

/// Starts `$reindex` at `path`, polls its job until it ends, and returns the final outcome text.
async fn reindex(server: &TestServer, path: &str) -> String {
    let response = server.request(Method::POST, path).send().await.expect("POST $reindex");
    assert_eq!(response.status(), 202, "$reindex is accepted for background work");
    let status_url = response.headers()["content-location"].to_str().unwrap().to_string();
    assert!(status_url.starts_with(&server.url("_jobs/")), "{status_url}");
    for _ in 0..200 {
        let response = server.client.get(&status_url).send().await.expect("poll the job");
        match response.status().as_u16() {
            202 => assert!(response.headers().contains_key("x-progress")),
            200 => return outcome(response).await,
            other => panic!("job status {other}: {}", response.text().await.unwrap_or_default()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the reindex job did not finish");
}

async fn custom_parameters_index_new_writes_at_once_and_old_data_after_reindex(db: Db) {
    let server = TestServer::start(db).await;
    let before = server.create(&patient_with_maiden_name("Old", "Smithson")).await;
    let _other = server.create(&patient_with_maiden_name("Other", "Jones")).await;

    let response = server.post("SearchParameter", &maiden_name_parameter("active")).await;
    assert_eq!(response.status(), 201);
    let parameter_id = body(response).await["id"].as_str().unwrap().to_string();

    // Known at once (strict handling accepts it), new writes are indexed at once…
    let strict = [("prefer", "handling=strict")];
    let after = server.create(&patient_with_maiden_name("New", "Smith")).await;
    let search = |query: &'static str| {
        let server = &server;
        async move {
            let response = server.request(Method::GET, query).header(strict[0].0, strict[0].1).send().await.unwrap();
            assert_eq!(response.status(), 200, "{query}");
            let bundle = body(response).await;
            let mut ids: Vec<String> = bundle["entry"]
                .as_array()
                .map(|e| e.iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            ids.sort();
            ids
        }
    };
    assert_eq!(search("Patient?mothers-maiden-name=smith").await, vec![after.clone()]);
    // …and data written before the parameter existed after $reindex.
    let message = reindex(&server, "Patient/$reindex").await;
    assert!(message.contains("reindexed 3 resources"), "{message}");
    let mut expected = vec![before.clone(), after.clone()];
    expected.sort();
    assert_eq!(search("Patient?mothers-maiden-name=smith").await, expected);
    assert_eq!(search("Patient?mothers-maiden-name:exact=Smithson").await, vec![before.clone()]);

    // The CapabilityStatement lists it while it is active.
    let statement = body(server.get("metadata").await).await;
    let patient = statement["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Patient").unwrap();
    let listed = patient["searchParam"].as_array().unwrap().iter().find(|p| p["name"] == "mothers-maiden-name");
    assert_eq!(listed.unwrap()["definition"], "http://example.org/fhir/SearchParameter/mothers-maiden-name");

    // Retired (status no longer active) it is unknown again.
    let mut retired = maiden_name_parameter("retired");
    retired["id"] = json!(parameter_id);
    assert_eq!(server.put(&format!("SearchParameter/{parameter_id}"), &retired).await.status(), 200);
    let response = server
        .request(Method::GET, "Patient?mothers-maiden-name=smith")
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(outcome(response).await.contains("mothers-maiden-name"));
}

async fn custom_parameters_survive_a_restart_and_reindex_covers_every_type(db: Db) {
    let server = TestServer::start(db).await;
    let observation = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "note": [{"text": "fasting sample"}]});
    let id = server.create(&observation).await;
    let parameter = json!({"resourceType": "SearchParameter", "url": "http://example.org/fhir/SearchParameter/note",
        "name": "Note", "status": "active", "description": "Note text", "code": "note-text",
        "base": ["Observation", "DiagnosticReport"], "type": "string", "expression": "Observation.note.text"});
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": parameter, "request": {"method": "POST", "url": "SearchParameter"}}]});
    assert_eq!(server.post("", &bundle).await.status(), 200, "a transaction defines it too");
    assert!(server.search_ids("Observation?note-text=fasting").await.is_empty(), "old data waits for $reindex");
    let message = reindex(&server, "$reindex").await;
    let topics = body(server.get("Basic?_summary=count").await).await["total"].as_u64().unwrap();
    let expected = format!("reindexed {} resources", 2 + topics);
    assert!(message.contains(&expected), "the Observation, the SearchParameter and the built-in topics: {message}");
    assert_eq!(server.search_ids("Observation?note-text=fasting").await, vec![id.clone()]);

    let restarted = server.restart().await;
    assert_eq!(restarted.search_ids("Observation?note-text=fast").await, vec![id]);
}

async fn unusable_definitions_are_refused_with_the_reason(db: Db) {
    let server = TestServer::start(db).await;
    let cases = [
        ("expression", json!("Patient.name.where(")),
        ("code", json!("name")),
        ("type", json!("special")),
        ("base", json!(["Spaceship"])),
    ];
    for (element, value) in cases {
        let mut parameter = maiden_name_parameter("active");
        match element {
            "code" => parameter["url"] = json!("http://example.org/fhir/SearchParameter/other-name"),
            "base" => {}
            _ => {}
        }
        parameter[element] = value;
        let response = server.post("SearchParameter", &parameter).await;
        let status = response.status().as_u16();
        let text = body(response).await;
        assert!(status == 422 || status == 400, "{element}: {status} {text}");
        let expression = text["issue"][0]["expression"][0].as_str().unwrap_or("");
        assert!(expression.starts_with("SearchParameter"), "{element}: {text}");
    }
    assert!(server.search_ids("SearchParameter").await.is_empty(), "nothing was stored");
    // A draft is stored as it is: only active definitions must be usable.
    let mut draft = maiden_name_parameter("draft");
    draft["expression"] = json!("Patient.name.where(");
    assert_eq!(server.post("SearchParameter", &draft).await.status(), 201);
}

async fn job_status_answers_for_unknown_and_finished_jobs(db: Db) {
    let server = TestServer::start(db).await;
    assert_eq!(server.get("_jobs/999").await.status(), 404);
    assert_eq!(server.get("_jobs/x").await.status(), 404);
    reindex(&server, "Patient/$reindex").await;
    let response = server.request(Method::POST, "Patient/$reindex").send().await.unwrap();
    let status_url = response.headers()["content-location"].to_str().unwrap().to_string();
    let job = status_url.rsplit('/').next().unwrap().to_string();
    // The job may be done already (409) or cancelled now (202); either way it does not run on.
    let cancel = server.delete(&format!("_jobs/{job}")).await.status().as_u16();
    assert!(cancel == 202 || cancel == 409, "{cancel}");
    let after = server.get(&format!("_jobs/{job}")).await.status().as_u16();
    assert_eq!(after, if cancel == 202 { 404 } else { 200 });
    assert_eq!(server.request(Method::POST, "$nonsense").send().await.unwrap().status(), 404);
    assert_eq!(server.get("$reindex").await.status(), 405);
}

async fn updates_replace_composite_index_rows(db: Db) {
    let server = TestServer::start(db).await;
    let mut observation = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "valueQuantity": {"value": 150, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}});
    let id = server.create(&observation).await;
    let query = "Observation?code-value-quantity=http://loinc.org|8480-6$gt140";
    assert_eq!(server.search_ids(query).await, vec![id.clone()]);
    observation["id"] = json!(id);
    observation["valueQuantity"]["value"] = json!(120);
    assert_eq!(server.put(&format!("Observation/{id}"), &observation).await.status(), 200);
    assert!(server.search_ids(query).await.is_empty(), "the old value no longer matches");
    assert_eq!(server.search_ids("Observation?code-value-quantity=http://loinc.org|8480-6$lt130").await, vec![id]);
}

/// Another node learns of a SearchParameter written through this one within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_nodes_pick_up_new_parameters() {
    let first = TestServer::start(Db::Postgres).await;
    let second = first.second_node().await;
    let strict_search = |server: &TestServer| {
        server.request(Method::GET, "Patient?mothers-maiden-name=smith").header("prefer", "handling=strict").send()
    };
    assert_eq!(strict_search(&second).await.unwrap().status(), 400, "unknown before");
    assert_eq!(first.post("SearchParameter", &maiden_name_parameter("active")).await.status(), 201);
    let patient = first.create(&patient_with_maiden_name("New", "Smith")).await;
    for _ in 0..60 {
        let response = strict_search(&second).await.unwrap();
        if response.status() == 200 {
            let ids: Vec<String> = body(response).await["entry"]
                .as_array()
                .map(|e| e.iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            assert_eq!(ids, vec![patient]);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the second node never picked up the new SearchParameter");
}

on_both_databases!(
    custom_parameters_index_new_writes_at_once_and_old_data_after_reindex,
    custom_parameters_survive_a_restart_and_reindex_covers_every_type,
    unusable_definitions_are_refused_with_the_reason,
    job_status_answers_for_unknown_and_finished_jobs,
    updates_replace_composite_index_rows,
);
