//! The FHIR REST interactions, end to end through HTTP, on SQLite and PostgreSQL.

mod common;

use common::{body, outcome, Db, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

fn patient(family: &str, mrn: &str) -> Value {
    json!({"resourceType": "Patient", "active": true,
        "identifier": [{"system": "http://hospital.example/mrn", "value": mrn}],
        "name": [{"family": family, "given": ["Anna"]}], "gender": "female", "birthDate": "1980-04-02"})
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

async fn metadata_lists_what_is_implemented(db: Db) {
    let server = TestServer::start(db).await;
    let response = server.get("metadata").await;
    assert_eq!(response.status(), 200);
    assert!(header(&response, "content-type").starts_with("application/fhir+json"));
    let statement = body(response).await;
    assert_eq!(statement["resourceType"], "CapabilityStatement");
    assert_eq!(statement["fhirVersion"], "4.0.1");
    let resources = statement["rest"][0]["resource"].as_array().unwrap();
    assert_eq!(resources.len(), 146);
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let params: Vec<&str> =
        patient["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(params.contains(&"identifier") && params.contains(&"name") && params.contains(&"_id"), "{params:?}");
    assert!(params.contains(&"birthdate"), "{params:?}");
    let observation = resources.iter().find(|r| r["type"] == "Observation").unwrap();
    let params: Vec<&str> =
        observation["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(params.contains(&"value-quantity") && params.contains(&"date"), "{params:?}");
    assert!(params.contains(&"code-value-quantity"), "{params:?}");
    let interactions: Vec<&str> =
        statement["rest"][0]["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
    assert_eq!(interactions, vec!["transaction", "batch", "history-system"]);
}

async fn create_read_update_delete_and_history(db: Db) {
    let server = TestServer::start(db).await;
    let created = server.post("Patient", &patient("Smith", "M1")).await;
    assert_eq!(created.status(), 201);
    assert_eq!(header(&created, "etag"), "W/\"1\"");
    let location = header(&created, "location");
    assert!(!header(&created, "last-modified").is_empty());
    let created = body(created).await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(location, server.url(&format!("Patient/{id}/_history/1")));
    assert_eq!(created["meta"]["versionId"], "1");
    assert_eq!(created["name"][0]["family"], "Smith");

    let read = server.get(&format!("Patient/{id}")).await;
    assert_eq!(read.status(), 200);
    assert_eq!(header(&read, "etag"), "W/\"1\"");
    assert_eq!(body(read).await, created);

    let mut changed = created.clone();
    changed["name"][0]["family"] = json!("Smythe");
    let updated = server.put(&format!("Patient/{id}"), &changed).await;
    assert_eq!(updated.status(), 200);
    assert_eq!(header(&updated, "etag"), "W/\"2\"");
    assert_eq!(header(&updated, "location"), server.url(&format!("Patient/{id}/_history/2")));
    assert_eq!(body(updated).await["meta"]["versionId"], "2");

    assert_eq!(body(server.get(&format!("Patient/{id}/_history/1")).await).await["name"][0]["family"], "Smith");
    assert_eq!(body(server.get(&format!("Patient/{id}/_history/2")).await).await["name"][0]["family"], "Smythe");
    assert_eq!(server.get(&format!("Patient/{id}/_history/3")).await.status(), 404);

    let deleted = server.delete(&format!("Patient/{id}")).await;
    assert_eq!(deleted.status(), 204);
    let gone = server.get(&format!("Patient/{id}")).await;
    assert_eq!(gone.status(), 410);
    assert!(outcome(gone).await.contains("deleted"));
    assert_eq!(server.get(&format!("Patient/{id}/_history/3")).await.status(), 410);
    assert_eq!(server.get(&format!("Patient/{id}/_history/2")).await.status(), 200);
    assert_eq!(server.delete(&format!("Patient/{id}")).await.status(), 204, "deleting again is a no-op");
    assert!(server.search_ids(&format!("Patient?_id={id}")).await.is_empty(), "search skips deleted resources");
    assert!(server.search_ids(&format!("Patient?_id={id}&gender:missing=true")).await.is_empty());

    let history = body(server.get(&format!("Patient/{id}/_history")).await).await;
    assert_eq!(history["type"], "history");
    let entries = history["entry"].as_array().unwrap();
    let methods: Vec<&str> = entries.iter().map(|e| e["request"]["method"].as_str().unwrap()).collect();
    assert_eq!(methods, vec!["DELETE", "PUT", "POST"]);
    assert!(entries[0].get("resource").is_none());
    assert_eq!(entries[1]["resource"]["meta"]["versionId"], "2");
    assert_eq!(entries[2]["response"]["etag"], "W/\"1\"");

    // A deleted resource can be brought back by an update: a new version, 201.
    let mut revived = changed.clone();
    revived["name"][0]["family"] = json!("Back");
    let revived = server.put(&format!("Patient/{id}"), &revived).await;
    assert_eq!(revived.status(), 201);
    assert_eq!(header(&revived, "etag"), "W/\"4\"");

    assert_eq!(server.get("Patient/unknown-id").await.status(), 404);
}

async fn update_as_create_uses_the_client_id(db: Db) {
    let server = TestServer::start(db).await;
    let mut resource = patient("Client", "C1");
    resource["id"] = json!("chosen-id");
    let response = server.put("Patient/chosen-id", &resource).await;
    assert_eq!(response.status(), 201);
    assert_eq!(header(&response, "location"), server.url("Patient/chosen-id/_history/1"));
    assert_eq!(body(server.get("Patient/chosen-id").await).await["name"][0]["family"], "Client");
}

async fn version_preconditions(db: Db) {
    let server = TestServer::start(db).await;
    let id = server.create(&patient("Guard", "G1")).await;
    let mut resource = body(server.get(&format!("Patient/{id}")).await).await;
    resource["gender"] = json!("other");

    let stale = server.send_with(Method::PUT, &format!("Patient/{id}"), &resource, &[("if-match", "W/\"7\"")]).await;
    assert_eq!(stale.status(), 412);
    assert!(outcome(stale).await.contains("version"));
    let current = server.send_with(Method::PUT, &format!("Patient/{id}"), &resource, &[("if-match", "W/\"1\"")]).await;
    assert_eq!(current.status(), 200);

    let not_modified =
        server.request(Method::GET, &format!("Patient/{id}")).header("if-none-match", "W/\"2\"").send().await.unwrap();
    assert_eq!(not_modified.status(), 304);
    let modified =
        server.request(Method::GET, &format!("Patient/{id}")).header("if-none-match", "W/\"1\"").send().await.unwrap();
    assert_eq!(modified.status(), 200);
    let later = httpdate::fmt_http_date(std::time::SystemTime::now() + std::time::Duration::from_secs(60));
    let since =
        server.request(Method::GET, &format!("Patient/{id}")).header("if-modified-since", later).send().await.unwrap();
    assert_eq!(since.status(), 304);
    let earlier = httpdate::fmt_http_date(std::time::SystemTime::now() - std::time::Duration::from_secs(3600));
    let since = server
        .request(Method::GET, &format!("Patient/{id}"))
        .header("if-modified-since", earlier)
        .send()
        .await
        .unwrap();
    assert_eq!(since.status(), 200);

    let stale_delete =
        server.request(Method::DELETE, &format!("Patient/{id}")).header("if-match", "W/\"1\"").send().await.unwrap();
    assert_eq!(stale_delete.status(), 412);
    assert_eq!(server.get(&format!("Patient/{id}")).await.status(), 200);
}

async fn prefer_return(db: Db) {
    let server = TestServer::start(db).await;
    let minimal =
        server.send_with(Method::POST, "Patient", &patient("Min", "P1"), &[("prefer", "return=minimal")]).await;
    assert_eq!(minimal.status(), 201);
    assert!(!header(&minimal, "location").is_empty());
    assert_eq!(header(&minimal, "etag"), "W/\"1\"");
    assert!(minimal.text().await.unwrap().is_empty());

    let with_outcome =
        server.send_with(Method::POST, "Patient", &patient("Oo", "P2"), &[("prefer", "return=OperationOutcome")]).await;
    assert_eq!(with_outcome.status(), 201);
    let text = outcome(with_outcome).await;
    assert!(text.contains("created Patient/"), "{text}");
}

async fn conditional_create_update_delete(db: Db) {
    let server = TestServer::start(db).await;
    let create = |mrn: &'static str| {
        server
            .request(Method::POST, "Patient")
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", format!("identifier=http://hospital.example/mrn|{mrn}"))
            .body(patient("Cond", mrn).to_string())
    };
    let first = create("X1").send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first_id = body(first).await["id"].as_str().unwrap().to_string();
    let second = create("X1").send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(body(second).await["id"], first_id.as_str());
    assert_eq!(server.search_ids("Patient?identifier=X1").await.len(), 1);

    server.create(&patient("Twin", "T")).await;
    server.create(&patient("Twin", "T")).await;
    let ambiguous = create("T").send().await.unwrap();
    assert_eq!(ambiguous.status(), 412);

    // Conditional update: no match → create; one match → update it.
    let created = server.put("Patient?identifier=http://hospital.example/mrn|U1", &patient("Upd", "U1")).await;
    assert_eq!(created.status(), 201);
    let updated = server.put("Patient?identifier=http://hospital.example/mrn|U1", &patient("Updated", "U1")).await;
    assert_eq!(updated.status(), 200);
    assert_eq!(header(&updated, "etag"), "W/\"2\"");
    assert_eq!(server.search_ids("Patient?identifier=U1").await.len(), 1);
    assert_eq!(server.put("Patient?identifier=T", &patient("Twin", "T")).await.status(), 412);

    // Conditional delete: one match deletes it; several → 412.
    assert_eq!(server.delete("Patient?identifier=U1").await.status(), 204);
    assert!(server.search_ids("Patient?identifier=U1").await.is_empty());
    assert_eq!(server.delete("Patient?identifier=T").await.status(), 412);
    assert_eq!(server.search_ids("Patient?identifier=T").await.len(), 2);
}

async fn json_patch_and_fhirpath_patch(db: Db) {
    let server = TestServer::start(db).await;
    let id = server.create(&patient("Patchy", "PA")).await;
    let json_patch = json!([{"op": "replace", "path": "/gender", "value": "male"}, {"op": "add", "path": "/name/0/given/-", "value": "Maria"}]);
    let response = server.json_patch(&format!("Patient/{id}"), &json_patch, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "etag"), "W/\"2\"");
    let patched = body(response).await;
    assert_eq!(patched["gender"], "male");
    assert_eq!(patched["name"][0]["given"], json!(["Anna", "Maria"]));

    let fhirpath_patch = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.birthDate"},
        {"name": "value", "valueDate": "1990-01-01"}]}]});
    let response = server.send_json(Method::PATCH, &format!("Patient/{id}"), &fhirpath_patch).await;
    assert_eq!(response.status(), 200);
    assert_eq!(body(response).await["birthDate"], "1990-01-01");

    // A patch that makes the resource invalid is refused and changes nothing.
    let invalid = json!([{"op": "replace", "path": "/gender", "value": 42}]);
    let response = server.json_patch(&format!("Patient/{id}"), &invalid, &[]).await;
    assert_eq!(response.status(), 422);
    let current = server.get(&format!("Patient/{id}")).await;
    assert_eq!(header(&current, "etag"), "W/\"3\"");

    let stale = server.json_patch(&format!("Patient/{id}"), &json_patch, &[("if-match", "W/\"1\"")]).await;
    assert_eq!(stale.status(), 412);
}

