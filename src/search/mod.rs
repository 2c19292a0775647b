//! Search: the parameter registry generated from the R4 specification, the indexer that turns a
//! resource into index rows, and the parser that turns URL parameters into a store query.
//! Nothing here does I/O.

pub mod compartment;
pub mod criteria;
pub mod date;
pub mod fhirpath;
pub mod index;
pub mod matcher;
pub mod params;
pub mod registry;

pub use registry::{Component, ParamKind, Registry, SearchParam};
