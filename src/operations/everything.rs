//! `$everything` (FHIR R4 `Patient-everything`): `Patient/[id]/$everything` returns the
//! patient, every resource in their Patient compartment, and the resources those reference
//! that belong to no patient (Practitioner, Organization, Location, Medication…) as
//! `search.mode = include`; `Patient/$everything` does the same for every patient the caller
//! reaches, one patient after another (for a patient app, its own record).
//!
//! Everything is read through the caller's view: a resource type the token may not search is
//! left out, a restricted one keeps only what the restriction admits, and included resources
//! are those the caller may read. Pages follow keyset cursors like searches (ADR 2): a page
//! never spans two patients, and a resource present throughout is returned exactly once
//! however the record changes between pages.
//!
//! Parameters: `start`/`end` keep resources whose clinical date (`date` search parameter of
//! their type) meets the range, and those without one; `_since` keeps resources changed since
//! that instant; `_type` limits the types; `_count` sets the page size.

use async_trait::async_trait;
use serde_json::json;

use super::{Inputs, Level, Needs, Operation};
use crate::model::FhirError;
use crate::rest::{Body, BundleWriter, FhirResponse, Lookup, OperationContext};
use crate::search::compartment::{membership, params as compartment_params};
use crate::search::criteria::{parse_criterion, Context, ValueSets};
use crate::search::Registry;
use crate::store::{Condition, Cursor, ResourceVersion, SearchQuery};

pub struct Everything;

#[async_trait]
impl Operation for Everything {
    fn definition_id(&self) -> &'static str {
        "Patient-everything"
    }

    fn needs(&self) -> Needs {
        Needs::ReadInstance
    }

    fn pages(&self) -> bool {
        true
    }

    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let filters = Filters::read(inputs, context)?;
        let position = context.cursor().map(Position::decode).transpose()?;
        let patient = match (level, &position) {
            (Level::Instance(_, id), Some(position)) if position.patient != *id => return Err(foreign_cursor()),
            (Level::Instance(_, id), _) => Some(id.clone()),
            // A cursor names a patient: one the caller reaches, as a link of its own would.
            (_, Some(position)) if !reaches_patient(context, &position.patient).await? => return Err(foreign_cursor()),
            (_, Some(position)) => Some(position.patient.clone()),
            (_, None) => next_patient(context, None).await?,
        };
        let Some(patient) = patient else {
            return Ok(bundle(context, level, &filters, &[], &[], None));
        };
        let position = position.unwrap_or(Position { patient, patient_given: false, after: None });
        let mut matches = Vec::new();
        if !position.patient_given && filters.wanted.wants("Patient") {
            if let Lookup::Found(found) = context.view.read("Patient", &position.patient).await? {
                if filters.wanted.changed_since(&found) {
                    matches.push(found);
                }
            }
        }
        let room = filters.count - matches.len();
        let mut next = match room {
            0 => Some(Position { patient: position.patient.clone(), patient_given: true, after: None }),
            _ => {
                let registry = context.registry();
                let (patient, after) = (&position.patient, position.after.as_deref());
                let query = compartment_query(&registry, context.base_url(), patient, &filters.wanted, room, after)?;
                let page = context.view.search_readable(query).await?;
                matches.extend(page.resources);
                page.next.map(|cursor| Position {
                    patient: position.patient.clone(),
                    patient_given: true,
                    after: Some(cursor.encode()),
                })
            }
        };
        if next.is_none() && matches!(level, Level::Type(_)) {
            next = next_patient(context, Some(&position.patient)).await?.map(|patient| Position {
                patient,
                patient_given: false,
                after: None,
            });
        }
        let included = referenced(context, &matches).await?;
        let current = context.cursor().map(str::to_string);
        let links = Links { current, next: next.map(|p| p.encode()) };
        Ok(bundle(context, level, &filters, &matches, &included, Some(links)))
    }
}

/// The checked parameters.
struct Filters {
    wanted: Wanted,
    count: usize,
    /// The parameters as given, for the links.
    applied: Vec<(String, String)>,
}

/// Which of a record's resources are wanted (`_type`, `start`, `end`, `_since`).
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    /// The types wanted (all when empty).
    pub types: Vec<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub since: Option<String>,
}

impl Wanted {
    fn wants(&self, resource_type: &str) -> bool {
        self.types.is_empty() || self.types.iter().any(|t| t == resource_type)
    }

    /// Whether `version` was last updated at or after `_since` (always without it).
    fn changed_since(&self, version: &ResourceVersion) -> bool {
        let since = self.since.as_deref().and_then(crate::model::resource::parse_instant);
        since.is_none_or(|since| version.last_updated >= since)
    }
}

