//! A standalone-launch SMART on FHIR patient app for Hearth, in the terminal.
//!
//! It discovers the server's endpoints (`.well-known/smart-configuration`, and OpenID Connect
//! discovery for the `id_token` keys), prints an authorization URL to open in a browser (code
//! flow with PKCE S256, scopes `openid fhirUser launch/patient patient/*.rs offline_access`,
//! `aud` = the FHIR base URL), receives the redirect on a one-shot listener at
//! `http://127.0.0.1:PORT/callback`, exchanges the code, verifies the `id_token` (signature
//! against the server's JWKS, issuer, audience = client id, expiry, nonce) and then, with the
//! access token, reads the patient, their five latest laboratory results and their upcoming
//! appointments.
//!
//! # Running it
//!
//! Start the server (`cargo run --release -- serve`, in its own terminal) and register the app
//! (a public client) and a patient user, once:
//!
//! ```text
//! cargo run --release -- client add --client-id patient-app --name "Patient app" \
//!     --redirect-uri http://127.0.0.1:8765/callback --public \
//!     --scope "openid fhirUser launch/patient patient/*.rs offline_access"
//! echo 'correct horse battery staple' | \
//!     cargo run --release -- user add --username alice --password-stdin --fhir-user Patient/123
//! ```
//!
//! (`Patient/123` must exist; the redirect URI must match `--port` exactly.) Then:
//!
//! ```text
//! cargo run --example patient_app -- --fhir-base http://localhost:8080/fhir --client-id patient-app --port 8765
//! ```
//!
//! open the printed URL, sign in as `alice`, allow the access, and watch the terminal.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
// openidconnect is built on oauth2 and re-exports its types; the OAuth 2.0 pieces are named
// from oauth2 here, the OpenID Connect ones from openidconnect.
use oauth2::{
    AuthUrl, AuthorizationCode, CsrfToken, PkceCodeChallenge, RedirectUrl, RequestTokenError, Scope,
    StandardErrorResponse, StandardTokenResponse, TokenUrl,
};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
    CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata,
    CoreRevocableToken, CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessTokenHash, AdditionalClaims, Client, ClientId, EndpointNotSet, EndpointSet, ExtraTokenFields, IdTokenFields,
    IssuerUrl, JsonWebKeySetUrl, Nonce, OAuth2TokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The scopes asked for besides `openid`, which the openidconnect client adds itself.
const SCOPES: &[&str] = &["fhirUser", "launch/patient", "patient/*.rs", "offline_access"];

/// How long to wait for the browser to come back.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(600);

const FHIR_JSON: &str = "application/fhir+json";

#[derive(Parser)]
#[command(about = "A standalone-launch SMART on FHIR patient app for Hearth")]
struct Args {
    /// The server's FHIR base URL (also the OpenID Connect issuer).
    #[arg(long, default_value = "http://localhost:8080/fhir")]
    fhir_base: String,
    /// The client id the app is registered under (a public client).
    #[arg(long, default_value = "patient-app")]
    client_id: String,
    /// The local port of the redirect listener: the redirect URI is http://127.0.0.1:PORT/callback.
    #[arg(long, default_value_t = 8765)]
    port: u16,
}

/// The SMART claim of the `id_token`: the user's FHIR resource, as an absolute URL.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SmartClaims {
    #[serde(rename = "fhirUser", default, skip_serializing_if = "Option::is_none")]
    fhir_user: Option<String>,
}

impl AdditionalClaims for SmartClaims {}

/// The SMART launch context that comes with the token response.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SmartTokenFields {
    /// The id of the patient in context (granted with `launch/patient`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    patient: Option<String>,
}

impl ExtraTokenFields for SmartTokenFields {}

/// A token response with an optional `id_token` carrying [`SmartClaims`] and the SMART context.
type SmartTokenResponse = StandardTokenResponse<
    IdTokenFields<
        SmartClaims,
        SmartTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

/// `CoreClient` with the SMART claims and token fields, and its authorization and token
/// endpoints set.
type SmartClient = Client<
    SmartClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    SmartTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointNotSet,
>;

/// What discovery found.
struct Endpoints {
    issuer: IssuerUrl,
    authorization: AuthUrl,
    token: TokenUrl,
    /// The keys that sign `id_token`s.
    jwks: CoreJsonWebKeySet,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let fhir_base = args.fhir_base.trim_end_matches('/').to_string();

    // No redirects: the OAuth and OpenID Connect requests must not be sent on elsewhere.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;

