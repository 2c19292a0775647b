//! The authorization endpoint (`/auth/authorize`, GET and POST), the login and consent pages,
//! and the authorization codes they end in.
//!
//! A request that names an unknown client or an unregistered `redirect_uri` gets an error
//! page and never a redirect. Any other problem is sent back to the client's redirect URI
//! (`error=…&state=…`). The pending request is stored (10 minutes), so that the login and
//! consent forms can be served by any node; each form carries the request id and a CSRF token
//! stored with it, and consent also needs the login session's cookie (HttpOnly, SameSite=Lax,
//! Secure behind https).

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use super::keys::{digest, random_token};
use super::launch::{LaunchContext, LAUNCH};
use super::pages::{self, PatientChoice, PatientPicker};
use super::records::{client, hash_password, user, verify_password, ClientRecord, UserRecord};
use super::scope::{parse_scopes, Scope, ScopeContext};
use super::{in_seconds, now_seconds, AuthServer, Reply};
use crate::audit::{RequestTrail, Who};

/// Record kinds.
const PENDING: &str = "authorize";
pub(super) const SESSION: &str = "session";
pub(super) const CODE: &str = "code";
const LOGIN_ATTEMPTS: &str = "login-attempts";

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "hearth_session";

const PENDING_SECONDS: i64 = 600;
const SESSION_SECONDS: i64 = 12 * 3600;
const CODE_SECONDS: i64 = 300;
/// Sign-in attempts allowed per user name within [`THROTTLE_SECONDS`] (a success resets it).
pub(super) const MAX_LOGIN_ATTEMPTS: i64 = 5;
pub(super) const THROTTLE_SECONDS: i64 = 900;

const BAD_LOGIN: &str = "The username or password is incorrect.";

/// Told only to who gave the right password.
const DISABLED: &str = "This account is disabled. Contact your clinic.";
const THROTTLED: &str = "Too many failed sign-ins. Wait a few minutes and try again.";

/// An authorization request waiting for login and consent.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingRequest {
    client_id: String,
    redirect_uri: String,
    /// The requested scopes this client may have.
    scopes: Vec<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    nonce: Option<String>,
    launch: Option<LaunchContext>,
    csrf: String,
    /// Who signed in for it.
    username: Option<String>,
}

/// A login session (the cookie's digest is the key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Session {
    pub username: String,
    /// Unix seconds.
    pub expires: i64,
}

/// What an authorization code stands for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CodeGrant {
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub nonce: Option<String>,
    pub username: String,
    /// The login session's key, for `online_access`.
    pub session: String,
    pub patient: Option<String>,
    pub encounter: Option<String>,
    /// The patients `patient/` scopes reach.
    pub patients: Vec<String>,
    /// The grant every token of this authorization belongs to.
    pub grant: String,
}

/// A form or query: name-value pairs in order (names may repeat).
pub type Params = [(String, String)];

pub(super) fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

pub(super) fn error_page(status: u16, message: &str) -> Reply {
    Reply::Page { status, html: pages::error(message), set_cookie: None }
}

pub(super) fn server_error(error: impl std::fmt::Display) -> Reply {
    tracing::error!(%error, "authorization server storage failure");
    error_page(500, "The server could not complete the request. Try again later.")
}

/// `redirect_uri` with the parameters added to its query.
fn redirect_with(redirect_uri: &str, pairs: &[(&str, Option<&str>)]) -> Reply {
    let mut url = redirect_uri.to_string();
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    url.push(if redirect_uri.contains('?') { '&' } else { '?' });
    url.push_str(&query.finish());
    Reply::Redirect { location: url, set_cookie: None }
}

fn redirect_error(redirect_uri: &str, state: Option<&str>, error: &str, description: &str) -> Reply {
    crate::audit::RequestTrail::note(|noted| noted.refusal = Some(description.to_string()));
    redirect_with(redirect_uri, &[("error", Some(error)), ("error_description", Some(description)), ("state", state)])
}

