//! One search criterion (`name[:modifier]=value`, chains `a.b=value`, reverse chains
//! `_has:Type:param:name=value`) parsed into store conditions, per FHIR R4 search.html.

use std::collections::HashMap;

use super::date::{approximate, parse_range, split_prefix};
use super::index::{normalize, parse_local_reference};
use super::{ParamKind, Registry, SearchParam};
use crate::model::validate::is_resource_type;
use crate::model::{ErrorKind, FhirError, IssueCode};
use crate::store::{Comparison, CompositeMatch, Condition, IndexTable, StringMatch, TokenSystem, UriMatch};

/// The codes of ValueSets stored on the server, by canonical URL: (system, code) pairs, where
/// no code means the whole system. Filled by the caller for `:in` and `:not-in`.
pub type ValueSets = HashMap<String, Vec<(String, Option<String>)>>;

/// What parsing needs besides the parameters.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub registry: &'a Registry,
    /// This server's FHIR base URL (absolute references under it are local).
    pub base_url: &'a str,
    pub value_sets: &'a ValueSets,
}

/// Parses one criterion on `resource_type` into the OR of its comma-separated values.
pub fn parse_criterion(
    context: Context<'_>,
    resource_type: &str,
    name: &str,
    value: &str,
) -> Result<Vec<Condition>, FhirError> {
    let (registry, base_url) = (context.registry, context.base_url);
    if let Some(rest) = name.strip_prefix("_has:") {
        return parse_has(context, resource_type, rest, value);
    }
    if let Some((link, rest)) = name.split_once('.') {
        return parse_chain(context, resource_type, link, rest, value);
    }
    let (code, modifier) = match name.split_once(':') {
        Some((code, modifier)) => (code, Some(modifier)),
        None => (name, None),
    };
    let values = split_unescaped(value, ',');
    if values.iter().any(String::is_empty) {
        return Err(FhirError::bad_request(format!("search parameter '{name}' has an empty value")));
    }
    if code == "_id" {
        return match modifier {
            None => Ok(values.into_iter().map(Condition::Id).collect()),
            Some(m) => Err(unsupported_modifier(code, m)),
        };
    }
    let param = lookup(registry, resource_type, code)?;
    let conditions = match (param.kind, modifier) {
        (kind, Some("missing")) => {
            let missing = match value {
                "true" => true,
                "false" => false,
                _ => return Err(FhirError::bad_request(format!("{name} takes true or false, not '{value}'"))),
            };
            Ok(vec![Condition::Missing { param: code.to_string(), table: table_of(kind), missing }])
        }
        // `:not` matches resources that have none of the values, including those with no value.
        (ParamKind::Token, Some("not")) => {
            let any_of = values.iter().map(|v| parse_token(code.to_string(), v)).collect();
            Ok(vec![Condition::Not(Box::new(Condition::AnyOf(any_of)))])
        }
        (ParamKind::Token, Some(modifier @ ("in" | "not-in"))) => {
            let codes = context.value_sets.get(value).ok_or_else(|| {
                FhirError::bad_request(format!("{name}: no ValueSet with url '{value}' is stored on this server"))
            })?;
            let any_of = Condition::AnyOf(
                codes
                    .iter()
                    .map(|(system, concept)| Condition::Token {
                        param: code.to_string(),
                        system: TokenSystem::Is(system.clone()),
                        code: concept.clone(),
                    })
                    .collect(),
            );
            Ok(vec![if modifier == "in" { any_of } else { Condition::Not(Box::new(any_of)) }])
        }
        _ => values.iter().map(|value| parse_value(param, code, modifier, value, base_url).map(bound)).collect(),
    }?;
    Ok(match registry.stored_under(resource_type, code) {
        Some(parts) => conditions.into_iter().map(|condition| on_parts(condition, code, parts)).collect(),
        None => conditions,
    })
}

