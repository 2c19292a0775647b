//! Accounts, black-box on both databases. Registration by invitation: staff invite the person
//! of a Patient or RelatedPerson (the link printed or e-mailed), the person opens the one-time
//! link, confirms their birth date, chooses a username and a password, and is signed in. A
//! forgotten password: a reset link by e-mail, which ends every session and token. Every
//! refusal on the way.

mod common;

use common::smart::{input_value, smart_server_with, Authorization, Pkce, Smart};
use common::smtp::SmtpSink;
use common::{Db, TestServer};
use hearth::auth::records::user;
use hearth::auth::registration::{invite, registration_link};
use hearth::mail::{MailSettings, Mailer};
use hearth::server::Settings;
use reqwest::{Response, StatusCode};
use serde_json::json;

const BIRTH_DATE: &str = "1980-02-01";
const PASSWORD: &str = "violet kettle drums at noon";

struct Clinic {
    _server: TestServer,
    smart: Smart,
    patient: String,
    admin: String,
}

async fn clinic(db: Db) -> Clinic {
    clinic_with(db, |s| s).await
}

async fn clinic_with(db: Db, adjust: impl FnOnce(Settings) -> Settings) -> Clinic {
    let server = smart_server_with(db, adjust).await;
    let smart = Smart::new(&server).await;
    smart.add_secret_client("admin", "admin-secret").await;
    let admin = smart.system_token("admin", "admin-secret", "system/*.cruds").await;
    let resource = json!({"resourceType": "Patient", "name": [{"family": "Rivera"}], "birthDate": BIRTH_DATE});
    let patient = smart.create(&admin, &resource).await;
    smart.add_public_client("app").await;
    Clinic { _server: server, smart, patient, admin }
}

impl Clinic {
    async fn invite(&self, fhir_user: &str) -> String {
        invite(self.smart.store.as_ref(), fhir_user, time::Duration::days(7)).await.unwrap()
    }

    /// The registration page of a token's link.
    async fn page(&self, token: &str) -> Response {
        let link = registration_link(&self.smart.root, token);
        self.smart.http.get(link).send().await.unwrap()
    }

