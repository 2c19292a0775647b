//! The audit log (issue 21, ADR 19): every interaction leaves a BALP AuditEvent, refused and
//! failed ones too; AuditEvents are the server's record, never written through the API; a
//! patient sees who looked at their chart and nothing about anyone else; the hash chain shows
//! a row changed in the database.

mod common;

use std::process::Stdio;

use common::smart::{smart_server, Authorization, Smart};
use common::{body, Db, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

/// Every AuditEvent the server holds (open access), oldest first.
async fn all_events(server: &TestServer) -> Vec<Value> {
    let bundle = body(server.get("AuditEvent?_sort=date&_count=1000").await).await;
    bundle["entry"].as_array().map(|e| e.iter().map(|e| e["resource"].clone()).collect()).unwrap_or_default()
}

/// The events of the request with this `X-Request-Id`.
fn of_request<'a>(events: impl IntoIterator<Item = &'a Value>, request_id: &str) -> Vec<&'a Value> {
    events
        .into_iter()
        .filter(|event| {
            event["entity"].as_array().into_iter().flatten().any(|entity| {
                entity["type"]["code"] == "XrequestId" && entity["what"]["identifier"]["value"] == request_id
            })
        })
        .collect()
}

fn subtype(event: &Value) -> &str {
    event["subtype"][0]["code"].as_str().unwrap_or_default()
}

/// The references of an event's patient entities.
fn patients_of(event: &Value) -> Vec<String> {
    let mut patients: Vec<String> = event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entity| entity["role"]["code"] == "1")
        .filter_map(|entity| entity["what"]["reference"].as_str().map(str::to_string))
        .collect();
    patients.sort();
    patients
}

/// The references of an event's data entities.
fn data_of(event: &Value) -> Vec<String> {
    event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entity| entity["role"]["code"] == "4")
        .filter_map(|entity| entity["what"]["reference"].as_str().map(str::to_string))
        .collect()
}

async fn send(server: &TestServer, method: Method, path: &str, body: Option<&Value>, request_id: &str) -> u16 {
    let mut request = server.request(method, path).header("x-request-id", request_id);
    if let Some(body) = body {
        request = request.header("content-type", "application/fhir+json").body(body.to_string());
    }
    let response = request.send().await.expect("request");
    assert_eq!(response.headers()["x-request-id"], request_id);
    response.status().as_u16()
}

