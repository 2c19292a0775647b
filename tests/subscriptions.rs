//! Topic-based subscriptions (Subscriptions R5 Backport IG for R4) end to end, on both
//! databases, with a real rest-hook receiver on loopback: the handshake, events of the
//! built-in topics through filters, payload kinds, `$status` and `$events`, retries while the
//! receiver is down, refused Subscriptions, rolled-back writes, and what patients may see.

mod common;
#[path = "subscriptions/crash.rs"]
mod crash;
#[path = "subscriptions/reminders.rs"]
mod reminders;
#[path = "subscriptions/websocket.rs"]
mod websocket;

use std::time::Duration;

use common::receiver::Receiver;
use common::smart::{smart_server, Smart};
use common::{body, outcome, Db, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

const TOPICS: &str = "http://hearth.dev/fhir/SubscriptionTopic/";
const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
const WAIT: Duration = Duration::from_secs(10);

/// A rest-hook Subscription to a built-in topic with filters and a payload content.
fn subscription(topic: &str, filters: &[&str], endpoint: &str, content: &str) -> Value {
    let filters: Vec<Value> = filters
        .iter()
        .map(|f| json!({"url": format!("{BACKPORT}backport-filter-criteria"), "valueString": f}))
        .collect();
    let mut subscription = json!({
        "resourceType": "Subscription",
        "meta": {"profile": [format!("{BACKPORT}backport-subscription")]},
        "status": "requested",
        "reason": "test",
        "criteria": format!("{TOPICS}{topic}"),
        "_criteria": {"extension": filters},
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": format!("{BACKPORT}backport-payload-content"), "valueCode": content}]},
            "header": ["Authorization: Bearer receiver-secret"],
        },
    });
    if filters.is_empty() {
        subscription.as_object_mut().unwrap().remove("_criteria");
    }
    subscription
}

fn observation(patient: &str, status: &str) -> Value {
    json!({"resourceType": "Observation", "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": format!("Patient/{patient}")}})
}

/// Subscribes `receiver` (no auth) and waits for the handshake and the activation; the id.
async fn subscribed(server: &TestServer, receiver: &Receiver, topic: &str, filters: &[&str], content: &str) -> String {
    let created = body(server.post("Subscription", &subscription(topic, filters, &receiver.url, content)).await).await;
    let id = created["id"].as_str().unwrap_or_else(|| panic!("not created: {created}")).to_string();
    receiver.wait_for(1, WAIT).await;
    wait_status(server, &id, "active").await;
    id
}

/// A new patient and a Subscription of `receiver` to their final results (id-only), active:
/// (patient id, Subscription id).
async fn patient_subscribed(server: &TestServer, receiver: &Receiver) -> (String, String) {
    let patient = server.create(&json!({"resourceType": "Patient"})).await;
    let filter = format!("Observation?patient=Patient/{patient}");
    let id = subscribed(server, receiver, "result-final", &[&filter], "id-only").await;
    (patient, id)
}

/// Two patients, each signed in to an app that may manage their Subscriptions and read their
/// Observations.
struct Patients {
    ana: String,
    luis: String,
    ana_token: String,
    luis_token: String,
}

async fn two_patients(smart: &Smart, admin: &str) -> Patients {
    let ana = smart.create(admin, &json!({"resourceType": "Patient"})).await;
    let luis = smart.create(admin, &json!({"resourceType": "Patient"})).await;
    let scope = "openid fhirUser launch/patient patient/Subscription.cruds patient/Observation.rs";
    let ana_token = smart.user_token("ana", &format!("Patient/{ana}"), &[], scope).await;
    let luis_token = smart.user_token("luis", &format!("Patient/{luis}"), &[], scope).await;
    Patients { ana, luis, ana_token, luis_token }
}

