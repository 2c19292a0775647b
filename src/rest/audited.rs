//! Serving a request with its audit (ADR 19): the request runs with its [`RequestTrail`], so its
//! write transactions record their AuditEvents as they commit and its read view notes what it
//! lets through; what the writes do not cover (a read, a search, an operation or bundle that
//! disclosed data, a refused or failed request) is recorded by the node's [`Recorder`] before
//! the response is returned. If that record cannot be written, the client gets a 500 instead
//! of the data (unless the request committed writes: a 500 would have it sent again).

use serde_json::Value;

use super::{FhirRequest, FhirResponse, FhirService, Method, Route};
use crate::audit::{balp, patients, Activity, Occurrence, Outcome, Recorder, RequestTrail, Who};
use crate::model::FhirError;

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
        let activity = activity_of(request.method, &request.path, request.body.as_ref());
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
        let patients = match &outcome {
            Ok(_) => {
                let registry = self.registry();
                let disclosed = trail.take_disclosed();
                disclosed
                    .iter()
                    .flat_map(|resource| {
                        patients::of_stored(
                            &registry,
                            &self.config.base_url,
                            &resource.resource_type,
                            &resource.id,
                            &resource.body,
                        )
                    })
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        let occurrence = Occurrence {
            activity,
            outcome: outcome_of(outcome.as_ref().err()),
            who: self.named(Who::of(&access)).await,
            request_id: trail.request_id.as_deref(),
            data: target.into_iter().collect(),
            query,
            patients,
        };
        match self.recorder.record(balp::audit_event(&occurrence)).await {
            Ok(()) => outcome,
            Err(error) if trail.written() => {
                tracing::error!(%error, "the AuditEvent of a bundle whose writes committed could not be recorded");
                outcome
            }
            Err(error) => {
                tracing::error!(%error, "the AuditEvent of a request could not be recorded; the response is withheld");
                Err(FhirError::internal())
            }
        }
    }

    /// Records a request refused before it reached the service (a missing or invalid token, a
    /// body too large or malformed, an unknown method): the caller is not known.
    pub async fn audit_refusal(&self, method: &str, path: &str, request_id: Option<String>, error: &FhirError) {
        if !self.config.audit.record {
            return;
        }
        let method = Method::parse(method).unwrap_or(Method::Get);
        let occurrence = Occurrence {
            activity: activity_of(method, path, None),
            outcome: outcome_of(Some(error)),
            who: Who::default(),
            request_id: request_id.as_deref(),
            data: target_of(path).into_iter().collect(),
            query: None,
            patients: Vec::new(),
        };
        if let Err(error) = self.recorder.record(balp::audit_event(&occurrence)).await {
            tracing::error!(%error, "the AuditEvent of a refused request could not be recorded");
        }
    }

    /// `who` with the user's name, as their resource (`fhirUser`) gives it now, when it has one.
    pub async fn named(&self, mut who: Who) -> Who {
        let Some((resource_type, id)) = who.user.as_deref().and_then(|user| user.split_once('/')) else { return who };
        if let Ok(Some(person)) = self.store.read(resource_type, id).await {
            who.name = crate::model::resource::person_name(&person.body);
        }
        who
    }

    /// The node's audit writer, for the events of requests served outside this service (the
    /// authorization server's).
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }
}

/// How a request ended, for its AuditEvent: a 4xx with its message, a 5xx without (the
/// server's log has what failed).
fn outcome_of(error: Option<&FhirError>) -> Outcome {
    match error {
        None => Outcome::Success,
        Some(error) if error.status() >= 500 => Outcome::ServerFailure,
        Some(error) => Outcome::client_failure(error.to_string()),
    }
}

/// What kind of activity a request is, by its route and method (and a bundle by its type).
fn activity_of(method: Method, path: &str, body: Option<&Value>) -> Activity {
    let Ok(route) = Route::parse(path) else {
        return Activity::Rest(match method {
            Method::Get | Method::Head => "read",
            Method::Post => "create",
            Method::Put => "update",
            Method::Patch => "patch",
            Method::Delete => "delete",
        });
    };
    match (&route, route.interaction(method)) {
        (Route::SystemOperation(name) | Route::TypeOperation(_, name) | Route::InstanceOperation(_, _, name), _) => {
            Activity::Operation(format!("${name}"))
        }
        (_, "batch-transaction") => {
            let transaction = body.and_then(|b| b.get("type")).and_then(Value::as_str) == Some("transaction");
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
