//! The search questions the store can answer: resource types, an AND of ORs of conditions over
//! the index tables (nested through chains and `_has`), sort keys and a keyset cursor. The
//! `search` layer parses URLs into this; the planner turns it into SQL.

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

/// How a uri condition compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriMatch {
    Exact,
    /// The stored uri starts with the searched one (`:below`).
    Below,
    /// The searched uri starts with the stored one (`:above`).
    Above,
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

/// The index table of a parameter kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexTable {
    Token,
    String,
    Reference,
    Uri,
    Date,
    Number,
    Quantity,
    Composite,
}

impl IndexTable {
    /// The SQL table name.
    pub fn name(self) -> &'static str {
        match self {
            IndexTable::Token => "search_token",
            IndexTable::String => "search_string",
            IndexTable::Reference => "search_reference",
            IndexTable::Uri => "search_uri",
            IndexTable::Date => "search_date",
            IndexTable::Number => "search_number",
            IndexTable::Quantity => "search_quantity",
            IndexTable::Composite => "search_composite",
        }
    }
}

/// One condition on a resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `_id`.
    Id(String),
    /// A token parameter. `code = None` matches any code of the system.
    Token { param: String, system: TokenSystem, code: Option<String> },
    /// A token parameter whose codes are paths (mime types, uris): `:below` finds codes that
    /// start with `code`, `:above` codes that `code` starts with.
    TokenHierarchy { param: String, system: TokenSystem, code: String, matching: UriMatch },
    /// A string parameter; `value` is normalised for Prefix/Contains.
    String { param: String, value: String, matching: StringMatch },
    /// A reference to a local resource; `target_type = None` matches any type.
    Reference { param: String, target_type: Option<String>, target_id: String },
    /// A reference by absolute URL (canonical or external).
    ReferenceUrl { param: String, url: String },
    /// A uri parameter.
    Uri { param: String, value: String, matching: UriMatch },
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
    /// A composite parameter: every part must match the same row.
    Composite { param: String, parts: Vec<CompositeMatch> },
    /// `:missing`: whether the resource has no index row for the parameter.
    Missing { param: String, table: IndexTable, missing: bool },
    /// Negation (`:not`).
    Not(Box<Condition>),
    /// Any of these (the comma-separated values of one criterion).
    AnyOf(Vec<Condition>),
    /// All of these (one clause of an access rule: a compartment and a scope's filter).
    AllOf(Vec<Condition>),
    /// The resource is of this type (in searches over several types).
    Type(String),
    /// A chain: the resource references, through `param`, a resource of one of `target_types` matching
    /// `condition`.
    Chain { param: String, target_types: Vec<String>, condition: Box<Condition> },
    /// Reverse chain (`_has`): some `source_type` resource references this one through `param`
    /// and matches `condition`.
    Has { source_type: String, param: String, condition: Box<Condition> },
}

/// The `param` of the conditions that test one resource's own index rows, borrowed as
/// `$condition` is (shared or mutable).
macro_rules! own_rows_param {
    ($condition:expr) => {
        match $condition {
            Condition::Token { param, .. }
            | Condition::TokenHierarchy { param, .. }
            | Condition::String { param, .. }
            | Condition::Reference { param, .. }
            | Condition::ReferenceUrl { param, .. }
            | Condition::Uri { param, .. }
            | Condition::Date { param, .. }
            | Condition::Number { param, .. }
            | Condition::Quantity { param, .. }
            | Condition::Composite { param, .. }
            | Condition::Missing { param, .. }
            | Condition::Chain { param, .. } => Some(param),
            Condition::Id(_)
            | Condition::Not(_)
            | Condition::AnyOf(_)
            | Condition::AllOf(_)
            | Condition::Type(_)
            | Condition::Has { .. } => None,
        }
    };
}

impl Condition {
    /// The parameter whose index rows a condition on one resource's own rows tests (`None`
    /// for ids, types, combinations and `_has`, whose rows are another resource's).
    pub fn param(&self) -> Option<&str> {
        own_rows_param!(self).map(String::as_str)
    }

    /// [`Condition::param`], to change.
    pub fn param_mut(&mut self) -> Option<&mut String> {
        own_rows_param!(self)
    }
}

/// How one component of a composite row must match.
#[derive(Debug, Clone, PartialEq)]
pub enum CompositeMatch {
    /// Token or reference (system/type and code/id), uri (code).
    Token { system: TokenSystem, code: Option<String> },
    /// String: normalised prefix of the code column.
    String { value: String },
    /// Number or quantity value, optionally with system and code.
    Quantity { comparison: Comparison, value: f64, low: f64, high: f64, system: Option<String>, code: Option<String> },
    /// Date interval.
    Date { comparison: Comparison, low: i64, high: i64 },
}

