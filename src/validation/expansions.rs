//! The codes of the value sets that elements bind: those carried (`profiles/expansions.ndjson`,
//! expanded by `profiles/generate.py`), and those of an operator's packages or of the store,
//! expanded here from their ValueSets and CodeSystems the same way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::definitions::Definitions;

#[derive(Deserialize)]
struct Line {
    url: String,
    #[serde(default)]
    codes: Option<Vec<(String, String)>>,
}

/// A value set's codes as (system, code).
pub struct Expansion {
    /// Its codes by code system (a `code` element's implicit system is the one system of its
    /// required binding), so that a lookup allocates nothing.
    by_system: BTreeMap<String, HashSet<String>>,
}

/// The carried expansions by value set url, `None` for those that could not be listed offline.
pub(super) fn carried() -> HashMap<String, Option<Arc<Expansion>>> {
    include_str!("../../profiles/expansions.ndjson")
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let line: Line = serde_json::from_str(line).expect("profiles/expansions.ndjson is generated valid");
            (line.url, line.codes.map(|codes| Arc::new(Expansion::new(codes.into_iter().collect()))))
        })
        .collect()
}

/// The expansions of the value sets at `urls`, listed from the ValueSets and CodeSystems among
/// `resources` and the carried expansions; `None` for those that cannot be (not among them, a
/// code system published elsewhere such as SNOMED CT, a filter other than is-a).
pub(super) fn expand(
    urls: &[&str],
    resources: &[&Value],
    carried: &Definitions,
) -> HashMap<String, Option<Arc<Expansion>>> {
    let by_url = |resource_type: &str| -> HashMap<&str, &Value> {
        let mut found = HashMap::new();
        for resource in resources.iter().copied().filter(|r| r["resourceType"] == resource_type) {
            if let Some(url) = resource["url"].as_str() {
                found.entry(url).or_insert(resource);
            }
        }
        found
    };
    let terminology = Terminology { value_sets: by_url("ValueSet"), code_systems: by_url("CodeSystem"), carried };
    urls.iter()
        .map(|url| (url.to_string(), terminology.expand(url, &[]).ok().map(|codes| Arc::new(Expansion::new(codes)))))
        .collect()
}

type Codes = HashSet<(String, String)>;

/// The ValueSets and CodeSystems one expansion may draw on.
struct Terminology<'r> {
    value_sets: HashMap<&'r str, &'r Value>,
    code_systems: HashMap<&'r str, &'r Value>,
    carried: &'r Definitions,
}

impl Terminology<'_> {
    /// The codes of the value set at `url`, or why they cannot be listed.
    fn expand(&self, url: &str, seen: &[&str]) -> Result<Codes, String> {
        let url = url.split('|').next().unwrap_or(url);
        if seen.contains(&url) {
            return Err(format!("{url} includes itself"));
        }
        let Some(value_set) = self.value_sets.get(url) else {
            return match self.carried.expansion(url) {
                Some(expansion) => Ok(expansion.codes()),
                None => Err(format!("value set {url} is not known")),
            };
        };
        let Some(compose) = value_set.get("compose") else {
            let contains = value_set.pointer("/expansion/contains").and_then(Value::as_array);
            return Ok(flatten(contains, "contains")
                .into_iter()
                .filter(|c| c["abstract"] != true)
                .filter_map(|c| Some((c["system"].as_str()?.to_string(), c["code"].as_str()?.to_string())))
                .collect());
        };
        let seen = [seen, &[url]].concat();
        let mut codes = Codes::new();
        for include in compose["include"].as_array().into_iter().flatten() {
            codes.extend(self.include(include, &seen)?);
        }
        for exclude in compose["exclude"].as_array().into_iter().flatten() {
            for code in self.include(exclude, &seen)? {
                codes.remove(&code);
            }
        }
        Ok(codes)
    }

    /// The codes of one `include` (or `exclude`): those of its system (its listed concepts or
    /// filters) that are in each of its value sets.
    fn include(&self, include: &Value, seen: &[&str]) -> Result<Codes, String> {
        let mut sets = Vec::new();
        for value_set in include["valueSet"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            sets.push(self.expand(value_set, seen)?);
        }
        if let Some(system) = include["system"].as_str() {
            let codes: Vec<String> = match include["concept"].as_array() {
                Some(concepts) => concepts.iter().filter_map(|c| c["code"].as_str().map(str::to_string)).collect(),
                None => self.system_codes(system, include["filter"].as_array().map_or(&[][..], Vec::as_slice))?,
            };
            sets.push(codes.into_iter().map(|code| (system.to_string(), code)).collect());
        }
        let mut sets = sets.into_iter();
        let first = sets.next().ok_or("an include with neither system nor value set")?;
        Ok(sets.fold(first, |all, set| all.intersection(&set).cloned().collect()))
    }

    /// The codes of a code system carried in the resources, all of them or those the filters
    /// (`concept is-a` or `descendent-of`) select.
    fn system_codes(&self, system: &str, filters: &[Value]) -> Result<Vec<String>, String> {
        let code_system = self.code_systems.get(system).ok_or(format!("code system {system} is not known"))?;
        if !matches!(code_system["content"].as_str(), None | Some("complete")) {
            return Err(format!("code system {system} is published without its codes"));
        }
        let mut selected: Option<Vec<&Value>> = None;
        for filter in filters {
            let (Some("concept"), Some(op @ ("is-a" | "descendent-of")), Some(code)) =
                (filter["property"].as_str(), filter["op"].as_str(), filter["value"].as_str())
            else {
                return Err(format!("a filter on {system} that is not evaluated here"));
            };
            let concepts = flatten(code_system["concept"].as_array(), "concept");
            let root = concepts.into_iter().find(|c| c["code"] == code).ok_or(format!("{system} has no {code}"))?;
            let mut found = flatten(root["concept"].as_array(), "concept");
            if op == "is-a" {
                found.push(root);
            }
            selected = Some(match selected {
                Some(before) => before.into_iter().filter(|c| found.contains(c)).collect(),
                None => found,
            });
        }
        let concepts = selected.unwrap_or_else(|| flatten(code_system["concept"].as_array(), "concept"));
        Ok(concepts.into_iter().filter_map(|c| c["code"].as_str().map(str::to_string)).collect())
    }
}

