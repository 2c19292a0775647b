//! Assembling a server: store, FHIR service and router. Used by `main`, tests and benchmarks.

use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::http::{self, AppState, Metrics};
use crate::rest::{FhirService, ServiceConfig};
use crate::search::params::Paging;
use crate::store::{self, Store};

/// Server settings that do not come from the store.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Public base URL without `/fhir` (e.g. `http://localhost:8080`).
    pub base_url: String,
    pub max_body_bytes: usize,
    pub paging: Paging,
    pub max_bundle_entries: usize,
}

impl Settings {
    /// Defaults for a server reachable at `base_url`.
    pub fn new(base_url: &str) -> Self {
        Settings {
            base_url: base_url.trim_end_matches('/').to_string(),
            max_body_bytes: 32 * 1024 * 1024,
            paging: Paging { default_count: 20, max_count: 1000 },
            max_bundle_entries: 10_000,
        }
    }
}

/// A ready-to-serve Hearth.
pub struct Hearth {
    service: FhirService,
    router: Router,
}

impl Hearth {
    /// Opens (and migrates) the database at `database_url` and builds the server.
    pub async fn open(database_url: &str, settings: Settings) -> anyhow::Result<Hearth> {
        let store = store::open(database_url).await?;
        let hearth = Hearth::with_store(store, settings);
        hearth.service.load_search_parameters().await?;
        Ok(hearth)
    }

    /// Builds the server over an already open store.
    pub fn with_store(store: Arc<dyn Store>, settings: Settings) -> Hearth {
        let service = FhirService::new(
            store,
            ServiceConfig {
                base_url: format!("{}/fhir", settings.base_url),
                paging: settings.paging,
                max_bundle_entries: settings.max_bundle_entries,
            },
        );
        let state = AppState {
            service: service.clone(),
            max_body_bytes: settings.max_body_bytes,
            metrics: Arc::new(Metrics::default()),
        };
        Hearth { router: http::router(state), service }
    }

    /// The FHIR service (for in-process use such as `hearth import`).
    pub fn service(&self) -> &FhirService {
        &self.service
    }

    /// The HTTP router.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Runs the background work (jobs, registry watch) and serves on `listener` until the
    /// process is stopped.
    pub async fn serve(self, listener: TcpListener) -> std::io::Result<()> {
        tokio::spawn(self.service.clone().run_background());
        axum::serve(listener, self.router).with_graceful_shutdown(shutdown_signal()).await
    }
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
