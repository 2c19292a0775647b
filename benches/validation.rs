//! Validation cost: `cargo bench --bench validation` (builds release).
//!
//! For a Patient, an Observation and a MedicationRequest of the synthetic portal data: the
//! microseconds one write's validation takes (median of `HEARTH_BENCH_RUNS`, default 5, runs of
//! 2000 validations each), in all (`validate_resource`: JSON schema, then the walk against the
//! R4 definitions with every invariant), and the walk alone (`validation::base`); then the US
//! Core 6.1.0 examples of the same types against the profiles they claim
//! (`validation::against_profile`).

use std::time::Instant;

use hearth::validation::Definitions;
use serde_json::Value;

fn main() {
    let runs = std::env::var("HEARTH_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5usize);
    let bundle = hearth::synth::patient_bundle(7, 0);
    let resources: Vec<Value> =
        bundle["entry"].as_array().expect("entries").iter().map(|e| e["resource"].clone()).collect();
    println!("Hearth validation benchmark: µs per resource, median of {runs} runs of 2000");
    for wanted in ["Patient", "Observation", "MedicationRequest"] {
        let resource = resources.iter().find(|r| r["resourceType"] == wanted).expect("the synthetic record has one");
        hearth::model::validate::validate_resource(resource, wanted).expect("synthetic data is valid");
        let all = median(runs, || {
            hearth::model::validate::validate_resource(resource, wanted).expect("valid");
        });
        let walk = median(runs, || {
            std::hint::black_box(hearth::validation::base(resource, wanted));
        });
        println!("  {wanted:<18} all checks {all:>8.1} µs   definitions and invariants {walk:>8.1} µs");
    }
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/us-core");
    for (file, profile) in [
        ("Patient-example.json", "us-core-patient"),
        ("Observation-weight.json", "us-core-body-weight"),
        ("MedicationRequest-self-tylenol.json", "us-core-medicationrequest"),
    ] {
        let text = std::fs::read_to_string(examples.join(file)).expect("example");
        let resource: Value = serde_json::from_str(&text).expect("JSON");
        let url = format!("http://hl7.org/fhir/us/core/StructureDefinition/{profile}");
        let findings =
            hearth::validation::against_profile(Definitions::carried(), &resource, &url).expect("a carried profile");
        assert!(findings.iter().all(|f| f.severity != hearth::validation::Severity::Error), "{file}");
        let cost = median(runs, || {
            std::hint::black_box(hearth::validation::against_profile(Definitions::carried(), &resource, &url));
        });
        println!("  US Core {profile:<28} {cost:>8.1} µs");
    }
}

/// The median over `runs` of the mean microseconds of one call of `f`, in runs of 2000 calls.
fn median(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut results: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let started = Instant::now();
            for _ in 0..2000 {
                f();
            }
            started.elapsed().as_secs_f64() * 1e6 / 2000.0
        })
        .collect();
    results.sort_by(f64::total_cmp);
    results[results.len() / 2]
}
