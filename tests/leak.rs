//! The leak matrix: two synthetic patients with data in every portal resource type. A token
//! for patient A, and tokens of a proxy linked to A only, get nothing of patient B through any
//! access path: read, vread, search, chained search, `_include`, `_revinclude`, `_has`,
//! history, compartment search, system search, batch, transaction and operations
//! (`$everything`, `$summary`, the scheduling operations, `$request-refill`, `$unread`,
//! `$upload` and raw uploads).

mod common;

use std::collections::HashSet;

use common::smart::{smart_server, Authorization, Smart};
use common::{body, Db};
use reqwest::Method;
use serde_json::{json, Value};

/// The (type, id) of every resource a transaction response says was created.
fn created(response: &Value) -> Vec<(String, String)> {
    response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["response"]["location"].as_str())
        .map(|location| {
            let relative = location.split_once("/fhir/").map_or(location, |(_, rest)| rest);
            let mut parts = relative.split('/');
            (parts.next().unwrap().to_string(), parts.next().unwrap().to_string())
        })
        .collect()
}

/// Every resource id anywhere in a bundle's entries.
fn ids_in(bundle: &Value) -> HashSet<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| entries.iter().filter_map(|e| e["resource"]["id"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

struct World {
    smart: Smart,
    patient_a: String,
    patient_b: String,
    /// B's resources of the types that belong to a Patient compartment.
    of_b: Vec<(String, String)>,
    /// A's Observations (to show that A's own data is reachable).
    a_observation: String,
    family_b: String,
}

async fn world(db: Db) -> (common::TestServer, World) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    smart.add_secret_client("loader", "loader-secret").await;
    let admin = smart.system_token("loader", "loader-secret", "system/*.cruds").await;
    let mut resources = Vec::new();
    // The first seed whose two patients both have an allergy (every portal type then occurs).
    let has_allergy = |bundle: &Value| bundle.to_string().contains("\"resourceType\":\"AllergyIntolerance\"");
    let seed = (1..100)
        .find(|seed| (0..2).all(|index| has_allergy(&hearth::synth::patient_bundle(*seed, index))))
        .expect("a seed with allergies");
    for index in 0..2 {
        let bundle = hearth::synth::patient_bundle(seed, index);
        let response = smart.send(Method::POST, "", &admin, &bundle).await;
        assert_eq!(response.status(), 200, "load patient {index}");
        resources.push(created(&body(response).await));
    }
    let patient_of = |list: &[(String, String)]| list.iter().find(|(t, _)| t == "Patient").unwrap().1.clone();
    let (patient_a, patient_b) = (patient_of(&resources[0]), patient_of(&resources[1]));
    let in_compartment = |t: &str| hearth::search::compartment::membership("Patient", "x", t).is_some();
    let a_ids: HashSet<&String> = resources[0].iter().map(|(_, id)| id).collect();
    let of_b: Vec<(String, String)> =
        resources[1].iter().filter(|(t, id)| in_compartment(t) && !a_ids.contains(id)).cloned().collect();
    let types: HashSet<&str> = of_b.iter().map(|(t, _)| t.as_str()).collect();
    for wanted in [
        "Patient",
        "Appointment",
        "Observation",
        "DiagnosticReport",
        "MedicationRequest",
        "Communication",
        "Invoice",
        "Coverage",
        "Encounter",
        "Condition",
        "AllergyIntolerance",
        "Immunization",
    ] {
        assert!(types.contains(wanted), "patient B has a {wanted}: {types:?}");
    }
    // Payments are the patient's through the Invoice they settle (outside the R4 compartment).
    let mut of_b = of_b;
    for (index, list) in resources.iter().enumerate() {
        let invoice = list.iter().find(|(t, _)| t == "Invoice").unwrap().1.clone();
        let payment = json!({"resourceType": "PaymentReconciliation", "status": "active",
            "created": "2026-11-03T10:00:00Z", "paymentDate": "2026-11-03", "paymentAmount": {"value": 1, "currency": "USD"},
            "detail": [{"type": {"text": "payment"}, "request": {"reference": format!("Invoice/{invoice}")},
                "amount": {"value": 1, "currency": "USD"}}]});
        let payment = smart.create(&admin, &payment).await;
        let notice = json!({"resourceType": "PaymentNotice", "status": "active", "created": "2026-11-03T10:00:00Z",
            "request": {"reference": format!("Invoice/{invoice}")},
            "payment": {"reference": format!("PaymentReconciliation/{payment}")},
            "recipient": {"display": "Clinic"}, "amount": {"value": 1, "currency": "USD"}});
        let notice = smart.create(&admin, &notice).await;
        if index == 1 {
            of_b.push(("PaymentReconciliation".to_string(), payment));
            of_b.push(("PaymentNotice".to_string(), notice));
        }
    }
    let a_observation = resources[0].iter().find(|(t, _)| t == "Observation").unwrap().1.clone();
    let b: Value =
        body(smart.fhir_request(Method::GET, &format!("Patient/{patient_b}"), &admin).send().await.unwrap()).await;
    let family_b = b["name"][0]["family"].as_str().unwrap().to_string();
    smart.add_public_client("portal").await;
    smart.add_user("anna", "anna-pw", &format!("Patient/{patient_a}"), &[]).await;
    smart.add_user("carer", "carer-pw", "RelatedPerson/carer1", &[&patient_a]).await;
    (server, World { smart, patient_a, patient_b, of_b, a_observation, family_b })
}

impl World {
    async fn token(&self, username: &str, password: &str, scope: &str) -> String {
        let token = self.smart.launch(&Authorization::new("portal", scope, username, password)).await;
        token["access_token"].as_str().unwrap().to_string()
    }

    async fn bundle(&self, path: &str, token: &str) -> Value {
        let response = self.smart.get(path, token).await;
        assert_eq!(response.status(), 200, "{path}");
        body(response).await
    }

    /// Asserts that a search shows nothing of B (and, where `a_expected`, something of A).
    async fn nothing_of_b(&self, path: &str, token: &str) -> HashSet<String> {
        let ids = ids_in(&self.bundle(path, token).await);
        for (t, id) in &self.of_b {
            assert!(!ids.contains(id), "{path} shows {t}/{id} of patient B");
        }
        assert!(!ids.contains(&self.patient_b), "{path} shows patient B");
        ids
    }

    async fn check_reads(&self, token: &str, who: &str) {
        let smart = &self.smart;
        assert_eq!(
            smart.get(&format!("Observation/{}", self.a_observation), token).await.status(),
            200,
            "{who} reads A"
        );
        for (t, id) in &self.of_b {
            for path in [format!("{t}/{id}"), format!("{t}/{id}/_history/1"), format!("{t}/{id}/_history")] {
                let status = smart.get(&path, token).await.status();
                assert_eq!(status, 404, "{who}: {path}");
            }
            let found = self.bundle(&format!("{t}?_id={id}"), token).await;
            assert_eq!(found["entry"].as_array().map_or(0, Vec::len), 0, "{who}: {t}?_id={id}");
        }
    }

    async fn check_searches(&self, token: &str, who: &str) {
        let (a, b) = (&self.patient_a, &self.patient_b);
        let types: HashSet<&str> = self.of_b.iter().map(|(t, _)| t.as_str()).collect();
        for t in &types {
            self.nothing_of_b(&format!("{t}?_count=500"), token).await;
        }
        let counted = self.bundle("Observation?_summary=count", token).await;
        let all = self.bundle("Observation?_count=1000", token).await;
        assert_eq!(
            counted["total"].as_u64(),
            Some(all["entry"].as_array().map_or(0, |e| e.len() as u64)),
            "{who}: exact total"
        );
        for path in [
            format!("Patient/{b}/Observation"),
            format!("Observation?subject=Patient/{b}"),
            format!("Observation?subject:Patient.name={}", self.family_b),
            "Observation?_include=Observation:subject&_count=200".to_string(),
            "Encounter?_include=*&_count=200".to_string(),
            "Patient?_revinclude=Observation:subject&_revinclude=Condition:subject&_count=200".to_string(),
            "Appointment?_include=Appointment:patient&_revinclude:iterate=Encounter:appointment".to_string(),
            "Patient?_has:Observation:subject:status=final".to_string(),
            "Observation/_history?_count=500".to_string(),
            "_history?_count=1000".to_string(),
            "?_type=Observation,Condition,Encounter,Communication,Invoice,PaymentReconciliation&_count=1000"
                .to_string(),
            "PaymentReconciliation?_include=PaymentReconciliation:detail-request&_count=200".to_string(),
            "Invoice?_revinclude=PaymentReconciliation:detail-request&_revinclude=PaymentNotice:request".to_string(),
            format!("PaymentNotice?request:Invoice.subject=Patient/{b}"),
            "PaymentReconciliation/_history?_count=500".to_string(),
        ] {
            self.nothing_of_b(&path, token).await;
        }
        // Shared resources (the clinic, the practitioners) must not tell what B's records hold.
        for path in [
            format!("Organization?_has:DiagnosticReport:performer:subject=Patient/{b}"),
            format!("Practitioner?_has:Encounter:participant:subject=Patient/{b}"),
            format!("Practitioner?_has:Encounter:participant:subject.name={}", self.family_b),
        ] {
            let found = self.bundle(&path, token).await;
            assert_eq!(found["entry"].as_array().map_or(0, Vec::len), 0, "{who}: {path}");
        }
        let clinic =
            self.bundle(&format!("Organization?_has:DiagnosticReport:performer:subject=Patient/{a}"), token).await;
        assert_eq!(clinic["entry"].as_array().map_or(0, Vec::len), 1, "{who}: A's clinic");
        let own = self.nothing_of_b(&format!("Patient?_has:Observation:subject:status=final&_id={a}"), token).await;
        assert!(own.contains(a), "{who}: _has finds A");
        let mine = self.nothing_of_b(&format!("Patient/{a}/Observation"), token).await;
        assert!(mine.contains(&self.a_observation), "{who}: A's compartment");
    }

    /// `$everything` and `$summary` gather only what the caller could read one by one: A's
    /// record, never B's, and B's record does not exist for it.
    async fn check_operations(&self, token: &str, who: &str) {
        let (a, b) = (&self.patient_a, &self.patient_b);
        for path in [format!("Patient/{b}/$everything"), format!("Patient/{b}/$summary")] {
            assert_eq!(self.smart.get(&path, token).await.status(), 404, "{who}: {path}");
        }
        let everything = self.nothing_of_b(&format!("Patient/{a}/$everything?_count=1000"), token).await;
        assert!(everything.contains(a) && everything.contains(&self.a_observation), "{who}: A's record");
        let all = self.nothing_of_b("Patient/$everything?_count=1000", token).await;
        assert!(all.contains(&self.a_observation), "{who}: Patient/$everything is A's record");
        self.nothing_of_b(&format!("Patient/{a}/$summary"), token).await;
        let parameters = json!({"resourceType": "Parameters", "parameter": [{"name": "_count", "valueInteger": 1000}]});
        let posted = self.smart.send(Method::POST, &format!("Patient/{b}/$everything"), token, &parameters).await;
        assert_eq!(posted.status(), 404, "{who}: POST $everything of B");
        // Scheduling: B's appointments do not exist for A, and free time names nobody.
        let (_, appointment) = self.of_b.iter().find(|(t, _)| t == "Appointment").expect("B has appointments");
        let nothing = json!({"resourceType": "Parameters"});
        let cancel =
            self.smart.send(Method::POST, &format!("Appointment/{appointment}/$cancel"), token, &nothing).await;
        assert_eq!(cancel.status(), 404, "{who}: $cancel of B's appointment");
        let by_reference = json!({"resourceType": "Parameters", "parameter": [
            {"name": "appointment-reference", "valueReference": {"reference": format!("Appointment/{appointment}")}}]});
        for operation in ["$hold", "$book"] {
            let response =
                self.smart.send(Method::POST, &format!("Appointment/{operation}"), token, &by_reference).await;
            assert_eq!(response.status(), 404, "{who}: {operation} of B's appointment");
        }
        let find = self.smart.get("Appointment/$find?start=2026-11-01&end=2027-10-31&_count=500", token).await;
        assert_eq!(find.status(), 200, "{who}: $find");
        let text = find.text().await.unwrap();
        assert!(!text.contains(b.as_str()), "{who}: $find names patient B");
        // The portal's records: B's prescriptions, threads and files do not exist for A.
        if let Some((_, prescription)) = self.of_b.iter().find(|(t, _)| t == "MedicationRequest") {
            let path = format!("MedicationRequest/{prescription}/$request-refill");
            let response = self.smart.send(Method::POST, &path, token, &nothing).await;
            assert_eq!(response.status(), 404, "{who}: $request-refill of B's prescription");
        }
        let unread = self.smart.get("Communication/$unread", token).await;
        if unread.status() == 200 {
            let text = unread.text().await.unwrap();
            for (t, id) in self.of_b.iter().filter(|(t, _)| t == "Communication") {
                assert!(!text.contains(id.as_str()), "{who}: $unread counts {t}/{id} of B");
            }
        }
        let upload = json!({"resourceType": "Parameters", "parameter": [
            {"name": "file", "resource": {"resourceType": "Binary", "contentType": "text/plain", "data": "aGk="}},
            {"name": "patient", "valueReference": {"reference": format!("Patient/{b}")}}]});
        let response = self.smart.send(Method::POST, "DocumentReference/$upload", token, &upload).await;
        assert_eq!(response.status(), 403, "{who}: $upload into B's record");
        let raw = self
            .smart
            .fhir_request(Method::POST, "Binary", token)
            .header("content-type", "text/plain")
            .header("x-security-context", format!("Patient/{b}"))
            .body("hi")
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status(), 403, "{who}: raw upload into B's record");
    }

    async fn check_bundles(&self, token: &str, who: &str) {
        let entries: Vec<Value> = self
            .of_b
            .iter()
            .take(20)
            .map(|(t, id)| json!({"request": {"method": "GET", "url": format!("{t}/{id}")}}))
            .chain(std::iter::once(
                json!({"request": {"method": "GET", "url": format!("Observation?subject=Patient/{}", self.patient_b)}}),
            ))
            .collect();
        let count = entries.len();
        for kind in ["batch", "transaction"] {
            let bundle = json!({"resourceType": "Bundle", "type": kind, "entry": entries});
            let response = self.smart.send(Method::POST, "", token, &bundle).await;
            if kind == "transaction" {
                // A transaction fails as a whole on the first entry it may not see.
                assert_eq!(response.status(), 404, "{who}: transaction of B's reads");
                continue;
            }
            let answer = body(response).await;
            let statuses: Vec<&str> =
                answer["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
            assert_eq!(statuses.len(), count);
            assert!(statuses[..count - 1].iter().all(|s| s.starts_with("404")), "{who}: {statuses:?}");
            let search = &answer["entry"][count - 1]["resource"];
            assert_eq!(search["entry"].as_array().map_or(0, Vec::len), 0, "{who}: batch search");
        }
    }

    async fn check_writes(&self, token: &str, who: &str) {
        let smart = &self.smart;
        let for_b = json!({"resourceType": "Observation", "status": "final", "code": {"text": "weight"}, "subject": {"reference": format!("Patient/{}", self.patient_b)}});
        let post = |path: &'static str, body: Value| async move { smart.send(Method::POST, path, token, &body).await };
        assert_eq!(post("Observation", for_b.clone()).await.status(), 403, "{who}: create for B");
        let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "POST", "url": "Observation"}, "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "ok"}, "subject": {"reference": format!("Patient/{}", self.patient_a)}}},
            {"request": {"method": "POST", "url": "Observation"}, "resource": for_b},
        ]});
        assert_eq!(post("", transaction).await.status(), 403, "{who}: transaction writing for B");
        let (t, id) = self.of_b.iter().find(|(t, _)| t == "Observation").unwrap();
        let admin = smart.system_token("loader", "loader-secret", "system/*.rs").await;
        let mut theirs: Value = body(smart.get(&format!("{t}/{id}"), &admin).await).await;
        theirs["status"] = json!("amended");
        let put = smart.send(Method::PUT, &format!("{t}/{id}"), token, &theirs).await;
        assert_eq!(put.status(), 404, "{who}: update B's (does not exist for A)");
        assert_eq!(
            smart.fhir_request(Method::DELETE, &format!("{t}/{id}"), token).send().await.unwrap().status(),
            404,
            "{who}: delete B's (does not exist for A)"
        );
        // Moving A's own resource to B is refused too.
        let mut mine: Value = body(smart.get(&format!("Observation/{}", self.a_observation), &admin).await).await;
        mine["subject"] = json!({"reference": format!("Patient/{}", self.patient_b)});
        let moved = smart.send(Method::PUT, &format!("Observation/{}", self.a_observation), token, &mine).await;
        assert_eq!(moved.status(), 403, "{who}: move A's to B");
        assert_eq!(post("$reindex", json!({"resourceType": "Parameters"})).await.status(), 403, "{who}: operations");
        // An export of B's compartment is refused as one of a patient that does not exist.
        let export_of = |patient: String| json!({"resourceType": "Parameters", "parameter": [{"name": "patient", "valueReference": {"reference": patient}}]});
        let of_b = post("Patient/$export", export_of(format!("Patient/{}", self.patient_b))).await;
        assert_eq!(of_b.status(), 400, "{who}: export of B");
        let of_nobody = post("Patient/$export", export_of("Patient/nobody".to_string())).await;
        assert_eq!(of_nobody.status(), 400);
        let said = |text: String| text.replace(&self.patient_b, "ID").replace("nobody", "ID");
        assert_eq!(said(of_b.text().await.unwrap()), said(of_nobody.text().await.unwrap()), "{who}: export of B");
        // Nothing of it was stored: B still has exactly the Observations it had.
        let after: Value =
            body(smart.get(&format!("Observation?subject=Patient/{}&_summary=count", self.patient_b), &admin).await)
                .await;
        let before = self.of_b.iter().filter(|(t, _)| t == "Observation").count() as u64;
        assert_eq!(after["total"].as_u64(), Some(before), "{who}: nothing written for B");
        // A's own writes work.
        let for_a = json!({"resourceType": "Observation", "status": "final", "code": {"text": "steps"}, "subject": {"reference": format!("Patient/{}", self.patient_a)}});
        assert_eq!(post("Observation", for_a).await.status(), 201, "{who}: create for A");
    }
}

