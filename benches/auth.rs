//! Authorization benchmark: `cargo bench --bench auth` (builds release).
//!
//! On SQLite and PostgreSQL it loads synthetic patients, then measures in one run, alternating:
//! read by id with `--auth off`, and the same reads on the same database with `--auth smart`
//! and a bearer token (a patient-scoped token reading that patient's resources, so that the
//! compartment check runs on every read), and the same with a caregiver's token (a RelatedPerson
//! proxy, whose links are read again on every request), and prints them and their ratios. Then the token
//! endpoint: client_credentials tokens per second with `client_secret_basic` and with
//! `private_key_jwt` (RS384 assertions signed before the run, each with its own `jti`; a run
//! ends after `HEARTH_BENCH_ASSERTIONS`, default 6000, of them).
//! Medians of `HEARTH_BENCH_RUNS` (default 3) runs of `HEARTH_BENCH_SECONDS` (default 3) s;
//! `HEARTH_BENCH_PATIENTS` (default 20) patients.

mod common;

use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use common::{
    admin, created_ids, env_number, ingest, load, load_at_most, median_load, portal_token, register_portal_user,
    LoadSummary, Server,
};
use http_body_util::Full;
use hyper::Request;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::json;

const CONNECTIONS: usize = 32;
const HEARTH: &str = env!("CARGO_BIN_EXE_hearth");
/// The public base URL of every server started here: tokens stay valid across restarts.
const BASE: &str = "http://localhost:8080";

/// A server with `--auth smart` at [`BASE`].
async fn smart_server(url: &str) -> Server {
    Server::start_with(HEARTH, url, &["--auth", "smart", "--base-url", BASE]).await
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let patients = env_number("HEARTH_BENCH_PATIENTS", 20);
    let seconds = env_number("HEARTH_BENCH_SECONDS", 3) as u64;
    let runs = env_number("HEARTH_BENCH_RUNS", 3);
    println!(
        "Hearth authorization benchmark: {patients} patients, {runs} runs of {seconds} s, {CONNECTIONS} connections"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = format!("sqlite://{}", dir.path().join("auth.db").display());
    let mut rows = Vec::new();
    for (database, url) in [("SQLite", sqlite), ("PostgreSQL", common::postgres::fresh_database().await)] {
        rows.push((database, measure(&url, patients, seconds, runs, dir.path()).await));
    }
    println!();
    println!("| database | read --auth off req/s | read with token req/s | ratio | token p99 ms | read with proxy token req/s | proxy / patient | client_secret_basic tokens/s | private_key_jwt tokens/s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (database, f) in rows {
        println!(
            "| {database} | {:.0} | {:.0} | {:.0}% | {:.2} | {:.0} | {:.0}% | {:.0} | {:.0} |",
            f.open.per_second,
            f.authorized.per_second,
            100.0 * f.authorized.per_second / f.open.per_second,
            f.authorized.p99_ms,
            f.proxy.per_second,
            100.0 * f.proxy.per_second / f.authorized.per_second,
            f.basic_tokens.per_second,
            f.jwt_tokens.per_second
        );
    }
}

struct Figures {
    open: LoadSummary,
    authorized: LoadSummary,
    proxy: LoadSummary,
    basic_tokens: LoadSummary,
    jwt_tokens: LoadSummary,
}

async fn measure(url: &str, patients: usize, seconds: u64, runs: usize, dir: &std::path::Path) -> Figures {
    // Data goes in without authorization; then the clients and a patient user are registered.
    let server = Server::start(HEARTH, url).await;
    let ingested = ingest(server.addr, &common::synthetic_bundles(patients), 4).await;
    server.stop();
    let patient = created_ids(&ingested.responses[0], "Patient")[0].clone();
    let observations: Arc<Vec<String>> =
        Arc::new(ingested.responses.iter().take(1).flat_map(|r| created_ids(r, "Observation")).collect());
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
    let public = private.to_public_key();
    let jwks = json!({"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS384", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()), "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be())}]});
    let jwks_file = dir.join("bench-jwks.json");
    std::fs::write(&jwks_file, jwks.to_string()).expect("write JWKS");
    admin(
        HEARTH,
        url,
        &["client", "add", "--client-id", "bench-basic", "--secret-stdin", "--scope", "system/*.rs"],
        "bench-secret\n",
    );
    admin(
        HEARTH,
        url,
        &[
            "client",
            "add",
            "--client-id",
            "bench-jwt",
            "--jwks-file",
            jwks_file.to_str().unwrap(),
            "--scope",
            "system/*.rs",
        ],
        "",
    );
    register_portal_user(HEARTH, url, "bench", &format!("Patient/{patient}"));
    let caregiver = caregiver_of(url, &patient).await;
    register_portal_user(HEARTH, url, "bench-carer", &format!("RelatedPerson/{caregiver}"));

    let (mut open_runs, mut authorized_runs, mut proxy_runs) = (Vec::new(), Vec::new(), Vec::new());
    // The patient's own token: every read goes through the compartment check; the caregiver's
    // also reads its RelatedPerson again.
    let smart = smart_server(url).await;
    let token = portal_token(&smart, BASE, "bench", "launch/patient patient/*.rs", &patient).await;
    let proxy_token = portal_token(&smart, BASE, "bench-carer", "launch/patient patient/*.rs", &patient).await;
    smart.stop();
    for _ in 0..runs.max(1) {
        let open = Server::start(HEARTH, url).await;
        open_runs.push(load(open.addr, CONNECTIONS, seconds, read(observations.clone(), None)).await);
        open.stop();
        let smart = smart_server(url).await;
        authorized_runs
            .push(load(smart.addr, CONNECTIONS, seconds, read(observations.clone(), Some(token.clone()))).await);
        proxy_runs
            .push(load(smart.addr, CONNECTIONS, seconds, read(observations.clone(), Some(proxy_token.clone()))).await);
        smart.stop();
    }
    let smart = smart_server(url).await;
    let basic = format!("Basic {}", STANDARD.encode("bench-basic:bench-secret"));
    let probe = reqwest::Client::new()
        .post(format!("http://{}/auth/token", smart.addr))
        .header("authorization", &basic)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=system%2F*.rs")
        .send()
        .await
        .expect("token request");
    assert_eq!(probe.status(), 200, "client_secret_basic: {}", probe.text().await.unwrap_or_default());
    let basic_tokens = median_load(runs, || {
        let basic = basic.clone();
        load(smart.addr, 16, seconds, move |_| {
            token_request(Some(&basic), "grant_type=client_credentials&scope=system%2F*.rs".to_string())
        })
    })
    .await;
    // Enough signed assertions for every request of every run (each jti is used once).
    let token_url = format!("{BASE}/auth/token");
    let pem = private.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).expect("PEM");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).expect("key");
    let per_run = env_number("HEARTH_BENCH_ASSERTIONS", 6000);
    let needed = per_run * runs.max(1) + 1;
    let assertions: Arc<Vec<String>> = Arc::new(
        (0..needed)
            .map(|n| {
                let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 290;
                let claims = json!({"iss": "bench-jwt", "sub": "bench-jwt", "aud": token_url, "exp": exp, "jti": format!("bench-{n}")});
                let header = jsonwebtoken::Header { kid: Some("bench".into()), ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS384) };
                jsonwebtoken::encode(&header, &claims, &key).expect("sign")
            })
            .collect(),
    );
    // One request first, to fail with the server's reason rather than a status.
    let probe = reqwest::Client::new()
        .post(format!("http://{}/auth/token", smart.addr))
        .body(jwt_form(&assertions[0]))
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .expect("token request");
    assert_eq!(probe.status(), 200, "private_key_jwt: {}", probe.text().await.unwrap_or_default());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let jwt_tokens = median_load(runs, || {
        let (assertions, next) = (assertions.clone(), next.clone());
        load_at_most(smart.addr, 16, seconds, per_run, move |_| {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let assertion = &assertions[n.min(assertions.len() - 1)];
            token_request(None, jwt_form(assertion))
        })
    })
    .await;
    smart.stop();
    let middle = |mut all: Vec<LoadSummary>| {
        all.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
        all[all.len() / 2]
    };
    Figures {
        open: middle(open_runs),
        authorized: middle(authorized_runs),
        proxy: middle(proxy_runs),
        basic_tokens,
        jwt_tokens,
    }
}