async fn each_interaction_leaves_its_audit_event(db: Db) {
    let server = TestServer::start(db).await;
    let ana = json!({"resourceType": "Patient", "id": "ana", "name": [{"family": "Audit"}]});
    assert_eq!(send(&server, Method::PUT, "Patient/ana", Some(&ana), "r-create").await, 201);
    let observation = json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "bp"},
        "subject": {"reference": "Patient/ana"}});
    assert_eq!(send(&server, Method::PUT, "Observation/o1", Some(&observation), "r-create-obs").await, 201);
    assert_eq!(send(&server, Method::GET, "Observation/o1", None, "r-read").await, 200);
    assert_eq!(send(&server, Method::GET, "Observation?subject=Patient/ana", None, "r-search").await, 200);
    let mut amended = observation.clone();
    amended["status"] = json!("amended");
    assert_eq!(send(&server, Method::PUT, "Observation/o1", Some(&amended), "r-update").await, 200);
    assert_eq!(send(&server, Method::GET, "Observation/o1/_history/1", None, "r-vread").await, 200);
    assert_eq!(send(&server, Method::GET, "Patient/ana/$everything", None, "r-everything").await, 200);
    assert_eq!(send(&server, Method::DELETE, "Observation/o1", None, "r-delete").await, 204);
    assert_eq!(send(&server, Method::GET, "Observation/nope", None, "r-missing").await, 404);
    let invalid = json!({"resourceType": "Observation", "status": "not-a-status", "code": {"text": "x"}});
    assert_eq!(send(&server, Method::POST, "Observation", Some(&invalid), "r-invalid").await / 100, 4);
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
            "subject": {"reference": "Patient/ana"}}, "request": {"method": "POST", "url": "Encounter"}},
        {"resource": {"resourceType": "Patient", "name": [{"family": "Other"}]},
            "request": {"method": "POST", "url": "Patient"}}]});
    assert_eq!(send(&server, Method::POST, "", Some(&transaction), "r-transaction").await, 200);

    let events = all_events(&server).await;
    let only = |request_id: &str| {
        let found = of_request(&events, request_id);
        assert_eq!(found.len(), 1, "one event for {request_id}: {found:?}");
        found[0].clone()
    };
    let created = only("r-create");
    assert_eq!((subtype(&created), created["action"].as_str()), ("create", Some("C")));
    assert_eq!(created["outcome"], "0");
    assert_eq!(created["type"]["code"], "rest");
    assert_eq!(patients_of(&created), ["Patient/ana"]);
    assert_eq!(data_of(&created), ["Patient/ana/_history/1"]);

    let read = only("r-read");
    assert_eq!((subtype(&read), read["action"].as_str()), ("read", Some("R")));
    assert_eq!(patients_of(&read), ["Patient/ana"]);
    assert_eq!(data_of(&read), ["Observation/o1"]);
    let server_agent = read["agent"].as_array().unwrap().iter().find(|a| a["type"]["coding"][0]["code"] == "110152");
    assert!(server_agent.is_some(), "the server is an agent: {read}");

    let search = only("r-search");
    assert_eq!((subtype(&search), search["action"].as_str()), ("search-type", Some("E")));
    assert_eq!(patients_of(&search), ["Patient/ana"]);
    let query = search["entity"].as_array().unwrap().iter().find(|e| e["role"]["code"] == "24").expect("query");
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode(query["query"].as_str().unwrap()).unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), "subject=Patient%2Fana");

    let update = only("r-update");
    assert_eq!((subtype(&update), update["action"].as_str()), ("update", Some("U")));
    assert_eq!(data_of(&update), ["Observation/o1/_history/2"]);
    assert_eq!(subtype(&only("r-vread")), "vread");
    let everything = only("r-everything");
    assert_eq!(everything["subtype"][1]["code"], "$everything");
    assert_eq!(patients_of(&everything), ["Patient/ana"]);
    let delete = only("r-delete");
    assert_eq!((subtype(&delete), delete["action"].as_str()), ("delete", Some("D")));
    assert_eq!(patients_of(&delete), ["Patient/ana"], "a deletion concerns the patient of what it deleted");

    let missing = only("r-missing");
    assert_eq!(missing["outcome"], "4");
    assert!(missing["outcomeDesc"].as_str().unwrap().starts_with("404"), "{missing}");
    let invalid = only("r-invalid");
    assert_eq!((subtype(&invalid), invalid["outcome"].as_str()), ("create", Some("4")));

    let transaction = of_request(&events, "r-transaction");
    let mut subtypes: Vec<&str> = transaction.iter().map(|e| subtype(e)).collect();
    subtypes.sort();
    assert_eq!(subtypes, ["create", "create", "transaction"], "one per entry, and the bundle");

    let by_patient = body(server.get("AuditEvent?patient=Patient/ana&action=R&_count=100").await).await;
    let found = by_patient["entry"].as_array().unwrap();
    assert!(found
        .iter()
        .all(|e| e["resource"]["action"] == "R" && patients_of(&e["resource"]).contains(&"Patient/ana".to_string())));
    assert!(found.len() >= 2, "the read and the vread: {by_patient}");
    let event_id = read["id"].as_str().unwrap();
    let one = server.get(&format!("AuditEvent/{event_id}")).await;
    assert_eq!(one.status(), 200);
    assert_eq!(body(one).await, read);
}

