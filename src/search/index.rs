//! The indexer: evaluates every applicable search parameter's expression over a resource and
//! turns the selected elements into index rows by the parameter's kind.

use std::collections::HashSet;

use serde_json::Value;
use unicode_normalization::{char::is_combining_mark, UnicodeNormalization};

use super::date::{parse_range, DateRange, OPEN_HIGH, OPEN_LOW};
use super::{ParamKind, Registry, SearchParam};
use crate::store::{DateRow, IndexRows, NumberRow, QuantityRow, ReferenceRow, StringRow, TokenRow, UriRow};

/// The code system of Money currencies.
const CURRENCY_SYSTEM: &str = "urn:iso:std:iso:4217";

/// String parts of complex types that string parameters search (HumanName, Address).
const STRING_PARTS: &[&str] =
    &["text", "family", "given", "prefix", "suffix", "line", "city", "district", "state", "postalCode", "country"];

/// Lower-cases and removes accents, so that string search is case- and accent-insensitive.
pub fn normalize(text: &str) -> String {
    text.nfd().filter(|c| !is_combining_mark(*c)).flat_map(char::to_lowercase).collect()
}

/// Computes the index rows of `resource`. `base_url` is this server's FHIR base: absolute
/// references under it are indexed as local `Type/id` references.
pub fn index_resource(registry: &Registry, resource: &Value, base_url: &str) -> IndexRows {
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return IndexRows::default();
    };
    let mut rows = RowSet::default();
    for param in registry.params_for(resource_type) {
        // `_id` is the id column itself.
        if param.code == "_id" || !param.kind.is_supported() {
            continue;
        }
        let Some(expression) = &param.expression else { continue };
        for node in expression.evaluate(resource) {
            rows.add(param, node.value, base_url);
        }
    }
    rows.into_rows()
}

#[derive(Default)]
struct RowSet {
    tokens: HashSet<TokenRow>,
    strings: HashSet<StringRow>,
    references: HashSet<ReferenceRow>,
    uris: HashSet<UriRow>,
    dates: HashSet<DateRow>,
    numbers: Vec<NumberRow>,
    quantities: Vec<QuantityRow>,
}

impl RowSet {
    fn add(&mut self, param: &SearchParam, value: &Value, base_url: &str) {
        match param.kind {
            ParamKind::Token => self.add_tokens(&param.code, value),
            ParamKind::String => self.add_strings(&param.code, value),
            ParamKind::Reference => self.add_reference(&param.code, value, base_url),
            ParamKind::Uri => {
                if let Some(text) = value.as_str() {
                    self.uris.insert(UriRow { param: param.code.clone(), value: text.to_string() });
                }
            }
            ParamKind::Date => {
                if let Some(range) = date_range(value) {
                    self.dates.insert(DateRow { param: param.code.clone(), low: range.low, high: range.high });
                }
            }
            ParamKind::Number => {
                if let Some(number) = value.as_f64() {
                    let row = NumberRow { param: param.code.clone(), value: number };
                    if !self.numbers.contains(&row) {
                        self.numbers.push(row);
                    }
                }
            }
            ParamKind::Quantity => {
                if let Some(row) = quantity_row(&param.code, value) {
                    if !self.quantities.contains(&row) {
                        self.quantities.push(row);
                    }
                }
            }
            ParamKind::Composite | ParamKind::Special => {}
        }
    }

    fn add_tokens(&mut self, param: &str, value: &Value) {
        let mut push = |system: Option<&str>, code: &str| {
            self.tokens.insert(TokenRow {
                param: param.to_string(),
                system: system.map(str::to_string),
                code: code.to_string(),
            });
        };
        match value {
            Value::String(code) => push(None, code),
            Value::Bool(flag) => push(None, if *flag { "true" } else { "false" }),
            Value::Object(object) => {
                let system = object.get("system").and_then(Value::as_str);
                if let Some(codings) = object.get("coding").and_then(Value::as_array) {
                    for coding in codings {
                        if let Some(code) = coding.get("code").and_then(Value::as_str) {
                            push(coding.get("system").and_then(Value::as_str), code);
                        }
                    }
                } else if let Some(code) = object.get("code").and_then(Value::as_str) {
                    push(system, code);
                } else if let Some(value) = object.get("value").and_then(Value::as_str) {
                    // Identifier and ContactPoint: the value is the code.
                    push(system, value);
                    self.add_identifier_type(param, object, value);
                }
            }
            _ => {}
        }
    }

    /// `identifier:of-type` rows: the identifier's type coding with `type-code|value` as code.
    fn add_identifier_type(&mut self, param: &str, identifier: &serde_json::Map<String, Value>, value: &str) {
        let codings = identifier.get("type").and_then(|t| t.get("coding")).and_then(Value::as_array);
        for coding in codings.into_iter().flatten() {
            if let Some(type_code) = coding.get("code").and_then(Value::as_str) {
                self.tokens.insert(TokenRow {
                    param: format!("{param}:of-type"),
                    system: coding.get("system").and_then(Value::as_str).map(str::to_string),
                    code: format!("{type_code}|{value}"),
                });
            }
        }
    }

