//! `$everything` (FHIR R4 `Patient-everything`): `Patient/[id]/$everything` returns the
//! patient, every resource in their Patient compartment, and the resources those reference
//! that belong to no patient (Practitioner, Organization, Location, Medication…) as
//! `search.mode = include`; `Patient/$everything` does the same for every patient the caller
//! reaches, one patient after another (for a patient app, its own record).
//!
//! Everything is read through the caller's view: a resource type the token may not search is
//! left out, a restricted one keeps only what the restriction admits, and included resources
//! are those the caller may read. A page is the compartment searches of the types, in type and
//! id order, each continued by its keyset cursor (ADR 2): a page never spans two patients, and a
//! resource present throughout is returned exactly once however the record changes between
//! pages.
//!
//! Parameters: `start`/`end` keep resources whose clinical date (`date` search parameter of
//! their type) meets the range, and those without one; `_since` keeps resources changed since
//! that instant; `_type` limits the types; `_count` sets the page size.

use async_trait::async_trait;
use serde_json::json;

use super::inputs::parameter_path;
use super::{Inputs, Level, Operation};
use crate::model::FhirError;
use crate::rest::{Body, BundleWriter, FhirResponse, Lookup, OperationContext};
use crate::search::compartment::membership;
use crate::search::criteria::{parse_criterion, Context, ValueSets};
use crate::search::Registry;
use crate::store::{Condition, Cursor, ResourceVersion, SearchQuery};

pub struct Everything;