async fn xml_and_pretty_formats(db: Db) {
    let server = TestServer::start(db).await;
    let xml = r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/><name><family value="Xml"/><given value="Ex"/></name><birthDate value="1970-01-01"/></Patient>"#;
    let created = server
        .request(Method::POST, "Patient")
        .header("content-type", "application/fhir+xml")
        .header("accept", "application/fhir+xml")
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert!(header(&created, "content-type").starts_with("application/fhir+xml"));
    let text = created.text().await.unwrap();
    assert!(text.starts_with("<?xml"), "{text}");
    assert!(text.contains("<family value=\"Xml\"/>"), "{text}");

    let ids = server.search_ids("Patient?family=xml").await;
    assert_eq!(ids.len(), 1);
    let as_json = body(server.get(&format!("Patient/{}", ids[0])).await).await;
    assert_eq!(as_json["name"][0]["given"], json!(["Ex"]));

    let via_format = server.get(&format!("Patient/{}?_format=xml", ids[0])).await;
    assert!(header(&via_format, "content-type").starts_with("application/fhir+xml"));
    assert!(via_format.text().await.unwrap().contains("xmlns=\"http://hl7.org/fhir\""));

    let pretty = server.get(&format!("Patient/{}?_pretty=true", ids[0])).await.text().await.unwrap();
    assert!(pretty.contains("\n  \"resourceType\": \"Patient\""), "{pretty}");
    let compact = server.get(&format!("Patient/{}", ids[0])).await.text().await.unwrap();
    assert!(!compact.contains('\n'));

    let not_acceptable = server.request(Method::GET, "metadata").header("accept", "text/html").send().await.unwrap();
    assert_eq!(not_acceptable.status(), 406);
    let unsupported = server
        .request(Method::POST, "Patient")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(unsupported.status(), 415);
}

