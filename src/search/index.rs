//! The indexer: evaluates every applicable search parameter's expression over a resource and
//! turns the selected elements into index rows by the parameter's kind.

use std::collections::HashSet;

use foldhash::fast::RandomState;

use serde_json::Value;
use unicode_normalization::{char::is_combining_mark, UnicodeNormalization};

use super::date::{parse_range, DateRange, OPEN_HIGH, OPEN_LOW};
use super::{ParamKind, Registry, SearchParam};
use crate::store::{
    CompositePart, CompositeRow, DateRow, IndexRows, NumberRow, QuantityRow, ReferenceRow, StringRow, TokenRow, UriRow,
};

/// The code system of Money currencies.
const CURRENCY_SYSTEM: &str = "urn:iso:std:iso:4217";

/// String parts of complex types that string parameters search (HumanName, Address).
const STRING_PARTS: &[&str] =
    &["text", "family", "given", "prefix", "suffix", "line", "city", "district", "state", "postalCode", "country"];

/// The most rows one composite element may produce (the product of its components' values).
const MAX_COMPOSITE_ROWS: usize = 64;

/// Lower-cases and removes accents, so that string search is case- and accent-insensitive.
pub fn normalize(text: &str) -> String {
    // ASCII has no accents to remove (its decomposition is itself).
    if text.is_ascii() {
        return text.to_ascii_lowercase();
    }
    text.nfd().filter(|c| !is_combining_mark(*c)).flat_map(char::to_lowercase).collect()
}

/// Computes the index rows `resource` is stored with. `base_url` is this server's FHIR base:
/// absolute references under it are indexed as local `Type/id` references. A parameter whose
/// values other parameters' rows hold ([`Registry::stored_under`]) gets none of its own.
pub fn index_resource(registry: &Registry, resource: &Value, base_url: &str) -> IndexRows {
    let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
    let stored = registry.stored_in(resource_type);
    index_selected(registry, resource, base_url, |code| stored.is_none_or(|stored| !stored.contains_key(code)))
}

/// The index rows of the parameters `wanted` accepts (by code): an access check needs only the
/// few its rule names.
pub fn index_selected(
    registry: &Registry,
    resource: &Value,
    base_url: &str,
    wanted: impl Fn(&str) -> bool,
) -> IndexRows {
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return IndexRows::default();
    };
    let mut rows = RowSet::default();
    for param in registry.params_for(resource_type) {
        // `_id` is the id column itself.
        if param.code == "_id" || !param.kind.is_supported() || !wanted(&param.code) {
            continue;
        }
        let Some(expression) = &param.expression else {
            for reference in derived_references(resource_type, &param.code, resource) {
                rows.add(param, &Value::String(reference), base_url);
            }
            continue;
        };
        for node in expression.evaluate(resource) {
            if param.kind == ParamKind::Composite {
                rows.add_composite(param, node.value, resource, base_url);
            } else {
                rows.add(param, node.value, base_url);
            }
        }
    }
    rows.into_rows()
}

/// The values of Hearth's parameters that no FHIRPath expression can extract: the patients a
/// Subscription is about, which the access policy confines a patient's subscriptions by.
fn derived_references(resource_type: &str, code: &str, resource: &Value) -> Vec<String> {
    match (resource_type, code) {
        ("Subscription", "patient") => crate::subscriptions::request::filter_patients(resource),
        _ => Vec::new(),
    }
}

/// The (system, code) pairs a token element stands for: codings of a CodeableConcept, a
/// Coding, an Identifier or ContactPoint (system, value), a code, string or boolean.
fn token_values(value: &Value) -> Vec<(Option<&str>, String)> {
    match value {
        Value::String(code) => vec![(None, code.clone())],
        Value::Bool(flag) => vec![(None, flag.to_string())],
        Value::Object(object) => {
            let system = object.get("system").and_then(Value::as_str);
            if let Some(codings) = object.get("coding").and_then(Value::as_array) {
                codings
                    .iter()
                    .filter_map(|c| {
                        Some((c.get("system").and_then(Value::as_str), c.get("code")?.as_str()?.to_string()))
                    })
                    .collect()
            } else if let Some(code) = object.get("code").and_then(Value::as_str) {
                vec![(system, code.to_string())]
            } else if let Some(value) = object.get("value").and_then(Value::as_str) {
                vec![(system, value.to_string())]
            } else {
                Vec::new()
            }
        }
        _ => Vec::new(),
    }
}

/// The texts that go with a token: CodeableConcept.text, Coding.display, Identifier.type.text.
fn token_texts(value: &Value) -> Vec<&str> {
    let Some(object) = value.as_object() else { return Vec::new() };
    let own = object.get("text").or_else(|| object.get("display")).and_then(Value::as_str);
    let displays = object.get("coding").and_then(Value::as_array).into_iter().flatten();
    let type_text = object.get("type").and_then(|t| t.get("text")).and_then(Value::as_str);
    own.into_iter().chain(displays.filter_map(|c| c.get("display")?.as_str())).chain(type_text).collect()
}

