//! Throughput benchmark: `cargo bench --bench throughput` (builds release).
//!
//! For SQLite and PostgreSQL it starts `hearth serve` as its own process and measures:
//! ingest of `hearth synth` patients as transaction bundles (resources/s), read by id (req/s,
//! p50/p99 latency, 32 connections), create (req/s), and the server's peak RSS. In the same run
//! it measures a static axum response served by a separate process (this binary started with
//! `--static-server`), so read throughput is also reported as a ratio of that ceiling.
//! Each figure is the median of several runs (ingest: into as many fresh databases).
//! Environment: `HEARTH_BENCH_PATIENTS` (default 100), `HEARTH_BENCH_SECONDS` (default 5 per
//! run), `HEARTH_BENCH_RUNS` (default 3).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use common::{created_ids, env_number, get, ingest, load, median_load, LoadSummary, Server};
use http_body_util::Full;
use hyper::Request;

const CONNECTIONS: usize = 32;
const INGEST_CONCURRENCY: usize = 4;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if let Some(port) = args.iter().position(|a| a == "--static-server").and_then(|i| args.get(i + 1)) {
        runtime.block_on(static_server(port.parse().expect("port")));
        return;
    }
    runtime.block_on(run());
}

/// The ceiling: the smallest axum server answering a fixed FHIR-sized JSON body.
async fn static_server(port: u16) {
    let body = Bytes::from(vec![b' '; 1024]);
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "application/fhir+json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}

struct Figures {
    database: &'static str,
    ingest_resources_per_s: f64,
    read: LoadSummary,
    create: LoadSummary,
    peak_rss_mb: f64,
}

async fn run() {
    let patients = env_number("HEARTH_BENCH_PATIENTS", 100);
    let seconds = env_number("HEARTH_BENCH_SECONDS", 5) as u64;
    let runs = env_number("HEARTH_BENCH_RUNS", 3);
    let bundles = common::synthetic_bundles(patients);
    println!("Hearth throughput benchmark: {patients} synthetic patients, {runs} runs of {seconds} s, {CONNECTIONS} connections");

    let static_port = common::free_port();
    let exe = std::env::current_exe().expect("current exe");
    let mut static_child = common::spawn(Command::new(exe).args(["--static-server", &static_port.to_string()]));
    let static_addr = SocketAddr::from(([127, 0, 0, 1], static_port));
    common::wait_until_up(static_addr, "/").await;
    let ceiling = median_load(runs, || load(static_addr, CONNECTIONS, seconds, |_| get("/"))).await;
    let _ = static_child.kill();
    let _ = static_child.wait();
    println!(
        "static axum ceiling: {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms)",
        ceiling.per_second, ceiling.p50_ms, ceiling.p99_ms
    );

    let mut all = Vec::new();
    let sqlite_dir = tempfile::tempdir().expect("temp dir");
    // Ingest is measured once per fresh database, `runs` times; the last database then serves
    // the read and create loads.
    let sqlite_urls =
        (0..runs).map(|n| format!("sqlite://{}", sqlite_dir.path().join(format!("bench-{n}.db")).display())).collect();
    let mut postgres_urls = Vec::new();
    for _ in 0..runs {
        postgres_urls.push(common::postgres::fresh_database().await);
    }
    for (database, urls) in [("SQLite", sqlite_urls), ("PostgreSQL", postgres_urls)] {
        all.push(measure(database, &urls, &bundles, seconds, runs).await);
    }

    println!();
    println!("| database | ingest resources/s | read req/s | read p50 ms | read p99 ms | read / static | create req/s | peak RSS MB |");
    println!("|---|---|---|---|---|---|---|---|");
    for f in &all {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0}% | {:.0} | {:.1} |",
            f.database,
            f.ingest_resources_per_s,
            f.read.per_second,
            f.read.p50_ms,
            f.read.p99_ms,
            100.0 * f.read.per_second / ceiling.per_second,
            f.create.per_second,
            f.peak_rss_mb
        );
    }
    println!("static ceiling: {:.0} req/s", ceiling.per_second);
}

/// Ingests into each of the fresh databases `urls` (the median is reported), then measures
/// read and create on the last.
async fn measure(database: &'static str, urls: &[String], bundles: &[Bytes], seconds: u64, runs: usize) -> Figures {
    let (last, earlier) = urls.split_last().expect("a database to measure");
    let mut rates = Vec::new();
    for url in earlier {
        let server = Server::start(env!("CARGO_BIN_EXE_hearth"), url).await;
        rates.push(ingest(server.addr, bundles, INGEST_CONCURRENCY).await.resources_per_second);
        server.stop();
    }
    let server = Server::start(env!("CARGO_BIN_EXE_hearth"), last).await;
    let addr = server.addr;
    let ingested = ingest(addr, bundles, INGEST_CONCURRENCY).await;
    rates.push(ingested.resources_per_second);
    rates.sort_by(f64::total_cmp);
    let ingest_resources_per_s = rates[rates.len() / 2];
    let observation_ids: Vec<String> = ingested.responses.iter().flat_map(|r| created_ids(r, "Observation")).collect();
    let listed: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "{database}: ingested at {ingest_resources_per_s:.0} resources/s (median of {}); {} observations to read",
        listed.join(", "),
        observation_ids.len()
    );
    let ids = Arc::new(observation_ids);
    let read = median_load(runs, || {
        let ids = ids.clone();
        load(addr, CONNECTIONS, seconds, move |n| get(&format!("/fhir/Observation/{}", ids[n % ids.len()])))
    })
    .await;
    println!("{database}: read {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms", read.per_second, read.p50_ms, read.p99_ms);
    let patient = Bytes::from_static(
        br#"{"resourceType":"Patient","active":true,"name":[{"family":"Bench","given":["Mark"]}],"gender":"female","birthDate":"1980-01-01"}"#,
    );
    let create = median_load(runs, || {
        let patient = patient.clone();
        load(addr, CONNECTIONS, seconds, move |_| {
            Request::post("/fhir/Patient")
                .header("host", "localhost")
                .header("content-type", "application/fhir+json")
                .header("prefer", "return=minimal")
                .body(Full::new(patient.clone()))
                .expect("request")
        })
    })
    .await;
    println!("{database}: create {:.0} req/s", create.per_second);
    let peak_rss_mb = server.peak_rss_mb();
    server.stop();
    Figures { database, ingest_resources_per_s, read, create, peak_rss_mb }
}
