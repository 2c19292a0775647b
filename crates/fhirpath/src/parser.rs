//! FHIRPath text to a syntax tree: a tokenizer and a precedence-climbing parser following the
//! grammar of FHIRPath N1 (§ "Operator precedence").

use rust_decimal::Decimal;
use std::str::FromStr;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    pub(crate) root: Ast,
}

/// Why an expression does not parse.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError(pub String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A literal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Literal {
    Bool(bool),
    Str(String),
    Int(i64),
    Dec(Decimal),
    /// `@2015-02-04`, `@2015-02-04T10:00`, `@T10:00`: the text after `@`.
    Temporal(String),
    Quantity(Decimal, String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ast {
    /// `{}`
    Empty,
    Literal(Literal),
    /// `$this`, `$index`, `$total`
    Special(String),
    /// `%resource`, `%context`, `%ucum`, …
    Env(String),
    /// A name on the focus (an element, or a type name filtering a resource).
    Ident(String),
    Member(Box<Ast>, String),
    /// A function call; without a receiver the focus is the input.
    Call(Option<Box<Ast>>, String, Vec<Ast>),
    Indexer(Box<Ast>, Box<Ast>),
    Negate(Box<Ast>),
    Binary(&'static str, Box<Ast>, Box<Ast>),
    /// `is` (true) or `as` (false) with a type name.
    Type(bool, Box<Ast>, String),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// A backtick-delimited identifier: never a keyword.
    Delimited(String),
    Str(String),
    Number(String),
    Temporal(String),
    Env(String),
    Special(String),
    Op(&'static str),
    End,
}

const OPERATORS: &[&str] =
    &["<=", ">=", "!=", "!~", ".", "[", "]", "(", ")", ",", "+", "-", "*", "/", "&", "|", "=", "~", "<", ">", "{", "}"];

fn tokenize(source: &str) -> Result<Vec<Tok>, ParseError> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let error = |message: String| Err(ParseError(message));
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
            continue;
        }
        if c == '\'' || c == '`' {
            let (text, next) = quoted(&chars, i, c)?;
            tokens.push(if c == '\'' { Tok::Str(text) } else { Tok::Delimited(text) });
            i = next;
            continue;
        }
        if c == '@' {
            let start = i + 1;
            i = start;
            // A `.` belongs to the literal only before digits (milliseconds), not before `.is()`.
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || "-:+TZ".contains(chars[i])
                    || (chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)))
            {
                i += 1;
            }
            tokens.push(Tok::Temporal(chars[start..i].iter().collect()));
            continue;
        }
        if c == '%' {
            i += 1;
            let name = match chars.get(i) {
                Some(&q @ ('\'' | '`')) => {
                    let (text, next) = quoted(&chars, i, q)?;
                    i = next;
                    text
                }
                _ => {
                    let start = i;
                    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '-') {
                        i += 1;
                    }
                    chars[start..i].iter().collect()
                }
            };
            tokens.push(Tok::Env(name));
            continue;
        }
        if c == '$' {
            let start = i + 1;
            i = start;
            while i < chars.len() && chars[i].is_alphanumeric() {
                i += 1;
            }
            tokens.push(Tok::Special(chars[start..i].iter().collect()));
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < chars.len() && chars[i] == '.' && chars[i + 1].is_ascii_digit() {
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
            }
            tokens.push(Tok::Number(chars[start..i].iter().collect()));
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Tok::Ident(chars[start..i].iter().collect()));
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        match OPERATORS.iter().find(|op| rest.starts_with(**op)) {
            Some(op) => {
                tokens.push(Tok::Op(op));
                i += op.chars().count();
            }
            None => return error(format!("unexpected '{c}' at {i}")),
        }
    }
    tokens.push(Tok::End);
    Ok(tokens)
}

