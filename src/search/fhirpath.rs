//! A small FHIRPath engine for FHIR R4 `SearchParameter.expression`s.
//!
//! The indexer evaluates every search parameter against every stored resource, so this
//! module implements only what the R4 search parameter definitions use, and does it
//! cheaply: an expression is parsed once into an AST, and evaluation walks the resource's
//! `serde_json::Value`, returning references into it (no cloning of JSON).
//!
//! Supported subset:
//! - paths such as `Patient.name.given` (arrays are flattened); a leading capitalised name
//!   must match the resource's `resourceType` (`Resource` / `DomainResource` match any
//!   resource), a leading lower-case name (`id`, `name | alias`) is a member of the focus;
//! - choice elements: `Observation.value` finds `valueQuantity`, `valueString`, … and
//!   records the FHIR type (`Quantity`, `string`) in [`Node::type_name`];
//! - `|` (union), parentheses, `[n]` with an integer literal, `$this`, `%resource`;
//! - `is T`, `as T`, `.is(T)`, `.as(T)`, `.ofType(T)` (`T` may be qualified: `FHIR.T`);
//! - `=`, `!=` (with string, number or boolean literals), `and`, `or`;
//! - functions `where`, `exists`, `empty`, `not`, `first`, `last`, `hasValue`,
//!   `extension(url)`, `hasExtension(url)` and `resolve()`. `resolve()` does not load the
//!   target: it keeps the Reference node and records the referenced resource type, which
//!   is all that `where(resolve() is Patient)` needs.
//!
//! Anything else (arithmetic, ordering, other functions or variables) is rejected by
//! [`Expression::parse`]; evaluation never fails. Primitive extensions (`_birthDate`) are
//! ignored, and so are JSON `null`s inside primitive arrays. A choice variant is only
//! recognised when its suffix is an R4 data type name, so `periodUnit` is not `period`.
//! `a | b` drops the nodes of `b` that `a` already selected (by identity), and `=` follows
//! FHIRPath collection equality: empty if a side is empty, else same size and pairwise equal.

use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

/// A parsed FHIRPath expression: parse once with [`Expression::parse`], evaluate many times.
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    root: Expr,
}

/// Why an expression could not be parsed, or which unsupported construct it uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// Human-readable description of the problem.
    pub message: String,
    /// Byte offset in the source where the problem was detected.
    pub position: usize,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.message, self.position)
    }
}

impl std::error::Error for ParseError {}

fn error<T>(message: impl Into<String>, position: usize) -> Result<T, ParseError> {
    let message = message.into();
    Err(ParseError { message, position })
}

/// One selected element.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// The selected value: a reference into the evaluated JSON, or a static JSON boolean
    /// for the result of a boolean expression (`exists()`, `=`, `and`, …).
    pub value: &'a serde_json::Value,
    /// FHIR type when known: from a choice element name ("Quantity" for `valueQuantity`,
    /// "dateTime" for `effectiveDateTime`); from `as`/`ofType`; the referenced resource
    /// type after `resolve()` (borrowed from the reference string); "boolean" for boolean
    /// results. `None` otherwise (a resource's type is its `resourceType` member).
    pub type_name: Option<&'a str>,
}

fn node<'a>(value: &'a Value, type_name: Option<&'a str>) -> Node<'a> {
    Node { value, type_name }
}

impl Expression {
    /// The dotted element paths (`Patient.gender`) of an expression that is one, or a union of
    /// them; `None` for anything else (a `where`, a `resolve`, an `as`).
    pub fn plain_paths(&self) -> Option<Vec<String>> {
        fn paths(expr: &Expr, out: &mut Vec<String>) -> bool {
            fn dotted(expr: &Expr) -> Option<String> {
                match expr {
                    Expr::Ident(name) => Some(name.clone()),
                    Expr::Member(parent, name) => Some(format!("{}.{name}", dotted(parent)?)),
                    _ => None,
                }
            }
            match expr {
                Expr::Union(left, right) => paths(left, out) && paths(right, out),
                other => dotted(other).map(|path| out.push(path)).is_some(),
            }
        }
        let mut out = Vec::new();
        paths(&self.root, &mut out).then_some(out)
    }

    /// Parses `source`, rejecting any construct outside the supported subset.
    pub fn parse(source: &str) -> Result<Expression, ParseError> {
        let mut parser = Parser { tokens: tokenize(source)?, index: 0 };
        let root = parser.parse_expression()?;
        if *parser.peek() != Tok::End {
            return Err(parser.unexpected("end of expression"));
        }
        reject_misplaced_literals(&root, false)?;
        Ok(Expression { root })
    }

    /// This expression for resources of `resource_type` alone, when that is shorter: the
    /// branches of a union that start with another resource type (`CarePlan.subject` in the
    /// `patient` parameter shared by thirty types) select nothing on such a resource, and are
    /// left out so that indexing does not evaluate them. `None` when nothing is left out (or
    /// everything would be).
    pub fn for_type(&self, resource_type: &str) -> Option<Expression> {
        let root = without_other_types(&self.root, resource_type)?;
        (union_operands(&root).len() < self.union_width()).then_some(Expression { root })
    }

    /// Whether every operand of `part`'s top-level unions is one of this expression's
    /// (`Observation.code | Observation.component.code` includes `Observation.component.code`).
    /// Operands compare as parsed, so this is conservative: literals at other offsets differ.
    pub fn includes(&self, part: &Expression) -> bool {
        let own = union_operands(&self.root);
        union_operands(&part.root).iter().all(|operand| own.contains(operand))
    }

    /// Whether each of this expression's top-level union operands is one of `parts`'. With
    /// [`Expression::includes`] of every part, it selects exactly the union of what they select.
    pub fn is_covered_by(&self, parts: &[&Expression]) -> bool {
        let theirs: Vec<&Expr> = parts.iter().flat_map(|part| union_operands(&part.root)).collect();
        union_operands(&self.root).iter().all(|operand| theirs.contains(operand))
    }

    /// How many operands its top-level unions have (1 for an expression without a union).
    pub fn union_width(&self) -> usize {
        union_operands(&self.root).len()
    }

