//! Validation driven by the StructureDefinitions of the packages in `profiles/` (ADR 12): what
//! FHIR R4 requires of a resource beyond the shape its JSON schema checks
//! ([`crate::model::validate`] runs that first).

mod definitions;
mod expansions;
mod instance;
mod narrative;
mod primitives;

use serde_json::Value;

pub use definitions::Definitions;

/// One problem found, with the rule it breaks: an invariant's key (`ref-1`), or `cardinality`,
/// `value`, `binding` for the element rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    pub rule: String,
    /// FHIRPath location (`Patient.birthDate`, `Bundle.entry[2].resource.code`).
    pub location: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

impl Finding {
    fn error(rule: &str, location: &str, message: String) -> Self {
        Finding { severity: Severity::Error, rule: rule.to_string(), location: location.to_string(), message }
    }

    fn warning(rule: &str, location: &str, message: String) -> Self {
        Finding { severity: Severity::Warning, rule: rule.to_string(), location: location.to_string(), message }
    }
}

/// What the R4 core definitions say of `resource` (and of the resources inside it), whose
/// FHIRPath location is `root` (its type for a resource that stands alone).
pub fn base(resource: &Value, root: &str) -> Vec<Finding> {
    let mut walk = instance::Walk::new(Definitions::carried());
    walk.resource(resource, root);
    walk.into_findings()
}