/// The value of cookie `name` in a `Cookie` header.
pub(super) fn cookie<'a>(header: Option<&'a str>, name: &str) -> Option<&'a str> {
    header?.split(';').filter_map(|pair| pair.trim().split_once('=')).find(|(n, _)| *n == name).map(|(_, v)| v)
}

/// Whether a user's authorization may grant `requested` to the client: never a `system/`
/// scope (those are for backend services, through client_credentials), and only what the
/// client's registered scopes, if it has any, cover.
fn client_may_have(client: &ClientRecord, requested: &Scope, text: &str) -> bool {
    let system = match requested {
        Scope::Resource(scope) => scope.context == ScopeContext::System,
        Scope::SystemLaunch => true,
        _ => false,
    };
    if system {
        return false;
    }
    let Some(registered) = &client.scope else { return true };
    parse_scopes(registered).iter().any(|(word, allowed)| match (requested, allowed) {
        (Scope::Resource(wanted), Scope::Resource(wider)) => wanted.within(wider),
        _ => word == text,
    })
}

fn client_name(client: &ClientRecord) -> &str {
    client.name.as_deref().unwrap_or(&client.client_id)
}

impl AuthServer {
    /// `GET|POST /auth/authorize`.
    pub async fn authorize(&self, params: &Params, cookies: Option<&str>) -> Reply {
        let Some(client_id) = param(params, "client_id") else {
            return error_page(400, "The request names no client (client_id).");
        };
        let client = match client(self.store.as_ref(), client_id).await {
            Ok(Some(client)) => client,
            Ok(None) => return error_page(400, "The client is not registered with this server."),
            Err(error) => return server_error(error),
        };
        let Some(redirect_uri) =
            param(params, "redirect_uri").filter(|uri| client.redirect_uris.iter().any(|r| r == uri))
        else {
            return error_page(400, "The redirect_uri is missing or is not registered for this client.");
        };
        let state = param(params, "state");
        let fail = |error: &str, description: &str| redirect_error(redirect_uri, state, error, description);
        if param(params, "response_type") != Some("code") {
            return fail("unsupported_response_type", "response_type must be code");
        }
        if param(params, "aud").map(|aud| aud.trim_end_matches('/')) != Some(self.fhir_base().as_str()) {
            return fail("invalid_request", "aud must be this server's FHIR base URL");
        }
        let requested = parse_scopes(param(params, "scope").unwrap_or(""));
        let scopes: Vec<String> = requested
            .iter()
            .filter(|(text, scope)| client_may_have(&client, scope, text))
            .map(|(t, _)| t.clone())
            .collect();
        if scopes.is_empty() {
            return fail("invalid_scope", "none of the requested scopes can be granted to this client");
        }
        let launch = match param(params, "launch") {
            None => None,
            Some(launch) => match self.store.auth_get(LAUNCH, launch).await {
                Ok(Some(data)) => match serde_json::from_str::<LaunchContext>(&data) {
                    Ok(context) if context.client_id.as_ref().is_some_and(|only| *only != client.client_id) => {
                        return fail("invalid_request", "the launch is for another app")
                    }
                    found => found.ok(),
                },
                Ok(None) => return fail("invalid_request", "the launch is unknown or has expired"),
                Err(error) => return server_error(error),
            },
        };
        let pending = PendingRequest {
            client_id: client.client_id.clone(),
            redirect_uri: redirect_uri.to_string(),
            scopes,
            state: state.map(str::to_string),
            code_challenge: param(params, "code_challenge").map(str::to_string),
            code_challenge_method: param(params, "code_challenge_method").map(str::to_string),
            nonce: param(params, "nonce").map(str::to_string),
            launch,
            csrf: random_token(24),
            username: None,
        };
        // OpenID Connect `prompt`: `none` shows no page, and this server asks for consent every
        // time; `login` signs in again even with a live session.
        let prompts: Vec<&str> = param(params, "prompt").unwrap_or("").split_whitespace().collect();
        let session = self.session(cookies).await;
        if prompts.contains(&"none") {
            return match session {
                Some(_) => fail("consent_required", "this server asks the user for consent on every authorization"),
                None => fail("login_required", "the user is not signed in"),
            };
        }
        let request_id = random_token(24);
        if let Err(error) = self.save_pending(&request_id, &pending).await {
            return server_error(error);
        }
        match session.filter(|_| !prompts.contains(&"login")) {
            Some((_, session)) => self.consent_for(&request_id, pending, &session.username).await,
            None => Reply::Page {
                status: 200,
                html: pages::login(client_name(&client), &request_id, &pending.csrf, None),
                set_cookie: None,
            },
        }
    }

