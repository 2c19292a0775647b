//! Portal documents and messages benchmark: `cargo bench --bench documents` (builds release).
//!
//! On SQLite and PostgreSQL, with `--auth smart` and a patient's token (so every request runs
//! the access checks and the workflow rules a portal's requests run): raw uploads of a 5 MiB
//! PDF into the patient's record (`POST /fhir/Binary`, each a distinct file), raw downloads of one (`GET
//! /fhir/Binary/[id]`, `Accept: application/pdf`, streamed from the stored chunks), and the same
//! file served by the same process from `--static-dir` (the yardstick: bytes read from a
//! file), in MB/s; then messages posted per second into the patient's thread. Medians of
//! `HEARTH_BENCH_RUNS` (default 3) runs of `HEARTH_BENCH_SECONDS` (default 5) s. The downloads
//! run on a freshly started server whose peak resident memory is printed: it shows whether
//! downloads hold files whole.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::{env_number, get, load, median_load, portal_token, register_portal_user, LoadSummary, Server};
use http_body_util::Full;
use hyper::Request;
use serde_json::{json, Value};

const HEARTH: &str = env!("CARGO_BIN_EXE_hearth");
/// The public base URL of the servers started here: tokens stay valid across restarts.
const BASE: &str = "http://localhost:8080";
const FILE_BYTES: usize = 5 * 1024 * 1024;
const CONNECTIONS: usize = 4;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run());
}

/// A PDF of `FILE_BYTES`: a real header, then bytes that do not compress.
fn pdf() -> Bytes {
    let mut pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    while pdf.len() < FILE_BYTES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        pdf.extend_from_slice(&state.to_le_bytes());
    }
    pdf.truncate(FILE_BYTES);
    Bytes::from(pdf)
}

fn authorized(request: hyper::http::request::Builder, token: &str) -> hyper::http::request::Builder {
    request.header("host", "localhost").header("authorization", format!("Bearer {token}"))
}

