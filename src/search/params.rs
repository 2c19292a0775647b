//! Parses the parameters of a search request: the criteria (see [`super::criteria`]) and the
//! result parameters `_sort`, `_count`, `_total`, `_include`, `_revinclude`, `_summary`,
//! `_elements` and the paging `_cursor`. Parameters the server cannot apply are errors under
//! `Prefer: handling=strict` and are otherwise ignored and left out of the `self` link, as FHIR
//! R4 search.html prescribes.

use super::criteria::{parse_criterion, table_of, Context};
use super::{ParamKind, Registry};
use crate::model::validate::is_resource_type;
use crate::model::{ErrorKind, FhirError, IssueCode};
use crate::store::{Condition, Cursor, SearchQuery, SortBy, SortKey};

/// Parameters that only shape the HTTP response; the HTTP layer reads them.
const FORMAT_PARAMETERS: &[&str] = &["_format", "_pretty"];

/// Page size limits.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    pub default_count: usize,
    pub max_count: usize,
}

/// `_summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Summary {
    #[default]
    False,
    True,
    Text,
    Data,
    Count,
}

/// One `_include` or `_revinclude`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// `_revinclude`: resources that point at the matches.
    pub reverse: bool,
    /// `:iterate`: also apply to included resources.
    pub iterate: bool,
    /// The type whose reference parameter is followed.
    pub source_type: String,
    /// The reference parameter; `None` for `*` (every reference).
    pub param: Option<String>,
    pub target_type: Option<String>,
}

/// A parsed search.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSearch {
    pub query: SearchQuery,
    /// The parameters that were applied, for the `self` link (without `_cursor`).
    pub applied: Vec<(String, String)>,
    pub includes: Vec<Include>,
    pub summary: Summary,
    /// `_elements`: the top-level elements to keep.
    pub elements: Option<Vec<String>>,
}

/// Parses `parameters` of a search on `resource_types` (one type, or several for `_type`).
pub fn parse_search(
    context: Context<'_>,
    resource_types: &[String],
    parameters: &[(String, String)],
    strict: bool,
    paging: Paging,
) -> Result<ParsedSearch, FhirError> {
    let mut query = SearchQuery::new("", paging.default_count);
    query.resource_types = resource_types.to_vec();
    let mut parsed =
        ParsedSearch { query, applied: Vec::new(), includes: Vec::new(), summary: Summary::False, elements: None };
    let mut cursor = None;
    for (name, value) in parameters {
        if FORMAT_PARAMETERS.contains(&name.as_str()) {
            continue;
        }
        if name == "_cursor" {
            cursor = Some(value.clone());
            continue;
        }
        match apply_parameter(context, &mut parsed, name, value, paging) {
            Ok(()) => parsed.applied.push((name.clone(), value.clone())),
            Err(error) if strict => return Err(error),
            Err(error) => tracing::debug!(%error, parameter = %name, "ignored search parameter"),
        }
    }
    if let Some(text) = cursor {
        let decoded = Cursor::decode(&text, &parsed.query.sort).ok_or_else(|| {
            FhirError::bad_request("the _cursor does not belong to this search; follow the links as given")
        })?;
        parsed.query.cursor = Some(decoded);
    }
    Ok(parsed)
}

fn apply_parameter(
    context: Context<'_>,
    parsed: &mut ParsedSearch,
    name: &str,
    value: &str,
    paging: Paging,
) -> Result<(), FhirError> {
    let registry = context.registry;
    let query = &mut parsed.query;
    match name {
        "_count" => {
            let count: usize = value
                .parse()
                .map_err(|_| FhirError::bad_request(format!("_count must be a non-negative integer, not '{value}'")))?;
            query.count = count.min(paging.max_count);
        }
        "_total" => match value {
            "none" => query.with_total = false,
            "estimate" | "accurate" => query.with_total = true,
            _ => return Err(FhirError::bad_request(format!("_total takes none, estimate or accurate, not '{value}'"))),
        },
        "_sort" => query.sort = parse_sort(registry, &query.resource_types, value)?,
        "_summary" => {
            parsed.summary = match value {
                "true" => Summary::True,
                "text" => Summary::Text,
                "data" => Summary::Data,
                "count" => Summary::Count,
                "false" => Summary::False,
                _ => {
                    return Err(FhirError::bad_request(format!(
                        "_summary takes true, text, data, count or false, not '{value}'"
                    )))
                }
            }
        }
        "_elements" => {
            let elements: Vec<String> =
                value.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
            if elements.is_empty() {
                return Err(FhirError::bad_request("_elements needs at least one element name"));
            }
            parsed.elements = Some(elements);
        }
        "_contained" | "_containedType" => {
            return Err(FhirError::new(
                ErrorKind::BadRequest,
                IssueCode::NotSupported,
                "searching contained resources (_contained) is not supported",
            ))
        }
        _ if name == "_include"
            || name.starts_with("_include:")
            || name == "_revinclude"
            || name.starts_with("_revinclude:") =>
        {
            parsed.includes.push(parse_include(registry, name, value)?);
        }
        _ => {
            let mut group = Vec::new();
            let code = name.split([':', '.']).next().unwrap_or(name);
            for resource_type in &query.resource_types {
                let conditions = parse_criterion(context, resource_type, name, value)?;
                // Rewritten onto other parameters' rows, they mean those parameters of this
                // type only: on another type searched alongside, the same codes may mean
                // something else.
                if query.resource_types.len() > 1 && registry.stored_under(resource_type, code).is_some() {
                    let this_type = Condition::Type(resource_type.clone());
                    group.push(Condition::AllOf(vec![this_type, Condition::AnyOf(conditions)]));
                } else if query.resource_types.len() > 1 {
                    // Another type's conditions are often the same ones (`name` on Patient and
                    // Practitioner): each is tested once.
                    for condition in conditions {
                        if !group.contains(&condition) {
                            group.push(condition);
                        }
                    }
                } else {
                    group.extend(conditions);
                }
            }
            query.all_of.push(group);
        }
    }
    Ok(())
}

