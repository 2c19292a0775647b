//! Every SearchParameter of FHIR R4, loaded from `conformance/search-parameters.json` (generated
//! by `conformance/generate.py` from the official core package) with its expression parsed once.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use serde::Deserialize;

use super::fhirpath::Expression;

/// The kind of a search parameter (`SearchParameter.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamKind {
    /// The name as written in FHIR.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamKind::Number => "number",
            ParamKind::Date => "date",
            ParamKind::String => "string",
            ParamKind::Token => "token",
            ParamKind::Reference => "reference",
            ParamKind::Composite => "composite",
            ParamKind::Quantity => "quantity",
            ParamKind::Uri => "uri",
            ParamKind::Special => "special",
        }
    }

    /// Whether this server indexes and searches parameters of this kind yet.
    pub fn is_supported(self) -> bool {
        !matches!(self, ParamKind::Special)
    }
}

/// One search parameter as the server uses it.
#[derive(Debug)]
pub struct SearchParam {
    pub code: String,
    pub url: String,
    pub kind: ParamKind,
    pub expression: Option<Expression>,
    pub targets: Vec<String>,
    /// For composite parameters: each component's kind and expression (relative to the nodes
    /// the parameter's own expression selects).
    pub components: Vec<Component>,
}

/// One component of a composite parameter.
#[derive(Debug)]
pub struct Component {
    pub kind: ParamKind,
    pub expression: Expression,
}

#[derive(Deserialize)]
struct ComponentDefinition {
    definition: String,
    expression: String,
}

#[derive(Deserialize)]
struct Definition {
    url: String,
    code: String,
    base: Vec<String>,
    #[serde(rename = "type")]
    kind: ParamKind,
    expression: Option<String>,
    #[serde(default)]
    target: Vec<String>,
    #[serde(default)]
    component: Vec<ComponentDefinition>,
}

/// Search parameters by resource type and code.
#[derive(Debug, Default)]
pub struct Registry {
    by_type: HashMap<String, Vec<Arc<SearchParam>>>,
    /// Parameters whose base is `Resource` or `DomainResource`: they apply to every type.
    common: Vec<Arc<SearchParam>>,
}

static STANDARD: LazyLock<Registry> = LazyLock::new(|| {
    Registry::from_json(include_str!("../../conformance/search-parameters.json"))
        .expect("conformance/search-parameters.json is valid")
});

impl Registry {
    /// The R4 parameters shipped with the server.
    pub fn standard() -> &'static Registry {
        &STANDARD
    }

    /// Builds a registry from the generated JSON form. Expressions that do not parse are a
    /// build-time error of the shipped data, reported as `Err`.
    pub fn from_json(text: &str) -> Result<Registry, String> {
        let definitions: Vec<Definition> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let kinds: HashMap<&str, ParamKind> = definitions.iter().map(|d| (d.url.as_str(), d.kind)).collect();
        let mut registry = Registry::default();
        for definition in &definitions {
            let parse = |text: &str| Expression::parse(text).map_err(|e| format!("{}: {e}", definition.url));
            let expression = definition.expression.as_deref().map(parse).transpose()?;
            let components = definition
                .component
                .iter()
                .map(|c| {
                    let kind = kinds
                        .get(c.definition.as_str())
                        .copied()
                        .ok_or_else(|| format!("{}: unknown component", definition.url))?;
                    Ok(Component { kind, expression: parse(&c.expression)? })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let param = Arc::new(SearchParam {
                code: definition.code.clone(),
                url: definition.url.clone(),
                kind: definition.kind,
                expression,
                targets: definition.target.clone(),
                components,
            });
            for base in &definition.base {
                if base == "Resource" || base == "DomainResource" {
                    registry.common.push(param.clone());
                } else {
                    registry.by_type.entry(base.clone()).or_default().push(param.clone());
                }
            }
        }
        Ok(registry)
    }

    /// The parameter `code` of `resource_type`, if defined.
    pub fn lookup(&self, resource_type: &str, code: &str) -> Option<&SearchParam> {
        self.params_for(resource_type).find(|p| p.code == code)
    }

    /// Every parameter that applies to `resource_type`: its own, then the common ones.
    pub fn params_for<'a>(&'a self, resource_type: &str) -> impl Iterator<Item = &'a SearchParam> + 'a {
        let own = self.by_type.get(resource_type).map(Vec::as_slice).unwrap_or_default();
        own.iter().chain(self.common.iter()).map(Arc::as_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_the_portal_parameters() {
        let registry = Registry::standard();
        let identifier = registry.lookup("Patient", "identifier").unwrap();
        assert_eq!(identifier.kind, ParamKind::Token);
        assert_eq!(registry.lookup("Observation", "subject").unwrap().kind, ParamKind::Reference);
        assert_eq!(registry.lookup("Appointment", "_id").unwrap().kind, ParamKind::Token);
        assert!(registry.lookup("Slot", "schedule").unwrap().targets.contains(&"Schedule".to_string()));
        assert!(registry.lookup("Patient", "nonsense").is_none());
    }

    #[test]
    fn every_type_has_common_parameters() {
        let registry = Registry::standard();
        for resource_type in crate::model::validate::resource_types() {
            assert!(registry.lookup(resource_type, "_tag").is_some(), "{resource_type}");
        }
    }
}
