//! Reminders: time-based events of the `appointment-reminder` and `care-due` topics, raised by
//! each node's scan once per subscription and appointment start or due date.

use hearth::server::Settings;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::*;

const REMINDER_HOURS: &str = "http://hearth.dev/fhir/StructureDefinition/reminder-hours-before";

/// A server whose nodes scan for reminders every 200 ms (the default lead: 24 hours).
fn scanning(mut settings: Settings) -> Settings {
    settings.subscriptions.reminder_scan = Duration::from_millis(200);
    settings
}

/// `hours` from now, to the second.
fn in_hours(hours: i64) -> String {
    let at = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + time::Duration::hours(hours);
    at.format(&Rfc3339).unwrap()
}

fn today() -> String {
    OffsetDateTime::now_utc().date().to_string()
}

fn appointment(patient: &str, status: &str, start: &str) -> Value {
    json!({"resourceType": "Appointment", "status": status, "start": start, "end": start,
        "participant": [{"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"}]})
}

/// The focus of each event received so far (`Appointment/1`), in order.
fn focuses(receiver: &Receiver) -> Vec<String> {
    let events = receiver.received().iter().flat_map(|r| r.events()).collect::<Vec<_>>();
    events
        .iter()
        .map(|e| {
            let reference = e["part"][2]["valueReference"]["reference"].as_str().unwrap();
            reference.rsplit('/').take(2).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("/")
        })
        .collect()
}

/// Waits for `count` events, then a second more (five scans): the focuses, sorted.
async fn settled_focuses(receiver: &Receiver, count: usize) -> Vec<String> {
    receiver.wait_for_events(count, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut focuses = focuses(receiver);
    focuses.sort();
    focuses
}

async fn appointments_are_reminded_once_before_they_start(db: Db) {
    let server = TestServer::start_with(db, scanning).await;
    let ana = server.create(&json!({"resourceType": "Patient"})).await;
    let luis = server.create(&json!({"resourceType": "Patient"})).await;
    let soon = server.create(&appointment(&ana, "booked", &in_hours(2))).await;
    let in_three_days = server.create(&appointment(&ana, "booked", &in_hours(70))).await;
    server.create(&appointment(&ana, "cancelled", &in_hours(3))).await;
    server.create(&appointment(&ana, "booked", &in_hours(-1))).await;
    server.create(&appointment(&luis, "booked", &in_hours(2))).await;
    let filter = format!("Appointment?patient=Patient/{ana}");

    let default_lead = Receiver::start().await;
    let id = subscribed(&server, &default_lead, "appointment-reminder", &[&filter], "id-only").await;
    assert_eq!(
        settled_focuses(&default_lead, 1).await,
        [format!("Appointment/{soon}")],
        "within 24 hours, booked, ana's, not started; once however many scans"
    );

    let long_lead = Receiver::start().await;
    let mut three_days = subscription("appointment-reminder", &[&filter], &long_lead.url, "id-only");
    three_days["extension"] = json!([{"url": REMINDER_HOURS, "valuePositiveInt": 72}]);
    let created = body(server.post("Subscription", &three_days).await).await;
    wait_status(&server, created["id"].as_str().unwrap(), "active").await;
    let mut expected = vec![format!("Appointment/{soon}"), format!("Appointment/{in_three_days}")];
    expected.sort();
    assert_eq!(settled_focuses(&long_lead, 2).await, expected, "its own lead of 72 hours");

    // Rescheduled: reminded again, for the new start. Cancelled: nothing more.
    let mut moved = body(server.get(&format!("Appointment/{soon}")).await).await;
    moved["start"] = json!(in_hours(5));
    assert_eq!(server.put(&format!("Appointment/{soon}"), &moved).await.status(), 200);
    let mut cancelled = body(server.get(&format!("Appointment/{in_three_days}")).await).await;
    cancelled["status"] = json!("cancelled");
    assert_eq!(server.put(&format!("Appointment/{in_three_days}"), &cancelled).await.status(), 200);
    assert_eq!(settled_focuses(&default_lead, 2).await, vec![format!("Appointment/{soon}"); 2]);
    let status = body(server.get(&format!("Subscription/{id}/$status")).await).await;
    let parameters = status["entry"][0]["resource"]["parameter"].as_array().unwrap().clone();
    let since = parameters.iter().find(|p| p["name"] == "events-since-subscription-start").unwrap();
    assert_eq!(since["valueString"], "2");
}

async fn care_due_today_is_reminded_once(db: Db) {
    let server = TestServer::start_with(db, scanning).await;
    let ana = server.create(&json!({"resourceType": "Patient"})).await;
    let patient = json!({"reference": format!("Patient/{ana}")});
    // Two days ahead: still not due if the test runs across midnight.
    let later = (OffsetDateTime::now_utc().date() + time::Duration::days(2)).to_string();
    let order = |status: &str, day: &str| {
        json!({"resourceType": "ServiceRequest", "status": status, "intent": "order",
            "code": {"text": "HbA1c"}, "subject": patient, "occurrenceDateTime": day})
    };
    let request = server.create(&order("active", &today())).await;
    server.create(&order("active", &later)).await;
    server.create(&order("completed", &today())).await;
    let plan = server
        .create(&json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": patient,
            "activity": [{"detail": {"status": "scheduled", "scheduledPeriod": {"start": today()}}}]}))
        .await;
    let due = |code: &str, day: &str| json!({"code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "value": day});
    let recommendation = server
        .create(&json!({"resourceType": "ImmunizationRecommendation", "patient": patient, "date": today(),
            "recommendation": [{"vaccineCode": [{"text": "Influenza"}],
                "forecastStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/immunization-recommendation-status", "code": "due"}]},
                "dateCriterion": [due("30981-5", "2020-01-01"), due("30980-7", &today())]}]}))
        .await;

    let receiver = Receiver::start().await;
    let filters: Vec<String> = ["ServiceRequest", "CarePlan", "ImmunizationRecommendation"]
        .iter()
        .map(|t| format!("{t}?patient=Patient/{ana}"))
        .collect();
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    subscribed(&server, &receiver, "care-due", &filters, "id-only").await;
    let mut expected = vec![
        format!("CarePlan/{plan}"),
        format!("ImmunizationRecommendation/{recommendation}"),
        format!("ServiceRequest/{request}"),
    ];
    expected.sort();
    assert_eq!(settled_focuses(&receiver, 3).await, expected, "what is due today, once");
}

