//! `Patient/[id]/$invite` and `RelatedPerson/[id]/$invite` (Hearth's own): a one-time
//! registration link for the person the resource describes (see `auth::registration`),
//! e-mailed from the queue or answered for staff to hand over. Patient-bound tokens invite no
//! one.

use async_trait::async_trait;
use serde_json::json;
use time::format_description::well_known::Rfc3339;

use super::inputs::{bad_parameter, parameter_path, unprocessable};
use super::{Inputs, Level, Operation};
use crate::auth::scope::Permission;
use crate::model::{ErrorKind, FhirError, IssueCode};
use crate::rest::{Body, FhirResponse, OperationContext};

pub struct Invite;

#[async_trait]
impl Operation for Invite {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        _level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let (instance, resource) = context.required_instance()?;
        let resource_type = instance.resource_type.as_str();
        let staff = context.view.permits(Permission::Update, &instance)
            && !context.view.access().is_patient_bound(Permission::Update, resource_type);
        if !staff {
            return Err(FhirError::new(
                ErrorKind::Forbidden,
                IssueCode::Forbidden,
                format!(
                    "inviting is for staff: a token that may update {resource_type} resources, not bound to a patient"
                ),
            ));
        }
        let fhir_user = format!("{resource_type}/{}", instance.id);
        let email = inputs.text("email").map(str::to_string).or_else(|| crate::mail::telecom_email(&resource));
        let by_email = match inputs.text("delivery") {
            Some("email") => true,
            Some("print") => false,
            None => context.sends_email() && email.is_some(),
            Some(other) => return Err(bad_parameter("delivery", format!("is email or print, not '{other}'"))),
        };
        let parameters = match (by_email, email) {
            (true, Some(email)) => {
                if !context.sends_email() {
                    let message = "this server sends no e-mail (it runs without --smtp-url): use delivery=print";
                    return Err(unprocessable(message, &parameter_path("delivery")));
                }
                let email = crate::mail::address(&email).map_err(|why| bad_parameter("email", why))?.email.to_string();
                context.queue_invitation(&fhir_user, &email).await?;
                json!([{"name": "delivery", "valueCode": "email"}, {"name": "email", "valueString": email}])
            }
            (true, None) => {
                let message = format!("{fhir_user} has no e-mail address: give 'email', or use delivery=print");
                return Err(unprocessable(message, &parameter_path("email")));
            }
            (false, _) => {
                let (link, expires) = context.invite(&fhir_user).await?;
                let expires = expires.format(&Rfc3339).map_err(|_| FhirError::internal())?;
                json!([{"name": "delivery", "valueCode": "print"}, {"name": "link", "valueUrl": link},
                    {"name": "expires", "valueInstant": expires}])
            }
        };
        let mut response =
            FhirResponse::new(200, Body::Json(json!({"resourceType": "Parameters", "parameter": parameters})));
        // A printed link is a credential until it is used.
        response.headers.push(("cache-control", "no-store".to_string()));
        Ok(response)
    }
}
