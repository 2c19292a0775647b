//! Self-scheduling end to end through HTTP, on both databases: `$find`, `$hold`, `$book`
//! (and rescheduling), `$cancel`, hold expiry, the refusals, and the invariant that no Slot is
//! held by two active Appointments on any write path (REST, batch, transaction, operations,
//! concurrent clients on one or two nodes).

mod common;

use std::time::Duration;

use common::smart::{smart_server, smart_server_with, Smart};
use common::{body, outcome, Db, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use time::OffsetDateTime;

/// An instant `days` from today at `hour:minute` UTC, as FHIR writes it.
fn at(days: i64, hour: u8, minute: u8) -> String {
    let day = (OffsetDateTime::now_utc() + time::Duration::days(days)).date();
    let instant = day.with_hms(hour, minute, 0).unwrap().assume_utc();
    instant.format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// A clinic: a practitioner with a schedule open for the next 60 days, two patients.
struct Clinic {
    practitioner: String,
    schedule: String,
    patient: String,
    other_patient: String,
}

async fn clinic(server: &TestServer) -> Clinic {
    let practitioner =
        server.create(&json!({"resourceType": "Practitioner", "name": [{"family": "Osei", "given": ["Ama"]}]})).await;
    let schedule = server
        .create(&json!({"resourceType": "Schedule", "active": true,
            "actor": [{"reference": format!("Practitioner/{practitioner}"), "display": "Dr. Ama Osei"}],
            "specialty": [{"coding": [{"system": "http://snomed.info/sct", "code": "394814009"}]}],
            "planningHorizon": {"start": at(-1, 0, 0), "end": at(60, 0, 0)}}))
        .await;
    let patient = server.create(&json!({"resourceType": "Patient", "name": [{"family": "Rivera"}]})).await;
    let other_patient = server.create(&json!({"resourceType": "Patient", "name": [{"family": "Nakamura"}]})).await;
    Clinic { practitioner, schedule, patient, other_patient }
}

/// A Slot of the schedule from `start` to `end`, in `status`.
async fn slot(server: &TestServer, clinic: &Clinic, start: &str, end: &str, status: &str) -> String {
    server
        .create(&json!({"resourceType": "Slot", "schedule": {"reference": format!("Schedule/{}", clinic.schedule)},
            "status": status, "start": start, "end": end,
            "appointmentType": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0276", "code": "ROUTINE"}]}}))
        .await
}

fn slot_status(slot: &Value) -> &str {
    slot["status"].as_str().unwrap()
}

async fn read(server: &TestServer, reference: &str) -> Value {
    body(server.get(reference).await).await
}

/// The resources of a bundle's `match` entries.
fn matches(bundle: &Value) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"].clone())
        .collect()
}

fn parameters(name: &str, resource: &Value) -> Value {
    json!({"resourceType": "Parameters", "parameter": [{"name": name, "resource": resource}]})
}

fn slot_of(appointment: &Value) -> String {
    appointment["slot"][0]["reference"].as_str().unwrap().to_string()
}

/// A booked Appointment of `patient` on `slot_id` from `start` to `end`.
fn booked(clinic: &Clinic, patient: &str, slot_id: &str, start: &str, end: &str) -> Value {
    json!({"resourceType": "Appointment", "status": "booked", "start": start, "end": end,
        "slot": [{"reference": format!("Slot/{slot_id}")}],
        "participant": [
            {"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"},
            {"actor": {"reference": format!("Practitioner/{}", clinic.practitioner)}, "status": "accepted"}]})
}

async fn find_hold_book_reschedule_and_cancel(db: Db) {
    let server = TestServer::start(db).await;
    let clinic = clinic(&server).await;
    let first = slot(&server, &clinic, &at(1, 9, 0), &at(1, 9, 15), "free").await;
    let second = slot(&server, &clinic, &at(1, 9, 15), &at(1, 9, 30), "free").await;
    let third = slot(&server, &clinic, &at(2, 9, 0), &at(2, 9, 15), "free").await;
    let blocked = slot(&server, &clinic, &at(1, 10, 0), &at(1, 10, 15), "busy-unavailable").await;
    let past = slot(&server, &clinic, &at(-1, 9, 0), &at(-1, 9, 15), "free").await;
    let beyond = slot(&server, &clinic, &at(70, 9, 0), &at(70, 9, 15), "free").await;

    let find = format!(
        "Appointment/$find?start={}&end={}&practitioner=Practitioner/{}&patient=Patient/{}",
        at(-2, 0, 0),
        at(80, 0, 0),
        clinic.practitioner,
        clinic.patient
    );
    let response = server.get(&find).await;
    assert_eq!(response.status(), 200);
    let proposals = matches(&body(response).await);
    let offered: Vec<String> = proposals.iter().map(slot_of).collect();
    assert_eq!(offered, [format!("Slot/{first}"), format!("Slot/{second}"), format!("Slot/{third}")]);
    for excluded in [&blocked, &past, &beyond] {
        assert!(!offered.contains(&format!("Slot/{excluded}")), "{excluded} is not offered");
    }
    let proposal = &proposals[0];
    assert_eq!(proposal["status"], "proposed");
    assert_eq!(proposal["start"], json!(at(1, 9, 0)));
    assert_eq!(proposal["appointmentType"]["coding"][0]["code"], "ROUTINE");
    let actors: Vec<&str> =
        proposal["participant"].as_array().unwrap().iter().map(|p| p["actor"]["reference"].as_str().unwrap()).collect();
    assert!(actors.contains(&format!("Practitioner/{}", clinic.practitioner).as_str()), "{actors:?}");
    assert!(actors.contains(&format!("Patient/{}", clinic.patient).as_str()), "{actors:?}");
    assert_eq!(server.search_ids("Appointment").await.len(), 0, "$find stores nothing");
    let counted = body(server.get(&format!("{find}&_count=1")).await).await;
    assert_eq!(matches(&counted).len(), 1);

    // Hold: pending, the slot busy-tentative, no longer offered, and not held twice.
    let held = server.post("Appointment/$hold", &parameters("appointment-resource", proposal)).await;
    assert_eq!(held.status(), 200);
    let held = body(held).await;
    let appointment = matches(&held)[0].clone();
    assert_eq!(appointment["status"], "pending");
    let note = held["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome").unwrap();
    assert!(note["resource"]["issue"][0]["diagnostics"].as_str().unwrap().contains("held until"));
    let id = appointment["id"].as_str().unwrap().to_string();
    assert_eq!(slot_status(&read(&server, &format!("Slot/{first}")).await), "busy-tentative");
    let offered: Vec<String> = matches(&body(server.get(&find).await).await).iter().map(slot_of).collect();
    assert!(!offered.contains(&format!("Slot/{first}")));
    let again = server.post("Appointment/$hold", &parameters("appointment-resource", proposal)).await;
    assert_eq!(again.status(), 409);
    assert!(outcome(again).await.contains("no longer free"));

    // Book the hold.
    let book = json!({"resourceType": "Parameters", "parameter": [
        {"name": "appointment-reference", "valueReference": {"reference": format!("Appointment/{id}")}}]});
    let response = server.post("Appointment/$book", &book).await;
    assert_eq!(response.status(), 200);
    assert_eq!(matches(&body(response).await)[0]["status"], "booked");
    assert_eq!(slot_status(&read(&server, &format!("Slot/{first}")).await), "busy");
    assert_eq!(read(&server, &format!("Appointment/{id}")).await["status"], "booked");

    // Reschedule to the second slot: booked and cancelled together.
    let reschedule = json!({"resourceType": "Parameters", "parameter": [
        {"name": "appointment-resource", "resource": proposals[1]},
        {"name": "cancelled-appt-id", "valueReference": {"reference": format!("Appointment/{id}")}}]});
    let response = server.post("Appointment/$book", &reschedule).await;
    assert_eq!(response.status(), 200);
    let written = matches(&body(response).await);
    assert_eq!(written.len(), 2);
    let new_id = written[0]["id"].as_str().unwrap().to_string();
    assert_eq!(written[0]["status"], "booked");
    let old = read(&server, &format!("Appointment/{id}")).await;
    assert_eq!(old["status"], "cancelled");
    assert_eq!(old["cancelationReason"]["text"], "Rescheduled");
    assert_eq!(slot_status(&read(&server, &format!("Slot/{first}")).await), "free");
    assert_eq!(slot_status(&read(&server, &format!("Slot/{second}")).await), "busy");

    // A reschedule whose new slot is taken changes nothing.
    let taken = json!({"resourceType": "Parameters", "parameter": [
        {"name": "appointment-resource", "resource": proposals[1]},
        {"name": "cancelled-appt-id", "valueReference": {"reference": format!("Appointment/{new_id}")}}]});
    assert_eq!(server.post("Appointment/$book", &taken).await.status(), 409);
    assert_eq!(read(&server, &format!("Appointment/{new_id}")).await["status"], "booked");

    // $cancel frees the slot; cancelling twice is refused.
    let cancel =
        json!({"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "Feeling better"}]});
    let response = server.post(&format!("Appointment/{new_id}/$cancel"), &cancel).await;
    assert_eq!(response.status(), 200);
    let cancelled = body(response).await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["cancelationReason"]["text"], "Feeling better");
    assert_eq!(slot_status(&read(&server, &format!("Slot/{second}")).await), "free");
    assert_eq!(server.post(&format!("Appointment/{new_id}/$cancel"), &cancel).await.status(), 422);

    // A plain update to cancelled frees the slot as well.
    let response = server.post("Appointment/$book", &parameters("appointment-resource", &proposals[2])).await;
    let mut third_booking = matches(&body(response).await)[0].clone();
    assert_eq!(slot_status(&read(&server, &format!("Slot/{third}")).await), "busy");
    third_booking["status"] = json!("cancelled");
    let path = format!("Appointment/{}", third_booking["id"].as_str().unwrap());
    assert_eq!(server.put(&path, &third_booking).await.status(), 200);
    assert_eq!(slot_status(&read(&server, &format!("Slot/{third}")).await), "free");
}

async fn no_slot_is_booked_twice_on_any_write_path(db: Db) {
    let server = TestServer::start(db).await;
    let clinic = clinic(&server).await;
    let (start, end) = (at(3, 14, 0), at(3, 14, 30));
    let a = slot(&server, &clinic, &start, &end, "free").await;
    let b = slot(&server, &clinic, &at(3, 15, 0), &at(3, 15, 30), "free").await;
    let c = slot(&server, &clinic, &at(3, 16, 0), &at(3, 16, 30), "free").await;
    let d = slot(&server, &clinic, &at(3, 17, 0), &at(3, 17, 30), "free").await;
    let count = |slot_id: &str| {
        let server = &server;
        let query = format!("Appointment?slot=Slot/{slot_id}");
        async move { server.search_ids(&query).await.len() }
    };

    // REST create: the first books, the second is refused and not stored.
    let response = server.post("Appointment", &booked(&clinic, &clinic.patient, &a, &start, &end)).await;
    assert_eq!(response.status(), 201);
    assert_eq!(slot_status(&read(&server, &format!("Slot/{a}")).await), "busy");
    let response = server.post("Appointment", &booked(&clinic, &clinic.other_patient, &a, &start, &end)).await;
    assert_eq!(response.status(), 409);
    assert!(outcome(response).await.contains(&format!("Slot/{a} is already taken")));
    assert_eq!(count(&a).await, 1);

    // The slot's status follows its appointment: not freed by hand, not made busy by hand.
    let mut slot_a = read(&server, &format!("Slot/{a}")).await;
    slot_a["status"] = json!("free");
    let response = server.put(&format!("Slot/{a}"), &slot_a).await;
    assert_eq!(response.status(), 409);
    assert!(outcome(response).await.contains("follows the appointment"));
    assert_eq!(server.delete(&format!("Slot/{a}")).await.status(), 409);
    let mut moved = read(&server, &format!("Slot/{a}")).await;
    (moved["start"], moved["end"]) = (json!(at(3, 18, 0)), json!(at(3, 18, 30)));
    let response = server.put(&format!("Slot/{a}"), &moved).await;
    assert_eq!(response.status(), 409, "a booked slot does not move under its appointment");
    assert!(outcome(response).await.contains("would no longer be its Slots'"));
    let mut slot_d = read(&server, &format!("Slot/{d}")).await;
    slot_d["status"] = json!("busy");
    assert_eq!(server.put(&format!("Slot/{d}"), &slot_d).await.status(), 422);
    slot_d["status"] = json!("busy-unavailable");
    assert_eq!(server.put(&format!("Slot/{d}"), &slot_d).await.status(), 200);
    let on_blocked = booked(&clinic, &clinic.patient, &d, &at(3, 17, 0), &at(3, 17, 30));
    assert_eq!(server.post("Appointment", &on_blocked).await.status(), 409);

    // A transaction with two bookings of one slot stores neither.
    let (b_start, b_end) = (at(3, 15, 0), at(3, 15, 30));
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": booked(&clinic, &clinic.patient, &b, &b_start, &b_end), "request": {"method": "POST", "url": "Appointment"}},
        {"resource": booked(&clinic, &clinic.other_patient, &b, &b_start, &b_end), "request": {"method": "POST", "url": "Appointment"}}]});
    assert_eq!(server.post("", &transaction).await.status(), 409);
    assert_eq!(count(&b).await, 0);
    assert_eq!(slot_status(&read(&server, &format!("Slot/{b}")).await), "free");

    // A batch: each entry on its own, one wins.
    let (c_start, c_end) = (at(3, 16, 0), at(3, 16, 30));
    let mut batch = transaction.clone();
    batch["type"] = json!("batch");
    batch["entry"][0]["resource"] = booked(&clinic, &clinic.patient, &c, &c_start, &c_end);
    batch["entry"][1]["resource"] = booked(&clinic, &clinic.other_patient, &c, &c_start, &c_end);
    let response = body(server.post("", &batch).await).await;
    let statuses: Vec<&str> =
        response["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|s| s.starts_with("201")).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| s.starts_with("409")).count(), 1, "{statuses:?}");
    assert_eq!(count(&c).await, 1);

    // A slot and its booking written together in a transaction: the slot follows.
    let together = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:5f1e0c1a-2f53-4a55-9a47-0c9e2b0f6a01",
         "resource": {"resourceType": "Slot", "schedule": {"reference": format!("Schedule/{}", clinic.schedule)},
            "status": "free", "start": at(4, 9, 0), "end": at(4, 9, 30)},
         "request": {"method": "POST", "url": "Slot"}},
        {"resource": {"resourceType": "Appointment", "status": "booked", "start": at(4, 9, 0), "end": at(4, 9, 30),
            "slot": [{"reference": "urn:uuid:5f1e0c1a-2f53-4a55-9a47-0c9e2b0f6a01"}],
            "participant": [{"actor": {"reference": format!("Patient/{}", clinic.patient)}, "status": "accepted"}]},
         "request": {"method": "POST", "url": "Appointment"}}]});
    let response = body(server.post("", &together).await).await;
    let slot_location = response["entry"][0]["response"]["location"].as_str().unwrap();
    let new_slot = slot_location.split("/_history").next().unwrap().rsplit('/').next().unwrap();
    assert_eq!(slot_status(&read(&server, &format!("Slot/{new_slot}")).await), "busy");

    // PATCH to cancelled frees the slot, and the other patient can then book it.
    let first = server.search_ids(&format!("Appointment?slot=Slot/{a}")).await.remove(0);
    let patch = json!([{"op": "replace", "path": "/status", "value": "cancelled"}]);
    assert_eq!(server.json_patch(&format!("Appointment/{first}"), &patch, &[]).await.status(), 200);
    assert_eq!(slot_status(&read(&server, &format!("Slot/{a}")).await), "free");
    let response = server.post("Appointment", &booked(&clinic, &clinic.other_patient, &a, &start, &end)).await;
    assert_eq!(response.status(), 201);

    // Bad bookings: an unknown slot, times that are not the slot's.
    let unknown = booked(&clinic, &clinic.patient, "no-such-slot", &start, &end);
    let response = server.post("Appointment", &unknown).await;
    assert_eq!(response.status(), 422);
    assert!(outcome(response).await.contains("does not exist"));
    let e = slot(&server, &clinic, &at(5, 9, 0), &at(5, 9, 30), "free").await;
    let shifted = booked(&clinic, &clinic.patient, &e, &at(5, 9, 10), &at(5, 9, 40));
    let response = server.post("Appointment", &shifted).await;
    assert_eq!(response.status(), 422);
    assert!(outcome(response).await.contains("its Slots from"));
    assert_eq!(count(&e).await, 0);
}

