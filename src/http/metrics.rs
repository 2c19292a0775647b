//! `/metrics` in the Prometheus text format: request counts by status class.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;

/// Counters of answered requests by status class (1xx … 5xx).
#[derive(Debug, Default)]
pub struct Metrics {
    by_class: [AtomicU64; 5],
}

/// Middleware: counts every response.
pub(super) async fn count(State(state): State<std::sync::Arc<AppState>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let class = (response.status().as_u16() / 100).clamp(1, 5) as usize - 1;
    state.metrics.by_class[class].fetch_add(1, Ordering::Relaxed);
    response
}

/// `GET /metrics`.
pub(super) async fn render(State(state): State<std::sync::Arc<AppState>>) -> String {
    let mut text = String::from("# HELP hearth_http_responses_total HTTP responses by status class.\n# TYPE hearth_http_responses_total counter\n");
    for (n, counter) in state.metrics.by_class.iter().enumerate() {
        text.push_str(&format!(
            "hearth_http_responses_total{{class=\"{}xx\"}} {}\n",
            n + 1,
            counter.load(Ordering::Relaxed)
        ));
    }
    text
}