    fn add_strings(&mut self, param: &str, value: &Value) {
        let mut push = |text: &str| {
            self.strings.insert(StringRow {
                param: param.to_string(),
                normalized: normalize(text),
                exact: text.to_string(),
            });
        };
        match value {
            Value::String(text) => push(text),
            Value::Object(object) => {
                for part in STRING_PARTS {
                    match object.get(*part) {
                        Some(Value::String(text)) => push(text),
                        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).for_each(&mut push),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }

    fn add_reference(&mut self, param: &str, value: &Value, base_url: &str) {
        // `reference:identifier` searches the logical identifier a Reference may carry.
        if let Some(identifier) = value.get("identifier") {
            self.add_tokens(&format!("{param}:identifier"), identifier);
        }
        let text = match value {
            Value::String(canonical) => canonical.as_str(),
            Value::Object(object) => match object.get("reference").and_then(Value::as_str) {
                Some(reference) => reference,
                None => return,
            },
            _ => return,
        };
        if let Some(row) = reference_row(param, text, base_url) {
            self.references.insert(row);
        }
    }

    fn into_rows(self) -> IndexRows {
        let mut rows = IndexRows {
            tokens: self.tokens.into_iter().collect(),
            strings: self.strings.into_iter().collect(),
            references: self.references.into_iter().collect(),
            uris: self.uris.into_iter().collect(),
            dates: self.dates.into_iter().collect(),
            numbers: self.numbers,
            quantities: self.quantities,
        };
        rows.dates.sort_by(|a, b| (&a.param, a.low, a.high).cmp(&(&b.param, b.low, b.high)));
        // Deterministic order keeps writes reproducible and tests simple.
        rows.tokens.sort_by(|a, b| (&a.param, &a.system, &a.code).cmp(&(&b.param, &b.system, &b.code)));
        rows.strings.sort_by(|a, b| (&a.param, &a.exact).cmp(&(&b.param, &b.exact)));
        rows.references.sort_by(|a, b| {
            (&a.param, &a.target_type, &a.target_id, &a.target_url).cmp(&(
                &b.param,
                &b.target_type,
                &b.target_id,
                &b.target_url,
            ))
        });
        rows.uris.sort_by(|a, b| (&a.param, &a.value).cmp(&(&b.param, &b.value)));
        rows
    }
}

/// The interval a date-like element covers: a date/dateTime/instant, a Period (open ends
/// unbounded), or a Timing (from its first to its last event, or its bounds).
fn date_range(value: &Value) -> Option<DateRange> {
    match value {
        Value::String(text) => parse_range(text),
        Value::Object(object) if object.contains_key("start") || object.contains_key("end") => {
            let bound = |name: &str| object.get(name).and_then(Value::as_str).and_then(parse_range);
            let (start, end) = (bound("start"), bound("end"));
            if start.is_none() && end.is_none() {
                return None;
            }
            Some(DateRange { low: start.map_or(OPEN_LOW, |r| r.low), high: end.map_or(OPEN_HIGH, |r| r.high) })
        }
        Value::Object(object) if object.contains_key("event") || object.contains_key("repeat") => {
            let mut ranges: Vec<DateRange> =
                object.get("event").and_then(Value::as_array).into_iter().flatten().filter_map(date_range).collect();
            if let Some(bounds) = object.get("repeat").and_then(|r| r.get("boundsPeriod")) {
                ranges.extend(date_range(bounds));
            }
            let low = ranges.iter().map(|r| r.low).min()?;
            let high = ranges.iter().map(|r| r.high).max()?;
            Some(DateRange { low, high })
        }
        _ => None,
    }
}

/// A Quantity (or Money, Age, Duration…) with a numeric value.
fn quantity_row(param: &str, value: &Value) -> Option<QuantityRow> {
    let object = value.as_object()?;
    let number = object.get("value")?.as_f64()?;
    let text = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_string);
    let (system, code) = match text("currency") {
        Some(currency) => (Some(CURRENCY_SYSTEM.to_string()), Some(currency)),
        None => (text("system"), text("code")),
    };
    Some(QuantityRow { param: param.to_string(), value: number, system, code, unit: text("unit") })
}

/// A local reference split into type and id: `Patient/1`, `Patient/1/_history/2`, or an
/// absolute URL under `base_url`.
pub fn parse_local_reference<'a>(reference: &'a str, base_url: &str) -> Option<(&'a str, &'a str)> {
    let relative = match reference.strip_prefix(base_url) {
        Some(rest) if !base_url.is_empty() => rest.strip_prefix('/')?,
        _ if reference.contains("://") || reference.starts_with("urn:") || reference.starts_with('#') => return None,
        _ => reference,
    };
    let mut parts = relative.split('/');
    let (resource_type, id) = (parts.next()?, parts.next()?);
    let valid_rest =
        matches!((parts.next(), parts.next(), parts.next()), (None, _, _) | (Some("_history"), Some(_), None));
    (valid_rest && crate::model::validate::is_resource_type(resource_type) && crate::model::resource::is_valid_id(id))
        .then_some((resource_type, id))
}

fn reference_row(param: &str, reference: &str, base_url: &str) -> Option<ReferenceRow> {
    if let Some((resource_type, id)) = parse_local_reference(reference, base_url) {
        return Some(ReferenceRow {
            param: param.to_string(),
            target_type: Some(resource_type.to_string()),
            target_id: Some(id.to_string()),
            target_url: None,
        });
    }
    let absolute = reference.contains("://") || reference.starts_with("urn:oid:");
    absolute.then(|| ReferenceRow {
        param: param.to_string(),
        target_type: None,
        target_id: None,
        target_url: Some(reference.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BASE: &str = "http://localhost:8080/fhir";

    #[test]
    fn normalizes_case_and_accents() {
        assert_eq!(normalize("Ångström ÉLODIE"), "angstrom elodie");
    }

    #[test]
    fn parses_local_references() {
        assert_eq!(parse_local_reference("Patient/1", BASE), Some(("Patient", "1")));
        assert_eq!(parse_local_reference("Patient/1/_history/3", BASE), Some(("Patient", "1")));
        assert_eq!(parse_local_reference("http://localhost:8080/fhir/Patient/1", BASE), Some(("Patient", "1")));
        assert_eq!(parse_local_reference("http://elsewhere.org/fhir/Patient/1", BASE), None);
        assert_eq!(parse_local_reference("urn:uuid:1234", BASE), None);
        assert_eq!(parse_local_reference("#contained", BASE), None);
        assert_eq!(parse_local_reference("Nonsense/1", BASE), None);
    }

    #[test]
    fn indexes_a_patient() {
        let patient = json!({"resourceType": "Patient", "id": "p1", "active": true,
            "identifier": [{"system": "http://hospital/mrn", "value": "M-1"}],
            "name": [{"family": "Müller", "given": ["Anna"]}], "gender": "female",
            "generalPractitioner": [{"reference": "Practitioner/dr1"}],
            "meta": {"tag": [{"system": "http://tags", "code": "vip"}]}});
        let rows = index_resource(Registry::standard(), &patient, BASE);
        let has_token = |param: &str, system: Option<&str>, code: &str| {
            rows.tokens.iter().any(|t| t.param == param && t.system.as_deref() == system && t.code == code)
        };
        assert!(has_token("identifier", Some("http://hospital/mrn"), "M-1"));
        assert!(has_token("gender", None, "female"));
        assert!(has_token("active", None, "true"));
        assert!(has_token("_tag", Some("http://tags"), "vip"));
        let has_string =
            |param: &str, normalized: &str| rows.strings.iter().any(|s| s.param == param && s.normalized == normalized);
        assert!(has_string("family", "muller"));
        assert!(has_string("name", "anna"));
        assert!(has_string("name", "muller"));
        assert!(rows.references.iter().any(|r| r.param == "general-practitioner"
            && r.target_type.as_deref() == Some("Practitioner")
            && r.target_id.as_deref() == Some("dr1")));
    }

    #[test]
    fn indexes_dates_numbers_and_quantities() {
        let observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "glucose"},
            "effectivePeriod": {"start": "2024-03-05T09:30:00Z"},
            "valueQuantity": {"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}});
        let rows = index_resource(Registry::standard(), &observation, BASE);
        let date = rows.dates.iter().find(|d| d.param == "date").unwrap();
        assert_eq!(date.low, parse_range("2024-03-05T09:30:00Z").unwrap().low);
        assert_eq!(date.high, OPEN_HIGH);
        let quantity = rows.quantities.iter().find(|q| q.param == "value-quantity").unwrap();
        assert_eq!((quantity.value, quantity.code.as_deref()), (5.4, Some("mmol/L")));

        let invoice = json!({"resourceType": "Invoice", "status": "issued", "date": "2025-01-02",
            "totalGross": {"value": 120.50, "currency": "USD"}});
        let rows = index_resource(Registry::standard(), &invoice, BASE);
        let total = rows.quantities.iter().find(|q| q.param == "totalgross").unwrap();
        assert_eq!(
            (total.value, total.system.as_deref(), total.code.as_deref()),
            (120.5, Some(CURRENCY_SYSTEM), Some("USD"))
        );
        assert_eq!(rows.dates.iter().find(|d| d.param == "date").unwrap().low, parse_range("2025-01-02").unwrap().low);

        let risk = json!({"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": "Patient/1"},
            "prediction": [{"probabilityDecimal": 0.25}]});
        let rows = index_resource(Registry::standard(), &risk, BASE);
        assert_eq!(rows.numbers, vec![NumberRow { param: "probability".into(), value: 0.25 }]);
    }

    #[test]
    fn indexes_observation_codes_and_subject() {
        let observation = json!({"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
            "subject": {"reference": "Patient/p1"}});
        let rows = index_resource(Registry::standard(), &observation, BASE);
        assert!(rows.tokens.iter().any(|t| t.param == "code" && t.code == "2339-0"));
        assert!(rows.tokens.iter().any(|t| t.param == "category" && t.code == "laboratory"));
        for param in ["subject", "patient"] {
            assert!(
                rows.references.iter().any(|r| r.param == param && r.target_id.as_deref() == Some("p1")),
                "{param}"
            );
        }
    }
}