/// Waits until the Subscription's status is `status`.
async fn wait_status(server: &TestServer, id: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let subscription = body(server.get(&format!("Subscription/{id}")).await).await;
        if subscription["status"] == status {
            return subscription;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {}: {subscription}", subscription["status"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rest_hooks_get_a_handshake_then_the_events_their_filters_select(db: Db) {
    let server = TestServer::start(db).await;
    let receiver = Receiver::start().await;
    let ana = server.create(&json!({"resourceType": "Patient"})).await;
    let luis = server.create(&json!({"resourceType": "Patient"})).await;
    let filter = format!("Observation?patient=Patient/{ana}");
    let response =
        server.post("Subscription", &subscription("result-final", &[&filter], &receiver.url, "id-only")).await;
    let status = response.status();
    let created = body(response).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "requested");
    let id = created["id"].as_str().unwrap().to_string();

    let handshake = &receiver.wait_for(1, WAIT).await[0];
    assert_eq!(handshake.kind(), "handshake");
    assert_eq!(handshake.headers["authorization"], "Bearer receiver-secret", "the subscriber's header is sent");
    assert_eq!(handshake.headers["content-type"], "application/fhir+json");
    assert_eq!(handshake.body["type"], "history");
    wait_status(&server, &id, "active").await;

    let preliminary = server.create(&observation(&ana, "preliminary")).await;
    server.create(&observation(&luis, "final")).await;
    let final_one = server.create(&observation(&ana, "final")).await;
    let mut finalised = observation(&ana, "final");
    finalised["id"] = json!(preliminary);
    assert_eq!(server.put(&format!("Observation/{preliminary}"), &finalised).await.status(), 200);
    let mut corrected = finalised.clone();
    corrected["status"] = json!("final");
    corrected["valueString"] = json!("same status again: not an event");
    assert_eq!(server.put(&format!("Observation/{preliminary}"), &corrected).await.status(), 200);

    let received = receiver.wait_for_events(2, WAIT).await;
    let events: Vec<Value> = received[1..].iter().flat_map(|r| r.events()).collect();
    let numbers: Vec<&str> = events.iter().map(|e| e["part"][0]["valueString"].as_str().unwrap()).collect();
    assert_eq!(numbers, ["1", "2"], "ana's two finalised results, numbered in order: {received:#?}");
    let focus = |event: &Value| event["part"][2]["valueReference"]["reference"].as_str().unwrap().to_string();
    assert!(focus(&events[0]).ends_with(&format!("Observation/{final_one}")));
    assert!(focus(&events[1]).ends_with(&format!("Observation/{preliminary}")));
    let last = received.last().unwrap();
    assert_eq!(last.kind(), "event-notification");
    assert_eq!(last.status("events-since-subscription-start"), "2");
    assert!(last.body["entry"][1].get("resource").is_none(), "id-only carries no resource");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events: usize = receiver.received().iter().map(|r| r.events().len()).sum();
    assert_eq!(events, 2, "nothing for luis, nothing for an update that changed no status");

    let status = body(server.get(&format!("Subscription/{id}/$status")).await).await;
    assert_eq!(status["type"], "searchset");
    let parameters = &status["entry"][0]["resource"]["parameter"];
    let value = |name: &str| parameters.as_array().unwrap().iter().find(|p| p["name"] == name).unwrap().clone();
    assert_eq!(value("status")["valueCode"], "active");
    assert_eq!(value("type")["valueCode"], "query-status");
    assert_eq!(value("events-since-subscription-start")["valueString"], "2");

    let replay =
        body(server.get(&format!("Subscription/{id}/$events?eventsSinceNumber=2&content=full-resource")).await).await;
    assert_eq!(replay["entry"][0]["resource"]["parameter"][3]["valueCode"], "query-event");
    assert_eq!(replay["entry"].as_array().unwrap().len(), 2, "event 2 and its resource");
    assert_eq!(replay["entry"][1]["resource"]["id"], preliminary.as_str());
    assert_eq!(replay["entry"][1]["resource"]["status"], "final", "the version of the event");
}

async fn payloads_are_empty_id_only_or_full(db: Db) {
    let server = TestServer::start(db).await;
    let ana = server.create(&json!({"resourceType": "Patient"})).await;
    let filter = format!("Communication?recipient=Patient/{ana}");
    let mut receivers = Vec::new();
    for content in ["empty", "id-only", "full-resource"] {
        let receiver = Receiver::start().await;
        subscribed(&server, &receiver, "message-received", &[&filter], content).await;
        receivers.push(receiver);
    }
    let message = json!({"resourceType": "Communication", "status": "completed",
        "recipient": [{"reference": format!("Patient/{ana}")}], "payload": [{"contentString": "Your results are in"}]});
    let message_id = server.create(&message).await;
    let notifications: Vec<Value> = futures::future::join_all(receivers.iter().map(|r| r.wait_for(2, WAIT)))
        .await
        .into_iter()
        .map(|received| received[1].body.clone())
        .collect();
    let [empty, id_only, full] = &notifications[..] else { unreachable!() };
    assert_eq!(empty["entry"].as_array().unwrap().len(), 1, "empty: the status only");
    assert_eq!(empty["entry"][0]["resource"]["parameter"][5]["part"].as_array().unwrap().len(), 2, "no focus");
    assert_eq!(id_only["entry"].as_array().unwrap().len(), 2);
    assert!(id_only["entry"][1]["fullUrl"].as_str().unwrap().ends_with(&format!("Communication/{message_id}")));
    assert!(id_only["entry"][1].get("resource").is_none());
    assert_eq!(id_only["entry"][1]["request"]["method"], "POST");
    assert_eq!(full["entry"][1]["resource"]["payload"][0]["contentString"], "Your results are in");
}