/// A quoted string or identifier starting at `start`, with its escapes resolved.
fn quoted(chars: &[char], start: usize, quote: char) -> Result<(String, usize), ParseError> {
    let mut text = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            c if c == quote => return Ok((text, i + 1)),
            '\\' => {
                let escaped = chars.get(i + 1).copied().ok_or_else(|| ParseError("unterminated escape".into()))?;
                match escaped {
                    'n' => text.push('\n'),
                    'r' => text.push('\r'),
                    't' => text.push('\t'),
                    'f' => text.push('\u{c}'),
                    'u' => {
                        let hex: String = chars.get(i + 2..i + 6).unwrap_or_default().iter().collect();
                        let code = u32::from_str_radix(&hex, 16).map_err(|_| ParseError("bad \\u escape".into()))?;
                        text.push(char::from_u32(code).ok_or_else(|| ParseError("bad \\u escape".into()))?);
                        i += 4;
                    }
                    other => text.push(other),
                }
                i += 2;
            }
            c => {
                text.push(c);
                i += 1;
            }
        }
    }
    Err(ParseError(format!("unterminated {quote}")))
}

/// Binary operators by precedence, loosest first (FHIRPath N1 §"Operator precedence").
const LEVELS: &[&[&str]] = &[
    &["implies"],
    &["or", "xor"],
    &["and"],
    &["in", "contains"],
    &["=", "~", "!=", "!~"],
    &["<=", "<", ">", ">="],
    &["|"],
    &["is", "as"],
    &["+", "-", "&"],
    &["*", "/", "div", "mod"],
];

const CALENDAR_UNITS: &[&str] = &[
    "year",
    "years",
    "month",
    "months",
    "week",
    "weeks",
    "day",
    "days",
    "hour",
    "hours",
    "minute",
    "minutes",
    "second",
    "seconds",
    "millisecond",
    "milliseconds",
];

struct Parser {
    tokens: Vec<Tok>,
    at: usize,
}

