//! End-to-end tests of the real HTML pages in headless Chromium, driven by scripts in
//! `tests/browser/` (playwright-core): a standalone SMART launch of a public client
//! (`launch.mjs`), and a caregiver's registration and choice of patient (`register.mjs`, see its
//! test below).
//!
//! The test starts a SMART server on SQLite and a small HTTP listener on 127.0.0.1 that stands
//! for the app's redirect URI, registers a public client with that redirect URI and a patient
//! user, and has the browser open the authorize URL. In the browser a wrong password must show
//! the `role="alert"` message, the right one leads to the consent page, where every requested
//! scope is ticked; one (`offline_access`) is unticked and Allow is clicked. The test then checks
//! the callback the browser reached (code and state), the session cookie the browser holds
//! (HttpOnly, SameSite=Lax), exchanges the code with the PKCE verifier, and checks the token:
//! the patient in context, the granted scope without the unticked one, no refresh token, and a
//! bearer read of `Patient/<id>`.
//!
//! To run it locally:
//!
//! ```text
//! apt-get install chromium            # provides /usr/bin/chromium
//! npm ci --prefix tests/browser       # playwright-core, pinned in package-lock.json
//! cargo test -j 2 --test browser
//! ```
//!
//! Without `/usr/bin/chromium` or `tests/browser/node_modules/playwright-core` the test prints a
//! "skipped" note and passes, unless the environment variable `CI` is set: then it fails.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::response::Html;
use axum::routing::get;
use common::smart::{query_value, smart_server, Pkce, Smart};
use common::{body, Db};
use hearth::auth::records::{save_client, ClientCredentials, ClientRecord};
use hearth::auth::registration::{invite, registration_link};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const BROWSER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
const SCOPES: &str = "openid fhirUser launch/patient offline_access patient/*.rs";
/// The scope the browser unticks on the consent page.
const UNTICKED: &str = "offline_access";
const STATE: &str = "browser-state-42";
/// How long the Node script may run in all (it has its own 15 s per step and 90 s in all).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether Chromium and playwright-core are installed; if not, fails under CI and otherwise
/// says why the test is skipped.
fn browser_available() -> bool {
    let playwright = Path::new(BROWSER_DIR).join("node_modules/playwright-core");
    let missing: Vec<String> =
        [(Path::new(CHROMIUM), CHROMIUM.to_string()), (&playwright, playwright.display().to_string())]
            .iter()
            .filter(|(path, _)| !path.exists())
            .map(|(_, name)| name.clone())
            .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but the browser test cannot run: missing {}", missing.join(" and "));
    }
    eprintln!("skipped: install chromium and run npm ci in tests/browser (missing {})", missing.join(" and "));
    false
}

