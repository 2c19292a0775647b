//! The audit log (issue 21, ADR 19): AuditEvents are the server's record, never written
//! through the API.

mod common;

use common::{body, Db, TestServer};
use serde_json::{json, Value};

fn audit_event() -> Value {
    json!({"resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "recorded": "2026-01-01T00:00:00Z",
        "agent": [{"requestor": true, "who": {"display": "someone"}}],
        "source": {"observer": {"display": "elsewhere"}}})
}

async fn audit_events_are_not_written_through_the_api(db: Db) {
    let server = TestServer::start(db).await;
    let refused = |response: reqwest::Response| async move {
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()["allow"], "GET, HEAD");
        let outcome = body(response).await;
        assert!(outcome.to_string().contains("recorded by the server"), "{outcome}");
    };
    refused(server.post("AuditEvent", &audit_event()).await).await;
    let mut with_id = audit_event();
    with_id["id"] = json!("forged");
    refused(server.put("AuditEvent/forged", &with_id).await).await;
    refused(server.delete("AuditEvent/forged").await).await;

    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": audit_event(), "request": {"method": "POST", "url": "AuditEvent"}}]});
    let response = server.post("", &transaction).await;
    assert_eq!(response.status(), 405, "the whole transaction fails");
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": audit_event(), "request": {"method": "POST", "url": "AuditEvent"}},
        {"request": {"method": "DELETE", "url": "AuditEvent/forged"}}]});
    let answered = body(server.post("", &batch).await).await;
    for entry in answered["entry"].as_array().unwrap() {
        assert!(entry["response"]["status"].as_str().unwrap().starts_with("405"), "{entry}");
    }
    let patients = body(server.get("Patient?_summary=count").await).await;
    assert_eq!(patients["total"], 0, "nothing of the transaction was stored");
    let events = body(server.get("AuditEvent?_summary=count").await).await;
    assert_eq!(events["total"], 0);

    let capabilities = body(server.get("metadata").await).await;
    let audit =
        capabilities["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "AuditEvent").unwrap();
    assert_eq!(audit["interaction"], json!([{"code": "read"}, {"code": "search-type"}]));
}

on_both_databases!(audit_events_are_not_written_through_the_api);