    /// Evaluates against a resource; returns the selected nodes in document order.
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Vec<Node<'a>> {
        self.evaluate_on_with_resource(resource, resource)
    }

    /// Evaluates a relative expression (e.g. a composite component's `value.as(Quantity)`)
    /// with `node` as the focus: a leading lower-case identifier is a member of `node`.
    /// `%resource` selects nothing here; see [`Expression::evaluate_on_with_resource`].
    pub fn evaluate_on<'a>(&self, node: &'a Value) -> Vec<Node<'a>> {
        eval(&self.root, &[self::node(node, None)], &Env { resource: None })
    }

    /// Like [`Expression::evaluate_on`], with `%resource` bound to `resource` (needed by
    /// components such as `%resource.referenceSeq.chromosome`).
    pub fn evaluate_on_with_resource<'a>(&self, node: &'a Value, resource: &'a Value) -> Vec<Node<'a>> {
        let env = Env { resource: Some(resource) };
        eval(&self.root, &[self::node(node, None)], &env)
    }
}

// --- AST ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    /// `$this`: the focus; also the implicit input of a leading function call.
    This,
    /// `%resource` / `%rootResource`.
    Resource,
    Bool(bool),
    /// String or number literal and its position; only valid as an operand of `=` / `!=`.
    Literal(Value, usize),
    /// Leading identifier: a type filter on a resource focus when capitalised, else a member.
    Ident(String),
    Member(Box<Expr>, String),
    Index(Box<Expr>, usize),
    Call(Box<Expr>, Func),
    Union(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    /// `=` (false) or `!=` (true).
    Equals(Box<Expr>, Box<Expr>, bool),
}

#[derive(Debug, Clone, PartialEq)]
enum Func {
    Where(Box<Expr>),
    Exists(Option<Box<Expr>>),
    Empty,
    Not,
    First,
    Last,
    HasValue,
    Resolve,
    Extension(String),
    HasExtension(String),
    /// `as T`, `.as(T)` and `.ofType(T)`: keep the nodes of type `T`.
    OfType(String),
    /// `is T`, `.is(T)`.
    Is(String),
}

fn boxed(expr: Expr) -> Box<Expr> {
    Box::new(expr)
}

/// `expr` without the union branches that start with a concrete resource type other than
/// `resource_type`; `None` when nothing is left.
fn without_other_types(expr: &Expr, resource_type: &str) -> Option<Expr> {
    match expr {
        Expr::Union(left, right) => {
            match (without_other_types(left, resource_type), without_other_types(right, resource_type)) {
                (Some(left), Some(right)) => Some(Expr::Union(boxed(left), boxed(right))),
                (one, other) => one.or(other),
            }
        }
        _ => match leading_type(expr) {
            Some(name) if name != resource_type && !is_abstract_resource_type(name) => None,
            _ => Some(expr.clone()),
        },
    }
}

/// The resource type a path starts with (`Observation` in `Observation.code.coding`), if any,
/// when the path selects nothing on a resource of another type: every step after it gives
/// nothing for no input (`exists()` would give `false`).
fn leading_type(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Ident(name) if starts_uppercase(name) => Some(name),
        Expr::Member(base, _) | Expr::Index(base, _) => leading_type(base),
        Expr::Call(base, func) if func.gives_nothing_for_nothing() => leading_type(base),
        _ => None,
    }
}

impl Func {
    /// Whether the function selects nothing when its input is empty (unlike `exists()`,
    /// `empty()`, `hasValue()` and `hasExtension()`, which answer `true` or `false`).
    fn gives_nothing_for_nothing(&self) -> bool {
        !matches!(self, Func::Exists(_) | Func::Empty | Func::HasValue | Func::HasExtension(_))
    }
}

/// The operands of the top-level unions of `expr` (`expr` itself when it is no union).
fn union_operands(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::Union(left, right) => {
            let mut operands = union_operands(left);
            operands.extend(union_operands(right));
            operands
        }
        _ => vec![expr],
    }
}

/// Literals cannot become [`Node`]s (which borrow from the resource), so they are only
/// accepted where they are compared.
fn reject_misplaced_literals(expr: &Expr, allowed: bool) -> Result<(), ParseError> {
    match expr {
        Expr::Literal(_, position) if !allowed => {
            error("string and number literals are only supported in `=` and `!=`", *position)
        }
        Expr::Equals(left, right, _) => {
            reject_misplaced_literals(left, true)?;
            reject_misplaced_literals(right, true)
        }
        Expr::Member(base, _) | Expr::Index(base, _) => reject_misplaced_literals(base, false),
        Expr::Call(base, Func::Where(criteria) | Func::Exists(Some(criteria))) => {
            reject_misplaced_literals(base, false)?;
            reject_misplaced_literals(criteria, false)
        }
        Expr::Call(base, _) => reject_misplaced_literals(base, false),
        Expr::Union(left, right) | Expr::And(left, right) | Expr::Or(left, right) => {
            reject_misplaced_literals(left, false)?;
            reject_misplaced_literals(right, false)
        }
        _ => Ok(()),
    }
}

// --- Tokenizer ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// Plain identifier or keyword.
    Ident(String),
    /// Backtick-delimited identifier (never a keyword).
    Quoted(String),
    Str(String),
    Num(String),
    /// `%name` or `$name`, sigil included.
    Var(String),
    Sym(&'static str),
    End,
}

/// Punctuation; unsupported operators are tokenized too, for clear error messages.
const SYMBOLS: [&str; 22] =
    ["!=", "!~", "<=", ">=", ".", "(", ")", "[", "]", ",", "|", "=", "~", "<", ">", "+", "-", "*", "/", "&", "{", "}"];
const SUPPORTED_SYMBOLS: [&str; 9] = [".", "(", ")", "[", "]", ",", "|", "=", "!="];

/// Keywords that are operators in full FHIRPath but unsupported here.
const UNSUPPORTED_KEYWORDS: [&str; 6] = ["xor", "implies", "in", "contains", "div", "mod"];