async fn subscriptions_the_server_cannot_honour_are_refused(db: Db) {
    let server = TestServer::start(db).await;
    let receiver = Receiver::start().await;
    let ok = subscription("result-final", &["Observation?patient=Patient/1"], &receiver.url, "id-only");
    let cases: Vec<(Value, &str)> = vec![
        (
            {
                let mut s = ok.clone();
                s["criteria"] = json!("http://example.org/no-such-topic");
                s
            },
            "Subscription.criteria",
        ),
        (subscription("result-final", &["Observation?nonsense=1"], &receiver.url, "id-only"), "extension[0]"),
        (subscription("result-final", &["Observation?date=ge2020"], &receiver.url, "id-only"), "extension[0]"),
        (subscription("result-final", &["Patient?name=x"], &receiver.url, "id-only"), "extension[0]"),
        (subscription("result-final", &[], "http://example.org/hook", "id-only"), "channel.endpoint"),
        (
            {
                let mut s = ok.clone();
                s["channel"]["header"] = json!(["X-A: 1\r\nX-Evil: 2"]);
                s
            },
            "channel.header[0]",
        ),
        (
            {
                let mut s = ok.clone();
                s["channel"]["header"] = json!(["Host: elsewhere"]);
                s
            },
            "channel.header[0]",
        ),
        (subscription("result-final", &[], &receiver.url, "everything"), "channel.payload"),
        (
            {
                let mut s = ok.clone();
                s["status"] = json!("active");
                s
            },
            "status",
        ),
    ];
    for (resource, place) in cases {
        let response = server.post("Subscription", &resource).await;
        assert_eq!(response.status(), 422, "{place}");
        let outcome = body(response).await;
        let text = outcome.to_string();
        assert!(
            text.contains(place) || outcome["issue"][0]["diagnostics"].as_str().unwrap().contains(place),
            "{place}: {outcome}"
        );
    }
    let count = body(server.get("Subscription?_summary=count").await).await;
    assert_eq!(count["total"], 0, "nothing refused was stored");
    assert!(receiver.received().is_empty());
    let topics =
        body(server.get("Basic?code=http://hl7.org/fhir/fhir-types|SubscriptionTopic&_count=50&_total=accurate").await)
            .await;
    assert!(topics["total"].as_u64().unwrap() >= 6, "the built-in topics are listed: {topics}");
}

/// A server as `hearth serve` starts by default: rest-hooks to public addresses only, so no
/// subscriber can make it post to services on its own network.
async fn rest_hooks_to_the_servers_own_network_are_refused_by_default(db: Db) {
    let server = TestServer::start_with(db, |mut settings| {
        settings.subscriptions.endpoints.allow_private = false;
        settings
    })
    .await;
    let receiver = Receiver::start().await;
    let port = receiver.url.rsplit(':').next().unwrap();
    for endpoint in [receiver.url.clone(), format!("http://localhost:{port}"), "https://169.254.169.254/latest".into()]
    {
        let response = server.post("Subscription", &subscription("result-final", &[], &endpoint, "id-only")).await;
        assert_eq!(response.status(), 422, "{endpoint}");
        let outcome = body(response).await;
        assert_eq!(outcome["issue"][0]["expression"][0], "Subscription.channel.endpoint", "{outcome}");
        assert!(outcome.to_string().contains("public address"), "{outcome}");
    }
    let count = body(server.get("Subscription?_summary=count").await).await;
    assert_eq!(count["total"], 0, "nothing stored");
}

/// The focus (`Type/id`) of each event a receiver got, in order.
fn event_focuses(receiver: &Receiver) -> Vec<String> {
    let events: Vec<Value> = receiver.received().iter().flat_map(|r| r.events()).collect();
    events
        .iter()
        .map(|e| {
            let reference = e["part"][2]["valueReference"]["reference"].as_str().unwrap();
            let mut parts = reference.rsplit('/');
            let id = parts.next().unwrap();
            format!("{}/{id}", parts.next().unwrap())
        })
        .collect()
}