/// `_sort=-date,name`: keys in order; `-` descends.
fn parse_sort(registry: &Registry, resource_types: &[String], value: &str) -> Result<Vec<SortKey>, FhirError> {
    value
        .split(',')
        .map(|item| {
            let (descending, code) = match item.strip_prefix('-') {
                Some(code) => (true, code),
                None => (false, item),
            };
            let by = match code {
                "_id" => SortBy::Id,
                "_lastUpdated" => SortBy::LastUpdated,
                _ => {
                    let kinds: Vec<ParamKind> =
                        resource_types.iter().filter_map(|t| registry.lookup(t, code)).map(|p| p.kind).collect();
                    // The rows that hold the values, the same for every type searched.
                    let rows_of = |t: &String| {
                        registry.stored_under(t, code).map_or_else(|| vec![code.to_string()], <[String]>::to_vec)
                    };
                    let params = resource_types.first().map(rows_of).unwrap_or_default();
                    let same_rows = resource_types.iter().all(|t| rows_of(t) == params);
                    match kinds.first() {
                        Some(kind)
                            if kinds.len() == resource_types.len()
                                && kind.is_supported()
                                && *kind != ParamKind::Composite
                                && same_rows =>
                        {
                            SortBy::Param { params, table: table_of(*kind) }
                        }
                        _ => {
                            return Err(FhirError::bad_request(format!(
                                "cannot sort by '{code}': not a sortable parameter here"
                            )))
                        }
                    }
                }
            };
            Ok(SortKey { by, descending })
        })
        .collect()
}