async fn history_paging_and_since(db: Db) {
    let server = TestServer::start(db).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(server.create(&patient(&format!("Hist{n}"), &format!("H{n}"))).await);
        // lastUpdated has millisecond precision: keep each version in a millisecond of its own,
        // so that `_since` can tell them apart.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
    server.create(&observation).await;
    let between = body(server.get(&format!("Patient/{}", ids[2])).await).await["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string();

    let page = body(server.get("Patient/_history?_count=2").await).await;
    assert_eq!(page["entry"].as_array().unwrap().len(), 2);
    assert_eq!(page["entry"][0]["resource"]["id"], ids[4].as_str());
    let mut seen = Vec::new();
    let mut next = Some(server.url("Patient/_history?_count=2"));
    while let Some(url) = next {
        let page = body(server.client.get(&url).send().await.unwrap()).await;
        for entry in page["entry"].as_array().into_iter().flatten() {
            seen.push(entry["resource"]["id"].as_str().unwrap().to_string());
        }
        next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);

    let system = body(server.get("_history").await).await;
    let written_here = system["entry"].as_array().unwrap().iter().filter(|e| e["resource"]["resourceType"] != "Basic");
    assert_eq!(written_here.count(), 6, "and the built-in SubscriptionTopics, stored at start-up");
    assert_eq!(system["entry"][0]["resource"]["resourceType"], "Observation");

    let since = body(server.get(&format!("Patient/_history?_since={}", urlencode(&between))).await).await;
    let since_ids: Vec<&str> =
        since["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert_eq!(since_ids, vec![ids[4].as_str(), ids[3].as_str(), ids[2].as_str()]);
    assert_eq!(server.get("Patient/nope/_history").await.status(), 404);
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn minimal_search(db: Db) {
    let server = TestServer::start(db).await;
    let anna = server.create(&patient("Ångström", "S1")).await;
    let bob = server
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Baker", "given": ["Bob"]}], "gender": "male",
        "identifier": [{"system": "http://other.example/id", "value": "S1"}]}))
        .await;
    let obs = server.create(&json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]}, "subject": {"reference": format!("Patient/{anna}")}})).await;

    assert_eq!(server.search_ids("Patient?name=angst").await, vec![anna.clone()]);
    assert_eq!(server.search_ids("Patient?family:exact=Baker").await, vec![bob.clone()]);
    assert!(server.search_ids("Patient?family:exact=baker").await.is_empty());
    assert_eq!(server.search_ids("Patient?family:contains=ak").await, vec![bob.clone()]);
    assert_eq!(server.search_ids("Patient?identifier=http://hospital.example/mrn|S1").await, vec![anna.clone()]);
    let mut both = vec![anna.clone(), bob.clone()];
    both.sort();
    assert_eq!(server.search_ids("Patient?identifier=S1").await, both);
    assert_eq!(server.search_ids("Patient?gender=male,female&name=bob").await, vec![bob.clone()]);
    assert_eq!(server.search_ids(&format!("Patient?_id={anna}")).await, vec![anna.clone()]);
    assert_eq!(server.search_ids(&format!("Observation?subject=Patient/{anna}")).await, vec![obs.clone()]);
    assert_eq!(server.search_ids(&format!("Observation?patient={anna}")).await, vec![obs.clone()]);
    assert_eq!(
        server.search_ids(&format!("Observation?subject={}", server.url(&format!("Patient/{anna}")))).await,
        vec![obs.clone()]
    );
    assert_eq!(server.search_ids("Observation?code=http://loinc.org|2339-0").await, vec![obs.clone()]);
    assert!(server.search_ids("Observation?code=http://snomed.info/sct|2339-0").await.is_empty());

    // Lenient by default: unknown parameters are ignored and left out of the self link.
    let bundle = body(server.get("Patient?shoe-size=9&gender=male").await).await;
    assert_eq!(bundle["entry"].as_array().unwrap().len(), 1);
    let self_link = bundle["link"][0]["url"].as_str().unwrap();
    assert!(self_link.contains("gender=male") && !self_link.contains("shoe-size"), "{self_link}");
    let strict =
        server.request(Method::GET, "Patient?shoe-size=9").header("prefer", "handling=strict").send().await.unwrap();
    assert_eq!(strict.status(), 400);

    // _total and _count=0.
    let counted = body(server.get("Patient?_count=0").await).await;
    assert_eq!(counted["total"], 2);
    assert!(counted.get("entry").is_none());

    // POST _search gives the same as GET.
    let posted = server
        .request(Method::POST, "Patient/_search")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("family=baker")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    assert_eq!(body(posted).await["entry"][0]["resource"]["id"], bob.as_str());

    // Deleted resources are not found.
    server.delete(&format!("Patient/{bob}")).await;
    assert!(server.search_ids("Patient?family=baker").await.is_empty());
}

