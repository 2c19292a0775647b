//! Storage: the [`Store`] trait and its SQLite and PostgreSQL implementations.
//!
//! This is the only layer that speaks SQL. A resource version is stored twice: as the current
//! row of `resources` and as a row of `resource_history`; both carry the JSON bytes exactly as
//! served. Search index rows ([`IndexRows`]) are written in the same transaction.

pub mod audit;
mod auth;
pub mod cache;
pub mod content;
mod export;
pub mod feed;
mod group;
mod job;
pub mod planner;
mod postgres;
mod query;
mod sql;
mod sqlite;
pub mod subscription;

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;

pub use audit::AuditStore;
pub use auth::AuthStore;
pub use export::{AsOf, ExportStore, Mark, Since};
pub use job::{Job, JobKinds, JobStatus, JobStep};
pub use postgres::PostgresStore;
pub use query::{
    Comparison, CompositeMatch, Condition, Cursor, IndexTable, SearchQuery, SortBy, SortKey, SortValue, StringMatch,
    TokenSystem, UriMatch,
};
pub use sql::{from_micros, to_micros};
pub use sqlite::SqliteStore;
pub use subscription::SubscriptionStore;

/// How a version came to be, as shown in history bundles (`Bundle.entry.request.method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMethod {
    Create,
    Update,
    Patch,
    Delete,
}

impl WriteMethod {
    /// The HTTP verb of the interaction.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMethod::Create => "POST",
            WriteMethod::Update => "PUT",
            WriteMethod::Patch => "PATCH",
            WriteMethod::Delete => "DELETE",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "POST" => WriteMethod::Create,
            "PATCH" => WriteMethod::Patch,
            "DELETE" => WriteMethod::Delete,
            _ => WriteMethod::Update,
        }
    }
}

/// One version of one resource. For deletions `body` is empty.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceVersion {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    pub last_updated: OffsetDateTime,
    pub deleted: bool,
    pub method: WriteMethod,
    pub body: Bytes,
}

/// A token index row: `system|code` (identifier, coding, code, boolean…).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenRow {
    pub param: String,
    pub system: Option<String>,
    pub code: String,
}

/// A string index row: the normalised (lower-case, accent-free) and the exact value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StringRow {
    pub param: String,
    pub normalized: String,
    pub exact: String,
}

/// A reference index row: a local `Type/id` target, or an absolute URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReferenceRow {
    pub param: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub target_url: Option<String>,
}

/// A uri index row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UriRow {
    pub param: String,
    pub value: String,
}

/// A date index row: the half-open interval `[low, high)` in microseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DateRow {
    pub param: String,
    pub low: i64,
    pub high: i64,
}

/// A number index row.
#[derive(Debug, Clone, PartialEq)]
pub struct NumberRow {
    pub param: String,
    pub value: f64,
}

/// A quantity index row (Quantity, Money, Age, Duration…).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantityRow {
    pub param: String,
    pub value: f64,
    pub system: Option<String>,
    pub code: Option<String>,
    pub unit: Option<String>,
}

/// One component value of a composite row; which fields are set depends on the component's
/// kind (see `migrations/*/0003_search_composite.sql`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompositePart {
    pub system: Option<String>,
    pub code: Option<String>,
    pub number: Option<f64>,
    pub low: Option<i64>,
    pub high: Option<i64>,
}

/// A composite index row: one value per component (at most three).
#[derive(Debug, Clone, PartialEq)]
pub struct CompositeRow {
    pub param: String,
    pub parts: Vec<CompositePart>,
}

/// Everything the search index holds for one resource version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexRows {
    pub tokens: Vec<TokenRow>,
    pub strings: Vec<StringRow>,
    pub references: Vec<ReferenceRow>,
    pub uris: Vec<UriRow>,
    pub dates: Vec<DateRow>,
    pub numbers: Vec<NumberRow>,
    pub quantities: Vec<QuantityRow>,
    pub composites: Vec<CompositeRow>,
}

