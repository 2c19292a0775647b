//! Assembling a server: store, FHIR service and router. Used by `main`, tests and benchmarks.

use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::auth::{AuthServer, AuthSettings, PasswordCost};
use crate::http::{self, AppState, Metrics};
use crate::model::upload::UploadRules;
use crate::portal::scheduling::SchedulingSettings;
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
    /// Whether requests need SMART bearer tokens (`--auth smart`).
    pub smart: bool,
    /// How expensive new password hashes are (tests use cheap ones).
    pub password_cost: PasswordCost,
    pub scheduling: SchedulingSettings,
    /// What raw uploads to Binary may be (`--max-upload-bytes`, `--upload-types`).
    pub uploads: UploadRules,
    pub messaging: crate::portal::messaging::MessagingSettings,
    /// Files served at `/static/` (`--static-dir`): a portal web app on the API's origin.
    pub static_dir: Option<std::path::PathBuf>,
    /// Profiles required per type (`--require-profile`), unknown ones accepted or not.
    pub profiles: crate::rest::profiles::ProfilePolicy,
    /// How long a registration link of `$invite` is valid.
    pub invite_ttl: time::Duration,
    /// Where e-mail goes (nowhere by default).
    pub mailer: crate::mail::Mailer,
    /// When a parent's proxy access ends (`--parent-access-until-age`).
    pub proxy: crate::auth::proxy::ProxyPolicy,
    /// Where subscriptions may deliver (`--allow-http-rest-hooks`).
    pub subscriptions: crate::rest::SubscriptionSettings,
    /// How the audit log is kept (`--audit-retention-days`).
    pub audit: crate::audit::AuditSettings,
    /// How bulk exports run (`--export-dir`, `--export-ttl`, `--export-max-running`).
    pub export: crate::export::ExportSettings,
}

impl Settings {
    /// Defaults for a server reachable at `base_url`.
    pub fn new(base_url: &str) -> Self {
        Settings {
            base_url: base_url.trim_end_matches('/').to_string(),
            max_body_bytes: 32 * 1024 * 1024,
            paging: Paging { default_count: 20, max_count: 1000 },
            max_bundle_entries: 10_000,
            smart: false,
            password_cost: PasswordCost::Standard,
            scheduling: SchedulingSettings::default(),
            uploads: UploadRules::default(),
            messaging: Default::default(),
            static_dir: None,
            profiles: Default::default(),
            invite_ttl: time::Duration::days(7),
            mailer: crate::mail::Mailer::off(),
            proxy: crate::auth::proxy::ProxyPolicy { parent_access_until_age: Some(18) },
            subscriptions: Default::default(),
            audit: Default::default(),
            export: Default::default(),
        }
    }
}

/// A ready-to-serve Hearth.
pub struct Hearth {
    service: FhirService,
    router: Router,
    auth: Option<Arc<AuthServer>>,
}

impl Hearth {
    /// Opens (and migrates) the database at `database_url` and builds the server.
    pub async fn open(database_url: &str, mut settings: Settings) -> anyhow::Result<Hearth> {
        let store = store::open(database_url).await?;
        settings.audit.spool_dir.get_or_insert_with(|| crate::audit::default_spool_dir(database_url));
        settings.export.dir.get_or_insert_with(|| crate::export::default_dir(database_url));
        let auth = if settings.smart {
            let auth_settings = AuthSettings {
                base_url: settings.base_url.clone(),
                password_cost: settings.password_cost,
                sends_email: settings.mailer.sends(),
                proxy: settings.proxy,
            };
            Some(AuthServer::open(store.clone(), auth_settings).await?)
        } else {
            None
        };
        let hearth = Hearth::with_store(store, auth, settings);
        hearth.service.load_search_parameters().await?;
        hearth.service.load_profiles().await?;
        hearth.service.install_topics().await?;
        Ok(hearth)
    }

    /// Builds the server over an already open store (and authorization server, if any).
    pub fn with_store(store: Arc<dyn Store>, auth: Option<Arc<AuthServer>>, settings: Settings) -> Hearth {
        let service = FhirService::new(
            store,
            ServiceConfig {
                base_url: format!("{}/fhir", settings.base_url),
                paging: settings.paging,
                max_bundle_entries: settings.max_bundle_entries,
                security: auth.as_ref().map(|auth| auth.capability_security()),
                scheduling: settings.scheduling,
                uploads: settings.uploads.clone(),
                messaging: settings.messaging.clone(),
                profiles: settings.profiles.clone(),
                invite_ttl: settings.invite_ttl,
                mailer: settings.mailer.clone(),
                subscriptions: settings.subscriptions.clone(),
                audit: settings.audit.clone(),
                export: settings.export.clone(),
            },
        );
        let state = AppState {
            service: service.clone(),
            max_body_bytes: settings.max_body_bytes,
            metrics: Arc::new(Metrics::default()),
            auth: auth.clone(),
            static_dir: settings.static_dir.clone(),
        };
        Hearth { router: http::router(state), service, auth }
    }

    /// The authorization server, when requests need tokens.
    pub fn auth(&self) -> Option<&Arc<AuthServer>> {
        self.auth.as_ref()
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
        if let Some(auth) = self.auth.clone() {
            tokio::spawn(auth.run_background());
        }
        axum::serve(listener, self.router).with_graceful_shutdown(shutdown_signal()).await?;
        self.service.recorder().close().await;
        Ok(())
    }
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
