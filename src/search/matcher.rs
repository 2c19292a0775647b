//! Evaluates search conditions against one resource's index rows in memory, with the same
//! meaning the SQL planner gives them. Access rules use it for what is not a search: a read, a
//! version, a history entry, an included resource, a resource about to be written.
//!
//! It covers the conditions an access rule is made of (ids, types, tokens, strings,
//! references, uris, `:missing`, `:not`, and/or); for the rest (dates, numbers, quantities,
//! composites, chains, `_has`) it answers `None`, and callers treat that as "no".

use super::criteria::{Context, ValueSets};
use super::params::{parse_search, Paging};
use super::Registry;
use crate::store::{Condition, IndexRows, IndexTable, StringMatch, TokenSystem, UriMatch};

/// The resource a condition is evaluated on.
pub struct Candidate<'a> {
    pub resource_type: &'a str,
    pub id: &'a str,
    pub rows: &'a IndexRows,
}

/// Whether `candidate` meets `condition`; `None` when the condition is of a kind this
/// evaluator does not cover.
pub fn matches(condition: &Condition, candidate: &Candidate<'_>) -> Option<bool> {
    let rows = candidate.rows;
    Some(match condition {
        Condition::Id(id) => candidate.id == id,
        Condition::Type(resource_type) => candidate.resource_type == resource_type,
        Condition::Token { param, system, code } => rows.tokens.iter().any(|row| {
            row.param == *param
                && system_matches(system, row.system.as_deref())
                && code.as_ref().is_none_or(|c| *c == row.code)
        }),
        Condition::TokenHierarchy { param, system, code, matching } => rows.tokens.iter().any(|row| {
            row.param == *param
                && system_matches(system, row.system.as_deref())
                && prefix_matches(&row.code, code, *matching)
        }),
        Condition::String { param, value, matching } => rows.strings.iter().any(|row| {
            row.param == *param
                && match matching {
                    StringMatch::Exact => row.exact == *value,
                    StringMatch::Prefix => row.normalized.starts_with(value.as_str()),
                    StringMatch::Contains => row.normalized.contains(value.as_str()),
                }
        }),
        Condition::Reference { param, target_type, target_id } => rows.references.iter().any(|row| {
            row.param == *param
                && row.target_id.as_deref() == Some(target_id.as_str())
                && target_type.as_ref().is_none_or(|t| row.target_type.as_deref() == Some(t.as_str()))
        }),
        Condition::ReferenceUrl { param, url } => {
            rows.references.iter().any(|row| row.param == *param && row.target_url.as_deref() == Some(url.as_str()))
        }
        Condition::Uri { param, value, matching } => {
            rows.uris.iter().any(|row| row.param == *param && prefix_matches(&row.value, value, *matching))
        }
        Condition::Missing { param, table, missing } => has_row(rows, *table, param)? != *missing,
        Condition::Not(inner) => !matches(inner, candidate)?,
        Condition::AnyOf(inner) => {
            let mut any = false;
            for condition in inner {
                any |= matches(condition, candidate)?;
            }
            any
        }
        Condition::AllOf(inner) => {
            let mut all = true;
            for condition in inner {
                all &= matches(condition, candidate)?;
            }
            all
        }
        Condition::Date { .. }
        | Condition::Number { .. }
        | Condition::Quantity { .. }
        | Condition::Composite { .. }
        | Condition::Chain { .. }
        | Condition::Has { .. } => return None,
    })
}

/// The criteria of a search on `resource_type` (`category=laboratory&patient=Patient/1`, no
/// result parameters) as one condition that [`matches`] decides in memory: how a scope's
/// filter and a subscription's filter are checked against one resource. An error says why
/// the criteria do not qualify.
pub fn memory_condition(
    registry: &Registry,
    base_url: &str,
    resource_type: &str,
    criteria: &str,
) -> Result<Condition, String> {
    let parameters: Vec<(String, String)> = url::form_urlencoded::parse(criteria.as_bytes()).into_owned().collect();
    let value_sets = ValueSets::new();
    let context = Context { registry, base_url, value_sets: &value_sets };
    let paging = Paging { default_count: 1, max_count: 1 };
    let types = [resource_type.to_string()];
    let parsed = parse_search(context, &types, &parameters, true, paging).map_err(|error| error.to_string())?;
    if !parsed.includes.is_empty() || !parsed.query.sort.is_empty() || parsed.elements.is_some() {
        return Err("only search criteria may be given, no result parameters".into());
    }
    if parsed.applied.len() != parameters.len() {
        return Err("the criteria include a parameter that cannot be applied".into());
    }
    let condition = Condition::AllOf(parsed.query.all_of.into_iter().map(Condition::AnyOf).collect());
    let empty = IndexRows::default();
    match matches(&condition, &Candidate { resource_type, id: "", rows: &empty }) {
        Some(_) => Ok(condition),
        None => Err("dates, numbers, quantities, composites, chains and _has cannot be checked on one resource".into()),
    }
}

/// The search parameters (codes) whose index rows deciding `condition` needs. A modifier's
/// rows come with their parameter's (`code:text` rows are indexed with `code`), so `code:text`
/// needs `code`.
pub fn params_of(condition: &Condition) -> Vec<&str> {
    let mut params = Vec::new();
    collect_params(condition, &mut params);
    params
}