/// The appointment, document and refill topics: their events, and the writes that are not.
async fn appointment_document_and_refill_topics(db: Db) {
    let server = TestServer::start(db).await;
    let ana = server.create(&json!({"resourceType": "Patient"})).await;
    let patient = json!({"reference": format!("Patient/{ana}")});
    let receiver_of = |topic: &'static str, resource_type: &'static str| {
        let (server, ana) = (&server, &ana);
        async move {
            let receiver = Receiver::start().await;
            let filter = format!("{resource_type}?patient=Patient/{ana}");
            subscribed(server, &receiver, topic, &[&filter], "id-only").await;
            receiver
        }
    };
    let appointments = receiver_of("appointment-changed", "Appointment").await;
    let documents = receiver_of("document-added", "DocumentReference").await;
    let refills = receiver_of("refill-status", "Task").await;

    let visit = |status: &str| {
        json!({"resourceType": "Appointment", "status": status, "start": "2031-01-06T09:00:00Z", "end": "2031-01-06T09:30:00Z",
            "participant": [{"actor": patient, "status": "accepted"}]})
    };
    server.create(&visit("proposed")).await;
    let booked = server.create(&visit("booked")).await;
    let mut moved = visit("booked");
    moved["id"] = json!(booked);
    moved["start"] = json!("2031-01-07T09:00:00Z");
    moved["end"] = json!("2031-01-07T09:30:00Z");
    assert_eq!(server.put(&format!("Appointment/{booked}"), &moved).await.status(), 200);
    let mut cancelled = moved.clone();
    cancelled["status"] = json!("cancelled");
    assert_eq!(server.put(&format!("Appointment/{booked}"), &cancelled).await.status(), 200);
    appointments.wait_for_events(3, WAIT).await;

    let document = |status: &str| {
        json!({"resourceType": "DocumentReference", "status": status, "subject": patient,
            "content": [{"attachment": {"contentType": "text/plain", "data": "aGk="}}]})
    };
    server.create(&document("superseded")).await;
    let added = server.create(&document("current")).await;
    let mut edited = document("current");
    edited["id"] = json!(added);
    edited["description"] = json!("renamed");
    assert_eq!(server.put(&format!("DocumentReference/{added}"), &edited).await.status(), 200);
    documents.wait_for_events(1, WAIT).await;

    let prescription = server
        .create(&json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "medicationCodeableConcept": {"text": "lisinopril 10 mg"}, "subject": patient}))
        .await;
    let mut task = json!({"resourceType": "Task", "status": "requested", "intent": "order",
        "code": {"coding": [{"system": "http://hearth.dev/fhir/CodeSystem/portal-task", "code": "refill"}]},
        "focus": {"reference": format!("MedicationRequest/{prescription}")}, "for": patient, "requester": patient});
    let refill = server.create(&task).await;
    task["id"] = json!(refill);
    task["note"] = json!([{"text": "same status: not an event"}]);
    assert_eq!(server.put(&format!("Task/{refill}"), &task).await.status(), 200);
    task["status"] = json!("accepted");
    assert_eq!(server.put(&format!("Task/{refill}"), &task).await.status(), 200);
    refills.wait_for_events(2, WAIT).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        event_focuses(&appointments),
        vec![format!("Appointment/{booked}"); 3],
        "booked, moved, cancelled; not proposed"
    );
    assert_eq!(
        event_focuses(&documents),
        [format!("DocumentReference/{added}")],
        "a current one added; not superseded, not edited"
    );
    assert_eq!(event_focuses(&refills), vec![format!("Task/{refill}"); 2], "made, then accepted; not a note");
}