/// The app's redirect URI: a listener that records the query of the first `/callback` request.
struct Callback {
    url: String,
    query: Arc<Mutex<Option<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Callback {
    async fn start() -> Callback {
        let query: Arc<Mutex<Option<String>>> = Arc::default();
        let router = axum::Router::new()
            .route(
                "/callback",
                get(|State(seen): State<Arc<Mutex<Option<String>>>>, RawQuery(query): RawQuery| async move {
                    seen.lock().unwrap().get_or_insert(query.unwrap_or_default());
                    Html("<!DOCTYPE html><html><head><title>App</title></head><body><p>Back in the app.</p></body></html>")
                }),
            )
            .with_state(query.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the callback listener");
        let url = format!("http://{}/callback", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Callback { url, query, stop: Some(stop) }
    }

    fn query(&self) -> Option<String> {
        self.query.lock().unwrap().clone()
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Runs the script `script` of `tests/browser` with `args`; returns its JSON report (panics
/// with its stderr on failure).
async fn run_browser(script: &str, args: &Value) -> Value {
    let mut command = tokio::process::Command::new("node");
    command
        .arg(Path::new(BROWSER_DIR).join(script))
        .arg(args.to_string())
        .current_dir(BROWSER_DIR)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("start node (is Node.js installed?)");
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} ran for over {} s", SCRIPT_TIMEOUT.as_secs()))
        .expect("wait for node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed ({}):\n{stderr}\nstdout: {stdout}", output.status);
    let report = stdout.lines().rev().find(|line| line.starts_with('{')).unwrap_or_else(|| {
        panic!("{script} printed no JSON report:\n{stdout}\nstderr: {stderr}");
    });
    serde_json::from_str(report).unwrap_or_else(|e| panic!("{script} report is not JSON ({e}): {report}"))
}

/// A public app whose redirect URI is the local listener.
async fn browser_app(smart: &Smart, callback: &Callback) {
    let client = ClientRecord {
        client_id: "browser-app".into(),
        name: Some("Browser App".into()),
        credentials: ClientCredentials::Public,
        redirect_uris: vec![callback.url.clone()],
        scope: None,
        launch_uri: None,
    };
    save_client(smart.store.as_ref(), &client).await.unwrap();
}

/// The authorize URL of the browser app for `scopes`.
fn authorize_url(smart: &Smart, callback: &Callback, scopes: &str, pkce: &Pkce) -> String {
    let mut authorize = url::Url::parse(&smart.url("/auth/authorize")).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", "browser-app")
        .append_pair("redirect_uri", &callback.url)
        .append_pair("scope", scopes)
        .append_pair("state", STATE)
        .append_pair("aud", &smart.fhir)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256");
    authorize.to_string()
}

/// The browser's code exchanged with the PKCE verifier (`Smart::exchange` sends the shared test
/// REDIRECT, so the form is spelled out with this app's redirect URI); answers the token.
async fn exchange(smart: &Smart, callback: &Callback, code: &str, pkce: &Pkce) -> Value {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", &callback.url),
        ("code_verifier", &pkce.verifier),
        ("client_id", "browser-app"),
    ];
    let response = smart.token_request(&form, None).await;
    assert_eq!(response.status(), 200, "token");
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_launch_in_chromium() {
    if !browser_available() {
        return;
    }
    let started = Instant::now();
    let server = smart_server(Db::Sqlite).await;
    let smart = Smart::new(&server).await;

    // A patient, created with an admin token.
    let admin = smart.admin_token().await;
    let patient = smart
        .create(&admin, &json!({"resourceType": "Patient", "name": [{"family": "Rivera", "given": ["Ana"]}]}))
        .await;
    smart.add_user("ana", "ana-password", &format!("Patient/{patient}"), &[]).await;

    let callback = Callback::start().await;
    browser_app(&smart, &callback).await;
    let pkce = Pkce::new();
    let authorize = authorize_url(&smart, &callback, SCOPES, &pkce);

    let report = run_browser(
        "launch.mjs",
        &json!({
            "authorizeUrl": authorize,
            "username": "ana",
            "password": "ana-password",
            "untick": UNTICKED,
            "callbackUrl": callback.url,
            "chromium": CHROMIUM,
        }),
    )
    .await;

    // The pages: the wrong password's alert, and one ticked checkbox per requested scope.
    assert_eq!(report["alert"], "The username or password is incorrect.", "{report}");
    let shown: Vec<&str> = report["scopesShown"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(shown, SCOPES.split(' ').collect::<Vec<_>>(), "consent checkboxes");

    // The browser reached the app's callback with the code and the state.
    let final_url = report["finalUrl"].as_str().unwrap();
    assert!(final_url.starts_with(&format!("{}?", callback.url)), "final URL {final_url}");
    assert_eq!(report["callbackText"], "Back in the app.");
    let query = callback.query().expect("the listener saw the callback");
    assert_eq!(url::Url::parse(final_url).unwrap().query(), Some(query.as_str()), "listener and browser agree");
    assert_eq!(query_value(final_url, "state").as_deref(), Some(STATE));
    assert_eq!(query_value(final_url, "error"), None, "{final_url}");
    let code = query_value(final_url, "code").unwrap_or_else(|| panic!("no code in {final_url}"));

    // The session cookie the browser holds.
    let cookies = report["cookies"].as_array().unwrap();
    let session = cookies
        .iter()
        .find(|c| c["name"] == hearth::auth::SESSION_COOKIE)
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    assert_eq!(session["domain"], "127.0.0.1", "{session}");
    assert_eq!(session["path"], "/auth", "{session}");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Lax", "{session}");
    assert_eq!(session["secure"], false, "plain http: {session}");

    let token = exchange(&smart, &callback, &code, &pkce).await;
    assert_eq!(token["patient"], patient.as_str(), "{token}");
    let granted: Vec<&str> = token["scope"].as_str().unwrap().split(' ').collect();
    assert!(!granted.contains(&UNTICKED), "{UNTICKED} was unticked but granted: {granted:?}");
    for wanted in SCOPES.split(' ').filter(|s| *s != UNTICKED) {
        assert!(granted.contains(&wanted), "{wanted} missing from {granted:?}");
    }
    assert!(token.get("refresh_token").is_none(), "no offline_access, no refresh token: {token}");

    let access = token["access_token"].as_str().unwrap();
    let response = smart.get(&format!("Patient/{patient}"), access).await;
    assert_eq!(response.status(), 200, "read Patient/{patient} with the token");
    assert_eq!(body(response).await["id"], patient.as_str());
    eprintln!("browser launch checked in {:.1} s", started.elapsed().as_secs_f64());
}

/// A caregiver goes through registration as a person would: the invitation's page refuses a
/// wrong birth date and a weak password with an alert, creates the account, adds a second
/// child's invitation to it, and on a portal app's consent page offers both children (and no
/// one else); the one picked is the token's patient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caregiver_registration_and_patient_choice_in_chromium() {
    if !browser_available() {
        return;
    }
    let server = smart_server(Db::Sqlite).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let patient = |given: &str| json!({"resourceType": "Patient", "name": [{"family": "Rivera", "given": [given]}]});
    let ana = smart.create(&admin, &patient("Ana")).await;
    let luis = smart.create(&admin, &patient("Luis")).await;
    smart.create(&admin, &patient("Zoe")).await;
    let mother_of = |child: &str| json!({"resourceType": "RelatedPerson", "patient": {"reference": format!("Patient/{child}")}, "birthDate": "1984-05-06"});
    let mut links = Vec::new();
    for child in [&ana, &luis] {
        let related = smart.create(&admin, &mother_of(child)).await;
        let token = invite(smart.store.as_ref(), &format!("RelatedPerson/{related}"), time::Duration::days(7)).await;
        links.push(registration_link(&smart.root, &token.unwrap()));
    }
    let callback = Callback::start().await;
    browser_app(&smart, &callback).await;
    let pkce = Pkce::new();

    let report = run_browser(
        "register.mjs",
        &json!({
            "registerUrl": links[0],
            "addUrl": links[1],
            "birthDate": "1984-05-06",
            "wrongBirthDate": "1984-06-05",
            "username": "maria.rivera",
            "password": "amber lantern over quiet hills",
            "weakPassword": "password1234",
            "authorizeUrl": authorize_url(&smart, &callback, "launch/patient patient/*.rs", &pkce),
            "choose": format!("Luis Rivera (Patient/{luis})"),
            "callbackUrl": callback.url,
            "chromium": CHROMIUM,
        }),
    )
    .await;

    assert!(report["alerts"]["birthDate"].as_str().unwrap().contains("date of birth"), "{report}");
    assert!(report["alerts"]["password"].as_str().unwrap().contains("too easy"), "{report}");
    assert_eq!(report["created"], "Account created");
    assert_eq!(report["added"], "Access added");
    let mut offered: Vec<&str> =
        report["choices"].as_array().unwrap().iter().map(|c| c["value"].as_str().unwrap()).collect();
    offered.sort();
    let mut children = vec![ana.as_str(), luis.as_str()];
    children.sort();
    assert_eq!(offered, children, "both children and no one else: {report}");
    let final_url = report["finalUrl"].as_str().unwrap();
    let code = query_value(final_url, "code").unwrap_or_else(|| panic!("no code in {final_url}"));
    let token = exchange(&smart, &callback, &code, &pkce).await;
    assert_eq!(token["patient"], luis.as_str(), "{token}");
}
