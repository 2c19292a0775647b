//! The R4 CompartmentDefinitions (Patient, Encounter, RelatedPerson, Practitioner, Device):
//! which reference parameters put a resource into a compartment.

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::store::Condition;

/// compartment type → resource type → parameters (`{def}` = the compartment resource itself).
static COMPARTMENTS: LazyLock<HashMap<String, HashMap<String, Vec<String>>>> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../../conformance/compartments.json"))
        .expect("conformance/compartments.json is valid")
});

/// Whether `name` is a compartment type.
pub fn is_compartment(name: &str) -> bool {
    COMPARTMENTS.contains_key(name)
}

/// The reference parameters that put `resource_type` into a `compartment` (`None` when none do).
pub fn params<'a>(compartment: &str, resource_type: &str) -> Option<&'a [String]> {
    COMPARTMENTS.get(compartment)?.get(resource_type).map(Vec::as_slice)
}

/// The condition "`resource_type` resources in the compartment `compartment/id`", or `None`
/// when that type can never be in such a compartment.
pub fn membership(compartment: &str, id: &str, resource_type: &str) -> Option<Vec<Condition>> {
    let params = COMPARTMENTS.get(compartment)?.get(resource_type)?;
    let conditions: Vec<Condition> = params
        .iter()
        .map(|param| match param.as_str() {
            "{def}" => Condition::Id(id.to_string()),
            _ => Condition::Reference {
                param: param.clone(),
                target_type: Some(compartment.to_string()),
                target_id: id.to_string(),
            },
        })
        .collect();
    // The compartment's own resource belongs to it, whatever its parameters say.
    let own =
        (resource_type == compartment && !params.iter().any(|p| p == "{def}")).then(|| Condition::Id(id.to_string()));
    Some(conditions.into_iter().chain(own).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_compartment() {
        assert!(is_compartment("Patient") && !is_compartment("Observation"));
        let conditions = membership("Patient", "p1", "Observation").unwrap();
        assert_eq!(conditions.len(), 2);
        assert!(conditions.contains(&Condition::Reference {
            param: "subject".into(),
            target_type: Some("Patient".into()),
            target_id: "p1".into()
        }));
        assert!(membership("Patient", "p1", "Patient").unwrap().contains(&Condition::Id("p1".into())));
        assert_eq!(membership("Patient", "p1", "Organization"), None);
    }
}