/// What to sort by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortBy {
    Id,
    LastUpdated,
    /// A search parameter's indexed values (the smallest ascending, the largest descending),
    /// found in the rows of `params`: its own code, or the parameters that hold its values.
    Param {
        params: Vec<String>,
        table: IndexTable,
    },
}

/// One sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub by: SortBy,
    pub descending: bool,
}

/// A sort value as carried in a cursor.
#[derive(Debug, Clone, PartialEq)]
pub enum SortValue {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

/// Where a page starts: the sort values, type and id of the anchor resource, and whether the
/// page holds the resources after it (a `next` page) or before it (a `previous` page).
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub values: Vec<SortValue>,
    pub resource_type: String,
    pub id: String,
    pub backward: bool,
}

impl Cursor {
    /// The cursor as URL-safe text (a JSON array).
    pub fn encode(&self) -> String {
        let direction = if self.backward { "prev" } else { "next" };
        let mut items: Vec<serde_json::Value> =
            vec![direction.into(), self.resource_type.clone().into(), self.id.clone().into()];
        items.extend(self.values.iter().map(|v| match v {
            SortValue::Null => serde_json::Value::Null,
            SortValue::Int(i) => serde_json::Value::from(*i),
            SortValue::Float(f) => serde_json::Value::from(*f),
            SortValue::Text(t) => serde_json::Value::from(t.clone()),
        }));
        serde_json::Value::Array(items).to_string()
    }

    /// Reads a cursor written by [`Cursor::encode`] for the given sort keys.
    pub fn decode(text: &str, sort: &[SortKey]) -> Option<Cursor> {
        let items: Vec<serde_json::Value> = serde_json::from_str(text).ok()?;
        let (head, values) = items.split_at_checked(3)?;
        if values.len() != sort.len() {
            return None;
        }
        let values = values
            .iter()
            .zip(sort)
            .map(|(value, key)| match (value, &key.by) {
                (serde_json::Value::Null, _) => Some(SortValue::Null),
                (value, SortBy::LastUpdated) => value.as_i64().map(SortValue::Int),
                (value, SortBy::Param { table: IndexTable::Date, .. }) => value.as_i64().map(SortValue::Int),
                (value, SortBy::Param { table: IndexTable::Number | IndexTable::Quantity, .. }) => {
                    value.as_f64().map(SortValue::Float)
                }
                (value, _) => value.as_str().map(|t| SortValue::Text(t.to_string())),
            })
            .collect::<Option<Vec<_>>>()?;
        let backward = match head[0].as_str()? {
            "prev" => true,
            "next" => false,
            _ => return None,
        };
        Some(Cursor {
            values,
            resource_type: head[1].as_str()?.to_string(),
            id: head[2].as_str()?.to_string(),
            backward,
        })
    }
}

/// A search over one or more resource types.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    pub resource_types: Vec<String>,
    /// All of these groups must match; within a group any condition may match.
    pub all_of: Vec<Vec<Condition>>,
    /// Sort keys; type and id always follow, so the order is total and stable.
    pub sort: Vec<SortKey>,
    pub count: usize,
    pub cursor: Option<Cursor>,
    /// Also count all matches.
    pub with_total: bool,
    /// Matches as a bulk export's mark sees them (ADR 22); `None` for what is current.
    pub as_of: Option<super::AsOf>,
}

impl SearchQuery {
    /// A query for every resource of a type.
    pub fn new(resource_type: &str, count: usize) -> Self {
        SearchQuery {
            resource_types: vec![resource_type.to_string()],
            all_of: Vec::new(),
            sort: Vec::new(),
            count,
            cursor: None,
            with_total: false,
            as_of: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let sort = vec![
            SortKey { by: SortBy::Param { params: vec!["date".into()], table: IndexTable::Date }, descending: true },
            SortKey {
                by: SortBy::Param { params: vec!["family".into()], table: IndexTable::String },
                descending: false,
            },
        ];
        let cursor = Cursor {
            values: vec![SortValue::Int(-5), SortValue::Null],
            resource_type: "Patient".into(),
            id: "a,b".into(),
            backward: true,
        };
        assert_eq!(Cursor::decode(&cursor.encode(), &sort), Some(cursor));
        assert_eq!(Cursor::decode("[\"next\",\"Patient\",\"x\"]", &sort), None);
        assert_eq!(Cursor::decode("nonsense", &[]), None);
    }
}
