//! Operations benchmark: `cargo bench --bench operations` (builds release).
//!
//! Loads `hearth synth` patients (default 200) into SQLite and PostgreSQL, grows the records of
//! the first 20 to about `HEARTH_BENCH_RECORD` resources each (default 500: the synthetic
//! records hold ~66) with observations by the clinic's practitioners, then measures on those 20,
//! one request at a time (latency, not throughput): a read by id of the Patient (the yardstick
//! of the same run), the first page of `Patient/[id]/$everything` (`_count=100`), a whole
//! `$everything` walked to its last page, and IPS `Patient/[id]/$summary`, each round robin.
//! Prints the median and p99 of each (the run with the median throughput of
//! `HEARTH_BENCH_RUNS`) and the ratios to the read. Environment: `HEARTH_BENCH_PATIENTS`,
//! `HEARTH_BENCH_RECORD`, `HEARTH_BENCH_SECONDS` (default 5 per run), `HEARTH_BENCH_RUNS`
//! (default 3).

mod common;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::{created_ids, env_number, get, ingest, load, median_load, LoadSummary, Server};
use hearth::synth::PRACTITIONER_POOL;
use serde_json::{json, Value};

/// How many patients get a large record and are measured.
const MEASURED: usize = 20;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run());
}

/// Latency of one whole-record walk: all pages of `$everything`.
struct Walks {
    p50_ms: f64,
    p99_ms: f64,
    resources: f64,
    pages: f64,
}

async fn run() {
    let patients = env_number("HEARTH_BENCH_PATIENTS", 200);
    let seconds = env_number("HEARTH_BENCH_SECONDS", 5) as u64;
    let runs = env_number("HEARTH_BENCH_RUNS", 3);
    let bundles = common::synthetic_bundles(patients);
    println!("Hearth operations benchmark: {patients} synthetic patients, {runs} runs of {seconds} s, 1 connection");
    let sqlite_dir = tempfile::tempdir().expect("temp dir");
    let sqlite_url = format!("sqlite://{}", sqlite_dir.path().join("operations.db").display());
    for (database, database_url) in [("SQLite", sqlite_url), ("PostgreSQL", common::postgres::fresh_database().await)] {
        let server = Server::start(env!("CARGO_BIN_EXE_hearth"), &database_url).await;
        let ingested = ingest(server.addr, &bundles, 4).await;
        let measured: Vec<(String, usize)> = ingested
            .responses
            .iter()
            .filter_map(|r| Some((created_ids(r, "Patient").into_iter().next()?, r["entry"].as_array()?.len())))
            .take(MEASURED)
            .collect();
        let record = env_number("HEARTH_BENCH_RECORD", 500);
        let growth: Vec<Bytes> =
            measured.iter().map(|(patient, size)| more_observations(patient, record.saturating_sub(*size))).collect();
        ingest(server.addr, &growth, 2).await;
        let ids: Arc<Vec<String>> = Arc::new(measured.into_iter().map(|(patient, _)| patient).collect());
        println!(
            "{database}: loaded at {:.0} resources/s; {} patients grown to ~{record} resources each",
            ingested.resources_per_second,
            ids.len()
        );
        let measure = |template: &'static str| {
            let (ids, addr) = (ids.clone(), server.addr);
            median_load(runs, move || {
                let ids = ids.clone();
                load(addr, 1, seconds, move |n| get(&template.replace("{p}", &ids[n % ids.len()])))
            })
        };
        // Warm-up, not counted.
        let warm = ids.clone();
        load(server.addr, 1, seconds, move |n| {
            get(&format!("/fhir/Patient/{}/$everything?_count=100", warm[n % warm.len()]))
        })
        .await;
        let read = measure("/fhir/Patient/{p}").await;
        let first_page = measure("/fhir/Patient/{p}/$everything?_count=100").await;
        let summary = measure("/fhir/Patient/{p}/$summary").await;
        let walks = walk_everything(&server, &ids, seconds).await;
        let line = |name: &str, s: &LoadSummary| {
            println!("{database}: {name}: p50 {:.2} ms, p99 {:.2} ms ({:.0} req/s)", s.p50_ms, s.p99_ms, s.per_second)
        };
        line("read Patient by id", &read);
        line("$everything, first page of 100", &first_page);
        line("$summary", &summary);
        println!(
            "{database}: $everything, whole record ({:.0} resources in {:.1} pages of 100 on average): p50 {:.2} ms, p99 {:.2} ms",
            walks.resources, walks.pages, walks.p50_ms, walks.p99_ms
        );
        println!(
            "{database}: against a read by id (p50): first page {:.1}x, whole record {:.1}x, $summary {:.1}x",
            first_page.p50_ms / read.p50_ms,
            walks.p50_ms / read.p50_ms,
            summary.p50_ms / read.p50_ms
        );
        server.stop();
    }
}

/// A transaction of `count` observations of `patient` by the clinic's practitioners, half
/// laboratory results and half vital signs, over the last years.
fn more_observations(patient: &str, count: usize) -> Bytes {
    let entries: Vec<Value> = (0..count)
        .map(|n| {
            let (category, code) = if n % 2 == 0 { ("laboratory", "2339-0") } else { ("vital-signs", "8867-4") };
            json!({"request": {"method": "POST", "url": "Observation"}, "resource": {
                "resourceType": "Observation", "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": format!("Patient/{patient}")},
                "performer": [{"reference": format!("Practitioner/prac-{}", n % PRACTITIONER_POOL)}],
                "effectiveDateTime": format!("20{:02}-{:02}-{:02}T09:00:00Z", 20 + n % 6, 1 + n % 12, 1 + n % 28),
                "valueQuantity": {"value": 60 + n % 40, "unit": "1", "system": "http://unitsofmeasure.org", "code": "1"}}})
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    Bytes::from(serde_json::to_vec(&bundle).expect("json"))
}

/// Walks `$everything` of patient after patient to its last page for `seconds`, three times,
/// and returns the run with the median p50.
async fn walk_everything(server: &Server, ids: &[String], seconds: u64) -> Walks {
    let client = reqwest::Client::new();
    let mut runs = Vec::new();
    for _ in 0..env_number("HEARTH_BENCH_RUNS", 3).max(1) {
        let (mut times, mut resources, mut pages) = (Vec::new(), 0usize, 0usize);
        let deadline = Instant::now() + std::time::Duration::from_secs(seconds);
        let mut n = 0;
        while Instant::now() < deadline {
            let started = Instant::now();
            let mut next =
                Some(format!("http://{}/fhir/Patient/{}/$everything?_count=100", server.addr, ids[n % ids.len()]));
            while let Some(url) = next {
                let page: Value = client.get(&url).send().await.expect("$everything").json().await.expect("a Bundle");
                pages += 1;
                resources +=
                    page["entry"].as_array().map_or(0, |e| e.iter().filter(|e| e["search"]["mode"] == "match").count());
                next = page["link"]
                    .as_array()
                    .and_then(|links| links.iter().find(|l| l["relation"] == "next"))
                    .and_then(|l| l["url"].as_str())
                    .map(str::to_string);
            }
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            n += 1;
        }
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
        runs.push(Walks {
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            resources: resources as f64 / n as f64,
            pages: pages as f64 / n as f64,
        });
    }
    runs.sort_by(|a, b| a.p50_ms.total_cmp(&b.p50_ms));
    runs.swap_remove(runs.len() / 2)
}