/// An operator's topic: `Basic` with the backport extensions, one resource trigger.
fn operator_topic(url: &str, subject: Option<&str>) -> Value {
    let r5 = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic.";
    let mut topic = json!({"resourceType": "Basic",
        "code": {"coding": [{"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}]},
        "extension": [
            {"url": format!("{r5}url"), "valueUri": url},
            {"url": format!("{r5}resourceTrigger"), "extension": [
                {"url": "resource", "valueUri": "http://hl7.org/fhir/StructureDefinition/Observation"}]}]});
    if let Some(subject) = subject {
        topic["subject"] = json!({"reference": subject});
    }
    topic
}

/// Topics are in force for everyone: a patient's app cannot add one, even as a Basic of its
/// own compartment; staff can, once per URL.
async fn only_staff_add_topics_and_a_url_names_one(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let ana = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let scope = "openid fhirUser launch/patient patient/Basic.cruds";
    let ana_token = smart.user_token("ana", &format!("Patient/{ana}"), &[], scope).await;
    let own = operator_topic("http://clinic.example.org/topics/mine", Some(&format!("Patient/{ana}")));
    let response = smart.send(Method::POST, "Basic", &ana_token, &own).await;
    assert_eq!(response.status(), 403, "{}", body(response).await);
    let mut not_a_topic = own.clone();
    not_a_topic["code"] = json!({"text": "a note"});
    not_a_topic.as_object_mut().unwrap().remove("extension");
    assert_eq!(
        smart.send(Method::POST, "Basic", &ana_token, &not_a_topic).await.status(),
        201,
        "other Basics are hers"
    );

    let url = "http://clinic.example.org/topics/labs";
    assert_eq!(smart.send(Method::POST, "Basic", &admin, &operator_topic(url, None)).await.status(), 201);
    let response = smart.send(Method::POST, "Basic", &admin, &operator_topic(url, None)).await;
    assert_eq!(response.status(), 422);
    assert!(body(response).await.to_string().contains("a topic's URL names one topic"));
    let built_in = format!("{TOPICS}result-final");
    assert_eq!(smart.send(Method::POST, "Basic", &admin, &operator_topic(&built_in, None)).await.status(), 422);
    let response = smart.send(Method::DELETE, "Basic/topic-result-final", &ana_token, &Value::Null).await;
    assert!(matches!(response.status().as_u16(), 403 | 404), "{}", response.status());
}

/// A patient's app has notifications e-mailed to its user's own address only.
async fn patients_email_only_themselves(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let ana = smart
        .create(
            &admin,
            &json!({"resourceType": "Patient", "telecom": [{"system": "email", "value": "Ana@Example.org"}]}),
        )
        .await;
    let scope = "openid fhirUser launch/patient patient/Subscription.cruds patient/Observation.rs";
    let ana_token = smart.user_token("ana", &format!("Patient/{ana}"), &[], scope).await;
    let by_email = |to: &str| {
        let mut resource = subscription("result-final", &[&format!("Observation?patient=Patient/{ana}")], "", "empty");
        resource["channel"] = json!({"type": "email", "endpoint": format!("mailto:{to}")});
        resource
    };
    let response = smart.send(Method::POST, "Subscription", &ana_token, &by_email("someone@example.org")).await;
    assert_eq!(response.status(), 422);
    assert!(body(response).await.to_string().contains("own address"));
    assert_eq!(smart.send(Method::POST, "Subscription", &ana_token, &by_email("ana@example.org")).await.status(), 201);
    let clinic = smart.send(Method::POST, "Subscription", &admin, &by_email("front-desk@example.org")).await;
    assert_eq!(clinic.status(), 201, "staff are not confined");
}

/// The receiver's secret in `channel.header` is never shown, to anyone, and a client that
/// writes back what it read keeps it.
async fn channel_headers_are_write_only(db: Db) {
    let server = TestServer::start(db).await;
    let receiver = Receiver::start().await;
    let (ana, id) = patient_subscribed(&server, &receiver).await;
    let hidden = json!(["Authorization: ******"]);
    let read = body(server.get(&format!("Subscription/{id}")).await).await;
    assert_eq!(read["channel"]["header"], hidden, "read");
    let searched = body(server.get(&format!("Subscription?_id={id}")).await).await;
    assert_eq!(searched["entry"][0]["resource"]["channel"]["header"], hidden, "search");
    let history = body(server.get(&format!("Subscription/{id}/_history")).await).await;
    for entry in history["entry"].as_array().unwrap() {
        assert_eq!(entry["resource"]["channel"]["header"], hidden, "history");
    }

    let mut changed = read.clone();
    changed["reason"] = json!("written back as read");
    changed["status"] = json!("requested");
    let response = server.put(&format!("Subscription/{id}"), &changed).await;
    assert_eq!(response.status(), 200);
    assert_eq!(body(response).await["channel"]["header"], hidden, "the write's response");
    wait_status(&server, &id, "active").await;
    let before = receiver.received().len();
    server.create(&observation(&ana, "final")).await;
    let received = receiver.wait_for_events(1, WAIT).await;
    assert_eq!(received[before..].last().unwrap().headers["authorization"], "Bearer receiver-secret", "kept");

    // A patch works on what the caller sees: copying the header copies the hidden value.
    let copy = json!([{"op": "copy", "from": "/channel/header/0", "path": "/reason"}]);
    let response = server.json_patch(&format!("Subscription/{id}"), &copy, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(body(response).await["reason"], "Authorization: ******");
    // A stored secret never follows a new endpoint.
    let mut elsewhere = body(server.get(&format!("Subscription/{id}")).await).await;
    elsewhere["channel"]["endpoint"] = json!("https://receiver.example.org/other");
    let response = server.put(&format!("Subscription/{id}"), &elsewhere).await;
    assert_eq!(response.status(), 422);
    assert!(body(response).await.to_string().contains("send it in full"));
    // Nor is it in a notification that carries the Subscription itself.
    let watcher = Receiver::start().await;
    let watch =
        subscribed(&server, &watcher, "resource-changed", &[&format!("Subscription?_id={id}")], "full-resource").await;
    let mut touched = body(server.get(&format!("Subscription/{id}")).await).await;
    touched["reason"] = json!("touched");
    assert_eq!(server.put(&format!("Subscription/{id}"), &touched).await.status(), 200);
    let notified = watcher.wait_for_events(1, WAIT).await;
    let text = serde_json::to_string(&notified.iter().map(|r| r.body.clone()).collect::<Vec<_>>()).unwrap();
    assert!(text.contains("Authorization: ******") && !text.contains("receiver-secret"), "{text}");
    let replay = body(server.get(&format!("Subscription/{watch}/$events?content=full-resource")).await).await;
    assert!(!replay.to_string().contains("receiver-secret"), "$events: {replay}");

    let mut unknown = read.clone();
    unknown["channel"]["header"] = json!(["X-Api-Key: ******"]);
    let response = server.put(&format!("Subscription/{id}"), &unknown).await;
    assert_eq!(response.status(), 422);
    let outcome = body(response).await;
    assert_eq!(outcome["issue"][0]["expression"][0], "Subscription.channel.header", "{outcome}");
    let text = serde_json::to_string(&body(server.get(&format!("Subscription/{id}/_history")).await).await).unwrap();
    assert!(!text.contains("receiver-secret"), "never shown");
}

async fn a_receiver_that_is_down_gets_the_events_later(db: Db) {
    let server = TestServer::start(db).await;
    let receiver = Receiver::start().await;
    let (ana, id) = patient_subscribed(&server, &receiver).await;

    receiver.answer(503);
    server.create(&observation(&ana, "final")).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let status = body(server.get(&format!("Subscription/{id}/$status")).await).await;
    assert_eq!(status["entry"][0]["resource"]["parameter"][4]["valueString"], "1", "the event is recorded");
    receiver.answer(200);
    // Within the back-off: 5 s after the first failure, 30 s after a second (a slow restart).
    let received = receiver.wait_for(2, Duration::from_secs(45)).await;
    assert_eq!(received[1].events()[0]["part"][0]["valueString"], "1", "delivered on the retry");
    wait_status(&server, &id, "active").await;
}

async fn a_failed_handshake_leaves_the_subscription_in_error(db: Db) {
    let server = TestServer::start(db).await;
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let created =
        body(server.post("Subscription", &subscription("result-final", &[], &receiver.url, "id-only")).await).await;
    let id = created["id"].as_str().unwrap();
    let failed = wait_status(&server, id, "error").await;
    assert!(failed["error"].as_str().unwrap().contains("handshake"), "{failed}");
}

async fn a_rolled_back_write_causes_no_event(db: Db) {
    let server = TestServer::start(db).await;
    let receiver = Receiver::start().await;
    let (ana, _) = patient_subscribed(&server, &receiver).await;
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(&ana, "final"), "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Observation", "status": "not-a-status"}, "request": {"method": "POST", "url": "Observation"}},
    ]});
    let response = server.post("", &transaction).await;
    assert!(response.status().is_client_error(), "{}", outcome(response).await);
    server.create(&observation(&ana, "final")).await;
    let received = receiver.wait_for(2, WAIT).await;
    assert_eq!(received[1].status("events-since-subscription-start"), "1", "only the committed write counts");
}

