//! The two patch formats FHIR R4 defines for the `patch` interaction.
//!
//! - JSON Patch (RFC 6902, `application/json-patch+json`) through the `json-patch` crate.
//! - JSON Merge Patch (RFC 7386, `application/merge-patch+json`), which FHIR R4 does not name
//!   but clients use (fhirpy's `patch()`, Aidbox): also through `json-patch`.
//! - FHIRPath Patch (a `Parameters` resource with `operation` parts). Paths are the simple
//!   FHIRPath form `Type.element[index].element…`, which is what clients send in practice;
//!   functions such as `where()` in a patch path are rejected with a clear 400.

use serde_json::{Map, Value};

use super::{ErrorKind, FhirError, IssueCode};

/// A parsed patch document, checked before the resource it applies to is even looked up.
#[derive(Debug)]
pub enum PatchDocument {
    /// RFC 6902 JSON Patch.
    Json(json_patch::Patch),
    /// FHIRPath Patch operations.
    FhirPath(Vec<Operation>),
    /// RFC 7386 JSON Merge Patch: members to set, `null` for members to remove.
    Merge(Value),
}

impl PatchDocument {
    /// Parses a JSON Patch document (400 when malformed).
    pub fn json_patch(document: &Value) -> Result<Self, FhirError> {
        serde_json::from_value(document.clone())
            .map(PatchDocument::Json)
            .map_err(|e| FhirError::bad_request(format!("not a valid JSON Patch document: {e}")))
    }

    /// A JSON Merge Patch document: an object (400 otherwise; a merge patch that is not an
    /// object would replace the whole resource with it).
    pub fn merge_patch(document: &Value) -> Result<Self, FhirError> {
        match document {
            Value::Object(members) if members.get("resourceType").is_none_or(Value::is_string) => {
                Ok(PatchDocument::Merge(document.clone()))
            }
            _ => Err(FhirError::bad_request("a JSON Merge Patch body must be a JSON object")),
        }
    }

    /// Parses a FHIRPath Patch `Parameters` resource (400 when malformed).
    pub fn fhirpath_patch(parameters: &Value) -> Result<Self, FhirError> {
        if parameters.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
            return Err(FhirError::bad_request("a FHIRPath Patch body must be a Parameters resource"));
        }
        let operations = parameters.get("parameter").and_then(Value::as_array).cloned().unwrap_or_default();
        if operations.is_empty() {
            return Err(FhirError::bad_request("the FHIRPath Patch has no operation"));
        }
        let parsed = operations.iter().enumerate().map(|(n, operation)| {
            if operation.get("name").and_then(Value::as_str) != Some("operation") {
                return Err(FhirError::bad_request(format!("Parameters.parameter[{n}] is not named 'operation'")));
            }
            Operation::parse(operation)
                .map_err(|message| FhirError::bad_request(format!("Parameters.parameter[{n}]: {message}")))
        });
        parsed.collect::<Result<Vec<_>, _>>().map(PatchDocument::FhirPath)
    }

    /// Applies the patch to `resource` (422 when it does not fit the resource).
    pub fn apply(&self, resource: &mut Value) -> Result<(), FhirError> {
        match self {
            PatchDocument::Merge(document) => {
                json_patch::merge(resource, document);
                Ok(())
            }
            PatchDocument::Json(patch) => json_patch::patch(resource, patch).map_err(|e| {
                FhirError::new(
                    ErrorKind::Unprocessable,
                    IssueCode::Processing,
                    format!("JSON Patch could not be applied: {e}"),
                )
            }),
            PatchDocument::FhirPath(operations) => {
                for (n, op) in operations.iter().enumerate() {
                    op.apply(resource).map_err(|message| {
                        FhirError::new(
                            ErrorKind::Unprocessable,
                            IssueCode::Processing,
                            format!("operation {n}: {message}"),
                        )
                    })?;
                }
                Ok(())
            }
        }
    }
}

/// One step of a FHIRPath path: an element name with an optional list index.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    name: String,
    index: Option<usize>,
}

/// One FHIRPath Patch operation.
#[derive(Debug)]
pub struct Operation {
    kind: String,
    path: Vec<Step>,
    name: Option<String>,
    value: Option<Value>,
    index: Option<usize>,
    source: Option<usize>,
    destination: Option<usize>,
}

