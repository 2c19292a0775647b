//! FHIRPath's operators and functions (N1 §5 and §6), and the FHIR additions invariants use
//! (`extension()`, `hasValue()`, `resolve()`, `htmlChecks()`).

use std::cmp::Ordering;
use std::str::FromStr;

use rust_decimal::prelude::{MathematicalOps, ToPrimitive};
use rust_decimal::Decimal;
use serde_json::Value;

use crate::eval::{number_of, same_unit, truth, Collection, EvalError, Evaluator, Result, Scope};
use crate::parser::Ast;
use crate::value::{days_from_civil, Item, Node, Precision, Temporal};

/// A binary operator on two evaluated operands.
pub(crate) fn operator<'a>(op: &str, l: Collection<'a>, r: Collection<'a>) -> Result<Collection<'a>> {
    let boolean = |b: Option<bool>| b.map(|b| vec![Item::Bool(b)]).unwrap_or_default();
    Ok(match op {
        "and" => boolean(match (truth(&l)?, truth(&r)?) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        }),
        "or" => boolean(match (truth(&l)?, truth(&r)?) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        }),
        "xor" => boolean(match (truth(&l)?, truth(&r)?) {
            (Some(a), Some(b)) => Some(a != b),
            _ => None,
        }),
        "implies" => boolean(match (truth(&l)?, truth(&r)?) {
            (Some(false), _) | (_, Some(true)) => Some(true),
            (Some(true), Some(false)) => Some(false),
            _ => None,
        }),
        "=" | "!=" => {
            if l.is_empty() || r.is_empty() {
                return Ok(Vec::new());
            }
            let equal = if l.len() != r.len() {
                Some(false)
            } else {
                let mut all = Some(true);
                for (a, b) in l.iter().zip(&r) {
                    match a.equals(b) {
                        Some(true) => {}
                        Some(false) => {
                            all = Some(false);
                            break;
                        }
                        None => all = None,
                    }
                }
                all
            };
            boolean(equal.map(|e| e == (op == "=")))
        }
        "~" | "!~" => {
            let equivalent = l.len() == r.len() && l.iter().all(|a| r.iter().any(|b| a.equivalent(b)));
            vec![Item::Bool(equivalent == (op == "~"))]
        }
        "<" | ">" | "<=" | ">=" => match (single(&l)?, single(&r)?) {
            (Some(a), Some(b)) => match a.compare(&b) {
                Some(ordering) => vec![Item::Bool(match op {
                    "<" => ordering == Ordering::Less,
                    ">" => ordering == Ordering::Greater,
                    "<=" => ordering != Ordering::Greater,
                    _ => ordering != Ordering::Less,
                })],
                None if comparable(&a, &b) => Vec::new(),
                None => return Err(EvalError(format!("cannot compare {a:?} with {b:?}"))),
            },
            _ => Vec::new(),
        },
        "|" => union(l, r),
        "in" | "contains" => {
            let (needle, haystack) = if op == "in" { (l, r) } else { (r, l) };
            match needle.as_slice() {
                [] => Vec::new(),
                [item] => vec![Item::Bool(haystack.iter().any(|h| h.equals(item) == Some(true)))],
                _ => return Err(EvalError(format!("'{op}' needs a single item"))),
            }
        }
        "&" => {
            let text =
                |c: &Collection<'a>| -> Result<String> { Ok(single(c)?.and_then(|i| i.as_str()).unwrap_or_default()) };
            vec![Item::Str(text(&l)? + &text(&r)?)]
        }
        "+" | "-" | "*" | "/" | "div" | "mod" => match (single(&l)?, single(&r)?) {
            (Some(a), Some(b)) => arithmetic(op, &a.to_system(), &b.to_system())?.into_iter().collect(),
            _ => Vec::new(),
        },
        other => return Err(EvalError(format!("unknown operator {other}"))),
    })
}

fn comparable(a: &Item<'_>, b: &Item<'_>) -> bool {
    matches!(
        (a.to_system(), b.to_system()),
        (
            Item::Date(_) | Item::DateTime(_) | Item::Time(_) | Item::Str(_),
            Item::Date(_) | Item::DateTime(_) | Item::Time(_) | Item::Str(_)
        ) | (Item::Quantity(..), Item::Quantity(..))
    )
}

