//! Bulk Data export (`$export`, Bulk Data Access IG 2.0) end to end through HTTP, on both
//! databases: kick-off, status, manifest, files, `_since` with deletions, cancellation,
//! the levels and parameters, bad input, resuming a job another node left, and the client's
//! access.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::smart::{smart_server_with, Smart};
use common::{body, outcome, Db, TestServer};
use reqwest::{Method, Response};
use serde_json::{json, Value};

/// The headers the IG has a client send with a kick-off.
const KICK_OFF: [(&str, &str); 2] = [("accept", "application/fhir+json"), ("prefer", "respond-async")];

/// A finished export: its manifest, and each output file's lines by type.
struct Finished {
    manifest: Value,
    expires: Option<String>,
}

/// Starts an export at `path` (a GET with `query`), asserting 202 and an absolute status URL.
async fn kick_off(server: &TestServer, path: &str, token: Option<&str>) -> String {
    let response = send(server, Method::GET, &server.url(path), token, None).await;
    assert_eq!(response.status(), 202, "{path}: {}", response.text().await.unwrap_or_default());
    let status = response.headers()["content-location"].to_str().unwrap().to_string();
    assert!(status.starts_with(&server.url("_jobs/")), "{status}");
    status
}

async fn send(server: &TestServer, method: Method, url: &str, token: Option<&str>, body: Option<&Value>) -> Response {
    let mut request = server.client.request(method, url);
    for (name, value) in KICK_OFF {
        request = request.header(name, value);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/fhir+json").body(body.to_string());
    }
    request.send().await.expect("request")
}

/// Polls a status URL as a client should (waiting as `Retry-After` says, at most 1 s) until
/// the export is done.
async fn finished(server: &TestServer, status: &str, token: Option<&str>) -> Finished {
    for _ in 0..120 {
        let response = send(server, Method::GET, status, token, None).await;
        match response.status().as_u16() {
            202 => {
                assert!(response.headers()["x-progress"].to_str().unwrap().len() < 100);
                let wait: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                tokio::time::sleep(Duration::from_millis(wait.min(1) * 600)).await;
            }
            200 => {
                assert_eq!(response.headers()["content-type"], "application/json");
                let expires = response.headers().get("expires").map(|v| v.to_str().unwrap().to_string());
                return Finished { manifest: body(response).await, expires };
            }
            other => panic!("export status {other}: {}", response.text().await.unwrap_or_default()),
        }
    }
    panic!("the export did not finish");
}

/// The lines of every file of a manifest list, by `type`, checking each file's count and
/// media type.
async fn lines_of(
    server: &TestServer,
    manifest: &Value,
    list: &str,
    token: Option<&str>,
) -> BTreeMap<String, Vec<Value>> {
    let mut lines: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for file in manifest[list].as_array().unwrap() {
        let mut request = server.client.get(file["url"].as_str().unwrap()).header("accept", "application/fhir+ndjson");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{file}");
        assert_eq!(response.headers()["content-type"], "application/fhir+ndjson");
        let text = response.text().await.unwrap();
        assert!(text.ends_with('\n'), "NDJSON lines end with a newline");
        let parsed: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(parsed.len() as u64, file["count"].as_u64().unwrap(), "{file}");
        lines.entry(file["type"].as_str().unwrap().to_string()).or_default().extend(parsed);
    }
    lines
}

fn ids(resources: Option<&Vec<Value>>) -> Vec<String> {
    let mut ids: Vec<String> = resources.into_iter().flatten().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&str]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    ids.sort();
    ids
}

/// A server that queues exports and writes none (as if their node were down).
async fn without_export_workers(db: Db) -> TestServer {
    TestServer::start_with(db, |mut settings| {
        settings.export.workers = 0;
        settings
    })
    .await
}

/// `server` restarted as a node that writes exports, and `status` on its new port.
async fn restarted_with_export_workers(server: TestServer, status: &str) -> (TestServer, String) {
    let server = server
        .restart_with(|mut settings| {
            settings.export.workers = 2;
            settings
        })
        .await;
    let status = server.url(status.split("/fhir/").nth(1).unwrap());
    (server, status)
}

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family}]})
}

