//! Structural validation of incoming resources.
//!
//! Two passes, both before anything is stored:
//! 1. rules the official JSON schema cannot express: no empty strings, arrays or objects, no stray
//!    `null`s ([`check_no_empty_values`]);
//! 2. the official FHIR R4 JSON schema (`conformance/fhir.schema.json`), one compiled validator
//!    per resource type so that errors point at the element instead of the whole document
//!    (the root schema is a `oneOf` over all 146 types).
//!
//! Every problem becomes an [`Issue`] whose `expression` is a FHIRPath location.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{LazyLock, OnceLock};

use jsonschema::{Draft, Registry, Validator};
use serde_json::{json, Value};

use super::{ErrorKind, FhirError, Issue, IssueCode};

/// The most issues reported for one resource; the rest are summarised.
const MAX_ISSUES: usize = 20;
/// Diagnostics longer than this are cut (error texts can quote large values).
const MAX_DIAGNOSTIC_CHARS: usize = 300;

static SCHEMA_TEXT: &str = include_str!("../../conformance/fhir.schema.json");

/// The official schema's `id`, under which its definitions are registered.
const SCHEMA_URI: &str = "http://hl7.org/fhir/json-schema/4.0";

/// The parsed official schema.
static SCHEMA: LazyLock<Value> =
    LazyLock::new(|| serde_json::from_str(SCHEMA_TEXT).expect("conformance/fhir.schema.json is valid JSON"));

/// The official schema, registered once, and one lazily compiled validator per resource type
/// that refers into it (a validator built from a copy of all definitions held ~3.7 MB each).
struct SchemaSet {
    registry: Registry<'static>,
    validators: HashMap<String, OnceLock<Option<Validator>>>,
}

static SCHEMAS: LazyLock<SchemaSet> = LazyLock::new(|| {
    let schema: &'static Value = &SCHEMA;
    let validators = schema["discriminator"]["mapping"]
        .as_object()
        .map(|mapping| mapping.keys().map(|name| (name.clone(), OnceLock::new())).collect())
        .unwrap_or_default();
    let registry = Registry::new()
        .draft(Draft::Draft6)
        .add(SCHEMA_URI, schema)
        .and_then(|registry| registry.prepare())
        .expect("the official schema registers");
    SchemaSet { registry, validators }
});

/// Every FHIR R4 resource type name, sorted.
pub fn resource_types() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = SCHEMAS.validators.keys().map(String::as_str).collect();
    names.sort_unstable();
    names
}

/// Whether `name` is a FHIR R4 resource type.
pub fn is_resource_type(name: &str) -> bool {
    SCHEMAS.validators.contains_key(name)
}

fn validator_for(resource_type: &str) -> Option<&'static Validator> {
    let cell = SCHEMAS.validators.get(resource_type)?;
    cell.get_or_init(|| {
        let schema = json!({"$ref": format!("{SCHEMA_URI}#/definitions/{resource_type}")});
        match jsonschema::options().with_draft(Draft::Draft6).with_registry(&SCHEMAS.registry).build(&schema) {
            Ok(validator) => Some(validator),
            Err(error) => {
                tracing::error!(resource_type, %error, "cannot compile the JSON schema of a resource type");
                None
            }
        }
    })
    .as_ref()
}

/// Validates a resource whose type the caller expects to be `expected_type`.
pub fn validate_resource(resource: &Value, expected_type: &str) -> Result<(), FhirError> {
    let actual = super::resource::resource_type_of(resource)?;
    if !is_resource_type(actual) {
        return Err(FhirError::new(
            ErrorKind::BadRequest,
            IssueCode::NotSupported,
            format!("unknown resource type '{actual}'"),
        )
        .with_expression("resourceType"));
    }
    if actual != expected_type {
        return Err(FhirError::bad_request(format!(
            "resourceType '{actual}' does not match the type '{expected_type}' of the request URL"
        ))
        .with_expression("resourceType"));
    }
    let mut issues = Vec::new();
    check_no_empty_values(resource, actual, &mut issues);
    if issues.is_empty() {
        schema_issues(resource, actual, actual, &mut issues);
    }
    if issues.is_empty() {
        issues
            .extend(crate::validation::base(resource, actual).into_iter().map(crate::validation::Finding::into_issue));
    }
    if issues.is_empty() {
        return Ok(());
    }
    if issues.len() > MAX_ISSUES {
        let more = issues.len() - MAX_ISSUES;
        issues.truncate(MAX_ISSUES);
        issues.push(Issue::error(IssueCode::Invalid, format!("{more} more issues not shown")));
    }
    Err(FhirError::with_issues(ErrorKind::BadRequest, issues))
}

