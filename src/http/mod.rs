//! The HTTP edge: the axum router, request decoding into [`FhirRequest`]s, content negotiation,
//! and turning [`FhirResponse`]s and [`FhirError`]s into HTTP responses.

mod access_log;
mod auth;
pub mod binary;
pub mod format;
mod metrics;
mod security_audit;
mod websocket;

use std::sync::Arc;

use axum::body::Body as HttpBody;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use time::OffsetDateTime;
use tower_http::catch_panic::CatchPanicLayer;

use crate::auth::{Access, AuthServer, BearerError};
use crate::model::{ErrorKind, FhirError, IssueCode};
use crate::rest::{Body, Conditions, FhirRequest, FhirResponse, FhirService, Method, PatchFormat, PreferReturn};
use format::{negotiate, parse_body, render, request_body_kind, Format, RequestBodyKind};
pub use metrics::Metrics;

/// Shared state of the HTTP layer.
pub struct AppState {
    pub service: FhirService,
    /// Largest accepted request body in bytes (larger ones get 413).
    pub max_body_bytes: usize,
    pub metrics: Arc<Metrics>,
    /// The SMART authorization server; `None` with `--auth off`.
    pub auth: Option<Arc<AuthServer>>,
    /// Files served at `/static/` (`--static-dir`).
    pub static_dir: Option<std::path::PathBuf>,
}

/// The whole HTTP surface: `/fhir/…`, `/auth/…`, the subscriptions' websocket, `/healthz`,
/// `/readyz`, `/metrics`, and `/static/…` when the operator gives a directory.
pub fn router(state: AppState) -> Router {
    // Shared, not cloned: axum clones the state for every request, and one reference count
    // costs less than one per field.
    let state = Arc::new(state);
    let authorization = match &state.auth {
        Some(server) => auth::routes(server.clone(), &state),
        None => Router::new(),
    };
    let routes: Router<Arc<AppState>> = Router::new()
        .merge(authorization)
        .route("/fhir", any(fhir))
        .route("/fhir/", any(fhir))
        .route("/fhir/{*path}", any(fhir))
        .route(websocket::WEBSOCKET_PATH, get(websocket::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics::render));
    let routes = match &state.static_dir {
        Some(dir) => routes.nest_service("/static", static_files(dir)),
        None => routes,
    };
    let routes = routes
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::count))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state);
    // tower-http answers every OPTIONS as a CORS preflight; one without an Origin is no CORS
    // request and gets the FHIR answer (405 with Allow).
    let with_cors = routes.clone().layer(cors());
    Router::new()
        .fallback_service(tower::service_fn(move |request: Request| {
            use tower::ServiceExt;
            let plain_options =
                request.method() == axum::http::Method::OPTIONS && !request.headers().contains_key(header::ORIGIN);
            if plain_options { routes.clone() } else { with_cors.clone() }.oneshot(request)
        }))
        .layer(axum::middleware::from_fn(access_log::observe))
}

/// The operator's static files (a portal web app), with ETags and ranges, never a directory
/// listing; `nosniff` so that a file is only ever what its extension says.
fn static_files(dir: &std::path::Path) -> Router {
    async fn nosniff(mut response: Response) -> Response {
        response.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        response
    }
    Router::new()
        .fallback_service(tower_http::services::ServeDir::new(dir))
        .layer(axum::middleware::map_response(nosniff))
}

/// CORS for browser apps: the FHIR API, discovery and token endpoints take bearer tokens or
/// form posts, never cookies, so any origin may call them.
fn cors() -> tower_http::cors::CorsLayer {
    use tower_http::cors::{Any, CorsLayer};
    CorsLayer::new().allow_origin(Any).allow_methods(Any).allow_headers(Any).expose_headers([
        header::LOCATION,
        header::ETAG,
        header::LAST_MODIFIED,
        header::CONTENT_LOCATION,
        header::WWW_AUTHENTICATE,
        header::RETRY_AFTER,
        header::EXPIRES,
        HeaderName::from_static("x-progress"),
    ])
}

/// A bug must not drop the connection: the client gets a 500 OperationOutcome, the log the panic.
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied());
    tracing::error!(panic = message.unwrap_or("(no message)"), "a request handler panicked");
    error_response(FhirError::internal(), Format::Json, false)
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.service.store().ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(error) => {
            tracing::warn!(%error, "database not reachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database not reachable").into_response()
        }
    }
}