async fn patients_see_who_read_their_chart_and_nobody_else(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let ana = smart.create(&admin, &json!({"resourceType": "Patient", "name": [{"family": "Ana"}]})).await;
    let bob = smart.create(&admin, &json!({"resourceType": "Patient", "name": [{"family": "Bob"}]})).await;
    let doctor = smart.create(&admin, &json!({"resourceType": "Practitioner", "name": [{"family": "House"}]})).await;
    for patient in [&ana, &bob] {
        let observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
            "subject": {"reference": format!("Patient/{patient}")}});
        smart.create(&admin, &observation).await;
    }
    let doctor_token =
        smart.user_token("house", &format!("Practitioner/{doctor}"), &[], "openid fhirUser user/*.rs").await;
    // The doctor looks at both charts in one search, and at Bob's alone.
    let both = smart.get("Observation?_count=10", &doctor_token).await;
    assert_eq!(body(both).await["entry"].as_array().unwrap().len(), 2);
    assert_eq!(smart.get(&format!("Patient/{bob}"), &doctor_token).await.status(), 200);
    // A trimmed answer (no subject shown) still discloses whose data it is.
    let trimmed =
        body(smart.get(&format!("Observation?subject=Patient/{ana}&_elements=status"), &doctor_token).await).await;
    assert!(trimmed["entry"][0]["resource"].get("subject").is_none(), "{trimmed}");

    let ana_token = smart.user_token("ana", &format!("Patient/{ana}"), &[], "launch/patient patient/*.rs").await;
    let log = body(smart.get(&format!("AuditEvent?patient={ana}&_sort=-date"), &ana_token).await).await;
    let entries: Vec<&Value> = log["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    let by_doctor: Vec<&&Value> = entries
        .iter()
        .filter(|e| {
            e["agent"].as_array().unwrap().iter().any(|a| a["who"]["reference"] == format!("Practitioner/{doctor}"))
        })
        .collect();
    assert_eq!(by_doctor.len(), 2, "Ana sees the doctor's searches that showed her data: {log}");
    assert!(by_doctor.iter().all(|e| subtype(e) == "search-type"));
    assert_eq!(patients_of(by_doctor[1]), [format!("Patient/{ana}")], "and not that Bob was in one");
    assert!(!log.to_string().contains(&bob), "nothing of Bob anywhere: {log}");
    assert!(!by_doctor[0]["entity"].as_array().unwrap().iter().any(|e| e["role"]["code"] == "24"), "no query");
    assert!(by_doctor[0]["agent"][0].get("altId").is_none(), "nor the doctor's user name");
    assert_eq!(by_doctor[0]["agent"][0]["who"]["display"], "House", "the doctor by name");
    assert_eq!(by_doctor[0]["agent"][0]["role"][0]["text"], "clinician");

    // Whom staff are, she may ask; whether another patient acted on her records, not.
    let by_agent = body(smart.get(&format!("AuditEvent?agent=Practitioner/{doctor}"), &ana_token).await).await;
    assert_eq!(by_agent["entry"].as_array().map_or(0, Vec::len), 2, "{by_agent}");
    let by_patient = body(smart.get(&format!("AuditEvent?agent=Patient/{bob}"), &ana_token).await).await;
    assert!(by_patient["entry"].as_array().is_none_or(|e| e.is_empty()), "{by_patient}");

    // Bob's log, Bob's events, are not hers: empty, not forbidden.
    let other = body(smart.get(&format!("AuditEvent?patient={bob}"), &ana_token).await).await;
    assert!(other["entry"].as_array().is_none_or(|e| e.is_empty()), "{other}");
    let all = body(smart.get("AuditEvent?_count=1", &ana_token).await).await;
    let mut next = all.clone();
    let mut seen = 0;
    loop {
        for entry in next["entry"].as_array().into_iter().flatten() {
            assert!(patients_of(&entry["resource"]).iter().all(|p| p == &format!("Patient/{ana}")), "{entry}");
            seen += 1;
        }
        let Some(url) = next["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") else { break };
        let url = url["url"].as_str().unwrap().to_string();
        let response = smart.http.get(url).bearer_auth(&ana_token).send().await.unwrap();
        next = body(response).await;
    }
    assert!(seen >= 2, "paged through her own events");
    let admin_log = body(smart.get(&format!("AuditEvent?patient={bob}&_count=100"), &admin).await).await;
    let bobs = admin_log["entry"].as_array().unwrap();
    let bob_read = bobs
        .iter()
        .find(|e| subtype(&e["resource"]) == "read" && data_of(&e["resource"]) == [format!("Patient/{bob}")])
        .expect("the doctor's read of Bob");
    let id = bob_read["resource"]["id"].as_str().unwrap();
    assert_eq!(smart.get(&format!("AuditEvent/{id}"), &ana_token).await.status(), 404);
    assert_eq!(smart.get(&format!("AuditEvent/{id}"), &admin).await.status(), 200);

    // Her reading of her log is itself on record, by her.
    let again = body(smart.get(&format!("AuditEvent?patient={ana}&_count=100"), &admin).await).await;
    let hers = again["entry"].as_array().unwrap().iter().any(|e| {
        let event = &e["resource"];
        subtype(event) == "search-type"
            && event["agent"].as_array().unwrap().iter().any(|a| a["who"]["reference"] == format!("Patient/{ana}"))
    });
    assert!(hers, "{again}");
}