fn arithmetic<'a>(op: &str, a: &Item<'a>, b: &Item<'a>) -> Result<Option<Item<'a>>> {
    if let (Item::Str(x), Item::Str(y), "+") = (a, b, op) {
        return Ok(Some(Item::Str(format!("{x}{y}"))));
    }
    if let (Item::Date(t) | Item::DateTime(t), Item::Quantity(amount, unit)) = (a, b) {
        let sign = match op {
            "+" => 1,
            "-" => -1,
            _ => return Err(EvalError(format!("cannot {op} a quantity and a date"))),
        };
        let shifted = shift(t, *amount * Decimal::from(sign), unit)?;
        return Ok(Some(if matches!(a, Item::Date(_)) { Item::Date(shifted) } else { Item::DateTime(shifted) }));
    }
    if let (Item::Quantity(x, u), Item::Quantity(y, v)) = (a, b) {
        return Ok(match op {
            "+" if same_unit(u, v) => Some(Item::Quantity(x + y, u.clone())),
            "-" if same_unit(u, v) => Some(Item::Quantity(x - y, u.clone())),
            _ => None,
        });
    }
    let (Some(x), Some(y)) = (a.number(), b.number()) else {
        return Err(EvalError(format!("'{op}' needs numbers")));
    };
    let integers = matches!((a, b), (Item::Int(_), Item::Int(_)));
    let number = |d: Decimal| match integers {
        true => d.to_i64().map(Item::Int).unwrap_or(Item::Dec(d)),
        false => Item::Dec(d),
    };
    Ok(match op {
        "+" => x.checked_add(y).map(number),
        "-" => x.checked_sub(y).map(number),
        "*" => x.checked_mul(y).map(number),
        "/" => x.checked_div(y).map(|d| Item::Dec(d.round_dp(8).normalize())),
        "div" => x.checked_div(y).map(|d| number(d.trunc())),
        _ => x.checked_rem(y).map(number),
    })
}

/// A date moved by a calendar quantity (`1 year`, `3 'mo'`, `7 days`).
fn shift(t: &Temporal, amount: Decimal, unit: &str) -> Result<Temporal> {
    let whole = amount.trunc().to_i64().ok_or_else(|| EvalError("quantity too large".into()))?;
    let mut shifted = t.clone();
    let civil = |t: &mut Temporal, days: i64| {
        let (y, m, d) = civil_from_days(days_from_civil(t.year, t.month, t.day) + days);
        (t.year, t.month, t.day) = (y, m, d);
    };
    match crate::value::canonical_unit(unit) {
        "a" | "years" => shifted.year += whole as i32,
        "mo" | "months" => {
            let months = i64::from(t.year) * 12 + i64::from(t.month) - 1 + whole;
            shifted.year = months.div_euclid(12) as i32;
            shifted.month = months.rem_euclid(12) as u32 + 1;
        }
        "wk" => civil(&mut shifted, whole * 7),
        "d" => civil(&mut shifted, whole),
        "h" | "min" | "s" => {
            let minutes = match crate::value::canonical_unit(unit) {
                "h" => whole * 60,
                "min" => whole,
                _ => whole / 60,
            };
            let total = i64::from(t.hour) * 60 + i64::from(t.minute) + minutes;
            civil(&mut shifted, total.div_euclid(1440));
            shifted.hour = (total.rem_euclid(1440) / 60) as u32;
            shifted.minute = (total.rem_euclid(60)) as u32;
        }
        other => return Err(EvalError(format!("cannot move a date by '{other}'"))),
    }
    if shifted.precision < Precision::Day {
        shifted.day = 1;
    }
    Ok(shifted)
}

fn civil_from_days(days: i64) -> (i32, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((yoe + era * 400 + i64::from(month <= 2)) as i32, month, day)
}

/// The single item of a collection (`None` when empty; an error when there are several).
fn single<'a>(collection: &[Item<'a>]) -> Result<Option<Item<'a>>> {
    match collection {
        [] => Ok(None),
        [item] => Ok(Some(item.clone())),
        _ => Err(EvalError(format!("a single item was expected, found {}", collection.len()))),
    }
}