    async fn save_pending(&self, id: &str, pending: &PendingRequest) -> crate::store::StoreResult<()> {
        let data = serde_json::to_string(pending).expect("request serialises");
        self.store.auth_upsert(PENDING, id, &data, in_seconds(PENDING_SECONDS)).await
    }

    /// The pending request a form names, if its CSRF token matches.
    async fn pending(&self, params: &Params) -> Result<(String, PendingRequest), Reply> {
        let expired = || error_page(400, "This sign-in has expired or is not valid. Start again from the app.");
        let id = param(params, "request").ok_or_else(expired)?;
        let data = self.store.auth_get(PENDING, id).await.map_err(server_error)?.ok_or_else(expired)?;
        let pending: PendingRequest = serde_json::from_str(&data).map_err(|_| expired())?;
        if param(params, "csrf") != Some(pending.csrf.as_str()) {
            return Err(error_page(403, "The form was not sent by this server's page (CSRF check failed)."));
        }
        Ok((id.to_string(), pending))
    }

    /// The live session of the `Cookie` header, with its key.
    pub(super) async fn session(&self, cookies: Option<&str>) -> Option<(String, Session)> {
        let key = digest(cookie(cookies, SESSION_COOKIE)?);
        let data = self.store.auth_get(SESSION, &key).await.ok()??;
        let session: Session = serde_json::from_str(&data).ok()?;
        (session.expires > now_seconds()).then_some((key, session))
    }