/// Splits `source` into tokens with their byte offsets, ending with [`Tok::End`].
fn tokenize(source: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let bytes = source.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let (c, start) = (bytes[i], i);
        let tok = if c.is_ascii_whitespace() {
            i += 1;
            continue;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            i = scan_while(bytes, i, |b| b.is_ascii_alphanumeric() || b == b'_');
            Tok::Ident(source[start..i].to_string())
        } else if c.is_ascii_digit() {
            i = scan_number(bytes, i);
            Tok::Num(source[start..i].to_string())
        } else if c == b'\'' || c == b'`' {
            let (text, end) = scan_quoted(source, i)?;
            i = end;
            if c == b'\'' {
                Tok::Str(text)
            } else {
                Tok::Quoted(text)
            }
        } else if c == b'%' || c == b'$' {
            i = scan_while(bytes, i + 1, |b| b.is_ascii_alphanumeric() || b == b'_');
            Tok::Var(source[start..i].to_string())
        } else if let Some(symbol) = SYMBOLS.iter().find(|s| source[i..].starts_with(**s)) {
            i += symbol.len();
            Tok::Sym(symbol)
        } else {
            let ch = source[i..].chars().next().unwrap_or('?');
            return error(format!("unexpected character `{ch}`"), i);
        };
        tokens.push((tok, start));
    }
    tokens.push((Tok::End, source.len()));
    Ok(tokens)
}

fn scan_while(bytes: &[u8], mut i: usize, accept: impl Fn(u8) -> bool) -> usize {
    while i < bytes.len() && accept(bytes[i]) {
        i += 1;
    }
    i
}

fn scan_number(bytes: &[u8], start: usize) -> usize {
    let i = scan_while(bytes, start, |b| b.is_ascii_digit());
    match bytes.get(i + 1) {
        Some(next) if bytes[i] == b'.' && next.is_ascii_digit() => scan_while(bytes, i + 1, |b| b.is_ascii_digit()),
        _ => i,
    }
}

/// Scans a `'string'` or `` `identifier` `` whose opening quote is at `start`; returns
/// the unescaped text and the byte offset after the closing quote.
fn scan_quoted(source: &str, start: usize) -> Result<(String, usize), ParseError> {
    let quote = char::from(source.as_bytes()[start]);
    let mut text = String::new();
    let mut chars = source[start + 1..].char_indices();
    while let Some((offset, ch)) = chars.next() {
        if ch == quote {
            return Ok((text, start + offset + 2));
        }
        if ch != '\\' {
            text.push(ch);
            continue;
        }
        text.push(match chars.next() {
            Some((_, 'n')) => '\n',
            Some((_, 't')) => '\t',
            Some((_, 'r')) => '\r',
            Some((_, 'f')) => '\u{c}',
            Some((_, 'u')) => {
                let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(decoded) => decoded,
                    None => return error("invalid \\u escape", start + offset + 1),
                }
            }
            Some((_, other)) => other,
            None => break,
        });
    }
    error("unterminated string or delimited identifier", start)
}

// --- Parser: recursive descent; precedence from low to high: or, and, = !=, |, is as, . [] --