/// Validates `resource` (whose FHIRPath location is `root`) against its type's schema, then
/// each resource embedded in it the same way.
fn schema_issues(resource: &Value, resource_type: &str, root: &str, issues: &mut Vec<Issue>) {
    let Some(validator) = validator_for(resource_type) else {
        issues.push(Issue::error(IssueCode::Exception, format!("no schema available for {resource_type}")));
        return;
    };
    if validator.is_valid(resource) {
        for (location, embedded) in embedded_resources(resource, resource_type, root) {
            if let Some(embedded_type) = embedded.get("resourceType").and_then(Value::as_str) {
                schema_issues(embedded, embedded_type, &location, issues);
            }
        }
        return;
    }
    for error in validator.iter_errors(resource).take(MAX_ISSUES + 1) {
        let location = pointer_to_fhirpath(root, error.instance_path().as_str());
        let mut message = choice_message(&error, &location).unwrap_or_else(|| error.to_string());
        if message.chars().count() > MAX_DIAGNOSTIC_CHARS {
            message = message.chars().take(MAX_DIAGNOSTIC_CHARS).collect::<String>() + "…";
        }
        issues.push(Issue::error(IssueCode::Structure, format!("{location}: {message}")).at(location));
    }
}

/// The resources embedded in a resource, with their FHIRPath locations: `contained`, Bundle
/// entries and responses' outcomes, and Parameters resources (parts included). The schema only
/// checks that these are objects with a known `resourceType` (see `conformance/generate.py`).
fn embedded_resources<'a>(resource: &'a Value, resource_type: &str, root: &str) -> Vec<(String, &'a Value)> {
    let items = |value: Option<&'a Value>| value.and_then(Value::as_array).into_iter().flatten().enumerate();
    let mut found: Vec<(String, &'a Value)> =
        items(resource.get("contained")).map(|(n, r)| (format!("{root}.contained[{n}]"), r)).collect();
    match resource_type {
        "Bundle" => {
            for (n, entry) in items(resource.get("entry")) {
                if let Some(inner) = entry.get("resource") {
                    found.push((format!("{root}.entry[{n}].resource"), inner));
                }
                if let Some(outcome) = entry.get("response").and_then(|r| r.get("outcome")) {
                    found.push((format!("{root}.entry[{n}].response.outcome"), outcome));
                }
            }
        }
        "Parameters" => {
            let mut stack: Vec<(String, &'a Value)> =
                items(resource.get("parameter")).map(|(n, p)| (format!("{root}.parameter[{n}]"), p)).collect();
            while let Some((location, parameter)) = stack.pop() {
                if let Some(inner) = parameter.get("resource") {
                    found.push((format!("{location}.resource"), inner));
                }
                stack.extend(items(parameter.get("part")).map(|(n, p)| (format!("{location}.part[{n}]"), p)));
            }
        }
        _ => {}
    }
    found
}

/// A readable message for the `oneOf` rules that guard choice elements (`value[x]`): the
/// library's own message would print the whole instance.
fn choice_message(error: &jsonschema::ValidationError<'_>, location: &str) -> Option<String> {
    use jsonschema::error::ValidationErrorKind;
    let multiple = match error.kind() {
        ValidationErrorKind::OneOfMultipleValid { .. } => true,
        ValidationErrorKind::OneOfNotValid { .. } => false,
        _ => return None,
    };
    let pointer = error.schema_path().as_str().strip_prefix("/definitions")?;
    let branches = SCHEMA["definitions"].pointer(pointer)?.as_array()?;
    let variants: Vec<&str> = branches.iter().filter_map(|b| b.get("required")?.get(0)?.as_str()).collect();
    let base = choice_base(&variants)?;
    if multiple {
        let given: Vec<&str> = variants.iter().copied().filter(|v| error.instance().get(*v).is_some()).collect();
        Some(format!("{location}: only one type of {base}[x] may be given, not {}", given.join(" and ")))
    } else {
        Some(format!("{location}: {base}[x] is required (one of {})", variants.join(", ")))
    }
}

/// The element name that choice variants share: `deceased` for `deceasedBoolean`/`deceasedDateTime`.
fn choice_base<'a>(variants: &[&'a str]) -> Option<&'a str> {
    let first = *variants.first()?;
    let common = variants.iter().map(|v| first.bytes().zip(v.bytes()).take_while(|(a, b)| a == b).count()).min()?;
    (1..=common)
        .rev()
        .find(|&k| variants.iter().all(|v| v.as_bytes().get(k).is_some_and(u8::is_ascii_uppercase)))
        .map(|k| &first[..k])
}