fn observation(patient: &str, status: &str) -> Value {
    json!({"resourceType": "Observation", "status": status, "code": {"text": "weight"},
        "subject": {"reference": format!("Patient/{patient}")}})
}

async fn a_system_export_writes_every_type_as_stored(db: Db) {
    let server = TestServer::start_with(db, |mut settings| {
        settings.export.resources_per_file = 2;
        settings
    })
    .await;
    let mut patients = Vec::new();
    for family in ["Ames", "Baker", "Cole"] {
        patients.push(server.create(&patient(family)).await);
    }
    let observation = server.create(&observation(&patients[0], "final")).await;
    let organization = server.create(&json!({"resourceType": "Organization", "name": "Clinic"})).await;

    let status = kick_off(&server, "$export", None).await;
    let Finished { manifest, expires } = finished(&server, &status, None).await;
    assert!(expires.is_some(), "a finished export says when its files go");
    assert_eq!(manifest["request"], server.url("$export"));
    assert_eq!(manifest["requiresAccessToken"], false, "this server runs without authorization");
    assert!(manifest["transactionTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(manifest["error"], json!([]));
    assert_eq!(manifest["deleted"], json!([]));
    // Three patients in files of at most two, one file per type otherwise.
    let patient_files: Vec<u64> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["type"] == "Patient")
        .map(|f| f["count"].as_u64().unwrap())
        .collect();
    assert_eq!(patient_files, vec![2, 1]);
    let lines = lines_of(&server, &manifest, "output", None).await;
    assert_eq!(ids(lines.get("Patient")), sorted(&patients.iter().map(String::as_str).collect::<Vec<_>>()));
    assert_eq!(ids(lines.get("Observation")), vec![observation.clone()]);
    assert_eq!(ids(lines.get("Organization")), vec![organization]);
    // Each line is the resource as stored and served, byte for byte.
    let file = manifest["output"].as_array().unwrap().iter().find(|f| f["type"] == "Observation").unwrap();
    let text = server.client.get(file["url"].as_str().unwrap()).send().await.unwrap().text().await.unwrap();
    let read = server.get(&format!("Observation/{observation}")).await.text().await.unwrap();
    assert_eq!(text, format!("{read}\n"));
}

async fn since_a_transaction_time_gives_the_changes_and_deletions(db: Db) {
    let server = TestServer::start(db).await;
    let kept = server.create(&patient("Kept")).await;
    let changed = server.create(&patient("Changed")).await;
    let deleted = server.create(&patient("Deleted")).await;
    let first = finished(&server, &kick_off(&server, "$export?_type=Patient", None).await, None).await.manifest;
    let transaction_time = first["transactionTime"].as_str().unwrap().to_string();

    let response = server
        .put(
            &format!("Patient/{changed}"),
            &json!({"resourceType": "Patient", "id": changed,
        "name": [{"family": "Changed", "given": ["Now"]}]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert!(server.delete(&format!("Patient/{deleted}")).await.status().is_success());
    let added = server.create(&patient("Added")).await;

    let since = url::form_urlencoded::byte_serialize(transaction_time.as_bytes()).collect::<String>();
    let path = format!("$export?_type=Patient&_since={since}");
    let second = finished(&server, &kick_off(&server, &path, None).await, None).await.manifest;
    let output = lines_of(&server, &second, "output", None).await;
    assert_eq!(ids(output.get("Patient")), sorted(&[&changed, &added]), "only what changed since");
    assert!(!ids(output.get("Patient")).contains(&kept));
    let deletions = lines_of(&server, &second, "deleted", None).await;
    let bundles = deletions.get("Bundle").expect("the deletion is listed as a Bundle");
    assert_eq!(bundles.len(), 1);
    assert_eq!(bundles[0]["type"], "transaction");
    assert_eq!(bundles[0]["entry"][0]["request"], json!({"method": "DELETE", "url": format!("Patient/{deleted}")}));

    // An instant that is no transactionTime: resources last updated after it.
    let before_added = server.get(&format!("Patient/{added}")).await;
    let added_at = body(before_added).await["meta"]["lastUpdated"].as_str().unwrap().to_string();
    let at = time::OffsetDateTime::parse(&added_at, &time::format_description::well_known::Rfc3339).unwrap()
        - time::Duration::milliseconds(1);
    let since = at.format(&time::format_description::well_known::Rfc3339).unwrap();
    // A `+00:00` offset with its `+` unescaped, as some clients send it.
    let since = since.replace('Z', "+00:00");
    let third =
        finished(&server, &kick_off(&server, &format!("$export?_type=Patient&_since={since}"), None).await, None)
            .await
            .manifest;
    assert_eq!(ids(lines_of(&server, &third, "output", None).await.get("Patient")), vec![added]);
}

async fn filters_elements_and_formats_shape_the_output(db: Db) {
    let server = TestServer::start(db).await;
    let subject = server.create(&patient("Filter")).await;
    let final_one = server.create(&observation(&subject, "final")).await;
    let amended = server.create(&observation(&subject, "amended")).await;
    let _preliminary = server.create(&observation(&subject, "preliminary")).await;

    // Two queries of one type: a resource matching either is exported once.
    let filter = "Observation%3Fstatus%3Dfinal,Observation%3Fstatus%3Dfinal%2Camended";
    let path = format!("$export?_type=Observation&_typeFilter={filter}&_outputFormat=application/fhir%2Bndjson");
    let manifest = finished(&server, &kick_off(&server, &path, None).await, None).await.manifest;
    let lines = lines_of(&server, &manifest, "output", None).await;
    assert_eq!(ids(lines.get("Observation")), sorted(&[&final_one, &amended]));

    let path = "$export?_type=Observation,Patient&_elements=Observation.status,id&_outputFormat=ndjson";
    let manifest = finished(&server, &kick_off(&server, path, None).await, None).await.manifest;
    let lines = lines_of(&server, &manifest, "output", None).await;
    let trimmed = &lines["Observation"][0];
    assert!(trimmed.get("status").is_some() && trimmed.get("code").is_none(), "{trimmed}");
    assert!(trimmed["meta"]["tag"].as_array().unwrap().iter().any(|t| t["code"] == "SUBSETTED"));
    let patient_line = &lines["Patient"][0];
    assert!(patient_line.get("name").is_none(), "bare entries apply to every type: {patient_line}");
}

async fn patient_and_group_exports_cover_their_patients(db: Db) {
    let server = TestServer::start(db).await;
    let (a, b, c) =
        (server.create(&patient("A")).await, server.create(&patient("B")).await, server.create(&patient("C")).await);
    let mut observations = BTreeMap::new();
    for p in [&a, &b, &c] {
        observations.insert(p.clone(), server.create(&observation(p, "final")).await);
    }
    let _organization = server.create(&json!({"resourceType": "Organization", "name": "Not a patient's"})).await;
    let inner = server
        .create(&json!({"resourceType": "Group", "type": "person", "actual": true,
            "member": [{"entity": {"reference": format!("Patient/{b}")}}]}))
        .await;
    let group = server
        .create(&json!({"resourceType": "Group", "type": "person", "actual": true, "member": [
            {"entity": {"reference": format!("Patient/{a}")}}, {"entity": {"reference": format!("Group/{inner}")}}]}))
        .await;

    let manifest = finished(&server, &kick_off(&server, "Patient/$export", None).await, None).await.manifest;
    let lines = lines_of(&server, &manifest, "output", None).await;
    assert_eq!(ids(lines.get("Patient")), sorted(&[&a, &b, &c]));
    assert_eq!(ids(lines.get("Observation")).len(), 3);
    assert!(!lines.contains_key("Organization"), "a Patient export is the patients' compartments");

    let path = format!("Group/{group}/$export?_type=Patient,Observation");
    let manifest = finished(&server, &kick_off(&server, &path, None).await, None).await.manifest;
    let lines = lines_of(&server, &manifest, "output", None).await;
    assert_eq!(ids(lines.get("Patient")), sorted(&[&a, &b]), "members, and members of a member Group");
    assert_eq!(ids(lines.get("Observation")), sorted(&[&observations[&a], &observations[&b]]));

    // `patient` (POST): only those of the Group's members.
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": format!("Patient/{b}")}},
        {"name": "_type", "valueString": "Observation"}]});
    let url = server.url(&format!("Group/{group}/$export"));
    let response = send(&server, Method::POST, &url, None, Some(&parameters)).await;
    assert_eq!(response.status(), 202);
    let status = response.headers()["content-location"].to_str().unwrap().to_string();
    let manifest = finished(&server, &status, None).await.manifest;
    assert_eq!(manifest["request"], url, "a POST's request is its URL without the parameters");
    let lines = lines_of(&server, &manifest, "output", None).await;
    assert_eq!(ids(lines.get("Observation")), vec![observations[&b].clone()]);
    let outsider = json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": format!("Patient/{c}")}}]});
    let response = send(&server, Method::POST, &url, None, Some(&outsider)).await;
    assert_eq!(response.status(), 400);
    assert!(outcome(response).await.contains("not a member"));
}

async fn bad_input_is_refused_before_any_job(db: Db) {
    let server = TestServer::start(db).await;
    let devices = server.create(&json!({"resourceType": "Group", "type": "device", "actual": true})).await;
    let cases = [
        ("$export?_type=Patient,Nonsense", 400, "not a FHIR R4 resource type"),
        (
            "$export?_type=Observation&_typeFilter=Observation%3Fstatus%3Dfinal%26_include%3DObservation%3Asubject",
            400,
            "_include",
        ),
        ("$export?_type=Observation&_typeFilter=Observation%3Fnonsense%3D1", 400, "_typeFilter"),
        ("$export?_type=Patient&_typeFilter=Observation%3Fstatus%3Dfinal", 400, "not exported"),
        ("$export?_since=2999-01-01T00:00:00Z", 400, "future"),
        ("$export?_since=yesterday", 400, "_since"),
        ("$export?_outputFormat=text/csv", 400, "_outputFormat"),
        ("$export?_elements=Nonsense.name", 400, "_elements"),
        ("$export?colour=red", 400, "colour"),
        ("Patient/$export?_type=Organization", 400, "Patient compartment"),
        ("Patient/$export?patient=Patient/x", 400, "POST"),
        ("Group/nowhere/$export", 404, "not known"),
    ];
    for (path, status, says) in cases {
        let response = send(&server, Method::GET, &server.url(path), None, None).await;
        assert_eq!(response.status(), status, "{path}");
        let text = outcome(response).await;
        assert!(text.contains(says), "{path}: {text}");
    }
    let response = send(&server, Method::GET, &server.url(&format!("Group/{devices}/$export")), None, None).await;
    assert_eq!(response.status(), 400);
    assert!(outcome(response).await.contains("group of device"));
    // No job was queued by any of them.
    assert_eq!(server.get("_jobs/1").await.status(), 404);

    // Leniently, what is not supported is ignored and said in the error file.
    let url = server.url("$export?_type=Patient,Nonsense&colour=red");
    let response = server.client.get(&url).header("prefer", "respond-async, handling=lenient").send().await.unwrap();
    assert_eq!(response.status(), 202);
    let status = response.headers()["content-location"].to_str().unwrap().to_string();
    let manifest = finished(&server, &status, None).await.manifest;
    let errors = lines_of(&server, &manifest, "error", None).await;
    let said: Vec<String> =
        errors["OperationOutcome"].iter().map(|o| o["issue"][0]["diagnostics"].as_str().unwrap().to_string()).collect();
    assert!(said.iter().any(|s| s.contains("colour")) && said.iter().any(|s| s.contains("Nonsense")), "{said:?}");
}

async fn cancelling_removes_the_export_and_its_files(db: Db) {
    let server = TestServer::start(db).await;
    server.create(&patient("Cancel")).await;
    let status = kick_off(&server, "$export?_type=Patient", None).await;
    let manifest = finished(&server, &status, None).await.manifest;
    let file = manifest["output"][0]["url"].as_str().unwrap().to_string();
    assert_eq!(server.client.get(&file).send().await.unwrap().status(), 200);

    let response = send(&server, Method::DELETE, &status, None, None).await;
    assert_eq!(response.status(), 202);
    let response = send(&server, Method::GET, &status, None, None).await;
    assert_eq!(response.status(), 404, "a deleted export's status is gone");
    assert_eq!(body(response).await["resourceType"], "OperationOutcome");
    assert_eq!(server.client.get(&file).send().await.unwrap().status(), 404, "and so are its files");
    assert_eq!(send(&server, Method::DELETE, &status, None, None).await.status(), 404);
    let names = ["Patient-1.ndjson", "../hearth.db", "Patient-1.ndjson.part"];
    for name in names {
        let response = server.client.get(format!("{status}/{name}")).send().await.unwrap();
        assert_eq!(response.status(), 404, "{name}");
    }
}

async fn expired_exports_are_removed(db: Db) {
    let server = TestServer::start_with(db, |mut settings| {
        settings.export.ttl = time::Duration::milliseconds(300);
        settings
    })
    .await;
    server.create(&patient("Expiring")).await;
    let status = kick_off(&server, "$export?_type=Patient", None).await;
    let manifest = finished(&server, &status, None).await.manifest;
    let file = manifest["output"][0]["url"].as_str().unwrap().to_string();
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if send(&server, Method::GET, &status, None, None).await.status() == 404 {
            gone = true;
            break;
        }
    }
    assert!(gone, "the export expired");
    assert_eq!(server.client.get(&file).send().await.unwrap().status(), 404);
}