    /// An authorization request of the app `app` from a browser with the session `cookie`.
    async fn authorize_in_browser(&self, scope: &str, cookie: &str) -> Response {
        let challenge = Pkce::new().challenge;
        let query = [
            ("response_type", "code"),
            ("client_id", "app"),
            ("redirect_uri", common::smart::REDIRECT),
            ("scope", scope),
            ("state", "s"),
            ("aud", self.smart.aud.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ];
        let request = self.smart.http.get(self.smart.url("/auth/authorize")).query(&query);
        request.header("cookie", cookie).send().await.unwrap()
    }

    /// Posts the form of `page` with these answers.
    async fn register(&self, page: &str, birth_date: &str, username: &str, password: &str) -> Response {
        let form = [
            ("token", input_value(page, "token").unwrap()),
            ("csrf", input_value(page, "csrf").unwrap()),
            ("birth_date", birth_date.into()),
            ("username", username.into()),
            ("password", password.into()),
        ];
        self.smart.http.post(self.smart.url("/auth/register")).form(&form).send().await.unwrap()
    }
}

/// The output parameter `name` without its name.
fn output(parameters: &serde_json::Value, name: &str) -> serde_json::Value {
    let found = parameters["parameter"].as_array().unwrap().iter().find(|p| p["name"] == name);
    let mut found = found.cloned().unwrap_or_default();
    found.as_object_mut().map(|o| o.remove("name"));
    found
}

fn alert(html: &str) -> String {
    html.split("role=\"alert\">").nth(1).map(|rest| rest.split('<').next().unwrap().to_string()).unwrap_or_default()
}

async fn an_invited_patient_registers_and_is_signed_in(db: Db) {
    let clinic = clinic(db).await;
    let token = clinic.invite(&format!("Patient/{}", clinic.patient)).await;
    assert!(token.len() >= 43, "at least 256 bits");
    let response = clinic.page(&token).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-security-policy"].to_str().unwrap().contains("default-src"));
    let page = response.text().await.unwrap();
    assert!(!page.contains(BIRTH_DATE), "the page does not give the answer away");

    let wrong = clinic.register(&page, "1980-02-02", "ana.rivera", PASSWORD).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(alert(&wrong.text().await.unwrap()).contains("date of birth"));
    for (password, problem) in
        [("short-one", "12 characters"), ("ana.rivera-2024!", "username"), ("password123456", "too easy")]
    {
        let weak = clinic.register(&page, BIRTH_DATE, "ana.rivera", password).await;
        assert_eq!(weak.status(), StatusCode::BAD_REQUEST, "{password}");
        assert!(alert(&weak.text().await.unwrap()).contains(problem), "{password}");
    }
    let bad_name = clinic.register(&page, BIRTH_DATE, "ana rivera<script>", PASSWORD).await;
    assert_eq!(bad_name.status(), StatusCode::BAD_REQUEST);
    let long_password = clinic.register(&page, BIRTH_DATE, "ana.rivera", &"violet kettle ".repeat(20)).await;
    assert_eq!(long_password.status(), StatusCode::BAD_REQUEST);
    assert!(alert(&long_password.text().await.unwrap()).contains("at most 256"));
    let oversize = clinic.register(&page, BIRTH_DATE, &"a".repeat(100 * 1024), PASSWORD).await;
    assert_eq!(oversize.status(), StatusCode::PAYLOAD_TOO_LARGE, "a form is a few KiB");
    clinic.smart.add_user("taken", "taken-password", "Practitioner/1", &[]).await;
    assert_eq!(clinic.register(&page, BIRTH_DATE, "taken", PASSWORD).await.status(), StatusCode::CONFLICT);
    let forged = page.replace(&input_value(&page, "csrf").unwrap(), "forged");
    assert_eq!(clinic.register(&forged, BIRTH_DATE, "ana.rivera", PASSWORD).await.status(), StatusCode::FORBIDDEN);
    let cross_site = clinic
        .smart
        .http
        .post(clinic.smart.url("/auth/register"))
        .header("origin", "https://evil.example")
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), StatusCode::FORBIDDEN);
    assert!(user(clinic.smart.store.as_ref(), "ana.rivera").await.unwrap().is_none(), "nothing stored yet");

    let registered = clinic.register(&page, BIRTH_DATE, "ana.rivera", PASSWORD).await;
    assert_eq!(registered.status(), StatusCode::CREATED);
    let set_cookie = registered.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set_cookie.starts_with("hearth_session=") && set_cookie.contains("HttpOnly"));
    let stored = user(clinic.smart.store.as_ref(), "ana.rivera").await.unwrap().expect("the account");
    assert_eq!(stored.fhir_user, format!("Patient/{}", clinic.patient));
    assert!(stored.patients.is_empty() && stored.related.is_empty(), "a patient reaches their own record");
    assert!(stored.password_hash.starts_with("$argon2id$"));

    // Signed in: an authorization request from this browser goes straight to consent.
    let cookie = set_cookie.split(';').next().unwrap();
    let response = clinic.authorize_in_browser("openid fhirUser launch/patient patient/*.rs", cookie).await;
    assert_eq!(response.status(), StatusCode::OK);
    let consent = response.text().await.unwrap();
    assert!(consent.contains("ana.rivera") && !consent.contains("name=\"password\""), "{consent}");

    // The link is used up; signing in with the new password works.
    assert_eq!(clinic.page(&token).await.status(), StatusCode::GONE);
    assert_eq!(clinic.register(&page, BIRTH_DATE, "ana.two", PASSWORD).await.status(), StatusCode::GONE);
    let login = clinic.smart.authorize("app", "openid patient/*.rs", &Pkce::new(), &[]).await.text().await.unwrap();
    assert_eq!(clinic.smart.login(&login, "ana.rivera", PASSWORD).await.status(), 303);
}

