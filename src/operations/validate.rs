//! `$validate` (FHIR R4 `Resource-validate`): `[type]/$validate` and `[type]/[id]/$validate`
//! check a resource exactly as a create or update would, and store nothing. The answer is
//! always an OperationOutcome with 200 — its issues say what is wrong and where — unless the
//! request itself is malformed (400).
//!
//! - `mode=create` (or none): the checks of a create.
//! - `mode=update`: those of an update; the resource needs an `id`, the instance's at instance
//!   level, and the caller must be allowed to update it.
//! - `mode=delete` (instance level, no resource): whether the caller may delete the instance.
//! - `profile`: the resource is checked against that profile too (any the server knows: carried
//!   in `profiles/`, in the operator's packages, stored), errors and warnings; any other is
//!   reported as unknown. The warnings of the profiles the resource claims are reported too
//!   (their errors are those of a write).
//! - Without a resource at instance level, the stored resource is validated.

use async_trait::async_trait;
use serde_json::Value;

use super::inputs::parameter_path;
use super::{Inputs, Level, Operation};
use crate::auth::scope::Permission;
use crate::model::outcome::operation_outcome;
use crate::model::{FhirError, Issue, IssueCode};
use crate::rest::{Body, FhirResponse, OperationContext};

pub struct Validate;

/// `mode` (FHIR R4 ResourceValidationMode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Update,
    Delete,
    Profile,
}

impl Mode {
    fn parse(text: Option<&str>) -> Result<Mode, FhirError> {
        match text {
            None | Some("create") => Ok(Mode::Create),
            Some("update") => Ok(Mode::Update),
            Some("delete") => Ok(Mode::Delete),
            Some("profile") => Ok(Mode::Profile),
            Some(other) => {
                Err(FhirError::bad_request(format!("mode must be create, update, delete or profile, not '{other}'"))
                    .with_expression(&parameter_path("mode")))
            }
        }
    }
}

#[async_trait]
impl Operation for Validate {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let mode = Mode::parse(inputs.text("mode"))?;
        let resource_type = level.resource_type().unwrap_or("Resource");
        let mut issues = Vec::new();
        if mode == Mode::Delete {
            let Some(instance) = context.instance().cloned() else {
                return Err(FhirError::bad_request(
                    "mode=delete validates the deletion of an instance: use [type]/[id]/$validate",
                ));
            };
            if !context.view.permits(Permission::Delete, &instance) {
                issues.push(refused("delete", resource_type, &instance.id));
            }
            return Ok(outcome(issues));
        }
        let resource = match (inputs.resource("resource"), context.instance()) {
            (Some(resource), _) => resource.clone(),
            (None, Some(stored)) => serde_json::from_slice(&stored.body).map_err(|_| FhirError::internal())?,
            (None, None) => {
                return Err(FhirError::bad_request("parameter 'resource' is required: the resource to validate")
                    .with_expression(&parameter_path("resource")))
            }
        };
        if let Err(error) = context.check_content(resource_type, &resource) {
            issues.extend(error.issues);
        }
        if mode == Mode::Update {
            issues.extend(update_issues(context, level, &resource));
        }
        let asked = inputs.text("profile");
        let claimed = resource.pointer("/meta/profile").and_then(Value::as_array).into_iter().flatten();
        for profile in claimed.filter_map(Value::as_str).filter(|p| Some(*p) != asked) {
            let found = context.profile_issues(&resource, profile).unwrap_or_default();
            issues.extend(found.into_iter().filter(|issue| issue.severity == "warning"));
        }
        if let Some(profile) = asked {
            match context.profile_issues(&resource, profile) {
                Some(found) => issues.extend(found),
                None => issues.push(
                    Issue::error(
                        IssueCode::NotSupported,
                        format!("the profile '{profile}' is not known to this server"),
                    )
                    .at(parameter_path("profile")),
                ),
            }
        } else if mode == Mode::Profile {
            return Err(FhirError::bad_request("mode=profile needs the parameter 'profile'"));
        }
        Ok(outcome(issues))
    }
}

/// What makes an update of `resource` invalid beyond its content: no id, another id than the
/// instance's, or a resource the caller may not update.
fn update_issues(context: &OperationContext<'_>, level: &Level, resource: &Value) -> Vec<Issue> {
    let resource_type = level.resource_type().unwrap_or("Resource");
    let Some(id) = resource.get("id").and_then(Value::as_str) else {
        return vec![
            Issue::error(IssueCode::Required, "an update needs the resource's id").at(format!("{resource_type}.id"))
        ];
    };
    let mut issues = Vec::new();
    if let Level::Instance(_, instance_id) = level {
        if id != instance_id {
            issues.push(
                Issue::error(
                    IssueCode::Invalid,
                    format!("the resource's id '{id}' is not the instance's id '{instance_id}'"),
                )
                .at(format!("{resource_type}.id")),
            );
        }
    }
    if let Some(instance) = context.instance() {
        if !context.view.permits(Permission::Update, instance) {
            issues.push(refused("update", resource_type, &instance.id));
        }
    }
    issues
}

fn refused(verb: &str, resource_type: &str, id: &str) -> Issue {
    Issue::error(IssueCode::Forbidden, format!("the access token does not allow to {verb} {resource_type}/{id}"))
}

/// The OperationOutcome of a validation: the issues found, or one saying there were none.
fn outcome(issues: Vec<Issue>) -> FhirResponse {
    let issues = if issues.is_empty() { vec![Issue::information("the resource is valid")] } else { issues };
    FhirResponse::new(200, Body::Json(operation_outcome(&issues)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_the_r4_codes() {
        assert_eq!(Mode::parse(None).unwrap(), Mode::Create);
        assert_eq!(Mode::parse(Some("delete")).unwrap(), Mode::Delete);
        assert_eq!(Mode::parse(Some("remove")).unwrap_err().status(), 400);
    }
}