async fn a_patient_gets_nothing_of_another(db: Db) {
    let (_server, world) = world(db).await;
    let token = world.token("anna", "anna-pw", "launch/patient patient/*.rs").await;
    world.check_reads(&token, "patient").await;
    world.check_searches(&token, "patient").await;
    world.check_bundles(&token, "patient").await;
    world.check_operations(&token, "patient").await;
    let writer = world.token("anna", "anna-pw", "launch/patient patient/*.cruds").await;
    world.check_writes(&writer, "patient writer").await;
    let user = world.token("anna", "anna-pw", "user/*.rs").await;
    world.check_reads(&user, "patient user scope").await;
}

async fn a_proxy_gets_nothing_of_other_patients(db: Db) {
    let (_server, world) = world(db).await;
    for scope in ["launch/patient patient/*.rs", "user/*.rs", "patient/*.rs"] {
        let token = world.token("carer", "carer-pw", scope).await;
        world.check_reads(&token, scope).await;
        world.check_searches(&token, scope).await;
        world.check_bundles(&token, scope).await;
        world.check_operations(&token, scope).await;
    }
    let writer = world.token("carer", "carer-pw", "user/*.cruds").await;
    world.check_writes(&writer, "proxy writer").await;
}

async fn granular_scopes_filter_reads_and_searches(db: Db) {
    let (_server, world) = world(db).await;
    let lab = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
    let token = world.token("anna", "anna-pw", &format!("launch/patient patient/Observation.rs?category={lab}")).await;
    let all = world.bundle("Observation?_count=1000", &token).await;
    let entries = all["entry"].as_array().unwrap();
    assert!(!entries.is_empty());
    for entry in entries {
        let categories = entry["resource"]["category"].to_string();
        assert!(categories.contains("laboratory"), "only laboratory results: {categories}");
    }
    let counted = world.bundle("Observation?_summary=count", &token).await;
    assert_eq!(counted["total"].as_u64(), Some(entries.len() as u64));
    // A vital sign of A is not readable with this token.
    let admin = world.smart.system_token("loader", "loader-secret", "system/*.rs").await;
    let vitals = world
        .bundle(&format!("Observation?subject=Patient/{}&category=vital-signs&_count=1", world.patient_a), &admin)
        .await;
    let vital = vitals["entry"][0]["resource"]["id"].as_str().unwrap();
    assert_eq!(world.smart.get(&format!("Observation/{vital}"), &token).await.status(), 404);
    assert_eq!(world.smart.get("Condition", &token).await.status(), 403, "no scope for Condition");
}

on_both_databases!(
    a_patient_gets_nothing_of_another,
    a_proxy_gets_nothing_of_other_patients,
    granular_scopes_filter_reads_and_searches
);