fn union<'a>(l: Collection<'a>, r: Collection<'a>) -> Collection<'a> {
    let mut out: Collection<'a> = Vec::new();
    for item in l.into_iter().chain(r) {
        if !out.iter().any(|o| o.equals(&item) == Some(true)) {
            out.push(item);
        }
    }
    out
}

fn distinct<'a>(input: &[Item<'a>]) -> Collection<'a> {
    union(input.to_vec(), Vec::new())
}

impl<'c, 'a> Evaluator<'c, 'a> {
    /// A function call on `input`.
    pub(crate) fn call(
        &self,
        name: &str,
        input: &[Item<'a>],
        args: &[Ast],
        focus: &[Item<'a>],
        scope: &Scope<'a>,
    ) -> Result<Collection<'a>> {
        let arg = |i: usize| -> Result<Collection<'a>> {
            match args.get(i) {
                Some(ast) => self.eval(ast, focus, scope),
                None => Err(EvalError(format!("{name}() needs argument {}", i + 1))),
            }
        };
        let text_arg = |i: usize| -> Result<Option<String>> { Ok(single(&arg(i)?)?.and_then(|item| item.as_str())) };
        let int_arg = |i: usize| -> Result<Option<i64>> {
            Ok(single(&arg(i)?)?.and_then(|item| match item.to_system() {
                Item::Int(n) => Some(n),
                _ => None,
            }))
        };
        let boolean = |b: bool| vec![Item::Bool(b)];
        let type_arg = |i: usize| -> Result<String> {
            match args.get(i) {
                Some(Ast::Ident(name)) => Ok(name.clone()),
                Some(Ast::Member(parent, name)) => match parent.as_ref() {
                    Ast::Ident(ns) => Ok(format!("{ns}.{name}")),
                    _ => Err(EvalError("a type name was expected".into())),
                },
                _ => Err(EvalError(format!("{name}() needs a type name"))),
            }
        };
        let string_input = || -> Result<Option<String>> { Ok(single(input)?.and_then(|i| i.as_str())) };
        Ok(match name {
            "empty" => boolean(input.is_empty()),
            "exists" => match args.first() {
                None => boolean(!input.is_empty()),
                Some(criteria) => boolean(!self.filter(input, criteria)?.is_empty()),
            },
            "all" => {
                let mut all = true;
                for (index, item) in input.iter().enumerate() {
                    let result = self.each(item, index, &args[0])?;
                    if truth(&result)? != Some(true) {
                        all = false;
                        break;
                    }
                }
                boolean(all)
            }
            "allTrue" | "anyTrue" | "allFalse" | "anyFalse" => {
                let values: Vec<bool> = input
                    .iter()
                    .filter_map(|i| if let Item::Bool(b) = i.to_system() { Some(b) } else { None })
                    .collect();
                boolean(match name {
                    "allTrue" => values.iter().all(|b| *b),
                    "anyTrue" => values.iter().any(|b| *b),
                    "allFalse" => values.iter().all(|b| !*b),
                    _ => values.iter().any(|b| !*b),
                })
            }
            "subsetOf" | "supersetOf" => {
                let other = arg(0)?;
                let (small, big) = if name == "subsetOf" { (input.to_vec(), other) } else { (other, input.to_vec()) };
                boolean(small.iter().all(|s| big.iter().any(|b| b.equals(s) == Some(true))))
            }
            "count" => vec![Item::Int(input.len() as i64)],
            "distinct" => distinct(input),
            "isDistinct" => boolean(distinct(input).len() == input.len()),
            "where" => self.filter(input, &args[0])?,
            "select" => {
                let mut out = Vec::new();
                for (index, item) in input.iter().enumerate() {
                    out.extend(self.each(item, index, &args[0])?);
                }
                out
            }
            "repeat" => {
                let mut out: Collection<'a> = Vec::new();
                let mut frontier = input.to_vec();
                while !frontier.is_empty() {
                    let mut next = Vec::new();
                    for (index, item) in frontier.iter().enumerate() {
                        for found in self.each(item, index, &args[0])? {
                            if !out.iter().any(|o| same_node(o, &found)) {
                                out.push(found.clone());
                                next.push(found);
                            }
                        }
                    }
                    frontier = next;
                }
                out
            }
            "ofType" => {
                let type_name = type_arg(0)?;
                input.iter().filter(|item| self.is_type(item, &type_name)).cloned().collect()
            }
            "is" | "as" => self.type_test(name == "is", input, &type_arg(0)?, &format!("{name}()"))?,
            "first" => input.first().cloned().into_iter().collect(),
            "last" => input.last().cloned().into_iter().collect(),
            "tail" => input.iter().skip(1).cloned().collect(),
            "skip" => match int_arg(0)? {
                Some(n) => input.iter().skip(n.max(0) as usize).cloned().collect(),
                None => Vec::new(),
            },
            "take" => match int_arg(0)? {
                Some(n) => input.iter().take(n.max(0) as usize).cloned().collect(),
                None => Vec::new(),
            },
            "single" => single(input)?.into_iter().collect(),
            "intersect" => {
                let other = arg(0)?;
                distinct(
                    &input
                        .iter()
                        .filter(|i| other.iter().any(|o| o.equals(i) == Some(true)))
                        .cloned()
                        .collect::<Vec<_>>(),
                )
            }
            "exclude" => {
                let other = arg(0)?;
                input.iter().filter(|i| !other.iter().any(|o| o.equals(i) == Some(true))).cloned().collect()
            }
            "union" => union(input.to_vec(), arg(0)?),
            "combine" => input.iter().cloned().chain(arg(0)?).collect(),
            "iif" => {
                let this = match input {
                    [item] => Some(item.clone()),
                    _ => scope.this.clone(),
                };
                let inner = Scope { this, ..scope.clone() };
                let condition = self.eval(&args[0], focus, &inner)?;
                match truth(&condition)? {
                    Some(true) => self.eval(&args[1], focus, &inner)?,
                    _ => match args.get(2) {
                        Some(otherwise) => self.eval(otherwise, focus, &inner)?,
                        None => Vec::new(),
                    },
                }
            }
            "not" => match truth(input)? {
                Some(b) => boolean(!b),
                None => Vec::new(),
            },
            "toInteger" | "convertsToInteger" => convert(name, input, to_integer)?,
            "toDecimal" | "convertsToDecimal" => convert(name, input, to_decimal)?,
            "toString" | "convertsToString" => convert(name, input, to_string)?,
            "toBoolean" | "convertsToBoolean" => convert(name, input, to_boolean)?,
            "toDate" | "convertsToDate" => convert(name, input, |i| to_temporal(i, "date"))?,
            "toDateTime" | "convertsToDateTime" => convert(name, input, |i| to_temporal(i, "dateTime"))?,
            "toTime" | "convertsToTime" => convert(name, input, |i| to_temporal(i, "time"))?,
            "toQuantity" | "convertsToQuantity" => convert(name, input, to_quantity)?,
            "indexOf" => match (string_input()?, text_arg(0)?) {
                (Some(s), Some(sub)) => vec![Item::Int(s.find(&sub).map_or(-1, |at| s[..at].chars().count() as i64))],
                _ => Vec::new(),
            },
            "substring" => match (string_input()?, int_arg(0)?) {
                (Some(s), Some(start)) => {
                    let chars: Vec<char> = s.chars().collect();
                    if start < 0 || start as usize >= chars.len() {
                        Vec::new()
                    } else {
                        let length = match args.get(1) {
                            Some(_) => int_arg(1)?.unwrap_or(0).max(0) as usize,
                            None => chars.len(),
                        };
                        vec![Item::Str(chars.iter().skip(start as usize).take(length).collect())]
                    }
                }
                _ => Vec::new(),
            },
            "startsWith" | "endsWith" | "contains" => match (string_input()?, text_arg(0)?) {
                (Some(s), Some(part)) => boolean(match name {
                    "startsWith" => s.starts_with(&part),
                    "endsWith" => s.ends_with(&part),
                    _ => s.contains(&part),
                }),
                _ => Vec::new(),
            },
            "escape" | "unescape" => match (string_input()?, text_arg(0)?) {
                (Some(s), Some(target)) => escaped(name == "escape", &target, &s).map(Item::Str).into_iter().collect(),
                _ => Vec::new(),
            },
            "upper" => string_input()?.map(|s| Item::Str(s.to_uppercase())).into_iter().collect(),
            "lower" => string_input()?.map(|s| Item::Str(s.to_lowercase())).into_iter().collect(),
            "length" => string_input()?.map(|s| Item::Int(s.chars().count() as i64)).into_iter().collect(),
            "toChars" => {
                string_input()?.map(|s| s.chars().map(|c| Item::Str(c.to_string())).collect()).unwrap_or_default()
            }
            "trim" => string_input()?.map(|s| Item::Str(s.trim().to_string())).into_iter().collect(),
            "replace" => match (string_input()?, text_arg(0)?, text_arg(1)?) {
                (Some(s), Some(from), Some(to)) => vec![Item::Str(match from.is_empty() {
                    true => s.chars().map(|c| format!("{to}{c}")).collect::<String>() + &to,
                    false => s.replace(&from, &to),
                })],
                _ => Vec::new(),
            },
            "matches" => match (string_input()?, text_arg(0)?) {
                (Some(s), Some(pattern)) => boolean(regex(&format!("^(?:{pattern})$"))?.is_match(&s)),
                _ => Vec::new(),
            },
            "replaceMatches" => match (string_input()?, text_arg(0)?, text_arg(1)?) {
                (Some(s), Some(pattern), Some(to)) => {
                    let to = to.replace("$", "$$").replace("$$1", "${1}").replace("$$2", "${2}");
                    vec![Item::Str(regex(&pattern)?.replace_all(&s, to.as_str()).into_owned())]
                }
                _ => Vec::new(),
            },
            "children" => self.children(input),
            "descendants" => {
                let mut out = Vec::new();
                let mut frontier = self.children(input);
                while !frontier.is_empty() {
                    out.extend(frontier.iter().cloned());
                    frontier = self.children(&frontier);
                }
                out
            }
            "trace" => input.to_vec(),
            "hasValue" => {
                boolean(matches!(input, [Item::Node(Node { value: Some(v), .. })] if !v.is_object() && !v.is_array()))
            }
            "getValue" => match input {
                [Item::Node(Node { value: Some(v), .. })] if !v.is_object() => vec![input[0].to_system()],
                _ => Vec::new(),
            },
            "extension" => {
                let url = text_arg(0)?;
                self.members(input, "extension")
                    .into_iter()
                    .filter(|e| {
                        let Item::Node(node) = e else { return false };
                        node.value.and_then(|v| v.get("url")).and_then(Value::as_str) == url.as_deref()
                    })
                    .collect()
            }
            "resolve" => self.resolve(input),
            // The narrative's XHTML is checked natively (Hearth's txt-1 and txt-2).
            "htmlChecks" | "conformsTo" => boolean(true),
            "memberOf" => Vec::new(),
            "now" => vec![Item::DateTime(now(true))],
            "today" => vec![Item::Date(now(false))],
            "timeOfDay" => {
                let mut time = now(true);
                time.time_only = true;
                vec![Item::Time(time)]
            }
            "abs" | "ceiling" | "floor" | "truncate" | "sqrt" | "ln" | "exp" | "round" | "log" | "power" => {
                self.math(name, input, args, focus, scope)?
            }
            "aggregate" => {
                let mut total = match args.get(1) {
                    Some(init) => self.eval(init, focus, scope)?,
                    None => Vec::new(),
                };
                for (index, item) in input.iter().enumerate() {
                    let inner = Scope { this: Some(item.clone()), index: Some(index), total: Some(total.clone()) };
                    total = self.eval(&args[0], std::slice::from_ref(item), &inner)?;
                }
                total
            }
            other => return Err(EvalError(format!("unknown function {other}()"))),
        })
    }

