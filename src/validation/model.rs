//! What the FHIRPath engine asks about FHIR types, answered from the R4 core definitions: the
//! JSON keys and types of an element (a choice element's one per type), and which types derive
//! from which.

use super::definitions::{choice_key, Definitions, ElementDefinition, StructureDefinition};

/// The R4 core types, for FHIRPath.
pub struct CoreModel;

impl fhirpath::Model for CoreModel {
    fn element(&self, parent: &str, name: &str) -> Option<Vec<(String, String)>> {
        let definition = Definitions::carried().core(parent.split('.').next()?)?;
        let path = format!("{parent}.{name}");
        if let Some(element) = definition.element(&path) {
            return Some(vec![(name.to_string(), type_of(definition, element))]);
        }
        let choice = definition.element(&format!("{path}[x]"))?;
        Some(choice.types.iter().map(|t| (choice_key(name, &t.code), t.code.clone())).collect())
    }

    fn is_a(&self, name: &str, of: &str) -> bool {
        let definitions = Definitions::carried();
        let mut current = definitions.core(name);
        while let Some(definition) = current {
            if definition.url.rsplit('/').next() == Some(of) {
                return true;
            }
            current = definition.base_definition.as_deref().and_then(|url| definitions.get(url));
        }
        false
    }
}

/// An element's type as the engine names it: a backbone element by its path (its children are
/// in the same definition), a primitive's FHIRPath system type by its FHIR name.
fn type_of(definition: &StructureDefinition, element: &ElementDefinition) -> String {
    if let Some(reference) = &element.content_reference {
        return reference.trim_start_matches('#').to_string();
    }
    match element.types.as_slice() {
        [only]
            if matches!(only.code.as_str(), "BackboneElement" | "Element")
                && definition.children(&element.path).next().is_some() =>
        {
            element.path.clone()
        }
        [only] => match only.code.strip_prefix("http://hl7.org/fhirpath/System.") {
            Some("String") => "string".to_string(),
            Some("Boolean") => "boolean".to_string(),
            Some("Integer") => "integer".to_string(),
            Some("Decimal") => "decimal".to_string(),
            Some(other) => other.to_string(),
            None => only.code.clone(),
        },
        _ => "Element".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use fhirpath::Model;

    use super::*;

    #[test]
    fn elements_choices_and_ancestry() {
        let model = CoreModel;
        assert_eq!(model.element("Patient", "birthDate"), Some(vec![("birthDate".into(), "date".into())]));
        assert_eq!(model.element("Patient", "contact"), Some(vec![("contact".into(), "Patient.contact".into())]));
        let value = model.element("Observation", "value").unwrap();
        assert!(value.contains(&("valueQuantity".into(), "Quantity".into())));
        assert!(model.is_a("Patient", "DomainResource") && model.is_a("Patient", "Resource"));
        assert!(model.is_a("code", "string") && !model.is_a("Patient", "Observation"));
    }
}
