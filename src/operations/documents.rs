//! What `$summary` and `$document` share: gathering the resources a document's entries
//! reference (transitively, as far as the caller may read them) and writing a `document`
//! Bundle in which every reference resolves to an entry.

use std::collections::{BTreeMap, HashSet};

use serde_json::{json, Map, Value};

use crate::model::resource::{format_instant, new_id, now, visit_references};
use crate::model::FhirError;
use crate::rest::OperationContext;
use crate::search::index::parse_local_reference;
use crate::store::ResourceVersion;

/// How many rounds of references are followed from the gathered resources.
const MAX_ROUNDS: usize = 8;

/// The most referenced resources added to a document's gathered ones.
pub const MAX_REFERENCED: usize = 5_000;

/// A resource of the document, parsed.
pub struct Entry {
    pub resource_type: String,
    pub id: String,
    pub resource: Value,
}

impl Entry {
    /// Its (type, id).
    pub fn key(&self) -> (String, String) {
        (self.resource_type.clone(), self.id.clone())
    }

    pub fn of(version: &ResourceVersion) -> Result<Entry, FhirError> {
        let resource = serde_json::from_slice(&version.body).map_err(|_| FhirError::internal())?;
        Ok(Entry { resource_type: version.resource_type.clone(), id: version.id.clone(), resource })
    }
}

