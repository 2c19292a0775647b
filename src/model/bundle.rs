//! What a batch or transaction Bundle says about its entries' identities and references, before
//! anything runs: each `fullUrl` names one entry (bdl-7), references between entries are by
//! `fullUrl`, and a reference to a `urn:uuid:` or `urn:oid:` that no entry has cannot be stored.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use super::{ErrorKind, FhirError, Issue, IssueCode};

/// 400 when two entries share a `fullUrl` (bdl-7), naming both.
pub fn check_full_urls(entries: &[Value]) -> Result<(), FhirError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut issues = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) else { continue };
        if let Some(first) = seen.insert(full_url, index) {
            let at = format!("Bundle.entry[{index}].fullUrl");
            let message = format!("{at}: '{full_url}' is the fullUrl of Bundle.entry[{first}] too (bdl-7)");
            issues.push(Issue::error(IssueCode::Invariant, message).at(at).rule("bdl-7"));
        }
    }
    match issues.is_empty() {
        true => Ok(()),
        false => Err(FhirError::with_issues(ErrorKind::BadRequest, issues)),
    }
}

/// The references in `resource` to a `urn:uuid:` or `urn:oid:` (which only an entry of the same
/// Bundle could resolve), wherever they are.
pub fn urn_references(resource: &Value) -> Vec<String> {
    let mut found = Vec::new();
    super::resource::visit_references(resource, &mut |reference| {
        if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
            found.push(reference.to_string());
        }
    });
    found.sort();
    found.dedup();
    found
}

/// 400 naming the first `urn:` reference that no entry resolved.
pub fn unresolved(resource: &Value) -> Result<(), FhirError> {
    match urn_references(resource).first() {
        Some(reference) => Err(FhirError::new(
            ErrorKind::BadRequest,
            IssueCode::NotFound,
            format!("the reference '{reference}' is the fullUrl of no entry of the Bundle: it cannot be resolved"),
        )),
        None => Ok(()),
    }
}

/// The order to run a batch's entries in: every entry after the entries whose `fullUrl` its
/// resource references (entries in a cycle keep their Bundle order), each with those entries.
pub fn dependency_order(full_urls: &[Option<&str>], resources: &[Option<&Value>]) -> Vec<(usize, Vec<usize>)> {
    let by_url: HashMap<&str, usize> =
        full_urls.iter().enumerate().filter_map(|(i, url)| url.map(|url| (url, i))).collect();
    let depends: Vec<Vec<usize>> = resources
        .iter()
        .enumerate()
        .map(|(index, resource)| {
            let references = resource.map(urn_references).unwrap_or_default();
            let mut on: Vec<usize> =
                references.iter().filter_map(|r| by_url.get(r.as_str()).copied()).filter(|&i| i != index).collect();
            on.sort_unstable();
            on.dedup();
            on
        })
        .collect();
    // Kahn's algorithm, the lowest index first among the ready entries.
    let mut waiting_on: Vec<usize> = depends.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); depends.len()];
    for (index, on) in depends.iter().enumerate() {
        for &d in on {
            dependents[d].push(index);
        }
    }
    let mut ready: BTreeSet<usize> = (0..depends.len()).filter(|&i| waiting_on[i] == 0).collect();
    let mut done = vec![false; depends.len()];
    let mut order = Vec::with_capacity(depends.len());
    let mut cursor = 0;
    while order.len() < depends.len() {
        let next = match ready.pop_first() {
            Some(next) => next,
            None => {
                // A cycle: the first entry not yet run goes next.
                while done[cursor] {
                    cursor += 1;
                }
                cursor
            }
        };
        done[next] = true;
        order.push((next, depends[next].clone()));
        for &dependent in &dependents[next] {
            waiting_on[dependent] = waiting_on[dependent].saturating_sub(1);
            if waiting_on[dependent] == 0 && !done[dependent] {
                ready.insert(dependent);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_full_url_names_one_entry() {
        let entries = vec![json!({"fullUrl": "urn:uuid:a"}), json!({}), json!({"fullUrl": "urn:uuid:a"})];
        let error = check_full_urls(&entries).unwrap_err();
        assert!(format!("{error:?}").contains("Bundle.entry[2].fullUrl"));
        assert!(check_full_urls(&entries[..2]).is_ok());
    }

    #[test]
    fn entries_run_after_those_they_reference() {
        let observation = json!({"subject": {"reference": "urn:uuid:p"}, "performer": [{"reference": "urn:uuid:o"}]});
        let patient = json!({"managingOrganization": {"reference": "urn:uuid:o"}});
        let organization = json!({"name": "x"});
        let urls = [Some("urn:uuid:x"), Some("urn:uuid:p"), Some("urn:uuid:o")];
        let order = dependency_order(&urls, &[Some(&observation), Some(&patient), Some(&organization)]);
        let indexes: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, vec![2, 1, 0]);
        assert_eq!(order[2].1, vec![1, 2]);
        assert_eq!(urn_references(&observation), vec!["urn:uuid:o", "urn:uuid:p"]);
        assert!(unresolved(&json!({"subject": {"reference": "urn:uuid:nobody"}})).is_err());
        assert!(unresolved(&json!({"identifier": [{"value": "urn:uuid:not-a-reference"}]})).is_ok());
    }
}
