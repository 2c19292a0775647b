//! What the benchmarks share: starting servers, ingesting synthetic bundles, and a load
//! generator on raw HTTP/1.1 keep-alive connections (so its own overhead stays small).

#![allow(dead_code)]

#[path = "../../tests/common/postgres.rs"]
pub mod postgres;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use serde_json::Value;

/// Reads a numeric setting from the environment.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A running `hearth serve` process.
pub struct Server {
    pub addr: SocketAddr,
    child: Child,
}

impl Server {
    /// Starts the release `hearth` binary on a free port without authorization (`--auth off`)
    /// and waits until it is ready.
    pub async fn start(hearth_binary: &str, database_url: &str) -> Server {
        Server::start_with(hearth_binary, database_url, &["--auth", "off"]).await
    }

    /// Starts the release `hearth` binary with further `serve` flags.
    pub async fn start_with(hearth_binary: &str, database_url: &str, flags: &[&str]) -> Server {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = spawn(
            Command::new(hearth_binary)
                .args(["serve", "--listen", &addr.to_string(), "--database", database_url])
                .args(flags)
                .env("RUST_LOG", "warn"),
        );
        wait_until_up(addr, "/readyz").await;
        Server { addr, child }
    }

    /// Peak resident set size so far, in MB.
    pub fn peak_rss_mb(&self) -> f64 {
        peak_rss_kb(self.child.id()) as f64 / 1024.0
    }

    /// Stops the server.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The synthetic bundles of `patients` patients (seed 42), serialised.
pub fn synthetic_bundles(patients: usize) -> Vec<Bytes> {
    (0..patients)
        .map(|i| Bytes::from(serde_json::to_vec(&hearth::synth::patient_bundle(42, i)).expect("json")))
        .collect()
}

/// Ingest result: resources per second, and each bundle's transaction-response by bundle index.
pub struct Ingested {
    pub resources_per_second: f64,
    pub responses: Vec<Value>,
}

/// Posts all bundles as transactions, `concurrency` at a time.
pub async fn ingest(addr: SocketAddr, bundles: &[Bytes], concurrency: usize) -> Ingested {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(0));
    let bundles = Arc::new(bundles.to_vec());
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, bundles) = (client.clone(), next.clone(), bundles.clone());
        workers.push(tokio::spawn(async move {
            let mut done = Vec::new();
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
                done.push((n, response.json::<Value>().await.expect("transaction-response")));
            }
            done
        }));
    }
    let mut responses = vec![Value::Null; bundles.len()];
    for worker in workers {
        for (n, response) in worker.await.expect("ingest worker") {
            responses[n] = response;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let resources: usize = responses.iter().map(|r| r["entry"].as_array().map_or(0, Vec::len)).sum();
    Ingested { resources_per_second: resources as f64 / elapsed, responses }
}

/// The ids a transaction-response created for `resource_type` (from the entries' locations).
pub fn created_ids(response: &Value, resource_type: &str) -> Vec<String> {
    let marker = format!("/{resource_type}/");
    response["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["response"]["location"].as_str())
        .filter_map(|location| location.split(&marker).nth(1))
        .map(|rest| rest.split('/').next().unwrap_or("").to_string())
        .collect()
}

/// A GET request for `path`.
pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).header("host", "localhost").body(Full::new(Bytes::new())).expect("request")
}

