//! End-to-end test of the real login and consent HTML pages in headless Chromium: a standalone
//! SMART launch of a public client, driven by `tests/browser/launch.mjs` (playwright-core).
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

/// Runs `launch.mjs` with `args`; returns its JSON report (panics with its stderr on failure).
async fn run_browser(args: &Value) -> Value {
    let mut command = tokio::process::Command::new("node");
    command
        .arg(Path::new(BROWSER_DIR).join("launch.mjs"))
        .arg(args.to_string())
        .current_dir(BROWSER_DIR)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("start node (is Node.js installed?)");
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("launch.mjs ran for over {} s", SCRIPT_TIMEOUT.as_secs()))
        .expect("wait for node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "launch.mjs failed ({}):\n{stderr}\nstdout: {stdout}", output.status);
    let report = stdout.lines().rev().find(|line| line.starts_with('{')).unwrap_or_else(|| {
        panic!("launch.mjs printed no JSON report:\n{stdout}\nstderr: {stderr}");
    });
    serde_json::from_str(report).unwrap_or_else(|e| panic!("launch.mjs report is not JSON ({e}): {report}"))
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
    smart.add_secret_client("admin", "admin-secret").await;
    let admin = smart.system_token("admin", "admin-secret", "system/*.cruds").await;
    let patient = smart
        .create(&admin, &json!({"resourceType": "Patient", "name": [{"family": "Rivera", "given": ["Ana"]}]}))
        .await;
    smart.add_user("ana", "ana-password", &format!("Patient/{patient}"), &[]).await;

    // A public app whose redirect URI is the local listener.
    let callback = Callback::start().await;
    let client = ClientRecord {
        client_id: "browser-app".into(),
        name: Some("Browser App".into()),
        credentials: ClientCredentials::Public,
        redirect_uris: vec![callback.url.clone()],
        scope: None,
        launch_uri: None,
    };
    save_client(smart.store.as_ref(), &client).await.unwrap();

    let pkce = Pkce::new();
    let mut authorize = url::Url::parse(&smart.url("/auth/authorize")).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client.client_id)
        .append_pair("redirect_uri", &callback.url)
        .append_pair("scope", SCOPES)
        .append_pair("state", STATE)
        .append_pair("aud", &smart.fhir)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256");

    let report = run_browser(&json!({
        "authorizeUrl": authorize.as_str(),
        "username": "ana",
        "password": "ana-password",
        "untick": UNTICKED,
        "callbackUrl": callback.url,
        "chromium": CHROMIUM,
    }))
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

    // The code, exchanged with the PKCE verifier (`Smart::exchange` sends the shared test
    // REDIRECT, so the form is spelled out with this app's redirect URI).
    let response = smart
        .token_request(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &callback.url),
                ("code_verifier", &pkce.verifier),
                ("client_id", &client.client_id),
            ],
            None,
        )
        .await;
    assert_eq!(response.status(), 200, "token");
    let token: Value = response.json().await.unwrap();
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