    /// `criteria` evaluated for one item of `input` (with `$this` and `$index`).
    fn each(&self, item: &Item<'a>, index: usize, criteria: &Ast) -> Result<Collection<'a>> {
        let scope = Scope { this: Some(item.clone()), index: Some(index), total: None };
        self.eval(criteria, std::slice::from_ref(item), &scope)
    }

    fn filter(&self, input: &[Item<'a>], criteria: &Ast) -> Result<Collection<'a>> {
        let mut out = Vec::new();
        for (index, item) in input.iter().enumerate() {
            if truth(&self.each(item, index, criteria)?)? == Some(true) {
                out.push(item.clone());
            }
        }
        Ok(out)
    }

    fn children(&self, input: &[Item<'a>]) -> Collection<'a> {
        let mut out = Vec::new();
        for item in input {
            let Item::Node(node) = item else { continue };
            let Some(Value::Object(object)) = node.value else { continue };
            let keys: Vec<&String> = object.keys().filter(|k| !k.starts_with('_') && *k != "resourceType").collect();
            for key in keys {
                let mut found = self.members(std::slice::from_ref(item), key);
                if found.is_empty() {
                    // A choice element's key, navigated by its own name.
                    let companion = object.get(&format!("_{key}"));
                    let node = Item::Node(Node { value: object.get(key.as_str()), companion, type_name: None });
                    found = match object.get(key.as_str()) {
                        Some(Value::Array(items)) => items.iter().map(|v| Item::Node(Node::new(v, None))).collect(),
                        _ => vec![node],
                    };
                }
                out.extend(found);
            }
        }
        out
    }

    /// `resolve()`: local references to contained resources, and to resources of the same
    /// Bundle are not followed (no I/O here): only `#id` within `%resource` resolves.
    fn resolve(&self, input: &[Item<'a>]) -> Collection<'a> {
        let contained = self.context.resource.get("contained").and_then(Value::as_array);
        let mut out = Vec::new();
        for item in input {
            let reference = match item {
                Item::Node(node) => node.value.and_then(|v| v.get("reference").or(Some(v))).and_then(Value::as_str),
                _ => None,
            };
            let Some(id) = reference.and_then(|r| r.strip_prefix('#')) else { continue };
            if let Some(found) =
                contained.into_iter().flatten().find(|c| c.get("id").and_then(Value::as_str) == Some(id))
            {
                out.push(Item::Node(Node::new(found, None)));
            }
        }
        out
    }

    fn math(
        &self,
        name: &str,
        input: &[Item<'a>],
        args: &[Ast],
        focus: &[Item<'a>],
        scope: &Scope<'a>,
    ) -> Result<Collection<'a>> {
        let Some(item) = single(input)?.map(|i| i.to_system()) else { return Ok(Vec::new()) };
        if let Item::Quantity(amount, unit) = &item {
            if name == "abs" {
                return Ok(vec![Item::Quantity(amount.abs(), unit.clone())]);
            }
        }
        let Some(x) = item.number() else { return Err(EvalError(format!("{name}() needs a number"))) };
        let integer = matches!(item, Item::Int(_));
        let argument = |i: usize| -> Result<Option<Decimal>> {
            match args.get(i) {
                Some(ast) => Ok(single(&self.eval(ast, focus, scope)?)?.and_then(|i| number_of(&i))),
                None => Ok(None),
            }
        };
        let int = |d: Decimal| d.to_i64().map(Item::Int);
        Ok(match name {
            "abs" => vec![if integer { Item::Int(x.abs().to_i64().unwrap_or_default()) } else { Item::Dec(x.abs()) }],
            "ceiling" => int(x.ceil()).into_iter().collect(),
            "floor" => int(x.floor()).into_iter().collect(),
            "truncate" => int(x.trunc()).into_iter().collect(),
            "round" => {
                let places = argument(0)?.and_then(|p| p.to_u32()).unwrap_or(0);
                vec![Item::Dec(x.round_dp(places))]
            }
            "sqrt" => x.sqrt().map(Item::Dec).into_iter().collect(),
            "ln" => x.checked_ln().map(Item::Dec).into_iter().collect(),
            "exp" => x.checked_exp().map(Item::Dec).into_iter().collect(),
            "log" => match argument(0)? {
                Some(base) => match (x.checked_ln(), base.checked_ln()) {
                    (Some(a), Some(b)) if !b.is_zero() => vec![Item::Dec((a / b).round_dp(8).normalize())],
                    _ => Vec::new(),
                },
                None => Vec::new(),
            },
            _ => match argument(0)? {
                Some(exponent) if x.is_sign_negative() && !exponent.fract().is_zero() => Vec::new(),
                Some(exponent) => match (integer && exponent.fract().is_zero(), x.checked_powd(exponent)) {
                    (true, Some(p)) => int(p).into_iter().collect(),
                    (false, Some(p)) => vec![Item::Dec(p.normalize())],
                    _ => Vec::new(),
                },
                None => Vec::new(),
            },
        })
    }
}

/// Whether two items are the same node of the resource (for `repeat`).
fn same_node(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (a, b) {
        (Item::Node(x), Item::Node(y)) => match (x.value, y.value) {
            (Some(p), Some(q)) => std::ptr::eq(p, q),
            _ => false,
        },
        _ => a.equals(b) == Some(true),
    }
}

/// The compiled `pattern`. Compiled patterns are kept per thread: invariants apply the same few
/// patterns to every element they check (a failing one is compiled again, and fails again).
fn regex(pattern: &str) -> Result<regex::Regex> {
    /// Patterns kept at most (they may come from data): beyond, the cache starts over.
    const KEPT: usize = 256;
    thread_local!(static COMPILED: std::cell::RefCell<std::collections::HashMap<String, regex::Regex>> = Default::default());
    COMPILED.with_borrow_mut(|compiled| {
        if let Some(found) = compiled.get(pattern) {
            return Ok(found.clone());
        }
        let fresh = regex::Regex::new(pattern).map_err(|e| EvalError(format!("bad regular expression: {e}")))?;
        if compiled.len() >= KEPT {
            compiled.clear();
        }
        compiled.insert(pattern.to_string(), fresh.clone());
        Ok(fresh)
    })
}

/// `toX()` or `convertsToX()` of a single item.
fn convert<'a>(name: &str, input: &[Item<'a>], to: impl Fn(&Item<'a>) -> Option<Item<'a>>) -> Result<Collection<'a>> {
    let Some(item) = single(input)? else { return Ok(Vec::new()) };
    let converted = to(&item.to_system());
    Ok(match name.starts_with("convertsTo") {
        true => vec![Item::Bool(converted.is_some())],
        false => converted.into_iter().collect(),
    })
}

fn to_integer<'a>(item: &Item<'a>) -> Option<Item<'a>> {
    match item {
        Item::Int(i) => Some(Item::Int(*i)),
        Item::Bool(b) => Some(Item::Int(i64::from(*b))),
        Item::Str(s) => {
            let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok().map(Item::Int))
                .flatten()
        }
        _ => None,
    }
}

fn to_decimal<'a>(item: &Item<'a>) -> Option<Item<'a>> {
    match item {
        Item::Int(i) => Some(Item::Dec(Decimal::from(*i))),
        Item::Dec(d) => Some(Item::Dec(*d)),
        Item::Bool(b) => Some(Item::Dec(Decimal::from(i64::from(*b)))),
        Item::Str(s) => {
            let plain = s.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'+');
            plain.then(|| Decimal::from_str(s).ok().map(Item::Dec)).flatten()
        }
        _ => None,
    }
}