/// Converts a JSON pointer (`/name/0/given`) into a FHIRPath location (`Patient.name[0].given`).
pub fn pointer_to_fhirpath(resource_type: &str, pointer: &str) -> String {
    let mut path = resource_type.to_string();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.bytes().all(|b| b.is_ascii_digit()) && !segment.is_empty() {
            path.push_str(&format!("[{segment}]"));
        } else {
            path.push('.');
            path.push_str(&segment);
        }
    }
    path
}

/// FHIR forbids empty strings, arrays and objects. `null` is refused too: FHIR allows it only as
/// a placeholder in a primitive array whose extensions sit in a `_name` twin, and the official
/// JSON schema does not accept even that, so Hearth follows the schema.
pub fn check_no_empty_values(value: &Value, path: &str, issues: &mut Vec<Issue>) {
    check_node(value, &mut path.to_string(), issues);
}

/// Walks the resource with one path buffer: every resource written passes here, so no string
/// is built per element unless an issue needs it.
fn check_node(value: &Value, path: &mut String, issues: &mut Vec<Issue>) {
    match value {
        Value::String(s) if s.is_empty() => issues.push(empty_issue("an empty string", path)),
        Value::Array(items) if items.is_empty() => issues.push(empty_issue("an empty array", path)),
        Value::Object(members) if members.is_empty() => issues.push(empty_issue("an empty object", path)),
        Value::Null => issues.push(empty_issue("null", path)),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let length = path.len();
                let _ = write!(path, "[{i}]");
                check_node(item, path, issues);
                path.truncate(length);
            }
        }
        Value::Object(members) => {
            for (name, member) in members {
                let length = path.len();
                path.push('.');
                path.push_str(name);
                check_node(member, path, issues);
                path.truncate(length);
            }
        }
        _ => {}
    }
}

fn empty_issue(what: &str, path: &str) -> Issue {
    Issue::error(IssueCode::Invalid, format!("{path}: {what} is not allowed in FHIR resources")).at(path)
}

impl FhirError {
    /// Sets the FHIRPath location of every issue that has none.
    pub fn with_expression(mut self, expression: &str) -> Self {
        for issue in &mut self.issues {
            issue.expression.get_or_insert_with(|| expression.to_string());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issues_of(resource: Value) -> Vec<Issue> {
        let resource_type = resource["resourceType"].as_str().unwrap_or("Patient").to_string();
        match validate_resource(&resource, &resource_type) {
            Ok(()) => vec![],
            Err(error) => error.issues,
        }
    }

    #[test]
    fn knows_all_resource_types() {
        assert_eq!(resource_types().len(), 146);
        assert!(is_resource_type("Appointment"));
        assert!(!is_resource_type("Appointments"));
    }

    #[test]
    fn accepts_a_valid_patient() {
        let patient = json!({"resourceType": "Patient", "id": "p1", "active": true,
            "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
            "birthDate": "1974-12-25", "gender": "male"});
        assert_eq!(issues_of(patient), vec![]);
    }

    #[test]
    fn accepts_decimals_as_written() {
        let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
            "valueQuantity": {"value": 185.50, "unit": "lbs"}});
        assert_eq!(issues_of(obs), vec![]);
    }

    #[test]
    fn names_the_unknown_element() {
        let issues = issues_of(json!({"resourceType": "Patient", "favouriteColour": "blue"}));
        assert_eq!(issues.len(), 1);
        assert!(issues[0].diagnostics.contains("favouriteColour"), "{issues:?}");
        assert_eq!(issues[0].expression.as_deref(), Some("Patient"));
    }

    #[test]
    fn names_the_bad_primitive() {
        let issues = issues_of(json!({"resourceType": "Patient", "birthDate": "1974-13-45"}));
        assert_eq!(issues[0].expression.as_deref(), Some("Patient.birthDate"));
        let issues = issues_of(json!({"resourceType": "Patient", "name": [{"given": ["a", 7]}]}));
        assert_eq!(issues[0].expression.as_deref(), Some("Patient.name[0].given[1]"));
        let issues = issues_of(json!({"resourceType": "Patient", "active": "yes"}));
        assert_eq!(issues[0].expression.as_deref(), Some("Patient.active"));
    }