/// The texts a string element stands for: the string itself, or the parts of a HumanName or Address.
fn string_values(value: &Value) -> Vec<&str> {
    match value {
        Value::String(text) => vec![text.as_str()],
        Value::Object(object) => STRING_PARTS
            .iter()
            .flat_map(|part| match object.get(*part) {
                Some(Value::String(text)) => vec![text.as_str()],
                Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The reference text of a Reference element, or a canonical/uri string.
fn reference_text(value: &Value) -> Option<&str> {
    match value {
        Value::String(canonical) => Some(canonical),
        Value::Object(object) => object.get("reference").and_then(Value::as_str),
        _ => None,
    }
}

/// The composite-row values one component element stands for.
fn composite_parts(kind: ParamKind, value: &Value, base_url: &str) -> Vec<CompositePart> {
    let part = CompositePart::default();
    match kind {
        ParamKind::Token => token_values(value)
            .into_iter()
            .map(|(system, code)| CompositePart {
                system: system.map(str::to_string),
                code: Some(code),
                ..part.clone()
            })
            .collect(),
        ParamKind::String => string_values(value)
            .into_iter()
            .map(|t| CompositePart { code: Some(normalize(t)), ..part.clone() })
            .collect(),
        ParamKind::Uri => {
            value.as_str().map(|t| CompositePart { code: Some(t.to_string()), ..part.clone() }).into_iter().collect()
        }
        ParamKind::Reference => reference_text(value)
            .and_then(|text| parse_local_reference(text, base_url))
            .map(|(t, id)| CompositePart { system: Some(t.to_string()), code: Some(id.to_string()), ..part.clone() })
            .into_iter()
            .collect(),
        ParamKind::Date => date_range(value)
            .map(|r| CompositePart { low: Some(r.low), high: Some(r.high), ..part.clone() })
            .into_iter()
            .collect(),
        ParamKind::Number => {
            value.as_f64().map(|n| CompositePart { number: Some(n), ..part.clone() }).into_iter().collect()
        }
        ParamKind::Quantity => quantity_row("", value)
            .map(|q| CompositePart { number: Some(q.value), system: q.system, code: q.code.or(q.unit), ..part.clone() })
            .into_iter()
            .collect(),
        ParamKind::Composite | ParamKind::Special => Vec::new(),
    }
}

#[derive(Default)]
struct RowSet {
    tokens: HashSet<TokenRow, RandomState>,
    strings: HashSet<StringRow, RandomState>,
    references: HashSet<ReferenceRow, RandomState>,
    uris: HashSet<UriRow, RandomState>,
    dates: HashSet<DateRow, RandomState>,
    numbers: Vec<NumberRow>,
    quantities: Vec<QuantityRow>,
    composites: Vec<CompositeRow>,
}

impl RowSet {
    fn add(&mut self, param: &SearchParam, value: &Value, base_url: &str) {
        let code = &param.code;
        match param.kind {
            ParamKind::Token => self.add_tokens(code, value),
            ParamKind::String => {
                for text in string_values(value) {
                    self.strings.insert(StringRow {
                        param: code.clone(),
                        normalized: normalize(text),
                        exact: text.to_string(),
                    });
                }
            }
            ParamKind::Reference => self.add_reference(code, value, base_url),
            ParamKind::Uri => {
                if let Some(text) = value.as_str() {
                    self.uris.insert(UriRow { param: code.clone(), value: text.to_string() });
                }
            }
            ParamKind::Date => {
                if let Some(range) = date_range(value) {
                    self.dates.insert(DateRow { param: code.clone(), low: range.low, high: range.high });
                }
            }
            ParamKind::Number => {
                if let Some(number) = value.as_f64() {
                    push_unique(&mut self.numbers, NumberRow { param: code.clone(), value: number });
                }
            }
            ParamKind::Quantity => {
                if let Some(row) = quantity_row(code, value) {
                    push_unique(&mut self.quantities, row);
                }
            }
            ParamKind::Composite | ParamKind::Special => {}
        }
    }

    fn add_tokens(&mut self, param: &str, value: &Value) {
        for (system, code) in token_values(value) {
            self.tokens.insert(TokenRow { param: param.to_string(), system: system.map(str::to_string), code });
        }
        // `:text` searches the words that go with the code.
        for text in token_texts(value) {
            self.strings.insert(StringRow {
                param: format!("{param}:text"),
                normalized: normalize(text),
                exact: text.to_string(),
            });
        }
        if let (Some(identifier), Some(value)) = (value.as_object(), value.get("value").and_then(Value::as_str)) {
            self.add_identifier_type(param, identifier, value);
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

    fn add_reference(&mut self, param: &str, value: &Value, base_url: &str) {
        // `reference:identifier` searches the logical identifier a Reference may carry.
        if let Some(identifier) = value.get("identifier") {
            self.add_tokens(&format!("{param}:identifier"), identifier);
        }
        if let Some(row) = reference_text(value).and_then(|text| reference_row(param, text, base_url)) {
            self.references.insert(row);
        }
    }

    /// One row per combination of the components' values.
    fn add_composite(&mut self, param: &SearchParam, node: &Value, resource: &Value, base_url: &str) {
        let mut combinations: Vec<Vec<CompositePart>> = vec![Vec::new()];
        for component in &param.components {
            let values: Vec<CompositePart> = component
                .expression
                .evaluate_on_with_resource(node, resource)
                .iter()
                .flat_map(|n| composite_parts(component.kind, n.value, base_url))
                .collect();
            combinations = combinations
                .iter()
                .flat_map(|prefix| {
                    values.iter().map(move |v| {
                        let mut next = prefix.clone();
                        next.push(v.clone());
                        next
                    })
                })
                .take(MAX_COMPOSITE_ROWS)
                .collect();
        }
        for parts in combinations.into_iter().filter(|p| p.len() == param.components.len()) {
            push_unique(&mut self.composites, CompositeRow { param: param.code.clone(), parts });
        }
    }

    fn into_rows(self) -> IndexRows {
        let mut rows = IndexRows {
            tokens: self
                .tokens
                .into_iter()
                .map(|row| TokenRow { system: row.system.map(bounded), code: bounded(row.code), ..row })
                .collect(),
            strings: self
                .strings
                .into_iter()
                .map(|row| StringRow { normalized: bounded(row.normalized), exact: bounded(row.exact), ..row })
                .collect(),
            references: self.references.into_iter().collect(),
            uris: self.uris.into_iter().map(|row| UriRow { value: bounded(row.value), ..row }).collect(),
            dates: self.dates.into_iter().collect(),
            numbers: self.numbers,
            quantities: self.quantities,
            composites: self
                .composites
                .into_iter()
                .map(|mut row| {
                    for part in &mut row.parts {
                        part.system = part.system.take().map(bounded);
                        part.code = part.code.take().map(bounded);
                    }
                    row
                })
                .collect(),
        };
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
        rows.dates.sort_by(|a, b| (&a.param, a.low, a.high).cmp(&(&b.param, b.low, b.high)));
        rows
    }
}

/// The most bytes of a value the index keeps: a search never needs more, and PostgreSQL refuses
/// B-tree entries beyond about 2.7 kB (a token row holds a system and a code).
const MAX_INDEXED_BYTES: usize = 512;

/// `text` cut to [`MAX_INDEXED_BYTES`] at a character boundary: a longer value is found by its
/// beginning.
pub fn bounded(mut text: String) -> String {
    if text.len() > MAX_INDEXED_BYTES {
        let mut end = MAX_INDEXED_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn push_unique<T: PartialEq>(rows: &mut Vec<T>, row: T) {
    if !rows.contains(&row) {
        rows.push(row);
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
        for byte in 0..128u8 {
            let text = format!("a{}Z", byte as char);
            let decomposed: String =
                text.nfd().filter(|c| !is_combining_mark(*c)).flat_map(char::to_lowercase).collect();
            assert_eq!(normalize(&text), decomposed, "ASCII {byte}");
        }
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
    fn indexes_composites_as_one_row_per_combination() {
        let blood_pressure = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                 "valueQuantity": {"value": 128, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                 "valueQuantity": {"value": 84, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]});
        let rows = index_resource(Registry::standard(), &blood_pressure, BASE);
        let systolic: Vec<&CompositeRow> = rows
            .composites
            .iter()
            .filter(|c| c.param == "component-code-value-quantity" && c.parts[0].code.as_deref() == Some("8480-6"))
            .collect();
        assert_eq!(systolic.len(), 1);
        assert_eq!(systolic[0].parts[1].number, Some(128.0));
        assert_eq!(systolic[0].parts[1].code.as_deref(), Some("mm[Hg]"));
        assert!(
            !rows.composites.iter().any(|c| c.param == "component-code-value-quantity"
                && c.parts[0].code.as_deref() == Some("8480-6")
                && c.parts[1].number == Some(84.0)),
            "components stay paired"
        );
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
        // `combo-code` is `code | component-code`: searches read those rows, none of its own
        // are stored, but an access check that names it still gets its values.
        assert!(!rows.tokens.iter().any(|t| t.param.starts_with("combo-")));
        assert!(!rows.strings.iter().any(|s| s.param.starts_with("combo-")));
        let selected = index_selected(Registry::standard(), &observation, BASE, |code| code == "combo-code");
        assert_eq!(
            selected.tokens.iter().map(|t| (t.param.as_str(), t.code.as_str())).collect::<Vec<_>>(),
            [("combo-code", "2339-0")]
        );
    }
}
