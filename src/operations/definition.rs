//! The OperationDefinitions under `conformance/operations/`, read once: what the registry,
//! the routes, the input checks and the CapabilityStatement are built from.
//!
//! The official definitions (R4 core, IPS) are carried byte for byte; the project's own ones
//! have a canonical URL under the server's base, written `[base]` in the file and replaced with
//! the FHIR base URL when the definition is served.

use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::Value;

/// The definitions this server implements, by file.
const SOURCES: &[&str] = &[
    include_str!("../../conformance/operations/Patient-everything.json"),
    include_str!("../../conformance/operations/Resource-validate.json"),
    include_str!("../../conformance/operations/summary.json"),
    include_str!("../../conformance/operations/Composition-document.json"),
    include_str!("../../conformance/operations/reindex.json"),
    include_str!("../../conformance/operations/person-invite.json"),
    include_str!("../../conformance/operations/appointment-find.json"),
    include_str!("../../conformance/operations/appointment-hold.json"),
    include_str!("../../conformance/operations/appointment-book.json"),
    include_str!("../../conformance/operations/appointment-cancel.json"),
    include_str!("../../conformance/operations/schedule-generate-slots.json"),
    include_str!("../../conformance/operations/bulk-publish.json"),
    include_str!("../../conformance/operations/export.json"),
    include_str!("../../conformance/operations/patient-export.json"),
    include_str!("../../conformance/operations/group-export.json"),
    include_str!("../../conformance/operations/documentreference-upload.json"),
    include_str!("../../conformance/operations/medicationrequest-request-refill.json"),
    include_str!("../../conformance/operations/communication-unread.json"),
    include_str!("../../conformance/operations/backport-subscription-status.json"),
    include_str!("../../conformance/operations/backport-subscription-events.json"),
    include_str!("../../conformance/operations/backport-subscription-get-ws-binding-token.json"),
];

/// Where the project's own definitions write the server's FHIR base.
const BASE_PLACEHOLDER: &str = "[base]";

/// One OperationDefinition, as far as invoking the operation needs it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Definition {
    pub id: String,
    /// The canonical URL (`[base]/…` for the project's own).
    pub url: String,
    pub code: String,
    /// The resource types it applies to at type and instance level (`Resource`: all).
    #[serde(default)]
    pub resource: Vec<String>,
    pub system: bool,
    #[serde(rename = "type")]
    pub type_level: bool,
    pub instance: bool,
    /// Absent means the operation changes nothing (FHIR R4 lets such operations run with GET).
    #[serde(default)]
    pub affects_state: bool,
    #[serde(default)]
    pub parameter: Vec<ParameterDefinition>,
    /// The definition as published, to serve.
    #[serde(skip)]
    pub source: Value,
}

/// One `OperationDefinition.parameter`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParameterDefinition {
    pub name: String,
    /// `in` or `out`.
    #[serde(rename = "use")]
    pub direction: String,
    pub min: u32,
    /// A number or `*`.
    pub max: String,
    /// The FHIR type (`date`, `Resource`, `Bundle`…); absent for parameters made of parts.
    #[serde(rename = "type")]
    pub value_type: Option<String>,
}

impl ParameterDefinition {
    /// Whether it is an input parameter.
    pub fn is_input(&self) -> bool {
        self.direction == "in"
    }

    /// How many times it may occur (`None`: any number).
    pub fn max_occurs(&self) -> Option<usize> {
        self.max.parse().ok()
    }

    /// Whether it may occur more than once.
    pub fn repeats(&self) -> bool {
        self.max_occurs().is_none_or(|max| max > 1)
    }

    /// Whether its value is a resource (and so is given as `resource` in `Parameters`).
    pub fn is_resource(&self) -> bool {
        let value_type = self.value_type.as_deref().unwrap_or("");
        value_type == "Resource"
            || value_type == "DomainResource"
            || crate::model::validate::is_resource_type(value_type)
    }
}

impl Definition {
    /// Whether the operation may be invoked on `resource_type` (type or instance level).
    pub fn applies_to(&self, resource_type: &str) -> bool {
        self.resource.iter().any(|t| t == "Resource" || t == resource_type)
    }

    /// The input parameters.
    pub fn inputs(&self) -> impl Iterator<Item = &ParameterDefinition> {
        self.parameter.iter().filter(|p| p.is_input())
    }

    /// The one input that is a resource, when it is the only input a bare-resource POST body
    /// can stand for (FHIR R4 "Executing operations": a single resource input may be the body).
    pub fn single_resource_input(&self) -> Option<&ParameterDefinition> {
        let mut resources = self.inputs().filter(|p| p.is_resource());
        let only = resources.next()?;
        resources.next().is_none().then_some(only)
    }

    /// The canonical URL with the server's FHIR base put in.
    pub fn canonical(&self, base_url: &str) -> String {
        self.url.replace(BASE_PLACEHOLDER, base_url)
    }

    /// The definition to serve, with the server's FHIR base put in.
    pub fn published(&self, base_url: &str) -> Value {
        let mut published = self.source.clone();
        published["url"] = Value::String(self.canonical(base_url));
        published
    }
}

/// Every definition, parsed once.
pub static DEFINITIONS: LazyLock<Vec<Definition>> = LazyLock::new(|| {
    SOURCES
        .iter()
        .map(|text| {
            let source: Value = serde_json::from_str(text).expect("conformance/operations holds JSON");
            let mut definition: Definition =
                serde_json::from_value(source.clone()).expect("conformance/operations holds OperationDefinitions");
            definition.source = source;
            definition
        })
        .collect()
});

/// The definition with this `id` (served at `OperationDefinition/[id]`).
pub fn by_id(id: &str) -> Option<&'static Definition> {
    DEFINITIONS.iter().find(|d| d.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_definition_parses_with_unique_ids_and_codes() {
        assert_eq!(DEFINITIONS.len(), SOURCES.len());
        for definition in DEFINITIONS.iter() {
            assert_eq!(DEFINITIONS.iter().filter(|d| d.id == definition.id).count(), 1, "{}", definition.id);
            assert!(definition.system || definition.type_level || definition.instance, "{}", definition.id);
        }
        let everything = by_id("Patient-everything").unwrap();
        assert!(everything.applies_to("Patient") && !everything.applies_to("Observation"));
        assert!(everything.inputs().any(|p| p.name == "_type" && p.repeats()));
        assert!(by_id("Resource-validate").unwrap().single_resource_input().is_some_and(|p| p.name == "resource"));
        assert!(by_id("reindex").unwrap().affects_state);
        assert_eq!(by_id("reindex").unwrap().canonical("http://h/fhir"), "http://h/fhir/OperationDefinition/reindex");
    }
}