struct Parser {
    tokens: Vec<(Tok, usize)>,
    index: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.index].0
    }

    fn position(&self) -> usize {
        self.tokens[self.index].1
    }

    /// Returns the current token and moves on (never past the final `End`).
    fn advance(&mut self) -> Tok {
        let tok = self.peek().clone();
        self.index = (self.index + 1).min(self.tokens.len() - 1);
        tok
    }

    fn eat(&mut self, wanted: &Tok) -> bool {
        let found = self.peek() == wanted;
        if found {
            self.advance();
        }
        found
    }

    fn eat_sym(&mut self, symbol: &'static str) -> bool {
        self.eat(&Tok::Sym(symbol))
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = matches!(self.peek(), Tok::Ident(word) if word == keyword);
        if found {
            self.advance();
        }
        found
    }

    fn expect_sym(&mut self, symbol: &'static str) -> Result<(), ParseError> {
        if self.eat_sym(symbol) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{symbol}`")))
        }
    }

    /// Error for the current token, which is not what the grammar expects.
    fn unexpected(&self, expected: &str) -> ParseError {
        let message = match self.peek() {
            Tok::Sym(s) if !SUPPORTED_SYMBOLS.contains(s) => format!("unsupported operator `{s}`"),
            Tok::Ident(k) if UNSUPPORTED_KEYWORDS.contains(&k.as_str()) => {
                format!("unsupported operator `{k}`")
            }
            Tok::End => format!("unexpected end of expression, expected {expected}"),
            other => format!("unexpected {other:?}, expected {expected}"),
        };
        ParseError { message, position: self.position() }
    }

    fn parse_expression(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.parse_and()?;
        while self.eat_keyword("or") {
            left = Expr::Or(boxed(left), boxed(self.parse_and()?));
        }
        Ok(left)
    }

    fn parse_and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.parse_equality()?;
        while self.eat_keyword("and") {
            left = Expr::And(boxed(left), boxed(self.parse_equality()?));
        }
        Ok(left)
    }

    fn parse_equality(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.parse_union()?;
        loop {
            let negated = match self.peek() {
                Tok::Sym("=") => false,
                Tok::Sym("!=") => true,
                _ => return Ok(left),
            };
            self.advance();
            left = Expr::Equals(boxed(left), boxed(self.parse_union()?), negated);
        }
    }

    fn parse_union(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.parse_type_operation()?;
        while self.eat_sym("|") {
            left = Expr::Union(boxed(left), boxed(self.parse_type_operation()?));
        }
        Ok(left)
    }

    fn parse_type_operation(&mut self) -> Result<Expr, ParseError> {
        let mut expr = self.parse_postfix()?;
        loop {
            let func = if self.eat_keyword("is") {
                Func::Is(self.parse_type_specifier()?)
            } else if self.eat_keyword("as") {
                Func::OfType(self.parse_type_specifier()?)
            } else {
                return Ok(expr);
            };
            expr = Expr::Call(boxed(expr), func);
        }
    }

    fn parse_postfix(&mut self) -> Result<Expr, ParseError> {
        let mut expr = self.parse_term()?;
        loop {
            if self.eat_sym(".") {
                expr = self.parse_invocation(expr)?;
            } else if self.eat_sym("[") {
                let position = self.position();
                let index = match self.advance() {
                    Tok::Num(digits) => digits.parse().ok(),
                    _ => None,
                };
                let Some(index) = index else {
                    return error("only non-negative integer literal indexes are supported", position);
                };
                self.expect_sym("]")?;
                expr = Expr::Index(boxed(expr), index);
            } else {
                return Ok(expr);
            }
        }
    }

    /// Parses what follows a `.`: a member name or a function call on `base`.
    fn parse_invocation(&mut self, base: Expr) -> Result<Expr, ParseError> {
        let position = self.position();
        match self.advance() {
            Tok::Ident(name) if self.eat_sym("(") => self.parse_call(base, &name, position),
            Tok::Ident(name) | Tok::Quoted(name) => Ok(Expr::Member(boxed(base), name)),
            _ => error("expected a member or function name after `.`", position),
        }
    }

    fn parse_term(&mut self) -> Result<Expr, ParseError> {
        let (start, position) = (self.index, self.position());
        match self.advance() {
            Tok::Ident(name) if self.eat_sym("(") => self.parse_call(Expr::This, &name, position),
            Tok::Ident(name) if name == "true" || name == "false" => Ok(Expr::Bool(name == "true")),
            Tok::Ident(name) if !is_keyword(&name) => Ok(Expr::Ident(name)),
            Tok::Quoted(name) => Ok(Expr::Ident(name)),
            Tok::Str(text) => Ok(Expr::Literal(Value::String(text), position)),
            Tok::Num(digits) => match serde_json::from_str(&digits) {
                Ok(number) => Ok(Expr::Literal(number, position)),
                Err(_) => error("invalid number", position),
            },
            Tok::Var(name) if name == "%resource" || name == "%rootResource" => Ok(Expr::Resource),
            Tok::Var(name) if name == "$this" => Ok(Expr::This),
            Tok::Var(name) => error(format!("unsupported variable `{name}`"), position),
            Tok::Sym("(") => {
                let inner = self.parse_expression()?;
                self.expect_sym(")")?;
                Ok(inner)
            }
            _ => {
                self.index = start;
                Err(self.unexpected("an expression"))
            }
        }
    }

    /// Parses the arguments and closing parenthesis of function `name` (after its `(`).
    fn parse_call(&mut self, base: Expr, name: &str, position: usize) -> Result<Expr, ParseError> {
        let func = match name {
            "where" => Func::Where(boxed(self.parse_expression()?)),
            "exists" if *self.peek() == Tok::Sym(")") => Func::Exists(None),
            "exists" => Func::Exists(Some(boxed(self.parse_expression()?))),
            "empty" => Func::Empty,
            "not" => Func::Not,
            "first" => Func::First,
            "last" => Func::Last,
            "hasValue" => Func::HasValue,
            "resolve" => Func::Resolve,
            "extension" => Func::Extension(self.parse_string_argument()?),
            "hasExtension" => Func::HasExtension(self.parse_string_argument()?),
            "as" | "ofType" => Func::OfType(self.parse_type_specifier()?),
            "is" => Func::Is(self.parse_type_specifier()?),
            _ => return error(format!("unsupported function `{name}`"), position),
        };
        self.expect_sym(")")?;
        Ok(Expr::Call(boxed(base), func))
    }

    fn parse_string_argument(&mut self) -> Result<String, ParseError> {
        let position = self.position();
        match self.advance() {
            Tok::Str(text) => Ok(text),
            _ => error("expected a string literal argument", position),
        }
    }

    /// Parses `T`, `FHIR.T` or `System.T` and returns the FHIR type name (System types
    /// such as `DateTime` or `String` become the FHIR primitives `dateTime`, `string`).
    fn parse_type_specifier(&mut self) -> Result<String, ParseError> {
        let position = self.position();
        let mut name = self.advance();
        if matches!(&name, Tok::Ident(q) if q == "FHIR" || q == "System") && self.eat_sym(".") {
            name = self.advance();
        }
        match name {
            Tok::Ident(name) | Tok::Quoted(name) => Ok(data_type(&name).map_or(name, str::to_string)),
            _ => error("expected a type name", position),
        }
    }
}

fn is_keyword(word: &str) -> bool {
    matches!(word, "and" | "or" | "is" | "as") || UNSUPPORTED_KEYWORDS.contains(&word)
}

// --- FHIR types --------------------------------------------------------------------------

/// FHIR R4 data types that can be the suffix of a choice element (`value[x]`).
const DATA_TYPES: &str = "base64Binary boolean canonical code date dateTime decimal id \
    instant integer markdown oid positiveInt string time unsignedInt uri url uuid \
    Address Age Annotation Attachment CodeableConcept Coding ContactDetail ContactPoint \
    Contributor Count DataRequirement Distance Dosage Duration Expression Extension \
    HumanName Identifier Meta Money ParameterDefinition Period Quantity Range Ratio \
    Reference RelatedArtifact SampledData Signature Timing TriggerDefinition UsageContext";

/// The data type spelled `name`, ignoring the case of the first letter (`DateTime` is
/// `dateTime`), or `None` if `name` is not a data type.
fn data_type(name: &str) -> Option<&'static str> {
    /// The data types by their names without the first letter (looked up for every member
    /// an expression names that the element lacks, as a possible choice variant).
    static BY_REST: LazyLock<HashMap<&'static str, Vec<&'static str>>> = LazyLock::new(|| {
        let mut by_rest: HashMap<&'static str, Vec<&'static str>> = HashMap::new();
        for name in DATA_TYPES.split_ascii_whitespace() {
            by_rest.entry(&name[1..]).or_default().push(name);
        }
        by_rest
    });
    let first = *name.as_bytes().first()?;
    BY_REST.get(name.get(1..)?)?.iter().copied().find(|candidate| candidate.as_bytes()[0].eq_ignore_ascii_case(&first))
}

/// Type of the choice variant `key` of element `base` (`valueQuantity` of `value`).
fn choice_type(key: &str, base: &str) -> Option<&'static str> {
    let suffix = key.strip_prefix(base).filter(|s| starts_uppercase(s))?;
    data_type(suffix)
}

fn resource_type(value: &Value) -> Option<&str> {
    value.get("resourceType").and_then(Value::as_str)
}

fn starts_uppercase(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_uppercase())
}

fn is_abstract_resource_type(name: &str) -> bool {
    name == "Resource" || name == "DomainResource"
}

fn node_type<'a>(node: &Node<'a>) -> Option<&'a str> {
    node.type_name.or_else(|| resource_type(node.value))
}

fn has_type(node: &Node<'_>, wanted: &str) -> bool {
    match node_type(node) {
        Some(actual) if is_abstract_resource_type(wanted) => starts_uppercase(actual) && data_type(actual).is_none(),
        actual => actual == Some(wanted),
    }
}

/// Resource type a Reference points to: the type segment of a relative or absolute
/// `reference` (`Patient/1`, `http://x/fhir/Patient/1/_history/2`), else its `type`.
fn reference_target_type(value: &Value) -> Option<&str> {
    let reference = value.get("reference").and_then(Value::as_str);
    reference.and_then(type_from_reference).or_else(|| {
        let declared = value.get("type").and_then(Value::as_str)?;
        declared.rsplit('/').next().filter(|t| starts_uppercase(t))
    })
}

fn type_from_reference(reference: &str) -> Option<&str> {
    if reference.starts_with("urn:") || reference.starts_with('#') {
        return None;
    }
    let path = reference.find("/_history/").map_or(reference, |end| &reference[..end]);
    let mut segments = path.rsplit('/');
    let (id, type_name) = (segments.next()?, segments.next()?);
    let valid_type = starts_uppercase(type_name) && type_name.chars().all(char::is_alphanumeric);
    (valid_type && !id.is_empty()).then_some(type_name)
}

// --- Evaluation --------------------------------------------------------------------------

static TRUE: Value = Value::Bool(true);
static FALSE: Value = Value::Bool(false);

struct Env<'a> {
    resource: Option<&'a Value>,
}

fn bool_result<'a>(value: bool) -> Vec<Node<'a>> {
    vec![node(if value { &TRUE } else { &FALSE }, Some("boolean"))]
}

fn optional_bool_result<'a>(value: Option<bool>) -> Vec<Node<'a>> {
    value.map(bool_result).unwrap_or_default()
}

/// FHIRPath singleton evaluation of a collection as a boolean: empty (or several
/// items) is unknown, a single boolean is itself, any other single item is true.
fn to_bool(nodes: &[Node<'_>]) -> Option<bool> {
    match nodes {
        [single] => Some(single.value.as_bool().unwrap_or(true)),
        _ => None,
    }
}

fn eval<'a>(expr: &Expr, focus: &[Node<'a>], env: &Env<'a>) -> Vec<Node<'a>> {
    match expr {
        Expr::This => focus.to_vec(),
        Expr::Resource => env.resource.map(|value| node(value, None)).into_iter().collect(),
        Expr::Bool(value) => bool_result(*value),
        Expr::Literal(..) => Vec::new(), // only reachable through `Equals`, see `operand`
        Expr::Ident(name) => select_identifier(focus, name),
        Expr::Member(base, name) => {
            let mut out = Vec::new();
            for input in eval_input(base, focus, env).iter() {
                push_member(input.value, name, &mut out);
            }
            out
        }
        Expr::Index(base, index) => eval_input(base, focus, env).get(*index).copied().into_iter().collect(),
        Expr::Call(base, func) => call(func, &eval_input(base, focus, env), env),
        Expr::Union(left, right) => union(eval(left, focus, env), eval(right, focus, env)),
        Expr::And(left, right) => logical(false, left, right, focus, env),
        Expr::Or(left, right) => logical(true, left, right, focus, env),
        Expr::Equals(left, right, negated) => {
            let equal = collections_equal(&operand(left, focus, env), &operand(right, focus, env));
            optional_bool_result(equal.map(|equal| equal != *negated))
        }
    }
}

/// Evaluates the input of a step, borrowing the focus instead of copying it for `$this`.
fn eval_input<'f, 'a>(expr: &Expr, focus: &'f [Node<'a>], env: &Env<'a>) -> Cow<'f, [Node<'a>]> {
    match expr {
        Expr::This => Cow::Borrowed(focus),
        _ => Cow::Owned(eval(expr, focus, env)),
    }
}

/// A leading identifier: `Patient` keeps resources of that type, `name` selects members.
fn select_identifier<'a>(focus: &[Node<'a>], name: &str) -> Vec<Node<'a>> {
    let mut out = Vec::new();
    for input in focus {
        match resource_type(input.value) {
            Some(actual) if starts_uppercase(name) => {
                if actual == name || is_abstract_resource_type(name) {
                    out.push(*input);
                }
            }
            _ => push_member(input.value, name, &mut out),
        }
    }
    out
}