/// Hearth's code of a security event (`login`, `token`…).
fn security_code(event: &Value) -> &str {
    let own = event["subtype"].as_array().into_iter().flatten().find(|s| s["system"] == "urn:hearth:security-event");
    own.and_then(|s| s["code"].as_str()).unwrap_or_default()
}

async fn sign_ins_tokens_and_account_changes_are_on_record(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let ana = smart.create(&admin, &json!({"resourceType": "Patient", "name": [{"family": "Ana"}]})).await;
    smart.add_public_client("app").await;
    smart.add_user("ana", "ana-password-1", &format!("Patient/{ana}"), &[]).await;

    // A wrong password, then the whole launch with a refresh token.
    let pkce = common::smart::Pkce::new();
    let page = smart.authorize("app", "launch/patient patient/*.rs offline_access", &pkce, &[]).await;
    let page = page.text().await.unwrap();
    let wrong = smart.login(&page, "ana", "not-her-password").await;
    assert_eq!(wrong.status(), 401);
    // A password typed in the name box is not a name to record.
    let confused = smart.login(&page, "ana-password-1", "").await;
    assert_eq!(confused.status(), 401);
    let authorization =
        Authorization::new("app", "launch/patient patient/*.rs offline_access", "ana", "ana-password-1");
    let token = smart.launch(&authorization).await;
    let refresh_token = token["refresh_token"].as_str().unwrap();
    let refreshed = smart.refresh("app", refresh_token, None).await;
    assert_eq!(refreshed.status(), 200);
    let refreshed: Value = refreshed.json().await.unwrap();
    let reused = smart.refresh("app", refresh_token, None).await;
    assert_eq!(reused.status(), 400, "a refresh token works once");
    let revoke = smart.revoke("app", refreshed["access_token"].as_str().unwrap()).await;
    assert_eq!(revoke.status(), 200);
    let disable = smart.http.post(smart.url("/auth/accounts/ana/disable")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(disable.status(), 200);
    let forged =
        smart.fhir_request(Method::GET, &format!("Patient/{ana}"), "forged").header("x-request-id", "forged-1");
    assert_eq!(forged.send().await.unwrap().status(), 401);

    let log = body(smart.get("AuditEvent?_sort=date&_count=1000", &admin).await).await;
    let events: Vec<&Value> = log["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    let of = |code: &str| events.iter().copied().filter(|e| security_code(e) == code).collect::<Vec<_>>();
    let logins = of("login");
    let outcomes: Vec<&str> = logins.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["4", "4", "0"], "the failed sign-ins, then hers");
    assert_eq!(logins[0]["agent"][0]["who"]["reference"], format!("Patient/{ana}"), "whose account was tried");
    assert_eq!(logins[0]["agent"][0]["altId"], "ana");
    assert!(logins[0]["outcomeDesc"].as_str().is_some_and(|d| !d.is_empty()));
    assert!(logins[1]["outcomeDesc"].as_str().unwrap().contains("no account has that name"), "{}", logins[1]);
    assert_eq!(logins[2]["agent"][0]["who"]["reference"], format!("Patient/{ana}"));
    assert_eq!(logins[2]["type"]["code"], "110114");
    assert_eq!(logins[2]["subtype"][0]["code"], "110122");
    let consents = of("consent");
    assert_eq!(consents.len(), 1);
    assert_eq!(consents[0]["outcome"], "0");
    let tokens = of("token");
    assert_eq!(tokens.iter().filter(|e| e["outcome"] == "0").count(), 2, "the admin's and hers");
    let hers = tokens.iter().find(|e| e["agent"][0]["who"]["reference"] == format!("Patient/{ana}")).unwrap();
    assert_eq!(hers["agent"][0]["policy"].as_array().unwrap().len(), 1, "the token's jti");
    let client = hers["agent"].as_array().unwrap().iter().find(|a| a["type"]["coding"][0]["code"] == "110153").unwrap();
    assert_eq!(client["who"]["identifier"]["value"], "app");
    let refreshes = of("refresh");
    let outcomes: Vec<&str> = refreshes.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["0", "4"], "the refresh, then its replay");
    assert_eq!(of("revoke").len(), 1);
    let disabled = of("account-disabled");
    assert_eq!(disabled.len(), 1);
    assert_eq!(data_of(disabled[0]), [format!("Patient/{ana}")], "whose account it is");
    assert_eq!(disabled[0]["agent"][0]["who"]["identifier"]["value"], "admin", "who disabled it");

    let refused = of_request(events.iter().copied(), "forged-1");
    assert_eq!(refused.len(), 1, "a request with a forged token is on record");
    assert_eq!((subtype(refused[0]), refused[0]["outcome"].as_str()), ("read", Some("4")));
    assert!(refused[0]["outcomeDesc"].as_str().unwrap().starts_with("401"));

    // No secret is ever recorded: not the passwords, the codes or the tokens.
    let text = log.to_string();
    for secret in ["ana-password-1", "not-her-password", refresh_token, token["access_token"].as_str().unwrap(), &admin]
    {
        assert!(!text.contains(secret), "a secret is in the audit log");
    }
}

