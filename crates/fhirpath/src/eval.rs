//! Evaluation: collections of [`Item`]s flowing through the syntax tree, with FHIRPath's rules
//! for empty collections, singletons and three-valued logic.

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde_json::Value;

use crate::parser::{Ast, Expression, Literal};
use crate::value::{canonical_unit, Item, Node, Temporal};

/// What the engine asks about FHIR types, so that navigation knows choice elements (`value`
/// holding `valueQuantity`) and the types of nodes (for `is`, `as`, `ofType` and comparisons of
/// dates). Without a model ([`NoModel`]) types come from the JSON alone.
pub trait Model {
    /// The element `name` of an object of type `parent` (a type name or a backbone element
    /// path): the JSON keys it may be stored under, each with its FHIR type (one key, or one per
    /// type of a choice). `None` when the model does not know it.
    fn element(&self, parent: &str, name: &str) -> Option<Vec<(String, String)>>;

    /// Whether type `name` is `of` or derives from it (`Patient` is a `DomainResource`).
    fn is_a(&self, name: &str, of: &str) -> bool {
        name == of
    }
}

/// No type knowledge: choice elements are recognised by their JSON keys.
pub struct NoModel;

impl Model for NoModel {
    fn element(&self, _: &str, _: &str) -> Option<Vec<(String, String)>> {
        None
    }
}

/// Why an evaluation failed (a type or arity error FHIRPath makes an error, not empty).
#[derive(Debug, Clone, PartialEq)]
pub struct EvalError(pub String);

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) type Result<T> = std::result::Result<T, EvalError>;
pub(crate) type Collection<'a> = Vec<Item<'a>>;

/// What an evaluation runs against.
pub struct Context<'a> {
    /// `%resource` (and `%context` unless set).
    pub resource: &'a Value,
    pub model: &'a dyn Model,
    /// Further environment variables (`%`name).
    pub variables: HashMap<String, Vec<Item<'a>>>,
}

impl<'a> Context<'a> {
    pub fn new(resource: &'a Value, model: &'a dyn Model) -> Self {
        Context { resource, model, variables: HashMap::new() }
    }
}

/// The iteration variables of `where`, `select`, `all`, …
#[derive(Clone)]
pub(crate) struct Scope<'a> {
    pub this: Option<Item<'a>>,
    pub index: Option<usize>,
    pub total: Option<Collection<'a>>,
}

impl Expression {
    /// Evaluates the expression with `focus` as its input (a resource node usually).
    pub fn evaluate<'a>(&self, focus: Vec<Item<'a>>, context: &Context<'a>) -> Result<Vec<Item<'a>>> {
        let scope = Scope { this: None, index: None, total: None };
        Evaluator { context }.eval(&self.root, &focus, &scope)
    }
}

pub(crate) struct Evaluator<'c, 'a> {
    pub context: &'c Context<'a>,
}

