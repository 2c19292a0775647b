//! Every SearchParameter of FHIR R4, loaded from `conformance/search-parameters.json` (generated
//! by `conformance/generate.py` from the official core package) with its expression parsed once,
//! plus the custom `SearchParameter` resources stored on the server (status `active`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use serde::Deserialize;
use serde_json::Value;

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
#[derive(Debug, Clone)]
pub struct SearchParam {
    pub code: String,
    pub url: String,
    pub kind: ParamKind,
    pub expression: Option<Expression>,
    pub targets: Vec<String>,
    /// The id of the `SearchParameter` resource that defines a custom parameter.
    pub origin: Option<String>,
    /// For composite parameters: each component's kind and expression (relative to the nodes
    /// the parameter's own expression selects).
    pub components: Vec<Component>,
}

/// One component of a composite parameter.
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Default, Clone)]
pub struct Registry {
    by_type: HashMap<String, Vec<Arc<SearchParam>>>,
    /// Parameters whose base is `Resource` or `DomainResource`: they apply to every type.
    common: Vec<Arc<SearchParam>>,
    /// Resource type → code → the parameters whose index rows hold this one's values, for the
    /// parameters that get no rows of their own (see [`Registry::stored_under`]).
    stored: HashMap<String, HashMap<String, Vec<String>>>,
}

/// The R4 parameters, and the server's own: R4 has none that says which Invoice a payment
/// settles (`PaymentReconciliation.detail.request`), and a patient's payments are found by it.
static STANDARD: LazyLock<Registry> = LazyLock::new(|| {
    Registry::from_json(&[
        include_str!("../../conformance/search-parameters.json"),
        include_str!("../../conformance/hearth-search-parameters.json"),
    ])
    .expect("conformance/search-parameters.json and hearth-search-parameters.json are valid")
});

