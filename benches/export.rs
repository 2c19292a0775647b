//! Bulk export benchmark: `cargo bench --bench export` (builds release).
//!
//! Loads `hearth synth` patients (default 1000) into SQLite and PostgreSQL, then times, in one
//! run per database and `HEARTH_BENCH_RUNS` times (default 3, medians printed):
//! - `$export` of the whole server through the API, from the job's queueing to its end (the
//!   job's own timestamps), in resources/s and MB/s of NDJSON written;
//! - the limit: the same rows read with a plain `SELECT body FROM resources` per type, in id
//!   order, on one connection;
//! - what a client without bulk export would do: search paging through the API
//!   (`GET /fhir/[type]?_count=1000`, following `next`), type by type.
//!
//! It prints the server's peak resident memory after the exports, and after loading alone, to
//! show whether it grows with the size of the export. `HEARTH_BENCH_PATIENTS`,
//! `HEARTH_BENCH_RUNS`.

mod common;

use std::time::{Duration, Instant};

use common::{env_number, ingest, Server};
use serde_json::Value;

const HEARTH: &str = env!("CARGO_BIN_EXE_hearth");

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run());
}

/// One measurement: resources and bytes read in some seconds.
#[derive(Clone, Copy)]
struct Measured {
    resources: u64,
    bytes: u64,
    seconds: f64,
}

impl Measured {
    fn per_second(&self) -> f64 {
        self.resources as f64 / self.seconds
    }

    fn mb_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }
}

fn median(mut runs: Vec<Measured>) -> Measured {
    runs.sort_by(|a, b| a.per_second().total_cmp(&b.per_second()));
    runs[runs.len() / 2]
}

async fn run() {
    let patients = env_number("HEARTH_BENCH_PATIENTS", 1000);
    let runs = env_number("HEARTH_BENCH_RUNS", 3);
    let bundles = common::synthetic_bundles(patients);
    println!("Hearth export benchmark: {patients} synthetic patients, medians of {runs} runs");
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite_url = format!("sqlite://{}", dir.path().join("export.db").display());
    for (database, url) in [("SQLite", sqlite_url), ("PostgreSQL", common::postgres::fresh_database().await)] {
        let exports = dir.path().join(format!("exports-{database}"));
        let flags = ["--auth", "off", "--export-dir", exports.to_str().expect("path"), "--export-max-running", "100"];
        let server = Server::start_with(HEARTH, &url, &flags).await;
        let ingested = ingest(server.addr, &bundles, 4).await;
        let loaded_rss = server.peak_rss_mb();
        println!(
            "{database}: loaded at {:.0} resources/s; peak memory {loaded_rss:.0} MB",
            ingested.resources_per_second
        );
        let (mut exported, mut selected, mut paged) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let (export, types) = export_through_api(&server, &url).await;
            exported.push(export);
            selected.push(plain_select(&url, &types).await);
            paged.push(search_paging(&server, &types).await);
        }
        let (export, select, paging) = (median(exported), median(selected), median(paged));
        for (what, m) in [("$export", export), ("plain SELECT", select), ("search paging", paging)] {
            println!(
                "{database}: {what:<14} {:>8} resources in {:>6.2} s: {:>8.0} resources/s, {:>6.1} MB/s",
                m.resources,
                m.seconds,
                m.per_second(),
                m.mb_per_second()
            );
        }
        println!(
            "{database}: $export at {:.0}% of a plain SELECT, {:.1}x search paging; peak memory {:.0} MB (after loading: {loaded_rss:.0} MB)",
            100.0 * export.per_second() / select.per_second(),
            export.per_second() / paging.per_second(),
            server.peak_rss_mb()
        );
        server.stop();
    }
}

/// `$export` of everything: kicked off, polled until done, timed by the job's own timestamps
/// (from queued to finished); the types it wrote.
async fn export_through_api(server: &Server, database_url: &str) -> (Measured, Vec<String>) {
    let client = reqwest::Client::new();
    let response = client
        .get(format!("http://{}/fhir/$export", server.addr))
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("kick-off");
    assert_eq!(response.status(), 202, "kick-off");
    let status = response.headers()["content-location"].to_str().expect("status URL").to_string();
    let manifest: Value = loop {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let response = client.get(&status).send().await.expect("status");
        match response.status().as_u16() {
            202 => continue,
            200 => break response.json().await.expect("manifest"),
            other => panic!("export status {other}"),
        }
    };
    let id: i64 = status.rsplit('/').next().and_then(|id| id.parse().ok()).expect("job id");
    let store = hearth::store::open_shared(database_url).await.expect("store");
    let job = store.job(id).await.expect("job").expect("the job");
    let seconds = (job.updated - job.created).as_seconds_f64();
    let outputs = manifest["output"].as_array().expect("output");
    let resources = outputs.iter().map(|f| f["count"].as_u64().unwrap_or(0)).sum();
    let mut bytes = 0;
    let mut types: Vec<String> = Vec::new();
    for file in outputs {
        let body =
            client.get(file["url"].as_str().expect("url")).send().await.expect("file").bytes().await.expect("bytes");
        bytes += body.len() as u64;
        let resource_type = file["type"].as_str().expect("type").to_string();
        if !types.contains(&resource_type) {
            types.push(resource_type);
        }
    }
    // Its files go now, so that the next run writes as much to a directory as empty.
    client.delete(&status).send().await.expect("delete");
    (Measured { resources, bytes, seconds }, types)
}

/// The same rows read with a plain SELECT of their bodies, type by type in id order.
async fn plain_select(database_url: &str, types: &[String]) -> Measured {
    use futures::TryStreamExt;
    use sqlx::Row;
    let started = Instant::now();
    let (mut resources, mut bytes) = (0u64, 0u64);
    let sql = "SELECT body FROM resources WHERE resource_type = $1 AND deleted = FALSE ORDER BY id";
    if database_url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(database_url).await.expect("connect");
        for resource_type in types {
            let mut rows = sqlx::query(sql).bind(resource_type).fetch(&pool);
            while let Some(row) = rows.try_next().await.expect("row") {
                bytes += row.get::<Vec<u8>, _>(0).len() as u64 + 1;
                resources += 1;
            }
        }
    } else {
        let pool = sqlx::SqlitePool::connect(database_url).await.expect("connect");
        for resource_type in types {
            let mut rows = sqlx::query(sql).bind(resource_type).fetch(&pool);
            while let Some(row) = rows.try_next().await.expect("row") {
                bytes += row.get::<Vec<u8>, _>(0).len() as u64 + 1;
                resources += 1;
            }
        }
    }
    Measured { resources, bytes, seconds: started.elapsed().as_secs_f64() }
}

/// The same resources through search paging, 1000 a page, type by type.
async fn search_paging(server: &Server, types: &[String]) -> Measured {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let (mut resources, mut bytes) = (0u64, 0u64);
    for resource_type in types {
        let mut next = Some(format!("http://{}/fhir/{resource_type}?_count=1000", server.addr));
        while let Some(url) = next.take() {
            let body = client.get(&url).send().await.expect("search").bytes().await.expect("page");
            bytes += body.len() as u64;
            let page: Value = serde_json::from_slice(&body).expect("bundle");
            resources += page["entry"].as_array().map_or(0, Vec::len) as u64;
            next = page["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|l| l["relation"] == "next")
                .and_then(|l| l["url"].as_str())
                .map(str::to_string);
        }
    }
    Measured { resources, bytes, seconds: started.elapsed().as_secs_f64() }
}
