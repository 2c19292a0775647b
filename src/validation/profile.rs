//! A resource checked against a profile (a constraining StructureDefinition such as US Core
//! Patient): its elements' cardinalities, fixed and pattern values, required bindings, slices
//! (told apart by value, pattern, type, profile or presence, counted, and checked against their
//! own elements), the profiles of its extensions and nested types, and the profile's own
//! invariants. The base definition's rules are the base walk's ([`super::base`]); `mustSupport`
//! is the client's.

use serde_json::{Map, Value};

use super::definitions::{choice_key, Definitions, ElementDefinition, StructureDefinition};
use super::invariants::{self, At};
use super::{references, Finding};

/// How deep profiles may nest (an extension's profile inside a type's profile…).
const MAX_DEPTH: usize = 12;

/// Checks `resource` against the profile `definition` (the profiles it names looked up in
/// `definitions`).
pub(super) fn check(
    definitions: &Definitions,
    resource: &Value,
    definition: &StructureDefinition,
    findings: &mut Vec<Finding>,
) {
    let type_name = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
    check_at(definitions, resource, definition, type_name, type_name, resource, findings);
}

/// Checks `value` (of `type_name`, at `location`, inside `resource`) against `definition`: a
/// resource against its profile, an extension against its definition.
pub(super) fn check_at(
    definitions: &Definitions,
    value: &Value,
    definition: &StructureDefinition,
    type_name: &str,
    location: &str,
    resource: &Value,
    findings: &mut Vec<Finding>,
) {
    let Some(root) = definition.root() else { return };
    let mut walk = ProfileWalk { definitions, resource, findings, depth: 0 };
    walk.value(value, definition, root, type_name, location);
}

struct ProfileWalk<'r, 'f> {
    definitions: &'r Definitions,
    resource: &'r Value,
    findings: &'f mut Vec<Finding>,
    depth: usize,
}

impl ProfileWalk<'_, '_> {
    fn error(&mut self, rule: &str, location: &str, message: String) {
        self.findings.push(Finding::error(rule, location, message));
    }

    /// One value of `element`: its fixed or pattern value, binding, invariants, profiles and
    /// children.
    fn value(
        &mut self,
        value: &Value,
        definition: &StructureDefinition,
        element: &ElementDefinition,
        type_name: &str,
        location: &str,
    ) {
        if let Some((fixed, expected)) = element.fixed_or_pattern() {
            if !conforms(value, expected, fixed) {
                let what = if fixed { "fixed" } else { "pattern" };
                self.error(
                    "profile",
                    location,
                    format!("does not match the {what} value {expected} of {}", element.id),
                );
            }
        }
        self.binding(value, element, type_name, location);
        if type_name == "Reference" {
            self.reference(value, element, location);
        }
        let at = At { value, type_name, location, resource: self.resource, root: self.resource };
        invariants::evaluate(&element.constraint, |c| c.from_core, &at, self.findings);
        if self.depth < MAX_DEPTH {
            self.depth += 1;
            for profile in element
                .types
                .iter()
                .filter(|t| t.code == type_name || element.types.len() == 1)
                .flat_map(|t| &t.profile)
            {
                match self.definitions.get(profile) {
                    Some(nested) if !std::ptr::eq(nested, definition) => {
                        if let Some(root) = nested.root() {
                            self.value(value, nested, root, type_name, location);
                        }
                    }
                    _ => {}
                }
            }
            self.depth -= 1;
        }
        if let Some(object) = value.as_object() {
            self.children(object, definition, &element.id, location);
        }
    }