fn to_string<'a>(item: &Item<'a>) -> Option<Item<'a>> {
    let text = |t: &Temporal| {
        let mut s = format!("{:04}", t.year);
        if t.time_only {
            s = String::new();
        } else {
            if t.precision >= Precision::Month {
                s += &format!("-{:02}", t.month);
            }
            if t.precision >= Precision::Day {
                s += &format!("-{:02}", t.day);
            }
            if t.precision >= Precision::Hour {
                s.push('T');
            }
        }
        if t.precision >= Precision::Hour || t.time_only {
            s += &format!("{:02}", t.hour);
        }
        if t.precision >= Precision::Minute {
            s += &format!(":{:02}", t.minute);
        }
        if t.precision >= Precision::Second {
            s += &format!(":{:02}", t.millis / 1000);
            if !t.millis.is_multiple_of(1000) {
                s += &format!(".{:03}", t.millis % 1000);
            }
        }
        if let Some(offset) = t.offset.filter(|_| !t.time_only && t.precision >= Precision::Hour) {
            s += &match offset {
                0 => "Z".to_string(),
                o => format!("{}{:02}:{:02}", if o < 0 { '-' } else { '+' }, o.abs() / 60, o.abs() % 60),
            };
        }
        s
    };
    Some(Item::Str(match item {
        Item::Str(s) => s.clone(),
        Item::Bool(b) => b.to_string(),
        Item::Int(i) => i.to_string(),
        Item::Dec(d) => d.to_string(),
        Item::Quantity(d, u) if crate::value::canonical_unit(u) != u || u == "year" || u == "month" => {
            format!("{d} {u}")
        }
        Item::Quantity(d, u) => format!("{d} '{u}'"),
        Item::Date(t) | Item::DateTime(t) | Item::Time(t) => text(t),
        Item::Node(_) => return None,
    }))
}