async fn links_expire_lock_and_serve_caregivers(db: Db) {
    let clinic = clinic(db).await;
    // Five wrong birth dates lock the link.
    let token = clinic.invite(&format!("Patient/{}", clinic.patient)).await;
    let page = clinic.page(&token).await.text().await.unwrap();
    for attempt in 1..=5 {
        let response = clinic.register(&page, "2001-01-01", "guesser", PASSWORD).await;
        let expected = if attempt < 5 { StatusCode::UNAUTHORIZED } else { StatusCode::TOO_MANY_REQUESTS };
        assert_eq!(response.status(), expected, "attempt {attempt}");
    }
    assert_eq!(clinic.register(&page, BIRTH_DATE, "guesser", PASSWORD).await.status(), StatusCode::GONE);
    assert_eq!(clinic.page(&token).await.status(), StatusCode::GONE);

    // An expired link, and links that never existed.
    let fhir_user = format!("Patient/{}", clinic.patient);
    let expired = invite(clinic.smart.store.as_ref(), &fhir_user, time::Duration::seconds(-1)).await.unwrap();
    assert_eq!(clinic.page(&expired).await.status(), StatusCode::GONE);
    assert_eq!(clinic.page("made-up").await.status(), StatusCode::GONE);
    assert_eq!(clinic.page("").await.status(), StatusCode::GONE);

    // Only people with a birth date on record are invited.
    let practitioner = clinic.smart.create(&clinic.admin, &json!({"resourceType": "Practitioner"})).await;
    assert!(invite(clinic.smart.store.as_ref(), &format!("Practitioner/{practitioner}"), time::Duration::days(1))
        .await
        .is_err());
    let undated = clinic.smart.create(&clinic.admin, &json!({"resourceType": "Patient"})).await;
    assert!(invite(clinic.smart.store.as_ref(), &format!("Patient/{undated}"), time::Duration::days(1)).await.is_err());

    // Two posts of one link at once make one account.
    let token = clinic.invite(&format!("Patient/{}", clinic.patient)).await;
    let page = clinic.page(&token).await.text().await.unwrap();
    let (first, second) = tokio::join!(
        clinic.register(&page, BIRTH_DATE, "twin.a", PASSWORD),
        clinic.register(&page, BIRTH_DATE, "twin.b", PASSWORD)
    );
    let mut statuses = [first.status().as_u16(), second.status().as_u16()];
    statuses.sort();
    assert_eq!(statuses, [201, 410]);
    let store = clinic.smart.store.as_ref();
    let accounts = [user(store, "twin.a").await.unwrap(), user(store, "twin.b").await.unwrap()];
    assert_eq!(accounts.iter().filter(|a| a.is_some()).count(), 1);

    // A caregiver registers for the patient their RelatedPerson names, and reaches that patient
    // through it (tests/proxies.rs follows the RelatedPerson's changes).
    let related = json!({"resourceType": "RelatedPerson", "patient": {"reference": format!("Patient/{}", clinic.patient)},
        "birthDate": "1955-06-30"});
    let caregiver = clinic.smart.create(&clinic.admin, &related).await;
    let token = clinic.invite(&format!("RelatedPerson/{caregiver}")).await;
    let page = clinic.page(&token).await.text().await.unwrap();
    assert_eq!(clinic.register(&page, "1955-06-30", "marta", PASSWORD).await.status(), StatusCode::CREATED);
    let stored = user(clinic.smart.store.as_ref(), "marta").await.unwrap().unwrap();
    assert_eq!((stored.fhir_user, stored.patients), (format!("RelatedPerson/{caregiver}"), vec![]));
    let token = clinic.smart.launch(&Authorization::new("app", "launch/patient patient/*.rs", "marta", PASSWORD)).await;
    assert_eq!(token["patient"], clinic.patient.as_str());
}