/// A `hearth` process, started on `database_url` without authorization.
async fn open_process(database_url: &str) -> common::process::Process {
    common::process::Process::serve(database_url, &[], &["--auth", "off"], |command| {
        command.env("RUST_LOG", "warn").stdout(Stdio::null());
    })
    .await
}

async fn audit_rows_survive_kill_9_and_verify_finds_tampering(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let database_url = match db {
        Db::Sqlite => format!("sqlite://{}", dir.path().join("hearth.db").display()),
        Db::Postgres => common::postgres::fresh_database().await,
    };
    let mut process = open_process(&database_url).await;
    let client = reqwest::Client::new();
    let base = process.base();
    let patient = json!({"resourceType": "Patient", "id": "kill"});
    let put = client.put(format!("{base}/Patient/kill")).header("content-type", "application/fhir+json");
    assert_eq!(put.body(patient.to_string()).send().await.unwrap().status(), 201);
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        let request_id = format!("kill-{n}");
        let response =
            client.get(format!("{base}/Patient/kill")).header("x-request-id", &request_id).send().await.unwrap();
        assert_eq!(response.status(), 200);
        acknowledged.push(request_id);
    }
    process.kill();

    let process = open_process(&database_url).await;
    let bundle: Value =
        client.get(format!("{}/AuditEvent?_count=1000", process.base())).send().await.unwrap().json().await.unwrap();
    let events: Vec<Value> = bundle["entry"].as_array().unwrap().iter().map(|e| e["resource"].clone()).collect();
    for request_id in &acknowledged {
        assert_eq!(of_request(&events, request_id).len(), 1, "{request_id} is on record after kill -9");
    }
    drop(process);

    let verify = |database_url: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(["--database", database_url, "audit", "verify"])
            .env("RUST_LOG", "off")
            .output()
            .expect("hearth audit verify")
    };
    let intact = verify(&database_url);
    let said = String::from_utf8_lossy(&intact.stdout).to_string();
    assert!(intact.status.success(), "{said}");
    assert!(said.contains("intact"), "{said}");

    // Someone with database access rewrites what one read was.
    tamper(&database_url, "kill-7").await;
    let broken = verify(&database_url);
    let said = String::from_utf8_lossy(&broken.stdout).to_string();
    assert_eq!(broken.status.code(), Some(1), "{said}");
    assert!(said.contains("broken at position"), "{said}");
}

/// Runs `sql` (with `$1` = `value`) on the database directly; the rows it changed.
async fn execute(database_url: &str, sql: &str, value: &str) -> u64 {
    if database_url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(database_url).await.unwrap();
        sqlx::query(sql).bind(value).execute(&pool).await.unwrap().rows_affected()
    } else {
        let pool = sqlx::SqlitePool::connect(database_url).await.unwrap();
        sqlx::query(sql).bind(value).execute(&pool).await.unwrap().rows_affected()
    }
}

