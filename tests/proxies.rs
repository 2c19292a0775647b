//! Proxy access from FHIR data, black-box on both databases: a caregiver registers through a
//! RelatedPerson's invitation, adds a second child's invitation to the same login, picks each
//! child on the consent page and never sees a third patient; the clinic ends access by editing
//! the RelatedPerson (`active`, `period`), which stops the caregiver's live tokens at their next
//! request; a parent's access to a child who has come of age ends unless renewed.

mod common;

use common::smart::{input_value, smart_server, Authorization, Pkce, SignedIn, Smart};
use common::{Db, TestServer};
use hearth::auth::records::user;
use hearth::auth::registration::{invite, registration_link};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};

const MOTHER_BORN: &str = "1984-05-06";
const PASSWORD: &str = "amber lantern over quiet hills";
const PORTAL_SCOPE: &str = "launch/patient patient/*.cruds offline_access";

struct Clinic {
    _server: TestServer,
    smart: Smart,
    admin: String,
}

async fn clinic(db: Db) -> Clinic {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    smart.add_public_client("app").await;
    Clinic { _server: server, smart, admin }
}

impl Clinic {
    async fn patient(&self, given: &str, birth_date: &str) -> String {
        let resource = json!({"resourceType": "Patient", "name": [{"given": [given], "family": "Rivera"}], "birthDate": birth_date});
        self.smart.create(&self.admin, &resource).await
    }

    /// A RelatedPerson for `patient`: the mother, with `extra` elements.
    async fn mother_of(&self, patient: &str, extra: Value) -> String {
        let mut resource = json!({
            "resourceType": "RelatedPerson",
            "patient": {"reference": format!("Patient/{patient}")},
            "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "MTH"}]}],
            "name": [{"given": ["Maria"], "family": "Rivera"}],
            "birthDate": MOTHER_BORN
        });
        resource.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        self.smart.create(&self.admin, &resource).await
    }

    /// Staff edit a stored RelatedPerson.
    async fn edit_related(&self, id: &str, change: Value) {
        let path = format!("RelatedPerson/{id}");
        let mut resource: Value = self.smart.get(&path, &self.admin).await.json().await.unwrap();
        resource.as_object_mut().unwrap().extend(change.as_object().unwrap().clone());
        assert_eq!(self.smart.send(Method::PUT, &path, &self.admin, &resource).await.status(), StatusCode::OK);
    }

