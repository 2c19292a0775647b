//! Parses search URL parameters into a [`SearchQuery`].
//!
//! Supported here: `_id`, and the string, token, reference and uri parameters of the registry
//! with their common forms (`:exact`, `:contains`, `system|code`, `|code`, `system|`, `Type/id`,
//! `:Type`), OR with commas and AND with repeated parameters, `_count`. Parameters the server
//! cannot apply are errors under `Prefer: handling=strict` and are otherwise ignored and left
//! out of the `self` link, as FHIR R4 search.html prescribes.

use super::date::{approximate, parse_range, Prefix};
use super::index::{normalize, parse_local_reference};
use super::{ParamKind, Registry};
use crate::model::{FhirError, IssueCode};
use crate::store::{Comparison, Condition, SearchQuery, StringMatch, TokenSystem};

/// Parameters that steer the result rather than select resources; the HTTP layer and the
/// paging code read them.
const RESULT_PARAMETERS: &[&str] = &["_count", "_format", "_pretty", "_total", "_cursor", "_summary", "_elements"];

/// Page size limits.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    pub default_count: usize,
    pub max_count: usize,
}

/// A parsed search: the query, and the parameters that were applied (for the `self` link).
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSearch {
    pub query: SearchQuery,
    pub applied: Vec<(String, String)>,
}

/// Parses `parameters` of a search on `resource_type`.
pub fn parse_search(
    registry: &Registry,
    resource_type: &str,
    parameters: &[(String, String)],
    base_url: &str,
    strict: bool,
    paging: Paging,
) -> Result<ParsedSearch, FhirError> {
    let mut query = SearchQuery::new(resource_type, paging.default_count);
    let mut applied = Vec::new();
    for (name, value) in parameters {
        let (code, modifier) = match name.split_once(':') {
            Some((code, modifier)) => (code, Some(modifier)),
            None => (name.as_str(), None),
        };
        let outcome = match code {
            "_count" => parse_count(value, paging).map(|count| query.count = count),
            "_total" => {
                query.with_total = value == "accurate" || value == "estimate";
                Ok(())
            }
            "_cursor" => {
                query.after_id = Some(value.clone());
                continue;
            }
            _ if RESULT_PARAMETERS.contains(&code) => continue,
            _ => parse_condition_group(registry, resource_type, code, modifier, value, base_url)
                .map(|group| query.all_of.push(group)),
        };
        match outcome {
            Ok(()) => applied.push((name.clone(), value.clone())),
            Err(error) if strict => return Err(error),
            Err(error) => tracing::debug!(%error, parameter = %name, "ignored search parameter"),
        }
    }
    Ok(ParsedSearch { query, applied })
}

fn parse_count(value: &str, paging: Paging) -> Result<usize, FhirError> {
    value
        .parse::<usize>()
        .map(|count| count.min(paging.max_count))
        .map_err(|_| FhirError::bad_request(format!("_count must be a non-negative integer, not '{value}'")))
}

/// One parameter occurrence: the OR of its comma-separated values.
fn parse_condition_group(
    registry: &Registry,
    resource_type: &str,
    code: &str,
    modifier: Option<&str>,
    value: &str,
    base_url: &str,
) -> Result<Vec<Condition>, FhirError> {
    let unknown = || {
        FhirError::new(400, IssueCode::NotSupported, format!("unknown search parameter '{code}' for {resource_type}"))
    };
    let values = split_unescaped(value, ',');
    if values.iter().any(String::is_empty) {
        return Err(FhirError::bad_request(format!("search parameter '{code}' has an empty value")));
    }
    if code == "_id" {
        return match modifier {
            None => Ok(values.into_iter().map(Condition::Id).collect()),
            Some(m) => Err(unsupported_modifier(code, m)),
        };
    }
    let param = registry.lookup(resource_type, code).ok_or_else(unknown)?;
    if !param.kind.is_supported() {
        return Err(FhirError::new(
            400,
            IssueCode::NotSupported,
            format!("search parameter '{code}' of type {} is not supported yet", param.kind.as_str()),
        ));
    }
    values.into_iter().map(|value| parse_condition(param.kind, code, modifier, &value, base_url)).collect()
}

fn parse_condition(
    kind: ParamKind,
    code: &str,
    modifier: Option<&str>,
    value: &str,
    base_url: &str,
) -> Result<Condition, FhirError> {
    let param = code.to_string();
    match (kind, modifier) {
        (ParamKind::String, None) => {
            Ok(Condition::String { param, value: normalize(value), matching: StringMatch::Prefix })
        }
        (ParamKind::String, Some("contains")) => {
            Ok(Condition::String { param, value: normalize(value), matching: StringMatch::Contains })
        }
        (ParamKind::String, Some("exact")) => {
            Ok(Condition::String { param, value: value.to_string(), matching: StringMatch::Exact })
        }
        (ParamKind::Token, None) => Ok(parse_token(param, value)),
        (ParamKind::Uri, None) => Ok(Condition::Uri { param, value: value.to_string() }),
        (ParamKind::Reference, None) => Ok(parse_reference(param, None, value, base_url)),
        (ParamKind::Reference, Some(target)) if crate::model::validate::is_resource_type(target) => {
            Ok(parse_reference(param, Some(target), value, base_url))
        }
        (ParamKind::Date, None) => parse_date(param, value),
        (ParamKind::Number, None) => {
            let (comparison, number, low, high) = parse_number(code, value)?;
            Ok(Condition::Number { param, comparison, value: number, low, high })
        }
        (ParamKind::Quantity, None) => parse_quantity(param, value),
        (_, Some(m)) => Err(unsupported_modifier(code, m)),
        (_, None) => Err(FhirError::bad_request(format!("search parameter '{code}' is not supported"))),
    }
}