/// Pushes member `name` of `value` (flattening arrays), or its choice variant `nameXxx`.
fn push_member<'a>(value: &'a Value, name: &str, out: &mut Vec<Node<'a>>) {
    let Value::Object(map) = value else { return };
    let (child, type_name) = match map.get(name) {
        Some(child) => (child, None),
        None => {
            let variant = map.iter().find_map(|(key, child)| Some((child, choice_type(key, name)?)));
            let Some((child, type_name)) = variant else {
                return;
            };
            (child, Some(type_name))
        }
    };
    match child {
        Value::Array(items) => {
            out.extend(items.iter().filter(|item| !item.is_null()).map(|item| node(item, type_name)))
        }
        Value::Null => {}
        _ => out.push(node(child, type_name)),
    }
}

fn call<'a>(func: &Func, input: &[Node<'a>], env: &Env<'a>) -> Vec<Node<'a>> {
    let retyped = |n: &Node<'a>, type_name| node(n.value, type_name);
    match func {
        Func::Where(criteria) => input.iter().copied().filter(|n| satisfies(criteria, n, env)).collect(),
        Func::Exists(None) => bool_result(!input.is_empty()),
        Func::Exists(Some(criteria)) => bool_result(input.iter().any(|n| satisfies(criteria, n, env))),
        Func::Empty => bool_result(input.is_empty()),
        Func::Not => optional_bool_result(to_bool(input).map(|b| !b)),
        Func::First => input.first().copied().into_iter().collect(),
        Func::Last => input.last().copied().into_iter().collect(),
        Func::HasValue => bool_result(matches!(input, [n] if is_primitive(n.value))),
        Func::Resolve => input.iter().map(|n| retyped(n, reference_target_type(n.value))).collect(),
        Func::Extension(url) => input
            .iter()
            .flat_map(|n| extensions(n.value).iter().filter(move |e| has_url(e, url)))
            .map(|extension| node(extension, Some("Extension")))
            .collect(),
        Func::HasExtension(url) => {
            bool_result(input.iter().any(|n| extensions(n.value).iter().any(|e| has_url(e, url))))
        }
        Func::OfType(wanted) => {
            input.iter().filter(|n| has_type(n, wanted)).map(|n| retyped(n, node_type(n))).collect()
        }
        Func::Is(wanted) => match input {
            [single] => bool_result(has_type(single, wanted)),
            _ => Vec::new(),
        },
    }
}

