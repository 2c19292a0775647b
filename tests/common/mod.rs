//! Test harness: a real Hearth server on 127.0.0.1 port 0, on SQLite (a temporary file) or
//! PostgreSQL (a throwaway cluster started once per test binary, one database per test).

#![allow(dead_code)]

pub mod postgres;
pub mod process;
pub mod receiver;
pub mod smart;
pub mod smtp;

use hearth::server::{Hearth, Settings};
use reqwest::{Method, Response};
use serde_json::Value;

/// Which database a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A running server and a client for it.
pub struct TestServer {
    /// The FHIR base, e.g. `http://127.0.0.1:40123/fhir`.
    pub base: String,
    pub client: reqwest::Client,
    pub db: Db,
    /// The database the server runs on.
    pub database_url: String,
    settings: Settings,
    running: Option<Running>,
    _dir: Option<tempfile::TempDir>,
}

/// The tasks of a running test server.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    serve: tokio::task::JoinHandle<()>,
    jobs: tokio::task::JoinHandle<()>,
    /// The server's store, to see when the last of its users has let it go.
    store: std::sync::Weak<dyn hearth::store::Store>,
}

impl TestServer {
    /// Starts a server on a fresh, empty database.
    pub async fn start(db: Db) -> TestServer {
        Self::start_with(db, |settings| settings).await
    }