/// Stores a caregiver's RelatedPerson for `patient` (with `--auth off`); answers its id.
async fn caregiver_of(url: &str, patient: &str) -> String {
    let server = Server::start(HEARTH, url).await;
    let related = json!({"resourceType": "RelatedPerson", "patient": {"reference": format!("Patient/{patient}")},
        "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "FRND"}]}]});
    let response = reqwest::Client::new()
        .post(format!("http://{}/fhir/RelatedPerson", server.addr))
        .header("content-type", "application/fhir+json")
        .body(related.to_string())
        .send()
        .await
        .expect("create RelatedPerson");
    assert_eq!(response.status(), 201, "RelatedPerson");
    let created: serde_json::Value = response.json().await.expect("body");
    server.stop();
    created["id"].as_str().expect("id").to_string()
}

/// Reads of the patient's Observations by id, with a bearer token or without.
fn read(
    ids: Arc<Vec<String>>,
    token: Option<String>,
) -> impl Fn(usize) -> Request<Full<Bytes>> + Send + Sync + 'static {
    move |n| {
        let mut request = Request::get(format!("/fhir/Observation/{}", ids[n % ids.len()])).header("host", "localhost");
        if let Some(token) = &token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.body(Full::new(Bytes::new())).expect("request")
    }
}

/// The form of a client_credentials request authenticated by `assertion`.
fn jwt_form(assertion: &str) -> String {
    format!("grant_type=client_credentials&scope=system%2F*.rs&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}")
}

fn token_request(authorization: Option<&str>, form: String) -> Request<Full<Bytes>> {
    let mut request = Request::post("/auth/token")
        .header("host", "localhost")
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.body(Full::new(Bytes::from(form))).expect("request")
}