/// Parses an expression.
pub fn parse(source: &str) -> Result<Expression, ParseError> {
    let mut parser = Parser { tokens: tokenize(source)?, at: 0 };
    let root = parser.expression(0)?;
    match parser.peek() {
        Tok::End => Ok(Expression { root }),
        other => Err(ParseError(format!("unexpected {other:?} after the expression"))),
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.at]
    }

    fn next(&mut self) -> Tok {
        let token = self.tokens[self.at].clone();
        if self.at + 1 < self.tokens.len() {
            self.at += 1;
        }
        token
    }

    fn expect(&mut self, op: &str) -> Result<(), ParseError> {
        match self.next() {
            Tok::Op(found) if found == op => Ok(()),
            other => Err(ParseError(format!("expected '{op}', found {other:?}"))),
        }
    }

    /// The operator at the cursor if it belongs to precedence `level`.
    fn operator_at(&self, level: usize) -> Option<&'static str> {
        let name = match self.peek() {
            Tok::Op(op) => *op,
            Tok::Ident(word) => LEVELS[level].iter().find(|k| *k == word).copied()?,
            _ => return None,
        };
        LEVELS[level].iter().find(|k| **k == name).copied()
    }

    fn expression(&mut self, level: usize) -> Result<Ast, ParseError> {
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut left = self.expression(level + 1)?;
        while let Some(op) = self.operator_at(level) {
            self.next();
            if op == "is" || op == "as" {
                let type_name = self.type_specifier()?;
                left = Ast::Type(op == "is", Box::new(left), type_name);
                continue;
            }
            let right = self.expression(level + 1)?;
            left = Ast::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    /// `Patient`, `FHIR.Patient`, `System.String`: the name (qualifier kept).
    fn type_specifier(&mut self) -> Result<String, ParseError> {
        let mut name = self.identifier()?;
        while self.peek() == &Tok::Op(".") {
            self.next();
            name = format!("{name}.{}", self.identifier()?);
        }
        Ok(name)
    }

    fn identifier(&mut self) -> Result<String, ParseError> {
        match self.next() {
            Tok::Ident(name) | Tok::Delimited(name) => Ok(name),
            other => Err(ParseError(format!("expected a name, found {other:?}"))),
        }
    }

    fn unary(&mut self) -> Result<Ast, ParseError> {
        match self.peek() {
            Tok::Op("-") => {
                self.next();
                Ok(Ast::Negate(Box::new(self.unary()?)))
            }
            Tok::Op("+") => {
                self.next();
                self.unary()
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Ast, ParseError> {
        let mut node = self.term()?;
        loop {
            match self.peek() {
                Tok::Op(".") => {
                    self.next();
                    let name = self.identifier()?;
                    node = match self.peek() {
                        Tok::Op("(") => Ast::Call(Some(Box::new(node)), name.clone(), self.arguments()?),
                        _ => Ast::Member(Box::new(node), name),
                    };
                }
                Tok::Op("[") => {
                    self.next();
                    let index = self.expression(0)?;
                    self.expect("]")?;
                    node = Ast::Indexer(Box::new(node), Box::new(index));
                }
                _ => return Ok(node),
            }
        }
    }

    fn arguments(&mut self) -> Result<Vec<Ast>, ParseError> {
        self.expect("(")?;
        let mut arguments = Vec::new();
        if self.peek() == &Tok::Op(")") {
            self.next();
            return Ok(arguments);
        }
        loop {
            arguments.push(self.expression(0)?);
            match self.next() {
                Tok::Op(",") => continue,
                Tok::Op(")") => return Ok(arguments),
                other => return Err(ParseError(format!("expected ',' or ')', found {other:?}"))),
            }
        }
    }

    fn term(&mut self) -> Result<Ast, ParseError> {
        match self.next() {
            Tok::Op("(") => {
                let inner = self.expression(0)?;
                self.expect(")")?;
                Ok(inner)
            }
            Tok::Op("{") => {
                self.expect("}")?;
                Ok(Ast::Empty)
            }
            Tok::Str(text) => Ok(Ast::Literal(Literal::Str(text))),
            Tok::Temporal(text) => Ok(Ast::Literal(Literal::Temporal(text))),
            Tok::Number(text) => self.number(text),
            Tok::Env(name) => Ok(Ast::Env(name)),
            Tok::Special(name) => Ok(Ast::Special(name)),
            Tok::Ident(word) if word == "true" || word == "false" => Ok(Ast::Literal(Literal::Bool(word == "true"))),
            Tok::Ident(name) | Tok::Delimited(name) => match self.peek() {
                Tok::Op("(") => Ok(Ast::Call(None, name, self.arguments()?)),
                _ => Ok(Ast::Ident(name)),
            },
            other => Err(ParseError(format!("unexpected {other:?}"))),
        }
    }

    /// A number, or a quantity when a unit follows (`4 'mg'`, `2 days`).
    fn number(&mut self, text: String) -> Result<Ast, ParseError> {
        let value = Decimal::from_str(&text).map_err(|_| ParseError(format!("bad number {text}")))?;
        let unit = match self.peek() {
            Tok::Str(unit) => Some(unit.clone()),
            Tok::Ident(word) if CALENDAR_UNITS.contains(&word.as_str()) => Some(word.clone()),
            _ => None,
        };
        if let Some(unit) = unit {
            self.next();
            return Ok(Ast::Literal(Literal::Quantity(value, unit)));
        }
        Ok(Ast::Literal(match text.contains('.') {
            true => Literal::Dec(value),
            false => text.parse().map(Literal::Int).unwrap_or(Literal::Dec(value)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_invocations() {
        let parsed = parse("a.b.where(c = 1) implies d or e and f.exists()").unwrap();
        let Ast::Binary("implies", left, right) = parsed.root else { panic!("implies is loosest") };
        assert!(matches!(*left, Ast::Call(Some(_), ref name, _) if name == "where"));
        assert!(matches!(*right, Ast::Binary("or", _, _)));
        assert!(matches!(parse("Observation.value is Quantity").unwrap().root, Ast::Type(true, _, _)));
        assert!(matches!(parse("4 'mg'").unwrap().root, Ast::Literal(Literal::Quantity(..))));
        assert!(matches!(parse("-1.5").unwrap().root, Ast::Negate(_)));
        assert!(parse("a.").is_err());
        assert!(parse("'unterminated").is_err());
    }
}
