//! Profiles on every write: a resource that claims a profile in `meta.profile` conforms to it,
//! and the operator may require profiles per type (`--require-profile`). Checked where every
//! write passes ([`FhirService::store_resource`]), so REST, bundles, operations and jobs alike.
//! The profiles are the carried ones, the operator's packages' (`--profiles`) and the
//! StructureDefinitions stored on the server.

use std::sync::Arc;

use serde_json::Value;

use super::FhirService;
use crate::model::{FhirError, Issue, IssueCode};
use crate::validation::{against_profile, Finding, Severity};

/// What the operator asks of profiles.
#[derive(Debug, Clone, Default)]
pub struct ProfilePolicy {
    /// (type, profile url): every resource of the type must claim and conform to the profile.
    pub required: Vec<(String, String)>,
    /// Accept a claim of a profile the server does not know (unchecked) instead of refusing it.
    pub accept_unknown: bool,
    /// The StructureDefinitions, ValueSets and CodeSystems of the operator's packages.
    pub packages: Arc<[Value]>,
}

impl FhirService {
    /// 422 with every problem when `resource` does not conform to a profile it claims or must
    /// claim; a profile the server does not carry is refused unless the operator accepts them.
    pub(super) fn check_profiles(&self, resource_type: &str, resource: &Value) -> Result<(), FhirError> {
        let policy = &self.config.profiles;
        let definitions = self.definitions();
        let claimed: Vec<&str> = resource
            .pointer("/meta/profile")
            .and_then(Value::as_array)
            .map(|profiles| profiles.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let at = format!("{resource_type}.meta.profile");
        let mut issues = Vec::new();
        for (_, required) in policy.required.iter().filter(|(t, _)| t == resource_type) {
            if !claimed.iter().any(|c| c.split('|').next() == Some(required.as_str())) {
                let message = format!("a {resource_type} here must claim and conform to {required} (meta.profile)");
                issues.push(Issue::error(IssueCode::Required, message).at(at.clone()).rule("required-profile"));
            }
        }
        for profile in &claimed {
            match against_profile(&definitions, resource, profile) {
                None if policy.accept_unknown || crate::subscriptions::checked_in_code(resource_type, profile) => {}
                None => {
                    let message = match definitions.unusable(profile) {
                        Some(why) => format!("the profile {profile} cannot be checked: {why}"),
                        None => format!("the profile {profile} is not known to this server"),
                    };
                    issues.push(Issue::error(IssueCode::NotSupported, message).at(at.clone()).rule("unknown-profile"));
                }
                Some(findings) => issues
                    .extend(findings.into_iter().filter(|f| f.severity == Severity::Error).map(Finding::into_issue)),
            }
        }
        match issues.is_empty() {
            true => Ok(()),
            false => Err(FhirError::unprocessable(issues)),
        }
    }
}
