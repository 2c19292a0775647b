//! Search: type, compartment and system searches; paging by keyset cursor; `_include` and
//! `_revinclude` (with `:iterate`); `_summary` and `_elements`.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::bundle_writer::BundleWriter;
use super::view::ReadView;
use super::{Body, FhirRequest, FhirResponse, FhirService};
use crate::model::outcome::operation_outcome;
use crate::model::{subset, FhirError, Issue, IssueCode};
use crate::search::criteria::{Context, ValueSets};
use crate::search::params::{parse_search, Include, ParsedSearch, Summary};
use crate::store::{Condition, ResourceVersion, SearchQuery, UriMatch};

/// The most resources `_include`/`_revinclude` add to one page; past it the page says so.
pub const MAX_INCLUDED: usize = 1000;

/// Where a search runs.
pub(super) struct SearchScope {
    /// The resource types searched.
    pub resource_types: Vec<String>,
    /// The path of the search relative to the base, for links (`Patient`, `Patient/1/Observation`, ``).
    pub path: String,
    /// Conditions the scope itself imposes (compartment membership).
    pub required: Vec<Vec<Condition>>,
    /// Parameters the scope consumed that links must repeat (`_type` of a system search).
    pub link_params: Vec<(String, String)>,
}

type Key = (String, String);

fn key_of(resource: &ResourceVersion) -> Key {
    (resource.resource_type.clone(), resource.id.clone())
}

impl FhirService {
    /// Runs a search and answers with a `searchset` Bundle.
    pub(super) async fn search(
        &self,
        view: &mut ReadView<'_>,
        scope: SearchScope,
        request: &FhirRequest,
    ) -> Result<FhirResponse, FhirError> {
        let value_sets = self.value_sets(view, &request.query).await?;
        let registry = self.registry();
        let context = Context { registry: &registry, base_url: &self.config.base_url, value_sets: &value_sets };
        let mut parsed = parse_search(
            context,
            &scope.resource_types,
            &request.query,
            request.conditions.strict,
            self.config.paging,
        )?;
        parsed.query.all_of.extend(scope.required.iter().cloned());
        if parsed.summary == Summary::Count {
            parsed.query.count = 0;
        }
        if parsed.query.count == 0 {
            parsed.query.with_total = true;
        }
        let page = view.search(&mut parsed.query).await?;
        let (included, truncated) = included(view, &page.resources, &parsed.includes).await?;

        let links = self.links(
            &scope,
            &parsed,
            page.next.as_ref().map(|c| c.encode()),
            page.previous.as_ref().map(|c| c.encode()),
        );
        let mut bundle = BundleWriter::new("searchset", page.total, &links);
        for found in &page.resources {
            self.write_entry(&mut bundle, found, "match", &parsed)?;
        }
        for found in &included {
            self.write_entry(&mut bundle, found, "include", &parsed)?;
        }
        if truncated {
            let warning = Issue::warning(
                IssueCode::TooCostly,
                format!("only the first {MAX_INCLUDED} included resources are in this page; narrow the search or lower _count"),
            );
            let outcome = serde_json::to_vec(&operation_outcome(&[warning])).map_err(|_| FhirError::internal())?;
            bundle.entry(&json!({"search": {"mode": "outcome"}}), Some(&outcome));
        }
        Ok(FhirResponse::new(200, Body::Raw(bundle.finish())))
    }

    /// The ValueSets named by `:in`/`:not-in` criteria, expanded from their `compose.include`
    /// concept lists (or their stored `expansion`). Unknown ones (and those the caller may not
    /// read) are left out; the parser says so.
    async fn value_sets(
        &self,
        view: &mut ReadView<'_>,
        parameters: &[(String, String)],
    ) -> Result<ValueSets, FhirError> {
        let mut value_sets = ValueSets::new();
        for (name, url) in parameters.iter().filter(|(name, _)| name.ends_with(":in") || name.ends_with(":not-in")) {
            if value_sets.contains_key(url) {
                continue;
            }
            let mut query = SearchQuery::new("ValueSet", 1);
            query.all_of.push(vec![Condition::Uri {
                param: "url".into(),
                value: url.clone(),
                matching: UriMatch::Exact,
            }]);
            let Some(found) = view.search_readable(&mut query).await?.resources.into_iter().next() else {
                tracing::debug!(%name, %url, "no such ValueSet");
                continue;
            };
            let value_set: Value = serde_json::from_slice(&found.body).map_err(|_| FhirError::internal())?;
            value_sets.insert(url.clone(), expand(&value_set));
        }
        Ok(value_sets)
    }

