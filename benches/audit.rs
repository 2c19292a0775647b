//! Audit benchmark: `cargo bench --bench audit` (builds release).
//!
//! On SQLite and PostgreSQL, without authorization, with 1,000 patients stored: reads by id
//! (`GET /fhir/Patient/[id]`, each appended to the node's audit spool before it is answered,
//! ADR 21)
//! and creates (`POST /fhir/Observation`, each with its AuditEvent in its own transaction),
//! with recording on (the default) and off (`--audit off`), in one run. The two conditions
//! alternate, each on a server started for it on the same database, so that the growth of
//! the database weighs on both alike. Medians of `HEARTH_BENCH_RUNS` (default 3) runs of
//! `HEARTH_BENCH_SECONDS` (default 5) s, at each number of connections of
//! `HEARTH_BENCH_CONNECTIONS` (comma-separated, default 4). After the reads, it times a search of
//! the log, which waits until the reads' events are committed: whether committing kept up.

mod common;

use bytes::Bytes;
use common::{env_number, get, load, LoadSummary, Server};
use http_body_util::Full;
use hyper::Request;
use serde_json::json;

const HEARTH: &str = env!("CARGO_BIN_EXE_hearth");
const PATIENTS: usize = 1000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run());
}

fn create_observation(n: usize) -> Request<Full<Bytes>> {
    let observation = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/p{}", n % PATIENTS)},
        "valueQuantity": {"value": 60 + n % 40, "unit": "/min"}});
    Request::post("/fhir/Observation")
        .header("host", "localhost")
        .header("content-type", "application/fhir+json")
        .body(Full::new(Bytes::from(observation.to_string())))
        .expect("request")
}

/// What one server measured: reads, creates, and how long after the reads ended their events
/// were all committed (a search of the log waits for that on the node that spooled them).
struct Measured {
    reads: LoadSummary,
    creates: LoadSummary,
    committed_after: std::time::Duration,
}

/// Reads and creates on `connections` connections against a server started with `flags`.
async fn measure(database_url: &str, flags: &[&str], connections: usize, seconds: u64) -> Measured {
    let server = Server::start_with(HEARTH, database_url, flags).await;
    let reads = load(server.addr, connections, seconds, |n| get(&format!("/fhir/Patient/p{}", n % PATIENTS))).await;
    let started = std::time::Instant::now();
    let log = reqwest::get(format!("http://{}/fhir/AuditEvent?_count=1", server.addr)).await.expect("search the log");
    assert!(log.status().is_success(), "searching the log: {}", log.status());
    let committed_after = started.elapsed();
    let creates = load(server.addr, connections, seconds, create_observation).await;
    server.stop();
    Measured { reads, creates, committed_after }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn run() {
    let runs = env_number("HEARTH_BENCH_RUNS", 3);
    let seconds = env_number("HEARTH_BENCH_SECONDS", 5) as u64;
    let dir = tempfile::tempdir().expect("temporary directory");
    let sqlite_url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let connection_counts: Vec<usize> = std::env::var("HEARTH_BENCH_CONNECTIONS")
        .unwrap_or_else(|_| "4".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    println!("audit benchmark: {runs} runs of {seconds} s, {PATIENTS} patients");
    for (database, url) in [("SQLite", sqlite_url), ("PostgreSQL", common::postgres::fresh_database().await)] {
        let seeding = Server::start(HEARTH, &url).await;
        let client = reqwest::Client::new();
        for i in 0..PATIENTS {
            let patient =
                json!({"resourceType": "Patient", "id": format!("p{i}"), "name": [{"family": format!("Bench{i}")}]});
            let response = client
                .put(format!("http://{}/fhir/Patient/p{i}", seeding.addr))
                .header("content-type", "application/fhir+json")
                .body(patient.to_string())
                .send()
                .await
                .expect("seed a patient");
            assert!(response.status().is_success(), "seeding: {}", response.status());
        }
        seeding.stop();
        for &connections in &connection_counts {
            let (mut on, mut off) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
            let mut committed_after = Vec::new();
            for _ in 0..runs.max(1) {
                let audited = measure(&url, &["--auth", "off"], connections, seconds).await;
                on.0.push(audited.reads.per_second);
                on.1.push(audited.creates.per_second);
                committed_after.push(audited.committed_after.as_secs_f64() * 1000.0);
                let audit_off = ["--auth", "off", "--audit", "off"];
                let unaudited = measure(&url, &audit_off, connections, seconds).await;
                off.0.push(unaudited.reads.per_second);
                off.1.push(unaudited.creates.per_second);
            }
            println!(
                "{database}, {connections} connections: the reads' events all committed {:.0} ms after the reads ended",
                median(committed_after)
            );
            let (reads, creates) = ((median(on.0), median(off.0)), (median(on.1), median(off.1)));
            for (what, (with, without)) in [("reads by id", reads), ("creates", creates)] {
                println!(
                    "{database}, {connections} connections: {what}, audit on {with:.0}/s, off {without:.0}/s = {:.0}%",
                    100.0 * with / without
                );
            }
        }
    }
}
