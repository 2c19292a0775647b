//! A SMART client for tests: registers clients and users in the server's database, and walks
//! the authorization code flow through the real login and consent forms.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hearth::auth::keys::digest;
use hearth::auth::records::{hash_password, save_client, save_user, ClientCredentials, ClientRecord, UserRecord};
use hearth::auth::PasswordCost;
use hearth::server::Settings;
use hearth::store::Store;
use reqwest::Response;
use serde_json::Value;
use sha2::Digest;

use super::{Db, TestServer};

/// The redirect URI of test apps (never contacted: the tests read the `Location` header).
pub const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// Starts a server that requires SMART tokens (cheap password hashes).
pub async fn smart_server(db: Db) -> TestServer {
    smart_server_with(db, |settings| settings).await
}

/// [`smart_server`] with other settings adjusted too.
pub async fn smart_server_with(db: Db, adjust: impl FnOnce(Settings) -> Settings) -> TestServer {
    TestServer::start_with(db, |s| adjust(Settings { smart: true, password_cost: PasswordCost::Cheap, ..s })).await
}

/// A PKCE verifier and its S256 challenge.
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        let verifier = format!("verifier-{}-0123456789-abcdefghijklmnopqrstuvwxyz", rand_suffix());
        let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
        Pkce { verifier, challenge }
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// The value of the hidden (or other) input `name` in an HTML page.
pub fn input_value(html: &str, name: &str) -> Option<String> {
    let start = html.find(&format!("name=\"{name}\" value=\""))? + name.len() + 15;
    let end = html[start..].find('"')? + start;
    Some(html[start..end].replace("&amp;", "&").replace("&quot;", "\""))
}

/// The query parameters of a URL.
pub fn query_of(url: &str) -> Vec<(String, String)> {
    url::Url::parse(url).expect("absolute URL").query_pairs().into_owned().collect()
}

pub fn query_value(url: &str, name: &str) -> Option<String> {
    query_of(url).into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// A signed-in browser: its session cookie (`name=value`), the whole `Set-Cookie` header, and
/// the consent page it was sent to.
pub struct SignedIn {
    pub cookie: String,
    pub set_cookie: String,
    pub consent: String,
}

/// What one authorization request asks for.
pub struct Authorization<'a> {
    pub client_id: &'a str,
    pub scope: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    /// The scopes left ticked on the consent page (all when `None`).
    pub ticked: Option<Vec<&'a str>>,
    /// The patient a proxy chooses.
    pub patient: Option<&'a str>,
    pub launch: Option<&'a str>,
}

impl<'a> Authorization<'a> {
    pub fn new(client_id: &'a str, scope: &'a str, username: &'a str, password: &'a str) -> Self {
        Authorization { client_id, scope, username, password, ticked: None, patient: None, launch: None }
    }
}

/// A SMART test client for one server.
pub struct Smart {
    pub root: String,
    pub fhir: String,
    /// The `aud` of authorization requests: the public FHIR base (of a load balancer in front
    /// of several nodes, or this node's).
    pub aud: String,
    pub http: reqwest::Client,
    pub store: Arc<dyn Store>,
}

impl Smart {
    pub async fn new(server: &TestServer) -> Smart {
        let root = server.base.trim_end_matches("/fhir").to_string();
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let store = hearth::store::open_shared(&server.database_url).await.expect("open the store");
        Smart { root, fhir: server.base.clone(), aud: server.base.clone(), http, store }
    }

    pub async fn add_client(&self, client_id: &str, credentials: ClientCredentials, scope: Option<&str>) {
        let record = ClientRecord {
            client_id: client_id.into(),
            name: Some(format!("App {client_id}")),
            credentials,
            redirect_uris: vec![REDIRECT.into()],
            scope: scope.map(str::to_string),
            launch_uri: None,
        };
        save_client(self.store.as_ref(), &record).await.unwrap();
    }

    pub async fn add_public_client(&self, client_id: &str) {
        self.add_client(client_id, ClientCredentials::Public, None).await;
    }

    /// A confidential client registered for every system scope (backend services, EHRs).
    pub async fn add_secret_client(&self, client_id: &str, secret: &str) {
        let credentials = ClientCredentials::Secret { digest: digest(secret) };
        self.add_client(client_id, credentials, Some("system/*.cruds system/launch")).await;
    }