    let endpoints = discover(&http, &fhir_base).await?;
    println!("Authorization endpoint: {}", endpoints.authorization.as_str());
    println!("Token endpoint:         {}", endpoints.token.as_str());

    // The listener is bound before the URL is shown, so the redirect cannot arrive too early.
    let listener = TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{} (is it in use? try --port)", args.port))?;
    let redirect_uri = format!("http://127.0.0.1:{}/callback", args.port);

    let client: SmartClient =
        Client::new(ClientId::new(args.client_id.clone()), endpoints.issuer.clone(), endpoints.jwks.clone())
            .set_auth_uri(endpoints.authorization.clone())
            .set_token_uri(endpoints.token.clone())
            .set_redirect_uri(RedirectUrl::new(redirect_uri.clone()).context("bad redirect URI")?);

    let (pkce_challenge, pkce_verifier) = PkceCodeChallenge::new_random_sha256();
    let (authorize_url, state, nonce) = client
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .add_scopes(SCOPES.iter().map(|scope| Scope::new(scope.to_string())))
        // SMART: the FHIR server the token is for.
        .add_extra_param("aud", fhir_base.clone())
        .set_pkce_challenge(pkce_challenge)
        .url();

    println!();
    println!("Open this URL in a browser, sign in and allow access:");
    println!();
    println!("    {authorize_url}");
    println!();
    println!("Waiting for the redirect to {redirect_uri} …");

    let code = tokio::time::timeout(LOGIN_TIMEOUT, wait_for_code(&listener, state.secret()))
        .await
        .map_err(|_| anyhow!("gave up waiting for the browser after {} seconds", LOGIN_TIMEOUT.as_secs()))??;
    drop(listener);
    println!("Received an authorization code; exchanging it for tokens.");

    let token = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(pkce_verifier)
        .request_async(&http)
        .await
        .map_err(|error| token_error(error, endpoints.token.as_str()))?;

    let granted = token.scopes().map(|scopes| scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "));
    println!("Granted scopes: {}", granted.as_deref().unwrap_or("(as requested)"));
    if let Some(expires_in) = token.expires_in() {
        println!("Access token expires in {} s", expires_in.as_secs());
    }
    if token.refresh_token().is_some() {
        println!("A refresh token was issued (offline_access).");
    }

    let fhir_user = verify_id_token(&client, &token, &nonce)?;
    println!("Signed in as (fhirUser): {}", fhir_user.as_deref().unwrap_or("(not given)"));

    let patient = match token.extra_fields().extra_fields().patient.clone() {
        Some(patient) => patient,
        // Without launch/patient context, a patient user's own record will do.
        None => fhir_user
            .as_deref()
            .and_then(|url| url.rsplit_once("/Patient/").map(|(_, id)| id.to_string()))
            .context("the token response names no patient (was launch/patient granted?)")?,
    };
    if patient.is_empty() || !patient.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        bail!("the server gave a patient id that is not a FHIR id: {patient:?}");
    }
    println!("Patient in context: {patient}");

    let fhir = Fhir { http, base: fhir_base, token: token.access_token().secret().clone() };
    show_patient(&fhir, &patient).await?;
    show_lab_results(&fhir, &patient).await?;
    show_appointments(&fhir, &patient).await?;
    Ok(())
}

