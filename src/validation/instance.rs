//! A resource walked against the R4 core StructureDefinitions for errors (warnings are not
//! looked for: what the core definitions say is enforced on every write, where only errors
//! count): every element found in the JSON is matched to its definition, and checked for what
//! the JSON schema cannot say —
//! minimum cardinality, primitive values beyond their regex, required bindings, extensions
//! with a value or extensions (ext-1), local references to contained resources (ref-1), the
//! narrative (txt-1, txt-2) and the rules for contained resources (dom-2 to dom-5).

use serde_json::{Map, Value};

use super::definitions::{choice_key, Constraint, Definitions, ElementDefinition, StructureDefinition};
use super::{invariants, profile};
use super::{narrative, primitives, references, Finding};

/// Walks one resource (and the resources inside it), collecting findings.
pub struct Walk<'a> {
    definitions: &'a Definitions,
    findings: Vec<Finding>,
}

/// Where a node is: the resource it is in (`%resource`) and the resource that contains that one
/// (`%rootResource`, whose `contained` a local reference `#id` points into).
struct Container<'v> {
    ids: &'v [String],
    resource: &'v Value,
    root: &'v Value,
}

/// Invariants Hearth checks natively (faster, and with better messages): they are not evaluated
/// again as FHIRPath.
const NATIVE: &[&str] = &["ele-1", "ext-1", "dom-2", "dom-3", "dom-4", "dom-5", "dom-6", "txt-1", "txt-2", "ref-1"];

impl<'a> Walk<'a> {
    pub fn new(definitions: &'a Definitions) -> Self {
        Walk { definitions, findings: Vec::new() }
    }

    /// What was found.
    pub fn into_findings(self) -> Vec<Finding> {
        self.findings
    }

    fn report(&mut self, rule: &'static str, location: &str, message: String) {
        self.findings.push(Finding::error(rule, location, message));
    }

    /// Walks a resource found at `location` (its type for a resource that stands alone).
    pub fn resource(&mut self, resource: &Value, location: &str) {
        let ids = contained_ids(resource);
        let container = Container { ids: &ids, resource, root: resource };
        self.resource_in(resource, location, &container);
    }

    fn resource_in(&mut self, resource: &Value, location: &str, container: &Container<'_>) {
        let Some(object) = resource.as_object() else { return };
        let Some(type_name) = object.get("resourceType").and_then(Value::as_str) else { return };
        let Some(definition) = self.definitions.core(type_name) else { return };
        let here = Container { ids: container.ids, resource, root: container.root };
        if let Some(root) = definition.element(type_name) {
            self.invariants(&root.constraint, resource, type_name, location, &here);
        }
        self.object(object, definition, type_name, location, &here);
        self.contained_rules(resource, location);
    }

    /// dom-2 to dom-5: what a contained resource may not have, and that it is referenced.
    fn contained_rules(&mut self, resource: &Value, location: &str) {
        let Some(contained) = resource.get("contained").and_then(Value::as_array) else { return };
        let local_refs = local_references(resource);
        for (index, inner) in contained.iter().enumerate() {
            let at = format!("{location}.contained[{index}]");
            if inner.get("contained").is_some() {
                self.report("dom-2", &at, "a contained resource cannot contain resources".into());
            }
            let meta = inner.get("meta");
            if meta.is_some_and(|m| m.get("versionId").is_some() || m.get("lastUpdated").is_some()) {
                self.report("dom-4", &at, "a contained resource has no meta.versionId or meta.lastUpdated".into());
            }
            if meta.is_some_and(|m| m.get("security").is_some()) {
                self.report("dom-5", &at, "a contained resource has no security labels of its own".into());
            }
            let id = inner.get("id").and_then(Value::as_str).unwrap_or("");
            let wanted = format!("#{id}");
            let referenced = local_refs.contains(&wanted);
            let refers_back = local_references(inner).iter().any(|r| r == "#");
            if !referenced && !refers_back {
                self.report(
                    "dom-3",
                    &at,
                    format!("contained resource '{id}' is referenced neither by the resource nor refers to it"),
                );
            }
        }
    }

