//! Invariants (`ElementDefinition.constraint`) evaluated as FHIRPath on the value of the
//! element that defines them.

use serde_json::Value;

use super::definitions::Constraint;
use super::model::CoreModel;
use super::Finding;

/// Where an element's value is: the value and its type, its FHIRPath location, the resource it
/// is in (`%resource`) and the outermost resource (`%rootResource`).
pub(super) struct At<'v> {
    pub value: &'v Value,
    pub type_name: &'v str,
    pub location: &'v str,
    pub resource: &'v Value,
    pub root: &'v Value,
}

/// Evaluates the constraints `skip` does not leave out. One the engine cannot evaluate is left
/// out rather than guessed; an error-severity one that is false is an error, others warnings.
pub(super) fn evaluate(
    constraints: &[Constraint],
    skip: impl Fn(&Constraint) -> bool,
    at: &At<'_>,
    findings: &mut Vec<Finding>,
) {
    for constraint in constraints.iter().filter(|c| !skip(c)) {
        let Some(expression) = &constraint.parsed else { continue };
        let mut context = fhirpath::Context::new(at.resource, &CoreModel);
        context.variables.insert("rootResource".into(), fhirpath::resource(at.root));
        let node = fhirpath::Item::Node(fhirpath::Node::new(at.value, Some(at.type_name.to_string())));
        let Ok(result) = expression.evaluate(vec![node], &context) else { continue };
        if fhirpath::truth(&result) == Some(false) {
            let message = constraint.human.clone().unwrap_or_else(|| constraint.expression.clone());
            findings.push(match constraint.severity.as_str() {
                "error" => Finding::error(&constraint.key, at.location, message),
                _ => Finding::warning(&constraint.key, at.location, message),
            });
        }
    }
}