/// The ids of a searchset page and the URL of its link `relation`, if any.
async fn page_and_link(server: &TestServer, url: &str, relation: &str) -> (Vec<String>, Option<String>) {
    let page = body(server.client.get(url).send().await.unwrap()).await;
    let ids = page["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    let link = page["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == relation)
        .map(|l| l["url"].as_str().unwrap().to_string());
    (ids, link)
}

async fn sorted_pages_link_both_ways(db: Db) {
    let server = TestServer::start(db).await;
    let dates = ["1990-01-01", "1985-05-05", "1985-05-05", "2001-12-31", "1970-07-07", "1999-09-09", "1985-05-05"];
    for (n, date) in dates.iter().enumerate() {
        let mut resource = patient("Sorted", &format!("S{n}"));
        resource["birthDate"] = json!(date);
        server.create(&resource).await;
    }
    server.create(&json!({"resourceType": "Patient", "name": [{"family": "Sorted"}]})).await;
    let (all, _) =
        page_and_link(&server, &server.url("Patient?family=sorted&_sort=-birthdate&_count=100"), "next").await;
    assert_eq!(all.len(), 8);
    let mut forward = Vec::new();
    let mut pages = Vec::new();
    let mut next = Some(server.url("Patient?family=sorted&_sort=-birthdate&_count=3"));
    while let Some(url) = next {
        let (ids, link) = page_and_link(&server, &url, "next").await;
        forward.extend(ids.clone());
        pages.push(url);
        next = link;
    }
    assert_eq!(forward, all, "pages of a sorted search partition the full result in order");
    // From the last page, previous links lead back through the same pages.
    let mut backward: Vec<Vec<String>> = Vec::new();
    let mut previous = page_and_link(&server, pages.last().unwrap(), "previous").await.1;
    while let Some(url) = previous {
        let (ids, link) = page_and_link(&server, &url, "previous").await;
        backward.push(ids);
        previous = link;
    }
    let rebuilt: Vec<String> = backward.into_iter().rev().flatten().collect();
    assert_eq!(rebuilt, all[..6].to_vec(), "the two pages before the last one");
    assert!(page_and_link(&server, &pages[0], "previous").await.1.is_none(), "the first page has no previous page");
}

