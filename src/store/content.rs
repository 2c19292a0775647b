//! Binary content stored apart from the Binary's JSON (ADR 11). A Binary's `data` is stored
//! once, decoded, in chunks keyed by its SHA-256 (`binary_content`); the resource rows (current
//! and history) keep the JSON with a `hearth:content` member in its place, naming the content.
//! Reads put `data` back ([`inflated`]), so every interaction answers the Binary as it was
//! written; a download of the raw bytes streams the chunks instead, one at a time.
//!
//! The member's name cannot come from a client: the R4 JSON schema admits no other keys in a
//! Binary (every write is validated against it), and JSON escapes a quote inside a string, so
//! the bytes `"hearth:content":` occur in a stored Binary only where the store put them.

use std::ops::Range;

use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::{ResourceVersion, StoreError, StoreResult};
use crate::model::{ErrorKind, FhirError, Issue, IssueCode};

/// The member of a stored Binary that stands for its `data`.
const CONTENT_KEY: &str = "hearth:content";

/// The size of the stored chunks, and so the most a download holds in memory at once.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// A Binary's decoded content, to be stored apart.
pub struct Content {
    pub sha256: String,
    pub bytes: Bytes,
}

impl Content {
    /// The chunks to store, numbered from 0.
    pub fn chunks(&self) -> impl Iterator<Item = (i64, Bytes)> + '_ {
        (0..self.bytes.len()).step_by(CHUNK_BYTES).enumerate().map(|(seq, start)| {
            let end = (start + CHUNK_BYTES).min(self.bytes.len());
            (seq as i64, self.bytes.slice(start..end))
        })
    }

    /// How many chunks it is stored in.
    pub fn chunk_count(&self) -> i64 {
        self.bytes.len().div_ceil(CHUNK_BYTES) as i64
    }
}

/// A Binary version about to be stored: its JSON as stored (`data` replaced by the member that
/// names the content) and the content.
pub struct Split {
    pub stored: Bytes,
    pub content: Content,
}

/// Splits the content off a Binary version with `data`; `None` for anything else. `data` that
/// is not base64 is refused (400): it could not be stored as bytes.
pub fn split(version: &ResourceVersion) -> StoreResult<Option<Split>> {
    if version.resource_type != "Binary" || version.deleted {
        return Ok(None);
    }
    let Ok(Value::Object(binary)) = serde_json::from_slice::<Value>(&version.body) else { return Ok(None) };
    let Some(Value::String(data)) = binary.get("data") else { return Ok(None) };
    let compact: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD.decode(compact).map_err(|_| {
        let issue = Issue::error(IssueCode::Invalid, "Binary.data is not valid base64".to_string()).at("Binary.data");
        StoreError::Refused(Box::new(FhirError::with_issues(ErrorKind::BadRequest, vec![issue])))
    })?;
    let sha256 = hex(&Sha256::digest(&bytes));
    let named = json!({"sha256": sha256, "size": bytes.len()});
    // Rebuilt in order, so that `data` comes back where it was.
    let stored: Map<String, Value> = binary
        .into_iter()
        .map(|(key, value)| match key.as_str() {
            "data" => (CONTENT_KEY.to_string(), named.clone()),
            _ => (key, value),
        })
        .collect();
    let stored =
        serde_json::to_vec(&Value::Object(stored)).map_err(|_| StoreError::Refused(Box::new(FhirError::internal())))?;
    Ok(Some(Split { stored: Bytes::from(stored), content: Content { sha256, bytes: Bytes::from(bytes) } }))
}

/// Where a stored Binary's content is: what names it, and where that member is in the JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredContent {
    pub sha256: String,
    pub size: u64,
    member: Range<usize>,
}

impl StoredContent {
    /// How many chunks the content is stored in.
    pub fn chunk_count(&self) -> i64 {
        (self.size as usize).div_ceil(CHUNK_BYTES) as i64
    }
}

/// The content a stored Binary names, if its `data` is stored apart.
pub fn stored_content(version: &ResourceVersion) -> Option<StoredContent> {
    if version.resource_type != "Binary" || version.deleted {
        return None;
    }
    stored_content_of(&version.body)
}

/// [`stored_content`] of a Binary's stored JSON.
pub fn stored_content_of(body: &[u8]) -> Option<StoredContent> {
    let key = format!("\"{CONTENT_KEY}\":");
    let start = find(body, key.as_bytes())?;
    let value_start = start + key.len();
    let value_end = value_start + find(&body[value_start..], b"}")? + 1;
    let named: Value = serde_json::from_slice(&body[value_start..value_end]).ok()?;
    Some(StoredContent {
        sha256: named.get("sha256")?.as_str()?.to_string(),
        size: named.get("size")?.as_u64()?,
        member: start..value_end,
    })
}

/// The Binary's JSON with its `data` back in place of the member that named `content`.
pub fn inflated(body: &[u8], stored: &StoredContent, content: &[u8]) -> Bytes {
    let encoded = base64::engine::general_purpose::STANDARD.encode(content);
    let mut json = Vec::with_capacity(body.len() + encoded.len() + 10);
    json.extend_from_slice(&body[..stored.member.start]);
    json.extend_from_slice(b"\"data\":\"");
    json.extend_from_slice(encoded.as_bytes());
    json.push(b'"');
    json.extend_from_slice(&body[stored.member.end..]);
    Bytes::from(json)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(body: Value) -> ResourceVersion {
        ResourceVersion {
            resource_type: "Binary".into(),
            id: "b".into(),
            version: 1,
            last_updated: time::OffsetDateTime::UNIX_EPOCH,
            deleted: false,
            method: crate::store::WriteMethod::Create,
            body: Bytes::from(serde_json::to_vec(&body).unwrap()),
        }
    }

    #[test]
    fn content_is_stored_apart_and_put_back_where_it_was() {
        let bytes: Vec<u8> = (0..(CHUNK_BYTES * 2 + 5)).map(|i| (i % 251) as u8).collect();
        let data = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let written = binary(json!({"resourceType": "Binary", "id": "b", "contentType": "application/pdf",
            "data": data, "securityContext": {"reference": "Patient/1"}}));
        let split = split(&written).unwrap().unwrap();
        assert!(split.stored.len() < 300, "the stored JSON holds no data");
        let chunks: Vec<(i64, Bytes)> = split.content.chunks().collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(split.content.chunk_count(), 3);
        assert_eq!(chunks[2].1.len(), 5);
        let stored = binary(serde_json::from_slice(&split.stored).unwrap());
        let named = stored_content(&stored).unwrap();
        assert_eq!((named.size, named.chunk_count()), (bytes.len() as u64, 3));
        assert_eq!(inflated(&stored.body, &named, &bytes), written.body);
    }

    #[test]
    fn only_binaries_with_base64_data_are_split() {
        assert!(split(&binary(json!({"resourceType": "Binary", "contentType": "text/plain"}))).unwrap().is_none());
        let mut patient = binary(json!({"resourceType": "Patient", "data": "AAAA"}));
        patient.resource_type = "Patient".into();
        assert!(split(&patient).unwrap().is_none());
        let forged = binary(json!({"resourceType": "Binary", "data": "hearth:content"}));
        assert!(matches!(split(&forged), Err(StoreError::Refused(_))));
        let wrapped = binary(json!({"resourceType": "Binary", "data": "aGVs\nbG8="}));
        assert_eq!(&split(&wrapped).unwrap().unwrap().content.bytes[..], b"hello");
    }
}