/// Every FHIR request enters here.
async fn fhir(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut request_id = parts.extensions.get::<access_log::RequestId>().map(|id| id.0.clone());
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).into_owned().collect();
    let pretty = query.iter().any(|(name, value)| name == "_pretty" && value == "true");
    let path = fhir_path(&parts.uri).to_string();
    // A read of a Binary's content is answered in the Binary's own media type.
    let content_accept =
        Method::parse(parts.method.as_str()).and_then(|m| binary::wants_content(m, &path, &query, &parts.headers));
    // So is an export's file (NDJSON, whatever `Accept` asks for); its errors are JSON.
    let is_file = matches!(crate::rest::Route::parse(&path), Ok(crate::rest::Route::JobFile(..)));
    let negotiated = match &content_accept {
        Some(_) => Ok(Format::Json),
        None if is_file => Ok(Format::Json),
        None => negotiate(&query, &parts.headers),
    };
    let format = match negotiated {
        Ok(format) => format,
        Err(error) => {
            state.service.audit_refusal(parts.method.as_str(), &path, request_id, &error).await;
            return error_response(error, Format::Json, pretty);
        }
    };
    let head = parts.method == axum::http::Method::HEAD;
    let mut client_id = None;
    // Whether the service took the request (and audits it); refusals before are audited here.
    let mut served = false;
    let outcome = async {
        let method = Method::parse(parts.method.as_str()).ok_or_else(|| {
            let allowed = crate::rest::Route::parse(&path).map(|r| r.allowed_methods()).unwrap_or("GET, HEAD");
            FhirError::method_not_allowed(
                format!("method {} is not supported; allowed: {allowed}", parts.method),
                allowed,
            )
        })?;
        let bytes = axum::body::to_bytes(body, state.max_body_bytes).await.map_err(|_| {
            FhirError::new(
                ErrorKind::PayloadTooLarge,
                IssueCode::TooLong,
                format!("the request body is larger than {} bytes", state.max_body_bytes),
            )
        })?;
        let mut request = decode_request(method, path, query, &parts.headers, &bytes, &state.service.config().uploads)?;
        request.access = authenticate(&state, &request, &parts.headers).await?;
        if let Access::Token(grant) = &request.access {
            client_id = Some(access_log::ClientId(grant.client_id.clone()));
        }
        request.content = content_accept.is_some();
        served = true;
        state.service.handle_audited(request, request_id.take()).await
    }
    .await
    .map_err(|error| match error.kind {
        // RFC 6750 §3.1: a token without the scope the request needs.
        ErrorKind::Forbidden if state.auth.is_some() => {
            error.with_challenge("Bearer realm=\"hearth\", error=\"insufficient_scope\"".to_string())
        }
        _ => error,
    });
    match &outcome {
        Err(error) if !served => {
            state.service.audit_refusal(parts.method.as_str(), fhir_path(&parts.uri), request_id, error).await
        }
        _ => {}
    }
    let content = match (outcome, &content_accept) {
        (Ok(response), Some(accept)) => match binary::content_response(response.clone(), accept, &state.service) {
            Ok(Some(content)) => Ok(content),
            Ok(None) => Err(Ok(response)),
            Err(error) => Err(Err(error)),
        },
        (outcome, _) => Err(outcome),
    };
    let mut response = match content {
        Ok(content) => content,
        Err(Ok(FhirResponse { body: Body::File { content_type, path }, .. })) => {
            file_response(content_type, &path).await
        }
        Err(Ok(response)) => fhir_response(response, format, pretty),
        Err(Err(error)) => error_response(error, format, pretty),
    };
    if head {
        *response.body_mut() = HttpBody::empty();
    }
    if let Some(client_id) = client_id {
        response.extensions_mut().insert(client_id);
    }
    response
}

/// A request's path relative to the FHIR base (`Patient/1`).
fn fhir_path(uri: &axum::http::Uri) -> &str {
    uri.path().trim_start_matches("/fhir").trim_start_matches('/')
}

/// The caller's access: open without an authorization server; otherwise from the bearer token
/// (the CapabilityStatement is public).
async fn authenticate(state: &AppState, request: &FhirRequest, headers: &HeaderMap) -> Result<Access, FhirError> {
    let Some(auth) = &state.auth else { return Ok(Access::Open) };
    if request.path == "metadata" && matches!(request.method, Method::Get | Method::Head) {
        return Ok(Access::Open);
    }
    // Published availability (SMART Scheduling Links) is open when the operator says so; the
    // operation reads only what the clinic publishes (Slots, Schedules, Locations).
    let publishes = state.service.config().scheduling.publish_slots;
    if publishes
        && request.path == "$bulk-publish"
        && matches!(request.method, Method::Get | Method::Head)
        && header_text(headers, "authorization").is_none()
    {
        return Ok(Access::Open);
    }
    auth.authenticate(header_text(headers, "authorization")).await.map_err(|error| {
        let message = match &error {
            BearerError::Missing => "this server needs a bearer token (SMART on FHIR)",
            BearerError::Invalid(why) => why,
        };
        FhirError::new(ErrorKind::Unauthorized, IssueCode::Login, message).with_challenge(auth::challenge(&error))
    })
}