    /// Starts a server with adjusted settings.
    pub async fn start_with(db: Db, adjust: impl FnOnce(Settings) -> Settings) -> TestServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let database_url = match db {
            Db::Sqlite => format!("sqlite://{}", dir.path().join("hearth.db").display()),
            Db::Postgres => postgres::fresh_database().await,
        };
        // Test receivers (rest-hooks) listen on loopback.
        let mut settings = Settings::new("http://placeholder");
        // Beside an SQLite file by default; a PostgreSQL database's goes with the test too.
        if db == Db::Postgres {
            settings.audit.spool_dir = Some(dir.path().join("audit-spool"));
            settings.export.dir = Some(dir.path().join("exports"));
        }
        settings.subscriptions.endpoints.allow_private = true;
        Self::serve(db, database_url, Some(dir), adjust(settings), None).await
    }

    /// Serves on a free port; the public base URL is that port's unless `public_root` names
    /// another (the address of a load balancer in front of several nodes).
    async fn serve(
        db: Db,
        database_url: String,
        dir: Option<tempfile::TempDir>,
        settings: Settings,
        public_root: Option<String>,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let address = listener.local_addr().expect("local address");
        let root = format!("http://{address}");
        let settings = Settings { base_url: public_root.unwrap_or_else(|| root.clone()), ..settings };
        let hearth = Hearth::open(&database_url, settings.clone()).await.expect("open the database");
        let store = std::sync::Arc::downgrade(hearth.service().store());
        let jobs = tokio::spawn(hearth.service().clone().run_background());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serve = tokio::spawn(async move {
            let _ = axum::serve(listener, hearth.router())
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        TestServer {
            base: format!("{root}/fhir"),
            client: reqwest::Client::new(),
            db,
            database_url,
            settings,
            running: Some(Running { stop, serve, jobs, store }),
            _dir: dir,
        }
    }

    /// A second server process on the same PostgreSQL database (another node behind a load
    /// balancer: same public base URL, its own port).
    pub async fn second_node(&self) -> TestServer {
        self.second_node_with(|settings| settings).await
    }

    /// [`TestServer::second_node`] with adjusted settings.
    pub async fn second_node_with(&self, adjust: impl FnOnce(Settings) -> Settings) -> TestServer {
        assert_eq!(self.db, Db::Postgres, "only PostgreSQL is shared by several nodes");
        let public_root = self.settings.base_url.clone();
        let settings = adjust(self.settings.clone());
        Self::serve(self.db, self.database_url.clone(), None, settings, Some(public_root)).await
    }

    /// Stops this server and starts a new one on the same database (a process restart).
    pub async fn restart(self) -> TestServer {
        self.restart_with(|settings| settings).await
    }

    /// [`TestServer::restart`] with adjusted settings.
    pub async fn restart_with(mut self, adjust: impl FnOnce(Settings) -> Settings) -> TestServer {
        let running = self.running.take().expect("a running server");
        let _ = running.stop.send(());
        running.jobs.abort();
        let _ = running.jobs.await;
        drop(self.client);
        let _ = running.serve.await;
        // axum's serve returns when every connection task has said it is done, which each
        // says just before it drops its copy of the router: the store (and SQLite's
        // single-writer lock) goes a moment later.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while running.store.strong_count() > 0 {
            assert!(std::time::Instant::now() < deadline, "the stopped server still holds its store");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // A process that other tests spawn at that moment holds a copy of the lock file's
        // descriptor (and so the lock) from its fork until its exec closes it.
        if let Some(path) = self.database_url.strip_prefix("sqlite://") {
            let lock = std::fs::File::open(format!("{path}.lock")).expect("the SQLite lock file");
            while lock.try_lock().is_err() {
                assert!(std::time::Instant::now() < deadline, "something still holds the SQLite writer lock");
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        let settings = adjust(self.settings.clone());
        Self::serve(self.db, self.database_url.clone(), self._dir.take(), settings, None).await
    }

    /// Absolute URL of a path under the FHIR base (`Patient/1`).
    pub fn url(&self, path: &str) -> String {
        if path.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }

    /// A request builder for `path` under the FHIR base.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.expect("GET")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.request(Method::DELETE, path).send().await.expect("DELETE")
    }

    /// Sends `body` as `application/fhir+json`.
    pub async fn send_json(&self, method: Method, path: &str, body: &Value) -> Response {
        self.request(method, path)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    /// Sends `body` as `application/fhir+json` with extra headers.
    pub async fn send_with(&self, method: Method, path: &str, body: &Value, headers: &[(&str, &str)]) -> Response {
        let mut request = self.request(method, path).header("content-type", "application/fhir+json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(body.to_string()).send().await.expect("request")
    }

    /// Sends a JSON Patch document (`application/json-patch+json`) with extra headers.
    pub async fn json_patch(&self, path: &str, patch: &Value, headers: &[(&str, &str)]) -> Response {
        let mut request = self.request(Method::PATCH, path).header("content-type", "application/json-patch+json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(patch.to_string()).send().await.expect("PATCH")
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.send_json(Method::POST, path, body).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Response {
        self.send_json(Method::PUT, path, body).await
    }

    /// Creates a resource and returns its id (asserting 201).
    pub async fn create(&self, resource: &Value) -> String {
        let resource_type = resource["resourceType"].as_str().expect("resourceType");
        let response = self.post(resource_type, resource).await;
        assert_eq!(response.status(), 201, "create {resource_type}");
        body(response).await["id"].as_str().expect("id").to_string()
    }

    /// Ids of the resources a search returns, in order.
    pub async fn search_ids(&self, query: &str) -> Vec<String> {
        let response = self.get(query).await;
        assert_eq!(response.status(), 200, "search {query}");
        let bundle = body(response).await;
        bundle["entry"]
            .as_array()
            .map(|entries| entries.iter().map(|e| e["resource"]["id"].as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default()
    }
}

/// The response body as JSON.
/// What `read` answers once another node has applied the change feed (PostgreSQL hands a
/// commit's notifications to every node at once; a busy machine may delay applying them by a
/// few milliseconds): polls until `done` holds or two seconds pass, and returns the last answer.
pub async fn after_the_feed<T, F, R>(mut read: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> R,
    R: std::future::Future<Output = T>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let answer = read().await;
        if done(&answer) || std::time::Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

pub async fn body(response: Response) -> Value {
    let text = response.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts an OperationOutcome body and returns its first diagnostics text.
pub async fn outcome(response: Response) -> String {
    let value = body(response).await;
    assert_eq!(value["resourceType"], "OperationOutcome", "{value}");
    value["issue"][0]["diagnostics"].as_str().unwrap_or("").to_string()
}

/// Defines each listed async test function `fn(Db)` once per database.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::Db::Postgres).await
                }
            )*
        }
    };
}
