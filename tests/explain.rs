//! Every US Core style search (patient + category/code/date/status, sorted by date), and the
//! pages of `$everything`, are answered through indexes: the query plan of each, on both databases, shows index searches and no full
//! scan of a table. PostgreSQL is asked with `enable_seqscan = off`, which shows that an index
//! path exists (on a tiny table it would otherwise rightly prefer a sequential scan).

mod common;

use common::{Db, TestServer};
use hearth::search::criteria::{Context, ValueSets};
use hearth::search::params::{parse_search, Paging};
use hearth::search::Registry;
use hearth::store::planner::{self, Arg};
use sqlx::{Connection, Row};

const US_CORE_SEARCHES: &[(&str, &str)] = &[
    ("Observation", "patient=p1&category=laboratory&_sort=-date"),
    ("Observation", "patient=p1&code=http://loinc.org|2339-0&_sort=-date"),
    ("Observation", "patient=p1&category=vital-signs&date=ge2024-01-01&_sort=-date"),
    ("Condition", "patient=p1&category=problem-list-item&clinical-status=active"),
    ("MedicationRequest", "patient=p1&intent=order&status=active"),
    ("Appointment", "patient=p1&date=ge2026-01-01&_sort=date"),
    ("Slot", "schedule=Schedule/s1&status=free&start=ge2026-11-01&_sort=start"),
    ("Communication", "recipient=Patient/p1&_sort=-sent"),
    ("Invoice", "subject=p1&status=issued"),
    ("Encounter", "patient=p1&date=ge2025&_sort=-date"),
    ("DiagnosticReport", "patient=p1&category=LAB&_sort=-date"),
    ("Immunization", "patient=p1&status=completed&_sort=-date"),
    ("Observation", "patient.identifier=http://hearth.example/mrn|MRN-1&category=laboratory"),
    ("Patient", "_id=p1&_has:Observation:patient:category=laboratory"),
    ("Slot", "schedule=Schedule/s1&status=free&start=ge2026-01-01"),
    // The windows of Appointment/$find: free Slots starting within a bounded range (which
    // drives), of all Schedules or of some.
    ("Slot", "status=free&start=2026-12-07&_sort=start&_count=10"),
    ("Slot", "status=free&start=2026-12-07&schedule=Schedule/s1,Schedule/s2&_sort=start&_count=10"),
    ("Observation", "patient=p1&code=http://loinc.org|2339-0"),
    // Stored under code and component-code: one lookup over both parameters' rows.
    ("Observation", "combo-code=http://loinc.org|8480-6"),
    ("Observation", "patient=p1&combo-code=http://loinc.org|8480-6&_sort=-date"),
    // Several values drive as one lookup (codes of one system) or a UNION ALL of lookups.
    ("Observation", "code=http://loinc.org|2339-0,http://loinc.org|8480-6"),
    ("Observation", "code=http://loinc.org|2339-0,http://snomed.info/sct|271649006"),
    ("Observation", "combo-code=http://loinc.org|8480-6,http://loinc.org|2339-0"),
    ("Observation", "subject=Patient/p1,Patient/p2&_sort=-date"),
    // ... or, where another criterion drives, are probed.
    ("Appointment", "patient=p1&status=booked,fulfilled"),
];

fn sql_for(resource_type: &str, query: &str, dialect: planner::Dialect) -> planner::Sql {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let value_sets = ValueSets::new();
    let context =
        Context { registry: Registry::standard(), base_url: "http://localhost/fhir", value_sets: &value_sets };
    let paging = Paging { default_count: 20, max_count: 100 };
    let parsed = parse_search(context, &[resource_type.to_string()], &params, true, paging).expect("valid search");
    planner::page(&parsed.query, dialect)
}

/// Full scans in a plan: SQLite's `SCAN <table>` (other than of a materialised subquery or
/// for sorting) and PostgreSQL's `Seq Scan`.
fn full_scans(plan: &[String]) -> Vec<&String> {
    plan.iter()
        .filter(|line| {
            (line.contains("SCAN ") && !line.contains("SUBQUERY") && !line.contains("USING"))
                || line.contains("Seq Scan")
        })
        .collect()
}

