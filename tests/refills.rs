//! Prescription refill requests end to end through HTTP, on both databases: `$request-refill`
//! and Tasks written directly, what patients may and may not do, and one open request per
//! prescription even when requests race.

mod common;

use common::smart::{smart_server, Smart};
use common::{body, outcome, Db};
use reqwest::Method;
use serde_json::{json, Value};

const TASK_CODES: &str = "http://hearth.dev/fhir/CodeSystem/portal-task";

fn prescription(patient: &str, prescriber: &str, status: &str) -> Value {
    json!({"resourceType": "MedicationRequest", "status": status, "intent": "order",
        "medicationCodeableConcept": {"text": "lisinopril 10 mg"},
        "subject": {"reference": format!("Patient/{patient}")},
        "requester": {"reference": format!("Practitioner/{prescriber}")}})
}

fn refill_task(patient: &str, prescription: &str) -> Value {
    json!({"resourceType": "Task", "status": "requested", "intent": "order",
        "code": {"coding": [{"system": TASK_CODES, "code": "refill"}]},
        "focus": {"reference": format!("MedicationRequest/{prescription}")},
        "for": {"reference": format!("Patient/{patient}")},
        "requester": {"reference": format!("Patient/{patient}")}})
}

async fn refills_follow_the_rules(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let doctor = smart.create(&admin, &json!({"resourceType": "Practitioner"})).await;
    let ana = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let luis = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let active = smart.create(&admin, &prescription(&ana, &doctor, "active")).await;
    let second = smart.create(&admin, &prescription(&ana, &doctor, "active")).await;
    let stopped = smart.create(&admin, &prescription(&ana, &doctor, "stopped")).await;
    let luiss = smart.create(&admin, &prescription(&luis, &doctor, "active")).await;
    let scope = "launch/patient patient/MedicationRequest.rs patient/Task.crus";
    let ana_token = smart.user_token("ana", &format!("Patient/{ana}"), &[], scope).await;
    let note =
        json!({"resourceType": "Parameters", "parameter": [{"name": "note", "valueString": "Running out on Friday"}]});
    let request = |id: &str| {
        let (smart, token, note) = (&smart, &ana_token, &note);
        let path = format!("MedicationRequest/{id}/$request-refill");
        async move { smart.send(Method::POST, &path, token, note).await }
    };

    let response = request(&active).await;
    assert_eq!(response.status(), 201);
    let task = body(response).await;
    assert_eq!(task["status"], "requested");
    assert_eq!(task["focus"]["reference"], format!("MedicationRequest/{active}"));
    assert_eq!(task["for"]["reference"], format!("Patient/{ana}"));
    assert_eq!(task["owner"]["reference"], format!("Practitioner/{doctor}"));
    assert_eq!(task["note"][0]["text"], "Running out on Friday");
    let task_id = task["id"].as_str().unwrap().to_string();

    let again = request(&active).await;
    assert_eq!(again.status(), 422);
    assert!(outcome(again).await.contains("open refill request already"));
    let response = request(&stopped).await;
    assert_eq!(response.status(), 422);
    assert!(outcome(response).await.contains("only an active prescription"));
    assert_eq!(request(&luiss).await.status(), 404, "another patient's prescription does not exist for her");
    let forged = refill_task(&ana, &luiss);
    let response = smart.send(Method::POST, "Task", &ana_token, &forged).await;
    assert_eq!(response.status(), 422, "a Task of hers naming his prescription");
    assert_eq!(smart.send(Method::POST, "Task", &ana_token, &refill_task(&luis, &luiss)).await.status(), 403);
    let mut chore = refill_task(&ana, &second);
    chore["code"] = json!({"text": "mow the lawn"});
    assert_eq!(smart.send(Method::POST, "Task", &ana_token, &chore).await.status(), 422, "only refill requests");

    // She sees her request, not his; the clinic moves it on, she sees that.
    let his = smart.create(&admin, &refill_task(&luis, &luiss)).await;
    assert_eq!(smart.get(&format!("Task/{his}"), &ana_token).await.status(), 404);
    let hers = body(smart.get("Task?_count=50", &ana_token).await).await;
    let ids: Vec<&str> =
        hers["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [task_id.as_str()]);
    let mut accepted = body(smart.get(&format!("Task/{task_id}"), &admin).await).await;
    accepted["status"] = json!("accepted");
    assert_eq!(smart.send(Method::PUT, &format!("Task/{task_id}"), &admin, &accepted).await.status(), 200);
    assert_eq!(body(smart.get(&format!("Task/{task_id}"), &ana_token).await).await["status"], "accepted");
    let mut completed = accepted.clone();
    completed["status"] = json!("completed");
    let response = smart.send(Method::PUT, &format!("Task/{task_id}"), &ana_token, &completed).await;
    assert_eq!(response.status(), 422, "the clinic completes it, not she");
    assert_eq!(smart.send(Method::PUT, &format!("Task/{task_id}"), &admin, &completed).await.status(), 200);
    assert_eq!(request(&active).await.status(), 201, "a new request once the last one is done");

    // She may withdraw an open request, and only that.
    let withdrawn = body(request(&second).await).await;
    let mut cancelled = withdrawn.clone();
    cancelled["status"] = json!("cancelled");
    cancelled["note"] = json!([{"text": "changed my note too"}]);
    let path = format!("Task/{}", withdrawn["id"].as_str().unwrap());
    assert_eq!(smart.send(Method::PUT, &path, &ana_token, &cancelled).await.status(), 422);
    cancelled["note"] = withdrawn["note"].clone();
    assert_eq!(smart.send(Method::PUT, &path, &ana_token, &cancelled).await.status(), 200);
    let delete = smart.fhir_request(Method::DELETE, &format!("Task/{task_id}"), &ana_token).send().await.unwrap();
    assert_eq!(delete.status(), 403, "not deleted (her app has no delete scope; with one, 422)");

    let count = body(smart.get("Task?_summary=count", &admin).await).await;
    assert_eq!(count["total"], 4, "her three requests and his; nothing refused was stored");
}

async fn racing_requests_open_one(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let doctor = smart.create(&admin, &json!({"resourceType": "Practitioner"})).await;
    let ana = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let active = smart.create(&admin, &prescription(&ana, &doctor, "active")).await;
    let attempts = (0..8).map(|_| {
        let (smart, admin) = (&smart, &admin);
        let task = refill_task(&ana, &active);
        async move { smart.send(Method::POST, "Task", admin, &task).await.status().as_u16() }
    });
    let statuses = futures::future::join_all(attempts).await;
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 422).count(), 7, "{statuses:?}");
}

on_both_databases!(refills_follow_the_rules, racing_requests_open_one);