async fn staff_invite_through_the_api_and_patients_cannot(db: Db) {
    let clinic = clinic(db).await;
    let invite_as = |token: String, path: String| {
        let url = format!("{}/{path}/$invite", clinic.smart.fhir);
        let request = clinic.smart.http.post(url).bearer_auth(token);
        async move { request.json(&json!({"resourceType": "Parameters"})).send().await.unwrap() }
    };
    let patient_path = format!("Patient/{}", clinic.patient);
    let response = invite_as(clinic.admin.clone(), patient_path.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let parameters: serde_json::Value = response.json().await.unwrap();
    assert_eq!(output(&parameters, "delivery"), json!({"valueCode": "print"}), "no e-mail: printed");
    let link = output(&parameters, "link")["valueUrl"].as_str().unwrap().to_string();
    assert!(link.starts_with(&format!("{}/auth/register?token=", clinic.smart.root)), "{link}");
    assert!(output(&parameters, "expires")["valueInstant"].is_string());
    let by_email = json!({"resourceType": "Parameters", "parameter": [{"name": "delivery", "valueCode": "email"}]});
    let url = format!("{}/{patient_path}/$invite", clinic.smart.fhir);
    let refused = clinic.smart.http.post(url).bearer_auth(&clinic.admin).json(&by_email).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY, "this server sends no e-mail");
    let page = clinic.smart.http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert_eq!(clinic.register(&page, BIRTH_DATE, "ana.api", PASSWORD).await.status(), StatusCode::CREATED);

    // A patient's own token, even one that may update the record, invites no one; nor does
    // staff that may only read.
    let own = clinic.smart.user_token("ana", &patient_path, &[], "patient/*.cruds").await;
    assert_eq!(invite_as(own, patient_path.clone()).await.status(), StatusCode::FORBIDDEN);
    let reader = clinic.smart.system_token("admin", "admin-secret", "system/*.rs").await;
    assert_eq!(invite_as(reader, patient_path.clone()).await.status(), StatusCode::FORBIDDEN);
    // Who cannot register is refused with the reason; who does not exist is not found.
    let undated = clinic.smart.create(&clinic.admin, &json!({"resourceType": "Patient"})).await;
    let response = invite_as(clinic.admin.clone(), format!("Patient/{undated}")).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(response.text().await.unwrap().contains("birthDate"));
    assert_eq!(invite_as(clinic.admin.clone(), "Patient/nobody".into()).await.status(), StatusCode::NOT_FOUND);
}