fn collect_params<'a>(condition: &'a Condition, params: &mut Vec<&'a str>) {
    match condition {
        Condition::Not(inner) => collect_params(inner, params),
        Condition::AnyOf(inner) | Condition::AllOf(inner) => inner.iter().for_each(|c| collect_params(c, params)),
        leaf => params.extend(leaf.param().map(|param| param.split(':').next().unwrap_or(param))),
    }
}

fn system_matches(wanted: &TokenSystem, system: Option<&str>) -> bool {
    match wanted {
        TokenSystem::Any => true,
        TokenSystem::None => system.is_none(),
        TokenSystem::Is(wanted) => system == Some(wanted.as_str()),
    }
}

fn prefix_matches(stored: &str, searched: &str, matching: UriMatch) -> bool {
    match matching {
        UriMatch::Exact => stored == searched,
        UriMatch::Below => stored.starts_with(searched),
        UriMatch::Above => searched.starts_with(stored),
    }
}

fn has_row(rows: &IndexRows, table: IndexTable, param: &str) -> Option<bool> {
    Some(match table {
        IndexTable::Token => rows.tokens.iter().any(|r| r.param == param),
        IndexTable::String => rows.strings.iter().any(|r| r.param == param),
        IndexTable::Reference => rows.references.iter().any(|r| r.param == param),
        IndexTable::Uri => rows.uris.iter().any(|r| r.param == param),
        IndexTable::Date => rows.dates.iter().any(|r| r.param == param),
        IndexTable::Number => rows.numbers.iter().any(|r| r.param == param),
        IndexTable::Quantity => rows.quantities.iter().any(|r| r.param == param),
        IndexTable::Composite => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ReferenceRow, TokenRow};

    fn rows() -> IndexRows {
        IndexRows {
            tokens: vec![TokenRow {
                param: "category".into(),
                system: Some("http://c".into()),
                code: "laboratory".into(),
            }],
            references: vec![ReferenceRow {
                param: "subject".into(),
                target_type: Some("Patient".into()),
                target_id: Some("a".into()),
                target_url: None,
            }],
            ..IndexRows::default()
        }
    }

    fn check(condition: Condition) -> Option<bool> {
        let rows = rows();
        matches(&condition, &Candidate { resource_type: "Observation", id: "o1", rows: &rows })
    }

    fn subject(id: &str) -> Condition {
        Condition::Reference { param: "subject".into(), target_type: Some("Patient".into()), target_id: id.into() }
    }

    fn category(system: TokenSystem, code: &str) -> Condition {
        Condition::Token { param: "category".into(), system, code: Some(code.into()) }
    }

    #[test]
    fn modifier_rows_are_asked_of_their_parameter() {
        let text = Condition::String { param: "code:text".into(), value: "gluc".into(), matching: StringMatch::Prefix };
        let condition = Condition::AllOf(vec![subject("a"), Condition::Not(Box::new(text.clone()))]);
        assert_eq!(params_of(&condition), ["subject", "code"]);
        // The rows indexing `code` gives are the ones the condition tests.
        let observation = serde_json::json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}], "text": "Glucose"}});
        let registry = crate::search::Registry::standard();
        let rows =
            crate::search::index::index_selected(registry, &observation, "", |code| params_of(&text).contains(&code));
        assert_eq!(matches(&text, &Candidate { resource_type: "Observation", id: "o1", rows: &rows }), Some(true));
    }

    #[test]
    fn references_and_tokens() {
        assert_eq!(check(subject("a")), Some(true));
        assert_eq!(check(subject("b")), Some(false));
        assert_eq!(check(category(TokenSystem::Is("http://c".into()), "laboratory")), Some(true));
        assert_eq!(check(category(TokenSystem::Any, "laboratory")), Some(true));
        assert_eq!(check(category(TokenSystem::None, "laboratory")), Some(false));
        assert_eq!(check(category(TokenSystem::Any, "vital-signs")), Some(false));
    }

    #[test]
    fn combinations() {
        let lab = category(TokenSystem::Any, "laboratory");
        assert_eq!(check(Condition::AllOf(vec![subject("a"), lab.clone()])), Some(true));
        assert_eq!(check(Condition::AllOf(vec![subject("b"), lab.clone()])), Some(false));
        assert_eq!(check(Condition::AnyOf(vec![subject("b"), lab])), Some(true));
        assert_eq!(check(Condition::AnyOf(vec![])), Some(false));
        assert_eq!(check(Condition::Not(Box::new(subject("b")))), Some(true));
        assert_eq!(
            check(Condition::AllOf(vec![Condition::Type("Observation".into()), Condition::Id("o1".into())])),
            Some(true)
        );
        assert_eq!(check(Condition::Type("Patient".into())), Some(false));
    }

    #[test]
    fn unknown_kinds_are_not_guessed() {
        let date = Condition::Date { param: "date".into(), comparison: crate::store::Comparison::Eq, low: 0, high: 1 };
        assert_eq!(check(Condition::AnyOf(vec![subject("a"), date])), None);
    }
}
