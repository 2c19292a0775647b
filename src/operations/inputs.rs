//! The inputs of one invocation, read from the URL, a `Parameters` body or a bare resource,
//! and checked against the operation's definition: every name known, every required one
//! given, no more values than allowed, each value of the declared type (FHIR R4
//! operations.html "Executing operations").

use serde_json::Value;

use super::definition::{Definition, ParameterDefinition};
use crate::model::validate::is_resource_type;
use crate::model::{ErrorKind, FhirError, Issue, IssueCode};

/// One input value: a primitive in its lexical form, or a resource.
#[derive(Debug, Clone, PartialEq)]
pub enum InputValue {
    Text(String),
    Resource(Value),
}

/// The checked inputs of one invocation, in the order given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    values: Vec<(String, InputValue)>,
}

impl Inputs {
    /// The text of a single-valued primitive input.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.values.iter().find(|(n, _)| n == name).and_then(|(_, value)| match value {
            InputValue::Text(text) => Some(text.as_str()),
            InputValue::Resource(_) => None,
        })
    }

    /// Every text given for `name`.
    pub fn texts<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.values.iter().filter(move |(n, _)| n == name).filter_map(|(_, value)| match value {
            InputValue::Text(text) => Some(text.as_str()),
            InputValue::Resource(_) => None,
        })
    }

    /// The resource given for `name`.
    pub fn resource(&self, name: &str) -> Option<&Value> {
        self.values.iter().find(|(n, _)| n == name).and_then(|(_, value)| match value {
            InputValue::Resource(resource) => Some(resource),
            InputValue::Text(_) => None,
        })
    }

    /// A boolean input (`false` when absent); checked to be `true` or `false` already.
    pub fn flag(&self, name: &str) -> bool {
        self.text(name) == Some("true")
    }

    /// An integer input; checked to be a 32-bit integer already.
    pub fn integer(&self, name: &str) -> Option<i64> {
        self.text(name).and_then(|t| t.parse().ok())
    }
}

/// The FHIRPath of input `name` in a `Parameters` resource, for an issue's `expression`.
pub fn parameter_path(name: &str) -> String {
    format!("Parameters.parameter.where(name = '{name}')")
}

/// A 400 for input `name` ("parameter 'name': …"), at its place in the `Parameters`.
pub fn bad_parameter(name: &str, message: impl std::fmt::Display) -> FhirError {
    let issue = Issue::error(IssueCode::Value, format!("parameter '{name}': {message}")).at(parameter_path(name));
    FhirError::with_issues(ErrorKind::BadRequest, vec![issue])
}

/// A 422 with one business-rule issue at `expression`.
pub fn unprocessable(message: impl Into<String>, expression: &str) -> FhirError {
    FhirError::unprocessable(vec![Issue::error(IssueCode::BusinessRule, message.into()).at(expression.to_string())])
}

/// Reads and checks the inputs of an invocation: the URL's parameters, and the body when
/// there is one (a `Parameters` resource, or the bare resource of an operation whose only
/// resource input it stands for).
pub fn read(definition: &Definition, query: &[(String, String)], body: Option<Value>) -> Result<Inputs, FhirError> {
    let mut values: Vec<(String, InputValue)> = Vec::new();
    let mut issues = Vec::new();
    for (name, value) in query {
        match definition.inputs().find(|p| &p.name == name) {
            Some(parameter) if parameter.is_resource() => issues.push(Issue::error(
                IssueCode::NotSupported,
                format!("parameter '{name}' is a resource: POST it in a Parameters body"),
            )),
            _ => values.push((name.clone(), InputValue::Text(value.clone()))),
        }
    }
    match body {
        None => {}
        Some(body) if body.get("resourceType").and_then(Value::as_str) == Some("Parameters") => {
            read_parameters(&body, &mut values, &mut issues)
        }
        Some(body) => match definition.single_resource_input() {
            Some(parameter) => values.push((parameter.name.clone(), InputValue::Resource(body))),
            None => issues.push(Issue::error(
                IssueCode::Invalid,
                format!("${} takes a Parameters body, not a {}", definition.code, resource_type(&body)),
            )),
        },
    }
    for (name, value) in &values {
        match definition.inputs().find(|p| &p.name == name) {
            None => issues.push(unknown(definition, name)),
            Some(parameter) => issues.extend(check_type(parameter, value)),
        }
    }
    for parameter in definition.inputs() {
        let given = values.iter().filter(|(name, _)| name == &parameter.name).count();
        if given < parameter.min as usize {
            issues.push(
                Issue::error(IssueCode::Required, format!("parameter '{}' is required", parameter.name))
                    .at(parameter_path(&parameter.name)),
            );
        }
        if parameter.max_occurs().is_some_and(|max| given > max) {
            issues.push(Issue::error(
                IssueCode::Invalid,
                format!("parameter '{}' may be given at most {} time(s), not {given}", parameter.name, parameter.max),
            ));
        }
    }
    if issues.is_empty() {
        Ok(Inputs { values })
    } else {
        Err(FhirError::with_issues(ErrorKind::BadRequest, issues))
    }
}