    /// The `Set-Cookie` value of a session cookie (`max_age` 0 removes it).
    fn session_cookie(&self, value: &str, max_age: i64) -> String {
        let secure = if self.secure_cookies() { "; Secure" } else { "" };
        format!("{SESSION_COOKIE}={value}; Path=/auth; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
    }

    /// `POST /auth/logout`: ends this browser's login session (the record and the cookie;
    /// `online_access` refresh tokens end with it). Sent from a consent page (its `request` and
    /// `csrf`), it goes on to the sign-in page of that request. A form posted from another site
    /// (its `Origin`) is refused: it needs no token, so another page must not sign people out.
    pub async fn logout(&self, form: &Params, cookies: Option<&str>, origin: Option<&str>) -> Reply {
        if !self.is_own_origin(origin) {
            return error_page(403, "Signing out is only possible from this server's own pages.");
        }
        if let Some((_, session)) = self.session(cookies).await {
            RequestTrail::note_who(Who { username: Some(session.username), ..Who::default() });
        }
        if let Err(error) = self.end_session(cookies).await {
            return server_error(error);
        }
        let html = match self.pending(form).await {
            Ok((request_id, mut pending)) => {
                pending.username = None;
                if let Err(error) = self.save_pending(&request_id, &pending).await {
                    return server_error(error);
                }
                let name = self.client_name_of(&pending.client_id).await;
                pages::login(&name, &request_id, &pending.csrf, None)
            }
            Err(_) => pages::signed_out(),
        };
        Reply::Page { status: 200, html, set_cookie: Some(self.session_cookie("", 0)) }
    }

    /// Ends the login session of the `Cookie` header, if it has a live one.
    async fn end_session(&self, cookies: Option<&str>) -> crate::store::StoreResult<()> {
        match self.session(cookies).await {
            Some((key, _)) => self.store.auth_delete(SESSION, &key).await.map(drop),
            None => Ok(()),
        }
    }

    /// Whether the session with this key is still live (for `online_access` refresh tokens).
    pub(super) async fn session_alive(&self, key: &str) -> bool {
        matches!(self.store.auth_get(SESSION, key).await, Ok(Some(_)))
    }

    /// `POST /auth/login`. A browser that signs in again (`prompt=login`, or the next person at
    /// a shared computer) replaces its session: the earlier one ends, and its `online_access`
    /// refresh tokens with it. A form posted from another site (its `Origin`) is refused.
    pub async fn login(&self, form: &Params, cookies: Option<&str>, origin: Option<&str>) -> Reply {
        if !self.is_own_origin(origin) {
            return error_page(403, "Signing in is only possible from this server's own pages.");
        }
        let (request_id, mut pending) = match self.pending(form).await {
            Ok(found) => found,
            Err(reply) => return reply,
        };
        let name = self.client_name_of(&pending.client_id).await;
        let again = |message: &str| Reply::Page {
            status: 401,
            html: pages::login(&name, &request_id, &pending.csrf, Some(message)),
            set_cookie: None,
        };
        let (username, password) = (param(form, "username").unwrap_or(""), param(form, "password").unwrap_or(""));
        RequestTrail::note_who(Who { client_id: Some(pending.client_id.clone()), ..Who::default() });
        let user = match self.check_credentials(username, password).await {
            Ok(Ok(user)) => user,
            Ok(Err(message)) => {
                self.note_failed_sign_in(username, message).await;
                return again(message);
            }
            Err(error) => return server_error(error),
        };
        user.note_acting(None);
        let set_cookie = match self.start_session(&user.username).await {
            Ok(set_cookie) => set_cookie,
            Err(error) => return server_error(error),
        };
        pending.username = Some(user.username.clone());
        if let Err(error) = self.save_pending(&request_id, &pending).await {
            return server_error(error);
        }
        // The new session is stored: the earlier one of this browser ends.
        if let Err(error) = self.end_session(cookies).await {
            return server_error(error);
        }
        Reply::Redirect {
            location: format!(
                "/auth/consent?request={}",
                url::form_urlencoded::byte_serialize(request_id.as_bytes()).collect::<String>()
            ),
            set_cookie: Some(set_cookie),
        }
    }

    /// Tells the audit of a refused sign-in whose account it was, when the name is an
    /// account's: never the text typed itself, which may be a password typed in the wrong box.
    async fn note_failed_sign_in(&self, username: &str, message: &str) {
        let account = user(self.store.as_ref(), username).await.ok().flatten();
        let why = match &account {
            Some(account) => {
                account.note_acting(None);
                message.to_string()
            }
            None => format!("{message} (no account has that name)"),
        };
        RequestTrail::note(|noted| noted.refusal = Some(why));
    }

    /// The enabled account `username` when `password` is its password, or what to tell the
    /// person. Every attempt is counted before the password is checked, atomically, so that
    /// parallel attempts cannot share one count; a success clears it. As slow for unknown names
    /// as for known ones, so that timing does not tell which exist.
    pub(super) async fn check_credentials(
        &self,
        username: &str,
        password: &str,
    ) -> crate::store::StoreResult<Result<UserRecord, &'static str>> {
        let throttle_key = username.to_lowercase();
        let attempts = self.store.auth_increment(LOGIN_ATTEMPTS, &throttle_key, in_seconds(THROTTLE_SECONDS)).await?;
        if attempts > MAX_LOGIN_ATTEMPTS {
            return Ok(Err(THROTTLED));
        }
        let found = user(self.store.as_ref(), username).await?;
        // On a blocking thread, since a hash takes tens of milliseconds.
        let hash = found.as_ref().map_or_else(|| self.dummy_hash().to_string(), |record| record.password_hash.clone());
        let password = password.to_string();
        let matches = tokio::task::spawn_blocking(move || verify_password(&password, &hash)).await.unwrap_or(false);
        let Some(user) = found.filter(|_| matches) else {
            return Ok(Err(if attempts >= MAX_LOGIN_ATTEMPTS { THROTTLED } else { BAD_LOGIN }));
        };
        self.store.auth_delete(LOGIN_ATTEMPTS, &throttle_key).await?;
        if user.disabled {
            return Ok(Err(DISABLED));
        }
        Ok(Ok(user))
    }