/// Every item of a nested list (`concept` in concepts, `contains` in contains), depth first.
fn flatten<'v>(items: Option<&'v Vec<Value>>, key: &str) -> Vec<&'v Value> {
    let mut all = Vec::new();
    for item in items.into_iter().flatten() {
        all.push(item);
        all.extend(flatten(item[key].as_array(), key));
    }
    all
}

impl Expansion {
    fn new(codes: Codes) -> Self {
        let mut by_system: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        for (system, code) in codes {
            by_system.entry(system).or_default().insert(code);
        }
        Expansion { by_system }
    }

    /// Its codes, as (system, code) pairs (an expansion another value set imports).
    fn codes(&self) -> Codes {
        let pairs =
            self.by_system.iter().flat_map(|(system, codes)| codes.iter().map(|code| (system.clone(), code.clone())));
        pairs.collect()
    }

    /// Whether it holds `code` of `system`.
    pub fn contains(&self, system: &str, code: &str) -> bool {
        self.by_system.get(system).is_some_and(|codes| codes.contains(code))
    }

    /// Whether it holds `code` in any of its systems (a `code` element carries no system).
    pub fn contains_code(&self, code: &str) -> bool {
        self.by_system.values().any(|codes| codes.contains(code))
    }

    /// Whether a Coding's `system` and `code` are in it.
    pub fn contains_coding(&self, coding: &Value) -> bool {
        let text = |key: &str| coding.get(key).and_then(Value::as_str);
        matches!((text("system"), text("code")), (Some(system), Some(code)) if self.contains(system, code))
    }

    /// The one code system of its codes, if it has exactly one.
    pub fn only_system(&self) -> Option<&str> {
        let mut systems = self.by_system.keys();
        match (systems.next(), systems.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_bindings_of_the_core_are_expanded() {
        let carried = Definitions::carried();
        let gender = carried.expansion("http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1").unwrap();
        assert!(gender.contains("http://hl7.org/fhir/administrative-gender", "female"));
        assert!(gender.contains_code("unknown") && !gender.contains_code("Female"));
        assert_eq!(gender.only_system(), Some("http://hl7.org/fhir/administrative-gender"));
        assert!(carried.expansion("http://hl7.org/fhir/ValueSet/ucum-units").is_none(), "UCUM is not listed offline");
    }

    #[test]
    fn value_sets_offered_expand_from_their_code_systems_and_the_carried_ones() {
        let system = "http://clinic.example/cs";
        let resources = [
            serde_json::json!({"resourceType": "CodeSystem", "url": system, "content": "complete", "concept": [
                {"code": "a", "concept": [{"code": "a1"}, {"code": "a2", "concept": [{"code": "a21"}]}]}, {"code": "b"}]}),
            serde_json::json!({"resourceType": "ValueSet", "url": "http://clinic.example/vs/below-a", "compose": {
                "include": [{"system": system, "filter": [{"property": "concept", "op": "descendent-of", "value": "a"}]},
                            {"valueSet": ["http://hl7.org/fhir/ValueSet/administrative-gender"]}],
                "exclude": [{"system": system, "concept": [{"code": "a2"}]}]}}),
            serde_json::json!({"resourceType": "ValueSet", "url": "http://clinic.example/vs/snomed", "compose": {
                "include": [{"system": "http://snomed.info/sct"}]}}),
        ];
        let urls =
            ["http://clinic.example/vs/below-a", "http://clinic.example/vs/snomed", "http://clinic.example/vs/none"];
        let expanded = expand(&urls, &resources.iter().collect::<Vec<_>>(), Definitions::carried());
        let below_a = expanded["http://clinic.example/vs/below-a"].as_ref().unwrap();
        assert!(below_a.contains(system, "a1") && below_a.contains(system, "a21"));
        assert!(!below_a.contains(system, "a") && !below_a.contains(system, "a2") && !below_a.contains(system, "b"));
        assert!(below_a.contains("http://hl7.org/fhir/administrative-gender", "other"));
        assert!(expanded["http://clinic.example/vs/snomed"].is_none(), "SNOMED CT is not listed offline");
        assert!(expanded["http://clinic.example/vs/none"].is_none());
    }
}