async fn search_pages_follow_next_links(db: Db) {
    let server = TestServer::start(db).await;
    let mut ids = Vec::new();
    for n in 0..7 {
        ids.push(server.create(&patient("Pager", &format!("PG{n}"))).await);
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut next = Some(server.url("Patient?family=pager&_count=3"));
    let mut pages = 0;
    while let Some(url) = next {
        let page = body(server.client.get(&url).send().await.unwrap()).await;
        pages += 1;
        seen.extend(
            page["entry"].as_array().into_iter().flatten().map(|e| e["resource"]["id"].as_str().unwrap().to_string()),
        );
        next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        if pages == 1 {
            // Data changing between pages does not shift what the next page shows.
            server.create(&patient("Other", "O")).await;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);
}

async fn transaction_rewrites_references_and_is_atomic(db: Db) {
    let server = TestServer::start(db).await;
    let existing = server.create(&patient("Existing", "E1")).await;
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a", "resource": {"resourceType": "Observation", "status": "final",
            "code": {"text": "glucose"}, "subject": {"reference": "urn:uuid:5f4b9b56-0d6e-4f0a-9d5b-0e1f2a3b4c5d"},
            "performer": [{"reference": "Patient?identifier=http://hospital.example/mrn|E1"}]},
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:5f4b9b56-0d6e-4f0a-9d5b-0e1f2a3b4c5d", "resource": patient("New", "N1"),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "id": "put-id", "gender": "male"}, "request": {"method": "PUT", "url": "Patient/put-id"}},
        {"request": {"method": "GET", "url": "Patient?identifier=N1"}},
        {"resource": patient("Again", "E1"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://hospital.example/mrn|E1"}},
    ]});
    let response = server.post("", &transaction).await;
    assert_eq!(response.status(), 200);
    let result = body(response).await;
    assert_eq!(result["type"], "transaction-response");
    let statuses: Vec<&str> =
        result["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["201 Created", "201 Created", "201 Created", "200 OK", "200 OK"]);
    let new_patient = result["entry"][1]["resource"]["id"].as_str().unwrap().to_string();
    let observation = &result["entry"][0]["resource"];
    assert_eq!(observation["subject"]["reference"], format!("Patient/{new_patient}"));
    assert_eq!(observation["performer"][0]["reference"], format!("Patient/{existing}"));
    assert_eq!(result["entry"][3]["resource"]["total"].as_u64().or(Some(1)), Some(1));
    assert_eq!(
        result["entry"][3]["resource"]["entry"][0]["resource"]["id"],
        new_patient.as_str(),
        "GET runs after the POSTs"
    );
    assert_eq!(result["entry"][4]["resource"]["id"], existing.as_str());
    let stored = body(server.get(&format!("Observation/{}", observation["id"].as_str().unwrap())).await).await;
    assert_eq!(stored["subject"]["reference"], format!("Patient/{new_patient}"));

    // One bad entry: nothing of the bundle is stored.
    let before = body(server.get("_history").await).await["entry"].as_array().unwrap().len();
    let failing = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("Lost", "L1"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "id": "put-id", "gender": "invalid-code-shape", "bogus": 1}, "request": {"method": "PUT", "url": "Patient/put-id"}},
    ]});
    let response = server.post("", &failing).await;
    assert_eq!(response.status(), 400);
    let text = outcome(response).await;
    assert!(text.contains("Bundle.entry[1]"), "{text}");
    let after = body(server.get("_history").await).await["entry"].as_array().unwrap().len();
    assert_eq!(before, after);
    assert!(server.search_ids("Patient?identifier=L1").await.is_empty());

    // Processing order: a DELETE runs before a POST that would otherwise clash with it.
    let ordered = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("Replacement", "E1"), "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://hospital.example/mrn|E1"}},
        {"request": {"method": "DELETE", "url": format!("Patient/{existing}")}},
    ]});
    let result = body(server.post("", &ordered).await).await;
    assert_eq!(result["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(result["entry"][1]["response"]["status"], "204 No Content");
}

async fn batch_reports_each_entry(db: Db) {
    let server = TestServer::start(db).await;
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("Ok", "B1"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "bogus": true}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/missing"}},
        {"request": {"method": "GET", "url": "Patient?identifier=B1"}},
        {"resource": {"resourceType": "Bundle", "type": "batch"}, "request": {"method": "POST", "url": server.base}},
    ]});
    let response = server.post("", &batch).await;
    assert_eq!(response.status(), 200);
    let result = body(response).await;
    assert_eq!(result["type"], "batch-response");
    let entries = result["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    assert_eq!(entries[1]["response"]["status"], "400 Bad Request");
    assert_eq!(entries[1]["response"]["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(entries[2]["response"]["status"], "404 Not Found");
    assert_eq!(entries[3]["resource"]["entry"].as_array().unwrap().len(), 1);
    assert_eq!(entries[4]["response"]["status"], "400 Bad Request", "bundles cannot be nested");
    assert_eq!(server.search_ids("Patient?identifier=B1").await.len(), 1);
}

async fn concurrent_updates_with_if_match_have_one_winner_per_version(db: Db) {
    let server = std::sync::Arc::new(TestServer::start(db).await);
    let id = server.create(&patient("Race", "R1")).await;
    let resource = body(server.get(&format!("Patient/{id}")).await).await;

    // 50 writers all claim version 1: exactly one wins.
    let mut tasks = Vec::new();
    for n in 0..50 {
        let (server, id, mut resource) = (server.clone(), id.clone(), resource.clone());
        tasks.push(tokio::spawn(async move {
            resource["name"][0]["given"] = json!([format!("Writer{n}")]);
            server
                .send_with(Method::PUT, &format!("Patient/{id}"), &resource, &[("if-match", "W/\"1\"")])
                .await
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 412).count(), 49, "{statuses:?}");

    // 50 writers each retry until their own update lands: every version is used exactly once.
    let mut tasks = Vec::new();
    for n in 0..50 {
        let (server, id) = (server.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let current = server.get(&format!("Patient/{id}")).await;
                let version: i64 =
                    header(&current, "etag").trim_start_matches("W/\"").trim_end_matches('"').parse().unwrap();
                let mut resource = body(current).await;
                resource["name"][0]["given"] = json!([format!("Retry{n}")]);
                let response = server
                    .send_with(
                        Method::PUT,
                        &format!("Patient/{id}"),
                        &resource,
                        &[("if-match", &format!("W/\"{version}\""))],
                    )
                    .await;
                match response.status().as_u16() {
                    200 => return version + 1,
                    412 | 409 => continue,
                    other => panic!("unexpected status {other}"),
                }
            }
        }));
    }
    let mut versions = Vec::new();
    for task in tasks {
        versions.push(task.await.unwrap());
    }
    versions.sort();
    assert_eq!(versions, (3..=52).collect::<Vec<i64>>());
    let history = body(server.get(&format!("Patient/{id}/_history?_count=100")).await).await;
    let listed: Vec<i64> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["meta"]["versionId"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(listed, (1..=52).rev().collect::<Vec<i64>>());
}

async fn concurrent_creates_of_one_new_id_all_land(db: Db) {
    let server = std::sync::Arc::new(TestServer::start(db).await);
    let mut tasks = Vec::new();
    for n in 0..20 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut resource = patient(&format!("Racer{n}"), "RC");
            resource["id"] = json!("shared-new-id");
            server.put("Patient/shared-new-id", &resource).await.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 19, "{statuses:?}");
    let current = server.get("Patient/shared-new-id").await;
    assert_eq!(header(&current, "etag"), "W/\"20\"");
}

/// Concurrent transactions share SQLite commits (a group commit): one that fails after its
/// writes reached the database must take only its own writes back, and the others must land.
async fn concurrent_transactions_fail_or_land_on_their_own(db: Db) {
    let server = std::sync::Arc::new(TestServer::start(db).await);
    let landing = |n: usize| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:0d3c6f7e-0000-4000-8000-000000000001", "resource": patient("Lands", &format!("L{n}")),
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
                "subject": {"reference": "urn:uuid:0d3c6f7e-0000-4000-8000-000000000001"}},
             "request": {"method": "POST", "url": "Observation"}},
        ]})
    };
    // The search entry flushes the new patient into the database before the last entry fails.
    let failing = |n: usize| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient("Fails", &format!("F{n}")), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": format!("Patient?identifier=F{n}")}},
            {"request": {"method": "GET", "url": "Patient/no-such-patient"}},
        ]})
    };
    let mut tasks = Vec::new();
    for n in 0..40 {
        let (server, bundle) = (server.clone(), if n % 2 == 0 { landing(n) } else { failing(n) });
        tasks.push(tokio::spawn(async move { server.post("", &bundle).await.status().as_u16() }));
    }
    for (n, task) in tasks.into_iter().enumerate() {
        let expected = if n % 2 == 0 { 200 } else { 404 };
        assert_eq!(task.await.unwrap(), expected, "transaction {n}");
    }
    for n in 0..40 {
        let (mrn, stored) = if n % 2 == 0 { (format!("L{n}"), 1) } else { (format!("F{n}"), 0) };
        let found = server.search_ids(&format!("Patient?identifier={mrn}")).await;
        assert_eq!(found.len(), stored, "patients with identifier {mrn}");
        if let [id] = found.as_slice() {
            assert_eq!(server.search_ids(&format!("Observation?subject=Patient/{id}")).await.len(), 1);
        }
    }
}