impl Operation {
    fn parse(operation: &Value) -> Result<Self, String> {
        let parts = operation.get("part").and_then(Value::as_array).ok_or("the operation has no parts")?;
        let part = |name: &str| parts.iter().find(|p| p.get("name").and_then(Value::as_str) == Some(name));
        let text = |name: &str| part(name).and_then(primitive_value).and_then(|v| v.as_str().map(str::to_string));
        let number =
            |name: &str| part(name).and_then(|p| p.get("valueInteger")).and_then(Value::as_u64).map(|n| n as usize);
        let kind = text("type").ok_or("the operation has no 'type' part")?;
        let path = parse_path(&text("path").ok_or("the operation has no 'path' part")?)?;
        let value = part("value").map(part_value).transpose()?;
        let op = Operation {
            kind,
            path,
            name: text("name"),
            value,
            index: number("index"),
            source: number("source"),
            destination: number("destination"),
        };
        let missing = |what: &str| Err(format!("a '{}' operation needs a '{what}' part", op.kind));
        match op.kind.as_str() {
            "add" if op.name.is_none() => missing("name"),
            "add" | "replace" | "insert" if op.value.is_none() => missing("value"),
            "insert" if op.index.is_none() => missing("index"),
            "move" if op.source.is_none() || op.destination.is_none() => missing("source and destination"),
            "add" | "replace" | "insert" | "delete" | "move" => Ok(op),
            other => Err(format!("unknown operation type '{other}'")),
        }
    }

    fn apply(&self, resource: &mut Value) -> Result<(), String> {
        match self.kind.as_str() {
            "delete" => {
                delete_at(resource, &self.path);
                Ok(())
            }
            "replace" => {
                let target = locate(resource, &self.path).ok_or("the path matches no element")?;
                *target = self.value.clone().unwrap_or(Value::Null);
                Ok(())
            }
            "add" => {
                let target = locate(resource, &self.path).ok_or("the path matches no element")?;
                let object =
                    target.as_object_mut().ok_or("the path does not point at an element that can hold children")?;
                let name = self.name.clone().unwrap_or_default();
                let value = self.value.clone().unwrap_or(Value::Null);
                match object.get_mut(&name) {
                    Some(Value::Array(items)) => items.push(value),
                    Some(_) => return Err(format!("'{name}' already has a value: use replace")),
                    None if is_list_element(&name) => {
                        object.insert(name, Value::Array(vec![value]));
                    }
                    None => {
                        object.insert(name, value);
                    }
                }
                Ok(())
            }
            "insert" => {
                let list =
                    locate(resource, &self.path).and_then(Value::as_array_mut).ok_or("the path is not a list")?;
                let index = self.index.unwrap_or(0);
                if index > list.len() {
                    return Err(format!("index {index} is past the end of the list ({} items)", list.len()));
                }
                list.insert(index, self.value.clone().unwrap_or(Value::Null));
                Ok(())
            }
            "move" => {
                let list =
                    locate(resource, &self.path).and_then(Value::as_array_mut).ok_or("the path is not a list")?;
                let (from, to) = (self.source.unwrap_or(0), self.destination.unwrap_or(0));
                if from >= list.len() || to >= list.len() {
                    return Err(format!("source {from} or destination {to} is outside the list"));
                }
                let item = list.remove(from);
                list.insert(to, item);
                Ok(())
            }
            _ => Err(format!("unknown operation type '{}'", self.kind)),
        }
    }
}

/// Elements that FHIR defines as lists and that are commonly added with `add`. When an `add`
/// creates an element that does not exist yet, these are created as one-item arrays.
fn is_list_element(name: &str) -> bool {
    matches!(
        name,
        "identifier"
            | "name"
            | "telecom"
            | "address"
            | "contact"
            | "communication"
            | "extension"
            | "modifierExtension"
            | "coding"
            | "category"
            | "note"
            | "given"
            | "line"
            | "tag"
            | "profile"
            | "security"
            | "link"
            | "generalPractitioner"
            | "participant"
            | "performer"
            | "reasonCode"
            | "dosageInstruction"
            | "component"
            | "result"
            | "payload"
            | "recipient"
            | "lineItem"
    )
}

/// Parses `Patient.name[0].given` into steps, dropping the leading type name.
fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    if path.contains('(') || path.contains(' ') {
        return Err(format!("path '{path}': only simple paths (Type.element[index]…) are supported"));
    }
    let mut steps = Vec::new();
    for (position, raw) in path.split('.').enumerate() {
        let (name, index) = match raw.split_once('[') {
            Some((name, rest)) => {
                let digits = rest.strip_suffix(']').ok_or(format!("path '{path}': unclosed index"))?;
                (name, Some(digits.parse::<usize>().map_err(|_| format!("path '{path}': bad index '{digits}'"))?))
            }
            None => (raw, None),
        };
        if name.is_empty() {
            return Err(format!("path '{path}' has an empty step"));
        }
        let is_type_name = position == 0 && name.starts_with(|c: char| c.is_ascii_uppercase());
        if !is_type_name {
            steps.push(Step { name: name.to_string(), index });
        }
    }
    Ok(steps)
}