impl Filters {
    fn read(inputs: &Inputs, context: &OperationContext<'_>) -> Result<Filters, FhirError> {
        let types: Vec<String> =
            inputs.texts("_type").flat_map(|t| t.split(',')).map(str::trim).map(str::to_string).collect();
        if let Some(unknown) = types.iter().find(|t| !crate::model::validate::is_resource_type(t)) {
            return Err(FhirError::bad_request(format!("_type: '{unknown}' is not a resource type"))
                .with_expression("Parameters.parameter.where(name = '_type')"));
        }
        let paging = context.paging();
        let count = match inputs.integer("_count") {
            Some(count) if count < 1 => {
                return Err(FhirError::bad_request("_count must be at least 1")
                    .with_expression("Parameters.parameter.where(name = '_count')"))
            }
            Some(count) => (count as usize).min(paging.max_count),
            None => paging.default_count,
        };
        let text = |name: &str| inputs.text(name).map(str::to_string);
        let mut applied: Vec<(String, String)> = Vec::new();
        for name in ["start", "end", "_since"] {
            applied.extend(text(name).map(|value| (name.to_string(), value)));
        }
        if !types.is_empty() {
            applied.push(("_type".to_string(), types.join(",")));
        }
        applied.push(("_count".to_string(), count.to_string()));
        let wanted = Wanted { types, start: text("start"), end: text("end"), since: text("_since") };
        Ok(Filters { wanted, count, applied })
    }
}

/// Where a page starts: the patient, whether their Patient resource was given already, and
/// the cursor in their compartment.
#[derive(Debug, Clone, PartialEq)]
struct Position {
    patient: String,
    patient_given: bool,
    after: Option<String>,
}

impl Position {
    fn encode(&self) -> String {
        json!([self.patient, self.patient_given, self.after]).to_string()
    }

    fn decode(text: &str) -> Result<Position, FhirError> {
        let (patient, patient_given, after): (String, bool, Option<String>) =
            serde_json::from_str(text).map_err(|_| foreign_cursor())?;
        if !crate::model::resource::is_valid_id(&patient) {
            return Err(foreign_cursor());
        }
        Ok(Position { patient, patient_given, after })
    }
}

fn foreign_cursor() -> FhirError {
    FhirError::bad_request("the _cursor does not belong to this $everything; follow the links as given")
}

/// The first patient the caller may search after `after` (by id), or the first of all; 403
/// when the token may search no Patient at all.
async fn next_patient(context: &mut OperationContext<'_>, after: Option<&str>) -> Result<Option<String>, FhirError> {
    let mut query = SearchQuery::new("Patient", 1);
    query.cursor =
        after.map(|id| Cursor { values: Vec::new(), resource_type: "Patient".into(), id: id.into(), backward: false });
    let page = context.view.search(query).await?;
    Ok(page.resources.into_iter().next().map(|patient| patient.id))
}

/// Whether the caller may search the Patient `id`.
async fn reaches_patient(context: &mut OperationContext<'_>, id: &str) -> Result<bool, FhirError> {
    let mut query = SearchQuery::new("Patient", 1);
    query.all_of.push(vec![Condition::Id(id.to_string())]);
    Ok(!context.view.search(query).await?.resources.is_empty())
}

/// The search for one page of `patient`'s compartment (the Patient resource itself aside):
/// `room` resources after the search cursor `after`.
///
/// One lookup drives it: the patient's incoming references through any compartment parameter
/// of the types searched (`param IN (…)`, one index range). A second group, probed per
/// candidate, keeps only references through the parameters of the candidate's own type, with
/// the date range where one is asked for.
pub fn compartment_query(
    registry: &Registry,
    base_url: &str,
    patient: &str,
    wanted: &Wanted,
    room: usize,
    after: Option<&str>,
) -> Result<SearchQuery, FhirError> {
    let value_sets = ValueSets::new();
    let search = Context { registry, base_url, value_sets: &value_sets };
    let reference = |param: &str| Condition::Reference {
        param: param.to_string(),
        target_type: Some("Patient".to_string()),
        target_id: patient.to_string(),
    };
    let mut types = Vec::new();
    let mut driver: Vec<Condition> = Vec::new();
    let mut by_type: Vec<Condition> = Vec::new();
    for resource_type in compartment_types().filter(|t| wanted.wants(t)) {
        let params: Vec<&String> =
            compartment_params("Patient", resource_type).unwrap_or_default().iter().filter(|p| *p != "{def}").collect();
        if params.is_empty() {
            continue;
        }
        for param in &params {
            let condition = reference(param);
            if !driver.contains(&condition) {
                driver.push(condition);
            }
        }
        let mut clause = vec![
            Condition::Type(resource_type.to_string()),
            Condition::AnyOf(params.iter().map(|p| reference(p)).collect()),
        ];
        clause.extend(date_range(search, registry, resource_type, wanted)?);
        by_type.push(Condition::AllOf(clause));
        types.push(resource_type.to_string());
    }
    let mut query = SearchQuery::new("", room);
    query.resource_types = types;
    query.all_of = vec![driver, by_type];
    if let Some(since) = &wanted.since {
        query.all_of.push(parse_criterion(search, "Patient", "_lastUpdated", &format!("ge{since}"))?);
    }
    if let Some(after) = after {
        let cursor = Cursor::decode(after, &query.sort).ok_or_else(foreign_cursor)?;
        query.cursor = Some(cursor);
    }
    Ok(query)
}