/// Throughput and latency of one load run.
#[derive(Debug, Clone, Copy)]
pub struct LoadSummary {
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs `one` `runs` times and returns the run with the median throughput.
pub async fn median_load<F, Fut>(runs: usize, mut one: F) -> LoadSummary
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

/// `connections` keep-alive connections sending requests back to back for `seconds`.
pub async fn load(
    addr: SocketAddr,
    connections: usize,
    seconds: u64,
    request: impl Fn(usize) -> Request<Full<Bytes>> + Send + Sync + 'static,
) -> LoadSummary {
    load_at_most(addr, connections, seconds, usize::MAX, request).await
}

/// Like [`load`], but stops after `max_requests` requests (requests that may be sent only once,
/// such as signed client assertions).
pub async fn load_at_most(
    addr: SocketAddr,
    connections: usize,
    seconds: u64,
    max_requests: usize,
    request: impl Fn(usize) -> Request<Full<Bytes>> + Send + Sync + 'static,
) -> LoadSummary {
    let request = Arc::new(request);
    let counter = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (request, counter) = (request.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.expect("handshake");
            tokio::spawn(connection);
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= max_requests {
                    break;
                }
                let request = request(n);
                let uri = request.uri().to_string();
                let sent = Instant::now();
                let response = sender.send_request(request).await.expect("send");
                let status = response.status();
                response.into_body().collect().await.expect("body");
                latencies.push(sent.elapsed());
                if !status.is_success() && failures.len() < 3 {
                    failures.push(format!("{status} {uri}"));
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for task in tasks {
        let (l, f) = task.await.expect("load task");
        latencies.extend(l);
        failures.extend(f);
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(failures.is_empty(), "requests failed during the load: {failures:?}");
    latencies.sort();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64() * 1000.0;
    LoadSummary { per_second: latencies.len() as f64 / elapsed, p50_ms: percentile(0.50), p99_ms: percentile(0.99) }
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// Starts a process with its standard output discarded.
pub fn spawn(command: &mut Command) -> Child {
    command.stdout(Stdio::null()).spawn().expect("start a server process")
}

/// Waits until `GET path` answers 2xx.
pub async fn wait_until_up(addr: SocketAddr, path: &str) {
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

/// Runs a `hearth` administration command on the database, with `stdin` as its input.
pub fn admin(hearth_binary: &str, url: &str, args: &[&str], stdin: &str) {
    use std::io::Write;
    let mut child = Command::new(hearth_binary)
        .args(args)
        .args(["--database", url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("hearth admin command");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    assert!(child.wait().expect("wait").success(), "hearth {args:?} failed");
}

/// Registers the public client `bench-app` and the portal user `username` (password
/// `bench-password`) whose `fhirUser` is `fhir_user`, with `hearth` administration commands.
pub fn register_portal_user(hearth_binary: &str, url: &str, username: &str, fhir_user: &str) {
    admin(
        hearth_binary,
        url,
        &["client", "add", "--client-id", "bench-app", "--public", "--redirect-uri", "http://127.0.0.1:9/cb"],
        "",
    );
    admin(
        hearth_binary,
        url,
        &["user", "add", "--username", username, "--password-stdin", "--fhir-user", fhir_user],
        "bench-password\n",
    );
}

/// A token of the portal user `username` (password `bench-password`, client `bench-app`, see
/// [`register_portal_user`]) for `patient` with `scope` (space-separated), through the real
/// login and consent forms of a server whose public base URL is `base_url`.
pub async fn portal_token(server: &Server, base_url: &str, username: &str, scope: &str, patient: &str) -> String {
    let root = format!("http://{}", server.addr);
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
    let verifier = "bench-verifier-0123456789-0123456789-0123456789";
    use base64::Engine;
    use sha2::Digest;
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let fhir = format!("{base_url}/fhir");
    let page = http
        .get(format!("{root}/auth/authorize"))
        .query(&[
            ("response_type", "code"),
            ("client_id", "bench-app"),
            ("redirect_uri", "http://127.0.0.1:9/cb"),
            ("scope", scope),
            ("state", "s"),
            ("aud", &fhir),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .expect("authorize")
        .text()
        .await
        .expect("page");
    let field = |html: &str, name: &str| -> String {
        let start = html.find(&format!("name=\"{name}\" value=\"")).expect("field") + name.len() + 15;
        html[start..start + html[start..].find('"').expect("end")].to_string()
    };
    let login = http
        .post(format!("{root}/auth/login"))
        .form(&[
            ("request", field(&page, "request")),
            ("csrf", field(&page, "csrf")),
            ("username", username.into()),
            ("password", "bench-password".into()),
        ])
        .send()
        .await
        .expect("login");
    let cookie = login.headers()["set-cookie"].to_str().expect("cookie").split(';').next().expect("cookie").to_string();
    let consent_url = format!("{root}{}", login.headers()["location"].to_str().expect("location"));
    let consent =
        http.get(consent_url).header("cookie", &cookie).send().await.expect("consent").text().await.expect("page");
    let done = http
        .post(format!("{root}/auth/consent"))
        .header("cookie", &cookie)
        .form(
            &[("request", field(&consent, "request")), ("csrf", field(&consent, "csrf")), ("decision", "allow".into())]
                .into_iter()
                .chain(scope.split(' ').map(|s| ("scope", s.to_string())))
                .collect::<Vec<_>>(),
        )
        .send()
        .await
        .expect("consent");
    let location = done.headers()["location"].to_str().expect("redirect").to_string();
    let code =
        url::Url::parse(&location).expect("url").query_pairs().find(|(n, _)| n == "code").expect("code").1.to_string();
    let token: Value = http
        .post(format!("{root}/auth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:9/cb"),
            ("code_verifier", verifier),
            ("client_id", "bench-app"),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");
    assert_eq!(token["patient"], patient);
    token["access_token"].as_str().expect("access token").to_string()
}