impl<'c, 'a> Evaluator<'c, 'a> {
    pub(crate) fn eval(&self, ast: &Ast, focus: &[Item<'a>], scope: &Scope<'a>) -> Result<Collection<'a>> {
        Ok(match ast {
            Ast::Empty => Vec::new(),
            Ast::Literal(literal) => vec![literal_item(literal)?],
            Ast::Special(name) => match name.as_str() {
                "this" => scope.this.clone().map(|t| vec![t]).unwrap_or_else(|| focus.to_vec()),
                "index" => scope.index.map(|i| vec![Item::Int(i as i64)]).unwrap_or_default(),
                "total" => scope.total.clone().unwrap_or_default(),
                other => return Err(EvalError(format!("unknown ${other}"))),
            },
            Ast::Env(name) => self.environment(name)?,
            Ast::Ident(name) => self.identifier(name, focus),
            Ast::Member(receiver, name) => {
                let input = self.eval(receiver, focus, scope)?;
                self.members(&input, name)
            }
            Ast::Indexer(receiver, index) => {
                let input = self.eval(receiver, focus, scope)?;
                let index = self.eval(index, focus, scope)?;
                match singleton_number(&index)? {
                    Some(i) => input.into_iter().nth(i.try_into().unwrap_or(usize::MAX)).into_iter().collect(),
                    None => Vec::new(),
                }
            }
            Ast::Negate(inner) => {
                let value = self.eval(inner, focus, scope)?;
                match value.as_slice() {
                    [] => Vec::new(),
                    [item] => vec![match item.to_system() {
                        Item::Int(i) => Item::Int(-i),
                        Item::Dec(d) => Item::Dec(-d),
                        Item::Quantity(d, u) => Item::Quantity(-d, u),
                        _ => return Err(EvalError("unary minus needs a number".into())),
                    }],
                    _ => return Err(EvalError("unary minus needs a single item".into())),
                }
            }
            Ast::Type(is, receiver, type_name) => {
                let input = self.eval(receiver, focus, scope)?;
                self.type_test(*is, &input, type_name, if *is { "'is'" } else { "'as'" })?
            }
            Ast::Binary(op, left, right) => self.binary(op, left, right, focus, scope)?,
            Ast::Call(receiver, name, arguments) => {
                let input = match receiver {
                    Some(receiver) => self.eval(receiver, focus, scope)?,
                    None => scope.this.clone().map(|t| vec![t]).unwrap_or_else(|| focus.to_vec()),
                };
                self.call(name, &input, arguments, focus, scope)?
            }
        })
    }

