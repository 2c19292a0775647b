//! The search planner: turns a [`SearchQuery`] into one SQL statement that runs unchanged on
//! SQLite and PostgreSQL (both accept `$n` placeholders, `NULLS LAST` and row-value `IN`).
//!
//! Every condition is an uncorrelated `IN (SELECT … FROM <index table>)` on the resource row it
//! constrains, so the database can drive the search from the index; chains and `_has` nest a
//! further resource row. Sorted results carry their sort values as columns `s0…sn` so that the
//! keyset cursor of the next page can be built from the last row and applied as a lexicographic
//! comparison (`NULLS LAST` in both directions).

use super::export::{Mark, Since};
use super::query::{
    Comparison, CompositeMatch, Condition, Cursor, IndexTable, SearchQuery, SortBy, SortKey, SortValue, StringMatch,
    TokenSystem, UriMatch,
};
use super::sql::VERSION_COLUMNS;

/// Where the two databases want different SQL for the same search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A bound argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(String),
    Int(i64),
    Float(f64),
}

/// SQL text with its arguments, in placeholder order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sql {
    pub text: String,
    pub args: Vec<Arg>,
}

impl Sql {
    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    fn bind(&mut self, arg: Arg) -> &mut Self {
        self.args.push(arg);
        let placeholder = format!("${}", self.args.len());
        self.text.push_str(&placeholder);
        self
    }

    fn text(&mut self, value: &str) -> &mut Self {
        self.bind(Arg::Text(value.to_string()))
    }
}

/// The statement for one page: version columns, then `s0…sn`, at most `count + 1` rows.
pub fn page(query: &SearchQuery, dialect: Dialect) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT * FROM (SELECT ");
    let columns: Vec<String> = VERSION_COLUMNS.split(", ").map(|c| format!("r.{c}")).collect();
    sql.push(&columns.join(", "));
    for (n, key) in query.sort.iter().enumerate() {
        sql.push(", ");
        push_sort_value(&mut sql, key);
        sql.push(&format!(" AS s{n}"));
    }
    if let Some(as_of) = &query.as_of {
        push_marked_version(&mut sql, &as_of.mark);
    }
    push_filters(&mut sql, query, dialect, Rows::Needed);
    sql.push(") q");
    let backward = query.cursor.as_ref().is_some_and(|c| c.backward);
    if let Some(cursor) = &query.cursor {
        sql.push(" WHERE ");
        match (query.sort.as_slice(), query.resource_types.as_slice()) {
            // One type in id order: a range of the (type, id) key, which the database seeks
            // to; the general form below made SQLite scan the type from its start for every
            // page (an export of 67,000 resources: 0.49 s of queries instead of 0.19 s).
            ([], [only]) if *only == cursor.resource_type => {
                let beyond = if backward { "<" } else { ">" };
                sql.push("q.resource_type = ").text(only);
                sql.push(&format!(" AND q.id {beyond} ")).text(&cursor.id);
            }
            _ => push_beyond(&mut sql, &query.sort, cursor, 0, !backward),
        }
    }
    // A previous page is read in reverse order from its anchor; the store turns it round.
    sql.push(" ORDER BY ");
    for (n, key) in query.sort.iter().enumerate() {
        let order = match (key.descending, backward) {
            (false, false) => " NULLS LAST",
            (true, false) => " DESC NULLS LAST",
            (false, true) => " DESC NULLS FIRST",
            (true, true) => " NULLS FIRST",
        };
        sql.push(&format!("s{n}{order}, "));
    }
    sql.push(if backward { "resource_type DESC, id DESC LIMIT " } else { "resource_type, id LIMIT " });
    sql.bind(Arg::Int(query.count as i64 + 1));
    sql
}

/// The statement counting all matches (`_total`).
pub fn count(query: &SearchQuery, dialect: Dialect) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT COUNT(*) AS n");
    push_filters(&mut sql, query, dialect, Rows::NotNeeded);
    sql
}

/// Whether a statement reads the resource rows of its matches or only counts them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rows {
    Needed,
    NotNeeded,
}

/// Current, not deleted resources with the given (type, id) keys.
pub fn fetch_many(keys: &[(String, String)]) -> Sql {
    let mut sql = Sql::default();
    sql.push(&format!("SELECT {VERSION_COLUMNS} FROM resources WHERE deleted = FALSE AND "));
    push_keys(&mut sql, "resource_type", "id", keys);
    sql
}

/// The current versions of the given (type, id) keys, not deleted (a reindex checks them).
pub fn current_versions(keys: &[(String, String)]) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT resource_type, id, version FROM resources WHERE deleted = FALSE AND ");
    push_keys(&mut sql, "resource_type", "id", keys);
    sql
}

/// The statement that takes a [`Mark`] of what is committed now, as the text of one.
pub fn take_mark(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "SELECT 'seq:' || COALESCE(MAX(seq), 0) FROM resource_history",
        Dialect::Postgres => "SELECT 'snapshot:' || pg_current_snapshot()::text",
    }
}

/// The latest version of a resource that `mark` sees.
pub fn version_as_of(resource_type: &str, id: &str, mark: &Mark) -> Sql {
    let mut sql = Sql::default();
    sql.push(&format!("SELECT {VERSION_COLUMNS} FROM resource_history h WHERE resource_type = "));
    sql.text(resource_type).push(" AND id = ").text(id).push(" AND ");
    push_seen(&mut sql, "h", mark);
    sql.push(" ORDER BY version DESC LIMIT 1");
    sql
}

/// Up to `limit` deletion versions of `resource_type`, in id order after `after`: resources
/// whose latest version `mark` sees is a deletion made since `since`.
pub fn deletions(resource_type: &str, mark: &Mark, since: &Since, after: Option<&str>, limit: usize) -> Sql {
    let mut sql = Sql::default();
    sql.push(&format!("SELECT {VERSION_COLUMNS} FROM resource_history h WHERE resource_type = "));
    sql.text(resource_type).push(" AND deleted = TRUE AND ");
    push_seen(&mut sql, "h", mark);
    match since {
        Since::Mark(earlier) => {
            sql.push(" AND NOT ");
            push_seen(&mut sql, "h", earlier);
        }
        Since::Time(at) => {
            sql.push(" AND last_updated > ").bind(Arg::Int(super::sql::to_micros(*at)));
        }
    }
    if let Some(after) = after {
        sql.push(" AND id > ").text(after);
    }
    sql.push(" AND NOT EXISTS (SELECT 1 FROM resource_history l WHERE l.resource_type = h.resource_type");
    sql.push(" AND l.id = h.id AND l.version > h.version AND ");
    push_seen(&mut sql, "l", mark);
    sql.push(") ORDER BY id LIMIT ").bind(Arg::Int(limit as i64));
    sql
}