/// Finds the endpoints (SMART configuration) and the `id_token` issuer and keys (OpenID
/// Connect discovery).
async fn discover(http: &reqwest::Client, fhir_base: &str) -> Result<Endpoints> {
    // SMART App Launch: the authorization and token endpoints come from smart-configuration.
    let smart_url = format!("{fhir_base}/.well-known/smart-configuration");
    let response = http
        .get(&smart_url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .with_context(|| format!("cannot reach {smart_url} (is the server running?)"))?;
    if !response.status().is_success() {
        bail!("GET {smart_url}: HTTP {}", response.status());
    }
    let smart: Value = response.json().await.with_context(|| format!("{smart_url} is not JSON"))?;
    let field = |name: &str| -> Result<String> {
        smart
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
            .with_context(|| format!("{smart_url} has no {name}"))
    };
    let supports_s256 = smart
        .get("code_challenge_methods_supported")
        .and_then(Value::as_array)
        .is_some_and(|methods| methods.iter().any(|m| m.as_str() == Some("S256")));
    if !supports_s256 {
        eprintln!("warning: the server does not advertise PKCE S256; trying anyway");
    }
    let authorization = AuthUrl::new(field("authorization_endpoint")?).context("bad authorization_endpoint")?;
    let token = TokenUrl::new(field("token_endpoint")?).context("bad token_endpoint")?;

    // OpenID Connect discovery gives the id_token's issuer and signing keys, and checks that
    // the issuer of the metadata is the URL it was fetched from (here the FHIR base URL).
    let issuer = IssuerUrl::new(fhir_base.to_string()).context("bad --fhir-base")?;
    match CoreProviderMetadata::discover_async(issuer.clone(), http).await {
        Ok(metadata) => {
            return Ok(Endpoints {
                issuer: metadata.issuer().clone(),
                authorization,
                token,
                jwks: metadata.jwks().clone(),
            });
        }
        Err(error) => {
            // Fallback: if openidconnect refuses the OpenID metadata (missing, or a field it
            // cannot parse), take the issuer and jwks_uri from smart-configuration instead. The
            // id_token is still verified in full against those keys; only the metadata
            // document differs.
            eprintln!(
                "warning: OpenID Connect discovery failed ({}); using smart-configuration's issuer and jwks_uri",
                error_chain(&error)
            );
        }
    }
    let issuer = match smart.get("issuer").and_then(Value::as_str) {
        Some(issuer) => IssuerUrl::new(issuer.to_string()).context("bad issuer in smart-configuration")?,
        None => issuer,
    };
    let jwks_uri = JsonWebKeySetUrl::new(field("jwks_uri")?).context("bad jwks_uri")?;
    let jwks = CoreJsonWebKeySet::fetch_async(&jwks_uri, http).await.map_err(|error| {
        anyhow!("cannot fetch the server's keys from {}: {}", jwks_uri.as_str(), error_chain(&error))
    })?;
    Ok(Endpoints { issuer, authorization, token, jwks })
}

/// Accepts connections until the browser comes back to `/callback`; returns the code.
async fn wait_for_code(listener: &TcpListener, expected_state: &str) -> Result<String> {
    loop {
        let (stream, _) = listener.accept().await.context("the redirect listener failed")?;
        if let Some(code) = answer_callback(stream, expected_state).await? {
            return Ok(code);
        }
    }
}

/// Reads one HTTP request; returns the code if it was the redirect, `None` for other requests
/// (a browser also asks for `/favicon.ico`).
async fn answer_callback(stream: TcpStream, expected_state: &str) -> Result<Option<String>> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await.context("cannot read the redirect request")?;
    // Read the headers too, so that closing the socket does not reset the connection before
    // the browser has read the answer.
    let mut header = String::new();
    for _ in 0..100 {
        header.clear();
        if reader.read_line(&mut header).await.unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut stream = reader.into_inner();

    let target = request_line.split_whitespace().nth(1).unwrap_or("/");
    let url = url::Url::parse("http://127.0.0.1").and_then(|base| base.join(target)).context("bad request target")?;
    if url.path() != "/callback" {
        respond(&mut stream, "404 Not Found", "Not found.").await;
        return Ok(None);
    }
    let param = |name: &str| url.query_pairs().find(|(key, _)| key == name).map(|(_, value)| value.into_owned());

    if let Some(error) = param("error") {
        respond(&mut stream, "400 Bad Request", "Authorization failed; see the terminal. You can close this window.")
            .await;
        let description = param("error_description").map(|d| format!(": {d}")).unwrap_or_default();
        bail!("the authorization server refused: {error}{description}");
    }
    if param("state").as_deref() != Some(expected_state) {
        respond(&mut stream, "400 Bad Request", "The state does not match; see the terminal.").await;
        bail!("the redirect's state does not match the request's (a forged or stale redirect)");
    }
    let Some(code) = param("code").filter(|code| !code.is_empty()) else {
        respond(&mut stream, "400 Bad Request", "No authorization code; see the terminal.").await;
        bail!("the redirect carries no code");
    };
    respond(&mut stream, "200 OK", "Signed in. You can close this window and return to the terminal.").await;
    Ok(Some(code))
}

/// Writes a small HTML page (failures to write only affect the browser).
async fn respond(stream: &mut TcpStream, status: &str, message: &str) {
    let body = format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Patient app</title></head>\
         <body><p>{message}</p></body></html>"
    );
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Verifies the `id_token` (signature with the server's JWKS, RS256 only, issuer, audience =
/// client id, expiry, nonce, and `at_hash` if present); returns its `fhirUser`.
fn verify_id_token(client: &SmartClient, token: &SmartTokenResponse, nonce: &Nonce) -> Result<Option<String>> {
    // openid was asked for; without an id_token there is no verified user, so stop here.
    let id_token = token
        .id_token()
        .context("the token response has no id_token (was openid granted? allow it on the consent page)")?;
    let verifier = client.id_token_verifier().set_allowed_algs([CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256]);
    let claims = id_token
        .claims(&verifier, nonce)
        .map_err(|error| anyhow!("the id_token does not verify: {}", error_chain(&error)))?;
    if let Some(expected) = claims.access_token_hash() {
        let algorithm = id_token.signing_alg().map_err(|e| anyhow!("id_token: {e}"))?;
        let key = id_token.signing_key(&verifier).map_err(|e| anyhow!("id_token: {e}"))?;
        let actual = AccessTokenHash::from_token(token.access_token(), algorithm, key)
            .map_err(|e| anyhow!("cannot hash the access token: {e}"))?;
        if actual != *expected {
            bail!("the id_token's at_hash does not match the access token");
        }
    }
    println!("id_token verified: iss {}, sub {}", claims.issuer().as_str(), claims.subject().as_str());
    Ok(claims.additional_claims().fhir_user.clone())
}

/// Turns a failed token request into a readable error.
fn token_error<E: std::error::Error + 'static>(
    error: RequestTokenError<E, StandardErrorResponse<CoreErrorResponseType>>,
    endpoint: &str,
) -> anyhow::Error {
    match error {
        RequestTokenError::ServerResponse(response) => {
            let description = response.error_description().map(|d| format!(": {d}")).unwrap_or_default();
            anyhow!("the token endpoint refused the code: {}{description}", response.error())
        }
        RequestTokenError::Parse(error, body) => {
            anyhow!("unreadable token response from {endpoint} ({error}): {}", String::from_utf8_lossy(&body))
        }
        RequestTokenError::Request(error) => anyhow!("cannot reach {endpoint}: {}", error_chain(&error)),
        RequestTokenError::Other(message) => anyhow!("token request to {endpoint} failed: {message}"),
    }
}

/// An error and its sources, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Authorized FHIR reads.
struct Fhir {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Fhir {
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let url = format!("{}/{path}", self.base);
        let response = self
            .http
            .get(&url)
            .query(query)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, FHIR_JSON)
            .send()
            .await
            .with_context(|| format!("GET {url} failed"))?;
        let status = response.status();
        let body: Value = match response.text().await {
            Ok(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
            Err(error) => bail!("GET {url}: cannot read the response: {error}"),
        };
        if !status.is_success() {
            bail!("GET {url}: HTTP {status}: {}", outcome_text(&body));
        }
        Ok(body)
    }
}

/// The diagnostics of an OperationOutcome, or the body as it is.
fn outcome_text(body: &Value) -> String {
    let issues: Vec<String> = body
        .get("issue")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|issue| {
            issue
                .get("diagnostics")
                .and_then(Value::as_str)
                .or_else(|| issue.pointer("/details/text").and_then(Value::as_str))
                .map(str::to_string)
        })
        .collect();
    match (issues.is_empty(), body) {
        (false, _) => issues.join("; "),
        (true, Value::String(text)) => text.chars().take(500).collect(),
        (true, other) => other.to_string().chars().take(500).collect(),
    }
}