/// Whether `criteria`, evaluated with `input` as `$this`, is true.
fn satisfies<'a>(criteria: &Expr, input: &Node<'a>, env: &Env<'a>) -> bool {
    to_bool(&eval(criteria, std::slice::from_ref(input), env)) == Some(true)
}

fn is_primitive(value: &Value) -> bool {
    matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

fn extensions(value: &Value) -> &[Value] {
    value.get("extension").and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn has_url(extension: &Value, url: &str) -> bool {
    extension.get("url").and_then(Value::as_str) == Some(url)
}

/// `left | right`: left then right, skipping right nodes that are the very same JSON
/// values as left ones (by identity; the union operands rarely overlap at all).
fn union<'a>(mut left: Vec<Node<'a>>, right: Vec<Node<'a>>) -> Vec<Node<'a>> {
    let left_len = left.len();
    for candidate in right {
        if !left[..left_len].iter().any(|seen| std::ptr::eq(seen.value, candidate.value)) {
            left.push(candidate);
        }
    }
    left
}

/// Three-valued `and` (`decisive` = false) and `or` (`decisive` = true): the decisive value
/// on either side wins, both sides the other value gives that value, else unknown (empty).
fn logical<'a>(decisive: bool, left: &Expr, right: &Expr, focus: &[Node<'a>], env: &Env<'a>) -> Vec<Node<'a>> {
    let left = to_bool(&eval(left, focus, env));
    if left == Some(decisive) {
        return bool_result(decisive);
    }
    match (left, to_bool(&eval(right, focus, env))) {
        (_, Some(right)) if right == decisive => bool_result(decisive),
        (Some(_), Some(_)) => bool_result(!decisive),
        _ => Vec::new(),
    }
}

/// The values of one side of `=` / `!=`; a literal borrows from the expression.
fn operand<'v>(expr: &'v Expr, focus: &[Node<'v>], env: &Env<'v>) -> Vec<&'v Value> {
    match expr {
        Expr::Literal(literal, _) => vec![literal],
        other => eval(other, focus, env).into_iter().map(|n| n.value).collect(),
    }
}

/// FHIRPath `=`: unknown if either side is empty, else same length and pairwise equal.
fn collections_equal(left: &[&Value], right: &[&Value]) -> Option<bool> {
    if left.is_empty() || right.is_empty() {
        return None;
    }
    let pairwise = left.iter().zip(right).all(|(a, b)| json_equals(a, b));
    Some(left.len() == right.len() && pairwise)
}