async fn stored_bytes_are_served_unchanged(db: Db) {
    let server = TestServer::start(db).await;
    let observation = r#"{"resourceType":"Observation","status":"final","code":{"text":"weight"},"valueQuantity":{"value":185.50,"unit":"lbs"}}"#;
    let created = server
        .request(Method::POST, "Observation")
        .header("content-type", "application/fhir+json")
        .body(observation)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(created.contains("\"value\":185.50"), "decimal precision is kept: {created}");
    let id = serde_json::from_str::<Value>(&created).unwrap()["id"].as_str().unwrap().to_string();
    let read = server.get(&format!("Observation/{id}")).await.text().await.unwrap();
    assert_eq!(read, created);
}

/// A batch (as Synthea exports them) whose entries refer to each other by `urn:uuid:`: each
/// referrer runs after what it refers to and gets its new id; a reference to no entry, or to an
/// entry that failed, fails that entry alone; nothing is stored with a `urn:` reference.
async fn batch_resolves_references_between_entries(db: Db) {
    let server = TestServer::start(db).await;
    let (p, e, bad) = (
        "urn:uuid:11111111-0000-4000-8000-000000000001",
        "urn:uuid:11111111-0000-4000-8000-000000000002",
        "urn:uuid:11111111-0000-4000-8000-00000000dead",
    );
    let observation = |subject: &str, encounter: &str| {
        json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "weight"}, "subject": {"reference": subject}, "encounter": {"reference": encounter}})
    };
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"fullUrl": "urn:uuid:11111111-0000-4000-8000-000000000003", "resource": observation(p, e), "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": e, "resource": {"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": p}}, "request": {"method": "POST", "url": "Encounter"}},
        {"fullUrl": p, "resource": patient("Synthea", "S1"), "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:11111111-0000-4000-8000-000000000004", "resource": observation(p, bad), "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:11111111-0000-4000-8000-000000000005", "resource": {"resourceType": "Patient", "bogus": true}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": observation("urn:uuid:11111111-0000-4000-8000-000000000005", e), "request": {"method": "POST", "url": "Observation"}},
    ]});
    let response = server.post("", &batch).await;
    assert_eq!(response.status(), 200);
    let result = body(response).await;
    let statuses: Vec<&str> =
        result["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        ["201 Created", "201 Created", "201 Created", "400 Bad Request", "400 Bad Request", "400 Bad Request"]
    );
    let patient_id = server.search_ids("Patient?identifier=S1").await.pop().unwrap();
    let stored = body(server.get("Observation?code:text=weight").await).await;
    let stored = &stored["entry"].as_array().unwrap();
    assert_eq!(stored.len(), 1, "only the observation whose references resolved");
    assert_eq!(stored[0]["resource"]["subject"]["reference"], format!("Patient/{patient_id}"));
    assert!(stored[0]["resource"]["encounter"]["reference"].as_str().unwrap().starts_with("Encounter/"));
    let refused = result["entry"][3]["response"]["outcome"]["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(refused.contains(bad), "{refused}");
}