    /// The registration page of an invitation of RelatedPerson `id`.
    async fn invitation_page(&self, id: &str) -> String {
        let token =
            invite(self.smart.store.as_ref(), &format!("RelatedPerson/{id}"), time::Duration::days(7)).await.unwrap();
        let response = self.smart.http.get(registration_link(&self.smart.root, &token)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.unwrap()
    }

    /// Posts the registration form of `page`: a new account, or (`existing`) the one named.
    async fn register(&self, page: &str, existing: bool, username: &str, password: &str) -> Response {
        let mut form = vec![
            ("token", input_value(page, "token").unwrap()),
            ("csrf", input_value(page, "csrf").unwrap()),
            ("birth_date", MOTHER_BORN.to_string()),
            ("username", username.to_string()),
            ("password", password.to_string()),
        ];
        if existing {
            form.push(("existing", "1".to_string()));
        }
        self.smart.http.post(self.smart.url("/auth/register")).form(&form).send().await.unwrap()
    }

    /// The consent page `username` sees for the portal app.
    async fn consent_page(&self, username: &str) -> String {
        let page = self.smart.authorize("app", PORTAL_SCOPE, &Pkce::new(), &[]).await.text().await.unwrap();
        let SignedIn { consent, .. } = self.smart.sign_in(&page, username, PASSWORD).await;
        consent
    }

    /// The token response of a portal launch for `patient`.
    async fn launch(&self, username: &str, patient: Option<&str>) -> Value {
        let authorization = Authorization { patient, ..Authorization::new("app", PORTAL_SCOPE, username, PASSWORD) };
        self.smart.launch(&authorization).await
    }

    async fn status(&self, path: &str, token: &str) -> StatusCode {
        self.smart.get(path, token).await.status()
    }
}

fn access_token(token: &Value) -> String {
    token["access_token"].as_str().unwrap().to_string()
}

async fn a_caregiver_of_two_children_picks_each_and_the_clinic_ends_access(db: Db) {
    let clinic = clinic(db).await;
    let ana = clinic.patient("Ana", "2015-09-01").await;
    let luis = clinic.patient("Luis", "2018-02-11").await;
    let zoe = clinic.patient("Zoe", "2016-04-04").await;
    let for_ana = clinic.mother_of(&ana, json!({"period": {"start": "2015-09-01"}})).await;
    let for_luis = clinic.mother_of(&luis, json!({})).await;

    // The first invitation makes the account; the second is added to it.
    let page = clinic.invitation_page(&for_ana).await;
    assert_eq!(clinic.register(&page, false, "maria.rivera", PASSWORD).await.status(), StatusCode::CREATED);
    let page = clinic.invitation_page(&for_luis).await;
    assert!(page.contains("Add to my account"), "a caregiver's invitation offers the account they have");
    let wrong = clinic.register(&page, true, "maria.rivera", "not the password at all").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let added = clinic.register(&page, true, "maria.rivera", PASSWORD).await;
    assert_eq!(added.status(), StatusCode::OK);
    assert!(added.headers().contains_key("set-cookie"), "signed in");
    assert!(added.text().await.unwrap().contains("Access added"));
    let account = user(clinic.smart.store.as_ref(), "maria.rivera").await.unwrap().unwrap();
    assert_eq!(account.fhir_user, format!("RelatedPerson/{for_ana}"));
    assert_eq!(account.related, vec![for_luis.clone()]);
    assert!(account.patients.is_empty(), "access follows the RelatedPersons, not a stored list");
    let used = clinic.register(&page, true, "maria.rivera", PASSWORD).await;
    assert_eq!(used.status(), StatusCode::GONE, "one use");

    // One login, both children offered, never a third.
    let consent = clinic.consent_page("maria.rivera").await;
    assert!(consent.contains("Ana Rivera") && consent.contains("Luis Rivera"), "{consent}");
    assert!(!consent.contains("Zoe") && !consent.contains(&zoe));
    let for_ana_token = clinic.launch("maria.rivera", Some(&ana)).await;
    assert_eq!(for_ana_token["patient"], ana.as_str());
    let luis_token = clinic.launch("maria.rivera", Some(&luis)).await;
    assert_eq!(luis_token["patient"], luis.as_str());
    let luis_access = access_token(&luis_token);
    assert_eq!(clinic.status(&format!("Patient/{luis}"), &luis_access).await, StatusCode::OK);
    assert_eq!(clinic.status(&format!("Patient/{ana}"), &luis_access).await, StatusCode::NOT_FOUND);
    assert_eq!(clinic.status(&format!("Patient/{zoe}"), &luis_access).await, StatusCode::NOT_FOUND);
    let choose_zoe =
        Authorization { patient: Some(&zoe), ..Authorization::new("app", PORTAL_SCOPE, "maria.rivera", PASSWORD) };
    let refused = clinic.smart.consent_redirect(&choose_zoe, &Pkce::new(), "allow").await;
    assert!(refused.contains("error=invalid_request"), "{refused}");
    let user_token = clinic.smart.launch(&Authorization::new("app", "user/Patient.rs", "maria.rivera", PASSWORD)).await;
    let found: Value = clinic.smart.get("Patient?_count=50", &access_token(&user_token)).await.json().await.unwrap();
    let mut ids: Vec<&str> =
        found["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut expected = vec![ana.as_str(), luis.as_str()];
    expected.sort();
    assert_eq!(ids, expected, "user/ scopes reach both children and no one else");

    // The proxy cannot extend their own access by editing where it comes from.
    let path = format!("RelatedPerson/{for_luis}");
    let mut own: Value = clinic.smart.get(&path, &luis_access).await.json().await.unwrap();
    own["period"] = json!({"end": "2099-01-01"});
    let response = clinic.smart.send(Method::PUT, &path, &luis_access, &own).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        clinic.smart.send(Method::DELETE, &path, &luis_access, &json!({})).await.status(),
        StatusCode::FORBIDDEN
    );

    // The clinic ends access to Luis: the live token stops at its next request, its refresh
    // token too, and the next sign-in offers Ana alone.
    clinic.edit_related(&for_luis, json!({"active": false})).await;
    let stopped = clinic.smart.get(&format!("Patient/{luis}"), &luis_access).await;
    assert_eq!(stopped.status(), StatusCode::UNAUTHORIZED);
    assert!(stopped.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    let introspect =
        clinic.smart.http.post(clinic.smart.url("/auth/introspect")).basic_auth("admin", Some("admin-secret"));
    let introspected = introspect.form(&[("token", luis_access.as_str())]).send().await.unwrap();
    let introspected: Value = introspected.json().await.unwrap();
    assert_eq!(introspected, json!({"active": false}), "introspection agrees");
    let refreshed = clinic.smart.refresh("app", luis_token["refresh_token"].as_str().unwrap(), None).await;
    assert_eq!(refreshed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(refreshed.json::<Value>().await.unwrap()["error"], "invalid_grant");
    let ana_access = access_token(&for_ana_token);
    assert_eq!(clinic.status(&format!("Patient/{ana}"), &ana_access).await, StatusCode::OK, "Ana's link lives on");
    let consent = clinic.consent_page("maria.rivera").await;
    assert!(!consent.contains("Luis Rivera"), "{consent}");
    let only = clinic.launch("maria.rivera", None).await;
    assert_eq!(only["patient"], ana.as_str(), "the only patient left needs no choice");

    // A period that ended stops access as well.
    clinic.edit_related(&for_ana, json!({"period": {"start": "2015-09-01", "end": "2020-01-01"}})).await;
    assert_eq!(clinic.status(&format!("Patient/{ana}"), &ana_access).await, StatusCode::UNAUTHORIZED);
    let user_access = access_token(&user_token);
    assert_eq!(clinic.status("Patient", &user_access).await, StatusCode::UNAUTHORIZED, "every token of the account");

    // Made active again by the clinic: the next sign-in reaches Luis again.
    clinic.edit_related(&for_luis, json!({"active": true})).await;
    let again = clinic.launch("maria.rivera", None).await;
    assert_eq!(again["patient"], luis.as_str());
    assert_eq!(clinic.status(&format!("Patient/{luis}"), &access_token(&again)).await, StatusCode::OK);
}

async fn a_parents_access_ends_when_the_child_comes_of_age_unless_renewed(db: Db) {
    let clinic = clinic(db).await;
    let grown = clinic.patient("Ines", "2000-01-15").await;
    let mother = clinic.mother_of(&grown, json!({"period": {"start": "2000-01-15"}})).await;
    let page = clinic.invitation_page(&mother).await;
    assert_eq!(clinic.register(&page, false, "maria.r", PASSWORD).await.status(), StatusCode::CREATED);
    let token = clinic.smart.launch(&Authorization::new("app", "user/Patient.rs", "maria.r", PASSWORD)).await;
    let found: Value = clinic.smart.get("Patient", &access_token(&token)).await.json().await.unwrap();
    assert_eq!(found["entry"].as_array().map_or(0, Vec::len), 0, "an adult's record is closed to the parent");
    assert_eq!(clinic.status(&format!("Patient/{grown}"), &access_token(&token)).await, StatusCode::NOT_FOUND);

    // Renewed by the clinic for the adult patient (a period starting after the 18th birthday).
    clinic.edit_related(&mother, json!({"period": {"start": "2026-01-01"}})).await;
    let renewed = clinic.launch("maria.r", None).await;
    assert_eq!(renewed["patient"], grown.as_str());
    assert_eq!(clinic.status(&format!("Patient/{grown}"), &access_token(&renewed)).await, StatusCode::OK);
}

on_both_databases!(
    a_caregiver_of_two_children_picks_each_and_the_clinic_ends_access,
    a_parents_access_ends_when_the_child_comes_of_age_unless_renewed
);