/// Which history to read.
#[derive(Debug, Clone, PartialEq)]
pub enum HistoryScope {
    System,
    Type(String),
    Instance(String, String),
}

/// A page of history, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryQuery {
    pub scope: HistoryScope,
    /// Only versions written at or after this instant.
    pub since: Option<OffsetDateTime>,
    /// Keyset cursor: only versions older than this history sequence number.
    pub before_seq: Option<i64>,
    pub count: usize,
}

/// One page of history: versions with their sequence numbers, and whether more follow.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    pub entries: Vec<(i64, ResourceVersion)>,
    pub has_more: bool,
}

/// One page of search results.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    pub resources: Vec<ResourceVersion>,
    /// Number of matches in all pages, when asked for.
    pub total: Option<u64>,
    /// Where the next page starts, when there is one.
    pub next: Option<Cursor>,
    /// Where the previous page ends, when there is one.
    pub previous: Option<Cursor>,
    /// For a search as of a mark ([`AsOf`]): the version the mark saw of each resource, in
    /// order (`None`: it did not exist then); empty otherwise.
    pub marked: Vec<Option<i64>>,
}

/// What can go wrong in storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer got there first (unique violation or serialisation failure).
    #[error("a concurrent write conflicted with this one")]
    Conflict,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The database is in use by another process that must be its only writer.
    #[error("{0}")]
    Busy(String),
    #[error("cannot open the database's lock file: {0}")]
    LockFile(#[from] std::io::Error),
    /// The group transaction this write was committed in failed, so the write is not stored.
    #[error("the commit failed: {0}")]
    CommitFailed(String),
    /// A guarded transaction refused a write or lookup the caller's access does not allow.
    #[error("{0}")]
    Forbidden(String),
    /// A guarded transaction hid a resource the caller's access does not reach.
    #[error("{0}")]
    Hidden(String),
    /// A workflow rule the transaction enforces refused the change (a Slot taken twice); the
    /// error says what and where, with its own status.
    #[error("{0}")]
    Refused(Box<crate::model::FhirError>),
}

/// Result of a storage call.
pub type StoreResult<T> = Result<T, StoreError>;

