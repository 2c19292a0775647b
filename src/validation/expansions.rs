//! The codes of the value sets that elements bind (`profiles/expansions.ndjson`, expanded by
//! `profiles/generate.py` from the packages' code systems and value sets).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use serde::Deserialize;

#[derive(Deserialize)]
struct Line {
    url: String,
    #[serde(default)]
    codes: Option<Vec<(String, String)>>,
}

/// A value set's codes as (system, code).
pub struct Expansion {
    codes: HashSet<(String, String)>,
    /// The systems of its codes (a `code` element's implicit system is the one system of its
    /// required binding).
    systems: Vec<String>,
}

static EXPANSIONS: LazyLock<HashMap<String, Option<Expansion>>> = LazyLock::new(|| {
    include_str!("../../profiles/expansions.ndjson")
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let line: Line = serde_json::from_str(line).expect("profiles/expansions.ndjson is generated valid");
            let expansion = line.codes.map(|codes| {
                let mut systems: Vec<String> = codes.iter().map(|(system, _)| system.clone()).collect();
                systems.sort();
                systems.dedup();
                Expansion { codes: codes.into_iter().collect(), systems }
            });
            (line.url, expansion)
        })
        .collect()
});

/// The expansion of a value set, `None` when its codes could not be listed offline (then
/// nothing is checked against it).
pub fn expansion(value_set: &str) -> Option<&'static Expansion> {
    EXPANSIONS.get(value_set.split('|').next().unwrap_or(value_set))?.as_ref()
}

impl Expansion {
    /// Whether it holds `code` of `system`.
    pub fn contains(&self, system: &str, code: &str) -> bool {
        self.codes.contains(&(system.to_string(), code.to_string()))
    }

    /// Whether it holds `code` in any of its systems (a `code` element carries no system).
    pub fn contains_code(&self, code: &str) -> bool {
        self.systems.iter().any(|system| self.contains(system, code))
    }

    /// The one code system of its codes, if it has exactly one.
    pub fn only_system(&self) -> Option<&str> {
        match self.systems.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_bindings_of_the_core_are_expanded() {
        let gender = expansion("http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1").unwrap();
        assert!(gender.contains("http://hl7.org/fhir/administrative-gender", "female"));
        assert!(gender.contains_code("unknown") && !gender.contains_code("Female"));
        assert_eq!(gender.only_system(), Some("http://hl7.org/fhir/administrative-gender"));
        assert!(expansion("http://hl7.org/fhir/ValueSet/ucum-units").is_none(), "UCUM is not listed offline");
    }
}