/// `condition`, a test of the rows of `code`, as a test of the rows of `parts`, which hold its
/// values between them ([`Registry::stored_under`]): a row of `code` that passes is a row of
/// one of the parts that passes, and `code` has no row when none of them has.
fn on_parts(condition: Condition, code: &str, parts: &[String]) -> Condition {
    let each_part = |leaf: &Condition| parts.iter().map(|part| on_part(leaf, code, part)).collect();
    match condition {
        Condition::Not(inner) => Condition::Not(Box::new(on_parts(*inner, code, parts))),
        Condition::AnyOf(inner) => Condition::AnyOf(inner.into_iter().map(|c| on_parts(c, code, parts)).collect()),
        missing @ Condition::Missing { missing: true, .. } => Condition::AllOf(each_part(&missing)),
        leaf => Condition::AnyOf(each_part(&leaf)),
    }
}

/// `leaf`, a test of the rows of `code` (or of `code:text` and the like), on those of `part`.
fn on_part(leaf: &Condition, code: &str, part: &str) -> Condition {
    let mut renamed = leaf.clone();
    if let Some(param) = renamed.param_mut() {
        if let Some(suffix) = param.strip_prefix(code) {
            *param = format!("{part}{suffix}");
        }
    }
    renamed
}

/// `link` is `param` or `param:Type`; `rest` is the criterion on the referenced resources.
fn parse_chain(
    context: Context<'_>,
    resource_type: &str,
    link: &str,
    rest: &str,
    value: &str,
) -> Result<Vec<Condition>, FhirError> {
    let registry = context.registry;
    let (code, target) = match link.split_once(':') {
        Some((code, target)) => (code, Some(target)),
        None => (link, None),
    };
    let param = lookup(registry, resource_type, code)?;
    if param.kind != ParamKind::Reference {
        return Err(FhirError::bad_request(format!("'{code}' is not a reference parameter, so it cannot be chained")));
    }
    let next_code = rest.split(['.', ':']).next().unwrap_or(rest);
    let targets: Vec<&str> = match target {
        Some(t) if is_resource_type(t) => vec![t],
        Some(t) => return Err(FhirError::bad_request(format!("'{t}' in '{link}' is not a resource type"))),
        None => param
            .targets
            .iter()
            .map(String::as_str)
            .filter(|t| next_code.starts_with('_') || registry.lookup(t, next_code).is_some())
            .collect(),
    };
    if targets.is_empty() {
        return Err(FhirError::bad_request(format!(
            "no resource type that '{code}' references has a parameter '{next_code}'"
        )));
    }
    // Target types whose criterion reads the same share one condition (one index lookup).
    let mut conditions: Vec<Condition> = Vec::new();
    for target_type in targets {
        let inner = Condition::AnyOf(parse_criterion(context, target_type, rest, value)?);
        let same = conditions.iter_mut().find_map(|c| match c {
            Condition::Chain { target_types, condition, .. } if **condition == inner => Some(target_types),
            _ => None,
        });
        match same {
            Some(target_types) => target_types.push(target_type.to_string()),
            None => conditions.push(Condition::Chain {
                param: code.to_string(),
                target_types: vec![target_type.to_string()],
                condition: Box::new(inner),
            }),
        }
    }
    Ok(conditions)
}

/// `rest` is `Type:param:criterion` (the criterion may itself be a `_has`).
fn parse_has(context: Context<'_>, resource_type: &str, rest: &str, value: &str) -> Result<Vec<Condition>, FhirError> {
    let registry = context.registry;
    let mut parts = rest.splitn(3, ':');
    let (Some(source_type), Some(code), Some(criterion)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(FhirError::bad_request(format!("_has:{rest} must be _has:Type:parameter:criterion")));
    };
    if !is_resource_type(source_type) {
        return Err(FhirError::bad_request(format!("'{source_type}' in _has:{rest} is not a resource type")));
    }
    let param = lookup(registry, source_type, code)?;
    if param.kind != ParamKind::Reference {
        return Err(FhirError::bad_request(format!("'{code}' of {source_type} is not a reference parameter")));
    }
    if !param.targets.is_empty() && !param.targets.iter().any(|t| t == resource_type) {
        return Err(FhirError::bad_request(format!("{source_type}.{code} never references a {resource_type}")));
    }
    let inner = parse_criterion(context, source_type, criterion, value)?;
    Ok(vec![Condition::Has {
        source_type: source_type.to_string(),
        param: code.to_string(),
        condition: Box::new(Condition::AnyOf(inner)),
    }])
}