/// The query `text` with the planner's arguments bound (works for either database's query type).
macro_rules! bound {
    ($text:expr, $args:expr) => {
        $args.iter().fold(sqlx::query($text), |q, arg| match arg {
            Arg::Text(t) => q.bind(t.clone()),
            Arg::Int(i) => q.bind(*i),
            Arg::Float(f) => q.bind(*f),
        })
    };
}

/// The searches of a `$everything` page: a type of the compartment, then the same after a
/// cursor with dates and `_since`.
fn everything_pages(dialect: planner::Dialect) -> Vec<(String, planner::Sql)> {
    use hearth::operations::everything::{compartment_query, Wanted};
    let (registry, base) = (Registry::standard(), "http://localhost/fhir");
    let query = |resource_type: &str, wanted: &Wanted, after: Option<&str>| {
        compartment_query(registry, base, "p1", resource_type, wanted, 100, after).expect("valid").expect("a query")
    };
    let wanted = Wanted {
        types: Vec::new(),
        start: Some("2024-01-01".into()),
        end: Some("2024-12-31".into()),
        since: Some("2024-01-01T00:00:00Z".into()),
    };
    let after = r#"["next","Observation","o1"]"#;
    vec![
        (
            "Patient/p1/$everything: Observation".to_string(),
            planner::page(&query("Observation", &Wanted::default(), None), dialect),
        ),
        (
            "Patient/p1/$everything: Encounter".to_string(),
            planner::page(&query("Encounter", &Wanted::default(), None), dialect),
        ),
        (
            "Patient/p1/$everything?start=…&end=…&_since=… (next page of Observation)".to_string(),
            planner::page(&query("Observation", &wanted, Some(after)), dialect),
        ),
    ]
}

async fn us_core_searches_use_indexes(db: Db) {
    let server = TestServer::start(db).await;
    let database = server.database_url.clone();
    let dialect = match db {
        Db::Sqlite => planner::Dialect::Sqlite,
        Db::Postgres => planner::Dialect::Postgres,
    };
    let searches = US_CORE_SEARCHES
        .iter()
        .map(|(resource_type, query)| (format!("{resource_type}?{query}"), sql_for(resource_type, query, dialect)))
        .chain(everything_pages(dialect));
    for (search, sql) in searches {
        let plan: Vec<String> = match db {
            Db::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&database).await.unwrap();
                let explained = format!("EXPLAIN QUERY PLAN {}", sql.text);
                let q = bound!(&explained, &sql.args);
                q.fetch_all(&mut conn).await.unwrap().iter().map(|row| row.get::<String, _>("detail")).collect()
            }
            Db::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&database).await.unwrap();
                sqlx::query("SET enable_seqscan = off").execute(&mut conn).await.unwrap();
                let explained = format!("EXPLAIN {}", sql.text);
                let q = bound!(&explained, &sql.args);
                q.fetch_all(&mut conn).await.unwrap().iter().map(|row| row.get::<String, _>(0)).collect()
            }
        };
        let scans = full_scans(&plan);
        if std::env::var("SHOW_PLANS").is_ok() {
            println!("{db:?} {search}\n  {}", plan.join("\n  "));
        }
        assert!(scans.is_empty(), "{search} scans a whole table:\n{}", plan.join("\n"));
        assert!(plan.iter().any(|l| l.contains("INDEX") || l.contains("Index")), "{search}:\n{}", plan.join("\n"));
    }
}

/// A reference criterion that does not drive is probed per candidate through the owner index
/// (the candidate's own rows), never through the target index, which would walk every
/// reference to the target for each candidate (a practitioner's thousands of observations).
/// SQLite's planner is the one that picked the target index; PostgreSQL decides by statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_probes_use_the_owner_index_on_sqlite() {
    let server = TestServer::start(Db::Sqlite).await;
    let sql = sql_for("Observation", "_id=o1&performer=Practitioner/d1", planner::Dialect::Sqlite);
    let mut conn = sqlx::SqliteConnection::connect(&server.database_url).await.unwrap();
    let explained = format!("EXPLAIN QUERY PLAN {}", sql.text);
    let plan: Vec<String> = bound!(&explained, &sql.args)
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<String, _>("detail"))
        .collect();
    let probe = plan.iter().position(|line| line.contains("CORRELATED")).expect("the reference is probed");
    assert!(plan[probe + 1].contains("search_reference_owner"), "{}", plan.join("\n"));
}

on_both_databases!(us_core_searches_use_indexes);
