//! The accounts API for EHR integrations: `POST /auth/accounts/{username}/disable` and
//! `/enable`, as `hearth user disable|enable` do, inside the server (so that on every database
//! the server's own token checks learn of it at once). Staff only: a token that may update the
//! account's FHIR resource type (`system/Patient.u` for a patient's account) for any patient.

use serde_json::json;

use super::records::user;
use super::scope::Permission;
use super::{sign_out_everywhere, Access, AuthServer, Reply};

impl AuthServer {
    /// Disables (`disabled`) or enables the account `username`; answers its state.
    pub async fn set_disabled(&self, access: &Access, username: &str, disabled: bool) -> Reply {
        let error = |status: u16, code: &str, description: String| {
            Reply::json(status, json!({"error": code, "error_description": description}))
        };
        crate::audit::RequestTrail::note_who(crate::audit::Who::of(access));
        let mut account = match user(self.store.as_ref(), username).await {
            Ok(Some(account)) => account,
            Ok(None) => return error(404, "not_found", "there is no such account".to_string()),
            Err(error) => return super::authorize::server_error(error),
        };
        let subject = account.fhir_user.clone();
        crate::audit::RequestTrail::note(|noted| noted.subject = Some(subject));
        let resource_type = account.fhir_user.split('/').next().unwrap_or_default().to_string();
        if !access.acts_as_staff(Permission::Update, &resource_type) {
            let description =
                format!("managing accounts needs a staff token that may update {resource_type} resources");
            return error(403, "insufficient_scope", description);
        }
        account.disabled = disabled;
        let stored = match disabled {
            true => sign_out_everywhere(self.store.as_ref(), account).await,
            false => super::records::save_user(self.store.as_ref(), &account).await,
        };
        match stored {
            Ok(()) => Reply::json(200, json!({"username": username, "disabled": disabled})),
            Err(error) => super::authorize::server_error(error),
        }
    }
}
