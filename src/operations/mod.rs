//! FHIR operations (`$name`), one module each, described by the OperationDefinitions under
//! `conformance/operations/` (see `docs/operations/README.md` on adding one).
//!
//! The layer in front of every operation does what is common to all of them: it finds the
//! operation and checks that it is defined at the level it was invoked on, refuses GET for an
//! operation that changes state, reads and checks the inputs against the definition, and
//! checks the access the operation states it needs. The operation itself then reads only
//! through the caller's guarded [`ReadView`](crate::rest::ReadView) in its
//! [`OperationContext`], so what it gathers is what the caller could read one by one.

pub mod definition;
mod document;
mod documents;
pub mod everything;
pub mod inputs;
pub(crate) mod reindex;
mod summary;
mod validate;

use async_trait::async_trait;

pub use definition::Definition;
pub use inputs::Inputs;

use crate::model::FhirError;
use crate::rest::{FhirResponse, OperationContext};

/// Where an operation was invoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// `/fhir/$op`.
    System,
    /// `/fhir/[type]/$op`.
    Type(String),
    /// `/fhir/[type]/[id]/$op`.
    Instance(String, String),
}

impl Level {
    /// The resource type invoked on, if any.
    pub fn resource_type(&self) -> Option<&str> {
        match self {
            Level::System => None,
            Level::Type(t) | Level::Instance(t, _) => Some(t),
        }
    }
}

/// The access an operation needs before it runs; the layer checks it with the same policy as
/// the REST interactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// At instance level, read access to the instance (404 when the caller does not reach it,
    /// exactly as a read; 410 when it is deleted). What else it reads goes through the view.
    ReadInstance,
    /// Full system access (`system/*.cruds`).
    Administrator,
}

/// One operation.
#[async_trait]
pub trait Operation: Send + Sync {
    /// The `id` of its OperationDefinition.
    fn definition_id(&self) -> &'static str;

    /// The access it needs before it runs.
    fn needs(&self) -> Needs;

    /// Whether its answer is paged like a search (it then accepts the `_cursor` of its links).
    fn pages(&self) -> bool {
        false
    }

    /// Runs it; the inputs are checked against the definition already.
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError>;
}

/// Every operation this server implements.
static OPERATIONS: &[&dyn Operation] =
    &[&everything::Everything, &validate::Validate, &summary::Summary, &document::Document, &reindex::Reindex];

/// An operation with its definition.
pub struct Registered {
    pub operation: &'static dyn Operation,
    pub definition: &'static Definition,
}

/// The operations with their definitions.
pub fn registered() -> impl Iterator<Item = Registered> {
    OPERATIONS.iter().map(|operation| Registered {
        operation: *operation,
        definition: definition::by_id(operation.definition_id())
            .expect("every operation has its definition under conformance/operations"),
    })
}

/// The operation named `code` that is defined at `level`; 404 when there is none.
pub fn find(code: &str, level: &Level) -> Result<Registered, FhirError> {
    let mut named = registered().filter(|r| r.definition.code == code).peekable();
    if named.peek().is_none() {
        return Err(FhirError::not_found(format!("this server has no operation ${code}")));
    }
    let defined_here = |definition: &Definition| match level {
        Level::System => definition.system,
        Level::Type(t) => definition.type_level && definition.applies_to(t),
        Level::Instance(t, _) => definition.instance && definition.applies_to(t),
    };
    named.find(|r| defined_here(r.definition)).ok_or_else(|| {
        let place = match level {
            Level::System => "the system level".to_string(),
            Level::Type(t) => format!("the type level of {t}"),
            Level::Instance(t, _) => format!("an instance of {t}"),
        };
        FhirError::not_found(format!("${code} is not defined on {place}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_operations_at_the_levels_their_definitions_allow() {
        assert!(find("everything", &Level::Instance("Patient".into(), "1".into())).is_ok());
        assert!(find("everything", &Level::Type("Patient".into())).is_ok());
        assert_eq!(find("everything", &Level::System).err().unwrap().status(), 404);
        assert_eq!(find("everything", &Level::Type("Observation".into())).err().unwrap().status(), 404);
        assert!(find("validate", &Level::Type("Observation".into())).is_ok());
        assert!(find("reindex", &Level::System).is_ok());
        assert!(find("reindex", &Level::Instance("Patient".into(), "1".into())).is_err());
        assert!(find("nonsense", &Level::System).err().unwrap().issues[0].diagnostics.contains("no operation"));
        assert_eq!(registered().count(), OPERATIONS.len());
    }
}