async fn verify_checks_what_searches_read_and_retention_keeps_the_chain(db: Db) {
    let server = TestServer::start(db).await;
    let ana = json!({"resourceType": "Patient", "id": "ana"});
    assert_eq!(send(&server, Method::PUT, "Patient/ana", Some(&ana), "v-0").await, 201);
    for n in 1..=5 {
        assert_eq!(send(&server, Method::GET, "Patient/ana", None, &format!("v-{n}")).await, 200);
    }
    // The reads' events are spooled; a search of the log on the node waits until they are
    // committed.
    assert!(all_events(&server).await.len() >= 6);
    let store = hearth::store::open_shared(&server.database_url).await.unwrap();
    hearth::audit::chain::seal(store.as_ref()).await.unwrap();
    // A spool committed again after a crash: what is on record is skipped, and the chain
    // gets no gap and no position twice.
    let spooled = hearth::audit::balp::audit_event(&hearth::audit::Occurrence {
        activity: hearth::audit::Activity::Rest("read"),
        outcome: hearth::audit::Outcome::Success,
        who: Default::default(),
        request_id: Some("v-again"),
        data: vec!["Patient/ana".into()],
        query: None,
        patients: vec!["ana".into()],
    });
    let link = hearth::audit::chain::link_hash;
    assert_eq!(store.record_sealed_audit(std::slice::from_ref(&spooled), link).await.unwrap(), 1);
    assert_eq!(store.record_sealed_audit(&[spooled], link).await.unwrap(), 0);
    let intact = hearth::audit::chain::verify(store.as_ref()).await.unwrap();
    assert_eq!(intact.first_break, None);
    assert!(intact.checked >= 7);

    // The patient's log is read through audit_patients: a row removed there hides an event.
    let removed = execute(
        &server.database_url,
        "DELETE FROM audit_patients WHERE seq = (SELECT seq FROM audit_events WHERE request_id = $1)",
        "v-3",
    )
    .await;
    assert_eq!(removed, 1);
    let broken = hearth::audit::chain::verify(store.as_ref()).await.unwrap();
    let (_, why) = broken.first_break.expect("the removed row is found");
    assert!(why.contains("patients"), "{why}");
    let restored =
        "INSERT INTO audit_patients (patient_id, seq) SELECT 'ana', seq FROM audit_events WHERE request_id = $1";
    assert_eq!(execute(&server.database_url, restored, "v-3").await, 1);
    assert_eq!(hearth::audit::chain::verify(store.as_ref()).await.unwrap().first_break, None);

    // Retention removes a prefix and leaves its last hash as the anchor: still intact.
    let everything = all_events(&server).await.len();
    let forgotten = store.forget_audit(time::OffsetDateTime::now_utc() + time::Duration::hours(1), 3).await.unwrap();
    assert_eq!(forgotten, 3);
    let after = hearth::audit::chain::verify(store.as_ref()).await.unwrap();
    assert_eq!(after.first_break, None);
    assert_eq!(after.anchor.0, 3);
    let left = all_events(&server).await;
    assert!(left.len() < everything, "the removed events are gone from searches");
}

/// A spool directory others may write (they could read the events, remove them or plant
/// forged ones) stops `hearth serve` at start-up, saying which directory.
#[tokio::test]
async fn a_spool_directory_others_may_write_stops_the_server() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let database = format!("sqlite://{}", dir.path().join("hearth.db").display());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &database, "--auth", "off"])
        .args(["--audit-spool-dir", shared.to_str().unwrap()])
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("hearth serve kept running with a spool directory others may write");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut said = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut said).unwrap();
    assert!(!status.success());
    assert!(said.contains(shared.to_str().unwrap()) && said.contains("writable by it alone"), "{said}");
}