/// Patients subscribe with their own tokens: only to their own records, and each receives
/// only their own events, in every payload kind.
async fn patients_receive_only_their_own_events(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let Patients { ana, luis, ana_token, luis_token } = two_patients(&smart, &admin).await;

    let foreign = subscription(
        "result-final",
        &[&format!("Observation?patient=Patient/{luis}")],
        "http://127.0.0.1:9/hook",
        "full-resource",
    );
    assert_eq!(smart.send(Method::POST, "Subscription", &ana_token, &foreign).await.status(), 403, "not about luis");
    let unfiltered = subscription("result-final", &[], "http://127.0.0.1:9/hook", "full-resource");
    assert_eq!(
        smart.send(Method::POST, "Subscription", &ana_token, &unfiltered).await.status(),
        403,
        "not about everyone"
    );

    let mut receivers = Vec::new();
    let mut ids = Vec::new();
    for (patient, token) in [(&ana, &ana_token), (&luis, &luis_token)] {
        for content in ["id-only", "full-resource"] {
            let receiver = Receiver::start().await;
            let filter = format!("Observation?patient=Patient/{patient}");
            let response = smart
                .send(
                    Method::POST,
                    "Subscription",
                    token,
                    &subscription("result-final", &[&filter], &receiver.url, content),
                )
                .await;
            assert_eq!(response.status(), 201);
            ids.push(body(response).await["id"].as_str().unwrap().to_string());
            receiver.wait_for(1, WAIT).await;
            receivers.push(receiver);
        }
    }
    let mut activated = 0;
    while activated < ids.len() {
        let status = body(smart.get(&format!("Subscription/{}", ids[activated]), &admin).await).await;
        if status["status"] == "active" {
            activated += 1
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await
        }
    }
    let ana_result = smart.create(&admin, &observation(&ana, "final")).await;
    let luis_result = smart.create(&admin, &observation(&luis, "final")).await;
    for (index, receiver) in receivers.iter().enumerate() {
        let received = receiver.wait_for(2, WAIT).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(receiver.received().len(), 2, "one event each");
        let (own, other) = if index < 2 { (&ana_result, &luis_result) } else { (&luis_result, &ana_result) };
        let text = received[1].body.to_string();
        assert!(text.contains(own.as_str()) && !text.contains(other.as_str()), "{text}");
    }
    let listing = body(smart.get("Subscription?_total=accurate", &ana_token).await).await;
    assert_eq!(listing["total"], 2, "ana sees her two subscriptions, not luis's");
    let response = smart.get(&format!("Subscription/{}/$events", ids[2]), &ana_token).await;
    assert_eq!(response.status(), 404, "luis's events do not exist for ana");
}