impl Registry {
    /// The R4 parameters shipped with the server.
    pub fn standard() -> &'static Registry {
        &STANDARD
    }

    /// Builds a registry from lists of definitions in the generated JSON form. Expressions that
    /// do not parse are a build-time error of the shipped data, reported as `Err`.
    pub fn from_json(texts: &[&str]) -> Result<Registry, String> {
        let mut definitions: Vec<Definition> = Vec::new();
        for text in texts {
            definitions.extend(serde_json::from_str::<Vec<Definition>>(text).map_err(|e| e.to_string())?);
        }
        let kinds: HashMap<&str, ParamKind> = definitions.iter().map(|d| (d.url.as_str(), d.kind)).collect();
        let mut registry = Registry::default();
        for definition in &definitions {
            let param = definition.build(|url| kinds.get(url).copied(), None).map_err(|e| e.to_string())?;
            registry.insert(Arc::new(param), &definition.base);
        }
        registry.link_stored();
        Ok(registry)
    }

    /// This registry with the active custom `SearchParameter` resources among `resources` added.
    /// Definitions that cannot be used are left out and reported, one message each.
    pub fn with_custom<'a>(
        &self,
        resources: impl IntoIterator<Item = &'a Value>,
    ) -> (Registry, Vec<InvalidDefinition>) {
        let mut registry = self.clone();
        let problems = resources.into_iter().filter_map(|resource| registry.add_custom(resource).err()).collect();
        registry.link_stored();
        (registry, problems)
    }

    /// Adds a custom `SearchParameter` resource if its status is `active` (others are ignored).
    /// A copy of a parameter already known by its URL adds nothing. `Err` says, for the author
    /// of the resource, why the server cannot honour it. The parameter gets rows of its own
    /// until [`Registry::with_custom`], which calls this, finds it stored under others.
    pub fn add_custom(&mut self, resource: &Value) -> Result<(), InvalidDefinition> {
        if resource.get("status").and_then(Value::as_str) != Some("active") {
            return Ok(());
        }
        let definition: Definition = serde_json::from_value(resource.clone())
            .map_err(|e| InvalidDefinition::new("SearchParameter", e.to_string()))?;
        let origin = resource.get("id").and_then(Value::as_str);
        if definition.expression.is_none() {
            return Err(InvalidDefinition::new("expression", "an active parameter needs an expression to index"));
        }
        if !definition.kind.is_supported() {
            let message = format!("'{}' parameters are not supported", definition.kind.as_str());
            return Err(InvalidDefinition::new("type", message));
        }
        if !is_search_code(&definition.code) {
            let message = format!("'{}' is not a valid parameter name", definition.code);
            return Err(InvalidDefinition::new("code", message));
        }
        for base in &definition.base {
            let known =
                base == "Resource" || base == "DomainResource" || crate::model::validate::is_resource_type(base);
            if !known {
                return Err(InvalidDefinition::new("base", format!("'{base}' is not a resource type")));
            }
            let types: Vec<&str> = if base == "Resource" || base == "DomainResource" {
                crate::model::validate::resource_types()
            } else {
                vec![base.as_str()]
            };
            for resource_type in types {
                if let Some(existing) = self.lookup(resource_type, &definition.code) {
                    if existing.url == definition.url && existing.origin.is_none() {
                        return Ok(());
                    }
                    if existing.url != definition.url && existing.origin.as_deref() != origin {
                        let message =
                            format!("'{}' is already defined for {resource_type} by {}", definition.code, existing.url);
                        return Err(InvalidDefinition::new("code", message));
                    }
                }
            }
        }
        let param = definition.build(|url| self.kind_of(url), origin)?;
        self.remove_origin(origin);
        self.insert(Arc::new(param), &definition.base);
        Ok(())
    }

    /// The parameters whose index rows hold the values of `code` on `resource_type`, when it
    /// has none of its own: its expression is the union of theirs (Observation's `combo-code`
    /// is `code | component-code`), so its rows would repeat theirs. A search on it searches
    /// their rows instead (`Some`); `None` for a parameter with rows of its own.
    pub fn stored_under(&self, resource_type: &str, code: &str) -> Option<&[String]> {
        self.stored.get(resource_type)?.get(code).map(Vec::as_slice)
    }

    /// The parameters of `resource_type` that [`Registry::stored_under`] answers for, by code.
    pub fn stored_in(&self, resource_type: &str) -> Option<&HashMap<String, Vec<String>>> {
        self.stored.get(resource_type)
    }

    /// Finds, per type, the parameters that [`Registry::stored_under`] answers for. The parts
    /// are standard parameters (a custom one may be deleted, and its rows with it) of the same
    /// kind, with rows of their own, and, for composites, the same components. References are
    /// left alone, since includes, chains and compartments name them.
    fn link_stored(&mut self) {
        let mut stored: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
        for (resource_type, params) in &self.by_type {
            let mut by_width: Vec<(&SearchParam, &Expression)> = params
                .iter()
                .filter(|p| !matches!(p.kind, ParamKind::Reference | ParamKind::Special))
                .filter_map(|p| Some((p.as_ref(), p.expression.as_ref()?)))
                .collect();
            by_width.sort_by_key(|(_, expression)| expression.union_width());
            let mut own_rows: Vec<(&SearchParam, &Expression)> = Vec::new();
            for (param, expression) in by_width {
                let parts: Vec<&(&SearchParam, &Expression)> = own_rows
                    .iter()
                    .filter(|(part, part_expression)| {
                        part.origin.is_none()
                            && part.kind == param.kind
                            && part.components == param.components
                            && part_expression.union_width() < expression.union_width()
                            && expression.includes(part_expression)
                    })
                    .collect();
                let expressions: Vec<&Expression> = parts.iter().map(|(_, e)| *e).collect();
                // Each part is included (filtered above): covered, it is their union.
                if !parts.is_empty() && expression.is_covered_by(&expressions) {
                    let mut codes: Vec<String> = parts.iter().map(|(part, _)| part.code.clone()).collect();
                    codes.sort();
                    stored.entry(resource_type.clone()).or_default().insert(param.code.clone(), codes);
                } else {
                    own_rows.push((param, expression));
                }
            }
        }
        self.stored = stored;
    }

    /// Adds `param` for each of its `bases`; a type gets its own copy when the expression
    /// shared by several types is shorter for it (see [`Expression::for_type`]).
    fn insert(&mut self, param: Arc<SearchParam>, bases: &[String]) {
        for base in bases {
            if base == "Resource" || base == "DomainResource" {
                self.common.push(param.clone());
            } else {
                let own = param.expression.as_ref().and_then(|expression| expression.for_type(base));
                let param = match own {
                    Some(expression) => Arc::new(SearchParam { expression: Some(expression), ..(*param).clone() }),
                    None => param.clone(),
                };
                self.by_type.entry(base.clone()).or_default().push(param);
            }
        }
    }

    /// Removes the parameter an earlier version of the same resource defined.
    fn remove_origin(&mut self, origin: Option<&str>) {
        let Some(origin) = origin else { return };
        let keep = |p: &Arc<SearchParam>| p.origin.as_deref() != Some(origin);
        self.common.retain(keep);
        self.by_type.values_mut().for_each(|params| params.retain(keep));
    }

    /// The kind of the parameter with this canonical URL (for composite components).
    fn kind_of(&self, url: &str) -> Option<ParamKind> {
        self.by_type.values().flatten().chain(&self.common).find(|p| p.url == url).map(|p| p.kind)
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

impl Definition {
    /// The parameter, with its expressions parsed and its components' kinds looked up by URL.
    fn build(
        &self,
        kind_of: impl Fn(&str) -> Option<ParamKind>,
        origin: Option<&str>,
    ) -> Result<SearchParam, InvalidDefinition> {
        let parse = |element: &'static str, text: &str| {
            Expression::parse(text)
                .map_err(|e| InvalidDefinition::new(element, format!("{}: cannot evaluate '{text}': {e}", self.url)))
        };
        let expression = self.expression.as_deref().map(|text| parse("expression", text)).transpose()?;
        let components = self
            .component
            .iter()
            .map(|c| {
                let kind = kind_of(&c.definition).ok_or_else(|| {
                    let message = format!("{}: unknown component definition {}", self.url, c.definition);
                    InvalidDefinition::new("component.definition", message)
                })?;
                Ok(Component { kind, expression: parse("component.expression", &c.expression)? })
            })
            .collect::<Result<Vec<_>, InvalidDefinition>>()?;
        Ok(SearchParam {
            code: self.code.clone(),
            url: self.url.clone(),
            kind: self.kind,
            expression,
            targets: self.target.clone(),
            origin: origin.map(str::to_string),
            components,
        })
    }
}

