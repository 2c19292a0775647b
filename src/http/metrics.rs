//! `/metrics` in the Prometheus text format, through `prometheus-client`: responses by status
//! class; FHIR requests' latency by interaction, resource type and status class; and, read
//! from the database at each scrape, its connections, the job queue and the notifications
//! waiting. Labels are bounded: interactions are a fixed list, resource types the R4 ones
//! (a path naming no R4 type is counted without one), job kinds the server's own.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::access_log::RequestRoute;
use super::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    interaction: &'static str,
    resource_type: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

type Seconds = Gauge<f64, AtomicU64>;

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    responses: Family<ClassLabels, Counter>,
    requests: Family<RequestLabels, Histogram, fn() -> Histogram>,
    connections: Family<PoolLabels, Gauge>,
    jobs_queued: Family<KindLabels, Gauge>,
    jobs_oldest: Family<KindLabels, Seconds>,
    notifications_pending: Gauge,
    audit_seal_lag: Seconds,
    audit_spool_bytes: Gauge,
}

/// Latency buckets (seconds): 1 ms to 10 s.
fn latency_histogram() -> Histogram {
    Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let responses = Family::<ClassLabels, Counter>::default();
        registry.register("hearth_http_responses", "HTTP responses by status class", responses.clone());
        let requests = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "hearth_fhir_request_duration_seconds",
            "FHIR requests by interaction, resource type and status class, and how long they took",
            requests.clone(),
        );
        let connections = Family::<PoolLabels, Gauge>::default();
        registry.register("hearth_db_connections", "Database connections by pool, in use or idle", connections.clone());
        let jobs_queued = Family::<KindLabels, Gauge>::default();
        registry.register("hearth_jobs_queued", "Background jobs waiting, by kind", jobs_queued.clone());
        let jobs_oldest = Family::<KindLabels, Seconds>::default();
        registry.register(
            "hearth_jobs_oldest_age_seconds",
            "How long the oldest queued job of each kind has waited",
            jobs_oldest.clone(),
        );
        let notifications_pending = Gauge::default();
        registry.register(
            "hearth_notifications_pending",
            "Subscription events recorded and not yet delivered",
            notifications_pending.clone(),
        );
        let audit_seal_lag = Seconds::default();
        registry.register(
            "hearth_audit_seal_lag_seconds",
            "How long the oldest AuditEvent not yet sealed into the hash chain has waited",
            audit_seal_lag.clone(),
        );
        let audit_spool_bytes = Gauge::default();
        registry.register(
            "hearth_audit_spool_bytes",
            "AuditEvents this node spooled and has not yet committed, in bytes (ADR 21)",
            audit_spool_bytes.clone(),
        );
        Metrics {
            registry,
            responses,
            requests,
            connections,
            jobs_queued,
            jobs_oldest,
            notifications_pending,
            audit_seal_lag,
            audit_spool_bytes,
        }
    }
}

/// The status class of a status code.
fn class(status: StatusCode) -> &'static str {
    ["1xx", "2xx", "3xx", "4xx", "5xx"][(status.as_u16() / 100).clamp(1, 5) as usize - 1]
}

/// Middleware: counts every response, and times FHIR requests.
pub(super) async fn count(State(state): State<std::sync::Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Worked out by the access log, around this.
    let interaction = request.extensions().get::<RequestRoute>().and_then(|route| route.fhir.clone());
    let response = next.run(request).await;
    let class = class(response.status());
    let metrics = &state.metrics;
    metrics.responses.get_or_create(&ClassLabels { class }).inc();
    if let Some((interaction, resource_type)) = interaction {
        let labels = RequestLabels { interaction, resource_type, class };
        metrics.requests.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    }
    response
}

/// `GET /metrics`.
pub(super) async fn render(State(state): State<std::sync::Arc<AppState>>) -> Response {
    let metrics = &state.metrics;
    match state.service.store().gauges().await {
        Ok(gauges) => {
            for (pool, in_use, idle) in gauges.pools {
                metrics.connections.get_or_create(&PoolLabels { pool, state: "in_use" }).set(in_use.into());
                metrics.connections.get_or_create(&PoolLabels { pool, state: "idle" }).set(idle.into());
            }
            // Kinds with nothing queued any more read 0, not their last figure.
            metrics.jobs_queued.clear();
            metrics.jobs_oldest.clear();
            for (kind, queued, oldest) in gauges.jobs {
                metrics.jobs_queued.get_or_create(&KindLabels { kind: kind.clone() }).set(queued);
                metrics.jobs_oldest.get_or_create(&KindLabels { kind }).set(oldest);
            }
            metrics.notifications_pending.set(gauges.notifications_pending);
            metrics.audit_seal_lag.set(gauges.audit_seal_lag);
        }
        Err(error) => tracing::warn!(%error, "cannot read the database's gauges"),
    }
    metrics.audit_spool_bytes.set(state.service.recorder().backlog().try_into().unwrap_or(i64::MAX));
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &metrics.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    fn fhir_interaction(method: &Method, path: &str) -> Option<(&'static str, String)> {
        RequestRoute::of(method, path).fhir
    }

    #[test]
    fn requests_are_labelled_by_interaction_and_type() {
        let of = |method: Method, path: &str| fhir_interaction(&method, path);
        assert_eq!(of(Method::GET, "/fhir/Patient/1"), Some(("read", "Patient".to_string())));
        assert_eq!(of(Method::PUT, "/fhir/Patient/1"), Some(("update", "Patient".to_string())));
        assert_eq!(of(Method::GET, "/fhir/Observation"), Some(("search-type", "Observation".to_string())));
        assert_eq!(of(Method::POST, "/fhir"), Some(("batch-transaction", String::new())));
        assert_eq!(of(Method::GET, "/fhir/Patient/1/$everything"), Some(("operation", "Patient".to_string())));
        assert_eq!(of(Method::GET, "/fhir/Unknown/1"), Some(("unknown", String::new())), "no label from the path");
        assert_eq!(of(Method::GET, "/metrics"), None);
    }
}