/// Reads outside a transaction, and the way into one; and the authorization server's records.
#[async_trait]
pub trait Store: AuthStore + AuditStore + ExportStore + SubscriptionStore + Send + Sync + 'static {
    /// The current version of a resource (deleted ones included, with `deleted = true`).
    async fn read(&self, resource_type: &str, id: &str) -> StoreResult<Option<ResourceVersion>>;
    /// One specific version.
    async fn vread(&self, resource_type: &str, id: &str, version: i64) -> StoreResult<Option<ResourceVersion>>;
    /// A page of history.
    async fn history(&self, query: &HistoryQuery) -> StoreResult<HistoryPage>;
    /// A page of search results.
    async fn search(&self, query: &SearchQuery) -> StoreResult<SearchPage>;
    /// The current, not deleted resources with these (type, id) keys, in no particular order.
    async fn read_many(&self, keys: &[(String, String)]) -> StoreResult<Vec<ResourceVersion>>;
    /// The local resources that `sources` reference, through `param` and to `target_type` when given.
    async fn references_from(
        &self,
        sources: &[(String, String)],
        param: Option<&str>,
        target_type: Option<&str>,
    ) -> StoreResult<Vec<(String, String)>>;
    /// The `source_type` resources that reference any of `targets`, through `param` when given.
    async fn references_to(
        &self,
        targets: &[(String, String)],
        source_type: &str,
        param: Option<&str>,
    ) -> StoreResult<Vec<(String, String)>>;
    /// The resource types with a reference (through any parameter) to `target_type/target_id`,
    /// in order: which types a walk of a compartment needs to search.
    async fn referring_types(&self, target_type: &str, target_id: &str) -> StoreResult<Vec<String>>;
    /// Up to `limit` current, not deleted resources of `types` (every type when empty) in
    /// (type, id) order, starting after the key `after`.
    async fn scan(
        &self,
        types: &[String],
        after: Option<&(String, String)>,
        limit: usize,
    ) -> StoreResult<Vec<ResourceVersion>>;
    /// Starts a write transaction.
    async fn begin(&self) -> StoreResult<Box<dyn StoreTx>>;
    /// Queues a background job.
    async fn enqueue_job(&self, kind: &str, parameters: &str) -> StoreResult<Job>;
    /// A job by id.
    async fn job(&self, id: i64) -> StoreResult<Option<Job>>;
    /// Takes the oldest due queued job of `kinds`, or a running one whose lease ran out, for
    /// `owner` until `lease_until`. Concurrent workers never take the same job.
    async fn claim_job(
        &self,
        owner: &str,
        lease_until: OffsetDateTime,
        kinds: JobKinds<'_>,
    ) -> StoreResult<Option<Job>>;
    /// Ends a job `owner` holds with `status` and `message`; `false` when it no longer holds it.
    async fn finish_job(&self, id: i64, owner: &str, status: JobStatus, message: &str) -> StoreResult<bool>;
    /// Cancels a job that has not finished; `false` when there was none to cancel.
    async fn cancel_job(&self, id: i64) -> StoreResult<bool>;
    /// A Binary as stored, current or one version of it: its content, when stored apart
    /// ([`content`], ADR 11), named rather than inlined. What a download streams from.
    async fn binary_as_stored(&self, id: &str, version: Option<i64>) -> StoreResult<Option<ResourceVersion>>;
    /// Chunk `seq` of a Binary content stored apart.
    async fn content_chunk(&self, sha256: &str, seq: i64) -> StoreResult<Option<Bytes>>;
    /// Whether the database answers.
    async fn ping(&self) -> StoreResult<()>;
    /// What an operator watches of the database: its connections, the job queue and the
    /// notifications waiting.
    async fn gauges(&self) -> StoreResult<Gauges>;
}

/// See [`Store::gauges`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// Per pool (`readers`, `writers`): connections in use and idle.
    pub pools: Vec<(&'static str, u32, u32)>,
    /// Per job kind: jobs queued, and how long the oldest has waited (seconds).
    pub jobs: Vec<(String, i64, f64)>,
    /// Events recorded for active or failing subscriptions and not delivered yet.
    pub notifications_pending: i64,
    /// How long the oldest AuditEvent not yet sealed has waited (seconds; 0 when none waits).
    pub audit_seal_lag: f64,
}