async fn operations_refuse_bad_input(db: Db) {
    let server = TestServer::start(db).await;
    let clinic = clinic(&server).await;
    let free = slot(&server, &clinic, &at(1, 9, 0), &at(1, 9, 15), "free").await;
    let find = |query: String| {
        let server = &server;
        async move { server.get(&format!("Appointment/$find?{query}")).await }
    };
    let response = find(format!("start={}&end={}", at(5, 0, 0), at(4, 0, 0))).await;
    assert_eq!(response.status(), 400);
    assert!(outcome(response).await.contains("end must be after start"));
    let response = find(format!("start={}&end={}", at(1, 0, 0), at(400, 0, 0))).await;
    assert_eq!(response.status(), 400);
    assert!(outcome(response).await.contains("366 days"));
    assert_eq!(find(format!("end={}", at(4, 0, 0))).await.status(), 400, "start is required");
    let response = find(format!("start={}&end={}&practitioner=Practitioner/nobody", at(0, 0, 0), at(4, 0, 0))).await;
    assert_eq!(response.status(), 422);
    assert!(outcome(response).await.contains("Practitioner/nobody is not known"));
    assert_eq!(server.post("Appointment/$find", &json!({"resourceType": "Parameters"})).await.status(), 400);

    let proposal = |slot_ref: &str, start: &str, end: &str| {
        json!({"resourceType": "Appointment", "status": "proposed", "start": start, "end": end,
            "slot": [{"reference": slot_ref}],
            "participant": [{"actor": {"reference": format!("Patient/{}", clinic.patient)}}]})
    };
    for (bad, expected, says) in [
        (proposal("Slot/missing", &at(1, 9, 0), &at(1, 9, 15)), 422, "does not exist"),
        (proposal(&format!("Slot/{free}"), &at(1, 9, 5), &at(1, 9, 15)), 422, "its Slots from"),
        (
            json!({"resourceType": "Appointment", "status": "proposed", "start": at(1, 9, 0), "end": at(1, 9, 15),
            "slot": [{"reference": format!("Slot/{free}")}]}),
            422,
            "no Patient participant",
        ),
        (
            {
                let mut booked = proposal(&format!("Slot/{free}"), &at(1, 9, 0), &at(1, 9, 15));
                booked["status"] = json!("booked");
                booked
            },
            422,
            "takes one that is proposed",
        ),
    ] {
        for operation in ["$hold", "$book"] {
            let response =
                server.post(&format!("Appointment/{operation}"), &parameters("appointment-resource", &bad)).await;
            assert_eq!(response.status(), expected, "{operation} {bad}");
            let text = outcome(response).await;
            assert!(text.contains(says) || operation == "$book" && says.contains("proposed"), "{operation}: {text}");
        }
    }
    let both = json!({"resourceType": "Parameters", "parameter": [
        {"name": "appointment-resource", "resource": proposal(&format!("Slot/{free}"), &at(1, 9, 0), &at(1, 9, 15))},
        {"name": "appointment-reference", "valueReference": {"reference": "Appointment/x"}}]});
    assert_eq!(server.post("Appointment/$book", &both).await.status(), 400);
    assert_eq!(server.get("Appointment/$hold").await.status(), 405, "$hold changes data");
    assert_eq!(server.search_ids("Appointment").await.len(), 0, "nothing stored");
    assert_eq!(slot_status(&read(&server, &format!("Slot/{free}")).await), "free");
}