fn comparison_of(prefix: Prefix) -> Comparison {
    match prefix {
        Prefix::Eq | Prefix::Ap => Comparison::Eq,
        Prefix::Ne => Comparison::Ne,
        Prefix::Gt => Comparison::Gt,
        Prefix::Lt => Comparison::Lt,
        Prefix::Ge => Comparison::Ge,
        Prefix::Le => Comparison::Le,
        Prefix::Sa => Comparison::Sa,
        Prefix::Eb => Comparison::Eb,
    }
}

fn parse_date(param: String, value: &str) -> Result<Condition, FhirError> {
    let (prefix, text) = Prefix::split(value);
    let mut range = parse_range(text).ok_or_else(|| {
        FhirError::bad_request(format!("'{text}' is not a FHIR date, dateTime or instant (search parameter '{param}')"))
    })?;
    if prefix == Prefix::Ap {
        range = approximate(range, crate::model::resource::now());
    }
    Ok(Condition::Date { param, comparison: comparison_of(prefix), low: range.low, high: range.high })
}

/// A searched number with its implicit precision: `100` means [99.5, 100.5), `1.50` means
/// [1.495, 1.505), `1e2` means [50, 150).
fn parse_number(code: &str, value: &str) -> Result<(Comparison, f64, f64, f64), FhirError> {
    let (prefix, text) = Prefix::split(value);
    let invalid = || FhirError::bad_request(format!("'{text}' is not a number (search parameter '{code}')"));
    let number: f64 = text.parse().map_err(|_| invalid())?;
    if !number.is_finite() || text.starts_with('+') || text.contains(['n', 'N', 'i', 'I']) {
        return Err(invalid());
    }
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().map_err(|_| invalid())?),
        None => (text, 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, fraction)| fraction.len() as i32);
    let half_step = 0.5 * 10f64.powi(exponent - decimals);
    let (low, high) = if prefix == Prefix::Ap {
        let slack = (number.abs() * 0.1).max(half_step);
        (number - slack, number + slack)
    } else {
        (number - half_step, number + half_step)
    };
    Ok((comparison_of(prefix), number, low, high))
}

fn parse_quantity(param: String, value: &str) -> Result<Condition, FhirError> {
    let parts = split_unescaped(value, '|');
    let (number, system, code) = match parts.as_slice() {
        [number] => (number.as_str(), None, None),
        [number, system, code] => (number.as_str(), Some(system.clone()), Some(code.clone())),
        _ => return Err(FhirError::bad_request(format!("'{value}' is not a quantity (number|system|code)"))),
    };
    let (comparison, number, low, high) = parse_number(&param, number)?;
    let system = system.filter(|s| !s.is_empty());
    let code = code.filter(|c| !c.is_empty());
    Ok(Condition::Quantity { param, comparison, value: number, low, high, system, code })
}

fn parse_token(param: String, value: &str) -> Condition {
    let parts = split_unescaped(value, '|');
    match parts.as_slice() {
        [code] => Condition::Token { param, system: TokenSystem::Any, code: Some(code.clone()) },
        [system, code] if system.is_empty() => {
            Condition::Token { param, system: TokenSystem::None, code: Some(code.clone()) }
        }
        [system, code] => Condition::Token {
            param,
            system: TokenSystem::Is(system.clone()),
            code: (!code.is_empty()).then(|| code.clone()),
        },
        _ => Condition::Token { param, system: TokenSystem::Any, code: Some(value.to_string()) },
    }
}

fn parse_reference(param: String, target_type: Option<&str>, value: &str, base_url: &str) -> Condition {
    if let Some((resource_type, id)) = parse_local_reference(value, base_url) {
        if target_type.is_none_or(|t| t == resource_type) {
            return Condition::Reference {
                param,
                target_type: Some(resource_type.to_string()),
                target_id: id.to_string(),
            };
        }
    }
    if value.contains("://") || value.starts_with("urn:") {
        return Condition::ReferenceUrl { param, url: value.to_string() };
    }
    Condition::Reference { param, target_type: target_type.map(str::to_string), target_id: value.to_string() }
}

fn unsupported_modifier(code: &str, modifier: &str) -> FhirError {
    FhirError::new(400, IssueCode::NotSupported, format!("modifier ':{modifier}' is not supported on '{code}'"))
}

