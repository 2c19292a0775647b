//! A rest-hook Subscription's `channel.header` values are often credentials of the receiver
//! (`Authorization: Bearer …`). They are write-only: every resource the server shows (reads,
//! searches, `_include`, history, write responses) has each value replaced by [`HIDDEN`], and a
//! write that sends a header back with [`HIDDEN`] as its value keeps the value stored for that
//! header name, as long as the channel's type and endpoint stay the same. Whoever may read a
//! Subscription (staff, or a patient whose clinic's Subscription names them) never learns the
//! receiver's secret, nor sends it elsewhere. Patches apply to the shown version; notification
//! payloads and `$events` show Subscriptions the same way.

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
/// sends as [`HIDDEN`], from `stored` (its current version): the n-th hidden header of a name
/// gets the n-th stored value of that name. Only to the same channel: a stored secret never
/// follows a changed endpoint or type. An error says what to send instead.
pub fn restore(resource: &mut Value, stored: Option<&Value>) -> Result<(), String> {
    let same_channel = stored.is_some_and(|stored| {
        let channel = &stored["channel"];
        channel["type"] == resource["channel"]["type"] && channel["endpoint"] == resource["channel"]["endpoint"]
    });
    let stored_headers: Vec<(String, String)> = stored
        .and_then(|stored| stored["channel"]["header"].as_array())
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|header| header.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let Some(headers) = headers_of(resource) else { return Ok(()) };
    let mut seen: Vec<String> = Vec::new();
    for header in headers.iter_mut() {
        let Some((name, value)) = header.as_str().and_then(|h| h.split_once(':')) else { continue };
        let name = name.trim().to_string();
        let key = name.to_ascii_lowercase();
        let nth = seen.iter().filter(|n| **n == key).count();
        seen.push(key.clone());
        if value.trim() != HIDDEN {
            continue;
        }
        if !same_channel {
            return Err(format!(
                "the value of header '{name}' is hidden: send it in full (a stored value is kept only for the same channel type and endpoint)"
            ));
        }
        let value = stored_headers
            .iter()
            .filter(|(stored_name, _)| *stored_name == key)
            .nth(nth)
            .map(|(_, value)| value.clone())
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

        let mut elsewhere = shown.clone();
        elsewhere["channel"]["endpoint"] = json!("https://attacker.example/");
        assert!(restore(&mut elsewhere, Some(&stored)).unwrap_err().contains("same channel"));

        let two = json!({"channel": {"header": ["X-A: 1", "X-A: 2"]}});
        let mut both_hidden = json!({"channel": {"header": ["X-A: ******", "X-A: ******"]}});
        restore(&mut both_hidden, Some(&two)).unwrap();
        assert_eq!(both_hidden["channel"]["header"], json!(["X-A: 1", "X-A: 2"]), "each its own");

        let mut unknown = json!({"channel": {"header": ["X-New: ******"]}});
        assert!(restore(&mut unknown, Some(&stored)).unwrap_err().contains("X-New"));
        assert!(restore(&mut unknown, None).is_err());
        let mut without = json!({"channel": {"type": "websocket"}});
        restore(&mut without, None).unwrap();
        assert_eq!(without, json!({"channel": {"type": "websocket"}}), "nothing added");
    }
}
