//! Serving a request with its audit (ADR 19): the request runs with its [`RequestTrail`], so its
//! write transactions record their AuditEvents as they commit; what that does not cover (a
//! read, a search, an operation or bundle that disclosed data, a refused or failed request) is
//! recorded by the node's [`Recorder`] before the response is returned. If that record cannot
//! be written, the client gets a 500 instead of the data.

use serde_json::Value;

use super::{Body, FhirRequest, FhirResponse, FhirService, Method, Route};
use crate::audit::{balp, patients, Activity, Occurrence, Outcome, Recorder, RequestTrail, Who};
use crate::model::FhirError;

/// The longest failure description an AuditEvent keeps.
const MAX_OUTCOME_DESC: usize = 500;

impl FhirService {
    /// Carries out one interaction for a client, audited; `request_id` is its `X-Request-Id`.
    pub async fn handle_audited(
        &self,
        request: FhirRequest,
        request_id: Option<String>,
    ) -> Result<FhirResponse, FhirError> {
        if !self.config.audit.record {
            return self.handle(request).await;
        }
        let activity = activity_of(&request);
        let access = request.access.clone();
        let target = target_of(&request.path);
        let query = is_search(&activity).then(|| query_text(&request.query));
        let trail = RequestTrail::new(request_id, activity.clone());
        let outcome = trail.clone().serving(self.handle(request)).await;
        let described_by_writes =
            matches!(activity, Activity::Rest("create" | "update" | "patch" | "delete") | Activity::Operation(_));
        if trail.written() && described_by_writes {
            return outcome;
        }
        let (result, patients) = match &outcome {
            Ok(response) => (Outcome::Success, self.disclosed_patients(&response.body)),
            Err(error) if error.status() >= 500 => (Outcome::ServerFailure, Vec::new()),
            Err(error) => {
                let mut why = error.to_string();
                why.truncate(why.floor_char_boundary(MAX_OUTCOME_DESC));
                (Outcome::ClientFailure(why), Vec::new())
            }
        };
        let occurrence = Occurrence {
            activity,
            outcome: result,
            who: Who::of(&access),
            request_id: trail.request_id.as_deref(),
            data: target.into_iter().collect(),
            query,
            patients,
        };
        let event = balp::audit_event(&occurrence, &self.config.base_url);
        self.recorder().record(event).await.map_err(|error| {
            tracing::error!(%error, "the AuditEvent of a request could not be recorded; the response is withheld");
            FhirError::internal()
        })?;
        outcome
    }

    /// The node's audit writer, for the events of requests served outside this service (the
    /// authorization server's).
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// The patients whose data a response body holds.
    fn disclosed_patients(&self, body: &Body) -> Vec<String> {
        let parsed;
        let value = match body {
            Body::Json(value) => value,
            Body::Raw(bytes) => match serde_json::from_slice::<Value>(bytes) {
                Ok(value) => {
                    parsed = value;
                    &parsed
                }
                Err(_) => return Vec::new(),
            },
            Body::None | Body::Document { .. } => return Vec::new(),
        };
        patients::disclosed(&self.registry(), &self.config.base_url, value)
    }
}

/// What kind of activity a request is, by its route and method (and a bundle by its type).
fn activity_of(request: &FhirRequest) -> Activity {
    let Ok(route) = Route::parse(&request.path) else {
        return Activity::Rest(match request.method {
            Method::Get | Method::Head => "read",
            Method::Post => "create",
            Method::Put => "update",
            Method::Patch => "patch",
            Method::Delete => "delete",
        });
    };
    match (&route, route.interaction(request.method)) {
        (Route::SystemOperation(name) | Route::TypeOperation(_, name) | Route::InstanceOperation(_, _, name), _) => {
            Activity::Operation(format!("${name}"))
        }
        (_, "batch-transaction") => {
            let transaction =
                request.body.as_ref().and_then(|b| b.get("type")).and_then(Value::as_str) == Some("transaction");
            Activity::Rest(if transaction { "transaction" } else { "batch" })
        }
        // R4's restful-interaction codes have no compartment search or job status.
        (_, "search-compartment") => Activity::Rest("search-type"),
        (_, "job-status") => Activity::Rest("read"),
        (_, interaction) => Activity::Rest(interaction),
    }
}

fn is_search(activity: &Activity) -> bool {
    matches!(activity, Activity::Rest("search-type" | "search-system"))
}

/// The resource a request names (`Patient/1`, `Patient/1/_history/2`), if it names one.
fn target_of(path: &str) -> Option<String> {
    match Route::parse(path).ok()? {
        Route::Instance(t, id) | Route::InstanceHistory(t, id) | Route::InstanceOperation(t, id, _) => {
            Some(format!("{t}/{id}"))
        }
        Route::Version(t, id, version) => Some(format!("{t}/{id}/_history/{version}")),
        _ => None,
    }
}

/// A search's parameters as a query string.
fn query_text(query: &[(String, String)]) -> String {
    let mut pairs = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in query {
        pairs.append_pair(name, value);
    }
    pairs.finish()
}