/// "`mark` sees the version in history row `alias`".
fn push_seen(sql: &mut Sql, alias: &str, mark: &Mark) {
    match mark {
        Mark::Seq(seq) => {
            sql.push(&format!("{alias}.seq <= ")).bind(Arg::Int(*seq));
        }
        Mark::Snapshot(snapshot) => {
            sql.push(&format!("pg_visible_in_snapshot({alias}.xact, CAST(")).text(snapshot).push(" AS pg_snapshot))");
        }
    }
}

/// ` AND` the condition that leaves out the current rows `r` that cannot have changed since
/// an export's `since` (each probes its own history row: a join let PostgreSQL read the whole
/// history of the type for every page).
fn push_changed_since(sql: &mut Sql, since: &Since) {
    match since {
        // A current version the earlier mark saw has not changed since, nor has the version
        // this mark saw (no later than it).
        Since::Mark(earlier) => {
            sql.push(" AND NOT EXISTS (SELECT 1 FROM resource_history h WHERE h.resource_type = r.resource_type");
            sql.push(" AND h.id = r.id AND h.version = r.version AND ");
            push_seen(sql, "h", earlier);
            sql.push(")");
        }
        Since::Time(at) => {
            sql.push(" AND r.last_updated > ").bind(Arg::Int(super::sql::to_micros(*at)));
        }
    }
}

/// Column `marked_version`: the latest version of `r` the mark saw (its current one, as a
/// rule), probed in `r`'s own history rows.
fn push_marked_version(sql: &mut Sql, mark: &Mark) {
    sql.push(", (SELECT MAX(m.version) FROM resource_history m");
    sql.push(" WHERE m.resource_type = r.resource_type AND m.id = r.id AND ");
    push_seen(sql, "m", mark);
    sql.push(") AS marked_version");
}

/// Up to `limit` current resources of `types` (all when empty) in key order after `after`.
pub fn scan(types: &[String], after: Option<&(String, String)>, limit: usize) -> Sql {
    let mut sql = Sql::default();
    sql.push(&format!("SELECT {VERSION_COLUMNS} FROM resources WHERE deleted = FALSE"));
    if !types.is_empty() {
        sql.push(" AND resource_type IN (");
        for (n, resource_type) in types.iter().enumerate() {
            if n > 0 {
                sql.push(", ");
            }
            sql.text(resource_type);
        }
        sql.push(")");
    }
    if let Some((after_type, after_id)) = after {
        sql.push(" AND (resource_type > ").text(after_type);
        sql.push(" OR (resource_type = ").text(after_type).push(" AND id > ").text(after_id).push("))");
    }
    sql.push(" ORDER BY resource_type, id LIMIT ").bind(Arg::Int(limit as i64));
    sql
}

/// Local targets of the references `sources` make, optionally through one parameter and to one type.
pub fn outgoing_references(sources: &[(String, String)], param: Option<&str>, target_type: Option<&str>) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT DISTINCT target_type AS resource_type, target_id AS id FROM search_reference WHERE target_id IS NOT NULL");
    sql.push(" AND ");
    push_keys(&mut sql, "resource_type", "resource_id", sources);
    if let Some(param) = param {
        // `|| ''`: look the sources up by the owner index, not by parameter.
        sql.push(" AND param || '' = ").text(param);
    }
    if let Some(target_type) = target_type {
        sql.push(" AND target_type = ").text(target_type);
    }
    sql
}

/// The resource types with a reference to `target_type/target_id`, in order.
pub fn referring_types(target_type: &str, target_id: &str) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT DISTINCT resource_type FROM search_reference WHERE target_type = ").text(target_type);
    sql.push(" AND target_id = ").text(target_id).push(" ORDER BY resource_type");
    sql
}

/// Resources of `source_type` that reference any of `targets`, optionally through one parameter.
pub fn incoming_references(targets: &[(String, String)], source_type: &str, param: Option<&str>) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT DISTINCT resource_type, resource_id AS id FROM search_reference WHERE resource_type = ")
        .text(source_type);
    sql.push(" AND ");
    push_keys(&mut sql, "target_type", "target_id", targets);
    if let Some(param) = param {
        sql.push(" AND param = ").text(param);
    }
    sql
}

/// The ids of `keys` grouped by type, types in order of first appearance.
pub(super) fn group_by_type(keys: &[(String, String)]) -> Vec<(&str, Vec<&str>)> {
    let mut by_type: Vec<(&str, Vec<&str>)> = Vec::new();
    for (resource_type, id) in keys {
        match by_type.iter_mut().find(|(t, _)| t == resource_type) {
            Some((_, ids)) => ids.push(id),
            None => by_type.push((resource_type, vec![id])),
        }
    }
    by_type
}

/// `((type = $1 AND id IN ($2, …)) OR …)`: one group per type, so that both databases look the
/// keys up in the (type, id) indexes (a row-value `IN (VALUES …)` can end in a full scan).
fn push_keys(sql: &mut Sql, type_column: &str, id_column: &str, keys: &[(String, String)]) {
    let by_type = group_by_type(keys);
    if by_type.is_empty() {
        sql.push("1 = 0");
        return;
    }
    sql.push("(");
    for (n, (resource_type, ids)) in by_type.iter().enumerate() {
        sql.push(if n == 0 { "(" } else { " OR (" });
        sql.push(&format!("{type_column} = ")).text(resource_type).push(&format!(" AND {id_column} IN ("));
        for (m, id) in ids.iter().enumerate() {
            if m > 0 {
                sql.push(", ");
            }
            sql.text(id);
        }
        sql.push("))");
    }
    sql.push(")");
}