/// Read events of a killed node wait in its spool for the next node of the same database;
/// a node of another database spooling in the same directory leaves them alone.
async fn a_stopped_nodes_spool_is_committed_by_the_next_node_of_its_database(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let (first, other) = match db {
        Db::Sqlite => (
            format!("sqlite://{}", dir.path().join("first.db").display()),
            format!("sqlite://{}", dir.path().join("other.db").display()),
        ),
        Db::Postgres => (common::postgres::fresh_database().await, common::postgres::fresh_database().await),
    };
    let spool_dir = dir.path().join("spools");
    let spool_flag = ["--auth", "off", "--audit-spool-dir", spool_dir.to_str().unwrap()];
    let start = |database_url: String| async move {
        common::process::Process::serve(&database_url, &[], &spool_flag, |command| {
            command.env("RUST_LOG", "warn").stdout(Stdio::null());
        })
        .await
    };
    let spools = || {
        let mut names: Vec<String> = std::fs::read_dir(&spool_dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let client = reqwest::Client::new();
    let search = |base: String| {
        let client = client.clone();
        async move {
            let bundle: Value =
                client.get(format!("{base}/AuditEvent?_count=1000")).send().await.unwrap().json().await.unwrap();
            bundle["entry"].as_array().unwrap().iter().map(|e| e["resource"].clone()).collect::<Vec<Value>>()
        }
    };

    let mut node = start(first.clone()).await;
    let patient = json!({"resourceType": "Patient", "id": "spooled"});
    let put = client.put(format!("{}/Patient/spooled", node.base())).header("content-type", "application/fhir+json");
    assert_eq!(put.body(patient.to_string()).send().await.unwrap().status(), 201);
    for n in 0..10 {
        let read =
            client.get(format!("{}/Patient/spooled", node.base())).header("x-request-id", format!("spooled-{n}"));
        assert_eq!(read.send().await.unwrap().status(), 200);
    }
    node.kill();
    let left = spools();
    assert_eq!(left.len(), 1, "the killed node's spool is left: {left:?}");

    let elsewhere = start(other).await;
    let events = search(elsewhere.base()).await;
    assert!(of_request(&events, "spooled-0").is_empty(), "another database's events are not taken");
    assert!(spools().contains(&left[0]), "another database's node leaves the spool: {:?}", spools());
    drop(elsewhere);

    let next = start(first).await;
    let events = search(next.base()).await;
    for n in 0..10 {
        assert_eq!(of_request(&events, &format!("spooled-{n}")).len(), 1, "spooled-{n} is on record, once");
    }
    assert!(!spools().contains(&left[0]), "the committed spool is removed: {:?}", spools());
}

/// Changes the body of the AuditEvent of request `request_id` directly in the database.
async fn tamper(database_url: &str, request_id: &str) {
    let sql = "UPDATE audit_events SET body = $1 WHERE request_id = $2";
    let forged = br#"{"resourceType":"AuditEvent","note":"nothing happened"}"#.to_vec();
    if database_url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(database_url).await.unwrap();
        let changed = sqlx::query(sql).bind(forged).bind(request_id).execute(&pool).await.unwrap();
        assert_eq!(changed.rows_affected(), 1);
    } else {
        let pool = sqlx::SqlitePool::connect(database_url).await.unwrap();
        let changed = sqlx::query(sql).bind(forged).bind(request_id).execute(&pool).await.unwrap();
        assert_eq!(changed.rows_affected(), 1);
    }
}

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
    let events = all_events(&server).await;
    assert!(events.iter().all(|e| e["id"] != "forged" && e["source"]["observer"]["display"] != "elsewhere"));
    assert!(events.iter().any(|e| subtype(e) == "create" && e["outcome"] == "4"), "refused writes are on record");

    let capabilities = body(server.get("metadata").await).await;
    let audit =
        capabilities["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "AuditEvent").unwrap();
    assert_eq!(audit["interaction"], json!([{"code": "read"}, {"code": "search-type"}]));
}

on_both_databases!(
    audit_events_are_not_written_through_the_api,
    each_interaction_leaves_its_audit_event,
    patients_see_who_read_their_chart_and_nobody_else,
    sign_ins_tokens_and_account_changes_are_on_record,
    audit_rows_survive_kill_9_and_verify_finds_tampering,
    verify_checks_what_searches_read_and_retention_keeps_the_chain,
    a_stopped_nodes_spool_is_committed_by_the_next_node_of_its_database,
);