async fn an_expired_hold_frees_its_slot(db: Db) {
    let server = TestServer::start_with(db, |mut settings| {
        settings.scheduling.hold = time::Duration::seconds(1);
        settings
    })
    .await;
    let clinic = clinic(&server).await;
    let free = slot(&server, &clinic, &at(1, 11, 0), &at(1, 11, 15), "free").await;
    let proposal = json!({"resourceType": "Appointment", "status": "proposed", "start": at(1, 11, 0), "end": at(1, 11, 15),
        "slot": [{"reference": format!("Slot/{free}")}],
        "participant": [{"actor": {"reference": format!("Patient/{}", clinic.patient)}}]});
    let held = body(server.post("Appointment/$hold", &parameters("appointment-resource", &proposal)).await).await;
    let id = matches(&held)[0]["id"].as_str().unwrap().to_string();
    assert_eq!(slot_status(&read(&server, &format!("Slot/{free}")).await), "busy-tentative");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let appointment = read(&server, &format!("Appointment/{id}")).await;
        if appointment["status"] == "cancelled" {
            assert!(appointment["cancelationReason"]["text"].as_str().unwrap().contains("hold expired"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the hold expires");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(slot_status(&read(&server, &format!("Slot/{free}")).await), "free");
    // A hold made by a plain create of a pending Appointment expires alike.
    let mut pending = proposal.clone();
    pending["status"] = json!("pending");
    pending["participant"][0]["status"] = json!("accepted");
    let id = body(server.post("Appointment", &pending).await).await["id"].as_str().unwrap().to_string();
    assert_eq!(slot_status(&read(&server, &format!("Slot/{free}")).await), "busy-tentative");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while read(&server, &format!("Appointment/{id}")).await["status"] != "cancelled" {
        assert!(std::time::Instant::now() < deadline, "the hold expires");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(slot_status(&read(&server, &format!("Slot/{free}")).await), "free");
    // A booked hold does not expire.
    let held = body(server.post("Appointment/$hold", &parameters("appointment-resource", &proposal)).await).await;
    let id = matches(&held)[0]["id"].as_str().unwrap().to_string();
    let book = json!({"resourceType": "Parameters", "parameter": [
        {"name": "appointment-reference", "valueReference": {"reference": format!("Appointment/{id}")}}]});
    assert_eq!(server.post("Appointment/$book", &book).await.status(), 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(read(&server, &format!("Appointment/{id}")).await["status"], "booked");
    assert_eq!(slot_status(&read(&server, &format!("Slot/{free}")).await), "busy");
}

/// A hold's end is a job in the database: a restart does not lose it.
async fn a_hold_ends_after_a_restart(db: Db) {
    let server = TestServer::start_with(db, |mut settings| {
        settings.scheduling.hold = time::Duration::seconds(2);
        settings
    })
    .await;
    let clinic = clinic(&server).await;
    let free = slot(&server, &clinic, &at(1, 12, 0), &at(1, 12, 15), "free").await;
    let proposal = json!({"resourceType": "Appointment", "status": "proposed", "start": at(1, 12, 0), "end": at(1, 12, 15),
        "slot": [{"reference": format!("Slot/{free}")}],
        "participant": [{"actor": {"reference": format!("Patient/{}", clinic.patient)}}]});
    let held = body(server.post("Appointment/$hold", &parameters("appointment-resource", &proposal)).await).await;
    let id = matches(&held)[0]["id"].as_str().unwrap().to_string();
    let server = server.restart().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while read(&server, &format!("Appointment/{id}")).await["status"] != "cancelled" {
        assert!(std::time::Instant::now() < deadline, "the hold ends after the restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(slot_status(&read(&server, &format!("Slot/{free}")).await), "free");
}

async fn patients_book_only_for_themselves(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let create = |resource: Value| {
        let (smart, admin) = (&smart, &admin);
        async move { smart.create(admin, &resource).await }
    };
    let practitioner = create(json!({"resourceType": "Practitioner", "name": [{"family": "Osei"}]})).await;
    let schedule =
        create(json!({"resourceType": "Schedule", "actor": [{"reference": format!("Practitioner/{practitioner}")}]}))
            .await;
    let ana = create(json!({"resourceType": "Patient", "name": [{"family": "Rivera"}]})).await;
    let luis = create(json!({"resourceType": "Patient", "name": [{"family": "Nakamura"}]})).await;
    let mut slots = Vec::new();
    for hour in [9, 10, 11] {
        let slot = json!({"resourceType": "Slot", "schedule": {"reference": format!("Schedule/{schedule}")},
            "status": "free", "start": at(1, hour, 0), "end": at(1, hour, 30)});
        slots.push(create(slot).await);
    }
    let scope = "launch/patient patient/Appointment.cruds patient/Slot.rs patient/Patient.r";
    let ana_token = smart.user_token("ana", &format!("Patient/{ana}"), &[], scope).await;

    let find = |patient: &str| {
        format!("Appointment/$find?start={}&end={}&patient=Patient/{patient}", at(0, 0, 0), at(5, 0, 0))
    };
    let response = smart.get(&find(&ana), &ana_token).await;
    assert_eq!(response.status(), 200, "a patient finds a practitioner's free time");
    let proposals = matches(&body(response).await);
    assert_eq!(proposals.len(), 3);
    let unnamed = format!("Appointment/$find?start={}&end={}", at(0, 0, 0), at(5, 0, 0));
    let unnamed = matches(&body(smart.get(&unnamed, &ana_token).await).await);
    assert_eq!(unnamed[0]["participant"], proposals[0]["participant"], "for her own patient when she names none");
    assert_eq!(smart.get(&find(&luis), &ana_token).await.status(), 422, "another patient is not known to her");

    let book = |proposal: &Value| parameters("appointment-resource", proposal);
    let response = smart.send(Method::POST, "Appointment/$book", &ana_token, &book(&proposals[0])).await;
    assert_eq!(response.status(), 200);
    let anas = matches(&body(response).await)[0]["id"].as_str().unwrap().to_string();
    let mut for_luis = proposals[1].clone();
    for_luis["participant"][1]["actor"]["reference"] = json!(format!("Patient/{luis}"));
    let response = smart.send(Method::POST, "Appointment/$book", &ana_token, &book(&for_luis)).await;
    assert_eq!(response.status(), 403, "not for another patient");
    let luiss = smart
        .create(&admin, &{
            let mut appointment = for_luis.clone();
            appointment["status"] = json!("booked");
            appointment
        })
        .await;
    let response = smart
        .send(Method::POST, &format!("Appointment/{luiss}/$cancel"), &ana_token, &json!({"resourceType": "Parameters"}))
        .await;
    assert_eq!(response.status(), 404, "another patient's appointment does not exist for her");
    let slot = body(smart.get(&format!("Slot/{}", slots[1]), &ana_token).await).await;
    assert_eq!(slot["status"], "busy", "she sees that the slot is taken");
    assert!(!slot.to_string().contains(&luis), "but not by whom");
    let reschedule = json!({"resourceType": "Parameters", "parameter": [
        {"name": "appointment-resource", "resource": proposals[2]},
        {"name": "cancelled-appt-id", "valueReference": {"reference": format!("Appointment/{luiss}")}}]});
    let response = smart.send(Method::POST, "Appointment/$book", &ana_token, &reschedule).await;
    assert_eq!(response.status(), 404, "nor can she cancel it by rescheduling");
    assert_eq!(body(smart.get(&format!("Slot/{}", slots[2]), &admin).await).await["status"], "free");
    let response = smart
        .send(Method::POST, &format!("Appointment/{anas}/$cancel"), &ana_token, &json!({"resourceType": "Parameters"}))
        .await;
    assert_eq!(response.status(), 200, "she cancels her own");

    // A parent books for the child they act for, and for nobody else.
    let scope = "user/Appointment.cruds user/Slot.rs user/Patient.r";
    let mum_token = smart.user_token("mum", "RelatedPerson/rp1", &[&ana], scope).await;
    let response = smart.send(Method::POST, "Appointment/$book", &mum_token, &book(&proposals[0])).await;
    assert_eq!(response.status(), 200, "for her child");
    let mut later_for_luis = proposals[2].clone();
    later_for_luis["participant"][1]["actor"]["reference"] = json!(format!("Patient/{luis}"));
    let response = smart.send(Method::POST, "Appointment/$hold", &mum_token, &book(&later_for_luis)).await;
    assert_eq!(response.status(), 403, "not for another child");
    assert_eq!(body(smart.get(&format!("Slot/{}", slots[2]), &admin).await).await["status"], "free");
}

async fn patients_cannot_cancel_within_the_cutoff(db: Db) {
    let server = smart_server_with(db, |mut settings| {
        settings.scheduling.cancel_cutoff = Some(time::Duration::hours(48));
        settings
    })
    .await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let schedule =
        smart.create(&admin, &json!({"resourceType": "Schedule", "actor": [{"reference": "Location/l1"}]})).await;
    let ana = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let mut appointments = Vec::new();
    for days in [1, 7] {
        let slot = smart
            .create(
                &admin,
                &json!({"resourceType": "Slot", "schedule": {"reference": format!("Schedule/{schedule}")},
                "status": "free", "start": at(days, 9, 0), "end": at(days, 9, 30)}),
            )
            .await;
        let appointment = json!({"resourceType": "Appointment", "status": "booked", "start": at(days, 9, 0), "end": at(days, 9, 30),
            "slot": [{"reference": format!("Slot/{slot}")}],
            "participant": [{"actor": {"reference": format!("Patient/{ana}")}, "status": "accepted"}]});
        appointments.push(smart.create(&admin, &appointment).await);
    }
    let scope = "launch/patient patient/Appointment.cruds";
    let ana_token = smart.user_token("ana", &format!("Patient/{ana}"), &[], scope).await;
    let cancel = json!({"resourceType": "Parameters"});
    let response =
        smart.send(Method::POST, &format!("Appointment/{}/$cancel", appointments[0]), &ana_token, &cancel).await;
    assert_eq!(response.status(), 422, "tomorrow is inside the 48-hour cut-off");
    assert!(outcome(response).await.contains("call the clinic"));
    let mut put = body(smart.get(&format!("Appointment/{}", appointments[0]), &ana_token).await).await;
    put["status"] = json!("cancelled");
    let response = smart.send(Method::PUT, &format!("Appointment/{}", appointments[0]), &ana_token, &put).await;
    assert_eq!(response.status(), 422, "an update to cancelled is the same cancellation");
    let response =
        smart.send(Method::POST, &format!("Appointment/{}/$cancel", appointments[1]), &ana_token, &cancel).await;
    assert_eq!(response.status(), 200, "next week is not");
    let response = smart.send(Method::POST, &format!("Appointment/{}/$cancel", appointments[0]), &admin, &cancel).await;
    assert_eq!(response.status(), 200, "the clinic may");
}

/// 100 clients race to book 10 slots (on PostgreSQL through two nodes), once with `$book` and
/// once with plain creates of booked Appointments (which no operation checks first): exactly
/// 10 win, the others get 409, and every slot ends busy with exactly one appointment.
async fn concurrent_bookings_never_double_book(db: Db) {
    let server = TestServer::start(db).await;
    let second = match db {
        Db::Postgres => Some(server.second_node().await),
        Db::Sqlite => None,
    };
    let nodes: Vec<&TestServer> = std::iter::once(&server).chain(second.as_ref()).collect();
    let clinic = clinic(&server).await;
    for (day, path) in [(2, "Appointment/$book"), (3, "Appointment")] {
        let mut proposals = Vec::new();
        for i in 0..10u8 {
            let (start, end) = (at(day, 8 + i, 0), at(day, 8 + i, 30));
            let slot_id = slot(&server, &clinic, &start, &end, "free").await;
            proposals.push(booked(&clinic, &clinic.patient, &slot_id, &start, &end));
        }
        let attempts = (0..100).map(|i| {
            let node = nodes[i % nodes.len()];
            let request = match path {
                "Appointment" => proposals[i % 10].clone(),
                _ => {
                    let mut proposal = proposals[i % 10].clone();
                    proposal["status"] = json!("proposed");
                    parameters("appointment-resource", &proposal)
                }
            };
            async move { node.post(path, &request).await.status().as_u16() }
        });
        let statuses = futures::future::join_all(attempts).await;
        let won = if path == "Appointment" { 201 } else { 200 };
        assert_eq!(statuses.iter().filter(|s| **s == won).count(), 10, "{path}: {statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 409).count(), 90, "{path}: {statuses:?}");
        for proposal in &proposals {
            let slot_ref = slot_of(proposal);
            assert_eq!(slot_status(&read(&server, &slot_ref).await), "busy");
            let holders = server.search_ids(&format!("Appointment?slot={slot_ref}")).await;
            assert_eq!(holders.len(), 1, "{path}: one appointment on {slot_ref}, the losers stored nothing");
        }
    }
}

async fn clinics_generate_slots_and_publish_them(db: Db) {
    let server = smart_server_with(db, |mut settings| {
        settings.scheduling.publish_slots = true;
        settings
    })
    .await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let practitioner =
        smart.create(&admin, &json!({"resourceType": "Practitioner", "name": [{"family": "Osei"}]})).await;
    let schedule = smart
        .create(
            &admin,
            &json!({"resourceType": "Schedule",
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": "America/New_York"}],
            "actor": [{"reference": format!("Practitioner/{practitioner}")}]}),
        )
        .await;
    let generate = |end: &str| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "start", "valueDate": "2027-03-08"}, {"name": "end", "valueDate": end},
            {"name": "availability", "valueString": "mon-fri 09:00-12:00"},
            {"name": "break", "valueString": "10:00-10:30"},
            {"name": "slot-minutes", "valuePositiveInt": 30},
            {"name": "appointment-type", "valueString": "ROUTINE"}]})
    };
    let path = format!("Schedule/{schedule}/$generate-slots");
    let response = smart.send(Method::POST, &path, &admin, &generate("2027-03-19")).await;
    assert_eq!(response.status(), 200);
    assert!(outcome(response).await.contains("created 50 Slot(s)"), "ten weekdays of five slots");
    let slots =
        body(smart.get(&format!("Slot?schedule=Schedule/{schedule}&_count=200&_sort=start"), &admin).await).await;
    let starts: Vec<&str> =
        slots["entry"].as_array().unwrap().iter().map(|e| e["resource"]["start"].as_str().unwrap()).collect();
    assert_eq!(starts.len(), 50);
    assert_eq!(starts[0], "2027-03-08T09:00:00-05:00");
    assert_eq!(starts[2], "2027-03-08T10:30:00-05:00", "no slot in the break");
    assert!(
        starts.contains(&"2027-03-12T11:30:00-05:00") && starts.contains(&"2027-03-15T09:00:00-04:00"),
        "09:00 local on both sides of the change"
    );
    assert_eq!(slots["entry"][0]["resource"]["status"], "free");
    assert_eq!(slots["entry"][0]["resource"]["appointmentType"]["coding"][0]["code"], "ROUTINE");
    let again = smart.send(Method::POST, &path, &admin, &generate("2027-03-22")).await;
    assert!(outcome(again).await.contains("created 5 Slot(s)"), "only the new Monday");
    let mut no_zone = generate("2027-03-09");
    no_zone["parameter"][0]["valueDate"] = json!("2027-03-09");
    let other =
        smart.create(&admin, &json!({"resourceType": "Schedule", "actor": [{"reference": "Location/l1"}]})).await;
    let response = smart.send(Method::POST, &format!("Schedule/{other}/$generate-slots"), &admin, &no_zone).await;
    assert_eq!(response.status(), 400);
    assert!(outcome(response).await.contains("time zone"));
    let mut bad_window = generate("2027-03-09");
    bad_window["parameter"][2]["valueString"] = json!("weekdays 9-5");
    assert_eq!(smart.send(Method::POST, &path, &admin, &bad_window).await.status(), 400);
    let ana = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let ana_token = smart.user_token("ana", &format!("Patient/{ana}"), &[], "launch/patient patient/*.cruds").await;
    let response = smart.send(Method::POST, &path, &ana_token, &generate("2027-04-30")).await;
    assert_eq!(response.status(), 404, "a practitioner's schedule is not in a patient's reach");

    let own_schedule = smart
        .create(&admin, &json!({"resourceType": "Schedule", "actor": [{"reference": format!("Patient/{ana}")}]}))
        .await;
    smart
        .create(
            &admin,
            &json!({"resourceType": "Slot", "schedule": {"reference": format!("Schedule/{own_schedule}")},
            "status": "busy-unavailable", "start": "2027-03-08T09:00:00Z", "end": "2027-03-08T10:00:00Z"}),
        )
        .await;
    let mut noted = body(smart.get(&format!("Slot?schedule=Schedule/{schedule}&_count=1"), &admin).await).await
        ["entry"][0]["resource"]
        .clone();
    noted["comment"] = json!("Dr. Osei prefers new patients");
    let path = format!("Slot/{}", noted["id"].as_str().unwrap());
    assert_eq!(smart.send(Method::PUT, &path, &admin, &noted).await.status(), 200);

    // Published without a token: the manifest, its files, and a cheap 304.
    let anonymous = reqwest::Client::new();
    let manifest = anonymous.get(server.url("$bulk-publish")).send().await.unwrap();
    assert_eq!(manifest.status(), 200);
    assert_eq!(manifest.headers()["content-type"], "application/json");
    let etag = manifest.headers()["etag"].to_str().unwrap().to_string();
    let manifest: Value = manifest.json().await.unwrap();
    let types: Vec<&str> = manifest["output"].as_array().unwrap().iter().map(|o| o["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Location", "Schedule", "Slot"]);
    let slot_url = manifest["output"][2]["url"].as_str().unwrap().to_string();
    let file = anonymous.get(&slot_url).send().await.unwrap();
    assert_eq!(file.headers()["content-type"], "application/fhir+ndjson");
    let text = file.text().await.unwrap();
    assert_eq!(text.lines().count(), 55, "the clinic's slots, not a patient's own schedule's");
    assert!(text.lines().all(|line| serde_json::from_str::<Value>(line).unwrap()["resourceType"] == "Slot"));
    assert!(!text.contains("comment") && !text.contains("prefers"), "only the scheduling elements");
    let schedules = anonymous.get(manifest["output"][1]["url"].as_str().unwrap()).send().await.unwrap();
    let schedules = schedules.text().await.unwrap();
    assert!(schedules.contains("America/New_York") && !schedules.contains(&own_schedule), "{schedules}");
    let unchanged = anonymous.get(server.url("$bulk-publish")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(unchanged.status(), 304);
    let since = manifest["transactionTime"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let late = smart
        .create(
            &admin,
            &json!({"resourceType": "Slot", "schedule": {"reference": format!("Schedule/{schedule}")},
            "status": "free", "start": "2027-05-03T09:00:00-04:00", "end": "2027-05-03T09:30:00-04:00"}),
        )
        .await;
    let changed = anonymous.get(server.url("$bulk-publish")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(changed.status(), 200, "a new slot changes the ETag");
    let newer = anonymous
        .get(server.url("$bulk-publish"))
        .query(&[("_type", "Slot"), ("_since", &since)])
        .send()
        .await
        .unwrap();
    let text = newer.text().await.unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(&late));
    assert_eq!(anonymous.get(server.url("Slot")).send().await.unwrap().status(), 401, "the rest still needs a token");
    assert_eq!(anonymous.post(server.url("$bulk-publish")).send().await.unwrap().status(), 401);
}

/// What `hearth synth` writes, loaded in path order, leaves a clinic a patient can book into.
async fn a_synthetic_clinic_can_be_booked_into(db: Db) {
    let server = TestServer::start(db).await;
    let dir = tempfile::tempdir().unwrap();
    let today = OffsetDateTime::now_utc().date();
    hearth::synth::write_bundles(dir.path(), 2, 7, today).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|f| f.unwrap().path()).collect();
    files.sort();
    assert!(files.last().unwrap().ends_with(hearth::synth::AVAILABILITY_FILE));
    for file in &files {
        let bundle: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        let response = body(server.post("", &bundle).await).await;
        for entry in response["entry"].as_array().unwrap() {
            let status = entry["response"]["status"].as_str().unwrap();
            assert!(status.starts_with('2'), "{}: {status} {}", file.display(), entry["response"]);
        }
    }
    let patient = server.search_ids("Patient").await.remove(0);
    let find = format!(
        "Appointment/$find?start={}&end={}&practitioner=Practitioner/prac-3&patient=Patient/{patient}&_count=5",
        at(0, 0, 0),
        at(hearth::synth::AVAILABILITY_DAYS, 0, 0)
    );
    let proposals = matches(&body(server.get(&find).await).await);
    assert_eq!(proposals.len(), 5, "office hours of the coming weeks");
    assert_eq!(proposals[0]["appointmentType"]["coding"][0]["code"], "ROUTINE");
    let response = server.post("Appointment/$book", &parameters("appointment-resource", &proposals[0])).await;
    assert_eq!(response.status(), 200);
}

on_both_databases!(
    find_hold_book_reschedule_and_cancel,
    no_slot_is_booked_twice_on_any_write_path,
    operations_refuse_bad_input,
    an_expired_hold_frees_its_slot,
    a_hold_ends_after_a_restart,
    patients_book_only_for_themselves,
    patients_cannot_cancel_within_the_cutoff,
    concurrent_bookings_never_double_book,
    clinics_generate_slots_and_publish_them,
    a_synthetic_clinic_can_be_booked_into,
);