fn locate<'a>(mut node: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    for step in path {
        node = node.as_object_mut()?.get_mut(&step.name)?;
        if let Some(index) = step.index {
            node = node.as_array_mut()?.get_mut(index)?;
        }
    }
    Some(node)
}

fn delete_at(resource: &mut Value, path: &[Step]) {
    let Some((last, parents)) = path.split_last() else { return };
    let Some(parent) = locate(resource, parents).and_then(Value::as_object_mut) else { return };
    match last.index {
        None => {
            parent.remove(&last.name);
        }
        Some(index) => {
            if let Some(Value::Array(items)) = parent.get_mut(&last.name) {
                if index < items.len() {
                    items.remove(index);
                }
                if items.is_empty() {
                    parent.remove(&last.name);
                }
            }
        }
    }
}

/// The `value[x]` of a Parameters part, if it has one.
fn primitive_value(part: &Value) -> Option<&Value> {
    part.as_object()?.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| v)
}

/// The value of a `value` part: its `value[x]`, or an element assembled from its sub-parts.
fn part_value(part: &Value) -> Result<Value, String> {
    if let Some(value) = primitive_value(part) {
        return Ok(value.clone());
    }
    let parts = part.get("part").and_then(Value::as_array).ok_or("the 'value' part has neither value[x] nor parts")?;
    let mut object = Map::new();
    for sub in parts {
        let name = sub.get("name").and_then(Value::as_str).ok_or("a value sub-part has no name")?;
        object.insert(name.to_string(), part_value(sub)?);
    }
    Ok(Value::Object(object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn operation(parts: Value) -> Value {
        json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": parts}]})
    }

    #[test]
    fn json_patch_replaces_and_fails_cleanly() {
        let mut patient = json!({"resourceType": "Patient", "active": true});
        let patch = PatchDocument::json_patch(&json!([{"op": "replace", "path": "/active", "value": false}])).unwrap();
        patch.apply(&mut patient).unwrap();
        assert_eq!(patient["active"], json!(false));
        let missing = PatchDocument::json_patch(&json!([{"op": "remove", "path": "/nothing"}])).unwrap();
        assert_eq!(missing.apply(&mut patient).unwrap_err().status(), 422);
        assert_eq!(PatchDocument::json_patch(&json!({"op": "remove"})).unwrap_err().status(), 400);
    }

    #[test]
    fn fhirpath_patch_replace_add_insert_delete_move() {
        let mut patient = json!({"resourceType": "Patient", "birthDate": "1970-01-01",
            "name": [{"given": ["A", "B"]}]});
        let steps = [
            json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.birthDate"},
                {"name": "value", "valueDate": "1980-02-02"}]),
            json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
                {"name": "name", "valueString": "telecom"},
                {"name": "value", "part": [{"name": "system", "valueCode": "phone"}, {"name": "value", "valueString": "555"}]}]),
            json!([{"name": "type", "valueCode": "insert"}, {"name": "path", "valueString": "Patient.name[0].given"},
                {"name": "index", "valueInteger": 0}, {"name": "value", "valueString": "Z"}]),
            json!([{"name": "type", "valueCode": "move"}, {"name": "path", "valueString": "Patient.name[0].given"},
                {"name": "source", "valueInteger": 0}, {"name": "destination", "valueInteger": 2}]),
            json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.name[0].given[0]"}]),
        ];
        for step in steps {
            PatchDocument::fhirpath_patch(&operation(step)).unwrap().apply(&mut patient).unwrap();
        }
        assert_eq!(
            patient,
            json!({"resourceType": "Patient", "birthDate": "1980-02-02",
            "name": [{"given": ["B", "Z"]}], "telecom": [{"system": "phone", "value": "555"}]})
        );
    }

    #[test]
    fn fhirpath_patch_errors() {
        let mut patient = json!({"resourceType": "Patient"});
        let bad =
            operation(json!([{"name": "type", "valueCode": "explode"}, {"name": "path", "valueString": "Patient"}]));
        assert_eq!(PatchDocument::fhirpath_patch(&bad).unwrap_err().status(), 400);
        let missing = operation(
            json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.gender"},
            {"name": "value", "valueCode": "male"}]),
        );
        assert_eq!(PatchDocument::fhirpath_patch(&missing).unwrap().apply(&mut patient).unwrap_err().status(), 422);
        let functions = operation(json!([{"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.name.where(use='old')"}]));
        assert_eq!(PatchDocument::fhirpath_patch(&functions).unwrap_err().status(), 400);
    }
}
