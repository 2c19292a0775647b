//! Subscriptions benchmark: `cargo bench --bench subscriptions` (builds release).
//!
//! On SQLite and PostgreSQL, without authorization, writes per second of final Observations
//! (`PUT /fhir/Observation/bench-…`, each for one of 1,000 patients): with no subscription; then
//! with 1,000 active rest-hook Subscriptions to `result-final` (one per patient, filtered on the
//! patient, id-only), first for 1,000 other patients (every write is matched against the topic's
//! subscriptions, none is an event: the cost of matching), then for the subscribed patients (every write
//! records one event, delivered to a receiver on loopback while the load runs: the whole cost
//! on one machine). For that last load, the latency from each write's request to its
//! notification at the receiver (median and p99). The writes without subscriptions are measured
//! before the subscriptions are made and again after they are deleted, and the ratios are to
//! the mean of the two: the database grows during the benchmark, and the second measure takes
//! that drift out. Medians of `HEARTH_BENCH_RUNS` (default 3) runs of `HEARTH_BENCH_SECONDS`
//! (default 5) s, `CONNECTIONS` connections.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{env_number, load, LoadSummary, Server};
use http_body_util::Full;
use hyper::Request;
use serde_json::{json, Value};

const HEARTH: &str = env!("CARGO_BIN_EXE_hearth");
const PATIENTS: usize = 1000;
const CONNECTIONS: usize = 4;
const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run());
}

/// When each write's request was sent, and when its notification arrived, by (run, write
/// number).
#[derive(Default)]
struct Timings {
    sent: HashMap<(usize, usize), Instant>,
    arrived: HashMap<(usize, usize), Instant>,
}

/// A receiver that notes the arrival of each `Observation/bench-<run>-<n>` notification.
async fn receiver(timings: Arc<Mutex<Timings>>) -> String {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let timings = timings.clone();
            async move {
                let now = Instant::now();
                let notification: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let mut timings = timings.lock().expect("timings");
                for entry in notification["entry"].as_array().into_iter().flatten().skip(1) {
                    let url = entry["fullUrl"].as_str().unwrap_or_default();
                    let mut numbers = url.rsplit('-').take(2).filter_map(|n| n.parse::<usize>().ok());
                    if let (Some(n), Some(run)) = (numbers.next(), numbers.next()) {
                        timings.arrived.entry((run, n)).or_insert(now);
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("receiver");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("receiver serves") });
    url
}

/// A final Observation of patient `p<first_patient + n % PATIENTS>`.
fn observation_put(run: usize, n: usize, first_patient: usize, timings: &Mutex<Timings>) -> Request<Full<Bytes>> {
    let id = format!("bench-{run}-{n}");
    let body = json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"reference": format!("Patient/p{}", first_patient + n % PATIENTS)}, "valueQuantity": {"value": n % 300}});
    timings.lock().expect("timings").sent.insert((run, n), Instant::now());
    Request::put(format!("/fhir/Observation/{id}"))
        .header("host", "localhost")
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

async fn post(client: &reqwest::Client, base: &str, path: &str, resource: &Value) -> u16 {
    let response = client
        .put(format!("{base}/{path}"))
        .header("content-type", "application/fhir+json")
        .body(resource.to_string())
        .send()
        .await
        .expect("write");
    response.status().as_u16()
}

/// Writes of final Observations of the patients from `first_patient` on for `seconds`, `runs`
/// times (numbered from `first_run`); the median run and its number.
async fn writes(
    server: &Server,
    (seconds, runs, first_run): (u64, usize, usize),
    first_patient: usize,
    timings: &Arc<Mutex<Timings>>,
) -> (LoadSummary, usize) {
    let mut results = Vec::new();
    for run in first_run..first_run + runs {
        let recording = timings.clone();
        let summary =
            load(server.addr, CONNECTIONS, seconds, move |n| observation_put(run, n, first_patient, &recording)).await;
        results.push((summary, run));
    }
    results.sort_by(|a, b| a.0.per_second.total_cmp(&b.0.per_second));
    results[results.len() / 2]
}

