//! The search questions the store can answer: a resource type and an AND of ORs of conditions
//! over the index tables. The `search` layer parses URLs into this; the store turns it into SQL.

/// Which code system a token condition requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSystem {
    /// `code`: any system.
    Any,
    /// `|code`: no system.
    None,
    /// `system|code` or `system|`.
    Is(String),
}

/// How a string condition compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMatch {
    /// Case- and accent-insensitive prefix (the default).
    Prefix,
    /// Case- and accent-insensitive substring (`:contains`).
    Contains,
    /// Exact, case-sensitive (`:exact`).
    Exact,
}

/// How an indexed value or interval compares with the searched one (FHIR search prefixes).
/// For dates both sides are intervals `[low, high)`; for numbers and quantities the indexed
/// value is a point and `[low, high)` is the searched value with its implicit precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    /// Starts after the searched interval.
    Sa,
    /// Ends before the searched interval.
    Eb,
}

/// One condition on a resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `_id`.
    Id(String),
    /// A token parameter. `code = None` matches any code of the system.
    Token { param: String, system: TokenSystem, code: Option<String> },
    /// A string parameter; `value` is normalised for Prefix/Contains.
    String { param: String, value: String, matching: StringMatch },
    /// A reference to a local resource; `target_type = None` matches any type.
    Reference { param: String, target_type: Option<String>, target_id: String },
    /// A reference by absolute URL (canonical or external).
    ReferenceUrl { param: String, url: String },
    /// A uri parameter, exact match.
    Uri { param: String, value: String },
    /// A date parameter against the interval `[low, high)`.
    Date { param: String, comparison: Comparison, low: i64, high: i64 },
    /// A number parameter: `value` is the number searched, `[low, high)` its precision range.
    Number { param: String, comparison: Comparison, value: f64, low: f64, high: f64 },
    /// A quantity parameter, optionally restricted to a system and a code (or unit).
    Quantity {
        param: String,
        comparison: Comparison,
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
    },
}

/// A search over one resource type, ordered by id, paged by keyset.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    pub resource_type: String,
    /// All of these groups must match; within a group any condition may match.
    pub all_of: Vec<Vec<Condition>>,
    pub count: usize,
    /// Keyset cursor: only ids after this one.
    pub after_id: Option<String>,
    /// Also count all matches.
    pub with_total: bool,
}

impl SearchQuery {
    /// A query for every resource of a type.
    pub fn new(resource_type: &str, count: usize) -> Self {
        SearchQuery {
            resource_type: resource_type.to_string(),
            all_of: Vec::new(),
            count,
            after_id: None,
            with_total: false,
        }
    }
}