async fn show_patient(fhir: &Fhir, patient: &str) -> Result<()> {
    let resource = fhir.get(&format!("Patient/{patient}"), &[]).await?;
    println!();
    println!("Patient/{patient}: {}", person_name(&resource));
    if let Some(birth_date) = resource.get("birthDate").and_then(Value::as_str) {
        println!("  born {birth_date}");
    }
    Ok(())
}

async fn show_lab_results(fhir: &Fhir, patient: &str) -> Result<()> {
    let bundle = fhir
        .get("Observation", &[("patient", patient), ("category", "laboratory"), ("_sort", "-date"), ("_count", "5")])
        .await?;
    let observations = resources(&bundle, "Observation");
    println!();
    println!("Latest laboratory results ({}):", observations.len());
    if observations.is_empty() {
        println!("  (none)");
    }
    for observation in observations {
        let code = observation.get("code").map(concept_text).unwrap_or_else(|| "(no code)".to_string());
        let date =
            first_str(observation, &["/effectiveDateTime", "/effectiveInstant", "/effectivePeriod/start", "/issued"])
                .unwrap_or("(no date)");
        println!("  {date}  {code}: {}", observation_value(observation));
    }
    Ok(())
}

async fn show_appointments(fhir: &Fhir, patient: &str) -> Result<()> {
    let today = chrono::Local::now().date_naive().to_string();
    let bundle = fhir.get("Appointment", &[("patient", patient), ("date", &format!("ge{today}"))]).await?;
    let appointments = resources(&bundle, "Appointment");
    println!();
    println!("Appointments from {today} ({}):", appointments.len());
    if appointments.is_empty() {
        println!("  (none)");
    }
    for appointment in appointments {
        let start = first_str(appointment, &["/start"]).unwrap_or("(no start)");
        let status = first_str(appointment, &["/status"]).unwrap_or("(no status)");
        let description = first_str(appointment, &["/description", "/serviceType/0/text", "/appointmentType/text"])
            .unwrap_or("(no description)");
        println!("  {start}  [{status}]  {description}");
    }
    if has_next_page(&bundle) {
        println!("  … more on further pages");
    }
    Ok(())
}

