//! Secure messaging: a thread is a Communication with a `topic` and no `partOf`; its messages
//! are Communications `partOf` it. Who may write what is decided here from the resources; the
//! write transaction applies it (`rest/messaging.rs`).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::search::index::parse_local_reference;

/// How a clinic runs messaging (`hearth serve` flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessagingSettings {
    /// Whom every patient may message besides their care team (`--message-recipients`, e.g. a
    /// front desk `Organization/…`), as `Type/id`.
    pub recipients: Vec<String>,
}

/// The local `Type/id` of a reference element.
pub fn local(reference: &Value, base_url: &str) -> Option<String> {
    let text = reference.get("reference")?.as_str()?;
    parse_local_reference(text, base_url).map(|(t, id)| format!("{t}/{id}"))
}

/// The local references of an element that repeats (`recipient`, `partOf`).
pub fn locals(resource: &Value, element: &str, base_url: &str) -> Vec<String> {
    let items = resource.get(element).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    items.iter().filter_map(|item| local(item, base_url)).collect()
}

/// Whose care team can be messaged: the practitioners, roles and organizations of a
/// patient's Encounters (participants, service provider) and CareTeams (members, managing
/// organizations).
pub fn care_team(encounters: &[Value], care_teams: &[Value], base_url: &str) -> BTreeSet<String> {
    let mut team = BTreeSet::new();
    let mut add = |reference: Option<&Value>| {
        if let Some(found) = reference.and_then(|r| local(r, base_url)) {
            if ["Practitioner/", "PractitionerRole/", "Organization/", "CareTeam/"].iter().any(|t| found.starts_with(t))
            {
                team.insert(found);
            }
        }
    };
    for encounter in encounters {
        for participant in encounter.get("participant").and_then(Value::as_array).into_iter().flatten() {
            add(participant.get("individual"));
        }
        add(encounter.get("serviceProvider"));
    }
    for care_team in care_teams {
        for participant in care_team.get("participant").and_then(Value::as_array).into_iter().flatten() {
            add(participant.get("member"));
        }
        for organization in care_team.get("managingOrganization").and_then(Value::as_array).into_iter().flatten() {
            add(Some(organization));
        }
    }
    team
}

/// Whether `after` is `before` with only `received` added (a message marked read).
pub fn only_marked_read(before: &Value, after: &Value) -> bool {
    if before.get("received").is_some() || after.get("received").is_none() {
        return false;
    }
    let without = |message: &Value, drop: &[&str]| {
        let mut message = message.clone();
        if let Some(object) = message.as_object_mut() {
            for name in drop {
                object.remove(*name);
            }
        }
        message
    };
    without(before, &["meta"]) == without(after, &["meta", "received"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_care_team_comes_from_encounters_and_care_teams() {
        let encounter = json!({"participant": [{"individual": {"reference": "Practitioner/d1"}},
            {"individual": {"reference": "RelatedPerson/r1"}}], "serviceProvider": {"reference": "Organization/o1"}});
        let team_resource = json!({"participant": [{"member": {"reference": "PractitionerRole/pr1"}}],
            "managingOrganization": [{"reference": "http://h/fhir/Organization/o2"}]});
        let team = care_team(&[encounter], &[team_resource], "http://h/fhir");
        let team: Vec<&str> = team.iter().map(String::as_str).collect();
        assert_eq!(team, ["Organization/o1", "Organization/o2", "Practitioner/d1", "PractitionerRole/pr1"]);
    }

    #[test]
    fn marking_read_adds_received_only() {
        let message = json!({"status": "completed", "payload": [{"contentString": "hi"}], "meta": {"versionId": "1"}});
        let mut read = message.clone();
        read["received"] = json!("2026-12-06T10:00:00Z");
        read["meta"] = json!({"versionId": "2"});
        assert!(only_marked_read(&message, &read));
        let mut edited = read.clone();
        edited["payload"] = json!([{"contentString": "bye"}]);
        assert!(!only_marked_read(&message, &edited));
        assert!(!only_marked_read(&read, &read), "once");
    }
}
