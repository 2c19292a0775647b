//! What a Reference may point at: the types (and, in a profile, the profiles) its element's
//! `targetProfile` lists. The type is read from the literal reference (`Patient/1`, an absolute
//! URL ending in `Type/id`, a `#id` of a contained resource) or from `Reference.type`.

use serde_json::{Map, Value};

use super::definitions::{Definitions, ElementDefinition, TypeRef};

/// The resource type a reference names, and the contained resource when it is local; `None`
/// when neither its literal nor its `type` says (a `urn:uuid:`, a logical reference).
pub(super) fn referenced<'v>(
    reference: &'v Map<String, Value>,
    resource: &'v Value,
) -> Option<(String, Option<&'v Value>)> {
    let literal = reference.get("reference").and_then(Value::as_str);
    if let Some(id) = literal.and_then(|l| l.strip_prefix('#')) {
        let contained = resource.get("contained").and_then(Value::as_array)?;
        let target = contained.iter().find(|c| c.get("id").and_then(Value::as_str) == Some(id))?;
        return Some((target.get("resourceType")?.as_str()?.to_string(), Some(target)));
    }
    if let Some(resource_type) = literal.and_then(type_of_literal) {
        return Some((resource_type.to_string(), None));
    }
    let declared = reference.get("type").and_then(Value::as_str)?;
    let name = declared.rsplit('/').next().unwrap_or(declared);
    Some((name.to_string(), None))
}

/// `Type` of `[base/]Type/id[/_history/version]`.
fn type_of_literal(literal: &str) -> Option<&str> {
    if literal.starts_with("urn:") {
        return None;
    }
    let path = literal.split(['?', '#']).next().unwrap_or(literal);
    let segments: Vec<&str> = path.split('/').collect();
    let end = match segments.iter().rposition(|s| *s == "_history") {
        Some(history) => history,
        None => segments.len(),
    };
    let resource_type = *segments.get(end.checked_sub(2)?)?;
    resource_type.starts_with(|c: char| c.is_ascii_uppercase()).then_some(resource_type)
}

/// The Reference type of `element`, when it lists targets.
pub(super) fn reference_type(element: &ElementDefinition) -> Option<&TypeRef> {
    element.types.iter().find(|t| t.code == "Reference" && !t.target_profile.is_empty())
}

/// The resource types `targets` allow; `None` when any is allowed (`Resource`) or a target is
/// not known (then nothing is judged).
pub(super) fn allowed_types<'d>(definitions: &'d Definitions, targets: &[String]) -> Option<Vec<&'d str>> {
    let mut allowed = Vec::new();
    for target in targets {
        let root = definitions.get(target)?.root()?;
        if root.path == "Resource" || root.path == "DomainResource" {
            return None;
        }
        allowed.push(root.path.as_str());
    }
    Some(allowed)
}