/// Collects the values of a `Parameters` resource: `value[x]` as text, `resource` as is.
fn read_parameters(body: &Value, values: &mut Vec<(String, InputValue)>, issues: &mut Vec<Issue>) {
    let parameters = body.get("parameter").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for (index, parameter) in parameters.iter().enumerate() {
        let at = format!("Parameters.parameter[{index}]");
        let Some(name) = parameter.get("name").and_then(Value::as_str) else {
            issues.push(Issue::error(IssueCode::Required, "a parameter has no name").at(at));
            continue;
        };
        if let Some(resource) = parameter.get("resource") {
            values.push((name.to_string(), InputValue::Resource(resource.clone())));
            continue;
        }
        let value = parameter.as_object().and_then(|fields| {
            fields.iter().find(|(field, _)| field.starts_with("value")).map(|(field, value)| (field.clone(), value))
        });
        match value {
            Some((field, value)) => match primitive_text(reference_or_value(&field, value)) {
                Some(text) => values.push((name.to_string(), InputValue::Text(text))),
                None => issues.push(
                    Issue::error(
                        IssueCode::NotSupported,
                        format!("parameter '{name}': {field} is not a primitive value"),
                    )
                    .at(format!("{at}.{field}")),
                ),
            },
            None => issues
                .push(Issue::error(IssueCode::Required, format!("parameter '{name}' has no value or resource")).at(at)),
        }
    }
}

/// A `valueReference` stands for its `reference` (`Appointment/123`), the form the URL gives.
fn reference_or_value<'a>(field: &str, value: &'a Value) -> &'a Value {
    match field {
        "valueReference" => value.get("reference").unwrap_or(value),
        _ => value,
    }
}

fn primitive_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

fn resource_type(body: &Value) -> &str {
    body.get("resourceType").and_then(Value::as_str).unwrap_or("body without resourceType")
}

fn unknown(definition: &Definition, name: &str) -> Issue {
    let known: Vec<&str> = definition.inputs().map(|p| p.name.as_str()).collect();
    let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
    Issue::error(
        IssueCode::NotSupported,
        format!("${} has no parameter '{name}' (its parameters: {known})", definition.code),
    )
    .at(parameter_path(name))
}

/// Whether a value has the parameter's type; the issue that says why not.
fn check_type(parameter: &ParameterDefinition, value: &InputValue) -> Option<Issue> {
    let name = &parameter.name;
    let value_type = parameter.value_type.as_deref().unwrap_or("string");
    let wrong = |what: String| {
        Some(Issue::error(IssueCode::Value, format!("parameter '{name}': {what}")).at(parameter_path(name)))
    };
    match value {
        InputValue::Resource(resource) if parameter.is_resource() => {
            let given = resource.get("resourceType").and_then(Value::as_str).unwrap_or("");
            let any = value_type == "Resource" || value_type == "DomainResource";
            if !is_resource_type(given) || !(any || given == value_type) {
                return wrong(format!("expected a {value_type} resource, found '{given}'"));
            }
            None
        }
        InputValue::Resource(_) => wrong(format!("expected a {value_type} value, not a resource")),
        InputValue::Text(_) if parameter.is_resource() => wrong(format!("expected a {value_type} resource")),
        InputValue::Text(text) => {
            (!is_lexically(value_type, text)).then(|| wrong(format!("'{text}' is not a valid {value_type}"))).flatten()
        }
    }
}