/// The resources of a document: those gathered, then those they reference (and so on), read
/// through the caller's view. Ordered by type and id after the ones gathered, each once.
pub async fn with_references(
    context: &mut OperationContext<'_>,
    gathered: Vec<Entry>,
    also: &Value,
) -> Result<Vec<Entry>, FhirError> {
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut entries = Vec::new();
    for entry in gathered {
        if seen.insert(entry.key()) {
            entries.push(entry);
        }
    }
    let gathered_count = entries.len();
    let mut frontier: Vec<(String, String)> = local_references(context.base_url(), also);
    for entry in &entries {
        frontier.extend(local_references(context.base_url(), &entry.resource));
    }
    for _ in 0..MAX_ROUNDS {
        frontier.retain(|key| !seen.contains(key));
        frontier.sort();
        frontier.dedup();
        frontier.truncate(MAX_REFERENCED.saturating_sub(entries.len() - gathered_count));
        if frontier.is_empty() {
            break;
        }
        let mut found = context.view.read_many(&frontier).await?;
        found.sort_by(|a, b| (&a.resource_type, &a.id).cmp(&(&b.resource_type, &b.id)));
        seen.extend(frontier.drain(..));
        for version in found {
            let entry = Entry::of(&version)?;
            frontier.extend(local_references(context.base_url(), &entry.resource));
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// The local resources (`Type/id`, or this server's absolute URL of one) a resource references;
/// versioned references name their resource.
pub fn local_references(base_url: &str, value: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    visit_references(value, &mut |reference| {
        if let Some(key) = local_key(base_url, reference) {
            found.push(key);
        }
    });
    found
}

fn local_key(base_url: &str, reference: &str) -> Option<(String, String)> {
    let (resource_type, id) = parse_local_reference(reference, base_url)?;
    Some((resource_type.to_string(), id.to_string()))
}

/// Gives every local reference that no entry answers a `display` in place of its `reference`
/// (a resource the caller may not read, or one that does not exist), so that every reference
/// left in the document resolves inside it.
fn drop_dangling(base_url: &str, value: &mut Value, present: &HashSet<(String, String)>) {
    match value {
        Value::Object(fields) => {
            let dangling = match fields.get("reference") {
                Some(Value::String(reference)) if !reference.starts_with('#') => {
                    local_key(base_url, reference).is_none_or(|key| !present.contains(&key))
                }
                _ => false,
            };
            if dangling {
                fields.remove("reference");
                if !fields.contains_key("display") {
                    fields.insert("display".into(), "not included in this document".into());
                }
            }
            fields.values_mut().for_each(|v| drop_dangling(base_url, v, present));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| drop_dangling(base_url, v, present)),
        _ => {}
    }
}

/// A `document` Bundle: the Composition first (with `composition_url` as its `fullUrl`), then
/// the entries at their absolute URLs; dangling references are reduced to their display.
pub fn document_bundle(
    context: &OperationContext<'_>,
    composition_url: &str,
    mut composition: Value,
    entries: Vec<Entry>,
    profile: Option<&str>,
) -> Value {
    let base_url = context.base_url();
    let mut present: HashSet<(String, String)> = entries.iter().map(Entry::key).collect();
    // Entries may reference the Composition itself (Provenance.target, say).
    if let Some(id) = composition.get("id").and_then(Value::as_str) {
        present.insert(("Composition".to_string(), id.to_string()));
    }
    drop_dangling(base_url, &mut composition, &present);
    let mut bundle_entries = vec![json!({"fullUrl": composition_url, "resource": composition})];
    for mut entry in entries {
        drop_dangling(base_url, &mut entry.resource, &present);
        bundle_entries.push(json!({
            "fullUrl": context.resource_url(&entry.resource_type, &entry.id),
            "resource": entry.resource,
        }));
    }
    let mut bundle = Map::new();
    bundle.insert("resourceType".into(), "Bundle".into());
    if let Some(profile) = profile {
        bundle.insert("meta".into(), json!({"profile": [profile]}));
    }
    bundle
        .insert("identifier".into(), json!({"system": "urn:ietf:rfc:3986", "value": format!("urn:uuid:{}", new_id())}));
    bundle.insert("type".into(), "document".into());
    bundle.insert("timestamp".into(), format_instant(now()).into());
    bundle.insert("entry".into(), Value::Array(bundle_entries));
    Value::Object(bundle)
}

/// A display text of a resource for a narrative: its `code`'s (or `vaccineCode`'s,
/// `medicationCodeableConcept`'s…) text or first display, else its type and id.
pub fn display_of(entry: &Entry) -> String {
    let concept = ["code", "vaccineCode", "medicationCodeableConcept", "type"]
        .iter()
        .find_map(|name| entry.resource.get(*name))
        .and_then(|concept| {
            concept.get("text").and_then(Value::as_str).map(str::to_string).or_else(|| {
                let codings = concept.get("coding")?.as_array()?;
                codings.iter().find_map(|c| c.get("display").and_then(Value::as_str)).map(str::to_string)
            })
        });
    concept.unwrap_or_else(|| format!("{}/{}", entry.resource_type, entry.id))
}

/// An XHTML narrative `div` listing `items` (escaped).
pub fn narrative_list(items: &[String]) -> Value {
    let mut div = String::from("<div xmlns=\"http://www.w3.org/1999/xhtml\"><ul>");
    for item in items {
        div.push_str("<li>");
        div.push_str(&escape(item));
        div.push_str("</li>");
    }
    div.push_str("</ul></div>");
    json!({"status": "generated", "div": div})
}

/// An XHTML narrative `div` of one sentence.
pub fn narrative_text(text: &str) -> Value {
    json!({"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>{}</p></div>", escape(text))})
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Entries grouped by type (in the order of `entries`), for sections.
pub fn by_type<'a>(entries: &[&'a Entry]) -> BTreeMap<&'a str, Vec<&'a Entry>> {
    let mut grouped: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for entry in entries {
        grouped.entry(entry.resource_type.as_str()).or_default().push(entry);
    }
    grouped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_local_references_only() {
        let resource = json!({"subject": {"reference": "Patient/p1"}, "performer": [
            {"reference": "http://h/fhir/Practitioner/d1/_history/2"}, {"reference": "#contained"},
            {"reference": "http://elsewhere/fhir/Practitioner/x"}, {"reference": "urn:uuid:1"}]});
        assert_eq!(
            local_references("http://h/fhir", &resource),
            vec![("Patient".to_string(), "p1".to_string()), ("Practitioner".to_string(), "d1".to_string())]
        );
    }

    #[test]
    fn dangling_references_keep_only_their_display() {
        let mut resource = json!({"subject": {"reference": "Patient/p1"},
            "performer": [{"reference": "Practitioner/gone", "display": "Dr Who"}, {"reference": "Practitioner/x"}]});
        let present = HashSet::from([("Patient".to_string(), "p1".to_string())]);
        drop_dangling("http://h/fhir", &mut resource, &present);
        assert_eq!(resource["subject"]["reference"], "Patient/p1");
        assert_eq!(resource["performer"][0], json!({"display": "Dr Who"}));
        assert_eq!(resource["performer"][1], json!({"display": "not included in this document"}));
    }

    #[test]
    fn narratives_are_escaped_xhtml() {
        let text = narrative_list(&["a < b & c".to_string()]);
        assert_eq!(text["div"], "<div xmlns=\"http://www.w3.org/1999/xhtml\"><ul><li>a &lt; b &amp; c</li></ul></div>");
    }
}