/// `Type:param[:target]` or `*`, for `_include[:iterate]` and `_revinclude[:iterate]`.
fn parse_include(registry: &Registry, name: &str, value: &str) -> Result<Include, FhirError> {
    let reverse = name.starts_with("_revinclude");
    let iterate = match name.split_once(':') {
        None => false,
        Some((_, "iterate" | "recurse")) => true,
        Some((_, other)) => return Err(FhirError::bad_request(format!("unknown modifier ':{other}' on {name}"))),
    };
    if value == "*" {
        return Ok(Include { reverse, iterate, source_type: "*".into(), param: None, target_type: None });
    }
    let mut parts = value.split(':');
    let (source_type, code, target_type) = (parts.next().unwrap_or(""), parts.next(), parts.next());
    if !is_resource_type(source_type) || parts.next().is_some() {
        return Err(FhirError::bad_request(format!("{name}={value} must be Type:parameter[:targetType] or *")));
    }
    let param = match code {
        None | Some("*") => None,
        Some(code) => match registry.lookup(source_type, code) {
            Some(p) if p.kind == ParamKind::Reference => Some(code.to_string()),
            _ => return Err(FhirError::bad_request(format!("'{code}' is not a reference parameter of {source_type}"))),
        },
    };
    if let Some(target) = target_type.filter(|t| !is_resource_type(t)) {
        return Err(FhirError::bad_request(format!("'{target}' in {name}={value} is not a resource type")));
    }
    Ok(Include {
        reverse,
        iterate,
        source_type: source_type.to_string(),
        param,
        target_type: target_type.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::date::parse_range;
    use crate::store::{Comparison, Condition, IndexTable, StringMatch, TokenSystem};

    const BASE: &str = "http://localhost:8080/fhir";
    const PAGING: Paging = Paging { default_count: 20, max_count: 100 };

    fn parse(resource_type: &str, params: &[(&str, &str)], strict: bool) -> Result<ParsedSearch, FhirError> {
        let params: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let value_sets = Default::default();
        let context = Context { registry: Registry::standard(), base_url: BASE, value_sets: &value_sets };
        parse_search(context, &[resource_type.to_string()], &params, strict, PAGING)
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
    fn parses_dates_and_modifiers() {
        let parsed = parse("Observation", &[("date", "ge2024-03"), ("code:missing", "true")], true).unwrap();
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
        assert_eq!(
            parsed.query.all_of[1],
            vec![Condition::Missing { param: "code".into(), table: IndexTable::Token, missing: true }]
        );
        assert!(parse("Observation", &[("date", "2024-13")], true).is_err());
        assert!(parse("RiskAssessment", &[("probability", "gtabc")], true).is_err());
        assert!(parse("Observation", &[("code:missing", "maybe")], true).is_err());
    }

    #[test]
    fn parses_chains_and_reverse_chains() {
        let parsed = parse("Observation", &[("subject:Patient.name", "anna")], true).unwrap();
        assert!(
            matches!(&parsed.query.all_of[0][0], Condition::Chain { param, target_types, .. } if param == "subject" && target_types == &["Patient"])
        );
        // Without a type, every target type that has the parameter is tried, in one condition
        // where the criterion reads the same for all of them.
        let parsed = parse("Observation", &[("subject.name", "anna")], true).unwrap();
        assert!(
            matches!(&parsed.query.all_of[0][..], [Condition::Chain { target_types, .. }] if target_types.len() > 1)
        );
        let parsed = parse("Patient", &[("_has:Observation:patient:code", "1234")], true).unwrap();
        assert!(
            matches!(&parsed.query.all_of[0][0], Condition::Has { source_type, param, .. } if source_type == "Observation" && param == "patient")
        );
        assert!(parse("Patient", &[("_has:Observation:code:code", "1")], true).is_err(), "code is not a reference");
        assert!(parse("Observation", &[("code.name", "x")], true).is_err(), "code cannot be chained");
    }

    #[test]
    fn rewritten_criteria_keep_to_their_type_in_searches_over_several() {
        // A custom `combo-code` of DiagnosticReport has rows of its own; Observation's is
        // stored under `code` and `component-code`, which a DiagnosticReport also has.
        let custom = serde_json::json!({"resourceType": "SearchParameter", "id": "dr-combo", "status": "active",
            "url": "http://example.org/dr-combo", "code": "combo-code", "base": ["DiagnosticReport"],
            "type": "token", "expression": "DiagnosticReport.code | DiagnosticReport.code.coding[0]"});
        let (registry, problems) = Registry::standard().with_custom([&custom]);
        assert!(problems.is_empty(), "{problems:?}");
        let value_sets = Default::default();
        let context = Context { registry: &registry, base_url: BASE, value_sets: &value_sets };
        let types = ["Observation".to_string(), "DiagnosticReport".to_string()];
        let params = [("combo-code".to_string(), "8480-6".to_string())];
        let parsed = parse_search(context, &types, &params, true, PAGING).unwrap();
        let token = |param: &str| Condition::Token {
            param: param.into(),
            system: TokenSystem::Any,
            code: Some("8480-6".into()),
        };
        let observation = Condition::AnyOf(vec![token("code"), token("component-code")]);
        assert_eq!(
            parsed.query.all_of,
            vec![vec![
                Condition::AllOf(vec![Condition::Type("Observation".into()), Condition::AnyOf(vec![observation])]),
                token("combo-code"),
            ]]
        );
    }

    #[test]
    fn parses_result_parameters() {
        let parsed = parse(
            "Observation",
            &[
                ("_sort", "-date,_id"),
                ("_include", "Observation:subject:Patient"),
                ("_revinclude:iterate", "Provenance:target"),
                ("_summary", "count"),
                ("_elements", "code,status"),
                ("_total", "accurate"),
            ],
            true,
        )
        .unwrap();
        assert_eq!(
            parsed.query.sort,
            vec![
                SortKey {
                    by: SortBy::Param { params: vec!["date".into()], table: IndexTable::Date },
                    descending: true
                },
                SortKey { by: SortBy::Id, descending: false },
            ]
        );
        assert_eq!(
            parsed.includes[0],
            Include {
                reverse: false,
                iterate: false,
                source_type: "Observation".into(),
                param: Some("subject".into()),
                target_type: Some("Patient".into())
            }
        );
        assert!(parsed.includes[1].reverse && parsed.includes[1].iterate);
        assert_eq!(parsed.summary, Summary::Count);
        assert_eq!(parsed.elements, Some(vec!["code".to_string(), "status".to_string()]));
        assert!(parsed.query.with_total);
        assert!(parse("Observation", &[("_sort", "nonsense")], true).is_err());
        assert!(parse("Observation", &[("_include", "Observation:code")], true).is_err());
    }

    #[test]
    fn strict_rejects_and_lenient_ignores_unknown_parameters() {
        let error = parse("Patient", &[("shoe-size", "9")], true).unwrap_err();
        assert_eq!(error.status(), 400);
        assert!(error.issues[0].diagnostics.contains("shoe-size"));
        let parsed = parse("Patient", &[("shoe-size", "9"), ("gender", "male")], false).unwrap();
        assert_eq!(parsed.applied, vec![("gender".to_string(), "male".to_string())]);
        assert!(parse("Patient", &[("_count", "x")], true).is_err());
        assert!(parse("Patient", &[("gender", "")], true).is_err());
        assert!(
            parse("Patient", &[("_cursor", "garbage")], false).is_err(),
            "a broken cursor is never silently ignored"
        );
    }
}