/// A write transaction. Dropping it without [`StoreTx::commit`] rolls everything back.
#[async_trait]
pub trait StoreTx: Send {
    /// The current version, locked against concurrent writers until the transaction ends.
    async fn current(&mut self, resource_type: &str, id: &str) -> StoreResult<Option<ResourceVersion>>;
    /// One specific version, as seen inside this transaction.
    async fn vread(&mut self, resource_type: &str, id: &str, version: i64) -> StoreResult<Option<ResourceVersion>>;
    /// Search as seen inside this transaction (its own writes included).
    async fn search(&mut self, query: &SearchQuery) -> StoreResult<SearchPage>;
    /// Writes a new version and replaces the resource's index rows (buffered: it reaches the
    /// database before the next search in this transaction, or at commit; reads of a resource
    /// see its buffered versions).
    async fn write(&mut self, version: ResourceVersion, index: IndexRows) -> StoreResult<()>;
    /// Replaces the index rows of each listed resource whose current version is still the one
    /// given (a resource written since was indexed by its writer); returns how many it replaced.
    async fn reindex(&mut self, batch: &[(ResourceVersion, IndexRows)]) -> StoreResult<usize>;
    /// Records a job's step in this transaction; `false` (and nothing recorded) when the job was
    /// cancelled or another worker took it over.
    async fn job_step(&mut self, step: &JobStep<'_>) -> StoreResult<bool>;
    /// Queues a background job that no worker claims before `not_before`, committed with this
    /// transaction (or not at all): work a change promises to do later is never lost.
    async fn enqueue_job(&mut self, kind: &str, parameters: &str, not_before: OffsetDateTime) -> StoreResult<i64>;
    /// Records, with this transaction, that Subscription `id` was written (`Some`) or deleted
    /// (`None`): its delivery state follows the resource.
    async fn register_subscription(
        &mut self,
        id: &str,
        registration: Option<&subscription::Registration>,
    ) -> StoreResult<()>;
    /// Records, with this transaction, events of subscriptions, numbered per subscription in
    /// commit order; those of a subscription that is not active (or in error) are left out.
    /// Returns how many it recorded.
    async fn record_events(&mut self, events: &[subscription::NewEvent]) -> StoreResult<usize>;
    /// Records, with this transaction, time-based events each under its reminder key: only
    /// those whose key the subscription has not had yet (any node, any time). Returns how many
    /// it recorded.
    async fn record_reminders(&mut self, reminders: &[subscription::Reminder]) -> StoreResult<usize>;
    /// Records AuditEvents with this transaction (written last, at its commit): those of its
    /// own writes commit with them, and a batch of reads' events commits at once (ADR 19).
    async fn record_audit(&mut self, events: &[audit::NewAuditEvent]) -> StoreResult<()>;
    /// Makes everything written visible at once.
    async fn commit(self: Box<Self>) -> StoreResult<()>;
    /// Undoes everything written and waits until that has settled: on SQLite, until the group
    /// commit the transaction ran in has ended, because what it read may rest on the writes of
    /// the transactions before it in that group. (Dropping the transaction rolls back too,
    /// without waiting.)
    async fn rollback(self: Box<Self>);
}

/// Opens the store named by a database URL (`sqlite://file.db`, `postgres://…`) and migrates it.
pub async fn open(url: &str) -> StoreResult<std::sync::Arc<dyn Store>> {
    if is_postgres(url) {
        Ok(std::sync::Arc::new(PostgresStore::open(url).await?))
    } else {
        Ok(std::sync::Arc::new(SqliteStore::open(url, true).await?))
    }
}

/// Opens the store for administration of the authorization records only: on SQLite it does
/// not take the single-writer lock, so it works while a server has the file open (the
/// server's in-memory cache holds resources, which this store must not write).
pub async fn open_shared(url: &str) -> StoreResult<std::sync::Arc<dyn Store>> {
    if is_postgres(url) {
        Ok(std::sync::Arc::new(PostgresStore::open(url).await?))
    } else {
        Ok(std::sync::Arc::new(SqliteStore::open(url, false).await?))
    }
}

/// Where a node keeps local files `name` of the database at `database_url` (the audit spool,
/// exports): beside an SQLite database file (`hearth.db.name`, which one process holds); for
/// PostgreSQL, or SQLite in memory, [`state_dir`].
pub fn local_dir(database_url: &str, name: &str) -> std::path::PathBuf {
    let sqlite_file = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .and_then(|rest| rest.split('?').next())
        .filter(|file| !file.is_empty() && !file.starts_with(':'));
    match sqlite_file {
        Some(file) => std::path::PathBuf::from(format!("{file}.{name}")),
        None => state_dir(name),
    }
}

/// The user's state directory's `hearth/name` (`$XDG_STATE_HOME`, else `~/.local/state`):
/// local and persistent, unlike a temporary directory (which a reboot, a container restart or
/// systemd's `PrivateTmp` empties); without a home, `hearth-name` in the working directory.
pub fn state_dir(name: &str) -> std::path::PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(std::path::PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| std::env::home_dir().map(|home| home.join(".local/state")));
    state.map_or_else(|| format!("hearth-{name}").into(), |state| state.join("hearth").join(name))
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}
