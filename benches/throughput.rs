//! Throughput benchmark: `cargo bench --bench throughput` (builds release).
//!
//! For SQLite and PostgreSQL it starts `hearth serve` as its own process and measures:
//! ingest of `hearth synth` patients as transaction bundles (resources/s), read by id (req/s,
//! p50/p99 latency, 32 connections), create (req/s), and the server's peak RSS. In the same run
//! it measures a static axum response served by a separate process (this binary started with
//! `--static-server`), so read throughput is also reported as a ratio of that ceiling.
//! Each load figure is the median of several runs. Environment: `HEARTH_BENCH_PATIENTS`
//! (default 100), `HEARTH_BENCH_SECONDS` (default 5 per run), `HEARTH_BENCH_RUNS` (default 3).

#[path = "../tests/common/postgres.rs"]
mod postgres;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::Value;

const CONNECTIONS: usize = 32;
const INGEST_CONCURRENCY: usize = 4;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

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
    let bundles: Vec<Bytes> = (0..patients)
        .map(|i| Bytes::from(serde_json::to_vec(&hearth::synth::patient_bundle(42, i)).expect("json")))
        .collect();
    println!("Hearth throughput benchmark: {patients} synthetic patients, {runs} runs of {seconds} s, {CONNECTIONS} connections");

    let static_port = free_port();
    let exe = std::env::current_exe().expect("current exe");
    let mut static_child = spawn(Command::new(exe).args(["--static-server", &static_port.to_string()]));
    let static_addr = SocketAddr::from(([127, 0, 0, 1], static_port));
    wait_until_up(static_addr, "/").await;
    let ceiling = median_load(runs, || load(static_addr, seconds, |_| get("/"))).await;
    let _ = static_child.kill();
    let _ = static_child.wait();
    println!(
        "static axum ceiling: {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms)",
        ceiling.per_second, ceiling.p50_ms, ceiling.p99_ms
    );

    let mut all = Vec::new();
    let sqlite_dir = tempfile::tempdir().expect("temp dir");
    let sqlite_url = format!("sqlite://{}", sqlite_dir.path().join("bench.db").display());
    for (database, url) in [("SQLite", sqlite_url), ("PostgreSQL", postgres::fresh_database().await)] {
        all.push(measure(database, &url, &bundles, seconds, runs).await);
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

async fn measure(database: &'static str, url: &str, bundles: &[Bytes], seconds: u64, runs: usize) -> Figures {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut server = spawn(
        Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(["serve", "--listen", &addr.to_string(), "--database", url])
            .env("RUST_LOG", "warn"),
    );
    wait_until_up(addr, "/readyz").await;

    let (ingest_rate, observation_ids) = ingest(addr, bundles).await;
    println!("{database}: ingested at {ingest_rate:.0} resources/s; {} observations to read", observation_ids.len());
    let ids = Arc::new(observation_ids);
    let read = median_load(runs, || {
        let ids = ids.clone();
        load(addr, seconds, move |n| get(&format!("/fhir/Observation/{}", ids[n % ids.len()])))
    })
    .await;
    println!("{database}: read {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms", read.per_second, read.p50_ms, read.p99_ms);
    let patient = Bytes::from_static(br#"{"resourceType":"Patient","active":true,"name":[{"family":"Bench","given":["Mark"]}],"gender":"female","birthDate":"1980-01-01"}"#);
    let create = median_load(runs, || {
        let patient = patient.clone();
        load(addr, seconds, move |_| {
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
    let peak_rss_mb = peak_rss_kb(server.id()) as f64 / 1024.0;
    let _ = server.kill();
    let _ = server.wait();
    Figures { database, ingest_resources_per_s: ingest_rate, read, create, peak_rss_mb }
}

/// Posts all bundles, a few at a time; returns resources/s and the created Observation ids.
async fn ingest(addr: SocketAddr, bundles: &[Bytes]) -> (f64, Vec<String>) {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let bundles = Arc::new(bundles.to_vec());
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..INGEST_CONCURRENCY {
        let (client, next, bundles) = (client.clone(), next.clone(), bundles.clone());
        workers.push(tokio::spawn(async move {
            let (mut resources, mut observations) = (0usize, Vec::new());
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let Some(bundle) = bundles.get(n) else { break };
                let response = client
                    .post(format!("http://{addr}/fhir"))
                    .header("content-type", "application/fhir+json")
                    .header("prefer", "return=minimal")
                    .body(bundle.clone())
                    .send()
                    .await
                    .expect("post bundle");
                assert_eq!(response.status(), 200, "transaction failed: {}", response.text().await.unwrap_or_default());
                let result: Value = response.json().await.expect("transaction-response");
                for entry in result["entry"].as_array().into_iter().flatten() {
                    resources += 1;
                    let location = entry["response"]["location"].as_str().unwrap_or("");
                    if let Some(rest) = location.split("/Observation/").nth(1) {
                        observations.push(rest.split('/').next().unwrap_or("").to_string());
                    }
                }
            }
            (resources, observations)
        }));
    }
    let (mut resources, mut observations) = (0, Vec::new());
    for worker in workers {
        let (r, o) = worker.await.expect("ingest worker");
        resources += r;
        observations.extend(o);
    }
    (resources as f64 / started.elapsed().as_secs_f64(), observations)
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).header("host", "localhost").body(Full::new(Bytes::new())).expect("request")
}

#[derive(Debug, Clone, Copy)]
struct LoadSummary {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn median_load<F, Fut>(runs: usize, mut one: F) -> LoadSummary
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = LoadSummary>,
{
    let mut results = Vec::new();
    for _ in 0..runs.max(1) {
        results.push(one().await);
    }
    results.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    results[results.len() / 2]
}

/// `CONNECTIONS` keep-alive connections sending requests back to back for `seconds`.
async fn load(
    addr: SocketAddr,
    seconds: u64,
    request: impl Fn(usize) -> Request<Full<Bytes>> + Send + Sync + 'static,
) -> LoadSummary {
    let request = Arc::new(request);
    let counter = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (request, counter) = (request.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
            tokio::spawn(connection);
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                let response = sender.send_request(request(n)).await.expect("send");
                let ok = response.status().is_success();
                response.into_body().collect().await.expect("body");
                latencies.push(sent.elapsed());
                errors += usize::from(!ok);
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await.expect("load task");
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(errors, 0, "{errors} requests failed during the load");
    latencies.sort();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64() * 1000.0;
    LoadSummary { per_second: latencies.len() as f64 / elapsed, p50_ms: percentile(0.50), p99_ms: percentile(0.99) }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

fn spawn(command: &mut Command) -> Child {
    command.stdout(Stdio::null()).spawn().expect("start a server process")
}

async fn wait_until_up(addr: SocketAddr, path: &str) {
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if client.get(format!("http://{addr}{path}")).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server at {addr} did not come up");
}

/// Peak resident set size (VmHWM) of a process, in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