fn to_boolean<'a>(item: &Item<'a>) -> Option<Item<'a>> {
    match item {
        Item::Bool(b) => Some(Item::Bool(*b)),
        Item::Int(1) => Some(Item::Bool(true)),
        Item::Int(0) => Some(Item::Bool(false)),
        Item::Dec(d) if *d == Decimal::ONE => Some(Item::Bool(true)),
        Item::Dec(d) if d.is_zero() => Some(Item::Bool(false)),
        Item::Str(s) => match s.to_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(Item::Bool(true)),
            "false" | "f" | "no" | "n" | "0" | "0.0" => Some(Item::Bool(false)),
            _ => None,
        },
        _ => None,
    }
}

fn to_temporal<'a>(item: &Item<'a>, kind: &str) -> Option<Item<'a>> {
    let parsed = |text: &str| Temporal::parse(text, kind == "time");
    match (item, kind) {
        (Item::Str(s), "date") => parsed(s).filter(|t| t.precision <= Precision::Day).map(Item::Date),
        (Item::Str(s), "dateTime") => parsed(s).map(Item::DateTime),
        (Item::Str(s), _) => parsed(s).map(Item::Time),
        (Item::Date(t), "date") | (Item::DateTime(t), "date") => {
            Some(Item::Date(Temporal { precision: t.precision.min(Precision::Day), offset: None, ..t.clone() }))
        }
        (Item::Date(t) | Item::DateTime(t), "dateTime") => Some(Item::DateTime(t.clone())),
        (Item::Time(t), "time") => Some(Item::Time(t.clone())),
        _ => None,
    }
}