async fn run() {
    let seconds = env_number("HEARTH_BENCH_SECONDS", 5) as u64;
    let runs = env_number("HEARTH_BENCH_RUNS", 3);
    println!(
        "Hearth documents benchmark: a {} MiB PDF, {runs} runs of {seconds} s, {CONNECTIONS} connections, a patient's token",
        FILE_BYTES / 1024 / 1024
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let file = pdf();
    std::fs::write(dir.path().join("report.pdf"), &file).expect("static file");
    let sqlite_url = format!("sqlite://{}", dir.path().join("documents.db").display());
    for (database, url) in [("SQLite", sqlite_url), ("PostgreSQL", common::postgres::fresh_database().await)] {
        // The patient and the clinic's front desk go in without authorization.
        let open = Server::start(HEARTH, &url).await;
        let client = reqwest::Client::new();
        let create = |resource: Value| {
            let client = client.clone();
            let base = format!("http://{}/fhir", open.addr);
            async move {
                let response = client
                    .post(format!("{base}/{}", resource["resourceType"].as_str().unwrap()))
                    .header("content-type", "application/fhir+json")
                    .body(resource.to_string())
                    .send()
                    .await
                    .expect("create");
                assert_eq!(response.status(), 201);
                response.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_string()
            }
        };
        let patient = create(json!({"resourceType": "Patient", "name": [{"family": "Bench"}]})).await;
        let desk = create(json!({"resourceType": "Organization", "name": "Front desk"})).await;
        open.stop();
        register_portal_user(HEARTH, &url, "bench", &format!("Patient/{patient}"));
        let static_dir = dir.path().to_str().expect("path").to_string();
        let recipients = format!("Organization/{desk}");
        let flags =
            ["--auth", "smart", "--base-url", BASE, "--static-dir", &static_dir, "--message-recipients", &recipients];
        let server = Server::start_with(HEARTH, &url, &flags).await;
        let scope = "launch/patient patient/Patient.r patient/Binary.cr patient/Communication.crs";
        let token = portal_token(&server, BASE, "bench", scope, &patient).await;

        // Every upload a file of its own (the last 8 bytes count them): the same content twice
        // would be stored once.
        let uploaded = Arc::new(AtomicU64::new(0));
        let upload = {
            let (file, token, context) = (file.clone(), token.clone(), format!("Patient/{patient}"));
            median_load(runs, || {
                let (file, token, context, uploaded) = (file.clone(), token.clone(), context.clone(), uploaded.clone());
                load(server.addr, CONNECTIONS, seconds, move |_| {
                    let mut distinct = file.to_vec();
                    let count = uploaded.fetch_add(1, Ordering::Relaxed) + 1;
                    distinct[FILE_BYTES - 8..].copy_from_slice(&count.to_le_bytes());
                    authorized(Request::post("/fhir/Binary"), &token)
                        .header("content-type", "application/pdf")
                        .header("x-security-context", &context)
                        .header("prefer", "return=minimal")
                        .body(Full::new(Bytes::from(distinct)))
                        .expect("request")
                })
            })
            .await
        };
        let binary = {
            let response = client
                .post(format!("http://{}/fhir/Binary", server.addr))
                .bearer_auth(&token)
                .header("content-type", "application/pdf")
                .header("x-security-context", format!("Patient/{patient}"))
                .body(file.clone())
                .send()
                .await
                .expect("upload");
            response.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_string()
        };
        // A fresh process for the downloads: its peak memory is theirs alone.
        server.stop();
        let server = Server::start_with(HEARTH, &url, &flags).await;
        let download = {
            let (token, path) = (token.clone(), format!("/fhir/Binary/{binary}"));
            median_load(runs, || {
                let (token, path) = (token.clone(), path.clone());
                load(server.addr, CONNECTIONS, seconds, move |_| {
                    authorized(Request::get(&path), &token)
                        .header("accept", "application/pdf")
                        .body(Full::new(Bytes::new()))
                        .expect("request")
                })
            })
            .await
        };
        let static_file =
            median_load(runs, || load(server.addr, CONNECTIONS, seconds, |_| get("/static/report.pdf"))).await;
        let peak = server.peak_rss_mb();

        let thread = {
            let thread = json!({"resourceType": "Communication", "status": "completed",
                "topic": {"text": "Question about my results"},
                "sender": {"reference": format!("Patient/{patient}")}, "recipient": [{"reference": recipients}],
                "subject": {"reference": format!("Patient/{patient}")}, "sent": "2026-12-07T10:00:00Z",
                "payload": [{"contentString": "Hello"}]});
            let response = client
                .post(format!("http://{}/fhir/Communication", server.addr))
                .bearer_auth(&token)
                .header("content-type", "application/fhir+json")
                .body(thread.to_string())
                .send()
                .await
                .expect("thread");
            assert_eq!(response.status(), 201, "the patient starts a thread");
            response.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_string()
        };
        let message = Bytes::from(
            json!({"resourceType": "Communication", "status": "completed",
                "partOf": [{"reference": format!("Communication/{thread}")}],
                "sender": {"reference": format!("Patient/{patient}")}, "recipient": [{"reference": recipients}],
                "subject": {"reference": format!("Patient/{patient}")}, "sent": "2026-12-07T10:05:00Z",
                "payload": [{"contentString": "One more question about the dose."}]})
            .to_string(),
        );
        let messages = median_load(runs, || {
            let (token, message) = (token.clone(), message.clone());
            load(server.addr, CONNECTIONS, seconds, move |_| {
                authorized(Request::post("/fhir/Communication"), &token)
                    .header("content-type", "application/fhir+json")
                    .header("prefer", "return=minimal")
                    .body(Full::new(message.clone()))
                    .expect("request")
            })
        })
        .await;
        server.stop();

        let megabytes = |summary: &LoadSummary| summary.per_second * FILE_BYTES as f64 / 1_000_000.0;
        println!("{database}:");
        let line = |what: &str, summary: &LoadSummary| {
            println!(
                "  {what:<36} {:>8.1} MB/s  ({:.1} files/s, p50 {:.1} ms, p99 {:.1} ms)",
                megabytes(summary),
                summary.per_second,
                summary.p50_ms,
                summary.p99_ms
            )
        };
        line("upload (POST Binary, raw)", &upload);
        line("download (GET Binary, raw, streamed)", &download);
        line("static file (--static-dir)", &static_file);
        println!("  download / static file: {:.2}", download.per_second / static_file.per_second);
        println!("  upload / static file:   {:.2}", upload.per_second / static_file.per_second);
        println!("  peak RSS of the server that served the downloads: {peak:.0} MB");
        println!(
            "  messages posted (POST Communication, patient rules): {:.0}/s (p50 {:.1} ms, p99 {:.1} ms)",
            messages.per_second, messages.p50_ms, messages.p99_ms
        );
    }
}