fn push_filters(sql: &mut Sql, query: &SearchQuery, dialect: Dialect, rows: Rows) {
    // The most selective group drives the search (uncorrelated IN over its index); the others
    // are probed per candidate row (correlated EXISTS), so an unselective condition such as
    // `category=laboratory` never has its whole match list built.
    let driver = query
        .all_of
        .iter()
        .enumerate()
        .map(|(n, group)| (n, group.iter().map(selectivity).min().unwrap_or(0)))
        .filter(|(_, score)| *score > 0)
        .max_by_key(|(n, score)| (*score, std::cmp::Reverse(*n)))
        .map(|(n, _)| n);
    // Deleted resources keep no index rows, so candidates found through the resource's own
    // index rows are alive: the check, which needs the table row, is left out for them.
    // As of an export's mark, a row deleted now may be one the mark saw alive.
    let check_deleted =
        !driver.is_some_and(|n| query.all_of[n].iter().all(found_in_own_index)) && query.as_of.is_none();
    // PostgreSQL turns `id IN (…)` into a hashed semi-join and then sorts every candidate, even
    // for a page of 20 in id order. Joined as a DISTINCT derived table instead, the candidates
    // stream in id order from the index and the probes stop once the page is full (a page of
    // free slots: 6.5 ms -> 0.9 ms), and a count needs no resource row at all. SQLite already
    // walks an IN list in order, and would materialise and sort the derived table, so it keeps
    // the IN form.
    let derived = driver.filter(|n| {
        dialect == Dialect::Postgres
            && (query.sort.is_empty() || rows == Rows::NotNeeded)
            && query.resource_types.len() == 1
            && is_derivable_group(&query.all_of[*n])
    });
    let Some(derived) = derived else {
        sql.push(" FROM resources r WHERE ");
        push_one_of(sql, "r.resource_type", &query.resource_types);
        if let Some(since) = query.as_of.as_ref().and_then(|as_of| as_of.since.as_ref()) {
            push_changed_since(sql, since);
        }
        if check_deleted {
            sql.push(" AND r.deleted = FALSE");
        }
        for (n, group) in query.all_of.iter().enumerate() {
            let owner = Owner::new("r", &query.resource_types, Some(n) == driver);
            sql.push(" AND ");
            push_any_of(sql, group, owner, 0);
        }
        return;
    };
    // The other criteria are probed on the driver's ids inside a subquery that `OFFSET 0` keeps
    // PostgreSQL from pulling up, so that candidates are ruled out before their resource rows
    // are read (its generic plans otherwise read every candidate's row first; an
    // Observation?patient&code page: 0.28 -> 0.19 ms).
    sql.push(" FROM (SELECT d.resource_type, d.id FROM ");
    let owner = Owner { membership: Membership::Derived, ..Owner::new("r", &query.resource_types, true) };
    push_any_of(sql, &query.all_of[derived], owner, 0);
    sql.push(" d WHERE 1 = 1");
    for (n, group) in query.all_of.iter().enumerate().filter(|(n, _)| *n != derived) {
        let owner = Owner::new("d", &query.resource_types, Some(n) == driver);
        sql.push(" AND ");
        push_any_of(sql, group, owner, 0);
    }
    // In id order, so that the page streams out of the fence and stops when it is full.
    sql.push(if rows == Rows::Needed { " ORDER BY d.id OFFSET 0) d" } else { " OFFSET 0) d" });
    if rows == Rows::Needed || check_deleted || query.as_of.is_some() {
        sql.push(" JOIN resources r ON r.resource_type = ").text(&query.resource_types[0]);
        sql.push(" AND r.id = d.id");
    }
    if check_deleted {
        sql.push(" WHERE r.deleted = FALSE");
    }
    if let Some(since) = query.as_of.as_ref().and_then(|as_of| as_of.since.as_ref()) {
        sql.push(" WHERE 1 = 1");
        push_changed_since(sql, since);
    }
}

/// Whether a driving condition can be written as a derived table of candidate ids: one index
/// lookup (or chain, or `_has`) whose membership test opens exactly once, or an OR of such
/// (one lookup over several parameters, or a `UNION ALL` of lookups: [`push_any_of`]).
fn is_derivable(condition: &Condition) -> bool {
    match condition {
        Condition::AnyOf(inner) => is_derivable_group(inner),
        _ => !matches!(
            condition,
            Condition::Id(_) | Condition::Type(_) | Condition::AllOf(_) | Condition::Not(_) | Condition::Missing { .. }
        ),
    }
}

/// Whether an OR group can be written as one membership (see [`is_derivable`]).
fn is_derivable_group(group: &[Condition]) -> bool {
    !group.is_empty() && unites(group, &lookups(group))
}

/// Whether `group`, made of `lookups`, can be one `UNION ALL` of them.
fn unites(group: &[Condition], lookups: &[Lookup<'_>]) -> bool {
    lookups.len() <= MAX_UNION_BRANCHES && group.iter().all(is_derivable)
}

/// The most lookups one `UNION ALL` joins, below SQLite's limit of 500 terms in a compound
/// SELECT; a larger OR group is written as an OR of lookups.
const MAX_UNION_BRANCHES: usize = 200;

/// One lookup of an OR group: a condition, or the token conditions on one parameter and
/// system that differ only in their code (several values, a ValueSet's concepts) as one lookup
/// with `code IN (…)`.
enum Lookup<'a> {
    One(&'a Condition),
    Codes { param: &'a str, system: &'a TokenSystem, codes: Vec<&'a str> },
}

/// The lookups of an OR group, in its order (codes of one parameter and system merged).
fn lookups(group: &[Condition]) -> Vec<Lookup<'_>> {
    let mut lookups: Vec<Lookup<'_>> = Vec::new();
    for condition in group {
        let Condition::Token { param, system, code: Some(code) } = condition else {
            lookups.push(Lookup::One(condition));
            continue;
        };
        let same = lookups.iter_mut().find_map(|lookup| match lookup {
            Lookup::Codes { param: p, system: s, codes } if *p == param && *s == system => Some(codes),
            _ => None,
        });
        match same {
            Some(codes) => codes.push(code),
            None => lookups.push(Lookup::Codes { param, system, codes: vec![code] }),
        }
    }
    lookups
}

fn push_lookup(sql: &mut Sql, lookup: &Lookup<'_>, owner: Owner<'_>, depth: usize) {
    match lookup {
        Lookup::One(condition) => push_condition(sql, condition, owner, depth),
        Lookup::Codes { param, system, codes } => push_token(sql, param, system, codes, owner, depth),
    }
}

/// Whether a driving condition finds resources through their own index rows (which deleted
/// resources no longer have). `_id` and `_has` (whose rows belong to other resources) do not.
fn found_in_own_index(condition: &Condition) -> bool {
    match condition {
        Condition::Id(_)
        | Condition::Type(_)
        | Condition::Has { .. }
        | Condition::Missing { .. }
        | Condition::Not(_) => false,
        Condition::AnyOf(inner) => inner.iter().all(found_in_own_index),
        Condition::AllOf(inner) => inner.iter().any(found_in_own_index),
        _ => true,
    }
}

/// The longest date range, in microseconds, that counts as narrow: a week.
const NARROW_DATE: i64 = 7 * 24 * 3600 * 1_000_000;

/// How well a condition narrows a search, by kind (higher is narrower; 0 cannot drive).
fn selectivity(condition: &Condition) -> u8 {
    match condition {
        Condition::Id(_) => 100,
        Condition::Reference { .. } | Condition::ReferenceUrl { .. } => 90,
        Condition::Token { system: TokenSystem::Is(_), code: Some(_), .. } => 60,
        Condition::String { matching: StringMatch::Exact, .. } => 60,
        Condition::Chain { .. } | Condition::Has { .. } => 50,
        Condition::String { .. } | Condition::Uri { .. } | Condition::Composite { .. } => 40,
        // A date range bounded on both sides and at most a week long (`eq` a day, or a window
        // an operation asks for) is one short index range over `low`; a longer or open one
        // (`ge`, `lt`…) is not narrow.
        Condition::Date { comparison: Comparison::Eq, low, high, .. } if high.saturating_sub(*low) <= NARROW_DATE => 45,
        Condition::Token { .. } | Condition::TokenHierarchy { .. } => 30,
        Condition::Date { .. } | Condition::Number { .. } | Condition::Quantity { .. } => 20,
        Condition::AnyOf(inner) => inner.iter().map(selectivity).min().unwrap_or(0),
        Condition::AllOf(inner) => inner.iter().map(selectivity).max().unwrap_or(0),
        Condition::Type(_) | Condition::Missing { .. } | Condition::Not(_) => 0,
    }
}

/// The resource row a condition constrains: its SQL alias, the types it can have, and whether
/// the condition drives the search (uncorrelated `IN`) or is probed per row (`EXISTS`).
#[derive(Clone, Copy)]
struct Owner<'a> {
    alias: &'a str,
    types: &'a [String],
    drive: bool,
    /// How a driving condition writes its candidates.
    membership: Membership,
    /// The parameters whose rows the condition tests instead of its own (see
    /// [`same_test_on`]).
    rows_of: Option<&'a [&'a str]>,
}