/// Splits on `separator` unless escaped with a backslash; `\,` `\|` `\$` `\\` are unescaped.
pub fn split_unescaped(text: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) if matches!(next, ',' | '|' | '$' | '\\') => {
                    parts.last_mut().unwrap_or(&mut String::new()).push(next)
                }
                Some(next) => {
                    if let Some(last) = parts.last_mut() {
                        last.push('\\');
                        last.push(next);
                    }
                }
                None => parts.last_mut().unwrap_or(&mut String::new()).push('\\'),
            },
            c if c == separator => parts.push(String::new()),
            c => parts.last_mut().unwrap_or(&mut String::new()).push(c),
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://localhost:8080/fhir";
    const PAGING: Paging = Paging { default_count: 20, max_count: 100 };

    fn parse(resource_type: &str, params: &[(&str, &str)], strict: bool) -> Result<ParsedSearch, FhirError> {
        let params: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse_search(Registry::standard(), resource_type, &params, BASE, strict, PAGING)
    }

    #[test]
    fn splits_with_escapes() {
        assert_eq!(split_unescaped("a,b\\,c", ','), vec!["a", "b,c"]);
        assert_eq!(split_unescaped("sys|co\\|de", '|'), vec!["sys", "co|de"]);
    }

    #[test]
    fn parses_tokens() {
        let parsed = parse("Patient", &[("identifier", "http://h|1,|2,http://h|,3")], true).unwrap();
        let p = || "identifier".to_string();
        assert_eq!(
            parsed.query.all_of,
            vec![vec![
                Condition::Token { param: p(), system: TokenSystem::Is("http://h".into()), code: Some("1".into()) },
                Condition::Token { param: p(), system: TokenSystem::None, code: Some("2".into()) },
                Condition::Token { param: p(), system: TokenSystem::Is("http://h".into()), code: None },
                Condition::Token { param: p(), system: TokenSystem::Any, code: Some("3".into()) },
            ]]
        );
    }

    #[test]
    fn parses_strings_references_and_count() {
        let parsed =
            parse("Observation", &[("subject", "Patient/1"), ("subject:Patient", "2"), ("_count", "500")], true)
                .unwrap();
        assert_eq!(parsed.query.count, 100);
        assert_eq!(
            parsed.query.all_of[0],
            vec![Condition::Reference {
                param: "subject".into(),
                target_type: Some("Patient".into()),
                target_id: "1".into()
            }]
        );
        assert_eq!(
            parsed.query.all_of[1],
            vec![Condition::Reference {
                param: "subject".into(),
                target_type: Some("Patient".into()),
                target_id: "2".into()
            }]
        );
        let parsed = parse("Patient", &[("name", "ÉLO"), ("family:exact", "Doe")], true).unwrap();
        assert_eq!(
            parsed.query.all_of[0],
            vec![Condition::String { param: "name".into(), value: "elo".into(), matching: StringMatch::Prefix }]
        );
        assert_eq!(
            parsed.query.all_of[1],
            vec![Condition::String { param: "family".into(), value: "Doe".into(), matching: StringMatch::Exact }]
        );
    }

    #[test]
    fn parses_dates_numbers_and_quantities() {
        let parsed = parse(
            "Observation",
            &[("date", "ge2024-03"), ("value-quantity", "le5.40|http://unitsofmeasure.org|mmol/L")],
            true,
        )
        .unwrap();
        let march = parse_range("2024-03").unwrap();
        assert_eq!(
            parsed.query.all_of[0],
            vec![Condition::Date {
                param: "date".into(),
                comparison: Comparison::Ge,
                low: march.low,
                high: march.high
            }]
        );
        match &parsed.query.all_of[1][0] {
            Condition::Quantity { comparison, value, low, high, system, code, .. } => {
                assert_eq!((*comparison, *value), (Comparison::Le, 5.4));
                assert!((low - 5.395).abs() < 1e-9 && (high - 5.405).abs() < 1e-9);
                assert_eq!((system.as_deref(), code.as_deref()), (Some("http://unitsofmeasure.org"), Some("mmol/L")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_number("n", "100").unwrap(), (Comparison::Eq, 100.0, 99.5, 100.5));
        assert_eq!(parse_number("n", "1e2").unwrap(), (Comparison::Eq, 100.0, 50.0, 150.0));
        assert!(parse("Observation", &[("date", "2024-13")], true).is_err());
        assert!(parse("RiskAssessment", &[("probability", "gtabc")], true).is_err());
        assert!(parse("RiskAssessment", &[("probability", "NaN")], true).is_err());
    }

    #[test]
    fn strict_rejects_and_lenient_ignores_unknown_parameters() {
        let error = parse("Patient", &[("shoe-size", "9")], true).unwrap_err();
        assert_eq!(error.status, 400);
        assert!(error.issues[0].diagnostics.contains("shoe-size"));
        let parsed = parse("Patient", &[("shoe-size", "9"), ("gender", "male")], false).unwrap();
        assert_eq!(parsed.applied, vec![("gender".to_string(), "male".to_string())]);
        assert!(parse("Patient", &[("_count", "x")], true).is_err());
        assert!(parse("Patient", &[("gender", "")], true).is_err());
    }
}
