//! The published examples of US Core 6.1.0 and IPS 2.0.0 (CC0, in `tests/data/`) are valid FHIR
//! R4: every one passes the server's validation (schema, definitions, invariants), so that its
//! checks refuse what the specification forbids and nothing the specification allows.

use std::path::Path;

use serde_json::Value;

fn examples(folder: &str) -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(folder);
    let mut found: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .expect("examples folder")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable");
            (path.file_name().unwrap().to_string_lossy().into_owned(), serde_json::from_str(&text).expect("JSON"))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn refusals(folder: &str) -> Vec<String> {
    let mut refused = Vec::new();
    for (name, resource) in examples(folder) {
        let resource_type = resource["resourceType"].as_str().unwrap_or_default().to_string();
        if let Err(error) = hearth::model::validate::validate_resource(&resource, &resource_type) {
            refused.push(format!("{name}: {}", error.outcome()));
        }
    }
    refused
}

#[test]
fn us_core_examples_are_valid() {
    let refused = refusals("us-core");
    assert!(refused.is_empty(), "{} refused:\n{}", refused.len(), refused.join("\n"));
}

#[test]
fn ips_examples_are_valid() {
    let refused = refusals("ips");
    assert!(refused.is_empty(), "{} refused:\n{}", refused.len(), refused.join("\n"));
}