/// Whether `text` is a valid lexical form of the FHIR primitive type `value_type`.
fn is_lexically(value_type: &str, text: &str) -> bool {
    use crate::search::date::parse_range;
    match value_type {
        "boolean" => text == "true" || text == "false",
        "integer" => text.parse::<i32>().is_ok(),
        "positiveInt" => text.parse::<i32>().is_ok_and(|n| n > 0),
        "unsignedInt" => text.parse::<i32>().is_ok_and(|n| n >= 0),
        "decimal" => text.parse::<f64>().is_ok_and(f64::is_finite),
        "date" => !text.contains('T') && parse_range(text).is_some(),
        "dateTime" => parse_range(text).is_some(),
        // A `+` of the offset arrives as a space when the client did not escape it in the URL.
        "instant" => crate::model::resource::parse_instant(&text.replace(' ', "+")).is_some(),
        "code" | "id" => !text.is_empty() && text.trim() == text && !text.contains(char::is_whitespace),
        _ => !text.trim().is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operations::definition::by_id;
    use serde_json::json;

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn reads_url_parameters_and_checks_their_types() {
        let everything = by_id("Patient-everything").unwrap();
        let inputs = read(everything, &query(&[("start", "2020-01"), ("_count", "50")]), None).unwrap();
        assert_eq!(inputs.text("start"), Some("2020-01"));
        assert_eq!(inputs.integer("_count"), Some(50));
        let error = read(everything, &query(&[("start", "2020-02-30")]), None).unwrap_err();
        assert_eq!(error.status(), 400);
        assert!(error.issues[0].diagnostics.contains("'start'"), "{error}");
        let error = read(everything, &query(&[("_count", "many")]), None).unwrap_err();
        assert!(error.issues[0].diagnostics.contains("_count"), "{error}");
        let error = read(everything, &query(&[("colour", "red")]), None).unwrap_err();
        assert!(error.issues[0].diagnostics.contains("no parameter 'colour'"), "{error}");
        let error = read(everything, &query(&[("start", "2020"), ("start", "2021")]), None).unwrap_err();
        assert!(error.issues[0].diagnostics.contains("at most 1"), "{error}");
        assert!(read(everything, &query(&[("_since", "2020-01-01")]), None).is_err(), "an instant needs a time");
    }

    #[test]
    fn reads_parameters_bodies_and_bare_resources() {
        let validate = by_id("Resource-validate").unwrap();
        let patient = json!({"resourceType": "Patient"});
        let body = json!({"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": patient}, {"name": "mode", "valueCode": "create"}]});
        let inputs = read(validate, &[], Some(body)).unwrap();
        assert_eq!(inputs.resource("resource"), Some(&patient));
        assert_eq!(inputs.text("mode"), Some("create"));
        let inputs = read(validate, &query(&[("mode", "update")]), Some(patient.clone())).unwrap();
        assert_eq!(inputs.resource("resource"), Some(&patient));
        let error = read(validate, &query(&[("resource", "x")]), None).unwrap_err();
        assert!(error.issues[0].diagnostics.contains("POST it"), "{error}");
        let everything = by_id("Patient-everything").unwrap();
        assert!(read(everything, &[], Some(patient)).is_err(), "no resource input");
        let typed = json!({"resourceType": "Parameters", "parameter": [{"name": "_count", "valueInteger": 5}]});
        assert_eq!(read(everything, &[], Some(typed)).unwrap().integer("_count"), Some(5));
        let empty = json!({"resourceType": "Parameters", "parameter": [{"name": "_count"}]});
        assert!(read(everything, &[], Some(empty)).is_err());
    }
}