fn to_quantity<'a>(item: &Item<'a>) -> Option<Item<'a>> {
    match item {
        Item::Int(_) | Item::Dec(_) => Some(Item::Quantity(item.number()?, "1".into())),
        Item::Quantity(..) => Some(item.clone()),
        Item::Str(s) => {
            let (number, unit) = s.split_once(' ').unwrap_or((s, "'1'"));
            let unit = unit.trim().trim_matches('\'');
            Some(Item::Quantity(Decimal::from_str(number).ok()?, unit.to_string()))
        }
        _ => None,
    }
}

/// Now in UTC, as a dateTime (to the millisecond) or a date.
fn now(with_time: bool) -> Temporal {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let days = (since.as_secs() / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    let seconds = since.as_secs() % 86_400;
    Temporal {
        year,
        month,
        day,
        hour: (seconds / 3600) as u32,
        minute: (seconds % 3600 / 60) as u32,
        millis: (seconds % 60) as u32 * 1000 + since.subsec_millis(),
        precision: if with_time { Precision::Second } else { Precision::Day },
        offset: with_time.then_some(0),
        time_only: false,
    }
}

/// `escape(target)` (or `unescape`) of `text` for `html` or `json`; `None` for another target or
/// JSON escapes that do not decode.
fn escaped(escape: bool, target: &str, text: &str) -> Option<String> {
    const HTML: [(&str, &str); 5] = [("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("\"", "&quot;"), ("'", "&#39;")];
    match (target, escape) {
        ("html", true) => Some(HTML.iter().fold(text.to_string(), |s, (plain, entity)| s.replace(plain, entity))),
        ("html", false) => {
            Some(HTML.iter().rev().fold(text.to_string(), |s, (plain, entity)| s.replace(entity, plain)))
        }
        ("json", true) => {
            let quoted = serde_json::to_string(text).ok()?;
            Some(quoted[1..quoted.len() - 1].to_string())
        }
        ("json", false) => serde_json::from_str(&format!("\"{text}\"")).ok(),
        _ => None,
    }
}
