//! Validation driven by the StructureDefinitions of the packages in `profiles/` (ADR 12): what
//! FHIR R4 requires of a resource beyond the shape its JSON schema checks
//! ([`crate::model::validate`] runs that first).

mod definitions;
mod expansions;
mod instance;
mod invariants;
pub(crate) mod model;
mod narrative;
pub mod packages;
mod primitives;
mod profile;
mod references;

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

    /// The OperationOutcome issue that reports it: its location as `expression`, its rule in
    /// `details` and in the text.
    pub fn into_issue(self) -> crate::model::Issue {
        use crate::model::{Issue, IssueCode};
        let code = if self.rule == "cardinality" { IssueCode::Required } else { IssueCode::Invariant };
        let text = format!("{}: {} ({})", self.location, self.message, self.rule);
        let issue = match self.severity {
            Severity::Error => Issue::error(code, text),
            Severity::Warning => Issue::warning(code, text),
        };
        issue.at(self.location).rule(self.rule)
    }
}

/// The element of `resource_type` a JSON key of it holds: `value` for `valueQuantity` (a choice
/// of types), `birthDate` for `_birthDate` (a primitive's id and extensions), the key otherwise.
pub fn element_name<'k>(resource_type: &str, key: &'k str) -> &'k str {
    let name = key.strip_prefix('_').unwrap_or(key);
    let Some(definition) = Definitions::carried().core(resource_type) else { return name };
    if definition.element(&format!("{resource_type}.{name}")).is_some() {
        return name;
    }
    let choice = name
        .char_indices()
        .filter(|(_, c)| c.is_ascii_uppercase())
        .map(|(at, _)| &name[..at])
        .find(|base| definition.element(&format!("{resource_type}.{base}[x]")).is_some());
    choice.unwrap_or(name)
}

/// The code system that the values of every one of `paths` (`Patient.gender`) implicitly have:
/// each is an element of type `code` whose required binding lists codes of that one system. A
/// token search `system|code` on them then matches their codes (R4 search.html#token).
pub fn implicit_code_system(paths: &[String]) -> Option<&'static str> {
    let mut found: Option<&'static str> = None;
    for path in paths {
        let resource_type = path.split('.').next()?;
        let element = Definitions::carried().core(resource_type)?.element(path)?;
        if element.types.len() != 1 || element.types[0].code != "code" {
            return None;
        }
        let binding = element.binding.as_ref().filter(|b| b.strength == "required")?;
        let system = Definitions::carried().expansion(&binding.value_set)?.only_system()?;
        if found.is_some_and(|known| known != system) {
            return None;
        }
        found = Some(system);
    }
    found
}

/// What the profile with canonical url `profile` (looked up in `definitions`) says of
/// `resource` beyond the base definition; `None` when there is no such usable profile.
pub fn against_profile(definitions: &Definitions, resource: &Value, profile: &str) -> Option<Vec<Finding>> {
    let definition = definitions.get(profile)?;
    let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
    let mut findings = Vec::new();
    match definition.root() {
        Some(root) if root.path == resource_type => profile::check(definitions, resource, definition, &mut findings),
        Some(root) => {
            let message = format!("{profile} is a profile of {}, not of {resource_type}", root.path);
            findings.push(Finding::error("profile", resource_type, message));
        }
        None => {}
    }
    Some(findings)
}

/// The errors the R4 core definitions find in `resource` (and in the resources inside it),
/// whose FHIRPath location is `root` (its type for a resource that stands alone). Only errors:
/// this runs on every write, where a warning changes nothing, so the walk does not spend time
/// on warning-severity invariants and extensible bindings. Extensions are checked against the
/// definitions carried; those of an operator's packages or of the store where a profile the
/// resource claims uses them.
pub fn base(resource: &Value, root: &str) -> Vec<Finding> {
    let mut walk = instance::Walk::new(Definitions::carried());
    walk.resource(resource, root);
    let mut findings = walk.into_findings();
    findings.retain(|finding| finding.severity == Severity::Error);
    findings
}
