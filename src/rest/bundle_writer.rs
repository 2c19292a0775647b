//! Assembles Bundle JSON from stored resource bytes without parsing them again.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;

/// Writes `{"resourceType":"Bundle",…,"entry":[…]}` incrementally.
pub struct BundleWriter {
    out: BytesMut,
    entries: usize,
}

impl BundleWriter {
    /// Starts a bundle of `bundle_type` with optional `total` and `link`s (relation, url).
    pub fn new(bundle_type: &str, total: Option<u64>, links: &[(&str, String)]) -> Self {
        let mut head = serde_json::Map::new();
        head.insert("resourceType".into(), "Bundle".into());
        head.insert("id".into(), crate::model::resource::new_id().into());
        head.insert(
            "meta".into(),
            serde_json::json!({"lastUpdated": crate::model::resource::format_instant(crate::model::resource::now())}),
        );
        head.insert("type".into(), bundle_type.into());
        if let Some(total) = total {
            head.insert("total".into(), total.into());
        }
        if !links.is_empty() {
            let links: Vec<Value> =
                links.iter().map(|(relation, url)| serde_json::json!({"relation": relation, "url": url})).collect();
            head.insert("link".into(), links.into());
        }
        let mut out = BytesMut::with_capacity(4096);
        let head = serde_json::to_vec(&Value::Object(head)).unwrap_or_default();
        // Drop the closing brace: entries follow.
        out.put_slice(&head[..head.len().saturating_sub(1)]);
        BundleWriter { out, entries: 0 }
    }

    /// Appends an entry: the members of `entry` (fullUrl, search, request, response…) plus the
    /// stored `resource` bytes when present.
    pub fn entry(&mut self, entry: &Value, resource: Option<&[u8]>) {
        self.out.put_slice(if self.entries == 0 { b",\"entry\":[" } else { b"," });
        self.entries += 1;
        let members = serde_json::to_vec(entry).unwrap_or_else(|_| b"{}".to_vec());
        let open = &members[..members.len().saturating_sub(1)];
        self.out.put_slice(open);
        if let Some(resource) = resource.filter(|r| !r.is_empty()) {
            if open.len() > 1 {
                self.out.put_u8(b',');
            }
            self.out.put_slice(b"\"resource\":");
            self.out.put_slice(resource);
        }
        self.out.put_u8(b'}');
    }

    /// Closes the bundle.
    pub fn finish(mut self) -> Bytes {
        if self.entries > 0 {
            self.out.put_u8(b']');
        }
        self.out.put_u8(b'}');
        self.out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_valid_bundles() {
        let empty = BundleWriter::new("searchset", Some(0), &[("self", "http://x/fhir/Patient".into())]).finish();
        let parsed: Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(parsed["total"], json!(0));
        assert!(parsed.get("entry").is_none());

        let mut writer = BundleWriter::new("history", None, &[]);
        writer.entry(&json!({"fullUrl": "http://x/fhir/Patient/1"}), Some(br#"{"resourceType":"Patient","id":"1"}"#));
        writer.entry(&json!({"request": {"method": "DELETE", "url": "Patient/2"}}), None);
        let parsed: Value = serde_json::from_slice(&writer.finish()).unwrap();
        assert_eq!(parsed["entry"][0]["resource"]["id"], json!("1"));
        assert_eq!(parsed["entry"][1]["request"]["method"], json!("DELETE"));
        assert!(parsed["entry"][1].get("resource").is_none());
    }
}
