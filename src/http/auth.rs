//! The authorization server's HTTP surface: decodes forms, queries, cookies and the
//! `Authorization` header for [`AuthServer`], and turns its [`Reply`]s into responses.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::collections::HashMap;
use std::sync::Arc;

use crate::audit::SecurityEvent;
use crate::auth::{AuthServer, BearerError, Reply};

/// The routes of the authorization server and the discovery documents (only a server with
/// `--auth smart` has them). Each that changes who may do what is recorded as its
/// [`SecurityEvent`] (see [`super::security_audit`]).
pub fn routes<S: Clone + Send + Sync + 'static>(auth: Arc<AuthServer>, app: &Arc<super::AppState>) -> Router<S> {
    use axum::handler::Handler;
    use SecurityEvent::*;
    let audited = |event| axum::middleware::from_fn_with_state((app.clone(), event), super::security_audit::record);
    Router::new()
        .route("/fhir/.well-known/smart-configuration", get(|s: State<Server>| reply(s, |a| a.smart_configuration())))
        .route("/fhir/.well-known/openid-configuration", get(|s: State<Server>| reply(s, |a| a.openid_configuration())))
        .route("/auth/jwks", get(|s: State<Server>| reply(s, |a| a.jwks())))
        .route("/auth/smart-style.json", get(|s: State<Server>| reply(s, |a| a.smart_style())))
        .route("/auth/authorize", get(authorize_get).post(authorize_post))
        .route("/auth/login", post(login.layer(audited(Login))))
        .route("/auth/register", get(register_page).post(register.layer(audited(Registration))))
        .route("/auth/forgot", get(|s: State<Server>| reply(s, |a| a.forgot_page())).post(forgot))
        .route("/auth/reset", get(reset_page).post(reset.layer(audited(PasswordReset))))
        .route("/auth/consent", get(consent_page).post(consent.layer(audited(Consent))))
        .route("/auth/logout", post(logout.layer(audited(Logout))))
        .route("/auth/token", post(token.layer(audited(Token))))
        .route("/auth/introspect", post(introspect))
        .route("/auth/revoke", post(revoke.layer(audited(Revoke))))
        .route("/auth/launch", post(launch.layer(audited(Launch))))
        .route("/auth/accounts/{username}/disable", post(disable_account.layer(audited(AccountDisabled))))
        .route("/auth/accounts/{username}/enable", post(enable_account.layer(audited(AccountEnabled))))
        .layer(axum::extract::DefaultBodyLimit::max(AUTH_BODY_BYTES))
        .with_state(auth)
}

/// The largest form or body the authorization server reads (413 beyond): its forms and token
/// requests are a few KiB at most, client assertions included.
const AUTH_BODY_BYTES: usize = 64 * 1024;

/// The state of these routes.
type Server = Arc<AuthServer>;

