//! A rest-hook Subscription's `channel.header` values are often credentials of the receiver
//! (`Authorization: Bearer …`). They are write-only: every resource the server shows (reads,
//! searches, `_include`, history, write responses) has each value replaced by [`HIDDEN`], and a
//! write that sends a header back with [`HIDDEN`] as its value keeps the value stored for that
//! header name. Whoever may read a Subscription (staff, or a patient whose clinic's
//! Subscription names them) never learns the receiver's secret.

use bytes::Bytes;
use serde_json::Value;

use crate::store::ResourceVersion;

/// What a header value is shown as.
pub const HIDDEN: &str = "******";

/// `version` as it may be shown: a Subscription's header values hidden.
pub fn shown(version: ResourceVersion) -> ResourceVersion {
    let body = shown_body(&version.resource_type, &version.body);
    ResourceVersion { body, ..version }
}

/// A stored body of `resource_type` as it may be shown.
pub fn shown_body(resource_type: &str, body: &Bytes) -> Bytes {
    if resource_type != "Subscription" || body.is_empty() {
        return body.clone();
    }
    let Ok(mut resource) = serde_json::from_slice::<Value>(body) else { return body.clone() };
    let Some(headers) = headers_of(&mut resource) else { return body.clone() };
    for header in headers.iter_mut() {
        if let Some((name, _)) = header.as_str().and_then(|h| h.split_once(':')) {
            *header = Value::String(format!("{name}: {HIDDEN}"));
        }
    }
    serde_json::to_vec(&resource).map(Bytes::from).unwrap_or_else(|_| body.clone())
}

/// Puts back into `resource` (a Subscription about to be stored) the values of the headers it
/// sends as [`HIDDEN`], from `stored` (its current version); an error names a hidden header
/// that has no stored value.
pub fn restore(resource: &mut Value, stored: Option<&Value>) -> Result<(), String> {
    let stored_value = |name: &str| -> Option<String> {
        stored?["channel"]["header"].as_array()?.iter().filter_map(Value::as_str).find_map(|header| {
            let (stored_name, value) = header.split_once(':')?;
            stored_name.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
        })
    };
    let Some(headers) = headers_of(resource) else { return Ok(()) };
    for header in headers.iter_mut() {
        let Some((name, value)) = header.as_str().and_then(|h| h.split_once(':')) else { continue };
        if value.trim() != HIDDEN {
            continue;
        }
        let name = name.trim().to_string();
        let value = stored_value(&name)
            .ok_or_else(|| format!("the value of header '{name}' is hidden and none is stored: send it in full"))?;
        *header = Value::String(format!("{name}: {value}"));
    }
    Ok(())
}

/// `channel.header`, when there is one (indexing would add it).
fn headers_of(resource: &mut Value) -> Option<&mut Vec<Value>> {
    resource.get_mut("channel")?.get_mut("header")?.as_array_mut()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn header_values_are_shown_hidden_and_kept_when_sent_back() {
        let stored = json!({"resourceType": "Subscription", "channel": {"header": ["Authorization: Bearer s3cret"]}});
        let version = ResourceVersion {
            resource_type: "Subscription".into(),
            id: "1".into(),
            version: 1,
            last_updated: time::OffsetDateTime::UNIX_EPOCH,
            deleted: false,
            method: crate::store::WriteMethod::Create,
            body: Bytes::from(stored.to_string()),
        };
        let shown: Value = serde_json::from_slice(&shown(version).body).unwrap();
        assert_eq!(shown["channel"]["header"], json!(["Authorization: ******"]));

        let mut sent_back = shown.clone();
        sent_back["channel"]["header"] = json!(["authorization: ******", "X-Other: new"]);
        restore(&mut sent_back, Some(&stored)).unwrap();
        assert_eq!(sent_back["channel"]["header"], json!(["authorization: Bearer s3cret", "X-Other: new"]));

        let mut unknown = json!({"channel": {"header": ["X-New: ******"]}});
        assert!(restore(&mut unknown, Some(&stored)).unwrap_err().contains("X-New"));
        assert!(restore(&mut unknown, None).is_err());
        let mut without = json!({"channel": {"type": "websocket"}});
        restore(&mut without, None).unwrap();
        assert_eq!(without, json!({"channel": {"type": "websocket"}}), "nothing added");
    }
}