    /// The child elements the profile defines under the element with id `id`.
    fn children(&mut self, object: &Map<String, Value>, definition: &StructureDefinition, id: &str, location: &str) {
        for child in definition.children_of_id(id) {
            let items = items_of(object, child);
            let name = child.path.rsplit('.').next().unwrap_or_default().trim_end_matches("[x]");
            let at = format!("{location}.{name}");
            self.cardinality(present(object, child), child, &at);
            let slices: Vec<&ElementDefinition> = definition.slices_of(&child.id).collect();
            let mut in_slice = vec![0usize; slices.len()];
            for (index, (item, type_name)) in items.iter().enumerate() {
                let item_at = if child.max.as_deref() == Some("1") { at.clone() } else { format!("{at}[{index}]") };
                self.value(item, definition, child, type_name, &item_at);
                let matching =
                    slices.iter().position(|slice| in_slice_of(self.definitions, item, type_name, slice, definition));
                match matching {
                    Some(found) => {
                        in_slice[found] += 1;
                        self.value(item, definition, slices[found], type_name, &item_at);
                    }
                    None if !slices.is_empty() && closed(child) => self.error(
                        "profile",
                        &item_at,
                        format!("belongs to no slice of {}, whose slicing is closed", child.id),
                    ),
                    None => {}
                }
            }
            for (slice, count) in slices.iter().zip(in_slice) {
                self.cardinality(count, slice, &format!("{at}:{}", slice.slice_name.as_deref().unwrap_or_default()));
            }
        }
    }

    fn cardinality(&mut self, count: usize, element: &ElementDefinition, location: &str) {
        if count < element.min as usize {
            let message = format!("{} requires at least {} (found {count})", element.id, element.min);
            self.error("cardinality", location, message);
        }
        if element.max_count().is_some_and(|max| count > max) {
            let message =
                format!("{} allows at most {} (found {count})", element.id, element.max.as_deref().unwrap_or_default());
            self.error("cardinality", location, message);
        }
    }

    /// A reference names a resource of a type the profile's `targetProfile` allows, and a
    /// contained one conforms to one of those profiles (a stored one is not read here).
    fn reference(&mut self, value: &Value, element: &ElementDefinition, location: &str) {
        let Some(reference) = value.as_object() else { return };
        let Some(targets) = references::reference_type(element) else { return };
        let Some((found, contained)) = references::referenced(reference, self.resource) else { return };
        let Some(allowed) = references::allowed_types(self.definitions, &targets.target_profile) else { return };
        if !allowed.contains(&found.as_str()) {
            let message = format!("refers to a {found}, where {} allows {}", element.id, allowed.join(", "));
            self.error("reference-target", location, message);
            return;
        }
        let Some(contained) = contained else { return };
        let profiles: Vec<&StructureDefinition> = targets
            .target_profile
            .iter()
            .filter_map(|url| self.definitions.get(url))
            .filter(|d| d.derivation.as_deref() == Some("constraint"))
            .filter(|d| d.root().is_some_and(|root| root.path == found))
            .collect();
        let conforms =
            |profile: &&StructureDefinition| conforms_to(self.definitions, contained, profile, &found, &found);
        if !profiles.is_empty() && !profiles.iter().any(conforms) {
            let urls: Vec<&str> = profiles.iter().map(|p| p.url.as_str()).collect();
            let message = format!("refers to a contained {found} that conforms to none of {}", urls.join(", "));
            self.error("reference-target", location, message);
        }
    }

    /// A required (error) or extensible (warning) binding of the profile, to a value set that
    /// expands offline.
    fn binding(&mut self, value: &Value, element: &ElementDefinition, type_name: &str, location: &str) {
        let Some(binding) = element.binding.as_ref() else { return };
        let required = match binding.strength.as_str() {
            "required" => true,
            "extensible" => false,
            _ => return,
        };
        let Some(expansion) = self.definitions.expansion(&binding.value_set) else { return };
        let known = match type_name {
            "code" => value.as_str().is_some_and(|code| expansion.contains_code(code)),
            "Coding" => expansion.contains_coding(value),
            "CodeableConcept" => {
                let codings = value.get("coding").and_then(Value::as_array);
                codings.is_none_or(|codings| codings.iter().any(|c| expansion.contains_coding(c)))
            }
            _ => true,
        };
        match (known, required) {
            (true, _) => {}
            (false, true) => self.error(
                "binding",
                location,
                format!("is not in the value set {} that {} requires", binding.value_set, element.id),
            ),
            (false, false) => self.findings.push(Finding::warning(
                "binding",
                location,
                format!("is not in the value set {} that {} binds (extensible)", binding.value_set, element.id),
            )),
        }
    }
}