    fn environment(&self, name: &str) -> Result<Collection<'a>> {
        let resource = || vec![Item::Node(Node::new(self.context.resource, None))];
        Ok(match name {
            "resource" | "rootResource" | "context" => {
                self.context.variables.get(name).cloned().unwrap_or_else(resource)
            }
            "ucum" => vec![Item::Str("http://unitsofmeasure.org".into())],
            "sct" => vec![Item::Str("http://snomed.info/sct".into())],
            "loinc" => vec![Item::Str("http://loinc.org".into())],
            other => match self.context.variables.get(other) {
                Some(value) => value.clone(),
                None => match (other.strip_prefix("vs-"), other.strip_prefix("ext-")) {
                    (Some(id), _) => vec![Item::Str(format!("http://hl7.org/fhir/ValueSet/{id}"))],
                    (_, Some(id)) => vec![Item::Str(format!("http://hl7.org/fhir/StructureDefinition/{id}"))],
                    _ => return Err(EvalError(format!("unknown variable %{other}"))),
                },
            },
        })
    }

    /// A leading name: a type filter when it names the type of a resource in the focus
    /// (`Patient.name` on a Patient), else a member of each item.
    fn identifier(&self, name: &str, focus: &[Item<'a>]) -> Collection<'a> {
        if name.starts_with(|c: char| c.is_ascii_uppercase()) {
            let typed: Collection<'a> = focus
                .iter()
                .filter(|item| matches!(item, Item::Node(node) if self.node_is(node, name)))
                .cloned()
                .collect();
            if !typed.is_empty() {
                return typed;
            }
        }
        self.members(focus, name)
    }

    fn node_is(&self, node: &Node<'_>, type_name: &str) -> bool {
        node.type_of().is_some_and(|t| t == type_name || self.context.model.is_a(t, type_name))
    }

    /// The children `name` of every node in `input`.
    pub(crate) fn members(&self, input: &[Item<'a>], name: &str) -> Collection<'a> {
        let mut out = Vec::new();
        let underscored = format!("_{name}");
        for item in input {
            let Item::Node(node) = item else { continue };
            if let Some(companion) = node.companion.filter(|_| name == "extension" || name == "id") {
                push_values(&mut out, companion.get(name), None, None);
                continue;
            }
            let Some(Value::Object(object)) = node.value else { continue };
            let known = node.type_of().and_then(|t| self.context.model.element(t, name));
            match known {
                Some(keys) => {
                    for (key, type_name) in keys {
                        let companion = object.get(&format!("_{key}"));
                        push_values(&mut out, object.get(&key), companion, Some(type_name));
                    }
                }
                None => {
                    let (value, companion) = (object.get(name), object.get(&underscored));
                    if value.is_some() || companion.is_some() {
                        push_values(&mut out, value, companion, None);
                        continue;
                    }
                    // A choice element by its JSON key: `value` → `valueQuantity`.
                    for (key, value) in object {
                        let Some(suffix) = key.strip_prefix(name) else { continue };
                        if suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                            let type_name = choice_type(suffix);
                            push_values(&mut out, Some(value), object.get(&format!("_{key}")), Some(type_name));
                        }
                    }
                }
            }
        }
        out
    }

    /// `is` (a boolean) or `as` (the item, when it is of the type) of a single item, as an
    /// operator or a function (`label` names which in the error).
    pub(crate) fn type_test(
        &self,
        is: bool,
        input: &[Item<'a>],
        type_name: &str,
        label: &str,
    ) -> Result<Collection<'a>> {
        match input {
            [] => Ok(Vec::new()),
            [item] if is => Ok(vec![Item::Bool(self.is_type(item, type_name))]),
            [item] => Ok(self.is_type(item, type_name).then(|| item.clone()).into_iter().collect()),
            _ => Err(EvalError(format!("{label} needs a single item"))),
        }
    }

    /// Whether `item` is of type `name` (`Quantity`, `FHIR.Patient`, `System.String`).
    pub(crate) fn is_type(&self, item: &Item<'a>, name: &str) -> bool {
        let (namespace, bare) = match name.split_once('.') {
            Some((ns @ ("System" | "FHIR"), bare)) => (Some(ns), bare),
            _ => (None, name),
        };
        match item {
            Item::Node(node) if namespace != Some("System") => match node.type_of() {
                Some(t) => t == bare || self.context.model.is_a(t, bare) || (bare == "string" && is_string_type(t)),
                None => json_type_matches(node.value, bare),
            },
            // A node is a FHIR type, never a System one (`Patient.active` is not System.Boolean).
            Item::Node(_) => false,
            other => namespace != Some("FHIR") && system_type_matches(other, bare),
        }
    }

    fn binary(
        &self,
        op: &str,
        left: &Ast,
        right: &Ast,
        focus: &[Item<'a>],
        scope: &Scope<'a>,
    ) -> Result<Collection<'a>> {
        let l = self.eval(left, focus, scope)?;
        // `and`, `or` and `implies` decide without the right side when the left decides.
        match op {
            "and" if truth(&l)? == Some(false) => return Ok(vec![Item::Bool(false)]),
            "or" if truth(&l)? == Some(true) => return Ok(vec![Item::Bool(true)]),
            "implies" if truth(&l)? == Some(false) => return Ok(vec![Item::Bool(true)]),
            _ => {}
        }
        let r = self.eval(right, focus, scope)?;
        crate::functions::operator(op, l, r)
    }
}

fn push_values<'a>(
    out: &mut Collection<'a>,
    value: Option<&'a Value>,
    companion: Option<&'a Value>,
    type_name: Option<String>,
) {
    match (value, companion) {
        (Some(Value::Array(items)), companion) => {
            let companions = companion.and_then(Value::as_array);
            for (i, item) in items.iter().enumerate() {
                let companion = companions.and_then(|c| c.get(i)).filter(|c| !c.is_null());
                if item.is_null() && companion.is_none() {
                    continue;
                }
                let value = (!item.is_null()).then_some(item);
                out.push(Item::Node(Node { value, companion, type_name: type_name.clone() }));
            }
        }
        (None, Some(Value::Array(companions))) => {
            for companion in companions.iter().filter(|c| !c.is_null()) {
                out.push(Item::Node(Node { value: None, companion: Some(companion), type_name: type_name.clone() }));
            }
        }
        (Some(Value::Null), None) | (None, None) => {}
        (value, companion) => out.push(Item::Node(Node { value, companion, type_name })),
    }
}

/// The FHIR type a choice element's key suffix names (`Quantity`, `String` → `string`).
fn choice_type(suffix: &str) -> String {
    const PRIMITIVES: &[&str] = &[
        "Base64Binary",
        "Boolean",
        "Canonical",
        "Code",
        "Date",
        "DateTime",
        "Decimal",
        "Id",
        "Instant",
        "Integer",
        "Markdown",
        "Oid",
        "PositiveInt",
        "String",
        "Time",
        "UnsignedInt",
        "Uri",
        "Url",
        "Uuid",
    ];
    match PRIMITIVES.contains(&suffix) {
        true => {
            let mut chars = suffix.chars();
            chars.next().map(|c| c.to_ascii_lowercase().to_string() + chars.as_str()).unwrap_or_default()
        }
        false => suffix.to_string(),
    }
}

fn is_string_type(type_name: &str) -> bool {
    matches!(type_name, "string" | "code" | "id" | "markdown" | "uri" | "url" | "canonical" | "oid" | "uuid")
}

fn json_type_matches(value: Option<&Value>, name: &str) -> bool {
    match value {
        Some(Value::String(_)) => is_string_type(name),
        Some(Value::Bool(_)) => name == "boolean",
        Some(Value::Number(n)) => match name {
            "integer" | "unsignedInt" | "positiveInt" => n.as_i64().is_some(),
            "decimal" => true,
            _ => false,
        },
        _ => false,
    }
}

fn system_type_matches(item: &Item<'_>, name: &str) -> bool {
    matches!(
        (item, name),
        (Item::Bool(_), "Boolean" | "boolean")
            | (Item::Str(_), "String" | "string")
            | (Item::Int(_), "Integer" | "integer")
            | (Item::Dec(_), "Decimal" | "decimal")
            | (Item::Date(_), "Date" | "date")
            | (Item::DateTime(_), "DateTime" | "dateTime")
            | (Item::Time(_), "Time" | "time")
            | (Item::Quantity(..), "Quantity")
    )
}

fn literal_item(literal: &Literal) -> Result<Item<'static>> {
    Ok(match literal {
        Literal::Bool(b) => Item::Bool(*b),
        Literal::Str(s) => Item::Str(s.clone()),
        Literal::Int(i) => Item::Int(*i),
        Literal::Dec(d) => Item::Dec(*d),
        Literal::Quantity(d, u) => Item::Quantity(*d, u.clone()),
        Literal::Temporal(text) => {
            let bad = || EvalError(format!("bad date or time @{text}"));
            match text.strip_prefix('T') {
                Some(time) => Item::Time(Temporal::parse(time, true).ok_or_else(bad)?),
                None if text.contains('T') => Item::DateTime(Temporal::parse(text, false).ok_or_else(bad)?),
                None => Item::Date(Temporal::parse(text, false).ok_or_else(bad)?),
            }
        }
    })
}

