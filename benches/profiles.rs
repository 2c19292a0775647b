//! Ingest with US Core profile validation on and off: `cargo bench --bench profiles` (builds
//! release).
//!
//! Transactions of three US Core 6.1.0 examples each (a Patient, a body weight Observation, a
//! MedicationRequest; ids removed so that each is created anew), posted 4 at a time: once with
//! the examples' `meta.profile` claims (every write is checked against its profile) and once
//! without (base validation only), alternating, on SQLite and PostgreSQL. Prints the median
//! resources per second of `HEARTH_BENCH_RUNS` (default 3) rounds of `HEARTH_BENCH_PATIENTS`
//! (default 200) transactions each, and their ratio.

mod common;

use bytes::Bytes;
use common::{env_number, ingest, Server};
use serde_json::{json, Value};

const HEARTH: &str = env!("CARGO_BIN_EXE_hearth");

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run());
}

fn example(file: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/us-core").join(file);
    serde_json::from_str(&std::fs::read_to_string(path).expect("example")).expect("JSON")
}

/// `count` transactions of the three examples, with or without their profile claims.
fn bundles(count: usize, claimed: bool) -> Vec<Bytes> {
    let resources: Vec<Value> =
        ["Patient-example.json", "Observation-weight.json", "MedicationRequest-self-tylenol.json"]
            .iter()
            .map(|file| {
                let mut resource = example(file);
                let object = resource.as_object_mut().expect("object");
                object.remove("id");
                if !claimed {
                    object.remove("meta");
                }
                resource
            })
            .collect();
    (0..count)
        .map(|_| {
            let entries: Vec<Value> = resources
                .iter()
                .map(|r| json!({"resource": r, "request": {"method": "POST", "url": r["resourceType"]}}))
                .collect();
            Bytes::from(json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string())
        })
        .collect()
}

async fn run() {
    let count = env_number("HEARTH_BENCH_PATIENTS", 200);
    let runs = env_number("HEARTH_BENCH_RUNS", 3);
    println!(
        "Hearth profile validation benchmark: {runs} rounds of {count} transactions of 3 US Core examples, 4 at a time"
    );
    let (claimed, unclaimed) = (bundles(count, true), bundles(count, false));
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = format!("sqlite://{}", dir.path().join("profiles.db").display());
    for (database, url) in [("SQLite", sqlite), ("PostgreSQL", common::postgres::fresh_database().await)] {
        let server = Server::start(HEARTH, &url).await;
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for _ in 0..runs.max(1) {
            off.push(ingest(server.addr, &unclaimed, 4).await.resources_per_second);
            on.push(ingest(server.addr, &claimed, 4).await.resources_per_second);
        }
        server.stop();
        let median = |mut values: Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let (on, off) = (median(on), median(off));
        println!("{database}: {on:.0} resources/s with US Core validation, {off:.0} without: {:.0}%", on / off * 100.0);
    }
}