/// Whether a code, Coding or CodeableConcept is in the required binding of `element`.
fn in_required_binding(definitions: &Definitions, value: &Value, element: &ElementDefinition) -> bool {
    let Some(binding) = element.binding.as_ref().filter(|b| b.strength == "required") else { return false };
    let Some(expansion) = definitions.expansion(&binding.value_set) else { return false };
    match value {
        Value::String(code) => expansion.contains_code(code),
        Value::Object(object) => match object.get("coding").and_then(Value::as_array) {
            Some(codings) => codings.iter().any(|c| expansion.contains_coding(c)),
            None => expansion.contains_coding(value),
        },
        _ => false,
    }
}

/// Whether `value` (a resource standing alone, of type `type_name`, at `location`) conforms
/// to `profile`: no error, whatever the warnings.
fn conforms_to(
    definitions: &Definitions,
    value: &Value,
    profile: &StructureDefinition,
    type_name: &str,
    location: &str,
) -> bool {
    let mut problems = Vec::new();
    check_at(definitions, value, profile, type_name, location, value, &mut problems);
    problems.iter().all(|p| p.severity != super::Severity::Error)
}

fn closed(element: &ElementDefinition) -> bool {
    element.slicing.as_ref().is_some_and(|s| s.rules.as_deref() == Some("closed"))
}

/// How many repetitions of `element` `object` has: values, or a primitive's `_name` twin alone
/// (an id or extensions without a value).
fn present(object: &Map<String, Value>, element: &ElementDefinition) -> usize {
    let name = element.path.rsplit('.').next().unwrap_or_default();
    let keys: Vec<String> = match name.strip_suffix("[x]") {
        Some(base) => element.types.iter().map(|t| choice_key(base, &t.code)).collect(),
        None => vec![name.to_string()],
    };
    let count = |value: Option<&Value>| match value {
        Some(Value::Array(items)) => items.len(),
        Some(Value::Null) | None => 0,
        Some(_) => 1,
    };
    keys.iter().map(|key| count(object.get(key)).max(count(object.get(&format!("_{key}"))))).sum()
}

/// The values of `element` in `object`, each with its type (one per key of a choice element).
fn items_of<'v>(object: &'v Map<String, Value>, element: &ElementDefinition) -> Vec<(&'v Value, String)> {
    let name = element.path.rsplit('.').next().unwrap_or_default();
    let keys: Vec<(String, String)> = match name.strip_suffix("[x]") {
        Some(base) => element.types.iter().map(|t| (choice_key(base, &t.code), t.code.clone())).collect(),
        None => vec![(name.to_string(), element.types.first().map(|t| t.code.clone()).unwrap_or_default())],
    };
    let mut items = Vec::new();
    for (key, type_name) in keys {
        match object.get(&key) {
            Some(Value::Array(values)) => {
                items.extend(values.iter().filter(|v| !v.is_null()).map(|v| (v, type_name.clone())))
            }
            Some(value) => items.push((value, type_name)),
            None => {}
        }
    }
    items
}

