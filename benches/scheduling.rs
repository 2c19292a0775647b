//! Scheduling benchmark: `cargo bench --bench scheduling` (builds release).
//!
//! On SQLite and PostgreSQL: 20 practitioners, each with a Schedule whose Slots for the next 30
//! days (weekdays 09:00–17:00, 15 minutes) are made by `$generate-slots`. Then, in one run per
//! database: a read of a Practitioner by id (the yardstick), `Appointment/$find` over the whole
//! month for one practitioner and for all of them (`_count=10`), and `$book` of distinct Slots,
//! each with 4 connections for `HEARTH_BENCH_SECONDS` (default 5), `HEARTH_BENCH_RUNS` times
//! (default 3; the run with the median throughput is printed). Last, the race of the tests as a
//! benchmark: rounds of 100 clients booking the same 10 Slots at once (on PostgreSQL through
//! two nodes), printing bookings per second, the p99 of all answers, and checking that each
//! round booked exactly 10.

mod common;

use std::time::Instant;

use bytes::Bytes;
use common::{env_number, get, load, load_at_most, median_load, LoadSummary, Server};
use http_body_util::Full;
use hyper::Request;
use serde_json::{json, Value};

const PRACTITIONERS: usize = 20;
const CONNECTIONS: usize = 4;
const RACE_ROUNDS: usize = 10;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let seconds = env_number("HEARTH_BENCH_SECONDS", 5) as u64;
    let runs = env_number("HEARTH_BENCH_RUNS", 3);
    println!("Hearth scheduling benchmark: {PRACTITIONERS} practitioners, 30 days of 15-minute slots, {runs} runs of {seconds} s, {CONNECTIONS} connections");
    let sqlite_dir = tempfile::tempdir().expect("temp dir");
    let sqlite_url = format!("sqlite://{}", sqlite_dir.path().join("scheduling.db").display());
    for (database, database_url) in [("SQLite", sqlite_url), ("PostgreSQL", common::postgres::fresh_database().await)] {
        let server = Server::start(env!("CARGO_BIN_EXE_hearth"), &database_url).await;
        let client = reqwest::Client::new();
        let base = format!("http://{}/fhir", server.addr);
        let started = Instant::now();
        let practitioners = clinic(&client, &base).await;
        let mut slots = free_slots(&client, &base).await;
        println!("{database}: {} slots generated in {:.1} s", slots.len(), started.elapsed().as_secs_f64());
        if database == "PostgreSQL" {
            // What autovacuum does within a minute of a bulk load: without statistics the
            // planner takes the fresh tables for empty (a $find then took seconds).
            use sqlx::Connection;
            let mut connection = sqlx::PgConnection::connect(&database_url).await.expect("connect");
            sqlx::query("ANALYZE").execute(&mut connection).await.expect("ANALYZE");
        }

        let (from, to) = (day(0), day(31));
        let one = practitioners.clone();
        let read = median_load(runs, || {
            let one = one.clone();
            load(server.addr, CONNECTIONS, seconds, move |n| get(&format!("/fhir/Practitioner/{}", one[n % one.len()])))
        })
        .await;
        let find_one = median_load(runs, || {
            let (one, from, to) = (one.clone(), from.clone(), to.clone());
            load(server.addr, CONNECTIONS, seconds, move |n| {
                get(&format!(
                    "/fhir/Appointment/$find?start={from}&end={to}&practitioner=Practitioner/{}&_count=10",
                    one[n % one.len()]
                ))
            })
        })
        .await;
        let find_all = median_load(runs, || {
            let (from, to) = (from.clone(), to.clone());
            load(server.addr, CONNECTIONS, seconds, move |_| {
                get(&format!("/fhir/Appointment/$find?start={from}&end={to}&_count=10"))
            })
        })
        .await;
        let race_slots: Vec<Value> = slots.split_off(slots.len() - RACE_ROUNDS * 10);
        let book = {
            let mut summaries = Vec::new();
            for _ in 0..runs.max(1) {
                let batch: Vec<Value> = slots.split_off(slots.len().saturating_sub(2000));
                let count = batch.len();
                let requests = std::sync::Arc::new(batch);
                summaries
                    .push(load_at_most(server.addr, CONNECTIONS, seconds, count, move |n| book(&requests[n], n)).await);
            }
            summaries.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
            summaries[summaries.len() / 2]
        };
        let line = |name: &str, s: &LoadSummary| {
            println!("{database}: {name}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms", s.per_second, s.p50_ms, s.p99_ms)
        };
        line("read Practitioner by id", &read);
        line("$find, one practitioner, a month", &find_one);
        line("$find, all 20 practitioners, a month", &find_all);
        line("$book, distinct slots", &book);
        println!(
            "{database}: against a read by id (p50): $find one {:.0}x, $find all {:.0}x, $book {:.0}x",
            find_one.p50_ms / read.p50_ms,
            find_all.p50_ms / read.p50_ms,
            book.p50_ms / read.p50_ms
        );

        let second = match database {
            "PostgreSQL" => Some(Server::start(env!("CARGO_BIN_EXE_hearth"), &database_url).await),
            _ => None,
        };
        let nodes: Vec<String> =
            std::iter::once(base.clone()).chain(second.as_ref().map(|s| format!("http://{}/fhir", s.addr))).collect();
        let (bookings_per_second, p99) = race(&client, &nodes, &race_slots).await;
        println!(
            "{database}: race, {RACE_ROUNDS} rounds of 100 clients for 10 slots ({} node(s)): {bookings_per_second:.0} bookings/s, p99 of all answers {p99:.1} ms, exactly 10 booked per round",
            nodes.len()
        );
        if let Some(second) = second {
            second.stop();
        }
        server.stop();
    }
}