/// Values longer than an index keeps are stored whole and found by their beginning (a B-tree
/// entry of PostgreSQL holds about 2.7 kB); a string beyond the 1 MB FHIR allows is refused.
async fn large_values_are_stored_and_found_by_their_beginning(db: Db) {
    let server = TestServer::start(db).await;
    let family = format!("Longfamily{}", "x".repeat(900 * 1024));
    let system = format!("urn:example:{}", "s".repeat(4000));
    let resource = json!({"resourceType": "Patient", "name": [{"family": family}],
        "identifier": [{"system": system, "value": "v".repeat(5000)}]});
    let response = server.post("Patient", &resource).await;
    assert_eq!(response.status(), 201);
    let id = body(response).await["id"].as_str().unwrap().to_string();
    assert_eq!(server.search_ids("Patient?name=longfamilyxxx").await, vec![id.clone()]);
    let by_identifier = format!("Patient?identifier={system}|{}", "v".repeat(5000));
    assert_eq!(server.search_ids(&by_identifier).await, vec![id.clone()]);
    let stored = body(server.get(&format!("Patient/{id}")).await).await;
    assert_eq!(stored["name"][0]["family"].as_str().unwrap().len(), family.len(), "stored whole");
    let huge = json!({"resourceType": "Patient", "name": [{"family": "y".repeat(2 * 1024 * 1024)}]});
    assert_eq!(server.post("Patient", &huge).await.status(), 400);
}

/// `application/merge-patch+json` (RFC 7386): members set, `null` removes, the result validated
/// like any write.
async fn merge_patch_sets_and_removes_members(db: Db) {
    let server = TestServer::start(db).await;
    let id = server
        .create(&json!({"resourceType": "Patient", "gender": "female", "birthDate": "1990-01-01", "name": [{"family": "Merge"}]}))
        .await;
    let merge = |patch: Value| {
        let (server, path) = (&server, format!("Patient/{id}"));
        async move {
            let request = server.request(Method::PATCH, &path).header("content-type", "application/merge-patch+json");
            request.body(patch.to_string()).send().await.unwrap()
        }
    };
    let response = merge(json!({"gender": "male", "birthDate": null, "active": true})).await;
    assert_eq!(response.status(), 200);
    let patched = body(server.get(&format!("Patient/{id}")).await).await;
    assert_eq!((patched["gender"].as_str(), patched["active"].as_bool()), (Some("male"), Some(true)));
    assert!(patched.get("birthDate").is_none());
    assert_eq!(patched["name"][0]["family"], "Merge");
    assert_eq!(patched["meta"]["versionId"], "2");
    assert_eq!(merge(json!({"birthDate": "2023-02-30"})).await.status(), 422, "the result is validated");
    assert_eq!(merge(json!(["not", "an", "object"])).await.status(), 400);
    let unchanged = body(server.get(&format!("Patient/{id}")).await).await;
    assert_eq!(unchanged["meta"]["versionId"], "2", "nothing refused was stored");
}

on_both_databases!(
    metadata_lists_what_is_implemented,
    create_read_update_delete_and_history,
    update_as_create_uses_the_client_id,
    version_preconditions,
    prefer_return,
    conditional_create_update_delete,
    json_patch_and_fhirpath_patch,
    merge_patch_sets_and_removes_members,
    xml_and_pretty_formats,
    history_paging_and_since,
    minimal_search,
    search_pages_follow_next_links,
    sorted_pages_link_both_ways,
    transaction_rewrites_references_and_is_atomic,
    batch_reports_each_entry,
    batch_resolves_references_between_entries,
    large_values_are_stored_and_found_by_their_beginning,
    concurrent_updates_with_if_match_have_one_winner_per_version,
    concurrent_creates_of_one_new_id_all_land,
    concurrent_transactions_fail_or_land_on_their_own,
    stored_bytes_are_served_unchanged,
);

/// The ETag of a read on `server`, and the family name read.
async fn version_and_family(server: &TestServer, path: &str) -> (String, String) {
    let response = server.get(path).await;
    assert_eq!(response.status(), 200, "{path}");
    let etag = header(&response, "etag");
    (etag, body(response).await["name"][0]["family"].as_str().unwrap_or_default().to_string())
}