async fn reminder_leads_are_checked(db: Db) {
    let server = TestServer::start(db).await;
    // Not a positiveInt: refused by the datatype checks (400); one the server cannot honour: 422.
    let cases = [
        ("appointment-reminder", json!(0), 400),
        ("appointment-reminder", json!("24"), 400),
        ("appointment-reminder", json!(337), 422),
        ("result-final", json!(24), 422),
    ];
    for (topic, hours, expected) in cases {
        let mut resource = subscription(topic, &[], "http://127.0.0.1:9/hook", "id-only");
        resource["extension"] = json!([{"url": REMINDER_HOURS, "valuePositiveInt": hours}]);
        let response = server.post("Subscription", &resource).await;
        assert_eq!(response.status(), expected, "{topic} {hours}");
        let outcome = body(response).await;
        assert!(
            outcome["issue"][0]["expression"][0].as_str().unwrap().starts_with("Subscription.extension"),
            "{outcome}"
        );
    }
    let total = body(server.get("Subscription?_summary=count").await).await;
    assert_eq!(total["total"], 0, "nothing stored");
}

/// `Subscription.end`: no events after it, and the server turns the subscription off.
async fn a_subscription_is_off_after_its_end(db: Db) {
    let server = TestServer::start_with(db, scanning).await;
    let receiver = Receiver::start().await;
    let (ana, id) = patient_subscribed(&server, &receiver).await;
    server.create(&observation(&ana, "final")).await;
    receiver.wait_for_events(1, WAIT).await;
    // Given an end once active, so that how long the activation took does not matter.
    let mut ending = body(server.get(&format!("Subscription/{id}")).await).await;
    let end = OffsetDateTime::now_utc() + time::Duration::seconds(1);
    ending["end"] = json!(end.format(&Rfc3339).unwrap());
    assert_eq!(server.put(&format!("Subscription/{id}"), &ending).await.status(), 200);
    let off = wait_status(&server, &id, "off").await;
    assert!(OffsetDateTime::now_utc() >= end, "not before its end");
    assert!(off["error"].as_str().unwrap().contains("end"), "{off}");
    server.create(&observation(&ana, "final")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().iter().map(|r| r.events().len()).sum::<usize>(), 1, "nothing after its end");
}

/// Events are forgotten after the retention, delivered or not; their count stays.
async fn old_events_are_forgotten(db: Db) {
    let server = TestServer::start_with(db, |settings| {
        let mut settings = scanning(settings);
        settings.subscriptions.event_retention = time::Duration::seconds(3);
        settings
    })
    .await;
    let receiver = Receiver::start().await;
    let (ana, id) = patient_subscribed(&server, &receiver).await;
    server.create(&observation(&ana, "final")).await;
    let events = |replay: &Value| replay["entry"].as_array().map_or(0, |entries| entries.len()) - 1;
    // Recorded with the write: there at once.
    let replay = body(server.get(&format!("Subscription/{id}/$events?eventsSinceNumber=1")).await).await;
    assert_eq!(events(&replay), 1, "kept at first: {replay}");
    tokio::time::sleep(Duration::from_millis(3600)).await;
    let replay = body(server.get(&format!("Subscription/{id}/$events?eventsSinceNumber=1")).await).await;
    assert_eq!(events(&replay), 0, "forgotten: {replay}");
    let status = body(server.get(&format!("Subscription/{id}/$status")).await).await;
    let parameters = status["entry"][0]["resource"]["parameter"].as_array().unwrap().clone();
    let since = parameters.iter().find(|p| p["name"] == "events-since-subscription-start").unwrap();
    assert_eq!(since["valueString"], "1", "still counted");
}

/// Two nodes on one PostgreSQL database scanning at once: each reminder recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_send_a_reminder_once() {
    let first = TestServer::start_with(Db::Postgres, scanning).await;
    let second = first.second_node().await;
    let ana = first.create(&json!({"resourceType": "Patient"})).await;
    let resources: Vec<Value> = (1..=10).map(|i| appointment(&ana, "booked", &in_hours(i))).collect();
    let appointments: Vec<String> = futures::future::join_all(resources.iter().map(|r| first.create(r))).await;
    let receiver = Receiver::start().await;
    let filter = format!("Appointment?patient=Patient/{ana}");
    subscribed(&second, &receiver, "appointment-reminder", &[&filter], "id-only").await;
    let mut expected: Vec<String> = appointments.iter().map(|id| format!("Appointment/{id}")).collect();
    expected.sort();
    // Both nodes have the subscription in force within their watch interval, then scan.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(settled_focuses(&receiver, 10).await, expected, "each appointment once");
}

on_both_databases!(
    appointments_are_reminded_once_before_they_start,
    care_due_today_is_reminded_once,
    reminder_leads_are_checked,
    a_subscription_is_off_after_its_end,
    old_events_are_forgotten
);