/// Builds the framework-free request from HTTP parts.
fn decode_request(
    method: Method,
    path: String,
    mut query: Vec<(String, String)>,
    headers: &HeaderMap,
    bytes: &[u8],
    uploads: &crate::model::upload::UploadRules,
) -> Result<FhirRequest, FhirError> {
    let mut body = None;
    let mut patch_format = None;
    if let Some(uploaded) = binary::uploaded(method, &path, headers, bytes, uploads)? {
        body = Some(uploaded);
    } else if !bytes.is_empty() {
        match request_body_kind(headers)? {
            RequestBodyKind::Form => query.extend(url::form_urlencoded::parse(bytes).into_owned()),
            RequestBodyKind::JsonPatch => {
                patch_format = Some(PatchFormat::JsonPatch);
                body = Some(parse_body(bytes, Format::Json)?);
            }
            RequestBodyKind::MergePatch => {
                patch_format = Some(PatchFormat::MergePatch);
                body = Some(parse_body(bytes, Format::Json)?);
            }
            RequestBodyKind::Fhir(format) => {
                patch_format = Some(PatchFormat::FhirPathPatch);
                body = Some(parse_body(bytes, format)?);
            }
        }
    }
    query.retain(|(name, _)| name != "_format" && name != "_pretty");
    Ok(FhirRequest {
        method,
        path,
        query,
        conditions: conditions(headers)?,
        body,
        patch_format: if method == Method::Patch { patch_format } else { None },
        access: Access::Open,
        content: false,
    })
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

fn conditions(headers: &HeaderMap) -> Result<Conditions, FhirError> {
    let mut conditions = Conditions {
        if_match: header_text(headers, "if-match").map(str::to_string),
        if_none_match: header_text(headers, "if-none-match").map(str::to_string),
        if_none_exist: header_text(headers, "if-none-exist").map(str::to_string),
        ..Conditions::default()
    };
    if let Some(since) = header_text(headers, "if-modified-since") {
        let at = httpdate::parse_http_date(since)
            .map_err(|_| FhirError::bad_request(format!("If-Modified-Since '{since}' is not an HTTP date")))?;
        conditions.if_modified_since = Some(OffsetDateTime::from(at));
    }
    for preference in headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split([',', ';']))
    {
        match preference.trim().replace(' ', "").as_str() {
            "return=minimal" => conditions.prefer_return = PreferReturn::Minimal,
            "return=representation" => conditions.prefer_return = PreferReturn::Representation,
            "return=OperationOutcome" => conditions.prefer_return = PreferReturn::OperationOutcome,
            "handling=strict" => conditions.strict = true,
            "handling=lenient" => conditions.lenient = true,
            _ => {}
        }
    }
    Ok(conditions)
}

fn fhir_response(response: FhirResponse, format: Format, pretty: bool) -> Response {
    let status = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = match &response.body {
        Body::None => None,
        Body::Document { content_type, .. } => Some(*content_type),
        _ => Some(format.content_type()),
    };
    let bytes = match render(response.body, format, pretty) {
        Ok(bytes) => bytes,
        Err(error) => return error_response(error, Format::Json, pretty),
    };
    let mut http = Response::new(HttpBody::from(bytes));
    *http.status_mut() = status;
    let headers = http.headers_mut();
    if let Some(content_type) = content_type {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    if let Some(version) = response.version {
        if let Ok(value) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
            headers.insert(header::ETAG, value);
        }
    }
    if let Some(at) = response.last_modified {
        if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(at.into())) {
            headers.insert(header::LAST_MODIFIED, value);
        }
    }
    if let Some(location) = response.location {
        if let Ok(value) = HeaderValue::from_str(&location) {
            headers.insert(header::LOCATION, value);
        }
    }
    for (name, value) in response.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    http
}

/// A file streamed from disk in `content_type` (an export's NDJSON): one buffer in memory
/// whatever its size.
async fn file_response(content_type: &'static str, path: &std::path::Path) -> Response {
    let opened = async {
        let file = tokio::fs::File::open(path).await?;
        let length = file.metadata().await?.len();
        Ok::<_, std::io::Error>((file, length))
    };
    let (file, length) = match opened.await {
        Ok(opened) => opened,
        // Expired meanwhile, or written by a node that does not share this one's directory.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let error = FhirError::not_found("this file is no longer here (it expired, or another node wrote it)");
            return error_response(error, Format::Json, false);
        }
        Err(error) => {
            tracing::error!(%error, path = %path.display(), "cannot read a file to serve");
            return error_response(FhirError::internal(), Format::Json, false);
        }
    };
    let mut http = Response::new(HttpBody::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 16)));
    let headers = http.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    http
}

/// An error as an OperationOutcome response; 5xx details never reach the client.
pub fn error_response(error: FhirError, format: Format, pretty: bool) -> Response {
    let mut response = fhir_response(FhirResponse::new(error.status(), Body::Json(error.outcome())), format, pretty);
    if let Some(allow) = error.allow {
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    if let Some(value) = error.challenge.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    if let ErrorKind::TooManyRequests(seconds) = error.kind {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
