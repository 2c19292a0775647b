//! `kill -9`: the real `hearth` binary as a separate process, killed without warning while
//! events wait for their delivery, then started again on the same database: every event of an
//! acknowledged write is delivered, once, in order.

use std::process::Stdio;

use super::*;

/// A `hearth serve` process without authorization, its receivers on loopback, and a client.
struct Node {
    process: common::process::Process,
    client: reqwest::Client,
}

impl Node {
    async fn start(database_url: &str) -> Node {
        let flags = ["--auth", "off", "--allow-private-rest-hooks"];
        let process = common::process::Process::serve(database_url, &[], &flags, |command| {
            command.env("RUST_LOG", "warn").stdout(Stdio::null());
        })
        .await;
        Node { process, client: reqwest::Client::new() }
    }

    async fn send(&self, method: Method, path: &str, resource: Option<&Value>) -> (u16, Value) {
        let mut request = self.client.request(method, format!("{}/{path}", self.process.base()));
        if let Some(resource) = resource {
            request = request.header("content-type", "application/fhir+json").json(resource);
        }
        let response = request.send().await.expect("hearth answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn create(&self, resource: &Value) -> String {
        let (status, created) =
            self.send(Method::POST, resource["resourceType"].as_str().unwrap(), Some(resource)).await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().unwrap().to_string()
    }

    /// SIGKILL: no shutdown, nothing flushed.
    fn kill(mut self) {
        self.process.kill();
    }
}

async fn events_survive_kill_9(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let database_url = match db {
        Db::Sqlite => format!("sqlite://{}", dir.path().join("hearth.db").display()),
        Db::Postgres => common::postgres::fresh_database().await,
    };
    let first = Node::start(&database_url).await;
    let receiver = Receiver::start().await;
    let ana = first.create(&json!({"resourceType": "Patient"})).await;
    let filter = format!("Observation?patient=Patient/{ana}");
    let id = first.create(&subscription("result-final", &[&filter], &receiver.url, "id-only")).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while first.send(Method::GET, &format!("Subscription/{id}"), None).await.1["status"] != "active" {
        assert!(tokio::time::Instant::now() < deadline, "not activated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The receiver is down: the first event's delivery fails and backs off (5 s), so the
    // events of the next writes wait in the outbox, with no delivery in flight.
    receiver.answer(503);
    first.create(&observation(&ana, "final")).await;
    while receiver.refused() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no delivery was tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut written = Vec::new();
    for _ in 0..5 {
        written.push(first.create(&observation(&ana, "final")).await);
    }
    first.kill();

    receiver.answer(200);
    let second = Node::start(&database_url).await;
    let received = receiver.wait_for_events(6, Duration::from_secs(45)).await;
    let events: Vec<Value> = received.iter().flat_map(|r| r.events()).collect();
    let numbers: Vec<&str> = events.iter().map(|e| e["part"][0]["valueString"].as_str().unwrap()).collect();
    assert_eq!(numbers, ["1", "2", "3", "4", "5", "6"], "each event once, in order");
    let focused: Vec<String> = events[1..]
        .iter()
        .map(|e| e["part"][2]["valueReference"]["reference"].as_str().unwrap().rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(focused, written, "the acknowledged writes' events");
    second.kill();
}

on_both_databases!(events_survive_kill_9);
