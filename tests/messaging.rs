//! Secure messaging end to end through HTTP, on both databases: threads and messages, who a
//! patient may write to and as whom, marking read, `$unread`, and what cannot be changed.

mod common;

use common::smart::{smart_server, smart_server_with, Smart};
use common::{body, outcome, Db};
use reqwest::Method;
use serde_json::{json, Value};

fn message(sender: &str, recipient: &str, subject: &str, text: &str) -> Value {
    json!({"resourceType": "Communication", "status": "completed", "sent": "2026-12-06T10:00:00Z",
        "sender": {"reference": sender}, "recipient": [{"reference": recipient}],
        "subject": {"reference": subject}, "payload": [{"contentString": text}]})
}

fn thread(sender: &str, recipient: &str, subject: &str, topic: &str) -> Value {
    let mut thread = message(sender, recipient, subject, topic);
    thread["topic"] = json!({"text": topic});
    thread
}

fn reply(mut message: Value, thread: &str) -> Value {
    message["partOf"] = json!([{"reference": format!("Communication/{thread}")}]);
    message
}

async fn patients_message_their_care_team(db: Db) {
    let server = smart_server_with(db, |mut settings| {
        settings.messaging.recipients = vec!["Organization/front-desk".to_string()];
        settings
    })
    .await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let doctor = smart.create(&admin, &json!({"resourceType": "Practitioner"})).await;
    let stranger = smart.create(&admin, &json!({"resourceType": "Practitioner"})).await;
    let ana = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let luis = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    smart
        .create(
            &admin,
            &json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{ana}")},
            "participant": [{"individual": {"reference": format!("Practitioner/{doctor}")}}]}),
        )
        .await;
    let scope = "openid fhirUser launch/patient patient/Communication.crus";
    let ana_token = smart.user_token("ana", &format!("Patient/{ana}"), &[], scope).await;
    let (me, doc) = (format!("Patient/{ana}"), format!("Practitioner/{doctor}"));
    let post = |resource: Value| {
        let (smart, token) = (&smart, &ana_token);
        async move { smart.send(Method::POST, "Communication", token, &resource).await }
    };

    let response = post(thread(&me, &doc, &me, "Question about my lab results")).await;
    assert_eq!(response.status(), 201);
    let thread_id = body(response).await["id"].as_str().unwrap().to_string();
    assert_eq!(post(reply(message(&me, &doc, &me, "Also: fasting?"), &thread_id)).await.status(), 201);
    assert_eq!(post(thread(&me, "Organization/front-desk", &me, "Parking")).await.status(), 201, "the clinic's list");

    for (refused, says) in [
        (thread(&me, &format!("Practitioner/{stranger}"), &me, "Hello"), "not among those the patient may message"),
        (thread(&doc, &doc, &me, "Forged"), "sender must be you"),
        (message(&me, &doc, &me, "No thread, no topic"), "needs a topic"),
        (thread(&me, &me, &me, "To myself"), "not among those"),
    ] {
        let response = post(refused).await;
        assert_eq!(response.status(), 422);
        assert!(outcome(response).await.contains(says), "{says}");
    }
    let his_thread =
        smart.create(&admin, &thread(&format!("Patient/{luis}"), &doc, &format!("Patient/{luis}"), "His")).await;
    let intrusion = reply(message(&me, &doc, &me, "Hi Luis"), &his_thread);
    assert_eq!(post(intrusion).await.status(), 422, "not into another patient's thread");

    // The doctor answers; the answer is unread until she marks it read.
    let answer = reply(message(&doc, &me, &me, "Yes, 8 hours"), &thread_id);
    let answer_id = smart.create(&admin, &answer).await;
    let unread = |token: String| {
        let smart = &smart;
        async move { body(smart.get("Communication/$unread", &token).await).await }
    };
    let counts = unread(ana_token.clone()).await;
    let total = counts["parameter"].as_array().unwrap().iter().find(|p| p["name"] == "total").unwrap();
    assert_eq!(total["valueInteger"], 1);
    let threads: Vec<&Value> =
        counts["parameter"].as_array().unwrap().iter().filter(|p| p["name"] == "thread").collect();
    assert_eq!(threads.len(), 2, "her two threads, not his");
    let mut read = body(smart.get(&format!("Communication/{answer_id}"), &ana_token).await).await;
    read["received"] = json!("2026-12-06T11:00:00Z");
    let path = format!("Communication/{answer_id}");
    assert_eq!(smart.send(Method::PUT, &path, &ana_token, &read).await.status(), 200);
    let counts = unread(ana_token.clone()).await;
    assert_eq!(counts["parameter"].as_array().unwrap().last().unwrap()["valueInteger"], 0);

    // Sent is sent: no edits, no deletion; the clinic can mark one entered-in-error.
    read["payload"] = json!([{"contentString": "No, 12 hours"}]);
    assert_eq!(smart.send(Method::PUT, &path, &ana_token, &read).await.status(), 422);
    let mut mine = body(smart.get(&format!("Communication/{thread_id}"), &ana_token).await).await;
    mine["payload"] = json!([{"contentString": "edited"}]);
    let response = smart.send(Method::PUT, &format!("Communication/{thread_id}"), &ana_token, &mine).await;
    assert_eq!(response.status(), 422);
    assert!(outcome(response).await.contains("cannot be changed once sent"));
    let mut withdrawn = body(smart.get(&format!("Communication/{thread_id}"), &admin).await).await;
    withdrawn["status"] = json!("entered-in-error");
    let response = smart.send(Method::PUT, &format!("Communication/{thread_id}"), &admin, &withdrawn).await;
    assert_eq!(response.status(), 200, "staff mark it entered-in-error");

    let listed = body(smart.get("Communication?part-of:missing=true", &ana_token).await).await;
    assert_eq!(listed["entry"].as_array().unwrap().len(), 2, "her threads");
    let in_thread =
        body(smart.get(&format!("Communication?part-of=Communication/{thread_id}&_sort=sent"), &ana_token).await).await;
    assert_eq!(in_thread["entry"].as_array().unwrap().len(), 2);
    let count = body(smart.get("Communication?_summary=count", &admin).await).await;
    assert_eq!(count["total"], 5, "nothing refused was stored");
}