/// Why a `SearchParameter` resource cannot be put in force.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidDefinition {
    /// The element at fault, relative to `SearchParameter` (`expression`, `code`…).
    pub element: &'static str,
    pub message: String,
}

impl InvalidDefinition {
    fn new(element: &'static str, message: impl Into<String>) -> Self {
        InvalidDefinition { element, message: message.into() }
    }

    /// The FHIRPath location of the element at fault.
    pub fn location(&self) -> String {
        if self.element == "SearchParameter" {
            self.element.to_string()
        } else {
            format!("SearchParameter.{}", self.element)
        }
    }
}

impl std::fmt::Display for InvalidDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location(), self.message)
    }
}

/// Whether `code` can name a search parameter in a query string.
fn is_search_code(code: &str) -> bool {
    !code.is_empty()
        && !code.starts_with('_')
        && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
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
    fn unions_of_other_parameters_are_stored_under_them() {
        let registry = Registry::standard();
        let stored = |code| registry.stored_under("Observation", code);
        assert_eq!(stored("combo-code"), Some(&["code".to_string(), "component-code".to_string()][..]));
        assert_eq!(
            stored("combo-value-quantity"),
            Some(&["component-value-quantity".to_string(), "value-quantity".to_string()][..])
        );
        assert_eq!(
            stored("combo-code-value-quantity"),
            Some(&["code-value-quantity".to_string(), "component-code-value-quantity".to_string()][..])
        );
        assert_eq!(stored("code"), None);
        // A reference parameter keeps its rows, whatever it repeats (`patient` is `subject`
        // narrowed to patients).
        assert_eq!(stored("patient"), None);
    }

    #[test]
    fn custom_parameters_are_stored_under_standard_ones_only() {
        let custom = |id: &str, code: &str, expression: &str| {
            serde_json::json!({"resourceType": "SearchParameter", "id": id, "status": "active",
                "url": format!("http://example.org/{code}"), "code": code, "base": ["Patient"],
                "type": "token", "expression": expression})
        };
        let (registry, problems) = Registry::standard().with_custom(&[
            custom("a", "gender-or-active", "Patient.gender | Patient.active"),
            custom("b", "gender-copy", "Patient.gender"),
            custom("c", "copy-or-language", "Patient.gender | Patient.communication.language"),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        let stored = |code| registry.stored_under("Patient", code).map(<[String]>::to_vec);
        assert_eq!(stored("gender-or-active"), Some(vec!["active".to_string(), "gender".to_string()]));
        // As wide as `gender`: not a union of narrower parameters.
        assert_eq!(stored("gender-copy"), None);
        assert_eq!(stored("copy-or-language"), Some(vec!["gender".to_string(), "language".to_string()]));
    }

    #[test]
    fn every_type_has_common_parameters() {
        let registry = Registry::standard();
        for resource_type in crate::model::validate::resource_types() {
            assert!(registry.lookup(resource_type, "_tag").is_some(), "{resource_type}");
        }
    }
}