fn lookup<'a>(registry: &'a Registry, resource_type: &str, code: &str) -> Result<&'a SearchParam, FhirError> {
    let param = registry.lookup(resource_type, code).ok_or_else(|| {
        FhirError::new(
            ErrorKind::BadRequest,
            IssueCode::NotSupported,
            format!("unknown search parameter '{code}' for {resource_type}"),
        )
    })?;
    if !param.kind.is_supported() {
        return Err(FhirError::new(
            ErrorKind::BadRequest,
            IssueCode::NotSupported,
            format!("search parameter '{code}' of type {} is not supported yet", param.kind.as_str()),
        ));
    }
    Ok(param)
}

/// The index table that holds a parameter kind's rows.
pub fn table_of(kind: ParamKind) -> IndexTable {
    match kind {
        ParamKind::Token | ParamKind::Special => IndexTable::Token,
        ParamKind::Composite => IndexTable::Composite,
        ParamKind::String => IndexTable::String,
        ParamKind::Reference => IndexTable::Reference,
        ParamKind::Uri => IndexTable::Uri,
        ParamKind::Date => IndexTable::Date,
        ParamKind::Number => IndexTable::Number,
        ParamKind::Quantity => IndexTable::Quantity,
    }
}

/// A condition on text cut as the index cuts its values ([`crate::search::index::bounded`]): a
/// value longer than the index keeps is found by its beginning.
fn bound(condition: Condition) -> Condition {
    use crate::search::index::bounded;
    match condition {
        Condition::String { param, value, matching } => Condition::String { param, value: bounded(value), matching },
        Condition::Token { param, system, code } => {
            let system = match system {
                TokenSystem::Is(system) => TokenSystem::Is(bounded(system)),
                other => other,
            };
            Condition::Token { param, system, code: code.map(bounded) }
        }
        Condition::Uri { param, value, matching } => Condition::Uri { param, value: bounded(value), matching },
        other => other,
    }
}

use crate::validation::implicit_code_system;

