//! FHIR operations (`$name`), one module each, described by the OperationDefinitions under
//! `conformance/operations/` (see `docs/operations/README.md` on adding one).
//!
//! The layer in front of every operation does what is common to all of them: it finds the
//! operation and checks that it is defined at the level it was invoked on, refuses GET for an
//! operation that changes state, reads and checks the inputs against the definition, and
//! checks the access the operation states it needs. The operation itself then reads only
//! through the caller's guarded [`ReadView`](crate::rest::ReadView) in its
//! [`OperationContext`], so what it gathers is what the caller could read one by one.

mod appointments;
mod book;
mod bulk_publish;
mod cancel;
pub mod definition;
mod document;
mod documents;
pub mod everything;
mod export;
mod find;
mod generate_slots;
mod hold;
pub mod inputs;
mod invite;
pub(crate) mod reindex;
mod request_refill;
mod subscription_events;
mod subscription_status;
mod summary;
mod unread;
mod upload;
mod validate;
mod ws_binding_token;

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
    /// Nothing before it runs: what it reads goes through the caller's view (or the data
    /// published for discovery), what it writes through the caller's guarded transaction.
    Nothing,
}

/// What an operation does once the layer has found it, checked its inputs and the access it
/// needs (see [`OPERATIONS`]).
#[async_trait]
pub trait Operation: Send + Sync {
    /// Runs it; the inputs are checked against the definition already.
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError>;
}

/// One operation of the registry: the id of its OperationDefinition, the access it needs
/// before it runs, whether its answer is paged like a search (it then accepts the `_cursor` of
/// its own links), and what runs it.
struct Entry {
    definition: &'static str,
    needs: Needs,
    pages: bool,
    operation: &'static dyn Operation,
}

/// Every operation this server implements, with the access each needs.
static OPERATIONS: &[Entry] = &[
    Entry {
        definition: "Patient-everything",
        needs: Needs::ReadInstance,
        pages: true,
        operation: &everything::Everything,
    },
    // At type level $validate reads nothing; at instance level it reads the instance as the caller.
    Entry { definition: "Resource-validate", needs: Needs::ReadInstance, pages: false, operation: &validate::Validate },
    Entry { definition: "summary", needs: Needs::ReadInstance, pages: false, operation: &summary::Summary },
    Entry {
        definition: "Composition-document",
        needs: Needs::ReadInstance,
        pages: false,
        operation: &document::Document,
    },
    Entry { definition: "reindex", needs: Needs::Administrator, pages: false, operation: &reindex::Reindex },
    Entry { definition: "appointment-find", needs: Needs::Nothing, pages: false, operation: &find::Find },
    Entry { definition: "appointment-hold", needs: Needs::Nothing, pages: false, operation: &hold::Hold },
    Entry { definition: "appointment-book", needs: Needs::Nothing, pages: false, operation: &book::Book },
    Entry { definition: "appointment-cancel", needs: Needs::ReadInstance, pages: false, operation: &cancel::Cancel },
    Entry {
        definition: "schedule-generate-slots",
        needs: Needs::ReadInstance,
        pages: false,
        operation: &generate_slots::GenerateSlots,
    },
    Entry { definition: "bulk-publish", needs: Needs::Nothing, pages: false, operation: &bulk_publish::BulkPublish },
    // What an export reads goes through the caller's view, when its job runs as well.
    Entry { definition: "export", needs: Needs::Nothing, pages: false, operation: &export::Export },
    Entry { definition: "patient-export", needs: Needs::Nothing, pages: false, operation: &export::Export },
    Entry { definition: "group-export", needs: Needs::ReadInstance, pages: false, operation: &export::Export },
    Entry { definition: "documentreference-upload", needs: Needs::Nothing, pages: false, operation: &upload::Upload },
    Entry {
        definition: "medicationrequest-request-refill",
        needs: Needs::ReadInstance,
        pages: false,
        operation: &request_refill::RequestRefill,
    },
    Entry { definition: "communication-unread", needs: Needs::Nothing, pages: false, operation: &unread::Unread },
    Entry { definition: "person-invite", needs: Needs::ReadInstance, pages: false, operation: &invite::Invite },
    // At type level $status lists what the caller may search; at instance level it reads the instance.
    Entry {
        definition: "backport-subscription-status",
        needs: Needs::ReadInstance,
        pages: false,
        operation: &subscription_status::SubscriptionStatus,
    },
    Entry {
        definition: "backport-subscription-events",
        needs: Needs::ReadInstance,
        pages: false,
        operation: &subscription_events::SubscriptionEvents,
    },
    // At type level it binds what the caller may search; at instance level it reads the instance.
    Entry {
        definition: "backport-subscription-get-ws-binding-token",
        needs: Needs::ReadInstance,
        pages: false,
        operation: &ws_binding_token::WsBindingToken,
    },
];

/// An operation with its definition.
pub struct Registered {
    pub operation: &'static dyn Operation,
    pub definition: &'static Definition,
    pub needs: Needs,
    pub pages: bool,
}

/// The operations with their definitions.
pub fn registered() -> impl Iterator<Item = Registered> {
    OPERATIONS.iter().map(|entry| Registered {
        operation: entry.operation,
        definition: definition::by_id(entry.definition)
            .expect("every operation has its definition under conformance/operations"),
        needs: entry.needs,
        pages: entry.pages,
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
