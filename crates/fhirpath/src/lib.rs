//! FHIRPath (the normative release N1 that FHIR R4 uses) over `serde_json` values.
//!
//! ```
//! let patient = serde_json::json!({"resourceType": "Patient", "name": [{"given": ["Ana"]}]});
//! let expression = fhirpath::parse("Patient.name.given.first() = 'Ana'").unwrap();
//! let context = fhirpath::Context::new(&patient, &fhirpath::NoModel);
//! let result = expression.evaluate(fhirpath::resource(&patient), &context).unwrap();
//! assert_eq!(fhirpath::truth(&result), Some(true));
//! ```
//!
//! Types come from a [`Model`] (Hearth answers it from the StructureDefinitions), so that a
//! choice element is navigated by its name (`value` finds `valueQuantity`) and `is`, `as`,
//! `ofType` and date comparisons know what a node is. Decimals are exact. Not done: UCUM unit
//! conversion (quantities compare in the same unit), `resolve()` beyond contained resources,
//! terminology functions (`memberOf` is empty).

mod eval;
mod functions;
mod parser;
mod value;

pub use eval::{Context, EvalError, Model, NoModel};
pub use parser::{parse, Expression, ParseError};
pub use value::{Item, Node, Temporal};

/// The collection holding a resource: the usual input of an expression.
pub fn resource(resource: &serde_json::Value) -> Vec<Item<'_>> {
    vec![Item::Node(Node::new(resource, None))]
}

/// The boolean a result stands for: `None` when empty or not a single item, else the item's
/// boolean (any other single item is `true`).
pub fn truth(result: &[Item<'_>]) -> Option<bool> {
    eval::truth(result).ok().flatten()
}