/// Two nodes on one fresh PostgreSQL database, and the path of a patient the first created.
async fn two_nodes_with_a_patient(family: &str, mrn: &str) -> (TestServer, TestServer, String, String) {
    let first = TestServer::start(Db::Postgres).await;
    let second = first.second_node().await;
    let id = first.create(&patient(family, mrn)).await;
    let path = format!("Patient/{id}");
    (first, second, id, path)
}

/// What `server` reads at `path` once it has applied the change feed; a node that never
/// evicted a stale version keeps serving it and fails the comparison.
async fn converged_read(server: &TestServer, path: &str, expected: &(String, String)) -> (String, String) {
    common::after_the_feed(|| version_and_family(server, path), |read| read == expected).await
}

/// Two nodes on one PostgreSQL database, each caching what it reads: a write on either is
/// what the other serves, for single updates, deletes and a transaction of many resources
/// (whose announcement spans several notifications).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_serve_each_others_writes() {
    let (first, second, id, path) = two_nodes_with_a_patient("Node", "N-1").await;
    for round in 1..=20 {
        let (writer, reader) = if round % 2 == 0 { (&first, &second) } else { (&second, &first) };
        for node in [&first, &second] {
            assert_eq!(version_and_family(node, &path).await.0, format!("W/\"{round}\""), "both read and cached it");
        }
        let mut changed = patient(&format!("Node{round}"), "N-1");
        changed["id"] = json!(id);
        assert_eq!(writer.put(&path, &changed).await.status(), 200);
        let expected = (format!("W/\"{}\"", round + 1), format!("Node{round}"));
        assert_eq!(converged_read(reader, &path, &expected).await, expected, "round {round}");
    }
    assert_eq!(second.delete(&path).await.status(), 204);
    let status = common::after_the_feed(|| async { first.get(&path).await.status() }, |s| *s == 410).await;
    assert_eq!(status, 410);

    let many = |family: &str| {
        let entries: Vec<Value> = (0..400)
            .map(|n| {
                let mut resource = patient(family, &format!("M-{n}"));
                resource["id"] = json!(format!("many-{n}"));
                json!({"resource": resource, "request": {"method": "PUT", "url": format!("Patient/many-{n}")}})
            })
            .collect();
        json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    };
    assert_eq!(first.post("", &many("Before")).await.status(), 200);
    for n in 0..400 {
        assert_eq!(version_and_family(&second, &format!("Patient/many-{n}")).await.1, "Before");
    }
    assert_eq!(first.post("", &many("After")).await.status(), 200);
    let expected = ("W/\"2\"".to_string(), "After".to_string());
    for n in 0..400 {
        let path = format!("Patient/many-{n}");
        assert_eq!(converged_read(&second, &path, &expected).await, expected, "{path}");
    }
}

/// When a node's change feed drops, it stops serving from its cache (it could miss writes
/// meanwhile), and serves correctly again once the feed is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_change_feed_turns_the_cache_off() {
    use sqlx::Connection;
    let (first, second, id, path) = two_nodes_with_a_patient("Feed", "F-1").await;
    assert_eq!(version_and_family(&second, &path).await.0, "W/\"1\"");
    let mut admin = sqlx::PgConnection::connect(&first.database_url).await.unwrap();
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(hearth::store::feed::APPLICATION_NAME)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert_eq!(terminated, vec![true, true], "each node listens on one connection");
    // Let the nodes notice; they reconnect after a second.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut changed = patient("Unannounced", "F-1");
    changed["id"] = json!(id);
    assert_eq!(first.put(&path, &changed).await.status(), 200);
    assert_eq!(version_and_family(&second, &path).await, ("W/\"2\"".to_string(), "Unannounced".to_string()));
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(version_and_family(&second, &path).await.0, "W/\"2\"", "the reconnected cache starts empty");
    changed["name"][0]["family"] = json!("Announced");
    assert_eq!(first.put(&path, &changed).await.status(), 200);
    let expected = ("W/\"3\"".to_string(), "Announced".to_string());
    assert_eq!(converged_read(&second, &path, &expected).await, expected, "the feed is back");
}

/// SQLite's write-ahead log is copied into the database file in the background: a few writes,
/// far below the size at which the writer would checkpoint itself, reach the file within a
/// second or so, and the server still reads them back after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_checkpoints_in_the_background() {
    let server = TestServer::start(Db::Sqlite).await;
    let path = server.database_url.strip_prefix("sqlite://").expect("a SQLite database").to_string();
    let file_size = || std::fs::metadata(&path).expect("the database file").len();
    let before = file_size();
    let mut ids = Vec::new();
    for n in 0..40 {
        let created = server.post("Patient", &patient("Checkpoint", &format!("C-{n}"))).await;
        assert_eq!(created.status(), 201);
        let location = created.headers()["location"].to_str().unwrap().to_string();
        ids.push(location.split("/Patient/").nth(1).unwrap().split('/').next().unwrap().to_string());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while file_size() <= before {
        assert!(std::time::Instant::now() < deadline, "the database file stayed at {before} bytes");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let server = server.restart().await;
    for id in &ids {
        assert_eq!(server.get(&format!("Patient/{id}")).await.status(), 200, "{id}");
    }
}