    /// Walks an object whose definition is the element `path` of `definition`.
    fn object(
        &mut self,
        object: &Map<String, Value>,
        definition: &'a StructureDefinition,
        path: &str,
        location: &str,
        container: &Container<'_>,
    ) {
        for element in definition.children(path) {
            let name = element.name();
            let present: Vec<(String, Option<&str>)> = if element.is_choice() {
                let base = name.trim_end_matches("[x]");
                element
                    .types
                    .iter()
                    .map(|t| (choice_key(base, &t.code), Some(t.code.as_str())))
                    .filter(|(key, _)| object.contains_key(key) || object.contains_key(&format!("_{key}")))
                    .collect()
            } else {
                let key = name.to_string();
                let present = object.contains_key(&key) || object.contains_key(&format!("_{key}"));
                if present {
                    vec![(key, None)]
                } else {
                    Vec::new()
                }
            };
            if present.is_empty() {
                if element.min > 0 {
                    let at = format!("{location}.{name}");
                    self.report("cardinality", &at, format!("{} is required (minimum {})", element.path, element.min));
                }
                continue;
            }
            for (key, choice_type) in present {
                let type_code = choice_type.or_else(|| element.types.first().map(|t| t.code.as_str()));
                self.element_values(object, &key, element, type_code, definition, location, container);
            }
        }
    }

    /// Walks the values of `key` (and of `_key`, a primitive's id and extensions).
    #[allow(clippy::too_many_arguments)]
    fn element_values(
        &mut self,
        object: &Map<String, Value>,
        key: &str,
        element: &'a ElementDefinition,
        type_code: Option<&str>,
        definition: &'a StructureDefinition,
        location: &str,
        container: &Container<'_>,
    ) {
        let at = |index: Option<usize>| {
            let base = format!("{location}.{key}");
            match index {
                Some(i) => format!("{base}[{i}]"),
                None => base,
            }
        };
        for (index, value) in repetitions(object.get(key)) {
            if !value.is_null() {
                self.value(value, element, type_code, definition, &at(index), container);
            }
        }
        // A primitive's id and extensions: walked as an Element.
        for (index, companion) in repetitions(object.get(&format!("_{key}"))) {
            if let (Some(companion), Some(element_definition)) =
                (companion.as_object(), self.definitions.core("Element"))
            {
                self.object(companion, element_definition, "Element", &at(index), container);
            }
        }
    }

    /// Walks one value of an element of type `type_code`.
    fn value(
        &mut self,
        value: &Value,
        element: &'a ElementDefinition,
        type_code: Option<&str>,
        definition: &'a StructureDefinition,
        location: &str,
        container: &Container<'_>,
    ) {
        if let Some(reference) = &element.content_reference {
            let path = reference.trim_start_matches('#');
            if let Some(object) = value.as_object() {
                self.object(object, definition, path, location, container);
            }
            return;
        }
        let Some(type_code) = type_code else { return };
        match type_code {
            "Resource" => {
                let own = !element.path.ends_with(".contained");
                match own {
                    true => self.resource(value, location),
                    false => self.resource_in(value, location, container),
                }
                return;
            }
            "BackboneElement" | "Element" if definition.children(&element.path).next().is_some() => {
                self.invariants(&element.constraint, value, &element.path, location, container);
                if let Some(object) = value.as_object() {
                    self.object(object, definition, &element.path, location, container);
                }
                return;
            }
            _ => {}
        }
        let Some(type_definition) = self.definitions.core(type_code) else { return };
        if type_definition.is_primitive() {
            if let Some(problem) = primitives::problem(type_code, value) {
                self.report("value", location, format!("{type_code}: {problem}"));
            }
            if type_code == "xhtml" {
                for (rule, problem) in narrative::problems(value.as_str().unwrap_or("")) {
                    self.report(rule, location, problem);
                }
            }
        } else if let Some(object) = value.as_object() {
            self.invariants(&element.constraint, value, type_code, location, container);
            if let Some(root) = type_definition.element(type_code) {
                self.invariants(&root.constraint, value, type_code, location, container);
            }
            self.object(object, type_definition, type_code, location, container);
            match type_code {
                "Extension" => {
                    self.extension_rule(object, location);
                    self.known_extension(value, location, container);
                }
                "Reference" => {
                    self.local_reference(object, location, container);
                    self.reference_target(object, element, location, container);
                }
                _ => {}
            }
        }
        self.binding(value, element, type_code, location);
    }

    /// The error-severity invariants of an element, evaluated on its value (those checked
    /// natively aside).
    fn invariants(
        &mut self,
        constraints: &[Constraint],
        value: &Value,
        type_name: &str,
        location: &str,
        container: &Container<'_>,
    ) {
        let skip = |c: &Constraint| NATIVE.contains(&c.key.as_str()) || c.severity != "error";
        let at = invariants::At { value, type_name, location, resource: container.resource, root: container.root };
        invariants::evaluate(constraints, skip, &at, &mut self.findings);
    }