/// Whether `item` belongs to `slice`: every discriminator of the sliced element agrees.
fn in_slice_of(
    definitions: &Definitions,
    item: &Value,
    type_name: &str,
    slice: &ElementDefinition,
    definition: &StructureDefinition,
) -> bool {
    let sliced_id = slice.id.rsplit_once(':').map_or(slice.id.as_str(), |(base, _)| base);
    let Some(sliced) = definition.element_by_id(sliced_id) else { return false };
    let Some(slicing) = &sliced.slicing else { return false };
    slicing.discriminator.iter().all(|discriminator| {
        let target = discriminated(slice, &discriminator.path, definition);
        match discriminator.kind.as_str() {
            "value" | "pattern" => {
                let expected = target
                    .and_then(|e| e.fixed_or_pattern())
                    .or_else(|| extension_url(definitions, slice, &discriminator.path));
                let found = at_path(item, &discriminator.path);
                match expected {
                    Some((fixed, expected)) => found.iter().any(|value| conforms(value, expected, fixed)),
                    // No value to compare: a required binding tells the slice (its codes).
                    None => target.is_some_and(|target| {
                        found.iter().any(|value| in_required_binding(definitions, value, target))
                    }),
                }
            }
            "exists" => {
                let present = !at_path(item, &discriminator.path).is_empty();
                target.is_some_and(|e| if e.min > 0 { present } else { e.max.as_deref() != Some("0") || !present })
            }
            // The type (or profile) of the element at the path tells the slice: a resource's by
            // its resourceType, `$this` by the item's own type.
            "type" | "profile" => {
                let Some(target) = target else { return false };
                let found = at_path(item, &discriminator.path);
                let type_of = |value: &Value| match value.get("resourceType").and_then(Value::as_str) {
                    Some(resource_type) => resource_type.to_string(),
                    None => type_name.to_string(),
                };
                if discriminator.kind == "type" {
                    return found.iter().any(|value| target.types.iter().any(|t| t.code == type_of(value)));
                }
                // A profile discriminator: the value conforms to one of the profiles (checked).
                let profiles = target.types.iter().flat_map(|t| &t.profile).filter_map(|p| definitions.get(p));
                profiles.into_iter().any(|profile| {
                    found.iter().any(|value| {
                        let of_type = profile.root().is_some_and(|root| root.path == type_of(value));
                        of_type && conforms_to(definitions, value, profile, &type_of(value), "")
                    })
                })
            }
            _ => false,
        }
    })
}

/// An extension slice is told by its url, which its profile fixes: `(true, url)`.
fn extension_url<'d>(
    definitions: &'d Definitions,
    slice: &'d ElementDefinition,
    path: &str,
) -> Option<(bool, &'d Value)> {
    if path != "url" {
        return None;
    }
    let profile = slice.types.iter().find(|t| t.code == "Extension")?.profile.first()?;
    let definition = definitions.get(profile)?;
    definition.element_by_id("Extension.url").and_then(|e| e.fixed_or_pattern())
}

/// The element of a slice at a discriminator's path (`$this`: the slice itself).
fn discriminated<'d>(
    slice: &'d ElementDefinition,
    path: &str,
    definition: &'d StructureDefinition,
) -> Option<&'d ElementDefinition> {
    if path == "$this" {
        return Some(slice);
    }
    let id = format!("{}.{}", slice.id, path.replace(".ofType(", ":").replace(')', ""));
    definition.element_by_id(&id).or_else(|| definition.element_by_id(&format!("{id}[x]")))
}

/// The values at a simple dotted path under `value` (`coding.code`; `$this` is the value).
fn at_path<'v>(value: &'v Value, path: &str) -> Vec<&'v Value> {
    let mut current = vec![value];
    if path == "$this" {
        return current;
    }
    for step in path.split('.') {
        let mut next = Vec::new();
        for node in current {
            match node.get(step) {
                Some(Value::Array(items)) => next.extend(items),
                Some(found) => next.push(found),
                None => {}
            }
        }
        current = next;
    }
    current
}

/// `fixed` (exactly equal) or `pattern` (every member of the pattern present, arrays item by
/// item) conformance.
fn conforms(value: &Value, expected: &Value, fixed: bool) -> bool {
    if fixed {
        return value == expected;
    }
    match (value, expected) {
        (Value::Object(found), Value::Object(pattern)) => {
            pattern.iter().all(|(key, wanted)| found.get(key).is_some_and(|v| conforms(v, wanted, false)))
        }
        (Value::Array(found), Value::Array(pattern)) => {
            pattern.iter().all(|wanted| found.iter().any(|v| conforms(v, wanted, false)))
        }
        (Value::Array(found), wanted) => found.iter().any(|v| conforms(v, wanted, false)),
        (found, wanted) => found == wanted,
    }
}