/// The median and p99 (ms) from a run's requests to their notifications, and how many of the
/// run's writes were notified.
fn latencies(timings: &Timings, run: usize) -> (f64, f64, usize, usize) {
    let sent: Vec<(&(usize, usize), &Instant)> = timings.sent.iter().filter(|((r, _), _)| *r == run).collect();
    let mut latencies: Vec<f64> = sent
        .iter()
        .filter_map(|(key, sent)| {
            timings.arrived.get(key).map(|arrived| arrived.duration_since(**sent).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let at = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    (at(0.5), at(0.99), latencies.len(), sent.len())
}

async fn run() {
    let seconds = env_number("HEARTH_BENCH_SECONDS", 5) as u64;
    let runs = env_number("HEARTH_BENCH_RUNS", 3);
    println!(
        "Hearth subscriptions benchmark: {PATIENTS} patients, {runs} runs of {seconds} s, {CONNECTIONS} connections"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite_url = format!("sqlite://{}", dir.path().join("subscriptions.db").display());
    for (database, url) in [("SQLite", sqlite_url), ("PostgreSQL", common::postgres::fresh_database().await)] {
        // The receiver is on loopback.
        let server = Server::start_with(HEARTH, &url, &["--auth", "off", "--allow-private-rest-hooks"]).await;
        let base = format!("http://{}/fhir", server.addr);
        let client = reqwest::Client::new();
        for i in 0..PATIENTS {
            assert_eq!(
                post(
                    &client,
                    &base,
                    &format!("Patient/p{i}"),
                    &json!({"resourceType": "Patient", "id": format!("p{i}")})
                )
                .await,
                201
            );
        }
        let timings = Arc::new(Mutex::new(Timings::default()));
        let (before, _) = writes(&server, (seconds, runs, 0), 0, &timings).await;

        let hook = receiver(timings.clone()).await;
        for i in 0..PATIENTS {
            let subscription = json!({"resourceType": "Subscription", "id": format!("s{i}"), "status": "requested", "reason": "bench",
                "criteria": "http://hearth.dev/fhir/SubscriptionTopic/result-final",
                "_criteria": {"extension": [{"url": format!("{BACKPORT}backport-filter-criteria"),
                    "valueString": format!("Observation?patient=Patient/p{i}")}]},
                "channel": {"type": "rest-hook", "endpoint": hook, "payload": "application/fhir+json",
                    "_payload": {"extension": [{"url": format!("{BACKPORT}backport-payload-content"), "valueCode": "id-only"}]}}});
            assert_eq!(post(&client, &base, &format!("Subscription/s{i}"), &subscription).await, 201);
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let count: Value = client
                .get(format!("{base}/Subscription?status=active&_summary=count"))
                .send()
                .await
                .expect("count")
                .json()
                .await
                .expect("json");
            if count["total"].as_u64() == Some(PATIENTS as u64) {
                break;
            }
            assert!(Instant::now() < deadline, "subscriptions not active: {count}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Every write is matched against the topic's 1,000 subscriptions, none of whose filters it meets.
        let (matched_only, _) = writes(&server, (seconds, runs, runs), PATIENTS, &timings).await;
        // Every write is an event of one subscription, notified while the load runs.
        let (notified_load, median_run) = writes(&server, (seconds, runs, 2 * runs), 0, &timings).await;
        // The notifications of the last writes arrive after the load.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (p50, p99, notified, written) = latencies(&timings.lock().expect("timings"), median_run);
        for chunk in (0..PATIENTS).collect::<Vec<_>>().chunks(50) {
            let deletions = chunk.iter().map(|i| client.delete(format!("{base}/Subscription/s{i}")).send());
            for deleted in futures::future::join_all(deletions).await {
                assert!(deleted.expect("delete").status().is_success());
            }
        }
        let (after, _) = writes(&server, (seconds, runs, 3 * runs), 0, &timings).await;
        let without = (before.per_second + after.per_second) / 2.0;
        let ratio = |load: &LoadSummary| 100.0 * load.per_second / without;
        println!(
            "{database}: writes {without:.0}/s without subscriptions ({:.0}/s before them, {:.0}/s after); with \
             {PATIENTS} active: {:.0}/s ({:.0}%) of writes matched, none an event; {:.0}/s ({:.0}%) each an event \
             delivered meanwhile, request to receiver p50 {p50:.1} ms, p99 {p99:.1} ms ({notified} of {written} \
             writes notified)",
            before.per_second,
            after.per_second,
            matched_only.per_second,
            ratio(&matched_only),
            notified_load.per_second,
            ratio(&notified_load),
        );
        server.stop();
    }
}