    /// An extension whose definition the server carries conforms to it (its value's type,
    /// its nested extensions, their cardinalities and bindings).
    fn known_extension(&mut self, extension: &Value, location: &str, container: &Container<'_>) {
        let Some(url) = extension.get("url").and_then(Value::as_str) else { return };
        let Some(definition) = self.definitions.get(url).filter(|d| d.kind == "complex-type") else { return };
        profile::check_at(
            self.definitions,
            extension,
            definition,
            "Extension",
            location,
            container.resource,
            &mut self.findings,
        );
    }

    /// ext-1: an extension has either a value or extensions, not both.
    fn extension_rule(&mut self, extension: &Map<String, Value>, location: &str) {
        let has_value = extension.keys().any(|k| k.starts_with("value"));
        let has_extensions = extension.get("extension").is_some();
        if has_value == has_extensions {
            self.report("ext-1", location, "an extension has either extensions or a value[x], not both".into());
        }
    }

    /// ref-1: a local reference names a contained resource of the resource.
    fn local_reference(&mut self, reference: &Map<String, Value>, location: &str, container: &Container<'_>) {
        let Some(target) = reference.get("reference").and_then(Value::as_str) else { return };
        let Some(id) = target.strip_prefix('#').filter(|id| !id.is_empty()) else { return };
        if !container.ids.iter().any(|known| known == id) {
            self.report("ref-1", location, format!("'{target}' names no contained resource"));
        }
    }

    /// A reference names a resource of a type its element allows (`Reference(Patient|Group)`).
    fn reference_target(
        &mut self,
        reference: &Map<String, Value>,
        element: &ElementDefinition,
        location: &str,
        container: &Container<'_>,
    ) {
        let Some(targets) = references::reference_type(element) else { return };
        let Some(allowed) = references::allowed_types(self.definitions, &targets.target_profile) else { return };
        let Some((found, _)) = references::referenced(reference, container.root) else { return };
        if !allowed.contains(&found.as_str()) {
            let message = format!("refers to a {found}, where {} allows {}", element.path, allowed.join(", "));
            self.report("reference-target", location, message);
        }
    }

    /// A required binding is an error when the code is not in its (expanded) value set.
    fn binding(&mut self, value: &Value, element: &ElementDefinition, type_code: &str, location: &str) {
        let Some(binding) = element.binding.as_ref().filter(|b| b.strength == "required") else { return };
        let Some(expansion) = self.definitions.expansion(&binding.value_set) else { return };
        let codings: Vec<&Value> = match type_code {
            "code" => {
                let Some(code) = value.as_str() else { return };
                if expansion.contains_code(code) {
                    return;
                }
                return self.binding_finding(location, format!("'{code}'"), &binding.value_set);
            }
            "Coding" => vec![value],
            "CodeableConcept" => {
                value.get("coding").and_then(Value::as_array).map(|c| c.iter().collect()).unwrap_or_default()
            }
            _ => return,
        };
        // A CodeableConcept with text only says nothing coded.
        if codings.is_empty() {
            return;
        }
        if !codings.iter().any(|coding| expansion.contains_coding(coding)) {
            let shown: Vec<String> = codings
                .iter()
                .map(|c| {
                    let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    format!("{}|{}", text("system"), text("code"))
                })
                .collect();
            self.binding_finding(location, shown.join(", "), &binding.value_set);
        }
    }

    fn binding_finding(&mut self, location: &str, shown: String, value_set: &str) {
        self.report("binding", location, format!("{shown} is not in the value set {value_set}"));
    }
}

/// The values of a JSON member, each with its index when the member is an array.
fn repetitions(member: Option<&Value>) -> Vec<(Option<usize>, &Value)> {
    match member {
        Some(Value::Array(items)) => items.iter().enumerate().map(|(i, v)| (Some(i), v)).collect(),
        Some(value) => vec![(None, value)],
        None => Vec::new(),
    }
}

fn contained_ids(resource: &Value) -> Vec<String> {
    let contained = resource.get("contained").and_then(Value::as_array).into_iter().flatten();
    contained.filter_map(|c| c.get("id").and_then(Value::as_str)).map(str::to_string).collect()
}

/// Every string in `value` that is a local reference (`#…`), wherever it is (references,
/// canonicals and uris alike).
fn local_references(value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::String(text) if text.starts_with('#') => found.push(text.clone()),
            Value::Array(items) => stack.extend(items),
            Value::Object(object) => stack.extend(object.values()),
            _ => {}
        }
    }
    found
}