/// A job whose node died after it recorded part of its work is taken over where it stopped:
/// a server that writes no exports queues it, "another node" claims it, records that the
/// first type is done and dies (its lease runs out); a restarted server carries on from the
/// second type.
async fn a_job_left_by_a_dead_node_resumes_where_it_stopped(db: Db) {
    let server = without_export_workers(db).await;
    let patient_id = server.create(&patient("Resumed")).await;
    let observation_id = server.create(&observation(&patient_id, "final")).await;
    let status = kick_off(&server, "$export?_type=Observation,Patient", None).await;
    let response = send(&server, Method::GET, &status, None, None).await;
    assert_eq!(response.status(), 202, "nobody writes exports on this node");

    let store = hearth::store::open_shared(&server.database_url).await.unwrap();
    let lapsed = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let job = store.claim_job("dead-node", lapsed, hearth::store::JobKinds::Only("export")).await.unwrap().unwrap();
    let progress = json!({"files": [], "position": {"typeIndex": 1, "stage": "resources", "filter": 0}}).to_string();
    let step = hearth::store::JobStep {
        id: job.id,
        owner: "dead-node",
        progress: &progress,
        processed: 0,
        lease_until: lapsed,
    };
    let mut tx = store.begin().await.unwrap();
    assert!(tx.job_step(&step).await.unwrap());
    tx.commit().await.unwrap();
    drop(store);

    let (server, status) = restarted_with_export_workers(server, &status).await;
    let manifest = finished(&server, &status, None).await.manifest;
    let lines = lines_of(&server, &manifest, "output", None).await;
    assert_eq!(ids(lines.get("Patient")), vec![patient_id]);
    assert!(!lines.contains_key("Observation"), "the recorded first type is not written again: {observation_id}");
}

