//! Binary content as itself (FHIR R4 binary.html, "Serving Binary Resources using the RESTful
//! API"): a read of a Binary that does not ask for a FHIR format gets the raw bytes in the
//! Binary's own media type, and a raw body POSTed or PUT to Binary is stored as a Binary of
//! that type, its security context taken from `X-Security-Context`.
//!
//! Uploads are checked at the door ([`UploadRules::check`]): size, allowed media type, and bytes
//! that are what the `Content-Type` says.

use axum::body::Body as HttpBody;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use base64::Engine;
use serde_json::{json, Value};

use crate::model::upload::UploadRules;
use crate::model::{ErrorKind, FhirError, IssueCode};
use crate::rest::{Body, FhirResponse, FhirService, Method};

/// The FHIR media types (and `_format` shorthands): a request naming one wants the resource.
fn is_fhir_media_type(media: &str) -> bool {
    matches!(
        media,
        "application/fhir+json"
            | "application/json"
            | "application/json+fhir"
            | "application/fhir+xml"
            | "application/xml"
            | "text/xml"
            | "application/xml+fhir"
    )
}

/// The essence of a media type: lower case, without parameters.
fn essence(media_type: &str) -> String {
    media_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Whether `path` names a Binary or one of its versions.
fn is_binary_instance(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    matches!(parts.as_slice(), ["Binary", id] if !id.is_empty() && !id.starts_with('$'))
        || matches!(parts.as_slice(), ["Binary", _, "_history", _])
}

/// The `Accept` of a read of a Binary that wants its content rather than the resource: no
/// `_format`, and an `Accept` whose preferred media range is not a FHIR format (`*/*` is
/// content too; without an `Accept` the resource is answered, as before).
pub fn wants_content(method: Method, path: &str, query: &[(String, String)], headers: &HeaderMap) -> Option<String> {
    if !matches!(method, Method::Get | Method::Head) || !is_binary_instance(path) {
        return None;
    }
    if query.iter().any(|(name, _)| name == "_format") {
        return None;
    }
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    let best = ranges(accept).into_iter().next()?;
    (!is_fhir_media_type(&best.1)).then(|| accept.to_string())
}

/// The media ranges of an `Accept`, most preferred first (without those of quality 0).
fn ranges(accept: &str) -> Vec<(f32, String)> {
    let mut ranges: Vec<(f32, String)> = accept
        .split(',')
        .map(|range| {
            let mut parts = range.split(';');
            let media = essence(parts.next().unwrap_or(""));
            let quality =
                parts.filter_map(|p| p.trim().strip_prefix("q=")).find_map(|q| q.parse::<f32>().ok()).unwrap_or(1.0);
            (quality, media)
        })
        .filter(|(quality, media)| *quality > 0.0 && !media.is_empty())
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranges
}

/// Whether an `Accept` admits `content_type`.
fn accepts(accept: &str, content_type: &str) -> bool {
    let wanted = essence(content_type);
    let family = wanted.split('/').next().unwrap_or("");
    ranges(accept).iter().any(|(_, media)| {
        media == "*/*" || *media == wanted || media.strip_suffix("/*").is_some_and(|prefix| prefix == family)
    })
}

/// The raw content of a Binary read (`response`, the resource in JSON), answered in the
/// Binary's media type with its validators; 406 when `accept` does not admit that type. Other
/// answers (an error, a 304) pass through as FHIR.
pub fn content_response(
    response: FhirResponse,
    accept: &str,
    service: &FhirService,
) -> Result<Option<Response>, FhirError> {
    let Body::Raw(stored) = &response.body else { return Ok(None) };
    if response.status != 200 {
        return Ok(None);
    }
    let binary: Value = serde_json::from_slice(stored).map_err(|_| FhirError::internal())?;
    let content_type = binary.get("contentType").and_then(Value::as_str).unwrap_or("application/octet-stream");
    if !accepts(accept, content_type) {
        return Err(FhirError::new(
            ErrorKind::NotAcceptable,
            IssueCode::NotSupported,
            format!("this Binary is {content_type}, which '{accept}' does not accept; ask for it or for application/fhir+json"),
        ));
    }
    let id = binary.get("id").and_then(Value::as_str).unwrap_or("binary");
    let (body, length) = match service.content_stream(stored) {
        Some((size, stream)) => (HttpBody::from_stream(stream), size),
        None => {
            let data = binary.get("data").and_then(Value::as_str).unwrap_or("");
            let bytes = base64::engine::general_purpose::STANDARD.decode(data).map_err(|_| FhirError::internal())?;
            let length = bytes.len() as u64;
            (HttpBody::from(bytes), length)
        }
    };
    let mut http = Response::new(body);
    *http.status_mut() = StatusCode::OK;
    let headers = http.headers_mut();
    let value = |text: String| HeaderValue::from_str(&text).map_err(|_| FhirError::internal());
    headers.insert(header::CONTENT_TYPE, value(content_type.to_string())?);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    // Shown in the browser only when it cannot run script there; saved otherwise.
    let disposition = if is_inert(content_type) { "inline" } else { "attachment" };
    headers.insert(header::CONTENT_DISPOSITION, value(format!("{disposition}; filename=\"Binary-{id}\""))?);
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
    if let Some(version) = response.version {
        headers.insert(header::ETAG, value(format!("W/\"{version}\""))?);
    }
    if let Some(at) = response.last_modified {
        headers.insert(header::LAST_MODIFIED, value(httpdate::fmt_http_date(at.into()))?);
    }
    Ok(Some(http))
}

/// Media types a browser displays without running anything.
fn is_inert(content_type: &str) -> bool {
    let essence = essence(content_type);
    essence == "application/pdf"
        || essence == "text/plain"
        || essence.starts_with("image/") && essence != "image/svg+xml"
}

/// The Binary a raw upload stands for: a POST to `Binary` or a PUT to `Binary/[id]` whose
/// `Content-Type` is not a FHIR format (`None` for every other request). Checked against
/// `rules`: 413 when larger, 415 when of a type not allowed or not what it claims to be.
pub fn uploaded(
    method: Method,
    path: &str,
    headers: &HeaderMap,
    bytes: &[u8],
    rules: &UploadRules,
) -> Result<Option<Value>, FhirError> {
    let to_binary = (method == Method::Post && path == "Binary") || (method == Method::Put && is_binary_instance(path));
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let declared = essence(content_type);
    let raw = !is_fhir_media_type(&declared)
        && declared != "application/x-www-form-urlencoded"
        && declared != "application/json-patch+json";
    if !to_binary || !raw {
        return Ok(None);
    }
    rules.check(&declared, bytes)?;
    let mut binary = json!({
        "resourceType": "Binary",
        "contentType": declared,
        "data": base64::engine::general_purpose::STANDARD.encode(bytes),
    });
    if let Some(context) = headers.get("x-security-context").and_then(|v| v.to_str().ok()) {
        binary["securityContext"] = json!({"reference": context.trim()});
    }
    if let ["Binary", id] = path.split('/').collect::<Vec<_>>().as_slice() {
        binary["id"] = json!(id);
    }
    Ok(Some(binary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn reads_want_content_unless_they_ask_for_fhir() {
        let wants = |accept: &str| wants_content(Method::Get, "Binary/b1", &[], &headers(&[("accept", accept)]));
        assert!(wants("application/pdf").is_some());
        assert!(wants("*/*").is_some());
        assert!(wants("text/html,application/xhtml+xml,*/*;q=0.8").is_some());
        assert!(wants("application/fhir+json").is_none());
        assert!(wants("application/fhir+json, */*;q=0.1").is_none());
        assert!(wants_content(Method::Get, "Binary/b1", &[], &HeaderMap::new()).is_none(), "no Accept: the resource");
        assert!(wants_content(Method::Get, "Binary", &[], &headers(&[("accept", "*/*")])).is_none(), "a search");
        assert!(wants_content(Method::Get, "Binary/b1/_history/2", &[], &headers(&[("accept", "*/*")])).is_some());
        let format = [("_format".to_string(), "json".to_string())];
        assert!(wants_content(Method::Get, "Binary/b1", &format, &headers(&[("accept", "*/*")])).is_none());
        assert!(accepts("image/*", "image/png") && !accepts("image/*", "application/pdf"));
        assert!(accepts("application/pdf;q=0.9", "application/pdf; charset=binary"));
    }

    #[test]
    fn uploads_are_checked_at_the_door() {
        let pdf = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n%%EOF\n";
        let rules = UploadRules::default();
        let upload = |content_type: &str, bytes: &[u8]| {
            let headers = headers(&[("content-type", content_type), ("x-security-context", "Patient/p1")]);
            uploaded(Method::Post, "Binary", &headers, bytes, &rules)
        };
        let binary = upload("application/pdf", pdf).unwrap().unwrap();
        assert_eq!(binary["contentType"], "application/pdf");
        assert_eq!(binary["securityContext"]["reference"], "Patient/p1");
        let decoded = base64::engine::general_purpose::STANDARD.decode(binary["data"].as_str().unwrap()).unwrap();
        assert_eq!(decoded, pdf);
        assert_eq!(upload("application/pdf", b"<html><script>").unwrap_err().status(), 415, "not a PDF");
        assert_eq!(upload("text/html", b"<html>").unwrap_err().status(), 415, "not allowed");
        assert_eq!(upload("text/plain", "héllo\n".as_bytes()).unwrap().unwrap()["contentType"], "text/plain");
        assert_eq!(upload("text/plain", pdf).unwrap_err().status(), 415, "a PDF is not text");
        assert_eq!(upload("text/plain", &[0, 1, 2]).unwrap_err().status(), 415);
        let small = UploadRules { max_bytes: 10, ..UploadRules::default() };
        let headers = headers(&[("content-type", "application/pdf")]);
        assert_eq!(uploaded(Method::Post, "Binary", &headers, pdf, &small).unwrap_err().status(), 413);
        assert!(upload("application/fhir+json", b"{}").unwrap().is_none(), "a FHIR body is the resource");
        let elsewhere = uploaded(Method::Post, "DocumentReference", &headers, pdf, &rules).unwrap();
        assert!(elsewhere.is_none(), "only Binary takes raw bodies");
    }
}
