//! What the operator sees of each request: its `X-Request-Id` (the client's, when it is a
//! short plain token, else a new one), returned on every response; a `tracing` span carrying
//! the id, the method and the route as a template (`/fhir/Patient/{id}`: no ids, no query)
//! for whatever the handlers log; and one `request` event with those, the client id, the
//! status and the latency. The route is worked out once, and the metrics read it from the
//! request ([`RequestRoute`]).
//! With `--log-format json` that event is one JSON object per line. Bodies, tokens and query
//! strings are never logged.

use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::rest::{Method, Route};

/// The header that carries a request's id, both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// The longest request id taken from a client.
const MAX_ID: usize = 64;

/// A request's id, for the handlers (and the AuditEvents they will record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The client a response was for (a response extension the FHIR handler sets once the token
/// is known), for the request's log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId(pub String);

/// The client's request id when it is 1 to 64 letters, digits, `-`, `_`, `.` or `:`; a new
/// one otherwise (so that a log line can never be forged through it).
pub fn request_id(given: Option<&HeaderValue>) -> String {
    let plain = |id: &&str| {
        (1..=MAX_ID).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    };
    match given.and_then(|value| value.to_str().ok()).filter(plain) {
        Some(id) => id.to_string(),
        None => crate::model::resource::new_id(),
    }
}

/// What a request is, worked out once per request: its route for the log line, and for a
/// FHIR request the interaction and resource type the metrics count it under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRoute {
    /// The route as a template: resource types and operation names stay, ids and versions
    /// become `{id}` and `{vid}`, the query is left out.
    pub template: String,
    /// A FHIR request's interaction and resource type (`""` for none).
    pub fhir: Option<(&'static str, String)>,
}

impl RequestRoute {
    pub fn of(method: &axum::http::Method, path: &str) -> RequestRoute {
        let Some(fhir) = path.strip_prefix("/fhir") else {
            return RequestRoute { template: other_template(path), fhir: None };
        };
        let Ok(route) = Route::parse(fhir) else {
            return RequestRoute { template: "/fhir/{unknown}".into(), fhir: Some(("unknown", String::new())) };
        };
        let interaction = Method::parse(method.as_str()).map_or("unknown", |method| route.interaction(method));
        let resource_type = route.resource_type().unwrap_or_default().to_string();
        let template = match route.template() {
            tail if tail.is_empty() => "/fhir".to_string(),
            tail => format!("/fhir/{tail}"),
        };
        RequestRoute { template, fhir: Some((interaction, resource_type)) }
    }
}

/// The template of a path outside the FHIR base: the server's own fixed routes.
fn other_template(path: &str) -> String {
    match path {
        "/healthz" | "/readyz" | "/metrics" => path.to_string(),
        _ if path.starts_with("/static/") => "/static/{file}".to_string(),
        _ if path.starts_with("/auth/") || path.starts_with("/subscriptions/") => {
            let plain = path.len() <= 48 && path.bytes().all(|b| b.is_ascii_lowercase() || b"/-_.".contains(&b));
            if plain {
                path.to_string()
            } else {
                "/{unknown}".to_string()
            }
        }
        _ => "/{unknown}".to_string(),
    }
}

/// Middleware around every request (see the module documentation).
pub async fn observe(mut request: Request, next: Next) -> Response {
    let id = request_id(request.headers().get(REQUEST_ID));
    request.extensions_mut().insert(RequestId(id.clone()));
    let method = request.method().clone();
    let described = RequestRoute::of(&method, request.uri().path());
    let route = described.template.clone();
    request.extensions_mut().insert(described);
    // Whatever the handlers log carries the request's id and route.
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = %route);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let client_id = response.extensions().get::<ClientId>().map(|c| c.0.as_str()).unwrap_or_default();
    tracing::info!(
        request_id = %id,
        method = %method,
        route = %route,
        client_id,
        status = response.status().as_u16(),
        latency_ms,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_taken_only_when_plain() {
        let given = |text: &str| request_id(Some(&HeaderValue::from_str(text).unwrap()));
        assert_eq!(given("abc-123_x.y:z"), "abc-123_x.y:z");
        for forged in ["a b", "x\"}{\"level\":\"ERROR", &"a".repeat(65), ""] {
            let id = given(forged);
            assert_ne!(id, forged);
            assert_eq!(id.len(), 36, "a new id instead");
        }
        assert_eq!(request_id(None).len(), 36);
    }

    #[test]
    fn routes_keep_types_and_drop_ids() {
        let route_template = |path: &str| RequestRoute::of(&axum::http::Method::GET, path).template;
        assert_eq!(route_template("/fhir/Patient/123"), "/fhir/Patient/{id}");
        assert_eq!(route_template("/fhir/Patient/123/_history/2"), "/fhir/Patient/{id}/_history/{vid}");
        assert_eq!(route_template("/fhir/Patient/123/$everything"), "/fhir/Patient/{id}/$everything");
        assert_eq!(route_template("/fhir/Observation"), "/fhir/Observation");
        assert_eq!(route_template("/fhir"), "/fhir");
        assert_eq!(route_template("/fhir/NotAType/1"), "/fhir/{unknown}");
        assert_eq!(route_template("/auth/token"), "/auth/token");
        assert_eq!(route_template("/static/app.js"), "/static/{file}");
        assert_eq!(route_template("/etc/passwd"), "/{unknown}");
    }
}