/// Writes that commit after the kick-off are not in the export (it shows what its
/// `transactionTime` saw: a resource changed since as it was, a resource deleted since still
/// there), and are all in the next export `_since` it.
async fn an_export_is_the_snapshot_of_its_kick_off(db: Db) {
    let server = without_export_workers(db).await;
    let changed = server.create(&patient("Before")).await;
    let deleted = server.create(&patient("Deleted later")).await;
    let status = kick_off(&server, "$export?_type=Patient", None).await;
    // Committed after the mark, before the export is written.
    let update = json!({"resourceType": "Patient", "id": changed, "name": [{"family": "After"}]});
    assert_eq!(server.put(&format!("Patient/{changed}"), &update).await.status(), 200);
    assert!(server.delete(&format!("Patient/{deleted}")).await.status().is_success());
    let added = server.create(&patient("Added later")).await;

    let (server, status) = restarted_with_export_workers(server, &status).await;
    let manifest = finished(&server, &status, None).await.manifest;
    let lines = lines_of(&server, &manifest, "output", None).await;
    let patients = &lines["Patient"];
    assert_eq!(ids(Some(patients)), sorted(&[&changed, &deleted]), "as the kick-off saw them");
    let shown = patients.iter().find(|p| p["id"] == changed.as_str()).unwrap();
    assert_eq!(shown["name"][0]["family"], "Before");
    assert_eq!(shown["meta"]["versionId"], "1");

    let since = url::form_urlencoded::byte_serialize(manifest["transactionTime"].as_str().unwrap().as_bytes())
        .collect::<String>();
    let next = kick_off(&server, &format!("$export?_type=Patient&_since={since}"), None).await;
    let next = finished(&server, &next, None).await.manifest;
    let lines = lines_of(&server, &next, "output", None).await;
    assert_eq!(ids(lines.get("Patient")), sorted(&[&changed, &added]));
    let shown = lines["Patient"].iter().find(|p| p["id"] == changed.as_str()).unwrap();
    assert_eq!(shown["name"][0]["family"], "After");
    let deletions = lines_of(&server, &next, "deleted", None).await;
    assert_eq!(deletions["Bundle"][0]["entry"][0]["request"]["url"], format!("Patient/{deleted}"));
}