    #[test]
    fn rejects_empty_values() {
        for (resource, location) in [
            (json!({"resourceType": "Patient", "gender": ""}), "Patient.gender"),
            (json!({"resourceType": "Patient", "name": []}), "Patient.name"),
            (json!({"resourceType": "Patient", "name": [{}]}), "Patient.name[0]"),
            (json!({"resourceType": "Patient", "active": null}), "Patient.active"),
        ] {
            let issues = issues_of(resource);
            assert_eq!(issues[0].expression.as_deref(), Some(location), "{issues:?}");
        }
    }

    #[test]
    fn refuses_null_placeholders_like_the_official_schema() {
        let patient = json!({"resourceType": "Patient", "name": [{"given": ["A", null],
            "_given": [null, {"extension": [{"url": "http://x", "valueString": "y"}]}]}]});
        let issues = issues_of(patient);
        assert_eq!(issues[0].expression.as_deref(), Some("Patient.name[0].given[1]"));
    }

    #[test]
    fn closes_the_gaps_of_the_official_schema() {
        let cases = [
            (json!({"resourceType": "Observation", "status": "final", "code": "abc"}), "Observation.code", "object"),
            (
                json!({"resourceType": "Patient", "multipleBirthInteger": 1.5}),
                "Patient.multipleBirthInteger",
                "not a multiple of 1",
            ),
            (
                json!({"resourceType": "Appointment", "status": "booked", "participant": [{"status": "accepted"}], "minutesDuration": 0}),
                "Appointment.minutesDuration",
                "minimum",
            ),
            (
                json!({"resourceType": "Observation", "code": {"text": "x"}}),
                "Observation",
                "\"status\" is a required property",
            ),
            (
                json!({"resourceType": "Patient", "deceasedBoolean": true, "deceasedDateTime": "2020"}),
                "Patient",
                "only one type of deceased[x] may be given, not deceasedBoolean and deceasedDateTime",
            ),
            (
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "component": [{"code": {"text": "y"}, "valueQuantity": {"value": 1}, "valueString": "z"}]}),
                "Observation.component[0]",
                "only one type of value[x]",
            ),
            (
                json!({"resourceType": "Questionnaire", "status": "draft",
                "useContext": [{"code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "focus"}}]}),
                "Questionnaire.useContext[0]",
                "value[x] is required (one of valueCodeableConcept,",
            ),
        ];
        for (resource, location, text) in cases {
            let issues = issues_of(resource.clone());
            assert!(
                issues.iter().any(|i| i.expression.as_deref() == Some(location) && i.diagnostics.contains(text)),
                "{resource} → {issues:?}"
            );
        }
        let extension = json!({"resourceType": "Patient", "extension": [{"url": "http://x", "valueString": "a", "valueBoolean": true}]});
        assert_eq!(issues_of(extension)[0].expression.as_deref(), Some("Patient.extension[0]"));
    }

    #[test]
    fn validates_embedded_resources_with_their_own_schema() {
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {"resourceType": "Patient", "active": true}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": "abc"}}]});
        let issues = issues_of(bundle);
        assert_eq!(issues[0].expression.as_deref(), Some("Bundle.entry[1].resource.code"), "{issues:?}");
        let contained = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "contained": [{"resourceType": "Patient", "id": "p", "gender": 7}]});
        assert_eq!(issues_of(contained)[0].expression.as_deref(), Some("Observation.contained[0].gender"));
        let parameters = json!({"resourceType": "Parameters", "parameter": [{"name": "a", "part": [
            {"name": "b", "resource": {"resourceType": "Patient", "birthDate": "nope"}}]}]});
        assert_eq!(
            issues_of(parameters)[0].expression.as_deref(),
            Some("Parameters.parameter[0].part[0].resource.birthDate")
        );
        let unknown = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Spaceship"}}]});
        assert_eq!(issues_of(unknown)[0].expression.as_deref(), Some("Bundle.entry[0].resource.resourceType"));
    }

    #[test]
    fn finds_the_base_of_choice_variants() {
        assert_eq!(choice_base(&["deceasedBoolean", "deceasedDateTime"]), Some("deceased"));
        assert_eq!(choice_base(&["effectiveDateTime", "effectiveDuration"]), Some("effective"));
        assert_eq!(choice_base(&["multipleBirthBoolean", "multipleBirthInteger"]), Some("multipleBirth"));
    }

    #[test]
    fn rejects_type_mismatch_and_unknown_types() {
        let error = validate_resource(&json!({"resourceType": "Patient"}), "Observation").unwrap_err();
        assert_eq!(error.status(), 400);
        let error = validate_resource(&json!({"resourceType": "Spaceship"}), "Spaceship").unwrap_err();
        assert!(error.issues[0].diagnostics.contains("Spaceship"));
    }
}