async fn invitations_are_emailed_from_the_queue(db: Db) {
    let sink = SmtpSink::start().await;
    let clinic = mailing_clinic(db, &sink).await;
    let resource = json!({"resourceType": "Patient", "name": [{"family": "Okafor"}], "birthDate": "1972-11-05",
        "telecom": [{"system": "phone", "value": "555-0100"}, {"system": "email", "value": "chi@example.org"}]});
    let patient = clinic.smart.create(&clinic.admin, &resource).await;
    let invite = |parameters: serde_json::Value| {
        let url = format!("{}/Patient/{patient}/$invite", clinic.smart.fhir);
        let request = clinic.smart.http.post(url).bearer_auth(&clinic.admin).json(&parameters);
        async move { request.send().await.unwrap() }
    };
    let response = invite(json!({"resourceType": "Parameters"})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let parameters: serde_json::Value = response.json().await.unwrap();
    assert_eq!(output(&parameters, "delivery"), json!({"valueCode": "email"}));
    assert_eq!(output(&parameters, "email"), json!({"valueString": "chi@example.org"}));
    assert!(!parameters.to_string().contains("token="), "an e-mailed link is not answered");

    let mail = sink.wait_for(1).await.remove(0);
    assert_eq!(mail.to, vec!["chi@example.org".to_string()]);
    assert!(mail.from.contains("clinic@example.org"));
    let text = mail.body();
    assert!(
        !mail.data.contains("Okafor") && !text.contains("Okafor") && !text.contains("1972"),
        "no health data: {text}"
    );
    let link = text.lines().find(|l| l.contains("/auth/register?token=")).expect("the link").trim().to_string();
    let page = clinic.smart.http.get(&link).send().await.unwrap().text().await.unwrap();
    assert_eq!(clinic.register(&page, "1972-11-05", "chi.okafor", PASSWORD).await.status(), StatusCode::CREATED);

    // Another address on request, printed on request; a forged address is refused, unsent.
    let to_other =
        json!({"resourceType": "Parameters", "parameter": [{"name": "email", "valueString": "carer@example.org"}]});
    assert_eq!(invite(to_other).await.status(), StatusCode::OK);
    assert_eq!(sink.wait_for(2).await[1].to, vec!["carer@example.org".to_string()]);
    let printed = json!({"resourceType": "Parameters", "parameter": [{"name": "delivery", "valueCode": "print"}]});
    let parameters: serde_json::Value = invite(printed).await.json().await.unwrap();
    assert!(output(&parameters, "link")["valueUrl"].as_str().unwrap().contains("token="));
    let injected = json!({"resourceType": "Parameters", "parameter": [
        {"name": "email", "valueString": "chi@example.org\r\nBcc: everyone@example.org"}]});
    assert_eq!(invite(injected).await.status(), StatusCode::BAD_REQUEST);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(sink.delivered().len(), 2, "nothing more was sent");
}

/// An SMTP server that fails for a while: the e-mail is not lost but queued again for a later
/// try (the schedule says one minute for the second), and the later try delivers a working link.
async fn an_email_the_smtp_server_refuses_is_tried_again(db: Db) {
    let sink = SmtpSink::refusing(1).await;
    let clinic = mailing_clinic(db, &sink).await;
    let url = format!("{}/Patient/{}/$invite", clinic.smart.fhir, clinic.patient);
    let to = json!({"resourceType": "Parameters", "parameter": [{"name": "email", "valueString": "ana@example.org"}]});
    let response = clinic.smart.http.post(url).bearer_auth(&clinic.admin).json(&to).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    for _ in 0..200 {
        if sink.refused() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(sink.refused(), 1, "the first try reached the SMTP server");

    // The first try's job says what became of it, and the next try waits its turn.
    let store = clinic.smart.store.as_ref();
    let mut next_try = None;
    for _ in 0..100 {
        for id in 1..=20 {
            let Some(job) = store.job(id).await.unwrap().filter(|job| job.kind == "mail") else { continue };
            let message = job.message.clone().unwrap_or_default();
            if let Some(queued) = message.split("try 2 queued as job ").nth(1) {
                next_try = Some((message.clone(), queued.parse::<i64>().unwrap()));
            }
        }
        if next_try.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (message, retry) = next_try.expect("the failed try queued the next");
    assert!(message.contains("not sent"), "{message}");
    let queued = store.job(retry).await.unwrap().unwrap();
    assert_eq!(queued.status, hearth::store::JobStatus::Queued);
    let parameters: serde_json::Value = serde_json::from_str(&queued.parameters).unwrap();
    assert_eq!(parameters["attempt"], 2);
    assert!(!queued.parameters.contains("token"), "the queue holds the purpose, not a link");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(sink.delivered().is_empty(), "not tried again at once");

    // A minute later (the job made due now, as the clock would), it is delivered.
    let mut tx = store.begin().await.unwrap();
    tx.enqueue_job("mail", &queued.parameters, time::OffsetDateTime::now_utc()).await.unwrap();
    tx.commit().await.unwrap();
    let mail = sink.wait_for(1).await.remove(0);
    assert_eq!(mail.to, vec!["ana@example.org".to_string()]);
    let link = mail.body().lines().find(|l| l.contains("/auth/register?token=")).expect("the link").trim().to_string();
    let page = clinic.smart.http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK, "the link of the try that was delivered works");
}

/// A clinic whose server e-mails through `sink`.
async fn mailing_clinic(db: Db, sink: &SmtpSink) -> Clinic {
    let settings = MailSettings { smtp_url: Some(sink.url()), from: "Clinic <clinic@example.org>".into() };
    let mailer = Mailer::new(&settings).unwrap();
    clinic_with(db, |s| Settings { mailer, ..s }).await
}

async fn a_forgotten_password_is_reset_by_email_and_ends_every_session(db: Db) {
    let sink = SmtpSink::start().await;
    let clinic = mailing_clinic(db, &sink).await;
    let resource = json!({"resourceType": "Patient", "birthDate": BIRTH_DATE,
        "telecom": [{"system": "email", "value": "chi@example.org"}]});
    let patient = clinic.smart.create(&clinic.admin, &resource).await;
    clinic.smart.add_user("chi", "chi-password", &format!("Patient/{patient}"), &[]).await;
    let scope = "openid fhirUser offline_access launch/patient patient/*.rs";
    let tokens = clinic.smart.launch(&Authorization::new("app", scope, "chi", "chi-password")).await;
    let (access, refresh) = (tokens["access_token"].as_str().unwrap(), tokens["refresh_token"].as_str().unwrap());
    let without_refresh =
        clinic.smart.launch(&Authorization::new("app", "openid patient/*.rs", "chi", "chi-password")).await;
    let access_only = without_refresh["access_token"].as_str().unwrap().to_string();
    let login = clinic.smart.authorize("app", scope, &Pkce::new(), &[]).await.text().await.unwrap();
    let session = clinic.smart.sign_in(&login, "chi", "chi-password").await.cookie;
    let read_patient = || clinic.smart.http.get(format!("{}/Patient/{patient}", clinic.smart.fhir)).bearer_auth(access);
    assert_eq!(read_patient().send().await.unwrap().status(), StatusCode::OK);

    let forgot = |account: &'static str| {
        let request = clinic.smart.http.post(clinic.smart.url("/auth/forgot")).form(&[("account", account)]);
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };
    let known = forgot("chi").await;
    let unknown = forgot("nobody").await;
    assert_eq!(known.0, StatusCode::OK);
    assert_eq!(known, unknown, "the same answer whether or not the account exists");
    let mail = sink.wait_for(1).await.remove(0);
    assert_eq!(mail.to, vec!["chi@example.org".to_string()]);
    let text = mail.body();
    let link = text.lines().find(|l| l.contains("/auth/reset?token=")).expect("the link").trim().to_string();
    let page = clinic.smart.http.get(&link).send().await.unwrap().text().await.unwrap();
    let reset = |password: &str| {
        let form = [
            ("token", input_value(&page, "token").unwrap()),
            ("csrf", input_value(&page, "csrf").unwrap()),
            ("password", password.to_string()),
        ];
        clinic.smart.http.post(clinic.smart.url("/auth/reset")).form(&form).send()
    };
    assert_eq!(reset("short").await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(reset("password123456").await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert_eq!(reset(PASSWORD).await.unwrap().status(), StatusCode::OK);
    assert_eq!(reset("another fine password").await.unwrap().status(), StatusCode::GONE, "one use");

    // Everything of the account before ends: its access and refresh tokens, its session.
    assert_eq!(read_patient().send().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let read_without_refresh = clinic.smart.http.get(format!("{}/Patient/{patient}", clinic.smart.fhir));
    let status = read_without_refresh.bearer_auth(&access_only).send().await.unwrap().status();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "tokens without a refresh token end too");
    assert_eq!(clinic.smart.refresh("app", refresh, None).await.status(), StatusCode::BAD_REQUEST);
    let with_session = clinic.authorize_in_browser(scope, &session).await;
    assert!(with_session.text().await.unwrap().contains("name=\"password\""), "signed out: the sign-in form");
    let tokens = clinic.smart.launch(&Authorization::new("app", scope, "chi", PASSWORD)).await;
    assert!(tokens["access_token"].is_string(), "the new password signs in");

    // By e-mail address too; nothing is sent for an address of no account.
    forgot("CHI@example.org").await;
    forgot("stranger@example.org").await;
    assert_eq!(sink.wait_for(2).await[1].to, vec!["chi@example.org".to_string()]);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(sink.delivered().len(), 2);
}

/// `hearth user disable` runs in a process of its own beside the server: on PostgreSQL the
/// change feed, on SQLite the server's look for announcements every second, bring it to the
/// server's token checks. The test's store is such a second process's (`open_shared`, as the
/// command's).
async fn an_account_disabled_by_another_process_stops_within_seconds(db: Db) {
    let clinic = clinic(db).await;
    let patient_path = format!("Patient/{}", clinic.patient);
    clinic.smart.add_user("eve", "eve-password", &patient_path, &[]).await;
    let token =
        clinic.smart.launch(&Authorization::new("app", "launch/patient patient/*.rs", "eve", "eve-password")).await;
    let token = token["access_token"].as_str().unwrap().to_string();
    assert_eq!(clinic.smart.get(&patient_path, &token).await.status(), StatusCode::OK);
    let mut account = user(clinic.smart.store.as_ref(), "eve").await.unwrap().unwrap();
    account.disabled = true;
    hearth::auth::sign_out_everywhere(clinic.smart.store.as_ref(), account).await.unwrap();
    let started = std::time::Instant::now();
    while clinic.smart.get(&patient_path, &token).await.status() == StatusCode::OK {
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "the token still works after 5 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(clinic.smart.get(&patient_path, &token).await.status(), StatusCode::UNAUTHORIZED);
}

async fn disabled_accounts_stop_at_once_and_sign_in_to_nothing(db: Db) {
    let clinic = clinic(db).await;
    let patient_path = format!("Patient/{}", clinic.patient);
    clinic.smart.add_user("dee", "dee-password", &patient_path, &[]).await;
    let scope = "openid fhirUser launch/patient patient/*.rs";
    let access_only = clinic.smart.launch(&Authorization::new("app", scope, "dee", "dee-password")).await;
    let access_only = access_only["access_token"].as_str().unwrap().to_string();
    let offline = format!("{scope} offline_access");
    let with_refresh = clinic.smart.launch(&Authorization::new("app", &offline, "dee", "dee-password")).await;
    let refresh = with_refresh["refresh_token"].as_str().unwrap().to_string();
    let read = |token: String| {
        let request = clinic.smart.http.get(format!("{}/{patient_path}", clinic.smart.fhir)).bearer_auth(token);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(read(access_only.clone()).await, StatusCode::OK);

    let account = |action: &str, token: Option<&str>| {
        let url = clinic.smart.url(&format!("/auth/accounts/dee/{action}"));
        let request = clinic.smart.http.post(url);
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move { request.send().await.unwrap() }
    };
    // Only staff manage accounts: not without a token, not the patient, not a reader.
    assert_eq!(account("disable", None).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(account("disable", Some(&access_only)).await.status(), StatusCode::FORBIDDEN);
    let reader = clinic.smart.system_token("admin", "admin-secret", "system/*.rs").await;
    assert_eq!(account("disable", Some(&reader)).await.status(), StatusCode::FORBIDDEN);
    let unknown = clinic.smart.http.post(clinic.smart.url("/auth/accounts/nobody/disable")).bearer_auth(&clinic.admin);
    assert_eq!(unknown.send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(read(access_only.clone()).await, StatusCode::OK, "refusals changed nothing");
    let disabled = account("disable", Some(&clinic.admin)).await;
    assert_eq!(disabled.status(), StatusCode::OK);
    assert_eq!(disabled.json::<serde_json::Value>().await.unwrap(), json!({"username": "dee", "disabled": true}));
    assert_eq!(read(access_only.clone()).await, StatusCode::UNAUTHORIZED, "at once, a token without refresh too");
    assert_eq!(clinic.smart.refresh("app", &refresh, None).await.status(), StatusCode::BAD_REQUEST);
    let login = clinic.smart.authorize("app", scope, &Pkce::new(), &[]).await.text().await.unwrap();
    let refused = clinic.smart.login(&login, "dee", "dee-password").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(alert(&refused.text().await.unwrap()).contains("disabled"));
    let wrong = clinic.smart.login(&login, "dee", "not-the-password").await.text().await.unwrap();
    assert!(!alert(&wrong).contains("disabled"), "only the right password learns that it is disabled");

    assert_eq!(account("enable", Some(&clinic.admin)).await.status(), StatusCode::OK);
    let again = clinic.smart.launch(&Authorization::new("app", scope, "dee", "dee-password")).await;
    assert_eq!(read(again["access_token"].as_str().unwrap().to_string()).await, StatusCode::OK);
    assert_eq!(read(access_only).await, StatusCode::UNAUTHORIZED, "earlier tokens stay ended");
}

on_both_databases!(
    an_account_disabled_by_another_process_stops_within_seconds,
    an_email_the_smtp_server_refuses_is_tried_again,
    disabled_accounts_stop_at_once_and_sign_in_to_nothing,
    a_forgotten_password_is_reset_by_email_and_ends_every_session,
    invitations_are_emailed_from_the_queue,
    an_invited_patient_registers_and_is_signed_in,
    links_expire_lock_and_serve_caregivers,
    staff_invite_through_the_api_and_patients_cannot
);