/// The condition that a `resource_type` resource's clinical date meets `start`/`end`, or that
/// it has none (a type without a `date` parameter is not limited).
fn date_range(
    search: Context<'_>,
    registry: &Registry,
    resource_type: &str,
    wanted: &Wanted,
) -> Result<Option<Condition>, FhirError> {
    if wanted.start.is_none() && wanted.end.is_none() {
        return Ok(None);
    }
    if !registry.params_for(resource_type).any(|p| p.code == "date") {
        return Ok(None);
    }
    let mut within = Vec::new();
    if let Some(start) = &wanted.start {
        within.push(Condition::AnyOf(parse_criterion(search, resource_type, "date", &format!("ge{start}"))?));
    }
    if let Some(end) = &wanted.end {
        within.push(Condition::AnyOf(parse_criterion(search, resource_type, "date", &format!("le{end}"))?));
    }
    let undated = parse_criterion(search, resource_type, "date:missing", "true")?;
    Ok(Some(Condition::AnyOf([vec![Condition::AllOf(within)], undated].concat())))
}

/// The types that can be in a Patient compartment (the Patient resource itself aside, which
/// is in its own).
fn compartment_types() -> impl Iterator<Item = &'static str> {
    crate::model::validate::resource_types()
        .into_iter()
        .filter(|t| compartment_params("Patient", t).is_some_and(|params| params.iter().any(|p| p != "{def}")))
}

/// The resources `matches` reference that belong to no patient's compartment (who and where
/// care was given, what was prescribed), as far as the caller may read them.
async fn referenced(
    context: &mut OperationContext<'_>,
    matches: &[ResourceVersion],
) -> Result<Vec<ResourceVersion>, FhirError> {
    if matches.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<(String, String)> = matches.iter().map(|m| (m.resource_type.clone(), m.id.clone())).collect();
    let mut included = context.view.referenced(&keys).await?;
    included.retain(|r| membership("Patient", "", &r.resource_type).is_none());
    included.sort_by(|a, b| (&a.resource_type, &a.id).cmp(&(&b.resource_type, &b.id)));
    included.dedup_by(|a, b| a.resource_type == b.resource_type && a.id == b.id);
    Ok(included)
}

/// The `self` and `next` cursors of a page.
struct Links {
    current: Option<String>,
    next: Option<String>,
}

fn bundle(
    context: &OperationContext<'_>,
    level: &Level,
    filters: &Filters,
    matches: &[ResourceVersion],
    included: &[ResourceVersion],
    links: Option<Links>,
) -> FhirResponse {
    let path = match level {
        Level::Instance(t, id) => format!("{}/{t}/{id}/$everything", context.base_url()),
        _ => format!("{}/Patient/$everything", context.base_url()),
    };
    let url = |cursor: Option<&str>| {
        let mut pairs = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in &filters.applied {
            pairs.append_pair(name, value);
        }
        if let Some(cursor) = cursor {
            pairs.append_pair("_cursor", cursor);
        }
        format!("{path}?{}", pairs.finish())
    };
    let links = links.unwrap_or(Links { current: None, next: None });
    let mut relations = vec![("self", url(links.current.as_deref())), ("first", url(None))];
    if let Some(next) = &links.next {
        relations.push(("next", url(Some(next))));
    }
    let mut bundle = BundleWriter::new("searchset", None, &relations);
    for (found, mode) in matches.iter().map(|m| (m, "match")).chain(included.iter().map(|i| (i, "include"))) {
        let entry = json!({
            "fullUrl": context.resource_url(&found.resource_type, &found.id),
            "search": {"mode": mode},
        });
        bundle.entry(&entry, Some(&found.body));
    }
    FhirResponse::new(200, Body::Raw(bundle.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_refuse_foreign_cursors() {
        let position = Position { patient: "p1".into(), patient_given: true, after: Some("[\"next\"]".into()) };
        assert_eq!(Position::decode(&position.encode()).unwrap(), position);
        assert_eq!(Position::decode("[\"next\",\"Patient\",\"x\"]").unwrap_err().status(), 400);
        assert_eq!(Position::decode("[\"a b\",false,null]").unwrap_err().status(), 400);
    }

    #[test]
    fn compartment_types_leave_out_shared_data() {
        let types: Vec<&str> = compartment_types().collect();
        assert!(types.contains(&"Observation") && types.contains(&"Encounter"));
        assert!(!types.contains(&"Practitioner") && !types.contains(&"Medication"));
    }
}