fn json_equals(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SEARCH_PARAMETERS: &str = include_str!("../../conformance/search-parameters.json");

    fn parse(source: &str) -> Expression {
        Expression::parse(source).unwrap_or_else(|e| panic!("{source}: {e}"))
    }

    /// The selected values as one JSON array, for compact assertions.
    fn select(source: &str, resource: &Value) -> Value {
        let nodes = parse(source).evaluate(resource);
        nodes.iter().map(|n| n.value.clone()).collect()
    }

    fn types<'a>(nodes: &[Node<'a>]) -> Vec<Option<&'a str>> {
        nodes.iter().map(|n| n.type_name).collect()
    }

    #[test]
    fn an_expression_shared_by_types_keeps_the_branches_of_one_type() {
        let shared = parse(
            "AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | \
             Observation.subject.where(resolve() is Patient) | Resource.meta.tag",
        );
        let observation = json!({"resourceType": "Observation", "subject": {"reference": "Patient/p1"},
            "meta": {"tag": [{"code": "t"}]}});
        let own = shared.for_type("Observation").expect("shorter for one type");
        assert_eq!(own.union_width(), 2, "{own:?}");
        let values = |e: &Expression| e.evaluate(&observation).iter().map(|n| n.value.clone()).collect::<Vec<_>>();
        assert_eq!(values(&own), values(&shared));
        assert_eq!(values(&own).len(), 2);
        assert!(parse("Observation.code").for_type("Observation").is_none(), "nothing to leave out");
        assert!(parse("CarePlan.subject").for_type("Observation").is_none(), "nothing would be left");
        let patient = json!({"resourceType": "Patient", "active": true});
        let answering = parse("Patient.active | Observation.status.exists()");
        assert!(answering.for_type("Patient").is_none(), "exists() answers false on another type");
        assert_eq!(select("Patient.active | Observation.status.exists()", &patient), json!([true, false]));
    }

    /// Asserts `expression => expected values` for each case, against `resource`.
    fn check(resource: &Value, cases: &[(&str, Value)]) {
        for (source, expected) in cases {
            assert_eq!(&select(source, resource), expected, "{source} on {resource}");
        }
    }

    /// `(code, expression)` of every parameter and composite component in the file.
    fn all_expressions() -> Vec<(String, String)> {
        let params: Vec<Value> = serde_json::from_str(SEARCH_PARAMETERS).expect("valid JSON");
        let mut out = Vec::new();
        for param in &params {
            let code = param["code"].as_str().unwrap_or("?");
            let components = param["component"].as_array().into_iter().flatten();
            for source in std::iter::once(param).chain(components).filter_map(|p| p["expression"].as_str()) {
                out.push((code.to_string(), source.to_string()));
            }
        }
        out
    }

    #[test]
    fn every_search_parameter_expression_parses() {
        let expressions = all_expressions();
        assert!(expressions.len() > 1400, "only {} expressions", expressions.len());
        let failures: Vec<String> = expressions
            .iter()
            .filter_map(|(code, src)| Some(format!("{code}: {src}: {}", Expression::parse(src).err()?)))
            .collect();
        assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    }

    #[test]
    fn every_expression_evaluates_on_sample_resources() {
        let samples = [
            json!({"resourceType": "Patient", "name": [{"family": "X"}], "extension": [{"url": "u"}]}),
            json!({"resourceType": "Observation", "valueQuantity": {"value": 1},
                   "component": [{"code": {"text": "c"}, "valueString": "s"}]}),
            json!({"resourceType": "QuestionnaireResponse",
                   "item": [{"answer": [{"valueReference": {"reference": "Patient/9"}}]}]}),
            json!("not a resource"),
        ];
        for (_, source) in all_expressions() {
            let expression = parse(&source);
            for sample in &samples {
                expression.evaluate(sample);
                expression.evaluate_on(sample);
            }
        }
    }

    #[test]
    fn paths_flatten_arrays_and_unions_keep_order() {
        let patient = json!({"resourceType": "Patient",
            "name": [{"family": "Chalmers", "given": ["Peter", "James"]},
                     {"family": "Windsor", "given": ["Jim", null]}],
            "address": [{"city": "Leeds"}, {"city": "York"}]});
        check(
            &patient,
            &[
                ("Patient.name.family", json!(["Chalmers", "Windsor"])),
                ("Patient.name.given", json!(["Peter", "James", "Jim"])),
                ("Patient.address.city | Person.address.city", json!(["Leeds", "York"])),
                ("Patient.address[1].city | Patient.address.city", json!(["York", "Leeds"])),
            ],
        );
        assert_eq!(types(&parse("Patient.name.family").evaluate(&patient)), [None, None]);
    }

    #[test]
    fn wrong_resource_type_and_missing_elements_yield_nothing() {
        let patient = json!({"resourceType": "Patient", "name": [{"family": "X"}]});
        check(
            &patient,
            &[
                ("Observation.code", json!([])),
                ("Patient.address.city", json!([])),
                ("Patient.name.given", json!([])),
                ("Patient.gender.not()", json!([])),
                ("Patient.name.exists() and Patient.gender.empty()", json!([true])),
            ],
        );
        check(&json!({"name": [{"family": "X"}]}), &[("Patient.name.family", json!([]))]);
        check(&json!([1, 2]), &[("Patient.name", json!([]))]);
    }

    #[test]
    fn where_resolve_is_checks_the_referenced_type() {
        let expression = parse("Observation.subject.where(resolve() is Patient)");
        let cases = [
            (json!({"reference": "Patient/1"}), true),
            (json!({"reference": "Group/2"}), false),
            (json!({"reference": "http://example.org/fhir/Patient/3"}), true),
            (json!({"reference": "Patient/4/_history/2"}), true),
            (json!({"reference": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0", "type": "Group"}), false),
            (json!({"type": "Patient", "identifier": {"value": "x"}}), true),
        ];
        for (subject, expected) in cases {
            let observation = json!({"resourceType": "Observation", "subject": subject});
            let nodes = expression.evaluate(&observation);
            assert_eq!(nodes.len(), usize::from(expected), "{subject}");
            assert!(nodes.iter().all(|n| std::ptr::eq(n.value, &observation["subject"])));
        }
        let group = json!({"resourceType": "Observation", "subject": {"reference": "Group/2"}});
        let either = "Observation.subject.where(resolve() is Patient or resolve() is Group)";
        check(&group, &[(either, json!([{"reference": "Group/2"}]))]);
    }

    #[test]
    fn choice_elements_and_type_filters() {
        let quantity = json!({"resourceType": "Observation", "valueQuantity": {"value": 5.4}});
        let string = json!({"resourceType": "Observation", "valueString": "high"});
        let concept = json!({"resourceType": "Observation", "valueCodeableConcept": {"text": "t"}});
        let text = "(Observation.value as string) | (Observation.value as CodeableConcept).text";
        for source in [
            "(Observation.value as Quantity)",
            "Observation.value.as(FHIR.Quantity)",
            "Observation.value.ofType(Quantity)",
        ] {
            check(&quantity, &[(source, json!([{"value": 5.4}]))]);
            check(&string, &[(source, json!([])), (text, json!(["high"]))]);
            assert_eq!(types(&parse(source).evaluate(&quantity)), [Some("Quantity")]);
        }
        check(&concept, &[(text, json!(["t"])), ("Observation.value is CodeableConcept", json!([true]))]);

        let effective = parse("Observation.effective");
        let date_time = json!({"resourceType": "Observation", "effectiveDateTime": "2020-01-01"});
        let period = json!({"resourceType": "Observation", "effectivePeriod": {"start": "2020"}});
        assert_eq!(effective.evaluate(&date_time)[0].value, "2020-01-01");
        assert_eq!(types(&effective.evaluate(&date_time)), [Some("dateTime")]);
        assert_eq!(types(&effective.evaluate(&period)), [Some("Period")]);
        let no_choice = json!({"resourceType": "Observation", "effectiveFoo": 1, "_effectiveDateTime": {}});
        assert!(effective.evaluate(&no_choice).is_empty());
    }

    #[test]
    fn deceased_boolean_expression() {
        let source = "Patient.deceased.exists() and Patient.deceased != false";
        let cases = [
            (json!({"resourceType": "Patient", "deceasedBoolean": true}), true),
            (json!({"resourceType": "Patient", "deceasedBoolean": false}), false),
            (json!({"resourceType": "Patient", "deceasedDateTime": "2020-02-02"}), true),
            (json!({"resourceType": "Patient"}), false),
        ];
        for (patient, expected) in cases {
            check(&patient, &[(source, json!([expected]))]);
            assert_eq!(types(&parse(source).evaluate(&patient)), [Some("boolean")]);
        }
    }

    #[test]
    fn abstract_types_bundles_and_relative_paths_on_resources() {
        let observation =
            json!({"resourceType": "Observation", "id": "o1", "meta": {"tag": [{"code": "a"}, {"code": "b"}]}});
        check(
            &observation,
            &[
                ("Resource.meta.tag", json!([{"code": "a"}, {"code": "b"}])),
                ("DomainResource.id | id", json!(["o1"])),
                ("Observation.id | Observation.id", json!(["o1"])),
            ],
        );
        check(
            &json!({"resourceType": "InsurancePlan", "name": "n", "alias": ["a", "b"]}),
            &[("name | alias", json!(["n", "a", "b"]))],
        );
        let bundle = json!({"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "Composition", "id": "c"}},
            {"resource": {"resourceType": "Patient", "id": "p"}}]});
        check(
            &bundle,
            &[
                ("Bundle.entry[0].resource", json!([{"resourceType": "Composition", "id": "c"}])),
                ("Bundle.entry[5].resource", json!([])),
                ("Bundle.entry.resource.ofType(Patient).id", json!(["p"])),
                ("Bundle.entry.resource.first() is Composition", json!([true])),
                ("Bundle.entry.resource.last().is(Resource)", json!([true])),
            ],
        );
    }

    #[test]
    fn extension_functions_match_the_url() {
        let condition = json!({"resourceType": "Condition", "extension": [
            {"url": "http://x", "valueString": "one"}, {"url": "http://y", "valueString": "two"},
            {"url": "http://x", "valueCode": "three"}]});
        check(
            &condition,
            &[
                ("Condition.extension('http://x').value", json!(["one", "three"])),
                ("Condition.extension('http://z')", json!([])),
                ("Condition.hasExtension('http://y')", json!([true])),
            ],
        );
        let source = "QuestionnaireResponse.item.where(hasExtension(\
            'http://hl7.org/fhir/StructureDefinition/questionnaireresponse-isSubject')).answer.value.ofType(Reference)";
        let response = json!({"resourceType": "QuestionnaireResponse", "item": [
            {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/questionnaireresponse-isSubject",
                            "valueBoolean": true}],
             "answer": [{"valueReference": {"reference": "Patient/1"}}, {"valueString": "no"}]},
            {"answer": [{"valueReference": {"reference": "Patient/2"}}]}]});
        check(&response, &[(source, json!([{"reference": "Patient/1"}]))]);
        assert_eq!(types(&parse(source).evaluate(&response)), [Some("Reference")]);
    }

    #[test]
    fn where_with_equality_literals_and_logic() {
        let patient = json!({"resourceType": "Patient", "telecom": [
            {"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"},
            {"system": "phone", "value": "2"}]});
        check(
            &patient,
            &[
                ("Patient.telecom.where(system='phone').value", json!(["1", "2"])),
                ("Patient.telecom.where(system != 'phone' and value.exists()).value", json!(["a@b"])),
            ],
        );
        let basic = json!({"resourceType": "Basic", "code": {"coding": [{"code": "xyz"}]},
                           "n": 2.0, "text": "it's", "flag": true});
        check(
            &basic,
            &[
                ("Basic.code.where(coding.code = 'xyz').exists() and Basic.n = 2", json!([true])),
                (r"Basic.text = 'it\'s' and Basic.`text` != 'x'", json!([true])),
                ("Basic.flag = true or Basic.missing", json!([true])),
                ("Basic.flag = false or Basic.missing", json!([])),
                ("Basic.flag.not() | Basic.missing = 'x'", json!([false])),
                ("Basic.missing = 'x'", json!([])),
            ],
        );
    }

    #[test]
    fn relative_expressions_for_composite_components() {
        let observation = json!({"resourceType": "Observation", "component": [
            {"code": {"text": "a"}, "valueQuantity": {"value": 1}},
            {"code": {"text": "b"}, "valueRange": {"low": {"value": 2}}}]});
        let components = &observation["component"];
        let value = parse("value.as(Quantity) | value.as(Range)");
        assert_eq!(types(&value.evaluate_on(&components[0])), [Some("Quantity")]);
        assert_eq!(types(&value.evaluate_on(&components[1])), [Some("Range")]);
        assert_eq!(parse("code").evaluate_on(&components[1])[0].value, &json!({"text": "b"}));
        let date = parse("value.as(DateTime) | value.as(Period)");
        assert_eq!(types(&date.evaluate_on(&json!({"valueDateTime": "2020"}))), [Some("dateTime")]);

        let sequence = json!({"resourceType": "MolecularSequence",
            "referenceSeq": {"chromosome": {"text": "1"}}, "variant": [{"start": 1}]});
        let chromosome = parse("%resource.referenceSeq.chromosome");
        let found = chromosome.evaluate_on_with_resource(&sequence["variant"][0], &sequence);
        assert!(std::ptr::eq(found[0].value, &sequence["referenceSeq"]["chromosome"]));
        assert!(chromosome.evaluate_on(&sequence["variant"][0]).is_empty());
    }

    #[test]
    fn unsupported_constructs_are_parse_errors() {
        let cases = [
            ("Patient.name.count()", "unsupported function `count`", 13),
            ("Patient.birthDate < 2020", "unsupported operator `<`", 18),
            ("Patient.name xor Patient.id", "unsupported operator `xor`", 13),
            ("-Patient.id", "unsupported operator `-`", 0),
            ("'abc'", "literals are only supported", 0),
            ("Patient.name | 'x'", "literals are only supported", 15),
            ("Patient.where(name = 'x", "unterminated", 21),
            ("%ucum", "unsupported variable `%ucum`", 0),
            ("Patient.name[first()]", "integer literal indexes", 13),
            ("Patient.", "expected a member", 8),
            ("Patient.extension(url)", "expected a string literal", 18),
            ("Patient.as(1)", "expected a type name", 11),
            ("(Patient.name", "unexpected end of expression, expected `)`", 13),
            ("Patient.name and", "unexpected end of expression", 16),
            ("Patient.name.exists() ?", "unexpected character `?`", 22),
        ];
        for (source, message, position) in cases {
            let error = Expression::parse(source).expect_err(source);
            assert!(error.message.contains(message), "{source}: {error}");
            assert_eq!(error.position, position, "{source}: {error}");
        }
    }
}