#[async_trait]
impl Operation for Everything {
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
        let position = position.unwrap_or(Position { patient, patient_given: false, resume: None });
        let mut matches = Vec::new();
        if !position.patient_given && filters.wanted.wants("Patient") {
            if let Lookup::Found(found) = context.view.read("Patient", &position.patient).await? {
                if filters.wanted.changed_since(&found) {
                    matches.push(found);
                }
            }
        }
        let mut next = fill(context, &position, &filters, &mut matches).await?;
        if next.is_none() && matches!(level, Level::Type(_)) {
            next = next_patient(context, Some(&position.patient)).await?.map(|patient| Position {
                patient,
                patient_given: false,
                resume: None,
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
                .with_expression(&parameter_path("_type")));
        }
        let paging = context.paging();
        let count = match inputs.integer("_count") {
            Some(count) if count < 1 => {
                return Err(
                    FhirError::bad_request("_count must be at least 1").with_expression(&parameter_path("_count"))
                )
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
/// where in their compartment to go on: the type, and the search cursor in it (its start when
/// `None`). Types come in name order, each in id order: the (type, id) order of a search.
#[derive(Debug, Clone, PartialEq)]
struct Position {
    patient: String,
    patient_given: bool,
    resume: Option<(String, Option<String>)>,
}

impl Position {
    fn encode(&self) -> String {
        let (resource_type, cursor) = match &self.resume {
            Some((resource_type, cursor)) => (Some(resource_type), cursor.as_ref()),
            None => (None, None),
        };
        json!([self.patient, self.patient_given, resource_type, cursor]).to_string()
    }

    fn decode(text: &str) -> Result<Position, FhirError> {
        type Parts = (String, bool, Option<String>, Option<String>);
        let (patient, patient_given, resource_type, cursor): Parts =
            serde_json::from_str(text).map_err(|_| foreign_cursor())?;
        if !crate::model::resource::is_valid_id(&patient) {
            return Err(foreign_cursor());
        }
        let resume = match (resource_type, cursor) {
            (Some(resource_type), cursor) => Some((resource_type, cursor)),
            (None, None) => None,
            (None, Some(_)) => return Err(foreign_cursor()),
        };
        Ok(Position { patient, patient_given, resume })
    }
}

/// Adds to `matches` the compartment resources from `position` on, type after type, until the
/// page is full; where the next page starts, if anything is left.
///
/// Only the types with a reference to the patient are searched (one index range tells which),
/// each with the compartment search of its type (`Patient/[id]/[type]`): one index lookup per
/// compartment parameter of the type, under the caller's restriction.
async fn fill(
    context: &mut OperationContext<'_>,
    position: &Position,
    filters: &Filters,
    matches: &mut Vec<ResourceVersion>,
) -> Result<Option<Position>, FhirError> {
    let patient = &position.patient;
    let referring = context.view.types_referring_to("Patient", patient).await?;
    let (from_type, mut after) = match &position.resume {
        Some((resource_type, cursor)) => (resource_type.as_str(), cursor.clone()),
        None => ("", None),
    };
    let registry = context.registry();
    for resource_type in referring.iter().filter(|t| t.as_str() >= from_type && filters.wanted.wants(t)) {
        if resource_type != from_type {
            after = None;
        }
        let resume_here = || Position { patient: patient.clone(), patient_given: true, resume: None };
        let room = filters.count - matches.len();
        if room == 0 {
            return Ok(Some(Position { resume: Some((resource_type.clone(), None)), ..resume_here() }));
        }
        let (base_url, wanted) = (context.base_url(), &filters.wanted);
        let Some(mut query) =
            compartment_query(&registry, base_url, patient, resource_type, wanted, room, after.as_deref())?
        else {
            continue;
        };
        let page = context.view.search_readable(&mut query).await?;
        matches.extend(page.resources);
        if let Some(cursor) = page.next {
            return Ok(Some(Position {
                resume: Some((resource_type.clone(), Some(cursor.encode()))),
                ..resume_here()
            }));
        }
    }
    Ok(None)
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
    let page = context.view.search(&mut query).await?;
    Ok(page.resources.into_iter().next().map(|patient| patient.id))
}

/// Whether the caller may search the Patient `id`.
async fn reaches_patient(context: &mut OperationContext<'_>, id: &str) -> Result<bool, FhirError> {
    let mut query = SearchQuery::new("Patient", 1);
    query.all_of.push(vec![Condition::Id(id.to_string())]);
    Ok(!context.view.search(&mut query).await?.resources.is_empty())
}

/// The search for one page of `patient`'s `resource_type` resources (the Patient resource
/// itself aside): `room` resources after the search cursor `after`. `None` for a type that is
/// never in a Patient compartment.
pub fn compartment_query(
    registry: &Registry,
    base_url: &str,
    patient: &str,
    resource_type: &str,
    wanted: &Wanted,
    room: usize,
    after: Option<&str>,
) -> Result<Option<SearchQuery>, FhirError> {
    let Some(membership) = membership("Patient", patient, resource_type) else { return Ok(None) };
    // The patient's own resource is given apart, first; linked patients are members here.
    let members: Vec<Condition> = membership.into_iter().filter(|c| !matches!(c, Condition::Id(_))).collect();
    if members.is_empty() {
        return Ok(None);
    }
    let value_sets = ValueSets::new();
    let search = Context { registry, base_url, value_sets: &value_sets };
    let mut query = SearchQuery::new(resource_type, room);
    query.all_of.push(members);
    query.all_of.extend(date_range(search, registry, resource_type, wanted)?);
    if let Some(since) = &wanted.since {
        query.all_of.push(parse_criterion(search, resource_type, "_lastUpdated", &format!("ge{since}"))?);
    }
    if let Some(after) = after {
        query.cursor = Some(Cursor::decode(after, &query.sort).ok_or_else(foreign_cursor)?);
    }
    Ok(Some(query))
}

/// The group "a `resource_type` resource's clinical date meets `start`/`end`, or it has none"
/// (a type without a `date` parameter is not limited).
fn date_range(
    search: Context<'_>,
    registry: &Registry,
    resource_type: &str,
    wanted: &Wanted,
) -> Result<Option<Vec<Condition>>, FhirError> {
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
    Ok(Some([vec![Condition::AllOf(within)], undated].concat()))
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
        let position = Position {
            patient: "p1".into(),
            patient_given: true,
            resume: Some(("Observation".into(), Some("[\"next\"]".into()))),
        };
        assert_eq!(Position::decode(&position.encode()).unwrap(), position);
        let start = Position { patient: "p1".into(), patient_given: false, resume: None };
        assert_eq!(Position::decode(&start.encode()).unwrap(), start);
        assert_eq!(Position::decode("[\"next\",\"Patient\",\"x\"]").unwrap_err().status(), 400);
        assert_eq!(Position::decode("[\"a b\",false,null,null]").unwrap_err().status(), 400);
        assert_eq!(Position::decode("[\"p1\",true,null,\"[]\"]").unwrap_err().status(), 400);
    }
}
