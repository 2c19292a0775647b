//! The audit of the authorization server (issue 21): each sign-in, sign-out, token, refresh,
//! revocation, consent, registration, password reset, launch and account change is recorded
//! as an AuditEvent before its answer leaves (a failure to record it is logged: the request
//! has had its effect by then). The routes declare which event each is; the authorization
//! server tells who acts and why it refused as it learns it ([`RequestTrail::note`]);
//! passwords, codes and tokens are never part of it, only a token's `jti`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::access_log::RequestId;
use super::AppState;
use crate::audit::{balp, Activity, Occurrence, Outcome, RequestTrail, SecurityEvent};

/// Middleware around each authorization route that is a security event (its `event`, as the
/// routes declare it).
pub(super) async fn record(
    State((state, event)): State<(Arc<AppState>, SecurityEvent)>,
    request: Request,
    next: Next,
) -> Response {
    if !state.service.config().audit.record {
        return next.run(request).await;
    }
    let request_id = request.extensions().get::<RequestId>().map(|id| id.0.clone());
    let trail = RequestTrail::new(request_id, Activity::Security(event));
    let response = trail.clone().serving(next.run(request)).await;
    let noted = trail.noted();
    let status = response.status();
    let outcome = match noted.refusal {
        _ if status.is_server_error() => Outcome::ServerFailure,
        Some(why) => Outcome::client_failure(why),
        None if status.is_client_error() => Outcome::client_failure(status.to_string()),
        None => Outcome::Success,
    };
    let occurrence = Occurrence {
        activity: Activity::Security(noted.event.unwrap_or(event)),
        outcome,
        who: state.service.named(noted.who).await,
        request_id: trail.request_id.as_deref(),
        data: noted.subject.into_iter().collect(),
        query: None,
        patients: Vec::new(),
    };
    let recorded = balp::audit_event(&occurrence);
    // By now the request has had its effect (a code used up, a session begun): answering
    // otherwise would have the client retry it, so a record that fails is logged instead.
    if let Err(error) = state.service.recorder().record(recorded).await {
        tracing::error!(%error, "the AuditEvent of an authorization request could not be recorded");
    }
    response
}