/// A Subscription's channel headers (its receiver's secret) are hidden in an export, whether
/// the row is as the kick-off saw it or is read from history because it changed since.
async fn subscription_secrets_stay_hidden(db: Db) {
    const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
    let server = without_export_workers(db).await;
    let receiver = common::receiver::Receiver::start().await;
    let subscription = json!({"resourceType": "Subscription",
        "meta": {"profile": [format!("{BACKPORT}backport-subscription")]},
        "status": "requested", "reason": "as exported",
        "criteria": "http://hearth.dev/fhir/SubscriptionTopic/result-final",
        "channel": {"type": "rest-hook", "endpoint": receiver.url, "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": format!("{BACKPORT}backport-payload-content"), "valueCode": "id-only"}]},
            "header": ["Authorization: Bearer receiver-secret"]}});
    let id = server.create(&subscription).await;
    let status = kick_off(&server, "$export?_type=Subscription", None).await;
    let mut changed = body(server.get(&format!("Subscription/{id}")).await).await;
    changed["reason"] = json!("changed after the kick-off");
    changed["status"] = json!("requested");
    assert_eq!(server.put(&format!("Subscription/{id}"), &changed).await.status(), 200);

    let (server, status) = restarted_with_export_workers(server, &status).await;
    let manifest = finished(&server, &status, None).await.manifest;
    let file = manifest["output"][0]["url"].as_str().unwrap();
    let text = server.client.get(file).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("receiver-secret"), "{text}");
    let exported: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(exported["reason"], "as exported", "the version the kick-off saw");
    assert_eq!(exported["channel"]["header"], json!(["Authorization: ******"]));
    // A later export reads the current row as it is, hidden as well.
    let again = finished(&server, &kick_off(&server, "$export?_type=Subscription", None).await, None).await.manifest;
    let file = again["output"][0]["url"].as_str().unwrap();
    let text = server.client.get(file).send().await.unwrap().text().await.unwrap();
    assert!(!text.contains("receiver-secret") && text.contains("changed after the kick-off"), "{text}");
}

