//! Content negotiation (`_format`, `Accept`, `Content-Type`) and rendering of FHIR bodies in
//! JSON or XML, compact or `_pretty`.

use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::Value;

use crate::model::{ErrorKind, FhirError, IssueCode};
use crate::rest::Body;

/// A FHIR wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    /// The response `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/fhir+json; charset=utf-8",
            Format::Xml => "application/fhir+xml; charset=utf-8",
        }
    }

    /// The format of a media type (or `_format` shorthand), if FHIR JSON or XML.
    fn of_media_type(media_type: &str) -> Option<Format> {
        let essence = media_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "json" | "application/fhir+json" | "application/json" | "application/json+fhir" => Some(Format::Json),
            "xml" | "application/fhir+xml" | "application/xml" | "text/xml" | "application/xml+fhir" => {
                Some(Format::Xml)
            }
            _ => None,
        }
    }
}

/// What the body of a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestBodyKind {
    Fhir(Format),
    JsonPatch,
    MergePatch,
    Form,
}

/// Chooses the response format: `_format` wins over `Accept`; JSON when neither says.
pub fn negotiate(query: &[(String, String)], headers: &HeaderMap) -> Result<Format, FhirError> {
    if let Some((_, requested)) = query.iter().find(|(name, _)| name == "_format") {
        return Format::of_media_type(requested)
            .ok_or_else(|| not_acceptable(format!("_format '{requested}' is not supported; use json or xml")));
    }
    let Some(accept) = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Format::Json);
    };
    let mut ranges: Vec<(f32, &str)> = accept
        .split(',')
        .map(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            let quality =
                parts.filter_map(|p| p.trim().strip_prefix("q=")).find_map(|q| q.parse::<f32>().ok()).unwrap_or(1.0);
            (quality, media)
        })
        .filter(|(quality, _)| *quality > 0.0)
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (_, media) in &ranges {
        if let Some(format) = Format::of_media_type(media) {
            return Ok(format);
        }
        if matches!(*media, "*/*" | "application/*" | "") {
            return Ok(Format::Json);
        }
    }
    Err(not_acceptable(format!(
        "cannot answer in any of '{accept}'; this server speaks application/fhir+json and application/fhir+xml"
    )))
}

fn not_acceptable(message: String) -> FhirError {
    FhirError::new(ErrorKind::NotAcceptable, IssueCode::NotSupported, message)
}

/// Classifies a request body by its `Content-Type` (JSON when absent); 415 for others.
pub fn request_body_kind(headers: &HeaderMap) -> Result<RequestBodyKind, FhirError> {
    let Some(content_type) = headers.get(axum::http::header::CONTENT_TYPE) else {
        return Ok(RequestBodyKind::Fhir(Format::Json));
    };
    let content_type = content_type.to_str().unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/json-patch+json" => Ok(RequestBodyKind::JsonPatch),
        "application/merge-patch+json" => Ok(RequestBodyKind::MergePatch),
        "application/x-www-form-urlencoded" => Ok(RequestBodyKind::Form),
        _ => Format::of_media_type(&essence).map(RequestBodyKind::Fhir).ok_or_else(|| {
            FhirError::new(
                ErrorKind::UnsupportedMediaType,
                IssueCode::NotSupported,
                format!("Content-Type '{content_type}' is not supported; send application/fhir+json or application/fhir+xml"),
            )
        }),
    }
}

/// Parses a request body into JSON, converting XML first.
pub fn parse_body(bytes: &[u8], format: Format) -> Result<Value, FhirError> {
    let json = match format {
        Format::Json => std::borrow::Cow::Borrowed(bytes),
        Format::Xml => std::borrow::Cow::Owned(
            fhir_xml::xml_to_json(bytes)
                .map_err(|e| FhirError::new(ErrorKind::BadRequest, IssueCode::Structure, e.to_string()))?,
        ),
    };
    crate::model::json::parse(&json)
}

/// Renders a body in `format`; stored JSON bytes pass through untouched unless pretty or XML.
pub fn render(body: Body, format: Format, pretty: bool) -> Result<Bytes, FhirError> {
    let compact_json = match body {
        Body::None => return Ok(Bytes::new()),
        Body::Document { bytes, .. } => return Ok(bytes),
        // Streamed by the HTTP layer, never rendered.
        Body::File { .. } => return Err(FhirError::internal()),
        Body::Raw(bytes) if format == Format::Json && !pretty => return Ok(bytes),
        Body::Raw(bytes) => bytes,
        Body::Json(value) if format == Format::Json && pretty => return to_pretty(&value),
        Body::Json(value) => Bytes::from(serde_json::to_vec(&value).map_err(|_| FhirError::internal())?),
    };
    match format {
        Format::Json => {
            let value: Value = serde_json::from_slice(&compact_json).map_err(|_| FhirError::internal())?;
            to_pretty(&value)
        }
        Format::Xml => fhir_xml::json_to_xml(&compact_json, pretty).map(Bytes::from).map_err(|e| {
            tracing::error!(error = %e, "cannot render a stored resource as XML");
            FhirError::new(
                ErrorKind::Internal,
                IssueCode::Exception,
                "the resource cannot be rendered as XML; ask for JSON",
            )
        }),
    }
}

fn to_pretty(value: &Value) -> Result<Bytes, FhirError> {
    serde_json::to_vec_pretty(value).map(Bytes::from).map_err(|_| FhirError::internal())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(axum::http::header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn negotiates() {
        let none: Vec<(String, String)> = vec![];
        assert_eq!(negotiate(&none, &HeaderMap::new()).unwrap(), Format::Json);
        assert_eq!(negotiate(&none, &accept("application/fhir+xml")).unwrap(), Format::Xml);
        assert_eq!(negotiate(&none, &accept("text/html,application/xhtml+xml,*/*;q=0.8")).unwrap(), Format::Json);
        assert_eq!(
            negotiate(&none, &accept("application/fhir+json;q=0.5, application/fhir+xml")).unwrap(),
            Format::Xml
        );
        assert_eq!(negotiate(&none, &accept("text/html")).unwrap_err().status(), 406);
        let xml = vec![("_format".to_string(), "xml".to_string())];
        assert_eq!(negotiate(&xml, &accept("application/fhir+json")).unwrap(), Format::Xml);
        let bad = vec![("_format".to_string(), "yaml".to_string())];
        assert_eq!(negotiate(&bad, &HeaderMap::new()).unwrap_err().status(), 406);
    }
}