impl<'a> Owner<'a> {
    /// A row of `alias` (one of `types`) that the condition drives (`IN`) or probes.
    fn new(alias: &'a str, types: &'a [String], drive: bool) -> Self {
        Owner { alias, types, drive, membership: Membership::In, rows_of: None }
    }
}

/// How a driving condition writes the resources it finds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Membership {
    /// `<owner> IN (SELECT …)`.
    In,
    /// The derived table `(SELECT DISTINCT … AS resource_type, … AS id …)` (over a union:
    /// `DISTINCT ON` the id).
    Derived,
    /// `(SELECT … AS resource_type, … AS id …)`, one branch of a `UNION ALL` ([`push_union`]).
    Branch,
}

/// The parameters of `group`'s conditions when they are one test on the rows of several
/// parameters (what a parameter stored under others searches): equal but for their parameter.
/// One index lookup with `param IN (…)` answers them, where an `OR` of lookups is a scan.
fn same_test_on(group: &[Condition]) -> Option<Vec<&str>> {
    // `:missing=true` tests that no row exists: on several parameters, that is all of them.
    let positive = |c: &Condition| !matches!(c, Condition::Missing { missing: true, .. });
    if group.len() < 2 || !group.iter().all(positive) {
        return None;
    }
    let params: Vec<&str> = group.iter().map(Condition::param).collect::<Option<_>>()?;
    let without_param = |condition: &Condition| {
        let mut condition = condition.clone();
        if let Some(param) = condition.param_mut() {
            param.clear();
        }
        condition
    };
    let first = without_param(group.first()?);
    group[1..].iter().all(|c| without_param(c) == first).then_some(params)
}

/// `<column> = $n` or `<column> IN ($n, …)`.
fn push_one_of(sql: &mut Sql, column: &str, values: &[impl AsRef<str>]) {
    if let [only] = values {
        sql.push(&format!("{column} = ")).text(only.as_ref());
        return;
    }
    sql.push(&format!("{column} IN ("));
    for (n, value) in values.iter().enumerate() {
        if n > 0 {
            sql.push(", ");
        }
        sql.text(value.as_ref());
    }
    sql.push(")");
}

/// Opens the owner's [`Membership`]: `<owner> IN (SELECT <type column>, <id column>` (just the
/// id when the owner has one type), or a subquery of `resource_type` and `id`. The subquery is
/// uncorrelated, so the database can drive the search from the index.
fn open_membership(sql: &mut Sql, owner: Owner<'_>, type_column: &str, id_column: &str) {
    let alias = owner.alias;
    let columns = format!("{type_column} AS resource_type, {id_column} AS id");
    match owner.membership {
        Membership::Derived => sql.push(&format!("(SELECT DISTINCT {columns}")),
        Membership::Branch => sql.push(&format!("(SELECT {columns}")),
        Membership::In if owner.types.len() == 1 => sql.push(&format!("{alias}.id IN (SELECT {id_column}")),
        Membership::In => {
            sql.push(&format!("({alias}.resource_type, {alias}.id) IN (SELECT {type_column}, {id_column}"))
        }
    };
}

fn push_any_of(sql: &mut Sql, group: &[Condition], owner: Owner<'_>, depth: usize) {
    if group.is_empty() {
        sql.push("1 = 0");
        return;
    }
    if let Some(params) = same_test_on(group) {
        push_condition(sql, &group[0], Owner { rows_of: Some(&params), ..owner }, depth);
        return;
    }
    let lookups = lookups(group);
    if let [only] = lookups.as_slice() {
        push_lookup(sql, only, owner, depth);
        return;
    }
    if owner.drive && unites(group, &lookups) {
        push_union(sql, &lookups, owner, depth);
        return;
    }
    sql.push("(");
    for (n, lookup) in lookups.iter().enumerate() {
        if n > 0 {
            sql.push(" OR ");
        }
        push_lookup(sql, lookup, owner, depth);
    }
    sql.push(")");
}

