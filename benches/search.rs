//! Search benchmark: `cargo bench --bench search` (builds release).
//!
//! Loads `hearth synth` patients (default 1000) into SQLite and PostgreSQL through transaction
//! bundles, then runs each portal search, and a mix of all of them, at 16 concurrent
//! connections (after an uncounted warm-up with all of them), each for a patient (or schedule)
//! chosen round robin, and prints req/s with p50/p99 latency per database, plus the ratios the
//! targets are stated in (chained, _include and _has against the simple searches; PostgreSQL
//! against SQLite). Environment:
//! `HEARTH_BENCH_PATIENTS`, `HEARTH_BENCH_SECONDS` (default 5 per run), `HEARTH_BENCH_RUNS` (default 3).

mod common;

use std::sync::Arc;

use common::{created_ids, env_number, get, ingest, load, median_load, LoadSummary, Server};
use hearth::synth::{MRN_SYSTEM, PRACTITIONER_POOL};

const CONNECTIONS: usize = 16;

/// A search to measure: its name, whether it counts as "simple", and its URL for patient `p`
/// (`{p}` = Patient id, `{mrn}` = its MRN, `{s}` = a practitioner schedule).
const SEARCHES: &[(&str, bool, &str)] = &[
    ("lab results, newest first", true, "/fhir/Observation?patient={p}&category=laboratory&_sort=-date"),
    ("observations by code", true, "/fhir/Observation?patient={p}&code=http://loinc.org|2339-0"),
    ("active prescriptions", true, "/fhir/MedicationRequest?patient={p}&intent=order&status=active"),
    ("problems", true, "/fhir/Condition?patient={p}"),
    ("upcoming appointments", true, "/fhir/Appointment?patient={p}&date=ge2026-01-01"),
    ("free slots", true, "/fhir/Slot?schedule=Schedule/{s}&status=free&start=ge2026-01-01"),
    ("messages, newest first", true, "/fhir/Communication?recipient=Patient/{p}&_sort=-sent"),
    ("open invoices", true, "/fhir/Invoice?subject={p}&status=issued"),
    ("chained", false, "/fhir/Observation?patient.identifier={mrn}&category=laboratory"),
    ("_include", false, "/fhir/MedicationRequest?patient={p}&_include=MedicationRequest:requester"),
    ("_has", false, "/fhir/Patient?_id={p}&_has:Observation:patient:category=laboratory"),
    ("_summary=count", true, "/fhir/Observation?patient={p}&_summary=count"),
];

struct Subject {
    patient: String,
    mrn: String,
    schedule: String,
}

fn url(template: &str, subject: &Subject) -> String {
    template
        .replace("{p}", &subject.patient)
        .replace("{mrn}", &url::form_urlencoded::byte_serialize(subject.mrn.as_bytes()).collect::<String>())
        .replace("{s}", &subject.schedule)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let patients = env_number("HEARTH_BENCH_PATIENTS", 1000);
    let seconds = env_number("HEARTH_BENCH_SECONDS", 5) as u64;
    let runs = env_number("HEARTH_BENCH_RUNS", 3);
    let bundles = common::synthetic_bundles(patients);
    println!(
        "Hearth search benchmark: {patients} synthetic patients, {runs} runs of {seconds} s, {CONNECTIONS} connections"
    );
    let sqlite_dir = tempfile::tempdir().expect("temp dir");
    let sqlite_url = format!("sqlite://{}", sqlite_dir.path().join("search.db").display());
    let mut results: Vec<(&str, Vec<LoadSummary>)> = Vec::new();
    for (database, database_url) in [("SQLite", sqlite_url), ("PostgreSQL", common::postgres::fresh_database().await)] {
        let server = Server::start(env!("CARGO_BIN_EXE_hearth"), &database_url).await;
        let ingested = ingest(server.addr, &bundles, 4).await;
        println!("{database}: loaded at {:.0} resources/s", ingested.resources_per_second);
        let subjects: Arc<Vec<Subject>> = Arc::new(
            ingested
                .responses
                .iter()
                .enumerate()
                .filter_map(|(n, response)| {
                    let patient = created_ids(response, "Patient").into_iter().next()?;
                    let mrn = format!("{MRN_SYSTEM}|MRN-42-{n}");
                    Some(Subject { patient, mrn, schedule: format!("sched-prac-{}", n % PRACTITIONER_POOL) })
                })
                .collect(),
        );
        // Warm-up, not counted: every search for every subject once, so that the measured runs
        // see warm caches (statements prepared on each pooled connection, pages in memory).
        let warm = subjects.clone();
        load(server.addr, CONNECTIONS, seconds, move |n| {
            let (_, _, template) = SEARCHES[n % SEARCHES.len()];
            get(&url(template, &warm[(n / SEARCHES.len()) % warm.len()]))
        })
        .await;
        let mut figures = Vec::new();
        for (name, _, template) in SEARCHES {
            let subjects = subjects.clone();
            let addr = server.addr;
            let summary = median_load(runs, || {
                let subjects = subjects.clone();
                load(addr, CONNECTIONS, seconds, move |n| get(&url(template, &subjects[n % subjects.len()])))
            })
            .await;
            println!(
                "{database}: {name}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
                summary.per_second, summary.p50_ms, summary.p99_ms
            );
            figures.push(summary);
        }
        let mix = median_load(runs, || {
            let subjects = subjects.clone();
            load(server.addr, CONNECTIONS, seconds, move |n| {
                let (_, _, template) = SEARCHES[n % SEARCHES.len()];
                get(&url(template, &subjects[(n / SEARCHES.len()) % subjects.len()]))
            })
        })
        .await;
        println!("{database}: mix: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms", mix.per_second, mix.p50_ms, mix.p99_ms);
        figures.push(mix);
        server.stop();
        results.push((database, figures));
    }
    print_table(&results);
}

fn print_table(results: &[(&str, Vec<LoadSummary>)]) {
    println!();
    let header: Vec<String> = results.iter().map(|(db, _)| format!("{db} req/s | p50 ms | p99 ms")).collect();
    println!("| search | {} |", header.join(" | "));
    println!("|---|{}", "---|---|---|".repeat(results.len()));
    let names: Vec<&str> = SEARCHES.iter().map(|(name, _, _)| *name).chain(["mix"]).collect();
    for (row, name) in names.iter().enumerate() {
        let cells: Vec<String> = results
            .iter()
            .map(|(_, figures)| {
                format!("{:.0} | {:.2} | {:.2}", figures[row].per_second, figures[row].p50_ms, figures[row].p99_ms)
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    for (database, figures) in results {
        let simple: Vec<f64> =
            SEARCHES.iter().zip(figures).filter(|((_, simple, _), _)| *simple).map(|(_, f)| f.per_second).collect();
        let median_simple = median(simple);
        let ratios: Vec<String> = SEARCHES
            .iter()
            .zip(figures)
            .filter(|((_, simple, _), _)| !simple)
            .map(|((name, _, _), f)| format!("{name} {:.2}x", median_simple / f.per_second))
            .collect();
        println!("{database}: median simple search {median_simple:.0} req/s; slowdown of {}", ratios.join(", "));
    }
    if let [(_, sqlite), (_, postgres)] = results {
        let slowest = sqlite.iter().zip(postgres).map(|(s, p)| s.per_second / p.per_second).fold(0.0, f64::max);
        println!("PostgreSQL vs SQLite: at worst {slowest:.2}x slower");
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