async fn reply(State(auth): State<Server>, endpoint: impl FnOnce(&AuthServer) -> Reply) -> Response {
    into_response(endpoint(&auth))
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Form fields in order (names may repeat, as the consent form's `scope` boxes do).
fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// Form fields by name (the token endpoints take each once).
fn form_map(body: &[u8]) -> HashMap<String, String> {
    form_pairs(body).into_iter().collect()
}

async fn authorize_get(
    State(auth): State<Server>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    into_response(auth.authorize(&query, header_text(&headers, header::COOKIE)).await)
}

async fn authorize_post(State(auth): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    into_response(auth.authorize(&form_pairs(&body), header_text(&headers, header::COOKIE)).await)
}

async fn login(State(auth): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    let (cookies, origin) = (header_text(&headers, header::COOKIE), header_text(&headers, header::ORIGIN));
    into_response(auth.login(&form_pairs(&body), cookies, origin).await)
}

async fn register_page(State(auth): State<Server>, Query(query): Query<Vec<(String, String)>>) -> Response {
    into_response(auth.register_page(&query).await)
}

async fn register(State(auth): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    into_response(auth.register(&form_pairs(&body), header_text(&headers, header::ORIGIN)).await)
}

async fn forgot(State(auth): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    into_response(auth.forgot(&form_pairs(&body), header_text(&headers, header::ORIGIN)).await)
}

async fn reset_page(State(auth): State<Server>, Query(query): Query<Vec<(String, String)>>) -> Response {
    into_response(auth.reset_page(&query).await)
}

async fn reset(State(auth): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    into_response(auth.reset(&form_pairs(&body), header_text(&headers, header::ORIGIN)).await)
}

async fn consent_page(
    State(auth): State<Server>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    into_response(auth.consent_page(&query, header_text(&headers, header::COOKIE)).await)
}

async fn consent(State(auth): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    into_response(auth.consent(&form_pairs(&body), header_text(&headers, header::COOKIE)).await)
}

async fn logout(State(auth): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    let (cookies, origin) = (header_text(&headers, header::COOKIE), header_text(&headers, header::ORIGIN));
    into_response(auth.logout(&form_pairs(&body), cookies, origin).await)
}

async fn token(State(auth): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    into_response(auth.token(header_text(&headers, header::AUTHORIZATION), &form_map(&body)).await)
}

async fn introspect(State(auth): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    into_response(auth.introspect(header_text(&headers, header::AUTHORIZATION), &form_map(&body)).await)
}

async fn revoke(State(auth): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    into_response(auth.revoke(header_text(&headers, header::AUTHORIZATION), &form_map(&body)).await)
}

async fn disable_account(state: State<Server>, path: Path<String>, headers: HeaderMap) -> Response {
    set_disabled(state, path, headers, true).await
}

async fn enable_account(state: State<Server>, path: Path<String>, headers: HeaderMap) -> Response {
    set_disabled(state, path, headers, false).await
}

async fn set_disabled(
    State(auth): State<Server>,
    Path(username): Path<String>,
    headers: HeaderMap,
    disabled: bool,
) -> Response {
    match auth.authenticate(header_text(&headers, header::AUTHORIZATION)).await {
        Ok(access) => into_response(auth.set_disabled(&access, &username, disabled).await),
        Err(error) => bearer_challenge(&error),
    }
}

async fn launch(State(auth): State<Server>, headers: HeaderMap, body: Bytes) -> Response {
    match auth.authenticate(header_text(&headers, header::AUTHORIZATION)).await {
        Ok(access) => into_response(auth.create_launch(&access, &body).await),
        Err(error) => bearer_challenge(&error),
    }
}

/// A 401 for a missing or rejected bearer token (RFC 6750 §3).
fn bearer_challenge(error: &BearerError) -> Response {
    let description = match error {
        BearerError::Missing => "a bearer token is required",
        BearerError::Invalid(why) => why,
    };
    let body = serde_json::json!({"error": "invalid_token", "error_description": description});
    let mut response = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge(error)) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The `WWW-Authenticate` value of a FHIR request's 401.
pub fn challenge(error: &BearerError) -> String {
    match error {
        BearerError::Missing => "Bearer realm=\"hearth\"".to_string(),
        BearerError::Invalid(why) => {
            format!("Bearer realm=\"hearth\", error=\"invalid_token\", error_description=\"{why}\"")
        }
    }
}

fn into_response(reply: Reply) -> Response {
    // What an error tells the client, the audit of the request keeps (error descriptions
    // name no secret).
    if let Reply::Json { status: 400.., body, .. } = &reply {
        let why = body.get("error_description").or_else(|| body.get("error")).and_then(|v| v.as_str());
        if let Some(why) = why {
            crate::audit::RequestTrail::note(|noted| noted.refusal = Some(why.to_string()));
        }
    }
    match reply {
        Reply::Page { status, html, set_cookie } => {
            let mut response = Response::new(Body::from(html));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
            );
            set_cookie_header(&mut response, set_cookie);
            response
        }
        Reply::Redirect { location, set_cookie } => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::SEE_OTHER;
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            set_cookie_header(&mut response, set_cookie);
            response
        }
        Reply::Json { status, body, no_store, www_authenticate } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = (status, axum::Json(body)).into_response();
            let headers = response.headers_mut();
            if no_store {
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            }
            if let Some(value) = www_authenticate.and_then(|v| HeaderValue::from_str(&v).ok()) {
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
            response
        }
    }
}

fn set_cookie_header(response: &mut Response, cookie: Option<String>) {
    if let Some(value) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
}