    /// Starts a login session for `username` and answers the `Set-Cookie` value that carries
    /// it (only the cookie's digest is stored).
    pub(super) async fn start_session(&self, username: &str) -> crate::store::StoreResult<String> {
        let cookie_value = random_token(32);
        let session = Session { username: username.to_string(), expires: now_seconds() + SESSION_SECONDS };
        let data = serde_json::to_string(&session).expect("session serialises");
        self.store.auth_upsert(SESSION, &digest(&cookie_value), &data, in_seconds(SESSION_SECONDS)).await?;
        Ok(self.session_cookie(&cookie_value, SESSION_SECONDS))
    }

    /// The name a client is shown by on the pages (its id when it has none).
    async fn client_name_of(&self, client_id: &str) -> String {
        match client(self.store.as_ref(), client_id).await {
            Ok(Some(client)) => client_name(&client).to_string(),
            _ => client_id.to_string(),
        }
    }

    /// The argon2id hash of a new password, computed on a blocking thread (it takes tens of
    /// milliseconds), or the error page to answer.
    pub(super) async fn hash_new_password(&self, password: &str) -> Result<String, Reply> {
        let (password, cost) = (password.to_string(), self.settings.password_cost);
        tokio::task::spawn_blocking(move || hash_password(&password, cost))
            .await
            .map_err(|_| server_error("the password could not be hashed"))
    }