/// Events recorded while the server was down (a restart, as after `kill -9`: nothing is kept
/// in memory) are delivered once it is up again.
async fn events_outlive_a_restart(db: Db) {
    let server = TestServer::start(db).await;
    let receiver = Receiver::start().await;
    let (ana, id) = patient_subscribed(&server, &receiver).await;
    receiver.answer(503);
    server.create(&observation(&ana, "final")).await;
    server.create(&observation(&ana, "amended")).await;
    // Restarted between two tries (a worker stopped in the middle of one holds its lease until
    // it runs out, as after a crash).
    let deadline = tokio::time::Instant::now() + WAIT;
    while receiver.refused() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no delivery was tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = server.restart().await;
    receiver.answer(200);
    // Within the back-off: 5 s after the first failure, 30 s after a second (a slow restart).
    let received = receiver.wait_for_events(2, Duration::from_secs(45)).await;
    let numbers: Vec<Value> =
        received[1..].iter().flat_map(|r| r.events()).map(|e| e["part"][0]["valueString"].clone()).collect();
    assert_eq!(numbers, [json!("1"), json!("2")], "both events, once each, in order");
    let status = body(server.get(&format!("Subscription/{id}/$status")).await).await;
    assert_eq!(status["entry"][0]["resource"]["parameter"][4]["valueString"], "2");
}

