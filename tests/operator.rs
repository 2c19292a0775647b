//! What an operator runs on: `X-Request-Id` on every response, `/metrics`, and
//! `--log-format json` (the real binary's log lines).

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::process::Process;
use common::{Db, TestServer};
use serde_json::{json, Value};

async fn request_ids_come_back_on_every_response(db: Db) {
    let server = TestServer::start(db).await;
    let client = reqwest::Client::new();
    let root = server.base.trim_end_matches("/fhir").to_string();
    let id_of = |response: &reqwest::Response| {
        response.headers().get("x-request-id").expect("x-request-id").to_str().unwrap().to_string()
    };
    let given =
        client.get(format!("{}/metadata", server.base)).header("x-request-id", "portal-42.a:b").send().await.unwrap();
    assert_eq!(id_of(&given), "portal-42.a:b", "the client's own");
    let missing = client.get(format!("{}/Patient/nobody", server.base)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let generated = id_of(&missing);
    assert_eq!(generated.len(), 36, "one is made when none is given, on errors too: {generated}");
    let forged =
        client.get(format!("{root}/healthz")).header("x-request-id", "x\"}, {\"level\": \"ERROR").send().await.unwrap();
    let replaced = id_of(&forged);
    assert!(replaced.len() == 36 && !replaced.contains('"'), "an id that is not plain is replaced: {replaced}");
    let other = client.get(format!("{root}/metrics")).send().await.unwrap();
    assert_ne!(id_of(&other), generated, "each request its own");
}

async fn metrics_show_requests_the_database_and_the_queues(db: Db) {
    let server = TestServer::start(db).await;
    let patient = server.create(&json!({"resourceType": "Patient"})).await;
    for _ in 0..3 {
        assert_eq!(server.get(&format!("Patient/{patient}")).await.status(), 200);
    }
    assert_eq!(server.get("Patient/nobody").await.status(), 404);
    let root = server.base.trim_end_matches("/fhir").to_string();
    let response = reqwest::get(format!("{root}/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let line = |prefix: &str| {
        text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{text}")).to_string()
    };
    let count = |labels: &str| -> f64 {
        line(&format!("hearth_fhir_request_duration_seconds_count{{{labels}}}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(count(r#"interaction="read",resource_type="Patient",class="2xx""#), 3.0);
    assert_eq!(count(r#"interaction="read",resource_type="Patient",class="4xx""#), 1.0);
    assert_eq!(count(r#"interaction="create",resource_type="Patient",class="2xx""#), 1.0);
    line(
        r#"hearth_fhir_request_duration_seconds_bucket{le="0.001",interaction="read",resource_type="Patient",class="2xx"}"#,
    );
    line(r#"hearth_http_responses_total{class="2xx"}"#);
    line(r#"hearth_db_connections{pool="writers",state="idle"}"#);
    line(r#"hearth_db_connections{pool="readers",state="in_use"}"#);
    line("hearth_notifications_pending 0");
    line("hearth_audit_seal_lag_seconds ");
    line("hearth_audit_spool_bytes ");
    assert!(!text.contains(&patient), "no ids in labels");
}

/// `--log-format json`: one object per request with its id, method, route template, status,
/// latency; never the query or the ids in the path.
#[tokio::test]
async fn json_logs_have_one_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("hearth.db").display());
    let mut process = Process::serve(&database, &["--log-format", "json"], &["--auth", "off"], |command| {
        command.env("RUST_LOG", "info").stdout(Stdio::piped()).stderr(Stdio::piped());
    })
    .await;
    let listen = process.listen.clone();
    let client = reqwest::Client::new();
    let response = client
        .get(format!("http://{listen}/fhir/Patient/secret-id-123?name=secret-name"))
        .header("x-request-id", "trace-me-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let output = process.kill_and_collect();
    let mut lines: Vec<String> = BufReader::new(&output.stdout[..]).lines().map_while(Result::ok).collect();
    lines.extend(BufReader::new(&output.stderr[..]).lines().map_while(Result::ok));
    let objects: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not one JSON object: {line}")))
        .collect();
    let request = objects
        .iter()
        .find(|o| o["request_id"] == "trace-me-1" && o["message"] == "request")
        .unwrap_or_else(|| panic!("no request line: {objects:#?}"));
    assert_eq!(request["level"], "INFO");
    assert_eq!(request["method"], "GET");
    assert_eq!(request["route"], "/fhir/Patient/{id}");
    assert_eq!(request["status"], 404);
    assert!(request["latency_ms"].as_f64().is_some() && request["timestamp"].is_string(), "{request}");
    let all = lines.join("\n");
    assert!(!all.contains("secret-name") && !all.contains("secret-id-123"), "no query, no ids: {all}");
}

on_both_databases!(request_ids_come_back_on_every_response, metrics_show_requests_the_database_and_the_queues);
