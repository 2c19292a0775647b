//! `Patient/[id]/$invite` and `RelatedPerson/[id]/$invite` (Hearth's own): a one-time
//! registration link for the person the resource describes (see `auth::registration`), for
//! staff to hand over. Patient-bound tokens invite no one.

use async_trait::async_trait;
use serde_json::json;
use time::format_description::well_known::Rfc3339;

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
        _inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let (instance, _) = context.required_instance()?;
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
        let (link, expires) = context.invite(&format!("{resource_type}/{}", instance.id)).await?;
        let expires = expires.format(&Rfc3339).map_err(|_| FhirError::internal())?;
        let parameters = json!({"resourceType": "Parameters", "parameter": [
            {"name": "link", "valueUrl": link},
            {"name": "expires", "valueInstant": expires}]});
        let mut response = FhirResponse::new(200, Body::Json(parameters));
        // The link is a credential until it is used.
        response.headers.push(("cache-control", "no-store".to_string()));
        Ok(response)
    }
}