    fn dummy_hash(&self) -> &'static str {
        static DUMMY: OnceLock<String> = OnceLock::new();
        DUMMY.get_or_init(|| hash_password("no such user", self.settings.password_cost))
    }

    /// `GET /auth/consent?request=…`: the consent page of a request this session signed in for.
    pub async fn consent_page(&self, query: &Params, cookies: Option<&str>) -> Reply {
        let expired = || error_page(400, "This sign-in has expired or is not valid. Start again from the app.");
        let Some(request_id) = param(query, "request") else { return expired() };
        let pending = match self.store.auth_get(PENDING, request_id).await {
            Ok(Some(data)) => match serde_json::from_str::<PendingRequest>(&data) {
                Ok(pending) => pending,
                Err(_) => return expired(),
            },
            Ok(None) => return expired(),
            Err(error) => return server_error(error),
        };
        match self.session(cookies).await {
            Some((_, session)) if pending.username.as_deref() == Some(session.username.as_str()) => {
                self.consent_for(request_id, pending, &session.username).await
            }
            _ => {
                let name = self.client_name_of(&pending.client_id).await;
                Reply::Page {
                    status: 200,
                    html: pages::login(&name, request_id, &pending.csrf, None),
                    set_cookie: None,
                }
            }
        }
    }

    async fn consent_for(&self, request_id: &str, mut pending: PendingRequest, username: &str) -> Reply {
        let user = match user(self.store.as_ref(), username).await {
            Ok(Some(user)) => user,
            Ok(None) => return error_page(403, "This account no longer exists."),
            Err(error) => return server_error(error),
        };
        if pending.username.as_deref() != Some(username) {
            pending.username = Some(username.to_string());
            if let Err(error) = self.save_pending(request_id, &pending).await {
                return server_error(error);
            }
        }
        self.consent_page_for(request_id, &pending, &user, None).await
    }

    /// The consent page of a pending request, with an error to show.
    async fn consent_page_for(
        &self,
        request_id: &str,
        pending: &PendingRequest,
        user: &UserRecord,
        error: Option<&str>,
    ) -> Reply {
        let name = self.client_name_of(&pending.client_id).await;
        let wants_patient = pending.scopes.iter().any(|s| s == "launch/patient") && pending.launch.is_none();
        let picker = if !wants_patient {
            PatientPicker::None
        } else if user.is_clinician() {
            PatientPicker::ById
        } else {
            match self.reach(user).await {
                Ok(reach) => match reach.patients.unwrap_or_default() {
                    patients if patients.len() > 1 => PatientPicker::Choices(self.patient_choices(&patients).await),
                    _ => PatientPicker::None,
                },
                Err(error) => return server_error(error),
            }
        };
        let html = pages::consent(&name, &user.username, request_id, &pending.csrf, &pending.scopes, &picker, error);
        Reply::Page { status: if error.is_some() { 400 } else { 200 }, html, set_cookie: None }
    }

    /// For a clinician picking the patient by id: an error to show when that patient is not
    /// stored (the request stays open to try again).
    async fn unknown_picked_patient(
        &self,
        pending: &PendingRequest,
        scopes: &[String],
        user: &UserRecord,
        form: &Params,
    ) -> Option<&'static str> {
        if !clinician_picks(pending, scopes, user) {
            return None;
        }
        let Some(id) = param(form, "patient").map(str::trim).filter(|id| !id.is_empty()) else {
            return Some("Enter the id of the patient to open.");
        };
        if !crate::model::resource::is_valid_id(id) {
            return Some("That is not a patient id.");
        }
        match self.store.read("Patient", id).await {
            Ok(Some(found)) if !found.deleted => None,
            _ => Some("No patient has that id."),
        }
    }

    /// The patients a proxy may act for, labelled with their names where known.
    async fn patient_choices(&self, patients: &[String]) -> Vec<PatientChoice> {
        let mut choices = Vec::new();
        for id in patients {
            let name = match self.store.read("Patient", id).await {
                Ok(Some(found)) if !found.deleted => crate::model::resource::person_name(&found.body),
                _ => None,
            };
            let label = match name {
                Some(name) => format!("{name} (Patient/{id})"),
                None => format!("Patient/{id}"),
            };
            choices.push(PatientChoice { id: id.clone(), label });
        }
        choices
    }

    /// `POST /auth/consent`: allow (with the ticked scopes) or deny.
    pub async fn consent(&self, form: &Params, cookies: Option<&str>) -> Reply {
        let (request_id, pending) = match self.pending(form).await {
            Ok(found) => found,
            Err(reply) => return reply,
        };
        let Some((session_key, session)) = self.session(cookies).await else {
            return error_page(401, "Your sign-in session has ended. Start again from the app.");
        };
        if pending.username.as_deref() != Some(session.username.as_str()) {
            return error_page(403, "This request belongs to another sign-in.");
        }
        let user = match user(self.store.as_ref(), &session.username).await {
            Ok(Some(user)) => user,
            Ok(None) => return error_page(403, "This account no longer exists."),
            Err(error) => return server_error(error),
        };
        user.note_acting(Some(&pending.client_id));
        let allowing = param(form, "decision") == Some("allow");
        // What the user allows: the requested scopes they left ticked.
        let ticked: Vec<&str> = form.iter().filter(|(n, _)| n == "scope").map(|(_, v)| v.as_str()).collect();
        let scopes: Vec<String> = pending.scopes.iter().filter(|s| ticked.contains(&s.as_str())).cloned().collect();
        if let Some(problem) = self.unknown_picked_patient(&pending, &scopes, &user, form).await.filter(|_| allowing) {
            return self.consent_page_for(&request_id, &pending, &user, Some(problem)).await;
        }
        // The request is used up, whatever the decision, and only once (two submissions of the
        // same form get one answer).
        match self.store.auth_take(PENDING, &request_id).await {
            Ok(Some(_)) => {}
            Ok(None) => return error_page(400, "This sign-in was already answered. Start again from the app."),
            Err(error) => return server_error(error),
        }
        let state = pending.state.as_deref();
        if !allowing {
            return redirect_error(&pending.redirect_uri, state, "access_denied", "the user denied access");
        }
        if scopes.is_empty() {
            return redirect_error(&pending.redirect_uri, state, "access_denied", "no scope was allowed");
        }
        let reachable = match self.reach(&user).await {
            Ok(reach) => reach.patients,
            Err(error) => return server_error(error),
        };
        let context = self.patient_context(&pending, &scopes, &user, reachable.as_deref(), param(form, "patient"));
        let (patient, encounter) = match context {
            Ok(context) => context,
            Err(description) => return redirect_error(&pending.redirect_uri, state, "invalid_request", description),
        };
        // patient/ scopes reach the patient in context; without one, a patient's own records
        // and a proxy's patients.
        let patients = match &patient {
            Some(patient) => vec![patient.clone()],
            None => reachable.unwrap_or_default(),
        };
        let grant = CodeGrant {
            client_id: pending.client_id.clone(),
            redirect_uri: pending.redirect_uri.clone(),
            scopes,
            code_challenge: pending.code_challenge.clone(),
            code_challenge_method: pending.code_challenge_method.clone(),
            nonce: pending.nonce.clone(),
            username: user.username.clone(),
            session: session_key,
            patient,
            encounter,
            patients,
            grant: random_token(16),
        };
        let code = random_token(32);
        let data = serde_json::to_string(&grant).expect("code serialises");
        if let Err(error) = self.store.auth_upsert(CODE, &digest(&code), &data, in_seconds(CODE_SECONDS)).await {
            return server_error(error);
        }
        redirect_with(&pending.redirect_uri, &[("code", Some(&code)), ("state", state)])
    }

    /// The patient (and encounter) in context: the EHR launch's, or for `launch/patient` the
    /// one a clinician picked, the one a patient or proxy chose among those they reach
    /// (`reachable`; `None` for every patient), or the only one they have.
    fn patient_context(
        &self,
        pending: &PendingRequest,
        scopes: &[String],
        user: &UserRecord,
        reachable: Option<&[String]>,
        chosen: Option<&str>,
    ) -> Result<(Option<String>, Option<String>), &'static str> {
        // An EHR launch's patient, for a user who may see that patient.
        if let Some(launch) = pending.launch.as_ref().filter(|_| scopes.iter().any(|s| s == "launch")) {
            if reachable.is_some_and(|patients| !patients.contains(&launch.patient)) {
                return Err("the launch's patient is not one this user may see");
            }
            return Ok((Some(launch.patient.clone()), launch.encounter.clone()));
        }
        if !scopes.iter().any(|s| s == "launch/patient") {
            return Ok((None, None));
        }
        if clinician_picks(pending, scopes, user) {
            // A clinician's pick was checked against the stored patients before.
            return chosen.map(|id| (Some(id.trim().to_string()), None)).ok_or("choose the patient to open");
        }
        match (chosen, reachable.unwrap_or_default()) {
            (None, [only]) => Ok((Some(only.clone()), None)),
            (Some(chosen), patients) if patients.iter().any(|p| p == chosen) => Ok((Some(chosen.to_string()), None)),
            (Some(_), _) => Err("the chosen patient is not one this user may act for"),
            (None, []) => Ok((None, None)),
            (None, _) => Err("choose the patient to act for"),
        }
    }
}

/// Whether the patient in context is the one a clinician names: `launch/patient` granted, no
/// EHR launch context granted, and a user who reaches every patient.
fn clinician_picks(pending: &PendingRequest, scopes: &[String], user: &UserRecord) -> bool {
    let granted = |scope: &str| scopes.iter().any(|s| s == scope);
    let ehr_context = pending.launch.is_some() && granted("launch");
    !ehr_context && granted("launch/patient") && user.is_clinician()
}
