//! Resources as data: validation, OperationOutcome issues, metadata stamping and patches.
//! Nothing here does I/O.

pub mod bundle;
pub mod json;
pub mod outcome;
pub mod patch;
pub mod resource;
pub mod subset;
pub mod upload;
pub mod validate;

pub use outcome::{ErrorKind, FhirError, Issue, IssueCode};