/// A proxy writes as themselves for the patient they act for; the patient's doctor, with a
/// practitioner's token, answers in the thread and the patient sees it unread.
async fn proxies_write_as_themselves_and_doctors_answer(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let doctor = smart.create(&admin, &json!({"resourceType": "Practitioner"})).await;
    let ana = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let luis = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let care_team = json!({"resourceType": "CareTeam", "status": "active",
        "subject": {"reference": format!("Patient/{ana}")},
        "participant": [{"member": {"reference": format!("Practitioner/{doctor}")}}]});
    smart.create(&admin, &care_team).await;
    let mother = smart
        .create(&admin, &json!({"resourceType": "RelatedPerson", "patient": {"reference": format!("Patient/{ana}")}}))
        .await;
    let (her, mom, doc) =
        (format!("Patient/{ana}"), format!("RelatedPerson/{mother}"), format!("Practitioner/{doctor}"));
    let proxy = smart.user_token("mother", &mom, &[&ana], "user/Communication.crus").await;
    let doctor_token = smart.user_token("doctor", &doc, &[], "user/Communication.crus").await;

    let response = smart.send(Method::POST, "Communication", &proxy, &thread(&mom, &doc, &her, "Her fever")).await;
    assert_eq!(response.status(), 201, "a proxy starts a thread as themselves");
    let thread_id = body(response).await["id"].as_str().unwrap().to_string();
    let forged = reply(message(&doc, &her, &her, "All fine"), &thread_id);
    let response = smart.send(Method::POST, "Communication", &proxy, &forged).await;
    assert_eq!(response.status(), 422, "not in the doctor's name");
    let his = thread(&mom, &doc, &format!("Patient/{luis}"), "Not hers");
    assert_eq!(
        smart.send(Method::POST, "Communication", &proxy, &his).await.status(),
        403,
        "not about another patient"
    );

    let answer = reply(message(&doc, &her, &her, "Give her fluids"), &thread_id);
    let response = smart.send(Method::POST, "Communication", &doctor_token, &answer).await;
    assert_eq!(response.status(), 201, "the doctor answers with a practitioner's token");
    let counts = body(smart.get("Communication/$unread", &proxy).await).await;
    let total = counts["parameter"].as_array().unwrap().iter().find(|p| p["name"] == "total").unwrap();
    assert_eq!(total["valueInteger"], 1, "the answer is unread");
    let count = body(smart.get("Communication?_summary=count", &admin).await).await;
    assert_eq!(count["total"], 2, "nothing refused was stored");
}

on_both_databases!(patients_message_their_care_team, proxies_write_as_themselves_and_doctors_answer);