/// Heartbeats come when nothing else was sent for the period; a deleted Subscription gets
/// nothing more.
async fn heartbeats_come_while_nothing_happens(db: Db) {
    let server = TestServer::start(db).await;
    let receiver = Receiver::start().await;
    let mut resource = subscription("resource-changed", &["Patient?"], &receiver.url, "empty");
    resource["channel"]["extension"] =
        json!([{"url": format!("{BACKPORT}backport-heartbeat-period"), "valueUnsignedInt": 1}]);
    let created = body(server.post("Subscription", &resource).await).await;
    let id = created["id"].as_str().unwrap().to_string();
    wait_status(&server, &id, "active").await;
    let received = receiver.wait_for(3, WAIT).await;
    assert_eq!(received[1].kind(), "heartbeat");
    assert_eq!(received[1].status("events-since-subscription-start"), "0");
    assert_eq!(server.delete(&format!("Subscription/{id}")).await.status(), 204);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let count = receiver.received().len();
    server.create(&json!({"resourceType": "Patient"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.received().len(), count, "nothing after the delete");
}

/// The generic topic notifies creates, updates and deletes of the type its filter names.
async fn the_generic_topic_follows_one_type(db: Db) {
    let server = TestServer::start(db).await;
    let receiver = Receiver::start().await;
    subscribed(&server, &receiver, "resource-changed", &["Practitioner?family=house"], "full-resource").await;
    let house = server.create(&json!({"resourceType": "Practitioner", "name": [{"family": "House"}]})).await;
    server.create(&json!({"resourceType": "Practitioner", "name": [{"family": "Wilson"}]})).await;
    server.create(&json!({"resourceType": "Patient", "name": [{"family": "House"}]})).await;
    assert_eq!(server.delete(&format!("Practitioner/{house}")).await.status(), 204);
    let received = receiver.wait_for_events(2, WAIT).await;
    let methods: Vec<Value> = received[1..]
        .iter()
        .flat_map(|r| r.body["entry"].as_array().unwrap()[1..].to_vec())
        .map(|e| e["request"]["method"].clone())
        .collect();
    assert_eq!(methods, [json!("POST"), json!("DELETE")], "{received:#?}");
    let metadata = body(server.get("metadata").await).await;
    let subscription = metadata["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Subscription")
        .unwrap()
        .clone();
    let topics: Vec<&str> =
        subscription["extension"].as_array().unwrap().iter().filter_map(|e| e["valueCanonical"].as_str()).collect();
    assert!(topics.contains(&"http://hearth.dev/fhir/SubscriptionTopic/resource-changed"), "{topics:?}");
}

/// An e-mail channel says something new is waiting, never what.
async fn email_notifications_carry_no_health_data(db: Db) {
    let sink = common::smtp::SmtpSink::start().await;
    let settings =
        hearth::mail::MailSettings { smtp_url: Some(sink.url()), from: "Clinic <clinic@example.org>".into() };
    let mailer = hearth::mail::Mailer::new(&settings).unwrap();
    let server = TestServer::start_with(db, |s| hearth::server::Settings { mailer, ..s }).await;
    let ana = server.create(&json!({"resourceType": "Patient"})).await;
    let mut resource = subscription("result-final", &[&format!("Observation?patient=Patient/{ana}")], "", "empty");
    resource["channel"] = json!({"type": "email", "endpoint": "mailto:ana@example.org"});
    let created = body(server.post("Subscription", &resource).await).await;
    wait_status(&server, created["id"].as_str().unwrap(), "active").await;
    let mut result = observation(&ana, "final");
    result["valueString"] = json!("Glucose 240 mg/dL");
    server.create(&result).await;
    let delivered = sink.wait_for(1).await;
    assert_eq!(delivered[0].to, ["ana@example.org"]);
    let text = delivered[0].body();
    assert!(text.contains("Sign in"), "{text}");
    assert!(!text.contains("Glucose") && !text.contains("240") && !text.contains(&ana), "{text}");
}

/// A patient who changes a clinic's Subscription about them makes it theirs: it then runs with
/// the patient's access, never the clinic's.
async fn a_patient_taking_over_a_subscription_gets_only_their_own(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let ana = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let luis = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let clinic = Receiver::start().await;
    let filters = [format!("Observation?patient=Patient/{ana}"), "DiagnosticReport?category=LAB".to_string()];
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    let mut resource = subscription("result-final", &filters, &clinic.url, "full-resource");
    let created = body(smart.send(Method::POST, "Subscription", &admin, &resource).await).await;
    let id = created["id"].as_str().unwrap().to_string();
    clinic.wait_for(1, WAIT).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while body(smart.get(&format!("Subscription/{id}"), &admin).await).await["status"] != "active" {
        assert!(tokio::time::Instant::now() < deadline, "not activated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let scope =
        "openid fhirUser launch/patient patient/Subscription.cruds patient/Observation.rs patient/DiagnosticReport.rs";
    let ana_token = smart.user_token("ana", &format!("Patient/{ana}"), &[], scope).await;
    let own = Receiver::start().await;
    resource["id"] = json!(id);
    resource["status"] = json!("active");
    resource["channel"]["endpoint"] = json!(own.url);
    let response = smart.send(Method::PUT, &format!("Subscription/{id}"), &ana_token, &resource).await;
    assert_eq!(response.status(), 200, "{}", body(response).await);
    let report = |patient: &str| {
        json!({"resourceType": "DiagnosticReport", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}],
        "code": {"text": "panel"}, "subject": {"reference": format!("Patient/{patient}")}})
    };
    let luis_report = smart.create(&admin, &report(&luis)).await;
    let ana_report = smart.create(&admin, &report(&ana)).await;
    let received = own.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = serde_json::to_string(&own.received().iter().map(|r| r.body.clone()).collect::<Vec<_>>()).unwrap();
    assert!(text.contains(&ana_report) && !text.contains(&luis_report), "{received:#?}");
}

/// Two nodes on one PostgreSQL database: writes on both, every event delivered exactly once,
/// in order, whichever node's worker claims the subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_each_event_exactly_once() {
    let first = TestServer::start(Db::Postgres).await;
    let second = first.second_node().await;
    let receiver = Receiver::start().await;
    let (ana, _) = patient_subscribed(&first, &receiver).await;
    // The second node puts the subscription in force within its watch interval.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let writes = 40;
    let tasks: Vec<_> = (0..writes)
        .map(|i| {
            let node = if i % 2 == 0 { &first } else { &second };
            let resource = observation(&ana, "final");
            async move { node.create(&resource).await }
        })
        .collect();
    let written: std::collections::HashSet<String> = futures::future::join_all(tasks).await.into_iter().collect();
    receiver.wait_for(2, WAIT).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let events: Vec<Value> = receiver.received()[1..].iter().flat_map(|r| r.events()).collect();
        if events.len() >= writes || tokio::time::Instant::now() > deadline {
            let numbers: Vec<String> =
                events.iter().map(|e| e["part"][0]["valueString"].as_str().unwrap().to_string()).collect();
            let expected: Vec<String> = (1..=writes).map(|n| n.to_string()).collect();
            assert_eq!(numbers, expected, "each event once, in order");
            let focused: std::collections::HashSet<String> = events
                .iter()
                .map(|e| {
                    e["part"][2]["valueReference"]["reference"]
                        .as_str()
                        .unwrap()
                        .rsplit('/')
                        .next()
                        .unwrap()
                        .to_string()
                })
                .collect();
            assert_eq!(focused, written, "every write, from both nodes");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events: usize = receiver.received()[1..].iter().map(|r| r.events().len()).sum();
    assert_eq!(events, writes, "no duplicates afterwards");
}

on_both_databases!(
    a_patient_taking_over_a_subscription_gets_only_their_own,
    events_outlive_a_restart,
    heartbeats_come_while_nothing_happens,
    the_generic_topic_follows_one_type,
    email_notifications_carry_no_health_data,
    rest_hooks_get_a_handshake_then_the_events_their_filters_select,
    payloads_are_empty_id_only_or_full,
    subscriptions_the_server_cannot_honour_are_refused,
    rest_hooks_to_the_servers_own_network_are_refused_by_default,
    channel_headers_are_write_only,
    only_staff_add_topics_and_a_url_names_one,
    patients_email_only_themselves,
    appointment_document_and_refill_topics,
    a_receiver_that_is_down_gets_the_events_later,
    a_failed_handshake_leaves_the_subscription_in_error,
    a_rolled_back_write_causes_no_event,
    patients_receive_only_their_own_events,
);