/// The local date `days` from today, `YYYY-MM-DD`.
fn day(days: i64) -> String {
    let date = (time::OffsetDateTime::now_utc() + time::Duration::days(days)).date();
    format!("{:04}-{:02}-{:02}", date.year(), date.month() as u8, date.day())
}

/// Creates the practitioners and their schedules, and generates a month of slots for each;
/// returns the practitioners' ids.
async fn clinic(client: &reqwest::Client, base: &str) -> Vec<String> {
    let mut practitioners = Vec::new();
    for n in 0..PRACTITIONERS {
        let practitioner =
            create(client, base, &json!({"resourceType": "Practitioner", "name": [{"family": format!("Doctor {n}")}]}))
                .await;
        let schedule = create(
            client,
            base,
            &json!({"resourceType": "Schedule", "active": true,
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": "America/New_York"}],
            "actor": [{"reference": format!("Practitioner/{practitioner}")}]}),
        )
        .await;
        let parameters = json!({"resourceType": "Parameters", "parameter": [
            {"name": "start", "valueDate": day(1)}, {"name": "end", "valueDate": day(30)},
            {"name": "availability", "valueString": "mon-fri 09:00-17:00"},
            {"name": "slot-minutes", "valuePositiveInt": 15}]});
        let response = client
            .post(format!("{base}/Schedule/{schedule}/$generate-slots"))
            .header("content-type", "application/fhir+json")
            .body(parameters.to_string())
            .send()
            .await
            .expect("$generate-slots");
        assert!(response.status().is_success(), "$generate-slots: {}", response.status());
        practitioners.push(practitioner);
    }
    practitioners
}

async fn create(client: &reqwest::Client, base: &str, resource: &Value) -> String {
    let resource_type = resource["resourceType"].as_str().expect("a resource type");
    let response = client
        .post(format!("{base}/{resource_type}"))
        .header("content-type", "application/fhir+json")
        .body(resource.to_string())
        .send()
        .await
        .expect("create");
    let created: Value = response.json().await.expect("the created resource");
    created["id"].as_str().expect("an id").to_string()
}

/// Every free Slot (id, start, end).
async fn free_slots(client: &reqwest::Client, base: &str) -> Vec<Value> {
    let mut slots = Vec::new();
    let mut next = Some(format!("{base}/Slot?status=free&_count=1000"));
    while let Some(url) = next {
        let page: Value = client.get(&url).send().await.expect("search").json().await.expect("a Bundle");
        for entry in page["entry"].as_array().into_iter().flatten() {
            let slot = &entry["resource"];
            slots.push(json!({"id": slot["id"], "start": slot["start"], "end": slot["end"]}));
        }
        next = page["link"]
            .as_array()
            .and_then(|links| links.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .map(str::to_string);
    }
    slots
}

/// The `$book` parameters of a proposal for `slot`, for patient `n`.
fn proposal(slot: &Value, n: usize) -> Value {
    let appointment = json!({"resourceType": "Appointment", "status": "proposed",
        "start": slot["start"], "end": slot["end"],
        "slot": [{"reference": format!("Slot/{}", slot["id"].as_str().expect("an id"))}],
        "participant": [{"actor": {"reference": format!("Patient/bench-{}", n % 500)}}]});
    json!({"resourceType": "Parameters", "parameter": [{"name": "appointment-resource", "resource": appointment}]})
}

fn book(slot: &Value, n: usize) -> Request<Full<Bytes>> {
    Request::post("/fhir/Appointment/$book")
        .header("host", "localhost")
        .header("content-type", "application/fhir+json")
        .body(Full::new(Bytes::from(proposal(slot, n).to_string())))
        .expect("request")
}

/// Rounds of 100 concurrent `$book`s of 10 Slots (10 clients per Slot), spread over `nodes`;
/// bookings per second over all rounds and the p99 latency of every answer. Panics unless each
/// round booked exactly 10 and refused 90 with 409.
async fn race(client: &reqwest::Client, nodes: &[String], slots: &[Value]) -> (f64, f64) {
    let mut latencies = Vec::new();
    let mut booked = 0;
    let started = Instant::now();
    for round in slots.chunks(10) {
        let attempts = (0..100).map(|i| {
            let url = format!("{}/Appointment/$book", nodes[i % nodes.len()]);
            let body = proposal(&round[i % round.len()], i).to_string();
            async move {
                let sent = Instant::now();
                let status = client
                    .post(url)
                    .header("content-type", "application/fhir+json")
                    .body(body)
                    .send()
                    .await
                    .expect("$book")
                    .status()
                    .as_u16();
                (status, sent.elapsed())
            }
        });
        let answers = futures::future::join_all(attempts).await;
        let won = answers.iter().filter(|(status, _)| *status == 200).count();
        let refused = answers.iter().filter(|(status, _)| *status == 409).count();
        assert_eq!((won, refused), (round.len(), 100 - round.len()), "exactly one booking per slot");
        booked += won;
        latencies.extend(answers.into_iter().map(|(_, latency)| latency));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    (booked as f64 / elapsed, p99.as_secs_f64() * 1000.0)
}