fn parse_value(
    param: &SearchParam,
    code: &str,
    modifier: Option<&str>,
    value: &str,
    base_url: &str,
) -> Result<Condition, FhirError> {
    let name = code.to_string();
    match (param.kind, modifier) {
        (ParamKind::String, None) => {
            Ok(Condition::String { param: name, value: normalize(value), matching: StringMatch::Prefix })
        }
        (ParamKind::String, Some("contains")) => {
            Ok(Condition::String { param: name, value: normalize(value), matching: StringMatch::Contains })
        }
        (ParamKind::String, Some("exact")) => {
            Ok(Condition::String { param: name, value: value.to_string(), matching: StringMatch::Exact })
        }
        (ParamKind::Token, None) => Ok(match parse_token(name, value) {
            // A `code` element carries no system: its required binding's system is implied.
            Condition::Token { param: name, system: TokenSystem::Is(system), code }
                if param
                    .expression
                    .as_ref()
                    .and_then(|e| e.plain_paths())
                    .as_deref()
                    .and_then(implicit_code_system)
                    == Some(system.as_str()) =>
            {
                Condition::Token { param: name, system: TokenSystem::Any, code }
            }
            other => other,
        }),
        (ParamKind::Token, Some("of-type")) => parse_of_type(code, value),
        (ParamKind::Token, Some(m @ ("below" | "above"))) => match parse_token(name, value) {
            Condition::Token { param, system, code: Some(code) } => {
                let matching = if m == "below" { UriMatch::Below } else { UriMatch::Above };
                Ok(Condition::TokenHierarchy { param, system, code, matching })
            }
            _ => Err(FhirError::bad_request(format!("'{code}:{m}' needs a code, not '{value}'"))),
        },
        (ParamKind::Token, Some("text")) => Ok(Condition::String {
            param: format!("{code}:text"),
            value: normalize(value),
            matching: StringMatch::Prefix,
        }),
        (ParamKind::Uri, None) => {
            Ok(Condition::Uri { param: name, value: value.to_string(), matching: UriMatch::Exact })
        }
        (ParamKind::Uri, Some("below")) => {
            Ok(Condition::Uri { param: name, value: value.to_string(), matching: UriMatch::Below })
        }
        (ParamKind::Uri, Some("above")) => {
            Ok(Condition::Uri { param: name, value: value.to_string(), matching: UriMatch::Above })
        }
        (ParamKind::Reference, None) => Ok(parse_reference(name, None, value, base_url)),
        (ParamKind::Reference, Some("identifier")) => Ok(parse_token(format!("{code}:identifier"), value)),
        (ParamKind::Reference, Some(target)) if is_resource_type(target) => {
            if !param.targets.is_empty() && !param.targets.iter().any(|t| t == target) {
                return Err(FhirError::bad_request(format!("'{code}' never references a {target}")));
            }
            Ok(parse_reference(name, Some(target), value, base_url))
        }
        (ParamKind::Date, None) => parse_date(name, value),
        (ParamKind::Number, None) => {
            let (comparison, number, low, high) = parse_number(code, value)?;
            Ok(Condition::Number { param: name, comparison, value: number, low, high })
        }
        (ParamKind::Quantity, None) => parse_quantity(name, value),
        (ParamKind::Composite, None) => parse_composite(param, value, base_url),
        (_, Some(m)) => Err(unsupported_modifier(code, m)),
        (kind, None) => {
            Err(FhirError::bad_request(format!("search parameter '{code}' of type {} is not supported", kind.as_str())))
        }
    }
}

/// `code-value-quantity=http://loinc.org|8480-6$gt120`: one value per component, joined by `$`.
fn parse_composite(param: &SearchParam, value: &str, base_url: &str) -> Result<Condition, FhirError> {
    let values = split_unescaped(value, '$');
    if values.len() != param.components.len() {
        return Err(FhirError::bad_request(format!(
            "'{}' takes {} values joined by '$', not '{value}'",
            param.code,
            param.components.len()
        )));
    }
    let parts = param
        .components
        .iter()
        .zip(&values)
        .map(|(component, value)| composite_match(component.kind, &param.code, value, base_url))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Condition::Composite { param: param.code.clone(), parts })
}

fn composite_match(kind: ParamKind, code: &str, value: &str, base_url: &str) -> Result<CompositeMatch, FhirError> {
    let name = code.to_string();
    match kind {
        ParamKind::Token => match parse_token(name, value) {
            Condition::Token { system, code, .. } => Ok(CompositeMatch::Token { system, code }),
            _ => Err(FhirError::internal()),
        },
        ParamKind::Uri => Ok(CompositeMatch::Token { system: TokenSystem::Any, code: Some(value.to_string()) }),
        ParamKind::Reference => {
            let (system, id) = match parse_local_reference(value, base_url) {
                Some((resource_type, id)) => (TokenSystem::Is(resource_type.to_string()), id.to_string()),
                None => (TokenSystem::Any, value.to_string()),
            };
            Ok(CompositeMatch::Token { system, code: Some(id) })
        }
        ParamKind::String => Ok(CompositeMatch::String { value: normalize(value) }),
        ParamKind::Date => match parse_date(name, value)? {
            Condition::Date { comparison, low, high, .. } => Ok(CompositeMatch::Date { comparison, low, high }),
            _ => Err(FhirError::internal()),
        },
        ParamKind::Number => {
            let (comparison, value, low, high) = parse_number(code, value)?;
            Ok(CompositeMatch::Quantity { comparison, value, low, high, system: None, code: None })
        }
        ParamKind::Quantity => match parse_quantity(name, value)? {
            Condition::Quantity { comparison, value, low, high, system, code, .. } => {
                Ok(CompositeMatch::Quantity { comparison, value, low, high, system, code })
            }
            _ => Err(FhirError::internal()),
        },
        ParamKind::Composite | ParamKind::Special => {
            Err(FhirError::bad_request(format!("'{code}' has a component that cannot be searched")))
        }
    }
}