/// A driving OR of index lookups as one membership: the `UNION ALL` of their candidates, so
/// that each lookup drives from its index. (`r.id IN (A) OR r.id IN (B)` is a scan of every
/// resource of the type: `Observation?code=a,b&_summary=count` ran at a quarter of the rate of
/// one code.)
fn push_union(sql: &mut Sql, lookups: &[Lookup<'_>], owner: Owner<'_>, depth: usize) {
    let union = format!("u{depth}");
    // Only an `IN` for one type compares ids alone; the others carry the type too.
    let ids_only = owner.membership == Membership::In && owner.types.len() == 1;
    let alias = owner.alias;
    let (open, close) = match owner.membership {
        Membership::In if ids_only => (format!("{alias}.id IN ("), ")".to_string()),
        Membership::In => (format!("({alias}.resource_type, {alias}.id) IN ("), ")".to_string()),
        // Only PostgreSQL derives, for one type: `DISTINCT ON` the id sorts the candidates by
        // it (a page of two codes' observations: 2.2 -> 1.2 ms), where `DISTINCT` hashes them.
        Membership::Derived => (
            format!("(SELECT DISTINCT ON ({union}.id) {union}.resource_type, {union}.id FROM ("),
            format!(") {union})"),
        ),
        Membership::Branch => (format!("(SELECT {union}.resource_type, {union}.id FROM ("), format!(") {union})")),
    };
    sql.push(&open);
    for (n, lookup) in lookups.iter().enumerate() {
        if n > 0 {
            sql.push(" UNION ALL ");
        }
        let branch = format!("{union}_{n}");
        let columns = if ids_only { format!("{branch}.id") } else { format!("{branch}.resource_type, {branch}.id") };
        sql.push(&format!("SELECT {columns} FROM "));
        push_lookup(sql, lookup, Owner { membership: Membership::Branch, ..owner }, depth);
        sql.push(&format!(" {branch}"));
    }
    sql.push(&close);
}

/// Opens the owner's membership (`<owner> IN (SELECT …`, see [`open_membership`]) `FROM <table>
/// i<d> WHERE i<d>.resource_type … AND i<d>.param = $n` (`IN ($n, …)` for the owner's
/// `rows_of`); the caller adds its comparisons on `i<d>` and closes the parenthesis.
/// Or, when the owner is probed, `EXISTS (SELECT 1 FROM <table> i<d> WHERE <i owned by the row> AND …`.
fn open_index_in(sql: &mut Sql, table: IndexTable, param: &str, owner: Owner<'_>, depth: usize) -> String {
    let i = format!("i{depth}");
    let params = owner.rows_of.unwrap_or(std::slice::from_ref(&param));
    if owner.drive {
        open_membership(sql, owner, &format!("{i}.resource_type"), &format!("{i}.resource_id"));
        sql.push(&format!(" FROM {} {i} WHERE ", table.name()));
        push_one_of(sql, &format!("{i}.resource_type"), owner.types);
    } else {
        let alias = owner.alias;
        sql.push(&format!(
            "EXISTS (SELECT 1 FROM {} {i} WHERE {i}.resource_type = {alias}.resource_type AND {i}.resource_id = {alias}.id",
            table.name()
        ));
        // A probe must use the (type, id) owner index. `param || ''` keeps both databases from
        // picking the lookup index instead, which would scan every row with the searched value.
        push_one_of(sql, &format!(" AND {i}.param || ''"), params);
        return i;
    }
    push_one_of(sql, &format!(" AND {i}.param"), params);
    i
}

/// ` AND <column>` equal to `value`, starting with it (below) or being its start (above).
fn push_prefix_match(sql: &mut Sql, column: &str, value: &str, matching: UriMatch) {
    match matching {
        UriMatch::Exact => {
            sql.push(&format!(" AND {column} = ")).text(value);
        }
        UriMatch::Below => {
            sql.push(&format!(" AND {column} >= ")).text(value);
            sql.push(&format!(" AND {column} < ")).text(&prefix_upper_bound(value));
        }
        UriMatch::Above => {
            sql.push(" AND substr(").text(value).push(&format!(", 1, length({column})) = {column}"));
        }
    }
}

/// ` AND` the token row of alias `i` has the required system.
fn push_token_system(sql: &mut Sql, i: &str, system: &TokenSystem) {
    match system {
        TokenSystem::Any => {}
        TokenSystem::None => {
            sql.push(&format!(" AND {i}.system IS NULL"));
        }
        TokenSystem::Is(system) => {
            sql.push(&format!(" AND {i}.system = ")).text(system);
        }
    }
}

/// A token lookup: `param`'s rows in `system` with one of `codes` (any code when none).
fn push_token(
    sql: &mut Sql,
    param: &str,
    system: &TokenSystem,
    codes: &[impl AsRef<str>],
    owner: Owner<'_>,
    depth: usize,
) {
    let i = open_index_in(sql, IndexTable::Token, param, owner, depth);
    if !codes.is_empty() {
        sql.push(" AND ");
        push_one_of(sql, &format!("{i}.code"), codes);
    }
    push_token_system(sql, &i, system);
    sql.push(")");
}

fn push_condition(sql: &mut Sql, condition: &Condition, owner: Owner<'_>, depth: usize) {
    match condition {
        Condition::Id(id) => {
            sql.push(&format!("{}.id = ", owner.alias)).text(id);
        }
        Condition::Token { param, system, code } => push_token(sql, param, system, code.as_slice(), owner, depth),
        Condition::TokenHierarchy { param, system, code, matching } => {
            let i = open_index_in(sql, IndexTable::Token, param, owner, depth);
            push_prefix_match(sql, &format!("{i}.code"), code, *matching);
            push_token_system(sql, &i, system);
            sql.push(")");
        }
        Condition::String { param, value, matching } => {
            let i = open_index_in(sql, IndexTable::String, param, owner, depth);
            match matching {
                StringMatch::Exact => {
                    sql.push(&format!(" AND {i}.exact = ")).text(value);
                }
                StringMatch::Prefix => {
                    sql.push(&format!(" AND {i}.normalized >= ")).text(value);
                    sql.push(&format!(" AND {i}.normalized < ")).text(&prefix_upper_bound(value));
                }
                StringMatch::Contains => {
                    sql.push(&format!(" AND {i}.normalized LIKE ")).text(&format!("%{}%", like_escape(value)));
                    sql.push(" ESCAPE '\\'");
                }
            }
            sql.push(")");
        }
        Condition::Reference { param, target_type, target_id } => {
            let i = open_index_in(sql, IndexTable::Reference, param, owner, depth);
            // A probe must use the owner index (see `open_index_in`). With the target compared
            // plainly, SQLite prefers the target index, whose (target_type, target_id,
            // resource_type) prefix walks every reference to the target for each candidate (a
            // page of a 500-resource $everything: 490 rows per probe, 18 ms a page).
            let target_id_column = if owner.drive { format!("{i}.target_id") } else { format!("{i}.target_id || ''") };
            sql.push(&format!(" AND {target_id_column} = ")).text(target_id);
            if let Some(target_type) = target_type {
                sql.push(&format!(" AND {i}.target_type = ")).text(target_type);
            }
            sql.push(")");
        }
        Condition::ReferenceUrl { param, url } => {
            let i = open_index_in(sql, IndexTable::Reference, param, owner, depth);
            sql.push(&format!(" AND {i}.target_url = ")).text(url).push(")");
        }
        Condition::Uri { param, value, matching } => {
            let i = open_index_in(sql, IndexTable::Uri, param, owner, depth);
            push_prefix_match(sql, &format!("{i}.value"), value, *matching);
            sql.push(")");
        }
        Condition::Date { param, comparison, low, high } => {
            let i = open_index_in(sql, IndexTable::Date, param, owner, depth);
            sql.push(" AND ");
            push_interval_comparison(sql, (&format!("{i}.low"), &format!("{i}.high")), *comparison, *low, *high);
            sql.push(")");
        }
        Condition::Number { param, comparison, value, low, high } => {
            let i = open_index_in(sql, IndexTable::Number, param, owner, depth);
            sql.push(" AND ");
            push_point_comparison(sql, &format!("{i}.value"), *comparison, *value, *low, *high);
            sql.push(")");
        }
        Condition::Quantity { param, comparison, value, low, high, system, code } => {
            let i = open_index_in(sql, IndexTable::Quantity, param, owner, depth);
            sql.push(" AND ");
            push_point_comparison(sql, &format!("{i}.value"), *comparison, *value, *low, *high);
            if let Some(system) = system {
                sql.push(&format!(" AND {i}.system = ")).text(system);
            }
            match (system, code) {
                (Some(_), Some(code)) => {
                    sql.push(&format!(" AND {i}.code = ")).text(code);
                }
                (None, Some(code)) => {
                    sql.push(&format!(" AND ({i}.code = ")).text(code);
                    sql.push(&format!(" OR {i}.unit = ")).text(code).push(")");
                }
                _ => {}
            }
            sql.push(")");
        }
        Condition::Composite { param, parts } => {
            let i = open_index_in(sql, IndexTable::Composite, param, owner, depth);
            for (n, part) in parts.iter().enumerate() {
                push_composite_part(sql, &i, n, part);
            }
            sql.push(")");
        }
        Condition::Missing { param, table, missing } => {
            if *missing {
                sql.push("NOT ");
            }
            open_index_in(sql, *table, param, owner, depth);
            sql.push(")");
        }
        Condition::Not(inner) => {
            sql.push("NOT (");
            push_condition(sql, inner, owner, depth);
            sql.push(")");
        }
        Condition::AnyOf(conditions) => push_any_of(sql, conditions, owner, depth),
        Condition::AllOf(conditions) => {
            sql.push("(1 = 1");
            for condition in conditions {
                sql.push(" AND ");
                push_condition(sql, condition, owner, depth);
            }
            sql.push(")");
        }
        Condition::Type(resource_type) => {
            sql.push(&format!("{}.resource_type = ", owner.alias)).text(resource_type);
        }
        Condition::Chain { param, target_types, condition } => {
            let i = open_index_in(sql, IndexTable::Reference, param, owner, depth);
            let target = format!("r{}", depth + 1);
            sql.push(" AND ");
            push_one_of(sql, &format!("{i}.target_type"), target_types);
            // Driving: the referenced resources that match form a list; probing: the one
            // resource the reference points at is checked.
            if owner.drive {
                let (columns, selected) = match target_types.len() {
                    1 => (format!("{i}.target_id"), format!("{target}.id")),
                    _ => (format!("({i}.target_type, {i}.target_id)"), format!("{target}.resource_type, {target}.id")),
                };
                sql.push(&format!(" AND {columns} IN (SELECT {selected} FROM resources {target} WHERE "));
                push_one_of(sql, &format!("{target}.resource_type"), target_types);
            } else {
                sql.push(&format!(
                    " AND EXISTS (SELECT 1 FROM resources {target} WHERE {target}.resource_type = {i}.target_type AND {target}.id = {i}.target_id"
                ));
            }
            sql.push(&format!(" AND {target}.deleted = FALSE AND "));
            push_condition(sql, condition, Owner::new(&target, target_types, owner.drive), depth + 1);
            sql.push("))");
        }
        Condition::Has { source_type, param, condition } => {
            let i = format!("i{depth}");
            let source = format!("r{}", depth + 1);
            if owner.drive {
                open_membership(sql, owner, &format!("{i}.target_type"), &format!("{i}.target_id"));
                sql.push(&format!(" FROM search_reference {i} WHERE {i}.resource_type = ")).text(source_type);
                sql.push(&format!(" AND {i}.param = ")).text(param).push(" AND ");
                push_one_of(sql, &format!("{i}.target_type"), owner.types);
            } else {
                let alias = owner.alias;
                sql.push(&format!("EXISTS (SELECT 1 FROM search_reference {i} WHERE {i}.resource_type = "))
                    .text(source_type);
                sql.push(&format!(" AND {i}.param = ")).text(param);
                sql.push(&format!(" AND {i}.target_type = {alias}.resource_type AND {i}.target_id = {alias}.id"));
            }
            if owner.drive {
                sql.push(&format!(" AND {i}.resource_id IN (SELECT {source}.id FROM resources {source} WHERE {source}.resource_type = "));
                sql.text(source_type);
            } else {
                sql.push(&format!(
                    " AND EXISTS (SELECT 1 FROM resources {source} WHERE {source}.resource_type = {i}.resource_type AND {source}.id = {i}.resource_id"
                ));
            }
            sql.push(&format!(" AND {source}.deleted = FALSE AND "));
            let types = [source_type.clone()];
            push_condition(sql, condition, Owner::new(&source, &types, owner.drive), depth + 1);
            sql.push("))");
        }
    }
}

/// Component `n` of a composite row (columns `s<n>`, `c<n>`, `v<n>`, `lo<n>`, `hi<n>` of `i`).
fn push_composite_part(sql: &mut Sql, i: &str, n: usize, part: &CompositeMatch) {
    let column = |name: &str| format!("{i}.{name}{n}");
    match part {
        CompositeMatch::Token { system, code } => {
            if let Some(code) = code {
                sql.push(&format!(" AND {} = ", column("c"))).text(code);
            }
            match system {
                TokenSystem::Any => {}
                TokenSystem::None => {
                    sql.push(&format!(" AND {} IS NULL", column("s")));
                }
                TokenSystem::Is(system) => {
                    sql.push(&format!(" AND {} = ", column("s"))).text(system);
                }
            }
        }
        CompositeMatch::String { value } => {
            sql.push(&format!(" AND {} >= ", column("c"))).text(value);
            sql.push(&format!(" AND {} < ", column("c"))).text(&prefix_upper_bound(value));
        }
        CompositeMatch::Quantity { comparison, value, low, high, system, code } => {
            sql.push(" AND ");
            push_point_comparison(sql, &column("v"), *comparison, *value, *low, *high);
            if let Some(system) = system {
                sql.push(&format!(" AND {} = ", column("s"))).text(system);
            }
            if let Some(code) = code {
                sql.push(&format!(" AND {} = ", column("c"))).text(code);
            }
        }
        CompositeMatch::Date { comparison, low, high } => {
            sql.push(" AND ");
            push_interval_comparison(sql, (&column("lo"), &column("hi")), *comparison, *low, *high);
        }
    }
}

/// Index interval `[low, high)` in the columns `(low, high)` against the searched `[low, high)`
/// (FHIR R4 prefixes).
fn push_interval_comparison(
    sql: &mut Sql,
    (low_column, high_column): (&str, &str),
    comparison: Comparison,
    low: i64,
    high: i64,
) {
    // `low < high` bounds the index range on `low` from above too, where `low >= …` alone
    // would walk to the end of the index. It adds no condition: a stored interval is never
    // empty (its low is below its high), so `low < high` follows from its high being at most
    // the searched high.
    let contained = |sql: &mut Sql| {
        sql.push(&format!("({low_column} >= ")).bind(Arg::Int(low));
        sql.push(&format!(" AND {low_column} < ")).bind(Arg::Int(high));
        sql.push(&format!(" AND {high_column} <= ")).bind(Arg::Int(high)).push(")");
    };
    match comparison {
        Comparison::Eq => contained(sql),
        Comparison::Ne => {
            sql.push("NOT ");
            contained(sql);
        }
        Comparison::Gt => {
            sql.push(&format!("{high_column} > ")).bind(Arg::Int(high));
        }
        Comparison::Lt => {
            sql.push(&format!("{low_column} < ")).bind(Arg::Int(low));
        }
        Comparison::Ge => {
            sql.push(&format!("({high_column} > ")).bind(Arg::Int(high)).push(" OR ");
            contained(sql);
            sql.push(")");
        }
        Comparison::Le => {
            sql.push(&format!("({low_column} < ")).bind(Arg::Int(low)).push(" OR ");
            contained(sql);
            sql.push(")");
        }
        Comparison::Sa => {
            sql.push(&format!("{low_column} >= ")).bind(Arg::Int(high));
        }
        Comparison::Eb => {
            sql.push(&format!("{high_column} <= ")).bind(Arg::Int(low));
        }
    }
}

/// Indexed point in `column` against the searched value with precision range `[low, high)`.
fn push_point_comparison(sql: &mut Sql, column: &str, comparison: Comparison, value: f64, low: f64, high: f64) {
    let (operator, bound) = match comparison {
        Comparison::Eq | Comparison::Ne => {
            sql.push(if comparison == Comparison::Ne { "NOT " } else { "" });
            sql.push(&format!("({column} >= ")).bind(Arg::Float(low));
            sql.push(&format!(" AND {column} < ")).bind(Arg::Float(high)).push(")");
            return;
        }
        Comparison::Gt | Comparison::Sa => (">", value),
        Comparison::Lt | Comparison::Eb => ("<", value),
        Comparison::Ge => (">=", value),
        Comparison::Le => ("<=", value),
    };
    sql.push(&format!("{column} {operator} ")).bind(Arg::Float(bound));
}

/// The value a sort key orders by, as a scalar subquery over the index.
fn push_sort_value(sql: &mut Sql, key: &SortKey) {
    let (params, table) = match &key.by {
        SortBy::Id => {
            sql.push("r.id");
            return;
        }
        SortBy::LastUpdated => {
            sql.push("r.last_updated");
            return;
        }
        SortBy::Param { params, table } => (params, *table),
    };
    let column = match (table, key.descending) {
        (IndexTable::Date, false) => "low",
        (IndexTable::Date, true) => "high",
        (IndexTable::String, _) => "normalized",
        (IndexTable::Token, _) => "code",
        (IndexTable::Reference, _) => "target_id",
        (IndexTable::Uri | IndexTable::Number | IndexTable::Quantity, _) => "value",
        (IndexTable::Composite, _) => "c0",
    };
    let aggregate = if key.descending { "MAX" } else { "MIN" };
    sql.push(&format!(
        "(SELECT {aggregate}(si.{column}) FROM {} si WHERE si.resource_type = r.resource_type AND si.resource_id = r.id AND ",
        table.name()
    ));
    push_one_of(sql, "si.param || ''", params);
    sql.push(")");
}

/// Rows after (`forward`) or before the cursor in the order (s0…sn, resource_type, id), nulls last.
fn push_beyond(sql: &mut Sql, sort: &[SortKey], cursor: &Cursor, key: usize, forward: bool) {
    let Some(sort_key) = sort.get(key) else {
        let beyond = if forward { ">" } else { "<" };
        sql.push(&format!("(q.resource_type {beyond} ")).text(&cursor.resource_type);
        sql.push(" OR (q.resource_type = ").text(&cursor.resource_type);
        sql.push(&format!(" AND q.id {beyond} ")).text(&cursor.id).push("))");
        return;
    };
    let column = format!("q.s{key}");
    let value = match cursor.values.get(key) {
        Some(SortValue::Int(i)) => Arg::Int(*i),
        Some(SortValue::Float(f)) => Arg::Float(*f),
        Some(SortValue::Text(t)) => Arg::Text(t.clone()),
        Some(SortValue::Null) | None => {
            // Nulls come last: after a null only nulls follow; before it, every value comes.
            sql.push(&format!(
                "({column} {} AND ",
                if forward { "IS NULL" } else { "IS NOT NULL OR ({column} IS NULL" }
            ));
            push_beyond(sql, sort, cursor, key + 1, forward);
            sql.push(if forward { ")" } else { "))" });
            return;
        }
    };
    let beyond = if sort_key.descending == forward { "<" } else { ">" };
    let nulls = if forward { format!(" OR {column} IS NULL") } else { String::new() };
    sql.push(&format!("({column} {beyond} ")).bind(value.clone());
    sql.push(&format!("{nulls} OR ({column} = ")).bind(value).push(" AND ");
    push_beyond(sql, sort, cursor, key + 1, forward);
    sql.push("))");
}

/// The exclusive upper bound of all strings starting with `prefix` (index-friendly prefix match).
fn prefix_upper_bound(prefix: &str) -> String {
    let mut upper = prefix.to_string();
    upper.push(char::MAX);
    upper
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_of_one_type_in_id_order_is_a_key_range() {
        let mut query = SearchQuery::new("Observation", 10);
        let cursor = |resource_type: &str| Cursor {
            values: Vec::new(),
            resource_type: resource_type.into(),
            id: "o5".into(),
            backward: false,
        };
        query.cursor = Some(cursor("Observation"));
        let sql = page(&query, Dialect::Sqlite);
        assert!(sql.text.contains("WHERE q.resource_type = $2 AND q.id > $3 ORDER BY"), "{}", sql.text);
        // Several types, or a cursor of another type, keep the general form.
        query.cursor = Some(cursor("Patient"));
        assert!(page(&query, Dialect::Sqlite).text.contains("(q.resource_type > $"));
        query.resource_types.push("Condition".into());
        query.cursor = Some(cursor("Observation"));
        assert!(page(&query, Dialect::Sqlite).text.contains("(q.resource_type > $"));
    }

    #[test]
    fn binds_every_value() {
        let mut query = SearchQuery::new("Observation", 10);
        query.all_of.push(vec![Condition::Chain {
            param: "subject".into(),
            target_types: vec!["Patient".into()],
            condition: Box::new(Condition::String {
                param: "name".into(),
                value: "o'brien".into(),
                matching: StringMatch::Prefix,
            }),
        }]);
        let sql = page(&query, Dialect::Sqlite);
        assert!(!sql.text.contains("o'brien"), "values are bound, never inlined: {}", sql.text);
        assert_eq!(sql.text.matches('$').count(), sql.args.len());
        assert!(
            sql.text.contains("i0.target_id IN (SELECT r1.id FROM resources r1 WHERE r1.resource_type = $"),
            "{}",
            sql.text
        );
        assert!(sql.text.contains("r.id IN (SELECT i0.resource_id FROM search_reference i0"), "{}", sql.text);
    }

    #[test]
    fn one_test_on_several_parameters_is_one_lookup() {
        let token = |param: &str, code: &str| Condition::Token {
            param: param.into(),
            system: TokenSystem::Is("http://loinc.org".into()),
            code: Some(code.into()),
        };
        let mut query = SearchQuery::new("Observation", 10);
        query.all_of.push(vec![Condition::AnyOf(vec![token("code", "8480-6"), token("component-code", "8480-6")])]);
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let sql = page(&query, dialect);
            assert_eq!(sql.text.matches("FROM search_token").count(), 1, "{}", sql.text);
            assert!(sql.text.contains("i0.param IN ($"), "{}", sql.text);
            assert_eq!(sql.text.matches('$').count(), sql.args.len());
        }
        // Other values are a lookup each; tests that no row exists stay an OR of probes.
        query.all_of[0] = vec![Condition::AnyOf(vec![token("code", "8480-6"), token("component-code", "8462-4")])];
        let sql = page(&query, Dialect::Sqlite);
        assert_eq!(sql.text.matches("FROM search_token").count(), 2, "{}", sql.text);
        let missing = |param: &str| Condition::Missing { param: param.into(), table: IndexTable::Token, missing: true };
        query.all_of[0] = vec![Condition::AnyOf(vec![missing("code"), missing("component-code")])];
        let sql = page(&query, Dialect::Sqlite);
        assert_eq!(sql.text.matches("FROM search_token").count(), 2, "{}", sql.text);
        assert!(!sql.text.contains("UNION"), "{}", sql.text);
    }

    #[test]
    fn a_bounded_date_range_drives_before_a_bare_code() {
        let mut query = SearchQuery::new("Slot", 10);
        query.all_of.push(vec![Condition::Token {
            param: "status".into(),
            system: TokenSystem::Any,
            code: Some("free".into()),
        }]);
        query.all_of.push(vec![Condition::Date { param: "start".into(), comparison: Comparison::Eq, low: 0, high: 1 }]);
        let sql = page(&query, Dialect::Sqlite);
        assert!(
            sql.text.contains("r.id IN (SELECT i0.resource_id FROM search_date i0"),
            "the date drives: {}",
            sql.text
        );
        assert!(sql.text.contains("EXISTS (SELECT 1 FROM search_token i0"), "the status is probed: {}", sql.text);
    }

    #[test]
    fn an_or_of_lookups_drives_as_one_union() {
        let token = |system: &str, code: &str| Condition::Token {
            param: "code".into(),
            system: TokenSystem::Is(system.into()),
            code: Some(code.into()),
        };
        let mut query = SearchQuery::new("Observation", 10);
        query.all_of.push(vec![token("http://loinc.org", "8867-4"), token("http://snomed.info/sct", "364075005")]);
        let sqlite = page(&query, Dialect::Sqlite);
        assert!(sqlite.text.contains("r.id IN (SELECT u0_0.id FROM (SELECT i0.resource_type"), "{}", sqlite.text);
        assert_eq!(sqlite.text.matches(" UNION ALL ").count(), 1, "{}", sqlite.text);
        assert!(!sqlite.text.contains(" OR "), "{}", sqlite.text);
        let postgres = page(&query, Dialect::Postgres);
        assert!(
            postgres.text.contains("(SELECT DISTINCT ON (u0.id) u0.resource_type, u0.id FROM ("),
            "{}",
            postgres.text
        );
        let counted = count(&query, Dialect::Postgres);
        assert!(counted.text.contains(" UNION ALL "), "{}", counted.text);
        let mut several_types = query.clone();
        several_types.resource_types.push("DiagnosticReport".into());
        let tuple = page(&several_types, Dialect::Sqlite);
        assert!(
            tuple.text.contains("(r.resource_type, r.id) IN (SELECT u0_0.resource_type, u0_0.id FROM"),
            "{}",
            tuple.text
        );
        for sql in [&sqlite, &postgres, &counted, &tuple] {
            assert_eq!(sql.text.matches('$').count(), sql.args.len());
        }
        // Probed, not driving (a reference narrows more): still an OR of one probe per lookup.
        query.all_of.push(vec![Condition::Reference {
            param: "subject".into(),
            target_type: Some("Patient".into()),
            target_id: "p1".into(),
        }]);
        let probed = page(&query, Dialect::Sqlite);
        assert!(!probed.text.contains("UNION"), "{}", probed.text);
        assert_eq!(probed.text.matches("EXISTS (SELECT 1 FROM search_token").count(), 2, "{}", probed.text);
    }

    #[test]
    fn codes_of_one_system_are_one_lookup_and_a_long_or_is_no_union() {
        let token = |system: String, code: String| Condition::Token {
            param: "code".into(),
            system: TokenSystem::Is(system),
            code: Some(code),
        };
        let mut query = SearchQuery::new("Observation", 10);
        // A ValueSet's 600 concepts of one system: one lookup.
        query.all_of.push((0..600).map(|n| token("http://loinc.org".into(), format!("{n}-0"))).collect());
        let sql = page(&query, Dialect::Sqlite);
        assert_eq!(sql.text.matches("FROM search_token").count(), 1, "{}", sql.text);
        assert!(sql.text.contains("i0.code IN ($"), "{}", sql.text);
        assert_eq!(sql.text.matches('$').count(), sql.args.len());
        // More lookups than a compound SELECT takes: an OR of them.
        query.all_of[0] = (0..MAX_UNION_BRANCHES + 1).map(|n| token(format!("urn:system:{n}"), "c".into())).collect();
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let sql = page(&query, dialect);
            assert!(!sql.text.contains("UNION"), "{}", sql.text);
            assert_eq!(sql.text.matches("FROM search_token").count(), MAX_UNION_BRANCHES + 1);
        }
    }

    #[test]
    fn keyset_after_a_null_sort_value_stays_among_nulls() {
        let sort = vec![SortKey {
            by: SortBy::Param { params: vec!["birthdate".into()], table: IndexTable::Date },
            descending: false,
        }];
        let mut query = SearchQuery::new("Patient", 5);
        query.sort = sort;
        query.cursor = Some(Cursor {
            values: vec![SortValue::Null],
            resource_type: "Patient".into(),
            id: "p9".into(),
            backward: false,
        });
        let sql = page(&query, Dialect::Sqlite);
        assert!(sql.text.contains("(q.s0 IS NULL AND (q.resource_type > $"), "{}", sql.text);
        assert!(sql.text.ends_with("ORDER BY s0 NULLS LAST, resource_type, id LIMIT $6"), "{}", sql.text);
    }
}