    fn write_entry(
        &self,
        bundle: &mut BundleWriter,
        found: &ResourceVersion,
        mode: &str,
        parsed: &ParsedSearch,
    ) -> Result<(), FhirError> {
        let entry = json!({"fullUrl": self.resource_url(&found.resource_type, &found.id), "search": {"mode": mode}});
        type Subset<'a> = Box<dyn Fn(&Value) -> Value + 'a>;
        let subset: Option<Subset<'_>> = match (&parsed.elements, parsed.summary) {
            (Some(names), _) => Some(Box::new(move |resource| subset::elements(resource, names))),
            (None, Summary::True) => Some(Box::new(subset::summary)),
            (None, Summary::Text) => Some(Box::new(subset::text_only)),
            (None, Summary::Data) => Some(Box::new(subset::without_text)),
            (None, Summary::False | Summary::Count) => None,
        };
        let Some(subset) = subset else {
            bundle.entry(&entry, Some(&found.body));
            return Ok(());
        };
        let resource: Value = serde_json::from_slice(&found.body).map_err(|_| FhirError::internal())?;
        bundle.entry(&entry, Some(&serde_json::to_vec(&subset(&resource)).map_err(|_| FhirError::internal())?));
        Ok(())
    }

    /// `self`, `first`, `previous` and `next` links. Only applied parameters appear.
    fn links(
        &self,
        scope: &SearchScope,
        parsed: &ParsedSearch,
        next: Option<String>,
        previous: Option<String>,
    ) -> Vec<(&'static str, String)> {
        let path = &scope.path;
        let base =
            if path.is_empty() { self.config.base_url.clone() } else { format!("{}/{path}", self.config.base_url) };
        let url = |cursor: Option<&str>| {
            let mut pairs = url::form_urlencoded::Serializer::new(String::new());
            for (name, value) in scope.link_params.iter().chain(&parsed.applied) {
                pairs.append_pair(name, value);
            }
            if !parsed.applied.iter().any(|(name, _)| name == "_count") {
                pairs.append_pair("_count", &parsed.query.count.to_string());
            }
            if let Some(cursor) = cursor {
                pairs.append_pair("_cursor", cursor);
            }
            format!("{base}?{}", pairs.finish())
        };
        let current = parsed.query.cursor.as_ref().map(|c| c.encode());
        let mut links = vec![("self", url(current.as_deref())), ("first", url(None))];
        if let Some(previous) = previous {
            links.push(("previous", url(Some(&previous))));
        }
        if let Some(next) = next {
            links.push(("next", url(Some(&next))));
        }
        links
    }
}

/// Resolves `_include` and `_revinclude`, iterating where asked, up to [`MAX_INCLUDED`].
/// Returns the included resources and whether the bound cut them short.
async fn included(
    view: &mut ReadView<'_>,
    matches: &[ResourceVersion],
    includes: &[Include],
) -> Result<(Vec<ResourceVersion>, bool), FhirError> {
    if includes.is_empty() || matches.is_empty() {
        return Ok((Vec::new(), false));
    }
    let mut seen: HashSet<Key> = matches.iter().map(key_of).collect();
    let mut frontier: Vec<Key> = matches.iter().map(key_of).collect();
    let mut included = Vec::new();
    let mut first_round = true;
    while !frontier.is_empty() {
        let mut found: Vec<Key> = Vec::new();
        for include in includes.iter().filter(|i| first_round || i.iterate) {
            for key in follow(view, include, &frontier).await? {
                if seen.insert(key.clone()) {
                    found.push(key);
                }
            }
        }
        let truncated = included.len() + found.len() > MAX_INCLUDED;
        found.truncate(MAX_INCLUDED - included.len());
        // Only what the caller may read is included, and only that is followed further.
        let mut resources = view.read_many(&found).await?;
        let found: Vec<Key> = resources.iter().map(key_of).collect();
        resources.sort_by_key(key_of);
        included.extend(resources);
        if truncated {
            return Ok((included, true));
        }
        frontier = found;
        first_round = false;
    }
    Ok((included, false))
}

async fn follow(view: &mut ReadView<'_>, include: &Include, frontier: &[Key]) -> Result<Vec<Key>, FhirError> {
    let any_type = include.source_type == "*";
    if include.reverse {
        if any_type {
            return Ok(Vec::new());
        }
        return view.references_to(frontier, &include.source_type, include.param.as_deref()).await;
    }
    let sources: Vec<Key> = frontier.iter().filter(|(t, _)| any_type || *t == include.source_type).cloned().collect();
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    view.references_from(&sources, include.param.as_deref(), include.target_type.as_deref()).await
}

/// The (system, code) pairs of a ValueSet: its expansion if stored, else the concepts its
/// `compose.include` lists (an include without concepts stands for its whole system).
fn expand(value_set: &Value) -> Vec<(String, Option<String>)> {
    let text = |v: &Value, name: &str| v.get(name).and_then(Value::as_str).map(str::to_string);
    if let Some(contains) = value_set.pointer("/expansion/contains").and_then(Value::as_array) {
        return contains.iter().filter_map(|c| Some((text(c, "system")?, Some(text(c, "code")?)))).collect();
    }
    let includes = value_set.pointer("/compose/include").and_then(Value::as_array).into_iter().flatten();
    includes
        .filter_map(|include| Some((include, text(include, "system")?)))
        .flat_map(|(include, system)| match include.get("concept").and_then(Value::as_array) {
            Some(concepts) => {
                concepts.iter().filter_map(|c| text(c, "code")).map(|code| (system.clone(), Some(code))).collect()
            }
            None => vec![(system, None)],
        })
        .collect()
}