/// `identifier:of-type=typeSystem|typeCode|value`.
fn parse_of_type(code: &str, value: &str) -> Result<Condition, FhirError> {
    match split_unescaped(value, '|').as_slice() {
        [system, type_code, identifier] if !type_code.is_empty() && !identifier.is_empty() => Ok(Condition::Token {
            param: format!("{code}:of-type"),
            system: if system.is_empty() { TokenSystem::Any } else { TokenSystem::Is(system.clone()) },
            code: Some(format!("{type_code}|{identifier}")),
        }),
        _ => Err(FhirError::bad_request(format!("{code}:of-type takes system|type-code|value, not '{value}'"))),
    }
}

fn unsupported_modifier(code: &str, modifier: &str) -> FhirError {
    FhirError::new(
        ErrorKind::BadRequest,
        IssueCode::NotSupported,
        format!("modifier ':{modifier}' is not supported on '{code}'"),
    )
}

/// A date search value as a condition on `param` (prefix, implicit precision range).
pub fn parse_date(param: String, value: &str) -> Result<Condition, FhirError> {
    let (comparison, text) = split_prefix(value);
    let mut range = parse_range(text).ok_or_else(|| {
        FhirError::bad_request(format!("'{text}' is not a FHIR date, dateTime or instant (search parameter '{param}')"))
    })?;
    if comparison.is_none() {
        range = approximate(range, crate::model::resource::now());
    }
    let comparison = comparison.unwrap_or(Comparison::Eq);
    Ok(Condition::Date { param, comparison, low: range.low, high: range.high })
}

/// A searched number with its implicit precision: `100` means [99.5, 100.5), `1.50` means
/// [1.495, 1.505), `1e2` means [50, 150).
fn parse_number(code: &str, value: &str) -> Result<(Comparison, f64, f64, f64), FhirError> {
    let (comparison, text) = split_prefix(value);
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
    let (low, high) = if comparison.is_none() {
        let slack = (number.abs() * 0.1).max(half_step);
        (number - slack, number + slack)
    } else {
        (number - half_step, number + half_step)
    };
    Ok((comparison.unwrap_or(Comparison::Eq), number, low, high))
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

    #[test]
    fn splits_with_escapes() {
        assert_eq!(split_unescaped("a,b\\,c", ','), vec!["a", "b,c"]);
        assert_eq!(split_unescaped("sys|co\\|de", '|'), vec!["sys", "co|de"]);
    }

    #[test]
    fn numbers_carry_their_precision() {
        assert_eq!(parse_number("n", "100").unwrap(), (Comparison::Eq, 100.0, 99.5, 100.5));
        assert_eq!(parse_number("n", "1e2").unwrap(), (Comparison::Eq, 100.0, 50.0, 150.0));
        assert!(parse_number("n", "NaN").is_err());
        assert!(parse_number("n", "abc").is_err());
    }

    #[test]
    fn quantities_split_system_and_code() {
        match parse_quantity("value-quantity".into(), "le5.40|http://unitsofmeasure.org|mmol/L").unwrap() {
            Condition::Quantity { comparison, value, low, high, system, code, .. } => {
                assert_eq!((comparison, value), (Comparison::Le, 5.4));
                assert!((low - 5.395).abs() < 1e-9 && (high - 5.405).abs() < 1e-9);
                assert_eq!((system.as_deref(), code.as_deref()), (Some("http://unitsofmeasure.org"), Some("mmol/L")));
            }
            other => panic!("{other:?}"),
        }
    }
}
