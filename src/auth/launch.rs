//! EHR launch contexts: `POST /auth/launch` binds a launch id to a patient (and an encounter,
//! and optionally the one app it is for); the `launch` parameter of an authorization request
//! then brings that context into the token.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::keys::random_token;
use super::{in_seconds, Access, AuthServer, Reply};

/// Record kind of launch contexts.
pub(super) const LAUNCH: &str = "launch";

/// How long a launch id can be used.
const LAUNCH_SECONDS: i64 = 3600;

/// What a launch id stands for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LaunchContext {
    pub patient: String,
    pub encounter: Option<String>,
    /// The app the EHR launches; another client cannot use the launch id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

fn error(status: u16, message: &str) -> Reply {
    Reply::json(status, json!({"error": "invalid_request", "error_description": message}))
}

impl AuthServer {
    /// `POST /auth/launch` with `{"patient": "…", "encounter": "…", "client_id": "…"}` (the
    /// last two optional); the caller needs `system/launch` (an EHR) or full system access.
    pub async fn create_launch(&self, access: &Access, body: &[u8]) -> Reply {
        crate::audit::RequestTrail::note_who(crate::audit::Who::of(access));
        let allowed = match access {
            Access::Open => true,
            Access::Token(grant) => grant.may_launch || access.is_administrator(),
        };
        if !allowed {
            return Reply::json(
                403,
                json!({"error": "insufficient_scope", "error_description": "creating a launch needs the scope system/launch"}),
            );
        }
        let Ok(body) = serde_json::from_slice::<Value>(body) else {
            return error(400, "the body must be JSON: {\"patient\": \"<id>\", \"encounter\": \"<id>\"}");
        };
        let id_of = |name: &str| -> Result<Option<String>, Reply> {
            match body.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(id)) if crate::model::resource::is_valid_id(id) => Ok(Some(id.clone())),
                Some(_) => Err(error(400, &format!("'{name}' must be a resource id"))),
            }
        };
        let (patient, encounter) = match (id_of("patient"), id_of("encounter")) {
            (Ok(Some(patient)), Ok(encounter)) => (patient, encounter),
            (Ok(None), _) => return error(400, "'patient' is required"),
            (Err(reply), _) | (_, Err(reply)) => return reply,
        };
        let client_id = match body.get("client_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(client_id)) => match super::records::client(self.store.as_ref(), client_id).await {
                Ok(Some(_)) => Some(client_id.clone()),
                Ok(None) => return error(404, &format!("no client '{client_id}' is registered")),
                Err(failure) => {
                    tracing::error!(error = %failure, "cannot read the launch's client");
                    return Reply::json(500, json!({"error": "server_error"}));
                }
            },
            Some(_) => return error(400, "'client_id' must be a string"),
        };
        for (resource_type, id) in [("Patient", Some(&patient)), ("Encounter", encounter.as_ref())] {
            let Some(id) = id else { continue };
            match self.store.read(resource_type, id).await {
                Ok(Some(found)) if !found.deleted => {}
                Ok(_) => return error(404, &format!("{resource_type}/{id} is not known")),
                Err(failure) => {
                    tracing::error!(error = %failure, "cannot read the launch context");
                    return Reply::json(500, json!({"error": "server_error"}));
                }
            }
        }
        let launch = random_token(16);
        let data = serde_json::to_string(&LaunchContext { patient, encounter, client_id }).expect("launch serialises");
        if let Err(failure) = self.store.auth_upsert(LAUNCH, &launch, &data, in_seconds(LAUNCH_SECONDS)).await {
            tracing::error!(error = %failure, "cannot store a launch");
            return Reply::json(500, json!({"error": "server_error"}));
        }
        Reply::json(201, json!({ "launch": launch }))
    }
}