/// The resources of this type among a search Bundle's entries (not OperationOutcomes, not
/// included resources of other types).
fn resources<'a>(bundle: &'a Value, resource_type: &str) -> Vec<&'a Value> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("resource"))
        .filter(|resource| resource.get("resourceType").and_then(Value::as_str) == Some(resource_type))
        .collect()
}

fn has_next_page(bundle: &Value) -> bool {
    bundle
        .get("link")
        .and_then(Value::as_array)
        .is_some_and(|links| links.iter().any(|link| link.get("relation").and_then(Value::as_str) == Some("next")))
}

/// The first of these JSON pointers that leads to a string.
fn first_str<'a>(value: &'a Value, pointers: &[&str]) -> Option<&'a str> {
    pointers.iter().find_map(|pointer| value.pointer(pointer).and_then(Value::as_str))
}

/// A person's name: the official (or first) HumanName's text, or its given and family names.
fn person_name(resource: &Value) -> String {
    let names = resource.get("name").and_then(Value::as_array);
    let name = names
        .and_then(|names| {
            names.iter().find(|n| n.get("use").and_then(Value::as_str) == Some("official")).or_else(|| names.first())
        })
        .cloned()
        .unwrap_or(Value::Null);
    if let Some(text) = name.get("text").and_then(Value::as_str) {
        return text.to_string();
    }
    let mut parts: Vec<&str> = Vec::new();
    for key in ["prefix", "given"] {
        parts.extend(name.get(key).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str));
    }
    parts.extend(name.get("family").and_then(Value::as_str));
    parts.extend(name.get("suffix").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str));
    if parts.is_empty() {
        "(no name)".to_string()
    } else {
        parts.join(" ")
    }
}

/// A CodeableConcept's text, or its first coding's display or code.
fn concept_text(concept: &Value) -> String {
    first_str(concept, &["/text", "/coding/0/display", "/coding/0/code"]).unwrap_or("(uncoded)").to_string()
}

/// An Observation's value[x], readably.
fn observation_value(observation: &Value) -> String {
    if let Some(quantity) = observation.get("valueQuantity") {
        return quantity_text(quantity);
    }
    if let Some(concept) = observation.get("valueCodeableConcept") {
        return concept_text(concept);
    }
    if let Some(text) = observation.get("valueString").and_then(Value::as_str) {
        return text.to_string();
    }
    for key in ["valueBoolean", "valueInteger", "valueDateTime", "valueTime"] {
        if let Some(value) = observation.get(key) {
            return value.as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
        }
    }
    if let Some(range) = observation.get("valueRange") {
        let end = |key: &str| range.get(key).map(quantity_text).unwrap_or_else(|| "?".to_string());
        return format!("{} – {}", end("low"), end("high"));
    }
    if let Some(ratio) = observation.get("valueRatio") {
        let part = |key: &str| ratio.get(key).map(quantity_text).unwrap_or_else(|| "?".to_string());
        return format!("{} / {}", part("numerator"), part("denominator"));
    }
    if let Some(reason) = observation.get("dataAbsentReason") {
        return format!("(no value: {})", concept_text(reason));
    }
    let components = observation.get("component").and_then(Value::as_array);
    if let Some(components) = components.filter(|c| !c.is_empty()) {
        return components
            .iter()
            .map(|component| {
                let code = component.get("code").map(concept_text).unwrap_or_default();
                format!("{code} {}", observation_value(component))
            })
            .collect::<Vec<_>>()
            .join(", ");
    }
    "(no value)".to_string()
}

/// A Quantity as "value unit".
fn quantity_text(quantity: &Value) -> String {
    let value = quantity.get("value").map(Value::to_string).unwrap_or_else(|| "?".to_string());
    let comparator = quantity.get("comparator").and_then(Value::as_str).unwrap_or("");
    match first_str(quantity, &["/unit", "/code"]) {
        Some(unit) => format!("{comparator}{value} {unit}"),
        None => format!("{comparator}{value}"),
    }
}