/// Two nodes of one PostgreSQL database sharing the export directory: one that writes no
/// exports takes the kick-off and answers the status and the files; the other writes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_an_export() {
    let first = without_export_workers(Db::Postgres).await;
    let patient_id = first.create(&patient("Shared")).await;
    let second = first
        .second_node_with(|mut settings| {
            settings.export.workers = 1;
            settings
        })
        .await;
    let status = kick_off(&first, "$export?_type=Patient", None).await;
    let manifest = finished(&first, &status, None).await.manifest;
    let lines = lines_of(&first, &manifest, "output", None).await;
    assert_eq!(ids(lines.get("Patient")), vec![patient_id]);
    drop(second);
}

async fn exports_are_the_clients_own_and_within_its_scopes(db: Db) {
    let server = smart_server_with(db, |mut settings| {
        settings.export.max_running = 1;
        settings
    })
    .await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let mine = smart.create(&admin, &patient("Mine")).await;
    let theirs = smart.create(&admin, &patient("Theirs")).await;
    smart.create(&admin, &observation(&mine, "final")).await;
    smart.create(&admin, &observation(&theirs, "final")).await;

    smart.add_secret_client("nightly", "nightly-secret").await;
    let nightly = smart.system_token("nightly", "nightly-secret", "system/Patient.rs").await;
    let status = kick_off(&server, "$export", Some(&nightly)).await;
    let manifest = finished(&server, &status, Some(&nightly)).await.manifest;
    assert_eq!(manifest["requiresAccessToken"], true);
    let lines = lines_of(&server, &manifest, "output", Some(&nightly)).await;
    assert_eq!(lines.keys().collect::<Vec<_>>(), vec!["Patient"], "only the types its scopes read");
    let file = manifest["output"][0]["url"].as_str().unwrap();

    // Another client learns nothing of it, nor reads its files; no token reads nothing.
    let other = smart.system_token("admin", "admin-secret", "system/*.rs").await;
    assert_eq!(send(&server, Method::GET, &status, Some(&other), None).await.status(), 404);
    assert_eq!(server.client.get(file).bearer_auth(&other).send().await.unwrap().status(), 404);
    assert_eq!(server.client.get(file).send().await.unwrap().status(), 401);
    assert_eq!(send(&server, Method::DELETE, &status, Some(&other), None).await.status(), 404);

    // A type its scopes do not read is refused when named.
    let response = send(&server, Method::GET, &server.url("$export?_type=Observation"), Some(&nightly), None).await;
    assert_eq!(response.status(), 403);

    // A patient's token exports its own compartment only.
    let patient_token = smart.user_token("mine", &format!("Patient/{mine}"), &[], "launch/patient patient/*.rs").await;
    let status = kick_off(&server, "Patient/$export", Some(&patient_token)).await;
    let manifest = finished(&server, &status, Some(&patient_token)).await.manifest;
    let lines = lines_of(&server, &manifest, "output", Some(&patient_token)).await;
    assert_eq!(ids(lines.get("Patient")), vec![mine.clone()]);
    assert_eq!(lines["Observation"].len(), 1);
    assert_eq!(lines["Observation"][0]["subject"]["reference"], format!("Patient/{mine}"));
    // Another user of the same app learns nothing of it.
    let their_token =
        smart.user_token("theirs", &format!("Patient/{theirs}"), &[], "launch/patient patient/*.rs").await;
    assert_eq!(send(&server, Method::GET, &status, Some(&their_token), None).await.status(), 404);
    let file = manifest["output"][0]["url"].as_str().unwrap();
    assert_eq!(server.client.get(file).bearer_auth(&their_token).send().await.unwrap().status(), 404);

    // As many running as it may: the next is refused with Retry-After.
    let store = hearth::store::open_shared(&server.database_url).await.unwrap();
    let parameters = json!({"request": "held", "claims": null, "level": "system", "types": [],
        "mark": "seq:0", "transactionTime": "2026-01-01T00:00:00Z"})
    .to_string();
    let owner = hearth::export::owner_key("nightly", "nightly");
    store.enqueue_client_job("export", &parameters, &owner, 1).await.unwrap().expect("queued");
    let held = time::OffsetDateTime::now_utc() + time::Duration::minutes(5);
    store.claim_job("elsewhere", held, hearth::store::JobKinds::Only("export")).await.unwrap().expect("claimed");
    let response = send(&server, Method::GET, &server.url("$export"), Some(&nightly), None).await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
}

on_both_databases!(
    a_system_export_writes_every_type_as_stored,
    since_a_transaction_time_gives_the_changes_and_deletions,
    filters_elements_and_formats_shape_the_output,
    patient_and_group_exports_cover_their_patients,
    bad_input_is_refused_before_any_job,
    cancelling_removes_the_export_and_its_files,
    expired_exports_are_removed,
    a_job_left_by_a_dead_node_resumes_where_it_stopped,
    an_export_is_the_snapshot_of_its_kick_off,
    subscription_secrets_stay_hidden,
    exports_are_the_clients_own_and_within_its_scopes,
);