    /// The `system/*.cruds` token of the secret client `admin` (registered here).
    pub async fn admin_token(&self) -> String {
        self.add_secret_client("admin", "admin-secret").await;
        self.system_token("admin", "admin-secret", "system/*.cruds").await
    }

    /// The access token of a standalone launch of the public client `app` by a new user
    /// `username` (password `<username>-password`) with `scope`.
    pub async fn user_token(&self, username: &str, fhir_user: &str, patients: &[&str], scope: &str) -> String {
        let password = format!("{username}-password");
        self.add_public_client("app").await;
        self.add_user(username, &password, fhir_user, patients).await;
        let token = self.launch(&Authorization::new("app", scope, username, &password)).await;
        token["access_token"].as_str().unwrap().to_string()
    }

    pub async fn add_user(&self, username: &str, password: &str, fhir_user: &str, patients: &[&str]) {
        let patients = patients.iter().map(|p| p.to_string()).collect();
        let record =
            UserRecord::new(username, hash_password(password, PasswordCost::Cheap), fhir_user.into(), patients);
        save_user(self.store.as_ref(), &record).await.unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.root)
    }

    /// `GET /auth/authorize` with the usual parameters plus `extra` (which override them).
    pub async fn authorize(&self, client_id: &str, scope: &str, pkce: &Pkce, extra: &[(&str, &str)]) -> Response {
        let mut params: Vec<(&str, String)> = vec![
            ("response_type", "code".into()),
            ("client_id", client_id.into()),
            ("redirect_uri", REDIRECT.into()),
            ("scope", scope.into()),
            ("state", "st-123".into()),
            ("aud", self.aud.clone()),
            ("code_challenge", pkce.challenge.clone()),
            ("code_challenge_method", "S256".into()),
        ];
        for (name, value) in extra {
            params.retain(|(n, _)| n != name);
            if !value.is_empty() {
                params.push((name, value.to_string()));
            }
        }
        self.http.get(self.url("/auth/authorize")).query(&params).send().await.unwrap()
    }

    /// Posts the login form of `page`; returns the response (303 to consent on success).
    pub async fn login(&self, page: &str, username: &str, password: &str) -> Response {
        self.login_request(page, username, password).send().await.unwrap()
    }

    /// The post of the login form of `page`, for headers of a test's own.
    pub fn login_request(&self, page: &str, username: &str, password: &str) -> reqwest::RequestBuilder {
        let form = [
            ("request", input_value(page, "request").expect("request field")),
            ("csrf", input_value(page, "csrf").expect("csrf field")),
            ("username", username.into()),
            ("password", password.into()),
        ];
        self.http.post(self.url("/auth/login")).form(&form)
    }

    /// Signs in on the login `page` and follows the redirect to the consent page.
    pub async fn sign_in(&self, page: &str, username: &str, password: &str) -> SignedIn {
        let response = self.login(page, username, password).await;
        assert_eq!(response.status(), 303, "login accepted");
        let set_cookie = response.headers()["set-cookie"].to_str().unwrap().to_string();
        let cookie = set_cookie.split(';').next().unwrap().to_string();
        let consent_url = self.url(response.headers()["location"].to_str().unwrap());
        let response = self.http.get(consent_url).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(response.status(), 200, "consent page");
        SignedIn { cookie, set_cookie, consent: response.text().await.unwrap() }
    }

    /// Creates a resource with `token`; returns its id.
    pub async fn create(&self, token: &str, resource: &Value) -> String {
        let resource_type = resource["resourceType"].as_str().expect("resourceType");
        let response = self.send(reqwest::Method::POST, resource_type, token, resource).await;
        assert_eq!(response.status(), 201, "create {resource_type}");
        let created: Value = response.json().await.unwrap();
        created["id"].as_str().unwrap().to_string()
    }

    /// Runs authorize → login → consent; returns the final redirect's `Location`.
    pub async fn consent_redirect(&self, authorization: &Authorization<'_>, pkce: &Pkce, decision: &str) -> String {
        let launch: Vec<(&str, &str)> = authorization.launch.map(|l| vec![("launch", l)]).unwrap_or_default();
        let response = self.authorize(authorization.client_id, authorization.scope, pkce, &launch).await;
        assert_eq!(response.status(), 200, "login page");
        let page = response.text().await.unwrap();
        let SignedIn { cookie, consent: page, .. } =
            self.sign_in(&page, authorization.username, authorization.password).await;
        let mut form: Vec<(String, String)> = vec![
            ("request".into(), input_value(&page, "request").unwrap()),
            ("csrf".into(), input_value(&page, "csrf").unwrap()),
            ("decision".into(), decision.into()),
        ];
        let requested: Vec<&str> = authorization.scope.split(' ').collect();
        for scope in authorization.ticked.clone().unwrap_or(requested) {
            form.push(("scope".into(), scope.into()));
        }
        if let Some(patient) = authorization.patient {
            form.push(("patient".into(), patient.into()));
        }
        let response =
            self.http.post(self.url("/auth/consent")).header("cookie", &cookie).form(&form).send().await.unwrap();
        assert_eq!(response.status(), 303, "consent answered");
        response.headers()["location"].to_str().unwrap().to_string()
    }

    /// The whole flow up to the code.
    pub async fn code(&self, authorization: &Authorization<'_>, pkce: &Pkce) -> String {
        let location = self.consent_redirect(authorization, pkce, "allow").await;
        assert_eq!(query_value(&location, "state").as_deref(), Some("st-123"));
        query_value(&location, "code").unwrap_or_else(|| panic!("no code in {location}"))
    }

    /// Posts a form to the token endpoint.
    pub async fn token_request(&self, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Response {
        let mut request = self.http.post(self.url("/auth/token")).form(form);
        if let Some((user, password)) = basic {
            request = request.basic_auth(user, Some(password));
        }
        request.send().await.unwrap()
    }

    /// Exchanges a code of a public client.
    pub async fn exchange(&self, client_id: &str, code: &str, verifier: &str) -> Response {
        self.token_request(
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", REDIRECT),
                ("code_verifier", verifier),
                ("client_id", client_id),
            ],
            None,
        )
        .await
    }

    /// A refresh_token grant of a public client, optionally narrowing the scope.
    pub async fn refresh(&self, client_id: &str, refresh_token: &str, scope: Option<&str>) -> Response {
        let mut form =
            vec![("grant_type", "refresh_token"), ("refresh_token", refresh_token), ("client_id", client_id)];
        form.extend(scope.map(|scope| ("scope", scope)));
        self.token_request(&form, None).await
    }

    /// Revokes `token` (an access or refresh token) as the public client `client_id`.
    pub async fn revoke(&self, client_id: &str, token: &str) -> Response {
        let form = [("token", token), ("client_id", client_id)];
        self.http.post(self.url("/auth/revoke")).form(&form).send().await.unwrap()
    }

    /// The token response of a full standalone launch of a public client.
    pub async fn launch(&self, authorization: &Authorization<'_>) -> Value {
        let pkce = Pkce::new();
        let code = self.code(authorization, &pkce).await;
        let response = self.exchange(authorization.client_id, &code, &pkce.verifier).await;
        assert_eq!(response.status(), 200, "token");
        response.json().await.unwrap()
    }

    /// A client_credentials token of a secret client.
    pub async fn system_token(&self, client_id: &str, secret: &str, scope: &str) -> String {
        let response = self
            .token_request(&[("grant_type", "client_credentials"), ("scope", scope)], Some((client_id, secret)))
            .await;
        assert_eq!(response.status(), 200, "client_credentials");
        let token: Value = response.json().await.unwrap();
        token["access_token"].as_str().unwrap().to_string()
    }

    /// A FHIR request with a bearer token.
    pub fn fhir_request(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}/{path}", self.fhir)).bearer_auth(token)
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.fhir_request(reqwest::Method::GET, path, token).send().await.unwrap()
    }

    /// A FHIR request with a bearer token and a FHIR JSON body.
    pub async fn send(&self, method: reqwest::Method, path: &str, token: &str, body: &Value) -> Response {
        self.send_as(method, path, token, "application/fhir+json", body).await
    }

    /// A FHIR request with a bearer token and a body of `content_type`.
    pub async fn send_as(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        content_type: &str,
        body: &Value,
    ) -> Response {
        let request = self.fhir_request(method, path, token).header("content-type", content_type);
        request.body(body.to_string()).send().await.unwrap()
    }
}