/// The boolean of a collection (FHIRPath "singleton evaluation"): empty is `None`, a single
/// Boolean its value, any other single item `true`; several items are an error.
pub(crate) fn truth(collection: &[Item<'_>]) -> Result<Option<bool>> {
    match collection {
        [] => Ok(None),
        [item] => Ok(Some(match item.to_system() {
            Item::Bool(b) => b,
            // Integers convert to Boolean implicitly (0 and 1).
            Item::Int(0) => false,
            _ => true,
        })),
        _ => Err(EvalError(format!("a boolean was expected, found {} items", collection.len()))),
    }
}

fn singleton_number(collection: &[Item<'_>]) -> Result<Option<i64>> {
    match collection {
        [] => Ok(None),
        [item] => match item.to_system() {
            Item::Int(i) => Ok(Some(i)),
            _ => Err(EvalError("an integer was expected".into())),
        },
        _ => Err(EvalError("a single integer was expected".into())),
    }
}

/// Whether two quantities' units are the same once calendar words are read as UCUM codes.
pub(crate) fn same_unit(a: &str, b: &str) -> bool {
    canonical_unit(a) == canonical_unit(b)
}

/// The decimal of a number item.
pub(crate) fn number_of(item: &Item<'_>) -> Option<Decimal> {
    item.to_system().number()
}
